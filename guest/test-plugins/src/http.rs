//! Subcommands over standard `wasi:http/outgoing-handler` (the `wasip2` crate), with no `fapi-fetch`.
//!
//! `ok` = `{"status", "len", "sha256"}` unless said otherwise. A failure is
//! `{"err": "<ErrorCode or HeaderError case>", "stage": "...", "detail": "<Debug of the error>"}` with
//! `stage`:
//! - `request`: building the request (bad method, scheme, authority or path);
//! - `fields`: `Fields::append` refused a header (`Forbidden`, `InvalidSyntax`, `Immutable`);
//! - `handle`: `outgoing-handler.handle()` returned the error;
//! - `get`: the response future's `get()` returned it (the host's denial, `HttpRequestDenied`, arrives
//!   here);
//! - `body-write`: writing the request body failed (reported only if the response itself did not fail);
//! - `body`: reading the response body failed.

use std::io::Write;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasip2::http::outgoing_handler::{self, FutureIncomingResponse};
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme, http_error_code,
};
use wasip2::io::streams::StreamError;

use crate::{CHUNK, Failure, Outcome, hex, variant_name};

/// `http URL`: GET.
pub fn get(url: &str) -> Outcome {
    let response = send(url, Method::Get, Fields::new(), None)?;
    summarize(response)
}

/// `http-timeout URL MS`: a GET whose `request-options` allow MS milliseconds until the first
/// byte of the response.
pub fn get_timeout(url: &str, ms: u64) -> Outcome {
    let request = build(url, Method::Get, Fields::new())?;
    let options = RequestOptions::new();
    options
        .set_first_byte_timeout(Some(ms * 1_000_000))
        .map_err(|()| Failure::new("Unsupported", "options", "first-byte-timeout refused"))?;
    let future =
        outgoing_handler::handle(request, Some(options)).map_err(|e| error_code("handle", e))?;
    summarize(wait(&future)?)
}

/// `http-header URL NAME VALUE`: GET with one extra header (`\r`, `\n`, `\0`, `\\` unescaped).
pub fn get_with_header(url: &str, name: &str, value: &str) -> Outcome {
    let fields = Fields::new();
    let (name, value) = (crate::fapi::unescape(name), crate::fapi::unescape(value));
    fields
        .append(&name, value.as_bytes())
        .map_err(|e| Failure::new(variant_name(&format!("{e:?}")), "fields", format!("{e:?}")))?;
    summarize(send(url, Method::Get, fields, None)?)
}

/// `http-method URL METHOD`: a request with that method and no body (`TRACE`, `CONNECT` and other
/// names are sent as wasi:http lets a guest name them).
pub fn with_method(url: &str, method: &str) -> Outcome {
    let method = match method {
        "GET" => Method::Get,
        "TRACE" => Method::Trace,
        "CONNECT" => Method::Connect,
        other => Method::Other(other.to_owned()),
    };
    summarize(send(url, method, Fields::new(), None)?)
}

/// `http-flood URL N`: as `flood` (in `fapi`) through wasi:http: in turn a method of 1 MiB and a
/// URL of exactly 8 KiB (URL must be outside the allow-list). Forbidden header names never reach
/// the host through wasi:http (its fields refuse them). `ok` = `{"ok": n, "errors": {case: n}}`.
pub fn flood(url: &str, n: usize) -> Outcome {
    let method = "M".repeat(1 << 20);
    let long_url = format!("{url}{}", "a".repeat((8 << 10) - url.len()));
    crate::tally((0..n).map(|i| {
        let sent = match i % 2 {
            0 => send(url, Method::Other(method.clone()), Fields::new(), None),
            _ => send(&long_url, Method::Get, Fields::new(), None),
        };
        sent.map(drop)
    }))
}

