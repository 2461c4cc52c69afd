//! When and how long to wait before retrying (the reference client's urllib3 policy, with jitter).

use std::time::{Duration, SystemTime};

use rand::Rng as _;

use crate::config::ClientOptions;

/// Statuses worth retrying for idempotent requests: 429, 502, 503, 504.
pub fn is_retryable_status(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// Methods that may be sent again after a failure: GET, HEAD, OPTIONS.
pub fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// `Retry-After` as a delay: delta-seconds or an HTTP-date (RFC 9110 section 10.2.3).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The delay before retry number `attempt` (1-based): the server's `Retry-After` when given
/// (capped), else exponential backoff with full jitter.
pub fn delay(attempt: u32, retry_after: Option<Duration>, options: &ClientOptions) -> Duration {
    if let Some(d) = retry_after {
        return d.min(options.max_retry_after);
    }
    let exp = options
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(10));
    let cap = exp.min(Duration::from_secs(10));
    let jitter = rand::rng().random_range(0.5..=1.0);
    cap.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().expect("valid"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(http::header::RETRY_AFTER, later.parse().expect("valid"));
        let d = retry_after(&h).expect("date");
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(http::header::RETRY_AFTER, "soon".parse().expect("valid"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let o = ClientOptions::default();
        assert_eq!(
            delay(1, Some(Duration::from_secs(3600)), &o),
            o.max_retry_after
        );
        let d1 = delay(1, None, &o);
        assert!(d1 >= o.backoff_base / 2 && d1 <= o.backoff_base);
        let d30 = delay(30, None, &o);
        assert!(d30 <= Duration::from_secs(10));
    }
}
