//! fapi-host: call Financial-grade API (FAPI) protected endpoints from Rust, or from sandboxed
//! WebAssembly plugins that never see a credential.
//!
//! What it is:
//! - [`FapiClient`]: the Rust counterpart of the reference Python `FAPISession`. It discovers the
//!   authorization server, gets certificate-bound tokens with `client_credentials` over mutual TLS
//!   when needed, and makes every protected call look like a plain HTTP call.
//! - The `fapi-host` binary around it (`fetch`, `token`, `introspect`, `check`, `dev`, `run`,
//!   `demo`, `batch`, `proxy`, `serve`).
//!
//! Threat model, in short:
//! - The private key and every access token stay inside this process: the key lives only in
//!   rustls after [`Identity::load`] (or, with a `pkcs11:` key, only in its token, which signs
//!   each handshake: [`pkcs11`]), tokens only in the token cache, and no public function
//!   returns either (except `danger_reveal_token`, which exists for `fapi-host token
//!   --reveal-token`). They never reach a log line, an error message or a guest.
//! - Tokens are sent only in the `Authorization` header of requests to the URL the caller named;
//!   redirects are never followed, so a token never follows a redirect to another origin.
//! - With DPoP (`sender_constraint = "dpop"`), the DPoP key lives only in the token manager (one
//!   per authorization server), and each proof only in the one request it was made for: proofs
//!   are treated like tokens (docs/dpop.md).
//! - TLS is rustls with ring, TLS 1.3 or TLS 1.2 with FAPI suites, full verification, always;
//!   the authorization server and the data providers each against their own trust anchors.
//!
//! Where things are:
//!
//! | module | what it holds |
//! |---|---|
//! | `client` | [`FapiClient`]: requests, retries, `invalid_token` replay; its requests and responses |
//! | `token` | the token cache and its refresh; token requests and introspection |
//! | `consent` | a household's consent (IB1): metadata, PAR, PKCE, the loopback redirect |
//! | `grant_tokens` | a grant's tokens on a client's requests, refreshed once per expiry |
//! | `discovery` | the authorization server's metadata, fetched and checked |
//! | `dpop` | DPoP (RFC 9449): the key of one authorization server, proofs, nonces per origin |
//! | `credentials` | [`Identity`]: the key and certificate, loaded and checked (PEM, encrypted PKCS#8) |
//! | [`pkcs11`] | keys in a PKCS#11 token: URIs, sessions, the rustls signing key |
//! | `tls` | the rustls configurations of an identity (TLS 1.2 suites) and the HTTP clients built on them |
//! | `trust` | which anchors verify which class of server (`[trust]`): the authorization server, the data providers |
//! | `net` | name resolution (`[client.resolve]`) and the authorization server's addresses |
//! | `policy` | the egress policy of guests, the one table of headers the host owns, bounded quoting |
//! | `config` | [`Settings`]: the configuration file, environment and flags, validated |
//! | [`profile`] | ecosystem profiles: client authentication, sender constraint, TLS suites, trust |
//! | `error` | [`Error`], [`ErrorKind`], [`Warning`] |
//! | `grants` | [`GrantStore`]: households' consents and their tokens, one private file each |
//! | [`jws`] | JWS signing for client assertions and DPoP proofs, by any key the host holds |
//! | `retry` | backoff and `Retry-After` |
//! | `time` | times as RFC 3339 in UTC, for any time a certificate can hold |
//! | [`www_authenticate`] | RFC 6750 challenges |
//! | [`sandbox`] | the wasm sandbox: engine, limits, the two guest interfaces, audit |
//! | [`batch`] | `fapi-host batch`: input, naming, the engine, the manifest |
//! | [`proxy`] | `fapi-host proxy`: plain HTTP on loopback in, mTLS and the token out |
//! | `local_http` | one connection of the local servers (`proxy`, `serve`), bounded |
//! | [`serve`] | `fapi-host serve`: a service component answers loopback callers, an instance each |
//! | [`cli`] | the `fapi-host` commands |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// `Debug` for a type that holds a secret (a token, a key): its name and `[redacted]`, never its
/// content. The one pattern for every such type of the crate.
macro_rules! redacted_debug {
    ($($t:ident),+ $(,)?) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "([redacted])"))
            }
        }
    )+};
}

