//! The MongoDB backend: connecting to a target, reading and writing
//! roles and `$external` users, and the controllers for `MongoTarget` and
//! `MongoRoleBinding`.

pub mod binding_controller;
pub mod connection;
pub mod oidc;
pub mod sync;
pub mod target_controller;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::OnceCell;

use crate::{
    api::{MongoRoleBinding, MongoTarget},
    plan::{
        index::{BindingIndex, Rejection},
        mongo::MongoGrant,
    },
    runtime::context::Context,
};

/// Backend label for metrics and errors.
pub const BACKEND: &str = "mongodb";

/// State shared by the MongoDB controllers.
pub struct MongoContext {
    /// Shared runtime context.
    pub shared: Arc<Context>,
    /// Targets, from the target controller's cache.
    pub targets: Store<MongoTarget>,
    /// Bindings, from the binding controller's cache.
    pub bindings: Store<MongoRoleBinding>,
    /// Live bindings by (target, subject).
    pub index: Mutex<BindingIndex<MongoGrant>>,
    /// Set once the index holds every binding that existed at start-up, so
    /// no reconcile shrinks a role before all its bindings are known.
    pub primed: OnceCell<()>,
    /// One connection (and write lock) per target.
    pub connections: tokio::sync::Mutex<HashMap<String, Arc<connection::TargetConnection>>>,
    /// Asks the binding controller to reconcile a binding whose status a
    /// sync of another binding (or of the target) changed: a subject's
    /// union changed, or the server refused one of its contributions.
    pub refresh: futures::channel::mpsc::UnboundedSender<ObjectRef<MongoRoleBinding>>,
}

impl MongoContext {
    /// Whether the cached binding `namespace/name` is Ready at its
    /// generation.
    fn is_ready(&self, key: &str) -> bool {
        let Some((ns, name)) = key.split_once('/') else { return false };
        self.bindings.get(&ObjectRef::new(name).within(ns)).is_some_and(|b| {
            b.status.as_ref().is_some_and(|s| {
                s.observed_generation == b.metadata.generation
                    && crate::api::conditions::ready(&s.conditions).is_some_and(|c| c.status == "True")
            })
        })
    }

    /// Record the contributions a sync of `target` found refused, and ask
    /// every binding whose result that changes (the refused ones, and the
    /// siblings naming a subject whose objects were rewritten) to refresh
    /// its status. `except` is the binding whose own reconcile ran the
    /// sync: it reports for itself.
    pub fn after_sync(&self, target: &str, report: &sync::SyncReport, except: &str) {
        let now = jiff::Timestamp::now();
        let mut wake = BTreeSet::new();
        {
            let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
            for (subject, refused) in &report.rejected {
                for (key, message) in refused {
                    idx.reject(target, subject, key, Rejection { message: message.clone(), since: now });
                }
            }
            // Siblings whose contribution was just refused, and siblings
            // not Ready (a stale `Rejected` may have been accepted now).
            for (subject, refused) in &report.rejected {
                wake.extend(refused.keys().cloned());
                wake.extend(idx.bindings_for(target, subject).filter(|k| !self.is_ready(k)).cloned());
            }
            for subject in &report.written {
                wake.extend(idx.bindings_for(target, subject).filter(|k| !self.is_ready(k)).cloned());
            }
        }
        wake.remove(except);
        for key in wake {
            tracing::debug!(binding = %key, "status refresh after a sibling's sync");
            if let Some((ns, name)) = key.split_once('/') {
                let _ = self.refresh.unbounded_send(ObjectRef::new(name).within(ns));
            }
        }
    }
}
