//! The double's Entra directory: principals (users, groups, applications'
//! service principals, managed identities), the credentials applications
//! sign in with, and what each may do in ARM.

use std::collections::BTreeMap;

/// What sort of directory object a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A user.
    User,
    /// A security group.
    Group,
    /// An application's service principal (signs in with a secret,
    /// certificate or federated credential).
    ServicePrincipal,
    /// A managed identity (signs in through the managed-identity endpoint).
    ManagedIdentity,
}

/// What a principal may do through ARM on every account (a stand-in for
/// Azure RBAC on the management plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ArmAccess {
    /// Nothing: every ARM call is 403 `AuthorizationFailed`.
    #[default]
    None,
    /// `GET` only (like "Cosmos DB Account Reader").
    Read,
    /// Everything, including role definition/assignment writes (like
    /// "DocumentDB Account Contributor").
    Write,
}

/// Trust between an application and an external token issuer
/// (workload identity federation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    /// `iss` the presented token must carry.
    pub issuer: String,
    /// `sub` the presented token must carry.
    pub subject: String,
    /// One of these must be in the token's `aud`
    /// (usually `api://AzureADTokenExchange`).
    pub audiences: Vec<String>,
}

impl FederatedCredential {
    /// A credential for `issuer`/`subject` with the standard audience.
    pub fn new(issuer: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            subject: subject.into(),
            audiences: vec![super::FEDERATED_TOKEN_AUDIENCE.to_string()],
        }
    }
}

/// A managed identity's extra ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedIdentityInfo {
    /// ARM resource id of a user-assigned identity (`msi_res_id`).
    pub resource_id: Option<String>,
    /// Whether it is the host's system-assigned identity (used when the
    /// request names no identity).
    pub system_assigned: bool,
}

/// A directory object.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// Object id (a GUID): what role assignments name as `principalId`, and
    /// the `oid` of tokens issued to it.
    pub object_id: String,
    /// What it is.
    pub kind: PrincipalKind,
    /// Display name (informational).
    pub display_name: String,
    /// Application (client) id, for service principals and managed
    /// identities.
    pub client_id: Option<String>,
    /// Client secrets accepted at the token endpoint.
    pub secrets: Vec<String>,
    /// Client certificates (PEM) whose keys may sign client assertions.
    pub certificates: Vec<String>,
    /// Federated credentials (workload identity).
    pub federated_credentials: Vec<FederatedCredential>,
    /// Set for managed identities.
    pub managed_identity: Option<ManagedIdentityInfo>,
    /// What it may do in ARM.
    pub arm_access: ArmAccess,
    /// Group object ids put in its tokens' `groups` claim (more than 200
    /// become an overage marker, as in Entra).
    pub groups: Vec<String>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("object_id", &self.object_id)
            .field("kind", &self.kind)
            .field("display_name", &self.display_name)
            .field("client_id", &self.client_id)
            .field("secrets", &self.secrets.len())
            .field("certificates", &self.certificates.len())
            .field("federated_credentials", &self.federated_credentials)
            .field("managed_identity", &self.managed_identity)
            .field("arm_access", &self.arm_access)
            .finish_non_exhaustive()
    }
}

impl Principal {
    fn bare(object_id: impl Into<String>, kind: PrincipalKind, display_name: impl Into<String>) -> Self {
        Self {
            object_id: object_id.into(),
            kind,
            display_name: display_name.into(),
            client_id: None,
            secrets: Vec::new(),
            certificates: Vec::new(),
            federated_credentials: Vec::new(),
            managed_identity: None,
            arm_access: ArmAccess::None,
            groups: Vec::new(),
        }
    }

    /// A user (can be assigned roles; cannot sign in here).
    pub fn user(object_id: impl Into<String>) -> Self {
        Self::bare(object_id, PrincipalKind::User, "user")
    }

    /// A group (can be assigned roles).
    pub fn group(object_id: impl Into<String>) -> Self {
        Self::bare(object_id, PrincipalKind::Group, "group")
    }

