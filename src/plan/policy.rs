//! Policy evaluation: may this binding, in this namespace, grant this on
//! this target? Shared by both backends; pure.
//!
//! Order of checks: namespace, then escalation (the built-in deny list that
//! a target must opt out of entry by entry), then the target's allow lists.
//! Every denial is collected so a tenant sees all problems at once.

use crate::api::{
    BuiltInCosmosRole, CosmosPolicy, CosmosRoleBindingSpec, CosmosScope, MongoPolicy, MongoPrivilege, MongoRoleRef,
};

/// MongoDB roles that let a holder raise its own privileges, read
/// credentials, or reconfigure authentication. Denied unless a target lists
/// the name in `policy.allowEscalation`.
pub const MONGO_ESCALATION_ROLES: &[&str] = &[
    "root",
    "__system",
    "__queryableBackup",
    "userAdminAnyDatabase",
    "dbAdminAnyDatabase",
    "userAdmin",
    "dbOwner",
    "clusterAdmin",
    "restore",
    "backup",
];

/// MongoDB privilege actions that manage users, roles or server
/// authentication. Denied unless a target lists the name in
/// `policy.allowEscalation`.
pub const MONGO_ESCALATION_ACTIONS: &[&str] = &[
    "anyAction",
    "internal",
    "impersonate",
    "grantRole",
    "revokeRole",
    "createRole",
    "dropRole",
    "createUser",
    "dropUser",
    "changeCustomData",
    "changePassword",
    "setAuthenticationRestriction",
    "setParameter",
    "invalidateUserCache",
];

/// Escalation entry: privileges on `system.*` collections (users, roles,
/// profile, js).
pub const MONGO_SYSTEM_COLLECTIONS: &str = "SystemCollections";

/// Databases that are off limits unless listed in `allowedDatabases`.
pub const MONGO_RESERVED_DATABASES: &[&str] = &["admin", "local", "config"];

/// Escalation entry: a role with wildcard data actions assigned at account
/// scope (e.g. Data Contributor on every database).
pub const COSMOS_WILDCARD_AT_ACCOUNT: &str = "WildcardDataActionsAtAccountScope";

/// Match `value` against a selection pattern: `*` for all, `prefix*`, or
/// an exact name.
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

fn any_matches(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, value))
}

/// Whether bindings in `namespace` may use a target with these
/// `allowedNamespaces`.
pub fn namespace_allowed(allowed: &[String], namespace: &str) -> bool {
    any_matches(allowed, namespace)
}

fn escalation_allowed(opt_outs: &[String], entry: &str) -> bool {
    opt_outs.iter().any(|o| o == entry)
}

