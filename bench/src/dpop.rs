//! What DPoP costs per request: `FapiClient` with DPoP-bound tokens (a signed proof per request,
//! verified by the data provider) against the same client with certificate-bound tokens only, in
//! the same run, on one keep-alive connection each.
//!
//! Both clients run on one dedicated thread with a current-thread runtime, alternating rounds;
//! wall time per request includes the data provider's work (for DPoP: verifying the proof and
//! checking `jkt`), CPU time per request is that thread's `getrusage` delta, the client's work
//! alone. The proof's signature alone (ES256 through rustls's signer) is timed too.

use std::time::{Duration, Instant};

use fapi_host::FapiClient;
use fapi_host::jws::JwsKey;
use fapi_host::profile::SenderConstraint;

use crate::setup::{Bench, fapi_get};
use crate::{cpu, median};

/// Wall and thread CPU time of `n` sequential GETs.
async fn round(client: &FapiClient, url: &str, n: usize) -> (Duration, Duration) {
    let (t0, c0) = (Instant::now(), cpu::thread());
    for _ in 0..n {
        fapi_get(client, url).await;
    }
    (t0.elapsed(), cpu::thread() - c0)
}

/// Wall and CPU time of each round of each client on `path`, alternating which goes first.
type Rounds = Vec<(Duration, Duration)>;

pub async fn run(requests: usize, rounds: usize) {
    let b = Bench::start().await;
    let mtls = b.client();
    let mut settings = b.settings.clone();
    settings.auth.sender_constraint = SenderConstraint::Dpop;
    let dpop = FapiClient::from_settings(&settings).unwrap().0;
    let origin = b.fed.data_origin();
    // A small JSON item, and the default CSV (16.7 KB): the proof's cost is the same, the
    // request's is not.
    let paths = ["/items/42", "/consumption.csv"];
    let (results, sign, tokens) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut results: Vec<(&str, Rounds, Rounds)> = Vec::new();
            for path in paths {
                let url = format!("{origin}{path}");
                // Warm up both: connections, tokens, the introspection cache.
                round(&mtls, &url, requests / 10 + 1).await;
                round(&dpop, &url, requests / 10 + 1).await;
                let (mut m, mut d) = (Vec::new(), Vec::new());
                for i in 0..rounds {
                    if i % 2 == 0 {
                        m.push(round(&mtls, &url, requests).await);
                        d.push(round(&dpop, &url, requests).await);
                    } else {
                        d.push(round(&dpop, &url, requests).await);
                        m.push(round(&mtls, &url, requests).await);
                    }
                }
                results.push((path, m, d));
            }
            let key = JwsKey::generate_p256("bench").unwrap();
            let mut header = serde_json::Map::new();
            header.insert("typ".into(), "dpop+jwt".into());
            header.insert("jwk".into(), key.jwk().clone());
            let header = key.encoded_header(header).unwrap();
            let claims = serde_json::json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "GET",
                "htu": format!("{origin}/items/42"), "iat": 1_700_000_000u64, "ath": "x".repeat(43)});
            let c0 = cpu::thread();
            for _ in 0..requests {
                key.sign_encoded(&header, &claims).unwrap();
            }
            let sign = (cpu::thread() - c0) / requests as u32;
            (results, sign, (mtls.token_requests(), dpop.token_requests()))
        })
    })
    .join()
    .unwrap();
    let per = |v: &[(Duration, Duration)], pick: fn(&(Duration, Duration)) -> Duration| {
        median(v.iter().map(pick).collect()) / requests as u32
    };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "\n## DPoP vs mTLS-bound tokens ({requests} requests x {rounds} rounds, one connection each)\n"
    );
    println!("| GET | FapiClient | wall per request | ratio | client CPU per request | ratio |");
    println!("|---|---|---|---|---|---|");
    for (path, m, d) in &results {
        let (mw, mc) = (per(m, |r| r.0), per(m, |r| r.1));
        let (dw, dc) = (per(d, |r| r.0), per(d, |r| r.1));
        println!("| {path} | mTLS-bound token (baseline) | {mw:?} | 1.00 | {mc:?} | 1.00 |");
        println!(
            "| {path} | DPoP-bound token, a proof per request | {dw:?} | {:.2} | {dc:?} | {:.2} |",
            ratio(dw, mw),
            ratio(dc, mc)
        );
    }
    println!(
        "\nES256 proof signature alone (claims encoded and signed), thread CPU: {sign:?} per proof"
    );
    let c = b.fed.counters();
    println!(
        "data provider: {} proofs accepted, {} refused; token requests: {} (mTLS), {} (DPoP)",
        c.dpop_proofs_accepted, c.dpop_proofs_refused, tokens.0, tokens.1
    );
}
