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
    setup_from(fapi_tests::recording_federation(false).await)
}

fn setup_from(fed: Federation) -> Setup {
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
    /// Stop `proxy` (SIGTERM), keep what it printed with the other outputs, and search them all,
    /// and every file written but `test_files`, for every issued token and the key.
    fn stop_proxy_and_search(&self, proxy: ProxyProcess, test_files: &[&Path]) {
        let printed = proxy.stop();
        self.outputs
            .lock()
            .unwrap()
            .push(("the proxy's output".into(), printed));
        self.assert_no_secrets(true, test_files);
    }

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

/// The body a curl run with `-w "\n%{http_code}"` printed, once it ended with a 200.
fn ok_body(curl: std::process::Child) -> String {
    let out = curl.wait_with_output().unwrap();
    let text = text(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "200", "{}", String::from_utf8_lossy(&out.stderr));
    body.to_owned()
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

/// A `fapi-host proxy` process of the test's, killed by PID when dropped, with its output.
struct ProxyProcess {
    child: std::process::Child,
    origin: String,
    key: String,
}

impl ProxyProcess {
    /// `fapi-host proxy --listen 127.0.0.1:0 --route ...` with `s`'s configuration; waits for the
    /// address it prints.
    fn start(s: &Setup, routes: &[String]) -> ProxyProcess {
        ProxyProcess::start_on(s, "127.0.0.1:0", routes)
    }

    /// The same, listening on `listen` (`unix:PATH`: no key, `key` left empty).
    fn start_on(s: &Setup, listen: &str, routes: &[String]) -> ProxyProcess {
        ProxyProcess::start_with(s, listen, routes, &[])
    }

    /// The same, with more flags.
    fn start_with(s: &Setup, listen: &str, routes: &[String], flags: &[&str]) -> ProxyProcess {
        use std::io::BufRead as _;
        let key_file = s.dir.path().join("proxy.key");
        let mut cmd = Command::new(fapi_tests::fapi_host_bin());
        cmd.arg("--config")
            .arg(&s.config)
            .args(["proxy", "--listen", listen, "--local-key-file"])
            .arg(&key_file)
            .args(flags)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for r in routes {
            cmd.args(["--route", r]);
        }
        let mut child = cmd.spawn().unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        let origin = first
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("unix:"))
            .unwrap_or_else(|| {
                use std::io::Read as _;
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("no address in {first:?}: {err}")
            })
            .to_owned();
        use std::os::unix::fs::PermissionsExt as _;
        let key = if origin.starts_with("unix:") {
            String::new()
        } else {
            let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the local key file's mode");
            std::fs::read_to_string(&key_file).unwrap()
        };
        ProxyProcess { child, origin, key }
    }

    /// curl ARGS against the proxy: (status, body).
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--path-as-is", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let text = text(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), body.to_owned())
    }

    fn bearer(&self) -> String {
        format!("Authorization: Bearer {}", self.key)
    }

    /// Stop it (SIGTERM, then wait) and return what it printed.
    fn stop(mut self) -> Vec<u8> {
        use std::io::Read as _;
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let mut out = Vec::new();
        let _ = self.child.stdout.take().unwrap().read_to_end(&mut out);
        let _ = self.child.stderr.take().unwrap().read_to_end(&mut out);
        out
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `request` as written (with `Connection: close`, so that the server closes after its
/// answer) on a fresh connection to `addr` and return the whole answer (up to the server's close
/// or 10 s of silence); a write the server cut short (it answers and closes before reading a huge
/// head) is not an error.
fn raw_exchange(addr: &str, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = sock.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    text(&answer)
}

/// curl and Python's `requests` read protected data through `fapi-host proxy` with nothing but
/// its local key: the proxy adds mTLS, the token and the interaction id; one token serves every
/// request; no token is in anything the callers or the proxy printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(fapi_has_curl_and_python_requests),
    ignore = "needs curl and python3 with requests"
)]
async fn curl_and_python_requests_read_protected_data_through_the_proxy() {
    let s = setup().await;
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start(&s, &[format!("/energy/={}/", s.fed.data_origin())])
    });
    let url = format!("{}/energy/consumption.csv", proxy.origin);
    let expected = data::csv(data::DEFAULT_ROWS);
    let (status, body) = tokio::task::block_in_place(|| proxy.curl(&["-H", &proxy.bearer(), &url]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, expected);
    let (status, head) = tokio::task::block_in_place(|| {
        proxy.curl(&["-D", "-", "-o", "/dev/null", "-H", &proxy.bearer(), &url])
    });
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("x-fapi-interaction-id:"),
        "{head}"
    );
    let script = "import sys, requests\n\
                  r = requests.get(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]})\n\
                  r.raise_for_status()\n\
                  sys.stdout.write(r.text)\n";
    let py = Command::new("python3")
        .args(["-c", script, &url, &proxy.key])
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", text(&py.stderr));
    assert_eq!(text(&py.stdout), expected);
    assert_eq!(
        s.fed.counters().token_requests,
        1,
        "one token for every caller"
    );
    s.outputs
        .lock()
        .unwrap()
        .push(("python's output".into(), py.stdout));
    s.stop_proxy_and_search(proxy, &[&s.dir.path().join("proxy.key")]);
}

