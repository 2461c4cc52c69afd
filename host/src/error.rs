//! The host's error type.
//!
//! Every variant says what went wrong and how to fix it, and none of them can carry a token or key
//! material: messages are built from settings, URLs, status codes and server-chosen error codes only.

use std::fmt;

/// Everything that can go wrong in the host. More cases may come (a match needs a `_` arm).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration (file, environment or flags) is missing a setting or has a bad value.
    /// Fix: the message names the setting and the file.
    #[error("configuration error: {0}")]
    Config(String),

    /// The private key or certificate could not be used (unreadable, wrong format, expired,
    /// not matching, too weak). Fix: the message names the file and what to do.
    #[error("credentials error: {0}")]
    Credentials(String),

    /// The authorization server's discovery document could not be fetched or is not acceptable
    /// (issuer mismatch, http endpoints, not the configured client authentication method). Fix:
    /// check `issuer_url` and `token_endpoint_auth_method`.
    #[error("discovery error: {0}")]
    Discovery(String),

    /// The authorization server refused to issue a token (RFC 6749 section 5.2).
    #[error("the authorization server refused the token request (HTTP {status}): {error}{}{}", describe(.description), fix(.error, .assertion_hint))]
    TokenRefused {
        /// HTTP status of the token response.
        status: u16,
        /// The RFC 6749 `error` code, e.g. `invalid_client` or `invalid_scope`.
        error: String,
        /// The server's `error_description`, if any.
        description: Option<String>,
        /// With `private_key_jwt`, what to check when the server refused the client assertion
        /// (`invalid_client`): the registered key and `kid`, the clock, the `aud`. Never the
        /// assertion itself.
        assertion_hint: Option<String>,
    },

    /// The authorization server answered the token request with something that is not a usable
    /// token response (not JSON, missing fields, wrong token type, a 5xx status).
    #[error("unusable token response: {0}")]
    TokenResponse(String),

    /// No token could be had because the authorization server could not be reached: connection
    /// refused or reset, no answer in time, or TLS with it failed (`tls`). Nothing was sent to the
    /// data provider. Every request needs the token, so every other one would fail the same way
    /// until the server is back. Fix: the message says how the connection failed.
    #[error("no token: {} ({message})", unreachable_how(*.tls))]
    TokenUnreachable {
        /// How the connection failed (context and cause; never a token).
        message: String,
        /// TLS with the server failed (a certificate or trust problem: trying again will not help).
        tls: bool,
    },

    /// TLS failed (untrusted server certificate, wrong host name, handshake failure).
    #[error("TLS error: {0}")]
    Tls(String),

    /// The network failed (connection refused or reset, a body cut short).
    #[error("network error: {0}")]
    Network(String),

    /// Nothing arrived in time: no response head within the timeout, or a body that stalled
    /// longer than `timeout_seconds` between chunks. The message says which and the setting.
    #[error("network error: {0}")]
    Timeout(String),

    /// The request itself is not acceptable (bad URL, forbidden header, bad method).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The host refused to connect: the request's host resolved to an address and port of the
    /// authorization server, which guests may never reach. Nothing was sent.
    #[error("refused: {0}")]
    Denied(String),

    /// A response was larger than the configured limit.
    #[error("response too large: {0}")]
    TooLarge(String),

    /// Local I/O (writing an output file, reading a body file) failed.
    #[error("I/O error: {0}")]
    Io(String),

    /// A WebAssembly component could not be loaded or linked (not a component, imports that
    /// fapi-host does not provide, exports it does not know). Fix: build it for wasm32-wasip2
    /// against wit/fapi.wit.
    #[error("component error: {0}")]
    Component(String),

    /// A DPoP exchange (RFC 9449) could not complete: a server demanded a nonce twice in a row, or
    /// demanded one without giving it. Nothing more was sent. Fix: the message says which server;
    /// its operator can fix it.
    #[error("DPoP error: {0}")]
    Dpop(String),

    /// The grant store or a grant in it cannot be used: a store readable by others, a corrupt,
    /// truncated or foreign grant file, an unknown grant, a bad grant name, a consent flow that
    /// did not complete. Fix: the message names the file or the grant and what to do.
    #[error("grant error: {0}")]
    Grant(String),

    /// The household's consent has ended or was revoked (the authorization server refused the
    /// grant's refresh token with `invalid_grant`); the grant is marked ended. Fix: run
    /// `fapi-host grant add NAME` again. The field is the grant's name.
    #[error("grant {0:?}: the consent has ended or was revoked: run grant add {0} again")]
    ConsentEnded(String),
}

