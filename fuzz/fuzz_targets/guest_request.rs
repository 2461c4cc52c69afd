//! A guest's request as the host converts it: method, headers and URL, exactly as `fapi-fetch` and
//! intercepted wasi:http requests are checked (`check_method`, `check_headers`, `Policy::check_url`).
//!
//! Properties: nothing panics; an accepted header set never holds a header the host owns
//! (Authorization, Cookie, Host, x-fapi-*, framing headers), nor CR, LF or NUL in a value, and stays
//! within the count limit; an accepted method is one of the seven allowed.
#![no_main]

use fapi_host::{HeaderCaller, Policy, check_headers, check_method, refused_header};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct GuestRequest {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
}

fuzz_target!(|req: GuestRequest| {
    if let Ok(method) = check_method(&req.method) {
        assert!(
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].contains(&method.as_str()),
            "{:?}",
            req.method
        );
    }
    let headers = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
    if let Ok(map) = check_headers(headers) {
        assert!(map.len() <= 64, "{} headers accepted", map.len());
        for (name, value) in &map {
            assert!(
                refused_header(HeaderCaller::Guest, name).is_none(),
                "{name} accepted"
            );
            assert!(
                !value
                    .as_bytes()
                    .iter()
                    .any(|b| matches!(b, b'\r' | b'\n' | 0)),
                "{name}: a control byte accepted"
            );
        }
    }
    let policy = Policy::new(&["https://data.example/".into()], &[]).expect("a valid policy");
    if let Ok(url) = policy.check_url(&req.url) {
        assert_eq!(url.host_str(), Some("data.example"), "{:?}", req.url);
    }
});
