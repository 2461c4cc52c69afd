//! [`FapiClient`]: protected calls that look like plain HTTP calls (the reference `FAPISession`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use rustls::ClientConfig;
use serde_json::Value;
use uuid::Uuid;

use crate::config::{ClientOptions, Overrides, SandboxSettings, Settings};
use crate::credentials::Identity;
use crate::discovery::ServerMetadata;
use crate::error::{Error, Result, Warning};
use crate::net::{AuthorizationServerAddresses, Resolver};
use crate::policy::{HeaderCaller, header_refusal, shown_url};
use crate::retry;
use crate::tls;
use crate::token::{TokenInfo, TokenManager};
use crate::www_authenticate;

/// The interaction id header (FAPI 1.0 part 1 section 6.2.2).
pub const INTERACTION_ID: &str = "x-fapi-interaction-id";

/// A FAPI client for one identity: mTLS on every connection, a certificate-bound token on every
/// request, acquired lazily and shared by all clones. Cheap to clone.
#[derive(Clone)]
pub struct FapiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Transport,
    /// The TLS configuration the clients were built over, for [`FapiClient::for_guests`].
    tls: Arc<rustls::ClientConfig>,
    /// Shared with the clients made by [`FapiClient::with_retries`]: one token cache.
    tokens: Arc<TokenManager>,
    options: ClientOptions,
    identity: Arc<Identity>,
    settings: Settings,
    missing_echo: Arc<MissingEcho>,
}

impl fmt::Debug for FapiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FapiClient")
            .field("client_id", &self.inner.settings.client_id)
            .field("issuer_url", &self.inner.settings.issuer_url)
            .field("identity", &self.inner.identity)
            .finish()
    }
}

impl FapiClient {
    /// Build a client from validated settings: loads and checks the key and certificate and
    /// builds the TLS configuration. No network traffic happens until the first request.
    pub fn from_settings(settings: &Settings) -> Result<(FapiClient, Vec<Warning>)> {
        let (identity, warnings) = Identity::load(&settings.certificate, &settings.private_key)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let config =
            tls::client_config(&identity, settings.ca_bundle.as_deref(), &settings.client)?;
        let resolver = Resolver::new(settings.client.resolve.clone());
        let http = tls::http_client_from(config.clone(), &settings.client, resolver)?;
        let tokens = TokenManager::new(
            http.clone(),
            settings.issuer_url.clone(),
            settings.client_id.clone(),
            settings.scopes(),
            identity.thumbprint().to_owned(),
            settings.client.clone(),
        );
        let client = FapiClient {
            inner: Arc::new(Inner {
                http: Transport::One(http),
                tls: Arc::new(config),
                tokens: Arc::new(tokens),
                options: settings.client.clone(),
                identity: Arc::new(identity),
                settings: settings.clone(),
                missing_echo: Arc::default(),
            }),
        };
        Ok((client, warnings))
    }

    /// This client, retrying idempotent requests `retries` times instead of `[client] retries`:
    /// the same identity, token cache and connection pool (one token for both). `fapi-host batch`
    /// builds its client with no retries, as it retries items itself, and gives its processors
    /// this one, so that their own requests are retried as `fapi-fetch` promises.
    pub fn with_retries(&self, retries: u32) -> FapiClient {
        let inner = &self.inner;
        let mut settings = inner.settings.clone();
        settings.client.retries = retries;
        FapiClient {
            inner: Arc::new(Inner {
                http: inner.http.clone(),
                tls: inner.tls.clone(),
                tokens: inner.tokens.clone(),
                options: settings.client.clone(),
                identity: inner.identity.clone(),
                settings,
                missing_echo: inner.missing_echo.clone(),
            }),
        }
    }

