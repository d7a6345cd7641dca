//! The MongoDB backend: connecting to a target, reading and writing
//! roles and `$external` users, and the controllers for `MongoTarget` and
//! `MongoRoleBinding`.

pub mod api;
pub mod binding_controller;
pub mod connection;
pub mod ledger;
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
    api::{MongoRoleBinding, MongoTarget, SubjectKey},
    plan::{
        index::{Affected, BindingIndex, Rejection},
        mongo::MongoGrant,
    },
    runtime::{
        cache::wait_ready,
        context::Context,
        lifecycle::{self, BackendContext},
    },
};

/// Backend label for metrics and errors.
pub const BACKEND: &str = "mongodb";

/// Names per ledger `find` call: far below the 16 MiB message limit even
/// with long names.
pub const BATCH: usize = 500;

/// Names per `rolesInfo`/`usersInfo` call. The driver decodes each reply
/// whole into a document tree of about 15 KiB per role with its
/// privileges, and every target resyncs at start-up: 100 keeps a reply near
/// 1.5 MiB (500 took a restarted operator with 5 targets and 10,000
/// bindings over its memory goal), at one more round trip per 100 subjects.
pub const INFO_BATCH: usize = 100;

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
    /// Subjects each binding's last pass changed but did not finish.
    pub pending: Mutex<HashMap<String, Affected>>,
    /// Bindings whose status says `Rejected`.
    pub showing_rejected: Mutex<BTreeSet<String>>,
}

impl BackendContext for MongoContext {
    const BACKEND: &'static str = BACKEND;

    fn shared(&self) -> &Context {
        &self.shared
    }

    /// Every binding applied before is in the index before any reconcile
    /// writes, so a role is never shrunk to a partial union.
    async fn prime(&self) {
        let caches = async {
            wait_ready(&self.targets).await;
            wait_ready(&self.bindings).await;
        };
        lifecycle::prime(&self.primed, caches, &self.index, &self.bindings, |b, now| {
            let target = self.targets.get(&ObjectRef::new(&b.spec.target_ref.name));
            binding_controller::evaluate(b, target.as_deref(), now).contribution
        })
        .await
    }
}

impl MongoContext {
    /// Drop and close `target`'s connection, if one is open (the next
    /// reconcile connects afresh).
    pub async fn disconnect(&self, target: &str) {
        let conn = self.connections.lock().await.remove(target);
        connection::close(conn).await;
    }

    /// Subjects `key`'s last pass changed but did not finish, taken for
    /// this pass.
    pub fn take_pending(&self, key: &str) -> Affected {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(key).unwrap_or_default()
    }

    /// Remember subjects `key`'s pass changed but did not finish (a failed
    /// or unconfirmed sync): its next pass syncs them again even though
    /// the index no longer shows them as affected.
    pub fn add_pending(&self, key: &str, subjects: Affected) {
        if !subjects.is_empty() {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_string()).or_default().extend(subjects);
        }
    }

    /// Note whether `key`'s status now says `Rejected`, so a sibling's sync
    /// that changes the subject can wake it.
    pub fn note_rejected(&self, key: &str, rejected: bool) {
        let mut set = self.showing_rejected.lock().unwrap_or_else(|p| p.into_inner());
        if rejected {
            set.insert(key.to_string());
        } else {
            set.remove(key);
        }
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
            // Bindings just refused, and bindings whose status says
            // `Rejected` on a subject this sync changed or refused (their
            // grant may be accepted now): a few, never every sibling.
            let changed: BTreeSet<&SubjectKey> = report.written.iter().chain(report.rejected.keys()).collect();
            for refused in report.rejected.values() {
                wake.extend(refused.keys().cloned());
            }
            let showing = self.showing_rejected.lock().unwrap_or_else(|p| p.into_inner());
            for key in showing.iter() {
                if idx.get(key).is_some_and(|c| c.target == target && c.subjects.iter().any(|s| changed.contains(s))) {
                    wake.insert(key.clone());
                }
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
