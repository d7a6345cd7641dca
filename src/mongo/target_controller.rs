//! The MongoTarget controller: connect, check dbgrant's rights, report
//! status, and run the periodic full resync that corrects drift and
//! collects objects whose bindings vanished while the operator was down.
//!
//! The target carries the `dbgrant.io/bindings` finalizer: deleted, it
//! stays (Ready=False, `Terminating`) while any MongoRoleBinding still
//! names it, so each binding can revoke its roles through it, and goes
//! when the last one is gone.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use kube::{ResourceExt, runtime::controller::Action};

use super::{
    BACKEND, MongoContext,
    connection::{self, TargetConnection},
    sync::{self, SubjectResult, SubjectWork},
};
use crate::api::conditions::{Outcome, reason};
use crate::api::{MongoTarget, MongoTargetStatus, PendingChanges, SubjectKey, SubjectKind, TargetMode};
use crate::plan::index::BindingIndex;
use crate::plan::mongo::{MongoGrant, ROLE_DB, SubjectObjects, USER_DB};
use crate::runtime::lifecycle::{self, Lifecycle, Role};
use crate::runtime::metrics::Stage;
use crate::runtime::object::key;
use crate::runtime::{audit, status};
use crate::{Error, Failure, Result};

/// The MongoTarget controller: connect, prove dbgrant's rights, resync
/// (see the module docs); a deleted target waits for its bindings.
impl Lifecycle<MongoTarget> for MongoContext {
    const ROLE: Role = Role::Target;

    async fn apply(target: Arc<MongoTarget>, ctx: &MongoContext) -> Result<Action> {
        let resync = async |st: &mut MongoTargetStatus| {
            connect_and_resync(&target, ctx, st).await?;
            let ready = "reachable, authenticated and authorised to manage roles and users";
            Ok((lifecycle::ready_or_observing(ready, st.pending.as_ref()), ctx.shared.resync))
        };
        let failed = async |e: &Error| {
            ctx.disconnect(&target.name_any()).await;
            (target_outcome(e), lifecycle::NOT_READY_RETRY)
        };
        lifecycle::run_target(ctx, target.as_ref(), target.status.as_ref(), resync, failed).await
    }

    /// A deleted target: kept while bindings use it, so they can still
    /// revoke through it (see [`lifecycle::hold_deleted_target`]).
    async fn cleanup(target: Arc<MongoTarget>, ctx: &MongoContext) -> Result<Action> {
        let name = target.name_any();
        let users = ctx.bindings.state().into_iter().filter(|b| b.spec.target_ref.name == name);
        let users =
            lifecycle::Dependants::new(WAITING_FOR, users.map(|b| (key(&*b), b.metadata.deletion_timestamp.is_some())));
        let release = async || {
            ctx.disconnect(&name).await;
            connection::remove_private_files(&name);
        };
        let probe = async |st: &mut MongoTargetStatus| match connect_and_resync(&target, ctx, st).await {
            Ok(()) => Ok(()),
            Err(e) => {
                ctx.disconnect(&name).await;
                Err(target_outcome(&e))
            }
        };
        lifecycle::hold_deleted_target(ctx, target.as_ref(), target.status.as_ref(), users, release, probe).await
    }
}

/// What a deleted MongoTarget waits for, in its Terminating message.
const WAITING_FOR: &str = "MongoRoleBinding(s)";

/// Map an error to the target's Ready condition.
pub fn target_outcome(e: &Error) -> Outcome {
    match e {
        Error::Secret { .. } => Outcome::stalled(reason::SECRET_NOT_FOUND, e.to_string()),
        Error::Backend { failure: Failure::Transient, .. } => Outcome::progressing(reason::UNREACHABLE, e.to_string()),
        Error::Backend { failure: Failure::Unauthorized, .. } => Outcome::stalled(reason::UNAUTHORIZED, e.to_string()),
        Error::Backend { .. } | Error::Config(_) => Outcome::stalled(reason::INVALID_SPEC, e.to_string()),
        _ => Outcome::progressing(reason::BACKEND_ERROR, e.to_string()),
    }
}

