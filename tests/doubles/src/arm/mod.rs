//! An Azure Resource Manager + Microsoft Entra ID test double: one real
//! HTTPS server (rustls, HTTP/1.1, certificate for `127.0.0.1` and
//! `localhost` from a [`TestPki`]) that the real `azure_identity` 1.x
//! credentials get tokens from and an `azure_core` pipeline calls ARM on.
//!
//! Entra (what `azure_identity` 1.0 sends, checked against its source):
//! - `POST /{tenant}/oauth2/v2.0/token`, form-encoded:
//!   `grant_type=client_credentials`, `client_id`, `scope=<resource>/.default`,
//!   and either `client_secret` (`ClientSecretCredential`) or
//!   `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
//!   with `client_assertion`. The assertion is a JWT signed with a client
//!   certificate's key (`ClientCertificateCredential`: RS256, header `x5t` =
//!   standard-base64 SHA-1 thumbprint, claims `aud` = token URL, `iss` =
//!   `sub` = client id, `jti`, `nbf`, `exp`) or a federated token read from
//!   a file (`WorkloadIdentityCredential`). The authority host comes from
//!   `ClientOptions.cloud` (`CloudConfiguration::Custom`) or
//!   `AZURE_AUTHORITY_HOST` and must be https.
//! - Managed identity: `ManagedIdentityCredential` uses the App Service
//!   protocol when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set (and
//!   `IDENTITY_SERVER_THUMBPRINT`, `IMDS_ENDPOINT`, `MSI_ENDPOINT` are not):
//!   `GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=<scope minus
//!   /.default>[&client_id=|&object_id=|&msi_res_id=]` with headers
//!   `metadata: true` and `x-identity-header: $IDENTITY_HEADER`; it expects
//!   `{access_token, expires_on: "<unix seconds>", token_type, resource}`.
//!   Point `IDENTITY_ENDPOINT` at [`ArmDouble::managed_identity_endpoint`].
//!   (The IMDS form at `/metadata/identity/oauth2/token` is served too, but
//!   the credential hard-codes `http://169.254.169.254` for it.)
//!
//! What the double checks: tenant, client id, secret (`invalid_client`
//! AADSTS7000215), scope (`/.default`, one resource, a known resource),
//! certificate assertions (structure, `alg`, `x5t`/`x5t#S256`/`kid` naming a
//! registered certificate, the signature with that certificate's public
//! key, `aud`, `iss`/`sub`, `jti`, time range), federated tokens (a
//! federated credential on the app matching `iss`, `sub` and `aud`; the
//! signature when the double minted the token, or trust by
//! [`ArmDouble::trust_issuer`] for external issuers), and the
//! managed-identity secret header. Access tokens are ES256 JWTs the double
//! stores: ARM accepts only stored, unexpired ones whose `aud` is an ARM
//! audience (401 with `WWW-Authenticate` otherwise), and authorizes the
//! caller by its principal's [`ArmAccess`] (403 `AuthorizationFailed`).
//!
//! ARM (`Microsoft.DocumentDB`): account `GET`;
//! `sqlRoleDefinitions` and `sqlRoleAssignments` `GET`/`PUT`/`DELETE` and
//! lists (`{"value": [...]}`); built-in Data Reader (`...0001`) and Data
//! Contributor (`...0002`) always present. `api-version` is required and
//! must be one of [`ArmDoubleConfig::api_versions`]. `PUT`/`DELETE` are
//! long-running (202, `{"status":"Enqueued"}`, `Azure-AsyncOperation` and
//! `Location`); the status goes Enqueued → Dequeued → Succeeded on the
//! `lro_polls`-th poll and only then does the resource change. While an
//! operation runs, other writes to the account get 412. Validation:
//! GUID names, scopes within the account and the definition's assignable
//! scopes, existing role definition, registered principal (400 "principal
//! not found", with a replication-delay knob), only `roleDefinitionId`
//! changes in place, duplicates 409, known data actions (wildcards
//! `containers/*`, `items/*`; `notDataActions` refused), 2,000 assignments
//! and 100 custom definitions per account. Throttling: per subscription
//! and principal token buckets for writes (200, +10/s) and reads, with
//! `x-ms-ratelimit-remaining-subscription-{reads,writes}`; per account 500
//! writes per 5 minutes; both 429 with `Retry-After`.
//!
//! Not modelled: ARM RBAC beyond [`ArmAccess`], other resource types,
//! paging, `PATCH`, ETags, multiple tenants, token revocation by Entra
//! (use [`ArmDouble::revoke_tokens`]), Conditional Access/CAE challenges,
//! external issuers' signatures.

