//! The CosmosTarget controller: obtain a token, reach the account, prove
//! dbgrant may manage its SQL role assignments, report counts against the
//! account's limits, and run the periodic resync that restores drift and
//! collects what bindings changed or deleted while the operator was down.
//!
//! ```text
//!   credential (Secrets) ─▶ GET account (first time / spec change)
//!     ─▶ sync: LIST definitions + LIST assignments ─▶ plan ─▶ writes
//!     ─▶ status: Ready, accountId, counts, lastResyncTime
//! ```
//!
//! A steady-state resync costs exactly the two LISTs.
//!
//! The target carries the `dbgrant.io/bindings` finalizer: deleted, it
//! stays (Ready=False, `Terminating`) while any CosmosRoleBinding or
//! CosmosRoleDefinition still names it, so each can revoke its access
//! through it, and goes when the last one is gone.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use kube::{ResourceExt, runtime::controller::Action};

use super::{BACKEND, CosmosContext, Freshness, account_of, arm::ArmError};
use crate::api::conditions::{self, Outcome, reason};
use crate::api::{CosmosTarget, CosmosTargetStatus, PendingChanges, TargetMode, target};
use crate::plan::cosmos::{ASSIGNMENT_LIMIT, DEFINITION_LIMIT};
use crate::runtime::lifecycle::{self, Lifecycle, Role};
use crate::runtime::object::key;
use crate::runtime::status;
use crate::{Error, Result};

/// The CosmosTarget controller: reach the account, resync, report counts
/// (see the module docs); a deleted target waits for its bindings and
/// role definitions.
impl Lifecycle<CosmosTarget> for CosmosContext {
    const ROLE: Role = Role::Target;

    async fn apply(target: Arc<CosmosTarget>, ctx: &CosmosContext) -> Result<Action> {
        let was_ready = target::is_ready(&target);
        // A spec, finalizer or deletion change, and the requeue, bring the
        // target here (its own status writes do not: see runtime::watch). A
        // Ready target resynced less than an interval ago waits for the rest of
        // it, so a steady state costs two LISTs per interval, not per event.
        if was_ready && let Some(left) = resync_left(&target, ctx.shared.resync) {
            return Ok(Action::requeue(left));
        }
        let resync = async |st: &mut CosmosTargetStatus| match duplicate_of(ctx, &target) {
            Some(other) => {
                let message = format!(
                    "account {} is already managed by CosmosTarget {other}; use one CosmosTarget per account (dbgrant's assignment names are per account)",
                    account_of(&target).id()
                );
                Ok((Outcome::stalled(reason::CONFLICT, message), lifecycle::NOT_READY_RETRY))
            }
            None => probe_and_resync(&target, ctx, st)
                .await
                .map(|(message, requeue)| (lifecycle::ready_or_observing(&message, st.pending.as_ref()), requeue)),
        };
        let failed = async |e: &Error| match e {
            // Throttling says nothing about the target's health: stay Ready
            // and come back when Azure says.
            Error::Azure { source: s @ (ArmError::Throttled { .. } | ArmError::Locked { .. }), .. } if was_ready => {
                let before = target.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                let message = conditions::ready(before).map(|c| c.message.clone()).unwrap_or_default();
                (Outcome::ready(reason::CONNECTED, message), s.retry_after().unwrap_or(lifecycle::NOT_READY_RETRY))
            }
            _ => (target_outcome(e), lifecycle::NOT_READY_RETRY),
        };
        lifecycle::run_target(ctx, target.as_ref(), target.status.as_ref(), resync, failed).await
    }

    /// A deleted target: kept while bindings or role definitions use it,
    /// so they can still revoke (and delete) through it (see
    /// [`lifecycle::hold_deleted_target`]).
    async fn cleanup(target: Arc<CosmosTarget>, ctx: &CosmosContext) -> Result<Action> {
        let name = target.name_any();
        let release = async || ctx.forget(&name);
        let probe = async |st: &mut CosmosTargetStatus| {
            probe_and_resync(&target, ctx, st).await.map(drop).map_err(|e| target_outcome(&e))
        };
        let users = users_of(ctx, &name);
        lifecycle::hold_deleted_target(ctx, target.as_ref(), target.status.as_ref(), users, release, probe).await
    }
}

/// What a deleted CosmosTarget waits for, in its Terminating message.
const WAITING_FOR: &str = "binding(s) and role definition(s)";

fn users_of(ctx: &CosmosContext, target: &str) -> lifecycle::Dependants {
    let deleting = |m: &kube::api::ObjectMeta| m.deletion_timestamp.is_some();
    let bindings = ctx.bindings.state().into_iter().filter(|b| b.spec.target_ref.name == target);
    let definitions = ctx.definitions.state().into_iter().filter(|d| d.spec.target_ref.name == target);
    let bindings = bindings.map(|b| (format!("CosmosRoleBinding {}", key(&*b)), deleting(&b.metadata)));
    let definitions = definitions.map(|d| (format!("CosmosRoleDefinition {}", d.name_any()), deleting(&d.metadata)));
    lifecycle::Dependants::new(WAITING_FOR, bindings.chain(definitions))
}

