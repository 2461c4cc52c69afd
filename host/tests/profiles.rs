//! `fapi-host check` per profile, against the local federation: the profile and its settings, the
//! TLS in use, each class's trust anchors (TLS-06), then the profile's requirements one by one
//! against the server's discovery document. docs/profiles.md describes the report.
#![allow(clippy::unwrap_used)]

use crate::common::{Fed, fapi_host};
use crate::trust::federation_with_a_server_ca;
use fapi_federation::{AsFault, FederationConfig, PrivateKeyJwt};

/// A federation whose authorization server takes `private_key_jwt` assertions (with `aud` the
/// token endpoint too, the FAPI 1.0 profiles' rule).
fn assertion_federation() -> FederationConfig {
    FederationConfig {
        private_key_jwt: Some(PrivateKeyJwt {
            accept_token_endpoint_audience: true,
            extra_keys: Vec::new(),
        }),
        ..FederationConfig::default()
    }
}

/// `fapi-host --config <file> check` with `top` put before the federation's written consumer
/// configuration and `tail` after it (a `[trust]` table, say), `ca_bundle` left out when
/// `drop_bundle`: (exit status, stdout lines).
async fn check(
    f: &Fed,
    name: &str,
    top: &str,
    tail: &str,
    drop_bundle: bool,
) -> (i32, Vec<String>) {
    let written = std::fs::read_to_string(&f.config).unwrap();
    let body: Vec<&str> = written
        .lines()
        .filter(|l| !(drop_bundle && l.starts_with("ca_bundle")))
        .collect();
    let path = f.path(&format!("{name}.toml"));
    std::fs::write(&path, format!("{top}\n{}\n{tail}\n", body.join("\n"))).unwrap();
    let dir = f.dir.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fapi_host(&["--config", path.to_str().unwrap(), "check"], &dir)
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(
        !out.contains("PRIVATE KEY"),
        "{out}{}",
        String::from_utf8_lossy(&err)
    );
    (code, out.lines().map(str::to_owned).collect())
}

/// The line of `what`, or a panic that shows the whole report.
fn line<'a>(lines: &'a [String], what: &str) -> &'a str {
    let label = |l: &&String| {
        l.get(6..)
            .is_some_and(|rest| rest.starts_with(&format!("{what}:")))
    };
    let found: Vec<_> = lines.iter().filter(label).collect();
    assert_eq!(found.len(), 1, "{what}:\n{}", lines.join("\n"));
    found[0]
}

const BCP195: &str = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, \
                      TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, \
                      TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384";

/// Open Energy (the default profile) against a federation whose servers have a CA of their own:
/// every line ok, no assertion line (it authenticates with the certificate), both classes
/// trusting `ca_bundle` then the system roots.
#[tokio::test]
async fn check_reports_open_energy_line_by_line() {
    let f = federation_with_a_server_ca().await;
    let (code, lines) = check(&f, "oe", "", "", false).await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
    assert_eq!(
        line(&lines, "profile"),
        "ok    profile: open-energy: token_endpoint_auth_method tls_client_auth, \
         sender_constraint mtls, tls_cipher_suites bcp195, [trust] system_roots true"
    );
    assert_eq!(
        line(&lines, "TLS"),
        format!("ok    TLS: TLS 1.3, and TLS 1.2 with `tls_cipher_suites = \"bcp195\"`: {BCP195}")
    );
    let shook = line(&lines, "TLS with the authorization server");
    assert!(
        shook.starts_with("ok    TLS with the authorization server: TLS 1.3, TLS13_")
            && shook.ends_with("(token endpoint)"),
        "{shook}"
    );
    for class in ["authorization server", "data providers"] {
        assert_eq!(
            line(&lines, &format!("trust ({class})")),
            format!(
                "ok    trust ({class}): 1 certificate(s) from `ca_bundle`, then the system roots"
            )
        );
    }
    assert_eq!(
        line(&lines, "auth method"),
        "ok    auth method: tls_client_auth is supported (tls_client_auth, private_key_jwt)"
    );
    assert_eq!(
        line(&lines, "bound tokens"),
        "ok    bound tokens: tls_client_certificate_bound_access_tokens is true (RFC 8705 \
         section 3.3)"
    );
    assert_eq!(
        line(&lines, "mTLS aliases"),
        "ok    mTLS aliases: mtls_endpoint_aliases names introspection_endpoint, \
         revocation_endpoint, token_endpoint"
    );
    assert!(!lines.iter().any(|l| l.contains("assertion signing")));
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("FAIL") || l.starts_with("warn"))
    );
}

