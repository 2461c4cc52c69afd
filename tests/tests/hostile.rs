//! The hostile plugins (guest/test-plugins/src/bin/hostile-*.rs) against the local federation: each
//! is a real component that tries every way it knows around one guarantee and reports what happened;
//! each test judges every attempt, checks on the servers' side that nothing got through, and searches
//! everything the plugin could observe, the audit file and every log line for the token and the key.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use fapi_host::sandbox::{RunOutcome, SandboxOptions};
use fapi_host::{Overrides, Settings};
use fapi_tests::guests;
use fapi_tests::sandbox_env::SandboxEnv;
use futures_util::future::join_all;
use serde_json::Value;

/// The tests of this file run one at a time: in the exhaustion test a well-behaved plugin must get
/// runs done while a hostile one burns its CPU time, and the other tests' compilations and
/// request storms on the same 2 cores would only crowd it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A sandbox whose allow-list is two data-provider endpoints only (so that `/echo`, which would show
/// the guest the host's Authorization header, is outside it), with an audit file, and whose client
/// holds a token before any plugin runs: whatever a plugin tries, there is a token it could reach,
/// and the leak searches look for its bytes.
async fn narrow_env(limits: impl FnOnce(&mut fapi_host::SandboxSettings)) -> (SandboxEnv, Audit) {
    let audit = Audit::new();
    let options = SandboxOptions {
        audit: Some(audit.path()),
        ..SandboxOptions::default()
    };
    let env = SandboxEnv::start_for(
        true,
        |fed, s| {
            s.allow = vec![
                format!("{}/consumption.csv", fed.data_origin()),
                format!("{}/consumption.json", fed.data_origin()),
            ];
            limits(s);
        },
        options,
    )
    .await;
    env.client.danger_reveal_token().await.unwrap();
    (env, audit)
}

/// The audit file of a run.
struct Audit(tempfile::TempDir);

impl Audit {
    fn new() -> Audit {
        Audit(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> std::path::PathBuf {
        self.0.path().join("audit.jsonl")
    }
    /// The audit file's bytes. The sandbox creates the file when it starts: a missing file is a
    /// failure, not a clean (empty) haystack.
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.path())
            .unwrap_or_else(|e| panic!("the audit file {}: {e}", self.path().display()))
    }
}

/// The attempts of a hostile plugin's report.
fn attempts(out: &RunOutcome) -> Vec<Value> {
    let line = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("{e}: {line} / {}", String::from_utf8_lossy(&out.stderr)));
    report["attempts"].as_array().unwrap().clone()
}

fn err_name(a: &Value) -> &str {
    let name = a["err"].as_str().unwrap_or("");
    name.rsplit("::").next().unwrap_or(name)
}

/// Search what the guest printed, the audit file (which must hold the records of the requests the
/// test made) and the logs for every token issued and the key.
async fn no_secrets(env: &SandboxEnv, outs: &[&RunOutcome], audit: &Audit) {
    let audit = audit.bytes();
    assert!(!audit.is_empty(), "no audit record of the requests made");
    let mut seen: Vec<&[u8]> = vec![&audit];
    for out in outs {
        seen.push(&out.stdout);
        seen.push(&out.stderr);
    }
    env.assert_no_secrets(&seen).await;
}

