//! The native client against the local federation: every rule of issue "Native FAPI client".
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Fed, contains, logs};
use fapi_federation::{AsFault, DpFault, FederationConfig};
use fapi_host::{AuthProblem, Error, FapiClient};

#[tokio::test]
async fn happy_path_uses_the_mtls_alias_and_one_token() {
    let f = Fed::start(FederationConfig::default()).await;
    let client = f.client();
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.attempts(), 1);
    let echoed = r
        .headers()
        .get("x-fapi-interaction-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(Some(echoed.as_str()), r.interaction_id());
    assert_eq!(uuid::Uuid::parse_str(&echoed).unwrap().get_version_num(), 4);
    let body = r.text().await.unwrap();
    assert!(
        body.starts_with("postcode,num_meters,total_consumption_kwh"),
        "{body:.80}"
    );
    let json = client.get(f.fed.data_json_url()).send().await.unwrap();
    assert_eq!(json.status(), 200);
    let v: serde_json::Value = json.json().await.unwrap();
    assert!(v.as_array().unwrap().len() > 10);

    let c = f.fed.counters();
    assert_eq!(c.token_requests, 1, "{c:?}");
    assert_eq!(
        c.token_requests_mtls, 1,
        "the alias on the mTLS listener is used: {c:?}"
    );
    assert_eq!(c.token_requests_plain, 0, "{c:?}");
    assert_eq!(client.token_requests(), 1);

    let info = client.token_info().await.unwrap();
    assert_eq!(info.token_type, "Bearer");
    assert_eq!(info.scope, vec!["directory:software", "consumption:read"]);
    assert_eq!(info.certificate_thumbprint, client.identity().thumbprint());
    assert!(info.expires_in_from_server && info.expires_in <= 300 && info.expires_in > 290);
    let introspection = client.introspect().await.unwrap();
    assert_eq!(introspection["active"], true);
    assert_eq!(
        introspection["cnf"]["x5t#S256"],
        client.identity().thumbprint()
    );
}

#[tokio::test]
async fn concurrent_first_use_makes_one_token_request() {
    let f = Fed::start(FederationConfig::default()).await;
    let client = f.client();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let c = client.clone();
        let url = f.fed.data_json_url();
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(f.fed.counters().token_requests, 1);
}

/// Callers that wait while the token request fails get its error at once: one token request for
/// all of them, not one each after it, one at a time (each taking the whole timeout here: the
/// token endpoint does not answer within it). The next caller sends a new one.
#[tokio::test]
async fn callers_waiting_on_a_failed_token_request_share_its_error() {
    let f = Fed::start(FederationConfig::default()).await;
    let mut settings = f.settings();
    settings.client.timeout = Duration::from_secs(1);
    settings.client.retries = 0;
    let client = FapiClient::from_settings(&settings).unwrap().0;
    client.server_metadata().await.unwrap();
    f.fed
        .set_as_fault(Some(AsFault::SlowToken(Duration::from_secs(3))));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = client.clone();
        let url = f.fed.data_json_url();
        tasks.push(tokio::spawn(async move { c.get(url).send().await }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("no token"), "{err}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the callers waited {took:?}");
    assert_eq!(f.fed.counters().token_requests, 1);
    assert_eq!(f.fed.counters().dp_requests, 0);
    // The next caller tries again, and gets a token once the endpoint answers.
    f.fed.set_as_fault(None);
    let r = client.get(f.fed.data_json_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(f.fed.counters().token_requests, 2);
}

#[tokio::test]
async fn issuer_mismatch_stops_before_any_token_request() {
    let f = Fed::start(FederationConfig::default()).await;
    f.fed.set_as_fault(Some(AsFault::IssuerMismatch(
        "https://auth.elsewhere.example".into(),
    )));
    let err = f.client().get(f.fed.data_url()).send().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Discovery(_)), "{msg}");
    assert!(
        msg.contains("https://auth.elsewhere.example") && msg.contains(&f.fed.issuer_url()),
        "{msg}"
    );
    assert_eq!(f.fed.counters().token_requests, 0);
    assert_eq!(f.fed.counters().dp_requests, 0);
}

#[tokio::test]
async fn discovery_faults() {
    let f = Fed::start(FederationConfig::default()).await;
    f.fed.set_as_fault(Some(AsFault::HttpEndpoints));
    let err = f.client().token_info().await.unwrap_err();
    assert!(err.to_string().contains("not https"), "{err}");
    f.fed.set_as_fault(Some(AsFault::NoTlsClientAuth));
    let err = f.client().token_info().await.unwrap_err();
    assert!(err.to_string().contains("tls_client_auth"), "{err}");
    assert_eq!(f.fed.counters().token_requests, 0);
    // Without aliases the top-level endpoint is used.
    f.fed.set_as_fault(Some(AsFault::NoAliases));
    let info = f.client().token_info().await.unwrap();
    assert_eq!(f.fed.counters().token_requests_mtls, 1);
    assert!(info.token_endpoint.starts_with(&f.fed.issuer_url()));
}

#[tokio::test]
async fn missing_expires_in_uses_the_default_lifetime() {
    let f = Fed::start(FederationConfig::default()).await;
    f.fed.set_as_fault(Some(AsFault::OmitExpiresIn));
    let client = f.client();
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let info = client.token_info().await.unwrap();
    assert!(!info.expires_in_from_server);
    assert_eq!(info.expires_in, 300);
}

#[tokio::test]
async fn token_type_is_case_insensitive_and_others_are_refused() {
    let f = Fed::start(FederationConfig::default()).await;
    f.fed
        .set_as_fault(Some(AsFault::TokenType("bEARER".into())));
    assert_eq!(
        f.client()
            .get(f.fed.data_url())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    f.fed.set_as_fault(Some(AsFault::TokenType("N_A".into())));
    let before = f.fed.counters().dp_requests;
    let err = f.client().get(f.fed.data_url()).send().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenResponse(_)) && err.to_string().contains("N_A"),
        "{err}"
    );
    assert_eq!(
        f.fed.counters().dp_requests,
        before,
        "no call with a token of unknown type"
    );
}

