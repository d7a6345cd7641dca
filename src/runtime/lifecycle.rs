//! What every controller does the same way around its own apply and
//! cleanup, written once: the finalizer-wrapped reconcile and the error
//! policy. A backend's controller supplies only how it applies and how it
//! revokes.
//!
//! ```text
//!   reconcile(obj) ─▶ [add finalizer first] ─▶ kube finalizer ─┬─ Apply   ─▶ apply(obj)
//!                                                              └─ Cleanup ─▶ cleanup(obj)
//!   error ─▶ error_policy: Wait → log, requeue when asked (not a failure)
//!                          other → warn, count, requeue (Retry-After, else transient/permanent backoff)
//! ```

use std::{fmt::Debug, future::Future, sync::Arc, time::Duration};

use kube::{
    Api, Resource,
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
    },
};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    context::Context,
    metrics::{DriftLabels, Metrics},
    status,
};
use crate::{
    Error, Failure, Result,
    api::{
        conditions::{Outcome, reason},
        target::{self, TargetView},
    },
    plan::index::{BindingIndex, Contribution, Grant},
};

/// When a failed reconcile looks again, unless the error says when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// After a transient failure (the backend unreachable, failing over).
    pub transient: Duration,
    /// After any other failure (it needs a change somewhere).
    pub permanent: Duration,
}

impl Retry {
    /// Bindings: soon after a transient failure, a minute otherwise.
    pub const BINDING: Retry = Retry { transient: Duration::from_secs(15), permanent: Duration::from_secs(60) };
    /// Targets and role definitions: every 30 seconds.
    pub const TARGET: Retry = Retry { transient: NOT_READY_RETRY, permanent: NOT_READY_RETRY };
}

/// How long a target that is not Ready waits before the next attempt.
pub const NOT_READY_RETRY: Duration = Duration::from_secs(30);

/// How often a deleted target looks again for the bindings (and role
/// definitions) it waits for.
pub const TERMINATING_POLL: Duration = Duration::from_secs(3);

/// How long a binding whose target is not Ready (or is being deleted)
/// waits before it looks again by itself, on both backends: it is also
/// woken when the target changes, but that watch and the target cache it
/// reads are separate streams.
pub const TARGET_WAIT: Duration = Duration::from_secs(10);

/// Reconcile `obj` under `finalizer`: `apply` while it lives, `cleanup`
/// once it is deleted (the finalizer goes when `cleanup` succeeds). With
/// `add_first`, the finalizer is added in this same pass before `apply`
/// runs (bindings: nothing is granted before the finalizer is in place,
/// and a new object costs one reconcile, not two).
pub async fn reconcile<K, A, C, FutA, FutC>(
    api: Api<K>,
    finalizer_name: &str,
    add_first: bool,
    obj: Arc<K>,
    apply: A,
    cleanup: C,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    A: FnOnce(Arc<K>) -> FutA,
    C: FnOnce(Arc<K>) -> FutC,
    FutA: Future<Output = Result<Action>>,
    FutC: Future<Output = Result<Action>>,
{
    let obj = if add_first { super::finalize::ensure(&api, finalizer_name, obj).await? } else { obj };
    finalizer(&api, finalizer_name, obj, |event| async move {
        match event {
            Event::Apply(obj) => apply(obj).await,
            Event::Cleanup(obj) => cleanup(obj).await,
        }
    })
    .await
    .map_err(Error::from)
}

/// The error policy of every controller. Waiting (a deleted target for
/// its bindings, a revocation for the backend) is logged and requeued when
/// it asked, and is not counted as a failure; any other error is logged as
/// a warning, counted under `kind`, and requeued after the backend's
/// Retry-After, else `retry` by whether the error is transient.
pub fn error_policy(kind: &'static str, object: &str, metrics: &Metrics, error: &Error, retry: Retry) -> Action {
    if matches!(error, Error::Wait { .. }) {
        tracing::info!(kind, object, reason = %error, "waiting");
    } else {
        tracing::warn!(kind, object, error = %error, "reconcile failed");
        metrics.reconcile_failed(kind, error);
    }
    let fallback = if error.is_transient() { retry.transient } else { retry.permanent };
    Action::requeue(error.retry_after().unwrap_or(fallback).max(Duration::from_secs(1)))
}

/// Put every binding in `bindings` that dbgrant has applied before (it
/// carries `finalizer`) into `idx` with its current contribution, before
/// any reconcile writes, so no reconcile after a restart shrinks a backend
/// object to a partial union. A binding without the finalizer was never
/// applied (the finalizer comes first); it joins the index at its first
/// reconcile — priming it would keep its grant in the index for good if it
/// were deleted before then, since a deletion without the finalizer never
/// reaches cleanup. Returns how many bindings the index holds.
pub fn prime<K, G>(
    idx: &mut BindingIndex<G>,
    bindings: Vec<Arc<K>>,
    finalizer_name: &str,
    key: impl Fn(&K) -> String,
    contribution: impl Fn(&K) -> Option<Contribution<G>>,
) -> usize
where
    K: Resource,
    G: Grant,
{
    for b in bindings {
        if !b.meta().finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == finalizer_name)) {
            continue;
        }
        if let Some(c) = contribution(&b) {
            idx.upsert(&key(&b), c);
        }
    }
    idx.len()
}

