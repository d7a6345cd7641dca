//! ARM's request throttling: a token bucket per subscription and principal
//! (reads and writes separately), and Cosmos DB's per-account budget of
//! control-plane writes in a sliding window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A token bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketLimit {
    /// Requests the full bucket holds.
    pub capacity: u32,
    /// Tokens added per second.
    pub refill_per_sec: f64,
}

impl BucketLimit {
    /// A bucket of `capacity` refilling `refill_per_sec` tokens a second.
    pub fn new(capacity: u32, refill_per_sec: f64) -> Self {
        Self { capacity, refill_per_sec }
    }
}

/// At most `max` requests in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimit {
    /// Requests allowed per window.
    pub max: u32,
    /// Window length.
    pub window: Duration,
}

impl WindowLimit {
    /// `max` per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self { max, window }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn full(limit: BucketLimit) -> Self {
        Self { tokens: f64::from(limit.capacity), updated: Instant::now() }
    }

    fn refill(&mut self, limit: BucketLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.refill_per_sec).min(f64::from(limit.capacity));
        self.updated = now;
    }

    /// Takes one token: `Ok(remaining)` or `Err(seconds to wait)`.
    pub fn take(&mut self, limit: BucketLimit) -> Result<u32, u64> {
        self.refill(limit, Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(self.tokens.floor() as u32)
        } else if limit.refill_per_sec <= 0.0 {
            Err(3600)
        } else {
            Err(((1.0 - self.tokens) / limit.refill_per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SlidingWindow {
    events: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Records one event: `Ok(remaining)` or `Err(seconds until a slot frees)`.
    pub fn take(&mut self, limit: WindowLimit) -> Result<u32, u64> {
        let now = Instant::now();
        while self.events.front().is_some_and(|t| now.saturating_duration_since(*t) >= limit.window) {
            self.events.pop_front();
        }
        if (self.events.len() as u32) < limit.max {
            self.events.push_back(now);
            return Ok(limit.max - self.events.len() as u32);
        }
        let oldest = self.events.front().copied().unwrap_or(now);
        let wait = limit.window.saturating_sub(now.saturating_duration_since(oldest));
        Err(wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_says_when_to_retry() {
        let limit = BucketLimit::new(2, 0.5);
        let mut bucket = TokenBucket::full(limit);
        assert_eq!(bucket.take(limit), Ok(1));
        assert_eq!(bucket.take(limit), Ok(0));
        assert_eq!(bucket.take(limit), Err(2));
    }

    #[test]
    fn window_counts_and_frees() {
        let limit = WindowLimit::new(2, Duration::from_millis(50));
        let mut window = SlidingWindow::default();
        assert_eq!(window.take(limit), Ok(1));
        assert_eq!(window.take(limit), Ok(0));
        assert_eq!(window.take(limit), Err(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(window.take(limit), Ok(1));
    }
}
