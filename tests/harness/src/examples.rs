//! `deploy/examples/` against the doubles: what the quickstart and the
//! end-to-end tests both need to run the examples unchanged except for
//! where they point.
//!
//! MongoDB: the examples' placeholder Secrets get the double's URI and
//! SCRAM identity.
//!
//! Cosmos DB: an [`ArmDouble`] (real HTTPS, Entra token endpoint and ARM)
//! that knows exactly what the examples name — the tenant, the workload
//! identity application (client id) federated with the operator's
//! ServiceAccount, the account (subscription, resource group, name) and
//! every subject of the example bindings as a directory object. The
//! operator process gets `AZURE_FEDERATED_TOKEN_FILE` (a token the double
//! minted for the operator's ServiceAccount, as the workload identity
//! webhook would project it), and the CosmosTarget gets `spec.cloud`
//! pointing at the double with its CA from a Secret in the operator's
//! namespace — the settings a private or sovereign cloud needs too.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow};
use dbgrant_doubles::{
    arm::{
        ARM_RESOURCE, Account, AccountRef, ArmAccess, ArmDouble, ArmDoubleConfig, FEDERATED_TOKEN_AUDIENCE,
        FederatedCredential, Principal, TestPki, new_guid,
    },
    mongo::MongoDouble,
};
use serde_json::{Value, json};

use crate::{manifests, paths};

/// Name of the Secret (in the operator's namespace) holding the ARM
/// double's CA certificate.
pub const ARM_CA_SECRET: &str = "dbgrant-arm-double-ca";
/// Key of the CA certificate in [`ARM_CA_SECRET`].
pub const ARM_CA_KEY: &str = "ca.crt";
/// How long the federated token file stays valid (the quickstart may run
/// for a while; a kubelet would refresh it instead).
pub const FEDERATED_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

// === MongoDB ===

/// Point the MongoDB examples' placeholder Secrets at `mongo`, whose admin
/// is `user`/`password`.
pub fn point_mongo_examples(docs: &mut [Value], mongo: &MongoDouble, user: &str, password: &str) {
    if let Some(s) = manifests::find_mut(docs, "Secret", "orders-mongo-connection") {
        s["stringData"] = json!({"uri": mongo.uri()});
    }
    if let Some(s) = manifests::find_mut(docs, "Secret", "orders-mongo-scram") {
        s["stringData"] = json!({"username": user, "password": password});
    }
}

// === Cosmos DB ===

/// A subject of an example binding (a directory object the double must
/// know).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExampleSubject {
    /// `Group`, `User` or `ServicePrincipal`.
    pub kind: String,
    /// Entra object id.
    pub object_id: String,
    /// Display name, if the example gives one.
    pub display_name: Option<String>,
}

/// What `deploy/examples/cosmos-*.yaml` name, read from the files.
#[derive(Clone, Debug)]
pub struct CosmosExamples {
    /// The CosmosTarget's name.
    pub target: String,
    /// Its account.
    pub account: AccountRef,
    /// `spec.credential.workloadIdentity.tenantId`.
    pub tenant_id: String,
    /// `spec.credential.workloadIdentity.clientId`.
    pub client_id: String,
    /// Every subject of every CosmosRoleBinding, once each.
    pub subjects: Vec<ExampleSubject>,
}

impl CosmosExamples {
    /// Read the example files.
    pub fn load() -> Result<Self> {
        let target_docs = manifests::example("cosmos-target.yaml")?;
        let target = target_docs
            .iter()
            .find(|d| manifests::kind(d) == "CosmosTarget")
            .ok_or_else(|| anyhow!("cosmos-target.yaml has no CosmosTarget"))?;
        let spec = &target["spec"];
        let field = |v: &Value, what: &str| {
            v.as_str().map(str::to_string).ok_or_else(|| anyhow!("cosmos-target.yaml: {what} missing"))
        };
        let wi = &spec["credential"]["workloadIdentity"];
        let mut subjects: Vec<ExampleSubject> = Vec::new();
        for b in
            manifests::example("cosmos-rolebindings.yaml")?.iter().filter(|d| manifests::kind(d) == "CosmosRoleBinding")
        {
            for s in b["spec"]["subjects"].as_array().into_iter().flatten() {
                let subject = ExampleSubject {
                    kind: field(&s["kind"], "subject kind")?,
                    object_id: field(&s["objectId"], "subject objectId")?,
                    display_name: s["displayName"].as_str().map(str::to_string),
                };
                if !subjects.iter().any(|x| x.object_id.eq_ignore_ascii_case(&subject.object_id)) {
                    subjects.push(subject);
                }
            }
        }
        Ok(Self {
            target: manifests::name(target).to_string(),
            account: AccountRef::new(
                field(&spec["subscriptionId"], "spec.subscriptionId")?,
                field(&spec["resourceGroup"], "spec.resourceGroup")?,
                field(&spec["accountName"], "spec.accountName")?,
            ),
            tenant_id: field(&wi["tenantId"], "spec.credential.workloadIdentity.tenantId")?,
            client_id: field(&wi["clientId"], "spec.credential.workloadIdentity.clientId")?,
            subjects,
        })
    }
}

