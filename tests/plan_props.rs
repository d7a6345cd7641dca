//! Property tests of the pure planning code and of the parsers of MongoDB
//! replies, through the crate's public API: no input makes them panic, and
//! the planner's promises hold for arbitrary states.
//!
//! - `plan::mongo::plan`: never touches an object dbgrant does not own
//!   (unless adopting), applying a plan converges in one step (re-planning
//!   the result yields nothing), a steady state plans nothing;
//! - `plan::index::BindingIndex`: after any sequence of upserts and
//!   removes, `desired` is the union of the live contributions, and every
//!   pair whose union changed was reported as affected;
//! - `plan::policy::evaluate_mongo`: arbitrary strings never panic;
//!   escalation is denied unless opted out entry by entry; whatever the
//!   policy, nothing reaches the ledger database (roles or privileges on
//!   it, privileges on every database, roles spanning every database),
//!   roles named `<authNamePrefix>/…` are denied, `admin`/`local`/`config`
//!   need their literal name, and `Retain` needs `allowRetain`; a namespace
//!   that may not bind gets exactly one denial, naming no allowed one;
//! - `plan::expiry`: arbitrary durations and instants never panic; the
//!   requeue never exceeds the resync;
//! - `mongo::sync::{parse_role, parse_user}`, `mongo::ledger::ids` and
//!   `mongo::connection::missing_actions`: arbitrary BSON never panics; a
//!   `rolesInfo` reply however the server splits and orders it parses back
//!   to the grant.

use std::collections::{BTreeMap, BTreeSet};

use bson::{Bson, Document, doc};
use dbgrant::{
    api::{DeletionPolicy, Expiry, MongoPolicy, MongoPrivilege, MongoResource, MongoRoleRef, SubjectKey, SubjectKind},
    mongo::{
        connection::missing_actions,
        ledger::ids as ledger_ids,
        sync::{parse_role, parse_user},
    },
    plan::{
        expiry,
        index::{BindingIndex, Contribution},
        mongo::{Action, Actual, ActualRole, ActualUser, MongoGrant, ROLE_DB, Resource, SubjectObjects, USER_DB, plan},
        policy::{self, MONGO_ESCALATION_ACTIONS, MONGO_ESCALATION_ROLES, MONGO_EVERY_DATABASE_ROLES},
    },
};
use proptest::prelude::*;

// ------------------------------------------------------------ strategies

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["read", "readWrite", "root", "dbOwner", "orders", "orders-eu", "", "*", "admin"])
            .prop_map(String::from),
        "\\PC{0,10}",
    ]
}

fn resource() -> impl Strategy<Value = Resource> {
    prop_oneof![
        Just(Resource::Cluster),
        (prop::sample::select(vec!["orders", "orders-eu", "", "admin"]), prop::sample::select(vec!["", "audit", "x"]))
            .prop_map(|(db, c)| Resource::Namespace { db: db.into(), collection: c.into() }),
    ]
}

fn action() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["find", "insert", "update", "remove", "grantRole", "anyAction"]).prop_map(String::from)
}

/// A grant as dbgrant builds it: no resource with an empty action set.
fn grant() -> impl Strategy<Value = MongoGrant> {
    (
        prop::collection::btree_set((name(), name()), 0..4),
        prop::collection::btree_map(resource(), prop::collection::btree_set(action(), 1..4), 0..4),
    )
        .prop_map(|(roles, privileges)| MongoGrant { roles: roles.into_iter().collect(), privileges })
}

fn objects() -> impl Strategy<Value = SubjectObjects> {
    prop::bool::ANY.prop_map(|user| SubjectObjects {
        role: "entra/0b0b0b0b-0000-4000-8000-000000000001".into(),
        user: user.then(|| "entra/0b0b0b0b-0000-4000-8000-000000000001".into()),
    })
}

fn actual() -> impl Strategy<Value = Actual> {
    (
        prop::option::of(grant()),
        prop::option::of(prop::collection::btree_set((name(), name()), 0..3)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(role, user, role_owned, user_owned)| Actual {
            role: role.map(|grant| ActualRole { grant }),
            user: user.map(|roles| ActualUser { roles }),
            role_owned,
            user_owned,
        })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "role",
            "db",
            "roles",
            "privileges",
            "resource",
            "actions",
            "cluster",
            "collection",
            "user",
            "_id",
            "target",
            "authInfo",
            "authenticatedUserPrivileges",
            "authenticatedUserRoles",
        ])
        .prop_map(String::from),
        "\\PC{0,6}",
    ]
}

