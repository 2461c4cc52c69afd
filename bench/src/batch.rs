//! `fapi-host batch` against the native client's best concurrent throughput on the same small items,
//! and the batch process's peak memory as the item count grows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fapi_host::FapiClient;
use fapi_host::batch::{Batch, BatchOptions, Input};

use crate::memory::peak_kib;
use crate::setup::{Bench, fapi_get, plain_get};

pub fn input(origin: &str, n: u64) -> String {
    (0..n).map(|i| format!("{origin}/items/{i}\n")).collect()
}

/// Write the `federation.json` that `reference/fapisession_items.py` reads (with the consumer's
/// key, certificate and CA written beside it as `consumer.key`, `consumer.pem`, `ca.pem`).
pub fn federation_json(b: &Bench, dir: &Path) -> PathBuf {
    b.fed.write_client_config(dir, "consumer").unwrap();
    let abs = |f: &str| dir.join(f).display().to_string();
    let info = serde_json::json!({
        "issuer_url": b.fed.issuer_url(),
        "data_url": b.fed.data_url(),
        "client_id": "fapi-dev-consumer",
        "requested_scopes": "directory:software consumption:read",
        "private_key": abs("consumer.key"),
        "certificate": abs("consumer.pem"),
        "ca_bundle": abs("ca.pem"),
    });
    let json = dir.join("federation.json");
    std::fs::write(&json, info.to_string()).unwrap();
    json
}

/// One run of the reference client.
#[derive(Clone, Copy, Debug)]
pub struct Reference {
    /// Wall time of the timed loop.
    pub seconds: f64,
    /// The interpreter's own CPU time (`time.process_time()`) over the same loop.
    pub cpu_seconds: f64,
}

/// The reference Python FAPISession fetching `n` items sequentially over one connection (blocking),
/// or None, with the reason on stderr, when the interpreter lacks `ib1-openenergy-support`.
pub fn reference_blocking(python: &str, federation_json: &Path, n: u64) -> Option<Reference> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/fapisession_items.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(federation_json)
        .arg(n.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "reference client skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Reference {
        seconds: v["seconds"].as_f64()?,
        cpu_seconds: v["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
    })
}

/// The reference Python FAPISession fetching `n` items sequentially: items/s, or None when the
/// interpreter lacks `ib1-openenergy-support`.
async fn reference(b: &Bench, python: &str, n: u64) -> Option<f64> {
    let dir = tempfile::tempdir().unwrap();
    let json = federation_json(b, dir.path());
    let python = python.to_owned();
    let r = tokio::task::spawn_blocking(move || reference_blocking(&python, &json, n))
        .await
        .unwrap()?;
    Some(n as f64 / r.seconds)
}

