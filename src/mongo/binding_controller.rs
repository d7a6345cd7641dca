//! The MongoRoleBinding controller.
//!
//! ```text
//! dereference target ─▶ evaluate (expiry, policy, subjects) ─▶ index
//!        ─▶ sync affected subjects on the target ─▶ status + Event
//! ```
//!
//! Revocation (delete, expiry, denial) is the same path with the binding
//! taken out of the index, and is confirmed: the subjects' objects are read
//! back after the writes, and the finalizer stays until they no longer
//! carry what the binding contributed. A contribution the server refuses
//! is isolated (see `sync::isolate`) and left out of the union, so it
//! never blocks another binding's apply or revoke.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kube::{ResourceExt, runtime::controller::Action};

use super::{
    MongoContext,
    sync::{self, SubjectResult, SyncReport},
    target_controller,
};
use crate::api::conditions::{self, Outcome, reason};
use crate::api::{MongoRoleBinding, MongoTarget, SubjectKey, TargetMode, target};
use crate::plan::index::{Affected, Rejection};
use crate::plan::mongo::{MongoGrant, ROLE_DB, USER_DB, canonical, objects_for};
use crate::plan::{expiry, gate, policy};
use crate::runtime::lifecycle::{self, Lifecycle, Role};
use crate::runtime::object::key;
use crate::runtime::status;
use crate::{Error, Failure, Result};

/// How long a contribution the server refused stays out of its subjects'
/// unions before its binding tries it again by itself (a spec change, or a
/// change to another binding naming the same subject, retries at once).
pub const REJECTED_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// What evaluating a binding against its target decided.
pub type Evaluation = gate::Evaluation<MongoGrant>;

/// Evaluate a binding against its target at `now`. Pure.
pub fn evaluate(b: &MongoRoleBinding, target: Option<&MongoTarget>, now: jiff::Timestamp) -> Evaluation {
    let ns = b.namespace().unwrap_or_default();
    let target_name = &b.spec.target_ref.name;
    let gated = gate::Binding::of(&b.metadata, &b.spec.expiry, "MongoTarget", target_name, false);
    gated.evaluate(target, now, |target, exp| {
        let denials = policy::evaluate_mongo(
            &target.spec.policy,
            &target.spec.oidc.auth_name_prefix,
            &ns,
            target_name,
            &b.spec.roles,
            &b.spec.privileges,
            b.spec.deletion_policy,
        );
        if !denials.is_empty() {
            return Evaluation::blocked(
                Outcome::stalled(reason::GRANT_DENIED, format!("nothing applied: {}", denials.join("; "))),
                exp,
            );
        }
        let mut subjects = BTreeSet::new();
        let mut invalid = Vec::new();
        for s in &b.spec.subjects {
            let key = canonical(&target.spec.oidc, s.key());
            match objects_for(&target.spec.oidc, &key) {
                Ok(_) => {
                    subjects.insert(key);
                }
                Err(e) => invalid.push(e),
            }
        }
        let grant = MongoGrant::from_spec(&b.spec.roles, &b.spec.privileges);
        Evaluation::granting(target_name, subjects, invalid, grant, exp)
    })
}

fn target_of(ctx: &MongoContext, b: &MongoRoleBinding) -> Option<Arc<MongoTarget>> {
    ctx.targets.get(&kube::runtime::reflector::ObjectRef::new(&b.spec.target_ref.name))
}

/// The MongoRoleBinding controller.
impl Lifecycle<MongoRoleBinding> for MongoContext {
    const ROLE: Role = Role::Binding;

