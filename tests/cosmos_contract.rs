//! Contract tests of the Cosmos DB backend: dbgrant's ARM client, planner and
//! account sync against the ARM + Entra test double over real TLS, with
//! real `azure_identity` credentials (client secret, client certificate,
//! workload identity) — and against a real Azure Cosmos DB account when
//! `DBGRANT_TEST_AZURE_SUBSCRIPTION_ID`, `DBGRANT_TEST_AZURE_RESOURCE_GROUP`,
//! `DBGRANT_TEST_AZURE_COSMOS_ACCOUNT` and `AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` are set.
//!
//! One test per invariant: convergence, ownership, idempotence (from the
//! double's request log), guardrails (limits refused before writing),
//! long-running operations resumed without duplicates, 412/429 handled
//! without a hot loop, principal-not-found retried, secrets kept out of
//! errors, one failing or refused assignment never holding up the others,
//! and revocation confirmed on the account before it is reported.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use dbgrant::{
    api::{
        AzureCredential, BuiltInCosmosRole, ClientCertificateCredential, ClientSecretCredential, SecretKeyRef,
        WorkloadIdentityCredential,
    },
    azure::{
        credential::{self, Material},
        transport,
    },
    cosmos::{
        arm::{ArmApi, ArmClient, ArmError, ArmSettings, AssignmentBody, pacing::Bucket},
        binding_controller::{confirm, to_revoke},
        cloud::{self, Cloud},
        sync::{self, AccountState, AssignmentOutcome, Stop, SyncReport, WriteResult},
    },
    plan::cosmos::{AccountRef, AssignmentKey, DefinitionSpec, Desired, Limits, RoleKey},
    runtime::audit::{self, Auditor},
    runtime::metrics::Metrics,
};
use dbgrant_doubles::arm::{
    ARM_RESOURCE, ArmAccess, ArmDouble, ArmDoubleConfig, DEFAULT_ACCOUNT, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
    DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION_ID, DEFAULT_WORKLOAD_SUBJECT, Fault, FaultTarget, Principal,
    RequestKind, RoleAssignment,
};
use secrecy::SecretString;

const P1: &str = "a1a1a1a1-0000-4000-8000-000000000001";
const P2: &str = "a1a1a1a1-0000-4000-8000-000000000002";
const P3: &str = "a1a1a1a1-0000-4000-8000-000000000003";
const P4: &str = "a1a1a1a1-0000-4000-8000-000000000004";
const READER: &str = "00000000-0000-0000-0000-000000000001";
const CONTRIBUTOR: &str = "00000000-0000-0000-0000-000000000002";
const ITEMS_READ: &str = "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read";
const READ_METADATA: &str = "Microsoft.DocumentDB/databaseAccounts/readMetadata";

fn reader() -> RoleKey {
    RoleKey::BuiltIn(BuiltInCosmosRole::DataReader)
}

fn contributor() -> RoleKey {
    RoleKey::BuiltIn(BuiltInCosmosRole::DataContributor)
}

// === Harness ===

/// One account, dbgrant's client for it, and what survives between syncs
/// (a restart drops it).
struct Harness {
    double: Option<ArmDouble>,
    account: AccountRef,
    cloud: Cloud,
    credential: AzureCredential,
    material: fn(&Harness) -> Material,
    ca: Option<String>,
    settings: ArmSettings,
    client: ArmClient,
    state: AccountState,
    limits: Limits,
    metrics: Metrics,
    /// The audit trail of this harness's syncs, as JSON lines.
    audit: Auditor,
    audit_lines: Arc<Mutex<Vec<u8>>>,
    trigger: audit::Trigger,
}

fn secret_spec(tenant: &str, client: &str) -> AzureCredential {
    AzureCredential {
        workload_identity: None,
        managed_identity: None,
        client_secret: Some(ClientSecretCredential {
            tenant_id: tenant.into(),
            client_id: client.into(),
            secret_ref: SecretKeyRef { name: "unused".into(), key: "unused".into() },
        }),
        client_certificate: None,
    }
}

fn double_secret(_: &Harness) -> Material {
    Material::ClientSecret(SecretString::from(DEFAULT_CLIENT_SECRET.to_string()))
}

fn fast_settings() -> ArmSettings {
    ArmSettings {
        lro_budget: Duration::from_secs(20),
        // Surface 412/429 at once so tests see them (the operator waits
        // inline for short Retry-After values).
        inline_wait_budget: Duration::ZERO,
        max_retries: 1,
        ..ArmSettings::default()
    }
}

fn double_config() -> ArmDoubleConfig {
    let mut config = ArmDoubleConfig::default();
    for p in [P1, P2, P3] {
        config = config.principal(Principal::group(p));
    }
    config.lro_polls = 2;
    config.lro_retry_after = Some(0);
    config
}