fn unreachable_how(tls: bool) -> &'static str {
    if tls {
        "TLS with the authorization server failed"
    } else {
        "the authorization server could not be reached"
    }
}

/// ` (description)`, or nothing when there is none (an RFC 6749 `error_description`, say).
pub(crate) fn describe(description: &Option<String>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}

/// How to fix the RFC 6749 errors a client can fix itself (servers often say no more than
/// "client authentication failed"); `assertion_hint` replaces the `tls_client_auth` advice when
/// the client authenticated with a `private_key_jwt` assertion.
fn fix(error: &str, assertion_hint: &Option<String>) -> String {
    if let (Some(hint), "invalid_client") = (assertion_hint, error) {
        return format!("; {hint}");
    }
    let fix = match error {
        "invalid_client" => {
            "; check `client_id` and that the certificate is the one registered for it (with \
             tls_client_auth the certificate's subject DN must match the registration)"
        }
        "invalid_scope" => {
            "; request only scopes the client is registered for (`requested_scopes`)"
        }
        "unauthorized_client" => "; the client is not registered for the client_credentials grant",
        "invalid_dpop_proof" => {
            "; the server refused the DPoP proof (RFC 9449 section 4.3): check the clock of this \
             machine (a proof's `iat` is now), and that the server accepts the key's algorithm \
             (`dpop_signing_alg_values_supported`)"
        }
        _ => "",
    };
    fix.to_owned()
}

/// What kind of failure an [`Error`] is, for exit codes and for guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Configuration or credentials: fix the settings.
    Config,
    /// The authorization server (discovery or token endpoint).
    Authorization,
    /// TLS or the network.
    Network,
    /// The request was refused locally.
    InvalidRequest,
    /// A size limit was hit.
    TooLarge,
    /// Local I/O.
    Io,
    /// A component could not be loaded.
    Component,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::Credentials(_) | Error::Grant(_) => ErrorKind::Config,
            Error::ConsentEnded(_) => ErrorKind::Authorization,
            Error::Discovery(_)
            | Error::TokenRefused { .. }
            | Error::TokenResponse(_)
            | Error::Dpop(_) => ErrorKind::Authorization,
            Error::Tls(_)
            | Error::Network(_)
            | Error::Timeout(_)
            | Error::TokenUnreachable { .. } => ErrorKind::Network,
            Error::InvalidRequest(_) | Error::Denied(_) => ErrorKind::InvalidRequest,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::Io(_) => ErrorKind::Io,
            Error::Component(_) => ErrorKind::Component,
        }
    }

    /// A TLS failure (with the data provider or the authorization server): a certificate or trust
    /// problem, which trying again does not mend.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            Error::Tls(_) | Error::TokenUnreachable { tls: true, .. }
        )
    }

    /// The token could not be had because the authorization server could not be reached: every
    /// request of this client fails the same way until it is back.
    pub fn is_token_unreachable(&self) -> bool {
        matches!(self, Error::TokenUnreachable { .. })
    }

    /// An error of the token step (discovery and the token request), as the callers of the client
    /// see it: a network or TLS failure becomes [`Error::TokenUnreachable`], so that it is not
    /// taken for the data provider's.
    pub(crate) fn in_token_step(self) -> Error {
        match self {
            Error::Network(message) | Error::Timeout(message) => Error::TokenUnreachable {
                message,
                tls: false,
            },
            Error::Tls(message) => Error::TokenUnreachable { message, tls: true },
            other => other,
        }
    }

    /// Classify a reqwest error, without its URL (URLs are shown by the caller where useful).
    pub(crate) fn from_reqwest(context: &str, err: reqwest::Error) -> Error {
        let err = err.without_url();
        if let Some(denied) = find_in_chain::<crate::net::AddressDenied>(&err) {
            return Error::Denied(format!("{context}: {denied}"));
        }
        let chain = error_chain(&err);
        if err.is_timeout() {
            Error::Timeout(format!("{context}: timed out ({chain})"))
        } else if let Some(tls) = rustls_error(&err) {
            tls_failure(context, &chain, tls)
        } else {
            Error::Network(format!("{context}: {chain}"))
        }
    }

    /// Classify the failure of a request sent on hyper's client directly as
    /// [`Error::from_reqwest`] does: refused by the guard, timed out connecting, TLS, or the
    /// network.
    pub(crate) fn from_direct(context: &str, err: &hyper_util::client::legacy::Error) -> Error {
        if let Some(denied) = find_in_chain::<crate::net::AddressDenied>(err) {
            return Error::Denied(format!("{context}: {denied}"));
        }
        let chain = error_chain(err);
        if find_in_chain::<crate::client::ConnectTimeout>(err).is_some() {
            Error::Timeout(format!("{context}: timed out ({chain})"))
        } else if let Some(tls) = rustls_error(err) {
            tls_failure(context, &chain, tls)
        } else {
            Error::Network(format!("{context}: {chain}"))
        }
    }

    /// Classify the failure of a handshake made without reqwest (`check`'s look at the
    /// authorization server's TLS) as [`Error::from_reqwest`] does.
    #[cfg_attr(not(feature = "sandbox"), allow(dead_code))]
    pub(crate) fn from_handshake(context: &str, err: &std::io::Error) -> Error {
        let chain = error_chain(err);
        if let Some(tls) = rustls_error(err) {
            tls_failure(context, &chain, tls)
        } else if matches!(
            err.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) {
            Error::Timeout(format!("{context}: timed out ({chain})"))
        } else {
            Error::Network(format!("{context}: {chain}"))
        }
    }
}

