//! Certificates and keys handed to clients and servers, and the helpers that look inside them
//! (RFC 8705 thumbprint, RFC 4514 subject DN).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// A client's TLS identity: a certificate issued by the federation CA and its private key.
///
/// `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Short name: "consumer", "consumer-b", "limited", "provider", or the name given in a [`ClientSpec`].
    pub name: String,
    /// The OAuth client id (also the certificate's CN).
    pub client_id: String,
    /// RFC 4514 subject DN of the certificate, e.g. `CN=fapi-dev-consumer,O=fapi-host dev`.
    pub subject_dn: String,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field("subject_dn", &self.subject_dn)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// The leaf certificate, DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, Error> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| Error::pem(format!("certificate of {}", self.name), e))
    }

    /// The private key, DER.
    pub fn key_der(&self) -> Result<PrivateKeyDer<'static>, Error> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::pem(format!("key of {}", self.name), e))
    }

    /// RFC 8705 `x5t#S256`: base64url (no padding) of the SHA-256 of the leaf certificate's DER.
    pub fn thumbprint(&self) -> String {
        match self.cert_der() {
            Ok(der) => thumbprint(&der),
            Err(_) => String::new(),
        }
    }
}

/// A server's TLS identity, for TLS failure tests (see [`crate::Pki::issue_server`]).
#[derive(Clone)]
pub struct ServerIdentity {
    /// The names the certificate is valid for.
    pub names: Vec<String>,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate of the CA that issued it (the federation CA, or a throw-away one).
    pub ca_pem: String,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("names", &self.names)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// A rustls server configuration (ring, HTTP/1.1 ALPN, no client authentication) serving this
    /// identity, for a throw-away probe server in a test.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| Error::pem("server certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::pem("server key", e))?;
        crate::tls::server_config(vec![cert], key, None)
    }
}

/// What [`crate::Pki::issue_client`] should put in an extra client certificate.
///
/// Times are [`SystemTime`]s. Defaults from [`ClientSpec::new`]: ECDSA P-256 generated key,
/// `O=fapi-host dev`, valid from one hour ago for 90 days, `name` = the common name.
pub struct ClientSpec {
    /// Short name recorded in the returned identity.
    pub name: String,
    /// Subject CN; it is also the identity's `client_id`.
    pub common_name: String,
    /// Subject O (`None`: no O attribute).
    pub organization: Option<String>,
    /// Signature algorithm of the key (e.g. `&rcgen::PKCS_ECDSA_P384_SHA384`, `&rcgen::PKCS_ED25519`).
    pub algorithm: &'static rcgen::SignatureAlgorithm,
    /// The key pair to certify. Required for RSA (ring cannot generate RSA keys); generated when `None`.
    pub key_pair: Option<rcgen::KeyPair>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity (may be in the past, for expiry tests).
    pub not_after: SystemTime,
    /// A URI subject alternative name (the IB1 Directory URL that is the client id under the
    /// `ib1` profile). `None` (the default): no SAN.
    pub uri_san: Option<String>,
}

impl fmt::Debug for ClientSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSpec")
            .field("name", &self.name)
            .field("common_name", &self.common_name)
            .field("organization", &self.organization)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("uri_san", &self.uri_san)
            .finish_non_exhaustive()
    }
}

impl ClientSpec {
    /// The defaults listed on [`ClientSpec`], for subject CN `common_name`.
    pub fn new(common_name: &str) -> Self {
        let now = SystemTime::now();
        ClientSpec {
            name: common_name.to_owned(),
            common_name: common_name.to_owned(),
            organization: Some(crate::pki::ORGANIZATION.to_owned()),
            algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
            key_pair: None,
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(90 * 86_400),
            uri_san: None,
        }
    }
}

/// RFC 8705 §3.1 thumbprint of a DER certificate: base64url without padding of its SHA-256.
pub fn thumbprint(cert_der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(cert_der))
}

/// The RFC 4514 string form of a certificate's subject (`CN=...,O=...`, last RDN first), or `None`
/// when the certificate does not parse.
pub fn subject_dn(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let mut parts = Vec::new();
    let rdns: Vec<_> = cert.subject().iter_rdn().collect();
    for rdn in rdns.into_iter().rev() {
        let mut attrs = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let name = match oid.as_str() {
                "2.5.4.3" => "CN".to_owned(),
                "2.5.4.10" => "O".to_owned(),
                "2.5.4.11" => "OU".to_owned(),
                "2.5.4.6" => "C".to_owned(),
                "2.5.4.7" => "L".to_owned(),
                "2.5.4.8" => "ST".to_owned(),
                other => other.to_owned(),
            };
            let value = attr.as_str().ok()?;
            attrs.push(format!("{name}={}", escape_dn_value(value)));
        }
        parts.push(attrs.join("+"));
    }
    Some(parts.join(","))
}

fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_rfc4514_specials() {
        assert_eq!(escape_dn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_dn_value(" x "), "\\ x\\ ");
        assert_eq!(escape_dn_value("#y"), "\\#y");
    }

    #[test]
    fn thumbprint_is_base64url_of_sha256() {
        // SHA-256("abc") = ba7816bf...; base64url without padding.
        assert_eq!(
            thumbprint(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
