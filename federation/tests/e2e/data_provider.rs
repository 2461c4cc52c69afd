//! The data provider: request validation, data, faults, counters, admin, external issuer.

use std::time::{Duration, Instant};

use fapi_federation::{DpFault, ExternalIssuer, FederationConfig, data};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::support::*;

#[tokio::test]
async fn data_is_served_deterministically_with_fapi_headers() {
    let fed = start_default().await;
    let token = access_token(&fed, "consumer").await;
    let client = http(&fed, Some("consumer"));
    let a = get(&client, &fed.data_url(), Some(&token)).await;
    assert_eq!(a.status(), StatusCode::OK);
    assert!(a.headers().contains_key("date"));
    let fresh = a.headers()["x-fapi-interaction-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&fresh).map(|u| u.get_version_num()),
        Ok(4)
    );
    assert!(
        a.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/csv")
    );
    let a = a.bytes().await.expect("body");
    let text = std::str::from_utf8(&a).expect("utf8");
    assert!(text.starts_with(
        "postcode,num_meters,total_consumption_kwh,mean_consumption_kwh,median_consumption_kwh\n"
    ));
    assert_eq!(text.lines().count(), 501);
    let b = client
        .get(fed.data_url())
        .bearer_auth(&token)
        .header(
            "x-fapi-interaction-id",
            "c770aef3-6784-41f7-8e0e-ff5f97bddb3a",
        )
        .send()
        .await
        .expect("send");
    assert_eq!(
        b.headers()["x-fapi-interaction-id"],
        "c770aef3-6784-41f7-8e0e-ff5f97bddb3a"
    );
    assert_eq!(b.bytes().await.expect("body"), a);
    // JSON: same rows.
    let json: Value = serde_json::from_slice(
        &get(&client, &fed.data_json_url(), Some(&token))
            .await
            .bytes()
            .await
            .expect("b"),
    )
    .expect("json");
    let rows = json.as_array().expect("array");
    assert_eq!(rows.len(), 500);
    let second_line = text.lines().nth(1).expect("row");
    assert!(second_line.starts_with(&format!("{},", rows[0]["postcode"].as_str().expect("pc"))));
    // Items, upload.
    let item: Value = serde_json::from_slice(
        &get(
            &client,
            &format!("{}/items/9999", fed.data_origin()),
            Some(&token),
        )
        .await
        .bytes()
        .await
        .expect("b"),
    )
    .expect("json");
    assert_eq!(item, data::item("9999"));
    let payload = vec![7u8; 300_000];
    let resp = client
        .post(format!("{}/upload", fed.data_origin()))
        .bearer_auth(&token)
        .body(payload.clone())
        .send()
        .await
        .expect("send");
    let up: Value = serde_json::from_slice(&resp.bytes().await.expect("b")).expect("json");
    assert_eq!(up["bytes"], 300_000);
    let hex: String = Sha256::digest(&payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(up["sha256"], hex);
}

#[tokio::test]
async fn streamed_bodies_have_exact_lengths() {
    let fed = start_default().await;
    let token = access_token(&fed, "consumer").await;
    let client = http(&fed, Some("consumer"));
    let n = 5 * data::CHUNK as u64 + 123;
    let resp = get(
        &client,
        &format!("{}/sized?bytes={n}", fed.data_origin()),
        Some(&token),
    )
    .await;
    assert_eq!(resp.content_length(), Some(n));
    let a = resp.bytes().await.expect("body");
    assert_eq!(a.len() as u64, n);
    let b = get(
        &client,
        &format!("{}/sized?bytes={n}", fed.data_origin()),
        Some(&token),
    )
    .await
    .bytes()
    .await
    .expect("body");
    assert_eq!(a, b);
    let resp = get(
        &client,
        &format!("{}?rows=20000", fed.data_url()),
        Some(&token),
    )
    .await;
    assert_eq!(resp.content_length(), Some(data::csv_len(20_000)));
    let body = resp.bytes().await.expect("body");
    assert_eq!(body, data::csv(20_000).into_bytes());
    // The default CSV is the first 500 rows of the same dataset.
    let small = get(&client, &fed.data_url(), Some(&token))
        .await
        .bytes()
        .await
        .expect("body");
    assert_eq!(small, data::csv(500).into_bytes());
}

#[tokio::test]
async fn request_validation_follows_rfc6750_and_open_energy() {
    let fed = start_default().await;
    let token = access_token(&fed, "consumer").await;
    let consumer = http(&fed, Some("consumer"));
    // No client certificate: bare 401.
    let r = get(&http(&fed, None), &fed.data_url(), Some(&token)).await;
    assert_eq!(
        (r.status(), www_auth(&r)),
        (StatusCode::UNAUTHORIZED, "Bearer".into())
    );
    assert!(r.headers().contains_key("x-fapi-interaction-id") && r.headers().contains_key("date"));
    // No token: bare 401.
    let r = get(&consumer, &fed.data_url(), None).await;
    assert_eq!(
        (r.status(), www_auth(&r)),
        (StatusCode::UNAUTHORIZED, "Bearer".into())
    );
    // Token in the query.
    let r = get(
        &consumer,
        &format!("{}?access_token={token}", fed.data_url()),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(www_auth(&r).contains("invalid_request"));
    // Two Authorization headers.
    let r = consumer
        .get(fed.data_url())
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Another scheme.
    let r = consumer
        .get(fed.data_url())
        .basic_auth("a", Some("b"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Unknown token.
    let r = get(&consumer, &fed.data_url(), Some("bm90LWEtdG9rZW4")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www_auth(&r).contains("error=\"invalid_token\""));
    // The consumer's token presented with consumer-b's certificate.
    let r = get(
        &http(&fed, Some("consumer-b")),
        &fed.data_url(),
        Some(&token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www_auth(&r).contains("error=\"invalid_token\""));
    // A token without consumption:read.
    let limited = access_token(&fed, "limited").await;
    let r = get(
        &http(&fed, Some("limited")),
        &fed.data_url(),
        Some(&limited),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        www_auth(&r),
        "Bearer error=\"insufficient_scope\", scope=\"consumption:read\""
    );
    // Still fine for the right certificate.
    assert_eq!(
        get(&consumer, &fed.data_url(), Some(&token)).await.status(),
        StatusCode::OK
    );
    // Revocation reaches the data provider.
    fed.revoke_all_tokens();
    let r = get(&consumer, &fed.data_url(), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn expired_token_is_refused() {
    let fed = start(FederationConfig {
        token_ttl: Duration::from_secs(1),
        ..FederationConfig::default()
    })
    .await;
    let token = access_token(&fed, "consumer").await;
    let consumer = http(&fed, Some("consumer"));
    assert_eq!(
        get(&consumer, &fed.data_url(), Some(&token)).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&consumer, &fed.data_url(), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www_auth(&r).contains("invalid_token"));
}

#[tokio::test]
async fn programmatic_dp_faults() {
    let fed = start_default().await;
    let token = access_token(&fed, "consumer").await;
    let c = http(&fed, Some("consumer"));
    let url = fed.data_url();

    fed.set_dp_fault(Some(DpFault::Status {
        code: 503,
        retry_after: Some(7),
    }));
    let r = get(&c, &url, Some(&token)).await;
    assert_eq!(
        (r.status(), r.headers()["retry-after"].to_str().ok()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("7"))
    );
    fed.set_dp_fault(Some(DpFault::Status {
        code: 429,
        retry_after: None,
    }));
    let r = get(&c, &url, Some(&token)).await;
    assert!(
        r.status() == StatusCode::TOO_MANY_REQUESTS && !r.headers().contains_key("retry-after")
    );

    fed.set_dp_fault(Some(DpFault::InvalidToken));
    let r = get(&c, &url, Some(&token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www_auth(&r).contains("invalid_token"));

    fed.set_dp_fault(Some(DpFault::Redirect("https://127.0.0.1:1/x".into())));
    let r = get(&c, &url, Some(&token)).await;
    assert_eq!(
        (r.status(), r.headers()["location"].to_str().ok()),
        (
            StatusCode::TEMPORARY_REDIRECT,
            Some("https://127.0.0.1:1/x")
        )
    );

    fed.set_dp_fault(Some(DpFault::NoDate));
    let r = get(&c, &url, Some(&token)).await;
    assert!(
        r.status().is_success()
            && !r.headers().contains_key("date")
            && r.headers().contains_key("x-fapi-interaction-id")
    );
    fed.set_dp_fault(Some(DpFault::NoInteractionIdEcho));
    let r = c
        .get(&url)
        .bearer_auth(&token)
        .header("x-fapi-interaction-id", "abc")
        .send()
        .await
        .expect("send");
    assert!(
        r.status().is_success()
            && r.headers().contains_key("date")
            && !r.headers().contains_key("x-fapi-interaction-id")
    );

    fed.set_dp_fault(Some(DpFault::SlowBody(Duration::from_millis(40))));
    let t = Instant::now();
    let body = get(&c, &url, Some(&token))
        .await
        .bytes()
        .await
        .expect("slow body arrives");
    assert_eq!(body, data::csv(500).into_bytes());
    let pieces = body.len().div_ceil(4096) as u32;
    assert!(
        t.elapsed() >= Duration::from_millis(40) * pieces,
        "{:?}",
        t.elapsed()
    );

    for fault in [DpFault::ResetMidBody, DpFault::TruncatedBody] {
        fed.set_dp_fault(Some(fault.clone()));
        let r = get(&c, &url, Some(&token)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.content_length(), Some(data::csv_len(500)));
        assert!(
            r.bytes().await.is_err(),
            "{fault:?}: the body must not arrive whole"
        );
    }
    fed.set_dp_fault(None);
    assert_eq!(
        get(&c, &url, Some(&token))
            .await
            .bytes()
            .await
            .expect("body"),
        data::csv(500).into_bytes()
    );
}

#[tokio::test]
async fn query_faults_only_when_enabled() {
    let fed = start_default().await;
    let token = access_token(&fed, "consumer").await;
    let c = http(&fed, Some("consumer"));
    let r = get(&c, &format!("{}?fault=503", fed.data_url()), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK, "faults are off by default");
    assert_eq!(r.bytes().await.expect("b"), data::csv(500).into_bytes());
    assert_eq!(
        get(&c, &format!("{}/echo", fed.data_origin()), Some(&token))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    let fed = start(with_faults()).await;
    let token = access_token(&fed, "consumer").await;
    let c = http(&fed, Some("consumer"));
    let once = format!(
        "{}/items/7?fault=503&fault_times=1&retry_after=1",
        fed.data_origin()
    );
    let r = get(&c, &once, Some(&token)).await;
    assert_eq!(
        (r.status(), r.headers()["retry-after"].to_str().ok()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
    );
    let r = get(&c, &once, Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("b")).expect("json");
    assert_eq!(
        v,
        data::item("7"),
        "fault parameters do not change the data"
    );
    for code in ["429", "502", "504"] {
        let r = get(
            &c,
            &format!("{}?fault={code}", fed.data_url()),
            Some(&token),
        )
        .await;
        assert_eq!(r.status().as_str(), code);
    }
    let r = get(
        &c,
        &format!("{}?fault=invalid_token", fed.data_url()),
        Some(&token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = get(
        &c,
        &format!("{}?fault=redirect", fed.data_url()),
        Some(&token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert!(
        r.headers()["location"]
            .to_str()
            .expect("loc")
            .ends_with("/elsewhere")
    );
    let r = get(
        &c,
        &format!(
            "{}?fault=redirect&location=https://x.example/",
            fed.data_url()
        ),
        Some(&token),
    )
    .await;
    assert_eq!(r.headers()["location"], "https://x.example/");
    for f in ["reset", "truncate"] {
        let r = get(
            &c,
            &format!("{}/sized?bytes=300000&fault={f}", fed.data_origin()),
            Some(&token),
        )
        .await;
        assert!(r.bytes().await.is_err(), "{f}");
    }
    let t = Instant::now();
    let r = get(
        &c,
        &format!(
            "{}/sized?bytes=10000&fault=slow&delay_ms=50",
            fed.data_origin()
        ),
        Some(&token),
    )
    .await;
    assert_eq!(r.bytes().await.expect("b").len(), 10_000);
    assert!(t.elapsed() >= Duration::from_millis(150));
    // Echo shows the headers as received.
    let r = c
        .get(format!("{}/echo", fed.data_origin()))
        .bearer_auth(&token)
        .header("x-custom", "yes")
        .send()
        .await
        .expect("send");
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("b")).expect("json");
    assert_eq!(v["x-custom"], "yes");
    assert!(
        v["authorization"]
            .as_str()
            .expect("auth")
            .starts_with("Bearer ")
    );
}

#[tokio::test]
async fn counters_and_admin_listener() {
    let fed = start_default().await;
    let token = access_token(&fed, "consumer").await;
    let c = http(&fed, Some("consumer"));
    for _ in 0..3 {
        get(&c, &fed.data_url(), Some(&token)).await;
    }
    let admin = reqwest::Client::builder()
        .tls_backend_preconfigured(fed.pki().client_tls_config(None).expect("tls"))
        .no_proxy()
        .build()
        .expect("client");
    let counters: Value = serde_json::from_slice(
        &admin
            .get(format!("{}/counters", fed.admin_url()))
            .send()
            .await
            .expect("send")
            .bytes()
            .await
            .expect("b"),
    )
    .expect("json");
    assert_eq!(counters["dp_requests"], 3);
    assert_eq!(counters["tokens_issued"], 1);
    assert_eq!(
        counters["introspection_requests"], 1,
        "the data provider caches introspection"
    );
    assert_eq!(
        counters["per_client_token_requests"]["fapi-dev-consumer"],
        1
    );
    assert_eq!(fed.counters().dp_requests, 3);

    let put = |path: &'static str, body: &'static str| {
        admin
            .put(format!("{}{path}", fed.admin_url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        put("/dp-fault", r#"{"status":{"code":502,"retry_after":null}}"#)
            .await
            .expect("send")
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(&c, &fed.data_url(), Some(&token)).await.status(),
        StatusCode::BAD_GATEWAY
    );
    admin
        .delete(format!("{}/dp-fault", fed.admin_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(
        get(&c, &fed.data_url(), Some(&token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        put("/as-fault", r#""invalid_client""#)
            .await
            .expect("send")
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        token_for(&fed, "consumer", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    admin
        .delete(format!("{}/as-fault", fed.admin_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(
        put("/as-fault", r#"{"bogus":1}"#)
            .await
            .expect("send")
            .status(),
        StatusCode::BAD_REQUEST
    );
    admin
        .post(format!("{}/revoke-all", fed.admin_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(
        get(&c, &fed.data_url(), Some(&token)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn data_provider_can_use_an_external_issuer() {
    let a = start_default().await;
    let b = start(FederationConfig {
        external_issuer: Some(ExternalIssuer {
            issuer_url: a.issuer_url(),
            ca_pem: a.pki().ca_pem().to_owned(),
            provider: id(&a, "provider").clone(),
        }),
        ..FederationConfig::default()
    })
    .await;
    assert_eq!(b.issuer_url(), a.issuer_url());
    let token = access_token(&a, "consumer").await;
    // The consumer of federation A, trusting B's CA for B's server certificate.
    let mut cas = rustls::RootCertStore::empty();
    cas.add(a.pki().ca_der()).expect("ca a");
    cas.add(b.pki().ca_der()).expect("ca b");
    let consumer = id(&a, "consumer");
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(cas)
    .with_client_auth_cert(
        vec![consumer.cert_der().expect("der")],
        consumer.key_der().expect("key"),
    )
    .expect("cfg");
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .expect("client");
    let r = get(&client, &b.data_url(), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(a.counters().introspection_requests, 1);
    assert_eq!(b.counters().dp_requests, 1);
    drop(a);
    drop(b);
    tokio::time::sleep(SHORT).await;
}
