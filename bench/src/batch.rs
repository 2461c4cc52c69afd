//! `fapi-host batch` against the native client's best concurrent throughput on the same small items,
//! and the batch process's peak memory as the item count grows.

use std::sync::Arc;
use std::time::Instant;

use fapi_host::batch::{Batch, BatchOptions, Input};

use crate::memory::peak_kib;
use crate::setup::Bench;

fn input(origin: &str, n: u64) -> String {
    (0..n).map(|i| format!("{origin}/items/{i}\n")).collect()
}

/// The reference Python FAPISession fetching `n` items sequentially: items/s, or None when the
/// interpreter lacks `ib1-openenergy-support`.
async fn reference(b: &Bench, python: &str, n: u64) -> Option<f64> {
    let dir = tempfile::tempdir().unwrap();
    b.fed.write_client_config(dir.path(), "consumer").unwrap();
    let abs = |f: &str| dir.path().join(f).display().to_string();
    let info = serde_json::json!({
        "issuer_url": b.fed.issuer_url(),
        "data_url": b.fed.data_url(),
        "client_id": "fapi-dev-consumer",
        "requested_scopes": "directory:software consumption:read",
        "private_key": abs("consumer.key"),
        "certificate": abs("consumer.pem"),
        "ca_bundle": abs("ca.pem"),
    });
    let json = dir.path().join("federation.json");
    std::fs::write(&json, info.to_string()).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/fapisession_items.py");
    let python = python.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(json)
            .arg(n.to_string())
            .output()
    })
    .await
    .unwrap()
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
    Some(n as f64 / v["seconds"].as_f64()?)
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
        let client = b.client();
        client.token_info().await.unwrap();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (client, next, origin) = (client.clone(), next.clone(), origin.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items {
                        break;
                    }
                    let r = client
                        .get(format!("{origin}/items/{i}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rate = items as f64 / t0.elapsed().as_secs_f64();
        best = best.max(rate);
        rows.push(("FapiClient, native (in memory)", conc, rate));
    }
    for conc in [16usize, 64, 256] {
        let dir = tempfile::tempdir().unwrap();
        let mut options = BatchOptions::new(dir.path());
        options.concurrency = conc;
        let batch = Batch::new(b.client(), options);
        let t0 = Instant::now();
        let summary = batch
            .run(Input::parse(&input(&origin, items)))
            .await
            .unwrap();
        assert_eq!(summary.done, items, "{summary}");
        rows.push((
            "fapi-host batch (files + manifest)",
            conc,
            items as f64 / t0.elapsed().as_secs_f64(),
        ));
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
