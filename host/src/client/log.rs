//! What the client logs of its exchanges: request lines, headers with credentials redacted, and
//! the `x-fapi-interaction-id` echo check.

use std::fmt;

use http::HeaderMap;

use super::INTERACTION_ID;
use crate::policy::shown_url;

/// The origins whose responses lacked the `x-fapi-interaction-id` echo, warned about once each.
#[derive(Debug, Default)]
pub(super) struct MissingEcho(std::sync::Mutex<std::collections::HashSet<String>>);

/// The origin of a URL [`check_url`] let through (https, no user information): its text up to
/// the path, without serialising it anew on every response.
fn origin_of(url: &url::Url) -> &str {
    &url[..url::Position::BeforePath]
}

/// At most this many origins are remembered: past it, a missing echo is logged at debug only.
const MISSING_ECHO_ORIGINS: usize = 1024;

impl MissingEcho {
    /// Whether this is the first missing echo from `url`'s origin (then remembered).
    fn first(&self, url: &url::Url) -> bool {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let origin = origin_of(url);
        if seen.len() >= MISSING_ECHO_ORIGINS || seen.contains(origin) {
            return false;
        }
        seen.insert(origin.to_owned())
    }
}

/// RES-04 / HDR-02: the server must echo the interaction id (FAPI 1.0 part 1 section 6.2.1-11).
/// A missing echo is the server's fault, not the request's: a warning the first time per origin
/// (a server that never echoes would otherwise flood the log), debug after that.
pub(super) fn check_interaction_echo(
    missing: &MissingEcho,
    url: &url::Url,
    headers: &HeaderMap,
    sent: Option<&str>,
) {
    let echoed = headers.get(INTERACTION_ID).and_then(|v| v.to_str().ok());
    match (sent, echoed) {
        (Some(s), Some(e)) if s != e => {
            tracing::warn!(
                sent = s,
                echoed = e,
                "the server echoed another x-fapi-interaction-id"
            )
        }
        (Some(s), None) if missing.first(url) => {
            tracing::warn!(
                origin = origin_of(url),
                sent = s,
                "the server did not echo x-fapi-interaction-id (FAPI 1.0 part 1 section 6.2.1-11); \
                 not warned again for this origin"
            )
        }
        (Some(s), None) => {
            tracing::debug!(sent = s, "the server did not echo x-fapi-interaction-id")
        }
        _ => {}
    }
}

pub(super) fn log_request(
    method: &http::Method,
    url: &url::Url,
    headers: &HeaderMap,
    interaction_id: Option<&str>,
    attempt: u32,
) {
    tracing::info!(
        method = %method, url = %shown_url(url.as_str()), attempt,
        interaction_id = interaction_id.unwrap_or("-"),
        "request"
    );
    tracing::debug!(headers = %RedactedHeaders(headers), "request headers");
}

/// Headers for logs: `Authorization` and other credentials are shown as `[redacted]`.
pub struct RedactedHeaders<'a>(pub &'a HeaderMap);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, value) in self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            let shown = match name.as_str() {
                "authorization" => "Bearer [redacted]",
                "proxy-authorization" | "cookie" | "set-cookie" => "[redacted]",
                _ if value.is_sensitive() => "[redacted]",
                _ => value.to_str().unwrap_or("[binary]"),
            };
            write!(f, "{name}: {shown}")?;
        }
        Ok(())
    }
}