#[tokio::test]
async fn a_plugin_cannot_read_the_credentials_open_sockets_or_look_up_names() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|_| {}).await;
    let settings = Settings::load(Some(&env.config), &Overrides::default()).unwrap();
    let as_authority = env
        .fed
        .issuer_url()
        .trim_start_matches("https://")
        .to_owned();
    let dp_authority = env
        .fed
        .data_origin()
        .trim_start_matches("https://")
        .to_owned();
    let args = [
        format!("file:{}", settings.private_key.display()),
        format!("file:{}", settings.certificate.display()),
        format!("file:{}", env.config.display()),
        format!("file:{}", env.config.parent().unwrap().display()),
        format!("tcp:{as_authority}"),
        format!("tcp:{dp_authority}"),
        "dns:localhost".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.run(guests::HOSTILE_STEAL, &args).await;
    assert_eq!(out.stopped, None, "{out:?}");
    let attempts = attempts(&out);
    let mut counted = 0;
    for a in &attempts {
        match a["attack"].as_str().unwrap() {
            "read-file" | "list-dir" | "tcp-connect" | "udp-send" | "name-lookup" => {
                assert!(a.get("err").is_some(), "this got through: {a}");
                counted += 1;
            }
            "env-and-args" => {
                let vars = a["ok"]["vars"].as_object().unwrap();
                assert!(vars.is_empty(), "environment visible: {a}");
                // Its arguments are exactly what the test passed, after the program name.
                let seen: Vec<&str> = a["ok"]["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(&seen[1..], &args[..], "{a}");
            }
            other => panic!("unexpected attempt {other}: {a}"),
        }
    }
    eprintln!("hostile-steal: {} attempts, all refused", attempts.len());
    // The key, the certificate, the configuration and its directory, nine usual files, five
    // directories, two TCP and two UDP targets, three names.
    assert_eq!(counted, 4 + 9 + 5 + 4 + 3, "{attempts:?}");
    // No request was made: the audit file exists and is empty; the token the host holds and the
    // key appear in nothing the plugin printed and no log line.
    assert_eq!(audit.bytes(), b"", "no request was made");
    env.assert_no_secrets(&[&out.stdout, &out.stderr]).await;
}

#[tokio::test]
async fn the_authorization_servers_plain_tls_endpoints_cannot_be_allow_listed_either() {
    let _serial = SERIAL.lock().await;
    let (env, _audit) = narrow_env(|_| {}).await;
    let meta = env.client.server_metadata().await.unwrap();
    // The federation's discovery names its endpoints twice: the mTLS aliases on the issuer's
    // origin, which the client uses, and the top-level ones on a plain-TLS listener of their own.
    let issuer = env.fed.issuer_url();
    let plain = meta
        .other_endpoints
        .iter()
        .map(|u| u.origin().ascii_serialization())
        .find(|o| *o != issuer)
        .expect("an endpoint outside the issuer's origin");
    let options = SandboxOptions {
        allow: vec![format!("{plain}/")],
        ..SandboxOptions::default()
    };
    let e = fapi_host::sandbox::Sandbox::new(env.client.clone(), options)
        .await
        .expect_err("allow-listing the authorization server's plain-TLS origin");
    let text = e.to_string();
    assert!(text.contains("authorization server"), "{text}");
    assert!(text.contains(&plain), "{text}");
}

#[tokio::test]
async fn a_plugin_cannot_reach_the_authorization_server_or_other_origins_by_any_spelling() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|_| {}).await;
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    sink.set_nonblocking(true).unwrap();
    let sink_url = format!("https://{}/collect", sink.local_addr().unwrap());
    let meta = env.client.server_metadata().await.unwrap();
    let mut denied: Vec<String> = meta.endpoints().iter().map(|u| u.to_string()).collect();
    denied.push(fapi_host::well_known_url(&env.fed.issuer_url()));
    denied.push(sink_url.clone());
    // Paths of the allowed origin outside the allow-list: /echo would show the Authorization header.
    denied.push(env.url("/echo"));
    denied.push(env.url("/sized?bytes=10"));
    let allowed = env.fed.data_json_url();
    let token_endpoint = meta.token_endpoint.to_string();
    let mut args: Vec<String> = denied.iter().map(|u| format!("deny:{u}")).collect();
    args.push(format!("redirect:{allowed}={token_endpoint}"));
    args.push(format!("redirect:{allowed}={sink_url}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // One allowed request first, so that the data provider has introspected the token already.
    let v = env.probe(&["fetch", &allowed]).await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
    let before = env.fed.counters();
    let out = env.run(guests::HOSTILE_EGRESS, &args).await;
    assert_eq!(out.stopped, None, "{out:?}");
    let after = env.fed.counters();
    let attempts = attempts(&out);

    let mut spellings = 0;
    for a in &attempts {
        let attack = a["attack"].as_str().unwrap();
        if attack == "redirect" {
            // Returned to the guest as it is; the host follows nothing.
            assert_eq!(a["ok"]["status"], 307, "{a}");
            continue;
        }
        assert!(attack.starts_with("spelling:"), "{a}");
        spellings += 1;
        let name = err_name(a);
        match a["via"].as_str().unwrap() {
            // The policy's refusal, or (for a URL the parser rejects) an invalid request.
            "fapi-fetch" => assert!(
                matches!(name, "Denied" | "InvalidRequest"),
                "fapi-fetch let this through: {a}"
            ),
            // The host's refusal, or wasi:http's own refusal to build such a request.
            // (wasmtime-wasi-http answers HttpProtocolError from `handle` for a scheme the host
            // does not support, such as `HTTPS` spelled in capitals, before anything is sent.)
            _ => assert!(
                name == "HttpRequestDenied"
                    || name == "HttpRequestUriInvalid"
                    || (name == "HttpProtocolError" && a["stage"] == "handle")
                    || a["stage"] == "request",
                "wasi:http let this through: {a}"
            ),
        }
    }
    assert!(spellings >= 6 * 2 * 20, "{spellings} spellings tried");
    eprintln!("hostile-egress: {spellings} spellings refused, 4 redirects returned unfollowed");
    // Server side: nothing reached the authorization server or the sink.
    assert_eq!(after.token_requests, before.token_requests);
    assert_eq!(after.discovery_requests, before.discovery_requests);
    assert_eq!(after.revocation_requests, before.revocation_requests);
    assert_eq!(after.introspection_requests, before.introspection_requests);
    assert!(
        sink.accept().is_err(),
        "a connection reached the exfiltration sink"
    );
    // Only the two redirect requests per interface reached the data provider.
    assert_eq!(after.dp_requests - before.dp_requests, 4);
    no_secrets(&env, &[&out], &audit).await;
}

#[tokio::test]
async fn a_plugin_cannot_set_credentials_or_smuggle_headers() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|_| {}).await;
    let url = env.fed.data_json_url();
    let before = env.fed.counters();
    let out = env.run(guests::HOSTILE_HEADERS, &[&url]).await;
    assert_eq!(out.stopped, None, "{out:?}");
    let after = env.fed.counters();
    let attempts = attempts(&out);
    assert!(attempts.len() >= 2 * (4 + 14 + 9 + 3), "{attempts:?}");
    let methods = attempts
        .iter()
        .filter(|a| a["attack"].as_str().unwrap().starts_with("method:"))
        .count();
    assert_eq!(methods, 2 * 4, "{attempts:?}");
    for a in &attempts {
        let name = err_name(a);
        let attack = a["attack"].as_str().unwrap();
        match a["via"].as_str().unwrap() {
            "fapi-fetch" => assert_eq!(name, "InvalidRequest", "{a}"),
            // wasi:http has no error case for a refused method: an internal error that says so.
            _ if attack.starts_with("method:") => {
                assert_eq!(name, "InternalError", "{a}");
                assert!(
                    a["detail"].as_str().unwrap().contains("is not allowed"),
                    "{a}"
                );
            }
            _ => assert!(
                matches!(
                    name,
                    "Forbidden"
                        | "InvalidSyntax"
                        | "HttpRequestHeaderSectionSize"
                        | "HttpRequestHeaderSize"
                ),
                "wasi:http let this through: {a}"
            ),
        }
    }
    assert_eq!(
        after.dp_requests, before.dp_requests,
        "a refused request reached the data provider"
    );
    // Refused before a request could be built or after: every method refusal is audited.
    let records = String::from_utf8_lossy(&audit.bytes()).into_owned();
    for via in ["fapi-fetch", "wasi-http"] {
        assert!(
            records.lines().any(|l| l.contains(r#""method":"TRACE""#)
                && l.contains(&format!(r#""interface":"{via}""#))
                && l.contains(r#""decision":"deny""#)),
            "no audit record of the refused TRACE via {via}"
        );
    }
    eprintln!("hostile-headers: {} attempts, all refused", attempts.len());
    no_secrets(&env, &[&out], &audit).await;
}

#[tokio::test]
async fn refused_requests_count_against_the_budget_and_cannot_flood_the_audit() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|s| s.max_requests = 5).await;
    // A URL of 100 KB (over the policy's 8 KiB), refused 200 times in a loop.
    let huge = format!("{}/x/{}", env.fed.data_origin(), "a".repeat(100_000));
    let before = env.fed.counters();
    let v = env.probe(&["fetch-many", &huge, "200"]).await;
    assert_eq!(v["ok"]["ok"], 0, "{v}");
    // The first five are refused for what they are; then the budget is spent.
    assert_eq!(v["ok"]["errors"]["InvalidRequest"], 5, "{v}");
    assert_eq!(v["ok"]["errors"]["LimitExceeded"], 195, "{v}");
    assert_eq!(env.fed.counters().dp_requests, before.dp_requests);
    // Recorded: the five and the first past the budget, each URL shortened to its start and
    // length; not 200 records of 100 KB.
    let bytes = audit.bytes();
    let records: Vec<Value> = String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6, "{records:?}");
    for r in &records {
        assert_eq!(r["decision"], "deny", "{r}");
        let url = r["url"].as_str().unwrap();
        let shortened = format!("... ({} bytes)", huge.len());
        assert!(url.len() < 400 && url.ends_with(&shortened), "{url}");
    }
    assert!(bytes.len() < 10_000, "{} bytes of audit", bytes.len());
    no_secrets(&env, &[], &audit).await;
}

#[tokio::test]
async fn wasi_http_requests_take_their_place_in_flight_before_their_bodies_are_read() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|s| s.max_concurrent_requests = 3).await;
    let url = env.fed.data_json_url();
    // Five POSTs started, bodies written last to first. The host admits requests when they are
    // sent, so the first three hold the places and the last two are refused before any of their
    // body is read into host memory (admitted when their bodies were complete, the last three
    // would have gone out instead, and every body of every request started been buffered).
    let v = env.probe(&["http-held-posts", &url, "5", "100000"]).await;
    let results = v["ok"]["results"].as_array().expect("results");
    assert_eq!(results.len(), 5, "{v}");
    for r in &results[..3] {
        assert!(r.is_u64(), "the first three were sent: {v}");
    }
    for r in &results[3..] {
        assert_eq!(
            r.as_str().map(|e| e.rsplit("::").next().unwrap()),
            Some("ConnectionLimitReached"),
            "{v}"
        );
    }
    no_secrets(&env, &[], &audit).await;
}

