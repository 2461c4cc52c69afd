//! Property tests (proptest) of the rules that can be stated as properties: the egress policy over
//! generated spellings of URLs, the header rules, WWW-Authenticate round trips, and batch input
//! naming. The fuzz targets in `fuzz/` check the same properties on arbitrary bytes.
#![allow(clippy::unwrap_used)]

use fapi_host::batch::{Input, naming};
use fapi_host::www_authenticate;
use fapi_host::{Denial, HeaderCaller, Policy, check_headers, refused_header};
use proptest::prelude::*;

/// The allow-list: (host, port, path prefix) as the policy should understand each entry.
const ENTRIES: &[(&str, &str, u16, &str)] = &[
    ("https://data.example/api/", "data.example", 443, "/api/"),
    ("https://127.0.0.1:8443", "127.0.0.1", 8443, "/"),
    ("https://files.example/v1", "files.example", 443, "/v1"),
];
const AS_HOST: (&str, u16) = ("127.0.0.1", 9443);

fn policy() -> Policy {
    let allow: Vec<String> = ENTRIES.iter().map(|e| e.0.to_owned()).collect();
    Policy::new(
        &allow,
        &[url::Url::parse("https://127.0.0.1:9443/token").unwrap()],
    )
    .unwrap()
}

/// Spellings of a host that a parser may or may not take for it.
fn host_spelling() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("data.example".to_owned()),
        Just("DATA.Example.".to_owned()),
        Just("d%61ta.example".to_owned()),
        Just("data.example.evil.example".to_owned()),
        Just("evil.example".to_owned()),
        Just("files.example".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("2130706433".to_owned()),
        Just("0x7f.0.0.1".to_owned()),
        Just("0177.0.0.1".to_owned()),
        Just("127.1".to_owned()),
        Just("[::ffff:127.0.0.1]".to_owned()),
        Just("[::1]".to_owned()),
        Just("localhost".to_owned()),
        Just("xn--dta-bma.example".to_owned()),
        "[a-z]{1,8}\\.example",
    ]
}

fn url_spelling() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just("https"),
        Just("HTTPS"),
        Just("http"),
        Just("hTtPs"),
        Just("ftp")
    ];
    let userinfo = prop_oneof![
        Just(""),
        Just("user@"),
        Just("user:s3cr3t@"),
        Just("data.example@")
    ];
    let port = prop_oneof![
        Just(String::new()),
        Just(":443".into()),
        Just(":8443".into()),
        Just(":9443".into()),
        (1u16..).prop_map(|p| format!(":{p}"))
    ];
    let segment = prop_oneof![
        Just("api"),
        Just("v1"),
        Just("v10"),
        Just(".."),
        Just("."),
        Just("%2e%2e"),
        Just("token"),
        Just("x"),
        Just("API")
    ];
    let path = prop::collection::vec(segment, 0..4).prop_map(|s| format!("/{}", s.join("/")));
    let trailing = prop_oneof![Just(""), Just("/"), Just("?q=1"), Just("#f")];
    (scheme, userinfo, host_spelling(), port, path, trailing)
        .prop_map(|(s, u, h, p, path, t)| format!("{s}://{u}{h}{p}{path}{t}"))
}

fn under(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix || path.starts_with(&format!("{prefix}/"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// For every URL the policy allows, the normalised origin and path are under an allow-list
    /// entry, never the authorization server's, and the URL carries no user information.
    #[test]
    fn every_allowed_url_is_under_an_entry(raw in url_spelling()) {
        match policy().check_url(&raw) {
            Ok(url) => {
                prop_assert_eq!(url.scheme(), "https");
                prop_assert!(url.username().is_empty() && url.password().is_none());
                let host = url.host_str().unwrap().trim_end_matches('.').to_ascii_lowercase();
                let port = url.port_or_known_default().unwrap();
                prop_assert!((host.as_str(), port) != AS_HOST);
                prop_assert!(
                    ENTRIES.iter().any(|(_, h, p, prefix)| *h == host && *p == port && under(url.path(), prefix)),
                    "{} allowed as {}", raw, url
                );
                // Deciding again on what the policy returned gives the same answer.
                prop_assert_eq!(policy().check_url(url.as_str()).ok(), Some(url));
            }
            Err(Denial::Userinfo(shown)) => prop_assert!(!shown.contains("s3cr3t")),
            Err(_) => {}
        }
    }

    /// Every spelling of an allow-list URL's own origin and path is allowed (no false denials for
    /// the spellings the URL standard says are the same).
    #[test]
    fn spellings_of_an_allowed_url_are_allowed(
        host in prop_oneof![Just("127.0.0.1"), Just("2130706433"), Just("0x7f.0.0.1"), Just("0177.0.0.1"), Just("127.1")],
        scheme in prop_oneof![Just("https"), Just("HTTPS"), Just("Https")],
        path in "[a-z0-9]{0,8}(/[a-z0-9]{1,8}){0,3}",
    ) {
        let raw = format!("{scheme}://{host}:8443/{path}");
        prop_assert!(policy().check_url(&raw).is_ok(), "{}", raw);
    }

    /// Accepted header sets never hold a header the host owns, nor CR, LF or NUL.
    #[test]
    fn accepted_headers_are_clean(headers in prop::collection::vec(("[A-Za-z-]{1,20}|authorization|Cookie|x-fapi-[a-z]{1,5}|Host", prop::collection::vec(any::<u8>(), 0..40)), 0..10)) {
        let pairs = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
        if let Ok(map) = check_headers(pairs) {
            for (name, value) in &map {
                prop_assert!(refused_header(HeaderCaller::Guest, name).is_none());
                prop_assert!(!value.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
            }
        }
    }

    /// A Bearer challenge written by a server is read back with the same error and description.
    #[test]
    fn bearer_challenges_round_trip(
        error in "[a-z_]{1,20}",
        description in "[ !#-\\[\\]-~]{0,40}",
        realm in "[a-zA-Z0-9 .]{0,20}",
    ) {
        let header = format!(r#"Bearer realm="{realm}", error="{error}", error_description="{description}""#);
        let mut map = http::HeaderMap::new();
        map.insert(http::header::WWW_AUTHENTICATE, header.parse().unwrap());
        let challenge = www_authenticate::bearer(&map).unwrap();
        prop_assert_eq!(challenge.error.as_deref(), Some(error.as_str()));
        prop_assert_eq!(challenge.description.as_deref(), Some(description.as_str()));
    }

    /// Every item of a batch input gets a plain file name, unique in the input, whatever its URL.
    #[test]
    fn batch_names_are_plain_and_unique(paths in prop::collection::vec("[a-zA-Z0-9/._%?=&-]{0,30}", 1..30)) {
        let text: String = paths.iter().map(|p| format!("https://data.example/{p}\n")).collect();
        let input = Input::parse(&text);
        let mut seen = std::collections::HashSet::new();
        for item in input.items() {
            prop_assert!(naming::check_name(&item.name).is_ok(), "{:?}", item.name);
            prop_assert!(seen.insert(item.name.clone()), "duplicate {:?}", item.name);
        }
    }
}
