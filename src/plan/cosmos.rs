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

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::index::Grant;
use crate::api::{BuiltInCosmosRole, CosmosScope};

/// Role assignments per account (Azure limit).
pub const ASSIGNMENT_LIMIT: usize = 2000;
/// Custom role definitions per account (Azure limit).
pub const DEFINITION_LIMIT: usize = 100;

/// UUID v5 namespace of dbgrant's assignment names.
pub const ASSIGNMENT_NAMESPACE: Uuid = Uuid::from_u128(0x6a1d_5b0e_3c2f_4d8a_9e71_0f4b_2c6d_8e01);
/// UUID v5 namespace of dbgrant's custom role definition names.
pub const DEFINITION_NAMESPACE: Uuid = Uuid::from_u128(0x6a1d_5b0e_3c2f_4d8a_9e71_0f4b_2c6d_8e02);

// === Account ===

/// A Cosmos DB account and the ARM ids and names derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRef {
    id: String,
    key: String,
}

impl AccountRef {
    /// The account with these coordinates.
    pub fn new(subscription_id: &str, resource_group: &str, account_name: &str) -> Self {
        let id = format!(
            "/subscriptions/{}/resourceGroups/{resource_group}/providers/Microsoft.DocumentDB/databaseAccounts/{account_name}",
            subscription_id.to_ascii_lowercase()
        );
        let key = id.to_ascii_lowercase();
        Self { id, key }
    }

    /// The fully qualified ARM id, as dbgrant writes it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id in lower case: ARM ids are case-insensitive.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A fully qualified scope from a relative one (`""`, `/dbs/d`,
    /// `/dbs/d/colls/c`).
    pub fn scope(&self, relative: &str) -> String {
        format!("{}{relative}", self.id)
    }

    /// The relative scope of a fully qualified one, or None when it is not
    /// a scope in this account that dbgrant understands. The account part
    /// compares case-insensitively; database and container names do not.
    pub fn relative_scope(&self, scope: &str) -> Option<String> {
        let scope = scope.trim_end_matches('/');
        let head = scope.get(..self.id.len())?;
        if !head.eq_ignore_ascii_case(&self.id) {
            return None;
        }
        let rest = &scope[self.id.len()..];
        if rest.is_empty() {
            return Some(String::new());
        }
        let parts: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
        match parts.as_slice() {
            [dbs, db] if dbs.eq_ignore_ascii_case("dbs") && !db.is_empty() => Some(format!("/dbs/{db}")),
            [dbs, db, colls, c]
                if dbs.eq_ignore_ascii_case("dbs")
                    && colls.eq_ignore_ascii_case("colls")
                    && !db.is_empty()
                    && !c.is_empty() =>
            {
                Some(format!("/dbs/{db}/colls/{c}"))
            }
            _ => None,
        }
    }

    /// The ARM id of a role definition in this account.
    pub fn definition_id(&self, definition_name: &str) -> String {
        format!("{}/sqlRoleDefinitions/{definition_name}", self.id)
    }

    /// The definition name (a GUID, lower case) of a role definition id in
    /// this account, or None when the id points elsewhere.
    pub fn definition_name_of(&self, role_definition_id: &str) -> Option<String> {
        let prefix_len = self.id.len() + "/sqlRoleDefinitions/".len();
        let head = role_definition_id.get(..prefix_len)?;
        if !head.eq_ignore_ascii_case(&format!("{}/sqlRoleDefinitions/", self.id)) {
            return None;
        }
        let name = role_definition_id[prefix_len..].trim_end_matches('/');
        (!name.is_empty() && !name.contains('/')).then(|| name.to_ascii_lowercase())
    }

    /// dbgrant's name for the assignment of `role` to `principal_id` at the
    /// relative `scope`.
    pub fn assignment_name(&self, principal_id: &str, scope: &str, role: &RoleKey) -> String {
        let input = format!("{}\n{}\n{scope}\n{}", self.key, principal_id.to_ascii_lowercase(), role.name_part());
        Uuid::new_v5(&ASSIGNMENT_NAMESPACE, input.as_bytes()).to_string()
    }

    /// dbgrant's name for the role definition of a CosmosRoleDefinition.
    pub fn definition_name(&self, cosmos_role_definition: &str) -> String {
        let input = format!("{}\n{cosmos_role_definition}", self.key);
        Uuid::new_v5(&DEFINITION_NAMESPACE, input.as_bytes()).to_string()
    }
}

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
/// pairs. The union over bindings is a set union.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CosmosGrant(pub BTreeSet<(RoleKey, String)>);

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
}

/// A custom role definition as a CosmosRoleDefinition declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionSpec {
    /// Role name shown in Azure.
    pub role_name: String,
    /// Data actions.
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

impl Desired {
    /// Add one binding's contribution: its subjects' principal ids times
    /// its grant.
    pub fn add(&mut self, binding: &str, principals: impl IntoIterator<Item = String>, grant: &CosmosGrant) {
        for p in principals {
            for (role, scope) in &grant.0 {
                let key =
                    AssignmentKey { principal_id: p.to_ascii_lowercase(), role: role.clone(), scope: scope.clone() };
                self.assignments.entry(key).or_default().insert(binding.to_string());
            }
        }
    }
}

/// The account's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Role assignments per account.
    pub assignments: usize,
    /// Custom role definitions per account.
    pub definitions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { assignments: ASSIGNMENT_LIMIT, definitions: DEFINITION_LIMIT }
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
    /// Role name.
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
        /// Role name.
        role_name: String,
        /// Data actions.
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
        /// Principal id.
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
    PreExisting {
        /// Its name.
        name: String,
    },
    /// dbgrant's name is taken by an assignment it does not own.
    Conflict {
        /// The name.
        name: String,
    },
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
    /// Custom role definitions on the account.
    pub definitions: usize,
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

