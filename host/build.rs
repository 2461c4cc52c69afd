//! Builds the example plugins that `fapi-host demo` embeds (guest/examples, for wasm32-wasip2).
include!("../guest/build-support/build_guests.rs");
include!("../guest/build-support/tools.rs");

fn main() {
    // host/tests/credentials.rs makes some of its keys with openssl: ignored where it is missing.
    tool_cfg("fapi_has_openssl", "FAPI_REQUIRE_OPENSSL", &[], || {
        command_runs("openssl", &["version"])
    });
    // Without the sandbox (the fuzz targets) nothing embeds the guests.
    if std::env::var_os("CARGO_FEATURE_SANDBOX").is_none() {
        return;
    }
    let guests = build_guests(Some(&["csv-summary", "fetch"]));
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    write_guest_bytes(&guests, &out.join("embedded_guests.rs"));
}
