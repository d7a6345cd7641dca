//! The Azure Cosmos DB backend: a typed ARM client (on the shared Azure
//! transport and Entra credentials of [`crate::azure`]), the account sync, and the controllers for `CosmosTarget`,
//! `CosmosRoleDefinition` and `CosmosRoleBinding`.
//!
//! ```text
//!  CosmosRoleBinding ─┐                      ┌─ LIST definitions ┐
//!  CosmosRoleDefinition ─▶ index ─▶ Desired ─┤                   ├─▶ plan ─▶ writes
//!  CosmosTarget (resync) ─┘   (per account)  └─ LIST assignments ┘   (one account lock)
//! ```
//!
//! Every controller converges an account the same way: build the desired
//! state from the binding index and the CosmosRoleDefinitions, read the two
//! LISTs, plan, write — under the account's lock, so writes to one account
//! never race (ARM holds one exclusive lock per account and answers 412).
//! A change bumps the account's change counter; a reconcile that finds a
//! newer sync already covered its change reuses that sync's report instead
//! of reading again.

pub mod arm;
pub mod binding_controller;
pub mod binding_status;
pub mod cloud;
pub mod definition_controller;
pub mod parking;
pub mod sync;
pub mod target_controller;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use secrecy::SecretString;
use tokio::sync::OnceCell;

use self::{
    arm::{
        ArmApi, ArmClient, ArmError, ArmSettings,
        pacing::{Buckets, Quota},
    },
    sync::{AccountState, SharedReport},
};
use crate::{
    Error, Result,
    api::{
        CosmosRoleBinding, CosmosRoleDefinition, CosmosScope, CosmosTarget, CosmosTargetSpec, SecretKeyRef, TargetMode,
    },
    azure::{self, credential as azure_credential},
    plan::{
        cosmos::{AccountRef, AssignmentKey, CosmosGrant, DefinitionSpec, Desired, Limits, RoleKey},
        index::BindingIndex,
    },
    runtime::{
        audit,
        cache::wait_ready,
        context::Context,
        lifecycle::{self, BackendContext},
        object::key,
        secrets, status,
    },
};

/// Backend label for metrics and errors.
pub const BACKEND: &str = "cosmosdb";

pub use crate::api::RELEASED_ANNOTATION;

/// Tunables of the Cosmos backend.
#[derive(Clone, Debug, Default)]
pub struct CosmosSettings {
    /// ARM client settings (the api-version comes from each target).
    pub arm: ArmSettings,
    /// Account limits.
    pub limits: Limits,
}

/// One account: its client and what survives between syncs. The state's
/// mutex is the account's write lock.
pub struct AccountHandle {
    pub account: AccountRef,
    client: Mutex<Option<(String, Arc<dyn ArmApi>)>>,
    /// Write lock and state between syncs.
    pub state: tokio::sync::Mutex<AccountState>,
    /// Change counter value the last report covers, and the report.
    last: Mutex<Option<(u64, SharedReport)>>,
    /// The released list as last written (None: read the annotation).
    released: Mutex<Option<BTreeSet<String>>>,
    /// The pass in flight as far as it has gone, with the change counter
    /// it covers (None between passes): bindings waiting for the account
    /// read it to say Ready as soon as their assignments are in place.
    progress: tokio::sync::watch::Sender<Option<(u64, SharedReport)>>,
    /// Bindings waiting for a pass on this account (see [`parking`]).
    lot: Mutex<parking::Lot>,
    /// Callers waiting for the write lock (parked bindings do not count): a
    /// long pass gives way to them (see [`sync::YIELD_AFTER`]).
    waiting: std::sync::atomic::AtomicUsize,
}

impl AccountHandle {
    fn new(account: AccountRef) -> Self {
        Self {
            account,
            client: Mutex::new(None),
            state: Default::default(),
            last: Mutex::new(None),
            released: Mutex::new(None),
            progress: tokio::sync::watch::Sender::new(None),
            lot: Mutex::new(parking::Lot::default()),
            waiting: Default::default(),
        }
    }

