//! The runtime shared by both backends: operator wiring, context, metrics,
//! telemetry, leader election, status writing and the HTTP endpoints.

pub mod cache;
pub mod context;
pub mod crdgen;
pub mod finalize;
pub mod http;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod operator;
pub mod rbac;
pub mod secrets;
pub mod status;
pub mod telemetry;
pub mod watch;