fn build_client(
    cloud: &Cloud,
    credential: &AzureCredential,
    material: Material,
    ca: Option<&str>,
    account: &AccountRef,
    settings: &ArmSettings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ArmClient, String> {
    let transport = transport::transport(ca)?;
    let cred = credential::build(credential, material, &cloud.authority_host, transport.clone(), env)?;
    ArmClient::new(cred, transport, &cloud.arm_endpoint, &cloud.audience, account.clone(), settings.clone())
        .map_err(|e| e.to_string())
}

impl Harness {
    async fn start() -> Self {
        Self::with_double(double_config()).await
    }

    async fn with_double(config: ArmDoubleConfig) -> Self {
        let double = ArmDouble::start(config).await.expect("double starts");
        let cloud = Cloud {
            arm_endpoint: double.arm_endpoint(),
            authority_host: double.authority_host(),
            audience: ARM_RESOURCE.into(),
            api_version: dbgrant::api::DEFAULT_API_VERSION.into(),
        };
        let credential = secret_spec(&double.tenant_id(), DEFAULT_CLIENT_ID);
        let account = AccountRef::new(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP, DEFAULT_ACCOUNT);
        let ca = Some(double.ca_cert_pem().to_string());
        let settings = fast_settings();
        let client = build_client(
            &cloud,
            &credential,
            Material::ClientSecret(SecretString::from(DEFAULT_CLIENT_SECRET.to_string())),
            ca.as_deref(),
            &account,
            &settings,
            |_| None,
        )
        .expect("client");
        let (audit, audit_lines) = Auditor::in_memory();
        Self {
            double: Some(double),
            account,
            cloud,
            credential,
            material: double_secret,
            ca,
            settings,
            client,
            state: AccountState::default(),
            limits: Limits::default(),
            metrics: Metrics::default(),
            audit,
            audit_lines,
            trigger: audit::Trigger { kind: "CosmosRoleBinding".into(), name: "contract".into(), ..Default::default() },
        }
    }

    /// A real account, when the environment names one.
    async fn real() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let subscription = var("DBGRANT_TEST_AZURE_SUBSCRIPTION_ID")?;
        let group = var("DBGRANT_TEST_AZURE_RESOURCE_GROUP")?;
        let name = var("DBGRANT_TEST_AZURE_COSMOS_ACCOUNT")?;
        let (tenant, client_id) = (var("AZURE_TENANT_ID")?, var("AZURE_CLIENT_ID")?);
        var("AZURE_CLIENT_SECRET")?;
        let spec = dbgrant::api::CosmosTargetSpec {
            subscription_id: subscription.clone(),
            resource_group: group.clone(),
            account_name: name.clone(),
            cloud: None,
            credential: secret_spec(&tenant, &client_id),
            policy: Default::default(),
            mode: Default::default(),
        };
        let cloud = cloud::cloud(&spec, var("AZURE_AUTHORITY_HOST"));
        let account = AccountRef::new(&subscription, &group, &name);
        let settings = ArmSettings { lro_budget: Duration::from_secs(180), ..ArmSettings::default() };
        let client = build_client(&cloud, &spec.credential, real_material(), None, &account, &settings, |_| None)
            .expect("client for the real account");
        let (audit, audit_lines) = Auditor::in_memory();
        Some(Self {
            double: None,
            account,
            cloud,
            credential: spec.credential,
            material: |_| real_material(),
            ca: None,
            settings,
            client,
            state: AccountState::default(),
            limits: Limits::default(),
            metrics: Metrics::default(),
            audit,
            audit_lines,
            trigger: audit::Trigger { kind: "CosmosRoleBinding".into(), name: "contract".into(), ..Default::default() },
        })
    }

    fn double(&self) -> &ArmDouble {
        self.double.as_ref().expect("a double")
    }

    /// A new process: new client (new token), no memory of anything.
    fn restart(&mut self) {
        self.client = build_client(
            &self.cloud,
            &self.credential,
            (self.material)(self),
            self.ca.as_deref(),
            &self.account,
            &self.settings,
            |_| None,
        )
        .expect("client");
        self.state = AccountState::default();
    }

    async fn sync(&mut self, desired: &Desired) -> Result<SyncReport, ArmError> {
        let scope = audit::Scope::new(&self.audit, "cosmosdb", "contract", &self.trigger);
        sync::sync(
            &self.client,
            &mut self.state,
            desired.clone(),
            &self.limits,
            &self.metrics,
            &scope,
            false,
            "contract",
            None,
        )
        .await
    }

    /// Sync until nothing is left to do, as the controllers would, but
    /// without waiting out long Retry-After values. Returns the last report
    /// and the passes taken.
    async fn converge(&mut self, desired: &Desired) -> (SyncReport, usize) {
        for pass in 1..=12 {
            match self.sync(desired).await {
                Ok(r) if r.stopped.is_none() && r.principal_retries.is_empty() && self.state.pending.is_empty() => {
                    return (r, pass);
                }
                Ok(_) => {}
                Err(e) if e.retry_after().is_some() => {}
                Err(e) => panic!("sync failed: {e}"),
            }
            self.state.not_before = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("did not converge in 12 passes");
    }

    /// (principal, definition, relative scope) of every assignment.
    async fn grants(&self) -> BTreeSet<(String, String, String)> {
        let list = self.client.list_assignments().await.expect("list");
        list.iter()
            .map(|a| {
                (
                    a.principal_id.to_ascii_lowercase(),
                    self.account.definition_name_of(&a.role_definition_id).unwrap_or_default(),
                    self.account.relative_scope(&a.scope).unwrap_or_default(),
                )
            })
            .collect()
    }

    fn counters(&self) -> dbgrant_doubles::arm::Counters {
        let d = self.double();
        d.account_counters(&dbgrant_doubles::arm::AccountRef::new(
            DEFAULT_SUBSCRIPTION_ID,
            DEFAULT_RESOURCE_GROUP,
            DEFAULT_ACCOUNT,
        ))
    }

    fn double_account() -> dbgrant_doubles::arm::AccountRef {
        dbgrant_doubles::arm::AccountRef::new(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP, DEFAULT_ACCOUNT)
    }
}

fn real_material() -> Material {
    Material::ClientSecret(SecretString::from(std::env::var("AZURE_CLIENT_SECRET").unwrap_or_default()))
}

/// Desired state from `(binding, principal, role, scope)` rows and custom
/// definitions `(name, roleName, actions, assignable scope)`.
fn desired(rows: &[(&str, &str, RoleKey, &str)], definitions: &[(&str, &str, &[&str], &str)]) -> Desired {
    let mut d = Desired { known_roles: RoleKey::built_ins().into_iter().collect(), ..Default::default() };
    for (b, p, role, scope) in rows {
        let key = AssignmentKey { principal_id: p.to_string(), role: role.clone(), scope: scope.to_string() };
        d.assignments.entry(key).or_default().insert(b.to_string());
        if !d.binding_priority.contains(&b.to_string()) {
            d.binding_priority.push(b.to_string());
        }
        if let RoleKey::Custom(n) = role {
            d.known_roles.insert(RoleKey::Custom(n.clone()));
        }
    }
    for (name, role_name, actions, scope) in definitions {
        d.known_roles.insert(RoleKey::Custom(name.to_string()));
        d.known_definitions.insert(name.to_string());
        d.definitions.insert(
            name.to_string(),
            DefinitionSpec {
                role_name: role_name.to_string(),
                data_actions: actions.iter().map(|s| s.to_string()).collect(),
                assignable_scopes: if scope.is_empty() { BTreeSet::new() } else { [scope.to_string()].into() },
            },
        );
    }
    d
}

fn expected(d: &Desired, account: &AccountRef) -> BTreeSet<(String, String, String)> {
    d.assignments
        .keys()
        .map(|k| {
            let def = match &k.role {
                RoleKey::BuiltIn(r) => r.definition_name().to_string(),
                RoleKey::Custom(n) => account.definition_name(n),
            };
            (k.principal_id.clone(), def, k.scope.clone())
        })
        .collect()
}

fn foreign(account: &AccountRef, name: &str, principal: &str, definition: &str, scope: &str) -> RoleAssignment {
    RoleAssignment::new(name, account.definition_id(definition), account.scope(scope), principal)
}

// === Invariant 1: convergence ===

#[tokio::test]
async fn converges_after_a_mixed_sequence_with_restarts() {
    let mut h = Harness::start().await;
    let steps: Vec<Desired> = vec![
        desired(&[("ns/a", P1, reader(), "/dbs/orders"), ("ns/b", P2, reader(), "/dbs/orders")], &[]),
        // Scope change (delete then create), a new principal, a role change.
        desired(
            &[
                ("ns/a", P1, reader(), "/dbs/billing"),
                ("ns/b", P2, contributor(), "/dbs/orders/colls/items"),
                ("ns/c", P3, reader(), ""),
            ],
            &[],
        ),
        // Two bindings share one assignment.
        desired(&[("ns/a", P1, reader(), "/dbs/billing"), ("ns/d", P1, reader(), "/dbs/billing")], &[]),
        desired(&[("ns/d", P1, reader(), "/dbs/billing")], &[]),
        desired(&[], &[]),
    ];
    for (i, d) in steps.iter().enumerate() {
        if i % 2 == 1 {
            h.restart();
        }
        let (report, _) = h.converge(d).await;
        assert!(report.plan.refused.is_empty());
        assert_eq!(h.grants().await, expected(d, &h.account), "step {i}");
        for key in d.assignments.keys() {
            assert!(
                matches!(report.assignment(key), AssignmentOutcome::Applied { managed: true, .. }),
                "step {i}: {key}"
            );
        }
    }
    assert!(h.double().role_assignments(&Harness::double_account()).is_empty());
}

#[tokio::test]
async fn drift_is_restored_from_the_two_lists() {
    let mut h = Harness::start().await;
    let d = desired(&[("ns/a", P1, reader(), "/dbs/orders"), ("ns/a", P2, reader(), "/dbs/orders")], &[]);
    h.converge(&d).await;
    let acct = Harness::double_account();
    let ours: Vec<RoleAssignment> = h.double().role_assignments(&acct);
    // Out of band: one deleted, one repointed to Data Contributor.
    h.double().remove_role_assignment(&acct, &ours[0].name);
    let mut changed = ours[1].clone();
    changed.role_definition_id = h.account.definition_id(CONTRIBUTOR);
    h.double().insert_role_assignment(&acct, changed).unwrap();
    h.double().clear_log();
    let (report, _) = h.converge(&d).await;
    assert_eq!(report.done().len(), 2, "{:?}", report.done());
    assert_eq!(h.grants().await, expected(&d, &h.account));
    let c = h.counters();
    assert_eq!(c.reads, 2 + 1, "two LISTs plus the check above");
}

// === Invariant 2: ownership ===

#[tokio::test]
async fn foreign_assignments_are_never_touched_and_identical_ones_satisfy() {
    let mut h = Harness::start().await;
    let acct = Harness::double_account();
    let identical = foreign(&h.account, "f0f0f0f0-0000-4000-8000-000000000001", P1, READER, "/dbs/orders");
    let unrelated = foreign(&h.account, "f0f0f0f0-0000-4000-8000-000000000002", P2, CONTRIBUTOR, "");
    h.double().insert_role_assignment(&acct, identical.clone()).unwrap();
    h.double().insert_role_assignment(&acct, unrelated.clone()).unwrap();

    let d = desired(&[("ns/a", P1, reader(), "/dbs/orders"), ("ns/a", P3, reader(), "/dbs/orders")], &[]);
    let (report, _) = h.converge(&d).await;
    let k1 = d.assignments.keys().find(|k| k.principal_id == P1).unwrap();
    assert_eq!(report.assignment(k1), AssignmentOutcome::Applied { name: identical.name.clone(), managed: false });
    assert_eq!(report.writes, 1, "only P3's assignment is created");
    // Bindings gone: dbgrant deletes its own, never the foreign ones.
    h.converge(&desired(&[], &[])).await;
    let left = h.double().role_assignments(&acct);
    assert_eq!(left.len(), 2);
    assert!(left.contains(&identical) && left.contains(&unrelated));
}

#[tokio::test]
async fn a_foreign_assignment_holding_our_name_is_a_conflict() {
    let mut h = Harness::start().await;
    let acct = Harness::double_account();
    let ours = h.account.assignment_name(P1, "/dbs/orders", &reader());
    // Our deterministic name, someone else's principal and scope.
    let squatter = foreign(&h.account, &ours, P2, READER, "/dbs/other");
    h.double().insert_role_assignment(&acct, squatter.clone()).unwrap();
    let d = desired(&[("ns/a", P1, reader(), "/dbs/orders")], &[]);
    let (report, _) = h.converge(&d).await;
    let key = d.assignments.keys().next().unwrap();
    assert_eq!(report.assignment(key), AssignmentOutcome::Conflict(ours.clone()));
    assert_eq!(report.writes, 0);
    h.converge(&desired(&[], &[])).await;
    assert_eq!(h.double().role_assignments(&acct), vec![squatter]);
}

#[tokio::test]
async fn a_released_assignment_stays_and_is_never_touched_again() {
    let mut h = Harness::start().await;
    let d = desired(&[("ns/a", P1, reader(), "/dbs/orders")], &[]);
    h.converge(&d).await;
    let ours = h.account.assignment_name(P1, "/dbs/orders", &reader());
    // Retain: the binding is gone and its assignment released.
    let mut gone = desired(&[], &[]);
    gone.released.insert(ours.clone());
    h.double().clear_log();
    let (r, _) = h.converge(&gone).await;
    assert_eq!(r.writes, 0);
    assert!(r.plan.stale_released.is_empty());
    let left = h.double().role_assignments(&Harness::double_account());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].name, ours);
    assert_eq!(h.double().counters().writes, 0);
    // Deleted out of band: the released name is reported stale.
    h.double().remove_role_assignment(&Harness::double_account(), &ours);
    let r = h.sync(&gone).await.unwrap();
    assert_eq!(r.plan.stale_released, vec![ours]);
}