#[tokio::test]
async fn oversized_wasi_http_fields_stop_the_plugin_not_the_host() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|_| {}).await;
    let url = env.fed.data_json_url();
    let before = env.fed.counters();
    // wasmtime-wasi-http traps a guest whose header fields pass its size limit (128 KiB) as they
    // are built: the guest is stopped, nothing is sent, the host goes on.
    let out = env
        .run(
            guests::HOSTILE_HEADERS,
            &[&url, "http-oversize", "1", "1048576"],
        )
        .await;
    let why = out.stopped.clone().unwrap_or_default();
    assert!(why.contains("fields exceeds limit"), "{out:?}");
    assert_eq!(env.fed.counters().dp_requests, before.dp_requests);
    let v = env.probe(&["fetch", &url]).await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
    no_secrets(&env, &[&out], &audit).await;
}

#[tokio::test]
async fn a_plugin_cannot_exceed_its_budgets_by_mixing_interfaces() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|s| {
        s.max_concurrent_requests = 3;
        s.max_requests = 8;
        s.max_request_body = 1 << 20;
    })
    .await;
    let url = env.fed.data_json_url();
    let before = env.fed.counters();
    let out = env
        .run(guests::HOSTILE_LIMITS, &[&url, "3", "2000000"])
        .await;
    assert_eq!(out.stopped, None, "{out:?}");
    let after = env.fed.counters();
    let attempts = attempts(&out);
    let find = |attack: &str, via: &str| {
        attempts
            .iter()
            .find(|a| a["attack"] == attack && a["via"] == via)
            .unwrap_or_else(|| panic!("no {attack} via {via}: {attempts:?}"))
    };
    let concurrent = &find("concurrent", "both")["ok"];
    let in_flight =
        concurrent["fapi_ok"].as_u64().unwrap() + concurrent["http_ok"].as_u64().unwrap();
    assert_eq!(in_flight, 3, "in flight at once: {concurrent}");
    let budget = find("budget", "both")["ok"]["results"]
        .as_array()
        .unwrap()
        .clone();
    let succeeded = budget.iter().filter(|r| r.get("status").is_some()).count();
    // Refused attempts count against the budget too: at most 8 were let through, and every
    // attempt after the first refusal was refused with the limit's error.
    assert!(
        in_flight + succeeded as u64 <= 8,
        "total allowed: {budget:?}"
    );
    assert!(succeeded >= 1, "{budget:?}");
    assert!(
        budget.iter().skip(succeeded).all(|r| {
            let e = r["err"].as_str().unwrap_or("");
            e.ends_with("LimitExceeded") || e.ends_with("ConnectionLimitReached")
        }),
        "{budget:?}"
    );
    // Over the size limit and over the budget: either refusal will do.
    assert!(
        matches!(
            err_name(find("huge-body", "fapi-fetch")),
            "LimitExceeded" | "TooLarge"
        ),
        "{attempts:?}"
    );
    assert!(find("huge-body", "wasi:http").get("err").is_some());
    assert!(after.dp_requests - before.dp_requests <= 8);
    no_secrets(&env, &[&out], &audit).await;
}

