//! A batch whose items are spread over many grants (households' consents, profile `ib1`) against
//! the same items under one grant, in the same run: the batch engine ([`Batch`]) on one local
//! `ib1` federation, alternating rounds. The grants are made through the consent flow
//! (`fapi-host grant add --no-listen`, the consent page's form posted as a household's browser
//! would, `grant complete`); only the batches are timed. Refresh requests are counted at the
//! authorization server: none while the tokens outlive the run, then, on a federation with short
//! tokens, exactly one per grant per expiry.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fapi_federation::{Federation, FederationConfig, Ib1Options, Pki};
use fapi_host::batch::{Batch, BatchOptions, Input};
use fapi_host::{FapiClient, Overrides, Settings};

use crate::memory::fapi_host_bin;

/// An `ib1` federation, its consumer's configuration (grants in `DIR/grants`) and client.
struct Ib1 {
    fed: Federation,
    dir: tempfile::TempDir,
    config: PathBuf,
    client: FapiClient,
}

impl Ib1 {
    async fn start(token_ttl: Duration) -> Ib1 {
        let fed = Federation::start(
            Pki::generate().unwrap(),
            FederationConfig {
                ib1: Some(Ib1Options::default()),
                token_ttl,
                ..FederationConfig::default()
            },
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = fed.write_client_config(dir.path(), "consumer").unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        let grants = dir.path().join("grants");
        std::fs::write(
            &config,
            format!("grants_dir = \"{}\"\n{text}", grants.display()),
        )
        .unwrap();
        let settings = Settings::load(Some(&config), &Overrides::default()).unwrap();
        let client = FapiClient::from_settings(&settings).unwrap().0;
        Ib1 {
            fed,
            dir,
            config,
            client,
        }
    }

    /// `fapi-host ARGS` with this configuration: its stdout (it must succeed).
    async fn host(&self, args: Vec<String>) -> String {
        let (config, dir) = (self.config.clone(), self.dir.path().to_owned());
        tokio::task::spawn_blocking(move || {
            let out = Command::new(fapi_host_bin())
                .arg("--config")
                .arg(&config)
                .args(&args)
                .current_dir(&dir)
                .env_remove("FAPI_CONFIG")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "fapi-host {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
        .await
        .unwrap()
    }

    /// Grant `name` through the consent flow, approved by the household's "browser".
    async fn add_grant(&self, name: &str) {
        let out = self
            .host(vec![
                "grant".into(),
                "add".into(),
                name.into(),
                "--no-listen".into(),
            ])
            .await;
        let url = out.lines().next().unwrap().to_owned();
        let browser = self.fed.pki().http_client(None).unwrap();
        let html = browser
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let field = |after: &str| {
            html.split(after)
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap()
                .to_owned()
        };
        let (request_uri, action) = (field("name=\"request_uri\" value=\""), field("action=\""));
        assert!(
            request_uri
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.".contains(&b)),
            "{request_uri}"
        );
        let origin = self.fed.issuer_url().replace("/accounts", "");
        let resp = browser
            .post(format!("{origin}{action}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("request_uri={request_uri}&decision=approve"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        self.host(vec![
            "grant".into(),
            "complete".into(),
            name.into(),
            location,
        ])
        .await;
    }

    fn refreshes(&self) -> u64 {
        self.fed.consent_counters().unwrap().refresh_requests
    }

    fn tokens(&self) -> u64 {
        self.fed.counters().tokens_issued
    }
}

/// The items: `/items/{i}` for i < items, each naming grant `h{i % grants}` (or none).
fn input(origin: &str, items: u64, grants: Option<u64>) -> String {
    (0..items)
        .map(|i| match grants {
            Some(g) => format!(
                "{{\"url\":\"{origin}/items/{i}\",\"grant\":\"h{}\"}}\n",
                i % g
            ),
            None => format!("{{\"url\":\"{origin}/items/{i}\"}}\n"),
        })
        .collect()
}

/// One batch into a fresh directory: items/s. `grant`: the default grant.
async fn batch(client: &FapiClient, input: &str, grant: Option<&str>, conc: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut options = BatchOptions::new(dir.path());
    options.concurrency = conc;
    options.grant = grant.map(str::to_owned);
    let batch = Batch::new(client.clone(), options);
    let input = Input::parse(input);
    let n = input.len() as u64;
    let t0 = Instant::now();
    let summary = batch.run(input).await.unwrap();
    assert_eq!(summary.done, n, "{summary}");
    n as f64 / t0.elapsed().as_secs_f64()
}

/// The data provider's origin.
fn origin_of(fed: &Federation) -> String {
    fed.data_url()
        .trim_end_matches("/consumption.csv")
        .to_owned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn add_grants(b: &Ib1, grants: u64) -> Duration {
    let t0 = Instant::now();
    for g in 0..grants {
        b.add_grant(&format!("h{g}")).await;
    }
    t0.elapsed()
}

pub async fn run(items: u64, grants: u64, concurrency: usize, rounds: usize, short_ttl: u64) {
    // Tokens that outlive the run: no refresh is due.
    let b = Ib1::start(Duration::from_secs(3600)).await;
    let flow = add_grants(&b, grants).await;
    let origin = origin_of(&b.fed);
    let many = input(&origin, items, Some(grants));
    let one = input(&origin, items, None);
    // Warm up: the connections, and each grant's first use.
    batch(&b.client, &many, None, concurrency).await;
    batch(&b.client, &one, Some("h0"), concurrency).await;
    let (r0, t0) = (b.refreshes(), b.tokens());
    let (mut m, mut o) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        m.push(batch(&b.client, &many, None, concurrency).await);
        o.push(batch(&b.client, &one, Some("h0"), concurrency).await);
    }
    let (refreshed, issued) = (b.refreshes() - r0, b.tokens() - t0);
    let (mm, om) = (median(m), median(o));

    // Short tokens: every grant's token expired before each batch, refreshed once in it.
    let s = Ib1::start(Duration::from_secs(short_ttl)).await;
    add_grants(&s, grants).await;
    let origin = origin_of(&s.fed);
    let many_s = input(&origin, items, Some(grants));
    let mut expiries = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(short_ttl) + Duration::from_millis(200)).await;
        let before = s.refreshes();
        let rate = batch(&s.client, &many_s, None, concurrency).await;
        expiries.push((s.refreshes() - before, rate));
    }

    println!(
        "\n## A batch over {grants} grants against the same batch under one grant ({items} items, /items/{{i}}, concurrency {concurrency}, {rounds} alternating rounds, median; local ib1 federation)\n"
    );
    println!(
        "{grants} grants made through the consent flow (PAR, consent form, code exchange: `grant add --no-listen` + `grant complete`) in {:.1} s, not timed below.\n",
        flow.as_secs_f64()
    );
    println!("| batch | items/s | ratio to one grant | refresh requests | tokens issued |");
    println!("|---|---|---|---|---|");
    println!("| {items} items, one grant (`--grant h0`; baseline) | {om:.0} | 1.00 | 0 | 0 |");
    println!(
        "| {items} items over {grants} grants (`\"grant\"` per line) | {mm:.0} | {:.2} | {refreshed} | {issued} |",
        om / mm
    );
    println!(
        "\n(refresh requests and tokens issued: over all {} timed batches of both kinds, tokens living 1 h)\n",
        rounds * 2
    );
    println!("With {short_ttl} s tokens (each batch started after every grant's token expired):\n");
    println!("| batch after expiry | items/s | refresh requests | expected (one per grant) |");
    println!("|---|---|---|---|");
    for (i, (n, rate)) in expiries.iter().enumerate() {
        println!("| {} | {rate:.0} | {n} | {grants} |", i + 1);
    }
}