/// A directory object for an example subject.
pub fn principal_for(subject: &ExampleSubject) -> Principal {
    let p = match subject.kind.as_str() {
        "Group" => Principal::group(&subject.object_id),
        "User" => Principal::user(&subject.object_id),
        // Service principals in the examples are managed identities
        // (`mi-...`); either kind can be assigned roles.
        _ => Principal::managed_identity(new_guid(), &subject.object_id),
    };
    p.named(subject.display_name.clone().unwrap_or_else(|| subject.object_id.clone()))
}

/// Where a [`CosmosDouble`] serves and who issues the operator's tokens.
#[derive(Clone, Debug, Default)]
pub struct CosmosDoubleOptions {
    /// Address to listen on (default `127.0.0.1:0`); its IP also goes into
    /// the double's certificate, e.g. the host's address on a pod network.
    pub listen: Option<SocketAddr>,
    /// The issuer of the operator's federated tokens and its published key
    /// set (JWKS), e.g. a kube-apiserver's ServiceAccount tokens as a
    /// kubelet projects them (see [`crate::Cluster::service_account_issuer`]).
    /// Default: the double mints the token itself ([`CosmosDouble::token_file`]).
    pub issuer: Option<(String, Value)>,
}

/// An ARM + Entra double set up for the Cosmos examples, and how the
/// operator reaches it.
pub struct CosmosDouble {
    /// The running double.
    pub double: ArmDouble,
    /// What the examples name.
    pub examples: CosmosExamples,
    /// Object id of the workload identity application's service principal
    /// (dbgrant's identity in ARM).
    pub operator_object_id: String,
    /// The federated token file the operator reads.
    pub token_file: PathBuf,
}

impl CosmosDouble {
    /// Start a double serving the examples' tenant, with their workload
    /// identity application federated with `operator_user`
    /// (`system:serviceaccount:<ns>:<sa>`, the `sub` of the token the
    /// operator presents), their account, and their subjects.
    pub async fn start(operator_user: &str) -> Result<Self> {
        Self::start_with(operator_user, CosmosDoubleOptions::default()).await
    }

    /// [`CosmosDouble::start`], listening and trusting as `options` say.
    pub async fn start_with(operator_user: &str, options: CosmosDoubleOptions) -> Result<Self> {
        let examples = CosmosExamples::load()?;
        let operator_object_id = new_guid();
        let issuer = options.issuer.as_ref().map(|(i, _)| i.clone()).unwrap_or_default();
        let mut config = ArmDoubleConfig { tenant_id: examples.tenant_id.clone(), ..Default::default() }
            .principal(
                Principal::application(&examples.client_id, &operator_object_id)
                    .named("dbgrant (workload identity)")
                    .federated(FederatedCredential::new(issuer, operator_user))
                    .arm_access(ArmAccess::Write),
            )
            .account(Account::new(examples.account.clone(), "westeurope"));
        if let Some(listen) = options.listen {
            config.listen = listen;
            let ip = listen.ip().to_string();
            config.pki = Some(TestPki::generate_for(&["localhost", "127.0.0.1", &ip])?);
        }
        for s in &examples.subjects {
            config = config.principal(principal_for(s));
        }
        let double = ArmDouble::start(config).await.context("starting the ARM + Entra double")?;
        if let Some((issuer, jwks)) = &options.issuer {
            double.trust_issuer(issuer, jwks)?;
        }
        let dir = paths::run_dir("arm-double")?;
        let token_file = dir.join("azure-identity-token");
        let token =
            double.issue_federated_token_with(operator_user, FEDERATED_TOKEN_AUDIENCE, FEDERATED_TOKEN_LIFETIME);
        std::fs::write(&token_file, token).with_context(|| format!("writing {}", token_file.display()))?;
        Ok(Self { double, examples, operator_object_id, token_file })
    }

