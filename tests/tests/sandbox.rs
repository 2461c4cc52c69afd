//! The sandbox end to end: real components from guest/ against the local federation.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fapi_federation::data;
use fapi_host::sandbox::{DirGrant, RunOutcome, SandboxOptions};
use fapi_tests::guests;
use fapi_tests::sandbox_env::SandboxEnv as Env;
use serde_json::Value;

/// The error case name (without a `Type::` prefix) and detail of a probe line.
fn err(v: &Value) -> (&str, &str) {
    let name = v["err"].as_str().unwrap_or("-");
    (
        name.rsplit("::").next().unwrap_or(name),
        v["detail"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn example_plugins_produce_the_right_output() {
    let e = Env::start(false, |_| {}).await;
    let csv = data::csv(data::DEFAULT_ROWS);

    let out = e.run(guests::FETCH, &[&e.fed.data_url()]).await;
    assert_eq!(
        (out.exit_code, &out.stopped),
        (0, &None),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, csv.as_bytes(), "fetch prints the CSV exactly");

    let out = e.run(guests::HTTP_FETCH, &[&e.fed.data_url()]).await;
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.stdout,
        csv.as_bytes(),
        "the wasi:http client gets the same bytes"
    );

    let out = e.run(guests::CSV_SUMMARY, &[&e.fed.data_url()]).await;
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<_> = (0..data::DEFAULT_ROWS).map(data::row).collect();
    let meters: u64 = rows.iter().map(|r| r.num_meters).sum();
    let mut top = rows.clone();
    top.sort_by_key(|r| std::cmp::Reverse(r.total_tenths));
    assert!(text.contains(&data::DEFAULT_ROWS.to_string()), "{text}");
    assert!(
        text.contains(&meters.to_string()),
        "total meters {meters} in {text}"
    );
    assert!(
        text.contains(&top[0].postcode),
        "top postcode {} in {text}",
        top[0].postcode
    );
    e.assert_no_secrets(&[&out.stdout, &out.stderr]).await;
}

#[tokio::test]
async fn egress_policy_denies_with_the_setting_to_change() {
    let e = Env::start(true, |_| {}).await;
    let ok = e.probe(&["fetch", &e.fed.data_url()]).await;
    assert_eq!(ok["ok"]["status"], 200, "{ok}");

    // Outside the allow-list: the message names the URL and the setting.
    let v = e.probe(&["fetch", "https://localhost:1/x"]).await;
    assert_eq!(err(&v).0, "Denied", "{v}");
    assert!(
        err(&v).1.contains("--allow https://localhost:1/") && err(&v).1.contains("[sandbox] allow"),
        "{v}"
    );
    // ... but never an entry that would reach the authorization server (here under another name).
    let other = e.fed.issuer_url().replace("127.0.0.1", "localhost") + "/x";
    let v = e.probe(&["fetch", &other]).await;
    assert_eq!(err(&v).0, "Denied", "{v}");
    assert!(
        !err(&v).1.contains("--allow") && err(&v).1.contains("no entry is suggested"),
        "{v}"
    );
    // http:// is refused by both interfaces.
    let plain = e.fed.data_url().replace("https://", "http://");
    assert_eq!(err(&e.probe(&["fetch", &plain]).await).0, "Denied");
    let v = e.probe(&["http", &plain]).await;
    assert!(v.get("err").is_some(), "{v}");
    // The authorization server: token, introspection, revocation and discovery, by any spelling.
    let meta = e.client.server_metadata().await.unwrap();
    let mut as_urls: Vec<String> = meta.endpoints().iter().map(|u| u.to_string()).collect();
    as_urls.push(fapi_host::well_known_url(&e.fed.issuer_url()));
    let port = meta.token_endpoint.port().unwrap();
    as_urls.push(format!("https://2130706433:{port}/token"));
    as_urls.push(format!("HTTPS://127.0.0.1.:{port}/token"));
    for (i, u) in as_urls.iter().enumerate() {
        assert_eq!(err(&e.probe(&["fetch", u]).await).0, "Denied", "{u}");
        let v = e.probe(&["http", u]).await;
        // The odd spellings (last two) may already fail in wasi:http's own URL handling.
        if i < as_urls.len() - 2 {
            assert_eq!(err(&v).0, "HttpRequestDenied", "{u}: {v}");
        } else {
            assert!(v.get("err").is_some(), "{u}: {v}");
        }
    }
    let before = e.fed.counters().token_requests;
    assert_eq!(
        before, 1,
        "only the host's own token request reached the AS"
    );
    // Spellings of an allowed origin are normalised, not bypassed.
    let port = e.fed.data_origin().rsplit(':').next().unwrap().to_owned();
    let v = e
        .probe(&[
            "fetch",
            &format!("https://0x7f.0.0.1:{port}/consumption.json"),
        ])
        .await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
    let v = e
        .probe(&[
            "fetch",
            &format!("https://user:pw@127.0.0.1:{port}/consumption.json"),
        ])
        .await;
    assert_eq!(err(&v).0, "Denied", "{v}");
    assert!(!err(&v).1.contains("pw"));
    let v = e
        .probe(&[
            "fetch",
            &format!("https://[::ffff:127.0.0.1]:{port}/consumption.json"),
        ])
        .await;
    assert_eq!(err(&v).0, "Denied", "{v}");
}

#[tokio::test]
async fn guest_headers_are_checked() {
    let e = Env::start(true, |_| {}).await;
    let url = e.fed.data_url();
    for name in [
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "Host",
        "x-fapi-interaction-id",
        "X-FAPI-Auth-Date",
    ] {
        let v = e.probe(&["fetch-header", &url, name, "x"]).await;
        assert_eq!(err(&v).0, "InvalidRequest", "{name}: {v}");
        let v = e.probe(&["http-header", &url, name, "x"]).await;
        assert_eq!(err(&v).0, "Forbidden", "{name}: {v}");
    }
    for (name, value) in [
        ("x-a", "a\\r\\nx-evil: 1"),
        ("x-a", "a\\0b"),
        ("x-a\\r\\n", "v"),
    ] {
        let v = e.probe(&["fetch-header", &url, name, value]).await;
        assert_eq!(err(&v).0, "InvalidRequest", "{name}: {v}");
    }
    let v = e.probe(&["many-headers", &url, "65", "1"]).await;
    assert_eq!(err(&v).0, "InvalidRequest", "{v}");
    let v = e.probe(&["many-headers", &url, "2", "9000"]).await;
    assert_eq!(err(&v).0, "InvalidRequest", "{v}");
    // What an allowed, header-echoing endpoint receives (and, being a test endpoint, shows the
    // guest): the interaction id the guest was told, and the host's Authorization header with the
    // token the federation issued, the very bytes the leak searches look for.
    let v = e.probe(&["echo", &e.url("/echo")]).await;
    // (The failure messages leave out the body and the header: they hold the token.)
    let body: Value = serde_json::from_str(v["ok"]["body"].as_str().unwrap()).unwrap();
    let id = v["ok"]["interaction_id"]
        .as_str()
        .expect("an interaction id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(
        body["x-fapi-interaction-id"].as_str(),
        Some(id),
        "the interaction id the provider received"
    );
    let issued = e.fed.issued_tokens();
    assert_eq!(issued.len(), 1, "one token for the whole test");
    assert!(
        body["authorization"].as_str() == Some(format!("Bearer {}", issued[0]).as_str()),
        "the host sends the token the federation recorded"
    );
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let e = Env::start(true, |_| {}).await;
    let target = format!("{}/steal", e.fed.issuer_url());
    assert_eq!(
        e.probe(&["fetch", &e.fed.data_url()]).await["ok"]["status"],
        200
    );
    let before = e.fed.counters();
    let v = e
        .probe(&[
            "fetch",
            &format!("{}?fault=redirect&location={target}", e.fed.data_url()),
        ])
        .await;
    assert_eq!(v["ok"]["status"], 307, "{v}");
    assert_eq!(v["ok"]["headers"]["location"], target.as_str());
    let v = e
        .probe(&[
            "http",
            &format!("{}?fault=redirect&location={target}", e.fed.data_url()),
        ])
        .await;
    assert_eq!(v["ok"]["status"], 307, "{v}");
    let after = e.fed.counters();
    assert_eq!(after.token_requests, before.token_requests);
    assert_eq!(after.discovery_requests, before.discovery_requests);
}

#[tokio::test]
async fn wasi_capabilities_are_denied_by_default_and_granted_explicitly() {
    let granted = tempfile::tempdir().unwrap();
    std::fs::write(granted.path().join("hello.txt"), "hi").unwrap();
    let e = Env::start_with(
        false,
        |_| {},
        SandboxOptions {
            dirs: vec![DirGrant {
                host: granted.path().to_owned(),
                guest: "/data".into(),
                writable: false,
            }],
            env: vec![("GRANTED".into(), "yes".into())],
            ..SandboxOptions::default()
        },
    )
    .await;
    // An unknown subcommand is the probe's usage error, not a run of `env`. (The probe returns
    // exit code 2 from `main`, which Rust's std for wasip2 reports as `exit(err)`: status 1.)
    let out = e.run(guests::PROBE, &["env", "x"]).await;
    assert_eq!((out.exit_code, &out.stopped), (1, &None), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "err": "Usage",
            "stage": "args",
            "detail": r#"unknown subcommand or arguments: ["env", "x"]"#,
        })
    );
    let v = e.probe(&["env"]).await;
    let vars = v["ok"]["vars"]
        .as_object()
        .or(v["ok"]["env"].as_object())
        .unwrap();
    assert_eq!(vars.len(), 1, "{v}");
    assert_eq!(vars["GRANTED"], "yes");
    assert_eq!(v["ok"]["args"], serde_json::json!(["probe.wasm", "env"]));
    assert_eq!(
        e.probe(&["read-file", "/data/hello.txt"]).await["ok"]["len"],
        2
    );
    for path in [
        "/etc/passwd",
        "/proc/self/environ",
        "../hello.txt",
        "/data/../../etc/passwd",
    ] {
        let v = e.probe(&["read-file", path]).await;
        assert!(v.get("err").is_some(), "{path}: {v}");
    }
    let port = e.fed.data_origin().rsplit(':').next().unwrap().to_owned();
    let v = e.probe(&["tcp", &format!("127.0.0.1:{port}")]).await;
    assert!(v.get("err").is_some(), "{v}");
    let v = e.probe(&["dns", "localhost"]).await;
    assert!(v.get("err").is_some(), "{v}");
    let v = e.probe(&["stdin"]).await;
    assert_eq!(v["ok"]["len"], 0, "{v}");
    let out = e.run(guests::PROBE, &["exit", "7"]).await;
    assert_eq!((out.exit_code, out.stopped), (7, None));
}

