//! Contract tests for dbgrant's MongoDB backend.
//!
//! They run dbgrant's real backend code — `sync::sync`, `roles_info`,
//! `users_info`, the ownership ledger, `connection::probe`, and the pure
//! steps the controllers take around them (`evaluate`, the binding index,
//! `subject_work`, `resync_work`) — over real TCP with the real `mongodb`
//! driver, and check BRIEF.md's invariants on the server's state.
//!
//! By default each test starts its own `MongoDouble`. With
//! `DBGRANT_TEST_MONGODB_URI` set (a login with dbgrant's documented
//! minimum, `userAdminAnyDatabase@admin` and `readWrite@dbgrant`; the
//! `identity_*` tests use it to create logins with other rights in `admin`
//! and drop them afterwards), the same tests run against that server: each test
//! uses its own random `authNamePrefix` and target names and removes what
//! it created when it ends (also on failure). Assertions that need the
//! double's command log or fault injection are skipped there; the
//! operator's own metrics stand in for the log where they can.
//!
//! `Operator` below mirrors what the controllers do with a binding
//! (binding_controller::apply / cleanup, MongoContext::prime,
//! target_controller's resync) without Kubernetes.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use bson::{Bson, Document, doc, oid::ObjectId};
use dbgrant::{
    api::{
        AuthorizationClaim, DeletionPolicy, MongoAuth, MongoConnection, MongoConnectionStringAuth, MongoOidc,
        MongoPolicy, MongoPrivilege, MongoResource, MongoRoleBinding, MongoRoleBindingSpec, MongoRoleRef, MongoTarget,
        MongoTargetSpec, SecretKeyRef, Subject, SubjectKey, SubjectKind, TargetRef, conditions::reason,
    },
    mongo::{
        INFO_BATCH,
        binding_controller::{self, Evaluation},
        connection, ledger,
        sync::{self, SubjectResult, SyncReport},
        target_controller,
    },
    plan::{
        expiry,
        index::{BindingIndex, Rejection},
        mongo::{MongoGrant, canonical},
        policy,
    },
    runtime::audit::{self, Auditor},
    runtime::metrics::{BackendLabels, Metrics},
};
use dbgrant_doubles::mongo::{CommandRecord, MongoDouble, MongoDoubleConfig, Outcome, ScramUser};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mongodb::{
    Client,
    options::{AuthMechanism, ClientOptions, Credential},
};

// ============================================================== builders

const URI_ENV: &str = "DBGRANT_TEST_MONGODB_URI";
const LOGIN: &str = "dbgrant-operator";
const PASSWORD: &str = "contract-s3cret-pw";

/// The instant the tests' clock starts at.
fn t0() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().unwrap()
}

fn hours(h: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(h)
}

/// An Entra group, by a GUID made from `n`.
fn group(n: u32) -> Subject {
    subject(SubjectKind::Group, &format!("0b0b0b0b-0000-4000-8000-{n:012}"))
}

/// An Entra user.
fn user(n: u32) -> Subject {
    subject(SubjectKind::User, &format!("1c1c1c1c-0000-4000-8000-{n:012}"))
}

/// A service principal.
fn service_principal(n: u32) -> Subject {
    subject(SubjectKind::ServicePrincipal, &format!("2d2d2d2d-0000-4000-8000-{n:012}"))
}

fn subject(kind: SubjectKind, id: &str) -> Subject {
    Subject { kind, object_id: Some(id.into()), value: None, display_name: None }
}

fn role(role: &str, db: &str) -> MongoRoleRef {
    MongoRoleRef { role: role.into(), db: db.into() }
}

fn privilege(db: &str, collection: &str, actions: &[&str]) -> MongoPrivilege {
    MongoPrivilege {
        resource: MongoResource { db: Some(db.into()), collection: Some(collection.into()), cluster: None },
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

/// The grant dbgrant should put on a subject's role: the same shapes a
/// binding uses, normalised.
fn grant(roles: &[MongoRoleRef], privileges: &[MongoPrivilege]) -> MongoGrant {
    MongoGrant::from_spec(roles, privileges)
}

/// A MongoRoleBinding under construction (namespace `team-a`, created a day
/// before [`t0`]).
struct BindingBuilder(MongoRoleBinding);

fn binding(name: &str, subjects: &[&Subject]) -> BindingBuilder {
    let spec = MongoRoleBindingSpec {
        target_ref: TargetRef { name: String::new() },
        subjects: subjects.iter().map(|s| (*s).clone()).collect(),
        roles: Vec::new(),
        privileges: Vec::new(),
        expiry: Default::default(),
        deletion_policy: DeletionPolicy::Delete,
    };
    let mut b = MongoRoleBinding::new(name, spec);
    b.metadata.namespace = Some("team-a".into());
    b.metadata.creation_timestamp = Some(Time(t0() - hours(24)));
    BindingBuilder(b)
}

impl BindingBuilder {
    fn roles(mut self, roles: &[MongoRoleRef]) -> Self {
        self.0.spec.roles = roles.to_vec();
        self
    }
    fn privileges(mut self, privileges: &[MongoPrivilege]) -> Self {
        self.0.spec.privileges = privileges.to_vec();
        self
    }
    fn namespace(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.into());
        self
    }
    fn expires_at(mut self, at: Timestamp) -> Self {
        self.0.spec.expiry.expires_at = Some(Time(at));
        self
    }
    fn on(mut self, target: &MongoTarget) -> MongoRoleBinding {
        self.0.spec.target_ref.name = target.metadata.name.clone().unwrap_or_default();
        self.0
    }
}

// ============================================================ environment

/// One test's server (a fresh double, or the real server from the
/// environment), names, metrics and cleanup.
struct Env {
    double: Option<MongoDouble>,
    uri: String,
    /// The `authNamePrefix` of every target in this test.
    prefix: String,
    /// Target names start with this.
    base: String,
    metrics: Metrics,
    /// The audit trail of this test's syncs, as JSON lines.
    audit: Auditor,
    audit_lines: Arc<Mutex<Vec<u8>>>,
    trigger: audit::Trigger,
    /// A separate client for out-of-band changes and reading state.
    admin: Client,
    targets: Mutex<Vec<String>>,
}

async fn connect(uri: &str) -> Client {
    let mut options = ClientOptions::parse(uri).await.expect("the test server's URI parses");
    options.app_name = Some("dbgrant-contract".into());
    options.connect_timeout = Some(Duration::from_secs(5));
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).expect("client")
}

impl Env {
    /// The audit scope of a sync on `target`.
    fn scope<'a>(&'a self, target: &'a str) -> audit::Scope<'a> {
        audit::Scope::new(&self.audit, "mongodb", target, &self.trigger)
    }

    /// The audit records written so far.
    fn audit_records(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.audit_lines.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
    }

    async fn start() -> Self {
        let id = ObjectId::new().to_hex();
        let (double, uri) = match std::env::var(URI_ENV) {
            Ok(uri) if !uri.trim().is_empty() => (None, uri),
            _ => {
                let double = MongoDouble::start(
                    MongoDoubleConfig::default()
                        .latency(Duration::ZERO)
                        .user(ScramUser::admin(LOGIN, PASSWORD))
                        .user(ScramUser::read_only("viewer", "viewer-pw")),
                )
                .await
                .expect("start the MongoDB double");
                let uri = double.uri_with_credentials(LOGIN, PASSWORD);
                (Some(double), uri)
            }
        };
        let admin = connect(&uri).await;
        let (audit, audit_lines) = Auditor::in_memory();
        Env {
            audit,
            audit_lines,
            trigger: audit::Trigger { kind: "MongoRoleBinding".into(), name: "contract".into(), ..Default::default() },
            double,
            admin,
            uri,
            prefix: format!("ct{id}"),
            base: format!("contract-{id}"),
            metrics: Metrics::default(),
            targets: Mutex::new(Vec::new()),
        }
    }

    /// A MongoTarget on this server: groups become roles (`claims`), or
    /// principals become `$external` users. Bindings from `team-*` may use it.
    fn target(&self, suffix: &str, claims: bool) -> MongoTarget {
        let name = format!("{}-{suffix}", self.base);
        self.targets.lock().unwrap().push(name.clone());
        MongoTarget::new(
            &name,
            MongoTargetSpec {
                connection: MongoConnection {
                    uri_secret_ref: SecretKeyRef { name: "mongo".into(), key: "uri".into() },
                    tls: None,
                },
                auth: MongoAuth {
                    scram: None,
                    x509: None,
                    oidc: None,
                    connection_string: Some(MongoConnectionStringAuth {}),
                },
                oidc: MongoOidc {
                    auth_name_prefix: self.prefix.clone(),
                    use_authorization_claim: claims,
                    authorization_claim: AuthorizationClaim::Groups,
                },
                policy: MongoPolicy { allowed_namespaces: vec!["team-*".into()], ..Default::default() },
                adopt: false,
                mode: Default::default(),
            },
        )
    }

    /// The role (and, for principals, user) name of `s`.
    fn name(&self, s: &Subject) -> String {
        format!("{}/{}", self.prefix, s.key().id)
    }

    /// The ledger id of `s`'s role.
    fn role_id(&self, s: &Subject) -> String {
        format!("admin.{}", self.name(s))
    }

    /// The ledger id of `s`'s `$external` user.
    fn user_id(&self, s: &Subject) -> String {
        format!("$external.{}", self.name(s))
    }

    /// Every role (in `admin`) and `$external` user with this test's prefix,
    /// as the server reports them.
    async fn state(&self) -> State {
        let mut state = State::default();
        let reply = self.run("admin", doc! { "rolesInfo": 1, "showPrivileges": true }).await.expect("rolesInfo");
        for r in reply.get_array("roles").unwrap().iter().filter_map(Bson::as_document) {
            let name = r.get_str("role").unwrap();
            if name.starts_with(&format!("{}/", self.prefix)) {
                state.roles.insert(name.to_string(), sync::parse_role(r).grant);
            }
        }
        let reply = self.run("$external", doc! { "usersInfo": 1 }).await.expect("usersInfo");
        for u in reply.get_array("users").unwrap().iter().filter_map(Bson::as_document) {
            let name = u.get_str("user").unwrap();
            if name.starts_with(&format!("{}/", self.prefix)) {
                let roles = u
                    .get_array("roles")
                    .unwrap()
                    .iter()
                    .filter_map(Bson::as_document)
                    .map(|r| (r.get_str("role").unwrap().to_string(), r.get_str("db").unwrap().to_string()))
                    .collect();
                state.users.insert(name.to_string(), roles);
            }
        }
        state
    }

