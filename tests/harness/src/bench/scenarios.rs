//! The scenarios, generic over the [`Backend`]: bulk, single change,
//! footprint, restart and steady state.
//!
//! Everything is observed from outside the operator, as a user would: the
//! apiserver (LIST, watch, GET), the backend doubles' command logs, the
//! operator's `/metrics`, and `/proc/<pid>`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams},
    discovery::ApiResource,
};
use serde_json::{Value, json};

use super::{
    apiserver::{self, Requests},
    args::Args,
    backend::{Backend, BindingSpec, Layout, OpCounts},
    process::{CpuSplit, Sampler, Window, mib, round3},
    profile::Profile,
    stages::{self, Stages},
    stats::Summary,
};
use crate::{Cluster, Operator, cluster::FIELD_MANAGER, operator::metric_sum};

/// How often the footprint sampler reads /proc.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How long "idle" is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Reconciles must not change for this long to count as drained.
const DRAINED_AFTER: Duration = Duration::from_secs(2);
/// Gap between single changes, so each is measured on its own.
const SINGLE_GAP: Duration = Duration::from_millis(100);

/// Everything a scenario needs.
pub struct Env<'a, B: Backend> {
    /// Options.
    pub args: &'a Args,
    /// The cluster (admin client used throughout).
    pub cluster: Cluster,
    /// The backend and its doubles.
    pub backend: B,
    /// The bindings' layout.
    pub layout: Layout,
    /// The binding kind's API resource.
    pub binding_ar: ApiResource,
    /// The target kind's API resource.
    pub target_ar: ApiResource,
    /// The control plane's pid (etcd + kube-apiserver), for its CPU time.
    pub control_plane_pid: Option<u32>,
}

impl<B: Backend> Env<'_, B> {
    /// The binding kind's API in namespace `ns`.
    pub fn bindings(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.cluster.admin.clone(), ns, &self.binding_ar)
    }

    fn targets_api(&self) -> Api<DynamicObject> {
        Api::all_with(self.cluster.admin.clone(), &self.target_ar)
    }

    fn clear_counters(&self) {
        for t in 0..self.layout.targets {
            self.backend.clear_counters(t);
        }
    }

    fn counters(&self) -> (OpCounts, Vec<OpCounts>) {
        let per: Vec<OpCounts> = (0..self.layout.targets).map(|t| self.backend.counters(t)).collect();
        let mut total = OpCounts::default();
        per.iter().for_each(|c| total.add(c));
        (total, per)
    }

    /// Wait until every target is Ready for its generation.
    pub async fn wait_targets_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.targets_api().list(&ListParams::default()).await?;
            let ready = list.items.iter().filter(|o| ready_at_generation(o)).count();
            if ready >= self.layout.targets {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let reasons = reasons(&list.items);
                bail!("{ready}/{} targets Ready after {timeout:?}: {reasons:?}", self.layout.targets);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether an object's status says Ready=True for its current generation.
pub fn ready_at_generation(o: &DynamicObject) -> bool {
    o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation
        && crate::cluster::condition_status(o, "Ready") == Some("True")
}

/// Ready reasons and how many objects have each (diagnostics).
fn reasons(items: &[DynamicObject]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for o in items {
        let r = crate::cluster::condition(o, "Ready")
            .map(|c| format!("{}={}", c["status"].as_str().unwrap_or("?"), c["reason"].as_str().unwrap_or("?")))
            .unwrap_or_else(|| "no status".into());
        *out.entry(r).or_default() += 1;
    }
    out
}

/// Server-side apply, retrying what an overloaded apiserver may answer.
/// Requests the benchmark itself sends to the binding resource, so the
/// operator's share of what the apiserver served can be told apart (see
/// [`super::apiserver`]): (apply attempts, LISTs, WATCHes).
static OWN: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
const OWN_APPLY: usize = 0;
const OWN_LIST: usize = 1;
const OWN_WATCH: usize = 2;

fn own(which: usize) {
    OWN[which].fetch_add(1, Ordering::Relaxed);
}

/// The benchmark's own requests to `resource` so far.
fn own_requests(resource: &str) -> Requests {
    let mut r = Requests::default();
    r.add("APPLY", resource, "", OWN[OWN_APPLY].load(Ordering::Relaxed));
    r.add("LIST", resource, "", OWN[OWN_LIST].load(Ordering::Relaxed));
    r.add("WATCH", resource, "", OWN[OWN_WATCH].load(Ordering::Relaxed));
    r
}

async fn apply(api: &Api<DynamicObject>, doc: &Value) -> Result<DynamicObject> {
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut attempt = 0;
    loop {
        own(OWN_APPLY);
        match api.patch(name, &pp, &Patch::Apply(doc)).await {
            Ok(o) => return Ok(o),
            Err(e) if attempt < 5 && transient(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("applying {name}")),
        }
    }
}

fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 409 | 429 | 500 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The operator's count of the times a backend (or its own write budget)
/// made it wait, by `reason`: `429`, `412`, `pending`, `budget`,
/// `throttled` (a Retry-After waited out inside a pass).
const THROTTLED: &str = "dbgrant_backend_throttles_total";

/// Reconciles the operator has finished for `kind` (the reconcile duration
/// histogram's count: one sample per completed reconcile).
async fn completed_reconciles(op: &Operator, kind: &str) -> f64 {
    match op.metrics().await {
        Ok(m) => metric_sum(&m, "dbgrant_reconcile_duration_seconds_count", &[("kind", kind)]),
        Err(_) => f64::NAN,
    }
}

/// Wait until the completed reconciles of `kind` stop changing for
/// [`DRAINED_AFTER`]; returns when they last changed.
async fn wait_drained(op: &Operator, kind: &str, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    let mut last = completed_reconciles(op, kind).await;
    let mut changed = Instant::now();
    while changed.elapsed() < DRAINED_AFTER && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = completed_reconciles(op, kind).await;
        if now != last {
            last = now;
            changed = Instant::now();
        }
    }
    changed
}