    /// `e` from the account as the controllers' error; after an
    /// authentication failure the client is forgotten, so Secrets are read
    /// again.
    pub fn failed(&self, target: String, e: ArmError) -> Error {
        if matches!(e, ArmError::Credential(_) | ArmError::Unauthorized { .. }) {
            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Error::Azure { target, source: e }
    }

    /// Names dbgrant released on this account: what it last wrote, else
    /// the target's annotation.
    pub fn released(&self, target: &CosmosTarget) -> BTreeSet<String> {
        if let Some(r) = self.released.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return r.clone();
        }
        let names =
            target.annotations().get(RELEASED_ANNOTATION).map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()));
        names.into_iter().flatten().filter(|n| !n.is_empty()).collect()
    }
}

/// State shared by the Cosmos controllers.
pub struct CosmosContext {
    /// Shared runtime context.
    pub shared: Arc<Context>,
    /// Targets, from the target controller's cache.
    pub targets: Store<CosmosTarget>,
    /// Bindings, from the binding controller's cache.
    pub bindings: Store<CosmosRoleBinding>,
    /// Role definitions, from the definition controller's cache.
    pub definitions: Store<CosmosRoleDefinition>,
    /// Live bindings by (target, subject).
    pub index: Mutex<BindingIndex<CosmosGrant>>,
    /// Set once the index holds every binding that existed at start-up.
    pub primed: OnceCell<()>,
    /// Tunables.
    pub settings: CosmosSettings,
    accounts: Mutex<HashMap<String, Arc<AccountHandle>>>,
    changes: Mutex<HashMap<String, u64>>,
    /// Notified on every change (see [`sync::Progress::changes`]).
    changed: tokio::sync::Notify,
    /// Wakes a parked binding's reconcile (None: nothing parks).
    wake: Option<futures::channel::mpsc::UnboundedSender<ObjectRef<CosmosRoleBinding>>>,
    /// The report each woken binding was woken with, by key.
    woken: Mutex<HashMap<String, SharedReport>>,
    /// ARM request buckets, per (subscription, identity, reads or writes), shared by the
    /// accounts' clients (see [`arm::pacing`]).
    buckets: Buckets,
}

/// How a sync may be satisfied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// A sync that started after this caller's change is good enough.
    Coalesce,
    /// Read the account again (periodic resync, drift detection).
    Fresh,
}

impl CosmosContext {
    /// A context over the controllers' caches.
    pub fn new(
        shared: Arc<Context>,
        targets: Store<CosmosTarget>,
        bindings: Store<CosmosRoleBinding>,
        definitions: Store<CosmosRoleDefinition>,
        settings: CosmosSettings,
    ) -> Self {
        Self {
            shared,
            targets,
            bindings,
            definitions,
            index: Mutex::new(BindingIndex::default()),
            primed: OnceCell::new(),
            settings,
            accounts: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            wake: None,
            woken: Mutex::new(HashMap::new()),
            buckets: Buckets::default(),
        }
    }

    /// Bindings park instead of waiting in their reconciles, and are woken
    /// through `wake` (the binding controller's `reconcile_on`).
    pub fn waking(mut self, wake: futures::channel::mpsc::UnboundedSender<ObjectRef<CosmosRoleBinding>>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// The target called `name`, from the cache.
    pub fn target(&self, name: &str) -> Option<Arc<CosmosTarget>> {
        self.targets.get(&ObjectRef::new(name))
    }

    /// The CosmosRoleDefinition a binding names, from the cache.
    pub fn definition_of(&self, b: &CosmosRoleBinding) -> Option<Arc<CosmosRoleDefinition>> {
        b.spec.role_definition.name.as_ref().and_then(|n| self.definitions.get(&ObjectRef::new(n)))
    }

    /// Record that what `target` should hold changed; returns the new
    /// change number.
    pub fn bump(&self, target: &str) -> u64 {
        let mut c = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(target.to_string()).or_default();
        *n += 1;
        let n = *n;
        drop(c);
        self.changed.notify_waiters();
        n
    }

    fn change(&self, target: &str) -> u64 {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).get(target).copied().unwrap_or_default()
    }

    /// The handle of `target`'s account (created on first use; replaced
    /// when the target now names another account).
    pub fn handle(&self, target: &CosmosTarget) -> Arc<AccountHandle> {
        let account = account_of(target);
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = accounts.entry(target.name_any()).or_insert_with(|| Arc::new(AccountHandle::new(account.clone())));
        if entry.account != account {
            *entry = Arc::new(AccountHandle::new(account));
        }
        entry.clone()
    }

