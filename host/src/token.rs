//! Access tokens: client_credentials over mTLS (RFC 6749 section 4.4, RFC 8705 section 2), the
//! client authenticated by its certificate or a `private_key_jwt` assertion
//! ([`crate::client_auth`]), cached with their expiry, acquired once for all concurrent callers.
//!
//! The token exists in exactly one form: a `BearerHeader` (a sensitive `HeaderValue`) inside the
//! cache. It is written into requests' `Authorization` headers and into the introspection form
//! body, and nowhere else; nothing returns it to a caller.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client_auth::ClientAuthenticator;
use crate::config::{ClientOptions, MAX_TOKEN_LIFETIME};
use crate::discovery::{self, ServerMetadata};
use crate::dpop::{self as dpop_header, Dpop};
use crate::error::{Error, Result, Warning, WarningKind};
use crate::retry;

/// What is known about the current token, without the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// "Bearer", or "DPoP" with `sender_constraint = "dpop"`.
    pub token_type: String,
    /// The granted scopes (the requested ones when the server did not say).
    pub scope: Vec<String>,
    /// When the token expires (local receipt time + `expires_in`), as seconds since the epoch.
    pub expires_at: u64,
    /// Seconds until expiry, at the time this was made.
    pub expires_in: u64,
    /// Whether the server gave `expires_in` (else the configured default lifetime was assumed).
    pub expires_in_from_server: bool,
    /// The RFC 8705 thumbprint of the certificate the token is bound to.
    pub certificate_thumbprint: String,
    /// The RFC 7638 thumbprint of the DPoP key the token is bound to (`cnf.jkt`), with DPoP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dpop_thumbprint: Option<String>,
    /// The token endpoint that issued it.
    pub token_endpoint: String,
}

/// A ready `Authorization: Bearer ...` (or, with DPoP, `Authorization: DPoP ...`) header value.
/// Its `Debug` does not show it.
#[derive(Clone)]
pub(crate) struct BearerHeader(HeaderValue);

redacted_debug!(BearerHeader);

impl BearerHeader {
    /// The header of a token held elsewhere (a grant's, [`crate::consent`]); `None` when the
    /// token has characters a header cannot carry.
    pub(crate) fn from_token(token: &str) -> Option<BearerHeader> {
        let text = zeroize::Zeroizing::new(format!("Bearer {token}"));
        let mut value = HeaderValue::from_str(&text).ok()?;
        value.set_sensitive(true);
        Some(BearerHeader(value))
    }

    pub(crate) fn header(&self) -> HeaderValue {
        self.0.clone()
    }

    /// The raw token: for the introspection form body, and for a DPoP proof's `ath` (its hash).
    pub(crate) fn expose_token(&self) -> &[u8] {
        let bytes = self.0.as_bytes();
        let start = bytes.iter().position(|&b| b == b' ').map_or(0, |i| i + 1);
        &bytes[start..]
    }
}

/// A token handed to one request, with the generation needed to invalidate exactly it.
#[derive(Clone, Debug)]
pub(crate) struct Lease {
    pub(crate) bearer: BearerHeader,
    pub(crate) generation: u64,
}

struct Cached {
    bearer: BearerHeader,
    info: TokenInfo,
    /// Served as it is until then (the hot path looks at nothing else): the refresh point
    /// (expiry - margin), or, once a refresh has started or failed, when the next may be tried.
    /// Never later than `expires_at`.
    refresh_at: Instant,
    /// When the token expires, counted from the sending of the request that got it (a little
    /// early rather than late). Never served after it.
    expires_at: Instant,
    /// How long after a failed refresh (or the start of one) the next may be tried.
    retry_every: Duration,
    generation: u64,
    obtained: Instant,
    /// Obtained because a server refused the previous token with `invalid_token`.
    forced: bool,
}

/// A token that replaced a refused one is not itself replaced on `invalid_token` before it is
/// this old: a resource that refuses a token moments old will refuse the next one too (it does
/// not accept this issuer's tokens), and replacing it per request would send the authorization
/// server a token request per request (a guest could make that happen).
pub const FORCED_REFRESH_MIN_AGE: Duration = Duration::from_secs(5);

/// The longest wait between two refresh attempts while the current token is still valid: a
/// failed refresh is tried again after a quarter of the refresh margin, at most this long and at
/// least [`REFRESH_RETRY_MIN`] (5 s with the default 30 s margin).
pub const REFRESH_RETRY_MAX: Duration = Duration::from_secs(5);

/// The shortest wait between two refresh attempts (see [`REFRESH_RETRY_MAX`]).
pub const REFRESH_RETRY_MIN: Duration = Duration::from_millis(250);

