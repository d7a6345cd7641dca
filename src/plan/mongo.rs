//! MongoDB planning: what role (and `$external` user) each subject needs,
//! and the writes that turn the server's actual state into it.
//!
//! Values are normalised before comparison (sets of roles, privileges
//! merged per resource with actions as a set), because `rolesInfo` returns
//! privileges merged and reordered: comparing arrays would make every
//! resync "update".

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{AuthorizationClaim, MongoOidc, MongoPrivilege, MongoRoleRef, SubjectKey, SubjectKind};

use super::{index::Grant, sorted::SortedSet};

/// The database per-subject roles live in.
pub const ROLE_DB: &str = "admin";
/// The database OIDC users live in.
pub const USER_DB: &str = "$external";
/// The database of dbgrant's ownership ledger (`dbgrant.ownership`). No
/// binding can ever reach it: see [`crate::plan::policy::evaluate_mongo`].
pub const LEDGER_DB: &str = "dbgrant";
/// The collection of the ownership ledger in [`LEDGER_DB`].
pub const LEDGER_COLLECTION: &str = "ownership";

/// A privilege resource, normalised.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `{cluster: true}`.
    Cluster,
    /// `{db, collection}`; empty strings mean every.
    Namespace {
        /// Database.
        db: String,
        collection: String,
    },
}

/// A role reference `{role, db}`.
pub type RoleName = (String, String);

/// The union of what bindings grant one subject: roles and privileges as
/// sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MongoGrant {
    /// Inherited roles (one slice, not a B-tree: the index keeps a grant
    /// per binding, mostly of one role; see [`SortedSet`]).
    pub roles: SortedSet<RoleName>,
    /// Actions per resource.
    pub privileges: BTreeMap<Resource, BTreeSet<String>>,
}

impl Grant for MongoGrant {
    fn merge(&mut self, other: &Self) {
        self.roles.extend(other.roles.iter().cloned());
        for (r, actions) in &other.privileges {
            self.privileges.entry(r.clone()).or_default().extend(actions.iter().cloned());
        }
    }
}

impl MongoGrant {
    /// Whether `self` grants everything `other` does.
    pub fn covers(&self, other: &Self) -> bool {
        other.roles.is_subset(&self.roles)
            && other.privileges.iter().all(|(r, a)| self.privileges.get(r).is_some_and(|mine| a.is_subset(mine)))
    }

    /// Normalise a binding's roles and privileges.
    pub fn from_spec(roles: &[MongoRoleRef], privileges: &[MongoPrivilege]) -> Self {
        let mut g =
            MongoGrant { roles: roles.iter().map(|r| (r.role.clone(), r.db.clone())).collect(), ..Default::default() };
        for p in privileges {
            let resource = if p.resource.cluster == Some(true) {
                Resource::Cluster
            } else {
                Resource::Namespace {
                    db: p.resource.db.clone().unwrap_or_default(),
                    collection: p.resource.collection.clone().unwrap_or_default(),
                }
            };
            let actions = g.privileges.entry(resource).or_default();
            actions.extend(p.actions.iter().cloned());
        }
        g.privileges.retain(|_, a| !a.is_empty());
        g
    }
}

/// The backend objects that carry one subject's grant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectObjects {
    /// Role in `admin` holding the grant: `<prefix>/<claim value>`.
    pub role: String,
    /// `$external` user `<prefix>/<object id>` that is granted the role,
    /// for principals on targets that do not authorise by claim.
    pub user: Option<String>,
}

/// The index key of `subject` on a target with these OIDC settings: two
/// subjects that name the same backend objects are one key. Users and
/// service principals are both `$external` users named by their object
/// id, so a ServicePrincipal is keyed as the User with that id — otherwise
/// two bindings could each write "their" union to one role, and deleting
/// one would drop the other's access.
pub fn canonical(oidc: &MongoOidc, subject: SubjectKey) -> SubjectKey {
    match subject.kind {
        SubjectKind::ServicePrincipal if !oidc.use_authorization_claim => {
            SubjectKey { kind: SubjectKind::User, ..subject }
        }
        _ => subject,
    }
}

