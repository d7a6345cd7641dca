//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Only the leader reconciles. A replica that loses the lease stops
//! reconciling at once and exits, so Kubernetes restarts it as a clean
//! follower; a crashed leader's lease expires after its duration. A leader
//! that stops on purpose (SIGTERM: a rollout, a drain) releases the Lease
//! once its reconciles have finished, so a follower takes over at once
//! instead of waiting the duration out.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use tokio::{sync::watch, task::JoinHandle};

use super::watch::retry_backoff;

/// This replica holds the Lease, renewed in the background until
/// [`Leadership::lost`] resolves or [`Leadership::release`] is called.
pub struct Leadership {
    state: watch::Receiver<bool>,
    renewer: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    identity: String,
}

/// Wait until this replica holds the lease.
///
/// The lease manager's follower reads the Lease only when the holder's term
/// would end (up to `duration` away), so a Lease released on purpose would
/// sit free until then. A watch on the Lease wakes the follower instead:
/// when it sees the Lease free, a fresh manager (which reads it at once)
/// takes it, as client-go's elector does within its retry period.
pub async fn acquire(
    client: Client,
    namespace: &str,
    lease_name: &str,
    identity: &str,
    duration: Duration,
) -> anyhow::Result<Leadership> {
    let secs = duration.as_secs().max(2);
    let grace = (secs / 3).max(1);
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    // Backoff on errors (a Role without list/watch on Leases, say): the
    // follower then simply waits out the holder's term, as before.
    let freed = watcher(leases, watcher::Config::default().fields(&format!("metadata.name={lease_name}")))
        .backoff(retry_backoff())
        .applied_objects()
        .filter_map(|lease| async move {
            let lease = lease.inspect_err(|e| tracing::debug!(error = %e, "watching the Lease")).ok()?;
            lease.spec.is_none_or(|s| s.holder_identity.is_none_or(|h| h.is_empty())).then_some(())
        });
    let mut freed = std::pin::pin!(freed);
    tracing::info!(lease = %format!("{namespace}/{lease_name}"), %identity, "waiting to become leader");
    loop {
        let manager = LeaseManagerBuilder::new(client.clone(), lease_name)
            .with_namespace(namespace)
            .with_parameters(LeaseParams::new(identity, secs, grace).with_field_manager(format!("dbgrant-{identity}")))
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("leader election on Lease {namespace}/{lease_name}: {e}"))?;
        // The manager's task renews the Lease while a receiver of `state`
        // lives and releases it when the last one is dropped.
        let (mut state, renewer) = manager.watch().await;
        let became_leader = async {
            while !*state.borrow_and_update() {
                state.changed().await.map_err(|_| anyhow::anyhow!("leader election task ended"))?;
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = became_leader => {
                r?;
                tracing::info!(%identity, "became leader");
                return Ok(Leadership { state, renewer, identity: identity.to_string() });
            }
            Some(()) = freed.next() => {
                // Start over with a manager that reads the Lease now; this
                // one would sleep until the old term's end.
                drop(state);
                let _ = renewer.await;
                tracing::debug!(%identity, "the Lease was freed; trying to take it");
            }
        }
    }
}

impl Leadership {
    /// Resolves when this replica no longer holds the Lease (another took
    /// it, or renewing stopped).
    pub async fn lost(&mut self) {
        while self.state.changed().await.is_ok() {
            if !*self.state.borrow() {
                return;
            }
        }
    }

    /// Give the Lease up: call only once reconciling has stopped, so the
    /// next leader never overlaps with this one. Waits at most `timeout`
    /// for the apiserver; if that fails the Lease simply expires.
    pub async fn release(self, timeout: Duration) {
        let Self { state, renewer, identity } = self;
        drop(state);
        match tokio::time::timeout(timeout, renewer).await {
            Ok(Ok(Ok(_))) => tracing::info!(%identity, "released the lease"),
            Ok(Ok(Err(e))) => tracing::warn!(%identity, error = %e, "releasing the lease failed; it expires instead"),
            Ok(Err(e)) => tracing::error!(%identity, error = %e, "lease task panicked"),
            Err(_) => tracing::warn!(%identity, ?timeout, "releasing the lease timed out; it expires instead"),
        }
    }
}
