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
