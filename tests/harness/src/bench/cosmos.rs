//! The Cosmos DB backend of the benchmark: one ARM + Entra double (real
//! HTTPS, the real `azure_identity` workload-identity flow) serving one
//! database account per `CosmosTarget`, with the issue's defaults: 50 ms per
//! ARM call, long-running operations that take two polls, the per-principal
//! write bucket (200, +10/s), ~500 control-plane writes per account per
//! 5 minutes, 2,000 assignments per account.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use dbgrant_doubles::arm::{
    ARM_RESOURCE, Account, AccountRef, ArmAccess, ArmDouble, ArmDoubleConfig, DATA_CONTRIBUTOR_ID, DATA_READER_ID,
    DEFAULT_SUBSCRIPTION_ID, DEFAULT_TENANT_ID, FEDERATED_TOKEN_AUDIENCE, FederatedCredential, Principal, RequestKind,
    RequestRecord, new_guid,
};
use serde_json::{Value, json};

use super::backend::{Backend, BindingSpec, Grant, Layout, OpCounts};
use crate::{Cluster, examples, paths};

const RESOURCE_GROUP: &str = "rg-dbgrant-bench";

/// Cosmos DB accounts behind one ARM double.
pub struct CosmosBackend {
    latency: Duration,
    double: Option<ArmDouble>,
    accounts: Vec<AccountRef>,
    client_id: String,
    token_file: PathBuf,
}

impl CosmosBackend {
    /// ARM calls that take `latency` each.
    pub fn new(latency: Duration) -> Self {
        Self { latency, double: None, accounts: Vec::new(), client_id: new_guid(), token_file: PathBuf::new() }
    }

    fn target_name(t: usize) -> String {
        format!("bench-cosmos-{t}")
    }

    fn double(&self) -> &ArmDouble {
        self.double.as_ref().expect("CosmosBackend::start ran")
    }

    fn role_id(role: &str) -> &'static str {
        if role == "read" { DATA_READER_ID } else { DATA_CONTRIBUTOR_ID }
    }
}

