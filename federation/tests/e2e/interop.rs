//! Interoperability: the system `curl` and Python `requests` against the federation.
//!
//! Where `curl`, or `python3` with `requests`, is missing, the test prints why and passes, unless
//! `FAPI_REQUIRE_INTEROP=1` (set by `.ci/run`, which installs both): then it fails.

use std::path::Path;
use std::process::Command;

use fapi_federation::{DpFault, Federation, data};

use crate::support::*;

fn write_pems(fed: &Federation, dir: &Path) {
    let consumer = id(fed, "consumer");
    std::fs::write(dir.join("ca.pem"), fed.pki().ca_pem()).expect("ca");
    std::fs::write(dir.join("consumer.pem"), &consumer.cert_pem).expect("cert");
    std::fs::write(dir.join("consumer.key"), &consumer.key_pem).expect("key");
}

fn available(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether `test` can run (`cmd args` succeeds); if not, a loud skip, or a failure under
/// `FAPI_REQUIRE_INTEROP=1`.
fn prerequisite(test: &str, cmd: &str, args: &[&str], missing: &str) -> bool {
    if available(cmd, args) {
        return true;
    }
    assert!(
        std::env::var("FAPI_REQUIRE_INTEROP").as_deref() != Ok("1"),
        "{test}: {missing}, and FAPI_REQUIRE_INTEROP=1 requires the interop tests to run"
    );
    eprintln!("SKIPPED {test}: {missing} (set FAPI_REQUIRE_INTEROP=1 to make this a failure)");
    false
}

async fn run(mut cmd: tokio::process::Command) -> std::process::Output {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
        .await
        .expect("finishes in time")
        .expect("runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
#[cfg_attr(not(fapi_has_curl), ignore = "needs curl")]
async fn curl_gets_a_token_and_data() {
    if !prerequisite(
        "curl_gets_a_token_and_data",
        "curl",
        &["--version"],
        "curl is not installed",
    ) {
        return;
    }
    let fed = start_default().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_pems(&fed, dir.path());
    let tls = |cmd: &mut tokio::process::Command| {
        cmd.arg("-sS")
            .args(["--noproxy", "*"])
            .arg("--fail-with-body")
            .arg("--cacert")
            .arg(dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(dir.path().join("consumer.pem"))
            .arg("--key")
            .arg(dir.path().join("consumer.key"));
    };
    let mut cmd = tokio::process::Command::new("curl");
    tls(&mut cmd);
    cmd.args([
        "-d",
        "grant_type=client_credentials",
        "-d",
        "client_id=fapi-dev-consumer",
    ])
    .args([
        "--data-urlencode",
        "scope=directory:software consumption:read",
    ])
    .arg(format!("{}/token", fed.issuer_url()));
    let out = run(cmd).await;
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token json");
    let token = body["access_token"].as_str().expect("access_token");
    let mut cmd = tokio::process::Command::new("curl");
    tls(&mut cmd);
    cmd.arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(fed.data_url());
    let out = run(cmd).await;
    assert_eq!(out.stdout, data::csv(500).into_bytes());

    // The reset fault is a real TCP reset; truncation is a short body.
    for (fault, want) in [
        (DpFault::ResetMidBody, "reset"),
        (DpFault::TruncatedBody, "bytes remaining"),
    ] {
        fed.set_dp_fault(Some(fault));
        let mut cmd = tokio::process::Command::new("curl");
        tls(&mut cmd);
        cmd.arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(fed.data_url())
            .arg("-o")
            .arg("/dev/null");
        let out = cmd.output().await.expect("curl runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{want}: {:?} {stderr}", out.status.code());
        assert!(!out.status.success());
        assert!(stderr.contains(want), "{stderr}");
    }
}

const PYTHON: &str = r#"
import sys, requests
issuer, data_url, d = sys.argv[1], sys.argv[2], sys.argv[3]
cert = (d + "/consumer.pem", d + "/consumer.key")
ca = d + "/ca.pem"
r = requests.post(issuer + "/token", data={"grant_type": "client_credentials", "client_id": "fapi-dev-consumer",
                  "scope": "directory:software consumption:read"}, cert=cert, verify=ca, timeout=20)
r.raise_for_status()
tok = r.json()["access_token"]
r = requests.get(data_url, headers={"Authorization": "Bearer " + tok}, cert=cert, verify=ca, timeout=20)
r.raise_for_status()
assert r.headers["x-fapi-interaction-id"]
sys.stdout.buffer.write(r.content)
"#;

#[tokio::test]
#[cfg_attr(
    not(fapi_has_python_requests),
    ignore = "needs python3 with requests: pip install requests"
)]
async fn python_requests_gets_a_token_and_data() {
    if !prerequisite(
        "python_requests_gets_a_token_and_data",
        "python3",
        &["-c", "import requests"],
        "python3 with requests is not installed",
    ) {
        return;
    }
    let fed = start_default().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_pems(&fed, dir.path());
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c")
        .arg(PYTHON)
        .arg(fed.issuer_url())
        .arg(fed.data_url())
        .arg(dir.path())
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env("NO_PROXY", "127.0.0.1");
    let out = run(cmd).await;
    assert_eq!(out.stdout, data::csv(500).into_bytes());
}