fn leaf() -> impl Strategy<Value = Bson> {
    prop_oneof![
        Just(Bson::Null),
        any::<bool>().prop_map(Bson::Boolean),
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        any::<f64>().prop_map(Bson::Double),
        "\\PC{0,8}".prop_map(Bson::String),
        key().prop_map(Bson::String),
        prop::sample::select(vec!["createRole", "viewUser", "root", "userAdminAnyDatabase", "admin", ""])
            .prop_map(|s| Bson::String(s.into())),
    ]
}

fn any_bson() -> impl Strategy<Value = Bson> {
    leaf().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Bson::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| Bson::Document(kv.into_iter().collect())),
        ]
    })
}

fn any_document() -> impl Strategy<Value = Document> {
    prop::collection::vec((key(), any_bson()), 0..8).prop_map(|kv| kv.into_iter().collect())
}

// -------------------------------------------------------- the planner

/// Apply a plan to a model of the server plus ledger, as `sync` does.
fn apply(objects: &SubjectObjects, actual: &Actual, actions: &[Action]) -> Actual {
    let mut a = actual.clone();
    let user_id = objects.user.as_ref().map(|u| format!("{USER_DB}.{u}"));
    for action in actions {
        match action {
            Action::CreateRole { grant, .. } | Action::UpdateRole { grant, .. } => {
                let g = MongoGrant {
                    roles: grant.0.iter().cloned().collect(),
                    privileges: grant.1.iter().map(|(r, a)| (r.clone(), a.iter().cloned().collect())).collect(),
                };
                a.role = Some(ActualRole { grant: g });
                a.role_owned = true;
            }
            Action::CreateUser { role, .. } | Action::UpdateUser { role, .. } => {
                a.user = Some(ActualUser { roles: [(role.clone(), ROLE_DB.to_string())].into() });
                a.user_owned = true;
            }
            Action::DropUser { .. } => {
                a.user = None;
                a.user_owned = false;
            }
            Action::DropRole { .. } => {
                a.role = None;
                a.role_owned = false;
            }
            Action::Release { name } if Some(name) == user_id.as_ref() => a.user_owned = false,
            Action::Release { .. } => a.role_owned = false,
            Action::Adopt { name } if Some(name) == user_id.as_ref() => a.user_owned = true,
            Action::Adopt { .. } => a.role_owned = true,
        }
    }
    a
}

fn names_role(action: &Action, role: &str) -> bool {
    match action {
        Action::CreateRole { name, .. } | Action::UpdateRole { name, .. } | Action::DropRole { name } => name == role,
        Action::Release { name } | Action::Adopt { name } => *name == format!("{ROLE_DB}.{role}"),
        _ => false,
    }
}

