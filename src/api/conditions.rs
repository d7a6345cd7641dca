//! kstatus-compatible conditions and the reason vocabulary.
//!
//! Every kind reports `Ready`; `Reconciling` and `Stalled` follow kstatus
//! ("abnormal-true" conditions) so Argo CD, Flux and `kubectl wait` read the
//! same story. `lastTransitionTime` moves only when a condition's status
//! changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the object's grant is in force (or the target is usable).
pub const READY: &str = "Ready";
/// Condition type (kstatus): work is in progress and will finish by itself.
pub const RECONCILING: &str = "Reconciling";
/// Condition type (kstatus): no progress until someone changes something.
pub const STALLED: &str = "Stalled";

/// Reasons, in PascalCase, shared by conditions and Events.
pub mod reason {
    /// Everything declared is applied.
    pub const APPLIED: &str = "Applied";
    /// The target is reachable and dbgrant is authorised on it.
    pub const CONNECTED: &str = "Connected";
    /// Work is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// The referenced target does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// The referenced target is not Ready; the binding waits for it.
    pub const TARGET_NOT_READY: &str = "TargetNotReady";
    /// The target's policy forbids this binding; nothing is applied.
    pub const GRANT_DENIED: &str = "GrantDenied";
    /// The binding's expiry has passed; its access was revoked.
    pub const EXPIRED: &str = "Expired";
    /// The spec is invalid in a way schema validation cannot catch.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A role, user or assignment with dbgrant's name exists but dbgrant
    /// did not create it.
    pub const CONFLICT: &str = "Conflict";
    /// The backend refused the grant (unknown role, cycle, ...).
    pub const REJECTED: &str = "Rejected";
    /// The backend could not be reached.
    pub const UNREACHABLE: &str = "Unreachable";
    /// dbgrant's own identity was refused by the backend.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// A Secret or key the target needs is missing.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The backend is throttling dbgrant; it is slowing down.
    pub const THROTTLED: &str = "Throttled";
    /// Entra has not replicated the principal yet; dbgrant retries.
    pub const PRINCIPAL_NOT_FOUND: &str = "PrincipalNotFound";
    /// A transient backend error; dbgrant retries with backoff.
    pub const BACKEND_ERROR: &str = "BackendError";
    /// The object is being deleted and its access revoked.
    pub const REVOKING: &str = "Revoking";
    /// Revocation is not confirmed yet: the backend still carries part of
    /// the object's contribution (a write failed or was not attempted).
    /// The finalizer stays and dbgrant retries with backoff; the message
    /// names what is stuck and why.
    pub const REVOCATION_PENDING: &str = "RevocationPending";
    /// The target is in Observe mode: dbgrant computed the writes and made
    /// none. On the target (Ready=True) the pending writes are in
    /// `status.pending`; on a binding or role definition (Ready=False,
    /// neither reconciling nor stalled) the message says what would be
    /// written. Argo CD health: Suspended.
    pub const OBSERVING: &str = "Observing";
    /// dbgrant wrote to the database or ARM for this object (Normal Event;
    /// the note lists the writes, each also in the audit trail).
    pub const ACCESS_CHANGED: &str = "AccessChanged";
    /// Out-of-band changes were restored (Warning Event, both backends).
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
    /// No token (Cosmos DB): the credential is misconfigured or Entra refused it.
    pub const CREDENTIAL_UNAVAILABLE: &str = "CredentialUnavailable";
    /// The Cosmos DB account does not exist (or is not visible).
    pub const ACCOUNT_NOT_FOUND: &str = "AccountNotFound";
    /// The binding's CosmosRoleDefinition does not exist on its target.
    pub const ROLE_DEFINITION_NOT_FOUND: &str = "RoleDefinitionNotFound";
    /// The binding's CosmosRoleDefinition is not applied in Azure yet.
    pub const ROLE_DEFINITION_NOT_READY: &str = "RoleDefinitionNotReady";
    /// The role definition is still used by assignments dbgrant does not
    /// manage, so it is not deleted.
    pub const IN_USE: &str = "InUse";
    /// A Cosmos DB account limit would be exceeded.
    pub const LIMIT_EXCEEDED: &str = "LimitExceeded";
    /// The target is being deleted and waits for the bindings (and role
    /// definitions) that use it to be deleted first, so they can still
    /// revoke their access through it.
    pub const TERMINATING: &str = "Terminating";
}

/// How a Ready=False outcome should be read by kstatus tooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The outcome is final: Ready=True, Reconciling and Stalled absent.
    Done,
    /// Work continues by itself (Reconciling=True).
    InProgress,
    /// Waits for a spec or environment change (Stalled=True).
    Stalled,
}

/// A desired Ready outcome, before it is merged into existing conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether Ready is True.
    pub ready: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Human message: what happened, to what, and what to do next.
    pub message: String,
    /// kstatus reading.
    pub progress: Progress,
}

impl Outcome {
    /// Ready=True.
    pub fn ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ready: true, reason, message: message.into(), progress: Progress::Done }
    }

    /// Ready=False, work in progress.
    pub fn progressing(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ready: false, reason, message: message.into(), progress: Progress::InProgress }
    }

    /// Ready=False, stalled until something changes.
    pub fn stalled(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ready: false, reason, message: message.into(), progress: Progress::Stalled }
    }

    /// Ready=False with the outcome final (for example Expired): neither
    /// reconciling nor stalled.
    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ready: false, reason, message: message.into(), progress: Progress::Done }
    }
}

