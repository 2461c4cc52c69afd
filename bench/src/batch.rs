//! `fapi-host batch` against the native client's best concurrent throughput and the reference
//! Python client on the same items — 10,000 small ones and 100 large ones — and the batch
//! process's peak memory as the item count grows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fapi_host::FapiClient;
use fapi_host::batch::{Batch, BatchOptions, Input};
use sha2::{Digest as _, Sha256};

use crate::memory::{fapi_host_bin, peak_kib};
use crate::setup::{Bench, fapi_drain, fapi_get, plain_get};

/// The items of a throughput run.
#[derive(Clone, Copy, Debug)]
pub struct Items {
    /// How many.
    pub count: u64,
    /// None: `/items/{i}` (a small JSON document, ~100 bytes); Some(n): `/sized?bytes=n&item={i}`.
    pub bytes: Option<u64>,
}

impl Items {
    /// `count` small JSON items.
    pub fn small(count: u64) -> Items {
        Items { count, bytes: None }
    }

    /// The path of item `{i}`, as the reference script takes it.
    fn template(&self) -> String {
        match self.bytes {
            None => "/items/{i}".into(),
            Some(n) => format!("/sized?bytes={n}&item={{i}}"),
        }
    }

    /// The path of item `i`.
    pub fn path(&self, i: u64) -> String {
        self.template().replace("{i}", &i.to_string())
    }

