//! `fapi-host serve` as a user runs it: the real binary, real service components, callers over
//! real TCP on 127.0.0.1, the federation over real mTLS. Every test searches everything the
//! callers received and the process printed (its logs at -vv or -vvv included) for every token the
//! federation issued and for the client's private key.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, Read as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fapi_federation::{Federation, data};
use fapi_tests::guests;
use fapi_tests::sandbox_env::Needles;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The compilation cache the processes share (so that each test does not compile the guests).
fn cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasmtime-cache")
}

/// A federation and the client configuration for it, and everything any process or caller saw.
struct Setup {
    fed: Federation,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// What each process printed and each caller received, with what it is.
    seen: Mutex<Vec<(String, Vec<u8>)>>,
}

async fn setup() -> Setup {
    let fed = fapi_tests::recording_federation(true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    Setup {
        fed,
        dir,
        config,
        seen: Mutex::default(),
    }
}

impl Setup {
    /// Assert that no token the federation issued (at least one must have been: a search for
    /// none could not fail) and no piece of the client's key is in anything seen.
    fn assert_no_secrets(&self) {
        let key = &self.fed.pki().client("consumer").unwrap().key_pem;
        let needles = Needles::new(&self.fed.issued_tokens(), key);
        let seen = self.seen.lock().unwrap();
        assert!(!seen.is_empty());
        for (what, hay) in seen.iter() {
            needles.assert_absent(what, hay);
        }
    }

    /// `fapi-host --config CFG ARGS` to its end (a command that is refused at start).
    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(fapi_tests::fapi_host_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("XDG_CACHE_HOME", cache())
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        let mut seen = self.seen.lock().unwrap();
        seen.push((format!("the stdout of {args:?}"), out.stdout.clone()));
        seen.push((format!("the stderr of {args:?}"), out.stderr.clone()));
        out
    }
}

/// A `fapi-host serve` process of the test's, killed by PID when dropped; its output is read
/// as it comes (so that its pipes never fill) and kept.
struct Served {
    child: Child,
    addr: String,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Served {
    /// `fapi-host --config CFG VERBOSITY serve --listen 127.0.0.1:0 FLAGS COMPONENT`; waits for
    /// the address it prints.
    fn start(s: &Setup, verbosity: &str, component: &str, flags: &[&str]) -> Served {
        let mut child = Command::new(fapi_tests::fapi_host_bin())
            .arg("--config")
            .arg(&s.config)
            .args([verbosity, "serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .arg(component)
            .env("XDG_CACHE_HOME", cache())
            .current_dir(s.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        output.lock().unwrap().extend_from_slice(first.as_bytes());
        for mut pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let addr = first
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "no address in {first:?}: {}",
                    String::from_utf8_lossy(&output.lock().unwrap())
                )
            })
            .to_owned();
        Served {
            child,
            addr,
            output,
        }
    }

    /// What it printed so far (stdout and stderr).
    fn printed(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Send SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for it to exit (at most `within`); its exit code.
    fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it (SIGTERM) and keep what it printed in `s`'s record.
    fn stop(mut self, s: &Setup) -> String {
        self.terminate();
        assert_eq!(
            self.wait(Duration::from_secs(30)),
            Some(0),
            "{}",
            self.printed()
        );
        // The reader threads drain the pipes after the exit.
        std::thread::sleep(Duration::from_millis(100));
        let printed = self.printed();
        s.seen
            .lock()
            .unwrap()
            .push(("the output of serve".into(), printed.clone().into_bytes()));
        printed
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as a caller got it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
    /// Whether the body arrived whole: its last chunk (for a chunked body), or all of
    /// `content-length`.
    complete: bool,
}

/// `METHOD PATH` with `body` to `addr`, over a connection of its own; the whole answer, which
/// `s` records for the secret search.
async fn call(s: &Setup, addr: &str, method: &str, path: &str, body: &[u8]) -> Answer {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    send(s, &format!("{method} {path}"), addr, &raw).await
}

/// `raw` (a request, as it goes on the wire) to `addr`, over a connection of its own; the whole
/// answer, which `s` records for the secret search.
async fn send(s: &Setup, what: &str, addr: &str, raw: &[u8]) -> Answer {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything: what it answered counts.
    let _ = conn.write_all(raw).await;
    let mut answer = Vec::new();
    // A cut connection ends the answer: what arrived is what the caller got.
    let _ = tokio::time::timeout(Duration::from_secs(60), conn.read_to_end(&mut answer))
        .await
        .expect("an answer within 60 s");
    s.seen
        .lock()
        .unwrap()
        .push((format!("the answer to {what}"), answer.clone()));
    parse(&answer)
}

/// A GET through [`call`].
async fn get(s: &Setup, addr: &str, path: &str) -> Answer {
    call(s, addr, "GET", path, b"").await
}

/// An HTTP/1.1 response: its status, head and body (de-chunked). A response cut short has
/// status 0 (no head) or an empty body.
fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return Answer {
            status: 0,
            head: text,
            body: String::new(),
            complete: false,
        };
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let (body, complete) = if chunked {
        let mut body = String::new();
        let mut rest = rest;
        let mut complete = false;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if size == 0 {
                complete = true;
                break;
            }
            if after.len() < size {
                break;
            }
            body.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        (body, complete)
    } else {
        let declared = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        });
        (rest.to_owned(), declared.is_none_or(|n| n == rest.len()))
    };
    Answer {
        status,
        head: head.to_owned(),
        body,
        complete,
    }
}

/// The summary `serve-summary` must answer for the provider's CSV, computed here from the
/// dataset's rows (the figures in the same arithmetic as the guest's: the CSV's decimal text
/// parsed and summed in row order).
fn expected_summary_lines() -> Vec<String> {
    let rows: Vec<data::Row> = (0..data::DEFAULT_ROWS).map(data::row).collect();
    let kwh = |tenths: u64| -> f64 { format!("{}.{}", tenths / 10, tenths % 10).parse().unwrap() };
    let meters: u64 = rows.iter().map(|r| r.num_meters).sum();
    let total: f64 = rows.iter().map(|r| kwh(r.total_tenths)).sum();
    let means: f64 = rows.iter().map(|r| kwh(r.mean_tenths)).sum();
    let mut top = rows.clone();
    top.sort_by_key(|r| std::cmp::Reverse(r.total_tenths));
    let mut lines = vec![
        format!("postcodes:          {}", rows.len()),
        format!("meters:             {meters}"),
        format!("total kWh:          {total:.1}"),
        format!("mean of means kWh:  {:.1}", means / rows.len() as f64),
    ];
    for (rank, r) in top.iter().take(5).enumerate() {
        lines.push(format!(
            "{:>4}  {:<10} {:>8} {:>16.1}",
            rank + 1,
            r.postcode,
            r.num_meters,
            kwh(r.total_tenths)
        ));
    }
    lines
}

/// The example service answers every request with the summary of the provider's CSV, fetched
/// over mTLS with the token at that moment; the figures are the dataset's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_service_answers_with_the_summary_of_the_providers_csv() {
    let s = setup().await;
    let csv_url = format!("CSV_URL={}", s.fed.data_url());
    let served = tokio::task::block_in_place(|| {
        Served::start(&s, "-vv", guests::SERVE_SUMMARY, &["--env", &csv_url])
    });
    let expected = expected_summary_lines();
    for _ in 0..2 {
        let a = get(&s, &served.addr, "/").await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.head.contains("text/plain"), "{}", a.head);
        for line in &expected {
            assert!(
                a.body.lines().any(|l| l == line),
                "{line:?} is not in the summary:\n{}",
                a.body
            );
        }
    }
    // Each request fetched the CSV itself; one token served both.
    assert_eq!(s.fed.counters().dp_requests, 2);
    assert_eq!(s.fed.issued_tokens().len(), 1);
    let a = call(&s, &served.addr, "POST", "/", b"x").await;
    assert_eq!(a.status, 405, "{a:?}");
    let printed = tokio::task::block_in_place(|| served.stop(&s));
    assert!(
        printed.contains("status=200"),
        "the requests are logged: {printed}"
    );
    s.assert_no_secrets();
}

