//! When and how long to wait before retrying (the reference client's urllib3 policy, with jitter).

use std::fmt;
use std::time::{Duration, SystemTime};

use rand::Rng as _;

use crate::config::ClientOptions;

/// Statuses worth retrying for idempotent requests: 429, 502, 503, 504.
pub fn is_retryable_status(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// Statuses worth sending a token request again for: 429 and 503, answers that say the request
/// was not processed. A 502 or 504 comes from a gateway that may have passed the request on (and
/// a token been issued): the token request is not sent again after one.
pub fn is_retryable_token_status(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 503)
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

/// A server asked (`Retry-After`) for a longer wait than the client allows: the request is not
/// tried again (RFC 9110 section 10.2.3: a retry sooner is against what the server asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfterTooLong {
    /// The wait the server asked for.
    pub requested: Duration,
    /// The longest wait the client allows, [`ClientOptions::max_retry_after`].
    pub max: Duration,
}

impl fmt::Display for RetryAfterTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server asked (Retry-After) for a wait of {} s before trying again, longer than \
             the {} s this client waits at most (`max_retry_after` of the client options): not \
             tried again; try again later",
            self.requested.as_secs(),
            self.max.as_secs()
        )
    }
}

/// The delay before retry number `attempt` (1-based), honouring the server's `Retry-After`: that
/// wait exactly when it is at most [`ClientOptions::max_retry_after`], an error when it is longer
/// (then do not retry), and without one, exponential backoff with jitter ([`backoff`]).
pub fn delay_for(
    attempt: u32,
    retry_after: Option<Duration>,
    options: &ClientOptions,
) -> Result<Duration, RetryAfterTooLong> {
    match retry_after {
        Some(requested) if requested > options.max_retry_after => Err(RetryAfterTooLong {
            requested,
            max: options.max_retry_after,
        }),
        Some(requested) => Ok(requested),
        None => Ok(backoff(attempt, options)),
    }
}

/// The delay before retry number `attempt` (1-based) without a server's hint: `backoff_base`
/// doubled per retry, at most 10 s, with jitter (a random half to all of it).
pub fn backoff(attempt: u32, options: &ClientOptions) -> Duration {
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
        let cap = Duration::from_secs(10);
        // Without a hint: within [exp/2, exp] for exp = base * 2^(attempt-1), at most 10 s.
        let samples = |attempt: u32| -> Vec<Duration> {
            (0..50)
                .map(|_| delay_for(attempt, None, &o).expect("no hint"))
                .collect()
        };
        let mut previous: Option<Vec<Duration>> = None;
        for attempt in 1..=12u32 {
            let exp = (o.backoff_base * (1u32 << (attempt - 1).min(10))).min(cap);
            let now = samples(attempt);
            for d in &now {
                assert!(
                    *d >= exp / 2 && *d <= exp,
                    "attempt {attempt}: {d:?} for {exp:?}"
                );
            }
            // They grow: below the cap, every delay of an attempt is at least every delay of
            // the attempt before, and two attempts on, strictly longer.
            if let Some(before) = &previous
                && exp < cap
            {
                let longest_before = before.iter().max().expect("samples");
                let shortest_now = now.iter().min().expect("samples");
                assert!(shortest_now >= longest_before, "attempt {attempt}");
            }
            previous = Some(now);
        }
        for attempt in 1..=4 {
            assert!(backoff(attempt + 2, &o) > backoff(attempt, &o), "{attempt}");
        }
        // And are capped: from attempt 7 (250 ms * 64 > 10 s) on, between 5 s and 10 s.
        for attempt in [7, 11, 30, u32::MAX] {
            let d = backoff(attempt, &o);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_exactly_or_not_retried() {
        let o = ClientOptions::default();
        assert_eq!(
            delay_for(1, Some(Duration::from_secs(7)), &o),
            Ok(Duration::from_secs(7))
        );
        assert_eq!(
            delay_for(3, Some(o.max_retry_after), &o),
            Ok(o.max_retry_after)
        );
        assert_eq!(delay_for(1, Some(Duration::ZERO), &o), Ok(Duration::ZERO));
        // Longer than the client waits: no retry after a shorter wait than the server asked.
        let err = delay_for(1, Some(Duration::from_secs(3600)), &o).expect_err("too long");
        assert_eq!(
            err,
            RetryAfterTooLong {
                requested: Duration::from_secs(3600),
                max: o.max_retry_after
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("Retry-After") && msg.contains("3600 s") && msg.contains("60 s"),
            "{msg}"
        );
        assert!(msg.contains("max_retry_after"), "{msg}");
    }

    #[test]
    fn only_429_and_503_are_retried_for_token_requests() {
        for (code, retried) in [
            (429, true),
            (503, true),
            (502, false),
            (504, false),
            (500, false),
        ] {
            let status = http::StatusCode::from_u16(code).expect("status");
            assert_eq!(is_retryable_token_status(status), retried, "{code}");
        }
    }
}
