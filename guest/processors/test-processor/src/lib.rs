//! `test-processor`: a batch processor for the end-to-end tests. What it does with an item is chosen by
//! the item's `name`:
//!
//! - `trap`: panics (the instance traps; the item must be recorded as failed);
//! - `spin`: loops forever (the host's CPU or time limit must stop it);
//! - `fetch:<url>`: fetches `<url>` through `fapi-fetch` (same egress policy) and returns that body, or
//!   `Err("<fapi_guest::Error>")`;
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
    fn process(item: Item, body: RawBody) -> Result<Vec<u8>, String> {
        let body = fapi_guest::Body::from(body);
        match item.name.as_str() {
            "trap" => panic!("test-processor: trapping on item {} as asked", item.index),
            "spin" => spin(),
            name => match name.strip_prefix("fetch:") {
                Some(url) => {
                    drop(body);
                    let response = fapi_guest::get(url).map_err(|e| e.to_string())?;
                    response.bytes().map_err(|e| e.to_string())
                }
                None => body.read_all().map_err(|e| e.to_string()),
            },
        }
    }
}

/// Spin until the host stops the instance.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}
