//! Client authentication at the token endpoint (`token_endpoint_auth_method`): RFC 8705
//! `tls_client_auth` (the certificate alone), or RFC 7523 / OIDC Core section 9
//! `private_key_jwt` (a signed client assertion in every token request, over the same mTLS
//! connection, so that tokens stay bound to the certificate).
//!
//! An assertion (checklist PKJ-01, PKJ-02, PKJ-03, TIME-01, CRY-01):
//!
//! - header: `alg` (the key's one FAPI algorithm: PS256, ES256 or EdDSA (not under FAPI 1.0
//!   profiles), never RS256 or
//!   `none`), `typ` `JWT`, `kid` (`signing_kid`, else the RFC 7638 thumbprint of the key);
//! - claims: `iss` = `sub` = `client_id`; `aud` = the issuer as a plain string (FAPI 2.0), or the
//!   token endpoint's URL with `client_assertion_audience = "token_endpoint"` (FAPI 1.0
//!   ecosystems); `jti` 128 random bits (a UUID v4), new for every request, retries included;
//!   `iat` = now, rounded down (never in the future); `exp` = `iat` + [`ASSERTION_LIFETIME`].
//!
//! The assertion is a credential for its minute: it is made in a zeroizing buffer, written only
//! into the form body of the one request, and never logged, put in an error or shown to a guest.
//! The clock is this machine's, corrected from the authorization server's when they disagree
//! (PKJ-04, TIME-01): when the server refuses an assertion (`invalid_client`) and the `Date` of its
//! answer differs from this clock by more than [`SKEW_HINT`], later assertions are stamped by the
//! server's clock (this one plus the difference, in whole seconds rounded down) and the refused
//! request is sent once more with a new assertion; a warning says to set the clock right. If that
//! one is refused too, the error names the skew and what else to check.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use x509_parser::prelude::*;
use zeroize::Zeroizing;

use crate::config::Settings;
use crate::credentials::{self, Identity};
use crate::discovery::ServerMetadata;
use crate::error::{Error, Result};
use crate::jws::JwsKey;
use crate::profile::{AssertionAudience, ClientAuth};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid (`exp` - `iat`): one minute, as short as a token request over a
/// slow link allows (FAPI 2.0 section 5.3.2.1 note: servers reject `exp` far in the future).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// A server `Date` this far from the local clock is named in the error of a refused assertion.
pub const SKEW_HINT: Duration = Duration::from_secs(10);

/// How this client authenticates at the token endpoint (and at introspection).
#[derive(Clone)]
pub(crate) enum ClientAuthenticator {
    /// RFC 8705 section 2.1: the client certificate of the mTLS connection alone.
    TlsClientAuth,
    /// A fresh signed assertion per request.
    PrivateKeyJwt(Arc<AssertionSigner>),
}

/// What signs assertions: the key, its `kid`, the client and the audience rule.
pub(crate) struct AssertionSigner {
    key: JwsKey,
    kid: String,
    client_id: String,
    audience: AssertionAudience,
    /// Where the key came from, for errors ("the transport key", "`signing_key` FILE").
    source: String,
    /// Seconds added to this machine's clock to stamp assertions: the authorization server's
    /// clock as its `Date` said (0 until a refusal shows they differ by more than [`SKEW_HINT`]).
    clock_offset: AtomicI64,
    /// Set when `clock_offset` changed and the refused request has not been sent again yet.
    corrected: AtomicBool,
}

impl fmt::Debug for ClientAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuthenticator::TlsClientAuth => f.write_str("TlsClientAuth"),
            ClientAuthenticator::PrivateKeyJwt(s) => f
                .debug_struct("PrivateKeyJwt")
                .field("key", &s.key)
                .field("kid", &s.kid)
                .field("audience", &s.audience)
                .finish(),
        }
    }
}