    async fn apply(b: Arc<MongoRoleBinding>, ctx: &MongoContext) -> Result<Action> {
        let now = jiff::Timestamp::now();
        let target = target_of(ctx, &b);
        let eval = evaluate(&b, target.as_deref(), now);
        let key = key(&*b);
        let own_subjects: BTreeSet<SubjectKey> =
            eval.contribution.as_ref().map(|c| c.subjects.iter().cloned().collect()).unwrap_or_default();
        let (affected, rejected) = {
            let mut idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
            let mut affected = match eval.contribution.clone() {
                Some(c) => idx.upsert(&key, c),
                None => idx.remove(&key),
            };
            // Subjects an earlier pass of this binding changed but could not
            // finish (or confirm): synced again until they are done.
            affected.extend(ctx.take_pending(&key));
            // A refused contribution is tried again once it has sat out long
            // enough; until then, the binding reports the refusal it has.
            let retry_before = now - jiff::SignedDuration::try_from(REJECTED_RETRY).unwrap_or_default();
            if idx.rejections(&key).values().any(|r| r.since <= retry_before) {
                affected.extend(idx.retry(&key));
            }
            (affected, idx.rejections(&key))
        };
        let current = b.status.clone().unwrap_or_default();
        let already_applied = current.observed_generation == b.metadata.generation
            && conditions::ready(&current.conditions).is_some_and(|c| c.status == "True")
            && rejected.is_empty();

        let mut st = current.clone();
        let mut waiting_for_target = false;
        st.expires_at = eval.expiry.instant().map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
        let outcome = match (&eval.blocked, target.as_deref()) {
            (Some(blocked), Some(t)) if !affected.is_empty() || !st.roles.is_empty() || !st.users.is_empty() => {
                // Revoke what this binding contributed; the index already
                // excludes it, so the sync shrinks or drops. Its subjects are
                // checked even if the index no longer had them (a retry after
                // an unconfirmed revocation).
                let mut all = affected;
                all.extend(b.spec.subjects.iter().map(|s| (t.name_any(), canonical(&t.spec.oidc, s.key()))));
                if let Err(e) = revoke(ctx, &b, t, all.clone(), false).await {
                    ctx.add_pending(&key, all);
                    report_revocation_failure(ctx, &b, &e).await;
                    return Err(e);
                }
                st.roles.clear();
                st.users.clear();
                blocked.clone()
            }
            (Some(blocked), _) => blocked.clone(),
            // evaluate() only yields a contribution when the target exists.
            (None, None) => Outcome::stalled(reason::TARGET_NOT_FOUND, "target not found"),
            (None, Some(t)) if let Some((why, wait)) = lifecycle::target_unusable("MongoTarget", t) => {
                waiting_for_target = wait.is_some();
                why
            }
            (None, Some(t)) if affected.is_empty() && !rejected.is_empty() => {
                // Refused recently and nothing changed since: say so again
                // without asking the server; the binding retries by itself.
                st.roles.clear();
                st.users.clear();
                rejected_outcome(t, &rejected)
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
                // Subjects this binding no longer names lose its grant: that is
                // a revocation, so it is confirmed like one.
                let dropped: BTreeSet<SubjectKey> = subjects.difference(&own_subjects).cloned().collect();
                let synced = sync_subjects(ctx, &b, t, &subjects, false, &dropped)
                    .await
                    .and_then(|report| unconfirmed_error(t, &report, &dropped).map_or(Ok(report), Err));
                let report = match synced {
                    Ok(report) => report,
                    Err(e) => {
                        ctx.add_pending(&key, affected.clone());
                        // Say on the binding why it is not applied (yet); the
                        // error policy retries with backoff.
                        if let Some(outcome) = sync_failure(&e) {
                            let failed = st.clone();
                            if let Err(se) =
                                status::finish(&ctx.shared, b.as_ref(), b.status.as_ref(), failed, &outcome).await
                            {
                                tracing::warn!(binding = %key, error = %se, "could not report the failure on status");
                            }
                        }
                        return Err(e);
                    }
                };
                ctx.after_sync(&t.name_any(), &report, &key);
                let mut conflicts = Vec::new();
                let mut refused = Vec::new();
                for s in &own_subjects {
                    match report.results.get(s) {
                        Some(SubjectResult::Conflict(c)) => conflicts.extend(c.iter().cloned()),
                        Some(SubjectResult::Rejected(m)) => refused.push(m.clone()),
                        _ => {}
                    }
                }
                if t.spec.mode == TargetMode::Observe && conflicts.is_empty() {
                    // Nothing was written: say what would be, and keep the
                    // record of what dbgrant manages as it was.
                    let planned: Vec<String> = own_subjects
                        .iter()
                        .flat_map(|s| report.planned.get(s).into_iter().flatten())
                        .cloned()
                        .collect();
                    let would = if planned.is_empty() {
                        "nothing to write: the grant is in place already".to_string()
                    } else {
                        format!("would {}", planned.join("; "))
                    };
                    let message = format!("MongoTarget {} is in Observe mode, nothing written: {would}", t.name_any());
                    status::finish(
                        &ctx.shared,
                        b.as_ref(),
                        b.status.as_ref(),
                        st,
                        &Outcome::not_ready(reason::OBSERVING, message),
                    )
                    .await?;
                    return Ok(Action::requeue(expiry::requeue_after(now, eval.expiry, ctx.shared.resync)));
                }
                let own_rejections = ctx.index.lock().unwrap_or_else(|p| p.into_inner()).rejections(&key);
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
                } else if !own_rejections.is_empty() {
                    st.roles.clear();
                    st.users.clear();
                    rejected_outcome(t, &own_rejections)
                } else if !refused.is_empty() {
                    Outcome::stalled(reason::REJECTED, refused.join("; "))
                } else {
                    st.last_applied_time = Some(status::now());
                    Outcome::ready(
                        reason::APPLIED,
                        format!("granted to {} subject(s) on MongoTarget {}", own_subjects.len(), t.name_any()),
                    )
                }
            }
        };
        status::finish(&ctx.shared, b.as_ref(), b.status.as_ref(), st, &outcome).await?;
        let mut requeue = expiry::requeue_after(now, eval.expiry, ctx.shared.resync);
        if waiting_for_target {
            requeue = requeue.min(lifecycle::TARGET_WAIT);
        }
        ctx.note_rejected(&key, outcome.reason == reason::REJECTED);
        if outcome.reason == reason::REJECTED {
            requeue = requeue.min(REJECTED_RETRY);
        }
        Ok(Action::requeue(requeue))
    }

    async fn cleanup(b: Arc<MongoRoleBinding>, ctx: &MongoContext) -> Result<Action> {
        let affected = ctx.index.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(&*b));
        // Targets keep the dbgrant.io/bindings finalizer while a binding names
        // them, so a target is gone here only if it never existed or someone
        // removed that finalizer by hand.
        let Some(target) = target_of(ctx, &b) else {
            tracing::info!(binding = %key(&*b), target = %b.spec.target_ref.name, "target gone; nothing to revoke");
            return Ok(Action::await_change());
        };
        if target::never_connected(&target)
            && b.status.as_ref().is_none_or(|s| s.roles.is_empty() && s.users.is_empty())
        {
            tracing::info!(binding = %key(&*b), target = %target.name_any(), "target never connected; nothing to revoke");
            return Ok(Action::await_change());
        }
        // Subjects this binding named that the index no longer had (e.g. it
        // was denied) are still checked, so nothing it once created lingers.
        let mut all = affected;
        all.extend(ctx.take_pending(&key(&*b)));
        for s in &b.spec.subjects {
            all.insert((target.name_any(), canonical(&target.spec.oidc, s.key())));
        }
        // Retain only where the target allows it now, and never once expired.
        let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let expired = expiry::has_ended(created, &b.spec.expiry, jiff::Timestamp::now());
        let retain = policy::retains(b.spec.deletion_policy, target.spec.policy.allow_retain, expired);
        if let Err(e) = revoke(ctx, &b, &target, all.clone(), retain).await {
            ctx.add_pending(&key(&*b), all);
            report_revocation_failure(ctx, &b, &e).await;
            return Err(e);
        }
        ctx.note_rejected(&key(&*b), false);
        tracing::info!(binding = %key(&*b), target = %target.name_any(), "access revoked");
        Ok(Action::await_change())
    }
}

