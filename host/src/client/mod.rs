//! [`FapiClient`]: protected calls that look like plain HTTP calls (the reference `FAPISession`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use rustls::ClientConfig;
use serde_json::Value;
use uuid::Uuid;

use crate::client_auth::ClientAuthenticator;
use crate::config::{ClientOptions, Overrides, SandboxSettings, Settings};
use crate::credentials::Identity;
use crate::discovery::ServerMetadata;
use crate::dpop::{self, Dpop};
use crate::error::{Error, Result, Warning};
use crate::grant_tokens::GrantTokens;
use crate::grants::GrantStore;
use crate::net::{AuthorizationServerAddresses, Resolver};
use crate::policy::shown_url;
use crate::retry;
use crate::tls;
use crate::token::{TokenInfo, TokenManager};
use crate::www_authenticate;

pub(crate) mod direct;
mod log;
mod request;
mod response;

pub(crate) use direct::ConnectTimeout;
pub use log::RedactedHeaders;
use log::{MissingEcho, check_interaction_echo, log_request};
pub use request::{FapiRequest, RequestBuilder, StreamedBody, parse_header};
use request::{check_headers, check_url};
use response::Received;
pub use response::{AuthProblem, FapiResponse};

/// The interaction id header (FAPI 1.0 part 1 section 6.2.2).
pub const INTERACTION_ID: &str = "x-fapi-interaction-id";

