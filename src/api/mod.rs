//! The dbgrant API: custom resource types for group `dbgrant.io`, version
//! `v1alpha1`, and the condition vocabulary they report.
//!
//! ```text
//! cluster-scoped (platform team)        namespaced (application teams)
//!   MongoTarget  <──────────────────────  MongoRoleBinding
//!   CosmosTarget <──────────────────────  CosmosRoleBinding
//!        ^                                       │
//!        └──── CosmosRoleDefinition <────────────┘ (custom roles)
//! ```

pub mod common;
pub mod conditions;
pub mod cosmos;
pub mod crdgen;
pub mod mongo;
pub mod target;

pub use common::*;
pub use cosmos::*;
pub use mongo::*;
