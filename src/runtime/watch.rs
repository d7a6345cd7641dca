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
//!   that is how people ask for a reconcile now.

use std::{
    collections::hash_map::DefaultHasher,
    fmt::Debug,
    hash::{Hash, Hasher},
    sync::Arc,
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
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
        .default_backoff()
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
        .default_backoff()
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
}
