//! Faults around the host (issue #6): the authorization server, the data provider and the local
//! machine misbehaving, each ending in the documented behaviour — a retry where the rules allow it,
//! a clear error otherwise, never a panic, never a partial file under a final name, never a replayed
//! non-idempotent request, and never a token's bytes in an error. The cases already covered by
//! other test files are listed, with their tests, in docs/fault-cases.md.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Fed, contains, logs};
use fapi_federation::{AsFault, FederationConfig};
use fapi_host::{Error, FapiClient, Settings};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Settings for fast tests: short backoff, the given timeout and retries.
fn quick(mut s: Settings, timeout: Duration, retries: u32) -> Settings {
    s.client.timeout = timeout;
    s.client.retries = retries;
    s.client.token_retries = retries;
    s.client.backoff_base = Duration::from_millis(10);
    s
}

fn client_of(s: &Settings) -> FapiClient {
    FapiClient::from_settings(s).unwrap().0
}

/// Neither the token nor any `Bearer <value>` other than the redacted form is in `text`.
fn assert_no_token(text: &str, token: Option<&str>) {
    if let Some(t) = token {
        assert!(!text.contains(t), "a token is in: {text}");
    }
    // The federation's tokens are 256-bit base64url strings: 43 token characters.
    for (i, _) in text.match_indices("Bearer ") {
        let value: String = text[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(*c))
            .collect();
        assert!(value.len() < 20, "an unredacted bearer value in: {text}");
    }
}

/// A federation that records the tokens it issues, for [`assert_no_issued_token`].
async fn recording(cfg: FederationConfig) -> Fed {
    Fed::start(FederationConfig {
        record_issued_tokens: true,
        ..cfg
    })
    .await
}

/// [`assert_no_token`] for every token `f`'s authorization server has issued so far (to the test
/// or to a `fapi-host` process it ran), besides the `Bearer <value>` pattern.
fn assert_no_issued_token(f: &Fed, text: &str) {
    assert_no_token(text, None);
    for t in f.fed.issued_tokens() {
        assert_no_token(text, Some(&t));
    }
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Run the `fapi-host` binary with a timeout; returns (status, stdout, stderr).
async fn cli(args: Vec<String>, cwd: PathBuf) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = common::fapi_host(&a, &cwd);
        (code, s(&out), s(&err))
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Authorization server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn as_down_is_a_network_error_naming_the_issuer() {
    let f = recording(FederationConfig::default()).await;
    let port = closed_port();
    let issuer = format!("https://127.0.0.1:{port}");
    let mut st = quick(f.settings(), Duration::from_secs(5), 2);
    st.issuer_url = issuer.clone();
    let client = client_of(&st);
    let t0 = Instant::now();
    let err = client.get(f.fed.data_url()).send().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: false, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{issuer}/.well-known/openid-configuration")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("connect"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(5), "no long wait");
    assert_eq!(f.fed.counters().dp_requests, 0, "nothing reached the DP");
    // No token exists (the issuer is down): the pattern is all there is to look for.
    assert!(f.fed.issued_tokens().is_empty());
    assert_no_token(&msg, None);

    // The CLI: exit status 5 and the same message.
    let (code, _, err) = cli(
        vec![
            "--config".into(),
            f.config.to_str().unwrap().into(),
            "--issuer-url".into(),
            issuer.clone(),
            "fetch".into(),
            f.fed.data_url(),
        ],
        f.dir.path().to_owned(),
    )
    .await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains(&issuer), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn as_slow_token_endpoint_times_out_once_without_replaying_the_token_request() {
    let f = recording(FederationConfig::default()).await;
    // Slow but within the timeout: fine.
    f.fed
        .set_as_fault(Some(AsFault::SlowToken(Duration::from_millis(300))));
    let st = quick(f.settings(), Duration::from_secs(2), 3);
    let r = client_of(&st).get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(f.fed.counters().token_requests, 1);

    // Slower than the timeout: one token request (a POST that may have been processed is not
    // sent again), then a network error that says it timed out.
    f.fed
        .set_as_fault(Some(AsFault::SlowToken(Duration::from_millis(2500))));
    let st = quick(f.settings(), Duration::from_millis(700), 3);
    let t0 = Instant::now();
    let err = client_of(&st).token_info().await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(err.to_string().contains("token request to"), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        f.fed.counters().token_requests,
        2,
        "the timed-out token request was not replayed"
    );
    // The token of the first request (and any the slow request got after the client gave up).
    assert!(!f.fed.issued_tokens().is_empty());
    assert_no_issued_token(&f, &err.to_string());
    assert_no_issued_token(&f, &format!("{err:?}"));
}

#[tokio::test]
async fn as_5xx_and_bad_token_responses() {
    let f = recording(FederationConfig::default()).await;
    // 500: not transient, one request, a clear error with the status.
    f.fed.set_as_fault(Some(AsFault::TokenEndpointStatus(500)));
    let st = quick(f.settings(), Duration::from_secs(5), 2);
    let err = client_of(&st).token_info().await.unwrap_err();
    assert!(matches!(err, Error::TokenResponse(_)), "{err}");
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert_eq!(f.fed.counters().token_requests, 1);

    // 503: transient, retried `retries` times, then the same kind of error.
    f.fed.set_as_fault(Some(AsFault::TokenEndpointStatus(503)));
    let err = client_of(&st).token_info().await.unwrap_err();
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert_eq!(f.fed.counters().token_requests, 1 + 3, "1 + 2 retries");

    // Malformed JSON, a wrong token_type, invalid_client: one request each, no resource call.
    for (fault, needle) in [
        (AsFault::MalformedJson, "did not return JSON"),
        (AsFault::TokenType("mac".into()), "token_type"),
        (AsFault::InvalidClient, "invalid_client"),
    ] {
        f.fed.set_as_fault(Some(fault.clone()));
        let before = f.fed.counters();
        let err = client_of(&st)
            .get(f.fed.data_url())
            .send()
            .await
            .unwrap_err();
        let after = f.fed.counters();
        assert!(
            err.to_string().contains(needle),
            "{fault:?}: {err} lacks {needle}"
        );
        assert_eq!(err.kind(), fapi_host::ErrorKind::Authorization, "{err}");
        assert_eq!(after.token_requests, before.token_requests + 1, "{fault:?}");
        assert_eq!(after.dp_requests, before.dp_requests, "{fault:?}");
        // The wrong token_type comes with a real token: that one is looked for too.
        assert_no_issued_token(&f, &err.to_string());
        assert_no_issued_token(&f, &format!("{err:?}"));
    }
    assert_eq!(
        f.fed.issued_tokens().len(),
        1,
        "the one with token_type mac"
    );

    // Without expires_in: the default lifetime, and it works.
    f.fed.set_as_fault(Some(AsFault::OmitExpiresIn));
    let c = client_of(&st);
    assert_eq!(c.get(f.fed.data_url()).send().await.unwrap().status(), 200);
    let info = c.token_info().await.unwrap();
    assert!(!info.expires_in_from_server);
    assert_eq!(info.expires_in, st.client.default_token_lifetime.as_secs());
}

/// Sleep until `after` past `t0`.
async fn at(t0: Instant, after: Duration) {
    tokio::time::sleep_until((t0 + after).into()).await;
}

/// A federation whose tokens live 8 s: the client's refresh margin is then 4 s (min(30 s, half
/// the lifetime)), so it refreshes from 4 s and the token expires at 8 s (counted from the token
/// request, so a little earlier from a `t0` taken after it); a failed refresh is tried again
/// after a quarter of the margin, 1 s. The federation's `exp` counts whole seconds, so requests
/// with the old token stop 2 s before the expiry.
async fn short_lived_tokens() -> Fed {
    Fed::start(FederationConfig {
        token_ttl: Duration::from_secs(8),
        ..FederationConfig::default()
    })
    .await
}

/// A token endpoint that fails (HTTP 500) once the token is past its refresh point but still
/// valid: every request goes on with the valid token, the refresh is tried again after a back-off
/// (not once per request), a warning names the failure (never the token), and only once the token
/// has expired do callers get the token error.
#[tokio::test]
async fn a_token_endpoint_failing_in_the_refresh_window_leaves_the_valid_token_in_use() {
    let f = short_lived_tokens().await;
    let client = client_of(&quick(f.settings(), Duration::from_secs(2), 0));
    let token = client.danger_reveal_token().await.unwrap();
    let t0 = Instant::now();
    f.fed.set_as_fault(Some(AsFault::TokenEndpointStatus(500)));
    at(t0, Duration::from_millis(4200)).await;
    let before = f.fed.counters();
    // Requests one after the other until 6 s (the old token is good until then, see
    // `short_lived_tokens`), the first one's start and end and the last one's start noted.
    let mut served = 0u64;
    let mut first = None;
    let mut last_started = t0;
    while t0.elapsed() < Duration::from_millis(6000) {
        last_started = Instant::now();
        let r = client.get(f.fed.data_url()).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {served} in the refresh window");
        first.get_or_insert((last_started, Instant::now()));
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = f.fed.counters().token_requests - before.token_requests;
    let (first_started, first_ended) = first.expect("a request in the refresh window");
    // Bounds from the requests' own times, not from the machine's pace. The first request (past
    // the refresh point) tries a refresh; a request starting `retry_every` (1 s) after that
    // attempt failed tries again; and attempts start with requests at least 1 s apart, so there
    // are at most 1 + (seconds of requests) of them (2 or 3 here), where a refresh per request
    // would make `served` (dozens).
    let retry_every = Duration::from_secs(1);
    let most = 1 + (last_started - first_started).as_millis() as u64 / 1000;
    assert!(
        attempts >= 1,
        "the token past its refresh point was not refreshed"
    );
    // (Unless the machine was so slow that no request started 1 s after the first had ended.)
    if last_started >= first_ended + retry_every {
        assert!(
            attempts >= 2,
            "no new refresh attempt after the back-off ({served} requests)"
        );
    }
    assert!(
        attempts <= most,
        "{attempts} refresh attempts for {served} requests over {:?}",
        last_started - first_started
    );
    assert_eq!(
        client.danger_reveal_token().await.unwrap().as_str(),
        token.as_str(),
        "the valid token is still the one in use"
    );
    {
        let logs = logs();
        let logs = logs.lock().unwrap();
        assert!(
            contains(&logs, b"refreshing the access token failed"),
            "a warning names the failure"
        );
        assert!(
            contains(&logs, b"HTTP 500"),
            "the warning says how it failed"
        );
        assert!(!contains(&logs, token.as_bytes()), "a token is in the logs");
    }

    // Expired: the caller waits for a token request, and gets its error; nothing reaches the DP.
    at(t0, Duration::from_millis(8300)).await;
    let before = f.fed.counters();
    let err = client.get(f.fed.data_url()).send().await.unwrap_err();
    let after = f.fed.counters();
    assert!(
        matches!(err, Error::TokenResponse(_)) && err.to_string().contains("HTTP 500"),
        "{err}"
    );
    assert_eq!(after.token_requests, before.token_requests + 1);
    assert_eq!(after.dp_requests, before.dp_requests);
    assert_no_token(&err.to_string(), Some(token.as_str()));

    // The server is back: a new token at once.
    f.fed.set_as_fault(None);
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(
        client.danger_reveal_token().await.unwrap().as_str(),
        token.as_str()
    );
}

/// A token endpoint that hangs in the refresh window: the one caller that refreshes waits for the
/// token request's timeout and then goes on with the valid token; the others are not held up at
/// all; one token request is in flight at a time; after the expiry the error is the token's. The
/// token endpoint holds the requests until the test lets them go (never, here): whatever the
/// machine's load, a caller answered while the refreshing one is still waiting was not held up.
#[tokio::test]
async fn a_token_endpoint_hanging_in_the_refresh_window_holds_up_only_the_refreshing_caller() {
    // Tokens live 12 s: the margin is 6 s, a failed refresh is tried again after 1.5 s. Times
    // count from when the first token was in hand (`t0`): the token was asked for before it, so
    // its refresh point is at most 6 s and its expiry at most 12 s after `t0`, and at least 12 s
    // after `asked`.
    let f = Fed::start(FederationConfig {
        token_ttl: Duration::from_secs(12),
        ..FederationConfig::default()
    })
    .await;
    // The refresh starts at 6.2 s and times out 4 s later, before the token expires.
    let client = client_of(&quick(f.settings(), Duration::from_secs(4), 0));
    let asked = Instant::now();
    let token = client.danger_reveal_token().await.unwrap();
    let t0 = Instant::now();
    assert!(t0 - asked < Duration::from_millis(1500), "{:?}", t0 - asked);
    f.fed.hold_token_requests(true);
    at(t0, Duration::from_millis(6200)).await;
    let before = f.fed.counters();
    let request = |client: &FapiClient| common::timed_get(client, f.fed.data_url());
    let refreshing = request(&client);
    // Soon after the refresh began (no attempt due yet), and once the next would be due (the
    // first still in flight): nobody waits, so every one of them is answered while the refresh is
    // still in flight.
    for wave in [6300, 7800] {
        at(t0, Duration::from_millis(wave)).await;
        let others: Vec<_> = (0..8).map(|_| request(&client)).collect();
        let mut took = Vec::new();
        for o in others {
            let (status, t) = o.await.unwrap();
            assert_eq!(status, 200);
            took.push(t);
        }
        assert!(
            !refreshing.is_finished(),
            "{wave}: held up until the refresh ended: {took:?}"
        );
    }
    let (status, took) = refreshing.await.unwrap();
    assert_eq!(
        status, 200,
        "the refreshing caller goes on with the valid token"
    );
    assert!(took >= Duration::from_millis(3900), "{took:?}");
    assert_eq!(
        f.fed.counters().token_requests - before.token_requests,
        1,
        "one token request in flight at a time"
    );

    at(t0, Duration::from_millis(12_300)).await;
    let err = client.get(f.fed.data_url()).send().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: false, .. })
            && err.to_string().contains("timed out"),
        "{err}"
    );
    assert_no_token(&err.to_string(), Some(token.as_str()));
    f.fed.hold_token_requests(false);
}

