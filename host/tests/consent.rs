//! A household's consent end to end (the IB1 profile): `fapi-host grant add` against the local
//! federation's `ib1` authorization server over real TLS on loopback, this test acting as the
//! household's browser (it follows the printed URL, reads the consent page, posts the form and
//! follows the redirect to the loopback callback); then `fetch --grant`, refresh with rotation
//! (and two processes at once), revocation, `--no-listen` + `grant complete`, and the refusals.
//! Every output is searched for every token the authorization server issued.
//! `browser` (consent/browser.rs) drives the same consent page with headless Chromium.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fapi_federation::{Federation, FederationConfig, Ib1Options, Pki};

use crate::common::{contains, logs};

mod browser;

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `ib1` federation, a consumer configuration using `DIR/grants`, and everything printed.
struct Ib1 {
    fed: Federation,
    dir: tempfile::TempDir,
    config: String,
    /// Every stdout and stderr of every command run, for the leak search.
    printed: Vec<u8>,
}

impl Ib1 {
    async fn start(token_ttl: Duration, refresh_delay: Duration) -> Ib1 {
        logs();
        let fed = Federation::start(
            Pki::generate().unwrap(),
            FederationConfig {
                ib1: Some(Ib1Options {
                    refresh_delay,
                    ..Ib1Options::default()
                }),
                token_ttl,
                record_issued_tokens: true,
                ..FederationConfig::default()
            },
        )
        .await
        .unwrap();
        Ib1::with(fed)
    }