    /// The expected state: these roles with these grants, no users.
    fn roles(&self, roles: &[(&Subject, MongoGrant)]) -> State {
        State { roles: roles.iter().map(|(s, g)| (self.name(s), g.clone())).collect(), users: BTreeMap::new() }
    }

    /// Every ledger entry `target` owns.
    async fn ledger(&self, target: &MongoTarget) -> BTreeSet<String> {
        let name = target.metadata.name.clone().unwrap();
        ledger::all(&name, &self.admin, &self.metrics).await.expect("ledger_all")
    }

    /// Run a command as an out-of-band administrator would.
    async fn run(&self, db: &str, cmd: Document) -> mongodb::error::Result<Document> {
        self.admin.database(db).run_command(cmd).await
    }

    /// The double's log, or None against a real server.
    fn log(&self) -> Option<Vec<CommandRecord>> {
        self.double.as_ref().map(MongoDouble::log)
    }

    fn clear_log(&self) {
        if let Some(d) = &self.double {
            d.clear_log();
        }
    }

    /// Commands in the double's log that changed something.
    fn writes(&self) -> Option<Vec<CommandRecord>> {
        self.log().map(|log| log.into_iter().filter(|r| r.is_write).collect())
    }

    /// How many times dbgrant ran `operation` (its own metrics).
    fn ops(&self, operation: &str) -> u64 {
        ["ok", "error"]
            .iter()
            .map(|outcome| {
                self.metrics
                    .backend_operations
                    .get_or_create(&BackendLabels {
                        backend: "mongodb".into(),
                        operation: operation.into(),
                        outcome: outcome.to_string(),
                    })
                    .get()
            })
            .sum()
    }

    /// Every write dbgrant counted in its metrics (roles, users, ledger).
    fn write_ops(&self) -> u64 {
        ["createRole", "updateRole", "dropRole", "createUser", "updateUser", "dropUser", "ledgerPut", "ledgerDelete"]
            .iter()
            .map(|op| self.ops(op))
            .sum()
    }
}

impl Drop for Env {
    /// Against a real server, remove every role, user and ledger entry this
    /// test created (it runs on panic too). A double just stops.
    fn drop(&mut self) {
        if self.double.is_some() {
            return;
        }
        let (uri, prefix) = (self.uri.clone(), format!("{}/", self.prefix));
        let targets = std::mem::take(&mut *self.targets.lock().unwrap_or_else(|p| p.into_inner()));
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let client = connect(&uri).await;
                let external = client.database("$external");
                if let Ok(reply) = external.run_command(doc! { "usersInfo": 1 }).await {
                    for u in reply.get_array("users").map(|a| a.to_vec()).unwrap_or_default() {
                        if let Some(name) = u.as_document().and_then(|u| u.get_str("user").ok())
                            && name.starts_with(&prefix)
                        {
                            let _ = external.run_command(doc! { "dropUser": name }).await;
                        }
                    }
                }
                let admin = client.database("admin");
                if let Ok(reply) = admin.run_command(doc! { "rolesInfo": 1 }).await {
                    for r in reply.get_array("roles").map(|a| a.to_vec()).unwrap_or_default() {
                        if let Some(name) = r.as_document().and_then(|r| r.get_str("role").ok())
                            && name.starts_with(&prefix)
                        {
                            let _ = admin.run_command(doc! { "dropRole": name }).await;
                        }
                    }
                }
                let ledger = client
                    .database(dbgrant::plan::mongo::LEDGER_DB)
                    .collection::<Document>(dbgrant::plan::mongo::LEDGER_COLLECTION);
                let _ = ledger.delete_many(doc! { "target": { "$in": targets } }).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Roles and `$external` users with a test's prefix, by full name.
#[derive(Debug, Default, PartialEq)]
struct State {
    roles: BTreeMap<String, MongoGrant>,
    users: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl State {
    /// Adds `s`'s `$external` user, granted exactly its own role.
    fn with_user(mut self, env: &Env, s: &Subject) -> Self {
        self.users.insert(env.name(s), [(env.name(s), "admin".to_string())].into());
        self
    }
}

// ====================================================== the operator model

/// What the controllers do with bindings, minus Kubernetes: the same pure
/// steps (evaluate, index, subject_work, resync_work) around the same
/// `sync::sync`, on one target.
struct Operator<'e> {
    env: &'e Env,
    client: Client,
    target: MongoTarget,
    index: BindingIndex<MongoGrant>,
    /// The operator's clock.
    now: Timestamp,
}

/// What applying one binding did.
struct Applied {
    eval: Evaluation,
    /// None when nothing was synced.
    report: Option<SyncReport>,
}

impl<'e> Operator<'e> {
    async fn new(env: &'e Env, target: &MongoTarget) -> Operator<'e> {
        Operator {
            env,
            client: connect(&env.uri).await,
            target: target.clone(),
            index: BindingIndex::default(),
            now: t0(),
        }
    }

    fn name(&self) -> String {
        self.target.metadata.name.clone().unwrap()
    }

    async fn sync(&self, work: &[sync::SubjectWork]) -> SyncReport {
        let name = self.name();
        let observe = self.target.spec.mode == dbgrant::api::TargetMode::Observe;
        sync::sync(
            &name,
            &self.client,
            &self.env.metrics,
            &self.env.scope(&name),
            self.target.spec.adopt,
            observe,
            work,
        )
        .await
        .expect("sync reaches the server")
    }

    /// binding_controller::apply: evaluate at `now`, update the index, then
    /// revoke what a blocked binding contributed, or sync the affected
    /// subjects and the binding's own.
    async fn apply(&mut self, b: &MongoRoleBinding) -> Applied {
        let eval = binding_controller::evaluate(b, Some(&self.target), self.now);
        let key = dbgrant::runtime::object::key(b);
        let own: BTreeSet<SubjectKey> =
            eval.contribution.as_ref().map(|c| c.subjects.iter().cloned().collect()).unwrap_or_default();
        let affected = match eval.contribution.clone() {
            Some(c) => self.index.upsert(&key, c),
            None => self.index.remove(&key),
        };
        let mut subjects: BTreeSet<SubjectKey> = affected.into_iter().map(|(_, s)| s).collect();
        if eval.blocked.is_none() {
            subjects.extend(own);
        }
        if subjects.is_empty() {
            return Applied { eval, report: None };
        }
        let confirm = eval.blocked.is_some();
        let work = dbgrant::mongo::sync::subject_work(&self.target, &self.index, &subjects, false, confirm);
        let report = self.sync(&work).await;
        self.record_rejections(&report);
        Applied { eval, report: Some(report) }
    }

    /// MongoContext::after_sync: refused contributions leave their unions.
    fn record_rejections(&mut self, report: &SyncReport) {
        let name = self.name();
        for (subject, refused) in &report.rejected {
            for (key, message) in refused {
                let r = Rejection { message: message.clone(), since: self.now };
                self.index.reject(&name, subject, key, r);
            }
        }
    }

    /// Put a binding in the index without syncing (as priming does).
    fn index(&mut self, b: &MongoRoleBinding) {
        let c = binding_controller::evaluate(b, Some(&self.target), self.now).contribution.expect("allowed");
        self.index.upsert(&dbgrant::runtime::object::key(b), c);
    }

    /// Apply several bindings, expecting each to be allowed and applied.
    async fn apply_all(&mut self, bindings: &[&MongoRoleBinding]) {
        for b in bindings {
            let applied = self.apply(b).await;
            assert!(applied.eval.blocked.is_none(), "{:?}", applied.eval.blocked);
            let report = applied.report.expect("synced");
            assert!(
                report.results.values().all(|r| *r == SubjectResult::Applied),
                "{}: {:?}",
                dbgrant::runtime::object::key(*b),
                report.results
            );
        }
    }

    /// binding_controller::cleanup: take the binding out of the index and
    /// sync its subjects (and those it affected).
    async fn delete(&mut self, b: &MongoRoleBinding) -> SyncReport {
        let affected = self.index.remove(&dbgrant::runtime::object::key(b));
        let mut subjects: BTreeSet<SubjectKey> = affected.into_iter().map(|(_, s)| s).collect();
        subjects.extend(b.spec.subjects.iter().map(|s| canonical(&self.target.spec.oidc, s.key())));
        // Retain only where the target allows it, and never once expired.
        let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let expired = match expiry::expiry_instant(created, &b.spec.expiry) {
            Ok(at) => expiry::state(self.now, at).is_expired(),
            Err(_) => true,
        };
        let retain = policy::retains(b.spec.deletion_policy, self.target.spec.policy.allow_retain, expired);
        let work = dbgrant::mongo::sync::subject_work(&self.target, &self.index, &subjects, retain, true);
        let report = self.sync(&work).await;
        self.record_rejections(&report);
        report
    }

    /// The target controller's periodic resync: every indexed subject, plus
    /// ledger entries nothing wants.
    async fn resync(&self) -> SyncReport {
        let ledger = ledger::all(&self.name(), &self.client, &self.env.metrics).await.expect("ledger_all");
        let work = target_controller::resync_work(&self.target, &self.index, &ledger);
        self.sync(&work).await
    }

    /// A new process: a fresh connection and an index primed from the
    /// bindings that exist now (MongoContext::prime).
    async fn restart(self, live: &[&MongoRoleBinding]) -> Operator<'e> {
        let mut next = Operator::new(self.env, &self.target).await;
        next.now = self.now;
        for b in live {
            if let Some(c) = binding_controller::evaluate(b, Some(&next.target), next.now).contribution {
                next.index.upsert(&dbgrant::runtime::object::key(*b), c);
            }
        }
        next
    }
}

fn result<'r>(report: &'r SyncReport, s: &Subject) -> Option<&'r SubjectResult> {
    report.results.get(&s.key())
}

// ================================================================ tests

