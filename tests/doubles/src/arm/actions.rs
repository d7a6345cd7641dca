//! The Cosmos DB for NoSQL data-plane actions a SQL role definition may
//! list (the "data plane actions reference"), with the two documented
//! wildcards. `notDataActions` is not supported by Cosmos DB at all.

/// Every data action the double accepts in `permissions[].dataActions`.
pub const DATA_ACTIONS: &[&str] = &[
    "Microsoft.DocumentDB/databaseAccounts/readMetadata",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/*",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/executeQuery",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/readChangeFeed",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/executeStoredProcedure",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/manageConflicts",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/*",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/create",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/replace",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/upsert",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/delete",
];

/// Data actions of the built-in "Cosmos DB Built-in Data Reader".
pub const DATA_READER_ACTIONS: &[&str] = &[
    "Microsoft.DocumentDB/databaseAccounts/readMetadata",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/executeQuery",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/readChangeFeed",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read",
];

/// Data actions of the built-in "Cosmos DB Built-in Data Contributor".
pub const DATA_CONTRIBUTOR_ACTIONS: &[&str] = &[
    "Microsoft.DocumentDB/databaseAccounts/readMetadata",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/*",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/*",
];

/// Whether `action` is a known data action (ASCII case-insensitive, as
/// Azure compares them). Wildcards are only valid where listed.
pub fn is_valid_data_action(action: &str) -> bool {
    DATA_ACTIONS.iter().any(|known| known.eq_ignore_ascii_case(action))
}

/// Whether the granted action (possibly a wildcard) covers `action`.
pub fn action_covers(granted: &str, action: &str) -> bool {
    if granted.eq_ignore_ascii_case(action) {
        return true;
    }
    match granted.strip_suffix('*') {
        Some(prefix) => {
            action.len() > prefix.len()
                && action.is_char_boundary(prefix.len())
                && action[..prefix.len()].eq_ignore_ascii_case(prefix)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_actions_and_wildcards() {
        assert!(is_valid_data_action("Microsoft.DocumentDB/databaseAccounts/readMetadata"));
        assert!(is_valid_data_action("microsoft.documentdb/databaseaccounts/sqldatabases/containers/items/READ"));
        assert!(is_valid_data_action("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/*"));
        assert!(!is_valid_data_action("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/*"));
        assert!(!is_valid_data_action("Microsoft.DocumentDB/databaseAccounts/listKeys/action"));
        assert!(!is_valid_data_action("*"));
        for a in DATA_READER_ACTIONS.iter().chain(DATA_CONTRIBUTOR_ACTIONS) {
            assert!(is_valid_data_action(a), "{a}");
        }
    }

    #[test]
    fn wildcards_cover_their_subtree() {
        let items = "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/*";
        assert!(action_covers(items, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read"));
        assert!(!action_covers(items, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/executeQuery"));
        let containers = "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/*";
        assert!(action_covers(
            containers,
            "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/executeQuery"
        ));
    }
}
