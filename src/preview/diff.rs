//! The difference between two end states, as the writes it takes: roles
//! and users created, updated (with inherited roles and privileges added
//! or removed) and dropped; assignments and definitions created, updated
//! and deleted. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::end_state::{CosmosAccount, EndState, MongoRole};
use crate::plan::cosmos::DefinitionSpec;
use crate::plan::mongo::{MongoGrant, ROLE_DB, Resource, USER_DB};

/// What happens to a backend object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Action {
    Create,
    Update,
    Delete,
    /// Left in place and no longer managed: its last bindings were deleted
    /// with `deletionPolicy: Retain` (and the target allows it).
    Release,
}

/// The kind of backend object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ObjectKind {
    /// A role in MongoDB's `admin` database.
    MongoRole,
    /// A user in MongoDB's `$external` database.
    MongoUser,
    /// A Cosmos DB SQL role assignment.
    CosmosAssignment,
    /// A Cosmos DB SQL role definition.
    CosmosDefinition,
}

/// One line of what changes inside an object: `+`/`-` and what.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Detail {
    /// `true` for added, `false` for removed.
    pub added: bool,
    pub what: String,
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub action: Action,
    pub object: ObjectKind,
    /// The backend object's name (`admin.<role>`, `$external.<user>`,
    /// the assignment's or definition's GUID).
    pub name: String,
    /// Whom it is for (`Group <id>`), or what it implements
    /// (`CosmosRoleDefinition <name>`).
    pub owner: String,
    /// The bindings (or definition) behind it: after the change, or before
    /// it for a delete.
    pub because_of: Vec<String>,
    pub details: Vec<Detail>,
}

/// The writes on one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetChanges {
    /// `MongoTarget` or `CosmosTarget`.
    pub kind: &'static str,
    pub name: String,
    /// The target is in Observe mode: the operator will plan these writes
    /// and not make them until it enforces.
    pub observe: bool,
    pub changes: Vec<Change>,
}

/// Deleted bindings (`namespace/name`) whose access is released rather
/// than revoked (`deletionPolicy: Retain`, allowed, not expired).
#[derive(Clone, Debug, Default)]
pub struct Retained {
    pub mongo: BTreeSet<String>,
    pub cosmos: BTreeSet<String>,
}

/// A delete, or a release when every binding behind the object retains.
fn delete_or_release(retained: &BTreeSet<String>, bindings: &BTreeSet<String>) -> Action {
    if !bindings.is_empty() && bindings.is_subset(retained) { Action::Release } else { Action::Delete }
}

/// The writes that turn `before` into `after`, per target, targets and
/// objects in name order.
pub fn diff(before: &EndState, after: &EndState, retained: &Retained) -> Vec<TargetChanges> {
    let mut out = Vec::new();
    let empty_m = BTreeMap::new();
    let names: BTreeSet<&String> = before.mongo.keys().chain(after.mongo.keys()).collect();
    for t in names {
        let changes =
            mongo(before.mongo.get(t).unwrap_or(&empty_m), after.mongo.get(t).unwrap_or(&empty_m), &retained.mongo);
        if !changes.is_empty() {
            out.push(TargetChanges { kind: "MongoTarget", name: t.clone(), observe: false, changes });
        }
    }
    let empty_c = CosmosAccount::default();
    let names: BTreeSet<&String> = before.cosmos.keys().chain(after.cosmos.keys()).collect();
    for t in names {
        let changes =
            cosmos(before.cosmos.get(t).unwrap_or(&empty_c), after.cosmos.get(t).unwrap_or(&empty_c), &retained.cosmos);
        if !changes.is_empty() {
            out.push(TargetChanges { kind: "CosmosTarget", name: t.clone(), observe: false, changes });
        }
    }
    out
}

fn resource(r: &Resource) -> String {
    match r {
        Resource::Cluster => "the cluster".into(),
        Resource::Namespace { db, collection } => {
            let db = if db.is_empty() { "*" } else { db };
            let coll = if collection.is_empty() { "*" } else { collection };
            format!("{db}.{coll}")
        }
    }
}

/// What `from` grants that `to` does not, as lines.
fn grant_lines(from: &MongoGrant, to: &MongoGrant, added: bool) -> Vec<Detail> {
    let mut out: Vec<Detail> = from
        .roles
        .difference(&to.roles)
        .map(|(role, db)| Detail { added, what: format!("role {role}@{db}") })
        .collect();
    for (r, actions) in &from.privileges {
        let theirs = to.privileges.get(r);
        let only: Vec<&str> =
            actions.iter().filter(|a| !theirs.is_some_and(|t| t.contains(*a))).map(String::as_str).collect();
        if !only.is_empty() {
            out.push(Detail { added, what: format!("privilege {} on {}", only.join(", "), resource(r)) });
        }
    }
    out
}

