//! The authorization data the double keeps: custom roles and users, and the
//! role graph built from them plus the built-in roles.
//!
//! These types are public so tests can inspect what a client did and plant
//! out-of-band changes (a foreign role, a role edited by hand).

use super::catalog;
use super::scram::ScramCredential;
use bson::{Bson, Document, Uuid, doc};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// A role's identity: `{role, db}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName {
    /// Role name.
    pub role: String,
    /// Database the role is defined in.
    pub db: String,
}

impl RoleName {
    /// `role` in `db`.
    pub fn new(role: impl Into<String>, db: impl Into<String>) -> Self {
        Self { role: role.into(), db: db.into() }
    }

    /// Whether this names a built-in role.
    pub fn is_builtin(&self) -> bool {
        catalog::is_builtin_role(&self.role, &self.db)
    }

    /// `{role, db}`.
    pub fn to_document(&self) -> Document {
        doc! { "role": self.role.clone(), "db": self.db.clone() }
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.role, self.db)
    }
}

/// What a privilege applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `{db, collection}`; an empty string matches any database/collection.
    Namespace {
        /// Database (`""` = any).
        db: String,
        /// Collection (`""` = any).
        collection: String,
    },
    /// `{cluster: true}`.
    Cluster,
    /// `{anyResource: true}`.
    AnyResource,
}

impl Resource {
    /// A whole database: `{db, collection: ""}`.
    pub fn database(db: impl Into<String>) -> Self {
        Self::Namespace { db: db.into(), collection: String::new() }
    }

    /// One collection.
    pub fn collection(db: impl Into<String>, collection: impl Into<String>) -> Self {
        Self::Namespace { db: db.into(), collection: collection.into() }
    }

    /// The resource document as the server prints it.
    pub fn to_document(&self) -> Document {
        match self {
            Self::Namespace { db, collection } => doc! { "db": db.clone(), "collection": collection.clone() },
            Self::Cluster => doc! { "cluster": true },
            Self::AnyResource => doc! { "anyResource": true },
        }
    }

    /// Whether a role defined in `role_db` may hold a privilege on this
    /// resource (roles outside `admin` are confined to their database).
    pub(crate) fn allowed_for_role_db(&self, role_db: &str) -> bool {
        role_db == "admin" || matches!(self, Self::Namespace { db, .. } if db == role_db)
    }
}

/// A set of actions on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    /// What the actions apply to.
    pub resource: Resource,
    /// Action names.
    pub actions: Vec<String>,
}

impl Privilege {
    /// `actions` on `resource`.
    pub fn new<S: Into<String>>(resource: Resource, actions: impl IntoIterator<Item = S>) -> Self {
        Self { resource, actions: actions.into_iter().map(Into::into).collect() }
    }

    /// `{resource, actions}`.
    pub fn to_document(&self) -> Document {
        doc! { "resource": self.resource.to_document(), "actions": self.actions.clone() }
    }
}

/// Merges privileges on the same resource (first-seen resource order) and
/// puts each action list in the server's order without duplicates — what a
/// real server stores and returns.
pub fn normalize_privileges(privileges: impl IntoIterator<Item = Privilege>) -> Vec<Privilege> {
    let mut merged: Vec<(Resource, BTreeSet<String>)> = Vec::new();
    for p in privileges {
        match merged.iter_mut().find(|(r, _)| *r == p.resource) {
            Some((_, actions)) => actions.extend(p.actions),
            None => merged.push((p.resource, p.actions.into_iter().collect())),
        }
    }
    merged
        .into_iter()
        .filter(|(_, actions)| !actions.is_empty())
        .map(|(resource, actions)| {
            let mut actions: Vec<String> = actions.into_iter().collect();
            // Unknown actions (only possible through `insert_role`) go last.
            actions.sort_by_key(|a| (catalog::action_rank(a).unwrap_or(usize::MAX), a.clone()));
            Privilege { resource, actions }
        })
        .collect()
}

