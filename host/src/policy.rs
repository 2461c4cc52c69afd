//! The egress policy for guests: pure functions that fail closed.
//!
//! Both guest paths (`fapi-fetch` and intercepted `wasi:http`) go through [`Policy`]. A URL is
//! parsed once, by the WHATWG parser of the `url` crate, which normalises scheme and host case,
//! IDNA (to punycode), percent-encoded hosts, IPv4 spellings (decimal, octal, hex, short forms),
//! default ports and dot segments; the allow-list is matched on that normalised form, and the
//! normalised URL is what the host sends. Anything the rules do not clearly allow is denied.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderName, HeaderValue, Method};

use crate::error::{Error, Result};

/// Most headers a guest request may carry.
pub const MAX_HEADERS: usize = 64;
/// Largest header value a guest may send, in bytes.
pub const MAX_HEADER_VALUE: usize = 8 << 10;
/// Largest total of a guest request's header names and values, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Longest URL a guest may send.
pub const MAX_URL: usize = 8 << 10;

/// Where a request may go: https, one host, one port, a path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AllowEntry {
    host: String,
    port: u16,
    path_prefix: String,
    source: String,
}

/// The egress policy of a sandbox.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    allow: Vec<AllowEntry>,
    blocked: Vec<(String, u16)>,
}

/// Why a request was refused. Its `Display` is what the guest and the logs see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// Not a URL the parser accepts.
    Invalid(String),
    /// Not https.
    NotHttps(String),
    /// User information in the URL.
    Userinfo(String),
    /// An IPv4-mapped IPv6 address.
    MappedAddress(String),
    /// The authorization server.
    AuthorizationServer(String),
    /// Not under any allow-list entry.
    NotAllowed(String),
    /// Under an entry's path prefix only as spelled: the path holds an encoded `/` or `\`, or a
    /// `..;` segment, which a server may read as a path outside the prefix.
    AmbiguousPath(String),
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Invalid(m) => write!(f, "not a valid URL: {m}"),
            Denial::NotHttps(u) => write!(f, "{u}: only https URLs may be called"),
            Denial::Userinfo(u) => write!(f, "{u}: URLs with user information are refused"),
            Denial::MappedAddress(u) => write!(
                f,
                "{u}: IPv4-mapped IPv6 addresses are refused; write the IPv4 address"
            ),
            Denial::AuthorizationServer(u) => write!(
                f,
                "{u}: the authorization server is never reachable from a guest (the host gets tokens itself)"
            ),
            Denial::AmbiguousPath(u) => write!(
                f,
                "{u}: under an allow-list path prefix, a path may not hold an encoded '/' or '\\' \
                 (%2F, %5C) or a '..;' / '.;' segment, which a server may read as a path outside \
                 the prefix; write the path plainly, or allow the whole origin"
            ),
            Denial::NotAllowed(u) => write!(
                f,
                "{u} is not in the egress allow-list; to allow it add its origin or a path prefix to `[sandbox] allow` in the configuration or pass `--allow {}`",
                suggestion(u)
            ),
        }
    }
}

fn suggestion(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}/", u.origin().ascii_serialization()),
        Err(_) => "URL".into(),
    }
}

/// The normalised host and port of a URL, or the reason it is refused. The host is borrowed from
/// the URL (the parser has already lower-cased domains and written IP literals in their canonical
/// form), so the check of a guest request allocates nothing for it.
fn host_port(url: &url::Url) -> std::result::Result<(Cow<'_, str>, u16), Denial> {
    let shown = || url.as_str().to_owned();
    if url.scheme() != "https" {
        return Err(Denial::NotHttps(shown()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Do not echo the credentials back.
        return Err(Denial::Userinfo(format!(
            "https://{}",
            url.host_str().unwrap_or("?")
        )));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.strip_suffix('.').unwrap_or(d);
            if d.is_empty() || d.ends_with('.') {
                return Err(Denial::Invalid(shown()));
            }
            if d.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(d.to_ascii_lowercase())
            } else {
                Cow::Borrowed(d)
            }
        }
        Some(url::Host::Ipv4(_)) => Cow::Borrowed(url.host_str().unwrap_or_default()),
        Some(url::Host::Ipv6(ip)) => {
            if ip.to_ipv4_mapped().is_some() {
                return Err(Denial::MappedAddress(shown()));
            }
            // "[...]", as the parser serialises it.
            Cow::Borrowed(url.host_str().unwrap_or_default())
        }
        None => return Err(Denial::Invalid(shown())),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Denial::Invalid(shown()))?;
    Ok((host, port))
}

/// Whether a path (as the parser normalised it) may mean another path to a server that decodes or
/// normalises further: an encoded `/` or `\` (`%2F`, `%5C`), or a segment starting `..;` or `.;`
/// (Tomcat-style path parameters on a dot segment, dots percent-encoded or not).
fn ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f")
        || lower.contains("%5c")
        || lower.split('/').any(|segment| {
            let segment = segment.replace("%2e", ".");
            segment.starts_with("..;") || segment.starts_with(".;")
        })
}