async fn connect_and_resync(target: &MongoTarget, ctx: &MongoContext, st: &mut MongoTargetStatus) -> Result<()> {
    let name = target.name_any();
    let conn = connect(ctx, target).await?;
    // Known before the probe, so a target that fails it still shows it.
    st.tls_verification = Some(conn.tls_verification.to_string());
    let rights = connection::required_rights(&target.spec);
    let probe = connection::probe(&name, &conn.client, conn.tls_verification, &rights).await;
    conn.record(&probe);
    let probe = probe?;
    st.server_version = Some(probe.version);
    st.tls_verification = Some(probe.tls_verification.to_string());

    // Full resync: every subject the index knows (primed before any
    // reconcile: see lifecycle::reconcile), plus ledger entries that no
    // live binding wants any more.
    // Hold the write lock while reading the ledger and the index, so a
    // binding's sync cannot create an object between the two reads (it
    // would look like an orphan and be dropped).
    let held = lock_for_writes::<MongoTarget>(ctx, &conn, target).await?;
    let ledger = super::ledger::all(&name, &conn.client, &ctx.shared.metrics).await?;
    let work = {
        let mut idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
        let gone = idx.forget_vanished(&name, |ns, binding| {
            ctx.bindings.get(&kube::runtime::reflector::ObjectRef::new(binding).within(ns)).is_some()
        });
        if gone > 0 {
            tracing::warn!(target = %name, bindings = gone, "forgot bindings that vanished without revocation");
        }
        resync_work(target, &idx, &ledger)
    };
    let observe = target.spec.mode == TargetMode::Observe;
    let report = sync_then_publish(ctx, &conn, held, target, target, &work).await?;
    let planned: Vec<String> = report.planned.values().flatten().cloned().collect();
    ctx.shared.metrics.pending(BACKEND, &name, planned.len());
    st.pending = observe.then(|| PendingChanges::of(&planned));
    st.last_resync_time = Some(status::now());
    if observe {
        return Ok(());
    }
    // Refusals found here (a custom role dropped out of band) are recorded
    // and their bindings told; drift corrections change no binding's status.
    ctx.after_sync(&name, &report, "");
    lifecycle::report_drift(&ctx.shared, BACKEND, target, &name, &report.drifted).await;
    // What dbgrant manages after this pass: every wanted subject whose
    // objects now match (orphans were just dropped, conflicts are not ours).
    let managed: Vec<&SubjectWork> = work
        .iter()
        .filter(|w| w.desired.is_some() && report.results.get(&w.subject) == Some(&SubjectResult::Applied))
        .collect();
    st.managed_roles = Some(managed.len() as u32);
    st.managed_users = Some(managed.iter().filter(|w| w.objects.user.is_some()).count() as u32);
    Ok(())
}

/// The work of a full resync of `target`: every subject the index knows
/// there, plus the target's `ledger` entries no live binding covers (to be
/// dropped: bindings deleted while the operator was down). Pure.
pub fn resync_work(
    target: &MongoTarget,
    idx: &BindingIndex<MongoGrant>,
    ledger: &BTreeSet<String>,
) -> Vec<SubjectWork> {
    let mut work = sync::subject_work(target, idx, idx.subjects(&target.name_any()), false, false);
    let covered: BTreeSet<String> = work
        .iter()
        .flat_map(|w| {
            [Some(format!("{ROLE_DB}.{}", w.objects.role)), w.objects.user.as_ref().map(|u| format!("{USER_DB}.{u}"))]
        })
        .flatten()
        .collect();
    for id in ledger.difference(&covered) {
        let (kind, role, user) = if let Some(role) = id.strip_prefix("admin.") {
            (SubjectKind::Group, role, ledger.contains(&format!("{USER_DB}.{role}")).then(|| role.to_string()))
        } else if let Some(user) = id.strip_prefix("$external.")
            && !ledger.contains(&format!("admin.{user}"))
        {
            (SubjectKind::User, user, Some(user.to_string()))
        } else {
            continue;
        };
        work.push(SubjectWork {
            subject: SubjectKey { kind, id: role.to_string() },
            objects: SubjectObjects { role: role.to_string(), user },
            desired: None,
            contributions: Vec::new(),
            retain: false,
            confirm: false,
        });
    }
    work
}

