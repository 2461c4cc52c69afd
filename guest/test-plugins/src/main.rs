//! `probe`: one WASI command whose subcommands exercise each sandbox rule, for the end-to-end tests.
//!
//! Every subcommand that finishes prints exactly ONE line of JSON to stdout and exits 0:
//!
//! - `{"ok": {...details...}}` when the operation worked, or
//! - `{"err": "<variant>", "stage": "<where>", "detail": "<text>"}` when it failed, where `<variant>` is
//!   the error's case name (`Denied`, `HttpRequestDenied`, `NotFound`, ...).
//!
//! A usage error prints `{"err": "Usage", ...}` and exits 2. `loop`, `recurse`, `alloc` (past the memory
//! limit), `trap-mid-request` and `exit` end the instance instead, by design; they say what they are about
//! to do on stderr. The shape of each subcommand's `ok` is documented on its function.

use std::process::ExitCode;

use serde_json::{Value, json};

mod fapi;
mod http;
mod sandbox;

/// Read size for streaming bodies: 64 KiB.
const CHUNK: usize = 64 * 1024;

/// A failed operation, printed as `{"err": err, "stage": stage, "detail": detail}`.
#[derive(Debug)]
pub struct Failure {
    /// The error's case name, e.g. `Denied`.
    pub err: String,
    /// Where it happened, e.g. `fetch`, `body`, `handle`, `get`, `io`.
    pub stage: &'static str,
    /// The full text (the error's payload or debug form).
    pub detail: String,
}

impl Failure {
    /// A failure with these parts.
    pub fn new(err: impl Into<String>, stage: &'static str, detail: impl Into<String>) -> Self {
        Failure {
            err: err.into(),
            stage,
            detail: detail.into(),
        }
    }

    /// The JSON object of this failure (also used inside `errors` lists).
    pub fn to_json(&self) -> Value {
        json!({ "err": self.err, "stage": self.stage, "detail": self.detail })
    }
}

/// What a subcommand produced.
pub type Outcome = Result<Value, Failure>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        ["fetch", url] => fapi::fetch(url),
        ["fetch-method", method, url] => fapi::fetch_method(method, url),
        ["fetch-header", url, name, value] => fapi::fetch_header(url, name, value),
        ["many-headers", url, count, size] => {
            parse2(count, size).and_then(|(c, s)| fapi::many_headers(url, c, s))
        }
        ["post", url, bytes] => parse(bytes).and_then(|n| fapi::post(url, n)),
        ["stream", url] => fapi::stream(url),
        ["read-all", url] => fapi::read_all(url),
        ["echo", url] => fapi::echo(url),
        ["mixed", url, n] => parse(n).and_then(|n| fapi::mixed(url, n)),
        ["trap-mid-request", url] => fapi::trap_mid_request(url),
        ["repeat", url, n] => parse(n).and_then(|n| fapi::repeat(url, n)),
        ["http-repeat", url, n] => parse(n).and_then(|n| http::repeat(url, n)),
        ["http", url] => http::get(url),
        ["http-header", url, name, value] => http::get_with_header(url, name, value),
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

/// Parse a numeric argument, or fail with `Usage`.
fn parse<T: std::str::FromStr>(arg: &str) -> Result<T, Failure> {
    arg.parse()
        .map_err(|_| Failure::new("Usage", "args", format!("not a number: {arg:?}")))
}

fn parse2<A: std::str::FromStr, B: std::str::FromStr>(a: &str, b: &str) -> Result<(A, B), Failure> {
    Ok((parse(a)?, parse(b)?))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The case name of an error from its `Debug` form: `DnsError(DnsErrorPayload { .. })` -> `DnsError`.
pub fn variant_name(debug: &str) -> String {
    debug
        .split(['(', '{', ' '])
        .next()
        .unwrap_or(debug)
        .to_string()
}
