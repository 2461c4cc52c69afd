//! Which anchors verify which server (`[trust]`, checklist TLS-06).
//!
//! - Two classes of server, each verified against its own anchors: the authorization server
//!   (discovery, token, introspection, revocation and their mTLS aliases: everything the token
//!   manager calls) against `ca_bundle` plus `[trust] authorization_server`; every other server
//!   (data providers, guests' requests, the proxy, batch) against `ca_bundle` plus `[trust]
//!   data_providers`. Both add the system roots when `[trust] system_roots` is on (the default of
//!   every profile but `cdr`). The CA that issues client certificates is a server anchor only when
//!   one of these names it.
//! - A server whose chain ends at the class's own anchors (every Open Energy endpoint ends at
//!   `ca_bundle`) is verified against them alone; the system roots (hundreds of certificates,
//!   ~10-20 ms to read and parse) are loaded only when a server's chain does not end there, once
//!   per identity for both classes, so that a `fapi-host` process does not pay for them at every
//!   start.
//! - A chain that ends at none of a class's anchors is refused in the handshake with
//!   [`Untrusted`], which names the class and the key to set; with the system roots off, a class
//!   without anchors is a configuration error ([`require_anchors`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{Settings, TrustSettings};
use crate::error::{Error, Result};

/// A class of servers, each verified against anchors of its own (`[trust]`, checklist TLS-06).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrustClass {
    /// The authorization server: discovery, token, introspection, revocation, mTLS aliases.
    AuthorizationServer,
    /// Every other server: data providers, and whatever guests, the proxy and batch call.
    DataProviders,
}

impl TrustClass {
    /// Both classes, the authorization server first.
    pub(crate) const ALL: [TrustClass; 2] =
        [TrustClass::AuthorizationServer, TrustClass::DataProviders];

    /// The key of `[trust]` that holds this class's own anchors.
    pub(crate) fn key(self) -> &'static str {
        match self {
            TrustClass::AuthorizationServer => "authorization_server",
            TrustClass::DataProviders => "data_providers",
        }
    }

    /// What the class's servers are called in messages.
    pub(crate) fn server(self) -> &'static str {
        match self {
            TrustClass::AuthorizationServer => "the authorization server",
            TrustClass::DataProviders => "the data provider",
        }
    }

    /// The class's own anchor files.
    pub(crate) fn files(self, trust: &TrustSettings) -> &[PathBuf] {
        match self {
            TrustClass::AuthorizationServer => &trust.authorization_server,
            TrustClass::DataProviders => &trust.data_providers,
        }
    }
}

/// Why a server's certificate was refused when its chain ends at none of its class's anchors: the
/// error rustls carries out of the handshake in place of its `UnknownIssuer`, so that the message
/// names the class and the key to change ([`Untrusted::fix`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Untrusted {
    /// The class whose anchors were tried.
    pub(crate) class: TrustClass,
    /// Whether the system roots were among them.
    pub(crate) system_roots: bool,
}

impl Untrusted {
    /// What to do about it.
    pub(crate) fn fix(&self) -> String {
        let key = self.class.key();
        let roots = if self.system_roots {
            ""
        } else {
            " (or, if its CA is a public one, set `[trust] system_roots = true`)"
        };
        format!(
            "if this server is {server}, add the CA that issued its certificate to `[trust] {key}` \
             (a list of PEM files; `ca_bundle` would trust it for every server){roots}",
            server = self.class.server(),
        )
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.class.key();
        let server = self.class.server();
        if self.system_roots {
            write!(
                f,
                "{server}'s certificate is not trusted: its chain does not end at `[trust] {key}`, \
                 `ca_bundle` or the system roots (UnknownIssuer)"
            )
        } else {
            write!(
                f,
                "{server}'s certificate is not trusted: its chain does not end at `[trust] {key}` \
                 or `ca_bundle` (the system roots are off: `[trust] system_roots = false`) \
                 (UnknownIssuer)"
            )
        }
    }
}