/// Merge `outcome` into `existing` conditions for an object at
/// `generation`. Conditions whose status is unchanged keep their
/// `lastTransitionTime`; other condition types are preserved. The result
/// is sorted by type so equal inputs give equal output.
pub fn merge(existing: &[Condition], outcome: &Outcome, generation: Option<i64>, now: &Time) -> Vec<Condition> {
    let mut out: Vec<Condition> =
        existing.iter().filter(|c| c.type_ != READY && c.type_ != RECONCILING && c.type_ != STALLED).cloned().collect();
    let ready_status = if outcome.ready { "True" } else { "False" };
    out.push(set(existing, READY, ready_status, outcome.reason, &outcome.message, generation, now));
    match outcome.progress {
        Progress::Done => {}
        Progress::InProgress => {
            out.push(set(existing, RECONCILING, "True", outcome.reason, &outcome.message, generation, now))
        }
        Progress::Stalled => {
            out.push(set(existing, STALLED, "True", outcome.reason, &outcome.message, generation, now))
        }
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

fn set(
    existing: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The Ready condition, if any.
pub fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

/// Whether `before` and `after` differ in a way worth an Event: Ready's
/// status or reason changed.
pub fn is_transition(before: &[Condition], after: &[Condition]) -> bool {
    match (ready(before), ready(after)) {
        (Some(b), Some(a)) => b.status != a.status || b.reason != a.reason,
        (None, Some(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn first_outcome_sets_ready_and_transition_time() {
        let c = merge(&[], &Outcome::ready(reason::APPLIED, "ok"), Some(3), &t(100));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].type_, READY);
        assert_eq!(c[0].status, "True");
        assert_eq!(c[0].observed_generation, Some(3));
        assert_eq!(c[0].last_transition_time, t(100));
    }

    #[test]
    fn same_status_keeps_transition_time_even_when_message_changes() {
        let first = merge(&[], &Outcome::ready(reason::APPLIED, "one"), Some(1), &t(100));
        let second = merge(&first, &Outcome::ready(reason::APPLIED, "two"), Some(2), &t(200));
        assert_eq!(second[0].last_transition_time, t(100));
        assert_eq!(second[0].message, "two");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn status_flip_moves_transition_time() {
        let first = merge(&[], &Outcome::ready(reason::APPLIED, "ok"), Some(1), &t(100));
        let second = merge(&first, &Outcome::stalled(reason::GRANT_DENIED, "no"), Some(1), &t(200));
        let r = ready(&second).unwrap();
        assert_eq!(r.status, "False");
        assert_eq!(r.last_transition_time, t(200));
        let stalled = second.iter().find(|c| c.type_ == STALLED).unwrap();
        assert_eq!(stalled.status, "True");
        assert!(is_transition(&first, &second));
    }

    #[test]
    fn kstatus_conditions_follow_progress() {
        let c = merge(&[], &Outcome::progressing(reason::PROGRESSING, "working"), None, &t(1));
        assert!(c.iter().any(|c| c.type_ == RECONCILING && c.status == "True"));
        let c = merge(&c, &Outcome::ready(reason::APPLIED, "done"), None, &t(2));
        assert!(!c.iter().any(|c| c.type_ == RECONCILING || c.type_ == STALLED));
    }

    #[test]
    fn unrelated_conditions_are_kept_and_output_is_sorted() {
        let other = Condition {
            type_: "Adopted".into(),
            status: "True".into(),
            reason: "X".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: t(5),
        };
        let c = merge(std::slice::from_ref(&other), &Outcome::stalled(reason::EXPIRED, "gone"), None, &t(9));
        assert_eq!(c.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Adopted", READY, STALLED]);
        assert_eq!(c[0], other);
    }

    #[test]
    fn reason_change_is_a_transition_but_message_change_is_not() {
        let a = merge(&[], &Outcome::stalled(reason::GRANT_DENIED, "x"), None, &t(1));
        let b = merge(&a, &Outcome::stalled(reason::GRANT_DENIED, "y"), None, &t(2));
        let c = merge(&b, &Outcome::stalled(reason::TARGET_NOT_FOUND, "y"), None, &t(3));
        assert!(!is_transition(&a, &b));
        assert!(is_transition(&b, &c));
    }
}

/// The part of every dbgrant status that the Ready condition lives in.
pub trait ObjectStatus {
    /// `status.conditions`.
    fn conditions(&self) -> &[Condition];
    /// Set `status.conditions` and the generation they describe.
    fn set_conditions(&mut self, conditions: Vec<Condition>, observed_generation: Option<i64>);
}

macro_rules! object_status {
    ($($status:ty),*) => {$(
        impl ObjectStatus for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn set_conditions(&mut self, conditions: Vec<Condition>, observed_generation: Option<i64>) {
                self.conditions = conditions;
                self.observed_generation = observed_generation;
            }
        }
    )*};
}

object_status!(
    super::MongoTargetStatus,
    super::MongoRoleBindingStatus,
    super::CosmosTargetStatus,
    super::CosmosRoleBindingStatus,
    super::CosmosRoleDefinitionStatus
);