/// A TCP server on loopback that counts the connections it accepts and hands each to `serve`.
struct CountingServer {
    port: u16,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingServer {
    async fn start<F, Fut>(serve: F) -> CountingServer
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let seen = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp));
            }
        });
        CountingServer {
            port,
            accepted,
            task,
        }
    }

    fn origin(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS listener that records how many handshakes completed and how many application bytes it
/// received: a server with a bad certificate must receive no HTTP bytes, so no token.
struct TlsProbe {
    server: CountingServer,
    handshakes: Arc<AtomicU64>,
    app_bytes: Arc<AtomicU64>,
}

impl TlsProbe {
    async fn start(cfg: Arc<rustls::ServerConfig>) -> TlsProbe {
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let handshakes = Arc::new(AtomicU64::new(0));
        let app_bytes = Arc::new(AtomicU64::new(0));
        let (h, b) = (handshakes.clone(), app_bytes.clone());
        let server = CountingServer::start(move |tcp| {
            let (acceptor, h, b) = (acceptor.clone(), h.clone(), b.clone());
            async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n as u64, Ordering::SeqCst);
                    }
                }
            }
        })
        .await;
        TlsProbe {
            server,
            handshakes,
            app_bytes,
        }
    }
}

/// A server certificate for 127.0.0.1 from the federation's CA that expired yesterday.
fn expired_server_certificate(f: &Fed) -> fapi_federation::ServerIdentity {
    let pki = f.fed.pki();
    let dir = f.path("pki-for-expired");
    pki.write_to(&dir).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(pki.ca_pem(), &ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(30 * 86_400)).into();
    params.not_after = (now - Duration::from_secs(86_400)).into();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    fapi_federation::ServerIdentity {
        names: vec!["127.0.0.1".into(), "localhost".into()],
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: pki.ca_pem().to_owned(),
    }
}

