//! `private_key_jwt` client authentication against the local federation requiring it: the
//! assertions as the server received them, a new one per token, the errors of each bad input, and
//! no assertion anywhere in what the host prints or logs. Checklist rows PKJ-01, PKJ-02, PKJ-03,
//! PKJ-04, TIME-01, CRY-01.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use fapi_federation::{AsFault, ClientSpec, Federation, FederationConfig, Pki, PrivateKeyJwt};
use fapi_host::profile::Profile;
use fapi_host::{Error, FapiClient, Settings};
use serde_json::Value;

use crate::common::{self, Fed, contains, logs};

fn pkjwt(
    extra_keys: Vec<(String, Vec<u8>)>,
    accept_token_endpoint_audience: bool,
) -> FederationConfig {
    FederationConfig {
        private_key_jwt: Some(PrivateKeyJwt {
            accept_token_endpoint_audience,
            extra_keys,
        }),
        record_issued_tokens: true,
        ..FederationConfig::default()
    }
}

/// The header and claims of a compact JWS.
fn decode(jws: &str) -> (Value, Value) {
    let mut parts = jws.split('.');
    let mut next = || serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
    (next(), next())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every assertion the federation received and every token it issued, and the signature part of
/// each assertion alone: none may be in `hay` (which is `place`).
fn assert_no_assertion_or_token(fed: &Federation, place: &str, hay: &[u8]) {
    let assertions = fed.received_assertions();
    assert!(
        !assertions.is_empty(),
        "no assertion was received: a search for none cannot fail"
    );
    for (i, a) in assertions.iter().enumerate() {
        let signature = a.rsplit('.').next().unwrap();
        assert!(
            signature.len() >= 40,
            "assertion #{i}: implausible signature"
        );
        assert!(
            !contains(hay, a.as_bytes()),
            "assertion #{i} leaked into {place}"
        );
        assert!(
            !contains(hay, signature.as_bytes()),
            "the signature of assertion #{i} leaked into {place}"
        );
    }
    for (i, t) in fed.issued_tokens().iter().enumerate() {
        assert!(
            !contains(hay, t.as_bytes()),
            "token #{i} leaked into {place}"
        );
    }
}

/// PKJ-01, PKJ-02, TIME-01, CRY-01: a token by private_key_jwt over mTLS (bound to the
/// certificate), the assertion's header and claims as the server received them; a token refused
/// with invalid_token is replaced through a new assertion with a new jti; no assertion is in
/// any log line of this process.
#[tokio::test]
async fn private_key_jwt_gets_a_bound_token_and_a_new_assertion_per_token_pkj_01_pkj_02() {
    let f = Fed::start(pkjwt(Vec::new(), false)).await;
    let settings = f.settings();
    assert_eq!(settings.auth.client_auth.name(), "private_key_jwt");
    let client = FapiClient::from_settings(&settings).unwrap().0;
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let info = client.token_info().await.unwrap();
    assert_eq!(
        info.certificate_thumbprint,
        f.fed.pki().client("consumer").unwrap().thumbprint()
    );
    let received = f.fed.received_assertions();
    assert_eq!(received.len(), 1);
    let (header, claims) = decode(&received[0]);
    let transport = fapi_host::Identity::load(&settings.certificate, &settings.private_key)
        .unwrap()
        .0
        .jws_key()
        .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(
        header["kid"],
        transport.thumbprint(),
        "the default kid is the RFC 7638 thumbprint"
    );
    assert_eq!(claims["iss"], "fapi-dev-consumer");
    assert_eq!(claims["sub"], "fapi-dev-consumer");
    assert_eq!(
        claims["aud"],
        f.fed.issuer_url(),
        "aud is the issuer as a plain string"
    );
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat <= now(), "iat is never in the future");
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60);

    // The data provider refuses the token: a new one, through a new assertion.
    f.fed.revoke_all_tokens();
    let r = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let received = f.fed.received_assertions();
    assert_eq!(received.len(), 2);
    assert_ne!(decode(&received[0]).1["jti"], decode(&received[1]).1["jti"]);
    let c = f.fed.counters();
    assert_eq!((c.token_requests, c.tokens_issued), (2, 2));
    assert_eq!((c.assertions_verified, c.assertions_refused), (2, 0));

    let logs = logs();
    let logs = logs.lock().unwrap().clone();
    assert!(!logs.is_empty());
    assert_no_assertion_or_token(&f.fed, "the logs of this test process", &logs);
}

