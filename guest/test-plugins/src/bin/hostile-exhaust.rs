//! A hostile plugin that tries to take the host down with it: memory, CPU, stack, a response read
//! whole past the size limit, and a trap in the middle of a request with its body open.
//!
//! Usage: `hostile-exhaust MODE [URL]` with MODE one of `memory` (grow until stopped), `loop`,
//! `recurse`, `read-huge URL` (read a response whole; the host refuses past its limit),
//! `trap-mid-request URL`. The first three never print a report: the host stops the instance.

use test_plugins::{Failure, Report, fapi, sandbox};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut report = Report::default();
    match args.as_slice() {
        ["memory"] => {
            // Grow by 16 MiB at a time, keeping everything, until the host says no.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 16 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        ["loop"] => report.record("loop", "cpu", "-", sandbox::spin()),
        ["recurse"] => report.record("recurse", "stack", "-", sandbox::recurse()),
        ["read-huge", url] => report.record("read-huge", "fapi-fetch", url, fapi::read_all(url)),
        ["trap-mid-request", url] => {
            report.record("trap", "fapi-fetch", url, fapi::trap_mid_request(url))
        }
        _ => report.record(
            "usage",
            "args",
            "-",
            Err(Failure::new(
                "Usage",
                "args",
                "memory|loop|recurse|read-huge URL|trap-mid-request URL",
            )),
        ),
    }
    report.print();
}
