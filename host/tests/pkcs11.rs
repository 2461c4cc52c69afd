//! Keys in a PKCS#11 token: SoftHSM2 tokens and keys made at test time (in a temporary directory
//! named by `SOFTHSM2_CONF`, with `softhsm2-util` and OpenSC's `pkcs11-tool`), certificates for the
//! token's public keys issued by the local federation's CA for the consumer's registered subject,
//! then `fapi-host fetch`, `check` and `batch`, and the library's `FapiClient`, with RSA, P-256
//! and P-384 keys that never leave the token; bad input with the error that names the fix; the
//! PIN searched for in every output and log.
//!
//! Without SoftHSM2 or `pkcs11-tool` the tests are ignored, with the reason in the test summary
//! (host/build.rs), unless `FAPI_REQUIRE_PKCS11=1` (set by `.ci/run`): then they fail.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject as _;
use std::time::{Duration, SystemTime};

use crate::common::{Fed, contains};
use fapi_federation::FederationConfig;

const PIN: &str = "Pkcs11-PIN-6e81c2";
const WRONG_PIN: &str = "Wrong-PIN-93d0aa";
const SO_PIN: &str = "So-PIN-0a9f33";
const TOKEN: &str = "fapi";

/// A SoftHSM2 installation of our own: its configuration and token directory.
struct Hsm {
    dir: tempfile::TempDir,
    soft: fapi_federation::SoftHsm,
    conf: PathBuf,
    module: PathBuf,
}

fn required() -> bool {
    std::env::var("FAPI_REQUIRE_PKCS11").as_deref() == Ok("1")
}

