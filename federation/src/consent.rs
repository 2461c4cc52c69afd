//! The `ib1` profile's authorization server (the Icebreaker One Trust Framework): a household's
//! consent, not `client_credentials`, releases its data.
//!
//! Served on the mTLS listener under an issuer with a path (`https://127.0.0.1:PORT/accounts`):
//! - RFC 8414 metadata at `/.well-known/oauth-authorization-server/accounts` (PAR required, PKCE
//!   S256, `authorization_code` and `refresh_token`, aliases equal to the top-level endpoints);
//! - RFC 9126 pushed authorization requests over mTLS (`201`, a `request_uri` that lives 90 s);
//! - the authorization endpoint: a consent page (a real HTML form) whose POST sends the browser
//!   back to the `redirect_uri` with a code, or with `error=access_denied`;
//! - the token endpoint for `authorization_code` (PKCE verified, `redirect_uri` matched, the code
//!   single-use and short-lived) and `refresh_token` (rotating: the old one dies when the new one
//!   is issued), RFC 7009 revocation and RFC 7662 introspection.
//!
//! Clients authenticate with `tls_client_auth`: the certificate's single URI SAN is the client's
//! Directory URL, and it must equal `client_id`. Access tokens are bound to the certificate
//! (`cnf.x5t#S256`); refresh tokens to the Directory URL, so a renewed certificate keeps its
//! grants. Every code and token is kept under its SHA-256 (in clear only in the test record).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::auth_server::oauth_error;
use crate::identity::thumbprint;
use crate::pki::REGISTERED;
use crate::state::{Shared, TokenKey, TokenRecord, bump, now_secs, token_key};
use crate::tls::ConnInfo;

/// The path of the `ib1` issuer (`https://127.0.0.1:PORT/accounts`).
pub const ISSUER_PATH: &str = "/accounts";

/// The licence (a Registry licence URL) that the `ib1` authorization server grants: the one scope
/// it accepts, and one the data provider accepts for its data.
pub const LICENCE: &str = "https://registry.fapi-host.test/licence/consumption-data/2026";

/// The Directory URL of a registered client: its `ib1` client id, carried as the URI SAN of its
/// certificate.
pub fn directory_url(client_id: &str) -> String {
    format!("https://directory.fapi-host.test/member/{client_id}")
}

/// The URI subject alternative names of a certificate (none when it does not parse).
pub(crate) fn uri_sans(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// The data provider's check of an `ib1` token: when the token's `client_id` is a Directory URL,
/// the calling certificate must carry it as its URI SAN. `Err` names the refusal.
pub(crate) fn check_directory_url(answer: &Value, cert_der: &[u8]) -> Result<(), &'static str> {
    match answer.get("client_id").and_then(Value::as_str) {
        Some(id) if id.starts_with("https://") => {
            if uri_sans(cert_der) == [id] {
                Ok(())
            } else {
                Err("the token's client_id is not the Directory URL of this certificate")
            }
        }
        _ => Ok(()),
    }
}

/// [`check_directory_url`] for a data provider that serves only `ib1` tokens (an external `ib1`
/// issuer): the token must carry a `client_id`, and it must be a Directory URL.
pub(crate) fn require_directory_url(answer: &Value, cert_der: &[u8]) -> Result<(), &'static str> {
    match answer.get("client_id").and_then(Value::as_str) {
        Some(id) if id.starts_with("https://") => check_directory_url(answer, cert_der),
        _ => Err("the token's client_id is not a Directory URL (ib1)"),
    }
}

/// Options of the `ib1` authorization server ([`crate::FederationConfig::ib1`]).
#[derive(Clone, Debug)]
pub struct Ib1Options {
    /// How long an authorization code may be exchanged. Default 60 s.
    pub code_ttl: Duration,
    /// How long a pushed request's `request_uri` may be used (`expires_in`). Default 90 s.
    pub request_uri_ttl: Duration,
    /// **For tests.** The `refresh_token` grant answers after this long, so that two clients
    /// refreshing at once overlap. Default zero.
    pub refresh_delay: Duration,
}

impl Default for Ib1Options {
    fn default() -> Self {
        Ib1Options {
            code_ttl: Duration::from_secs(60),
            request_uri_ttl: Duration::from_secs(90),
            refresh_delay: Duration::ZERO,
        }
    }
}