#[tokio::test]
async fn convergence_after_creates_updates_deletes_and_a_restart() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let (g1, g2, g3, g4) = (group(1), group(2), group(3), group(4));
    let audit = privilege("orders", "audit", &["find", "insert"]);

    let b1 = binding("readers", &[&g1]).roles(&[role("read", "orders")]).on(&t);
    let b2 = binding("auditors", &[&g1, &g2]).privileges(std::slice::from_ref(&audit)).on(&t);
    let b3 = binding("billing", &[&g3]).roles(&[role("readWrite", "billing")]).on(&t);
    op.apply_all(&[&b1, &b2, &b3]).await;
    assert_eq!(
        env.state().await,
        env.roles(&[
            (&g1, grant(&[role("read", "orders")], std::slice::from_ref(&audit))),
            (&g2, grant(&[], std::slice::from_ref(&audit))),
            (&g3, grant(&[role("readWrite", "billing")], &[])),
        ])
    );

    // Update b2 (drop g1, narrow the actions), delete b3, create b4.
    let b2 = binding("auditors", &[&g2]).privileges(&[privilege("orders", "audit", &["find"])]).on(&t);
    op.apply(&b2).await;
    op.delete(&b3).await;
    let b4 = binding("billing-readers", &[&g4, &g1]).roles(&[role("read", "billing")]).on(&t);
    op.apply(&b4).await;

    // Restart, resync, then one more change.
    let mut op = op.restart(&[&b1, &b2, &b4]).await;
    op.resync().await;
    op.delete(&b1).await;

    let find = [privilege("orders", "audit", &["find"])];
    let expected = env.roles(&[
        (&g1, grant(&[role("read", "billing")], &[])),
        (&g2, grant(&[], &find)),
        (&g4, grant(&[role("read", "billing")], &[])),
    ]);
    assert_eq!(env.state().await, expected, "nothing missing, nothing extra");
    let ledger: BTreeSet<String> = [&g1, &g2, &g4].iter().map(|s| env.role_id(s)).collect();
    assert_eq!(env.ledger(&t).await, ledger, "the ledger lists exactly what dbgrant manages");
    // Converged means a resync finds nothing to do.
    let report = op.resync().await;
    assert_eq!(report.writes, 0, "{report:?}");
    assert_eq!(env.state().await, expected);
}

#[tokio::test]
async fn union_shrinks_when_one_of_two_bindings_on_a_group_goes() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let g = group(1);
    let b1 = binding("read-orders", &[&g]).roles(&[role("read", "orders")]).on(&t);
    let b2 = binding("write-billing", &[&g])
        .roles(&[role("readWrite", "billing")])
        .privileges(&[privilege("orders", "audit", &["insert"])])
        .on(&t);
    op.apply_all(&[&b1, &b2]).await;
    let union =
        grant(&[role("read", "orders"), role("readWrite", "billing")], &[privilege("orders", "audit", &["insert"])]);
    assert_eq!(env.state().await, env.roles(&[(&g, union)]));

    op.delete(&b2).await;
    assert_eq!(env.state().await, env.roles(&[(&g, grant(&[role("read", "orders")], &[]))]), "shrunk to b1");
    op.delete(&b1).await;
    assert_eq!(env.state().await, State::default(), "dropped with the last binding");
    assert!(env.ledger(&t).await.is_empty());
}

#[tokio::test]
async fn extending_a_role_dbgrant_owns_writes_the_role_alone() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let g = group(1);
    op.apply(&binding("read-orders", &[&g]).roles(&[role("read", "orders")]).on(&t)).await;
    assert_eq!(
        (env.ops("ledgerPut"), env.ops("createRole")),
        (1, 1),
        "a new role is claimed in the ledger before it is created"
    );
    op.apply(&binding("write-billing", &[&g]).roles(&[role("readWrite", "billing")]).on(&t)).await;
    assert_eq!(env.ops("updateRole"), 1);
    assert_eq!(env.ops("ledgerPut"), 1, "the ledger already held the role when the sync read it: no second claim");
    let union = grant(&[role("read", "orders"), role("readWrite", "billing")], &[]);
    assert_eq!(env.state().await, env.roles(&[(&g, union)]));
    assert_eq!(env.ledger(&t).await, [env.role_id(&g)].into());
}

#[tokio::test]
async fn a_foreign_role_with_dbgrants_name_is_a_conflict_and_left_untouched() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let (g1, g2) = (group(1), group(2));
    // Somebody made this role by hand; the ledger does not list it.
    env.run(
        "admin",
        doc! { "createRole": env.name(&g1), "roles": [{ "role": "read", "db": "secret" }], "privileges": [] },
    )
    .await
    .expect("plant a foreign role");
    let foreign = env.state().await;
    env.clear_log();

    let b = binding("team", &[&g1, &g2]).roles(&[role("readWrite", "orders")]).on(&t);
    let report = op.apply(&b).await.report.expect("synced");
    assert_eq!(result(&report, &g1), Some(&SubjectResult::Conflict(vec![env.role_id(&g1)])));
    assert_eq!(result(&report, &g2), Some(&SubjectResult::Applied), "other subjects proceed");
    let state = env.state().await;
    assert_eq!(state.roles[&env.name(&g1)], foreign.roles[&env.name(&g1)], "not changed");
    assert_eq!(state.roles[&env.name(&g2)], grant(&[role("readWrite", "orders")], &[]));
    if let Some(writes) = env.writes() {
        let touched: Vec<&CommandRecord> =
            writes.iter().filter(|r| format!("{:?}", r.body).contains(&env.name(&g1))).collect();
        assert!(touched.is_empty(), "no write mentions the foreign role: {touched:?}");
    }

    // Deleting the binding and resyncing leave it alone too.
    op.delete(&b).await;
    op.resync().await;
    assert_eq!(env.state().await, foreign, "foreign role kept, dbgrant's own role dropped");
    assert!(env.ledger(&t).await.is_empty());
}

#[tokio::test]
async fn deletion_policy_retain_leaves_objects_and_stops_managing_them() {
    let env = Env::start().await;
    let mut t = env.target("main", true);
    t.spec.policy.allow_retain = true;
    let mut op = Operator::new(&env, &t).await;
    let (g1, g2) = (group(1), group(2));
    let mut b = binding("keep-access", &[&g1, &g2]).roles(&[role("read", "orders")]).on(&t);
    b.spec.deletion_policy = DeletionPolicy::Retain;
    let other = binding("other", &[&g2]).roles(&[role("read", "billing")]).on(&t);
    op.apply_all(&[&b, &other]).await;

    op.delete(&b).await;
    let expected =
        env.roles(&[(&g1, grant(&[role("read", "orders")], &[])), (&g2, grant(&[role("read", "billing")], &[]))]);
    assert_eq!(env.state().await, expected, "g1 retained as it was; the shared g2 still shrinks");
    assert_eq!(env.ledger(&t).await, [env.role_id(&g2)].into(), "g1 is no longer dbgrant's");
    op.resync().await;
    assert_eq!(env.state().await, expected, "so the resync does not collect it");
    let again = binding("again", &[&g1]).roles(&[role("read", "orders")]).on(&t);
    let report = op.apply(&again).await.report.unwrap();
    assert!(matches!(result(&report, &g1), Some(SubjectResult::Conflict(_))), "{report:?}");
}

#[tokio::test]
async fn a_steady_state_resync_issues_zero_writes() {
    let env = Env::start().await;
    let claims = env.target("claims", true);
    let principals = env.target("principals", false);
    let mut op = Operator::new(&env, &claims).await;
    let mut op2 = Operator::new(&env, &principals).await;
    let (g1, g2, u1) = (group(1), group(2), user(1));
    op.apply_all(&[
        // Actions given out of the server's order and split across two
        // privileges on one resource: rolesInfo returns them merged.
        &binding("a", &[&g1, &g2])
            .roles(&[role("read", "orders")])
            .privileges(&[
                privilege("orders", "audit", &["update", "find"]),
                privilege("orders", "audit", &["insert", "find"]),
            ])
            .on(&claims),
        &binding("b", &[&g2]).roles(&[role("readWrite", "billing")]).on(&claims),
    ])
    .await;
    op2.apply_all(&[&binding("c", &[&u1]).roles(&[role("read", "orders")]).on(&principals)]).await;
    let before = env.state().await;
    assert_eq!((before.roles.len(), before.users.len()), (3, 1));

    env.clear_log();
    let (writes, reads) = (env.write_ops(), env.ops("rolesInfo"));
    for report in [op.resync().await, op2.resync().await] {
        assert_eq!(report.writes, 0, "{report:?}");
        assert!(report.drifted.is_empty());
        assert!(report.results.values().all(|r| *r == SubjectResult::Applied), "{:?}", report.results);
    }
    assert_eq!(env.write_ops(), writes, "no write in dbgrant's own metrics");
    assert_eq!(env.ops("rolesInfo"), reads + 2, "the resyncs did read the roles");
    if let (Some(log), Some(double)) = (env.log(), &env.double) {
        assert_eq!(double.counters().writes, 0, "no role, user or ledger write: {log:#?}");
        assert!(log.iter().any(|r| r.name == "usersInfo"));
        assert!(log.iter().any(|r| r.name == "find"), "the ledger was read");
    }
    assert_eq!(env.state().await, before);
}

#[tokio::test]
async fn drift_is_restored_by_the_resync() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let (g1, g2, g3) = (group(1), group(2), group(3));
    let b = binding("team", &[&g1, &g2, &g3])
        .roles(&[role("read", "orders")])
        .privileges(&[privilege("orders", "audit", &["find"])])
        .on(&t);
    op.apply_all(&[&b]).await;
    let expected = env.state().await;

    // Out of band: widen g1, empty g2, drop g3.
    env.run("admin", doc! { "updateRole": env.name(&g1), "roles": [{ "role": "root", "db": "admin" }] }).await.unwrap();
    env.run("admin", doc! { "updateRole": env.name(&g2), "roles": [], "privileges": [] }).await.unwrap();
    env.run("admin", doc! { "dropRole": env.name(&g3) }).await.unwrap();
    assert_ne!(env.state().await, expected);

    let report = op.resync().await;
    assert_eq!(env.state().await, expected, "restored");
    let drifted: BTreeSet<String> = report.drifted.iter().cloned().collect();
    let want: BTreeSet<String> = [&g1, &g2, &g3].iter().map(|s| env.role_id(s)).collect();
    assert_eq!(drifted, want, "each correction is reported as drift");
    assert_eq!(env.ledger(&t).await, want, "a re-created role stays dbgrant's");
    let again = op.resync().await;
    assert_eq!((again.writes, again.drifted.len()), (0, 0), "{again:?}");
}

