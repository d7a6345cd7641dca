//! What every controller does the same way around its own apply and
//! cleanup, written once: the finalizer-wrapped reconcile and the error
//! policy. A backend's context implements [`BackendContext`], and
//! [`Lifecycle`] once for each kind it reconciles (how it applies and how
//! it revokes); `operator` runs each with [`reconcile`] and
//! [`error_policy`].
//!
//! ```text
//!   reconcile(obj) ─▶ prime ─▶ [binding: add finalizer] ─▶ kube finalizer ─┬─ Apply   ─▶ C::apply(obj)
//!                                                                          └─ Cleanup ─▶ C::cleanup(obj)
//!   error ─▶ error_policy: Wait → log, requeue when asked (not a failure)
//!                          other → warn, count, requeue (Retry-After, else transient/permanent backoff)
//! ```

use std::{
    fmt::Debug,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{
    Resource,
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
        reflector::Store,
    },
};
use serde::Serialize;
use tokio::sync::OnceCell;

use super::{
    context::Context,
    metrics::{DriftLabels, Metrics, Stage},
    object::{self, Managed, key},
    status,
};
use crate::{
    Error, Failure, Result,
    api::{
        conditions::{ObjectStatus, Outcome, reason},
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

/// What a backend's context gives each of its controllers.
pub trait BackendContext: Send + Sync + 'static {
    /// The backend's label in metrics and errors.
    const BACKEND: &'static str;
    /// The operator-wide context.
    fn shared(&self) -> &Context;
    /// Wait, once, until the backend's binding index holds every binding
    /// applied before (see [`prime`]); later calls return at once.
    fn prime(&self) -> impl Future<Output = ()> + Send;
}

/// What a controller's objects are to one another, which decides their
/// finalizer, when it goes on, and how a failure is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A grant (MongoRoleBinding, CosmosRoleBinding). Its finalizer goes on
    /// in the same pass before the first apply: nothing is granted before
    /// it is in place, and a new binding costs one reconcile, not two.
    Binding,
    /// Something bindings use (CosmosRoleDefinition).
    Definition,
    /// A target: its own finalizer, which holds it while anything uses it.
    Target,
}

impl Role {
    /// The finalizer that keeps a deleted object until its cleanup succeeds.
    pub const fn finalizer(self) -> &'static str {
        match self {
            Role::Binding | Role::Definition => crate::FINALIZER,
            Role::Target => crate::TARGET_FINALIZER,
        }
    }

    /// When a failed reconcile looks again.
    pub const fn retry(self) -> Retry {
        match self {
            Role::Binding => Retry::BINDING,
            Role::Definition | Role::Target => Retry::TARGET,
        }
    }
}

/// One controller, implemented by its backend's context for the kind `K`
/// it reconciles: how it applies and how it cleans up. Everything around
/// those two (the timer, priming, the finalizer, the error policy) is
/// [`reconcile`] and [`error_policy`].
pub trait Lifecycle<K: Managed>: BackendContext {
    /// What its objects are (see [`Role`]).
    const ROLE: Role;
    /// Bring a live object's backend state and status in line with it.
    fn apply(obj: Arc<K>, ctx: &Self) -> impl Future<Output = Result<Action>> + Send;
    /// Undo what `apply` did for a deleted object; the finalizer goes when
    /// this succeeds.
    fn cleanup(obj: Arc<K>, ctx: &Self) -> impl Future<Output = Result<Action>> + Send;
}

/// Reconcile `obj` with its controller `C`: once the backend's index is
/// primed, `apply` while it lives and `cleanup` once it is deleted, under
/// the finalizer of its [`Role`].
pub async fn reconcile<K, C>(obj: Arc<K>, ctx: Arc<C>) -> Result<Action>
where
    K: Managed,
    C: Lifecycle<K>,
{
    let (kind, metrics) = (K::kind(&()), &ctx.shared().metrics);
    let _timer = metrics.reconcile(&kind);
    metrics.picked_up(&kind, &object::kind_key(obj.as_ref()));
    ctx.prime().await;
    let api = object::api_for(ctx.shared().client.clone(), obj.as_ref());
    let finalizer_name = C::ROLE.finalizer();
    let obj = if C::ROLE == Role::Binding {
        let start = Instant::now();
        let obj = super::finalize::ensure(&api, &ctx.shared().ensured, finalizer_name, obj).await?;
        metrics.stage(&kind, Stage::Finalizer, start.elapsed());
        obj
    } else {
        obj
    };
    let ctx = ctx.as_ref();
    finalizer(&api, finalizer_name, obj, |event| async move {
        match event {
            Event::Apply(obj) => C::apply(obj, ctx).await,
            Event::Cleanup(obj) => C::cleanup(obj, ctx).await,
        }
    })
    .await
    .map_err(Error::from)
}

