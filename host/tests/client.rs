//! The native client against the local federation: every rule of issue "Native FAPI client".
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Fed, contains, logs};
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
/// in flight, and the new token replaces the old once it arrives.
#[tokio::test]
async fn a_slow_refresh_holds_up_no_other_caller() {
    // Tokens live 8 s: the margin is 4 s (half the lifetime), so the refresh is due from 4 s.
    let f = Fed::start(FederationConfig {
        token_ttl: Duration::from_secs(8),
        ..FederationConfig::default()
    })
    .await;
    let client = f.client();
    let old = client.danger_reveal_token().await.unwrap();
    let t0 = Instant::now();
    f.fed
        .set_as_fault(Some(AsFault::SlowToken(Duration::from_millis(1500))));
    tokio::time::sleep_until((t0 + Duration::from_millis(4200)).into()).await;
    let before = f.fed.counters();
    let request = |client: &FapiClient| common::timed_get(client, f.fed.data_url());
    let refreshing = request(&client);
    // While the token request is in flight, for longer than the pause before another would be due.
    let mut others = 0;
    while t0.elapsed() < Duration::from_millis(5500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, took) = request(&client).await.unwrap();
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(700), "held up {took:?}");
        others += 1;
    }
    let (status, took) = refreshing.await.unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(others >= 8, "{others}");
    assert_eq!(
        f.fed.counters().token_requests,
        before.token_requests + 1,
        "one token request for all callers"
    );
    let new = client.danger_reveal_token().await.unwrap();
    assert_ne!(new.as_str(), old.as_str(), "the new token is in use");
}
