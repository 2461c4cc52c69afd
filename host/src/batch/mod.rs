//! `fapi-host batch`: fetch many items unattended, and be able to trust the result.
//!
//! - [`Input`]: URL-per-line or JSON-lines input, with line numbers for every error.
//! - [`naming`]: stable, filesystem-safe output names.
//! - [`Manifest`]: `DIR/manifest.jsonl`, one line per finished item, read back to resume.
//! - [`Batch`]: the concurrent engine over one shared [`crate::FapiClient`].
//! - [`Stats`] / [`Summary`]: progress and the final summary.
//!
//! Guarantees: a file appears under its final name only complete (and fsynced, with `fsync`) and
//! with a 2xx status (or the plugin's whole output); the manifest never records a file that is not there;
//! non-idempotent requests are never sent twice automatically; nothing written carries a
//! credential.

mod input;
mod manifest;
pub mod naming;
mod politeness;
mod progress;
#[cfg(feature = "sandbox")]
mod runner;
mod urls;
#[cfg(feature = "sandbox")]
mod writer;

pub use input::{BadLine, Input, Item, Shard};
pub use manifest::{
    Manifest, MergeReport, Merged, Outcome, Record, RecordError, completed, merge, read,
};
pub use politeness::{Politeness, Rate, RateLimiter};
pub use progress::{Display, Progress, Stats, Summary};
#[cfg(feature = "sandbox")]
pub use runner::{Batch, BatchOptions, DRAIN_GRACE, Stop};
