//! A discovery document (`/.well-known/openid-configuration`), from any bytes.
//!
//! Properties: nothing panics; an accepted document names exactly the configured issuer, and every
//! endpoint it yields is https.
#![no_main]

use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "https://as.example";

fuzz_target!(|body: &[u8]| {
    let url = fapi_host::well_known_url(ISSUER);
    let scopes = vec!["consumption:read".to_owned()];
    if let Ok((meta, _warnings)) = fapi_host::check_document(ISSUER, &url, body, &scopes) {
        assert_eq!(meta.issuer, ISSUER);
        for endpoint in meta.endpoints() {
            assert_eq!(endpoint.scheme(), "https", "{endpoint}");
        }
    }
});
