//! The egress policy for guests: pure functions that fail closed.
//!
//! Both guest paths (`fapi-fetch` and intercepted `wasi:http`) go through [`Policy`]. A URL is
//! parsed once, by the WHATWG parser of the `url` crate, which normalises scheme and host case,
//! IDNA (to punycode), percent-encoded hosts, IPv4 spellings (decimal, octal, hex, short forms),
//! default ports and dot segments; the allow-list is matched on that normalised form, and the
//! normalised URL is what the host sends. Anything the rules do not clearly allow is denied.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

use crate::error::{Error, Result};
use crate::net::AuthorizationServerAddresses;

/// Most headers a guest request may carry.
pub const MAX_HEADERS: usize = 64;
/// Largest header value a guest may send, in bytes.
pub const MAX_HEADER_VALUE: usize = 8 << 10;
/// Largest total of a guest request's header names and values, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Longest URL a guest may send.
pub const MAX_URL: usize = 8 << 10;
/// The most of a guest-controlled string (URL, method, header name) that any message, log line
/// or audit record quotes: the rest is cut and its length given instead (see [`bounded`]).
pub const MAX_QUOTED: usize = 128;
/// The same for short tokens, methods and header names, which are never longer when legitimate.
pub const MAX_QUOTED_NAME: usize = 64;

/// `text` as any message, log line or audit record may quote it: whole when it is at most `max`
/// bytes, else its first `max` bytes (cut at a character boundary) followed by `... (N bytes)`.
/// Every guest-controlled string reaching a message goes through here, so that a guest sending
/// a 1 MiB method or a 60 KB header name cannot make the host write a megabyte per refusal.
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len()).into()
}

/// A URL as messages show it: at most [`MAX_QUOTED`] bytes of it.
pub fn shown_url(url: &str) -> Cow<'_, str> {
    bounded(url, MAX_QUOTED)
}

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
    /// The authorization server's (host, port) pairs, as its URLs name them, with the origin.
    blocked: Vec<(String, u16, String)>,
    /// The authorization server's addresses, resolved at start: an IP address in a guest's URL
    /// is compared with them here, a name when the host connects (see [`crate::net`]).
    addresses: Arc<AuthorizationServerAddresses>,
    /// Origins (host, port) the operator declared as sharing an address with the authorization
    /// server (`[sandbox] allow_authorization_server_address`).
    shared: Vec<(String, u16)>,
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
    /// Not under any allow-list entry; with the entry to suggest, unless it could reach the
    /// authorization server.
    NotAllowed {
        /// The URL.
        url: String,
        /// The origin to suggest (`https://host:port/`), when it cannot be the authorization
        /// server's address.
        suggestion: Option<String>,
    },
    /// Under an entry's path prefix only as spelled: the path holds an encoded `/` or `\`, or a
    /// `..;` segment, which a server may read as a path outside the prefix.
    AmbiguousPath(String),
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Invalid(m) => write!(f, "not a valid URL: {m}"),
            Denial::NotHttps(u) => write!(
                f,
                "{}: only https URLs may be called (FAPI requires TLS)",
                shown_url(u)
            ),
            Denial::Userinfo(u) => write!(
                f,
                "{}: URLs with user information are refused",
                shown_url(u)
            ),
            Denial::MappedAddress(u) => write!(
                f,
                "{}: IPv4-mapped IPv6 addresses are refused; write the IPv4 address",
                shown_url(u)
            ),
            Denial::AuthorizationServer(u) => write!(
                f,
                "{}: the authorization server is never reachable from a guest, under any name or \
                 address (the host gets tokens itself)",
                shown_url(u)
            ),
            Denial::AmbiguousPath(u) => write!(
                f,
                "{}: under an allow-list path prefix, a path may not hold an encoded '/' or '\\' \
                 (%2F, %5C) or a '..;' / '.;' segment, which a server may read as a path outside \
                 the prefix; write the path plainly, or allow the whole origin",
                shown_url(u)
            ),
            Denial::NotAllowed { url, suggestion } => match suggestion {
                Some(origin) => write!(
                    f,
                    "{} is not in the egress allow-list; to allow it, add its origin or a path \
                     under it to `[sandbox] allow` or pass `--allow {}`",
                    shown_url(url),
                    shown_url(origin)
                ),
                None => write!(
                    f,
                    "{} is not in the egress allow-list; no entry is suggested, as its host and \
                     port may be the authorization server's, which guests may never reach (an \
                     allow entry that resolves to it is refused at start)",
                    shown_url(url)
                ),
            },
        }
    }
}

