//! A `WWW-Authenticate` parser (RFC 7235 section 4.1, RFC 6750 section 3).
//!
//! Robust to several challenges in one header or several headers, quoted strings with escapes,
//! token68 values, odd spacing, and case in scheme and parameter names. Malformed input never
//! panics: parsing stops at the first byte that cannot belong to a challenge.

/// One challenge: a scheme and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The auth scheme, lowercased (`bearer`, `dpop`, ...).
    pub scheme: String,
    /// Parameters with lowercased names, in order; a token68 value has the name "".
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a resource server's Bearer challenge says (RFC 6750 section 3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BearerChallenge {
    /// `error`, e.g. `invalid_token`, or None for a bare challenge.
    pub error: Option<String>,
    /// `error_description`.
    pub description: Option<String>,
    /// `scope` (for `insufficient_scope`).
    pub scope: Option<String>,
}

/// Parse every challenge of all given header values, as text or as the raw bytes of a header
/// (bytes >= 0x80, such as UTF-8 in an `error_description`, are kept; quoted strings are read as
/// UTF-8, invalid sequences replaced).
pub fn parse<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for v in values {
        Parser {
            s: v.as_ref(),
            i: 0,
        }
        .challenges(&mut out);
    }
    out
}

/// The first Bearer challenge among the response's `WWW-Authenticate` headers. The headers are
/// read as bytes: a value that is not visible ASCII (an `error_description` in UTF-8, say) still
/// counts.
pub fn bearer(headers: &http::HeaderMap) -> Option<BearerChallenge> {
    bearer_in(
        headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
}

/// The first Bearer challenge among `WWW-Authenticate` values given as bytes.
pub fn bearer_in<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> Option<BearerChallenge> {
    scheme_in(values, "bearer")
}

/// The first DPoP challenge among the response's `WWW-Authenticate` headers (RFC 9449 section
/// 7.1: the same `error`, `error_description` and `scope` as a Bearer one; the scheme's name in
/// any case, checklist DPOP-06).
pub fn dpop(headers: &http::HeaderMap) -> Option<BearerChallenge> {
    scheme_in(
        headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .map(http::HeaderValue::as_bytes),
        "dpop",
    )
}

/// The first challenge of `scheme` (lower case) among `WWW-Authenticate` values.
fn scheme_in<V: AsRef<[u8]>>(
    values: impl IntoIterator<Item = V>,
    scheme: &str,
) -> Option<BearerChallenge> {
    parse(values)
        .into_iter()
        .find(|c| c.scheme == scheme)
        .map(|c| BearerChallenge {
            error: c.param("error").map(str::to_owned),
            description: c.param("error_description").map(str::to_owned),
            scope: c.param("scope").map(str::to_owned),
        })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_ws_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> Option<String> {
        // at '"'
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        None // unterminated
    }

    /// After a name and optional spaces: is this `name=` (a parameter) rather than a token68 or a
    /// new scheme?
    fn at_param_equals(&self) -> bool {
        let mut j = self.i;
        while matches!(self.s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if self.s.get(j) != Some(&b'=') {
            return false;
        }
        // token68 ends in '='s followed by end or comma: `abc==`, not a parameter.
        let mut k = j;
        while self.s.get(k) == Some(&b'=') {
            k += 1;
        }
        while matches!(self.s.get(k), Some(b' ' | b'\t')) {
            k += 1;
        }
        !(k - j > 1 || matches!(self.s.get(k), None | Some(b',')))
    }

    fn challenges(&mut self, out: &mut Vec<Challenge>) {
        loop {
            self.skip_ws_commas();
            let Some(scheme) = self.token() else { return };
            let mut challenge = Challenge {
                scheme: scheme.to_ascii_lowercase(),
                params: Vec::new(),
            };
            self.skip_ws();
            loop {
                self.skip_ws_commas();
                let save = self.i;
                let Some(name) = self.token() else { break };
                if self.at_param_equals() {
                    self.skip_ws();
                    self.i += 1; // '='
                    self.skip_ws();
                    let value = match self.peek() {
                        Some(b'"') => match self.quoted() {
                            Some(v) => v,
                            None => {
                                out.push(challenge);
                                return;
                            }
                        },
                        _ => self.token().unwrap_or_default(),
                    };
                    challenge.params.push((name.to_ascii_lowercase(), value));
                } else if challenge.params.is_empty() && matches!(self.peek(), Some(b'=')) {
                    // token68
                    while self.peek() == Some(b'=') {
                        self.i += 1;
                    }
                    let value = String::from_utf8_lossy(&self.s[save..self.i]).into_owned();
                    challenge.params.push((String::new(), value));
                } else {
                    // a new challenge starts here
                    self.i = save;
                    break;
                }
            }
            out.push(challenge);
            if self.peek().is_some()
                && !matches!(self.peek(), Some(b) if is_tchar(b) || b == b',' || b == b' ' || b == b'\t')
            {
                return; // garbage: stop
            }
            if self.peek().is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_errors() {
        let c = parse(["Bearer"]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert!(c[0].params.is_empty());

        let c = parse([
            r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
        ]);
        assert_eq!(c[0].param("error"), Some("invalid_token"));
        assert_eq!(
            c[0].param("ERROR_description"),
            Some("The access token expired")
        );
    }

    /// DPOP-06: the DPoP scheme and its parameters in any case, beside a Bearer challenge.
    #[test]
    fn dpop_challenges_in_any_case() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"Bearer realm="x""#),
        );
        h.append(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(
                r#"dpop ERROR="use_dpop_nonce", error_description="fresh""#,
            ),
        );
        let c = dpop(&h).expect("a DPoP challenge");
        assert_eq!(c.error.as_deref(), Some("use_dpop_nonce"));
        assert_eq!(c.description.as_deref(), Some("fresh"));
        assert_eq!(bearer(&h).and_then(|c| c.error), None);
    }

    #[test]
    fn several_challenges_case_and_escapes() {
        let c = parse([
            r#"DPoP algs="ES256 PS256", nonce="x\"y", bEARER error=insufficient_scope,scope="a b""#,
        ]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "dpop");
        assert_eq!(c[0].param("nonce"), Some("x\"y"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert_eq!(c[1].param("scope"), Some("a b"));
    }

    #[test]
    fn token68_and_basic() {
        let c = parse([
            "Basic realm=\"x\", Negotiate abc==",
            "Bearer error=\"invalid_token\"",
        ]);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c[1].params, vec![(String::new(), "abc==".to_string())]);
        assert_eq!(c[2].param("error"), Some("invalid_token"));
    }

    #[test]
    fn garbage_does_not_panic() {
        for s in [
            "",
            ",,,",
            "=",
            "\"",
            "Bearer error=\"",
            "Bearer ==,=",
            "Bearer \u{0}\u{1}",
            "Bearer error=",
            "B e=\"\\",
        ] {
            let _ = parse([s]);
        }
    }

    #[test]
    fn bearer_with_utf8_and_other_high_bytes_is_read() {
        // "Jeton expiré" in UTF-8: not visible ASCII, so `HeaderValue::to_str` refuses it.
        let utf8 = "Bearer error=\"invalid_token\", error_description=\"Jeton expiré\"";
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_bytes(utf8.as_bytes()).expect("valid header bytes"),
        );
        assert!(h[http::header::WWW_AUTHENTICATE].to_str().is_err());
        let b = bearer(&h).expect("bearer");
        assert_eq!(b.error.as_deref(), Some("invalid_token"));
        assert_eq!(b.description.as_deref(), Some("Jeton expiré"));

        // Latin-1 (not UTF-8) in the description: the error still counts.
        let mut latin1 = b"Bearer error=\"invalid_token\", error_description=\"expir".to_vec();
        latin1.extend_from_slice(&[0xE9, b'"']);
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_bytes(&latin1).expect("valid header bytes"),
        );
        let b = bearer(&h).expect("bearer");
        assert_eq!(b.error.as_deref(), Some("invalid_token"));
        assert_eq!(b.description.as_deref(), Some("expir\u{FFFD}"));
    }

    #[test]
    fn bearer_from_headers() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::WWW_AUTHENTICATE,
            "Basic realm=\"a\"".parse().expect("valid"),
        );
        h.append(
            http::header::WWW_AUTHENTICATE,
            "Bearer error=\"insufficient_scope\", scope=\"consumption:read\""
                .parse()
                .expect("valid"),
        );
        let b = bearer(&h).expect("bearer");
        assert_eq!(b.error.as_deref(), Some("insufficient_scope"));
        assert_eq!(b.scope.as_deref(), Some("consumption:read"));
    }
}
