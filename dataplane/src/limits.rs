//! Per-tenant publish rates: one `governor` limiter (a lock-free GCRA cell) per tenant.
//!
//! A publish takes its tenant's limiter from the session's publish memo when it has one, so the
//! per-publish cost is one compare-and-swap on the tenant's own cell. Only a memo miss (a new
//! topic or snapshot version), HTTP, WebSocket and wills look the tenant up in the map, under a
//! read lock.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::RwLock;

/// How long a tenant whose rate is 0 is told to wait: it may not publish at all.
const NEVER: Duration = Duration::from_secs(3600);

/// One tenant's publish rate: `rate` publishes per second, `burst` at once.
pub struct TenantRate<C: Clock = DefaultClock> {
    rate: u32,
    burst: u32,
    /// `None` when the rate is 0.
    limiter: Option<RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for TenantRate<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRate")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl<C: Clock + Clone> TenantRate<C> {
    /// A full bucket of `burst` (at least 1) refilled at `rate` per second, on `clock`.
    pub fn with_clock(rate: u32, burst: u32, clock: C) -> Self {
        let limiter = NonZeroU32::new(rate).map(|r| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct_with_clock(Quota::per_second(r).allow_burst(burst), clock.clone())
        });
        Self {
            rate,
            burst,
            limiter,
            clock,
        }
    }

    /// Whether this limiter was made for `rate` and `burst`.
    fn is_for(&self, rate: u32, burst: u32) -> bool {
        self.rate == rate && self.burst == burst
    }

    /// Takes one publish, or says how long until one is allowed.
    pub fn take(&self) -> Result<(), Duration> {
        match &self.limiter {
            Some(l) => l
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Err(NEVER),
        }
    }
}

impl TenantRate {
    /// A full bucket on the system clock.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

/// The limiters of the tenants that declare a publish rate.
#[derive(Debug, Default)]
pub struct TenantRates {
    by_tenant: RwLock<HashMap<String, Arc<TenantRate>>>,
}

impl TenantRates {
    /// The limiter of `tenant` at `rate`/s with `burst` (the rate itself when `None`); a
    /// changed rate or burst starts a new, full one.
    pub fn of(&self, tenant: &str, rate: u32, burst: Option<u32>) -> Arc<TenantRate> {
        let burst = burst.unwrap_or(rate);
        if let Some(l) = self.by_tenant.read().get(tenant)
            && l.is_for(rate, burst)
        {
            return l.clone();
        }
        let mut all = self.by_tenant.write();
        match all.get(tenant) {
            Some(l) if l.is_for(rate, burst) => l.clone(),
            _ => {
                let l = Arc::new(TenantRate::new(rate, burst));
                all.insert(tenant.to_owned(), l.clone());
                l
            }
        }
    }

    /// Takes a publish of `tenant` (see [`TenantRates::of`]), or says how long until one is
    /// allowed.
    pub fn take(&self, tenant: &str, rate: u32, burst: Option<u32>) -> Result<(), Duration> {
        self.of(tenant, rate, burst).take()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_tenant_rate_allows_its_burst_then_its_rate() {
        let clock = FakeRelativeClock::default();
        let r = TenantRate::with_clock(10, 3, clock.clone());
        for _ in 0..3 {
            assert_eq!(r.take(), Ok(()));
        }
        let wait = r.take().expect_err("empty");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        clock.advance(Duration::from_millis(100));
        assert_eq!(r.take(), Ok(()));
        assert!(r.take().is_err());
        // Never more than the burst, however long it waited.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(r.take(), Ok(()));
        }
        assert!(r.take().is_err());
    }

    #[test]
    fn a_rate_of_zero_allows_nothing() {
        let r = TenantRate::new(0, 5);
        assert_eq!(r.take(), Err(NEVER));
    }

    #[test]
    fn tenants_have_their_own_limiters_and_a_new_rate_a_new_one() {
        let rates = TenantRates::default();
        assert!(rates.take("a", 1, None).is_ok());
        assert!(rates.take("a", 1, None).is_err());
        assert!(rates.take("b", 1, None).is_ok());
        let a = rates.of("a", 1, None);
        assert!(Arc::ptr_eq(&a, &rates.of("a", 1, Some(1))));
        assert!(rates.take("a", 2, None).is_ok(), "a new rate starts full");
    }

    #[test]
    fn publishers_of_one_tenant_share_its_limiter_across_threads() {
        let rates = Arc::new(TenantRates::default());
        let taken: usize = (0..4)
            .map(|_| {
                let rates = rates.clone();
                std::thread::spawn(move || {
                    let l = rates.of("t", 1, Some(100));
                    (0..100).filter(|_| l.take().is_ok()).count()
                })
            })
            .map(|h| h.join().expect("joins"))
            .sum();
        // The burst, and at most a token or two refilled during the run.
        assert!((100..=102).contains(&taken), "{taken}");
    }
}
