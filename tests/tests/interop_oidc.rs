//! Interoperability with an independent OpenID provider: panva's `oidc-provider` (Node.js, pinned in
//! `tests/oidc/package-lock.json`, configured by `tests/oidc/server.mjs` as an Open Energy-style
//! directory) issues the tokens, and the federation's data provider introspects them there.
//! `fapi-host fetch`, `run` and `batch` read data through it; token expiry and refresh, the
//! `mtls_endpoint_aliases`, `invalid_scope` and `invalid_client` are checked against its event log,
//! and so is `private_key_jwt` client authentication (a consumer registered with its JWK).
//!
//! Needs `node` and `npm ci --prefix tests/oidc`; without them each test prints why it is skipped
//! and passes, unless `FAPI_REQUIRE_INTEROP=1` (set by `.ci/run`), which makes them fail.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fapi_federation::{ClientSpec, ExternalIssuer, Federation, FederationConfig, Pki, data};
use fapi_host::{FapiClient, Overrides, Settings};
use fapi_tests::guests;
use fapi_tests::sandbox_env::Needles;
use serde_json::Value;

fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// `None` (with a message) when node or the npm packages are missing, unless FAPI_REQUIRE_INTEROP=1.
pub(super) fn prerequisites(test: &str) -> Option<()> {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let installed = oidc_dir()
        .join("node_modules/oidc-provider/package.json")
        .exists();
    let missing = match (node.is_some(), installed) {
        (true, true) => return Some(()),
        (false, _) => "`node` (Node.js >= 20) is not on PATH",
        (true, false) => "oidc-provider is not installed: run `npm ci --prefix tests/oidc`",
    };
    if std::env::var("FAPI_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{test}: {missing}, and FAPI_REQUIRE_INTEROP=1 requires the interop tests to run");
    }
    eprintln!("SKIPPED {test}: {missing} (set FAPI_REQUIRE_INTEROP=1 to make this a failure)");
    None
}