// rustls shows a `CertificateError::Other` with `Debug`: the sentence, not the struct.
impl fmt::Debug for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Untrusted {}

/// The system's trust anchors (a malformed system certificate is skipped, as browsers do), read
/// on first need and shared by both classes of one identity.
#[derive(Debug, Default)]
pub(crate) struct SystemRoots(OnceLock<Arc<RootCertStore>>);

impl SystemRoots {
    pub(crate) fn get(&self) -> &Arc<RootCertStore> {
        self.0.get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            Arc::new(roots)
        })
    }
}

/// The trust anchors of one PEM file, checked; `key` names the setting in messages.
fn file_roots(path: &Path, key: &str, roots: &mut RootCertStore) -> Result<usize> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {key} {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{key} {} is not a PEM file ({e})", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{key} {} has no `-----BEGIN CERTIFICATE-----` block",
            path.display()
        )));
    }
    let n = certs.len();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            Error::Config(format!(
                "{key} {}: a certificate is not a usable trust anchor ({e})",
                path.display()
            ))
        })?;
    }
    Ok(n)
}

/// The anchors of one class besides the system roots: `ca_bundle`'s, then the class's own files'.
pub(crate) fn class_roots(settings: &Settings, class: TrustClass) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &settings.ca_bundle {
        file_roots(path, "`ca_bundle`", &mut roots)?;
    }
    let key = format!("`[trust] {}`", class.key());
    for path in class.files(&settings.trust) {
        file_roots(path, &key, &mut roots)?;
    }
    Ok(roots)
}

/// With the system roots off, every class needs anchors of its own or `ca_bundle`: otherwise no
/// server of that class could ever be trusted. A configuration error naming `[trust]` and the fix.
pub(crate) fn require_anchors(trust: &TrustSettings, ca_bundle: Option<&Path>) -> Result<()> {
    if trust.system_roots || ca_bundle.is_some() {
        return Ok(());
    }
    for class in TrustClass::ALL {
        if class.files(trust).is_empty() {
            let key = class.key();
            return Err(Error::Config(format!(
                "`[trust] system_roots = false` (the default of profile \"cdr\") and no anchors \
                 for {server}: neither `ca_bundle` nor `[trust] {key}` is set, so no server of \
                 that class could be trusted; add the PEM file(s) of the CA(s) that issue its \
                 server certificates as `[trust] {key} = [\"ca.pem\"]` (or `ca_bundle` for every \
                 server), or set `[trust] system_roots = true`",
                server = class.server(),
            )));
        }
    }
    Ok(())
}

/// Server verification of one class: against the class's own anchors (`ca_bundle` plus its
/// `[trust]` files) first, then, when `[trust] system_roots` is on, against the system roots plus
/// them, read only when a server's chain does not end at the class's own anchors. The answer is
/// the full verifier's whenever the own anchors alone do not accept the server, so what is trusted
/// is exactly the union. A chain that ends at none of them is refused with [`Untrusted`].
#[derive(Debug)]
pub(crate) struct ClassVerifier {
    class: TrustClass,
    provider: Arc<CryptoProvider>,
    /// The class's own anchors, and a verifier over them alone (None when there are none).
    own: Option<(RootCertStore, Arc<WebPkiServerVerifier>)>,
    /// The system roots, when `[trust] system_roots` is on.
    system: Option<Arc<SystemRoots>>,
    /// System roots plus the own anchors, built on first need.
    full: OnceLock<std::result::Result<Arc<WebPkiServerVerifier>, rustls::Error>>,
}

impl ClassVerifier {
    pub(crate) fn new(
        settings: &Settings,
        class: TrustClass,
        provider: Arc<CryptoProvider>,
        system: &Arc<SystemRoots>,
    ) -> Result<ClassVerifier> {
        require_anchors(&settings.trust, settings.ca_bundle.as_deref())?;
        let roots = class_roots(settings, class)?;
        let own = if roots.is_empty() {
            None
        } else {
            let verifier = verifier(roots.clone(), &provider).map_err(|e| {
                Error::Config(format!("the anchors of `[trust] {}`: {e}", class.key()))
            })?;
            Some((roots, verifier))
        };
        Ok(ClassVerifier {
            class,
            provider,
            own,
            system: settings.trust.system_roots.then(|| system.clone()),
            full: OnceLock::new(),
        })
    }

