//! [`Error`]: why a request failed, as the host said, plus non-2xx statuses.

use std::fmt;

use crate::raw;

/// Why a request failed. The first eight cases mirror the WIT `fetch-error` one to one; none of them can
/// carry credentials, because the host never hands any to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The host's egress policy refused the request. The text names the URL and the setting that would
    /// allow it (`[sandbox] allow` or `--allow`).
    Denied(String),
    /// The request is malformed (bad URL, method or header); the text says which. Setting
    /// `authorization`, `cookie`, `host` or `x-fapi-*` lands here: the host sets those.
    InvalidRequest(String),
    /// No response head (or next body chunk) arrived in time.
    Timeout,
    /// A body is larger than the host's limit, given in bytes.
    TooLarge(u64),
    /// The server could not be reached, or TLS with it failed.
    Unreachable(String),
    /// The host has no token to send: the authorization server refused or failed.
    TokenUnavailable {
        /// The OAuth2 error code (`invalid_client`, ...), `server_error` or `discovery_failed`.
        code: String,
        /// A human-readable explanation.
        description: Option<String>,
    },
    /// A per-guest limit was reached (requests in flight, requests per run); the text names it.
    LimitExceeded(String),
    /// The response body broke off (connection reset, truncated body).
    BodyInterrupted(String),
    /// The response arrived with a status that is not 2xx (from [`Response::error_for_status`]).
    ///
    /// [`Response::error_for_status`]: crate::Response::error_for_status
    Status {
        /// The HTTP status.
        status: u16,
        /// The `x-fapi-interaction-id` of the request, for the provider's logs.
        interaction_id: String,
    },
    /// The body could not be decoded as asked (JSON that does not match the type).
    Decode(String),
}

impl Error {
    /// The name of the case, e.g. `"Denied"`: stable, for logs and machine-readable output.
    pub fn variant_name(&self) -> &'static str {
        match self {
            Error::Denied(_) => "Denied",
            Error::InvalidRequest(_) => "InvalidRequest",
            Error::Timeout => "Timeout",
            Error::TooLarge(_) => "TooLarge",
            Error::Unreachable(_) => "Unreachable",
            Error::TokenUnavailable { .. } => "TokenUnavailable",
            Error::LimitExceeded(_) => "LimitExceeded",
            Error::BodyInterrupted(_) => "BodyInterrupted",
            Error::Status { .. } => "Status",
            Error::Decode(_) => "Decode",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied(why) => write!(f, "denied by the host's egress policy: {why}"),
            Error::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Error::Timeout => f.write_str("timed out waiting for the response"),
            Error::TooLarge(limit) => {
                write!(f, "body larger than the host's limit of {limit} bytes")
            }
            Error::Unreachable(why) => write!(f, "server unreachable: {why}"),
            Error::TokenUnavailable {
                code,
                description: Some(d),
            } => {
                write!(f, "no access token: {code}: {d}")
            }
            Error::TokenUnavailable {
                code,
                description: None,
            } => write!(f, "no access token: {code}"),
            Error::LimitExceeded(why) => write!(f, "limit exceeded: {why}"),
            Error::BodyInterrupted(why) => write!(f, "response body interrupted: {why}"),
            Error::Status {
                status,
                interaction_id,
            } => {
                write!(f, "HTTP status {status} (interaction id {interaction_id})")
            }
            Error::Decode(why) => write!(f, "could not decode the body: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<raw::FetchError> for Error {
    fn from(e: raw::FetchError) -> Self {
        match e {
            raw::FetchError::Denied(s) => Error::Denied(s),
            raw::FetchError::InvalidRequest(s) => Error::InvalidRequest(s),
            raw::FetchError::Timeout => Error::Timeout,
            raw::FetchError::TooLarge(n) => Error::TooLarge(n),
            raw::FetchError::Unreachable(s) => Error::Unreachable(s),
            raw::FetchError::TokenUnavailable(t) => Error::TokenUnavailable {
                code: t.code,
                description: t.description,
            },
            raw::FetchError::LimitExceeded(s) => Error::LimitExceeded(s),
            raw::FetchError::BodyInterrupted(s) => Error::BodyInterrupted(s),
        }
    }
}

impl From<Error> for std::io::Error {
    /// For `std::io::Read`: timeouts keep their kind, everything else is `Other` with this error inside
    /// (get it back with `get_ref()` / `into_inner()` and `downcast`).
    fn from(e: Error) -> Self {
        let kind = match e {
            Error::Timeout => std::io::ErrorKind::TimedOut,
            Error::BodyInterrupted(_) => std::io::ErrorKind::ConnectionAborted,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}
