//! Guests against the native client: per-request cost through fapi-fetch and through intercepted
//! wasi:http, instantiate-and-run, and first versus cached compilation.

use std::path::Path;
use std::time::{Duration, Instant};

use fapi_host::sandbox::{Plugin, Sandbox, SandboxOptions, Stdio};

use crate::setup::Bench;
use crate::{median, time};

/// Where the guest components are (built by `cargo build -p fapi-tests` / the tests' build script).
pub fn guest(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("wasm-guests/wasm32-wasip2/release").join(name);
    assert!(
        p.exists(),
        "{} is missing: build the guests first with `cargo build -p fapi-tests`",
        p.display()
    );
    p
}

pub async fn sandbox(b: &Bench, cache: Option<&Path>) -> Sandbox {
    capture_sandbox(b.client(), cache).await
}

/// A sandbox over `client` that captures the guests' output, compiling into `cache`.
pub async fn capture_sandbox(client: fapi_host::FapiClient, cache: Option<&Path>) -> Sandbox {
    Sandbox::new(
        client,
        SandboxOptions {
            cache_dir: cache.map(Path::to_path_buf),
            stdio: Stdio::Capture,
            ..SandboxOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Run the probe's `cmd URL N` (`repeat`, `http-repeat`): N sequential GETs from the guest; it must
/// succeed.
pub async fn probe_repeat(sb: &Sandbox, probe: &Plugin, cmd: &str, url: &str, n: usize) {
    let args = [cmd.to_string(), url.to_string(), n.to_string()];
    let out = sb.run(probe, &args, Stdio::Capture).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(
        out.stdout.starts_with(b"{\"ok\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

pub async fn run(requests: usize, rounds: usize) {
    let b = Bench::start().await;
    let cache = tempfile::tempdir().unwrap();
    let sb = sandbox(&b, Some(cache.path())).await;
    let url = format!("{}/items/42", b.fed.data_origin());
    let probe = sb.load(&guest("probe.wasm")).unwrap();

    let native = sb.client().clone();
    let native_round = || async {
        for _ in 0..requests {
            crate::setup::fapi_get(&native, &url).await;
        }
    };
    let guest_round = |cmd: &'static str| probe_repeat(&sb, &probe, cmd, &url, requests);
    native_round().await;
    guest_round("repeat").await;
    guest_round("http-repeat").await;
    let (mut nat, mut ff, mut wh) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        nat.push(time(native_round()).await);
        ff.push(time(guest_round("repeat")).await);
        wh.push(time(guest_round("http-repeat")).await);
    }
    let per = |d: Duration| d / requests as u32;
    let (n_, f_, w_) = (per(median(nat)), per(median(ff)), per(median(wh)));
    let ratio = |d: Duration| d.as_secs_f64() / n_.as_secs_f64();
    println!(
        "\n## Guest requests vs the native client ({requests} sequential GET /items/42 per round, {rounds} rounds, one connection)\n"
    );
    println!("| path | per request | ratio to FapiClient |");
    println!("|---|---|---|");
    println!("| FapiClient, native (baseline) | {n_:?} | 1.00 |");
    println!("| guest through fapi-fetch | {f_:?} | {:.2} |", ratio(f_));
    println!(
        "| guest through intercepted wasi:http | {w_:?} | {:.2} |",
        ratio(w_)
    );

    // Instantiate-and-run of a trivial plugin from the pre-instantiated component.
    let trivial = sb.load(&guest("trivial.wasm")).unwrap();
    let runs = 200u32;
    for _ in 0..20 {
        sb.run(&trivial, &[], Stdio::Capture).await.unwrap();
    }
    let t0 = Instant::now();
    for _ in 0..runs {
        let out = sb.run(&trivial, &[], Stdio::Capture).await.unwrap();
        assert_eq!(out.exit_code, 0);
    }
    let inst = t0.elapsed() / runs;
    println!(
        "\n## Instantiate and run a trivial plugin (pre-instantiated component, {runs} runs)\n"
    );
    println!("| what | time | target |");
    println!("|---|---|---|");
    println!("| Store + instantiate + wasi:cli/run + drop | {inst:?} | < 1 ms |");

    // First (compiling) versus cached load, for each example component.
    println!("\n## Loading a component: first (compile) versus cached\n");
    println!(
        "| component | first load | cached load (new engine, same cache dir) | first / cached |"
    );
    println!("|---|---|---|---|");
    for name in ["csv-summary.wasm", "probe.wasm"] {
        let dir = tempfile::tempdir().unwrap();
        let first_sb = sandbox(&b, Some(dir.path())).await;
        let t0 = Instant::now();
        first_sb.load(&guest(name)).unwrap();
        let first = t0.elapsed();
        let mut cached = Vec::new();
        for _ in 0..5 {
            let again = sandbox(&b, Some(dir.path())).await;
            let t0 = Instant::now();
            again.load(&guest(name)).unwrap();
            cached.push(t0.elapsed());
        }
        let c = median(cached);
        println!(
            "| {name} | {first:?} | {c:?} | {:.0}x |",
            first.as_secs_f64() / c.as_secs_f64()
        );
    }
}