    /// The client for `target`, reading its Secrets and building the
    /// credential when the target or its Secrets changed (or `refresh`).
    pub async fn client(&self, target: &CosmosTarget, refresh: bool) -> Result<Arc<dyn ArmApi>> {
        let handle = self.handle(target);
        if !refresh && let Some((_, c)) = handle.client.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let name = target.name_any();
        let spec = &target.spec;
        let ns = &self.shared.namespace;
        let client_ref = &self.shared.client;
        let mut fingerprint = format!("{:?}", target.metadata.generation);
        // Each Secret read goes into the fingerprint by its resourceVersion.
        let mut read = async |r: &SecretKeyRef| -> Result<SecretString> {
            let s = secrets::read(client_ref, ns, &r.name).await?;
            fingerprint.push_str(&format!("/{}", s.metadata.resource_version.clone().unwrap_or_default()));
            secrets::key(&s, ns, &r.name, &r.key)
        };
        let ca = match spec.cloud.as_ref().and_then(|c| c.ca_secret_ref.as_ref()) {
            Some(r) => Some(read(r).await?),
            None => None,
        };
        let material = match (&spec.credential.client_secret, &spec.credential.client_certificate) {
            (Some(c), _) => azure_credential::Material::ClientSecret(read(&c.secret_ref).await?),
            (None, Some(c)) => azure_credential::Material::Certificate(read(&c.certificate_secret_ref).await?),
            (None, None) if spec.credential.managed_identity.is_some() => azure_credential::Material::Managed,
            (None, None) => azure_credential::Material::Workload,
        };
        if let Some((fp, c)) = handle.client.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && *fp == fingerprint
        {
            return Ok(c.clone());
        }
        let cloud = cloud::cloud(spec, std::env::var("AZURE_AUTHORITY_HOST").ok());
        let config_error = |m: String| Error::Azure { target: name.clone(), source: ArmError::Credential(m) };
        let transport = azure::transport::transport(ca.as_ref().map(secrecy::ExposeSecret::expose_secret))
            .map_err(|m| config_error(format!("cloud.caSecretRef: {m}")))?;
        let env = |k: &str| std::env::var(k).ok();
        let cred = azure_credential::build(&spec.credential, material, &cloud.authority_host, transport.clone(), env)
            .map_err(config_error)?;
        let identity = identity_of(spec);
        let settings = ArmSettings {
            api_version: cloud.api_version.clone(),
            write_bucket: Some(self.buckets.of(&spec.subscription_id, &identity, Quota::Writes)),
            read_bucket: Some(self.buckets.of(&spec.subscription_id, &identity, Quota::Reads)),
            ..self.settings.arm.clone()
        };
        let client =
            ArmClient::new(cred, transport, &cloud.arm_endpoint, &cloud.audience, account_of(target), settings)
                .map_err(|e| Error::Azure { target: name.clone(), source: e })?;
        let client: Arc<dyn ArmApi> = Arc::new(client);
        *handle.client.lock().unwrap_or_else(|p| p.into_inner()) = Some((fingerprint, client.clone()));
        Ok(client)
    }

