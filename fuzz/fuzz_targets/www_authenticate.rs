//! `WWW-Authenticate` parsing (RFC 9110 challenges; RFC 6750 Bearer errors) of any header values.
//!
//! Properties: nothing panics or loops; schemes and parameter names come out lower-cased and
//! non-empty (but token68, whose name is ""); `bearer()` on a header map agrees with `parse()`.
#![no_main]

use fapi_host::www_authenticate::{bearer, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\n').collect();
    let challenges = parse(values.iter().copied());
    for c in &challenges {
        assert!(!c.scheme.is_empty());
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
        for (name, _) in &c.params {
            assert_eq!(*name, name.to_ascii_lowercase());
        }
    }
    let mut map = http::HeaderMap::new();
    for v in &values {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            map.append(http::header::WWW_AUTHENTICATE, v);
        }
    }
    let from_map = bearer(&map);
    // Bytes, not text: a value with bytes >= 0x80 (UTF-8 in a description) is still a challenge.
    let parsed = parse(
        map.get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .map(http::HeaderValue::as_bytes),
    );
    assert_eq!(
        from_map.is_some(),
        parsed.iter().any(|c| c.scheme == "bearer")
    );
});
