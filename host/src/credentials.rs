//! The client identity: a private key and certificate chain, checked at load.
//!
//! Three key sources: a PEM file, an encrypted PKCS#8 PEM file (decrypted at load with a
//! passphrase from a file or the environment), or a key in a PKCS#11 token ([`crate::pkcs11`]),
//! which never leaves it. A key file's bytes are read into a zeroizing buffer, turned into a rustls
//! signing key, and dropped: after [`Identity::load`] the key exists only inside rustls, which
//! signs the TLS handshake with it. Nothing in this crate can return it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;
use zeroize::Zeroizing;

use crate::config::Settings;
use crate::error::{Error, Result, Warning, WarningKind};
use crate::time::{fmt_time, to_system_time};

/// The environment variable read for an encrypted key's passphrase when
/// `private_key_passphrase_file` is not set.
pub const PASSPHRASE_ENV: &str = "FAPI_PRIVATE_KEY_PASSPHRASE";

/// How the private key was checked against the certificate.
pub(crate) enum KeyCheck {
    /// By rustls, from the key's public half (key files).
    Rustls,
    /// Already: a signature by the key verified with the certificate's public key (PKCS#11).
    Verified,
}

/// Certificates that expire within this window produce a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// A loaded and checked client identity (certificate chain plus private key).
#[derive(Clone)]
pub struct Identity {
    certified: Arc<CertifiedKey>,
    thumbprint: String,
    subject: String,
    issuer: String,
    not_before: SystemTime,
    not_after: SystemTime,
    key_description: String,
    uri_sans: Vec<String>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.subject)
            .field("thumbprint", &self.thumbprint)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Identity {
    /// Load `certificate` (PEM chain, leaf first) and `private_key` (PEM: PKCS#8, PKCS#1 RSA or
    /// SEC1 EC) and check them: the key matches the leaf, the leaf is within its validity period,
    /// RSA keys have at least 2048 bits and EC keys use P-256 or stronger. Returns warnings for
    /// findings that are not fatal (a certificate that expires within 30 days).
    pub fn load(certificate: &Path, private_key: &Path) -> Result<(Identity, Vec<Warning>)> {
        let cert_pem = read(certificate, "certificate")?;
        let key_pem = Zeroizing::new(read(private_key, "private_key")?);
        Identity::from_pem(&cert_pem, &key_pem, certificate, private_key)
    }

    /// Load the identity the settings name: `private_key` as a PEM file (decrypted with the
    /// passphrase from `private_key_passphrase_file` or `$FAPI_PRIVATE_KEY_PASSPHRASE` when it is
    /// an encrypted PKCS#8 file) or as a `pkcs11:` URI, and the `certificate` file; checked as
    /// [`Identity::load`] does.
    pub fn from_settings(settings: &Settings) -> Result<(Identity, Vec<Warning>)> {
        if settings.pkcs11_uri().is_some() {
            return crate::pkcs11::identity(settings, &mut |_, _| {});
        }
        let (certificate, private_key) = (&settings.certificate, &settings.private_key);
        let cert_pem = read(certificate, "certificate")?;
        let key_pem = Zeroizing::new(read(private_key, "private_key")?);
        if !is_encrypted(&key_pem) {
            return Identity::from_pem(&cert_pem, &key_pem, certificate, private_key);
        }
        let passphrase = read_secret(
            settings.private_key_passphrase_file.as_deref(),
            "private_key_passphrase_file",
            PASSPHRASE_ENV,
        )?
        .ok_or_else(|| {
            Error::Credentials(format!(
                "{}: the private key is encrypted: give its passphrase in a file named by \
                 `private_key_passphrase_file` (mode 0600) or in ${PASSPHRASE_ENV}",
                private_key.display()
            ))
        })?;
        let der = decrypt_pkcs8(&key_pem, &passphrase, private_key)?;
        drop(passphrase);
        let chain = parse_chain(&cert_pem, certificate)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(&der[..]));
        Identity::from_signing_key(
            chain,
            || signing_key(&key, private_key),
            KeyCheck::Rustls,
            certificate,
            private_key,
        )
    }

    /// Like [`Identity::load`], from PEM bytes; the paths are only used in messages.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_name: &Path,
        key_name: &Path,
    ) -> Result<(Identity, Vec<Warning>)> {
        let chain = parse_chain(cert_pem, cert_name)?;
        let key = parse_key(key_pem, key_name)?;
        Identity::from_signing_key(
            chain,
            || signing_key(&key, key_name),
            KeyCheck::Rustls,
            cert_name,
            key_name,
        )
    }

    /// The checks common to every key source: the leaf's key strength and validity (before
    /// `signing_key` is called, so that a weak key is reported as such, not as one ring refuses),
    /// and (for [`KeyCheck::Rustls`]) that the key matches the leaf.
    pub(crate) fn from_signing_key(
        chain: Vec<CertificateDer<'static>>,
        signing_key: impl FnOnce() -> Result<Arc<dyn SigningKey>>,
        check: KeyCheck,
        cert_name: &Path,
        key_name: &Path,
    ) -> Result<(Identity, Vec<Warning>)> {
        let mut warnings = Vec::new();

        let leaf = &chain[0];
        let (_, x509) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| {
            Error::Credentials(format!(
                "{}: the first certificate is not valid X.509 ({e})",
                cert_name.display()
            ))
        })?;
        let key_description = check_key_strength(&x509, cert_name)?;
        let not_before = to_system_time(x509.validity().not_before.timestamp());
        let not_after = to_system_time(x509.validity().not_after.timestamp());
        let now = SystemTime::now();
        let subject = x509.subject().to_string();
        let issuer = x509.issuer().to_string();
        // A SAN extension that does not parse is no URI SAN (the TLS stack judges the rest).
        let uri_sans = x509
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if now < not_before {
            return Err(Error::Credentials(format!(
                "{}: the certificate for {subject} is not valid yet (valid from {}); check the clock, or wait",
                cert_name.display(),
                fmt_time(not_before)
            )));
        }
        if now > not_after {
            return Err(Error::Credentials(format!(
                "{}: the certificate for {subject} expired on {}; renew it with your directory and point `certificate` at the new one",
                cert_name.display(),
                fmt_time(not_after)
            )));
        }
        if not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
            warnings.push(Warning::new(
                WarningKind::CertificateExpiresSoon,
                format!(
                    "{}: the certificate for {subject} expires on {}: renew it soon",
                    cert_name.display(),
                    fmt_time(not_after)
                ),
            ));
        }

        let certified = CertifiedKey::new(chain, signing_key()?);
        let matched = match check {
            KeyCheck::Verified => Ok(()),
            KeyCheck::Rustls => certified.keys_match(),
        };
        match matched {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                warnings.push(Warning::new(
                    WarningKind::KeyMatchUnchecked,
                    format!(
                        "{}: could not check that the private key matches the certificate",
                        key_name.display()
                    ),
                ));
            }
            Err(_) => {
                return Err(Error::Credentials(format!(
                    "the private key {} does not match the certificate {} ({subject}); point `private_key` at the key the certificate was issued for",
                    key_name.display(),
                    cert_name.display()
                )));
            }
        }
        let thumbprint =
            thumbprint(certified.end_entity_cert().map_err(|_| {
                Error::Credentials(format!("{}: no certificate", cert_name.display()))
            })?);
        Ok((
            Identity {
                certified: Arc::new(certified),
                thumbprint,
                subject,
                issuer,
                not_before,
                not_after,
                key_description,
                uri_sans,
            },
            warnings,
        ))
    }

    /// The leaf certificate's URI subject alternative names (under IB1, the Directory URL that is
    /// the client id).
    pub fn uri_sans(&self) -> &[String] {
        &self.uri_sans
    }

    /// The RFC 8705 `x5t#S256` thumbprint of the leaf certificate.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The leaf's subject distinguished name.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The leaf's issuer distinguished name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Start of the leaf's validity period.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity period.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Key algorithm and size, e.g. "ECDSA P-256".
    pub fn key_description(&self) -> &str {
        &self.key_description
    }

    /// Number of certificates in the chain (leaf included).
    pub fn chain_len(&self) -> usize {
        self.certified.cert.len()
    }

    /// A JWS signer of this identity's key (its token's, for a PKCS#11 key), the public half
    /// taken from the leaf certificate: for `private_key_jwt` with the transport key.
    pub fn jws_key(&self) -> Result<crate::jws::JwsKey> {
        let leaf = self
            .certified
            .end_entity_cert()
            .map_err(|_| Error::Credentials("the identity has no certificate".into()))?;
        let (_, x509) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| Error::Credentials(format!("the certificate is not valid X.509 ({e})")))?;
        crate::jws::JwsKey::new(
            self.certified.key.clone(),
            x509.public_key().raw,
            &format!("the key of {}", self.subject),
        )
    }

    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

