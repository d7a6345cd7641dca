//! Test doubles for dbgrant's backends. Never linked into the operator.
//!
//! - [`mongo`]: a MongoDB wire-protocol server (OP_MSG, SCRAM-SHA-256, the
//!   user-management commands) that the official `mongodb` driver talks to.

pub mod mongo;
