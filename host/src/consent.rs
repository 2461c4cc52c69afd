//! A household's consent, the client's side (the IB1 Trust Framework): the authorization server's
//! metadata checked for PAR and PKCE, the pushed authorization request (RFC 9126) and the code
//! exchange over mTLS, and the loopback redirect listener (RFC 8252 section 7.3). The token source
//! of a client that uses a grant is [`crate::grant_tokens`].
//!
//! Tokens go from the token response into the grant store and from there into `Authorization`
//! headers; no function here returns one, and no message or log line carries one.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroize::Zeroizing;

use crate::discovery::{self, read_limited};
use crate::error::{Error, Result};
use crate::grants::{Grant, GrantInfo, GrantSecret, GrantState, GrantStore, Pending, now_secs};
use crate::token::BearerHeader;

/// The authorization server's endpoints of the consent flow, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConsentMetadata {
    pub(crate) issuer: String,
    /// Where the household's browser goes (with `client_id` and `request_uri`).
    pub(crate) authorization_endpoint: url::Url,
    /// RFC 9126 (the mTLS alias when there is one).
    pub(crate) par_endpoint: url::Url,
    /// The token endpoint (the mTLS alias when there is one).
    pub(crate) token_endpoint: url::Url,
    /// RFC 7009, when advertised (the mTLS alias when there is one).
    pub(crate) revocation_endpoint: Option<url::Url>,
}

/// Check a metadata document for what the consent flow needs: PAR required and its endpoint,
/// PKCE with S256, an authorization endpoint, and `mtls_endpoint_aliases` equal to the top-level
/// endpoints where both are given. Every missing piece is named, each with what it should be.
pub(crate) fn check_consent_metadata(url: &str, doc: &Value) -> Result<ConsentMetadata> {
    let mut problems: Vec<String> = Vec::new();
    let aliases = doc.get("mtls_endpoint_aliases").and_then(Value::as_object);
    let mut endpoint = |name: &str, required: bool| -> Option<url::Url> {
        let top = doc.get(name).and_then(Value::as_str);
        let alias = aliases.and_then(|a| a.get(name)).and_then(Value::as_str);
        if let (Some(t), Some(a)) = (top, alias)
            && t != a
        {
            problems.push(format!(
                "mtls_endpoint_aliases.{name} ({a}) differs from {name} ({t}); the IB1 profile \
                 has one endpoint, over mTLS"
            ));
        }
        match alias.or(top) {
            None if required => {
                problems.push(format!("`{name}` is missing"));
                None
            }
            None => None,
            Some(u) => match url::Url::parse(u) {
                Ok(parsed) if parsed.scheme() == "https" => Some(parsed),
                _ => {
                    problems.push(format!("`{name}` is not an https URL"));
                    None
                }
            },
        }
    };
    let authorization = endpoint("authorization_endpoint", true);
    let par = endpoint("pushed_authorization_request_endpoint", true);
    let token = endpoint("token_endpoint", true);
    let revocation = endpoint("revocation_endpoint", false);
    if doc.get("require_pushed_authorization_requests") != Some(&Value::Bool(true)) {
        problems.push(
            "`require_pushed_authorization_requests` is not true (the IB1 profile requires PAR)"
                .into(),
        );
    }
    let s256 = doc
        .get("code_challenge_methods_supported")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v == "S256"));
    if !s256 {
        problems.push("`code_challenge_methods_supported` does not hold \"S256\" (PKCE)".into());
    }
    let issuer = doc
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match (authorization, par, token) {
        (Some(authorization_endpoint), Some(par_endpoint), Some(token_endpoint))
            if problems.is_empty() =>
        {
            Ok(ConsentMetadata {
                issuer,
                authorization_endpoint,
                par_endpoint,
                token_endpoint,
                revocation_endpoint: revocation,
            })
        }
        _ => Err(Error::Discovery(format!(
            "the metadata at {url} does not allow a consent flow (IB1: PAR and PKCE): {}; check \
             `issuer_url` and `profile`",
            problems.join("; ")
        ))),
    }
}

