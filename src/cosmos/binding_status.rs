//! What a CosmosRoleBinding's status says, decided without I/O: the
//! evaluation of a binding against its target and role definition, the
//! mapping of an account report to the binding's Ready outcome and
//! assignment list, and the confirmation of a revocation (see the module
//! docs of [`super::binding_controller`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use kube::ResourceExt;

use super::sync::{AssignmentOutcome, PENDING_RETRY, SyncReport, principal_backoff};
use crate::{
    Error, Result,
    api::{
        CosmosAssignmentStatus, CosmosRoleBinding, CosmosRoleDefinition, CosmosTarget, SubjectKind,
        conditions::{Outcome, reason},
    },
    plan::{
        cosmos::{AccountRef, AssignmentKey, CosmosGrant, RoleKey},
        gate,
        index::Contribution,
        policy,
    },
};

/// What evaluating a binding decided.
pub type Evaluation = gate::Evaluation<CosmosGrant>;

/// Evaluate a binding against its target and role definition at `now`.
/// Pure. `ignore_deletion` evaluates a deleting binding as if it were live
/// (to know what it contributed, for revocation).
pub fn evaluate(
    b: &CosmosRoleBinding,
    target: Option<&CosmosTarget>,
    definition: Option<&CosmosRoleDefinition>,
    now: jiff::Timestamp,
    ignore_deletion: bool,
) -> Evaluation {
    let ns = b.namespace().unwrap_or_default();
    let target_name = &b.spec.target_ref.name;
    let gated = gate::Binding::of(&b.metadata, &b.spec.expiry, "CosmosTarget", target_name, ignore_deletion);
    gated.evaluate(target, now, |target, exp| {
        let stalled = |reason, why: String| Evaluation::blocked(Outcome::stalled(reason, why), exp);
        let rd = &b.spec.role_definition;
        let (role, data_actions, assignable): (RoleKey, Vec<String>, Vec<String>) = match (&rd.built_in, &rd.name) {
            (Some(r), None) => (
                RoleKey::BuiltIn(*r),
                policy::built_in_data_actions(*r).iter().map(|s| s.to_string()).collect(),
                Vec::new(),
            ),
            (None, Some(n)) => {
                let Some(def) = definition.filter(|d| &d.spec.target_ref.name == target_name) else {
                    return stalled(
                        reason::ROLE_DEFINITION_NOT_FOUND,
                        format!(
                            "CosmosRoleDefinition {n} does not exist on CosmosTarget {target_name}; nothing applied"
                        ),
                    );
                };
                if def.metadata.deletion_timestamp.is_some() {
                    return stalled(
                        reason::ROLE_DEFINITION_NOT_FOUND,
                        format!("CosmosRoleDefinition {n} is being deleted; its access was revoked"),
                    );
                }
                let scopes: Vec<String> = def.spec.assignable_scopes.iter().map(|s| s.relative_path()).collect();
                (RoleKey::Custom(n.clone()), def.spec.data_actions.clone(), scopes)
            }
            _ => {
                return stalled(
                    reason::INVALID_SPEC,
                    "set exactly one of roleDefinition.builtIn and roleDefinition.name".into(),
                );
            }
        };
        let denials = policy::evaluate_cosmos(&target.spec.policy, &ns, target_name, &b.spec, &data_actions);
        if !denials.is_empty() {
            return stalled(reason::GRANT_DENIED, format!("nothing applied: {}", denials.join("; ")));
        }
        let mut invalid = Vec::new();
        if !assignable.is_empty() && !assignable.iter().any(|s| s.is_empty()) {
            for scope in &b.spec.scopes {
                let rel = scope.relative_path();
                let within = assignable.iter().any(|a| rel == *a || rel.starts_with(&format!("{a}/")));
                if !within {
                    let shown = if rel.is_empty() { "the account".to_string() } else { rel };
                    invalid.push(format!("scope {shown} is outside the assignable scopes of {role}"));
                }
            }
        }
        let mut subjects = BTreeSet::new();
        for s in &b.spec.subjects {
            let key = s.key();
            if key.kind == SubjectKind::AppRole {
                invalid.push(format!("subject {key}: Cosmos DB assigns roles to object ids, not app roles"));
            } else if key.id.is_empty() {
                invalid.push(format!("subject {key} has no objectId"));
            } else {
                subjects.insert(key);
            }
        }
        Evaluation::granting(target_name, subjects, invalid, CosmosGrant::new(&role, &b.spec.scopes), exp)
    })
}

