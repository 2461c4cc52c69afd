//! OpenID Connect discovery of the authorization server (OIDD section 4, RFC 8414, RFC 8705 section 5).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result, Warning, WarningKind};

/// The endpoints and capabilities this client uses, taken from the discovery document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMetadata {
    /// The issuer, equal to the configured one.
    pub issuer: String,
    /// The token endpoint (the mTLS alias when there is one).
    pub token_endpoint: url::Url,
    /// The introspection endpoint (the mTLS alias when there is one).
    pub introspection_endpoint: Option<url::Url>,
    /// The revocation endpoint (the mTLS alias when there is one).
    pub revocation_endpoint: Option<url::Url>,
    /// `scopes_supported`, when given.
    pub scopes_supported: Option<Vec<String>>,
    /// `token_endpoint_auth_methods_supported`, when given.
    pub auth_methods_supported: Option<Vec<String>>,
    /// `token_endpoint_auth_signing_alg_values_supported`, when given: the algorithms the server
    /// accepts for `private_key_jwt` client assertions.
    pub auth_signing_algs_supported: Option<Vec<String>>,
    /// Whether the token endpoint came from `mtls_endpoint_aliases`.
    pub token_endpoint_is_alias: bool,
    /// `dpop_signing_alg_values_supported` (RFC 9449 section 5.1), when given.
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
    /// Every other endpoint the document names (`*_endpoint` at the top level, whether or not an
    /// mTLS alias replaces it, every alias, and `jwks_uri`): never this client's to call, never a
    /// guest's to reach.
    pub other_endpoints: Vec<url::Url>,
}

impl ServerMetadata {
    /// Every endpoint of the authorization server named by the document (for the sandbox policy,
    /// which never lets a guest reach them).
    pub fn endpoints(&self) -> Vec<url::Url> {
        let mut v = vec![self.token_endpoint.clone()];
        v.extend(self.introspection_endpoint.clone());
        v.extend(self.revocation_endpoint.clone());
        v.extend(self.other_endpoints.iter().cloned());
        v
    }
}