/// A PEM private key file (plain, or encrypted PKCS#8 decrypted with the passphrase from
/// `passphrase_file` or `$FAPI_PRIVATE_KEY_PASSPHRASE`) as a rustls signing key, the way
/// [`Identity::from_settings`] loads `private_key`; `setting` names the key in errors (for
/// `signing_key`, the key of `private_key_jwt` assertions). The file's bytes are zeroized.
pub(crate) fn key_from_file(
    path: &Path,
    passphrase_file: Option<&Path>,
    setting: &str,
) -> Result<Arc<dyn SigningKey>> {
    let key_pem = Zeroizing::new(read(path, setting)?);
    if !is_encrypted(&key_pem) {
        return signing_key(&parse_key(&key_pem, path)?, path);
    }
    let passphrase = read_secret(
        passphrase_file,
        "private_key_passphrase_file",
        PASSPHRASE_ENV,
    )?
    .ok_or_else(|| {
        Error::Credentials(format!(
            "{}: the `{setting}` key is encrypted: give its passphrase in a file named by \
             `private_key_passphrase_file` (mode 0600) or in ${PASSPHRASE_ENV}",
            path.display()
        ))
    })?;
    let der = decrypt_pkcs8(&key_pem, &passphrase, path)?;
    signing_key(
        &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(&der[..])),
        path,
    )
}