/// The oidc-provider server (a child process); killed by PID and reaped when dropped.
pub(super) struct OidcServer {
    child: Child,
    stdin: Mutex<(ChildStdin, u64)>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    pub(super) issuer: String,
    mtls_origin: String,
    pub(super) version: String,
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcServer {
    /// `out` ended with exit status `code`; if not, its stderr and the provider's log say why.
    pub(super) fn assert_exit(&self, out: &Output, code: i32) {
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}\n{}",
            text(&out.stderr),
            self.log()
        );
    }

    fn start(pki_dir: &Path, clients: &Value, token_ttl: u64) -> OidcServer {
        OidcServer::start_with_args(pki_dir, clients, token_ttl, &[])
    }

    /// [`OidcServer::start`] with more arguments of `server.mjs` (`--ib1`, `--refresh-ttl N`).
    pub(super) fn start_with_args(
        pki_dir: &Path,
        clients: &Value,
        token_ttl: u64,
        args: &[&str],
    ) -> OidcServer {
        let clients_file = pki_dir.join("oidc-clients.json");
        std::fs::write(&clients_file, clients.to_string()).unwrap();
        let mut child = Command::new("node")
            .arg(oidc_dir().join("server.mjs"))
            .arg("--cert")
            .arg(pki_dir.join("server.pem"))
            .arg("--key")
            .arg(pki_dir.join("server.key"))
            .arg("--ca")
            .arg(pki_dir.join("ca.pem"))
            .arg("--clients")
            .arg(&clients_file)
            .arg("--token-ttl")
            .arg(token_ttl.to_string())
            .args(args)
            .current_dir(oidc_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let events = events.clone();
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if v["event"] == "ready" {
                        let _ = ready_tx.send(v.clone());
                    }
                    events.lock().unwrap().push(v);
                }
            });
        }
        {
            let stderr = stderr.clone();
            let err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let ready = match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "oidc-provider did not print its ready line: {}",
                    stderr.lock().unwrap()
                );
            }
        };
        OidcServer {
            child,
            stdin: Mutex::new((stdin, 0)),
            events,
            stderr,
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            mtls_origin: ready["mtls_origin"].as_str().unwrap().to_owned(),
            version: ready["oidc_provider"].as_str().unwrap().to_owned(),
        }
    }

    /// Wait until every event the server wrote so far has been read (a "sync" round trip).
    fn sync(&self) {
        let mut stdin = self.stdin.lock().unwrap();
        stdin.1 += 1;
        let id = stdin.1.to_string();
        writeln!(stdin.0, "sync {id}").unwrap();
        stdin.0.flush().unwrap();
        let t0 = Instant::now();
        while !self
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "sync" && e["id"] == id.as_str())
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no sync answer from oidc-provider: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The events named `name` so far (after a [`OidcServer::sync`]).
    pub(super) fn events(&self, name: &str) -> Vec<Value> {
        self.sync();
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    }

    /// Tokens issued (from the event log), in order.
    pub(super) fn tokens(&self) -> Vec<Value> {
        self.events("token_issued")
    }

    fn token_values(&self) -> Vec<String> {
        self.tokens()
            .iter()
            .map(|e| e["access_token"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Requests seen on one listener ("plain" or "mtls") for one path.
    pub(super) fn requests(&self, listener: &str, path: &str) -> Vec<Value> {
        self.events("request")
            .into_iter()
            .filter(|e| e["listener"] == listener && e["path"] == path)
            .collect()
    }

    pub(super) fn log(&self) -> String {
        let events = self.events.lock().unwrap();
        let lines: Vec<String> = events.iter().map(Value::to_string).collect();
        format!(
            "events:\n{}\nstderr:\n{}",
            lines.join("\n"),
            self.stderr.lock().unwrap()
        )
    }
}

/// A fresh PKI written to `<tempdir>/pki`, and oidc-provider serving its server certificate with the
/// four registered clients of the local federation.
async fn start_oidc(test: &str, token_ttl: u64) -> Option<(Pki, tempfile::TempDir, OidcServer)> {
    start_oidc_with(test, token_ttl, false, false).await
}

/// [`start_oidc`]; with `consumer_private_key_jwt`, the consumer is registered for
/// `private_key_jwt` with the public JWK of its certificate's key (ES256), still mTLS-bound; with
/// `dpop`, for DPoP-bound tokens (oidc-provider's DPoP feature on, nonces required).
async fn start_oidc_with(
    test: &str,
    token_ttl: u64,
    consumer_private_key_jwt: bool,
    dpop: bool,
) -> Option<(Pki, tempfile::TempDir, OidcServer)> {
    prerequisites(test)?;
    // Every log line of this process, every target at every level, is searched for tokens.
    fapi_tests::capture_logs();
    let pki = Pki::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki.write_to(&pki_dir).unwrap();
    let client = |name: &str, scope: &str| {
        let c = pki.client(name).unwrap();
        serde_json::json!({ "client_id": c.client_id, "subject_dn": c.subject_dn, "scope": scope })
    };
    let mut consumer = client("consumer", "directory:software consumption:read");
    if consumer_private_key_jwt {
        let c = pki.client("consumer").unwrap();
        let (cert, key) = (pki_dir.join("consumer.pem"), pki_dir.join("consumer.key"));
        std::fs::write(&cert, &c.cert_pem).unwrap();
        std::fs::write(&key, &c.key_pem).unwrap();
        let jws = fapi_host::Identity::load(&cert, &key)
            .unwrap()
            .0
            .jws_key()
            .unwrap();
        // Registered under the kid the host sends by default: the key's RFC 7638 thumbprint.
        let mut jwk = jws.jwk().clone();
        jwk["kid"] = jws.thumbprint().into();
        consumer["jwks"] = serde_json::json!({ "keys": [jwk] });
        consumer["token_endpoint_auth_signing_alg"] = jws.alg().name().into();
    }
    consumer["dpop"] = dpop.into();
    let clients = serde_json::json!([
        consumer,
        client("consumer-b", "directory:software consumption:read"),
        client("limited", "directory:software"),
        client("provider", ""),
    ]);
    let oidc =
        tokio::task::spawn_blocking(move || OidcServer::start(&pki_dir, &clients, token_ttl))
            .await
            .unwrap();
    Some((pki, dir, oidc))
}

/// oidc-provider, the federation's data provider introspecting there, and a consumer configuration.
struct Env {
    oidc: OidcServer,
    fed: Federation,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    async fn start(test: &str, token_ttl: u64) -> Option<Env> {
        Env::start_with(test, token_ttl, false, None).await
    }

    /// [`Env::start`]; with `private_key_jwt`, the consumer authenticates with client assertions
    /// (its configuration says `token_endpoint_auth_method = "private_key_jwt"`); with `dpop`,
    /// its tokens are DPoP-bound and the data provider demands its own nonces, rotated after
    /// every `dpop` proofs it accepts.
    async fn start_with(
        test: &str,
        token_ttl: u64,
        private_key_jwt: bool,
        dpop: Option<u64>,
    ) -> Option<Env> {
        let (pki, dir, oidc) =
            start_oidc_with(test, token_ttl, private_key_jwt, dpop.is_some()).await?;
        let external = ExternalIssuer {
            issuer_url: oidc.issuer.clone(),
            ca_pem: pki.ca_pem().to_owned(),
            provider: pki.client("provider").unwrap().clone(),
        };
        let fed = Federation::start(
            pki,
            FederationConfig {
                external_issuer: Some(external),
                private_key_jwt: private_key_jwt.then(fapi_federation::PrivateKeyJwt::default),
                dpop_required: dpop.is_some(),
                dpop_nonce: dpop.is_some(),
                dpop_nonce_rotate_every: dpop.unwrap_or(0),
                record_issued_tokens: true,
                ..FederationConfig::default()
            },
        )
        .await
        .unwrap();
        let config = fed.write_client_config(dir.path(), "consumer").unwrap();
        Some(Env {
            oidc,
            fed,
            dir,
            config,
        })
    }

    async fn cli(&self, config: &Path, args: &[&str]) -> Output {
        self.cli_with(config, args, &[]).await
    }

    /// [`Env::cli`] with these environment variables.
    async fn cli_with(&self, config: &Path, args: &[&str], vars: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(fapi_tests::fapi_host_bin());
        cmd.arg("--config")
            .arg(config)
            .args(args)
            .current_dir(self.dir.path())
            .env("XDG_CACHE_HOME", cache());
        for (k, _) in std::env::vars() {
            if k.starts_with("FAPI_") && k != "FAPI_REQUIRE_INTEROP" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    fn library_client(&self, margin: Option<Duration>) -> FapiClient {
        let mut s = Settings::load(Some(&self.config), &Overrides::default()).unwrap();
        if let Some(m) = margin {
            s.client.token_refresh_margin = m;
        }
        FapiClient::from_settings(&s).unwrap().0
    }

    /// Only the mTLS aliases were used for tokens and introspection; the plain listener's token
    /// endpoint saw nothing.
    fn assert_aliases_only(&self) {
        let log = self.oidc.log();
        assert!(self.oidc.requests("plain", "/token").is_empty(), "{log}");
        assert!(
            self.oidc
                .requests("plain", "/token/introspection")
                .is_empty(),
            "{log}"
        );
        for t in self.oidc.tokens() {
            assert_eq!(t["listener"], "mtls", "{log}");
        }
        for i in self.oidc.events("introspection") {
            assert_eq!(i["listener"], "mtls", "{log}");
            assert_eq!(i["client_id"], "fapi-dev-provider", "{log}");
        }
    }
}

pub(super) fn cache() -> String {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("wasmtime-cache")
        .display()
        .to_string()
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every token oidc-provider issued (at least one) and the consumer's private key: what must
/// appear nowhere.
fn needles(env: &Env) -> Needles {
    let tokens = env.oidc.token_values();
    for t in &tokens {
        assert!(t.len() >= 40, "implausible token of {} bytes", t.len());
    }
    Needles::new(&tokens, &env.fed.pki().client("consumer").unwrap().key_pem)
}

#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn fetch_run_and_batch_read_data_with_oidc_provider_tokens() {
    let Some(env) = Env::start(
        "fetch_run_and_batch_read_data_with_oidc_provider_tokens",
        300,
    )
    .await
    else {
        return;
    };
    eprintln!("oidc-provider {}", env.oidc.version);
    let cfg = env.config.clone();
    let mut searched: Vec<(String, Vec<u8>)> = Vec::new();

    // fetch: two resources, one token.
    let out = env
        .cli(
            &cfg,
            &[
                "-vv",
                "fetch",
                &env.fed.data_url(),
                &env.fed.data_json_url(),
            ],
        )
        .await;
    env.oidc.assert_exit(&out, 0);
    let csv = data::csv(data::DEFAULT_ROWS);
    assert!(
        out.stdout.starts_with(csv.as_bytes()),
        "{:.200}",
        text(&out.stdout)
    );
    assert_eq!(env.oidc.tokens().len(), 1, "{}", env.oidc.log());
    let t = &env.oidc.tokens()[0];
    assert_eq!(t["client_id"], "fapi-dev-consumer");
    assert_eq!(t["scope"], "directory:software consumption:read");
    assert_eq!(
        t["x5t#S256"],
        env.fed.pki().client("consumer").unwrap().thumbprint()
    );
    assert!(
        !env.oidc.events("introspection").is_empty(),
        "{}",
        env.oidc.log()
    );
    searched.push(("fetch stdout".into(), out.stdout));
    searched.push(("fetch stderr (-vv)".into(), out.stderr));

    // run: the example plugin through the sandbox, with an audit file.
    let audit = env.dir.path().join("audit.jsonl");
    let out = env
        .cli(
            &cfg,
            &[
                "-v",
                "run",
                "--audit",
                audit.to_str().unwrap(),
                guests::FETCH,
                "--",
                &env.fed.data_url(),
            ],
        )
        .await;
    env.oidc.assert_exit(&out, 0);
    assert_eq!(out.stdout, csv.as_bytes());
    assert_eq!(
        env.oidc.tokens().len(),
        2,
        "one more process, one more token"
    );
    searched.push(("run stdout".into(), out.stdout));
    searched.push(("run stderr".into(), out.stderr));
    searched.push(("audit file".into(), std::fs::read(&audit).unwrap()));

    // batch: 40 items, one token.
    let input = env.dir.path().join("items.txt");
    let urls: Vec<String> = (0..40)
        .map(|i| format!("{}/items/{i}", env.fed.data_origin()))
        .collect();
    std::fs::write(&input, urls.join("\n") + "\n").unwrap();
    let out_dir = env.dir.path().join("batch-out");
    let out = env
        .cli(
            &cfg,
            &[
                "-v",
                "batch",
                "--input",
                input.to_str().unwrap(),
                "--out",
                out_dir.to_str().unwrap(),
                "--concurrency",
                "8",
            ],
        )
        .await;
    env.oidc.assert_exit(&out, 0);
    assert_eq!(env.oidc.tokens().len(), 3, "{}", env.oidc.log());
    let manifest = std::fs::read_to_string(out_dir.join("manifest.jsonl")).unwrap();
    let records: Vec<Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 40);
    for r in &records {
        assert_eq!(r["outcome"], "done", "{r}");
        let id = r["index"].as_u64().unwrap();
        let body = std::fs::read(out_dir.join(r["file"].as_str().unwrap())).unwrap();
        assert_eq!(
            body,
            serde_json::to_vec(&data::item(&id.to_string())).unwrap()
        );
    }
    searched.push(("batch stderr".into(), out.stderr));
    searched.push(("batch manifest".into(), manifest.into_bytes()));

    // Every token came from the mTLS alias; the DP introspected at the alias as its own client.
    env.assert_aliases_only();
    assert!(
        env.oidc.requests("mtls", "/token").len() == 3,
        "{}",
        env.oidc.log()
    );

    // The plain (non-mTLS) token endpoint advertised at the top level would have refused the
    // consumer: no certificate is requested there, so tls_client_auth cannot succeed.
    let consumer = env.fed.pki().client("consumer").unwrap();
    let http = env.fed.pki().http_client(Some(consumer)).unwrap();
    let resp = http
        .post(format!("{}/token", env.oidc.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=fapi-dev-consumer&scope=consumption%3Aread")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");
    // ... although discovery (on the plain listener) advertises it at the top level: the host
    // chose the alias.
    let doc = http
        .get(format!(
            "{}/.well-known/openid-configuration",
            env.oidc.issuer
        ))
        .send()
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&doc.bytes().await.unwrap()).unwrap();
    assert_eq!(doc["issuer"], env.oidc.issuer.as_str());
    assert_eq!(doc["token_endpoint"], format!("{}/token", env.oidc.issuer));
    assert_eq!(
        doc["mtls_endpoint_aliases"]["token_endpoint"],
        format!("{}/token", env.oidc.mtls_origin)
    );
    let refused = env.oidc.requests("plain", "/token");
    assert_eq!(refused.len(), 1, "{}", env.oidc.log());
    assert_eq!(refused[0]["status"], 401);

    // The tokens' bytes and the key appear nowhere the host wrote, nor in this process's logs
    // (the federation's data provider, which saw every token).
    assert_eq!(env.oidc.token_values().len(), 3);
    let needles = needles(&env);
    for (what, hay) in &searched {
        needles.assert_absent(what, hay);
    }
    let files: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 41, "40 items and the manifest");
    needles.assert_absent_from_files(&files);
    needles.assert_absent_from_logs();
}

#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn tokens_are_refreshed_after_expiry_and_not_before() {
    const TTL: u64 = 4;
    let Some(env) = Env::start("tokens_are_refreshed_after_expiry_and_not_before", TTL).await
    else {
        return;
    };
    // Library client, refresh margin 0: the token is used until it expires, then replaced. Times
    // are taken from when the first token arrived (`got`), which is after the server issued it.
    let client = env.library_client(Some(Duration::ZERO));
    let r = client.get(env.fed.data_url()).send().await.unwrap();
    let got = Instant::now();
    assert_eq!(r.status(), 200);
    assert_eq!(env.oidc.tokens().len(), 1);
    let expires_in = env.oidc.tokens()[0]["expires_in"].as_u64().unwrap();
    assert_eq!(
        expires_in,
        TTL,
        "the server's short TTL: {}",
        env.oidc.log()
    );
    // Well within the lifetime (the server's `exp` is at least TTL - 1 s after `got`): the same token.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = client.get(env.fed.data_json_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.attempts(), 1);
    let within = got.elapsed();
    if within < Duration::from_millis(TTL * 1000 - 500) {
        assert_eq!(
            env.oidc.tokens().len(),
            1,
            "not before expiry ({within:?} after the first): {}",
            env.oidc.log()
        );
        assert_eq!(client.token_requests(), 1);
    } else {
        eprintln!("machine too slow to check 'not before' here ({within:?}); the batch below does");
    }
    // Past the lifetime by both clocks: a new token, fetched before the request (no 401 replay).
    tokio::time::sleep(Duration::from_millis(TTL * 1000 + 300).saturating_sub(got.elapsed())).await;
    let r = client.get(env.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.attempts(), 1);
    assert_eq!(
        env.oidc.tokens().len(),
        2,
        "after expiry: {}",
        env.oidc.log()
    );
    assert_eq!(client.token_requests(), 2);
    let tokens = env.oidc.tokens();
    let gap = tokens[1]["time_ms"].as_u64().unwrap() - tokens[0]["time_ms"].as_u64().unwrap();
    assert!(gap >= TTL * 1000, "second token {gap} ms after the first");

    // The CLI: a batch spread over ~5 s at 8 items/s with 4 s tokens and the default margin
    // (30 s, capped at half the lifetime: refresh 2 s after each token arrived).
    let before = env.oidc.tokens().len();
    let input = env.dir.path().join("items.txt");
    let urls: Vec<String> = (0..40)
        .map(|i| format!("{}/items/{i}", env.fed.data_origin()))
        .collect();
    std::fs::write(&input, urls.join("\n") + "\n").unwrap();
    let out_dir = env.dir.path().join("out");
    let started = Instant::now();
    let out = env
        .cli(
            &env.config,
            &[
                "batch",
                "--input",
                input.to_str().unwrap(),
                "--out",
                out_dir.to_str().unwrap(),
                "--concurrency",
                "2",
                "--rate",
                "8/s",
            ],
        )
        .await;
    let took = started.elapsed();
    env.oidc.assert_exit(&out, 0);
    let batch_tokens: Vec<Value> = env.oidc.tokens()[before..].to_vec();
    let n = batch_tokens.len();
    // At most one token per 2 s of run time (plus the first), and at least one refresh.
    let max = 1 + (took.as_millis() / 2000) as usize;
    assert!(
        n >= 2 && n <= max,
        "{n} tokens in {took:?} (at most {max}): {}",
        env.oidc.log()
    );
    for pair in batch_tokens.windows(2) {
        let gap = pair[1]["time_ms"].as_u64().unwrap() - pair[0]["time_ms"].as_u64().unwrap();
        assert!(
            gap >= TTL * 1000 / 2,
            "a token replaced after {gap} ms, before its refresh time"
        );
    }
    // No request reached the provider with an expired token (none was refused).
    let manifest = std::fs::read_to_string(out_dir.join("manifest.jsonl")).unwrap();
    for line in manifest.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["outcome"], "done", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
    }
    env.assert_aliases_only();
    let needles = needles(&env);
    needles.assert_absent("batch stderr", &out.stderr);
    needles.assert_absent("the batch's manifest", manifest.as_bytes());
    needles.assert_absent_from_logs();
}

