//! The `ib1` authorization server: RFC 8414 metadata under an issuer with a path, PAR, the consent
//! page, authorization codes with PKCE, rotating refresh tokens, revocation; each refusal as the
//! RFCs name it.

use std::time::Duration;

use base64::Engine as _;
use fapi_federation::{Federation, FederationConfig, Ib1Options, LICENCE, directory_url};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Digest as _;

use crate::support::{get, http, id, start};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// A query or form value, encoded.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn post(client: &reqwest::Client, url: &str, pairs: &[(&str, &str)]) -> (StatusCode, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let resp = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn ib1(options: Ib1Options) -> Federation {
    start(FederationConfig {
        ib1: Some(options),
        record_issued_tokens: true,
        token_ttl: Duration::from_secs(60),
        ..FederationConfig::default()
    })
    .await
}

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// PAR as `who`; the status and body.
async fn par(fed: &Federation, who: &str, scope: &str) -> (StatusCode, Value) {
    let client_id = directory_url(&id(fed, who).client_id);
    let c = challenge(VERIFIER);
    post(
        &http(fed, Some(who)),
        &format!("{}/par", fed.issuer_url()),
        &[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", "st-1"),
            ("code_challenge", &c),
            ("code_challenge_method", "S256"),
        ],
    )
    .await
}

