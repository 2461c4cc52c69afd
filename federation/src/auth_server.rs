//! The authorization server: OIDC discovery, `client_credentials` with RFC 8705 `tls_client_auth`
//! (or RFC 7523 `private_key_jwt` over mTLS, [`crate::assertion`]) and certificate-bound opaque
//! tokens, RFC 7662 introspection and RFC 7009 revocation.
//!
//! One router serves two listeners with the same issuer: the plain TLS one (the top-level endpoints,
//! like the directory's) and the mTLS one (the issuer and the `mtls_endpoint_aliases`). Both ask
//! for a client certificate and accept a connection without one: the top-level token endpoint
//! authenticates a certificate too, as the seed's client (`ib1-openenergy-support`'s
//! `FAPISession`, which ignores the aliases) needs; without one it answers `invalid_client`.
//!
//! The document names an `authorization_endpoint` (that client requires the key), which answers
//! every request with `unsupported_response_type`: the default profile grants `client_credentials`
//! only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::assertion::{self, PrivateKeyJwt, SIGNING_ALGS};
use crate::dpop::{self, Refusal, Server};
use crate::faults::AsFault;
use crate::identity::{subject_dn, thumbprint};
use crate::pki::{REGISTERED, registered_dn};
use crate::state::{Shared, TokenRecord, bump, now_secs, token_key, token_label};
use crate::tls::ConnInfo;

/// Scopes advertised in discovery.
const SCOPES_SUPPORTED: [&str; 3] = ["directory:software", "consumption:read", "openid"];

/// Which of the two AS listeners a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AsListener {
    /// The top-level endpoints' listener.
    Plain,
    /// The issuer's listener (the `mtls_endpoint_aliases`).
    Mtls,
}

/// What the AS handlers share.
#[derive(Debug)]
pub(crate) struct AsState {
    /// The issuer: the mTLS listener's origin.
    pub issuer: String,
    /// The plain listener's origin.
    pub plain_origin: String,
    pub token_ttl: Duration,
    pub shared: Arc<Shared>,
    /// `Some`: the token endpoint requires `private_key_jwt` instead of `tls_client_auth`.
    pub private_key_jwt: Option<PrivateKeyJwt>,
    /// The keys (DER SubjectPublicKeyInfo) registered per client id for `private_key_jwt`.
    pub client_keys: HashMap<String, Vec<Vec<u8>>>,
}

/// The algorithms advertised and accepted for client assertions (the fault may change them).
fn signing_algs(fault: Option<&AsFault>) -> Vec<String> {
    match fault {
        Some(AsFault::SigningAlgs(list)) => list.clone(),
        _ => SIGNING_ALGS.iter().map(|a| (*a).to_owned()).collect(),
    }
}

type St = State<Arc<AsState>>;

/// The AS router for one listener.
pub(crate) fn router(state: Arc<AsState>, listener: AsListener) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(|| async { Json(json!({ "keys": [] })) }))
        .route(
            "/token",
            post(token).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                with_nonce,
            )),
        )
        .route("/introspect", post(introspect))
        .route("/revoke", post(revoke))
        .route("/authorize", get(authorize).post(authorize))
        .layer(Extension(listener))
        .with_state(state)
}