#[tokio::test]
async fn token_endpoint_errors_are_clear() {
    let f = Fed::start(FederationConfig::default()).await;
    f.fed.set_as_fault(Some(AsFault::InvalidClient));
    let err = f.client().token_info().await.unwrap_err();
    assert!(
        matches!(&err, Error::TokenRefused { error, status: 401, .. } if error == "invalid_client"),
        "{err}"
    );
    assert_eq!(
        f.fed.counters().token_requests,
        1,
        "no retry on invalid_client"
    );
    f.fed.set_as_fault(Some(AsFault::MalformedJson));
    let err = f.client().token_info().await.unwrap_err();
    assert!(err.to_string().contains("JSON"), "{err}");
    f.fed.set_as_fault(Some(AsFault::TokenEndpointStatus(500)));
    let err = f.client().token_info().await.unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    // ... and what to do about it.
    assert!(
        err.to_string().contains(
            "HTTP 500 Internal Server Error without an OAuth error; the authorization server \
             itself failed (or a proxy in front of it): try again in a few minutes; if it keeps \
             failing, tell the server's operator"
        ),
        "{err}"
    );
    f.fed.set_as_fault(Some(AsFault::TokenEndpointStatus(404)));
    let err = f.client().token_info().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("this is not an OAuth token endpoint's answer: check `issuer_url`"),
        "{err}"
    );
    // Scopes the client may not have: invalid_scope.
    f.fed.set_as_fault(None);
    let mut s = f.settings();
    s.requested_scopes = "admin:everything".into();
    let err = FapiClient::from_settings(&s)
        .unwrap()
        .0
        .token_info()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid_scope"), "{err}");
}

#[tokio::test]
async fn invalid_token_gets_exactly_one_new_token_and_one_replay() {
    let f = Fed::start(FederationConfig {
        introspection_cache_ttl: Duration::ZERO,
        ..FederationConfig::default()
    })
    .await;
    let client = f.client();
    assert_eq!(
        client.get(f.fed.data_url()).send().await.unwrap().status(),
        200
    );
    f.fed.revoke_all_tokens();
    // A POST too: a request refused with invalid_token was not processed, so the replay is safe.
    let r = client
        .post(format!("{}/upload", f.fed.data_origin()))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.attempts(), 2);
    assert_eq!(f.fed.counters().token_requests, 2);

    // A server that keeps refusing. Moments after a token replaced a refused one, a refusal of
    // the new token gets no other: the 401 comes back at once, no token request (else a caller -
    // a guest - could make one token request per request).
    f.fed.set_dp_fault(Some(DpFault::InvalidToken));
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.attempts(), 1);
    assert_eq!(r.auth_problem(), Some(&AuthProblem::InvalidToken));
    assert_eq!(f.fed.counters().token_requests, 2);
    // Once that token is older: one new token, one replay, then the 401 comes back, no loop.
    tokio::time::sleep(fapi_host::FORCED_REFRESH_MIN_AGE + Duration::from_millis(100)).await;
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.attempts(), 2);
    assert_eq!(f.fed.counters().token_requests, 3);
    for _ in 0..5 {
        let r = client.get(f.fed.data_url()).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.attempts()), (401, 1));
    }
    assert_eq!(f.fed.counters().token_requests, 3);
}

/// `with_retries` gives the same client other retries: one token cache (one token request for
/// both), and each retries as told.
#[tokio::test]
async fn with_retries_shares_the_token_and_changes_only_the_retries() {
    let f = Fed::with_faults().await;
    let mut settings = f.settings();
    settings.client.retries = 0;
    let (none, _) = FapiClient::from_settings(&settings).unwrap();
    let two = none.with_retries(2);
    assert_eq!(two.settings().client.retries, 2);
    assert_eq!(none.settings().client.retries, 0);
    let url = format!("{}?fault=503&fault_times=1&retry_after=0", f.fed.data_url());
    let r = none.get(&url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (503, 1));
    let url = format!(
        "{}?fault=503&fault_times=2&retry_after=0",
        f.fed.data_json_url()
    );
    let r = two.get(&url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 3));
    let url = format!("{}?fault=503&retry_after=0", f.fed.data_url());
    let r = two.get(&url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (503, 3));
    // One token, whichever client asked first; the same one.
    assert_eq!(f.fed.counters().token_requests, 1);
    assert_eq!(
        none.token_info().await.unwrap().expires_at,
        two.token_info().await.unwrap().expires_at
    );
    assert_eq!((none.token_requests(), two.token_requests()), (1, 1));
}

#[tokio::test]
async fn retries_honour_retry_after_for_idempotent_requests_only() {
    let f = Fed::with_faults().await;
    let client = f.client();
    let t0 = Instant::now();
    let url = format!("{}?fault=429&fault_times=1&retry_after=1", f.fed.data_url());
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.attempts(), 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );

    let url = format!("{}?fault=503&fault_times=2", f.fed.data_json_url());
    let r = client.get(url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 3));

    let before = f.fed.counters().dp_requests;
    let url = format!("{}/upload?fault=503", f.fed.data_origin());
    let r = client.post(url).body("payload").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.attempts(), 1, "a POST is never replayed on 503");
    assert_eq!(f.fed.counters().dp_requests, before + 1);

    // Retries are bounded: 3 by default, then the 503 is returned.
    let url = format!("{}?fault=503&retry_after=0", f.fed.data_url());
    let r = client.get(url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (503, 4));
}