/// Requests of the consent flow, counted ([`crate::Federation::consent_counters`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConsentCounters {
    /// Pushed authorization requests received (accepted or refused).
    pub par_requests: u64,
    /// Consent pages answered with approval.
    pub approved: u64,
    /// Consent pages answered with denial.
    pub denied: u64,
    /// `authorization_code` token requests (accepted or refused).
    pub code_exchanges: u64,
    /// `refresh_token` token requests (accepted or refused).
    pub refresh_requests: u64,
    /// Revocation requests.
    pub revocations: u64,
}

struct Pushed {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    challenge: String,
    expires: Instant,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    scope: String,
    challenge: String,
    expires: Instant,
    used: bool,
    /// The grant it started (set when exchanged), revoked when the code is replayed.
    grant: Option<u64>,
    /// The household that consented.
    household: String,
}

struct Refresh {
    client_id: String,
    scope: String,
    grant: u64,
    household: String,
    alive: bool,
}

/// Codes, pushed requests and refresh tokens, under their SHA-256 (request URIs in clear: they
/// are no credential).
#[derive(Default)]
struct Book {
    pushed: HashMap<String, Pushed>,
    codes: HashMap<TokenKey, Code>,
    refresh: HashMap<TokenKey, Refresh>,
    /// The access tokens of each grant, revoked with it.
    access: HashMap<u64, Vec<TokenKey>>,
    next_grant: u64,
}

/// What the consent handlers share.
pub(crate) struct ConsentState {
    /// `https://127.0.0.1:PORT/accounts`.
    pub issuer: String,
    pub token_ttl: Duration,
    pub options: Ib1Options,
    pub shared: Arc<Shared>,
    book: Mutex<Book>,
    counters: Mutex<ConsentCounters>,
}

impl std::fmt::Debug for ConsentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentState")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl ConsentState {
    pub(crate) fn new(
        origin: &str,
        token_ttl: Duration,
        options: Ib1Options,
        shared: Arc<Shared>,
    ) -> ConsentState {
        ConsentState {
            issuer: format!("{origin}{ISSUER_PATH}"),
            token_ttl,
            options,
            shared,
            book: Mutex::default(),
            counters: Mutex::default(),
        }
    }

    pub(crate) fn counters(&self) -> ConsentCounters {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn count(&self, f: impl FnOnce(&mut ConsentCounters)) {
        f(&mut self.counters.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn endpoint(&self, name: &str) -> String {
        format!("{}/{name}", self.issuer)
    }

    /// The RFC 8414 metadata document.
    pub(crate) fn metadata(&self) -> Value {
        let endpoints = json!({
            "token_endpoint": self.endpoint("token"),
            "pushed_authorization_request_endpoint": self.endpoint("par"),
            "revocation_endpoint": self.endpoint("revoke"),
            "introspection_endpoint": self.endpoint("introspect"),
        });
        let mut doc = json!({
            "issuer": self.issuer,
            "authorization_endpoint": self.endpoint("authorize"),
            "jwks_uri": self.endpoint("jwks"),
            "require_pushed_authorization_requests": true,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "tls_client_certificate_bound_access_tokens": true,
            "authorization_response_iss_parameter_supported": true,
            "scopes_supported": [LICENCE],
            "mtls_endpoint_aliases": endpoints.clone(),
        });
        if let (Some(d), Value::Object(e)) = (doc.as_object_mut(), endpoints) {
            d.extend(e);
        }
        doc
    }

    /// A new access token (bound to `x5t`, its `sub` the household) and refresh token for
    /// `grant`, recorded.
    fn issue(
        &self,
        book: &mut Book,
        grant: (u64, &str),
        client_id: &str,
        scope: &str,
        x5t: String,
    ) -> Value {
        let (grant, household) = grant;
        let access = random_token();
        let refresh = random_token();
        let iat = now_secs();
        let ttl = self.token_ttl.as_secs();
        if let Ok(mut tokens) = self.shared.tokens.lock() {
            tokens.insert(
                token_key(&access),
                TokenRecord {
                    client_id: client_id.to_owned(),
                    scope: scope.to_owned(),
                    iat,
                    exp: iat + ttl,
                    x5t,
                    jkt: None,
                    revoked: false,
                    sub: Some(household.to_owned()),
                },
            );
        }
        book.access
            .entry(grant)
            .or_default()
            .push(token_key(&access));
        book.refresh.insert(
            token_key(&refresh),
            Refresh {
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                grant,
                household: household.to_owned(),
                alive: true,
            },
        );
        self.shared.issued.record(&access);
        self.shared.issued.record(&refresh);
        bump(&self.shared.counters.tokens_issued);
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": scope,
            "refresh_token": refresh,
        })
    }

    /// The household withdraws every consent it gave ([`crate::Federation::withdraw_consent`]):
    /// each of its grants ends. Returns how many.
    pub(crate) fn withdraw(&self, household: &str) -> usize {
        let mut book = self.book();
        let mut grants: Vec<u64> = (book.refresh.values())
            .filter(|r| r.alive && r.household == household)
            .map(|r| r.grant)
            .collect();
        grants.sort_unstable();
        grants.dedup();
        for g in &grants {
            self.end_grant(&mut book, *g);
        }
        grants.len()
    }

    /// End a grant: its refresh tokens die and its access tokens are revoked.
    fn end_grant(&self, book: &mut Book, grant: u64) {
        book.refresh
            .values_mut()
            .filter(|r| r.grant == grant)
            .for_each(|r| r.alive = false);
        let keys = book.access.remove(&grant).unwrap_or_default();
        if let Ok(mut tokens) = self.shared.tokens.lock() {
            for k in &keys {
                if let Some(r) = tokens.get_mut(k) {
                    r.revoked = true;
                }
            }
        }
        if let Ok(mut cache) = self.shared.introspection_cache.lock() {
            keys.iter().for_each(|k| {
                cache.remove(k);
            });
        }
    }
}

