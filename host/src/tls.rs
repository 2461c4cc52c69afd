//! TLS for one identity: one `rustls::ClientConfig` per class of server, one reqwest client each.
//!
//! - TLS 1.3, and TLS 1.2 only with the cipher suites of `tls_cipher_suites` (checklist TLS-04):
//!   `bcp195` (FAPI 2.0 section 5.2.2: ECDHE with RSA or ECDSA, AES-GCM) or `fapi1` (FAPI 1.0
//!   Final part 2 section 8.5: ECDHE-RSA with AES-GCM). Never CBC, never CHACHA20 under 1.2, never
//!   RSA key exchange. `tls13_only` leaves TLS 1.2 out altogether.
//! - Servers are verified in full (chain, host name, validity) by rustls's WebPKI verifier
//!   against the anchors of their class (`crate::trust`, checklist TLS-06): the authorization
//!   server's for the token manager's client, the data providers' for every other. There is no
//!   switch that turns this off.
//! - The client certificate chain is presented whenever a server asks for it (token endpoint and
//!   resource servers alike).
//! - Redirects are never followed, proxies from the environment are ignored, and only https URLs
//!   are sent.

use std::fmt;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, SignatureScheme, SupportedCipherSuite};
use rustls_pki_types::ServerName;

use crate::config::{ClientOptions, Settings};
use crate::credentials::Identity;
use crate::error::{Error, Result};
use crate::net::Resolver;
use crate::profile::TlsSuites;
use crate::trust::{ClassVerifier, SystemRoots, TrustClass};

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
/// no finite-field Diffie-Hellman, so a server that accepts only those under TLS 1.2 is reached
/// over TLS 1.3 or not at all. A server with an ECDSA certificate shares no TLS 1.2 suite with
/// this list either: it must speak TLS 1.3.
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

/// The rustls configurations of one identity, one per class of server ([`TrustClass`]): the same
/// suites, versions and client certificate, each verifying servers against its own anchors.
pub(crate) struct ClientConfigs {
    /// For the authorization server (the token manager's client).
    pub(crate) authorization_server: rustls::ClientConfig,
    /// For every other server.
    pub(crate) data_providers: rustls::ClientConfig,
}

