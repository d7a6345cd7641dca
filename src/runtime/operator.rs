//! `dbgrant run`: wire the client, caches, controllers, HTTP endpoints,
//! leader election and graceful shutdown together.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        Controller,
        events::{Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use tokio_util::sync::CancellationToken;

use super::{context::Context, http, leader, metrics::Metrics, telemetry};
use crate::{
    MANAGER,
    api::{CosmosRoleBinding, CosmosRoleDefinition, CosmosTarget, MongoRoleBinding, MongoTarget},
    cli::RunArgs,
    cosmos::{self, CosmosContext},
    mongo::{self, MongoContext},
};

/// Run the operator until SIGTERM/SIGINT or loss of leadership.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_filter)?;
    let client = client(&args).await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(http::Health::default());
    let shutdown = CancellationToken::new();

    let server = tokio::spawn(http::serve(args.metrics_addr, metrics.clone(), health.clone(), shutdown.clone()));
    spawn_signal_handler(shutdown.clone());

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("dbgrant-{}", std::process::id()));
    let mut lost_leadership = None;
    if args.leader_elect {
        // A follower is healthy and ready: it serves probes while it waits.
        health.set_ready(true);
        let acquired = tokio::select! {
            r = leader::acquire(client.clone(), &args.namespace, &args.lease_name, &identity, args.lease_duration) => Some(r?),
            _ = shutdown.cancelled() => None,
        };
        let Some((rx, _task)) = acquired else { return finish(server).await };
        health.set_ready(false);
        lost_leadership = Some(rx);
    }
    metrics.leader.set(1);

    let shared = Arc::new(Context {
        client: client.clone(),
        namespace: args.namespace.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: MANAGER.into(), instance: Some(identity.clone()) },
        ),
        metrics: metrics.clone(),
        health: health.clone(),
        resync: args.resync_interval,
    });

    if let Some(mut rx) = lost_leadership {
        let token = shutdown.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if !*rx.borrow() {
                    tracing::error!("lost leadership; stopping so a clean follower can take over");
                    token.cancel();
                    return;
                }
            }
        });
    }

    // Ready once both backends' caches are synced and their binding indexes
    // primed, so no reconcile acts on a partial view.
    let (mongo_primed, mongo_rx) = tokio::sync::oneshot::channel();
    let (cosmos_primed, cosmos_rx) = tokio::sync::oneshot::channel();
    let health = shared.health.clone();
    tokio::spawn(async move {
        if let (Ok(()), Ok(())) = tokio::join!(mongo_rx, cosmos_rx) {
            tracing::info!("caches synced and binding indexes primed; ready");
            health.set_ready(true);
        }
    });
    let controllers = futures::future::join(
        mongo_controllers(shared.clone(), args.concurrency, shutdown.clone(), mongo_primed),
        cosmos_controllers(shared.clone(), args.concurrency, shutdown.clone(), cosmos_primed),
    );
    tracing::info!(namespace = %args.namespace, "dbgrant started");
    controllers.await;
    tracing::info!("controllers stopped; shutting down");
    shutdown.cancel();
    finish(server).await
}

async fn finish(server: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    match server.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("http server task failed: {e}")),
    }
}

async fn client(args: &RunArgs) -> anyhow::Result<Client> {
    crate::install_crypto_provider();
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("no in-cluster config and no usable kubeconfig: {e}; pass --kubeconfig"))?,
    };
    Ok(Client::try_from(config)?)
}

fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; finishing in-flight reconciles"),
                _ = int.recv() => tracing::info!("SIGINT received; finishing in-flight reconciles"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

async fn mongo_controllers(
    shared: Arc<Context>,
    concurrency: u16,
    shutdown: CancellationToken,
    primed: tokio::sync::oneshot::Sender<()>,
) {
    let client = shared.client.clone();
    let targets: Api<MongoTarget> = Api::all(client.clone());
    let bindings: Api<MongoRoleBinding> = Api::all(client.clone());
    let config = kube::runtime::controller::Config::default().concurrency(concurrency);

    let target_ctrl = Controller::new(targets.clone(), watcher::Config::default()).with_config(config.clone());
    let binding_ctrl = Controller::new(bindings, watcher::Config::default()).with_config(config);
    let ctx = Arc::new(MongoContext {
        shared: shared.clone(),
        targets: target_ctrl.store(),
        bindings: binding_ctrl.store(),
        index: Mutex::new(Default::default()),
        primed: Default::default(),
        connections: Default::default(),
    });
    let binding_store = binding_ctrl.store();
    let binding_ctrl = binding_ctrl.watches(targets, watcher::Config::default(), move |t: MongoTarget| {
        let name = t.metadata.name.unwrap_or_default();
        binding_store
            .state()
            .into_iter()
            .filter(|b| b.spec.target_ref.name == name)
            .map(|b| ObjectRef::from(b.as_ref()))
            .collect::<Vec<_>>()
    });

    let ready_ctx = ctx.clone();
    tokio::spawn(async move {
        ready_ctx.prime().await;
        let _ = primed.send(());
    });

    let t = target_ctrl
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(mongo::target_controller::reconcile, mongo::target_controller::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "MongoTarget controller event");
            }
        });
    let b = binding_ctrl
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(mongo::binding_controller::reconcile, mongo::binding_controller::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "MongoRoleBinding controller event");
            }
        });
    tokio::join!(t, b);
}

async fn cosmos_controllers(
    shared: Arc<Context>,
    concurrency: u16,
    shutdown: CancellationToken,
    primed: tokio::sync::oneshot::Sender<()>,
) {
    let client = shared.client.clone();
    let targets: Api<CosmosTarget> = Api::all(client.clone());
    let definitions: Api<CosmosRoleDefinition> = Api::all(client.clone());
    let bindings: Api<CosmosRoleBinding> = Api::all(client.clone());
    let config = kube::runtime::controller::Config::default().concurrency(concurrency);

    let target_ctrl = Controller::new(targets.clone(), watcher::Config::default()).with_config(config.clone());
    let definition_ctrl = Controller::new(definitions.clone(), watcher::Config::default()).with_config(config.clone());
    let binding_ctrl = Controller::new(bindings, watcher::Config::default()).with_config(config);
    let ctx = Arc::new(CosmosContext::new(
        shared.clone(),
        target_ctrl.store(),
        binding_ctrl.store(),
        definition_ctrl.store(),
        Default::default(),
    ));

    // Bindings wake up when their target or role definition changes;
    // definitions when their target does.
    let store = binding_ctrl.store();
    let binding_ctrl = binding_ctrl.watches(targets.clone(), watcher::Config::default(), move |t: CosmosTarget| {
        let name = t.metadata.name.unwrap_or_default();
        store
            .state()
            .into_iter()
            .filter(|b| b.spec.target_ref.name == name)
            .map(|b| ObjectRef::from(b.as_ref()))
            .collect::<Vec<_>>()
    });
    let store = ctx.bindings.clone();
    let binding_ctrl = binding_ctrl.watches(definitions, watcher::Config::default(), move |d: CosmosRoleDefinition| {
        let name = d.metadata.name.unwrap_or_default();
        store
            .state()
            .into_iter()
            .filter(|b| {
                b.spec.target_ref.name == d.spec.target_ref.name
                    && b.spec.role_definition.name.as_deref() == Some(name.as_str())
            })
            .map(|b| ObjectRef::from(b.as_ref()))
            .collect::<Vec<_>>()
    });
    let store = definition_ctrl.store();
    let definition_ctrl = definition_ctrl.watches(targets, watcher::Config::default(), move |t: CosmosTarget| {
        let name = t.metadata.name.unwrap_or_default();
        store
            .state()
            .into_iter()
            .filter(|d| d.spec.target_ref.name == name)
            .map(|d| ObjectRef::from(d.as_ref()))
            .collect::<Vec<_>>()
    });

    let prime_ctx = ctx.clone();
    tokio::spawn(async move {
        prime_ctx.prime().await;
        let _ = primed.send(());
    });

    let t = target_ctrl
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(cosmos::target_controller::reconcile, cosmos::target_controller::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "CosmosTarget controller event");
            }
        });
    let d = definition_ctrl
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(cosmos::definition_controller::reconcile, cosmos::definition_controller::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "CosmosRoleDefinition controller event");
            }
        });
    let b = binding_ctrl
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(cosmos::binding_controller::reconcile, cosmos::binding_controller::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "CosmosRoleBinding controller event");
            }
        });
    tokio::join!(t, d, b);
}