/// Map an error to the target's Ready condition.
pub fn target_outcome(e: &Error) -> Outcome {
    let msg = e.to_string();
    match e {
        Error::Secret { .. } => Outcome::stalled(reason::SECRET_NOT_FOUND, msg),
        Error::Azure { source, .. } => match source {
            ArmError::Credential(_) => Outcome::stalled(reason::CREDENTIAL_UNAVAILABLE, msg),
            ArmError::Unauthorized { .. } => Outcome::stalled(
                reason::UNAUTHORIZED,
                format!(
                    "{msg}; dbgrant's identity needs Microsoft.DocumentDB/databaseAccounts/read, sqlRoleDefinitions/* and sqlRoleAssignments/* on the account"
                ),
            ),
            ArmError::NotFound { .. } => Outcome::stalled(reason::ACCOUNT_NOT_FOUND, msg),
            ArmError::Throttled { .. } | ArmError::Locked { .. } => Outcome::progressing(reason::THROTTLED, msg),
            ArmError::Transport(_) | ArmError::Server { .. } => Outcome::progressing(reason::UNREACHABLE, msg),
            _ => Outcome::progressing(reason::BACKEND_ERROR, msg),
        },
        Error::Config(_) => Outcome::stalled(reason::INVALID_SPEC, msg),
        _ => Outcome::progressing(reason::BACKEND_ERROR, msg),
    }
}

async fn probe_and_resync(
    target: &CosmosTarget,
    ctx: &CosmosContext,
    st: &mut CosmosTargetStatus,
) -> Result<(String, Duration)> {
    let name = target.name_any();
    // Read the Secrets again once per resync so rotations take effect.
    let client = ctx.client(target, true).await?;
    if st.account_id.is_none() || st.observed_generation != target.metadata.generation {
        let r = client.get_account().await;
        ctx.shared.metrics.backend_op(BACKEND, "getAccount", r.is_ok());
        match r {
            Ok(id) => st.account_id = Some(id),
            Err(e) => return Err(ctx.handle(target).failed(name, e)),
        }
    }
    let report = ctx.sync(target, target, BTreeSet::new(), Freshness::Fresh, None).await?;
    // Drift is only what restored something dbgrant had in place (see
    // `plan::cosmos::Plan::drifted`): a resync that makes a binding's or
    // definition's first writes (the target just turned Ready) or
    // collects what no binding wants is not drift.
    let done = report.drift_corrected();
    lifecycle::report_drift(&ctx.shared, BACKEND, target, &name, &done).await;
    st.role_assignments = Some(report.assignments as u32);
    st.role_definitions = Some(report.definitions as u32);
    st.managed_role_assignments = Some(report.plan.counts.managed_assignments as u32);
    st.last_resync_time = Some(status::now());
    let observe = target.spec.mode == TargetMode::Observe;
    ctx.shared.metrics.pending(BACKEND, &name, report.planned.len());
    st.pending = observe.then(|| PendingChanges::of(&report.planned));
    let mut message = format!(
        "token obtained, account reachable, dbgrant authorised: {} of {ASSIGNMENT_LIMIT} role assignments ({} managed), {} of {DEFINITION_LIMIT} custom role definitions",
        report.assignments, report.plan.counts.managed_assignments, report.definitions
    );
    if report.assignments * 10 >= ASSIGNMENT_LIMIT * 9 || report.definitions * 10 >= DEFINITION_LIMIT * 9 {
        message.push_str("; the account is close to its limits");
    }
    // Writes that failed on their own (a 403 or 5xx on one object) do not
    // make the account unusable, but say so: a read-only identity shows
    // here.
    let failed: Vec<&String> = report
        .results
        .values()
        .filter_map(|r| if let super::sync::WriteResult::Failed(m) = r { Some(m) } else { None })
        .collect();
    if let Some(first) = failed.first() {
        message.push_str(&format!(
            "; {} write(s) failed in the last pass and are retried (first: {first}); see the bindings' status",
            failed.len()
        ));
    }
    let requeue = report.retry_after().unwrap_or(ctx.shared.resync).min(ctx.shared.resync);
    Ok((message, requeue))
}

/// Another CosmosTarget (older, or first by name) naming the same account.
fn duplicate_of(ctx: &CosmosContext, target: &CosmosTarget) -> Option<String> {
    let mine = account_of(target);
    let me = (target.metadata.creation_timestamp.as_ref().map(|t| t.0), target.name_any());
    ctx.targets
        .state()
        .into_iter()
        .filter(|t| t.name_any() != me.1 && account_of(t).key() == mine.key())
        .map(|t| (t.metadata.creation_timestamp.as_ref().map(|t| t.0), t.name_any()))
        .filter(|other| *other < me)
        .map(|(_, n)| n)
        .min()
}

