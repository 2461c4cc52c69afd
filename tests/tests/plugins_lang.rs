//! Plugins in other languages: the Python (`guest/python`, componentize-py) and JavaScript (`guest/js`,
//! componentize-js) csv-summary examples, built at test time from the same `wit/` and run with the
//! `fapi-host run` binary and the `Sandbox` library against the local federation. The federation's
//! `/consumption-edge-cases.csv` is summarised by them and by the Rust example (`guests::CSV_SUMMARY`),
//! and all three must print [`EDGE_CASES_SUMMARY`]: the twins read CSV by the same rules.
//!
//! Each component is built into `$CARGO_TARGET_TMPDIR/lang-plugins/`, named by a hash of its sources, the
//! WIT and the tool's version, so an unchanged plugin is not rebuilt. Compiled code is cached by wasmtime
//! in `$CARGO_TARGET_TMPDIR/wasmtime-cache` (shared with `sandbox.rs`).
//!
//! When `componentize-py`, or node with `guest/js/node_modules` (`npm ci --prefix guest/js`), is missing,
//! the test prints why and passes, unless `FAPI_REQUIRE_LANG_PLUGINS=1` (as in `.ci/run`): then it fails.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use fapi_federation::{Federation, FederationConfig, Pki, data};
use fapi_host::sandbox::{Sandbox, SandboxOptions, Stdio};
use fapi_host::{FapiClient, Overrides, Settings};
use fapi_tests::guests;
use fapi_tests::sandbox_env::{FileSnapshot, Needles};
use sha2::{Digest, Sha256};

/// Print a line to stderr past the test harness's capture (which takes only `eprintln!`), so that skips
/// and timings show in a plain `cargo test` run and in CI's log.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The wasmtime compilation cache, the same directory as `sandbox.rs` uses.
fn cache_dir() -> PathBuf {
    tmp().join("wasmtime-cache")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The language of a plugin: how to find its tool and build it.
#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    JavaScript,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::JavaScript => "javascript",
        }
    }

    /// The tool's version, or why the tool cannot be used here.
    fn tool(self) -> Result<String, String> {
        let version = |cmd: &str| -> Result<String, String> {
            let out = Command::new(cmd)
                .arg("--version")
                .output()
                .map_err(|e| format!("`{cmd} --version`: {e}"))?;
            if !out.status.success() {
                return Err(format!("`{cmd} --version` failed: {}", text(&out.stderr)));
            }
            Ok(text(&out.stdout).trim().to_owned())
        };
        match self {
            Lang::Python => version("componentize-py").map_err(|e| {
                format!("{e} (install it: pip install -r guest/python/requirements.txt)")
            }),
            Lang::JavaScript => {
                let node = version("node").map_err(|e| format!("{e} (install Node.js 20+)"))?;
                let pkg = root()
                    .join("guest/js/node_modules/@bytecodealliance/componentize-js/package.json");
                let pkg = std::fs::read_to_string(&pkg).map_err(|e| {
                    format!(
                        "{}: {e} (install the build tool: npm ci --prefix guest/js)",
                        pkg.display()
                    )
                })?;
                Ok(format!("node {node}; {pkg}"))
            }
        }
    }

    /// The files the component is built from (besides `wit/`).
    fn sources(self) -> Vec<PathBuf> {
        let r = root();
        match self {
            Lang::Python => vec![
                r.join("guest/python/fapi_guest.py"),
                r.join("guest/python/examples/csv_summary.py"),
                r.join("guest/python/requirements.txt"),
            ],
            Lang::JavaScript => vec![
                r.join("guest/js/fapi-guest.js"),
                r.join("guest/js/examples/csv-summary.js"),
                r.join("guest/js/build.mjs"),
                r.join("guest/js/package-lock.json"),
            ],
        }
    }

    /// The command that builds the component into `out`.
    fn build_command(self, out: &Path) -> Command {
        let r = root();
        match self {
            Lang::Python => {
                let mut c = Command::new("componentize-py");
                c.arg("-d")
                    .arg(r.join("wit"))
                    .args(["-w", "plugin", "componentize", "-p"])
                    .arg(r.join("guest/python"))
                    .arg("-p")
                    .arg(r.join("guest/python/examples"))
                    .arg("csv_summary")
                    .arg("-o")
                    .arg(out);
                c
            }
            Lang::JavaScript => {
                let mut c = Command::new("node");
                c.arg(r.join("guest/js/build.mjs"))
                    .arg(r.join("guest/js/examples/csv-summary.js"))
                    .arg(out);
                c
            }
        }
    }
}

