//! `fapi-bench compare`: every comparison in one run, against one local data provider, each
//! as a ratio to plain reqwest mTLS measured in the same run; prints a table and writes a JSON file
//! and an SVG chart.
//!
//! Where the work runs:
//! - the federation (authorization server, data provider) on the main multi-thread runtime;
//! - the per-request clients (plain reqwest, FapiClient, the guests) one after another on ONE
//!   dedicated thread with its own current-thread runtime, so that the thread's
//!   `getrusage(RUSAGE_THREAD)` delta is their CPU cost and nothing of the servers';
//! - curl and the reference Python client as child processes, started from that thread (curl is
//!   charged its RUSAGE_CHILDREN delta, Python reports its own `time.process_time()`);
//! - throughput runs on the main runtime, sharing it (and the 2 cores) with the servers, like any
//!   loopback load test;
//! - `fapi-host run` / `fapi-host fetch` and a plain reqwest fetcher (`fapi-bench plain-fetch`) as
//!   child processes, for start times, peak RSS and MiB/s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fapi_host::sandbox::Stdio;
use fapi_host::{FapiClient, Settings};
use serde_json::{Value, json};

use crate::batch::{
    Items, batch_rate, federation_json, native_rate, plain_rate, reference_blocking,
};
use crate::memory::{fapi_host_bin, run_child};
use crate::profile::{Sequential, Which};
use crate::sandbox::{capture_sandbox, guest};
use crate::setup::{Bench, plain_client, plain_head};
use crate::{cpu, median};

/// What `compare` does and where it writes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fewer iterations and a 64 MiB large body (unless `large_mib` says otherwise).
    pub quick: bool,
    /// Requests per round of the per-request comparison.
    pub requests: usize,
    /// Rounds of the per-request comparison (the median round is reported).
    pub rounds: usize,
    /// Items per throughput run.
    pub items: u64,
    /// The large response, MiB.
    pub large_mib: u64,
    /// Python with the reference client; None: create/use a venv under target/bench-venv.
    pub python: Option<String>,
    /// Skip the reference Python client.
    pub no_python: bool,
    /// Where the JSON results go.
    pub json: PathBuf,
    /// Where the SVG chart goes.
    pub svg: PathBuf,
    /// A markdown file whose results section (between [`RESULTS_BEGIN`] and [`RESULTS_END`]) is
    /// replaced by this run's tables.
    pub markdown: Option<PathBuf>,
}

/// The line before the results section of the benchmarks page.
pub const RESULTS_BEGIN: &str = "<!-- fapi-bench compare: results (written by the benchmark) -->";
/// The line after it.
pub const RESULTS_END: &str = "<!-- end of fapi-bench compare results -->";

/// Replace the results section of `doc` with `report`.
fn splice_results(doc: &Path, report: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(doc)
        .map_err(|e| format!("results not written into {}: {e}", doc.display()))?;
    let (Some(a), Some(b)) = (text.find(RESULTS_BEGIN), text.find(RESULTS_END)) else {
        return Err(format!(
            "results not written into {}: it has no line {RESULTS_BEGIN:?} followed by \
             {RESULTS_END:?} to put them between",
            doc.display()
        ));
    };
    if b < a {
        return Err(format!(
            "{}: the results markers are out of order",
            doc.display()
        ));
    }
    let spliced = format!(
        "{}{RESULTS_BEGIN}\n\n{}\n{}",
        &text[..a],
        report.trim_end(),
        &text[b..]
    );
    std::fs::write(doc, spliced).map_err(|e| format!("writing {}: {e}", doc.display()))
}

/// What `prog args` prints, trimmed, or `?` when it cannot run.
fn run_output(prog: &str, args: &[&str]) -> String {
    std::process::Command::new(prog)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "?".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

/// One figure of the table.
#[derive(Debug, Clone)]
struct Row {
    key: String,
    section: &'static str,
    figure: String,
    value: f64,
    unit: &'static str,
    /// What the ratio is taken against (a plain reqwest figure of this run) and its value.
    baseline: Option<(String, f64)>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, b)| self.value / b)
    }
}

/// One of the targets the figures are held to.
#[derive(Debug, Clone)]
struct Target {
    what: String,
    goal: String,
    measured: String,
    met: bool,
}

/// Per-request cost: medians over rounds of wall time and CPU time per request.
#[derive(Debug, Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