#[tokio::test]
async fn custom_definitions_are_created_before_and_deleted_after_their_assignments() {
    let mut h = Harness::start().await;
    let items = RoleKey::Custom("items-reader".into());
    let defs: &[(&str, &str, &[&str], &str)] =
        &[("items-reader", "Items Reader (dbgrant test)", &[READ_METADATA, ITEMS_READ], "/dbs/catalog")];
    let d = desired(&[("ns/a", P1, items.clone(), "/dbs/catalog/colls/products")], defs);
    h.double().clear_log();
    let (report, _) = h.converge(&d).await;
    assert!(matches!(report.assignment(d.assignments.keys().next().unwrap()), AssignmentOutcome::Applied { .. }));
    let writes: Vec<String> = h
        .double()
        .arm_requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::ArmWrite)
        .map(|r| format!("{} {}", r.method, r.path.rsplit('/').nth(1).unwrap_or_default()))
        .collect();
    assert_eq!(writes, ["PUT sqlRoleDefinitions", "PUT sqlRoleAssignments"]);

    // The CosmosRoleDefinition is deleted: assignment first, then the
    // definition.
    let mut gone = desired(&[], &[]);
    gone.known_roles.insert(items);
    gone.known_definitions.insert("items-reader".into());
    h.double().clear_log();
    let (report, _) = h.converge(&gone).await;
    assert!(report.plan.definitions.values().all(|s| *s == dbgrant::plan::cosmos::DefinitionState::Absent));
    let writes: Vec<String> = h
        .double()
        .arm_requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::ArmWrite)
        .map(|r| format!("{} {}", r.method, r.path.rsplit('/').nth(1).unwrap_or_default()))
        .collect();
    assert_eq!(writes, ["DELETE sqlRoleAssignments", "DELETE sqlRoleDefinitions"]);
    let defs = h.double().role_definitions(&Harness::double_account());
    assert!(defs.iter().all(|d| d.built_in), "{defs:?}");
}

