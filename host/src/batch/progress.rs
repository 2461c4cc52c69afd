//! Counters of a run, the progress display (a bar on a terminal, else a line every few seconds on
//! stderr) and the final summary.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Live counters of a run, shared by the workers (and readable by a caller while it runs).
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    /// Items of this run (after sharding and skipping).
    pub total: AtomicU64,
    /// Items done in this run.
    pub done: AtomicU64,
    /// Items skipped because a previous run finished them.
    pub skipped: AtomicU64,
    /// Items failed in this run.
    pub failed: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// HTTP requests sent (retries included).
    pub requests: AtomicU64,
    failed_by_kind: Mutex<BTreeMap<String, u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failed_by_kind: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Stats {
    #[cfg_attr(not(feature = "sandbox"), allow(dead_code))]
    pub(crate) fn record_failure(&self, kind: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut m = self
            .failed_by_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry(kind.to_owned()).or_insert(0) += 1;
    }

    /// A snapshot for the summary.
    pub fn summary(&self, interrupted: bool) -> Summary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Summary {
            total: get(&self.total),
            done: get(&self.done),
            skipped: get(&self.skipped),
            failed: get(&self.failed),
            failed_by_kind: self
                .failed_by_kind
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            bytes: get(&self.bytes),
            requests: get(&self.requests),
            wall: self.started.elapsed(),
            interrupted,
        }
    }

    fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (done, failed, total) = (get(&self.done), get(&self.failed), get(&self.total));
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (done + failed) as f64 / secs;
        let left = total.saturating_sub(done + failed);
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "?".into()
        };
        format!(
            "{done} done, {failed} failed of {total}; {rate:.1} items/s; {}; ETA {eta}",
            human_bytes(get(&self.bytes))
        )
    }
}

/// The end of a run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Items of this run (after sharding and skipping).
    pub total: u64,
    /// Done in this run.
    pub done: u64,
    /// Skipped (done by a previous run).
    pub skipped: u64,
    /// Failed in this run.
    pub failed: u64,
    /// Failures by kind.
    pub failed_by_kind: BTreeMap<String, u64>,
    /// Bytes written.
    pub bytes: u64,
    /// HTTP requests sent.
    pub requests: u64,
    /// Wall time.
    pub wall: Duration,
    /// Whether the run was interrupted before every item was tried.
    pub interrupted: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.wall.as_secs_f64().max(0.001);
        write!(
            f,
            "batch{}: {} done, {} skipped, {} failed",
            if self.interrupted { " interrupted" } else { "" },
            self.done,
            self.skipped,
            self.failed
        )?;
        if !self.failed_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .failed_by_kind
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        write!(
            f,
            "; {} in {:.1}s; {} requests, {:.1} requests/s",
            human_bytes(self.bytes),
            secs,
            self.requests,
            self.requests as f64 / secs
        )
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// Nothing (library use, tests).
    Quiet,
    /// An indicatif bar on stderr when it is a terminal, else a plain line every few seconds.
    Auto,
}

/// A running progress display; stops when dropped.
#[derive(Debug)]
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// Start showing `stats`.
    pub fn start(stats: std::sync::Arc<Stats>, display: Display) -> Progress {
        if display == Display::Quiet {
            return Progress {
                task: None,
                bar: None,
            };
        }
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::new(stats.total.load(Ordering::Relaxed));
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            let b = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                    b.set_length(get(&stats.total));
                    b.set_position(get(&stats.done) + get(&stats.failed));
                    let secs = stats.started.elapsed().as_secs_f64().max(0.001);
                    b.set_message(format!(
                        "{} failed, {:.0}/s, {}",
                        get(&stats.failed),
                        get(&stats.done) as f64 / secs,
                        human_bytes(get(&stats.bytes))
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Progress {
                task: Some(task),
                bar: Some(bar),
            }
        } else {
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    eprintln!("fapi-host batch: {}", stats.line());
                }
            });
            Progress {
                task: Some(task),
                bar: None,
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