mod actions;
mod directory;
mod entra;
mod faults;
mod journal;
mod jwt;
mod model;
mod rp;
mod server;
mod state;
mod throttle;

pub use crate::mongo::{PkiFiles, TestPki};
pub use actions::{DATA_ACTIONS, DATA_CONTRIBUTOR_ACTIONS, DATA_READER_ACTIONS, action_covers, is_valid_data_action};
pub use directory::{ArmAccess, FederatedCredential, ManagedIdentityInfo, Principal, PrincipalKind};
pub use faults::{Fault, FaultAction, FaultTarget};
pub use journal::{Counters, RequestKind, RequestRecord};
pub use model::{
    ACCOUNT_TYPE, Account, AccountRef, DATA_CONTRIBUTOR_ID, DATA_READER_ID, ROLE_ASSIGNMENT_TYPE, ROLE_DEFINITION_TYPE,
    RoleAssignment, RoleDefinition,
};
pub use state::{Change, OperationInfo, OperationStatus, TokenInfo};
pub use throttle::{BucketLimit, WindowLimit};

use anyhow::{Context, Result, anyhow};
use server::{Ctx, Shared};
use state::{State, lock};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Tenant the double serves.
pub const DEFAULT_TENANT_ID: &str = "d0b1d0b1-7e57-4e57-8e57-7e57d0b1d0b1";
/// Client id of the ready-made application (secret, workload identity).
pub const DEFAULT_CLIENT_ID: &str = "c11e0001-7e57-4e57-8e57-7e57d0b1d0b1";
/// Object id of the ready-made application's service principal.
pub const DEFAULT_OBJECT_ID: &str = "0b1ec001-7e57-4e57-8e57-7e57d0b1d0b1";
/// Client secret of the ready-made application.
pub const DEFAULT_CLIENT_SECRET: &str = "dbgrant-double-secret~7e57.Qx";
/// Client id of the ready-made (system-assigned) managed identity.
pub const DEFAULT_MI_CLIENT_ID: &str = "c11e0002-7e57-4e57-8e57-7e57d0b1d0b1";
/// Object id of the ready-made managed identity.
pub const DEFAULT_MI_OBJECT_ID: &str = "0b1ec002-7e57-4e57-8e57-7e57d0b1d0b1";
/// Subscription of the ready-made account.
pub const DEFAULT_SUBSCRIPTION_ID: &str = "a0b1c2d3-7e57-4e57-8e57-7e57d0b1d0b1";
/// Resource group of the ready-made account.
pub const DEFAULT_RESOURCE_GROUP: &str = "rg-dbgrant";
/// Name of the ready-made account.
pub const DEFAULT_ACCOUNT: &str = "dbgrant-test";
/// Region of the ready-made account.
pub const DEFAULT_LOCATION: &str = "westus";
/// `sub` of the ready-made application's federated credential (a
/// Kubernetes service account).
pub const DEFAULT_WORKLOAD_SUBJECT: &str = "system:serviceaccount:dbgrant-system:dbgrant";
/// `aud` federated tokens carry for Entra.
pub const FEDERATED_TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";
/// ARM's resource (token audience).
pub const ARM_RESOURCE: &str = "https://management.azure.com";
/// The scope to ask for an ARM token with.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// The api-version clients should pin.
pub const DEFAULT_API_VERSION: &str = "2024-11-15";
/// GA api-versions accepted by default.
pub const DEFAULT_API_VERSIONS: &[&str] = &["2024-11-15", "2025-04-15"];