impl ClientAuthenticator {
    /// The authenticator the settings name. With `private_key_jwt`, the signing key is loaded and
    /// checked now (at start, not at the first token request): the transport key of `identity`,
    /// or `signing_key` (a PEM file, plain or encrypted PKCS#8, or a PKCS#11 URI with
    /// `signing_certificate`), which must match `signing_certificate` when that is given.
    pub(crate) fn from_settings(
        settings: &Settings,
        identity: &Identity,
    ) -> Result<ClientAuthenticator> {
        let auth = &settings.auth;
        if auth.client_auth == ClientAuth::TlsClientAuth {
            return Ok(ClientAuthenticator::TlsClientAuth);
        }
        let (key, source) = signing_key(settings, identity)?;
        if key.alg() == crate::jws::Alg::EdDsa && settings.profile.follows_fapi1() {
            return Err(Error::Config(format!(
                "{source} is an Ed25519 key, but profile \"{}\" follows FAPI 1.0, whose \
                 algorithms are PS256 and ES256 (part 2 section 8.6): give an RSA (2048 bits or \
                 more) or P-256 key as `signing_key`",
                settings.profile
            )));
        }
        let kid = match &auth.signing_kid {
            Some(kid) if kid.trim().is_empty() => {
                return Err(Error::Config(
                    "`signing_kid` is empty: give the key id registered for the signing key, or \
                     leave it out for the key's RFC 7638 thumbprint"
                        .into(),
                ));
            }
            Some(kid) => kid.clone(),
            None => key.thumbprint().to_owned(),
        };
        Ok(ClientAuthenticator::PrivateKeyJwt(Arc::new(
            AssertionSigner {
                key,
                kid,
                client_id: settings.client_id.clone(),
                audience: auth.assertion_audience,
                source,
                clock_offset: AtomicI64::new(0),
                corrected: AtomicBool::new(false),
            },
        )))
    }

    /// The algorithm assertions are signed with (`None` with `tls_client_auth`).
    pub(crate) fn assertion_alg(&self) -> Option<crate::jws::Alg> {
        match self {
            ClientAuthenticator::TlsClientAuth => None,
            ClientAuthenticator::PrivateKeyJwt(s) => Some(s.key.alg()),
        }
    }

    /// The method, by its RFC 8414 name.
    pub(crate) fn method(&self) -> ClientAuth {
        match self {
            ClientAuthenticator::TlsClientAuth => ClientAuth::TlsClientAuth,
            ClientAuthenticator::PrivateKeyJwt(_) => ClientAuth::PrivateKeyJwt,
        }
    }

    /// Refuse a server that does not list this method in `token_endpoint_auth_methods_supported`,
    /// or (`private_key_jwt`) whose `token_endpoint_auth_signing_alg_values_supported` does not
    /// list the key's algorithm: the client never falls back to another (RS256, `none`).
    /// Absent lists are accepted (discovery warned about the first).
    pub(crate) fn check(&self, metadata: &ServerMetadata) -> Result<()> {
        let method = self.method().name();
        if let Some(methods) = &metadata.auth_methods_supported
            && !methods.iter().any(|m| m == method)
        {
            return Err(Error::Discovery(format!(
                "the authorization server does not support `{method}` (its \
                 token_endpoint_auth_methods_supported is {methods:?}); set \
                 `token_endpoint_auth_method` to the method the client is registered with"
            )));
        }
        if let ClientAuthenticator::PrivateKeyJwt(signer) = self {
            signer.key.check_supported(
                metadata.auth_signing_algs_supported.as_deref(),
                "token_endpoint_auth_signing_alg_values_supported",
            )?;
        }
        Ok(())
    }

    /// Append the client authentication parameters to a form sent to `endpoint`: nothing for
    /// `tls_client_auth`; `client_assertion_type` and a new `client_assertion` for
    /// `private_key_jwt`. The caller zeroizes the form.
    pub(crate) fn append(
        &self,
        form: &mut url::form_urlencoded::Serializer<'_, String>,
        metadata: &ServerMetadata,
        endpoint: &url::Url,
    ) -> Result<()> {
        if let ClientAuthenticator::PrivateKeyJwt(signer) = self {
            let assertion = signer.assertion(metadata, endpoint, signer.now())?;
            form.append_pair("client_assertion_type", JWT_BEARER);
            form.append_pair("client_assertion", &assertion);
        }
        Ok(())
    }

