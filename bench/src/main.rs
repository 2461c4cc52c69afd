//! fapi-bench: measures fapi-host against baselines run in the same process, on the same local
//! data provider, and prints each figure as a ratio to its baseline.
//!
//! `cargo run --release -p fapi-bench -- compare` runs all of it in one run and writes a JSON file and
//! an SVG chart (see README.md, "Benchmarks").
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod bare_proxy;
mod batch;
mod chart;
mod client;
mod client_auth;
mod compare;
mod cpu;
mod dpop;
mod grants;
mod keys;
mod lang;
mod memory;
mod profile;
mod proxy;
mod proxy_load;
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
    /// A batch whose items are spread over many grants (profile ib1, one household's consent
    /// each) against the same items under one grant, same run; refresh requests counted.
    Grants {
        /// Items per batch.
        #[arg(long, default_value_t = 10_000)]
        items: u64,
        /// Grants the items are spread over (made through the consent flow, not timed).
        #[arg(long, default_value_t = 100)]
        grants: u64,
        /// Items in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Rounds (alternating; the median round is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Token lifetime of the second federation, seconds: each of its batches starts after
        /// every grant's token expired (one refresh per grant expected).
        #[arg(long, default_value_t = 10)]
        short_ttl: u64,
    },
    /// Token requests with private_key_jwt against tls_client_auth (same run, same identity,
    /// local federations): forced token acquisitions, per token and as a ratio.
    ClientAuth {
        /// Token requests per round.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// Rounds (alternating between the methods; the median round is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Per-request cost of DPoP-bound tokens (a proof per request) against mTLS-bound ones, both
    /// FapiClient, one keep-alive connection each, in the same run.
    Dpop {
        /// Requests per round.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Rounds (alternating between the clients; the median round is reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// What a key in a PKCS#11 token costs: the same P-256 key as a PEM file and in SoftHSM2,
    /// full handshakes per second and per request on a kept-alive connection.
    Keys {
        /// Full handshakes per round.
        #[arg(long, default_value_t = 300)]
        handshakes: usize,
        /// Requests per round on one connection.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Rounds (alternating between the keys; the median round is reported).
        #[arg(long, default_value_t = 5)]
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
        /// Small items per throughput run (0 to skip).
        #[arg(long, default_value_t = 10_000)]
        items: u64,
        /// Large items per throughput run (0 to skip).
        #[arg(long, default_value_t = 100)]
        large: u64,
        /// Size of each large item, MiB.
        #[arg(long, default_value_t = 8)]
        large_mib: u64,
        /// Item counts of the memory runs (comma-separated; the flag with no value skips them).
        #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1000,10000,100000")]
        memory_items: Vec<u64>,
        /// Python with `ib1-openenergy-support==0.2.17` and `urllib3<2` installed, for the
        /// reference-client comparison (skipped when the import fails).
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// N `fapi-host batch --shard K/N` processes (concurrency C/N each) against one `fapi-host
    /// batch` process (concurrency C) on the same small items: what sharding on one machine costs.
    Shards {
        /// Small items per run.
        #[arg(long, default_value_t = 20_000)]
        items: u64,
        /// Shards (processes).
        #[arg(long, default_value_t = 8)]
        shards: u64,
        /// Total concurrency of each side.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Runs of each side, alternating.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Every comparison in one run (per request, throughput, start, instances, large
    /// responses), each figure as a ratio to plain reqwest mTLS of the same run; prints a table and
    /// writes JSON and an SVG chart (paths relative to the current directory).
    Compare {
        /// Fewer iterations (and a 64 MiB large response unless --large-mib is given).
        #[arg(long)]
        quick: bool,
        /// Requests per round of the per-request comparison [default: 2000, --quick 300].
        #[arg(long)]
        requests: Option<usize>,
        /// Rounds of the per-request comparison (median reported) [default: 7, --quick 2].
        #[arg(long)]
        rounds: Option<usize>,
        /// Items per throughput run [default: 10000, --quick 2000].
        #[arg(long)]
        items: Option<u64>,
        /// Size of the large response, MiB [default: 1024, --quick 64].
        #[arg(long)]
        large_mib: Option<u64>,
        /// Python with `ib1-openenergy-support==0.2.17` and `urllib3<2` [default: a venv under
        /// target/bench-venv, created with pip when missing].
        #[arg(long)]
        python: Option<String>,
        /// Skip the reference Python client.
        #[arg(long)]
        no_python: bool,
        /// Where to write the results as JSON.
        #[arg(long, default_value = "docs/bench/compare.json")]
        json: std::path::PathBuf,
        /// Where to write the chart (SVG).
        #[arg(long, default_value = "docs/bench/compare.svg")]
        svg: std::path::PathBuf,
        /// The page whose results section gets this run's tables (between its marker lines).
        #[arg(long, default_value = "docs/benchmarks.md")]
        markdown: std::path::PathBuf,
        /// Write no page (the tables are printed all the same).
        #[arg(long)]
        no_markdown: bool,
    },
    /// The bare reverse proxy (the proxy's HTTP stack, nothing else) `proxy-load` runs as a process
    /// (bearer in FAPI_BENCH_BEARER).
    #[command(hide = true)]
    BareProxy {
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
        #[arg(long)]
        ca: std::path::PathBuf,
        upstream: String,
    },
    /// The plain reqwest mTLS fetcher `compare` runs as a process (bearer in FAPI_BENCH_BEARER).
    #[command(hide = true)]
    PlainFetch {
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
        #[arg(long)]
        ca: std::path::PathBuf,
        url: String,
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
    /// Run a program and print its peak RSS (KiB), wall and CPU time (µs) and whether it failed
    /// (used by the other benchmarks to measure child processes exactly).
    #[command(hide = true)]
    ExecPeak {
        bin: std::path::PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// One client's per-request loop alone, on a thread named `fapi-client`, for profilers
    /// (`perf record -g`, then `perf report --comm fapi-client`).
    Loop {
        /// The client.
        #[arg(value_enum)]
        which: profile::Which,
        /// Sequential requests (after 200 of warm-up).
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
    /// Peak memory of `fapi-host proxy` (a child process) while concurrent callers download, then
    /// upload, large bodies through it, against its peak after one small request.
    ProxyMemory {
        /// Size of each download and upload, MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Callers at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Small CSV GETs through `fapi-host proxy`, with FapiClient in process and through nginx
    /// (same mTLS identity, a fixed token): req/s, p50 and p99 per concurrency, ratios to nginx.
    ProxyLoad {
        /// Requests per row.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Concurrency levels (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
        /// The proxy's `--threads` (default: the proxy's own, 1).
        #[arg(long, value_name = "N")]
        proxy_threads: Option<u16>,
        /// Rounds per concurrency: the paths measured one after the other in each, medians
        /// reported (nginx first in every other round).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// nginx's `worker_processes` (default: one per CPU, as `auto`).
        #[arg(long, value_name = "N")]
        nginx_workers: Option<usize>,
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

/// The allocator of the `fapi-host` binary, so that the library measured here behaves as it does there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let What::ExecPeak { bin, args } = &args.what {
        return memory::exec_peak(bin, args);
    }
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
        What::ClientAuth { tokens, rounds } => client_auth::run(tokens, rounds).await,
        What::Grants {
            items,
            grants,
            concurrency,
            rounds,
            short_ttl,
        } => grants::run(items, grants, concurrency, rounds, short_ttl).await,
        What::Dpop { requests, rounds } => dpop::run(requests, rounds).await,
        What::Keys {
            handshakes,
            requests,
            rounds,
        } => keys::run(handshakes, requests, rounds).await,
        What::Sandbox { requests, rounds } => sandbox::run(requests, rounds).await,
        What::Memory { max_mib } => memory::run(max_mib).await,
        What::ProxyMemory { mib, concurrency } => proxy::memory(mib, concurrency).await,
        What::ProxyLoad {
            requests,
            concurrency,
            rounds,
            proxy_threads,
            nginx_workers,
        } => proxy_load::run(requests, &concurrency, rounds, proxy_threads, nginx_workers).await,
        What::ExecPeak { .. } => unreachable!("handled above"),
        What::Loop { which, requests } => profile::run(which, requests).await,
        What::Lang {
            requests,
            rounds,
            cached_runs,
        } => lang::run(requests, rounds, cached_runs).await,
        What::Compare {
            quick,
            requests,
            rounds,
            items,
            large_mib,
            python,
            no_python,
            json,
            svg,
            markdown,
            no_markdown,
        } => {
            let pick =
                |v: Option<u64>, full: u64, q: u64| v.unwrap_or(if quick { q } else { full });
            compare::run(compare::Options {
                quick,
                requests: pick(requests.map(|v| v as u64), 2000, 300) as usize,
                rounds: pick(rounds.map(|v| v as u64), 7, 2) as usize,
                items: pick(items, 10_000, 2_000),
                large_mib: pick(large_mib, 1024, 64),
                python,
                no_python,
                json,
                svg,
                markdown: (!no_markdown).then_some(markdown),
            })
            .await
        }
        What::BareProxy {
            cert,
            key,
            ca,
            upstream,
        } => bare_proxy::run(&cert, &key, &ca, upstream).await,
        What::PlainFetch { cert, key, ca, url } => {
            compare::plain_fetch(&cert, &key, &ca, &url).await
        }
        What::Batch {
            items,
            large,
            large_mib,
            memory_items,
            python,
        } => batch::run(items, large, large_mib, &memory_items, &python).await,
        What::Shards {
            items,
            shards,
            concurrency,
            rounds,
        } => batch::shards(items, shards, concurrency, rounds).await,
    }
}
