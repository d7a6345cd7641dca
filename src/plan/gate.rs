//! The checks every binding passes before its grant is computed, on both
//! backends, in this order: a valid expiry, not being deleted, not
//! expired, a target that exists. Pure.
//!
//! ```text
//!   expiry invalid ─▶ InvalidSpec     deleting ─▶ Revoking
//!   expired        ─▶ Expired         no target ─▶ TargetNotFound
//!   otherwise      ─▶ the target, and the expiry to requeue at
//! ```

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    expiry::{self, ExpiryState},
    index::Contribution,
};
use crate::api::{
    Expiry, SubjectKey,
    conditions::{Outcome, reason},
};

/// What evaluating a binding against its target decided.
#[derive(Debug)]
pub struct Evaluation<G> {
    /// The contribution to put in the index, or None to revoke.
    pub contribution: Option<Contribution<G>>,
    /// Why there is no contribution.
    pub blocked: Option<Outcome>,
    pub expiry: ExpiryState,
}

impl<G> Evaluation<G> {
    /// No contribution, for `why`.
    pub fn blocked(why: Outcome, expiry: ExpiryState) -> Self {
        Self { contribution: None, blocked: Some(why), expiry }
    }

    /// `grant` to `subjects` on `target`, unless some subjects are
    /// `invalid` (then nothing: a binding is applied whole or not at all).
    pub fn granting(
        target: &str,
        subjects: BTreeSet<SubjectKey>,
        invalid: Vec<String>,
        grant: G,
        expiry: ExpiryState,
    ) -> Self {
        if !invalid.is_empty() {
            let why = format!("nothing applied: {}", invalid.join("; "));
            return Self::blocked(Outcome::stalled(reason::INVALID_SPEC, why), expiry);
        }
        Self {
            contribution: Some(Contribution {
                target: target.into(),
                subjects: subjects.into_iter().collect(),
                grant: std::sync::Arc::new(grant),
            }),
            blocked: None,
            expiry,
        }
    }
}

/// What a binding says about itself that the gate reads.
pub struct Binding<'a> {
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// `spec.expiresAt` / `spec.duration`.
    pub expiry: &'a Expiry,
    /// `metadata.deletionTimestamp` is set (and matters to the caller).
    pub deleting: bool,
    /// The target kind, for messages (`MongoTarget`, `CosmosTarget`).
    pub target_kind: &'static str,
    /// `spec.targetRef.name`.
    pub target_name: &'a str,
}

impl<'a> Binding<'a> {
    /// The gate's view of a binding from its metadata and spec.
    /// `ignore_deletion` evaluates a deleted binding as if it were live (to
    /// know what it contributed, for revocation).
    pub fn of(
        meta: &ObjectMeta,
        expiry: &'a Expiry,
        target_kind: &'static str,
        target_name: &'a str,
        ignore_deletion: bool,
    ) -> Self {
        Binding {
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            expiry,
            deleting: meta.deletion_timestamp.is_some() && !ignore_deletion,
            target_kind,
            target_name,
        }
    }

    /// Evaluate the binding at `now`: through the gate first, then
    /// `grant` with the target and the expiry that passed it.
    pub fn evaluate<T, G>(
        &self,
        target: Option<&T>,
        now: Timestamp,
        grant: impl FnOnce(&T, ExpiryState) -> Evaluation<G>,
    ) -> Evaluation<G> {
        match check(self, target, now) {
            Ok((target, exp)) => grant(target, exp),
            Err((why, exp)) => Evaluation::blocked(why, exp),
        }
    }
}

/// Pass `binding` through the gate at `now`: the target and the binding's
/// expiry, or why nothing may be granted (with the expiry, to requeue at).
pub fn check<'t, T>(
    binding: &Binding<'_>,
    target: Option<&'t T>,
    now: Timestamp,
) -> Result<(&'t T, ExpiryState), (Outcome, ExpiryState)> {
    let at = expiry::expiry_instant(binding.created, binding.expiry)
        .map_err(|e| (Outcome::stalled(reason::INVALID_SPEC, e), ExpiryState::Never))?;
    let exp = expiry::state(now, at);
    if binding.deleting {
        return Err((Outcome::progressing(reason::REVOKING, "revoking access before deletion"), exp));
    }
    if let ExpiryState::Expired(t) = exp {
        return Err((Outcome::not_ready(reason::EXPIRED, format!("access expired at {t} and was revoked")), exp));
    }
    let Some(target) = target else {
        let (kind, name) = (binding.target_kind, binding.target_name);
        let why = format!("{kind} {name} does not exist; create it or fix spec.targetRef");
        return Err((Outcome::stalled(reason::TARGET_NOT_FOUND, why), exp));
    };
    Ok((target, exp))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn binding<'a>(expiry: &'a Expiry, deleting: bool) -> Binding<'a> {
        Binding {
            created: Some(t("2030-01-01T00:00:00Z")),
            expiry,
            deleting,
            target_kind: "MongoTarget",
            target_name: "orders",
        }
    }

    #[test]
    fn each_check_in_order() {
        let now = t("2030-01-02T00:00:00Z");
        let none = Expiry::default();
        let target = "the target";
        assert_eq!(check(&binding(&none, false), Some(&target), now).unwrap(), (&target, ExpiryState::Never));

        let both = Expiry { expires_at: Some(Time(now)), duration: Some("1h".into()) };
        let (o, _) = check(&binding(&both, true), Some(&target), now).unwrap_err();
        assert_eq!(o.reason, reason::INVALID_SPEC, "an invalid expiry comes first");

        let past = Expiry { expires_at: Some(Time(t("2030-01-01T12:00:00Z"))), duration: None };
        let (o, e) = check(&binding(&past, true), Some(&target), now).unwrap_err();
        assert_eq!(o.reason, reason::REVOKING, "deletion before expiry");
        assert_eq!(e, ExpiryState::Expired(t("2030-01-01T12:00:00Z")));
        let (o, _) = check(&binding(&past, false), None::<&&str>, now).unwrap_err();
        assert_eq!(o.reason, reason::EXPIRED, "expiry before a missing target");

        let (o, _) = check(&binding(&none, false), None::<&&str>, now).unwrap_err();
        assert_eq!(o.reason, reason::TARGET_NOT_FOUND);
        assert!(o.message.contains("MongoTarget orders does not exist"), "{}", o.message);
    }
}