fn mongo(
    before: &BTreeMap<String, MongoRole>,
    after: &BTreeMap<String, MongoRole>,
    retained: &BTreeSet<String>,
) -> Vec<Change> {
    let mut out = Vec::new();
    let none = MongoGrant::default();
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (was, will) = (before.get(name), after.get(name));
        let role = |action, r: &MongoRole, details| Change {
            action,
            object: ObjectKind::MongoRole,
            name: format!("{ROLE_DB}.{name}"),
            owner: r.subject.to_string(),
            because_of: r.bindings.iter().cloned().collect(),
            details,
        };
        let user = |action, r: &MongoRole, user: &String| Change {
            action,
            object: ObjectKind::MongoUser,
            name: format!("{USER_DB}.{user}"),
            owner: r.subject.to_string(),
            because_of: r.bindings.iter().cloned().collect(),
            details: vec![Detail { added: action == Action::Create, what: format!("role {name}@{ROLE_DB}") }]
                .into_iter()
                .filter(|_| action != Action::Release)
                .collect(),
        };
        match (was, will) {
            (None, Some(w)) => {
                out.push(role(Action::Create, w, grant_lines(&w.grant, &none, true)));
                if let Some(u) = &w.user {
                    out.push(user(Action::Create, w, u));
                }
            }
            (Some(b), None) => {
                let action = delete_or_release(retained, &b.bindings);
                if let Some(u) = &b.user {
                    out.push(user(action, b, u));
                }
                out.push(role(action, b, grant_lines(&b.grant, &none, false)));
            }
            (Some(b), Some(w)) => {
                if b.grant != w.grant {
                    let mut details = grant_lines(&w.grant, &b.grant, true);
                    details.extend(grant_lines(&b.grant, &w.grant, false));
                    out.push(role(Action::Update, w, details));
                }
                match (&b.user, &w.user) {
                    (None, Some(u)) => out.push(user(Action::Create, w, u)),
                    (Some(u), None) => out.push(user(Action::Delete, b, u)),
                    _ => {}
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn definition_lines(from: &DefinitionSpec, to: Option<&DefinitionSpec>, added: bool) -> Vec<Detail> {
    let mut out = Vec::new();
    if to.is_none_or(|t| t.role_name != from.role_name) {
        out.push(Detail { added, what: format!("role name {:?}", from.role_name) });
    }
    for a in from.data_actions.iter().filter(|a| !to.is_some_and(|t| t.data_actions.contains(*a))) {
        out.push(Detail { added, what: format!("data action {a}") });
    }
    let scopes = |s: &BTreeSet<String>| if s.is_empty() { [String::new()].into() } else { s.clone() };
    let theirs = to.map(|t| scopes(&t.assignable_scopes)).unwrap_or_default();
    for s in scopes(&from.assignable_scopes).difference(&theirs) {
        let shown = if s.is_empty() { "the account" } else { s };
        out.push(Detail { added, what: format!("assignable scope {shown}") });
    }
    out
}

fn cosmos(before: &CosmosAccount, after: &CosmosAccount, retained: &BTreeSet<String>) -> Vec<Change> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = before.definitions.keys().chain(after.definitions.keys()).collect();
    let mut deletes = Vec::new();
    for name in names {
        let (was, will) = (before.definitions.get(name), after.definitions.get(name));
        let change = |action, source: &str, details| Change {
            action,
            object: ObjectKind::CosmosDefinition,
            name: name.clone(),
            owner: format!("CosmosRoleDefinition {source}"),
            because_of: vec![format!("CosmosRoleDefinition/{source}")],
            details,
        };
        match (was, will) {
            (None, Some(w)) => out.push(change(Action::Create, &w.source, definition_lines(&w.spec, None, true))),
            // Definitions go after the assignments that use them.
            (Some(b), None) => deletes.push(change(Action::Delete, &b.source, definition_lines(&b.spec, None, false))),
            (Some(b), Some(w)) if b.spec != w.spec => {
                let mut details = definition_lines(&w.spec, Some(&b.spec), true);
                details.extend(definition_lines(&b.spec, Some(&w.spec), false));
                out.push(change(Action::Update, &w.source, details));
            }
            _ => {}
        }
    }
    let (mut revoked, mut granted) = (Vec::new(), Vec::new());
    let names: BTreeSet<&String> = before.assignments.keys().chain(after.assignments.keys()).collect();
    for name in names {
        let (was, will) = (before.assignments.get(name), after.assignments.get(name));
        let (action, a) = match (was, will) {
            (None, Some(w)) => (Action::Create, w),
            (Some(b), None) => (delete_or_release(retained, &b.bindings), b),
            (Some(b), Some(w)) if b.role_definition_id != w.role_definition_id => (Action::Update, w),
            _ => continue,
        };
        let added = action == Action::Create || action == Action::Update;
        let scope = if a.key.scope.is_empty() { "the account" } else { &a.key.scope };
        let change = Change {
            action,
            object: ObjectKind::CosmosAssignment,
            name: name.clone(),
            owner: format!("principal {}", a.key.principal_id),
            because_of: a.bindings.iter().cloned().collect(),
            details: vec![
                Detail { added, what: format!("role {}", a.key.role) },
                Detail { added, what: format!("scope {scope}") },
                Detail { added, what: format!("role definition {}", a.role_definition_id) },
            ],
        };
        if matches!(action, Action::Delete | Action::Release) { revoked.push(change) } else { granted.push(change) }
    }
    // In the operator's order: revocations first, definitions before the
    // assignments that use them and deleted after the last one.
    revoked.extend(out);
    revoked.extend(granted);
    revoked.extend(deletes);
    revoked
}
