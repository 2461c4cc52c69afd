//! `fapi-host run` and `fapi-host demo` as a user runs them: the real binary, real components.
//! Everything a `run` process printed and every file it wrote is searched for every token the
//! federation issued (each process gets its own) and for the client's private key.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fapi_federation::{Federation, data};
use fapi_tests::guests;
use fapi_tests::sandbox_env::{FileSnapshot, Needles};

struct Setup {
    fed: Federation,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The files under the processes' working directory and cache before any ran.
    before: [FileSnapshot; 2],
    /// What each process printed.
    outputs: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
}

async fn setup() -> Setup {
    let fed = fapi_tests::recording_federation(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    let before = [
        FileSnapshot::take(dir.path()),
        FileSnapshot::take(&Path::new(&cache()).join("fapi-host")),
    ];
    Setup {
        fed,
        dir,
        config,
        before,
        outputs: std::sync::Mutex::default(),
    }
}

impl Setup {
    /// Assert that no token the federation issued and no piece of the client's key is in what any
    /// process printed or in any file written in its working directory or cache since `setup`
    /// (but `test_files`, which the test wrote there). With `tokens` false, the processes never
    /// asked for a token (asserted), and only the key, which each of them loaded, is searched for.
    fn assert_no_secrets(&self, tokens: bool, test_files: &[&Path]) {
        let key = &self.fed.pki().client("consumer").unwrap().key_pem;
        let needles = if tokens {
            Needles::new(&self.fed.issued_tokens(), key)
        } else {
            assert_eq!(
                self.fed.counters().token_requests,
                0,
                "a token was requested"
            );
            Needles::key_only(key)
        };
        let outputs = self.outputs.lock().unwrap();
        assert!(!outputs.is_empty());
        for (what, hay) in outputs.iter() {
            needles.assert_absent(what, hay);
        }
        for snapshot in &self.before {
            needles.assert_absent_from_written(snapshot, test_files);
        }
    }
}

fn cache() -> String {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("wasmtime-cache")
        .display()
        .to_string()
}

async fn run(s: &Setup, args: Vec<String>) -> Output {
    let cfg = s.config.display().to_string();
    let dir = s.dir.path().to_owned();
    let what = format!("fapi-host {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(fapi_tests::fapi_host_bin())
            .arg("--config")
            .arg(cfg)
            .args(args)
            .current_dir(dir)
            .env("XDG_CACHE_HOME", cache())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let mut outputs = s.outputs.lock().unwrap();
    outputs.push((format!("the stdout of {what}"), out.stdout.clone()));
    outputs.push((format!("the stderr of {what}"), out.stderr.clone()));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn run_passes_args_output_and_exit_code_through() {
    let s = setup().await;
    // With all of fapi-host's logging (-vvv) on stderr, searched for secrets below.
    let out = run(
        &s,
        vec![
            "-vvv".into(),
            "run".into(),
            guests::FETCH.into(),
            "--".into(),
            s.fed.data_url(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, data::csv(data::DEFAULT_ROWS).as_bytes());
    assert!(
        text(&out.stderr).contains("access token acquired"),
        "-vvv logs: {}",
        text(&out.stderr)
    );

    let out = run(
        &s,
        vec![
            "run".into(),
            guests::PROBE.into(),
            "--".into(),
            "exit".into(),
            "42".into(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(
        s.fed.issued_tokens().len(),
        1,
        "the fetch's process got one"
    );
    s.assert_no_secrets(true, &[]);
}

#[tokio::test]
async fn allow_flag_and_audit_file() {
    let s = setup().await;
    let audit = s.dir.path().join("audit.jsonl");
    // Without the allow entry of the configuration (use another client's config without [sandbox]):
    // the denial names the URL and the flag.
    let other = format!(
        "https://localhost:{}/consumption.csv",
        s.fed.data_origin().rsplit(':').next().unwrap()
    );
    let out = run(
        &s,
        vec![
            "run".into(),
            "--audit".into(),
            audit.display().to_string(),
            guests::FETCH.into(),
            "--".into(),
            other.clone(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("--allow https://localhost:"), "{err}");
    let out = run(
        &s,
        vec![
            "run".into(),
            "--allow".into(),
            format!(
                "https://localhost:{}/",
                s.fed.data_origin().rsplit(':').next().unwrap()
            ),
            "--audit".into(),
            audit.display().to_string(),
            guests::FETCH.into(),
            "--".into(),
            other,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[1]["decision"], "allow");
    assert_eq!(lines[1]["status"], 200);
    assert_eq!(lines[1]["bytes"], data::csv(data::DEFAULT_ROWS).len());
    assert!(lines[1]["interaction_id"].as_str().unwrap().len() == 36);
    s.assert_no_secrets(true, &[]);
}

#[tokio::test]
async fn stopped_guests_and_bad_components_have_their_own_exit_codes() {
    let s = setup().await;
    let out = run(
        &s,
        vec![
            "run".into(),
            "--max-cpu-seconds".into(),
            "1".into(),
            guests::PROBE.into(),
            "--".into(),
            "loop".into(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("CPU time"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &s,
        vec![
            "run".into(),
            "--max-memory-mib".into(),
            "16".into(),
            guests::PROBE.into(),
            "--".into(),
            "alloc".into(),
            "64".into(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("16 MiB"),
        "{}",
        text(&out.stderr)
    );

    let junk = s.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let out = run(&s, vec!["run".into(), junk.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(8));
    assert!(
        text(&out.stderr).contains("wasm32-wasip2"),
        "{}",
        text(&out.stderr)
    );
    // A batch processor is not a command.
    let out = run(&s, vec!["run".into(), guests::CSV_TO_JSON.into()]).await;
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("batch"), "{}", text(&out.stderr));
    // None of these guests asks for data, so no token exists: the key is what could leak.
    s.assert_no_secrets(false, &[&junk]);
}

#[tokio::test]
async fn demo_runs_on_a_fresh_machine() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(fapi_tests::fapi_host_bin())
            .arg("demo")
            .env("XDG_CACHE_HOME", cache())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let o = text(&out.stdout);
    for expected in [
        "postcodes:          500",
        "top 5 postcodes",
        "never reachable from a guest",
        "1 token(s)",
        "1 refused",
    ] {
        assert!(o.contains(expected), "{expected:?} in {o}");
    }
}

/// `run --allow` and `batch --plugin ... --allow` with an entry that names the authorization server
/// under another name or address (`localhost`, `[::1]`, `0.0.0.0` for the issuer at 127.0.0.1)
/// refuse to start: exit 3, with a message naming the entry and the server. Nothing runs.
#[tokio::test]
async fn an_allow_entry_reaching_the_authorization_server_stops_run_and_batch_at_start() {
    let s = setup().await;
    let port = url::Url::parse(&s.fed.issuer_url())
        .unwrap()
        .port()
        .unwrap();
    let input = s.dir.path().join("items.txt");
    std::fs::write(&input, format!("{}\n", s.fed.data_url())).unwrap();
    for host in ["localhost", "[::1]", "0.0.0.0"] {
        let entry = format!("https://{host}:{port}/");
        let run_args = vec![
            "run".into(),
            "--allow".into(),
            entry.clone(),
            guests::PROBE.into(),
            "--".into(),
            "exit".into(),
            "0".into(),
        ];
        let batch_args = vec![
            "batch".into(),
            "--input".into(),
            input.display().to_string(),
            "--out".into(),
            s.dir.path().join("out").display().to_string(),
            "--plugin".into(),
            guests::TEST_PROCESSOR.into(),
            "--allow".into(),
            entry.clone(),
        ];
        for args in [run_args, batch_args] {
            let out = run(&s, args).await;
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{entry}: {stderr}");
            assert!(
                stderr.contains(&entry) && stderr.contains("reaches the authorization server"),
                "{entry}: {stderr}"
            );
            assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
    assert!(!s.dir.path().join("out").join("manifest.jsonl").exists());
    s.assert_no_secrets(false, &[&input]);
}
