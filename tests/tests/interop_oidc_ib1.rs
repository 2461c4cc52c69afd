//! The `ib1` profile (consent) against an independent server: panva's `oidc-provider` run by
//! `tests/oidc/server.mjs --ib1` (PAR required, PKCE S256, `tls_client_auth` by the certificate's
//! URI SAN with the Directory URL as `client_id`, certificate-bound tokens, TLS 1.3 only, the
//! issuer `https://127.0.0.1:PORT/accounts` publishing its metadata at the RFC 8414 location only,
//! `mtls_endpoint_aliases` equal to the top-level endpoints, rotating refresh tokens). The real
//! `fapi-host` binary asks for each household's consent (`grant add`; this test is the household's
//! browser: it follows the printed address through oidc-provider's own login and consent forms with
//! form posts and a cookie jar, to the redirect back to the host), then `fetch --grant`,
//! `run --grant`, a `batch` over three grants, refresh after expiry (rotated, and not rotated), two
//! processes refreshing one grant, `grant revoke`, a consent withdrawn at the server, the refusals
//! (a cancelled consent, `invalid_scope`, `invalid_client`), and `fapi-host dev --issuer URL
//! --profile ib1`. The data comes from the federation's data provider, which introspects at
//! oidc-provider and takes only tokens whose `client_id` is the calling certificate's Directory
//! URL. Every access and refresh token oidc-provider issued is searched for in everything
//! fapi-host printed or wrote (the grant files excepted).
//!
//! Needs `node` and `npm ci --prefix tests/oidc`, as `interop_oidc` does (skipped otherwise, a
//! failure with `FAPI_REQUIRE_INTEROP=1`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fapi_federation::{
    ExternalIssuer, Federation, FederationConfig, Ib1Options, LICENCE, Pki, data,
};
use fapi_tests::guests;
use fapi_tests::sandbox_env::{FileSnapshot, Needles};
use serde_json::{Value, json};

use super::interop_oidc::{Kill, OidcServer, cache, prerequisites, text};

/// oidc-provider in its `ib1` mode, the data provider introspecting there, and a consumer
/// configuration (`profile = "ib1"`, grants in `DIR/grants`).
struct Ib1 {
    oidc: OidcServer,
    fed: Federation,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The files under `dir` before any fapi-host command ran.
    before: FileSnapshot,
    /// Everything fapi-host printed: (what, bytes).
    printed: Vec<(String, Vec<u8>)>,
}

/// A `grant add` that has printed the authorization address.
struct Adding {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    url: String,
}

impl Ib1 {
    async fn start(test: &str, token_ttl: u64) -> Option<Ib1> {
        Ib1::start_with(test, token_ttl, &[]).await
    }

