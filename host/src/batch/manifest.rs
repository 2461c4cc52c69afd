//! `DIR/manifest.jsonl`: one JSON line per finished item, appended and flushed as each item ends,
//! and read back to resume.
//!
//! A line is written with one `write` on a file opened with `O_APPEND`, after the item's file has
//! been renamed into place: a crash can lose the last line (the item is then fetched again) but
//! never records a file that is not there. Shards writing to one directory append to one file.
//! An append that fails (a full disk) may leave part of a line: the next append starts with a
//! newline, so that the fragment is a line of its own, which readers skip, and the next record
//! is whole.
//! Records carry URLs, statuses, sizes, hashes and error texts built from those — never a header
//! value, so never a credential.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::input::Shard;
use super::naming::MANIFEST;
use crate::error::{Error, Result};

/// How an item ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its file is in place with the recorded size and hash.
    Done,
    /// It failed; `error` says why.
    Failed,
}

/// Why an item failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    /// A short machine-readable kind: `input`, `http`, `network`, `body`, `io`, `plugin`,
    /// `plugin_stopped`, `request`, `authorization`, `interrupted`.
    pub kind: String,
    /// A human-readable explanation (never credentials).
    pub message: String,
}

/// One manifest line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `done` or `failed`.
    pub outcome: Outcome,
    /// Input line (1-based).
    pub line: u64,
    /// Item index (0-based).
    pub index: u64,
    /// The URL (empty for an input line that is not an item).
    pub url: String,
    /// Final HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// Bytes written (the plugin's output with `--plugin`).
    pub bytes: u64,
    /// SHA-256 of what was written, hex.
    pub sha256: Option<String>,
    /// Time the item took, milliseconds.
    pub duration_ms: u64,
    /// Requests sent for it (retries and replays included).
    pub attempts: u32,
    /// The `x-fapi-interaction-id` of the last request.
    pub interaction_id: Option<String>,
    /// The output file name in the directory (set when done).
    pub file: Option<String>,
    /// Why it failed.
    pub error: Option<RecordError>,
    /// The grant the item was fetched with (its JSON line's `grant`, else `--grant`): a name,
    /// never a token. Absent without a grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

impl Record {
    /// Append this record's manifest line (JSON and a newline) to `buf`.
    pub(crate) fn write_line(&self, buf: &mut Vec<u8>) {
        // A record is strings and numbers: serializing it into memory does not fail, and if it
        // ever did, no partial line would be left behind.
        let start = buf.len();
        match serde_json::to_writer(&mut *buf, self) {
            Ok(()) => buf.push(b'\n'),
            Err(_) => buf.truncate(start),
        }
    }
}

/// The appending side of a manifest.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    file: Mutex<Appender<std::fs::File>>,
}

/// Appends whole lines to `out`, ending first a line that a failed append may have left cut.
#[derive(Debug)]
struct Appender<W> {
    out: W,
    /// The last append failed: part of its lines may have been written, without a newline.
    torn: bool,
}

impl<W: std::io::Write> Appender<W> {
    fn new(out: W) -> Appender<W> {
        Appender { out, torn: false }
    }

    /// Append `lines` (whole lines) in one `write`, after a newline if the last append failed.
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let r = if self.torn {
            let mut after_a_fragment = Vec::with_capacity(lines.len() + 1);
            after_a_fragment.push(b'\n');
            after_a_fragment.extend_from_slice(lines);
            self.out.write_all(&after_a_fragment)
        } else {
            self.out.write_all(lines)
        }
        .and_then(|()| self.out.flush());
        self.torn = r.is_err();
        r
    }
}

impl Manifest {
    /// Open (create) `dir/manifest.jsonl` for appending. If a crash left a last line without its
    /// newline, one is added so that the next record starts on its own line.
    pub fn open(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let io = |e: std::io::Error| Error::Io(format!("manifest {}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            use std::io::Seek as _;
            file.seek(std::io::SeekFrom::Start(len - 1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io)?;
            }
        }
        Ok(Manifest {
            path,
            file: Mutex::new(Appender::new(file)),
        })
    }

    /// Append one record (one `write`, so lines of concurrent writers never interleave).
    pub fn append(&self, record: &Record) -> Result<()> {
        let mut line = Vec::new();
        record.write_line(&mut line);
        self.append_lines(&line)
    }

    /// Append whole lines built with [`Record::write_line`], in one `write`.
    pub(crate) fn append_lines(&self, lines: &[u8]) -> Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.append(lines).map_err(|e| {
                Error::Io(format!(
                    "manifest {}: {e}; free space (or fix the directory), then run the same command again: items without a line are fetched again",
                    self.path.display()
            ))
        })
    }