#[tokio::test]
async fn insufficient_scope_is_reported_without_retry() {
    let f = Fed::start(FederationConfig::default()).await;
    let (client, _) = FapiClient::from_settings(&f.settings_for("limited")).unwrap();
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.attempts(), 1);
    assert!(
        matches!(r.auth_problem(), Some(AuthProblem::InsufficientScope(Some(s))) if s == "consumption:read")
    );
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let f = Fed::with_faults().await;
    let client = f.client();
    let target = format!("{}/elsewhere", f.fed.issuer_url());
    let url = format!("{}?fault=redirect&location={target}", f.fed.data_url());
    let before = f.fed.counters();
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], target.as_str());
    let after = f.fed.counters();
    assert_eq!(
        after.discovery_requests,
        before.discovery_requests + 1,
        "only discovery hit the AS"
    );
}

#[tokio::test]
async fn what_the_host_sends() {
    let f = Fed::with_faults().await;
    let client = f.client();
    let r = client
        .get(format!("{}/echo", f.fed.data_origin()))
        .header("x-custom", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.interaction_id().unwrap().to_owned();
    let v: serde_json::Value = r.json().await.unwrap();
    let token = client.danger_reveal_token().await.unwrap();
    let headers = v.to_string();
    assert!(
        headers.contains(&format!("Bearer {}", token.as_str())),
        "{headers}"
    );
    assert!(headers.contains(&id));
    assert!(headers.contains("x-custom"));

    for bad in [
        "Authorization",
        "proxy-authorization",
        "X-FAPI-Interaction-Id",
        "x-fapi-auth-date",
    ] {
        let err = client
            .get(f.fed.data_url())
            .header(bad, "x")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{bad}: {err}");
    }
    let err = client
        .get(f.fed.data_url())
        .header("x-a", "a\r\nb: c")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    let err = client
        .get(f.fed.data_url().replace("https", "http"))
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only https"), "{err}");
    let err = client
        .get(f.fed.data_url().replace("https://", "https://user:pw@"))
        .send()
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("pw"), "{err}");
}

#[tokio::test]
async fn tokens_never_reach_logs_or_errors() {
    let f = Fed::with_faults().await;
    let client = f.client();
    client
        .get(f.fed.data_url())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let token = client.danger_reveal_token().await.unwrap();
    let _ = client
        .get(format!("{}?fault=503&fault_times=1", f.fed.data_url()))
        .send()
        .await
        .unwrap();
    let _ = client
        .get(format!("{}/echo", f.fed.data_origin()))
        .send()
        .await
        .unwrap();
    f.fed.set_dp_fault(Some(DpFault::InvalidToken));
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    let problem = format!("{:?} {:?}", r.auth_problem(), r);
    f.fed.set_dp_fault(None);
    let token2 = client.danger_reveal_token().await.unwrap();
    assert_ne!(token.as_str(), token2.as_str());
    let logs = logs();
    let logs = logs.lock().unwrap();
    assert!(
        contains(&logs, b"Bearer [redacted]"),
        "the -vv header log ran"
    );
    for t in [token.as_str(), token2.as_str()] {
        assert!(!contains(&logs, t.as_bytes()), "a token is in the logs");
        assert!(!problem.contains(t));
        assert!(!format!("{client:?}").contains(t));
    }
}

#[tokio::test]
async fn untrusted_server_certificate_fails_before_any_request() {
    let f = Fed::start(FederationConfig::default()).await;
    let other = fapi_federation::Pki::generate().unwrap();
    let ca = f.path("other-ca.pem");
    std::fs::write(&ca, other.ca_pem()).unwrap();
    let mut s = f.settings();
    s.ca_bundle = Some(ca);
    let before = f.fed.counters().discovery_requests;
    let err = FapiClient::from_settings(&s)
        .unwrap()
        .0
        .token_info()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: true, .. }),
        "{err}"
    );
    assert_eq!(
        f.fed.counters().discovery_requests,
        before,
        "no HTTP request got through"
    );
}

#[tokio::test]
async fn wrong_server_name_fails() {
    let f = Fed::start(FederationConfig::default()).await;
    let server = f.fed.pki().issue_server(&["wrong.example"], false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let mut s = f.settings();
    s.issuer_url = format!("https://127.0.0.1:{port}");
    let err = FapiClient::from_settings(&s)
        .unwrap()
        .0
        .token_info()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: true, .. }),
        "{err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    task.abort();
}

