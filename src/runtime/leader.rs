//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Only the leader reconciles. A replica that loses the lease stops
//! reconciling at once and exits, so Kubernetes restarts it as a clean
//! follower; a crashed leader's lease expires after its duration.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;

/// Wait until this replica holds the lease. Returns a receiver that turns
/// `false` if leadership is lost.
pub async fn acquire(
    client: Client,
    namespace: &str,
    lease_name: &str,
    identity: &str,
    duration: Duration,
) -> anyhow::Result<(watch::Receiver<bool>, tokio::task::JoinHandle<()>)> {
    let secs = duration.as_secs().max(2);
    let grace = (secs / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, lease_name)
        .with_namespace(namespace)
        .with_parameters(LeaseParams::new(identity, secs, grace).with_field_manager(format!("dbgrant-{identity}")))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("leader election on Lease {namespace}/{lease_name}: {e}"))?;
    let (mut rx, task) = manager.watch().await;
    tracing::info!(lease = %format!("{namespace}/{lease_name}"), %identity, "waiting to become leader");
    while !*rx.borrow_and_update() {
        rx.changed().await.map_err(|_| anyhow::anyhow!("leader election task ended"))?;
    }
    tracing::info!(%identity, "became leader");
    let handle = tokio::spawn(async move {
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "leader election failed"),
            Err(e) => tracing::error!(error = %e, "leader election task panicked"),
        }
    });
    Ok((rx, handle))
}
