//! Test doubles for dbgrant's backends. Never linked into the operator.
//!
//! - [`mongo`]: a MongoDB wire-protocol server (OP_MSG, SCRAM-SHA-256, the
//!   user-management commands) that the official `mongodb` driver talks to.
//! - [`arm`]: an Azure Resource Manager + Entra ID token HTTPS server
//!   (Cosmos DB SQL role definitions/assignments, long-running operations,
//!   throttling) that the real `azure_identity` credentials talk to.

pub mod arm;
pub mod mongo;
