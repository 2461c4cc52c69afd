//! TLS for one identity: one `rustls::ClientConfig`, one reqwest client.
//!
//! - TLS 1.3, and TLS 1.2 only with the cipher suites of `tls_cipher_suites` (checklist TLS-04):
//!   `bcp195` (FAPI 2.0 section 5.2.2: ECDHE with RSA or ECDSA, AES-GCM) or `fapi1` (FAPI 1.0
//!   Final part 2 section 8.5: ECDHE-RSA with AES-GCM). Never CBC, never CHACHA20 under 1.2, never
//!   RSA key exchange. `tls13_only` leaves TLS 1.2 out altogether.
//! - Servers are verified in full (chain to the system roots plus `ca_bundle`, host name,
//!   validity) by rustls's WebPKI verifier. There is no switch that turns this off. A server
//!   whose chain ends at `ca_bundle` (every Open Energy endpoint) is verified against the bundle
//!   alone; the system roots (hundreds of certificates, ~10-20 ms to read and parse) are loaded
//!   only when a server's chain does not end there, so that a `fapi-host` process does not pay for
//!   them at every start.
//! - The client certificate chain is presented whenever a server asks for it (token endpoint and
//!   resource servers alike).
//! - Redirects are never followed, proxies from the environment are ignored, and only https URLs
//!   are sent.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, RootCertStore, SignatureScheme, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::ClientOptions;
use crate::credentials::Identity;
use crate::error::{Error, Result};
use crate::net::Resolver;
use crate::profile::TlsSuites;

/// The TLS 1.2 suites of `tls_cipher_suites = "bcp195"`: FAPI 2.0's (section 5.2.2, the BCP 195
/// recommendations: ECDHE with RSA or ECDSA, AES-GCM).
const BCP195_TLS12_SUITES: [CipherSuite; 4] = [
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

/// The TLS 1.2 suites of `tls_cipher_suites = "fapi1"`: FAPI 1.0 Final part 2 section 8.5's
/// ECDHE ones. Its other two, `TLS_DHE_RSA_WITH_AES_{128,256}_GCM_*`, are not offered: rustls has
/// no finite-field Diffie-Hellman, so a FAPI 1.0 server must accept an ECDHE-RSA suite (every
/// conformant one does; the list allows both). A server with an ECDSA certificate shares no
/// TLS 1.2 suite with this list: it must speak TLS 1.3.
const FAPI1_TLS12_SUITES: [CipherSuite; 2] = [
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

/// The TLS 1.2 suites offered under `suites`, in order of preference.
pub(crate) fn tls12_suites(suites: TlsSuites) -> &'static [CipherSuite] {
    match suites {
        TlsSuites::Bcp195 => &BCP195_TLS12_SUITES,
        TlsSuites::Fapi1 => &FAPI1_TLS12_SUITES,
    }
}

/// The crypto provider: ring, restricted to the BCP 195 cipher suites (`tls_cipher_suites =
/// "bcp195"`, the default).
pub fn fapi_provider() -> CryptoProvider {
    provider_for(TlsSuites::Bcp195)
}

/// The crypto provider: ring, with every TLS 1.3 suite and, under TLS 1.2, only `suites`'s.
fn provider_for(suites: TlsSuites) -> CryptoProvider {
    let allowed = tls12_suites(suites);
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|suite| match suite {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(_) => allowed.contains(&suite.suite()),
    });
    provider
}

