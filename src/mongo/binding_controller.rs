//! The MongoRoleBinding controller.
//!
//! ```text
//! dereference target ─▶ evaluate (expiry, policy, subjects) ─▶ index
//!        ─▶ sync affected subjects on the target ─▶ status + Event
//! ```
//!
//! Revocation (delete, expiry, denial) is the same path with the binding
//! taken out of the index. Cleanup never re-validates the spec: a bad spec
//! must not block revocation.

use std::{collections::BTreeSet, sync::Arc};

use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};

use super::{
    MongoContext,
    sync::{self, SubjectResult, SubjectWork},
    target_controller,
};
use crate::{
    Error, FINALIZER, Result,
    api::{
        DeletionPolicy, MongoRoleBinding, MongoTarget, SubjectKey, conditions,
        conditions::{Outcome, reason},
    },
    plan::{
        expiry::{self, ExpiryState},
        index::{Affected, BindingIndex, Contribution},
        mongo::{MongoGrant, ROLE_DB, USER_DB, objects_for},
        policy,
    },
    runtime::status,
};

/// Kind label.
pub const KIND: &str = "MongoRoleBinding";

/// How often a binding whose target is not Ready looks again by itself.
pub const TARGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What evaluating a binding against its target decided.
#[derive(Debug)]
pub struct Evaluation {
    /// The contribution to put in the index, or None to revoke.
    pub contribution: Option<Contribution<MongoGrant>>,
    /// Why there is no contribution.
    pub blocked: Option<Outcome>,
    /// Expiry.
    pub expiry: ExpiryState,
}

/// Evaluate a binding against its target at `now`. Pure.
pub fn evaluate(b: &MongoRoleBinding, target: Option<&MongoTarget>, now: jiff::Timestamp) -> Evaluation {
    let ns = b.namespace().unwrap_or_default();
    let target_name = &b.spec.target_ref.name;
    let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let blocked = |o: Outcome, expiry| Evaluation { contribution: None, blocked: Some(o), expiry };
    let at = match expiry::expiry_instant(created, &b.spec.expiry) {
        Ok(at) => at,
        Err(e) => return blocked(Outcome::stalled(reason::INVALID_SPEC, e), ExpiryState::Never),
    };
    let exp = expiry::state(now, at);
    if b.metadata.deletion_timestamp.is_some() {
        return blocked(Outcome::progressing(reason::REVOKING, "revoking access before deletion"), exp);
    }
    if let ExpiryState::Expired(t) = exp {
        return blocked(Outcome::not_ready(reason::EXPIRED, format!("access expired at {t} and was revoked")), exp);
    }
    let Some(target) = target else {
        return blocked(
            Outcome::stalled(
                reason::TARGET_NOT_FOUND,
                format!("MongoTarget {target_name} does not exist; create it or fix spec.targetRef"),
            ),
            exp,
        );
    };
    let denials = policy::evaluate_mongo(&target.spec.policy, &ns, target_name, &b.spec.roles, &b.spec.privileges);
    if !denials.is_empty() {
        return blocked(
            Outcome::stalled(reason::GRANT_DENIED, format!("nothing applied: {}", denials.join("; "))),
            exp,
        );
    }
    let mut subjects = BTreeSet::new();
    let mut invalid = Vec::new();
    for s in &b.spec.subjects {
        let key = s.key();
        match objects_for(&target.spec.oidc, &key) {
            Ok(_) => {
                subjects.insert(key);
            }
            Err(e) => invalid.push(e),
        }
    }
    if !invalid.is_empty() {
        return blocked(
            Outcome::stalled(reason::INVALID_SPEC, format!("nothing applied: {}", invalid.join("; "))),
            exp,
        );
    }
    Evaluation {
        contribution: Some(Contribution {
            target: target_name.clone(),
            subjects,
            grant: MongoGrant::from_spec(&b.spec.roles, &b.spec.privileges),
        }),
        blocked: None,
        expiry: exp,
    }
}

/// The index key of a binding.
pub fn key(b: &MongoRoleBinding) -> String {
    format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any())
}