type St = State<Arc<ConsentState>>;

/// The routes of the `ib1` authorization server (merged into the mTLS listener's router).
pub(crate) fn router(st: Arc<ConsentState>) -> Router {
    Router::new()
        .route(
            &format!("/.well-known/oauth-authorization-server{ISSUER_PATH}"),
            get(|State(st): St| async move { Json(st.metadata()) }),
        )
        .route(
            &format!("{ISSUER_PATH}/jwks"),
            get(|| async { Json(json!({ "keys": [] })) }),
        )
        .route(&format!("{ISSUER_PATH}/par"), post(par))
        .route(
            &format!("{ISSUER_PATH}/authorize"),
            get(consent_page).post(decide),
        )
        .route(&format!("{ISSUER_PATH}/token"), post(token))
        .route(&format!("{ISSUER_PATH}/revoke"), post(revoke))
        .route(&format!("{ISSUER_PATH}/introspect"), post(introspect))
        .with_state(st)
}

fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn no_store(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn bad(error: &str, description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, error, description)
}

/// A refusal, boxed (a `Response` is large).
type Refused = Box<Response>;

fn refused(error: &str, description: &str) -> Refused {
    Box::new(bad(error, description))
}

/// Form fields, a repeated one refused (RFC 6749 section 3.2): the authorization server's own
/// reading of a form.
fn fields(form: Result<Form<Vec<(String, String)>>, FormRejection>) -> Result<Fields, Refused> {
    crate::auth_server::params(form).map(Fields)
}

struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, name: &str) -> Result<&str, Refused> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| refused("invalid_request", &format!("{name} is required")))
    }
}

/// `tls_client_auth` the IB1 way: a certificate whose single URI SAN is `client_id`, a registered
/// Directory URL. The client id and the certificate's thumbprint.
fn authenticate(conn: &ConnInfo, f: &Fields) -> Result<(String, String), Refused> {
    let refuse = |why: &str| Box::new(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why));
    let Some(cert) = conn.peer_cert.as_ref() else {
        return Err(refuse("a client certificate is required (mTLS)"));
    };
    let Some(client_id) = f.get("client_id") else {
        return Err(refused("invalid_request", "client_id is required"));
    };
    if !REGISTERED
        .iter()
        .any(|(_, id, _)| directory_url(id) == client_id)
    {
        return Err(refuse("unknown client_id (not a registered Directory URL)"));
    }
    if uri_sans(cert) != [client_id] {
        return Err(refuse(
            "the certificate's URI SAN is not the client_id (the Directory URL)",
        ));
    }
    Ok((client_id.to_owned(), thumbprint(cert)))
}