    /// This client as guests send through it: the same identity and token cache, but connections
    /// of its own (never one the host opened to the authorization server), one HTTP client per
    /// port in `ports`, each of whose name lookups refuses an address and port of the
    /// authorization server (`addresses`) unless the name and port are one of `shared`. A
    /// request to a port not in `ports` is refused.
    pub fn for_guests(
        &self,
        ports: &[u16],
        addresses: Arc<AuthorizationServerAddresses>,
        shared: Vec<(String, u16)>,
    ) -> Result<FapiClient> {
        let inner = &self.inner;
        let base = Resolver::new(inner.options.resolve.clone());
        let mut clients = Vec::with_capacity(ports.len());
        for &port in ports {
            let names = shared
                .iter()
                .filter(|(_, p)| *p == port)
                .map(|(n, _)| n.clone())
                .collect();
            let resolver = base.guarding(port, addresses.clone(), Arc::new(names));
            let http =
                tls::http_client_from(ClientConfig::clone(&inner.tls), &inner.options, resolver)?;
            clients.push((port, http));
        }
        Ok(FapiClient {
            inner: Arc::new(Inner {
                http: Transport::PerPort(Arc::new(clients)),
                tls: inner.tls.clone(),
                tokens: inner.tokens.clone(),
                options: inner.options.clone(),
                identity: inner.identity.clone(),
                settings: inner.settings.clone(),
                missing_echo: inner.missing_echo.clone(),
            }),
        })
    }

    /// A builder, for programs that do not use a configuration file.
    pub fn builder() -> FapiClientBuilder {
        FapiClientBuilder::default()
    }

