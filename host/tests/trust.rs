//! Trust anchors per class of server (checklist TLS-06): the authorization server is verified
//! against `ca_bundle` and `[trust] authorization_server`, every other server against `ca_bundle`
//! and `[trust] data_providers` (each with the system roots when `[trust] system_roots` is on).
//! Real TLS on loopback; every CA is generated here, and the federation's server certificate has a
//! CA of its own ([`Pki::generate_with_server_ca`]), so that the CA that issues the client
//! certificates is a server anchor nowhere.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::common::Fed;
use crate::tls::Probe;
use fapi_federation::{Federation, FederationConfig, Pki};
use fapi_host::{Error, FapiClient, Settings, TrustSettings};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A federation whose server certificate comes from "fapi-host dev server CA" and whose client
/// certificates come from "fapi-host dev CA"; the consumer's configuration written beside it.
pub(crate) async fn federation_with_a_server_ca() -> Fed {
    crate::common::logs();
    let fed = Federation::start(
        Pki::generate_with_server_ca().unwrap(),
        FederationConfig::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    Fed { fed, dir, config }
}

/// A CA of its own: (certificate PEM, key).
fn new_ca(name: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (p.self_signed(&key).unwrap().pem(), key)
}

/// A TLS server configuration (1.3 and 1.2, no client authentication) for 127.0.0.1 with a
/// certificate `ca` issues.
fn server_from(ca_pem: &str, ca_key: &rcgen::KeyPair) -> rustls::ServerConfig {
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    server_config(cert.der().clone(), &key.serialize_pem())
}

fn server_config(cert: CertificateDer<'static>, key_pem: &str) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert],
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// The consumer's settings without `ca_bundle` and with this `[trust]`.
fn with_trust(f: &Fed, system_roots: bool, auth: &[&PathBuf], dps: &[&PathBuf]) -> Settings {
    let mut s = f.settings();
    s.ca_bundle = None;
    s.trust = TrustSettings {
        system_roots,
        authorization_server: auth.iter().map(|p| (*p).clone()).collect(),
        data_providers: dps.iter().map(|p| (*p).clone()).collect(),
    };
    s
}

fn client_of(s: &Settings) -> FapiClient {
    FapiClient::from_settings(s).unwrap().0
}

fn write(f: &Fed, name: &str, pem: &str) -> PathBuf {
    let path = f.path(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// TLS-06: a data provider whose certificate a private "directory server CA" issued is trusted
/// when that CA is under `[trust] data_providers`, and only then: under `[trust]
/// authorization_server` alone it is refused as a data provider; and the same server as the
/// issuer is refused while the CA is under `data_providers` alone. Each refusal happens in the
/// handshake (no handshake completes, no HTTP byte arrives, so no token is sent) and names the
/// class, the anchors tried and the key to change.
#[tokio::test]
async fn a_directory_issued_server_certificate_is_trusted_only_for_its_class() {
    let f = federation_with_a_server_ca().await;
    let as_ca = write(&f, "as-ca.pem", f.fed.pki().server_ca_pem());
    let (dir_ca_pem, dir_ca_key) = new_ca("directory server CA");
    let dir_ca = write(&f, "directory-ca.pem", &dir_ca_pem);
    let dp = Probe::start(server_from(&dir_ca_pem, &dir_ca_key)).await;
    let url = format!("{}/data.csv", dp.origin);

    // Under `data_providers`: trusted (and the token comes from the federation's AS, trusted
    // through `authorization_server`).
    let good = client_of(&with_trust(&f, false, &[&as_ca], &[&dir_ca]));
    let r = good.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(dp.seen().len(), 1);
    let bytes = dp.app_bytes.load(Ordering::SeqCst);
    assert!(bytes > 0);
    assert_eq!(f.fed.counters().token_requests, 1);

    // Under `authorization_server` only: refused as a data provider, with a valid token in hand.
    let misplaced = client_of(&with_trust(&f, false, &[&as_ca, &dir_ca], &[&as_ca]));
    misplaced.token_info().await.unwrap();
    let err = misplaced.get(&url).send().await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(
            "the data provider's certificate is not trusted: its chain does not end at \
             `[trust] data_providers` or `ca_bundle` (the system roots are off"
        ),
        "{text}"
    );
    assert!(
        text.contains("add the CA that issued its certificate to `[trust] data_providers`"),
        "{text}"
    );
    assert_eq!(dp.seen().len(), 1, "no handshake completed");
    assert_eq!(dp.app_bytes.load(Ordering::SeqCst), bytes, "no HTTP byte");

    // The same server as the issuer, its CA under `data_providers` only: no discovery, no token.
    let mut s = with_trust(&f, false, &[&as_ca], &[&dir_ca]);
    s.issuer_url = dp.origin.clone();
    let as_client = client_of(&s);
    let err = as_client.token_info().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: true, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(
            "the authorization server's certificate is not trusted: its chain does not end at \
             `[trust] authorization_server` or `ca_bundle`"
        ),
        "{err}"
    );
    let err = as_client.discovery_document().await.unwrap_err();
    assert!(err.is_tls(), "{err:?}");
    assert!(
        err.to_string().contains("`[trust] authorization_server`"),
        "{err}"
    );
    assert_eq!(dp.seen().len(), 1, "no handshake completed");
    assert_eq!(dp.app_bytes.load(Ordering::SeqCst), bytes, "no HTTP byte");
    // Three refused connections: one as a data provider, two as the issuer. None tried again.
    assert_eq!(dp.accepted.load(Ordering::SeqCst), 4);
    assert_eq!(as_client.token_requests(), 0);
}

/// TLS-06: the CA that issues client certificates is a server anchor nowhere unless configured as
/// one. The federation's written configuration trusts its server CA alone, and works end to end;
/// a server whose certificate the client-issuing CA signed is refused as a data provider and as
/// the issuer, with the system roots on (the default) and off.
#[tokio::test]
async fn a_server_certificate_from_the_client_issuing_ca_is_refused() {
    let f = federation_with_a_server_ca().await;
    let pki = f.fed.pki();
    let written = std::fs::read_to_string(f.path("ca.pem")).unwrap();
    assert_eq!(written, pki.server_ca_pem());
    assert_ne!(pki.server_ca_pem(), pki.ca_pem());
    let client_ca = CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap();
    let bundle: Vec<_> = CertificateDer::pem_slice_iter(written.as_bytes())
        .map(Result::unwrap)
        .collect();
    assert!(
        !bundle.contains(&client_ca),
        "the client CA is not in `ca_bundle`"
    );

    let client = f.client();
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Issued by the CA of the client certificates (`issue_server` uses that one).
    let rogue_identity = pki.issue_server(&["127.0.0.1"], false).unwrap();
    assert_eq!(rogue_identity.ca_pem, pki.ca_pem());
    let rogue = Probe::start(server_config(
        CertificateDer::from_pem_slice(rogue_identity.cert_pem.as_bytes()).unwrap(),
        &rogue_identity.key_pem,
    ))
    .await;
    let url = format!("{}/data.csv", rogue.origin);

    let err = client.get(&url).send().await.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(
        err.to_string().contains(
            "the data provider's certificate is not trusted: its chain does not end at \
             `[trust] data_providers`, `ca_bundle` or the system roots"
        ),
        "{err}"
    );
    let mut s = f.settings();
    s.issuer_url = rogue.origin.clone();
    let err = client_of(&s).token_info().await.unwrap_err();
    assert!(
        matches!(err, Error::TokenUnreachable { tls: true, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the authorization server's certificate is not trusted"),
        "{err}"
    );

    // System roots off, each class with the server CA alone: the same.
    let server_ca = f.path("ca.pem");
    let strict = client_of(&with_trust(&f, false, &[&server_ca], &[&server_ca]));
    assert_eq!(
        strict.get(f.fed.data_url()).send().await.unwrap().status(),
        200
    );
    let err = strict.get(&url).send().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the data provider's certificate is not trusted"),
        "{err}"
    );
    assert_eq!(rogue.seen().len(), 0, "no handshake completed");
    assert_eq!(rogue.app_bytes.load(Ordering::SeqCst), 0, "no HTTP byte");
    assert_eq!(rogue.accepted.load(Ordering::SeqCst), 3);
}

/// TLS-06: with the system roots off, a class without anchors is refused when the client is
/// built, before any connection, by name; the settings file says the same at load.
#[tokio::test]
async fn system_roots_off_without_anchors_for_a_class_is_a_configuration_error() {
    let f = federation_with_a_server_ca().await;
    let server_ca = f.path("ca.pem");
    let s = with_trust(&f, false, &[&server_ca], &[]);
    let err = FapiClient::from_settings(&s).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("no anchors for the data provider: neither `ca_bundle` nor `[trust] data_providers` is set"),
        "{err}"
    );
    assert_eq!(f.fed.counters().token_requests, 0);

    let text = std::fs::read_to_string(&f.config).unwrap();
    let text = text
        .lines()
        .filter(|l| !l.starts_with("ca_bundle"))
        .collect::<Vec<_>>()
        .join("\n");
    let cdr = format!(
        "profile = \"cdr\"\ntoken_endpoint_auth_method = \"private_key_jwt\"\n{text}\n\n[trust]\nauthorization_server = [\"ca.pem\"]\n"
    );
    let path = write(&f, "cdr.toml", &cdr);
    let err = Settings::load(Some(&path), &fapi_host::Overrides::default()).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("`[trust] data_providers = [\"ca.pem\"]`"),
        "{err}"
    );
}

/// TLS-06 with the system roots: the authorization server's chain ends at a "system" root only
/// (`SSL_CERT_FILE` stands in for the system's store) while `[trust] data_providers` holds its CA
/// and `ca_bundle` is unset: `fapi-host token` gets its token through the system roots. With that
/// store empty it fails in the handshake, naming the authorization server's class; the data
/// providers' anchors never count for it.
#[tokio::test]
async fn the_authorization_server_is_trusted_through_the_system_roots_of_its_class() {
    let f = federation_with_a_server_ca().await;
    let written = std::fs::read_to_string(&f.config).unwrap();
    let body: Vec<&str> = written
        .lines()
        .filter(|l| !l.starts_with("ca_bundle"))
        .collect();
    let config = write(
        &f,
        "system.toml",
        &format!(
            "{}\n\n[trust]\ndata_providers = [\"ca.pem\"]\n",
            body.join("\n")
        ),
    );
    let with_its_ca = write(&f, "system-with-its-ca.pem", f.fed.pki().server_ca_pem());
    let empty = write(&f, "system-empty.pem", "");
    let no_dir = f.path("no-system-certs");
    std::fs::create_dir_all(&no_dir).unwrap();
    let run = |system: PathBuf| {
        let (config, dir, no_dir) = (config.clone(), f.dir.path().to_owned(), no_dir.clone());
        tokio::task::spawn_blocking(move || {
            crate::common::fapi_host_env(
                &["--config", config.to_str().unwrap(), "token"],
                &dir,
                &[("SSL_CERT_FILE", &system), ("SSL_CERT_DIR", &no_dir)],
            )
        })
    };
    let (code, _, err) = run(with_its_ca).await.unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(f.fed.counters().token_requests, 1);

    let (code, out, err) = run(empty).await.unwrap();
    let err = String::from_utf8_lossy(&err);
    assert_eq!(code, 5, "a TLS failure is a network error: {err}");
    assert!(out.is_empty());
    assert!(
        err.contains(
            "the authorization server's certificate is not trusted: its chain does not end at \
             `[trust] authorization_server`, `ca_bundle` or the system roots"
        ),
        "{err}"
    );
    assert_eq!(f.fed.counters().token_requests, 1, "no token request");
}