fn runs(prog: &str, arg: &str) -> bool {
    Command::new(prog)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A fresh SoftHSM with one initialised token, or None (SKIPPED) when SoftHSM2 or OpenSC is
/// missing and `FAPI_REQUIRE_PKCS11` is not 1.
fn hsm(test: &str) -> Option<Hsm> {
    let why = if fapi_federation::SoftHsm::installed_module().is_none() {
        Some("the SoftHSM2 module (libsofthsm2.so) is not installed")
    } else if !runs("softhsm2-util", "--version") {
        Some("softhsm2-util is not installed")
    } else if Command::new("pkcs11-tool").arg("--help").output().is_err() {
        Some("pkcs11-tool (OpenSC) is not installed")
    } else {
        None
    };
    if let Some(why) = why {
        assert!(
            !required(),
            "FAPI_REQUIRE_PKCS11=1 but {test} cannot run: {why} (apt-get install softhsm2 opensc)"
        );
        eprintln!(
            "SKIPPED {test}: {why}; apt-get install softhsm2 opensc (set FAPI_REQUIRE_PKCS11=1 to make this a failure)"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let soft = fapi_federation::SoftHsm::new(dir.path()).unwrap();
    soft.init_token(TOKEN, PIN, SO_PIN).unwrap();
    Some(Hsm {
        conf: soft.conf().to_owned(),
        module: soft.module().to_owned(),
        dir,
        soft,
    })
}

impl Hsm {
    fn run(&self, prog: &str, args: &[&str]) -> Output {
        self.soft.run(prog, args).unwrap()
    }

    /// Generate a key pair in the token (`rsa:2048`, `EC:prime256v1`, `EC:secp384r1`); its public
    /// key as DER SubjectPublicKeyInfo.
    fn keygen(&self, label: &str, id: &str, key_type: &str) -> Vec<u8> {
        let module = self.module.to_str().unwrap();
        self.run(
            "pkcs11-tool",
            &[
                "--module",
                module,
                "--token-label",
                TOKEN,
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                key_type,
                "--label",
                label,
                "--id",
                id,
            ],
        );
        if key_type == "EC:secp384r1" {
            // This pkcs11-tool cannot export P-384 public keys ("cannot create EVP_PKEY"): the
            // SubjectPublicKeyInfo is built from the point in its listing.
            return self.p384_spki(label);
        }
        let out = format!("{label}.pub.der");
        self.run(
            "pkcs11-tool",
            &[
                "--module",
                module,
                "--token-label",
                TOKEN,
                "--read-object",
                "--type",
                "pubkey",
                "--label",
                label,
                "--output-file",
                &out,
            ],
        );
        std::fs::read(self.dir.path().join(out)).unwrap()
    }
}

impl Hsm {
    fn p384_spki(&self, label: &str) -> Vec<u8> {
        let module = self.module.to_str().unwrap();
        let out = self.run(
            "pkcs11-tool",
            &[
                "--module",
                module,
                "--token-label",
                TOKEN,
                "--list-objects",
                "--type",
                "pubkey",
            ],
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let object = text
            .split("Public Key Object")
            .find(|o| {
                o.lines()
                    .any(|l| l.trim() == format!("label:      {label}"))
            })
            .unwrap_or_else(|| panic!("no public key {label} in {text}"));
        let hex = object
            .lines()
            .find_map(|l| l.trim().strip_prefix("EC_POINT:"))
            .unwrap()
            .trim();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        // An OCTET STRING (04 61) around the uncompressed point (04 || X || Y, 97 bytes).
        assert_eq!(&bytes[..3], &[0x04, 0x61, 0x04], "{hex}");
        let mut spki = vec![
            0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
        ];
        spki.extend_from_slice(&bytes[2..]);
        spki
    }
}

/// The set-up of a test of one key: a fresh token (or None when the test is skipped) with a key
/// `label` (`id`, `key_type` as for [`Hsm::keygen`]) made in it, a federation, and the
/// configuration `name` that uses the key there with a certificate for it.
async fn one_key_in_a_token(
    test: &str,
    name: &str,
    label: &str,
    id: &str,
    key_type: &str,
) -> Option<(Hsm, Fed, PathBuf)> {
    let h = hsm(test)?;
    let f = Fed::start(FederationConfig::default()).await;
    let cert = certify(&f, &h.keygen(label, id, key_type));
    let module = h.module.to_str().unwrap();
    let cfg = config(
        &f,
        name,
        &format!("pkcs11:token={TOKEN};object={label}"),
        &cert,
        &format!("pkcs11_module = {module:?}"),
    );
    Some((h, f, cfg))
}

/// A client certificate for the consumer's registered subject, for the public key `spki`, issued
/// by the federation's CA (the key stays in the token: only its public half is certified).
fn certify(f: &Fed, spki: &[u8]) -> String {
    let pki_dir = f.path("pki");
    f.fed.pki().write_to(&pki_dir).unwrap();
    let ca_pem = std::fs::read_to_string(pki_dir.join("ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki_dir.join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "fapi-host dev");
    dn.push(rcgen::DnType::CommonName, "fapi-dev-consumer");
    p.distinguished_name = dn;
    p.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
    p.not_after = (SystemTime::now() + Duration::from_secs(90 * 86_400)).into();
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let public = rcgen::SubjectPublicKeyInfo::from_der(spki).unwrap();
    p.signed_by(&public, &issuer).unwrap().pem()
}

fn write_secret(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A configuration `<name>.toml` beside the federation's: its consumer settings with
/// `private_key = uri`, the certificate `cert_pem`, and `extra` top-level lines.
fn config(f: &Fed, name: &str, uri: &str, cert_pem: &str, extra: &str) -> PathBuf {
    let cert = format!("{name}.pem");
    std::fs::write(f.path(&cert), cert_pem).unwrap();
    let base = std::fs::read_to_string(&f.config).unwrap();
    let text = base
        .replace(
            "private_key = \"consumer.key\"",
            &format!("private_key = {uri:?}"),
        )
        .replace(
            "certificate = \"consumer.pem\"",
            &format!("certificate = {cert:?}"),
        );
    assert!(text.contains(uri) && text.contains(&cert), "{text}");
    let path = f.path(&format!("{name}.toml"));
    std::fs::write(&path, format!("{extra}\n{text}")).unwrap();
    path
}

/// Run the binary with `SOFTHSM2_CONF` and `env`; (status, stdout, stderr), after checking that
/// no output holds a PIN.
async fn host(h: &Hsm, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fapi-host"));
    c.args(args)
        .current_dir(h.dir.path())
        .env_remove("FAPI_CONFIG")
        .env_remove("FAPI_PKCS11_PIN")
        .env("SOFTHSM2_CONF", &h.conf)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for pin in [PIN, WRONG_PIN, SO_PIN] {
            assert!(
                !contains(bytes, pin.as_bytes()),
                "{args:?}: {what} holds a PIN"
            );
        }
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The three key types, each in the token with a certificate: (name, URI, certificate PEM).
fn token_keys(h: &Hsm, f: &Fed) -> Vec<(&'static str, String, String)> {
    [
        ("rsa", "01", "rsa:2048"),
        ("p256", "02", "EC:prime256v1"),
        ("p384", "03", "EC:secp384r1"),
    ]
    .into_iter()
    .map(|(name, id, kind)| {
        let label = format!("{name}-key");
        let spki = h.keygen(&label, id, kind);
        let cert = certify(f, &spki);
        (name, format!("pkcs11:token={TOKEN};object={label}"), cert)
    })
    .collect()
}

#[tokio::test]
#[cfg_attr(
    not(fapi_has_softhsm),
    ignore = "needs SoftHSM2 and OpenSC: apt-get install softhsm2 opensc"
)]
async fn fetch_check_and_batch_sign_in_the_token_with_rsa_p256_and_p384() {
    let Some(h) = hsm("fetch_check_and_batch_sign_in_the_token_with_rsa_p256_and_p384") else {
        return;
    };
    let f = Fed::start(FederationConfig::default()).await;
    let keys = token_keys(&h, &f);
    let pin_file = f.path("pin");
    write_secret(&pin_file, PIN, 0o600);
    let module = h.module.to_str().unwrap();
    let data = f.fed.data_url();
    let origin = f.fed.data_origin();
    for (i, (name, uri, cert)) in keys.iter().enumerate() {
        // The PIN from a file for RSA; from the environment for the EC keys, with the module in
        // the URI for P-384.
        let (uri, extra, env) = match *name {
            "rsa" => (
                uri.clone(),
                format!("pkcs11_module = {module:?}\npkcs11_pin_file = \"pin\""),
                vec![],
            ),
            "p256" => (
                uri.clone(),
                format!("pkcs11_module = {module:?}"),
                vec![("FAPI_PKCS11_PIN", PIN)],
            ),
            _ => (
                format!("{uri}?module-path={module}"),
                String::new(),
                vec![("FAPI_PKCS11_PIN", PIN)],
            ),
        };
        let cfg = config(&f, name, &uri, cert, &extra);
        let cfg = cfg.to_str().unwrap();

        let tokens_before = f.fed.counters().token_requests;
        let (code, out, err) = host(&h, &["--config", cfg, "-vvv", "fetch", &data], &env).await;
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.starts_with("postcode,"), "{name}: {out:.100}");
        // Nothing logged at error level (cryptoki logs one per mechanism it cannot name when all
        // are listed), nor any warning.
        assert!(
            !err.contains("ERROR") && !err.contains("WARN"),
            "{name}: {err}"
        );
        assert_eq!(f.fed.counters().token_requests, tokens_before + 1, "{name}");

        let (code, out, err) = host(&h, &["--config", cfg, "check"], &env).await;
        assert_eq!(code, 0, "{name}: {out}{err}");
        eprintln!("{name}: fapi-host check\n{out}");
        for line in [
            "ok    PKCS#11 module: ",
            "ok    PKCS#11 token: token \"fapi\" is present",
            "ok    PKCS#11 PIN: accepted",
            "ok    PKCS#11 key: ",
            "ok    public key: the token's public key is the certificate's",
            "ok    test signature: ",
            "ok    key and certificate: ",
            "ok    token: obtained",
        ] {
            assert!(out.contains(line), "{name}: {line} in\n{out}");
        }
        let expect = match *name {
            "rsa" => "RSA-PSS signature by the token verifies",
            "p256" => "ECDSA P-256 signature by the token verifies",
            _ => "ECDSA P-384 signature by the token verifies",
        };
        assert!(out.contains(expect), "{name}: {out}");

        if *name == "p256" {
            // The certificate from the token too: `certificate = "pkcs11:..."`.
            let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
            std::fs::write(h.dir.path().join("p256.der"), der.as_ref()).unwrap();
            h.run(
                "pkcs11-tool",
                &[
                    "--module",
                    module,
                    "--token-label",
                    TOKEN,
                    "--login",
                    "--pin",
                    PIN,
                    "--write-object",
                    "p256.der",
                    "--type",
                    "cert",
                    "--label",
                    "p256-key",
                    "--id",
                    "02",
                ],
            );
            let text = std::fs::read_to_string(cfg).unwrap().replace(
                "certificate = \"p256.pem\"",
                "certificate = \"pkcs11:token=fapi;object=p256-key\"",
            );
            assert!(text.contains("certificate = \"pkcs11:"), "{text}");
            // The URI from $FAPI_PRIVATE_KEY over a key file in the configuration (the consumer's
            // own key, which does not match this certificate).
            let file_key = std::fs::read_to_string(cfg).unwrap().replace(
                &format!("private_key = {uri:?}"),
                "private_key = \"consumer.key\"",
            );
            assert!(file_key.contains("private_key = \"consumer.key\""));
            let file_key_cfg = f.path("p256-env-uri.toml");
            std::fs::write(&file_key_cfg, file_key).unwrap();
            let mut env_uri = env.clone();
            env_uri.push(("FAPI_PRIVATE_KEY", uri.as_str()));
            let (code, out, err) = host(
                &h,
                &["--config", file_key_cfg.to_str().unwrap(), "fetch", &data],
                &env_uri,
            )
            .await;
            assert_eq!(code, 0, "URI from FAPI_PRIVATE_KEY: {err}");
            assert!(out.starts_with("postcode,"));

            let in_token = f.path("p256-cert-in-token.toml");
            std::fs::write(&in_token, text).unwrap();
            let in_token = in_token.to_str().unwrap();
            let (code, out, err) = host(&h, &["--config", in_token, "fetch", &data], &env).await;
            assert_eq!(code, 0, "certificate in the token: {err}");
            assert!(out.starts_with("postcode,"));
            let (code, out, err) = host(&h, &["--config", in_token, "check"], &env).await;
            assert_eq!(code, 0, "certificate in the token: {out}{err}");
            assert!(
                out.contains("ok    certificate: read from the token (labelled \"p256-key\")")
                    && out.contains("ok    test signature: ECDSA P-256"),
                "{out}"
            );
        }
        let input = f.path(&format!("{name}-items.txt"));
        let items: String = (0..12).map(|k| format!("{origin}/items/{k}\n")).collect();
        std::fs::write(&input, items).unwrap();
        let out_dir = f.path(&format!("{name}-batch"));
        let (code, _, err) = host(
            &h,
            &[
                "--config",
                cfg,
                "batch",
                "--input",
                input.to_str().unwrap(),
                "--out",
                out_dir.to_str().unwrap(),
                "--concurrency",
                "6",
            ],
            &env,
        )
        .await;
        assert_eq!(code, 0, "{name} batch: {err}");
        let manifest = std::fs::read_to_string(out_dir.join("manifest.jsonl")).unwrap();
        assert_eq!(
            manifest.lines().filter(|l| l.contains("\"done\"")).count(),
            12,
            "{name} (key {i}): {manifest}"
        );
    }
}

/// A bad-input case: its name, the URI, extra settings, environment, the start of `check`'s FAIL
/// line, and the words of the fix.
type Case<'a> = (
    &'a str,
    String,
    String,
    &'a [(&'a str, &'a str)],
    &'a str,
    &'a [&'a str],
);

#[tokio::test]
#[cfg_attr(
    not(fapi_has_softhsm),
    ignore = "needs SoftHSM2 and OpenSC: apt-get install softhsm2 opensc"
)]
async fn bad_token_settings_are_clear_errors_that_name_the_fix() {
    let Some(h) = hsm("bad_token_settings_are_clear_errors_that_name_the_fix") else {
        return;
    };
    let f = Fed::start(FederationConfig::default()).await;
    let spki = h.keygen("ec-key", "02", "EC:prime256v1");
    let cert = certify(&f, &spki);
    h.keygen("other-key", "04", "EC:prime256v1");
    let module = h.module.to_str().unwrap();
    let with_module = format!("pkcs11_module = {module:?}");
    let pin = [("FAPI_PKCS11_PIN", PIN)];
    write_secret(&f.path("wrong-pin"), WRONG_PIN, 0o600);
    write_secret(&f.path("open-pin"), PIN, 0o644);
    std::fs::write(f.path("not-a-module.so"), "not a shared library\n").unwrap();
    let ok_uri = format!("pkcs11:token={TOKEN};object=ec-key");

    // (name, URI, extra settings, environment, what check's failing line says, fix words)
    let cases: Vec<Case> = vec![
        (
            "wrong-pin",
            ok_uri.clone(),
            format!("{with_module}\npkcs11_pin_file = \"wrong-pin\""),
            &[],
            "FAIL  PKCS#11 PIN: ",
            &["refused the PIN", "pkcs11_pin_file"],
        ),
        (
            "no-token",
            "pkcs11:token=nope;object=ec-key".into(),
            with_module.clone(),
            &pin,
            "FAIL  PKCS#11 token: ",
            &[
                "token \"nope\" is not present",
                "tokens present: \"fapi\"",
                "token=",
            ],
        ),
        (
            "no-object",
            format!("pkcs11:token={TOKEN};object=nope"),
            with_module.clone(),
            &pin,
            "FAIL  PKCS#11 key: ",
            &["no private key labelled \"nope\"", "\"ec-key\"", "object="],
        ),
        (
            "not-a-module",
            ok_uri.clone(),
            "pkcs11_module = \"not-a-module.so\"".into(),
            &pin,
            "FAIL  PKCS#11 module: ",
            &["is not a usable PKCS#11 module", "libsofthsm2.so"],
        ),
        (
            "libc-module",
            ok_uri.clone(),
            "pkcs11_module = \"/lib/x86_64-linux-gnu/libc.so.6\"".into(),
            &pin,
            "FAIL  PKCS#11 module: ",
            &["is not a usable PKCS#11 module"],
        ),
        (
            "no-module-file",
            ok_uri.clone(),
            "pkcs11_module = \"/nonexistent/libpkcs11.so\"".into(),
            &pin,
            "FAIL  PKCS#11 module: ",
            &["no such file", "is not a usable PKCS#11 module"],
        ),
        (
            "no-module",
            ok_uri.clone(),
            String::new(),
            &pin,
            "FAIL  PKCS#11 module: ",
            &["no module is named", "pkcs11_module"],
        ),
        (
            "mismatch",
            format!("pkcs11:token={TOKEN};object=other-key"),
            with_module.clone(),
            &pin,
            "FAIL  public key: ",
            &["does not match the certificate", "object="],
        ),
        (
            "open-pin-file",
            ok_uri.clone(),
            format!("{with_module}\npkcs11_pin_file = \"open-pin\""),
            &[],
            "FAIL  PKCS#11 PIN: ",
            &["chmod 600", "644"],
        ),
        (
            "no-pin",
            ok_uri.clone(),
            with_module.clone(),
            &[],
            "FAIL  PKCS#11 PIN: ",
            &["no PIN", "pkcs11_pin_file", "FAPI_PKCS11_PIN"],
        ),
        (
            "pin-in-uri",
            format!("{ok_uri}?pin-value={PIN}"),
            with_module.clone(),
            &[],
            "FAIL  configuration: ",
            &["pin-value", "pkcs11_pin_file"],
        ),
    ];
    let data = f.fed.data_url();
    for (name, uri, extra, env, line, fixes) in cases {
        if name == "libc-module" && !Path::new("/lib/x86_64-linux-gnu/libc.so.6").exists() {
            continue;
        }
        let cfg = config(&f, name, &uri, &cert, &extra);
        let cfg = cfg.to_str().unwrap();
        let (code, out, err) = host(&h, &["--config", cfg, "check"], env).await;
        assert_eq!(code, 7, "{name}: {out}{err}");
        eprintln!("{name}: {out}");
        let fail = out
            .lines()
            .find(|l| l.starts_with("FAIL"))
            .unwrap_or_else(|| panic!("{name}: no FAIL line in {out}"));
        assert!(fail.starts_with(line), "{name}: {fail}");
        for fix in fixes {
            assert!(fail.contains(fix), "{name}: {fix:?} in {fail}");
        }
        // The same error stops `fetch` before any request, with the configuration/credentials
        // status.
        let (code, _, err) = host(&h, &["--config", cfg, "fetch", &data], env).await;
        assert_eq!(code, 3, "{name}: {err}");
        assert!(err.contains(fixes[0]), "{name}: {err}");
    }
}

/// The library: `FapiClient` with token keys, many handshakes at once (the session pool), in a
/// child process of this test binary (SoftHSM reads `SOFTHSM2_CONF` when the module is
/// initialised, once per process).
#[tokio::test]
#[cfg_attr(
    not(fapi_has_softhsm),
    ignore = "needs SoftHSM2 and OpenSC: apt-get install softhsm2 opensc"
)]
async fn library_clients_sign_concurrent_handshakes_in_the_token() {
    let Some(h) = hsm("library_clients_sign_concurrent_handshakes_in_the_token") else {
        return;
    };
    let f = Fed::start(FederationConfig::default()).await;
    let keys = token_keys(&h, &f);
    let module = h.module.to_str().unwrap();
    let configs: Vec<String> = keys
        .iter()
        .map(|(name, uri, cert)| {
            let cfg = config(&f, name, uri, cert, &format!("pkcs11_module = {module:?}"));
            cfg.to_str().unwrap().to_owned()
        })
        .collect();
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        this_module_test("child_library_clients").as_str(),
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("SOFTHSM2_CONF", &h.conf)
    .env("FAPI_PKCS11_PIN", PIN)
    .env("FAPI_PKCS11_TEST_CONFIGS", configs.join("\n"))
    .env("FAPI_PKCS11_TEST_URL", f.fed.data_url());
    let before = f.fed.counters().token_requests;
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("child: 3 identities, 48 responses"),
        "{stdout}{stderr}"
    );
    assert_eq!(f.fed.counters().token_requests, before + 3);
    for pin in [PIN, SO_PIN] {
        assert!(!contains(&out.stdout, pin.as_bytes()) && !contains(&out.stderr, pin.as_bytes()));
    }
}