    /// A request with any method.
    pub fn request(&self, method: Method, url: impl Into<String>) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            interaction_id: None,
        }
    }

    /// A GET request.
    pub fn get(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// A POST request.
    pub fn post(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// The settings this client was built from.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The client identity (certificate facts; never the key).
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The authorization server's metadata (discovered on first use).
    pub async fn server_metadata(&self) -> Result<ServerMetadata> {
        Ok(ServerMetadata::clone(&*self.inner.tokens.metadata().await?))
    }

    /// Discovery again, with its warnings (for diagnostics).
    pub async fn discover(&self) -> Result<(ServerMetadata, Vec<Warning>)> {
        self.inner.tokens.discover_fresh().await
    }

    /// Metadata of the current token (acquiring one if needed). There is no way to get the
    /// token itself.
    pub async fn token_info(&self) -> Result<TokenInfo> {
        Ok(self.inner.tokens.lease().await?.1)
    }

    /// The RFC 7662 introspection response for this client's own token.
    pub async fn introspect(&self) -> Result<Value> {
        self.inner.tokens.introspect().await
    }

    /// DANGEROUS: the access token itself. Anyone who has it can call the data provider as this
    /// client until it expires (with this certificate). Exists for `fapi-host token --reveal-token`.
    pub async fn danger_reveal_token(&self) -> Result<zeroize::Zeroizing<String>> {
        self.inner.tokens.danger_reveal_token().await
    }

    /// Token requests sent so far by this client (all clones).
    pub fn token_requests(&self) -> u64 {
        self.inner.tokens.token_requests()
    }

    /// Send a request: token, mTLS, interaction id, `invalid_token` replay and retries.
    pub async fn send(&self, request: FapiRequest) -> Result<FapiResponse> {
        let inner = &self.inner;
        check_url(&request.url)?;
        let url = request.url;
        check_headers(&request.headers)?;
        let interaction_id = match request.interaction_id {
            Some(id) => Some(id.to_string()),
            None if inner.options.interaction_id => Some(Uuid::new_v4().to_string()),
            None => None,
        };
        let idempotent = retry::is_idempotent(&request.method);
        let started = Instant::now();
        // A request's own timeout bounds all of it: the token, every attempt and the waits
        // between them; each attempt is also bounded by `timeout_seconds`.
        let deadline = request.timeout.map(|t| started + t);
        let within_deadline = |wait: Duration| deadline.is_none_or(|d| Instant::now() + wait < d);
        // The URL as messages and logs show it (a guest's URL may be kilobytes long).
        let what = |url: &url::Url| format!("{} {}", request.method, shown_url(url.as_str()));
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut replayed = false;
        let http = inner.http.for_url(&url)?;
        loop {
            attempts += 1;
            let lease = inner.tokens.bearer().await?;
            let mut builder = http
                .request(request.method.clone(), url.clone())
                .headers(request.headers.clone())
                .header(http::header::AUTHORIZATION, lease.bearer.header());
            if let Some(id) = &interaction_id {
                builder = builder.header(INTERACTION_ID, id.as_str());
            }
            if let Some(body) = &request.body {
                builder = builder.body(body.clone());
            }
            let req = builder
                .build()
                .map_err(|e| Error::InvalidRequest(format!("{}: {e}", what(&url))))?;
            log_request(&req, interaction_id.as_deref(), attempts);
            let timeout = match deadline {
                Some(d) => inner
                    .options
                    .timeout
                    .min(d.saturating_duration_since(Instant::now())),
                None => inner.options.timeout,
            };
            let t0 = Instant::now();
            let sent = match tokio::time::timeout(timeout, http.execute(req)).await {
                Ok(r) => r.map_err(|e| {
                    let transient = e.is_connect() || e.is_timeout() || e.is_request();
                    (Error::from_reqwest(&what(&url), e), transient)
                }),
                Err(_) => Err((
                    Error::Timeout(format!("{}: no response within {timeout:?}", what(&url))),
                    true,
                )),
            };
            let response = match sent {
                Ok(r) => r,
                Err((err, transient)) => {
                    // A TLS failure is not transient; a refused or reset connection is; a
                    // refusal by the host's own guard is final.
                    let retryable = transient
                        && idempotent
                        && retries < inner.options.retries
                        && !err.is_tls()
                        && !matches!(err, Error::Denied(_));
                    if retryable {
                        let d = retry::backoff(retries + 1, &inner.options);
                        // Only when the request's own deadline leaves room for the wait and
                        // another attempt: otherwise nothing would be retried.
                        if within_deadline(d) {
                            retries += 1;
                            tracing::warn!(url = %shown_url(url.as_str()), error = %err, ?d, "request failed; retrying");
                            tokio::time::sleep(d).await;
                            continue;
                        }
                    }
                    return Err(err);
                }
            };
            let status = response.status();
            tracing::info!(
                method = %request.method, url = %shown_url(url.as_str()), status = status.as_u16(),
                elapsed_ms = t0.elapsed().as_millis() as u64,
                interaction_id = interaction_id.as_deref().unwrap_or("-"),
                "response"
            );
            tracing::debug!(headers = %RedactedHeaders(response.headers()), "response headers");
            check_interaction_echo(
                &inner.missing_echo,
                &url,
                response.headers(),
                interaction_id.as_deref(),
            );

            if status == StatusCode::UNAUTHORIZED && !replayed {
                let challenge = www_authenticate::bearer(response.headers());
                if challenge.and_then(|c| c.error).as_deref() == Some("invalid_token") {
                    if inner.tokens.invalidate(lease.generation) {
                        tracing::info!(url = %shown_url(url.as_str()), "invalid_token: dropping the token, getting a new one, replaying once");
                        replayed = true;
                        continue;
                    }
                    tracing::warn!(
                        url = %shown_url(url.as_str()),
                        "invalid_token for a token obtained moments ago to replace a refused one: \
                         not getting another (this server may not accept the issuer's tokens)"
                    );
                }
            }
            if retry::is_retryable_status(status) && idempotent && retries < inner.options.retries {
                let hint = retry::retry_after(response.headers());
                match retry::delay_for(retries + 1, hint, &inner.options) {
                    Ok(d) => {
                        retries += 1;
                        tracing::warn!(url = %shown_url(url.as_str()), status = status.as_u16(), ?d, "retrying after");
                        drop(response);
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    // The server asked for a longer wait than the client makes: its answer
                    // (with its Retry-After) goes back to the caller as it is.
                    Err(too_long) => {
                        tracing::warn!(url = %shown_url(url.as_str()), status = status.as_u16(), "{too_long}");
                    }
                }
            }
            let problem = AuthProblem::of(status, response.headers());
            if let Some(p) = &problem {
                tracing::warn!(url = %shown_url(url.as_str()), "{p}");
            }
            return Ok(FapiResponse {
                status,
                url,
                interaction_id,
                attempts,
                elapsed: started.elapsed(),
                problem,
                inner: response,
            });
        }
    }
}

/// The HTTP clients requests go out through: one, or (for guests) one per port.
#[derive(Clone)]
enum Transport {
    One(reqwest::Client),
    PerPort(Arc<Vec<(u16, reqwest::Client)>>),
}

impl Transport {
    fn for_url(&self, url: &url::Url) -> Result<&reqwest::Client> {
        match self {
            Transport::One(c) => Ok(c),
            Transport::PerPort(clients) => {
                let port = url.port_or_known_default();
                clients
                    .iter()
                    .find(|(p, _)| Some(*p) == port)
                    .map(|(_, c)| c)
                    .ok_or_else(|| {
                        Error::Denied(format!(
                            "{}: no allow-list entry has this port",
                            shown_url(url.as_str())
                        ))
                    })
            }
        }
    }
}

/// A failure while reading a response body, after the head arrived (TLS was fine then): the
/// connection was cut, reset or stalled. Always a network error, never a TLS one, even when
/// rustls is the layer that noticed the missing close_notify.
fn body_error(url: &url::Url, e: reqwest::Error) -> Error {
    // reqwest finds a timeout anywhere in the chain (its read timeout, hyper's, an io TimedOut).
    let timeout = e.is_timeout();
    let chain = crate::error::error_chain(&e.without_url());
    if timeout {
        Error::Timeout(format!(
            "reading the body of {}: timed out: nothing arrived for the configured `timeout_seconds` ({chain})",
            shown_url(url.as_str())
        ))
    } else {
        Error::Network(format!(
            "reading the body of {}: the connection ended before the whole body arrived ({chain})",
            shown_url(url.as_str())
        ))
    }
}

/// A protected request, as given to [`FapiClient::send`].
#[derive(Clone, Debug)]
pub struct FapiRequest {
    /// Method.
    pub method: Method,
    /// Absolute https URL.
    pub url: url::Url,
    /// Extra headers (never Authorization, Proxy-Authorization or x-fapi-*).
    pub headers: HeaderMap,
    /// Body.
    pub body: Option<Bytes>,
    /// Interaction id to send instead of a fresh one.
    pub interaction_id: Option<Uuid>,
    /// Time allowed until the response head (the client's timeout applies when shorter).
    pub timeout: Option<Duration>,
}

/// Builds a [`FapiRequest`] and sends it.
#[derive(Debug)]
pub struct RequestBuilder {
    client: FapiClient,
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    interaction_id: Option<Uuid>,
}

impl RequestBuilder {
    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Use this interaction id rather than a fresh one.
    pub fn interaction_id(mut self, id: Uuid) -> Self {
        self.interaction_id = Some(id);
        self
    }

    /// Validate and send.
    pub async fn send(self) -> Result<FapiResponse> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| Error::InvalidRequest(format!("{:?} is not a URL ({e})", self.url)))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let (n, v) = parse_header(HeaderCaller::Library, name, value)?;
            headers.append(n, v);
        }
        self.client
            .send(FapiRequest {
                method: self.method,
                url,
                headers,
                body: self.body,
                interaction_id: self.interaction_id,
                timeout: None,
            })
            .await
    }
}