/// Evaluate a MongoRoleBinding against its target's policy. Returns every
/// reason it is denied; empty means allowed.
pub fn evaluate_mongo(
    policy: &MongoPolicy,
    namespace: &str,
    target: &str,
    roles: &[MongoRoleRef],
    privileges: &[MongoPrivilege],
) -> Vec<String> {
    let mut denied = Vec::new();
    if !namespace_allowed(&policy.allowed_namespaces, namespace) {
        denied.push(format!(
            "namespace {namespace} may not bind to MongoTarget {target} (allowedNamespaces: {})",
            policy.allowed_namespaces.join(", ")
        ));
        // Nothing else matters for a namespace that may not bind at all,
        // and listing the target's allow lists would leak its policy.
        return denied;
    }
    let db_allowed = |db: &str| match &policy.allowed_databases {
        Some(dbs) => any_matches(dbs, db),
        None => !MONGO_RESERVED_DATABASES.contains(&db),
    };
    for r in roles {
        if MONGO_ESCALATION_ROLES.contains(&r.role.as_str()) && !escalation_allowed(&policy.allow_escalation, &r.role) {
            denied.push(format!(
                "role {}@{} can escalate privileges and is denied unless the target lists {:?} in policy.allowEscalation",
                r.role, r.db, r.role
            ));
            continue;
        }
        if let Some(allowed) = &policy.allowed_roles
            && !allowed.iter().any(|a| pattern_matches(&a.role, &r.role) && pattern_matches(&a.db, &r.db))
        {
            denied.push(format!("role {}@{} is not in the target's policy.allowedRoles", r.role, r.db));
            continue;
        }
        if !db_allowed(&r.db) {
            denied.push(format!("database {:?} (role {}) is not allowed by the target's policy", r.db, r.role));
        }
    }
    for p in privileges {
        if p.resource.cluster == Some(true) {
            if !policy.allow_cluster_resource {
                denied.push("privileges on the cluster resource need policy.allowClusterResource".into());
            }
        } else {
            let db = p.resource.db.as_deref().unwrap_or_default();
            let coll = p.resource.collection.as_deref().unwrap_or_default();
            if db.is_empty() {
                if policy.allowed_databases.as_ref().is_none_or(|dbs| !dbs.iter().any(|d| d == "*")) {
                    denied.push("privileges on every database (db: \"\") need \"*\" in policy.allowedDatabases".into());
                }
            } else if !db_allowed(db) {
                denied.push(format!("database {db:?} is not allowed by the target's policy"));
            }
            if coll.starts_with("system.") && !escalation_allowed(&policy.allow_escalation, MONGO_SYSTEM_COLLECTIONS) {
                denied.push(format!(
                    "collection {coll:?} is a system collection; denied unless the target lists {MONGO_SYSTEM_COLLECTIONS:?} in policy.allowEscalation"
                ));
            }
        }
        for a in &p.actions {
            if MONGO_ESCALATION_ACTIONS.contains(&a.as_str()) && !escalation_allowed(&policy.allow_escalation, a) {
                denied.push(format!(
                    "action {a} can escalate privileges and is denied unless the target lists {a:?} in policy.allowEscalation"
                ));
            } else if let Some(allowed) = &policy.allowed_actions
                && !allowed.iter().any(|x| x == "*" || x == a)
            {
                denied.push(format!("action {a} is not in the target's policy.allowedActions"));
            }
        }
    }
    denied.dedup();
    denied
}

/// Data actions of the built-in roles, as Azure defines them.
pub fn built_in_data_actions(role: BuiltInCosmosRole) -> &'static [&'static str] {
    match role {
        BuiltInCosmosRole::DataReader => &[
            "Microsoft.DocumentDB/databaseAccounts/readMetadata",
            "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/executeQuery",
            "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/readChangeFeed",
            "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read",
        ],
        BuiltInCosmosRole::DataContributor => &[
            "Microsoft.DocumentDB/databaseAccounts/readMetadata",
            "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/*",
            "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/*",
        ],
    }
}

/// The policy name of a binding's role definition: `DataReader`,
/// `DataContributor`, or the CosmosRoleDefinition's name.
pub fn cosmos_role_name(spec: &CosmosRoleBindingSpec) -> String {
    match (&spec.role_definition.built_in, &spec.role_definition.name) {
        (Some(BuiltInCosmosRole::DataReader), _) => "DataReader".into(),
        (Some(BuiltInCosmosRole::DataContributor), _) => "DataContributor".into(),
        (None, Some(n)) => n.clone(),
        (None, None) => String::new(),
    }
}