// === Invariant 3: idempotence ===

#[tokio::test]
async fn a_steady_state_resync_makes_zero_writes_and_two_reads() {
    let mut h = Harness::start().await;
    let defs: &[(&str, &str, &[&str], &str)] = &[("items-reader", "Items Reader", &[ITEMS_READ], "")];
    let d = desired(
        &[
            ("ns/a", P1, reader(), "/dbs/orders"),
            ("ns/b", P2, contributor(), ""),
            ("ns/c", P3, RoleKey::Custom("items-reader".into()), "/dbs/orders/colls/x"),
        ],
        defs,
    );
    h.converge(&d).await;
    h.restart();
    h.double().clear_log();
    let r = h.sync(&d).await.unwrap();
    assert_eq!((r.writes, r.reads), (0, 2));
    let c = h.counters();
    assert_eq!((c.reads, c.writes, c.polls), (2, 0, 0), "{c:?}");
}

// === Invariant 4/6: guardrails and limits ===

#[tokio::test]
async fn limits_are_refused_before_anything_is_written() {
    let mut config = double_config();
    config.max_role_assignments = 3;
    let mut h = Harness::with_double(config).await;
    h.limits = Limits { assignments: 3, definitions: 100 };
    let d = desired(
        &[
            ("ns/old", P1, reader(), "/dbs/a"),
            ("ns/old", P1, reader(), "/dbs/b"),
            ("ns/new", P2, reader(), "/dbs/a"),
            ("ns/new", P2, reader(), "/dbs/b"),
        ],
        &[],
    );
    h.double().clear_log();
    let (report, _) = h.converge(&d).await;
    assert!(report.plan.refused.contains_key("ns/new"), "{:?}", report.plan.refused);
    assert!(!report.plan.refused.contains_key("ns/old"));
    let c = h.counters();
    assert_eq!(c.writes, 2, "only the admitted binding's assignments are written");
    assert!(h.double().arm_requests().iter().all(|r| r.status < 400), "nothing was refused by Azure");
    let p2 = d.assignments.keys().find(|k| k.principal_id == P2).unwrap();
    assert!(matches!(report.assignment(p2), AssignmentOutcome::LimitExceeded(_)));
}

// === Resilience: long-running operations, 412, 429, principal lag ===

#[tokio::test]
async fn an_operation_still_running_is_resumed_not_reissued() {
    let mut h = Harness::start().await;
    h.settings.lro_budget = Duration::from_millis(300);
    h.restart();
    h.double().stick_operations(true);
    let d = desired(&[("ns/a", P1, reader(), "/dbs/orders")], &[]);
    let r = h.sync(&d).await.unwrap();
    assert!(matches!(r.stopped, Some((Stop::Pending(_), _))), "{:?}", r.stopped);
    assert_eq!(h.state.pending.len(), 1);
    // Same process: the next pass polls the operation and writes nothing.
    h.double().clear_log();
    let r = h.sync(&d).await.unwrap();
    assert_eq!(r.writes, 0);
    let c = h.counters();
    assert_eq!((c.writes, c.polls), (0, 1), "{c:?}");
    h.double().stick_operations(false);
    let (r, _) = h.converge(&d).await;
    assert_eq!(r.writes, 0, "the first PUT completed; nothing to write again");
    assert_eq!(h.double().role_assignments(&Harness::double_account()).len(), 1);
}

#[tokio::test]
async fn a_restart_during_an_operation_leaves_exactly_one_assignment() {
    let mut h = Harness::start().await;
    h.settings.lro_budget = Duration::from_millis(300);
    h.restart();
    h.double().stick_operations(true);
    let d = desired(&[("ns/a", P1, reader(), "/dbs/orders")], &[]);
    let r = h.sync(&d).await.unwrap();
    assert!(matches!(r.stopped, Some((Stop::Pending(_), _))));
    // Killed: the operation URL is forgotten. The new process re-issues the
    // same deterministic name; the account is locked (412) until the first
    // operation finishes.
    h.restart();
    let r = h.sync(&d).await.unwrap();
    assert!(matches!(r.stopped, Some((Stop::Locked(_), _))), "{:?}", r.stopped);
    h.double().stick_operations(false);
    h.double().complete_operations();
    h.converge(&d).await;
    let all = h.double().role_assignments(&Harness::double_account());
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].name, h.account.assignment_name(P1, "/dbs/orders", &reader()));
}

