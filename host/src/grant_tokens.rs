//! The token source of a client that uses a grant ([`crate::FapiClient::for_grant`]): the grant's
//! access token, refreshed when due, once per expiry for all clones of the client and, under the
//! grant's file lock, for all processes that share the grant store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::consent::{ConsentMetadata, consent_metadata, token_request};
use crate::error::{Error, Result};
use crate::grants::{Grant, GrantInfo, GrantState, GrantStore, now_secs};
use crate::token::{
    BearerHeader, FORCED_REFRESH_MIN_AGE, Flights, Lease, REFRESH_RETRY_MAX, REFRESH_RETRY_MIN,
};

/// The access token currently served for a grant.
struct Current {
    bearer: BearerHeader,
    /// When it is refreshed ([`GrantTokens::refresh_point`]).
    refresh_at: u64,
    generation: u64,
    /// It replaced a token a resource server refused (`invalid_token`).
    forced: bool,
    obtained: Instant,
}

/// The token source of a client that uses a grant: the grant's access token, refreshed when due
/// (one refresh at a time in this process; across processes, under the grant's file lock).
pub(crate) struct GrantTokens {
    store: GrantStore,
    name: String,
    issuer: String,
    client_id: String,
    http: reqwest::Client,
    timeout: Duration,
    margin: Duration,
    meta: tokio::sync::Mutex<Option<Arc<ConsentMetadata>>>,
    current: std::sync::Mutex<Option<Current>>,
    /// The SHA-256 of the last access token a resource server refused (`invalid_token`): while
    /// the grant holds it, it is refreshed however long the token would still live.
    refused: std::sync::Mutex<Option<[u8; 32]>>,
    /// Held while the grant is read or refreshed: one refresh at a time in this process.
    flight: tokio::sync::Mutex<()>,
    /// The refreshes: callers that waited while one failed get its error.
    flights: Flights,
    generation: AtomicU64,
    refreshes: AtomicU64,
}

