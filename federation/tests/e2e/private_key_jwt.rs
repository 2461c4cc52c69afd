//! The token endpoint with `private_key_jwt` (RFC 7523, FAPI 2.0 section 5.3.2.1): assertions made
//! here, signed with ring by the client's certificate key, each refused for one reason or
//! accepted; checklist rows PKJ-01, PKJ-02, PKJ-04 (the server's side of them).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use fapi_federation::{AsFault, Federation, FederationConfig, JWT_BEARER, PrivateKeyJwt};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{http, id, post_form, start};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

async fn pkjwt(accept_token_endpoint_audience: bool) -> Federation {
    start(FederationConfig {
        private_key_jwt: Some(PrivateKeyJwt {
            accept_token_endpoint_audience,
            extra_keys: Vec::new(),
        }),
        record_issued_tokens: true,
        ..FederationConfig::default()
    })
    .await
}

/// A compact JWS of `header` and `claims`, signed ES256 with the key of registered client `who`.
fn sign(fed: &Federation, who: &str, header: &Value, claims: &Value) -> String {
    let key = id(fed, who).key_der().expect("key");
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        key.secret_der(),
        &rng,
    )
    .expect("a P-256 key");
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = pair.sign(&rng, input.as_bytes()).expect("signs");
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

/// Valid claims for the consumer, with a fresh jti.
fn claims(fed: &Federation) -> Value {
    let t = now();
    json!({
        "iss": "fapi-dev-consumer",
        "sub": "fapi-dev-consumer",
        "aud": fed.issuer_url(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": t,
        "exp": t + 60,
    })
}

fn es256() -> Value {
    json!({"alg": "ES256", "typ": "JWT"})
}

/// A token request over mTLS as the consumer, with these client-authentication parameters.
async fn request(fed: &Federation, extra: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("client_id", "fapi-dev-consumer"),
    ];
    pairs.extend_from_slice(extra);
    let (status, _, body) = post_form(
        &http(fed, Some("consumer")),
        &format!("{}/token", fed.issuer_url()),
        &pairs,
    )
    .await;
    (status, body)
}

async fn with_assertion(fed: &Federation, jws: &str) -> (StatusCode, Value) {
    request(
        fed,
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", jws),
        ],
    )
    .await
}

/// PKJ-01, PKJ-02: a valid assertion over mTLS gets a token bound to the connection's
/// certificate; discovery lists only private_key_jwt and PS256, ES256, EdDSA.
#[tokio::test]
async fn a_valid_assertion_gets_a_certificate_bound_token_pkj_01() {
    let fed = pkjwt(false).await;
    let jws = sign(&fed, "consumer", &es256(), &claims(&fed));
    let (status, body) = with_assertion(&fed, &jws).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().expect("a token");
    // Bound to the certificate: the provider's introspection says so.
    let (_, _, intro) = post_form(
        &http(&fed, Some("provider")),
        &format!("{}/introspect", fed.issuer_url()),
        &[("token", token), ("client_id", "fapi-dev-provider")],
    )
    .await;
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["client_id"], "fapi-dev-consumer");
    assert_eq!(intro["cnf"]["x5t#S256"], id(&fed, "consumer").thumbprint());
    let c = fed.counters();
    assert_eq!((c.assertions_verified, c.assertions_refused), (1, 0));
    assert_eq!(fed.received_assertions(), [jws]);

    let doc = crate::support::get_json(
        &http(&fed, None),
        &format!("{}/.well-known/openid-configuration", fed.issuer_url()),
    )
    .await;
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(
        doc["token_endpoint_auth_signing_alg_values_supported"],
        json!(["PS256", "ES256", "EdDSA"])
    );
}

