//! Where things are: the repository, the built tools, the dbgrant binary.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root exists")
}

/// Directory of the Go-built tools (`controlplane`, `helm`); overridable
/// with `DBGRANT_TOOLS_DIR`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("DBGRANT_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/tools"))
}

/// Path of a built tool, building the tools first when one is missing.
///
/// A fresh checkout has no tools yet; `tests/controlplane/build.sh` builds
/// them from Go modules (several minutes cold, a no-op when current).
pub fn tool(name: &str) -> Result<PathBuf> {
    let path = tools_dir().join(name);
    if !path.exists() {
        eprintln!("harness: {} is missing; building the test tools (tests/controlplane/build.sh)", path.display());
        let status = Command::new(repo_root().join("tests/controlplane/build.sh"))
            .arg(tools_dir())
            .status()
            .context("running tests/controlplane/build.sh (needs Go)")?;
        if !status.success() {
            bail!("tests/controlplane/build.sh failed ({status}); run it by hand to see why");
        }
    }
    Ok(path)
}

/// A directory for one run's files (logs, kubeconfigs), under the target dir
/// so it survives for inspection after a failure.
pub fn run_dir(label: &str) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let dir = repo_root().join("target/e2e").join(format!("{label}-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The static (musl) release binary `deploy/build-binary.sh` builds, the
/// one the image ships; an error saying how to build it when it is missing
/// or older than the sources (a stale binary would test yesterday's
/// operator).
pub fn static_binary() -> Result<PathBuf> {
    let root = repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let binary = target.join("x86_64-unknown-linux-musl/release/dbgrant");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} is missing: build it with deploy/build-binary.sh", binary.display()))?;
    let mut newest = (std::time::SystemTime::UNIX_EPOCH, PathBuf::new());
    let mut pending = vec![root.join("src"), root.join("Cargo.toml"), root.join("Cargo.lock")];
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        } else if meta.modified()? > newest.0 {
            newest = (meta.modified()?, path);
        }
    }
    if newest.0 > built {
        bail!("{} is older than {}: rebuild it with deploy/build-binary.sh", binary.display(), newest.1.display());
    }
    Ok(binary)
}