    /// Environment the operator process needs: the projected token file,
    /// as the workload identity webhook sets it (tenant and client id come
    /// from the CosmosTarget, the authority host from `spec.cloud`).
    pub fn operator_env(&self) -> Vec<(String, String)> {
        vec![("AZURE_FEDERATED_TOKEN_FILE".into(), self.token_file.display().to_string())]
    }

    /// `spec.cloud` for a CosmosTarget that talks to this double and trusts
    /// its CA from [`ARM_CA_SECRET`].
    pub fn cloud(&self) -> Value {
        json!({
            "armEndpoint": self.double.arm_endpoint(),
            "authorityHost": self.double.authority_host(),
            // The double's tokens carry the public-cloud ARM audience.
            "armAudience": ARM_RESOURCE,
            "caSecretRef": {"name": ARM_CA_SECRET, "key": ARM_CA_KEY},
        })
    }

    /// The Secret with the double's CA certificate, in `namespace` (the
    /// operator's).
    pub fn ca_secret(&self, namespace: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": ARM_CA_SECRET, "namespace": namespace},
            "stringData": {ARM_CA_KEY: self.double.ca_cert_pem()},
        })
    }

    /// Point every CosmosTarget in `docs` at this double (its credential
    /// stays as written: workload identity with the example's ids).
    pub fn point_examples(&self, docs: &mut [Value]) {
        for d in docs.iter_mut().filter(|d| manifests::kind(d) == "CosmosTarget") {
            d["spec"]["cloud"] = self.cloud();
        }
    }

    /// The examples' account's custom role definitions, as (name, roleName,
    /// data actions, assignable scopes relative to the account).
    pub fn custom_definitions(&self, account: &AccountRef) -> Vec<DefinitionRow> {
        let mut rows: Vec<DefinitionRow> = self
            .double
            .role_definitions(account)
            .into_iter()
            .filter(|d| !d.built_in)
            .map(|d| DefinitionRow {
                name: d.name.clone(),
                role_name: d.role_name.clone(),
                data_actions: d.data_actions.clone(),
                assignable_scopes: d.assignable_scopes.iter().map(|s| relative_scope(account, s)).collect(),
            })
            .collect();
        rows.sort_by(|a, b| a.role_name.cmp(&b.role_name));
        rows
    }

    /// The role assignments on `account`, as (principal, role, scope),
    /// sorted.
    pub fn grants(&self, account: &AccountRef) -> Vec<GrantRow> {
        let definitions = self.double.role_definitions(account);
        let mut rows: Vec<GrantRow> = self
            .double
            .role_assignments(account)
            .into_iter()
            .map(|a| {
                let def_name = a.role_definition_id.rsplit('/').next().unwrap_or_default().to_string();
                let role_name = definitions
                    .iter()
                    .find(|d| d.name.eq_ignore_ascii_case(&def_name))
                    .map(|d| d.role_name.clone())
                    .unwrap_or_else(|| format!("(unknown definition {def_name})"));
                let principal_name = self.double.principal(&a.principal_id).map(|p| p.display_name);
                GrantRow {
                    assignment: a.name.clone(),
                    principal_id: a.principal_id.to_ascii_lowercase(),
                    principal_name,
                    role_definition: def_name,
                    role_name,
                    scope: relative_scope(account, &a.scope),
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.principal_id, &a.scope, &a.role_name).cmp(&(&b.principal_id, &b.scope, &b.role_name)));
        rows
    }
}

/// A custom role definition as the double holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionRow {
    /// Resource name (GUID).
    pub name: String,
    /// `roleName`.
    pub role_name: String,
    /// Data actions.
    pub data_actions: Vec<String>,
    /// Assignable scopes relative to the account (`/` is the account).
    pub assignable_scopes: Vec<String>,
}

/// A role assignment as the double holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRow {
    /// Assignment name (GUID).
    pub assignment: String,
    /// Principal object id, lower case.
    pub principal_id: String,
    /// The principal's display name in the double's directory.
    pub principal_name: Option<String>,
    /// Role definition name (GUID).
    pub role_definition: String,
    /// The role definition's `roleName`.
    pub role_name: String,
    /// Scope relative to the account (`/` is the account).
    pub scope: String,
}

/// `scope` relative to `account` (`/` for the account itself,
/// `/dbs/<db>[/colls/<c>]` below it); other scopes as they are.
pub fn relative_scope(account: &AccountRef, scope: &str) -> String {
    let id = account.id();
    if scope.get(..id.len()).is_some_and(|p| p.eq_ignore_ascii_case(&id)) {
        let rest = scope[id.len()..].trim_end_matches('/');
        if rest.is_empty() { "/".into() } else { rest.to_string() }
    } else {
        scope.to_string()
    }
}
