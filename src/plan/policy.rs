//! Policy evaluation: may this binding, in this namespace, grant this on
//! this target? Shared by both backends; pure.
//!
//! Order of checks: namespace, then what no policy can allow (dbgrant's
//! ledger, roles spanning every database, the roles dbgrant manages for
//! subjects, `Retain` where the target does not allow it), then escalation
//! (the built-in deny list that a target must opt out of entry by entry),
//! then the target's allow lists. Every denial is collected so a tenant
//! sees all problems at once.
//!
//! The ledger (`dbgrant.ownership`) has no opt-out: a tenant that could
//! write it could delete its own entries (its role would outlive deletion
//! and expiry) or forge entries that make dbgrant drop roles and users it
//! never created. So no route to it is grantable: a role or privilege on
//! its database, a privilege on every database (`db: ""`), or a role whose
//! privileges span every database.

use crate::{
    api::{
        BuiltInCosmosRole, CosmosPolicy, CosmosRoleBindingSpec, CosmosScope, DeletionPolicy, MongoPolicy,
        MongoPrivilege, MongoRoleRef,
    },
    plan::mongo::LEDGER_DB,
};

/// MongoDB built-in roles with privileges on every database (resources
/// `{db: "", collection: ""}` or `anyResource`), which therefore include
/// dbgrant's ledger. Never grantable: `policy.allowEscalation` does not
/// open them. From the server's built-in role definitions (7.0/8.0):
/// `enableSharding` exists in every database, the others in `admin`.
pub const MONGO_EVERY_DATABASE_ROLES: &[&str] = &[
    "root",
    "__system",
    "__queryableBackup",
    "backup",
    "restore",
    "readAnyDatabase",
    "readWriteAnyDatabase",
    "dbAdminAnyDatabase",
    "userAdminAnyDatabase",
    "clusterAdmin",
    "clusterManager",
    "hostManager",
    "enableSharding",
];

/// MongoDB roles that let a holder raise its own privileges in a database
/// (create roles and users, grant itself anything there). Denied unless a
/// target lists the name in `policy.allowEscalation`. Roles that span every
/// database are in [`MONGO_EVERY_DATABASE_ROLES`] instead, with no opt-out.
pub const MONGO_ESCALATION_ROLES: &[&str] = &["userAdmin", "dbOwner"];

/// Roles that read every database's statistics (not its data) and the
/// server's state: `clusterMonitor`, which monitoring agents need. Denied
/// unless a target lists the name in `policy.allowEscalation`.
pub const MONGO_MONITORING_ROLES: &[&str] = &["clusterMonitor"];

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

/// Databases that are off limits unless `allowedDatabases` lists them by
/// their literal name (`*` and prefix patterns never match them).
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

/// Whether `db` is dbgrant's ledger database. MongoDB refuses database
/// names that differ only in case from an existing one, so any spelling is
/// refused.
pub fn is_ledger_db(db: &str) -> bool {
    db.eq_ignore_ascii_case(LEDGER_DB)
}

/// Whether a MongoTarget's `allowedDatabases` admits `db`. `admin`,
/// `local` and `config` need their literal name in the list; unset admits
/// every other database. Says nothing about the ledger (never allowed).
pub fn mongo_database_allowed(allowed: Option<&[String]>, db: &str) -> bool {
    let reserved = MONGO_RESERVED_DATABASES.iter().any(|r| r.eq_ignore_ascii_case(db));
    match allowed {
        _ if reserved => allowed.is_some_and(|dbs| dbs.iter().any(|d| d == db)),
        Some(dbs) => any_matches(dbs, db),
        None => true,
    }
}

/// The denial for a namespace that may not use a target. It names neither
/// the target's `allowedNamespaces` nor anything else of its policy: the
/// tenant reading it is, by definition, not one the target trusts.
fn namespace_denied(kind: &str, namespace: &str, target: &str) -> String {
    format!(
        "namespace {namespace} may not bind to {kind} {target} (it is not in the target's policy.allowedNamespaces; ask the platform team that owns the target)"
    )
}

fn retain_denied(kind: &str, target: &str) -> String {
    format!(
        "deletionPolicy: Retain is not allowed on {kind} {target}: ask the platform team for policy.allowRetain on the target, or use deletionPolicy: Delete"
    )
}