/// Why a live binding cannot be applied through its target `t` (a
/// `kind`) now, if it cannot, and when to look again by itself: the
/// target is being deleted (it waits for this binding, which keeps its
/// access until it is deleted too: woken by the binding's own changes),
/// or it is not Ready yet (also woken when the target changes, but that
/// watch and the target cache are separate streams, so look again after
/// [`TARGET_WAIT`] in case the cache lagged behind).
pub fn target_unusable<T: TargetView>(kind: &str, t: &T) -> Option<(Outcome, Option<Duration>)> {
    let name = t.meta().name.as_deref().unwrap_or_default();
    if t.meta().deletion_timestamp.is_some() {
        let why = format!(
            "{kind} {name} is being deleted and waits for this binding; delete the binding to revoke its access"
        );
        return Some((Outcome::stalled(reason::TARGET_NOT_READY, why), None));
    }
    if !target::is_ready(t) {
        let why = format!("waiting for {kind} {name} to be Ready");
        return Some((Outcome::progressing(reason::TARGET_NOT_READY, why), Some(TARGET_WAIT)));
    }
    None
}

/// The error a binding's revocation returns while its target is not
/// usable: it waits (the finalizer keeps the binding) and retries.
pub fn revocation_waits(backend: &'static str, target: &str) -> Error {
    Error::Backend {
        backend,
        target: target.into(),
        message: "target is not Ready; revocation waits for it (the finalizer keeps the binding until then)".into(),
        failure: Failure::Transient,
    }
}

/// What still uses a deleted target (its bindings, and on Cosmos DB its
/// role definitions), by name, and how many of them are being deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dependants {
    /// Names as the message shows them, sorted.
    pub names: Vec<String>,
    /// How many of them are being deleted already.
    pub deleting: usize,
}

impl Dependants {
    /// Whether nothing uses the target.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// "Terminating: waiting for N `what` to be deleted (a, b, … and M
    /// more); each revokes its access first", naming at most five.
    pub fn waiting_message(&self, what: &str) -> String {
        let shown: Vec<&str> = self.names.iter().take(5).map(String::as_str).collect();
        let more = if self.names.len() > shown.len() {
            format!(" and {} more", self.names.len() - shown.len())
        } else {
            String::new()
        };
        format!(
            "Terminating: waiting for {} {what} to be deleted ({}{more}); each revokes its access first",
            self.names.len(),
            shown.join(", ")
        )
    }

