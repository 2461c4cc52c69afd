//! Subcommands over the `fapi-fetch` import, through the `fapi-guest` SDK.
//!
//! Their `ok` is the response summary of [`summarize`] unless said otherwise; a failure is
//! `{"err": "<fapi_guest::Error case>", "stage": "fetch" | "body", "detail": "..."}`.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{CHUNK, Failure, Outcome, hex};
use fapi_guest::{Error, Request, Response};

/// `fetch URL`: GET, streaming the body in 64 KiB chunks.
pub fn fetch(url: &str) -> Outcome {
    summarize(fapi_guest::get(url).map_err(fetch_failure)?)
}

/// `fetch-timeout URL MS`: a GET that allows MS milliseconds until the response head.
pub fn fetch_timeout(url: &str, ms: u32) -> Outcome {
    summarize(
        Request::new("GET", url)
            .timeout(ms)
            .send()
            .map_err(fetch_failure)?,
    )
}

/// `fetch-method METHOD URL`.
pub fn fetch_method(method: &str, url: &str) -> Outcome {
    summarize(Request::new(method, url).send().map_err(fetch_failure)?)
}

/// `fetch-header URL NAME VALUE`: `\r`, `\n`, `\0` and `\\` in NAME and VALUE are unescaped first.
pub fn fetch_header(url: &str, name: &str, value: &str) -> Outcome {
    let request = Request::new("GET", url).header(unescape(name), unescape(value));
    summarize(request.send().map_err(fetch_failure)?)
}

/// `many-headers URL COUNT SIZE`: headers `x-h-0` .. `x-h-{COUNT-1}`, each a value of SIZE bytes `v`.
pub fn many_headers(url: &str, count: usize, size: usize) -> Outcome {
    let value = vec![b'v'; size];
    let request = (0..count).fold(Request::new("GET", url), |r, i| {
        r.header(format!("x-h-{i}"), &value)
    });
    summarize(request.send().map_err(fetch_failure)?)
}

/// `post URL BYTES`: a body of BYTES bytes `a`.
pub fn post(url: &str, bytes: usize) -> Outcome {
    summarize(fapi_guest::post(url, vec![b'a'; bytes]).map_err(fetch_failure)?)
}

/// `stream URL`: like `fetch`, and `ok` also has `chunks` (reads that returned data) and `max_chunk`
/// (the largest, never more than 65536). The body is never held whole.
pub fn stream(url: &str) -> Outcome {
    let mut response = fapi_guest::get(url).map_err(fetch_failure)?;
    let mut hasher = Sha256::new();
    let (len, chunks, max_chunk) = drain(&mut response, |c| hasher.update(c))?;
    let mut ok = head(&response);
    ok.insert("len".into(), json!(len));
    ok.insert("sha256".into(), json!(hex(&hasher.finalize())));
    ok.insert("chunks".into(), json!(chunks));
    ok.insert("max_chunk".into(), json!(max_chunk));
    Ok(Value::Object(ok))
}

/// `stream-count URL`: as `stream`, but the chunks are only counted, not hashed (for throughput
/// benchmarks, where the native clients do nothing with the bytes either).
/// `ok` = `{"status", "interaction_id", "headers", "len", "chunks", "max_chunk"}`.
pub fn stream_count(url: &str) -> Outcome {
    let mut response = fapi_guest::get(url).map_err(fetch_failure)?;
    let (len, chunks, max_chunk) = drain(&mut response, |_| {})?;
    let mut ok = head(&response);
    ok.insert("len".into(), json!(len));
    ok.insert("chunks".into(), json!(chunks));
    ok.insert("max_chunk".into(), json!(max_chunk));
    Ok(Value::Object(ok))
}

/// `read-all URL`: the body in one `read-all` call; `ok` as `fetch`.
pub fn read_all(url: &str) -> Outcome {
    let response = fapi_guest::get(url).map_err(fetch_failure)?;
    let mut ok = head(&response);
    let body = response.bytes().map_err(body_failure)?;
    ok.insert("len".into(), json!(body.len()));
    ok.insert("sha256".into(), json!(hex(&Sha256::digest(&body))));
    Ok(Value::Object(ok))
}

/// `repeat URL N`: N sequential GETs, each body read whole (for benchmarks).
/// `ok` = `{"requests": N, "bytes": total}`.
pub fn repeat(url: &str, n: u64) -> Outcome {
    let mut bytes = 0u64;
    for _ in 0..n {
        let response = fapi_guest::get(url).map_err(fetch_failure)?;
        bytes += response.bytes().map_err(body_failure)?.len() as u64;
    }
    Ok(json!({ "requests": n, "bytes": bytes }))
}

/// `echo URL`: `ok` = `{"status", "interaction_id", "headers", "body": "<text, lossy UTF-8>"}`.
pub fn echo(url: &str) -> Outcome {
    let response = fapi_guest::get(url).map_err(fetch_failure)?;
    let mut ok = head(&response);
    ok.insert("body".into(), json!(response.text().map_err(body_failure)?));
    Ok(Value::Object(ok))
}

/// `mixed URL N`: N `fapi-fetch` GETs whose bodies stay open, then N wasi:http GETs while they are open.
/// `ok` = `{"fapi_ok": n, "fapi_errors": [failure...], "http_ok": n, "http_errors": [failure...]}`.
pub fn mixed(url: &str, n: usize) -> Outcome {
    let mut open = Vec::new();
    let mut fapi_errors = Vec::new();
    for _ in 0..n {
        match fapi_guest::get(url) {
            Ok(response) => open.push(response),
            Err(e) => fapi_errors.push(fetch_failure(e).to_json()),
        }
    }
    let (http_ok, http_errors) = crate::http::start_and_wait(url, n);
    let fapi_ok = open.len();
    drop(open);
    Ok(json!({
        "fapi_ok": fapi_ok,
        "fapi_errors": fapi_errors,
        "http_ok": http_ok.len(),
        "http_errors": http_errors.iter().map(Failure::to_json).collect::<Vec<_>>(),
    }))
}