/// base64url (no padding) of the SHA-256 of a certificate's DER: RFC 8705 section 3.1.
pub fn thumbprint(der: &CertificateDer<'_>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref()))
}

pub(crate) fn signing_key(key: &PrivateKeyDer<'_>, key_name: &Path) -> Result<Arc<dyn SigningKey>> {
    rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| {
        Error::Credentials(format!(
            "{}: the private key cannot be used for TLS ({e}); use an RSA (2048+), ECDSA P-256/P-384 or Ed25519 key",
            key_name.display()
        ))
    })
}

/// Whether a PEM key file is an encrypted PKCS#8 one.
fn is_encrypted(pem: &[u8]) -> bool {
    pem.windows(ENCRYPTED_BEGIN.len())
        .any(|w| w == ENCRYPTED_BEGIN.as_bytes())
}

const ENCRYPTED_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The PKCS#8 DER inside an encrypted PKCS#8 PEM file (PBES2: PBKDF2 or scrypt, AES-CBC), in a
/// buffer zeroed on drop. A wrong passphrase is one error, whatever the decryption's own failure
/// (bad padding, or a plaintext that is not DER).
fn decrypt_pkcs8(pem: &[u8], passphrase: &[u8], name: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let damaged = || {
        Error::Credentials(format!(
            "{}: the encrypted private key is damaged (no complete `{ENCRYPTED_BEGIN}` block \
             with base64 lines inside); export it again",
            name.display()
        ))
    };
    let text = std::str::from_utf8(pem).map_err(|_| damaged())?;
    let start = text.find(ENCRYPTED_BEGIN).ok_or_else(damaged)?;
    let end = text[start..].find(ENCRYPTED_END).ok_or_else(damaged)? + start;
    let block = format!("{}\n", &text[start..end + ENCRYPTED_END.len()]);
    let (_, doc) = pkcs8::der::Document::from_pem(&block).map_err(|_| damaged())?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes()).map_err(|_| damaged())?;
    match info.decrypt(passphrase) {
        Ok(plain) => Ok(Zeroizing::new(plain.as_bytes().to_vec())),
        Err(pkcs8::Error::EncryptedPrivateKey(
            pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. }
            | pkcs8::pkcs5::Error::AlgorithmParametersInvalid { .. }
            | pkcs8::pkcs5::Error::NoPbes1CryptSupport,
        )) => Err(Error::Credentials(format!(
            "{}: the private key is encrypted with an unsupported scheme (supported: PBES2 with \
             PBKDF2-HMAC-SHA256 or scrypt, and AES-128/256-CBC); re-encrypt it with `openssl \
             pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.enc`",
            name.display()
        ))),
        Err(_) => Err(Error::Credentials(format!(
            "{}: wrong passphrase for the encrypted private key (from `private_key_passphrase_file` \
             or ${PASSPHRASE_ENV}): give the passphrase the key was encrypted with",
            name.display()
        ))),
    }
}

/// A secret (passphrase, PIN) from `file` (refused when group or others may read or write it) or
/// else from the environment variable `env`; a trailing newline in the file is not part of it.
/// `None` when neither is set. The secret is never part of an error message.
pub(crate) fn read_secret(
    file: Option<&Path>,
    setting: &str,
    env: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let Some(file) = file else {
        return Ok(std::env::var_os(env).map(|v| {
            use std::os::unix::ffi::OsStringExt as _;
            Zeroizing::new(v.into_vec())
        }));
    };
    let meta = std::fs::metadata(file).map_err(|e| {
        Error::Credentials(format!("cannot read `{setting}` {}: {e}", file.display()))
    })?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Credentials(format!(
                "`{setting}` {} is open to other users (mode {mode:o}); a secret file must be \
                 readable by its owner only: chmod 600 {}",
                file.display(),
                file.display()
            )));
        }
    }
    let mut secret = Zeroizing::new(read(file, setting)?);
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(Error::Credentials(format!(
            "`{setting}` {} is empty: write the secret in it (one line)",
            file.display()
        )));
    }
    Ok(Some(secret))
}

