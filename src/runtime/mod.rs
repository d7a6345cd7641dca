//! The runtime shared by both backends: the controller lifecycle kit
//! (finalizer-wrapped reconcile, error policy, a deleted target's wait),
//! context, metrics, telemetry, leader election, watches, status writing
//! and the HTTP endpoints. Startup wiring is in [`crate::operator`].

pub mod audit;
pub mod cache;
pub mod client;
pub mod context;
pub mod crdgen;
pub mod events;
pub mod finalize;
pub mod http;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod object;
pub mod rbac;
pub mod secrets;
pub mod status;
pub mod telemetry;
pub mod watch;