impl MongoContext {
    /// Put every binding that exists at start-up into the index before any
    /// reconcile writes, so a role is never shrunk to a partial union.
    pub async fn prime(&self) {
        self.primed
            .get_or_init(|| async {
                tracing::debug!("waiting for the target and binding caches");
                crate::runtime::cache::wait_ready(&self.targets).await;
                crate::runtime::cache::wait_ready(&self.bindings).await;
                tracing::debug!("caches ready; priming the binding index");
                let now = jiff::Timestamp::now();
                let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
                for b in self.bindings.state() {
                    // A binding without dbgrant's finalizer was never applied
                    // (the finalizer comes first); it joins the index at its
                    // first reconcile. Priming it anyway would keep its grant
                    // in the index for good if it is deleted before then: a
                    // deletion without the finalizer never reaches cleanup.
                    if !b.finalizers().iter().any(|f| f == FINALIZER) {
                        continue;
                    }
                    let target = self.targets.get(&kube::runtime::reflector::ObjectRef::new(&b.spec.target_ref.name));
                    if let Some(c) = evaluate(&b, target.as_deref(), now).contribution {
                        idx.upsert(&key(&b), c);
                    }
                }
                tracing::info!(bindings = idx.len(), "binding index primed");
            })
            .await;
    }
}

/// Reconcile one MongoRoleBinding.
pub async fn reconcile(b: Arc<MongoRoleBinding>, ctx: Arc<MongoContext>) -> Result<Action> {
    let _timer = ctx.shared.metrics.reconcile(KIND);
    ctx.prime().await;
    let ns = b.namespace().unwrap_or_default();
    let api: Api<MongoRoleBinding> = Api::namespaced(ctx.shared.client.clone(), &ns);
    // The finalizer goes on before anything is granted, in this same pass.
    let b = crate::runtime::finalize::ensure(&api, FINALIZER, b).await?;
    finalizer(&api, FINALIZER, b, |event| async {
        match event {
            Finalizer::Apply(b) => apply(b, &ctx).await,
            Finalizer::Cleanup(b) => cleanup(b, &ctx).await,
        }
    })
    .await
    .map_err(Error::from)
}

fn target_of(ctx: &MongoContext, b: &MongoRoleBinding) -> Option<Arc<MongoTarget>> {
    ctx.targets.get(&kube::runtime::reflector::ObjectRef::new(&b.spec.target_ref.name))
}

