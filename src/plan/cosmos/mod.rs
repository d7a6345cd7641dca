//! Cosmos DB planning: the names dbgrant gives SQL role definitions and
//! assignments, how it recognises its own, and the writes that turn an
//! account's actual state (the two LIST results) into the union of live
//! bindings.
//!
//! ```text
//!   Desired (index + CosmosRoleDefinitions)   Actual (LIST definitions, LIST assignments)
//!                         \                      /
//!                          plan(account, desired, actual, limits)
//!                                     │
//!   DeleteAssignment* ─▶ PutDefinition* ─▶ PutAssignment* ─▶ DeleteDefinition*
//! ```
//!
//! Revocations come first: when a pass ends early (throttling, the
//! account's lock, dbgrant's write budget) the deletes have had their turn,
//! and the next pass plans them first again. Definitions are written before
//! the assignments that use them and deleted after the last one.
//!
//! # Names and ownership
//!
//! Cosmos DB role assignments carry no metadata, so ownership is encoded in
//! the name. An assignment's name is the UUID v5 (in a namespace only
//! dbgrant uses) of
//!
//! ```text
//!   account id (lower case) · principal id (lower case) · scope (relative) · role key
//! ```
//!
//! where the *role key* is the binding's logical role: `builtin/DataReader`,
//! `builtin/DataContributor` or `custom/<CosmosRoleDefinition name>` — not the
//! role definition's ARM id. So:
//!
//! - a retry or a restart computes the same name, and a PUT to it is
//!   idempotent: never a duplicate;
//! - every binding that wants the same (principal, role, scope) shares the
//!   one assignment;
//! - principal and scope are part of the name, and ARM cannot change them in
//!   place, so a change is a delete of the old name and a create of the new;
//! - the role definition *id* is not part of the name, so when the id behind
//!   a logical role changes (or someone edits it out of band) the assignment
//!   is updated in place.
//!
//! An assignment is dbgrant's exactly when its name equals the name derived
//! from its own principal and scope with one of the role keys dbgrant knows
//! on the account. Since ARM cannot change principal or scope in place,
//! nobody but dbgrant (deriving names in its namespace) produces such a pair.
//! Anything else is foreign: never changed or deleted. An identical foreign
//! assignment (same principal, definition and scope, any name) satisfies a
//! binding without being taken over. Custom role definitions are named the
//! same way from the account and the CosmosRoleDefinition's name.
//!
//! `deletionPolicy: Retain` releases an assignment instead of deleting it:
//! its name goes on the account's *released* list (persisted by the caller,
//! see `api::RELEASED_ANNOTATION`) and from then on it is treated as
//! foreign — left in place, never changed or collected. ARM refuses two
//! identical assignments, so handing it over to a copy is not an option,
//! and deleting then re-creating would interrupt access. A released name
//! whose assignment no longer exists is reported stale so the caller can
//! drop it from the list; until then it is not re-created.
//!
//! Limits (2,000 assignments and 100 custom definitions per account) are
//! checked here, before anything is written; a binding whose new
//! assignments do not fit is refused as a whole, oldest bindings first.
//! New assignments are written in the same order (the oldest binding's
//! first), so in a long pass the bindings that have waited longest are
//! granted first; every other group of writes goes by name.

mod limits;
mod names;
mod observed;
mod plan;
mod replan;

use std::collections::{BTreeMap, BTreeSet};

pub use self::{
    limits::{ASSIGNMENT_LIMIT, DEFINITION_LIMIT, Limits},
    names::{ASSIGNMENT_NAMESPACE, AccountRef, DEFINITION_NAMESPACE},
    observed::Observed,
    plan::plan,
};
use super::{index::Grant, sorted::SortedSet};
use crate::api::{BuiltInCosmosRole, CosmosScope};

// === Desired ===

/// A binding's logical role: stable while the definition id behind it may
/// change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleKey {
    /// A built-in data-plane role.
    BuiltIn(BuiltInCosmosRole),
    /// A CosmosRoleDefinition, by name.
    Custom(String),
}