/// The error policy of `obj`'s controller `C` (see [`requeue_after`]).
pub fn error_policy<K, C>(obj: Arc<K>, error: &Error, ctx: Arc<C>) -> Action
where
    K: Managed,
    C: Lifecycle<K>,
{
    requeue_after(&K::kind(&()), &key(obj.as_ref()), &ctx.shared().metrics, error, C::ROLE.retry())
}

/// What every controller does after a failed reconcile. Waiting (a deleted
/// target for its bindings, a revocation for the backend) is logged and
/// requeued when it asked, and is not counted as a failure; any other
/// error is logged as a warning, counted under `kind`, and requeued after
/// the backend's Retry-After, else `retry` by whether the error is
/// transient.
pub fn requeue_after(kind: &str, object: &str, metrics: &Metrics, error: &Error, retry: Retry) -> Action {
    if matches!(error, Error::Wait { .. }) {
        tracing::info!(kind, object, reason = %error, "waiting");
    } else {
        tracing::warn!(kind, object, error = %error, "reconcile failed");
        metrics.reconcile_failed(kind, error);
    }
    let fallback = if error.is_transient() { retry.transient } else { retry.permanent };
    Action::requeue(error.retry_after().unwrap_or(fallback).max(Duration::from_secs(1)))
}

/// Prime a backend's binding `index`, once (`primed`; later calls return
/// at once): after `caches_ready`, put every binding in `bindings` that
/// dbgrant has applied before (it carries the binding finalizer) into the
/// index with its `contribution` now, before any reconcile writes, so no
/// reconcile after a restart shrinks a backend object to a partial union.
/// A binding without the finalizer was never applied (the finalizer comes
/// first); it joins the index at its first reconcile — priming it would
/// keep its grant in the index for good if it were deleted before then,
/// since a deletion without the finalizer never reaches cleanup.
pub async fn prime<K, G>(
    primed: &OnceCell<()>,
    caches_ready: impl Future<Output = ()>,
    index: &std::sync::Mutex<BindingIndex<G>>,
    bindings: &Store<K>,
    contribution: impl Fn(&K, jiff::Timestamp) -> Option<Contribution<G>>,
) where
    K: Managed,
    G: Grant,
{
    primed
        .get_or_init(|| async {
            caches_ready.await;
            let now = jiff::Timestamp::now();
            let mut idx = index.lock().unwrap_or_else(|p| p.into_inner());
            for b in bindings.state() {
                let applied =
                    b.meta().finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == Role::Binding.finalizer()));
                if let Some(c) = contribution(&b, now).filter(|_| applied) {
                    idx.upsert(&key(b.as_ref()), c);
                }
            }
            tracing::info!(kind = %K::kind(&()), bindings = idx.len(), "binding index primed");
        })
        .await;
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
    /// What they are, as the message says it ("MongoRoleBinding(s)").
    pub what: &'static str,
    /// Names as the message shows them, sorted.
    pub names: Vec<String>,
    /// How many of them are being deleted already.
    pub deleting: usize,
}

impl Dependants {
    /// `what` from each one's name and whether it is being deleted.
    pub fn new(what: &'static str, each: impl IntoIterator<Item = (String, bool)>) -> Self {
        let mut d = Dependants { what, ..Default::default() };
        for (name, deleting) in each {
            d.names.push(name);
            d.deleting += usize::from(deleting);
        }
        d.names.sort();
        d
    }

