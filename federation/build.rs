//! Whether the independent clients of the interop tests (curl, Python's requests) are here: their
//! tests are ignored where they are missing, and required under `FAPI_REQUIRE_INTEROP=1`.
include!("../guest/build-support/tools.rs");

fn main() {
    tool_cfg("fapi_has_curl", "FAPI_REQUIRE_INTEROP", &[], || {
        command_runs("curl", &["--version"])
    });
    tool_cfg(
        "fapi_has_python_requests",
        "FAPI_REQUIRE_INTEROP",
        &[],
        || command_runs("python3", &["-c", "import requests"]),
    );
}
