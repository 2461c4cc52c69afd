//! The grant store: one JSON file per grant (a household's consent and the tokens it gave) in
//! `grants_dir`.
//!
//! What it protects: the directory is 0700 and every file 0600 (a store or file open to group or
//! others is refused, with the `chmod` that fixes it); every write is atomic (a temporary file in
//! the same directory, fsync, rename, fsync of the directory), so a crash leaves the old grant or
//! the new one, never half of either; refreshes take an exclusive lock on the grant's lock file,
//! so that processes sharing the store never spend a rotating refresh token twice. What it does
//! not: tokens are plain JSON, readable by this user and root (as `~/.ssh` keys are).
//!
//! A file that is corrupt, truncated or foreign is an error naming the file and never showing a
//! byte of its content.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::error::{Error, Result};

/// The `format` of a grant file.
const FORMAT: &str = "fapi-host-grant/1";
/// The `format` of a pending grant's file (`grant add --no-listen`).
const PENDING_FORMAT: &str = "fapi-host-pending-grant/1";
/// A temporary file of the store older than this is left from a write a crash interrupted
/// (a write takes milliseconds: a minute is far beyond a live one).
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(60);
/// The largest grant file read (real ones are under 2 KiB).
const MAX_FILE: u64 = 64 * 1024;

/// A token or PKCE verifier held by the store: `Debug` prints `[redacted]`, no `Display`,
/// zeroized on drop, read only through [`GrantSecret::expose_secret`].
pub(crate) struct GrantSecret(Zeroizing<String>);

redacted_debug!(GrantSecret);

impl GrantSecret {
    pub(crate) fn new(s: String) -> GrantSecret {
        GrantSecret(Zeroizing::new(s))
    }

    /// The secret itself, for the one request that sends it.
    pub(crate) fn expose_secret(&self) -> &str {
        &self.0
    }
}

/// Whether a grant can still be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    /// Tokens can be had from it.
    Active,
    /// The authorization server refused its refresh token (`invalid_grant`): the household's
    /// consent ended or was revoked. `grant add NAME` makes it anew.
    Ended,
}

/// What is known about a grant, without its tokens (`grant list`, `grant show`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantInfo {
    /// The grant's name (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`).
    pub name: String,
    /// The issuer that granted it.
    pub issuer: String,
    /// The client it was granted to (under IB1, the Directory URL).
    pub client_id: String,
    /// The scope granted (under IB1, a licence URL).
    pub scope: String,
    /// When it was granted, seconds since the epoch.
    pub created: u64,
    /// When its tokens were last refreshed, seconds since the epoch.
    pub last_refreshed: Option<u64>,
    /// When its access token expires, seconds since the epoch.
    pub access_expires_at: u64,
    /// Active, or ended.
    pub state: GrantState,
}

/// A grant with its tokens.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) info: GrantInfo,
    pub(crate) access: GrantSecret,
    pub(crate) refresh: Option<GrantSecret>,
}

/// A consent flow begun by `grant add --no-listen`, finished by `grant complete`.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) scope: String,
    pub(crate) redirect_uri: String,
    pub(crate) state: GrantSecret,
    pub(crate) verifier: GrantSecret,
    pub(crate) created: u64,
}

/// A grant file as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredGrant {
    format: String,
    name: String,
    issuer: String,
    client_id: String,
    scope: String,
    created: u64,
    last_refreshed: Option<u64>,
    access_token: String,
    access_expires_at: u64,
    refresh_token: Option<String>,
    state: GrantState,
}

impl Drop for StoredGrant {
    fn drop(&mut self) {
        self.access_token.zeroize();
        if let Some(r) = self.refresh_token.as_mut() {
            r.zeroize();
        }
    }
}

/// A pending grant's file as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPending {
    format: String,
    name: String,
    issuer: String,
    client_id: String,
    scope: String,
    redirect_uri: String,
    state: String,
    code_verifier: String,
    created: u64,
}

impl Drop for StoredPending {
    fn drop(&mut self) {
        self.state.zeroize();
        self.code_verifier.zeroize();
    }
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Check a grant name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit (so that
/// it is never `.`, `..` or a hidden file).
pub fn check_grant_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Grant(format!(
            "{:?} is not a grant name: use 1 to 64 letters, digits, '.', '_' or '-', starting \
             with a letter or digit (e.g. home-42)",
            crate::policy::bounded(name, 80)
        )))
    }
}

