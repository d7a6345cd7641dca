//! The operator authenticates as a pod does: with a bound ServiceAccount
//! token from the TokenRequest API, in a file its kubeconfig names, replaced
//! before it expires (the control plane plays the kubelet). The operator
//! must pick each new token up without restarting: here the tokens rotate
//! every few seconds, and once the operator has run past kube's re-read
//! interval the token it started with is revoked (its bound object
//! deleted, as a pod's deletion revokes the pod's tokens). The apiserver
//! then refuses that token, and the operator carries on unaffected.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use base64::Engine;
use dbgrant_harness::{
    Cluster, DumpOnFailure, Operator,
    controlplane::{self, ControlPlane},
    operator::Options,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::DeleteParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;

use crate::common::{mongo_double, operator_lock};
use crate::faults_common::{no_panics, seed, summary};
use crate::faults_mongo_model::{Churn, settle, target_doc, targets};

/// How often the control plane replaces the operator's token here.
const REFRESH: Duration = Duration::from_secs(8);
/// kube re-reads a token file once its copy is 50–60 s old, at the next
/// request (kube-client `TokenFile`); past this, the operator has.
const REREAD: Duration = Duration::from_secs(65);

/// The claims of a JWT (not verified: the apiserver does that).
fn claims(token: &str) -> Result<Value> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// What the apiserver answers to `token` on an authenticated request:
/// `Ok(())` when it is accepted, the HTTP status otherwise.
async fn try_token(kubeconfig: &Path, token: &str) -> Result<std::result::Result<(), u16>> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.auth_info.token_file = None;
    config.auth_info.token = Some(token.to_string().into());
    let api: Api<Secret> = Api::namespaced(kube::Client::try_from(config)?, "default");
    match api.list(&Default::default()).await {
        // authenticated; the operator may not list Secrets there (403)
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(Ok(())),
        Err(kube::Error::Api(s)) => Ok(Err(s.code)),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_follows_its_refreshed_service_account_token() -> Result<()> {
    let _lock = operator_lock().await;
    let cp = tokio::task::spawn_blocking(|| {
        ControlPlane::start_with_options(controlplane::Options {
            operator_token_refresh: Some(REFRESH),
            ..Default::default()
        })
    })
    .await??;
    let cluster = Cluster::connect(&cp.info).await?;
    cluster.install().await?;
    let ns = cluster.namespace("tokens").await?;
    let mut dump = DumpOnFailure::new(&cluster, &[&ns.name]);
    let token_file = cp.info.operator_token_file.clone();

    // The kubeconfig names the file and holds no token of its own.
    let kubeconfig = std::fs::read_to_string(&cluster.operator_kubeconfig)?;
    assert!(kubeconfig.contains("tokenFile:") && !kubeconfig.contains("token:"), "{kubeconfig}");
    // The token is a bound ServiceAccount token of the operator's identity.
    let first = std::fs::read_to_string(&token_file)?;
    let c = claims(&first)?;
    assert_eq!(c["sub"], format!("system:serviceaccount:{}:dbgrant", cluster.operator_namespace), "{c}");
    let holder = c["kubernetes.io"]["secret"]["name"].as_str().context("token not bound to a Secret")?.to_string();
    assert_eq!(c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0), 3600, "{c}");

    let double = mongo_double().await?;
    let (docs, infos) = targets(&[("token-target", "tk", double.uri())], &cluster.operator_namespace, &ns.name);
    let mut op = Operator::start(&cluster, Options::new(env!("CARGO_BIN_EXE_dbgrant"), "tokens")).await?;
    dump.log(op.log.clone());
    let started = Instant::now();
    // The token the operator read at start: the file's content then (both,
    // if a refresh fell in between).
    let mut read_at_start = vec![(first.clone(), holder)];
    let now = std::fs::read_to_string(&token_file)?;
    if now != first {
        let h = claims(&now)?["kubernetes.io"]["secret"]["name"].as_str().unwrap_or_default().to_string();
        read_at_start.push((now, h));
    }
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.wait_condition(&target_doc(&infos[0].name), None, "Ready", "True", None, Duration::from_secs(30)).await?;

    // Keep the operator busy past its re-read: every change is requests.
    let mut churn = Churn::new(&cluster, &ns.name, infos, seed() ^ 0x70c3);
    let ops = churn.steps_for(REREAD.saturating_sub(started.elapsed()), (2000, 4000)).await?;
    settle(&churn, &[&double], Duration::from_secs(60)).await?;
    let current = std::fs::read_to_string(&token_file)?;
    if read_at_start.iter().any(|(t, _)| *t == current) {
        bail!("the control plane did not replace the operator's token in {:?}", started.elapsed());
    }

    // Revoke the tokens the operator started with.
    for (token, _) in &read_at_start {
        assert_eq!(try_token(&cluster.operator_kubeconfig, token).await?, Ok(()), "before revocation");
    }
    let secrets: Api<Secret> = Api::namespaced(cluster.admin.clone(), &cluster.operator_namespace);
    for (_, holder) in &read_at_start {
        secrets.delete(holder, &DeleteParams::default()).await?;
    }
    let revoked_at = Instant::now();
    for (token, _) in &read_at_start {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match try_token(&cluster.operator_kubeconfig, token).await? {
                Err(401) => break,
                other if Instant::now() > deadline => bail!("a revoked token still answers {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let refused_after = revoked_at.elapsed();
    let log_before = op.log_text().len();

    // The operator carries on with the token it re-read.
    churn.steps(6, (100, 300)).await?;
    let converged = settle(&churn, &[&double], Duration::from_secs(60)).await?;
    let log = op.log_text();
    let after = &log[log_before..];
    if after.contains("401") || after.contains("Unauthorized") {
        bail!("the operator used a revoked token:\n{}", op.log_tail(40));
    }
    assert!(op.is_running(), "the operator exited:\n{}", op.log_tail(60));
    no_panics(&op)?;
    summary(&format!(
        "service-account token: rotated every {}s, operator ran {:.0}s ({ops} changes), the {} token(s) it started \
         with revoked and refused (401) within {:.1}s; 6 changes after converged in {:.1}s with no 401",
        REFRESH.as_secs(),
        revoked_at.duration_since(started).as_secs_f64(),
        read_at_start.len(),
        refused_after.as_secs_f64(),
        converged.as_secs_f64(),
    ));
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    drop(cp);
    Ok(())
}