impl RoleKey {
    /// The part of an assignment name that identifies the role.
    pub fn name_part(&self) -> String {
        match self {
            RoleKey::BuiltIn(BuiltInCosmosRole::DataReader) => "builtin/DataReader".into(),
            RoleKey::BuiltIn(BuiltInCosmosRole::DataContributor) => "builtin/DataContributor".into(),
            RoleKey::Custom(n) => format!("custom/{n}"),
        }
    }

    /// Every built-in role key.
    pub fn built_ins() -> [RoleKey; 2] {
        [RoleKey::BuiltIn(BuiltInCosmosRole::DataReader), RoleKey::BuiltIn(BuiltInCosmosRole::DataContributor)]
    }
}

impl std::fmt::Display for RoleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoleKey::BuiltIn(BuiltInCosmosRole::DataReader) => f.write_str("DataReader"),
            RoleKey::BuiltIn(BuiltInCosmosRole::DataContributor) => f.write_str("DataContributor"),
            RoleKey::Custom(n) => write!(f, "CosmosRoleDefinition {n}"),
        }
    }
}

/// Whether a definition name is one of the built-in data-plane roles.
pub fn is_built_in_definition(name: &str) -> bool {
    [BuiltInCosmosRole::DataReader, BuiltInCosmosRole::DataContributor]
        .iter()
        .any(|r| r.definition_name().eq_ignore_ascii_case(name))
}

/// One assignment that bindings want.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssignmentKey {
    /// Entra object id, lower case.
    pub principal_id: String,
    /// Logical role.
    pub role: RoleKey,
    /// Scope relative to the account.
    pub scope: String,
}

impl std::fmt::Display for AssignmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = if self.scope.is_empty() { "the account" } else { self.scope.as_str() };
        write!(f, "{} for {} at {scope}", self.role, self.principal_id)
    }
}

/// What one binding grants each of its subjects: (role, relative scope)
/// pairs, sorted and distinct. The union over bindings is a set union.
///
/// A [`SortedSet`] rather than a `BTreeSet`: the index holds one per
/// binding, nearly always of one pair, and a B-tree's first node has room
/// for eleven (540 bytes where 64 do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CosmosGrant(SortedSet<(RoleKey, String)>);

impl Grant for CosmosGrant {
    fn merge(&mut self, other: &Self) {
        self.0.extend(other.0.iter().cloned());
    }
}

impl CosmosGrant {
    /// The grant of one role at these scopes.
    pub fn new(role: &RoleKey, scopes: &[CosmosScope]) -> Self {
        Self(scopes.iter().map(|s| (role.clone(), s.relative_path())).collect())
    }

    /// Its (role, relative scope) pairs, sorted.
    pub fn pairs(&self) -> &[(RoleKey, String)] {
        self.0.as_slice()
    }

    /// The assignments this grant wants for `principal`.
    pub fn keys(&self, principal: &str) -> impl Iterator<Item = AssignmentKey> {
        let principal_id = principal.to_ascii_lowercase();
        self.0.iter().map(move |(role, scope)| AssignmentKey {
            principal_id: principal_id.clone(),
            role: role.clone(),
            scope: scope.clone(),
        })
    }
}

/// A custom role definition as a CosmosRoleDefinition declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionSpec {
    /// Role name shown in Azure.
    pub role_name: String,
    pub data_actions: BTreeSet<String>,
    /// Assignable scopes, relative; empty means the account.
    pub assignable_scopes: BTreeSet<String>,
}

/// Everything dbgrant wants on one account.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Wanted assignments and the bindings (`namespace/name`) that want
    /// each.
    pub assignments: BTreeMap<AssignmentKey, BTreeSet<String>>,
    /// Wanted custom definitions by CosmosRoleDefinition name.
    pub definitions: BTreeMap<String, DefinitionSpec>,
    /// Role keys dbgrant may have used on this account: the built-ins and
    /// every custom role a CosmosRoleDefinition or binding names. Used to
    /// recognise dbgrant's assignments.
    pub known_roles: BTreeSet<RoleKey>,
    /// CosmosRoleDefinition names dbgrant may have created definitions
    /// for (including ones being deleted).
    pub known_definitions: BTreeSet<String>,
    /// Bindings in the order they get capacity when a limit is near
    /// (oldest first). Bindings not listed come last, by name.
    pub binding_priority: Vec<String>,
    /// Names (lower case) of assignments dbgrant released
    /// (`deletionPolicy: Retain`): treated as foreign.
    pub released: BTreeSet<String>,
    /// Names with an Azure operation still running: left alone this pass.
    pub pending: BTreeSet<String>,
    /// What dbgrant had in place at its previous observation of the
    /// account: the record drift is measured against.
    pub previous: Observed,
}