/// A TLS failure with what to do about it.
fn tls_failure(context: &str, chain: &str, tls: &rustls::Error) -> Error {
    // A server outside its class's anchors: the class, the anchors tried and the key to change
    // say it all (rustls's own words for it would only repeat them).
    if let Some(untrusted) = untrusted(tls) {
        return Error::Tls(format!("{context}: {untrusted}; {}", untrusted.fix()));
    }
    match tls_hint(tls) {
        Some(hint) => Error::Tls(format!("{context}: {chain}; {hint}")),
        None => Error::Tls(format!("{context}: {chain}")),
    }
}

/// The first error of type `T` in `err`'s chain.
fn find_in_chain<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The error of rustls itself somewhere in `err`'s chain: a certificate it refused, an alert the
/// peer sent, a protocol violation. A connection closed or reset during the handshake has none
/// (rustls reports no error of its own then): that is the network's failure, worth trying again.
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error's `source` skips the error it wraps (tokio-rustls hands rustls's error
        // over in one, and hyper-rustls wraps that in another): look inside instead.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// The refusal of a server whose chain ends at none of its class's anchors (`[trust]`).
fn untrusted(err: &rustls::Error) -> Option<&crate::trust::Untrusted> {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<crate::trust::Untrusted>()
        }
        _ => None,
    }
}

