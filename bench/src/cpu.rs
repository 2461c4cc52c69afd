//! CPU time and resident memory, from the kernel.
//!
//! In-process clients run on one dedicated thread (a current-thread runtime), so their CPU cost is
//! the `getrusage(RUSAGE_THREAD)` delta of that thread: it excludes the in-process servers, which
//! run on the main runtime's threads. A child process (curl, Python, `fapi-host`) is charged its
//! `getrusage(RUSAGE_CHILDREN)` delta across its wait; children are only ever run one at a time.

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};

fn total(who: UsageWho) -> Duration {
    let u = getrusage(who).unwrap();
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

/// User + system CPU time of the calling thread.
pub fn thread() -> Duration {
    total(UsageWho::RUSAGE_THREAD)
}

/// User + system CPU time of this whole process.
pub fn process() -> Duration {
    total(UsageWho::RUSAGE_SELF)
}

/// User + system CPU time of all waited-for children of this process.
pub fn children() -> Duration {
    total(UsageWho::RUSAGE_CHILDREN)
}

/// The largest peak resident set (KiB) of the waited-for children: with a single child, its own.
pub fn children_peak_kib() -> u64 {
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .max_rss()
        .max(0) as u64
}

/// This process's resident set (VmRSS), KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
