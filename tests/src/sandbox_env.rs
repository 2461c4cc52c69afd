//! A sandbox over a fresh local federation, for the end-to-end tests of guests: start it with the
//! limits and options a test needs, run components, and search everything for credentials
//! ([`Needles`]: every token the federation issued and the client's private key).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use fapi_federation::Federation;
use fapi_host::sandbox::{Plugin, RunOutcome, Sandbox, SandboxOptions, Stdio};
use fapi_host::{FapiClient, Overrides, SandboxSettings, Settings};
use serde_json::Value;

/// A federation, a client configured for it, and a sandbox with that client.
#[derive(Debug)]
pub struct SandboxEnv {
    /// The local federation (faults on or off as asked).
    pub fed: Federation,
    /// The client the sandbox sends guest requests with.
    pub client: FapiClient,
    /// The sandbox.
    pub sandbox: Sandbox,
    /// The client configuration file (`fapi.toml`) the client was loaded from.
    pub config: PathBuf,
    dir: tempfile::TempDir,
    loaded: Mutex<HashMap<String, Plugin>>,
}

/// The wasmtime compilation cache shared by all tests of the crate.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("FAPI_TESTS_WASMTIME_CACHE"))
}

impl SandboxEnv {
    /// A federation (with `faults` query parameters and `/echo` when true, recording the tokens it
    /// issues for [`SandboxEnv::assert_no_secrets`]) and a sandbox whose `[sandbox]` settings
    /// `limits` may change; stdio captured, the shared compilation cache.
    pub async fn start(faults: bool, limits: impl FnOnce(&mut SandboxSettings)) -> SandboxEnv {
        SandboxEnv::start_with(faults, limits, SandboxOptions::default()).await
    }

    /// As [`SandboxEnv::start`], with these sandbox options (cache and stdio are set here).
    pub async fn start_with(
        faults: bool,
        limits: impl FnOnce(&mut SandboxSettings),
        options: SandboxOptions,
    ) -> SandboxEnv {
        SandboxEnv::start_for(faults, |_, s| limits(s), options).await
    }

    /// As [`SandboxEnv::start_with`], with the federation at hand to set the `[sandbox]` settings
    /// (an allow-list of some of its URLs, say).
    pub async fn start_for(
        faults: bool,
        settings: impl FnOnce(&Federation, &mut SandboxSettings),
        options: SandboxOptions,
    ) -> SandboxEnv {
        SandboxEnv::start_configured(faults, |fed, s| settings(fed, &mut s.sandbox), options).await
    }

    /// As [`SandboxEnv::start_for`], with all the host's settings at hand (the client's timeouts
    /// and retries, say).
    pub async fn start_configured(
        faults: bool,
        settings: impl FnOnce(&Federation, &mut Settings),
        options: SandboxOptions,
    ) -> SandboxEnv {
        crate::capture_logs();
        let fed = crate::recording_federation(faults).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = fed
            .write_client_config(dir.path(), "consumer")
            .expect("the client configuration");
        let mut loaded = Settings::load(Some(&config), &Overrides::default()).expect("settings");
        settings(&fed, &mut loaded);
        let (client, _) = FapiClient::from_settings(&loaded).expect("a client");
        let options = SandboxOptions {
            cache_dir: Some(cache_dir()),
            stdio: Stdio::Capture,
            ..options
        };
        let sandbox = Sandbox::new(client.clone(), options)
            .await
            .expect("a sandbox");
        SandboxEnv {
            fed,
            client,
            sandbox,
            config,
            dir,
            loaded: Mutex::default(),
        }
    }

    /// A scratch directory that lives as long as this environment.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Load `component` (compiled once per test process, then taken from memory). Loading blocks
    /// its thread: tests that run guests concurrently load them first.
    pub fn load(&self, component: &str) -> Plugin {
        if let Some(plugin) = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(component)
        {
            return plugin.clone();
        }
        // One compilation at a time: the first fills the on-disk cache, the others hit it.
        static COMPILING: Mutex<()> = Mutex::new(());
        let _one = COMPILING.lock().unwrap_or_else(|p| p.into_inner());
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded
            .entry(component.to_owned())
            .or_insert_with(|| {
                self.sandbox
                    .load(Path::new(component))
                    .expect("the component loads")
            })
            .clone()
    }

    /// Run `component` with `args`, capturing its output.
    pub async fn run(&self, component: &str, args: &[&str]) -> RunOutcome {
        let plugin = self.load(component);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.sandbox
            .run(&plugin, &args, Stdio::Capture)
            .await
            .expect("the run completes")
    }

    /// Run a component that prints one line of JSON and must finish on its own; the parsed line.
    pub async fn run_json(&self, component: &str, args: &[&str]) -> Value {
        let out = self.run(component, args).await;
        assert_eq!(
            out.stopped,
            None,
            "{component} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("{component} {args:?}: {e}: {line}"))
    }

    /// Run the probe (`guest/test-plugins`) with `args`; its JSON line.
    pub async fn probe(&self, args: &[&str]) -> Value {
        self.run_json(crate::guests::PROBE, args).await
    }

    /// A URL of the data provider.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.fed.data_origin())
    }

    /// What a leak search looks for here: every token the federation has issued so far (the host
    /// may have been given several: a refresh after a refusal, a revocation), and the consumer's
    /// private key. Fails when no token was issued: a search for none could not fail.
    pub fn needles(&self) -> Needles {
        let key = &self
            .fed
            .pki()
            .client("consumer")
            .expect("the consumer")
            .key_pem;
        Needles::new(&self.fed.issued_tokens(), key)
    }