/// The normalised host and port of a URL, or the reason it is refused. The host is borrowed from
/// the URL (the parser has already lower-cased domains and written IP literals in their canonical
/// form), so the check of a guest request allocates nothing for it.
fn host_port(url: &url::Url) -> std::result::Result<(Cow<'_, str>, u16), Denial> {
    let shown = || url.as_str().to_owned();
    check_scheme_and_userinfo(url)?;
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

/// The rules every URL the host sends to follows, from a guest or a library caller alike: https
/// (FAPI requires TLS), no user information (its credentials are not echoed back), a host.
pub fn check_scheme_and_userinfo(url: &url::Url) -> std::result::Result<(), Denial> {
    if url.scheme() != "https" {
        return Err(Denial::NotHttps(url.as_str().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Do not echo the credentials back.
        return Err(Denial::Userinfo(format!(
            "https://{}",
            url.host_str().unwrap_or("?")
        )));
    }
    if url.host_str().is_none() {
        return Err(Denial::Invalid(format!(
            "{}: no host",
            shown_url(url.as_str())
        )));
    }
    Ok(())
}

/// Whether a path (as the parser normalised it) may mean another path to a server that decodes or
/// normalises further: a segment that, percent-decoded once or twice, holds a `/` or `\` (`%2F`,
/// `%5C`, `%252F`), or starts `..;` or `.;` (Tomcat-style path parameters on a dot segment, with
/// the dots and the `;` encoded or not: `..;`, `%2e%2e;`, `..%3b`).
fn ambiguous_path(path: &str) -> bool {
    fn ambiguous(segment: &[u8]) -> bool {
        segment.contains(&b'/')
            || segment.contains(&b'\\')
            || segment.starts_with(b"..;")
            || segment.starts_with(b".;")
    }
    path.split('/').any(|segment| {
        if !segment.contains('%') {
            return ambiguous(segment.as_bytes());
        }
        let once: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
        let twice: Vec<u8> = percent_encoding::percent_decode(&once).collect();
        ambiguous(&once) || ambiguous(&twice)
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
                let origin = url.origin().ascii_serialization();
                policy.blocked.push((host.into_owned(), port, origin));
            }
        }
        for entry in allow {
            let bad = |why: &str| {
                Error::Config(format!(
                    "egress allow entry {:?} {why}; entries look like https://data.example:443/path/",
                    bounded(entry, MAX_QUOTED)
                ))
            };
            let url = url::Url::parse(entry).map_err(|e| bad(&format!("is not a URL ({e})")))?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(bad("must not have a query or fragment"));
            }
            let (host, port) = host_port(&url).map_err(|d| bad(&d.to_string()))?;
            let host = host.into_owned();
            if let Some((.., origin)) = policy
                .blocked
                .iter()
                .find(|(h, p, _)| *h == host && *p == port)
            {
                return Err(bad(&format!(
                    "is the authorization server's origin ({origin}), which guests may never reach"
                )));
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

    /// This policy, also refusing the authorization server's addresses (resolved at start) when
    /// a guest's URL names an IP address, and never suggesting an entry that would reach them.
    /// `shared` are the origins the operator declared as sharing an address and port with the
    /// authorization server (virtual hosts): each must be an allowed origin that is not one of
    /// the authorization server's names.
    pub fn with_addresses(
        mut self,
        addresses: Arc<AuthorizationServerAddresses>,
        shared: &[String],
    ) -> Result<Policy> {
        for origin in shared {
            let bad = |why: &str| {
                Error::Config(format!(
                    "[sandbox] allow_authorization_server_address entry {:?} {why}",
                    bounded(origin, MAX_QUOTED)
                ))
            };
            let url = url::Url::parse(origin).map_err(|e| bad(&format!("is not a URL ({e})")))?;
            if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                return Err(bad(
                    "must be an origin (https://host:port/), without a path, query or fragment",
                ));
            }
            let (host, port) = host_port(&url).map_err(|d| bad(&d.to_string()))?;
            let host = host.into_owned();
            if self
                .blocked
                .iter()
                .any(|(h, p, _)| *h == host && *p == port)
            {
                return Err(bad(
                    "is the authorization server's own origin, which guests may never reach",
                ));
            }
            if !self.allow.iter().any(|e| e.host == host && e.port == port) {
                return Err(bad(
                    "is not in the allow-list: list the origin (or a path under it) in `[sandbox] allow` too",
                ));
            }
            self.shared.push((host, port));
        }
        self.addresses = addresses;
        Ok(self)
    }

    /// The allow-list entries as given.
    pub fn allowed(&self) -> Vec<&str> {
        self.allow.iter().map(|e| e.source.as_str()).collect()
    }

    /// The ports of the allow-list entries (each guest connection goes to one of them).
    pub fn allowed_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.allow.iter().map(|e| e.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The allow-list entries' hosts that are names (not IP addresses), with their ports: what
    /// the host resolves at start to check that none reaches the authorization server.
    pub fn allowed_names(&self) -> Vec<(&str, u16, &str)> {
        self.allow
            .iter()
            .filter(|e| !e.host.starts_with('[') && e.host.parse::<IpAddr>().is_err())
            .map(|e| (e.host.as_str(), e.port, e.source.as_str()))
            .collect()
    }

    /// The allow-list entries whose hosts are IP addresses, with their ports.
    pub fn allowed_addresses(&self) -> Vec<(IpAddr, u16, &str)> {
        self.allow
            .iter()
            .filter_map(|e| Some((literal_ip(&e.host)?, e.port, e.source.as_str())))
            .collect()
    }

    /// Whether the operator declared `host:port` as sharing an address with the authorization
    /// server.
    pub fn is_shared(&self, host: &str, port: u16) -> bool {
        self.shared.iter().any(|(h, p)| h == host && *p == port)
    }

    /// Check a guest URL; on success, the normalised URL to send.
    pub fn check_url(&self, raw: &str) -> std::result::Result<url::Url, Denial> {
        if raw.len() > MAX_URL {
            return Err(Denial::Invalid(format!(
                "URL of {} bytes, longer than {MAX_URL}",
                raw.len()
            )));
        }
        let url = url::Url::parse(raw)
            .map_err(|e| Denial::Invalid(format!("{:?}: {e}", bounded(raw, MAX_QUOTED))))?;
        self.check_parsed(url)
    }

    /// [`Policy::check_url`] for a URL already parsed (the proxy's: a route's upstream with the
    /// caller's path set on it), within the same length limit (8 KiB).
    pub fn check_parsed(&self, url: url::Url) -> std::result::Result<url::Url, Denial> {
        let len = url.as_str().len();
        if len > MAX_URL {
            return Err(Denial::Invalid(format!(
                "URL of {len} bytes, longer than {MAX_URL}"
            )));
        }
        let (host, port) = host_port(&url)?;
        if self
            .blocked
            .iter()
            .any(|(h, p, _)| *h == host && *p == port)
        {
            return Err(Denial::AuthorizationServer(url.as_str().to_owned()));
        }
        // An IP address is where the connection goes: compare it with the authorization
        // server's (names are compared when the host resolves them, as it connects).
        if let Some(ip) = literal_ip(&host)
            && self.addresses.blocks(ip, port).is_some()
            && !self.is_shared(&host, port)
        {
            return Err(Denial::AuthorizationServer(url.as_str().to_owned()));
        }
        let path = url.path();
        let mut under = self
            .allow
            .iter()
            .filter(|e| e.host == host && e.port == port && path_under(path, &e.path_prefix));
        match under.next() {
            None => {
                let suggestion = self
                    .may_suggest(&host, port)
                    .then(|| format!("{}/", url.origin().ascii_serialization()));
                Err(Denial::NotAllowed {
                    url: url.as_str().to_owned(),
                    suggestion,
                })
            }
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

    /// Whether a denial may suggest allowing `host:port`: only when that cannot reach the
    /// authorization server. An IP address is compared with its addresses; a name is not looked
    /// up (a guest choosing names to resolve would be a channel out of the sandbox), so a name
    /// on one of the authorization server's ports gets no suggestion, unless the client's
    /// `[client.resolve]` table says where it goes.
    fn may_suggest(&self, host: &str, port: u16) -> bool {
        if let Some(ip) = literal_ip(host) {
            return self.addresses.blocks(ip, port).is_none();
        }
        if let Some(ips) = self.addresses.known_without_lookup(host) {
            return ips
                .iter()
                .all(|ip| self.addresses.blocks(*ip, port).is_none());
        }
        !self.blocked.iter().any(|(_, p, _)| *p == port) && !self.addresses.has_port(port)
    }
}

/// The IP address a normalised host names (`127.0.0.1`, `[::1]`), or None for a domain.
fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Who sets a header that a caller may not: what the host owns it for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderOwner {
    /// Credentials and the FAPI headers: the token, the interaction id, DPoP proofs.
    Credentials,
    /// Where the request goes: `Host` comes from the URL (another one would not match the TLS
    /// server name).
    Routing,
    /// How the body is framed: it comes from the body.
    Framing,
    /// The connection's own headers, hop-by-hop, which the host manages.
    HopByHop,
}

impl HeaderOwner {
    /// Why a caller may not give such a header, for messages.
    pub fn reason(self) -> &'static str {
        match self {
            HeaderOwner::Credentials => "the host sets credentials and the FAPI headers itself",
            HeaderOwner::Routing => "it comes from the URL",
            HeaderOwner::Framing => "it comes from the body",
            HeaderOwner::HopByHop => "it belongs to the connection, which the host manages",
        }
    }
}

/// Who gives headers to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCaller {
    /// An untrusted guest, through `fapi-fetch` or `wasi:http`.
    Guest,
    /// The operator on the command line: `fetch -H` and the headers of batch input lines.
    Command,
    /// A Rust program calling [`crate::FapiClient`]: everything it may send is its own, but the
    /// credentials.
    Library,
}

/// One header the host owns: its name (or a prefix of names), its owner, and who may not give it.
#[derive(Clone, Copy, Debug)]
pub struct HeaderRule {
    /// The lower-case name, or the prefix when `prefix` is true.
    pub name: &'static str,
    /// Whether `name` is a prefix (`x-fapi-`).
    pub prefix: bool,
    /// What the host owns it for.
    pub owner: HeaderOwner,
    /// The callers that may not give it.
    pub refused_for: &'static [HeaderCaller],
}

const ALL: &[HeaderCaller] = &[
    HeaderCaller::Guest,
    HeaderCaller::Command,
    HeaderCaller::Library,
];
const GUEST_AND_COMMAND: &[HeaderCaller] = &[HeaderCaller::Guest, HeaderCaller::Command];
const GUEST: &[HeaderCaller] = &[HeaderCaller::Guest];

const fn rule(
    name: &'static str,
    owner: HeaderOwner,
    refused_for: &'static [HeaderCaller],
) -> HeaderRule {
    HeaderRule {
        name,
        prefix: false,
        owner,
        refused_for,
    }
}

/// The one table of headers the host owns. Every check of a caller's headers reads it:
/// [`refused_header`] (guests' `fapi-fetch` and `wasi:http` requests, `fetch -H`, batch input, the
/// library's requests).
pub const HEADER_RULES: &[HeaderRule] = &[
    rule("authorization", HeaderOwner::Credentials, ALL),
    rule("proxy-authorization", HeaderOwner::Credentials, ALL),
    rule("dpop", HeaderOwner::Credentials, ALL),
    HeaderRule {
        name: "x-fapi-",
        prefix: true,
        owner: HeaderOwner::Credentials,
        refused_for: ALL,
    },
    // A guest has no cookies of its own to send, and one the host had would be a credential.
    rule("cookie", HeaderOwner::Credentials, GUEST),
    rule("proxy-authenticate", HeaderOwner::Credentials, GUEST),
    rule("host", HeaderOwner::Routing, GUEST_AND_COMMAND),
    rule("content-length", HeaderOwner::Framing, GUEST_AND_COMMAND),
    rule("transfer-encoding", HeaderOwner::Framing, GUEST_AND_COMMAND),
    rule("trailer", HeaderOwner::Framing, GUEST_AND_COMMAND),
    rule("te", HeaderOwner::HopByHop, GUEST_AND_COMMAND),
    rule("connection", HeaderOwner::HopByHop, GUEST_AND_COMMAND),
    rule("keep-alive", HeaderOwner::HopByHop, GUEST_AND_COMMAND),
    rule("proxy-connection", HeaderOwner::HopByHop, GUEST_AND_COMMAND),
    rule("upgrade", HeaderOwner::HopByHop, GUEST_AND_COMMAND),
    rule("http2-settings", HeaderOwner::HopByHop, GUEST_AND_COMMAND),
];

/// The rule that refuses header `name` to `caller`, if one does.
pub fn refused_header(caller: HeaderCaller, name: &HeaderName) -> Option<&'static HeaderRule> {
    let n = name.as_str();
    HEADER_RULES.iter().find(|r| {
        r.refused_for.contains(&caller)
            && if r.prefix {
                n.starts_with(r.name)
            } else {
                n == r.name
            }
    })
}

/// Whether a guest may not set this header (the filter of both guest interfaces).
#[cfg(feature = "sandbox")]
pub(crate) fn forbidden_header(name: &HeaderName) -> bool {
    refused_header(HeaderCaller::Guest, name).is_some()
}

/// Why `caller` may not give header `name`, if it may not: the message names the header (bounded
/// like every caller's string) and the reason.
pub fn header_refusal(caller: HeaderCaller, name: &HeaderName) -> Option<String> {
    refused_header(caller, name).map(|r| {
        format!(
            "header {} is set by the host and cannot be given ({})",
            bounded(name.as_str(), MAX_QUOTED_NAME),
            r.owner.reason()
        )
    })
}

/// The methods a guest may use (no TRACE or CONNECT, nothing unregistered).
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Check a guest's method, given as text.
pub fn check_method(method: &str) -> std::result::Result<Method, String> {
    let upper = method.to_ascii_uppercase();
    match Method::from_bytes(upper.as_bytes()) {
        Ok(m) if allowed_method(&m) => Ok(m),
        _ => Err(method_refused(method)),
    }
}

/// Check a method that is already parsed (wasi:http guests name any method, TRACE included).
pub fn check_parsed_method(method: &Method) -> std::result::Result<(), String> {
    if allowed_method(method) {
        Ok(())
    } else {
        Err(method_refused(method.as_str()))
    }
}

fn method_refused(method: &str) -> String {
    format!(
        "method {:?} is not allowed ({METHODS})",
        bounded(method, MAX_QUOTED_NAME)
    )
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

/// The count and size limits on the headers a guest (or a caller of `fapi-host proxy`) may have
/// sent on: [`MAX_HEADERS`], [`MAX_HEADER_VALUE`] a value, [`MAX_HEADER_BYTES`] in all.
#[derive(Debug, Default)]
pub struct HeaderBudget {
    count: usize,
    total: usize,
}

impl HeaderBudget {
    /// Take one more header of `name_len` and `value_len` bytes, or say which limit it passes.
    pub fn take(&mut self, name_len: usize, value_len: usize) -> std::result::Result<(), String> {
        if self.count >= MAX_HEADERS {
            return Err(format!("more than {MAX_HEADERS} headers"));
        }
        self.count += 1;
        self.total += name_len + value_len;
        if value_len > MAX_HEADER_VALUE || self.total > MAX_HEADER_BYTES {
            return Err(format!(
                "headers too large (at most {MAX_HEADER_VALUE} bytes per value, {MAX_HEADER_BYTES} in all)"
            ));
        }
        Ok(())
    }
}

/// Check a guest's headers: names and values valid (no CR, LF, NUL), none the host owns, within
/// the count and size limits.
pub fn check_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> std::result::Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::new();
    let mut budget = HeaderBudget::default();
    for (name, value) in headers {
        budget.take(name.len(), value.len())?;
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{:?} is not a valid header name", printable(name)))?;
        if let Some(refusal) = header_refusal(HeaderCaller::Guest, &n) {
            return Err(refusal);
        }
        let v = HeaderValue::from_bytes(value).map_err(|_| {
            format!(
                "the value of header {} has forbidden bytes (CR, LF or NUL)",
                bounded(n.as_str(), MAX_QUOTED_NAME)
            )
        })?;
        map.append(n, v);
    }
    Ok(map)
}

/// A header name that is not one, as a message may quote it: control characters shown as `?`,
/// bounded like every guest string.
fn printable(s: &str) -> String {
    let shown: String = bounded(s, MAX_QUOTED_NAME)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    shown
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
            // The `;` encoded too, and a slash encoded twice (a server that decodes twice).
            "https://data.example/api/..%3b/secret",
            "https://data.example/api/..%3B/secret",
            "https://data.example/api/%2e%2e%3b/secret",
            "https://data.example/api/.%3b/x",
            "https://data.example/api/a%252F..%252Fsecret",
            "https://data.example/api/..%255Csecret",
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

    /// The policy of `policy()` that also knows the authorization server's addresses: 127.0.0.1
    /// on port 9443 (so every local address on that port) and 203.0.113.7 on 443.
    fn policy_with_addresses(allow: &[&str]) -> Policy {
        let mut a = AuthorizationServerAddresses::default();
        a.add(
            "127.0.0.1".parse().expect("ip"),
            9443,
            "https://127.0.0.1:9443/",
        );
        a.add(
            "203.0.113.7".parse().expect("ip"),
            443,
            "https://as.example/",
        );
        let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        Policy::new(
            &allow,
            &[
                url::Url::parse("https://127.0.0.1:9443/token").expect("valid"),
                url::Url::parse("https://as.example/").expect("valid"),
            ],
        )
        .expect("valid")
        .with_addresses(Arc::new(a), &[])
        .expect("valid")
    }

    #[test]
    fn addresses_of_the_authorization_server_are_refused_in_urls() {
        // Allow-listed by mistake under other spellings of the same address and port.
        let p = policy_with_addresses(&[
            "https://0.0.0.0:9443/",
            "https://[::1]:9443/",
            "https://127.0.0.2:9443/",
            "https://203.0.113.7/",
            "https://127.0.0.1:8443/",
        ]);
        for url in [
            "https://0.0.0.0:9443/token",
            "https://[::1]:9443/.well-known/openid-configuration",
            "https://127.0.0.2:9443/token",
            "https://203.0.113.7/token",
        ] {
            let d = p.check_url(url).expect_err(url);
            assert!(matches!(d, Denial::AuthorizationServer(_)), "{url}: {d}");
        }
        assert!(p.check_url("https://127.0.0.1:8443/data").is_ok());
    }

    #[test]
    fn a_denial_never_suggests_an_entry_that_reaches_the_authorization_server() {
        let p = policy_with_addresses(&["https://127.0.0.1:8443/"]);
        for (url, suggested) in [
            // Another port than the authorization server's: safe to suggest.
            ("https://127.0.0.1:7443/x", true),
            ("https://other.example:8443/x", true),
            // Its address and port under other names: never suggested.
            ("https://localhost:9443/token", false),
            ("https://sub.localhost:9443/token", false),
            // A name on its port, which only a lookup could place: not suggested.
            ("https://data.example/x", false),
            ("https://203.0.113.8/x", true),
        ] {
            let d = p.check_url(url).expect_err(url);
            let text = d.to_string();
            assert_eq!(text.contains("--allow"), suggested, "{url}: {text}");
            if !suggested {
                assert!(text.contains("no entry is suggested"), "{url}: {text}");
            }
        }
    }

    #[test]
    fn guest_strings_in_messages_are_bounded() {
        let p = policy();
        let long_path = "a".repeat(MAX_URL - 40);
        let url = format!("https://evil.example/{long_path}");
        let text = p.check_url(&url).expect_err("denied").to_string();
        assert!(text.len() < 3 * MAX_QUOTED, "{} bytes", text.len());
        assert!(text.contains(&format!("({} bytes)", url.len())), "{text}");
        let too_long = format!("https://evil.example/{}", "a".repeat(MAX_URL));
        let text = p.check_url(&too_long).expect_err("denied").to_string();
        assert!(text.len() < 200, "{text}");
        let method = "M".repeat(1 << 20);
        let text = check_method(&method).expect_err("refused");
        assert!(
            text.len() < 200 && text.contains("(1048576 bytes)"),
            "{text}"
        );
        let name = format!("x-fapi-{}", "n".repeat(60_000));
        let text = check_headers([(name.as_str(), &b"v"[..])]).expect_err("refused");
        assert!(text.len() < 200 && text.contains("(60007 bytes)"), "{text}");
        assert_eq!(bounded("short", 64), "short");
        // Cut at a character boundary.
        assert_eq!(bounded("ééé", 3), "é... (6 bytes)");
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

    /// The set each caller may not give, pinned.
    #[test]
    fn each_caller_is_refused_its_set_of_headers() {
        let refused = |caller: HeaderCaller| -> Vec<&str> {
            [
                "authorization",
                "proxy-authorization",
                "dpop",
                "x-fapi-interaction-id",
                "x-fapi-auth-date",
                "cookie",
                "proxy-authenticate",
                "host",
                "content-length",
                "transfer-encoding",
                "trailer",
                "te",
                "connection",
                "keep-alive",
                "proxy-connection",
                "upgrade",
                "http2-settings",
                "accept",
                "content-type",
                "x-request-id",
                "x-fap",
            ]
            .into_iter()
            .filter(|n| refused_header(caller, &HeaderName::from_static(n)).is_some())
            .collect()
        };
        let credentials = [
            "authorization",
            "proxy-authorization",
            "dpop",
            "x-fapi-interaction-id",
            "x-fapi-auth-date",
        ];
        let routing_framing_connection = [
            "host",
            "content-length",
            "transfer-encoding",
            "trailer",
            "te",
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "http2-settings",
        ];
        assert_eq!(refused(HeaderCaller::Library), credentials);
        let mut command = credentials.to_vec();
        command.extend(routing_framing_connection);
        assert_eq!(refused(HeaderCaller::Command), command);
        let mut guest = credentials.to_vec();
        guest.extend(["cookie", "proxy-authenticate"]);
        guest.extend(routing_framing_connection);
        assert_eq!(refused(HeaderCaller::Guest), guest);
        let why = header_refusal(HeaderCaller::Command, &HeaderName::from_static("host"))
            .expect("refused");
        assert!(why.contains("it comes from the URL"), "{why}");
    }

    #[test]
    fn methods() {
        assert_eq!(check_method("get"), Ok(Method::GET));
        assert!(check_method("CONNECT").is_err());
        assert!(check_method("TRACE").is_err());
    }
}
