//! Latency summaries.

use std::time::Duration;

use serde_json::{Value, json};

/// Percentiles of a set of durations (nearest rank), in milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Summary {
    /// Summarise `samples` (any order).
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        if ms.is_empty() {
            return Self::default();
        }
        Self {
            count: ms.len(),
            p50: percentile(&ms, 50.0),
            p95: percentile(&ms, 95.0),
            p99: percentile(&ms, 99.0),
            max: *ms.last().unwrap_or(&0.0),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }

    /// As JSON (milliseconds, one decimal).
    pub fn to_json(&self) -> Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        json!({
            "count": self.count,
            "p50Ms": r(self.p50),
            "p95Ms": r(self.p95),
            "p99Ms": r(self.p99),
            "maxMs": r(self.max),
            "meanMs": r(self.mean),
        })
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at
/// least `p`% of the samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        let s = Summary::of(&[Duration::from_millis(10), Duration::from_millis(30), Duration::from_millis(20)]);
        assert_eq!((s.count, s.p50, s.p99, s.max), (3, 20.0, 30.0, 30.0));
    }
}
