//! A hostile plugin that tries to send requests where the policy forbids: the authorization server's
//! endpoints and origins or paths outside the allow-list, by every spelling of the URL it knows, through
//! both `fapi-fetch` and `wasi:http`, and through redirects of an allowed endpoint.
//!
//! Usage: `hostile-egress [deny:URL]... [redirect:ALLOWED_URL=TARGET]...`
//! - `deny:URL`: a URL that must never be reached; every spelling of it is tried through both
//!   interfaces;
//! - `redirect:ALLOWED=TARGET`: fetch `ALLOWED?fault=redirect&location=TARGET` (an allowed endpoint
//!   that answers 307 to TARGET) through both interfaces, to see whether the host follows it.
//!
//! Prints a [`Report`] whose attempts are named `spelling:<how>` and `redirect`.

use test_plugins::{Failure, Report, fapi, http};

fn main() {
    let mut report = Report::default();
    for arg in std::env::args().skip(1) {
        if let Some(url) = arg.strip_prefix("deny:") {
            for (how, spelled) in spellings(url) {
                let attack = format!("spelling:{how}");
                report.record(&attack, "fapi-fetch", &spelled, fapi::fetch(&spelled));
                report.record(&attack, "wasi:http", &spelled, http::get(&spelled));
            }
        } else if let Some(pair) = arg.strip_prefix("redirect:") {
            let Some((allowed, target)) = pair.split_once('=') else {
                report.record(
                    "usage",
                    "args",
                    &arg,
                    Err(Failure::new("Usage", "args", "A=B")),
                );
                continue;
            };
            let url = format!("{allowed}?fault=redirect&location={target}");
            report.record("redirect", "fapi-fetch", &url, fapi::fetch(&url));
            report.record("redirect", "wasi:http", &url, http::get(&url));
        } else {
            report.record(
                "usage",
                "args",
                &arg,
                Err(Failure::new("Usage", "args", "deny: or redirect:")),
            );
        }
    }
    report.print();
}

/// Every spelling of `url` this plugin knows that a careless parser or allow-list could take for
/// another origin or path: (name of the trick, URL).
fn spellings(url: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![("as-given", url.to_string())];
    let Some(rest) = url.strip_prefix("https://") else {
        return out;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
    let with_host = |h: &str| format!("https://{h}{port_part}{path}");
    out.push(("uppercase-scheme", format!("HTTPS://{authority}{path}")));
    out.push(("mixed-case-scheme", format!("hTtPs://{authority}{path}")));
    out.push(("http-scheme", format!("http://{authority}{path}")));
    out.push(("userinfo", format!("https://user:pass@{authority}{path}")));
    out.push((
        "userinfo-decoy",
        format!("https://allowed.example@{authority}{path}"),
    ));
    out.push(("trailing-dot", with_host(&format!("{host}."))));
    out.push(("uppercase-host", with_host(&host.to_ascii_uppercase())));
    out.push(("percent-encoded-host", with_host(&percent_encode_all(host))));
    out.push((
        "tab-in-url",
        format!("https://{authority}{}", insert_tab(path)),
    ));
    out.push((
        "backslash-path",
        format!("https://{authority}{}", path.replace('/', "\\")),
    ));
    out.push(("double-slash-path", format!("https://{authority}/{path}")));
    out.push(("dot-segments", format!("https://{authority}/x/..{path}")));
    out.push((
        "encoded-dot-segments",
        format!("https://{authority}/x/%2e%2e{path}"),
    ));
    out.push(("fragment", format!("{url}#frag")));
    out.push(("query", format!("{url}?q=1")));
    if let Some(p) = port {
        out.push(("port-leading-zeros", format!("https://{host}:000{p}{path}")));
    } else {
        out.push(("default-port", format!("https://{host}:443{path}")));
    }
    if host == "127.0.0.1" {
        for (how, h) in [
            ("ipv4-decimal", "2130706433"),
            ("ipv4-hex", "0x7f000001"),
            ("ipv4-dotted-hex", "0x7f.0x0.0x0.0x1"),
            ("ipv4-octal", "0177.0.0.1"),
            ("ipv4-dotted-octal", "0177.00.00.01"),
            ("ipv4-short", "127.1"),
            ("ipv4-short-3", "127.0.1"),
            ("ipv4-mapped-ipv6", "[::ffff:127.0.0.1]"),
            ("ipv4-mapped-ipv6-hex", "[::ffff:7f00:1]"),
            ("ipv4-compatible-ipv6", "[::127.0.0.1]"),
            ("ipv6-loopback", "[::1]"),
            ("localhost", "localhost"),
            ("localhost-trailing-dot", "LocalHost."),
            ("fullwidth-digits", "１２７.０.０.１"),
            ("ideographic-dots", "127。0。0。1"),
            ("percent-encoded-dots", "127%2E0%2E0%2E1"),
            ("unspecified", "0.0.0.0"),
        ] {
            out.push((how, with_host(h)));
        }
    } else {
        out.push(("punycode", with_host(&format!("xn--{host}-"))));
        out.push(("unicode-lookalike", with_host(&host.replace('a', "а"))));
    }
    out
}

fn percent_encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn insert_tab(path: &str) -> String {
    let mut p = path.to_string();
    let at = p.len().min(2);
    p.insert(at, '\t');
    p
}