    /// With `private_key_jwt`, after the server refused an assertion: take its clock (`server`,
    /// its answer's `Date`, received at `local`) for later assertions when it differs from the
    /// clock assertions are stamped with by more than [`SKEW_HINT`] (checklist PKJ-04).
    pub(crate) fn correct_clock(&self, server: SystemTime, local: SystemTime) {
        let ClientAuthenticator::PrivateKeyJwt(signer) = self else {
            return;
        };
        let secs = |t: SystemTime| match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        // The server's Date is its time rounded down to the second: so is the offset.
        let offset = secs(server).saturating_sub(secs(local));
        let current = signer.clock_offset.load(Ordering::Relaxed);
        if offset.abs_diff(current) > SKEW_HINT.as_secs() {
            signer.clock_offset.store(offset, Ordering::Relaxed);
            signer.corrected.store(true, Ordering::Relaxed);
            tracing::warn!(
                offset_seconds = offset,
                "this machine's clock differs from the authorization server's (its Date header) \
                 by more than 10 s: client assertions are stamped by the server's clock from now \
                 on; set this machine's clock right (NTP)"
            );
        }
    }

    /// Whether [`ClientAuthenticator::correct_clock`] changed the clock since the last call: the
    /// refused request is then worth sending once more.
    pub(crate) fn take_correction(&self) -> bool {
        match self {
            ClientAuthenticator::PrivateKeyJwt(s) => s.corrected.swap(false, Ordering::Relaxed),
            ClientAuthenticator::TlsClientAuth => false,
        }
    }

    /// With `private_key_jwt`, what to check when the server refused the assertion
    /// (`invalid_client`); `server_date` is the response's `Date`, compared with this clock.
    pub(crate) fn refusal_hint(&self, server_date: Option<SystemTime>) -> Option<String> {
        let ClientAuthenticator::PrivateKeyJwt(signer) = self else {
            return None;
        };
        let skew = server_date.and_then(|d| skew_note(d, signer.now()));
        Some(format!(
            "the server refused the private_key_jwt client assertion: check that {} is the key \
             registered for `client_id` {:?} with kid {:?} (`signing_kid`), that this machine's \
             clock is right (the assertion's iat and exp come from it{}), and that the server \
             expects `client_assertion_audience` = \"{}\"",
            signer.source,
            signer.client_id,
            signer.kid,
            skew.unwrap_or_default(),
            signer.audience.name(),
        ))
    }
}

impl AssertionSigner {
    /// The time assertions are stamped with: this machine's clock, corrected by the server's.
    fn now(&self) -> SystemTime {
        let offset = self.clock_offset.load(Ordering::Relaxed);
        let by = std::time::Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() + by
        } else {
            SystemTime::now() - by
        }
    }

    /// A new assertion for a request to `endpoint`, stamped `now`.
    fn assertion(
        &self,
        metadata: &ServerMetadata,
        endpoint: &url::Url,
        now: SystemTime,
    ) -> Result<Zeroizing<String>> {
        // Rounded down: never in the future (TIME-01).
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| Error::Config("the system clock is before 1970".into()))?
            .as_secs();
        let aud = match self.audience {
            AssertionAudience::Issuer => metadata.issuer.clone(),
            AssertionAudience::TokenEndpoint => endpoint.as_str().to_owned(),
        };
        let claims = json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": aud,
            "jti": uuid::Uuid::new_v4().to_string(),
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let mut header = Map::new();
        header.insert("typ".into(), Value::from("JWT"));
        header.insert("kid".into(), Value::from(self.kid.as_str()));
        self.key.sign(header, &claims)
    }
}

/// ", which is N s behind/ahead of the server's (its Date header)" when the difference is more
/// than [`SKEW_HINT`].
fn skew_note(server: SystemTime, local: SystemTime) -> Option<String> {
    let (ahead, by) = match local.duration_since(server) {
        Ok(d) => ("ahead of", d),
        Err(e) => ("behind", e.duration()),
    };
    (by > SKEW_HINT).then(|| {
        format!(
            "; it is {} s {ahead} the server's clock (its Date header): set the clock right \
             (NTP)",
            by.as_secs()
        )
    })
}

