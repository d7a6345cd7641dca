//! The MongoDB model of the fault scenarios (`faults_mongo.rs`,
//! `faults_apiserver.rs`): random MongoRoleBinding churn on MongoTargets
//! that point at MongoDB doubles, the model of what must be live, and the
//! convergence check: the double's roles equal exactly the union of the
//! live bindings the test applied — nothing missing, nothing extra — and
//! dbgrant's ownership ledger lists exactly the roles that exist. The check
//! is itself tested here.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use dbgrant_doubles::mongo::{MongoDouble, Outcome, Resource, Role};
use dbgrant_harness::{Cluster, cluster::condition};
use kube::api::ListParams;
use serde_json::{Value, json};

use crate::common::{mongo_double, mongo_target};
use crate::faults_common::{GROUPS, OpCounts, Rng, summary};

// ------------------------------------------------------------ the model

const ROLE_POOL: [(&str, &str); 5] = [
    ("read", "orders"),
    ("readWrite", "orders"),
    ("read", "orders-eu"),
    ("readWrite", "orders-us"),
    ("read", "orders-archive"),
];
const COLLECTIONS: [&str; 3] = ["audit", "events", "ledger"];
const ACTIONS: [&str; 4] = ["find", "insert", "update", "remove"];

/// A binding's spec as the test applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Index into the churn's targets.
    pub target: usize,
    pub groups: BTreeSet<String>,
    pub roles: BTreeSet<(String, String)>,
    /// Actions on `orders.<collection>`.
    pub privileges: BTreeMap<String, BTreeSet<String>>,
}

/// What one role must hold: `role@db` names and actions per `db.collection`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub roles: BTreeSet<String>,
    pub privileges: BTreeMap<String, BTreeSet<String>>,
}

impl Grant {
    fn of_role(role: &Role) -> Self {
        let roles = role.roles.iter().map(|r| format!("{}@{}", r.role, r.db)).collect();
        let mut privileges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in &role.privileges {
            let key = match &p.resource {
                Resource::Namespace { db, collection } => format!("{db}.{collection}"),
                Resource::Cluster => "cluster".into(),
                Resource::AnyResource => "anyResource".into(),
            };
            privileges.entry(key).or_default().extend(p.actions.iter().cloned());
        }
        Self { roles, privileges }
    }
}

/// A target of the churn: its name, its `authNamePrefix`, and the index of
/// the double it points at.
#[derive(Clone, Debug)]
pub struct TargetInfo {
    pub name: String,
    pub prefix: String,
    pub double: usize,
}

/// Random creates, updates and deletes of MongoRoleBindings in one
/// namespace, and the model of what should be live.
pub struct Churn {
    pub cluster: Cluster,
    pub ns: String,
    pub targets: Vec<TargetInfo>,
    pub live: BTreeMap<String, Spec>,
    pub deleted: BTreeSet<String>,
    pub ops: OpCounts,
    pub rng: Rng,
    pub max_live: usize,
    next: u32,
}

impl Churn {
    pub fn new(cluster: &Cluster, ns: &str, targets: Vec<TargetInfo>, seed: u64) -> Self {
        Self {
            cluster: cluster.clone(),
            ns: ns.to_string(),
            targets,
            live: BTreeMap::new(),
            deleted: BTreeSet::new(),
            ops: OpCounts::default(),
            rng: Rng::new(seed),
            max_live: 24,
            next: 0,
        }
    }

    pub fn random_spec(&mut self, target: usize) -> Spec {
        let mut groups = BTreeSet::new();
        for _ in 0..1 + self.rng.below(2) {
            groups.insert(self.rng.pick(&GROUPS).to_string());
        }
        let mut roles = BTreeSet::new();
        for _ in 0..1 + self.rng.below(2) {
            let (r, d) = *self.rng.pick(&ROLE_POOL);
            roles.insert((r.to_string(), d.to_string()));
        }
        let mut privileges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if self.rng.chance(40) {
            let c = self.rng.pick(&COLLECTIONS).to_string();
            for _ in 0..1 + self.rng.below(3) {
                privileges.entry(c.clone()).or_default().insert(self.rng.pick(&ACTIONS).to_string());
            }
        }
        Spec { target, groups, roles, privileges }
    }

