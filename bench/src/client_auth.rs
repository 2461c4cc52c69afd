//! Token requests with `private_key_jwt` against `tls_client_auth`, in the same run: two local
//! federations (one requiring client assertions), one client each on the same consumer identity,
//! forced token acquisitions ([`fapi_host::FapiClient::renew_token`]) in alternating rounds. The
//! assertion's signature alone (ES256, the transport key) is timed too.

use std::time::{Duration, Instant};

use fapi_federation::{Federation, FederationConfig, Pki, PrivateKeyJwt};
use fapi_host::{FapiClient, Overrides, Settings};

use crate::{median, time};

async fn client_of(cfg: FederationConfig) -> (Federation, tempfile::TempDir, FapiClient) {
    let fed = Federation::start(Pki::generate().unwrap(), cfg)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = fed.write_client_config(dir.path(), "consumer").unwrap();
    let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();
    let client = FapiClient::from_settings(&settings).unwrap().0;
    (fed, dir, client)
}

pub async fn run(tokens: usize, rounds: usize) {
    let (tls_fed, _d1, tls) = client_of(FederationConfig::default()).await;
    let pkjwt_cfg = FederationConfig {
        private_key_jwt: Some(PrivateKeyJwt::default()),
        ..FederationConfig::default()
    };
    let (jwt_fed, _d2, jwt) = client_of(pkjwt_cfg).await;
    let round = |c: &FapiClient| {
        let c = c.clone();
        async move {
            for _ in 0..tokens {
                c.renew_token().await.unwrap();
            }
        }
    };
    // Warm up: discovery, the connection, the first token of each.
    round(&tls).await;
    round(&jwt).await;
    let (mut t, mut j) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        t.push(time(round(&tls)).await);
        j.push(time(round(&jwt)).await);
    }
    // The signature alone, with the same kind of key (the consumer's P-256 transport key).
    let key = tls.identity().jws_key().unwrap();
    let claims = serde_json::json!({"iss": "fapi-dev-consumer", "sub": "fapi-dev-consumer",
        "aud": tls_fed.issuer_url(), "jti": uuid::Uuid::new_v4().to_string(), "iat": 0, "exp": 60});
    let t0 = Instant::now();
    for _ in 0..tokens {
        key.sign(serde_json::Map::new(), &claims).unwrap();
    }
    let sign = t0.elapsed() / tokens as u32;
    let per = |d: Duration| d / tokens as u32;
    let (tm, jm) = (per(median(t)), per(median(j)));
    let c = jwt_fed.counters();
    assert_eq!(c.assertions_refused, 0);
    assert_eq!(
        c.assertions_verified as usize,
        tokens * (rounds + 1),
        "every private_key_jwt token came through a verified assertion"
    );
    assert_eq!(
        tls_fed.counters().tokens_issued as usize,
        tokens * (rounds + 1)
    );
    println!(
        "\n## Token requests: private_key_jwt vs tls_client_auth ({tokens} forced token requests x {rounds} rounds, one mTLS connection each, local federation)\n"
    );
    println!("| client authentication | per token request | ratio to tls_client_auth |");
    println!("|---|---|---|");
    println!("| tls_client_auth (baseline) | {tm:?} | 1.00 |");
    println!(
        "| private_key_jwt (ES256 assertion signed by the host, verified by the server) | {jm:?} | {:.2} |",
        jm.as_secs_f64() / tm.as_secs_f64()
    );
    println!(
        "| the assertion's ES256 signature alone (host side) | {sign:?} | {:.2} |",
        sign.as_secs_f64() / tm.as_secs_f64()
    );
}