#[tokio::test]
async fn retain_needs_the_targets_consent_and_never_outlives_expiry() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let (g1, g2) = (group(1), group(2));

    // A target that does not allow Retain: nothing applied, and it says why.
    let mut asks = binding("asks-to-keep", &[&g1]).roles(&[role("read", "orders")]).on(&t);
    asks.spec.deletion_policy = DeletionPolicy::Retain;
    let applied = op.apply(&asks).await;
    let blocked = applied.eval.blocked.expect("denied");
    assert_eq!(blocked.reason, reason::GRANT_DENIED);
    assert!(blocked.message.contains("policy.allowRetain"), "{}", blocked.message);
    assert_eq!(env.state().await, State::default());

    // A target that allows it: an expired Retain binding is still revoked.
    let mut t = env.target("retaining", true);
    t.spec.policy.allow_retain = true;
    let mut op = Operator::new(&env, &t).await;
    let mut temporary =
        binding("break-glass", &[&g2]).roles(&[role("readWrite", "orders")]).expires_at(t0() + hours(1)).on(&t);
    temporary.spec.deletion_policy = DeletionPolicy::Retain;
    op.apply_all(&[&temporary]).await;
    assert_eq!(env.state().await, env.roles(&[(&g2, grant(&[role("readWrite", "orders")], &[]))]));
    op.now = t0() + hours(2);
    op.delete(&temporary).await;
    assert_eq!(env.state().await, State::default(), "expiry revokes, whatever the deletion policy");
    assert!(env.ledger(&t).await.is_empty());
}

#[tokio::test]
async fn expiry_revokes_the_expired_bindings_grant() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let (g1, g2, g3) = (group(1), group(2), group(3));
    let lasting = binding("lasting", &[&g1]).roles(&[role("read", "orders")]).on(&t);
    let temporary =
        binding("break-glass", &[&g1, &g2]).roles(&[role("readWrite", "orders")]).expires_at(t0() + hours(1)).on(&t);
    op.apply_all(&[&lasting, &temporary]).await;
    assert_eq!(
        env.state().await,
        env.roles(&[
            (&g1, grant(&[role("read", "orders"), role("readWrite", "orders")], &[])),
            (&g2, grant(&[role("readWrite", "orders")], &[])),
        ])
    );

    // The requeue at the expiry instant: access ends exactly then.
    op.now = t0() + hours(1);
    let applied = op.apply(&temporary).await;
    assert_eq!(applied.eval.blocked.as_ref().map(|o| o.reason), Some(reason::EXPIRED));
    assert!(applied.eval.expiry.is_expired());
    let expected = env.roles(&[(&g1, grant(&[role("read", "orders")], &[]))]);
    assert_eq!(env.state().await, expected, "g1 shrinks to the lasting grant, g2 goes");
    assert_eq!(env.ledger(&t).await, [env.role_id(&g1)].into());

    // A binding that is already expired grants nothing, and a restart does
    // not bring the expired one back.
    let stale = binding("stale", &[&g3]).roles(&[role("read", "orders")]).expires_at(t0()).on(&t);
    let applied = op.apply(&stale).await;
    assert_eq!(applied.eval.blocked.as_ref().map(|o| o.reason), Some(reason::EXPIRED));
    assert!(applied.report.is_none(), "nothing to sync");
    let op = op.restart(&[&lasting, &temporary, &stale]).await;
    op.resync().await;
    assert_eq!(env.state().await, expected);
}

#[tokio::test]
async fn a_forbidden_binding_applies_nothing_and_says_why() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let (g1, g2, g3, g4) = (group(1), group(2), group(3), group(4));
    env.clear_log();

    let cases = [
        (
            binding("intruder", &[&g1]).namespace("intruder").roles(&[role("read", "orders")]).on(&t),
            "namespace intruder may not bind",
        ),
        // An allowed role next to an escalation: nothing at all is applied.
        (binding("root", &[&g2]).roles(&[role("read", "orders"), role("root", "admin")]).on(&t), "root@admin"),
        (
            binding("granter", &[&g3])
                .privileges(&[privilege("orders", "audit", &["find"]), privilege("orders", "", &["grantRole"])])
                .on(&t),
            "grantRole",
        ),
    ];
    for (b, why) in &cases {
        let applied = op.apply(b).await;
        let blocked = applied.eval.blocked.expect("denied");
        assert_eq!(blocked.reason, reason::GRANT_DENIED);
        assert!(blocked.message.contains("nothing applied") && blocked.message.contains(why), "{}", blocked.message);
        assert!(applied.report.is_none());
    }
    assert_eq!(env.state().await, State::default());
    if let Some(writes) = env.writes() {
        assert!(writes.is_empty(), "{writes:?}");
    }

    // A binding that turns forbidden loses what it had.
    let b = binding("team", &[&g4]).roles(&[role("read", "orders")]).on(&t);
    op.apply_all(&[&b]).await;
    let b = binding("team", &[&g4]).roles(&[role("read", "orders"), role("userAdminAnyDatabase", "admin")]).on(&t);
    let applied = op.apply(&b).await;
    assert_eq!(applied.eval.blocked.map(|o| o.reason), Some(reason::GRANT_DENIED));
    assert_eq!(env.state().await, State::default(), "the earlier grant is revoked, the new one not applied");
    assert!(env.ledger(&t).await.is_empty());
}

#[tokio::test]
async fn bad_input_is_reported_with_the_servers_code_and_others_proceed() {
    let env = Env::start().await;
    let mut t = env.target("main", true);
    t.spec.policy.allowed_databases = Some(vec!["*".into()]);
    let mut op = Operator::new(&env, &t).await;
    let (good, ghost, teleport, g4, g5) = (group(1), group(2), group(3), group(4), group(5));

    let b_good = binding("good", &[&good]).roles(&[role("read", "orders")]).on(&t);
    let b_ghost = binding("ghost", &[&ghost]).roles(&[role("ghost", "orders")]).on(&t);
    let b_teleport = binding("teleport", &[&teleport]).privileges(&[privilege("orders", "", &["teleport"])]).on(&t);
    for b in [&b_ghost, &b_teleport, &b_good] {
        op.index(b);
    }
    // One sync with all three: the bad ones sort around the good one.
    let report = op.resync().await;
    let rejected = |s: &Subject, b: &MongoRoleBinding| match report.rejected.get(&s.key()) {
        Some(refused) => {
            refused.get(&dbgrant::runtime::object::key(b)).cloned().unwrap_or_else(|| panic!("{refused:?}"))
        }
        other => panic!("{s:?}: {other:?}"),
    };
    let m = rejected(&ghost, &b_ghost);
    assert!(m.contains("code 31") && m.contains("ghost"), "{m}");
    let m = rejected(&teleport, &b_teleport);
    assert!(m.contains("code 9") && m.contains("teleport"), "{m}");
    assert_eq!(result(&report, &good), Some(&SubjectResult::Applied));
    assert!(!report.rejected.contains_key(&good.key()));
    assert_eq!(env.state().await, env.roles(&[(&good, grant(&[role("read", "orders")], &[]))]), "only the good role");

    // A binding whose new spec is refused keeps nothing of its old one:
    // its grant is what its spec says now, and the server refuses that.
    let b5 = binding("five", &[&g5]).roles(&[role("read", "orders")]).on(&t);
    let b4 = binding("four", &[&g4]).roles(&[role("read", "orders")]).on(&t);
    op.apply_all(&[&b5, &b4]).await;
    let b5 = binding("five", &[&g5]).roles(&[role("read", "orders"), role("ghost", "orders")]).on(&t);
    let report = op.apply(&b5).await.report.unwrap();
    let m = &report.rejected[&g5.key()][&dbgrant::runtime::object::key(&b5)];
    assert!(m.contains("code 31"), "{m}");
    assert!(report.drifted.is_empty(), "a refused update corrected nothing: {:?}", report.drifted);
    let state = env.state().await;
    assert!(!state.roles.contains_key(&env.name(&g5)), "revoked, not half-applied: {state:?}");
    assert_eq!(state.roles[&env.name(&g4)], grant(&[role("read", "orders")], &[]), "others untouched");

    // Fixing the bad binding converges; removing everything leaves nothing,
    // not even the ledger entries of the refused creates.
    let b_ghost = binding("ghost", &[&ghost]).roles(&[role("read", "orders")]).on(&t);
    op.apply_all(&[&b_ghost]).await;
    assert_eq!(env.state().await.roles[&env.name(&ghost)], grant(&[role("read", "orders")], &[]));
    for b in [&b_ghost, &b_teleport, &b_good, &b4, &b5] {
        op.delete(b).await;
    }
    assert_eq!(env.state().await, State::default());
    assert!(env.ledger(&t).await.is_empty(), "{:?}", env.ledger(&t).await);
}

#[tokio::test]
async fn a_refused_role_leaves_no_user_behind() {
    let env = Env::start().await;
    let t = env.target("principals", false);
    let mut op = Operator::new(&env, &t).await;
    let (bad, ok) = (user(1), user(2));
    let b_bad = binding("bad", &[&bad]).roles(&[role("ghost", "orders")]).on(&t);
    let b_ok = binding("ok", &[&ok]).roles(&[role("read", "orders")]).on(&t);
    let report = op.apply(&b_bad).await.report.unwrap();
    let refused = &report.rejected[&bad.key()][&dbgrant::runtime::object::key(&b_bad)];
    assert!(refused.contains("code 31"), "{report:?}");
    op.apply_all(&[&b_ok]).await;
    let expected = env.roles(&[(&ok, grant(&[role("read", "orders")], &[]))]).with_user(&env, &ok);
    assert_eq!(env.state().await, expected, "no role and no user for the refused subject");
    if let Some(log) = env.log() {
        let created: Vec<&str> =
            log.iter().filter(|r| r.name == "createUser").filter_map(|r| r.body.get_str("createUser").ok()).collect();
        assert_eq!(created, [env.name(&ok)], "createUser never ran for the refused subject");
    }
    op.delete(&b_bad).await;
    op.delete(&b_ok).await;
    assert_eq!(env.state().await, State::default());
    assert!(env.ledger(&t).await.is_empty());
}