/// A random version-4 GUID, lower case.
pub fn new_guid() -> String {
    let mut b = [0u8; 16];
    let rng = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&rng, &mut b).is_err() {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        b = nanos.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// How to start an [`ArmDouble`].
#[derive(Debug, Clone)]
pub struct ArmDoubleConfig {
    /// Address to listen on (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// TLS material; `None` generates a fresh [`TestPki`].
    pub pki: Option<TestPki>,
    /// The one tenant served.
    pub tenant_id: String,
    /// Accepted `api-version`s.
    pub api_versions: Vec<String>,
    /// Token audiences ARM accepts (compared without trailing `/`,
    /// case-insensitively). Default: `https://management.azure.com` and
    /// `https://management.core.windows.net`.
    pub arm_audiences: Vec<String>,
    /// Other resources tokens may be issued for (besides the ARM audiences
    /// and `api://<client id>` of registered apps). Default:
    /// `https://cosmos.azure.com`.
    pub resources: Vec<String>,
    /// Time every request takes before it is handled.
    pub latency: Duration,
    /// Status polls until an operation succeeds; 0 answers `PUT`/`DELETE`
    /// synchronously (200/201, no lock held).
    pub lro_polls: u32,
    /// `Retry-After` on 202s and running-operation polls (none by default).
    pub lro_retry_after: Option<u64>,
    /// Also complete operations this long after they were accepted, polled
    /// or not (none by default: only polls advance them).
    pub lro_complete_after: Option<Duration>,
    /// Lifetime of issued access tokens (default 1 hour).
    pub token_lifetime: Duration,
    /// ARM write bucket per subscription and principal (200, +10/s).
    pub write_bucket: BucketLimit,
    /// ARM read bucket per subscription and principal (250, +25/s).
    pub read_bucket: BucketLimit,
    /// Control-plane writes per account (500 per 5 minutes).
    pub account_writes: WindowLimit,
    /// Role assignments per account (2,000).
    pub max_role_assignments: usize,
    /// Custom role definitions per account (100).
    pub max_role_definitions: usize,
    /// The managed-identity endpoint's secret (`IDENTITY_HEADER`).
    pub identity_header: String,
    /// Directory objects. Federated credentials with an empty issuer mean
    /// "this double's issuer" ([`ArmDouble::oidc_issuer`]).
    pub principals: Vec<Principal>,
    /// Database accounts.
    pub accounts: Vec<Account>,
}

impl Default for ArmDoubleConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pki: None,
            tenant_id: DEFAULT_TENANT_ID.into(),
            api_versions: DEFAULT_API_VERSIONS.iter().map(|s| s.to_string()).collect(),
            arm_audiences: vec![ARM_RESOURCE.into(), "https://management.core.windows.net".into()],
            resources: vec!["https://cosmos.azure.com".into()],
            latency: Duration::ZERO,
            lro_polls: 2,
            lro_retry_after: None,
            lro_complete_after: None,
            token_lifetime: Duration::from_secs(3600),
            write_bucket: BucketLimit::new(200, 10.0),
            read_bucket: BucketLimit::new(250, 25.0),
            account_writes: WindowLimit::new(500, Duration::from_secs(300)),
            max_role_assignments: 2000,
            max_role_definitions: 100,
            identity_header: format!("dbgrant-double-identity-header-{}", &new_guid()[..8]),
            principals: vec![
                Principal::application(DEFAULT_CLIENT_ID, DEFAULT_OBJECT_ID)
                    .named("dbgrant-operator")
                    .secret(DEFAULT_CLIENT_SECRET)
                    .federated(FederatedCredential::new("", DEFAULT_WORKLOAD_SUBJECT))
                    .arm_access(ArmAccess::Write),
                Principal::managed_identity(DEFAULT_MI_CLIENT_ID, DEFAULT_MI_OBJECT_ID)
                    .named("dbgrant-managed-identity")
                    .system_assigned()
                    .arm_access(ArmAccess::Write),
            ],
            accounts: vec![Account::new(
                AccountRef::new(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP, DEFAULT_ACCOUNT),
                DEFAULT_LOCATION,
            )],
        }
    }
}

impl ArmDoubleConfig {
    /// Adds a principal.
    pub fn principal(mut self, principal: Principal) -> Self {
        self.principals.push(principal);
        self
    }

    /// Adds an account.
    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    /// Sets the per-request latency.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the polls an operation takes (0: synchronous writes).
    pub fn lro_polls(mut self, polls: u32) -> Self {
        self.lro_polls = polls;
        self
    }

    /// Sets the ARM write bucket.
    pub fn write_bucket(mut self, capacity: u32, refill_per_sec: f64) -> Self {
        self.write_bucket = BucketLimit::new(capacity, refill_per_sec);
        self
    }

    /// Sets the per-account write budget.
    pub fn account_writes(mut self, max: u32, window: Duration) -> Self {
        self.account_writes = WindowLimit::new(max, window);
        self
    }