impl Backend for CosmosBackend {
    fn name(&self) -> &'static str {
        "cosmosdb"
    }

    fn binding_kind(&self) -> &'static str {
        "CosmosRoleBinding"
    }

    fn target_kind(&self) -> &'static str {
        "CosmosTarget"
    }

    fn shared_grants(&self) -> bool {
        true
    }

    async fn start(&mut self, cluster: &Cluster, layout: &Layout) -> Result<Vec<Value>> {
        let mut config = ArmDoubleConfig { latency: self.latency, lro_polls: 2, ..Default::default() }.principal(
            Principal::application(&self.client_id, new_guid())
                .named("dbgrant (benchmark workload identity)")
                .federated(FederatedCredential::new("", &cluster.operator_user))
                .arm_access(ArmAccess::Write),
        );
        for t in 0..layout.targets {
            let account = AccountRef::new(DEFAULT_SUBSCRIPTION_ID, RESOURCE_GROUP, Self::target_name(t));
            config = config.account(Account::new(account.clone(), "westeurope"));
            self.accounts.push(account);
        }
        for g in 0..layout.groups {
            config = config.principal(Principal::group(layout.group(g)).named(format!("sg-bench-{g}")));
        }
        let double = ArmDouble::start(config).await.context("starting the ARM + Entra double")?;
        let dir = paths::run_dir("bench-arm-double")?;
        self.token_file = dir.join("azure-identity-token");
        let token = double.issue_federated_token_with(
            &cluster.operator_user,
            FEDERATED_TOKEN_AUDIENCE,
            examples::FEDERATED_TOKEN_LIFETIME,
        );
        std::fs::write(&self.token_file, token).with_context(|| format!("writing {}", self.token_file.display()))?;
        let mut docs = vec![json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": examples::ARM_CA_SECRET, "namespace": cluster.operator_namespace},
            "stringData": {examples::ARM_CA_KEY: double.ca_cert_pem()},
        })];
        for (t, account) in self.accounts.iter().enumerate() {
            docs.push(json!({
                "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosTarget",
                "metadata": {"name": Self::target_name(t)},
                "spec": {
                    "subscriptionId": account.subscription_id,
                    "resourceGroup": account.resource_group,
                    "accountName": account.name,
                    "cloud": {
                        "armEndpoint": double.arm_endpoint(),
                        "authorityHost": double.authority_host(),
                        "armAudience": ARM_RESOURCE,
                        "caSecretRef": {"name": examples::ARM_CA_SECRET, "key": examples::ARM_CA_KEY},
                    },
                    "credential": {"workloadIdentity": {"tenantId": DEFAULT_TENANT_ID, "clientId": self.client_id}},
                    "policy": {"allowedNamespaces": ["bench-*"], "allowedDatabases": ["orders-*"]}
                }
            }));
        }
        self.double = Some(double);
        Ok(docs)
    }

    fn operator_env(&self) -> Vec<(String, String)> {
        vec![("AZURE_FEDERATED_TOKEN_FILE".into(), self.token_file.display().to_string())]
    }

    fn targets(&self) -> Vec<String> {
        (0..self.accounts.len()).map(Self::target_name).collect()
    }

    fn binding(&self, spec: &BindingSpec) -> Value {
        let role = if spec.grants.first().is_some_and(|g| g.role == "read") { "DataReader" } else { "DataContributor" };
        json!({
            "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosRoleBinding",
            "metadata": {"name": spec.name, "namespace": spec.namespace},
            "spec": {
                "targetRef": {"name": Self::target_name(spec.target)},
                "subjects": [{"kind": "Group", "objectId": spec.group}],
                "roleDefinition": {"builtIn": role},
                "scopes": spec.grants.iter().map(|g| json!({"database": g.scope})).collect::<Vec<_>>()
            }
        })
    }

    fn granted(&self, target: usize, group: &str, grant: &Grant) -> bool {
        let account = &self.accounts[target];
        let scope = format!("{}/dbs/{}", account.id(), grant.scope).to_ascii_lowercase();
        let role = Self::role_id(&grant.role);
        self.double().role_assignments(account).iter().any(|a| {
            a.principal_id.eq_ignore_ascii_case(group)
                && a.scope.to_ascii_lowercase() == scope
                && a.role_definition_id.to_ascii_lowercase().ends_with(role)
        })
    }

    fn counters(&self, target: usize) -> OpCounts {
        let id = self.accounts[target].id().to_ascii_lowercase();
        let mut c = OpCounts::default();
        for r in self.double().arm_requests() {
            if r.account.as_deref().is_none_or(|a| a.to_ascii_lowercase() != id) {
                continue;
            }
            let what = match r.kind {
                RequestKind::ArmRead => {
                    c.reads += 1;
                    let list = r.path.ends_with("sqlRoleAssignments") || r.path.ends_with("sqlRoleDefinitions");
                    if list { "LIST" } else { "GET" }
                }
                RequestKind::ArmWrite => {
                    c.writes += 1;
                    if r.method == "PUT" { "PUT" } else { "DELETE" }
                }
                RequestKind::OperationPoll => "operation poll",
                _ => "other",
            };
            *c.by_operation.entry(what.to_string()).or_default() += 1;
            if r.status == 429 || r.status == 412 {
                *c.by_operation.entry(format!("answered {}", r.status)).or_default() += 1;
            }
        }
        c
    }

    fn clear_counters(&self, _target: usize) {
        // One log for every account: clearing is all or nothing.
        self.double().clear_log();
    }

    fn extra(&self) -> Value {
        json!({
            "armLatencyMsPerCall": self.latency.as_secs_f64() * 1e3,
            "lroPolls": 2,
            "writeBucket": {"capacity": 200, "refillPerSecond": 10.0, "per": "subscription and principal"},
            "accountWrites": {"max": 500, "windowSeconds": 300},
            "accounts": self.accounts.len(),
        })
    }

    fn ready_minimum(&self, applied: &[(Duration, BindingSpec)]) -> Option<Vec<Duration>> {
        let applied: Vec<(f64, usize, &str)> =
            applied.iter().map(|(at, b)| (at.as_secs_f64(), b.target, b.group.as_str())).collect();
        let quotas = Quotas::of_double(self.latency);
        Some(quotas.minimums(&applied).into_iter().map(Duration::from_secs_f64).collect())
    }

    fn window_room_in(&self, writes: usize) -> Option<Duration> {
        // dbgrant's own write budget per account: 400 accepted writes in
        // any 5 minutes (`WRITE_BUDGET`, `WRITE_WINDOW` in
        // src/cosmos/sync.rs), under Azure's ~500. A 10,000-binding bulk
        // spends it all on every account.
        const BUDGET: usize = 400;
        const WINDOW: Duration = Duration::from_secs(300);
        let limit = BUDGET.saturating_sub(writes);
        let now = std::time::SystemTime::now();
        let records = self.double().arm_requests();
        let mut wait = Duration::ZERO;
        for account in &self.accounts {
            let id = account.id().to_ascii_lowercase();
            let mut recent: Vec<std::time::SystemTime> = records
                .iter()
                .filter(|r| r.kind == RequestKind::ArmWrite && (200..300).contains(&r.status))
                .filter(|r| r.account.as_deref().is_some_and(|a| a.to_ascii_lowercase() == id))
                .map(|r| r.at)
                .filter(|at| now.duration_since(*at).is_ok_and(|age| age < WINDOW))
                .collect();
            recent.sort();
            if recent.len() > limit {
                // The writes that must age out first: the oldest surplus.
                let leaves = recent[recent.len() - limit - 1] + WINDOW;
                wait = wait.max(leaves.duration_since(now).unwrap_or_default());
            }
        }
        Some(wait)
    }

    fn bulk_extra(&self, seconds: f64) -> Value {
        // The fastest the quotas allow this many accepted writes: the
        // bucket's 200 at once, then 10/s; no account more than 500 per
        // 5 minutes.
        let records = self.double().arm_requests();
        let accepted: Vec<_> =
            records.iter().filter(|r| r.kind == RequestKind::ArmWrite && (200..300).contains(&r.status)).collect();
        let writes = accepted.len() as f64;
        let quotas = Quotas::of_double(self.latency);
        let bucket_min = ((writes - quotas.bucket) / quotas.refill).max(0.0);
        // The busiest account: its writes in 5-minute windows of 500, and
        // one operation at a time, each PUT then polled until done.
        let busiest = self
            .accounts
            .iter()
            .map(|a| {
                let id = a.id().to_ascii_lowercase();
                accepted.iter().filter(|r| r.account.as_deref().is_some_and(|x| x.to_ascii_lowercase() == id)).count()
            })
            .max()
            .unwrap_or(0);
        let window_min = (busiest.saturating_sub(1) / quotas.window_writes) as f64 * quotas.window;
        let lro_min = busiest as f64 * quotas.per_write;
        let quota_min = bucket_min.max(window_min).max(lro_min);
        let efficiency = (seconds > 0.0 && quota_min > 0.0).then(|| ((quota_min / seconds) * 1000.0).round() / 1000.0);
        let throttled = records.iter().filter(|r| r.status == 429).count();
        json!({
            "acceptedWrites": writes,
            "writesPerSecond": if seconds > 0.0 { (writes / seconds * 10.0).round() / 10.0 } else { 0.0 },
            "quotaMinimumSeconds": (quota_min * 10.0).round() / 10.0,
            "quotaMinimumBySource": {
                "writeBucketSeconds": (bucket_min * 10.0).round() / 10.0,
                "accountWindowSeconds": window_min,
                "oneOperationPerAccountSeconds": (lro_min * 10.0).round() / 10.0,
            },
            "quotaEfficiency": efficiency,
            "throttled429": throttled,
            "throttled429ByKind": {
                "writes": records.iter().filter(|r| r.status == 429 && r.kind == RequestKind::ArmWrite).count(),
                "reads": records.iter().filter(|r| r.status == 429 && r.kind == RequestKind::ArmRead).count(),
                "operationPolls": records.iter().filter(|r| r.status == 429 && r.kind != RequestKind::ArmWrite && r.kind != RequestKind::ArmRead).count(),
            },
            "throttled429Per1000Writes": if writes > 0.0 { (throttled as f64 * 1000.0 / writes * 10.0).round() / 10.0 } else { 0.0 },
            "busy412": records.iter().filter(|r| r.status == 412).count(),
            "writeCycle": write_cycle(&records),
        })
    }
}