/// The grant store in one directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GrantStore {
    dir: PathBuf,
}

impl GrantStore {
    /// Open the store in `dir`, creating it (mode 0700) when missing. A store readable, writable
    /// or searchable by group or others is refused with the `chmod` that fixes it.
    pub fn open(dir: &Path) -> Result<GrantStore> {
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::Grant(format!(
                    "the grant store {} is not a directory: set `grants_dir` to a directory",
                    dir.display()
                )));
            }
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(Error::Grant(format!(
                        "the grant store {dir} is open to group or others (mode {mode:03o}), and \
                         it holds tokens: run chmod 700 {dir}",
                        dir = dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == IoKind::NotFound => {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(|e| io("create", parent, &e))?;
                }
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io("create", dir, &e))?;
            }
            Err(e) => return Err(io("read", dir, &e)),
        }
        let store = GrantStore {
            dir: dir.to_path_buf(),
        };
        store.sweep_stale_temporaries();
        Ok(store)
    }

    /// Remove the temporary files of writes a crash interrupted ([`GrantStore::write_atomic`]'s
    /// `.FILE.RANDOM.tmp`) once they are older than [`STALE_TEMPORARY`]: a write in progress
    /// takes milliseconds, so its temporary file is never taken, and one of a grant whose lock
    /// another process holds (a refresh in progress) is left to a later opening. Best effort: a
    /// file that cannot be removed is logged at debug level and left.
    fn sweep_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(grant) = file.to_str().and_then(temporary_of) else {
                continue;
            };
            let path = entry.path();
            let stale = fs::symlink_metadata(&path).is_ok_and(|m| {
                m.file_type().is_file()
                    && m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_TEMPORARY)
            });
            if !stale {
                continue;
            }
            // A refresh of the grant in progress elsewhere holds its lock: not now.
            let lock = File::open(self.lock_path(grant)).ok();
            if lock.as_ref().is_some_and(|l| l.try_lock().is_err()) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(file = %path.display(), "removed the temporary file of an interrupted write")
                }
                Err(e) => {
                    tracing::debug!(file = %path.display(), "cannot remove a stale temporary file: {e}")
                }
            }
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn grant_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn pending_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pending"))
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.lock"))
    }

    /// Whether a grant of this name exists.
    pub fn contains(&self, name: &str) -> Result<bool> {
        check_grant_name(name)?;
        Ok(self.grant_path(name).exists())
    }

    /// The names of the grants, sorted (files ending in `.json`; others are not the store's).
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io("read", &self.dir, &e))? {
            let entry = entry.map_err(|e| io("read", &self.dir, &e))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if check_grant_name(name).is_ok() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// A grant's metadata (never its tokens).
    pub fn info(&self, name: &str) -> Result<GrantInfo> {
        Ok(self.load(name)?.info)
    }

    /// A grant with its tokens.
    pub(crate) fn load(&self, name: &str) -> Result<Grant> {
        check_grant_name(name)?;
        let path = self.grant_path(name);
        let bytes = read_private(&path, name)?;
        let s: StoredGrant = parse(&bytes, &path, name)?;
        if s.format != FORMAT || s.name != name {
            return Err(foreign(&path, name));
        }
        let info = GrantInfo {
            name: s.name.clone(),
            issuer: s.issuer.clone(),
            client_id: s.client_id.clone(),
            scope: s.scope.clone(),
            created: s.created,
            last_refreshed: s.last_refreshed,
            access_expires_at: s.access_expires_at,
            state: s.state,
        };
        Ok(Grant {
            info,
            access: GrantSecret::new(s.access_token.clone()),
            refresh: s.refresh_token.clone().map(GrantSecret::new),
        })
    }

    /// Write a grant (atomically, durably, 0600).
    pub(crate) fn save(&self, grant: &Grant) -> Result<()> {
        check_grant_name(&grant.info.name)?;
        let i = &grant.info;
        let stored = StoredGrant {
            format: FORMAT.into(),
            name: i.name.clone(),
            issuer: i.issuer.clone(),
            client_id: i.client_id.clone(),
            scope: i.scope.clone(),
            created: i.created,
            last_refreshed: i.last_refreshed,
            access_token: grant.access.expose_secret().to_owned(),
            access_expires_at: i.access_expires_at,
            refresh_token: grant.refresh.as_ref().map(|r| r.expose_secret().to_owned()),
            state: i.state,
        };
        let bytes = Zeroizing::new(
            serde_json::to_vec_pretty(&stored)
                .map_err(|e| Error::Grant(format!("cannot encode grant {:?}: {e}", i.name)))?,
        );
        self.write_atomic(&self.grant_path(&i.name), &bytes)
    }

    /// Remove a grant and whatever else the store holds for it (pending flow, lock file).
    /// Removing a grant that does not exist is an error naming it.
    pub fn remove(&self, name: &str) -> Result<()> {
        check_grant_name(name)?;
        let path = self.grant_path(name);
        let had_pending = self.pending_path(name).exists();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound && had_pending => {}
            Err(e) if e.kind() == IoKind::NotFound => return Err(not_found(&self.dir, name)),
            Err(e) => return Err(io("remove", &path, &e)),
        }
        for p in [self.pending_path(name), self.lock_path(name)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == IoKind::NotFound => {}
                Err(e) => return Err(io("remove", &p, &e)),
            }
        }
        sync_dir(&self.dir)
    }

    /// Keep a consent flow begun with `--no-listen` (its PKCE verifier and state), 0600.
    pub(crate) fn save_pending(&self, name: &str, p: &Pending) -> Result<()> {
        check_grant_name(name)?;
        let stored = StoredPending {
            format: PENDING_FORMAT.into(),
            name: name.to_owned(),
            issuer: p.issuer.clone(),
            client_id: p.client_id.clone(),
            scope: p.scope.clone(),
            redirect_uri: p.redirect_uri.clone(),
            state: p.state.expose_secret().to_owned(),
            code_verifier: p.verifier.expose_secret().to_owned(),
            created: p.created,
        };
        let bytes =
            Zeroizing::new(serde_json::to_vec_pretty(&stored).map_err(|e| {
                Error::Grant(format!("cannot encode the pending grant {name:?}: {e}"))
            })?);
        self.write_atomic(&self.pending_path(name), &bytes)
    }

    /// The consent flow begun for `name` with `--no-listen`.
    pub(crate) fn load_pending(&self, name: &str) -> Result<Pending> {
        check_grant_name(name)?;
        let path = self.pending_path(name);
        let bytes = read_private(&path, name).map_err(|e| match e {
            Error::Grant(m) if !path.exists() => Error::Grant(format!(
                "no consent flow is pending for {name:?} in {}: begin one with fapi-host grant \
                 add {name} --no-listen ({m})",
                self.dir.display()
            )),
            e => e,
        })?;
        let s: StoredPending = parse(&bytes, &path, name)?;
        if s.format != PENDING_FORMAT || s.name != name {
            return Err(foreign(&path, name));
        }
        Ok(Pending {
            issuer: s.issuer.clone(),
            client_id: s.client_id.clone(),
            scope: s.scope.clone(),
            redirect_uri: s.redirect_uri.clone(),
            state: GrantSecret::new(s.state.clone()),
            verifier: GrantSecret::new(s.code_verifier.clone()),
            created: s.created,
        })
    }

    /// Forget a pending flow (it completed, or failed for good).
    pub(crate) fn remove_pending(&self, name: &str) -> Result<()> {
        let path = self.pending_path(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path, &e)),
        }
    }

    /// Take the grant's exclusive lock (blocking until another process lets go of it): held
    /// around a refresh (read, refresh, write), released when the file is dropped.
    pub(crate) fn lock(&self, name: &str) -> Result<File> {
        check_grant_name(name)?;
        let path = self.lock_path(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("open", &path, &e))?;
        file.lock().map_err(|e| io("lock", &path, &e))?;
        Ok(file)
    }

    /// Write `bytes` to `path` atomically: a temporary file (0600) in the same directory, fsync,
    /// rename over `path`, fsync of the directory. A failure leaves `path` as it was.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let file_name = path.file_name().and_then(|f| f.to_str()).unwrap_or("grant");
        let tmp = self
            .dir
            .join(format!(".{file_name}.{:016x}.tmp", rand::random::<u64>()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io("write", path, &e));
        }
        sync_dir(&self.dir)
    }
}

