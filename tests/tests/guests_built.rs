//! Every guest component was built, and is a component (not a core module).

use fapi_tests::guests;

/// The first bytes of a WebAssembly component: magic, version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// The file the build script generated from its table of every guest component
/// (`guest/build-support/build_guests.rs`): one `pub const NAME: &str = "/abs/path.wasm";` each.
const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// `(NAME, path)` of every constant in [`GENERATED`].
fn generated_guests() -> Vec<(String, String)> {
    GENERATED
        .lines()
        .filter_map(|l| l.strip_prefix("pub const "))
        .map(|l| {
            let (name, rest) = l
                .split_once(": &str = ")
                .unwrap_or_else(|| panic!("unexpected line in guests.rs: {l}"));
            let path: String = serde_json::from_str(rest.trim_end_matches(';'))
                .unwrap_or_else(|e| panic!("unexpected path in guests.rs: {rest}: {e}"));
            (name.to_owned(), path)
        })
        .collect()
}

#[test]
fn every_guest_is_a_component() {
    // Named here (so that a renamed or removed guest fails to compile) and checked against the
    // build script's list (so that a guest added there and not here fails the test).
    let all = [
        ("FETCH", guests::FETCH),
        ("CSV_SUMMARY", guests::CSV_SUMMARY),
        ("HTTP_FETCH", guests::HTTP_FETCH),
        ("TRIVIAL", guests::TRIVIAL),
        ("PROBE", guests::PROBE),
        ("HOSTILE_STEAL", guests::HOSTILE_STEAL),
        ("HOSTILE_EGRESS", guests::HOSTILE_EGRESS),
        ("HOSTILE_HEADERS", guests::HOSTILE_HEADERS),
        ("HOSTILE_LIMITS", guests::HOSTILE_LIMITS),
        ("HOSTILE_EXHAUST", guests::HOSTILE_EXHAUST),
        ("CSV_TO_JSON", guests::CSV_TO_JSON),
        ("TEST_PROCESSOR", guests::TEST_PROCESSOR),
        ("SERVE_SUMMARY", guests::SERVE_SUMMARY),
        ("TEST_SERVICE", guests::TEST_SERVICE),
    ];
    let mut named: Vec<(String, String)> = all
        .iter()
        .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
        .collect();
    let mut generated = generated_guests();
    named.sort();
    generated.sort();
    assert_eq!(
        named, generated,
        "the guests checked here are not every guest the build script builds"
    );
    for (name, path) in all {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: reading {path}: {e}"));
        assert!(
            bytes.starts_with(&COMPONENT_HEADER),
            "{name}: {path} does not start with the component header"
        );
    }
}