/// Fetch the metadata (the OpenID location, then RFC 8414's) and check it: the issuer exactly,
/// the endpoints as [`crate::discovery`] checks them, then the consent flow's needs.
pub(crate) async fn consent_metadata(
    http: &reqwest::Client,
    issuer: &str,
    timeout: Duration,
) -> Result<ConsentMetadata> {
    let (url, body) = discovery::fetch(http, issuer, timeout).await?;
    // The issuer and the endpoints, as for every profile.
    discovery::check_document(issuer, &url, &body, &[])?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::Discovery(format!("{url} is not JSON ({e})")))?;
    check_consent_metadata(&url, &doc)
}

/// A PKCE verifier (RFC 7636: 43 characters from 32 random bytes) and its S256 challenge.
pub(crate) fn pkce() -> (GrantSecret, String) {
    let verifier = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
    );
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    (GrantSecret::new(verifier.to_string()), challenge)
}

/// A fresh `state` (16 random bytes).
pub(crate) fn random_state() -> GrantSecret {
    GrantSecret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
    )
}

fn form(pairs: &[(&str, &str)]) -> Zeroizing<String> {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    Zeroizing::new(s.finish())
}

/// Server-chosen text, cut and stripped of control characters before it reaches a message.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

/// POST a form over mTLS; the status and the body (at most 1 MiB).
async fn post_form(
    http: &reqwest::Client,
    url: &url::Url,
    body: &str,
    timeout: Duration,
    what: &str,
) -> Result<(u16, Zeroizing<Vec<u8>>)> {
    let response = http
        .post(url.clone())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .timeout(timeout)
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| Error::from_reqwest(&format!("{what} at {url}"), e).in_token_step())?;
    let status = response.status().as_u16();
    let bytes = read_limited(
        response,
        &format!("the answer to {what}"),
        timeout,
        Error::TokenResponse,
    )
    .await?;
    Ok((status, Zeroizing::new(bytes)))
}

/// The server's refusal as a message: `error (description)` (no token can be in either).
fn refusal(status: u16, body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => {
            let described = match e.error_description.as_deref().map(printable) {
                Some(d) if !d.is_empty() => format!("{} ({d})", printable(&e.error)),
                _ => printable(&e.error),
            };
            (printable(&e.error), format!("HTTP {status}: {described}"))
        }
        Err(_) => (
            String::new(),
            format!("HTTP {status}, without an OAuth error"),
        ),
    }
}

/// A pushed authorization request over mTLS (RFC 9126) for `pending` (its client, scope,
/// redirect URI and state) with the PKCE `challenge`; the `request_uri`.
pub(crate) async fn push_request(
    http: &reqwest::Client,
    meta: &ConsentMetadata,
    pending: &Pending,
    challenge: &str,
    timeout: Duration,
) -> Result<String> {
    let body = form(&[
        ("response_type", "code"),
        ("client_id", &pending.client_id),
        ("redirect_uri", &pending.redirect_uri),
        ("scope", &pending.scope),
        ("state", pending.state.expose_secret()),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]);
    let what = "the pushed authorization request";
    let (status, bytes) = post_form(http, &meta.par_endpoint, &body, timeout, what).await?;
    if status != 201 && status != 200 {
        let (error, message) = refusal(status, &bytes);
        let fix = match error.as_str() {
            "invalid_scope" => {
                "; ask for a licence this server grants (--scope, or `requested_scopes`)"
            }
            "invalid_client" => {
                "; check that the certificate is the one the Directory issued for `client_id` (its URI SAN)"
            }
            _ => "",
        };
        return Err(Error::Grant(format!(
            "the authorization server refused the pushed authorization request at {} ({message}){fix}",
            meta.par_endpoint
        )));
    }
    #[derive(Deserialize)]
    struct Pushed {
        request_uri: String,
    }
    let pushed: Pushed = serde_json::from_slice(&bytes).map_err(|_| {
        Error::Grant(format!(
            "{}: the answer to the pushed authorization request has no `request_uri`",
            meta.par_endpoint
        ))
    })?;
    Ok(pushed.request_uri)
}