#[tokio::test]
async fn request_bodies_over_the_limit_are_refused_through_both_interfaces() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|s| s.max_request_body = 1 << 20).await;
    let url = env.fed.data_json_url();
    let out = env
        .run(guests::HOSTILE_LIMITS, &[&url, "1", "2000000"])
        .await;
    let attempts = attempts(&out);
    let find = |via: &str| {
        attempts
            .iter()
            .find(|a| a["attack"] == "huge-body" && a["via"] == via)
            .unwrap()
    };
    assert_eq!(err_name(find("fapi-fetch")), "TooLarge", "{attempts:?}");
    assert_eq!(
        err_name(find("wasi:http")),
        "HttpRequestBodySize",
        "{attempts:?}"
    );
    no_secrets(&env, &[&out], &audit).await;
}

// Several worker threads, as `fapi-host run` and `batch` have: a guest runs on one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausting_plugins_are_stopped_while_the_host_serves_others() {
    let _serial = SERIAL.lock().await;
    let audit = Audit::new();
    let env = SandboxEnv::start_with(
        true,
        |s| {
            s.max_memory = 64 << 20;
            // `loop` burns this much CPU time before it is stopped: the window in which the
            // well-behaved plugin must get runs done (one takes tens of milliseconds).
            s.max_cpu = Duration::from_secs(2);
            s.max_wall = Duration::from_secs(60);
            s.max_response_body = 2 << 20;
        },
        SandboxOptions {
            audit: Some(audit.path()),
            ..SandboxOptions::default()
        },
    )
    .await;
    let huge = env.url("/sized?bytes=3000000");
    env.load(guests::HOSTILE_EXHAUST);
    env.load(guests::PROBE);
    // Every hostile mode at once, in the same sandbox as a well-behaved plugin that keeps fetching.
    let modes: [&[&str]; 5] = [
        &["memory"],
        &["loop"],
        &["recurse"],
        &["read-huge", &huge],
        &["trap-mid-request", &huge],
    ];
    // Each hostile plugin's outcome and when it ended.
    let over = std::sync::atomic::AtomicBool::new(false);
    let hostile = async {
        let results = join_all(modes.iter().map(|args| async {
            let out = env.run(guests::HOSTILE_EXHAUST, args).await;
            (args[0], out, Instant::now())
        }))
        .await;
        over.store(true, std::sync::atomic::Ordering::SeqCst);
        results
    };
    // The well-behaved plugin runs again and again until three of its runs started after every
    // hostile one had ended; when each run finished.
    let bystander = async {
        let mut finished = Vec::new();
        let mut slowest = Duration::ZERO;
        let mut after = 0;
        while after < 3 {
            let hostile_over = over.load(std::sync::atomic::Ordering::SeqCst);
            let t = Instant::now();
            let v = env.probe(&["repeat", &env.fed.data_json_url(), "5"]).await;
            assert_eq!(v["ok"]["requests"], 5, "{v}");
            slowest = slowest.max(t.elapsed());
            finished.push(Instant::now());
            after += usize::from(hostile_over);
        }
        (finished, slowest)
    };
    let (results, (finished, slowest)) = tokio::join!(hostile, bystander);
    let outcome = |mode: &str| &results.iter().find(|(m, ..)| *m == mode).unwrap().1;
    let stopped = |mode: &str| outcome(mode).stopped.clone().unwrap_or_default();
    for (mode, why) in [
        ("memory", "memory"),
        ("loop", "CPU time"),
        ("recurse", "stack overflow"),
        ("trap-mid-request", "trapped"),
    ] {
        assert!(stopped(mode).contains(why), "{mode}: {:?}", outcome(mode));
    }
    let read = outcome("read-huge");
    assert_eq!(read.stopped, None, "{read:?}");
    assert_eq!(err_name(&attempts(read)[0]), "TooLarge", "{read:?}");
    // The well-behaved plugin was served while the hostile ones ran, not after them: runs of it
    // finished before `loop` had burnt its CPU time and was stopped. (An order of events, not a
    // latency, so load cannot fail it; a host that held the bystander up until the hostile
    // plugins ended, at their limits or at the 60 s wall limit, would have none.)
    let loop_ended = results.iter().find(|(m, ..)| *m == "loop").unwrap().2;
    let during = finished.iter().filter(|t| **t < loop_ended).count();
    assert!(
        during >= 1,
        "no run of the well-behaved plugin finished while `loop` ran ({} runs in all)",
        finished.len()
    );
    eprintln!(
        "bystander: {} runs of 5 requests beside 5 hostile plugins, {during} of them while `loop` \
         ran, slowest {slowest:?}",
        finished.len()
    );
    // And the host still serves guests afterwards.
    let v = env.probe(&["fetch", &env.fed.data_url()]).await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
    let outs: Vec<&RunOutcome> = results.iter().map(|(_, o, _)| o).collect();
    no_secrets(&env, &outs, &audit).await;
}

/// The port of the authorization server's issuer (its mTLS listener).
fn issuer_port(env: &SandboxEnv) -> u16 {
    url::Url::parse(&env.fed.issuer_url())
        .unwrap()
        .port_or_known_default()
        .unwrap()
}