/// Where an account's time goes between two accepted writes, from the
/// double's log: the write's answer → the last operation poll before the
/// next write (the operation running and being polled), and that poll →
/// the next write's answer (dbgrant between operations, pacing, and the
/// next PUT's own latency). Means over every pair of consecutive accepted
/// writes on the same account, in ms, with the polls and reads between.
fn write_cycle(records: &[RequestRecord]) -> Value {
    use std::{collections::HashMap, time::SystemTime};
    /// An account's last accepted write and what followed it so far.
    struct Since {
        written: SystemTime,
        last_poll: Option<SystemTime>,
        polls: usize,
        reads: usize,
    }
    let ms = |a: SystemTime, b: SystemTime| b.duration_since(a).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0);
    let mut open: HashMap<&str, Since> = HashMap::new();
    let (mut pairs, mut polling, mut between, mut polls, mut reads) = (0usize, 0.0, 0.0, 0usize, 0usize);
    for r in records {
        let Some(account) = r.account.as_deref() else { continue };
        match r.kind {
            RequestKind::ArmWrite if (200..300).contains(&r.status) => {
                if let Some(s) = open.get(account) {
                    let done = s.last_poll.unwrap_or(s.written);
                    pairs += 1;
                    polling += ms(s.written, done);
                    between += ms(done, r.at);
                    polls += s.polls;
                    reads += s.reads;
                }
                open.insert(account, Since { written: r.at, last_poll: None, polls: 0, reads: 0 });
            }
            RequestKind::OperationPoll => {
                if let Some(s) = open.get_mut(account) {
                    s.last_poll = Some(r.at);
                    s.polls += 1;
                }
            }
            RequestKind::ArmRead => {
                if let Some(s) = open.get_mut(account) {
                    s.reads += 1;
                }
            }
            _ => {}
        }
    }
    let mean = |x: f64| if pairs > 0 { (x / pairs as f64 * 10.0).round() / 10.0 } else { 0.0 };
    json!({
        "pairs": pairs,
        "writeToDoneMs": mean(polling),
        "doneToNextWriteMs": mean(between),
        "pollsPerWrite": mean(polls as f64),
        "readsBetweenWrites": mean(reads as f64),
    })
}

