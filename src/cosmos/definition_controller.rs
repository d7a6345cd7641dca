//! The CosmosRoleDefinition controller: a custom SQL role definition on the
//! target's account, created before any assignment that uses it and
//! deleted only after the last one is gone.
//!
//! The definition is part of the account sync (see [`super`]), so this
//! controller only triggers a sync and reports the definition's part of the
//! result. Deleting a CosmosRoleDefinition revokes the bindings that use
//! it (their assignments go first), then the definition itself; if
//! assignments dbgrant does not manage still use it, the finalizer waits
//! and the status says so. The finalizer goes only once the account, read
//! in the pass, no longer holds the definition (`RevocationPending` until
//! then, with what is stuck).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use kube::{ResourceExt, runtime::controller::Action};

use super::{
    BACKEND, CosmosContext, Freshness, account_of,
    sync::{PENDING_RETRY, SyncReport, WriteResult},
};
use crate::api::conditions::{self, Outcome, reason};
use crate::api::{CosmosRoleDefinition, CosmosTarget, TargetMode, target};
use crate::plan::cosmos::{DEFINITION_LIMIT, DefinitionState};
use crate::runtime::lifecycle::{self, Lifecycle, Role};
use crate::runtime::status;
use crate::{Error, Result};

/// The definition's Ready outcome from an account report, and whether it
/// is in place.
pub fn outcome_from(report: &SyncReport, source: &str, target: &CosmosTarget) -> (Outcome, Option<String>) {
    let Some((state, result)) = report.definition(source) else {
        return (Outcome::progressing(reason::PROGRESSING, "not planned yet"), None);
    };
    let outcome = match (state, result) {
        (DefinitionState::Managed { name }, None | Some(WriteResult::Done)) => {
            let message = format!("role definition {name} is in place on CosmosTarget {}", target.name_any());
            return (Outcome::ready(reason::APPLIED, message), Some(account_of(target).definition_id(name)));
        }
        (DefinitionState::Managed { .. }, Some(WriteResult::Rejected(m))) => {
            Outcome::stalled(reason::REJECTED, format!("Azure refused the role definition: {m}"))
        }
        (DefinitionState::Managed { .. }, Some(WriteResult::LimitExceeded(m))) => {
            Outcome::stalled(reason::LIMIT_EXCEEDED, m.clone())
        }
        (DefinitionState::Managed { .. }, Some(WriteResult::Failed(m))) => Outcome::progressing(
            reason::BACKEND_ERROR,
            format!("Azure failed to write the role definition: {m}; retrying"),
        ),
        (DefinitionState::Managed { .. } | DefinitionState::Pending { .. }, _) => {
            let why = report.stopped.as_ref().map(|(s, _)| s.describe()).unwrap_or_else(|| "writing".into());
            Outcome::progressing(reason::PROGRESSING, format!("role definition not in place yet: {why}"))
        }
        (DefinitionState::Conflict { with }, _) => Outcome::stalled(
            reason::CONFLICT,
            format!(
                "role definition {with} on the account already has this roleName and dbgrant did not create it; choose another roleName"
            ),
        ),
        (DefinitionState::LimitExceeded, _) => Outcome::stalled(
            reason::LIMIT_EXCEEDED,
            format!(
                "the account already has {DEFINITION_LIMIT} custom role definitions (the Azure limit); nothing applied"
            ),
        ),
        (DefinitionState::InUse { by, .. }, _) => Outcome::stalled(
            reason::IN_USE,
            format!(
                "{by} role assignment(s) dbgrant does not manage still use this definition; it is deleted once they are gone"
            ),
        ),
        (DefinitionState::Absent, _) => Outcome::progressing(reason::REVOKING, "role definition removed"),
    };
    (outcome, None)
}

/// The CosmosRoleDefinition controller.
impl Lifecycle<CosmosRoleDefinition> for CosmosContext {
    const ROLE: Role = Role::Definition;

