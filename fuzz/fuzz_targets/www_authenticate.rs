//! `WWW-Authenticate` parsing (RFC 9110 challenges; RFC 6750 Bearer errors) of any header values,
//! given as raw bytes: the input is split on `\n` into header values, which may hold any byte
//! (UTF-8 or Latin-1 in an `error_description`, control characters, ...).
//!
//! Properties: nothing panics or loops; schemes come out lower-cased and non-empty; parameter
//! names come out lower-cased and non-empty, but for a token68, whose name is "" and which can
//! only be a challenge's first parameter; every value a `HeaderValue` accepts (bytes >= 0x80
//! included) goes into the header map, and `bearer()` on that map returns exactly the `error`,
//! `error_description` and `scope` of the first Bearer challenge that `parse()` finds in those
//! values' bytes (so a challenge with bytes >= 0x80 is not skipped).
#![no_main]

use fapi_host::www_authenticate::{bearer, bearer_in, parse};
use libfuzzer_sys::fuzz_target;

/// Whether `http` must accept `v` as a header value: no control character but HTAB, no DEL
/// (RFC 9110 field-value; obs-text, bytes >= 0x80, is allowed).
fn valid_header_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();

    // Every value as it is, whatever its bytes.
    for c in &parse(values.iter().copied()) {
        assert!(!c.scheme.is_empty(), "{c:?}");
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase(), "{c:?}");
        for (i, (name, _)) in c.params.iter().enumerate() {
            assert_eq!(*name, name.to_ascii_lowercase(), "{c:?}");
            assert!(
                !name.is_empty() || i == 0,
                "an empty name (a token68) after other parameters: {c:?}"
            );
        }
    }

    // The values a response can carry, as bytes: bytes >= 0x80 reach `bearer()`.
    let mut map = http::HeaderMap::new();
    let mut in_map: Vec<&[u8]> = Vec::new();
    for v in &values {
        match http::HeaderValue::from_bytes(v) {
            Ok(hv) => {
                map.append(http::header::WWW_AUTHENTICATE, hv);
                in_map.push(v);
            }
            Err(_) => assert!(!valid_header_value(v), "a valid value refused: {v:?}"),
        }
    }
    // Every value in the map counts, as its bytes (none dropped for not being visible ASCII).
    assert_eq!(
        bearer(&map),
        bearer_in(in_map.iter().copied()),
        "values: {in_map:?}"
    );
});