/// Parse one header given as text by `caller`, refusing what the host sets itself (the rules of
/// [`crate::policy::HEADER_RULES`]).
pub fn parse_header(
    caller: HeaderCaller,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue)> {
    let n = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| Error::InvalidRequest(format!("{name:?} is not a valid header name")))?;
    let v = HeaderValue::from_str(value.trim()).map_err(|_| {
        Error::InvalidRequest(format!(
            "the value of header {n} has characters a header cannot carry (CR, LF, NUL or non-ASCII)"
        ))
    })?;
    if let Some(why) = header_refusal(caller, &n) {
        return Err(Error::InvalidRequest(why));
    }
    Ok((n, v))
}

/// A library caller's headers: none the host owns (see [`crate::policy::HEADER_RULES`]).
fn check_headers(headers: &HeaderMap) -> Result<()> {
    match headers
        .keys()
        .find_map(|name| header_refusal(HeaderCaller::Library, name))
    {
        Some(why) => Err(Error::InvalidRequest(why)),
        None => Ok(()),
    }
}

fn check_url(url: &url::Url) -> Result<()> {
    crate::policy::check_scheme_and_userinfo(url).map_err(|d| Error::InvalidRequest(d.to_string()))
}

/// The origins whose responses lacked the `x-fapi-interaction-id` echo, warned about once each.
#[derive(Debug, Default)]
struct MissingEcho(std::sync::Mutex<std::collections::HashSet<String>>);

/// The origin of a URL [`check_url`] let through (https, no user information): its text up to
/// the path, without serialising it anew on every response.
fn origin_of(url: &url::Url) -> &str {
    &url[..url::Position::BeforePath]
}

/// At most this many origins are remembered: past it, a missing echo is logged at debug only.
const MISSING_ECHO_ORIGINS: usize = 1024;

impl MissingEcho {
    /// Whether this is the first missing echo from `url`'s origin (then remembered).
    fn first(&self, url: &url::Url) -> bool {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let origin = origin_of(url);
        if seen.len() >= MISSING_ECHO_ORIGINS || seen.contains(origin) {
            return false;
        }
        seen.insert(origin.to_owned())
    }
}