/// The system's trust anchors (a malformed system certificate is skipped, as browsers do).
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// The trust anchors of the `ca_bundle` file, checked.
fn bundle_roots(path: &Path) -> Result<RootCertStore> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read `ca_bundle` {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Config(format!(
                "`ca_bundle` {} is not a PEM file ({e})",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "`ca_bundle` {} has no `-----BEGIN CERTIFICATE-----` block",
            path.display()
        )));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            Error::Config(format!(
                "`ca_bundle` {}: a certificate is not a usable trust anchor ({e})",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// Server verification against the system roots plus `ca_bundle`, trying `ca_bundle` alone
/// first: the system roots are read and parsed only when a server's chain does not end at the
/// bundle (or when there is no bundle), once per identity. The answer is the full verifier's
/// whenever the bundle alone does not accept the server, so what is trusted is exactly the union.
#[derive(Debug)]
struct BundleFirst {
    provider: Arc<CryptoProvider>,
    /// The bundle's anchors, and a verifier over them alone (None without `ca_bundle`).
    bundle: Option<(RootCertStore, Arc<WebPkiServerVerifier>)>,
    /// System roots plus the bundle, built on first need.
    full: OnceLock<std::result::Result<Arc<WebPkiServerVerifier>, rustls::Error>>,
}

impl BundleFirst {
    fn new(ca_bundle: Option<&Path>, provider: Arc<CryptoProvider>) -> Result<BundleFirst> {
        let bundle = match ca_bundle {
            None => None,
            Some(path) => {
                let roots = bundle_roots(path)?;
                let verifier = verifier(roots.clone(), &provider)
                    .map_err(|e| Error::Config(format!("`ca_bundle` {}: {e}", path.display())))?;
                Some((roots, verifier))
            }
        };
        Ok(BundleFirst {
            provider,
            bundle,
            full: OnceLock::new(),
        })
    }

    fn full(&self) -> std::result::Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.full
            .get_or_init(|| {
                let mut roots = system_roots();
                if let Some((bundle, _)) = &self.bundle {
                    roots.roots.extend(bundle.roots.iter().cloned());
                }
                verifier(roots, &self.provider)
            })
            .as_ref()
            .map_err(Clone::clone)
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

impl ServerCertVerifier for BundleFirst {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some((_, bundle)) = &self.bundle
            && let Ok(verified) = bundle.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )
        {
            return Ok(verified);
        }
        self.full()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

/// Presents the one client certificate chain whenever the server asks for one.
struct Presenter(Arc<CertifiedKey>);

redacted_debug!(Presenter);

impl ResolvesClientCert for Presenter {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let scheme_ok = self.0.key.choose_scheme(sigschemes).is_some();
        if scheme_ok {
            tracing::trace!("server requested a client certificate: presenting it");
        } else {
            tracing::warn!(
                "the server asked for a client certificate but accepts none of our key's signature schemes"
            );
        }
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn protocol_versions(tls13_only: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls13_only { TLS13_ONLY } else { TLS13_AND_12 }
}

/// The rustls configuration of one identity: the suites of `tls_cipher_suites`, full server
/// verification, the client certificate presented whenever asked.
pub fn client_config(
    identity: &Identity,
    ca_bundle: Option<&Path>,
    options: &ClientOptions,
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(provider_for(options.tls_suites));
    let verifier = Arc::new(BundleFirst::new(ca_bundle, provider.clone())?);
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(protocol_versions(options.tls13_only))
        .map_err(|e| Error::Tls(format!("TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Presenter(identity.certified_key()))))
}

/// A reqwest client over an existing rustls configuration, resolving names with `resolver`.
pub fn http_client_from(
    config: rustls::ClientConfig,
    options: &ClientOptions,
    resolver: Resolver,
) -> Result<reqwest::Client> {
    client_builder(config, options, resolver)
        .read_timeout(options.timeout)
        .build()
        .map_err(|e| Error::Tls(format!("building the HTTP client: {e}")))
}

/// The same client without reqwest's read timeout, for streamed request bodies: that timeout runs
/// from the start of a request to its response head, which a long upload outlasts. The caller
/// bounds the wait itself (`FapiClient::send_stream`: after the body's last chunk, and between
/// chunks of the answer).
pub fn upload_client_from(
    config: rustls::ClientConfig,
    options: &ClientOptions,
    resolver: Resolver,
) -> Result<reqwest::Client> {
    client_builder(config, options, resolver)
        .build()
        .map_err(|e| Error::Tls(format!("building the HTTP client: {e}")))
}

fn client_builder(
    config: rustls::ClientConfig,
    options: &ClientOptions,
    resolver: Resolver,
) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .dns_resolver(resolver)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(true)
        .connect_timeout(options.connect_timeout)
        .pool_max_idle_per_host(256)
        .user_agent(concat!("fapi-host/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// TLS-04: under TLS 1.2, `bcp195` offers exactly its four ECDHE AES-GCM suites and `fapi1`
    /// exactly FAPI 1.0 Final's two ECDHE-RSA ones; TLS 1.3's suites are offered under both.
    #[test]
    fn each_setting_offers_exactly_its_tls12_suites() {
        for (suites, expected) in [
            (TlsSuites::Bcp195, &BCP195_TLS12_SUITES[..]),
            (TlsSuites::Fapi1, &FAPI1_TLS12_SUITES[..]),
        ] {
            let provider = provider_for(suites);
            let tls12: Vec<_> = provider
                .cipher_suites
                .iter()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
                .map(|s| s.suite())
                .collect();
            let mut sorted = tls12.clone();
            sorted.sort_by_key(|s| u16::from(*s));
            let mut want = expected.to_vec();
            want.sort_by_key(|s| u16::from(*s));
            assert_eq!(sorted, want, "{suites:?}");
            let names: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
            assert!(names.contains(&CipherSuite::TLS13_AES_128_GCM_SHA256));
            assert!(!names.contains(&CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256));
        }
        assert_eq!(
            FAPI1_TLS12_SUITES,
            [
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ]
        );
        // The exported provider is the default's.
        assert_eq!(
            fapi_provider().cipher_suites.len(),
            provider_for(TlsSuites::Bcp195).cipher_suites.len()
        );
    }
}