#[tokio::test]
async fn a_refused_binding_is_isolated_and_the_others_on_its_group_are_applied() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let g = group(1);
    let a = binding("a-readers", &[&g]).roles(&[role("read", "orders")]).on(&t);
    let bad = binding("b-ghost", &[&g]).roles(&[role("ghost", "orders")]).on(&t);
    let c = binding("c-audit", &[&g]).privileges(&[privilege("orders", "audit", &["insert"])]).on(&t);
    for b in [&a, &bad, &c] {
        op.index(b);
    }
    // The union holds the ghost role: the server refuses it, dbgrant tries
    // the contributions one by one and writes the union of the others.
    let report = op.resync().await;
    let refused = &report.rejected[&g.key()];
    assert_eq!(refused.keys().collect::<Vec<_>>(), [&dbgrant::runtime::object::key(&bad)], "{refused:?}");
    assert!(refused[&dbgrant::runtime::object::key(&bad)].contains("code 31"), "{refused:?}");
    assert_eq!(result(&report, &g), Some(&SubjectResult::Applied));
    let want = grant(&[role("read", "orders")], &[privilege("orders", "audit", &["insert"])]);
    assert_eq!(env.state().await, env.roles(&[(&g, want)]));
    assert!(
        !env.state().await.roles.contains_key(&sync::scratch_role(&env.name(&g))),
        "the scratch role used to try contributions is gone"
    );
    if let Some(log) = env.log() {
        let name = sync::scratch_role(&env.name(&g));
        let scratch = log.iter().filter(|r| r.body.get_str("createRole") == Ok(name.as_str())).count();
        assert_eq!(scratch, 3, "each contribution tried once on the scratch role");
    }

    // Twenty more good bindings, then a second bad one: what the role
    // already holds needs no try, so isolating costs a scratch write for
    // each refused contribution (the new one, and the ghost, retried since
    // the group changed), not one per binding.
    let more: Vec<MongoRoleBinding> = (0..20)
        .map(|i| {
            binding(&format!("more-{i:02}"), &[&g])
                .privileges(&[privilege("orders", &format!("c{i}"), &["find"])])
                .on(&t)
        })
        .collect();
    for b in &more {
        op.apply_all(&[b]).await;
    }
    env.clear_log();
    let worse = binding("d-teleport", &[&g]).privileges(&[privilege("orders", "x", &["teleport"])]).on(&t);
    let report = op.apply(&worse).await.report.unwrap();
    let refused: Vec<&String> = report.rejected[&g.key()].keys().collect();
    assert_eq!(refused, [&dbgrant::runtime::object::key(&bad), &dbgrant::runtime::object::key(&worse)], "{report:?}");
    if let Some(log) = env.log() {
        let name = sync::scratch_role(&env.name(&g));
        let scratch = log.iter().filter(|r| r.body.get_str("createRole") == Ok(name.as_str())).count();
        assert_eq!(scratch, 2, "only the contributions the role does not already hold are tried");
    }
    let role = &env.state().await.roles[&env.name(&g)];
    assert_eq!((role.roles.len(), role.privileges.len()), (1, 21), "a, c and the twenty are applied");
}

#[tokio::test]
async fn a_bad_binding_on_a_shared_group_does_not_block_another_bindings_revocation() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let g = group(1);
    let a = binding("a-readers", &[&g]).roles(&[role("read", "orders")]).on(&t);
    let bad = binding("b-ghost", &[&g]).roles(&[role("ghost", "orders")]).on(&t);
    op.apply_all(&[&a]).await;
    let report = op.apply(&bad).await.report.unwrap();
    assert!(report.rejected[&g.key()].contains_key(&dbgrant::runtime::object::key(&bad)), "{report:?}");
    assert_eq!(env.state().await, env.roles(&[(&g, grant(&[role("read", "orders")], &[]))]));

    // Deleting A revokes read@orders although B's refused grant still
    // names the group, and the revocation is confirmed by reading back.
    let report = op.delete(&a).await;
    assert!(report.unconfirmed.is_empty(), "{:?}", report.unconfirmed);
    assert_eq!(env.state().await, State::default(), "A's read@orders is gone");
    assert!(report.rejected[&g.key()].contains_key(&dbgrant::runtime::object::key(&bad)), "B still refused");
    op.delete(&bad).await;
    assert!(env.ledger(&t).await.is_empty());
}

#[tokio::test]
async fn a_bad_binding_does_not_keep_an_expired_siblings_grant_alive() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let g = group(1);
    let short = binding("short", &[&g]).roles(&[role("readWrite", "orders")]).expires_at(t0() + hours(1)).on(&t);
    let bad = binding("ghost", &[&g]).roles(&[role("ghost", "orders")]).on(&t);
    op.apply_all(&[&short]).await;
    op.apply(&bad).await;
    op.now = t0() + hours(2);
    let applied = op.apply(&short).await;
    assert_eq!(applied.eval.blocked.as_ref().map(|o| o.reason), Some(reason::EXPIRED));
    let report = applied.report.expect("revoked");
    assert!(report.unconfirmed.is_empty(), "{:?}", report.unconfirmed);
    assert_eq!(env.state().await, State::default(), "readWrite@orders revoked at expiry");
}

#[tokio::test]
async fn a_revocation_is_not_confirmed_while_the_server_still_carries_it() {
    let env = Env::start().await;
    let Some(double) = &env.double else { return };
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let g = group(1);
    let a = binding("a", &[&g]).roles(&[role("read", "orders")]).on(&t);
    let b = binding("b", &[&g]).roles(&[role("read", "billing")]).on(&t);
    let c = binding("c", &[&g]).roles(&[role("readWrite", "orders")]).on(&t);
    op.apply_all(&[&a, &b, &c]).await;
    // The update that shrinks the role is refused once for no fault of any
    // binding: every contribution passes on the scratch role, so nobody is
    // blamed, and the read-back shows readWrite@orders still there.
    double.fail_next(1, 2, Some("updateRole"));
    let report = op.delete(&c).await;
    assert!(matches!(result(&report, &g), Some(SubjectResult::Rejected(_))), "{report:?}");
    assert!(report.rejected.is_empty(), "nobody is blamed: {:?}", report.rejected);
    let pending = &report.unconfirmed[&g.key()];
    assert!(pending.contains("still differs"), "{pending}");
    assert!(env.state().await.roles[&env.name(&g)].roles.contains(&("readWrite".into(), "orders".into())));
    // The retry (the finalizer kept the binding) completes it.
    let report = op.delete(&c).await;
    assert!(report.unconfirmed.is_empty(), "{:?}", report.unconfirmed);
    let want = grant(&[role("read", "orders"), role("read", "billing")], &[]);
    assert_eq!(env.state().await, env.roles(&[(&g, want)]));
}

/// A User and a ServicePrincipal with the same object id are one
/// `$external` user: one tenant naming the other's principal under the
/// other kind joins its union, never replaces it.
#[tokio::test]
async fn a_principal_named_as_user_and_as_service_principal_is_one_subject() {
    let env = Env::start().await;
    let t = env.target("principals", false);
    let mut op = Operator::new(&env, &t).await;
    let id = "3e3e3e3e-0000-4000-8000-000000000001";
    let as_user = subject(SubjectKind::User, id);
    let as_sp = subject(SubjectKind::ServicePrincipal, id);
    let mine = binding("mine", &[&as_user]).roles(&[role("read", "orders")]).on(&t);
    let theirs = binding("theirs", &[&as_sp]).namespace("team-b").roles(&[role("read", "billing")]).on(&t);
    op.apply_all(&[&mine, &theirs]).await;
    let both = grant(&[role("read", "orders"), role("read", "billing")], &[]);
    assert_eq!(env.state().await, env.roles(&[(&as_user, both)]).with_user(&env, &as_user));
    let report = op.delete(&theirs).await;
    assert!(report.unconfirmed.is_empty(), "{:?}", report.unconfirmed);
    let mine_only = grant(&[role("read", "orders")], &[]);
    assert_eq!(env.state().await, env.roles(&[(&as_user, mine_only)]).with_user(&env, &as_user), "not dropped");
    assert!(op.resync().await.writes == 0, "one union, so a resync has nothing to fight over");
    op.delete(&mine).await;
    assert_eq!(env.state().await, State::default());
}

/// Retain holds when what remains on the group is refused: the role is
/// released (left in place, unmanaged), not dropped.
#[tokio::test]
async fn retain_holds_when_the_rest_of_the_union_is_refused() {
    let env = Env::start().await;
    let mut t = env.target("main", true);
    t.spec.policy.allow_retain = true;
    let mut op = Operator::new(&env, &t).await;
    let g = group(1);
    let mut keep = binding("keep", &[&g]).roles(&[role("read", "orders")]).on(&t);
    keep.spec.deletion_policy = DeletionPolicy::Retain;
    let bad = binding("ghost", &[&g]).roles(&[role("ghost", "orders")]).on(&t);
    op.apply_all(&[&keep]).await;
    op.apply(&bad).await;
    let report = op.delete(&keep).await;
    assert!(report.unconfirmed.is_empty(), "{:?}", report.unconfirmed);
    assert_eq!(env.state().await, env.roles(&[(&g, grant(&[role("read", "orders")], &[]))]), "released, not dropped");
    assert!(env.ledger(&t).await.is_empty(), "and no longer dbgrant's");
}

#[tokio::test]
async fn role_reads_are_batched_by_info_batch_not_per_binding() {
    let env = Env::start().await;
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let bindings: Vec<MongoRoleBinding> =
        (0..1200).map(|i| binding(&format!("b{i}"), &[&group(i)]).roles(&[role("read", "orders")]).on(&t)).collect();
    for b in &bindings {
        op.index(b);
    }

    let check = |label: &str, rolesinfo_before: u64| {
        let calls = 1200usize.div_ceil(INFO_BATCH);
        assert_eq!(
            env.ops("rolesInfo") - rolesinfo_before,
            calls as u64,
            "{label}: ceil(1200 / INFO_BATCH) rolesInfo calls"
        );
        if let Some(log) = env.log() {
            let sizes: Vec<usize> = log
                .iter()
                .filter(|r| r.name == "rolesInfo")
                .map(|r| r.body.get_array("rolesInfo").map_or(0, Vec::len))
                .collect();
            assert!(sizes.len() == calls && sizes.iter().all(|n| *n == INFO_BATCH), "{label}: {sizes:?}");
            let finds = log.iter().filter(|r| r.name == "find").count();
            assert_eq!(finds, 1 + 3, "{label}: ledger_all, then the ledger in chunks of 500");
        }
    };
    env.clear_log();
    let before = env.ops("rolesInfo");
    let report = op.resync().await;
    assert_eq!(report.results.len(), 1200);
    assert!(report.results.values().all(|r| *r == SubjectResult::Applied));
    check("first pass", before);
    assert_eq!(env.state().await.roles.len(), 1200);

    env.clear_log();
    let before = env.ops("rolesInfo");
    let report = op.resync().await;
    assert_eq!(report.writes, 0);
    check("steady pass", before);
    if let Some(double) = &env.double {
        assert_eq!(double.counters().writes, 0);
    }
}

