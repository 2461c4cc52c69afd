//! TLS for one identity: one `rustls::ClientConfig`, one reqwest client.
//!
//! - TLS 1.3, and TLS 1.2 only with the FAPI cipher suites (ECDHE with AES-GCM); no CBC, no
//!   CHACHA20 under 1.2, no RSA key exchange.
//! - Servers are verified in full (chain to the system roots plus `ca_bundle`, host name,
//!   validity) by rustls's WebPKI verifier. There is no switch that turns this off.
//! - The client certificate chain is presented whenever a server asks for it (token endpoint and
//!   resource servers alike).
//! - Redirects are never followed, proxies from the environment are ignored, and only https URLs
//!   are sent.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, RootCertStore, SignatureScheme, SupportedCipherSuite};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::ClientOptions;
use crate::credentials::Identity;
use crate::error::{Error, Result};

/// The TLS 1.2 suites that FAPI permits (FAPI 1.0 part 2 section 8.5, FAPI 2.0 section 5.2.2).
const FAPI_TLS12_SUITES: [CipherSuite; 4] = [
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

/// The crypto provider: ring, restricted to the FAPI cipher suites.
pub fn fapi_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|suite| match suite {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(_) => FAPI_TLS12_SUITES.contains(&suite.suite()),
    });
    provider
}

/// The trust anchors for servers: the system roots plus the certificates of `ca_bundle`.
pub fn root_store(ca_bundle: Option<&Path>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A malformed system certificate is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path).map_err(|e| {
            Error::Config(format!("cannot read `ca_bundle` {}: {e}", path.display()))
        })?;
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
        for cert in certs {
            roots.add(cert).map_err(|e| {
                Error::Config(format!(
                    "`ca_bundle` {}: a certificate is not a usable trust anchor ({e})",
                    path.display()
                ))
            })?;
        }
    }
    Ok(roots)
}

/// Presents the one client certificate chain whenever the server asks for one.
struct Presenter(Arc<CertifiedKey>);

impl fmt::Debug for Presenter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Presenter([redacted])")
    }
}

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

/// The rustls configuration of one identity.
pub fn client_config(
    identity: &Identity,
    roots: RootCertStore,
    tls13_only: bool,
) -> Result<rustls::ClientConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(fapi_provider()))
        .with_protocol_versions(versions)
        .map_err(|e| Error::Tls(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Presenter(identity.certified_key())));
    Ok(config)
}

/// The reqwest client of one identity: mTLS, no redirects, no proxies, https only.
pub fn http_client(
    identity: &Identity,
    ca_bundle: Option<&Path>,
    options: &ClientOptions,
) -> Result<reqwest::Client> {
    let config = client_config(identity, root_store(ca_bundle)?, options.tls13_only)?;
    http_client_from(config, options)
}

/// A reqwest client over an existing rustls configuration.
pub fn http_client_from(
    config: rustls::ClientConfig,
    options: &ClientOptions,
) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(true)
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.timeout)
        .pool_max_idle_per_host(256)
        .user_agent(concat!("fapi-host/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Tls(format!("building the HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fapi_suites_are_offered() {
        let provider = fapi_provider();
        for suite in &provider.cipher_suites {
            if let SupportedCipherSuite::Tls12(_) = suite {
                assert!(
                    FAPI_TLS12_SUITES.contains(&suite.suite()),
                    "{:?}",
                    suite.suite()
                );
            }
        }
        let names: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert!(!names.contains(&CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256));
        assert!(names.contains(&CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert!(names.contains(&CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256));
    }
}
