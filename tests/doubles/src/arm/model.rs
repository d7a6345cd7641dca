//! The resources the double serves: database accounts, SQL role
//! definitions and SQL role assignments, and how they look on the wire.

use super::actions::{DATA_CONTRIBUTOR_ACTIONS, DATA_READER_ACTIONS};
use serde_json::{Value, json};

/// Name (GUID) of the built-in "Cosmos DB Built-in Data Reader".
pub const DATA_READER_ID: &str = "00000000-0000-0000-0000-000000000001";
/// Name (GUID) of the built-in "Cosmos DB Built-in Data Contributor".
pub const DATA_CONTRIBUTOR_ID: &str = "00000000-0000-0000-0000-000000000002";

/// ARM type of a database account.
pub const ACCOUNT_TYPE: &str = "Microsoft.DocumentDB/databaseAccounts";
/// ARM type of a SQL role definition.
pub const ROLE_DEFINITION_TYPE: &str = "Microsoft.DocumentDB/databaseAccounts/sqlRoleDefinitions";
/// ARM type of a SQL role assignment.
pub const ROLE_ASSIGNMENT_TYPE: &str = "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments";

/// Which database account: subscription, resource group, name. Compared
/// ASCII case-insensitively, as ARM does.
#[derive(Debug, Clone)]
pub struct AccountRef {
    /// Subscription id (a GUID).
    pub subscription_id: String,
    /// Resource group name.
    pub resource_group: String,
    /// Account name.
    pub name: String,
}

impl AccountRef {
    /// A reference from its three parts.
    pub fn new(subscription_id: impl Into<String>, resource_group: impl Into<String>, name: impl Into<String>) -> Self {
        Self { subscription_id: subscription_id.into(), resource_group: resource_group.into(), name: name.into() }
    }

    /// The fully qualified ARM id
    /// (`/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/databaseAccounts/{a}`),
    /// which is also the account-level role scope.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.DocumentDB/databaseAccounts/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }

    /// Id of the role definition `name` in this account.
    pub fn role_definition_id(&self, name: &str) -> String {
        format!("{}/sqlRoleDefinitions/{name}", self.id())
    }

    /// Id of the role assignment `name` in this account.
    pub fn role_assignment_id(&self, name: &str) -> String {
        format!("{}/sqlRoleAssignments/{name}", self.id())
    }

    /// Scope of database `db` in this account.
    pub fn database_scope(&self, db: &str) -> String {
        format!("{}/dbs/{db}", self.id())
    }

    /// Scope of container `coll` in database `db`.
    pub fn container_scope(&self, db: &str, coll: &str) -> String {
        format!("{}/dbs/{db}/colls/{coll}", self.id())
    }

    pub(crate) fn key(&self) -> AccountKey {
        AccountKey(
            self.subscription_id.to_ascii_lowercase(),
            self.resource_group.to_ascii_lowercase(),
            self.name.to_ascii_lowercase(),
        )
    }
}

impl PartialEq for AccountRef {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for AccountRef {}

impl std::fmt::Display for AccountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id())
    }
}

/// Case-folded account identity used as a map key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct AccountKey(pub String, pub String, pub String);

/// A SQL role definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDefinition {
    /// Resource name (a GUID).
    pub name: String,
    /// `properties.roleName`.
    pub role_name: String,
    /// Built-in (`BuiltInRole`) rather than `CustomRole`.
    pub built_in: bool,
    /// `properties.assignableScopes`, fully qualified.
    pub assignable_scopes: Vec<String>,
    /// `properties.permissions[*].dataActions`, flattened.
    pub data_actions: Vec<String>,
}

impl RoleDefinition {
    /// A custom definition.
    pub fn custom(
        name: impl Into<String>,
        role_name: impl Into<String>,
        assignable_scopes: Vec<String>,
        data_actions: Vec<String>,
    ) -> Self {
        Self { name: name.into(), role_name: role_name.into(), built_in: false, assignable_scopes, data_actions }
    }