pub mod batch;
#[cfg(feature = "sandbox")]
pub mod cli;
mod client;
mod client_auth;
mod config;
mod consent;
mod credentials;
mod discovery;
mod dpop;
mod error;
mod grant_tokens;
mod grants;
pub mod jws;
#[cfg(feature = "sandbox")]
mod local_http;
mod net;
pub mod pkcs11;
mod policy;
pub mod profile;
#[cfg(feature = "sandbox")]
pub mod proxy;
mod retry;
#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "sandbox")]
pub mod serve;

/// The example plugins bundled in the binary (built from `guest/examples` by `build.rs`):
/// `CSV_SUMMARY` (fetch the consumption CSV and summarise it) and `FETCH` (fetch URLs to stdout).
#[cfg(feature = "sandbox")]
pub mod examples {
    include!(concat!(env!("OUT_DIR"), "/embedded_guests.rs"));
}
mod time;
mod tls;
mod token;
mod trust;
pub mod www_authenticate;

pub use client::{
    AuthProblem, FapiClient, FapiClientBuilder, FapiRequest, FapiResponse, INTERACTION_ID,
    RedactedHeaders, RequestBuilder, StreamedBody, parse_header,
};
pub use config::{
    AuthSettings, ClientOptions, DEFAULT_CONFIG_FILE, Overrides, SandboxSettings, Settings,
    TrustSettings,
};
pub use credentials::{EXPIRY_WARNING, Identity, thumbprint};
pub use discovery::{ServerMetadata, check_document, oauth_metadata_url, well_known_url};
pub use error::{Error, ErrorKind, Result, Warning, WarningKind};
pub use grants::{GrantInfo, GrantState, GrantStore, check_grant_name};
pub use net::{AuthorizationServerAddresses, ResolveOverrides};
pub use policy::{
    Denial, HEADER_RULES, HeaderCaller, HeaderOwner, HeaderRule, MAX_QUOTED, Policy, bounded,
    check_headers, check_method, check_parsed_method, header_refusal, refused_header,
};
pub use retry::{is_idempotent, is_retryable_status};
pub use tls::fapi_provider;
pub use token::{FORCED_REFRESH_MIN_AGE, TokenInfo};

/// The transport `fapi-host proxy` forwards on, for `fapi-bench bare-proxy` (the floor of what
/// the proxy costs on its own stack). Not a stable API.
#[doc(hidden)]
pub mod forwarding {
    pub use crate::client::direct::{Body, BoxError, Direct};

    /// The proxy's HTTP/1.1 client over `tls`, with the default options and no name table.
    pub fn client(tls: rustls::ClientConfig) -> Direct {
        Direct::new(
            std::sync::Arc::new(tls),
            &crate::ClientOptions::default(),
            crate::net::Resolver::new(crate::ResolveOverrides::new()),
        )
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): the parsers of everything that
/// comes from outside the host, each a pure function of its input.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::Duration;

    /// Parse a token endpoint's success response. `Ok` gives the granted scopes and lifetime; the
    /// bearer value stays inside. Errors are returned as their display text.
    pub fn token_response(
        body: &[u8],
        requested_scopes: &[String],
    ) -> std::result::Result<(Vec<String>, Duration, bool), String> {
        let endpoint = url::Url::parse("https://as.example/token").expect("a valid URL");
        crate::token::parse_success(
            body,
            &endpoint,
            Duration::from_secs(300),
            requested_scopes,
            false,
        )
        .map(|(bearer, scope, lifetime, from_server)| {
            debug_assert!(bearer.header().as_bytes().starts_with(b"Bearer "));
            (scope, lifetime, from_server)
        })
        .map_err(|e| e.to_string())
    }
}
