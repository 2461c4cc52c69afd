//! DPoP (RFC 9449): tokens bound to a key the host holds, proven with a signed JWT on every token
//! request and every resource request.
//!
//! One [`Dpop`] per token manager, so one key per authorization server (checklist DPOP-08): the
//! key is made at start (a fresh P-256 key, in memory only) or loaded from `dpop_key`. Proofs are
//! ES256 (or the loaded key's FAPI algorithm), with the public key only in the header (DPOP-02),
//! a fresh `jti`, `htm`, `htu` without query and fragment, `iat` = now, `ath` on resource
//! requests only and `nonce` when the origin gave one (DPOP-03, DPOP-05).
//!
//! A proof is bearer-equivalent for its short life: it exists only as a [`ProofHeader`] (a
//! sensitive header value whose `Debug` is redacted) on its way into one request, and nothing
//! here logs it. Nonces are not secrets (the server sends them in the clear to anyone), but they
//! are kept per origin and only sent back to the origin that gave them.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::config::AuthSettings;
use crate::credentials;
use crate::error::{Error, Result};
use crate::jws::JwsKey;
use crate::profile::SenderConstraint;

/// The request header of a proof (RFC 9449 section 4.1).
pub(crate) const DPOP: HeaderName = HeaderName::from_static("dpop");

/// The response header of a server nonce (RFC 9449 section 8).
pub(crate) const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// The OAuth error of a server that demands a nonce (RFC 9449 sections 8 and 9).
pub(crate) const USE_DPOP_NONCE: &str = "use_dpop_nonce";

/// The longest nonce kept: real ones are tens of bytes; a longer one is ignored (and logged).
const MAX_NONCE: usize = 512;

/// The origins whose nonces are kept at most: a client talks to one authorization server and a
/// few resource servers; past this, the table is emptied (a nonce lost costs one replay).
const MAX_ORIGINS: usize = 256;

/// A proof, ready to be the value of one request's `DPoP` header. Its `Debug` does not show it.
pub(crate) struct ProofHeader(HeaderValue);

redacted_debug!(ProofHeader);

impl ProofHeader {
    /// The header value (sensitive: HTTP/2 never indexes it, and reqwest's `Debug` hides it).
    pub(crate) fn into_value(self) -> HeaderValue {
        self.0
    }
}

/// The DPoP key of one client (one authorization server) and the nonces its servers gave.
pub(crate) struct Dpop {
    key: JwsKey,
    /// The header (`alg`, `typ`, `jwk`), the same in every proof: encoded once.
    header: String,
    /// The latest `DPoP-Nonce` of each origin (`https://host:port`).
    nonces: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for Dpop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dpop")
            .field("alg", &self.key.alg())
            .field("jkt", &self.key.thumbprint())
            .finish_non_exhaustive()
    }
}

impl Dpop {
    /// The DPoP key of these settings: `None` unless `sender_constraint = "dpop"`; then the key of
    /// `dpop_key`, or a fresh P-256 key made now (never written anywhere).
    pub(crate) fn from_settings(auth: &AuthSettings) -> Result<Option<Dpop>> {
        if auth.sender_constraint != SenderConstraint::Dpop {
            return Ok(None);
        }
        let key = match &auth.dpop_key {
            Some(path) => load_key(path)?,
            None => JwsKey::generate_p256("the DPoP key")?,
        };
        Ok(Some(Dpop::new(key)?))
    }

    /// Proofs signed by `key`.
    pub(crate) fn new(key: JwsKey) -> Result<Dpop> {
        let mut header = Map::new();
        header.insert("typ".into(), Value::from("dpop+jwt"));
        header.insert("jwk".into(), key.jwk().clone());
        Ok(Dpop {
            header: key.encoded_header(header)?,
            key,
            nonces: Mutex::new(HashMap::new()),
        })
    }

    /// The RFC 7638 thumbprint of the key: what a bound token's `cnf.jkt` says.
    pub(crate) fn thumbprint(&self) -> &str {
        self.key.thumbprint()
    }

    /// Refuse a server whose `dpop_signing_alg_values_supported` lacks this key's algorithm.
    pub(crate) fn check_supported(&self, supported: Option<&[String]>) -> Result<()> {
        self.key
            .check_supported(supported, "dpop_signing_alg_values_supported")
            .map_err(|_| {
                Error::Config(format!(
                    "the authorization server's dpop_signing_alg_values_supported is {:?}, without \
                     {}, the algorithm of this client's DPoP key: it would refuse every proof; \
                     give `dpop_key` a key of an algorithm it lists (FAPI allows PS256, ES256 and \
                     EdDSA), or use `sender_constraint = \"mtls\"`",
                    supported.unwrap_or_default(),
                    self.key.alg()
                ))
            })
    }

