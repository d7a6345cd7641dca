//! Fault scenario on Cosmos DB: the real apiserver, the operator process
//! and the ARM + Entra double, with long-running operations stuck (holding
//! the account's lock), an ARM error storm and SIGKILLs while
//! CosmosRoleBindings churn. It ends when the role assignments are exactly
//! one per (principal, role definition, scope) the live bindings name, with
//! no duplicate; the knobs and the summary line are in `faults_common.rs`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dbgrant_harness::{Cluster, Operator, cluster::condition, operator::Options};
use kube::api::{DynamicObject, ListParams};
use serde_json::{Value, json};

use crate::common::{operator_lock, setup};
use crate::faults_common::{GROUPS, OpCounts, Rng, long, no_panics, ready_of, seed, suffix, summary};

const COSMOS_SCOPES: [(&str, Option<&str>); 4] =
    [("orders", None), ("catalog", None), ("orders", Some("items")), ("catalog", Some("products"))];

/// A CosmosRoleBinding as the test applied it: one group, a built-in role,
/// scopes (indexes into [`COSMOS_SCOPES`]).
#[derive(Clone, Debug)]
struct CosmosSpec {
    group: String,
    contributor: bool,
    scopes: BTreeSet<usize>,
}

/// Random CosmosRoleBindings on one CosmosTarget, and the model of the
/// assignments that must exist: one per (principal, definition, scope).
struct CosmosChurn {
    cluster: Cluster,
    ns: String,
    target: String,
    live: BTreeMap<String, CosmosSpec>,
    deleted: BTreeSet<String>,
    ops: OpCounts,
    rng: Rng,
    next: u32,
}

