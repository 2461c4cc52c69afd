//! A hostile plugin that tries to set the credentials or routing itself, or to smuggle a header past
//! the checks: Authorization, Proxy-Authorization, Cookie, Host, DPoP and x-fapi-* in several cases,
//! framing headers, CR/LF and NUL in names and values, and header counts and sizes over the limits,
//! through both `fapi-fetch` and `wasi:http`.
//!
//! Usage: `hostile-headers URL` (an allowed URL). Prints a [`Report`]; attacks are `forbidden:<name>`,
//! `injection:<how>`, `too-many`, `too-large` and `too-large-in-all`, all within wasmtime-wasi-http's
//! own field size limit (128 KiB) so that the host's checks are what answers.
//! `hostile-headers URL http-oversize COUNT SIZE`: one wasi:http request with COUNT headers of SIZE
//! bytes each (past that limit, wasmtime-wasi-http traps the guest).

use test_plugins::{Failure, Report, fapi, http};

/// Methods no guest may use.
const METHODS: &[&str] = &["TRACE", "CONNECT", "TRACK", "PROPFIND"];

const FORBIDDEN: &[&str] = &[
    "Authorization",
    "authorization",
    "AUTHORIZATION",
    "Proxy-Authorization",
    "Cookie",
    "Host",
    "DPoP",
    "x-fapi-interaction-id",
    "X-FAPI-Auth-Date",
    "x-fapi-customer-ip-address",
    "Transfer-Encoding",
    "Content-Length",
    "Connection",
    "Upgrade",
];

/// (how, name, value), with `\r`, `\n` and `\0` as escapes (the probe's `unescape` turns them into
/// the real bytes).
const INJECTIONS: &[(&str, &str, &str)] = &[
    (
        "crlf-in-value",
        "x-a",
        "a\\r\\nAuthorization: Bearer stolen",
    ),
    ("lf-in-value", "x-a", "a\\nCookie: c=1"),
    ("cr-in-value", "x-a", "a\\rb"),
    ("nul-in-value", "x-a", "a\\0b"),
    ("crlf-in-name", "x-a\\r\\nAuthorization", "Bearer stolen"),
    ("nul-in-name", "x-a\\0", "v"),
    ("space-in-name", "Authorization ", "Bearer stolen"),
    ("colon-in-name", "x-a:b", "v"),
    ("empty-name", "", "v"),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut report = Report::default();
    let url = match args.as_slice() {
        [url] => url.clone(),
        [url, mode, count, size] if mode == "http-oversize" => {
            let outcome =
                test_plugins::parse2(count, size).and_then(|(c, s)| http::many_headers(url, c, s));
            report.record("oversize", "wasi:http", url, outcome);
            report.print();
            return;
        }
        _ => {
            let usage = "hostile-headers URL [http-oversize COUNT SIZE]";
            println!("{}", Failure::new("Usage", "args", usage).to_json());
            std::process::exit(2);
        }
    };
    for name in FORBIDDEN {
        let attack = format!("forbidden:{name}");
        report.record(
            &attack,
            "fapi-fetch",
            &url,
            fapi::fetch_header(&url, name, "Bearer stolen"),
        );
        report.record(
            &attack,
            "wasi:http",
            &url,
            http::get_with_header(&url, name, "Bearer stolen"),
        );
    }
    for method in METHODS {
        let attack = format!("method:{method}");
        report.record(
            &attack,
            "fapi-fetch",
            &url,
            fapi::fetch_method(method, &url),
        );
        report.record(&attack, "wasi:http", &url, http::with_method(&url, method));
    }
    for (how, name, value) in INJECTIONS {
        let attack = format!("injection:{how}");
        report.record(
            &attack,
            "fapi-fetch",
            &url,
            fapi::fetch_header(&url, name, value),
        );
        report.record(
            &attack,
            "wasi:http",
            &url,
            http::get_with_header(&url, name, value),
        );
    }
    // (attack, headers, bytes each) through fapi-fetch, then through wasi:http (kept under
    // wasmtime-wasi-http's own 128 KiB field limit, past which it traps the guest).
    let fapi_sizes = [
        ("too-many", 1000, 8),
        ("too-large", 1, 1 << 20),
        ("too-large-in-all", 60, 4000),
    ];
    let http_sizes = [
        ("too-many", 1000, 8),
        ("too-large", 1, 9000),
        ("too-large-in-all", 20, 4000),
    ];
    for (attack, count, size) in fapi_sizes {
        report.record(
            attack,
            "fapi-fetch",
            &url,
            fapi::many_headers(&url, count, size),
        );
    }
    for (attack, count, size) in http_sizes {
        report.record(
            attack,
            "wasi:http",
            &url,
            http::many_headers(&url, count, size),
        );
    }
    report.print();
}
