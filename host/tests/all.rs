//! The host's integration tests, linked into one binary (each file here is a module of it), so
//! that a test run links wasmtime once for this crate, not once per file. Run one file's tests
//! with `cargo test -p fapi-host --test all cli::`.

mod common;

mod batch_input;
mod cli;
mod client;
mod client_auth;
mod consent;
mod credentials;
mod dpop;
mod encrypted_key;
mod faults;
mod pkcs11;
mod profiles;
mod properties;
mod tls;
mod trust;
