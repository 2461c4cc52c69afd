//! A complete local Open Energy-style federation, for `fapi-host dev`, for tests, and for curl or
//! Python users.
//!
//! - An **authorization server** with two HTTPS listeners and one issuer: OIDC discovery (with
//!   `mtls_endpoint_aliases`), `client_credentials` with RFC 8705 `tls_client_auth` (or RFC 7523
//!   `private_key_jwt` over mTLS, [`FederationConfig::private_key_jwt`]), opaque
//!   certificate-bound tokens (`cnf.x5t#S256`), RFC 7662 introspection and RFC 7009 revocation.
//! - A **data provider** that validates every request the Open Energy way (client certificate,
//!   one Bearer header, introspection over mTLS, `active`/`exp`/`iat`/thumbprint/scope checks,
//!   RFC 6750 errors, `x-fapi-interaction-id` echo) and serves deterministic data.
//! - **DPoP** (RFC 9449) at both servers when a client sends proofs (or must:
//!   [`FederationConfig::dpop_required`]): proofs verified with ring, nonces demanded and rotated,
//!   replays refused, tokens bound to the key (`cnf.jkt`), a DPoP-bound token refused as Bearer.
//! - An **admin listener** (plain HTTP) for counters, revocation and fault injection.
//! - A generated **PKI** (ECDSA P-256): CA, server certificate, registered client identities.
//!
//! Threat model, such as it is: this is a test fixture. Every listener binds 127.0.0.1 only; keys
//! are written 0600; tokens are stored and logged only as SHA-256 digests (unless a test sets
//! [`FederationConfig::record_issued_tokens`] to search for them); nothing here should face a
//! network. The one crypto provider is ring, passed explicitly to every rustls builder.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fapi_federation::Error> {
//! let fed = fapi_federation::Federation::start_default().await?;
//! let consumer = fed.pki().client("consumer").expect("registered");
//! let http = fed.pki().http_client(Some(consumer))?;
//! # let _ = http; Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod admin;
mod assertion;
mod auth_server;
mod capture;
mod consent;
pub mod data;
mod data_provider;
mod dev;
mod dpop;
mod error;
mod faults;
mod federation;
mod identity;
mod introspection;
mod pki;
mod softhsm;
mod state;
mod tls;

pub use assertion::{JWT_BEARER, MAX_FUTURE, PrivateKeyJwt, SIGNING_ALGS};
pub use capture::{Capture, capture_logs};
pub use consent::{ConsentCounters, ISSUER_PATH, Ib1Options, LICENCE, directory_url};
pub use dev::{DevExternalIssuer, DevOptions, run_dev};
pub use error::Error;
pub use faults::{AsFault, DpFault};
pub use federation::{ExternalIssuer, Federation, FederationConfig};
pub use identity::{ClientIdentity, ClientSpec, ServerIdentity, subject_dn, thumbprint};
pub use pki::Pki;
pub use softhsm::{SOFTHSM_MODULES, SoftHsm};
pub use state::Counters;
pub use tls::one_reply_server;