    async fn apply(d: Arc<CosmosRoleDefinition>, ctx: &CosmosContext) -> Result<Action> {
        let target_name = &d.spec.target_ref.name;
        let target = ctx.target(target_name);
        let current = d.status.clone().unwrap_or_default();
        let already_applied = current.observed_generation == d.metadata.generation
            && conditions::ready(&current.conditions).is_some_and(|c| c.status == "True");
        let mut st = current.clone();
        let mut requeue = ctx.shared.resync;
        let outcome = match target.as_deref() {
            // Steady state: drift is the target's periodic resync's job.
            Some(t) if already_applied && target::is_ready(t) => conditions::ready(&current.conditions)
                .map(|c| Outcome::ready(reason::APPLIED, c.message.clone()))
                .unwrap_or_else(|| Outcome::ready(reason::APPLIED, "applied")),
            None => Outcome::stalled(
                reason::TARGET_NOT_FOUND,
                format!("CosmosTarget {target_name} does not exist; create it or fix spec.targetRef"),
            ),
            Some(t) if t.metadata.deletion_timestamp.is_some() => Outcome::stalled(
                reason::TARGET_NOT_READY,
                format!(
                    "CosmosTarget {target_name} is being deleted and waits for this role definition; delete it to remove the definition from Azure"
                ),
            ),
            Some(t) if !target::is_ready(t) => {
                requeue = lifecycle::NOT_READY_RETRY;
                Outcome::progressing(
                    reason::TARGET_NOT_READY,
                    format!("waiting for CosmosTarget {target_name} to be Ready"),
                )
            }
            Some(t) => match sync_after_change(ctx, &d, t).await {
                Ok(report) if t.spec.mode == TargetMode::Observe => {
                    let name = account_of(t).definition_name(&d.name_any());
                    let mine: Vec<&String> = report.planned.iter().filter(|w| w.contains(&name)).collect();
                    let would = if mine.is_empty() {
                        "nothing to write: the role definition is in place already".to_string()
                    } else {
                        format!("would {}", mine.iter().map(|w| w.as_str()).collect::<Vec<_>>().join("; "))
                    };
                    let message = format!("CosmosTarget {target_name} is in Observe mode, nothing written: {would}");
                    Outcome::not_ready(reason::OBSERVING, message)
                }
                Ok(report) => {
                    let (outcome, id) = outcome_from(&report, &d.name_any(), t);
                    if id.is_some() {
                        st.role_definition_id = id;
                    }
                    if !outcome.ready {
                        requeue = report.retry_after().unwrap_or(PENDING_RETRY).min(requeue);
                    }
                    outcome
                }
                Err(e) if e.retry_after().is_some() => {
                    let wait = e.retry_after().unwrap_or(PENDING_RETRY);
                    requeue = wait;
                    Outcome::progressing(reason::THROTTLED, format!("{e}; trying again in {}s", wait.as_secs()))
                }
                Err(e) => return Err(e),
            },
        };
        status::finish(&ctx.shared, d.as_ref(), d.status.as_ref(), st, &outcome).await?;
        Ok(Action::requeue(requeue))
    }

