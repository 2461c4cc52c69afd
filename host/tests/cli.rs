//! The `fapi-host` binary: fetch, token, introspect, check, dev, and its exit codes.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{Fed, contains, fapi_host};
use fapi_federation::{AsFault, FederationConfig};

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn fetch_writes_the_body_and_shares_one_token() {
    let f = Fed::start(FederationConfig::default()).await;
    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    let (data, json) = (f.fed.data_url(), f.fed.data_json_url());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fapi_host(&["--config", &cfg, "fetch", &data, &json], &dir)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", s(&err));
    let out = s(&out);
    assert!(out.starts_with("postcode,num_meters"), "{out:.100}");
    assert!(out.contains("[{"), "the JSON body follows the CSV");
    assert_eq!(f.fed.counters().token_requests, 1);
}

#[tokio::test]
async fn fetch_include_output_file_and_post_data() {
    let f = Fed::start(FederationConfig::default()).await;
    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    let out_file = f.path("out.csv");
    let out_arg = out_file.to_str().unwrap().to_owned();
    let data = f.fed.data_url();
    let upload = format!("{}/upload", f.fed.data_origin());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fapi_host(
            &[
                "--config", &cfg, "fetch", "-i", "-o", &out_arg, &data, "-d", "hello", &upload,
            ],
            &dir,
        )
    })
    .await
    .unwrap();
    // -d applies to both URLs (POST), as in curl; the CSV endpoint refuses POST: an HTTP error
    // status (exit 1) naming the 405, and the upload is still done.
    let err = s(&err);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("405"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.starts_with("HTTP/1.1 "), "{written:.100}");
    let out = s(&out);
    assert!(out.contains("\"bytes\":5"), "{out}");
}

