//! The control plane restarts under the operator, for real: etcd and the
//! apiserver stop and come back on the same data, certificates, tokens and
//! port (`controlplane --keep-data`), once in the middle of a burst of
//! MongoRoleBinding changes and once with a binding deleted that the
//! operator had not seen before the apiserver went away. The operator rides
//! through: every binding converges, nothing is lost, no write is applied
//! twice, and it never exits.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use dbgrant_harness::{
    Cluster, DumpOnFailure, Operator,
    controlplane::{self, ControlPlane},
    operator::Options,
};

use crate::common::{mongo_double, operator_lock};
use crate::faults_common::{env_u64, no_panics, seed, summary};
use crate::faults_mongo_model::{Churn, assert_quiet, duplicate_creates, repeated_writes, settle, target_doc, targets};

/// How long changes made after the control plane is back may take to
/// converge: the watches' 410 and relist, each within a 4 s retry, with
/// room for a slow shared machine; a minute would hide the old backoff.
const AFTER_RETURN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_restarts_mid_churn_and_after_an_unseen_deletion() -> Result<()> {
    let _lock = operator_lock().await;
    let seed = seed();
    let down_for = Duration::from_secs(env_u64("DBGRANT_FAULT_RESTART_DOWN_SECS", 10));
    // A private control plane that can restart on its own data.
    let mut cp = tokio::task::spawn_blocking(|| {
        ControlPlane::start_with_options(controlplane::Options { restartable: true, ..Default::default() })
    })
    .await??;
    let cluster = Cluster::connect(&cp.info).await?;
    cluster.install().await?;
    let ns = cluster.namespace("restart").await?;
    let mut dump = DumpOnFailure::new(&cluster, &[&ns.name]);

    let double = mongo_double().await?;
    let (docs, infos) = targets(&[("restart-target", "rs", double.uri())], &cluster.operator_namespace, &ns.name);
    let mut options = Options::new(env!("CARGO_BIN_EXE_dbgrant"), "restarts");
    options.resync = Duration::from_secs(60);
    let mut op = Operator::start(&cluster, options).await?;
    dump.log(op.log.clone());
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.wait_condition(&target_doc(&infos[0].name), None, "Ready", "True", None, Duration::from_secs(30)).await?;
    let mut churn = Churn::new(&cluster, &ns.name, infos.clone(), seed ^ 0x5e57);
    churn.steps(10, (20, 80)).await?;
    settle(&churn, &[&double], Duration::from_secs(60)).await?;

    // 1. Mid-churn: a burst of changes, and the control plane stops as
    //    soon as the apiserver has accepted the last one, before the
    //    operator can have finished them.
    let burst = 8;
    churn.steps(burst, (0, 20)).await?;
    let writes_before_stop = double.counters().writes;
    let began = Instant::now();
    tokio::task::block_in_place(|| cp.restart(|| std::thread::sleep(down_for)))?;
    let restart_took = began.elapsed();
    settle(&churn, &[&double], Duration::from_secs(120)).await?;
    let mid_churn_converged = began.elapsed();
    // Changes made once the apiserver is back are seen within a bound,
    // however long it was away: every watch resumed from a resourceVersion
    // the new watch cache no longer has (410) and must list again, and it
    // retries within `runtime::watch::RETRY_MAX` (4 s) where kube-runtime's
    // default backoff, grown through the outage, waited up to a minute.
    let back = Instant::now();
    churn.steps(6, (50, 150)).await?;
    settle(&churn, &[&double], AFTER_RETURN)
        .await
        .context("changes made after the control plane came back were not seen in time (watches still backing off?)")?;
    let after_return_converged = back.elapsed();
    assert!(op.is_running(), "the operator exited over the restart:\n{}", op.log_tail(60));

    // 2. A deletion the operator has not seen: it is frozen when the binding
    //    is deleted (the finalizer holds it), the control plane goes down,
    //    the operator resumes against no apiserver, the control plane comes
    //    back. The operator's watches resume from the resourceVersions they
    //    had (the data is the same), see the deletion, revoke, release.
    let before: BTreeSet<String> = churn.deleted.clone();
    op.freeze(true);
    let deleted = loop {
        churn.delete().await?;
        if let Some(d) = churn.deleted.difference(&before).next() {
            break d.clone();
        }
        churn.create().await?;
    };
    let writes_frozen = double.counters().writes;
    tokio::task::block_in_place(|| {
        cp.restart(|| {
            op.freeze(false);
            std::thread::sleep(down_for);
        })
    })?;
    let after_unseen = settle(&churn, &[&double], Duration::from_secs(120)).await?;
    let writes_after_unseen = double.counters().writes - writes_frozen;

    assert!(op.is_running(), "the operator exited:\n{}", op.log_tail(60));
    no_panics(&op)?;
    let dups = duplicate_creates(&double);
    assert!(dups.is_empty(), "{dups:?}");
    let repeated = repeated_writes(&double);
    assert!(repeated.is_empty(), "{repeated:?}");
    assert_quiet(&[&double], Duration::from_secs(3)).await?;
    summary(&format!(
        "control-plane restart: seed={seed:#x} down {}s each time; {burst} changes then restart mid-churn \
         (backend writes before the stop={writes_before_stop}; stop+down+start {:.1}s) converged {:.1}s after the \
         stop began; 6 changes made once it was back converged in {:.1}s; binding {deleted} deleted while the operator was frozen, control plane restarted, revoked \
         and released {:.1}s after it came back ({writes_after_unseen} backend writes); total ops={}; \
         no write applied twice, operator never exited",
        down_for.as_secs(),
        restart_took.as_secs_f64(),
        mid_churn_converged.as_secs_f64(),
        after_return_converged.as_secs_f64(),
        after_unseen.as_secs_f64(),
        churn.ops.total(),
    ));
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    drop(cp);
    Ok(())
}
