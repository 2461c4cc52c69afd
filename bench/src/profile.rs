//! `fapi-bench loop`: one client's per-request loop, alone, for profilers.
//!
//! The federation runs on the main runtime; the chosen client runs `requests` sequential GETs on
//! one keep-alive connection on a dedicated thread named `fapi-client` with a current-thread
//! runtime, so that `perf record -g ./target/release/fapi-bench loop fapi` and
//! `perf report --comm fapi-client` show the client's work and nothing of the servers'.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::ValueEnum;

use fapi_host::sandbox::{Plugin, Sandbox};
use fapi_host::{FapiClient, Settings};

use crate::cpu;
use crate::sandbox::{capture_sandbox, guest, probe_repeat};
use crate::setup::{Bench, fapi_get, plain_client, plain_fapi_headers_get, plain_get};

/// Which client the loop runs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    /// Plain reqwest mTLS with a fixed bearer header (the baseline).
    Plain,
    /// Plain reqwest mTLS with the fixed bearer and a fresh `x-fapi-interaction-id` header: the
    /// same request bytes as FapiClient's.
    PlainHeaders,
    /// FapiClient.
    Fapi,
    /// A guest through `fapi-fetch` (the probe's `repeat`).
    Fetch,
    /// A guest through intercepted `wasi:http` (the probe's `http-repeat`).
    Http,
    /// FapiClient from 16 tasks at once, bodies kept in memory (the batch's baseline).
    Fapi16,
    /// The batch engine at concurrency 16, writing under `FAPI_BENCH_OUT` (default: the system's
    /// temporary directory); its blocking threads are named `fapi-blocking`.
    Batch,
}

pub async fn run(which: Which, requests: usize) {
    let b = Bench::start().await;
    let settings = b.settings.clone();
    let tls = b.plain_tls();
    let url = format!("{}/items/42", b.fed.data_origin());
    let (wall, cpu, process) = std::thread::Builder::new()
        .name("fapi-client".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("fapi-blocking")
                .build()
                .unwrap();
            rt.block_on(one(which, requests, &settings, tls, &url))
        })
        .unwrap()
        .join()
        .unwrap();
    let n = requests as u32;
    println!(
        "{which:?}: {requests} requests, {:?} per request, {:?} CPU per request on the client's thread, {:?} CPU per request in the whole process (servers included)",
        wall / n,
        cpu / n,
        process / n
    );
}

/// The sequential per-request clients that `compare` and `loop` time, each on one keep-alive
/// connection: plain reqwest (with and without `FapiClient`'s extra header), `FapiClient`, and a
/// guest through either interface.
pub struct Sequential {
    pub url: String,
    pub plain: reqwest::Client,
    /// `Bearer <token>`, the token `client` holds, for the plain clients.
    pub bearer: String,
    pub client: FapiClient,
    /// The sandbox and the probe component, when guests are timed.
    pub guest: Option<(Sandbox, Plugin)>,
}

impl Sequential {
    /// The clients for `url`; the guests' sandbox (over its own `FapiClient`) compiles into
    /// `cache` when given.
    pub async fn new(
        settings: &Settings,
        tls: rustls::ClientConfig,
        url: &str,
        guests_cache: Option<&Path>,
    ) -> Sequential {
        let client = FapiClient::from_settings(settings).unwrap().0;
        let bearer = format!(
            "Bearer {}",
            client.danger_reveal_token().await.unwrap().as_str()
        );
        let guest = match guests_cache {
            Some(cache) => {
                let sb =
                    capture_sandbox(FapiClient::from_settings(settings).unwrap().0, Some(cache))
                        .await;
                let probe = sb.load(&guest("probe.wasm")).unwrap();
                Some((sb, probe))
            }
            None => None,
        };
        Sequential {
            url: url.to_owned(),
            plain: plain_client(tls, 1),
            bearer,
            client,
            guest,
        }
    }

    /// `n` sequential requests through `which` (one of the sequential clients).
    pub async fn run(&self, which: Which, n: usize) {
        let (url, bearer) = (self.url.as_str(), self.bearer.as_str());
        match which {
            Which::Plain => {
                for _ in 0..n {
                    plain_get(&self.plain, url, bearer).await;
                }
            }
            Which::PlainHeaders => {
                for _ in 0..n {
                    plain_fapi_headers_get(&self.plain, url, bearer).await;
                }
            }
            Which::Fapi => {
                for _ in 0..n {
                    fapi_get(&self.client, url).await;
                }
            }
            Which::Fetch | Which::Http => {
                let (sb, probe) = self.guest.as_ref().expect("built with a guests cache");
                let cmd = if matches!(which, Which::Fetch) {
                    "repeat"
                } else {
                    "http-repeat"
                };
                probe_repeat(sb, probe, cmd, url, n).await;
            }
            Which::Fapi16 | Which::Batch => unreachable!("not a sequential client"),
        }
    }
}

async fn one(
    which: Which,
    n: usize,
    settings: &Settings,
    tls: rustls::ClientConfig,
    url: &str,
) -> (Duration, Duration, Duration) {
    // Only the guests load the sandbox, from a lasting compilation cache, so that profiles and
    // instruction counts hold no compilation.
    let cache = std::env::temp_dir().join("fapi-bench-loop-cache");
    let guests = matches!(which, Which::Fetch | Which::Http).then_some(cache.as_path());
    let seq = Sequential::new(settings, tls, url, guests).await;
    let out = match std::env::var_os("FAPI_BENCH_OUT") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let round = |n: usize| {
        let (seq, out) = (&seq, &out);
        async move {
            let origin = url.trim_end_matches("/items/42");
            match which {
                Which::Fapi16 => {
                    crate::batch::native_rate(
                        &seq.client,
                        origin,
                        crate::batch::Items::small(n as u64),
                        16,
                    )
                    .await;
                }
                Which::Batch => {
                    // A new directory per round, removed after the measurement.
                    let out = out.path().join(format!("round-{n}"));
                    crate::batch::batch_rate_in(
                        seq.client.clone(),
                        origin,
                        crate::batch::Items::small(n as u64),
                        16,
                        &out,
                    )
                    .await;
                }
                _ => seq.run(which, n).await,
            }
        }
    };
    round(200).await;
    let (t0, c0, p0) = (Instant::now(), cpu::thread(), cpu::process());
    round(n).await;
    (t0.elapsed(), cpu::thread() - c0, cpu::process() - p0)
}