struct Norm<'a> {
    actual: &'a ActualAssignment,
    name: String,
    principal: String,
    scope: Option<String>,
    definition: Option<String>,
    owned: Option<AssignmentKey>,
}

fn normalise<'a>(account: &AccountRef, desired: &Desired, a: &'a ActualAssignment) -> Norm<'a> {
    let name = a.name.to_ascii_lowercase();
    let principal = a.principal_id.to_ascii_lowercase();
    let scope = account.relative_scope(&a.scope);
    let definition = account.definition_name_of(&a.role_definition_id);
    let released = desired.released.contains(&name);
    let owned = scope.as_ref().filter(|_| !released).and_then(|s| {
        desired.known_roles.iter().find(|k| account.assignment_name(&principal, s, k) == name).map(|k| AssignmentKey {
            principal_id: principal.clone(),
            role: k.clone(),
            scope: s.clone(),
        })
    });
    Norm { actual: a, name, principal, scope, definition, owned }
}

fn same_definition(account: &AccountRef, actual: &ActualDefinition, want: &DefinitionSpec) -> bool {
    let lower = |v: &mut dyn Iterator<Item = &String>| v.map(|s| s.to_ascii_lowercase()).collect::<BTreeSet<_>>();
    let want_scopes: BTreeSet<String> =
        if want.assignable_scopes.is_empty() { [String::new()].into() } else { want.assignable_scopes.clone() };
    let have_scopes: BTreeSet<String> =
        actual.assignable_scopes.iter().map(|s| account.relative_scope(s).unwrap_or_else(|| format!("?{s}"))).collect();
    actual.role_name == want.role_name
        && lower(&mut actual.data_actions.iter()) == lower(&mut want.data_actions.iter())
        && have_scopes == want_scopes
}