    /// The consumer's configuration against `fed`, an `ib1` federation.
    fn with(fed: Federation) -> Ib1 {
        let dir = tempfile::tempdir().unwrap();
        let path = fed.write_client_config(dir.path(), "consumer").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("profile = \"ib1\""), "{text}");
        std::fs::write(&path, format!("grants_dir = \"grants\"\n{text}")).unwrap();
        Ib1 {
            fed,
            dir,
            config: path.to_str().unwrap().to_owned(),
            printed: Vec::new(),
        }
    }

    fn grants(&self) -> PathBuf {
        self.dir.path().join("grants")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fapi-host"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("FAPI_CONFIG")
            .stdin(Stdio::null());
        c
    }

    /// Run to the end: (status, stdout, stderr), both kept for the leak search.
    async fn run(&mut self, args: &[&str]) -> (i32, String, String) {
        let mut c = self.command(args);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        self.printed.extend_from_slice(&out.stdout);
        self.printed.extend_from_slice(&out.stderr);
        (
            out.status.code().unwrap_or(-1),
            s(&out.stdout),
            s(&out.stderr),
        )
    }

    /// Start `grant add` with these arguments; wait for the authorization URL (the first line of
    /// stdout).
    /// A client of the configuration `grant add` writes to.
    fn client(&self) -> fapi_host::FapiClient {
        let settings = fapi_host::Settings::load(
            Some(Path::new(&self.config)),
            &fapi_host::Overrides::default(),
        )
        .unwrap();
        fapi_host::FapiClient::from_settings(&settings).unwrap().0
    }

    async fn start_add(&self, args: &[&str]) -> Running {
        let mut c = self.command(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut url = String::new();
            stdout.read_line(&mut url).unwrap();
            Running {
                child,
                stdout,
                url: url.trim_end().to_owned(),
            }
        })
        .await
        .unwrap()
    }

    /// Wait for a started command: (status, all of stdout, stderr), kept for the leak search.
    async fn finish(&mut self, mut r: Running) -> (i32, String, String) {
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let mut out = r.url.clone().into_bytes();
            out.push(b'\n');
            r.stdout.read_to_end(&mut out).unwrap();
            let mut err = Vec::new();
            r.child
                .stderr
                .take()
                .unwrap()
                .read_to_end(&mut err)
                .unwrap();
            let status = r.child.wait().unwrap();
            (status.code().unwrap_or(-1), out, err)
        })
        .await
        .unwrap();
        self.printed.extend_from_slice(&out);
        self.printed.extend_from_slice(&err);
        (code, s(&out), s(&err))
    }

    /// The household's browser: open the consent page at `url`, post `decision`; the Location it
    /// is sent to.
    async fn consent(&self, url: &str, decision: &str) -> String {
        assert!(url.starts_with(&self.fed.issuer_url()), "{url}");
        let browser = self.fed.pki().http_client(None).unwrap();
        let page = browser.get(url).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        let request_uri = html
            .split("name=\"request_uri\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        let action = html
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        let origin = self.fed.issuer_url().replace("/accounts", "");
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("request_uri", &request_uri)
            .append_pair("decision", decision)
            .finish();
        let resp = browser
            .post(format!("{origin}{action}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
        resp.headers()["location"].to_str().unwrap().to_owned()
    }

    /// Every access and refresh token the authorization server issued.
    /// The household withdraws its consent at the authorization server: `refresh` (the grant's
    /// refresh token) revoked there (RFC 7009), as the consumer.
    async fn withdraw(&self, refresh: &str) {
        let consumer = self.fed.pki().client("consumer").unwrap();
        let http = self.fed.pki().http_client(Some(consumer)).unwrap();
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "client_id",
                &fapi_federation::directory_url("fapi-dev-consumer"),
            )
            .append_pair("token", refresh)
            .finish();
        let resp = http
            .post(format!("{}/revoke", self.fed.issuer_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    fn tokens(&self) -> Vec<String> {
        let t = self.fed.issued_tokens();
        assert!(!t.is_empty(), "a search for no token cannot fail");
        t
    }

    /// No issued token in anything printed, nor in any file of the store but the grant files.
    fn assert_no_token_leaked(&self) {
        let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.grants()) {
            for e in entries {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "json") {
                    continue;
                }
                files.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        for (i, t) in self.tokens().iter().enumerate() {
            assert!(
                !contains(&self.printed, t.as_bytes()),
                "token #{i} was printed"
            );
            for (p, bytes) in &files {
                assert!(
                    !contains(bytes, t.as_bytes()),
                    "token #{i} in {}",
                    p.display()
                );
            }
        }
    }
}

/// A `grant add` that has printed its URL.
struct Running {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    url: String,
}

/// The browser following a redirect to the loopback callback (plain HTTP, as a browser would).
async fn follow(location: &str) -> String {
    let url = url::Url::parse(location).unwrap();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap()
}

fn grant_file_mode(dir: &Path, name: &str) -> u32 {
    std::fs::metadata(dir.join(format!("{name}.json")))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn grant_add_as_a_browser_would_then_fetch_refresh_in_two_processes_and_revoke() {
    // 6 s tokens: refreshed 3 s before they expire (half their life), so that a loaded machine
    // does not make a step refresh a token the test did not mean to.
    let mut t = Ib1::start(Duration::from_secs(6), Duration::from_millis(500)).await;
    // grant add: the URL on a line of its own; the test approves as the household.
    let add = t.start_add(&["-vv", "grant", "add", "home"]).await;
    assert!(
        add.url.contains("/accounts/authorize?client_id="),
        "{}",
        add.url
    );
    assert!(
        add.url
            .contains("request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3A")
    );
    let location = t.consent(&add.url, "approve").await;
    let page = follow(&location).await;
    assert!(page.contains("Consent recorded"), "{page}");
    let (code, out, err) = t.finish(add).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("grant home stored"), "{out}");
    assert_eq!(grant_file_mode(&t.grants(), "home"), 0o600);
    let dir_mode = std::fs::metadata(t.grants()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);

    // fetch --grant reads the household's data; without a grant, a clear error.
    let data = t.fed.data_url();
    let (code, out, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("postcode,num_meters"), "{out:.80}");
    let (code, _, err) = t.run(&["fetch", &data]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--grant NAME") && err.contains("ib1"), "{err}");

    // batch --grant: every item with the household's token (one token for all).
    let input = t.dir.path().join("items.txt");
    std::fs::write(&input, format!("{data}\n{}\n", t.fed.data_json_url())).unwrap();
    let out_dir = t.dir.path().join("out");
    let (input, out_dir) = (
        input.to_str().unwrap().to_owned(),
        out_dir.to_str().unwrap().to_owned(),
    );
    let (code, _, err) = t
        .run(&[
            "batch", "--input", &input, "--out", &out_dir, "--grant", "home",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let manifest = std::fs::read_to_string(Path::new(&out_dir).join("manifest.jsonl")).unwrap();
    assert_eq!(
        manifest.matches("\"outcome\":\"done\"").count(),
        2,
        "{manifest}"
    );
    let other = format!("{out_dir}-no-grant");
    let (code, _, err) = t.run(&["batch", "--input", &input, "--out", &other]).await;
    // Without a grant under ib1: each item fails, its manifest line naming --grant.
    assert_eq!(code, 9, "without a grant under ib1: {err}");
    let manifest = std::fs::read_to_string(Path::new(&other).join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.matches("--grant NAME").count(), 2, "{manifest}");

    // list and show: metadata, never a token.
    let (code, out, _) = t.run(&["grant", "show", "home"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(fapi_federation::LICENCE) && out.contains("last refreshed  never"),
        "{out}"
    );
    let (_, out, _) = t.run(&["grant", "list", "--json"]).await;
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "home");
    assert_eq!(list[0]["state"], "active");

    // Past the refresh point: one refresh, rotated (the spent refresh token is no longer stored).
    let file = t.grants().join("home.json");
    let refresh_token = || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        v["refresh_token"].as_str().unwrap().to_owned()
    };
    let refreshes = |t: &Ib1| t.fed.consent_counters().unwrap().refresh_requests;
    let (spent, before) = (refresh_token(), refreshes(&t));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (code, _, err) = t.run(&["-vv", "fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(refreshes(&t), before + 1);
    let rotated = refresh_token();
    assert_ne!(rotated, spent, "rotated");
    assert!(t.tokens().contains(&rotated) && t.tokens().contains(&spent));

    // Two processes at once, past the refresh point: exactly one refresh request, both served.
    let before = refreshes(&t);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut ca = t.command(&["fetch", "--grant", "home", &data]);
    let mut cb = t.command(&["fetch", "--grant", "home", &data]);
    let (ra, rb) = tokio::join!(
        tokio::task::spawn_blocking(move || ca.output()),
        tokio::task::spawn_blocking(move || cb.output())
    );
    for r in [ra.unwrap().unwrap(), rb.unwrap().unwrap()] {
        t.printed.extend_from_slice(&r.stdout);
        t.printed.extend_from_slice(&r.stderr);
        assert!(r.status.success(), "{}", s(&r.stderr));
        assert!(s(&r.stdout).starts_with("postcode"));
    }
    assert_eq!(refreshes(&t), before + 1, "one refresh for both processes");

    // Revoke: at the authorization server (the last access token is refused), then removed.
    let last = t.tokens().into_iter().rev().nth(1).unwrap();
    let (code, out, err) = t.run(&["grant", "revoke", "home"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    assert!(!t.grants().join("home.json").exists());
    let consumer = t.fed.pki().client("consumer").unwrap();
    let http = t.fed.pki().http_client(Some(consumer)).unwrap();
    let resp = http.get(&data).bearer_auth(&last).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let (code, _, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 3);
    assert!(err.contains("grant add home"), "{err}");
    t.assert_no_token_leaked();
}

#[tokio::test]
async fn no_listen_then_complete_with_the_url_the_browser_ended_on() {
    let mut t = Ib1::start(Duration::from_secs(60), Duration::ZERO).await;
    let (code, out, err) = t.run(&["grant", "add", "flat-7", "--no-listen"]).await;
    assert_eq!(code, 0, "{err}");
    let url = out.lines().next().unwrap().to_owned();
    assert!(err.contains("grant complete flat-7"), "{err}");
    let pending = t.grants().join("flat-7.pending");
    let mode = std::fs::metadata(&pending).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let location = t.consent(&url, "approve").await;

    // The URL of another flow (its state differs): refused, nothing exchanged, still pending.
    let forged = location.replace("state=", "state=x");
    let (code, _, err) = t.run(&["grant", "complete", "flat-7", &forged]).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("state does not match") && err.contains("nothing was exchanged"),
        "{err}"
    );
    assert_eq!(t.fed.consent_counters().unwrap().code_exchanges, 0);
    assert!(pending.exists());

    let (code, out, err) = t.run(&["grant", "complete", "flat-7", &location]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("grant flat-7 stored"), "{out}");
    assert!(!pending.exists());
    let data = t.fed.data_url();
    let (code, out, err) = t.run(&["fetch", "--grant", "flat-7", &data]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("postcode"));
    // Once more: nothing pending (the code is spent; the AS would refuse it).
    let (code, _, err) = t.run(&["grant", "complete", "flat-7", &location]).await;
    assert_eq!(code, 3);
    assert!(err.contains("no consent flow is pending"), "{err}");
    t.assert_no_token_leaked();
}

#[tokio::test]
async fn denial_wrong_state_timeout_and_a_refused_par_are_clear_errors() {
    let mut t = Ib1::start(Duration::from_secs(60), Duration::ZERO).await;
    // The household declines: access_denied, nothing stored.
    let add = t.start_add(&["grant", "add", "home"]).await;
    let location = t.consent(&add.url, "deny").await;
    assert!(location.contains("error=access_denied"), "{location}");
    follow(&location).await;
    let (code, _, err) = t.finish(add).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("declined (access_denied)") && err.contains("grant add home"),
        "{err}"
    );
    assert!(!t.grants().join("home.json").exists());

    // A callback whose state is not the request's: refused, nothing exchanged.
    let add = t.start_add(&["grant", "add", "home"]).await;
    let location = t.consent(&add.url, "approve").await;
    let forged = location.replace("state=", "state=x");
    follow(&forged).await;
    let (code, _, err) = t.finish(add).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("state does not match"), "{err}");
    assert_eq!(t.fed.consent_counters().unwrap().code_exchanges, 0);

    // Nobody comes back before --timeout.
    let (code, out, err) = t.run(&["grant", "add", "home", "--timeout", "1"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(out.contains("/accounts/authorize?"), "{out}");
    assert!(
        err.contains("no answer from the browser within 1 s"),
        "{err}"
    );

    // A scope the server does not grant: the PAR is refused (invalid_scope), with the fix.
    let (code, out, err) = t
        .run(&["grant", "add", "home", "--scope", "consumption:read"])
        .await;
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty(), "no URL for a refused request: {out}");
    assert!(
        err.contains("invalid_scope") && err.contains("--scope"),
        "{err}"
    );
    assert!(!t.grants().join("home.json").exists());
}

#[tokio::test]
async fn a_tampered_or_truncated_grant_and_a_store_open_to_others_are_refused() {
    let mut t = Ib1::start(Duration::from_secs(60), Duration::ZERO).await;
    let add = t.start_add(&["grant", "add", "home"]).await;
    let location = t.consent(&add.url, "approve").await;
    follow(&location).await;
    let (code, _, err) = t.finish(add).await;
    assert_eq!(code, 0, "{err}");
    let file = t.grants().join("home.json");
    let whole = std::fs::read_to_string(&file).unwrap();
    let data = t.fed.data_url();
    let shown = file.display().to_string();
    for (text, says) in [
        (whole[..whole.len() / 2].to_owned(), "truncated"),
        (
            whole.replace("fapi-host-grant/1", "other-tool/3"),
            "not a fapi-host grant file",
        ),
        (whole.replacen('{', "[", 1), "corrupt"),
    ] {
        std::fs::write(&file, &text).unwrap();
        let (code, _, err) = t.run(&["fetch", "--grant", "home", &data]).await;
        assert_eq!(code, 3, "{says}: {err}");
        assert!(err.contains(&shown) && err.contains(says), "{says}: {err}");
        let (code, _, err) = t.run(&["grant", "show", "home"]).await;
        assert_eq!(code, 3);
        assert!(err.contains(&shown), "{err}");
    }
    // Issued by another issuer (a file copied from elsewhere): refused, naming both.
    std::fs::write(&file, whole.replace("/accounts\"", "/other\"")).unwrap();
    let (code, _, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("was given by") && err.contains("/other"),
        "{err}"
    );

    std::fs::write(&file, &whole).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 3);
    assert!(err.contains(&format!("chmod 600 {shown}")), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(t.grants(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let (code, _, err) = t.run(&["grant", "list"]).await;
    assert_eq!(code, 3);
    assert!(
        err.contains(&format!("chmod 700 {}", t.grants().display())),
        "{err}"
    );
    std::fs::set_permissions(t.grants(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, out, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("postcode"));
    t.assert_no_token_leaked();
}

#[tokio::test]
async fn check_takes_the_client_id_from_the_certificate_and_refuses_another() {
    let mut t = Ib1::start(Duration::from_secs(60), Duration::ZERO).await;
    let directory = fapi_federation::directory_url("fapi-dev-consumer");
    let (code, out, err) = t.run(&["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("ok    client_id: {directory}"))
            && out.contains("taken from the certificate"),
        "{out}"
    );
    assert!(out.contains("ok    discovery"), "{out}");
    assert!(
        out.contains("ok    consent: pushed authorization requests at"),
        "{out}"
    );
    // Nothing to warn about under ib1 but the one CA of the local federation, which issues the
    // client's certificate and the servers' alike (said for each trust class).
    let warned: Vec<_> = out.lines().filter(|l| l.starts_with("warn")).collect();
    assert!(
        warned.iter().all(|l| l.starts_with("warn  trust (")),
        "nothing else to warn about under ib1: {out}"
    );
    // No client_credentials token under ib1: `token` names --grant, and asks the server nothing.
    let (code, _, err) = t.run(&["token"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--grant NAME"), "{err}");
    assert_eq!(t.fed.counters().token_requests, 0);
    let (code, out, _) = t.run(&["--client-id", "fapi-dev-consumer", "check"]).await;
    assert_eq!(code, 7, "{out}");
    assert!(
        out.contains("FAIL  client_id") && out.contains(&directory) && out.contains("URI SAN"),
        "{out}"
    );
}

#[tokio::test]
async fn a_refresh_refused_with_invalid_grant_ends_the_grant() {
    let mut t = Ib1::start(Duration::from_secs(2), Duration::ZERO).await;
    let add = t.start_add(&["grant", "add", "home"]).await;
    let location = t.consent(&add.url, "approve").await;
    follow(&location).await;
    let (code, _, err) = t.finish(add).await;
    assert_eq!(code, 0, "{err}");
    // The household withdraws its consent at the authorization server.
    let refresh = t.tokens()[1].clone();
    t.withdraw(&refresh).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let data = t.fed.data_url();
    let (code, _, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("the consent has ended or was revoked: run grant add home again"),
        "{err}"
    );
    let (_, out, _) = t.run(&["grant", "show", "home"]).await;
    assert!(out.contains("state           ended"), "{out}");
    // Ended: no further refresh request is spent on it.
    let (code, _, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 4, "{err}");
    assert_eq!(t.fed.consent_counters().unwrap().refresh_requests, 1);
    t.assert_no_token_leaked();
}

#[tokio::test]
async fn for_grant_refreshes_once_for_many_concurrent_requests() {
    // Tokens live 4 s (refreshed from 2 s on): the new token is fresh long after the 8 requests.
    let mut t = Ib1::start(Duration::from_secs(4), Duration::from_millis(300)).await;
    let add = t.start_add(&["grant", "add", "home"]).await;
    let location = t.consent(&add.url, "approve").await;
    follow(&location).await;
    let (code, _, err) = t.finish(add).await;
    assert_eq!(code, 0, "{err}");

    let client = t.client();
    assert_eq!(
        client.settings().client_id,
        fapi_federation::directory_url("fapi-dev-consumer"),
        "taken from the certificate"
    );
    // Without a grant, under ib1: refused before anything is sent, naming --grant.
    let e = client.get(t.fed.data_url()).send().await.unwrap_err();
    assert!(e.to_string().contains("--grant NAME"), "{e}");
    let e = client.for_grant("nobody").unwrap_err();
    assert!(e.to_string().contains("grant add nobody"), "{e}");

    let home = client.for_grant("home").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let c = home.clone();
            let url = t.fed.data_url();
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap(), 200);
    }
    assert_eq!(home.grant_refreshes(), 1);
    assert_eq!(t.fed.consent_counters().unwrap().refresh_requests, 1);
    let debug = format!("{home:?}");
    for token in t.tokens() {
        assert!(!debug.contains(&token));
    }
}

/// A refresh that fails while the grant's access token is still valid (the token endpoint
/// answers 500) keeps that token in use, without another refresh attempt for each request; once
/// it has expired, requests fail with the server's answer and are not sent with the expired
/// token; when the endpoint answers again, the grant is refreshed and used.
#[tokio::test]
async fn a_failed_refresh_keeps_the_grants_valid_token_until_it_expires() {
    // Tokens live 6 s, refreshed from 3 s (half their lifetime) on; times in whole seconds.
    let mut t = Ib1::start(Duration::from_secs(6), Duration::ZERO).await;
    add_grant(&mut t, "home").await;
    let added = std::time::Instant::now();
    let home = t.client().for_grant("home").unwrap();
    let get = || async { home.get(t.fed.data_url()).send().await };
    assert_eq!(get().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(3600).saturating_sub(added.elapsed())).await;
    t.fed
        .set_as_fault(Some(fapi_federation::AsFault::TokenEndpointStatus(500)));
    for _ in 0..5 {
        assert_eq!(get().await.unwrap().status(), 200);
    }
    assert_eq!(
        home.grant_refreshes(),
        1,
        "one attempt, then the token serves"
    );
    assert_eq!(t.fed.consent_counters().unwrap().refresh_requests, 1);
    // Past its expiry: refused before anything is sent to the provider.
    tokio::time::sleep(Duration::from_millis(7200).saturating_sub(added.elapsed())).await;
    let sent = t.fed.counters().dp_requests;
    let e = get().await.unwrap_err();
    assert!(e.to_string().contains("home"), "{e}");
    assert_eq!(
        t.fed.counters().dp_requests,
        sent,
        "an expired token was sent"
    );
    t.fed.set_as_fault(None);
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(t.fed.consent_counters().unwrap().refresh_requests, 3);
    t.assert_no_token_leaked();
}

/// `grant add NAME`, approved by the household.
async fn add_grant(t: &mut Ib1, name: &str) {
    let add = t.start_add(&["grant", "add", name]).await;
    let location = t.consent(&add.url, "approve").await;
    follow(&location).await;
    let (code, _, err) = t.finish(add).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn one_batch_over_many_grants_each_item_with_its_own() {
    // 8 s tokens, refreshed from 4 s before they expire: all expired when the batch starts, so
    // each grant is refreshed exactly once, and the new ones are fresh for 4 s, past the batch
    // and its resumption even on a loaded machine.
    let mut t = Ib1::start(Duration::from_secs(8), Duration::ZERO).await;
    // "gone": the household withdraws its consent (its refresh token revoked).
    add_grant(&mut t, "gone").await;
    let refresh = t.tokens()[1].clone();
    t.withdraw(&refresh).await;
    for name in ["a", "b", "c"] {
        add_grant(&mut t, name).await;
    }
    tokio::time::sleep(Duration::from_millis(8200)).await;
    assert_eq!(t.fed.consent_counters().unwrap().refresh_requests, 0);

    // 4 items per good grant ("a"'s by --grant, no "grant" in the line), 1 of an unknown grant,
    // 2 of the ended one.
    let (csv, json) = (t.fed.data_url(), t.fed.data_json_url());
    let mut lines = String::new();
    for g in ["a", "b", "c"] {
        for i in 0..4 {
            let url = if i % 2 == 0 { &csv } else { &json };
            let grant = if g == "a" {
                String::new()
            } else {
                format!(",\"grant\":\"{g}\"")
            };
            lines.push_str(&format!(
                "{{\"url\":\"{url}\",\"name\":\"{g}-{i}\"{grant}}}\n"
            ));
        }
    }
    lines.push_str(&format!(
        "{{\"url\":\"{csv}\",\"name\":\"nobody-0\",\"grant\":\"nobody\"}}\n"
    ));
    for i in 0..2 {
        lines.push_str(&format!(
            "{{\"url\":\"{csv}\",\"name\":\"gone-{i}\",\"grant\":\"gone\"}}\n"
        ));
    }
    let input = t.dir.path().join("households.jsonl");
    std::fs::write(&input, &lines).unwrap();
    let out_dir = t.dir.path().join("households");
    let (input, out) = (
        input.to_str().unwrap().to_owned(),
        out_dir.to_str().unwrap().to_owned(),
    );
    let args = ["batch", "--input", &input, "--out", &out, "--grant", "a"];
    let (code, _, err) = t.run(&args).await;
    assert_eq!(code, 9, "3 items failed: {err}");
    // Exactly one refresh per grant: a, b, c, and the refused one of "gone"; none for "nobody".
    let counters = t.fed.consent_counters().unwrap();
    assert_eq!(counters.refresh_requests, 4, "{counters:?}");

    let manifest = std::fs::read_to_string(out_dir.join("manifest.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 15, "{manifest}");
    for r in &records {
        let file = r["file"].as_str().unwrap_or("");
        let grant = r["grant"].as_str().unwrap();
        match r["outcome"].as_str().unwrap() {
            "done" => {
                assert!(["a", "b", "c"].contains(&grant), "{r}");
                assert!(file.starts_with(&format!("{grant}-")), "{r}");
                let body = std::fs::read(out_dir.join(file)).unwrap();
                assert!(!body.is_empty());
            }
            _ => {
                assert_eq!(r["error"]["kind"], "grant", "{r}");
                let message = r["error"]["message"].as_str().unwrap();
                match grant {
                    "nobody" => assert!(message.contains("grant add nobody"), "{r}"),
                    "gone" => assert!(
                        message.contains(
                            "the consent has ended or was revoked: run grant add gone again"
                        ),
                        "{r}"
                    ),
                    _ => panic!("{r}"),
                }
            }
        }
    }
    let done = records.iter().filter(|r| r["outcome"] == "done").count();
    assert_eq!(done, 12, "{manifest}");

    // Resumed: the good items are done, the failed ones tried again with their own grants
    // (still failing; the ended grant spends no refresh request).
    let (code, _, err) = t.run(&args).await;
    assert_eq!(code, 9, "{err}");
    assert_eq!(t.fed.consent_counters().unwrap().refresh_requests, 4);
    let manifest = std::fs::read_to_string(out_dir.join("manifest.jsonl")).unwrap();
    let again: Vec<serde_json::Value> = manifest
        .lines()
        .skip(15)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(again.len(), 3, "{manifest}");
    for r in &again {
        assert!(
            ["nobody", "gone"].contains(&r["grant"].as_str().unwrap()),
            "{r}"
        );
    }

    // Without --grant, a line naming none fails alone (naming --grant); "b"'s goes on.
    let mixed = t.dir.path().join("mixed.jsonl");
    std::fs::write(
        &mixed,
        format!(
            "{{\"url\":\"{csv}\",\"name\":\"none\"}}\n{{\"url\":\"{csv}\",\"name\":\"b\",\"grant\":\"b\"}}\n"
        ),
    )
    .unwrap();
    let mixed_out = t.dir.path().join("mixed");
    let (code, _, err) = t
        .run(&[
            "batch",
            "--input",
            mixed.to_str().unwrap(),
            "--out",
            mixed_out.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 9, "{err}");
    let manifest = std::fs::read_to_string(mixed_out.join("manifest.jsonl")).unwrap();
    assert!(
        manifest.contains("\"outcome\":\"done\"") && manifest.contains("--grant NAME"),
        "{manifest}"
    );

    // No token in any output: printed, manifests, files.
    for dir in [&out_dir, &mixed_out] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            t.printed.extend_from_slice(&std::fs::read(&p).unwrap());
        }
    }
    t.assert_no_token_leaked();
}

/// A refused access token (`invalid_token` from the data provider while the stored token has
/// not expired) forces one refresh of the grant: once for 8 concurrent requests, once for two
/// processes sharing the store; a token refused again right after it replaced a refused one
/// goes back to the caller as the provider's 401, with no further refresh.
#[tokio::test]
async fn a_refused_access_token_forces_one_refresh_of_the_grant() {
    // 120 s tokens: never due during the test, so every refresh is a forced one. Refreshes take
    // 500 ms at the server, so that concurrent callers and processes overlap them.
    let mut t = Ib1::start(Duration::from_secs(120), Duration::from_millis(500)).await;
    add_grant(&mut t, "home").await;
    let home = t.client().for_grant("home").unwrap();
    let data = t.fed.data_url();
    assert_eq!(home.get(&data).send().await.unwrap().status(), 200);
    let refreshes = || t.fed.consent_counters().unwrap().refresh_requests;
    assert_eq!(refreshes(), 0);

    // The provider refuses every access token issued so far (refresh tokens live on).
    t.fed.revoke_all_tokens();
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let c = home.clone();
            let url = data.clone();
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap(), 200);
    }
    assert_eq!(refreshes(), 1, "one refresh for 8 refused requests");
    assert_eq!(home.grant_refreshes(), 1);

    // Refused again at once: the token just replaced a refused one, so the 401 goes back to
    // the caller; no refresh loop.
    t.fed.revoke_all_tokens();
    let refused = home.get(&data).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refreshes(), 1);

    // Two processes sharing the store, each refused: one refresh between them (the second
    // finds the grant refreshed under the lock and uses the new token).
    t.fed.revoke_all_tokens();
    let both = [0, 1].map(|_| {
        let mut c = t.command(&["fetch", "--grant", "home", &data]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    });
    for child in both {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        t.printed.extend_from_slice(&out.stdout);
        t.printed.extend_from_slice(&out.stderr);
        assert!(out.status.success(), "{}", s(&out.stderr));
        assert!(s(&out.stdout).starts_with("postcode,"));
    }
    assert_eq!(refreshes(), 2, "one refresh for two processes");
    t.assert_no_token_leaked();
}

/// Refresh tokens are bound to the Directory URL (the client id), access tokens to a certificate:
/// a renewed certificate (a new key, the same Directory URL) keeps its grants. Its first request
/// carries the old certificate's access token, which the provider refuses (`invalid_token`); that
/// forces one refresh over the new certificate, and the data arrives in the same command.
#[tokio::test]
async fn a_renewed_certificate_with_the_same_directory_url_keeps_its_grants() {
    let mut t = Ib1::start(Duration::from_secs(300), Duration::ZERO).await;
    add_grant(&mut t, "home").await;
    let data = t.fed.data_url();
    let (code, _, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 0, "{err}");
    let before = t.fed.consent_counters().unwrap().refresh_requests;

    let old = t.fed.pki().client("consumer").unwrap();
    let mut spec = fapi_federation::ClientSpec::new(&old.client_id);
    spec.name = "consumer".into();
    spec.uri_san = Some(fapi_federation::directory_url(&old.client_id));
    let renewed = t.fed.pki().issue_client(spec).unwrap();
    assert_ne!(renewed.cert_pem, old.cert_pem);
    std::fs::write(t.dir.path().join("consumer.pem"), &renewed.cert_pem).unwrap();
    std::fs::write(t.dir.path().join("consumer.key"), &renewed.key_pem).unwrap();

    let (code, out, err) = t.run(&["fetch", "--grant", "home", &data]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("postcode"), "{out}");
    assert_eq!(
        t.fed.consent_counters().unwrap().refresh_requests,
        before + 1,
        "one refresh, over the new certificate"
    );
    // The grant is the same one: no new consent was asked.
    assert_eq!(t.fed.consent_counters().unwrap().approved, 1);
    t.assert_no_token_leaked();
}

/// A code exchanged after its lifetime: the authorization server refuses it (`invalid_grant`),
/// `grant complete` says so and how to start again, and nothing is stored.
#[tokio::test]
async fn a_code_past_its_lifetime_is_a_clear_error_and_nothing_is_stored() {
    logs();
    let fed = Federation::start(
        Pki::generate().unwrap(),
        FederationConfig {
            ib1: Some(Ib1Options {
                code_ttl: Duration::from_secs(1),
                ..Ib1Options::default()
            }),
            record_issued_tokens: true,
            ..FederationConfig::default()
        },
    )
    .await
    .unwrap();
    let mut t = Ib1::with(fed);
    let (code, out, err) = t.run(&["grant", "add", "late", "--no-listen"]).await;
    assert_eq!(code, 0, "{err}");
    let url = out.lines().next().unwrap().to_owned();
    let location = t.consent(&url, "approve").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, _, err) = t.run(&["grant", "complete", "late", &location]).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("invalid_grant") && err.contains("grant add late"),
        "{err}"
    );
    assert_eq!(t.fed.consent_counters().unwrap().code_exchanges, 1);
    assert!(!t.grants().join("late.json").exists());
    assert!(
        t.fed.issued_tokens().is_empty(),
        "no token for a stale code"
    );
}
