//! Fault scenarios on MongoDB: the real apiserver, the operator process and
//! the MongoDB double, with faults injected while bindings churn — a
//! backend outage, error storms, SIGKILLs at random moments, a binding
//! deleted behind its finalizer's back, and leader failover. Each ends with
//! the convergence check of `faults_mongo_model.rs`; the knobs and the
//! summary line are in `faults_common.rs`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dbgrant_doubles::mongo::Outcome;
use dbgrant_harness::{
    Cluster, Operator,
    operator::{Options, metric_sum},
    proxy::TcpProxy,
};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use crate::common::{mongo_double, operator, operator_lock, setup};
use crate::faults_common::{env_u64, long, no_panics, ready_of, seed, suffix, summary};
use crate::faults_mongo_model::{
    Churn, all_backend_problems, assert_quiet, backend_problems, duplicate_creates, finish, settle, target_doc, targets,
};

/// Not-Ready conditions of `reasons` on the target or any binding in `ns`,
/// as `kind/name: reason: message`.
async fn problems_on_status(cluster: &Cluster, ns: &str, target: &str, reasons: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(t) = cluster.get(&cluster.admin, &target_doc(target), None).await?
        && let Some((s, r, m)) = ready_of(&t)
        && s == "False"
        && reasons.contains(&r.as_str())
    {
        out.push(format!("MongoTarget/{target}: {r}: {m}"));
    }
    let api = cluster.dbgrant(&cluster.admin, "MongoRoleBinding", Some(ns)).await?;
    for o in api.list(&ListParams::default()).await?.items {
        if let Some((s, r, m)) = ready_of(&o)
            && s == "False"
            && reasons.contains(&r.as_str())
        {
            out.push(format!("MongoRoleBinding/{}: {r}: {m}", o.metadata.name.unwrap_or_default()));
        }
    }
    Ok(out)
}

