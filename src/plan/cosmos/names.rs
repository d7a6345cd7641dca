//! The account's ARM ids, and the deterministic (UUID v5) names dbgrant
//! gives its role assignments and custom role definitions (see the module
//! docs of [`super`]).

use uuid::Uuid;

use super::RoleKey;

/// UUID v5 namespace of dbgrant's assignment names.
pub const ASSIGNMENT_NAMESPACE: Uuid = Uuid::from_u128(0x6a1d_5b0e_3c2f_4d8a_9e71_0f4b_2c6d_8e01);
/// UUID v5 namespace of dbgrant's custom role definition names.
pub const DEFINITION_NAMESPACE: Uuid = Uuid::from_u128(0x6a1d_5b0e_3c2f_4d8a_9e71_0f4b_2c6d_8e02);

// === Account ===

/// A Cosmos DB account and the ARM ids and names derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRef {
    id: String,
    key: String,
}

impl AccountRef {
    /// The account with these coordinates.
    pub fn new(subscription_id: &str, resource_group: &str, account_name: &str) -> Self {
        let id = format!(
            "/subscriptions/{}/resourceGroups/{resource_group}/providers/Microsoft.DocumentDB/databaseAccounts/{account_name}",
            subscription_id.to_ascii_lowercase()
        );
        let key = id.to_ascii_lowercase();
        Self { id, key }
    }

    /// The fully qualified ARM id, as dbgrant writes it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id in lower case: ARM ids are case-insensitive.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A fully qualified scope from a relative one (`""`, `/dbs/d`,
    /// `/dbs/d/colls/c`).
    pub fn scope(&self, relative: &str) -> String {
        format!("{}{relative}", self.id)
    }

    /// The relative scope of a fully qualified one, or None when it is not
    /// a scope in this account that dbgrant understands. The account part
    /// compares case-insensitively; database and container names do not.
    pub fn relative_scope(&self, scope: &str) -> Option<String> {
        let rest = strip_prefix_ignore_case(scope.trim_end_matches('/'), &self.id)?;
        if rest.is_empty() {
            return Some(String::new());
        }
        let parts: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
        match parts.as_slice() {
            [dbs, db] if dbs.eq_ignore_ascii_case("dbs") && !db.is_empty() => Some(format!("/dbs/{db}")),
            [dbs, db, colls, c]
                if dbs.eq_ignore_ascii_case("dbs")
                    && colls.eq_ignore_ascii_case("colls")
                    && !db.is_empty()
                    && !c.is_empty() =>
            {
                Some(format!("/dbs/{db}/colls/{c}"))
            }
            _ => None,
        }
    }

    /// The ARM id of a role definition in this account.
    pub fn definition_id(&self, definition_name: &str) -> String {
        format!("{}/sqlRoleDefinitions/{definition_name}", self.id)
    }

    /// The definition name (a GUID, lower case) of a role definition id in
    /// this account, or None when the id points elsewhere.
    pub fn definition_name_of(&self, role_definition_id: &str) -> Option<String> {
        let name = strip_prefix_ignore_case(role_definition_id, &self.definition_id(""))?.trim_end_matches('/');
        (!name.is_empty() && !name.contains('/')).then(|| name.to_ascii_lowercase())
    }

    /// dbgrant's name for the assignment of `role` to `principal_id` at the
    /// relative `scope`.
    pub fn assignment_name(&self, principal_id: &str, scope: &str, role: &RoleKey) -> String {
        let input = format!("{}\n{}\n{scope}\n{}", self.key, principal_id.to_ascii_lowercase(), role.name_part());
        Uuid::new_v5(&ASSIGNMENT_NAMESPACE, input.as_bytes()).to_string()
    }

    /// dbgrant's name for the role definition of a CosmosRoleDefinition.
    pub fn definition_name(&self, cosmos_role_definition: &str) -> String {
        let input = format!("{}\n{cosmos_role_definition}", self.key);
        Uuid::new_v5(&DEFINITION_NAMESPACE, input.as_bytes()).to_string()
    }
}

/// `s` without `prefix`, compared case-insensitively (ARM ids are).
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len()).filter(|head| head.eq_ignore_ascii_case(prefix)).map(|_| &s[prefix.len()..])
}