/// Each request runs in a fresh instance: what one request leaves in the service's memory (a
/// static the test service sets from the path) is not there for the next, in turn or at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_sees_what_another_left_in_memory() {
    let s = setup().await;
    let served = tokio::task::block_in_place(|| Served::start(&s, "-v", guests::TEST_SERVICE, &[]));
    let first = get(&s, &served.addr, "/remember/first-callers-secret").await;
    assert_eq!(first.status, 200, "{first:?}");
    // The static works within an instance: it holds what was set.
    assert_eq!(first.body, "previous= now=first-callers-secret");
    let second = get(&s, &served.addr, "/remember/second").await;
    assert_eq!(second.body, "previous= now=second", "{second:?}");
    let paths: Vec<String> = (0..4).map(|i| format!("/remember/c{i}")).collect();
    let at_once =
        futures_util::future::join_all(paths.iter().map(|p| get(&s, &served.addr, p))).await;
    for (i, a) in at_once.iter().enumerate() {
        assert_eq!(a.body, format!("previous= now=c{i}"), "{a:?}");
    }
    let printed = tokio::task::block_in_place(|| served.stop(&s));
    // No request asked for data: no token exists, and the key is what could leak.
    assert_eq!(s.fed.counters().token_requests, 0);
    let key = &s.fed.pki().client("consumer").unwrap().key_pem;
    Needles::key_only(key).assert_absent("the output of serve", printed.as_bytes());
}