/// PKJ-01, PKJ-02, PKJ-04: every assertion that breaks one rule is refused with `invalid_client`
/// and a description naming the rule; nothing is issued.
#[tokio::test]
async fn each_broken_rule_is_refused_pkj_02_pkj_04() {
    let fed = pkjwt(false).await;
    let token_url = format!("{}/token", fed.issuer_url());
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims(&fed);
        change(&mut c);
        c
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "aud an array",
            sign(
                &fed,
                "consumer",
                &es256(),
                &with(&|c| c["aud"] = json!([fed.issuer_url()])),
            ),
            "aud is an array",
        ),
        (
            "aud the token endpoint (FAPI 2.0)",
            sign(
                &fed,
                "consumer",
                &es256(),
                &with(&|c| c["aud"] = json!(token_url)),
            ),
            "aud is the token endpoint",
        ),
        (
            "no exp",
            sign(
                &fed,
                "consumer",
                &es256(),
                &with(&|c| {
                    c.as_object_mut().expect("object").remove("exp");
                }),
            ),
            "no exp",
        ),
        (
            "expired",
            sign(
                &fed,
                "consumer",
                &es256(),
                &with(&|c| c["exp"] = json!(now() - 1)),
            ),
            "expired",
        ),
        (
            "no jti",
            sign(
                &fed,
                "consumer",
                &es256(),
                &with(&|c| {
                    c.as_object_mut().expect("object").remove("jti");
                }),
            ),
            "no jti",
        ),
        (
            "iat 90 s in the future",
            sign(
                &fed,
                "consumer",
                &es256(),
                &with(&|c| c["iat"] = json!(now() + 90)),
            ),
            "in the future",
        ),
        (
            "sub not iss",
            sign(
                &fed,
                "consumer",
                &es256(),
                &with(&|c| c["sub"] = json!("someone")),
            ),
            "sub must equal its iss",
        ),
        (
            "signed by another client's key",
            sign(&fed, "consumer-b", &es256(), &claims(&fed)),
            "does not verify",
        ),
        (
            "alg RS256, not advertised",
            sign(&fed, "consumer", &json!({"alg": "RS256"}), &claims(&fed)),
            "RS256",
        ),
        (
            "alg none, no signature",
            format!(
                "{}.{}.",
                B64.encode(json!({"alg": "none"}).to_string()),
                B64.encode(claims(&fed).to_string())
            ),
            "\"none\"",
        ),
        ("not a JWS", "a.b.c.d.e".to_owned(), "three parts"),
    ];
    for (what, jws, says) in &cases {
        let (status, body) = with_assertion(&fed, jws).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}: {body}");
        let description = body["error_description"].as_str().expect("a description");
        assert!(description.contains(says), "{what}: {description}");
    }
    // The wrong assertion type, and none at all.
    let jws = sign(&fed, "consumer", &es256(), &claims(&fed));
    let (status, body) = request(
        &fed,
        &[
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            ),
            ("client_assertion", &jws),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains(JWT_BEARER)
    );
    let (status, body) = request(&fed, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains("requires private_key_jwt")
    );
    // Two assertions: a repeated parameter.
    let (status, body) = request(
        &fed,
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &jws),
            ("client_assertion", &jws),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_request");

    let c = fed.counters();
    assert_eq!(c.tokens_issued, 0);
    assert_eq!(c.assertions_verified, 0);
    assert_eq!(c.assertions_refused, cases.len() as u64 + 2);
}

/// PKJ-04 / TIME-01 (the server's side): an `iat` 5 s ahead is tolerated, 90 s ahead is not; a
/// jti is single-use (the replay of an accepted assertion is refused).
#[tokio::test]
async fn clock_tolerance_and_replay_pkj_04() {
    let fed = pkjwt(false).await;
    let mut ahead = claims(&fed);
    ahead["iat"] = json!(now() + 5);
    let jws = sign(&fed, "consumer", &es256(), &ahead);
    let (status, body) = with_assertion(&fed, &jws).await;
    assert_eq!(status, StatusCode::OK, "+5 s: {body}");
    let (status, body) = with_assertion(&fed, &jws).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "replay: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains("replay")
    );

    let mut far = claims(&fed);
    far["iat"] = json!(now() + 90);
    let (status, body) = with_assertion(&fed, &sign(&fed, "consumer", &es256(), &far)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "+90 s: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains("90 s in the future")
            || body["error_description"]
                .as_str()
                .expect("text")
                .contains("89 s in the future")
    );
    let c = fed.counters();
    assert_eq!(
        (c.tokens_issued, c.assertions_verified, c.assertions_refused),
        (1, 1, 2)
    );
}

/// The FAPI 1.0 rule (`accept_token_endpoint_audience`): aud = the token endpoint is accepted,
/// an array still is not; an advertised-algorithm fault refuses ES256; no mTLS, no token.
#[tokio::test]
async fn fapi1_audience_algorithm_list_and_mtls() {
    let fed = pkjwt(true).await;
    let mut c = claims(&fed);
    c["aud"] = json!(format!("{}/token", fed.issuer_url()));
    let (status, body) = with_assertion(&fed, &sign(&fed, "consumer", &es256(), &c)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut c = claims(&fed);
    c["aud"] = json!([fed.issuer_url()]);
    let (status, _) = with_assertion(&fed, &sign(&fed, "consumer", &es256(), &c)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    fed.set_as_fault(Some(AsFault::SigningAlgs(vec!["RS256".into()])));
    let (status, body) =
        with_assertion(&fed, &sign(&fed, "consumer", &es256(), &claims(&fed))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains("[\"RS256\"]")
    );
    fed.set_as_fault(None);

    // Without a client certificate (a client with no identity, at the mTLS listener's port the
    // handshake asks for one; at the plain listener none is asked for).
    let plain = crate::support::get_json(
        &http(&fed, None),
        &format!("{}/.well-known/openid-configuration", fed.issuer_url()),
    )
    .await["token_endpoint"]
        .as_str()
        .expect("the top-level token endpoint")
        .to_owned();
    let jws = sign(&fed, "consumer", &es256(), &claims(&fed));
    let (status, _, body) = post_form(
        &http(&fed, None),
        &plain,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &jws),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains("mTLS is required")
    );
    assert_eq!(fed.counters().tokens_issued, 1);
}
