//! Prometheus metrics, exposed on `/metrics`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels naming a kind (`MongoRoleBinding`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The resource kind.
    pub kind: String,
}

/// Labels for one stage of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The resource kind.
    pub kind: String,
    /// [`Stage`], by name.
    pub stage: &'static str,
}

/// Where a reconcile's time goes, for `dbgrant_reconcile_stage_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// From the watch event that asked for it to the reconcile's start:
    /// the controller's queue (and, after a restart, the index priming).
    Queued,
    /// Adding a binding's finalizer.
    Finalizer,
    /// Waiting for the target's write lock (MongoDB: one sync per target
    /// at a time, a full resync included).
    Lock,
    /// The database or ARM calls of a binding's sync.
    Backend,
    /// Writing the status (and an Event on a Ready transition).
    Status,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Finalizer => "finalizer",
            Stage::Lock => "lock",
            Stage::Backend => "backend",
            Stage::Status => "status",
        }
    }
}

/// Labels for a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The resource kind.
    pub kind: String,
    /// [`crate::Error::category`].
    pub category: String,
}

/// Labels for one backend operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// `mongodb` or `cosmosdb`.
    pub backend: String,
    /// Operation, such as `rolesInfo` or `createRole`.
    pub operation: String,
    /// `ok` or `error`.
    pub outcome: String,
}

/// Labels for detected drift.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `mongodb` or `cosmosdb`.
    pub backend: String,
    pub target: String,
}

/// Labels for a backend asking dbgrant to slow down.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    /// `mongodb` or `cosmosdb`.
    pub backend: String,
    pub target: String,
    /// Why: `429`, `503`, `412` (account lock), `budget` (dbgrant's own
    /// per-account write budget) or `pending` (an operation still running).
    pub reason: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started, by kind.
    pub reconciles: Family<KindLabels, Counter>,
    /// Reconciles that failed, by kind and error category.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds, by kind.
    pub reconcile_duration: Family<KindLabels, Histogram>,
    /// Time spent in each [`Stage`] of a reconcile, by kind and stage.
    pub reconcile_stages: Family<StageLabels, Histogram>,
    /// Objects whose watch event no reconcile has picked up yet, with when
    /// the first such event arrived.
    arrivals: Mutex<HashMap<String, Instant>>,
    /// Backend operations, by backend, operation and outcome.
    pub backend_operations: Family<BackendLabels, Counter>,
    /// Out-of-band changes found and corrected, by backend and target.
    pub drift_corrections: Family<DriftLabels, Counter>,
    /// Times a backend made dbgrant wait, by backend, target and reason.
    pub throttles: Family<ThrottleLabels, Counter>,
    /// Writes an Observe-mode target's last resync planned and did not
    /// make, by backend and target (0 once it enforces).
    pub pending_writes: Family<DriftLabels, Gauge>,
    /// 1 while this replica is the leader.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("dbgrant"),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            reconcile_stages: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            arrivals: Mutex::default(),
            backend_operations: Family::default(),
            drift_corrections: Family::default(),
            throttles: Family::default(),
            pending_writes: Family::default(),
            leader: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("reconciles", "Reconciles started", m.reconciles.clone());
        r.register("reconcile_errors", "Reconciles that failed", m.reconcile_errors.clone());
        r.register("reconcile_duration_seconds", "Reconcile duration", m.reconcile_duration.clone());
        let stages = "Reconcile time by stage: queued (watch event to start), finalizer, lock, backend, status";
        r.register("reconcile_stage_seconds", stages, m.reconcile_stages.clone());
        r.register("backend_operations", "Calls to MongoDB and Azure", m.backend_operations.clone());
        r.register("drift_corrections", "Out-of-band changes corrected", m.drift_corrections.clone());
        r.register("backend_throttles", "Times a backend made dbgrant wait", m.throttles.clone());
        let pending = "Writes an Observe-mode target would make";
        r.register("pending_writes", pending, m.pending_writes.clone());
        r.register("leader", "1 while this replica leads", m.leader.clone());
        m
    }
}

