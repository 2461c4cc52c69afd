//! The data provider's side of token validation (Open Energy "Request validation"): it introspects
//! bearer tokens at the AS over mTLS, caches the answers briefly, and checks `active`, `exp`, `iat`,
//! `cnf.x5t#S256` and the scope. Errors map to RFC 6750 responses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::Error;
use crate::identity::thumbprint;
use crate::state::{CachedIntrospection, Shared, now_secs, token_key, token_label};

/// The scope every data provider resource requires.
pub(crate) const REQUIRED_SCOPE: &str = "consumption:read";
/// Allowed clock skew for `iat` in the future.
const IAT_SKEW_SECS: u64 = 10;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denial {
    /// No client certificate or no credentials at all: bare 401.
    NoCredentials,
    /// 400 `invalid_request`.
    InvalidRequest(&'static str),
    /// 401 `invalid_token`.
    InvalidToken(&'static str),
    /// 403 `insufficient_scope`.
    InsufficientScope,
    /// The AS could not be asked: 503.
    Unavailable,
    /// RFC 9449 section 9: the proof lacks the current nonce: 401 `use_dpop_nonce`.
    UseDpopNonce,
    /// RFC 9449 section 7.1: the DPoP proof is refused: 401 `invalid_dpop_proof`.
    InvalidDpopProof(String),
    /// RFC 9449 section 7.2: a DPoP-bound token sent with the Bearer scheme: 401 `invalid_token`
    /// with a DPoP challenge (checklist DPOP-04).
    DpopBoundAsBearer,
}

/// The `algs` of the data provider's DPoP challenges.
const DPOP_ALGS: &str = "ES256 PS256 EdDSA";

impl IntoResponse for Denial {
    fn into_response(self) -> Response {
        let (status, challenge, body) = match self {
            Denial::NoCredentials => (StatusCode::UNAUTHORIZED, "Bearer".to_owned(), Value::Null),
            Denial::InvalidRequest(d) => (
                StatusCode::BAD_REQUEST,
                format!("Bearer error=\"invalid_request\", error_description=\"{d}\""),
                json!({ "error": "invalid_request", "error_description": d }),
            ),
            Denial::InvalidToken(d) => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer error=\"invalid_token\", error_description=\"{d}\""),
                json!({ "error": "invalid_token", "error_description": d }),
            ),
            Denial::InsufficientScope => (
                StatusCode::FORBIDDEN,
                format!("Bearer error=\"insufficient_scope\", scope=\"{REQUIRED_SCOPE}\""),
                json!({ "error": "insufficient_scope", "scope": REQUIRED_SCOPE }),
            ),
            Denial::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                String::new(),
                json!({ "error": "temporarily_unavailable", "error_description": "token introspection failed" }),
            ),
            Denial::UseDpopNonce => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "DPoP error=\"use_dpop_nonce\", error_description=\"the proof must carry the DPoP-Nonce header's nonce\", algs=\"{DPOP_ALGS}\""
                ),
                json!({ "error": "use_dpop_nonce" }),
            ),
            Denial::InvalidDpopProof(why) => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "DPoP error=\"invalid_dpop_proof\", error_description=\"{why}\", algs=\"{DPOP_ALGS}\""
                ),
                json!({ "error": "invalid_dpop_proof", "error_description": why }),
            ),
            Denial::DpopBoundAsBearer => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "DPoP error=\"invalid_token\", error_description=\"the token is DPoP-bound: send it with the DPoP scheme and a proof\", algs=\"{DPOP_ALGS}\""
                ),
                json!({ "error": "invalid_token", "error_description": "the token is DPoP-bound: send it with the DPoP scheme and a proof" }),
            ),
        };
        let mut resp = if body.is_null() {
            status.into_response()
        } else {
            (status, Json(body)).into_response()
        };
        if !challenge.is_empty()
            && let Ok(v) = HeaderValue::from_str(&challenge)
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// Check an introspection answer against the presented certificate and, when the request came
/// with the DPoP scheme, the thumbprint of its proof's key (pure; OE-05, INT-02..04, MTLS-05/06,
/// DPOP-04). A token must be bound to something: the certificate (`cnf.x5t#S256`), a DPoP key
/// (`cnf.jkt`), or both; each binding it has must hold.
pub(crate) fn check_answer(
    answer: &Value,
    cert_der: &[u8],
    now: u64,
    proof_jkt: Option<&str>,
) -> Result<(), Denial> {
    match answer.get("active") {
        None => return Err(Denial::InvalidRequest("introspection answer lacks active")),
        Some(Value::Bool(true)) => {}
        Some(_) => return Err(Denial::InvalidToken("token is not active")),
    }
    match answer.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => {}
        _ => return Err(Denial::InvalidToken("token expired")),
    }
    if let Some(iat) = answer.get("iat").and_then(Value::as_u64)
        && iat > now + IAT_SKEW_SECS
    {
        return Err(Denial::InvalidToken("token issued in the future"));
    }
    let cnf = |name: &str| {
        answer
            .get("cnf")
            .and_then(|c| c.get(name))
            .and_then(Value::as_str)
    };
    let jkt = cnf("jkt");
    match (jkt, proof_jkt) {
        (Some(bound), Some(proven)) if bound == proven => {}
        (Some(_), Some(_)) => {
            return Err(Denial::InvalidToken("token is bound to another DPoP key"));
        }
        (Some(_), None) => return Err(Denial::DpopBoundAsBearer),
        (None, Some(_)) => return Err(Denial::InvalidToken("token is not DPoP-bound")),
        (None, None) => {}
    }
    match cnf("x5t#S256") {
        Some(x5t) if x5t == thumbprint(cert_der) => {}
        Some(_) => {
            return Err(Denial::InvalidToken(
                "token is bound to another certificate",
            ));
        }
        None if jkt.is_some() => {}
        None => return Err(Denial::InvalidToken("token is not certificate-bound")),
    }
    crate::consent::check_directory_url(answer, cert_der).map_err(Denial::InvalidToken)?;
    let scope = answer.get("scope").and_then(Value::as_str).unwrap_or("");
    // The ib1 licence grants the same data.
    if !scope
        .split_ascii_whitespace()
        .any(|s| s == REQUIRED_SCOPE || s == crate::consent::LICENCE)
    {
        return Err(Denial::InsufficientScope);
    }
    Ok(())
}

