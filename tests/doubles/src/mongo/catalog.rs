//! Fixed server vocabulary: privilege action names and built-in roles
//! with their privileges.
//!
//! Actions are listed in the server's internal order (MongoDB 8.0's
//! `ActionType` enum), which is mostly — not entirely — alphabetical.
//! `rolesInfo` returns actions in this order, so a client that compares
//! actions as ordered lists instead of sets sees spurious differences, just
//! as it would against a real server.

use super::state::{Privilege, Resource, normalize_privileges};

/// Every action name a privilege may grant.
pub const ACTIONS: &[&str] = &[
    "addShard",
    "advanceClusterTime",
    "allCollectionStats",
    "analyze",
    "analyzeShardKey",
    "anyAction",
    "appendOplogNote",
    "applicationMessage",
    "auditConfigure",
    "auditLogRotate",
    "authCheck",
    "authenticate",
    "authSchemaUpgrade",
    "bypassDocumentValidation",
    "bypassWriteBlockingMode",
    "changeCustomData",
    "changePassword",
    "changeOwnPassword",
    "changeOwnCustomData",
    "changeStream",
    "checkFreeMonitoringStatus",
    "checkMetadataConsistency",
    "cleanupOrphaned",
    "clearJumboFlag",
    "cleanupStructuredEncryptionData",
    "closeAllDatabases",
    "collMod",
    "collStats",
    "compact",
    "compactStructuredEncryptionData",
    "configureQueryAnalyzer",
    "connPoolStats",
    "connPoolSync",
    "convertToCapped",
    "cpuProfiler",
    "createCollection",
    "createDatabase",
    "createIndex",
    "createRole",
    "createSearchIndexes",
    "createUser",
    "dbCheck",
    "dbHash",
    "dbStats",
    "dropAllRolesFromDatabase",
    "dropAllUsersFromDatabase",
    "dropCollection",
    "dropConnections",
    "dropDatabase",
    "dropIndex",
    "dropRole",
    "dropSearchIndex",
    "dropUser",
    "emptycapped",
    "enableProfiler",
    "enableSharding",
    "exportCollection",
    "find",
    "flushRouterConfig",
    "forceUUID",
    "fsync",
    "fsyncUnlock",
    "getClusterParameter",
    "getDatabaseVersion",
    "getDefaultRWConcern",
    "getCmdLineOpts",
    "getLog",
    "getParameter",
    "getShardMap",
    "getShardVersion",
    "grantRole",
    "grantPrivilegesToRole",
    "grantRolesToRole",
    "grantRolesToUser",
    "hostInfo",
    "impersonate",
    "importCollection",
    "indexStats",
    "inprog",
    "insert",
    "internal",
    "invalidateUserCache",
    "issueDirectShardOperations",
    "killAnyCursor",
    "killAnySession",
    "killCursors",
    "killop",
    "listCachedAndActiveUsers",
    "listCollections",
    "listCursors",
    "listDatabases",
    "listIndexes",
    "listSampledQueries",
    "listSearchIndexes",
    "listSessions",
    "listShards",
    "logRotate",
    "updateSearchIndex",
    "moveChunk",
    "moveCollection",
    "netstat",
    "oidcListKeys",
    "oidcRefreshKeys",
    "oidReset",
    "operationMetrics",
    "planCacheIndexFilter",
    "planCacheRead",
    "planCacheWrite",
    "querySettings",
    "queryStatsRead",
    "queryStatsReadTransformed",
    "refineCollectionShardKey",
    "reIndex",
    "remove",
    "removeShard",
    "renameCollection",
    "renameCollectionSameDB",
    "repairDatabase",
    "replSetConfigure",
    "replSetGetConfig",
    "replSetGetStatus",
    "replSetHeartbeat",
    "replSetReconfig",
    "replSetResizeOplog",
    "replSetStateChange",
    "reshardCollection",
    "resync",
    "revokeRole",
    "revokePrivilegesFromRole",
    "revokeRolesFromRole",
    "revokeRolesFromUser",
    "rotateCertificates",
    "runAsLessPrivilegedUser",
    "runTenantMigration",
    "serverStatus",
    "setAuthenticationRestriction",
    "setClusterParameter",
    "setDefaultRWConcern",
    "setFeatureCompatibilityVersion",
    "setFreeMonitoring",
    "setParameter",
    "setUserWriteBlockMode",
    "shardCollection",
    "shardedDataDistribution",
    "shardingState",
    "shutdown",
    "splitChunk",
    "splitVector",
    "storageDetails",
    "top",
    "touch",
    "trafficRecord",
    "transitionFromDedicatedConfigServer",
    "transitionToDedicatedConfigServer",
    "unlock",
    "useTenant",
    "useUUID",
    "update",
    "updateRole",
    "updateUser",
    "validate",
    "viewRole",
    "viewUser",
    "applyOps",
    "setChangeStreamState",
    "getChangeStreamState",
];

