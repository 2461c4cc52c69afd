//! State shared by the federation's servers: counters, issued tokens, current faults and the data
//! provider's introspection cache. Tokens are stored under their SHA-256, never in clear, except in
//! the record a test may ask for ([`IssuedTokens`], off by default).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::dpop::Dpop;
use crate::faults::{AsFault, DpFault, FaultTimes};

/// A snapshot of the federation's request counters (also `GET /counters` on the admin listener).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Discovery documents served (both AS listeners), including the data provider's own lookup at start.
    pub discovery_requests: u64,
    /// Token endpoint requests on both AS listeners.
    pub token_requests: u64,
    /// Token endpoint requests on the mTLS listener.
    pub token_requests_mtls: u64,
    /// Token endpoint requests on the plain TLS listener (the top-level endpoint; clients that
    /// ignore `mtls_endpoint_aliases`).
    pub token_requests_plain: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Introspection requests (including the data provider's).
    pub introspection_requests: u64,
    /// Revocation requests.
    pub revocation_requests: u64,
    /// Requests received by the data provider.
    pub dp_requests: u64,
    /// Uploads (`POST`/`PUT /upload`) the data provider read to their end.
    pub uploads_whole: u64,
    /// Uploads whose body broke off (the connection closed or reset before its end).
    pub uploads_broken: u64,
    /// `private_key_jwt` client assertions verified (the client authenticated by one).
    pub assertions_verified: u64,
    /// `private_key_jwt` client assertions refused (`invalid_client`).
    pub assertions_refused: u64,
    /// Token endpoint requests by the `client_id` form field (`<none>` when absent).
    pub per_client_token_requests: BTreeMap<String, u64>,
    /// DPoP proofs accepted (AS and data provider).
    pub dpop_proofs_accepted: u64,
    /// DPoP proofs refused as invalid (`invalid_dpop_proof`), replays included.
    pub dpop_proofs_refused: u64,
    /// Of those, proofs refused because their `jti` was used before.
    pub dpop_replays_refused: u64,
    /// Answers `use_dpop_nonce` (a proof without the current nonce, or a fault).
    pub dpop_nonce_demands: u64,
    /// DPoP-bound tokens refused at the data provider because they came with the Bearer scheme.
    pub dpop_bound_sent_as_bearer: u64,
}

#[derive(Debug, Default)]
pub(crate) struct CounterCells {
    pub discovery_requests: AtomicU64,
    pub token_requests: AtomicU64,
    pub token_requests_mtls: AtomicU64,
    pub token_requests_plain: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub introspection_requests: AtomicU64,
    pub revocation_requests: AtomicU64,
    pub dp_requests: AtomicU64,
    pub uploads_whole: AtomicU64,
    pub uploads_broken: AtomicU64,
    pub assertions_verified: AtomicU64,
    pub assertions_refused: AtomicU64,
    pub per_client: Mutex<BTreeMap<String, u64>>,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl CounterCells {
    pub(crate) fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            discovery_requests: get(&self.discovery_requests),
            token_requests: get(&self.token_requests),
            token_requests_mtls: get(&self.token_requests_mtls),
            token_requests_plain: get(&self.token_requests_plain),
            tokens_issued: get(&self.tokens_issued),
            introspection_requests: get(&self.introspection_requests),
            revocation_requests: get(&self.revocation_requests),
            dp_requests: get(&self.dp_requests),
            uploads_whole: get(&self.uploads_whole),
            uploads_broken: get(&self.uploads_broken),
            assertions_verified: get(&self.assertions_verified),
            assertions_refused: get(&self.assertions_refused),
            per_client_token_requests: self
                .per_client
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            ..Counters::default()
        }
    }

    pub(crate) fn bump_client(&self, client_id: &str) {
        if let Ok(mut m) = self.per_client.lock() {
            *m.entry(client_id.to_owned()).or_insert(0) += 1;
        }
    }
}

/// What the AS remembers about an issued token.
#[derive(Clone, Debug)]
pub(crate) struct TokenRecord {
    pub client_id: String,
    pub scope: String,
    pub iat: u64,
    pub exp: u64,
    /// `cnf.x5t#S256`: thumbprint of the certificate the token is bound to.
    pub x5t: String,
    /// `cnf.jkt`: thumbprint of the DPoP key the token is bound to (a DPoP token request).
    pub jkt: Option<String>,
    pub revoked: bool,
    /// `sub`: the household whose consent the token carries (`ib1`); `None` for a
    /// `client_credentials` token.
    pub sub: Option<String>,
}

/// Key of a token in the stores: its SHA-256.
pub(crate) type TokenKey = [u8; 32];

