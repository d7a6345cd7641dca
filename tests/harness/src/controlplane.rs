//! The local control plane: embedded etcd + the real kube-apiserver, one
//! process built by `tests/controlplane/build.sh`.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::paths;

/// kube-apiserver flags that serve MutatingAdmissionPolicy on 1.34/1.35,
/// where it is beta and off by default (the chart's `finalizerPolicy`).
pub const MUTATING_ADMISSION_POLICY: [&str; 2] =
    ["--feature-gates=MutatingAdmissionPolicy=true", "--runtime-config=admissionregistration.k8s.io/v1beta1=true"];

/// What the control plane prints once `/readyz` answers ok.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    /// Its working directory (certificates, kubeconfigs, logs).
    pub dir: PathBuf,
    /// The apiserver URL.
    pub server: String,
    /// Kubeconfig of `dbgrant-admin` (system:masters).
    pub admin_kubeconfig: PathBuf,
    /// Kubeconfig of the operator's ServiceAccount identity (no rights until
    /// RBAC grants some).
    pub operator_kubeconfig: PathBuf,
    /// The operator's namespace.
    pub operator_namespace: String,
    /// The operator's user name, `system:serviceaccount:<ns>:<sa>`.
    pub operator_user: String,
    /// Seconds from start to ready.
    pub ready_seconds: f64,
}

/// A running control plane. It stops when this value is dropped, or when
/// the process holding it exits (it watches its stdin).
pub struct ControlPlane {
    /// Where it is.
    pub info: Info,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ControlPlane {
    /// Start a new control plane and wait until it is ready.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Start a new control plane with extra kube-apiserver flags (e.g.
    /// [`MUTATING_ADMISSION_POLICY`]) and wait until it is ready.
    pub fn start_with(apiserver_args: &[&str]) -> Result<Self> {
        let bin = paths::tool("controlplane")?;
        let logs = paths::run_dir("controlplane")?;
        let stderr = std::fs::File::create(logs.join("controlplane.stderr"))?;
        let started = Instant::now();
        let mut child = Command::new(&bin)
            .args(apiserver_args.iter().map(|a| format!("--apiserver-arg={a}")))
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("control plane stdout not captured"))?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).context("reading the control plane's ready line")?;
        if line.trim().is_empty() {
            let status = child.wait()?;
            let log = std::fs::read_to_string(logs.join("controlplane.stderr")).unwrap_or_default();
            bail!("control plane exited before it was ready ({status}); its stderr:\n{log}");
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
        });
        let info: Info = serde_json::from_str(&line).with_context(|| format!("parsing control plane info {line:?}"))?;
        eprintln!(
            "harness: control plane ready at {} in {:.1}s (apiserver {:.1}s); logs in {}",
            info.server,
            started.elapsed().as_secs_f64(),
            info.ready_seconds,
            info.dir.display()
        );
        Ok(Self { info, child, stdin })
    }

    /// The control plane shared by every test of this process, started on
    /// first use. It exits with the process.
    pub fn shared() -> Result<Info> {
        static SHARED: OnceLock<std::result::Result<Info, String>> = OnceLock::new();
        static KEEP: Mutex<Option<ControlPlane>> = Mutex::new(None);
        SHARED
            .get_or_init(|| match ControlPlane::start() {
                Ok(cp) => {
                    let info = cp.info.clone();
                    // Held for the life of the process: dropping the stdin
                    // pipe (process exit) is what stops the control plane.
                    *KEEP.lock().unwrap_or_else(|p| p.into_inner()) = Some(cp);
                    Ok(info)
                }
                Err(e) => Err(format!("{e:#}")),
            })
            .clone()
            .map_err(|e| anyhow!("starting the local control plane: {e}"))
    }

    /// The process id of the control plane (etcd and kube-apiserver both
    /// run in it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freeze (SIGSTOP) or resume (SIGCONT) the whole control plane: while
    /// frozen, clients see a server that accepts connections and answers
    /// nothing, as with a hung node.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Stop it: close stdin, wait for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        self.stdin.take();
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // A frozen control plane cannot notice its stdin closing.
        self.freeze(false);
        self.stdin.take();
        // Give it a moment to exit cleanly on stdin EOF, then make sure.
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