/// The assignments a contribution wants.
pub fn keys_of(c: &Contribution<CosmosGrant>) -> BTreeSet<AssignmentKey> {
    c.subjects.iter().flat_map(|s| c.grant.keys(&s.id)).collect()
}

/// Whether a report planned every assignment in `own` (it is from a sync
/// that knew this binding's contribution).
pub fn covers(report: &SyncReport, own: &BTreeSet<AssignmentKey>) -> bool {
    own.iter().all(|k| report.plan.assignments.contains_key(k))
}

/// The binding's Ready outcome, its assignment list and when to look again,
/// from an account report.
pub fn outcome_from<'a>(
    report: &SyncReport,
    key: &str,
    own: impl IntoIterator<Item = &'a AssignmentKey>,
    target: &CosmosTarget,
) -> (Outcome, Vec<CosmosAssignmentStatus>, Option<Duration>) {
    let mut assignments = Vec::new();
    let (mut conflicts, mut rejected, mut principals, mut limits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failed = Vec::new();
    let (mut unavailable, mut in_progress) = (BTreeSet::new(), 0usize);
    let mut pre_existing = 0usize;
    let mut attempts = 0u32;
    for k in own {
        match report.assignment(k) {
            AssignmentOutcome::Applied { name, managed } => {
                pre_existing += usize::from(!managed);
                assignments.push(status_entry(name, k, if managed { "Managed" } else { "PreExisting" }));
            }
            AssignmentOutcome::Conflict(name) => conflicts.push(format!("{name} ({k})")),
            AssignmentOutcome::Rejected(m) => rejected.push(format!("{k}: {m}")),
            AssignmentOutcome::PrincipalNotFound { attempts: n, .. } => {
                attempts = attempts.max(n);
                principals.push(k.principal_id.clone());
            }
            AssignmentOutcome::LimitExceeded(m) => limits.push(m),
            AssignmentOutcome::Failed(m) => failed.push(format!("{k}: {m}")),
            AssignmentOutcome::RoleUnavailable => {
                unavailable.insert(k.role.to_string());
            }
            AssignmentOutcome::InProgress => in_progress += 1,
        }
    }
    sort_assignments(&mut assignments);
    principals.sort();
    principals.dedup();
    let t = target.name_any();
    let mut retry = None;
    let outcome = if let Some(why) = report.plan.refused.get(key) {
        Outcome::stalled(reason::LIMIT_EXCEEDED, format!("CosmosTarget {t}: {why}"))
    } else if !conflicts.is_empty() {
        Outcome::stalled(
            reason::CONFLICT,
            format!(
                "role assignment name(s) {} are taken by assignments dbgrant did not create; left untouched",
                conflicts.join(", ")
            ),
        )
    } else if !rejected.is_empty() {
        Outcome::stalled(reason::REJECTED, format!("Azure refused: {}", rejected.join("; ")))
    } else if !limits.is_empty() {
        Outcome::stalled(reason::LIMIT_EXCEEDED, format!("CosmosTarget {t}: {}", limits.join("; ")))
    } else if !failed.is_empty() {
        let wait = *retry.insert(report.retry_after().unwrap_or(PENDING_RETRY));
        Outcome::progressing(
            reason::BACKEND_ERROR,
            format!("Azure failed to write {}; retrying in {}s", failed.join("; "), wait.as_secs()),
        )
    } else if !principals.is_empty() {
        let wait = *retry.insert(principal_backoff(attempts));
        Outcome::progressing(
            reason::PRINCIPAL_NOT_FOUND,
            format!(
                "Microsoft Entra ID does not know principal(s) {} yet (new identities take minutes to replicate); attempt {attempts}, retrying in {}s",
                principals.join(", "),
                wait.as_secs()
            ),
        )
    } else if !unavailable.is_empty() {
        retry = Some(crate::runtime::lifecycle::NOT_READY_RETRY);
        Outcome::progressing(
            reason::ROLE_DEFINITION_NOT_READY,
            format!(
                "{} is not applied on the account yet; see its status",
                unavailable.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    } else if in_progress > 0 {
        let (why, wait) = match &report.stopped {
            Some((stop, wait)) => (stop.describe(), *wait),
            None => ("Azure operations are running".to_string(), PENDING_RETRY),
        };
        let reason = match &report.stopped {
            Some((super::sync::Stop::Pending(_), _)) | None => reason::PROGRESSING,
            Some(_) => reason::THROTTLED,
        };
        retry = Some(wait);
        Outcome::progressing(reason, format!("{in_progress} assignment(s) still being written: {why}"))
    } else {
        let mut msg = format!("{} role assignment(s) in place on CosmosTarget {t}", assignments.len());
        if pre_existing > 0 {
            msg.push_str(&format!(
                " ({pre_existing} granted by identical assignments dbgrant does not manage, left untouched)"
            ));
        }
        Outcome::ready(reason::APPLIED, msg)
    };
    (outcome, assignments, retry)
}

fn status_entry(name: String, k: &AssignmentKey, ownership: &str) -> CosmosAssignmentStatus {
    CosmosAssignmentStatus {
        name,
        principal_id: k.principal_id.clone(),
        scope: k.scope.clone(),
        ownership: ownership.into(),
    }
}

pub(super) fn sort_assignments(list: &mut Vec<CosmosAssignmentStatus>) {
    list.sort_by(|a, b| (&a.principal_id, &a.scope, &a.name).cmp(&(&b.principal_id, &b.scope, &b.name)));
    list.dedup_by(|a, b| a.name.eq_ignore_ascii_case(&b.name));
}

// === Revocation ===

/// The assignments a revocation has to see gone, by lower-case name:
/// dbgrant's names for the keys the binding contributed (`previous`, from
/// the index) and the assignments its status lists as `Managed`, less what
/// its contribution now (`keep`) still wants. Each with the status entry
/// to list while it stays. Which of them other bindings still want is the
/// account report's to say ([`SyncReport::left_behind`]).
pub fn to_revoke(
    account: &AccountRef,
    previous: &BTreeSet<AssignmentKey>,
    recorded: &[CosmosAssignmentStatus],
    keep: &BTreeSet<AssignmentKey>,
) -> BTreeMap<String, CosmosAssignmentStatus> {
    let name = |k: &AssignmentKey| account.assignment_name(&k.principal_id, &k.scope, &k.role);
    let kept: BTreeSet<String> = keep.iter().map(name).collect();
    let mut out = BTreeMap::new();
    for a in recorded.iter().filter(|a| a.ownership == "Managed") {
        out.insert(a.name.to_ascii_lowercase(), a.clone());
    }
    for k in previous {
        out.entry(name(k)).or_insert_with(|| status_entry(name(k), k, "Managed"));
    }
    out.retain(|n, _| !kept.contains(n));
    out
}

/// A revocation the account does not confirm yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Stuck {
    /// What is still in place and why, for the condition.
    pub message: String,
    /// The assignments still in place (kept on the status so the next
    /// reconcile retries them).
    pub assignments: Vec<CosmosAssignmentStatus>,
    /// When to try again.
    pub retry: Duration,
}

/// Most assignments a stuck revocation's message names.
const STUCK_SHOWN: usize = 5;

impl Stuck {
    /// Nothing is confirmed: the sync failed with `e`.
    pub fn from_error(e: &Error, pending: &BTreeMap<String, CosmosAssignmentStatus>) -> Self {
        Self::unconfirmed(e, pending, e.retry_after())
    }

    /// Nothing is confirmed (`why`): all of `pending` may still be in place.
    fn unconfirmed(
        why: impl std::fmt::Display,
        pending: &BTreeMap<String, CosmosAssignmentStatus>,
        retry: Option<Duration>,
    ) -> Self {
        let retry = retry.unwrap_or(PENDING_RETRY).max(Duration::from_secs(1));
        Self {
            message: format!(
                "revocation not confirmed: {why}; {} role assignment(s) may still be in place; retrying in {}s",
                pending.len(),
                retry.as_secs()
            ),
            assignments: pending.values().cloned().collect(),
            retry,
        }
    }
}

/// Whether `report` confirms that the account no longer carries `pending`
/// (see [`to_revoke`]); else what is stuck.
pub fn confirm(
    report: &SyncReport,
    account: &AccountRef,
    pending: &BTreeMap<String, CosmosAssignmentStatus>,
) -> Result<(), Stuck> {
    if pending.is_empty() {
        return Ok(());
    }
    let Some(left) = report.left_behind(account, pending.keys().map(String::as_str)) else {
        let why = report.stopped.as_ref().map(|(s, _)| s.describe()).unwrap_or_else(|| "no answer".into());
        return Err(Stuck::unconfirmed(format!("the account was not read ({why})"), pending, report.retry_after()));
    };
    let retry = report.retry_after().unwrap_or(PENDING_RETRY).max(Duration::from_secs(1));
    if left.is_empty() {
        return Ok(());
    }
    let mut shown: Vec<String> = left
        .iter()
        .take(STUCK_SHOWN)
        .map(|(name, why)| {
            let a = &pending[name];
            let scope = if a.scope.is_empty() { "the account" } else { a.scope.as_str() };
            format!("{name} (principal {} at {scope}): {why}", a.principal_id)
        })
        .collect();
    if left.len() > STUCK_SHOWN {
        shown.push(format!("and {} more", left.len() - STUCK_SHOWN));
    }
    Err(Stuck {
        message: format!(
            "revocation not confirmed: {} role assignment(s) still in place: {}; retrying in {}s",
            left.len(),
            shown.join("; "),
            retry.as_secs()
        ),
        assignments: left.keys().map(|n| pending[n].clone()).collect(),
        retry,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{
        BuiltInCosmosRole, CosmosPolicy, CosmosRoleBindingSpec, CosmosRoleDefinitionRef, CosmosRoleDefinitionSpec,
        CosmosScope, DeletionPolicy, Expiry, Subject, TargetRef,
    };
    use crate::plan::cosmos::Action as PlanAction;
    use crate::{api::conditions, cosmos::account_of};

    const G: &str = "0B0B0B0B-0000-0000-0000-000000000001";

    fn target(policy: CosmosPolicy) -> CosmosTarget {
        let mut t = super::super::fixtures::target("acct", policy);
        t.metadata.uid = Some("uid".into());
        t
    }

    fn binding(role: CosmosRoleDefinitionRef, scopes: Vec<CosmosScope>) -> CosmosRoleBinding {
        let mut b = CosmosRoleBinding::new(
            "b",
            CosmosRoleBindingSpec {
                target_ref: TargetRef { name: "acct".into() },
                subjects: vec![Subject {
                    kind: SubjectKind::Group,
                    object_id: Some(G.into()),
                    value: None,
                    display_name: None,
                }],
                role_definition: role,
                scopes,
                expiry: Expiry::default(),
                deletion_policy: DeletionPolicy::Delete,
            },
        );
        b.metadata.namespace = Some("team-a".into());
        b
    }

    fn db(d: &str) -> CosmosScope {
        CosmosScope { database: Some(d.into()), container: None }
    }

    fn allow_all() -> CosmosPolicy {
        CosmosPolicy { allowed_namespaces: vec!["team-*".into()], ..Default::default() }
    }

    fn reader() -> CosmosRoleDefinitionRef {
        CosmosRoleDefinitionRef { built_in: Some(BuiltInCosmosRole::DataReader), name: None }
    }

    #[test]
    fn allowed_binding_contributes_lower_case_principals_times_scopes() {
        let b = binding(reader(), vec![db("orders"), db("billing")]);
        let e = evaluate(&b, Some(&target(allow_all())), None, jiff::Timestamp::now(), false);
        let c = e.contribution.expect("allowed");
        let keys = keys_of(&c);
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k.principal_id == G.to_ascii_lowercase()));
    }

    #[test]
    fn forbidden_binding_applies_nothing_and_says_why() {
        let b = binding(reader(), vec![CosmosScope::default()]);
        let e = evaluate(&b, Some(&target(allow_all())), None, jiff::Timestamp::now(), false);
        assert!(e.contribution.is_none());
        let o = e.blocked.unwrap();
        assert_eq!(o.reason, reason::GRANT_DENIED);
        assert!(o.message.contains("allowAccountScope"), "{}", o.message);

        let mut other_ns = binding(reader(), vec![db("orders")]);
        other_ns.metadata.namespace = Some("intruder".into());
        let e = evaluate(&other_ns, Some(&target(allow_all())), None, jiff::Timestamp::now(), false);
        assert_eq!(e.blocked.unwrap().reason, reason::GRANT_DENIED);
    }

    #[test]
    fn custom_role_must_exist_on_the_target_and_scopes_must_be_assignable() {
        let role = CosmosRoleDefinitionRef { built_in: None, name: Some("items".into()) };
        let b = binding(role, vec![db("billing")]);
        let t = target(allow_all());
        let e = evaluate(&b, Some(&t), None, jiff::Timestamp::now(), false);
        assert_eq!(e.blocked.unwrap().reason, reason::ROLE_DEFINITION_NOT_FOUND);

        let def = CosmosRoleDefinition::new(
            "items",
            CosmosRoleDefinitionSpec {
                target_ref: TargetRef { name: "acct".into() },
                role_name: "Items".into(),
                data_actions: vec!["Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read".into()],
                assignable_scopes: vec![db("orders")],
            },
        );
        let e = evaluate(&b, Some(&t), Some(&def), jiff::Timestamp::now(), false);
        let o = e.blocked.unwrap();
        assert_eq!(o.reason, reason::INVALID_SPEC);
        assert!(o.message.contains("assignable"), "{}", o.message);

        let inside = binding(
            CosmosRoleDefinitionRef { built_in: None, name: Some("items".into()) },
            vec![CosmosScope { database: Some("orders".into()), container: Some("c".into()) }],
        );
        let e = evaluate(&inside, Some(&t), Some(&def), jiff::Timestamp::now(), false);
        let keys = keys_of(&e.contribution.unwrap());
        assert_eq!(keys.iter().next().unwrap().role, RoleKey::Custom("items".into()));
    }

    fn report_with(states: Vec<(AssignmentKey, crate::plan::cosmos::AssignmentState)>) -> SyncReport {
        let mut r = SyncReport::default();
        r.plan.assignments = states.into_iter().collect();
        r
    }

    #[test]
    fn status_follows_the_worst_assignment_outcome() {
        use super::super::sync::WriteResult;
        use crate::plan::cosmos::AssignmentState as S;
        let t = target(allow_all());
        let k = |p: &str| AssignmentKey {
            principal_id: p.into(),
            role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
            scope: "/dbs/a".into(),
        };
        let own: BTreeSet<AssignmentKey> = [k("p1"), k("p2")].into();

        let r = report_with(vec![
            (k("p1"), S::Managed { name: "n1".into() }),
            (k("p2"), S::PreExisting { name: "f".into() }),
        ]);
        let (o, list, retry) = outcome_from(&r, "ns/b", &own, &t);
        assert!(o.ready, "{o:?}");
        assert!(o.message.contains("1 granted by identical assignments"), "{}", o.message);
        assert_eq!(list.iter().map(|a| a.ownership.as_str()).collect::<Vec<_>>(), ["Managed", "PreExisting"]);
        assert_eq!(retry, None);

        let mut r =
            report_with(vec![(k("p1"), S::Managed { name: "n1".into() }), (k("p2"), S::Managed { name: "n2".into() })]);
        r.results.insert("n2".into(), WriteResult::PrincipalNotFound("not found".into()));
        r.principal_retries.insert("n2".into(), 3);
        let (o, list, retry) = outcome_from(&r, "ns/b", &own, &t);
        assert_eq!((o.ready, o.reason), (false, reason::PRINCIPAL_NOT_FOUND));
        assert!(o.message.contains("p2") && o.message.contains("attempt 3"), "{}", o.message);
        assert_eq!(retry, Some(principal_backoff(3)));
        assert_eq!(list.len(), 1, "only what is in place is listed");

        let mut r = report_with(vec![(k("p1"), S::LimitExceeded), (k("p2"), S::LimitExceeded)]);
        r.plan.refused.insert("ns/b".into(), "needs 2 new role assignment(s)".into());
        let (o, _, _) = outcome_from(&r, "ns/b", &own, &t);
        assert_eq!(o.reason, reason::LIMIT_EXCEEDED);
        assert!(o.message.contains("needs 2"));

        let r = report_with(vec![
            (k("p1"), S::Conflict { name: "n1".into() }),
            (k("p2"), S::Managed { name: "n2".into() }),
        ]);
        assert_eq!(outcome_from(&r, "ns/b", &own, &t).0.reason, reason::CONFLICT);

        let mut r =
            report_with(vec![(k("p1"), S::Managed { name: "n1".into() }), (k("p2"), S::Managed { name: "n2".into() })]);
        r.results.insert("n1".into(), WriteResult::Skipped);
        r.stopped = Some((super::super::sync::Stop::Throttled("slow down".into()), Duration::from_secs(42)));
        let (o, _, retry) = outcome_from(&r, "ns/b", &own, &t);
        assert_eq!(o.reason, reason::THROTTLED);
        assert_eq!(retry, Some(Duration::from_secs(42)));
    }

    #[test]
    fn a_steady_binding_follows_what_the_last_resync_found() {
        use crate::plan::cosmos::AssignmentState as S;
        let t = target(allow_all());
        let k = AssignmentKey {
            principal_id: G.to_ascii_lowercase(),
            role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
            scope: "/dbs/orders".into(),
        };
        let own: BTreeSet<AssignmentKey> = [k.clone()].into();
        // Satisfied by an identical foreign assignment...
        let before = report_with(vec![(k.clone(), S::PreExisting { name: "foreign".into() })]);
        assert!(covers(&before, &own));
        let (o, list, _) = outcome_from(&before, "team-a/b", &own, &t);
        assert!(o.message.contains("does not manage"), "{}", o.message);
        assert_eq!(list[0].ownership, "PreExisting");
        // ...which went; the resync created dbgrant's own.
        let after = report_with(vec![(k.clone(), S::Managed { name: "ours".into() })]);
        let (o, list, _) = outcome_from(&after, "team-a/b", &own, &t);
        assert!(o.ready && !o.message.contains("does not manage"), "{}", o.message);
        assert_eq!((list[0].name.as_str(), list[0].ownership.as_str()), ("ours", "Managed"));
        // A report that never planned this binding's assignments (before
        // it was indexed, or one that stopped before reading the account)
        // says nothing about it.
        assert!(!covers(&SyncReport::default(), &own));
        assert!(covers(&SyncReport::default(), &BTreeSet::new()));
    }

    #[test]
    fn revocation_is_confirmed_only_once_the_account_no_longer_holds_the_contribution() {
        use super::super::sync::WriteResult;
        use crate::plan::cosmos::AssignmentState as S;
        let t = target(allow_all());
        let account = account_of(&t);
        let k = |scope: &str| AssignmentKey {
            principal_id: G.to_ascii_lowercase(),
            role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
            scope: scope.into(),
        };
        let (orders, billing) = (k("/dbs/orders"), k("/dbs/billing"));
        let name = |k: &AssignmentKey| account.assignment_name(&k.principal_id, &k.scope, &k.role);
        let (n_orders, n_billing) = (name(&orders), name(&billing));
        let entry = |n: &str, ownership: &str| CosmosAssignmentStatus {
            name: n.into(),
            principal_id: G.to_ascii_lowercase(),
            scope: "/dbs/x".into(),
            ownership: ownership.into(),
        };
        // What it contributed: the index's keys and what its status lists
        // as dbgrant's (not identical foreign ones), less what it keeps.
        let previous: BTreeSet<AssignmentKey> = [orders.clone(), billing.clone()].into();
        let recorded = [entry("0b5011e7-0000-4000-8000-000000000001", "Managed"), entry("foreign", "PreExisting")];
        let dropped = to_revoke(&account, &previous, &recorded, &[billing.clone()].into());
        assert_eq!(
            dropped.keys().cloned().collect::<BTreeSet<_>>(),
            [n_orders.clone(), "0b5011e7-0000-4000-8000-000000000001".into()].into()
        );
        let all = to_revoke(&account, &previous, &[], &BTreeSet::new());
        assert_eq!(all.len(), 2);

        // The DELETE of orders failed; billing is shared with a binding that
        // still wants it, so it stays and is not this binding's to revoke.
        let mut r = report_with(vec![(billing.clone(), S::Managed { name: n_billing.clone() })]);
        r.remaining = Some([n_orders.clone(), n_billing.clone()].into());
        r.plan.actions.push(PlanAction::DeleteAssignment { name: n_orders.clone(), key: orders.clone() });
        r.results.insert(n_orders.clone(), WriteResult::Failed("HTTP 500 InternalServerError: boom".into()));
        r.failures.insert(n_orders.clone(), 2);
        let stuck = confirm(&r, &account, &all).unwrap_err();
        assert!(stuck.message.contains(&n_orders) && stuck.message.contains("boom"), "{}", stuck.message);
        assert!(!stuck.message.contains(&n_billing), "{}", stuck.message);
        assert_eq!(stuck.assignments.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), [n_orders.as_str()]);
        assert_eq!(stuck.retry, super::super::sync::retry_backoff(2));

        // Read back without it: confirmed.
        r.remaining = Some([n_billing.clone()].into());
        assert_eq!(confirm(&r, &account, &all), Ok(()));
        // A pass that never read the account confirms nothing.
        r.remaining = None;
        let stuck = confirm(&r, &account, &all).unwrap_err();
        assert!(stuck.message.contains("not read"), "{}", stuck.message);
        assert_eq!(stuck.assignments.len(), 2);
        // Nothing to revoke: nothing to wait for.
        assert_eq!(confirm(&r, &account, &BTreeMap::new()), Ok(()));
    }

    #[test]
    fn a_write_that_failed_on_its_own_is_retried_not_stalled() {
        use super::super::sync::WriteResult;
        use crate::plan::cosmos::AssignmentState as S;
        let t = target(allow_all());
        let k = AssignmentKey {
            principal_id: G.to_ascii_lowercase(),
            role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
            scope: "/dbs/orders".into(),
        };
        let mut r = report_with(vec![(k.clone(), S::Managed { name: "n".into() })]);
        r.results.insert("n".into(), WriteResult::Failed("not authorised (HTTP 403 RequestDisallowedByPolicy)".into()));
        r.failures.insert("n".into(), 1);
        let (o, list, retry) = outcome_from(&r, "team-a/b", &[k], &t);
        assert_eq!((o.ready, o.reason, o.progress), (false, reason::BACKEND_ERROR, conditions::Progress::InProgress));
        assert!(o.message.contains("403"), "{}", o.message);
        assert!(list.is_empty());
        assert_eq!(retry, Some(super::super::sync::retry_backoff(1)));
    }

    #[test]
    fn expired_and_deleting_bindings_contribute_nothing_unless_asked() {
        let mut b = binding(reader(), vec![db("orders")]);
        b.spec.expiry.expires_at = Some(Time("2020-01-01T00:00:00Z".parse().unwrap()));
        let e = evaluate(&b, Some(&target(allow_all())), None, jiff::Timestamp::now(), false);
        assert_eq!(e.blocked.unwrap().reason, reason::EXPIRED);

        let mut d = binding(reader(), vec![db("orders")]);
        d.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let t = target(allow_all());
        assert!(evaluate(&d, Some(&t), None, jiff::Timestamp::now(), false).contribution.is_none());
        assert!(evaluate(&d, Some(&t), None, jiff::Timestamp::now(), true).contribution.is_some());
    }
}