#[tokio::test]
async fn bindings_deleted_while_the_operator_was_down_are_collected_from_the_ledger() {
    let env = Env::start().await;
    let claims = env.target("claims", true);
    let principals = env.target("principals", false);
    let neighbour = env.target("neighbour", true);
    let (g1, g2, g3, u1) = (group(1), group(2), group(3), user(1));
    let keep = binding("keep", &[&g1]).roles(&[role("read", "orders")]).on(&claims);
    let gone = binding("gone", &[&g2]).roles(&[role("read", "billing")]).on(&claims);
    let gone_user = binding("gone-user", &[&u1]).roles(&[role("read", "orders")]).on(&principals);
    let other = binding("other", &[&g3]).roles(&[role("read", "orders")]).on(&neighbour);
    let mut op = Operator::new(&env, &claims).await;
    op.apply_all(&[&keep, &gone]).await;
    let mut op_users = Operator::new(&env, &principals).await;
    op_users.apply_all(&[&gone_user]).await;
    let mut op_neighbour = Operator::new(&env, &neighbour).await;
    op_neighbour.apply_all(&[&other]).await;
    // Not dbgrant's: same prefix, never in the ledger.
    let stranger = group(9);
    env.run("admin", doc! { "createRole": env.name(&stranger), "roles": [], "privileges": [] }).await.unwrap();

    // Down; `gone` and `gone-user` are deleted meanwhile (finalizers
    // removed by hand). The new process never hears about them.
    let op = op.restart(&[&keep]).await;
    let op_users = op_users.restart(&[]).await;
    env.clear_log();
    op.resync().await;
    op_users.resync().await;

    let expected = env.roles(&[
        (&g1, grant(&[role("read", "orders")], &[])),
        (&g3, grant(&[role("read", "orders")], &[])),
        (&stranger, MongoGrant::default()),
    ]);
    assert_eq!(env.state().await, expected, "orphans collected; the neighbour's and the stranger's roles kept");
    assert_eq!(env.ledger(&claims).await, [env.role_id(&g1)].into());
    assert!(env.ledger(&principals).await.is_empty());
    assert_eq!(env.ledger(&neighbour).await, [env.role_id(&g3)].into());
    if let Some(log) = env.log() {
        let drops: Vec<&str> = log.iter().filter(|r| r.name.starts_with("drop")).map(|r| r.name.as_str()).collect();
        assert_eq!(drops, ["dropRole", "dropUser", "dropRole"], "the user goes before its role");
    }
}

#[tokio::test]
async fn principals_get_external_users_when_the_authorization_claim_is_off() {
    let env = Env::start().await;
    let t = env.target("principals", false);
    let mut op = Operator::new(&env, &t).await;
    let (u1, sp1, g1) = (user(1), service_principal(1), group(1));
    let b = binding("app", &[&u1, &sp1]).roles(&[role("readWrite", "orders")]).on(&t);
    op.apply_all(&[&b]).await;
    let g = grant(&[role("readWrite", "orders")], &[]);
    let expected = env.roles(&[(&u1, g.clone()), (&sp1, g)]).with_user(&env, &u1).with_user(&env, &sp1);
    assert_eq!(env.state().await, expected);
    let ledger: BTreeSet<String> =
        [env.role_id(&u1), env.user_id(&u1), env.role_id(&sp1), env.user_id(&sp1)].into_iter().collect();
    assert_eq!(env.ledger(&t).await, ledger);
    // No password for $external users.
    let reply = env.run("$external", doc! { "usersInfo": env.name(&u1), "showCredentials": true }).await.unwrap();
    let u = reply.get_array("users").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(u.get_array("mechanisms").unwrap(), &vec![Bson::from("external")], "{u:?}");
    if let Some(log) = env.log() {
        assert!(log.iter().filter(|r| r.name == "createUser").all(|r| !r.body.contains_key("pwd")));
    }

    // Groups cannot be named on such a target.
    let groups = binding("groups", &[&g1]).roles(&[role("read", "orders")]).on(&t);
    let applied = op.apply(&groups).await;
    assert_eq!(applied.eval.blocked.map(|o| o.reason), Some(reason::INVALID_SPEC));

    // A user's roles edited out of band are restored.
    env.run("$external", doc! { "grantRolesToUser": env.name(&u1), "roles": [{ "role": "root", "db": "admin" }] })
        .await
        .unwrap();
    let report = op.resync().await;
    assert_eq!(report.drifted, vec![env.user_id(&u1)]);
    assert_eq!(env.state().await, expected);

    // Deleting drops each user before its role.
    env.clear_log();
    op.delete(&b).await;
    assert_eq!(env.state().await, State::default());
    assert!(env.ledger(&t).await.is_empty());
    if let Some(log) = env.log() {
        let drops: Vec<String> = log
            .iter()
            .filter(|r| r.name.starts_with("drop"))
            .map(|r| format!("{} {}", r.name, r.body.get_str(&r.name).unwrap_or_default()))
            .collect();
        let (n1, n2) = (env.name(&u1), env.name(&sp1));
        let mut want = vec![
            format!("dropUser {n1}"),
            format!("dropRole {n1}"),
            format!("dropUser {n2}"),
            format!("dropRole {n2}"),
        ];
        // Subjects sync in key order (User after ServicePrincipal).
        if SubjectKey::cmp(&u1.key(), &sp1.key()).is_gt() {
            want.rotate_left(2);
        }
        assert_eq!(drops, want);
    }
}

#[tokio::test]
async fn adoption_takes_over_existing_objects_only_when_the_target_says_so() {
    let env = Env::start().await;
    let mut t = env.target("main", true);
    let (same, different) = (group(1), group(2));
    let want = grant(&[role("read", "orders")], &[]);
    // Hand-made roles: one already equal to what the binding grants.
    env.run(
        "admin",
        doc! { "createRole": env.name(&same), "roles": [{ "role": "read", "db": "orders" }], "privileges": [] },
    )
    .await
    .unwrap();
    env.run(
        "admin",
        doc! { "createRole": env.name(&different), "roles": [{ "role": "readWrite", "db": "x" }], "privileges": [] },
    )
    .await
    .unwrap();
    let b = binding("team", &[&same, &different]).roles(&[role("read", "orders")]).on(&t);

    let mut op = Operator::new(&env, &t).await;
    let report = op.apply(&b).await.report.unwrap();
    assert!(report.results.values().all(|r| matches!(r, SubjectResult::Conflict(_))), "{report:?}");
    op.delete(&b).await;

    t.spec.adopt = true;
    let mut op = Operator::new(&env, &t).await;
    op.apply_all(&[&b]).await;
    assert_eq!(env.state().await, env.roles(&[(&same, want.clone()), (&different, want)]));
    assert_eq!(
        env.ledger(&t).await,
        [env.role_id(&same), env.role_id(&different)].into(),
        "adopted objects are dbgrant's from now on, even one that needed no change"
    );
    op.delete(&b).await;
    assert_eq!(env.state().await, State::default(), "so they go with the binding");

    // A hand-made $external user is adopted the same way.
    let mut tu = env.target("principals", false);
    tu.spec.adopt = true;
    let u1 = user(1);
    env.run("$external", doc! { "createUser": env.name(&u1), "roles": [{ "role": "read", "db": "x" }] }).await.unwrap();
    let mut op = Operator::new(&env, &tu).await;
    let bu = binding("app", &[&u1]).roles(&[role("read", "orders")]).on(&tu);
    op.apply_all(&[&bu]).await;
    assert_eq!(env.state().await, env.roles(&[(&u1, grant(&[role("read", "orders")], &[]))]).with_user(&env, &u1));
    assert_eq!(env.ledger(&tu).await, [env.role_id(&u1), env.user_id(&u1)].into());
    op.delete(&bu).await;
    assert_eq!(env.state().await, State::default());
}

#[tokio::test]
async fn a_crash_between_ledger_and_create_never_leaves_an_unowned_role() {
    let env = Env::start().await;
    let Some(double) = &env.double else { return }; // needs fault injection
    let t = env.target("main", true);
    let mut op = Operator::new(&env, &t).await;
    let g = group(1);
    let b = binding("team", &[&g]).roles(&[role("read", "orders")]).on(&t);
    op.index(&b);
    let work = dbgrant::mongo::sync::subject_work(&t, &op.index, &[g.key()], false, false);

    // The ledger write fails: createRole is never sent.
    double.fail_next(1, 8, Some("update"));
    let err = sync::sync(&op.name(), &op.client, &env.metrics, &env.scope(&op.name()), false, false, &work)
        .await
        .expect_err("ledger write failed");
    assert!(err.to_string().contains("ownership ledger"), "{err}");
    assert!(double.commands_named("createRole").is_empty());
    assert_eq!(env.state().await, State::default());

    // The connection dies right after createRole ran: the role exists and
    // is already in the ledger, so the retry finishes without a conflict.
    double.drop_after_apply_next(1, Some("createRole"));
    assert!(
        sync::sync(&op.name(), &op.client, &env.metrics, &env.scope(&op.name()), false, false, &work).await.is_err()
    );
    assert_eq!(env.ledger(&t).await, [env.role_id(&g)].into());
    let report = op.resync().await;
    assert_eq!(result(&report, &g), Some(&SubjectResult::Applied));
    assert_eq!(env.state().await, env.roles(&[(&g, grant(&[role("read", "orders")], &[]))]));

    // Crash after dropRole, before the ledger delete: the next sync cleans
    // the ledger entry up.
    double.drop_after_apply_next(1, Some("dropRole"));
    op.index.remove(&dbgrant::runtime::object::key(&b));
    let work = dbgrant::mongo::sync::subject_work(&t, &op.index, &[g.key()], false, false);
    assert!(
        sync::sync(&op.name(), &op.client, &env.metrics, &env.scope(&op.name()), false, false, &work).await.is_err()
    );
    assert_eq!(env.ledger(&t).await, [env.role_id(&g)].into());
    op.resync().await;
    assert!(env.ledger(&t).await.is_empty());
    assert_eq!(env.state().await, State::default());
}