/// Whether a missing tool fails the test (CI) instead of skipping it.
fn required() -> bool {
    std::env::var("FAPI_REQUIRE_LANG_PLUGINS").is_ok_and(|v| v == "1")
}

/// Every file under `dir`, sorted.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The csv-summary component of `lang`, built now unless a build of the same sources exists. `None`
/// (after printing why) when the tool is missing and not required.
fn component(lang: Lang) -> Option<PathBuf> {
    let tool = match lang.tool() {
        Ok(v) => v,
        Err(why) if !required() => {
            note!(
                "SKIPPED: the {} plugin test: {why}. Set FAPI_REQUIRE_LANG_PLUGINS=1 to make this a failure.",
                lang.name()
            );
            return None;
        }
        Err(why) => panic!(
            "FAPI_REQUIRE_LANG_PLUGINS=1 but the {} plugin cannot be built: {why}",
            lang.name()
        ),
    };
    let mut files = lang.sources();
    files_under(&root().join("wit"), &mut files);
    let mut h = Sha256::new();
    h.update(tool.as_bytes());
    for f in &files {
        h.update(f.strip_prefix(root()).unwrap().to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        h.update([0]);
    }
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = tmp().join("lang-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let stem = format!("csv-summary-{}", lang.name());
    let out = dir.join(format!("{stem}-{hash}.wasm"));
    if out.exists() {
        note!("{}: reusing {}", lang.name(), out.display());
        return Some(out);
    }
    // Older builds of this plugin are stale now.
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&stem) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let partial = dir.join(format!("{stem}-{hash}.wasm.{}.part", std::process::id()));
    let started = Instant::now();
    let built = lang
        .build_command(&partial)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        built.status.success() && partial.exists(),
        "building the {} plugin failed ({:?}):\n{}\n{}",
        lang.name(),
        lang.build_command(&partial),
        text(&built.stdout),
        text(&built.stderr)
    );
    std::fs::rename(&partial, &out).unwrap();
    note!(
        "{}: built {} ({} bytes) in {:.1} s",
        lang.name(),
        out.display(),
        std::fs::metadata(&out).unwrap().len(),
        started.elapsed().as_secs_f64()
    );
    Some(out)
}

/// What csv-summary prints after its interaction id line, computed from the federation's data.
fn expected_summary() -> String {
    let rows: Vec<data::Row> = (0..data::DEFAULT_ROWS).map(data::row).collect();
    let n = rows.len() as u64;
    let meters: u64 = rows.iter().map(|r| r.num_meters).sum();
    let total_tenths: u64 = rows.iter().map(|r| r.total_tenths).sum();
    let mean_tenths: u64 = rows.iter().map(|r| r.mean_tenths).sum();
    let mut top = rows.clone();
    // Stable: the first of equal totals stays first, as in every implementation.
    top.sort_by_key(|r| std::cmp::Reverse(r.total_tenths));
    let mut s = String::new();
    writeln!(s, "postcodes:          {n}").unwrap();
    writeln!(s, "meters:             {meters}").unwrap();
    writeln!(
        s,
        "total kWh:          {}.{}",
        total_tenths / 10,
        total_tenths % 10
    )
    .unwrap();
    writeln!(
        s,
        "mean of means kWh:  {:.1}",
        mean_tenths as f64 / 10.0 / n as f64
    )
    .unwrap();
    writeln!(s).unwrap();
    writeln!(s, "top 5 postcodes by total consumption:").unwrap();
    writeln!(s, "rank  postcode     meters        total kWh").unwrap();
    for (i, r) in top.iter().take(5).enumerate() {
        let total = format!("{}.{}", r.total_tenths / 10, r.total_tenths % 10);
        writeln!(
            s,
            "{:>4}  {:<10} {:>8} {:>16}",
            i + 1,
            r.postcode,
            r.num_meters,
            total
        )
        .unwrap();
    }
    s
}

/// Check a csv-summary output against the data.
fn check_summary(lang: Lang, how: &str, stdout: &[u8]) {
    let out = text(stdout);
    let (first, rest) = out.split_once('\n').unwrap_or((&out, ""));
    assert!(
        first.starts_with("interaction id:     ") && first.len() > 30,
        "{} via {how}: first line {first:?}",
        lang.name()
    );
    assert_eq!(rest, expected_summary(), "{} via {how}", lang.name());
}

