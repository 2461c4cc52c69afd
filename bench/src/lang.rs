//! `fapi-bench lang`: what a plugin's language costs. The same two plugins written in Rust
//! (`guest/examples/csv-summary`, the probe's `repeat`), Python (`guest/python`, componentize-py) and
//! JavaScript (`guest/js`, componentize-js), measured in one run against the same local provider:
//!
//! - component size (csv-summary);
//! - `fapi-host run csv-summary URL` as a process: the first start with an empty compilation cache
//!   (wasmtime compiles the component) and the median start with a warm cache;
//! - in the `Sandbox` library: the cached load, the cost of one run that makes no request (instantiate
//!   and start the language runtime) and the cost of one more request through `fapi-fetch` (GET of a
//!   small JSON item, body read whole), with the native `FapiClient` as the baseline.
//!
//! The Python and JavaScript components are built first (into `target/lang-plugins/`, reused while their
//! sources, the WIT and the tool are unchanged); a language whose tool is missing is left out with a note.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fapi_host::sandbox::{Plugin, Sandbox, SandboxOptions, Stdio};

use crate::setup::Bench;
use crate::{median, time};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// One plugin language: its csv-summary component and its `repeat URL N` component (with the
/// arguments that come before `URL N`).
struct Lang {
    name: &'static str,
    csv_summary: PathBuf,
    repeat: PathBuf,
    repeat_prefix: Vec<String>,
}

