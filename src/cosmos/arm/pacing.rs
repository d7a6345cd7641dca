//! ARM requests paced to the quota instead of refused.
//!
//! Azure Resource Manager throttles each principal's requests in a
//! subscription with token buckets: writes 200, refilled at 10 a second;
//! reads 250, refilled at 25 ("Understand how Azure Resource Manager
//! throttles requests", token bucket algorithm). Every account one
//! identity manages in a subscription draws on those buckets, so dbgrant
//! keeps a copy of each per (subscription, identity), shared by those
//! accounts' clients, and a request waits here for a token instead of
//! being answered 429. ARM's own count wins: each answer's
//! `x-ms-ratelimit-remaining-subscription-{writes,reads}` lowers the copy
//! to it, and a 429 of the principal's bucket empties it until its
//! Retry-After.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

/// ARM's documented write bucket: capacity and refill per second.
pub const ARM_WRITES: (f64, f64) = (200.0, 10.0);
/// ARM's documented read bucket: capacity and refill per second.
pub const ARM_READS: (f64, f64) = (250.0, 25.0);

/// Which of a principal's buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quota {
    /// PUT, DELETE.
    Writes,
    /// GET, including lists and operation polls.
    Reads,
}

/// A copy of one principal's ARM bucket.
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    refill_per_sec: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
    /// No writes before this (after a 429).
    closed_until: Option<Instant>,
}

impl Bucket {
    /// A full bucket of `capacity`, refilled at `refill_per_sec`.
    pub fn new(capacity: f64, refill_per_sec: f64) -> Self {
        let state = State { tokens: capacity, at: Instant::now(), closed_until: None };
        Self { capacity, refill_per_sec, state: Mutex::new(state) }
    }

    fn with_state<T>(&self, now: Instant, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        s.at = s.at.max(now);
        f(&mut s)
    }

    /// Take a token at `now`, or say how long until one is there.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        self.with_state(now, |s| {
            if let Some(until) = s.closed_until.filter(|u| *u > now) {
                return Err(until - now);
            }
            s.closed_until = None;
            if s.tokens >= 1.0 {
                s.tokens -= 1.0;
                Ok(())
            } else {
                Err(Duration::from_secs_f64((1.0 - s.tokens) / self.refill_per_sec))
            }
        })
    }

    /// Wait for a token and take it. Returns how long it waited.
    pub async fn take(&self) -> Duration {
        let start = Instant::now();
        while let Err(wait) = self.try_take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        start.elapsed()
    }

    /// ARM said `remaining` writes are left in the bucket: believe it.
    pub fn remaining(&self, remaining: u64, now: Instant) {
        self.with_state(now, |s| s.tokens = s.tokens.min(remaining as f64));
    }

    /// ARM refused a write from the principal's bucket: nothing until
    /// `retry_after` has passed.
    pub fn throttled(&self, retry_after: Duration, now: Instant) {
        self.with_state(now, |s| {
            s.tokens = 0.0;
            s.closed_until = Some(s.closed_until.unwrap_or(now).max(now + retry_after));
        });
    }
}

/// One [`Bucket`] per (subscription, identity, quota), made on first use.
#[derive(Debug, Default)]
pub struct Buckets(Mutex<HashMap<(String, Quota), Arc<Bucket>>>);

impl Buckets {
    /// The `quota` bucket of `identity` (any stable name of the principal)
    /// in `subscription`.
    pub fn of(&self, subscription: &str, identity: &str, quota: Quota) -> Arc<Bucket> {
        let key = (format!("{}/{identity}", subscription.to_ascii_lowercase()), quota);
        let (capacity, refill) = match quota {
            Quota::Writes => ARM_WRITES,
            Quota::Reads => ARM_READS,
        };
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key).or_insert_with(|| Arc::new(Bucket::new(capacity, refill))).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_full_bucket_then_the_refill_rate() {
        let b = Bucket::new(3.0, 10.0);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.try_take(t), Ok(()));
        }
        assert_eq!(b.try_take(t), Err(100 * MS), "one token per 100 ms at 10/s");
        assert_eq!(b.try_take(t + 50 * MS), Err(50 * MS));
        assert_eq!(b.try_take(t + 100 * MS), Ok(()));
        // Idle time refills no further than the capacity.
        let later = t + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.try_take(later), Ok(()));
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn arms_count_lowers_the_copy_and_a_429_closes_it() {
        let b = Bucket::new(200.0, 10.0);
        let t = Instant::now();
        b.remaining(1, t);
        assert_eq!(b.try_take(t), Ok(()));
        assert_eq!(b.try_take(t), Err(100 * MS));
        b.throttled(Duration::from_secs(2), t);
        assert_eq!(b.try_take(t + Duration::from_secs(1)), Err(Duration::from_secs(1)), "closed, whatever refilled");
        assert_eq!(b.try_take(t + Duration::from_secs(2)), Ok(()), "open again, with what refilled since");
        // A higher count from ARM never adds tokens.
        b.remaining(150, t + Duration::from_secs(2));
        assert_eq!(b.try_take(t + Duration::from_secs(2)), Ok(()));
    }

    #[test]
    fn one_bucket_per_subscription_identity_and_quota() {
        let all = Buckets::default();
        let a = all.of("SUB", "app/t/c", Quota::Writes);
        assert!(
            Arc::ptr_eq(&a, &all.of("sub", "app/t/c", Quota::Writes)),
            "subscription ids compare case-insensitively"
        );
        assert!(!Arc::ptr_eq(&a, &all.of("sub", "app/t/c", Quota::Reads)));
        assert!(!Arc::ptr_eq(&a, &all.of("sub", "app/t/other", Quota::Writes)));
        assert!(!Arc::ptr_eq(&a, &all.of("sub2", "app/t/c", Quota::Writes)));
    }

    #[tokio::test(start_paused = true)]
    async fn take_waits_for_the_refill() {
        let b = Bucket::new(1.0, 10.0);
        assert_eq!(b.take().await, Duration::ZERO);
        assert_eq!(b.take().await, 100 * MS, "paused clock: exactly one refill interval");
    }
}