/// The rustls configurations of one identity: the suites of `tls_cipher_suites`, full server
/// verification against each class's anchors, the client certificate presented whenever asked.
/// A `[trust]` without anchors for a class (system roots off) is a configuration error.
pub(crate) fn client_configs(identity: &Identity, settings: &Settings) -> Result<ClientConfigs> {
    let provider = Arc::new(provider_for(settings.client.tls_suites));
    let system = Arc::new(SystemRoots::default());
    let config = |class| -> Result<rustls::ClientConfig> {
        let verifier = Arc::new(ClassVerifier::new(
            settings,
            class,
            provider.clone(),
            &system,
        )?);
        Ok(
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(protocol_versions(settings.client.tls13_only))
                .map_err(|e| Error::Tls(format!("TLS configuration: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_cert_resolver(Arc::new(Presenter(identity.certified_key()))),
        )
    };
    Ok(ClientConfigs {
        authorization_server: config(TrustClass::AuthorizationServer)?,
        data_providers: config(TrustClass::DataProviders)?,
    })
}

/// What one handshake negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "sandbox"), allow(dead_code))]
pub(crate) struct Negotiated {
    /// TLS 1.3 or TLS 1.2.
    pub(crate) version: rustls::ProtocolVersion,
    /// The cipher suite.
    pub(crate) suite: CipherSuite,
}

impl fmt::Display for Negotiated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = match self.version {
            rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_owned(),
            rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_owned(),
            other => format!("{other:?}"),
        };
        write!(f, "{version}, {:?}", self.suite)
    }
}

/// One TLS handshake with the server of `url` over `config`, and nothing after it (no HTTP
/// byte): what it negotiated. Names resolve as the clients' do (`[client.resolve]` first).
/// `timeout` bounds the connection and the handshake. For `fapi-host check`, which says which
/// TLS the authorization server speaks with this client.
#[cfg_attr(not(feature = "sandbox"), allow(dead_code))]
pub(crate) async fn handshake(
    config: rustls::ClientConfig,
    url: &url::Url,
    resolve: &crate::net::ResolveOverrides,
    timeout: std::time::Duration,
) -> Result<Negotiated> {
    let context = format!(
        "a TLS handshake with {}",
        crate::policy::shown_url(url.as_str())
    );
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err(Error::InvalidRequest(format!(
            "{context}: the URL has no host"
        )));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addresses: Vec<std::net::SocketAddr> = match resolve.get(&host) {
        Some(ips) => ips.into_iter().map(|ip| (ip, port).into()).collect(),
        None => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Error::Network(format!("{context}: resolving {host}: {e}")))?
            .collect(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| Error::InvalidRequest(format!("{context}: {host}: {e}")))?;
    let shake = move || -> std::io::Result<Negotiated> {
        let Some(address) = addresses.first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name has no address",
            ));
        };
        let mut tcp = std::net::TcpStream::connect_timeout(address, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        match (conn.protocol_version(), conn.negotiated_cipher_suite()) {
            (Some(version), Some(suite)) => Ok(Negotiated {
                version,
                suite: suite.suite(),
            }),
            _ => Err(std::io::Error::other("the handshake negotiated nothing")),
        }
    };
    tokio::task::spawn_blocking(shake)
        .await
        .map_err(|e| Error::Network(format!("{context}: {e}")))?
        .map_err(|e| Error::from_handshake(&context, &e))
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

    /// A CA, a client identity it issues, and a TLS 1.2-only server for 127.0.0.1 that accepts
    /// `suite` alone with a (P-256) certificate of that CA; settings that trust the CA through
    /// `ca_bundle` with `suites`. (server origin, settings, identity, the directory)
    async fn tls12_server(
        suite: CipherSuite,
        suites: TlsSuites,
    ) -> (url::Url, Settings, Identity, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), &ca_key).unwrap();
        let issue = |names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(names).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, "c");
            (p.signed_by(&key, &issuer).unwrap(), key)
        };
        let (client, client_key) = issue(Vec::new());
        let (server, server_key) = issue(vec!["127.0.0.1".to_owned()]);
        std::fs::write(dir.path().join("c.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("c.key"), client_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let toml = format!(
            "client_id = \"a\"\nissuer_url = \"https://127.0.0.1\"\nrequested_scopes = \"x\"\n\
             private_key = \"c.key\"\ncertificate = \"c.pem\"\nca_bundle = \"ca.pem\"\n\
             [client]\ntls_cipher_suites = \"{}\"\n",
            suites.name()
        );
        let settings =
            Settings::from_toml(&toml, dir.path(), &crate::config::Overrides::default()).unwrap();
        let (identity, _) = Identity::from_settings(&settings).unwrap();

        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == suite);
        let key = rustls_pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("https://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        (url::Url::parse(&origin).unwrap(), settings, identity, dir)
    }

    /// What `check` reports of the authorization server's TLS: the version and suite a
    /// handshake negotiated (TLS-04: under `fapi1`, an ECDHE-ECDSA server is refused by name of
    /// the setting).
    #[tokio::test]
    async fn a_handshake_says_what_it_negotiated_or_why_not() {
        let ecdsa = CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
        let resolve = crate::net::ResolveOverrides::new();
        let timeout = std::time::Duration::from_secs(5);
        let (url, s, id, _dir) = tls12_server(ecdsa, TlsSuites::Bcp195).await;
        let configs = client_configs(&id, &s).unwrap();
        let n = handshake(configs.authorization_server, &url, &resolve, timeout)
            .await
            .unwrap();
        assert_eq!(
            n,
            Negotiated {
                version: rustls::ProtocolVersion::TLSv1_2,
                suite: ecdsa
            }
        );
        assert_eq!(
            n.to_string(),
            "TLS 1.2, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        );

        let (url, s, id, _dir) = tls12_server(ecdsa, TlsSuites::Fapi1).await;
        let configs = client_configs(&id, &s).unwrap();
        let e = handshake(configs.authorization_server, &url, &resolve, timeout)
            .await
            .unwrap_err();
        assert!(e.is_tls(), "{e:?}");
        assert!(e.to_string().contains("`tls_cipher_suites`"), "{e}");

        // The data providers' anchors do not count for the authorization server (whose own
        // anchor here is any other certificate: the client's).
        let (url, mut s, id, _dir) = tls12_server(ecdsa, TlsSuites::Bcp195).await;
        s.trust.data_providers = vec![s.ca_bundle.take().unwrap()];
        s.trust.authorization_server = vec![s.trust.data_providers[0].with_file_name("c.pem")];
        s.trust.system_roots = false;
        let configs = client_configs(&id, &s).unwrap();
        let e = handshake(configs.authorization_server, &url, &resolve, timeout)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("the authorization server's certificate is not trusted"),
            "{e}"
        );
    }
}