#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn invalid_scope_and_invalid_client_are_clear_errors() {
    let Some(env) = Env::start("invalid_scope_and_invalid_client_are_clear_errors", 300).await
    else {
        return;
    };
    let url = env.fed.data_url();

    // invalid_scope: the limited client asks for consumption:read, which it is not allowed.
    let limited = env
        .fed
        .write_client_config(env.dir.path(), "limited")
        .unwrap();
    let out = env
        .cli(
            &limited,
            &[
                "--requested-scopes",
                "directory:software consumption:read",
                "fetch",
                &url,
            ],
        )
        .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("invalid_scope"), "{err}");
    assert!(err.contains("requested scope is not allowed"), "{err}");
    assert!(
        err.contains("`requested_scopes`"),
        "the fix is named: {err}"
    );
    let errors = env.oidc.events("grant_error");
    assert_eq!(errors.len(), 1, "{}", env.oidc.log());
    assert_eq!(errors[0]["error"], "invalid_scope");
    assert_eq!(errors[0]["listener"], "mtls");

    // invalid_client: a certificate from the right CA for a client oidc-provider does not know.
    let stranger = env
        .fed
        .pki()
        .issue_client(ClientSpec::new("fapi-unregistered"))
        .unwrap();
    std::fs::write(env.dir.path().join("stranger.pem"), &stranger.cert_pem).unwrap();
    std::fs::write(env.dir.path().join("stranger.key"), &stranger.key_pem).unwrap();
    let mut perms = std::fs::metadata(env.dir.path().join("stranger.key"))
        .unwrap()
        .permissions();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        perms.set_mode(0o600);
    }
    std::fs::set_permissions(env.dir.path().join("stranger.key"), perms).unwrap();
    let out = env
        .cli(
            &env.config,
            &[
                "--client-id",
                "fapi-unregistered",
                "--certificate",
                env.dir.path().join("stranger.pem").to_str().unwrap(),
                "--private-key",
                env.dir.path().join("stranger.key").to_str().unwrap(),
                "fetch",
                &url,
            ],
        )
        .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("invalid_client"), "{err}");
    assert!(
        err.contains("subject DN must match"),
        "the fix is named: {err}"
    );

    // invalid_client: a registered client id with another client's certificate (DN mismatch).
    let consumer_b = env
        .fed
        .write_client_config(env.dir.path(), "consumer-b")
        .unwrap();
    let out = env
        .cli(
            &consumer_b,
            &["--client-id", "fapi-dev-consumer", "fetch", &url],
        )
        .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("invalid_client"), "{err}");
    assert!(
        err.contains("subject DN must match"),
        "the fix is named: {err}"
    );
    let errors = env.oidc.events("grant_error");
    assert_eq!(errors.len(), 3, "{}", env.oidc.log());
    assert_eq!(errors[2]["client_id"], "fapi-dev-consumer");
    assert_eq!(
        errors[2]["error_detail"],
        "certificate subject value does not match the registered one"
    );
    // Nothing was issued, and the data provider saw nothing.
    assert!(env.oidc.tokens().is_empty(), "{}", env.oidc.log());
    assert_eq!(env.fed.counters().dp_requests, 0);
    env.assert_aliases_only();
}