fn path_under(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl Policy {
    /// A policy allowing the given URL prefixes and never the given authorization server URLs
    /// (their whole origins are blocked). Entries are checked like guest URLs: an entry that is
    /// not an https URL without user information, query or fragment is a configuration error.
    pub fn new(allow: &[String], authorization_server: &[url::Url]) -> Result<Policy> {
        let mut policy = Policy::default();
        for url in authorization_server {
            if let Ok((host, port)) = host_port(url) {
                policy.blocked.push((host.into_owned(), port));
            }
        }
        for entry in allow {
            let bad = |why: &str| {
                Error::Config(format!(
                    "egress allow entry {entry:?} {why}; entries look like https://data.example:443/path/"
                ))
            };
            let url = url::Url::parse(entry).map_err(|e| bad(&format!("is not a URL ({e})")))?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(bad("must not have a query or fragment"));
            }
            let (host, port) = host_port(&url).map_err(|d| bad(&d.to_string()))?;
            let host = host.into_owned();
            if policy.blocked.iter().any(|(h, p)| *h == host && *p == port) {
                return Err(bad(
                    "is the authorization server's origin, which guests may never reach",
                ));
            }
            policy.allow.push(AllowEntry {
                host,
                port,
                path_prefix: url.path().to_owned(),
                source: entry.clone(),
            });
        }
        Ok(policy)
    }

    /// The allow-list entries as given.
    pub fn allowed(&self) -> Vec<&str> {
        self.allow.iter().map(|e| e.source.as_str()).collect()
    }

    /// Check a guest URL; on success, the normalised URL to send.
    pub fn check_url(&self, raw: &str) -> std::result::Result<url::Url, Denial> {
        if raw.len() > MAX_URL {
            return Err(Denial::Invalid(format!("URL longer than {MAX_URL} bytes")));
        }
        let url = url::Url::parse(raw).map_err(|e| Denial::Invalid(format!("{raw:?}: {e}")))?;
        let (host, port) = host_port(&url)?;
        if self.blocked.iter().any(|(h, p)| *h == host && *p == port) {
            return Err(Denial::AuthorizationServer(url.as_str().to_owned()));
        }
        let path = url.path();
        let mut under = self
            .allow
            .iter()
            .filter(|e| e.host == host && e.port == port && path_under(path, &e.path_prefix));
        match under.next() {
            None => Err(Denial::NotAllowed(url.as_str().to_owned())),
            // A path prefix holds only when the server reads the path as spelled; the whole
            // origin ("/") holds whatever it reads.
            Some(first) => {
                let whole_origin = first.path_prefix == "/" || under.any(|e| e.path_prefix == "/");
                if whole_origin || !ambiguous_path(path) {
                    Ok(url)
                } else {
                    Err(Denial::AmbiguousPath(url.as_str().to_owned()))
                }
            }
        }
    }
}

/// Whether a guest may not set this header: the host owns credentials, routing and framing.
pub fn forbidden_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "authorization"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "proxy-connection"
            | "cookie"
            | "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "http2-settings"
            | "content-length"
            | "dpop"
    ) || n.starts_with("x-fapi-")
}

/// The methods a guest may use (no TRACE or CONNECT, nothing unregistered).
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Check a guest's method, given as text.
pub fn check_method(method: &str) -> std::result::Result<Method, String> {
    let upper = method.to_ascii_uppercase();
    match Method::from_bytes(upper.as_bytes()) {
        Ok(m) if allowed_method(&m) => Ok(m),
        _ => Err(format!("method {method:?} is not allowed ({METHODS})")),
    }
}

/// Check a method that is already parsed (wasi:http guests name any method, TRACE included).
pub fn check_parsed_method(method: &Method) -> std::result::Result<(), String> {
    if allowed_method(method) {
        Ok(())
    } else {
        Err(format!(
            "method {:?} is not allowed ({METHODS})",
            method.as_str()
        ))
    }
}

fn allowed_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

/// Check a guest's headers: names and values valid (no CR, LF, NUL), none the host owns, within
/// the count and size limits.
pub fn check_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> std::result::Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::new();
    let mut total = 0usize;
    for (i, (name, value)) in headers.into_iter().enumerate() {
        if i >= MAX_HEADERS {
            return Err(format!("more than {MAX_HEADERS} headers"));
        }
        total += name.len() + value.len();
        if value.len() > MAX_HEADER_VALUE || total > MAX_HEADER_BYTES {
            return Err(format!(
                "headers too large (at most {MAX_HEADER_VALUE} bytes per value, {MAX_HEADER_BYTES} in all)"
            ));
        }
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{:?} is not a valid header name", printable(name)))?;
        if forbidden_header(&n) {
            return Err(format!("header {n} is set by the host and cannot be given"));
        }
        let v = HeaderValue::from_bytes(value)
            .map_err(|_| format!("the value of header {n} has forbidden bytes (CR, LF or NUL)"))?;
        map.append(n, v);
    }
    Ok(map)
}

fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            &[
                "https://data.example/api/".into(),
                "https://127.0.0.1:8443".into(),
                "https://files.example/v1".into(),
            ],
            &[url::Url::parse("https://127.0.0.1:9443/token").expect("valid")],
        )
        .expect("valid")
    }

    #[test]
    fn allowed_spellings() {
        let p = policy();
        for ok in [
            "https://data.example/api/x",
            "HTTPS://DATA.EXAMPLE/api/x",
            "https://data.example./api/x",
            "https://data.example:443/api/x",
            "https://d%61ta.example/api/x",
            "https://data.example/api/../api/x",
            "https://127.0.0.1:8443/anything",
            "https://2130706433:8443/",
            "https://0x7f.0.0.1:8443/",
            "https://0177.0.0.1:8443/",
            "https://127.1:8443/",
            "https://files.example/v1",
            "https://files.example/v1/a",
        ] {
            assert!(p.check_url(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn denied_spellings() {
        let p = policy();
        for bad in [
            "http://data.example/api/x",
            "https://user:pw@data.example/api/x",
            "https://data.example/other",
            "https://data.example/api",
            "https://data.example/api/../secret",
            "https://data.example/api/%2e%2e/secret",
            "https://data.example:8443/api/x",
            "https://evil.example/api/x",
            "https://data.example.evil.example/api/x",
            "https://files.example/v10",
            "https://[::ffff:127.0.0.1]:8443/",
            "https://[::1]:8443/",
            "https://127.0.0.1:9443/token",
            "https://2130706433:9443/token",
            "ftp://data.example/api/",
            "https://xn--dta-bma.example/api/x",
            "not a url",
        ] {
            assert!(p.check_url(bad).is_err(), "{bad}");
        }
        let d = p
            .check_url("https://user:secret@data.example/api/")
            .expect_err("denied");
        assert!(!d.to_string().contains("secret"));
        let d = p.check_url("https://evil.example/x").expect_err("denied");
        assert!(
            d.to_string().contains("--allow https://evil.example/"),
            "{d}"
        );
        let d = p
            .check_url("https://127.0.0.1:9443/introspect")
            .expect_err("denied");
        assert!(matches!(d, Denial::AuthorizationServer(_)));
    }

    #[test]
    fn paths_a_server_may_read_otherwise_are_refused_under_a_path_prefix() {
        let p = policy();
        for ambiguous in [
            "https://data.example/api/..%2Fsecret",
            "https://data.example/api/..%2fsecret",
            "https://data.example/api/a%2F..%2F..%2Fsecret",
            "https://data.example/api/..%5Csecret",
            "https://data.example/api/..;/secret",
            "https://data.example/api/.;/x",
            "https://data.example/api/%2e%2e;/secret",
            "https://files.example/v1/%2E%2E%3B/x"
                .replace("%3B", ";")
                .as_str(),
        ] {
            let d = p.check_url(ambiguous).expect_err(ambiguous);
            assert!(matches!(d, Denial::AmbiguousPath(_)), "{ambiguous}: {d}");
            assert!(d.to_string().contains("%2F"), "{d}");
        }
        // Under the whole origin there is no prefix to leave; plain paths stay allowed.
        for fine in [
            "https://127.0.0.1:8443/a%2Fb",
            "https://127.0.0.1:8443/..;/x",
            "https://data.example/api/a;b=c/x",
            "https://data.example/api/report%20q1.csv",
            "https://data.example/api/x?q=a%2Fb",
        ] {
            assert!(p.check_url(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn idna_is_normalised() {
        let p = Policy::new(&["https://bücher.example/".into()], &[]).expect("valid");
        assert!(p.check_url("https://xn--bcher-kva.example/x").is_ok());
        assert!(p.check_url("https://BÜCHER.example/x").is_ok());
    }

    #[test]
    fn bad_entries_are_config_errors() {
        for e in ["http://a/", "https://u:p@a/", "nope", "https://a/?q=1"] {
            assert!(Policy::new(&[e.into()], &[]).is_err(), "{e}");
        }
        let auth = url::Url::parse("https://as.example/token").expect("valid");
        assert!(Policy::new(&["https://as.example/".into()], &[auth]).is_err());
    }

    #[test]
    fn headers() {
        assert!(check_headers([("accept", &b"text/csv"[..])]).is_ok());
        for (n, v) in [
            ("Authorization", &b"Bearer x"[..]),
            ("cookie", b"a=b"),
            ("Host", b"evil"),
            ("X-FAPI-Interaction-Id", b"x"),
            ("x-a", b"a\r\nb: c"),
            ("x-a", b"a\0"),
            ("x a", b"v"),
            ("x-a\r\n", b"v"),
        ] {
            assert!(check_headers([(n, v)]).is_err(), "{n}");
        }
        let many: Vec<(String, Vec<u8>)> =
            (0..65).map(|i| (format!("x-{i}"), b"v".to_vec())).collect();
        assert!(check_headers(many.iter().map(|(n, v)| (n.as_str(), v.as_slice()))).is_err());
        let big = vec![b'a'; MAX_HEADER_VALUE + 1];
        assert!(check_headers([("x-big", big.as_slice())]).is_err());
    }

    #[test]
    fn methods() {
        assert_eq!(check_method("get"), Ok(Method::GET));
        assert!(check_method("CONNECT").is_err());
        assert!(check_method("TRACE").is_err());
    }
}
