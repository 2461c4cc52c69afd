//! The authorization server: discovery, token, introspection, revocation, faults.

use std::time::{Duration, SystemTime};

use fapi_federation::{AsFault, ClientSpec, FederationConfig};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn discovery_document_contents() {
    let fed = start_default().await;
    let url = format!("{}/.well-known/openid-configuration", fed.issuer_url());
    let doc: Value = get_json(&http(&fed, None), &url).await;
    let issuer = fed.issuer_url();
    assert_eq!(doc["issuer"], issuer.as_str());
    assert!(!issuer.ends_with('/'));
    let plain_token = doc["token_endpoint"].as_str().expect("token_endpoint");
    assert!(plain_token.starts_with("https://127.0.0.1:") && plain_token.ends_with("/token"));
    assert!(
        !plain_token.starts_with(&issuer),
        "top-level endpoints are on the plain listener"
    );
    for (k, path) in [
        ("token_endpoint", "/token"),
        ("introspection_endpoint", "/introspect"),
        ("revocation_endpoint", "/revoke"),
    ] {
        assert_eq!(doc["mtls_endpoint_aliases"][k], format!("{issuer}{path}"));
        assert!(doc[k].as_str().expect("endpoint").ends_with(path));
    }
    assert_eq!(
        doc["grant_types_supported"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        serde_json::json!(["tls_client_auth", "private_key_jwt"])
    );
    assert_eq!(doc["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(doc["response_types_supported"], serde_json::json!([]));
    assert_eq!(
        doc["scopes_supported"],
        serde_json::json!(["directory:software", "consumption:read", "openid"])
    );
    assert!(doc["introspection_endpoint_auth_methods_supported"].is_array());
    // An authorization endpoint (the seed's client requires the key), top-level only, refusing
    // every request: the default profile has no response type.
    let authorize = doc["authorization_endpoint"]
        .as_str()
        .expect("authorization_endpoint");
    assert!(
        authorize.ends_with("/authorize") && !authorize.starts_with(&issuer),
        "{authorize}"
    );
    assert!(doc["mtls_endpoint_aliases"]["authorization_endpoint"].is_null());
    let resp = http(&fed, None)
        .get(format!(
            "{authorize}?response_type=code&client_id=fapi-dev-consumer"
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    assert_eq!(body["error"], "unsupported_response_type");
    // The same document on the plain listener, and the JWKS.
    let plain_origin = plain_token.trim_end_matches("/token");
    let doc2: Value = get_json(
        &http(&fed, None),
        &format!("{plain_origin}/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(doc, doc2);
    let jwks: Value = get_json(&http(&fed, None), doc["jwks_uri"].as_str().expect("jwks")).await;
    assert_eq!(jwks, serde_json::json!({ "keys": [] }));
    // The data provider discovered the AS once at start.
    assert_eq!(fed.counters().discovery_requests, 3);
}

#[tokio::test]
async fn token_happy_path_is_certificate_bound() {
    let fed = start_default().await;
    let consumer = id(&fed, "consumer");
    let (status, headers, body) = post_form(
        &http(&fed, Some("consumer")),
        &format!("{}/token", fed.issuer_url()),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "fapi-dev-consumer"),
            ("scope", "consumption:read openid"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "consumption:read");
    let token = body["access_token"].as_str().expect("token");
    assert!(token.len() >= 43);
    let (status, _, intro) = post_form(
        &http(&fed, Some("provider")),
        &format!("{}/introspect", fed.issuer_url()),
        &[("token", token), ("client_id", "fapi-dev-provider")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(intro["active"], true);
    assert_eq!(intro["client_id"], "fapi-dev-consumer");
    assert_eq!(intro["iss"], fed.issuer_url().as_str());
    assert_eq!(intro["cnf"]["x5t#S256"], consumer.thumbprint().as_str());
    assert!(intro["exp"].as_u64().expect("exp") > intro["iat"].as_u64().expect("iat"));
    // Missing scope: everything allowed.
    let (_, body) = token_for(&fed, "consumer", None).await;
    assert_eq!(body["scope"], "directory:software consumption:read");
    let c = fed.counters();
    assert_eq!(
        (c.token_requests, c.token_requests_mtls, c.tokens_issued),
        (2, 2, 2)
    );
    assert_eq!(
        c.per_client_token_requests.get("fapi-dev-consumer"),
        Some(&2)
    );
    assert_eq!(c.introspection_requests, 1);
}

/// A client, its form, the expected status and `error`.
type Case<'a> = (
    reqwest::Client,
    Vec<(&'a str, &'a str)>,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn token_errors_follow_rfc6749() {
    let fed = start_default().await;
    let url = format!("{}/token", fed.issuer_url());
    let consumer = http(&fed, Some("consumer"));
    let cases: Vec<Case> = vec![
        (
            consumer.clone(),
            vec![
                ("grant_type", "password"),
                ("client_id", "fapi-dev-consumer"),
            ],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            consumer.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "fapi-dev-consumer-b"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            consumer.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "nobody"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            consumer.clone(),
            vec![("grant_type", "client_credentials")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            consumer.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "fapi-dev-consumer"),
                ("client_secret", "s"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            consumer.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "fapi-dev-consumer"),
                ("client_id", "fapi-dev-consumer"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            http(&fed, None),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "fapi-dev-consumer"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            http(&fed, Some("limited")),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "fapi-dev-limited"),
                ("scope", "consumption:read"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
    ];
    for (client, pairs, want_status, want_error) in cases {
        let (status, headers, body) = post_form(&client, &url, &pairs).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_error)),
            "{pairs:?}"
        );
        assert!(body["error_description"].is_string());
        assert_eq!(headers["cache-control"], "no-store");
    }
    // Authorization header as a second credential.
    let resp = consumer
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .basic_auth("fapi-dev-consumer", Some("x"))
        .body(form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "fapi-dev-consumer"),
        ]))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The top-level token endpoint (the plain listener) authenticates a certificate too, for
    // clients that ignore the aliases (the seed's FAPISession); without one: invalid_client.
    let doc: Value = get_json(
        &http(&fed, None),
        &format!("{}/.well-known/openid-configuration", fed.issuer_url()),
    )
    .await;
    let top_level = doc["token_endpoint"]
        .as_str()
        .expect("top-level token endpoint");
    let creds = [
        ("grant_type", "client_credentials"),
        ("client_id", "fapi-dev-consumer"),
    ];
    let (status, _, body) = post_form(&consumer, top_level, &creds).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = post_form(&http(&fed, None), top_level, &creds).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    assert_eq!(fed.counters().token_requests_plain, 2);
    // Limited without scope gets its one scope.
    let (status, body) = token_for(&fed, "limited", None).await;
    assert_eq!(
        (status, body["scope"].as_str()),
        (StatusCode::OK, Some("directory:software"))
    );
}

#[tokio::test]
async fn introspection_and_revocation_require_mtls() {
    let fed = start_default().await;
    let token = access_token(&fed, "consumer").await;
    let introspect = format!("{}/introspect", fed.issuer_url());
    let (status, _, body) = post_form(
        &http(&fed, None),
        &introspect,
        &[("token", &token), ("client_id", "fapi-dev-provider")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, _, _) = post_form(
        &http(&fed, Some("consumer")),
        &introspect,
        &[("token", &token), ("client_id", "fapi-dev-provider")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, _, body) = post_form(
        &http(&fed, Some("provider")),
        &introspect,
        &[("token", "nonsense"), ("client_id", "fapi-dev-provider")],
    )
    .await;
    assert_eq!(body, serde_json::json!({ "active": false }));

    let revoke = format!("{}/revoke", fed.issuer_url());
    let (status, _, _) = post_form(&http(&fed, None), &revoke, &[("token", &token)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = post_form(
        &http(&fed, Some("consumer")),
        &revoke,
        &[("token", &token), ("client_id", "fapi-dev-consumer")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = post_form(
        &http(&fed, Some("provider")),
        &introspect,
        &[("token", &token), ("client_id", "fapi-dev-provider")],
    )
    .await;
    assert_eq!(body, serde_json::json!({ "active": false }));
    // revoke_all
    let token = access_token(&fed, "consumer").await;
    fed.revoke_all_tokens();
    let (_, _, body) = post_form(
        &http(&fed, Some("provider")),
        &introspect,
        &[("token", &token), ("client_id", "fapi-dev-provider")],
    )
    .await;
    assert_eq!(body["active"], false);
    assert_eq!(fed.counters().revocation_requests, 2);
}

#[tokio::test]
async fn as_faults_change_discovery_and_token_responses() {
    let fed = start_default().await;
    let disco = || async {
        get_json(
            &http(&fed, None),
            &format!("{}/.well-known/openid-configuration", fed.issuer_url()),
        )
        .await
    };
    fed.set_as_fault(Some(AsFault::IssuerMismatch("https://evil.example".into())));
    assert_eq!(disco().await["issuer"], "https://evil.example");
    fed.set_as_fault(Some(AsFault::HttpEndpoints));
    let d = disco().await;
    assert!(
        d["token_endpoint"]
            .as_str()
            .expect("s")
            .starts_with("http://")
    );
    assert!(
        d["mtls_endpoint_aliases"]["token_endpoint"]
            .as_str()
            .expect("s")
            .starts_with("http://")
    );
    fed.set_as_fault(Some(AsFault::NoAliases));
    let d = disco().await;
    assert!(d.get("mtls_endpoint_aliases").is_none());
    assert_eq!(d["token_endpoint"], format!("{}/token", fed.issuer_url()));
    fed.set_as_fault(Some(AsFault::NoTlsClientAuth));
    assert_eq!(
        disco().await["token_endpoint_auth_methods_supported"],
        serde_json::json!(["private_key_jwt"])
    );

    fed.set_as_fault(Some(AsFault::OmitExpiresIn));
    assert!(
        token_for(&fed, "consumer", None)
            .await
            .1
            .get("expires_in")
            .is_none()
    );
    fed.set_as_fault(Some(AsFault::TokenType("bearer".into())));
    assert_eq!(
        token_for(&fed, "consumer", None).await.1["token_type"],
        "bearer"
    );
    fed.set_as_fault(Some(AsFault::ExpiresIn(-5)));
    assert_eq!(token_for(&fed, "consumer", None).await.1["expires_in"], -5);
    fed.set_as_fault(Some(AsFault::InvalidClient));
    assert_eq!(
        token_for(&fed, "consumer", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    fed.set_as_fault(Some(AsFault::MalformedJson));
    let (status, body) = token_for(&fed, "consumer", None).await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    fed.set_as_fault(Some(AsFault::TokenEndpointStatus(500)));
    let resp = http(&fed, Some("consumer"))
        .post(format!("{}/token", fed.issuer_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=fapi-dev-consumer")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/html")
    );
    fed.set_as_fault(Some(AsFault::SlowToken(Duration::from_millis(300))));
    let t = std::time::Instant::now();
    assert_eq!(token_for(&fed, "consumer", None).await.0, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
    fed.set_as_fault(None);
    assert_eq!(token_for(&fed, "consumer", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn issued_client_certificates() {
    let fed = start_default().await;
    let url = format!("{}/token", fed.issuer_url());
    let pairs = [
        ("grant_type", "client_credentials"),
        ("client_id", "fapi-dev-consumer"),
    ];
    // A P-384 and an Ed25519 certificate with the consumer's subject authenticate as the consumer.
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let mut spec = ClientSpec::new("fapi-dev-consumer");
        spec.algorithm = alg;
        let ident = fed.pki().issue_client(spec).expect("issue");
        assert_eq!(ident.subject_dn, "CN=fapi-dev-consumer,O=fapi-host dev");
        let client = fed.pki().http_client(Some(&ident)).expect("client");
        let (status, _, body) = post_form(&client, &url, &pairs).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Another CN is not a registered client.
    let stranger = fed
        .pki()
        .issue_client(ClientSpec::new("stranger"))
        .expect("issue");
    let client = fed.pki().http_client(Some(&stranger)).expect("client");
    let (status, _, _) = post_form(
        &client,
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "stranger"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An expired certificate fails the TLS handshake.
    let mut spec = ClientSpec::new("fapi-dev-consumer");
    spec.not_before = SystemTime::now() - Duration::from_secs(7200);
    spec.not_after = SystemTime::now() - Duration::from_secs(3600);
    let expired = fed.pki().issue_client(spec).expect("issue");
    let client = fed.pki().http_client(Some(&expired)).expect("client");
    let result = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&pairs))
        .send()
        .await;
    assert!(result.is_err() || result.is_ok_and(|r| !r.status().is_success()));
    // Server identities for TLS failure tests.
    let untrusted = fed
        .pki()
        .issue_server(&["127.0.0.1"], true)
        .expect("server");
    assert_ne!(untrusted.ca_pem, fed.pki().ca_pem());
    untrusted.server_config().expect("config");
    let wrong_name = fed
        .pki()
        .issue_server(&["wrong.example"], false)
        .expect("server");
    assert_eq!(wrong_name.ca_pem, fed.pki().ca_pem());
}

#[tokio::test]
async fn write_client_config_files() {
    let fed = start(FederationConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fed
        .write_client_config(dir.path(), "limited")
        .expect("write");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("client_id = \"fapi-dev-limited\""));
    assert!(text.contains(&format!("issuer_url = \"{}\"", fed.issuer_url())));
    assert!(text.contains("requested_scopes = \"directory:software\""));
    assert!(text.contains("private_key = \"limited.key\""));
    assert!(text.contains("certificate = \"limited.pem\""));
    assert!(text.contains("ca_bundle = \"ca.pem\""));
    assert!(text.contains(&format!("[sandbox]\nallow = [\"{}/\"]", fed.data_origin())));
    for f in ["limited.key", "limited.pem", "ca.pem"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    assert!(fed.write_client_config(dir.path(), "nobody").is_err());
}