/// A custom role.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    /// Identity.
    pub name: RoleName,
    /// Direct privileges (normalised on insertion).
    pub privileges: Vec<Privilege>,
    /// Directly inherited roles.
    pub roles: Vec<RoleName>,
    /// Authentication restrictions, stored verbatim.
    pub authentication_restrictions: Vec<Document>,
}

impl Role {
    /// An empty role `role` in `db`.
    pub fn new(role: impl Into<String>, db: impl Into<String>) -> Self {
        Self {
            name: RoleName::new(role, db),
            privileges: Vec::new(),
            roles: Vec::new(),
            authentication_restrictions: Vec::new(),
        }
    }

    /// Adds a privilege.
    pub fn with_privilege<S: Into<String>>(mut self, resource: Resource, actions: impl IntoIterator<Item = S>) -> Self {
        self.privileges.push(Privilege::new(resource, actions));
        self
    }

    /// Adds an inherited role.
    pub fn with_role(mut self, role: impl Into<String>, db: impl Into<String>) -> Self {
        self.roles.push(RoleName::new(role, db));
        self
    }
}

/// A user known to the user-management commands.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// User name.
    pub user: String,
    /// Database the user is defined in (`$external` for OIDC/X.509 users).
    pub db: String,
    /// Granted roles.
    pub roles: Vec<RoleName>,
    /// `customData`, if any.
    pub custom_data: Option<Document>,
    /// Credential mechanisms (`["external"]` for `$external` users).
    pub mechanisms: Vec<String>,
    /// Authentication restrictions, stored verbatim.
    pub authentication_restrictions: Vec<Document>,
    /// The server-assigned `userId`.
    pub user_id: Uuid,
}

impl User {
    /// A user in `$external` (no password).
    pub fn external(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            db: "$external".into(),
            roles: Vec::new(),
            custom_data: None,
            mechanisms: vec!["external".into()],
            authentication_restrictions: Vec::new(),
            user_id: Uuid::new(),
        }
    }

    /// Adds a granted role.
    pub fn with_role(mut self, role: impl Into<String>, db: impl Into<String>) -> Self {
        self.roles.push(RoleName::new(role, db));
        self
    }
}

/// Custom roles and users, keyed by identity.
#[derive(Debug, Default)]
pub(crate) struct AuthzStore {
    pub(crate) roles: BTreeMap<RoleName, Role>,
    pub(crate) users: BTreeMap<(String, String), User>,
    /// SCRAM-SHA-256 credentials of users created (or updated) with a
    /// `pwd`, keyed like `users`: they can log in.
    pub(crate) credentials: BTreeMap<(String, String), ScramCredential>,
}

impl AuthzStore {
    /// Whether `name` is a built-in role or an existing custom role.
    pub(crate) fn role_exists(&self, name: &RoleName) -> bool {
        name.is_builtin() || self.roles.contains_key(name)
    }

    /// Direct roles of `name` (built-in roles inherit nothing here).
    pub(crate) fn direct_roles(&self, name: &RoleName) -> Vec<RoleName> {
        self.roles.get(name).map(|r| r.roles.clone()).unwrap_or_default()
    }

    /// Direct privileges of `name`: a custom role's own privileges, or
    /// everything a built-in role grants (the server flattens built-in
    /// roles: they inherit no roles, their privileges include those of the
    /// roles they are made of).
    pub(crate) fn direct_privileges(&self, name: &RoleName) -> Vec<Privilege> {
        if let Some(role) = self.roles.get(name) {
            return role.privileges.clone();
        }
        catalog::builtin_privileges(&name.role, &name.db)
    }