#[tokio::test]
async fn bad_server_certificates_fail_before_any_http_byte_on_the_as_and_the_dp() {
    let f = Fed::start(FederationConfig::default()).await;
    let pki = f.fed.pki();
    // Each with the hint the error carries: what is wrong and what to do.
    let cases = [
        (
            "wrong name",
            pki.issue_server(&["wrong.example"], false).unwrap(),
            "check the URL's host",
        ),
        (
            "untrusted CA",
            pki.issue_server(&["127.0.0.1", "localhost"], true).unwrap(),
            // Named by its class below (TLS-06).
            "'s certificate is not trusted: its chain does not end at `[trust] ",
        ),
        (
            "expired",
            expired_server_certificate(&f),
            "the server's certificate has expired",
        ),
    ];
    let st = quick(f.settings(), Duration::from_secs(5), 3);
    let good = client_of(&st);
    let token = good.danger_reveal_token().await.unwrap();
    for (what, server, hint) in &cases {
        let probe = TlsProbe::start(server.server_config().unwrap()).await;
        let origin = probe.server.origin();

        // As the issuer: discovery fails at the handshake.
        let mut as_settings = st.clone();
        as_settings.issuer_url = origin.clone();
        let err = client_of(&as_settings).token_info().await.unwrap_err();
        assert!(
            matches!(err, Error::TokenUnreachable { tls: true, .. }),
            "{what}: {err}"
        );
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{what}: {err}"
        );
        assert!(err.to_string().contains(hint), "{what}: {err}");
        if *what == "untrusted CA" {
            let named = "the authorization server's certificate is not trusted: its chain does \
                         not end at `[trust] authorization_server`, `ca_bundle` or the system roots";
            assert!(err.to_string().contains(named), "{err}");
        }

        // As a data provider, with a valid token in hand: the token is never sent.
        let before = good.token_requests();
        let err = good
            .get(format!("{origin}/data.csv"))
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{what}: {err}");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{what}: {err}"
        );
        assert!(err.to_string().contains(hint), "{what}: {err}");
        if *what == "untrusted CA" {
            let named = "the data provider's certificate is not trusted: its chain does not end \
                         at `[trust] data_providers`, `ca_bundle` or the system roots";
            assert!(err.to_string().contains(named), "{err}");
        }
        assert_eq!(
            good.token_requests(),
            before,
            "TLS failures are not retried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(probe.handshakes.load(Ordering::SeqCst), 0, "{what}");
        assert_eq!(probe.app_bytes.load(Ordering::SeqCst), 0, "{what}");
        assert_no_token(&err.to_string(), Some(token.as_str()));
        assert_no_token(&format!("{err:?}"), Some(token.as_str()));
    }
}

/// A server that takes the connection, reads the ClientHello and hangs up: the handshake never
/// ends, as when a load balancer drops connections. That is the network's failure (tried again),
/// not a certificate problem (which trying again cannot mend).
#[tokio::test]
async fn a_handshake_the_server_hangs_up_on_is_a_network_failure_and_tried_again() {
    let f = Fed::start(FederationConfig::default()).await;
    let server = CountingServer::start(|mut tcp| async move {
        let mut hello = [0u8; 512];
        let _ = tcp.read(&mut hello).await;
    })
    .await;
    let origin = server.origin();
    let st = quick(f.settings(), Duration::from_secs(5), 2);
    let client = client_of(&st);
    client.token_info().await.unwrap();

    // A data provider: the GET is tried 1 + 2 times, and fails as a network error.
    let err = client
        .get(format!("{origin}/data.csv"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Network(_)), "{err:?}");
    assert!(!err.is_tls(), "{err:?}");
    assert_eq!(server.accepted(), 3, "{err}");

    // The authorization server: no token because it could not be reached, not a TLS failure.
    let mut st = st.clone();
    st.issuer_url = origin.clone();
    let err = client_of(&st).token_info().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: false, .. }),
        "{err:?}"
    );
}

/// A data provider whose TLS refuses the client's certificate (it trusts another CA) answers the
/// handshake with an alert: a TLS failure, which trying again cannot mend, so it is not retried.
/// The error says what to check. Two such servers: one trusting another CA of the same name as the
/// client's (rustls finds the issuer by name, its signature does not check: `decrypt_error`), one
/// trusting a CA of another name (`unknown_ca`).
#[tokio::test]
async fn a_server_that_refuses_the_client_certificate_is_a_tls_failure_not_tried_again() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let f = Fed::start(FederationConfig::default()).await;
    let identity = f
        .fed
        .pki()
        .issue_server(&["127.0.0.1", "localhost"], false)
        .unwrap();
    let other_name = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "another directory's CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p.self_signed(&key).unwrap().der().clone()
    };
    let st = quick(f.settings(), Duration::from_secs(5), 2);
    let client = client_of(&st);
    let token = client.danger_reveal_token().await.unwrap();
    let hint = "check that the certificate (`certificate`) is registered with the directory for \
                this client_id and issued by a CA the server trusts";
    for (what, trusted, alert) in [
        (
            "another CA of the same name",
            fapi_federation::Pki::generate().unwrap().ca_der(),
            "DecryptError",
        ),
        ("a CA of another name", other_name, "UnknownCA"),
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let server = CountingServer::start(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let _ = acceptor.accept(tcp).await;
            }
        })
        .await;
        let origin = server.origin();

        let err = client
            .get(format!("{origin}/data.csv"))
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{what}: {err:?}");
        assert_eq!(server.accepted(), 1, "{what}: not tried again: {err}");
        assert_no_token(&err.to_string(), Some(token.as_str()));
        let msg = err.to_string();
        assert!(msg.contains(alert), "{what}: {msg}");
        assert!(
            msg.contains("the server refused this client's certificate") && msg.contains(hint),
            "{what}: {msg}"
        );

        // The same server as the authorization server: no token, with the same hint.
        let mut as_settings = st.clone();
        as_settings.issuer_url = origin.clone();
        let err = client_of(&as_settings).token_info().await.unwrap_err();
        assert!(
            matches!(err, Error::TokenUnreachable { tls: true, .. }),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains(hint), "{what}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Data provider
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dp_502_504_are_retried_for_get_and_never_for_post() {
    let f = Fed::with_faults().await;
    let st = quick(f.settings(), Duration::from_secs(5), 3);
    let client = client_of(&st);
    let token = client.danger_reveal_token().await.unwrap();
    for code in [502, 503, 504] {
        let before = f.fed.counters().dp_requests;
        let url = format!("{}?fault={code}&fault_times=2", f.fed.data_json_url());
        let r = client.get(url).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.attempts()), (200, 3), "{code}");
        assert_eq!(f.fed.counters().dp_requests, before + 3, "{code}");

        let before = f.fed.counters().dp_requests;
        let url = format!("{}/upload?fault={code}", f.fed.data_origin());
        let r = client.post(url).body("x").send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.attempts()), (code, 1), "{code}");
        assert_eq!(
            f.fed.counters().dp_requests,
            before + 1,
            "POST not replayed on {code}"
        );
    }
    // Bounded: retries + 1 attempts, then the status is returned as it is.
    let before = f.fed.counters().dp_requests;
    let url = format!("{}?fault=502", f.fed.data_url());
    let r = client.get(url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (502, 4));
    assert_eq!(f.fed.counters().dp_requests, before + 4);
    let logs = logs();
    assert!(!contains(&logs.lock().unwrap(), token.as_bytes()));
}

#[tokio::test]
async fn dp_429_retry_after_holds_the_retry_back() {
    let f = Fed::with_faults().await;
    let st = quick(f.settings(), Duration::from_secs(5), 3);
    let client = client_of(&st);
    let before = f.fed.counters().dp_requests;
    let t0 = Instant::now();
    let url = format!("{}?fault=429&fault_times=1&retry_after=1", f.fed.data_url());
    let r = client.get(url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 2));
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(f.fed.counters().dp_requests, before + 2);
    // A POST gets the 429 back, unreplayed.
    let url = format!("{}/upload?fault=429&retry_after=1", f.fed.data_origin());
    let before = f.fed.counters().dp_requests;
    let r = client.post(url).body("x").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (429, 1));
    assert_eq!(f.fed.counters().dp_requests, before + 1);
}

/// A batch item answered 503 with a `Retry-After` longer than the client waits is not retried
/// sooner than asked: it fails with the server's wait in its message, after one request, and the
/// origin is held back as long as the client waits before the next item goes out.
#[tokio::test]
async fn batch_items_asked_to_wait_longer_than_the_client_waits_fail_unretried() {
    use fapi_host::batch::{Batch, BatchOptions, Input};
    let f = Fed::with_faults().await;
    let mut st = quick(f.settings(), Duration::from_secs(5), 0);
    st.client.max_retry_after = Duration::from_millis(1500);
    let client = client_of(&st);
    client.token_info().await.unwrap();
    let o = f.fed.data_origin();
    let text = format!("{o}/items/0?fault=503&retry_after=3600\n{o}/items/1\n");
    let out = f.path("retry-after-out");
    let mut options = BatchOptions::new(&out);
    options.concurrency = 1;
    options.retries = 3;
    let before = f.fed.counters().dp_requests;
    let t0 = Instant::now();
    let summary = Batch::new(client, options)
        .run(Input::parse(&text))
        .await
        .unwrap();
    assert_eq!((summary.done, summary.failed), (1, 1), "{summary}");
    assert_eq!(f.fed.counters().dp_requests, before + 2, "one request each");
    let recs = manifest(&out);
    let r = last_of(&recs, 0);
    assert_eq!(
        (r.outcome.as_str(), r.status, r.attempts),
        ("failed", Some(503), 1)
    );
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.kind, "http");
    assert!(
        e.message.contains("HTTP 503")
            && e.message.contains("3600 s")
            && e.message.contains("max_retry_after"),
        "{}",
        e.message
    );
    assert_eq!(last_of(&recs, 1).outcome, "done");
    // The second item waited for the origin (the client's 1.5 s), not the server's hour.
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    assert_consistent(&out, &recs);
}