#[tokio::test]
async fn other_key_types_work_end_to_end() {
    let f = Fed::start(FederationConfig::default()).await;
    for (name, alg) in [
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519", &rcgen::PKCS_ED25519),
    ] {
        let mut spec = fapi_federation::ClientSpec::new("fapi-dev-consumer");
        spec.algorithm = alg;
        let id = f.fed.pki().issue_client(spec).unwrap();
        let s = f.settings_with(name, &id.cert_pem, &id.key_pem);
        let (client, _) = FapiClient::from_settings(&s).unwrap();
        let r = client.get(f.fed.data_url()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
}

/// Past the refresh point (expiry - margin) the token is refreshed by one caller while the others
/// go on with the current one: a slow token endpoint holds up nobody else, one token request is
/// in flight, and the new token replaces the old once it arrives. The token endpoint holds the
/// refresh until the test lets it go, so that "nobody else waited" is shown by every other caller
/// being answered while it is held, whatever the machine's load.
#[tokio::test]
async fn a_slow_refresh_holds_up_no_other_caller() {
    // Tokens live 8 s: the margin is 4 s (half the lifetime), so the refresh is due from 4 s.
    let f = Fed::start(FederationConfig {
        token_ttl: Duration::from_secs(8),
        ..FederationConfig::default()
    })
    .await;
    let client = f.client();
    // The token was asked for after `asked` and was in hand at `t0`: its refresh point is at
    // most 4 s after `t0`, its expiry at least 8 s after `asked`.
    let asked = Instant::now();
    let old = client.danger_reveal_token().await.unwrap();
    let t0 = Instant::now();
    f.fed.hold_token_requests(true);
    tokio::time::sleep_until((t0 + Duration::from_millis(4200)).into()).await;
    let before = f.fed.counters();
    let request = |client: &FapiClient| common::timed_get(client, f.fed.data_url());
    let refreshing = request(&client);
    // The refresh's token request reaches the server (and is held there).
    while f.fed.counters().token_requests == before.token_requests {
        assert!(t0.elapsed() < Duration::from_secs(7), "no refresh began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Others, one after another, for longer than the pause before another attempt would be due
    // (and at least two of them), all before the token expires at 8 s.
    let mut others = 0;
    while others < 2 || t0.elapsed() < Duration::from_millis(5500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            asked.elapsed() < Duration::from_millis(7500),
            "{others} in 7.5 s"
        );
        let (status, _) = request(&client).await.unwrap();
        assert_eq!(status, 200);
        assert!(!refreshing.is_finished(), "the refresh ended early");
        others += 1;
    }
    f.fed.hold_token_requests(false);
    let (status, _) = refreshing.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        f.fed.counters().token_requests,
        before.token_requests + 1,
        "one token request for all callers"
    );
    let new = client.danger_reveal_token().await.unwrap();
    assert_ne!(new.as_str(), old.as_str(), "the new token is in use");
}

// ---------------------------------------------------------------------------------------------
// Stand-in servers: an authorization server whose answers a test chooses (a certificate of the
// federation's CA, so the client trusts it), and an old token endpoint that forwards to the
// federation's, answers 404, or is gone.
// ---------------------------------------------------------------------------------------------

/// One answer of a [`StandIn`].
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.into(),
        }
    }
}

/// A discovery document for `issuer` naming `token_endpoint`, with `extra` members (`,"k":v...`).
fn discovery_doc(issuer: &str, token_endpoint: &str, extra: &str) -> String {
    format!(
        r#"{{"issuer":"{issuer}","token_endpoint":"{token_endpoint}",
            "token_endpoint_auth_methods_supported":["tls_client_auth"],
            "grant_types_supported":["client_credentials"],
            "tls_client_certificate_bound_access_tokens":true{extra}}}"#
    )
}

/// Read one HTTP/1.1 request (head and `content-length` body): its method and path.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt as _;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let mut words = head.split(' ');
    Some((words.next()?.to_owned(), words.next()?.to_owned()))
}

/// Write `reply` and close the connection.
async fn write_reply<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, reply: Reply) {
    use tokio::io::AsyncWriteExt as _;
    let mut head = format!("HTTP/1.1 {} Stand-in\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        reply.body.len()
    ));
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(reply.body.as_bytes()).await;
    let _ = s.shutdown().await;
}

type Handler = dyn Fn(&str, &str, &str) -> Reply + Send + Sync;

/// An HTTPS server on loopback answering every request with `handler(method, path, origin)`,
/// recording `METHOD path` of each.
struct StandIn {
    origin: String,
    seen: Arc<Mutex<Vec<String>>>,
    /// TCP connections accepted (a refused handshake included).
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    async fn start(
        f: &Fed,
        handler: impl Fn(&str, &str, &str) -> Reply + Send + Sync + 'static,
    ) -> StandIn {
        let config = f
            .fed
            .pki()
            .issue_server(&["127.0.0.1"], false)
            .unwrap()
            .server_config()
            .unwrap();
        StandIn::with_config(config, handler).await
    }