fn names_user(action: &Action, user: &str) -> bool {
    match action {
        Action::CreateUser { name, .. } | Action::UpdateUser { name, .. } | Action::DropUser { name } => name == user,
        Action::Release { name } | Action::Adopt { name } => *name == format!("{USER_DB}.{user}"),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_never_touch_what_dbgrant_does_not_own(
        objects in objects(),
        desired in prop::option::of(grant()),
        actual in actual(),
        retain in any::<bool>(),
    ) {
        let p = plan(&objects, desired.as_ref(), &actual, false, retain);
        if actual.role.is_some() && !actual.role_owned {
            prop_assert!(!p.actions.iter().any(|a| names_role(a, &objects.role)), "{p:?}");
        }
        if let Some(user) = &objects.user && actual.user.is_some() && !actual.user_owned {
            prop_assert!(!p.actions.iter().any(|a| names_user(a, user)), "{p:?}");
        }
        if !p.conflicts.is_empty() {
            prop_assert!(p.actions.is_empty(), "a conflict must stop every write: {p:?}");
        }
        if desired.is_none() {
            prop_assert!(p.actions.iter().all(|a| matches!(a, Action::DropRole { .. } | Action::DropUser { .. } | Action::Release { .. })), "{p:?}");
            if retain {
                prop_assert!(!p.actions.iter().any(|a| matches!(a, Action::DropRole { .. } | Action::DropUser { .. })), "{p:?}");
            }
        }
    }

    #[test]
    fn applying_a_plan_converges_in_one_step(
        objects in objects(),
        desired in prop::option::of(grant()),
        actual in actual(),
        adopt in any::<bool>(),
        retain in any::<bool>(),
    ) {
        // A subject without a user has no user to look up.
        let actual = if objects.user.is_none() { Actual { user: None, user_owned: false, ..actual } } else { actual };
        let first = plan(&objects, desired.as_ref(), &actual, adopt, retain);
        prop_assume!(first.conflicts.is_empty());
        let after = apply(&objects, &actual, &first.actions);
        let second = plan(&objects, desired.as_ref(), &after, adopt, retain);
        prop_assert!(second.actions.is_empty() && second.conflicts.is_empty(), "first {first:?}\nthen {second:?}");
        if let Some(want) = &desired {
            prop_assert_eq!(after.role.as_ref().map(|r| &r.grant), Some(want));
            prop_assert!(after.role_owned);
            if objects.user.is_some() {
                prop_assert!(after.user.is_some() && after.user_owned);
            }
        } else if !retain {
            // Revoked: nothing dbgrant owned survives.
            prop_assert!(!(after.role.is_some() && after.role_owned));
            prop_assert!(!(after.user.is_some() && after.user_owned));
        }
    }

    #[test]
    fn a_steady_state_plans_nothing(objects in objects(), want in grant(), adopt in any::<bool>()) {
        let actual = Actual {
            role: Some(ActualRole { grant: want.clone() }),
            user: objects.user.as_ref().map(|_| ActualUser { roles: [(objects.role.clone(), ROLE_DB.to_string())].into() }),
            role_owned: true,
            user_owned: true,
        };
        let p = plan(&objects, Some(&want), &actual, adopt, false);
        prop_assert!(p.actions.is_empty() && p.conflicts.is_empty() && p.drifted.is_empty(), "{p:?}");
    }

    #[test]
    fn from_spec_never_keeps_an_empty_action_set(
        roles in prop::collection::vec((name(), name()), 0..5),
        privileges in prop::collection::vec((prop::option::of(name()), prop::option::of(name()), prop::option::of(any::<bool>()), prop::collection::vec(action(), 0..3)), 0..5),
    ) {
        let roles: Vec<MongoRoleRef> = roles.into_iter().map(|(role, db)| MongoRoleRef { role, db }).collect();
        let privileges: Vec<MongoPrivilege> = privileges
            .into_iter()
            .map(|(db, collection, cluster, actions)| MongoPrivilege { resource: MongoResource { db, collection, cluster }, actions })
            .collect();
        let g = MongoGrant::from_spec(&roles, &privileges);
        prop_assert!(g.privileges.values().all(|a| !a.is_empty()));
    }
}

// ------------------------------------------------------------ the index

#[derive(Clone, Debug)]
enum IndexOp {
    Upsert { key: u8, target: u8, subjects: BTreeSet<u8>, grant: MongoGrant },
    Remove { key: u8 },
}

fn index_op() -> impl Strategy<Value = IndexOp> {
    prop_oneof![
        (0u8..6, 0u8..2, prop::collection::btree_set(0u8..4, 0..3), grant())
            .prop_map(|(key, target, subjects, grant)| IndexOp::Upsert { key, target, subjects, grant }),
        (0u8..6).prop_map(|key| IndexOp::Remove { key }),
    ]
}

fn subject(i: u8) -> SubjectKey {
    SubjectKey { kind: SubjectKind::Group, id: format!("g{i}") }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_index_holds_the_union_of_live_bindings_and_reports_every_change(ops in prop::collection::vec(index_op(), 1..40)) {
        let mut idx: BindingIndex<MongoGrant> = BindingIndex::default();
        let mut model: BTreeMap<u8, (u8, BTreeSet<u8>, MongoGrant)> = BTreeMap::new();
        let union = |model: &BTreeMap<u8, (u8, BTreeSet<u8>, MongoGrant)>, t: u8, s: u8| -> Option<MongoGrant> {
            let mut out: Option<MongoGrant> = None;
            for (target, subjects, grant) in model.values() {
                if *target == t && subjects.contains(&s) {
                    let g = out.get_or_insert_with(MongoGrant::default);
                    g.roles.extend(grant.roles.iter().cloned());
                    for (r, a) in &grant.privileges {
                        g.privileges.entry(r.clone()).or_default().extend(a.iter().cloned());
                    }
                }
            }
            out
        };
        for op in ops {
            let before: Vec<_> = (0..2u8).flat_map(|t| (0..4u8).map(move |s| (t, s))).map(|(t, s)| ((t, s), union(&model, t, s))).collect();
            let affected = match op {
                IndexOp::Upsert { key, target, subjects, grant } => {
                    model.insert(key, (target, subjects.clone(), grant.clone()));
                    idx.upsert(&format!("ns/b{key}"), Contribution { target: format!("t{target}"), subjects: subjects.iter().map(|s| subject(*s)).collect(), grant: grant.into() })
                }
                IndexOp::Remove { key } => {
                    model.remove(&key);
                    idx.remove(&format!("ns/b{key}"))
                }
            };
            for ((t, s), was) in before {
                let now = union(&model, t, s);
                prop_assert_eq!(idx.desired(&format!("t{t}"), &subject(s)), now.clone());
                if now != was {
                    prop_assert!(affected.contains(&(format!("t{t}"), subject(s))), "change of t{t}/g{s} not reported");
                }
            }
            prop_assert_eq!(idx.len(), model.len());
        }
    }
}

// ------------------------------------------------------ policy, expiry

/// The `authNamePrefix` of the target in the policy properties.
const PREFIX: &str = "p";

/// Names for policy inputs: [`name`] plus the ones the policy treats
/// specially (the ledger, reserved databases, dbgrant's managed roles,
/// roles spanning every database).
fn policy_name() -> impl Strategy<Value = String> {
    prop_oneof![
        name(),
        prop::sample::select(vec![
            "dbgrant",
            "DBGRANT",
            "local",
            "config",
            "adm*",
            "p/0b0b0b0b-0000-0000-0000-000000000001",
            "p/",
            "enableSharding",
            "readAnyDatabase",
            "clusterMonitor",
            "userAdmin",
        ])
        .prop_map(String::from),
    ]
}

fn policy_strategy() -> impl Strategy<Value = MongoPolicy> {
    (
        prop::collection::vec(prop_oneof![Just("*".to_string()), Just("team-*".to_string()), "[a-z-]{0,8}\\*?"], 1..3),
        prop::option::of(prop::collection::vec(
            (policy_name(), policy_name()).prop_map(|(role, db)| MongoRoleRef { role, db }),
            0..3,
        )),
        prop::option::of(prop::collection::vec(prop_oneof![Just("*".to_string()), action()], 0..3)),
        prop::option::of(prop::collection::vec(policy_name(), 0..3)),
        any::<bool>(),
        prop::collection::vec(prop_oneof![policy_name(), action()], 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(
                allowed_namespaces,
                allowed_roles,
                allowed_actions,
                allowed_databases,
                allow_cluster_resource,
                allow_escalation,
                allow_retain,
            )| MongoPolicy {
                allowed_namespaces,
                allowed_roles,
                allowed_actions,
                allowed_databases,
                allow_cluster_resource,
                allow_escalation,
                allow_retain,
            },
        )
}

fn privileges_strategy() -> impl Strategy<Value = Vec<MongoPrivilege>> {
    prop::collection::vec(
        (
            prop::option::of(policy_name()),
            prop::option::of(name()),
            prop::option::of(any::<bool>()),
            prop::collection::vec(prop_oneof![action(), "\\PC{0,6}"], 0..4),
        )
            .prop_map(|(db, collection, cluster, actions)| MongoPrivilege {
                resource: MongoResource { db, collection, cluster },
                actions,
            }),
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn policy_never_panics_and_escalation_needs_an_explicit_opt_out(
        policy in policy_strategy(),
        ns in "[a-z0-9-]{0,12}",
        roles in prop::collection::vec((policy_name(), policy_name()).prop_map(|(role, db)| MongoRoleRef { role, db }), 0..4),
        privileges in privileges_strategy(),
        retain in any::<bool>(),
    ) {
        let deletion = if retain { DeletionPolicy::Retain } else { DeletionPolicy::Delete };
        let denied = policy::evaluate_mongo(&policy, PREFIX, &ns, "t", &roles, &privileges, deletion);
        if !policy::namespace_allowed(&policy.allowed_namespaces, &ns) {
            prop_assert_eq!(denied.len(), 1, "{:?}", denied);
            // The message is the same whatever the target allows: it
            // reveals nothing of the policy.
            let blank = MongoPolicy { allowed_namespaces: Vec::new(), ..MongoPolicy::default() };
            let plain = policy::evaluate_mongo(&blank, PREFIX, &ns, "t", &roles, &privileges, deletion);
            prop_assert_eq!(denied, plain);
            return Ok(());
        }
        if retain && !policy.allow_retain {
            prop_assert!(denied.iter().any(|d| d.contains("policy.allowRetain")), "{:?}", denied);
        }
        for r in &roles {
            let named = format!("{}@{}", r.role, r.db);
            if policy::is_ledger_db(&r.db) {
                prop_assert!(denied.iter().any(|d| d.contains(&named) && d.contains("ledger")), "{:?}", denied);
            } else if MONGO_EVERY_DATABASE_ROLES.contains(&r.role.as_str()) {
                prop_assert!(denied.iter().any(|d| d.contains(&named) && d.contains("every database")), "{:?}", denied);
            } else if r.role.starts_with(&format!("{PREFIX}/")) {
                prop_assert!(denied.iter().any(|d| d.contains(&named) && d.contains("dbgrant manages")), "{:?}", denied);
            } else if MONGO_ESCALATION_ROLES.contains(&r.role.as_str()) && r.db == "admin" {
                prop_assert!(denied.iter().any(|d| d.contains(&named) && d.contains("never grantable")), "{:?}", denied);
            } else if MONGO_ESCALATION_ROLES.contains(&r.role.as_str()) && !policy.allow_escalation.contains(&r.role) {
                prop_assert!(denied.iter().any(|d| d.contains(&format!("role {named} can escalate"))), "{:?}", denied);
            }
            if ["admin", "local", "config"].contains(&r.db.as_str())
                && policy.allowed_databases.as_ref().is_none_or(|dbs| !dbs.contains(&r.db))
            {
                prop_assert!(!denied.is_empty(), "{} reached without its literal name", r.db);
            }
        }
        for p in &privileges {
            if p.resource.cluster != Some(true) {
                let db = p.resource.db.as_deref().unwrap_or_default();
                if db.is_empty() {
                    prop_assert!(denied.iter().any(|d| d.contains("every database")), "{:?}", denied);
                } else if policy::is_ledger_db(db) {
                    prop_assert!(denied.iter().any(|d| d.contains("ledger")), "{:?}", denied);
                }
            }
            let on_admin = p.resource.db.as_deref() == Some("admin");
            for a in &p.actions {
                if MONGO_ESCALATION_ACTIONS.contains(&a.as_str()) && on_admin {
                    prop_assert!(denied.iter().any(|d| d.contains(&format!("action {a} on the admin database"))), "{:?}", denied);
                } else if MONGO_ESCALATION_ACTIONS.contains(&a.as_str()) && !policy.allow_escalation.contains(a) {
                    prop_assert!(denied.iter().any(|d| d.contains(&format!("action {a} can escalate"))), "{:?}", denied);
                }
            }
            if p.resource.cluster == Some(true) && !policy.allow_cluster_resource {
                prop_assert!(!denied.is_empty());
            }
        }
    }

    #[test]
    fn expiry_never_panics_and_requeues_within_the_resync(
        duration in prop_oneof!["\\PC{0,12}", "([0-9]{1,6}[wdhms]){1,6}"],
        created in prop::option::of(-377705116800i64..253402207200i64),
        expires_at in prop::option::of(-377705116800i64..253402207200i64),
        now in -377705116800i64..253402207200i64,
        resync in 1u64..100_000,
    ) {
        let _ = expiry::parse_duration(&duration);
        let ts = |s: i64| jiff::Timestamp::from_second(s).expect("in range");
        for e in [
            Expiry { expires_at: None, duration: Some(duration.clone()) },
            Expiry { expires_at: expires_at.map(|s| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(s))), duration: None },
        ] {
            if let Ok(at) = expiry::expiry_instant(created.map(ts), &e) {
                let state = expiry::state(ts(now), at);
                let resync = std::time::Duration::from_secs(resync);
                prop_assert!(expiry::requeue_after(ts(now), state, resync) <= resync);
            }
        }
    }
}

// --------------------------------------------------------- the parsers

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn parsers_of_server_replies_never_panic(d in any_document(), docs in prop::collection::vec(any_document(), 0..5)) {
        let _ = parse_role(&d);
        let _ = parse_user(&d);
        let _ = ledger_ids(&docs);
        let _ = missing_actions(&d);
        // The same documents nested where the parsers look.
        let nested = doc! { "role": "r", "db": "admin", "roles": [Bson::Document(d.clone())], "privileges": [Bson::Document(d.clone())] };
        let _ = parse_role(&nested);
        let _ = parse_user(&doc! { "user": "u", "roles": [Bson::Document(d.clone())] });
        let _ = missing_actions(&doc! { "authInfo": { "authenticatedUserPrivileges": [Bson::Document(d.clone())], "authenticatedUserRoles": [Bson::Document(d)] } });
    }

    #[test]
    fn a_roles_info_entry_parses_back_to_its_grant_however_the_server_splits_it(
        want in grant(),
        split in any::<bool>(),
        reverse in any::<bool>(),
        noise in any::<bool>(),
    ) {
        let mut roles: Vec<Bson> = want.roles.iter().map(|(r, d)| Bson::Document(doc! { "role": r, "db": d })).collect();
        let mut privileges = Vec::new();
        for (resource, actions) in &want.privileges {
            let res = match resource {
                Resource::Cluster => doc! { "cluster": true },
                Resource::Namespace { db, collection } => doc! { "db": db, "collection": collection },
            };
            let mut actions: Vec<&String> = actions.iter().collect();
            if reverse {
                actions.reverse();
            }
            if split && actions.len() > 1 {
                // Same resource in two entries, one action repeated.
                let (a, b) = actions.split_at(1);
                let mut b = b.to_vec();
                b.push(a[0]);
                privileges.push(Bson::Document(doc! { "resource": res.clone(), "actions": a.iter().map(|s| s.as_str()).collect::<Vec<_>>() }));
                privileges.push(Bson::Document(doc! { "resource": res, "actions": b.iter().map(|s| s.as_str()).collect::<Vec<_>>() }));
            } else {
                privileges.push(Bson::Document(doc! { "resource": res, "actions": actions.iter().map(|s| s.as_str()).collect::<Vec<_>>() }));
            }
        }
        if reverse {
            roles.reverse();
            privileges.reverse();
        }
        let mut entry = doc! { "_id": "admin.entra/x", "role": "entra/x", "db": "admin", "roles": roles, "privileges": privileges, "isBuiltin": false };
        if noise {
            entry.insert("inheritedRoles", Bson::Array(vec![Bson::Int32(7)]));
            entry.insert("authenticationRestrictions", Bson::Array(vec![]));
        }
        prop_assert_eq!(parse_role(&entry).grant, want);
    }
}

#[test]
fn policy_examples_from_the_hostile_corpus() {
    let policy = MongoPolicy {
        allowed_namespaces: vec!["team-*".into()],
        allowed_databases: Some(vec!["orders".into(), "orders-*".into()]),
        ..Default::default()
    };
    let role = |r: &str, d: &str| vec![MongoRoleRef { role: r.into(), db: d.into() }];
    // Look-alikes are not escalation by name, but their databases still
    // have to be allowed; MongoDB then refuses the unknown names.
    let eval = |roles: &[MongoRoleRef]| {
        policy::evaluate_mongo(&policy, PREFIX, "team-a", "t", roles, &[], DeletionPolicy::Delete)
    };
    assert!(!eval(&role("ROOT", "admin")).is_empty());
    assert!(!eval(&role("read", "*")).is_empty());
    assert!(eval(&role("root ", "orders")).is_empty());
}