#[tokio::test]
async fn limits_stop_the_guest_not_the_host() {
    let e = Env::start(true, |s| {
        s.max_memory = 32 << 20;
        s.max_cpu = Duration::from_millis(500);
        s.max_wall = Duration::from_secs(3);
        s.max_request_body = 1 << 20;
        s.max_response_body = 2 << 20;
    })
    .await;
    let stopped = |o: &RunOutcome| o.stopped.clone().unwrap_or_default();

    let out = e.run(guests::PROBE, &["alloc", "64"]).await;
    assert_eq!(out.exit_code, 125);
    assert!(
        stopped(&out).contains("memory") && stopped(&out).contains("32 MiB"),
        "{out:?}"
    );
    let v = e.probe(&["try-alloc", "64"]).await;
    assert_eq!(err(&v).0, "TryReserveError", "{v}");

    let out = e.run(guests::PROBE, &["loop"]).await;
    assert!(stopped(&out).contains("CPU time"), "{out:?}");
    let out = e.run(guests::PROBE, &["recurse"]).await;
    assert!(stopped(&out).contains("stack overflow"), "{out:?}");
    let out = e
        .run(
            guests::PROBE,
            &["trap-mid-request", &e.url("/sized?bytes=1000000")],
        )
        .await;
    assert!(stopped(&out).contains("trapped"), "{out:?}");

    // Wall time: a body that trickles in (the guest is waiting, not computing).
    let slow = e.url("/sized?bytes=100000&fault=slow&delay_ms=400");
    let out = e.run(guests::PROBE, &["stream", &slow]).await;
    assert!(stopped(&out).contains("wall time"), "{out:?}");

    let v = e.probe(&["post", &e.url("/upload"), "2000000"]).await;
    assert_eq!(err(&v).0, "TooLarge", "{v}");
    let v = e.probe(&["read-all", &e.url("/sized?bytes=3000000")]).await;
    assert_eq!(err(&v).0, "TooLarge", "{v}");
    let v = e.probe(&["stream", &e.url("/sized?bytes=3000000")]).await;
    assert_eq!(err(&v).0, "TooLarge", "{v}");
    let v = e.probe(&["stream", &e.url("/sized?bytes=1500000")]).await;
    assert_eq!(v["ok"]["len"], 1_500_000, "{v}");
    assert!(v["ok"]["max_chunk"].as_u64().unwrap() <= 65536);

    // After all that, the host still serves guests.
    let v = e.probe(&["fetch", &e.fed.data_url()]).await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
}

