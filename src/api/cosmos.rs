//! `CosmosTarget`, `CosmosRoleDefinition` and `CosmosRoleBinding`: Azure
//! Cosmos DB accounts and their data-plane (SQL) role-based access control,
//! managed through Azure Resource Manager.

// kube-derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DeletionPolicy, Expiry, PendingChanges, SecretKeyRef, Subject, TargetMode, TargetRef};

/// Default ARM api-version for `Microsoft.DocumentDB` (GA).
pub const DEFAULT_API_VERSION: &str = "2024-11-15";
/// Public-cloud Azure Resource Manager endpoint.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// Public-cloud Microsoft Entra authority host.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Annotation on a CosmosTarget listing (comma-separated) the names of
/// role assignments dbgrant released under `deletionPolicy: Retain`: they
/// stay in Azure and dbgrant never changes or deletes them again. Removing
/// a name hands the assignment back to dbgrant (it is collected if no
/// binding wants it).
pub const RELEASED_ANNOTATION: &str = "dbgrant.io/released-assignments";

// === CosmosTarget ===

/// An Azure Cosmos DB account whose SQL role assignments dbgrant manages.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "dbgrant.io",
    version = "v1alpha1",
    kind = "CosmosTarget",
    doc = "An Azure Cosmos DB account whose SQL role definitions and assignments dbgrant manages",
    status = "CosmosTargetStatus",
    shortname = "ctgt",
    category = "dbgrant",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Account", type_ = "string", json_path = ".spec.accountName"),
    printcolumn(name = "Assignments", type_ = "integer", json_path = ".status.roleAssignments"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct CosmosTargetSpec {
    /// Azure subscription id of the account.
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub subscription_id: String,
    /// Resource group of the account.
    #[schemars(length(min = 1, max = 90), regex(pattern = r"^[-\w._()]*[-\w_()]$"))]
    pub resource_group: String,
    /// Cosmos DB account name.
    #[schemars(length(min = 3, max = 44), regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$"))]
    pub account_name: String,
    /// Cloud endpoints and API pinning; defaults to Azure public cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<AzureCloud>,
    /// How dbgrant authenticates to Azure Resource Manager. Its identity
    /// needs `Microsoft.DocumentDB/databaseAccounts/sqlRoleDefinitions/*`
    /// and `sqlRoleAssignments/*` on the account (for example the built-in
    /// "Cosmos DB Operator" role).
    pub credential: AzureCredential,
    /// Which namespaces may bind to this account and what they may grant.
    pub policy: CosmosPolicy,
    /// `Enforce` (default) applies; `Observe` writes nothing and publishes
    /// what it would write.
    #[serde(default)]
    pub mode: TargetMode,
}

/// Cloud endpoints, for sovereign and private clouds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureCloud {
    /// Azure Resource Manager endpoint (https), e.g.
    /// `https://management.usgovcloudapi.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://[^\s/]+(:[0-9]+)?/?$"))]
    pub arm_endpoint: Option<String>,
    /// Microsoft Entra authority host (https), e.g.
    /// `https://login.microsoftonline.us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://[^\s/]+(:[0-9]+)?/?$"))]
    pub authority_host: Option<String>,
    /// Token audience for ARM; defaults to the ARM endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub arm_audience: Option<String>,
    /// `Microsoft.DocumentDB` api-version; defaults to `2024-11-15`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"))]
    pub api_version: Option<String>,
    /// Secret key with PEM CA certificates to trust for ARM and Entra in
    /// addition to the system roots (private clouds, TLS inspection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Azure credential for dbgrant. Set exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.workloadIdentity), has(self.managedIdentity), has(self.clientSecret), has(self.clientCertificate)].filter(x, x).size() == 1").message("set exactly one of workloadIdentity, managedIdentity, clientSecret and clientCertificate"))]
pub struct AzureCredential {
    /// Microsoft Entra Workload ID: a federated service-account token
    /// (`AZURE_FEDERATED_TOKEN_FILE`) exchanged for an Entra token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentityCredential>,
    /// An Azure managed identity of the node or pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentityCredential>,
    /// An application's client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretCredential>,
    /// An application's client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateCredential>,
}

/// Workload identity settings; unset fields come from the pod's
/// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_FEDERATED_TOKEN_FILE`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentityCredential {
    /// Entra tenant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub tenant_id: Option<String>,
    /// Client id of the user-assigned identity or application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub client_id: Option<String>,
}

