//! TLS of the native client against probes that record what was negotiated and presented:
//! TLS 1.3 preferred and `tls13_only` (checklist TLS-02, TLS-03), the TLS 1.2 suites of each
//! `tls_cipher_suites` (TLS-04), and a client certificate issued by an intermediate CA presented
//! with its chain (TLS-07).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::Fed;
use fapi_federation::FederationConfig;
use fapi_host::{Error, FapiClient, Settings};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What a probe saw of one completed handshake.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) version: Option<rustls::ProtocolVersion>,
    /// The suite negotiated.
    pub(crate) suite: Option<rustls::CipherSuite>,
    /// The client's certificate chain as presented (leaf first), DER.
    pub(crate) chain: Vec<Vec<u8>>,
}

/// A TLS listener on loopback that records each handshake and the application bytes it receives,
/// and answers every request `200 OK` with an empty body.
pub(crate) struct Probe {
    pub(crate) origin: String,
    pub(crate) accepted: Arc<AtomicU64>,
    pub(crate) app_bytes: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    pub(crate) async fn start(config: rustls::ServerConfig) -> Probe {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("https://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicU64::new(0));
        let app_bytes = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, b, s) = (accepted.clone(), app_bytes.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (acceptor, b, s) = (acceptor.clone(), b.clone(), s.clone());
                conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    s.lock().unwrap().push(Seen {
                        version: conn.protocol_version(),
                        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
                        chain: conn
                            .peer_certificates()
                            .unwrap_or_default()
                            .iter()
                            .map(|c| c.to_vec())
                            .collect(),
                    });
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                b.fetch_add(n as u64, Ordering::SeqCst);
                                head.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Probe {
            origin,
            accepted,
            app_bytes,
            seen,
            task,
        }
    }

    /// The handshakes completed so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration for 127.0.0.1 (a certificate of the federation's CA, which the client
/// trusts) with these protocol versions and, when given, a required client certificate verified
/// against `client_roots` alone.
fn server_config(
    f: &Fed,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_roots: Option<Vec<CertificateDer<'static>>>,
) -> rustls::ServerConfig {
    let identity = f.fed.pki().issue_server(&["127.0.0.1"], false).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(anchors) => {
            let mut roots = rustls::RootCertStore::empty();
            for a in anchors {
                roots.add(a).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn client_of(s: &Settings) -> FapiClient {
    FapiClient::from_settings(s).unwrap().0
}

fn tls13_only(mut s: Settings) -> Settings {
    s.client.tls13_only = true;
    s
}

/// TLS-02, TLS-03: against a server offering both, TLS 1.3 is negotiated; a TLS 1.2-only server
/// is accepted by default (with the FAPI suites) and refused with `tls13_only`, before any HTTP
/// byte (so before the token), and not tried again. With `tls13_only` the federation (TLS 1.3)
/// works end to end.
#[tokio::test]
async fn tls13_is_preferred_and_tls13_only_refuses_a_tls12_server() {
    use rustls::version::{TLS12, TLS13};
    let f = Fed::start(FederationConfig::default()).await;
    let default = client_of(&f.settings());
    let strict = client_of(&tls13_only(f.settings()));
    for client in [&default, &strict] {
        let r = client.get(f.fed.data_url()).send().await.unwrap();
        assert_eq!(r.status(), 200, "the federation speaks TLS 1.3");
    }

    let both = Probe::start(server_config(&f, &[&TLS13, &TLS12], None)).await;
    for (name, client) in [("default", &default), ("tls13_only", &strict)] {
        let r = client
            .get(format!("{}/data.csv", both.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    let seen = both.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.version == Some(rustls::ProtocolVersion::TLSv1_3)),
        "{seen:?}"
    );

    let only12 = Probe::start(server_config(&f, &[&TLS12], None)).await;
    let r = default
        .get(format!("{}/data.csv", only12.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "TLS 1.2 is allowed by default");
    assert_eq!(
        only12.seen()[0].version,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let bytes_before = only12.app_bytes.load(Ordering::SeqCst);
    let accepted_before = only12.accepted.load(Ordering::SeqCst);
    let err = strict
        .get(format!("{}/data.csv", only12.origin))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(err.is_tls(), "{err:?}");
    assert!(err.to_string().contains("ProtocolVersion"), "{err}");
    // And says what to do.
    assert!(err.to_string().contains("`tls13_only = false`"), "{err}");
    assert_eq!(only12.seen().len(), 1, "no handshake completed");
    assert_eq!(only12.app_bytes.load(Ordering::SeqCst), bytes_before);
    assert_eq!(
        only12.accepted.load(Ordering::SeqCst),
        accepted_before + 1,
        "not tried again"
    );

    // The same as the authorization server: no token.
    let mut s = tls13_only(f.settings());
    s.issuer_url = only12.origin.clone();
    let err = client_of(&s).token_info().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: true, .. }),
        "{err:?}"
    );
}

/// An intermediate CA under `root` (PEM and key), and a client certificate it issues for the
/// registered subject `CN=fapi-dev-consumer,O=fapi-host dev`: (leaf PEM, leaf key PEM,
/// intermediate PEM).
fn leaf_from_intermediate(root_pem: &str, root_key_pem: &str) -> (String, String, String) {
    let root_key = rcgen::KeyPair::from_pem(root_key_pem).unwrap();
    let root = rcgen::Issuer::from_ca_cert_pem(root_pem, &root_key).unwrap();
    let dn = |o: &str, cn: &str| {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, o);
        dn.push(rcgen::DnType::CommonName, cn);
        dn
    };
    let inter_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = dn("fapi-host dev", "fapi-host dev issuing CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = true;
    let inter = p.signed_by(&inter_key, &root).unwrap();
    let issuing = rcgen::Issuer::from_ca_cert_pem(&inter.pem(), &inter_key).unwrap();

    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = dn("fapi-host dev", "fapi-dev-consumer");
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let leaf = p.signed_by(&leaf_key, &issuing).unwrap();
    (leaf.pem(), leaf_key.serialize_pem(), inter.pem())
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// TLS-07: a client certificate issued by an intermediate CA, the file holding the leaf and the
/// intermediate. The authorization server (client certificate optional) and the data provider
/// trust only the root: they must get the whole chain to verify it, and do, end to end. A probe
/// that requires a certificate and trusts only the root records the chain as presented: leaf,
/// then intermediate. The leaf alone is refused, with the fix in the error.
#[tokio::test]
async fn a_client_certificate_from_an_intermediate_ca_is_presented_with_its_chain() {
    let f = Fed::start(FederationConfig::default()).await;
    let pki_dir = f.path("pki");
    f.fed.pki().write_to(&pki_dir).unwrap();
    let root_key = std::fs::read_to_string(pki_dir.join("ca.key")).unwrap();
    let (leaf, key, intermediate) = leaf_from_intermediate(f.fed.pki().ca_pem(), &root_key);

    let s = f.settings_with("chained", &format!("{leaf}{intermediate}"), &key);
    let client = client_of(&s);
    assert_eq!(client.identity().chain_len(), 2);
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let info = client.token_info().await.unwrap();
    assert_eq!(
        info.certificate_thumbprint,
        fapi_federation::thumbprint(&der(&leaf)),
        "the token is bound to the leaf"
    );
    let introspection = client.introspect().await.unwrap();
    assert_eq!(
        introspection["cnf"]["x5t#S256"],
        info.certificate_thumbprint.as_str()
    );

    let probe = Probe::start(server_config(
        &f,
        rustls::DEFAULT_VERSIONS,
        Some(vec![f.fed.pki().ca_der()]),
    ))
    .await;
    let r = client
        .get(format!("{}/data.csv", probe.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = probe.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].chain, vec![der(&leaf), der(&intermediate)]);

    // Without the intermediate, a server that trusts only the root cannot verify the leaf.
    let s = f.settings_with("leaf-only", &leaf, &key);
    let err = client_of(&s).token_info().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: true, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the server refused this client's certificate"),
        "{err}"
    );
}

/// An RSA 2048 server certificate for 127.0.0.1 from the federation's CA (ring cannot generate
/// RSA keys: openssl does): (certificate, key), DER; also written as PEM to `rsa-server/server.pem`
/// and `rsa-server/server.key`.
fn rsa_server_identity(f: &Fed) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let dir = f.path("rsa-server");
    std::fs::create_dir_all(&dir).unwrap();
    f.fed.pki().write_to(&dir.join("pki")).unwrap();
    let key_file = dir.join("server.key");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let key_pem = std::fs::read_to_string(&key_file).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("pki").join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(f.fed.pki().ca_pem(), &ca_key).unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
    )
}

/// The federation CA's ECDSA P-256 server certificate for 127.0.0.1, DER.
fn ecdsa_server_identity(f: &Fed) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let identity = f.fed.pki().issue_server(&["127.0.0.1"], false).unwrap();
    (
        CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap(),
        PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
    )
}

/// A TLS 1.2-only server that accepts the one cipher suite `suite`, with this certificate.
fn tls12_only_with(
    suite: rustls::CipherSuite,
    (cert, key): (CertificateDer<'static>, PrivateKeyDer<'static>),
) -> rustls::ServerConfig {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| s.suite() == suite);
    assert_eq!(provider.cipher_suites.len(), 1, "{suite:?} is in ring");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn with_suites(mut s: Settings, suites: fapi_host::profile::TlsSuites) -> Settings {
    s.client.tls_suites = suites;
    s
}

/// Records the cipher suites of every ClientHello, and answers with one certificate.
#[derive(Debug)]
struct HelloRecorder {
    key: Arc<rustls::sign::CertifiedKey>,
    offered: Mutex<Vec<Vec<rustls::CipherSuite>>>,
}

impl rustls::server::ResolvesServerCert for HelloRecorder {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.offered
            .lock()
            .unwrap()
            .push(hello.cipher_suites().to_vec());
        Some(self.key.clone())
    }
}

/// TLS-04 (FAPI 1.0 Final part 2 section 8.5, FAPI 2.0 section 5.2.2): under TLS 1.2, `fapi1`
/// offers only `TLS_ECDHE_RSA_WITH_AES_{128,256}_GCM`, `bcp195` the ECDHE-ECDSA ones besides.
/// Against TLS 1.2-only servers that accept one suite each: ECDHE-ECDSA-AES128-GCM fails under
/// `fapi1` (before any HTTP byte, with the fix) and works under `bcp195`; ECDHE-RSA-AES128-GCM
/// works under both; ECDHE-RSA-CHACHA20 fails under both. The ClientHello as a server receives it
/// lists exactly the setting's TLS 1.2 suites (and TLS 1.3's, and the renegotiation SCSV).
#[tokio::test]
async fn each_tls_cipher_suites_setting_offers_and_negotiates_only_its_tls12_suites() {
    use fapi_host::profile::TlsSuites;
    use rustls::CipherSuite as C;
    let f = Fed::start(FederationConfig::default()).await;
    let bcp195 = client_of(&with_suites(f.settings(), TlsSuites::Bcp195));
    let fapi1 = client_of(&with_suites(f.settings(), TlsSuites::Fapi1));
    // Both hold a token (the federation speaks TLS 1.3): what follows is the data provider's TLS.
    for client in [&bcp195, &fapi1] {
        client.token_info().await.unwrap();
    }
    let rsa = rsa_server_identity(&f);
    let get = |client: &FapiClient, probe: &Probe| {
        let client = client.clone();
        let url = format!("{}/data.csv", probe.origin);
        async move { client.get(url).send().await }
    };

    // ECDHE-ECDSA-AES128-GCM only: not a FAPI 1.0 suite.
    let ecdsa_only = Probe::start(tls12_only_with(
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ecdsa_server_identity(&f),
    ))
    .await;
    let err = get(&fapi1, &ecdsa_only).await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("HandshakeFailure"), "{err}");
    assert!(err.to_string().contains("`tls_cipher_suites`"), "{err}");
    assert_eq!(ecdsa_only.seen().len(), 0, "no handshake completed");
    assert_eq!(ecdsa_only.app_bytes.load(Ordering::SeqCst), 0);
    assert_eq!(
        ecdsa_only.accepted.load(Ordering::SeqCst),
        1,
        "not tried again"
    );
    let r = get(&bcp195, &ecdsa_only).await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = ecdsa_only.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        seen[0].suite,
        Some(C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    );

