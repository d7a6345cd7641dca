//! Types shared by every dbgrant kind: subjects, references, expiry and
//! deletion policy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern for a Microsoft Entra object id (a GUID).
pub const GUID_PATTERN: &str = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Pattern for a Kubernetes object name (DNS-1123 subdomain).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// Pattern for a duration such as `12h`, `30d` or `1w2d`.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}(w|d|h|m|s))+$";

/// A reference to a cluster-scoped target (a `MongoTarget` or `CosmosTarget`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Name of the cluster-scoped target resource.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
}

/// A key in a Secret that lives in the operator's own namespace.
///
/// Targets are cluster-scoped and owned by the platform team, so their
/// Secrets live next to the operator, never in tenant namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret in the operator namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A Secret in the operator's namespace, read as a whole (for example a
/// `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret in the operator namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
}

/// What kind of Microsoft Entra identity a subject is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SubjectKind {
    /// An Entra security group, by object id. Members receive the grant
    /// through the token's groups claim.
    Group,
    /// An Entra user, by object id.
    User,
    /// An Entra service principal (application or managed identity), by
    /// object id.
    ServicePrincipal,
    /// An application role value, for targets whose authorization claim is
    /// `roles` (used by organisations whose users are in more than 200
    /// groups, where Entra replaces the groups claim with an overage marker).
    AppRole,
}

impl std::fmt::Display for SubjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            SubjectKind::Group => "Group",
            SubjectKind::User => "User",
            SubjectKind::ServicePrincipal => "ServicePrincipal",
            SubjectKind::AppRole => "AppRole",
        };
        f.write_str(s)
    }
}

/// An Entra identity that receives a grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'AppRole' ? (has(self.value) && !has(self.objectId)) : (has(self.objectId) && !has(self.value))").message("AppRole subjects set value; Group, User and ServicePrincipal subjects set objectId"))]
pub struct Subject {
    /// Kind of identity: Group, User, ServicePrincipal or AppRole.
    pub kind: SubjectKind,
    /// Entra object id (GUID) of the group, user or service principal.
    /// Entra's groups claim carries group object ids, not display names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub object_id: Option<String>,
    /// App role value (the `roles` claim), for AppRole subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 120), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"))]
    pub value: Option<String>,
    /// Human-readable name, for people reading the binding. Not used for
    /// authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
}

impl Subject {
    /// The claim value or object id that identifies this subject, lower-cased
    /// for GUIDs so `ABC…` and `abc…` are the same subject.
    pub fn key(&self) -> SubjectKey {
        let id = match (self.kind, &self.object_id, &self.value) {
            (SubjectKind::AppRole, _, Some(v)) => v.clone(),
            (_, Some(id), _) => id.to_ascii_lowercase(),
            // Schema validation makes this unreachable for admitted objects;
            // an empty id is refused by the planner rather than panicking.
            _ => String::new(),
        };
        SubjectKey { kind: self.kind, id }
    }
}

/// The identity of a subject as the backends see it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubjectKey {
    /// Kind of identity.
    pub kind: SubjectKind,
    /// Object id (lower case) or app role value.
    pub id: String,
}

impl std::fmt::Display for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.id)
    }
}

/// What happens to granted access when a binding is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Revoke the access this binding granted (default).
    #[default]
    Delete,
    /// Leave backend objects that only this binding needed in place and stop
    /// managing them; shared objects still shrink to the remaining bindings.
    Retain,
}

/// Whether dbgrant writes to a target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetMode {
    /// Apply, correct drift and revoke (default).
    #[default]
    Enforce,
    /// Write nothing to the database or Azure: compute the plan at every
    /// resync and binding change and publish it (`status.pending` here,
    /// `Observing` on each binding). For onboarding an existing database:
    /// see the difference, then switch to `Enforce` to apply exactly it.
    /// Revocations are not written either: a deleted binding whose grant
    /// dbgrant put in place keeps its finalizer until the target enforces.
    Observe,
}

/// What an Observe-mode target would write (see [`TargetMode::Observe`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingChanges {
    /// Writes the last full resync planned and did not make.
    pub writes: u32,
    /// The first of them (at most [`PENDING_LISTED`]), as
    /// `create role admin.entra/…`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// How many pending changes a target's status lists.
pub const PENDING_LISTED: usize = 50;

impl PendingChanges {
    /// The pending changes `all`, listed up to [`PENDING_LISTED`].
    pub fn of(all: &[String]) -> Self {
        Self { writes: all.len() as u32, changes: all.iter().take(PENDING_LISTED).cloned().collect() }
    }
}

/// When a binding's access ends. Set at most one of `expiresAt` and
/// `duration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Expiry {
    /// Absolute instant (RFC 3339) at which access is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Lifetime counted from the binding's creation, such as `12h`, `30d` or
    /// `1w`. Units: s, m, h, d, w.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duration: Option<String>,
}

/// Pattern for namespace selection entries: a namespace name, a prefix
/// ending in `*`, or `*` alone for every namespace.
pub const NAMESPACE_PATTERN: &str = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?\*?|[a-z0-9][-a-z0-9]*-\*)$";
