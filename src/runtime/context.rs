//! State shared by every controller.

use std::{sync::Arc, time::Duration};

use kube::Client;

use super::{audit::Auditor, events::Publisher, finalize::Ensured, http::Health, metrics::Metrics};

/// What every reconcile gets.
pub struct Context {
    /// Kubernetes client (the operator's own identity).
    pub client: Client,
    /// The operator namespace, where target Secrets live.
    pub namespace: String,
    /// Publishes Events about dbgrant's objects.
    pub events: Publisher,
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Full resync interval.
    pub resync: Duration,
    /// The audit trail of every backend write.
    pub audit: Arc<Auditor>,
    /// Whether a reconcile's writes are also listed in an Event.
    pub audit_events: bool,
    /// The finalizer patches made that the caches have not shown yet.
    pub ensured: Ensured,
}