    /// An application's service principal with client id `client_id`.
    pub fn application(client_id: impl Into<String>, object_id: impl Into<String>) -> Self {
        Self { client_id: Some(client_id.into()), ..Self::bare(object_id, PrincipalKind::ServicePrincipal, "app") }
    }

    /// A user-assigned managed identity.
    pub fn managed_identity(client_id: impl Into<String>, object_id: impl Into<String>) -> Self {
        Self {
            client_id: Some(client_id.into()),
            managed_identity: Some(ManagedIdentityInfo { resource_id: None, system_assigned: false }),
            ..Self::bare(object_id, PrincipalKind::ManagedIdentity, "managed identity")
        }
    }

    /// Sets the display name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.display_name = name.into();
        self
    }

    /// Adds a client secret.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secrets.push(secret.into());
        self
    }

    /// Registers a client certificate (PEM).
    pub fn certificate(mut self, pem: impl Into<String>) -> Self {
        self.certificates.push(pem.into());
        self
    }

    /// Adds a federated credential.
    pub fn federated(mut self, credential: FederatedCredential) -> Self {
        self.federated_credentials.push(credential);
        self
    }

    /// Sets its ARM access.
    pub fn arm_access(mut self, access: ArmAccess) -> Self {
        self.arm_access = access;
        self
    }

    /// Sets the groups in its tokens.
    pub fn groups(mut self, groups: Vec<String>) -> Self {
        self.groups = groups;
        self
    }

    /// Makes a managed identity the system-assigned one.
    pub fn system_assigned(mut self) -> Self {
        let info =
            self.managed_identity.get_or_insert(ManagedIdentityInfo { resource_id: None, system_assigned: true });
        info.system_assigned = true;
        self
    }

    /// Sets a managed identity's ARM resource id.
    pub fn resource_id(mut self, resource_id: impl Into<String>) -> Self {
        let info =
            self.managed_identity.get_or_insert(ManagedIdentityInfo { resource_id: None, system_assigned: false });
        info.resource_id = Some(resource_id.into());
        self
    }
}

/// A stored principal with its replication state.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub principal: Principal,
    /// Lookups by the resource provider that still fail ("not found")
    /// before the object is visible (Entra replication delay).
    pub hidden_lookups: u32,
}

/// All principals, by lower-case object id.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub entries: BTreeMap<String, Entry>,
    /// External token issuers and the signing keys they publish (their
    /// JWKS), as Entra reads them from the issuer's discovery document.
    pub trusted_issuers: Vec<(String, Vec<super::jwt::Jwk>)>,
}

impl Directory {
    pub fn insert(&mut self, principal: Principal, hidden_lookups: u32) {
        self.entries.insert(principal.object_id.to_ascii_lowercase(), Entry { principal, hidden_lookups });
    }

    pub fn get(&self, object_id: &str) -> Option<&Principal> {
        self.entries.get(&object_id.to_ascii_lowercase()).map(|e| &e.principal)
    }

    pub fn get_mut(&mut self, object_id: &str) -> Option<&mut Principal> {
        self.entries.get_mut(&object_id.to_ascii_lowercase()).map(|e| &mut e.principal)
    }

    /// Looks `object_id` up as the resource provider would: a principal
    /// still replicating counts one attempt and is not found.
    pub fn resolve_for_assignment(&mut self, object_id: &str) -> bool {
        match self.entries.get_mut(&object_id.to_ascii_lowercase()) {
            Some(entry) if entry.hidden_lookups > 0 => {
                entry.hidden_lookups -= 1;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    pub fn by_client_id(&self, client_id: &str) -> Option<&Principal> {
        self.entries
            .values()
            .map(|e| &e.principal)
            .find(|p| p.client_id.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(client_id)))
    }

    pub fn managed_identities(&self) -> impl Iterator<Item = &Principal> {
        self.entries.values().map(|e| &e.principal).filter(|p| p.managed_identity.is_some())
    }
}