/// A redirect URI this server accepts: `https`, or `http` on a loopback address (RFC 8252).
fn acceptable_redirect(uri: &str) -> bool {
    uri.starts_with("https://")
        || ["http://127.0.0.1:", "http://127.0.0.1/", "http://[::1]:"]
            .iter()
            .any(|p| uri.starts_with(p))
}

/// RFC 7636 section 4.1: 43 to 128 unreserved characters.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn par(
    State(st): St,
    Extension(conn): Extension<ConnInfo>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    st.count(|c| c.par_requests += 1);
    let f = match fields(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let (client_id, _) = match authenticate(&conn, &f) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let pushed = (|| {
        if f.get("request_uri").is_some() {
            return Err(refused(
                "invalid_request",
                "request_uri must not be pushed (RFC 9126 section 2.1)",
            ));
        }
        if f.require("response_type")? != "code" {
            return Err(refused(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        let redirect_uri = f.require("redirect_uri")?;
        if !acceptable_redirect(redirect_uri) {
            return Err(refused(
                "invalid_request",
                "redirect_uri must be https, or http on a loopback address",
            ));
        }
        let challenge = f.require("code_challenge")?;
        if f.get("code_challenge_method") != Some("S256") {
            return Err(refused(
                "invalid_request",
                "code_challenge_method must be S256",
            ));
        }
        let scope = f.require("scope")?;
        if scope.split_ascii_whitespace().any(|s| s != LICENCE) {
            return Err(refused(
                "invalid_scope",
                "the scope must be the licence this server grants",
            ));
        }
        Ok(Pushed {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            scope: scope.to_owned(),
            state: f.get("state").map(str::to_owned),
            challenge: challenge.to_owned(),
            expires: Instant::now() + st.options.request_uri_ttl,
        })
    })();
    let pushed = match pushed {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let request_uri = format!("urn:ietf:params:oauth:request_uri:{}", random_token());
    let mut book = st.book();
    let now = Instant::now();
    book.pushed.retain(|_, p| p.expires > now);
    book.pushed.insert(request_uri.clone(), pushed);
    no_store(
        StatusCode::CREATED,
        json!({
            "request_uri": request_uri,
            "expires_in": st.options.request_uri_ttl.as_secs(),
        }),
    )
}

/// An error page of the authorization endpoint (the browser is not sent back: the request it
/// came with is unknown).
fn error_page(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>invalid_request</title>\
             </head><body><h1>invalid_request</h1><p>{}</p></body></html>",
            escape(description)
        )),
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn consent_page(State(st): St, Query(q): Query<Vec<(String, String)>>) -> Response {
    let get = |name: &str| q.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let (Some(client_id), Some(request_uri)) = (get("client_id"), get("request_uri")) else {
        return error_page("client_id and request_uri are required (RFC 9126 section 4)");
    };
    let book = st.book();
    let Some(p) = book
        .pushed
        .get(request_uri)
        .filter(|p| p.expires > Instant::now() && p.client_id == client_id)
    else {
        return error_page(
            "the request_uri is unknown, was used, or has expired (it lives 90 s): start again \
             from the application",
        );
    };
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Share your energy data?</title></head>\n\
         <body><h1>Share your energy data?</h1>\n\
         <p><strong>{client}</strong> asks to read your energy consumption data under the licence \
         <code>{scope}</code>.</p>\n\
         <form method=\"post\" action=\"{ISSUER_PATH}/authorize\">\n\
         <input type=\"hidden\" name=\"request_uri\" value=\"{request_uri}\">\n\
         <p><label>Household <input name=\"household\" value=\"household\"></label></p>\n\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n\
         </form></body></html>\n",
        client = escape(&p.client_id),
        scope = escape(&p.scope),
        request_uri = escape(request_uri),
    ))
    .into_response()
}

async fn decide(
    State(st): St,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Ok(f) = fields(form) else {
        return error_page("the form is malformed");
    };
    let Some(request_uri) = f.get("request_uri") else {
        return error_page("request_uri is required");
    };
    let approve = match f.get("decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => return error_page("decision must be approve or deny"),
    };
    // Who consents: a household's name of 1 to 64 `A-Za-z0-9._-` (default "household"), the
    // `sub` of the tokens the consent yields, and what `/household.json` answers with.
    let household = f.get("household").unwrap_or("household").to_owned();
    if household.is_empty()
        || household.len() > 64
        || !household
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return error_page("household must be 1 to 64 of A-Za-z0-9._-");
    }
    let mut book = st.book();
    // Single use: taken out whatever the decision.
    let Some(p) = book
        .pushed
        .remove(request_uri)
        .filter(|p| p.expires > Instant::now())
    else {
        return error_page(
            "the request_uri is unknown, was used, or has expired (it lives 90 s): start again \
             from the application",
        );
    };
    // The redirect URI's own query kept, the answer's parameters appended (RFC 6749 4.1.2).
    let Ok(mut location) = url::Url::parse(&p.redirect_uri) else {
        return error_page("the redirect_uri cannot be used");
    };
    {
        let mut query = location.query_pairs_mut();
        if approve {
            st.count(|c| c.approved += 1);
            let code = random_token();
            query.append_pair("code", &code);
            book.codes.insert(
                token_key(&code),
                Code {
                    client_id: p.client_id,
                    redirect_uri: p.redirect_uri.clone(),
                    scope: p.scope,
                    challenge: p.challenge,
                    expires: Instant::now() + st.options.code_ttl,
                    used: false,
                    grant: None,
                    household,
                },
            );
        } else {
            st.count(|c| c.denied += 1);
            query
                .append_pair("error", "access_denied")
                .append_pair("error_description", "the household declined");
        }
        if let Some(state) = &p.state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", &st.issuer);
    }
    let mut resp = StatusCode::SEE_OTHER.into_response();
    match HeaderValue::from_str(location.as_str()) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => error_page("the redirect_uri cannot be used"),
    }
}