fn cost(wall: Vec<Duration>, cpu: Vec<Duration>) -> Cost {
    Cost {
        wall: median(wall),
        cpu: median(cpu),
    }
}

/// Everything the client thread needs (it builds its own clients on its own runtime).
struct ThreadEnv {
    settings: Settings,
    tls: rustls::ClientConfig,
    url: String,
    dir: PathBuf,
    fed_json: PathBuf,
    python: Option<String>,
    requests: usize,
    rounds: usize,
    instances: (usize, usize),
}

/// What the client thread measured.
struct ThreadOut {
    per_request: Vec<(&'static str, &'static str, Cost)>,
    instantiate: Cost,
    instance_kib: f64,
    instances: (usize, usize),
    curl_connections: u64,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Wall and CPU (this thread) of one future.
async fn measure<F: std::future::Future<Output = ()>>(f: F) -> (Duration, Duration) {
    let c0 = cpu::thread();
    let t0 = Instant::now();
    f.await;
    (t0.elapsed(), cpu::thread() - c0)
}

/// curl fetching `n` URLs over one connection from a `--config` file: wall, CPU, connections made.
fn curl(dir: &Path, bearer: &str, url: &str, n: usize) -> (Duration, Duration, u64) {
    let q = |p: &str| format!("\"{}\"", dir.join(p).display());
    let mut cfg = format!(
        "silent\nshow-error\ncert = {}\nkey = {}\ncacert = {}\nheader = \"Authorization: {bearer}\"\nwrite-out = \"%{{http_code}} %{{num_connects}}\\n\"\n",
        q("consumer.pem"),
        q("consumer.key"),
        q("ca.pem"),
    );
    for _ in 0..n {
        cfg.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
    }
    let file = dir.join("curl.cfg");
    std::fs::write(&file, cfg).unwrap();
    let c0 = cpu::children();
    let t0 = Instant::now();
    let out = std::process::Command::new("curl")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("curl");
    let wall = t0.elapsed();
    let cpu = cpu::children() - c0;
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n, "curl output: {text}");
    let mut connects = 0;
    for l in lines {
        let (code, c) = l.split_once(' ').unwrap();
        assert_eq!(code, "200", "curl: {text}");
        connects += c.parse::<u64>().unwrap();
    }
    (wall, cpu, connects)
}

