//! Key and certificate loading: formats, matching, validity and strength.
//!
//! The cases that need the `openssl` command print why and pass where it is missing (or cannot
//! make P-192 keys), unless `FAPI_REQUIRE_OPENSSL=1` (set by `.ci/run`): then they fail.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use fapi_federation::{ClientSpec, Pki};
use fapi_host::{Error, Identity};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn load(dir: &Path, cert: &str, key: &str) -> Result<(Identity, Vec<fapi_host::Warning>), Error> {
    Identity::load(&write(dir, "c.pem", cert), &write(dir, "k.pem", key))
}

/// Whether a missing openssl (or an openssl without P-192) fails the test (CI) instead of
/// skipping it.
fn openssl_required() -> bool {
    std::env::var("FAPI_REQUIRE_OPENSSL").is_ok_and(|v| v == "1")
}

/// Skip `what` (false, with a message) because of `why`, or fail when openssl is required.
fn skip(what: &str, why: &str) -> bool {
    assert!(
        !openssl_required(),
        "FAPI_REQUIRE_OPENSSL=1 but {what} cannot run: {why}"
    );
    eprintln!("SKIPPED {what}: {why} (set FAPI_REQUIRE_OPENSSL=1 to make this a failure)");
    false
}

/// Whether the `openssl` command runs; if not, [`skip`] `test`.
fn has_openssl(test: &str) -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok || skip(test, "openssl is not installed")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn registered_identity_loads_with_its_thumbprint() {
    let pki = Pki::generate().unwrap();
    let c = pki.client("consumer").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (id, warnings) = load(dir.path(), &c.cert_pem, &c.key_pem).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(id.thumbprint(), c.thumbprint());
    assert_eq!(id.key_description(), "ECDSA P-256");
    assert!(!format!("{id:?}").contains("PRIVATE"));
}

#[test]
#[cfg_attr(not(fapi_has_openssl), ignore = "needs the openssl command")]
fn thumbprint_matches_openssl() {
    if !has_openssl("thumbprint_matches_openssl") {
        return;
    }
    let pki = Pki::generate().unwrap();
    let c = pki.client("consumer").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.pem", &c.cert_pem);
    let out = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in c.pem -outform DER | openssl dgst -sha256 -binary | openssl base64 -A | tr '+/' '-_' | tr -d '='")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let expected = String::from_utf8(out.stdout).unwrap();
    let (id, _) = load(dir.path(), &c.cert_pem, &c.key_pem).unwrap();
    assert_eq!(id.thumbprint(), expected.trim());
}

#[test]
fn key_that_does_not_match_is_refused() {
    let pki = Pki::generate().unwrap();
    let a = pki.client("consumer").unwrap();
    let b = pki.client("consumer-b").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path(), &a.cert_pem, &b.key_pem).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"));
}

#[test]
fn validity_is_checked() {
    let pki = Pki::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);

    let mut spec = ClientSpec::new("fapi-dev-consumer");
    spec.not_before = now - 30 * day;
    spec.not_after = now - day;
    let expired = pki.issue_client(spec).unwrap();
    let err = load(dir.path(), &expired.cert_pem, &expired.key_pem).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    let mut spec = ClientSpec::new("fapi-dev-consumer");
    spec.not_before = now + day;
    spec.not_after = now + 30 * day;
    let future = pki.issue_client(spec).unwrap();
    let err = load(dir.path(), &future.cert_pem, &future.key_pem).unwrap_err();
    assert!(err.to_string().contains("not valid yet"), "{err}");

    // The warning comes 30 days before expiry, not earlier.
    let mut spec = ClientSpec::new("fapi-dev-consumer");
    spec.not_after = now + 31 * day;
    let month = pki.issue_client(spec).unwrap();
    let (_, warnings) = load(dir.path(), &month.cert_pem, &month.key_pem).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");

    let mut spec = ClientSpec::new("fapi-dev-consumer");
    spec.not_after = now + 29 * day;
    let soon = pki.issue_client(spec).unwrap();
    let (_, warnings) = load(dir.path(), &soon.cert_pem, &soon.key_pem).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].kind == fapi_host::WarningKind::CertificateExpiresSoon
            && warnings[0].message.contains("expires"),
        "{warnings:?}"
    );
}