impl Desired {
    /// Add one binding's contribution: its subjects' principal ids times
    /// its grant.
    pub fn add(&mut self, binding: &str, principals: impl IntoIterator<Item = String>, grant: &CosmosGrant) {
        for p in principals {
            for key in grant.keys(&p) {
                self.assignments.entry(key).or_default().insert(binding.to_string());
            }
        }
    }
}

// === Actual ===

/// A role assignment as ARM lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActualAssignment {
    /// Name (a GUID).
    pub name: String,
    /// Principal object id.
    pub principal_id: String,
    /// Fully qualified role definition id.
    pub role_definition_id: String,
    /// Fully qualified scope.
    pub scope: String,
}

/// A role definition as ARM lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActualDefinition {
    /// Name (a GUID).
    pub name: String,
    pub role_name: String,
    /// `BuiltInRole` or `CustomRole`.
    pub built_in: bool,
    /// Data actions of all its permissions.
    pub data_actions: Vec<String>,
    /// Fully qualified assignable scopes.
    pub assignable_scopes: Vec<String>,
}

impl ActualDefinition {
    /// Whether this is a built-in role (not counted against the limit).
    pub fn is_built_in(&self) -> bool {
        self.built_in || is_built_in_definition(&self.name)
    }
}

/// The account as the two LIST calls return it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actual {
    /// Every role definition, built-in and custom.
    pub definitions: Vec<ActualDefinition>,
    /// Every role assignment.
    pub assignments: Vec<ActualAssignment>,
}

// === Plan ===

/// One write to ARM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// PUT a custom role definition.
    PutDefinition {
        /// Definition name.
        name: String,
        /// CosmosRoleDefinition it implements.
        source: String,
        role_name: String,
        data_actions: Vec<String>,
        /// Fully qualified assignable scopes.
        assignable_scopes: Vec<String>,
        /// Whether it does not exist yet.
        create: bool,
    },
    /// DELETE a role assignment dbgrant owns.
    DeleteAssignment {
        /// Assignment name.
        name: String,
        /// What it granted.
        key: AssignmentKey,
    },
    /// PUT a role assignment.
    PutAssignment {
        /// Assignment name.
        name: String,
        /// What it grants.
        key: AssignmentKey,
        principal_id: String,
        /// Fully qualified role definition id.
        role_definition_id: String,
        /// Fully qualified scope.
        scope: String,
        /// Whether it does not exist yet (else: roleDefinitionId in place).
        create: bool,
    },
    /// DELETE a custom role definition dbgrant owns.
    DeleteDefinition {
        /// Definition name.
        name: String,
        /// CosmosRoleDefinition it implemented.
        source: String,
    },
}

impl Action {
    /// The ARM resource name the action writes.
    pub fn name(&self) -> &str {
        match self {
            Action::PutDefinition { name, .. }
            | Action::DeleteAssignment { name, .. }
            | Action::PutAssignment { name, .. }
            | Action::DeleteDefinition { name, .. } => name,
        }
    }

    /// A short description for logs and events (no secrets: ids only).
    pub fn describe(&self) -> String {
        match self {
            Action::PutDefinition { name, source, create: true, .. } => {
                format!("create role definition {name} ({source})")
            }
            Action::PutDefinition { name, source, .. } => format!("update role definition {name} ({source})"),
            Action::DeleteAssignment { name, key } => format!("delete assignment {name} ({key})"),
            Action::PutAssignment { name, key, create: true, .. } => format!("create assignment {name} ({key})"),
            Action::PutAssignment { name, key, .. } => {
                format!("update the role definition of assignment {name} ({key})")
            }
            Action::DeleteDefinition { name, source } => format!("delete role definition {name} ({source})"),
        }
    }
}

