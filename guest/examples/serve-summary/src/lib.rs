//! `serve-summary`: a service for `fapi-host serve` (world `openenergy:fapi/http-service`). Every
//! request is answered with a summary of the provider's postcode consumption CSV, fetched through
//! the host at that moment: the number of postcodes, total meters, total kWh, the mean of the
//! per-postcode means and the top 5 postcodes, as `text/plain` (the same text as `csv-summary`,
//! by the same code: `../csv-summary/src/summary.rs`).
//!
//! The CSV's URL comes from the environment variable `CSV_URL`, which the operator grants
//! (`fapi-host serve --env CSV_URL=https://...`): the caller chooses nothing that goes out.
//!
//! Answers: 200 with the summary; 405 for a method other than GET or HEAD; 502 when the CSV
//! could not be fetched or read (the text says why); 500 when `CSV_URL` is not set.

use std::io::{BufRead, BufReader};

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

#[path = "../../csv-summary/src/summary.rs"]
mod summary;

use summary::Summary;

/// Bytes asked of the host per read: few calls, bounded memory.
const READ_CHUNK: usize = 64 * 1024;

/// The most bytes one `blocking-write-and-flush` takes (wasi:io/streams).
const WRITE_CHUNK: usize = 4096;

/// The exported handler.
#[derive(Debug)]
struct Service;

impl wasip2::exports::http::incoming_handler::Guest for Service {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = request.method();
        if !matches!(method, Method::Get | Method::Head) {
            return respond(out, 405, "only GET and HEAD are served\n", false);
        }
        let head_only = matches!(method, Method::Head);
        let Ok(url) = std::env::var("CSV_URL") else {
            return respond(
                out,
                500,
                "CSV_URL is not set: start the service with --env CSV_URL=https://...\n",
                head_only,
            );
        };
        match summarise(&url) {
            Ok(text) => respond(out, 200, &text, head_only),
            Err(message) => respond(out, 502, &format!("{url}: {message}\n"), head_only),
        }
    }
}

#[allow(unsafe_code)] // the export macro defines the component's exported functions
mod export {
    use super::Service;
    wasip2::http::proxy::export!(Service);
}

/// The summary of the CSV at `url`, read line by line as it streams in.
fn summarise(url: &str) -> Result<String, String> {
    let response = fapi_guest::get(url).map_err(|e| e.to_string())?;
    let response = response.error_for_status().map_err(|e| e.to_string())?;
    let mut lines = BufReader::with_capacity(READ_CHUNK, response).lines();
    let header = match lines.next() {
        Some(line) => line.map_err(|e| e.to_string())?,
        None => return Err("empty body: expected a CSV header".into()),
    };
    let mut summary = Summary::new(&header)?;
    for line in lines {
        summary.add(&line.map_err(|e| e.to_string())?);
    }
    Ok(summary.to_string())
}

/// Answer with `status` and `text` as `text/plain` (its head only, for HEAD).
fn respond(out: ResponseOutparam, status: u16, text: &str, head_only: bool) {
    let headers = Fields::new();
    // Neither can fail: a valid name and value, on fields of our own.
    let _ = headers.append("content-type", b"text/plain; charset=utf-8");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if !head_only && let Ok(stream) = body.write() {
        for chunk in text.as_bytes().chunks(WRITE_CHUNK) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                // The caller went away: nothing more to do.
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}