#[tokio::test]
async fn throttling_and_lock_storms_end_converged_without_a_hot_loop() {
    let mut h = Harness::start().await;
    let d = desired(
        &[("ns/a", P1, reader(), "/dbs/a"), ("ns/a", P2, reader(), "/dbs/a"), ("ns/a", P3, reader(), "/dbs/a")],
        &[],
    );
    h.double().fail_next(3, 429, "TooManyRequests", Some(7));
    let first = h.sync(&d).await;
    let wait = match first {
        Err(e) => e.retry_after().expect("typed throttling"),
        Ok(r) => r.stopped.expect("stopped").1,
    };
    assert_eq!(wait, Duration::from_secs(7), "Retry-After is honoured");
    // Inside the Retry-After window dbgrant does not call ARM at all.
    h.double().clear_log();
    let held = h.sync(&d).await.unwrap();
    assert!(held.stopped.is_some());
    assert!(h.double().arm_requests().is_empty(), "no hot loop");

    h.double().inject(dbgrant_doubles::arm::Fault::respond(
        dbgrant_doubles::arm::FaultTarget::ArmWrites,
        3,
        412,
        "PreconditionFailed",
    ));
    let (_, passes) = h.converge(&d).await;
    assert!(passes <= 8, "{passes} passes");
    assert_eq!(h.grants().await, expected(&d, &h.account));
    let c = h.double().counters();
    assert!(c.throttled + c.conflicts >= 3);
    assert!(c.writes <= 3 + 3 + 3, "each refused write is retried once per pass, not in a loop: {c:?}");
}

/// `count` role assignment PUTs in a row through `h.client`; how many were
/// refused.
async fn put_many(h: &Harness, count: usize) -> usize {
    let role_definition_id = h.account.definition_id(BuiltInCosmosRole::DataReader.definition_name());
    let mut refused = 0;
    for i in 0..count {
        let scope = format!("/dbs/paced-{i}");
        let body = AssignmentBody {
            principal_id: P1.into(),
            role_definition_id: role_definition_id.clone(),
            scope: h.account.scope(&scope),
        };
        let name = h.account.assignment_name(P1, &scope, &reader());
        refused += usize::from(h.client.put_assignment(&name, &body).await.is_err());
    }
    refused
}

#[tokio::test]
async fn writes_wait_for_the_principals_write_bucket_instead_of_being_refused() {
    // ARM's bucket for this principal: 2 writes, refilled at 2/s (ARM's
    // own is 200 and 10/s; smaller here so the test is quick). dbgrant's
    // copy refills at the same rate but starts believing it has 200: it
    // learns what is left from x-ms-ratelimit-remaining-subscription-writes.
    let config = || double_config().write_bucket(2, 2.0);

    // Without the bucket (the control): writes faster than the refill are
    // answered 429 (surfaced at once: no inline wait in these settings).
    let h = Harness::with_double(config()).await;
    let refused = put_many(&h, 12).await;
    assert!(refused > 0 && h.double().counters().throttled > 0, "the double throttles unpaced writes");

    let mut h = Harness::with_double(config()).await;
    h.settings.write_bucket = Some(std::sync::Arc::new(Bucket::new(200.0, 2.0)));
    h.restart();
    assert_eq!(put_many(&h, 12).await, 0, "every paced write accepted");
    assert_eq!(h.double().counters().throttled, 0, "and none refused on the way: {:?}", h.double().counters());
}

#[tokio::test]
async fn principal_not_found_is_retried_and_reported_until_entra_catches_up() {
    let mut h = Harness::start().await;
    h.double().add_principal_replicating(Principal::user(P4), 2);
    let d = desired(&[("ns/a", P1, reader(), "/dbs/a"), ("ns/a", P4, reader(), "/dbs/a")], &[]);
    let r = h.sync(&d).await.unwrap();
    let k4 = d.assignments.keys().find(|k| k.principal_id == P4).unwrap();
    let k1 = d.assignments.keys().find(|k| k.principal_id == P1).unwrap();
    assert!(matches!(r.assignment(k4), AssignmentOutcome::PrincipalNotFound { attempts: 1, .. }));
    assert!(matches!(r.assignment(k1), AssignmentOutcome::Applied { .. }), "others are not held up");
    assert!(r.retry_after().is_some());
    let r = h.sync(&d).await.unwrap();
    assert!(matches!(r.assignment(k4), AssignmentOutcome::PrincipalNotFound { attempts: 2, .. }));
    let r = h.sync(&d).await.unwrap();
    assert!(matches!(r.assignment(k4), AssignmentOutcome::Applied { managed: true, .. }));
    assert!(r.principal_retries.is_empty());
}

// === Isolation: no assignment holds up another; revocation confirmed ===

/// A fault on one assignment's (or definition's) path and method.
fn on(method: &str, resource: &str) -> FaultTarget {
    FaultTarget::Path { method: Some(method.into()), path_contains: format!("/{resource}") }
}

#[tokio::test]
async fn one_failing_delete_does_not_stop_the_other_revocations() {
    let mut h = Harness::start().await;
    let d = desired(
        &[
            ("ns/a", P1, reader(), "/dbs/a"),
            ("ns/b", P2, reader(), "/dbs/a"),
            ("ns/c", P3, reader(), "/dbs/a"),
            ("ns/d", P1, reader(), "/dbs/b"),
        ],
        &[],
    );
    h.converge(&d).await;
    let name = |p: &str, scope: &str| h.account.assignment_name(p, scope, &reader());
    let (a, b, c, e) = (name(P1, "/dbs/a"), name(P2, "/dbs/a"), name(P3, "/dbs/a"), name(P1, "/dbs/b"));
    // Every binding is deleted. ARM fails b's DELETE (500, through the
    // pipeline's retry), refuses c's (400), and e's operation ends Failed.
    h.double().inject(Fault::respond(on("DELETE", &format!("sqlRoleAssignments/{b}")), 10, 500, "InternalServerError"));
    h.double().inject(
        Fault::respond(on("DELETE", &format!("sqlRoleAssignments/{c}")), 10, 400, "BadRequest")
            .message("The request is invalid."),
    );
    h.double().inject(
        Fault::fail_operation(on("DELETE", &format!("sqlRoleAssignments/{e}")), 1, "InternalServerError")
            .message("the resource provider gave up"),
    );
    let none = desired(&[], &[]);
    let r = h.sync(&none).await.expect("failures of single assignments do not fail the pass");
    assert!(r.stopped.is_none(), "{:?}", r.stopped);
    assert_eq!(r.results.get(&a), Some(&WriteResult::Done));
    let on_account: BTreeSet<String> =
        h.double().role_assignments(&Harness::double_account()).into_iter().map(|x| x.name).collect();
    assert_eq!(on_account, [b.clone(), c.clone(), e.clone()].into(), "every other revocation went through");
    // The report says which are stuck, and why.
    let stuck = r.left_behind(&h.account, [a.as_str(), b.as_str(), c.as_str(), e.as_str()]).unwrap();
    assert_eq!(stuck.keys().cloned().collect::<BTreeSet<_>>(), [b.clone(), c.clone(), e.clone()].into());
    assert!(stuck[&b].contains("500"), "{stuck:?}");
    assert!(stuck[&c].contains("400") && stuck[&c].contains("invalid"), "{stuck:?}");
    assert!(stuck[&e].contains("gave up"), "{stuck:?}");
    assert!(r.retry_after().is_some_and(|w| w <= Duration::from_secs(15)), "retried soon: {:?}", r.retry_after());

    // Azure recovers: the next pass deletes them (first) and confirms.
    h.double().clear_faults();
    h.double().clear_log();
    let r = h.sync(&none).await.unwrap();
    assert!(r.left_behind(&h.account, [b.as_str(), c.as_str(), e.as_str()]).unwrap().is_empty());
    assert!(h.double().role_assignments(&Harness::double_account()).is_empty());
    assert_eq!(h.counters().writes, 3);
}