#[tokio::test]
async fn dp_bodies_cut_short_are_clear_errors_and_never_replayed_by_the_client() {
    let f = Fed::with_faults().await;
    let st = quick(f.settings(), Duration::from_secs(5), 3);
    let client = client_of(&st);
    let token = client.danger_reveal_token().await.unwrap();
    for fault in ["truncate", "reset"] {
        for post in [false, true] {
            let before = f.fed.counters().dp_requests;
            let r = if post {
                let url = format!("{}/upload?fault={fault}", f.fed.data_origin());
                client.post(url).body("payload").send().await.unwrap()
            } else {
                let url = format!("{}/sized?bytes=200000&fault={fault}", f.fed.data_origin());
                client.get(url).send().await.unwrap()
            };
            assert_eq!(r.status(), 200, "{fault}");
            let err = r.bytes().await.unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, Error::Network(_)),
                "{fault} post={post}: {msg}"
            );
            assert!(msg.contains("reading the body of"), "{msg}");
            assert_eq!(
                f.fed.counters().dp_requests,
                before + 1,
                "{fault} post={post}: one request"
            );
            assert_no_token(&msg, Some(token.as_str()));
        }
    }
}

#[tokio::test]
async fn dp_slow_bodies_flow_and_stalled_bodies_time_out() {
    let f = Fed::with_faults().await;
    let st = quick(f.settings(), Duration::from_millis(800), 3);
    let client = client_of(&st);
    // 5 pieces of 4 KiB, 300 ms apart: longer than the timeout in all, but never stalled.
    let url = format!(
        "{}/sized?bytes=20000&fault=slow&delay_ms=300",
        f.fed.data_origin()
    );
    let t0 = Instant::now();
    let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), 20000);
    assert!(t0.elapsed() > Duration::from_millis(800));
    // A body that stalls longer than the timeout: a network error saying so, not a hang.
    let url = format!(
        "{}/sized?bytes=20000&fault=slow&delay_ms=3000",
        f.fed.data_origin()
    );
    let t0 = Instant::now();
    let result = match client.get(url).send().await {
        Ok(r) => r.bytes().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn fetch_output_file_is_never_left_partial() {
    let f = recording(FederationConfig {
        faults_enabled: true,
        ..FederationConfig::default()
    })
    .await;
    let out = f.path("out.bin");
    let tmp_listing = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("out.bin"))
            .collect()
    };
    for fault in ["truncate", "reset"] {
        let url = format!("{}/sized?bytes=300000&fault={fault}", f.fed.data_origin());
        let (code, _, err) = cli(
            vec![
                "--config".into(),
                f.config.to_str().unwrap().into(),
                "-vv".into(),
                "fetch".into(),
                "-o".into(),
                out.to_str().unwrap().into(),
                url,
            ],
            f.dir.path().to_owned(),
        )
        .await;
        assert_eq!(code, 5, "{fault}: {err}");
        assert!(err.contains("reading the body of"), "{err}");
        assert!(
            !out.exists(),
            "{fault}: no partial file under the final name"
        );
        assert!(
            tmp_listing(f.dir.path()).is_empty(),
            "{fault}: no temporary left"
        );
        assert!(!err.contains("panicked"), "{err}");
        // `-vv` logs the requests: the token of this `fapi-host` process is not among them.
        assert!(!f.fed.issued_tokens().is_empty());
        assert_no_issued_token(&f, &err);
    }
    // A complete body lands under the name.
    let url = format!("{}/sized?bytes=300000", f.fed.data_origin());
    let (code, _, err) = cli(
        vec![
            "--config".into(),
            f.config.to_str().unwrap().into(),
            "fetch".into(),
            "-o".into(),
            out.to_str().unwrap().into(),
            url,
        ],
        f.dir.path().to_owned(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 300_000);
    assert_eq!(tmp_listing(f.dir.path()), vec!["out.bin".to_owned()]);
}

// ---------------------------------------------------------------------------------------------
// Batch: bodies cut short, POST items, a full disk
// ---------------------------------------------------------------------------------------------

#[derive(Debug, serde::Deserialize)]
struct Rec {
    outcome: String,
    index: u64,
    status: Option<u16>,
    bytes: u64,
    sha256: Option<String>,
    attempts: u32,
    file: Option<String>,
    error: Option<RecErr>,
}

#[derive(Debug, serde::Deserialize)]
struct RecErr {
    kind: String,
    message: String,
}

/// Every manifest line parses; the last record of each index.
fn manifest(out: &Path) -> Vec<Rec> {
    let text = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "torn last line");
    let mut recs: Vec<Rec> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    recs.sort_by_key(|r| r.index);
    recs
}

fn last_of(recs: &[Rec], index: u64) -> &Rec {
    recs.iter().rfind(|r| r.index == index).unwrap()
}

/// No temporary files left, and every `done` record's file has its size and hash.
fn assert_consistent(out: &Path, recs: &[Rec]) {
    for e in std::fs::read_dir(out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".partial-"), "temporary left: {name}");
    }
    for r in recs.iter().filter(|r| r.outcome == "done") {
        let data = std::fs::read(out.join(r.file.as_ref().unwrap())).unwrap();
        assert_eq!(data.len() as u64, r.bytes);
        let sha: String = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(Some(sha), r.sha256);
    }
}

fn batch_cmd(config: &Path, input: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fapi-host"));
    c.arg("--config")
        .arg(config)
        .arg("batch")
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("FAPI_CONFIG")
        .stdin(Stdio::null());
    c
}

async fn run(mut c: Command) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let o = c.output().unwrap();
        (o.status.code().unwrap_or(-1), s(&o.stderr))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn batch_bodies_cut_short_are_retried_for_get_only_and_never_land_partial() {
    let f = recording(FederationConfig {
        faults_enabled: true,
        ..FederationConfig::default()
    })
    .await;
    let o = f.fed.data_origin();
    let input = f.path("items.jsonl");
    let lines = [
        format!("{o}/sized?bytes=300000&n=0&fault=truncate&fault_times=1"), // retried, done
        format!("{o}/sized?bytes=300000&n=1&fault=truncate"),               // fails: body
        format!("{o}/items/two?fault=reset"),                               // fails: body
        format!(r#"{{"url":"{o}/upload?n=3&fault=reset","method":"POST","body":"x"}}"#),
        format!(r#"{{"url":"{o}/upload?n=4&fault=503","method":"POST","body":"x"}}"#),
        format!("{o}/items/five?fault=503&fault_times=1"), // retried, done
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = f.path("out");
    let before = f.fed.counters().dp_requests;
    let (code, err) = run(batch_cmd(
        &f.config,
        &input,
        &out,
        &["--retries", "2", "--concurrency", "2"],
    ))
    .await;
    assert_eq!(code, 9, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let recs = manifest(&out);
    assert_eq!(recs.len(), 6);
    let expect = [
        (0, "done", None, 2),
        (1, "failed", Some("body"), 3),
        (2, "failed", Some("body"), 3),
        (3, "failed", Some("body"), 1),
        (4, "failed", Some("http"), 1),
        (5, "done", None, 2),
    ];
    for (i, outcome, kind, attempts) in expect {
        let r = last_of(&recs, i);
        assert_eq!(r.outcome, outcome, "{r:?}");
        assert_eq!(r.error.as_ref().map(|e| e.kind.as_str()), kind, "{r:?}");
        assert_eq!(r.attempts, attempts, "{r:?}");
        if outcome == "failed" {
            assert!(r.file.is_none());
        }
    }
    assert_eq!(last_of(&recs, 4).status, Some(503));
    assert_eq!(
        f.fed.counters().dp_requests,
        before + 2 + 3 + 3 + 1 + 1 + 2,
        "attempts seen by the server: POST items once each"
    );
    assert_consistent(&out, &recs);
    // Only the two done files are in the directory, with the manifest.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let text = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    assert_eq!(f.fed.issued_tokens().len(), 1, "the batch's one token");
    assert_no_issued_token(&f, &text);
    assert_no_issued_token(&f, &err);
}

/// How the output directory is made to run out of space.
enum Squeeze {
    /// A 1 MiB tmpfs mounted on it (needs root or CAP_SYS_ADMIN); space comes back by remounting
    /// it bigger. Writes fail with ENOSPC.
    Tmpfs(PathBuf),
    /// RLIMIT_FSIZE of this many bytes on the batch process ([`with_file_size_limit`]); space
    /// comes back by running without the limit. Writes fail with EFBIG.
    FileSizeLimit(u64),
}

impl Drop for Squeeze {
    fn drop(&mut self) {
        if let Squeeze::Tmpfs(dir) = self {
            let _ = Command::new("umount").arg(&*dir).status();
        }
    }
}

fn try_tmpfs(dir: &Path) -> Option<Squeeze> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Squeeze::Tmpfs(dir.to_owned()))
}

/// `cmd` under RLIMIT_FSIZE = `bytes` (`prlimit`), SIGXFSZ ignored: a write past `bytes` in any
/// file fails with EFBIG ("File too large") instead of killing the process.
fn with_file_size_limit(cmd: &Command, bytes: u64) -> Command {
    // `trap '' XFSZ` is inherited through exec.
    let mut wrapped = Command::new("sh");
    wrapped
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; exec prlimit --fsize={bytes} -- \"$@\""
        ))
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_remove("FAPI_CONFIG")
        .stdin(Stdio::null());
    wrapped
}