impl Metrics {
    /// Count a reconcile and time it until the returned guard drops.
    pub fn reconcile(&self, kind: &str) -> ReconcileTimer<'_> {
        let labels = KindLabels { kind: kind.to_string() };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer { metrics: self, labels, start: Instant::now() }
    }

    /// Note a watch event for `object` (`kind/namespace/name`) that a
    /// reconcile will pick up; the first one not yet picked up counts.
    pub fn arrived(&self, object: String) {
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).entry(object).or_insert_with(Instant::now);
    }

    /// A reconcile of `object` starts: record how long its event waited.
    pub fn picked_up(&self, kind: &str, object: &str) {
        let arrived = self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).remove(object);
        if let Some(t) = arrived {
            self.stage(kind, Stage::Queued, t.elapsed());
        }
    }

    /// Record time spent in one stage of a reconcile of `kind`.
    pub fn stage(&self, kind: &str, stage: Stage, took: Duration) {
        let labels = StageLabels { kind: kind.to_string(), stage: stage.name() };
        self.reconcile_stages.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Count a failed reconcile.
    pub fn reconcile_failed(&self, kind: &str, error: &crate::Error) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { kind: kind.to_string(), category: error.category().to_string() })
            .inc();
    }

    /// Set `target`'s pending writes (Observe mode; 0 when enforcing).
    pub fn pending(&self, backend: &str, target: &str, writes: usize) {
        let labels = DriftLabels { backend: backend.to_string(), target: target.to_string() };
        self.pending_writes.get_or_create(&labels).set(writes as i64);
    }

    /// Count one backend operation.
    pub fn backend_op(&self, backend: &str, operation: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.backend_operations
            .get_or_create(&BackendLabels {
                backend: backend.to_string(),
                operation: operation.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Count a backend making dbgrant wait.
    pub fn throttled(&self, backend: &str, target: &str, reason: &str) {
        self.throttles
            .get_or_create(&ThrottleLabels {
                backend: backend.to_string(),
                target: target.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Render the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: KindLabels,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.get_or_create(&self.labels).observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_families() {
        let m = Metrics::default();
        drop(m.reconcile("MongoRoleBinding"));
        m.backend_op("mongodb", "createRole", true);
        m.reconcile_failed("MongoTarget", &crate::Error::Config("x".into()));
        m.throttled("cosmosdb", "acct", "429");
        m.arrived("MongoRoleBinding/team/b".into());
        m.arrived("MongoRoleBinding/team/b".into());
        m.picked_up("MongoRoleBinding", "MongoRoleBinding/team/b");
        m.picked_up("MongoRoleBinding", "MongoRoleBinding/team/b");
        m.stage("MongoRoleBinding", Stage::Backend, Duration::from_millis(3));
        let text = m.render();
        for name in [
            "dbgrant_reconciles_total{kind=\"MongoRoleBinding\"} 1",
            "dbgrant_reconcile_duration_seconds_count{kind=\"MongoRoleBinding\"} 1",
            "dbgrant_backend_operations_total{backend=\"mongodb\",operation=\"createRole\",outcome=\"ok\"} 1",
            "dbgrant_reconcile_errors_total{kind=\"MongoTarget\",category=\"config\"} 1",
            "dbgrant_backend_throttles_total{backend=\"cosmosdb\",target=\"acct\",reason=\"429\"} 1",
            // Two events before the pick-up are one wait; a second pick-up
            // with nothing waiting records nothing.
            "dbgrant_reconcile_stage_seconds_count{kind=\"MongoRoleBinding\",stage=\"queued\"} 1",
            "dbgrant_reconcile_stage_seconds_sum{kind=\"MongoRoleBinding\",stage=\"backend\"} 0.003",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