/// A FAPI client for one identity: mTLS on every connection, a certificate-bound token on every
/// request, acquired lazily and shared by all clones. Cheap to clone.
#[derive(Clone)]
pub struct FapiClient {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    http: Transport,
    /// The same connections' twins without reqwest's read timeout, for streamed request bodies
    /// ([`FapiClient::send_stream`]); a pool of their own, used by uploads only.
    upload: Transport,
    /// The TLS configuration the clients were built over (the data providers' anchors), for
    /// [`FapiClient::for_guests`].
    tls: Arc<rustls::ClientConfig>,
    /// The token manager's client: the authorization server's anchors (`[trust]
    /// authorization_server`), a pool of its own. For [`FapiClient::discovery_document`].
    auth_server: reqwest::Client,
    /// Shared with the clients made by [`FapiClient::with_retries`]: one token cache.
    tokens: Arc<TokenManager>,
    options: ClientOptions,
    identity: Arc<Identity>,
    settings: Settings,
    missing_echo: Arc<MissingEcho>,
    /// The grant whose tokens every request carries ([`FapiClient::for_grant`]), instead of the
    /// client's own `client_credentials` token.
    grant: Option<Arc<GrantTokens>>,
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
    /// builds the TLS configurations, one per class of server (`[trust]`, checklist TLS-06): the
    /// token manager's verifies the authorization server against `ca_bundle` and `[trust]
    /// authorization_server`, every other request's the server against `ca_bundle` and `[trust]
    /// data_providers` (each with the system roots when `[trust] system_roots` is on). No network
    /// traffic happens until the first request.
    pub fn from_settings(settings: &Settings) -> Result<(FapiClient, Vec<Warning>)> {
        let (identity, warnings) = Identity::from_settings(settings)?;
        let mut settings = settings.clone();
        settings.resolve_client_id(identity.uri_sans())?;
        let settings = &settings;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let configs = tls::client_configs(&identity, settings)?;
        let config = configs.data_providers;
        let resolver = Resolver::new(settings.client.resolve.clone());
        let auth_server = tls::http_client_from(
            configs.authorization_server,
            &settings.client,
            resolver.clone(),
        )?;
        let http = tls::http_client_from(config.clone(), &settings.client, resolver.clone())?;
        let upload = tls::upload_client_from(config.clone(), &settings.client, resolver)?;
        let client_auth = ClientAuthenticator::from_settings(settings, &identity)?;
        let tokens = TokenManager::new(
            auth_server.clone(),
            settings.issuer_url.clone(),
            settings.client_id.clone(),
            settings.scopes(),
            identity.thumbprint().to_owned(),
            settings.client.clone(),
            client_auth,
        )
        .with_dpop(Dpop::from_settings(&settings.auth)?)
        .grants_only(settings.profile.needs_grant());
        let client = FapiClient {
            inner: Arc::new(Inner {
                http: Transport::One(Sender::Reqwest(http)),
                upload: Transport::One(Sender::Reqwest(upload)),
                tls: Arc::new(config),
                auth_server,
                tokens: Arc::new(tokens),
                options: settings.client.clone(),
                identity: Arc::new(identity),
                settings: settings.clone(),
                missing_echo: Arc::default(),
                grant: None,
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
                upload: inner.upload.clone(),
                tls: inner.tls.clone(),
                auth_server: inner.auth_server.clone(),
                tokens: inner.tokens.clone(),
                options: settings.client.clone(),
                identity: inner.identity.clone(),
                settings,
                missing_echo: inner.missing_echo.clone(),
                grant: inner.grant.clone(),
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
        self.guarded(ports, addresses, shared, false)
    }

    /// [`FapiClient::for_guests`], its requests sent on hyper's HTTP/1.1 client over rustls
    /// directly (`direct`) or through reqwest. `fapi-host proxy` forwards on the former: the
    /// same identity, TLS configuration, name resolution, guard, timeouts and pool size, with
    /// less work per request.
    pub(crate) fn guarded(
        &self,
        ports: &[u16],
        addresses: Arc<AuthorizationServerAddresses>,
        shared: Vec<(String, u16)>,
        direct: bool,
    ) -> Result<FapiClient> {
        let inner = &self.inner;
        let base = Resolver::new(inner.options.resolve.clone());
        let mut clients = Vec::with_capacity(ports.len());
        let mut uploads = Vec::with_capacity(ports.len());
        for &port in ports {
            let names = shared
                .iter()
                .filter(|(_, p)| *p == port)
                .map(|(n, _)| n.clone())
                .collect();
            let resolver = base.guarding(port, addresses.clone(), Arc::new(names));
            if direct {
                // One pool for both: the read timeout is the response's own here.
                let sender = Sender::Direct(direct::Direct::new(
                    inner.tls.clone(),
                    &inner.options,
                    resolver,
                ));
                clients.push((port, sender.clone()));
                uploads.push((port, sender));
                continue;
            }
            let http = tls::http_client_from(
                ClientConfig::clone(&inner.tls),
                &inner.options,
                resolver.clone(),
            )?;
            let upload =
                tls::upload_client_from(ClientConfig::clone(&inner.tls), &inner.options, resolver)?;
            clients.push((port, Sender::Reqwest(http)));
            uploads.push((port, Sender::Reqwest(upload)));
        }
        Ok(FapiClient {
            inner: Arc::new(Inner {
                http: Transport::PerPort(Arc::new(clients)),
                upload: Transport::PerPort(Arc::new(uploads)),
                tls: inner.tls.clone(),
                auth_server: inner.auth_server.clone(),
                tokens: inner.tokens.clone(),
                options: inner.options.clone(),
                identity: inner.identity.clone(),
                settings: inner.settings.clone(),
                missing_echo: inner.missing_echo.clone(),
                grant: inner.grant.clone(),
            }),
        })
    }

    /// This client with connections of its own: each direct sender's pool is its own (reqwest's
    /// clients are shared as they are). `fapi-host proxy` gives one to each serving thread, so
    /// that a thread's requests never wait on another's connections; identity, policy, name
    /// resolution and tokens stay shared.
    pub(crate) fn with_own_connections(&self) -> FapiClient {
        let own = |s: &Sender| match s {
            Sender::Direct(d) => Sender::Direct(d.with_own_pool()),
            Sender::Reqwest(_) => s.clone(),
        };
        let transport = |t: &Transport| match t {
            Transport::One(s) => Transport::One(own(s)),
            Transport::PerPort(all) => {
                Transport::PerPort(Arc::new(all.iter().map(|(p, s)| (*p, own(s))).collect()))
            }
        };
        let inner = &self.inner;
        let http = transport(&inner.http);
        // Direct senders serve uploads from the same pool ([`FapiClient::guarded`]).
        let upload = if http.is_direct() {
            http.clone()
        } else {
            transport(&inner.upload)
        };
        FapiClient {
            inner: Arc::new(Inner {
                http,
                upload,
                ..Inner::clone(inner)
            }),
        }
    }

    /// This client, carrying the access token of grant `name` of the grant store (`grants_dir`)
    /// in every request instead of a `client_credentials` token: a household's consent (`fapi-host
    /// grant add NAME`). The token is refreshed when due, once for all clones and, through the
    /// grant's file lock, once for all processes sharing the store. The grant must exist, be
    /// active, and have been given by this `issuer_url` to this `client_id`.
    pub fn for_grant(&self, name: &str) -> Result<FapiClient> {
        let inner = &self.inner;
        let Transport::One(_) = &inner.http else {
            return Err(Error::Grant(
                "a grant is chosen before the client is handed to guests (for_grant, then \
                 for_guests)"
                    .into(),
            ));
        };
        let store = GrantStore::open(&inner.settings.grants_dir)?;
        let tokens = GrantTokens::new(
            store,
            name,
            &inner.settings.issuer_url,
            &inner.settings.client_id,
            // The authorization server's calls: verified against its class's anchors.
            inner.auth_server.clone(),
            inner.options.timeout,
            inner.options.token_refresh_margin,
        )?;
        Ok(self.carrying(Some(Arc::new(tokens))))
    }

    /// This client (its connections, guarded ones included, its options and identity) carrying
    /// the grant of `granted` (a client of [`FapiClient::for_grant`] over the same identity):
    /// the same token source, so that one refresh serves both. `fapi-host proxy` gives each
    /// route's guarded client its grant this way, and `batch --plugin` each item's processor.
    pub(crate) fn with_grant_of(&self, granted: &FapiClient) -> FapiClient {
        self.carrying(granted.inner.grant.clone())
    }

    /// This client with `grant` as its token source (none: its own `client_credentials` token).
    fn carrying(&self, grant: Option<Arc<GrantTokens>>) -> FapiClient {
        let inner = &self.inner;
        FapiClient {
            inner: Arc::new(Inner {
                http: inner.http.clone(),
                upload: inner.upload.clone(),
                auth_server: inner.auth_server.clone(),
                tls: inner.tls.clone(),
                tokens: inner.tokens.clone(),
                options: inner.options.clone(),
                identity: inner.identity.clone(),
                settings: inner.settings.clone(),
                missing_echo: inner.missing_echo.clone(),
                grant,
            }),
        }
    }

    /// The error for a command that would make requests without a grant under a profile that
    /// needs one (`ib1`), naming `flag`; `None` when a grant is given or none is needed.
    pub(crate) fn missing_grant(&self, given: bool, what: &str) -> Option<Error> {
        (!given && self.inner.settings.profile.needs_grant()).then(|| {
            Error::Grant(format!(
                "under profile \"ib1\" every request needs a household's consent: {what} \
                 (fapi-host grant list shows the grants; fapi-host grant add NAME makes one)"
            ))
        })
    }

    /// Refresh requests sent for this client's grant by this process (0 without a grant).
    pub fn grant_refreshes(&self) -> u64 {
        self.inner.grant.as_ref().map_or(0, |g| g.refreshes())
    }

    /// The mTLS HTTP client of the authorization server's calls (the consent flow's), verified
    /// against the authorization server's trust anchors.
    pub(crate) fn as_http(&self) -> Result<reqwest::Client> {
        match &self.inner.http {
            Transport::One(_) => Ok(self.inner.auth_server.clone()),
            Transport::PerPort(_) => Err(Error::Grant(
                "the consent flow runs on the host's own client, not a guest's".into(),
            )),
        }
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
        self.client_credentials_allowed()?;
        Ok(self.inner.tokens.lease().await?.1)
    }

    /// Have a valid token now (the grant's, with a grant), as the first request would: for
    /// `batch`, which gets it before its items start.
    pub(crate) async fn warm_token(&self) -> Result<()> {
        match &self.inner.grant {
            Some(grant) => grant.bearer().await.map(|_| ()),
            None => self.token_info().await.map(|_| ()),
        }
    }

    /// Under a profile whose tokens come only from consent (`ib1`), this client's own
    /// `client_credentials` token is never asked for: an error naming `--grant`.
    fn client_credentials_allowed(&self) -> Result<()> {
        if self.inner.settings.profile.needs_grant() {
            return Err(Error::Grant(
                "under profile \"ib1\" every request needs a household's consent: name a grant \
                 with --grant NAME (fapi-host grant list shows them; fapi-host grant add NAME \
                 makes one), or FapiClient::for_grant"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A new token now, whatever the cache holds (it replaces the cached one): one token request,
    /// with a new client assertion under `private_key_jwt`. Callers of [`FapiClient::token_info`]
    /// or requests meanwhile wait for it, as for any token request. For measurements and for
    /// operators who know the current token is void; requests replace a refused token themselves.
    pub async fn renew_token(&self) -> Result<TokenInfo> {
        self.client_credentials_allowed()?;
        self.inner.tokens.renew().await
    }

    /// The RFC 7662 introspection response for this client's own token.
    pub async fn introspect(&self) -> Result<Value> {
        self.client_credentials_allowed()?;
        self.inner.tokens.introspect().await
    }

    /// DANGEROUS: the access token itself. Anyone who has it can call the data provider as this
    /// client until it expires (with this certificate). Exists for `fapi-host token --reveal-token`.
    pub async fn danger_reveal_token(&self) -> Result<zeroize::Zeroizing<String>> {
        self.client_credentials_allowed()?;
        self.inner.tokens.danger_reveal_token().await
    }

    /// The authorization server's discovery document as it is (JSON), fetched now over the
    /// authorization server's connections, for `fapi-host check`'s report of what the profile
    /// needs from the server. The token manager keeps its own, checked, copy
    /// ([`FapiClient::server_metadata`]).
    pub async fn discovery_document(&self) -> Result<Value> {
        let inner = &self.inner;
        let (url, body) = crate::discovery::fetch(
            &inner.auth_server,
            &inner.settings.issuer_url,
            inner.options.timeout,
        )
        .await
        .map_err(Error::in_token_step)?;
        serde_json::from_slice(&body).map_err(|e| {
            Error::Discovery(format!("the discovery document at {url} is not JSON ({e})"))
        })
    }

    /// The JWS algorithm of this client's `private_key_jwt` assertions (`None` with
    /// `tls_client_auth`).
    pub fn assertion_alg(&self) -> Option<crate::jws::Alg> {
        self.inner.tokens.assertion_alg()
    }

    /// Token requests sent so far by this client (all clones).
    pub fn token_requests(&self) -> u64 {
        self.inner.tokens.token_requests()
    }

    /// Send a request: token, mTLS, interaction id, `invalid_token` replay and retries.
    pub async fn send(&self, request: FapiRequest) -> Result<FapiResponse> {
        self.send_with(request, None).await
    }

    /// Send a request whose body is read from `body` while it goes out, memory flat whatever its
    /// size (`request.body` must be `None`). The token is had (refreshed if due, never an expired
    /// one) before the first byte is sent.
    ///
    /// A streamed body cannot be sent twice, so there is no `invalid_token` replay and no retry,
    /// whatever the method: the response (a 401, a 503) goes back as it is, and an error is
    /// returned as it happened. With DPoP, the proof carries the nonce last seen from the URL's
    /// origin; a server that demands a new one (401 `use_dpop_nonce`) has its 401 returned as it
    /// is ([`AuthProblem::DpopNonce`]; the new nonce is kept: sending the request again
    /// succeeds). The wait for the response head is bounded by `timeout_seconds` counted from
    /// the last chunk the server took (a long upload is not cut, a stalled one is), and the
    /// response body by `timeout_seconds` between chunks; a request's own `timeout` bounds all
    /// of it.
    pub async fn send_stream(
        &self,
        request: FapiRequest,
        body: StreamedBody,
    ) -> Result<FapiResponse> {
        if request.body.is_some() {
            return Err(Error::InvalidRequest(
                "a request sent with a streamed body has no other body: leave `body` None".into(),
            ));
        }
        self.send_with(request, Some(body)).await
    }

    async fn send_with(
        &self,
        request: FapiRequest,
        mut streamed: Option<StreamedBody>,
    ) -> Result<FapiResponse> {
        let inner = &self.inner;
        // Only a body held whole can be sent again.
        let replayable = streamed.is_none();
        check_url(&request.url)?;
        let url = request.url;
        check_headers(&request.headers)?;
        let interaction_id = match request.interaction_id {
            Some(id) => Some(id.to_string()),
            None if inner.options.interaction_id => Some(Uuid::new_v4().to_string()),
            None => None,
        };
        let idempotent = replayable && retry::is_idempotent(&request.method);
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
        // The attempt about to be sent replays one refused with `use_dpop_nonce`.
        let mut nonce_replay = false;
        let http = if replayable {
            inner.http.for_url(&url)?
        } else {
            inner.upload.for_url(&url)?
        };
        // When the server last took a chunk of a streamed body, ms after `started`.
        let progress = Arc::new(AtomicU64::new(0));
        loop {
            attempts += 1;
            let after_nonce_demand = std::mem::take(&mut nonce_replay);
            let lease = match &inner.grant {
                Some(grant) => grant.bearer().await?,
                None => {
                    self.client_credentials_allowed()?;
                    inner.tokens.bearer().await?
                }
            };
            let mut headers = request.headers.clone();
            headers.insert(http::header::AUTHORIZATION, lease.bearer.header());
            if let Some(dpop) = inner.tokens.dpop() {
                // The one `DPoP` header (callers cannot give one: DPOP-01), a fresh proof per
                // attempt, bound to this token (`ath`).
                let proof = dpop.proof(&request.method, &url, Some(lease.bearer.expose_token()))?;
                headers.insert(dpop::DPOP, proof.into_value());
            }
            if let Some(id) = &interaction_id {
                headers.insert(
                    INTERACTION_ID,
                    http::HeaderValue::from_str(id).map_err(|e| {
                        Error::InvalidRequest(format!("{}: interaction id: {e}", what(&url)))
                    })?,
                );
            }
            let mut stream = None;
            if let Some(body) = streamed.take() {
                if let Some(n) = body.length {
                    headers.insert(http::header::CONTENT_LENGTH, n.into());
                }
                let progress = progress.clone();
                stream = Some(futures_util::StreamExt::inspect(body.stream, move |_| {
                    progress.store(millis_since(started), Ordering::Relaxed);
                }));
            }
            log_request(
                &request.method,
                &url,
                &headers,
                interaction_id.as_deref(),
                attempts,
            );
            let timeout = match deadline {
                Some(d) => inner
                    .options
                    .timeout
                    .min(d.saturating_duration_since(Instant::now())),
                None => inner.options.timeout,
            };
            let no_response = || {
                let e = format!("{}: no response within {timeout:?}", what(&url));
                (Error::Timeout(e), true)
            };
            let wait = HeadWait {
                whole: replayable,
                timeout,
                deadline,
                progress: &progress,
                started,
            };
            let t0 = Instant::now();
            let sent = match http {
                Sender::Reqwest(client) => {
                    let mut builder = client
                        .request(request.method.clone(), url.clone())
                        .headers(headers);
                    if let Some(body) = &request.body {
                        builder = builder.body(body.clone());
                    }
                    if let Some(stream) = stream {
                        builder = builder.body(reqwest::Body::wrap_stream(stream));
                    }
                    let req = builder
                        .build()
                        .map_err(|e| Error::InvalidRequest(format!("{}: {e}", what(&url))))?;
                    let answered = wait.head(client.execute(req)).await;
                    match answered {
                        Some(r) => r.map(Received::Reqwest).map_err(|e| {
                            let transient = e.is_connect() || e.is_timeout() || e.is_request();
                            (Error::from_reqwest(&what(&url), e), transient)
                        }),
                        None => Err(no_response()),
                    }
                }
                Sender::Direct(client) => {
                    let req =
                        direct::request(&request.method, &url, headers, &request.body, stream)
                            .map_err(|e| Error::InvalidRequest(format!("{}: {e}", what(&url))))?;
                    let answered = wait.head(client.request(req)).await;
                    match answered {
                        Some(r) => r
                            .map(Received::Direct)
                            .map_err(|e| (Error::from_direct(&what(&url), &e), true)),
                        None => Err(no_response()),
                    }
                }
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

            if let Some(dpop) = inner.tokens.dpop() {
                let fresh_nonce = dpop.remember_nonce(&url, response.headers());
                if status == StatusCode::UNAUTHORIZED && demands_nonce(response.headers()) {
                    if after_nonce_demand {
                        return Err(Error::Dpop(format!(
                            "{}: DPoP nonce demanded twice in a row (401 use_dpop_nonce right \
                             after a request with the nonce it gave): not sent a third time; \
                             the server's nonces may expire faster than a request takes, tell \
                             its operator",
                            what(&url)
                        )));
                    }
                    if !fresh_nonce {
                        return Err(Error::Dpop(format!(
                            "{}: 401 use_dpop_nonce without a DPoP-Nonce header (RFC 9449 \
                             section 9): there is no nonce to send; tell the server's operator",
                            what(&url)
                        )));
                    }
                    if replayable {
                        tracing::info!(url = %shown_url(url.as_str()), "the resource server demands a DPoP nonce: replaying once with it");
                        nonce_replay = true;
                        continue;
                    }
                    tracing::warn!(url = %shown_url(url.as_str()), "the resource server demands a DPoP nonce, and a streamed body cannot be sent again: its 401 goes back to the caller (sending the request again carries the nonce)");
                }
            }
            if status == StatusCode::UNAUTHORIZED && !replayed && replayable {
                let challenge = www_authenticate::bearer(response.headers())
                    .or_else(|| www_authenticate::dpop(response.headers()));
                if challenge.and_then(|c| c.error).as_deref() == Some("invalid_token") {
                    let dropped = match &inner.grant {
                        Some(grant) => grant.invalidate(lease.generation),
                        None => inner.tokens.invalidate(lease.generation),
                    };
                    if dropped {
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
                // reqwest's clients for whole bodies have a read timeout of their own.
                idle: match &response {
                    Received::Reqwest(_) if replayable => None,
                    _ => Some(inner.options.timeout),
                },
                inner: response,
            });
        }
    }
}

/// Whether a 401's challenges demand a DPoP nonce (`DPoP error="use_dpop_nonce"`, the scheme
/// and parameter names in any case: DPOP-06).
fn demands_nonce(headers: &http::HeaderMap) -> bool {
    www_authenticate::dpop(headers)
        .and_then(|c| c.error)
        .as_deref()
        == Some(dpop::USE_DPOP_NONCE)
}

fn millis_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// How long a request's response head is waited for.
struct HeadWait<'a> {
    /// The request's body was sent whole (or there was none).
    whole: bool,
    timeout: Duration,
    deadline: Option<Instant>,
    progress: &'a AtomicU64,
    started: Instant,
}

impl HeadWait<'_> {
    /// The response head within `timeout` (a whole body), or as [`head_after_body`] bounds it
    /// (a streamed one); `None` when it did not come.
    async fn head<F: std::future::Future>(&self, response: F) -> Option<F::Output> {
        if self.whole {
            tokio::time::timeout(self.timeout, response).await.ok()
        } else {
            let (timeout, deadline) = (self.timeout, self.deadline);
            head_after_body(response, timeout, deadline, self.progress, self.started).await
        }
    }
}

/// The response head of a request with a streamed body, or `None` once nothing has moved for
/// `timeout`: the server took no chunk of the body, or, after the last one, did not answer.
/// `deadline` (the request's own timeout) bounds it all.
async fn head_after_body<F: std::future::Future>(
    response: F,
    timeout: Duration,
    deadline: Option<Instant>,
    progress: &AtomicU64,
    started: Instant,
) -> Option<F::Output> {
    tokio::pin!(response);
    loop {
        let last = progress.load(Ordering::Relaxed);
        let mut until = started + Duration::from_millis(last) + timeout;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        tokio::select! {
            r = &mut response => return Some(r),
            () = tokio::time::sleep_until(until.into()) => {
                let moved = progress.load(Ordering::Relaxed) != last;
                if !moved || deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
            }
        }
    }
}

/// The HTTP clients requests go out through: one, or (for guests) one per port.
#[derive(Clone)]
enum Transport {
    One(Sender),
    PerPort(Arc<Vec<(u16, Sender)>>),
}

/// An HTTP client: reqwest, or hyper's directly (`fapi-host proxy`'s).
#[derive(Clone)]
enum Sender {
    Reqwest(reqwest::Client),
    Direct(direct::Direct),
}

impl Transport {
    /// Whether its requests go out on hyper's client directly.
    fn is_direct(&self) -> bool {
        match self {
            Transport::One(s) => matches!(s, Sender::Direct(_)),
            Transport::PerPort(all) => all.iter().any(|(_, s)| matches!(s, Sender::Direct(_))),
        }
    }

    fn for_url(&self, url: &url::Url) -> Result<&Sender> {
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
