//! `--backend`: what the operator would write now against each target's
//! live state — the change, plus drift it would correct, objects it would
//! collect, and foreign objects in its way. It runs the operator's own
//! resync in Observe mode (nothing is written) with the targets' Secrets,
//! so it needs the read access to them the operator's identity has.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{
    Client, ResourceExt,
    runtime::{reflector, watcher},
};
use serde::Serialize;

use super::objects::Objects;
use crate::api::{CosmosTarget, MongoTarget, TargetMode};
use crate::cosmos::{CosmosContext, CosmosSettings, Freshness, binding_status};
use crate::mongo::{binding_controller as mongo_binding, connection, ledger, sync as mongo_sync, target_controller};
use crate::plan::{cosmos::AssignmentState, index::BindingIndex};
use crate::runtime::{audit, context::Context, events::Publisher, http::Health, metrics::Metrics};

/// One target's live view.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LiveTarget {
    /// `MongoTarget` or `CosmosTarget`.
    pub kind: &'static str,
    pub name: String,
    /// Writes the operator would make now (`create role …`, `delete
    /// assignment …`), drift corrections and collections included.
    pub writes: Vec<String>,
    /// Objects that differ from what dbgrant last put in place.
    pub drifted: Vec<String>,
    /// Objects with dbgrant's names it did not create: left alone.
    pub foreign: Vec<String>,
    /// Why the target could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The live view of every target in `objects`, reading Secrets from
/// `namespace` (the operator's) with `client`.
pub async fn read(client: Client, namespace: &str, objects: &Objects, now: Timestamp) -> Vec<LiveTarget> {
    let shared = Arc::new(Context {
        events: Publisher::new(client.clone(), "dbgrant-plan", "dbgrant-plan"),
        client,
        namespace: namespace.to_string(),
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(Health::default()),
        resync: Duration::from_secs(300),
        audit: Arc::new(audit::Auditor::discard()),
        audit_events: false,
        ensured: Default::default(),
    });
    let mut out = Vec::new();
    for t in objects.mongo_targets.values() {
        let mut live = mongo(&shared, t, objects, now)
            .await
            .unwrap_or_else(|e| LiveTarget { error: Some(format!("{e:#}")), ..Default::default() });
        (live.kind, live.name) = ("MongoTarget", t.name_any());
        out.push(live);
    }
    if !objects.cosmos_targets.is_empty() {
        let ctx = cosmos_context(shared.clone(), objects, now);
        for t in objects.cosmos_targets.values() {
            let mut live = cosmos(&ctx, t)
                .await
                .unwrap_or_else(|e| LiveTarget { error: Some(format!("{e:#}")), ..Default::default() });
            (live.kind, live.name) = ("CosmosTarget", t.name_any());
            out.push(live);
        }
    }
    out
}

