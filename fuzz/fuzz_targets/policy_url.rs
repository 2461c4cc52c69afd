//! The egress allow-list decision on any string a guest could send as a URL.
//!
//! Properties: an allowed URL is https, carries no user information, and its normalised host, port
//! and path fall under an allow-list entry and never on the authorization server; deciding again on
//! the URL the policy returns gives the same answer (no spelling is normalised into another origin
//! on a second look); a refusal of a URL with a password never quotes the password.
#![no_main]

use std::sync::OnceLock;

use fapi_host::{Denial, Policy};
use libfuzzer_sys::fuzz_target;

/// (host, port, path prefix) of each allow-list entry below.
const ALLOWED: &[(&str, u16, &str)] = &[
    ("data.example", 443, "/api/"),
    ("127.0.0.1", 8443, "/"),
    ("files.example", 443, "/v1"),
    ("xn--bcher-kva.example", 443, "/"),
];

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let as_url = url::Url::parse("https://127.0.0.1:9443/token").expect("valid");
        Policy::new(
            &[
                "https://data.example/api/".into(),
                "https://127.0.0.1:8443".into(),
                "https://files.example/v1".into(),
                "https://bücher.example/".into(),
            ],
            &[as_url],
        )
        .expect("a valid policy")
    })
}

fn under(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix || path.starts_with(&format!("{prefix}/"))
    }
}

fuzz_target!(|raw: &str| {
    let policy = policy();
    match policy.check_url(raw) {
        Ok(url) => {
            assert_eq!(url.scheme(), "https", "{raw:?}");
            assert!(
                url.username().is_empty() && url.password().is_none(),
                "{raw:?}"
            );
            let host = url.host_str().expect("an allowed URL has a host");
            let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
            let port = url.port_or_known_default().expect("https has a port");
            assert!(
                !(host == "127.0.0.1" && port == 9443),
                "the authorization server was allowed: {raw:?}"
            );
            assert!(
                ALLOWED
                    .iter()
                    .any(|(h, p, prefix)| *h == host && *p == port && under(url.path(), prefix)),
                "{raw:?} allowed as {url} outside the allow-list"
            );
            let again = policy.check_url(url.as_str());
            assert_eq!(again.as_ref().ok(), Some(&url), "{raw:?}: not stable");
        }
        Err(Denial::Userinfo(shown)) => {
            if let Ok(u) = url::Url::parse(raw)
                && let Some(pw) = u.password()
                && pw.len() >= 6
                && !u.host_str().unwrap_or("").contains(pw)
            {
                assert!(!shown.contains(pw), "{raw:?}: the password was quoted");
            }
        }
        Err(_) => {}
    }
});