#[tokio::test]
async fn exit_codes_are_distinct() {
    let f = Fed::start(FederationConfig::default()).await;
    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    let run = |args: Vec<String>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            fapi_host(&a, &dir)
        })
    };
    // 1: HTTP error status.
    let (code, _, err) = run(vec![
        "--config".into(),
        cfg.clone(),
        "fetch".into(),
        format!("{}/nope", f.fed.data_origin()),
    ])
    .await
    .unwrap();
    assert_eq!(code, 1, "{}", s(&err));
    assert!(s(&err).contains("404"));
    // 2: usage.
    let (code, _, _) = run(vec!["fetch".into()]).await.unwrap();
    assert_eq!(code, 2);
    // 3: configuration.
    let (code, _, err) = run(vec![
        "--config".into(),
        "/nonexistent/fapi.toml".into(),
        "fetch".into(),
        f.fed.data_url(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 3, "{}", s(&err));
    assert!(s(&err).contains("/nonexistent/fapi.toml"));
    let bad = f.path("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&f.config).unwrap() + "\nclient_secret = \"x\"\n",
    )
    .unwrap();
    let (code, _, err) = run(vec![
        "--config".into(),
        bad.to_str().unwrap().into(),
        "token".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 3);
    assert!(s(&err).contains("client_secret"), "{}", s(&err));
    // 4: authorization server.
    f.fed
        .set_as_fault(Some(AsFault::IssuerMismatch("https://x.example".into())));
    let (code, _, err) = run(vec![
        "--config".into(),
        cfg.clone(),
        "fetch".into(),
        f.fed.data_url(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 4, "{}", s(&err));
    assert!(s(&err).contains("issuer mismatch"));
    f.fed.set_as_fault(None);
    // 5: TLS: trust only another CA.
    let other = fapi_federation::Pki::generate().unwrap();
    let ca = f.path("other-ca.pem");
    std::fs::write(&ca, other.ca_pem()).unwrap();
    let (code, _, err) = run(vec![
        "--config".into(),
        cfg.clone(),
        "--ca-bundle".into(),
        ca.to_str().unwrap().into(),
        "token".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 5, "{}", s(&err));
    // 6: refused locally.
    let (code, _, err) = run(vec![
        "--config".into(),
        cfg.clone(),
        "fetch".into(),
        "-H".into(),
        "Authorization: Bearer mine".into(),
        f.fed.data_url(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 6, "{}", s(&err));
    assert!(s(&err).contains("authorization"));
}

#[tokio::test]
async fn verbose_logs_redact_the_token() {
    let f = Fed::with_faults().await;
    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    let echo = format!("{}/echo", f.fed.data_origin());
    let data = f.fed.data_url();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fapi_host(&["--config", &cfg, "-vvv", "fetch", &echo, &data], &dir)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", s(&err));
    let out = s(&out);
    let start = out.find("Bearer ").unwrap() + "Bearer ".len();
    let token: String = out[start..]
        .chars()
        .take_while(|c| !matches!(c, '"' | ',' | '}' | ']'))
        .collect();
    assert!(token.len() >= 22, "{token}");
    let err = s(&err);
    assert!(err.contains("Bearer [redacted]"), "{err}");
    assert!(err.contains("x-fapi-interaction-id"), "{err}");
    assert!(
        !contains(err.as_bytes(), token.as_bytes()),
        "the token is in the logs"
    );
}

#[tokio::test]
async fn token_introspect_and_check() {
    let f = Fed::start(FederationConfig::default()).await;
    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    let run = |args: Vec<&'static str>| {
        let (cfg, dir) = (cfg.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            let mut a = vec!["--config", cfg.as_str()];
            a.extend(args);
            fapi_host(&a, &dir)
        })
    };
    let (code, out, _) = run(vec!["token", "--json"]).await.unwrap();
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert!(v.get("access_token").is_none());
    let (code, out, _) = run(vec!["token", "--json", "--reveal-token"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v["access_token"].as_str().unwrap().len() >= 22);
    let (code, out, _) = run(vec!["introspect", "--json"]).await.unwrap();
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["active"], true);
    let (code, out, err) = run(vec!["check"]).await.unwrap();
    assert_eq!(code, 0, "{}{}", s(&out), s(&err));
    let out = s(&out);
    for what in [
        "configuration",
        "key and certificate",
        "validity",
        "chain",
        "discovery",
        "token endpoint",
        "token:",
        "scopes",
    ] {
        assert!(out.contains(&format!("ok    {what}")), "{what}: {out}");
    }
    // A key that does not match: check fails with the fix.
    let b = f.fed.pki().client("consumer-b").unwrap();
    let key = f.path("b.key");
    std::fs::write(&key, &b.key_pem).unwrap();
    let (cfg2, dir2) = (cfg.clone(), dir.clone());
    let key_arg = key.to_str().unwrap().to_owned();
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        fapi_host(
            &["--config", &cfg2, "--private-key", &key_arg, "check"],
            &dir2,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 7);
    assert!(
        s(&out).contains("FAIL  key and certificate") && s(&out).contains("does not match"),
        "{}",
        s(&out)
    );
}

/// `fapi-host dev` as a user runs it: PKI and files written, servers up, a fetch with the written
/// configuration works, SIGTERM stops it cleanly, and a second start reuses the PKI.
#[test]
fn dev_runs_the_federation_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let fed_dir = dir.path().join("fed");
    let fed_arg = fed_dir.to_str().unwrap();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fapi-host"))
            .args(["dev", "--dir", fed_arg])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // `dev` writes federation.json in place (not atomically): wait until it holds a whole JSON
    // document (a prefix of one never parses: the closing brace comes last).
    let wait_for = |path: &std::path::Path| -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let state = match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(info) => return info,
                    Err(e) => format!("not whole JSON: {e}"),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{} after 60 s: {state}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let json_path = fed_dir.join("federation.json");
    let mut child = start();
    let info = wait_for(&json_path);
    for key in [
        "issuer_url",
        "data_url",
        "data_json_url",
        "client_id",
        "requested_scopes",
        "private_key",
        "certificate",
        "ca_bundle",
        "config",
    ] {
        assert!(info[key].is_string(), "{key} missing in {info}");
    }
    let config = info["config"].as_str().unwrap();
    let (code, out, err) = fapi_host(
        &[
            "--config",
            config,
            "fetch",
            info["data_url"].as_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{}", s(&err));
    assert!(s(&out).starts_with("postcode"));
    let ca_before = std::fs::read(fed_dir.join("ca.pem")).unwrap();

    let stop = |child: &mut std::process::Child| {
        let pid = child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "dev did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let status = stop(&mut child);
    assert!(status.success(), "{status:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(stdout.contains("fapi-host --config"), "{stdout}");
    assert!(stdout.contains("curl"), "{stdout}");

    std::fs::remove_file(&json_path).unwrap();
    let mut child = start();
    let again = wait_for(&json_path);
    assert_eq!(again["config"], info["config"], "{again}");
    assert_eq!(
        std::fs::read(fed_dir.join("ca.pem")).unwrap(),
        ca_before,
        "the PKI is reused"
    );
    assert!(stop(&mut child).success());
}

/// An HTTPS server with `server`'s certificate that answers every request with `200 body`.
async fn https_responder(server: &fapi_federation::ServerIdentity, body: &'static str) -> u16 {
    let (origin, _task) = fapi_federation::one_reply_server(server.server_config().unwrap(), body)
        .await
        .unwrap();
    url::Url::parse(&origin).unwrap().port().unwrap()
}

/// Servers are trusted when they chain to `ca_bundle` OR to the system roots: the bundle is tried
/// first (the system roots are read only when it does not answer), and the union is what counts.
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` stand in for the system roots.
#[tokio::test]
async fn servers_chaining_to_the_system_roots_are_trusted_beside_the_bundle() {
    let f = Fed::start(FederationConfig::default()).await;
    let pki = f.fed.pki();
    let outside = pki.issue_server(&["127.0.0.1"], true).unwrap();
    let port = https_responder(&outside, "outside the bundle").await;
    let url = format!("https://127.0.0.1:{port}/data");
    let no_dir = f.path("no-system-certs");
    std::fs::create_dir_all(&no_dir).unwrap();
    let with_its_ca = f.path("system-with-its-ca.pem");
    std::fs::write(&with_its_ca, &outside.ca_pem).unwrap();
    let without = f.path("system-without-it.pem");
    std::fs::write(&without, "").unwrap();

    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    let run = |system: std::path::PathBuf| {
        let (cfg, dir, url, no_dir) = (cfg.clone(), dir.clone(), url.clone(), no_dir.clone());
        tokio::task::spawn_blocking(move || {
            common::fapi_host_env(
                &["--config", &cfg, "fetch", &url],
                &dir,
                &[("SSL_CERT_FILE", &system), ("SSL_CERT_DIR", &no_dir)],
            )
        })
    };
    // The token comes from the federation (its chain ends at the bundle); the server's chain ends
    // at a "system" root.
    let (code, out, err) = run(with_its_ca).await.unwrap();
    assert_eq!(code, 0, "{}", s(&err));
    assert_eq!(s(&out), "outside the bundle");
    assert_eq!(f.fed.counters().token_requests, 1);

    // Neither the bundle nor the (now empty) system roots hold its CA: refused at the handshake.
    let (code, out, err) = run(without).await.unwrap();
    assert_eq!(
        code,
        5,
        "a TLS failure is a network error (exit 5): {}",
        s(&err)
    );
    assert!(out.is_empty());
    let err = s(&err).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
    assert!(
        err.contains("unknownissuer") || err.contains("unknown issuer"),
        "{err}"
    );
}

/// `fapi-host token | head -c1`: the reader of stdout is gone before anything is written. The
/// command ends quietly (status 0, nothing on stderr) instead of panicking in `println!`.
#[tokio::test]
async fn a_closed_stdout_ends_token_introspect_and_check_quietly() {
    let f = Fed::start(FederationConfig::default()).await;
    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    for args in [
        vec!["token"],
        vec!["token", "--json"],
        vec!["introspect"],
        vec!["introspect", "--json"],
        vec!["check"],
    ] {
        let (cfg, dir) = (cfg.clone(), dir.clone());
        let what = args.join(" ");
        let (status, err) = tokio::task::spawn_blocking(move || {
            // A pipe whose read end is closed before the command starts: every write fails
            // with EPIPE (Rust ignores SIGPIPE).
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_fapi-host"))
                .arg("--config")
                .arg(&cfg)
                .args(&args)
                .current_dir(&dir)
                .env_remove("FAPI_CONFIG")
                .stdin(std::process::Stdio::null())
                .stdout(writer)
                .stderr(std::process::Stdio::piped())
                .output()
                .unwrap();
            (out.status, s(&out.stderr))
        })
        .await
        .unwrap();
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(status.code(), Some(0), "{what}: {err}");
        assert!(err.is_empty(), "{what}: {err}");
    }
}

/// `fetch -H` refuses every header fapi-host sets itself, with one kind of message and before
/// anything is sent; other headers pass.
#[tokio::test]
async fn fetch_refuses_the_headers_the_client_owns() {
    let f = Fed::with_faults().await;
    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    let echo = format!("{}/echo", f.fed.data_origin());
    let run = |header: &str| {
        let (cfg, dir, echo, header) = (cfg.clone(), dir.clone(), echo.clone(), header.to_owned());
        tokio::task::spawn_blocking(move || {
            fapi_host(&["--config", &cfg, "fetch", "-H", &header, &echo], &dir)
        })
    };
    for header in [
        "Host: evil.example",
        "host:evil.example",
        "Content-Length: 5",
        "Transfer-Encoding: chunked",
        "Connection: close",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Trailer: x-sum",
        "Upgrade: h2c",
        "Proxy-Connection: keep-alive",
        "Authorization: Bearer mine",
        "Proxy-Authorization: Basic eA==",
        "x-fapi-interaction-id: 1",
        "DPoP: eyJ0eXAiOiJkcG9wK2p3dCJ9",
        "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
    ] {
        let (code, out, err) = run(header).await.unwrap();
        let err = s(&err);
        let name = header.split(':').next().unwrap().to_ascii_lowercase();
        assert_eq!(code, 6, "{header}: {err}");
        assert!(
            err.contains(&format!(
                "header {name} is set by the host and cannot be given"
            )),
            "{header}: {err}"
        );
        assert!(out.is_empty(), "{header}");
    }
    let c = f.fed.counters();
    assert_eq!(
        (c.token_requests, c.dp_requests),
        (0, 0),
        "nothing was sent"
    );

    // A header of the caller's own passes through.
    let (code, out, err) = run("X-Request-Note: mine").await.unwrap();
    assert_eq!(code, 0, "{}", s(&err));
    assert!(s(&out).contains("mine"), "{}", s(&out));
}

/// Under the default profile, a server whose discovery does not list `client_credentials` is
/// warned about at -v (under `ib1`, where grants need no such grant type, it is not:
/// `consent_run::run_with_a_grant_carries_the_households_token_and_no_output_holds_one`).
#[tokio::test]
async fn a_server_not_listing_client_credentials_is_warned_about_under_open_energy() {
    let f = Fed::start(FederationConfig::default()).await;
    f.fed
        .set_as_fault(Some(AsFault::GrantTypes(vec!["authorization_code".into()])));
    let cfg = f.config.to_str().unwrap().to_owned();
    let dir = f.dir.path().to_owned();
    let data = f.fed.data_url();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        fapi_host(&["--config", &cfg, "-v", "fetch", &data], &dir)
    })
    .await
    .unwrap();
    let err = s(&err);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("does not list `client_credentials` in grant_types_supported"),
        "{err}"
    );
}
