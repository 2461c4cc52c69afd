//! `fapi-host run --grant` (the IB1 profile): every request of the plugin carries the grant's
//! access token; without a grant the plugin is not started; no output holds a token.
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

    // Without a grant, under ib1, the plugin is not started: refused with what to give, nothing
    // fetched.
    let before = fed.counters().dp_requests;
    let out = fapi_host(&config, &["run", guests::FETCH, "--", &data_url]).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("run --grant NAME")
            && text(&out.stderr).contains("grant add NAME"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(fed.counters().dp_requests, before);
    outputs.push((
        "run without a grant".into(),
        [out.stdout, out.stderr].concat(),
    ));

    assert_no_secret(&fed, &outputs);
}

/// `batch --plugin` over three grants: each item's processor makes its own requests with the
/// item's grant (its line's, or `--grant`'s), not the batch's default: the processor's own
/// fetch of `/household.json` answers with the household of the item's grant. No output holds a
/// token.
#[tokio::test]
async fn a_batch_processors_own_requests_carry_each_items_grant() {
    let fed = fapi_tests::ib1_federation(std::time::Duration::from_secs(120)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fed.write_client_config(dir.path(), "consumer").unwrap();
    fapi_tests::use_local_grant_store(&config);
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    for g in ["a", "b", "c"] {
        let printed = fapi_tests::add_grant(&fed, &config, g, &format!("household-{g}")).await;
        outputs.push((format!("grant add {g}"), printed));
    }
    // "refetch": the processor fetches the item's URL again itself and returns that body.
    let url = fed.household_url();
    let input = dir.path().join("households.jsonl");
    std::fs::write(
        &input,
        format!(
            "{{\"url\":\"{url}\",\"name\":\"refetch.a\",\"grant\":\"a\"}}\n\
             {{\"url\":\"{url}\",\"name\":\"refetch.b\",\"grant\":\"b\"}}\n\
             {{\"url\":\"{url}\",\"name\":\"refetch.c\"}}\n"
        ),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let allow = format!("{}/", fed.data_origin());
    let out = fapi_host(
        &config,
        &[
            "-vv",
            "batch",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--grant",
            "c",
            "--plugin",
            guests::TEST_PROCESSOR,
            "--allow",
            &allow,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    outputs.push(("batch --plugin".into(), [out.stdout, out.stderr].concat()));
    for g in ["a", "b", "c"] {
        let body = std::fs::read(out_dir.join(format!("refetch.{g}"))).unwrap();
        assert_eq!(
            text(&body),
            format!("{{\"household\":\"household-{g}\"}}"),
            "item {g}"
        );
        outputs.push((format!("output {g}"), body));
    }
    outputs.push((
        "the manifest".into(),
        std::fs::read(out_dir.join("manifest.jsonl")).unwrap(),
    ));
    assert_no_secret(&fed, &outputs);
}

/// No token the federation issued and no piece of the consumer's key in any of `outputs`.
fn assert_no_secret(fed: &fapi_federation::Federation, outputs: &[(String, Vec<u8>)]) {
    let key = &fed.pki().client("consumer").unwrap().key_pem;
    let needles = Needles::new(&fed.issued_tokens(), key);
    for (what, hay) in outputs {
        needles.assert_absent(what, hay);
    }
}