/// The key that signs assertions, and how to name it in errors.
fn signing_key(settings: &Settings, identity: &Identity) -> Result<(JwsKey, String)> {
    let auth = &settings.auth;
    let key_path = match (&auth.signing_key, &auth.signing_certificate) {
        (None, None) => {
            return Ok((
                identity.jws_key()?,
                "the transport key (`private_key`)".into(),
            ));
        }
        (None, Some(cert)) => {
            return Err(Error::Config(format!(
                "`signing_certificate` {} is set without `signing_key`: give the key it was \
                 issued for as `signing_key`, or remove `signing_certificate` to sign with the \
                 transport key",
                cert.display()
            )));
        }
        (Some(key), _) => key,
    };
    let source = format!("`signing_key` {}", key_path.display());
    let is_pkcs11 = key_path.to_str().is_some_and(|k| k.starts_with("pkcs11:"));
    let Some(cert_path) = &auth.signing_certificate else {
        if is_pkcs11 {
            return Err(Error::Config(format!(
                "{source} is a PKCS#11 key: give its certificate as `signing_certificate` (the \
                 public key is read from it)"
            )));
        }
        let key = credentials::key_from_file(
            key_path,
            settings.private_key_passphrase_file.as_deref(),
            "signing_key",
        )?;
        let spki = key.public_key().ok_or_else(|| {
            Error::Credentials(format!(
                "{source}: its public key cannot be derived: give its certificate as \
                 `signing_certificate`"
            ))
        })?;
        let spki = spki.as_ref().to_vec();
        return Ok((JwsKey::new(key, &spki, &source)?, source));
    };
    // A PEM key: compared with the certificate here, so that the error names these settings.
    if !is_pkcs11 {
        let key = credentials::key_from_file(
            key_path,
            settings.private_key_passphrase_file.as_deref(),
            "signing_key",
        )?;
        let pem = std::fs::read(cert_path).map_err(|e| {
            Error::Credentials(format!(
                "cannot read `signing_certificate` file {}: {e}",
                cert_path.display()
            ))
        })?;
        let chain = credentials::parse_chain(&pem, cert_path)?;
        let (_, x509) = X509Certificate::from_der(chain[0].as_ref()).map_err(|e| {
            Error::Credentials(format!(
                "{}: the first certificate is not valid X.509 ({e})",
                cert_path.display()
            ))
        })?;
        if let Some(spki) = key.public_key()
            && spki.as_ref() != x509.public_key().raw
        {
            return Err(Error::Credentials(format!(
                "{source} does not match `signing_certificate` {} ({}): a signing key that does \
                 not match its certificate would sign assertions the server cannot verify; point \
                 `signing_key` at the key the certificate was issued for",
                cert_path.display(),
                x509.subject()
            )));
        }
    }
    // Every check of a transport identity (validity, strength, the key in a PKCS#11 token).
    let mut signing = settings.clone();
    signing.private_key = key_path.clone();
    signing.certificate = cert_path.clone();
    let (id, warnings) = Identity::from_settings(&signing).map_err(|e| {
        Error::Credentials(format!(
            "the `signing_key` / `signing_certificate` pair: {e}"
        ))
    })?;
    for w in &warnings {
        tracing::warn!("signing key: {w}");
    }
    Ok((id.jws_key()?, source))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;

    fn metadata(algs: Option<&[&str]>, methods: Option<&[&str]>) -> ServerMetadata {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        ServerMetadata {
            issuer: "https://as.example".into(),
            token_endpoint: url::Url::parse("https://mtls.as.example/token").unwrap(),
            introspection_endpoint: None,
            revocation_endpoint: None,
            scopes_supported: None,
            auth_methods_supported: list(methods),
            auth_signing_algs_supported: list(algs),
            dpop_signing_alg_values_supported: None,
            token_endpoint_is_alias: true,
            other_endpoints: Vec::new(),
        }
    }

    fn signer(audience: AssertionAudience) -> AssertionSigner {
        AssertionSigner {
            key: JwsKey::generate_p256("test key").unwrap(),
            kid: "kid-1".into(),
            client_id: "client-1".into(),
            audience,
            source: "the test key".into(),
            clock_offset: AtomicI64::new(0),
            corrected: AtomicBool::new(false),
        }
    }

    fn decode(jws: &str) -> (Value, Value) {
        let mut parts = jws.split('.');
        let mut next = || serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap());
        (next().unwrap(), next().unwrap())
    }

    /// PKJ-02, TIME-01: the claims, `iat` never in the future, `exp` 60 s later, a new `jti`
    /// each time; `aud` the issuer as a plain string, or the token endpoint when configured.
    #[test]
    fn assertion_claims_pkj_02_time_01() {
        let m = metadata(None, None);
        let s = signer(AssertionAudience::Issuer);
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        let a = s.assertion(&m, &m.token_endpoint, now).unwrap();
        let b = s.assertion(&m, &m.token_endpoint, now).unwrap();
        let (header, claims) = decode(&a);
        assert_eq!(
            header,
            json!({"alg": "ES256", "typ": "JWT", "kid": "kid-1"})
        );
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://as.example");
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_000_060u64);
        assert_eq!(claims.as_object().unwrap().len(), 6, "{claims}");
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(jti).unwrap().get_version_num(), 4);
        assert_ne!(decode(&b).1["jti"], claims["jti"]);

        let s = signer(AssertionAudience::TokenEndpoint);
        let (_, claims) = decode(&s.assertion(&m, &m.token_endpoint, now).unwrap());
        assert_eq!(claims["aud"], "https://mtls.as.example/token");
    }

    /// PKJ-03 / CRY-01: a server whose list lacks the key's algorithm, or that does not list
    /// private_key_jwt, is refused with its list named.
    #[test]
    fn unlisted_algorithm_or_method_is_refused_by_name_pkj_03() {
        let auth = ClientAuthenticator::PrivateKeyJwt(Arc::new(signer(AssertionAudience::Issuer)));
        let e = auth
            .check(&metadata(Some(&["RS256"]), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("token_endpoint_auth_signing_alg_values_supported")
                && e.contains("[\"RS256\"]")
                && e.contains("ES256"),
            "{e}"
        );
        let e = auth
            .check(&metadata(None, Some(&["tls_client_auth"])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`private_key_jwt`") && e.contains("[\"tls_client_auth\"]"),
            "{e}"
        );
        auth.check(&metadata(
            Some(&["PS256", "ES256"]),
            Some(&["private_key_jwt"]),
        ))
        .unwrap();
        auth.check(&metadata(None, None)).unwrap();
        // tls_client_auth ignores the algorithms.
        ClientAuthenticator::TlsClientAuth
            .check(&metadata(Some(&["RS256"]), Some(&["tls_client_auth"])))
            .unwrap();
    }

    #[test]
    fn refusal_hint_names_what_to_check_and_a_skewed_clock() {
        let auth = ClientAuthenticator::PrivateKeyJwt(Arc::new(signer(AssertionAudience::Issuer)));
        let hint = auth.refusal_hint(None).unwrap();
        for part in ["kid-1", "client-1", "clock", "\"issuer\"", "the test key"] {
            assert!(hint.contains(part), "{part}: {hint}");
        }
        let behind = auth
            .refusal_hint(Some(SystemTime::now() + Duration::from_secs(95)))
            .unwrap();
        assert!(behind.contains("s behind the server's clock"), "{behind}");
        let close = auth
            .refusal_hint(Some(SystemTime::now() + Duration::from_secs(2)))
            .unwrap();
        assert!(!close.contains("server's clock"), "{close}");
        assert!(
            ClientAuthenticator::TlsClientAuth
                .refusal_hint(None)
                .is_none()
        );
        // Debug names the key by thumbprint only.
        let shown = format!("{auth:?}");
        assert!(
            shown.contains("[redacted]") && shown.contains("kid-1"),
            "{shown}"
        );
    }
}