    /// Uses `pki` instead of a generated one.
    pub fn pki(mut self, pki: TestPki) -> Self {
        self.pki = Some(pki);
        self
    }
}

/// A running double. Dropping it stops the server (without waiting);
/// [`ArmDouble::shutdown`] stops it and waits.
pub struct ArmDouble {
    addr: SocketAddr,
    pki: TestPki,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ArmDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmDouble").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl ArmDouble {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(mut config: ArmDoubleConfig) -> Result<Self> {
        let pki = match config.pki.take() {
            Some(pki) => pki,
            None => TestPki::generate()?,
        };
        let acceptor = server::acceptor(&pki)?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let host = match addr.ip() {
            ip if ip.is_unspecified() || ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let ctx = Ctx {
            base_url: format!("https://{host}:{}", addr.port()),
            tenant_id: config.tenant_id.clone(),
            signer: jwt::Signer::generate()?,
        };
        let principals = std::mem::take(&mut config.principals);
        let accounts = std::mem::take(&mut config.accounts);
        let mut state = State::new(config);
        for p in principals {
            state.directory.insert(p, 0);
        }
        for a in accounts {
            state.add_account(a);
        }
        let shared = Arc::new(Shared {
            ctx,
            state: Mutex::new(state),
            refuse: AtomicBool::new(false),
            open_connections: AtomicUsize::new(0),
            kill: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
        });
        let task = tokio::spawn(server::run(listener, shared.clone(), acceptor));
        Ok(Self { addr, pki, shared, task: Some(task) })
    }

    /// Starts a double with the default configuration.
    pub async fn start_default() -> Result<Self> {
        Self::start(ArmDoubleConfig::default()).await
    }

