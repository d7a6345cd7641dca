//! Fixed server vocabulary: privilege action names and built-in roles.
//!
//! Actions are listed in the server's internal order (MongoDB 8.0's
//! `ActionType` enum), which is mostly — not entirely — alphabetical.
//! `rolesInfo` returns actions in this order, so a client that compares
//! actions as ordered lists instead of sets sees spurious differences, just
//! as it would against a real server.

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

/// Direct privileges of a built-in role, as `(collection, actions)` on the
/// role's own database. Only the roles dbgrant is likely to grant are
/// modelled; the others report no privileges.
pub fn builtin_privileges(role: &str) -> &'static [&'static str] {
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
    ];
    const READ_WRITE: &[&str] = &[
        "changeStream",
        "collStats",
        "convertToCapped",
        "createCollection",
        "createIndex",
        "dbHash",
        "dbStats",
        "dropCollection",
        "dropIndex",
        "find",
        "insert",
        "killCursors",
        "listCollections",
        "listIndexes",
        "listSearchIndexes",
        "remove",
        "renameCollectionSameDB",
        "update",
    ];
    match role {
        "read" => READ,
        "readWrite" => READ_WRITE,
        _ => &[],
    }
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
        for a in builtin_privileges("readWrite") {
            assert!(action_rank(a).is_some(), "{a}");
        }
    }
}
