//! Shared by the fault scenarios (`faults_mongo.rs`, `faults_apiserver.rs`,
//! `faults_cosmos.rs`): the knobs, the seeded random numbers, and what the
//! MongoDB and Cosmos DB models both use. Every scenario is bounded in
//! time, runs on loopback only, prints one `reliability:` summary line with
//! its counts (on the real stderr, so CI logs show it even when the test
//! passes), and ends with a convergence check against a model of what the
//! test applied.
//!
//! Knobs (environment):
//! - `DBGRANT_FAULT_SEED`: seed of the churn and kill schedule (printed);
//! - `DBGRANT_FAULT_OUTAGE_SECS`: backend outage length (default 60);
//! - `DBGRANT_FAULT_KILLS`: SIGKILLs in the crash scenario (default 12);
//! - `DBGRANT_FAULT_FAILOVERS`: leader kills in the failover scenario
//!   (default 2);
//! - `DBGRANT_FAULT_APISERVER_OUTAGE_SECS` / `DBGRANT_FAULT_FREEZE_SECS`:
//!   how long the operator is cut off from the apiserver and how long the
//!   control plane is frozen (defaults 15 and 8);
//! - `DBGRANT_FAULT_LONG=1`: the long version (more ops, kills, failovers).

use std::{io::Write, time::Duration};

use anyhow::{Result, bail};
use dbgrant_harness::{Operator, cluster::condition};
use kube::api::DynamicObject;

// ------------------------------------------------------------------ knobs

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn long() -> bool {
    std::env::var("DBGRANT_FAULT_LONG").is_ok_and(|v| v == "1" || v == "true")
}

/// The seed of every random schedule in the fault scenarios: `DBGRANT_FAULT_SEED`,
/// or a fixed default so CI runs are reproducible.
pub fn seed() -> u64 {
    env_u64("DBGRANT_FAULT_SEED", 0x00db_9a17)
}

/// One line per scenario on the process's real stderr: libtest captures
/// `eprintln!` of passing tests, this is meant to be seen in CI logs.
pub fn summary(line: &str) {
    let _ = writeln!(std::io::stderr(), "reliability: {line}");
}

pub fn suffix(ns: &str) -> &str {
    ns.rsplit('-').next().unwrap_or("0")
}

// -------------------------------------------------------------------- rng

/// xorshift64*: tiny, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ------------------------------------------------ shared by both models

/// Entra group object ids the churns draw their subjects from.
pub const GROUPS: [&str; 6] = [
    "0a5c7b2e-1d3f-4e6a-8b9c-0d1e2f3a4b01",
    "1b6d8c3f-2e4a-4f7b-9cad-1e2f3a4b5c02",
    "2c7e9d4a-3f5b-4a8c-adbe-2f3a4b5c6d03",
    "3d8fae5b-4a6c-4b9d-becf-3a4b5c6d7e04",
    "4e9abf6c-5b7d-4cae-cfd0-4b5c6d7e8f05",
    "5fa0c07d-6c8e-4dbf-d0e1-5c6d7e8f9a06",
];

/// Binding changes a churn made.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpCounts {
    pub creates: u64,
    pub updates: u64,
    pub deletes: u64,
}

impl OpCounts {
    pub fn total(&self) -> u64 {
        self.creates + self.updates + self.deletes
    }
}

/// The Ready condition of an object as `(status, reason, message)`.
pub fn ready_of(o: &DynamicObject) -> Option<(String, String, String)> {
    let c = condition(o, "Ready")?;
    Some((
        c["status"].as_str().unwrap_or_default().into(),
        c["reason"].as_str().unwrap_or_default().into(),
        c["message"].as_str().unwrap_or_default().into(),
    ))
}

/// Fails when the operator log shows a panic.
pub fn no_panics(op: &Operator) -> Result<()> {
    let log = op.log_text();
    if log.contains("panicked") {
        bail!("the operator panicked:\n{}", op.log_tail(80));
    }
    Ok(())
}