    /// Every role reachable from `start` through `roles` edges, breadth
    /// first, excluding the starting roles themselves unless reached again.
    pub(crate) fn inherited_roles(&self, start: &[RoleName]) -> Vec<RoleName> {
        let mut seen: BTreeSet<RoleName> = BTreeSet::new();
        let mut order = Vec::new();
        let mut queue: VecDeque<RoleName> = start.iter().flat_map(|r| self.direct_roles(r)).collect();
        while let Some(next) = queue.pop_front() {
            if seen.insert(next.clone()) {
                queue.extend(self.direct_roles(&next));
                order.push(next);
            }
        }
        order
    }

    /// Direct privileges of `roles` and of everything they inherit, merged.
    pub(crate) fn all_privileges(&self, roles: &[RoleName]) -> Vec<Privilege> {
        let mut all: Vec<RoleName> = roles.to_vec();
        all.extend(self.inherited_roles(roles));
        normalize_privileges(all.iter().flat_map(|r| self.direct_privileges(r)))
    }

    /// The SCRAM credential of user `user@db`, if it exists, was created
    /// with a password and may use SCRAM-SHA-256.
    pub(crate) fn scram_credential(&self, db: &str, user: &str) -> Option<&ScramCredential> {
        let key = (db.to_string(), user.to_string());
        let u = self.users.get(&key)?;
        if !u.mechanisms.iter().any(|m| m == super::scram::MECHANISM) {
            return None;
        }
        self.credentials.get(&key)
    }

    /// Every role of a login holding `direct` roles: those first, then the
    /// roles they inherit (the server's `authenticatedUserRoles`).
    pub(crate) fn all_roles(&self, direct: &[RoleName]) -> Vec<RoleName> {
        let mut all = direct.to_vec();
        for r in self.inherited_roles(direct) {
            if !all.contains(&r) {
                all.push(r);
            }
        }
        all
    }

    /// Removes `name` from every role's and user's `roles`.
    pub(crate) fn unlink_role(&mut self, name: &RoleName) {
        for role in self.roles.values_mut() {
            role.roles.retain(|r| r != name);
        }
        for user in self.users.values_mut() {
            user.roles.retain(|r| r != name);
        }
    }
}

/// Converts a list of role names to `[{role, db}]`.
pub(crate) fn role_names_bson(names: &[RoleName]) -> Bson {
    Bson::Array(names.iter().map(|n| Bson::Document(n.to_document())).collect())
}

/// Converts privileges to `[{resource, actions}]`.
pub(crate) fn privileges_bson(privileges: &[Privilege]) -> Bson {
    Bson::Array(privileges.iter().map(|p| Bson::Document(p.to_document())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_merges_resources_and_orders_actions() {
        let merged = normalize_privileges([
            Privilege::new(Resource::database("app"), ["update", "find"]),
            Privilege::new(Resource::Cluster, ["serverStatus"]),
            Privilege::new(Resource::database("app"), ["insert", "find"]),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].actions, ["find", "insert", "update"]);
        assert_eq!(merged[1].resource, Resource::Cluster);
        // The server's order is not alphabetical everywhere.
        let odd = normalize_privileges([Privilege::new(Resource::Cluster, ["changeOwnPassword", "changePassword"])]);
        assert_eq!(odd[0].actions, ["changePassword", "changeOwnPassword"]);
    }

    #[test]
    fn inheritance_is_transitive_and_cycle_safe() {
        let mut store = AuthzStore::default();
        let a = Role::new("a", "admin").with_role("b", "admin");
        let b = Role::new("b", "admin").with_role("a", "admin").with_role("read", "app");
        store.roles.insert(a.name.clone(), a);
        store.roles.insert(b.name.clone(), b);
        let inherited = store.inherited_roles(&[RoleName::new("a", "admin")]);
        assert_eq!(inherited, [RoleName::new("b", "admin"), RoleName::new("a", "admin"), RoleName::new("read", "app")]);
        let privileges = store.all_privileges(&[RoleName::new("a", "admin")]);
        assert_eq!(privileges[0].resource, Resource::database("app"));
    }
}
