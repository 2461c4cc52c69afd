//! Peak memory (VmHWM) of a `fapi-host run` process whose guest streams responses of growing size:
//! flat memory means streaming works.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sandbox::guest;
use crate::setup::Bench;

pub fn fapi_host_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().join("fapi-host");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p fapi-host",
        bin.display()
    );
    bin
}

/// A finished child process: peak resident set (VmHWM, sampled every 20 ms), wall time, CPU time.
#[derive(Clone, Copy, Debug)]
pub struct Child {
    pub peak_kib: u64,
    pub took: Duration,
    pub cpu: Duration,
    pub ok: bool,
}

/// Run `fapi-host` to completion, sampling its peak resident set (VmHWM, KiB) until it exits.
pub fn peak_kib(args: &[String]) -> (u64, Duration, bool) {
    let c = run_child(&fapi_host_bin(), args, &[]);
    (c.peak_kib, c.took, c.ok)
}

/// Run `bin` to completion (stdout and stderr discarded) and measure it exactly: it runs under
/// `fapi-bench exec-peak`, whose only child it is, so that the kernel's own accounting of that
/// one child (`getrusage(RUSAGE_CHILDREN)`: peak resident set, CPU) is the answer, even for a
/// process that lives a few milliseconds (sampling /proc would miss it).
pub fn run_child(bin: &Path, args: &[String], env: &[(&str, &str)]) -> Child {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("exec-peak")
        .arg(bin)
        .args(args)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(v.len(), 4, "exec-peak printed {text:?}");
    Child {
        peak_kib: v[0],
        took: Duration::from_micros(v[1]),
        cpu: Duration::from_micros(v[2]),
        ok: v[3] == 0,
    }
}

/// `fapi-bench exec-peak BIN ARGS...`: run BIN (stdout and stderr discarded) and print its peak
/// RSS (KiB), wall time (µs), CPU time (µs) and exit status (0 = success), space-separated.
pub fn exec_peak(bin: &Path, args: &[String]) {
    let t0 = Instant::now();
    let status = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let took = t0.elapsed();
    println!(
        "{} {} {} {}",
        crate::cpu::children_peak_kib(),
        took.as_micros(),
        crate::cpu::children().as_micros(),
        u8::from(!status.success())
    );
}

pub async fn run(max_mib: u64) {
    let b = Bench::start().await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = b
        .fed
        .write_client_config(cfg_dir.path(), "consumer")
        .unwrap();
    let probe = guest("probe.wasm").display().to_string();
    let mut sizes = vec![16u64, 128];
    if max_mib > 128 {
        sizes.push(max_mib);
    }
    println!(
        "\n## Peak memory of `fapi-host run` while the guest streams a response (probe `stream`)\n"
    );
    println!("| response | peak RSS of the process | MiB/s | ratio of peak to the 16 MiB run |");
    println!("|---|---|---|---|");
    let mut base = 0;
    // A first run compiles the component into the cache: not measured.
    let warm = vec![
        "--config".into(),
        config.display().to_string(),
        "run".into(),
        probe.clone(),
        "--".into(),
        "env".into(),
    ];
    tokio::task::spawn_blocking(move || peak_kib(&warm))
        .await
        .unwrap();
    for mib in sizes {
        let url = format!("{}/sized?bytes={}", b.fed.data_origin(), mib << 20);
        let args = vec![
            "--config".into(),
            config.display().to_string(),
            "run".into(),
            "--max-wall-seconds".into(),
            "600".into(),
            "--max-response-body-mib".into(),
            (mib + 1).to_string(),
            probe.clone(),
            "--".into(),
            "stream".into(),
            url,
        ];
        let (peak, took, ok) = tokio::task::spawn_blocking(move || peak_kib(&args))
            .await
            .unwrap();
        assert!(ok, "the run failed");
        if base == 0 {
            base = peak;
        }
        println!(
            "| {mib} MiB | {:.1} MiB | {:.0} | {:.2} |",
            peak as f64 / 1024.0,
            mib as f64 / took.as_secs_f64(),
            peak as f64 / base as f64
        );
    }
}