/// What every csv-summary prints for `data::EDGE_CASES_CSV` after its interaction id line: BOM
/// dropped; quoted fields with `""` and a comma; fields trimmed; a quoted field spanning two lines,
/// stray quotes, `NaN`, `inf`, `1e999`, negative, signed, hex, fractional and too large meter counts,
/// missing fields all malformed (20); blank lines ignored; meters summed exactly past `u64::MAX`;
/// 170.25 rounded half to even; the first of equal totals kept; padding by characters, not UTF-16.
const EDGE_CASES_SUMMARY: &str = "\
postcodes:          8
meters:             18446744073709551645
total kWh:          6101.7
mean of means kWh:  105.0
malformed rows:     20 (skipped)

top 5 postcodes by total consumption:
rank  postcode     meters        total kWh
   1  AB1 2CD          12           2500.5
   2  Leeds, LS1        3           1999.9
   3  \u{1f600} 9ZZ      18446744073709551615            750.8
   4  Say \"hi\"          1            500.0
   5  SP1 1AA           7            170.2
";

/// Check a csv-summary output for the edge-case CSV.
fn check_edge_cases(name: &str, stdout: &[u8]) {
    let out = text(stdout);
    let (first, rest) = out.split_once('\n').unwrap_or((&out, ""));
    assert!(first.starts_with("interaction id:     "), "{name}: {out}");
    assert_eq!(rest, EDGE_CASES_SUMMARY, "{name} on the edge-case CSV");
}

fn edge_cases_url(fed: &Federation) -> String {
    format!("{}/consumption-edge-cases.csv", fed.data_origin())
}

/// `fapi-host [FLAGS] --config CONFIG run --cache-dir <the tests' cache> ARGS` in `cwd`: its
/// output and how long it took.
fn run_bin(config: &Path, cwd: &Path, flags: &[&str], args: &[&str]) -> (Output, f64) {
    let started = Instant::now();
    let out = Command::new(fapi_tests::fapi_host_bin())
        .args(flags)
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .arg("run")
        .arg("--cache-dir")
        .arg(cache_dir())
        .args(args)
        .output()
        .unwrap();
    (out, started.elapsed().as_secs_f64())
}

/// The client of `config` and a sandbox over it that captures the guests' output, with the
/// tests' lasting compilation cache.
async fn capturing_sandbox(config: &Path) -> (FapiClient, Sandbox) {
    let settings = Settings::load(Some(config), &Overrides::default()).unwrap();
    let (client, _) = FapiClient::from_settings(&settings).unwrap();
    let options = SandboxOptions {
        cache_dir: Some(cache_dir()),
        stdio: Stdio::Capture,
        ..SandboxOptions::default()
    };
    let sandbox = Sandbox::new(client.clone(), options).await.unwrap();
    (client, sandbox)
}