/// The README's proxy examples, word for word: its `proxy` command's route and key file, then
/// curl, Python `requests`, pandas and DuckDB (its httpfs extension from PyPI's
/// `duckdb-extension-httpfs`, put where DuckDB looks for it, as no network is needed) read the
/// provider's CSV through the proxy with nothing but the local key, and print what the provider
/// serves: the CSV itself, or its meter count and total consumption computed here from the same
/// rows. Only the address changes: 127.0.0.1:8080 becomes the proxy's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(fapi_has_python_dataframes),
    ignore = "needs curl and python3 with requests, pandas, duckdb and duckdb-extension-httpfs"
)]
async fn the_readmes_proxy_examples_run_as_written() {
    let s = setup().await;
    let sh = fapi_tests::readme_blocks("sh");
    let start = sh
        .iter()
        .find(|b| b.contains(" proxy --listen 127.0.0.1:8080"))
        .expect("README.md shows how to start the proxy");
    let words: Vec<&str> = start.split_whitespace().collect();
    let route = words[words.iter().position(|w| *w == "--route").unwrap() + 1];
    let (prefix, upstream) = route.split_once('=').unwrap();
    assert_eq!(upstream, "https://data.provider.example/api/", "{start}");
    assert!(
        start.contains("--local-key-file ~/.fapi-proxy.key"),
        "{start}"
    );
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start(&s, &[format!("{prefix}={}/", s.fed.data_origin())])
    });
    // The caller's home, with the key file where the README's proxy command writes it.
    let home = s.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(s.dir.path().join("proxy.key"), home.join(".fapi-proxy.key")).unwrap();
    let duckdb_setup = "import duckdb, duckdb_extension_httpfs, glob, os, shutil\n\
        src, = glob.glob(os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), \
        'extensions', '*', 'httpfs.duckdb_extension'))\n\
        dst = os.path.expanduser(os.path.join('~', '.duckdb', 'extensions', 'v' + duckdb.__version__, \
        duckdb.sql('PRAGMA platform').fetchone()[0]))\n\
        os.makedirs(dst)\nshutil.copy(src, dst)\n";
    let out = Command::new("python3")
        .args(["-c", duckdb_setup])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let csv = data::csv(data::DEFAULT_ROWS);
    let (mut meters, mut tenths) = (0u64, 0u64);
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        meters += fields[1].parse::<u64>().unwrap();
        let (whole, tenth) = fields[2].split_once('.').unwrap();
        tenths += whole.parse::<u64>().unwrap() * 10 + tenth.parse::<u64>().unwrap();
    }
    let summary = format!("{meters} meters, {}.{} kWh\n", tenths / 10, tenths % 10);
    let address = proxy.origin.trim_start_matches("http://");
    let curl = sh
        .iter()
        .find(|b| b.starts_with("curl ") && b.contains("127.0.0.1:8080/energy/"))
        .expect("README.md shows curl through the proxy");
    let mut examples = vec![("curl", "bash", curl.clone(), csv.clone())];
    for block in fapi_tests::readme_blocks("python") {
        let Some(name) = ["requests", "pandas", "DuckDB"].into_iter().find(|n| {
            block.contains("127.0.0.1:8080") && block.lines().next().unwrap().contains(n)
        }) else {
            continue;
        };
        let expected = if name == "requests" {
            csv.clone()
        } else {
            summary.clone()
        };
        examples.push((name, "python3", block, expected));
    }
    let names: Vec<&str> = examples.iter().map(|e| e.0).collect();
    assert_eq!(
        names,
        ["curl", "requests", "pandas", "DuckDB"],
        "README.md's proxy examples"
    );
    for (name, interpreter, code, expected) in examples {
        let out = Command::new(interpreter)
            .args(["-c", &code.replace("127.0.0.1:8080", address)])
            .env("HOME", &home)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected, "{name}");
        s.outputs.lock().unwrap().push((
            format!("{name}'s output"),
            [out.stdout, out.stderr].concat(),
        ));
    }
    assert_eq!(
        s.fed.counters().token_requests,
        1,
        "one token for every program"
    );
    s.stop_proxy_and_search(
        proxy,
        &[
            &s.dir.path().join("proxy.key"),
            &home.join(".fapi-proxy.key"),
        ],
    );
}