#[tokio::test]
async fn request_budgets_are_shared_by_both_interfaces() {
    let e = Env::start(false, |s| {
        s.max_concurrent_requests = 3;
        s.max_requests = 100;
    })
    .await;
    let v = e.probe(&["mixed", &e.fed.data_json_url(), "3"]).await;
    assert_eq!(v["ok"]["fapi_ok"], 3, "{v}");
    assert_eq!(v["ok"]["http_ok"], 0, "wasi:http shares the budget: {v}");
    let v = e
        .probe(&["concurrent-http", &e.fed.data_json_url(), "5"])
        .await;
    assert_eq!(
        v["ok"]["ok"]
            .as_u64()
            .or(v["ok"]["succeeded"].as_u64())
            .unwrap_or(0),
        3,
        "{v}"
    );

    let e = Env::start(false, |s| s.max_requests = 2).await;
    let v = e.probe(&["mixed", &e.fed.data_json_url(), "2"]).await;
    assert_eq!(v["ok"]["fapi_ok"], 2, "{v}");
    assert_eq!(v["ok"]["http_ok"], 0, "{v}");
    assert!(
        v.to_string().contains("max_requests") || v.to_string().contains("ConnectionLimitReached"),
        "{v}"
    );
}

#[tokio::test]
async fn streaming_a_large_response_is_exact() {
    let e = Env::start(false, |_| {}).await;
    let n: u64 = 20 << 20;
    let v = e
        .probe(&["stream", &e.url(&format!("/sized?bytes={n}"))])
        .await;
    assert_eq!(v["ok"]["len"], n, "{v}");
    let mut expected = sha2_hex_of_sized(n);
    expected.make_ascii_lowercase();
    assert_eq!(v["ok"]["sha256"], expected.as_str());
}