/// The grant whose file `file` is a temporary of (`.NAME.json.HEX.tmp`, `.NAME.pending.HEX.tmp`,
/// as [`GrantStore::write_atomic`] names them), if it is one.
fn temporary_of(file: &str) -> Option<&str> {
    let rest = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (target, hex) = rest.rsplit_once('.')?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let name = target
        .strip_suffix(".json")
        .or_else(|| target.strip_suffix(".pending"))?;
    check_grant_name(name).ok().map(|()| name)
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::Grant(format!(
        "cannot {what} {}: {e} (check `grants_dir` and its permissions)",
        path.display()
    ))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, &e))
}

fn not_found(dir: &Path, name: &str) -> Error {
    Error::Grant(format!(
        "there is no grant {name:?} in {}: add it with fapi-host grant add {name} (fapi-host \
         grant list shows the others)",
        dir.display()
    ))
}

fn foreign(path: &Path, name: &str) -> Error {
    Error::Grant(format!(
        "{} is not a fapi-host grant file for {name:?} (a foreign or renamed file): move it out \
         of the store, or remove it with fapi-host grant remove {name}",
        path.display()
    ))
}

/// A store file's bytes: a regular file, 0600 or stricter, at most [`MAX_FILE`].
fn read_private(path: &Path, name: &str) -> Result<Zeroizing<Vec<u8>>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == IoKind::NotFound => {
            return Err(not_found(path.parent().unwrap_or(Path::new(".")), name));
        }
        Err(e) => return Err(io("read", path, &e)),
    };
    if !meta.file_type().is_file() {
        return Err(Error::Grant(format!(
            "{} is not a regular file (a link or a directory): the store holds plain files only; \
             move it out of the store",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Grant(format!(
            "{p} is open to group or others (mode {mode:03o}), and it holds tokens: run chmod 600 \
             {p}",
            p = path.display()
        )));
    }
    if meta.len() > MAX_FILE {
        return Err(Error::Grant(format!(
            "{} is larger than any grant file ({} bytes): it is not one; move it out of the store",
            path.display(),
            meta.len()
        )));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    File::open(path)
        .and_then(|f| f.take(MAX_FILE).read_to_end(&mut bytes))
        .map_err(|e| io("read", path, &e))?;
    Ok(bytes)
}

/// Parse a store file; the error says where it broke, never what it held.
fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8], path: &Path, name: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Eof => "truncated",
            Category::Syntax => "corrupt: not JSON",
            Category::Data => "not a grant file: fields missing, unknown or of the wrong type",
            Category::Io => "unreadable",
        };
        Error::Grant(format!(
            "{} is {what} (line {}, column {}): remove it with fapi-host grant remove {name} and \
             add the grant again",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str) -> Grant {
        Grant {
            info: GrantInfo {
                name: name.into(),
                issuer: "https://as.example/accounts".into(),
                client_id: "https://directory.example/member/1".into(),
                scope: "https://registry.example/licence".into(),
                created: 1,
                last_refreshed: None,
                access_expires_at: 2,
                state: GrantState::Active,
            },
            access: GrantSecret::new("ACCESS-SECRET-abc".into()),
            refresh: Some(GrantSecret::new("REFRESH-SECRET-def".into())),
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn grants_round_trip_in_private_files_and_debug_shows_no_token() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("a/grants");
        let store = GrantStore::open(&dir).expect("open");
        assert_eq!(mode(&dir), 0o700);
        store.save(&grant("home-1")).expect("save");
        assert_eq!(mode(&dir.join("home-1.json")), 0o600);
        let g = store.load("home-1").expect("load");
        assert_eq!(g.info, grant("home-1").info);
        assert_eq!(g.access.expose_secret(), "ACCESS-SECRET-abc");
        let debug = format!("{g:?}");
        assert!(
            !debug.contains("SECRET") && debug.contains("[redacted]"),
            "{debug}"
        );
        assert_eq!(store.names().expect("names"), ["home-1"]);
        // No temporary file left behind.
        let entries: Vec<_> = fs::read_dir(&dir).expect("dir").collect();
        assert_eq!(entries.len(), 1);
        store.remove("home-1").expect("remove");
        let e = store.remove("home-1").expect_err("gone").to_string();
        assert!(e.contains("grant add home-1"), "{e}");
    }

    #[test]
    fn stale_temporaries_of_interrupted_writes_are_swept_fresh_ones_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("g");
        let store = GrantStore::open(&dir).expect("open");
        store.save(&grant("g")).expect("save");
        let plant = |name: &str, age: u64| {
            let p = dir.join(name);
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .expect("plant");
            let when = SystemTime::now() - std::time::Duration::from_secs(age);
            f.set_modified(when).expect("mtime");
            p
        };
        let old = plant(".g.json.0123456789abcdef.tmp", 120);
        let old_pending = plant(".h.pending.fedcba9876543210.tmp", 3600);
        let fresh = plant(".g.json.00000000000000ff.tmp", 1);
        // Old, but not named as the store names its temporaries: not the store's to remove.
        let others = [
            plant(".g.json.tmp", 3600),
            plant("notes.tmp", 3600),
            plant(".g.json.xyz.tmp", 3600),
        ];
        // While another process refreshes "g" (its lock held), its temporaries are left.
        let held = store.lock("g").expect("lock");
        GrantStore::open(&dir).expect("open");
        assert!(old.exists(), "the lock was held");
        assert!(!old_pending.exists(), "no lock for h: swept");
        drop(held);
        GrantStore::open(&dir).expect("open");
        assert!(!old.exists(), "stale: swept");
        assert!(fresh.exists(), "a write in progress is never taken");
        for p in &others {
            assert!(p.exists(), "{}", p.display());
        }
        store.load("g").expect("the grant itself is untouched");
    }

    #[test]
    fn names_are_restricted() {
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(check_grant_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "home-1", "H.2_x", &"x".repeat(64)] {
            check_grant_name(good).expect(good);
        }
    }

    #[test]
    fn a_store_or_file_open_to_others_is_refused_with_the_chmod() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("grants");
        let store = GrantStore::open(&dir).expect("open");
        store.save(&grant("g")).expect("save");
        let file = dir.join("g.json");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = store.load("g").expect_err("0644").to_string();
        assert!(e.contains(&format!("chmod 600 {}", file.display())), "{e}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let e = GrantStore::open(&dir).expect_err("0755").to_string();
        assert!(e.contains(&format!("chmod 700 {}", dir.display())), "{e}");
    }

    #[test]
    fn corrupt_truncated_or_foreign_files_name_the_file_never_the_content() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = GrantStore::open(&tmp.path().join("g")).expect("open");
        store.save(&grant("g")).expect("save");
        let file = store.dir().join("g.json");
        let whole = fs::read_to_string(&file).expect("read");
        let write = |text: &str| {
            fs::write(&file, text).expect("write");
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
        };
        let cases = [
            (whole[..whole.len() / 2].to_owned(), "truncated"),
            (whole.replacen('{', "#", 1), "corrupt"),
            (
                whole.replace("\"access_expires_at\"", "\"SECRET-field\""),
                "not a grant file",
            ),
            (
                whole.replace(
                    "\"access_expires_at\": 2",
                    "\"access_expires_at\": \"ACCESS-SECRET-abc\"",
                ),
                "not a grant file",
            ),
            (whole.replace(FORMAT, "other/1"), "foreign"),
            (
                whole.replace("\"name\": \"g\"", "\"name\": \"h\""),
                "foreign",
            ),
        ];
        for (text, says) in cases {
            write(&text);
            let e = store.load("g").expect_err(says).to_string();
            assert!(
                e.contains(&file.display().to_string()) && e.contains(says),
                "{says}: {e}"
            );
            assert!(!e.contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn pending_flows_are_kept_apart_and_the_lock_is_exclusive() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = GrantStore::open(&tmp.path().join("g")).expect("open");
        let p = Pending {
            issuer: "https://as.example/accounts".into(),
            client_id: "c".into(),
            scope: "s".into(),
            redirect_uri: "http://127.0.0.1:1/callback".into(),
            state: GrantSecret::new("st".into()),
            verifier: GrantSecret::new("v".repeat(43)),
            created: 5,
        };
        store.save_pending("g", &p).expect("save");
        assert_eq!(mode(&store.dir().join("g.pending")), 0o600);
        assert!(store.names().expect("names").is_empty());
        let back = store.load_pending("g").expect("load");
        assert_eq!(back.verifier.expose_secret(), "v".repeat(43));
        store.remove_pending("g").expect("remove");
        let e = store.load_pending("g").expect_err("none").to_string();
        assert!(e.contains("--no-listen"), "{e}");

        let held = store.lock("g").expect("lock");
        let again = OpenOptions::new()
            .write(true)
            .open(store.dir().join("g.lock"))
            .expect("open");
        assert!(again.try_lock().is_err(), "the lock is exclusive");
        drop(held);
        again.try_lock().expect("free once dropped");
    }
}