/// The per-request comparison, instantiate-and-run and memory per instance, on this thread.
async fn client_thread(env: ThreadEnv) -> ThreadOut {
    let n = env.requests;
    // The baselines and curl send the same token as a fixed header: same server work, no token
    // logic.
    let cache = tempfile::tempdir().unwrap();
    let seq = Sequential::new(&env.settings, env.tls.clone(), &env.url, Some(cache.path())).await;
    let (sb, _) = seq.guest.as_ref().unwrap();
    let (url, bearer) = (&env.url, &seq.bearer);

    // Warm-up: connections, token caches, the data provider's introspection cache.
    for which in [
        Which::Plain,
        Which::PlainHeaders,
        Which::Fapi,
        Which::Fetch,
        Which::Http,
    ] {
        seq.run(which, n).await;
    }
    curl(&env.dir, bearer, url, 2);
    let mut python = env.python.clone();
    if let Some(py) = &python
        && reference_blocking(py, &env.fed_json, 10).is_none()
    {
        python = None;
    }

    let names: [(&str, &str); 7] = [
        (
            "plain_reqwest",
            "plain reqwest mTLS, fixed bearer header (baseline)",
        ),
        (
            "plain_fapi_headers",
            "plain reqwest mTLS + bearer + x-fapi-interaction-id (same request bytes)",
        ),
        ("fapi_client", "FapiClient (native)"),
        ("guest_fapi_fetch", "guest through fapi-fetch"),
        ("guest_wasi_http", "guest through intercepted wasi:http"),
        ("curl", "curl --cert --key, bearer header, one process"),
        (
            "python_reference",
            "reference Python FAPISession (ib1-openenergy-support 0.2.17)",
        ),
    ];
    let mut wall: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut cpu_: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut curl_connections = 0;
    let per = |d: Duration| d / n as u32;
    for round in 0..env.rounds {
        eprintln!("  per-request round {}/{}", round + 1, env.rounds);
        let mut push = |i: usize, (w, c): (Duration, Duration)| {
            wall[i].push(per(w));
            cpu_[i].push(per(c));
        };
        // The order rotates every round, so that no client always follows the same one, and each
        // in-process client runs a tenth of its requests untimed just before it is timed: what
        // ran before (a child process that kept both cores busy, say) changes how quickly the
        // servers answer, and so the client's own CPU, for the first requests after it.
        let warm = (n / 10).max(20);
        for step in 0..names.len() {
            match (step + round) % names.len() {
                i @ 0..5 => {
                    let which = [
                        Which::Plain,
                        Which::PlainHeaders,
                        Which::Fapi,
                        Which::Fetch,
                        Which::Http,
                    ][i];
                    seq.run(which, warm).await;
                    push(i, measure(seq.run(which, n)).await)
                }
                5 => {
                    // curl: (N + 1 URLs) minus (1 URL) takes out process start, TLS handshake, exit.
                    let (w1, c1, _) = curl(&env.dir, bearer, url, 1);
                    let (wn, cn, conns) = curl(&env.dir, bearer, url, n + 1);
                    curl_connections = conns;
                    push(5, (wn.saturating_sub(w1), cn.saturating_sub(c1)));
                }
                _ => {
                    if let Some(py) = &python
                        && let Some(r) = reference_blocking(py, &env.fed_json, n as u64)
                    {
                        push(
                            6,
                            (
                                Duration::from_secs_f64(r.seconds),
                                Duration::from_secs_f64(r.cpu_seconds),
                            ),
                        );
                    }
                }
            }
        }
    }
    for (&(k, _), (w, c)) in names.iter().zip(wall.iter().zip(&cpu_)) {
        if !w.is_empty() {
            let list = |v: &[Duration]| {
                v.iter()
                    .map(|d| format!("{:.1}", us(*d)))
                    .collect::<Vec<_>>()
            };
            eprintln!(
                "  {k}: per round, µs latency {:?}, µs CPU {:?}",
                list(w),
                list(c)
            );
        }
    }
    let per_request = names
        .iter()
        .zip(wall.into_iter().zip(cpu_))
        .filter(|(_, (w, _))| !w.is_empty())
        .map(|(&(k, name), (w, c))| (k, name, cost(w, c)))
        .collect();

    // Instantiate and run a trivial plugin from the pre-instantiated component.
    let trivial = sb.load(&guest("trivial.wasm")).unwrap();
    let runs = 200u32;
    let one_run = || async {
        let out = sb.run(&trivial, &[], Stdio::Capture).await.unwrap();
        assert_eq!(out.exit_code, 0);
    };
    for _ in 0..20 {
        one_run().await;
    }
    let (mut iw, mut ic) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (w, c) = measure(async {
            for _ in 0..runs {
                one_run().await;
            }
        })
        .await;
        iw.push(w / runs);
        ic.push(c / runs);
    }
    let instantiate = cost(iw, ic);

    // Memory per concurrent instance: K guests spinning (yielding every epoch tick) at once, the
    // process's peak RSS above its RSS before, for two K; the slope is the cost of one more.
    let (k1, k2) = env.instances;
    let mut settings = env.settings.clone();
    settings.sandbox.max_wall = Duration::from_millis(1500 + 25 * k2 as u64);
    let spin_sb = capture_sandbox(
        FapiClient::from_settings(&settings).unwrap().0,
        Some(cache.path()),
    )
    .await;
    let spin = spin_sb.load(&guest("probe.wasm")).unwrap();
    let loop_args = ["loop".to_string()];
    let mut grow = Vec::new();
    for k in [k1, k2, k1, k2] {
        let before = cpu::rss_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(cpu::rss_kib());
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak
            })
        };
        let runs = (0..k).map(|_| spin_sb.run(&spin, &loop_args, Stdio::Capture));
        for out in futures_util::future::join_all(runs).await {
            assert_eq!(out.unwrap().exit_code, 125, "the wall-time limit stops it");
        }
        stop.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap();
        grow.push((k, peak.saturating_sub(before) as f64));
    }
    // The second pair (warm allocator) gives the slope.
    let instance_kib = (grow[3].1 - grow[2].1) / (k2 - k1) as f64;
    eprintln!("  memory growth with concurrent instances (K, KiB): {grow:?}");

    ThreadOut {
        per_request,
        instantiate,
        instance_kib,
        instances: (k1, k2),
        curl_connections,
    }
}

