//! Encrypted PKCS#8 key files (`-----BEGIN ENCRYPTED PRIVATE KEY-----`): made by `openssl pkcs8
//! -topk8 -v2 aes-256-cbc` (PBKDF2) and `-scrypt` at test time, used against the local federation
//! by the library and by the `fapi-host` binary, with the passphrase from a file or
//! `$FAPI_PRIVATE_KEY_PASSPHRASE`; a wrong or missing passphrase and a passphrase file open to
//! others are clear errors, and the passphrase is never in any output or log.
//!
//! Without the `openssl` command the tests are ignored, with the reason in the test summary, unless
//! `FAPI_REQUIRE_OPENSSL=1` (set by `.ci/run`): then they fail.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Fed, contains, fapi_host_env};
use fapi_federation::{ClientSpec, FederationConfig};
use fapi_host::{Error, FapiClient, Overrides, Settings};

const PASSPHRASE: &str = "Corr3ct-h0rse-battery-staple-7f3a";
const WRONG: &str = "Wr0ng-passphrase-c41d";

fn openssl_works(test: &str) -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("FAPI_REQUIRE_OPENSSL").as_deref() != Ok("1"),
            "FAPI_REQUIRE_OPENSSL=1 but {test} cannot run: openssl is not installed"
        );
        eprintln!(
            "SKIPPED {test}: openssl is not installed (set FAPI_REQUIRE_OPENSSL=1 to make this a failure)"
        );
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

fn write_secret(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Encrypt `plain` (a PEM key file in `dir`) to `name` with `openssl pkcs8 -topk8` and `how`
/// (`-v2 aes-256-cbc` or `-scrypt`); returns the encrypted file's path.
fn encrypt(dir: &Path, plain: &str, name: &str, how: &[&str]) -> PathBuf {
    write_secret(&dir.join("openssl-pass"), PASSPHRASE, 0o600);
    let mut args = vec!["pkcs8", "-topk8", "-in", plain, "-out", name];
    args.extend_from_slice(how);
    args.extend_from_slice(&["-passout", "file:openssl-pass"]);
    openssl(dir, &args);
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{text:.60}"
    );
    dir.join(name)
}

/// The federation's consumer settings with `key` as `private_key` and `passphrase_file`.
fn settings(f: &Fed, key: &Path, passphrase_file: Option<&Path>) -> Settings {
    let mut s = f.settings();
    s.private_key = key.to_path_buf();
    s.private_key_passphrase_file = passphrase_file.map(Path::to_path_buf);
    s
}

async fn fetch_ok(s: &Settings, f: &Fed) {
    let (client, warnings) = FapiClient::from_settings(s).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let resp = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().starts_with("postcode,"));
}

fn assert_no_secret(what: &str, bytes: &[u8]) {
    for secret in [PASSPHRASE, WRONG] {
        assert!(
            !contains(bytes, secret.as_bytes()),
            "{what} holds a passphrase"
        );
    }
}

#[tokio::test]
#[cfg_attr(not(fapi_has_openssl), ignore = "needs the openssl command")]
async fn pbkdf2_and_scrypt_keys_fetch_and_rsa_too() {
    if !openssl_works("pbkdf2_and_scrypt_keys_fetch_and_rsa_too") {
        return;
    }
    let f = Fed::start(FederationConfig::default()).await;
    let dir = f.dir.path();
    let pass = dir.join("pass");
    write_secret(&pass, PASSPHRASE, 0o600);
    // The consumer's own P-256 key, encrypted both ways.
    for (name, how) in [
        ("p256-pbkdf2.key", &["-v2", "aes-256-cbc"][..]),
        ("p256-scrypt.key", &["-scrypt"][..]),
        ("p256-aes128.key", &["-v2", "aes-128-cbc"][..]),
    ] {
        let key = encrypt(dir, "consumer.key", name, how);
        fetch_ok(&settings(&f, &key, Some(&pass)), &f).await;
    }
    // An RSA key made by openssl, certified by the federation's CA for the consumer's DN.
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.key",
        ],
    );
    let rsa_pem = std::fs::read_to_string(dir.join("rsa.key")).unwrap();
    let mut spec = ClientSpec::new("fapi-dev-consumer");
    spec.algorithm = &rcgen::PKCS_RSA_SHA256;
    spec.key_pair = Some(rcgen::KeyPair::from_pem(&rsa_pem).unwrap());
    let id = f.fed.pki().issue_client(spec).unwrap();
    std::fs::write(dir.join("rsa.pem"), &id.cert_pem).unwrap();
    let key = encrypt(dir, "rsa.key", "rsa-pbkdf2.key", &["-v2", "aes-256-cbc"]);
    let mut s = settings(&f, &key, Some(&pass));
    s.certificate = dir.join("rsa.pem");
    let (client, _) = FapiClient::from_settings(&s).unwrap();
    assert_eq!(client.identity().key_description(), "RSA 2048");
    let resp = client.get(f.fed.data_url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_no_secret("the logs", &common::logs().lock().unwrap());
}

