//! `MongoTarget` and `MongoRoleBinding`: MongoDB deployments and the Entra
//! identities that get roles in them through MONGODB-OIDC.

// kube-derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DeletionPolicy, Expiry, PendingChanges, SecretKeyRef, SecretRef, Subject, TargetMode, TargetRef};

// === MongoTarget ===

/// A MongoDB deployment that dbgrant manages OIDC roles and `$external`
/// users on. Cluster-scoped and owned by the platform team.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "dbgrant.io",
    version = "v1alpha1",
    kind = "MongoTarget",
    doc = "A MongoDB deployment whose OIDC roles and $external users dbgrant manages",
    status = "MongoTargetStatus",
    shortname = "mtgt",
    category = "dbgrant",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.serverVersion"),
    printcolumn(name = "Roles", type_ = "integer", json_path = ".status.managedRoles"),
    printcolumn(name = "Users", type_ = "integer", json_path = ".status.managedUsers"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MongoTargetSpec {
    /// How to reach the deployment.
    pub connection: MongoConnection,
    /// How dbgrant itself authenticates. The identity needs the roles
    /// `userAdminAnyDatabase` on `admin` and `readWrite` on `dbgrant` (the
    /// ownership ledger), or a custom role with createRole, dropRole and
    /// viewRole on `admin`, grantRole and revokeRole on every database,
    /// createUser, dropUser and viewUser on `$external`, and find, insert,
    /// update and remove on `dbgrant.ownership`; `userAdmin` on `admin` is not
    /// enough. The target reports Unauthorized naming what is missing.
    pub auth: MongoAuth,
    /// The server's OIDC identity provider settings that decide role and
    /// user names.
    pub oidc: MongoOidc,
    /// Which namespaces may bind to this target and what they may grant.
    pub policy: MongoPolicy,
    /// Take over roles and users with dbgrant's names that already exist
    /// but were not created by dbgrant. Off by default: such objects are
    /// reported as conflicts and left untouched.
    #[serde(default)]
    pub adopt: bool,
    /// `Enforce` (default) applies; `Observe` writes nothing and publishes
    /// what it would write.
    #[serde(default)]
    pub mode: TargetMode,
}

/// Connection settings for a MongoDB deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoConnection {
    /// Secret key holding the connection string (`mongodb://` or
    /// `mongodb+srv://`). It may carry credentials; it is never logged.
    pub uri_secret_ref: SecretKeyRef,
    /// TLS settings. TLS verification is on whenever the connection string
    /// enables TLS, unless it sets `tlsInsecure=true` or
    /// `tlsAllowInvalidCertificates=true` (or `tls.insecureSkipVerify` is
    /// set): the target's `status.tlsVerification` then says `Disabled`.
    /// `tlsAllowInvalidHostnames` is refused (dbgrant's TLS stack cannot
    /// skip the host name check alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MongoTls>,
}

/// TLS settings for a MongoDB connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoTls {
    /// Secret key holding PEM CA certificates to trust instead of the
    /// system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) with the client
    /// certificate, required for X.509 authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<SecretRef>,
    /// Disable server certificate verification. Only for tests; shown on
    /// the target's status while set.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// How dbgrant authenticates to MongoDB. Set exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.scram), has(self.x509), has(self.oidc), has(self.connectionString)].filter(x, x).size() == 1").message("set exactly one of scram, x509, oidc and connectionString"))]
pub struct MongoAuth {
    /// SCRAM-SHA-256 with a username and password from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<MongoScramAuth>,
    /// MONGODB-X509 with the client certificate from `connection.tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<MongoX509Auth>,
    /// MONGODB-OIDC with an Entra token for dbgrant's own Azure identity
    /// (workload identity or managed identity); no password anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<MongoOidcAuth>,
    /// Use whatever credentials the connection string carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_string: Option<MongoConnectionStringAuth>,
}