    /// The two built-ins, assignable anywhere in `account`.
    pub fn built_ins(account: &AccountRef) -> [RoleDefinition; 2] {
        let scopes = vec![account.id()];
        [
            RoleDefinition {
                name: DATA_READER_ID.into(),
                role_name: "Cosmos DB Built-in Data Reader".into(),
                built_in: true,
                assignable_scopes: scopes.clone(),
                data_actions: DATA_READER_ACTIONS.iter().map(|s| s.to_string()).collect(),
            },
            RoleDefinition {
                name: DATA_CONTRIBUTOR_ID.into(),
                role_name: "Cosmos DB Built-in Data Contributor".into(),
                built_in: true,
                assignable_scopes: scopes,
                data_actions: DATA_CONTRIBUTOR_ACTIONS.iter().map(|s| s.to_string()).collect(),
            },
        ]
    }

    /// The ARM representation.
    pub fn to_json(&self, account: &AccountRef) -> Value {
        json!({
            "id": account.role_definition_id(&self.name),
            "name": self.name,
            "type": ROLE_DEFINITION_TYPE,
            "properties": {
                "roleName": self.role_name,
                "type": if self.built_in { "BuiltInRole" } else { "CustomRole" },
                "assignableScopes": self.assignable_scopes,
                "permissions": [{"dataActions": self.data_actions, "notDataActions": []}],
            }
        })
    }
}

/// A SQL role assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    /// Resource name (a GUID).
    pub name: String,
    /// Fully qualified id of the role definition.
    pub role_definition_id: String,
    /// Fully qualified scope (account, `.../dbs/<db>` or `.../dbs/<db>/colls/<c>`).
    pub scope: String,
    /// Entra object id of the principal.
    pub principal_id: String,
}

impl RoleAssignment {
    /// An assignment.
    pub fn new(
        name: impl Into<String>,
        role_definition_id: impl Into<String>,
        scope: impl Into<String>,
        principal_id: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            role_definition_id: role_definition_id.into(),
            scope: scope.into(),
            principal_id: principal_id.into(),
        }
    }

    /// The ARM representation.
    pub fn to_json(&self, account: &AccountRef) -> Value {
        json!({
            "id": account.role_assignment_id(&self.name),
            "name": self.name,
            "type": ROLE_ASSIGNMENT_TYPE,
            "properties": {
                "roleDefinitionId": self.role_definition_id,
                "scope": self.scope,
                "principalId": self.principal_id,
            }
        })
    }

    /// Whether principal, definition and scope are the same (ignoring case).
    pub(crate) fn same_grant(&self, other: &RoleAssignment) -> bool {
        self.principal_id.eq_ignore_ascii_case(&other.principal_id)
            && self.role_definition_id.eq_ignore_ascii_case(&other.role_definition_id)
            && normalize_scope(&self.scope).eq_ignore_ascii_case(&normalize_scope(&other.scope))
    }
}

/// A database account as `GET` returns it.
#[derive(Debug, Clone)]
pub struct Account {
    /// Where it lives.
    pub reference: AccountRef,
    /// Azure region (`westus` by default).
    pub location: String,
}

impl Account {
    /// An account in `location`.
    pub fn new(reference: AccountRef, location: impl Into<String>) -> Self {
        Self { reference, location: location.into() }
    }

    pub(crate) fn to_json(&self) -> Value {
        let name = &self.reference.name;
        json!({
            "id": self.reference.id(),
            "name": name,
            "type": ACCOUNT_TYPE,
            "location": display_location(&self.location),
            "kind": "GlobalDocumentDB",
            "tags": {},
            "properties": {
                "provisioningState": "Succeeded",
                "documentEndpoint": format!("https://{name}.documents.azure.com:443/"),
                "databaseAccountOfferType": "Standard",
                "disableLocalAuth": true,
                "publicNetworkAccess": "Enabled",
                "consistencyPolicy": {"defaultConsistencyLevel": "Session", "maxIntervalInSeconds": 5, "maxStalenessPrefix": 100},
                "locations": [{
                    "id": format!("{name}-{}", self.location),
                    "locationName": display_location(&self.location),
                    "documentEndpoint": format!("https://{name}-{}.documents.azure.com:443/", self.location),
                    "provisioningState": "Succeeded",
                    "failoverPriority": 0,
                    "isZoneRedundant": false
                }],
                "capabilities": [],
            }
        })
    }
}