/// The origins of every authorization server endpoint discovery names, with their ports.
async fn authorization_server_ports(env: &SandboxEnv) -> Vec<u16> {
    let meta = env.client.server_metadata().await.unwrap();
    let mut ports: Vec<u16> = meta
        .endpoints()
        .iter()
        .filter_map(url::Url::port_or_known_default)
        .collect();
    ports.push(issuer_port(env));
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// An allow entry that names the authorization server under another name or address (every local
/// spelling of 127.0.0.1, and a name that a hosts-file style table points at it) is a
/// configuration error at start that names the entry and the authorization server, for each of its
/// listeners (the issuer's mTLS one and the plain-TLS one of the top-level endpoints).
#[tokio::test]
async fn an_allow_entry_reaching_the_authorization_server_under_another_name_is_refused_at_start() {
    let _serial = SERIAL.lock().await;
    let (env, _audit) = narrow_env(|_| {}).await;
    let settings = Settings::load(Some(&env.config), &Overrides::default()).unwrap();
    settings
        .client
        .resolve
        .insert("as-alias.test", vec!["127.0.0.1".parse().unwrap()]);
    let (client, _) = fapi_host::FapiClient::from_settings(&settings).unwrap();
    let ports = authorization_server_ports(&env).await;
    assert_eq!(ports.len(), 2, "{ports:?}");
    let mut refused = 0;
    for port in ports {
        for host in [
            "localhost",
            "LocalHost.",
            "sub.localhost",
            "[::1]",
            "0.0.0.0",
            "[::]",
            "127.0.0.2",
            "2130706433",
            "as-alias.test",
            "AS-ALIAS.test.",
        ] {
            let entry = format!("https://{host}:{port}/");
            let options = SandboxOptions {
                allow: vec![entry.clone()],
                ..SandboxOptions::default()
            };
            let e = fapi_host::sandbox::Sandbox::new(client.clone(), options)
                .await
                .expect_err(&entry);
            let text = e.to_string();
            assert!(
                text.contains("reaches the authorization server")
                    || text.contains("is the authorization server's origin"),
                "{entry}: {text}"
            );
            assert!(text.contains(&format!(":{port}")), "{entry}: {text}");
            assert!(text.contains("https://127.0.0.1:"), "{entry}: {text}");
            refused += 1;
        }
    }
    // The same names on a port where it does not listen are fine.
    let options = SandboxOptions {
        allow: vec![
            "https://as-alias.test:1/".into(),
            "https://localhost:1/".into(),
        ],
        ..SandboxOptions::default()
    };
    fapi_host::sandbox::Sandbox::new(client.clone(), options)
        .await
        .unwrap();
    eprintln!("{refused} allow entries naming the authorization server refused at start");
}

/// A sandbox environment whose client resolves `localhost` and `rebind.test` through a table in
/// which, at start, neither has an address (the start-up check cannot place them), both allowed
/// on the authorization server's port; the table, to give them one, and that port.
async fn with_names_of_no_address(
    options: SandboxOptions,
) -> (SandboxEnv, fapi_host::ResolveOverrides, u16) {
    let table = fapi_host::ResolveOverrides::new();
    table.insert("localhost", vec![]);
    table.insert("rebind.test", vec![]);
    let port = std::sync::Arc::new(std::sync::OnceLock::new());
    let env = SandboxEnv::start_configured(
        false,
        |fed, s| {
            let p = url::Url::parse(&fed.issuer_url()).unwrap().port().unwrap();
            port.set(p).unwrap();
            s.client.resolve = table.clone();
            s.sandbox.allow = vec![
                fed.data_json_url(),
                format!("https://localhost:{p}/"),
                format!("https://rebind.test:{p}/"),
            ];
        },
        options,
    )
    .await;
    let port = *port.get().unwrap();
    (env, table, port)
}

/// A name whose address changes after start (DNS rebinding, a record changed) to one of the
/// authorization server's is refused when the host connects, through both guest interfaces and a
/// batch processor's requests: `denied` with the reason, nothing sent, nothing reached the server.
/// `localhost` resolves to the server's real address here, under which its certificate is valid:
/// without the check, the requests would get answers.
#[tokio::test]
async fn a_name_that_turns_into_the_authorization_servers_address_is_refused_when_connecting() {
    let _serial = SERIAL.lock().await;
    let audit = Audit::new();
    let (env, table, port) = with_names_of_no_address(SandboxOptions {
        audit: Some(audit.path()),
        ..SandboxOptions::default()
    })
    .await;
    env.client.danger_reveal_token().await.unwrap();
    // A batch processor's sandbox over the same client, made while the names had no address.
    let processors = std::sync::Arc::new(
        fapi_host::sandbox::Sandbox::new(
            env.client.clone(),
            SandboxOptions {
                cache_dir: Some(fapi_tests::sandbox_env::cache_dir()),
                stdio: fapi_host::sandbox::Stdio::Capture,
                ..SandboxOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let processor = std::sync::Arc::new(
        processors
            .load(std::path::Path::new(guests::TEST_PROCESSOR))
            .unwrap(),
    );
    // Now the names go to the authorization server.
    table.insert("localhost", vec!["127.0.0.1".parse().unwrap()]);
    table.insert(
        "rebind.test",
        vec!["::1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    );

    // One allowed request first, so that the data provider has introspected the token already.
    let v = env.probe(&["fetch", &env.fed.data_json_url()]).await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
    let before = env.fed.counters();
    let discovery = format!("https://localhost:{port}/.well-known/openid-configuration");
    let token = format!("https://rebind.test:{port}/token");
    let mut outs = Vec::new();
    for (args, expected) in [
        (vec!["fetch", discovery.as_str()], "Denied"),
        (vec!["post", token.as_str(), "64"], "Denied"),
        (vec!["http", discovery.as_str()], "HttpRequestDenied"),
        (vec!["http-post", token.as_str(), "64"], "HttpRequestDenied"),
    ] {
        let out = env.run(guests::PROBE, &args).await;
        let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
        assert_eq!(err_name(&v), expected, "{args:?}: {v}");
        if expected == "Denied" {
            let detail = v["detail"].as_str().unwrap();
            assert!(
                detail.contains(&format!(":{port}"))
                    && detail.contains("an address of the authorization server"),
                "{args:?}: {detail}"
            );
        }
        outs.push(out);
    }
    // A batch processor fetching the same through fapi-fetch.
    let out_dir = tempfile::tempdir().unwrap();
    let name = format!("fetch:https:||localhost:{port}|.well-known|openid-configuration");
    let input = format!(
        "{{\"url\":\"{}\",\"name\":\"{name}\"}}\n",
        env.fed.data_json_url()
    );
    let summary = fapi_host::batch::Batch::new(
        env.client.clone(),
        fapi_host::batch::BatchOptions::new(out_dir.path()),
    )
    .with_plugin(processors.clone(), processor)
    .unwrap()
    .run(fapi_host::batch::Input::parse(&input))
    .await
    .unwrap();
    assert_eq!(summary.failed, 1, "{summary:?}");
    let manifest = std::fs::read_to_string(out_dir.path().join("manifest.jsonl")).unwrap();
    assert!(
        manifest.contains("an address of the authorization server"),
        "{manifest}"
    );

    let after = env.fed.counters();
    assert_eq!(after.discovery_requests, before.discovery_requests);
    assert_eq!(after.token_requests, before.token_requests);
    assert_eq!(after.introspection_requests, before.introspection_requests);
    // The refusals are audited as denials with their reason.
    let records = String::from_utf8_lossy(&audit.bytes()).into_owned();
    let denials = records
        .lines()
        .filter(|l| {
            l.contains(r#""decision":"deny""#)
                && l.contains("an address of the authorization server")
        })
        .count();
    assert_eq!(denials, 4, "{records}");
    let outs: Vec<&RunOutcome> = outs.iter().collect();
    no_secrets(&env, &outs, &audit).await;
}

/// The proxy's connections (hyper's client over rustls, not reqwest's) keep the same guard: a
/// route whose name turns into the authorization server's address after start is refused when
/// the proxy connects (403 `denied`, naming the address), and nothing reaches the server, while
/// the other routes go on. `localhost` resolves to the server's real address, under which its
/// certificate is valid: without the check, the request would get an answer.
#[tokio::test]
async fn a_proxy_route_whose_name_turns_into_the_authorization_servers_address_is_refused() {
    use fapi_host::proxy::{Listener, Proxy, ProxyOptions, Route};
    let _serial = SERIAL.lock().await;
    let (env, table, port) = with_names_of_no_address(SandboxOptions::default()).await;
    let data = url::Url::parse(&env.fed.data_json_url()).unwrap();
    let (data_dir, data_file) = data.as_str().rsplit_once('/').unwrap();
    let key = fapi_host::proxy::new_local_key();
    let routes = vec![
        Route::new("/data/", &format!("{data_dir}/")).unwrap(),
        Route::new("/l/", &format!("https://localhost:{port}/")).unwrap(),
        Route::new("/r/", &format!("https://rebind.test:{port}/")).unwrap(),
    ];
    let options = ProxyOptions {
        routes,
        local_key: key.clone(),
        max_request_body: 1 << 20,
        max_concurrent_requests: 16,
        caller_timeout: Duration::from_secs(10),
        audit: std::sync::Arc::new(fapi_host::sandbox::Audit::log_only()),
        threads: 1,
    };
    let proxy = std::sync::Arc::new(Proxy::new(env.client.clone(), options).await.unwrap());
    let listener = Listener::tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(proxy.serve(listener, async {
        let _ = stopped.await;
    }));
    let get = |path: String| {
        let key = key.clone();
        async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
                 Connection: close\r\n\r\n"
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            sock.read_to_end(&mut out).await.unwrap();
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    // The data provider first, so that it has introspected the token already.
    let answer = get(format!("/data/{data_file}")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Now the names go to the authorization server.
    table.insert("localhost", vec!["127.0.0.1".parse().unwrap()]);
    table.insert(
        "rebind.test",
        vec!["::1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    );
    let before = env.fed.counters();
    for path in ["/l/.well-known/openid-configuration", "/r/token"] {
        let answer = get(path.to_owned()).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"], "denied", "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(":{port}"))
                && message.contains("an address of the authorization server"),
            "{path}: {message}"
        );
    }
    let after = env.fed.counters();
    assert_eq!(
        (after.discovery_requests, after.token_requests),
        (before.discovery_requests, before.token_requests),
        "nothing reached the authorization server"
    );
    // The other route goes on.
    let answer = get(format!("/data/{data_file}")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

/// A denial suggests an allow entry only when that entry could not reach the authorization
/// server: never for its address and port under another name, nor for a name on its port that
/// only a lookup could place (the host looks up no name a guest chose). Both interfaces; the
/// wasi:http refusal's text is in the audit record.
#[tokio::test]
async fn a_denial_never_suggests_an_entry_that_reaches_the_authorization_server() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|_| {}).await;
    let port = issuer_port(&env);
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let free = elsewhere.local_addr().unwrap().port();
    let cases = [
        (format!("https://localhost:{port}/token"), None),
        (format!("https://sub.localhost:{port}/token"), None),
        (format!("https://data.example:{port}/x"), None),
        (
            format!("https://localhost:{free}/x"),
            Some(format!("--allow https://localhost:{free}/")),
        ),
        (
            format!("https://127.0.0.1:{free}/x"),
            Some(format!("--allow https://127.0.0.1:{free}/")),
        ),
    ];
    for (url, suggestion) in &cases {
        let v = env.probe(&["fetch", url]).await;
        assert_eq!(v["err"], "Denied", "{url}: {v}");
        let detail = v["detail"].as_str().unwrap();
        match suggestion {
            Some(s) => assert!(detail.contains(s.as_str()), "{url}: {detail}"),
            None => assert!(
                !detail.contains("--allow") && detail.contains("no entry is suggested"),
                "{url}: {detail}"
            ),
        }
        let v = env.probe(&["http", url]).await;
        assert_eq!(err_name(&v), "HttpRequestDenied", "{url}: {v}");
    }
    // The same texts in the audit records of both interfaces.
    let records = String::from_utf8_lossy(&audit.bytes()).into_owned();
    for (url, suggestion) in &cases {
        for via in ["fapi-fetch", "wasi-http"] {
            let line = records
                .lines()
                .find(|l| {
                    l.contains(&format!(r#""url":"{url}""#))
                        && l.contains(&format!(r#""interface":"{via}""#))
                })
                .unwrap_or_else(|| panic!("no audit record of {url} via {via}: {records}"));
            assert_eq!(line.contains("--allow"), suggestion.is_some(), "{line}");
        }
    }
    // The authorization server's own addresses are refused before the allow-list is consulted.
    for host in ["127.0.0.1", "[::1]", "0.0.0.0", "127.0.0.9"] {
        let url = format!("https://{host}:{port}/token");
        let v = env.probe(&["fetch", &url]).await;
        assert_eq!(v["err"], "Denied", "{url}: {v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("never reachable from a guest") && !detail.contains("--allow"),
            "{url}: {detail}"
        );
        let v = env.probe(&["http", &url]).await;
        assert_eq!(err_name(&v), "HttpRequestDenied", "{url}: {v}");
    }
    no_secrets(&env, &[], &audit).await;
}

/// A data provider that truly shares an address and port with the authorization server (virtual
/// hosts) is refused by default; `[sandbox] allow_authorization_server_address` names its origin
/// to allow it, and must be an allowed origin that is not the authorization server's own name.
/// Here the shared origin IS the authorization server (localhost): the opt-in's documented risk.
#[tokio::test]
async fn an_origin_sharing_the_authorization_servers_address_needs_an_explicit_opt_in() {
    let _serial = SERIAL.lock().await;
    let (env, _audit) = narrow_env(|_| {}).await;
    let port = issuer_port(&env);
    let shared = format!("https://localhost:{port}/");
    let sandbox_with = |allow: Vec<String>, opt_in: Vec<String>| {
        let mut settings = Settings::load(Some(&env.config), &Overrides::default()).unwrap();
        settings.sandbox.allow = allow;
        settings.sandbox.allow_authorization_server_address = opt_in;
        let (client, _) = fapi_host::FapiClient::from_settings(&settings).unwrap();
        fapi_host::sandbox::Sandbox::new(
            client,
            SandboxOptions {
                cache_dir: Some(fapi_tests::sandbox_env::cache_dir()),
                stdio: fapi_host::sandbox::Stdio::Capture,
                ..SandboxOptions::default()
            },
        )
    };
    let e = sandbox_with(vec![shared.clone()], vec![])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("allow_authorization_server_address"),
        "{e}"
    );
    for (allow, opt_in, why) in [
        (vec![], vec![shared.clone()], "is not in the allow-list"),
        (
            vec![shared.clone()],
            vec![format!("https://127.0.0.1:{port}/")],
            "authorization server's own origin",
        ),
        (
            vec![shared.clone()],
            vec![format!("{shared}path/")],
            "must be an origin",
        ),
    ] {
        let e = sandbox_with(allow, opt_in).await.unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    let sandbox = sandbox_with(vec![shared.clone()], vec![shared.clone()])
        .await
        .unwrap();
    let plugin = sandbox.load(std::path::Path::new(guests::PROBE)).unwrap();
    let discovery = format!("{shared}.well-known/openid-configuration");
    let before = env.fed.counters();
    let out = sandbox
        .run(
            &plugin,
            &["fetch".into(), discovery.clone()],
            fapi_host::sandbox::Stdio::Capture,
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(v["ok"]["status"], 200, "{v}");
    assert_eq!(
        env.fed.counters().discovery_requests,
        before.discovery_requests + 1
    );
    // The authorization server's own names stay refused.
    let out = sandbox
        .run(
            &plugin,
            &["fetch".into(), format!("https://127.0.0.1:{port}/token")],
            fapi_host::sandbox::Stdio::Capture,
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(v["err"], "Denied", "{v}");
}

/// 10,000 refused requests carrying huge strings of the guest's (1 MiB methods, 60 KB header
/// names, 8 KiB URLs) through each interface, run by the real binary at its default verbosity:
/// each refusal is recorded with the strings cut to their first bytes and their length, and the
/// audit file and stderr together stay under 10 MB per run, which ends normally.
#[tokio::test]
async fn refusals_of_huge_guest_strings_write_a_bounded_amount() {
    let _serial = SERIAL.lock().await;
    let (env, _audit) = narrow_env(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    // An origin outside the allow-list (port 1).
    let denied = "https://127.0.0.1:1/x/";
    for (command, interface) in [("flood", "fapi-fetch"), ("http-flood", "wasi-http")] {
        let audit = dir.path().join(format!("{command}.jsonl"));
        let started = Instant::now();
        let out = std::process::Command::new(fapi_tests::fapi_host_bin())
            .arg("--config")
            .arg(&env.config)
            .arg("run")
            .arg("--audit")
            .arg(&audit)
            .arg("--cache-dir")
            .arg(fapi_tests::sandbox_env::cache_dir())
            .arg(guests::PROBE)
            .args(["--", command, denied, "10000"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{command}: {stderr}");
        let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
        let errors = v["ok"]["errors"].as_object().unwrap();
        let refused: u64 = errors.values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(refused, 10_000, "{command}: {v}");
        assert_eq!(v["ok"]["ok"], 0, "{command}: {v}");
        let records = std::fs::read(&audit).unwrap();
        let written = records.len() + out.stderr.len();
        eprintln!(
            "{interface}: 10,000 refusals of huge strings in {:.1} s: audit {} bytes, stderr {} bytes",
            started.elapsed().as_secs_f64(),
            records.len(),
            out.stderr.len()
        );
        assert!(written < 10_000_000, "{interface}: {written} bytes written");
        // Every request is recorded, each with its strings bounded.
        let lines: Vec<Value> = String::from_utf8_lossy(&records)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10_000, "{interface}");
        for r in &lines {
            assert_eq!(r["decision"], "deny", "{r}");
            assert_eq!(r["interface"], interface, "{r}");
            for field in ["method", "url", "error"] {
                let text = r[field].as_str().unwrap();
                assert!(text.len() < 1024, "{field} of {} bytes: {r}", text.len());
            }
        }
        assert!(
            lines.iter().any(|r| r["method"]
                .as_str()
                .unwrap()
                .ends_with("... (1048576 bytes)")),
            "{interface}: no 1 MiB method recorded as its start and length"
        );
        // The default verbosity logs each refusal in one bounded line.
        assert!(
            stderr.lines().all(|l| l.len() < 1024),
            "{interface}: a stderr line over 1 KiB"
        );
    }
}

/// A guest that drops a handle it never had, uses a handle of another resource type, or holds more
/// handles than `[sandbox] max_handles` is stopped with one line that says which, never with
/// wasmtime's raw error and its backtrace.
#[tokio::test]
async fn misused_resource_handles_stop_the_guest_with_one_line() {
    let _serial = SERIAL.lock().await;
    let (env, _audit) = narrow_env(|s| s.max_handles = 1000).await;
    for (args, expected) in [
        (
            &["handle", "invented"][..],
            "does not hold, or one of another type",
        ),
        (
            &["handle", "wrong-type"][..],
            "does not hold, or one of another type",
        ),
        (
            &["handle", "many", "5000"][..],
            "more than 1000 resource handles at once ([sandbox] max_handles / --max-handles)",
        ),
    ] {
        let out = env.run(guests::PROBE, args).await;
        let why = out
            .stopped
            .clone()
            .unwrap_or_else(|| panic!("{args:?} was not stopped: {out:?}"));
        assert!(why.contains(expected), "{args:?}: {why}");
        assert!(
            !why.contains('\n') && !why.contains("backtrace") && why.len() < 400,
            "{args:?}: {why}"
        );
        assert_eq!(out.exit_code, 125, "{args:?}");
    }
    // Below the limit, holding handles is fine.
    let v = env.probe(&["handle", "many", "500"]).await;
    assert_eq!(v["ok"]["held"], 500, "{v}");
}

/// A request whose own timeout is 0 ms times out at once (fapi-fetch), and the host does not claim
/// to retry what it will not (nothing is retried past a request's deadline).
#[tokio::test]
async fn a_zero_timeout_is_a_timeout_without_a_retry() {
    let _serial = SERIAL.lock().await;
    let (env, _audit) = narrow_env(|_| {}).await;
    let logs = fapi_tests::capture_logs();
    let from = logs.lock().unwrap().len();
    let before = env.fed.counters();
    let v = env
        .probe(&["fetch-timeout", &env.fed.data_json_url(), "0"])
        .await;
    assert_eq!(v["err"], "Timeout", "{v}");
    // wasi:http's first-byte-timeout of 0 is taken as 1 ms, which a fast loopback answer may
    // beat: either outcome, but no retry claimed.
    let v = env
        .probe(&["http-timeout", &env.fed.data_json_url(), "0"])
        .await;
    assert!(
        v["ok"]["status"] == 200 || v["err"].as_str().is_some_and(|e| e.contains("Timeout")),
        "{v}"
    );
    // This test's lines only: other tests of the binary may retry their own requests meanwhile.
    let origin = env.fed.data_origin();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()[from..]).into_owned();
    let retried: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("retrying") && l.contains(origin.as_str()))
        .collect();
    assert!(retried.is_empty(), "{retried:#?}");
    assert!(env.fed.counters().dp_requests - before.dp_requests <= 2);
}

/// Under a path prefix, a `..;` segment is refused however it is encoded (`..%3b`, `%2e%2e%3B`,
/// a `/` encoded twice), through both interfaces, before anything is sent.
#[tokio::test]
async fn encoded_path_parameters_cannot_leave_a_path_prefix() {
    let _serial = SERIAL.lock().await;
    let (env, audit) = narrow_env(|_| {}).await;
    let origin = env.fed.data_origin();
    let before = env.fed.counters();
    for path in [
        "/consumption.json/..;/echo",
        "/consumption.json/..%3b/echo",
        "/consumption.json/..%3B/echo",
        "/consumption.json/%2e%2e%3b/echo",
        "/consumption.json/.%3b/echo",
        "/consumption.json/a%252F..%252F..%252Fecho",
    ] {
        let url = format!("{origin}{path}");
        let v = env.probe(&["fetch", &url]).await;
        assert_eq!(v["err"], "Denied", "{url}: {v}");
        assert!(v["detail"].as_str().unwrap().contains("path prefix"), "{v}");
        let v = env.probe(&["http", &url]).await;
        assert_eq!(err_name(&v), "HttpRequestDenied", "{url}: {v}");
    }
    assert_eq!(env.fed.counters().dp_requests, before.dp_requests);
    no_secrets(&env, &[], &audit).await;
}