/// SCRAM-SHA-256 credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoScramAuth {
    /// Secret key holding the username.
    pub username_secret_ref: SecretKeyRef,
    /// Secret key holding the password.
    pub password_secret_ref: SecretKeyRef,
    /// Authentication database; defaults to `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub source: Option<String>,
}

/// MONGODB-X509 authentication; the subject comes from the client
/// certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoX509Auth {}

/// Credentials carried by the connection string itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoConnectionStringAuth {}

/// MONGODB-OIDC for dbgrant itself: the driver's machine flow, with an
/// Entra access token dbgrant gets for its own identity (workload identity
/// or managed identity). No password or key is stored anywhere. The
/// server's `oidcIdentityProviders` entry must accept tokens for this
/// identity (its `audience` is the application behind `scope`), and the
/// identity needs a role there (through its groups or app roles with
/// `useAuthorizationClaim`, or as an `$external` user) with
/// `userAdminAnyDatabase` on `admin` and `readWrite` on `dbgrant`, or the
/// least-privilege custom role the README describes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tenantId) || !has(self.credential) || self.credential == 'workloadIdentity'").message("tenantId applies to the workloadIdentity credential only"))]
pub struct MongoOidcAuth {
    /// Token scope to request: `<application id URI>/.default` of the
    /// application registered as the server's identity provider audience,
    /// usually `api://<app-id>/.default`.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^\S+/\.default$"))]
    pub scope: String,
    /// Which of the operator pod's Azure identities gets the token:
    /// `workloadIdentity` (default; Microsoft Entra Workload ID, the
    /// federated service-account token in `AZURE_FEDERATED_TOKEN_FILE` that
    /// the workload identity webhook projects into the pod) or
    /// `managedIdentity` (the node's or pod's managed identity).
    #[serde(default)]
    pub credential: MongoOidcCredential,
    /// Entra tenant id (GUID) for `workloadIdentity`; defaults to the pod's
    /// `AZURE_TENANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub tenant_id: Option<String>,
    /// Client id (GUID) of the identity: for `workloadIdentity` the
    /// application or user-assigned managed identity federated with
    /// dbgrant's ServiceAccount (defaults to the pod's `AZURE_CLIENT_ID`);
    /// for `managedIdentity` a user-assigned identity (unset: the
    /// system-assigned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::GUID_PATTERN))]
    pub client_id: Option<String>,
    /// Microsoft Entra authority host (https), for sovereign and private
    /// clouds, e.g. `https://login.microsoftonline.us`; defaults to the
    /// pod's `AZURE_AUTHORITY_HOST`, else `https://login.microsoftonline.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://[^\s/]+(:[0-9]+)?/?$"))]
    pub authority_host: Option<String>,
    /// Secret key with PEM CA certificates to trust for the authority host
    /// in addition to the system roots (private clouds, TLS inspection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Send the Entra access token over a connection without TLS, or with
    /// TLS verification disabled (`tlsInsecure`,
    /// `tlsAllowInvalidCertificates`, `connection.tls.insecureSkipVerify`).
    /// Off by default, and then such a target is refused: the token would
    /// cross the network readable, or go to whoever answers, and lets its
    /// holder act as dbgrant on the server until it expires. For local
    /// testing only.
    #[serde(default)]
    pub allow_insecure_transport: bool,
}

/// The Azure identity dbgrant authenticates to MongoDB as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MongoOidcCredential {
    /// Microsoft Entra Workload ID: the pod's federated service-account
    /// token (`AZURE_FEDERATED_TOKEN_FILE`) exchanged for an Entra token.
    #[default]
    WorkloadIdentity,
    /// An Azure managed identity of the node or pod (IMDS, or the endpoint
    /// in `IDENTITY_ENDPOINT`).
    ManagedIdentity,
}

