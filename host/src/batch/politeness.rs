//! Pacing: `--rate` (a token bucket shared by all workers) and per-origin politeness (a shared
//! "not before" instant per origin, pushed back by 429 and `Retry-After`).
//!
//! A small limiter of our own rather than `governor`: the batch needs one global bucket and a
//! map of deadlines, both a few lines over `tokio::time`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// `--rate N/s`: requests per second (also `N/m`, `N/h`, or a bare `N` per second).
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
            return Err(format!("{s:?}: the rate must be positive"));
        }
        Ok(Rate {
            per_second: n / per,
        })
    }
}

/// A token bucket: at most `burst` requests at once, refilled at the rate. Shared by reference.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: u32,
    /// The theoretical arrival time of the next request (GCRA).
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter for `rate`, with a burst of one second's worth (at least 1).
    pub fn new(rate: Rate) -> RateLimiter {
        let interval = Duration::from_secs_f64(1.0 / rate.per_second);
        let burst = (rate.per_second.floor() as u32).max(1);
        RateLimiter {
            interval,
            burst,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Wait for a slot.
    pub async fn until_ready(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let tolerance = self.interval * self.burst.saturating_sub(1);
            let tat = (*next).max(now);
            *next = tat + self.interval;
            tat.checked_sub(tolerance).unwrap_or(now).max(now)
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

    #[tokio::test(start_paused = true)]
    async fn limiter_paces_after_a_burst() {
        let l = RateLimiter::new("10/s".parse().expect("rate"));
        let t0 = Instant::now();
        for _ in 0..30 {
            l.until_ready().await;
        }
        // 10 at once, then 20 more at 100 ms each.
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
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