async fn token(
    State(st): St,
    Extension(conn): Extension<ConnInfo>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    bump(&st.shared.counters.token_requests);
    let f = match fields(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    match f.get("grant_type") {
        Some("authorization_code") => st.count(|c| c.code_exchanges += 1),
        Some("refresh_token") => {
            st.count(|c| c.refresh_requests += 1);
            if !st.options.refresh_delay.is_zero() {
                tokio::time::sleep(st.options.refresh_delay).await;
            }
        }
        _ => {}
    }
    // The token endpoint failing as a whole (`set_as_fault`), as the client_credentials one does.
    if let Some(crate::faults::AsFault::TokenEndpointStatus(code)) = st.shared.as_fault() {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            status,
            Html("<html><body><h1>Internal error</h1></body></html>"),
        )
            .into_response();
    }
    let (client_id, x5t) = match authenticate(&conn, &f) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let invalid_grant = |why: &str| bad("invalid_grant", why);
    match f.get("grant_type") {
        None => bad("invalid_request", "grant_type is required"),
        Some("authorization_code") => {
            let (code, redirect_uri, verifier) = match (
                f.require("code"),
                f.require("redirect_uri"),
                f.require("code_verifier"),
            ) {
                (Ok(c), Ok(r), Ok(v)) => (c, r, v),
                (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return *e,
            };
            let mut book = st.book();
            let Some(c) = book.codes.get_mut(&token_key(code)) else {
                return invalid_grant("unknown authorization code");
            };
            if c.used {
                // RFC 6749 section 4.1.2: a replayed code ends what it granted.
                let grant = c.grant;
                if let Some(g) = grant {
                    st.end_grant(&mut book, g);
                }
                return invalid_grant("the authorization code was already used");
            }
            c.used = true;
            if c.expires <= Instant::now() {
                return invalid_grant("the authorization code has expired");
            }
            if c.client_id != client_id {
                return invalid_grant("the authorization code was issued to another client");
            }
            if c.redirect_uri != redirect_uri {
                return invalid_grant(
                    "redirect_uri does not match the one of the authorization request",
                );
            }
            if !valid_verifier(verifier) || s256(verifier) != c.challenge {
                return invalid_grant("code_verifier does not match the code_challenge (PKCE)");
            }
            let (scope, household) = (c.scope.clone(), c.household.clone());
            let grant = book.next_grant;
            book.next_grant += 1;
            if let Some(c) = book.codes.get_mut(&token_key(code)) {
                c.grant = Some(grant);
            }
            let body = st.issue(&mut book, (grant, &household), &client_id, &scope, x5t);
            no_store(StatusCode::OK, body)
        }
        Some("refresh_token") => {
            let refresh = match f.require("refresh_token") {
                Ok(r) => r,
                Err(e) => return *e,
            };
            let mut book = st.book();
            let key = token_key(refresh);
            let Some(r) = book.refresh.get_mut(&key) else {
                return invalid_grant("unknown refresh token");
            };
            if !r.alive {
                return invalid_grant("the refresh token was rotated, revoked or has ended");
            }
            if r.client_id != client_id {
                return invalid_grant("the refresh token was issued to another client");
            }
            // Rotation: the old one dies as the new one is issued.
            r.alive = false;
            let (grant, scope, household) = (r.grant, r.scope.clone(), r.household.clone());
            let body = st.issue(&mut book, (grant, &household), &client_id, &scope, x5t);
            no_store(StatusCode::OK, body)
        }
        Some(_) => bad(
            "unsupported_grant_type",
            "only authorization_code and refresh_token are supported",
        ),
    }
}

async fn revoke(
    State(st): St,
    Extension(conn): Extension<ConnInfo>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    st.count(|c| c.revocations += 1);
    bump(&st.shared.counters.revocation_requests);
    let f = match fields(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let (client_id, _) = match authenticate(&conn, &f) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let token = match f.require("token") {
        Ok(t) => t,
        Err(e) => return *e,
    };
    let key = token_key(token);
    let mut book = st.book();
    let grant = book
        .refresh
        .get(&key)
        .filter(|r| r.client_id == client_id)
        .map(|r| r.grant)
        .or_else(|| {
            book.access
                .iter()
                .find(|(_, keys)| keys.contains(&key))
                .map(|(g, _)| *g)
        });
    if let Some(g) = grant {
        st.end_grant(&mut book, g);
    }
    // RFC 7009 section 2.2: 200 whether or not the token was known.
    StatusCode::OK.into_response()
}

async fn introspect(
    State(st): St,
    Extension(conn): Extension<ConnInfo>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    bump(&st.shared.counters.introspection_requests);
    let f = match fields(form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    if let Err(r) = authenticate(&conn, &f) {
        return *r;
    }
    let token = match f.require("token") {
        Ok(t) => t,
        Err(e) => return *e,
    };
    let record = st
        .shared
        .tokens
        .lock()
        .ok()
        .and_then(|t| t.get(&token_key(token)).cloned());
    let answer = match record {
        Some(r) if !r.revoked && r.exp > now_secs() => json!({
            "active": true,
            "scope": r.scope,
            "client_id": r.client_id,
            "token_type": "Bearer",
            "exp": r.exp,
            "iat": r.iat,
            "iss": st.issuer,
            "sub": r.sub,
            "cnf": { "x5t#S256": r.x5t },
        }),
        _ => json!({ "active": false }),
    };
    no_store(StatusCode::OK, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_escape_and_redirects() {
        // RFC 7636 appendix B.
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(!valid_verifier("short"));
        assert_eq!(escape("<a href=\"x\">"), "&lt;a href=&quot;x&quot;&gt;");
        assert!(acceptable_redirect("http://127.0.0.1:8080/callback"));
        assert!(!acceptable_redirect("http://example.org/callback"));
    }

    #[test]
    fn an_ib1_only_data_provider_requires_the_certificates_directory_url() {
        let pki = crate::Pki::generate().expect("a PKI");
        let consumer = pki.client("consumer").expect("the consumer");
        let cert = consumer.cert_der().expect("its certificate");
        let url = directory_url(&consumer.client_id);
        let with = |id: Value| serde_json::json!({ "active": true, "client_id": id });
        // Its own Directory URL: accepted by both checks.
        assert_eq!(
            check_directory_url(&with(url.clone().into()), &cert),
            Ok(())
        );
        assert_eq!(require_directory_url(&with(url.into()), &cert), Ok(()));
        // Another member's: refused by both.
        let other = with(directory_url("someone-else").into());
        assert!(check_directory_url(&other, &cert).is_err());
        assert!(require_directory_url(&other, &cert).is_err());
        // A client id that is no URL, or none: the default profile's tokens pass the lenient
        // check only.
        for answer in [
            with("fapi-dev-consumer".into()),
            serde_json::json!({ "active": true }),
        ] {
            assert_eq!(check_directory_url(&answer, &cert), Ok(()));
            assert_eq!(
                require_directory_url(&answer, &cert),
                Err("the token's client_id is not a Directory URL (ib1)")
            );
        }
    }
}
