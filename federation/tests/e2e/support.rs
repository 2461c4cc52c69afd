//! Helpers shared by the end-to-end tests.

use std::time::Duration;

use fapi_federation::{ClientIdentity, Federation, FederationConfig, Pki};
use reqwest::StatusCode;
use serde_json::Value;

pub async fn start(cfg: FederationConfig) -> Federation {
    Federation::start(Pki::generate().expect("pki"), cfg)
        .await
        .expect("federation starts")
}

pub async fn start_default() -> Federation {
    start(FederationConfig::default()).await
}

pub fn with_faults() -> FederationConfig {
    FederationConfig {
        faults_enabled: true,
        ..FederationConfig::default()
    }
}

pub fn id<'a>(fed: &'a Federation, name: &str) -> &'a ClientIdentity {
    fed.pki().client(name).expect("registered client")
}

pub fn http(fed: &Federation, who: Option<&str>) -> reqwest::Client {
    fed.pki()
        .http_client(who.map(|n| id(fed, n)))
        .expect("http client")
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace(' ', "%20").replace(':', "%3A")))
        .collect::<Vec<_>>()
        .join("&")
}

pub async fn post_form(
    client: &reqwest::Client,
    url: &str,
    pairs: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let resp = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A token for registered client `who`, requested at the mTLS token endpoint.
pub async fn token_for(fed: &Federation, who: &str, scope: Option<&str>) -> (StatusCode, Value) {
    let client_id = id(fed, who).client_id.clone();
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id.as_str()),
    ];
    if let Some(s) = scope {
        pairs.push(("scope", s));
    }
    let (status, _, body) = post_form(
        &http(fed, Some(who)),
        &format!("{}/token", fed.issuer_url()),
        &pairs,
    )
    .await;
    (status, body)
}

pub async fn access_token(fed: &Federation, who: &str) -> String {
    let (status, body) = token_for(fed, who, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

pub async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

pub fn www_auth(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

pub const SHORT: Duration = Duration::from_millis(100);

pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let bytes = get(client, url, None).await.bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("json body")
}