    /// The batch input: one URL per line.
    pub fn input(&self, origin: &str) -> String {
        (0..self.count)
            .map(|i| format!("{origin}{}\n", self.path(i)))
            .collect()
    }
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

/// The reference Python FAPISession fetching `n` small items sequentially over one connection
/// (blocking), or None, with the reason on stderr, when the interpreter lacks
/// `ib1-openenergy-support`.
pub fn reference_blocking(python: &str, federation_json: &Path, n: u64) -> Option<Reference> {
    reference_items(python, federation_json, Items::small(n))
}

/// [`reference_blocking`] for any [`Items`].
fn reference_items(python: &str, federation_json: &Path, items: Items) -> Option<Reference> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/fapisession_items.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(federation_json)
        .arg(items.count.to_string())
        .arg(items.template())
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

/// The reference Python FAPISession fetching `items` sequentially: items/s, or None when the
/// interpreter lacks `ib1-openenergy-support`.
async fn reference(b: &Bench, python: &str, items: Items) -> Option<f64> {
    let dir = tempfile::tempdir().unwrap();
    let json = federation_json(b, dir.path());
    let python = python.to_owned();
    let r = tokio::task::spawn_blocking(move || reference_items(&python, &json, items))
        .await
        .unwrap()?;
    Some(items.count as f64 / r.seconds)
}

/// Items/s of `conc` tasks sharing `get` to fetch `items` (each body read in full).
async fn rate<F, Fut>(origin: &str, items: Items, conc: usize, get: F) -> f64
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
                if i >= items.count {
                    break;
                }
                get(format!("{origin}{}", items.path(i))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    items.count as f64 / t0.elapsed().as_secs_f64()
}

/// Items/s of the native client at concurrency `conc` (small bodies read whole into memory, large
/// ones read chunk by chunk and dropped).
pub async fn native_rate(client: &FapiClient, origin: &str, items: Items, conc: usize) -> f64 {
    client.token_info().await.unwrap();
    let client = client.clone();
    rate(origin, items, conc, move |url| {
        let client = client.clone();
        async move {
            match items.bytes {
                None => fapi_get(&client, &url).await,
                Some(n) => assert_eq!(fapi_drain(&client, &url).await, n),
            }
        }
    })
    .await
}

/// A fresh directory under `under`, or under the system's temporary directory.
fn fresh_dir(under: Option<&Path>) -> tempfile::TempDir {
    match under {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// Items/s of the same job written by hand over the native client: each body read whole, hashed
/// (SHA-256) and written to its own file with `tokio::fs::write` in a fresh directory under `under`
/// (or the system's temporary directory) — no temporary name and rename, no manifest, no resume.
pub async fn native_files_rate(
    client: &FapiClient,
    origin: &str,
    items: Items,
    conc: usize,
    under: Option<&Path>,
) -> f64 {
    let dir = fresh_dir(under);
    client.token_info().await.unwrap();
    let (client, out) = (client.clone(), Arc::new(dir.path().to_owned()));
    let files = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = files.clone();
    let rate = rate(origin, items, conc, move |url| {
        let (client, out, n) = (client.clone(), out.clone(), n.clone());
        async move {
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let body = r.bytes().await.unwrap();
            let digest = Sha256::digest(&body);
            let name = format!("{}-{:02x}", n.fetch_add(1, Ordering::Relaxed), digest[0]);
            tokio::fs::write(out.join(name), &body).await.unwrap();
        }
    })
    .await;
    assert_eq!(files.load(Ordering::Relaxed), items.count);
    rate
}

/// Items/s of the least any engine keeping the batch's guarantee can do: the native client at
/// concurrency `conc`, each body read whole and sent to one thread that writes it under a
/// temporary name and renames it into place (`File::create_new`, `write_all`, `rename`) in a fresh
/// directory under `under` — no hash, no manifest, no resume, no retries. What the engine costs
/// above this is its own; what this costs above the native client is the file system's.
pub async fn floor_rate(
    client: &FapiClient,
    origin: &str,
    items: Items,
    conc: usize,
    under: Option<&Path>,
) -> f64 {
    let dir = fresh_dir(under);
    client.token_info().await.unwrap();
    let out = dir.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel::<(u64, bytes::Bytes)>();
    let writer = std::thread::spawn(move || {
        let mut written = 0u64;
        for (i, body) in rx {
            let (tmp, dest) = (out.join(format!(".{i}.part")), out.join(i.to_string()));
            std::fs::File::create_new(&tmp)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &body))
                .and_then(|()| std::fs::rename(&tmp, &dest))
                .unwrap();
            written += 1;
        }
        written
    });
    let client = client.clone();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rate = rate(origin, items, conc, move |url| {
        let (client, tx, i) = (
            client.clone(),
            tx.clone(),
            next.fetch_add(1, Ordering::Relaxed),
        );
        async move {
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            tx.send((i, r.bytes().await.unwrap())).unwrap();
        }
    });
    let t0 = Instant::now();
    let _ = rate.await;
    // The rate counts until the last file is in place.
    assert_eq!(writer.join().unwrap(), items.count);
    items.count as f64 / t0.elapsed().as_secs_f64()
}

/// Items/s of plain reqwest mTLS with a fixed bearer header at concurrency `conc`.
pub async fn plain_rate(
    client: &reqwest::Client,
    bearer: &str,
    origin: &str,
    items: Items,
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
    items: Items,
    conc: usize,
    under: Option<&Path>,
) -> f64 {
    let dir = fresh_dir(under);
    batch_rate_in(client, origin, items, conc, dir.path()).await
}

/// [`batch_rate`] writing into `out` (which must not hold a manifest of these items yet).
pub async fn batch_rate_in(
    client: FapiClient,
    origin: &str,
    items: Items,
    conc: usize,
    out: &Path,
) -> f64 {
    let mut options = BatchOptions::new(out);
    options.concurrency = conc;
    let batch = Batch::new(client, options);
    let t0 = Instant::now();
    let summary = batch.run(Input::parse(&items.input(origin))).await.unwrap();
    assert_eq!(summary.done, items.count, "{summary}");
    if let Some(n) = items.bytes {
        assert_eq!(summary.bytes, n * items.count, "{summary}");
    }
    items.count as f64 / t0.elapsed().as_secs_f64()
}

/// One client's figures over a set of concurrencies.
struct Series {
    name: &'static str,
    rates: Vec<(usize, f64)>,
}

impl Series {
    fn best(&self) -> (usize, f64) {
        self.rates
            .iter()
            .copied()
            .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a })
    }
}