    /// A proof for one request of `method` to `url`: a fresh `jti`, `iat` = now, the nonce of
    /// the URL's origin when there is one, and `ath` when `token` is given (resource requests;
    /// never at the token endpoint).
    pub(crate) fn proof(
        &self,
        method: &Method,
        url: &url::Url,
        token: Option<&[u8]>,
    ) -> Result<ProofHeader> {
        // Seconds since the epoch, rounded down: never in the future (DPOP-07).
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // 122 random bits (a v4 UUID): never reused, not even by a replay.
        let mut jti = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let ath = token.map(|t| B64.encode(Sha256::digest(t)));
        let nonce = self.nonce_for(url);
        let claims = Claims {
            jti: uuid::Uuid::new_v4().hyphenated().encode_lower(&mut jti),
            htm: method.as_str(),
            // The URL up to its path: no query, no fragment.
            htu: &url[..url::Position::AfterPath],
            iat,
            nonce: nonce.as_deref(),
            ath: ath.as_deref(),
        };
        let jws = self.key.sign_encoded(&self.header, &claims)?;
        let mut value = HeaderValue::from_str(&jws)
            .map_err(|_| Error::Credentials("a DPoP proof is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(ProofHeader(value))
    }

    /// The nonce kept for the origin of `url`.
    pub(crate) fn nonce_for(&self, url: &url::Url) -> Option<String> {
        self.table().get(origin(url)).cloned()
    }

    /// Keep the `DPoP-Nonce` of a response from `url`'s origin (any status: a 200 may rotate it).
    /// Returns whether the response carried a usable one.
    pub(crate) fn remember_nonce(&self, url: &url::Url, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(DPOP_NONCE) else {
            return false;
        };
        let bytes = value.as_bytes();
        // RFC 9449 section 8.1: nonce = 1*NQCHAR, NQCHAR = %x21 / %x23-5B / %x5D-7E.
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_NONCE
            && bytes
                .iter()
                .all(|&b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
        if !valid {
            tracing::warn!(
                origin = %origin(url),
                len = bytes.len(),
                "ignoring a DPoP-Nonce that is not 1 to 512 characters of RFC 9449's NQCHAR"
            );
            return false;
        }
        let mut table = self.table();
        let key = origin(url);
        // Checked NQCHAR above: ASCII, so the bytes are the string.
        if table.get(key).map(String::as_bytes) != Some(bytes) {
            if table.len() >= MAX_ORIGINS && !table.contains_key(key) {
                table.clear();
            }
            tracing::debug!(origin = %key, "DPoP nonce updated");
            table.insert(key.to_owned(), String::from_utf8_lossy(bytes).into_owned());
        }
        true
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `https://host:port` of a URL (the key of its nonce): the URL up to its path, as the host's URLs
/// (https, no user info: `check_url`) are serialised, the default port left out.
fn origin(url: &url::Url) -> &str {
    &url[..url::Position::BeforePath]
}

/// The claims of a proof, written as JSON in this order.
#[derive(serde::Serialize)]
struct Claims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<&'a str>,
}

/// The DPoP key of `dpop_key`: a PEM private key (PKCS#8, SEC1 EC or PKCS#1 RSA; not encrypted)
/// whose public half is derived from it.
fn load_key(path: &Path) -> Result<JwsKey> {
    let pem = zeroize::Zeroizing::new(credentials::read(path, "dpop_key")?);
    if pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(Error::Credentials(format!(
            "`dpop_key` {}: the key is encrypted, and a DPoP key is read without a passphrase: \
             keep it unencrypted and readable by this user only (chmod 600), or remove \
             `dpop_key` to have a fresh key made at start",
            path.display()
        )));
    }
    let der = credentials::parse_key(&pem, path)?;
    let key = credentials::signing_key(&der, path)?;
    let spki = key.public_key().ok_or_else(|| {
        Error::Credentials(format!(
            "{}: the public half of the DPoP key cannot be derived; use a P-256 key (`openssl \
             genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`)",
            path.display()
        ))
    })?;
    JwsKey::new(
        key.clone(),
        spki.as_ref(),
        &format!("`dpop_key` {}", path.display()),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parts(proof: ProofHeader) -> (Value, Value) {
        let value = proof.into_value();
        let text = value.to_str().unwrap();
        let mut it = text.split('.');
        let h = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
        let c = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
        (h, c)
    }

    /// DPOP-02, DPOP-03: the header and the claims of token and resource proofs.
    #[test]
    fn proofs_carry_the_rfc_9449_header_and_claims() {
        let dpop = Dpop::new(JwsKey::generate_p256("the DPoP key").unwrap()).unwrap();
        let url = url::Url::parse("https://rs.example:8443/a/b?x=1#frag").unwrap();
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (h, c) = parts(dpop.proof(&Method::GET, &url, None).unwrap());
        assert_eq!(h["typ"], "dpop+jwt");
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["jwk"]["kty"], "EC");
        assert!(h["jwk"].get("d").is_none(), "{h}");
        assert_eq!(c["htm"], "GET");
        assert_eq!(c["htu"], "https://rs.example:8443/a/b");
        let iat = c["iat"].as_u64().unwrap();
        assert!(iat >= before && iat <= before + 2, "{iat} {before}");
        assert!(c.get("ath").is_none() && c.get("nonce").is_none(), "{c}");
        assert_eq!(
            uuid::Uuid::parse_str(c["jti"].as_str().unwrap())
                .unwrap()
                .get_version_num(),
            4
        );

        let (_, c2) = parts(dpop.proof(&Method::POST, &url, Some(b"tok")).unwrap());
        assert_ne!(c["jti"], c2["jti"], "a fresh jti per proof");
        assert_eq!(c2["htm"], "POST");
        // base64url(SHA-256("tok")).
        assert_eq!(c2["ath"], "GnZ0607njffhrEOak8P6jjyUV4TU3sn9jjARc4svHWI");
    }

    /// DPOP-05: a nonce goes back to its origin only, the latest one wins, and a malformed one is
    /// not kept.
    #[test]
    fn nonces_are_kept_per_origin_and_checked() {
        let dpop = Dpop::new(JwsKey::generate_p256("the DPoP key").unwrap()).unwrap();
        let a = url::Url::parse("https://a.example/token").unwrap();
        let a2 = url::Url::parse("https://a.example/other?q").unwrap();
        let b = url::Url::parse("https://b.example/data").unwrap();
        let mut h = HeaderMap::new();
        h.insert(DPOP_NONCE, HeaderValue::from_static("n-1"));
        assert!(dpop.remember_nonce(&a, &h));
        assert_eq!(dpop.nonce_for(&a2).as_deref(), Some("n-1"));
        assert_eq!(dpop.nonce_for(&b), None);
        let (_, c) = parts(dpop.proof(&Method::GET, &a2, None).unwrap());
        assert_eq!(c["nonce"], "n-1");
        let (_, c) = parts(dpop.proof(&Method::GET, &b, None).unwrap());
        assert!(c.get("nonce").is_none());
        h.insert(DPOP_NONCE, HeaderValue::from_static("n-2"));
        assert!(dpop.remember_nonce(&a, &h));
        assert_eq!(dpop.nonce_for(&a).as_deref(), Some("n-2"));
        for bad in ["a\"b", "a b", "a\\b"] {
            h.insert(DPOP_NONCE, HeaderValue::from_str(bad).unwrap());
            assert!(!dpop.remember_nonce(&a, &h), "{bad}");
        }
        h.insert(DPOP_NONCE, HeaderValue::from_str(&"x".repeat(513)).unwrap());
        assert!(!dpop.remember_nonce(&a, &h));
        assert_eq!(dpop.nonce_for(&a).as_deref(), Some("n-2"));
    }

    #[test]
    fn debug_shows_neither_proof_nor_key() {
        let dpop = Dpop::new(JwsKey::generate_p256("the DPoP key").unwrap()).unwrap();
        let url = url::Url::parse("https://a.example/").unwrap();
        let proof = dpop.proof(&Method::GET, &url, Some(b"tok")).unwrap();
        let text = proof.0.to_str().unwrap().to_owned();
        let shown = format!("{proof:?} {dpop:?}");
        assert!(shown.contains("ProofHeader([redacted])"), "{shown}");
        assert!(!shown.contains(&text[..40]), "{shown}");
        assert!(shown.contains(dpop.thumbprint()), "{shown}");
    }

    /// `dpop_key`: a registered P-256 key's public JWK and thumbprint; an encrypted or missing
    /// file is a clear error naming the setting.
    #[test]
    fn a_registered_key_is_loaded_from_pem() {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let path = dir.path().join("dpop.key");
        std::fs::write(&path, pair.serialize_pem()).unwrap();
        let key = load_key(&path).unwrap();
        let raw = pair.public_key_raw();
        assert_eq!(key.jwk()["x"], B64.encode(&raw[1..33]));
        assert_eq!(key.jwk()["y"], B64.encode(&raw[33..]));
        assert!(key.jwk().get("d").is_none());
        assert_eq!(key.alg().name(), "ES256");

        std::fs::write(&path, "-----BEGIN ENCRYPTED PRIVATE KEY-----\n").unwrap();
        let e = load_key(&path).unwrap_err().to_string();
        assert!(e.contains("`dpop_key`") && e.contains("encrypted"), "{e}");
        let e = load_key(&dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`dpop_key`"), "{e}");
    }

    #[test]
    fn a_server_without_es256_is_refused_with_the_fix() {
        let dpop = Dpop::new(JwsKey::generate_p256("the DPoP key").unwrap()).unwrap();
        dpop.check_supported(None).unwrap();
        dpop.check_supported(Some(&["PS256".into(), "ES256".into()]))
            .unwrap();
        let e = dpop
            .check_supported(Some(&["PS256".into()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dpop_signing_alg_values_supported") && e.contains("ES256"),
            "{e}"
        );
    }
}