/// Decide the role (and user) names for `subject` on a target with these
/// OIDC settings, or say why the subject cannot be used there.
pub fn objects_for(oidc: &MongoOidc, subject: &SubjectKey) -> Result<SubjectObjects, String> {
    if subject.id.is_empty() || subject.id.contains('/') {
        return Err(format!("subject {subject} has an empty or invalid identifier"));
    }
    let name = format!("{}/{}", oidc.auth_name_prefix, subject.id);
    if oidc.use_authorization_claim {
        match (subject.kind, oidc.authorization_claim) {
            (SubjectKind::Group, AuthorizationClaim::Groups) | (SubjectKind::AppRole, AuthorizationClaim::Roles) => {
                Ok(SubjectObjects { role: name, user: None })
            }
            (SubjectKind::Group, AuthorizationClaim::Roles) => Err(format!(
                "subject {subject}: the target's server reads the roles claim, so bind AppRole values, not groups"
            )),
            (SubjectKind::AppRole, AuthorizationClaim::Groups) => Err(format!(
                "subject {subject}: the target's server reads the groups claim, so bind Group object ids, not app roles"
            )),
            (SubjectKind::User | SubjectKind::ServicePrincipal, _) => Err(format!(
                "subject {subject}: the target authorises by token claim (useAuthorizationClaim: true); bind a Group or AppRole instead"
            )),
        }
    } else {
        match subject.kind {
            SubjectKind::User | SubjectKind::ServicePrincipal => {
                Ok(SubjectObjects { role: name.clone(), user: Some(name) })
            }
            SubjectKind::Group | SubjectKind::AppRole => Err(format!(
                "subject {subject}: the target has useAuthorizationClaim: false, so only User and ServicePrincipal subjects can be granted"
            )),
        }
    }
}

/// A role as the server reports it, normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActualRole {
    /// The role's grant.
    pub grant: MongoGrant,
}

/// A `$external` user as the server reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActualUser {
    /// Roles granted to the user.
    pub roles: BTreeSet<RoleName>,
}

/// The actual state of one subject's objects and whether dbgrant owns
/// them (its ledger records creating them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actual {
    /// The role, if it exists.
    pub role: Option<ActualRole>,
    /// The user, if it exists.
    pub user: Option<ActualUser>,
    /// dbgrant created the role.
    pub role_owned: bool,
    /// dbgrant created the user.
    pub user_owned: bool,
}

/// One write to the server.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// `createRole` in `admin`.
    CreateRole {
        /// Role name.
        name: String,
        /// Roles and privileges.
        grant: MongoGrantOrd,
    },
    /// `updateRole` in `admin`, replacing roles and privileges.
    UpdateRole {
        /// Role name.
        name: String,
        /// Roles and privileges.
        grant: MongoGrantOrd,
    },
    /// `createUser` in `$external` with the one role.
    CreateUser {
        /// User name.
        name: String,
        /// Role granted.
        role: String,
    },
    /// `updateUser` in `$external` resetting roles to the one role.
    UpdateUser {
        /// User name.
        name: String,
        /// Role granted.
        role: String,
    },
    /// `dropUser` in `$external`.
    DropUser {
        /// User name.
        name: String,
    },
    /// `dropRole` in `admin`.
    DropRole {
        /// Role name.
        name: String,
    },
    /// Forget an object without touching it (Retain deletion policy).
    Release {
        /// Object name.
        name: String,
    },
    /// Record an existing object in the ledger without changing it: a
    /// target with `adopt` takes over an object that already matches.
    Adopt {
        /// Ledger id (`admin.<role>` or `$external.<user>`).
        name: String,
    },
}

/// [`MongoGrant`] with a total order so actions sort deterministically.
pub type MongoGrantOrd = (Vec<RoleName>, Vec<(Resource, Vec<String>)>);