/// The Ready outcome of a binding whose contribution the server refused.
fn rejected_outcome(t: &MongoTarget, rejected: &BTreeMap<SubjectKey, Rejection>) -> Outcome {
    let reasons: BTreeSet<&str> = rejected.values().map(|r| r.message.as_str()).collect();
    Outcome::stalled(
        reason::REJECTED,
        format!(
            "MongoTarget {} refused this binding's grant, so nothing of it is applied (other bindings are not affected): {}",
            t.name_any(),
            reasons.into_iter().collect::<Vec<_>>().join("; ")
        ),
    )
}

/// Say on the binding that its revocation is not done yet, and why.
async fn report_revocation_failure(ctx: &MongoContext, b: &MongoRoleBinding, e: &Error) {
    let outcome = Outcome::progressing(reason::REVOCATION_PENDING, format!("revocation not complete, retrying: {e}"));
    if let Err(se) =
        status::finish(&ctx.shared, b, b.status.as_ref(), b.status.clone().unwrap_or_default(), &outcome).await
    {
        tracing::warn!(binding = %key(b), error = %se, "could not report the pending revocation on status");
    }
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

/// The error for a sync whose revocation of `subjects` is not confirmed.
fn unconfirmed_error(target: &MongoTarget, report: &SyncReport, subjects: &BTreeSet<SubjectKey>) -> Option<Error> {
    let pending: Vec<String> =
        report.unconfirmed.iter().filter(|(s, _)| subjects.contains(s)).map(|(_, m)| m.clone()).collect();
    let observing = if target.spec.mode == TargetMode::Observe {
        "the target is in Observe mode, so dbgrant writes nothing; set spec.mode: Enforce on it to revoke: "
    } else {
        ""
    };
    (!pending.is_empty()).then(|| Error::Backend {
        backend: super::BACKEND,
        target: target.name_any(),
        message: format!("revocation not confirmed: {observing}{}", pending.join("; ")),
        failure: Failure::Transient,
    })
}

/// Revoke `key`'s contribution to `affected` subjects (the index no longer
/// has it) and confirm it: the subjects' objects are read back, and an
/// error says what still differs.
async fn revoke(
    ctx: &MongoContext,
    b: &MongoRoleBinding,
    target: &MongoTarget,
    affected: Affected,
    retain: bool,
) -> Result<()> {
    if affected.is_empty() {
        return Ok(());
    }
    if !target::can_revoke(target) {
        return Err(lifecycle::revocation_waits(super::BACKEND, &target.name_any()));
    }
    let subjects = affected.into_iter().map(|(_, s)| s).collect();
    let report = sync_subjects(ctx, b, target, &subjects, retain, &subjects).await?;
    ctx.after_sync(&target.name_any(), &report, &key(b));
    unconfirmed_error(target, &report, &subjects).map_or(Ok(()), Err)
}

async fn sync_subjects(
    ctx: &MongoContext,
    b: &MongoRoleBinding,
    target: &MongoTarget,
    subjects: &BTreeSet<SubjectKey>,
    retain: bool,
    confirm: &BTreeSet<SubjectKey>,
) -> Result<sync::SyncReport> {
    let conn = target_controller::connect(ctx, target).await?;
    let held = target_controller::lock_for_writes::<MongoRoleBinding>(ctx, &conn, target).await?;
    // The union is read under the write lock, so no sync can apply an
    // older union after a newer one.
    let work = {
        let idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
        let mut work = sync::subject_work(target, &idx, subjects, retain, false);
        for w in &mut work {
            w.confirm = confirm.contains(&w.subject);
        }
        work
    };
    target_controller::sync_then_publish(ctx, &conn, held, target, b, &work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(message: &str, failure: Failure) -> Error {
        Error::Backend { backend: super::super::BACKEND, target: "t".into(), message: message.into(), failure }
    }

    #[test]
    fn a_failed_sync_says_why_on_the_binding() {
        let o = sync_failure(&backend("server unreachable: no MongoDB server answered within 5s", Failure::Transient))
            .unwrap();
        assert_eq!((o.ready, o.reason), (false, reason::UNREACHABLE));
        let o = sync_failure(&backend("rolesInfo unauthorized (code 13): ...", Failure::Unauthorized)).unwrap();
        assert_eq!((o.ready, o.reason), (false, reason::UNAUTHORIZED));
        let o = sync_failure(&backend("createRole failed: something new (code 12345)", Failure::Refused)).unwrap();
        assert_eq!((o.ready, o.reason), (false, reason::BACKEND_ERROR), "never InvalidSpec for a server error");
        // The kind decides, not the words: a configuration message that
        // mentions authentication is not Unauthorized.
        let o = target_controller::target_outcome(&backend(
            "MONGODB-OIDC authentication is not configured: workloadIdentity needs a tenant id",
            Failure::Misconfigured,
        ));
        assert_eq!(o.reason, reason::INVALID_SPEC);
        assert!(sync_failure(&Error::Config("x".into())).is_none());
    }
}