/// The discovery document, with the current fault applied.
pub(crate) fn discovery_document(st: &AsState, fault: Option<&AsFault>) -> Value {
    let swap = |url: String| match fault {
        Some(AsFault::HttpEndpoints) => url.replacen("https://", "http://", 1),
        _ => url,
    };
    let endpoints = |origin: &str| {
        json!({
            "token_endpoint": swap(format!("{origin}/token")),
            "introspection_endpoint": swap(format!("{origin}/introspect")),
            "revocation_endpoint": swap(format!("{origin}/revoke")),
        })
    };
    let auth_methods: Vec<&str> = match fault {
        Some(AsFault::NoTlsClientAuth) => vec!["private_key_jwt"],
        _ if st.private_key_jwt.is_some() => vec!["private_key_jwt"],
        _ => vec!["tls_client_auth", "private_key_jwt"],
    };
    let issuer = match fault {
        Some(AsFault::IssuerMismatch(other)) => other.clone(),
        _ => st.issuer.clone(),
    };
    let no_aliases = matches!(fault, Some(AsFault::NoAliases));
    let top_origin = if no_aliases {
        &st.issuer
    } else {
        &st.plain_origin
    };
    let mut doc = json!({
        "issuer": issuer,
        "jwks_uri": swap(format!("{}/jwks", st.plain_origin)),
        "scopes_supported": SCOPES_SUPPORTED,
        "grant_types_supported": match fault {
            Some(AsFault::GrantTypes(g)) => json!(g),
            _ => json!(["client_credentials"]),
        },
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": signing_algs(fault),
        "introspection_endpoint_auth_methods_supported": ["tls_client_auth"],
        "revocation_endpoint_auth_methods_supported": ["tls_client_auth"],
        "tls_client_certificate_bound_access_tokens": true,
        "dpop_signing_alg_values_supported": match fault {
            Some(AsFault::DpopAlgs(algs)) => json!(algs),
            _ => json!(dpop::ALGS),
        },
    });
    if let (Some(obj), Value::Object(top)) = (doc.as_object_mut(), endpoints(top_origin)) {
        obj.extend(top);
        // Browser-facing, so top-level only (RFC 8705 section 5: aliases are for mTLS calls).
        obj.insert(
            "authorization_endpoint".into(),
            json!(swap(format!("{top_origin}/authorize"))),
        );
        if !no_aliases {
            obj.insert("mtls_endpoint_aliases".into(), endpoints(&st.issuer));
        }
    }
    doc
}

async fn discovery(State(st): St) -> Json<Value> {
    bump(&st.shared.counters.discovery_requests);
    Json(discovery_document(&st, st.shared.as_fault().as_ref()))
}

/// The authorization endpoint of the default profile: no response type is supported
/// (`response_types_supported` is empty), so every request is refused without a redirect.
async fn authorize() -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "unsupported_response_type",
        "this authorization server grants client_credentials only (the consent flow is \
         `fapi-host dev --profile ib1`)",
    )
}

/// An RFC 6749 §5.2 error response.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    no_store(
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
}

fn no_store(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Form parameters, refusing a malformed body and repeated parameters (RFC 6749 §3.2) with an
/// `invalid_request` response.
pub(crate) fn params(
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Vec<(String, String)>, Box<Response>> {
    let Ok(Form(pairs)) = form else {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        )));
    };
    for (i, (name, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("parameter {name} is repeated"),
            )));
        }
    }
    Ok(pairs)
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// RFC 8705 `tls_client_auth`: the presented certificate's subject DN must equal the one registered
/// for `client_id` (or, without a `client_id`, for some registered client). Returns the client id
/// and the certificate thumbprint.
fn authenticate(conn: &ConnInfo, client_id: Option<&str>) -> Option<(String, String)> {
    let cert = conn.peer_cert.as_ref()?;
    let dn = subject_dn(cert)?;
    let id = match client_id {
        Some(id) => REGISTERED.iter().find(|(_, c, _)| *c == id)?.1,
        None => {
            REGISTERED
                .iter()
                .find(|(_, c, _)| registered_dn(c) == dn)?
                .1
        }
    };
    (registered_dn(id) == dn).then(|| (id.to_owned(), thumbprint(cert)))
}

/// Every token response carries the AS's current `DPoP-Nonce` when nonces are demanded (RFC 9449
/// section 8.2: a nonce may change in any response).
async fn with_nonce(
    State(st): St,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    if let Some(n) = st.shared.dpop.nonce(Server::As)
        && let Ok(v) = HeaderValue::from_str(&n)
    {
        resp.headers_mut().insert("dpop-nonce", v);
    }
    resp
}