/// The server's OIDC identity provider settings
/// (`oidcIdentityProviders`), which decide the names dbgrant manages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoOidc {
    /// The provider's `authNamePrefix`. Roles are named
    /// `<authNamePrefix>/<claim value>` and users
    /// `<authNamePrefix>/<principal claim>`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub auth_name_prefix: String,
    /// The provider's `useAuthorizationClaim`. When true, Group and AppRole
    /// subjects become roles in `admin`; when false, User and
    /// ServicePrincipal subjects become `$external` users.
    #[serde(default = "default_true")]
    pub use_authorization_claim: bool,
    /// The claim the server reads roles from: `groups` (group object ids;
    /// Entra sends at most 200, beyond that an overage marker and no
    /// groups) or `roles` (app role values, for large organisations).
    #[serde(default)]
    pub authorization_claim: AuthorizationClaim,
}

fn default_true() -> bool {
    true
}

/// The token claim that carries the values roles are named after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuthorizationClaim {
    /// The `groups` claim: Entra group object ids. Entra includes at most
    /// 200 groups in a token; users in more groups get an overage marker
    /// instead and receive no group roles.
    #[default]
    #[serde(rename = "groups")]
    Groups,
    /// The `roles` claim: application role values.
    #[serde(rename = "roles")]
    Roles,
}

/// What tenants may do with a MongoTarget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoPolicy {
    /// Namespaces whose bindings may use this target: names, prefixes
    /// ending in `*` (`team-*`), or `*` for all.
    #[schemars(
        length(min = 1, max = 256),
        inner(regex(pattern = super::common::NAMESPACE_PATTERN))
    )]
    pub allowed_namespaces: Vec<String>,
    /// Roles bindings may grant (`{role, db}`, `*` matches any). When
    /// unset, any role not on the escalation deny list. Never grantable,
    /// whatever this list says: roles named `<authNamePrefix>/…` (the roles
    /// dbgrant manages for subjects, in any database), roles in dbgrant's
    /// ledger database `dbgrant`, and roles with privileges on every
    /// database (`root`, `readAnyDatabase`, `readWriteAnyDatabase`,
    /// `dbAdminAnyDatabase`, `userAdminAnyDatabase`, `clusterAdmin`,
    /// `clusterManager`, `clusterMonitor`, `hostManager`, `enableSharding`,
    /// `backup`, `restore`, `__queryableBackup`, `__system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub allowed_roles: Option<Vec<MongoRoleRef>>,
    /// Privilege actions bindings may grant. When unset, any action not on
    /// the escalation deny list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(regex(pattern = r"^(\*|[A-Za-z]{1,64})$")))]
    pub allowed_actions: Option<Vec<String>>,
    /// Databases bindings may touch, through roles or privilege resources
    /// (names, prefixes ending in `*`, or `*`). When unset, any database
    /// except `admin`, `local` and `config`. Those three are allowed only
    /// by their literal name in this list, never by `*` or a prefix; listing
    /// `admin` lets bindings grant the custom roles defined there, which
    /// may span every database, so restrict them with `allowedRoles`.
    /// dbgrant's ownership ledger database `dbgrant` is never allowed, and
    /// privileges on every database (`db: ""`) never granted, since they
    /// include it: a tenant that could write the ledger could make dbgrant
    /// forget its grants or drop other subjects' roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    pub allowed_databases: Option<Vec<String>>,
    /// Allow privileges on the cluster resource (`{cluster: true}`).
    #[serde(default)]
    pub allow_cluster_resource: bool,
    /// Entries of the built-in escalation deny list this target explicitly
    /// permits: the roles `userAdmin` and `dbOwner`, an action such as
    /// `createRole` or `grantRole`, or `SystemCollections` (privileges on
    /// `system.*` collections). Roles with privileges on every database
    /// (`root`, `*AnyDatabase`, `clusterAdmin` and the other cluster roles,
    /// `backup`, `restore`) have no entry here: they reach dbgrant's own
    /// ledger, so no target can allow them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    pub allow_escalation: Vec<String>,
    /// Honour `deletionPolicy: Retain` on bindings: deleting such a binding
    /// leaves the access only it needed in place, no longer managed. Off by
    /// default, and then a binding asking for Retain is denied
    /// (`GrantDenied`). Expiry always revokes, whatever the deletion
    /// policy, and a Retain binding deleted after this is turned off is
    /// revoked.
    #[serde(default)]
    pub allow_retain: bool,
}

