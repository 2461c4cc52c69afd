//! The batch's writer: one thread that puts finished outputs in place and appends their manifest
//! lines.
//!
//! An item's task fetches and hashes its body, then hands the writer a [`Job`] and ends: it never
//! waits on the file system for a small body. The writer takes the jobs that are waiting (up to
//! [`MAX_JOBS`] at a time), for each writes the body to its temporary file and renames it into
//! place, then appends all their lines in one `write`: a line is written only after its file is
//! in place, so the manifest never records a file that is not there. A job carries a place in the
//! writer's queue (its item's fetching place is freed at hand-off), released once the item is
//! recorded, so the jobs waiting stay bounded, each holding at most 256 KiB in memory (a larger
//! output is on disk already): memory stays bounded.
//!
//! Directory changes are serialized anyway (creating and renaming take the directory's lock), so
//! one thread loses no parallelism on them and saves two thread hand-offs per item.

use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::manifest::{Manifest, Outcome, Record, RecordError};
use super::progress::Stats;
use super::runner::Stop;
use crate::error::{Error, Result};

/// At most this many jobs are written between two appends to the manifest.
const MAX_JOBS: usize = 64;

/// What is left to do for an item's output before it is recorded.
pub(super) enum Output {
    /// Nothing (the item failed, or was skipped as bad input).
    Nothing,
    /// Create `tmp`, write `data` to it, rename it to `fin`.
    Whole {
        tmp: PathBuf,
        fin: PathBuf,
        data: Chunks,
    },
    /// `tmp` holds the whole output already (streamed, or fsynced): rename it to `fin`.
    Rename { tmp: PathBuf, fin: PathBuf },
}

/// An item to finish and record.
pub(super) struct Job {
    pub output: Output,
    /// Its record, as if the output is put in place; made a failure of kind `io` if it cannot be.
    pub record: Record,
    /// Its place in the writer's queue, released once the item is recorded.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The sending side; clone it into every task.
pub(super) type Jobs = mpsc::Sender<Job>;

/// The running writer.
pub(super) struct Writer {
    done: oneshot::Receiver<Result<()>>,
}

impl Writer {
    /// Start the writer thread over `manifest`, counting outcomes in `stats`; a manifest that cannot
    /// be written stops the batch (`stop`), and the first such error ends [`Writer::finish`].
    pub(super) fn start(
        manifest: Manifest,
        stats: Arc<Stats>,
        stop: Stop,
    ) -> Result<(Jobs, Writer)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("fapi-batch-writer".into())
            .spawn(move || {
                let _ = done_tx.send(write_all(&rx, &manifest, &stats, &stop));
            })
            .map_err(|e| Error::Io(format!("starting the batch's writer thread: {e}")))?;
        Ok((tx, Writer { done }))
    }

    /// Wait until every job is written and recorded (all [`Jobs`] senders dropped) and the
    /// manifest is synced.
    pub(super) async fn finish(self) -> Result<()> {
        self.done.await.unwrap_or_else(|_| {
            Err(Error::Io(
                "the batch's writer thread stopped unexpectedly; run the same command again: \
                 items without a manifest line are fetched again"
                    .into(),
            ))
        })
    }
}

fn write_all(
    rx: &mpsc::Receiver<Job>,
    manifest: &Manifest,
    stats: &Stats,
    stop: &Stop,
) -> Result<()> {
    let mut first_error = None;
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_JOBS);
    let mut lines = Vec::new();
    while let Ok(job) = rx.recv() {
        jobs.push(job);
        while jobs.len() < MAX_JOBS {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        lines.clear();
        for job in &mut jobs {
            if let Err(e) = job.output.put() {
                fail_io(&mut job.record, &job.output, &e);
            }
            job.record.write_line(&mut lines);
        }
        if let Err(e) = manifest.append_lines(&lines) {
            // Nothing more can be recorded (a full disk, say): fetching on would only be lost
            // work. The items in flight end; the run ends with this error.
            stop.stop_starting();
            first_error.get_or_insert(e);
        }
        for job in jobs.drain(..) {
            count(stats, &job.record);
            // The item is recorded: its place is free for the next one.
            drop(job.permit);
        }
    }
    manifest.sync()?;
    first_error.map_or(Ok(()), Err)
}

