//! `test-service`: a hostile service for the end-to-end tests of `fapi-host serve`. What it does
//! is chosen by the request's path; every answer is `text/plain`:
//!
//! - `/remember/<value>`: puts `<value>` in a static of its memory and answers
//!   `previous=<what the static held before> now=<what it holds now>`. Were an instance (or its
//!   memory) ever reused for another request, a caller would read what the previous one left;
//! - `/fetch?<url>`: GET `<url>` through `fapi-fetch`; answers `status=<n> bytes=<n>` (200), or
//!   `error=<variant>: <text>` (502);
//! - `/http?<url>`: the same through `wasi:http/outgoing-handler`; `error=<ErrorCode>` (502);
//! - `/trap`: panics before it answers;
//! - `/trap-midway`: sets a 200 response, writes `partial` of its body, then panics;
//! - `/spin`: loops forever before it answers;
//! - `/sleep/<ms>`: sleeps `<ms>` milliseconds, then answers `slept=<ms>`;
//! - `/alloc/<mib>`: allocates and touches `<mib>` MiB, then answers `allocated=<mib>`;
//! - `/body`: reads the caller's body to its end; answers `bytes=<n>`, or `error=<text>` (400);
//! - anything else: 404.

use std::hint::black_box;
use std::io::Read as _;
use std::sync::Mutex;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

/// What `/remember` keeps between requests, if they ever shared an instance.
static REMEMBERED: Mutex<String> = Mutex::new(String::new());

/// The exported handler.
#[derive(Debug)]
struct TestService;

impl wasip2::exports::http::incoming_handler::Guest for TestService {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let (status, text) = match path.split('/').collect::<Vec<_>>().as_slice() {
            ["", "remember", value] => {
                let mut held = REMEMBERED.lock().unwrap_or_else(|p| p.into_inner());
                let previous = std::mem::replace(&mut *held, (*value).to_owned());
                (200, format!("previous={previous} now={held}"))
            }
            ["", "fetch"] => fetch(query),
            ["", "http"] => http(query),
            ["", "trap"] => panic!("test-service: trapping as asked"),
            ["", "trap-midway"] => trap_midway(out),
            ["", "spin"] => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            ["", "sleep", ms] => {
                let ms: u64 = ms.parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                (200, format!("slept={ms}"))
            }
            ["", "alloc", mib] => {
                let mib: usize = mib.parse().unwrap_or(0);
                let mut v = vec![0u8; mib << 20];
                for b in v.iter_mut().step_by(4096) {
                    *b = 1;
                }
                black_box(&v);
                (200, format!("allocated={mib}"))
            }
            ["", "body"] => read_body(request),
            _ => (404, format!("no such test: {path}")),
        };
        respond(out, status, &text);
    }
}

#[allow(unsafe_code)] // the export macro defines the component's exported functions
mod export {
    use super::TestService;
    wasip2::http::proxy::export!(TestService);
}

/// Begin a response, then trap before its body is finished.
fn trap_midway(out: ResponseOutparam) -> ! {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().ok();
    ResponseOutparam::set(out, Ok(response));
    if let Some(stream) = body.as_ref().and_then(|b| b.write().ok()) {
        let _ = stream.blocking_write_and_flush(b"partial");
        // The stream outlives the panic: the body is never finished.
        std::mem::forget(stream);
    }
    panic!("test-service: trapping midway through the body, as asked")
}

fn fetch(url: &str) -> (u16, String) {
    match fapi_guest::get(url).and_then(|r| Ok((r.status(), r.bytes()?.len()))) {
        Ok((status, bytes)) => (200, format!("status={status} bytes={bytes}")),
        Err(e) => (502, format!("error={}: {e}", e.variant_name())),
    }
}

fn http(url: &str) -> (u16, String) {
    let Some((authority, path)) = url
        .strip_prefix("https://")
        .map(|rest| rest.split_at(rest.find('/').unwrap_or(rest.len())))
    else {
        return (400, format!("not an https URL: {url}"));
    };
    let request = OutgoingRequest::new(Fields::new());
    let set = request
        .set_method(&Method::Get)
        .and_then(|()| request.set_scheme(Some(&Scheme::Https)))
        .and_then(|()| request.set_authority(Some(authority)))
        .and_then(|()| request.set_path_with_query(Some(if path.is_empty() { "/" } else { path })));
    if set.is_err() {
        return (400, format!("cannot build a request for {url}"));
    }
    let future = match outgoing_handler::handle(request, None) {
        Ok(f) => f,
        Err(code) => return (502, format!("error={code:?}")),
    };
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => {
            let status = response.status();
            let mut bytes = 0;
            if let Ok(body) = response.consume() {
                if let Ok(mut stream) = body.stream() {
                    let mut buf = Vec::new();
                    bytes = stream.read_to_end(&mut buf).map_or(0, |n| n);
                }
                IncomingBody::finish(body);
            }
            (200, format!("status={status} bytes={bytes}"))
        }
        Some(Ok(Err(code))) => (502, format!("error={code:?}")),
        other => (502, format!("error=no response ({})", other.is_some())),
    }
}

fn read_body(request: IncomingRequest) -> (u16, String) {
    let Ok(body) = request.consume() else {
        return (400, "error=no body".into());
    };
    let mut bytes = Vec::new();
    let read = body.stream().map(|mut s| s.read_to_end(&mut bytes));
    let answer = match read {
        Ok(Ok(n)) => (200, format!("bytes={n}")),
        Ok(Err(e)) => (400, format!("error={e}")),
        Err(()) => (400, "error=no stream".into()),
    };
    IncomingBody::finish(body);
    answer
}

/// Answer with `status` and `text` as `text/plain`.
fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/plain; charset=utf-8");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = body.write() {
        for chunk in text.as_bytes().chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}