/// Managed identity settings; unset means the system-assigned identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentityCredential {
    /// Client id of a user-assigned managed identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub client_id: Option<String>,
}

/// An application registration and its client secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretCredential {
    /// Entra tenant id.
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub tenant_id: String,
    /// Application (client) id.
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub client_id: String,
    /// Secret key holding the client secret.
    pub secret_ref: SecretKeyRef,
}

/// An application registration and its certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateCredential {
    /// Entra tenant id.
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub tenant_id: String,
    /// Application (client) id.
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub client_id: String,
    /// Secret key holding the certificate and its unencrypted private key,
    /// both PEM (PKCS#12 is not supported: convert it with `openssl pkcs12
    /// -nodes`).
    pub certificate_secret_ref: SecretKeyRef,
}

/// What tenants may do with a CosmosTarget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CosmosPolicy {
    /// Namespaces whose bindings may use this account: names, prefixes
    /// ending in `*` (`team-*`), or `*` for all.
    #[schemars(
        length(min = 1, max = 256),
        inner(regex(pattern = super::common::NAMESPACE_PATTERN))
    )]
    pub allowed_namespaces: Vec<String>,
    /// Role definitions bindings may use: `DataReader`, `DataContributor`,
    /// or names of CosmosRoleDefinitions. When unset, any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 253)))]
    pub allowed_role_definitions: Option<Vec<String>>,
    /// Databases bindings may scope grants to (names, prefixes ending in
    /// `*`, or `*`). When unset, any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 255)))]
    pub allowed_databases: Option<Vec<String>>,
    /// Allow grants at account scope (every database). Off by default.
    #[serde(default)]
    pub allow_account_scope: bool,
    /// Entries of the built-in escalation deny list this target explicitly
    /// permits (e.g. `WildcardDataActionsAtAccountScope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 128)))]
    pub allow_escalation: Vec<String>,
    /// Honour `deletionPolicy: Retain` on bindings: deleting such a binding
    /// leaves the role assignments only it needed in place, no longer
    /// managed. Off by default, and then a binding asking for Retain is
    /// denied (`GrantDenied`). Expiry always revokes, whatever the deletion
    /// policy, and a Retain binding deleted after this is turned off is
    /// revoked.
    #[serde(default)]
    pub allow_retain: bool,
}

/// Status of a CosmosTarget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CosmosTargetStatus {
    /// kstatus conditions: `Ready` (token obtained, account reachable,
    /// caller authorised), `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Fully qualified ARM id of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// SQL role assignments on the account (limit 2,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_assignments: Option<u32>,
    /// Custom SQL role definitions on the account (limit 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_definitions: Option<u32>,
    /// Role assignments dbgrant manages on the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_role_assignments: Option<u32>,
    /// When the last full resync finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync_time: Option<Time>,
    /// In Observe mode: what the last full resync would have written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingChanges>,
}

// === CosmosRoleDefinition ===

/// A custom Cosmos DB SQL role definition on one CosmosTarget.
/// Cluster-scoped: role definitions are account-wide, so the platform team
/// owns them.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "dbgrant.io",
    version = "v1alpha1",
    kind = "CosmosRoleDefinition",
    doc = "A custom Azure Cosmos DB SQL role definition (data actions and assignable scopes) on one CosmosTarget",
    status = "CosmosRoleDefinitionStatus",
    shortname = "crdef",
    category = "dbgrant",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.roleName"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct CosmosRoleDefinitionSpec {
    /// The CosmosTarget (account) to define the role on. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("targetRef is immutable"))]
    pub target_ref: TargetRef,
    /// Role name shown in Azure; unique within the account.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$"))]
    pub role_name: String,
    /// Data actions, such as
    /// `Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read`.
    /// Wildcards `containers/*` and `items/*` are allowed.
    #[schemars(
        length(min = 1, max = 64),
        inner(regex(pattern = r"^Microsoft\.DocumentDB/databaseAccounts/[A-Za-z/*]+$"))
    )]
    pub data_actions: Vec<String>,
    /// Scopes at which the role may be assigned; empty means the account.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub assignable_scopes: Vec<CosmosScope>,
}

/// Status of a CosmosRoleDefinition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CosmosRoleDefinitionStatus {
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Fully qualified ARM id of the role definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_definition_id: Option<String>,
}

// === CosmosRoleBinding ===