#[tokio::test]
async fn a_binding_revocation_is_confirmed_only_once_its_assignment_is_gone() {
    let mut h = Harness::start().await;
    // ns/a and ns/b share P1's assignment; ns/b also grants P2.
    let both = desired(
        &[
            ("ns/a", P1, reader(), "/dbs/orders"),
            ("ns/b", P1, reader(), "/dbs/orders"),
            ("ns/b", P2, reader(), "/dbs/orders"),
        ],
        &[],
    );
    h.converge(&both).await;
    let (shared, p2) = (
        h.account.assignment_name(P1, "/dbs/orders", &reader()),
        h.account.assignment_name(P2, "/dbs/orders", &reader()),
    );
    // ns/b is deleted: what its cleanup must see gone.
    let contributed: BTreeSet<AssignmentKey> =
        both.assignments.iter().filter(|(_, b)| b.contains("ns/b")).map(|(k, _)| k.clone()).collect();
    let pending = to_revoke(&h.account, &contributed, &[], &BTreeSet::new());
    assert_eq!(pending.len(), 2);
    let after = desired(&[("ns/a", P1, reader(), "/dbs/orders")], &[]);

    // Its DELETE fails: the revocation is not confirmed, and says why.
    h.double().inject(
        Fault::fail_operation(on("DELETE", &format!("sqlRoleAssignments/{p2}")), 1, "InternalServerError")
            .message("the resource provider gave up"),
    );
    let r = h.sync(&after).await.unwrap();
    let stuck = confirm(&r, &h.account, &pending).expect_err("P2's assignment still exists");
    assert!(stuck.message.contains(&p2) && stuck.message.contains("gave up"), "{}", stuck.message);
    assert!(!stuck.message.contains(&shared), "the shared one stays for ns/a: {}", stuck.message);
    assert_eq!(stuck.assignments.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), [p2.as_str()]);
    assert_eq!(stuck.retry, sync::retry_backoff(1));
    assert!(h.double().role_assignment(&Harness::double_account(), &p2).is_some());

    // The retry deletes it: confirmed, and only ns/a's access is left.
    let r = h.sync(&after).await.unwrap();
    assert_eq!(confirm(&r, &h.account, &pending), Ok(()));
    let left: Vec<String> =
        h.double().role_assignments(&Harness::double_account()).into_iter().map(|x| x.name).collect();
    assert_eq!(left, [shared]);
}

#[tokio::test]
async fn a_refused_binding_does_not_stop_another_bindings_apply_and_revoke() {
    let mut h = Harness::start().await;
    h.converge(&desired(&[("ns/old", P3, reader(), "/dbs/a")], &[])).await;
    let old = h.account.assignment_name(P3, "/dbs/a", &reader());
    let bad = h.account.assignment_name(P1, "/dbs/a", &reader());
    let bad_role = h.account.definition_name("bad-role");
    // ARM refuses ns/bad's assignment for its scope, and the custom role
    // definition ns/custom needs.
    h.double().inject(
        Fault::respond(on("PUT", &format!("sqlRoleAssignments/{bad}")), 10, 400, "BadRequest")
            .message("The provided scope is not valid."),
    );
    h.double().inject(
        Fault::respond(on("PUT", &format!("sqlRoleDefinitions/{bad_role}")), 10, 400, "BadRequest")
            .message("The data action is not valid."),
    );
    let defs: &[(&str, &str, &[&str], &str)] = &[("bad-role", "Bad Role (dbgrant test)", &[ITEMS_READ], "")];
    let custom = RoleKey::Custom("bad-role".into());
    let d = desired(
        &[("ns/bad", P1, reader(), "/dbs/a"), ("ns/good", P2, reader(), "/dbs/a"), ("ns/custom", P2, custom, "/dbs/b")],
        defs,
    );
    h.double().clear_log();
    let r = h.sync(&d).await.expect("refusals concern their binding only");
    assert!(r.stopped.is_none(), "{:?}", r.stopped);
    let writes: Vec<String> = h
        .double()
        .arm_requests()
        .into_iter()
        .filter(|x| x.kind == RequestKind::ArmWrite)
        .map(|x| format!("{} {}", x.method, x.path.rsplit('/').next().unwrap_or_default()))
        .collect();
    assert_eq!(writes.first(), Some(&format!("DELETE {old}")), "revocations first: {writes:?}");
    let outcome = |p: &str, scope: &str| {
        let k = d.assignments.keys().find(|k| k.principal_id == p && k.scope == scope).unwrap();
        r.assignment(k)
    };
    assert!(matches!(outcome(P1, "/dbs/a"), AssignmentOutcome::Rejected(m) if m.contains("scope")));
    assert!(matches!(outcome(P2, "/dbs/a"), AssignmentOutcome::Applied { managed: true, .. }));
    assert_eq!(outcome(P2, "/dbs/b"), AssignmentOutcome::RoleUnavailable, "held behind its refused definition");
    assert!(matches!(r.definition("bad-role"), Some((_, Some(WriteResult::Rejected(m)))) if m.contains("data action")));
    assert_eq!(h.grants().await, [(P2.to_string(), READER.to_string(), "/dbs/a".to_string())].into());
    assert!(r.left_behind(&h.account, [old.as_str()]).unwrap().is_empty(), "ns/old's revocation is confirmed");
}