#[derive(Deserialize)]
struct Document {
    issuer: Option<Value>,
    token_endpoint: Option<Value>,
    introspection_endpoint: Option<Value>,
    revocation_endpoint: Option<Value>,
    scopes_supported: Option<Vec<String>>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    token_endpoint_auth_signing_alg_values_supported: Option<Vec<String>>,
    grant_types_supported: Option<Vec<String>>,
    tls_client_certificate_bound_access_tokens: Option<bool>,
    mtls_endpoint_aliases: Option<serde_json::Map<String, Value>>,
    dpop_signing_alg_values_supported: Option<Vec<String>>,
    /// Everything else, searched for more endpoints.
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

/// The discovery URL of an issuer: any trailing `/` removed, then `/.well-known/openid-configuration`
/// (OIDD section 4; the location the reference client reads, tried first).
pub fn well_known_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The RFC 8414 section 3 metadata URL of an issuer: `/.well-known/oauth-authorization-server`
/// inserted between the host and the path (`https://as.example/accounts` publishes at
/// `https://as.example/.well-known/oauth-authorization-server/accounts`), a trailing `/` of the
/// path removed. Tried when the OpenID location answers 404. `None` for a string that is not an
/// absolute URL (configured issuers always are).
pub fn oauth_metadata_url(issuer: &str) -> Option<String> {
    let url = url::Url::parse(issuer).ok()?;
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    Some(format!(
        "{origin}/.well-known/oauth-authorization-server{path}"
    ))
}

/// The largest discovery document, token response or introspection response read: 1 MiB (real
/// ones are a few KiB). A larger body is an error, not a memory exhaustion.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Fetch and check the discovery document. `timeout` bounds the whole request, body included.
pub(crate) async fn discover(
    http: &reqwest::Client,
    issuer: &str,
    scopes: &[String],
    timeout: Duration,
) -> Result<(ServerMetadata, Vec<Warning>)> {
    let (url, body) = fetch(http, issuer, timeout).await?;
    check_document(issuer, &url, &body, scopes)
}

/// The discovery document's bytes and the URL they came from: the OpenID location, or on its
/// 404 the RFC 8414 one; an HTTP 200 `application/json` answer of at most 1 MiB, within
/// `timeout`.
pub(crate) async fn fetch(
    http: &reqwest::Client,
    issuer: &str,
    timeout: Duration,
) -> Result<(String, Vec<u8>)> {
    let openid = well_known_url(issuer);
    let mut response = fetch_document(http, &openid, timeout).await?;
    let mut url = openid;
    if response.status() == http::StatusCode::NOT_FOUND
        && let Some(oauth) = oauth_metadata_url(issuer)
    {
        tracing::debug!(not_found = %url, "no OpenID discovery document; trying the RFC 8414 location");
        let second = fetch_document(http, &oauth, timeout).await?;
        if second.status() == http::StatusCode::NOT_FOUND {
            return Err(Error::Discovery(format!(
                "neither {url} (OpenID Connect Discovery) nor {oauth} (RFC 8414) has a discovery \
                 document (both answered HTTP 404); check `issuer_url` (it must be the \
                 authorization server's issuer, exactly)"
            )));
        }
        response = second;
        url = oauth;
    }
    check_response_head(&url, response.status(), response.headers())?;
    let body = read_limited(
        response,
        &format!("the discovery document at {url}"),
        timeout,
        Error::Discovery,
    )
    .await?;
    Ok((url, body))
}

async fn fetch_document(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<reqwest::Response> {
    tracing::debug!(%url, "fetching the discovery document");
    http.get(url)
        .header(http::header::ACCEPT, "application/json")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| Error::from_reqwest(&format!("fetching {url}"), e))
}

/// A discovery document is an HTTP 200 response with a JSON media type (RFC 8414 section 3.2,
/// OIDD section 4.2): `application/json`, with any parameters (`charset=utf-8`), in any case.
/// Anything else (another 2xx, an HTML page of a proxy or a login portal) is not one.
pub(crate) fn check_response_head(
    url: &str,
    status: http::StatusCode,
    headers: &http::HeaderMap,
) -> Result<()> {
    if status != http::StatusCode::OK {
        return Err(Error::Discovery(format!(
            "{url} answered HTTP {status}, where a discovery document is HTTP 200 OK with \
             Content-Type application/json (RFC 8414 section 3.2); check `issuer_url` (it must be \
             the authorization server's issuer)"
        )));
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let is_json = content_type.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        let got = match &content_type {
            Some(ct) => format!(
                "Content-Type {:?}",
                ct.chars()
                    .filter(|c| !c.is_control())
                    .take(100)
                    .collect::<String>()
            ),
            None => "no Content-Type".to_owned(),
        };
        return Err(Error::Discovery(format!(
            "{url} answered HTTP 200 with {got}, where a discovery document has Content-Type \
             application/json (RFC 8414 section 3.2): this is not a discovery document; check \
             `issuer_url` (it must be the authorization server's issuer) and that no proxy or \
             portal answers instead"
        )));
    }
    Ok(())
}

/// Read the body of an authorization server's response (`what` names it), at most
/// [`MAX_RESPONSE_BYTES`]: a larger one is `too_large`'s error. The request was sent with
/// `timeout`, which bounds the body too (reqwest's per-read timeout alone would let a server
/// that trickles a byte now and then hold the caller for ever).
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    what: &str,
    timeout: Duration,
    too_large: fn(String) -> Error,
) -> Result<Vec<u8>> {
    let refuse = || {
        too_large(format!(
            "{what} is larger than 1 MiB, which no such response needs: not read further \
             (is `issuer_url` the authorization server's issuer?)"
        ))
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(refuse());
    }
    let mut body = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => {
                return Err(Error::Timeout(format!(
                    "reading {what}: not complete within {timeout:?} (`timeout_seconds` bounds the \
                     whole request): the server sends too slowly or has stalled"
                )));
            }
            Err(e) => return Err(Error::from_reqwest(&format!("reading {what}"), e)),
        };
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(refuse());
        }
        body.extend_from_slice(&chunk);
    }
}

/// The end of the warning about a document without `token_endpoint_auth_methods_supported`.
pub(crate) const ABSENT_AUTH_METHODS: &str = "omits token_endpoint_auth_methods_supported, whose \
    default (RFC 8414 section 2) is client_secret_basic only; assuming the server accepts \
    tls_client_auth";

/// The client authentication methods this client can use: a document that lists neither is
/// refused here; the configured one is checked before the first token request
/// (`client_auth::ClientAuthenticator::check`).
const USABLE_AUTH_METHODS: [&str; 2] = ["tls_client_auth", "private_key_jwt"];