fn ord(g: &MongoGrant) -> MongoGrantOrd {
    (
        g.roles.iter().cloned().collect(),
        g.privileges.iter().map(|(r, a)| (r.clone(), a.iter().cloned().collect())).collect(),
    )
}

/// What a subject's plan found besides writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Writes, in the order to run them.
    pub actions: Vec<Action>,
    /// Objects with dbgrant's names that dbgrant does not own and may not
    /// adopt: reported, never touched.
    pub conflicts: Vec<String>,
    /// Objects whose actual state differed from what dbgrant had applied
    /// (drift being corrected).
    pub drifted: Vec<String>,
}

/// Plan the writes for one subject. `desired` is the union of live
/// bindings (None when none remain); `retain` leaves objects in place
/// instead of dropping them; `adopt` lets dbgrant take over objects it did
/// not create.
pub fn plan(
    objects: &SubjectObjects,
    desired: Option<&MongoGrant>,
    actual: &Actual,
    adopt: bool,
    retain: bool,
) -> Plan {
    let mut p = Plan::default();
    let role_ours = actual.role.is_none() || actual.role_owned || adopt;
    let user_ours = actual.user.is_none() || actual.user_owned || adopt;
    match desired {
        Some(want) => {
            if !role_ours {
                p.conflicts.push(format!("{ROLE_DB}.{}", objects.role));
            }
            if let Some(user) = &objects.user
                && !user_ours
            {
                p.conflicts.push(format!("{USER_DB}.{user}"));
            }
            if !p.conflicts.is_empty() {
                return p;
            }
            let (name, grant) = (objects.role.clone(), ord(want));
            let write = match &actual.role {
                None => Some(Action::CreateRole { name, grant }),
                Some(have) if &have.grant != want => Some(Action::UpdateRole { name, grant }),
                Some(_) => None,
            };
            converge(&mut p, format!("{ROLE_DB}.{}", objects.role), actual.role_owned, write);
            if let Some(user) = &objects.user {
                let (name, role) = (user.clone(), objects.role.clone());
                let write = match &actual.user {
                    None => Some(Action::CreateUser { name, role }),
                    Some(have) if have.roles != [(role.clone(), ROLE_DB.to_string())].into() => {
                        Some(Action::UpdateUser { name, role })
                    }
                    Some(_) => None,
                };
                converge(&mut p, format!("{USER_DB}.{user}"), actual.user_owned, write);
            }
        }
        None => {
            // Users first: a user must not outlive its role's revocation.
            if let Some(user) = &objects.user
                && actual.user.is_some()
                && actual.user_owned
            {
                p.actions.push(if retain {
                    Action::Release { name: format!("{USER_DB}.{user}") }
                } else {
                    Action::DropUser { name: user.clone() }
                });
            }
            if actual.role.is_some() && actual.role_owned {
                p.actions.push(if retain {
                    Action::Release { name: format!("{ROLE_DB}.{}", objects.role) }
                } else {
                    Action::DropRole { name: objects.role.clone() }
                });
            }
        }
    }
    p
}