#[test]
fn bad_files_get_clear_errors() {
    let pki = Pki::generate().unwrap();
    let c = pki.client("consumer").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path(), "not a pem", &c.key_pem).unwrap_err();
    assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");
    let err = load(dir.path(), &c.cert_pem, &c.cert_pem).unwrap_err();
    assert!(err.to_string().contains("swap"), "{err}");
    let err = load(
        dir.path(),
        &c.cert_pem,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("encrypted"), "{err}");
    let err =
        Identity::load(&dir.path().join("missing.pem"), &dir.path().join("k.pem")).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

/// PKCS#1 RSA and SEC1 EC keys (converted by openssl from the generated ones) load; weak keys do not.
#[test]
#[cfg_attr(not(fapi_has_openssl), ignore = "needs the openssl command")]
fn key_formats_and_strength() {
    if !has_openssl("key_formats_and_strength") {
        return;
    }
    let pki = Pki::generate().unwrap();
    let c = pki.client("consumer").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "pk8.pem", &c.key_pem);
    openssl(d, &["ec", "-in", "pk8.pem", "-out", "sec1.pem"]);
    let sec1 = std::fs::read_to_string(d.join("sec1.pem")).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
    let (id, _) = load(d, &c.cert_pem, &sec1).unwrap();
    assert_eq!(id.thumbprint(), c.thumbprint());

    // RSA 2048, PKCS#1 ("traditional") form, self-signed.
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.key", "2048"]);
    openssl(
        d,
        &[
            "req", "-new", "-x509", "-key", "rsa.key", "-subj", "/CN=rsa", "-days", "30", "-out",
            "rsa.pem",
        ],
    );
    let key = std::fs::read_to_string(d.join("rsa.key")).unwrap();
    assert!(key.contains("BEGIN RSA PRIVATE KEY"));
    let (id, _) = Identity::load(&d.join("rsa.pem"), &d.join("rsa.key")).unwrap();
    assert_eq!(id.key_description(), "RSA 2048");

    // RSA 1024: refused.
    openssl(d, &["genrsa", "-out", "weak.key", "1024"]);
    openssl(
        d,
        &[
            "req", "-new", "-x509", "-key", "weak.key", "-subj", "/CN=weak", "-days", "30", "-out",
            "weak.pem",
        ],
    );
    let err = Identity::load(&d.join("weak.pem"), &d.join("weak.key")).unwrap_err();
    assert!(
        err.to_string().contains("1024") && err.to_string().contains("2048"),
        "{err}"
    );

    // P-192 (secp192r1): refused.
    let p192 = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime192v1",
            "-nodes",
            "-subj",
            "/CN=p192",
            "-days",
            "30",
            "-keyout",
            "p192.key",
            "-out",
            "p192.pem",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    if p192.status.success() {
        let err = Identity::load(&d.join("p192.pem"), &d.join("p192.key")).unwrap_err();
        assert!(err.to_string().contains("P-256"), "{err}");
    } else {
        skip(
            "key_formats_and_strength, P-192",
            &format!(
                "this openssl cannot make P-192 keys: {}",
                String::from_utf8_lossy(&p192.stderr).trim()
            ),
        );
    }
}