/// The position of `action` in the server's order, or `None` if the server
/// does not know it.
pub fn action_rank(action: &str) -> Option<usize> {
    ACTIONS.iter().position(|a| *a == action)
}

/// Built-in roles that exist in every database (except `$external`).
pub const DATABASE_BUILTIN_ROLES: &[&str] = &["read", "readWrite", "dbAdmin", "dbOwner", "userAdmin"];

/// Built-in roles that exist only in `admin`.
pub const ADMIN_BUILTIN_ROLES: &[&str] = &[
    "readAnyDatabase",
    "readWriteAnyDatabase",
    "userAdminAnyDatabase",
    "dbAdminAnyDatabase",
    "clusterAdmin",
    "clusterManager",
    "clusterMonitor",
    "hostManager",
    "backup",
    "restore",
    "root",
    "enableSharding",
    "directShardOperations",
    "searchCoordinator",
    "__queryableBackup",
    "__system",
];

/// Whether `role` in `db` names a built-in role.
pub fn is_builtin_role(role: &str, db: &str) -> bool {
    if db == "$external" {
        return false;
    }
    DATABASE_BUILTIN_ROLES.contains(&role) || (db == "admin" && ADMIN_BUILTIN_ROLES.contains(&role))
}

// =================================================== built-in role privileges