    /// Everything dbgrant wants on `target`'s account now. `previous` is
    /// the record in the objects' statuses of what is in place (the
    /// account sync replaces it with its own once it has observed the
    /// account), so drift that happened while the operator was down is
    /// still told apart from a first application.
    pub fn desired(&self, target: &str) -> Desired {
        let mut d = Desired { known_roles: RoleKey::built_ins().into_iter().collect(), ..Default::default() };
        let account = self.target(target).map(|t| account_of(&t));
        for def in self.definitions.state() {
            if def.spec.target_ref.name != target {
                continue;
            }
            let name = def.name_any();
            let spec = definition_spec(&def.spec.role_name, &def.spec.data_actions, &def.spec.assignable_scopes);
            if let (Some(account), Some(st)) = (&account, &def.status)
                && st.role_definition_id.is_some()
                && st.observed_generation == def.metadata.generation
                && crate::api::conditions::ready(&st.conditions).is_some_and(|c| c.status == "True")
            {
                d.previous.definitions.insert(account.definition_name(&name), spec.clone());
            }
            d.known_definitions.insert(name.clone());
            d.known_roles.insert(RoleKey::Custom(name.clone()));
            if def.metadata.deletion_timestamp.is_none() {
                d.definitions.insert(name, spec);
            }
        }
        let mut priority: Vec<(Option<jiff::Timestamp>, String)> = Vec::new();
        for b in self.bindings.state() {
            if b.spec.target_ref.name != target {
                continue;
            }
            if let Some(n) = &b.spec.role_definition.name {
                d.known_roles.insert(RoleKey::Custom(n.clone()));
            }
            let recorded = b.status.iter().flat_map(|s| &s.assignments).filter(|a| a.ownership == "Managed");
            d.previous.assignments.extend(recorded.map(|a| a.name.to_ascii_lowercase()));
            priority.push((b.metadata.creation_timestamp.as_ref().map(|t| t.0), key(&*b)));
        }
        priority.sort();
        d.binding_priority = priority.into_iter().map(|(_, k)| k).collect();
        {
            let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
            // A binding that vanished without its revocation running (its
            // finalizer removed by hand) must not keep its assignments.
            let gone = idx.forget_vanished(target, |ns, name| {
                self.bindings.get(&kube::runtime::reflector::ObjectRef::new(name).within(ns)).is_some()
            });
            if gone > 0 {
                tracing::warn!(target = %target, bindings = gone, "forgot bindings that vanished without revocation");
            }
            for key in idx.bindings_on(target) {
                if let Some(c) = idx.get(key) {
                    d.add(key, c.subjects.iter().map(|s| s.id.clone()), &c.grant);
                }
            }
        }
        // A stale index entry may still name a role whose
        // CosmosRoleDefinition is gone or going: not wanted any more.
        d.assignments.retain(|k, _| match &k.role {
            RoleKey::Custom(n) => d.definitions.contains_key(n),
            RoleKey::BuiltIn(_) => true,
        });
        d
    }

    /// Converge `target`'s account. `release` lists assignments to release
    /// (`deletionPolicy: Retain`): recorded on the target before anything
    /// else, then left in place and never managed again.
    /// The pass runs for `trigger`'s reconcile: its writes are audited as
    /// `trigger`'s, and listed in one Event on it.
    ///
    /// `enough`, for a caller that only needs its grants in place: while
    /// another pass that covers the caller's change runs, its partial
    /// report (see [`sync::SyncReport::partial`]) is returned as soon as
    /// `enough` holds for it, instead of after the whole pass.
    pub async fn sync<K: kube::Resource<DynamicType = ()>>(
        &self,
        trigger: &K,
        target: &CosmosTarget,
        release: BTreeSet<AssignmentKey>,
        freshness: Freshness,
        enough: Option<&(dyn Fn(&sync::SyncReport) -> bool + Sync)>,
    ) -> Result<SharedReport> {
        let wanted = self.change(&target.name_any());
        let handle = self.handle(target);
        let client = self.client(target, false).await?;
        let _waiting = Waiting::on(&handle);
        let state = match enough.filter(|_| freshness == Freshness::Coalesce && release.is_empty()) {
            None => handle.state.lock().await,
            Some(enough) => {
                let shows = |p: &Option<(u64, SharedReport)>| {
                    p.as_ref().filter(|(covered, r)| *covered >= wanted && enough(r)).map(|(_, r)| r.clone())
                };
                let mut progress = handle.progress.subscribe();
                if let Some(r) = shows(&progress.borrow_and_update()) {
                    return Ok(r);
                }
                let lock = handle.state.lock();
                tokio::pin!(lock);
                loop {
                    tokio::select! {
                        biased;
                        state = &mut lock => break state,
                        Ok(()) = progress.changed() => {
                            if let Some(r) = shows(&progress.borrow_and_update()) {
                                return Ok(r);
                            }
                        }
                    }
                }
            }
        };
        drop(_waiting);
        self.pass(state, &handle, client, trigger, target, release, freshness, enough.is_some(), wanted).await
    }

