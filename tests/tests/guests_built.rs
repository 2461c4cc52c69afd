//! Every guest component was built, and is a component (not a core module).

use fapi_tests::guests;

/// The first bytes of a WebAssembly component: magic, version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

#[test]
fn every_guest_is_a_component() {
    let all = [
        ("FETCH", guests::FETCH),
        ("CSV_SUMMARY", guests::CSV_SUMMARY),
        ("HTTP_FETCH", guests::HTTP_FETCH),
        ("TRIVIAL", guests::TRIVIAL),
        ("PROBE", guests::PROBE),
        ("CSV_TO_JSON", guests::CSV_TO_JSON),
        ("TEST_PROCESSOR", guests::TEST_PROCESSOR),
    ];
    for (name, path) in all {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: reading {path}: {e}"));
        assert!(
            bytes.starts_with(&COMPONENT_HEADER),
            "{name}: {path} does not start with the component header"
        );
    }
}