/// The URL the household's browser opens: the authorization endpoint with `client_id` and
/// `request_uri` (RFC 9126 section 4).
pub(crate) fn authorization_url(
    meta: &ConsentMetadata,
    client_id: &str,
    request_uri: &str,
) -> url::Url {
    let mut url = meta.authorization_endpoint.clone();
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("request_uri", request_uri);
    url
}

/// Tokens from a token response.
pub(crate) struct Issued {
    pub(crate) access: GrantSecret,
    pub(crate) refresh: Option<GrantSecret>,
    pub(crate) expires_in: u64,
    pub(crate) scope: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

impl Drop for TokenAnswer {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.access_token.zeroize();
        self.refresh_token.zeroize();
    }
}

/// A token request (`authorization_code` or `refresh_token`) over mTLS. A refusal is
/// `Err((error code, message))`; other failures are errors.
pub(crate) async fn token_request(
    http: &reqwest::Client,
    endpoint: &url::Url,
    pairs: &[(&str, &str)],
    timeout: Duration,
) -> Result<std::result::Result<Issued, (String, String)>> {
    let body = form(pairs);
    let (status, bytes) = post_form(http, endpoint, &body, timeout, "the token request").await?;
    if status != 200 {
        return Ok(Err(refusal(status, &bytes)));
    }
    let mut answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|e| {
        Error::TokenResponse(format!(
            "{endpoint}: the token response is not JSON of the expected shape (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if !answer
        .token_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return Err(Error::TokenResponse(format!(
            "{endpoint}: the token type is not Bearer"
        )));
    }
    let Some(access) = answer.access_token.take().filter(|t| !t.is_empty()) else {
        return Err(Error::TokenResponse(format!(
            "{endpoint}: the token response has no access_token"
        )));
    };
    if BearerHeader::from_token(&access).is_none() {
        return Err(Error::TokenResponse(format!(
            "{endpoint}: the access token has characters that cannot be sent in a header"
        )));
    }
    Ok(Ok(Issued {
        access: GrantSecret::new(access),
        refresh: answer.refresh_token.take().map(GrantSecret::new),
        expires_in: answer
            .expires_in
            .unwrap_or(300)
            .min(crate::config::MAX_TOKEN_LIFETIME.as_secs()),
        scope: answer.scope.take(),
    }))
}

/// What the browser brought back to the redirect URI.
pub(crate) struct Callback {
    pairs: Vec<(String, String)>,
}

impl Callback {
    /// The query of a redirected URL (`grant complete`).
    pub(crate) fn from_url(url: &str) -> Result<Callback> {
        let parsed = url::Url::parse(url).map_err(|_| {
            Error::Grant(
                "the redirected URL is not a URL: give the whole address the browser ended on \
                 (http://127.0.0.1:PORT/callback?code=...)"
                    .into(),
            )
        })?;
        Ok(Callback {
            pairs: parsed.query_pairs().into_owned().collect(),
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The code, once `state` and `iss` are checked and no error was sent.
    pub(crate) fn code(&self, name: &str, state: &GrantSecret, issuer: &str) -> Result<&str> {
        if self.get("state") != Some(state.expose_secret()) {
            return Err(Error::Grant(format!(
                "the redirect's state does not match the request's: this answer belongs to \
                 another consent flow (or was forged); nothing was exchanged. Run fapi-host \
                 grant add {name} again"
            )));
        }
        if let Some(iss) = self.get("iss")
            && iss != issuer
        {
            return Err(Error::Grant(format!(
                "the redirect names issuer {:?}, not {issuer:?} (RFC 9207): nothing was \
                 exchanged",
                printable(iss)
            )));
        }
        match self.get("error") {
            Some("access_denied") => {
                return Err(Error::Grant(format!(
                    "the household declined (access_denied): nothing was stored. Run fapi-host \
                     grant add {name} again to ask again"
                )));
            }
            Some(e) => {
                let d = self
                    .get("error_description")
                    .map(|d| format!(" ({})", printable(d)))
                    .unwrap_or_default();
                return Err(Error::Grant(format!(
                    "the authorization server ended the consent flow with {}{d}: nothing was \
                     stored",
                    printable(e)
                )));
            }
            None => {}
        }
        self.get("code").filter(|c| !c.is_empty()).ok_or_else(|| {
            Error::Grant("the redirect has neither a code nor an error: nothing was stored".into())
        })
    }
}

/// Wait on `listener` for the browser's request to `path`, at most `timeout`; answer each request
/// with a small page (a request elsewhere, e.g. `/favicon.ico`, with a 404) and return the
/// callback.
pub(crate) async fn wait_for_callback(
    listener: tokio::net::TcpListener,
    path: &str,
    timeout: Duration,
) -> Result<(Callback, tokio::net::TcpStream)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let accepted = tokio::time::timeout_at(deadline, listener.accept()).await;
        let Ok(accepted) = accepted else {
            return Err(Error::Grant(format!(
                "no answer from the browser within {} s (--timeout): the household did not \
                 finish the consent page, or the redirect could not reach this machine. Run the \
                 command again, or use --no-listen and grant complete",
                timeout.as_secs()
            )));
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        if read.is_err() {
            continue;
        }
        let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let target = line.split(' ').nth(1).unwrap_or("");
        let (p, _) = target.split_once('?').unwrap_or((target, ""));
        if !line.starts_with("GET ") || p != path {
            let _ = respond(&mut stream, 404, "Not found").await;
            continue;
        }
        let callback = Callback::from_url(&format!("http://127.0.0.1{target}"))?;
        return Ok((callback, stream));
    }
}

/// Answer the browser with a small page and close.
pub(crate) async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: u16,
    message: &str,
) -> std::io::Result<()> {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>fapi-host</title></head>\
         <body><p>{}</p></body></html>\n",
        message
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    );
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Exchange a code for tokens and store them as grant `name` (replacing one of that name).
pub(crate) async fn exchange_and_store(
    http: &reqwest::Client,
    store: &GrantStore,
    meta: &ConsentMetadata,
    name: &str,
    pending: &Pending,
    code: &str,
    timeout: Duration,
) -> Result<GrantInfo> {
    let issued = token_request(
        http,
        &meta.token_endpoint,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &pending.client_id),
            ("code", code),
            ("redirect_uri", &pending.redirect_uri),
            ("code_verifier", pending.verifier.expose_secret()),
        ],
        timeout,
    )
    .await?
    .map_err(|(_, message)| {
        Error::Grant(format!(
            "the authorization server refused the authorization code ({message}): nothing was \
             stored. Run fapi-host grant add {name} again"
        ))
    })?;
    let now = now_secs();
    let grant = Grant {
        info: GrantInfo {
            name: name.to_owned(),
            issuer: pending.issuer.clone(),
            client_id: pending.client_id.clone(),
            scope: issued.scope.unwrap_or_else(|| pending.scope.clone()),
            created: now,
            last_refreshed: None,
            access_expires_at: now + issued.expires_in,
            state: GrantState::Active,
        },
        access: issued.access,
        refresh: issued.refresh,
    };
    store.save(&grant)?;
    Ok(grant.info)
}

/// Revoke a grant's refresh token (or, without one, its access token) at the RFC 7009 endpoint.
pub(crate) async fn revoke(
    http: &reqwest::Client,
    endpoint: &url::Url,
    grant: &Grant,
    timeout: Duration,
) -> Result<()> {
    let (token, hint) = match &grant.refresh {
        Some(r) => (r.expose_secret(), "refresh_token"),
        None => (grant.access.expose_secret(), "access_token"),
    };
    let body = form(&[
        ("client_id", &grant.info.client_id),
        ("token", token),
        ("token_type_hint", hint),
    ]);
    let (status, bytes) = post_form(http, endpoint, &body, timeout, "the revocation").await?;
    if status != 200 {
        let (_, message) = refusal(status, &bytes);
        return Err(Error::Grant(format!(
            "the authorization server refused the revocation at {endpoint} ({message}); the grant \
             is kept: try again, or remove it with fapi-host grant remove {}",
            grant.info.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        let e = |n: &str| format!("https://as.example/accounts/{n}");
        json!({
            "issuer": "https://as.example/accounts",
            "authorization_endpoint": e("authorize"),
            "pushed_authorization_request_endpoint": e("par"),
            "require_pushed_authorization_requests": true,
            "token_endpoint": e("token"),
            "code_challenge_methods_supported": ["S256"],
            "mtls_endpoint_aliases": { "token_endpoint": e("token"), "pushed_authorization_request_endpoint": e("par") },
        })
    }

    #[test]
    fn consent_metadata_names_each_missing_piece() {
        let m = check_consent_metadata("u", &doc()).expect("complete");
        assert_eq!(m.par_endpoint.path(), "/accounts/par");
        for (key, says) in [
            (
                "require_pushed_authorization_requests",
                "require_pushed_authorization_requests",
            ),
            (
                "pushed_authorization_request_endpoint",
                "pushed_authorization_request_endpoint` is missing",
            ),
            ("code_challenge_methods_supported", "S256"),
            (
                "authorization_endpoint",
                "authorization_endpoint` is missing",
            ),
        ] {
            let mut d = doc();
            d.as_object_mut().expect("object").remove(key);
            if key == "pushed_authorization_request_endpoint" {
                d["mtls_endpoint_aliases"]
                    .as_object_mut()
                    .expect("object")
                    .remove(key);
            }
            let e = check_consent_metadata("u", &d).expect_err(key).to_string();
            assert!(e.contains(says), "{key}: {e}");
        }
        let mut d = doc();
        d["mtls_endpoint_aliases"]["token_endpoint"] = json!("https://mtls.as.example/token");
        let e = check_consent_metadata("u", &d)
            .expect_err("alias")
            .to_string();
        assert!(e.contains("mtls_endpoint_aliases.token_endpoint"), "{e}");
    }

    #[test]
    fn pkce_is_43_characters_and_s256() {
        let (verifier, challenge) = pkce();
        assert_eq!(verifier.expose_secret().len(), 43);
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.expose_secret().as_bytes()));
        assert_eq!(challenge, expected);
        assert_ne!(pkce().1, challenge);
    }

    #[test]
    fn the_callback_checks_state_issuer_and_errors() {
        let state = GrantSecret::new("s1".into());
        let iss = "https://as.example/accounts";
        let cb =
            |q: &str| Callback::from_url(&format!("http://127.0.0.1:1/callback?{q}")).expect("url");
        let ok = cb("code=abc&state=s1&iss=https%3A%2F%2Fas.example%2Faccounts");
        assert_eq!(ok.code("g", &state, iss).expect("code"), "abc");
        let e = cb("code=abc&state=s2")
            .code("g", &state, iss)
            .expect_err("state")
            .to_string();
        assert!(
            e.contains("state does not match") && e.contains("nothing was exchanged"),
            "{e}"
        );
        let e = cb("error=access_denied&state=s1")
            .code("g", &state, iss)
            .expect_err("denied")
            .to_string();
        assert!(
            e.contains("access_denied") && e.contains("grant add g"),
            "{e}"
        );
        let e = cb("code=abc&state=s1&iss=https%3A%2F%2Fevil")
            .code("g", &state, iss)
            .expect_err("iss")
            .to_string();
        assert!(e.contains("RFC 9207"), "{e}");
    }
}