async fn apply(b: Arc<MongoRoleBinding>, ctx: &MongoContext) -> Result<Action> {
    let now = jiff::Timestamp::now();
    let target = target_of(ctx, &b);
    let eval = evaluate(&b, target.as_deref(), now);
    let key = key(&b);
    let own_subjects: BTreeSet<SubjectKey> = eval.contribution.as_ref().map(|c| c.subjects.clone()).unwrap_or_default();
    let affected = {
        let mut idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
        match eval.contribution.clone() {
            Some(c) => idx.upsert(&key, c),
            None => idx.remove(&key),
        }
    };
    let current = b.status.clone().unwrap_or_default();
    let already_applied = current.observed_generation == b.metadata.generation
        && conditions::ready(&current.conditions).is_some_and(|c| c.status == "True");

    let mut st = current.clone();
    let mut waiting_for_target = false;
    st.expires_at = eval.expiry.instant().map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    let outcome = match (&eval.blocked, target.as_deref()) {
        (Some(blocked), Some(t)) if !affected.is_empty() || !st.roles.is_empty() || !st.users.is_empty() => {
            // Revoke what this binding contributed; the index already
            // excludes it, so the sync shrinks or drops.
            revoke(ctx, t, affected, false).await?;
            st.roles.clear();
            st.users.clear();
            blocked.clone()
        }
        (Some(blocked), _) => blocked.clone(),
        // evaluate() only yields a contribution when the target exists.
        (None, None) => Outcome::stalled(reason::TARGET_NOT_FOUND, "target not found"),
        (None, Some(t)) if t.metadata.deletion_timestamp.is_some() => Outcome::stalled(
            reason::TARGET_NOT_READY,
            format!(
                "MongoTarget {} is being deleted and waits for this binding; delete the binding to revoke its access",
                t.name_any()
            ),
        ),
        (None, Some(t)) if !target_controller::is_ready(t) => {
            // Woken when the target changes, but the watch that wakes this
            // binding and the target cache it reads are separate streams:
            // look again soon in case the cache lagged behind.
            waiting_for_target = true;
            Outcome::progressing(
                reason::TARGET_NOT_READY,
                format!("waiting for MongoTarget {} to be Ready", t.name_any()),
            )
        }
        (None, Some(_)) if affected.is_empty() && already_applied => {
            // Nothing changed: drift is the target's periodic resync's job,
            // so a steady state costs no backend calls per binding.
            conditions::ready(&current.conditions)
                .map(|c| Outcome::ready(reason::APPLIED, c.message.clone()))
                .unwrap_or_else(|| Outcome::ready(reason::APPLIED, "applied"))
        }
        (None, Some(t)) => {
            let subjects: BTreeSet<SubjectKey> =
                affected.iter().map(|(_, s)| s.clone()).chain(own_subjects.iter().cloned()).collect();
            let report = match sync_subjects(ctx, t, &subjects, false).await {
                Ok(report) => report,
                Err(e) => {
                    // Say on the binding why it is not applied (yet); the
                    // error policy retries with backoff.
                    if let Some(outcome) = sync_failure(&e) {
                        let mut failed = st.clone();
                        failed.conditions =
                            conditions::merge(&current.conditions, &outcome, b.metadata.generation, &status::now());
                        failed.observed_generation = b.metadata.generation;
                        let api: Api<MongoRoleBinding> = Api::namespaced(ctx.shared.client.clone(), &ns_of(&b));
                        if let Err(se) = status::apply(&api, &b, b.status.as_ref(), &failed).await {
                            tracing::warn!(binding = %key, error = %se, "could not report the failure on status");
                        }
                        status::publish_transition(&ctx.shared, b.as_ref(), &current.conditions, &failed.conditions)
                            .await;
                    }
                    return Err(e);
                }
            };
            let mut conflicts = Vec::new();
            let mut rejected = Vec::new();
            for s in &own_subjects {
                match report.results.get(s) {
                    Some(SubjectResult::Conflict(c)) => conflicts.extend(c.iter().cloned()),
                    Some(SubjectResult::Rejected(m)) => rejected.push(m.clone()),
                    _ => {}
                }
            }
            let objects: Vec<_> = own_subjects.iter().filter_map(|s| objects_for(&t.spec.oidc, s).ok()).collect();
            st.roles = objects.iter().map(|o| format!("{ROLE_DB}.{}", o.role)).collect();
            st.users = objects.iter().filter_map(|o| o.user.as_ref()).map(|u| format!("{USER_DB}.{u}")).collect();
            if !conflicts.is_empty() {
                Outcome::stalled(
                    reason::CONFLICT,
                    format!(
                        "{} already exist and were not created by dbgrant; left untouched (set spec.adopt on the MongoTarget to take them over)",
                        conflicts.join(", ")
                    ),
                )
            } else if !rejected.is_empty() {
                Outcome::stalled(reason::REJECTED, rejected.join("; "))
            } else {
                st.last_applied_time = Some(status::now());
                Outcome::ready(
                    reason::APPLIED,
                    format!("granted to {} subject(s) on MongoTarget {}", own_subjects.len(), t.name_any()),
                )
            }
        }
    };
    st.conditions = conditions::merge(&current.conditions, &outcome, b.metadata.generation, &status::now());
    st.observed_generation = b.metadata.generation;
    let api: Api<MongoRoleBinding> = Api::namespaced(ctx.shared.client.clone(), &b.namespace().unwrap_or_default());
    status::apply(&api, &b, b.status.as_ref(), &st).await?;
    status::publish_transition(&ctx.shared, b.as_ref(), &current.conditions, &st.conditions).await;
    let mut requeue = expiry::requeue_after(now, eval.expiry, ctx.shared.resync);
    if waiting_for_target {
        requeue = requeue.min(TARGET_WAIT);
    }
    Ok(Action::requeue(requeue))
}

fn ns_of(b: &MongoRoleBinding) -> String {
    b.namespace().unwrap_or_default()
}

/// The Ready outcome for a binding whose sync failed: the target is
/// unreachable or failing over (retried), dbgrant's identity was refused,
/// a Secret is missing, or another backend error. None for errors that are
/// not about the backend (the apiserver itself).
pub fn sync_failure(e: &Error) -> Option<Outcome> {
    match e {
        Error::Backend { .. } | Error::Secret { .. } => {
            let o = target_controller::target_outcome(e);
            Some(if o.reason == reason::INVALID_SPEC {
                Outcome::progressing(reason::BACKEND_ERROR, e.to_string())
            } else {
                o
            })
        }
        _ => None,
    }
}

