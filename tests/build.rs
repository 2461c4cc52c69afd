//! Builds every guest component in `guest/` for `wasm32-wasip2` (a nested cargo, its own target directory
//! `<target>/wasm-guests`) and writes `$OUT_DIR/guests.rs` with one path constant per component, so that a
//! test names the component it runs: `fapi_tests::guests::PROBE`.

include!("../guest/build-support/build_guests.rs");

fn main() {
    let guests = build_guests(None);
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    write_guest_constants(&guests, &out_dir.join("guests.rs"));
    // The wasmtime compilation cache that every test binary of this crate shares.
    println!(
        "cargo:rustc-env=FAPI_TESTS_WASMTIME_CACHE={}",
        out_dir.join("wasmtime-cache").display()
    );
}