    async fn with_config(
        config: Arc<rustls::ServerConfig>,
        handler: impl Fn(&str, &str, &str) -> Reply + Send + Sync + 'static,
    ) -> StandIn {
        let handler: Arc<Handler> = Arc::new(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("https://{}", listener.local_addr().unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let (o, s, a) = (origin.clone(), seen.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler, o, s) =
                    (acceptor.clone(), handler.clone(), o.clone(), s.clone());
                conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some((method, path)) = read_request(&mut tls).await else {
                        return;
                    };
                    s.lock().unwrap().push(format!("{method} {path}"));
                    let reply = handler(&method, &path, &o);
                    write_reply(&mut tls, reply).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        StandIn {
            origin,
            seen,
            accepted,
            task,
        }
    }

    /// Requests received for `path` (any method).
    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.split(' ').nth(1) == Some(path))
            .count()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings for fast tests against `issuer`: short backoff, `token_retries` token retries.
fn quick_settings(f: &Fed, issuer: &str, token_retries: u32) -> fapi_host::Settings {
    let mut s = f.settings();
    s.issuer_url = issuer.to_owned();
    s.client.token_retries = token_retries;
    s.client.backoff_base = Duration::from_millis(10);
    s.client.timeout = Duration::from_secs(5);
    s
}

fn client_of(s: &fapi_host::Settings) -> FapiClient {
    FapiClient::from_settings(s).unwrap().0
}

/// Lines of the captured log that contain every one of `needles`.
fn log_lines(needles: &[&str]) -> Vec<String> {
    let logs = logs();
    let logs = logs.lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Retry-After longer than the client waits (RFC 9110 section 10.2.3)
// ---------------------------------------------------------------------------------------------

/// A data provider that asks (429/503 with `Retry-After: 3600`) for a longer wait than the client
/// makes (`max_retry_after`): the answer goes back as it is, at once, with its Retry-After; the
/// request is not sent again sooner than the server asked. A wait within the bound is honoured.
#[tokio::test]
async fn a_retry_after_longer_than_the_client_waits_is_returned_not_retried() {
    let f = Fed::with_faults().await;
    let mut s = f.settings();
    s.client.max_retry_after = Duration::from_secs(2);
    let client = client_of(&s);
    client.token_info().await.unwrap();
    for code in [429, 503] {
        let before = f.fed.counters().dp_requests;
        let url = format!("{}?fault={code}&retry_after=3600", f.fed.data_url());
        let t0 = Instant::now();
        let r = client.get(url.clone()).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.attempts()), (code, 1), "{code}");
        assert_eq!(r.headers()["retry-after"], "3600", "{code}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(f.fed.counters().dp_requests, before + 1, "{code}");
        let said = log_lines(&[&url, "WARN", "Retry-After", "3600 s", "max_retry_after"]);
        assert_eq!(said.len(), 1, "{code}: {said:?}");
    }
    // Within the bound: waited for, then retried.
    let url = format!("{}?fault=503&fault_times=1&retry_after=1", f.fed.data_url());
    let t0 = Instant::now();
    let r = client.get(url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 2));
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
}

/// The same for the token request: a 503 with a Retry-After longer than the client waits is one
/// token request and an error that names the Retry-After and the setting that bounds it; one
/// within the bound is waited for.
#[tokio::test]
async fn a_token_endpoint_retry_after_longer_than_the_client_waits_is_not_retried() {
    let f = Fed::start(FederationConfig::default()).await;
    let wait = Arc::new(Mutex::new(Some(3600u64)));
    let w = wait.clone();
    let as_ = StandIn::start(&f, move |_, path, origin| match path {
        "/.well-known/openid-configuration" => {
            Reply::json(200, discovery_doc(origin, &format!("{origin}/token"), ""))
        }
        _ => match w.lock().unwrap().take() {
            Some(secs) => {
                let mut r = Reply::json(
                    503,
                    r#"{"error":"temporarily_unavailable","error_description":"maintenance"}"#,
                );
                r.headers.push(("retry-after", secs.to_string()));
                r
            }
            None => Reply::json(
                200,
                r#"{"access_token":"stand-in-token-0123456789","token_type":"Bearer","expires_in":300}"#,
            ),
        },
    })
    .await;
    let mut s = quick_settings(&f, &as_.origin, 3);
    s.client.max_retry_after = Duration::from_secs(2);
    let err = client_of(&s).token_info().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::TokenResponse(_)), "{msg}");
    assert!(
        msg.contains("HTTP 503")
            && msg.contains("temporarily_unavailable")
            && msg.contains("Retry-After")
            && msg.contains("3600 s")
            && msg.contains("max_retry_after"),
        "{msg}"
    );
    assert_eq!(as_.hits("/token"), 1, "not sent again: {msg}");

    *wait.lock().unwrap() = Some(1);
    let t0 = Instant::now();
    let info = client_of(&s).token_info().await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(info.token_endpoint, format!("{}/token", as_.origin));
    assert_eq!(as_.hits("/token"), 3, "the 503, then the retry after 1 s");
}

// ---------------------------------------------------------------------------------------------
// Token requests after a gateway error
// ---------------------------------------------------------------------------------------------

