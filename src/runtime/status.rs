//! Writing status with server-side apply, only when it changed, and
//! publishing an Event when the Ready condition transitions (except the
//! first Ready of a new object).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    context::Context,
    events::{Event, EventType},
    metrics::Stage,
    object::{self, Managed},
};
use crate::{
    MANAGER, Result,
    api::conditions::{self, ObjectStatus, Outcome},
};

/// Finish a reconcile's status, the one way every controller does: merge
/// `outcome` into the conditions `obj` has now (`lastTransitionTime` moves
/// only on a real transition), mark them as describing its generation,
/// write `next` if it differs from what `obj` has, and publish an Event
/// if Ready transitioned. Returns the status written.
pub async fn finish<K, S>(ctx: &Context, obj: &K, current: Option<&S>, mut next: S, outcome: &Outcome) -> Result<S>
where
    K: Managed,
    S: ObjectStatus + Serialize + PartialEq,
{
    let start = std::time::Instant::now();
    let api = &object::api_for(ctx.client.clone(), obj);
    let before: Vec<Condition> = current.map(|c| c.conditions().to_vec()).unwrap_or_default();
    let generation = obj.meta().generation;
    next.set_conditions(conditions::merge(&before, outcome, generation, &now()), generation);
    apply(api, obj, current, &next).await?;
    publish_transition(ctx, obj, &before, next.conditions()).await;
    ctx.metrics.stage(&K::kind(&()), Stage::Status, start.elapsed());
    Ok(next)
}

/// Server-side apply `status` to `obj` unless it equals `current`.
/// Returns whether a write happened.
pub async fn apply<K, S>(api: &Api<K>, obj: &K, current: Option<&S>, status: &S) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(true)
}

/// Publish a Normal or Warning Event for a Ready transition.
pub async fn publish_transition<K>(ctx: &Context, obj: &K, before: &[Condition], after: &[Condition])
where
    K: Resource<DynamicType = ()>,
{
    if !conditions::is_transition(before, after) {
        return;
    }
    let Some(ready) = conditions::ready(after) else { return };
    let type_ = if ready.status == "True" { EventType::Normal } else { EventType::Warning };
    if type_ == EventType::Normal && conditions::ready(before).is_none() {
        // A new object turning Ready is what everyone expects and its
        // status says so; an Event for each would double the apiserver
        // writes of a bulk apply (and fill the memory of recent Events). Recovery
        // after a failure, and every failure, still get one.
        return;
    }
    publish(ctx, obj, type_, &ready.reason, &ready.message).await;
}

/// Publish one Normal `AccessChanged` Event on `obj` listing the backend
/// writes its reconcile made (`summaries`, from the audit trail), if any:
/// the audit trail as `kubectl describe` and `kubectl events` show it.
pub async fn publish_writes<K>(ctx: &Context, obj: &K, summaries: &[String])
where
    K: Resource<DynamicType = ()>,
{
    if summaries.is_empty() || !ctx.audit_events {
        return;
    }
    let note = format!("{}: {}", if summaries.len() == 1 { "1 write" } else { "writes" }, summaries.join("; "));
    publish(ctx, obj, EventType::Normal, conditions::reason::ACCESS_CHANGED, &note).await;
}

/// Publish an Event about `obj` (a Ready transition, or a Warning that is
/// not one, such as drift).
pub async fn publish<K>(ctx: &Context, obj: &K, type_: EventType, reason: &str, note: &str)
where
    K: Resource<DynamicType = ()>,
{
    let note = truncate(note, 1000);
    let event = Event { type_, reason, action: "Reconcile", note: &note };
    if let Err(e) = ctx.events.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

/// The current time as a Kubernetes `Time`, truncated to seconds (the
/// precision the API server stores) so equal states compare equal.
pub fn now() -> Time {
    let secs = jiff::Timestamp::now().as_second();
    Time(jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