/// The DPoP key a token request proves (RFC 9449 section 5): `None` without a proof (unless
/// proofs are required), the thumbprint of a proof verified; a refusal otherwise.
fn dpop_binding(
    st: &AsState,
    listener: AsListener,
    headers: &HeaderMap,
    fault: Option<&AsFault>,
) -> Result<Option<String>, Box<Response>> {
    let refuse =
        |error: &str, why: &str| Box::new(oauth_error(StatusCode::BAD_REQUEST, error, why));
    let mut proofs = headers.get_all("dpop").iter();
    let first = proofs.next();
    if proofs.next().is_some() {
        return Err(refuse("invalid_dpop_proof", "more than one DPoP header"));
    }
    let Some(value) = first else {
        if st.shared.dpop_required {
            return Err(refuse(
                "invalid_dpop_proof",
                "this client's tokens are DPoP-bound: a DPoP proof is required",
            ));
        }
        return Ok(None);
    };
    let proof = value.to_str().unwrap_or("");
    match fault {
        Some(AsFault::DpopNonceAlways) => {
            st.shared.dpop.received.record(proof);
            bump(&st.shared.dpop.counters.nonce_demands);
            let nonce = st.shared.dpop.rotate(Server::As);
            let mut resp = refuse("use_dpop_nonce", "a new DPoP nonce is required");
            if let Ok(v) = HeaderValue::from_str(&nonce) {
                resp.headers_mut().insert("dpop-nonce", v);
            }
            return Err(resp);
        }
        Some(AsFault::DpopProofRefused) => {
            st.shared.dpop.received.record(proof);
            bump(&st.shared.dpop.counters.refused);
            return Err(refuse(
                "invalid_dpop_proof",
                "the DPoP proof is refused (fault)",
            ));
        }
        _ => {}
    }
    let origin = match listener {
        AsListener::Plain => &st.plain_origin,
        AsListener::Mtls => &st.issuer,
    };
    let htu = format!("{origin}/token");
    let expected = dpop::Expected {
        htm: "POST",
        htu: &htu,
        token: None,
        now: now_secs(),
    };
    match st.shared.dpop.accept(Server::As, proof, &expected) {
        Ok(p) => Ok(Some(p.jkt)),
        Err(Refusal::UseNonce) => Err(refuse(
            "use_dpop_nonce",
            "the DPoP proof must carry the nonce of the DPoP-Nonce header",
        )),
        Err(Refusal::Invalid(why)) => Err(refuse("invalid_dpop_proof", &why)),
    }
}