/// The native client, the batch on the disk and (where there is one) on tmpfs, at each
/// concurrency, then the reference client; one table, ratios to the native client's best.
async fn throughput(b: &Bench, python: &str, items: Items, concs: &[usize], n_ref: u64) {
    let origin = b.fed.data_origin();
    let shm = Path::new("/dev/shm");
    let tmpfs = shm.is_dir().then_some(shm);
    let mut series = vec![
        Series {
            name: "FapiClient, native (bodies not written)",
            rates: Vec::new(),
        },
        Series {
            name: "FapiClient + SHA-256 + tokio::fs::write per item, by hand, on the disk",
            rates: Vec::new(),
        },
        Series {
            name: "fapi-host batch, output on the disk (system temp dir)",
            rates: Vec::new(),
        },
        Series {
            name: "floor: FapiClient + create, write, rename on one thread, on the disk",
            rates: Vec::new(),
        },
    ];
    if tmpfs.is_some() {
        series.push(Series {
            name: "FapiClient + SHA-256 + tokio::fs::write per item, by hand, on tmpfs",
            rates: Vec::new(),
        });
        series.push(Series {
            name: "fapi-host batch, output on tmpfs (/dev/shm)",
            rates: Vec::new(),
        });
        series.push(Series {
            name: "floor: FapiClient + create, write, rename on one thread, on tmpfs",
            rates: Vec::new(),
        });
    }
    for &conc in concs {
        // Each client in turn at this concurrency, so that drift hits them alike.
        let r = native_rate(&b.client(), &origin, items, conc).await;
        series[0].rates.push((conc, r));
        let r = native_files_rate(&b.client(), &origin, items, conc, None).await;
        series[1].rates.push((conc, r));
        let r = batch_rate(b.client(), &origin, items, conc, None).await;
        series[2].rates.push((conc, r));
        let r = floor_rate(&b.client(), &origin, items, conc, None).await;
        series[3].rates.push((conc, r));
        if let Some(shm) = tmpfs {
            let r = native_files_rate(&b.client(), &origin, items, conc, Some(shm)).await;
            series[4].rates.push((conc, r));
            let r = batch_rate(b.client(), &origin, items, conc, Some(shm)).await;
            series[5].rates.push((conc, r));
            let r = floor_rate(&b.client(), &origin, items, conc, Some(shm)).await;
            series[6].rates.push((conc, r));
        }
    }
    let (best_conc, best) = series[0].best();
    let mib = |rate: f64| {
        items.bytes.map_or(String::new(), |n| {
            format!(" ({:.0} MiB/s)", rate * n as f64 / 1048576.0)
        })
    };
    let header: Vec<String> = concs.iter().map(|c| c.to_string()).collect();
    println!(
        "| client | items/s at concurrency {} | best / the native client's best |",
        header.join(" / ")
    );
    println!("|---|---|---|");
    for s in &series {
        let rates: Vec<String> = s.rates.iter().map(|r| format!("{:.0}", r.1)).collect();
        let (c, v) = s.best();
        println!(
            "| {} | {} | {:.2} (concurrency {c}{}) |",
            s.name,
            rates.join(" / "),
            v / best,
            mib(v)
        );
    }
    let reference_items = Items {
        count: n_ref.min(items.count),
        ..items
    };
    match reference(b, python, reference_items).await {
        Some(py) => {
            println!(
                "| reference Python FAPISession (ib1-openenergy-support 0.2.17), sequential, {} items | {py:.0}{} | {:.2} |",
                reference_items.count,
                mib(py),
                py / best
            );
            println!();
            for s in &series {
                println!(
                    "{}: best {:.1}x the reference client",
                    s.name,
                    s.best().1 / py
                );
            }
        }
        None => println!("\n(reference client skipped)"),
    }
    println!(
        "native best: {best:.0} items/s at concurrency {best_conc}{}",
        mib(best)
    );
    for (by_hand, batch) in [(1, 2), (4, 5)] {
        if let (Some(h), Some(b)) = (series.get(by_hand), series.get(batch)) {
            println!(
                "{}: best {:.2}x of the same job by hand on the same file system",
                b.name,
                b.best().1 / h.best().1
            );
        }
    }
    for (floor, batch) in [(3, 2), (6, 5)] {
        if let (Some(f), Some(b)) = (series.get(floor), series.get(batch)) {
            println!(
                "{}: best {:.2}x of the floor on the same file system",
                b.name,
                b.best().1 / f.best().1
            );
        }
    }
}

