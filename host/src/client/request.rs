//! What a caller sends: [`FapiRequest`], [`RequestBuilder`], and the checks of its URL and headers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use uuid::Uuid;

use super::{FapiClient, FapiResponse};
use crate::error::{Error, Result};
use crate::policy::{HeaderCaller, header_refusal};

/// A protected request, as given to [`FapiClient::send`].
#[derive(Clone, Debug)]
pub struct FapiRequest {
    /// Method.
    pub method: Method,
    /// Absolute https URL.
    pub url: url::Url,
    /// Extra headers (never Authorization, Proxy-Authorization or x-fapi-*).
    pub headers: HeaderMap,
    /// Body.
    pub body: Option<Bytes>,
    /// Interaction id to send instead of a fresh one.
    pub interaction_id: Option<Uuid>,
    /// Time allowed until the response head (the client's timeout applies when shorter).
    pub timeout: Option<Duration>,
}

/// A request body read from a stream while it is sent, for [`FapiClient::send_stream`]: memory
/// stays flat whatever its size. It cannot be sent twice.
pub struct StreamedBody {
    pub(super) stream: futures_util::stream::BoxStream<'static, StreamResult>,
    pub(super) length: Option<u64>,
}

type StreamResult = std::result::Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

impl StreamedBody {
    /// A body of the chunks of `stream`. With `length`, the request carries it as its
    /// `Content-Length` (a stream that ends short of it, or goes past it, is a broken body the
    /// server sees as such); without, it is sent chunked. A stream that yields an error breaks
    /// the request off: the server never sees a complete body.
    pub fn new<S, E>(stream: S, length: Option<u64>) -> StreamedBody
    where
        S: futures_util::Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        StreamedBody {
            stream: stream.map_err(Into::into).boxed(),
            length,
        }
    }
}

impl std::fmt::Debug for StreamedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedBody")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// Builds a [`FapiRequest`] and sends it.
#[derive(Debug)]
pub struct RequestBuilder {
    pub(super) client: FapiClient,
    pub(super) method: Method,
    pub(super) url: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Option<Bytes>,
    pub(super) interaction_id: Option<Uuid>,
}

impl RequestBuilder {
    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Use this interaction id rather than a fresh one.
    pub fn interaction_id(mut self, id: Uuid) -> Self {
        self.interaction_id = Some(id);
        self
    }

    /// Validate and send.
    pub async fn send(self) -> Result<FapiResponse> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| Error::InvalidRequest(format!("{:?} is not a URL ({e})", self.url)))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let (n, v) = parse_header(HeaderCaller::Library, name, value)?;
            headers.append(n, v);
        }
        self.client
            .send(FapiRequest {
                method: self.method,
                url,
                headers,
                body: self.body,
                interaction_id: self.interaction_id,
                timeout: None,
            })
            .await
    }
}

/// Parse one header given as text by `caller`, refusing what the host sets itself (the rules of
/// [`crate::policy::HEADER_RULES`]).
pub fn parse_header(
    caller: HeaderCaller,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue)> {
    let n = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| Error::InvalidRequest(format!("{name:?} is not a valid header name")))?;
    let v = HeaderValue::from_str(value.trim()).map_err(|_| {
        Error::InvalidRequest(format!(
            "the value of header {n} has characters a header cannot carry (CR, LF, NUL or non-ASCII)"
        ))
    })?;
    if let Some(why) = header_refusal(caller, &n) {
        return Err(Error::InvalidRequest(why));
    }
    Ok((n, v))
}

/// A library caller's headers: none the host owns (see [`crate::policy::HEADER_RULES`]).
pub(super) fn check_headers(headers: &HeaderMap) -> Result<()> {
    match headers
        .keys()
        .find_map(|name| header_refusal(HeaderCaller::Library, name))
    {
        Some(why) => Err(Error::InvalidRequest(why)),
        None => Ok(()),
    }
}

pub(super) fn check_url(url: &url::Url) -> Result<()> {
    crate::policy::check_scheme_and_userinfo(url).map_err(|d| Error::InvalidRequest(d.to_string()))
}
