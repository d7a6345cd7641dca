//! The MongoTarget controller: connect, check dbgrant's rights, report
//! status, and run the periodic full resync that corrects drift and
//! collects objects whose bindings vanished while the operator was down.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use kube::{Api, ResourceExt, runtime::controller::Action};

use super::{
    BACKEND, MongoContext,
    connection::{self, TargetConnection},
    sync::{self, SubjectResult, SubjectWork},
};
use crate::{
    Error, Result,
    api::{
        MongoTarget, MongoTargetStatus, SubjectKey, SubjectKind, conditions, conditions::Outcome, conditions::reason,
    },
    plan::mongo::{ROLE_DB, SubjectObjects, USER_DB, objects_for},
    runtime::status,
};

/// Kind label.
pub const KIND: &str = "MongoTarget";

/// How long a target that is not Ready waits before the next attempt.
pub const NOT_READY_RETRY: Duration = Duration::from_secs(30);

/// Reconcile one MongoTarget.
pub async fn reconcile(target: Arc<MongoTarget>, ctx: Arc<MongoContext>) -> Result<Action> {
    let _timer = ctx.shared.metrics.reconcile(KIND);
    let name = target.name_any();
    let mut st = target.status.clone().unwrap_or_default();
    let before = st.conditions.clone();
    let (outcome, requeue) = match connect_and_resync(&target, &ctx, &mut st).await {
        Ok(()) => (
            Outcome::ready(reason::CONNECTED, "reachable, authenticated and authorised to manage roles and users"),
            ctx.shared.resync,
        ),
        Err(e) => {
            ctx.shared.metrics.reconcile_failed(KIND, &e);
            tracing::warn!(target = %name, error = %e, "target not ready");
            ctx.connections.lock().await.remove(&name);
            (target_outcome(&e), NOT_READY_RETRY)
        }
    };
    st.conditions = conditions::merge(&before, &outcome, target.metadata.generation, &status::now());
    st.observed_generation = target.metadata.generation;
    let api: Api<MongoTarget> = Api::all(ctx.shared.client.clone());
    // lastResyncTime changes every pass; compare without it so a steady
    // state does not write status needlessly more than once per resync.
    status::apply(&api, &target, target.status.as_ref(), &st).await?;
    status::publish_transition(&ctx.shared, target.as_ref(), &before, &st.conditions).await;
    Ok(Action::requeue(requeue))
}

/// Map an error to the target's Ready condition.
pub fn target_outcome(e: &Error) -> Outcome {
    match e {
        Error::Secret { .. } => Outcome::stalled(reason::SECRET_NOT_FOUND, e.to_string()),
        Error::Backend { transient: true, .. } => Outcome::progressing(reason::UNREACHABLE, e.to_string()),
        Error::Backend { message, .. }
            if message.contains("unauthorized") || message.contains("authentication") || message.contains("lacks") =>
        {
            Outcome::stalled(reason::UNAUTHORIZED, e.to_string())
        }
        Error::Backend { .. } | Error::Config(_) => Outcome::stalled(reason::INVALID_SPEC, e.to_string()),
        _ => Outcome::progressing(reason::BACKEND_ERROR, e.to_string()),
    }
}

async fn connect_and_resync(target: &MongoTarget, ctx: &MongoContext, st: &mut MongoTargetStatus) -> Result<()> {
    let name = target.name_any();
    let conn = connect(ctx, target).await?;
    let probe = connection::probe(&name, &conn.client, conn.tls_verification).await?;
    st.server_version = Some(probe.version);
    st.tls_verification = Some(probe.tls_verification.to_string());

    // Full resync: every subject the index knows, plus ledger entries that
    // no live binding wants any more.
    ctx.prime().await;
    let work = resync_work(target, ctx, &conn).await?;
    let _guard = conn.write_lock.lock().await;
    let report = sync::sync(&name, &conn.client, &ctx.shared.metrics, target.spec.adopt, &work).await?;
    if !report.drifted.is_empty() {
        ctx.shared
            .metrics
            .drift_corrections
            .get_or_create(&crate::runtime::metrics::DriftLabels { backend: BACKEND.into(), target: name.clone() })
            .inc_by(report.drifted.len() as u64);
        let note = format!("restored out-of-band changes to {}", report.drifted.join(", "));
        tracing::warn!(target = %name, drifted = ?report.drifted, "drift corrected");
        status::publish_warning(&ctx.shared, target, "DriftCorrected", &note).await;
    }
    // What dbgrant manages after this pass: every wanted subject whose
    // objects now match (orphans were just dropped, conflicts are not ours).
    let managed: Vec<&SubjectWork> = work
        .iter()
        .filter(|w| w.desired.is_some() && report.results.get(&w.subject) == Some(&SubjectResult::Applied))
        .collect();
    st.managed_roles = Some(managed.len() as u32);
    st.managed_users = Some(managed.iter().filter(|w| w.objects.user.is_some()).count() as u32);
    st.last_resync_time = Some(status::now());
    Ok(())
}

