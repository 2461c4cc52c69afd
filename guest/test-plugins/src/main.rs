//! `probe`: one WASI command whose subcommands exercise each sandbox rule, for the end-to-end tests.
//!
//! Every subcommand that finishes prints exactly ONE line of JSON to stdout and exits 0:
//!
//! - `{"ok": {...details...}}` when the operation worked, or
//! - `{"err": "<variant>", "stage": "<where>", "detail": "<text>"}` when it failed, where `<variant>` is
//!   the error's case name (`Denied`, `HttpRequestDenied`, `NotFound`, ...).
//!
//! A usage error prints `{"err": "Usage", ...}` and exits 2. `loop`, `recurse`, `alloc` (past the memory
//! limit), `trap-mid-request`, `handle` and `exit` end the instance instead, by design; they say what they are about
//! to do on stderr. The shape of each subcommand's `ok` is documented on its function.

use std::process::ExitCode;

use serde_json::json;
use test_plugins::{Failure, fapi, http, parse, parse2, sandbox};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        ["fetch", url] => fapi::fetch(url),
        ["fetch-method", method, url] => fapi::fetch_method(method, url),
        ["fetch-timeout", url, ms] => parse(ms).and_then(|ms| fapi::fetch_timeout(url, ms)),
        ["fetch-header", url, name, value] => fapi::fetch_header(url, name, value),
        ["many-headers", url, count, size] => {
            parse2(count, size).and_then(|(c, s)| fapi::many_headers(url, c, s))
        }
        ["post", url, bytes] => parse(bytes).and_then(|n| fapi::post(url, n)),
        ["stream", url] => fapi::stream(url),
        ["stream-count", url] => fapi::stream_count(url),
        ["read-all", url] => fapi::read_all(url),
        ["echo", url] => fapi::echo(url),
        ["mixed", url, n] => parse(n).and_then(|n| fapi::mixed(url, n)),
        ["fetch-many", url, n] => parse(n).and_then(|n| fapi::fetch_many(url, n)),
        ["trap-mid-request", url] => fapi::trap_mid_request(url),
        ["flood", url, n] => parse(n).and_then(|n| fapi::flood(url, n)),
        ["http-flood", url, n] => parse(n).and_then(|n| http::flood(url, n)),
        ["handle", mode] => sandbox::handle(mode, 0),
        ["handle", mode, n] => parse(n).and_then(|n| sandbox::handle(mode, n)),
        ["repeat", url, n] => parse(n).and_then(|n| fapi::repeat(url, n)),
        ["http-repeat", url, n] => parse(n).and_then(|n| http::repeat(url, n)),
        ["http", url] => http::get(url),
        ["http-timeout", url, ms] => parse(ms).and_then(|ms| http::get_timeout(url, ms)),
        ["http-header", url, name, value] => http::get_with_header(url, name, value),
        ["http-held-posts", url, n, bytes] => {
            parse2(n, bytes).and_then(|(n, b)| http::held_posts(url, n, b))
        }
        ["http-post", url, bytes] => parse(bytes).and_then(|n| http::post(url, n)),
        ["concurrent-http", url, n] => parse(n).and_then(|n| http::concurrent(url, n)),
        ["read-file", path] => sandbox::read_file(path),
        ["list-dir", path] => sandbox::list_dir(path),
        ["env"] => sandbox::env(),
        ["tcp", addr] => sandbox::tcp(addr),
        ["dns", name] => sandbox::dns(name),
        ["alloc", mib] => parse(mib).and_then(sandbox::alloc),
        ["try-alloc", mib] => parse(mib).and_then(sandbox::try_alloc),
        ["loop"] => sandbox::spin(),
        ["recurse"] => sandbox::recurse(),
        ["exit", code] => parse(code).and_then(sandbox::exit),
        ["stdin"] => sandbox::stdin(),
        _ => Err(Failure::new(
            "Usage",
            "args",
            format!("unknown subcommand or arguments: {args:?}"),
        )),
    };
    let usage = matches!(&outcome, Err(f) if f.err == "Usage");
    let line = match outcome {
        Ok(details) => json!({ "ok": details }),
        Err(failure) => failure.to_json(),
    };
    println!("{line}");
    if usage {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
