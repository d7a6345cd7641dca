//! The JSON report and the markdown table.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{args::Args, floor::Writes, machine::Machine};

/// The whole report.
pub fn assemble(args: &Args, machine: &Machine, runs: &[Value]) -> Value {
    json!({
        "tool": "dbgrant-bench",
        "command": args.command,
        "machine": machine.to_json(),
        "config": {
            "bindings": args.bindings,
            "targets": args.targets,
            "bindingsPerGroup": args.bindings_per_group,
            "bindingsPerNamespace": args.bindings_per_namespace,
            "mongoLatencyMs": args.mongo_latency.as_secs_f64() * 1e3,
            "cosmosAccounts": args.cosmos_accounts,
            "armLatencyMs": args.arm_latency.as_secs_f64() * 1e3,
            "parallelApplies": args.parallel,
            "bulkObserve": if args.observe_by_list { "list" } else { "watch" },
            "bulkPollMs": args.poll.as_millis() as u64,
            "singleChanges": args.single,
            "singleChangesCosmos": args.single_cosmos,
            "resyncSecondsForRestartAndSteady": args.resync.as_secs(),
            "scenarios": args.scenarios,
            "backends": args.backends,
            "dbgrant": args.dbgrant.display().to_string(),
            "operatorArgs": args.operator_args,
            "operatorEnv": args.operator_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        },
        "runs": runs,
        "goals": goals(runs),
    })
}

