//! Limits the front-end enforces: per-tenant publish rate (token buckets) and the pod's config.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate <= 0.0 {
            return Err(Duration::from_secs(3600));
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    fn reconfigure(&mut self, rate: u32, burst: u32) {
        self.rate = f64::from(rate);
        self.burst = f64::from(burst.max(1));
        self.tokens = self.tokens.min(self.burst);
    }
}

/// One token bucket per tenant that declares a publish rate.
#[derive(Debug, Default)]
pub struct TenantRates {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl TenantRates {
    /// Takes a publish token of `tenant` at `rate`/s with `burst` (the rate itself when
    /// `None`), or says how long until one is available.
    pub fn take(
        &self,
        tenant: &str,
        rate: u32,
        burst: Option<u32>,
        now: Instant,
    ) -> Result<(), Duration> {
        let burst = burst.unwrap_or(rate);
        let mut buckets = self.buckets.lock();
        let bucket = match buckets.get_mut(tenant) {
            Some(b) => {
                b.reconfigure(rate, burst);
                b
            }
            None => buckets
                .entry(tenant.to_owned())
                .or_insert_with(|| TokenBucket::new(rate, burst, now)),
        };
        bucket.take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        let wait = b.take(t0).expect_err("empty");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert_eq!(b.take(t0 + Duration::from_millis(100)), Ok(()));
        assert!(b.take(t0 + Duration::from_millis(100)).is_err());
        // Never more than the burst, however long it waited.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn tenants_have_their_own_buckets() {
        let rates = TenantRates::default();
        let t0 = Instant::now();
        assert!(rates.take("a", 1, None, t0).is_ok());
        assert!(rates.take("a", 1, None, t0).is_err());
        assert!(rates.take("b", 1, None, t0).is_ok());
    }
}
