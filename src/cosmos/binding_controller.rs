//! The CosmosRoleBinding controller.
//!
//! ```text
//! dereference target + role definition ─▶ evaluate (expiry, policy, scopes)
//!        ─▶ index ─▶ sync the account ─▶ status from the report + Event
//! ```
//!
//! Revocation (delete, expiry, denial, a scope or subject dropped from the
//! spec) is the same path with the binding's contribution taken out of the
//! index. Cleanup evaluates the binding as if it were live only to know
//! what it contributed (`ignore_deletion`); a denial never stops it: a
//! binding that is no longer allowed must still be revocable.
//!
//! Revocation is confirmed before it is reported: the finalizer goes, and
//! the status says `Expired` or `GrantDenied`, only once the account's
//! state after the pass ([`SyncReport::left_behind`]) no longer holds an
//! assignment the binding contributed that no other binding wants.
//! Until then the binding says `RevocationPending` (what is stuck and why)
//! and retries with backoff.

use std::{collections::BTreeSet, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::controller::Action};

pub use super::binding_status::{Evaluation, Stuck, confirm, covers, evaluate, keys_of, outcome_from, to_revoke};
use super::{
    CosmosContext, Freshness, account_of,
    binding_status::sort_assignments,
    sync::{PENDING_RETRY, SyncReport},
};
use crate::api::conditions::{self, Outcome, reason};
use crate::api::{CosmosRoleBinding, CosmosTarget, TargetMode, target};
use crate::plan::{cosmos::AssignmentKey, expiry, policy};
use crate::runtime::lifecycle::{self, Lifecycle, Role};
use crate::runtime::metrics::Stage;
use crate::runtime::object::key;
use crate::runtime::status;
use crate::{Error, Result};

/// The CosmosRoleBinding controller.
impl Lifecycle<CosmosRoleBinding> for CosmosContext {
    const ROLE: Role = Role::Binding;