    /// The state, with time-based operation completion applied.
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = lock(&self.shared.state);
        state.settle();
        state
    }

    // ------------------------------------------------------------ where

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`: the ARM endpoint (no trailing slash).
    pub fn arm_endpoint(&self) -> String {
        self.shared.ctx.base_url.clone()
    }

    /// The Entra authority host (same server): give it to
    /// `CloudConfiguration::Custom` or `AZURE_AUTHORITY_HOST`.
    pub fn authority_host(&self) -> String {
        self.shared.ctx.base_url.clone()
    }

    /// `https://127.0.0.1:<port>/<tenant>/oauth2/v2.0/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.shared.ctx.base_url, self.shared.ctx.tenant_id)
    }

    /// The App Service style managed-identity endpoint (`IDENTITY_ENDPOINT`).
    pub fn managed_identity_endpoint(&self) -> String {
        format!("{}/msi/token", self.shared.ctx.base_url)
    }

    /// The IMDS style endpoint (needs `Metadata: true`).
    pub fn imds_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.shared.ctx.base_url)
    }

    /// The secret the managed-identity endpoint wants (`IDENTITY_HEADER`).
    pub fn managed_identity_header(&self) -> String {
        self.state().config.identity_header.clone()
    }

    /// `iss` of access tokens (`<base>/<tenant>/v2.0`); its OpenID
    /// configuration and JWKS are served.
    pub fn token_issuer(&self) -> String {
        self.shared.ctx.issuer()
    }

    /// `iss` of the federated tokens the double mints (`<base>/oidc`),
    /// with `/.well-known/openid-configuration` and `/oidc/keys`.
    pub fn oidc_issuer(&self) -> String {
        self.shared.ctx.oidc_issuer()
    }

    /// The tenant.
    pub fn tenant_id(&self) -> String {
        self.shared.ctx.tenant_id.clone()
    }

    /// The TLS material (the CA signs the server certificate).
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The CA certificate clients must trust, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.pki.ca_cert_pem
    }

    /// Writes the CA certificate to `dir/ca.pem` (and `client.pem`).
    pub fn write_ca_file(&self, dir: &Path) -> std::io::Result<PkiFiles> {
        self.pki.write_files(dir)
    }

    /// The ready-made account.
    pub fn default_account() -> AccountRef {
        AccountRef::new(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP, DEFAULT_ACCOUNT)
    }

    // ------------------------------------------------------- directory

    /// Adds or replaces a principal.
    pub fn add_principal(&self, principal: Principal) {
        self.state().directory.insert(principal, 0);
    }

    /// Adds or replaces a principal that role-assignment `PUT`s do not
    /// find for the first `failed_lookups` attempts (Entra replication).
    pub fn add_principal_replicating(&self, principal: Principal, failed_lookups: u32) {
        self.state().directory.insert(principal, failed_lookups);
    }

    /// Removes a principal (its tokens stay valid until they expire).
    pub fn remove_principal(&self, object_id: &str) -> Option<Principal> {
        self.state().directory.entries.remove(&object_id.to_ascii_lowercase()).map(|e| e.principal)
    }

    /// One principal.
    pub fn principal(&self, object_id: &str) -> Option<Principal> {
        self.state().directory.get(object_id).cloned()
    }

    /// Sets a principal's ARM access.
    pub fn set_arm_access(&self, object_id: &str, access: ArmAccess) -> Result<()> {
        let mut state = self.state();
        let p = state.directory.get_mut(object_id).ok_or_else(|| anyhow!("no principal {object_id}"))?;
        p.arm_access = access;
        Ok(())
    }

    /// Adds a client secret to the application with `client_id`.
    pub fn add_client_secret(&self, client_id: &str, secret: &str) -> Result<()> {
        self.edit_app(client_id, |p| p.secrets.push(secret.to_string()))
    }

    /// Removes every client secret of the application (rotation).
    pub fn clear_client_secrets(&self, client_id: &str) -> Result<()> {
        self.edit_app(client_id, |p| p.secrets.clear())
    }

    /// Registers a client certificate (PEM) on the application.
    pub fn add_client_certificate(&self, client_id: &str, cert_pem: &str) -> Result<()> {
        jwt::ClientCert::from_pem(cert_pem)?;
        self.edit_app(client_id, |p| p.certificates.push(cert_pem.to_string()))
    }

    /// Adds a federated credential to the application (empty issuer: this
    /// double's).
    pub fn add_federated_credential(&self, client_id: &str, credential: FederatedCredential) -> Result<()> {
        self.edit_app(client_id, |p| p.federated_credentials.push(credential))
    }

    fn edit_app(&self, client_id: &str, edit: impl FnOnce(&mut Principal)) -> Result<()> {
        let mut state = self.state();
        let object_id = state
            .directory
            .by_client_id(client_id)
            .map(|p| p.object_id.clone())
            .ok_or_else(|| anyhow!("no application {client_id}"))?;
        if let Some(p) = state.directory.get_mut(&object_id) {
            edit(p);
        }
        Ok(())
    }

    /// Accepts federated tokens from `issuer` signed by a key of `jwks`
    /// (the issuer's published key set, e.g. a kube-apiserver's
    /// `/openid/v1/jwks`): what Entra fetches through the `jwks_uri` of
    /// `<issuer>/.well-known/openid-configuration`. Tokens from the issuer
    /// with any other signature are refused (AADSTS700027).
    pub fn trust_issuer(&self, issuer: &str, jwks: &serde_json::Value) -> Result<()> {
        let keys = jwt::Jwk::parse_set(jwks).with_context(|| format!("the JWKS of {issuer}"))?;
        let mut state = self.state();
        state.directory.trusted_issuers.retain(|(i, _)| i.trim_end_matches('/') != issuer.trim_end_matches('/'));
        state.directory.trusted_issuers.push((issuer.to_string(), keys));
        Ok(())
    }

    /// This double's own issuer keys as a JWKS document (what its
    /// `jwks_uri` serves).
    pub fn jwks(&self) -> serde_json::Value {
        self.shared.ctx.signer.jwks()
    }

    // ----------------------------------------------------------- tokens

    /// Mints a federated token (the content of a projected service-account
    /// token file) for `subject`, from [`oidc_issuer`](Self::oidc_issuer),
    /// audience `api://AzureADTokenExchange`, valid for an hour.
    pub fn issue_federated_token(&self, subject: &str) -> String {
        entra::federated_token(&self.shared.ctx, subject, FEDERATED_TOKEN_AUDIENCE, Duration::from_secs(3600))
    }

    /// Like [`issue_federated_token`](Self::issue_federated_token) with any
    /// audience and lifetime.
    pub fn issue_federated_token_with(&self, subject: &str, audience: &str, lifetime: Duration) -> String {
        entra::federated_token(&self.shared.ctx, subject, audience, lifetime)
    }

    /// Issues an access token for a registered principal directly, without
    /// an Entra flow (`grant` = `direct`).
    pub fn issue_access_token(&self, object_id: &str, resource: &str) -> Result<String> {
        let mut state = self.state();
        let principal = state.directory.get(object_id).cloned().ok_or_else(|| anyhow!("no principal {object_id}"))?;
        Ok(entra::issue(&mut state, &self.shared.ctx, &principal, resource, "direct").0)
    }

    /// What an issued access token stands for (`None` if the double did
    /// not issue it or it was revoked).
    pub fn token_info(&self, token: &str) -> Option<TokenInfo> {
        self.state().tokens.get(token).cloned()
    }

    /// Every token issued (and not revoked), oldest first.
    pub fn issued_tokens(&self) -> Vec<TokenInfo> {
        let mut all: Vec<TokenInfo> = self.state().tokens.values().cloned().collect();
        all.sort_by_key(|t| t.issued_at);
        all
    }

    /// Makes every issued token expired (ARM answers 401
    /// `ExpiredAuthenticationToken`).
    pub fn expire_tokens(&self) {
        let past = SystemTime::now() - Duration::from_secs(1);
        for t in self.state().tokens.values_mut() {
            t.expires_at = past;
        }
    }

    /// Forgets every issued token (ARM answers 401
    /// `InvalidAuthenticationToken`).
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }

    /// Sets the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().config.token_lifetime = lifetime;
    }

    // --------------------------------------------------------- accounts

    /// Adds an account (no-op if it exists).
    pub fn add_account(&self, account: Account) {
        self.state().add_account(account);
    }

    /// Custom and built-in role definitions of `account` (built-ins first).
    pub fn role_definitions(&self, account: &AccountRef) -> Vec<RoleDefinition> {
        self.state().account(account).map(|a| a.all_definitions()).unwrap_or_default()
    }

    /// One role definition.
    pub fn role_definition(&self, account: &AccountRef, name: &str) -> Option<RoleDefinition> {
        self.state().account(account).and_then(|a| a.definition(name))
    }

    /// Role assignments of `account`, by name.
    pub fn role_assignments(&self, account: &AccountRef) -> Vec<RoleAssignment> {
        self.state().account(account).map(|a| a.assignments.values().cloned().collect()).unwrap_or_default()
    }

    /// One role assignment.
    pub fn role_assignment(&self, account: &AccountRef, name: &str) -> Option<RoleAssignment> {
        self.state().account(account).and_then(|a| a.assignments.get(&name.to_ascii_lowercase()).cloned())
    }

    /// Creates or replaces a custom role definition out of band, without
    /// validation (to plant foreign definitions).
    pub fn insert_role_definition(&self, account: &AccountRef, definition: RoleDefinition) -> Result<()> {
        let mut state = self.state();
        let acct = state.account_mut(account).ok_or_else(|| anyhow!("no account {account}"))?;
        acct.apply(&Change::PutDefinition(definition));
        Ok(())
    }

    /// Creates or replaces a role assignment out of band, without
    /// validation (to plant foreign or stale assignments).
    pub fn insert_role_assignment(&self, account: &AccountRef, assignment: RoleAssignment) -> Result<()> {
        let mut state = self.state();
        let acct = state.account_mut(account).ok_or_else(|| anyhow!("no account {account}"))?;
        acct.apply(&Change::PutAssignment(assignment));
        Ok(())
    }

    /// Removes a role assignment out of band.
    pub fn remove_role_assignment(&self, account: &AccountRef, name: &str) -> Option<RoleAssignment> {
        self.state().account_mut(account).and_then(|a| a.assignments.remove(&name.to_ascii_lowercase()))
    }

    /// Removes a custom role definition out of band.
    pub fn remove_role_definition(&self, account: &AccountRef, name: &str) -> Option<RoleDefinition> {
        self.state().account_mut(account).and_then(|a| a.definitions.remove(&name.to_ascii_lowercase()))
    }

    // ------------------------------------------------------- operations

    /// Every long-running operation accepted so far (finished ones too),
    /// by id.
    pub fn operations(&self) -> Vec<OperationInfo> {
        self.state().operations.values().map(|op| op.info.clone()).collect()
    }

    /// Operations not yet finished.
    pub fn pending_operations(&self) -> Vec<OperationInfo> {
        self.operations().into_iter().filter(|op| !op.status.is_terminal()).collect()
    }

    /// Finishes every pending operation now (even stuck ones), as if the
    /// resource provider caught up.
    pub fn complete_operations(&self) {
        let mut state = self.state();
        let ids: Vec<String> = state.operations.keys().cloned().collect();
        for id in ids {
            state.complete(&id);
        }
    }

    /// Sets the polls an operation takes (0: synchronous writes).
    pub fn set_lro_polls(&self, polls: u32) {
        self.state().config.lro_polls = polls;
    }

    /// Also completes operations this long after acceptance, polled or not
    /// (`None`: only polls advance them).
    pub fn set_lro_complete_after(&self, after: Option<Duration>) {
        self.state().config.lro_complete_after = after;
    }

    /// Sets `Retry-After` on 202s and running-operation polls.
    pub fn set_lro_retry_after(&self, seconds: Option<u64>) {
        self.state().config.lro_retry_after = seconds;
    }

    /// While `stuck`, operations stay `Enqueued` however often they are
    /// polled, and hold their account's lock.
    pub fn stick_operations(&self, stuck: bool) {
        self.state().stuck_operations = stuck;
    }

    /// The next `n` operations accepted end `Failed` with `code`/`message`
    /// (nothing changes).
    pub fn fail_next_operations(&self, n: u32, code: &str, message: &str) {
        let mut state = self.state();
        for _ in 0..n {
            state.operation_failures.push_back((code.to_string(), message.to_string()));
        }
    }

    // ----------------------------------------------------------- faults

    /// Sets the time every request takes.
    pub fn set_latency(&self, latency: Duration) {
        self.state().config.latency = latency;
    }

    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        self.state().faults.arm(fault);
    }

    /// The next `n` ARM requests (not token requests) get `status` with
    /// error `code`, and `Retry-After` if given.
    pub fn fail_next(&self, n: u32, status: u16, code: &str, retry_after: Option<u64>) {
        let mut fault = Fault::respond(FaultTarget::Arm, n, status, code);
        if let Some(seconds) = retry_after {
            fault = fault.retry_after(seconds);
        }
        self.inject(fault);
    }

    /// The next `n` requests matching `target` close the connection
    /// without an answer.
    pub fn drop_next(&self, n: u32, target: FaultTarget) {
        self.inject(Fault { target, action: FaultAction::Drop, remaining: n });
    }

    /// Disarms all request faults (latency, stuck and failing operations
    /// stay).
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Changes the throttling limits (buckets already in use keep their
    /// tokens).
    pub fn set_limits(&self, write_bucket: BucketLimit, account_writes: WindowLimit) {
        let mut state = self.state();
        state.config.write_bucket = write_bucket;
        state.config.account_writes = account_writes;
    }

    /// Refills every bucket and empties every account's write window.
    pub fn reset_throttling(&self) {
        let mut state = self.state();
        state.write_buckets.clear();
        state.read_buckets.clear();
        for acct in state.accounts.values_mut() {
            acct.writes = Default::default();
        }
    }

    /// While true, new connections are closed as soon as they are
    /// accepted (before TLS).
    pub fn refuse_connections(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Closes every open connection.
    pub fn close_all_connections(&self) {
        self.shared.kill.send_modify(|generation| *generation += 1);
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    // -------------------------------------------------------------- log

    /// Every request since the last [`clear_log`](Self::clear_log).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().journal.records()
    }

    /// Logged ARM requests only.
    pub fn arm_requests(&self) -> Vec<RequestRecord> {
        self.requests().into_iter().filter(|r| r.kind.is_arm()).collect()
    }

    /// Empties the log.
    pub fn clear_log(&self) {
        self.state().journal.clear();
    }

    /// Counters over all logged requests.
    pub fn counters(&self) -> Counters {
        self.state().journal.counters(|_| true)
    }

    /// Counters over the logged requests addressed to `account`.
    pub fn account_counters(&self, account: &AccountRef) -> Counters {
        let id = account.id().to_ascii_lowercase();
        self.state().journal.counters(|r| r.account.as_deref().is_some_and(|a| a.to_ascii_lowercase() == id))
    }

    // -------------------------------------------------------- lifecycle

    /// Stops accepting, closes every connection and waits for the server.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ArmDouble {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_v4() {
        let g = new_guid();
        assert!(model::is_guid(&g), "{g}");
        assert_eq!(&g[14..15], "4");
        assert_ne!(g, new_guid());
    }
}
