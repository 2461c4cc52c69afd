//! Key and certificate loading: formats, matching, validity and strength.
#![allow(clippy::unwrap_used)]

mod common;

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

fn has_openssl() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: openssl is not installed");
    }
    ok
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
fn thumbprint_matches_openssl() {
    if !has_openssl() {
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

    let mut spec = ClientSpec::new("fapi-dev-consumer");
    spec.not_after = now + 3 * day;
    let soon = pki.issue_client(spec).unwrap();
    let (_, warnings) = load(dir.path(), &soon.cert_pem, &soon.key_pem).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].0.contains("expires"), "{warnings:?}");
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
fn key_formats_and_strength() {
    if !has_openssl() {
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
        eprintln!("SKIP P-192: this openssl cannot make such keys");
    }
}