    /// Flush to stable storage (at the end of a run).
    pub fn sync(&self) -> Result<()> {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.out
            .sync_all()
            .map_err(|e| Error::Io(format!("manifest {}: {e}", self.path.display())))
    }
}

/// Read every record of `dir/manifest.jsonl` (none when it does not exist). Lines that do not
/// parse (a line cut by a crash or a failed write, even in the middle of a UTF-8 character) are
/// skipped.
pub fn read(dir: &Path) -> Result<Vec<Record>> {
    let path = dir.join(MANIFEST);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io(format!("manifest {}: {e}", path.display()))),
    };
    Ok(parse_records(&bytes))
}

/// The records of a manifest's bytes, skipping every line that is not one.
fn parse_records(bytes: &[u8]) -> Vec<Record> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// One item's last outcome in a [`merge`]d view, and where its line was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The item's last record.
    pub record: Record,
    /// Which of the sources given to [`merge`] it came from (an index into them).
    pub source: usize,
}

/// What [`merge`] read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Each item's last record, by item index (ascending).
    pub items: Vec<Merged>,
    /// Records read (every line that is one).
    pub records: u64,
    /// Records that a later record of the same item superseded (an item fetched again).
    pub superseded: u64,
    /// Lines that are not a record (cut by a crash or a failed write), skipped.
    pub cut: u64,
}

/// The clean view of one or more manifests (shards of one input, in separate directories or
/// sharing one): one record per item index, its last one, reading `sources` in the order given
/// and each manifest from top to bottom; lines that are not a record (cut by a crash or a failed
/// write) are skipped and counted. A source is a directory holding `manifest.jsonl`, or a
/// manifest file itself. Reads line by line: memory grows with the items, not the lines.
pub fn merge(sources: &[PathBuf]) -> Result<MergeReport> {
    use std::io::BufRead as _;
    let mut last: std::collections::BTreeMap<u64, Merged> = std::collections::BTreeMap::new();
    let mut report = MergeReport::default();
    for (source, path) in sources.iter().enumerate() {
        let file = if path.is_dir() {
            path.join(MANIFEST)
        } else {
            path.clone()
        };
        let io = |e: std::io::Error| {
            let fix = if e.kind() == std::io::ErrorKind::NotFound {
                " (give the --out directory of a batch, or its manifest.jsonl)"
            } else {
                ""
            };
            Error::Io(format!("manifest {}: {e}{fix}", file.display()))
        };
        let mut reader = std::io::BufReader::new(std::fs::File::open(&file).map_err(io)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
                break;
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<Record>(text) else {
                report.cut += 1;
                continue;
            };
            report.records += 1;
            if last
                .insert(record.index, Merged { record, source })
                .is_some()
            {
                report.superseded += 1;
            }
        }
    }
    report.items = last.into_values().collect();
    Ok(report)
}

/// The items a previous run finished: `(file, url)` of each `done` record whose file is present
/// in `dir` with the recorded size and SHA-256. These are skipped on resume; the rest are retried.
///
/// With `shard`, only that shard's records are looked at: shards sharing one directory (and so
/// one manifest) never open, let alone hash, each other's files.
pub fn completed(
    dir: &Path,
    records: &[Record],
    shard: Option<Shard>,
    stopping: impl Fn() -> bool,
) -> HashMap<(String, String), Record> {
    let mut done = HashMap::new();
    for r in records {
        if shard.is_some_and(|s| !s.contains(r.index)) {
            continue;
        }
        // Every file is read and hashed: a resume over much output takes a while, and a signal
        // ends it (the items not checked yet are not counted done; the next run checks them).
        if stopping() {
            break;
        }
        if r.outcome != Outcome::Done {
            continue;
        }
        let (Some(file), Some(hash)) = (&r.file, &r.sha256) else {
            continue;
        };
        let key = (file.clone(), r.url.clone());
        if done.contains_key(&key) {
            continue;
        }
        if file_matches(&dir.join(file), r.bytes, hash) {
            done.insert(key, r.clone());
        }
    }
    done
}

fn file_matches(path: &Path, bytes: u64, sha256: &str) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.len() != bytes {
        return false;
    }
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    hex(&hasher.finalize()) == sha256
}