/// `fapi-host dev --issuer URL --issuer-ca FILE`: the dev data provider introspects at oidc-provider,
/// and the written fapi.toml gets its tokens there.
#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn dev_command_points_the_data_provider_at_an_external_issuer() {
    let Some((_pki, dir, oidc)) = start_oidc(
        "dev_command_points_the_data_provider_at_an_external_issuer",
        300,
    )
    .await
    else {
        return;
    };
    // The PKI the oidc-provider trusts and serves, reused by `dev` (it is already in DIR).
    let fed_dir = dir.path().join("pki");
    let mut child = Command::new(fapi_tests::fapi_host_bin())
        .arg("dev")
        .arg("--dir")
        .arg(&fed_dir)
        .arg("--issuer")
        .arg(&oidc.issuer)
        .arg("--issuer-ca")
        .arg(fed_dir.join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.stdout.take().unwrap();
    let mut guard = Kill(child);
    // Read its stdout to the end (a closed pipe would fail its last line), the summary first.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let summary = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            let done = line.starts_with("  fapi-host --config");
            lines.push(line);
            if done {
                break;
            }
        }
        (lines.join("\n"), rx)
    })
    .await
    .unwrap();
    let (summary, rx) = summary;
    assert!(
        summary.contains(&format!("issuer (external) {}", oidc.issuer)),
        "{summary}"
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(fed_dir.join("federation.json")).unwrap())
            .unwrap();
    assert_eq!(info["issuer_url"], oidc.issuer.as_str());
    let out = tokio::task::spawn_blocking({
        let config = info["config"].as_str().unwrap().to_owned();
        let url = info["data_url"].as_str().unwrap().to_owned();
        move || {
            Command::new(fapi_tests::fapi_host_bin())
                .args(["--config", &config, "fetch", &url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    oidc.assert_exit(&out, 0);
    assert_eq!(out.stdout, data::csv(data::DEFAULT_ROWS).as_bytes());
    assert_eq!(oidc.tokens().len(), 1, "{}", oidc.log());
    assert_eq!(oidc.events("introspection").len(), 1, "{}", oidc.log());
    assert!(
        oidc.requests("plain", "/token").is_empty(),
        "{}",
        oidc.log()
    );
    // SIGTERM (by PID) stops it cleanly.
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || guard.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The reader thread ends at the end of the output, which the exit closed: every line.
    let rest: Vec<String> = rx.iter().collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

/// A child process (`fapi-host dev`) killed by its PID and reaped when dropped.
pub(super) struct Kill(pub(super) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Without `--issuer`, the issuer's options are usage errors.
#[test]
fn dev_issuer_options_need_issuer() {
    let out = Command::new(fapi_tests::fapi_host_bin())
        .args(["dev", "--issuer-ca", "ca.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--issuer"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(fapi_tests::fapi_host_bin())
        .args(["dev", "--issuer", "http://127.0.0.1:1", "--dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("https"), "{}", text(&out.stderr));
}

/// The consumer's keys in a PKCS#11 token (SoftHSM2, made here), P-256 and RSA 2048 each with a
/// certificate for the consumer's registered subject: `check`, `fetch`, `run` and `batch` get
/// oidc-provider's tokens, bound to that certificate, while every TLS signature is made in the
/// token; the PIN appears in no output.
#[tokio::test]
#[cfg_attr(
    not(all(fapi_has_oidc_provider, fapi_has_softhsm)),
    ignore = "needs node with `npm ci --prefix tests/oidc`, softhsm2, opensc and openssl"
)]
async fn keys_in_a_pkcs11_token_get_oidc_provider_tokens() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(env) = Env::start("keys_in_a_pkcs11_token_get_oidc_provider_tokens", 300).await else {
        return;
    };
    const PIN: &str = "pkcs11-interop-pin-4821";
    let dir = env.dir.path();
    let hsm = fapi_federation::SoftHsm::new(dir).unwrap();
    hsm.init_token("fapi", PIN, "so-pin-93").unwrap();
    let conf = hsm.conf().to_owned();
    let module = hsm.module().display().to_string();
    let pin_file = dir.join("pin");
    std::fs::write(&pin_file, PIN).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The P-256 key the federation made for the consumer, and an RSA key made here, certified
    // for the same registered subject.
    let consumer = env.fed.pki().client("consumer").unwrap();
    hsm.run("openssl", &["genrsa", "-out", "rsa.key", "2048"])
        .unwrap();
    let rsa_key = std::fs::read_to_string(dir.join("rsa.key")).unwrap();
    let mut spec = fapi_federation::ClientSpec::new("fapi-dev-consumer");
    spec.name = "consumer-rsa".into();
    spec.algorithm = &rcgen::PKCS_RSA_SHA256;
    spec.key_pair = Some(rcgen::KeyPair::from_pem(&rsa_key).unwrap());
    let rsa = env.fed.pki().issue_client(spec).unwrap();
    let keys = [
        (
            "p256",
            consumer.key_pem.clone(),
            consumer.cert_pem.clone(),
            consumer.thumbprint(),
        ),
        ("rsa", rsa_key, rsa.cert_pem.clone(), rsa.thumbprint()),
    ];
    let original = std::fs::read_to_string(&env.config).unwrap();
    let vars = [("SOFTHSM2_CONF", conf.as_path())];
    let input = dir.join("items.txt");
    std::fs::write(
        &input,
        (0..3)
            .map(|i| format!("{}/items/{i}\n", env.fed.data_origin()))
            .collect::<String>(),
    )
    .unwrap();
    let mut searched: Vec<(String, Vec<u8>)> = Vec::new();
    for (id, (name, key, cert, thumbprint)) in keys.iter().enumerate() {
        let id = format!("{:02}", id + 1);
        hsm.import_key("fapi", PIN, key, name, &id).unwrap();
        let cert_file = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_file, cert).unwrap();
        let mut hsm = format!(
            "pkcs11_module = {module:?}\npkcs11_pin_file = {:?}\n",
            pin_file.display().to_string()
        );
        for line in original.lines() {
            if line.starts_with("private_key") {
                hsm.push_str(&format!(
                    "private_key = \"pkcs11:token=fapi;object={name}\"\n"
                ));
            } else if line.starts_with("certificate") {
                hsm.push_str(&format!(
                    "certificate = {:?}\n",
                    cert_file.display().to_string()
                ));
            } else {
                hsm.push_str(line);
                hsm.push('\n');
            }
        }
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, hsm).unwrap();
        let before = env.oidc.tokens().len();

        let out = env.cli_with(&config, &["check"], &vars).await;
        env.oidc.assert_exit(&out, 0);
        assert!(
            text(&out.stdout).contains("test signature"),
            "{name}: {}",
            text(&out.stdout)
        );
        searched.push((format!("check ({name})"), [out.stdout, out.stderr].concat()));
        let out = env
            .cli_with(&config, &["-vv", "fetch", &env.fed.data_url()], &vars)
            .await;
        env.oidc.assert_exit(&out, 0);
        assert!(
            out.stdout
                .starts_with(data::csv(data::DEFAULT_ROWS).as_bytes()),
            "{name}"
        );
        searched.push((format!("fetch ({name})"), [out.stdout, out.stderr].concat()));
        let out = env
            .cli_with(
                &config,
                &["run", guests::FETCH, "--", &env.fed.data_json_url()],
                &vars,
            )
            .await;
        env.oidc.assert_exit(&out, 0);
        searched.push((format!("run ({name})"), [out.stdout, out.stderr].concat()));
        let out_dir = dir.join(format!("batch-{name}"));
        let out = env
            .cli_with(
                &config,
                &[
                    "batch",
                    "--input",
                    input.to_str().unwrap(),
                    "--out",
                    out_dir.to_str().unwrap(),
                ],
                &vars,
            )
            .await;
        env.oidc.assert_exit(&out, 0);
        assert_eq!(
            std::fs::read_dir(&out_dir).unwrap().count(),
            4,
            "{name}: 3 items and the manifest"
        );
        searched.push((format!("batch ({name})"), [out.stdout, out.stderr].concat()));
        // One token per process, from oidc-provider, bound to this key's certificate.
        let issued = env.oidc.tokens();
        assert_eq!(issued.len() - before, 4, "{name}: {}", env.oidc.log());
        for t in &issued[before..] {
            assert_eq!(t["client_id"], "fapi-dev-consumer");
            assert_eq!(t["x5t#S256"], thumbprint.as_str(), "{name}");
        }
    }
    for (what, bytes) in &searched {
        assert!(
            !fapi_tests::sandbox_env::contains(bytes, PIN.as_bytes()),
            "the PIN in the output of {what}"
        );
    }
    let needles = needles(&env);
    for (what, bytes) in &searched {
        needles.assert_absent(what, bytes);
    }
}

/// PKJ-01, PKJ-02, TIME-01 with an independent server: oidc-provider authenticates the consumer by
/// `private_key_jwt` (its registered JWK, ES256) over mTLS and binds the token to the certificate;
/// the data provider's introspection there accepts it; after expiry the host sends a new
/// assertion with a new jti (two token requests, two assertions, both verified: no grant error);
/// the CLI with -vv prints neither an assertion nor a token.
#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn private_key_jwt_with_oidc_provider_new_assertion_after_expiry_pkj_01() {
    const TTL: u64 = 3;
    let Some(env) = Env::start_with(
        "private_key_jwt_with_oidc_provider_new_assertion_after_expiry_pkj_01",
        TTL,
        true,
        None,
    )
    .await
    else {
        return;
    };
    let config = std::fs::read_to_string(&env.config).unwrap();
    assert!(
        config.contains("token_endpoint_auth_method = \"private_key_jwt\""),
        "{config}"
    );
    let client = env.library_client(Some(Duration::ZERO));
    let r = client
        .get(env.fed.data_url())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.oidc.log()));
    let got = Instant::now();
    assert_eq!(r.status(), 200, "{}", env.oidc.log());
    let tokens = env.oidc.tokens();
    assert_eq!(tokens.len(), 1, "{}", env.oidc.log());
    assert_eq!(tokens[0]["client_auth"], "private_key_jwt");
    assert_eq!(tokens[0]["listener"], "mtls");
    assert_eq!(
        tokens[0]["x5t#S256"],
        env.fed.pki().client("consumer").unwrap().thumbprint(),
        "bound to the certificate of the connection"
    );
    assert!(
        !env.oidc.events("introspection").is_empty(),
        "{}",
        env.oidc.log()
    );

    // Past the lifetime: a new token through a new assertion.
    tokio::time::sleep(Duration::from_millis(TTL * 1000 + 300).saturating_sub(got.elapsed())).await;
    let r = client.get(env.fed.data_json_url()).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", env.oidc.log());
    let tokens = env.oidc.tokens();
    assert_eq!(tokens.len(), 2, "{}", env.oidc.log());
    assert_eq!(client.token_requests(), 2);
    assert_eq!(
        env.oidc.requests("mtls", "/token").len(),
        2,
        "{}",
        env.oidc.log()
    );
    assert!(
        env.oidc.events("grant_error").is_empty(),
        "{}",
        env.oidc.log()
    );
    let claims = |t: &Value| -> Value {
        use base64::Engine as _;
        let jws = t["client_assertion"].as_str().unwrap();
        let part = jws.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let (a, b) = (claims(&tokens[0]), claims(&tokens[1]));
    assert_ne!(a["jti"], b["jti"], "a new jti");
    assert!(b["iat"].as_u64().unwrap() > a["iat"].as_u64().unwrap());
    for c in [&a, &b] {
        assert_eq!(c["iss"], "fapi-dev-consumer");
        assert_eq!(c["sub"], "fapi-dev-consumer");
        assert_eq!(
            c["aud"],
            env.oidc.issuer.as_str(),
            "the issuer as a plain string"
        );
    }

    // The CLI, every log line on: a third token, and no assertion or token in its output.
    let cfg = env.config.clone();
    let out = env.cli(&cfg, &["-vv", "fetch", &env.fed.data_url()]).await;
    env.oidc.assert_exit(&out, 0);
    let tokens = env.oidc.tokens();
    assert_eq!(tokens.len(), 3, "{}", env.oidc.log());
    assert_eq!(tokens[2]["client_auth"], "private_key_jwt");
    let mut secrets: Vec<String> = tokens
        .iter()
        .map(|t| t["client_assertion"].as_str().unwrap().to_owned())
        .collect();
    secrets.extend(env.oidc.token_values());
    let needles = Needles::new(&secrets, &env.fed.pki().client("consumer").unwrap().key_pem);
    needles.assert_absent("fetch stdout", &out.stdout);
    needles.assert_absent("fetch stderr (-vv)", &out.stderr);
    needles.assert_absent_from_logs();

    // An assertion oidc-provider refuses (a kid it has no key for): invalid_client, with what to
    // check, and no token.
    let mut s = Settings::load(Some(&env.config), &Overrides::default()).unwrap();
    s.auth.signing_kid = Some("not-registered".into());
    let err = FapiClient::from_settings(&s)
        .unwrap()
        .0
        .token_info()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("invalid_client")
            && msg.contains("refused the private_key_jwt client assertion")
            && msg.contains("\"not-registered\""),
        "{msg}"
    );
    let refused = env.oidc.events("grant_error");
    assert_eq!(refused.len(), 1, "{}", env.oidc.log());
    assert_eq!(refused[0]["error"], "invalid_client");
    assert_eq!(env.oidc.tokens().len(), 3);

    // The FAPI 1.0 audience (`client_assertion_audience = "token_endpoint"`): the mTLS alias the
    // request goes to, which oidc-provider accepts as the endpoint's URL.
    let mut s = Settings::load(Some(&env.config), &Overrides::default()).unwrap();
    s.auth.assertion_audience = "token_endpoint".parse().unwrap();
    let info = FapiClient::from_settings(&s)
        .unwrap()
        .0
        .token_info()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.oidc.log()));
    let tokens = env.oidc.tokens();
    assert_eq!(tokens.len(), 4, "{}", env.oidc.log());
    assert_eq!(
        info.token_endpoint,
        format!("{}/token", env.oidc.mtls_origin)
    );
    assert_eq!(claims(&tokens[3])["aud"], info.token_endpoint.as_str());
}