#[tokio::test]
async fn probe_checks_rights_and_errors_never_quote_credentials() {
    let env = Env::start().await;
    let client = connect(&env.uri).await;
    let probe = connection::probe("main", &client, "NotUsed", &connection::all_rights())
        .await
        .expect("the operator login has the rights");
    assert!(!probe.version.is_empty());
    if let Some(double) = &env.double {
        assert_eq!(probe.version, "8.0.4");
        let viewer = connect(&double.uri_with_credentials("viewer", "viewer-pw")).await;
        let err = connection::probe("main", &viewer, "NotUsed", &connection::all_rights())
            .await
            .expect_err("a read-only login");
        assert!(err.to_string().contains("lacks") && err.to_string().contains("createRole"), "{err}");
    }

    // Wrong password, and nobody listening: fixed messages, no secrets.
    if let Some(double) = &env.double {
        let wrong = connect(&double.uri_with_credentials(LOGIN, "not-the-password")).await;
        let err =
            connection::probe("main", &wrong, "NotUsed", &connection::all_rights()).await.expect_err("bad password");
        let text = format!("{err} {err:?}");
        assert!(text.contains("authentication failed"), "{text}");
        assert!(!text.contains("not-the-password") && !text.contains(PASSWORD), "{text}");
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut options =
        ClientOptions::parse(format!("mongodb://u:{PASSWORD}@{closed}/?directConnection=true")).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_millis(300));
    let err = connection::probe("main", &Client::with_options(options).unwrap(), "NotUsed", &connection::all_rights())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("server unreachable") && !text.contains(PASSWORD), "{text}");
}

// ======================================== dbgrant's own MongoDB identity

/// A SCRAM login made for one test, with the given roles (or with the
/// least-privilege custom role, made for it), by the environment's login —
/// on the double and on a real server alike — and dropped when the test
/// ends (also on failure).
struct Identity<'e> {
    env: &'e Env,
    user: String,
    password: String,
    /// The custom role made for it, if any.
    role: Option<String>,
}