/// What a stranger tries against the proxy is refused, with nothing sent upstream (the data
/// provider's counter): no key or a wrong one, credential headers of its own, paths that leave a
/// route's upstream (`..`, encoded dots and slashes, `..;`), an absolute-form target, CONNECT and
/// TRACE, a path outside every route. A route to the authorization server, under any name, and a
/// non-loopback address stop the proxy at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn the_proxy_refuses_what_a_stranger_tries_and_sends_nothing_upstream() {
    let s = setup().await;
    let audit = s.dir.path().join("proxy-audit.jsonl");
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start_with(
            &s,
            "127.0.0.1:0",
            &[format!("/items/={}/items/", s.fed.data_origin())],
            &["--audit", audit.to_str().unwrap()],
        )
    });
    let o = &proxy.origin;
    let bearer = proxy.bearer();
    let wrong = format!("Authorization: Bearer {}", "0".repeat(64));
    // One allowed request, so that the token and its introspection are behind us.
    let (status, body) =
        tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &format!("{o}/items/1")]));
    assert_eq!(status, 200, "{body}");
    let before = s.fed.counters();
    let cases: Vec<(Vec<String>, u16, &str)> = vec![
        (vec![format!("{o}/items/1")], 401, "unauthorized"),
        (
            vec!["-H".into(), wrong.clone(), format!("{o}/items/1")],
            401,
            "unauthorized",
        ),
        (
            vec![
                "-H".into(),
                "Authorization: Bearer".into(),
                format!("{o}/items/1"),
            ],
            401,
            "unauthorized",
        ),
        (
            vec![
                "-H".into(),
                bearer.clone(),
                "-H".into(),
                "Cookie: s=1".into(),
                format!("{o}/items/1"),
            ],
            400,
            "header_refused",
        ),
        (
            vec![
                "-H".into(),
                bearer.clone(),
                "-H".into(),
                "x-fapi-interaction-id: 1".into(),
                format!("{o}/items/1"),
            ],
            400,
            "header_refused",
        ),
        (
            vec![
                "-H".into(),
                bearer.clone(),
                "-H".into(),
                "DPoP: e30".into(),
                format!("{o}/items/1"),
            ],
            400,
            "header_refused",
        ),
        (
            vec![
                "-H".into(),
                bearer.clone(),
                "-H".into(),
                "Proxy-Authorization: Basic eA==".into(),
                format!("{o}/items/1"),
            ],
            400,
            "header_refused",
        ),
        (
            vec![
                "-H".into(),
                bearer.clone(),
                format!("{o}/items/../consumption.csv"),
            ],
            403,
            "denied",
        ),
        (
            vec![
                "-H".into(),
                bearer.clone(),
                format!("{o}/items/%2e%2e/consumption.csv"),
            ],
            403,
            "denied",
        ),
        (
            vec![
                "-H".into(),
                bearer.clone(),
                format!("{o}/items/a%2F..%2F..%2Fecho"),
            ],
            403,
            "denied",
        ),
        (
            vec!["-H".into(), bearer.clone(), format!("{o}/items/..;/echo")],
            403,
            "denied",
        ),
        (
            vec!["-H".into(), bearer.clone(), format!("{o}/items/..%3b/echo")],
            403,
            "denied",
        ),
        (
            vec![
                "-H".into(),
                bearer.clone(),
                "-X".into(),
                "TRACE".into(),
                format!("{o}/items/1"),
            ],
            405,
            "method_not_allowed",
        ),
        (
            vec!["-H".into(), bearer.clone(), format!("{o}/consumption.csv")],
            404,
            "no_route",
        ),
    ];
    for (args, status, error) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, body) = tokio::task::block_in_place(|| proxy.curl(&args));
        assert_eq!(got, *status, "{args:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], *error, "{args:?}: {body}");
    }
    // Request targets curl does not send: absolute-form and CONNECT, written by hand.
    let addr = o.trim_start_matches("http://").to_owned();
    for (request, status) in [
        (
            format!(
                "GET {}/consumption.csv HTTP/1.1\r\nHost: x\r\n{bearer}\r\n\r\n",
                s.fed.data_origin()
            ),
            "400",
        ),
        (
            format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n{bearer}\r\n\r\n"),
            "405",
        ),
    ] {
        use std::io::{Read as _, Write as _};
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        sock.write_all(request.as_bytes()).unwrap();
        let mut answer = [0u8; 64];
        let n = sock.read(&mut answer).unwrap();
        let answer = text(&answer[..n]);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?}: {answer}"
        );
    }
    // Sizes nobody plans for: a 1 MiB method or path is cut off by the head's size limit (an
    // error status, or a reset that the kernel may deliver before it), a 32 KiB method, a 70 KB
    // header name or 200 headers get a short refusal that quotes a bounded piece.
    let huge = "A".repeat(1 << 20);
    let long = "A".repeat(32 << 10);
    let close = "Connection: close\r\n";
    for (request, allowed) in [
        (
            format!("{huge} /items/1 HTTP/1.1\r\nHost: x\r\n{close}{bearer}\r\n\r\n"),
            &["431", "400", ""][..],
        ),
        (
            format!("GET /items/{huge} HTTP/1.1\r\nHost: x\r\n{close}{bearer}\r\n\r\n"),
            &["431", "414", "400", ""],
        ),
        (
            format!("{long} /items/1 HTTP/1.1\r\nHost: x\r\n{close}{bearer}\r\n\r\n"),
            &["405"],
        ),
        (
            format!(
                "GET /items/1 HTTP/1.1\r\nHost: x\r\n{}: 1\r\n{close}{bearer}\r\n\r\n",
                "x".repeat(70_000)
            ),
            &["431", "400"],
        ),
        (
            format!(
                "GET /items/1 HTTP/1.1\r\nHost: x\r\n{}{close}{bearer}\r\n\r\n",
                (0..200)
                    .map(|i| format!("x-h{i}: 1\r\n"))
                    .collect::<String>()
            ),
            &["431", "400"],
        ),
    ] {
        let answer = raw_exchange(&addr, &request);
        let what = &request[..40];
        assert!(
            allowed.iter().any(|s| if s.is_empty() {
                answer.is_empty()
            } else {
                answer.starts_with(&format!("HTTP/1.1 {s}"))
            }),
            "{what}...: {}",
            &answer[..answer.len().min(200)]
        );
        assert!(
            answer.len() < 4096,
            "{what}...: a {}-byte answer",
            answer.len()
        );
    }
    let after = s.fed.counters();
    assert_eq!(
        after.dp_requests, before.dp_requests,
        "a refused request went upstream"
    );
    assert_eq!(after.token_requests, before.token_requests);
    let printed = proxy.stop();
    assert!(
        printed.len() < 64 << 10,
        "the proxy printed {} bytes for a few refusals",
        printed.len()
    );
    // One audit record per request that reached the proxy's handler (every case above, the
    // absolute-form target, CONNECT and the 32 KiB method; not the heads the HTTP server refused
    // whole): the allowed one with its upstream URL, status, bytes and interaction id; every
    // refusal with its reason, bounded.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| {
            assert!(l.len() < 1024, "an audit record of {} bytes", l.len());
            serde_json::from_str(l).unwrap()
        })
        .collect();
    let allowed: Vec<_> = records
        .iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 1, "{records:#?}");
    let first = allowed[0];
    assert_eq!(first["interface"], "proxy");
    assert_eq!(first["status"], 200);
    assert_eq!(first["url"], format!("{}/items/1", s.fed.data_origin()));
    assert!(first["bytes"].as_u64().unwrap() > 0, "{first}");
    assert!(first["interaction_id"].is_string(), "{first}");
    assert!(first["error"].is_null(), "{first}");
    let denied = records.iter().filter(|r| r["decision"] == "deny");
    assert!(
        denied.clone().count() >= cases.len() + 3,
        "{} refusals recorded: {records:#?}",
        denied.clone().count()
    );
    for r in denied {
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
        assert!(r["status"].as_u64().unwrap() >= 400, "{r}");
    }
    s.outputs
        .lock()
        .unwrap()
        .push(("the proxy's output".into(), printed));
    s.assert_no_secrets(true, &[&s.dir.path().join("proxy.key")]);

    // Never a route to the authorization server, by its name or another; loopback only.
    let port = url::Url::parse(&s.fed.issuer_url())
        .unwrap()
        .port()
        .unwrap();
    for upstream in [
        format!("https://127.0.0.1:{port}/"),
        format!("https://localhost:{port}/"),
        format!("https://[::1]:{port}/token/"),
    ] {
        let out = run(
            &s,
            vec![
                "proxy".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--route".into(),
                format!("/as/={upstream}"),
            ],
        )
        .await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{upstream}: {stderr}");
        assert!(
            stderr.contains("authorization server"),
            "{upstream}: {stderr}"
        );
    }
    let out = run(
        &s,
        vec![
            "proxy".into(),
            "--listen".into(),
            "0.0.0.0:0".into(),
            "--route".into(),
            format!("/items/={}/items/", s.fed.data_origin()),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("loopback"),
        "{}",
        text(&out.stderr)
    );
}

