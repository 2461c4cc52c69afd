//! The end-to-end tests, linked into one binary (each file here is a module of it), so that a test
//! run links wasmtime once for this crate, not once per file. Run one file's tests with
//! `cargo test -p fapi-tests --test all hostile::`.

mod batch;
// Named to sort right after `batch`: libtest starts tests in the order of their names, and this
// one runs for minutes, so it starts early, beside the others, not after them all.
mod batch_on_slurm;
mod consent_run;
mod deploy;
mod dpop;
mod guests_built;
mod hostile;
mod interop_oidc;
mod interop_oidc_ib1;
mod plugins_lang;
mod run_cli;
mod sandbox;
mod seed_client;
mod serve;
