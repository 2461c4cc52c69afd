//! Guests under DPoP (RFC 9449): both guest interfaces read data with DPoP-bound tokens the host
//! proves on their behalf; neither can set `DPoP` or `Authorization` (checklist DPOP-01: the one
//! `DPoP` header is the host's); no proof or token reaches a guest, the audit file or a log line.
#![allow(clippy::unwrap_used)]

use fapi_host::profile::SenderConstraint;
use fapi_host::sandbox::SandboxOptions;
use fapi_tests::sandbox_env::SandboxEnv as Env;
use serde_json::Value;

/// The error case name (without a `Type::` prefix) of a probe line.
fn err(v: &Value) -> &str {
    let name = v["err"].as_str().unwrap_or("-");
    name.rsplit("::").next().unwrap_or(name)
}

#[tokio::test]
async fn a_guest_under_dpop_reads_data_and_cannot_set_dpop_or_authorization() {
    let audit = tempfile::tempdir().unwrap();
    let audit_file = audit.path().join("audit.jsonl");
    let e = Env::start_configured(
        true,
        |_, s| s.auth.sender_constraint = SenderConstraint::Dpop,
        SandboxOptions {
            audit: Some(audit_file.clone()),
            ..SandboxOptions::default()
        },
    )
    .await;
    let url = e.fed.data_url();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for interface in ["fetch", "http"] {
        let v = e.probe(&[interface, &url]).await;
        assert_eq!(v["ok"]["status"], 200, "{interface}: {v}");
        seen.push(v.to_string().into_bytes());
    }
    for name in ["DPoP", "dpop", "Authorization"] {
        let v = e.probe(&["fetch-header", &url, name, "x"]).await;
        assert_eq!(err(&v), "InvalidRequest", "fapi-fetch {name}: {v}");
        let v = e.probe(&["http-header", &url, name, "x"]).await;
        assert_eq!(err(&v), "Forbidden", "wasi:http {name}: {v}");
        seen.push(v.to_string().into_bytes());
    }
    let info = e.client.token_info().await.unwrap();
    assert_eq!(info.token_type, "DPoP");
    let c = e.fed.counters();
    assert_eq!(c.token_requests, 1, "{c:?}");
    assert_eq!(
        c.dpop_proofs_accepted, 3,
        "one token request and two reads: {c:?}"
    );
    assert_eq!(
        c.dp_requests, 2,
        "no refused header reached the provider: {c:?}"
    );
    let proofs = e.fed.received_dpop_proofs();
    assert_eq!(proofs.len(), 3);

    // What the guests saw, the audit file and every log line: no token, no proof.
    let records = std::fs::read(&audit_file).unwrap();
    assert!(
        records
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            >= 2,
        "the audit file has the reads"
    );
    seen.push(records);
    let hays: Vec<&[u8]> = seen.iter().map(Vec::as_slice).collect();
    e.assert_no_secrets(&hays).await;
    let logs = fapi_tests::capture_logs();
    let logs = logs.lock().unwrap();
    for (i, p) in proofs.iter().enumerate() {
        let sig = p.rsplit('.').next().unwrap().as_bytes();
        for (j, hay) in hays.iter().enumerate() {
            assert!(
                !fapi_tests::sandbox_env::contains(hay, sig),
                "proof #{i} in output #{j}"
            );
        }
        assert!(
            !fapi_tests::sandbox_env::contains(&logs, sig),
            "proof #{i} in the logs"
        );
    }
}