/// A 502 or 504 comes from a gateway that may have passed the token request on (and a token been
/// issued): it is not sent again. 429 and 503 say it was not processed: retried.
#[tokio::test]
async fn token_requests_are_sent_once_after_502_or_504_and_retried_after_429_or_503() {
    let f = Fed::start(FederationConfig::default()).await;
    let s = quick_settings(&f, &f.fed.issuer_url(), 2);
    for (code, requests) in [(504, 1), (502, 1), (503, 3), (429, 3)] {
        f.fed.set_as_fault(Some(AsFault::TokenEndpointStatus(code)));
        let before = f.fed.counters().token_requests;
        let err = client_of(&s).token_info().await.unwrap_err();
        assert!(err.to_string().contains(&format!("HTTP {code}")), "{err}");
        assert_eq!(
            f.fed.counters().token_requests - before,
            requests,
            "{code}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery: HTTP 200 application/json only (DISC-07); absent capabilities warned once (DISC-06)
// ---------------------------------------------------------------------------------------------

/// A discovery answer that is not HTTP 200 with a JSON media type is no discovery document, even
/// with a valid document in its body: an error saying what came back and what is expected, and no
/// token request. Media-type parameters and case do not matter.
#[tokio::test]
async fn discovery_must_be_http_200_application_json() {
    let f = Fed::start(FederationConfig::default()).await;
    let token_endpoint = format!("{}/token", f.fed.issuer_url());
    for (status, content_type, named) in [
        (204, Some("application/json"), "HTTP 204 No Content"),
        (
            200,
            Some("text/html; charset=utf-8"),
            "Content-Type \"text/html; charset=utf-8\"",
        ),
        (200, None, "no Content-Type"),
        (201, Some("application/json"), "HTTP 201 Created"),
    ] {
        let te = token_endpoint.clone();
        let as_ = StandIn::start(&f, move |_, _, origin| {
            let mut r = Reply::json(status, discovery_doc(origin, &te, ""));
            if status == 204 {
                r.body.clear();
            }
            r.headers.clear();
            if let Some(ct) = content_type {
                r.headers.push(("content-type", ct.to_owned()));
            }
            r
        })
        .await;
        let before = f.fed.counters().token_requests;
        let err = client_of(&quick_settings(&f, &as_.origin, 0))
            .token_info()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Discovery(_)), "{named}: {msg}");
        assert!(msg.contains(named), "{named}: {msg}");
        assert!(
            msg.contains("HTTP 200") && msg.contains("application/json"),
            "{named}: {msg}"
        );
        assert!(
            msg.contains(&format!("{}/.well-known/openid-configuration", as_.origin)),
            "{msg}"
        );
        assert_eq!(f.fed.counters().token_requests, before, "{named}");
    }
    let te = token_endpoint.clone();
    let as_ = StandIn::start(&f, move |_, _, origin| {
        let mut r = Reply::json(200, discovery_doc(origin, &te, ""));
        r.headers = vec![("content-type", "Application/JSON; Charset=UTF-8".into())];
        r
    })
    .await;
    let info = client_of(&quick_settings(&f, &as_.origin, 0))
        .token_info()
        .await
        .unwrap();
    assert_eq!(info.token_endpoint, token_endpoint);
}

/// DISC-03: an issuer with a path whose server publishes metadata only at the RFC 8414 location
/// (`/.well-known/oauth-authorization-server` inserted between host and path) is discovered there
/// after the OpenID location answers 404, and the exact issuer check stays; when both answer 404,
/// the error names both URLs. The stand-in records the exact paths asked for.
#[tokio::test]
async fn an_issuer_with_a_path_is_discovered_at_the_rfc8414_location() {
    let f = Fed::start(FederationConfig::default()).await;
    let te = format!("{}/token", f.fed.issuer_url());
    let claimed = Arc::new(Mutex::new(String::new()));
    let c = claimed.clone();
    let as_ = StandIn::start(&f, move |_, path, origin| match path {
        "/.well-known/oauth-authorization-server/accounts" => {
            let issuer = c.lock().unwrap().replace("ORIGIN", origin);
            Reply::json(200, discovery_doc(&issuer, &te, ""))
        }
        _ => Reply::json(404, r#"{"error":"not_found"}"#),
    })
    .await;
    *claimed.lock().unwrap() = "ORIGIN/accounts".into();
    let issuer = format!("{}/accounts", as_.origin);
    let client = client_of(&quick_settings(&f, &issuer, 0));
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(as_.hits("/accounts/.well-known/openid-configuration"), 1);
    assert_eq!(
        as_.hits("/.well-known/oauth-authorization-server/accounts"),
        1
    );

    // The document found there must still name this issuer exactly (a trailing slash differs).
    *claimed.lock().unwrap() = "ORIGIN/accounts/".into();
    let err = client_of(&quick_settings(&f, &issuer, 0))
        .token_info()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Discovery(_)), "{msg}");
    assert!(
        msg.contains("/.well-known/oauth-authorization-server/accounts") && msg.contains("issuer"),
        "{msg}"
    );

    // Neither location: one error naming both, and no token request.
    let before = f.fed.counters().token_requests;
    let elsewhere = format!("{}/elsewhere", as_.origin);
    let msg = client_of(&quick_settings(&f, &elsewhere, 0))
        .token_info()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("{elsewhere}/.well-known/openid-configuration"))
            && msg.contains(&format!(
                "{}/.well-known/oauth-authorization-server/elsewhere",
                as_.origin
            ))
            && msg.contains("404"),
        "{msg}"
    );
    assert_eq!(f.fed.counters().token_requests, before);
}

/// A document without token_endpoint_auth_methods_supported (RFC 8414 default: client_secret_basic)
/// or grant_types_supported (default: authorization_code, implicit) is accepted, as real
/// directories omit them, with a warning each, logged once however many requests follow.
#[tokio::test]
async fn absent_capabilities_are_accepted_and_warned_about_once() {
    let f = Fed::start(FederationConfig::default()).await;
    let te = format!("{}/token", f.fed.issuer_url());
    let as_ = StandIn::start(&f, move |_, _, origin| {
        Reply::json(
            200,
            format!(
                r#"{{"issuer":"{origin}","token_endpoint":"{te}",
                    "tls_client_certificate_bound_access_tokens":true}}"#
            ),
        )
    })
    .await;
    let client = client_of(&quick_settings(&f, &as_.origin, 0));
    for _ in 0..3 {
        let r = client.get(f.fed.data_url()).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let url = format!("{}/.well-known/openid-configuration", as_.origin);
    for field in [
        "omits token_endpoint_auth_methods_supported",
        "omits grant_types_supported",
    ] {
        let said = log_lines(&[&url, field, "WARN"]);
        assert_eq!(said.len(), 1, "{field}: {said:?}");
    }
    assert!(
        log_lines(&[&url, "client_secret_basic"]).len() == 1
            && log_lines(&[&url, "authorization_code and implicit"]).len() == 1
    );
    assert_eq!(as_.hits("/.well-known/openid-configuration"), 1);
}

// ---------------------------------------------------------------------------------------------
// A token endpoint that has moved: discovery again, once
// ---------------------------------------------------------------------------------------------

/// A stand-in authorization server whose discovery document names the token endpoint a test sets
/// (the issuer is the stand-in's origin). The document is served as is until changed.
async fn moving_as(f: &Fed, token_endpoint: String) -> (StandIn, Arc<Mutex<String>>) {
    let current = Arc::new(Mutex::new(token_endpoint));
    let c = current.clone();
    let as_ = StandIn::start(f, move |_, _, origin| {
        Reply::json(200, discovery_doc(origin, &c.lock().unwrap(), ""))
    })
    .await;
    (as_, current)
}

/// A TCP forwarder on loopback to `target` (TLS passes through: the client talks to the server
/// behind it, certificate and all): the token endpoint's old address. Dropping it closes the
/// port and every connection through it.
struct Forwarder {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: std::net::SocketAddr) -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Forwarder { port, task }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn socket_of(origin: &str) -> std::net::SocketAddr {
    origin.trim_start_matches("https://").parse().unwrap()
}

