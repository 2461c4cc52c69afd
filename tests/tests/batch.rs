//! `fapi-host batch` end to end: the library engine and the binary against the local federation,
//! with faults injected, a token revocation, SIGKILL + resume, SIGTERM, shards and plugins.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fapi_federation::{Federation, data};
use fapi_host::batch::{Batch, BatchOptions, Input, Outcome, Record, Shard};
use fapi_host::sandbox::{Sandbox, SandboxOptions, Stdio};
use fapi_host::{FapiClient, Overrides, Settings};
use fapi_tests::guests;
use fapi_tests::sandbox_env::Needles;
use sha2::{Digest as _, Sha256};

struct Env {
    fed: Federation,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    async fn start() -> Env {
        // Every log line of the process, at every level, is searched for credentials.
        fapi_tests::capture_logs();
        let fed = fapi_tests::recording_federation(true).await;
        let dir = tempfile::tempdir().unwrap();
        let config = fed.write_client_config(dir.path(), "consumer").unwrap();
        Env { fed, dir, config }
    }

    /// A client as the CLI builds it: the batch does the retrying (so it sees every 429).
    fn client(&self) -> FapiClient {
        let mut s = Settings::load(Some(&self.config), &Overrides::default()).unwrap();
        s.client.retries = 0;
        FapiClient::from_settings(&s).unwrap().0
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.fed.data_origin())
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Assert that no token the federation issued (at least one) and no piece of the client's
    /// private key is in `outputs` (what a `fapi-host` process printed), in any file under `dirs`
    /// (the items, the manifest, temporary files), or in any log line of this process.
    fn assert_no_secrets(&self, outputs: &[&[u8]], dirs: &[&Path]) {
        let key = &self.fed.pki().client("consumer").unwrap().key_pem;
        let needles = Needles::new(&self.fed.issued_tokens(), key);
        for (i, out) in outputs.iter().enumerate() {
            needles.assert_absent(&format!("output #{i}"), out);
        }
        for dir in dirs {
            let files = files_under(dir);
            assert!(!files.is_empty(), "nothing written under {}", dir.display());
            needles.assert_absent_from_files(&files);
        }
        needles.assert_absent_from_logs();
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(files_under(&p));
        } else {
            files.push(p);
        }
    }
    files
}

fn expected_item(id: u64) -> Vec<u8> {
    serde_json::to_vec(&data::item(&id.to_string())).unwrap()
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn records(dir: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(dir.join("manifest.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad manifest line {l:?}: {e}")))
        .collect()
}

/// No temporary file under a final name, and no temporary file left at all.
fn assert_no_partials(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".partial-"),
            "a partial file remains: {name}"
        );
    }
}

