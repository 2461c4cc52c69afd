//! Builds the example plugins that `fapi-host demo` embeds (guest/examples, for wasm32-wasip2).
include!("../guest/build-support/build_guests.rs");
include!("../guest/build-support/tools.rs");

fn main() {
    // host/tests/credentials.rs makes some of its keys with openssl: ignored where it is missing.
    tool_cfg("fapi_has_openssl", "FAPI_REQUIRE_OPENSSL", &[], || {
        command_runs("openssl", &["version"])
    });
    // host/tests/pkcs11.rs makes tokens with SoftHSM2 and OpenSC: ignored where they are missing.
    tool_cfg("fapi_has_softhsm", "FAPI_REQUIRE_PKCS11", &[], || {
        [
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib64/pkcs11/libsofthsm2.so",
        ]
        .iter()
        .any(|m| std::path::Path::new(m).is_file())
            && command_runs("softhsm2-util", &["--version"])
            && std::process::Command::new("pkcs11-tool")
                .arg("--help")
                .output()
                .is_ok()
    });
    // Without the sandbox (the fuzz targets) nothing embeds the guests.
    if std::env::var_os("CARGO_FEATURE_SANDBOX").is_none() {
        return;
    }
    let guests = build_guests(Some(&["csv-summary", "fetch"]));
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    write_guest_bytes(&guests, &out.join("embedded_guests.rs"));
}