async fn token(
    State(st): St,
    Extension(listener): Extension<AsListener>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let c = &st.shared.counters;
    bump(&c.token_requests);
    bump(match listener {
        AsListener::Plain => &c.token_requests_plain,
        AsListener::Mtls => &c.token_requests_mtls,
    });
    let claimed = form
        .as_ref()
        .ok()
        .and_then(|f| param(&f.0, "client_id").map(str::to_owned));
    c.bump_client(claimed.as_deref().unwrap_or("<none>"));
    // Every assertion received, faults or not (kept only when a test asked for them).
    if let Some(a) = form
        .as_ref()
        .ok()
        .and_then(|f| param(&f.0, "client_assertion"))
    {
        st.shared.assertions.record(a);
    }

    st.shared.token_gate.pass().await;
    let fault = st.shared.as_fault();
    if let Some(AsFault::SlowToken(d)) = fault {
        tokio::time::sleep(d).await;
    }
    match fault {
        Some(AsFault::TokenEndpointStatus(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = (
                status,
                "<html><body><h1>Internal error</h1><p>Something went wrong.</p></body></html>",
            )
                .into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return resp;
        }
        Some(AsFault::InvalidClient) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        Some(AsFault::MalformedJson) => {
            let mut resp =
                (StatusCode::OK, r#"{"access_token": "abc", "token_type": "#).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return resp;
        }
        _ => {}
    }

    let pairs = match params(form) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let (client_id, x5t) = if st.private_key_jwt.is_some() {
        match assertion_client(&st, listener, &conn, &headers, &pairs, fault.as_ref()) {
            Ok(v) => v,
            Err(resp) => return *resp,
        }
    } else {
        match certificate_client(&conn, &headers, &pairs) {
            Ok(v) => v,
            Err(resp) => return *resp,
        }
    };
    match param(&pairs, "grant_type") {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
    }
    let allowed: Vec<&str> = REGISTERED
        .iter()
        .find(|(_, c, _)| *c == client_id)
        .map(|(_, _, s)| s.split(' ').collect())
        .unwrap_or_default();
    let scope = match param(&pairs, "scope")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => allowed.join(" "),
        Some(requested) => {
            let mut granted: Vec<&str> = requested
                .split_ascii_whitespace()
                .filter(|s| allowed.contains(s))
                .collect();
            granted.dedup();
            if granted.is_empty() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "none of the requested scopes is allowed for this client",
                );
            }
            granted.join(" ")
        }
    };

    let jkt = match dpop_binding(&st, listener, &headers, fault.as_ref()) {
        Ok(jkt) => jkt,
        Err(resp) => return *resp,
    };

    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let iat = now_secs();
    let ttl = st.token_ttl.as_secs();
    let record = TokenRecord {
        client_id: client_id.clone(),
        scope: scope.clone(),
        iat,
        exp: iat + ttl,
        x5t,
        jkt: jkt.clone(),
        revoked: false,
        sub: None,
    };
    if let Ok(mut tokens) = st.shared.tokens.lock() {
        if tokens.len() > 100_000 {
            let now = now_secs();
            tokens.retain(|_, r| r.exp > now);
        }
        tokens.insert(token_key(&token), record);
    }
    st.shared.issued.record(&token);
    bump(&c.tokens_issued);
    tracing::debug!(client_id, token = %token_label(&token), "issued token");

    let mut body = json!({
        "access_token": token,
        "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
        "expires_in": ttl,
        "scope": scope,
    });
    match fault {
        Some(AsFault::OmitExpiresIn) => {
            if let Some(o) = body.as_object_mut() {
                o.remove("expires_in");
            }
        }
        Some(AsFault::ExpiresIn(v)) => body["expires_in"] = json!(v),
        Some(AsFault::TokenType(t)) => body["token_type"] = json!(t),
        _ => {}
    }
    no_store(StatusCode::OK, Json(body))
}

/// A refusal of the token endpoint, boxed (a `Response` is large).
type Refused = Box<Response>;

/// `tls_client_auth`: no other credential, a `client_id`, and a certificate registered for it.
/// The client id and the certificate's thumbprint.
fn certificate_client(
    conn: &ConnInfo,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<(String, String), Refused> {
    if headers.contains_key(header::AUTHORIZATION)
        || ["client_secret", "client_assertion", "client_assertion_type"]
            .iter()
            .any(|p| param(pairs, p).is_some())
    {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "only tls_client_auth is accepted: send no other client credential",
        )));
    }
    let Some(client_id) = param(pairs, "client_id") else {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id is required",
        )));
    };
    authenticate(conn, Some(client_id)).ok_or_else(|| {
        Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "no client certificate, unknown client, or certificate subject does not match the client",
        ))
    })
}