async fn csv_summary_end_to_end(lang: Lang) {
    fapi_tests::capture_logs();
    let Some(wasm) = component(lang) else {
        return;
    };
    let wasm_arg = wasm.display().to_string();
    // The federation records every token it issues: each `fapi-host` process gets its own, and
    // each process's output is searched for all of them.
    let fed = fapi_tests::recording_federation(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    let key = fed.pki().client("consumer").unwrap().key_pem.clone();
    let name = lang.name();
    // Where the processes run, and the files they write there or in the compilation cache.
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path().to_owned();
    let written = [FileSnapshot::take(&cwd), FileSnapshot::take(&cache_dir())];

    // The binary, as a user runs it (with all of fapi-host's logging, -vvv, on its stderr):
    // twice, the second start from the compilation cache.
    let data_url = fed.data_url();
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    let (cfg, url, arg, wd) = (
        config.clone(),
        data_url.clone(),
        wasm_arg.clone(),
        cwd.clone(),
    );
    let runs = tokio::task::spawn_blocking(move || {
        (0..2)
            .map(|_| run_bin(&cfg, &wd, &["-vvv"], &[&arg, "--", &url]))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (i, (out, secs)) in runs.iter().enumerate() {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} run {i}: {}",
            text(&out.stderr)
        );
        check_summary(lang, "fapi-host run", &out.stdout);
        note!("{name}: `fapi-host run` #{} took {secs:.2} s", i + 1);
        seen.push((format!("stdout of run {i}"), out.stdout.to_vec()));
        seen.push((format!("stderr of run {i} (-vvv)"), out.stderr.to_vec()));
    }

    // A refused request is a Python exception / JS error in the guest: message and exit status 1.
    let other = format!(
        "https://localhost:{}/consumption.csv",
        fed.data_origin().rsplit(':').next().unwrap()
    );
    let (cfg, arg, wd) = (config.clone(), wasm_arg.clone(), cwd.clone());
    let (out, _) =
        tokio::task::spawn_blocking(move || run_bin(&cfg, &wd, &[], &[&arg, "--", &other]))
            .await
            .unwrap();
    seen.push(("stdout of the refused run".into(), out.stdout.to_vec()));
    seen.push(("stderr of the refused run".into(), out.stderr.to_vec()));
    assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("csv-summary: https://localhost:")
            && err.contains("--allow https://localhost:"),
        "{name}: {err}"
    );
    // An HTTP error status is one too. Ten of them, then the real file, in one run: the body of
    // a response whose status raised is released (else each would hold one of the host's 8
    // places in flight, and the last request would be refused with limit-exceeded).
    let mut args = vec![wasm_arg.clone(), "--".into()];
    args.extend((0..10).map(|i| format!("{}/no-such-file-{i}.csv", fed.data_origin())));
    args.push(data_url.clone());
    let (cfg, wd) = (config.clone(), cwd.clone());
    let (out, _) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_bin(&cfg, &wd, &[], &args)
    })
    .await
    .unwrap();
    seen.push(("stdout of the run with 404s".into(), out.stdout.to_vec()));
    seen.push(("stderr of the run with 404s".into(), out.stderr.to_vec()));
    assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.matches("HTTP status 404").count(), 10, "{name}: {err}");
    assert!(!err.contains("limit"), "{name}: {err}");
    check_summary(lang, "after ten 404s", &out.stdout);

    // The library, in this process.
    let (client, sandbox) = capturing_sandbox(&config).await;
    let started = Instant::now();
    let plugin = sandbox.load(&wasm).unwrap();
    let loaded = started.elapsed().as_secs_f64();
    let out = sandbox
        .run(&plugin, &[data_url], Stdio::Capture)
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, &out.stopped),
        (0, &None),
        "{name}: {}",
        text(&out.stderr)
    );
    check_summary(lang, "Sandbox", &out.stdout);
    note!(
        "{name}: Sandbox load (cached) {loaded:.2} s, run {:.3} s",
        started.elapsed().as_secs_f64() - loaded
    );
    seen.push(("stdout in the library".into(), out.stdout.to_vec()));
    seen.push(("stderr in the library".into(), out.stderr.to_vec()));

    // The edge-case CSV: the same output as the Rust example (`rust_csv_summary_edge_cases`).
    let out = sandbox
        .run(&plugin, &[edge_cases_url(&fed)], Stdio::Capture)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{name}: {}", text(&out.stderr));
    check_edge_cases(name, &out.stdout);
    seen.push(("stdout of the edge cases".into(), out.stdout.to_vec()));
    seen.push(("stderr of the edge cases".into(), out.stderr.to_vec()));

    // Every token issued (one per process that fetched, one for the library's client, which
    // must be among them) and the key: in nothing any of them printed, in no file the processes
    // wrote, in no log line of this process.
    let tokens = fed.issued_tokens();
    let library_token = client.danger_reveal_token().await.unwrap();
    assert!(
        tokens.contains(&library_token),
        "the library's token was recorded"
    );
    assert!(
        tokens.len() >= 4,
        "a token for each of three processes that fetched and the library: {}",
        tokens.len()
    );
    let needles = Needles::new(&tokens, &key);
    for (what, hay) in &seen {
        needles.assert_absent(&format!("{name}: {what}"), hay);
    }
    for snapshot in &written {
        needles.assert_absent_from_written(snapshot, &[]);
    }
    needles.assert_absent_from_logs();
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(fapi_has_componentize_py),
    ignore = "needs componentize-py: pip install -r guest/python/requirements.txt"
)]
async fn python_csv_summary_plugin() {
    csv_summary_end_to_end(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(fapi_has_componentize_js),
    ignore = "needs node and `npm ci --prefix guest/js`"
)]
async fn javascript_csv_summary_plugin() {
    csv_summary_end_to_end(Lang::JavaScript).await;
}

/// The Rust twin on the edge-case CSV, with no tool to install: the reference the others must match.
#[tokio::test(flavor = "multi_thread")]
async fn rust_csv_summary_edge_cases() {
    let fed = Federation::start(Pki::generate().unwrap(), FederationConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    let (_, sandbox) = capturing_sandbox(&config).await;
    let plugin = sandbox.load(Path::new(guests::CSV_SUMMARY)).unwrap();
    let out = sandbox
        .run(&plugin, &[edge_cases_url(&fed)], Stdio::Capture)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "rust: {}", text(&out.stderr));
    check_edge_cases("rust", &out.stdout);
    fed.shutdown().await;
}