/// Errors a caller of the proxy can act on: 503 with `Retry-After` while no token can be had
/// (never a request without one), 200 once the authorization server answers again, 502 for a
/// provider that cannot be reached; each with a JSON body naming the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn the_proxy_answers_what_the_caller_can_act_on() {
    let s = setup().await;
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start(
            &s,
            &[
                format!("/items/={}/items/", s.fed.data_origin()),
                "/down/=https://127.0.0.1:1/".to_owned(),
            ],
        )
    });
    let bearer = proxy.bearer();
    let item = format!("{}/items/1", proxy.origin);
    s.fed
        .set_as_fault(Some(fapi_federation::AsFault::InvalidClient));
    let (status, head) =
        tokio::task::block_in_place(|| proxy.curl(&["-D", "-", "-H", &bearer, &item]));
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    assert!(
        head.contains(r#""error":"token_unavailable""#) && head.contains("invalid_client"),
        "{head}"
    );
    assert_eq!(
        s.fed.counters().dp_requests,
        0,
        "a request went out without a token"
    );
    s.fed.set_as_fault(None);
    let (status, body) = tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &item]));
    assert_eq!(status, 200, "{body}");
    // A body cut upstream (reset, or closed short of its Content-Length) reaches the caller cut:
    // curl fails, it never gets a short success.
    for fault in [
        fapi_federation::DpFault::ResetMidBody,
        fapi_federation::DpFault::TruncatedBody,
    ] {
        s.fed.set_dp_fault(Some(fault.clone()));
        curl_fails_on_a_cut_body(&bearer, &item, &format!("{fault:?}"));
    }
    s.fed.set_dp_fault(None);
    let (status, body) = tokio::task::block_in_place(|| {
        proxy.curl(&["-H", &bearer, &format!("{}/down/x", proxy.origin)])
    });
    assert_eq!(status, 502, "{body}");
    assert!(body.contains(r#""error":"upstream_unreachable""#), "{body}");
    s.stop_proxy_and_search(proxy, &[&s.dir.path().join("proxy.key")]);
}

/// curl, sent through the proxy to `url` with `header`, fails: the body it got was cut (`what`
/// says how the provider cut it); it never takes a short body for a whole one.
fn curl_fails_on_a_cut_body(header: &str, url: &str, what: &str) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-H", header, url])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out.stderr).contains("curl: ("),
        "{what}: curl took a cut body for a whole one: {}",
        text(&out.stderr)
    );
}

/// A provider that does not answer within `timeout_seconds` is a 504 naming the cause; one whose
/// body stops for longer than that between chunks reaches the caller cut (curl fails), never as a
/// short success; the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_answers_504_for_a_stalled_provider_and_cuts_a_stalled_body() {
    let s = setup().await;
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str("\n[client]\ntimeout_seconds = 1\nretries = 0\n");
    std::fs::write(&s.config, config).unwrap();
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start(&s, &[format!("/data/={}/", s.fed.data_origin())])
    });
    let bearer = proxy.bearer();
    let csv = format!("{}/data/consumption.csv", proxy.origin);
    s.fed.set_dp_fault(Some(fapi_federation::DpFault::SlowHead(
        std::time::Duration::from_secs(3),
    )));
    let started = std::time::Instant::now();
    let (status, body) = tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &csv]));
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains(r#""error":"timeout""#) && body.contains("no response within"),
        "{body}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    s.fed.set_dp_fault(Some(fapi_federation::DpFault::SlowBody(
        std::time::Duration::from_secs(3),
    )));
    curl_fails_on_a_cut_body(&bearer, &csv, "a stalled body");
    s.fed.set_dp_fault(None);
    let (status, body) = tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &csv]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.len() as u64,
        fapi_federation::data::csv_len(fapi_federation::data::DEFAULT_ROWS)
    );
    s.stop_proxy_and_search(proxy, &[&s.dir.path().join("proxy.key")]);
}

/// On a Unix socket the proxy serves its own user without a key: the socket is 0600, and a
/// caller of another user (the socket's mode loosened by hand) is refused by the kernel's word on
/// who connected, with nothing sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn the_proxy_on_a_unix_socket_serves_its_own_user_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = setup().await;
    let socket = s.dir.path().join("proxy.sock");
    let listen = format!("unix:{}", socket.display());
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start_on(
            &s,
            &listen,
            &[format!("/items/={}/items/", s.fed.data_origin())],
        )
    });
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket's mode");
    let socket_arg = socket.display().to_string();
    let (status, body) = tokio::task::block_in_place(|| {
        proxy.curl(&["--unix-socket", &socket_arg, "http://localhost/items/1"])
    });
    assert_eq!(status, 200, "{body}");
    // Another user, once the mode lets it connect at all.
    let nobody = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "true",
        ])
        .status();
    if nobody.is_ok_and(|st| st.success()) {
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let before = s.fed.counters().dp_requests;
        let out = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "curl",
                "-sS",
            ])
            .args(["--unix-socket", &socket_arg, "-w", "\n%{http_code}"])
            .arg("http://localhost/items/1")
            .output()
            .unwrap();
        let answer = text(&out.stdout);
        assert!(
            answer.ends_with("403") && answer.contains("not_the_owner"),
            "{answer} {}",
            text(&out.stderr)
        );
        assert_eq!(s.fed.counters().dp_requests, before);
    } else {
        assert!(
            std::env::var("FAPI_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "setpriv cannot run as nobody here"
        );
        eprintln!("the other-user case needs root and setpriv: not run");
    }
    let printed = proxy.stop();
    assert!(!socket.exists(), "the socket is removed at exit");
    s.outputs
        .lock()
        .unwrap()
        .push(("the proxy's output".into(), printed));
}