/// RES-04 / HDR-02: the server must echo the interaction id (FAPI 1.0 part 1 section 6.2.1-11).
/// A missing echo is the server's fault, not the request's: a warning the first time per origin
/// (a server that never echoes would otherwise flood the log), debug after that.
fn check_interaction_echo(
    missing: &MissingEcho,
    url: &url::Url,
    headers: &HeaderMap,
    sent: Option<&str>,
) {
    let echoed = headers.get(INTERACTION_ID).and_then(|v| v.to_str().ok());
    match (sent, echoed) {
        (Some(s), Some(e)) if s != e => {
            tracing::warn!(
                sent = s,
                echoed = e,
                "the server echoed another x-fapi-interaction-id"
            )
        }
        (Some(s), None) if missing.first(url) => {
            tracing::warn!(
                origin = origin_of(url),
                sent = s,
                "the server did not echo x-fapi-interaction-id (FAPI 1.0 part 1 section 6.2.1-11); \
                 not warned again for this origin"
            )
        }
        (Some(s), None) => {
            tracing::debug!(sent = s, "the server did not echo x-fapi-interaction-id")
        }
        _ => {}
    }
}

fn log_request(req: &reqwest::Request, interaction_id: Option<&str>, attempt: u32) {
    tracing::info!(
        method = %req.method(), url = %shown_url(req.url().as_str()), attempt,
        interaction_id = interaction_id.unwrap_or("-"),
        "request"
    );
    tracing::debug!(headers = %RedactedHeaders(req.headers()), "request headers");
}

/// Headers for logs: `Authorization` and other credentials are shown as `[redacted]`.
pub struct RedactedHeaders<'a>(pub &'a HeaderMap);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, value) in self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            let shown = match name.as_str() {
                "authorization" => "Bearer [redacted]",
                "proxy-authorization" | "cookie" | "set-cookie" => "[redacted]",
                _ if value.is_sensitive() => "[redacted]",
                _ => value.to_str().unwrap_or("[binary]"),
            };
            write!(f, "{name}: {shown}")?;
        }
        Ok(())
    }
}

/// What a 401 or 403 means for this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthProblem {
    /// A bare 401: the server did not get or accept the client certificate.
    ClientCertificate,
    /// 401 invalid_token even after a fresh token.
    InvalidToken,
    /// 403 insufficient_scope.
    InsufficientScope(Option<String>),
    /// 400 invalid_request.
    InvalidRequest(Option<String>),
}

impl AuthProblem {
    fn of(status: StatusCode, headers: &HeaderMap) -> Option<AuthProblem> {
        let challenge = www_authenticate::bearer(headers);
        let error = challenge.as_ref().and_then(|c| c.error.clone());
        match (status.as_u16(), error.as_deref()) {
            (401, Some("invalid_token")) => Some(AuthProblem::InvalidToken),
            (401, _) => Some(AuthProblem::ClientCertificate),
            (403, Some("insufficient_scope")) => Some(AuthProblem::InsufficientScope(
                challenge.and_then(|c| c.scope),
            )),
            (400, Some("invalid_request")) => Some(AuthProblem::InvalidRequest(
                challenge.and_then(|c| c.description),
            )),
            _ => None,
        }
    }
}

impl fmt::Display for AuthProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthProblem::ClientCertificate => f.write_str(
                "401 without an error code: the server did not accept the client certificate \
                 (is `certificate` the one registered for this client, issued by a CA the server trusts?)",
            ),
            AuthProblem::InvalidToken => f.write_str(
                "401 invalid_token even with a fresh token: the token is not accepted by this server \
                 (is it a resource server of this issuer, and is the token bound to this certificate?)",
            ),
            AuthProblem::InsufficientScope(scope) => write!(
                f,
                "403 insufficient_scope: the token lacks the scope this resource needs{}; add it to `requested_scopes` (and have it granted to the client)",
                scope.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
            ),
            AuthProblem::InvalidRequest(d) => write!(
                f,
                "400 invalid_request{}",
                d.as_ref().map(|s| format!(": {s}")).unwrap_or_default()
            ),
        }
    }
}

/// A response to a protected request. The body is not read until asked for.
#[derive(Debug)]
pub struct FapiResponse {
    status: StatusCode,
    url: url::Url,
    interaction_id: Option<String>,
    attempts: u32,
    elapsed: Duration,
    problem: Option<AuthProblem>,
    inner: reqwest::Response,
}