/// Plan the writes that make `actual` match `desired` on `account`.
pub fn plan(account: &AccountRef, desired: &Desired, actual: &Actual, limits: &Limits) -> Plan {
    let mut p = Plan::default();

    // --- Definitions: create/update what CosmosRoleDefinitions declare. ---
    let actual_defs: BTreeMap<String, &ActualDefinition> =
        actual.definitions.iter().map(|d| (d.name.to_ascii_lowercase(), d)).collect();
    let mut customs = actual.definitions.iter().filter(|d| !d.is_built_in()).count();
    let mut available: BTreeMap<String, String> = BTreeMap::new();
    let mut def_puts = Vec::new();
    let mut role_names_taken: BTreeMap<String, String> =
        actual.definitions.iter().map(|d| (d.role_name.to_ascii_lowercase(), d.name.to_ascii_lowercase())).collect();
    for (source, spec) in &desired.definitions {
        let name = account.definition_name(source);
        let existing = actual_defs.get(&name);
        if desired.pending.contains(&name) {
            if existing.is_some() {
                available.insert(source.clone(), name.clone());
            }
            p.definitions.insert(source.clone(), DefinitionState::Pending { name });
            continue;
        }
        if let Some(other) = role_names_taken.get(&spec.role_name.to_ascii_lowercase())
            && other != &name
        {
            p.definitions.insert(source.clone(), DefinitionState::Conflict { with: other.clone() });
            if existing.is_some() {
                available.insert(source.clone(), name.clone());
            }
            continue;
        }
        let scopes: Vec<String> = if spec.assignable_scopes.is_empty() {
            vec![account.id().to_string()]
        } else {
            spec.assignable_scopes.iter().map(|s| account.scope(s)).collect()
        };
        let put = |create| Action::PutDefinition {
            name: name.clone(),
            source: source.clone(),
            role_name: spec.role_name.clone(),
            data_actions: spec.data_actions.iter().cloned().collect(),
            assignable_scopes: scopes.clone(),
            create,
        };
        // Drift: what was in place as declared is now different or gone. A
        // definition whose CosmosRoleDefinition changed is an update, not
        // drift; one never seen in place is a first application.
        let previous = desired.previous.definitions.get(&name);
        match existing {
            Some(have) => {
                if !same_definition(account, have, spec) {
                    if previous == Some(spec) {
                        p.drifted.push(name.clone());
                    }
                    def_puts.push(put(false));
                }
            }
            None if customs >= limits.definitions => {
                p.definitions.insert(source.clone(), DefinitionState::LimitExceeded);
                continue;
            }
            None => {
                if previous.is_some() {
                    p.drifted.push(name.clone());
                }
                customs += 1;
                def_puts.push(put(true));
            }
        }
        role_names_taken.insert(spec.role_name.to_ascii_lowercase(), name.clone());
        available.insert(source.clone(), name.clone());
        p.definitions.insert(source.clone(), DefinitionState::Managed { name });
    }

    // --- Assignments: what exists, what is ours. ---
    let norms: Vec<Norm<'_>> = actual.assignments.iter().map(|a| normalise(account, desired, a)).collect();
    let by_name: BTreeMap<&str, usize> = norms.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    let owned_by_key: BTreeMap<&AssignmentKey, usize> =
        norms.iter().enumerate().filter_map(|(i, n)| n.owned.as_ref().map(|k| (k, i))).collect();
    let mut foreign: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for (i, n) in norms.iter().enumerate() {
        if n.owned.is_none()
            && let (Some(s), Some(d)) = (&n.scope, &n.definition)
        {
            foreign.entry((n.principal.as_str(), d.as_str(), s.as_str())).or_insert(i);
        }
    }

    let mut kept: BTreeSet<usize> = BTreeSet::new();
    let mut updates = Vec::new();
    // Creates wait for capacity: key -> (name, definition id).
    let mut creates: BTreeMap<&AssignmentKey, (String, String)> = BTreeMap::new();
    for key in desired.assignments.keys() {
        let definition = match &key.role {
            RoleKey::BuiltIn(r) => Some(r.definition_name().to_string()),
            RoleKey::Custom(n) => available.get(n).cloned(),
        };
        let owned = owned_by_key.get(key).copied();
        if let Some(i) = owned {
            kept.insert(i);
        }
        let Some(definition) = definition else {
            p.assignments.insert(key.clone(), AssignmentState::RoleUnavailable);
            continue;
        };
        let name = account.assignment_name(&key.principal_id, &key.scope, &key.role);
        // A released name that is gone waits until the caller has dropped
        // it from the list, so a new assignment is never born unmanaged.
        if desired.pending.contains(&name) || (desired.released.contains(&name) && !by_name.contains_key(name.as_str()))
        {
            p.assignments.insert(key.clone(), AssignmentState::Pending { name });
            continue;
        }
        let role_definition_id = account.definition_id(&definition);
        if let Some(i) = owned {
            if norms[i].definition.as_deref() != Some(definition.as_str()) {
                // dbgrant's name, another definition: repointed out of band.
                p.drifted.push(name.clone());
                updates.push(Action::PutAssignment {
                    name: name.clone(),
                    key: key.clone(),
                    principal_id: key.principal_id.clone(),
                    role_definition_id,
                    scope: account.scope(&key.scope),
                    create: false,
                });
            }
            p.assignments.insert(key.clone(), AssignmentState::Managed { name });
        } else if let Some(&i) = foreign.get(&(key.principal_id.as_str(), definition.as_str(), key.scope.as_str())) {
            p.assignments.insert(key.clone(), AssignmentState::PreExisting { name: norms[i].actual.name.clone() });
        } else if by_name.contains_key(name.as_str()) {
            p.assignments.insert(key.clone(), AssignmentState::Conflict { name });
        } else {
            creates.insert(key, (name, role_definition_id));
        }
    }

    // --- Revocations: dbgrant's assignments no binding wants. ---
    let mut deletes = Vec::new();
    for (i, n) in norms.iter().enumerate() {
        let Some(key) = &n.owned else { continue };
        if kept.contains(&i) || desired.pending.contains(&n.name) {
            continue;
        }
        deletes.push(Action::DeleteAssignment { name: n.actual.name.clone(), key: key.clone() });
    }
    p.stale_released = desired.released.iter().filter(|r| !by_name.contains_key(r.as_str())).cloned().collect();
    p.ours.extend(norms.iter().filter(|n| n.owned.is_some()).map(|n| n.name.clone()));

    // --- Capacity: admit whole bindings, oldest first. ---
    let mut total = actual.assignments.len().saturating_sub(deletes.len());
    let mut order: Vec<&String> = desired.binding_priority.iter().collect();
    let listed: BTreeSet<&String> = order.iter().copied().collect();
    let mut rest: BTreeSet<&String> = desired.assignments.values().flatten().filter(|b| !listed.contains(b)).collect();
    order.extend(std::mem::take(&mut rest));
    let mut wants: BTreeMap<&String, Vec<&AssignmentKey>> = BTreeMap::new();
    for key in creates.keys() {
        for b in &desired.assignments[*key] {
            wants.entry(b).or_default().push(key);
        }
    }
    let mut admitted: BTreeSet<&AssignmentKey> = BTreeSet::new();
    for b in order {
        let needed: Vec<&AssignmentKey> =
            wants.get(b).into_iter().flatten().copied().filter(|k| !admitted.contains(k)).collect();
        if needed.is_empty() {
            continue;
        }
        if total + needed.len() <= limits.assignments {
            total += needed.len();
            admitted.extend(needed);
        } else {
            p.refused.insert(
                b.clone(),
                format!(
                    "needs {} new role assignment(s) but the account would have {} of at most {}; nothing new was applied for this binding",
                    needed.len(),
                    total + needed.len(),
                    limits.assignments
                ),
            );
        }
    }
    let mut puts = Vec::new();
    for (key, (name, role_definition_id)) in creates {
        if admitted.contains(key) {
            // Missing although it was in place: deleted out of band.
            if desired.previous.assignments.contains(&name) {
                p.drifted.push(name.clone());
            }
            puts.push(Action::PutAssignment {
                name: name.clone(),
                key: key.clone(),
                principal_id: key.principal_id.clone(),
                role_definition_id,
                scope: account.scope(&key.scope),
                create: true,
            });
            p.assignments.insert(key.clone(), AssignmentState::Managed { name });
        } else {
            p.assignments.insert(key.clone(), AssignmentState::LimitExceeded);
        }
    }
    puts.extend(updates);

    // --- Definitions no CosmosRoleDefinition wants, once unused. ---
    let ours_by_name: BTreeMap<String, &String> =
        desired.known_definitions.iter().map(|n| (account.definition_name(n), n)).collect();
    let removed: BTreeSet<&str> = deletes.iter().map(Action::name).collect();
    let mut def_deletes = Vec::new();
    for d in &actual.definitions {
        let lname = d.name.to_ascii_lowercase();
        let Some(source) = ours_by_name.get(&lname) else { continue };
        if !d.is_built_in() {
            p.ours.insert(lname.clone());
        }
        if desired.definitions.contains_key(*source) || d.is_built_in() {
            continue;
        }
        if desired.pending.contains(&lname) {
            p.definitions.insert((*source).clone(), DefinitionState::Pending { name: lname });
            continue;
        }
        let users = norms
            .iter()
            .filter(|n| n.definition.as_deref() == Some(lname.as_str()) && !removed.contains(n.actual.name.as_str()))
            .count();
        if users == 0 {
            def_deletes.push(Action::DeleteDefinition { name: d.name.clone(), source: (*source).clone() });
            customs = customs.saturating_sub(1);
            p.definitions.insert((*source).clone(), DefinitionState::Absent);
        } else {
            p.definitions.insert((*source).clone(), DefinitionState::InUse { name: lname, by: users });
        }
    }
    for source in &desired.known_definitions {
        p.definitions.entry(source.clone()).or_insert(DefinitionState::Absent);
    }

    p.counts = Counts { assignments: total, definitions: customs, managed_assignments: kept.len() + admitted.len() };
    for group in [&mut def_puts, &mut deletes, &mut puts, &mut def_deletes] {
        group.sort_by(|a, b| a.name().cmp(b.name()));
    }
    // Revocations first (see the module docs).
    p.actions = deletes.into_iter().chain(def_puts).chain(puts).chain(def_deletes).collect();
    p
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P1: &str = "11111111-1111-1111-1111-111111111111";
    const P2: &str = "22222222-2222-2222-2222-222222222222";

    fn account() -> AccountRef {
        AccountRef::new("C9E6DE92-9ABA-45B0-85A1-5DECF672D856", "rg-Catalog", "acct")
    }

    fn reader() -> RoleKey {
        RoleKey::BuiltIn(BuiltInCosmosRole::DataReader)
    }

    fn contributor() -> RoleKey {
        RoleKey::BuiltIn(BuiltInCosmosRole::DataContributor)
    }

    fn key(p: &str, role: RoleKey, scope: &str) -> AssignmentKey {
        AssignmentKey { principal_id: p.into(), role, scope: scope.into() }
    }

    fn desired(wants: &[(&str, AssignmentKey)]) -> Desired {
        let mut d = Desired { known_roles: RoleKey::built_ins().into_iter().collect(), ..Default::default() };
        for (b, k) in wants {
            d.assignments.entry(k.clone()).or_default().insert(b.to_string());
        }
        d
    }

    fn with_custom(mut d: Desired, source: &str, role_name: &str) -> Desired {
        d.known_roles.insert(RoleKey::Custom(source.into()));
        d.known_definitions.insert(source.into());
        d.definitions.insert(
            source.into(),
            DefinitionSpec {
                role_name: role_name.into(),
                data_actions: ["Microsoft.DocumentDB/databaseAccounts/readMetadata".to_string()].into(),
                assignable_scopes: BTreeSet::new(),
            },
        );
        d
    }

    fn built_in_defs() -> Vec<ActualDefinition> {
        [
            ("00000000-0000-0000-0000-000000000001", "Cosmos DB Built-in Data Reader"),
            ("00000000-0000-0000-0000-000000000002", "Cosmos DB Built-in Data Contributor"),
        ]
        .iter()
        .map(|(n, r)| ActualDefinition {
            name: n.to_string(),
            role_name: r.to_string(),
            built_in: true,
            data_actions: vec![],
            assignable_scopes: vec![],
        })
        .collect()
    }

    /// Apply a plan the way ARM would, for the tests.
    fn apply(account: &AccountRef, actual: &mut Actual, plan: &Plan) {
        for a in &plan.actions {
            match a {
                Action::PutDefinition { name, role_name, data_actions, assignable_scopes, .. } => {
                    actual.definitions.retain(|d| !d.name.eq_ignore_ascii_case(name));
                    actual.definitions.push(ActualDefinition {
                        name: name.clone(),
                        role_name: role_name.clone(),
                        built_in: false,
                        data_actions: data_actions.clone(),
                        assignable_scopes: assignable_scopes.clone(),
                    });
                }
                Action::DeleteDefinition { name, .. } => {
                    assert!(
                        !actual
                            .assignments
                            .iter()
                            .any(
                                |x| account.definition_name_of(&x.role_definition_id).as_deref() == Some(name.as_str())
                            ),
                        "definition {name} deleted while in use"
                    );
                    actual.definitions.retain(|d| &d.name != name)
                }
                Action::DeleteAssignment { name, .. } => actual.assignments.retain(|x| &x.name != name),
                Action::PutAssignment { name, principal_id, role_definition_id, scope, create, .. } => {
                    let def = account.definition_name_of(role_definition_id).unwrap();
                    assert!(
                        actual.definitions.iter().any(|d| d.name.eq_ignore_ascii_case(&def))
                            || is_built_in_definition(&def),
                        "assignment {name} written before its definition"
                    );
                    if *create {
                        assert!(!actual.assignments.iter().any(|x| &x.name == name), "duplicate create {name}");
                    }
                    actual.assignments.retain(|x| &x.name != name);
                    actual.assignments.push(ActualAssignment {
                        name: name.clone(),
                        principal_id: principal_id.clone(),
                        role_definition_id: role_definition_id.clone(),
                        scope: scope.clone(),
                    });
                }
            }
        }
    }

    fn foreign(name: &str, p: &str, def: &str, scope: &str) -> ActualAssignment {
        let a = account();
        ActualAssignment {
            name: name.into(),
            principal_id: p.into(),
            role_definition_id: a.definition_id(def),
            scope: a.scope(scope),
        }
    }

    #[test]
    fn names_are_stable_case_insensitive_and_distinct_per_component() {
        let a = account();
        let upper = AccountRef::new("c9e6de92-9aba-45b0-85a1-5decf672d856", "RG-CATALOG", "acct");
        let n = a.assignment_name(P1, "/dbs/d", &reader());
        assert_eq!(n, upper.assignment_name(&P1.to_uppercase(), "/dbs/d", &reader()));
        assert!(Uuid::parse_str(&n).is_ok());
        assert_ne!(n, a.assignment_name(P2, "/dbs/d", &reader()));
        assert_ne!(n, a.assignment_name(P1, "/dbs/D", &reader()), "database names are case-sensitive");
        assert_ne!(n, a.assignment_name(P1, "/dbs/d", &contributor()));
        assert_ne!(n, a.assignment_name(P1, "", &reader()));
        assert_ne!(a.definition_name("x"), a.definition_name("y"));
    }

    #[test]
    fn scopes_and_definition_ids_normalise() {
        let a = account();
        let id = a.id().to_string();
        assert_eq!(a.relative_scope(&id), Some(String::new()));
        assert_eq!(a.relative_scope(&format!("{id}/")), Some(String::new()));
        assert_eq!(a.relative_scope(&id.to_uppercase()), Some(String::new()));
        assert_eq!(a.relative_scope(&format!("{id}/DBS/Orders/Colls/Items")), Some("/dbs/Orders/colls/Items".into()));
        assert_eq!(a.relative_scope(&format!("{id}/dbs/")), None);
        assert_eq!(a.relative_scope(&format!("{id}x/dbs/d")), None);
        assert_eq!(a.relative_scope("/subscriptions/other"), None);
        assert_eq!(a.relative_scope("é"), None);
        assert_eq!(
            a.definition_name_of(&a.definition_id("00000000-0000-0000-0000-00000000000A").to_lowercase()),
            Some("00000000-0000-0000-0000-00000000000a".into())
        );
        assert_eq!(a.definition_name_of("/subscriptions/x/sqlRoleDefinitions/1"), None);
    }

    #[test]
    fn creates_then_steady_state_plans_nothing() {
        let a = account();
        let d = desired(&[("ns/a", key(P1, reader(), "/dbs/orders")), ("ns/a", key(P2, reader(), "/dbs/orders"))]);
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        let p = plan(&a, &d, &actual, &Limits::default());
        assert_eq!(p.actions.len(), 2);
        assert!(p.actions.iter().all(|x| matches!(x, Action::PutAssignment { create: true, .. })));
        apply(&a, &mut actual, &p);
        let again = plan(&a, &d, &actual, &Limits::default());
        assert!(again.actions.is_empty(), "{:?}", again.actions);
        assert_eq!(again.counts.managed_assignments, 2);
        assert!(again.assignments.values().all(|s| matches!(s, AssignmentState::Managed { .. })));
    }

    #[test]
    fn shared_assignment_is_one_and_stays_while_one_binding_remains() {
        let a = account();
        let k = key(P1, reader(), "/dbs/orders");
        let both = desired(&[("ns/a", k.clone()), ("ns/b", k.clone())]);
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        let p = plan(&a, &both, &actual, &Limits::default());
        assert_eq!(p.actions.len(), 1);
        apply(&a, &mut actual, &p);
        let one = desired(&[("ns/b", k.clone())]);
        assert!(plan(&a, &one, &actual, &Limits::default()).actions.is_empty());
        let none = desired(&[]);
        let p = plan(&a, &none, &actual, &Limits::default());
        assert!(matches!(p.actions.as_slice(), [Action::DeleteAssignment { .. }]));
    }

    #[test]
    fn scope_change_deletes_old_before_creating_new() {
        let a = account();
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        let before = desired(&[("ns/a", key(P1, reader(), "/dbs/orders"))]);
        let first = plan(&a, &before, &actual, &Limits::default());
        apply(&a, &mut actual, &first);
        let after = desired(&[("ns/a", key(P1, reader(), "/dbs/billing"))]);
        let p = plan(&a, &after, &actual, &Limits::default());
        assert!(
            matches!(
                p.actions.as_slice(),
                [Action::DeleteAssignment { .. }, Action::PutAssignment { create: true, .. }]
            ),
            "{:?}",
            p.actions
        );
    }

    #[test]
    fn definition_id_change_updates_in_place() {
        let a = account();
        let k = key(P1, reader(), "");
        let name = a.assignment_name(P1, "", &reader());
        // Ours by name, but someone pointed it at Data Contributor.
        let drifted = foreign(&name, P1, "00000000-0000-0000-0000-000000000002", "");
        let actual = Actual { definitions: built_in_defs(), assignments: vec![drifted] };
        let p = plan(&a, &desired(&[("ns/a", k)]), &actual, &Limits::default());
        match p.actions.as_slice() {
            [Action::PutAssignment { name: n, create: false, role_definition_id, .. }] => {
                assert_eq!(n, &name);
                assert!(role_definition_id.ends_with("000000000001"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.drifted.len(), 1);
    }

    #[test]
    fn identical_foreign_assignment_satisfies_and_is_never_touched() {
        let a = account();
        let k = key(P1, reader(), "/dbs/orders");
        let theirs = foreign(
            "9d0c0c0c-0000-0000-0000-000000000001",
            &P1.to_uppercase(),
            "00000000-0000-0000-0000-000000000001",
            "/dbs/orders",
        );
        let actual = Actual { definitions: built_in_defs(), assignments: vec![theirs.clone()] };
        let p = plan(&a, &desired(&[("ns/a", k.clone())]), &actual, &Limits::default());
        assert!(p.actions.is_empty());
        assert_eq!(p.assignments[&k], AssignmentState::PreExisting { name: theirs.name.clone() });
        assert_eq!(p.counts.managed_assignments, 0);
        // No binding wants it any more: still not ours to delete.
        assert!(plan(&a, &desired(&[]), &actual, &Limits::default()).actions.is_empty());
    }

    #[test]
    fn foreign_assignment_with_our_name_is_a_conflict() {
        let a = account();
        let k = key(P1, reader(), "/dbs/orders");
        let name = a.assignment_name(P1, "/dbs/orders", &reader());
        // Same name, another principal: nobody deriving names created this.
        let squatter = foreign(&name, P2, "00000000-0000-0000-0000-000000000002", "/dbs/orders");
        let actual = Actual { definitions: built_in_defs(), assignments: vec![squatter] };
        let p = plan(&a, &desired(&[("ns/a", k.clone())]), &actual, &Limits::default());
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.assignments[&k], AssignmentState::Conflict { name });
        assert!(plan(&a, &desired(&[]), &actual, &Limits::default()).actions.is_empty());
    }

    #[test]
    fn released_assignments_are_left_alone_and_stale_ones_not_recreated_until_dropped() {
        let a = account();
        let k = key(P1, reader(), "/dbs/orders");
        let name = a.assignment_name(P1, "/dbs/orders", &reader());
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        let first = plan(&a, &desired(&[("ns/a", k.clone())]), &actual, &Limits::default());
        apply(&a, &mut actual, &first);
        // Retain: released instead of deleted; it is foreign from now on.
        let mut gone = desired(&[]);
        gone.released.insert(name.clone());
        let p = plan(&a, &gone, &actual, &Limits::default());
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert!(p.stale_released.is_empty());
        assert_eq!(p.counts.managed_assignments, 0);
        // A new binding wanting the same access is satisfied by it, unmanaged.
        let mut again = desired(&[("ns/b", k.clone())]);
        again.released.insert(name.clone());
        let p = plan(&a, &again, &actual, &Limits::default());
        assert!(p.actions.is_empty());
        assert_eq!(p.assignments[&k], AssignmentState::PreExisting { name: name.clone() });
        // Someone deletes it: the name is stale; it is not re-created under
        // the released name until the list drops it.
        actual.assignments.clear();
        let p = plan(&a, &again, &actual, &Limits::default());
        assert!(p.actions.is_empty());
        assert_eq!(p.stale_released, vec![name.clone()]);
        let p = plan(&a, &desired(&[("ns/b", k.clone())]), &actual, &Limits::default());
        assert!(matches!(p.actions.as_slice(), [Action::PutAssignment { create: true, .. }]));
    }

    #[test]
    fn limits_refuse_whole_bindings_before_anything_is_written() {
        let a = account();
        let limits = Limits { assignments: 3, definitions: 1 };
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        actual.assignments.push(foreign("f0", P2, "00000000-0000-0000-0000-000000000001", ""));
        let mut d = desired(&[
            ("ns/old", key(P1, reader(), "/dbs/a")),
            ("ns/new", key(P1, reader(), "/dbs/b")),
            ("ns/new", key(P1, reader(), "/dbs/c")),
            ("ns/new", key(P1, reader(), "/dbs/d")),
        ]);
        d.binding_priority = vec!["ns/old".into(), "ns/new".into()];
        let p = plan(&a, &d, &actual, &limits);
        assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
        assert!(p.refused.contains_key("ns/new"));
        assert!(!p.refused.contains_key("ns/old"));
        assert_eq!(p.assignments[&key(P1, reader(), "/dbs/b")], AssignmentState::LimitExceeded);
        assert!(p.refused["ns/new"].contains("at most 3"));
        assert!(p.counts.assignments <= 3);

        // Deletes free capacity in the same plan.
        let mut with_old = actual.clone();
        let stale = key(P2, reader(), "/dbs/z");
        with_old.assignments.push(foreign(
            &a.assignment_name(P2, "/dbs/z", &reader()),
            P2,
            "00000000-0000-0000-0000-000000000001",
            "/dbs/z",
        ));
        let d2 = desired(&[("ns/x", key(P1, reader(), "/dbs/a")), ("ns/x", key(P1, reader(), "/dbs/b"))]);
        let p = plan(&a, &d2, &with_old, &limits);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        assert!(p.actions.iter().any(|x| matches!(x, Action::DeleteAssignment { key, .. } if key == &stale)));

        // The definition limit.
        let d3 = with_custom(with_custom(desired(&[]), "one", "One"), "two", "Two");
        let p = plan(&a, &d3, &actual, &limits);
        assert_eq!(p.definitions["one"], DefinitionState::Managed { name: a.definition_name("one") });
        assert_eq!(p.definitions["two"], DefinitionState::LimitExceeded);
    }

    #[test]
    fn revocations_come_first_and_ours_lists_only_dbgrants_objects() {
        let a = account();
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        let d = with_custom(desired(&[("ns/a", key(P1, reader(), "/dbs/orders"))]), "items", "Items");
        let first = plan(&a, &d, &actual, &Limits::default());
        apply(&a, &mut actual, &first);
        let theirs = foreign("f0f0f0f0-0000-4000-8000-000000000001", P2, "00000000-0000-0000-0000-000000000001", "");
        actual.assignments.push(theirs);
        let mine = a.assignment_name(P1, "/dbs/orders", &reader());
        let definition = a.definition_name("items");

        // ns/a goes, ns/b arrives with a new role: the delete runs first,
        // then the definition and the assignment that uses it.
        let custom = RoleKey::Custom("items2".into());
        let next = with_custom(
            with_custom(desired(&[("ns/b", key(P2, custom, "/dbs/x"))]), "items2", "Items 2"),
            "items",
            "Items",
        );
        let p = plan(&a, &next, &actual, &Limits::default());
        assert!(
            matches!(
                p.actions.as_slice(),
                [
                    Action::DeleteAssignment { .. },
                    Action::PutDefinition { create: true, .. },
                    Action::PutAssignment { create: true, .. }
                ]
            ),
            "{:?}",
            p.actions
        );
        assert_eq!(p.ours, [mine.clone(), definition].into_iter().collect::<BTreeSet<_>>(), "never the foreign one");

        // A released name is no longer dbgrant's.
        let mut released = next.clone();
        released.released.insert(mine.clone());
        assert!(!plan(&a, &released, &actual, &Limits::default()).ours.contains(&mine));
    }

    #[test]
    fn custom_definitions_come_before_their_assignments_and_go_after() {
        let a = account();
        let role = RoleKey::Custom("items-reader".into());
        let k = key(P1, role.clone(), "/dbs/orders");
        let d = with_custom(desired(&[("ns/a", k.clone())]), "items-reader", "Items Reader");
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        let p = plan(&a, &d, &actual, &Limits::default());
        assert!(
            matches!(
                p.actions.as_slice(),
                [Action::PutDefinition { create: true, .. }, Action::PutAssignment { create: true, .. }]
            ),
            "{:?}",
            p.actions
        );
        apply(&a, &mut actual, &p);
        assert!(plan(&a, &d, &actual, &Limits::default()).actions.is_empty());

        // The CosmosRoleDefinition is being deleted: the binding no longer
        // wants the assignment; both go, assignment first.
        let mut gone = desired(&[]);
        gone.known_roles.insert(role.clone());
        gone.known_definitions.insert("items-reader".into());
        let p = plan(&a, &gone, &actual, &Limits::default());
        assert!(
            matches!(p.actions.as_slice(), [Action::DeleteAssignment { .. }, Action::DeleteDefinition { .. }]),
            "{:?}",
            p.actions
        );
        assert_eq!(p.definitions["items-reader"], DefinitionState::Absent);

        // An assignment dbgrant does not own still uses it: kept, reported.
        let mut used = actual.clone();
        used.assignments.push(foreign("f1", P2, &a.definition_name("items-reader"), ""));
        let p = plan(&a, &gone, &used, &Limits::default());
        assert!(!p.actions.iter().any(|x| matches!(x, Action::DeleteDefinition { .. })));
        assert!(matches!(p.definitions["items-reader"], DefinitionState::InUse { by: 1, .. }));
    }

    #[test]
    fn definition_drift_updates_and_role_name_clash_is_a_conflict() {
        let a = account();
        let mut d = with_custom(desired(&[]), "r", "Reader Plus");
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        let first = plan(&a, &d, &actual, &Limits::default());
        assert!(first.drifted.is_empty(), "a first application is not drift");
        apply(&a, &mut actual, &first);
        d.previous = first.observed(&d, |_| true);
        actual
            .definitions
            .last_mut()
            .unwrap()
            .data_actions
            .push("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/*".into());
        let p = plan(&a, &d, &actual, &Limits::default());
        assert!(matches!(p.actions.as_slice(), [Action::PutDefinition { create: false, .. }]));
        assert_eq!(p.drifted.len(), 1);

        let clash = Actual {
            definitions: vec![ActualDefinition {
                name: "someone-elses".into(),
                role_name: "reader plus".into(),
                built_in: false,
                data_actions: vec![],
                assignable_scopes: vec![],
            }],
            assignments: vec![],
        };
        let p = plan(&a, &d, &clash, &Limits::default());
        assert!(p.actions.is_empty());
        assert_eq!(p.definitions["r"], DefinitionState::Conflict { with: "someone-elses".into() });
    }

    #[test]
    fn drift_is_only_what_was_in_place_and_changed_out_of_band() {
        let a = account();
        let mine = key(P1, reader(), "/dbs/orders");
        let theirs_too = key(P2, reader(), "/dbs/orders");
        let mut d = with_custom(desired(&[("ns/a", mine.clone()), ("ns/b", theirs_too.clone())]), "r", "Reader Plus");
        // P2's access is granted by an identical assignment dbgrant does
        // not manage.
        let foreign_p2 = foreign("f-p2", P2, "00000000-0000-0000-0000-000000000001", "/dbs/orders");
        let mut actual = Actual { definitions: built_in_defs(), assignments: vec![foreign_p2] };

        // First application (say, the target just turned Ready): writes,
        // no drift.
        let first = plan(&a, &d, &actual, &Limits::default());
        assert_eq!(first.actions.len(), 2, "{:?}", first.actions);
        assert!(first.drifted.is_empty(), "{:?}", first.drifted);
        apply(&a, &mut actual, &first);
        d.previous = first.observed(&d, |_| true);
        let mine_name = a.assignment_name(P1, "/dbs/orders", &reader());
        let def_name = a.definition_name("r");
        assert!(d.previous.assignments.contains(&mine_name));
        assert!(!d.previous.assignments.iter().any(|n| n == "f-p2"), "foreign assignments are not dbgrant's record");
        assert!(d.previous.definitions.contains_key(&def_name));

        // dbgrant's assignment and definition deleted out of band, and the
        // foreign one too: restoring dbgrant's is drift; creating its own
        // for P2 is a first application.
        actual.assignments.clear();
        actual.definitions = built_in_defs();
        let p = plan(&a, &d, &actual, &Limits::default());
        let p2_name = a.assignment_name(P2, "/dbs/orders", &reader());
        assert!(p.actions.iter().any(|x| x.name() == p2_name));
        let mut drifted = p.drifted.clone();
        drifted.sort();
        let mut want = vec![mine_name.clone(), def_name.clone()];
        want.sort();
        assert_eq!(drifted, want);

        // A write that did not go through keeps the record: retried later,
        // it is still drift.
        let kept = p.observed(&d, |n| n != mine_name);
        assert!(kept.assignments.contains(&mine_name));
        assert!(kept.assignments.contains(&p2_name));
        apply(&a, &mut actual, &p);
        d.previous = p.observed(&d, |_| true);

        // The CosmosRoleDefinition's spec changes: an update, not drift.
        let mut changed = d.clone();
        changed.definitions.get_mut("r").unwrap().role_name = "Reader Plus Plus".into();
        let p = plan(&a, &changed, &actual, &Limits::default());
        assert!(matches!(p.actions.as_slice(), [Action::PutDefinition { create: false, .. }]), "{:?}", p.actions);
        assert!(p.drifted.is_empty(), "{:?}", p.drifted);

        // Nobody wants P1's assignment any more: collecting it is not drift.
        let mut fewer = d.clone();
        fewer.assignments.remove(&mine);
        let p = plan(&a, &fewer, &actual, &Limits::default());
        assert!(matches!(p.actions.as_slice(), [Action::DeleteAssignment { .. }]), "{:?}", p.actions);
        assert!(p.drifted.is_empty());

        // Steady state: nothing to write, nothing drifted.
        let p = plan(&a, &d, &actual, &Limits::default());
        assert!(p.actions.is_empty() && p.drifted.is_empty(), "{p:?}");
    }

    #[test]
    fn pending_operations_are_not_reissued() {
        let a = account();
        let k = key(P1, reader(), "");
        let name = a.assignment_name(P1, "", &reader());
        let mut d = desired(&[("ns/a", k.clone())]);
        d.pending.insert(name.clone());
        let p = plan(&a, &d, &Actual::default(), &Limits::default());
        assert!(p.actions.is_empty());
        assert_eq!(p.assignments[&k], AssignmentState::Pending { name });
    }

    #[test]
    fn unavailable_custom_role_keeps_existing_and_creates_nothing() {
        let a = account();
        let role = RoleKey::Custom("x".into());
        let k = key(P1, role.clone(), "");
        let mut d = desired(&[("ns/a", k.clone())]);
        d.known_roles.insert(role.clone());
        let name = a.assignment_name(P1, "", &role);
        let actual =
            Actual { definitions: built_in_defs(), assignments: vec![foreign(&name, P1, &a.definition_name("x"), "")] };
        let p = plan(&a, &d, &actual, &Limits::default());
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.assignments[&k], AssignmentState::RoleUnavailable);
    }

    proptest! {
        /// Convergence, ownership and limits over random sequences of
        /// desired states, with foreign assignments and out-of-band drift:
        /// after each applied plan the account holds exactly the wanted
        /// assignments (by dbgrant or an identical foreign one), foreign
        /// assignments are untouched, the limit holds, and planning again
        /// writes nothing.
        #[test]
        fn plans_converge_and_respect_ownership(
            steps in proptest::collection::vec(
                (
                    proptest::collection::vec((0usize..3, 0usize..3, 0usize..4, 0usize..3), 0..10),
                    proptest::collection::vec((0usize..3, 0usize..3, 0usize..3), 0..3),
                    0usize..4,
                ),
                1..8,
            ),
            limit in 4usize..12,
        ) {
            const PRINCIPALS: [&str; 3] = [P1, P2, "33333333-3333-3333-3333-333333333333"];
            const SCOPES: [&str; 3] = ["", "/dbs/orders", "/dbs/orders/colls/items"];
            let roles = [reader(), contributor(), RoleKey::Custom("c1".into()), RoleKey::Custom("c2".into())];
            let a = account();
            let limits = Limits { assignments: limit, definitions: 2 };
            let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
            for (i, (wants, foreigns, drift)) in steps.iter().enumerate() {
                // Foreign assignments appear out of band (within the limit).
                for (j, (p, s, r)) in foreigns.iter().enumerate() {
                    if actual.assignments.len() < limit {
                        let def = match r { 0 => "00000000-0000-0000-0000-000000000001".to_string(), 1 => "00000000-0000-0000-0000-000000000002".to_string(), _ => "ffffffff-0000-0000-0000-000000000000".to_string() };
                        actual.assignments.push(foreign(&format!("f-{i}-{j}"), PRINCIPALS[*p], &def, SCOPES[*s]));
                    }
                }
                // Drift: delete or repoint one of dbgrant's assignments.
                if *drift > 0 && !actual.assignments.is_empty() {
                    let idx = (i * 7 + drift) % actual.assignments.len();
                    if actual.assignments[idx].name.starts_with("f-") {
                        // leave foreign ones alone
                    } else if *drift == 1 {
                        actual.assignments.remove(idx);
                    } else {
                        actual.assignments[idx].role_definition_id = a.definition_id("00000000-0000-0000-0000-000000000002");
                    }
                }
                let mut d = desired(&[]);
                for (b, p, r, s) in wants {
                    d.assignments.entry(key(PRINCIPALS[*p], roles[*r].clone(), SCOPES[*s])).or_default().insert(format!("ns/b{b}"));
                }
                d = with_custom(with_custom(d, "c1", "Custom One"), "c2", "Custom Two");
                d.binding_priority = (0..3).map(|b| format!("ns/b{b}")).collect();
                let foreign_before: Vec<ActualAssignment> = actual.assignments.iter().filter(|x| x.name.starts_with("f-")).cloned().collect();
                let p = plan(&a, &d, &actual, &limits);
                apply(&a, &mut actual, &p);

                // Ownership: foreign assignments untouched.
                for f in &foreign_before {
                    prop_assert!(actual.assignments.contains(f), "foreign {f:?} touched");
                }
                // Limits.
                prop_assert!(actual.assignments.len() <= limit.max(foreign_before.len()));
                // Convergence: every wanted key not refused is satisfied;
                // everything dbgrant owns is wanted.
                for (k, state) in &p.assignments {
                    let def = match &k.role { RoleKey::BuiltIn(r) => r.definition_name().to_string(), RoleKey::Custom(n) => a.definition_name(n) };
                    let present = actual.assignments.iter().any(|x| {
                        x.principal_id.eq_ignore_ascii_case(&k.principal_id)
                            && a.definition_name_of(&x.role_definition_id).as_deref() == Some(def.as_str())
                            && a.relative_scope(&x.scope).as_deref() == Some(k.scope.as_str())
                    });
                    match state {
                        AssignmentState::Managed { .. } | AssignmentState::PreExisting { .. } => prop_assert!(present, "{k} missing"),
                        AssignmentState::LimitExceeded => prop_assert!(d.assignments[k].iter().any(|b| p.refused.contains_key(b))),
                        other => prop_assert!(false, "unexpected {other:?} for {k}"),
                    }
                }
                for x in &actual.assignments {
                    let n = normalise(&a, &d, x);
                    if let Some(k) = n.owned {
                        prop_assert!(d.assignments.contains_key(&k), "extra {k}");
                    }
                }
                // Idempotence.
                let again = plan(&a, &d, &actual, &limits);
                prop_assert!(again.actions.is_empty(), "second pass writes {:?}", again.actions);
            }
        }
    }
}