/// Introspects tokens at the AS's mTLS introspection endpoint as the provider client.
#[derive(Debug)]
pub(crate) struct Introspector {
    pub issuer: String,
    pub http: reqwest::Client,
    pub client_id: String,
    pub endpoint: OnceCell<String>,
    pub cache_ttl: Duration,
    pub shared: Arc<Shared>,
}

impl Introspector {
    /// The introspection endpoint found by discovery (the mTLS alias when present), looked up once.
    pub(crate) async fn endpoint(&self) -> Result<&str, Error> {
        self.endpoint
            .get_or_try_init(|| async {
                let fail = |detail: String| Error::Discovery {
                    issuer: self.issuer.clone(),
                    detail,
                };
                // The OpenID location, or on its 404 the RFC 8414 one (an issuer with a path:
                // `/.well-known/oauth-authorization-server` between the origin and the path).
                let get = |url: String| async move {
                    self.http
                        .get(url)
                        .send()
                        .await
                        .map_err(|e| fail(e.without_url().to_string()))
                };
                let mut resp =
                    get(format!("{}/.well-known/openid-configuration", self.issuer)).await?;
                if resp.status() == StatusCode::NOT_FOUND {
                    resp = get(oauth_metadata_url(&self.issuer)).await?;
                }
                let doc: Value = resp
                    .error_for_status()
                    .map_err(|e| fail(e.without_url().to_string()))?
                    .bytes()
                    .await
                    .map_err(|e| fail(e.without_url().to_string()))
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| fail(e.to_string())))?;
                if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
                    return Err(fail("issuer in the metadata differs".into()));
                }
                doc.get("mtls_endpoint_aliases")
                    .and_then(|a| a.get("introspection_endpoint"))
                    .or_else(|| doc.get("introspection_endpoint"))
                    .and_then(Value::as_str)
                    .filter(|u| u.starts_with("https://"))
                    .map(str::to_owned)
                    .ok_or_else(|| fail("no https introspection_endpoint".into()))
            })
            .await
            .map(String::as_str)
    }

    /// The introspection answer for `token`, from the cache when fresh (at most `cache_ttl`, never
    /// past the token's `exp`).
    pub(crate) async fn introspect(&self, token: &str) -> Result<Value, Error> {
        let key = token_key(token);
        let now = Instant::now();
        if let Ok(cache) = self.shared.introspection_cache.lock()
            && let Some(hit) = cache.get(&key)
            && hit.until > now
        {
            return Ok(hit.body.clone());
        }
        let endpoint = self.endpoint().await?;
        let fail = |detail: String| Error::Discovery {
            issuer: self.issuer.clone(),
            detail,
        };
        let resp = self
            .http
            .post(endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("token", token),
                ("client_id", &self.client_id),
            ]))
            .send()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("introspection answered {}", resp.status())));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))?;
        tracing::debug!(token = %token_label(token), active = %body["active"], "introspected");
        let mut life = self.cache_ttl;
        if let Some(exp) = body.get("exp").and_then(Value::as_u64) {
            life = life.min(Duration::from_secs(exp.saturating_sub(now_secs())));
        }
        if let Ok(mut cache) = self.shared.introspection_cache.lock() {
            if cache.len() > 50_000 {
                cache.retain(|_, v| v.until > now);
            }
            cache.insert(
                key,
                CachedIntrospection {
                    body: body.clone(),
                    until: now + life,
                },
            );
        }
        Ok(body)
    }
}