/// Where a wanted assignment stands after planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignmentState {
    /// dbgrant's assignment exists or is being written.
    Managed {
        /// Assignment name.
        name: String,
    },
    /// An identical assignment dbgrant does not own grants the access; it is
    /// left alone.
    PreExisting { name: String },
    /// dbgrant's name is taken by an assignment it does not own.
    Conflict { name: String },
    /// Not created: the account's assignment limit.
    LimitExceeded,
    /// Its custom role definition is not in place.
    RoleUnavailable,
    /// An Azure operation on it is still running.
    Pending {
        /// Assignment name.
        name: String,
    },
}

/// Where a CosmosRoleDefinition's role definition stands after planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefinitionState {
    /// dbgrant's definition exists or is being written.
    Managed {
        /// Definition name.
        name: String,
    },
    /// Another definition on the account already has this role name.
    Conflict {
        /// The other definition's name.
        with: String,
    },
    /// Not created: the account's definition limit.
    LimitExceeded,
    /// Not wanted any more, but assignments dbgrant does not own still use
    /// it, so it is kept.
    InUse {
        /// Definition name.
        name: String,
        /// Assignments using it.
        by: usize,
    },
    /// Not wanted and absent (or deleted by this plan).
    Absent,
    /// An Azure operation on it is still running.
    Pending {
        /// Definition name.
        name: String,
    },
}

/// Counts after the plan is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Role assignments on the account.
    pub assignments: usize,
    /// Role assignments dbgrant manages.
    pub managed_assignments: usize,
}

/// The writes for one account and what they mean for each binding and
/// definition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Writes, in the order to run them.
    pub actions: Vec<Action>,
    /// State of every wanted assignment.
    pub assignments: BTreeMap<AssignmentKey, AssignmentState>,
    /// State of every known CosmosRoleDefinition's definition.
    pub definitions: BTreeMap<String, DefinitionState>,
    /// Bindings refused because their new assignments do not fit, with
    /// the reason.
    pub refused: BTreeMap<String, String>,
    /// Names of the actions that restore drift: dbgrant's objects that were
    /// in place at the previous observation ([`Desired::previous`]) and are
    /// now missing or different, and dbgrant's assignments repointed out of
    /// band (their names say they are dbgrant's, and only dbgrant's
    /// definition may sit behind them).
    pub drifted: Vec<String>,
    /// Counts once the plan is applied.
    pub counts: Counts,
    /// Released names whose assignment no longer exists: the caller drops
    /// them from the released list.
    pub stale_released: Vec<String>,
    /// Names (lower case) of dbgrant's own assignments and custom role
    /// definitions on the account as listed: what a revocation has to see
    /// gone (see `cosmos::sync::SyncReport::left_behind`). Released and
    /// foreign objects are not in it.
    pub ours: BTreeSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::index::Grant;

    fn scope(db: &str) -> CosmosScope {
        CosmosScope { database: Some(db.into()), container: None }
    }

    #[test]
    fn a_grant_is_a_sorted_set_of_role_and_scope_and_merges_as_a_union() {
        let reader = RoleKey::BuiltIn(BuiltInCosmosRole::DataReader);
        let writer = RoleKey::BuiltIn(BuiltInCosmosRole::DataContributor);
        let mut g = CosmosGrant::new(&reader, &[scope("b"), scope("a"), scope("b")]);
        assert_eq!(g.pairs(), [(reader.clone(), "/dbs/a".to_string()), (reader.clone(), "/dbs/b".to_string())]);

        g.merge(&CosmosGrant::new(&reader, &[scope("a")]));
        assert_eq!(g.pairs().len(), 2, "a grant already held adds nothing");
        g.merge(&CosmosGrant::new(&writer, &[scope("a")]));
        g.merge(&CosmosGrant::new(&reader, &[scope("0")]));
        let mut expected = vec![
            (reader.clone(), "/dbs/0".to_string()),
            (reader.clone(), "/dbs/a".to_string()),
            (reader.clone(), "/dbs/b".to_string()),
            (writer.clone(), "/dbs/a".to_string()),
        ];
        expected.sort();
        assert_eq!(g.pairs(), expected.as_slice());
        // Equal grants compare equal whatever order they were built in.
        assert_eq!(
            CosmosGrant::new(&reader, &[scope("b"), scope("a")]),
            CosmosGrant::new(&reader, &[scope("a"), scope("b")])
        );
    }
}