/// Evaluate a MongoRoleBinding against its target's policy.
/// `auth_name_prefix` is the target's `oidc.authNamePrefix`: roles named
/// `<prefix>/…` are the ones dbgrant manages for subjects, never
/// grantable. Returns every reason the binding is denied; empty means
/// allowed.
pub fn evaluate_mongo(
    policy: &MongoPolicy,
    auth_name_prefix: &str,
    namespace: &str,
    target: &str,
    roles: &[MongoRoleRef],
    privileges: &[MongoPrivilege],
    deletion_policy: DeletionPolicy,
) -> Vec<String> {
    let mut denied = Vec::new();
    if !namespace_allowed(&policy.allowed_namespaces, namespace) {
        // Nothing else matters for a namespace that may not bind at all,
        // and listing the target's allow lists would leak its policy.
        denied.push(namespace_denied("MongoTarget", namespace, target));
        return denied;
    }
    if deletion_policy == DeletionPolicy::Retain && !policy.allow_retain {
        denied.push(retain_denied("MongoTarget", target));
    }
    let db_allowed = |db: &str| mongo_database_allowed(policy.allowed_databases.as_deref(), db);
    let managed_prefix = format!("{auth_name_prefix}/");
    for r in roles {
        if is_ledger_db(&r.db) {
            denied.push(format!(
                "role {}@{} is on dbgrant's ownership ledger database {LEDGER_DB:?}, which no binding may reach (no policy allows it: with it a tenant could make dbgrant forget or drop grants)",
                r.role, r.db
            ));
            continue;
        }
        if MONGO_EVERY_DATABASE_ROLES.contains(&r.role.as_str()) {
            denied.push(format!(
                "role {}@{} holds privileges on every database, dbgrant's ownership ledger {LEDGER_DB:?} included, and is never grantable (policy.allowEscalation cannot allow it)",
                r.role, r.db
            ));
            continue;
        }
        if r.role.starts_with(&managed_prefix) {
            denied.push(format!(
                "role {}@{} is named like the roles dbgrant manages for subjects ({managed_prefix}…) and is never grantable: bind the subject itself instead",
                r.role, r.db
            ));
            continue;
        }
        if MONGO_MONITORING_ROLES.contains(&r.role.as_str()) && !escalation_allowed(&policy.allow_escalation, &r.role) {
            denied.push(format!(
                "role {}@{} reads every database's statistics and the server's state; denied unless the target lists {:?} in policy.allowEscalation",
                r.role, r.db, r.role
            ));
            continue;
        }
        // In admin, a role that administers the database can grant itself
        // root (which spans every database, the ledger included): no
        // opt-out there.
        if MONGO_ESCALATION_ROLES.contains(&r.role.as_str()) && r.db == "admin" {
            denied.push(format!(
                "role {}@admin administers the admin database, where its holder could grant itself root and so reach dbgrant's ownership ledger {LEDGER_DB:?}; never grantable (policy.allowEscalation cannot allow it)",
                r.role
            ));
            continue;
        }
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
                denied.push(format!(
                    "privileges on every database (db: \"\") are never grantable: they include dbgrant's ownership ledger {LEDGER_DB:?}; name the database"
                ));
            } else if is_ledger_db(db) {
                denied.push(format!(
                    "database {db:?} is dbgrant's ownership ledger, which no binding may reach (no policy allows it: with it a tenant could make dbgrant forget or drop grants)"
                ));
            } else if !db_allowed(db) {
                denied.push(format!("database {db:?} is not allowed by the target's policy"));
            }
            if coll.starts_with("system.") && !escalation_allowed(&policy.allow_escalation, MONGO_SYSTEM_COLLECTIONS) {
                denied.push(format!(
                    "collection {coll:?} is a system collection; denied unless the target lists {MONGO_SYSTEM_COLLECTIONS:?} in policy.allowEscalation"
                ));
            }
        }
        let on_admin = p.resource.db.as_deref() == Some("admin");
        for a in &p.actions {
            if MONGO_ESCALATION_ACTIONS.contains(&a.as_str()) && on_admin {
                denied.push(format!(
                    "action {a} on the admin database lets its holder grant itself root and so reach dbgrant's ownership ledger {LEDGER_DB:?}; never grantable (policy.allowEscalation cannot allow it)"
                ));
            } else if MONGO_ESCALATION_ACTIONS.contains(&a.as_str()) && !escalation_allowed(&policy.allow_escalation, a)
            {
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

/// Why `name` cannot be a Cosmos DB database or container name, if it
/// cannot: Cosmos DB forbids `/`, `\`, `?`, `#` and a trailing space, and
/// `.` or `..` would make a scope path (`…/dbs/..`) that a normaliser may
/// read as the account itself. The CRD schema refuses these; this guards
/// objects stored before it did.
pub fn cosmos_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("is a path segment (. or ..), not a name; the scope could resolve to the account itself")
    } else if name.contains(['/', '\\', '?', '#']) {
        Some("contains a character Cosmos DB forbids in names (/ \\ ? #)")
    } else if name.ends_with(char::is_whitespace) {
        Some("ends with a space, which Cosmos DB forbids in names")
    } else {
        None
    }
}