/// Write `report.json` and `report.md` into `dir`.
pub fn write(dir: &Path, report: &Value) -> Result<()> {
    let json_path = dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = dir.join("report.md");
    std::fs::write(&md_path, markdown(report)).with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!("bench: wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// The issue's goals, checked for every run of at least 10,000 bindings
/// (or the largest run, when none is that big).
pub fn goals(runs: &[Value]) -> Value {
    let largest = runs.iter().filter_map(|r| r["bindings"].as_u64()).max().unwrap_or(0);
    let judged: Vec<&Value> =
        runs.iter().filter(|r| r["bindings"].as_u64().is_some_and(|n| n >= 10_000 || n == largest)).collect();
    let mut out = Vec::new();
    for r in judged {
        let n = r["bindings"].as_u64().unwrap_or(0);
        let backend = r["backend"].as_str().unwrap_or("?");
        let worst_single = ["create", "update", "delete"]
            .iter()
            .filter_map(|p| num(r, &format!("/single/{p}/p99Ms")))
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let peak_rss = r["footprint"].as_array().map(|rows| {
            rows.iter().filter_map(|x| x["peakRssMiB"].as_f64().or(x["hwmMiB"].as_f64())).fold(0.0, f64::max)
        });
        let mongo = backend == "mongodb";
        let mut checks = vec![
            (
                "bulk: every binding Ready, none failed",
                num(r, "/bulk/ready"),
                "all",
                num(r, "/bulk/ready").map(|x| x == n as f64 && r["bulk"]["complete"] == true),
            ),
            (
                "steady state: backend writes over two resync intervals",
                num(r, "/steady/writes"),
                "0",
                num(r, "/steady/writes").map(|x| x == 0.0),
            ),
            ("operator peak RSS (MiB)", peak_rss, "< 100 MiB", peak_rss.map(|x| x < 100.0)),
            (
                "restart to all Ready (s)",
                num(r, "/restart/allReadySeconds"),
                "< 10 s",
                num(r, "/restart/allReadySeconds").map(|x| x < 10.0 && r["restart"]["notReadyAfter"] == 0),
            ),
        ];
        checks.push((
            "bulk ÷ baseline (all Ready ÷ the same applies with no operator)",
            bulk_over_baseline(r),
            "≤ 2",
            bulk_over_baseline(r).map(|x| x <= 2.0),
        ));
        let writes = num(r, "/bulk/apiserverRequests/operatorWritesPerBinding");
        checks.push(("apiserver: operator writes per binding (bulk)", writes, "≤ 2", writes.map(|x| x <= 2.0)));
        if mongo {
            checks.insert(
                0,
                (
                    "single change p99, worst of create/update/delete (ms)",
                    worst_single,
                    "< 250 ms",
                    worst_single.map(|x| x < 250.0),
                ),
            );
            checks.insert(
                1,
                (
                    "bulk: all Ready (s)",
                    num(r, "/bulk/allReadySeconds"),
                    "≤ 60 s",
                    num(r, "/bulk/allReadySeconds").map(|x| x <= 60.0 && r["bulk"]["complete"] == true),
                ),
            );
        } else {
            let eff = num(r, "/bulk/quota/quotaEfficiency");
            let goal = if eff.is_none() && num(r, "/bulk/quota/acceptedWrites").is_some() {
                "≥ 0.9 (not quota-bound: fewer writes than the bucket holds)"
            } else {
                "≥ 0.9"
            };
            checks.insert(0, ("bulk: share of the write rate the quotas allow", eff, goal, eff.map(|x| x >= 0.9)));
        }
        for (what, value, goal, met) in checks {
            out.push(
                json!({"backend": backend, "bindings": n, "goal": what, "target": goal, "value": value, "met": met}),
            );
        }
    }
    json!(out)
}

fn fmt(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(x) => {
            let s = format!("{x:.decimals$}");
            thousands(&s)
        }
        None => "–".into(),
    }
}

fn thousands(s: &str) -> String {
    let (int, frac) = s.split_once('.').map_or((s, None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{out}.{f}"),
        None => format!("{sign}{out}"),
    }
}

fn triple(r: &Value, base: &str) -> String {
    let p = |k: &str| num(r, &format!("{base}/{k}"));
    if p("p50Ms").is_none() {
        return "–".into();
    }
    format!("{} / {} / {}", fmt(p("p50Ms"), 0), fmt(p("p95Ms"), 0), fmt(p("p99Ms"), 0))
}

fn footprint(r: &Value, phase_prefix: &str, key: &str) -> Option<f64> {
    r["footprint"].as_array()?.iter().find(|x| x["phase"].as_str().is_some_and(|p| p.starts_with(phase_prefix)))?[key]
        .as_f64()
}

/// Bulk all-Ready time over the baseline's (the same applies, no
/// operator), measured in the same run.
fn bulk_over_baseline(r: &Value) -> Option<f64> {
    let base = baseline_seconds(r)?;
    num(r, "/bulk/allReadySeconds").map(|b| b / base)
}

/// The baseline's time, if the run has one.
fn baseline_seconds(r: &Value) -> Option<f64> {
    num(r, "/baseline/submitSeconds").filter(|b| *b > 0.0)
}

/// The floor run that made `writes` (see `bench::floor`): its time in
/// seconds, and that over the baseline's.
fn floor(r: &Value, writes: Writes) -> (Option<f64>, Option<f64>) {
    let run = r["floor"].as_array().and_then(|f| f.iter().find(|x| x["writes"] == writes.name()));
    let seconds = run.and_then(|x| x["seconds"].as_f64());
    (seconds, seconds.zip(baseline_seconds(r)).map(|(s, b)| s / b))
}

/// A floor row's cell: "seconds; ÷ baseline", or "–" without a floor run.
fn floor_cell(writes: Writes) -> Box<dyn Fn(&Value) -> String> {
    Box::new(move |r| match floor(r, writes) {
        (None, _) => "–".into(),
        (s, ratio) => format!("{}; {}", fmt(s, 1), fmt(ratio, 2)),
    })
}

type Row = (&'static str, &'static str, Box<dyn Fn(&Value) -> String>);

/// A cell that only some runs have (Cosmos DB's quota figures, say): "–"
/// where the run's report has no number at `present`, else `cell` of it.
fn only_with(present: &'static str, cell: impl Fn(&Value) -> String + 'static) -> Box<dyn Fn(&Value) -> String> {
    Box::new(move |r| if num(r, present).is_none() { "–".into() } else { cell(r) })
}

fn rows() -> Vec<Row> {
    let n = |p: &'static str, d: usize| -> Box<dyn Fn(&Value) -> String> { Box::new(move |r| fmt(num(r, p), d)) };
    vec![
        ("**Bulk**: all Ready (s)", "MongoDB: ≤ 60 s at 10,000", n("/bulk/allReadySeconds", 1)),
        ("Bulk: throughput (bindings Ready/s)", "", n("/bulk/bindingsReadyPerSecond", 0)),
        ("Bulk: time to submit all applies (s)", "", n("/bulk/submitSeconds", 1)),
        ("Bulk: apply-to-Ready p50 / p95 / p99 (ms)", "", Box::new(|r| triple(r, "/bulk/applyToReady"))),
        (
            "Bulk: backend writes (per binding)",
            "",
            Box::new(|r| {
                format!(
                    "{} ({})",
                    fmt(num(r, "/bulk/backend/writes"), 0),
                    fmt(num(r, "/bulk/backendWritesPerBinding"), 2)
                )
            }),
        ),
        ("Bulk: backend reads", "", n("/bulk/backend/reads", 0)),
        ("Bulk: reconciles per binding", "", n("/bulk/reconcilesPerBinding", 2)),
        (
            "Bulk (Cosmos): accepted ARM writes; writes/s",
            "",
            only_with("/bulk/quota/acceptedWrites", |r| {
                format!(
                    "{}; {}",
                    fmt(num(r, "/bulk/quota/acceptedWrites"), 0),
                    fmt(num(r, "/bulk/quota/writesPerSecond"), 1)
                )
            }),
        ),
        (
            "Bulk (Cosmos): quota-imposed minimum (s); share of the allowed rate",
            "≥ 0.9",
            only_with("/bulk/quota/acceptedWrites", |r| {
                let eff =
                    num(r, "/bulk/quota/quotaEfficiency").map_or("not quota-bound".to_string(), |e| fmt(Some(e), 2));
                format!("{}; {eff}", fmt(num(r, "/bulk/quota/quotaMinimumSeconds"), 0))
            }),
        ),
        (
            "Bulk (Cosmos): apply-to-Ready p50, and the quotas' least p50 for the same applies (ms); ratio",
            "≤ 1.5",
            only_with("/bulk/applyToReadyQuotaMinimum/minimum/p50Ms", |r| {
                format!(
                    "{} / {}; {}",
                    fmt(num(r, "/bulk/applyToReady/p50Ms"), 0),
                    fmt(num(r, "/bulk/applyToReadyQuotaMinimum/minimum/p50Ms"), 0),
                    fmt(num(r, "/bulk/applyToReadyQuotaMinimum/p50OverMinimumP50"), 2)
                )
            }),
        ),
        (
            "Bulk (Cosmos): 429 / 412 answers (429 per 1,000 accepted writes)",
            "",
            only_with("/bulk/quota/acceptedWrites", |r| {
                format!(
                    "{} / {} ({})",
                    fmt(num(r, "/bulk/quota/throttled429"), 0),
                    fmt(num(r, "/bulk/quota/busy412"), 0),
                    fmt(num(r, "/bulk/quota/throttled429Per1000Writes"), 1)
                )
            }),
        ),
        (
            "Bulk (Cosmos): the operator's waits by reason (`dbgrant_backend_throttles_total`)",
            "",
            only_with("/bulk/quota/acceptedWrites", |r| {
                let waits = r["bulk"]["operatorThrottlesByReason"].as_object().cloned().unwrap_or_default();
                if waits.is_empty() {
                    return "none".into();
                }
                waits.iter().map(|(k, v)| format!("{k} {}", fmt(v.as_f64(), 0))).collect::<Vec<_>>().join("; ")
            }),
        ),
        (
            "Bulk (Cosmos): per account, write → its operation done → next write (mean ms); polls per write",
            "",
            only_with("/bulk/quota/writeCycle/pairs", |r| {
                format!(
                    "{} → {}; {}",
                    fmt(num(r, "/bulk/quota/writeCycle/writeToDoneMs"), 0),
                    fmt(num(r, "/bulk/quota/writeCycle/doneToNextWriteMs"), 0),
                    fmt(num(r, "/bulk/quota/writeCycle/pollsPerWrite"), 1)
                )
            }),
        ),
        ("Baseline: the same applies with no operator (s)", "", n("/baseline/submitSeconds", 1)),
        (
            "Bulk ÷ baseline (all Ready ÷ the same applies with no operator)",
            "≤ 2 (stretch 1.5)",
            Box::new(|r| fmt(bulk_over_baseline(r), 2)),
        ),
        (
            "Floor: the applies, each followed by a status write made by the benchmark, no operator (s; ÷ baseline)",
            "",
            floor_cell(Writes::Status),
        ),
        (
            "Floor: the applies, each followed by a finalizer patch, status write and Event made by the benchmark (s; ÷ baseline)",
            "",
            floor_cell(Writes::All),
        ),
        (
            "**Apiserver**: operator writes / reads per binding (bulk)",
            "writes ≤ 2",
            Box::new(|r| {
                format!(
                    "{} / {}",
                    fmt(num(r, "/bulk/apiserverRequests/operatorWritesPerBinding"), 2),
                    fmt(num(r, "/bulk/apiserverRequests/operatorReadsPerBinding"), 2)
                )
            }),
        ),
        (
            "Apiserver: operator requests by kind (bulk)",
            "",
            Box::new(|r| {
                let rows = r["bulk"]["apiserverRequests"]["byKind"].as_array().cloned().unwrap_or_default();
                let shown: Vec<String> = rows
                    .iter()
                    .filter(|x| x["operator"].as_u64().unwrap_or(0) > 0)
                    .map(|x| {
                        let sub = x["subresource"].as_str().unwrap_or_default();
                        let what = format!(
                            "{} {}{}",
                            x["verb"].as_str().unwrap_or("?"),
                            x["resource"].as_str().unwrap_or("?"),
                            if sub.is_empty() { String::new() } else { format!("/{sub}") }
                        );
                        format!("{what} {}", x["operator"])
                    })
                    .collect();
                if shown.is_empty() { "–".into() } else { shown.join("; ") }
            }),
        ),
        (
            "Apiserver: control plane CPU s per binding (bulk; baseline)",
            "",
            Box::new(|r| {
                let n = num(r, "/bindings").unwrap_or(0.0).max(1.0);
                let per = |p: &str| num(r, p).map(|x| x / n);
                format!(
                    "{}; {}",
                    fmt(per("/bulk/cpuUntilAllReady/controlPlane").map(|x| x * 1000.0), 2),
                    fmt(per("/baseline/cpu/controlPlane").map(|x| x * 1000.0), 2)
                ) + " (ms)"
            }),
        ),
        (
            "Bulk: CPU s operator / control plane / bench+doubles / other processes",
            "",
            Box::new(|r| {
                let c = |k: &str| fmt(num(r, &format!("/bulk/cpuUntilAllReady/{k}")), 1);
                format!(
                    "{} / {} / {} / {}",
                    c("operator"),
                    c("controlPlane"),
                    c("benchAndDoubles"),
                    c("otherProcesses")
                )
            }),
        ),
        (
            "Bulk, mean ms per binding: queued · finalizer · lock · backend · status · rest of reconcile · outside the operator (apiserver, watches)",
            "",
            Box::new(|r| {
                if r["bulk"]["operatorStages"].is_object() {
                    stage_breakdown(r, "/bulk/operatorStages")
                } else {
                    "–".into()
                }
            }),
        ),
        (
            "Bulk: control plane CPU by request (profile; share of its CPU s)",
            "",
            Box::new(|r| profile_shares(&r["bulk"]["controlPlaneProfile"], "byRequest")),
        ),
        (
            "Bulk: control plane CPU by kind of work (profile)",
            "",
            Box::new(|r| profile_shares(&r["bulk"]["controlPlaneProfile"], "byWork")),
        ),
        (
            "**Single change** create → Ready p50 / p95 / p99 (ms)",
            "MongoDB: p99 < 250 ms",
            Box::new(|r| triple(r, "/single/create")),
        ),
        (
            "Single change update → Ready p50 / p95 / p99 (ms)",
            "MongoDB: p99 < 250 ms",
            Box::new(|r| triple(r, "/single/update")),
        ),
        (
            "Single change delete → gone p50 / p95 / p99 (ms)",
            "MongoDB: p99 < 250 ms",
            Box::new(|r| triple(r, "/single/delete")),
        ),
        (
            "Single change: backend writes per create / update / delete",
            "",
            Box::new(|r| {
                format!(
                    "{} / {} / {}",
                    fmt(num(r, "/single/create/backendWritesPerChange"), 1),
                    fmt(num(r, "/single/update/backendWritesPerChange"), 1),
                    fmt(num(r, "/single/delete/backendWritesPerChange"), 1)
                )
            }),
        ),
        (
            "Single change, mean ms inside the operator, create / update / delete: queued · finalizer · lock · backend · status · rest of reconcile · outside (apiserver, watches)",
            "",
            Box::new(|r| {
                ["create", "update", "delete"]
                    .iter()
                    .map(|p| stage_breakdown(r, &format!("/single/{p}/operatorStages")))
                    .collect::<Vec<_>>()
                    .join(" / ")
            }),
        ),
        ("**Steady state**: backend writes over two resync intervals", "0", n("/steady/writes", 0)),
        (
            "Steady: backend reads per resync pass per target",
            "independent of bindings",
            n("/steady/readsPerTargetPerPass", 1),
        ),
        ("Steady: backend reads per resync interval per target", "", n("/steady/readsPerTargetPerInterval", 1)),
        ("Steady: target resync passes per target per interval", "1", n("/steady/targetPassesPerTargetPerInterval", 2)),
        (
            "Steady: binding reconciles per binding per interval",
            "",
            n("/steady/bindingReconcilesPerBindingPerInterval", 2),
        ),
        ("Steady: operator CPU per resync interval (s)", "", n("/steady/operatorCpuSecondsPerInterval", 2)),
        ("**Footprint**: RSS idle, no bindings (MiB)", "", Box::new(|r| fmt(footprint(r, "idle, no", "rssMiB"), 1))),
        (
            "Footprint: RSS peak during bulk (MiB)",
            "< 100 MiB at 10,000",
            Box::new(|r| fmt(footprint(r, "bulk", "peakRssMiB"), 1)),
        ),
        (
            "Footprint: RSS idle, all bindings Ready (MiB)",
            "< 100 MiB at 10,000",
            Box::new(|r| {
                r["footprint"]
                    .as_array()
                    .and_then(|rows| {
                        rows.iter().find(|x| {
                            x["phase"].as_str().is_some_and(|p| p.starts_with("idle, ") && !p.contains("no bindings"))
                        })
                    })
                    .map(|x| fmt(x["rssMiB"].as_f64(), 1))
                    .unwrap_or_else(|| "–".into())
            }),
        ),
        (
            "Footprint: VmHWM of the restarted operator at the end (MiB)",
            "",
            Box::new(|r| fmt(footprint(r, "end", "hwmMiB"), 1)),
        ),
        ("Footprint: CPU during bulk (s)", "", Box::new(|r| fmt(footprint(r, "bulk", "cpuSeconds"), 1))),
        (
            "Footprint: CPU idle, all Ready (s per 10 s)",
            "",
            Box::new(|r| {
                r["footprint"]
                    .as_array()
                    .and_then(|rows| {
                        rows.iter().find(|x| {
                            x["phase"].as_str().is_some_and(|p| p.starts_with("idle, ") && !p.contains("no bindings"))
                        })
                    })
                    .map(|x| fmt(x["cpuSeconds"].as_f64(), 2))
                    .unwrap_or_else(|| "–".into())
            }),
        ),
        ("**Restart**: to /readyz (s)", "", n("/restart/readyzSeconds", 1)),
        ("Restart: to all Ready (s)", "< 10 s", n("/restart/allReadySeconds", 1)),
        ("Restart: until reconciles drained (s)", "", n("/restart/drainedSeconds", 1)),
        (
            "Restart: CPU s until all Ready, operator / control plane / bench+doubles",
            "",
            Box::new(|r| {
                let c = |k: &str| fmt(num(r, &format!("/restart/cpuUntilAllReady/{k}")), 2);
                format!("{} / {} / {}", c("operator"), c("controlPlane"), c("benchAndDoubles"))
            }),
        ),
        (
            "Restart: control plane CPU by request (profile)",
            "",
            Box::new(|r| profile_shares(&r["restart"]["controlPlaneProfile"], "byRequest")),
        ),
        ("Restart: backend writes", "0", n("/restart/backend/writes", 0)),
        ("Restart: operator RSS once settled (MiB)", "< 100 MiB at 10,000", n("/restart/operator/rssMiB", 1)),
    ]
}

/// The markdown report: header, one column per run, goals.
pub fn markdown(report: &Value) -> String {
    let m = &report["machine"];
    let c = &report["config"];
    let runs: Vec<&Value> = report["runs"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let mut s = String::new();
    s.push_str("## Results\n\n");
    s.push_str(&format!(
        "Measured {} on {} cores ({}), {} GiB RAM, Linux {}; commit `{}`.\n\n",
        m["startedAt"].as_str().unwrap_or("?"),
        m["cores"],
        m["cpuModel"].as_str().unwrap_or("?"),
        m["memoryGiB"],
        m["kernel"].as_str().unwrap_or("?"),
        m["commit"].as_str().unwrap_or("?"),
    ));
    s.push_str(&format!("```sh\n{}\n```\n\n", report["command"].as_str().unwrap_or("dbgrant-bench")));
    s.push_str(&format!(
        "MongoDB: {} targets (one double each, {} ms per command); each group's bindings grant different \
         databases (the group's role is their union). Cosmos DB: {} accounts behind one ARM double ({} ms per \
         call, operations done after two polls, write bucket 200 + 10/s per principal, 500 writes per account \
         per 5 minutes); each group's bindings grant the same role on the same database (one shared \
         assignment). {} bindings per Entra group, {} per namespace; {} applies in flight; {} (MongoDB) and {} (Cosmos DB) \
         single changes of each kind; resync {} s for restart and steady state (5 m before).\n\n",
        c["targets"],
        c["mongoLatencyMs"],
        c["cosmosAccounts"],
        c["armLatencyMs"],
        c["bindingsPerGroup"],
        c["bindingsPerNamespace"],
        c["parallelApplies"],
        c["singleChanges"],
        c["singleChangesCosmos"],
        c["resyncSecondsForRestartAndSteady"],
    ));
    s.push_str("| Figure |");
    for r in &runs {
        s.push_str(&format!(" {} × {} |", r["backend"].as_str().unwrap_or("?"), thousands(&r["bindings"].to_string())));
    }
    s.push_str(" Goal |\n|---|");
    for _ in &runs {
        s.push_str("---:|");
    }
    s.push_str("---|\n");
    for (label, goal, f) in rows() {
        s.push_str(&format!("| {label} |"));
        for r in &runs {
            s.push_str(&format!(
                " {} |",
                if r.get("error").is_some() && r.get("bulk").is_none() { "error".into() } else { f(r) }
            ));
        }
        s.push_str(&format!(" {goal} |\n"));
    }
    let errors: Vec<String> = runs
        .iter()
        .filter_map(|r| r["error"].as_str().map(|e| format!("- {} × {}: {e}", r["backend"], r["bindings"])))
        .collect();
    if !errors.is_empty() {
        s.push_str(&format!("\nErrors:\n\n{}\n", errors.join("\n")));
    }
    let goals = goals(report["runs"].as_array().map(Vec::as_slice).unwrap_or_default());
    if let Some(goals) = goals.as_array()
        && !goals.is_empty()
    {
        s.push_str("\n| Goal | Run | Value | Target | Met |\n|---|---|---:|---|---|\n");
        for g in goals {
            let met = match g["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            s.push_str(&format!(
                "| {} | {} × {} | {} | {} | {met} |\n",
                g["goal"].as_str().unwrap_or("?"),
                g["backend"].as_str().unwrap_or("?"),
                thousands(&g["bindings"].to_string()),
                fmt(g["value"].as_f64(), if g["value"].as_f64().is_some_and(|v| v.abs() < 1.0) { 2 } else { 1 }),
                g["target"].as_str().unwrap_or("?"),
            ));
        }
    }
    s
}

/// Mean milliseconds per change in each of the operator's stages at
/// `base` (a [`super::stages::Stages::to_json`]): "queued · finalizer ·
/// lock · backend · status · rest of reconcile · outside".
fn stage_breakdown(r: &Value, base: &str) -> String {
    let stage = |s: &str| fmt(num(r, &format!("{base}/stages/{s}/msPerChange")).or(Some(0.0)), 1);
    format!(
        "{} · {} · {} · {} · {} · {} · {}",
        stage("queued"),
        stage("finalizer"),
        stage("lock"),
        stage("backend"),
        stage("status"),
        fmt(num(r, &format!("{base}/reconcileOtherMs")), 1),
        fmt(num(r, &format!("{base}/outsideOperatorMs")), 1)
    )
}

/// A control-plane profile summary's categories, largest first, as
/// "name 28 %; …" after its CPU seconds; "–" when none was taken.
fn profile_shares(profile: &Value, by: &str) -> String {
    let Some(shares) = profile[by].as_array() else { return "–".into() };
    let parts: Vec<String> = shares
        .iter()
        .filter(|s| s["share"].as_f64().unwrap_or(0.0) >= 0.01)
        .map(|s| format!("{} {:.0} %", s["name"].as_str().unwrap_or("?"), s["share"].as_f64().unwrap_or(0.0) * 100.0))
        .collect();
    format!("{} CPU s: {}", fmt(profile["cpuSeconds"].as_f64(), 1), parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_shows_its_categories_largest_first_and_small_ones_dropped() {
        let profile = serde_json::json!({
            "cpuSeconds": 17.1,
            "byRequest": [
                { "name": "status writes", "seconds": 3.9, "share": 0.23 },
                { "name": "creates (POST)", "seconds": 1.0, "share": 0.059 },
                { "name": "deletes", "seconds": 0.01, "share": 0.0006 },
            ],
        });
        assert_eq!(profile_shares(&profile, "byRequest"), "17.1 CPU s: status writes 23 %; creates (POST) 6 %");
        assert_eq!(profile_shares(&Value::Null, "byRequest"), "–", "no profile taken");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands("10000"), "10,000");
        assert_eq!(thousands("1234567.89"), "1,234,567.89");
        assert_eq!(thousands("-999"), "-999");
    }

    #[test]
    fn markdown_survives_partial_runs() {
        let runs = vec![
            json!({"backend": "mongodb", "bindings": 1000, "bulk": {"allReadySeconds": 4.2, "complete": true}}),
            json!({"backend": "mongodb", "bindings": 10000, "error": "boom"}),
        ];
        let report = json!({"machine": {}, "config": {}, "runs": runs, "goals": goals(&runs), "command": "x"});
        let md = markdown(&report);
        assert!(md.contains("| mongodb × 1,000 |") && md.contains("4.2") && md.contains("boom"));
    }
}
