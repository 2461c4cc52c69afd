//! The batch input file (URL per line, or JSON lines), from any text.
//!
//! Properties: nothing panics; every line is either an item or a bad line, never both, in input
//! order; every item has a plain file name (no '/', '\\', control character, leading '.', or the
//! manifest's name), no header the host owns, and an https URL.
#![no_main]

use fapi_host::batch::{Input, naming};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let input = Input::parse(text);
    let mut seen = std::collections::HashSet::new();
    let mut last = 0;
    for item in input.items() {
        assert!(item.line > last, "items out of order");
        last = item.line;
        assert!(naming::check_name(&item.name).is_ok(), "{:?}", item.name);
        assert!(
            seen.insert(item.name.clone()),
            "duplicate name {:?}",
            item.name
        );
        assert_eq!(item.url.scheme(), "https", "{}", item.url);
        for name in item.headers.keys() {
            assert!(
                fapi_host::refused_header(fapi_host::HeaderCaller::Command, name).is_none(),
                "{name}"
            );
        }
        assert!(!input.bad.iter().any(|b| b.line == item.line));
    }
});
