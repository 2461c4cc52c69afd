//! What comes back: [`FapiResponse`] (a body read when asked for) and [`AuthProblem`].

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::error::{Error, Result};
use crate::policy::shown_url;
use crate::www_authenticate;

/// What a 401 or 403 means for this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthProblem {
    /// A bare 401: the server did not get or accept the client certificate.
    ClientCertificate,
    /// 401 invalid_token even after a fresh token.
    InvalidToken,
    /// 403 insufficient_scope.
    InsufficientScope(Option<String>),
    /// 400 invalid_request.
    InvalidRequest(Option<String>),
    /// 401 `use_dpop_nonce` that was not replayed: the request had a streamed body, which cannot
    /// be sent again (the new nonce is kept: sending the request again carries it).
    DpopNonce,
    /// 401 `invalid_dpop_proof`: the server refused the DPoP proof (with its description).
    DpopProof(Option<String>),
}

impl AuthProblem {
    pub(super) fn of(status: StatusCode, headers: &HeaderMap) -> Option<AuthProblem> {
        // Only these answers carry a problem: the challenges of a success are not read.
        if !matches!(status.as_u16(), 400 | 401 | 403) {
            return None;
        }
        // A DPoP resource server's challenges are DPoP ones (RFC 9449 section 7.1).
        let challenge =
            www_authenticate::bearer(headers).or_else(|| www_authenticate::dpop(headers));
        let error = challenge.as_ref().and_then(|c| c.error.clone());
        match (status.as_u16(), error.as_deref()) {
            (401, Some("invalid_token")) => Some(AuthProblem::InvalidToken),
            (401, Some("use_dpop_nonce")) => Some(AuthProblem::DpopNonce),
            (401, Some("invalid_dpop_proof")) => Some(AuthProblem::DpopProof(
                challenge.and_then(|c| c.description),
            )),
            (401, _) => Some(AuthProblem::ClientCertificate),
            (403, Some("insufficient_scope")) => Some(AuthProblem::InsufficientScope(
                challenge.and_then(|c| c.scope),
            )),
            (400, Some("invalid_request")) => Some(AuthProblem::InvalidRequest(
                challenge.and_then(|c| c.description),
            )),
            _ => None,
        }
    }
}

impl fmt::Display for AuthProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthProblem::ClientCertificate => f.write_str(
                "401 without an error code: the server did not accept the client certificate \
                 (is `certificate` the one registered for this client, issued by a CA the server trusts?)",
            ),
            AuthProblem::InvalidToken => f.write_str(
                "401 invalid_token even with a fresh token: the token is not accepted by this server \
                 (is it a resource server of this issuer, and is the token bound to this certificate?)",
            ),
            AuthProblem::InsufficientScope(scope) => write!(
                f,
                "403 insufficient_scope: the token lacks the scope this resource needs{}; add it to `requested_scopes` (and have it granted to the client)",
                scope.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
            ),
            AuthProblem::DpopNonce => f.write_str(
                "401 use_dpop_nonce: the server demands a new DPoP nonce, and a request with a \
                 streamed body cannot be sent again: send it again (it will carry the new nonce)",
            ),
            AuthProblem::DpopProof(d) => write!(
                f,
                "401 invalid_dpop_proof{}: the server refused the DPoP proof; check this \
                 machine's clock and that the server accepts ES256 proofs",
                d.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
            ),
            AuthProblem::InvalidRequest(d) => write!(
                f,
                "400 invalid_request{}",
                d.as_ref().map(|s| format!(": {s}")).unwrap_or_default()
            ),
        }
    }
}

/// A response to a protected request. The body is not read until asked for.
#[derive(Debug)]
pub struct FapiResponse {
    pub(super) status: StatusCode,
    pub(super) url: url::Url,
    pub(super) interaction_id: Option<String>,
    pub(super) attempts: u32,
    pub(super) elapsed: Duration,
    pub(super) problem: Option<AuthProblem>,
    pub(super) inner: Received,
    /// The longest wait for a chunk of the body, when the transport has no read timeout of its
    /// own (the answer to a streamed body).
    pub(super) idle: Option<Duration>,
}