/// Evaluate a CosmosRoleBinding against its target's policy.
/// `data_actions` are the role definition's actions (built-in or custom).
pub fn evaluate_cosmos(
    policy: &CosmosPolicy,
    namespace: &str,
    target: &str,
    spec: &CosmosRoleBindingSpec,
    data_actions: &[String],
) -> Vec<String> {
    let mut denied = Vec::new();
    if !namespace_allowed(&policy.allowed_namespaces, namespace) {
        denied.push(format!(
            "namespace {namespace} may not bind to CosmosTarget {target} (allowedNamespaces: {})",
            policy.allowed_namespaces.join(", ")
        ));
        return denied;
    }
    let role = cosmos_role_name(spec);
    if let Some(allowed) = &policy.allowed_role_definitions
        && !allowed.iter().any(|a| a == &role)
    {
        denied.push(format!("role definition {role} is not in the target's policy.allowedRoleDefinitions"));
    }
    let wildcard = data_actions.iter().any(|a| a.contains('*'));
    for scope in &spec.scopes {
        match scope {
            CosmosScope { database: None, .. } => {
                if !policy.allow_account_scope {
                    denied.push("account scope ({}) needs policy.allowAccountScope on the target".into());
                } else if wildcard && !escalation_allowed(&policy.allow_escalation, COSMOS_WILDCARD_AT_ACCOUNT) {
                    denied.push(format!(
                        "role {role} has wildcard data actions and is denied at account scope unless the target lists {COSMOS_WILDCARD_AT_ACCOUNT:?} in policy.allowEscalation"
                    ));
                }
            }
            CosmosScope { database: Some(db), .. } => {
                if let Some(dbs) = &policy.allowed_databases
                    && !any_matches(dbs, db)
                {
                    denied.push(format!("database {db:?} is not in the target's policy.allowedDatabases"));
                }
            }
        }
    }
    denied.dedup();
    denied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CosmosRoleDefinitionRef, Expiry, MongoResource, Subject, SubjectKind, TargetRef};

    fn mongo_policy(namespaces: &[&str]) -> MongoPolicy {
        MongoPolicy { allowed_namespaces: namespaces.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    fn role(role: &str, db: &str) -> MongoRoleRef {
        MongoRoleRef { role: role.into(), db: db.into() }
    }

    fn privilege(db: &str, coll: &str, actions: &[&str]) -> MongoPrivilege {
        MongoPrivilege {
            resource: MongoResource { db: Some(db.into()), collection: Some(coll.into()), cluster: None },
            actions: actions.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn namespace_patterns() {
        assert!(namespace_allowed(&["*".into()], "anything"));
        assert!(namespace_allowed(&["team-*".into()], "team-payments"));
        assert!(!namespace_allowed(&["team-*".into()], "teams"));
        assert!(namespace_allowed(&["payments".into()], "payments"));
        assert!(!namespace_allowed(&["payments".into()], "payments-dev"));
        assert!(!namespace_allowed(&[], "payments"));
    }

    #[test]
    fn allowed_binding_has_no_denials() {
        let p = mongo_policy(&["team-*"]);
        let d = evaluate_mongo(&p, "team-a", "prod", &[role("read", "orders")], &[privilege("orders", "x", &["find"])]);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn wrong_namespace_is_denied_without_revealing_more() {
        let p = mongo_policy(&["team-*"]);
        let d = evaluate_mongo(&p, "intruder", "prod", &[role("root", "admin")], &[]);
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("namespace intruder may not bind"));
    }

    #[test]
    fn every_escalation_role_and_action_is_denied_by_default() {
        let p = MongoPolicy { allowed_databases: Some(vec!["*".into()]), ..mongo_policy(&["*"]) };
        for r in MONGO_ESCALATION_ROLES {
            let d = evaluate_mongo(&p, "a", "t", &[role(r, "admin")], &[]);
            assert!(d.iter().any(|m| m.contains("escalate")), "{r}: {d:?}");
        }
        for a in MONGO_ESCALATION_ACTIONS {
            let d = evaluate_mongo(&p, "a", "t", &[], &[privilege("app", "c", &[a])]);
            assert!(d.iter().any(|m| m.contains("escalate")), "{a}: {d:?}");
        }
    }

    #[test]
    fn escalation_opt_out_is_per_entry() {
        let p = MongoPolicy {
            allow_escalation: vec!["dbOwner".into()],
            allowed_databases: Some(vec!["*".into()]),
            ..mongo_policy(&["*"])
        };
        assert!(evaluate_mongo(&p, "a", "t", &[role("dbOwner", "app")], &[]).is_empty());
        assert!(!evaluate_mongo(&p, "a", "t", &[role("root", "admin")], &[]).is_empty());
    }

    #[test]
    fn allow_lists_restrict_roles_actions_and_databases() {
        let p = MongoPolicy {
            allowed_roles: Some(vec![role("read*", "*")]),
            allowed_actions: Some(vec!["find".into()]),
            allowed_databases: Some(vec!["orders".into()]),
            ..mongo_policy(&["*"])
        };
        assert!(evaluate_mongo(&p, "a", "t", &[role("readWrite", "orders")], &[]).is_empty());
        assert_eq!(evaluate_mongo(&p, "a", "t", &[role("dbAdmin", "orders")], &[]).len(), 1);
        assert_eq!(evaluate_mongo(&p, "a", "t", &[role("read", "billing")], &[]).len(), 1);
        assert_eq!(evaluate_mongo(&p, "a", "t", &[], &[privilege("orders", "c", &["insert"])]).len(), 1);
    }

    #[test]
    fn reserved_databases_cluster_and_system_collections_need_opt_in() {
        let p = mongo_policy(&["*"]);
        assert!(!evaluate_mongo(&p, "a", "t", &[role("read", "admin")], &[]).is_empty());
        assert!(!evaluate_mongo(&p, "a", "t", &[], &[privilege("app", "system.users", &["find"])]).is_empty());
        assert!(!evaluate_mongo(&p, "a", "t", &[], &[privilege("", "", &["find"])]).is_empty());
        let cluster = MongoPrivilege {
            resource: MongoResource { db: None, collection: None, cluster: Some(true) },
            actions: vec!["serverStatus".into()],
        };
        assert!(!evaluate_mongo(&p, "a", "t", &[], std::slice::from_ref(&cluster)).is_empty());
        let p = MongoPolicy { allow_cluster_resource: true, ..p };
        assert!(evaluate_mongo(&p, "a", "t", &[], &[cluster]).is_empty());
    }

    fn cosmos_spec(built_in: BuiltInCosmosRole, scopes: Vec<CosmosScope>) -> CosmosRoleBindingSpec {
        CosmosRoleBindingSpec {
            target_ref: TargetRef { name: "acct".into() },
            subjects: vec![Subject {
                kind: SubjectKind::Group,
                object_id: Some("0b0b0b0b-0000-0000-0000-000000000001".into()),
                value: None,
                display_name: None,
            }],
            role_definition: CosmosRoleDefinitionRef { built_in: Some(built_in), name: None },
            scopes,
            expiry: Expiry::default(),
            deletion_policy: Default::default(),
        }
    }

    fn actions(role: BuiltInCosmosRole) -> Vec<String> {
        built_in_data_actions(role).iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cosmos_account_scope_and_wildcards() {
        let db = CosmosScope { database: Some("orders".into()), container: None };
        let account = CosmosScope::default();
        let mut p = CosmosPolicy { allowed_namespaces: vec!["*".into()], ..Default::default() };
        let reader = cosmos_spec(BuiltInCosmosRole::DataReader, vec![account.clone()]);
        let writer = cosmos_spec(BuiltInCosmosRole::DataContributor, vec![account.clone()]);
        let writer_db = cosmos_spec(BuiltInCosmosRole::DataContributor, vec![db]);
        let ra = actions(BuiltInCosmosRole::DataReader);
        let wa = actions(BuiltInCosmosRole::DataContributor);
        assert!(evaluate_cosmos(&p, "a", "t", &writer_db, &wa).is_empty());
        assert!(!evaluate_cosmos(&p, "a", "t", &reader, &ra).is_empty());
        p.allow_account_scope = true;
        assert!(evaluate_cosmos(&p, "a", "t", &reader, &ra).is_empty());
        assert!(evaluate_cosmos(&p, "a", "t", &writer, &wa)[0].contains(COSMOS_WILDCARD_AT_ACCOUNT));
        p.allow_escalation = vec![COSMOS_WILDCARD_AT_ACCOUNT.into()];
        assert!(evaluate_cosmos(&p, "a", "t", &writer, &wa).is_empty());
    }

    #[test]
    fn cosmos_namespace_role_and_database_lists() {
        let db = CosmosScope { database: Some("billing".into()), container: Some("c".into()) };
        let spec = cosmos_spec(BuiltInCosmosRole::DataContributor, vec![db]);
        let wa = actions(BuiltInCosmosRole::DataContributor);
        let p = CosmosPolicy { allowed_namespaces: vec!["team-a".into()], ..Default::default() };
        assert!(evaluate_cosmos(&p, "team-b", "t", &spec, &wa)[0].contains("may not bind"));
        let p = CosmosPolicy {
            allowed_role_definitions: Some(vec!["DataReader".into()]),
            allowed_databases: Some(vec!["orders".into()]),
            ..p
        };
        assert_eq!(evaluate_cosmos(&p, "team-a", "t", &spec, &wa).len(), 2);
    }
}
