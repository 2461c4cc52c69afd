//! End-to-end tests for fapi-host: real guest components, real TLS, the local federation.
//!
//! The build script builds every component of the `guest/` workspace for `wasm32-wasip2` (see
//! `guest/build-support/build_guests.rs`) and [`guests`] names each one, so a test runs, for example,
//! [`guests::PROBE`] with the subcommand for the sandbox rule it checks. The probe's output (one line of
//! JSON per run) is documented in `guest/test-plugins/src/main.rs`.

/// Absolute paths of the guest components, built by this crate's build script:
///
/// - [`FETCH`](guests::FETCH), [`CSV_SUMMARY`](guests::CSV_SUMMARY), [`HTTP_FETCH`](guests::HTTP_FETCH),
///   [`TRIVIAL`](guests::TRIVIAL): the example plugins (`guest/examples/`);
/// - [`PROBE`](guests::PROBE): the sandbox probe (`guest/test-plugins/`);
/// - [`HOSTILE_STEAL`](guests::HOSTILE_STEAL), [`HOSTILE_EGRESS`](guests::HOSTILE_EGRESS),
///   [`HOSTILE_HEADERS`](guests::HOSTILE_HEADERS), [`HOSTILE_LIMITS`](guests::HOSTILE_LIMITS),
///   [`HOSTILE_EXHAUST`](guests::HOSTILE_EXHAUST): the hostile plugins (`guest/test-plugins/src/bin/`);
/// - [`CSV_TO_JSON`](guests::CSV_TO_JSON), [`TEST_PROCESSOR`](guests::TEST_PROCESSOR): batch processors
///   (`guest/processors/`);
/// - [`SERVE_SUMMARY`](guests::SERVE_SUMMARY): the example service (`guest/examples/serve-summary/`),
///   and [`TEST_SERVICE`](guests::TEST_SERVICE): the hostile service of the `serve` tests
///   (`guest/test-service/`).
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

pub mod sandbox_env;

/// The `fapi-host` binary of this build (`target/<profile>/fapi-host`, next to `deps/`, where the
/// test binaries are). `cargo test --workspace` builds it.
pub fn fapi_host_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("fapi-host"))
        .expect("the test binary is in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p fapi-host`; `cargo test --workspace` does)",
        bin.display()
    );
    bin
}

/// A local federation on a fresh PKI that records every token it issues, so that a test can
/// search everything for each of them ([`fapi_federation::Federation::issued_tokens`]); with
/// `faults`, fault injection by query parameter.
pub async fn recording_federation(faults: bool) -> fapi_federation::Federation {
    let cfg = fapi_federation::FederationConfig {
        faults_enabled: faults,
        record_issued_tokens: true,
        ..fapi_federation::FederationConfig::default()
    };
    let pki = fapi_federation::Pki::generate().expect("a PKI");
    fapi_federation::Federation::start(pki, cfg)
        .await
        .expect("the federation starts")
}

pub use fapi_federation::{Capture, capture_logs};

/// The code of every fenced block in `lang` (```` ```sh ````, ```` ```python ````, ...) of the
/// repository's markdown file `doc` (`README.md`, `docs/batch-clusters.md`), in order, so that
/// tests run what the documentation shows and the two cannot drift.
pub fn doc_blocks(doc: &str, lang: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(doc);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.split(&format!("```{lang}\n"))
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(code, _)| code.to_owned()))
        .collect()
}

/// [`doc_blocks`] of README.md.
pub fn readme_blocks(lang: &str) -> Vec<String> {
    doc_blocks("README.md", lang)
}

/// A local federation of the `ib1` profile (the consent flow) on a fresh PKI, recording every
/// token it issues; access tokens live `token_ttl`.
pub async fn ib1_federation(token_ttl: std::time::Duration) -> fapi_federation::Federation {
    let cfg = fapi_federation::FederationConfig {
        ib1: Some(fapi_federation::Ib1Options::default()),
        record_issued_tokens: true,
        token_ttl,
        ..fapi_federation::FederationConfig::default()
    };
    let pki = fapi_federation::Pki::generate().expect("a PKI");
    fapi_federation::Federation::start(pki, cfg)
        .await
        .expect("the federation starts")
}

/// Have the client configuration `config` keep its grants in `grants/` beside it (so that a test
/// knows where they are and its tokens never touch the user's store); returns that directory.
pub fn use_local_grant_store(config: &std::path::Path) -> std::path::PathBuf {
    let toml = std::fs::read_to_string(config).expect("the configuration");
    std::fs::write(config, format!("grants_dir = \"grants\"\n{toml}")).expect("written");
    config.parent().expect("a directory").join("grants")
}

/// Grant `name` as a household on another machine gives it: `fapi-host grant add NAME
/// --no-listen`, the household `household` approving on the consent page, then `grant complete`
/// with the address the browser ended on. Returns everything the two commands printed (for the
/// tests' search for tokens).
pub async fn add_grant(
    fed: &fapi_federation::Federation,
    config: &std::path::Path,
    name: &str,
    household: &str,
) -> Vec<u8> {
    let command = |args: Vec<String>| {
        let mut c = std::process::Command::new(fapi_host_bin());
        c.arg("--config").arg(config).args(args);
        async move {
            let out = tokio::task::spawn_blocking(move || c.output().expect("fapi-host runs"))
                .await
                .expect("joined");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
    };
    let add = command(vec![
        "grant".into(),
        "add".into(),
        name.into(),
        "--no-listen".into(),
    ])
    .await;
    let url = String::from_utf8_lossy(&add.stdout)
        .lines()
        .next()
        .expect("the authorization address")
        .to_owned();
    let location = fed
        .approve_consent(&url, household)
        .await
        .expect("the household approves");
    let complete = command(vec![
        "grant".into(),
        "complete".into(),
        name.into(),
        location,
    ])
    .await;
    [add.stdout, add.stderr, complete.stdout, complete.stderr].concat()
}
