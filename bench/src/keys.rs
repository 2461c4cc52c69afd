//! What a key in a PKCS#11 token costs: the consumer's own P-256 key as a PEM file against the same
//! key imported into a SoftHSM2 token (same certificate, same server), in one run.
//!
//! - Full handshakes per second: sequential GETs to a TLS server on loopback that requires the
//!   client certificate, keeps no sessions and closes every connection, so each request is a new
//!   TCP connection and a full handshake signed by the key.
//! - Per request with connection reuse: GET /items/42 from the federation's data provider on one
//!   keep-alive connection (the token signs nothing then).
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process: the command makes a token directory, then runs
//! itself again with the variable set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fapi_federation::SoftHsm;
use fapi_host::{FapiClient, Settings};
use rustls::pki_types::pem::PemObject as _;

use crate::median;
use crate::setup::{Bench, fapi_get};

const PIN: &str = "bench-pin-4410";

pub async fn run(handshakes: usize, requests: usize, rounds: usize) {
    if SoftHsm::installed_module().is_none() {
        eprintln!("SoftHSM2 is not installed (apt-get install softhsm2 opensc): nothing measured");
        std::process::exit(2);
    }
    let Some(hsm_dir) = std::env::var_os("FAPI_BENCH_SOFTHSM_DIR").map(PathBuf::from) else {
        // Run again with SOFTHSM2_CONF naming a token directory of our own.
        let dir = tempfile::tempdir().unwrap();
        let hsm = SoftHsm::new(dir.path()).unwrap();
        let status = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("SOFTHSM2_CONF", hsm.conf())
            .env("FAPI_BENCH_SOFTHSM_DIR", dir.path())
            .env("FAPI_PKCS11_PIN", PIN)
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    };

    let b = Bench::start().await;
    let consumer = b.fed.pki().client("consumer").unwrap();
    let token_settings = import_key(&b.settings, &consumer.key_pem, &hsm_dir);
    let pem = b.client();
    let (token, _) = FapiClient::from_settings(&token_settings).unwrap();
    assert_eq!(pem.identity().thumbprint(), token.identity().thumbprint());

    // Full handshakes.
    let probe = Probe::start(&b).await;
    let url = format!("{}/h", probe.origin);
    fapi_get(&pem, &url).await;
    fapi_get(&token, &url).await;
    let (mut hp, mut ht) = (Vec::new(), Vec::new());
    // The order alternates from round to round, so that neither key always runs second.
    for round in 0..rounds {
        if round % 2 == 0 {
            hp.push(sequential(&pem, &url, handshakes).await);
            ht.push(sequential(&token, &url, handshakes).await);
        } else {
            ht.push(sequential(&token, &url, handshakes).await);
            hp.push(sequential(&pem, &url, handshakes).await);
        }
    }
    let (hp, ht) = (median(hp), median(ht));
    let per_s = |d: Duration| handshakes as f64 / d.as_secs_f64();

    // Requests on one kept-alive connection.
    let data = format!("{}/items/42", b.fed.data_origin());
    for _ in 0..50 {
        fapi_get(&pem, &data).await;
        fapi_get(&token, &data).await;
    }
    let (mut rp, mut rt) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            rp.push(sequential(&pem, &data, requests).await / requests as u32);
            rt.push(sequential(&token, &data, requests).await / requests as u32);
        } else {
            rt.push(sequential(&token, &data, requests).await / requests as u32);
            rp.push(sequential(&pem, &data, requests).await / requests as u32);
        }
    }
    let (rp, rt) = (median(rp), median(rt));

    println!(
        "\n## Key sources: the same P-256 key as a PEM file and in a SoftHSM2 token ({handshakes} handshakes and {requests} requests x {rounds} rounds, medians)\n"
    );
    println!("| figure | PEM key (baseline) | SoftHSM2 key | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| full handshakes per second (new connection each, no resumption) | {:.0}/s | {:.0}/s | {:.2}x the time |",
        per_s(hp),
        per_s(ht),
        ht.as_secs_f64() / hp.as_secs_f64()
    );
    println!(
        "| per full handshake + request | {:?} | {:?} | +{:?} |",
        hp / handshakes as u32,
        ht / handshakes as u32,
        (ht / handshakes as u32).saturating_sub(hp / handshakes as u32)
    );
    println!(
        "| per request, one kept-alive connection | {rp:?} | {rt:?} | {:.3}x |",
        rt.as_secs_f64() / rp.as_secs_f64()
    );
    probe.task.abort();
}

async fn sequential(client: &FapiClient, url: &str, n: usize) -> Duration {
    let t0 = Instant::now();
    for _ in 0..n {
        fapi_get(client, url).await;
    }
    t0.elapsed()
}

/// Import the consumer's PEM key into a fresh SoftHSM2 token; settings that use it there.
fn import_key(settings: &Settings, key_pem: &str, dir: &Path) -> Settings {
    let hsm = SoftHsm::new(dir).unwrap();
    hsm.init_token("bench", PIN, "bench-so-1").unwrap();
    hsm.import_key("bench", PIN, key_pem, "consumer", "01")
        .unwrap();
    let mut s = settings.clone();
    s.private_key = PathBuf::from("pkcs11:token=bench;object=consumer");
    s.pkcs11_module = Some(hsm.module().to_path_buf());
    s
}

/// A TLS server on loopback that requires a client certificate of the federation's CA, keeps no
/// sessions (no resumption) and answers `200` and closes every connection.
struct Probe {
    origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    async fn start(b: &Bench) -> Probe {
        let pki = b.fed.pki();
        let server = pki.issue_server(&["127.0.0.1"], false).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![
                    rustls::pki_types::CertificateDer::from_pem_slice(server.cert_pem.as_bytes())
                        .unwrap(),
                ],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())
                    .unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let (origin, task) = fapi_federation::one_reply_server(Arc::new(config), "ok")
            .await
            .unwrap();
        Probe { origin, task }
    }
}
