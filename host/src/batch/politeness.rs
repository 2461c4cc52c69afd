//! Pacing: `--rate` (requests evenly spaced over all workers, never a burst) and per-origin
//! politeness (a shared "not before" instant per origin, pushed back by 429 and `Retry-After`).
//!
//! A small limiter of our own rather than `governor`: the batch needs one global bucket and a
//! map of deadlines, both a few lines over `tokio::time`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The slowest rate accepted: one request an hour. Slower paces are a scheduler's job (a run per
/// item); the bound also keeps every interval, and every instant computed from one, far from the
/// limits of `Duration` and `Instant` (`1e-20/s` would be an interval of 3e12 years).
pub const MIN_PER_SECOND: f64 = 1.0 / 3600.0;

/// The longest interval between two requests: that of [`MIN_PER_SECOND`].
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// `--rate N/s`: requests per second (also `N/m`, `N/h`, or a bare `N` per second), at least
/// one an hour (`MIN_PER_SECOND`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests per second.
    pub per_second: f64,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: write the rate as N/s, N/m or N/h"))?;
        let per = match unit.trim() {
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{s:?}: the unit must be s, m or h")),
        };
        if !(n.is_finite() && n > 0.0) {
            return Err(format!(
                "{s:?}: the rate must be a positive number, e.g. 50/s"
            ));
        }
        let per_second = n / per;
        if per_second < MIN_PER_SECOND {
            return Err(format!(
                "{s:?}: the slowest rate is 1/h (one request an hour); for a slower pace, run the \
                 batch from a scheduler on a part of the input at a time"
            ));
        }
        Ok(Rate { per_second })
    }
}

/// Requests evenly spaced, one every `1/rate` (rounded up to the nanosecond), over everyone who
/// shares it: no burst, so any one-second window holds at most `rate` of them (rounded up). A
/// slot not used is not saved for later. Shared by reference.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    /// The earliest start of the next request.
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter for `rate`. A rate below one an hour (which parsing refuses) gets the
    /// one-hour interval; an infinite one none.
    pub fn new(rate: Rate) -> RateLimiter {
        let nanos = (1e9 / rate.per_second).ceil();
        let interval = if nanos >= 0.0 && nanos < MAX_INTERVAL.as_nanos() as f64 {
            Duration::from_nanos(nanos as u64)
        } else {
            MAX_INTERVAL
        };
        RateLimiter {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Wait for a slot.
    pub async fn until_ready(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let at = (*next).max(Instant::now());
            // An instant past what the clock can represent: no pacing left to keep.
            *next = at.checked_add(self.interval).unwrap_or(at);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Per-origin "not before" instants, shared by all workers: when one worker gets a 429, every
/// worker of that origin waits.
#[derive(Debug, Default)]
pub struct Politeness {
    not_before: Mutex<HashMap<String, Instant>>,
}

impl Politeness {
    /// Wait until `origin` may be called.
    pub async fn wait(&self, origin: &str) {
        loop {
            let until = {
                let map = self.not_before.lock().unwrap_or_else(|p| p.into_inner());
                map.get(origin).copied()
            };
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// No request to `origin` before `delay` from now (never shortens an earlier deferral).
    pub fn defer(&self, origin: &str, delay: Duration) {
        let t = Instant::now() + delay;
        let mut map = self.not_before.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(origin.to_owned()).or_insert(t);
        if *e < t {
            *e = t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("10/s".parse::<Rate>().map(|r| r.per_second), Ok(10.0));
        assert_eq!("120/m".parse::<Rate>().map(|r| r.per_second), Ok(2.0));
        assert_eq!("5".parse::<Rate>().map(|r| r.per_second), Ok(5.0));
        for bad in ["0/s", "-1/s", "x/s", "3/d"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    /// Rates slower than one an hour are refused when parsed, with the bound in the message.
    #[test]
    fn rates_below_one_an_hour_are_refused() {
        assert_eq!(
            "1/h".parse::<Rate>().map(|r| r.per_second),
            Ok(MIN_PER_SECOND)
        );
        assert!("0.5/m".parse::<Rate>().is_ok());
        for bad in [
            "1e-20/s", "1e-19/s", "0.9/h", "1e-300/h", "inf/s", "NaN/s", "1e400/s",
        ] {
            let e = bad.parse::<Rate>().expect_err(bad);
            assert!(e.contains("rate"), "{bad}: {e}");
        }
        assert!("1e-20/s".parse::<Rate>().expect_err("slow").contains("1/h"));
    }

    /// A limiter made from a rate parsing would refuse neither panics nor overflows.
    #[tokio::test(start_paused = true)]
    async fn a_limiter_for_an_extreme_rate_paces_within_bounds() {
        for per_second in [1e-20, 1e-300, 0.0, -1.0, f64::NAN] {
            let l = RateLimiter::new(Rate { per_second });
            let t0 = Instant::now();
            l.until_ready().await;
            l.until_ready().await;
            assert_eq!(t0.elapsed(), MAX_INTERVAL, "{per_second}");
        }
        let l = RateLimiter::new(Rate {
            per_second: f64::INFINITY,
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            l.until_ready().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    /// `--rate N/s` as the README says: requests evenly spaced, at most N in any one-second
    /// window, from the first second on.
    #[tokio::test(start_paused = true)]
    async fn limiter_spaces_requests_evenly_with_no_burst() {
        for (rate, n) in [("10/s", 10usize), ("3/s", 3), ("7/s", 7), ("120/m", 2)] {
            let l = RateLimiter::new(rate.parse().expect("rate"));
            // Rounded up, never down: N intervals are not shorter than a second.
            assert!(l.interval * n as u32 >= Duration::from_secs(1), "{rate}");
            let t0 = Instant::now();
            let mut at = Vec::new();
            for _ in 0..(3 * n + 1) {
                l.until_ready().await;
                at.push(t0.elapsed());
            }
            for (i, start) in at.iter().enumerate() {
                let in_window = at[i..]
                    .iter()
                    .take_while(|t| **t - *start < Duration::from_secs(1))
                    .count();
                assert!(in_window <= n, "{rate}: {in_window} from {start:?}: {at:?}");
            }
            // And no slower than the rate: 3N intervals take 3 s (timers tick by the millisecond).
            let took = at[3 * n];
            assert!(
                took >= Duration::from_secs(3)
                    && took <= Duration::from_millis(3000 + 3 * n as u64),
                "{rate}: {took:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn politeness_holds_every_worker_of_the_origin() {
        let p = Politeness::default();
        p.defer("https://a", Duration::from_secs(2));
        p.defer("https://a", Duration::from_secs(1)); // does not shorten
        let t0 = Instant::now();
        p.wait("https://b").await;
        assert!(t0.elapsed() < Duration::from_millis(1));
        p.wait("https://a").await;
        assert!(t0.elapsed() >= Duration::from_secs(2));
    }
}