/// `fetch-many URL N`: N sequential GETs, each response dropped at once, whatever each answer;
/// prints `{"ok": {"ok": <responses>, "errors": {<case>: <count>}}}`.
pub fn fetch_many(url: &str, n: usize) -> Outcome {
    crate::tally((0..n).map(|_| fapi_guest::get(url).map(drop).map_err(fetch_failure)))
}

/// `flood URL N`: N requests the host must refuse, each carrying a huge string of the guest's, in
/// turn: a method of 1 MiB, a forbidden header name of 60 KB (`x-fapi-` and 59,993 `n`), and a URL
/// of exactly 8 KiB (URL's path padded with `a`; URL must be outside the allow-list). `ok` =
/// `{"ok": <responses>, "errors": {<case>: <count>}}`.
pub fn flood(url: &str, n: usize) -> Outcome {
    let method = "M".repeat(1 << 20);
    let name = format!("x-fapi-{}", "n".repeat(60_000 - 7));
    let long_url = format!("{url}{}", "a".repeat((8 << 10) - url.len()));
    crate::tally((0..n).map(|i| {
        let request = match i % 3 {
            0 => Request::new(method.as_str(), url),
            1 => Request::new("GET", url).header(name.as_str(), "v"),
            _ => Request::new("GET", long_url.as_str()),
        };
        request.send().map(drop).map_err(fetch_failure)
    }))
}

/// `trap-mid-request URL`: GET, read one chunk, print `{"ok": {"status", "read": <bytes>}}`, then abort
/// (a wasm `unreachable` trap) with the body still open. A failed fetch prints the failure instead.
pub fn trap_mid_request(url: &str) -> Outcome {
    let mut response = fapi_guest::get(url).map_err(fetch_failure)?;
    let first = response.chunk(CHUNK as u32).map_err(body_failure)?;
    let read = first.map_or(0, |c| c.len());
    println!(
        "{}",
        json!({ "ok": { "status": response.status(), "read": read } })
    );
    eprintln!("probe: trap-mid-request: read {read} bytes, aborting with the body open");
    std::process::abort()
}

/// The summary of a response, reading its body in 64 KiB chunks:
/// `{"status", "interaction_id", "headers": {"name": "value, value"}, "len", "sha256"}`.
fn summarize(mut response: Response) -> Outcome {
    let mut hasher = Sha256::new();
    let (len, _, _) = drain(&mut response, |c| hasher.update(c))?;
    let mut ok = head(&response);
    ok.insert("len".into(), json!(len));
    ok.insert("sha256".into(), json!(hex(&hasher.finalize())));
    Ok(Value::Object(ok))
}

/// Status, interaction id, and the headers as an object (lower-case names, repeated values joined by
/// `, `, bytes decoded as lossy UTF-8).
fn head(response: &Response) -> Map<String, Value> {
    let mut headers = Map::new();
    for h in response.headers() {
        let value = String::from_utf8_lossy(&h.value).into_owned();
        match headers.get_mut(&h.name.to_ascii_lowercase()) {
            Some(Value::String(v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            _ => {
                headers.insert(h.name.to_ascii_lowercase(), Value::String(value));
            }
        }
    }
    let mut ok = Map::new();
    ok.insert("status".into(), json!(response.status()));
    ok.insert("interaction_id".into(), json!(response.interaction_id()));
    ok.insert("headers".into(), Value::Object(headers));
    ok
}

/// Read the body to the end: (length, sha256 hex, chunks, largest chunk).
/// Read the body in 64 KiB chunks, handing each to `each`: (length, chunks, largest chunk).
fn drain(
    response: &mut Response,
    mut each: impl FnMut(&[u8]),
) -> Result<(u64, u64, usize), Failure> {
    let (mut len, mut chunks, mut max_chunk) = (0u64, 0u64, 0usize);
    while let Some(chunk) = response.chunk(CHUNK as u32).map_err(body_failure)? {
        each(&chunk);
        len += chunk.len() as u64;
        chunks += 1;
        max_chunk = max_chunk.max(chunk.len());
    }
    Ok((len, chunks, max_chunk))
}

fn fetch_failure(e: Error) -> Failure {
    failure(e, "fetch")
}

fn body_failure(e: Error) -> Failure {
    failure(e, "body")
}

/// `err` is the case name; `detail` its payload (the limit for `TooLarge`, `code: description` for
/// `TokenUnavailable`, empty for `Timeout`).
fn failure(e: Error, stage: &'static str) -> Failure {
    let detail = match &e {
        Error::Denied(s)
        | Error::InvalidRequest(s)
        | Error::Unreachable(s)
        | Error::LimitExceeded(s)
        | Error::BodyInterrupted(s) => s.clone(),
        Error::TooLarge(limit) => limit.to_string(),
        Error::TokenUnavailable { code, description } => match description {
            Some(d) => format!("{code}: {d}"),
            None => code.clone(),
        },
        Error::Timeout => String::new(),
        other => other.to_string(),
    };
    Failure::new(e.variant_name(), stage, detail)
}

/// Interpret `\r`, `\n`, `\0` and `\\`; any other backslash is kept as it is.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}