/// What the double's quotas impose on a bulk apply: the principal's write
/// bucket (200, then 10/s), 500 writes per account per 5 minutes, and one
/// operation at a time per account, each write a PUT and `LRO_POLLS` polls
/// at the double's latency even when polled back to back.
#[derive(Clone, Copy, Debug)]
pub struct Quotas {
    /// Writes the bucket holds at the start.
    pub bucket: f64,
    /// Writes per second it refills.
    pub refill: f64,
    /// Writes per account per window.
    pub window_writes: usize,
    /// The window (s).
    pub window: f64,
    /// Least time one write occupies its account (s).
    pub per_write: f64,
}

/// Polls until a double's operation succeeds (the benchmark's setting).
const LRO_POLLS: u32 = 2;

impl Quotas {
    /// The double as the benchmark configures it.
    pub fn of_double(latency: Duration) -> Self {
        Self {
            bucket: 200.0,
            refill: 10.0,
            window_writes: 500,
            window: 300.0,
            per_write: latency.as_secs_f64() * f64::from(1 + LRO_POLLS),
        }
    }

    /// For bindings applied at `(seconds since the first apply, account,
    /// group)`, the least apply-to-Ready (s) each could have: a group's
    /// first binding needs a new assignment, written as early as its
    /// apply, the bucket's next token and its account's previous operation
    /// allow; the group's later bindings share it.
    pub fn minimums(&self, applied: &[(f64, usize, &str)]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..applied.len()).collect();
        order.sort_by(|a, b| applied[*a].0.total_cmp(&applied[*b].0));
        let mut done: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
        let mut account_free: std::collections::HashMap<usize, (f64, usize)> = std::collections::HashMap::new();
        let mut written = 0usize;
        let mut out = vec![0.0; applied.len()];
        for i in order {
            let (at, account, group) = applied[i];
            let ready = *done.entry(group).or_insert_with(|| {
                let token = ((written as f64 + 1.0 - self.bucket) / self.refill).max(0.0);
                written += 1;
                let (free, n) = account_free.entry(account).or_insert((0.0, 0));
                let window = (*n / self.window_writes) as f64 * self.window;
                let start = at.max(token).max(*free).max(window);
                *free = start + self.per_write;
                *n += 1;
                *free
            });
            out[i] = (ready - at).max(0.0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_and_the_accounts_operations_bound_each_binding() {
        let q = Quotas { bucket: 2.0, refill: 1.0, window_writes: 500, window: 300.0, per_write: 0.5 };
        // Three groups on one account, all applied at 0: one operation at a
        // time (0.5 s each), and the third write waits for the bucket (1 s).
        let m = q.minimums(&[(0.0, 0, "a"), (0.0, 0, "b"), (0.0, 0, "c"), (0.2, 0, "a")]);
        assert_eq!(m, vec![0.5, 1.0, 1.5, 0.3]);
        // On two accounts the operations overlap; the bucket still binds.
        let m = q.minimums(&[(0.0, 0, "a"), (0.0, 1, "b"), (0.0, 0, "c")]);
        assert_eq!(m, vec![0.5, 0.5, 1.5]);
    }
}