/// Run by [`library_clients_sign_concurrent_handshakes_in_the_token`] in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run by library_clients_sign_concurrent_handshakes_in_the_token in a child process"]
async fn child_library_clients() {
    let configs = std::env::var("FAPI_PKCS11_TEST_CONFIGS").expect("run by its parent test");
    let url = std::env::var("FAPI_PKCS11_TEST_URL").unwrap();
    let logs = common::logs();
    let mut responses = 0;
    let mut identities = 0;
    for cfg in configs.lines() {
        let settings =
            fapi_host::Settings::load(Some(Path::new(cfg)), &fapi_host::Overrides::default())
                .unwrap();
        let (client, warnings) = fapi_host::FapiClient::from_settings(&settings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        identities += 1;
        // 16 requests at once: as many connections, each a handshake signed in the token.
        let tasks: Vec<_> = (0..16)
            .map(|_| common::timed_get(&client, url.clone()))
            .collect();
        for t in tasks {
            let (status, _) = t.await.unwrap();
            assert_eq!(status, 200, "{cfg}");
            responses += 1;
        }
    }
    let logs = logs.lock().unwrap();
    assert!(!contains(&logs, PIN.as_bytes()), "a log line holds the PIN");
    println!("child: {identities} identities, {responses} responses");
}

/// A client-certificate verifier that accepts only `schemes` (WebPKI does the verifying) and
/// records the scheme of each verified client signature.
#[derive(Debug)]
struct OnlySchemes {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    schemes: Vec<rustls::SignatureScheme>,
    verified: Arc<Mutex<Vec<rustls::SignatureScheme>>>,
}

impl rustls::server::danger::ClientCertVerifier for OnlySchemes {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let ok = self.inner.verify_tls12_signature(message, cert, dss)?;
        self.verified.lock().unwrap().push(dss.scheme);
        Ok(ok)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let ok = self.inner.verify_tls13_signature(message, cert, dss)?;
        self.verified.lock().unwrap().push(dss.scheme);
        Ok(ok)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

/// A TLS 1.2 server on loopback that requires a client certificate signed with one of `schemes`
/// (from the federation's CA) and answers every request `200` and closes, so that every request
/// is a new handshake. Returns its origin, the verified schemes, and its task.
async fn scheme_probe(
    f_ca_pem: &str,
    server: &(String, String),
    versions: &[&'static rustls::SupportedProtocolVersion],
    schemes: Vec<rustls::SignatureScheme>,
) -> (
    String,
    Arc<Mutex<Vec<rustls::SignatureScheme>>>,
    tokio::task::JoinHandle<()>,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(f_ca_pem.as_bytes()).unwrap())
        .unwrap();
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let verified = Arc::new(Mutex::new(Vec::new()));
    let verifier = Arc::new(OnlySchemes {
        inner,
        schemes,
        verified: verified.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from_pem_slice(server.0.as_bytes()).unwrap()],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(server.1.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption: every connection is a full handshake, signed by the client's key.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let (origin, task) = fapi_federation::one_reply_server(Arc::new(config), "ok")
        .await
        .unwrap();
    (origin, verified, task)
}

/// Every RSA scheme TLS can negotiate, each alone (TLS 1.2: PKCS#1 v1.5 and PSS with SHA-256,
/// SHA-384 and SHA-512), then a removed token: the next handshake fails with an error that says
/// so, and the one after the token's return succeeds, with the same client.
#[tokio::test]
#[cfg_attr(
    not(fapi_has_softhsm),
    ignore = "needs SoftHSM2 and OpenSC: apt-get install softhsm2 opensc"
)]
async fn rsa_schemes_and_a_removed_token() {
    let Some((h, f, cfg)) = one_key_in_a_token(
        "rsa_schemes_and_a_removed_token",
        "rsa",
        "rsa-key",
        "01",
        "rsa:2048",
    )
    .await
    else {
        return;
    };
    let server = f.fed.pki().issue_server(&["127.0.0.1"], false).unwrap();
    let server_dir = f.path("probe");
    std::fs::create_dir(&server_dir).unwrap();
    std::fs::write(server_dir.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(server_dir.join("server.key"), &server.key_pem).unwrap();
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        this_module_test("child_rsa_schemes_and_token_loss").as_str(),
        "--ignored",
        "--nocapture",
    ])
    .env("SOFTHSM2_CONF", &h.conf)
    .env("FAPI_PKCS11_PIN", PIN)
    .env("FAPI_PKCS11_TEST_CONFIGS", cfg.to_str().unwrap())
    .env("FAPI_PKCS11_TEST_TOKENS", h.dir.path().join("tokens"))
    .env("FAPI_PKCS11_TEST_CA", f.fed.pki().ca_pem())
    .env("FAPI_PKCS11_TEST_SERVER", &server_dir)
    .env("FAPI_PKCS11_TEST_URL", f.fed.data_url());
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("child: schemes and token loss ok"),
        "{stdout}{stderr}"
    );
    // The handshake without the token failed with the reason and what to do.
    let removed = stdout
        .lines()
        .find(|l| l.starts_with("child: with the token removed: "))
        .unwrap();
    assert!(
        removed.contains("PKCS#11: token \"fapi\" is not present")
            && removed.contains("insert the token"),
        "{removed}"
    );
    eprintln!("{removed}");
    assert!(!contains(&out.stdout, PIN.as_bytes()) && !contains(&out.stderr, PIN.as_bytes()));
}