/// The RFC 8414 section 3 metadata URL of an issuer: `/.well-known/oauth-authorization-server`
/// inserted between its origin and its path (`https://h/accounts` publishes at
/// `https://h/.well-known/oauth-authorization-server/accounts`).
pub(crate) fn oauth_metadata_url(issuer: &str) -> String {
    let issuer = issuer.trim_end_matches('/');
    let rest = issuer.strip_prefix("https://").unwrap_or(issuer);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("https://{authority}/.well-known/oauth-authorization-server{path}")
}

/// An `application/x-www-form-urlencoded` body.
pub(crate) fn form_body(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_8414_location_goes_between_the_origin_and_the_path() {
        assert_eq!(
            oauth_metadata_url("https://127.0.0.1:8443/accounts"),
            "https://127.0.0.1:8443/.well-known/oauth-authorization-server/accounts"
        );
        assert_eq!(
            oauth_metadata_url("https://h.example/a/b/"),
            "https://h.example/.well-known/oauth-authorization-server/a/b"
        );
        assert_eq!(
            oauth_metadata_url("https://h.example"),
            "https://h.example/.well-known/oauth-authorization-server"
        );
    }

    fn good(cert: &[u8]) -> Value {
        json!({ "active": true, "exp": 2000, "iat": 1000, "scope": "consumption:read x",
                "cnf": { "x5t#S256": thumbprint(cert) } })
    }

    #[test]
    fn answer_checks_follow_open_energy_rules() {
        let cert = b"cert";
        assert_eq!(check_answer(&good(cert), cert, 1500, None), Ok(()));
        let mut a = good(cert);
        a.as_object_mut().map(|o| o.remove("active"));
        assert!(matches!(
            check_answer(&a, cert, 1500, None),
            Err(Denial::InvalidRequest(_))
        ));
        for active in [json!(false), json!("true"), json!(1)] {
            let mut a = good(cert);
            a["active"] = active;
            assert!(matches!(
                check_answer(&a, cert, 1500, None),
                Err(Denial::InvalidToken(_))
            ));
        }
        assert!(matches!(
            check_answer(&good(cert), cert, 2000, None),
            Err(Denial::InvalidToken(_))
        ));
        assert!(matches!(
            check_answer(&good(cert), b"other", 1500, None),
            Err(Denial::InvalidToken(_))
        ));
        let mut a = good(cert);
        a["iat"] = json!(1511);
        assert!(matches!(
            check_answer(&a, cert, 1500, None),
            Err(Denial::InvalidToken(_))
        ));
        a["iat"] = json!(1510);
        assert_eq!(check_answer(&a, cert, 1500, None), Ok(()));
        let mut a = good(cert);
        a.as_object_mut().map(|o| o.remove("cnf"));
        assert!(matches!(
            check_answer(&a, cert, 1500, None),
            Err(Denial::InvalidToken(_))
        ));
        let mut a = good(cert);
        a["scope"] = json!("consumption:readx directory:software");
        assert_eq!(
            check_answer(&a, cert, 1500, None),
            Err(Denial::InsufficientScope)
        );
    }

    /// DPOP-04: a DPoP-bound token needs the DPoP scheme and a proof of its key; a proof does not
    /// make a token that is not DPoP-bound acceptable.
    #[test]
    fn dpop_bindings_are_checked() {
        let cert = b"cert";
        let mut a = good(cert);
        a["cnf"]["jkt"] = json!("K1");
        assert_eq!(check_answer(&a, cert, 1500, Some("K1")), Ok(()));
        assert_eq!(
            check_answer(&a, cert, 1500, None),
            Err(Denial::DpopBoundAsBearer)
        );
        assert!(matches!(
            check_answer(&a, cert, 1500, Some("K2")),
            Err(Denial::InvalidToken(_))
        ));
        assert!(matches!(
            check_answer(&good(cert), cert, 1500, Some("K1")),
            Err(Denial::InvalidToken(_))
        ));
        // Bound to the key alone (an external issuer without certificate binding).
        a["cnf"] = json!({ "jkt": "K1" });
        assert_eq!(check_answer(&a, cert, 1500, Some("K1")), Ok(()));
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_body(&[("a b", "c/d+e"), ("x", "y")]),
            "a+b=c%2Fd%2Be&x=y"
        );
    }
}