/// A fresh self-signed P-256 identity made by rcgen: (certificate PEM, key PEM).
fn rcgen_identity(params: rcgen::CertificateParams) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The base64 body of a PEM block (its lines joined).
fn pem_base64(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// `msg` holds nothing of `b64`: not the whole, not any 16-character piece, not its bytes printed
/// as a list (`[77, 73, 71, ...]`, as the PEM parser's errors print them), not a run of it.
fn assert_holds_nothing_of(msg: &str, b64: &str, what: &str) {
    assert!(!msg.contains(b64), "{what}: the base64 is in: {msg}");
    let chars: Vec<char> = b64.chars().collect();
    for w in chars.windows(16) {
        let piece: String = w.iter().collect();
        assert!(!msg.contains(&piece), "{what}: {piece:?} is in: {msg}");
    }
    for w in b64.as_bytes().windows(6) {
        let list = w.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
        assert!(!msg.contains(&list), "{what}: bytes {list} are in: {msg}");
    }
}

/// A key file that lost its line breaks (copied onto one line, or with literal `\n` from JSON or an
/// environment variable) is refused with a fixed message that says how to mend it, never with the
/// PEM parser's own error text, which prints the line it choked on: the key.
#[test]
fn malformed_pem_never_puts_the_key_or_certificate_into_the_error() {
    let (cert_pem, key_pem) =
        rcgen_identity(rcgen::CertificateParams::new(vec!["client.example".into()]).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let key_b64 = pem_base64(&key_pem);
    assert!(key_b64.len() > 100, "{key_b64}");
    let one_line = key_pem.replace('\n', "");
    let literal_newlines = key_pem.replace('\n', "\\n");
    let literal_no_final = key_pem.trim_end().replace('\n', "\\n");
    let begin_glued = format!(
        "-----BEGIN PRIVATE KEY-----{}\n-----END PRIVATE KEY-----\n",
        key_b64
    );
    for (what, bad_key) in [
        ("one line", one_line.as_str()),
        ("literal \\n", literal_newlines.as_str()),
        ("literal \\n, no final newline", literal_no_final.as_str()),
        ("base64 glued to BEGIN", begin_glued.as_str()),
    ] {
        let err = load(dir.path(), &cert_pem, bad_key).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Credentials(_)), "{what}: {msg}");
        assert_holds_nothing_of(&msg, &key_b64, what);
        assert_holds_nothing_of(&format!("{err:?}"), &key_b64, what);
        assert!(msg.contains("k.pem"), "{what}: names the file: {msg}");
        assert!(
            msg.contains("line break"),
            "{what}: says what is wrong: {msg}"
        );
        if bad_key.contains("\\n") {
            assert!(msg.contains("literal"), "{what}: says how to fix: {msg}");
        }
    }

    // The certificate path: a one-line certificate, and a one-line key given as the certificate
    // (swapped settings), are refused the same way.
    let cert_b64 = pem_base64(&cert_pem);
    for (what, bad_cert, secret) in [
        (
            "one-line certificate",
            cert_pem.replace('\n', ""),
            &cert_b64,
        ),
        ("one-line key as certificate", one_line.clone(), &key_b64),
        (
            "certificate with literal \\n",
            cert_pem.replace('\n', "\\n"),
            &cert_b64,
        ),
    ] {
        let err = load(dir.path(), &bad_cert, &key_pem).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Credentials(_)), "{what}: {msg}");
        assert_holds_nothing_of(&msg, secret, what);
        assert!(msg.contains("c.pem"), "{what}: names the file: {msg}");
        assert!(
            msg.contains("line break"),
            "{what}: says what is wrong: {msg}"
        );
    }
}

/// Validity dates outside what an HTTP date can show (before 1970; RFC 5280's "no expiry"
/// 9999-12-31T23:59:59Z) are shown, in errors and by `check`, without a panic.
#[test]
fn validity_dates_before_1970_and_in_9999_are_shown_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // Expired in 1960: the error names the date.
    let mut params = rcgen::CertificateParams::new(vec!["old.example".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(1950, 1, 1);
    params.not_after = rcgen::date_time_ymd(1960, 6, 30);
    let (cert, key) = rcgen_identity(params);
    let err = load(dir.path(), &cert, &key).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(err.to_string().contains("1960-06-30"), "{err}");

    // Valid from 1950 to the end of 9999: loads, and its dates read back.
    let mut params = rcgen::CertificateParams::new(vec!["forever.example".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(1950, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    let (cert, key) = rcgen_identity(params);
    let cert_path = write(dir.path(), "forever.pem", &cert);
    let key_path = write(dir.path(), "forever.key", &key);
    let (id, warnings) = Identity::load(&cert_path, &key_path).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(id.not_before() < SystemTime::UNIX_EPOCH);

    // `check` prints them (the issuer is a closed port: the validity line comes before discovery).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write(
        dir.path(),
        "fapi.toml",
        &format!(
            "client_id = \"c\"\nissuer_url = \"https://127.0.0.1:{port}\"\nrequested_scopes = \"s\"\n\
             private_key = \"forever.key\"\ncertificate = \"forever.pem\"\n[client]\nretries = 0\n"
        ),
    );
    let (code, out, err) =
        common::fapi_host(&["--config", config.to_str().unwrap(), "check"], dir.path());
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, 7, "the discovery check fails: {out}{err}");
    assert!(
        out.contains("ok    validity: valid from 1950-01-01T00:00:00Z until 9999-12-31T00:00:00Z"),
        "{out}"
    );
}