#[tokio::test]
async fn a_definition_is_deleted_only_after_its_assignments_are_confirmed_gone() {
    let mut h = Harness::start().await;
    let items = RoleKey::Custom("items-reader".into());
    let defs: &[(&str, &str, &[&str], &str)] = &[("items-reader", "Items Reader (dbgrant test)", &[ITEMS_READ], "")];
    h.converge(&desired(&[("ns/a", P1, items.clone(), "/dbs/catalog")], defs)).await;
    let assignment = h.account.assignment_name(P1, "/dbs/catalog", &items);
    let definition = h.account.definition_name("items-reader");
    h.double().inject(Fault::respond(
        on("DELETE", &format!("sqlRoleAssignments/{assignment}")),
        10,
        500,
        "InternalServerError",
    ));
    // The CosmosRoleDefinition is deleted (and with it the binding's use).
    let mut gone = desired(&[], &[]);
    gone.known_roles.insert(items);
    gone.known_definitions.insert("items-reader".into());
    let r = h.sync(&gone).await.unwrap();
    assert!(matches!(r.results.get(&assignment), Some(WriteResult::Failed(_))), "{:?}", r.results);
    assert!(matches!(r.results.get(&definition), Some(WriteResult::Held(_))), "{:?}", r.results);
    let left = r.left_behind(&h.account, [definition.as_str()]).unwrap();
    assert!(left[&definition].contains("still in place"), "{left:?}");
    assert!(h.double().role_definition(&Harness::double_account(), &definition).is_some());

    h.double().clear_faults();
    let r = h.sync(&gone).await.unwrap();
    assert!(r.left_behind(&h.account, [assignment.as_str(), definition.as_str()]).unwrap().is_empty());
    assert!(h.double().role_definition(&Harness::double_account(), &definition).is_none());
}

// === Credentials and secrets ===

#[tokio::test]
async fn credential_and_permission_failures_are_typed_and_secret_free() {
    let h = Harness::start().await;
    let wrong = "not-the-secret-7e57-do-not-log";
    let client = build_client(
        &h.cloud,
        &h.credential,
        Material::ClientSecret(SecretString::from(wrong.to_string())),
        h.ca.as_deref(),
        &h.account,
        &h.settings,
        |_| None,
    )
    .unwrap();
    let e = client.list_assignments().await.unwrap_err();
    assert!(matches!(e, ArmError::Credential(_)), "{e:?}");
    assert!(!e.to_string().contains(wrong), "{e}");
    assert!(!format!("{e:?}").contains(wrong));

    // Read-only on the management plane: LIST works, writes are 403.
    let reader_app = "c11e0009-7e57-4e57-8e57-7e57d0b1d0b1";
    h.double().add_principal(
        Principal::application(reader_app, "0b1ec009-7e57-4e57-8e57-7e57d0b1d0b1")
            .secret("reader-secret-1234")
            .arm_access(ArmAccess::Read),
    );
    let client = build_client(
        &h.cloud,
        &secret_spec(&h.double().tenant_id(), reader_app),
        Material::ClientSecret(SecretString::from("reader-secret-1234".to_string())),
        h.ca.as_deref(),
        &h.account,
        &h.settings,
        |_| None,
    )
    .unwrap();
    client.list_assignments().await.expect("reads are allowed");
    let mut state = AccountState::default();
    // A 403 concerns the write it answers: recorded on it (and retried
    // with backoff), never a reason to stop the other writes of the pass.
    let r = sync::sync(
        &client,
        &mut state,
        desired(&[("ns/a", P1, reader(), "")], &[]),
        &Limits::default(),
        &Metrics::default(),
        &audit::Scope::new(&Auditor::discard(), "cosmosdb", "t", &audit::Trigger::default()),
        false,
        "t",
        None,
    )
    .await
    .expect("a 403 on one write does not fail the pass");
    let name = h.account.assignment_name(P1, "", &reader());
    assert!(matches!(r.results.get(&name), Some(WriteResult::Failed(m)) if m.contains("403")), "{:?}", r.results);
    assert!(r.retry_after().is_some());
    assert!(h.double().role_assignments(&Harness::double_account()).is_empty());

    // An account that does not exist.
    let missing = AccountRef::new(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP, "no-such-account");
    let client = build_client(
        &h.cloud,
        &h.credential,
        Material::ClientSecret(SecretString::from(DEFAULT_CLIENT_SECRET.to_string())),
        h.ca.as_deref(),
        &missing,
        &h.settings,
        |_| None,
    )
    .unwrap();
    assert!(matches!(client.get_account().await.unwrap_err(), ArmError::NotFound { .. }));
}

#[tokio::test]
async fn client_certificate_credential_signs_assertions_entra_accepts() {
    let h = Harness::start().await;
    let pem = include_str!("../src/azure/testdata/client-cert.pem");
    let cert_only: String = pem.split("-----BEGIN PRIVATE KEY-----").next().unwrap().to_string();
    let cert_only = cert_only.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    h.double().add_client_certificate(DEFAULT_CLIENT_ID, &cert_only).unwrap();
    let spec = AzureCredential {
        workload_identity: None,
        managed_identity: None,
        client_secret: None,
        client_certificate: Some(ClientCertificateCredential {
            tenant_id: h.double().tenant_id(),
            client_id: DEFAULT_CLIENT_ID.into(),
            certificate_secret_ref: SecretKeyRef { name: "unused".into(), key: "unused".into() },
        }),
    };
    let client = build_client(
        &h.cloud,
        &spec,
        Material::Certificate(SecretString::from(pem.to_string())),
        h.ca.as_deref(),
        &h.account,
        &h.settings,
        |_| None,
    )
    .unwrap();
    let id = client.get_account().await.expect("token from a certificate assertion");
    assert!(id.to_ascii_lowercase().ends_with(&format!("/databaseaccounts/{DEFAULT_ACCOUNT}")));
}