    /// The manifest of a binding.
    pub fn manifest(&self, name: &str, spec: &Spec) -> Value {
        json!({
            "apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoRoleBinding",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "targetRef": {"name": self.targets[spec.target].name},
                "subjects": spec.groups.iter().map(|g| json!({"kind": "Group", "objectId": g})).collect::<Vec<_>>(),
                "roles": spec.roles.iter().map(|(r, d)| json!({"role": r, "db": d})).collect::<Vec<_>>(),
                "privileges": spec.privileges.iter().map(|(c, a)| json!({
                    "resource": {"db": "orders", "collection": c},
                    "actions": a.iter().collect::<Vec<_>>()
                })).collect::<Vec<_>>(),
            }
        })
    }

    /// Create a new binding on a random target.
    pub async fn create(&mut self) -> Result<String> {
        let target = self.rng.below(self.targets.len() as u64) as usize;
        self.create_on(target).await
    }

    /// Create a new binding on target `target`.
    pub async fn create_on(&mut self, target: usize) -> Result<String> {
        let spec = self.random_spec(target);
        self.create_spec(spec).await
    }

    /// Create a new binding with this spec.
    pub async fn create_spec(&mut self, spec: Spec) -> Result<String> {
        let name = format!("b{:03}", self.next);
        self.next += 1;
        self.cluster.apply(&self.cluster.admin, &self.manifest(&name, &spec), None).await?;
        self.live.insert(name.clone(), spec);
        self.ops.creates += 1;
        Ok(name)
    }

    /// Change a live binding's grant (and sometimes its subjects).
    pub async fn update(&mut self) -> Result<()> {
        let Some(name) = self.random_live() else { return self.create().await.map(|_| ()) };
        self.update_named(&name).await
    }

    /// Change the grant of binding `name` (and sometimes its subjects).
    pub async fn update_named(&mut self, name: &str) -> Result<()> {
        let name = name.to_string();
        let old = self.live[&name].clone();
        let mut spec = self.random_spec(old.target);
        if self.rng.chance(50) {
            spec.groups = old.groups.clone();
        }
        self.cluster.apply(&self.cluster.admin, &self.manifest(&name, &spec), None).await?;
        self.live.insert(name, spec);
        self.ops.updates += 1;
        Ok(())
    }

    /// Delete a live binding.
    pub async fn delete(&mut self) -> Result<()> {
        let Some(name) = self.random_live() else { return Ok(()) };
        let spec = self.live.remove(&name).expect("live");
        self.cluster.delete(&self.cluster.admin, &self.manifest(&name, &spec), None).await?;
        self.deleted.insert(name);
        self.ops.deletes += 1;
        Ok(())
    }

    fn random_live(&mut self) -> Option<String> {
        let names: Vec<String> = self.live.keys().cloned().collect();
        (!names.is_empty()).then(|| self.rng.pick(&names).clone())
    }

    /// One random operation.
    pub async fn step(&mut self) -> Result<()> {
        let n = self.live.len();
        let roll = self.rng.below(100);
        if n < 4 || (n < self.max_live && roll < 40) {
            self.create().await.map(|_| ())
        } else if roll < 75 {
            self.update().await
        } else {
            self.delete().await
        }
    }

    /// `n` operations with random gaps in `gap` (milliseconds).
    pub async fn steps(&mut self, n: usize, gap: (u64, u64)) -> Result<()> {
        for _ in 0..n {
            self.step().await?;
            let d = self.rng.millis(gap.0, gap.1);
            tokio::time::sleep(d).await;
        }
        Ok(())
    }

    /// Operations with random gaps until `d` has passed (at least one).
    pub async fn steps_for(&mut self, d: Duration, gap: (u64, u64)) -> Result<u64> {
        let start = Instant::now();
        let mut n = 0;
        loop {
            self.step().await?;
            n += 1;
            let g = self.rng.millis(gap.0, gap.1);
            if start.elapsed() + g >= d {
                return Ok(n);
            }
            tokio::time::sleep(g).await;
        }
    }

    /// What target `t`'s roles must be: `<prefix>/<group>` → union of the
    /// live bindings naming the group there.
    pub fn expected(&self, t: usize) -> BTreeMap<String, Grant> {
        let mut out: BTreeMap<String, Grant> = BTreeMap::new();
        for spec in self.live.values().filter(|s| s.target == t) {
            for g in &spec.groups {
                let grant = out.entry(format!("{}/{g}", self.targets[t].prefix)).or_default();
                grant.roles.extend(spec.roles.iter().map(|(r, d)| format!("{r}@{d}")));
                for (c, a) in &spec.privileges {
                    grant.privileges.entry(format!("orders.{c}")).or_default().extend(a.iter().cloned());
                }
            }
        }
        out
    }

    /// What is wrong on the Kubernetes side: live bindings not Ready for
    /// their generation, deleted bindings still present.
    pub async fn kube_problems(&self) -> Result<Vec<String>> {
        let api = self.cluster.dbgrant(&self.cluster.admin, "MongoRoleBinding", Some(&self.ns)).await?;
        let list = api.list(&ListParams::default()).await?;
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for o in &list.items {
            let name = o.metadata.name.clone().unwrap_or_default();
            seen.insert(name.clone());
            if self.deleted.contains(&name) {
                problems.push(format!("binding {name} was deleted but is still there (finalizer not released)"));
                continue;
            }
            if !self.live.contains_key(&name) {
                continue;
            }
            let ready = condition(o, "Ready");
            let observed = o.data["status"]["observedGeneration"].as_i64();
            if observed != o.metadata.generation || ready.is_none_or(|c| c["status"] != "True") {
                problems.push(format!(
                    "binding {name} not Ready at generation {:?}: {}",
                    o.metadata.generation,
                    ready.map(|c| format!("{} {}", c["reason"], c["message"])).unwrap_or_else(|| "no Ready".into())
                ));
            }
        }
        for name in self.live.keys().filter(|n| !seen.contains(*n)) {
            problems.push(format!("binding {name} is missing"));
        }
        Ok(problems)
    }

    /// Delete every live binding (end of a test).
    pub async fn delete_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.live.keys().cloned().collect();
        for name in names {
            let spec = self.live.remove(&name).expect("live");
            self.cluster.delete(&self.cluster.admin, &self.manifest(&name, &spec), None).await?;
            self.deleted.insert(name);
        }
        Ok(())
    }

    /// Wait until every deleted binding is gone.
    pub async fn wait_deleted(&self, timeout: Duration) -> Result<()> {
        let api = self.cluster.dbgrant(&self.cluster.admin, "MongoRoleBinding", Some(&self.ns)).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let left: Vec<String> = api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .filter(|n| self.deleted.contains(n))
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("bindings still present after {timeout:?}: {left:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

// ------------------------------------------------------- the invariants

/// Everything wrong with one target's state on `double`, compared with
/// `expected`: missing roles, orphans, wrong grants, `$external` users that
/// should not exist, and ledger entries that do not match the roles.
pub fn backend_problems(
    double: &MongoDouble,
    target: &str,
    prefix: &str,
    expected: &BTreeMap<String, Grant>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let ours = |role: &str| role.starts_with(&format!("{prefix}/"));
    let actual: BTreeMap<String, Grant> = double
        .roles()
        .iter()
        .filter(|r| r.name.db == "admin" && ours(&r.name.role))
        .map(|r| (r.name.role.clone(), Grant::of_role(r)))
        .collect();
    for (name, want) in expected {
        match actual.get(name) {
            None => problems.push(format!("missing role admin.{name}")),
            Some(have) if have != want => problems.push(format!("role admin.{name} holds {have:?}, expected {want:?}")),
            Some(_) => {}
        }
    }
    for name in actual.keys().filter(|n| !expected.contains_key(*n)) {
        problems.push(format!("orphan role admin.{name}: no live binding wants it"));
    }
    for u in double.users().iter().filter(|u| ours(&u.user)) {
        problems.push(format!("unexpected user {}.{}", u.db, u.user));
    }
    let ledger: BTreeSet<String> = double
        .documents("dbgrant", "ownership")
        .iter()
        .filter(|d| d.get_str("target") == Ok(target))
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect();
    let existing: BTreeSet<String> = actual.keys().map(|n| format!("admin.{n}")).collect();
    for id in existing.difference(&ledger) {
        problems.push(format!("role {id} exists but the ledger does not list it"));
    }
    for id in ledger.difference(&existing) {
        problems.push(format!("the ledger lists {id}, which does not exist"));
    }
    problems
}

/// Roles created again while they already existed (no drop in between),
/// from the double's command log: a write applied twice, or a blind retry.
pub fn duplicate_creates(double: &MongoDouble) -> Vec<String> {
    let mut exists: HashMap<String, bool> = HashMap::new();
    let mut dups = Vec::new();
    for r in double.log() {
        let applied = matches!(r.outcome, Outcome::Ok | Outcome::Dropped { applied: true });
        match r.name.as_str() {
            "createRole" => {
                let role = r.body.get_str("createRole").unwrap_or_default().to_string();
                if applied && exists.get(&role).copied().unwrap_or(false) {
                    dups.push(format!("createRole {role} applied twice (seq {})", r.seq));
                }
                if r.outcome == (Outcome::Failed { code: 51002 }) {
                    dups.push(format!("createRole {role} retried on an existing role (seq {})", r.seq));
                }
                if applied {
                    exists.insert(role, true);
                }
            }
            "dropRole" if applied => {
                exists.insert(r.body.get_str("dropRole").unwrap_or_default().to_string(), false);
            }
            _ => {}
        }
    }
    dups
}

/// Role writes applied twice in a row with the same effect (an `updateRole`
/// that repeats the one before it, a role created twice), from the double's
/// log: a change replayed after the restart instead of compared with what
/// the server holds.
pub fn repeated_writes(double: &MongoDouble) -> Vec<String> {
    let mut last: HashMap<String, (String, String)> = HashMap::new();
    let mut repeated = Vec::new();
    for r in double.user_management_log() {
        if !matches!(r.outcome, Outcome::Ok | Outcome::Dropped { applied: true }) {
            continue;
        }
        let Some(role) = ["createRole", "updateRole", "dropRole"]
            .iter()
            .find_map(|c| (r.name == *c).then(|| r.body.get_str(c).ok()).flatten())
        else {
            continue;
        };
        let effect = format!("{:?} {:?}", r.body.get("roles"), r.body.get("privileges"));
        let write = (r.name.clone(), effect);
        if last.get(role) == Some(&write) {
            repeated.push(format!("{} {role} applied twice with the same content (seq {})", r.name, r.seq));
        }
        last.insert(role.to_string(), write);
    }
    repeated
}

/// The churn's targets on the doubles, each checked against its double.
pub fn all_backend_problems(churn: &Churn, doubles: &[&MongoDouble]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, t) in churn.targets.iter().enumerate() {
        for p in backend_problems(doubles[t.double], &t.name, &t.prefix, &churn.expected(i)) {
            out.push(format!("{}: {p}", t.name));
        }
    }
    out
}

/// Wait until the backend and the bindings' status match the model;
/// returns how long that took.
pub async fn settle(churn: &Churn, doubles: &[&MongoDouble], timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let mut problems = all_backend_problems(churn, doubles);
        if problems.is_empty() {
            problems = churn.kube_problems().await?;
        }
        if problems.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("not converged after {timeout:?}:\n  {}", problems.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// Steady state: no writes reach the backends for `quiet`.
pub async fn assert_quiet(doubles: &[&MongoDouble], quiet: Duration) -> Result<()> {
    let before: Vec<usize> = doubles.iter().map(|d| d.counters().writes).collect();
    tokio::time::sleep(quiet).await;
    let after: Vec<usize> = doubles.iter().map(|d| d.counters().writes).collect();
    if before != after {
        bail!("writes continued after convergence: {before:?} -> {after:?}");
    }
    Ok(())
}

/// Targets for a churn: Secrets + MongoTarget per (name, prefix, uri).
pub fn targets(specs: &[(&str, &str, String)], operator_ns: &str, allowed: &str) -> (Vec<Value>, Vec<TargetInfo>) {
    let mut docs = Vec::new();
    let mut infos = Vec::new();
    for (i, (name, prefix, uri)) in specs.iter().enumerate() {
        let mut t = mongo_target(name, uri, &[allowed], operator_ns);
        t[2]["spec"]["oidc"]["authNamePrefix"] = json!(prefix);
        docs.extend(t);
        infos.push(TargetInfo { name: name.to_string(), prefix: prefix.to_string(), double: i });
    }
    (docs, infos)
}

/// A MongoTarget by name, enough to get or delete it.
pub fn target_doc(name: &str) -> Value {
    json!({"apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoTarget", "metadata": {"name": name}})
}

/// End of a scenario: delete every binding, wait until they are gone, and
/// delete the targets.
pub async fn finish(churn: &mut Churn, target_docs: &[Value]) -> Result<()> {
    churn.delete_all().await?;
    churn.wait_deleted(Duration::from_secs(60)).await?;
    crate::common::cleanup(&churn.cluster, target_docs).await;
    Ok(())
}

// ------------------------------------------------- the checker is live

/// The convergence check is not vacuous: it notices an orphan, a missing
/// grant, a changed grant and a ledger that does not match.
#[tokio::test]
async fn the_convergence_check_notices_orphans_missing_grants_and_ledger_drift() -> Result<()> {
    let double = mongo_double().await?;
    let g = GROUPS[0];
    let mut expected = BTreeMap::new();
    expected.insert(format!("p/{g}"), Grant { roles: ["read@orders".to_string()].into(), ..Default::default() });
    let ledger = |id: &str| bson::doc! { "_id": id, "target": "t", "kind": "role" };
    assert!(!backend_problems(&double, "t", "p", &expected).is_empty(), "a missing role must be noticed");

    double.insert_role(Role::new(format!("p/{g}"), "admin").with_role("read", "orders"));
    double.insert_document("dbgrant", "ownership", ledger(&format!("admin.p/{g}")));
    assert_eq!(backend_problems(&double, "t", "p", &expected), Vec::<String>::new());

    double.insert_role(Role::new(format!("p/{}", GROUPS[1]), "admin").with_role("read", "orders"));
    let p = backend_problems(&double, "t", "p", &expected);
    assert!(p.iter().any(|p| p.contains("orphan")), "{p:?}");
    double.insert_document("dbgrant", "ownership", ledger(&format!("admin.p/{}", GROUPS[1])));
    let p = backend_problems(&double, "t", "p", &expected);
    assert!(p.iter().any(|p| p.contains("orphan")), "an owned orphan is still an orphan: {p:?}");
    double.remove_role(&format!("p/{}", GROUPS[1]), "admin");
    let p = backend_problems(&double, "t", "p", &expected);
    assert!(p.iter().any(|p| p.contains("does not exist")), "a stale ledger entry must be noticed: {p:?}");
    double.drop_collection("dbgrant", "ownership");
    double.insert_document("dbgrant", "ownership", ledger(&format!("admin.p/{g}")));

    double.insert_role(Role::new(format!("p/{g}"), "admin").with_role("readWrite", "orders"));
    let p = backend_problems(&double, "t", "p", &expected);
    assert!(p.iter().any(|p| p.contains("holds")), "a changed grant must be noticed: {p:?}");
    double.insert_role(
        Role::new(format!("p/{g}"), "admin")
            .with_role("read", "orders")
            .with_privilege(Resource::collection("orders", "audit"), ["find"]),
    );
    let p = backend_problems(&double, "t", "p", &expected);
    assert!(p.iter().any(|p| p.contains("holds")), "an extra privilege must be noticed: {p:?}");
    summary("checker: orphan, missing, changed grant, extra privilege and ledger drift all detected");
    Ok(())
}