/// A service's request that the policy refuses (the authorization server, an origin not
/// allowed, plain http) fails inside the service, through both ways out, and nothing reaches
/// the federation; the caller gets the service's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_policy_refuses_reaches_nothing() {
    let s = setup().await;
    let served =
        tokio::task::block_in_place(|| Served::start(&s, "-vv", guests::TEST_SERVICE, &[]));
    let data = s.fed.data_url();
    // Allowed, through both: the token is had, and the way is open.
    for way in ["fetch", "http"] {
        let a = get(&s, &served.addr, &format!("/{way}?{data}")).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(
            a.body,
            format!("status=200 bytes={}", data::csv(data::DEFAULT_ROWS).len())
        );
    }
    let before = s.fed.counters();
    let token = format!("{}/token", s.fed.issuer_url());
    let plain = data.replace("https://", "http://");
    for url in [token.as_str(), "https://127.0.0.1:1/x", &plain] {
        let a = get(&s, &served.addr, &format!("/fetch?{url}")).await;
        assert_eq!(a.status, 502, "{url}: {a:?}");
        assert!(a.body.starts_with("error=Denied"), "{url}: {a:?}");
    }
    for url in [token.as_str(), "https://127.0.0.1:1/x"] {
        let a = get(&s, &served.addr, &format!("/http?{url}")).await;
        assert_eq!(a.status, 502, "{url}: {a:?}");
        assert_eq!(a.body, "error=ErrorCode::HttpRequestDenied", "{url}: {a:?}");
    }
    assert_eq!(
        s.fed.counters(),
        before,
        "a refused request reached the federation"
    );
    tokio::task::block_in_place(|| served.stop(&s));
    s.assert_no_secrets();
}

/// A guest that traps, spins, runs out of memory or out of wall time gives its caller a 500
/// naming the cause and the setting; the server carries on and answers the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_traps_or_hits_a_limit_gives_500_and_the_server_carries_on() {
    let s = setup().await;
    let mut served = tokio::task::block_in_place(|| {
        Served::start(
            &s,
            "-v",
            guests::TEST_SERVICE,
            &[
                "--max-cpu-seconds",
                "1",
                "--max-memory-mib",
                "32",
                "--max-wall-seconds",
                "2",
            ],
        )
    });
    let cases = [
        ("/trap", "panicked"),
        ("/spin", "--max-cpu-seconds"),
        ("/alloc/64", "--max-memory-mib"),
        ("/sleep/60000", "--max-wall-seconds"),
    ];
    for (path, cause) in cases {
        let started = Instant::now();
        let a = get(&s, &served.addr, path).await;
        assert_eq!(a.status, 500, "{path}: {a:?}");
        assert!(a.head.contains("application/json"), "{path}: {a:?}");
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["error"], "guest_stopped", "{path}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(cause),
            "{path}: {v}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{path}");
        let next = get(&s, &served.addr, "/remember/after").await;
        assert_eq!(next.body, "previous= now=after", "after {path}: {next:?}");
        assert!(next.complete, "{next:?}");
    }
    // Stopped after its response began: the caller's connection is cut (with or without the head
    // and what the guest wrote: hyper may not have sent them yet), never a whole body.
    let a = get(&s, &served.addr, "/trap-midway").await;
    assert!(
        !a.complete,
        "a body cut short arrived as a whole one: {a:?}"
    );
    assert!(a.status == 0 || a.status == 200, "{a:?}");
    assert!("partial".starts_with(&a.body), "{a:?}");
    let next = get(&s, &served.addr, "/remember/after").await;
    assert_eq!(next.body, "previous= now=after", "{next:?}");
    assert_eq!(served.child.try_wait().unwrap(), None, "serve exited");
    let printed = tokio::task::block_in_place(|| served.stop(&s));
    assert!(printed.contains("was stopped"), "{printed}");
    assert_eq!(s.fed.counters().token_requests, 0);
    let key = &s.fed.pki().client("consumer").unwrap().key_pem;
    Needles::key_only(key).assert_absent("the output of serve", printed.as_bytes());
}

