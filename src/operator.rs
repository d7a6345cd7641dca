//! `dbgrant run`: wire the client, caches, controllers, HTTP endpoints,
//! leader election and graceful shutdown together. The top of the
//! dependency graph: it uses every layer and nothing uses it but `main`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api,
    runtime::{
        Controller,
        reflector::{ObjectRef, Store},
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    MANAGER,
    api::{CosmosRoleBinding, CosmosRoleDefinition, CosmosTarget, MongoRoleBinding, MongoTarget},
    cli::RunArgs,
    cosmos::CosmosContext,
    mongo::{self, MongoContext},
    runtime::{
        context::Context,
        events::Publisher,
        http, leader,
        lifecycle::{self, BackendContext, Lifecycle},
        metrics::Metrics,
        telemetry,
        watch::{self, Relevance},
    },
};

/// How long a stopping leader waits for the apiserver to take its Lease
/// back; past it the Lease expires on its own.
const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the operator until SIGTERM/SIGINT or loss of leadership.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_filter)?;
    let client = crate::runtime::client::connect(args.kubeconfig.as_deref()).await?;
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
    let mut leadership = None;
    if args.leader_elect {
        // A follower is healthy and ready: it serves probes while it waits.
        health.set_ready(true);
        let acquired = tokio::select! {
            r = leader::acquire(client.clone(), &args.namespace, &args.lease_name, &identity, args.lease_duration) => Some(r?),
            _ = shutdown.cancelled() => None,
        };
        let Some(held) = acquired else { return finish(server).await };
        health.set_ready(false);
        leadership = Some(held);
    }
    metrics.leader.set(1);

    let shared = Arc::new(Context {
        client: client.clone(),
        namespace: args.namespace.clone(),
        events: Publisher::new(client.clone(), MANAGER, identity.clone()),
        metrics: metrics.clone(),
        health: health.clone(),
        resync: args.resync_interval,
        audit: Arc::new(
            crate::runtime::audit::Auditor::open(&args.audit_log)
                .map_err(|e| anyhow::anyhow!("opening the audit log {}: {e}", args.audit_log.display()))?,
        ),
        audit_events: args.audit_events,
        ensured: Default::default(),
    });

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
    let lost = async {
        match leadership.as_mut() {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(controllers);
    tokio::select! {
        _ = &mut controllers => {}
        _ = lost => {
            tracing::error!("lost leadership; stopping so a clean follower can take over");
            shutdown.cancel();
            controllers.await;
        }
    }
    tracing::info!("controllers stopped; shutting down");
    shutdown.cancel();
    // Only now, with no reconcile in flight, may the next leader start.
    if let Some(held) = leadership {
        held.release(LEASE_RELEASE_TIMEOUT).await;
    }
    finish(server).await
}

async fn finish(server: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    match server.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("http server task failed: {e}")),
    }
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

/// Run the controller `L` until `shutdown`, logging failed reconciles at
/// debug level (each reconcile reports its own errors in status and
/// Events).
async fn drive<K, C>(controller: Controller<K>, shutdown: CancellationToken, ctx: Arc<C>)
where
    K: crate::runtime::object::Managed,
    C: Lifecycle<K>,
{
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(lifecycle::reconcile::<K, C>, lifecycle::error_policy::<K, C>, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "{} controller event", K::kind(&()));
            }
        })
        .await
}

/// A controller over a stream from [`watch::cached`]: `concurrency`
/// reconciles at a time, and no pause of all its watches when one fails
/// (each backs off on its own; see [`watch::Unpaused`]).
fn controller<K>(
    stream: impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static,
    store: Store<K>,
    concurrency: u16,
) -> Controller<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    Controller::for_stream(stream, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .trigger_backoff(watch::Unpaused)
}

