//! [`Request`]: a builder for one request through the host, and the [`get`] / [`post`] shortcuts.

use crate::{Error, Response, raw};

/// Send `GET url` through the host, like `session.get(url)` in the Python reference client.
///
/// The host checks the URL against its egress policy, adds the client certificate, the bearer token and
/// a fresh `x-fapi-interaction-id`, and retries idempotent requests on 429/502/503/504. Any status is an
/// `Ok`: use [`Response::error_for_status`] to turn non-2xx into an error.
pub fn get(url: &str) -> Result<Response, Error> {
    Request::new("GET", url).send()
}

/// Send `POST url` with `body` through the host.
pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Result<Response, Error> {
    Request::new("POST", url).body(body).send()
}

/// A request being built: `Request::new("PUT", url).header("content-type", "text/csv").body(b).send()`.
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until `send()`"]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<raw::Header>,
    body: Option<Vec<u8>>,
    timeout_ms: Option<u32>,
}

impl Request {
    /// A request with `method` (GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS) to an absolute
    /// `https://` URL, without headers, body or timeout.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        }
    }

    /// Add a header (repeat for several values). The host refuses `authorization`,
    /// `proxy-authorization`, `cookie`, `host` and `x-fapi-*` with [`Error::InvalidRequest`], and values
    /// with CR, LF or NUL.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(raw::Header {
            name: name.into(),
            value: value.as_ref().to_vec(),
        });
        self
    }

    /// Set the body (at most the host's request body limit, else [`Error::TooLarge`]).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Give up with [`Error::Timeout`] if the response head has not arrived within `ms` milliseconds.
    /// The host's own timeout still applies when it is shorter.
    pub fn timeout(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Send the request through the host and wait for the response head. The body is read later, from
    /// the [`Response`].
    pub fn send(self) -> Result<Response, Error> {
        let request = raw::Request {
            method: self.method,
            url: self.url,
            headers: self.headers,
            body: self.body,
            timeout_ms: self.timeout_ms,
        };
        let response = raw::fetch(&request)?;
        Ok(Response::from_raw(response))
    }
}