/// Every done record's file holds the item's exact bytes.
fn assert_done_files_match(dir: &Path, recs: &[Record]) {
    for r in recs.iter().filter(|r| r.outcome == Outcome::Done) {
        let file = std::fs::read(dir.join(r.file.as_ref().unwrap())).unwrap();
        assert_eq!(r.bytes, file.len() as u64, "{r:?}");
        assert_eq!(r.sha256.as_deref(), Some(sha_hex(&file).as_str()), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_items_with_faults_and_a_revocation() {
    let env = Env::start().await;
    let n = 10_000u64;
    let mut text = String::from("# 10k items, some with faults\n");
    for i in 0..n {
        let fault = if (100..105).contains(&i) {
            "?fault=429&fault_times=1&retry_after=1"
        } else if i % 500 == 7 {
            "?fault=503&fault_times=1"
        } else if i % 500 == 13 {
            "?fault=reset&fault_times=1"
        } else if i % 1000 == 21 {
            "?fault=slow&delay_ms=200"
        } else {
            ""
        };
        let url = env.url(&format!("/items/{i}{fault}"));
        if i % 2 == 0 {
            text.push_str(&format!("{url}\n"));
        } else {
            text.push_str(&format!(
                "{{\"url\":\"{url}\",\"name\":\"item-{i}.json\"}}\n"
            ));
        }
    }
    // Two items that cannot succeed: a 404 and a 503 every time.
    text.push_str(&format!("{}\n", env.url("/items/x/y")));
    text.push_str(&format!("{}\n", env.url("/items/always?fault=503")));
    let input = Input::parse(&text);
    assert!(input.bad.is_empty(), "{:?}", input.bad);

    let client = env.client();
    let first_token = client.danger_reveal_token().await.unwrap();
    let out = env.out("ten-k");
    let mut options = BatchOptions::new(&out);
    options.concurrency = 64;
    let batch = Batch::new(client.clone(), options);
    let stats = batch.stats();
    let fed = &env.fed;
    let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let summary = {
        let run = batch.run(input);
        let revoke = async {
            while stats.done.load(Ordering::Relaxed) < n / 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            fed.revoke_all_tokens();
            revoked.store(true, Ordering::Relaxed);
            std::future::pending::<()>().await
        };
        tokio::select! { s = run => s.unwrap(), _ = revoke => unreachable!() }
    };
    let wall = t0.elapsed();
    eprintln!(
        "10k items: {summary}; {:.0} requests/s measured by the test",
        summary.requests as f64 / wall.as_secs_f64()
    );
    assert!(revoked.load(Ordering::Relaxed));
    assert_eq!(summary.done, n, "{summary}");
    assert_eq!(summary.failed, 2, "{summary}");
    assert!(summary.requests > n, "retries happened: {summary}");

    let recs = records(&out);
    assert_eq!(recs.len() as u64, n + 2);
    let by_index: HashMap<u64, &Record> = recs.iter().map(|r| (r.index, r)).collect();
    for i in 0..n {
        let r = by_index[&i];
        assert_eq!(r.outcome, Outcome::Done, "{r:?}");
        let body = expected_item(i);
        assert_eq!(r.bytes, body.len() as u64, "{r:?}");
        assert_eq!(r.sha256.as_deref(), Some(sha_hex(&body).as_str()), "{r:?}");
        let file = std::fs::read(out.join(r.file.as_ref().unwrap())).unwrap();
        assert_eq!(file, body, "item {i}");
        if i % 2 == 1 {
            assert_eq!(r.file.as_deref(), Some(format!("item-{i}.json").as_str()));
        }
        if (100..105).contains(&i) || i % 500 == 7 || i % 500 == 13 {
            assert!(r.attempts >= 2, "item {i} was retried: {r:?}");
        }
    }
    let not_found = by_index[&n];
    assert_eq!(not_found.outcome, Outcome::Failed);
    assert_eq!(not_found.status, Some(404));
    assert_eq!(not_found.error.as_ref().unwrap().kind, "http");
    let unavailable = by_index[&(n + 1)];
    assert_eq!(unavailable.status, Some(503));
    assert_eq!(unavailable.attempts, 4, "1 + 3 retries: {unavailable:?}");
    assert_no_partials(&out);

    // One token for the first lifetime, one after the revocation, whatever the concurrency.
    assert_eq!(env.fed.counters().token_requests, 2);
    assert_eq!(client.token_requests(), 2);

    // The two tokens, the revoked one too, and the key: in no item file, not in the manifest, in
    // no log line at any level.
    let second_token = client.danger_reveal_token().await.unwrap();
    assert_eq!(
        env.fed.issued_tokens(),
        [first_token.as_str(), second_token.as_str()],
        "the tokens searched for are the client's"
    );
    env.assert_no_secrets(&[], &[&out]);
}

fn batch_command(env: &Env, input: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(fapi_tests::fapi_host_bin());
    c.arg("--config")
        .arg(&env.config)
        .arg("batch")
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("FAPI_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

fn manifest_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("manifest.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

async fn wait_for_lines(out: &Path, n: usize, child: &mut std::process::Child) {
    let t0 = Instant::now();
    while manifest_lines(out) < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the batch ended too early"
        );
        assert!(t0.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_resume_does_every_item_exactly_once() {
    let env = Env::start().await;
    let n = 3000u64;
    let input = env.out("kill.txt");
    let text: String = (0..n)
        .map(|i| env.url(&format!("/items/{i}")) + "\n")
        .collect();
    std::fs::write(&input, text).unwrap();
    let out = env.out("kill-out");
    let mut child = batch_command(&env, &input, &out, &["--concurrency", "16"])
        .spawn()
        .unwrap();
    wait_for_lines(&out, 400, &mut child).await;
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let before = manifest_lines(&out);
    assert!(before < n as usize, "killed mid-run ({before} lines)");

    let resumed = batch_command(&env, &input, &out, &["--concurrency", "16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("skipped"), "{stderr}");
    let recs = records(&out);
    let mut done: BTreeMap<u64, u32> = BTreeMap::new();
    for r in &recs {
        if r.outcome == Outcome::Done {
            *done.entry(r.index).or_default() += 1;
        }
    }
    assert_eq!(done.len() as u64, n, "every item done");
    assert!(
        done.values().all(|&c| c == 1),
        "each item done exactly once"
    );
    assert_done_files_match(&out, &recs);
    for r in &recs {
        let i: u64 = r.url.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(
            std::fs::read(out.join(r.file.as_ref().unwrap())).unwrap(),
            expected_item(i)
        );
    }
    // Only hidden temporary files of the killed run may remain, never under a final name.
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".partial-") || name.starts_with('.'),
            "{name}"
        );
    }
    env.assert_no_secrets(&[&resumed.stderr], &[&out]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_130_with_a_flushed_manifest() {
    let env = Env::start().await;
    let input = env.out("term.txt");
    // Each item takes at least 1 s (its body is held back that long), 8 at a time.
    let text: String = (0..400)
        .map(|i| env.url(&format!("/items/{i}?fault=slow&delay_ms=1000")) + "\n")
        .collect();
    std::fs::write(&input, text).unwrap();
    let out = env.out("term-out");
    let mut child = batch_command(&env, &input, &out, &["--concurrency", "8"])
        .spawn()
        .unwrap();
    wait_for_lines(&out, 8, &mut child).await;
    let done_before = manifest_lines(&out);
    let t0 = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    eprintln!("SIGTERM to exit: {:?}", t0.elapsed());
    assert!(stderr.contains("interrupted"), "{stderr}");
    let recs = records(&out); // every line complete and parseable
    // Nothing started after the signal: the items done then, at most 8 that ended (each freeing
    // a place for another) between counting them and the signal, and the at most 8 in flight at
    // the signal. This counts events, not seconds: it holds on a loaded machine as long as
    // counting and signalling take less than an item's 1 s.
    assert!(
        recs.len() >= 8 && recs.len() <= done_before + 2 * 8,
        "{} records, {done_before} before the signal",
        recs.len()
    );
    assert!(
        recs.iter().all(|r| r.outcome == Outcome::Done),
        "in-flight items finished"
    );
    assert_done_files_match(&out, &recs);
    assert_no_partials(&out);
    env.assert_no_secrets(&[&output.stderr], &[&out]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_stop_the_batch_or_are_recorded_with_keep_going() {
    let env = Env::start().await;
    let input = env.out("bad.txt");
    let text = format!(
        "{}\n# comment\nnot a url\n{{\"url\":\"{}\",\"name\":\"../x\"}}\n",
        env.url("/items/1"),
        env.url("/items/2")
    );
    std::fs::write(&input, text).unwrap();
    let out = env.out("bad-out");
    let o = batch_command(&env, &input, &out, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 3:") && stderr.contains("line 4:"),
        "{stderr}"
    );
    assert!(!out.join("manifest.jsonl").exists(), "nothing started");

    let o = batch_command(&env, &input, &out, &["--keep-going"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let recs = records(&out);
    let kinds: Vec<(u64, Outcome, Option<String>)> = recs
        .iter()
        .map(|r| (r.line, r.outcome, r.error.as_ref().map(|e| e.kind.clone())))
        .collect();
    assert!(kinds.contains(&(1, Outcome::Done, None)), "{kinds:?}");
    assert!(
        kinds.contains(&(3, Outcome::Failed, Some("input".into()))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(4, Outcome::Failed, Some("input".into()))),
        "{kinds:?}"
    );

    // The bad lines recorded are part of the run's total (progress never passes 100 %); with
    // shards, only this shard's bad lines are recorded and counted.
    let mut options = BatchOptions::new(env.out("bad-out-api"));
    options.keep_going = true;
    let text = std::fs::read_to_string(&input).unwrap();
    let s = Batch::new(env.client(), options)
        .run(Input::parse(&text))
        .await
        .unwrap();
    assert_eq!((s.total, s.done, s.failed), (3, 1, 2), "{s:?}");
    let mut options = BatchOptions::new(env.out("bad-out-shard"));
    options.keep_going = true;
    options.shard = Some(Shard { k: 1, n: 2 });
    let s = Batch::new(env.client(), options)
        .run(Input::parse(&text))
        .await
        .unwrap();
    // Indexes 0 (good), 1 and 2 (bad): shard 1/2 holds index 1 only.
    assert_eq!((s.total, s.done, s.failed), (1, 0, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_the_input_exactly() {
    let env = Env::start().await;
    let text: String = (0..50)
        .map(|i| env.url(&format!("/items/{i}")) + "\n")
        .collect();
    let client = env.client();
    let mut merged = String::new();
    let mut seen = Vec::new();
    for k in 0..3 {
        let out = env.out(&format!("shard-{k}"));
        let mut o = BatchOptions::new(&out);
        o.shard = Some(Shard { k, n: 3 });
        let s = Batch::new(client.clone(), o)
            .run(Input::parse(&text))
            .await
            .unwrap();
        assert_eq!(s.failed, 0);
        for r in records(&out) {
            assert_eq!(r.index % 3, k);
            seen.push(r.index);
        }
        merged.push_str(&std::fs::read_to_string(out.join("manifest.jsonl")).unwrap());
    }
    seen.sort();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    assert_eq!(
        merged.lines().count(),
        50,
        "shard manifests merge by concatenation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_transform_items_and_a_trap_fails_only_its_item() {
    let env = Env::start().await;
    let client = env.client();
    let options = SandboxOptions {
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasmtime-cache")),
        stdio: Stdio::Capture,
        ..SandboxOptions::default()
    };
    let sandbox = Arc::new(Sandbox::new(client.clone(), options).await.unwrap());

    // csv-to-json: three CSV bodies become JSON arrays.
    let plugin = Arc::new(sandbox.load(Path::new(guests::CSV_TO_JSON)).unwrap());
    let text: String = (1..=3)
        .map(|rows| env.url(&format!("/consumption.csv?rows={rows}")) + "\n")
        .collect();
    let out = env.out("csv");
    let s = Batch::new(client.clone(), BatchOptions::new(&out))
        .with_plugin(sandbox.clone(), plugin)
        .unwrap()
        .run(Input::parse(&text))
        .await
        .unwrap();
    assert_eq!((s.done, s.failed), (3, 0), "{s}");
    let recs = records(&out);
    assert_done_files_match(&out, &recs);
    for r in &recs {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(r.file.as_ref().unwrap())).unwrap())
                .unwrap();
        let rows: usize = r.url.rsplit('=').next().unwrap().parse().unwrap();
        assert_eq!(v.as_array().unwrap().len(), rows, "{v}");
    }

    // test-processor: "trap" fails with its reason, the others pass their body through.
    let plugin = Arc::new(sandbox.load(Path::new(guests::TEST_PROCESSOR)).unwrap());
    let text: String = ["trap", "one", "two"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "{{\"url\":\"{}\",\"name\":\"{name}\"}}\n",
                env.url(&format!("/items/{i}"))
            )
        })
        .collect();
    let out = env.out("proc");
    let s = Batch::new(client.clone(), BatchOptions::new(&out))
        .with_plugin(sandbox.clone(), plugin)
        .unwrap()
        .run(Input::parse(&text))
        .await
        .unwrap();
    assert_eq!((s.done, s.failed), (2, 1), "{s}");
    for r in records(&out) {
        if r.index == 0 {
            assert_eq!(r.outcome, Outcome::Failed);
            let e = r.error.unwrap();
            assert_eq!(e.kind, "plugin_stopped", "{e:?}");
            assert!(!out.join("trap").exists());
        } else {
            assert_eq!(r.outcome, Outcome::Done);
            assert_eq!(
                std::fs::read(out.join(r.file.unwrap())).unwrap(),
                expected_item(r.index)
            );
        }
    }
    assert_no_partials(&out);
}

/// Bodies around and far above the size kept in memory (256 KiB) land whole, with their hash,
/// whether they are written by the writer in one piece or spilled to the temporary file in many,
/// with and without fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_size_land_whole_with_and_without_fsync() {
    let env = Env::start().await;
    let sizes = [0u64, 1, 262_143, 262_144, 262_145, 3_000_000];
    let text: String = sizes
        .iter()
        .map(|n| env.url(&format!("/sized?bytes={n}")) + "\n")
        .collect();
    let expected = |total: u64| -> Vec<u8> {
        (0..total.div_ceil(data::CHUNK as u64))
            .flat_map(|k| data::sized_chunk(k, total).to_vec())
            .collect()
    };
    for fsync in [false, true] {
        let out = env.out(&format!("sizes-fsync-{fsync}"));
        let mut o = BatchOptions::new(&out);
        o.fsync = fsync;
        o.concurrency = 3;
        let s = Batch::new(env.client(), o)
            .run(Input::parse(&text))
            .await
            .unwrap();
        assert_eq!((s.done, s.failed), (sizes.len() as u64, 0), "{s}");
        assert_eq!(s.bytes, sizes.iter().sum::<u64>(), "{s}");
        let recs = records(&out);
        assert_eq!(recs.len(), sizes.len());
        for r in &recs {
            let n = sizes[r.index as usize];
            let file = std::fs::read(out.join(r.file.as_ref().unwrap())).unwrap();
            assert!(
                file == expected(n),
                "item of {n} bytes (fsync {fsync}) differs"
            );
            assert_eq!(r.bytes, n);
        }
        assert_done_files_match(&out, &recs);
        assert_no_partials(&out);
    }
}

/// Cancelling a batch in the middle of large downloads leaves no temporary file behind, also
/// when a piece of a body is still being written on the blocking pool as the item is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_large_downloads_leave_no_temporary_files() {
    let env = Env::start().await;
    let text: String = (0..4)
        .map(|i| {
            env.url(&format!(
                "/sized?bytes=3000000&item={i}&fault=slow&delay_ms=1"
            )) + "\n"
        })
        .collect();
    let out = env.out("cancelled-large");
    let mut o = BatchOptions::new(&out);
    o.concurrency = 4;
    let batch = Batch::new(env.client(), o);
    let stop = batch.stop_handle();
    let run = tokio::spawn(async move { batch.run(Input::parse(&text)).await });
    // Wait until the bodies are being spilled to their temporary files.
    let t0 = Instant::now();
    let partials = |dir: &Path| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().contains(".partial-"))
            })
            .count()
        })
    };
    while partials(&out) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no body was spilled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.stop_starting();
    stop.cancel();
    let s = run.await.unwrap().unwrap();
    assert!(s.interrupted, "{s}");
    assert_eq!(s.done, 0, "{s}");
    // A piece still being written when its item was dropped ends within moments, and its
    // temporary file goes with it. (The deadline only catches a file that is never removed.)
    let t0 = Instant::now();
    while partials(&out) > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "temporary files remain 30 s after the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_no_partials(&out);
    let recs = records(&out);
    assert_eq!(recs.len(), 4);
    for r in &recs {
        assert_eq!(
            r.error.as_ref().map(|e| e.kind.as_str()),
            Some("interrupted"),
            "{r:?}"
        );
    }
}

/// A sandbox for batch processors over `client`, with the tests' shared compilation cache.
async fn processor_sandbox(client: &FapiClient, options: SandboxOptions) -> Arc<Sandbox> {
    let options = SandboxOptions {
        cache_dir: Some(fapi_tests::sandbox_env::cache_dir()),
        stdio: Stdio::Capture,
        ..options
    };
    Arc::new(Sandbox::new(client.clone(), options).await.unwrap())
}

/// One JSON input line: `url` (a path of the data provider) processed as `name`.
fn named(env: &Env, path: &str, name: &str) -> String {
    format!("{{\"url\":\"{}\",\"name\":\"{name}\"}}\n", env.url(path))
}

/// `fapi-host batch --plugin test-processor` over the JSON lines `text` (written to `STEM.jsonl`),
/// into `STEM-out`, with `flags` after the plugin's: the process's output and the directory.
fn processor_batch(
    env: &Env,
    stem: &str,
    text: &str,
    flags: &[&str],
) -> (std::process::Output, PathBuf) {
    let input = env.out(&format!("{stem}.jsonl"));
    std::fs::write(&input, text).unwrap();
    let out = env.out(&format!("{stem}-out"));
    let cache = fapi_tests::sandbox_env::cache_dir();
    let mut args = vec![
        "--plugin",
        guests::TEST_PROCESSOR,
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    let o = batch_command(env, &input, &out, &args).output().unwrap();
    (o, out)
}

/// A batch through the library with the test processor over the JSON lines `text`, into `dir`,
/// with the client's settings changed by `tweak` (retries 0 before it): its summary.
async fn processor_run(
    env: &Env,
    tweak: impl FnOnce(&mut Settings),
    dir: &str,
    text: &str,
) -> (fapi_host::batch::Summary, PathBuf) {
    let mut s = Settings::load(Some(&env.config), &Overrides::default()).unwrap();
    s.client.retries = 0;
    tweak(&mut s);
    let client = FapiClient::from_settings(&s).unwrap().0;
    let sandbox = processor_sandbox(&client, SandboxOptions::default()).await;
    let plugin = Arc::new(sandbox.load(Path::new(guests::TEST_PROCESSOR)).unwrap());
    let out = env.out(dir);
    let summary = Batch::new(client.clone(), BatchOptions::new(&out))
        .with_plugin(sandbox.clone(), plugin)
        .unwrap()
        .run(Input::parse(text))
        .await
        .unwrap();
    (summary, out)
}

/// The `[sandbox]` limit flags of `fapi-host batch` (`--max-wall-seconds`, `--max-memory-mib`)
/// bind the processors: they are applied before the client, which the sandbox takes its limits
/// from, is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_sandbox_limit_flags_bind_the_processor() {
    let env = Env::start().await;
    let text = [
        named(&env, "/items/0", "sleep-4000"),
        named(&env, "/items/1", "alloc-64"),
        named(&env, "/items/2", "plain"),
    ]
    .concat();
    let (o, out) = processor_batch(
        &env,
        "limits",
        &text,
        &["--max-wall-seconds", "1", "--max-memory-mib", "32"],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(9), "{stderr}");
    let recs = records(&out);
    assert_eq!(recs.len(), 3, "{recs:?}");
    for r in &recs {
        match r.index {
            0 | 1 => {
                assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
                let e = r.error.as_ref().unwrap();
                assert_eq!(e.kind, "plugin_stopped", "{e:?}");
                let why = if r.index == 0 {
                    "--max-wall-seconds"
                } else {
                    "--max-memory-mib"
                };
                assert!(e.message.contains(why), "{e:?}");
            }
            _ => assert_eq!(r.outcome, Outcome::Done, "{r:?}"),
        }
    }
    assert_done_files_match(&out, &recs);
    assert_no_partials(&out);
}

/// A body that breaks off (truncated, reset, stalled past the client's timeout) while a processor
/// reads it fails the item as a body cut short, whatever the processor makes of the error: one
/// that keeps reading gets the same error again (never an end that makes a truncated body look
/// whole), and the batch retries the item (GET) or records it failed with kind `body` (POST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_under_a_processor_is_retried_never_written_truncated() {
    let env = Env::start().await;
    let text = [
        // A processor that ignores read errors and keeps reading.
        named(&env, "/items/0?fault=truncate&fault_times=1", "lenient.0"),
        named(&env, "/items/1?fault=reset&fault_times=1", "lenient.1"),
        named(
            &env,
            "/items/2?fault=slow&delay_ms=1500&fault_times=1",
            "lenient.2",
        ),
        named(&env, "/items/3", "lenient.3"),
        // A processor that returns the read error.
        named(&env, "/items/4?fault=truncate&fault_times=1", "echo.4"),
        // Not idempotent: not retried, recorded as a body failure (not the plugin's).
        format!(
            "{{\"url\":\"{}\",\"method\":\"POST\",\"body\":\"hello\",\"name\":\"lenient.post\"}}\n",
            env.url("/upload?fault=truncate")
        ),
    ]
    .concat();
    let slow = |s: &mut Settings| s.client.timeout = Duration::from_secs(1);
    let (s, out) = processor_run(&env, slow, "broken-bodies", &text).await;
    assert_eq!((s.done, s.failed), (5, 1), "{s}");
    let recs = records(&out);
    for r in &recs {
        if r.index == 5 {
            assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
            assert_eq!(r.attempts, 1, "a POST is not replayed: {r:?}");
            let e = r.error.as_ref().unwrap();
            assert_eq!(e.kind, "body", "{e:?}");
            assert!(!out.join("lenient.post").exists());
            continue;
        }
        assert_eq!(r.outcome, Outcome::Done, "{r:?}");
        let file = std::fs::read(out.join(r.file.as_ref().unwrap())).unwrap();
        assert_eq!(file, expected_item(r.index), "item {}: {r:?}", r.index);
        if r.index == 3 {
            assert_eq!(r.attempts, 1, "{r:?}");
        } else {
            assert!(r.attempts >= 2, "item {} was retried: {r:?}", r.index);
        }
    }
    assert_done_files_match(&out, &recs);
    assert_no_partials(&out);
}

/// A body larger than a processor may read whole ends with `too-large` for good: reading on in
/// chunks after a failed `read-all` cannot return the rest of the body as if it were all of it, and
/// the item fails whatever the processor returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_for_a_processor_fails_its_item() {
    let env = Env::start().await;
    let text = [
        named(&env, "/sized?bytes=6000000", "fallback.large"),
        named(&env, "/items/1", "fallback.small"),
    ]
    .concat();
    // read-all is bounded by half the memory: 4 MiB.
    let small = |s: &mut Settings| s.sandbox.max_memory = 8 << 20;
    let (s, out) = processor_run(&env, small, "too-large-bodies", &text).await;
    assert_eq!((s.done, s.failed), (1, 1), "{s}");
    for r in records(&out) {
        if r.index == 0 {
            assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
            assert_eq!(r.attempts, 1, "not transient: {r:?}");
            let e = r.error.unwrap();
            assert_eq!(e.kind, "plugin", "{e:?}");
            assert!(
                e.message.contains("larger than the plugin may read"),
                "{e:?}"
            );
            assert!(!out.join("fallback.large").exists());
        } else {
            assert_eq!(r.outcome, Outcome::Done, "{r:?}");
            let file = std::fs::read(out.join(r.file.unwrap())).unwrap();
            assert_eq!(file, expected_item(1));
        }
    }
    assert_no_partials(&out);
}

/// A processor's output over `--max-output-mib` fails its item with a message naming the limit,
/// and nothing is written; an output at the limit is written, and so is an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_output_over_the_limit_fails_its_item() {
    let env = Env::start().await;
    let text = [
        named(&env, "/items/0", "output-1048576"),
        named(&env, "/items/1", "output-1048577"),
        named(&env, "/items/2", "output-0"),
    ]
    .concat();
    let (o, out) = processor_batch(&env, "output", &text, &["--max-output-mib", "1"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(9), "{stderr}");
    let recs = records(&out);
    assert_eq!(recs.len(), 3, "{recs:?}");
    for r in &recs {
        if r.index != 1 {
            assert_eq!(r.outcome, Outcome::Done, "{r:?}");
            assert_eq!(r.bytes, if r.index == 0 { 1 << 20 } else { 0 }, "{r:?}");
        } else {
            assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
            let e = r.error.as_ref().unwrap();
            assert_eq!(e.kind, "plugin", "{e:?}");
            assert!(
                e.message.contains("1048577 bytes") && e.message.contains("--max-output-mib"),
                "{e:?}"
            );
            assert!(!out.join("output-1048577").exists());
        }
    }
    assert_done_files_match(&out, &recs);
    assert_no_partials(&out);
}

/// The audit record of the body a processor is handed carries the item's method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_record_of_a_processed_item_has_its_method() {
    let env = Env::start().await;
    let client = env.client();
    let audit = env.out("audit.jsonl");
    let options = SandboxOptions {
        audit: Some(audit.clone()),
        ..SandboxOptions::default()
    };
    let sandbox = processor_sandbox(&client, options).await;
    let plugin = Arc::new(sandbox.load(Path::new(guests::TEST_PROCESSOR)).unwrap());
    let text = format!(
        "{}{{\"url\":\"{}\",\"method\":\"POST\",\"body\":\"hello\",\"name\":\"posted\"}}\n",
        named(&env, "/items/0", "got"),
        env.url("/upload")
    );
    let out = env.out("audit-out");
    let s = Batch::new(client, BatchOptions::new(&out))
        .with_plugin(sandbox.clone(), plugin)
        .unwrap()
        .run(Input::parse(&text))
        .await
        .unwrap();
    assert_eq!((s.done, s.failed), (2, 0), "{s}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let method_of = |path: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|v| v["url"].as_str().unwrap().ends_with(path))
            .map(|v| {
                assert_eq!(v["interface"], "batch", "{v}");
                v["method"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(method_of("/items/0"), ["GET"], "{lines:?}");
    assert_eq!(method_of("/upload"), ["POST"], "{lines:?}");
}

/// A processor's own requests are retried on 429/502/503/504 as `fapi-fetch` promises, although
/// the batch builds its client without retries (it retries items itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processors_own_requests_are_retried_in_a_batch() {
    let env = Env::start().await;
    let text = [
        named(&env, "/items/7?pfault=503&fault_times=1", "refetch.7"),
        named(&env, "/items/8?pfault=429&fault_times=2", "refetch.8"),
    ]
    .concat();
    let audit = env.out("refetch-audit.jsonl");
    let (o, out) = processor_batch(
        &env,
        "refetch",
        &text,
        &["--audit", audit.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let recs = records(&out);
    assert_eq!(recs.len(), 2, "{recs:?}");
    for r in &recs {
        assert_eq!(r.outcome, Outcome::Done, "{r:?}");
        let file = std::fs::read(out.join(r.file.as_ref().unwrap())).unwrap();
        assert_eq!(file, expected_item(7 + r.index), "{r:?}");
        // The batch's own fetch of the item saw no fault.
        assert_eq!(r.attempts, 1, "{r:?}");
    }
    // One audit record per guest request, with its final status.
    let guest_requests: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["interface"] == "fapi-fetch")
        .collect();
    assert_eq!(guest_requests.len(), 2, "{guest_requests:?}");
    assert!(
        guest_requests.iter().all(|v| v["status"] == 200),
        "{guest_requests:?}"
    );
}

/// Watches a FIFO for readers: each time something opens it for reading (a batch's resume check
/// would, to hash it) the watcher's open for writing returns, counts it and closes the FIFO
/// (so the reader reads an empty file and goes on). [`FifoWatch::finish`] opens it for reading
/// itself to release the watcher, and returns how many readers came before.
struct FifoWatch {
    path: PathBuf,
    releasing: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u32>,
}

impl FifoWatch {
    fn new(path: PathBuf) -> FifoWatch {
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
        FifoWatch::watch(path)
    }

    fn watch(path: PathBuf) -> FifoWatch {
        let releasing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (path, releasing) = (path.clone(), releasing.clone());
            std::thread::spawn(move || {
                let mut readers = 0;
                loop {
                    // Blocks until a reader opens the FIFO.
                    let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    drop(w);
                    if releasing.load(Ordering::SeqCst) {
                        return readers;
                    }
                    readers += 1;
                    // Let that reader see the end of the file before the next open.
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        FifoWatch {
            path,
            releasing,
            thread,
        }
    }

    fn finish(self) -> u32 {
        self.releasing.store(true, Ordering::SeqCst);
        drop(std::fs::File::open(&self.path).unwrap());
        self.thread.join().unwrap()
    }
}

/// Shards sharing one output directory (one manifest): a shard's start checks its own finished
/// items only and never opens another shard's file. Another shard's finished item is a FIFO
/// here: opening it is seen by the watcher (and a check of every record, as before the fix, is
/// shown to open it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_sharing_a_directory_never_open_each_others_files() {
    let env = Env::start().await;
    let text: String = (0..40)
        .map(|i| env.url(&format!("/items/{i}")) + "\n")
        .collect();
    let out = env.out("shared");
    let run = async |k: u64| {
        let mut o = BatchOptions::new(&out);
        o.shard = Some(Shard { k, n: 2 });
        Batch::new(env.client(), o).run(Input::parse(&text)).await
    };
    let s = run(1).await.unwrap();
    assert_eq!((s.done, s.failed), (20, 0));
    // A finished item of shard 1 whose file is the FIFO (an empty body: its size and hash match
    // what a reader of the FIFO gets).
    let fifo = FifoWatch::new(out.join("other-shards-item"));
    let fake = Record {
        outcome: Outcome::Done,
        line: 42,
        index: 41,
        url: env.url("/items/41"),
        status: Some(200),
        bytes: 0,
        sha256: Some(sha_hex(b"")),
        duration_ms: 1,
        attempts: 1,
        interaction_id: None,
        file: Some("other-shards-item".into()),
        error: None,
        grant: None,
    };
    fapi_host::batch::Manifest::open(&out)
        .unwrap()
        .append(&fake)
        .unwrap();
    // Shard 0 starts (nothing of its own done yet), then resumes (everything of its own done).
    let s = run(0).await.unwrap();
    assert_eq!((s.done, s.skipped, s.failed), (20, 0, 0));
    let s = run(0).await.unwrap();
    assert_eq!((s.done, s.skipped, s.failed), (0, 20, 0));
    assert_eq!(fifo.finish(), 0, "shard 0 opened a file of shard 1");
    // Shard 1's own resume checks its files, the FIFO among them; so did every shard's start
    // before the fix, checking every record: the watcher sees both.
    let fifo = FifoWatch::watch(out.join("other-shards-item"));
    let s = run(1).await.unwrap();
    assert_eq!((s.done, s.skipped), (0, 20));
    let recs = fapi_host::batch::read(&out).unwrap();
    let unfiltered = std::thread::spawn({
        let out = out.clone();
        move || fapi_host::batch::completed(&out, &recs, None, || false).len()
    });
    assert_eq!(unfiltered.join().unwrap(), 41);
    assert!(fifo.finish() >= 2, "the watcher sees every opening");
}

/// `fapi-host batch manifest`: two shards in their own directories, one killed mid-run and
/// resumed, an item fetched again (its file was deleted), a line cut by a crash: the view has
/// every item exactly once, with its last record, and each file it names is the item's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merged_manifest_view_has_every_item_once() {
    let env = Env::start().await;
    let n = 2000u64;
    let input = env.out("view.txt");
    let text: String = (0..n)
        .map(|i| env.url(&format!("/items/{i}")) + "\n")
        .collect();
    std::fs::write(&input, text).unwrap();
    let dirs = [env.out("view-0"), env.out("view-1")];
    let shard = |k: usize| format!("{k}/2");
    // Shard 0: SIGKILL mid-run, then resumed.
    let mut child = batch_command(&env, &input, &dirs[0], &["--shard", &shard(0)])
        .spawn()
        .unwrap();
    wait_for_lines(&dirs[0], 200, &mut child).await;
    child.kill().unwrap();
    child.wait().unwrap();
    // A crash cut a line in the middle (a line written partly, as by a full disk).
    let mut m = std::fs::OpenOptions::new()
        .append(true)
        .open(dirs[0].join("manifest.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut m, b"{\"outcome\":\"done\",\"line\":9").unwrap();
    drop(m);
    for (k, dir) in dirs.iter().enumerate() {
        let o = batch_command(&env, &input, dir, &["--shard", &shard(k)])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // An item whose file went missing is fetched again: its manifest holds it twice.
    let first = records(&dirs[1])
        .into_iter()
        .find(|r| r.index == 1)
        .unwrap();
    std::fs::remove_file(dirs[1].join(first.file.as_ref().unwrap())).unwrap();
    let o = batch_command(&env, &input, &dirs[1], &["--shard", &shard(1)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let raw = std::fs::read_to_string(dirs[1].join("manifest.jsonl")).unwrap();
    assert_eq!(raw.lines().filter(|l| l.contains("/items/1\"")).count(), 2);

    let view = std::process::Command::new(fapi_tests::fapi_host_bin())
        .args(["batch", "manifest"])
        .args(&dirs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&view.stderr);
    assert_eq!(view.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("{n} items ({n} done, 0 failed)"))
            && stderr.contains("1 records superseded")
            && stderr.contains("1 cut lines skipped"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(view.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, n);
    for (i, l) in lines.iter().enumerate() {
        let r: Record = serde_json::from_value(l.clone()).unwrap();
        assert_eq!(r.index, i as u64, "sorted, each item once");
        assert_eq!(r.outcome, Outcome::Done);
        let dir = Path::new(l["dir"].as_str().unwrap());
        assert_eq!(dir, dirs[i % 2]);
        let body = std::fs::read(dir.join(r.file.as_ref().unwrap())).unwrap();
        assert_eq!(body, expected_item(i as u64));
        assert_eq!(r.sha256.as_deref(), Some(sha_hex(&body).as_str()));
    }
    // The view of the re-fetched item is its last record.
    let last = records(&dirs[1])
        .into_iter()
        .rfind(|r| r.index == 1)
        .unwrap();
    assert_ne!(last, first);
    assert_eq!(
        serde_json::from_value::<Record>(lines[1].clone()).unwrap(),
        last
    );
    // Bad usage: no directory, or one that holds no manifest.
    let o = std::process::Command::new(fapi_tests::fapi_host_bin())
        .args(["batch", "manifest"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = std::process::Command::new(fapi_tests::fapi_host_bin())
        .args(["batch", "manifest"])
        .arg(env.out("nothing-here"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("give the --out directory"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    env.assert_no_secrets(&[&view.stdout, &view.stderr], &[&dirs[0], &dirs[1]]);
}
