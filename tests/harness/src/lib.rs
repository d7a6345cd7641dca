//! End-to-end harness for dbgrant.
//!
//! Everything a test (or the quickstart) needs to meet real components:
//!
//! - [`controlplane`]: the local etcd + kube-apiserver built from Go modules
//!   by `tests/controlplane/build.sh`, started once per test process;
//! - [`cluster`]: admin and operator clients, CRDs installed and Established,
//!   the operator's RBAC rendered from the Helm chart, a namespace per test,
//!   server-side apply of manifests and polling waits;
//! - [`operator`]: the real `dbgrant` binary as a separate process,
//!   authenticated as the non-admin identity, with its logs captured;
//! - [`dump`]: what to print when a test fails;
//! - [`proxy`]: a loopback TCP proxy that counts, cuts and refuses
//!   connections (fault injection);
//! - [`examples`]: `deploy/examples/` pointed at the doubles (the MongoDB
//!   double, and an ARM + Entra double that knows the Cosmos examples'
//!   tenant, identity, account and subjects), for the quickstart and tests;
//! - [`bench`]: the `dbgrant-bench` benchmark.
//!
//! The harness never uses dbgrant's own types, only YAML and JSON, so tests
//! read like the manifests users apply.

pub mod bench;
pub mod chart;
pub mod cluster;
pub mod controlplane;
pub mod dump;
pub mod examples;
pub mod manifests;
pub mod operator;
pub mod paths;
pub mod proxy;

pub use cluster::{Cluster, TestNamespace};
pub use dump::DumpOnFailure;
pub use operator::Operator;