    async fn apply(b: Arc<CosmosRoleBinding>, ctx: &CosmosContext) -> Result<Action> {
        let now = jiff::Timestamp::now();
        let target = ctx.target(&b.spec.target_ref.name);
        let definition = ctx.definition_of(&b);
        let eval = evaluate(&b, target.as_deref(), definition.as_deref(), now, false);
        let key = key(&*b);
        let own: BTreeSet<AssignmentKey> = eval.contribution.as_ref().map(keys_of).unwrap_or_default();
        // What it contributed until now: what is dropped from it must be seen
        // gone before the status says so.
        let (affected, previous) = {
            let mut idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
            let previous = idx.get(&key).map(keys_of).unwrap_or_default();
            let affected = match eval.contribution.clone() {
                Some(c) => idx.upsert(&key, c),
                None => idx.remove(&key),
            };
            (affected, previous)
        };
        if !affected.is_empty() {
            ctx.bump(&b.spec.target_ref.name);
        }
        // The report it was woken with after parking, if nothing changed since.
        let woken = ctx.woken(&key).filter(|_| affected.is_empty());
        let current = b.status.clone().unwrap_or_default();
        let already_applied = current.observed_generation == b.metadata.generation
            && conditions::ready(&current.conditions).is_some_and(|c| c.status == "True");

        let mut st = current.clone();
        st.expires_at = eval.expiry.instant().map(Time);
        let mut requeue = expiry::requeue_after(now, eval.expiry, ctx.shared.resync);
        let outcome = match (&eval.blocked, target.as_deref()) {
            (Some(blocked), Some(t)) if !affected.is_empty() || !st.assignments.is_empty() => {
                // Revoke what this binding contributed: the index already
                // excludes it, so the sync deletes what nobody else wants. A
                // retry (nothing changed in the index) reads the account again.
                let account = account_of(t);
                let pending = to_revoke(&account, &previous, &st.assignments, &BTreeSet::new());
                let freshness = if affected.is_empty() { Freshness::Fresh } else { Freshness::Coalesce };
                let confirmed = match revoke(ctx, &b, t, BTreeSet::new(), freshness).await {
                    Ok(report) => confirm(&report, &account, &pending),
                    Err(e) => {
                        tracing::warn!(binding = %key, target = %t.name_any(), error = %e, "revocation failed");
                        ctx.shared.metrics.reconcile_failed(&<CosmosRoleBinding as kube::Resource>::kind(&()), &e);
                        Err(Stuck::from_error(&e, &pending))
                    }
                };
                match confirmed {
                    Ok(()) => {
                        st.assignments.clear();
                        blocked.clone()
                    }
                    Err(stuck) => {
                        requeue = requeue.min(stuck.retry);
                        st.assignments = stuck.assignments.clone();
                        Outcome::progressing(
                            reason::REVOCATION_PENDING,
                            format!("{}: {}", blocked.reason, stuck.message),
                        )
                    }
                }
            }
            (Some(blocked), _) => blocked.clone(),
            (None, None) => Outcome::stalled(reason::TARGET_NOT_FOUND, "target not found"),
            (None, Some(t)) if let Some((why, wait)) = lifecycle::target_unusable("CosmosTarget", t) => {
                requeue = wait.map_or(requeue, |w| requeue.min(w));
                why
            }
            (None, Some(t)) if affected.is_empty() && already_applied => {
                // Nothing changed here: drift is the target's periodic resync's
                // job, so a steady state costs no Azure calls per binding. The
                // resync may have changed what grants this binding's access
                // (an identical foreign assignment went and dbgrant created its
                // own, say): the status follows the account's last report,
                // when it covers this binding.
                match ctx.last_report(t).filter(|r| covers(r, &own)) {
                    Some(report) => {
                        let (outcome, assignments, retry) = outcome_from(&report, &key, &own, t);
                        if outcome.ready && assignments != st.assignments {
                            st.last_applied_time = Some(status::now());
                        }
                        st.assignments = assignments;
                        requeue = retry.map_or(requeue, |r| requeue.min(r));
                        outcome
                    }
                    None => conditions::ready(&current.conditions)
                        .map(|c| Outcome::ready(reason::APPLIED, c.message.clone()))
                        .unwrap_or_else(|| Outcome::ready(reason::APPLIED, "applied")),
                }
            }
            (None, Some(t)) => {
                // Assignments it no longer wants (a scope or subject removed)
                // are revoked in the same pass, and must be seen gone too.
                let account = account_of(t);
                let dropped = to_revoke(&account, &previous, &st.assignments, &own);
                let freshness =
                    if affected.is_empty() && !dropped.is_empty() { Freshness::Fresh } else { Freshness::Coalesce };
                // With nothing to see gone, the binding is done as soon as its
                // assignments are in place, even mid-pass; while another pass
                // writes to the account it parks instead of holding its
                // reconcile slot, and is woken with the report that has its
                // answer (see `cosmos::parking`).
                let synced = if dropped.is_empty() && t.spec.mode != TargetMode::Observe {
                    match woken {
                        Some(report) => Ok(report),
                        None => match timed(ctx, ctx.grant_or_park(&b, t, &own)).await {
                            Ok(Some(report)) => Ok(report),
                            Ok(None) => return Ok(Action::requeue(requeue)),
                            Err(e) => Err(e),
                        },
                    }
                } else {
                    timed_sync(ctx, &b, t, BTreeSet::new(), freshness).await
                };
                match synced {
                    Ok(report) if t.spec.mode == TargetMode::Observe => observing(&report, &own, t),
                    Ok(report) => {
                        let (outcome, assignments, retry) = outcome_from(&report, &key, &own, t);
                        st.assignments = assignments;
                        requeue = retry.map_or(requeue, |r| requeue.min(r));
                        match confirm(&report, &account, &dropped) {
                            Ok(()) => {
                                if outcome.ready {
                                    st.last_applied_time = Some(status::now());
                                }
                                outcome
                            }
                            Err(stuck) => {
                                requeue = requeue.min(stuck.retry);
                                st.assignments.extend(stuck.assignments.clone());
                                sort_assignments(&mut st.assignments);
                                Outcome::progressing(
                                    reason::REVOCATION_PENDING,
                                    format!("access the binding no longer grants: {}", stuck.message),
                                )
                            }
                        }
                    }
                    Err(e) if e.retry_after().is_some() => {
                        let wait = e.retry_after().unwrap_or(PENDING_RETRY);
                        requeue = requeue.min(wait);
                        Outcome::progressing(reason::THROTTLED, format!("{e}; trying again in {}s", wait.as_secs()))
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        status::finish(&ctx.shared, b.as_ref(), b.status.as_ref(), st, &outcome).await?;
        Ok(Action::requeue(requeue))
    }

    async fn cleanup(b: Arc<CosmosRoleBinding>, ctx: &CosmosContext) -> Result<Action> {
        let key = key(&*b);
        let (previous, removed) = {
            let mut idx = ctx.index.lock().unwrap_or_else(|p| p.into_inner());
            (idx.get(&key).map(keys_of).unwrap_or_default(), idx.remove(&key))
        };
        // Targets keep the dbgrant.io/bindings finalizer while a binding names
        // them, so a target is gone here only if it never existed or someone
        // removed that finalizer by hand.
        let target = ctx.target(&b.spec.target_ref.name);
        if let Some(t) = &target {
            ctx.unpark(t, &key);
        }
        let Some(target) = target else {
            tracing::info!(binding = %key, target = %b.spec.target_ref.name, "target gone; nothing to revoke");
            return Ok(Action::await_change());
        };
        if target::never_connected(&target)
            && ctx.last_report(&target).is_none()
            && b.status.as_ref().is_none_or(|s| s.assignments.is_empty())
        {
            tracing::info!(binding = %key, target = %target.name_any(), "target never connected; nothing to revoke");
            return Ok(Action::await_change());
        }
        ctx.bump(&target.name_any());
        // What it would contribute if it were live: a binding deleted while the
        // operator was down never entered the index.
        let definition = ctx.definition_of(&b);
        let wanted = evaluate(&b, Some(&target), definition.as_deref(), jiff::Timestamp::now(), true)
            .contribution
            .map(|c| keys_of(&c))
            .unwrap_or_default();
        if removed.is_empty() && wanted.is_empty() && b.status.as_ref().is_none_or(|s| s.assignments.is_empty()) {
            return Ok(Action::await_change());
        }
        // Retain: release what no other binding still wants (shared
        // assignments stay managed and shrink to the remaining bindings); only
        // where the target allows it now, and never once expired.
        let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let expired = expiry::has_ended(created, &b.spec.expiry, jiff::Timestamp::now());
        let retain = policy::retains(b.spec.deletion_policy, target.spec.policy.allow_retain, expired);
        let release: BTreeSet<AssignmentKey> = if retain {
            let still = ctx.desired(&target.name_any()).assignments;
            wanted.iter().filter(|k| !still.contains_key(*k)).cloned().collect()
        } else {
            BTreeSet::new()
        };
        // The finalizer goes only once the account, read in this pass, holds
        // none of the assignments this binding contributed that no other
        // binding wants (released ones are no longer dbgrant's).
        let account = account_of(&target);
        let recorded = b.status.as_ref().map(|s| s.assignments.as_slice()).unwrap_or_default();
        let contributed: BTreeSet<AssignmentKey> = previous.union(&wanted).cloned().collect();
        let pending = to_revoke(&account, &contributed, recorded, &BTreeSet::new());
        let (stuck, error) = match revoke(ctx, &b, &target, release, Freshness::Coalesce).await {
            Ok(report) => (confirm(&report, &account, &pending).err(), None),
            Err(e) => (Some(Stuck::from_error(&e, &pending)), Some(e)),
        };
        let Some(stuck) = stuck else {
            tracing::info!(binding = %key, target = %target.name_any(), "access revoked (confirmed on the account)");
            return Ok(Action::await_change());
        };
        // Say what is stuck, keep the finalizer, retry with backoff.
        tracing::warn!(binding = %key, target = %target.name_any(), stuck = %stuck.message, "revocation not confirmed");
        let mut st = b.status.clone().unwrap_or_default();
        st.assignments = stuck.assignments.clone();
        let outcome = Outcome::progressing(reason::REVOCATION_PENDING, stuck.message.clone());
        status::finish(&ctx.shared, b.as_ref(), b.status.as_ref(), st, &outcome).await?;
        Err(error.unwrap_or(Error::Wait {
            backend: super::BACKEND,
            target: target.name_any(),
            message: stuck.message,
            retry_after: stuck.retry,
        }))
    }
}

async fn revoke(
    ctx: &CosmosContext,
    b: &CosmosRoleBinding,
    target: &CosmosTarget,
    release: BTreeSet<AssignmentKey>,
    freshness: Freshness,
) -> Result<Arc<SyncReport>> {
    if !target::can_revoke(target) {
        return Err(lifecycle::revocation_waits(super::BACKEND, &target.name_any()));
    }
    timed_sync(ctx, b, target, release, freshness).await
}

/// The outcome of a binding on an Observe-mode target: what the pass
/// would write for the binding's own assignments (the status's record of
/// what dbgrant manages stays as it was).
fn observing(report: &SyncReport, own: &BTreeSet<AssignmentKey>, t: &CosmosTarget) -> Outcome {
    let mine: Vec<&String> =
        report.planned.iter().filter(|w| own.iter().any(|k| w.contains(&format!("({k})")))).collect();
    let would = if mine.is_empty() {
        "nothing to write: the assignments are in place already".to_string()
    } else {
        format!("would {}", mine.iter().map(|w| w.as_str()).collect::<Vec<_>>().join("; "))
    };
    Outcome::not_ready(
        reason::OBSERVING,
        format!("CosmosTarget {} is in Observe mode, nothing written: {would}", t.name_any()),
    )
}

/// A binding's account sync, its time recorded as the backend stage (the
/// wait for the account's lock included).
async fn timed_sync(
    ctx: &CosmosContext,
    b: &CosmosRoleBinding,
    target: &CosmosTarget,
    release: BTreeSet<AssignmentKey>,
    freshness: Freshness,
) -> Result<Arc<SyncReport>> {
    timed(ctx, ctx.sync(b, target, release, freshness, None)).await
}

/// `sync`, its time recorded as the binding's backend stage.
async fn timed<T>(ctx: &CosmosContext, sync: impl std::future::Future<Output = T>) -> T {
    let start = std::time::Instant::now();
    let out = sync.await;
    let kind = <CosmosRoleBinding as kube::Resource>::kind(&());
    ctx.shared.metrics.stage(&kind, Stage::Backend, start.elapsed());
    out
}