/// A caller that never finishes its request (a head cut short, or a body shorter than its
/// `Content-Length`) is cut off after `--caller-timeout-seconds`, and nothing goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_caller_is_cut_off_and_nothing_goes_upstream() {
    use std::io::{Read as _, Write as _};
    let s = setup().await;
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start_with(
            &s,
            "127.0.0.1:0",
            &[format!("/items/={}/items/", s.fed.data_origin())],
            &["--caller-timeout-seconds", "1"],
        )
    });
    let addr = proxy.origin.trim_start_matches("http://").to_owned();
    let before = s.fed.counters().dp_requests;
    for (request, expected) in [
        // The head never ends.
        ("GET /items/1 HTTP/1.1\r\nHost: x\r\n".to_owned(), "408"),
        // The body stops short of its length.
        (
            format!(
                "POST /items/1 HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Length: 100\r\n\r\nten bytes.",
                proxy.bearer()
            ),
            "408",
        ),
    ] {
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        sock.write_all(request.as_bytes()).unwrap();
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        let _ = sock.read_to_end(&mut answer);
        let answer = text(&answer);
        assert!(
            answer.is_empty() || answer.starts_with(&format!("HTTP/1.1 {expected}")),
            "{request:?}: {answer}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{request:?}: the connection was held for {:?}",
            started.elapsed()
        );
    }
    assert_eq!(s.fed.counters().dp_requests, before);
}

/// Write `head` and `body` to the proxy at `addr` on a fresh connection, leave it open (a caller
/// that stalls), and read what comes back until the proxy closes it: the answer and how long that
/// took (bounded at 20 s by the read timeout).
fn stall_after(addr: &str, head: &str, body: &[u8]) -> (String, std::time::Duration) {
    use std::io::{Read as _, Write as _};
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(body).unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    (text(&answer), started.elapsed())
}

/// The peak resident set of process `pid` (VmHWM), KiB: the kernel's accounting.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The data provider's count of broken uploads once it passes `before` (within 10 s): the
/// upstream's side of a body the proxy broke off may land a moment after the caller's answer.
async fn broken_upload_after(s: &Setup, before: u64) -> u64 {
    for _ in 0..100 {
        let now = s.fed.counters().uploads_broken;
        if now > before {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    s.fed.counters().uploads_broken
}

/// A body larger than the proxy holds whole streams through it: 64 MiB, sent with its
/// `Content-Length` and sent chunked, arrives whole at the data provider (its byte count and
/// SHA-256 match), and the proxy's peak memory stays below the body's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn a_large_upload_streams_through_the_proxy_whole() {
    use sha2::Digest as _;
    const SIZE: usize = 64 << 20;
    let s = setup().await;
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start_with(
            &s,
            "127.0.0.1:0",
            &[format!("/energy/={}/", s.fed.data_origin())],
            &["--max-request-body-mib", "128"],
        )
    });
    let body: Vec<u8> = (0..SIZE as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
        .collect();
    let sha256: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let file = s.dir.path().join("upload.bin");
    std::fs::write(&file, &body).unwrap();
    drop(body);
    let data = format!("@{}", file.display());
    let url = format!("{}/energy/upload", proxy.origin);
    let bearer = proxy.bearer();
    for framing in [None, Some("Transfer-Encoding: chunked")] {
        let mut args = vec!["-X", "PUT", "-H", &bearer, "--data-binary", &data, &url];
        args.extend(framing.iter().flat_map(|h| ["-H", h]));
        let (status, answer) = tokio::task::block_in_place(|| proxy.curl(&args));
        assert_eq!(status, 200, "{framing:?}: {answer}");
        let got: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(got["bytes"], SIZE as u64, "{framing:?}");
        assert_eq!(got["sha256"], sha256.as_str(), "{framing:?}");
    }
    assert_eq!(s.fed.counters().uploads_whole, 2);
    let peak = peak_rss_kib(proxy.child.id());
    assert!(
        peak < (SIZE as u64 >> 10),
        "the proxy's peak RSS was {peak} KiB: a {SIZE}-byte body was held whole"
    );
    s.stop_proxy_and_search(proxy, &[&s.dir.path().join("proxy.key"), &file]);
}