impl std::fmt::Debug for GrantTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantTokens")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl GrantTokens {
    /// The token source of grant `name`, which must exist, be active and have been given by
    /// `issuer` to `client_id`.
    pub(crate) fn new(
        store: GrantStore,
        name: &str,
        issuer: &str,
        client_id: &str,
        http: reqwest::Client,
        timeout: Duration,
        margin: Duration,
    ) -> Result<GrantTokens> {
        let tokens = GrantTokens {
            store,
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            http,
            timeout,
            margin,
            meta: tokio::sync::Mutex::new(None),
            current: std::sync::Mutex::new(None),
            refused: std::sync::Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
            flights: Flights::default(),
            generation: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        };
        tokens.check(&tokens.store.load(name)?)?;
        Ok(tokens)
    }

    /// Refresh requests this process sent for the grant.
    pub(crate) fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    fn check(&self, grant: &Grant) -> Result<()> {
        let i = &grant.info;
        if i.issuer != self.issuer || i.client_id != self.client_id {
            return Err(Error::Grant(format!(
                "grant {:?} was given by {} to {}, not by `issuer_url` {} to `client_id` {}: use \
                 the configuration it was made with, or add it again",
                self.name, i.issuer, i.client_id, self.issuer, self.client_id
            )));
        }
        if i.state == GrantState::Ended {
            return Err(Error::ConsentEnded(self.name.clone()));
        }
        Ok(())
    }

    /// When a grant's access token is refreshed: `token_refresh_margin` before it expires, at
    /// most half its lifetime before.
    fn refresh_point(&self, info: &GrantInfo) -> u64 {
        let obtained = info.last_refreshed.unwrap_or(info.created);
        let lifetime = info.access_expires_at.saturating_sub(obtained);
        info.access_expires_at
            .saturating_sub(self.margin.as_secs().min(lifetime / 2))
    }

    fn fresh(&self, info: &GrantInfo) -> bool {
        now_secs() < self.refresh_point(info)
    }

    /// Whether `grant` holds the access token a resource server refused last.
    fn holds_refused(&self, grant: &Grant) -> bool {
        let refused = *self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.is_some_and(|r| r == digest(grant.access.expose_secret()))
    }

    /// A valid access token for one request: the one served (fresh: no I/O, no await on the lock
    /// of the cache), else the grant's as stored, refreshed first when due or when it is the one
    /// a resource server refused ([`GrantTokens::invalidate`]). The other callers meanwhile wait
    /// for this one and share its token: one refresh for all of them.
    pub(crate) async fn bearer(&self) -> Result<Lease> {
        if let Some(lease) = self.fresh_lease() {
            return Ok(lease);
        }
        let waited_from = self.flights.mark();
        let _flight = self.flight.lock().await;
        if let Some(lease) = self.fresh_lease() {
            return Ok(lease);
        }
        self.flights.failed_since(waited_from)?;
        let grant = self.store.load(&self.name)?;
        self.check(&grant)?;
        let refused = self.holds_refused(&grant);
        if self.fresh(&grant.info) && !refused {
            return self.serve(&grant, refused);
        }
        let valid_until = grant.info.access_expires_at;
        let error = match self.refresh(grant).await {
            Ok(grant) => return self.serve(&grant, refused),
            Err(e) => e,
        };
        // The server down, or refusing for another reason than the consent's end, while the
        // current token is still valid (and not refused): it serves until it expires, a refresh
        // tried again after a while.
        if !refused && !matches!(error, Error::ConsentEnded(_)) && now_secs() < valid_until {
            let grant = self.store.load(&self.name)?;
            self.check(&grant)?;
            let expires = grant.info.access_expires_at;
            if now_secs() < expires && !self.holds_refused(&grant) {
                let retry = (self.margin / 4).clamp(REFRESH_RETRY_MIN, REFRESH_RETRY_MAX);
                let retry_at = (now_secs() + retry.as_secs().max(1)).min(expires);
                tracing::warn!(
                    grant = %self.name,
                    error = %error,
                    expires_in_s = expires.saturating_sub(now_secs()),
                    "refreshing the grant's access token failed; the current token is used \
                     until it expires and a refresh is tried again"
                );
                self.flights.ended(Ok(()))?;
                return self.serve_until(&grant, false, retry_at);
            }
        }
        self.flights.ended(Err(error))
    }

    fn fresh_lease(&self) -> Option<Lease> {
        let slot = self.current.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|c| now_secs() < c.refresh_at)
            .map(|c| Lease {
                bearer: c.bearer.clone(),
                generation: c.generation,
            })
    }

    fn serve(&self, grant: &Grant, forced: bool) -> Result<Lease> {
        self.serve_until(grant, forced, self.refresh_point(&grant.info))
    }

    /// Serve `grant`'s access token until `refresh_at` (seconds since the epoch).
    fn serve_until(&self, grant: &Grant, forced: bool, refresh_at: u64) -> Result<Lease> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // Checked when the token was received; a file edited since may hold anything.
        let bearer = BearerHeader::from_token(grant.access.expose_secret()).ok_or_else(|| {
            Error::Grant(format!(
                "grant {:?} holds an access token that cannot be sent in a header (the file was \
                 edited?): remove it with fapi-host grant remove {} and add it again",
                self.name, self.name
            ))
        })?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Current {
            bearer: bearer.clone(),
            refresh_at,
            generation,
            forced,
            obtained: Instant::now(),
        });
        Ok(Lease { bearer, generation })
    }

    /// A resource server refused the token of `generation` (`invalid_token`): forget it, and
    /// have the next request refresh the grant even though the token has not expired (under the
    /// grant's file lock: a process that finds the grant already holding another token uses
    /// that one instead). True when the request may be sent again with the next token; false
    /// when the refused token itself replaced a refused one less than
    /// [`FORCED_REFRESH_MIN_AGE`] ago (the server refuses fresh tokens too: no loop of
    /// refreshes).
    pub(crate) fn invalidate(&self, generation: u64) -> bool {
        let mut slot = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(c) if c.generation == generation => {
                if c.forced && c.obtained.elapsed() < FORCED_REFRESH_MIN_AGE {
                    return false;
                }
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(digest(c.bearer.expose_token()));
                *slot = None;
                true
            }
            // Dropped already by another caller (its refresh serves this one too), or replaced.
            _ => true,
        }
    }

    async fn metadata(&self) -> Result<Arc<ConsentMetadata>> {
        let mut slot = self.meta.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = Arc::new(consent_metadata(&self.http, &self.issuer, self.timeout).await?);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Refresh `seen` (the grant as read, due) under the grant's file lock: re-read the grant
    /// (another process may have refreshed it meanwhile: then its tokens serve, while they have
    /// not expired), else spend the refresh token and store the rotated one before the old one
    /// is forgotten. `invalid_grant` ends the grant.
    async fn refresh(&self, seen: Grant) -> Result<Grant> {
        let meta = self.metadata().await?;
        let store = self.store.clone();
        let name = self.name.clone();
        let lock = tokio::task::spawn_blocking(move || store.lock(&name))
            .await
            .map_err(|e| Error::Grant(format!("waiting for the grant's lock failed: {e}")))??;
        let mut grant = self.store.load(&self.name)?;
        self.check(&grant)?;
        let replaced = grant.access.expose_secret() != seen.access.expose_secret();
        let usable =
            self.fresh(&grant.info) || replaced && now_secs() < grant.info.access_expires_at;
        if usable && !self.holds_refused(&grant) {
            tracing::debug!(grant = %self.name, "the grant was refreshed by another process");
            drop(lock);
            return Ok(grant);
        }
        let Some(refresh) = grant.refresh.as_ref() else {
            return Err(Error::Grant(format!(
                "grant {:?} has expired and holds no refresh token: run fapi-host grant add {} \
                 again",
                self.name, self.name
            )));
        };
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(grant = %self.name, "refreshing the grant's access token");
        let answer = token_request(
            &self.http,
            &meta.token_endpoint,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &self.client_id),
                ("refresh_token", refresh.expose_secret()),
            ],
            self.timeout,
        )
        .await?;
        let issued = match answer {
            Ok(i) => i,
            Err((error, _)) if error == "invalid_grant" => {
                grant.info.state = GrantState::Ended;
                self.store.save(&grant)?;
                drop(lock);
                tracing::warn!(grant = %self.name, "the consent has ended or was revoked");
                return Err(Error::ConsentEnded(self.name.clone()));
            }
            Err((_, message)) => {
                return Err(Error::Grant(format!(
                    "the authorization server refused to refresh grant {:?} ({message}); the \
                     grant is kept and tried again at the next request",
                    self.name
                )));
            }
        };
        let now = now_secs();
        grant.info.last_refreshed = Some(now);
        grant.info.access_expires_at = now + issued.expires_in;
        if let Some(scope) = issued.scope {
            grant.info.scope = scope;
        }
        grant.access = issued.access;
        // A server that does not rotate keeps the old refresh token valid.
        if let Some(r) = issued.refresh {
            grant.refresh = Some(r);
        }
        // Durable before the old refresh token is forgotten (it is spent: the new one is all
        // there is).
        self.store.save(&grant)?;
        drop(lock);
        Ok(grant)
    }
}

/// The SHA-256 of a token: what is kept of a refused one.
fn digest(token: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(token.as_ref()).into()
}
