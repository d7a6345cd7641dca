//! CPU profiles of the control plane during a scenario
//! (`--profile-control-plane`): Go's profiler in the control plane's
//! process, started and stopped over its stdin, and the profile summarised
//! by `controlplane profile-summary` (by request and by kind of work).

use anyhow::Result;
use serde_json::{Value, json};

use crate::controlplane::ControlPlane;

/// A CPU profile of the control plane being taken.
pub struct Profile<'a> {
    cp: &'a ControlPlane,
    path: std::path::PathBuf,
}

impl<'a> Profile<'a> {
    /// Start profiling into `path`.
    pub fn start(cp: &'a ControlPlane, path: std::path::PathBuf) -> Result<Self> {
        // A profile of an earlier run at this path would look finished.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        cp.start_cpu_profile(&path)?;
        Ok(Self { cp, path })
    }

    /// Stop it and summarise it (by request and by kind of work).
    pub fn finish(self) -> Result<Value> {
        tokio::task::block_in_place(|| self.cp.stop_cpu_profile(&self.path))?;
        let mut summary = ControlPlane::profile_summary(&self.path)?;
        eprintln!("bench: control plane CPU profile: {}", self.path.display());
        summary["file"] = json!(self.path.display().to_string());
        Ok(summary)
    }
}
