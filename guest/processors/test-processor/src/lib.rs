//! `test-processor`: a batch processor for the end-to-end tests. What it does with an item is chosen by
//! the item's `name`, up to its first `.` (so that several items of one batch, `lenient.1` and
//! `lenient.2`, say, can ask for the same thing under names of their own):
//!
//! - `trap`: panics (the instance traps; the item must be recorded as failed);
//! - `spin`: loops forever (the host's CPU or time limit must stop it);
//! - `fetch:<url>`: fetches `<url>` through `fapi-fetch` (same egress policy) and returns that body, or
//!   `Err("<fapi_guest::Error>")`; a name cannot hold `/`, so `<url>` has `|` for each `/`
//!   (`fetch:https:||127.0.0.1:8443|x.csv`);
//! - `refetch`: fetches the item's own URL again through `fapi-fetch`, with its `pfault=` query
//!   parameter (a fault the batch's fetch does not see) turned into `fault=`, and returns that body;
//!   `Err("HTTP <status>")` if it is not a 2xx;
//! - `sleep-<ms>`: sleeps `<ms>` milliseconds, then returns the body unchanged;
//! - `alloc-<mib>`: allocates and touches `<mib>` MiB, then returns the body unchanged;
//! - `output-<bytes>`: returns `<bytes>` bytes of `x`, whatever the body;
//! - `lenient`: reads the body in small chunks and takes a read error for the end after three of them
//!   in a row (retrying the read after each), returning what it read: a processor that does not give
//!   up on a broken body, which the host must not take for a whole one;
//! - `fallback`: reads the body whole (`read-all`); if that fails, reads on in chunks as `lenient` does
//!   and returns how many bytes it got that way, as decimal text;
//! - anything else: returns the body unchanged.

use std::hint::black_box;

use bindings::exports::openenergy::fapi::processor::{Guest, Item};
use fapi_guest::bindings::openenergy::fapi::fapi_fetch::Body as RawBody;

/// Generated bindings, reusing fapi-guest's `fapi-fetch` types (see `csv-to-json`).
#[allow(unsafe_code, missing_docs)] // generated code
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "openenergy:fapi/batch-processor",
        with: { "openenergy:fapi/fapi-fetch@0.1.0": fapi_guest::bindings::openenergy::fapi::fapi_fetch },
    });

    use super::TestProcessor;
    export!(TestProcessor);
}

/// The exported processor.
#[derive(Debug)]
struct TestProcessor;

impl Guest for TestProcessor {
    fn process(item: Item, raw: RawBody) -> Result<Vec<u8>, String> {
        if item.name.split('.').next() == Some("fallback") {
            return Ok(fallback(&raw));
        }
        let body = fapi_guest::Body::from(raw);
        if let Some(url) = item.name.strip_prefix("fetch:") {
            drop(body);
            let url = url.replace('|', "/");
            let response = fapi_guest::get(&url).map_err(|e| e.to_string())?;
            return response.bytes().map_err(|e| e.to_string());
        }
        let behaviour = item.name.split('.').next().unwrap_or_default();
        let echo = |body: fapi_guest::Body| body.read_all().map_err(|e| e.to_string());
        match behaviour {
            "trap" => panic!("test-processor: trapping on item {} as asked", item.index),
            "spin" => spin(),
            "refetch" => {
                drop(body);
                refetch(&item.url)
            }
            "lenient" => Ok(lenient(body)),
            b => {
                if let Some(ms) = number(b, "sleep-")? {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    echo(body)
                } else if let Some(mib) = number(b, "alloc-")? {
                    let size = usize::try_from(mib << 20).map_err(|e| e.to_string())?;
                    let mut block = vec![0u8; size];
                    // Touch every page, so that the memory is really used.
                    for i in (0..block.len()).step_by(4096) {
                        block[i] = black_box(1);
                    }
                    black_box(&block);
                    echo(body)
                } else if let Some(bytes) = number(b, "output-")? {
                    drop(body);
                    Ok(vec![
                        b'x';
                        usize::try_from(bytes).map_err(|e| e.to_string())?
                    ])
                } else {
                    echo(body)
                }
            }
        }
    }
}

/// The number after `prefix` in `behaviour`, if it starts with it.
fn number(behaviour: &str, prefix: &str) -> Result<Option<u64>, String> {
    behaviour
        .strip_prefix(prefix)
        .map(|n| n.parse().map_err(|e| format!("{behaviour}: {e}")))
        .transpose()
}

/// GET `url` again with `pfault=` turned into `fault=`; its body if the status is 2xx.
fn refetch(url: &str) -> Result<Vec<u8>, String> {
    let url = url.replace("pfault=", "fault=");
    let response = fapi_guest::get(&url).map_err(|e| e.to_string())?;
    if !response.is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.bytes().map_err(|e| e.to_string())
}

/// The whole body, or if `read-all` fails, how many bytes chunked reads get after it.
fn fallback(raw: &RawBody) -> Vec<u8> {
    match raw.read_all() {
        Ok(all) => all,
        Err(_) => {
            let mut rest = 0usize;
            let mut errors = 0;
            while errors < 3 {
                match raw.read(1 << 20) {
                    Ok(chunk) if chunk.is_empty() => break,
                    Ok(chunk) => {
                        errors = 0;
                        rest += chunk.len();
                    }
                    Err(_) => errors += 1,
                }
            }
            rest.to_string().into_bytes()
        }
    }
}

/// Read `body` in chunks of 64 bytes; after a read error, read again; three errors in a row end it.
fn lenient(mut body: fapi_guest::Body) -> Vec<u8> {
    let mut out = Vec::new();
    let mut errors = 0;
    while errors < 3 {
        match body.chunk(64) {
            Ok(Some(chunk)) => {
                errors = 0;
                out.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => errors += 1,
        }
    }
    out
}

/// Spin until the host stops the instance.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}