impl CosmosChurn {
    fn manifest(&self, name: &str, s: &CosmosSpec) -> Value {
        json!({
            "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosRoleBinding",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "targetRef": {"name": self.target},
                "subjects": [{"kind": "Group", "objectId": s.group}],
                "roleDefinition": {"builtIn": if s.contributor { "DataContributor" } else { "DataReader" }},
                "scopes": s.scopes.iter().map(|i| match COSMOS_SCOPES[*i] {
                    (db, Some(c)) => json!({"database": db, "container": c}),
                    (db, None) => json!({"database": db}),
                }).collect::<Vec<_>>(),
            }
        })
    }

    fn random_spec(&mut self) -> CosmosSpec {
        let mut scopes = BTreeSet::new();
        for _ in 0..1 + self.rng.below(2) {
            scopes.insert(self.rng.below(COSMOS_SCOPES.len() as u64) as usize);
        }
        CosmosSpec { group: self.rng.pick(&GROUPS[..4]).to_string(), contributor: self.rng.chance(50), scopes }
    }

    async fn step(&mut self) -> Result<()> {
        let names: Vec<String> = self.live.keys().cloned().collect();
        let roll = self.rng.below(100);
        if names.len() < 3 || (names.len() < 12 && roll < 45) {
            let spec = self.random_spec();
            let name = format!("c{:03}", self.next);
            self.next += 1;
            self.cluster.apply(&self.cluster.admin, &self.manifest(&name, &spec), None).await?;
            self.live.insert(name, spec);
            self.ops.creates += 1;
        } else if roll < 75 {
            let name = self.rng.pick(&names).clone();
            let spec = self.random_spec();
            self.cluster.apply(&self.cluster.admin, &self.manifest(&name, &spec), None).await?;
            self.live.insert(name, spec);
            self.ops.updates += 1;
        } else {
            let name = self.rng.pick(&names).clone();
            let spec = self.live.remove(&name).expect("live");
            self.cluster.delete(&self.cluster.admin, &self.manifest(&name, &spec), None).await?;
            self.deleted.insert(name);
            self.ops.deletes += 1;
        }
        Ok(())
    }

    async fn steps_for(&mut self, d: Duration, gap: (u64, u64)) -> Result<()> {
        let start = Instant::now();
        loop {
            self.step().await?;
            let g = self.rng.millis(gap.0, gap.1);
            if start.elapsed() + g >= d {
                return Ok(());
            }
            tokio::time::sleep(g).await;
        }
    }

    fn expected(&self) -> BTreeSet<(String, String, String)> {
        use dbgrant_doubles::arm::{DATA_CONTRIBUTOR_ID, DATA_READER_ID};
        let mut out = BTreeSet::new();
        for s in self.live.values() {
            let role = if s.contributor { DATA_CONTRIBUTOR_ID } else { DATA_READER_ID };
            for i in &s.scopes {
                let rel = match COSMOS_SCOPES[*i] {
                    (db, Some(c)) => format!("/dbs/{db}/colls/{c}"),
                    (db, None) => format!("/dbs/{db}"),
                };
                out.insert((s.group.to_ascii_lowercase(), role.to_string(), rel));
            }
        }
        out
    }

    /// Everything wrong: missing or extra assignments, duplicates of one
    /// (principal, definition, scope), bindings not Ready or not gone.
    async fn problems(
        &self,
        cosmos: &dbgrant_harness::examples::CosmosDouble,
        account: &dbgrant_doubles::arm::AccountRef,
    ) -> Result<Vec<String>> {
        let grants = cosmos.grants(account);
        let have: Vec<(String, String, String)> = grants
            .iter()
            .map(|g| (g.principal_id.clone(), g.role_definition.to_ascii_lowercase(), g.scope.clone()))
            .collect();
        let have_set: BTreeSet<_> = have.iter().cloned().collect();
        let want = self.expected();
        let mut problems = Vec::new();
        for w in want.difference(&have_set) {
            problems.push(format!("missing assignment {w:?}"));
        }
        for h in have_set.difference(&want) {
            problems.push(format!("extra assignment {h:?}"));
        }
        if have.len() != have_set.len() {
            problems.push(format!("duplicate assignments: {} for {} keys", have.len(), have_set.len()));
        }
        if !problems.is_empty() {
            return Ok(problems);
        }
        let api = self.cluster.dbgrant(&self.cluster.admin, "CosmosRoleBinding", Some(&self.ns)).await?;
        for o in api.list(&ListParams::default()).await?.items {
            let name = o.metadata.name.clone().unwrap_or_default();
            if self.deleted.contains(&name) {
                problems.push(format!("binding {name} still there"));
            } else if self.live.contains_key(&name) {
                let ok = o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation
                    && condition(&o, "Ready").is_some_and(|c| c["status"] == "True");
                if !ok {
                    problems.push(format!("binding {name} not Ready: {:?}", ready_of(&o)));
                }
            }
        }
        Ok(problems)
    }

    async fn settle(
        &self,
        cosmos: &dbgrant_harness::examples::CosmosDouble,
        account: &dbgrant_doubles::arm::AccountRef,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let p = self.problems(cosmos, account).await?;
            if p.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("Cosmos DB not converged after {timeout:?}:\n  {}", p.join("\n  "));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosmos_arm_storms_stuck_operations_and_sigkills_leave_exactly_the_desired_assignments() -> Result<()> {
    use dbgrant_doubles::arm::{Account, AccountRef, FaultTarget, Principal};
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-faults").await?;
    let seed = seed();
    let cosmos = dbgrant_harness::examples::CosmosDouble::start(&cluster.operator_user).await?;
    cluster.apply(&cluster.admin, &cosmos.ca_secret(&cluster.operator_namespace), None).await?;
    // Azure finishes an accepted operation whether or not anyone polls it;
    // a killed operator never polls its operation again.
    cosmos.double.set_lro_complete_after(Some(Duration::from_secs(3)));
    let s = suffix(&ns.name).to_string();
    let account = AccountRef::new(&cosmos.examples.account.subscription_id, "rg-dbgrant-faults", format!("faults{s}"));
    cosmos.double.add_account(Account::new(account.clone(), "westus"));
    for g in &GROUPS[..4] {
        cosmos.double.add_principal(Principal::group(*g).named(format!("sg-{}", &g[..8])));
    }
    let target = format!("cosmos-faults-{s}");
    let tdoc = json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosTarget",
        "metadata": {"name": target},
        "spec": {
            "subscriptionId": account.subscription_id,
            "resourceGroup": account.resource_group,
            "accountName": account.name,
            "cloud": cosmos.cloud(),
            "credential": {"workloadIdentity": {"tenantId": cosmos.examples.tenant_id, "clientId": cosmos.examples.client_id}},
            "policy": {"allowedNamespaces": [ns.name], "allowedDatabases": ["orders", "catalog"]}
        }
    });
    let mut options = Options::new(env!("CARGO_BIN_EXE_dbgrant"), "cosmos-faults");
    options.resync = Duration::from_secs(60);
    options.env = cosmos.operator_env();
    let mut op = Operator::start(&cluster, options).await?;
    dump.log(op.log.clone());
    cluster.apply(&cluster.admin, &tdoc, None).await?;
    cluster.wait_condition(&tdoc, None, "Ready", "True", None, Duration::from_secs(60)).await?;
    let mut churn = CosmosChurn {
        cluster: cluster.clone(),
        ns: ns.name.clone(),
        target: target.clone(),
        live: BTreeMap::new(),
        deleted: BTreeSet::new(),
        ops: OpCounts::default(),
        rng: Rng::new(seed ^ 0xc05),
        next: 0,
    };
    churn.steps_for(Duration::from_secs(2), (50, 200)).await?;
    churn.settle(&cosmos, &account, Duration::from_secs(90)).await.context("baseline")?;

    // 1. Long-running operations stuck Enqueued (each holds the account's
    //    lock, so further writes get 412 "another operation in progress"),
    //    then a storm of ARM errors: throttling with Retry-After, 503s,
    //    412s and dropped connections.
    let injected0 = cosmos.double.requests().iter().filter(|r| r.injected).count();
    let stuck_for = Duration::from_secs(if long() { 60 } else { 12 });
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let watch = |seen: &mut BTreeMap<String, String>, items: Vec<DynamicObject>| {
        for o in items {
            if let Some((st, r, m)) = ready_of(&o)
                && st == "False"
            {
                seen.entry(r).or_insert(m);
            }
        }
    };
    let api = cluster.dbgrant(&cluster.admin, "CosmosRoleBinding", Some(&ns.name)).await?;
    cosmos.double.stick_operations(true);
    let stuck = Instant::now();
    let mut stuck_ops = 0;
    while stuck.elapsed() < stuck_for {
        churn.step().await?;
        watch(&mut seen, api.list(&ListParams::default()).await?.items);
        stuck_ops = stuck_ops.max(cosmos.double.pending_operations().len());
        tokio::time::sleep(churn.rng.millis(300, 900)).await;
    }
    // Bindings whose status says nothing about the current generation
    // while the account is blocked (reported, not asserted: see
    // docs/reliability.md).
    let silent = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|o| o.data["status"]["observedGeneration"].as_i64() != o.metadata.generation)
        .count();
    cosmos.double.stick_operations(false);
    let per = if long() { 6 } else { 2 } as u32;
    cosmos.double.fail_next(per, 429, "TooManyRequests", Some(1));
    cosmos.double.fail_next(per, 503, "ServiceUnavailable", Some(1));
    cosmos.double.fail_next(per, 412, "PreconditionFailed", None);
    cosmos.double.drop_next(per, FaultTarget::ArmWrites);
    for _ in 0..6 {
        churn.step().await?;
        watch(&mut seen, api.list(&ListParams::default()).await?.items);
        tokio::time::sleep(churn.rng.millis(200, 600)).await;
    }
    let storm_converged =
        churn.settle(&cosmos, &account, Duration::from_secs(150)).await.context("after the ARM storm")?;
    let injected = cosmos.double.requests().iter().filter(|r| r.injected).count() - injected0;
    cosmos.double.clear_faults();

    // 2. SIGKILLs while writes (long-running operations) are in flight.
    let kills = if long() { 15 } else { 4 };
    for _ in 0..kills {
        if !op.is_running() {
            op.spawn().await?;
        }
        let run_for = churn.rng.millis(300, 3000);
        churn.steps_for(run_for, (50, 300)).await?;
        op.kill().await?;
        if churn.rng.chance(50) {
            churn.step().await?;
        }
    }
    op.spawn().await?;
    let crash_converged =
        churn.settle(&cosmos, &account, Duration::from_secs(150)).await.context("after the SIGKILLs")?;
    // Nothing applied twice: no assignment was PUT again after it was
    // created, unless it was deleted in between.
    let mut exists: HashMap<String, bool> = HashMap::new();
    let mut twice = Vec::new();
    for r in cosmos.double.requests().iter().filter(|r| r.path.to_ascii_lowercase().contains("/sqlroleassignments/")) {
        let name = r.path.rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
        let ok = (200..300).contains(&r.status);
        match r.method.as_str() {
            "PUT" if ok => {
                if exists.get(&name).copied().unwrap_or(false) {
                    twice.push(name.clone());
                }
                exists.insert(name, true);
            }
            "DELETE" if ok => {
                exists.insert(name, false);
            }
            _ => {}
        }
    }
    assert!(op.is_running(), "operator exited:\n{}", op.log_tail(60));
    no_panics(&op)?;
    summary(&format!(
        "cosmos-faults: seed={seed:#x} operations stuck {}s (up to {stuck_ops} pending, {silent} bindings \
         without status for their generation meanwhile), then ARM faults \
         injected={injected} (429/503/412/dropped, {per} each); status showed {:?}; converged {:.1}s after; \
         SIGKILLs={kills}, converged {:.1}s after the last; ops={} assignments={}; re-PUTs of an existing \
         assignment={}; result=exactly the desired assignments, no duplicate",
        stuck_for.as_secs(),
        seen.keys().collect::<Vec<_>>(),
        storm_converged.as_secs_f64(),
        crash_converged.as_secs_f64(),
        churn.ops.total(),
        churn.expected().len(),
        twice.len(),
    ));
    for (r, m) in &seen {
        eprintln!("cosmos storm: status showed {r}: {m}");
    }
    assert!(injected > 0, "no ARM fault was hit");
    // A re-PUT of the same assignment is idempotent in ARM; report it, but
    // a duplicate *assignment* is what must never exist (checked above).
    let names: Vec<String> = churn.live.keys().cloned().collect();
    for name in names {
        let spec = churn.live.remove(&name).expect("live");
        cluster.delete(&cluster.admin, &churn.manifest(&name, &spec), None).await?;
        churn.deleted.insert(name);
    }
    churn.settle(&cosmos, &account, Duration::from_secs(120)).await.context("deleting everything")?;
    crate::common::cleanup(&cluster, &[tdoc]).await;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}