impl Cached {
    /// Served as it is (before its refresh point, or before the next refresh attempt is due).
    fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }

    fn lease(&self) -> Lease {
        Lease {
            bearer: self.bearer.clone(),
            generation: self.generation,
        }
    }

    /// No refresh attempt before `retry_every` from now (nor past the expiry).
    fn postpone_refresh(&mut self) {
        self.refresh_at = (Instant::now() + self.retry_every).min(self.expires_at);
    }
}

/// The outcomes of the requests one at a time behind a lock (a token request, a grant's
/// refresh), for the callers that waited for the lock: one that finds a request ended in failure
/// while it waited gets that error at once, instead of sending another after it (callers queued
/// behind a server that does not answer would otherwise each wait a whole timeout, one after
/// another). A caller that comes later sends a new request.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    ended: AtomicU64,
    last_failure: std::sync::Mutex<Option<(u64, Error)>>,
}

impl Flights {
    /// Taken before waiting for the lock.
    pub(crate) fn mark(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// The error of a request that ended in failure after `mark` (the lock held).
    pub(crate) fn failed_since(&self, mark: u64) -> Result<()> {
        match &*self.failures() {
            Some((n, error)) if *n > mark => Err(error.clone()),
            _ => Ok(()),
        }
    }

    /// Record how a request ended (the lock held), and pass its result on.
    pub(crate) fn ended<T>(&self, result: Result<T>) -> Result<T> {
        let n = self.ended.fetch_add(1, Ordering::AcqRel) + 1;
        if let Err(error) = &result {
            *self.failures() = Some((n, error.clone()));
        }
        result
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Option<(u64, Error)>> {
        self.last_failure.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the cache holds for a caller that missed the hot path.
enum Found<T> {
    /// A token to serve as it is.
    Fresh(T),
    /// A valid token whose refresh is due: one caller refreshes, the others serve it meanwhile.
    Stale { value: T, generation: u64 },
    /// No valid token: callers wait for a new one.
    Missing,
}

/// What a token request brought: the token, its metadata and lifetime, and when the request
/// that got it was sent.
struct NewToken {
    bearer: BearerHeader,
    info: TokenInfo,
    lifetime: Duration,
    sent: Instant,
}

/// A token request that failed, and whether a token endpoint that has moved would explain it (the
/// connection could not be made, or the server says 404 Not Found or 405 Method Not Allowed): then
/// the discovery document is fetched again, once.
struct Failed {
    error: Error,
    endpoint_gone: bool,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed {
            error,
            endpoint_gone: false,
        }
    }
}

/// Discovery plus the token cache of one identity.
pub(crate) struct TokenManager {
    http: reqwest::Client,
    issuer: String,
    client_id: String,
    scopes: Vec<String>,
    thumbprint: String,
    options: ClientOptions,
    /// How token (and introspection) requests authenticate the client.
    client_auth: ClientAuthenticator,
    /// The discovery document's metadata: fetched on first need, fetched again when a token
    /// request fails as if the token endpoint had moved. The lock is held while it is fetched, so
    /// there is one discovery request at a time.
    metadata: tokio::sync::Mutex<Option<Arc<ServerMetadata>>>,
    /// The discovery warnings logged so far: each is logged once, not at every discovery.
    warned: std::sync::Mutex<Vec<Warning>>,
    /// Tokens come from grants only (profile `ib1`): a server that does not list
    /// `client_credentials` is as expected, not worth a warning.
    grants_only: bool,
    /// The token of this identity (issuer, client, certificate, scopes: one manager each). A
    /// synchronous lock, held only to look or swap, never across an await: the hot path of every
    /// request reads it without hashing, allocating or yielding.
    cache: std::sync::Mutex<Option<Cached>>,
    /// Held while a token request is in flight, so that there is one at a time: callers without
    /// a valid token wait for it and share its result; while a still-valid token is refreshed,
    /// the other callers do not wait (they find it taken and serve the current token).
    acquiring: tokio::sync::Mutex<()>,
    /// The token requests sent for callers without a valid token: those that waited while one
    /// failed get its error.
    flights: Flights,
    generation: AtomicU64,
    requests: AtomicU64,
    /// The next token stored replaces one refused with `invalid_token`.
    next_is_forced: std::sync::atomic::AtomicBool,
    /// With `sender_constraint = "dpop"`: this client's DPoP key (one per authorization server)
    /// and the nonces its servers gave.
    dpop: Option<Arc<Dpop>>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<Value>,
    token_type: Option<Value>,
    expires_in: Option<Value>,
    scope: Option<Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

impl TokenManager {
    pub(crate) fn new(
        http: reqwest::Client,
        issuer: String,
        client_id: String,
        scopes: Vec<String>,
        thumbprint: String,
        options: ClientOptions,
        client_auth: ClientAuthenticator,
    ) -> TokenManager {
        TokenManager {
            http,
            issuer,
            client_id,
            scopes,
            thumbprint,
            options,
            client_auth,
            metadata: tokio::sync::Mutex::new(None),
            warned: std::sync::Mutex::new(Vec::new()),
            grants_only: false,
            cache: std::sync::Mutex::new(None),
            acquiring: tokio::sync::Mutex::new(()),
            flights: Flights::default(),
            generation: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            next_is_forced: std::sync::atomic::AtomicBool::new(false),
            dpop: None,
        }
    }

    /// This manager, binding its tokens to `dpop`'s key (RFC 9449) instead of the certificate
    /// alone: a proof with every token request, `token_type` DPoP required.
    pub(crate) fn with_dpop(mut self, dpop: Option<Dpop>) -> TokenManager {
        self.dpop = dpop.map(Arc::new);
        self
    }

    /// This manager under a profile whose tokens come from grants only (`ib1`): discovery does
    /// not warn that the server omits `client_credentials`, which no request of it needs.
    pub(crate) fn grants_only(mut self, yes: bool) -> TokenManager {
        self.grants_only = yes;
        self
    }

    /// The DPoP key and nonces, with `sender_constraint = "dpop"`.
    pub(crate) fn dpop(&self) -> Option<&Dpop> {
        self.dpop.as_deref()
    }

    /// The discovery document, fetched on first need (a failure is not cached).
    pub(crate) async fn metadata(&self) -> Result<Arc<ServerMetadata>> {
        let mut slot = self.metadata.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = Arc::new(self.discover_logged().await?);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// The discovery document fetched again because `stale` led a token request nowhere; unless
    /// another caller has fetched it meanwhile (then that one). A failure leaves `stale` in place.
    async fn rediscover(&self, stale: &Arc<ServerMetadata>) -> Result<Arc<ServerMetadata>> {
        let mut slot = self.metadata.lock().await;
        if let Some(m) = slot.as_ref()
            && !Arc::ptr_eq(m, stale)
        {
            return Ok(m.clone());
        }
        let m = Arc::new(self.discover_logged().await?);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Discovery, logging each of its warnings the first time it is found (a document that omits
    /// a field says so once, not at every discovery).
    async fn discover_logged(&self) -> Result<ServerMetadata> {
        let (m, warnings) =
            discovery::discover(&self.http, &self.issuer, &self.scopes, self.options.timeout)
                .await?;
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for w in warnings {
            if self.grants_only && w.kind == WarningKind::ClientCredentialsNotListed {
                continue;
            }
            if !warned.contains(&w) {
                tracing::warn!("{w}");
                warned.push(w);
            }
        }
        Ok(m)
    }

    /// Discovery with its warnings, uncached (for `fapi-host check`).
    pub(crate) async fn discover_fresh(&self) -> Result<(ServerMetadata, Vec<Warning>)> {
        discovery::discover(&self.http, &self.issuer, &self.scopes, self.options.timeout).await
    }

    /// The algorithm of this manager's client assertions, if it makes any.
    pub(crate) fn assertion_alg(&self) -> Option<crate::jws::Alg> {
        self.client_auth.assertion_alg()
    }

    /// How many token requests this manager has sent.
    pub(crate) fn token_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `f` of the cached token while it is fresh.
    fn fresh<T>(&self, f: impl FnOnce(&Cached) -> T) -> Option<T> {
        self.slot().as_ref().filter(|c| c.fresh()).map(f)
    }

    /// A valid token for one request: the cached one, or a new one (the hot path of every
    /// request: no allocation, hashing or await when the cached token is fresh).
    pub(crate) async fn bearer(&self) -> Result<Lease> {
        match self.fresh(Cached::lease) {
            Some(lease) => Ok(lease),
            None => self.acquire(Cached::lease).await,
        }
    }

    /// A valid token and its metadata: the cached one, or a new one.
    pub(crate) async fn lease(&self) -> Result<(Lease, TokenInfo)> {
        self.acquire(|c| (c.lease(), c.info.clone())).await
    }

    /// `f` of a valid token. With a fresh one, at once. With one past its refresh point but not
    /// expired, the caller that takes `acquiring` refreshes it, and every other caller serves it
    /// meanwhile without waiting; a refresh that fails leaves it in use until it expires (tried
    /// again after `retry_every`). Without a valid token, callers wait for the one token request
    /// in flight (or send it): whoever waited finds the new token in the cache, or, when it
    /// failed, gets its error (the next caller to come sends a new one).
    async fn acquire<T>(&self, f: impl Fn(&Cached) -> T) -> Result<T> {
        match self.find(&f) {
            Found::Fresh(value) => return Ok(value),
            Found::Stale { value, generation } => {
                return match self.acquiring.try_lock() {
                    Ok(acquiring) => self.refresh(acquiring, generation, &f).await,
                    // A token request is in flight: the current token serves meanwhile.
                    Err(_) => Ok(value),
                };
            }
            Found::Missing => {}
        }
        let waited_from = self.flights.mark();
        let acquiring = self.acquiring.lock().await;
        match self.find(&f) {
            Found::Fresh(value) => Ok(value),
            Found::Stale { generation, .. } => self.refresh(acquiring, generation, &f).await,
            Found::Missing => {
                self.flights.failed_since(waited_from)?;
                let new = self.flights.ended(self.request_new().await)?;
                Ok(self.store_new(new, &f))
            }
        }
    }

    /// A new token whatever the cache holds (`acquiring` taken: one token request at a time).
    pub(crate) async fn renew(&self) -> Result<TokenInfo> {
        let _acquiring = self.acquiring.lock().await;
        let new = self.request_new().await?;
        Ok(self.store_new(new, &|c: &Cached| c.info.clone()))
    }

    /// What the cache holds, looked at once.
    fn find<T>(&self, f: &impl Fn(&Cached) -> T) -> Found<T> {
        let slot = self.slot();
        let now = Instant::now();
        match slot.as_ref() {
            Some(c) if now < c.refresh_at => Found::Fresh(f(c)),
            Some(c) if now < c.expires_at => Found::Stale {
                value: f(c),
                generation: c.generation,
            },
            _ => Found::Missing,
        }
    }

    /// Replace the still-valid token of `generation` (`acquiring` held). On failure it keeps being
    /// served until it expires, unless it has expired or was dropped (`invalidate`) meanwhile:
    /// then the caller gets the error.
    async fn refresh<T>(
        &self,
        _acquiring: tokio::sync::MutexGuard<'_, ()>,
        generation: u64,
        f: &impl Fn(&Cached) -> T,
    ) -> Result<T> {
        // The others go on with the current token, without even trying the lock, for a while.
        if let Some(c) = self.slot().as_mut().filter(|c| c.generation == generation) {
            c.postpone_refresh();
        }
        let error = match self.request_new().await {
            Ok(new) => return Ok(self.store_new(new, f)),
            Err(e) => e,
        };
        let mut slot = self.slot();
        let now = Instant::now();
        match slot.as_mut() {
            Some(c) if c.generation == generation && now < c.expires_at => {
                c.postpone_refresh();
                tracing::warn!(
                    error = %error,
                    expires_in_ms = (c.expires_at - now).as_millis() as u64,
                    retry_in_ms = c.retry_every.as_millis() as u64,
                    "refreshing the access token failed; the current token is used until it \
                     expires and a refresh is tried again"
                );
                Ok(f(c))
            }
            _ => Err(error),
        }
    }

    /// Discovery (once) and a token request, errors as the token step's. A token request that
    /// fails as if the token endpoint had moved (no connection, 404, 405) fetches the discovery
    /// document again, once, and when it names another token endpoint, is sent there, once.
    async fn request_new(&self) -> Result<NewToken> {
        async {
            let metadata = self.metadata().await?;
            let first = match self.request_token_with_nonce(&metadata).await {
                // A refused assertion from a server whose clock differs from ours: once more,
                // stamped by its clock (PKJ-04).
                Err(_) if self.client_auth.take_correction() => {
                    tracing::info!(endpoint = %metadata.token_endpoint, "sending the token request again with an assertion stamped by the server's clock");
                    self.request_token_with_nonce(&metadata).await
                }
                other => other,
            };
            let error = match first {
                Ok(new) => return Ok(new),
                Err(Failed {
                    error,
                    endpoint_gone: false,
                }) => return Err(error),
                Err(Failed { error, .. }) => error,
            };
            tracing::warn!(
                endpoint = %metadata.token_endpoint,
                error = %error,
                "the token request failed as if the token endpoint had moved: fetching the \
                 discovery document again"
            );
            let fresh = match self.rediscover(&metadata).await {
                Ok(fresh) => fresh,
                Err(e) => {
                    tracing::warn!(error = %e, "fetching the discovery document again failed");
                    return Err(error);
                }
            };
            if fresh.token_endpoint == metadata.token_endpoint {
                tracing::info!(
                    endpoint = %fresh.token_endpoint,
                    "the discovery document still names this token endpoint: not sent again"
                );
                return Err(error);
            }
            tracing::warn!(
                old = %metadata.token_endpoint,
                new = %fresh.token_endpoint,
                "the token endpoint has moved: requesting the token at the new one"
            );
            self.request_token_with_nonce(&fresh)
                .await
                .map_err(|f| f.error)
        }
        .await
        .map_err(Error::in_token_step)
    }

    /// Cache a new token and return `f` of it.
    fn store_new<T>(&self, new: NewToken, f: &impl Fn(&Cached) -> T) -> T {
        let margin = self.options.token_refresh_margin.min(new.lifetime / 2);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        // `lifetime` is at most a day (parse_success), so these cannot overflow.
        let expires_at = new.sent + new.lifetime;
        let cached = Cached {
            bearer: new.bearer,
            info: new.info,
            refresh_at: (now + (new.lifetime - margin)).min(expires_at),
            expires_at,
            retry_every: (margin / 4).clamp(REFRESH_RETRY_MIN, REFRESH_RETRY_MAX),
            generation,
            obtained: now,
            forced: self.next_is_forced.swap(false, Ordering::Relaxed),
        };
        let value = f(&cached);
        self.store(Some(cached));
        value
    }

    fn store(&self, value: Option<Cached>) {
        *self.slot() = value;
    }

    /// The cache slot (a panic elsewhere while it was held leaves a valid `Option`).
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A server refused the token of `generation` with `invalid_token`: drop it, unless a newer
    /// one has replaced it already. Whether replaying with another token is worth it: not when
    /// this token itself replaced a refused one less than [`FORCED_REFRESH_MIN_AGE`] ago.
    pub(crate) fn invalidate(&self, generation: u64) -> bool {
        let mut cache = self.slot();
        match cache.as_ref() {
            Some(c) if c.generation == generation => {
                if c.forced && c.obtained.elapsed() < FORCED_REFRESH_MIN_AGE {
                    return false;
                }
                *cache = None;
                self.next_is_forced.store(true, Ordering::Relaxed);
                true
            }
            // Replaced already (or being replaced): the replay gets the newer token.
            _ => true,
        }
    }

    /// A token request; with DPoP, sent again once, with the server's nonce, when the server
    /// answers `use_dpop_nonce` (RFC 9449 section 8; a second demand in a row is an error, never
    /// a loop).
    async fn request_token_with_nonce(
        &self,
        metadata: &ServerMetadata,
    ) -> std::result::Result<NewToken, Failed> {
        let Some(dpop) = &self.dpop else {
            return self.request_token(metadata).await;
        };
        dpop.check_supported(metadata.dpop_signing_alg_values_supported.as_deref())?;
        let endpoint = &metadata.token_endpoint;
        let nonce_before = dpop.nonce_for(endpoint);
        let failed = match self.request_token(metadata).await {
            Err(f) if is_nonce_demand(&f.error) => f,
            other => return other,
        };
        let nonce = dpop.nonce_for(endpoint);
        if nonce.is_none() || nonce == nonce_before {
            return Err(Error::Dpop(format!(
                "{endpoint} answered use_dpop_nonce without a new DPoP-Nonce header (RFC 9449 \
                 section 8): there is no nonce to send; the server is misconfigured, tell its \
                 operator ({})",
                failed.error
            ))
            .into());
        }
        tracing::info!(endpoint = %endpoint, "the authorization server demands a DPoP nonce: sending the token request again with it, once");
        match self.request_token(metadata).await {
            Err(f) if is_nonce_demand(&f.error) => Err(Error::Dpop(format!(
                "{endpoint}: DPoP nonce demanded twice in a row (use_dpop_nonce again right \
                 after a request with the nonce it gave): not sent a third time; the server's \
                 nonces may expire faster than a request takes, tell its operator"
            ))
            .into()),
            other => other,
        }
    }

    async fn request_token(
        &self,
        metadata: &ServerMetadata,
    ) -> std::result::Result<NewToken, Failed> {
        let endpoint = metadata.token_endpoint.clone();
        self.client_auth.check(metadata)?;
        let method = self.client_auth.method().name();
        let mut attempt = 0;
        // When the attempt that got the response was sent: the token's lifetime counts from then.
        let mut sent_at;
        // Set when a retry was due but the server asked for a longer wait than the client makes.
        let mut not_retried = None;
        let response = loop {
            attempt += 1;
            sent_at = Instant::now();
            self.requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(endpoint = %endpoint, attempt, client_auth = method, "requesting a token (client_credentials)");
            // Made for each attempt: an assertion is never sent twice (a new jti, a fresh iat).
            let body = self.token_form(metadata, &endpoint)?;
            let mut request = self.http.post(endpoint.clone());
            if let Some(dpop) = &self.dpop {
                // A proof per attempt: a retry is a new request, with a new `jti` (DPOP-03).
                let proof = dpop.proof(&http::Method::POST, &endpoint, None)?;
                request = request.header(dpop_header::DPOP, proof.into_value());
            }
            let sent = request
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(http::header::ACCEPT, "application/json")
                .body(body.as_str().to_owned())
                .timeout(self.options.timeout)
                .send()
                .await;
            drop(body);
            let may_retry = attempt <= self.options.token_retries;
            match sent {
                // 429 and 503 say the request was not processed: trying again is safe, after
                // the wait the server asks for (and not when that is longer than the client
                // waits). A 502 or 504 comes from a gateway that may have passed the request
                // on, and a token been issued: it is not sent again.
                Ok(r) if may_retry && retry::is_retryable_token_status(r.status()) => {
                    let status = r.status();
                    match retry::delay_for(attempt, retry::retry_after(r.headers()), &self.options)
                    {
                        Ok(delay) => {
                            tracing::warn!(endpoint = %endpoint, attempt, status = status.as_u16(), ?delay, "token request refused for now; retrying");
                            drop(r);
                            tokio::time::sleep(delay).await;
                        }
                        Err(too_long) => {
                            not_retried = Some(too_long);
                            break r;
                        }
                    }
                }
                Ok(r) => break r,
                Err(e) => {
                    // A connection that could not be made carried nothing: trying again is safe
                    // (not after a TLS failure, which trying again does not mend). A request that
                    // timed out may have been processed (and a token issued): it is not sent
                    // again.
                    let connect = e.is_connect();
                    let error = Error::from_reqwest(&format!("token request to {endpoint}"), e);
                    let unreachable = connect && !error.is_tls();
                    if unreachable && may_retry {
                        let delay = retry::backoff(attempt, &self.options);
                        tracing::warn!(endpoint = %endpoint, attempt, error = %error, ?delay, "token request failed transiently; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(Failed {
                        error,
                        endpoint_gone: unreachable,
                    });
                }
            }
        };
        let status = response.status();
        let received = SystemTime::now();
        let server_date = response
            .headers()
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok());
        if let Some(dpop) = &self.dpop {
            dpop.remember_nonce(&endpoint, response.headers());
        }
        let bytes = zeroize::Zeroizing::new(
            discovery::read_limited(
                response,
                &format!("the token response of {endpoint}"),
                self.options.timeout,
                Error::TokenResponse,
            )
            .await?,
        );
        if !status.is_success() {
            let oauth = serde_json::from_slice::<ErrorResponse>(&bytes).ok();
            if let Some(too_long) = not_retried {
                let error = oauth
                    .map(|e| format!(" ({})", printable(&e.error)))
                    .unwrap_or_default();
                return Err(Error::TokenResponse(format!(
                    "{endpoint} answered HTTP {status}{error}; {too_long}"
                ))
                .into());
            }
            // What a token endpoint that is not there (any more) answers.
            let endpoint_gone = matches!(status.as_u16(), 404 | 405);
            if let (Some(err), Some(date)) = (&oauth, server_date)
                && err.error == "invalid_client"
            {
                self.client_auth.correct_clock(date, received);
            }
            let error = match oauth {
                Some(err) => Error::TokenRefused {
                    status: status.as_u16(),
                    error: printable(&err.error),
                    description: err.error_description.as_deref().map(printable),
                    assertion_hint: self.client_auth.refusal_hint(server_date),
                },
                None => Error::TokenResponse(format!(
                    "{endpoint} answered HTTP {status} without an OAuth error; {}",
                    token_status_next_step(status)
                )),
            };
            return Err(Failed {
                error,
                endpoint_gone,
            });
        }
        let (bearer, scope, lifetime, from_server) = parse_success(
            &bytes,
            &endpoint,
            self.options.default_token_lifetime,
            &self.scopes,
            self.dpop.is_some(),
        )?;
        drop(bytes);
        let expires_at = received + lifetime;
        let info = TokenInfo {
            token_type: if self.dpop.is_some() {
                "DPoP"
            } else {
                "Bearer"
            }
            .into(),
            scope,
            expires_at: expires_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            expires_in: lifetime.as_secs(),
            expires_in_from_server: from_server,
            certificate_thumbprint: self.thumbprint.clone(),
            dpop_thumbprint: self.dpop.as_ref().map(|d| d.thumbprint().to_owned()),
            token_endpoint: endpoint.to_string(),
        };
        tracing::info!(
            endpoint = %endpoint,
            scope = %info.scope.join(" "),
            expires_in = info.expires_in,
            "access token acquired"
        );
        Ok(NewToken {
            bearer,
            info,
            lifetime,
            sent: sent_at,
        })
    }

    /// The form of one token request: the grant, the client and scopes, and the client
    /// authentication parameters (a new assertion with `private_key_jwt`), in a zeroizing buffer.
    fn token_form(
        &self,
        metadata: &ServerMetadata,
        endpoint: &url::Url,
    ) -> Result<zeroize::Zeroizing<String>> {
        // Room for an assertion (an RSA-4096 one is under 2 KiB): no reallocation leaves a copy
        // of it behind unzeroized.
        let mut form = url::form_urlencoded::Serializer::new(String::with_capacity(FORM_CAPACITY));
        form.append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("scope", &self.scopes.join(" "));
        let appended = self.client_auth.append(&mut form, metadata, endpoint);
        let form = zeroize::Zeroizing::new(form.finish());
        appended.map(|()| form)
    }

    /// The raw token, for `fapi-host token --reveal-token` only.
    pub(crate) async fn danger_reveal_token(&self) -> Result<zeroize::Zeroizing<String>> {
        let lease = self.bearer().await?;
        Ok(zeroize::Zeroizing::new(
            String::from_utf8_lossy(lease.bearer.expose_token()).into_owned(),
        ))
    }

    /// RFC 7662 introspection of the current token at the server's introspection endpoint.
    pub(crate) async fn introspect(&self) -> Result<Value> {
        let metadata = self.metadata().await?;
        let endpoint = metadata.introspection_endpoint.clone().ok_or_else(|| {
            Error::Discovery("the authorization server has no introspection endpoint".into())
        })?;
        let lease = self.bearer().await?;
        let token = String::from_utf8_lossy(lease.bearer.expose_token()).into_owned();
        // Room for an assertion (an RSA-4096 one is under 2 KiB): no reallocation leaves a copy
        // of it behind unzeroized.
        let mut form = url::form_urlencoded::Serializer::new(String::with_capacity(FORM_CAPACITY));
        form.append_pair("token", &token)
            .append_pair("token_type_hint", "access_token")
            .append_pair("client_id", &self.client_id);
        let appended = self.client_auth.append(&mut form, &metadata, &endpoint);
        let body = zeroize::Zeroizing::new(form.finish());
        drop(zeroize::Zeroizing::new(token));
        appended?;
        let response = self
            .http
            .post(endpoint.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body.as_str().to_owned())
            .timeout(self.options.timeout)
            .send()
            .await
            .map_err(|e| Error::from_reqwest(&format!("introspection at {endpoint}"), e))?;
        let status = response.status();
        let bytes = discovery::read_limited(
            response,
            &format!("the introspection response of {endpoint}"),
            self.options.timeout,
            Error::TokenResponse,
        )
        .await?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<ErrorResponse>(&bytes)
                .map(|e| format!(": {}", printable(&e.error)))
                .unwrap_or_default();
            return Err(Error::TokenResponse(format!(
                "introspection at {endpoint} answered HTTP {status}{detail}{}",
                introspection_status_next_step(status)
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::TokenResponse(format!(
                "introspection at {endpoint} did not return JSON ({e})"
            ))
        })
    }
}

/// The initial capacity of a token or introspection form.
const FORM_CAPACITY: usize = 4096;

/// Parse a successful token response: the bearer header, the granted scopes (the requested ones
/// when the server does not say), the lifetime (`default_lifetime` without `expires_in`) and
/// whether the server gave it. With `dpop` (a DPoP token request), `token_type` must be DPoP and
/// the header is `DPoP <token>`. Errors never quote the token.
pub(crate) fn parse_success(
    bytes: &[u8],
    endpoint: &url::Url,
    default_lifetime: Duration,
    requested_scopes: &[String],
    dpop: bool,
) -> Result<(BearerHeader, Vec<String>, Duration, bool)> {
    let parsed: TokenResponse = serde_json::from_slice(bytes)
        .map_err(|e| Error::TokenResponse(format!("{endpoint} did not return JSON ({e})")))?;
    let token = match parsed.access_token {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => {
            return Err(Error::TokenResponse(format!(
                "{endpoint}: the response has no `access_token` string"
            )));
        }
    };
    let scheme = if dpop { "DPoP" } else { "Bearer" };
    match parsed.token_type {
        Some(Value::String(t)) if t.eq_ignore_ascii_case(scheme) => {}
        Some(Value::String(t)) if dpop && t.eq_ignore_ascii_case("bearer") => {
            return Err(Error::TokenResponse(format!(
                "{endpoint}: token_type Bearer in answer to a DPoP token request: the server did \
                 not bind the token to the DPoP key (RFC 9449 section 5), and a bearer token is \
                 not used; have DPoP enabled for this client at the server (for example \
                 `dpop_bound_access_tokens`), or set `sender_constraint = \"mtls\"`"
            )));
        }
        Some(Value::String(t)) if !dpop && t.eq_ignore_ascii_case("dpop") => {
            return Err(Error::TokenResponse(format!(
                "{endpoint}: token_type DPoP, but this client sent no DPoP proof: the server \
                 requires DPoP for this client; set `sender_constraint = \"dpop\"`"
            )));
        }
        Some(Value::String(t)) => {
            return Err(Error::TokenResponse(format!(
                "{endpoint}: token_type {:?} is not supported; only Bearer (certificate-bound) tokens are",
                printable(&t)
            )));
        }
        _ => {
            return Err(Error::TokenResponse(format!(
                "{endpoint}: the response has no `token_type`"
            )));
        }
    }
    let (lifetime, from_server) = match parsed.expires_in {
        // The configuration allows 1 s to a day; a `ClientOptions` built in code may hold anything.
        None | Some(Value::Null) => (
            default_lifetime.clamp(Duration::from_secs(1), MAX_TOKEN_LIFETIME),
            false,
        ),
        Some(v) => (expires_in(&v, endpoint)?, true),
    };
    let scope = match parsed.scope {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => requested_scopes.to_vec(),
    };
    // RFC 6750 b64token, which is what a header can carry; the token is not parsed otherwise.
    let token = zeroize::Zeroizing::new(token);
    let text = zeroize::Zeroizing::new(format!("{scheme} {}", token.as_str()));
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        Error::TokenResponse(format!(
            "{endpoint}: the access token has characters that cannot be sent in a header"
        ))
    })?;
    value.set_sensitive(true);
    Ok((BearerHeader(value), scope, lifetime, from_server))
}

/// `expires_in`: a non-negative number of seconds (a numeric string is accepted too); at most a day.
fn expires_in(v: &Value, endpoint: &url::Url) -> Result<Duration> {
    let secs = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) if s.is_finite() && s >= 1.0 => Ok(Duration::from_secs_f64(
            s.min(MAX_TOKEN_LIFETIME.as_secs_f64()),
        )),
        _ => Err(Error::TokenResponse(format!(
            "{endpoint}: `expires_in` is {v}, not a positive number of seconds"
        ))),
    }
}

/// What to do about a token response with an error status but no OAuth error in its body.
fn token_status_next_step(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        429 => {
            "the authorization server is limiting this client's requests: wait a minute and try \
             again (tokens are cached, so a client needs one only every few minutes)"
        }
        500..=599 => {
            "the authorization server itself failed (or a proxy in front of it): try again in a \
             few minutes; if it keeps failing, tell the server's operator, with the time of the \
             request (`-v` logs it)"
        }
        _ => {
            "this is not an OAuth token endpoint's answer: check `issuer_url` (the token endpoint \
             comes from its discovery document) and that no proxy or firewall answers instead"
        }
    }
}

/// What to do about an introspection response with an error status.
fn introspection_status_next_step(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        401 => {
            "; the authorization server did not authenticate this client for introspection: check \
             that `client_id` and `certificate` are the pair registered with the directory (the \
             certificate is the only credential), and that the client is registered for \
             introspection (`tls_client_auth` at the introspection endpoint)"
        }
        403 => "; this client may not introspect: ask the directory to allow it",
        500..=599 => {
            "; the authorization server itself failed: try again in a few minutes; if it keeps \
             failing, tell the server's operator"
        }
        _ => "",
    }
}

/// Whether a token request failed because the server demands a DPoP nonce (RFC 9449 section 8).
fn is_nonce_demand(error: &Error) -> bool {
    matches!(error, Error::TokenRefused { status: 400, error, .. } if error == dpop_header::USE_DPOP_NONCE)
}

/// Server-chosen text, cut and stripped of control characters before it reaches a message.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let mut value = HeaderValue::from_static("Bearer s3cr3t-t0ken");
        value.set_sensitive(true);
        let lease = Lease {
            bearer: BearerHeader(value),
            generation: 7,
        };
        let shown = format!("{lease:?} {:?}", lease.bearer);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("BearerHeader([redacted])"), "{shown}");
    }
}