/// The operator's backend operations by name (its own view, from /metrics).
async fn operator_backend_ops(op: &Operator) -> BTreeMap<String, f64> {
    operator_counter_by(op, "dbgrant_backend_operations_total", "operation").await
}

/// The operator's counter `metric` summed by the value of its `label`
/// (empty when /metrics does not answer).
async fn operator_counter_by(op: &Operator, metric: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(m) = op.metrics().await else { return out };
    let series = format!("{metric}{{");
    let key = format!("{label}=\"");
    for l in m.lines().filter(|l| l.starts_with(&series)) {
        if let Some(start) = l.find(&key) {
            let rest = &l[start + key.len()..];
            let name = &rest[..rest.find('"').unwrap_or(0)];
            let v: f64 = l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()).unwrap_or(0.0);
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    out
}

/// What grew in `after` since `before`, by key (keys that did not grow are left out).
fn grown(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

fn secs(d: Duration) -> f64 {
    round3(d.as_secs_f64())
}

// ----------------------------------------------------------------- bulk

/// Bulk: apply every binding at once (bounded parallelism) and time until
/// all are Ready. Returns the report and whether everything got Ready.
pub async fn bulk<B: Backend>(env: &Env<'_, B>, op: &Operator) -> Result<(Value, bool)> {
    let n = env.layout.bindings;
    let kind = env.backend.binding_kind();
    let namespaces = env.layout.namespaces();
    let per_ns = env.layout.per_namespace;
    let expected = |k: usize| per_ns.min(n - k * per_ns);
    env.clear_counters();
    let reconciles_before = completed_reconciles(op, kind).await;
    let throttles_before = operator_counter_by(op, THROTTLED, "reason").await;
    let stages_before = Stages::parse(&op.metrics().await?, kind);
    let sampler = Sampler::start(op.pid().context("operator pid")?, SAMPLE_EVERY);
    let started = AtomicUsize::new(0);
    let applied_at: Mutex<HashMap<String, Instant>> = Mutex::new(HashMap::with_capacity(n));
    let all_bindings = Api::<DynamicObject>::all_with(env.cluster.admin.clone(), &env.binding_ar);
    let served0 = Requests::scrape(&env.cluster.admin).await?;
    let own0 = own_requests(&env.binding_ar.plural);
    own(OWN_LIST);
    let start_rv =
        all_bindings.list(&ListParams::default().limit(1)).await?.metadata.resource_version.unwrap_or_default();
    let cpu0 = CpuSplit::now(op.pid(), env.control_plane_pid);
    let t0 = Instant::now();
    eprintln!("bench: bulk: applying {n} {kind}s, {} in flight", env.args.parallel);

    let submit = async {
        let results: Vec<Result<()>> = stream::iter(0..n)
            .map(|i| {
                let spec = env.layout.binding(i);
                let doc = env.backend.binding(&spec);
                let api = env.bindings(&spec.namespace);
                started.fetch_add(1, Ordering::SeqCst);
                let applied_at = &applied_at;
                async move {
                    apply(&api, &doc).await?;
                    applied_at.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.name, Instant::now());
                    Ok(())
                }
            })
            .buffer_unordered(env.args.parallel)
            .collect()
            .await;
        let failed: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
        (t0.elapsed(), failed)
    };

    let poll_lists = async {
        let mut done = vec![false; namespaces.len()];
        let mut ready_at: HashMap<String, Instant> = HashMap::with_capacity(n);
        let mut rounds = 0u64;
        let mut listed = 0u64;
        let mut last_report = Instant::now();
        loop {
            let round = Instant::now();
            rounds += 1;
            let begun = started.load(Ordering::SeqCst);
            let mut not_ready = Vec::new();
            for (k, ns) in namespaces.iter().enumerate() {
                if done[k] || k * per_ns >= begun {
                    continue;
                }
                own(OWN_LIST);
                let list = match env.bindings(ns).list(&ListParams::default()).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("bench: list {ns}: {e}");
                        continue;
                    }
                };
                let now = Instant::now();
                listed += list.items.len() as u64;
                let mut ready = 0;
                for o in &list.items {
                    if ready_at_generation(o) {
                        ready += 1;
                        ready_at.entry(o.metadata.name.clone().unwrap_or_default()).or_insert(now);
                    } else {
                        not_ready.push(o.clone());
                    }
                }
                done[k] = ready >= expected(k);
            }
            if done.iter().all(|d| *d) {
                return (true, ready_at, (rounds, listed), BTreeMap::new());
            }
            if t0.elapsed() > env.args.timeout {
                return (false, ready_at, (rounds, listed), reasons(&not_ready));
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!("bench: bulk: {}/{n} Ready after {:.0}s", ready_at.len(), t0.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
            tokio::time::sleep(env.args.poll.saturating_sub(round.elapsed())).await;
        }
    };

    let observe = async {
        if env.args.observe_by_list { poll_lists.await } else { watch_ready(env, &all_bindings, &start_rv, t0).await }
    };
    let ((submitted, failed), (complete, ready_at, (rounds, listed), pending)) = tokio::join!(submit, observe);
    let cpu_ready = CpuSplit::now(op.pid(), env.control_plane_pid);
    let all_ready = ready_at.values().max().map(|t| t.duration_since(t0)).unwrap_or_default();
    let drained = wait_drained(op, kind, Duration::from_secs(120)).await;
    let window = sampler.stop().await;
    let own_bulk = own_requests(&env.binding_ar.plural).since(&own0);
    let served = Requests::scrape(&env.cluster.admin).await?.since(&served0);
    let apiserver = apiserver::report(&served, &own_bulk, n);
    let (total, per_target) = env.counters();
    let reconciles = completed_reconciles(op, kind).await - reconciles_before;
    let stages = Stages::parse(&op.metrics().await?, kind).since(&stages_before);
    let applied_at = applied_at.into_inner().unwrap_or_else(|p| p.into_inner());
    let latencies: Vec<Duration> = ready_at
        .iter()
        .filter_map(|(name, ready)| applied_at.get(name).map(|a| ready.saturating_duration_since(*a)))
        .collect();
    let mean_ms = latencies.iter().map(|d| d.as_secs_f64() * 1e3).sum::<f64>() / latencies.len().max(1) as f64;
    // The least apply-to-Ready the backend's quotas allow each binding, and
    // how far the measured times are from it.
    let specs: HashMap<String, BindingSpec> =
        (0..n).map(|i| env.layout.binding(i)).map(|s| (s.name.clone(), s)).collect();
    let applied: Vec<(Duration, BindingSpec)> = applied_at
        .iter()
        .filter_map(|(name, at)| specs.get(name).map(|s| (at.duration_since(t0), s.clone())))
        .collect();
    let minimum = env.backend.ready_minimum(&applied).map(|mins| {
        let measured: Vec<Duration> = applied
            .iter()
            .filter_map(|(_, s)| {
                ready_at.get(&s.name).and_then(|r| applied_at.get(&s.name).map(|a| r.saturating_duration_since(*a)))
            })
            .collect();
        let (min, got) = (Summary::of(&mins), Summary::of(&measured));
        json!({
            "minimum": min.to_json(),
            "p50OverMinimumP50": (min.p50 > 0.0).then(|| round3(got.p50 / min.p50)),
        })
    });
    let seconds = all_ready.as_secs_f64();
    eprintln!(
        "bench: bulk: {} of {n} Ready in {seconds:.1}s ({:.0}/s), {} backend writes",
        ready_at.len(),
        if seconds > 0.0 { ready_at.len() as f64 / seconds } else { 0.0 },
        total.writes
    );
    let report = json!({
        "complete": complete && failed.is_empty(),
        "bindings": n,
        "ready": ready_at.len(),
        "applyFailures": failed.len(),
        "applyFailureSamples": failed.iter().take(3).collect::<Vec<_>>(),
        "notReadyReasons": pending,
        "submitSeconds": secs(submitted),
        "allReadySeconds": secs(all_ready),
        "drainedSeconds": secs(drained.duration_since(t0)),
        "bindingsReadyPerSecond": if seconds > 0.0 { (ready_at.len() as f64 / seconds).round() } else { 0.0 },
        "applyToReady": Summary::of(&latencies).to_json(),
        "applyToReadyQuotaMinimum": minimum,
        "observedBy": if env.args.observe_by_list {
            format!(
                "LIST of each namespace with bindings not yet all Ready, every {} ms (or as fast as the LISTs return)",
                env.args.poll.as_millis()
            )
        } else {
            "one cluster-wide watch of the binding kind from before the first apply; a LIST of every namespace \
             confirms the end"
                .to_string()
        },
        "observeRounds": rounds,
        "observedObjects": listed,
        "backend": total.to_json(),
        "backendWritesPerBinding": if n > 0 { round3(total.writes as f64 / n as f64) } else { 0.0 },
        "backendPerTarget": per_target.iter().map(OpCounts::to_json).collect::<Vec<_>>(),
        "operatorBackendOps": operator_backend_ops(op).await,
        "operatorThrottlesByReason": grown(&throttles_before, &operator_counter_by(op, THROTTLED, "reason").await),
        "reconciles": reconciles,
        "reconcilesPerBinding": if n > 0 { round3(reconciles / n as f64) } else { 0.0 },
        // Where an apply-to-Ready went, per binding (means): the operator's
        // stages, and what it did not see.
        "operatorStages": stages.to_json(latencies.len(), mean_ms),
        "operator": window.to_json(),
        "cpuUntilAllReady": cpu0.until(&cpu_ready),
        "apiserverRequests": apiserver,
        "backendExtra": env.backend.extra(),
        "quota": env.backend.bulk_extra(seconds),
    });
    Ok((report, complete && failed.is_empty()))
}

type Observed = (bool, HashMap<String, Instant>, (u64, u64), BTreeMap<String, usize>);

/// Watch every binding from `rv` (taken before the first apply) and note
/// when each is first Ready at its generation; re-watch when the stream
/// ends. When all are seen Ready, a LIST of every namespace confirms it.
/// Returns (complete, first-Ready instants, (watches, events), reasons of
/// the ones not Ready).
async fn watch_ready<B: Backend>(env: &Env<'_, B>, api: &Api<DynamicObject>, rv: &str, t0: Instant) -> Observed {
    let n = env.layout.bindings;
    let mut ready_at: HashMap<String, Instant> = HashMap::with_capacity(n);
    let mut rv = rv.to_string();
    let (mut watches, mut events) = (0u64, 0u64);
    let mut last_report = Instant::now();
    let deadline = tokio::time::Instant::from_std(t0 + env.args.timeout);
    'outer: while ready_at.len() < n {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        watches += 1;
        own(OWN_WATCH);
        let stream = match api.watch(&WatchParams::default().timeout(290), &rv).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench: watch: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let ev = match tokio::time::timeout_at(deadline, stream.try_next()).await {
                Err(_) => break 'outer,
                Ok(Ok(Some(ev))) => ev,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    eprintln!("bench: watch: {e}; re-watching");
                    break;
                }
            };
            events += 1;
            match ev {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    rv = o.metadata.resource_version.clone().unwrap_or(rv);
                    if ready_at_generation(&o) {
                        ready_at.entry(o.metadata.name.clone().unwrap_or_default()).or_insert_with(Instant::now);
                    }
                }
                WatchEvent::Deleted(o) => rv = o.metadata.resource_version.clone().unwrap_or(rv),
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                WatchEvent::Error(e) => {
                    // 410 Gone: too old; start over from a fresh LIST.
                    eprintln!("bench: watch: {}; re-listing", e.message);
                    own(OWN_LIST);
                    if let Ok(l) = api.list(&ListParams::default()).await {
                        let now = Instant::now();
                        for o in l.items.iter().filter(|o| ready_at_generation(o)) {
                            ready_at.entry(o.metadata.name.clone().unwrap_or_default()).or_insert(now);
                        }
                        rv = l.metadata.resource_version.unwrap_or(rv);
                    }
                    break;
                }
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!("bench: bulk: {}/{n} Ready after {:.0}s", ready_at.len(), t0.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
            if ready_at.len() >= n {
                break 'outer;
            }
        }
    }
    let mut not_ready = Vec::new();
    let mut ready = 0;
    for ns in env.layout.namespaces() {
        own(OWN_LIST);
        match env.bindings(&ns).list(&ListParams::default()).await {
            Ok(l) => {
                for o in l.items {
                    if ready_at_generation(&o) {
                        ready += 1;
                    } else {
                        not_ready.push(o);
                    }
                }
            }
            Err(e) => eprintln!("bench: list {ns}: {e}"),
        }
    }
    (ready >= n && ready_at.len() >= n, ready_at, (watches, events), reasons(&not_ready))
}