/// Wait for `target`'s write lock on behalf of a reconcile of a `K` (the
/// wait is its `lock` stage). While a recent sync found the target
/// unreachable, fail at once, before and after the wait, rather than hold
/// the lock and a reconcile slot for the driver's whole server selection
/// timeout.
pub async fn lock_for_writes<'c, K: kube::Resource<DynamicType = ()>>(
    ctx: &MongoContext,
    conn: &'c TargetConnection,
    target: &MongoTarget,
) -> Result<tokio::sync::MutexGuard<'c, ()>> {
    let name = target.name_any();
    conn.check_available(&name)?;
    let start = Instant::now();
    let held = conn.write_lock.lock().await;
    ctx.shared.metrics.stage(&K::kind(&()), Stage::Lock, start.elapsed());
    conn.check_available(&name)?;
    Ok(held)
}

/// Make `work`'s writes on `target` while `held` (its write lock, taken
/// before `work` was read, so no sync applies an older union after a newer
/// one) is held; record on the connection how it ended; release the lock;
/// and only then publish the Event listing the writes on `trigger`: the
/// next sync on the target need not wait for the apiserver. The writes are
/// `trigger`'s `backend` stage.
pub async fn sync_then_publish<K: kube::Resource<DynamicType = ()>>(
    ctx: &MongoContext,
    conn: &TargetConnection,
    held: tokio::sync::MutexGuard<'_, ()>,
    target: &MongoTarget,
    trigger: &K,
    work: &[SubjectWork],
) -> Result<sync::SyncReport> {
    let name = target.name_any();
    let metrics = &ctx.shared.metrics;
    let start = Instant::now();
    let audit_trigger = audit::Trigger::of(trigger);
    let audit = audit::Scope::new(&ctx.shared.audit, BACKEND, &name, &audit_trigger);
    let observe = target.spec.mode == TargetMode::Observe;
    let result = sync::sync(&name, &conn.client, metrics, &audit, target.spec.adopt, observe, work).await;
    metrics.stage(&K::kind(&()), Stage::Backend, start.elapsed());
    conn.record(&result);
    drop(held);
    status::publish_writes(&ctx.shared, trigger, &audit.summaries()).await;
    result
}

/// The cached connection for `target`, built anew when its spec changed.
pub async fn connect(ctx: &MongoContext, target: &MongoTarget) -> Result<Arc<TargetConnection>> {
    let name = target.name_any();
    let mut conns = ctx.connections.lock().await;
    // Deleting a target bumps its generation but not its spec: the
    // connection stays, so bindings revoke through it even when a prune
    // has deleted the target's Secrets already.
    let deleted_only =
        |g: Option<i64>| target.metadata.deletion_timestamp.is_some() && g.map(|g| g + 1) == target.metadata.generation;
    if let Some(c) = conns.get(&name)
        && (c.generation == target.metadata.generation || deleted_only(c.generation))
    {
        return Ok(c.clone());
    }
    let built = connection::client_options(&ctx.shared, target).await.and_then(|(opts, tls_verification)| {
        let client = mongodb::Client::with_options(opts).map_err(|e| connection::classify(&name, "connecting", &e))?;
        Ok((client, tls_verification))
    });
    // The driver read the CA and client-key files while building the
    // client (or failed): they leave the disk now, whatever happened.
    connection::remove_private_files(&name);
    let (client, tls_verification) = built?;
    let conn = Arc::new(TargetConnection::new(client, target.metadata.generation, tls_verification));
    let replaced = conns.insert(name, conn.clone());
    drop(conns);
    connection::close(replaced).await;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::index::Contribution;

    #[test]
    fn bindings_that_vanished_without_cleanup_stop_granting() {
        let mut idx: BindingIndex<MongoGrant> = BindingIndex::default();
        let subject = SubjectKey { kind: SubjectKind::Group, id: "g".into() };
        let grant =
            |role: &str| MongoGrant { roles: [(role.to_string(), "orders".to_string())].into(), ..Default::default() };
        for (key, role) in [("ns/live", "read"), ("ns/ghost", "readWrite")] {
            idx.upsert(
                key,
                Contribution { target: "t".into(), subjects: [subject.clone()].into(), grant: grant(role).into() },
            );
        }
        idx.upsert(
            "ns/other",
            Contribution { target: "u".into(), subjects: [subject.clone()].into(), grant: grant("dbOwner").into() },
        );
        assert_eq!(idx.forget_vanished("t", |ns, name| ns == "ns" && name == "live"), 1);
        assert_eq!(idx.desired("t", &subject), Some(grant("read")));
        assert!(idx.get("ns/other").is_some(), "other targets' bindings are not touched");
        assert_eq!(idx.forget_vanished("t", |_, _| true), 0);
    }
}