    fn full(
        &self,
        system: &SystemRoots,
    ) -> std::result::Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.full
            .get_or_init(|| {
                let mut roots = RootCertStore::clone(system.get());
                if let Some((own, _)) = &self.own {
                    roots.roots.extend(own.roots.iter().cloned());
                }
                // An empty system store and no anchors of the class's own: nothing is trusted,
                // and the refusal says so as any other does (not as a verifier that cannot be
                // built).
                if roots.is_empty() {
                    return Err(rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer,
                    ));
                }
                verifier(roots, &self.provider)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// rustls's `UnknownIssuer` as [`Untrusted`], naming this class; any other error as it is.
    fn named(&self, err: rustls::Error) -> rustls::Error {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(Untrusted {
                        class: self.class,
                        system_roots: self.system.is_some(),
                    }),
                )))
            }
            other => other,
        }
    }
}

fn verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> std::result::Result<Arc<WebPkiServerVerifier>, rustls::Error> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(format!("no usable trust anchors ({e})")))
}

impl ServerCertVerifier for ClassVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let own = self.own.as_ref().map(|(_, v)| {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        });
        match (own, &self.system) {
            (Some(Ok(verified)), _) => Ok(verified),
            (Some(Err(e)), None) => Err(self.named(e)),
            (_, Some(system)) => self
                .full(system)
                .map_err(|e| self.named(e))?
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| self.named(e)),
            // Refused when the verifier is built (`require_anchors`); refused here all the same.
            (None, None) => Err(self.named(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// TLS-06: with the system roots off, a class without anchors is refused by name; `ca_bundle`
    /// or the class's own files are enough.
    #[test]
    fn without_system_roots_each_class_needs_anchors() {
        let mut trust = TrustSettings {
            system_roots: false,
            authorization_server: vec![PathBuf::from("as-ca.pem")],
            data_providers: Vec::new(),
        };
        let e = require_anchors(&trust, None).unwrap_err().to_string();
        assert!(e.contains("configuration error"), "{e}");
        assert!(e.contains("`[trust] data_providers = [\"ca.pem\"]`"), "{e}");
        assert!(e.contains("the data provider"), "{e}");
        assert!(e.contains("`[trust] system_roots = true`"), "{e}");
        assert!(require_anchors(&trust, Some(Path::new("ca.pem"))).is_ok());
        trust.data_providers.push(PathBuf::from("dp-ca.pem"));
        assert!(require_anchors(&trust, None).is_ok());
        trust.authorization_server.clear();
        let e = require_anchors(&trust, None).unwrap_err().to_string();
        assert!(e.contains("`[trust] authorization_server"), "{e}");
        trust.system_roots = true;
        trust.data_providers.clear();
        assert!(require_anchors(&trust, None).is_ok());
    }

    #[test]
    fn an_untrusted_server_is_named_by_its_class() {
        let u = Untrusted {
            class: TrustClass::DataProviders,
            system_roots: true,
        };
        assert_eq!(
            u.to_string(),
            "the data provider's certificate is not trusted: its chain does not end at \
             `[trust] data_providers`, `ca_bundle` or the system roots (UnknownIssuer)"
        );
        assert_eq!(format!("{u:?}"), u.to_string());
        let u = Untrusted {
            class: TrustClass::AuthorizationServer,
            system_roots: false,
        };
        assert!(
            u.to_string()
                .starts_with("the authorization server's certificate")
        );
        assert!(
            u.fix().contains("`[trust] authorization_server`"),
            "{}",
            u.fix()
        );
        assert!(
            u.fix().contains("`[trust] system_roots = true`"),
            "{}",
            u.fix()
        );
    }
}
