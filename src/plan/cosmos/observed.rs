//! The record of what dbgrant had in place, that drift is measured
//! against, and how a plan updates it.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, AssignmentState, DefinitionSpec, DefinitionState, Desired, Plan};

/// dbgrant's objects recorded as in place, in their desired state, at an
/// observation of the account. A write is *drift* only when it restores
/// one of these: something dbgrant had applied was changed or removed out
/// of band. A first application, a spec change and the collection of what
/// no binding wants are not drift.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Names (lower case) of dbgrant's assignments that were in place.
    pub assignments: BTreeSet<String>,
    /// dbgrant's custom role definitions that were in place, by name
    /// (lower case), with the spec they held.
    pub definitions: BTreeMap<String, DefinitionSpec>,
}

impl Plan {
    /// The record after this plan ran: dbgrant's wanted objects that are in
    /// place (no write was needed, or `done` says their write went
    /// through). An object whose write did not go through keeps its
    /// previous record, so restoring it later still counts as drift.
    pub fn observed(&self, desired: &Desired, done: impl Fn(&str) -> bool) -> Observed {
        let written: BTreeSet<&str> = self.actions.iter().map(Action::name).collect();
        let in_place = |name: &str| !written.contains(name) || done(name);
        let mut o = Observed::default();
        for state in self.assignments.values() {
            let (AssignmentState::Managed { name } | AssignmentState::Pending { name }) = state else { continue };
            let managed = matches!(state, AssignmentState::Managed { .. });
            if (managed && in_place(name)) || desired.previous.assignments.contains(name) {
                o.assignments.insert(name.clone());
            }
        }
        for (source, state) in &self.definitions {
            let (DefinitionState::Managed { name } | DefinitionState::Pending { name }) = state else { continue };
            let spec = desired.definitions.get(source);
            match (state, spec) {
                (DefinitionState::Managed { .. }, Some(spec)) if in_place(name) => {
                    o.definitions.insert(name.clone(), spec.clone());
                }
                _ => {
                    if let Some(before) = desired.previous.definitions.get(name) {
                        o.definitions.insert(name.clone(), before.clone());
                    }
                }
            }
        }
        o
    }
}