async fn cleanup(b: Arc<MongoRoleBinding>, ctx: &MongoContext) -> Result<Action> {
    let affected = ctx.index.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(&b));
    // Targets keep the dbgrant.io/bindings finalizer while a binding names
    // them, so a target is gone here only if it never existed or someone
    // removed that finalizer by hand.
    let Some(target) = target_of(ctx, &b) else {
        tracing::info!(binding = %key(&b), target = %b.spec.target_ref.name, "target gone; nothing to revoke");
        return Ok(Action::await_change());
    };
    if target_controller::never_connected(&target)
        && b.status.as_ref().is_none_or(|s| s.roles.is_empty() && s.users.is_empty())
    {
        tracing::info!(binding = %key(&b), target = %target.name_any(), "target never connected; nothing to revoke");
        return Ok(Action::await_change());
    }
    // Subjects this binding named that the index no longer had (e.g. it
    // was denied) are still checked, so nothing it once created lingers.
    let mut all = affected;
    for s in &b.spec.subjects {
        all.insert((target.name_any(), s.key()));
    }
    revoke(ctx, &target, all, b.spec.deletion_policy == DeletionPolicy::Retain).await?;
    tracing::info!(binding = %key(&b), target = %target.name_any(), "access revoked");
    Ok(Action::await_change())
}

async fn revoke(ctx: &MongoContext, target: &MongoTarget, affected: Affected, retain: bool) -> Result<()> {
    if affected.is_empty() {
        return Ok(());
    }
    if !target_controller::can_revoke(target) {
        return Err(Error::Backend {
            backend: super::BACKEND,
            target: target.name_any(),
            message: "target is not Ready; revocation waits for it (the finalizer keeps the binding until then)".into(),
            transient: true,
        });
    }
    let subjects = affected.into_iter().map(|(_, s)| s).collect();
    sync_subjects(ctx, target, &subjects, retain).await.map(|_| ())
}

async fn sync_subjects(
    ctx: &MongoContext,
    target: &MongoTarget,
    subjects: &BTreeSet<SubjectKey>,
    retain: bool,
) -> Result<sync::SyncReport> {
    let name = target.name_any();
    let conn = target_controller::connect(ctx, target).await?;
    // While a recent sync found the target unreachable, fail at once
    // (before and after waiting for the lock) rather than hold the lock and
    // a reconcile slot for the driver's whole server selection timeout.
    conn.check_available(&name)?;
    let _guard = conn.write_lock.lock().await;
    conn.check_available(&name)?;
    // The union is read under the write lock, so no sync can apply an
    // older union after a newer one.
    let work = {
        let idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
        subject_work(target, &idx, subjects, retain)
    };
    let result = sync::sync(&name, &conn.client, &ctx.shared.metrics, target.spec.adopt, &work).await;
    conn.record(&result);
    result
}

/// The sync work for `subjects` on `target`: each subject's objects and the
/// union of its live bindings in `idx` (None revokes; `retain` then leaves
/// the objects in place). Subjects the target cannot name are skipped. Pure.
pub fn subject_work(
    target: &MongoTarget,
    idx: &BindingIndex<MongoGrant>,
    subjects: &BTreeSet<SubjectKey>,
    retain: bool,
) -> Vec<SubjectWork> {
    let name = target.name_any();
    subjects
        .iter()
        .filter_map(|s| {
            let objects = objects_for(&target.spec.oidc, s).ok()?;
            let desired = idx.desired(&name, s);
            Some(SubjectWork { subject: s.clone(), retain: retain && desired.is_none(), desired, objects })
        })
        .collect()
}

/// Error policy: log, count, back off.
pub fn error_policy(b: Arc<MongoRoleBinding>, error: &Error, ctx: Arc<MongoContext>) -> Action {
    tracing::warn!(binding = %key(&b), target = %b.spec.target_ref.name, error = %error, "reconcile failed");
    ctx.shared.metrics.reconcile_failed(KIND, error);
    Action::requeue(std::time::Duration::from_secs(if matches!(error, Error::Backend { transient: true, .. }) {
        15
    } else {
        60
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(message: &str, transient: bool) -> Error {
        Error::Backend { backend: super::super::BACKEND, target: "t".into(), message: message.into(), transient }
    }

    #[test]
    fn a_failed_sync_says_why_on_the_binding() {
        let o = sync_failure(&backend("server unreachable: no MongoDB server answered within 5s", true)).unwrap();
        assert_eq!((o.ready, o.reason), (false, reason::UNREACHABLE));
        let o = sync_failure(&backend("rolesInfo unauthorized (code 13): ...", false)).unwrap();
        assert_eq!((o.ready, o.reason), (false, reason::UNAUTHORIZED));
        let o = sync_failure(&backend("createRole failed: something new (code 12345)", false)).unwrap();
        assert_eq!((o.ready, o.reason), (false, reason::BACKEND_ERROR), "never InvalidSpec for a server error");
        assert!(sync_failure(&Error::Config("x".into())).is_none());
    }
}