/// Assigns a Cosmos DB SQL role to Entra identities at one or more scopes.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "dbgrant.io",
    version = "v1alpha1",
    kind = "CosmosRoleBinding",
    doc = "Assigns an Azure Cosmos DB SQL role to Microsoft Entra identities at one or more scopes",
    namespaced,
    status = "CosmosRoleBindingStatus",
    shortname = "crb",
    category = "dbgrant",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.targetRef.name"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.expiresAt) && has(self.duration))").message("set at most one of expiresAt and duration"))]
#[x_kube(validation = Rule::new("self.subjects.all(s, s.kind != 'AppRole')").message("Cosmos DB assigns roles to object ids; AppRole subjects are not supported"))]
pub struct CosmosRoleBindingSpec {
    /// The CosmosTarget (account) to assign on. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("targetRef is immutable"))]
    pub target_ref: TargetRef,
    /// Identities that receive the role. Groups work for members in at
    /// most 200 groups; Entra does not resolve membership beyond that.
    #[schemars(length(min = 1, max = 256))]
    pub subjects: Vec<Subject>,
    /// The role to assign.
    pub role_definition: CosmosRoleDefinitionRef,
    /// Where the role applies. Each entry is the account (`{}`), a
    /// database, or a container.
    #[schemars(length(min = 1, max = 64))]
    pub scopes: Vec<CosmosScope>,
    /// When the access ends.
    #[serde(flatten)]
    pub expiry: Expiry,
    /// What happens to granted access when this binding is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A role definition: built-in or a CosmosRoleDefinition. Set exactly one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.builtIn) != has(self.name)").message("set exactly one of builtIn and name"))]
pub struct CosmosRoleDefinitionRef {
    /// A built-in role: `DataReader` or `DataContributor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_in: Option<BuiltInCosmosRole>,
    /// Name of a CosmosRoleDefinition on the same target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::common::NAME_PATTERN))]
    pub name: Option<String>,
}

/// Cosmos DB built-in data-plane roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum BuiltInCosmosRole {
    /// Cosmos DB Built-in Data Reader
    /// (`00000000-0000-0000-0000-000000000001`).
    DataReader,
    /// Cosmos DB Built-in Data Contributor
    /// (`00000000-0000-0000-0000-000000000002`).
    DataContributor,
}

impl BuiltInCosmosRole {
    /// The role definition's name (last segment of its ARM id).
    pub fn definition_name(self) -> &'static str {
        match self {
            BuiltInCosmosRole::DataReader => "00000000-0000-0000-0000-000000000001",
            BuiltInCosmosRole::DataContributor => "00000000-0000-0000-0000-000000000002",
        }
    }
}

/// A scope within an account: the account itself (both unset), a database,
/// or a container in a database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.container) || has(self.database)").message("a container scope needs its database"))]
pub struct CosmosScope {
    /// Database name. Cosmos DB names may not contain `/`, `\`, `?`, `#`
    /// or white space, nor be `.` or `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^/\\#?\s]+$"))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..'").message("a database name may not be . or .."))]
    pub database: Option<String>,
    /// Container name within the database. Cosmos DB names may not contain
    /// `/`, `\`, `?`, `#` or white space, nor be `.` or `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^/\\#?\s]+$"))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..'").message("a container name may not be . or .."))]
    pub container: Option<String>,
}

impl CosmosScope {
    /// The scope's path relative to the account id (`""`, `/dbs/d`,
    /// `/dbs/d/colls/c`).
    pub fn relative_path(&self) -> String {
        match (&self.database, &self.container) {
            (Some(d), Some(c)) => format!("/dbs/{d}/colls/{c}"),
            (Some(d), None) => format!("/dbs/{d}"),
            _ => String::new(),
        }
    }
}

/// Status of a CosmosRoleBinding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CosmosRoleBindingStatus {
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When access ends, from `expiresAt` or `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The role assignments that carry this binding's grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assignments: Vec<CosmosAssignmentStatus>,
    /// When the grant was last confirmed in Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_time: Option<Time>,
}

/// One role assignment as applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CosmosAssignmentStatus {
    /// Assignment name (a GUID).
    pub name: String,
    /// Principal object id.
    pub principal_id: String,
    /// Scope relative to the account (`""` for the account).
    pub scope: String,
    /// `Managed` when dbgrant created it, `PreExisting` when an identical
    /// assignment it does not own already grants the access.
    pub ownership: String,
}