/// The household's answer on the consent page (GET it, then POST the form); the Location.
async fn consent(fed: &Federation, request_uri: &str, decision: &str) -> String {
    let browser = http(fed, None);
    let client_id = directory_url(&id(fed, "consumer").client_id);
    let page = get(
        &browser,
        &format!(
            "{}/authorize?client_id={}&request_uri={}",
            fed.issuer_url(),
            enc(&client_id),
            enc(request_uri)
        ),
        None,
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("page");
    assert!(
        html.contains("<form method=\"post\"") && html.contains("value=\"approve\""),
        "{html}"
    );
    let resp = browser
        .post(format!("{}/authorize", fed.issuer_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "request_uri={}&decision={decision}",
            enc(request_uri)
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

fn query(location: &str, name: &str) -> Option<String> {
    let q = location.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

async fn exchange(
    fed: &Federation,
    code: &str,
    verifier: &str,
    redirect: &str,
) -> (StatusCode, Value) {
    let client_id = directory_url(&id(fed, "consumer").client_id);
    post(
        &http(fed, Some("consumer")),
        &format!("{}/token", fed.issuer_url()),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn refresh(fed: &Federation, token: &str) -> (StatusCode, Value) {
    let client_id = directory_url(&id(fed, "consumer").client_id);
    post(
        &http(fed, Some("consumer")),
        &format!("{}/token", fed.issuer_url()),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", token),
        ],
    )
    .await
}

/// A code for the consumer, approved.
async fn approved_code(fed: &Federation) -> String {
    let (status, body) = par(fed, "consumer", LICENCE).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let location = consent(fed, body["request_uri"].as_str().expect("uri"), "approve").await;
    query(&location, "code").expect("a code")
}

#[tokio::test]
async fn metadata_par_consent_code_refresh_and_revocation_ib1() {
    let fed = ib1(Ib1Options::default()).await;
    let issuer = fed.issuer_url();
    assert!(issuer.ends_with("/accounts"), "{issuer}");
    let origin = issuer.trim_end_matches("/accounts");
    let meta = crate::support::get_json(
        &http(&fed, None),
        &format!("{origin}/.well-known/oauth-authorization-server/accounts"),
    )
    .await;
    assert_eq!(meta["issuer"], issuer.as_str());
    assert_eq!(meta["require_pushed_authorization_requests"], true);
    assert_eq!(
        meta["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    for e in [
        "token_endpoint",
        "pushed_authorization_request_endpoint",
        "revocation_endpoint",
    ] {
        assert_eq!(meta[e], meta["mtls_endpoint_aliases"][e], "{e}");
    }

    // PAR: 201, a request_uri URN, 90 s.
    let (status, body) = par(&fed, "consumer", LICENCE).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let request_uri = body["request_uri"].as_str().expect("uri").to_owned();
    assert!(request_uri.starts_with("urn:ietf:params:oauth:request_uri:"));
    assert_eq!(body["expires_in"], 90);
    let location = consent(&fed, &request_uri, "approve").await;
    assert!(
        location.starts_with(&format!("{REDIRECT}?code=")),
        "{location}"
    );
    assert_eq!(query(&location, "state").as_deref(), Some("st-1"));
    assert!(query(&location, "iss").is_some());
    let code = query(&location, "code").expect("code");

    // The code, with the verifier and the redirect URI: tokens; a second time: invalid_grant.
    let (status, tokens) = exchange(&fed, &code, VERIFIER, REDIRECT).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let first = tokens["access_token"].as_str().expect("access").to_owned();
    assert_eq!(tokens["scope"], LICENCE);
    let (status, again) = exchange(&fed, &code, VERIFIER, REDIRECT).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // A replayed code ended the grant it started (RFC 6749 section 4.1.2): start another.
    let data = get(&http(&fed, Some("consumer")), &fed.data_url(), Some(&first)).await;
    assert_eq!(data.status(), StatusCode::UNAUTHORIZED);
    let code = approved_code(&fed).await;
    let (_, tokens) = exchange(&fed, &code, VERIFIER, REDIRECT).await;
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    let refresh1 = tokens["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();

    // The data provider serves the consumer's certificate, not another's.
    let data = get(
        &http(&fed, Some("consumer")),
        &fed.data_url(),
        Some(&access),
    )
    .await;
    assert_eq!(data.status(), StatusCode::OK);
    let other = get(
        &http(&fed, Some("consumer-b")),
        &fed.data_url(),
        Some(&access),
    )
    .await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);

    // Rotation: the new refresh token works, the old one is dead.
    let (status, rotated) = refresh(&fed, &refresh1).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let refresh2 = rotated["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(refresh1, refresh2);
    let (status, dead) = refresh(&fed, &refresh1).await;
    assert_eq!(
        (status, dead["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Revocation of the refresh token ends the grant: its access tokens too.
    let client_id = directory_url(&id(&fed, "consumer").client_id);
    let (status, _) = post(
        &http(&fed, Some("consumer")),
        &format!("{issuer}/revoke"),
        &[("client_id", &client_id), ("token", &refresh2)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, dead) = refresh(&fed, &refresh2).await;
    assert_eq!(dead["error"], "invalid_grant");
    let new_access = rotated["access_token"].as_str().expect("access");
    let data = get(
        &http(&fed, Some("consumer")),
        &fed.data_url(),
        Some(new_access),
    )
    .await;
    assert_eq!(data.status(), StatusCode::UNAUTHORIZED);
    let c = fed.consent_counters().expect("ib1");
    assert_eq!((c.refresh_requests, c.approved), (3, 2));
}

#[tokio::test]
async fn refusals_are_named_as_the_rfcs_name_them_ib1() {
    let fed = ib1(Ib1Options {
        request_uri_ttl: Duration::from_millis(300),
        ..Ib1Options::default()
    })
    .await;
    // A scope that is not the licence: invalid_scope. Another client's Directory URL: invalid_client.
    let (status, body) = par(&fed, "consumer", "consumption:read").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let client_id = directory_url(&id(&fed, "consumer-b").client_id);
    let (status, body) = post(
        &http(&fed, Some("consumer")),
        &format!("{}/par", fed.issuer_url()),
        &[("client_id", &client_id), ("response_type", "code")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );

    // Denied: access_denied with the state.
    let (_, body) = par(&fed, "consumer", LICENCE).await;
    let location = consent(&fed, body["request_uri"].as_str().expect("uri"), "deny").await;
    assert_eq!(query(&location, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&location, "state").as_deref(), Some("st-1"));

    // A wrong verifier, a redirect URI that differs: invalid_grant.
    let code = approved_code(&fed).await;
    let wrong = "x".repeat(43);
    let (status, body) = exchange(&fed, &code, &wrong, REDIRECT).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let code = approved_code(&fed).await;
    let (_, body) = exchange(&fed, &code, VERIFIER, "http://127.0.0.1:10/callback").await;
    assert_eq!(body["error"], "invalid_grant");

    // An expired request_uri: the consent page refuses it (invalid_request), nothing redirected.
    let (_, body) = par(&fed, "consumer", LICENCE).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let client_id = directory_url(&id(&fed, "consumer").client_id);
    let page = get(
        &http(&fed, None),
        &format!(
            "{}/authorize?client_id={}&request_uri={}",
            fed.issuer_url(),
            enc(&client_id),
            enc(body["request_uri"].as_str().expect("uri"))
        ),
        None,
    )
    .await;
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.text().await.expect("page").contains("invalid_request"));
}

#[tokio::test]
async fn an_expired_code_is_invalid_grant_ib1() {
    let fed = ib1(Ib1Options {
        code_ttl: Duration::from_millis(200),
        ..Ib1Options::default()
    })
    .await;
    let code = approved_code(&fed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = exchange(&fed, &code, VERIFIER, REDIRECT).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{body}"
    );
}