impl FapiResponse {
    /// Status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// Headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }
    /// Take the headers out of the response (leaving it none), for a caller that passes them on
    /// and streams the body: no copy of the map.
    pub fn take_headers(&mut self) -> HeaderMap {
        std::mem::take(self.inner.headers_mut())
    }
    /// The URL requested.
    pub fn url(&self) -> &url::Url {
        &self.url
    }
    /// The interaction id sent.
    pub fn interaction_id(&self) -> Option<&str> {
        self.interaction_id.as_deref()
    }
    /// Attempts made (1 without retries or replays).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// Time from the first attempt to this response's head.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
    /// What a 400/401/403 means, when it is an authorization problem.
    pub fn auth_problem(&self) -> Option<&AuthProblem> {
        self.problem.as_ref()
    }
    /// The next chunk of the body, or None at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        let url = &self.url;
        self.inner.chunk().await.map_err(|e| body_error(url, e))
    }
    /// The body as a stream of chunks.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes>> + Send + 'static {
        let url = self.url;
        futures_util::StreamExt::map(self.inner.bytes_stream(), move |r| {
            r.map_err(|e| body_error(&url, e))
        })
    }

    /// The whole body, up to `limit` bytes.
    pub async fn bytes_limited(mut self, limit: u64) -> Result<Bytes> {
        let too_large = |url: &url::Url| {
            Error::TooLarge(format!(
                "the body of {} is larger than {limit} bytes",
                shown_url(url.as_str())
            ))
        };
        // Most bodies arrive in one chunk: return it as it is, without copying.
        let Some(first) = self.chunk().await? else {
            return Ok(Bytes::new());
        };
        if first.len() as u64 > limit {
            return Err(too_large(&self.url));
        }
        let Some(second) = self.chunk().await? else {
            return Ok(first);
        };
        let mut out = bytes::BytesMut::from(&first[..]);
        let mut next = Some(second);
        while let Some(chunk) = next {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(too_large(&self.url));
            }
            out.extend_from_slice(&chunk);
            next = self.chunk().await?;
        }
        Ok(out.freeze())
    }
    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes> {
        self.bytes_limited(u64::MAX).await
    }
    /// The whole body as text (lossy UTF-8).
    pub async fn text(self) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }
    /// The whole body as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let url = self.url.clone();
        let b = self.bytes().await?;
        serde_json::from_slice(&b).map_err(|e| {
            Error::InvalidRequest(format!("the body of {url} is not the JSON expected ({e})"))
        })
    }
}

/// Builds a [`FapiClient`] without a configuration file.
#[derive(Debug, Default)]
pub struct FapiClientBuilder {
    overrides: Overrides,
    options: Option<ClientOptions>,
}

impl FapiClientBuilder {
    /// The OAuth client id.
    pub fn client_id(mut self, v: impl Into<String>) -> Self {
        self.overrides.client_id = Some(v.into());
        self
    }
    /// The issuer URL.
    pub fn issuer_url(mut self, v: impl Into<String>) -> Self {
        self.overrides.issuer_url = Some(v.into());
        self
    }
    /// Space-separated scopes.
    pub fn requested_scopes(mut self, v: impl Into<String>) -> Self {
        self.overrides.requested_scopes = Some(v.into());
        self
    }
    /// PEM private key file.
    pub fn private_key(mut self, v: impl Into<std::path::PathBuf>) -> Self {
        self.overrides.private_key = Some(v.into());
        self
    }
    /// PEM certificate chain file.
    pub fn certificate(mut self, v: impl Into<std::path::PathBuf>) -> Self {
        self.overrides.certificate = Some(v.into());
        self
    }
    /// Extra trust anchors.
    pub fn ca_bundle(mut self, v: impl Into<std::path::PathBuf>) -> Self {
        self.overrides.ca_bundle = Some(v.into());
        self
    }
    /// Client options.
    pub fn options(mut self, v: ClientOptions) -> Self {
        self.options = Some(v);
        self
    }
    /// Validate and build.
    pub fn build(self) -> Result<FapiClient> {
        let mut settings = Settings::from_toml("", std::path::Path::new("."), &self.overrides)?;
        settings.source = None;
        settings.sandbox = SandboxSettings::default();
        if let Some(o) = self.options {
            settings.client = o;
        }
        Ok(FapiClient::from_settings(&settings)?.0)
    }
}