/// Status of a MongoTarget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoTargetStatus {
    /// kstatus conditions: `Ready` (reachable and authorised), `Reconciling`,
    /// `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Server version reported by `buildInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Number of roles dbgrant manages on this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_roles: Option<u32>,
    /// Number of `$external` users dbgrant manages on this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_users: Option<u32>,
    /// Whether TLS certificates are verified (`Enabled`, `Disabled`, or
    /// `NotUsed` for plain connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verification: Option<String>,
    /// When the last full resync finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync_time: Option<Time>,
    /// In Observe mode: what the last full resync would have written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingChanges>,
}

// === MongoRoleBinding ===

/// Grants MongoDB roles and privileges to Entra identities on one
/// MongoTarget.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "dbgrant.io",
    version = "v1alpha1",
    kind = "MongoRoleBinding",
    doc = "Grants MongoDB roles and privileges to Microsoft Entra identities on one MongoTarget",
    namespaced,
    status = "MongoRoleBindingStatus",
    shortname = "mrb",
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
#[x_kube(validation = Rule::new("(has(self.roles) ? size(self.roles) : 0) + (has(self.privileges) ? size(self.privileges) : 0) > 0").message("grant at least one role or privilege"))]
pub struct MongoRoleBindingSpec {
    /// The MongoTarget to grant on. Immutable: create a new binding to move
    /// a grant.
    #[x_kube(validation = Rule::new("self == oldSelf").message("targetRef is immutable"))]
    pub target_ref: TargetRef,
    /// Identities that receive the grant.
    #[schemars(length(min = 1, max = 256))]
    pub subjects: Vec<Subject>,
    /// Built-in or custom roles to grant.
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub roles: Vec<MongoRoleRef>,
    /// Individual privileges to grant.
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub privileges: Vec<MongoPrivilege>,
    /// When the access ends.
    #[serde(flatten)]
    pub expiry: Expiry,
    /// What happens to granted access when this binding is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A MongoDB role in a database.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoRoleRef {
    /// Role name, such as `read` or `readWrite`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\x00$]+$"))]
    pub role: String,
    /// Database the role is defined in.
    #[schemars(length(min = 1, max = 64), regex(pattern = r#"^[^/\\. "$\x00]+$|^\*$"#))]
    pub db: String,
}

/// A set of actions on one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoPrivilege {
    /// What the actions apply to.
    pub resource: MongoResource,
    /// Privilege actions, such as `find`, `insert`, `update`.
    #[schemars(length(min = 1, max = 64), inner(regex(pattern = r"^[A-Za-z]{1,64}$")))]
    pub actions: Vec<String>,
}

/// A privilege resource: a database and collection (empty string means
/// every), or the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.cluster) ? (self.cluster && !has(self.db) && !has(self.collection)) : (has(self.db) && has(self.collection))").message("set either cluster: true, or both db and collection"))]
pub struct MongoResource {
    /// Database name; empty for every database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r#"^[^/\\. "$\x00]*$"#))]
    pub db: Option<String>,
    /// Collection name; empty for every collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255), regex(pattern = r"^[^$\x00]*$"))]
    pub collection: Option<String>,
    /// The cluster resource, for cluster-wide actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<bool>,
}

/// Status of a MongoRoleBinding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoRoleBindingStatus {
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When access ends, from `expiresAt` or `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Roles (`admin.<prefix>/<claim value>`) that carry this binding's
    /// grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// `$external` users (`<prefix>/<object id>`) that carry this binding's
    /// grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// When the grant was last confirmed on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_time: Option<Time>,
}
