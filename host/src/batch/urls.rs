//! Parsing the URLs of an input's lines, which mostly share one origin.
//!
//! A full parse of `https://host:port/path` spends most of its work on the host (the WHATWG
//! host parser runs IDNA processing on every host, IP literals included), and the batch parses
//! every line twice (once to check the input, once as the item is started). [`UrlParser`] parses
//! an origin once and resolves the rest of each line against it, which the URL standard defines
//! to give the same URL: a path-absolute reference (`/x`, not `//x`) keeps the base's scheme,
//! host and port and parses only the path, query and fragment. Lines whose origin is not plain
//! (user information, percent-escapes, IPv6 literals, anything unusual) take the full parse.

use url::Url;

/// A URL parser that remembers the last origin it parsed. Same results as [`Url::parse`].
#[derive(Debug, Default)]
pub(crate) struct UrlParser {
    /// The text of the remembered origin (`https://host:port`) and its parse with path `/`.
    last: Option<(String, Url)>,
}

impl UrlParser {
    /// Parse `s` as [`Url::parse`] does.
    pub(crate) fn parse(&mut self, s: &str) -> Result<Url, url::ParseError> {
        let Some((origin, rest)) = plain_origin(s) else {
            return Url::parse(s);
        };
        let base = match &self.last {
            Some((text, base)) if text == origin => base,
            _ => {
                let Ok(base) = Url::parse(&format!("{origin}/")) else {
                    // Not a valid origin: the full parse gives the error.
                    return Url::parse(s);
                };
                if base.path() != "/" || base.query().is_some() || base.fragment().is_some() {
                    return Url::parse(s);
                }
                &self.last.insert((origin.to_owned(), base)).1
            }
        };
        base.join(rest)
    }
}

/// `https://` and an authority of letters, digits, `.`, `-` and `:` only, then a path that starts
/// with exactly one `/` (so that the rest is a path-absolute reference), with no tab or line
/// break: the origin's text and the rest.
fn plain_origin(s: &str) -> Option<(&str, &str)> {
    let after = s.strip_prefix("https://")?;
    let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')))?;
    let rest = &after[end..];
    // The parser drops tabs and line breaks anywhere, so `/\t/x` would read as `//x`: such lines
    // take the full parse.
    if end == 0
        || !rest.starts_with('/')
        || rest[1..].starts_with(['/', '\\'])
        || rest.contains(['\t', '\n', '\r'])
    {
        return None;
    }
    Some((&s[..s.len() - rest.len()], rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The parser's result, and the full parse's, for each of `lines` in turn (so that every
    /// line also meets the origin the line before left behind).
    fn check_all(lines: &[String]) {
        let mut p = UrlParser::default();
        for line in lines {
            let ours = p.parse(line);
            if let Ok(u) = &ours
                && u.scheme() == "https"
                && u.username().is_empty()
                && u.password().is_none()
            {
                // What the batch takes as the item's origin (the input refuses user information).
                assert_eq!(
                    &u[..url::Position::BeforePath],
                    u.origin().ascii_serialization()
                );
            }
            let full = Url::parse(line).map(|u| u.to_string());
            assert_eq!(ours.map(|u| u.to_string()), full, "{line:?}");
        }
    }

    #[test]
    fn same_as_a_full_parse_on_tricky_lines() {
        let lines: Vec<String> = [
            "https://h.example/a",
            "https://h.example/a/../b?x=1#f",
            "https://H.EXAMPLE:443/a",
            "https://h.example:443/%7e?%zz",
            "https://h.example:8443/a b",
            "https://h.example:8443//other.example/x",
            "https://h.example:8443/\\other.example/x",
            "https://h.example:99999/a",
            "https://h.example:/a",
            "https://h..example/a",
            "https://127.0.0.1:8443/items/1",
            "https://0x7f.1:8443/items/1",
            "https://127.1/x",
            "https://999.1.1.1/x",
            "https://xn--nxasmq6b.example/a",
            "https://xn--a.example/a",
            "https://h.example/a\t\nb",
            "https://h.example/\t\\x",
            "https://h.example/\n/x",
            "https://h.example/\r\n/x/y",
            "https://h.example/a\u{0}",
            "https://h.example/é?é#é",
            "https://u@h.example/a",
            "https://[::1]:8443/a",
            "https://h%2eexample/a",
            "https://h.example",
            "https://h.example?q",
            "https://h.example#f",
            "https:///a",
            "https://:443/a",
            "https://-/a",
            "https://h.example/./.././a",
            "https://h.example/%2e%2e/a",
            "http://h.example/a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        check_all(&lines);
        // Every line after every other, each pair both ways.
        for a in &lines {
            for b in &lines {
                check_all(&[a.clone(), b.clone()]);
            }
        }
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("h.example".to_string()),
            Just("H.Example".to_string()),
            Just("127.0.0.1".to_string()),
            Just("0x7f.1".to_string()),
            "[a-z0-9.:-]{0,12}",
            "[A-Za-z0-9.%\\[\\]@_:-]{0,12}",
        ]
    }

    fn rest() -> impl Strategy<Value = String> {
        prop_oneof![
            "/[a-z0-9/.?#=&%]{0,20}",
            "[/\\\\?#a-z.%]{0,12}",
            "/[\\x00-\\x7f]{0,12}",
            "/\\PC{0,8}",
        ]
    }

    proptest! {
        #[test]
        fn same_as_a_full_parse(parts in prop::collection::vec((host(), prop::option::of(0u32..70000), rest()), 1..6)) {
            let lines: Vec<String> = parts
                .into_iter()
                .map(|(h, port, r)| match port {
                    Some(p) => format!("https://{h}:{p}{r}"),
                    None => format!("https://{h}{r}"),
                })
                .collect();
            check_all(&lines);
        }
    }
}