    /// [`Ib1::start`] with more arguments of `server.mjs --ib1` (`--no-rotation`).
    async fn start_with(test: &str, token_ttl: u64, args: &[&str]) -> Option<Ib1> {
        prerequisites(test)?;
        fapi_tests::capture_logs();
        let pki = Pki::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        pki.write_to(&pki_dir).unwrap();
        let consumer = pki.client("consumer").unwrap();
        let provider = pki.client("provider").unwrap();
        // The data provider's client may also get client_credentials tokens for
        // consumption:read (a default-profile token, which the data provider must refuse under
        // ib1); oidc-provider thereby knows that scope, and refuses it to the consumer (a scope
        // it knows of no client it would ignore, as RFC 6749 3.3 lets it).
        let clients = json!([
            { "client_id": fapi_federation::directory_url(&consumer.client_id), "scope": LICENCE },
            { "client_id": provider.client_id, "subject_dn": provider.subject_dn, "scope": "consumption:read" },
        ]);
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.push("--ib1".into());
        let oidc = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            OidcServer::start_with_args(&pki_dir, &clients, token_ttl, &args)
        })
        .await
        .unwrap();
        let external = ExternalIssuer {
            issuer_url: oidc.issuer.clone(),
            ca_pem: pki.ca_pem().to_owned(),
            provider: provider.clone(),
        };
        let fed = Federation::start(
            pki,
            FederationConfig {
                external_issuer: Some(external),
                ib1: Some(Ib1Options::default()),
                ..FederationConfig::default()
            },
        )
        .await
        .unwrap();
        let config = fed.write_client_config(dir.path(), "consumer").unwrap();
        let toml = std::fs::read_to_string(&config).unwrap();
        assert!(toml.contains("profile = \"ib1\""), "{toml}");
        assert!(toml.contains(&oidc.issuer), "{toml}");
        std::fs::write(&config, format!("grants_dir = \"grants\"\n{toml}")).unwrap();
        let before = FileSnapshot::take(dir.path());
        Some(Ib1 {
            oidc,
            fed,
            dir,
            config,
            before,
            printed: Vec::new(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(fapi_tests::fapi_host_bin());
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .env("XDG_CACHE_HOME", cache())
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("FAPI_") {
                c.env_remove(k);
            }
        }
        c
    }

    /// Run fapi-host to the end: (exit status, stdout, stderr), kept for the leak search.
    async fn run(&mut self, args: &[&str]) -> (i32, String, String) {
        let mut c = self.command(args);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        self.printed
            .push((args.join(" "), [&out.stdout[..], &out.stderr].concat()));
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    }

    /// `grant add NAME` as the household `login` consents in oidc-provider's pages; asserts that
    /// the grant is stored.
    async fn add(&mut self, name: &str, login: &str) {
        let (code, out, err) = self.grant_add(name, login, true).await;
        assert_eq!(code, 0, "{err}\n{}", self.oidc.log());
        assert!(out.contains(&format!("grant {name} stored")), "{out}");
    }

    /// `grant add NAME` as the household `login` signs in and approves (or cancels) in
    /// oidc-provider's pages, and the browser comes back to the host: (exit status, stdout,
    /// stderr) of fapi-host.
    async fn grant_add(&mut self, name: &str, login: &str, approve: bool) -> (i32, String, String) {
        let mut c = self.command(&["-vv", "grant", "add", name, "--timeout", "30"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut adding = tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut url = String::new();
            stdout.read_line(&mut url).unwrap();
            Adding {
                child,
                stdout,
                url: url.trim_end().to_owned(),
            }
        })
        .await
        .unwrap();
        assert!(
            adding
                .url
                .starts_with(&format!("{}/auth?", self.oidc.issuer)),
            "{}",
            adding.url
        );
        let location = self.consent(&adding.url, login, approve).await;
        let page = follow(&location).await;
        if approve {
            assert!(page.contains("Consent recorded"), "{page}");
        }
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let mut out = adding.url.clone().into_bytes();
            out.push(b'\n');
            adding.stdout.read_to_end(&mut out).unwrap();
            let mut err = Vec::new();
            let mut stderr = adding.child.stderr.take().unwrap();
            stderr.read_to_end(&mut err).unwrap();
            (adding.child.wait().unwrap().code().unwrap_or(-1), out, err)
        })
        .await
        .unwrap();
        self.printed
            .push((format!("grant add {name}"), [&out[..], &err].concat()));
        (code, text(&out), text(&err))
    }

    /// The household's browser: from the authorization address through oidc-provider's login
    /// (as `login`) and consent forms (or its Cancel link), with its cookies; the address it is
    /// sent back to (the host's loopback redirect URI).
    async fn consent(&self, url: &str, login: &str, approve: bool) -> String {
        let browser = self.fed.pki().http_client(None).unwrap();
        let origin = self.oidc.issuer.trim_end_matches("/accounts").to_owned();
        let mut cookies: BTreeMap<String, String> = BTreeMap::new();
        let mut next: (String, Option<String>) = (url.to_owned(), None);
        for _ in 0..10 {
            let (target, form) = next.clone();
            let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let request = match &form {
                None => browser.get(&target),
                Some(body) => browser
                    .post(&target)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body.clone()),
            };
            let resp = request
                .header("cookie", jar.join("; "))
                .send()
                .await
                .unwrap();
            for c in resp.headers().get_all("set-cookie") {
                let pair = c.to_str().unwrap().split(';').next().unwrap();
                let (k, v) = pair.split_once('=').unwrap();
                if v.is_empty() {
                    cookies.remove(k);
                } else {
                    cookies.insert(k.to_owned(), v.to_owned());
                }
            }
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                let location = resp.headers()["location"].to_str().unwrap().to_owned();
                if location.starts_with("http://127.0.0.1") {
                    return location;
                }
                let location = if location.starts_with('/') {
                    format!("{origin}{location}")
                } else {
                    location
                };
                next = (location, None);
                continue;
            }
            let html = resp.text().await.unwrap();
            assert_eq!(status, 200, "{target}: {html}\n{}", self.oidc.log());
            let attr = |after: &str| {
                html.split(after)
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(str::to_owned)
            };
            let action = attr("action=\"").unwrap_or_else(|| panic!("no form: {html}"));
            let action = if action.starts_with('/') {
                format!("{origin}{action}")
            } else {
                action
            };
            let form = match attr("name=\"prompt\" value=\"").as_deref() {
                Some("login") => url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("prompt", "login")
                    .append_pair("login", login)
                    .append_pair("password", "any")
                    .finish(),
                Some("consent") if approve => "prompt=consent".to_owned(),
                Some("consent") => {
                    let cancel = html.split("\">[ Cancel ]").next().unwrap();
                    let abort = cancel.rsplit("href=\"").next().unwrap();
                    let abort = if abort.starts_with('/') {
                        format!("{origin}{abort}")
                    } else {
                        abort.to_owned()
                    };
                    next = (abort, None);
                    continue;
                }
                other => panic!("an unexpected form ({other:?}): {html}"),
            };
            next = (action, Some(form));
        }
        panic!(
            "no redirect to the host after 10 steps: {}",
            self.oidc.log()
        );
    }

    /// The grant store: `grants` beside the configuration.
    fn grants(&self) -> PathBuf {
        self.config.parent().unwrap().join("grants")
    }

    /// The grant file's refresh token (read by the test only).
    fn stored_refresh_token(&self, name: &str) -> String {
        let file = self.grants().join(format!("{name}.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        v["refresh_token"].as_str().unwrap().to_owned()
    }

    /// The token responses of one grant type, from oidc-provider's log.
    fn issued(&self, grant_type: &str) -> Vec<Value> {
        self.oidc
            .tokens()
            .into_iter()
            .filter(|t| t["grant_type"] == grant_type)
            .collect()
    }

    /// Every access and refresh token oidc-provider issued is in nothing fapi-host printed, in no
    /// file it wrote but the grant files, nor in this process's logs (the data provider's).
    fn assert_no_token_leaked(&self) {
        let mut tokens = Vec::new();
        for t in self.oidc.tokens() {
            tokens.push(t["access_token"].as_str().unwrap().to_owned());
            if let Some(r) = t["refresh_token"].as_str() {
                tokens.push(r.to_owned());
            }
        }
        assert!(tokens.len() >= 2, "{}", self.oidc.log());
        for t in &tokens {
            assert!(t.len() >= 40, "implausible token of {} bytes", t.len());
        }
        let key = &self.fed.pki().client("consumer").unwrap().key_pem;
        let needles = Needles::new(&tokens, key);
        for (what, hay) in &self.printed {
            needles.assert_absent(what, hay);
        }
        let grant_files: Vec<PathBuf> = std::fs::read_dir(self.grants())
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        let excluded: Vec<&Path> = grant_files.iter().map(PathBuf::as_path).collect();
        assert!(!self.before.written().is_empty());
        needles.assert_absent_from_written(&self.before, &excluded);
        needles.assert_absent_from_logs();
    }
}

/// The browser following a redirect to the host's loopback redirect URI (plain HTTP).
async fn follow(location: &str) -> String {
    let url = url::Url::parse(location).unwrap();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let target = format!("{}?{}", url.path(), url.query().unwrap_or(""));
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

#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn ib1_consent_fetch_run_batch_and_revoke_with_oidc_provider() {
    let test = "ib1_consent_fetch_run_batch_and_revoke_with_oidc_provider";
    let Some(mut t) = Ib1::start(test, 300).await else {
        return;
    };
    eprintln!("oidc-provider {}", t.oidc.version);
    // Three households consent, each in its own browser session.
    for (name, login) in [("home-1", "alice"), ("home-2", "bob")] {
        t.add(name, login).await;
    }
    // The third on a machine without the browser: --no-listen, then grant complete with the
    // address the browser ended on.
    let (code, out, err) = t.run(&["grant", "add", "home-3", "--no-listen"]).await;
    assert_eq!(code, 0, "{err}");
    let url = out.lines().next().unwrap().to_owned();
    let location = t.consent(&url, "carol", true).await;
    let (code, out, err) = t.run(&["grant", "complete", "home-3", &location]).await;
    assert_eq!(code, 0, "{err}\n{}", t.oidc.log());
    assert!(out.contains("grant home-3 stored"), "{out}");
    let log = t.oidc.log();
    let pars = t.oidc.events("par");
    assert_eq!(pars.len(), 3, "{log}");
    let directory_url =
        fapi_federation::directory_url(&t.fed.pki().client("consumer").unwrap().client_id);
    for p in &pars {
        assert_eq!(
            (&p["status"], &p["client_id"]),
            (&json!(201), &json!(directory_url)),
            "{log}"
        );
    }
    let codes = t.issued("authorization_code");
    assert_eq!(codes.len(), 3, "{log}");
    let thumbprint = t.fed.pki().client("consumer").unwrap().thumbprint();
    for c in &codes {
        assert_eq!(c["client_id"], directory_url.as_str(), "{log}");
        assert_eq!(c["scope"], LICENCE, "the licence, a plain scope: {log}");
        assert_eq!(c["x5t#S256"], thumbprint.as_str(), "{log}");
        assert!(c["refresh_token"].is_string(), "{log}");
    }
    // The metadata came from the RFC 8414 location (the OpenID one answers 404).
    let metadata = "/.well-known/oauth-authorization-server/accounts";
    assert!(!t.oidc.requests("mtls", metadata).is_empty(), "{log}");

    // fetch --grant: the household's data through the data provider, which introspected the
    // token at oidc-provider.
    let data_url = t.fed.data_url();
    let csv = data::csv(data::DEFAULT_ROWS);
    let (code, out, err) = t
        .run(&["-vv", "fetch", "--grant", "home-1", &data_url])
        .await;
    assert_eq!(code, 0, "{err}\n{}", t.oidc.log());
    assert!(out.starts_with(csv.as_str()), "{out:.200}");
    assert!(!t.oidc.events("introspection").is_empty());

    // run --grant: the plugin's requests carry home-2's token; an audit file.
    let audit = t.dir.path().join("audit.jsonl");
    let (code, out, err) = t
        .run(&[
            "-v",
            "run",
            "--grant",
            "home-2",
            "--audit",
            audit.to_str().unwrap(),
            guests::FETCH,
            "--",
            &data_url,
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, csv);

    // batch: 9 items over the three grants, each line naming its own.
    let input = t.dir.path().join("items.jsonl");
    let lines: Vec<String> = (0..9)
        .map(|i| {
            let url = format!("{}/items/{i}", t.fed.data_origin());
            json!({ "url": url, "grant": format!("home-{}", i % 3 + 1) }).to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out_dir = t.dir.path().join("batch-out");
    let (input, out_dir) = (
        input.to_str().unwrap().to_owned(),
        out_dir.to_str().unwrap().to_owned(),
    );
    let (code, _, err) = t
        .run(&[
            "-v",
            "batch",
            "--input",
            &input,
            "--out",
            &out_dir,
            "--concurrency",
            "4",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let manifest = std::fs::read_to_string(Path::new(&out_dir).join("manifest.jsonl")).unwrap();
    let records: Vec<Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 9);
    for r in &records {
        assert_eq!(r["outcome"], "done", "{r}");
        let i = r["index"].as_u64().unwrap();
        assert_eq!(r["grant"], format!("home-{}", i % 3 + 1), "{r}");
        let body = std::fs::read(Path::new(&out_dir).join(r["file"].as_str().unwrap())).unwrap();
        assert_eq!(
            body,
            serde_json::to_vec(&data::item(&i.to_string())).unwrap()
        );
    }
    // Nothing was refreshed (300 s tokens), and no grant was refused.
    assert_eq!(t.oidc.tokens().len(), 3, "{}", t.oidc.log());
    assert!(t.oidc.events("grant_error").is_empty(), "{}", t.oidc.log());

    // grant revoke: RFC 7009 at oidc-provider, then removed; its access token is no longer
    // active there, and the grant is gone here.
    let (code, out, err) = t.run(&["grant", "revoke", "home-3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let revocations = t.oidc.events("revocation");
    assert_eq!(revocations.len(), 1, "{}", t.oidc.log());
    assert_eq!(revocations[0]["status"], 200);
    assert_eq!(revocations[0]["client_id"], directory_url.as_str());
    assert!(!t.grants().join("home-3.json").exists());
    let provider = t.fed.pki().client("provider").unwrap();
    let http = t.fed.pki().http_client(Some(provider)).unwrap();
    let home3 = codes[2]["access_token"].as_str().unwrap();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", home3)
        .append_pair("client_id", &provider.client_id)
        .finish();
    let answer = http
        .post(format!("{}/token/introspection", t.oidc.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["active"], false, "{answer}");
    let (code, _, err) = t.run(&["fetch", "--grant", "home-3", &data_url]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("grant add home-3"), "{err}");
    // The other households' grants are untouched.
    let (code, _, err) = t.run(&["fetch", "--grant", "home-2", &data_url]).await;
    assert_eq!(code, 0, "{err}");

    t.assert_no_token_leaked();
}

#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn ib1_refresh_after_expiry_rotates_and_a_withdrawn_consent_ends_the_grant() {
    // 5 s tokens: the host refreshes 2 to 3 s after each arrived (half the lifetime, in whole
    // seconds), which leaves a loaded machine time to finish a round's batch before its new
    // tokens are due.
    const TTL: u64 = 5;
    let test = "ib1_refresh_after_expiry_rotates_and_a_withdrawn_consent_ends_the_grant";
    let Some(mut t) = Ib1::start(test, TTL).await else {
        return;
    };
    let names = ["flat-a", "flat-b", "flat-c"];
    for (name, login) in names.iter().zip(["dora", "erin", "fred"]) {
        t.add(name, login).await;
    }
    let got = Instant::now();
    // Each grant's refresh token, as oidc-provider issued it (in the order of the consents).
    let mut current: BTreeMap<&str, String> = names
        .iter()
        .zip(t.issued("authorization_code"))
        .map(|(n, e)| (*n, e["refresh_token"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(current.len(), 3);
    let input = t.dir.path().join("items.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let url = format!("{}/items/{i}", t.fed.data_origin());
            json!({ "url": url, "grant": names[i % 3] }).to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let input = input.to_str().unwrap().to_owned();

    // Two rounds, each past every token's expiry: a batch over the three grants refreshes each
    // exactly once, spending the refresh token the previous round (or the consent) left.
    let mut round_started = got;
    for round in 0..2 {
        let wait = Duration::from_millis(TTL * 1000 + 300).saturating_sub(round_started.elapsed());
        tokio::time::sleep(wait).await;
        let before = t.issued("refresh_token").len();
        let out_dir = t.dir.path().join(format!("out-{round}"));
        let out_dir = out_dir.to_str().unwrap().to_owned();
        let (code, _, err) = t
            .run(&[
                "-vv",
                "batch",
                "--input",
                &input,
                "--out",
                &out_dir,
                "--concurrency",
                "4",
            ])
            .await;
        round_started = Instant::now();
        assert_eq!(code, 0, "{err}\n{}", t.oidc.log());
        let manifest = std::fs::read_to_string(Path::new(&out_dir).join("manifest.jsonl")).unwrap();
        assert_eq!(
            manifest.matches("\"outcome\":\"done\"").count(),
            12,
            "{manifest}"
        );
        let refreshes = t.issued("refresh_token")[before..].to_vec();
        assert_eq!(refreshes.len(), 3, "round {round}: {}", t.oidc.log());
        for r in &refreshes {
            let spent = r["spent_refresh_token"].as_str().unwrap();
            let (&name, _) = current
                .iter()
                .find(|(_, rt)| rt.as_str() == spent)
                .unwrap_or_else(|| panic!("round {round}: a spent token of no grant's head"));
            let rotated = r["refresh_token"].as_str().unwrap();
            assert_ne!(rotated, spent, "rotated");
            assert_eq!(
                r["x5t#S256"],
                t.fed.pki().client("consumer").unwrap().thumbprint()
            );
            current.insert(name, rotated.to_owned());
        }
        for name in names {
            assert_eq!(
                t.stored_refresh_token(name),
                current[name],
                "round {round}: {name} keeps the rotated refresh token"
            );
        }
    }
    assert!(t.oidc.events("grant_error").is_empty(), "{}", t.oidc.log());

    // The household of flat-c withdraws its consent at oidc-provider (its refresh token revoked
    // there, RFC 7009, which ends the grant). Past the access token's refresh point the host's
    // one refresh is refused (invalid_grant): a clear error, the grant marked ended, no retry.
    let consumer = t.fed.pki().client("consumer").unwrap();
    let http = t.fed.pki().http_client(Some(consumer)).unwrap();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "client_id",
            &fapi_federation::directory_url(&consumer.client_id),
        )
        .append_pair("token", &current["flat-c"])
        .append_pair("token_type_hint", "refresh_token")
        .finish();
    let resp = http
        .post(format!("{}/token/revocation", t.oidc.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Due at the refresh point: half the lifetime in whole seconds before the expiry, which the
    // grant counts from the second the token came (so at most TTL - TTL / 2 s after it came).
    let wait =
        Duration::from_millis((TTL - TTL / 2) * 1000 + 300).saturating_sub(round_started.elapsed());
    tokio::time::sleep(wait).await;
    let data_url = t.fed.data_url();
    let token_requests = |t: &Ib1| t.oidc.requests("mtls", "/accounts/token").len();
    let before = token_requests(&t);

    // Meanwhile flat-a is due too: two processes at once use it. One refresh request (the
    // grant's file lock), spending its current refresh token; oidc-provider would revoke the
    // grant if the spent one came again.
    let mut a = t.command(&["fetch", "--grant", "flat-a", &data_url]);
    let mut b = t.command(&["fetch", "--grant", "flat-a", &data_url]);
    let (ra, rb) = tokio::join!(
        tokio::task::spawn_blocking(move || a.output().unwrap()),
        tokio::task::spawn_blocking(move || b.output().unwrap())
    );
    for out in [ra.unwrap(), rb.unwrap()] {
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(out.stdout.starts_with(b"postcode,"));
        t.printed
            .push(("fetch flat-a".into(), [out.stdout, out.stderr].concat()));
    }
    assert_eq!(token_requests(&t), before + 1, "{}", t.oidc.log());
    let last = t.issued("refresh_token").pop().unwrap();
    assert_eq!(last["spent_refresh_token"], current["flat-a"].as_str());
    assert_eq!(
        t.stored_refresh_token("flat-a"),
        last["refresh_token"].as_str().unwrap()
    );

    let (code, _, err) = t.run(&["fetch", "--grant", "flat-c", &data_url]).await;
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("the consent has ended or was revoked: run grant add flat-c again"),
        "{err}"
    );
    assert_eq!(token_requests(&t), before + 2, "{}", t.oidc.log());
    let refused = t.oidc.events("grant_error");
    assert_eq!(refused.len(), 1, "{}", t.oidc.log());
    assert_eq!(refused[0]["error"], "invalid_grant");
    let (code, _, err) = t.run(&["fetch", "--grant", "flat-c", &data_url]).await;
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("the consent has ended or was revoked"),
        "{err}"
    );
    assert_eq!(
        token_requests(&t),
        before + 2,
        "no refresh of an ended grant"
    );

    t.assert_no_token_leaked();
}

/// A server that does not rotate (RFC 6749 section 6: a new refresh token is optional):
/// oidc-provider answers each refresh with the same refresh token, and the host keeps spending it.
#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn ib1_a_refresh_token_that_is_not_rotated_is_kept_and_used_again() {
    const TTL: u64 = 3;
    let test = "ib1_a_refresh_token_that_is_not_rotated_is_kept_and_used_again";
    let Some(mut t) = Ib1::start_with(test, TTL, &["--no-rotation"]).await else {
        return;
    };
    t.add("home", "jo").await;
    let got = Instant::now();
    let first = t.stored_refresh_token("home");
    let data_url = t.fed.data_url();
    for round in 1..=2u32 {
        let wait = Duration::from_millis(u64::from(round) * (TTL * 1000 + 300))
            .saturating_sub(got.elapsed());
        tokio::time::sleep(wait).await;
        let (code, out, err) = t.run(&["-vv", "fetch", "--grant", "home", &data_url]).await;
        assert_eq!(code, 0, "{err}\n{}", t.oidc.log());
        assert!(out.starts_with("postcode,"));
        let refreshes = t.issued("refresh_token");
        assert_eq!(refreshes.len(), round as usize, "{}", t.oidc.log());
        let last = refreshes.last().unwrap();
        assert_eq!(last["refresh_token"], first.as_str(), "not rotated");
        assert_eq!(last["spent_refresh_token"], first.as_str());
        assert_eq!(t.stored_refresh_token("home"), first, "kept");
    }
    assert!(t.oidc.events("grant_error").is_empty(), "{}", t.oidc.log());
    t.assert_no_token_leaked();
}

#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn ib1_cancelled_consent_refused_pars_and_a_token_of_no_member_with_oidc_provider() {
    let test = "ib1_cancelled_consent_refused_pars_and_a_token_of_no_member_with_oidc_provider";
    let Some(mut t) = Ib1::start(test, 300).await else {
        return;
    };
    // The household cancels on oidc-provider's consent page: access_denied back at the host,
    // nothing exchanged, nothing stored.
    let (code, _, err) = t.grant_add("home", "gina", false).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("declined (access_denied)") && err.contains("grant add home"),
        "{err}"
    );
    assert!(!t.grants().join("home.json").exists());
    assert!(t.oidc.tokens().is_empty(), "{}", t.oidc.log());

    // A scope the client is not registered for: oidc-provider refuses the PAR (invalid_scope);
    // no address is printed.
    let (code, out, err) = t
        .run(&[
            "grant",
            "add",
            "home",
            "--scope",
            "consumption:read",
            "--timeout",
            "20",
        ])
        .await;
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty(), "no address for a refused request: {out}");
    assert!(
        err.contains("invalid_scope") && err.contains("--scope"),
        "{err}"
    );

    // A certificate whose Directory URL oidc-provider does not know as a client: the PAR is
    // refused (invalid_client).
    t.fed.write_client_config(t.dir.path(), "limited").unwrap();
    let (code, out, err) = t
        .run(&[
            "--certificate",
            "limited.pem",
            "--private-key",
            "limited.key",
            "grant",
            "add",
            "other",
            "--timeout",
            "20",
        ])
        .await;
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("invalid_client"), "{err}");
    let pars: Vec<Value> = t.oidc.events("par");
    let refused: Vec<&Value> = pars.iter().filter(|p| p["status"] != 201).collect();
    assert_eq!(refused.len(), 2, "{}", t.oidc.log());
    assert_eq!(refused[0]["error"], "invalid_scope");
    assert_eq!(refused[1]["error"], "invalid_client");
    assert!(t.oidc.tokens().is_empty(), "{}", t.oidc.log());
    assert!(!t.grants().join("other.json").exists());

    // A certificate-bound token whose client_id is no Directory URL (the provider's own,
    // client_credentials): the data provider, serving an ib1 issuer, refuses it.
    let provider = t.fed.pki().client("provider").unwrap();
    let http = t.fed.pki().http_client(Some(provider)).unwrap();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", &provider.client_id)
        .append_pair("scope", "consumption:read")
        .finish();
    let resp = http
        .post(format!("{}/token", t.oidc.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", t.oidc.log());
    let issued: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let resp = http
        .get(t.fed.data_url())
        .bearer_auth(issued["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("invalid_token") && challenge.contains("not a Directory URL"),
        "{challenge}"
    );

    for (what, hay) in &t.printed {
        Needles::key_only(&t.fed.pki().client("consumer").unwrap().key_pem)
            .assert_absent(what, hay);
    }
}

/// `fapi-host dev --issuer URL --profile ib1`: the dev data provider takes oidc-provider's `ib1`
/// tokens (discovered at the RFC 8414 location), and the `fapi.toml` it writes (profile ib1,
/// the Directory URL from the certificate) gets a household's consent there and fetches with it.
#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn dev_with_an_external_ib1_issuer_serves_its_consented_tokens() {
    let test = "dev_with_an_external_ib1_issuer_serves_its_consented_tokens";
    let Some(mut t) = Ib1::start(test, 300).await else {
        return;
    };
    // The PKI oidc-provider trusts and serves is in DIR/pki: `dev` reuses it.
    let dev_dir = t.dir.path().join("pki");
    let mut child = Command::new(fapi_tests::fapi_host_bin())
        .arg("dev")
        .arg("--dir")
        .arg(&dev_dir)
        .args([
            "--profile",
            "ib1",
            "--issuer",
            &t.oidc.issuer,
            "--issuer-ca",
        ])
        .arg(dev_dir.join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let summary = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let mut out = BufReader::new(out).lines();
        while let Some(Ok(line)) = out.next() {
            let done = line.starts_with("  fapi-host --config");
            lines.push(line);
            if done {
                break;
            }
        }
        // The rest is read (and dropped) until the process ends.
        std::thread::spawn(move || out.for_each(drop));
        lines.join("\n")
    })
    .await
    .unwrap();
    assert!(
        summary.contains(&format!("issuer (external) {}", t.oidc.issuer))
            && summary.contains("grant add home"),
        "{summary}"
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dev_dir.join("federation.json")).unwrap())
            .unwrap();
    assert_eq!(info["profile"], "ib1");
    let config = PathBuf::from(info["config"].as_str().unwrap());
    let toml = std::fs::read_to_string(&config).unwrap();
    assert!(toml.contains("profile = \"ib1\""), "{toml}");
    std::fs::write(&config, format!("grants_dir = \"grants\"\n{toml}")).unwrap();
    t.config = config;
    // What `dev` wrote (its key files among them) is not fapi-host's client's doing.
    t.before = FileSnapshot::take(t.dir.path());

    let before = t.oidc.events("introspection").len();
    t.add("home", "ida").await;
    let data_url = info["data_url"].as_str().unwrap();
    assert_ne!(
        data_url,
        t.fed.data_url(),
        "the dev data provider, not the test's"
    );
    let (code, out, err) = t.run(&["fetch", "--grant", "home", data_url]).await;
    assert_eq!(code, 0, "{err}\n{}", t.oidc.log());
    assert!(out.starts_with("postcode,"), "{out:.80}");
    assert_eq!(t.oidc.events("introspection").len(), before + 1);
    t.assert_no_token_leaked();
}