/// Run by [`rsa_schemes_and_a_removed_token`] in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by rsa_schemes_and_a_removed_token in a child process"]
async fn child_rsa_schemes_and_token_loss() {
    use rustls::SignatureScheme as S;
    let cfg = std::env::var("FAPI_PKCS11_TEST_CONFIGS").expect("run by its parent test");
    let tokens = PathBuf::from(std::env::var("FAPI_PKCS11_TEST_TOKENS").unwrap());
    let ca_pem = std::env::var("FAPI_PKCS11_TEST_CA").unwrap();
    // The probes' server certificate, from the federation's CA (which the client trusts).
    let logs = common::logs();
    let settings =
        fapi_host::Settings::load(Some(Path::new(&cfg)), &fapi_host::Overrides::default()).unwrap();
    let (client, _) = fapi_host::FapiClient::from_settings(&settings).unwrap();
    let server_dir = PathBuf::from(std::env::var("FAPI_PKCS11_TEST_SERVER").unwrap());
    let server = (
        std::fs::read_to_string(server_dir.join("server.pem")).unwrap(),
        std::fs::read_to_string(server_dir.join("server.key")).unwrap(),
    );
    let tls12 = [&rustls::version::TLS12];
    for scheme in [
        S::RSA_PKCS1_SHA256,
        S::RSA_PKCS1_SHA384,
        S::RSA_PKCS1_SHA512,
        S::RSA_PSS_SHA256,
        S::RSA_PSS_SHA384,
        S::RSA_PSS_SHA512,
    ] {
        let (origin, verified, task) = scheme_probe(&ca_pem, &server, &tls12, vec![scheme]).await;
        let r = client.get(format!("{origin}/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{scheme:?}");
        assert_eq!(*verified.lock().unwrap(), vec![scheme]);
        task.abort();
    }

    // The token goes away (its directory moved), and comes back.
    let tls13 = [&rustls::version::TLS13];
    let (origin, verified, task) =
        scheme_probe(&ca_pem, &server, &tls13, vec![S::RSA_PSS_SHA256]).await;
    let r = client.get(format!("{origin}/before")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let away = tokens.with_extension("away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    let err = client
        .get(format!("{origin}/during"))
        .send()
        .await
        .expect_err("no token, no handshake");
    let msg = format!("{err:#}");
    println!("child: with the token removed: {msg}");
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    let r = client.get(format!("{origin}/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(verified.lock().unwrap().len(), 2);
    task.abort();
    assert!(!contains(&logs.lock().unwrap(), PIN.as_bytes()));
    println!("child: schemes and token loss ok");
}

/// `fapi-host run`: a plugin (the bundled `fetch` example) reads protected data while the host
/// signs its handshakes in the token; the plugin sees neither the key nor the PIN.
#[tokio::test]
#[cfg_attr(
    not(fapi_has_softhsm),
    ignore = "needs SoftHSM2 and OpenSC: apt-get install softhsm2 opensc"
)]
async fn a_plugin_runs_with_the_key_in_the_token() {
    let Some((h, f, cfg)) = one_key_in_a_token(
        "a_plugin_runs_with_the_key_in_the_token",
        "plugin",
        "ec-key",
        "02",
        "EC:prime256v1",
    )
    .await
    else {
        return;
    };
    let plugin = f.path("fetch.wasm");
    std::fs::write(&plugin, fapi_host::examples::FETCH).unwrap();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasmtime-cache");
    let data = f.fed.data_url();
    let (code, out, err) = host(
        &h,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "-vv",
            "run",
            plugin.to_str().unwrap(),
            "--",
            &data,
        ],
        &[
            ("FAPI_PKCS11_PIN", PIN),
            ("XDG_CACHE_HOME", cache.to_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("postcode,"), "{out:.100}");
    assert!(err.contains("access token acquired"), "{err}");
    assert_eq!(f.fed.counters().token_requests, 1);
}

/// The token removed during `fapi-host batch`: every item is a new handshake (a server that keeps
/// no sessions and closes each connection); the items while the token is away fail with the
/// reason, the batch goes on and its items succeed again once the token is back, and a second run
/// fetches the failed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(fapi_has_softhsm),
    ignore = "needs SoftHSM2 and OpenSC: apt-get install softhsm2 opensc"
)]
async fn a_token_removed_during_a_batch() {
    let Some((h, f, cfg)) = one_key_in_a_token(
        "a_token_removed_during_a_batch",
        "batch",
        "ec-key",
        "02",
        "EC:prime256v1",
    )
    .await
    else {
        return;
    };
    let server = f.fed.pki().issue_server(&["127.0.0.1"], false).unwrap();
    let (origin, verified, task) = scheme_probe(
        f.fed.pki().ca_pem(),
        &(server.cert_pem, server.key_pem),
        &[&rustls::version::TLS13],
        vec![rustls::SignatureScheme::ECDSA_NISTP256_SHA256],
    )
    .await;
    let input = f.path("items.txt");
    let items: String = (0..60).map(|k| format!("{origin}/item/{k}\n")).collect();
    std::fs::write(&input, items).unwrap();
    let out_dir = f.path("batch-out");
    let manifest = out_dir.join("manifest.jsonl");
    let lines = |pred: &dyn Fn(&str) -> bool| {
        std::fs::read_to_string(&manifest)
            .unwrap_or_default()
            .lines()
            .filter(|l| pred(l))
            .count()
    };
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "batch",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--concurrency",
        "1",
        "--rate",
        "25/s",
        "--retries",
        "0",
    ];
    let run = host(&h, &args, &[("FAPI_PKCS11_PIN", PIN)]);
    let tokens = h.dir.path().join("tokens");
    let away = h.dir.path().join("tokens-away");
    let remover = async {
        let wait = |what: &'static str, n: usize, pred: &'static dyn Fn(&str) -> bool| {
            let lines = &lines;
            async move {
                let t0 = std::time::Instant::now();
                while lines(pred) < n {
                    assert!(t0.elapsed() < Duration::from_secs(30), "waiting for {what}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        wait("10 items", 10, &|_| true).await;
        std::fs::rename(&tokens, &away).unwrap();
        std::fs::create_dir(&tokens).unwrap();
        wait("2 failed items", 2, &|l| l.contains("\"failed\"")).await;
        std::fs::remove_dir(&tokens).unwrap();
        std::fs::rename(&away, &tokens).unwrap();
    };
    let ((code, _, err), ()) = tokio::join!(run, remover);
    assert_eq!(code, 9, "some items failed: {err}");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 60, "{text}");
    let first_failed = records
        .iter()
        .position(|r| r["outcome"] == "failed")
        .unwrap();
    let failed = &records[first_failed];
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("token \"fapi\" is not present") && message.contains("insert the token"),
        "{failed}"
    );
    assert!(
        records[first_failed..]
            .iter()
            .any(|r| r["outcome"] == "done"),
        "items after the token's return are fetched: {text}"
    );
    assert!(!contains(text.as_bytes(), PIN.as_bytes()));
    let failed_count = records.iter().filter(|r| r["outcome"] == "failed").count();

    // A second run fetches what failed.
    let (code, _, err) = host(&h, &args, &[("FAPI_PKCS11_PIN", PIN)]).await;
    assert_eq!(code, 0, "{err}");
    let done_items: std::collections::HashSet<u64> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["outcome"] == "done")
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(done_items.len(), 60);
    eprintln!("{failed_count} of 60 items failed while the token was away: {message}");
    // Every item but the failed ones made a full handshake signed in the token (plus the token
    // request's own, on the federation).
    assert!(
        verified.lock().unwrap().len() >= 60,
        "{}",
        verified.lock().unwrap().len()
    );
    task.abort();
}

/// The full name of this file's test `name` in the test binary (`pkcs11::name`), for running it
/// alone in a child process.
fn this_module_test(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

/// `private_key_jwt` with a signing key in the token (`signing_key` a PKCS#11 URI, its
/// certificate in `signing_certificate`) beside a PEM transport key: the assertion is signed in
/// the token (its `kid` is the token key's thumbprint, and the server verifies it with that key),
/// and neither the PIN nor the assertion is in the output.
#[tokio::test]
#[cfg_attr(
    not(fapi_has_softhsm),
    ignore = "needs SoftHSM2 and OpenSC: apt-get install softhsm2 opensc"
)]
async fn private_key_jwt_assertions_signed_in_the_token() {
    let Some(h) = hsm("private_key_jwt_assertions_signed_in_the_token") else {
        return;
    };
    let spki = h.keygen("signer", "05", "EC:prime256v1");
    let f = Fed::start(FederationConfig {
        private_key_jwt: Some(fapi_federation::PrivateKeyJwt {
            accept_token_endpoint_audience: false,
            extra_keys: vec![("fapi-dev-consumer".into(), spki.clone())],
        }),
        record_issued_tokens: true,
        ..FederationConfig::default()
    })
    .await;
    std::fs::write(f.path("signer.pem"), certify(&f, &spki)).unwrap();
    let module = h.module.to_str().unwrap();
    let base = std::fs::read_to_string(&f.config).unwrap();
    assert!(base.contains("token_endpoint_auth_method = \"private_key_jwt\""));
    let cfg = f.path("signer.toml");
    std::fs::write(
        &cfg,
        format!(
            "signing_key = \"pkcs11:token={TOKEN};object=signer\"\nsigning_certificate = \
             \"signer.pem\"\npkcs11_module = {module:?}\n{base}"
        ),
    )
    .unwrap();
    let data = f.fed.data_url();
    let (code, out, err) = host(
        &h,
        &["-vv", "--config", cfg.to_str().unwrap(), "fetch", &data],
        &[("FAPI_PKCS11_PIN", PIN)],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("postcode,"), "{out:.100}");
    let received = f.fed.received_assertions();
    assert_eq!(received.len(), 1);
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            received[0].split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    // The P-256 SubjectPublicKeyInfo: 26 bytes of algorithm and bit-string header, then 04 || x || y.
    assert_eq!(spki.len(), 91);
    let b64 =
        |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&spki[27..59]), "y": b64(&spki[59..91])});
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], fapi_host::jws::jwk_thumbprint(&jwk).as_str());
    let c = f.fed.counters();
    assert_eq!((c.assertions_verified, c.tokens_issued), (1, 1));
    for a in &received {
        let signature = a.rsplit('.').next().unwrap();
        assert!(
            !out.contains(signature) && !err.contains(signature),
            "the assertion leaked"
        );
    }
}
