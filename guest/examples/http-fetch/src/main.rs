//! `http-fetch URL`: the same as `fetch`, but through standard `wasi:http/outgoing-handler` (the
//! `wasip2` crate) instead of the `fapi-fetch` import. It shows that an unchanged wasi:http client works:
//! the host applies the same egress policy, mTLS and token to its requests.
//!
//! Exit codes: 0 with a 2xx response, 3 when the host denied the request (`HttpRequestDenied`, which
//! arrives from the response future's `get()`, not from `handle()`), 1 for anything else, 2 for usage.

use std::io::{self, Write};
use std::process::ExitCode;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingRequest, Scheme};

/// Why the fetch failed, and so the exit code.
enum Failure {
    Denied(ErrorCode),
    Other(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url] = args.as_slice() else {
        eprintln!("usage: http-fetch URL");
        return ExitCode::from(2);
    };
    match fetch(url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Denied(code)) => {
            eprintln!("denied: {code:?}");
            ExitCode::from(3)
        }
        Err(Failure::Other(message)) => {
            eprintln!("http-fetch: {url}: {message}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(url: &str) -> Result<(), Failure> {
    let request = build_request(url).map_err(Failure::Other)?;
    let future = outgoing_handler::handle(request, None).map_err(classify)?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(classify(code)),
        Some(Err(())) => return Err(Failure::Other("response already taken".into())),
        None => return Err(Failure::Other("response not ready after block()".into())),
    };
    let status = response.status();
    if !(200..300).contains(&status) {
        return Err(Failure::Other(format!("HTTP status {status}")));
    }
    let body = response
        .consume()
        .map_err(|()| Failure::Other("body already taken".into()))?;
    let mut stream = body
        .stream()
        .map_err(|()| Failure::Other("stream already taken".into()))?;
    let mut stdout = io::stdout().lock();
    io::copy(&mut stream, &mut stdout).map_err(|e| Failure::Other(e.to_string()))?;
    stdout.flush().map_err(|e| Failure::Other(e.to_string()))?;
    drop(stream);
    IncomingBody::finish(body);
    Ok(())
}

fn classify(code: ErrorCode) -> Failure {
    match code {
        ErrorCode::HttpRequestDenied => Failure::Denied(code),
        other => Failure::Other(format!("{other:?}")),
    }
}

/// A GET request for an absolute `scheme://authority/path?query` URL.
fn build_request(url: &str) -> Result<OutgoingRequest, String> {
    let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL")?;
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
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_method(&Method::Get)
        .map_err(|()| "bad method")?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "bad authority")?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| "bad path")?;
    Ok(request)
}