/// DPoP with an independent server: oidc-provider (a client registered with
/// `dpop_bound_access_tokens`, nonces required) demands a nonce at the token endpoint and gets
/// the request again once with it (DPOP-05), issues `token_type` DPoP (DPOP-04); the data
/// provider checks the proof against introspection's `cnf.jkt`, demands its own nonce and rotates
/// it in its 200s; an expired token is replaced, its request carrying the nonce already known.
/// Each step is asserted from the servers' side (oidc-provider's `dpop` events, the provider's
/// counters); no proof and no token is in the CLI's output or the logs.
#[tokio::test]
#[cfg_attr(
    not(fapi_has_oidc_provider),
    ignore = "needs node and `npm ci --prefix tests/oidc` (missing when this crate was built)"
)]
async fn dpop_tokens_from_oidc_provider_with_nonces_expiry_and_rotation() {
    const TTL: u64 = 4;
    let test = "dpop_tokens_from_oidc_provider_with_nonces_expiry_and_rotation";
    let Some(env) = Env::start_with(test, TTL, false, Some(2)).await else {
        return;
    };
    let client = env.library_client(Some(Duration::ZERO));
    let r = client.get(env.fed.data_url()).send().await.unwrap();
    let got = Instant::now();
    assert_eq!(r.status(), 200, "{}", env.oidc.log());
    assert_eq!(
        r.attempts(),
        2,
        "the provider's nonce demand, replayed once"
    );
    let at_token = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["path"] == "/token")
            .cloned()
            .collect()
    };
    let dpop = at_token(&env.oidc.events("dpop"));
    let log = env.oidc.log();
    assert_eq!(dpop.len(), 2, "{log}");
    assert_eq!(
        (
            &dpop[0]["status"],
            &dpop[0]["error"],
            &dpop[0]["proof_nonce"]
        ),
        (
            &Value::from(400),
            &Value::from("use_dpop_nonce"),
            &Value::Null
        ),
        "{log}"
    );
    let nonce = dpop[0]["nonce_sent"].as_str().expect("a nonce").to_owned();
    assert_eq!(dpop[1]["status"], 200, "{log}");
    assert_eq!(dpop[1]["proof_nonce"], nonce.as_str(), "{log}");
    assert_eq!(dpop[1]["token_type"], "DPoP", "{log}");
    assert!(dpop.iter().all(|e| e["listener"] == "mtls"), "{log}");
    assert_eq!(env.oidc.tokens().len(), 1, "{log}");
    assert_eq!(client.token_info().await.unwrap().token_type, "DPoP");
    let c = env.fed.counters();
    assert_eq!(
        (c.dpop_nonce_demands, c.dpop_proofs_accepted),
        (1, 1),
        "{c:?}"
    );

    // The provider's nonce rotates after every second proof it accepts, in its 200s: followed
    // without a demand.
    for _ in 0..3 {
        let r = client.get(env.fed.data_json_url()).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.attempts()), (200, 1));
    }
    let c = env.fed.counters();
    assert_eq!(
        (c.dpop_nonce_demands, c.dpop_proofs_accepted),
        (1, 4),
        "{c:?}"
    );

    // Past the token's lifetime: a new token, its request carrying the nonce last sent (no
    // demand), and one replay at most if oidc-provider's 60 s nonce clock turned meanwhile.
    tokio::time::sleep(Duration::from_millis(TTL * 1000 + 300).saturating_sub(got.elapsed())).await;
    let r = client.get(env.fed.data_url()).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 1));
    assert_eq!(env.oidc.tokens().len(), 2, "{}", env.oidc.log());
    let dpop = at_token(&env.oidc.events("dpop"));
    let log = env.oidc.log();
    let last_sent = dpop[..2]
        .iter()
        .rev()
        .find_map(|e| e["nonce_sent"].as_str())
        .expect("a nonce");
    assert_eq!(dpop[2]["proof_nonce"], last_sent, "{log}");
    assert!(
        dpop.len() == 3 || (dpop.len() == 4 && dpop[2]["error"] == "use_dpop_nonce"),
        "{log}"
    );
    assert_eq!(dpop.last().unwrap()["status"], 200, "{log}");

    // The CLI, -vv: its own key and nonces; nothing it printed holds a proof or a token.
    let out = env
        .cli(&env.config, &["-vv", "fetch", &env.fed.data_url()])
        .await;
    env.oidc.assert_exit(&out, 0);
    assert!(out.stdout.starts_with(b"postcode,"));
    let mut secrets = env.oidc.token_values();
    secrets.extend(
        env.oidc
            .events("dpop")
            .iter()
            .map(|e| e["proof"].as_str().unwrap().to_owned()),
    );
    secrets.extend(env.fed.received_dpop_proofs());
    // 3 tokens; 5 proofs at oidc-provider (3 of the library, 2 of the CLI); 8 at the provider.
    assert!(secrets.len() >= 3 + 5 + 8, "{}", secrets.len());
    let needles = Needles::new(&secrets, &env.fed.pki().client("consumer").unwrap().key_pem);
    needles.assert_absent("fetch stdout", &out.stdout);
    needles.assert_absent("fetch stderr (-vv)", &out.stderr);
    needles.assert_absent_from_logs();
}
