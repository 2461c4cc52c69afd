//! fapi-bench: measures fapi-host against baselines run in the same process, on the same local
//! data provider, and prints each figure as a ratio to its baseline.
//!
//! `cargo run --release -p fapi-bench -- client` (see README.md, "Benchmarks").
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod batch;
mod client;
mod lang;
mod memory;
mod sandbox;
mod setup;

/// Benchmarks of fapi-host.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Per-request cost of FapiClient against plain reqwest mTLS, one keep-alive connection.
    Client {
        /// Requests per round.
        #[arg(long, default_value_t = 500)]
        requests: usize,
        /// Rounds (alternating between the clients; the median round is reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// Guests (fapi-fetch, wasi:http) against the native client; instantiate-and-run; cached start.
    Sandbox {
        /// Requests per round.
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// `fapi-host batch` against the native client's best throughput; batch memory vs item count.
    Batch {
        /// Items per throughput run.
        #[arg(long, default_value_t = 10_000)]
        items: u64,
        /// Item counts of the memory runs (comma-separated; empty to skip).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        memory_items: Vec<u64>,
        /// Python with `ib1-openenergy-support==0.2.17` and `urllib3<2` installed, for the
        /// reference-client comparison (skipped when the import fails).
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// Plugins in Rust, Python and JavaScript: size, cold and cached start, per-request cost.
    Lang {
        /// Requests per round of the per-request figure.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Rounds (medians reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Cached `fapi-host run` starts per language (median reported).
        #[arg(long, default_value_t = 5)]
        cached_runs: usize,
    },
    /// Peak memory of `fapi-host run` while a guest streams a response of growing size.
    Memory {
        /// The largest response, MiB.
        #[arg(long, default_value_t = 1024)]
        max_mib: u64,
    },
}

/// Median of a list of durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Time `f` once.
pub async fn time<F: std::future::Future<Output = ()>>(f: F) -> Duration {
    let t0 = Instant::now();
    f.await;
    t0.elapsed()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if cfg!(debug_assertions) {
            "DEBUG build (use --release)"
        } else {
            "release build"
        }
    );
    match args.what {
        What::Client { requests, rounds } => client::run(requests, rounds).await,
        What::Sandbox { requests, rounds } => sandbox::run(requests, rounds).await,
        What::Memory { max_mib } => memory::run(max_mib).await,
        What::Lang {
            requests,
            rounds,
            cached_runs,
        } => lang::run(requests, rounds, cached_runs).await,
        What::Batch {
            items,
            memory_items,
            python,
        } => batch::run(items, &memory_items, &python).await,
    }
}