    // ECDHE-RSA-AES128-GCM only: FAPI 1.0's first suite, and BCP 195's.
    let rsa_only = Probe::start(tls12_only_with(
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        (rsa.0.clone(), rsa.1.clone_key()),
    ))
    .await;
    for client in [&fapi1, &bcp195] {
        let r = get(client, &rsa_only).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = rsa_only.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.suite == Some(C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)),
        "{seen:?}"
    );

    // CHACHA20 under TLS 1.2: in neither list.
    let chacha = Probe::start(tls12_only_with(
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        (rsa.0.clone(), rsa.1.clone_key()),
    ))
    .await;
    for (name, client) in [("fapi1", &fapi1), ("bcp195", &bcp195)] {
        let err = get(client, &chacha).await.unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{name}: {err:?}");
    }
    assert_eq!(chacha.seen().len(), 0);
    assert_eq!(chacha.app_bytes.load(Ordering::SeqCst), 0);

    // The ClientHello itself, as any server receives it.
    let recorder = Arc::new(HelloRecorder {
        key: Arc::new(rustls::sign::CertifiedKey::new(
            vec![rsa.0.clone()],
            rustls::crypto::ring::sign::any_supported_type(&rsa.1).unwrap(),
        )),
        offered: Mutex::new(Vec::new()),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(recorder.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let hello = Probe::start(config).await;
    for client in [&fapi1, &bcp195] {
        let r = get(client, &hello).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let offered = recorder.offered.lock().unwrap().clone();
    assert_eq!(offered.len(), 2, "{offered:?}");
    let tls13 = [
        C::TLS13_AES_256_GCM_SHA384,
        C::TLS13_AES_128_GCM_SHA256,
        C::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let tls12 = |hello: &[C]| -> Vec<C> {
        hello
            .iter()
            .copied()
            .filter(|s| !tls13.contains(s) && *s != C::TLS_EMPTY_RENEGOTIATION_INFO_SCSV)
            .collect()
    };
    assert_eq!(
        tls12(&offered[0]),
        [
            C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        "fapi1 offers FAPI 1.0's two ECDHE suites and nothing else under TLS 1.2: {:?}",
        offered[0]
    );
    let mut bcp = tls12(&offered[1]);
    bcp.sort_by_key(|s| u16::from(*s));
    assert_eq!(
        bcp,
        [
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        "{:?}",
        offered[1]
    );
    // TLS 1.3 is offered under both, unchanged.
    for hello in &offered {
        assert!(hello.contains(&C::TLS13_AES_128_GCM_SHA256), "{hello:?}");
    }
}

/// `openssl s_server -tls1_2 -cipher <cipher> -www` on 127.0.0.1 with the federation's RSA server
/// certificate; stopped (by its own PID) when dropped.
struct OpensslServer {
    child: std::process::Child,
    origin: String,
}

impl OpensslServer {
    fn start(f: &Fed, cipher: &str) -> OpensslServer {
        use std::io::BufRead as _;
        let dir = f.path("rsa-server");
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                "127.0.0.1:0",
                "-tls1_2",
                "-cipher",
                cipher,
            ])
            .args(["-www", "-cert"])
            .arg(dir.join("server.pem"))
            .arg("-key")
            .arg(dir.join("server.key"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // It says where it listens once it does: "ACCEPT 127.0.0.1:<port>".
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let origin = loop {
            let line = lines
                .next()
                .expect("openssl s_server said where it listens")
                .unwrap();
            if let Some(addr) = line.strip_prefix("ACCEPT ") {
                break format!("https://{addr}");
            }
        };
        OpensslServer { child, origin }
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TLS-04 against an independent implementation, OpenSSL's `s_server`, TLS 1.2 only with one
/// cipher each: ECDHE-RSA-AES128-GCM-SHA256 works under `fapi1` and `bcp195`; AES-CBC
/// (ECDHE-RSA-AES128-SHA256) and CHACHA20 (ECDHE-RSA-CHACHA20-POLY1305) fail under both. So does
/// DHE-RSA-AES128-GCM-SHA256, which FAPI 1.0 Final lists but rustls does not implement (no
/// finite-field Diffie-Hellman: docs/profiles.md).
#[tokio::test]
async fn openssl_servers_accept_only_the_listed_tls12_suites() {
    use fapi_host::profile::TlsSuites;
    let f = Fed::start(FederationConfig::default()).await;
    rsa_server_identity(&f);
    let clients = [
        (
            "fapi1",
            client_of(&with_suites(f.settings(), TlsSuites::Fapi1)),
        ),
        (
            "bcp195",
            client_of(&with_suites(f.settings(), TlsSuites::Bcp195)),
        ),
    ];
    for (name, client) in &clients {
        client
            .token_info()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (cipher, works) in [
        ("ECDHE-RSA-AES128-GCM-SHA256", true),
        ("ECDHE-RSA-AES128-SHA256", false),
        ("ECDHE-RSA-CHACHA20-POLY1305", false),
        ("DHE-RSA-AES128-GCM-SHA256", false),
    ] {
        let server = OpensslServer::start(&f, cipher);
        for (name, client) in &clients {
            let sent = client.get(format!("{}/", server.origin)).send().await;
            match (works, sent) {
                (true, Ok(r)) => assert_eq!(r.status(), 200, "{cipher} {name}"),
                (false, Err(e)) => assert!(e.is_tls(), "{cipher} {name}: {e:?}"),
                (_, other) => panic!("{cipher} {name}: {other:?}"),
            }
        }
    }
}