/// What to do about the common TLS failures: a server certificate this client does not accept,
/// or a server that does not accept this client's certificate.
fn tls_hint(err: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            Cert::UnknownIssuer => Some(
                "the server's certificate is not from a CA you trust: add its CA to `ca_bundle` \
                 (a PEM file of extra trust anchors)",
            ),
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => Some(
                "the server's certificate is not valid for the host name in the URL: check the \
                 URL's host (in `issuer_url`, or the URL requested): it must be one of the names \
                 the certificate lists, IP addresses included",
            ),
            Cert::Expired | Cert::ExpiredContext { .. } => Some(
                "the server's certificate has expired: its operator must renew it (if it should \
                 still be valid, check this machine's clock)",
            ),
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => Some(
                "the server's certificate is not valid yet: check this machine's clock (or wait \
                 for the certificate to become valid)",
            ),
            _ => None,
        },
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::CertificateRequired
            | Alert::UnknownCA
            | Alert::AccessDenied
            | Alert::CertificateUnknown,
        ) => Some(
            "the server refused this client's certificate: check that the certificate \
             (`certificate`) is registered with the directory for this client_id and issued by a \
             CA the server trusts",
        ),
        // What a server sends when a signature in the client's certificate chain does not check,
        // typically a certificate from another CA with the name of one the server trusts.
        rustls::Error::AlertReceived(Alert::DecryptError) => Some(
            "the server refused this client's certificate (a signature did not verify: often a \
             certificate from another CA than the one of that name the server trusts): check that \
             the certificate (`certificate`) is registered with the directory for this client_id \
             and issued by a CA the server trusts",
        ),
        rustls::Error::AlertReceived(Alert::CertificateExpired) => Some(
            "the server says this client's certificate has expired: renew it with the directory \
             and point `certificate` and `private_key` at the new one",
        ),
        // What a TLS 1.2-only server answers a client that offers TLS 1.3 alone.
        rustls::Error::AlertReceived(Alert::ProtocolVersion) => Some(
            "the server and this client share no TLS version: with `tls13_only = true` the \
             server must offer TLS 1.3; set `tls13_only = false` to allow TLS 1.2 with the FAPI \
             cipher suites",
        ),
        // What a server answers when it shares no cipher suite (or signature scheme) with the
        // client: under TLS 1.2, often a server that accepts none of `tls_cipher_suites`'s.
        rustls::Error::AlertReceived(Alert::HandshakeFailure) => Some(
            "the server accepted nothing this client offered, often no cipher suite: under TLS \
             1.2 this client offers only the suites of `tls_cipher_suites` (\"fapi1\": \
             ECDHE-RSA with AES-GCM; \"bcp195\": ECDHE-RSA or ECDHE-ECDSA with AES-GCM); ask \
             the server's operator for TLS 1.3 or one of those suites, or set \
             `tls_cipher_suites = \"bcp195\"` if its certificate is an ECDSA one",
        ),
        rustls::Error::AlertReceived(Alert::CertificateRevoked) => Some(
            "the server says this client's certificate is revoked: issue a new one with the \
             directory and point `certificate` and `private_key` at it",
        ),
        _ => None,
    }
}

/// `err: source: source...` in one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A non-fatal finding (for example a certificate that expires soon), shown by `check` and logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// What was found, for callers that treat findings differently.
    pub kind: WarningKind,
    /// What to tell the user.
    pub message: String,
}

/// The kinds of [`Warning`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarningKind {
    /// The client certificate expires within [`crate::EXPIRY_WARNING`].
    CertificateExpiresSoon,
    /// Whether the private key matches the certificate could not be checked.
    KeyMatchUnchecked,
    /// Discovery omits `token_endpoint_auth_methods_supported`.
    AuthMethodsAbsent,
    /// Discovery omits `grant_types_supported`.
    GrantTypesAbsent,
    /// Discovery lists grant types without `client_credentials`.
    ClientCredentialsNotListed,
    /// Discovery does not announce certificate-bound access tokens.
    BoundTokensNotAnnounced,
    /// A requested scope is not in `scopes_supported`.
    ScopeNotSupported,
}