/// Run `write` (a create or an update) on one object, or adopt it when it
/// matches but is not dbgrant's: adopting still makes it dbgrant's, so it is
/// managed (and dropped) from now on. An owned object that is missing or
/// different was changed out of band (or a write of ours was lost): drift
/// being corrected.
fn converge(p: &mut Plan, id: String, owned: bool, write: Option<Action>) {
    match write {
        Some(write) => {
            if owned {
                p.drifted.push(id);
            }
            p.actions.push(write);
        }
        None if !owned => p.actions.push(Action::Adopt { name: id }),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MongoResource;

    fn oidc(claim: bool) -> MongoOidc {
        MongoOidc {
            auth_name_prefix: "entra".into(),
            use_authorization_claim: claim,
            authorization_claim: AuthorizationClaim::Groups,
        }
    }

    fn group() -> SubjectKey {
        SubjectKey { kind: SubjectKind::Group, id: "0b0b0b0b-0000-0000-0000-000000000001".into() }
    }

    fn grant(roles: &[(&str, &str)], privs: &[(&str, &str, &[&str])]) -> MongoGrant {
        let roles: Vec<MongoRoleRef> =
            roles.iter().map(|(r, d)| MongoRoleRef { role: r.to_string(), db: d.to_string() }).collect();
        let privs: Vec<MongoPrivilege> = privs
            .iter()
            .map(|(d, c, a)| MongoPrivilege {
                resource: MongoResource { db: Some(d.to_string()), collection: Some(c.to_string()), cluster: None },
                actions: a.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        MongoGrant::from_spec(&roles, &privs)
    }

    #[test]
    fn covers_is_set_inclusion_of_roles_and_actions_per_resource() {
        let ns = |c: &str| Resource::Namespace { db: "orders".into(), collection: c.into() };
        let g = |roles: &[&str], privs: &[(&str, &[&str])]| MongoGrant {
            roles: roles.iter().map(|r| (r.to_string(), "orders".to_string())).collect(),
            privileges: privs.iter().map(|(c, a)| (ns(c), a.iter().map(|s| s.to_string()).collect())).collect(),
        };
        let big = g(&["read"], &[("a", &["find", "insert"]), ("b", &["find"])]);
        assert!(big.covers(&g(&[], &[])));
        assert!(big.covers(&g(&["read"], &[("a", &["insert"])])));
        assert!(!big.covers(&g(&["readWrite"], &[])), "another role");
        assert!(!big.covers(&g(&[], &[("a", &["remove"])])), "another action");
        assert!(!big.covers(&g(&[], &[("c", &["find"])])), "another resource");
    }

    #[test]
    fn group_becomes_prefixed_role_in_admin() {
        let o = objects_for(&oidc(true), &group()).unwrap();
        assert_eq!(o.role, "entra/0b0b0b0b-0000-0000-0000-000000000001");
        assert_eq!(o.user, None);
    }

    #[test]
    fn principals_need_user_mode_and_groups_need_claim_mode() {
        let user = SubjectKey { kind: SubjectKind::User, id: "1b0b0b0b-0000-0000-0000-000000000001".into() };
        assert!(objects_for(&oidc(true), &user).is_err());
        let o = objects_for(&oidc(false), &user).unwrap();
        assert_eq!(o.user.as_deref(), Some("entra/1b0b0b0b-0000-0000-0000-000000000001"));
        assert!(objects_for(&oidc(false), &group()).is_err());
        let app = SubjectKey { kind: SubjectKind::AppRole, id: "Orders.Read".into() };
        assert!(objects_for(&oidc(true), &app).is_err());
        let roles = MongoOidc { authorization_claim: AuthorizationClaim::Roles, ..oidc(true) };
        assert_eq!(objects_for(&roles, &app).unwrap().role, "entra/Orders.Read");
    }

    #[test]
    fn privileges_are_normalised_as_sets() {
        let a = grant(&[], &[("o", "c", &["insert", "find"]), ("o", "c", &["find", "update"])]);
        let b = grant(&[], &[("o", "c", &["update", "insert", "find"])]);
        assert_eq!(a, b);
    }

    #[test]
    fn steady_state_plans_nothing() {
        let o = objects_for(&oidc(true), &group()).unwrap();
        let want = grant(&[("read", "orders")], &[("orders", "audit", &["find", "insert"])]);
        // Same content, different order, as rolesInfo would return it.
        let have = grant(&[("read", "orders")], &[("orders", "audit", &["insert"]), ("orders", "audit", &["find"])]);
        let actual = Actual { role: Some(ActualRole { grant: have }), role_owned: true, ..Default::default() };
        assert_eq!(plan(&o, Some(&want), &actual, false, false), Plan::default());
    }

    #[test]
    fn create_update_in_place_and_drop() {
        let o = objects_for(&oidc(true), &group()).unwrap();
        let want = grant(&[("read", "orders")], &[]);
        let created = plan(&o, Some(&want), &Actual::default(), false, false);
        assert!(matches!(created.actions.as_slice(), [Action::CreateRole { .. }]));

        let stale = Actual {
            role: Some(ActualRole { grant: grant(&[("readWrite", "orders")], &[]) }),
            role_owned: true,
            ..Default::default()
        };
        let updated = plan(&o, Some(&want), &stale, false, false);
        assert!(matches!(updated.actions.as_slice(), [Action::UpdateRole { .. }]), "{updated:?}");
        assert_eq!(updated.drifted.len(), 1);

        let dropped = plan(&o, None, &stale, false, false);
        assert_eq!(dropped.actions, vec![Action::DropRole { name: o.role.clone() }]);
        let retained = plan(&o, None, &stale, false, true);
        assert!(matches!(retained.actions.as_slice(), [Action::Release { .. }]));
    }

    #[test]
    fn foreign_objects_are_conflicts_never_touched() {
        let o = objects_for(&oidc(true), &group()).unwrap();
        let foreign = Actual {
            role: Some(ActualRole { grant: grant(&[("root", "admin")], &[]) }),
            role_owned: false,
            ..Default::default()
        };
        let p = plan(&o, Some(&grant(&[("read", "orders")], &[])), &foreign, false, false);
        assert!(p.actions.is_empty());
        assert_eq!(p.conflicts.len(), 1);
        // Not desired any more: still not dropped, because it is not ours.
        assert!(plan(&o, None, &foreign, false, false).actions.is_empty());
        // Adoption is explicit.
        let adopted = plan(&o, Some(&grant(&[("read", "orders")], &[])), &foreign, true, false);
        assert!(matches!(adopted.actions.as_slice(), [Action::UpdateRole { .. }]));
        assert!(adopted.drifted.is_empty(), "taking over is not drift");
        // A foreign object that already matches is adopted without a change.
        let same = plan(&o, Some(&grant(&[("root", "admin")], &[])), &foreign, true, false);
        assert_eq!(same.actions, vec![Action::Adopt { name: format!("{ROLE_DB}.{}", o.role) }]);
        assert_eq!(plan(&o, Some(&grant(&[("root", "admin")], &[])), &foreign, false, false).conflicts.len(), 1);
    }

    #[test]
    fn an_owned_object_that_vanished_is_drift() {
        let o = objects_for(&oidc(true), &group()).unwrap();
        let gone = Actual { role_owned: true, ..Default::default() };
        let p = plan(&o, Some(&grant(&[("read", "orders")], &[])), &gone, false, false);
        assert!(matches!(p.actions.as_slice(), [Action::CreateRole { .. }]));
        assert_eq!(p.drifted, vec![format!("{ROLE_DB}.{}", o.role)]);
        // Never created by dbgrant: a plain create, not drift.
        let fresh = plan(&o, Some(&grant(&[("read", "orders")], &[])), &Actual::default(), false, false);
        assert!(fresh.drifted.is_empty());
    }

    #[test]
    fn user_mode_creates_role_then_user_and_drops_user_first() {
        let user =
            SubjectKey { kind: SubjectKind::ServicePrincipal, id: "2b0b0b0b-0000-0000-0000-000000000001".into() };
        let o = objects_for(&oidc(false), &user).unwrap();
        let want = grant(&[("read", "orders")], &[]);
        let p = plan(&o, Some(&want), &Actual::default(), false, false);
        assert!(matches!(p.actions.as_slice(), [Action::CreateRole { .. }, Action::CreateUser { .. }]));
        let have = Actual {
            role: Some(ActualRole { grant: want.clone() }),
            user: Some(ActualUser { roles: [(o.role.clone(), ROLE_DB.to_string())].into() }),
            role_owned: true,
            user_owned: true,
        };
        assert_eq!(plan(&o, Some(&want), &have, false, false), Plan::default());
        let p = plan(&o, None, &have, false, false);
        assert!(matches!(p.actions.as_slice(), [Action::DropUser { .. }, Action::DropRole { .. }]));
    }
}