pub(crate) fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// A short, non-reversible label for logs.
pub(crate) fn token_label(token: &str) -> String {
    token_key(token)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The access tokens issued (or the client assertions received), in clear and in order, kept only
/// when [`crate::FederationConfig::record_issued_tokens`] is set: for tests that search what a
/// client printed, logged or wrote for every token it was given (every assertion it made). Its `Debug` shows the count, never a token.
#[derive(Default)]
pub(crate) struct IssuedTokens {
    /// `None`: not recording.
    tokens: Mutex<Option<Vec<String>>>,
}

impl IssuedTokens {
    pub(crate) fn recording() -> IssuedTokens {
        IssuedTokens {
            tokens: Mutex::new(Some(Vec::new())),
        }
    }

    /// Keep `token` when recording.
    pub(crate) fn record(&self, token: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tokens.as_mut() {
            t.push(token.to_owned());
        }
    }

    /// Every token recorded, oldest first; `None` when not recording.
    pub(crate) fn all(&self) -> Option<Vec<String>> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.tokens.lock().unwrap_or_else(|p| p.into_inner()) {
            None => f.write_str("IssuedTokens(off)"),
            Some(t) => write!(f, "IssuedTokens({} recorded, redacted)", t.len()),
        }
    }
}

/// A cached introspection answer at the data provider.
#[derive(Clone, Debug)]
pub(crate) struct CachedIntrospection {
    pub body: serde_json::Value,
    pub until: Instant,
}

/// Everything the servers share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub counters: CounterCells,
    pub as_fault: Mutex<Option<AsFault>>,
    pub dp_fault: Mutex<Option<DpFault>>,
    pub tokens: Mutex<HashMap<TokenKey, TokenRecord>>,
    pub introspection_cache: Mutex<HashMap<TokenKey, CachedIntrospection>>,
    pub fault_times: FaultTimes,
    /// The tokens in clear, for tests only (empty and off unless asked for).
    pub issued: IssuedTokens,
    /// The client assertions received, in clear, for tests only (recorded with `issued`).
    pub assertions: IssuedTokens,
    /// The `jti`s of client assertions, against replays.
    pub seen_jtis: crate::assertion::SeenJtis,
    /// DPoP: nonces, seen `jti`s, the proofs received (recorded like `issued`) and counters.
    pub dpop: Dpop,
    /// DPoP token requests without a proof are refused (`FederationConfig::dpop_required`).
    pub dpop_required: bool,
    /// While true, the token endpoint holds every request it has counted until it turns false
    /// ([`crate::Federation::hold_token_requests`]).
    pub token_gate: TokenGate,
}

/// A gate for token requests: closed, they wait at the token endpoint until it opens.
#[derive(Debug)]
pub(crate) struct TokenGate(tokio::sync::watch::Sender<bool>);

impl Default for TokenGate {
    fn default() -> Self {
        TokenGate(tokio::sync::watch::Sender::new(false))
    }
}

impl TokenGate {
    pub(crate) fn set_held(&self, held: bool) {
        self.0.send_replace(held);
    }

    /// Wait while the gate is closed.
    pub(crate) async fn pass(&self) {
        let mut rx = self.0.subscribe();
        // An error means the sender is gone: nothing holds the request any more.
        let _ = rx.wait_for(|held| !*held).await;
    }
}

impl Shared {
    /// Every counter, the DPoP ones included.
    pub(crate) fn snapshot(&self) -> Counters {
        let d = &self.dpop.counters;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            dpop_proofs_accepted: get(&d.accepted),
            dpop_proofs_refused: get(&d.refused),
            dpop_replays_refused: get(&d.replays),
            dpop_nonce_demands: get(&d.nonce_demands),
            dpop_bound_sent_as_bearer: get(&d.bearer_refused),
            ..self.counters.snapshot()
        }
    }

    pub(crate) fn as_fault(&self) -> Option<AsFault> {
        self.as_fault.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn dp_fault(&self) -> Option<DpFault> {
        self.dp_fault.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn set_as_fault(&self, f: Option<AsFault>) {
        if let Ok(mut g) = self.as_fault.lock() {
            *g = f;
        }
    }

    pub(crate) fn set_dp_fault(&self, f: Option<DpFault>) {
        if let Ok(mut g) = self.dp_fault.lock() {
            *g = f;
        }
    }

    /// Mark every issued token revoked and forget the data provider's cached introspections.
    pub(crate) fn revoke_all(&self) {
        if let Ok(mut t) = self.tokens.lock() {
            t.values_mut().for_each(|r| r.revoked = true);
        }
        if let Ok(mut c) = self.introspection_cache.lock() {
            c.clear();
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