/// UK Open Banking and CDR (both `private_key_jwt`) side by side against the federation: the
/// profile's values (FAPI 1.0's two suites for UK Open Banking; no system roots for CDR, whose
/// anchors are per class), the assertion's algorithm (the P-256 key signs ES256, which the
/// server lists). In the default federation one CA issues both the client's and the servers'
/// certificates: each class trusting it is said, as a warning.
#[tokio::test]
async fn check_reports_private_key_jwt_profiles_side_by_side() {
    let f = Fed::start(assertion_federation()).await;
    let (code, ob) = check(&f, "ob", "profile = \"uk-open-banking\"", "", false).await;
    assert_eq!(code, 0, "{}", ob.join("\n"));
    assert_eq!(
        line(&ob, "profile"),
        "ok    profile: uk-open-banking: token_endpoint_auth_method private_key_jwt, \
         sender_constraint mtls, client_assertion_audience token_endpoint, tls_cipher_suites \
         fapi1, [trust] system_roots true"
    );
    assert_eq!(
        line(&ob, "TLS"),
        "ok    TLS: TLS 1.3, and TLS 1.2 with `tls_cipher_suites = \"fapi1\"`: \
         TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
    );
    assert_eq!(
        line(&ob, "auth method"),
        "ok    auth method: private_key_jwt is supported (private_key_jwt)"
    );
    assert_eq!(
        line(&ob, "assertion signing"),
        "ok    assertion signing: ES256 (the signing key's) is supported (PS256, ES256, EdDSA)"
    );
    let trust = line(&ob, "trust (data providers)");
    assert!(
        trust.starts_with(
            "warn  trust (data providers): 1 certificate(s) from `ca_bundle`, then the system \
             roots; but `ca_bundle` holds the CA that issued this client's certificate \
             (O=fapi-host dev, CN=fapi-host dev CA)"
        ),
        "{trust}"
    );

    let anchors = "[trust]\nauthorization_server = [\"ca.pem\"]\ndata_providers = [\"ca.pem\"]";
    let (code, cdr) = check(&f, "cdr", "profile = \"cdr\"", anchors, true).await;
    assert_eq!(code, 0, "{}", cdr.join("\n"));
    assert_eq!(
        line(&cdr, "profile"),
        "ok    profile: cdr: token_endpoint_auth_method private_key_jwt, sender_constraint mtls, \
         client_assertion_audience token_endpoint, tls_cipher_suites bcp195, [trust] \
         system_roots false"
    );
    let trust = line(&cdr, "trust (authorization server)");
    assert!(
        trust.starts_with(
            "warn  trust (authorization server): 1 certificate(s) from `[trust] \
             authorization_server` (1 file(s)); not the system roots (`[trust] system_roots = \
             false`); but `[trust] authorization_server` holds the CA"
        ),
        "{trust}"
    );
    assert_eq!(
        line(&cdr, "assertion signing"),
        line(&ob, "assertion signing")
    );
}

/// A requirement the server does not meet fails its line with the fix, and `check` with it: an
/// Ed25519 `signing_key` (EdDSA) against a server that lists PS256 and ES256. A value set over
/// the profile's is marked so. And `[trust]` without anchors for a class (profile `cdr`, no
/// `ca_bundle`) fails the configuration line, naming the key to set.
#[tokio::test]
async fn check_fails_a_requirement_with_its_fix() {
    let f = Fed::start(assertion_federation()).await;
    f.fed.set_as_fault(Some(AsFault::SigningAlgs(vec![
        "PS256".into(),
        "ES256".into(),
    ])));
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(f.path("ed25519.key"), ed.serialize_pem()).unwrap();
    let top = "profile = \"fapi2\"\nsigning_key = \"ed25519.key\"";
    let tail = "[client]\ntls_cipher_suites = \"fapi1\"";
    let (code, lines) = check(&f, "ed", top, tail, false).await;
    assert_eq!(code, 7, "{}", lines.join("\n"));
    assert_eq!(
        line(&lines, "assertion signing"),
        "FAIL  assertion signing: the key signs EdDSA, which is not in the server's \
         token_endpoint_auth_signing_alg_values_supported (PS256, ES256): give `signing_key` a \
         key of an algorithm both FAPI (PS256, ES256, EdDSA; never RS256 or none) and the \
         server allow"
    );
    assert!(
        line(&lines, "profile").contains("tls_cipher_suites fapi1 (set; the profile's is bcp195)"),
        "{}",
        lines.join("\n")
    );

    let (code, lines) = check(&f, "bare-cdr", "profile = \"cdr\"", "", true).await;
    assert_eq!(code, 7, "{}", lines.join("\n"));
    let config = line(&lines, "configuration");
    assert!(
        config.starts_with(
            "FAIL  configuration: configuration error: `[trust] system_roots = false` (the \
             default of profile \"cdr\") and no anchors for the authorization server"
        ),
        "{config}"
    );
    assert!(
        config.contains("`[trust] authorization_server = [\"ca.pem\"]`"),
        "{config}"
    );
    assert_eq!(
        lines.len(),
        1,
        "nothing else is checked: {}",
        lines.join("\n")
    );
}