/// PKJ-02 (FAPI 1.0 ecosystems): `client_assertion_audience = "token_endpoint"` puts the mTLS
/// token endpoint's URL in aud, which a FAPI 1.0 server accepts.
#[tokio::test]
async fn token_endpoint_audience_for_fapi1_servers_pkj_02() {
    let f = Fed::start(pkjwt(Vec::new(), true)).await;
    let settings = f.settings();
    assert_eq!(settings.auth.assertion_audience.name(), "token_endpoint");
    let client = FapiClient::from_settings(&settings).unwrap().0;
    let info = client.token_info().await.unwrap();
    let (_, claims) = decode(&f.fed.received_assertions()[0]);
    assert_eq!(claims["aud"], info.token_endpoint);
    assert_eq!(info.token_endpoint, format!("{}/token", f.fed.issuer_url()));
}

/// A separate signing key (`signing_key` + `signing_certificate`, Ed25519: EdDSA) with a
/// configured `signing_kid`, registered at the server beside the certificate's key.
#[tokio::test]
async fn a_separate_signing_key_signs_with_its_kid_cry_01() {
    logs();
    let pki = Pki::generate().unwrap();
    let signer = pki
        .issue_client(ClientSpec {
            algorithm: &rcgen::PKCS_ED25519,
            ..ClientSpec::new("fapi-dev-consumer-signing")
        })
        .unwrap();
    let spki = x509_parser::parse_x509_certificate(&signer.cert_der().unwrap())
        .unwrap()
        .1
        .public_key()
        .raw
        .to_vec();
    let fed = Federation::start(pki, pkjwt(vec![("fapi-dev-consumer".into(), spki)], false))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    let (cert, key) = write_pair(dir.path(), "signing", &signer.cert_pem, &signer.key_pem);
    let mut s = Settings::load(Some(&config), &Default::default()).unwrap();
    s.auth.signing_key = Some(key);
    s.auth.signing_certificate = Some(cert);
    s.auth.signing_kid = Some("consumer-signing-2026".into());
    let client = FapiClient::from_settings(&s).unwrap().0;
    assert_eq!(
        client.get(fed.data_url()).send().await.unwrap().status(),
        200
    );
    let (header, _) = decode(&fed.received_assertions()[0]);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], "consumer-signing-2026");
}

