//! Builds every guest component in `guest/` for `wasm32-wasip2` (a nested cargo, its own target directory
//! `<target>/wasm-guests`) and writes `$OUT_DIR/guests.rs` with one path constant per component, so that a
//! test names the component it runs: `fapi_tests::guests::PROBE`.

include!("../guest/build-support/build_guests.rs");
include!("../guest/build-support/tools.rs");

/// Where Debian's softhsm2 puts its PKCS#11 module.
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn main() {
    let guests = build_guests(None);
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    write_guest_constants(&guests, &out_dir.join("guests.rs"));
    // Tests that need a tool from outside Rust are ignored where it is missing (tools.rs).
    tool_cfg(
        "fapi_has_oidc_provider",
        "FAPI_REQUIRE_INTEROP",
        &["oidc"],
        || {
            command_runs("node", &["--version"])
                && std::path::Path::new("oidc/node_modules/oidc-provider/package.json").exists()
        },
    );
    tool_cfg(
        "fapi_has_componentize_py",
        "FAPI_REQUIRE_LANG_PLUGINS",
        &[],
        || command_runs("componentize-py", &["--version"]),
    );
    tool_cfg(
        "fapi_has_componentize_js",
        "FAPI_REQUIRE_LANG_PLUGINS",
        &["../guest/js"],
        || {
            command_runs("node", &["--version"])
                && std::path::Path::new("../guest/js/node_modules").exists()
        },
    );
    tool_cfg(
        "fapi_has_curl_and_python_requests",
        "FAPI_REQUIRE_INTEROP",
        &[],
        || {
            command_runs("curl", &["--version"])
                && command_runs("python3", &["-c", "import requests"])
        },
    );
    tool_cfg(
        "fapi_has_python_dataframes",
        "FAPI_REQUIRE_INTEROP",
        &[],
        || {
            command_runs("curl", &["--version"])
                && command_runs(
                    "python3",
                    &[
                        "-c",
                        "import requests, pandas, duckdb, duckdb_extension_httpfs",
                    ],
                )
        },
    );
    // The seed's Python client (tests/tests/seed_client.rs): ib1-openenergy-support 0.2.17, which
    // needs urllib3<2, in `$FAPI_SEED_PYTHON` (CI: a venv of its own) or `python3`.
    println!("cargo::rerun-if-env-changed=FAPI_SEED_PYTHON");
    tool_cfg(
        "fapi_has_seed_client",
        "FAPI_REQUIRE_SEED_CLIENT",
        &[],
        || {
            let python = std::env::var("FAPI_SEED_PYTHON")
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "python3".into());
            command_runs(&python, &["-c", "import ib1.openenergy.support"])
        },
    );
    tool_cfg("fapi_has_softhsm", "FAPI_REQUIRE_PKCS11", &[], || {
        std::path::Path::new(SOFTHSM_MODULE).exists()
            && command_runs("softhsm2-util", &["--version"])
            && std::process::Command::new("pkcs11-tool")
                .arg("--help")
                .output()
                .is_ok()
    });
    tool_cfg("fapi_has_slurm", "FAPI_REQUIRE_SLURM", &[], || {
        ["slurmctld", "slurmd", "munged", "sbatch"]
            .iter()
            .all(|t| std::process::Command::new(t).arg("-V").output().is_ok())
            && std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    tool_cfg(
        "fapi_has_kubernetes_validate",
        "FAPI_REQUIRE_K8S_VALIDATE",
        &[],
        || command_runs("kubernetes-validate", &["--version"]),
    );
    // The wasmtime compilation cache that every test binary of this crate shares.
    println!(
        "cargo:rustc-env=FAPI_TESTS_WASMTIME_CACHE={}",
        out_dir.join("wasmtime-cache").display()
    );
}