async fn mongo(shared: &Context, t: &MongoTarget, objects: &Objects, now: Timestamp) -> anyhow::Result<LiveTarget> {
    let name = t.name_any();
    let built = connection::client_options(shared, t).await;
    connection::remove_private_files(&name);
    let (options, _) = built?;
    let client = mongodb::Client::with_options(options)?;
    let mut idx = BindingIndex::default();
    for (key, b) in objects.mongo_bindings.iter().filter(|(_, b)| b.spec.target_ref.name == name) {
        if let Some(c) = mongo_binding::evaluate(b, Some(t), now).contribution {
            idx.upsert(key, c);
        }
    }
    let result = async {
        let ledger = ledger::all(&name, &client, &shared.metrics).await?;
        let work = target_controller::resync_work(t, &idx, &ledger);
        let trigger = audit::Trigger::of(t);
        let scope = audit::Scope::new(&shared.audit, "mongodb", &name, &trigger);
        let report = mongo_sync::sync(&name, &client, &shared.metrics, &scope, t.spec.adopt, true, &work).await?;
        // Every role and `$external` user under dbgrant's prefix, to find
        // those neither the ledger nor a binding accounts for.
        let prefixed = format!("{}/", t.spec.oidc.auth_name_prefix);
        let mut found = BTreeSet::new();
        for (db, command, list, field) in
            [("admin", "rolesInfo", "roles", "role"), ("$external", "usersInfo", "users", "user")]
        {
            let reply = mongodb_run(&client, db, command).await?;
            for d in reply.get_array(list).into_iter().flatten().filter_map(|d| d.as_document()) {
                if let Ok(n) = d.get_str(field)
                    && n.starts_with(&prefixed)
                {
                    found.insert(format!("{db}.{n}"));
                }
            }
        }
        let known: BTreeSet<String> = work
            .iter()
            .flat_map(|w| {
                [Some(format!("admin.{}", w.objects.role)), w.objects.user.as_ref().map(|u| format!("$external.{u}"))]
            })
            .flatten()
            .chain(ledger.iter().cloned())
            .collect();
        let unaccounted: Vec<String> = found.difference(&known).cloned().collect();
        Ok::<_, crate::Error>((report, unaccounted))
    }
    .await;
    client.shutdown().await;
    let (report, unaccounted) = result?;
    let mut foreign: Vec<String> = report
        .results
        .values()
        .filter_map(|r| if let mongo_sync::SubjectResult::Conflict(c) = r { Some(c.clone()) } else { None })
        .flatten()
        .collect();
    foreign.extend(unaccounted.into_iter().map(|n| format!("{n} (no binding grants it; not created by dbgrant)")));
    Ok(LiveTarget {
        writes: report.planned.values().flatten().cloned().collect(),
        drifted: report.drifted,
        foreign,
        ..Default::default()
    })
}

/// A Cosmos DB context over caches filled from `objects`, its index primed
/// with the bindings as the operator evaluates them.
fn cosmos_context(shared: Arc<Context>, objects: &Objects, now: Timestamp) -> CosmosContext {
    fn filled<K>(items: impl Iterator<Item = K>) -> reflector::Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let (reader, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in items {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        reader
    }
    let ctx = CosmosContext::new(
        shared,
        filled(objects.cosmos_targets.values().cloned()),
        filled(objects.cosmos_bindings.values().cloned()),
        filled(objects.cosmos_definitions.values().cloned()),
        CosmosSettings::default(),
    );
    {
        let mut idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
        for (key, b) in &objects.cosmos_bindings {
            let target = objects.cosmos_targets.get(&b.spec.target_ref.name);
            let definition = b.spec.role_definition.name.as_ref().and_then(|n| objects.cosmos_definitions.get(n));
            if let Some(c) = binding_status::evaluate(b, target, definition, now, false).contribution {
                idx.upsert(key, c);
            }
        }
    }
    ctx
}

async fn cosmos(ctx: &CosmosContext, t: &CosmosTarget) -> anyhow::Result<LiveTarget> {
    // The operator's own account pass, in Observe mode: nothing is written.
    let mut observed = t.clone();
    observed.spec.mode = TargetMode::Observe;
    let report = ctx.sync(&observed, &observed, BTreeSet::new(), Freshness::Fresh, None).await?;
    let mut foreign: Vec<String> = report
        .plan
        .assignments
        .iter()
        .filter_map(|(key, state)| match state {
            AssignmentState::Conflict { name } => Some(format!("assignment {name} ({key})")),
            _ => None,
        })
        .collect();
    foreign.extend(report.plan.definitions.iter().filter_map(|(source, state)| match state {
        crate::plan::cosmos::DefinitionState::Conflict { with } => {
            Some(format!("role definition {with} holds the roleName of CosmosRoleDefinition {source}"))
        }
        _ => None,
    }));
    Ok(LiveTarget {
        writes: report.planned.clone(),
        drifted: report.plan.drifted.clone(),
        foreign,
        ..Default::default()
    })
}

/// Run `{command: 1}` in `db` (list every role or user).
async fn mongodb_run(client: &mongodb::Client, db: &str, command: &str) -> crate::Result<bson::Document> {
    use crate::mongo::api::MongoApi;
    client.run(db, bson::doc! { command: 1 }).await.map_err(|e| connection::classify(db, command, &e))
}