pub(crate) fn read(path: &Path, setting: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::Credentials(format!(
            "cannot read `{setting}` file {}: {e}",
            path.display()
        ))
    })
}

pub(crate) fn parse_chain(pem: &[u8], name: &Path) -> Result<Vec<CertificateDer<'static>>> {
    // The parser's own error is never shown: it can print a line of the file, and a key put in
    // the certificate file by mistake would be in it.
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Credentials(format!(
                "{}: not a usable PEM certificate file: {}",
                name.display(),
                pem_problem(&e, pem)
            ))
        })?;
    if chain.is_empty() {
        return Err(Error::Credentials(format!(
            "{}: no `-----BEGIN CERTIFICATE-----` block found; `certificate` must be a PEM certificate (leaf first)",
            name.display()
        )));
    }
    Ok(chain)
}

pub(crate) fn parse_key(pem: &[u8], name: &Path) -> Result<PrivateKeyDer<'static>> {
    if pem.windows(9).any(|w| w == b"ENCRYPTED") {
        // Encrypted PKCS#8 is decrypted by `Identity::from_settings`; what reaches this is an
        // OpenSSL "traditional" encrypted key (`Proc-Type: 4,ENCRYPTED`) or a PEM-only load.
        return Err(Error::Credentials(format!(
            "{}: the private key is encrypted: give its passphrase with \
             `private_key_passphrase_file` or ${PASSPHRASE_ENV} (encrypted PKCS#8; convert other \
             encrypted forms with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.p8`)",
            name.display()
        )));
    }
    // The parser's own error is never shown: it can print the line it choked on, which in a key
    // file that lost its line breaks is the key.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        if !matches!(e, pem::Error::NoItemsFound) {
            return Error::Credentials(format!(
                "{}: not a usable PEM private key file: {}",
                name.display(),
                pem_problem(&e, pem)
            ));
        }
        let hint = if pem.windows(11).any(|w| w == b"CERTIFICATE") {
            " (the file holds a certificate: did you swap `private_key` and `certificate`?)"
        } else {
            ""
        };
        Error::Credentials(format!(
            "{}: no usable PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) found{hint}",
            name.display()
        ))
    })
}

/// What is wrong with a PEM file, as a fixed text with the fix: never the parser's error text,
/// which holds bytes of the file (`MissingSectionEnd` and `IllegalSectionStart` print the line
/// they stopped at, as a byte list).
fn pem_problem(e: &pem::Error, pem: &[u8]) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } | pem::Error::IllegalSectionStart { .. } => {
            if pem.windows(2).any(|w| w == b"\\n") {
                "malformed PEM: it needs line breaks, and it holds literal `\\n` sequences instead \
                 (as when copied from JSON or an environment variable); turn each `\\n` into a \
                 newline (e.g. `sed -i 's/\\\\n/\\n/g' FILE` with GNU sed)"
            } else {
                "malformed PEM: it needs line breaks: the `-----BEGIN ...-----` line, the base64 \
                 lines and the `-----END ...-----` line each on a line of their own (was it \
                 copied onto one line?); restore them, or export the file again"
            }
        }
        pem::Error::Base64Decode(_) => {
            "malformed PEM: the base64 between the BEGIN and END lines is damaged (a character \
             that is not base64, or the file was cut short); export the file again"
        }
        pem::Error::SectionTooLarge => {
            "a PEM block is larger than 256 MB: this is not a key or certificate file"
        }
        pem::Error::NoItemsFound => "no PEM block of the expected kind was found",
        _ => "malformed PEM; export the file again",
    }
}

pub(crate) fn check_key_strength(x509: &X509Certificate<'_>, name: &Path) -> Result<String> {
    let spki = x509.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if bits < 2048 {
                return Err(Error::Credentials(format!(
                    "{}: the RSA key has {bits} bits; FAPI requires at least 2048, so issue a new key and certificate",
                    name.display()
                )));
            }
            Ok(format!("RSA {bits}"))
        }
        Ok(x509_parser::public_key::PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok("ECDSA P-256".into()),
                "1.3.132.0.34" => Ok("ECDSA P-384".into()),
                "1.3.132.0.35" => Ok("ECDSA P-521".into()),
                other => Err(Error::Credentials(format!(
                    "{}: the EC key uses curve {other}, which is weaker than P-256 or not supported; use P-256 or P-384",
                    name.display()
                ))),
            }
        }
        _ if alg == "1.3.101.112" => Ok("Ed25519".into()),
        _ => Err(Error::Credentials(format!(
            "{}: unsupported public key algorithm {alg}; use RSA, ECDSA or Ed25519",
            name.display()
        ))),
    }
}