/// SIGTERM: serve stops accepting, the requests in flight finish whole, and it exits 0; a
/// request that outlasts --drain-seconds is cut, and serve exits all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_requests_in_flight_up_to_the_deadline() {
    let s = setup().await;
    let mut served = tokio::task::block_in_place(|| {
        Served::start(&s, "-vv", guests::TEST_SERVICE, &["--drain-seconds", "10"])
    });
    let addr = served.addr.clone();
    let slow = |ms: u64| {
        let addr = addr.clone();
        let s = &s;
        async move { get(s, &addr, &format!("/sleep/{ms}")).await }
    };
    let in_flight = futures_util::future::join_all([slow(2000), slow(2000)]);
    let terminate = async {
        wait_for_started(&served, 2).await;
        served.terminate();
        // The listener is closed: a new caller is refused.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (answers, ()) = tokio::join!(in_flight, terminate);
    for a in answers {
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, "slept=2000");
    }
    let code = tokio::task::block_in_place(|| served.wait(Duration::from_secs(10)));
    assert_eq!(code, Some(0), "{}", served.printed());

    // A request longer than the drain deadline is cut when it passes.
    let mut served = tokio::task::block_in_place(|| {
        Served::start(&s, "-vv", guests::TEST_SERVICE, &["--drain-seconds", "1"])
    });
    let addr = served.addr.clone();
    let started = Instant::now();
    let (a, ()) = tokio::join!(get(&s, &addr, "/sleep/30000"), async {
        wait_for_started(&served, 1).await;
        served.terminate();
    });
    assert_ne!(a.status, 200, "{a:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let code = tokio::task::block_in_place(|| served.wait(Duration::from_secs(10)));
    assert_eq!(code, Some(0));
    assert!(
        served.printed().contains("--drain-seconds"),
        "{}",
        served.printed()
    );
}