// ------------------------------------------------------------- baseline

/// Apply every binding of the layout ([`Args::parallel`] in flight) and
/// run `then` on each as the apiserver returned it; the errors, one per
/// binding that failed.
pub async fn apply_each<B, F, Fut>(env: &Env<'_, B>, then: F) -> Vec<anyhow::Error>
where
    B: Backend,
    F: Fn(Api<DynamicObject>, DynamicObject) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let then = &then;
    stream::iter(0..env.layout.bindings)
        .map(|i| {
            let spec = env.layout.binding(i);
            let doc = env.backend.binding(&spec);
            let api = env.bindings(&spec.namespace);
            async move {
                let created = apply(&api, &doc).await?;
                then(api, created).await
            }
        })
        .buffer_unordered(env.args.parallel)
        .filter_map(|r| std::future::ready(r.err()))
        .collect()
        .await
}

/// Delete every binding in the layout's namespaces (without waiting).
pub async fn delete_bindings<B: Backend>(env: &Env<'_, B>) -> Result<()> {
    for ns in env.layout.namespaces() {
        env.bindings(&ns).delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    }
    Ok(())
}

/// Wait until the layout's namespaces hold no binding.
pub async fn wait_bindings_gone<B: Backend>(env: &Env<'_, B>) -> Result<()> {
    for ns in env.layout.namespaces() {
        while !env.bindings(&ns).list(&ListParams::default().limit(1)).await?.items.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Baseline: the same applies with no operator running, then deleted
/// again: what merely storing the bindings costs this apiserver (time and
/// CPU), the floor under the bulk figure. `profile` (if any) covers the
/// applies, not the deletes.
pub async fn baseline<B: Backend>(env: &Env<'_, B>, profile: Option<Profile<'_>>) -> Result<Value> {
    let n = env.layout.bindings;
    eprintln!("bench: baseline: applying {n} bindings with no operator running");
    let cpu0 = CpuSplit::now(None, env.control_plane_pid);
    let t0 = Instant::now();
    let failed = apply_each(env, |_, _| async { Ok(()) }).await.len();
    let submitted = t0.elapsed();
    let cpu = cpu0.until(&CpuSplit::now(None, env.control_plane_pid));
    let profile = match profile {
        Some(p) => p.finish()?,
        None => Value::Null,
    };
    delete_bindings(env).await?;
    wait_bindings_gone(env).await?;
    eprintln!("bench: baseline: {n} applies in {:.1}s, no operator", submitted.as_secs_f64());
    Ok(json!({
        "bindings": n,
        "applyFailures": failed,
        "submitSeconds": secs(submitted),
        "appliesPerSecond": (n as f64 / submitted.as_secs_f64()).round(),
        "cpu": cpu,
        "controlPlaneProfile": profile,
    }))
}

// ------------------------------------------------------------ footprint

/// The operator at rest for [`IDLE_WINDOW`]: RSS and CPU.
pub async fn idle(op: &Operator) -> Result<Window> {
    let sampler = Sampler::start(op.pid().context("operator pid")?, SAMPLE_EVERY);
    tokio::time::sleep(IDLE_WINDOW).await;
    Ok(sampler.stop().await)
}

// -------------------------------------------------------- single change

/// A watch on one object, opened before the change it times, from the
/// collection's current resourceVersion: the benchmark's own connection
/// setup (a new HTTPS connection costs ~40 ms on these machines) is then
/// not counted against the operator. None if it cannot be opened (the
/// wait polls instead).
async fn open_watch(api: &Api<DynamicObject>, name: &str, timeout: Duration) -> Option<EventStream> {
    let by_name = format!("metadata.name={name}");
    let list = api.list_metadata(&ListParams::default().fields(&by_name)).await.ok()?;
    let rv = list.metadata.resource_version.unwrap_or_default();
    let wp = WatchParams::default().fields(&by_name).timeout(timeout.as_secs().max(1) as u32);
    api.watch(&wp, &rv).await.ok().map(|s| s.boxed())
}

type EventStream = futures::stream::BoxStream<'static, kube::Result<WatchEvent<DynamicObject>>>;

/// Wait, through `watch`, for the object to be Ready at `generation` or
/// later, or (with `gone`) to be deleted; polls GET every 10 ms if there
/// is no watch or it ends. Returns the time since `t0`.
async fn wait_for(
    watch: Option<EventStream>,
    api: &Api<DynamicObject>,
    name: &str,
    gone: bool,
    generation: i64,
    t0: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let deadline = tokio::time::Instant::now() + timeout;
    let done = |o: &DynamicObject| ready_at_generation(o) && o.metadata.generation.unwrap_or(0) >= generation;
    if let Some(mut stream) = watch {
        loop {
            match tokio::time::timeout_at(deadline, stream.try_next()).await {
                Err(_) => bail!("{name}: not {} after {timeout:?}", if gone { "gone" } else { "Ready" }),
                Ok(Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o)))) => {
                    if !gone && done(&o) {
                        return Ok(t0.elapsed());
                    }
                }
                Ok(Ok(Some(WatchEvent::Deleted(_)))) => {
                    if gone {
                        return Ok(t0.elapsed());
                    }
                    bail!("{name} was deleted while waiting for Ready");
                }
                Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
                // A watch error (e.g. 410 Gone) or its end: poll instead.
                Ok(Ok(Some(WatchEvent::Error(_)) | None) | Err(_)) => break,
            }
        }
    }
    loop {
        match api.get_opt(name).await? {
            None if gone => return Ok(t0.elapsed()),
            Some(o) if !gone && done(&o) => return Ok(t0.elapsed()),
            None => bail!("{name} vanished while waiting for Ready"),
            Some(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{name}: not {} after {timeout:?}", if gone { "gone" } else { "Ready" });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    /// How long the apply or delete request itself took.
    requests: Vec<Duration>,
    /// The operator's stage metrics over the phase.
    stages: Stages,
    writes: u64,
    reads: u64,
    mismatches: Vec<String>,
    polled: usize,
}

impl Phase {
    fn to_json(&self) -> Value {
        let n = self.latencies.len().max(1) as f64;
        let mut v = Summary::of(&self.latencies).to_json();
        v["backendWritesPerChange"] = json!(round3(self.writes as f64 / n));
        v["backendReadsPerChange"] = json!(round3(self.reads as f64 / n));
        v["backendMismatches"] = json!(self.mismatches);
        v["measuredByPollingFallback"] = json!(self.polled);
        let mean_ms = Summary::of(&self.latencies).mean;
        v["requestMeanMs"] = json!(round3(Summary::of(&self.requests).mean));
        v["operatorStages"] = self.stages.to_json(self.latencies.len(), mean_ms);
        v
    }
}

/// Single change: with every binding Ready, create, update and delete
/// `count` bindings one at a time; apply-to-Ready and delete-to-gone.
pub async fn single<B: Backend>(env: &Env<'_, B>, op: &Operator, count: usize) -> Result<Value> {
    let timeout = Duration::from_secs(60);
    let specs: Vec<BindingSpec> = (0..count).map(|j| env.layout.single(j, count)).collect();
    // A creating and an updating change write one assignment each, a
    // delete up to two.
    let window_wait = env.backend.window_room_in(4 * count).unwrap_or_default();
    if !window_wait.is_zero() {
        eprintln!(
            "bench: single: waiting {:.0}s until the targets' write window, filled by the bulk, has room",
            window_wait.as_secs_f64()
        );
        tokio::time::sleep(window_wait + Duration::from_secs(1)).await;
    }
    let sampler = Sampler::start(op.pid().context("operator pid")?, SAMPLE_EVERY);
    let cpu0 = CpuSplit::now(op.pid(), env.control_plane_pid);
    let (mut create, mut update, mut delete) = (Phase::default(), Phase::default(), Phase::default());
    eprintln!("bench: single: {count} creates, updates and deletes, one at a time");

    // Watches have a client of their own. A watch ends by dropping its
    // connection, so with one pool each apply or delete found no idle
    // connection and paid for a new one (~40 ms here, against ~4 ms the
    // apiserver spends on the request): the benchmark's cost, not the
    // operator's.
    let watch_client = crate::cluster::client(&env.cluster.admin_kubeconfig).await?;
    let watch_api = |ns: &str| Api::<DynamicObject>::namespaced_with(watch_client.clone(), ns, &env.binding_ar);
    let kind = env.backend.binding_kind();
    let stages = async || Ok::<_, anyhow::Error>(Stages::parse(&op.metrics().await?, kind));
    // The apiserver's own view of the same phases: its request times.
    let plural = env.binding_ar.plural.clone();
    let served = async || -> Result<BTreeMap<String, (f64, u64)>> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let text = env.cluster.admin.request_text(request).await?;
        let resource = format!("resource=\"{plural}\"");
        Ok(stages::histograms(&text, "apiserver_request_duration_seconds", &[&resource], &["verb", "subresource"]))
    };
    let mut seen_by_apiserver = serde_json::Map::new();
    for (phase, step) in [(&mut create, 0), (&mut update, 1)] {
        let (before, served0) = (stages().await?, served().await?);
        for spec in &specs {
            let spec = if step == 0 { spec.clone() } else { env.layout.single_updated(spec) };
            let doc = env.backend.binding(&spec);
            let api = env.bindings(&spec.namespace);
            env.backend.clear_counters(spec.target);
            let watch = open_watch(&watch_api(&spec.namespace), &spec.name, timeout).await;
            phase.polled += usize::from(watch.is_none());
            let t0 = Instant::now();
            let o = apply(&api, &doc).await?;
            phase.requests.push(t0.elapsed());
            let generation = o.metadata.generation.unwrap_or(0);
            let took = wait_for(watch, &api, &spec.name, false, generation, t0, timeout).await?;
            phase.latencies.push(took);
            let c = env.backend.counters(spec.target);
            phase.writes += c.writes;
            phase.reads += c.reads;
            for g in &spec.grants {
                if !env.backend.granted(spec.target, &spec.group, g) {
                    phase.mismatches.push(format!("{}: {}@{} not granted at Ready", spec.name, g.role, g.scope));
                }
            }
            tokio::time::sleep(SINGLE_GAP).await;
        }
        phase.stages = stages().await?.since(&before);
        let name = if step == 0 { "create" } else { "update" };
        seen_by_apiserver.insert(name.into(), stages::mean_ms_since(&served().await?, &served0));
    }
    let (before, served0) = (stages().await?, served().await?);
    for spec in &specs {
        let api = env.bindings(&spec.namespace);
        env.backend.clear_counters(spec.target);
        let watch = open_watch(&watch_api(&spec.namespace), &spec.name, timeout).await;
        delete.polled += usize::from(watch.is_none());
        let t0 = Instant::now();
        api.delete(&spec.name, &DeleteParams::default()).await?;
        delete.requests.push(t0.elapsed());
        let took = wait_for(watch, &api, &spec.name, true, 0, t0, timeout).await?;
        delete.latencies.push(took);
        let c = env.backend.counters(spec.target);
        delete.writes += c.writes;
        delete.reads += c.reads;
        for g in &env.layout.single_updated(spec).grants {
            if env.backend.granted(spec.target, &spec.group, g) {
                delete.mismatches.push(format!("{}: {}@{} still granted when gone", spec.name, g.role, g.scope));
            }
        }
        tokio::time::sleep(SINGLE_GAP).await;
    }
    delete.stages = stages().await?.since(&before);
    seen_by_apiserver.insert("delete".into(), stages::mean_ms_since(&served().await?, &served0));
    let window = sampler.stop().await;
    let s = |p: &Phase| Summary::of(&p.latencies);
    eprintln!(
        "bench: single: p99 create {:.0} ms, update {:.0} ms, delete {:.0} ms",
        s(&create).p99,
        s(&update).p99,
        s(&delete).p99
    );
    let mut all: Vec<Duration> = create.latencies.clone();
    all.extend(&update.latencies);
    all.extend(&delete.latencies);
    Ok(json!({
        "count": count,
        "windowWaitSeconds": (window_wait.as_secs_f64() * 10.0).round() / 10.0,
        "method": "a watch on the one object (fieldSelector metadata.name), opened before the change from the \
                   collection's resourceVersion (so the benchmark's own connection setup is not timed); timed from \
                   just before the apply/delete request to the event showing Ready=True at the new generation (or \
                   DELETED). Falls back to GET every 10 ms if the watch cannot be opened.",
        "create": create.to_json(),
        "update": update.to_json(),
        "delete": delete.to_json(),
        "apiserverRequestMeanMs": seen_by_apiserver,
        "all": Summary::of(&all).to_json(),
        "operator": window.to_json(),
        "cpu": cpu0.until(&CpuSplit::now(op.pid(), env.control_plane_pid)),
    }))
}

// -------------------------------------------------------------- restart

/// Restart: stop the operator, start a new one with every binding in place,
/// time until it has re-established them all.
///
/// Definition: from spawning the process until (a) `/readyz` answers (caches
/// synced, binding index primed), (b) it has completed at least one
/// reconcile per binding (its reconcile-duration histogram count reaches
/// the number of bindings), and (c) a LIST then shows every binding
/// Ready=True at its generation. The bindings were Ready before the stop,
/// so (c) alone would be instant; (b) is what makes the new process vouch
/// for them. Also reported: when its reconciles stopped (queue drained).
/// `profile` (if any) covers the control plane from the stop until all
/// Ready.
pub async fn restart<B: Backend>(
    env: &Env<'_, B>,
    op: &mut Operator,
    options: crate::operator::Options,
    profile: Option<Profile<'_>>,
) -> Result<(Value, Operator)> {
    let n = env.layout.bindings;
    let kind = env.backend.binding_kind();
    env.clear_counters();
    let stop_t = Instant::now();
    let clean = op.stop(Duration::from_secs(30)).await?;
    let stopped = stop_t.elapsed();
    eprintln!("bench: restart: stopped in {:.1}s; starting again", stopped.as_secs_f64());
    let t0 = Instant::now();
    let cpu0 = CpuSplit::now(None, env.control_plane_pid);
    let new = Operator::start(&env.cluster, options).await?;
    let ready = t0.elapsed();
    let sampler = Sampler::start(new.pid().context("operator pid")?, SAMPLE_EVERY);
    let deadline = Instant::now() + Duration::from_secs(300);
    let reconciled = loop {
        if completed_reconciles(&new, kind).await >= n as f64 {
            break t0.elapsed();
        }
        if Instant::now() >= deadline {
            bail!("restart: fewer than {n} binding reconciles after 300 s:\n{}", new.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every binding was Ready at its generation when the one cluster-wide
    // LIST that shows it so was sent: that instant is "all Ready".
    // Fetching and decoding 10,000 objects is the benchmark's own time
    // (verifySeconds).
    let all_ready = t0.elapsed();
    let profile = match profile {
        Some(p) => p.finish()?,
        None => Value::Null,
    };
    let items = Api::<DynamicObject>::all_with(env.cluster.admin.clone(), &env.binding_ar)
        .list(&ListParams::default())
        .await?
        .items;
    let verified = t0.elapsed();
    let not_ready: Vec<DynamicObject> = items.into_iter().filter(|o| !ready_at_generation(o)).collect();
    let cpu = cpu0.until(&CpuSplit::now(new.pid(), env.control_plane_pid));
    let drained = wait_drained(&new, kind, Duration::from_secs(120)).await.duration_since(t0);
    let window = sampler.stop().await;
    let (total, _) = env.counters();
    eprintln!(
        "bench: restart: ready {:.1}s, {n} reconciled {:.1}s, all Ready {:.1}s, drained {:.1}s",
        ready.as_secs_f64(),
        reconciled.as_secs_f64(),
        all_ready.as_secs_f64(),
        drained.as_secs_f64()
    );
    let report = json!({
        "definition": "process spawn → /readyz (index primed) → ≥1 completed reconcile per binding → one LIST shows \
                       all Ready at their generation; all Ready is when that LIST was sent",
        "stopSeconds": secs(stopped),
        "stoppedCleanly": clean,
        "readyzSeconds": secs(ready),
        "reconciledSeconds": secs(reconciled),
        "allReadySeconds": secs(all_ready),
        "verifySeconds": secs(verified.saturating_sub(all_ready)),
        "notReadyAfter": not_ready.len(),
        "notReadyReasons": reasons(&not_ready),
        "drainedSeconds": secs(drained),
        "reconcilesUntilDrained": completed_reconciles(&new, kind).await,
        "backend": total.to_json(),
        "operator": window.to_json(),
        "cpuUntilAllReady": cpu,
        "controlPlaneProfile": profile,
    });
    Ok((report, new))
}

// --------------------------------------------------------- steady state

/// Steady state: everything Ready and nothing changing; count backend reads
/// and writes over two resync intervals, per target and per resync pass
/// (a pass is one MongoTarget reconcile: the operator's reconcile counter).
pub async fn steady<B: Backend>(env: &Env<'_, B>, op: &Operator) -> Result<Value> {
    let resync = env.args.resync;
    let targets = env.layout.targets;
    let kind = env.backend.binding_kind();
    let target_kind = env.backend.target_kind();
    // Let the restart's first passes and their status writes settle.
    wait_drained(op, kind, Duration::from_secs(120)).await;
    let window = resync * 2 + Duration::from_secs(2);
    eprintln!("bench: steady: counting backend calls over {:.0}s (resync {:?})", window.as_secs_f64(), resync);
    let passes0 = completed_reconciles(op, target_kind).await;
    let binding0 = completed_reconciles(op, kind).await;
    env.clear_counters();
    let sampler = Sampler::start(op.pid().context("operator pid")?, SAMPLE_EVERY);
    let cpu0 = CpuSplit::now(op.pid(), env.control_plane_pid);
    tokio::time::sleep(window).await;
    let cpu = cpu0.until(&CpuSplit::now(op.pid(), env.control_plane_pid));
    let (total, per_target) = env.counters();
    let passes = completed_reconciles(op, target_kind).await - passes0;
    let binding_reconciles = completed_reconciles(op, kind).await - binding0;
    let usage = sampler.stop().await;
    let intervals = window.as_secs_f64() / resync.as_secs_f64();
    let per_pass = |x: u64| if passes > 0.0 { round3(x as f64 / passes) } else { 0.0 };
    eprintln!(
        "bench: steady: {passes} target passes, {} reads ({} per pass per target), {} writes",
        total.reads,
        per_pass(total.reads),
        total.writes
    );
    Ok(json!({
        "resyncSeconds": resync.as_secs(),
        "windowSeconds": secs(window),
        "targetPasses": passes,
        "targetPassesPerTargetPerInterval": round3(passes / targets as f64 / intervals),
        "reads": total.reads,
        "writes": total.writes,
        "readsPerTargetPerPass": per_pass(total.reads),
        "writesPerTargetPerPass": per_pass(total.writes),
        "readsPerTargetPerInterval": round3(total.reads as f64 / targets as f64 / intervals),
        "byOperation": total.by_operation,
        "perTarget": per_target.iter().map(OpCounts::to_json).collect::<Vec<_>>(),
        "bindingReconciles": binding_reconciles,
        "bindingReconcilesPerBindingPerInterval": round3(binding_reconciles / env.layout.bindings as f64 / intervals),
        "operator": usage.to_json(),
        "operatorCpuSecondsPerInterval": round3(usage.cpu() / intervals),
        "cpu": cpu,
    }))
}

/// RSS and CPU of a window, as one footprint row.
pub fn footprint_row(label: &str, w: &Window) -> Value {
    json!({"phase": label, "rssMiB": mib(w.end.rss), "peakRssMiB": mib(w.peak_rss.max(w.end.rss)),
           "hwmMiB": mib(w.end.hwm), "cpuSeconds": round3(w.cpu()), "wallSeconds": round3(w.seconds)})
}