    /// A binding's sync when all it needs is its grants in place: the
    /// report that shows them if one does, else the pass it runs itself if
    /// the account is free; else it parks (see [`parking`]) and None is
    /// returned: its reconcile is woken when a pass has its answer. Without
    /// a wake channel (previews) it waits like [`Self::sync`].
    pub async fn grant_or_park(
        &self,
        b: &CosmosRoleBinding,
        target: &CosmosTarget,
        own: &BTreeSet<AssignmentKey>,
    ) -> Result<Option<SharedReport>> {
        let key = key(b);
        let granted = |r: &sync::SyncReport| binding_status::outcome_from(r, &key, own, target).0.ready;
        let Some(_) = &self.wake else {
            let report = self.sync(b, target, BTreeSet::new(), Freshness::Coalesce, Some(&granted)).await?;
            return Ok(Some(report));
        };
        let wanted = self.change(&target.name_any());
        let handle = self.handle(target);
        let client = self.client(target, false).await?;
        // A report that shows its assignments in place answers it, whichever
        // change it was planned for (see `parking::Parked`).
        let progress = handle.progress.borrow().clone();
        if let Some((_, r)) = progress.filter(|(_, r)| granted(r)) {
            return Ok(Some(r));
        }
        let state = {
            let mut lot = handle.lot.lock().unwrap_or_else(|p| p.into_inner());
            match handle.state.try_lock() {
                Ok(state) => {
                    lot.leave(&key);
                    state
                }
                Err(_) => {
                    let binding = ObjectRef::from_obj(b);
                    // The cached object, shared, not a copy per parked binding.
                    let target = self.target(&target.name_any()).unwrap_or_else(|| Arc::new(target.clone()));
                    lot.park(parking::Parked { binding, key, wanted, own: own.iter().cloned().collect(), target });
                    return Ok(None);
                }
            }
        };
        let report =
            self.pass(state, &handle, client, b, target, BTreeSet::new(), Freshness::Coalesce, true, wanted).await?;
        Ok(Some(report))
    }

    /// The report a parked binding was woken with, once (see [`parking`]).
    pub fn woken(&self, key: &str) -> Option<SharedReport> {
        self.woken.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }

    /// A binding that will not wait any more (it is being deleted): out of
    /// its account's parking lot, and its wake report dropped.
    pub fn unpark(&self, target: &CosmosTarget, key: &str) {
        self.handle(target).lot.lock().unwrap_or_else(|p| p.into_inner()).leave(key);
        self.woken(key);
    }

    fn wake(&self, wakes: Vec<parking::Wake>) {
        let Some(tx) = &self.wake else { return };
        for (parked, report) in wakes {
            if let Some(report) = report {
                self.woken.lock().unwrap_or_else(|p| p.into_inner()).insert(parked.key.clone(), report);
            }
            let _ = tx.unbounded_send(parked.binding);
        }
    }