/// The bindings in `store` that `matches` selects, as reconcile requests.
fn bindings_where<K>(store: &Store<K>, matches: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.state().into_iter().filter(|b| matches(b)).map(|b| ObjectRef::from(b.as_ref())).collect()
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

    // Targets reconcile on spec, finalizer and deletion changes (and their
    // own periodic resync), never on the status they write themselves.
    let (target_store, target_stream) =
        watch::cached(targets.clone(), Relevance::SpecOrFinalizers, shared.metrics.clone());
    // Bindings reconcile on spec and deletion changes, and when their
    // target's spec or readiness changes.
    let (binding_store, binding_stream) = watch::cached(bindings, Relevance::Spec, shared.metrics.clone());
    // Bindings whose status another binding's sync changed.
    let (refresh, refreshes) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(MongoContext {
        shared: shared.clone(),
        targets: target_store.clone(),
        bindings: binding_store.clone(),
        index: Mutex::new(Default::default()),
        primed: Default::default(),
        connections: Default::default(),
        refresh,
        pending: Default::default(),
        showing_rejected: Default::default(),
    });
    let target_ctrl = controller(target_stream, target_store, concurrency);
    let store = binding_store.clone();
    let binding_ctrl = controller(binding_stream, binding_store, concurrency)
        .watches_stream(watch::triggers(targets, Relevance::SpecOrReadiness), move |t: MongoTarget| {
            let name = t.metadata.name.unwrap_or_default();
            bindings_where(&store, |b: &MongoRoleBinding| b.spec.target_ref.name == name)
        })
        .reconcile_on(refreshes);

    let prime_ctx = ctx.clone();
    tokio::spawn(async move {
        prime_ctx.prime().await;
        let _ = primed.send(());
    });

    tokio::join!(drive(target_ctrl, shutdown.clone(), ctx.clone()), drive(binding_ctrl, shutdown, ctx.clone()),);
    // Close the MongoDB clients before the runtime goes (see
    // mongo::connection::close).
    let open: Vec<_> = ctx.connections.lock().await.drain().map(|(_, c)| c).collect();
    for conn in open {
        mongo::connection::close(Some(conn)).await;
    }
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

    let (target_store, target_stream) =
        watch::cached(targets.clone(), Relevance::SpecOrFinalizers, shared.metrics.clone());
    let (definition_store, definition_stream) =
        watch::cached(definitions.clone(), Relevance::SpecOrFinalizers, shared.metrics.clone());
    let (binding_store, binding_stream) = watch::cached(bindings, Relevance::Spec, shared.metrics.clone());
    // Bindings that parked while a pass wrote to their account, woken by it.
    let (wake, wakes) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(
        CosmosContext::new(
            shared.clone(),
            target_store.clone(),
            binding_store.clone(),
            definition_store.clone(),
            Default::default(),
        )
        .waking(wake),
    );
    let target_ctrl = controller(target_stream, target_store, concurrency);

    // Bindings wake up when their target or role definition changes its
    // spec or readiness; definitions when their target does.
    let store = binding_store.clone();
    let by_definition = binding_store.clone();
    let binding_ctrl = controller(binding_stream, binding_store, concurrency)
        .watches_stream(watch::triggers(targets.clone(), Relevance::SpecOrReadiness), move |t: CosmosTarget| {
            let name = t.metadata.name.unwrap_or_default();
            bindings_where(&store, |b: &CosmosRoleBinding| b.spec.target_ref.name == name)
        })
        .watches_stream(watch::triggers(definitions, Relevance::SpecOrReadiness), move |d: CosmosRoleDefinition| {
            let name = d.metadata.name.unwrap_or_default();
            bindings_where(&by_definition, |b: &CosmosRoleBinding| {
                b.spec.target_ref.name == d.spec.target_ref.name
                    && b.spec.role_definition.name.as_deref() == Some(name.as_str())
            })
        })
        .reconcile_on(wakes);
    let store = definition_store.clone();
    let definition_ctrl = controller(definition_stream, definition_store, concurrency).watches_stream(
        watch::triggers(targets, Relevance::SpecOrReadiness),
        move |t: CosmosTarget| {
            let name = t.metadata.name.unwrap_or_default();
            bindings_where(&store, |d: &CosmosRoleDefinition| d.spec.target_ref.name == name)
        },
    );

    let prime_ctx = ctx.clone();
    tokio::spawn(async move {
        prime_ctx.prime().await;
        let _ = primed.send(());
    });

    tokio::join!(
        drive(target_ctrl, shutdown.clone(), ctx.clone()),
        drive(definition_ctrl, shutdown.clone(), ctx.clone()),
        drive(binding_ctrl, shutdown, ctx),
    );
}