// ------------------------------------------------------- the scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_outage_mid_churn_converges_without_a_hot_loop() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("outage").await?;
    let seed = seed();
    let outage = Duration::from_secs(env_u64("DBGRANT_FAULT_OUTAGE_SECS", 60));
    let down = mongo_double().await?;
    let up = mongo_double().await?;
    // The operator reaches the double that goes down through a counting
    // proxy: refused connections are connection attempts too.
    let counter = TcpProxy::start(down.addr()).await?;
    let s = suffix(&ns.name).to_string();
    let (docs, infos) = targets(
        &[
            (&format!("outage-down-{s}"), "od", format!("mongodb://{}/?directConnection=true", counter.addr)),
            (&format!("outage-up-{s}"), "ou", up.uri()),
        ],
        &cluster.operator_namespace,
        &ns.name,
    );
    let doubles = [&down, &up];
    // Four reconciles at once per kind (the default is 64): with few slots,
    // changes queued on the dead target would hold up the healthy one first.
    let mut options = Options::new(env!("CARGO_BIN_EXE_dbgrant"), "outage");
    options.resync = Duration::from_secs(20);
    options.args = vec!["--concurrency".into(), "4".into()];
    let mut op = Operator::start(&cluster, options).await?;
    dump.log(op.log.clone());
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    for t in &infos {
        cluster.wait_condition(&target_doc(&t.name), None, "Ready", "True", None, Duration::from_secs(30)).await?;
    }
    let mut churn = Churn::new(&cluster, &ns.name, infos.clone(), seed);
    let ops_per_phase = if long() { 40 } else { 16 };
    churn.steps(ops_per_phase, (50, 300)).await?;
    while churn.live.values().filter(|s| s.target == 0).count() < 20 {
        churn.create_on(0).await?;
    }
    let baseline = settle(&churn, &doubles, Duration::from_secs(60)).await?;
    eprintln!("outage: baseline converged in {baseline:?} after {:?}", churn.ops);

    // The outage: refuse new connections and close the open ones.
    let metrics0 = op.metrics().await?;
    let conns0 = counter.accepted();
    let ops0 = churn.ops;
    down.refuse_connections(true);
    down.close_all_connections();
    counter.cut_all();
    let started = Instant::now();
    // A burst on the target that is down (more changes than reconcile
    // slots), then changes on the healthy one: those must not wait for
    // the outage to end.
    let on = |t: usize, churn: &Churn| -> Vec<String> {
        churn.live.iter().filter(|(_, s)| s.target == t).map(|(n, _)| n.clone()).collect()
    };
    let burst_down = on(0, &churn).len();
    for name in on(0, &churn) {
        churn.update_named(&name).await?;
    }
    for name in on(1, &churn) {
        churn.update_named(&name).await?;
    }
    let burst = Instant::now();
    let mut isolated_after = None;
    let up_binding_problems = |churn: &Churn, problems: Vec<String>| -> Vec<String> {
        let names = on(1, churn);
        problems.into_iter().filter(|p| names.iter().any(|n| p.contains(&format!("binding {n} ")))).collect()
    };
    let mut unreachable_after = None;
    let mut bindings_unreachable = Vec::new();
    let mut status_seen = Vec::new();
    let mut other_target_not_ready = Vec::new();
    while started.elapsed() < outage {
        if isolated_after.is_none() {
            let backend = backend_problems(&up, &infos[1].name, &infos[1].prefix, &churn.expected(1));
            let kube = up_binding_problems(&churn, churn.kube_problems().await?);
            if backend.is_empty() && kube.is_empty() {
                isolated_after = Some(burst.elapsed());
            } else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        }
        churn.step().await?;
        if unreachable_after.is_none()
            && let Some(t) = cluster.get(&cluster.admin, &target_doc(&infos[0].name), None).await?
            && let Some((s, r, m)) = ready_of(&t)
            && s == "False"
            && r == "Unreachable"
        {
            unreachable_after = Some(started.elapsed());
            status_seen.push(format!("MongoTarget/{}: {r}: {m}", infos[0].name));
        }
        if bindings_unreachable.is_empty() {
            bindings_unreachable = problems_on_status(&cluster, &ns.name, "-", &["Unreachable"]).await?;
        }
        if let Some(t) = cluster.get(&cluster.admin, &target_doc(&infos[1].name), None).await?
            && ready_of(&t).is_none_or(|(s, _, _)| s != "True")
        {
            other_target_not_ready.push(format!("{:?}", ready_of(&t)));
        }
        let d = churn.rng.millis(500, 2500);
        tokio::time::sleep(d.min(outage.saturating_sub(started.elapsed()))).await;
    }
    let outage_len = started.elapsed();
    let metrics1 = op.metrics().await?;
    let attempts = counter.accepted() - conns0;
    let ops_during = churn.ops.total() - ops0.total();
    let reconciles =
        metric_sum(&metrics1, "dbgrant_reconciles_total", &[]) - metric_sum(&metrics0, "dbgrant_reconciles_total", &[]);
    let backend_errors = metric_sum(&metrics1, "dbgrant_backend_operations_total", &[("outcome", "error")])
        - metric_sum(&metrics0, "dbgrant_backend_operations_total", &[("outcome", "error")]);
    // The other target kept working: its part of the model converged
    // while the first was down.
    let deadline = Instant::now() + Duration::from_secs(30);
    let up_problems = loop {
        let p = backend_problems(&up, &infos[1].name, &infos[1].prefix, &churn.expected(1));
        if p.is_empty() || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    };
    down.refuse_connections(false);
    let recovered = settle(&churn, &doubles, Duration::from_secs(150)).await?;
    assert_quiet(&doubles, Duration::from_secs(3)).await?;
    assert!(op.is_running(), "operator exited:\n{}", op.log_tail(60));
    no_panics(&op)?;

    let secs = outage_len.as_secs_f64();
    let line = format!(
        "backend-outage: seed={seed:#x} outage={secs:.0}s ops={} (during outage {ops_during}) \
         connection attempts during outage={attempts} ({:.2}/s) reconciles={reconciles} ({:.2}/s) \
         backend errors={backend_errors} target Unreachable after {:.1}s; other target healthy={}, \
         its changes applied {:.1}s after a burst of {burst_down} changes on the one down; \
         converged {:.1}s after the outage; result=nothing lost, nothing extra",
        churn.ops.total(),
        attempts as f64 / secs,
        reconciles / secs,
        unreachable_after.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        other_target_not_ready.is_empty() && up_problems.is_empty(),
        isolated_after.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        recovered.as_secs_f64(),
    );
    summary(&line);
    eprintln!("status during the outage: {status_seen:?}; bindings: {bindings_unreachable:?}");
    assert!(
        isolated_after.is_some_and(|d| d < Duration::from_secs(20)),
        "changes on the healthy target waited for the one that was down ({isolated_after:?})"
    );
    assert!(unreachable_after.is_some(), "the target never showed Ready=False Unreachable during a {secs:.0}s outage");
    assert!(other_target_not_ready.is_empty(), "the healthy target was disturbed: {other_target_not_ready:?}");
    assert!(up_problems.is_empty(), "the healthy target did not converge during the outage: {up_problems:?}");
    // No hot loop: a driver monitor plus retries with backoff make a few
    // attempts per second at most; a hot loop makes hundreds.
    assert!(attempts as f64 / secs < 5.0, "{attempts} connection attempts in {secs:.0}s");
    // Every object reconciled every 2 s on average at most (resync is
    // 20 s here; failures back off 15 s).
    let objects = (churn.live.len() + churn.deleted.len() + infos.len()) as f64;
    assert!(reconciles / secs < objects / 2.0, "{reconciles} reconciles of {objects} objects in {secs:.0}s");
    assert!(duplicate_creates(&down).is_empty(), "{:?}", duplicate_creates(&down));

    finish(&mut churn, &docs).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_storms_show_on_status_and_converge_without_duplicates() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("storms").await?;
    let seed = seed();
    let double = mongo_double().await?;
    let s = suffix(&ns.name).to_string();
    let (docs, infos) = targets(&[(&format!("storm-{s}"), "st", double.uri())], &cluster.operator_namespace, &ns.name);
    // No periodic resync during the storms: the faults hit the binding
    // path, where a failure is easiest to lose.
    let mut op = operator(&cluster, "storms", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.wait_condition(&target_doc(&infos[0].name), None, "Ready", "True", None, Duration::from_secs(30)).await?;
    let mut churn = Churn::new(&cluster, &ns.name, infos.clone(), seed ^ 0x5707);
    churn.steps(8, (50, 200)).await?;
    settle(&churn, &[&double], Duration::from_secs(60)).await?;

    // One storm of every kind at once: failover errors, a rotated
    // credential, connections dropped before a command ran and after a
    // write was applied (the client cannot tell whether it happened).
    let per = if long() { 6 } else { 2 };
    for c in ["createRole", "updateRole", "dropRole", "rolesInfo"] {
        double.fail_next(per, 10107, Some(c));
    }
    double.fail_next(per, 13, Some("find"));
    double.fail_next(per, 13, Some("rolesInfo"));
    double.drop_connections_next(per);
    for c in ["createRole", "updateRole", "dropRole", "update", "delete"] {
        double.drop_after_apply_next(per, Some(c));
    }
    let armed = per * 12;
    let started = Instant::now();
    let reasons = ["Unreachable", "BackendError", "Unauthorized"];
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut note = |problems: Vec<String>| {
        for p in problems {
            let reason = p.split(": ").nth(1).unwrap_or_default().to_string();
            seen.entry(reason).or_insert(p);
        }
    };
    let n_ops = if long() { 30 } else { 12 };
    // Groups no binding named yet, so roles are created during the storm.
    for i in 0..2 * per {
        let mut spec = churn.random_spec(0);
        spec.groups = [format!("5707{i:04x}-0000-4000-8000-00000000{i:04x}")].into();
        churn.create_spec(spec).await?;
    }
    for _ in 0..n_ops {
        churn.step().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        note(problems_on_status(&cluster, &ns.name, &infos[0].name, &reasons).await?);
    }
    // Watch status until everything converged.
    let deadline = Instant::now() + Duration::from_secs(180);
    let converged = loop {
        note(problems_on_status(&cluster, &ns.name, &infos[0].name, &reasons).await?);
        if all_backend_problems(&churn, &[&double]).is_empty() && churn.kube_problems().await?.is_empty() {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            settle(&churn, &[&double], Duration::ZERO).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut hit: BTreeMap<String, usize> = BTreeMap::new();
    for r in double.log().iter().filter(|r| r.injected) {
        let what = match r.outcome {
            Outcome::Failed { code } => format!("{code} on {}", r.name),
            Outcome::Dropped { applied: false } => format!("dropped before {}", r.name),
            Outcome::Dropped { applied: true } => format!("dropped after applying {}", r.name),
            _ => r.name.clone(),
        };
        *hit.entry(what).or_default() += 1;
    }
    double.clear_faults();
    let total_injected: usize = hit.values().sum();
    for (reason, example) in &seen {
        eprintln!("storm: status showed {reason}: {example}");
    }
    assert!(total_injected > 0, "no fault was hit");
    assert!(seen.contains_key("Unauthorized"), "no status showed Unauthorized: {seen:?}");
    assert!(
        seen.contains_key("Unreachable") || seen.contains_key("BackendError"),
        "no status showed the errors: {seen:?}"
    );
    let lines = [
        format!("{armed} armed, {total_injected} hit: {hit:?}"),
        format!("status showed {:?}", seen.keys().collect::<Vec<_>>()),
        format!("converged {:.1}s after the storm began", converged.as_secs_f64()),
    ];
    assert_quiet(&[&double], Duration::from_secs(3)).await?;
    let dups = duplicate_creates(&double);
    assert!(dups.is_empty(), "writes applied twice: {dups:?}");
    assert!(op.is_running(), "operator exited:\n{}", op.log_tail(60));
    no_panics(&op)?;
    summary(&format!(
        "error-storms: seed={seed:#x} ops={} faults {}; duplicates=0; result=converged",
        churn.ops.total(),
        lines.join("; ")
    ));
    finish(&mut churn, &docs).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("crash").await?;
    let seed = seed();
    let kills = env_u64("DBGRANT_FAULT_KILLS", if long() { 40 } else { 12 });
    let double = mongo_double().await?;
    let s = suffix(&ns.name).to_string();
    // Two targets on one deployment: their ledger entries must stay apart.
    let (docs, mut infos) = targets(
        &[(&format!("crash-a-{s}"), "ca", double.uri()), (&format!("crash-b-{s}"), "cb", double.uri())],
        &cluster.operator_namespace,
        &ns.name,
    );
    infos[1].double = 0;
    let doubles = [&double];
    let mut op = operator(&cluster, "crash", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    for t in &infos {
        cluster.wait_condition(&target_doc(&t.name), None, "Ready", "True", None, Duration::from_secs(30)).await?;
    }
    let mut churn = Churn::new(&cluster, &ns.name, infos.clone(), seed ^ 0xc4a5);
    churn.steps(10, (20, 100)).await?;
    let mut writes_at_kill = Vec::new();
    let mut checks = Vec::new();
    let mut ops_while_down = 0;
    for cycle in 0..kills {
        if !op.is_running() {
            op.spawn().await?;
        }
        let run_for = churn.rng.millis(0, 2500);
        let writes0 = double.counters().writes;
        churn.steps_for(run_for, (30, 250)).await?;
        op.kill().await?;
        writes_at_kill.push(double.counters().writes - writes0);
        // Changes while it is down: deletes must be revoked on restart.
        for _ in 0..churn.rng.below(3) {
            churn.step().await?;
            ops_while_down += 1;
        }
        if (cycle + 1) % 4 == 0 || cycle + 1 == kills {
            op.spawn().await?;
            let took = settle(&churn, &doubles, Duration::from_secs(90))
                .await
                .with_context(|| format!("after kill {} (seed {seed:#x})", cycle + 1))?;
            checks.push(took);
        }
    }
    if !op.is_running() {
        op.spawn().await?;
    }
    settle(&churn, &doubles, Duration::from_secs(90)).await?;
    assert_quiet(&doubles, Duration::from_secs(3)).await?;
    let dups = duplicate_creates(&double);
    assert!(dups.is_empty(), "writes applied twice: {dups:?}");
    no_panics(&op)?;
    let busy = writes_at_kill.iter().filter(|w| **w > 0).count();
    summary(&format!(
        "crash-safety: seed={seed:#x} SIGKILLs={kills} ({busy} with backend writes in the cycle, {} writes in total) \
         ops={} (while down {ops_while_down}) state checks={} (slowest {:.1}s) live bindings={} roles={}; \
         result=no orphan, no missing grant, ledger exact, no duplicate create",
        writes_at_kill.iter().sum::<usize>(),
        churn.ops.total(),
        checks.len(),
        checks.iter().max().copied().unwrap_or_default().as_secs_f64(),
        churn.live.len(),
        churn.expected(0).len() + churn.expected(1).len(),
    ));
    finish(&mut churn, &docs).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

/// A binding that disappears without passing through its finalizer (the
/// finalizer removed by hand, as people do when a deletion seems stuck)
/// must not keep granting: the target's next resync forgets it and revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_deleted_behind_the_finalizers_back_is_revoked_at_the_next_resync() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("ghost").await?;
    let double = mongo_double().await?;
    let s = suffix(&ns.name).to_string();
    let (docs, infos) = targets(&[(&format!("ghost-{s}"), "gh", double.uri())], &cluster.operator_namespace, &ns.name);
    let resync = Duration::from_secs(10);
    let mut op = operator(&cluster, "ghost", resync, &mut dump).await?;
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.wait_condition(&target_doc(&infos[0].name), None, "Ready", "True", None, Duration::from_secs(30)).await?;
    let mut churn = Churn::new(&cluster, &ns.name, infos.clone(), seed());
    for _ in 0..3 {
        churn.create().await?;
    }
    settle(&churn, &[&double], Duration::from_secs(30)).await?;
    // Remove dbgrant's finalizer by hand, then delete, while the operator
    // is paused (so it cannot put the finalizer back in between): the
    // binding is gone and no cleanup ever runs for it.
    let name = churn.live.keys().next().cloned().expect("a binding");
    let spec = churn.live.remove(&name).expect("live");
    let api = cluster.dbgrant(&cluster.admin, "MongoRoleBinding", Some(&ns.name)).await?;
    let pid = op.pid().context("operator pid")?.to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status()?;
    let removed = async {
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}}))).await?;
        cluster.delete(&cluster.admin, &churn.manifest(&name, &spec), None).await
    }
    .await;
    std::process::Command::new("kill").args(["-CONT", &pid]).status()?;
    removed?;
    churn.deleted.insert(name.clone());
    let took = settle(&churn, &[&double], resync * 3).await.context("the vanished binding still grants")?;
    summary(&format!(
        "vanished-binding: 1 binding deleted with its finalizer removed by hand; its grant was revoked {:.1}s later \
         (resync {}s); result=nothing left granting",
        took.as_secs_f64(),
        resync.as_secs()
    ));
    finish(&mut churn, &docs).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