impl<'e> Identity<'e> {
    /// A user in `admin` with `roles` (`(role, db)`).
    async fn with_roles(env: &'e Env, suffix: &str, roles: &[(&str, &str)]) -> Identity<'e> {
        let user = format!("{}-{suffix}", env.prefix);
        let password = format!("pw-{}", ObjectId::new().to_hex());
        let roles: Vec<Bson> = roles.iter().map(|(r, d)| Bson::Document(doc! { "role": *r, "db": *d })).collect();
        env.run("admin", doc! { "createUser": &user, "pwd": &password, "roles": roles })
            .await
            .expect("the environment's login creates the test identity");
        Identity { env, user, password, role: None }
    }

    /// A user in `admin` with README's least-privilege custom role.
    async fn least_privilege(env: &'e Env, suffix: &str) -> Identity<'e> {
        let role = format!("{}-dbgrantOperator", env.prefix);
        env.run(
            "admin",
            doc! {
                "createRole": &role,
                "privileges": [
                    { "resource": { "db": "admin", "collection": "" }, "actions": ["createRole", "dropRole", "viewRole"] },
                    { "resource": { "db": "", "collection": "" }, "actions": ["grantRole", "revokeRole"] },
                    { "resource": { "db": "$external", "collection": "" }, "actions": ["createUser", "dropUser", "viewUser"] },
                    { "resource": { "db": dbgrant::plan::mongo::LEDGER_DB, "collection": dbgrant::plan::mongo::LEDGER_COLLECTION },
                      "actions": ["find", "insert", "update", "remove"] },
                ],
                "roles": [],
            },
        )
        .await
        .expect("the environment's login creates the custom role");
        let mut identity = Identity::with_roles(env, suffix, &[(role.as_str(), "admin")]).await;
        identity.role = Some(role);
        identity
    }

    /// A client logged in as this identity.
    async fn client(&self) -> Client {
        let mut options = ClientOptions::parse(&self.env.uri).await.expect("the test server's URI parses");
        options.app_name = Some("dbgrant-contract".into());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.credential = Some(
            Credential::builder()
                .mechanism(AuthMechanism::ScramSha256)
                .username(self.user.clone())
                .password(self.password.clone())
                .source("admin".to_string())
                .build(),
        );
        Client::with_options(options).expect("client")
    }

    /// An `Operator` on `target` that talks to the server as this identity.
    async fn operator(&self, target: &MongoTarget) -> Operator<'e> {
        let mut op = Operator::new(self.env, target).await;
        op.client = self.client().await;
        op
    }
}

impl Drop for Identity<'_> {
    fn drop(&mut self) {
        if self.env.double.is_some() {
            return;
        }
        let (uri, user, role) = (self.env.uri.clone(), self.user.clone(), self.role.clone());
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let admin = connect(&uri).await.database("admin");
                let _ = admin.run_command(doc! { "dropUser": user }).await;
                if let Some(role) = role {
                    let _ = admin.run_command(doc! { "dropRole": role }).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Everything dbgrant does on a target, through its own sync code, as
/// `identity`: a group's role created, its union grown and shrunk, dropped;
/// a principal's `$external` user created, its drift restored, dropped.
async fn manages_roles_and_users_end_to_end(env: &Env, identity: &Identity<'_>) {
    connection::probe("main", &identity.client().await, "NotUsed", &connection::all_rights())
        .await
        .expect("the identity has every right needed");

    let t = env.target(&format!("{}-groups", identity.user), true);
    let mut op = identity.operator(&t).await;
    let g = group(14);
    let audit = privilege("billing", "audit", &["find", "insert"]);
    let readers = binding("readers", &[&g]).roles(&[role("read", "orders")]).on(&t);
    let auditors = binding("auditors", &[&g]).privileges(std::slice::from_ref(&audit)).on(&t);
    op.apply_all(&[&readers]).await;
    assert_eq!(env.state().await, env.roles(&[(&g, grant(&[role("read", "orders")], &[]))]));
    op.apply_all(&[&auditors]).await;
    let union = grant(&[role("read", "orders")], std::slice::from_ref(&audit));
    assert_eq!(env.state().await, env.roles(&[(&g, union)]));
    let report = op.delete(&readers).await;
    assert_eq!(result(&report, &g), Some(&SubjectResult::Applied));
    assert_eq!(env.state().await, env.roles(&[(&g, grant(&[], std::slice::from_ref(&audit)))]));
    let report = op.delete(&auditors).await;
    assert_eq!(result(&report, &g), Some(&SubjectResult::Applied));
    assert_eq!(env.state().await, State::default());
    assert!(env.ledger(&t).await.is_empty());

    let t = env.target(&format!("{}-principals", identity.user), false);
    let mut op = identity.operator(&t).await;
    let u = user(14);
    let app = binding("app", &[&u]).roles(&[role("readWrite", "orders")]).on(&t);
    op.apply_all(&[&app]).await;
    let expected = env.roles(&[(&u, grant(&[role("readWrite", "orders")], &[]))]).with_user(env, &u);
    assert_eq!(env.state().await, expected);
    env.run("$external", doc! { "grantRolesToUser": env.name(&u), "roles": [{ "role": "read", "db": "billing" }] })
        .await
        .unwrap();
    assert_eq!(op.resync().await.drifted, vec![env.user_id(&u)], "updateUser restored the user's roles");
    assert_eq!(env.state().await, expected);
    op.delete(&app).await;
    assert_eq!(env.state().await, State::default());
    assert!(env.ledger(&t).await.is_empty());
}

#[tokio::test]
async fn identity_user_admin_on_admin_alone_fails_the_probe_naming_what_is_missing() {
    let env = Env::start().await;
    let alone = Identity::with_roles(&env, "useradmin", &[("userAdmin", "admin")]).await;
    let err = connection::probe("main", &alone.client().await, "NotUsed", &connection::all_rights())
        .await
        .expect_err("userAdmin@admin alone");
    let text = err.to_string();
    for missing in [
        "lacks grantRole and revokeRole on every database",
        "createUser, dropUser and viewUser on the $external database",
        "find, insert, update and remove on dbgrant.ownership",
        "userAdmin@admin is not enough",
        "grant it userAdminAnyDatabase@admin and readWrite@dbgrant, or a custom role with",
    ] {
        assert!(text.contains(missing), "{missing:?} not in: {text}");
    }
    let lacks = text.split("; grant it").next().unwrap_or_default();
    assert!(!lacks.contains("createRole"), "userAdmin@admin has those on admin: {text}");
    // So the target is not Ready.
    let outcome = target_controller::target_outcome(&err);
    assert!(!outcome.ready);
    assert_eq!(outcome.reason, reason::UNAUTHORIZED);

    // What the old documentation asked for (userAdmin@admin plus the
    // ledger) fails the probe too, and for good reason: the server refuses
    // the first createRole that names another database (code 13).
    let old = Identity::with_roles(&env, "olddocs", &[("userAdmin", "admin"), ("readWrite", "dbgrant")]).await;
    let err = connection::probe("main", &old.client().await, "NotUsed", &connection::all_rights())
        .await
        .expect_err("the old documented rights");
    assert!(!err.to_string().split("; grant it").next().unwrap_or_default().contains("dbgrant.ownership"), "{err}");
    let t = env.target("olddocs", true);
    let mut op = old.operator(&t).await;
    let g = group(15);
    op.index(&binding("readers", &[&g]).roles(&[role("read", "orders")]).on(&t));
    let work = dbgrant::mongo::sync::subject_work(&t, &op.index, &[g.key()], false, false);
    // A refusal on one database is that grant's, not the target's: the
    // binding is rejected naming the database, other subjects go on.
    let report = sync::sync(&op.name(), &op.client, &env.metrics, &env.scope(&op.name()), false, false, &work)
        .await
        .expect("the sync goes on");
    let refused = report.rejected[&g.key()].values().next().cloned().unwrap_or_default();
    assert!(refused.contains("createRole") && refused.contains("code 13"), "{refused}");
    assert!(refused.contains("\"orders\"") || refused.contains("\"admin\""), "names the database: {refused}");
    assert_eq!(env.state().await, State::default());
}

#[tokio::test]
async fn identity_a_least_privilege_custom_role_is_enough_end_to_end() {
    let env = Env::start().await;
    let least = Identity::least_privilege(&env, "least").await;
    manages_roles_and_users_end_to_end(&env, &least).await;
    // And nothing more: no data outside the ledger.
    let elsewhere = least.client().await.database(&env.prefix).collection::<Document>("data");
    let err = elsewhere.insert_one(doc! { "a": 1 }).await.expect_err("no writes outside the ledger");
    assert!(err.to_string().contains("not authorized"), "{err}");
}

/// A target whose policy names its databases needs `grantRole` only on
/// them: an identity scoped so passes that target's probe (and not a
/// target open to every database) and does its work end to end.
#[tokio::test]
async fn identity_scoped_to_a_targets_databases_is_enough_for_that_target() {
    let env = Env::start().await;
    let custom = format!("{}-scoped", env.prefix);
    env.run(
        "admin",
        doc! {
            "createRole": &custom,
            "privileges": [
                { "resource": { "db": "admin", "collection": "" }, "actions": ["createRole", "dropRole", "viewRole"] },
                { "resource": { "db": "", "collection": "" }, "actions": ["revokeRole"] },
                { "resource": { "db": "orders", "collection": "" }, "actions": ["grantRole"] },
                { "resource": { "db": dbgrant::plan::mongo::LEDGER_DB, "collection": dbgrant::plan::mongo::LEDGER_COLLECTION },
                  "actions": ["find", "insert", "update", "remove"] },
            ],
            "roles": [],
        },
    )
    .await
    .expect("the environment's login creates the custom role");
    let mut scoped = Identity::with_roles(&env, "scoped", &[(custom.as_str(), "admin")]).await;
    scoped.role = Some(custom);
    let client = scoped.client().await;

    let open = env.target("open", true);
    let err = connection::probe("main", &client, "NotUsed", &connection::required_rights(&open.spec))
        .await
        .expect_err("bindings on an open target may name any database");
    assert!(err.to_string().contains("grantRole on every database"), "{err}");

    let mut t = env.target("scoped", true);
    t.spec.policy.allowed_databases = Some(vec!["orders".into()]);
    connection::probe("main", &client, "NotUsed", &connection::required_rights(&t.spec))
        .await
        .expect("grantRole on orders is all this target needs");
    let mut op = scoped.operator(&t).await;
    let g = group(15);
    let readers = binding("readers", &[&g]).roles(&[role("read", "orders")]).on(&t);
    let writers = binding("writers", &[&g]).privileges(&[privilege("orders", "audit", &["insert"])]).on(&t);
    op.apply_all(&[&readers, &writers]).await;
    let union = grant(&[role("read", "orders")], &[privilege("orders", "audit", &["insert"])]);
    assert_eq!(env.state().await, env.roles(&[(&g, union)]));
    let report = op.delete(&readers).await;
    assert_eq!(result(&report, &g), Some(&SubjectResult::Applied), "updateRole with revokeRole on all databases");
    assert!(report.unconfirmed.is_empty());
    op.delete(&writers).await;
    assert_eq!(env.state().await, State::default());
    assert!(env.ledger(&t).await.is_empty());
}

#[tokio::test]
async fn identity_user_admin_any_database_with_the_ledger_is_enough_end_to_end() {
    let env = Env::start().await;
    let documented =
        Identity::with_roles(&env, "documented", &[("userAdminAnyDatabase", "admin"), ("readWrite", "dbgrant")]).await;
    manages_roles_and_users_end_to_end(&env, &documented).await;
}

/// Every write to a role or user produces exactly one audit record, and
/// every record is a write the server saw: the audit trail of a churn
/// (creates, a union growing and shrinking, a refused grant isolated on
/// the scratch role, principals with `$external` users, deletes) matches
/// the server's own command log one to one, in order, and holds no
/// credential.
#[tokio::test]
async fn the_audit_trail_matches_the_servers_writes_one_to_one() {
    let env = Env::start().await;
    let groups = env.target("audit-groups", true);
    let principals = env.target("audit-principals", false);
    let mut op = Operator::new(&env, &groups).await;
    let (g1, g2, u1) = (group(1), group(2), user(1));
    let a = binding("a-readers", &[&g1]).roles(&[role("read", "orders")]).on(&groups);
    let b = binding("b-audit", &[&g1, &g2]).privileges(&[privilege("orders", "audit", &["find"])]).on(&groups);
    let ghost = binding("c-ghost", &[&g1]).roles(&[role("ghost", "orders")]).on(&groups);
    op.apply_all(&[&a, &b]).await;
    op.apply(&ghost).await;
    op.delete(&b).await;
    op.delete(&ghost).await;
    op.delete(&a).await;
    let mut op = Operator::new(&env, &principals).await;
    let app = binding("app", &[&u1]).roles(&[role("readWrite", "orders")]).on(&principals);
    op.apply(&app).await;
    op.delete(&app).await;

    let records = env.audit_records();
    assert!(records.len() >= 10, "{records:#?}");
    for r in &records {
        assert_eq!(r["schema"], audit::SCHEMA);
        assert!(r["time"].as_str().is_some_and(|t| t.parse::<Timestamp>().is_ok()), "{r}");
        assert!(r["trigger"]["kind"] == "MongoRoleBinding", "{r}");
    }
    let text = String::from_utf8(env.audit_lines.lock().unwrap().clone()).unwrap();
    assert!(!text.contains(PASSWORD) && !text.contains(&env.uri), "the audit trail must never carry a credential");
    // A refused grant is recorded as refused, with the server's reason.
    assert!(
        records.iter().any(|r| r["outcome"] == "refused" && r["message"].as_str().is_some_and(|m| m.contains("31")))
    );
    assert!(records.iter().any(|r| r["action"] == "validate"), "isolation on the scratch role is audited");
    assert!(records.iter().any(|r| r["object"]["kind"] == "user"), "$external users are audited");

    let Some(log) = env.log() else { return };
    const WRITES: [&str; 6] = ["createRole", "updateRole", "dropRole", "createUser", "updateUser", "dropUser"];
    let server: Vec<(String, String, bool)> = log
        .iter()
        .filter(|c| WRITES.contains(&c.name.as_str()) && c.user.as_deref() == Some(&format!("{LOGIN}@admin")))
        .map(|c| {
            let name = c.body.get_str(&c.name).unwrap_or_default();
            // dbgrant treats RoleNotFound / UserNotFound on a drop as done.
            let gone = c.name.starts_with("drop") && matches!(c.outcome, Outcome::Failed { code: 11 | 31 });
            let ok = matches!(c.outcome, Outcome::Ok) || gone;
            (c.name.clone(), format!("{}.{name}", c.db), ok)
        })
        .collect();
    let audited: Vec<(String, String, bool)> = records
        .iter()
        .map(|r| {
            let op = r["operation"].as_str().unwrap().to_string();
            (op, r["object"]["name"].as_str().unwrap().to_string(), r["outcome"] == "applied")
        })
        .collect();
    assert_eq!(audited, server, "no write without a record, no record without a write");
}

/// Observe mode writes nothing — no role, no user, no ledger entry — while
/// its plan says what it would write; enforcing then writes exactly that.
#[tokio::test]
async fn observe_mode_writes_nothing_and_enforcing_applies_exactly_its_plan() {
    let env = Env::start().await;
    let mut t = env.target("observe", false);
    t.spec.mode = dbgrant::api::TargetMode::Observe;
    let (u1, u2) = (user(1), user(2));
    let a = binding("a", &[&u1]).roles(&[role("read", "orders")]).on(&t);
    let b = binding("b", &[&u1, &u2]).privileges(&[privilege("orders", "audit", &["find"])]).on(&t);
    let mut op = Operator::new(&env, &t).await;
    env.clear_log();
    op.apply_all(&[&a, &b]).await;
    let report = op.resync().await;
    let planned: Vec<String> = report.planned.values().flatten().cloned().collect();
    assert_eq!(report.writes, 0);
    assert_eq!(env.state().await, State::default(), "nothing written");
    assert!(env.ledger(&t).await.is_empty(), "not even the ledger");
    if let Some(log) = env.log() {
        let writes: Vec<&str> = log.iter().filter(|c| c.is_write).map(|c| c.name.as_str()).collect();
        assert!(writes.is_empty(), "{writes:?}");
    }
    assert_eq!(planned.len(), 4, "two roles and two users: {planned:?}");
    assert!(planned.iter().any(|p| p.starts_with("create role admin.") && p.contains("read@orders")), "{planned:?}");

    // Enforce: the target's next pass (every binding already in the
    // index, as the operator primes it) writes exactly the plan.
    t.spec.mode = dbgrant::api::TargetMode::Enforce;
    let mut op = Operator::new(&env, &t).await;
    op.index(&a);
    op.index(&b);
    let report = op.resync().await;
    assert_eq!(report.writes, planned.len(), "{report:?}");
    let records = env.audit_records();
    let written: Vec<String> = records
        .iter()
        .map(|r| format!("{} {}", r["action"].as_str().unwrap(), r["object"]["name"].as_str().unwrap()))
        .collect();
    let intended: Vec<String> = planned
        .iter()
        .map(|p| {
            let words: Vec<&str> = p.split(' ').collect();
            format!("{} {}", words[0], words[2])
        })
        .collect();
    let (mut written_sorted, mut intended_sorted) = (written.clone(), intended.clone());
    written_sorted.sort();
    intended_sorted.sort();
    assert_eq!(written_sorted, intended_sorted, "enforcing wrote exactly the observed plan");
    let g = grant(&[role("read", "orders")], &[privilege("orders", "audit", &["find"])]);
    let g2 = grant(&[], &[privilege("orders", "audit", &["find"])]);
    assert_eq!(env.state().await, env.roles(&[(&u1, g), (&u2, g2)]).with_user(&env, &u1).with_user(&env, &u2));
}