#[tokio::test]
#[cfg_attr(not(fapi_has_openssl), ignore = "needs the openssl command")]
async fn wrong_missing_and_exposed_passphrases_are_clear_errors() {
    if !openssl_works("wrong_missing_and_exposed_passphrases_are_clear_errors") {
        return;
    }
    let f = Fed::start(FederationConfig::default()).await;
    let dir = f.dir.path();
    let key = encrypt(dir, "consumer.key", "enc.key", &["-v2", "aes-256-cbc"]);
    let scrypt_key = encrypt(dir, "consumer.key", "enc-scrypt.key", &["-scrypt"]);
    let wrong = dir.join("wrong");
    write_secret(&wrong, WRONG, 0o600);
    for k in [&key, &scrypt_key] {
        let err = FapiClient::from_settings(&settings(&f, k, Some(&wrong))).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Credentials(_)), "{msg}");
        assert!(msg.contains("wrong passphrase"), "{msg}");
        assert!(msg.contains("private_key_passphrase_file"), "{msg}");
        assert_no_secret("the error", msg.as_bytes());
        assert_no_secret("the error's Debug", format!("{err:?}").as_bytes());
    }

    // A passphrase file that group or others can read is refused, with the chmod that fixes it.
    let open = dir.join("open-pass");
    write_secret(&open, PASSPHRASE, 0o644);
    let msg = FapiClient::from_settings(&settings(&f, &key, Some(&open)))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("chmod 600") && msg.contains("644"), "{msg}");
    assert_no_secret("the error", msg.as_bytes());

    // No passphrase anywhere (the variable is not set in this test process).
    assert!(std::env::var_os("FAPI_PRIVATE_KEY_PASSPHRASE").is_none());
    let msg = FapiClient::from_settings(&settings(&f, &key, None))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("encrypted")
            && msg.contains("private_key_passphrase_file")
            && msg.contains("FAPI_PRIVATE_KEY_PASSPHRASE"),
        "{msg}"
    );

    // An empty passphrase file.
    let empty = dir.join("empty-pass");
    write_secret(&empty, "", 0o600);
    let msg = FapiClient::from_settings(&settings(&f, &key, Some(&empty)))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("is empty"), "{msg}");

    // A damaged encrypted file.
    let text = std::fs::read_to_string(&key).unwrap();
    let damaged = dir.join("damaged.key");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1].replace_range(10..11, "*");
    std::fs::write(&damaged, lines.join("\n")).unwrap();
    let pass = dir.join("pass");
    write_secret(&pass, PASSPHRASE, 0o600);
    let msg = FapiClient::from_settings(&settings(&f, &damaged, Some(&pass)))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("damaged"), "{msg}");
    assert_no_secret("the logs", &common::logs().lock().unwrap());
}