/// A streamed body is bounded: one over `--max-request-body-mib` is 413 (at once when its
/// `Content-Length` says so, with nothing sent upstream; when it is chunked, as soon as it passes
/// the limit), and one whose caller stalls is 408 after `--caller-timeout-seconds`, chunked or
/// with a length. In every case the data provider sees a broken upload, never a whole one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn a_streamed_body_over_the_limit_or_stalled_never_arrives_whole_through_the_proxy() {
    let s = setup().await;
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start_with(
            &s,
            "127.0.0.1:0",
            &[format!("/energy/={}/", s.fed.data_origin())],
            &[
                "--max-request-body-mib",
                "1",
                "--caller-timeout-seconds",
                "1",
            ],
        )
    });
    let url = format!("{}/energy/upload", proxy.origin);
    let bearer = proxy.bearer();
    let file = s.dir.path().join("two-mib.bin");
    std::fs::write(&file, vec![7u8; 2 << 20]).unwrap();
    let data = format!("@{}", file.display());
    // One upload under the limit, so that the token is behind us and the counters move only
    // for what follows.
    let (status, answer) = tokio::task::block_in_place(|| {
        proxy.curl(&["-X", "PUT", "-H", &bearer, "--data-binary", "small", &url])
    });
    assert_eq!(status, 200, "{answer}");
    let before = s.fed.counters();
    let (status, answer) = tokio::task::block_in_place(|| {
        proxy.curl(&["-X", "PUT", "-H", &bearer, "--data-binary", &data, &url])
    });
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains(r#""error":"too_large""#), "{answer}");
    assert_eq!(
        s.fed.counters().dp_requests,
        before.dp_requests,
        "a body whose length is over the limit went upstream"
    );
    let (status, answer) = tokio::task::block_in_place(|| {
        proxy.curl(&[
            "-X",
            "PUT",
            "-H",
            &bearer,
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            &url,
        ])
    });
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains(r#""error":"too_large""#), "{answer}");
    let mut broken = broken_upload_after(&s, before.uploads_broken).await;
    assert_eq!(broken, before.uploads_broken + 1, "the cut body upstream");
    let addr = proxy.origin.trim_start_matches("http://").to_owned();
    let part = vec![b'x'; 100 << 10];
    let chunked = format!(
        "PUT /energy/upload HTTP/1.1\r\nHost: x\r\n{bearer}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        part.len()
    );
    let sized = format!(
        "PUT /energy/upload HTTP/1.1\r\nHost: x\r\n{bearer}\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    for head in [chunked, sized] {
        let (answer, took) = tokio::task::block_in_place(|| stall_after(&addr, &head, &part));
        assert!(
            answer.starts_with("HTTP/1.1 408") && answer.contains("caller_timeout"),
            "{head:?}: {answer}"
        );
        assert!(
            took < std::time::Duration::from_secs(15),
            "{head:?}: the stalled caller was held for {took:?}"
        );
        let now = broken_upload_after(&s, broken).await;
        assert_eq!(now, broken + 1, "{head:?}: the stalled body upstream");
        broken = now;
    }
    assert_eq!(
        s.fed.counters().uploads_whole,
        before.uploads_whole,
        "a body the proxy refused arrived whole"
    );
    s.stop_proxy_and_search(proxy, &[&s.dir.path().join("proxy.key"), &file]);
}

/// SIGTERM while requests are in flight: the proxy stops accepting, the requests it has finish
/// whole, and it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn sigterm_lets_the_proxys_requests_in_flight_finish() {
    let s = setup().await;
    let mut proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start(&s, &[format!("/energy/={}/", s.fed.data_origin())])
    });
    // A body that takes a while: 64 KiB in 4 KiB pieces, 50 ms apart (0.8 s).
    s.fed.set_dp_fault(Some(fapi_federation::DpFault::SlowBody(
        std::time::Duration::from_millis(50),
    )));
    let url = format!("{}/energy/sized?bytes=65536", proxy.origin);
    let curls: Vec<std::process::Child> = (0..3)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "-",
                    "-w",
                    "\n%{http_code}",
                    "-H",
                    &proxy.bearer(),
                    &url,
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Once the data provider has all three, stop the proxy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.fed.counters().dp_requests < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the requests never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _ = Command::new("kill")
        .arg(proxy.child.id().to_string())
        .status();
    for c in curls {
        assert_eq!(ok_body(c).len(), 65536, "a request in flight was cut");
    }
    let status = tokio::task::block_in_place(|| proxy.child.wait().unwrap());
    assert_eq!(status.code(), Some(0), "the proxy's exit");
    s.fed.set_dp_fault(None);
}

/// `--threads N`: connections go round N serving threads, each with a runtime and upstream
/// connections of its own, and one token cache for all: 12 callers at once, each on its own
/// connection, all get their whole answer, and the authorization server issues one token.
/// `--threads 0` is refused, naming the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn the_proxys_serving_threads_share_one_token_and_serve_every_connection() {
    let s = setup().await;
    let route = format!("/energy/={}/", s.fed.data_origin());
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start_with(
            &s,
            "127.0.0.1:0",
            std::slice::from_ref(&route),
            &["--threads", "3"],
        )
    });
    let url = format!("{}/energy/sized?bytes=20000", proxy.origin);
    let curls: Vec<std::process::Child> = (0..12)
        .map(|_| {
            Command::new("curl")
                .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-H"])
                .args([&proxy.bearer(), &url])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in curls {
        assert_eq!(ok_body(c).len(), 20000);
    }
    assert_eq!(
        s.fed.counters().token_requests,
        1,
        "one token for every thread"
    );
    let out = Command::new(fapi_tests::fapi_host_bin())
        .arg("--config")
        .arg(&s.config)
        .args(["proxy", "--listen", "127.0.0.1:0", "--route", &route])
        .args(["--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--threads"),
        "{}",
        text(&out.stderr)
    );
}

/// While the authorization server refuses, the proxy goes on with the token it has until that
/// expires (a failed refresh keeps a valid token in use), then answers 503 with `Retry-After`:
/// never a request with an expired token, never one without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn the_proxy_keeps_a_valid_token_through_a_failed_refresh_then_answers_503() {
    let cfg = fapi_federation::FederationConfig {
        token_ttl: std::time::Duration::from_secs(4),
        record_issued_tokens: true,
        ..fapi_federation::FederationConfig::default()
    };
    let fed = Federation::start(fapi_federation::Pki::generate().unwrap(), cfg)
        .await
        .unwrap();
    let s = setup_from(fed);
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start(&s, &[format!("/items/={}/items/", s.fed.data_origin())])
    });
    let bearer = proxy.bearer();
    let item = format!("{}/items/1", proxy.origin);
    let (status, body) = tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &item]));
    assert_eq!(status, 200, "{body}");
    let issued = std::time::Instant::now();
    s.fed
        .set_as_fault(Some(fapi_federation::AsFault::InvalidClient));
    // Past the refresh point (half the 4 s lifetime), before expiry: the refresh fails, the
    // token it has still serves.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, body) = tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &item]));
    assert!(
        issued.elapsed() < std::time::Duration::from_secs(4),
        "too slow to test before expiry"
    );
    assert_eq!(status, 200, "a valid token was dropped: {body}");
    assert!(s.fed.counters().token_requests >= 2, "no refresh was tried");
    // After expiry: 503, and nothing more reaches the data provider.
    tokio::time::sleep(
        std::time::Duration::from_secs(4).saturating_sub(issued.elapsed())
            + std::time::Duration::from_millis(500),
    )
    .await;
    let before = s.fed.counters().dp_requests;
    let (status, body) = tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &item]));
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        s.fed.counters().dp_requests,
        before,
        "an expired token was sent"
    );
    s.stop_proxy_and_search(proxy, &[&s.dir.path().join("proxy.key")]);
}