/// `http-held-posts URL N BYTES`: start N POSTs (`handle()` called, bodies not yet written), then
/// write and finish the bodies in reverse order, then wait for each response in order. Prints
/// `{"ok": {"results": [<status> | <error case>, ...]}}`, the first request first: which requests
/// the host let through depends on whether it admits them when they are sent or when their bodies
/// are complete.
pub fn held_posts(url: &str, n: usize, bytes: usize) -> Outcome {
    let mut started = Vec::new();
    for _ in 0..n {
        started.push(start(url, Method::Post, Fields::new(), true)?);
    }
    let body = vec![b'p'; bytes];
    let mut futures = Vec::new();
    for (future, outgoing) in started.into_iter().rev() {
        // A refused request's body may not be writable any more; its response says why.
        let _ = outgoing.map(|o| write_body(o, &body));
        futures.push(future);
    }
    futures.reverse();
    let results: Vec<Value> = futures
        .iter()
        .map(|f| match wait(f) {
            Ok(response) => json!(response.status()),
            Err(e) => json!(e.err),
        })
        .collect();
    Ok(json!({ "results": results }))
}

/// `http-many-headers URL COUNT SIZE`: GET with headers `x-h-0` .. `x-h-{COUNT-1}`, each a value of
/// SIZE bytes `v`.
pub fn many_headers(url: &str, count: usize, size: usize) -> Outcome {
    let fields = Fields::new();
    let value = vec![b'v'; size];
    for i in 0..count {
        fields.append(&format!("x-h-{i}"), &value).map_err(|e| {
            Failure::new(variant_name(&format!("{e:?}")), "fields", format!("{e:?}"))
        })?;
    }
    summarize(send(url, Method::Get, fields, None)?)
}

/// `http-post URL BYTES`: POST a body of BYTES bytes `a`.
pub fn post(url: &str, bytes: usize) -> Outcome {
    summarize(send(
        url,
        Method::Post,
        Fields::new(),
        Some(vec![b'a'; bytes]),
    )?)
}

/// `concurrent-http URL N`: start N GETs before waiting for any, then read every body.
/// `ok` = `{"started": n, "succeeded": n, "statuses": [u16...], "errors": [failure...]}`.
pub fn concurrent(url: &str, n: usize) -> Outcome {
    let mut futures = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        match start(url, Method::Get, Fields::new(), false) {
            Ok((future, _)) => futures.push(future),
            Err(f) => errors.push(f),
        }
    }
    let started = futures.len();
    let mut statuses = Vec::new();
    let mut responses = Vec::new();
    for future in futures {
        match wait(&future) {
            Ok(response) => responses.push(response),
            Err(f) => errors.push(f),
        }
    }
    for response in responses {
        let status = response.status();
        match drain(response, |_| {}) {
            Ok(_) => statuses.push(status),
            Err(f) => errors.push(f),
        }
    }
    Ok(json!({
        "started": started,
        "succeeded": statuses.len(),
        "statuses": statuses,
        "errors": errors.iter().map(Failure::to_json).collect::<Vec<_>>(),
    }))
}

/// Start `n` GETs, then wait for each head; the responses are returned unread (bodies open).
pub fn start_and_wait(url: &str, n: usize) -> (Vec<IncomingResponse>, Vec<Failure>) {
    let mut futures = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        match start(url, Method::Get, Fields::new(), false) {
            Ok((future, _)) => futures.push(future),
            Err(f) => errors.push(f),
        }
    }
    let mut responses = Vec::new();
    for future in futures {
        match wait(&future) {
            Ok(response) => responses.push(response),
            Err(f) => errors.push(f),
        }
    }
    (responses, errors)
}

/// Send one request (writing `body` after `handle()`, as the host only reads it once the request is
/// sent) and wait for the response head.
fn send(
    url: &str,
    method: Method,
    fields: Fields,
    body: Option<Vec<u8>>,
) -> Result<IncomingResponse, Failure> {
    let (future, outgoing) = start(url, method, fields, body.is_some())?;
    let write_result = match (outgoing, body) {
        (Some(outgoing), Some(bytes)) => write_body(outgoing, &bytes),
        _ => Ok(()),
    };
    let response = wait(&future)?;
    write_result?;
    Ok(response)
}