/// A long run: the token endpoint the client discovered at its start moves (its old address stops
/// answering: connection refused) while the discovery document names the new one. When the token
/// must be renewed, the client finds the old endpoint gone, fetches the discovery document again,
/// once, and gets the token at the new endpoint; the request that needed it goes through.
#[tokio::test]
async fn a_token_endpoint_that_moved_is_found_by_discovering_again() {
    let f = Fed::start(FederationConfig {
        introspection_cache_ttl: Duration::ZERO,
        ..FederationConfig::default()
    })
    .await;
    let new_endpoint = format!("{}/token", f.fed.issuer_url());
    let old = Forwarder::start(socket_of(&f.fed.issuer_url())).await;
    let old_endpoint = format!("https://127.0.0.1:{}/token", old.port);
    let (as_, current) = moving_as(&f, old_endpoint.clone()).await;
    let client = client_of(&quick_settings(&f, &as_.origin, 1));
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        client.token_info().await.unwrap().token_endpoint,
        old_endpoint
    );

    // The move: the old address is gone, the document names the new endpoint, and the token is
    // refused (as when it expires): a new one is needed.
    *current.lock().unwrap() = new_endpoint.clone();
    drop(old);
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.fed.revoke_all_tokens();
    let before = f.fed.counters().token_requests;
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 2));
    assert_eq!(
        client.token_info().await.unwrap().token_endpoint,
        new_endpoint
    );
    assert_eq!(as_.hits("/.well-known/openid-configuration"), 2);
    assert_eq!(f.fed.counters().token_requests, before + 1);
    // 1 at the start, 2 at the old address (refused, then its one retry), 1 at the new one.
    assert_eq!(client.token_requests(), 4);
    let moved = log_lines(&[&old_endpoint, &new_endpoint, "the token endpoint has moved"]);
    assert_eq!(moved.len(), 1, "{moved:?}");
    // The metadata the client reports is the new document's.
    assert_eq!(
        client
            .server_metadata()
            .await
            .unwrap()
            .token_endpoint
            .as_str(),
        new_endpoint
    );
}

/// A token endpoint that now answers 404 (a host that no longer serves it) or 405: discovered
/// again, once, and the token requested at the endpoint the document now names.
#[tokio::test]
async fn a_token_endpoint_answering_404_or_405_is_discovered_again() {
    let f = Fed::start(FederationConfig::default()).await;
    let new_endpoint = format!("{}/token", f.fed.issuer_url());
    for status in [404, 405] {
        let old = StandIn::start(&f, move |_, _, _| Reply {
            status,
            headers: vec![("content-type", "text/html".into())],
            body: "<html><body>Not here</body></html>".into(),
        })
        .await;
        let old_endpoint = format!("{}/oauth2/token", old.origin);
        let (as_, current) = moving_as(&f, old_endpoint.clone()).await;
        let client = client_of(&quick_settings(&f, &as_.origin, 2));
        // Discovered earlier (as a sandbox does for its policy), the endpoint moved since.
        client.server_metadata().await.unwrap();
        *current.lock().unwrap() = new_endpoint.clone();
        let r = client.get(f.fed.data_url()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{status}");
        assert_eq!(old.hits("/oauth2/token"), 1, "{status}: not retried");
        assert_eq!(as_.hits("/.well-known/openid-configuration"), 2, "{status}");
        assert_eq!(
            client.token_info().await.unwrap().token_endpoint,
            new_endpoint
        );
        assert_eq!(client.token_requests(), 2, "{status}");
    }
}

/// Discovery again happens once per token acquisition, never in a loop: when the document still
/// names the endpoint that is gone, the error comes back; when it names another that fails too,
/// that one is tried and its error comes back, without a third discovery.
#[tokio::test]
async fn discovering_again_is_done_once_never_in_a_loop() {
    let f = Fed::start(FederationConfig::default()).await;
    let closed = |_: ()| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://127.0.0.1:{}/token", l.local_addr().unwrap().port())
    };
    let gone = closed(());
    let (as_, current) = moving_as(&f, gone.clone()).await;
    let client = client_of(&quick_settings(&f, &as_.origin, 1));
    let err = client.token_info().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&gone), "{err}");
    assert_eq!(as_.hits("/.well-known/openid-configuration"), 2);
    assert_eq!(
        client.token_requests(),
        2,
        "1 + 1 retry, at the one endpoint"
    );

    let also_gone = closed(());
    *current.lock().unwrap() = also_gone.clone();
    let err = client.token_info().await.unwrap_err();
    assert!(err.to_string().contains(&also_gone), "{err}");
    // The cached document (still naming `gone`), then the new one: one discovery more.
    assert_eq!(as_.hits("/.well-known/openid-configuration"), 3);
    assert_eq!(client.token_requests(), 2 + 2 + 2);
    assert_eq!(f.fed.counters().token_requests, 0);
}

// ---------------------------------------------------------------------------------------------
// A token endpoint that refuses the client certificate (ERR-04, AUTH-04)
// ---------------------------------------------------------------------------------------------

/// The token endpoint's TLS refuses the client's certificate (it trusts another CA), under TLS 1.2
/// (the refusal comes in the handshake) and TLS 1.3 (after it): one connection, no retry, no
/// second discovery, and an error that names the certificate problem.
#[tokio::test]
async fn a_token_endpoint_refusing_the_client_certificate_is_asked_once() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let f = Fed::start(FederationConfig::default()).await;
    let identity = f.fed.pki().issue_server(&["127.0.0.1"], false).unwrap();
    let other_ca = fapi_federation::Pki::generate().unwrap().ca_der();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(other_ca.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let token = StandIn::with_config(Arc::new(config), |_, _, _| {
            Reply::json(200, r#"{"access_token":"x","token_type":"Bearer"}"#)
        })
        .await;
        let (as_, _) = moving_as(&f, format!("{}/token", token.origin)).await;
        let client = client_of(&quick_settings(&f, &as_.origin, 3));
        let err = client.get(f.fed.data_url()).send().await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::TokenUnreachable { tls: true, .. }),
            "{version:?}: {msg}"
        );
        assert!(
            msg.contains("the server refused this client's certificate")
                && msg.contains("`certificate`"),
            "{version:?}: {msg}"
        );
        assert_eq!(
            token.accepted.load(Ordering::SeqCst),
            1,
            "{version:?}: {msg}"
        );
        assert_eq!(token.hits("/token"), 0, "{version:?}");
        assert_eq!(client.token_requests(), 1, "{version:?}");
        assert_eq!(
            as_.hits("/.well-known/openid-configuration"),
            1,
            "{version:?}"
        );
        assert_eq!(f.fed.counters().dp_requests, 0);
    }
}