/// Check a discovery document's bytes (separate from the fetch so that it can be fuzzed).
pub fn check_document(
    issuer: &str,
    url: &str,
    body: &[u8],
    scopes: &[String],
) -> Result<(ServerMetadata, Vec<Warning>)> {
    let doc: Document = serde_json::from_slice(body).map_err(|e| {
        Error::Discovery(format!(
            "{url} did not return a JSON discovery document ({e})"
        ))
    })?;
    let doc_issuer = match &doc.issuer {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(Error::Discovery(format!(
                "{url}: the document has no `issuer`"
            )));
        }
    };
    if doc_issuer != issuer {
        return Err(Error::Discovery(format!(
            "issuer mismatch: the configuration says {issuer:?} but the document at {url} says {doc_issuer:?}; \
             they must be identical (RFC 8414 section 3.3): set `issuer_url` to the document's issuer if you trust it"
        )));
    }
    let alias = |name: &str| -> Result<Option<url::Url>> {
        doc.mtls_endpoint_aliases
            .as_ref()
            .and_then(|m| m.get(name))
            .map(|v| endpoint(v, &format!("mtls_endpoint_aliases.{name}"), url))
            .transpose()
    };
    let top = |value: &Option<Value>, name: &str| -> Result<Option<url::Url>> {
        value.as_ref().map(|v| endpoint(v, name, url)).transpose()
    };
    let (token_endpoint, token_endpoint_is_alias) = match alias("token_endpoint")? {
        Some(u) => (u, true),
        None => match top(&doc.token_endpoint, "token_endpoint")? {
            Some(u) => (u, false),
            None => {
                return Err(Error::Discovery(format!(
                    "{url}: the document has no `token_endpoint`"
                )));
            }
        },
    };
    let introspection_endpoint = match alias("introspection_endpoint")? {
        Some(u) => Some(u),
        None => top(&doc.introspection_endpoint, "introspection_endpoint")?,
    };
    let revocation_endpoint = match alias("revocation_endpoint")? {
        Some(u) => Some(u),
        None => top(&doc.revocation_endpoint, "revocation_endpoint")?,
    };

    let mut warnings = Vec::new();
    match &doc.token_endpoint_auth_methods_supported {
        Some(methods)
            if !methods
                .iter()
                .any(|m| USABLE_AUTH_METHODS.contains(&m.as_str())) =>
        {
            return Err(Error::Discovery(format!(
                "the authorization server supports neither `tls_client_auth` nor \
                 `private_key_jwt` (it lists {methods:?}); this client authenticates with its \
                 certificate or a signed client assertion only"
            )));
        }
        Some(_) => {}
        // Real directories omit it; the token request then says whether tls_client_auth works.
        None => warnings.push(Warning::new(
            WarningKind::AuthMethodsAbsent,
            format!("the discovery document at {url} {ABSENT_AUTH_METHODS}"),
        )),
    }
    match &doc.grant_types_supported {
        Some(grants) if !grants.iter().any(|g| g == "client_credentials") => {
            warnings.push(Warning::new(
                WarningKind::ClientCredentialsNotListed,
                format!(
                    "the authorization server does not list `client_credentials` in grant_types_supported ({grants:?})"
                ),
            ));
        }
        Some(_) => {}
        None => warnings.push(Warning::new(
            WarningKind::GrantTypesAbsent,
            format!(
                "the discovery document at {url} omits grant_types_supported, whose default (RFC \
                 8414 section 2) is authorization_code and implicit only; assuming the server \
                 accepts client_credentials"
            ),
        )),
    }
    if doc.tls_client_certificate_bound_access_tokens != Some(true) {
        warnings.push(Warning::new(
            WarningKind::BoundTokensNotAnnounced,
            "the authorization server does not announce certificate-bound access tokens",
        ));
    }
    if let Some(supported) = &doc.scopes_supported {
        for scope in scopes {
            if !supported.contains(scope) {
                warnings.push(Warning::new(
                    WarningKind::ScopeNotSupported,
                    format!("requested scope {scope:?} is not in the server's scopes_supported"),
                ));
            }
        }
    }
    // Every URL the document gives for an endpoint, wherever it is and whether or not this client
    // uses it: values that are not URLs are skipped here (the ones the client uses were checked).
    let named = [
        &doc.token_endpoint,
        &doc.introspection_endpoint,
        &doc.revocation_endpoint,
    ];
    let other_endpoints = named
        .into_iter()
        .flatten()
        .chain(
            doc.rest
                .iter()
                .filter(|(k, _)| k.ends_with("_endpoint") || *k == "jwks_uri")
                .map(|(_, v)| v),
        )
        .chain(doc.mtls_endpoint_aliases.iter().flat_map(|m| m.values()))
        .filter_map(|v| v.as_str().and_then(|s| url::Url::parse(s).ok()))
        .collect();
    Ok((
        ServerMetadata {
            issuer: doc_issuer,
            token_endpoint,
            introspection_endpoint,
            revocation_endpoint,
            scopes_supported: doc.scopes_supported,
            auth_methods_supported: doc.token_endpoint_auth_methods_supported,
            auth_signing_algs_supported: doc.token_endpoint_auth_signing_alg_values_supported,
            token_endpoint_is_alias,
            dpop_signing_alg_values_supported: doc.dpop_signing_alg_values_supported,
            other_endpoints,
        },
        warnings,
    ))
}

