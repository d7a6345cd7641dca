//! Pure planning code: policy checks, the binding index, expiry, and the
//! desired-versus-actual diff for each backend. Nothing here talks to
//! Kubernetes or a database, so all of it is tested with plain `#[test]`s.

pub mod cosmos;
pub mod expiry;
pub mod gate;
pub mod index;
pub mod mongo;
pub mod policy;
pub mod sorted;