impl Output {
    /// Put the output in place; on failure, remove the temporary file.
    fn put(&self) -> std::io::Result<()> {
        let (tmp, r) = match self {
            Output::Nothing => return Ok(()),
            Output::Whole { tmp, fin, data } => (
                tmp,
                create_new(tmp)
                    .and_then(|mut f| data.write_to(&mut f))
                    .and_then(|()| std::fs::rename(tmp, fin)),
            ),
            Output::Rename { tmp, fin } => (tmp, std::fs::rename(tmp, fin)),
        };
        if r.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        r
    }

    fn target(&self) -> Option<&Path> {
        match self {
            Output::Nothing => None,
            Output::Whole { fin, .. } | Output::Rename { fin, .. } => Some(fin),
        }
    }
}

/// A body as it arrived, chunk by chunk: kept without copying, written with `writev`.
#[derive(Default)]
pub(super) struct Chunks {
    chunks: Vec<Bytes>,
    /// Their total length.
    pub len: usize,
}

impl Chunks {
    /// Add a chunk; an empty one is not kept (a `writev` of nothing only would read as a full disk).
    pub(super) fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// Write every chunk to `out`, in as few `writev` calls as it takes.
    pub(super) fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = self.chunks.iter().map(|c| IoSlice::new(c)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match out.write_vectored(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Call `f` on every chunk, in order.
    pub(super) fn each(&self, mut f: impl FnMut(&[u8])) {
        for c in &self.chunks {
            f(c);
        }
    }
}

/// Create `path` for writing; it must not exist.
pub(super) fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

fn fail_io(record: &mut Record, output: &Output, e: &std::io::Error) {
    let target = output
        .target()
        .map_or_else(String::new, |p| p.display().to_string());
    record.outcome = Outcome::Failed;
    record.bytes = 0;
    record.sha256 = None;
    record.file = None;
    record.error = Some(RecordError {
        kind: "io".into(),
        message: format!(
            "writing {target}: {e}; free space (or fix the directory), then run the same command \
             again to fetch the items that failed"
        ),
    });
}

fn count(stats: &Stats, record: &Record) {
    match (&record.outcome, &record.error) {
        (Outcome::Done, _) => {
            stats.done.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(record.bytes, Ordering::Relaxed);
        }
        (Outcome::Failed, Some(e)) => stats.record_failure(&e.kind),
        (Outcome::Failed, None) => stats.record_failure("unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most 3 bytes a call, and is interrupted every other call.
    struct Trickle {
        got: Vec<u8>,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(3);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn chunks_are_written_whole_through_short_and_interrupted_writes() {
        let mut c = Chunks::default();
        for part in [&b"alpha"[..], b"", b"b", b"gamma-delta"] {
            c.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(c.len, 17);
        let mut out = Trickle {
            got: Vec::new(),
            calls: 0,
        };
        c.write_to(&mut out).expect("write");
        assert_eq!(out.got, b"alphabgamma-delta");
        let mut seen = Vec::new();
        c.each(|chunk| seen.extend_from_slice(chunk));
        assert_eq!(seen, b"alphabgamma-delta");
        Chunks::default()
            .write_to(&mut out)
            .expect("nothing to write");
        assert_eq!(out.got.len(), 17);
    }

    #[test]
    fn a_writer_that_takes_nothing_is_an_error_not_a_loop() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut c = Chunks::default();
        c.push(Bytes::from_static(b"x"));
        let e = c.write_to(&mut Full).expect_err("no progress");
        assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
    }
}