/// `fapi-bench batch`: small items, large items, then peak memory against the item count.
pub async fn run(items: u64, large: u64, large_mib: u64, memory_items: &[u64], python: &str) {
    let b = Bench::start().await;
    let origin = b.fed.data_origin();
    if items > 0 {
        println!("\n## Throughput on {items} small items (GET /items/{{i}}, ~100 bytes each)\n");
        throughput(&b, python, Items::small(items), &[1, 16, 64, 256], 2_000).await;
    }
    if large > 0 {
        let bytes = large_mib << 20;
        println!(
            "\n## Throughput on {large} large items (GET /sized?bytes={bytes}&item={{i}}, {large_mib} MiB each)\n"
        );
        let items = Items {
            count: large,
            bytes: Some(bytes),
        };
        throughput(&b, python, items, &[1, 4, 16], large).await;
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
        std::fs::write(&list, Items::small(n).input(&origin)).unwrap();
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

/// `fapi-bench shards`: `shards` processes of `fapi-host batch --shard K/N --concurrency C/N`
/// (each its own directory, token and connection pool, as the README's Slurm and Kubernetes
/// examples run them) against one `fapi-host batch --concurrency C`, on the same `items` small
/// items, alternating for `rounds` runs of each, each in fresh directories. Prints each run, the
/// median and best of each side, and their ratio.
pub async fn shards(items: u64, shards: u64, concurrency: usize, rounds: usize) {
    let b = Bench::start().await;
    let origin = b.fed.data_origin();
    let dir = tempfile::tempdir().unwrap();
    let config = b.fed.write_client_config(dir.path(), "consumer").unwrap();
    let list = dir.path().join("input.txt");
    std::fs::write(&list, Items::small(items).input(&origin)).unwrap();
    let shards = shards.max(1);
    let per = (concurrency / shards as usize).max(1);
    println!(
        "\n## {shards} shards (concurrency {per} each) against one batch (concurrency {concurrency}), {items} small items\n"
    );
    println!("| run | one batch, items/s | {shards} shards, items/s |");
    println!("|---|---|---|");
    let root = dir.path().to_path_buf();
    let runs = tokio::task::spawn_blocking(move || {
        let bin = fapi_host_bin();
        // Items/s of `n` processes started together, each on shard K/n, until the last ends.
        let run = |round: usize, n: u64, conc: usize| -> f64 {
            let out = root.join(format!("run-{round}-{n}"));
            let t0 = Instant::now();
            let children: Vec<_> = (0..n)
                .map(|k| {
                    let mut c = std::process::Command::new(&bin);
                    c.arg("--config")
                        .arg(&config)
                        .args(["batch", "--input"])
                        .arg(&list)
                        .arg("--out")
                        .arg(out.join(format!("shard-{k}")))
                        .args(["--concurrency", &conc.to_string()])
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null());
                    if n > 1 {
                        c.args(["--shard", &format!("{k}/{n}")]);
                    }
                    c.spawn().unwrap()
                })
                .collect();
            for mut c in children {
                assert!(c.wait().unwrap().success(), "a batch failed");
            }
            let secs = t0.elapsed().as_secs_f64();
            let lines: usize = (0..n)
                .map(|k| {
                    std::fs::read_to_string(out.join(format!("shard-{k}/manifest.jsonl")))
                        .unwrap()
                        .lines()
                        .count()
                })
                .sum();
            assert_eq!(lines as u64, items, "every item once");
            std::fs::remove_dir_all(&out).unwrap();
            items as f64 / secs
        };
        (0..rounds)
            .map(|round| {
                let one = run(round, 1, concurrency);
                let sharded = run(round, shards, per);
                println!("| {} | {one:.0} | {sharded:.0} |", round + 1);
                (one, sharded)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let stat = |pick: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (one_median, one_best) = stat(|r| r.0);
    let (sh_median, sh_best) = stat(|r| r.1);
    println!(
        "\nmedian: one batch {one_median:.0} items/s, {shards} shards {sh_median:.0} items/s: \
         shards / one batch = {:.2}x (best of each: {:.2}x; sharding costs nothing at 1/1.1 = \
         0.91x or more); token requests: {}",
        sh_median / one_median,
        sh_best / one_best,
        b.fed.counters().token_requests
    );
}