fn display_location(location: &str) -> String {
    match location.to_ascii_lowercase().as_str() {
        "westus" => "West US".into(),
        "eastus" => "East US".into(),
        "westeurope" => "West Europe".into(),
        "northeurope" => "North Europe".into(),
        _ => location.to_string(),
    }
}

/// `scope` without trailing slashes.
pub(crate) fn normalize_scope(scope: &str) -> String {
    scope.trim_end_matches('/').to_string()
}

/// Whether `scope` is the account itself, one of its databases, or one of
/// their containers (`.../dbs/<db>[/colls/<c>]`, non-empty names).
pub(crate) fn scope_within_account(scope: &str, account: &AccountRef) -> bool {
    let scope = normalize_scope(scope);
    let id = account.id();
    if scope.len() < id.len() || !scope.is_char_boundary(id.len()) || !scope[..id.len()].eq_ignore_ascii_case(&id) {
        return false;
    }
    let rest = &scope[id.len()..];
    if rest.is_empty() {
        return true;
    }
    let parts: Vec<&str> = rest.strip_prefix('/').unwrap_or("").split('/').collect();
    match parts.as_slice() {
        [dbs, db] => dbs.eq_ignore_ascii_case("dbs") && !db.is_empty(),
        [dbs, db, colls, c] => {
            dbs.eq_ignore_ascii_case("dbs") && !db.is_empty() && colls.eq_ignore_ascii_case("colls") && !c.is_empty()
        }
        _ => false,
    }
}

/// Whether `inner` equals `outer` or lies beneath it (both already known
/// to be within the same account).
pub(crate) fn scope_contains(outer: &str, inner: &str) -> bool {
    let outer = normalize_scope(outer).to_ascii_lowercase();
    let inner = normalize_scope(inner).to_ascii_lowercase();
    inner == outer || inner.starts_with(&format!("{outer}/"))
}

/// Whether `s` looks like a GUID (8-4-4-4-12 hex digits).
pub(crate) fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountRef {
        AccountRef::new("sub", "rg", "acct")
    }

    #[test]
    fn scopes() {
        let a = account();
        assert!(scope_within_account(&a.id(), &a));
        assert!(scope_within_account(&format!("{}/", a.id()), &a));
        assert!(scope_within_account(&a.database_scope("db1"), &a));
        assert!(scope_within_account(&a.container_scope("db1", "c"), &a));
        assert!(scope_within_account(&a.id().to_uppercase(), &a));
        assert!(!scope_within_account(&format!("{}/dbs", a.id()), &a));
        assert!(!scope_within_account(&format!("{}/dbs/db1/colls", a.id()), &a));
        assert!(!scope_within_account(&format!("{}x", a.id()), &a));
        assert!(!scope_within_account(&AccountRef::new("sub", "rg", "other").id(), &a));
        assert!(!scope_within_account("/dbs/db1", &a));
        assert!(scope_contains(&a.id(), &a.container_scope("db1", "c")));
        assert!(scope_contains(&a.database_scope("db1"), &a.container_scope("db1", "c")));
        assert!(!scope_contains(&a.database_scope("db1"), &a.database_scope("db10")));
    }

    #[test]
    fn guids() {
        assert!(is_guid(DATA_READER_ID));
        assert!(is_guid("AbCdEf01-2345-6789-abcd-ef0123456789"));
        assert!(!is_guid("not-a-guid"));
        assert!(!is_guid("00000000-0000-0000-0000-00000000000"));
    }
}