    /// One pass over the account, holding its lock (`state`); the lock is
    /// released, and the bindings parked behind it woken, before it
    /// returns.
    #[allow(clippy::too_many_arguments)]
    async fn pass<K: kube::Resource<DynamicType = ()>>(
        &self,
        mut state: tokio::sync::MutexGuard<'_, AccountState>,
        handle: &AccountHandle,
        client: Arc<dyn ArmApi>,
        trigger: &K,
        target: &CosmosTarget,
        release: BTreeSet<AssignmentKey>,
        freshness: Freshness,
        partial_will_do: bool,
        wanted: u64,
    ) -> Result<SharedReport> {
        let name = target.name_any();
        let audit_trigger = audit::Trigger::of(trigger);
        let audit = audit::Scope::new(&self.shared.audit, BACKEND, &name, &audit_trigger);
        let result = self
            .pass_locked(&mut state, handle, client, target, release, freshness, partial_will_do, wanted, &audit)
            .await;
        {
            // The lock is released with the parking lot held, so no binding
            // parks behind a pass that has already woken its lot.
            let mut lot = handle.lot.lock().unwrap_or_else(|p| p.into_inner());
            drop(state);
            let last = handle.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let wakes = match (&result, last) {
                (Ok(_), Some((covered, report))) => lot.pass_ended(covered, Some(&report)),
                _ => lot.pass_ended(0, None),
            };
            drop(lot);
            self.wake(wakes);
        }
        // The Event listing the pass's writes is the apiserver's business,
        // not the account's: the next pass need not wait for it.
        status::publish_writes(&self.shared, trigger, &audit.summaries()).await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn pass_locked(
        &self,
        state: &mut AccountState,
        handle: &AccountHandle,
        client: Arc<dyn ArmApi>,
        target: &CosmosTarget,
        release: BTreeSet<AssignmentKey>,
        freshness: Freshness,
        partial_will_do: bool,
        wanted: u64,
        audit: &audit::Scope<'_>,
    ) -> Result<SharedReport> {
        let name = target.name_any();
        if freshness == Freshness::Coalesce
            && release.is_empty()
            && let Some((covered, report)) = handle.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && *covered >= wanted
            && report.stopped.is_none()
        {
            return Ok(report.clone());
        }
        if !release.is_empty() {
            let names = release.iter().map(|k| handle.account.assignment_name(&k.principal_id, &k.scope, &k.role));
            self.record_released(target, handle, names.collect(), BTreeSet::new()).await?;
        }
        let covered = self.change(&name);
        let mut desired = self.desired(&name);
        desired.released = handle.released(target);
        let observe = target.spec.mode == TargetMode::Observe;
        let watched =
            || handle.progress.receiver_count() > 0 || !handle.lot.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        let publish = |covers: u64, partial: sync::SyncReport| {
            let partial = Arc::new(partial);
            handle.progress.send_replace(Some((covers, partial.clone())));
            let wakes = handle.lot.lock().unwrap_or_else(|p| p.into_inner()).granted(&partial);
            self.wake(wakes);
        };
        // Changes made while the pass writes are taken on by a pass that
        // only has to coalesce, for a caller content with a partial report:
        // one asked to read the account afresh, or to release, or waiting
        // to see a revocation confirmed gets the pass's own report at once.
        let newer = |since: u64| {
            let now = self.change(&name);
            (now > since).then(|| {
                let mut desired = self.desired(&name);
                desired.released = handle.released(target);
                (now, desired)
            })
        };
        let coalesce = freshness == Freshness::Coalesce && release.is_empty() && partial_will_do;
        let progress = sync::Progress {
            covers: covered,
            watched: &watched,
            publish: &publish,
            newer: coalesce.then_some(&newer as &(dyn Fn(u64) -> Option<(u64, Desired)> + Sync)),
            take_on_for: sync::TAKE_ON_FOR,
            changes: Some(&self.changed),
            contended: &|| handle.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0,
        };
        let result = sync::sync(
            client.as_ref(),
            state,
            desired,
            &self.settings.limits,
            &self.shared.metrics,
            audit,
            observe,
            &name,
            (!observe).then_some(&progress),
        )
        .await;
        handle.progress.send_replace(None);
        let report = result.map_err(|e| handle.failed(name, e))?;
        if !report.plan.stale_released.is_empty() {
            let stale = report.plan.stale_released.iter().cloned().collect();
            self.record_released(target, handle, BTreeSet::new(), stale).await?;
        }
        // Recorded under the account's lock, so the last report is always
        // the newest.
        let covered = report.covers.max(covered);
        let report: SharedReport = Arc::new(report);
        *handle.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((covered, report.clone()));
        Ok(report)
    }

    /// Add and remove names on the target's released list (an annotation,
    /// so it survives restarts and is visible to people). The caller holds
    /// the account's write lock.
    async fn record_released(
        &self,
        target: &CosmosTarget,
        handle: &AccountHandle,
        add: BTreeSet<String>,
        remove: BTreeSet<String>,
    ) -> Result<()> {
        let before = handle.released(target);
        let after: BTreeSet<String> = before.union(&add).filter(|n| !remove.contains(*n)).cloned().collect();
        if after == before {
            return Ok(());
        }
        // An empty list removes the annotation (null in a merge patch).
        let value = (!after.is_empty()).then(|| after.iter().cloned().collect::<Vec<_>>().join(","));
        let patch = serde_json::json!({ "metadata": { "annotations": { RELEASED_ANNOTATION: value } } });
        let api: Api<CosmosTarget> = Api::all(self.shared.client.clone());
        let params = PatchParams { field_manager: Some(crate::MANAGER.into()), ..Default::default() };
        api.patch(&target.name_any(), &params, &Patch::Merge(&patch)).await?;
        tracing::info!(target = %target.name_any(), added = ?add, removed = ?remove, "released assignments updated");
        *handle.released.lock().unwrap_or_else(|p| p.into_inner()) = Some(after);
        Ok(())
    }

    /// Forget a deleted target's account state (client, reports, change
    /// counter).
    pub fn forget(&self, target: &str) {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).remove(target);
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).remove(target);
    }

    /// The last report for `target`, if any sync ran.
    pub fn last_report(&self, target: &CosmosTarget) -> Option<SharedReport> {
        self.handle(target).last.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, r)| r.clone())
    }
}