/// Wait until `served` has logged (at -vv) that it began `n` requests.
async fn wait_for_started(served: &Served, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while served.printed().matches("serve: request began").count() < n {
        assert!(Instant::now() < deadline, "{}", served.printed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What callers send is bounded: a body over --max-caller-body-mib is refused before any
/// instance runs (413) when declared, and fails the service's read when it is not; a request
/// beyond --max-concurrent-instances gets 503 with Retry-After at once; a request head slower
/// than --caller-timeout-seconds, or larger than 64 KiB, is refused before any instance runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_bounded_in_body_size_and_concurrency() {
    let s = setup().await;
    let served = tokio::task::block_in_place(|| {
        Served::start(
            &s,
            "-vv",
            guests::TEST_SERVICE,
            &[
                "--max-caller-body-mib",
                "1",
                "--max-concurrent-instances",
                "1",
                "--caller-timeout-seconds",
                "1",
            ],
        )
    });
    let (slow, busy) = tokio::join!(get(&s, &served.addr, "/sleep/1500"), async {
        wait_for_started(&served, 1).await;
        get(&s, &served.addr, "/remember/x").await
    });
    assert_eq!(slow.body, "slept=1500", "{slow:?}");
    assert_eq!(busy.status, 503, "{busy:?}");
    assert!(
        busy.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{busy:?}"
    );
    assert!(busy.body.contains("--max-concurrent-instances"), "{busy:?}");
    let a = call(&s, &served.addr, "POST", "/body", &vec![b'x'; 1000]).await;
    assert_eq!((a.status, a.body.as_str()), (200, "bytes=1000"), "{a:?}");
    // Declared too large: refused before any instance runs, without reading the body.
    let head = format!(
        "POST /body HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        served.addr,
        (1 << 20) + 1
    );
    let a = send(&s, "a declared large body", &served.addr, head.as_bytes()).await;
    assert_eq!(a.status, 413, "{a:?}");
    assert!(a.body.contains("--max-caller-body-mib"), "{a:?}");
    // Not declared (chunked): the service's read fails at the limit.
    let mut raw = format!(
        "POST /body HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
        served.addr,
        (1 << 20) + 1
    )
    .into_bytes();
    raw.extend(std::iter::repeat_n(b'x', (1 << 20) + 1));
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    let a = send(&s, "a chunked large body", &served.addr, &raw).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body.starts_with("error="), "{a:?}");
    // Heads that never end (never handed over) or are too large (431, where the service would
    // have answered 200) are refused before any instance runs.
    let began = served.printed().matches("serve: request began").count();
    let started = Instant::now();
    let endless = b"GET /remember/x HTTP/1.1\r\nhost: x\r\n";
    let a = send(&s, "a head that never ends", &served.addr, endless).await;
    assert!(a.status == 408 || a.status == 0, "{a:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        served.printed().matches("serve: request began").count(),
        began
    );
    let big = format!(
        "GET /remember/x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let a = send(&s, "a head over 64 KiB", &served.addr, big.as_bytes()).await;
    assert_eq!(a.status, 431, "{a:?}");
    tokio::task::block_in_place(|| served.stop(&s));
}

/// The whole of a service's life at -vvv (every log line of fapi-host): the summary, requests
/// through both ways out, refusals, a trap. No token the federation issued, nor the key, is in
/// any answer (head or body), in stdout or in stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_a_caller_or_the_output_at_any_log_level() {
    let s = setup().await;
    let csv_url = format!("CSV_URL={}", s.fed.data_url());
    let served = tokio::task::block_in_place(|| {
        Served::start(&s, "-vvv", guests::SERVE_SUMMARY, &["--env", &csv_url])
    });
    assert_eq!(get(&s, &served.addr, "/").await.status, 200);
    // The provider refuses the token it had: the host gets another (both are searched for).
    s.fed.revoke_all_tokens();
    assert_eq!(get(&s, &served.addr, "/").await.status, 200);
    let printed = tokio::task::block_in_place(|| served.stop(&s));
    assert!(
        printed.contains("TRACE") || printed.contains("DEBUG"),
        "{printed}"
    );

    let served =
        tokio::task::block_in_place(|| Served::start(&s, "-vvv", guests::TEST_SERVICE, &[]));
    let data = s.fed.data_url();
    let token = format!("{}/token", s.fed.issuer_url());
    for path in [
        format!("/fetch?{data}"),
        format!("/http?{data}"),
        format!("/fetch?{token}"),
        format!("/http?{token}"),
        "/trap".to_owned(),
    ] {
        get(&s, &served.addr, &path).await;
    }
    tokio::task::block_in_place(|| served.stop(&s));
    assert!(
        s.fed.issued_tokens().len() >= 3,
        "{} tokens",
        s.fed.issued_tokens().len()
    );
    s.assert_no_secrets();
}

/// What cannot be served is refused at start with what to do: a component that is not a
/// service (named world), an address that is not loopback; and `run` names `serve` for a
/// service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_served_is_refused_at_start_with_the_fix() {
    let s = setup().await;
    let out =
        tokio::task::block_in_place(|| s.run(&["serve", "--listen", "127.0.0.1:0", guests::FETCH]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(
        err.contains("openenergy:fapi/http-service") && err.contains("fapi-host run"),
        "{err}"
    );
    for listen in ["0.0.0.0:0", "192.0.2.1:8080", "[::]:0"] {
        let out = tokio::task::block_in_place(|| {
            s.run(&["serve", "--listen", listen, guests::TEST_SERVICE])
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{listen}: {err}");
        assert!(err.contains("loopback"), "{listen}: {err}");
    }
    let out = tokio::task::block_in_place(|| s.run(&["run", guests::SERVE_SUMMARY]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains("fapi-host serve"), "{err}");
}

/// Under `ib1`, `serve --grant NAME`: the service's own requests carry the grant's access token
/// (the federation issues no other kind), so it answers with the summary of the household's
/// data; without `--grant` the command is refused at start, naming the flag. No token reaches a
/// caller or the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ib1_the_services_requests_carry_its_grant_and_none_is_refused_at_start() {
    let fed = fapi_tests::ib1_federation(Duration::from_secs(120)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    fapi_tests::use_local_grant_store(&config);
    let s = Setup {
        fed,
        dir,
        config,
        seen: Mutex::default(),
    };
    let printed = fapi_tests::add_grant(&s.fed, &s.config, "home", "household-1").await;
    s.seen.lock().unwrap().push(("grant add".into(), printed));
    let csv_url = format!("CSV_URL={}", s.fed.data_url());

    let out = s.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--env",
        &csv_url,
        guests::SERVE_SUMMARY,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("serve --grant NAME"), "{err}");

    let served = tokio::task::block_in_place(|| {
        Served::start(
            &s,
            "-vv",
            guests::SERVE_SUMMARY,
            &["--env", &csv_url, "--grant", "home"],
        )
    });
    let a = get(&s, &served.addr, "/").await;
    assert_eq!(a.status, 200, "{a:?}");
    for line in expected_summary_lines() {
        assert!(a.body.lines().any(|l| l == line), "{line:?}: {}", a.body);
    }
    tokio::task::block_in_place(|| served.stop(&s));
    s.assert_no_secrets();
}
