//! `csv-to-json`: a batch processor (world `openenergy:fapi/batch-processor`) that turns a CSV body
//! (first line = header) into a JSON array of objects, one per row, with string values:
//!
//! ```text
//! postcode,num_meters          [{"postcode":"AB1 2CD","num_meters":"12"},
//! AB1 2CD,12              ->    {"postcode":"AB1 2CE","num_meters":"7"}]
//! AB1 2CE,7
//! ```
//!
//! The body is read from the host in chunks and converted line by line; only the output is held whole
//! (the WIT returns it as one `list<u8>`). A body that is not UTF-8, or a row whose field count differs
//! from the header's, fails the item with a message saying which line.

mod csv;

use bindings::exports::openenergy::fapi::processor::{Guest, Item};
use fapi_guest::bindings::openenergy::fapi::fapi_fetch::Body as RawBody;

/// Generated bindings. `with` reuses fapi-guest's `fapi-fetch` types, so the body handed to `process`
/// is the type that `fapi_guest::Body` wraps.
#[allow(unsafe_code, missing_docs)] // generated code
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "openenergy:fapi/batch-processor",
        with: { "openenergy:fapi/fapi-fetch@0.1.0": fapi_guest::bindings::openenergy::fapi::fapi_fetch },
    });

    use super::CsvToJson;
    export!(CsvToJson);
}

/// The exported processor.
#[derive(Debug)]
struct CsvToJson;

impl Guest for CsvToJson {
    fn process(item: Item, body: RawBody) -> Result<Vec<u8>, String> {
        csv::to_json(fapi_guest::Body::from(body)).map_err(|e| format!("{}: {e}", item.name))
    }
}