/// The tool's version line(s), or why it cannot be used.
fn tool_version(python: bool) -> Result<String, String> {
    let version = |cmd: &str| -> Result<String, String> {
        let out = Command::new(cmd)
            .arg("--version")
            .output()
            .map_err(|e| format!("`{cmd} --version`: {e}"))?;
        if !out.status.success() {
            return Err(format!("`{cmd} --version` failed"));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if python {
        return version("componentize-py")
            .map_err(|e| format!("{e}: pip install -r guest/python/requirements.txt"));
    }
    let node = version("node")?;
    let pkg = root().join("guest/js/node_modules/@bytecodealliance/componentize-js/package.json");
    let pkg = std::fs::read_to_string(&pkg)
        .map_err(|e| format!("{}: {e}: npm ci --prefix guest/js", pkg.display()))?;
    Ok(format!("{node} {pkg}"))
}

/// Build `app` (a Python module name in guest/python/examples, or a JS file in guest/js/examples) unless
/// a build of the same inputs exists; returns the component.
fn build(python: bool, app: &str, tool: &str) -> Result<PathBuf, String> {
    let r = root();
    let mut inputs = vec![];
    let mut stack = vec![r.join("wit")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| e.to_string())?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                inputs.push(p);
            }
        }
    }
    if python {
        inputs.push(r.join("guest/python/fapi_guest.py"));
        inputs.push(r.join(format!("guest/python/examples/{app}.py")));
    } else {
        inputs.push(r.join("guest/js/fapi-guest.js"));
        inputs.push(r.join("guest/js/build.mjs"));
        inputs.push(r.join(format!("guest/js/examples/{app}.js")));
    }
    inputs.sort();
    let mut h = DefaultHasher::new();
    tool.hash(&mut h);
    for p in &inputs {
        p.hash(&mut h);
        std::fs::read(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .hash(&mut h);
    }
    let dir = target_dir().join("lang-plugins");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let lang = if python { "py" } else { "js" };
    let out = dir.join(format!("{app}-{lang}-{:016x}.wasm", h.finish()));
    if out.exists() {
        return Ok(out);
    }
    let part = out.with_extension("wasm.part");
    let mut cmd = if python {
        let mut c = Command::new("componentize-py");
        c.arg("-d")
            .arg(r.join("wit"))
            .args(["-w", "plugin", "componentize", "-p"])
            .arg(r.join("guest/python"))
            .arg("-p")
            .arg(r.join("guest/python/examples"))
            .arg(app)
            .arg("-o")
            .arg(&part);
        c
    } else {
        let mut c = Command::new("node");
        c.arg(r.join("guest/js/build.mjs"))
            .arg(r.join(format!("guest/js/examples/{app}.js")))
            .arg(&part);
        c
    };
    let t0 = Instant::now();
    let o = cmd.current_dir(&dir).output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    std::fs::rename(&part, &out).map_err(|e| e.to_string())?;
    println!(
        "built {} in {:.1} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn other_lang(python: bool) -> Result<Lang, String> {
    let tool = tool_version(python)?;
    let (csv, repeat) = if python {
        ("csv_summary", "repeat")
    } else {
        ("csv-summary", "repeat")
    };
    Ok(Lang {
        name: if python { "Python" } else { "JavaScript" },
        csv_summary: build(python, csv, &tool)?,
        repeat: build(python, repeat, &tool)?,
        repeat_prefix: vec![],
    })
}

/// Time `fapi-host run` of `wasm` with `cache` as its compilation cache.
fn time_cli(config: &Path, cache: &Path, wasm: &Path, url: &str) -> Duration {
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join("fapi-host");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p fapi-host",
        bin.display()
    );
    let t0 = Instant::now();
    let out = Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("run")
        .arg("--cache-dir")
        .arg(cache)
        .arg(wasm)
        .arg("--")
        .arg(url)
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(
        out.status.success() && out.stdout.starts_with(b"interaction id:"),
        "{}: {}",
        wasm.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

async fn run_repeat(sb: &Sandbox, lang: &Lang, plugin: &Plugin, url: &str, n: usize) {
    let mut args = lang.repeat_prefix.clone();
    args.extend([url.to_owned(), n.to_string()]);
    let out = sb.run(plugin, &args, Stdio::Capture).await.unwrap();
    assert_eq!(
        out.exit_code,
        0,
        "{} repeat: {}",
        lang.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

pub async fn run(requests: usize, rounds: usize, cached_runs: usize) {
    let mut langs = vec![Lang {
        name: "Rust",
        csv_summary: crate::sandbox::guest("csv-summary.wasm"),
        repeat: crate::sandbox::guest("probe.wasm"),
        repeat_prefix: vec!["repeat".into()],
    }];
    for python in [true, false] {
        match other_lang(python) {
            Ok(l) => langs.push(l),
            Err(e) => println!(
                "{}: left out: {e}",
                if python { "Python" } else { "JavaScript" }
            ),
        }
    }

    let b = Bench::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = b.fed.write_client_config(dir.path(), "consumer").unwrap();
    let data_url = b.fed.data_url();
    let item_url = format!("{}/items/42", b.fed.data_origin());
    let shared_cache = dir.path().join("cache");

    // Native baseline, per request.
    let native = b.client();
    let native_round = || async {
        for _ in 0..requests {
            let r = native.get(item_url.clone()).send().await.unwrap();
            r.bytes().await.unwrap();
        }
    };
    native_round().await;
    let mut nat = Vec::new();
    for _ in 0..rounds {
        nat.push(time(native_round()).await / requests as u32);
    }
    let native_per = median(nat);

    let options = SandboxOptions {
        cache_dir: Some(shared_cache),
        stdio: Stdio::Capture,
        ..SandboxOptions::default()
    };
    let sb = Sandbox::new(b.client(), options).await.unwrap();
    println!();
    println!(
        "| language | csv-summary.wasm | `fapi-host run`, first (compile) | `fapi-host run`, cached | cached load (library) | run without requests | per request via fapi-fetch | vs Rust | vs native `FapiClient` ({}) |",
        us(native_per)
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut rust_per = None;
    for lang in &langs {
        let size = std::fs::metadata(&lang.csv_summary).unwrap().len();
        // A process with an empty cache: the compile; then warm starts.
        let cold_cache = tempfile::tempdir().unwrap();
        let (cfg, wasm, url, cache) = (
            config.clone(),
            lang.csv_summary.clone(),
            data_url.clone(),
            cold_cache.path().to_owned(),
        );
        let (cold, warm) = tokio::task::spawn_blocking(move || {
            let cold = time_cli(&cfg, &cache, &wasm, &url);
            let warm: Vec<Duration> = (0..cached_runs)
                .map(|_| time_cli(&cfg, &cache, &wasm, &url))
                .collect();
            (cold, median(warm))
        })
        .await
        .unwrap();

        // In process: load (compiling once into the shared cache, then a timed cached load).
        sb.load(&lang.repeat).unwrap();
        let t0 = Instant::now();
        let plugin = sb.load(&lang.repeat).unwrap();
        let load = t0.elapsed();
        run_repeat(&sb, lang, &plugin, &item_url, requests).await;
        let (mut zero, mut full) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            zero.push(time(run_repeat(&sb, lang, &plugin, &item_url, 0)).await);
            full.push(time(run_repeat(&sb, lang, &plugin, &item_url, requests)).await);
        }
        let zero = median(zero);
        let per = median(full).saturating_sub(zero) / requests as u32;
        let rust = *rust_per.get_or_insert(per);
        println!(
            "| {} | {:.1} MiB | {} | {} | {} | {} | {} | {:.2}x | {:.2}x |",
            lang.name,
            size as f64 / (1024.0 * 1024.0),
            ms(cold),
            ms(warm),
            ms(load),
            ms(zero),
            us(per),
            per.as_secs_f64() / rust.as_secs_f64(),
            per.as_secs_f64() / native_per.as_secs_f64(),
        );
    }
    println!();
    println!(
        "first = one `fapi-host run` process with an empty compilation cache; cached = median of {cached_runs} \
         more with it warm (each run: token, one GET of the {}-row CSV, summary). Library figures: \
         medians of {rounds} rounds; per request = (run with {requests} GETs of /items/42 - run without) / {requests}.",
        fapi_federation::data::DEFAULT_ROWS
    );
}