/// `private_key_jwt` ([`assertion::verify`]) over mTLS: the client id the assertion
/// authenticates, and the thumbprint of the connection's certificate, which the token is bound to.
fn assertion_client(
    st: &AsState,
    listener: AsListener,
    conn: &ConnInfo,
    headers: &HeaderMap,
    pairs: &[(String, String)],
    fault: Option<&AsFault>,
) -> Result<(String, String), Refused> {
    let refuse =
        |status, error, description: &str| Box::new(oauth_error(status, error, description));
    if headers.contains_key(header::AUTHORIZATION) || param(pairs, "client_secret").is_some() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "only private_key_jwt is accepted: send no other client credential",
        ));
    }
    let Some(cert) = conn.peer_cert.as_ref() else {
        bump(&st.shared.counters.assertions_refused);
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "mTLS is required (tokens are bound to the client certificate): use the \
             mtls_endpoint_aliases token endpoint with a client certificate",
        ));
    };
    let origin = match listener {
        AsListener::Mtls => &st.issuer,
        AsListener::Plain => &st.plain_origin,
    };
    let rules = st.private_key_jwt.clone().unwrap_or_default();
    let algs = signing_algs(fault);
    let skew = match fault {
        Some(AsFault::ClockSkew(s)) => *s,
        _ => 0,
    };
    let now = now_secs().saturating_add_signed(skew);
    let expected = assertion::Expected {
        issuer: &st.issuer,
        token_endpoint: &format!("{origin}/token"),
        rules: &rules,
        algs: &algs,
        keys: &st.client_keys,
        now,
    };
    match assertion::verify(pairs, &expected, &st.shared.seen_jtis) {
        Ok(client_id) => {
            bump(&st.shared.counters.assertions_verified);
            Ok((client_id, thumbprint(cert)))
        }
        Err(why) => {
            bump(&st.shared.counters.assertions_refused);
            tracing::debug!(reason = %why, "client assertion refused");
            let mut refused = refuse(StatusCode::UNAUTHORIZED, "invalid_client", &why);
            if skew != 0 {
                let date = std::time::UNIX_EPOCH + Duration::from_secs(now);
                if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(date)) {
                    refused.headers_mut().insert(header::DATE, v);
                }
            }
            Err(refused)
        }
    }
}

/// The RFC 7662 answer for `token`.
pub(crate) fn introspection_answer(st: &AsState, token: &str) -> Value {
    let now = now_secs();
    let record = st
        .shared
        .tokens
        .lock()
        .ok()
        .and_then(|t| t.get(&token_key(token)).cloned());
    match record {
        Some(r) if !r.revoked && r.exp > now => {
            // A DPoP token stays bound to the certificate too: it was issued over mTLS to a
            // client the certificate authenticated, and the data provider checks both.
            let mut cnf = json!({ "x5t#S256": r.x5t });
            if let Some(jkt) = &r.jkt {
                cnf["jkt"] = json!(jkt);
            }
            json!({
                "active": true,
                "scope": r.scope,
                "client_id": r.client_id,
                // The household whose consent it carries (`ib1`), else the client.
                "sub": r.sub.as_deref().unwrap_or(&r.client_id),
                "token_type": if r.jkt.is_some() { "DPoP" } else { "Bearer" },
                "exp": r.exp,
                "iat": r.iat,
                "iss": st.issuer,
                "cnf": cnf,
            })
        }
        _ => json!({ "active": false }),
    }
}

async fn introspect(
    State(st): St,
    Extension(conn): Extension<ConnInfo>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    bump(&st.shared.counters.introspection_requests);
    let pairs = match params(form) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    if authenticate(&conn, param(&pairs, "client_id")).is_none() {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "introspection requires mTLS with a registered client's certificate",
        );
    }
    let Some(token) = param(&pairs, "token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    no_store(StatusCode::OK, Json(introspection_answer(&st, token)))
}

async fn revoke(
    State(st): St,
    Extension(conn): Extension<ConnInfo>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    bump(&st.shared.counters.revocation_requests);
    let pairs = match params(form) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let Some((caller, _)) = authenticate(&conn, param(&pairs, "client_id")) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "revocation requires mTLS with a registered client's certificate",
        );
    };
    let Some(token) = param(&pairs, "token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let key = token_key(token);
    if let Ok(mut tokens) = st.shared.tokens.lock()
        && let Some(r) = tokens.get_mut(&key)
        && (r.client_id == caller || caller == "fapi-dev-provider")
    {
        r.revoked = true;
        // Same process: let the data provider see the revocation at once instead of after its cache TTL.
        if let Ok(mut cache) = st.shared.introspection_cache.lock() {
            cache.remove(&key);
        }
    }
    StatusCode::OK.into_response()
}
