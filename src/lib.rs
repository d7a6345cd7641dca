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
pub mod cli;
pub mod cosmos;
pub mod error;
pub mod mongo;
pub mod plan;
pub mod runtime;

pub use error::{Error, Result};

/// Field manager name for server-side apply, and the Event reporter.
pub const MANAGER: &str = "dbgrant";

/// Finalizer that keeps an object until dbgrant has revoked its access.
pub const FINALIZER: &str = "dbgrant.io/revoke";

/// Finalizer that keeps a target (MongoTarget, CosmosTarget) until no
/// binding or role definition uses it, so each of them can still revoke its
/// access through the target when everything is deleted at once.
pub const TARGET_FINALIZER: &str = "dbgrant.io/bindings";