/// Keys FAPI does not sign with are refused when the client is built, before any request: a
/// P-384 transport key (good for TLS, no FAPI JWS algorithm: CRY-01), and an Ed25519 signing key
/// under a profile that follows FAPI 1.0 (PS256 and ES256 only, part 2 section 8.6), which
/// `fapi2` accepts.
#[tokio::test]
async fn keys_fapi_does_not_sign_with_are_refused_at_start_cry_01() {
    let pki = Pki::generate().unwrap();
    let p384 = pki
        .issue_client(ClientSpec {
            algorithm: &rcgen::PKCS_ECDSA_P384_SHA384,
            ..ClientSpec::new("p384-client")
        })
        .unwrap();
    let ed = pki
        .issue_client(ClientSpec {
            algorithm: &rcgen::PKCS_ED25519,
            ..ClientSpec::new("ed-signing")
        })
        .unwrap();
    let fed = Federation::start(pki, pkjwt(Vec::new(), true))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    let base = Settings::load(Some(&config), &Default::default()).unwrap();

    let (cert, key) = write_pair(dir.path(), "p384", &p384.cert_pem, &p384.key_pem);
    let mut s = base.clone();
    (s.certificate, s.private_key) = (cert, key);
    let e = FapiClient::from_settings(&s).unwrap_err().to_string();
    assert!(e.contains("P-384") && e.contains("`signing_key`"), "{e}");

    let (cert, key) = write_pair(dir.path(), "ed", &ed.cert_pem, &ed.key_pem);
    for (profile, refused) in [
        (Profile::UkOpenBanking, true),
        (Profile::Cdr, true),
        (Profile::Fapi2, false),
    ] {
        let mut s = base.clone();
        s.profile = profile;
        s.auth.signing_key = Some(key.clone());
        s.auth.signing_certificate = Some(cert.clone());
        match FapiClient::from_settings(&s) {
            Err(e) if refused => {
                let e = e.to_string();
                assert!(
                    e.contains("Ed25519") && e.contains("part 2 section 8.6"),
                    "{profile}: {e}"
                );
            }
            Ok(_) if !refused => {}
            other => panic!("{profile}: {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(fed.counters().token_requests, 0);
}

fn write_pair(dir: &std::path::Path, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// An assertion the server refuses (signed by a key not registered for the client): an
/// `invalid_client` error that says the assertion was refused and what to check, and never
/// quotes the assertion.
#[tokio::test]
async fn a_refused_assertion_says_what_to_check() {
    let f = Fed::start(pkjwt(Vec::new(), false)).await;
    let other = f.fed.pki().client("consumer-b").unwrap();
    let (cert, key) = write_pair(f.dir.path(), "other", &other.cert_pem, &other.key_pem);
    let mut s = f.settings();
    s.auth.signing_key = Some(key.clone());
    s.auth.signing_certificate = Some(cert);
    let client = FapiClient::from_settings(&s).unwrap().0;
    let err = client.token_info().await.unwrap_err();
    assert!(
        matches!(&err, Error::TokenRefused { status: 401, error, .. } if error == "invalid_client"),
        "{err:?}"
    );
    let msg = err.to_string();
    for part in [
        "refused the private_key_jwt client assertion",
        &format!("`signing_key` {}", key.display()),
        "\"fapi-dev-consumer\"",
        "clock",
        "client_assertion_audience",
        "does not verify",
    ] {
        assert!(msg.contains(part), "{part:?} missing: {msg}");
    }
    assert_no_assertion_or_token_but_none_issued(&f.fed, &msg);
    let c = f.fed.counters();
    assert_eq!((c.assertions_refused, c.tokens_issued), (1, 0));
}

fn assert_no_assertion_or_token_but_none_issued(fed: &Federation, msg: &str) {
    assert!(fed.issued_tokens().is_empty());
    for a in fed.received_assertions() {
        assert!(!msg.contains(&a) && !msg.contains(a.rsplit('.').next().unwrap()));
    }
}

/// PKJ-03 / CRY-01: a server that lists only RS256 is refused before anything is signed or
/// sent, with its list named; one that does not list private_key_jwt likewise.
#[tokio::test]
async fn a_server_listing_only_rs256_is_refused_before_signing_pkj_03() {
    let f = Fed::start(pkjwt(Vec::new(), false)).await;
    f.fed
        .set_as_fault(Some(AsFault::SigningAlgs(vec!["RS256".into()])));
    let err = f.client().token_info().await.unwrap_err().to_string();
    assert!(
        err.contains("token_endpoint_auth_signing_alg_values_supported")
            && err.contains("[\"RS256\"]")
            && err.contains("ES256")
            && err.contains("never RS256"),
        "{err}"
    );
    f.fed.set_as_fault(None);
    // A tls_client_auth client at a server that requires private_key_jwt: refused by name.
    let mut s = f.settings();
    s.auth.client_auth = "tls_client_auth".parse().unwrap();
    let err = FapiClient::from_settings(&s)
        .unwrap()
        .0
        .token_info()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not support `tls_client_auth`") && err.contains("[\"private_key_jwt\"]"),
        "{err}"
    );
    assert_eq!(f.fed.counters().token_requests, 0);
    assert!(f.fed.received_assertions().is_empty());
}

/// A signing key that does not match `signing_certificate` is a start-up error naming both.
#[tokio::test]
async fn a_signing_key_that_does_not_match_its_certificate_is_a_startup_error() {
    let f = Fed::start(pkjwt(Vec::new(), false)).await;
    let a = f.fed.pki().client("consumer-b").unwrap();
    let b = f.fed.pki().client("limited").unwrap();
    let (cert, _) = write_pair(f.dir.path(), "b-cert", &a.cert_pem, &a.key_pem);
    let (_, key) = write_pair(f.dir.path(), "l-key", &b.cert_pem, &b.key_pem);
    let mut s = f.settings();
    s.auth.signing_key = Some(key.clone());
    s.auth.signing_certificate = Some(cert.clone());
    let err = FapiClient::from_settings(&s).unwrap_err();
    assert!(matches!(err, Error::Credentials(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "`signing_key` {} does not match `signing_certificate` {}",
            key.display(),
            cert.display()
        )),
        "{msg}"
    );
    // And signing_certificate alone is a configuration error.
    s.auth.signing_key = None;
    let err = FapiClient::from_settings(&s).unwrap_err().to_string();
    assert!(err.contains("without `signing_key`"), "{err}");
    assert_eq!(f.fed.counters().token_requests, 0);
}

/// The CLI with every log line (-vv): a token by private_key_jwt, and neither the assertion nor
/// the token in its stdout or stderr.
#[tokio::test]
async fn the_cli_never_prints_an_assertion() {
    let f = Fed::start(pkjwt(Vec::new(), false)).await;
    let cfg = f.config.display().to_string();
    let url = f.fed.data_url();
    let dir = f.dir.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        common::fapi_host(&["-vv", "--config", &cfg, "fetch", &url], &dir)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let stderr = String::from_utf8_lossy(&err);
    assert!(
        stderr.contains("client_auth=\"private_key_jwt\"")
            || stderr.contains("client_auth=private_key_jwt"),
        "{stderr}"
    );
    assert_eq!(f.fed.received_assertions().len(), 1);
    assert_no_assertion_or_token(&f.fed, "the CLI's stdout", &out);
    assert_no_assertion_or_token(&f.fed, "the CLI's stderr (-vv)", &err);
}

/// TIME-01 / PKJ-02: a token request retried after 503 sends a new assertion each time (a jti is
/// never sent twice, each iat is stamped when it is sent).
#[tokio::test]
async fn each_retry_sends_a_new_assertion_pkj_02() {
    let f = Fed::start(pkjwt(Vec::new(), false)).await;
    let mut s = f.settings();
    s.client.token_retries = 2;
    s.client.backoff_base = std::time::Duration::from_millis(1);
    f.fed.set_as_fault(Some(AsFault::TokenEndpointStatus(503)));
    let err = FapiClient::from_settings(&s)
        .unwrap()
        .0
        .token_info()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    let received = f.fed.received_assertions();
    assert_eq!(received.len(), 3, "the request and its two retries");
    let jtis: std::collections::BTreeSet<String> = received
        .iter()
        .map(|a| decode(a).1["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jtis.len(), 3, "three different jti");
    assert_eq!(f.fed.counters().token_requests, 3);
}

/// `fapi-host dev --auth private_key_jwt`: the summary says so, the written `fapi.toml` makes
/// `fetch` authenticate with an assertion (the admin counters: one verified, none refused).
#[tokio::test]
async fn dev_auth_private_key_jwt_serves_assertion_clients() {
    for dpop in [false, true] {
        dev_with_assertions(dpop).await;
    }
}

/// `fapi-host dev --auth private_key_jwt` (with `--dpop`: both at once) and a fetch through it.
async fn dev_with_assertions(dpop: bool) {
    use std::io::{BufRead as _, Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fapi-host"))
        .args(["dev", "--auth", "private_key_jwt"])
        .args(if dpop { &["--dpop"][..] } else { &[] })
        .arg("--dir")
        .arg(dir.path().join("fed"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let out = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let summary = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(out).lines() {
            let line = line.unwrap();
            let done = line.starts_with("  fapi-host --config");
            lines.push(line);
            if done {
                break;
            }
        }
        lines.join("\n")
    })
    .await
    .unwrap();
    assert!(summary.contains("private_key_jwt over mTLS"), "{summary}");
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("fed/federation.json")).unwrap())
            .unwrap();
    let config = info["config"].as_str().unwrap().to_owned();
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("token_endpoint_auth_method = \"private_key_jwt\""));
    assert_eq!(
        written.contains("sender_constraint = \"dpop\""),
        dpop,
        "{written}"
    );
    let url = info["data_url"].as_str().unwrap().to_owned();
    let cwd = dir.path().to_owned();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        common::fapi_host(&["--config", &config, "fetch", &url], &cwd)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&stderr));
    assert!(stdout.starts_with(b"postcode,"));
    // The admin listener's counters (plain HTTP on 127.0.0.1).
    let admin = info["admin_url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let counters: Value = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&admin).unwrap();
        write!(s, "GET /counters HTTP/1.0\r\nHost: {admin}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(counters["assertions_verified"], 1, "{counters}");
    assert_eq!(counters["assertions_refused"], 0, "{counters}");
    assert_eq!(counters["tokens_issued"], 1, "{counters}");
    // With --dpop too: a proof on the token request and on the resource request, both accepted.
    let proofs = if dpop { 2 } else { 0 };
    assert_eq!(counters["dpop_proofs_accepted"], proofs, "{counters}");
}

/// PKJ-04 / TIME-01 with the client's clock effectively skewed (the server's clock set off): 5 s
/// is tolerated as it is. With the server 90 s behind, the first assertion's iat is 90 s in its
/// future and it is refused; with the server 90 s ahead, its exp is past. Either way the host
/// takes the server's clock from the `Date` of the refusal, warns once, and gets the token with
/// one more assertion, stamped by the server's clock (its iat within a second or two of the
/// server's time); later assertions of the same client are stamped so from the start (one request
/// each).
#[tokio::test]
async fn a_skewed_clock_is_corrected_from_the_servers_date_pkj_04_time_01() {
    logs();
    let f = Fed::start(pkjwt(Vec::new(), false)).await;
    f.fed.set_as_fault(Some(AsFault::ClockSkew(-5)));
    f.client().token_info().await.unwrap();
    let c = f.fed.counters();
    assert_eq!((c.assertions_verified, c.assertions_refused), (1, 0));

    for skew in [-90i64, 90] {
        f.fed.set_as_fault(Some(AsFault::ClockSkew(skew)));
        let before = f.fed.counters();
        let client = f.client();
        client
            .token_info()
            .await
            .unwrap_or_else(|e| panic!("{skew}: {e}"));
        let c = f.fed.counters();
        assert_eq!(
            (
                c.assertions_verified - before.assertions_verified,
                c.assertions_refused - before.assertions_refused,
            ),
            (1, 1),
            "{skew}: one refused, one accepted"
        );
        let received = f.fed.received_assertions();
        let (_, last) = decode(received.last().unwrap());
        let server_now = now() as i64 + skew;
        let iat = last["iat"].as_i64().unwrap();
        assert!(
            (server_now - 3..=server_now).contains(&iat),
            "{skew}: iat {iat}, the server's time {server_now}"
        );
        // The same client from now on: one request, accepted at once.
        client.renew_token().await.unwrap();
        let after = f.fed.counters();
        assert_eq!(
            (
                after.assertions_verified - c.assertions_verified,
                after.assertions_refused - c.assertions_refused,
            ),
            (1, 0),
            "{skew}"
        );
    }
    let captured = logs();
    let captured = captured.lock().unwrap();
    let warned = String::from_utf8_lossy(&captured)
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("stamped by the server's clock"))
        .count();
    assert_eq!(warned, 2, "one warning per client that corrected its clock");
}
