//! dbgrant: a Kubernetes operator that keeps MongoDB and Azure Cosmos DB
//! access in line with Microsoft Entra ID identities.
//!
//! ```text
//!   api/      CRD types, conditions, crdgen          (no I/O)
//!   plan/     policy, binding index, expiry, diffs   (pure)
//!   runtime/  context, metrics, telemetry, leader election, status, http
//!   mongo/    MongoDB client + controllers
//!   cosmos/   Azure Resource Manager client + controllers
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod azure;
pub mod cli;
pub mod cosmos;
pub mod error;
pub mod mongo;
pub mod operator;
pub mod plan;
pub mod preview;
pub mod runtime;

pub use error::{Error, Failure, Result};

/// Field manager name for server-side apply, and the Event reporter.
pub const MANAGER: &str = "dbgrant";

/// Finalizer that keeps an object until dbgrant has revoked its access.
pub const FINALIZER: &str = "dbgrant.io/revoke";

/// Finalizer that keeps a target (MongoTarget, CosmosTarget) until no
/// binding or role definition uses it, so each of them can still revoke its
/// access through the target when everything is deleted at once.
pub const TARGET_FINALIZER: &str = "dbgrant.io/bindings";

/// Make ring the process's rustls provider. reqwest is built without one so
/// that aws-lc-rs stays out of the tree, and kube's client asks rustls for
/// the process default: with no provider installed (or, in a build where
/// both are compiled in, with two candidates) every TLS client would panic.
/// Called first thing by the binary, and by every TLS client constructor so
/// library users get the same; idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