#[tokio::test]
async fn workload_identity_exchanges_the_federated_token_file() {
    let h = Harness::start().await;
    let dir = std::env::temp_dir().join(format!("dbgrant-wi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, h.double().issue_federated_token(DEFAULT_WORKLOAD_SUBJECT)).unwrap();
    let spec = AzureCredential {
        workload_identity: Some(WorkloadIdentityCredential {
            tenant_id: None,
            client_id: Some(DEFAULT_CLIENT_ID.into()),
        }),
        managed_identity: None,
        client_secret: None,
        client_certificate: None,
    };
    let tenant = h.double().tenant_id();
    let path = file.display().to_string();
    let env = move |k: &str| match k {
        "AZURE_TENANT_ID" => Some(tenant.clone()),
        "AZURE_FEDERATED_TOKEN_FILE" => Some(path.clone()),
        _ => None,
    };
    let client =
        build_client(&h.cloud, &spec, Material::Workload, h.ca.as_deref(), &h.account, &h.settings, env).unwrap();
    client.list_definitions().await.expect("token from the federated token");
    let _ = std::fs::remove_dir_all(&dir);
}

// === The same contract against a real account ===

#[tokio::test]
async fn real_azure_account_contract() {
    let Some(mut h) = Harness::real().await else {
        eprintln!(
            "skipped: set DBGRANT_TEST_AZURE_SUBSCRIPTION_ID, _RESOURCE_GROUP, _COSMOS_ACCOUNT and AZURE_* to run against Azure"
        );
        return;
    };
    let id = h.client.get_account().await.expect("account reachable and authorised");
    assert!(id.to_ascii_lowercase().ends_with(&h.account.key()[h.account.key().rfind('/').unwrap()..]));
    // The principal: the test's own service principal (`oid` of its token).
    let principal = own_object_id(&h).await;
    let scope = "/dbs/dbgrant-contract";
    let d = desired(&[("ns/contract", &principal, reader(), scope)], &[]);
    let (report, _) = h.converge(&d).await;
    assert!(matches!(report.assignment(d.assignments.keys().next().unwrap()), AssignmentOutcome::Applied { .. }));
    assert!(h.grants().await.contains(&(principal.clone(), READER.into(), scope.into())));
    // Idempotence after a restart: two reads, no writes.
    h.restart();
    let r = h.sync(&d).await.unwrap();
    assert_eq!((r.reads, r.writes), (2, 0));
    // Revocation leaves nothing of dbgrant's behind.
    h.converge(&desired(&[], &[])).await;
    let ours = h.account.assignment_name(&principal, scope, &reader());
    let left: BTreeMap<String, String> = h
        .client
        .list_assignments()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.name.to_ascii_lowercase(), a.principal_id))
        .collect();
    assert!(!left.contains_key(&ours));
}

async fn own_object_id(h: &Harness) -> String {
    use base64::Engine as _;
    let spec_secret = real_material();
    let transport = transport::transport(None).unwrap();
    let cred = credential::build(&h.credential, spec_secret, &h.cloud.authority_host, transport, |_| None).unwrap();
    let token = cred.get_token(&[&dbgrant::cosmos::arm::token_scope(&h.cloud.audience)], None).await.expect("token");
    let payload = azure_core::credentials::Secret::secret(&token.token).split('.').nth(1).unwrap().to_string();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["oid"].as_str().expect("oid claim").to_ascii_lowercase()
}

// === The audit trail ===

/// Every ARM write produces exactly one audit record and every record is
/// a write ARM answered: definitions created, updated and deleted,
/// assignments created, moved and deleted, and a storm of 429s, matched
/// one to one, in order, with the double's request log; no credential in
/// the trail.
#[tokio::test]
async fn the_audit_trail_matches_arms_writes_one_to_one() {
    let mut h = Harness::start().await;
    let items = RoleKey::Custom("items-reader".into());
    let v1: &[(&str, &str, &[&str], &str)] = &[("items-reader", "Items Reader (audit)", &[READ_METADATA], "")];
    let v2: &[(&str, &str, &[&str], &str)] =
        &[("items-reader", "Items Reader (audit)", &[READ_METADATA, ITEMS_READ], "")];
    let steps = [
        desired(&[("ns/a", P1, reader(), "/dbs/orders"), ("ns/b", P2, items.clone(), "")], v1),
        desired(&[("ns/a", P1, reader(), "/dbs/billing"), ("ns/b", P2, items.clone(), "")], v2),
        {
            let mut gone = desired(&[], &[]);
            gone.known_roles.insert(items.clone());
            gone.known_definitions.insert("items-reader".into());
            gone
        },
    ];
    h.double().clear_log();
    for d in &steps {
        h.converge(d).await;
    }
    // Throttled writes are writes ARM answered too.
    h.double().inject(
        dbgrant_doubles::arm::Fault::respond(dbgrant_doubles::arm::FaultTarget::ArmWrites, 2, 429, "TooManyRequests")
            .retry_after(1),
    );
    h.converge(&desired(&[("ns/c", P3, reader(), "")], &[])).await;

    let text = String::from_utf8(h.audit_lines.lock().unwrap().clone()).unwrap();
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!text.contains(DEFAULT_CLIENT_SECRET), "the audit trail must never carry a credential");
    for r in &records {
        assert_eq!(r["schema"], audit::SCHEMA);
        assert_eq!(r["backend"], "cosmosdb");
    }
    let update = records.iter().find(|r| r["object"]["kind"] == "definition" && r["action"] == "update").unwrap();
    assert_eq!(update["before"]["dataActions"].as_array().map(Vec::len), Some(1), "{update}");
    assert_eq!(update["after"]["dataActions"].as_array().map(Vec::len), Some(2), "{update}");
    assert!(records.iter().any(|r| r["outcome"] == "throttled"), "429s are recorded");
    let created = records.iter().find(|r| r["object"]["kind"] == "assignment" && r["action"] == "create").unwrap();
    assert_eq!(created["bindings"], serde_json::json!(["ns/a"]), "{created}");

    let arm: Vec<(String, String, u16)> = h
        .double()
        .arm_requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::ArmWrite)
        .map(|r| (r.method.clone(), r.path.rsplit('/').next().unwrap_or_default().to_string(), r.status))
        .collect();
    let audited: Vec<(String, String, u16)> = records
        .iter()
        .map(|r| {
            let method = if r["operation"].as_str().unwrap().starts_with("put") { "PUT" } else { "DELETE" };
            // ARM answers 202 to every write here; dbgrant polls the
            // operation and records `applied` once it has succeeded.
            let status = if r["outcome"] == "throttled" { 429 } else { 0 };
            (method.to_string(), r["object"]["name"].as_str().unwrap().to_string(), status)
        })
        .collect();
    let arm_status: Vec<(String, String, u16)> =
        arm.into_iter().map(|(m, n, s)| (m, n, if s == 429 { s } else { 0 })).collect();
    assert_eq!(audited, arm_status, "no write without a record, no record without a write");
}
