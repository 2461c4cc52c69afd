//! The guest SDK for fapi-host plugins.
//!
//! A plugin is a WebAssembly component (a `wasm32-wasip2` binary) that fapi-host runs in a sandbox. It
//! calls protected HTTP endpoints through the host's `fapi-fetch` import: the host holds the mTLS key
//! and the OAuth2 tokens, applies its egress policy and sends the request; the guest only ever sees the
//! response. This crate wraps that import in an API that reads like the Python reference client:
//!
//! ```no_run
//! fn main() -> Result<(), fapi_guest::Error> {
//!     let url = "https://provider.example/datasets/consumption.csv";
//!     let response = fapi_guest::get(url)?.error_for_status()?;
//!     eprintln!("interaction id: {}", response.interaction_id());
//!     let text = response.text()?;
//!     println!("{} bytes", text.len());
//!     Ok(())
//! }
//! ```
//!
//! - [`get`] and [`post`] for the common cases, [`Request`] for a method, headers, a body or a timeout.
//! - [`Response`] gives the status, headers and interaction id, and the body whole ([`Response::bytes`],
//!   [`Response::text`], [`Response::json`]) or in chunks ([`Response::chunk`], or `std::io::Read`), so
//!   any size fits in bounded memory.
//! - [`Error`] mirrors the WIT `fetch-error`, plus [`Error::Status`] from [`Response::error_for_status`].
//! - [`bindings`] is the raw generated code, for batch processors that reuse its types.
//!
//! Build a plugin with `cargo build --release --target wasm32-wasip2`; the result is a component.

mod error;
mod request;
mod response;

pub use error::Error;
pub use request::{Request, get, post};
pub use response::{Body, Header, Response};

/// The raw bindings that `wit_bindgen::generate!` makes from `wit/fapi.wit` (world
/// `openenergy:fapi/fapi-imports`). A batch processor passes
/// `with: { "openenergy:fapi/fapi-fetch@0.1.0": fapi_guest::bindings::openenergy::fapi::fapi_fetch }`
/// to its own `generate!` so that the [`Body`] it is handed is this crate's type.
#[allow(unsafe_code, missing_docs)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "openenergy:fapi/fapi-imports",
    });
}

/// The raw `fapi-fetch` interface.
pub(crate) use bindings::openenergy::fapi::fapi_fetch as raw;
