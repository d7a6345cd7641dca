//! What both kinds of target say about themselves on status: whether they
//! are usable, and whether bindings may still revoke through a deleted one.
//! One definition for MongoTarget and CosmosTarget.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};

use super::{
    CosmosTarget, MongoTarget,
    conditions::{self, reason},
};

/// The parts of a target's object and status the readiness rules read.
pub trait TargetView {
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
    /// `status.conditions` (empty without status).
    fn conditions(&self) -> &[Condition];
    /// `status.observedGeneration`.
    fn observed_generation(&self) -> Option<i64>;
    /// Whether `status.lastResyncTime` is set: a resync completed once.
    fn has_resynced(&self) -> bool;
}

macro_rules! target_view {
    ($kind:ty) => {
        impl TargetView for $kind {
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn conditions(&self) -> &[Condition] {
                self.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
            }
            fn observed_generation(&self) -> Option<i64> {
                self.status.as_ref().and_then(|s| s.observed_generation)
            }
            fn has_resynced(&self) -> bool {
                self.status.as_ref().is_some_and(|s| s.last_resync_time.is_some())
            }
        }
    };
}

target_view!(MongoTarget);
target_view!(CosmosTarget);

fn ready_condition(t: &impl TargetView) -> Option<&Condition> {
    conditions::ready(t.conditions())
}

/// Whether a target's status says it is Ready for its current spec.
pub fn is_ready(t: &impl TargetView) -> bool {
    t.observed_generation() == t.meta().generation && ready_condition(t).is_some_and(|c| c.status == "True")
}

/// Whether a deleted target has shown it works and now waits for its
/// bindings (Ready=False, `Terminating`, at its current generation).
pub fn is_terminating(t: &impl TargetView) -> bool {
    t.meta().deletion_timestamp.is_some()
        && t.observed_generation() == t.meta().generation
        && ready_condition(t).is_some_and(|c| c.reason == reason::TERMINATING)
}

/// Whether the target was Ready for its spec when it was deleted: deleting
/// a custom resource with finalizers bumps its generation by one, the spec
/// stays.
pub fn ready_before_deletion(t: &impl TargetView) -> bool {
    let (observed, now) = (t.observed_generation().unwrap_or_default(), t.meta().generation.unwrap_or_default());
    t.meta().deletion_timestamp.is_some()
        && (observed == now || observed + 1 == now)
        && ready_condition(t).is_some_and(|c| c.status == "True")
}

/// Whether bindings (and role definitions) may revoke through the target:
/// it is Ready, or deleted and waiting for them (or was Ready when it was
/// deleted).
pub fn can_revoke(t: &impl TargetView) -> bool {
    is_ready(t) || is_terminating(t) || ready_before_deletion(t)
}

/// Whether the target never completed a resync: dbgrant has written
/// nothing through it, so there is nothing to revoke.
pub fn never_connected(t: &impl TargetView) -> bool {
    !t.has_resynced()
}

impl<T: TargetView> TargetView for std::sync::Arc<T> {
    fn meta(&self) -> &ObjectMeta {
        T::meta(self)
    }
    fn conditions(&self) -> &[Condition] {
        T::conditions(self)
    }
    fn observed_generation(&self) -> Option<i64> {
        T::observed_generation(self)
    }
    fn has_resynced(&self) -> bool {
        T::has_resynced(self)
    }
}