impl FapiResponse {
    /// Status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// Headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }
    /// Take the headers out of the response (leaving it none), for a caller that passes them on
    /// and streams the body: no copy of the map.
    pub fn take_headers(&mut self) -> HeaderMap {
        std::mem::take(match &mut self.inner {
            Received::Reqwest(r) => r.headers_mut(),
            Received::Direct(r) => r.headers_mut(),
        })
    }
    /// The URL requested.
    pub fn url(&self) -> &url::Url {
        &self.url
    }
    /// The interaction id sent.
    pub fn interaction_id(&self) -> Option<&str> {
        self.interaction_id.as_deref()
    }
    /// Attempts made (1 without retries or replays).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// Time from the first attempt to this response's head.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
    /// What a 400/401/403 means, when it is an authorization problem.
    pub fn auth_problem(&self) -> Option<&AuthProblem> {
        self.problem.as_ref()
    }
    /// The next chunk of the body, or None at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        use http_body_util::BodyExt as _;
        let (url, idle) = (&self.url, self.idle);
        match &mut self.inner {
            Received::Reqwest(r) => within(idle, r.chunk())
                .await
                .ok_or_else(|| stalled(url))?
                .map_err(|e| body_error(url, e)),
            Received::Direct(r) => loop {
                match within(idle, r.body_mut().frame()).await {
                    None => return Err(stalled(url)),
                    Some(None) => return Ok(None),
                    Some(Some(Err(e))) => return Err(broken_body(url, &e)),
                    // Trailers are not passed on (nor are they by reqwest).
                    Some(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                }
            },
        }
    }
    /// The body as a stream of chunks.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes>> + Send + 'static {
        use futures_util::StreamExt as _;
        if self.idle.is_none()
            && let Received::Reqwest(r) = self.inner
        {
            // reqwest's own read timeout bounds each chunk.
            let url = self.url;
            return r
                .bytes_stream()
                .map(move |r| r.map_err(|e| body_error(&url, e)))
                .right_stream();
        }
        // One chunk at a time, each within `idle`; the first error ends it.
        futures_util::stream::try_unfold(self, |mut r| async move {
            Ok(r.chunk().await?.map(|chunk| (chunk, r)))
        })
        .left_stream()
    }

    /// The whole body, up to `limit` bytes.
    pub async fn bytes_limited(mut self, limit: u64) -> Result<Bytes> {
        let too_large = |url: &url::Url| {
            Error::TooLarge(format!(
                "the body of {} is larger than {limit} bytes",
                shown_url(url.as_str())
            ))
        };
        // Most bodies arrive in one chunk: return it as it is, without copying.
        let Some(first) = self.chunk().await? else {
            return Ok(Bytes::new());
        };
        if first.len() as u64 > limit {
            return Err(too_large(&self.url));
        }
        let Some(second) = self.chunk().await? else {
            return Ok(first);
        };
        let mut out = bytes::BytesMut::from(&first[..]);
        let mut next = Some(second);
        while let Some(chunk) = next {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(too_large(&self.url));
            }
            out.extend_from_slice(&chunk);
            next = self.chunk().await?;
        }
        Ok(out.freeze())
    }
    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes> {
        self.bytes_limited(u64::MAX).await
    }
    /// The whole body as text (lossy UTF-8).
    pub async fn text(self) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }
    /// The whole body as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let url = self.url.clone();
        let b = self.bytes().await?;
        serde_json::from_slice(&b).map_err(|e| {
            Error::InvalidRequest(format!("the body of {url} is not the JSON expected ({e})"))
        })
    }
}

/// A response's head and the body still to come: from reqwest, or from hyper directly (whose
/// body has no read timeout of its own: [`FapiResponse::idle`] is always set for it).
#[derive(Debug)]
pub(super) enum Received {
    Reqwest(reqwest::Response),
    Direct(http::Response<hyper::body::Incoming>),
}

impl Received {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Received::Reqwest(r) => r.status(),
            Received::Direct(r) => r.status(),
        }
    }

    pub(super) fn headers(&self) -> &HeaderMap {
        match self {
            Received::Reqwest(r) => r.headers(),
            Received::Direct(r) => r.headers(),
        }
    }
}

/// [`body_error`] for a body read by hyper directly: it has no timeout of its own (the wait for
/// each chunk is bounded by the caller), so the connection was cut or reset.
fn broken_body(url: &url::Url, e: &hyper::Error) -> Error {
    Error::Network(format!(
        "reading the body of {}: the connection ended before the whole body arrived ({})",
        shown_url(url.as_str()),
        crate::error::error_chain(e)
    ))
}

/// `next`, within `idle` when there is one; `None` when it did not come in time.
async fn within<F: std::future::Future>(idle: Option<Duration>, next: F) -> Option<F::Output> {
    match idle {
        Some(idle) => tokio::time::timeout(idle, next).await.ok(),
        None => Some(next.await),
    }
}

fn stalled(url: &url::Url) -> Error {
    Error::Timeout(format!(
        "reading the body of {}: timed out: nothing arrived for the configured `timeout_seconds`",
        shown_url(url.as_str())
    ))
}

/// A failure while reading a response body, after the head arrived (TLS was fine then): the
/// connection was cut, reset or stalled. Always a network error, never a TLS one, even when
/// rustls is the layer that noticed the missing close_notify.
fn body_error(url: &url::Url, e: reqwest::Error) -> Error {
    // reqwest finds a timeout anywhere in the chain (its read timeout, hyper's, an io TimedOut).
    let timeout = e.is_timeout();
    let chain = crate::error::error_chain(&e.without_url());
    if timeout {
        Error::Timeout(format!(
            "reading the body of {}: timed out: nothing arrived for the configured `timeout_seconds` ({chain})",
            shown_url(url.as_str())
        ))
    } else {
        Error::Network(format!(
            "reading the body of {}: the connection ended before the whole body arrived ({chain})",
            shown_url(url.as_str())
        ))
    }
}
