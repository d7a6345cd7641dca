//! The watch streams that feed the controllers and their caches.
//!
//! Two things `Controller::new` does not do, and that matter at thousands
//! of bindings:
//!
//! - objects are stripped of what dbgrant never reads (`managedFields`
//!   but the names of the spec's managers, for the audit trail; the
//!   `kubectl apply` annotation) before they reach the reflector cache:
//!   about 4 KB per binding;
//! - only changes that can alter what a reconcile does pass through
//!   ([`Relevance`]): dbgrant's own status writes do not come back as
//!   reconciles, and a target's periodic status refresh does not wake every
//!   binding on it. A change to an object's annotations does reconcile it:
//!   that is how people ask for a reconcile now;
//! - a watch that fails retries within [`RETRY_MAX`], however long the
//!   apiserver was away ([`retry_backoff`]), and one watch's errors never
//!   hold up a controller's other watches ([`Unpaused`]).

use std::{
    collections::hash_map::DefaultHasher,
    fmt::Debug,
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        utils::{Backoff, ResetTimerBackoff},
        watcher::{self, ExponentialBackoff, watcher},
    },
};
use serde::de::DeserializeOwned;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ManagedFieldsEntry, ObjectMeta};

use super::{metrics::Metrics, object::kind_key};
use crate::{
    api::RELEASED_ANNOTATION,
    api::{CosmosRoleBinding, CosmosRoleDefinition, CosmosTarget, MongoRoleBinding, MongoTarget, conditions},
};

