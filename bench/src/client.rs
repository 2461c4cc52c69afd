//! FapiClient against plain reqwest mTLS: per-request latency on one keep-alive connection.

use std::time::Duration;

use crate::setup::{Bench, fapi_get, plain_get};
use crate::{median, time};

pub async fn run(requests: usize, rounds: usize) {
    let b = Bench::start().await;
    let client = b.client();
    let url = format!("{}/items/42", b.fed.data_origin());
    // The baseline sends the same token as a fixed header: same server work, no token logic.
    let token = client.danger_reveal_token().await.unwrap();
    let bearer = format!("Bearer {}", token.as_str());
    let plain = b.plain_reqwest();

    let fapi_round = || async {
        for _ in 0..requests {
            fapi_get(&client, &url).await;
        }
    };
    let plain_round = || async {
        for _ in 0..requests {
            plain_get(&plain, &url, &bearer).await;
        }
    };
    // Warm up both (connections, introspection cache).
    fapi_round().await;
    plain_round().await;
    let (mut f, mut p) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        p.push(time(plain_round()).await);
        f.push(time(fapi_round()).await);
    }
    let per = |d: Duration| d / requests as u32;
    let (pm, fm) = (per(median(p)), per(median(f)));
    println!(
        "\n## FapiClient vs plain reqwest mTLS ({requests} requests x {rounds} rounds, one connection, GET /items/42)\n"
    );
    println!("| client | per request | ratio to plain reqwest |");
    println!("|---|---|---|");
    println!("| plain reqwest mTLS, fixed bearer header (baseline) | {pm:?} | 1.00 |");
    println!(
        "| FapiClient (token cache, interaction id, retry logic) | {fm:?} | {:.2} |",
        fm.as_secs_f64() / pm.as_secs_f64()
    );
    println!(
        "\ntoken requests made by FapiClient: {}",
        client.token_requests()
    );
}