async fn leader_gauge(op: &Operator) -> Option<f64> {
    op.metrics().await.ok().map(|m| metric_sum(&m, "dbgrant_leader", &[]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_takes_over_within_the_lease_and_applies_nothing_twice() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("failover").await?;
    let seed = seed();
    let failovers = env_u64("DBGRANT_FAULT_FAILOVERS", if long() { 6 } else { 2 });
    let lease = Duration::from_secs(4);
    let double = mongo_double().await?;
    let s = suffix(&ns.name).to_string();
    let (docs, infos) =
        targets(&[(&format!("failover-{s}"), "fo", double.uri())], &cluster.operator_namespace, &ns.name);
    let lease_name = format!("dbgrant-failover-{s}");
    let start = |id: &str| {
        let mut o = Options::new(env!("CARGO_BIN_EXE_dbgrant"), &format!("failover-{id}"));
        o.args = ["--leader-elect", "--lease-duration", "4s", "--lease-name", &lease_name, "--identity", id]
            .map(String::from)
            .to_vec();
        o
    };
    let mut ops = Vec::new();
    for id in ["replica-a", "replica-b"] {
        let op = Operator::start(&cluster, start(id)).await?;
        dump.log(op.log.clone());
        ops.push(op);
        if ops.len() == 1 {
            // The first replica leads before the second starts.
            let deadline = Instant::now() + Duration::from_secs(30);
            while leader_gauge(&ops[0]).await != Some(1.0) {
                if Instant::now() > deadline {
                    bail!("replica-a never became leader:\n{}", ops[0].log_tail(40));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(leader_gauge(&ops[1]).await, Some(0.0), "replica-b must follow while replica-a leads");
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.wait_condition(&target_doc(&infos[0].name), None, "Ready", "True", None, Duration::from_secs(30)).await?;
    let mut churn = Churn::new(&cluster, &ns.name, infos.clone(), seed ^ 0xf00);
    churn.steps(8, (50, 200)).await?;
    settle(&churn, &[&double], Duration::from_secs(60)).await?;

    let mut takeovers = Vec::new();
    for round in 0..failovers {
        let mut leader = None;
        for (i, op) in ops.iter().enumerate() {
            if leader_gauge(op).await == Some(1.0) {
                leader = Some(i);
            }
        }
        let leader = leader.context("no replica leads")?;
        let follower = 1 - leader;
        let before_kill = churn.rng.millis(300, 2000);
        churn.steps_for(before_kill, (50, 250)).await?;
        ops[leader].kill().await?;
        let killed = Instant::now();
        // Keep changing things while the lease runs out.
        let takeover = loop {
            churn.step().await?;
            if leader_gauge(&ops[follower]).await == Some(1.0) {
                break killed.elapsed();
            }
            if killed.elapsed() > lease * 4 {
                bail!("round {round}: no takeover {:?} after the leader was killed", killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        takeovers.push(takeover);
        settle(&churn, &[&double], Duration::from_secs(60)).await.with_context(|| format!("after failover {round}"))?;
        // The killed replica comes back as a follower.
        ops[leader].spawn().await?;
        assert_eq!(leader_gauge(&ops[leader]).await, Some(0.0), "a restarted replica must follow");
    }
    settle(&churn, &[&double], Duration::from_secs(60)).await?;
    assert_quiet(&[&double], Duration::from_secs(3)).await?;
    let dups = duplicate_creates(&double);
    let max_concurrent = double.max_concurrent_writes();
    for op in &ops {
        no_panics(op)?;
    }
    let slowest = takeovers.iter().max().copied().unwrap_or_default();
    summary(&format!(
        "failover: seed={seed:#x} leader kills={failovers} takeovers={:?} (lease {}s) ops={} \
         duplicate creates={} max concurrent writes={max_concurrent}; result=converged, nothing applied twice",
        takeovers.iter().map(|d| format!("{:.1}s", d.as_secs_f64())).collect::<Vec<_>>(),
        lease.as_secs(),
        churn.ops.total(),
        dups.len(),
    ));
    assert!(dups.is_empty(), "writes applied twice: {dups:?}");
    assert!(max_concurrent <= 1, "two replicas wrote at once ({max_concurrent} concurrent writes)");
    // The follower polls the Lease; it may take the lease duration plus a
    // renew period, and the test's own polling adds a little.
    assert!(slowest <= lease + Duration::from_secs(6), "takeover took {slowest:?} with a {lease:?} lease");
    finish(&mut churn, &docs).await?;
    for op in &mut ops {
        op.stop(Duration::from_secs(10)).await?;
    }
    dump.passed();
    Ok(())
}