/// `--admin`: `/healthz`, `/readyz` (a token can be had: 200; none: 503 with the reason) and
/// Prometheus metrics (requests by route and status, upstream latency, token requests and
/// failures, seconds to the certificate's expiry), on a loopback address of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn the_proxys_admin_listener_reports_health_readiness_and_metrics() {
    let s = setup().await;
    // A free port for the admin listener, named on the command line (the proxy's start-up lines
    // are read by ProxyProcess, which may have read past the first).
    let admin_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let admin_flag = admin_addr.to_string();
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start_with(
            &s,
            "127.0.0.1:0",
            &[format!("/items/={}/items/", s.fed.data_origin())],
            &["--admin", &admin_flag],
        )
    });
    let admin = format!("http://{admin_addr}");
    // The proxy is listening once it has printed its address; the admin listener, bound before,
    // answers too.
    let get = |url: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let t = text(&out.stdout);
        let (body, status) = t.rsplit_once('\n').unwrap();
        (status.to_owned(), body.to_owned())
    };
    assert_eq!(get(&format!("{admin}/healthz")).0, "200");
    // Not ready while the authorization server refuses (no token yet), ready once it answers.
    s.fed
        .set_as_fault(Some(fapi_federation::AsFault::InvalidClient));
    let (status, body) = get(&format!("{admin}/readyz"));
    assert_eq!(status, "503", "{body}");
    assert!(body.contains("invalid_client"), "{body}");
    s.fed.set_as_fault(None);
    let (status, body) = get(&format!("{admin}/readyz"));
    assert_eq!(status, "200", "{body}");
    let (status, _) = tokio::task::block_in_place(|| {
        proxy.curl(&["-H", &proxy.bearer(), &format!("{}/items/1", proxy.origin)])
    });
    assert_eq!(status, 200);
    let (status, _) = tokio::task::block_in_place(|| {
        proxy.curl(&["-H", &proxy.bearer(), &format!("{}/nowhere", proxy.origin)])
    });
    assert_eq!(status, 404);
    let (status, metrics) = get(&format!("{admin}/metrics"));
    assert_eq!(status, "200", "{metrics}");
    for expected in [
        r#"fapi_proxy_requests_total{route="/items/",status="200"} 1"#,
        r#"fapi_proxy_requests_total{route="none",status="404"} 1"#,
        "fapi_proxy_upstream_seconds_count 1",
        "fapi_proxy_token_failures_total 0",
        "fapi_proxy_token_requests 2",
    ] {
        assert!(metrics.contains(expected), "{expected} not in {metrics}");
    }
    let expiry: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fapi_proxy_certificate_expiry_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(expiry > 86_400.0, "{expiry}");
    assert_eq!(get(&format!("{admin}/other")).0, "404");
    s.outputs
        .lock()
        .unwrap()
        .push(("the metrics".into(), metrics.into_bytes()));
    s.stop_proxy_and_search(proxy, &[&s.dir.path().join("proxy.key")]);
}

/// A new key and certificate without a restart: on SIGHUP, and when the files change, the proxy
/// takes the new pair, its next request gets a token bound to the new certificate (the data
/// provider checks the binding); a pair that does not match keeps the old identity, with a
/// warning saying why, and requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn the_proxy_takes_a_new_key_and_certificate_without_a_restart() {
    let s = setup().await;
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start(&s, &[format!("/items/={}/items/", s.fed.data_origin())])
    });
    let item = format!("{}/items/1", proxy.origin);
    let bearer = proxy.bearer();
    let ok = || tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &item]).0 == 200);
    assert!(ok());
    assert_eq!(s.fed.counters().token_requests, 1);
    let (cert, key) = (
        s.dir.path().join("consumer.pem"),
        s.dir.path().join("consumer.key"),
    );
    let new_pair = |name: &str| {
        let mut spec = fapi_federation::ClientSpec::new("fapi-dev-consumer");
        spec.name = name.into();
        spec.not_after = std::time::SystemTime::now() + std::time::Duration::from_secs(90 * 86_400);
        s.fed.pki().issue_client(spec).unwrap()
    };
    // Until the proxy has taken a new pair, its requests go on with the old one.
    let wait_for_token = |tokens: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while s.fed.counters().token_requests < tokens {
            assert!(
                std::time::Instant::now() < deadline,
                "the new pair was not taken"
            );
            assert!(ok(), "a request failed while the pair changed");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };

    // 1. SIGHUP.
    let second = new_pair("second");
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status();
    tokio::task::block_in_place(|| wait_for_token(2));
    assert!(ok());

    // 2. A pair that does not match: the old identity stays.
    let stray = new_pair("stray");
    std::fs::write(&key, &stray.key_pem).unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(ok());
    assert_eq!(
        s.fed.counters().token_requests,
        2,
        "a token was requested for a bad pair"
    );

    // 3. The files changing is enough.
    let third = new_pair("third");
    std::fs::write(&key, &third.key_pem).unwrap();
    std::fs::write(&cert, &third.cert_pem).unwrap();
    tokio::task::block_in_place(|| wait_for_token(3));
    assert!(ok());

    let printed = proxy.stop();
    let text = text(&printed);
    assert!(
        text.contains("kept the previous key and certificate"),
        "{text}"
    );
    assert_eq!(
        text.matches("took the new key and certificate").count(),
        2,
        "{text}"
    );
    s.outputs
        .lock()
        .unwrap()
        .push(("the proxy's output".into(), printed));
    s.assert_no_secrets(true, &[&s.dir.path().join("proxy.key"), &key]);
}