fn has_prlimit() -> bool {
    Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Six items: three of 300,000 bytes that fit, three of 600,000 bytes that do not.
async fn full_disk(f: &Fed, out: &Path, squeeze: Squeeze) {
    let o = f.fed.data_origin();
    let input = f.path("disk.txt");
    let text: String = (0..6)
        .map(|i| {
            let size = if i < 3 { 300_000 } else { 600_000 };
            format!("{o}/sized?bytes={size}&n={i}\n")
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let args = ["--concurrency", "1", "--retries", "1"];
    let mut cmd = batch_cmd(&f.config, &input, out, &args);
    if let Squeeze::FileSizeLimit(bytes) = squeeze {
        cmd = with_file_size_limit(&cmd, bytes);
    }
    let (code, err) = run(cmd).await;
    assert_eq!(code, 9, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let recs = manifest(out);
    assert_eq!(recs.len(), 6, "{recs:?}");
    let why = match squeeze {
        Squeeze::Tmpfs(_) => "No space left on device",
        Squeeze::FileSizeLimit(_) => "File too large",
    };
    for i in 0..6 {
        let r = last_of(&recs, i);
        if i < 3 {
            assert_eq!(r.outcome, "done", "{r:?}");
        } else {
            assert_eq!(r.outcome, "failed", "{r:?}");
            let e = r.error.as_ref().unwrap();
            assert_eq!(e.kind, "io", "{r:?}");
            assert!(e.message.contains(why), "{r:?}");
            assert!(e.message.contains("run the same command again"), "{r:?}");
            assert_eq!(
                r.attempts, 1,
                "a local write failure is not a reason to refetch"
            );
            assert!(r.file.is_none());
        }
    }
    assert_consistent(out, &recs);
    let files = std::fs::read_dir(out).unwrap().count();
    assert_eq!(files, 4, "three files and the manifest, nothing partial");
    assert!(
        err.contains("io"),
        "the summary names the failure kind: {err}"
    );

    // Space comes back: the same command completes, skipping the three done items.
    let before = f.fed.counters().dp_requests;
    if let Squeeze::Tmpfs(dir) = &squeeze {
        let ok = Command::new("mount")
            .args(["-o", "remount,size=8m"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let (code, err) = run(batch_cmd(&f.config, &input, out, &args)).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        f.fed.counters().dp_requests,
        before + 3,
        "only the failed items"
    );
    let recs = manifest(out);
    for i in 0..6 {
        assert_eq!(last_of(&recs, i).outcome, "done");
    }
    assert_consistent(out, &recs);
    drop(squeeze);
}

#[tokio::test]
async fn batch_on_a_full_disk_fails_the_items_cleanly_and_resumes() {
    let f = Fed::start(FederationConfig::default()).await;
    let out = f.path("tmpfs-out");
    std::fs::create_dir_all(&out).unwrap();
    let Some(squeeze) = try_tmpfs(&out) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root); see the RLIMIT_FSIZE test");
        return;
    };
    full_disk(&f, &out, squeeze).await;
}

#[tokio::test]
async fn batch_over_a_file_size_limit_fails_the_items_cleanly_and_resumes() {
    if !has_prlimit() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let f = Fed::start(FederationConfig::default()).await;
    let out = f.path("limited-out");
    full_disk(&f, &out, Squeeze::FileSizeLimit(400_000)).await;
}

// ---------------------------------------------------------------------------------------------
// Host side: unreadable credentials
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unreadable_credential_files_are_named_with_the_fix() {
    let f = Fed::start(FederationConfig::default()).await;
    // A directory where the key should be: unreadable for anyone, root included.
    let dir_key = f.path("key-is-a-dir");
    std::fs::create_dir_all(&dir_key).unwrap();
    let mut st = f.settings();
    st.private_key = dir_key.clone();
    let err = FapiClient::from_settings(&st).unwrap_err();
    assert!(matches!(err, Error::Credentials(_)), "{err}");
    assert!(err.to_string().contains("key-is-a-dir"), "{err}");
    let (code, _, err) = cli(
        vec![
            "--config".into(),
            f.config.to_str().unwrap().into(),
            "--private-key".into(),
            dir_key.to_str().unwrap().into(),
            "token".into(),
        ],
        f.dir.path().to_owned(),
    )
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("key-is-a-dir"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Permission denied: a certificate of mode 000. Root reads it anyway, so as root the CLI runs
    // as `nobody` (setpriv), in a directory it can read with a configuration of its own.
    use std::os::unix::fs::PermissionsExt as _;
    let open = f.path("open-to-nobody");
    std::fs::create_dir_all(&open).unwrap();
    let config = f.fed.write_client_config(&open, "consumer").unwrap();
    for (p, mode) in [
        (f.dir.path(), 0o755),
        (open.as_path(), 0o755),
        (open.join("consumer.key").as_path(), 0o644),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let cert = open.join("locked.pem");
    std::fs::copy(open.join("consumer.pem"), &cert).unwrap();
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o000)).unwrap();
    let privileged = std::fs::read(&cert).is_ok();
    if !privileged {
        let mut st = Settings::load(Some(&config), &fapi_host::Overrides::default()).unwrap();
        st.certificate = cert.clone();
        let err = FapiClient::from_settings(&st).unwrap_err();
        assert!(matches!(err, Error::Credentials(_)), "{err}");
        assert!(err.to_string().contains("locked.pem"), "{err}");
        assert!(err.to_string().contains("ermission"), "{err}");
    }
    let mut c = if privileged {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            env!("CARGO_BIN_EXE_fapi-host"),
        ]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_fapi-host"))
    };
    c.arg("--config")
        .arg(&config)
        .arg("--certificate")
        .arg(&cert)
        .arg("token")
        .current_dir(&open)
        .env_remove("FAPI_CONFIG")
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("running the CLI (as root: with setpriv, of util-linux): {e}"));
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("locked.pem"), "{err}");
    assert!(err.contains("ermission denied"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn batch_stops_at_an_authorization_server_refusal_and_resumes_after_the_fix() {
    let f = recording(FederationConfig::default()).await;
    let o = f.fed.data_origin();
    let input = f.path("many.txt");
    let text: String = (0..40).map(|i| format!("{o}/items/{i}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let out = f.path("as-out");
    for (fault, why) in [
        (AsFault::InvalidClient, "invalid_client"),
        (AsFault::MalformedJson, "did not return JSON"),
    ] {
        f.fed.set_as_fault(Some(fault.clone()));
        let before = f.fed.counters();
        let (code, err) = run(batch_cmd(
            &f.config,
            &input,
            &out,
            &["--concurrency", "4", "--retries", "3"],
        ))
        .await;
        let after = f.fed.counters();
        assert_eq!(code, 4, "{fault:?}: {err}");
        assert!(err.contains(why), "{err}");
        assert!(err.contains("run again"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            after.token_requests - before.token_requests,
            1,
            "{fault:?}: one token request, not one per item"
        );
        assert_eq!(after.dp_requests, before.dp_requests, "{fault:?}");
        let recs = manifest(&out);
        assert!(recs.iter().all(|r| r.outcome == "failed"), "{recs:?}");
        assert!(
            recs.iter()
                .all(|r| r.error.as_ref().unwrap().kind == "authorization"),
            "{recs:?}"
        );
        assert_consistent(&out, &recs);
        // Refused: no token was issued (the malformed answer's "abc" is no token), so the
        // pattern is all there is to look for.
        assert!(f.fed.issued_tokens().is_empty(), "{fault:?}");
        assert_no_token(&err, None);
    }
    // Fixed: the same command fetches everything.
    f.fed.set_as_fault(None);
    let (code, err) = run(batch_cmd(&f.config, &input, &out, &["--concurrency", "4"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(f.fed.issued_tokens().len(), 1);
    assert_no_issued_token(&f, &err);
    assert_no_issued_token(
        &f,
        &std::fs::read_to_string(out.join("manifest.jsonl")).unwrap(),
    );
    let recs = manifest(&out);
    let done = recs.iter().filter(|r| r.outcome == "done").count();
    assert_eq!(done, 40);
    assert_consistent(&out, &recs);
}

/// Where the disk is so full that not even a manifest line fits. A full tmpfs (ENOSPC) when one
/// can be mounted (root, or CAP_SYS_ADMIN), and in any case RLIMIT_FSIZE at the size of the
/// manifest (EFBIG), which needs no privilege: so the case is exercised everywhere.
#[tokio::test]
async fn batch_with_no_space_even_for_the_manifest_stops_with_a_clear_error() {
    let f = Fed::start(FederationConfig::default()).await;
    let out = f.path("full-out");
    std::fs::create_dir_all(&out).unwrap();
    match try_tmpfs(&out) {
        Some(squeeze) => no_space_for_the_manifest(&f, &out, squeeze).await,
        None => eprintln!(
            "NOTE: cannot mount a tmpfs here (not root): the full disk is played by RLIMIT_FSIZE only"
        ),
    }
    assert!(
        has_prlimit(),
        "prlimit (util-linux) is needed to play a full disk without privileges"
    );
    let out = f.path("limited-full-out");
    no_space_for_the_manifest(&f, &out, Squeeze::FileSizeLimit(MANIFEST_SIZE)).await;
}

/// The size of the manifest left by an earlier run in [`no_space_for_the_manifest`] with
/// RLIMIT_FSIZE: the limit, so that not one more byte can be appended to it.
const MANIFEST_SIZE: u64 = 4096;

/// Twenty items of 8 KiB into `out` where nothing more can be written (a filled tmpfs, or a
/// manifest already at the file size limit, which the items are over too), then again with space.
async fn no_space_for_the_manifest(f: &Fed, out: &Path, squeeze: Squeeze) {
    let mut expected_names = vec!["manifest.jsonl".to_owned()];
    let why = match squeeze {
        Squeeze::Tmpfs(_) => {
            // Fill the file system completely.
            use std::io::Write as _;
            let mut file = std::fs::File::create(out.join("filler")).unwrap();
            let block = vec![0u8; 64 << 10];
            while file.write_all(&block).is_ok() {}
            expected_names.push("filler".to_owned());
            "No space left on device"
        }
        Squeeze::FileSizeLimit(limit) => {
            // An earlier run's manifest (records of items that failed), exactly at the limit.
            std::fs::create_dir_all(out).unwrap();
            let limit = usize::try_from(limit).unwrap();
            let record = |i: usize, pad: usize| {
                let line = serde_json::json!({
                    "outcome": "failed", "line": i + 1, "index": i,
                    "url": format!("https://earlier.example/items/{i}"), "status": 404,
                    "bytes": 0, "sha256": null, "duration_ms": 3, "attempts": 1,
                    "interaction_id": null, "file": null,
                    "error": {"kind": "http", "message": format!("HTTP 404{}", " ".repeat(pad))},
                });
                format!("{line}\n")
            };
            // Four-digit indexes: every line as long as the next.
            let mut text = String::new();
            let mut i = 1000;
            while text.len() + 2 * record(i, 0).len() <= limit {
                text.push_str(&record(i, 0));
                i += 1;
            }
            text.push_str(&record(i, limit - text.len() - record(i, 0).len()));
            assert_eq!(text.len(), limit);
            std::fs::write(out.join("manifest.jsonl"), text).unwrap();
            "File too large"
        }
    };
    expected_names.sort();
    let o = f.fed.data_origin();
    let input = f.path("twenty.txt");
    let text: String = (0..20)
        .map(|i| format!("{o}/sized?bytes=8192&n={i}\n"))
        .collect();
    std::fs::write(&input, text).unwrap();
    let args = ["--concurrency", "2", "--retries", "1"];
    let mut cmd = batch_cmd(&f.config, &input, out, &args);
    if let Squeeze::FileSizeLimit(bytes) = squeeze {
        cmd = with_file_size_limit(&cmd, bytes);
    }
    // Each body takes a while (two 4 KiB pieces, 200 ms apart), so that the first manifest write
    // fails before more than the two items in flight and the next two are fetched, however slow
    // this machine's writer thread is today.
    f.fed.set_dp_fault(Some(fapi_federation::DpFault::SlowBody(
        std::time::Duration::from_millis(200),
    )));
    let before = f.fed.counters().dp_requests;
    let (code, err) = run(cmd).await;
    f.fed.set_dp_fault(None);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("manifest"), "{err}");
    assert!(err.contains(why), "{err}");
    assert!(err.contains("run the same command again"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let sent = f.fed.counters().dp_requests - before;
    assert!(
        (1..=4).contains(&sent),
        "stopped early: {sent} requests for 20 items"
    );
    let recs = manifest(out);
    assert_consistent(out, &recs);
    assert!(
        recs.iter()
            .all(|r| r.outcome == "failed" && r.index >= 1000),
        "no line of this run fits: {recs:?}"
    );
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names, expected_names,
        "nothing but the manifest (and the filler)"
    );

    // Space is back: the same command completes.
    let _ = std::fs::remove_file(out.join("filler"));
    let (code, err) = run(batch_cmd(&f.config, &input, out, &args)).await;
    assert_eq!(code, 0, "{err}");
    let recs = manifest(out);
    assert_eq!(recs.iter().filter(|r| r.outcome == "done").count(), 20);
    assert_consistent(out, &recs);
    drop(squeeze);
}

#[tokio::test]
async fn batch_with_the_authorization_server_down_fails_once_with_a_clear_error() {
    let f = Fed::start(FederationConfig::default()).await;
    let o = f.fed.data_origin();
    let input = f.path("down.txt");
    let text: String = (0..40).map(|i| format!("{o}/items/{i}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let out = f.path("down-out");
    let issuer = format!("https://127.0.0.1:{}", closed_port());
    let mut c = Command::new(env!("CARGO_BIN_EXE_fapi-host"));
    c.arg("--config")
        .arg(&f.config)
        .args(["--issuer-url", &issuer, "batch", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .args(["--concurrency", "4", "--retries", "2"])
        .env_remove("FAPI_CONFIG")
        .stdin(Stdio::null());
    let t0 = Instant::now();
    let (code, err) = run(c).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains(&issuer), "{err}");
    assert!(
        err.contains("stopped: the authorization server cannot be reached"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(f.fed.counters().dp_requests, 0);
    assert!(manifest(&out).is_empty(), "no item was started");
    // The authorization server is back (the configured issuer): the same output completes.
    let (code, err) = run(batch_cmd(&f.config, &input, &out, &["--concurrency", "4"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(f.fed.counters().token_requests, 1);
    let recs = manifest(&out);
    assert_eq!(recs.iter().filter(|r| r.outcome == "done").count(), 40);
    assert_consistent(&out, &recs);
}

/// With `--keep-going`, the bad lines are in the manifest even when the batch then stops because
/// the authorization server cannot be reached.
#[tokio::test]
async fn bad_lines_are_recorded_although_the_authorization_server_is_down() {
    let f = Fed::start(FederationConfig::default()).await;
    let input = f.path("bad-down.txt");
    let o = f.fed.data_origin();
    std::fs::write(&input, format!("{o}/items/1\nnot a url\n{o}/items/2\n")).unwrap();
    let out = f.path("bad-down-out");
    let mut c = batch_cmd(&f.config, &input, &out, &["--keep-going", "--retries", "0"]);
    c.env(
        "FAPI_ISSUER_URL",
        format!("https://127.0.0.1:{}", closed_port()),
    );
    let (code, err) = run(c).await;
    assert_eq!(code, 5, "{err}");
    let recs = manifest(&out);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!((recs[0].index, recs[0].outcome.as_str()), (1, "failed"));
    assert_eq!(
        recs[0].error.as_ref().map(|e| e.kind.as_str()),
        Some("input")
    );
    assert_eq!(f.fed.counters().dp_requests, 0);
}

#[tokio::test]
async fn batch_stops_when_the_authorization_server_starts_refusing_mid_run() {
    use fapi_host::batch::{Batch, BatchOptions, Input};
    let f = Fed::start(FederationConfig {
        introspection_cache_ttl: Duration::ZERO,
        ..FederationConfig::default()
    })
    .await;
    let mut st = f.settings();
    st.client.retries = 0;
    let client = client_of(&st);
    let token = client.danger_reveal_token().await.unwrap();
    let o = f.fed.data_origin();
    let items = 400;
    let text: String = (0..items).map(|i| format!("{o}/items/{i}\n")).collect();
    let out = f.path("mid-out");
    let mut options = BatchOptions::new(&out);
    options.concurrency = 4;
    let before = f.fed.counters();
    let batch = Batch::new(client, options);
    let run = tokio::spawn(async move { batch.run(Input::parse(&text)).await });
    // The batch runs with the cached token; once items reach the data provider, the server
    // revokes the token and refuses new ones.
    let t0 = Instant::now();
    while f.fed.counters().dp_requests == before.dp_requests {
        assert!(t0.elapsed() < Duration::from_secs(10), "no item started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let revoked = f.fed.counters();
    f.fed.set_as_fault(Some(AsFault::InvalidClient));
    f.fed.revoke_all_tokens();
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the batch stops")
        .unwrap()
        .unwrap_err();
    let after = f.fed.counters();
    assert!(err.to_string().contains("invalid_client"), "{err}");
    assert_eq!(err.kind(), fapi_host::ErrorKind::Authorization);
    assert_no_token(&err.to_string(), Some(token.as_str()));
    assert_no_token(&format!("{err:?}"), Some(token.as_str()));
    assert_eq!(
        revoked.token_requests, before.token_requests,
        "the batch started with the cached token"
    );
    let token_requests = after.token_requests - revoked.token_requests;
    assert!(
        (1..=4).contains(&token_requests),
        "at most one per item in flight, not one per item: {token_requests}"
    );
    let recs = manifest(&out);
    assert!(recs.len() < items, "the batch stopped starting items");
    let failed: Vec<_> = recs.iter().filter(|r| r.outcome == "failed").collect();
    assert!(!failed.is_empty() && failed.len() <= 4, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|r| r.error.as_ref().unwrap().kind == "authorization"),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .all(|r| !r.error.as_ref().unwrap().message.is_empty())
    );
    let text = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    assert_no_token(&text, Some(token.as_str()));
    assert_consistent(&out, &recs);
}

#[tokio::test]
async fn batch_stops_when_the_authorization_server_becomes_unreachable_mid_run() {
    use fapi_host::batch::{Batch, BatchOptions, Input};
    let f = recording(FederationConfig {
        introspection_cache_ttl: Duration::ZERO,
        ..FederationConfig::default()
    })
    .await;
    // As `fapi-host batch` does: no client-level retries of resource requests; one token retry.
    let mut st = quick(f.settings(), Duration::from_millis(400), 1);
    st.client.retries = 0;
    let client = client_of(&st);
    let token = client.danger_reveal_token().await.unwrap();
    let o = f.fed.data_origin();
    let items = 400;
    let text: String = (0..items).map(|i| format!("{o}/items/{i}\n")).collect();
    let out = f.path("unreachable-out");
    let mut options = BatchOptions::new(&out);
    options.concurrency = 4;
    options.retries = 2;
    let batch = Batch::new(client, options);
    let input = text.clone();
    let run = tokio::spawn(async move { batch.run(Input::parse(&input)).await });
    // Some items are done; then the token is revoked and the token endpoint stops answering (the
    // requests time out, as they do when the server is down behind a firewall).
    let t0 = Instant::now();
    while f.fed.counters().dp_requests < 20 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = f.fed.counters();
    f.fed
        .set_as_fault(Some(AsFault::SlowToken(Duration::from_secs(30))));
    f.fed.revoke_all_tokens();
    // Without the stop, the 400 items would each wait for token timeouts, one acquisition at a
    // time: minutes.
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the batch stops instead of failing item after item")
        .unwrap()
        .unwrap_err();
    let stopped_after = t0.elapsed();
    let after = f.fed.counters();
    assert_eq!(err.kind(), fapi_host::ErrorKind::Network, "{err}");
    assert_no_token(&err.to_string(), Some(token.as_str()));
    assert_no_token(&format!("{err:?}"), Some(token.as_str()));
    assert_no_issued_token(&f, &err.to_string());
    assert_no_issued_token(&f, &format!("{err:?}"));
    assert!(
        err.to_string().contains("timed out") || err.to_string().contains("no response"),
        "{err}"
    );
    // Stopped, not failed item by item: at most the items in flight asked for a token (each with
    // its one retry), and the run ended in seconds, not after 400 items' timeouts.
    let token_requests = after.token_requests - before.token_requests;
    assert!(
        (1..=8).contains(&token_requests),
        "{token_requests} token requests"
    );
    assert!(stopped_after < Duration::from_secs(15), "{stopped_after:?}");
    let recs = manifest(&out);
    let failed: Vec<_> = recs.iter().filter(|r| r.outcome == "failed").collect();
    assert!(!failed.is_empty() && failed.len() <= 4, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|r| r.error.as_ref().unwrap().kind == "token_unreachable"),
        "{failed:?}"
    );
    assert!(recs.len() < items, "the batch stopped starting items");
    assert_consistent(&out, &recs);

    // The server is back: the same run completes every item, each exactly once.
    f.fed.set_as_fault(None);
    let mut options = BatchOptions::new(&out);
    options.concurrency = 4;
    let summary = Batch::new(client_of(&st), options)
        .run(Input::parse(&text))
        .await
        .unwrap();
    assert_eq!(summary.failed, 0, "{summary}");
    let recs = manifest(&out);
    let mut done: Vec<u64> = recs
        .iter()
        .filter(|r| r.outcome == "done")
        .map(|r| r.index)
        .collect();
    done.sort_unstable();
    assert_eq!(
        done,
        (0..items as u64).collect::<Vec<_>>(),
        "every item done exactly once"
    );
    assert_consistent(&out, &recs);
}

#[tokio::test]
async fn batch_retries_a_token_endpoint_503_although_items_are_retried_by_the_batch() {
    use fapi_host::batch::{Batch, BatchOptions, Input};
    let f = Fed::start(FederationConfig::default()).await;
    // As `fapi-host batch` does: no client-level retries of resource requests.
    let mut st = f.settings();
    st.client.retries = 0;
    assert_eq!(st.client.token_retries, 3);
    let client = client_of(&st);
    f.fed.set_as_fault(Some(AsFault::TokenEndpointStatus(503)));
    let o = f.fed.data_origin();
    let text: String = (0..10).map(|i| format!("{o}/items/{i}\n")).collect();
    let out = f.path("retry-out");
    let batch = Batch::new(client, BatchOptions::new(&out));
    let run = tokio::spawn(async move { batch.run(Input::parse(&text)).await });
    // The first token request meets the 503; the retry (after >= 125 ms) meets a working server.
    let t0 = Instant::now();
    while f.fed.counters().token_requests == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    f.fed.set_as_fault(None);
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.failed, 0, "{summary}");
    assert_eq!(f.fed.counters().token_requests, 2, "one 503, one retry");
    let recs = manifest(&out);
    assert_eq!(recs.iter().filter(|r| r.outcome == "done").count(), 10);
    assert_consistent(&out, &recs);
}

// ---------------------------------------------------------------------------------------------
// An authorization server that sends too slowly or too much
// ---------------------------------------------------------------------------------------------

/// How the hand-written authorization server below answers one path.
#[derive(Clone)]
enum Reply {
    /// 200 with this JSON body.
    Json(String),
    /// 200 announcing `len` bytes, then one byte of it every `every`: each read gets a byte
    /// well within the per-read timeout, the whole never ends in time.
    Trickle { len: usize, every: Duration },
    /// 200 with `len` bytes (spaces inside a JSON object), with a `content-length` or, without
    /// one, delimited by the end of the connection.
    Huge { len: usize, content_length: bool },
    /// This status with this JSON body.
    Status(u16, &'static str),
}

/// An HTTPS issuer on loopback (a certificate of the federation's CA, so the client trusts it)
/// that answers discovery, token and introspection requests as `routes` says. The document it
/// serves names itself as the issuer and its own `/token` and `/introspect`.
struct SlowAs {
    server: CountingServer,
}

impl SlowAs {
    async fn start(f: &Fed, routes: impl Fn(&str) -> Reply + Send + Sync + 'static) -> SlowAs {
        use tokio::io::AsyncWriteExt as _;
        let routes = Arc::new(routes);
        let identity = f.fed.pki().issue_server(&["127.0.0.1"], false).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config().unwrap());
        let server = CountingServer::start(move |tcp| {
            let acceptor = acceptor.clone();
            let routes = routes.clone();
            async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let port = tls.get_ref().0.local_addr().unwrap().port();
                let origin = format!("https://127.0.0.1:{port}");
                // The request head (and a form body, which is not looked at).
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = s(&head);
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let reply = match path.as_str() {
                    "/.well-known/openid-configuration" => match routes(&path) {
                        Reply::Json(_) => Reply::Json(format!(
                            r#"{{"issuer":"{origin}","token_endpoint":"{origin}/token",
                                "introspection_endpoint":"{origin}/introspect",
                                "token_endpoint_auth_methods_supported":["tls_client_auth"],
                                "tls_client_certificate_bound_access_tokens":true}}"#
                        )),
                        other => other,
                    },
                    _ => routes(&path),
                };
                let head_of = |len: Option<usize>| {
                    let framing = len
                        .map(|n| format!("content-length: {n}\r\n"))
                        .unwrap_or_default();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}connection: close\r\n\r\n"
                    )
                };
                match reply {
                    Reply::Json(body) => {
                        let _ = tls.write_all(head_of(Some(body.len())).as_bytes()).await;
                        let _ = tls.write_all(body.as_bytes()).await;
                    }
                    Reply::Status(code, body) => {
                        let head = head_of(Some(body.len()))
                            .replacen("200 OK", &format!("{code} Error"), 1);
                        let _ = tls.write_all(head.as_bytes()).await;
                        let _ = tls.write_all(body.as_bytes()).await;
                    }
                    Reply::Trickle { len, every } => {
                        let _ = tls.write_all(head_of(Some(len)).as_bytes()).await;
                        let _ = tls.flush().await;
                        for _ in 0..len {
                            tokio::time::sleep(every).await;
                            if tls.write_all(b" ").await.is_err() || tls.flush().await.is_err() {
                                return;
                            }
                        }
                    }
                    Reply::Huge {
                        len,
                        content_length,
                    } => {
                        let _ = tls
                            .write_all(head_of(content_length.then_some(len)).as_bytes())
                            .await;
                        let mut body = vec![b' '; len];
                        body[0] = b'{';
                        body[len - 1] = b'}';
                        for chunk in body.chunks(64 << 10) {
                            if tls.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tls.shutdown().await;
            }
        })
        .await;
        SlowAs { server }
    }
}

/// The token endpoint's answer in the tests below.
fn token_json() -> Reply {
    Reply::Json(
        r#"{"access_token":"slow-as-token-0123456789abcdef","token_type":"Bearer","expires_in":300}"#
            .into(),
    )
}

/// A discovery document trickled a byte every 300 ms, with a 1 s timeout: the timeout bounds the
/// whole request (reqwest's per-read timeout restarts with every byte), so discovery fails in
/// about a second, and so does every caller that waited for it, instead of hanging for ever.
#[tokio::test]
async fn a_discovery_document_trickled_byte_by_byte_times_out_as_a_whole() {
    let f = Fed::start(FederationConfig::default()).await;
    let slow = SlowAs::start(&f, |path| match path {
        "/.well-known/openid-configuration" => Reply::Trickle {
            len: 4096,
            every: Duration::from_millis(300),
        },
        _ => token_json(),
    })
    .await;
    let mut st = quick(f.settings(), Duration::from_secs(1), 0);
    st.issuer_url = slow.server.origin();
    let client = client_of(&st);
    let t0 = Instant::now();
    let (a, b) = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join(client.token_info(), client.token_info()),
    )
    .await
    .expect("discovery hangs: the timeout does not bound the body");
    let took = t0.elapsed();
    for err in [a.unwrap_err(), b.unwrap_err()] {
        assert!(
            matches!(err, Error::TokenUnreachable { tls: false, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("/.well-known/openid-configuration"), "{msg}");
        assert!(msg.contains("timeout_seconds"), "{msg}");
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The same for introspection (a POST with no timeout of its own before).
#[tokio::test]
async fn an_introspection_response_trickled_byte_by_byte_times_out_as_a_whole() {
    let f = Fed::start(FederationConfig::default()).await;
    let slow = SlowAs::start(&f, |path| match path {
        "/introspect" => Reply::Trickle {
            len: 4096,
            every: Duration::from_millis(300),
        },
        _ => token_json(),
    })
    .await;
    let mut st = quick(f.settings(), Duration::from_secs(1), 0);
    st.issuer_url = slow.server.origin();
    let client = client_of(&st);
    let t0 = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), client.introspect())
        .await
        .expect("introspection hangs: the timeout does not bound the body")
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/introspect") && msg.contains("timeout_seconds"),
        "{msg}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_no_token(&msg, Some("slow-as-token-0123456789abcdef"));
}

/// An introspection endpoint that does not authenticate the client (401 `invalid_client`): the
/// error names the endpoint, the status and the server's code, and says what to check.
#[tokio::test]
async fn an_introspection_401_says_what_to_check() {
    let f = Fed::start(FederationConfig::default()).await;
    let slow = SlowAs::start(&f, |path| match path {
        "/introspect" => Reply::Status(
            401,
            r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
        ),
        _ => token_json(),
    })
    .await;
    let mut st = quick(f.settings(), Duration::from_secs(5), 0);
    st.issuer_url = slow.server.origin();
    let err = client_of(&st).introspect().await.unwrap_err();
    assert!(matches!(err, Error::TokenResponse(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/introspect") && msg.contains("401") && msg.contains("invalid_client"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "the authorization server did not authenticate this client for introspection: check \
             that `client_id` and `certificate` are the pair registered with the directory"
        ),
        "{msg}"
    );
    assert_no_token(&msg, Some("slow-as-token-0123456789abcdef"));
}

/// Discovery documents, token responses and introspection responses over 1 MiB are refused
/// with a clear error, whether announced by `content-length` or not, instead of being read into
/// memory whatever their size.
#[tokio::test]
async fn authorization_server_responses_over_1_mib_are_refused() {
    let f = Fed::start(FederationConfig::default()).await;
    const BIG: usize = (1 << 20) + 2;
    let cases = [
        ("discovery", "/.well-known/openid-configuration"),
        ("token", "/token"),
        ("introspection", "/introspect"),
    ];
    for (what, path) in cases {
        for content_length in [true, false] {
            let routes = move |p: &str| {
                if p == path {
                    Reply::Huge {
                        len: BIG,
                        content_length,
                    }
                } else {
                    token_json()
                }
            };
            let framing = if content_length {
                "content-length"
            } else {
                "until close"
            };
            huge_reply_is_refused(&f, &format!("{what}, {framing}"), routes).await;
        }
    }
}

/// One case of the test above: `what` is the exchange whose answer `routes` makes too large.
async fn huge_reply_is_refused(
    f: &Fed,
    what: &str,
    routes: impl Fn(&str) -> Reply + Send + Sync + 'static,
) {
    let slow = SlowAs::start(f, routes).await;
    let mut st = quick(f.settings(), Duration::from_secs(10), 0);
    st.issuer_url = slow.server.origin();
    let client = client_of(&st);
    let err = if what.starts_with("introspection") {
        client.introspect().await.unwrap_err()
    } else {
        client.token_info().await.unwrap_err()
    };
    let msg = err.to_string();
    assert!(msg.contains("larger than 1 MiB"), "{what}: {msg}");
    assert_eq!(
        err.kind(),
        fapi_host::ErrorKind::Authorization,
        "{what}: {msg}"
    );
    if what.starts_with("discovery") {
        assert!(matches!(err, Error::Discovery(_)), "{what}: {err:?}");
    } else {
        assert!(matches!(err, Error::TokenResponse(_)), "{what}: {err:?}");
    }
}

/// The configuration file refuses a default token lifetime outside 1 s to a day (config.rs); one
/// set in code is taken as a day at most (and 1 s at least), so a token without `expires_in` is
/// neither a panic (`Instant` overflow) nor a token per request.
#[tokio::test]
async fn a_default_token_lifetime_set_in_code_is_kept_within_a_day() {
    let f = Fed::start(FederationConfig::default()).await;
    f.fed.set_as_fault(Some(AsFault::OmitExpiresIn));
    for (set, expected) in [
        (Duration::MAX, 86_400),
        (Duration::from_secs(300_000_000_000), 86_400),
        (Duration::ZERO, 1),
    ] {
        let mut st = quick(f.settings(), Duration::from_secs(5), 0);
        st.client.default_token_lifetime = set;
        let info = client_of(&st).token_info().await.unwrap();
        assert!(!info.expires_in_from_server);
        assert_eq!(info.expires_in, expected, "{set:?}");
    }
}