/// Items/s of `conc` tasks sharing `get` to fetch `/items/0..items` (each body read in full).
async fn rate<F, Fut>(origin: &str, items: u64, conc: usize, get: F) -> f64
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, origin, get) = (next.clone(), origin.to_owned(), get.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= items {
                    break;
                }
                get(format!("{origin}/items/{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    items as f64 / t0.elapsed().as_secs_f64()
}

/// Items/s of the native client at concurrency `conc` (bodies kept in memory).
pub async fn native_rate(client: &FapiClient, origin: &str, items: u64, conc: usize) -> f64 {
    client.token_info().await.unwrap();
    let client = client.clone();
    rate(origin, items, conc, move |url| {
        let client = client.clone();
        async move { fapi_get(&client, &url).await }
    })
    .await
}

/// Items/s of plain reqwest mTLS with a fixed bearer header at concurrency `conc`.
pub async fn plain_rate(
    client: &reqwest::Client,
    bearer: &str,
    origin: &str,
    items: u64,
    conc: usize,
) -> f64 {
    let (client, bearer) = (client.clone(), bearer.to_owned());
    rate(origin, items, conc, move |url| {
        let (client, bearer) = (client.clone(), bearer.clone());
        async move { plain_get(&client, &url, &bearer).await }
    })
    .await
}

/// Items/s of the batch engine behind `fapi-host batch` (files + manifest in a fresh directory under
/// `under`, or the system's temporary directory).
pub async fn batch_rate(
    client: FapiClient,
    origin: &str,
    items: u64,
    conc: usize,
    under: Option<&Path>,
) -> f64 {
    let dir = match under {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    batch_rate_in(client, origin, items, conc, dir.path()).await
}

/// [`batch_rate`] writing into `out` (which must not hold a manifest of these items yet).
pub async fn batch_rate_in(
    client: FapiClient,
    origin: &str,
    items: u64,
    conc: usize,
    out: &Path,
) -> f64 {
    let mut options = BatchOptions::new(out);
    options.concurrency = conc;
    let batch = Batch::new(client, options);
    let t0 = Instant::now();
    let summary = batch
        .run(Input::parse(&input(origin, items)))
        .await
        .unwrap();
    assert_eq!(summary.done, items, "{summary}");
    items as f64 / t0.elapsed().as_secs_f64()
}

pub async fn run(items: u64, memory_items: &[u64], python: &str) {
    let b = Bench::start().await;
    let origin = b.fed.data_origin();
    println!("\n## Throughput on {items} small items (GET /items/{{i}}, ~100 bytes each)\n");
    println!("| client | concurrency | items/s | ratio to the native client's best |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    let mut best = 0f64;
    for conc in [1usize, 16, 64, 256] {
        let rate = native_rate(&b.client(), &origin, items, conc).await;
        best = best.max(rate);
        rows.push(("FapiClient, native (in memory)", conc, rate));
    }
    for conc in [16usize, 64, 256] {
        let rate = batch_rate(b.client(), &origin, items, conc, None).await;
        rows.push(("fapi-host batch (files + manifest)", conc, rate));
    }
    let batch64 = rows
        .iter()
        .find(|r| r.0.starts_with("fapi-host") && r.1 == 64)
        .map(|r| r.2);
    for (what, conc, rate) in rows {
        println!("| {what} | {conc} | {rate:.0} | {:.2} |", rate / best);
    }
    let n_ref = 2_000.min(items);
    if let (Some(py), Some(batch64)) = (reference(&b, python, n_ref).await, batch64) {
        println!(
            "| reference Python FAPISession (ib1-openenergy-support 0.2.17), sequential, {n_ref} items | 1 | {py:.0} | {:.2} |",
            py / best
        );
        println!(
            "\n`fapi-host batch` at concurrency 64 / reference client: **{:.1}x**",
            batch64 / py
        );
    }
    println!(
        "\ntoken requests for all of the above: {}",
        b.fed.counters().token_requests
    );

    if memory_items.is_empty() {
        return;
    }
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = b
        .fed
        .write_client_config(cfg_dir.path(), "consumer")
        .unwrap();
    println!(
        "\n## Peak memory of the `fapi-host batch` process as the item count grows (concurrency 64)\n"
    );
    println!("| items | peak RSS | items/s | ratio of peak to the smallest run |");
    println!("|---|---|---|---|");
    let mut base = 0;
    for &n in memory_items {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("input.txt");
        std::fs::write(&list, input(&origin, n)).unwrap();
        let args = vec![
            "--config".into(),
            config.display().to_string(),
            "batch".into(),
            "--input".into(),
            list.display().to_string(),
            "--out".into(),
            dir.path().join("out").display().to_string(),
            "--concurrency".into(),
            "64".into(),
        ];
        let (peak, took, ok) = tokio::task::spawn_blocking(move || peak_kib(&args))
            .await
            .unwrap();
        assert!(ok, "the batch failed");
        if base == 0 {
            base = peak;
        }
        println!(
            "| {n} | {:.1} MiB | {:.0} | {:.2} |",
            peak as f64 / 1024.0,
            n as f64 / took.as_secs_f64(),
            peak as f64 / base as f64
        );
    }
}
