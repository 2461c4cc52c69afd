//! `fapi-host run --grant` (the IB1 profile): every request of the plugin carries the grant's
//! access token; without a grant the plugin gets no token; no output holds a token.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use fapi_federation::{Federation, FederationConfig, Ib1Options, Pki, data};
use fapi_tests::guests;
use fapi_tests::sandbox_env::Needles;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn fapi_host(config: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(fapi_tests::fapi_host_bin());
    c.arg("--config")
        .arg(config)
        .args(args)
        .current_dir(config.parent().unwrap())
        .env(
            "XDG_CACHE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasmtime-cache"),
        );
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn run_with_a_grant_carries_the_households_token_and_no_output_holds_one() {
    let fed = Federation::start(
        Pki::generate().unwrap(),
        FederationConfig {
            ib1: Some(Ib1Options::default()),
            record_issued_tokens: true,
            ..FederationConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    let toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("grants_dir = \"grants\"\n{toml}")).unwrap();
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();

    // The consent, as a household on another machine gives it: --no-listen, the browser's form,
    // grant complete with the address the browser ended on.
    let out = fapi_host(&config, &["grant", "add", "home", "--no-listen"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = text(&out.stdout).lines().next().unwrap().to_owned();
    outputs.push(("grant add".into(), [out.stdout, out.stderr].concat()));
    let location = fed.approve_consent(&url, "home").await.unwrap();
    let out = fapi_host(&config, &["grant", "complete", "home", &location]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    outputs.push(("grant complete".into(), [out.stdout, out.stderr].concat()));

    // The plugin fetches the household's data with the grant's token.
    let data_url = fed.data_url();
    let out = fapi_host(
        &config,
        &[
            "-vvv",
            "run",
            "--grant",
            "home",
            guests::FETCH,
            "--",
            &data_url,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, data::csv(data::DEFAULT_ROWS).as_bytes());
    // A grant needs no client_credentials: the server's not listing it is not warned about.
    assert!(
        !text(&out.stderr).contains("does not list `client_credentials`"),
        "{}",
        text(&out.stderr)
    );
    outputs.push(("run --grant".into(), [out.stdout, out.stderr].concat()));

    // Without a grant, under ib1, the plugin gets no token: nothing is fetched.
    let before = fed.counters().dp_requests;
    let out = fapi_host(&config, &["run", guests::FETCH, "--", &data_url]).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(fed.counters().dp_requests, before);
    outputs.push((
        "run without a grant".into(),
        [out.stdout, out.stderr].concat(),
    ));

    let key = &fed.pki().client("consumer").unwrap().key_pem;
    let needles = Needles::new(&fed.issued_tokens(), key);
    for (what, hay) in &outputs {
        needles.assert_absent(what, hay);
    }
}