/// Build the request and call `handle()`. With `with_body`, the request body is taken first and
/// returned for the caller to write and finish; without, the request has no body (a taken body that
/// is dropped unfinished would abort the request).
fn start(
    url: &str,
    method: Method,
    fields: Fields,
    with_body: bool,
) -> Result<(FutureIncomingResponse, Option<OutgoingBody>), Failure> {
    let request = build(url, method, fields)?;
    let body =
        match with_body {
            true => Some(request.body().map_err(|()| {
                Failure::new("BodyTaken", "request", "request body already taken")
            })?),
            false => None,
        };
    let future = outgoing_handler::handle(request, None).map_err(|e| error_code("handle", e))?;
    Ok((future, body))
}

/// Block until the response head arrives.
fn wait(future: &FutureIncomingResponse) -> Result<IncomingResponse, Failure> {
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(code))) => Err(error_code("get", code)),
        Some(Err(())) => Err(Failure::new(
            "AlreadyTaken",
            "get",
            "response already taken",
        )),
        None => Err(Failure::new("NotReady", "get", "no response after block()")),
    }
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), Failure> {
    let mut stream = body
        .write()
        .map_err(|()| Failure::new("BodyTaken", "body-write", "body stream already taken"))?;
    stream
        .write_all(bytes)
        .map_err(|e| Failure::new("StreamError", "body-write", e.to_string()))?;
    stream
        .blocking_flush()
        .map_err(|e| Failure::new("StreamError", "body-write", format!("{e:?}")))?;
    drop(stream);
    OutgoingBody::finish(body, None).map_err(|e| error_code("body-write", e))
}

/// `http-repeat URL N`: N sequential wasi:http GETs, each body read whole (for benchmarks).
/// `ok` = `{"requests": N, "bytes": total}`.
pub fn repeat(url: &str, n: u64) -> Outcome {
    let mut bytes = 0u64;
    for _ in 0..n {
        let response = send(url, Method::Get, Fields::new(), None)?;
        // Read, not hashed: the same work as the native client's loop and `repeat`.
        bytes += drain(response, |_| {})?;
    }
    Ok(json!({ "requests": n, "bytes": bytes }))
}

/// `{"status", "len", "sha256"}` after reading the whole body.
fn summarize(response: IncomingResponse) -> Outcome {
    let status = response.status();
    let mut hasher = Sha256::new();
    let len = drain(response, |chunk| hasher.update(chunk))?;
    Ok(json!({ "status": status, "len": len, "sha256": hex(&hasher.finalize()) }))
}

/// Read the body in 64 KiB chunks, handing each to `each`: the length.
fn drain(response: IncomingResponse, mut each: impl FnMut(&[u8])) -> Result<u64, Failure> {
    let taken = |what: &str| Failure::new("AlreadyTaken", "body", format!("{what} already taken"));
    let body = response.consume().map_err(|()| taken("body"))?;
    let stream = body.stream().map_err(|()| taken("stream"))?;
    let mut len = 0u64;
    loop {
        match stream.blocking_read(CHUNK as u64) {
            Ok(chunk) => {
                len += chunk.len() as u64;
                each(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(match http_error_code(&e) {
                    Some(code) => error_code("body", code),
                    None => Failure::new("StreamError", "body", e.to_debug_string()),
                });
            }
        }
    }
    drop(stream);
    IncomingBody::finish(body);
    Ok(len)
}

fn error_code(stage: &'static str, code: ErrorCode) -> Failure {
    let debug = format!("{code:?}");
    Failure::new(variant_name(&debug), stage, debug)
}

/// A request for an absolute `scheme://authority/path?query` URL.
fn build(url: &str, method: Method, fields: Fields) -> Result<OutgoingRequest, Failure> {
    let bad = |what: &str| Failure::new("InvalidUrl", "request", format!("{what}: {url:?}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("not an absolute URL"))?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let scheme = match scheme {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => Scheme::Other(other.to_string()),
    };
    let request = OutgoingRequest::new(fields);
    request
        .set_method(&method)
        .map_err(|()| bad("method refused"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| bad("scheme refused"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| bad("authority refused"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| bad("path refused"))?;
    Ok(request)
}
