//! Prometheus metrics, exposed on `/metrics`.

use std::time::Instant;

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
    /// Backend operations, by backend, operation and outcome.
    pub backend_operations: Family<BackendLabels, Counter>,
    /// Out-of-band changes found and corrected, by backend and target.
    pub drift_corrections: Family<DriftLabels, Counter>,
    /// Times a backend made dbgrant wait, by backend, target and reason.
    pub throttles: Family<ThrottleLabels, Counter>,
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
            backend_operations: Family::default(),
            drift_corrections: Family::default(),
            throttles: Family::default(),
            leader: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("reconciles", "Reconciles started", m.reconciles.clone());
        r.register("reconcile_errors", "Reconciles that failed", m.reconcile_errors.clone());
        r.register("reconcile_duration_seconds", "Reconcile duration", m.reconcile_duration.clone());
        r.register("backend_operations", "Calls to MongoDB and Azure", m.backend_operations.clone());
        r.register("drift_corrections", "Out-of-band changes corrected", m.drift_corrections.clone());
        r.register("backend_throttles", "Times a backend made dbgrant wait", m.throttles.clone());
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

    /// Count a failed reconcile.
    pub fn reconcile_failed(&self, kind: &str, error: &crate::Error) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { kind: kind.to_string(), category: error.category().to_string() })
            .inc();
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
        let text = m.render();
        for name in [
            "dbgrant_reconciles_total{kind=\"MongoRoleBinding\"} 1",
            "dbgrant_reconcile_duration_seconds_count{kind=\"MongoRoleBinding\"} 1",
            "dbgrant_backend_operations_total{backend=\"mongodb\",operation=\"createRole\",outcome=\"ok\"} 1",
            "dbgrant_reconcile_errors_total{kind=\"MongoTarget\",category=\"config\"} 1",
            "dbgrant_backend_throttles_total{backend=\"cosmosdb\",target=\"acct\",reason=\"429\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