/// The binary: the passphrase from the file named in the configuration, and from the environment;
/// a wrong one exits 3 with one clear line; no output at any verbosity holds it.
#[tokio::test]
#[cfg_attr(not(fapi_has_openssl), ignore = "needs the openssl command")]
async fn cli_fetch_and_check_with_an_encrypted_key() {
    if !openssl_works("cli_fetch_and_check_with_an_encrypted_key") {
        return;
    }
    let f = Fed::start(FederationConfig::default()).await;
    let dir = f.dir.path().to_owned();
    encrypt(&dir, "consumer.key", "enc.key", &["-scrypt"]);
    write_secret(&dir.join("pass"), PASSPHRASE, 0o600);
    let base = std::fs::read_to_string(&f.config).unwrap();
    let base = base.replace(
        "private_key = \"consumer.key\"",
        "private_key = \"enc.key\"",
    );
    assert!(base.contains("enc.key"));
    let with_file = dir.join("file.toml");
    std::fs::write(
        &with_file,
        format!("private_key_passphrase_file = \"pass\"\n{base}"),
    )
    .unwrap();
    let with_env = dir.join("env.toml");
    std::fs::write(&with_env, &base).unwrap();
    let data = f.fed.data_url();

    let run = move |args: Vec<String>, env: Vec<(&'static str, &'static str)>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let e: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, Path::new(*v))).collect();
            fapi_host_env(&a, &dir, &e)
        })
    };
    let cfg_file = with_file.to_str().unwrap().to_owned();
    let cfg_env = with_env.to_str().unwrap().to_owned();
    let args = |cfg: &str, rest: &[&str]| {
        let mut v = vec!["--config".to_owned(), cfg.to_owned(), "-vvv".to_owned()];
        v.extend(rest.iter().map(|s| (*s).to_owned()));
        v
    };

    let (code, out, err) = run(args(&cfg_file, &["fetch", &data]), vec![])
        .await
        .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(out.starts_with(b"postcode,"));
    assert_no_secret("stdout", &out);
    assert_no_secret("stderr", &err);

    let (code, out, err) = run(
        args(&cfg_env, &["fetch", &data]),
        vec![("FAPI_PRIVATE_KEY_PASSPHRASE", PASSPHRASE)],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_no_secret("stdout", &out);
    assert_no_secret("stderr", &err);

    let (code, out, err) = run(
        args(&cfg_env, &["check"]),
        vec![("FAPI_PRIVATE_KEY_PASSPHRASE", PASSPHRASE)],
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{text}{}", String::from_utf8_lossy(&err));
    assert!(text.contains("ok    key and certificate"), "{text}");
    assert_no_secret("check's stdout", &out);
    assert_no_secret("check's stderr", &err);

    let (code, out, err) = run(
        args(&cfg_env, &["fetch", &data]),
        vec![("FAPI_PRIVATE_KEY_PASSPHRASE", WRONG)],
    )
    .await
    .unwrap();
    let msg = String::from_utf8_lossy(&err);
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("wrong passphrase"), "{msg}");
    assert_no_secret("stdout", &out);
    assert_no_secret("stderr", &err);
}

#[test]
fn settings_read_the_passphrase_file_relative_to_the_config() {
    let text = "client_id = \"a\"\nissuer_url = \"https://as.example\"\nrequested_scopes = \"s\"\n\
                private_key = \"k.p8\"\ncertificate = \"c.pem\"\nprivate_key_passphrase_file = \"secrets/pass\"\n";
    let s = Settings::from_toml(text, Path::new("/srv/fapi"), &Overrides::default()).unwrap();
    assert_eq!(
        s.private_key_passphrase_file.as_deref(),
        Some(Path::new("/srv/fapi/secrets/pass"))
    );
}

/// `private_key_jwt` with an encrypted PKCS#8 `signing_key` and no `signing_certificate` (its
/// public key is derived from the key): the passphrase file's passphrase decrypts it and the
/// server verifies the assertion; without a passphrase the error names `signing_key`.
#[tokio::test]
async fn an_encrypted_signing_key_signs_assertions() {
    if !openssl_works("an_encrypted_signing_key_signs_assertions") {
        return;
    }
    let f = Fed::start(FederationConfig {
        private_key_jwt: Some(fapi_federation::PrivateKeyJwt::default()),
        record_issued_tokens: true,
        ..FederationConfig::default()
    })
    .await;
    let signing = encrypt(
        f.dir.path(),
        "consumer.key",
        "signing.p8",
        &["-v2", "aes-256-cbc"],
    );
    let pass = f.path("pass");
    write_secret(&pass, PASSPHRASE, 0o600);
    let mut s = f.settings();
    s.auth.signing_key = Some(signing.clone());
    s.private_key_passphrase_file = Some(pass);
    fetch_ok(&s, &f).await;
    let c = f.fed.counters();
    assert_eq!((c.assertions_verified, c.tokens_issued), (1, 1));

    s.private_key_passphrase_file = None;
    let err = FapiClient::from_settings(&s).unwrap_err().to_string();
    assert!(
        err.contains("the `signing_key` key is encrypted")
            && err.contains(&signing.display().to_string()),
        "{err}"
    );
    assert_no_secret("the error", err.as_bytes());
}