fn endpoint(value: &Value, name: &str, doc_url: &str) -> Result<url::Url> {
    let Value::String(s) = value else {
        return Err(Error::Discovery(format!(
            "{doc_url}: `{name}` is not a string"
        )));
    };
    let u = url::Url::parse(s)
        .map_err(|e| Error::Discovery(format!("{doc_url}: `{name}` {s:?} is not a URL ({e})")))?;
    if u.scheme() != "https" {
        return Err(Error::Discovery(format!(
            "{doc_url}: `{name}` is {s:?}, which is not https; FAPI forbids unencrypted endpoints"
        )));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://as.example";

    fn doc(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"issuer":"{ISS}","token_endpoint":"https://as.example/token",
               "token_endpoint_auth_methods_supported":["tls_client_auth"],
               "grant_types_supported":["client_credentials"],
               "tls_client_certificate_bound_access_tokens":true,"unknown":{{"x":[1]}}{extra}}}"#
        )
        .into_bytes()
    }

    /// DISC-03: the two locations differ for issuers with a path.
    #[test]
    fn rfc8414_location_is_inserted_between_host_and_path() {
        for (issuer, url) in [
            (
                "https://auth.example.org/accounts",
                "https://auth.example.org/.well-known/oauth-authorization-server/accounts",
            ),
            (
                "https://auth.example.org/accounts/",
                "https://auth.example.org/.well-known/oauth-authorization-server/accounts",
            ),
            (
                "https://auth.example.org",
                "https://auth.example.org/.well-known/oauth-authorization-server",
            ),
            (
                "https://auth.example.org:8443/a/b/",
                "https://auth.example.org:8443/.well-known/oauth-authorization-server/a/b",
            ),
        ] {
            assert_eq!(oauth_metadata_url(issuer).as_deref(), Some(url), "{issuer}");
        }
        assert_eq!(oauth_metadata_url("not a url"), None);
    }

    #[test]
    fn well_known_handles_trailing_slash() {
        assert_eq!(
            well_known_url("https://a/"),
            "https://a/.well-known/openid-configuration"
        );
        assert_eq!(
            well_known_url("https://a/p"),
            "https://a/p/.well-known/openid-configuration"
        );
    }

    #[test]
    fn alias_is_preferred() {
        let body = doc(
            r#","mtls_endpoint_aliases":{"token_endpoint":"https://mtls.example/token","device_authorization_endpoint":"https://x/d"}"#,
        );
        let (m, w) = check_document(ISS, "u", &body, &[]).expect("valid");
        assert_eq!(m.token_endpoint.as_str(), "https://mtls.example/token");
        assert!(m.token_endpoint_is_alias);
        assert!(w.is_empty(), "{w:?}");
        let (m, _) = check_document(ISS, "u", &doc(""), &[]).expect("valid");
        assert_eq!(m.token_endpoint.as_str(), "https://as.example/token");
        assert!(!m.token_endpoint_is_alias);
    }

    #[test]
    fn every_endpoint_the_document_names_is_kept_for_the_policy() {
        let body = doc(
            r#","introspection_endpoint":"https://plain.example/introspect",
               "userinfo_endpoint":"https://userinfo.example/me","jwks_uri":"https://keys.example/jwks",
               "op_tos_uri":"https://docs.example/tos","registration_endpoint":42,
               "mtls_endpoint_aliases":{"token_endpoint":"https://mtls.example/token",
                 "introspection_endpoint":"https://mtls.example/introspect",
                 "device_authorization_endpoint":"https://device.example/d"}"#,
        );
        let (m, _) = check_document(ISS, "u", &body, &[]).expect("valid");
        let hosts: std::collections::BTreeSet<String> = m
            .endpoints()
            .iter()
            .filter_map(|u| u.host_str().map(str::to_owned))
            .collect();
        // The plain-TLS endpoints the aliases replace, the ones this client never calls, the
        // aliases; not a document's other links (terms of service), not values that are no URL.
        let expected = [
            "as.example",
            "device.example",
            "keys.example",
            "mtls.example",
            "plain.example",
            "userinfo.example",
        ];
        assert_eq!(
            hosts.iter().map(String::as_str).collect::<Vec<_>>(),
            expected
        );
    }

    #[test]
    fn issuer_must_be_identical() {
        for configured in [
            "https://as.example/",
            "https://AS.example",
            "https://as.example:443",
        ] {
            let err = check_document(configured, "u", &doc(""), &[]).expect_err("mismatch");
            let msg = err.to_string();
            assert!(msg.contains(configured) && msg.contains(ISS), "{msg}");
        }
    }

    #[test]
    fn http_endpoints_are_refused() {
        let body =
            doc(r#","mtls_endpoint_aliases":{"token_endpoint":"http://mtls.example/token"}"#);
        let err = check_document(ISS, "u", &body, &[]).expect_err("http");
        assert!(err.to_string().contains("not https"), "{err}");
    }

    #[test]
    fn tls_client_auth_required_and_scopes_warned() {
        let body = br#"{"issuer":"https://as.example","token_endpoint":"https://as.example/t","token_endpoint_auth_methods_supported":["client_secret_basic"]}"#;
        assert!(check_document(ISS, "u", body, &[]).is_err());
        let body = doc(r#","scopes_supported":["a"]"#);
        let (_, w) = check_document(ISS, "u", &body, &["a".into(), "b".into()]).expect("valid");
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("\"b\""));
    }

    #[test]
    fn absent_capabilities_are_accepted_with_a_warning() {
        let body = br#"{"issuer":"https://as.example","token_endpoint":"https://as.example/t",
            "tls_client_certificate_bound_access_tokens":true}"#;
        let (m, w) = check_document(ISS, "u", body, &[]).expect("accepted");
        assert_eq!(m.auth_methods_supported, None);
        let w: Vec<&str> = w.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(
            w[0],
            format!("the discovery document at u {ABSENT_AUTH_METHODS}")
        );
        assert!(
            w[0].contains("token_endpoint_auth_methods_supported")
                && w[0].contains("client_secret_basic"),
            "{w:?}"
        );
        assert!(
            w[1].contains("grant_types_supported")
                && w[1].contains("authorization_code and implicit"),
            "{w:?}"
        );
        // Present and listing what this client uses: no warning.
        let (_, w) = check_document(ISS, "u", &doc(""), &[]).expect("valid");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn only_200_application_json_is_a_discovery_document() {
        let headers = |ct: Option<&str>| {
            let mut h = http::HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(http::header::CONTENT_TYPE, ct.parse().expect("header"));
            }
            h
        };
        let ok = http::StatusCode::OK;
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            " application/json ",
        ] {
            check_response_head("u", ok, &headers(Some(ct))).expect(ct);
        }
        for (status, ct, named) in [
            (204, Some("application/json"), "204 No Content"),
            (203, Some("application/json"), "203 Non Authoritative"),
            (404, Some("application/json"), "404 Not Found"),
            (
                200,
                Some("text/html; charset=utf-8"),
                "\"text/html; charset=utf-8\"",
            ),
            (200, Some("application/jsonp"), "\"application/jsonp\""),
            (200, Some("text/json"), "\"text/json\""),
            (200, None, "no Content-Type"),
        ] {
            let status = http::StatusCode::from_u16(status).expect("status");
            let err = check_response_head(
                "https://as.example/.well-known/openid-configuration",
                status,
                &headers(ct),
            )
            .expect_err(named);
            let msg = err.to_string();
            assert!(matches!(err, Error::Discovery(_)), "{msg}");
            assert!(msg.contains(named), "{msg}");
            assert!(
                msg.contains("HTTP 200") && msg.contains("application/json"),
                "{msg}"
            );
            assert!(
                msg.contains("https://as.example/.well-known/openid-configuration"),
                "{msg}"
            );
        }
    }

    #[test]
    fn not_json_or_not_an_object() {
        for body in [&b"<html>"[..], b"[]", b"{\"issuer\":1}", b""] {
            assert!(check_document(ISS, "u", body, &[]).is_err());
        }
    }
}