/// Whether deleting a binding leaves in place what only it needed
/// (`deletionPolicy: Retain`): only when the binding asks for it, its
/// target's current policy allows it (`policy.allowRetain`), and the
/// binding has not expired. Expiry always revokes, whatever the deletion
/// policy; so does a target that stopped allowing Retain.
pub fn retains(deletion_policy: DeletionPolicy, allow_retain: bool, expired: bool) -> bool {
    deletion_policy == DeletionPolicy::Retain && allow_retain && !expired
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
        denied.push(namespace_denied("CosmosTarget", namespace, target));
        return denied;
    }
    if spec.deletion_policy == DeletionPolicy::Retain && !policy.allow_retain {
        denied.push(retain_denied("CosmosTarget", target));
    }
    for scope in &spec.scopes {
        for (what, name) in [("database", &scope.database), ("container", &scope.container)] {
            if let Some(problem) = name.as_deref().and_then(cosmos_name_problem) {
                denied.push(format!("{what} name {:?} {problem}", name.as_deref().unwrap_or_default()));
            }
        }
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

    /// The `authNamePrefix` of the targets in these tests.
    const PREFIX: &str = "entra";

    fn mongo_policy(namespaces: &[&str]) -> MongoPolicy {
        MongoPolicy { allowed_namespaces: namespaces.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    /// A policy that allows everything a target can allow.
    fn wide_open() -> MongoPolicy {
        let mut escalation: Vec<String> = MONGO_ESCALATION_ROLES.iter().map(|s| s.to_string()).collect();
        escalation.extend(MONGO_EVERY_DATABASE_ROLES.iter().map(|s| s.to_string()));
        escalation.extend(MONGO_ESCALATION_ACTIONS.iter().map(|s| s.to_string()));
        escalation.push(MONGO_SYSTEM_COLLECTIONS.into());
        MongoPolicy {
            allowed_namespaces: vec!["*".into()],
            allowed_roles: Some(vec![role("*", "*")]),
            allowed_actions: Some(vec!["*".into()]),
            allowed_databases: Some(
                ["*", "dbgrant", "DBGRANT", "admin", "local", "config"].iter().map(|s| s.to_string()).collect(),
            ),
            allow_cluster_resource: true,
            allow_escalation: escalation,
            allow_retain: true,
        }
    }

    fn mongo(
        p: &MongoPolicy,
        ns: &str,
        target: &str,
        roles: &[MongoRoleRef],
        privileges: &[MongoPrivilege],
    ) -> Vec<String> {
        evaluate_mongo(p, PREFIX, ns, target, roles, privileges, DeletionPolicy::Delete)
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
    fn administering_admin_is_never_grantable_even_with_an_opt_out() {
        let p = MongoPolicy {
            allowed_databases: Some(vec!["admin".into(), "orders".into()]),
            allow_escalation: vec!["userAdmin".into(), "dbOwner".into(), "grantRole".into(), "createUser".into()],
            ..mongo_policy(&["*"])
        };
        let eval = |roles: &[MongoRoleRef], privileges: &[MongoPrivilege]| {
            evaluate_mongo(&p, "entra", "a", "t", roles, privileges, DeletionPolicy::Delete)
        };
        for r in ["userAdmin", "dbOwner"] {
            assert!(eval(&[role(r, "admin")], &[])[0].contains("never grantable"), "{r}@admin");
            assert!(eval(&[role(r, "orders")], &[]).is_empty(), "{r}@orders is opted out");
        }
        for a in ["grantRole", "createUser"] {
            assert!(eval(&[], &[privilege("admin", "", &[a])])[0].contains("never grantable"), "{a} on admin");
            assert!(eval(&[], &[privilege("orders", "", &[a])]).is_empty(), "{a} on orders is opted out");
        }
    }

    #[test]
    fn cluster_monitor_needs_an_opt_in() {
        let p = MongoPolicy { allowed_databases: Some(vec!["admin".into()]), ..mongo_policy(&["*"]) };
        let eval = |p: &MongoPolicy| {
            evaluate_mongo(p, "entra", "a", "t", &[role("clusterMonitor", "admin")], &[], DeletionPolicy::Delete)
        };
        assert!(eval(&p)[0].contains("allowEscalation"));
        let p = MongoPolicy { allow_escalation: vec!["clusterMonitor".into()], ..p };
        assert!(eval(&p).is_empty());
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
        let d = mongo(&p, "team-a", "prod", &[role("read", "orders")], &[privilege("orders", "x", &["find"])]);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn wrong_namespace_is_denied_without_revealing_more() {
        let p = mongo_policy(&["team-*"]);
        let d = mongo(&p, "intruder", "prod", &[role("root", "admin")], &[]);
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("namespace intruder may not bind"));
    }

    #[test]
    fn every_escalation_role_and_action_is_denied_by_default() {
        let p = MongoPolicy { allowed_databases: Some(vec!["*".into()]), ..mongo_policy(&["*"]) };
        for r in MONGO_ESCALATION_ROLES {
            let d = mongo(&p, "a", "t", &[role(r, "app")], &[]);
            assert!(d.iter().any(|m| m.contains("escalate")), "{r}: {d:?}");
        }
        for a in MONGO_ESCALATION_ACTIONS {
            let d = mongo(&p, "a", "t", &[], &[privilege("app", "c", &[a])]);
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
        assert!(mongo(&p, "a", "t", &[role("dbOwner", "app")], &[]).is_empty());
        assert!(!mongo(&p, "a", "t", &[role("root", "admin")], &[]).is_empty());
    }

    #[test]
    fn allow_lists_restrict_roles_actions_and_databases() {
        let p = MongoPolicy {
            allowed_roles: Some(vec![role("read*", "*")]),
            allowed_actions: Some(vec!["find".into()]),
            allowed_databases: Some(vec!["orders".into()]),
            ..mongo_policy(&["*"])
        };
        assert!(mongo(&p, "a", "t", &[role("readWrite", "orders")], &[]).is_empty());
        assert_eq!(mongo(&p, "a", "t", &[role("dbAdmin", "orders")], &[]).len(), 1);
        assert_eq!(mongo(&p, "a", "t", &[role("read", "billing")], &[]).len(), 1);
        assert_eq!(mongo(&p, "a", "t", &[], &[privilege("orders", "c", &["insert"])]).len(), 1);
    }

    #[test]
    fn reserved_databases_cluster_and_system_collections_need_opt_in() {
        let p = mongo_policy(&["*"]);
        assert!(!mongo(&p, "a", "t", &[role("read", "admin")], &[]).is_empty());
        assert!(!mongo(&p, "a", "t", &[], &[privilege("app", "system.users", &["find"])]).is_empty());
        assert!(!mongo(&p, "a", "t", &[], &[privilege("", "", &["find"])]).is_empty());
        let cluster = MongoPrivilege {
            resource: MongoResource { db: None, collection: None, cluster: Some(true) },
            actions: vec!["serverStatus".into()],
        };
        assert!(!mongo(&p, "a", "t", &[], std::slice::from_ref(&cluster)).is_empty());
        let p = MongoPolicy { allow_cluster_resource: true, ..p };
        assert!(mongo(&p, "a", "t", &[], &[cluster]).is_empty());
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

    #[test]
    fn wide_open_allows_an_ordinary_grant() {
        // The baseline for the tests below: each denial there comes from
        // the rule under test, not from a list this policy forgot.
        let d = mongo(&wide_open(), "a", "t", &[role("readWrite", "orders")], &[privilege("orders", "c", &["find"])]);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn the_ledger_database_is_never_grantable_as_a_role() {
        for db in [LEDGER_DB, "DBGRANT", "dbGrant"] {
            let d = mongo(&wide_open(), "a", "t", &[role("read", db)], &[]);
            assert_eq!(d.len(), 1, "{db}: {d:?}");
            assert!(d[0].contains("ownership ledger") && d[0].contains(&format!("read@{db}")), "{d:?}");
        }
    }

    #[test]
    fn the_ledger_database_is_never_grantable_as_a_privilege() {
        for (db, coll) in [(LEDGER_DB, "ownership"), (LEDGER_DB, ""), ("DBGRANT", "ownership")] {
            let d = mongo(&wide_open(), "a", "t", &[], &[privilege(db, coll, &["find"])]);
            assert_eq!(d.len(), 1, "{db}.{coll}: {d:?}");
            assert!(d[0].contains("ownership ledger"), "{d:?}");
        }
    }

    #[test]
    fn privileges_on_every_database_are_never_grantable() {
        // `*` in allowedDatabases used to open `db: ""`; the ledger is in it.
        for coll in ["", "ownership", "orders"] {
            let d = mongo(&wide_open(), "a", "t", &[], &[privilege("", coll, &["find"])]);
            assert_eq!(d.len(), 1, "{coll}: {d:?}");
            assert!(d[0].contains("every database") && d[0].contains("ledger"), "{d:?}");
        }
        // A resource with neither db nor cluster (only a pre-schema object
        // could have one) counts as every database.
        let odd = MongoPrivilege {
            resource: MongoResource { db: None, collection: Some("c".into()), cluster: None },
            actions: vec!["find".into()],
        };
        assert!(mongo(&wide_open(), "a", "t", &[], &[odd])[0].contains("every database"));
    }

    #[test]
    fn roles_spanning_every_database_have_no_opt_out() {
        let p = wide_open();
        for r in MONGO_EVERY_DATABASE_ROLES {
            assert!(p.allow_escalation.iter().any(|e| e == r));
            for db in ["admin", "orders"] {
                let d = mongo(&p, "a", "t", &[role(r, db)], &[]);
                assert_eq!(d.len(), 1, "{r}@{db}: {d:?}");
                assert!(d[0].contains("every database") && d[0].contains(&format!("{r}@{db}")), "{d:?}");
            }
        }
        for must in ["readAnyDatabase", "readWriteAnyDatabase", "root", "backup", "clusterAdmin", "enableSharding"] {
            assert!(MONGO_EVERY_DATABASE_ROLES.contains(&must), "{must}");
        }
        for r in MONGO_ESCALATION_ROLES {
            assert!(!MONGO_EVERY_DATABASE_ROLES.contains(r), "{r} is in both lists");
        }
    }

    #[test]
    fn reserved_databases_match_only_by_literal_name() {
        for pattern in ["*", "a*", "adm*", "l*", "c*", "conf*"] {
            let p = MongoPolicy { allowed_databases: Some(vec![pattern.into()]), ..mongo_policy(&["*"]) };
            for db in MONGO_RESERVED_DATABASES {
                assert!(!mongo(&p, "a", "t", &[role("read", db)], &[]).is_empty(), "{pattern} opened {db}");
                let d = mongo(&p, "a", "t", &[], &[privilege(db, "c", &["find"])]);
                assert!(!d.is_empty(), "{pattern} opened {db} to a privilege");
            }
            // Look-alike spellings are reserved too.
            assert!(!mongo(&p, "a", "t", &[role("read", "Admin")], &[]).is_empty(), "{pattern} opened Admin");
        }
        let p = MongoPolicy {
            allowed_databases: Some(vec!["admin".into(), "local".into(), "config".into()]),
            ..mongo_policy(&["*"])
        };
        for db in MONGO_RESERVED_DATABASES {
            assert!(mongo(&p, "a", "t", &[role("read", db)], &[]).is_empty(), "literal {db}");
        }
        assert!(mongo_database_allowed(Some(&["*".to_string()]), "orders"));
        assert!(mongo_database_allowed(None, "orders"));
        assert!(!mongo_database_allowed(None, "admin"));
    }

    #[test]
    fn roles_dbgrant_manages_for_subjects_are_never_grantable() {
        let victim = format!("{PREFIX}/0b0b0b0b-0000-0000-0000-000000000001");
        for db in ["admin", "orders", "$external"] {
            let d = mongo(&wide_open(), "a", "t", &[role(&victim, db)], &[]);
            assert_eq!(d.len(), 1, "{db}: {d:?}");
            assert!(d[0].contains("dbgrant manages") && d[0].contains(&victim), "{d:?}");
        }
        // Another prefix, or the prefix without its slash, is just a name.
        assert!(mongo(&wide_open(), "a", "t", &[role("other/x", "admin")], &[]).is_empty());
        assert!(mongo(&wide_open(), "a", "t", &[role(&format!("{PREFIX}-x"), "admin")], &[]).is_empty());
        // The prefix is the target's, not a constant.
        let d = evaluate_mongo(&wide_open(), "h", "a", "t", &[role("h/x", "admin")], &[], DeletionPolicy::Delete);
        assert!(!d.is_empty());
    }

    #[test]
    fn namespace_denials_do_not_reveal_the_allowed_namespaces() {
        let p = mongo_policy(&["secret-team", "payments-*"]);
        let d = mongo(&p, "intruder", "prod", &[role("read", "orders")], &[]);
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("intruder") && d[0].contains("prod"), "{d:?}");
        assert!(!d[0].contains("secret-team") && !d[0].contains("payments"), "{d:?}");
        let p = CosmosPolicy { allowed_namespaces: vec!["secret-team".into()], ..Default::default() };
        let spec = cosmos_spec(BuiltInCosmosRole::DataReader, vec![CosmosScope::default()]);
        let d = evaluate_cosmos(&p, "intruder", "acct", &spec, &actions(BuiltInCosmosRole::DataReader));
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("intruder") && !d[0].contains("secret-team"), "{d:?}");
    }

    #[test]
    fn retain_is_the_targets_decision() {
        let p = mongo_policy(&["*"]);
        let read = [role("read", "orders")];
        assert!(evaluate_mongo(&p, PREFIX, "a", "t", &read, &[], DeletionPolicy::Delete).is_empty());
        let d = evaluate_mongo(&p, PREFIX, "a", "t", &read, &[], DeletionPolicy::Retain);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("policy.allowRetain") && d[0].contains("platform team"), "{d:?}");
        let p = MongoPolicy { allow_retain: true, ..p };
        assert!(evaluate_mongo(&p, PREFIX, "a", "t", &read, &[], DeletionPolicy::Retain).is_empty());

        let db = CosmosScope { database: Some("orders".into()), container: None };
        let mut spec = cosmos_spec(BuiltInCosmosRole::DataReader, vec![db]);
        spec.deletion_policy = DeletionPolicy::Retain;
        let ra = actions(BuiltInCosmosRole::DataReader);
        let p = CosmosPolicy { allowed_namespaces: vec!["*".into()], ..Default::default() };
        let d = evaluate_cosmos(&p, "a", "t", &spec, &ra);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("policy.allowRetain"), "{d:?}");
        let p = CosmosPolicy { allow_retain: true, ..p };
        assert!(evaluate_cosmos(&p, "a", "t", &spec, &ra).is_empty());
    }

    #[test]
    fn retains_only_where_allowed_and_never_once_expired() {
        use DeletionPolicy::{Delete, Retain};
        assert!(retains(Retain, true, false));
        assert!(!retains(Retain, true, true), "expiry always revokes");
        assert!(!retains(Retain, false, false), "the target must allow it");
        assert!(!retains(Retain, false, true));
        for (allow, expired) in [(true, false), (true, true), (false, false), (false, true)] {
            assert!(!retains(Delete, allow, expired));
        }
    }

    #[test]
    fn cosmos_names_that_are_path_segments_or_forbidden_are_denied() {
        let p = CosmosPolicy { allowed_namespaces: vec!["*".into()], allowed_databases: None, ..Default::default() };
        let ra = actions(BuiltInCosmosRole::DataReader);
        for bad in [".", "..", "a/b", "a\\b", "a?b", "a#b", "orders ", ""] {
            for scope in [
                CosmosScope { database: Some(bad.into()), container: None },
                CosmosScope { database: Some("orders".into()), container: Some(bad.into()) },
            ] {
                let spec = cosmos_spec(BuiltInCosmosRole::DataReader, vec![scope.clone()]);
                let d = evaluate_cosmos(&p, "a", "t", &spec, &ra);
                assert_eq!(d.len(), 1, "{scope:?}: {d:?}");
                assert!(d[0].contains(&format!("{bad:?}")), "{d:?}");
            }
            assert!(cosmos_name_problem(bad).is_some(), "{bad:?}");
        }
        // `*` in allowedDatabases does not make `..` a database.
        let p = CosmosPolicy { allowed_databases: Some(vec!["*".into()]), ..p };
        let dots = cosmos_spec(
            BuiltInCosmosRole::DataReader,
            vec![CosmosScope { database: Some("..".into()), container: None }],
        );
        assert!(!evaluate_cosmos(&p, "a", "t", &dots, &ra).is_empty());
        for good in ["orders", "...", ".orders", "orders.eu", "a b"] {
            assert_eq!(cosmos_name_problem(good), None, "{good:?}");
        }
    }
}