async fn resync_work(target: &MongoTarget, ctx: &MongoContext, conn: &TargetConnection) -> Result<Vec<SubjectWork>> {
    let name = target.name_any();
    let mut work = Vec::new();
    let mut covered = BTreeSet::new();
    {
        let idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
        for subject in idx.subjects(&name) {
            if let Ok(objects) = objects_for(&target.spec.oidc, subject) {
                covered.insert(format!("{ROLE_DB}.{}", objects.role));
                if let Some(u) = &objects.user {
                    covered.insert(format!("{USER_DB}.{u}"));
                }
                work.push(SubjectWork {
                    subject: subject.clone(),
                    desired: idx.desired(&name, subject),
                    objects,
                    retain: false,
                });
            }
        }
    }
    let ledger = sync::ledger_all(&name, &conn.client, &ctx.shared.metrics).await?;
    for id in ledger.difference(&covered) {
        if let Some(role) = id.strip_prefix("admin.") {
            let user_id = format!("{USER_DB}.{role}");
            let user = ledger.contains(&user_id).then(|| role.to_string());
            work.push(SubjectWork {
                subject: SubjectKey { kind: SubjectKind::Group, id: role.to_string() },
                objects: SubjectObjects { role: role.to_string(), user },
                desired: None,
                retain: false,
            });
        } else if let Some(user) = id.strip_prefix("$external.")
            && !ledger.contains(&format!("admin.{user}"))
        {
            work.push(SubjectWork {
                subject: SubjectKey { kind: SubjectKind::User, id: user.to_string() },
                objects: SubjectObjects { role: user.to_string(), user: Some(user.to_string()) },
                desired: None,
                retain: false,
            });
        }
    }
    Ok(work)
}

/// The cached connection for `target`, built anew when its spec changed.
pub async fn connect(ctx: &MongoContext, target: &MongoTarget) -> Result<Arc<TargetConnection>> {
    let name = target.name_any();
    let mut conns = ctx.connections.lock().await;
    if let Some(c) = conns.get(&name)
        && c.generation == target.metadata.generation
    {
        return Ok(c.clone());
    }
    let (opts, tls_verification) = connection::client_options(&ctx.shared, target).await?;
    let client = mongodb::Client::with_options(opts).map_err(|e| connection::classify(&name, "connecting", &e))?;
    let conn = Arc::new(TargetConnection {
        client,
        tls_verification,
        write_lock: tokio::sync::Mutex::new(()),
        generation: target.metadata.generation,
    });
    conns.insert(name, conn.clone());
    Ok(conn)
}

/// Whether a target's status says it is Ready for its current spec.
pub fn is_ready(target: &MongoTarget) -> bool {
    target.status.as_ref().is_some_and(|s| {
        s.observed_generation == target.metadata.generation
            && conditions::ready(&s.conditions).is_some_and(|c| c.status == "True")
    })
}

/// Error policy: log, count, back off.
pub fn error_policy(target: Arc<MongoTarget>, error: &Error, ctx: Arc<MongoContext>) -> Action {
    tracing::warn!(target = %target.name_any(), error = %error, "reconcile failed");
    ctx.shared.metrics.reconcile_failed(KIND, error);
    Action::requeue(NOT_READY_RETRY)
}
