//! The MongoDB backend: connecting to a target, reading and writing
//! roles and `$external` users, and the controllers for `MongoTarget` and
//! `MongoRoleBinding`.

pub mod binding_controller;
pub mod connection;
pub mod oidc;
pub mod sync;
pub mod target_controller;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::runtime::reflector::Store;
use tokio::sync::OnceCell;

use crate::{
    api::{MongoRoleBinding, MongoTarget},
    plan::{index::BindingIndex, mongo::MongoGrant},
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
}