/// Lower-case hex (a digest per item: no formatting machinery per byte).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[]), "");
    }

    fn record(index: u64, file: &str, body: &[u8]) -> Record {
        Record {
            outcome: Outcome::Done,
            line: index + 1,
            index,
            url: format!("https://h/{index}"),
            status: Some(200),
            bytes: body.len() as u64,
            sha256: Some(hex(&Sha256::digest(body))),
            duration_ms: 3,
            attempts: 1,
            interaction_id: None,
            file: Some(file.into()),
            error: None,
            grant: None,
        }
    }

    #[test]
    fn resume_skips_only_intact_done_items() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("a"), b"alpha").expect("write");
        std::fs::write(d.join("b"), b"tampered").expect("write");
        std::fs::write(d.join("c"), b"gamma").expect("write");
        let m = Manifest::open(d).expect("open");
        m.append(&record(0, "a", b"alpha")).expect("append");
        m.append(&record(1, "b", b"beta")).expect("append"); // hash no longer matches
        m.append(&record(2, "c", b"gamma")).expect("append");
        m.append(&record(3, "missing", b"x")).expect("append"); // file gone
        let mut failed = record(4, "e", b"");
        failed.outcome = Outcome::Failed;
        m.append(&failed).expect("append");
        drop(m);
        // A crash cut the last line: it is ignored, and the next append starts a new line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join(MANIFEST))
            .expect("open");
        f.write_all(b"{\"outcome\":\"done\",\"li").expect("write");
        drop(f);
        let m = Manifest::open(d).expect("reopen");
        m.append(&record(5, "f", b"")).expect("append");
        let records = read(d).expect("read");
        assert_eq!(records.len(), 6);
        std::fs::write(d.join("f"), b"").expect("write");
        let done = completed(d, &records, None, || false);
        let mut files: Vec<_> = done.keys().map(|(f, _)| f.as_str()).collect();
        files.sort();
        assert_eq!(files, vec!["a", "c", "f"]);
        // A signal during the check ends it: what was checked before it counts, nothing after.
        let asked = std::cell::Cell::new(0);
        let done = completed(d, &records, None, || {
            asked.set(asked.get() + 1);
            asked.get() > 1
        });
        let files: Vec<_> = done.keys().map(|(f, _)| f.as_str()).collect();
        assert_eq!(files, vec!["a"]);
        assert_eq!(asked.get(), 2);
    }

    /// Takes `budget` bytes, then fails once (a full disk), then takes everything.
    struct FillsUp {
        got: Vec<u8>,
        budget: Option<usize>,
    }

    impl std::io::Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match self.budget {
                Some(0) => {
                    self.budget = None;
                    Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
                }
                Some(left) => {
                    let n = buf.len().min(left);
                    self.budget = Some(left - n);
                    self.got.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
                None => {
                    self.got.extend_from_slice(buf);
                    Ok(buf.len())
                }
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// After an append that failed half-way, the next one starts on a line of its own: the
    /// fragment is skipped when read, the records after it are read.
    #[test]
    fn an_append_after_a_failed_one_starts_a_new_line() {
        let lines = |records: &[Record]| {
            let mut buf = Vec::new();
            for r in records {
                r.write_line(&mut buf);
            }
            buf
        };
        let mut torn = record(1, "b", b"beta");
        torn.url = "https://h/caf\u{e9}".into(); // cut inside its 'é'
        let first = lines(&[record(0, "a", b"alpha")]);
        let second = lines(&[torn]);
        let cut = second
            .iter()
            .position(|&b| b == 0xc3)
            .expect("two-byte character")
            + 1;
        let mut a = Appender::new(FillsUp {
            got: Vec::new(),
            budget: Some(first.len() + cut),
        });
        a.append(&first).expect("room for the first");
        a.append(&second).expect_err("the disk fills up");
        a.append(&lines(&[
            record(2, "c", b"gamma"),
            record(3, "d", b"delta"),
        ]))
        .expect("room again");
        a.append(&lines(&[record(4, "e", b"")])).expect("room");
        let got = parse_records(&a.out.got);
        let indexes: Vec<u64> = got.iter().map(|r| r.index).collect();
        assert_eq!(
            indexes,
            vec![0, 2, 3, 4],
            "{:?}",
            String::from_utf8_lossy(&a.out.got)
        );
        // Only the line after the failure starts with a newline.
        assert_eq!(a.out.got.iter().filter(|&&b| b == b'\n').count(), 5);
    }

    /// The same through the file: a fragment in the middle of the manifest, cut inside a UTF-8
    /// character, loses only its own record.
    #[test]
    fn a_manifest_with_a_fragment_cut_inside_a_character_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = Vec::new();
        record(0, "a", b"alpha").write_line(&mut bytes);
        bytes.extend_from_slice(b"{\"outcome\":\"failed\",\"url\":\"https://h/caf\xc3\n");
        record(2, "c", b"gamma").write_line(&mut bytes);
        std::fs::write(dir.path().join(MANIFEST), &bytes).expect("write");
        let got = read(dir.path()).expect("read");
        let indexes: Vec<u64> = got.iter().map(|r| r.index).collect();
        assert_eq!(indexes, vec![0, 2]);
    }

    /// Shards in a shared directory: a shard's check looks at its own records only, and so
    /// never counts (or opens) another shard's file.
    #[test]
    fn a_shard_checks_only_its_own_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let m = Manifest::open(d).expect("open");
        for i in 0..6u64 {
            let body = format!("item {i}");
            std::fs::write(d.join(format!("f{i}")), &body).expect("write");
            m.append(&record(i, &format!("f{i}"), body.as_bytes()))
                .expect("append");
        }
        let records = read(d).expect("read");
        let asked = std::cell::Cell::new(0);
        let done = completed(d, &records, Some(Shard { k: 1, n: 3 }), || {
            asked.set(asked.get() + 1);
            false
        });
        let mut files: Vec<_> = done.keys().map(|(f, _)| f.as_str()).collect();
        files.sort();
        assert_eq!(files, vec!["f1", "f4"]);
        assert_eq!(asked.get(), 2, "only this shard's records are checked");
        assert_eq!(completed(d, &records, None, || false).len(), 6);
    }

    fn write_manifest(dir: &Path, lines: &[&[u8]]) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(MANIFEST), lines.concat()).expect("write");
    }

    fn line_of(r: &Record) -> Vec<u8> {
        let mut buf = Vec::new();
        r.write_line(&mut buf);
        buf
    }

    /// The merged view: one record per item, its last; cut lines skipped and counted; several
    /// shards' directories, or one shared by shards, or a manifest file given itself.
    #[test]
    fn merge_keeps_each_items_last_record_and_skips_cut_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("shard-0"), dir.path().join("shard-1"));
        let mut failed = record(2, "f2", b"");
        failed.outcome = Outcome::Failed;
        failed.file = None;
        failed.sha256 = None;
        let refetched = record(2, "f2", b"second");
        // Shard 0/2: items 0, 2 (failed, then done on resume), a line cut by a crash in between,
        // and one at the end without its newline.
        write_manifest(
            &a,
            &[
                &line_of(&record(0, "f0", b"zero")),
                &line_of(&failed),
                b"{\"outcome\":\"done\",\"line\":5,\"ind\n",
                b"\n",
                &line_of(&refetched),
                b"{\"outcome\":\"do",
            ],
        );
        // Shard 1/2: items 1 and 3, item 1 twice (its file was fetched again).
        write_manifest(
            &b,
            &[
                &line_of(&record(3, "f3", b"three")),
                &line_of(&record(1, "f1", b"one")),
                &line_of(&record(1, "f1", b"one again")),
            ],
        );
        let report = merge(&[a.clone(), b.join(MANIFEST)]).expect("merge");
        let got: Vec<(u64, Outcome, u64, usize)> = report
            .items
            .iter()
            .map(|m| (m.record.index, m.record.outcome, m.record.bytes, m.source))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, Outcome::Done, 4, 0),
                (1, Outcome::Done, 9, 1),
                (2, Outcome::Done, 6, 0),
                (3, Outcome::Done, 5, 1),
            ]
        );
        assert_eq!((report.records, report.superseded, report.cut), (6, 2, 2));
        // The last record wins, in the order the sources are given.
        let mut late_failure = record(0, "f0", b"");
        late_failure.outcome = Outcome::Failed;
        write_manifest(&b, &[&line_of(&late_failure)]);
        let report = merge(&[a.clone(), b.clone()]).expect("merge");
        assert_eq!(report.items[0].record.outcome, Outcome::Failed);
        let report = merge(&[b.clone(), a.clone()]).expect("merge");
        assert_eq!(report.items[0].record.outcome, Outcome::Done);
        // A directory without a manifest is an error that says what to give.
        let e = merge(&[dir.path().join("nowhere")]).expect_err("missing");
        assert!(e.to_string().contains("give the --out directory"), "{e}");
    }

    #[test]
    fn records_round_trip() {
        let r = record(7, "x", b"abc");
        let line = serde_json::to_string(&r).expect("json");
        assert!(
            line.starts_with("{\"outcome\":\"done\",\"line\":8,\"index\":7"),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Record>(&line).expect("parse"), r);
    }
}
