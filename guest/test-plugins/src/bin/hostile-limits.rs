//! A hostile plugin that tries to get more than its share: more requests in flight than the
//! per-guest limit by mixing `fapi-fetch` and `wasi:http`, more requests than the per-run budget by
//! alternating the interfaces, and request bodies over the size limit through both.
//!
//! Usage: `hostile-limits URL N BODY_BYTES`: N requests held open through each interface at once,
//! then 2N+2 sequential requests alternating the interfaces, then a POST of BODY_BYTES bytes through
//! each. Prints a [`Report`]; attacks are `concurrent`, `budget` and `huge-body`.

use serde_json::json;
use test_plugins::{Failure, Report, fapi, http, parse};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, n, body] = args.as_slice() else {
        println!(
            "{}",
            Failure::new("Usage", "args", "hostile-limits URL N BODY_BYTES").to_json()
        );
        std::process::exit(2);
    };
    let (n, body): (usize, usize) = match (parse(n), parse(body)) {
        (Ok(n), Ok(b)) => (n, b),
        _ => std::process::exit(2),
    };
    let mut report = Report::default();
    report.record("concurrent", "both", url, fapi::mixed(url, n));
    let mut results = Vec::new();
    for i in 0..(2 * n + 2) {
        let (via, outcome) = if i % 2 == 0 {
            ("fapi-fetch", fapi::fetch(url))
        } else {
            ("wasi:http", http::get(url))
        };
        results.push(match outcome {
            Ok(v) => json!({ "via": via, "status": v["status"] }),
            Err(f) => json!({ "via": via, "err": f.err, "detail": f.detail }),
        });
    }
    report.record("budget", "both", url, Ok(json!({ "results": results })));
    report.record("huge-body", "fapi-fetch", url, fapi::post(url, body));
    report.record("huge-body", "wasi:http", url, http::post(url, body));
    report.print();
}