/// Time left until the next resync is due, if the last one is recent.
pub fn resync_left(target: &CosmosTarget, resync: Duration) -> Option<Duration> {
    let last = target.status.as_ref()?.last_resync_time.as_ref()?.0;
    let elapsed = Duration::try_from(jiff::Timestamp::now().duration_since(last)).ok()?;
    // A little slack so the requeued reconcile itself is not skipped.
    let left = resync.checked_sub(elapsed)?;
    (left > Duration::from_secs(1)).then_some(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::target::{can_revoke, is_ready, is_terminating, never_connected, ready_before_deletion};

    #[test]
    fn a_recent_resync_is_not_repeated() {
        let mut t = super::super::fixtures::target("t", Default::default());
        let resync = Duration::from_secs(300);
        assert_eq!(resync_left(&t, resync), None, "never resynced");
        let at = |secs_ago: i64| {
            let ts = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs_ago);
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts))
        };
        t.status = Some(CosmosTargetStatus { last_resync_time: at(10), ..Default::default() });
        let left = resync_left(&t, resync).unwrap();
        assert!(left <= Duration::from_secs(290) && left > Duration::from_secs(280), "{left:?}");
        t.status = Some(CosmosTargetStatus { last_resync_time: at(301), ..Default::default() });
        assert_eq!(resync_left(&t, resync), None, "due");
    }

    #[test]
    fn a_deleted_target_lets_bindings_revoke_only_once_it_is_terminating() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut t = super::super::fixtures::target("t", Default::default());
        assert!(never_connected(&t) && !can_revoke(&t));
        let status = |o: &Outcome, generation| CosmosTargetStatus {
            conditions: conditions::merge(&[], o, Some(generation), &status::now()),
            observed_generation: Some(generation),
            last_resync_time: Some(status::now()),
            ..Default::default()
        };
        t.metadata.generation = Some(1);
        t.status = Some(status(&Outcome::ready(reason::CONNECTED, "ok"), 1));
        assert!(can_revoke(&t) && !is_terminating(&t) && !never_connected(&t));
        // Deletion bumps the generation: not Ready any more, but it was
        // Ready for this spec, so bindings may revoke through it at once.
        t.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        t.metadata.generation = Some(2);
        assert!(!is_ready(&t) && !is_terminating(&t));
        assert!(ready_before_deletion(&t) && can_revoke(&t));
        // A spec change it never applied, then deletion: it has to show it
        // works first.
        t.metadata.generation = Some(3);
        assert!(!can_revoke(&t));
        let names = ["CosmosRoleBinding ns/a", "CosmosRoleDefinition d"];
        let users = lifecycle::Dependants::new(WAITING_FOR, names.map(|n| (n.to_string(), true)));
        let o = users.outcome(users.waiting_message());
        assert_eq!((o.ready, o.reason, o.progress), (false, reason::TERMINATING, conditions::Progress::InProgress));
        assert!(o.message.starts_with("Terminating: waiting for 2 "), "{}", o.message);
        assert!(o.message.contains("ns/a") && o.message.contains("CosmosRoleDefinition d"), "{}", o.message);
        t.status = Some(status(&o, 3));
        assert!(is_terminating(&t) && can_revoke(&t));
        // Some are not being deleted: someone has to act.
        let stuck = lifecycle::Dependants { deleting: 1, ..users };
        assert_eq!(stuck.outcome(stuck.waiting_message()).progress, conditions::Progress::Stalled);
    }

    #[test]
    fn errors_map_to_plain_reasons() {
        let az = |source| Error::Azure { target: "t".into(), source };
        assert_eq!(
            target_outcome(&az(ArmError::Credential("AADSTS7000215: Invalid client secret".into()))).reason,
            reason::CREDENTIAL_UNAVAILABLE
        );
        let o = target_outcome(&az(ArmError::Unauthorized {
            status: 403,
            code: "AuthorizationFailed".into(),
            message: "no".into(),
        }));
        assert_eq!(o.reason, reason::UNAUTHORIZED);
        assert!(o.message.contains("sqlRoleAssignments"));
        assert_eq!(
            target_outcome(&az(ArmError::NotFound { code: "ResourceNotFound".into(), message: "x".into() })).reason,
            reason::ACCOUNT_NOT_FOUND
        );
        assert_eq!(target_outcome(&az(ArmError::Transport("reset".into()))).reason, reason::UNREACHABLE);
        let secret = Error::Secret { namespace: "ns".into(), name: "s".into(), problem: "not found".into() };
        assert_eq!(target_outcome(&secret).reason, reason::SECRET_NOT_FOUND);
    }
}