/// What a built-in role's privilege applies to, as the server's
/// `builtin_roles.yml` writes it (`matchType`).
#[derive(Clone, Copy)]
enum On {
    /// `database`: the role's own database, `{db: <role db>, collection: ""}`.
    OwnDatabase,
    /// `database` with `db`: `{db, collection: ""}`.
    Database(&'static str),
    /// `exact_namespace` without `db`: a collection of the role's database.
    OwnCollection(&'static str),
    /// `exact_namespace`: `{db, collection}`.
    Namespace(&'static str, &'static str),
    /// `collection`: that collection in every database, `{db: "", collection}`.
    AnyDatabaseCollection(&'static str),
    /// `any_normal`: `{db: "", collection: ""}`.
    AnyNormal,
    /// `cluster`: `{cluster: true}`.
    Cluster,
    /// `any`: `{anyResource: true}`.
    Any,
}

/// One privilege of a built-in role: `actions` (several lists, joined) on `on`.
struct Grant {
    on: On,
    actions: &'static [&'static [&'static str]],
}

const fn grant(on: On, actions: &'static [&'static [&'static str]]) -> Grant {
    Grant { on, actions }
}

/// A built-in role: its own privileges and the built-in roles whose
/// privileges it includes (`roles:` in the yml: `(role, db)`, `None` = the
/// role's own database). The server flattens these: `rolesInfo` and
/// `connectionStatus` show a built-in role with no `roles` of its own.
struct Builtin {
    grants: Vec<Grant>,
    includes: &'static [(&'static str, Option<&'static str>)],
}

// Action groups, named as in `builtin_roles.yml` (MongoDB 8.0).
const READ: &[&str] = &[
    "changeStream",
    "collStats",
    "dbHash",
    "dbStats",
    "find",
    "killCursors",
    "listCollections",
    "listIndexes",
    "listSearchIndexes",
    "planCacheRead",
];
const READ_WRITE_EXTRA: &[&str] = &[
    "cleanupStructuredEncryptionData",
    "compactStructuredEncryptionData",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "createSearchIndexes",
    "dropCollection",
    "dropIndex",
    "dropSearchIndex",
    "insert",
    "remove",
    "renameCollectionSameDB",
    "update",
    "updateSearchIndex",
];
const USER_ADMIN: &[&str] = &[
    "changeCustomData",
    "changePassword",
    "createUser",
    "createRole",
    "dropUser",
    "dropRole",
    "grantRole",
    "revokeRole",
    "setAuthenticationRestriction",
    "viewUser",
    "viewRole",
];
const DB_ADMIN: &[&str] = &[
    "analyze",
    "bypassDocumentValidation",
    "collMod",
    "collStats",
    "compact",
    "convertToCapped",
    "createCollection",
    "dbStats",
    "dropCollection",
    "dropDatabase",
    "dropIndex",
    "dropSearchIndex",
    "createIndex",
    "createSearchIndexes",
    "enableProfiler",
    "listCollections",
    "listIndexes",
    "listSearchIndexes",
    "updateSearchIndex",
    "planCacheIndexFilter",
    "planCacheRead",
    "planCacheWrite",
    "reIndex",
    "renameCollectionSameDB",
    "storageDetails",
    "validate",
    "configureQueryAnalyzer",
];
const PROFILE_EXTRA: &[&str] = &["convertToCapped", "createCollection", "dropCollection"];
const INDEX_ADMIN: &[&str] = &["createIndex", "createSearchIndexes", "dropIndex", "dropSearchIndex"];
const CLUSTER_MONITOR_CLUSTER: &[&str] = &[
    "connPoolStats",
    "getCmdLineOpts",
    "getDefaultRWConcern",
    "getLog",
    "getParameter",
    "getShardMap",
    "hostInfo",
    "listDatabases",
    "listSampledQueries",
    "listSessions",
    "listShards",
    "netstat",
    "operationMetrics",
    "replSetGetConfig",
    "replSetGetStatus",
    "serverStatus",
    "top",
    "useUUID",
    "inprog",
    "shardingState",
    "allCollectionStats",
    "shardedDataDistribution",
];
const CLUSTER_MONITOR_DB: &[&str] = &["collStats", "dbStats", "getDatabaseVersion", "getShardVersion", "indexStats"];
const HOST_MANAGER_CLUSTER: &[&str] = &[
    "applicationMessage",
    "auditConfigure",
    "connPoolSync",
    "dropConnections",
    "logRotate",
    "oidReset",
    "setParameter",
    "shutdown",
    "touch",
    "unlock",
    "flushRouterConfig",
    "fsync",
    "invalidateUserCache",
    "killAnyCursor",
    "killAnySession",
    "killop",
    "replSetResizeOplog",
    "resync",
    "trafficRecord",
    "rotateCertificates",
    "oidcListKeys",
    "oidcRefreshKeys",
];
const CLUSTER_MANAGER_CLUSTER: &[&str] = &[
    "appendOplogNote",
    "applicationMessage",
    "replSetConfigure",
    "replSetGetConfig",
    "replSetGetStatus",
    "replSetStateChange",
    "resync",
    "addShard",
    "removeShard",
    "listSessions",
    "listShards",
    "flushRouterConfig",
    "cleanupOrphaned",
    "getDefaultRWConcern",
    "runTenantMigration",
    "setDefaultRWConcern",
    "setFeatureCompatibilityVersion",
    "setClusterParameter",
    "getClusterParameter",
    "setChangeStreamState",
    "getChangeStreamState",
    "querySettings",
    "queryStatsRead",
    "queryStatsReadTransformed",
    "checkMetadataConsistency",
    "transitionFromDedicatedConfigServer",
    "transitionToDedicatedConfigServer",
];
const CLUSTER_MANAGER_DB: &[&str] = &[
    "analyzeShardKey",
    "configureQueryAnalyzer",
    "clearJumboFlag",
    "splitChunk",
    "moveChunk",
    "moveCollection",
    "enableSharding",
    "splitVector",
    "refineCollectionShardKey",
    "reshardCollection",
];
const WRITE: &[&str] = &["insert", "update", "remove"];
const RESTORE_WRITE: &[&str] = &[
    "bypassDocumentValidation",
    "collMod",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "createSearchIndexes",
    "dropCollection",
    "insert",
    "updateSearchIndex",
];
const FIND: &[&str] = &["find"];

/// The privileges of the built-in roles, after MongoDB 8.0's
/// `src/mongo/db/auth/builtin_roles.yml` (the server's source of truth; the
/// reference page <https://www.mongodb.com/docs/manual/reference/built-in-roles/>
/// describes the same in prose). Privileges on `system.buckets` resources
/// (time series) are left out: the double does not model them.
///
/// Worth knowing, and easy to get wrong:
/// - `userAdmin` grants its actions on its own database only; on `admin`
///   that is not "every database" (`grantRole` on `orders`, `revokeRole`
///   on all databases and `createUser` on `$external` are all missing).
/// - The *AnyDatabase roles hold their actions on `{db: "", collection:
///   ""}`, which matches every database except `local` and `config` (see
///   `authz`); `userAdminAnyDatabase` adds `local` and `config` by name
///   (the reference page still says "all databases except local and
///   config").
/// - `root` is not `anyAction` on `anyResource`: it is the union of
///   `clusterAdmin`, `userAdminAnyDatabase`, `dbAdminAnyDatabase`,
///   `readWriteAnyDatabase`, `backup`, `restore` and
///   `directShardOperations`, plus `validate` on any resource.
fn builtin(role: &str) -> Option<Builtin> {
    use On::*;
    let b = |grants, includes| Some(Builtin { grants, includes });
    match role {
        "read" => b(vec![grant(OwnDatabase, &[READ]), grant(OwnCollection("system.js"), &[READ])], &[]),
        "readWrite" => b(
            vec![
                grant(OwnDatabase, &[READ, READ_WRITE_EXTRA]),
                grant(OwnCollection("system.js"), &[READ, READ_WRITE_EXTRA]),
            ],
            &[],
        ),
        "userAdmin" => b(vec![grant(OwnDatabase, &[USER_ADMIN])], &[]),
        "dbAdmin" => b(
            vec![grant(OwnDatabase, &[DB_ADMIN]), grant(OwnCollection("system.profile"), &[READ, PROFILE_EXTRA])],
            &[],
        ),
        "dbOwner" => b(vec![], &[("readWrite", None), ("dbAdmin", None), ("userAdmin", None)]),
        "enableSharding" => b(
            vec![grant(
                AnyNormal,
                &[&[
                    "analyzeShardKey",
                    "enableSharding",
                    "moveCollection",
                    "refineCollectionShardKey",
                    "reshardCollection",
                ]],
            )],
            &[],
        ),
        "readAnyDatabase" => b(
            vec![
                grant(AnyNormal, &[READ]),
                grant(Cluster, &[&["listDatabases"]]),
                grant(AnyDatabaseCollection("system.js"), &[READ]),
            ],
            &[],
        ),
        "readWriteAnyDatabase" => b(
            vec![
                grant(AnyNormal, &[READ, READ_WRITE_EXTRA]),
                grant(AnyDatabaseCollection("system.js"), &[READ, READ_WRITE_EXTRA]),
            ],
            &[("readAnyDatabase", Some("admin"))],
        ),
        "userAdminAnyDatabase" => b(
            vec![
                grant(AnyNormal, &[USER_ADMIN, &["listCachedAndActiveUsers"]]),
                grant(Database("local"), &[USER_ADMIN]),
                grant(Database("config"), &[USER_ADMIN]),
                grant(Cluster, &[&["listDatabases", "authSchemaUpgrade", "invalidateUserCache", "viewUser"]]),
                grant(Namespace("admin", "system.users"), &[READ, INDEX_ADMIN]),
                grant(Namespace("admin", "system.roles"), &[READ, INDEX_ADMIN]),
                grant(AnyDatabaseCollection("system.users"), &[READ]),
                grant(Namespace("admin", "system.version"), &[READ]),
                grant(Namespace("admin", "system.backup_users"), &[READ]),
            ],
            &[],
        ),
        "dbAdminAnyDatabase" => b(
            vec![
                grant(Cluster, &[&["listDatabases", "applyOps"]]),
                grant(AnyNormal, &[DB_ADMIN]),
                grant(AnyDatabaseCollection("system.profile"), &[READ, PROFILE_EXTRA]),
            ],
            &[],
        ),
        "clusterMonitor" => b(
            vec![
                grant(Cluster, &[CLUSTER_MONITOR_CLUSTER]),
                grant(AnyNormal, &[CLUSTER_MONITOR_DB]),
                grant(Database("config"), &[CLUSTER_MONITOR_DB]),
                grant(Namespace("config", "system.sessions"), &[CLUSTER_MONITOR_DB]),
                grant(Database("local"), &[CLUSTER_MONITOR_DB]),
                grant(Namespace("local", "system.replset"), &[FIND]),
                grant(Namespace("local", "replset.election"), &[FIND]),
                grant(Namespace("local", "replset.minvalid"), &[FIND]),
                grant(AnyDatabaseCollection("system.profile"), &[FIND]),
            ],
            &[("read", Some("config")), ("read", Some("local"))],
        ),
        "hostManager" => b(vec![grant(Cluster, &[HOST_MANAGER_CLUSTER]), grant(AnyNormal, &[&["killCursors"]])], &[]),
        "clusterManager" => b(
            vec![
                grant(Cluster, &[CLUSTER_MANAGER_CLUSTER]),
                grant(AnyNormal, &[CLUSTER_MANAGER_DB]),
                grant(Database("config"), &[CLUSTER_MANAGER_DB, WRITE]),
                grant(Database("local"), &[CLUSTER_MANAGER_DB, WRITE]),
                grant(Namespace("local", "system.replset"), &[READ]),
                grant(Any, &[&["dbCheck"]]),
                grant(Namespace("local", "system.healthlog"), &[READ]),
                grant(Namespace("local", "replset.election"), &[WRITE]),
                grant(Namespace("local", "replset.minvalid"), &[WRITE]),
            ],
            &[("read", Some("config"))],
        ),
        "clusterAdmin" => b(
            vec![grant(AnyNormal, &[&["dropDatabase"]]), grant(Any, &[&["importCollection", "exportCollection"]])],
            &[("clusterMonitor", Some("admin")), ("hostManager", Some("admin")), ("clusterManager", Some("admin"))],
        ),
        "__queryableBackup" => b(
            vec![
                grant(Any, &[&["collStats", "listCollections", "listIndexes", "listSearchIndexes"]]),
                grant(AnyNormal, &[FIND]),
                grant(Cluster, &[&["getParameter", "listDatabases", "useUUID"]]),
                grant(Database("config"), &[FIND]),
                grant(Database("local"), &[FIND]),
                grant(Namespace("local", "replset.election"), &[FIND]),
                grant(Namespace("local", "replset.minvalid"), &[FIND]),
                grant(AnyDatabaseCollection("system.js"), &[FIND]),
                grant(AnyDatabaseCollection("system.users"), &[FIND]),
                grant(AnyDatabaseCollection("system.profile"), &[FIND]),
                grant(Namespace("admin", "system.backup_users"), &[FIND]),
                grant(Namespace("admin", "system.roles"), &[FIND]),
                grant(Namespace("admin", "system.version"), &[FIND]),
                grant(Namespace("config", "settings"), &[FIND]),
            ],
            &[],
        ),
        "backup" => b(
            vec![
                grant(Cluster, &[&["appendOplogNote", "serverStatus", "setUserWriteBlockMode"]]),
                grant(Namespace("config", "settings"), &[&["insert", "update"]]),
            ],
            &[("__queryableBackup", Some("admin"))],
        ),
        "restore" => b(
            vec![
                grant(
                    Cluster,
                    &[&[
                        "getParameter",
                        "forceUUID",
                        "useUUID",
                        "bypassWriteBlockingMode",
                        "setUserWriteBlockMode",
                        "applyOps",
                    ]],
                ),
                grant(Database("local"), &[RESTORE_WRITE]),
                grant(Database("config"), &[RESTORE_WRITE]),
                grant(Namespace("local", "system.replset"), &[RESTORE_WRITE]),
                grant(Namespace("local", "replset.election"), &[RESTORE_WRITE]),
                grant(Namespace("local", "replset.minvalid"), &[RESTORE_WRITE]),
                grant(Any, &[&["listCollections"]]),
                grant(AnyNormal, &[RESTORE_WRITE, USER_ADMIN]),
                grant(AnyDatabaseCollection("system.js"), &[RESTORE_WRITE]),
                grant(Namespace("admin", "tempusers"), &[FIND]),
                grant(Namespace("admin", "temproles"), &[FIND]),
                grant(Namespace("admin", "system.backup_users"), &[RESTORE_WRITE]),
                grant(Namespace("admin", "system.version"), &[RESTORE_WRITE, FIND]),
                grant(AnyDatabaseCollection("system.users"), &[RESTORE_WRITE, &["find", "update", "remove"]]),
                grant(Namespace("admin", "system.roles"), &[&["createIndex"]]),
            ],
            &[],
        ),
        "directShardOperations" => b(vec![grant(Cluster, &[&["issueDirectShardOperations"]])], &[]),
        "root" => b(
            vec![
                grant(Any, &[&["validate"]]),
                grant(Cluster, &[&["useTenant"]]),
                grant(Namespace("config", "system.preimages"), &[&["find", "remove"]]),
                grant(Namespace("config", "system.change_collection"), &[&["find", "insert", "remove", "update"]]),
            ],
            &[
                ("clusterAdmin", Some("admin")),
                ("userAdminAnyDatabase", Some("admin")),
                ("dbAdminAnyDatabase", Some("admin")),
                ("readWriteAnyDatabase", Some("admin")),
                ("backup", Some("admin")),
                ("restore", Some("admin")),
                ("directShardOperations", Some("admin")),
            ],
        ),
        // The server special-cases it: any action on any resource.
        "__system" => b(vec![grant(Any, &[&["anyAction"]])], &[]),
        // searchCoordinator: not modelled (no privileges).
        _ => None,
    }
}

fn resource(on: On, role_db: &str) -> Resource {
    match on {
        On::OwnDatabase => Resource::database(role_db),
        On::Database(db) => Resource::database(db),
        On::OwnCollection(c) => Resource::collection(role_db, c),
        On::Namespace(db, c) => Resource::collection(db, c),
        On::AnyDatabaseCollection(c) => Resource::collection("", c),
        On::AnyNormal => Resource::database(""),
        On::Cluster => Resource::Cluster,
        On::Any => Resource::AnyResource,
    }
}

fn collect_builtin(role: &str, db: &str, out: &mut Vec<Privilege>) {
    let Some(b) = builtin(role) else { return };
    for g in &b.grants {
        out.push(Privilege::new(resource(g.on, db), g.actions.iter().flat_map(|a| a.iter().copied())));
    }
    for (included, included_db) in b.includes {
        collect_builtin(included, included_db.unwrap_or(db), out);
    }
}

/// Every privilege of built-in role `role` in `db` (its own and those of
/// the built-in roles it includes), normalised; empty if `role@db` is not a
/// built-in role.
pub(crate) fn builtin_privileges(role: &str, db: &str) -> Vec<Privilege> {
    if !is_builtin_role(role, db) {
        return Vec::new();
    }
    let mut out = Vec::new();
    collect_builtin(role, db, &mut out);
    normalize_privileges(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_unique() {
        let mut sorted = ACTIONS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ACTIONS.len());
    }

    #[test]
    fn builtins_depend_on_database() {
        assert!(is_builtin_role("read", "sales"));
        assert!(is_builtin_role("root", "admin"));
        assert!(!is_builtin_role("root", "sales"));
        assert!(!is_builtin_role("read", "$external"));
    }

    #[test]
    fn every_builtin_action_is_known_to_the_server() {
        for role in DATABASE_BUILTIN_ROLES.iter().chain(ADMIN_BUILTIN_ROLES) {
            for p in builtin_privileges(role, "admin") {
                for a in &p.actions {
                    assert!(action_rank(a).is_some(), "{role}: {a}");
                }
            }
        }
    }

    #[test]
    fn builtin_privileges_follow_the_server() {
        let read = builtin_privileges("read", "orders");
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].resource, Resource::database("orders"));
        assert!(read[0].actions.iter().any(|a| a == "find"));
        assert_eq!(read[1].resource, Resource::collection("orders", "system.js"));
        // userAdmin: its database only.
        let user_admin = builtin_privileges("userAdmin", "admin");
        assert_eq!(user_admin.len(), 1);
        assert_eq!(user_admin[0].resource, Resource::database("admin"));
        // The any-database roles: {db: "", collection: ""}.
        let uada = builtin_privileges("userAdminAnyDatabase", "admin");
        let any = uada.iter().find(|p| p.resource == Resource::database("")).unwrap();
        for a in ["createRole", "grantRole", "revokeRole", "createUser", "viewUser", "listCachedAndActiveUsers"] {
            assert!(any.actions.iter().any(|x| x == a), "{a}");
        }
        // dbOwner = readWrite + dbAdmin + userAdmin, flattened.
        let owner = builtin_privileges("dbOwner", "app");
        let app = owner.iter().find(|p| p.resource == Resource::database("app")).unwrap();
        for a in ["insert", "dropDatabase", "grantRole"] {
            assert!(app.actions.iter().any(|x| x == a), "{a}");
        }
        // root: a union of roles, not anyAction on anyResource.
        let root = builtin_privileges("root", "admin");
        let anything = root.iter().find(|p| p.resource == Resource::AnyResource).unwrap();
        assert!(!anything.actions.iter().any(|a| a == "anyAction"));
        let normal = root.iter().find(|p| p.resource == Resource::database("")).unwrap();
        for a in ["find", "insert", "grantRole", "revokeRole", "dropDatabase", "createUser"] {
            assert!(normal.actions.iter().any(|x| x == a), "{a}");
        }
        assert!(root.iter().any(|p| p.resource == Resource::Cluster));
        // Not a built-in role here: no privileges.
        assert!(builtin_privileges("root", "orders").is_empty());
        assert!(builtin_privileges("read", "$external").is_empty());
    }
}