/// The `kubectl apply` annotation: a full copy of the last applied
/// manifest, which dbgrant never reads.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drop what dbgrant never reads from an object before it is cached. Of
/// `managedFields` only the names of the spec's managers stay (no field
/// sets), for the audit trail's trigger.
pub fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = meta.managed_fields.take().map(|entries| {
        entries
            .into_iter()
            .filter(|m| m.subresource.is_none() && m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").is_some()))
            .map(|m| ManagedFieldsEntry { manager: m.manager, operation: m.operation, ..Default::default() })
            .collect()
    });
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The longest a watch waits before it tries again after an error.
///
/// An apiserver that restarts comes back with a new watch cache, and every
/// watch resumed from a resourceVersion older than the cache's start gets
/// 410 Expired and must list again. kube-runtime's default backoff (0.8 s
/// doubling to 30 s, plus up to 100 % jitter, reset only after 120 s
/// without an error) has grown through the outage by then, so a watch
/// could stay blind for a minute or more after the apiserver was back: a
/// binding deleted meanwhile kept its access that long. Here a watch is
/// never more than `RETRY_MAX` from its next attempt. The cost is small: a
/// handful of watches per operator, and the list after a 410 is served
/// from the apiserver's watch cache (`resourceVersion=0`).
pub const RETRY_MAX: Duration = Duration::from_secs(4);

/// The first wait after an error.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// The backoff every watch uses between failed attempts: exponential from
/// [`RETRY_MIN`], never longer than [`RETRY_MAX`] with jitter, back to the
/// start after any success (kube-runtime's `StreamBackoff` resets it on
/// each object) or a quiet minute.
pub fn retry_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    // backon's jitter adds up to the delay itself, hence half the maximum.
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// The backoff for a controller's merged trigger stream: none.
///
/// `Controller` merges its watches (the main one, `watches_stream`,
/// `reconcile_on`) into one stream and, by default, pauses that whole
/// stream after any error with kube-runtime's `DefaultBackoff`. Each of
/// dbgrant's watches already backs off on its own ([`retry_backoff`]), so
/// the pause only stacks on top: while one watch fails (a 410 after an
/// apiserver restart, say), the others are not polled, their own retries
/// stall and the shared pause grows with every error of every watch. After
/// a 10 s apiserver restart that left a binding controller blind for over
/// half a minute. With this policy an error passes straight through.
/// (kube-rs chose one shared timer on purpose, assuming an unhealthy
/// apiserver, kube-rs/kube#763; other operators hit the stall:
/// stackabletech/trino-operator#936.)
#[derive(Clone, Copy, Debug, Default)]
pub struct Unpaused;

impl Iterator for Unpaused {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for Unpaused {
    fn reset(&mut self) {}
}

/// What a change must touch to be passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relevance {
    /// The spec (`metadata.generation`) or the start of deletion. For
    /// objects whose reconcile adds its finalizer and applies in one pass,
    /// so neither the finalizer nor the status it writes needs a second.
    Spec,
    /// The spec, deletion, or the finalizers: for objects reconciled with
    /// `kube::runtime::finalizer`, which adds the finalizer and waits for
    /// the resulting change before it applies.
    SpecOrFinalizers,
    /// The spec, deletion, or whether the object is Ready: what objects
    /// that depend on it (bindings on a target or role definition) act on.
    SpecOrReadiness,
}

impl Relevance {
    /// The hash of the parts of `obj` this relevance cares about.
    pub fn key<K: Resource + HasConditions>(self, obj: &K) -> u64 {
        let meta = obj.meta();
        let mut h = DefaultHasher::new();
        meta.generation.hash(&mut h);
        meta.deletion_timestamp.is_some().hash(&mut h);
        match self {
            Relevance::Spec => user_annotations(meta).hash(&mut h),
            Relevance::SpecOrFinalizers => {
                user_annotations(meta).hash(&mut h);
                meta.finalizers.hash(&mut h);
            }
            Relevance::SpecOrReadiness => conditions::ready(obj.conditions()).map(|c| c.status.as_str()).hash(&mut h),
        }
        h.finish()
    }
}

/// The annotations people set: changing one (`kubectl annotate …
/// dbgrant.io/reconcile=$(date +%s)`) asks for a reconcile now. The one
/// dbgrant writes itself (a CosmosTarget's released list) does not.
fn user_annotations(meta: &ObjectMeta) -> Vec<(&str, &str)> {
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != RELEASED_ANNOTATION)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Objects whose status carries conditions.
pub trait HasConditions {
    /// The status conditions, empty without a status.
    fn conditions(&self) -> &[Condition];
}

macro_rules! has_conditions {
    ($($kind:ty),*) => {$(
        impl HasConditions for $kind {
            fn conditions(&self) -> &[Condition] {
                self.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
            }
        }
    )*};
}

has_conditions!(MongoTarget, MongoRoleBinding, CosmosTarget, CosmosRoleDefinition, CosmosRoleBinding);

/// A watch of every `K`: the reflector cache it fills (stripped objects)
/// and the stream of objects whose changes are `relevance`-relevant, to
/// drive a controller with `Controller::for_stream`. Each such change is
/// noted in `metrics`, so the reconcile that picks it up can tell how long
/// it waited.
pub fn cached<K>(
    api: Api<K>,
    relevance: Relevance,
    metrics: Arc<Metrics>,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + HasConditions + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .backoff(retry_backoff())
        .modify(strip::<K>)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(move |o: &K| Some(relevance.key(o)), Default::default())
        .inspect(move |o| {
            if let Ok(o) = o {
                metrics.arrived(kind_key(o));
            }
        });
    (reader, stream)
}

/// A watch of every `K` without a cache: the objects whose changes are
/// `relevance`-relevant, to wake dependants with `Controller::watches_stream`.
pub fn triggers<K>(api: Api<K>, relevance: Relevance) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + HasConditions + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, watcher::Config::default())
        .backoff(retry_backoff())
        .applied_objects()
        .predicate_filter(move |o: &K| Some(relevance.key(o)), Default::default())
        .boxed()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};

    use super::*;
    use crate::api::{MongoRoleBinding, MongoRoleBindingStatus};

    fn binding() -> MongoRoleBinding {
        let mut b: MongoRoleBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "dbgrant.io/v1alpha1",
            "kind": "MongoRoleBinding",
            "metadata": {"name": "b", "namespace": "team", "generation": 1},
            "spec": {"targetRef": {"name": "t"}, "subjects": [], "roles": [{"role": "read", "db": "app"}]},
        }))
        .unwrap();
        let fields = |v: serde_json::Value| Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(v));
        b.metadata.managed_fields = Some(vec![
            ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                operation: Some("Apply".into()),
                fields_v1: fields(serde_json::json!({"f:spec": {"f:roles": {}}})),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some("dbgrant".into()),
                subresource: Some("status".into()),
                fields_v1: fields(serde_json::json!({"f:status": {}})),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some("kubectl-annotate".into()),
                fields_v1: fields(serde_json::json!({"f:metadata": {"f:annotations": {}}})),
                ..Default::default()
            },
        ]);
        b.metadata.annotations =
            Some([(LAST_APPLIED.to_string(), "{...}".to_string()), ("team".to_string(), "a".to_string())].into());
        b
    }

    fn ready(status: &str) -> Condition {
        Condition {
            type_: conditions::READY.into(),
            status: status.into(),
            reason: "Connected".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn strip_keeps_only_the_spec_managers_names_and_drops_last_applied() {
        let mut b = binding();
        strip(&mut b);
        let kept = ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            operation: Some("Apply".into()),
            ..Default::default()
        };
        assert_eq!(b.metadata.managed_fields, Some(vec![kept]), "no field sets, no status or metadata managers");
        let annotations = b.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(annotations.get("team").map(String::as_str), Some("a"));
    }

    #[test]
    fn spec_relevance_ignores_status_and_finalizers_but_not_spec_or_deletion() {
        let b = binding();
        let base = Relevance::Spec.key(&b);
        let mut with_status = b.clone();
        with_status.status = Some(Default::default());
        with_status.metadata.finalizers = Some(vec!["dbgrant.io/finalizer".into()]);
        with_status.metadata.resource_version = Some("99".into());
        assert_eq!(Relevance::Spec.key(&with_status), base);
        let mut changed = b.clone();
        changed.metadata.generation = Some(2);
        assert_ne!(Relevance::Spec.key(&changed), base);
        let mut deleting = b.clone();
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_ne!(Relevance::Spec.key(&deleting), base);
        let mut finalized = b.clone();
        finalized.metadata.finalizers = Some(vec!["dbgrant.io/finalizer".into()]);
        assert_ne!(Relevance::SpecOrFinalizers.key(&finalized), Relevance::SpecOrFinalizers.key(&b));
    }

    #[test]
    fn touching_an_annotation_asks_for_a_reconcile_but_dbgrants_own_does_not() {
        let b = binding();
        let mut touched = b.clone();
        touched.metadata.annotations.get_or_insert_default().insert("dbgrant.io/reconcile".into(), "1".into());
        for r in [Relevance::Spec, Relevance::SpecOrFinalizers] {
            assert_ne!(r.key(&touched), r.key(&b), "{r:?}");
        }
        assert_eq!(Relevance::SpecOrReadiness.key(&touched), Relevance::SpecOrReadiness.key(&b));
        let mut released = b.clone();
        released.metadata.annotations.get_or_insert_default().insert(RELEASED_ANNOTATION.into(), "a,b".into());
        assert_eq!(Relevance::SpecOrFinalizers.key(&released), Relevance::SpecOrFinalizers.key(&b));
    }

    #[test]
    fn readiness_relevance_sees_ready_flips_but_not_status_refreshes() {
        let mut b = binding();
        let none = Relevance::SpecOrReadiness.key(&b);
        b.status = Some(MongoRoleBindingStatus { conditions: vec![ready("False")], ..Default::default() });
        let not_ready = Relevance::SpecOrReadiness.key(&b);
        assert_ne!(none, not_ready);
        b.status = Some(MongoRoleBindingStatus { conditions: vec![ready("True")], ..Default::default() });
        let is_ready = Relevance::SpecOrReadiness.key(&b);
        assert_ne!(not_ready, is_ready);
        let mut refreshed = b.clone();
        if let Some(s) = refreshed.status.as_mut() {
            s.last_applied_time = Some(Time(jiff::Timestamp::from_second(100).unwrap()));
            s.conditions[0].message = "reachable".into();
        }
        assert_eq!(Relevance::SpecOrReadiness.key(&refreshed), is_ready);
        assert_eq!(Relevance::Spec.key(&refreshed), Relevance::Spec.key(&b));
    }

    #[test]
    fn a_failing_watch_backs_off_but_never_waits_longer_than_retry_max() {
        let mut backoff = retry_backoff();
        let waits: Vec<Duration> = backoff.by_ref().take(200).collect();
        assert_eq!(waits.len(), 200, "the watches never give up");
        assert!(waits[0] < RETRY_MIN * 2, "first wait {:?}", waits[0]);
        let longest = waits.iter().max().copied().unwrap_or_default();
        assert!(longest <= RETRY_MAX, "a watch waited {longest:?} after an error, more than {RETRY_MAX:?}");
        // It does back off: past the tenth error every wait is at least
        // half the maximum, so a watch does not hammer an apiserver that is down.
        assert!(waits[10..].iter().all(|w| *w >= RETRY_MAX / 2), "{:?}", &waits[10..20]);
        backoff.reset();
        let first_again = backoff.next().unwrap_or_default();
        assert!(first_again < RETRY_MIN * 2, "after a success the next wait starts over: {first_again:?}");
    }

    /// What `Controller` does with its merged triggers (`StreamBackoff` over
    /// them, with the controller's trigger backoff), on tokio's paused
    /// clock: a watch failing over and over must not delay another watch's
    /// change.
    #[tokio::test(start_paused = true)]
    async fn one_failing_watch_does_not_hold_up_a_controllers_other_watches() {
        use futures::stream;
        use kube::runtime::utils::StreamBackoff;

        let began = tokio::time::Instant::now();
        // 40 errors, 50 ms apart (each watch's own retry), and one change on
        // a healthy watch at 1 s.
        let failing = stream::iter(0..40).then(|_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<&str, &str>("too old resource version")
        });
        let healthy = stream::once(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<&str, &str>("binding deleted")
        });
        let mut merged = std::pin::pin!(StreamBackoff::new(stream::select(failing, healthy), Unpaused));
        let mut seen = None;
        while let Some(item) = merged.next().await {
            if item.is_ok() {
                seen = Some(began.elapsed());
                break;
            }
        }
        assert_eq!(seen, Some(Duration::from_secs(1)), "the healthy watch's change was held up");
    }
}