    /// "Terminating: waiting for N `what` to be deleted (a, b, … and M
    /// more); each revokes its access first", naming at most five.
    pub fn waiting_message(&self) -> String {
        let shown: Vec<&str> = self.names.iter().take(5).map(String::as_str).collect();
        let more = if self.names.len() > shown.len() {
            format!(" and {} more", self.names.len() - shown.len())
        } else {
            String::new()
        };
        format!(
            "Terminating: waiting for {} {} to be deleted ({}{more}); each revokes its access first",
            self.names.len(),
            self.what,
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

/// A live target's Ready outcome after a resync: `Connected` with `ready`,
/// or, in Observe mode (`pending` set), `Observing` with the count of
/// writes it did not make.
pub fn ready_or_observing(ready: &str, pending: Option<&crate::api::PendingChanges>) -> Outcome {
    match pending {
        None => Outcome::ready(reason::CONNECTED, ready),
        Some(p) => Outcome::ready(
            reason::OBSERVING,
            format!("{ready}; Observe mode: {} write(s) planned and not made (status.pending lists them)", p.writes),
        ),
    }
}

/// A live target's pass, on every backend: `resync` (reach, prove rights,
/// resync, fill the status) says what Ready is and when to look again; a
/// failure is counted and logged, and `failed` maps it to Ready and the
/// wait. The status is finished once, either way.
pub async fn run_target<C, T, S>(
    ctx: &C,
    target: &T,
    current: Option<&S>,
    resync: impl AsyncFnOnce(&mut S) -> Result<(Outcome, Duration)>,
    failed: impl AsyncFnOnce(&Error) -> (Outcome, Duration),
) -> Result<Action>
where
    C: BackendContext,
    T: Managed,
    S: ObjectStatus + Serialize + PartialEq + Clone + Default,
{
    let mut st = current.cloned().unwrap_or_default();
    let (outcome, requeue) = match resync(&mut st).await {
        Ok(done) => done,
        Err(e) => {
            ctx.shared().metrics.reconcile_failed(&T::kind(&()), &e);
            tracing::warn!(target = %key(target), error = %e, backend = C::BACKEND, "target not ready");
            failed(&e).await
        }
    };
    status::finish(ctx.shared(), target, current, st, &outcome).await?;
    Ok(Action::requeue(requeue))
}

/// A deleted target's cleanup, on every backend: it stays while `users`
/// use it, so each can revoke through it, and goes (after `release`) once
/// the last one is gone. While it stays it is Ready=False `Terminating`,
/// naming them. A target that was Ready when it was deleted (deletion bumps
/// the generation), or has since shown it works, only refreshes that,
/// without reading its Secrets again (a prune may have deleted them
/// already); any other must show it works through `probe` (revocation needs
/// a working target), whose failure, as an outcome, joins the message.
pub async fn hold_deleted_target<C, T, S>(
    ctx: &C,
    target: &T,
    current: Option<&S>,
    users: Dependants,
    release: impl AsyncFnOnce(),
    probe: impl AsyncFnOnce(&mut S) -> std::result::Result<(), Outcome>,
) -> Result<Action>
where
    C: BackendContext,
    T: Managed + TargetView,
    S: ObjectStatus + Serialize + PartialEq + Clone + Default,
{
    let name = Resource::meta(target).name.clone().unwrap_or_default();
    if users.names.is_empty() {
        release().await;
        tracing::info!(target = %name, "no {} use the target any more; released", users.what);
        return Ok(Action::await_change());
    }
    let mut st = current.cloned().unwrap_or_default();
    let waiting = users.waiting_message();
    let (outcome, retry) = if target::is_terminating(target)
        || target::ready_before_deletion(target)
        || target::never_connected(target)
    {
        (users.outcome(waiting), TERMINATING_POLL)
    } else {
        match probe(&mut st).await {
            Ok(()) => (users.outcome(waiting), TERMINATING_POLL),
            Err(o) => {
                tracing::warn!(target = %name, reason = %o.message, "deleted target not usable; its users cannot revoke yet");
                (Outcome { message: format!("{waiting}; {}", o.message), ..o }, NOT_READY_RETRY)
            }
        }
    };
    status::finish(ctx.shared(), target, current, st, &outcome).await?;
    Err(Error::Wait { backend: C::BACKEND, target: name, message: outcome.message, retry_after: retry })
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
    status::publish(ctx, target, super::events::EventType::Warning, reason::DRIFT_CORRECTED, &note).await;
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
        let all = Dependants::new("MongoRoleBinding(s)", names.iter().map(|n| (n.clone(), true)));
        let msg = all.waiting_message();
        assert_eq!(
            msg,
            "Terminating: waiting for 7 MongoRoleBinding(s) to be deleted (ns/b1, ns/b2, ns/b3, ns/b4, ns/b5 and 2 more); each revokes its access first"
        );
        assert_eq!(all.outcome(msg.clone()).progress, crate::api::conditions::Progress::InProgress);
        let some = Dependants::new("MongoRoleBinding(s)", names.into_iter().zip([true, false].repeat(4)));
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
            requeue_after("MongoTarget", "t", &metrics, &wait, Retry::TARGET),
            Action::requeue(Duration::from_secs(3))
        );
        assert_eq!(failures(&metrics, "MongoTarget", "waiting"), 0);
    }

    #[test]
    fn failures_back_off_by_kind_and_are_counted() {
        let metrics = Metrics::default();
        let b = |e: &Error| requeue_after("MongoRoleBinding", "ns/b", &metrics, e, Retry::BINDING);
        assert_eq!(b(&backend(true)), Action::requeue(Duration::from_secs(15)));
        assert_eq!(b(&backend(false)), Action::requeue(Duration::from_secs(60)));
        assert_eq!(failures(&metrics, "MongoRoleBinding", "backend-transient"), 1);
        assert_eq!(failures(&metrics, "MongoRoleBinding", "backend"), 1);
        let t = requeue_after("MongoTarget", "t", &metrics, &backend(false), Retry::TARGET);
        assert_eq!(t, Action::requeue(Duration::from_secs(30)));
    }
}