    /// Assert that no token the federation issued, nor the client's private key (any line of its
    /// PEM, or its DER bytes), is in `seen` or in any log line of this process (every level).
    pub async fn assert_no_secrets(&self, seen: &[&[u8]]) {
        let needles = self.needles();
        for (i, hay) in seen.iter().enumerate() {
            needles.assert_absent(&format!("output #{i} of what was searched"), hay);
        }
        needles.assert_absent_from_logs();
    }
}

/// Credentials to search for, each with what it is: tokens and a private key. Searches never
/// print a needle, only what it is and where it was found (and `Debug` only what they are).
pub struct Needles(Vec<(String, Vec<u8>)>);

impl std::fmt::Debug for Needles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(what, _)| what))
            .finish()
    }
}

impl Needles {
    /// Every token of `tokens` (at least one: a search for none cannot fail) and the key of
    /// `key_pem`: each base64 line of its PEM (a line is 64 characters, far too long to appear by
    /// chance) and 32-byte windows of its DER.
    pub fn new(tokens: &[String], key_pem: &str) -> Needles {
        assert!(
            !tokens.is_empty(),
            "no token was issued: a search for tokens could not fail"
        );
        let mut needles = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            assert!(t.len() >= 20, "implausible token #{i} ({} bytes)", t.len());
            needles.push((
                format!("token #{i} of {}", tokens.len()),
                t.as_bytes().to_vec(),
            ));
        }
        needles.extend(key_needles(key_pem));
        Needles(needles)
    }

    /// Only the key of `key_pem`, for what processes printed that never had a token: the caller
    /// asserts that none was issued (else it searches for the tokens with [`Needles::new`]).
    pub fn key_only(key_pem: &str) -> Needles {
        Needles(key_needles(key_pem))
    }

    /// Assert that no needle is in `hay`, which is `place`.
    pub fn assert_absent(&self, place: &str, hay: &[u8]) {
        for (what, needle) in &self.0 {
            assert!(!contains(hay, needle), "{what} leaked into {place}");
        }
    }

    /// Assert that no needle is in any log line of this process (see [`crate::capture_logs`]),
    /// which must hold some: a search of nothing could not fail.
    pub fn assert_absent_from_logs(&self) {
        let logs = crate::capture_logs();
        let logs = logs.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!logs.is_empty(), "no log line was captured");
        self.assert_absent("the logs of the test process", &logs);
    }

    /// Assert that no needle is in any of `files` (read now; each must exist).
    pub fn assert_absent_from_files(&self, files: &[PathBuf]) {
        for f in files {
            let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            self.assert_absent(&f.display().to_string(), &bytes);
        }
    }

    /// Assert that no needle is in any file written under the directory of `snapshot` since it
    /// was taken, except `excluded` (files the test wrote). A file removed since it was listed
    /// (a compilation cache evicting an entry) is skipped: it holds nothing any more.
    pub fn assert_absent_from_written(&self, snapshot: &FileSnapshot, excluded: &[&Path]) {
        for f in snapshot.written() {
            if excluded.contains(&f.as_path()) {
                continue;
            }
            match std::fs::read(&f) {
                Ok(bytes) => self.assert_absent(&f.display().to_string(), &bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{}: {e}", f.display()),
            }
        }
    }
}

/// What a search for a private key looks for: each base64 line of its PEM (of 32 characters or
/// more) and 32-byte windows of its DER.
pub fn key_needles(key_pem: &str) -> Vec<(String, Vec<u8>)> {
    let mut needles = Vec::new();
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for line in key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
    {
        needles.push((
            "a line of the private key".to_owned(),
            line.as_bytes().to_vec(),
        ));
    }
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .expect("the key's PEM is base64");
    for window in der.chunks(32).filter(|w| w.len() == 32) {
        needles.push(("the private key's DER bytes".to_owned(), window.to_vec()));
    }
    assert!(
        needles.len() >= 4,
        "implausible key: {} needles",
        needles.len()
    );
    needles
}

/// Whether `needle` occurs in `hay` (memchr's substring search: the logs of a test process are
/// megabytes, searched for dozens of needles).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

/// The files under a directory (recursively) with their modification time and length, to tell
/// afterwards which files a process wrote there.
#[derive(Debug)]
pub struct FileSnapshot {
    dir: PathBuf,
    files: BTreeMap<PathBuf, (Option<SystemTime>, u64)>,
}

impl FileSnapshot {
    /// The files under `dir` now (none when it does not exist yet).
    pub fn take(dir: &Path) -> FileSnapshot {
        let mut files = BTreeMap::new();
        walk(dir, &mut files);
        FileSnapshot {
            dir: dir.to_owned(),
            files,
        }
    }

    /// The files under the directory that are new or changed (time or length) since the snapshot.
    pub fn written(&self) -> Vec<PathBuf> {
        let mut now = BTreeMap::new();
        walk(&self.dir, &mut now);
        now.into_iter()
            .filter(|(p, meta)| self.files.get(p) != Some(meta))
            .map(|(p, _)| p)
            .collect()
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (Option<SystemTime>, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => walk(&p, out),
            Ok(m) => {
                out.insert(p, (m.modified().ok(), m.len()));
            }
            Err(_) => {}
        }
    }
}