fn sha2_hex_of_sized(n: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut k = 0;
    let mut done = 0;
    while done < n {
        let c = data::sized_chunk(k, n);
        done += c.len() as u64;
        h.update(&c);
        k += 1;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// An environment whose client waits one second (`timeout_seconds`) and never tries a request or
/// a token request again, so that each failure case is one request and quick.
async fn impatient_env(faults: bool) -> Env {
    Env::start_configured(
        faults,
        |_, s| {
            s.client.timeout = Duration::from_secs(1);
            s.client.retries = 0;
            s.client.token_retries = 0;
        },
        SandboxOptions::default(),
    )
    .await
}

#[tokio::test]
async fn a_missing_token_reaches_the_guest_as_token_unavailable() {
    use fapi_federation::AsFault;
    // A silent authorization server is reported after one token request's second.
    let e = impatient_env(false).await;
    let mut seen = Vec::new();
    let url = e.fed.data_url();

    // The host holds a token while everything below fails, so that the leak search at the end
    // can find it if a failure quoted it: one said to last 1 s, then expired. (A token still
    // valid would serve the requests whatever the server did.)
    e.fed.set_as_fault(Some(AsFault::ExpiresIn(1)));
    e.client.danger_reveal_token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The authorization server refuses: its RFC 6749 error code, through either interface.
    e.fed.set_as_fault(Some(AsFault::InvalidClient));
    let v = e.probe(&["fetch", &url]).await;
    seen.push(v.to_string());
    let (name, detail) = err(&v);
    assert_eq!(name, "TokenUnavailable", "{v}");
    assert!(detail.starts_with("invalid_client"), "{v}");
    let v = e.probe(&["http", &url]).await;
    seen.push(v.to_string());
    let (name, detail) = err(&v);
    assert_eq!(name, "InternalError", "{v}");
    assert!(detail.contains("token unavailable: invalid_client"), "{v}");

    // The authorization server does not answer: the token is unavailable (a guest can tell this
    // from the data provider being unreachable or slow), and the message says how it failed.
    e.fed
        .set_as_fault(Some(AsFault::SlowToken(Duration::from_secs(10))));
    let t0 = std::time::Instant::now();
    let v = e.probe(&["fetch", &url]).await;
    seen.push(v.to_string());
    let (name, detail) = err(&v);
    assert_eq!(name, "TokenUnavailable", "{v}");
    assert!(
        detail.starts_with("authorization_server_unreachable") && detail.contains("timed out"),
        "{v}"
    );
    let v = e.probe(&["http", &url]).await;
    seen.push(v.to_string());
    let (name, detail) = err(&v);
    assert_eq!(name, "InternalError", "{v}");
    assert!(
        detail.contains("token unavailable: authorization_server_unreachable"),
        "{v}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "each guest waited one token timeout, not the server's 10 s: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        e.fed.counters().dp_requests,
        0,
        "nothing reached the data provider"
    );

    // The server is back: the next request gets a token and its data.
    e.fed.set_as_fault(None);
    let v = e.probe(&["fetch", &url]).await;
    seen.push(v.to_string());
    assert_eq!(v["ok"]["status"], 200, "{v}");
    assert_eq!(
        e.fed.counters().tokens_issued,
        2,
        "the expired one and this"
    );
    // What the guests were told names neither token and no key.
    let seen: Vec<&[u8]> = seen.iter().map(|s| s.as_bytes()).collect();
    e.assert_no_secrets(&seen).await;
}

#[tokio::test]
async fn timeouts_reach_the_guest_as_timeout() {
    // Which timeout fired is told by events, not by the wall clock of a loaded machine: the
    // provider answers the slow head with a 200 after 4 s, so a timeout can only be one that is
    // shorter.
    let slow_head = "/items/1?fault=slow_head&delay_ms=4000";

    // The guest's own limit until the response head, through either interface: with a client
    // that waits 30 s, only the guest's 300 ms can end the request before the 200 arrives.
    let patient = Env::start_configured(
        true,
        |_, s| s.client.timeout = Duration::from_secs(30),
        SandboxOptions::default(),
    )
    .await;
    let v = patient.probe(&["fetch", &patient.url("/items/1")]).await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
    let fetch = patient
        .probe(&["fetch-timeout", &patient.url(slow_head), "300"])
        .await;
    assert_eq!(
        (err(&fetch), fetch["stage"].as_str()),
        (("Timeout", ""), Some("fetch")),
        "the guest's 300 ms, not the server's 4 s: {fetch}"
    );
    let http = patient
        .probe(&["http-timeout", &patient.url(slow_head), "300"])
        .await;
    assert_eq!(
        err(&http).0,
        "HttpResponseTimeout",
        "the guest's 300 ms: {http}"
    );
    patient
        .assert_no_secrets(&[fetch.to_string().as_bytes(), http.to_string().as_bytes()])
        .await;
    drop(patient);

    let e = impatient_env(true).await;
    let mut seen = Vec::new();
    let slow_head = e.url(slow_head);
    // Loaded and with a token before anything is timed.
    let v = e.probe(&["fetch", &e.url("/items/1")]).await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
    // Without a limit of the guest's, the client's `timeout_seconds` (1 s): a timeout before the
    // server's 200 at 4 s, and (a lower bound, which load cannot break) not before the 1 s.
    let t0 = std::time::Instant::now();
    let v = e.probe(&["fetch", &slow_head]).await;
    seen.push(v.to_string());
    assert_eq!(err(&v).0, "Timeout", "{v}");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // A body that stalls longer than `timeout_seconds`: a timeout while reading it.
    let stalled = e.url("/sized?bytes=20000&fault=slow&delay_ms=4000");
    let v = e.probe(&["fetch", &stalled]).await;
    seen.push(v.to_string());
    assert_eq!(
        (err(&v), v["stage"].as_str()),
        (("Timeout", ""), Some("body")),
        "{v}"
    );
    let v = e.probe(&["http", &stalled]).await;
    seen.push(v.to_string());
    assert_eq!(
        (err(&v), v["stage"].as_str()),
        (("StreamError", "HTTP response timeout"), Some("body")),
        "{v}"
    );
    // A body cut short is not a timeout.
    let reset = e.url("/sized?bytes=200000&fault=reset");
    let v = e.probe(&["fetch", &reset]).await;
    seen.push(v.to_string());
    assert_eq!(
        (err(&v).0, v["stage"].as_str()),
        ("BodyInterrupted", Some("body")),
        "{v}"
    );
    // What the guests were told names no token and no key.
    let seen: Vec<&[u8]> = seen.iter().map(|s| s.as_bytes()).collect();
    e.assert_no_secrets(&seen).await;
}

#[tokio::test]
async fn a_guest_timeout_bounds_the_whole_request_retries_and_waits_included() {
    // Retries on, and a provider that answers 503 with `Retry-After: 5` ten times: without a
    // deadline over the whole request the guest would wait 5 s per retry.
    let e = Env::start_configured(
        true,
        |_, s| {
            s.client.retries = 3;
        },
        SandboxOptions::default(),
    )
    .await;
    let mut seen = Vec::new();
    let v = e.probe(&["fetch", &e.url("/items/1")]).await;
    assert_eq!(v["ok"]["status"], 200, "{v}");
    let busy = e.url("/items/1?fault=503&fault_times=10&retry_after=5");
    let t0 = std::time::Instant::now();
    let v = e.probe(&["fetch-timeout", &busy, "800"]).await;
    seen.push(v.to_string());
    assert_eq!(err(&v).0, "Timeout", "{v}");
    let v = e.probe(&["http-timeout", &busy, "800"]).await;
    seen.push(v.to_string());
    assert_eq!(err(&v).0, "HttpResponseTimeout", "{v}");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "two requests of 800 ms took {:?}",
        t0.elapsed()
    );
    let seen: Vec<&[u8]> = seen.iter().map(|s| s.as_bytes()).collect();
    e.assert_no_secrets(&seen).await;
}

#[tokio::test]
async fn tokens_never_reach_the_guest_or_the_logs() {
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let e = Env::start_with(
        true,
        |_| {},
        SandboxOptions {
            audit: Some(audit.clone()),
            ..SandboxOptions::default()
        },
    )
    .await;
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for args in [
        vec!["fetch".to_string(), e.fed.data_url()],
        vec!["http".into(), e.fed.data_url()],
        vec![
            "fetch".into(),
            format!("{}?fault=invalid_token&fault_times=1", e.fed.data_url()),
        ],
        vec![
            "fetch".into(),
            format!("{}?fault=503&fault_times=1", e.fed.data_url()),
        ],
        vec![
            "fetch".into(),
            e.client
                .server_metadata()
                .await
                .unwrap()
                .token_endpoint
                .to_string(),
        ],
        vec!["env".into()],
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = e.run(guests::PROBE, &a).await;
        seen.push(out.stdout.to_vec());
        seen.push(out.stderr.to_vec());
    }
    // The file the host writes: the audit log, with one record per request above.
    let audit = std::fs::read(&audit).unwrap();
    assert!(
        audit
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            >= 5
    );
    seen.push(audit);
    // The provider refused the first token once (`invalid_token`), so the host got a second: the
    // search below looks for both, the refused one too.
    assert_eq!(
        e.fed.issued_tokens().len(),
        2,
        "the refused token and its replacement"
    );
    let refs: Vec<&[u8]> = seen.iter().map(Vec::as_slice).collect();
    e.assert_no_secrets(&refs).await;
}