    async fn cleanup(d: Arc<CosmosRoleDefinition>, ctx: &CosmosContext) -> Result<Action> {
        let target_name = &d.spec.target_ref.name;
        // Targets keep the dbgrant.io/bindings finalizer while a definition
        // names them: gone means never created, or the finalizer was removed
        // by hand.
        let Some(target) = ctx.target(target_name) else {
            tracing::info!(definition = %d.name_any(), target = %target_name, "target gone; nothing to delete");
            return Ok(Action::await_change());
        };
        if target::never_connected(&target) && ctx.last_report(&target).is_none() {
            tracing::info!(definition = %d.name_any(), target = %target_name, "target never connected; nothing to delete");
            return Ok(Action::await_change());
        }
        ctx.bump(target_name);
        if !target::can_revoke(&target) {
            return Err(Error::Backend {
                backend: BACKEND,
                target: target_name.clone(),
                message: "target is not Ready; deleting the role definition waits for it".into(),
                failure: crate::Failure::Transient,
            });
        }
        let report = ctx.sync(d.as_ref(), &target, BTreeSet::new(), Freshness::Coalesce, None).await?;
        // Confirmed on the account's state after the pass, not on the plan.
        let account = account_of(&target);
        let name = account.definition_name(&d.name_any());
        let left = report.left_behind(&account, [name.as_str()]);
        if left.as_ref().is_some_and(BTreeMap::is_empty) {
            tracing::info!(definition = %d.name_any(), target = %target_name, "role definition deleted (confirmed on the account)");
            return Ok(Action::await_change());
        }
        // Say why deletion waits, then keep the finalizer.
        let outcome = match (report.definition(&d.name_any()), left) {
            (Some((DefinitionState::InUse { .. }, _)), _) => outcome_from(&report, &d.name_any(), &target).0,
            (_, Some(left)) => Outcome::progressing(
                reason::REVOCATION_PENDING,
                format!(
                    "role definition {name} is still on the account: {}; retrying",
                    left.values().next().cloned().unwrap_or_default()
                ),
            ),
            (_, None) => Outcome::progressing(
                reason::REVOCATION_PENDING,
                format!(
                    "deletion not confirmed: the account was not read ({})",
                    report.stopped.as_ref().map(|(s, _)| s.describe()).unwrap_or_else(|| "no answer".into())
                ),
            ),
        };
        let st = d.status.clone().unwrap_or_default();
        status::finish(&ctx.shared, d.as_ref(), d.status.as_ref(), st, &outcome).await?;
        let wait = report.retry_after().unwrap_or(Duration::from_secs(60));
        Err(Error::Wait { backend: BACKEND, target: target_name.clone(), message: outcome.message, retry_after: wait })
    }
}

async fn sync_after_change(
    ctx: &CosmosContext,
    d: &CosmosRoleDefinition,
    target: &CosmosTarget,
) -> Result<Arc<SyncReport>> {
    ctx.bump(&target.name_any());
    ctx.sync(d, target, BTreeSet::new(), Freshness::Coalesce, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CosmosTarget {
        super::super::fixtures::target("acct", Default::default())
    }

    fn report(state: DefinitionState, result: Option<WriteResult>) -> SyncReport {
        let mut r = SyncReport::default();
        if let (DefinitionState::Managed { name }, Some(w)) = (&state, result) {
            r.results.insert(name.clone(), w);
        }
        r.plan.definitions.insert("items".into(), state);
        r
    }

    #[test]
    fn definition_states_map_to_conditions() {
        let t = target();
        let (o, id) = outcome_from(&report(DefinitionState::Managed { name: "g".into() }, None), "items", &t);
        assert!(o.ready);
        assert!(id.unwrap().ends_with("/sqlRoleDefinitions/g"));
        let (o, id) = outcome_from(
            &report(DefinitionState::Managed { name: "g".into() }, Some(WriteResult::Rejected("bad action".into()))),
            "items",
            &t,
        );
        assert_eq!((o.reason, id), (reason::REJECTED, None));
        let (o, _) = outcome_from(&report(DefinitionState::Conflict { with: "x".into() }, None), "items", &t);
        assert_eq!(o.reason, reason::CONFLICT);
        let (o, _) = outcome_from(&report(DefinitionState::LimitExceeded, None), "items", &t);
        assert_eq!(o.reason, reason::LIMIT_EXCEEDED);
        let (o, _) = outcome_from(&report(DefinitionState::InUse { name: "g".into(), by: 2 }, None), "items", &t);
        assert_eq!(o.reason, reason::IN_USE);
        assert!(o.message.contains('2'));
    }
}