/// The authorization server takes the connection but not the certificate as this client's (the
/// certificate of another registered client): 401 invalid_client, one token request per
/// acquisition, never a loop, and the error says to check the certificate.
#[tokio::test]
async fn a_certificate_the_authorization_server_does_not_accept_is_one_token_request() {
    let f = Fed::start(FederationConfig::default()).await;
    let other = f.fed.pki().client("consumer-b").unwrap().clone();
    let s = f.settings_with("consumer-b-cert", &other.cert_pem, &other.key_pem);
    assert_eq!(s.client_id, "fapi-dev-consumer");
    let client = client_of(&s);
    for n in 1..=3 {
        let err = client.get(f.fed.data_url()).send().await.unwrap_err();
        assert!(
            matches!(&err, Error::TokenRefused { status: 401, error, .. } if error == "invalid_client"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("that the certificate is the one registered for it"),
            "{err}"
        );
        assert_eq!(f.fed.counters().token_requests, n);
        assert_eq!(client.token_requests(), n);
    }
    assert_eq!(f.fed.counters().dp_requests, 0);
}

// ---------------------------------------------------------------------------------------------
// The interaction id echo (RES-04)
// ---------------------------------------------------------------------------------------------

/// A data provider that does not echo `x-fapi-interaction-id`: a warning the first time per
/// origin, debug after that (no log flood), and the request does not fail.
#[tokio::test]
async fn a_missing_interaction_id_echo_is_warned_once_per_origin() {
    let f = Fed::start(FederationConfig::default()).await;
    f.fed.set_dp_fault(Some(DpFault::NoInteractionIdEcho));
    let client = f.client();
    let by_ip = f.fed.data_url();
    // The same server by another name: another origin.
    let by_name = by_ip.replace("127.0.0.1", "localhost");
    for url in [&by_ip, &by_name] {
        let origin = url::Url::parse(url).unwrap().origin().ascii_serialization();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let r = client.get(url.as_str()).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(r.headers().get("x-fapi-interaction-id").is_none());
            ids.push(r.interaction_id().unwrap().to_owned());
        }
        let warned = log_lines(&["WARN", "did not echo x-fapi-interaction-id", &origin]);
        assert_eq!(warned.len(), 1, "{origin}: {warned:?}");
        assert!(warned[0].contains(&ids[0]), "{warned:?}");
        for id in &ids[1..] {
            let said = log_lines(&["did not echo x-fapi-interaction-id", id]);
            assert_eq!(said.len(), 1, "{said:?}");
            assert!(said[0].contains("DEBUG"), "{said:?}");
        }
    }
}

/// A streamed body goes out once, from the stream as it is read: it arrives whole (the data
/// provider's byte count and digest), with its `Content-Length` or chunked; a 401 `invalid_token`
/// comes back as it is, with no new token and no replay (the body is gone); a request that also
/// has a body held whole is refused before anything is sent.
#[tokio::test]
async fn a_streamed_body_is_sent_once_and_never_replayed() {
    use sha2::Digest as _;
    let f = Fed::start(FederationConfig {
        introspection_cache_ttl: Duration::ZERO,
        ..FederationConfig::default()
    })
    .await;
    let client = f.client();
    let url = url::Url::parse(&format!("{}/upload", f.fed.data_origin())).unwrap();
    let request = |method| fapi_host::FapiRequest {
        method,
        url: url.clone(),
        headers: http::HeaderMap::new(),
        body: None,
        interaction_id: None,
        timeout: None,
    };
    const CHUNKS: usize = 16;
    let chunk = bytes::Bytes::from((0..64u32 << 10).map(|i| i as u8).collect::<Vec<u8>>());
    let body = |length: Option<u64>| {
        let chunk = chunk.clone();
        let chunks = (0..CHUNKS).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        fapi_host::StreamedBody::new(futures_util::stream::iter(chunks), length)
    };
    let mut digest = sha2::Sha256::new();
    for _ in 0..CHUNKS {
        digest.update(&chunk);
    }
    let sha256: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let size = (CHUNKS * chunk.len()) as u64;
    for length in [Some(size), None] {
        let r = client
            .send_stream(request(http::Method::PUT), body(length))
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.attempts()), (200, 1), "{length:?}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["bytes"], size, "{length:?}");
        assert_eq!(v["sha256"], sha256.as_str(), "{length:?}");
    }
    f.fed.revoke_all_tokens();
    let r = client
        .send_stream(request(http::Method::PUT), body(Some(size)))
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.attempts()), (401, 1));
    assert_eq!(r.auth_problem(), Some(&AuthProblem::InvalidToken));
    let c = f.fed.counters();
    assert_eq!(
        c.token_requests, 1,
        "a new token for a body that cannot be sent again"
    );
    assert_eq!(c.uploads_whole, 2);
    let mut both = request(http::Method::POST);
    both.body = Some(bytes::Bytes::from_static(b"whole"));
    let before = f.fed.counters().dp_requests;
    let e = client.send_stream(both, body(None)).await.unwrap_err();
    assert!(e.to_string().contains("streamed body"), "{e}");
    assert_eq!(f.fed.counters().dp_requests, before);
}
