//! End-to-end tests: the real kube-apiserver (built from Go modules by
//! `tests/controlplane/build.sh`), the real `dbgrant` binary as a separate
//! process authenticated as the chart's non-admin ServiceAccount identity,
//! and the project's backend doubles over TCP.
//!
//! One control plane serves the whole run; every test gets its own
//! namespace. Tests that run an operator take [`common::operator_lock`]:
//! two operators would both reconcile every cluster-scoped target.

mod audit;
mod common;
mod cosmos;
mod events;
mod faults_apiserver;
mod faults_common;
mod faults_cosmos;
mod faults_mongo;
mod faults_mongo_model;
mod finalizer_policy;
mod mongo;
mod mongo_hostile;
mod mongo_operator_oidc;
mod namespaces;
mod node;
mod observe;
mod plan;
mod rbac;
mod restarts;
mod revocation;
mod security;
mod service_account_tokens;
mod validation;