/// The proxy under DPoP, unchanged for its callers: the host proves every request (one replay
/// for each server's first nonce demand, the data provider's nonce followed as it rotates in its
/// 200s), a caller's own `DPoP` header is refused and sends nothing upstream (DPOP-01), and no
/// proof and no token is in anything a process printed or wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(fapi_has_curl_and_python_requests), ignore = "needs curl")]
async fn the_proxy_works_under_dpop_and_refuses_a_callers_dpop_header() {
    let cfg = fapi_federation::FederationConfig {
        dpop_required: true,
        dpop_nonce: true,
        dpop_nonce_rotate_every: 2,
        record_issued_tokens: true,
        ..fapi_federation::FederationConfig::default()
    };
    let fed = Federation::start(fapi_federation::Pki::generate().unwrap(), cfg)
        .await
        .unwrap();
    let s = setup_from(fed);
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start(&s, &[format!("/energy/={}/", s.fed.data_origin())])
    });
    let url = format!("{}/energy/consumption.csv", proxy.origin);
    let bearer = proxy.bearer();
    for _ in 0..3 {
        let (status, body) = tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, &url]));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, data::csv(data::DEFAULT_ROWS));
    }
    let (status, body) =
        tokio::task::block_in_place(|| proxy.curl(&["-H", &bearer, "-H", "DPoP: x.y.z", &url]));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("header_refused"), "{body}");
    let c = s.fed.counters();
    assert_eq!(
        c.token_requests, 2,
        "the nonce demand and its replay: {c:?}"
    );
    assert_eq!(c.dpop_nonce_demands, 2, "one per server: {c:?}");
    assert_eq!(c.dpop_proofs_accepted, 4, "a token and three reads: {c:?}");
    assert_eq!(c.dp_requests, 4, "the refused header sent nothing: {c:?}");
    s.stop_proxy_and_search(proxy, &[&s.dir.path().join("proxy.key")]);
    let proofs = s.fed.received_dpop_proofs();
    assert_eq!(proofs.len(), 6);
    for (what, hay) in s.outputs.lock().unwrap().iter() {
        for p in &proofs {
            let sig = p.rsplit('.').next().unwrap().as_bytes();
            assert!(
                !fapi_tests::sandbox_env::contains(hay, sig),
                "a proof in {what}"
            );
        }
    }
}

/// `proxy` under `ib1`, each route with its own grant (one on the command line, one in a
/// `[[proxy.route]]` table): a caller reads each household's data on its route; the household of
/// one withdraws its consent, and that route answers 403 `consent_ended` naming `grant add`,
/// while the other goes on; a route without a grant is refused at start. No token in anything
/// printed, answered or written but the grant store's own files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_sends_each_route_with_its_grant_and_an_ended_consent_fails_that_route_only() {
    let s = setup_from(fapi_tests::ib1_federation(std::time::Duration::from_secs(120)).await);
    let grants = fapi_tests::use_local_grant_store(&s.config);
    for (grant, household) in [("home1", "household-1"), ("home2", "household-2")] {
        let printed = fapi_tests::add_grant(&s.fed, &s.config, grant, household).await;
        s.outputs
            .lock()
            .unwrap()
            .push((format!("grant add {grant}"), printed));
    }
    let origin = s.fed.data_origin();

    // Under ib1 a route without a grant is refused at start, naming the route and the fix.
    let routes = [
        format!("/home1/={origin}/,grant=home1"),
        format!("/nobody/={origin}/"),
    ];
    let mut args: Vec<String> = ["proxy", "--listen", "127.0.0.1:0"].map(Into::into).into();
    for r in routes {
        args.extend(["--route".into(), r]);
    }
    let out = run(&s, args).await;
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("route /nobody/ names no grant") && err.contains("--grant NAME"),
        "{err}"
    );

    // home2's route in the configuration file, home1's on the command line.
    let toml = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!(
            "{toml}\n[[proxy.route]]\nprefix = \"/home2/\"\nupstream = \"{origin}/\"\ngrant = \"home2\"\n"
        ),
    )
    .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let proxy = tokio::task::block_in_place(|| {
        ProxyProcess::start_with(
            &s,
            "127.0.0.1:0",
            &[format!("/home1/={origin}/,grant=home1")],
            &["--admin", &admin],
        )
    });
    let address = proxy.origin.trim_start_matches("http://").to_owned();
    let get = |route: &str| {
        let request = format!(
            "GET /{route}/household.json HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            proxy.key
        );
        let answer = tokio::task::block_in_place(|| raw_exchange(&address, &request));
        s.outputs.lock().unwrap().push((
            format!("the answer on /{route}/"),
            answer.clone().into_bytes(),
        ));
        answer
    };
    for (route, household) in [("home1", "household-1"), ("home2", "household-2")] {
        let answer = get(route);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(&format!("\"household\":\"{household}\"")),
            "{route}: {answer}"
        );
    }

    // household-2 withdraws its consent: its route fails clearly, home1's goes on.
    assert_eq!(s.fed.withdraw_consent("household-2"), 1);
    let answer = get("home2");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("\"error\":\"consent_ended\"") && answer.contains("run grant add home2"),
        "{answer}"
    );
    let answer = get("home1");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"household\":\"household-1\""),
        "{answer}"
    );
    // The admin listener counts the ended consent among the token failures, and is not ready
    // while a route can have no token, naming it.
    let admin_get = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        tokio::task::block_in_place(|| raw_exchange(&admin, &request))
    };
    let metrics = admin_get("/metrics");
    assert!(
        metrics.contains("fapi_proxy_token_failures_total 1"),
        "{metrics}"
    );
    let ready = admin_get("/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("/home2/"),
        "{ready}"
    );
    s.stop_proxy_and_search(
        proxy,
        &[
            &s.dir.path().join("proxy.key"),
            &grants.join("home1.json"),
            &grants.join("home2.json"),
        ],
    );
}