impl Warning {
    /// A warning of `kind` saying `message`.
    pub fn new(kind: WarningKind, message: impl Into<String>) -> Warning {
        Warning {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_tls_failures_of_the_token_step_are_the_tokens() {
        let e = Error::Network("token request to https://as.example/token: timed out".into())
            .in_token_step();
        assert!(e.is_token_unreachable() && !e.is_tls(), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::Network);
        assert_eq!(
            e.to_string(),
            "no token: the authorization server could not be reached \
             (token request to https://as.example/token: timed out)"
        );

        let e = Error::Tls("fetching https://as.example/.well-known: UnknownIssuer".into())
            .in_token_step();
        assert!(e.is_token_unreachable() && e.is_tls(), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::Network);
        assert!(
            e.to_string()
                .starts_with("no token: TLS with the authorization server failed"),
            "{e}"
        );

        let e = Error::Timeout("token request to https://as.example/token: timed out".into())
            .in_token_step();
        assert!(
            matches!(e, Error::TokenUnreachable { tls: false, .. }),
            "{e:?}"
        );

        // The authorization server's answers keep their own variants.
        let refused = Error::TokenRefused {
            status: 400,
            error: "invalid_scope".into(),
            description: None,
            assertion_hint: None,
        }
        .in_token_step();
        assert!(matches!(refused, Error::TokenRefused { .. }));
        assert!(!refused.is_token_unreachable());
        assert!(!Error::Network("GET https://dp.example/x: reset".into()).is_token_unreachable());
        assert!(Error::Tls("GET https://dp.example/x: UnknownIssuer".into()).is_tls());
    }

    #[test]
    fn rustls_errors_are_found_inside_nested_io_errors_and_nothing_else_is_tls() {
        use std::io::{Error as IoError, ErrorKind as Io};
        // As hyper-rustls hands over a refused certificate: io(Other, io(InvalidData, rustls)).
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested = IoError::other(IoError::new(Io::InvalidData, refused));
        assert!(rustls_error(&nested).is_some());
        assert!(
            rustls_error(&rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            ))
            .is_some()
        );
        // A connection closed during the handshake carries no rustls error, whatever its words.
        let eof = IoError::other(IoError::new(Io::UnexpectedEof, "tls handshake eof"));
        assert!(rustls_error(&eof).is_none());
        assert!(rustls_error(&IoError::from(Io::ConnectionReset)).is_none());
    }

    /// TLS-06: a server refused by its class's anchors is found as hyper-rustls hands it over,
    /// and only then.
    #[test]
    fn a_server_outside_its_class_is_found_by_its_class() {
        use crate::trust::{TrustClass, Untrusted};
        use std::io::{Error as IoError, ErrorKind as Io};
        let u = Untrusted {
            class: TrustClass::AuthorizationServer,
            system_roots: true,
        };
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(std::sync::Arc::new(u)),
        ));
        let nested = IoError::other(IoError::new(Io::InvalidData, refused));
        assert_eq!(rustls_error(&nested).and_then(untrusted), Some(&u));
        let plain = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(untrusted(&plain), None);
    }

    #[test]
    fn common_tls_failures_carry_how_to_fix_them() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        use std::io::{Error as IoError, ErrorKind as Io};
        // As hyper-rustls hands them over: io(Other, io(InvalidData, rustls)).
        let hint = |e: E| {
            let nested = IoError::other(IoError::new(Io::InvalidData, e));
            rustls_error(&nested).and_then(tls_hint)
        };
        let server_refused = "the server refused this client's certificate";
        for (e, needle) in [
            (
                E::InvalidCertificate(C::UnknownIssuer),
                "the server's certificate is not from a CA you trust: add its CA to `ca_bundle`",
            ),
            (
                E::InvalidCertificate(C::NotValidForName),
                "check the URL's host",
            ),
            (
                E::InvalidCertificate(C::NotValidForNameContext {
                    expected: rustls::pki_types::ServerName::try_from("dp.example")
                        .expect("a DNS name"),
                    presented: vec!["other.example".into()],
                }),
                "check the URL's host",
            ),
            (
                E::InvalidCertificate(C::Expired),
                "the server's certificate has expired",
            ),
            (
                E::InvalidCertificate(C::NotValidYet),
                "check this machine's clock",
            ),
            (E::AlertReceived(A::BadCertificate), server_refused),
            (E::AlertReceived(A::CertificateRequired), server_refused),
            (E::AlertReceived(A::UnknownCA), server_refused),
            (E::AlertReceived(A::AccessDenied), server_refused),
            (E::AlertReceived(A::DecryptError), server_refused),
            (E::AlertReceived(A::CertificateExpired), "renew it"),
            (E::AlertReceived(A::HandshakeFailure), "`tls_cipher_suites`"),
        ] {
            let what = format!("{e:?}");
            let got = hint(e).unwrap_or_else(|| panic!("no hint for {what}"));
            assert!(got.contains(needle), "{what}: {got}");
        }
        // Other failures keep their chain alone.
        assert_eq!(hint(E::AlertReceived(A::IllegalParameter)), None);
        assert_eq!(hint(E::InvalidCertificate(C::BadSignature)), None);
    }
}