/// Find or create the reference client's interpreter: a venv under target/bench-venv.
fn reference_python(opts: &Options) -> Option<String> {
    if opts.no_python {
        return None;
    }
    if let Some(p) = &opts.python {
        return Some(p.clone());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let venv = target.join("bench-venv");
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        std::process::Command::new(py)
            .args(["-c", "import ib1.openenergy.support, urllib3"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !ready(&py) {
        eprintln!(
            "creating {} with ib1-openenergy-support==0.2.17 and urllib3<2",
            venv.display()
        );
        let ok = std::process::Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && std::process::Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "-q",
                    "ib1-openenergy-support==0.2.17",
                    "urllib3<2",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if !ok || !ready(&py) {
            eprintln!(
                "the reference Python client is SKIPPED: could not set up {}",
                venv.display()
            );
            return None;
        }
    }
    Some(py.display().to_string())
}

/// A rustls client configuration of the identity in `cert` and `key`, trusting the CAs in `ca`.
pub fn plain_tls(cert: &Path, key: &Path, ca: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(fapi_host::fapi_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap()
}

/// `fapi-bench plain-fetch`: one GET with plain reqwest mTLS and the bearer from
/// `FAPI_BENCH_BEARER`, body streamed and counted (the large-response baseline, as a process).
pub async fn plain_fetch(cert: &Path, key: &Path, ca: &Path, url: &str) {
    let tls = plain_tls(cert, key, ca);
    let bearer = std::env::var("FAPI_BENCH_BEARER").unwrap();
    let mut r = plain_head(&plain_client(tls, 1), url, &bearer).await;
    let mut n = 0u64;
    while let Some(c) = r.chunk().await.unwrap() {
        n += c.len() as u64;
    }
    println!("{n}");
}

async fn child(
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
) -> crate::memory::Child {
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let c = run_child(&bin, &args, &env);
        assert!(c.ok, "{} {args:?} failed", bin.display());
        c
    })
    .await
    .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub async fn run(opts: Options) {
    let t_start = Instant::now();
    let b = Bench::start().await;
    let origin = b.fed.data_origin();
    let dir = tempfile::tempdir().unwrap();
    let fed_json = federation_json(&b, dir.path());
    let config = dir.path().join("consumer.toml");
    assert!(config.exists(), "write_client_config writes consumer.toml");
    let python = reference_python(&opts);
    let python_version = python
        .as_ref()
        .map(|_| "ib1-openenergy-support 0.2.17, urllib3<2");
    let mut rows: Vec<Row> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();

    // 1. Per request, one connection, small responses.
    eprintln!(
        "per-request comparison ({} requests x {} rounds)",
        opts.requests, opts.rounds
    );
    let env = ThreadEnv {
        settings: b.settings.clone(),
        tls: b.plain_tls(),
        url: format!("{origin}/items/42"),
        dir: dir.path().to_path_buf(),
        fed_json: fed_json.clone(),
        python: python.clone(),
        requests: opts.requests,
        rounds: opts.rounds,
        instances: if opts.quick { (4, 24) } else { (8, 72) },
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = tx.send(rt.block_on(client_thread(env)));
        })
        .unwrap();
    let out = rx.await.expect("the client thread failed");
    let base = out.per_request[0].2;
    let base_wall = (
        "plain reqwest per-request latency".to_string(),
        us(base.wall),
    );
    let base_cpu = ("plain reqwest per-request CPU".to_string(), us(base.cpu));
    for &(key, name, c) in &out.per_request {
        rows.push(Row {
            key: format!("per_request.{key}.latency"),
            section: "per request",
            figure: format!("{name}: latency"),
            value: us(c.wall),
            unit: "µs",
            baseline: Some(base_wall.clone()),
        });
        rows.push(Row {
            key: format!("per_request.{key}.cpu"),
            section: "per request",
            figure: format!("{name}: client CPU"),
            value: us(c.cpu),
            unit: "µs",
            baseline: Some(base_cpu.clone()),
        });
    }
    let find = |k: &str| out.per_request.iter().find(|r| r.0 == k).map(|r| r.2);
    for (k, what) in [
        ("fapi_client", "FapiClient"),
        ("guest_fapi_fetch", "a guest through fapi-fetch"),
        ("guest_wasi_http", "a guest through wasi:http"),
    ] {
        if let Some(c) = find(k) {
            let (lw, lc) = (
                c.wall.as_secs_f64() / base.wall.as_secs_f64(),
                c.cpu.as_secs_f64() / base.cpu.as_secs_f64(),
            );
            targets.push(Target {
                what: format!("host overhead over plain mTLS per request: {what}"),
                goal: "≤ 1.10x (latency and CPU)".into(),
                measured: format!("latency {lw:.2}x, CPU {lc:.2}x"),
                met: lw <= 1.10 && lc <= 1.10,
            });
        }
    }
    // The host's own overhead: FapiClient against plain reqwest sending the same request bytes.
    if let (Some(f), Some(h)) = (find("fapi_client"), find("plain_fapi_headers")) {
        let (lw, lc) = (
            f.wall.as_secs_f64() / h.wall.as_secs_f64(),
            f.cpu.as_secs_f64() / h.cpu.as_secs_f64(),
        );
        targets.push(Target {
            what: "host overhead over plain mTLS sending the same request (bearer + interaction id): FapiClient".into(),
            goal: "≤ 1.10x (latency and CPU)".into(),
            measured: format!("latency {lw:.2}x, CPU {lc:.2}x"),
            met: lw <= 1.10 && lc <= 1.10,
        });
    }
    let python_rate = find("python_reference").map(|c| 1.0 / c.wall.as_secs_f64());

    // 2. Throughput at concurrency 1, 16, 64, 256.
    eprintln!("throughput ({} items per run)", opts.items);
    let token = b.client().danger_reveal_token().await.unwrap();
    let bearer = format!("Bearer {}", token.as_str());
    let mut series: Vec<(String, Vec<(usize, f64)>)> = vec![
        ("plain reqwest mTLS".into(), Vec::new()),
        ("FapiClient".into(), Vec::new()),
        ("fapi-host batch".into(), Vec::new()),
    ];
    // The batch writes a file per item: on this machine's shared disk and, for the engine's own
    // cost, on tmpfs when there is one.
    let shm = Path::new("/dev/shm");
    let tmpfs = shm.is_dir().then_some(shm);
    if tmpfs.is_some() {
        series.push(("fapi-host batch, output on tmpfs".into(), Vec::new()));
    }
    for conc in [1usize, 16, 64, 256] {
        let plain = plain_client(b.plain_tls(), conc);
        let p = plain_rate(&plain, &bearer, &origin, Items::small(opts.items), conc).await;
        let native = b.client();
        let f = native_rate(&native, &origin, Items::small(opts.items), conc).await;
        let batch = b.client();
        batch.token_info().await.unwrap();
        let bt = batch_rate(batch, &origin, Items::small(opts.items), conc, None).await;
        series[0].1.push((conc, p));
        series[1].1.push((conc, f));
        series[2].1.push((conc, bt));
        let base = (format!("plain reqwest at concurrency {conc}"), p);
        let mut measured = vec![
            ("plain_reqwest", "plain reqwest mTLS (baseline)", p),
            ("fapi_client", "FapiClient (in memory)", f),
            (
                "batch",
                "fapi-host batch engine (files + manifest on the temp dir's disk)",
                bt,
            ),
        ];
        if let Some(shm) = tmpfs {
            let batch = b.client();
            batch.token_info().await.unwrap();
            let bs = batch_rate(batch, &origin, Items::small(opts.items), conc, Some(shm)).await;
            series[3].1.push((conc, bs));
            measured.push((
                "batch_tmpfs",
                "fapi-host batch engine (files + manifest on tmpfs)",
                bs,
            ));
        }
        for (key, name, v) in measured {
            rows.push(Row {
                key: format!("throughput.{key}.c{conc}"),
                section: "throughput",
                figure: format!("{name}, concurrency {conc}"),
                value: v,
                unit: "items/s",
                baseline: Some(base.clone()),
            });
        }
    }
    let best = |i: usize| {
        series[i]
            .1
            .iter()
            .copied()
            .fold((0, 0f64), |a, b| if b.1 > a.1 { b } else { a })
    };
    let best_plain = best(0);
    if let Some(py) = python_rate {
        rows.push(Row {
            key: "throughput.python_reference.c1".into(),
            section: "throughput",
            figure: "reference Python FAPISession, sequential (from its per-request latency)"
                .into(),
            value: py,
            unit: "items/s",
            baseline: Some((
                format!("plain reqwest best (concurrency {})", best_plain.0),
                best_plain.1,
            )),
        });
        let mut which = vec![
            (2usize, "fapi-host batch (output on disk)"),
            (1, "FapiClient"),
        ];
        if tmpfs.is_some() {
            which.insert(1, (3, "fapi-host batch (output on tmpfs)"));
        }
        for (i, what) in which {
            let (c, r) = best(i);
            targets.push(Target {
                what: format!("{what} throughput vs the reference Python client"),
                goal: "≥ 20x".into(),
                measured: format!(
                    "{:.1}x (best at concurrency {c}: {r:.0} vs {py:.0} items/s)",
                    r / py
                ),
                met: r / py >= 20.0,
            });
        }
    } else {
        targets.push(Target {
            what: "throughput vs the reference Python client".into(),
            goal: "≥ 20x".into(),
            measured: "not measured: the reference client was skipped".into(),
            met: false,
        });
    }

    // 3. Start of `fapi-host run`, instantiate-and-run, memory per instance.
    eprintln!("start-up and instances");
    let host = fapi_host_bin();
    let trivial = guest("trivial.wasm").display().to_string();
    let run_args = |cache: &Path| {
        vec![
            "--config".to_string(),
            config.display().to_string(),
            "run".into(),
            "--cache-dir".into(),
            cache.display().to_string(),
            trivial.clone(),
        ]
    };
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    let warm_cache = tempfile::tempdir().unwrap();
    for _ in 0..if opts.quick { 2 } else { 3 } {
        let fresh = tempfile::tempdir().unwrap();
        cold.push(
            child(host.clone(), run_args(fresh.path()), vec![])
                .await
                .took,
        );
    }
    child(host.clone(), run_args(warm_cache.path()), vec![]).await;
    for _ in 0..5 {
        cached.push(
            child(host.clone(), run_args(warm_cache.path()), vec![])
                .await
                .took,
        );
    }
    let (cold, cached) = (median(cold), median(cached));
    rows.push(Row {
        key: "start.run_cold".into(),
        section: "start",
        figure: "`fapi-host run trivial.wasm`, cold (empty compilation cache), whole process"
            .into(),
        value: cold.as_secs_f64() * 1e3,
        unit: "ms",
        baseline: Some((base_wall.0.clone(), base_wall.1 / 1e3)),
    });
    rows.push(Row {
        key: "start.run_cached".into(),
        section: "start",
        figure: "`fapi-host run trivial.wasm`, cached compilation, whole process".into(),
        value: cached.as_secs_f64() * 1e3,
        unit: "ms",
        baseline: Some((base_wall.0.clone(), base_wall.1 / 1e3)),
    });
    rows.push(Row {
        key: "start.instantiate_and_run".into(),
        section: "start",
        figure: "instantiate + run a trivial plugin (pre-instantiated component), in process"
            .into(),
        value: us(out.instantiate.wall),
        unit: "µs",
        baseline: Some(base_wall.clone()),
    });
    rows.push(Row {
        key: "start.instantiate_and_run.cpu".into(),
        section: "start",
        figure: "instantiate + run a trivial plugin: CPU".into(),
        value: us(out.instantiate.cpu),
        unit: "µs",
        baseline: Some(base_cpu.clone()),
    });
    targets.push(Target {
        what: "instantiate-and-run of a trivial plugin".into(),
        goal: "< 1 ms".into(),
        measured: format!("{:.0} µs", us(out.instantiate.wall)),
        met: out.instantiate.wall < Duration::from_millis(1),
    });
    rows.push(Row {
        key: "memory.per_instance".into(),
        section: "memory",
        figure: format!(
            "memory per concurrent plugin instance (probe, slope of RSS between {} and {} live instances)",
            out.instances.0, out.instances.1
        ),
        value: out.instance_kib,
        unit: "KiB",
        baseline: None,
    });

    // 4. Large responses, each client a process of its own: MiB/s and peak RSS.
    eprintln!("large responses ({} MiB)", opts.large_mib);
    let probe = guest("probe.wasm").display().to_string();
    let guest_cache = tempfile::tempdir().unwrap();
    let guest_cache_s = guest_cache.path().display().to_string();
    let cfg = config.display().to_string();
    // Compile the probe into the cache first: not measured.
    child(
        host.clone(),
        strings(&[
            "--config",
            &cfg,
            "run",
            "--cache-dir",
            &guest_cache_s,
            &probe,
            "--",
            "env",
        ]),
        vec![],
    )
    .await;
    let me = std::env::current_exe().unwrap();
    let path = |f: &str| dir.path().join(f).display().to_string();
    let small = 16u64;
    let mut sizes = vec![small];
    if opts.large_mib > 128 {
        sizes.push(128);
    }
    sizes.push(opts.large_mib);
    let mut large: Vec<(&str, &str, Vec<crate::memory::Child>)> = Vec::new();
    for (key, name) in [
        (
            "plain_reqwest",
            "plain reqwest mTLS (baseline), own process",
        ),
        (
            "fapi_host_fetch",
            "native client: `fapi-host fetch -o /dev/null`",
        ),
        (
            "guest",
            "guest streaming through fapi-fetch: `fapi-host run probe stream-count`",
        ),
    ] {
        let mut got = Vec::new();
        for &mib in &sizes {
            let url = format!("{origin}/sized?bytes={}", mib << 20);
            let c = match key {
                "plain_reqwest" => {
                    let args = vec![
                        "plain-fetch".into(),
                        "--cert".into(),
                        path("consumer.pem"),
                        "--key".into(),
                        path("consumer.key"),
                        "--ca".into(),
                        path("ca.pem"),
                        url,
                    ];
                    let env = vec![("FAPI_BENCH_BEARER".to_string(), bearer.clone())];
                    child(me.clone(), args, env).await
                }
                "fapi_host_fetch" => {
                    let args = strings(&["--config", &cfg, "fetch", "-o", "/dev/null", &url]);
                    child(host.clone(), args, vec![]).await
                }
                _ => {
                    let limit = (mib + 1).to_string();
                    let args = strings(&[
                        "--config",
                        &cfg,
                        "run",
                        "--cache-dir",
                        &guest_cache_s,
                        "--max-wall-seconds",
                        "900",
                        "--max-response-body-mib",
                        &limit,
                        &probe,
                        "--",
                        "stream-count",
                        &url,
                    ]);
                    child(host.clone(), args, vec![]).await
                }
            };
            got.push(c);
        }
        large.push((key, name, got));
    }
    let mibs = |c: &crate::memory::Child| opts.large_mib as f64 / c.took.as_secs_f64();
    let p_large = *large[0].2.last().unwrap();
    let label = |mib: u64| {
        if mib >= 1024 && mib.is_multiple_of(1024) {
            format!("{} GiB", mib / 1024)
        } else {
            format!("{mib} MiB")
        }
    };
    let size = label(opts.large_mib);
    for (key, name, got) in &large {
        let l = got.last().unwrap();
        rows.push(Row {
            key: format!("large.{key}.mib_per_s"),
            section: "large response",
            figure: format!("{name}: {size}, throughput (whole process)"),
            value: mibs(l),
            unit: "MiB/s",
            baseline: Some(("plain reqwest process MiB/s".into(), mibs(&p_large))),
        });
        rows.push(Row {
            key: format!("large.{key}.cpu_per_mib"),
            section: "large response",
            figure: format!("{name}: CPU per MiB"),
            value: l.cpu.as_secs_f64() * 1e3 / opts.large_mib as f64,
            unit: "ms",
            baseline: Some((
                "plain reqwest process CPU per MiB".into(),
                p_large.cpu.as_secs_f64() * 1e3 / opts.large_mib as f64,
            )),
        });
        for (i, &mib) in sizes.iter().enumerate() {
            rows.push(Row {
                key: format!("large.{key}.peak_rss_{mib}mib"),
                section: "large response",
                figure: format!("{name}: peak RSS at {}", label(mib)),
                value: got[i].peak_kib as f64 / 1024.0,
                unit: "MiB",
                baseline: Some((
                    format!("plain reqwest process peak RSS at {}", label(mib)),
                    large[0].2[i].peak_kib as f64 / 1024.0,
                )),
            });
        }
        if *key != "plain_reqwest" {
            let mib = |c: &crate::memory::Child| c.peak_kib as f64 / 1024.0;
            let growth = mib(l) / mib(&got[0]);
            let plain_growth = mib(&p_large) / mib(&large[0].2[0]);
            targets.push(Target {
                what: format!("memory flat in the response size: {name}"),
                goal: format!("peak RSS at {size} ≤ 1.10x that at {small} MiB"),
                measured: format!(
                    "{} MiB: {growth:.2}x (plain reqwest: {plain_growth:.2}x)",
                    got.iter()
                        .map(|c| format!("{:.1}", mib(c)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
                met: growth <= 1.10,
            });
        }
    }

    // Report: printed, and written into the results section of `opts.markdown`.
    use std::fmt::Write as _;
    let took = t_start.elapsed();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "Measured by `fapi-bench compare` on {} at commit {} ({} build, {} cores; {} requests x {} \
         rounds per request; {} items per throughput run; {size} large response{}).\n",
        run_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        run_output("git", &["rev-parse", "--short", "HEAD"]),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.requests,
        opts.rounds,
        opts.items,
        if opts.quick { "; --quick" } else { "" }
    );
    let _ = writeln!(report, "| figure | value | ratio | ratio to (same run) |");
    let _ = writeln!(report, "|---|---|---|---|");
    for r in &rows {
        let v = if r.value >= 100.0 {
            format!("{:.0} {}", r.value, r.unit)
        } else {
            format!("{:.2} {}", r.value, r.unit)
        };
        match (r.ratio(), &r.baseline) {
            (Some(x), Some((what, b))) => {
                let bv = if *b >= 100.0 {
                    format!("{b:.0} {}", r.unit)
                } else {
                    format!("{b:.2} {}", r.unit)
                };
                let _ = writeln!(report, "| {} | {v} | {x:.2} | {what}: {bv} |", r.figure);
            }
            _ => {
                let _ = writeln!(report, "| {} | {v} | — | — |", r.figure);
            }
        }
    }
    let _ = writeln!(
        report,
        "\n| target | goal | measured | |\n|---|---|---|---|"
    );
    for t in &targets {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} |",
            t.what,
            t.goal,
            t.measured,
            if t.met { "met" } else { "**missed**" }
        );
    }
    let _ = writeln!(
        report,
        "\ncurl made {} TLS connection(s) for {} URLs; the token endpoint saw {} token requests in \
         all; the run took {:.0} s.",
        out.curl_connections,
        opts.requests + 1,
        b.fed.counters().token_requests,
        took.as_secs_f64()
    );
    println!("\n{report}");
    if let Some(doc) = &opts.markdown {
        match splice_results(doc, &report) {
            Ok(()) => println!("wrote the results into {}", doc.display()),
            Err(e) => eprintln!("{e}"),
        }
    }

    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "key": r.key,
                "section": r.section,
                "figure": r.figure,
                "value": r.value,
                "unit": r.unit,
                "baseline": r.baseline.as_ref().map(|(w, v)| json!({"what": w, "value": v})),
                "ratio": r.ratio(),
            })
        })
        .collect();
    let json_targets: Vec<Value> = targets
        .iter()
        .map(|t| json!({"what": t.what, "goal": t.goal, "measured": t.measured, "met": t.met}))
        .collect();
    let doc = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "shared": true,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        },
        "options": {
            "quick": opts.quick,
            "requests": opts.requests,
            "rounds": opts.rounds,
            "items": opts.items,
            "large_mib": opts.large_mib,
            "python": python_version,
        },
        "seconds": took.as_secs_f64(),
        "curl_connections": out.curl_connections,
        "token_requests": b.fed.counters().token_requests,
        "rows": json_rows,
        "targets": json_targets,
    });
    for p in [&opts.json, &opts.svg] {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).unwrap();
        }
    }
    std::fs::write(
        &opts.json,
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    let bars: Vec<(String, f64, f64)> = out
        .per_request
        .iter()
        .map(|&(_, name, c)| {
            (
                name.trim_end_matches(" (baseline)").to_string(),
                c.wall.as_secs_f64() / base.wall.as_secs_f64(),
                c.cpu.as_secs_f64() / base.cpu.as_secs_f64(),
            )
        })
        .collect();
    crate::chart::draw(&opts.svg, &bars, &series, python_rate).unwrap();
    println!("\nwrote {} and {}", opts.json.display(), opts.svg.display());
}
