//! Azure plumbing shared by every part of dbgrant that talks to Azure:
//! the Cosmos DB backend (ARM) and MongoDB OIDC (an Entra token for
//! dbgrant's own login). The HTTPS transport and client options
//! ([`transport`]) and Entra ID credentials with redaction
//! ([`credential`]), written once.
//!
//! ```text
//!   cosmos::arm ──┐
//!                 ├─▶ azure::credential ─▶ azure::transport ─▶ Entra ID / ARM
//!   mongo::oidc ──┘
//! ```

pub mod credential;
pub mod transport;