    /// Ready=False `Terminating`: in progress while they are all being
    /// deleted, stalled while some are not (someone has to delete them).
    pub fn outcome(&self, message: String) -> Outcome {
        if self.deleting == self.names.len() {
            Outcome::progressing(reason::TERMINATING, message)
        } else {
            Outcome::stalled(
                reason::TERMINATING,
                format!("{message}; delete them (or point them elsewhere) to let the target go"),
            )
        }
    }
}

/// A resync restored what was changed out of band on `target`: count it
/// (`dbgrant_drift_corrections_total`), log it, and publish a Warning
/// Event `DriftCorrected` naming what was restored.
pub async fn report_drift<K>(ctx: &Context, backend: &'static str, target: &K, name: &str, restored: &[String])
where
    K: Resource<DynamicType = ()>,
{
    if restored.is_empty() {
        return;
    }
    ctx.metrics
        .drift_corrections
        .get_or_create(&DriftLabels { backend: backend.into(), target: name.to_string() })
        .inc_by(restored.len() as u64);
    tracing::warn!(target = %name, restored = ?restored, "drift corrected");
    let note = format!("restored out-of-band changes to {}", restored.join("; "));
    status::publish_warning(ctx, target, reason::DRIFT_CORRECTED, &note).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::metrics::ErrorLabels;

    fn failures(metrics: &Metrics, kind: &str, category: &str) -> u64 {
        metrics.reconcile_errors.get_or_create(&ErrorLabels { kind: kind.into(), category: category.into() }).get()
    }

    fn backend(transient: bool) -> Error {
        let failure = if transient { Failure::Transient } else { Failure::Refused };
        Error::Backend { backend: "mongodb", target: "t".into(), message: "m".into(), failure }
    }

    #[test]
    fn a_deleted_target_says_what_it_waits_for() {
        let names: Vec<String> = (1..=7).map(|i| format!("ns/b{i}")).collect();
        let all = Dependants { names: names.clone(), deleting: 7 };
        let msg = all.waiting_message("MongoRoleBinding(s)");
        assert_eq!(
            msg,
            "Terminating: waiting for 7 MongoRoleBinding(s) to be deleted (ns/b1, ns/b2, ns/b3, ns/b4, ns/b5 and 2 more); each revokes its access first"
        );
        assert_eq!(all.outcome(msg.clone()).progress, crate::api::conditions::Progress::InProgress);
        let some = Dependants { names, deleting: 3 };
        let o = some.outcome(msg);
        assert_eq!((o.reason, o.progress), (reason::TERMINATING, crate::api::conditions::Progress::Stalled));
        assert!(o.message.ends_with("to let the target go"));
    }

    #[test]
    fn waiting_follows_its_own_retry_and_is_not_a_failure() {
        let metrics = Metrics::default();
        let wait = Error::Wait {
            backend: "mongodb",
            target: "t".into(),
            message: "for 2 bindings".into(),
            retry_after: Duration::from_secs(3),
        };
        assert_eq!(
            error_policy("MongoTarget", "t", &metrics, &wait, Retry::TARGET),
            Action::requeue(Duration::from_secs(3))
        );
        assert_eq!(failures(&metrics, "MongoTarget", "waiting"), 0);
    }

    #[test]
    fn failures_back_off_by_kind_and_are_counted() {
        let metrics = Metrics::default();
        let b = |e: &Error| error_policy("MongoRoleBinding", "ns/b", &metrics, e, Retry::BINDING);
        assert_eq!(b(&backend(true)), Action::requeue(Duration::from_secs(15)));
        assert_eq!(b(&backend(false)), Action::requeue(Duration::from_secs(60)));
        assert_eq!(failures(&metrics, "MongoRoleBinding", "backend-transient"), 1);
        assert_eq!(failures(&metrics, "MongoRoleBinding", "backend"), 1);
        let t = error_policy("MongoTarget", "t", &metrics, &backend(false), Retry::TARGET);
        assert_eq!(t, Action::requeue(Duration::from_secs(30)));
    }
}