/// Counts a caller as waiting for an account's lock while it lives.
struct Waiting<'a>(&'a AccountHandle);

impl<'a> Waiting<'a> {
    fn on(handle: &'a AccountHandle) -> Self {
        handle.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(handle)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A stable name for the identity a target authenticates to ARM as, so
/// targets with the same identity share its write bucket. Identities that
/// come from the pod's environment share one name (they are one identity).
fn identity_of(spec: &CosmosTargetSpec) -> String {
    let c = &spec.credential;
    match (&c.client_secret, &c.client_certificate, &c.managed_identity, &c.workload_identity) {
        (Some(s), _, _, _) => format!("app/{}/{}", s.tenant_id, s.client_id).to_ascii_lowercase(),
        (_, Some(s), _, _) => format!("app/{}/{}", s.tenant_id, s.client_id).to_ascii_lowercase(),
        (_, _, Some(m), _) => format!("managed/{}", m.client_id.as_deref().unwrap_or("system")).to_ascii_lowercase(),
        (_, _, _, Some(w)) => {
            format!("workload/{}/{}", w.tenant_id.as_deref().unwrap_or("pod"), w.client_id.as_deref().unwrap_or("pod"))
                .to_ascii_lowercase()
        }
        _ => "none".into(),
    }
}

/// The account a target names.
pub fn account_of(target: &CosmosTarget) -> AccountRef {
    AccountRef::new(&target.spec.subscription_id, &target.spec.resource_group, &target.spec.account_name)
}

/// A CosmosRoleDefinition's spec as the planner compares it.
pub fn definition_spec(role_name: &str, data_actions: &[String], scopes: &[CosmosScope]) -> DefinitionSpec {
    let scopes: BTreeSet<String> = scopes.iter().map(CosmosScope::relative_path).collect();
    DefinitionSpec {
        role_name: role_name.to_string(),
        data_actions: data_actions.iter().cloned().collect(),
        // The account scope covers everything: the same as no list.
        assignable_scopes: if scopes.contains("") { BTreeSet::new() } else { scopes },
    }
}

impl BackendContext for CosmosContext {
    const BACKEND: &'static str = BACKEND;

    fn shared(&self) -> &Context {
        &self.shared
    }

    /// Every binding applied before is in the index before any reconcile
    /// writes, so no sync revokes a shared assignment because its other
    /// bindings are not known yet.
    async fn prime(&self) {
        let caches = async {
            wait_ready(&self.targets).await;
            wait_ready(&self.definitions).await;
            wait_ready(&self.bindings).await;
        };
        lifecycle::prime(&self.primed, caches, &self.index, &self.bindings, |b, now| {
            let (target, definition) = (self.target(&b.spec.target_ref.name), self.definition_of(b));
            binding_status::evaluate(b, target.as_deref(), definition.as_deref(), now, false).contribution
        })
        .await
    }
}

/// Objects the Cosmos DB controllers' unit tests build.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::api::{AzureCredential, CosmosPolicy, CosmosTarget, CosmosTargetSpec};

    /// A CosmosTarget `name` for account `acct` (workload identity) with
    /// `policy`.
    pub fn target(name: &str, policy: CosmosPolicy) -> CosmosTarget {
        CosmosTarget::new(
            name,
            CosmosTargetSpec {
                subscription_id: "c9e6de92-9aba-45b0-85a1-5decf672d856".into(),
                resource_group: "rg".into(),
                account_name: "acct".into(),
                cloud: None,
                credential: AzureCredential {
                    workload_identity: Some(Default::default()),
                    managed_identity: None,
                    client_secret: None,
                    client_certificate: None,
                },
                policy,
                mode: Default::default(),
            },
        )
    }
}
