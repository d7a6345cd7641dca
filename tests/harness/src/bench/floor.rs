//! The apiserver's floor: what the writes dbgrant makes per binding cost
//! the apiserver alone, with no operator running.
//!
//! The benchmark applies every binding as the baseline does, and after each
//! apply makes, itself, the apiserver writes the operator makes for a new
//! binding: its status (server-side apply to `/status`, Ready with
//! `observedGeneration`), and with [`Writes::All`] also the finalizer
//! (a merge patch guarded by resourceVersion, as `runtime::finalize` sends
//! it) and the audit Event (an `events.k8s.io/v1` create regarding the
//! binding). No operator, no backend, no watch: the time until the last
//! write returns is what the apiserver needs for those writes on this
//! machine. Divided by the baseline's, it bounds from below the
//! bulk ÷ baseline ratio any operator making the same writes can reach
//! here. The status written is smaller than the operator's (conditions and
//! `observedGeneration` only), so the bound is, if anything, low.
//!
//! It runs after the baseline and before the operator starts, and leaves
//! the cluster as it found it.

use std::time::Instant;

use anyhow::{Context, Result};
use futures::{StreamExt, stream};
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use super::{
    backend::Backend,
    process::{CpuSplit, round3},
    scenarios::{Env, apply_each, delete_bindings, wait_bindings_gone},
};

/// The finalizer the floor sets: not dbgrant's, so nothing ever acts on it.
const FINALIZER: &str = "bench.dbgrant.io/floor";

/// The field manager of the floor's status writes.
const MANAGER: &str = "dbgrant-bench-floor";

/// Which of the operator's writes the benchmark makes after each apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// The status alone: the operator's one write where the chart's
    /// finalizer policy sets the finalizer and audit Events are off.
    Status,
    /// Finalizer, status and audit Event: the operator's three writes per
    /// MongoDB binding on a cluster without the policy.
    All,
}

impl Writes {
    /// Its name in the report (`floor[].writes`).
    pub fn name(self) -> &'static str {
        match self {
            Writes::Status => "status",
            Writes::All => "finalizer+status+event",
        }
    }
}

/// Apply every binding and make `writes` after each; then delete them.
pub async fn floor<B: Backend>(env: &Env<'_, B>, writes: Writes) -> Result<Value> {
    let n = env.layout.bindings;
    eprintln!("bench: floor ({}): applying {n} bindings, the benchmark writing after each", writes.name());
    let cpu0 = CpuSplit::now(None, env.control_plane_pid);
    let t0 = Instant::now();
    let client = env.cluster.admin.clone();
    let failed = apply_each(env, |api, created| {
        let events: Api<Event> =
            Api::namespaced(client.clone(), created.metadata.namespace.as_deref().unwrap_or_default());
        one_binding(api, events, created, writes)
    })
    .await;
    let elapsed = t0.elapsed();
    let cpu = cpu0.until(&CpuSplit::now(None, env.control_plane_pid));
    clean_up(env, writes).await?;
    if let Some(first) = failed.first() {
        // A floor with failed writes measures less than it says.
        anyhow::bail!("floor ({}): {} of {n} bindings failed; the first: {first:#}", writes.name(), failed.len());
    }
    eprintln!("bench: floor ({}): {n} bindings written in {:.1}s, no operator", writes.name(), elapsed.as_secs_f64());
    Ok(json!({
        "writes": writes.name(),
        "bindings": n,
        "seconds": round3(elapsed.as_secs_f64()),
        "cpu": cpu,
    }))
}

/// The operator's writes for one new binding, in its order.
async fn one_binding(api: Api<DynamicObject>, events: Api<Event>, b: DynamicObject, writes: Writes) -> Result<()> {
    let name = b.metadata.name.clone().unwrap_or_default();
    let mut generation = b.metadata.generation;
    if writes == Writes::All {
        let patch = json!({"metadata": {
            "finalizers": [FINALIZER],
            "resourceVersion": b.metadata.resource_version,
        }});
        let patched = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("finalizer on {name}"))?;
        generation = patched.metadata.generation;
    }
    let now = Timestamp::now();
    let status = json!({
        "apiVersion": b.types.as_ref().map(|t| t.api_version.clone()),
        "kind": b.types.as_ref().map(|t| t.kind.clone()),
        "status": {
            "observedGeneration": generation,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Granted",
                "message": format!("granted to 1 subject on its target ({name})"),
                "observedGeneration": generation, "lastTransitionTime": Time(now),
            }],
        },
    });
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&status))
        .await
        .with_context(|| format!("status of {name}"))?;
    if writes == Writes::All {
        events.create(&PostParams::default(), &event(&b, now)).await.with_context(|| format!("Event on {name}"))?;
    }
    Ok(())
}

/// An audit Event like the operator's `AccessChanged`.
fn event(b: &DynamicObject, now: Timestamp) -> Event {
    let name = b.metadata.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            // The operator's (and client-go's) form: unique per object and instant.
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: b.metadata.namespace.clone(),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Normal".into()),
        reason: Some("AccessChanged".into()),
        action: Some("Reconcile".into()),
        note: Some(format!("updateRole admin.dbgrant/{name}: +1 inherited role (applied); see the audit log")),
        regarding: Some(ObjectReference {
            api_version: b.types.as_ref().map(|t| t.api_version.clone()),
            kind: b.types.as_ref().map(|t| t.kind.clone()),
            namespace: b.metadata.namespace.clone(),
            name: Some(name),
            uid: b.metadata.uid.clone(),
            ..Default::default()
        }),
        reporting_controller: Some("dbgrant.io/bench-floor".into()),
        reporting_instance: Some("dbgrant-bench".into()),
        ..Default::default()
    }
}

/// Delete the bindings (taking the floor's finalizer off) and its Events,
/// so the operator's bulk starts from the same empty cluster.
async fn clean_up<B: Backend>(env: &Env<'_, B>, writes: Writes) -> Result<()> {
    delete_bindings(env).await?;
    if writes == Writes::All {
        for ns in env.layout.namespaces() {
            let api = env.bindings(&ns);
            let names: Vec<String> = api
                .list_metadata(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect();
            let unfinalize = json!({"metadata": {"finalizers": null}});
            let failed = stream::iter(names)
                .map(|name| {
                    let api = api.clone();
                    let patch = unfinalize.clone();
                    async move { api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await }
                })
                .buffer_unordered(env.args.parallel)
                .filter(|r| {
                    std::future::ready(r.as_ref().is_err_and(|e| !matches!(e, kube::Error::Api(s) if s.code == 404)))
                })
                .count()
                .await;
            anyhow::ensure!(failed == 0, "{failed} floor finalizers in {ns} could not be taken off");
            let events: Api<Event> = Api::namespaced(env.cluster.admin.clone(), &ns);
            events.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
        }
    }
    wait_bindings_gone(env).await
}
