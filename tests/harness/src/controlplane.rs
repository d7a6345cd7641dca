//! The local control plane: embedded etcd, the real kube-apiserver and
//! kube-controller-manager, one process built by
//! `tests/controlplane/build.sh`. The operator's identity is its
//! ServiceAccount, with a bound token from the TokenRequest API that the
//! control plane keeps fresh in a file, as the kubelet does for a pod.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
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
    /// RBAC grants some); it names [`Info::operator_token_file`].
    pub operator_kubeconfig: PathBuf,
    /// The operator's current bound ServiceAccount token, replaced by the
    /// control plane before it expires.
    pub operator_token_file: PathBuf,
    /// The operator's namespace.
    pub operator_namespace: String,
    /// The operator's user name, `system:serviceaccount:<ns>:<sa>`.
    pub operator_user: String,
    /// Seconds from start to ready.
    pub ready_seconds: f64,
    /// The node, when started with [`Options::node`].
    #[serde(default)]
    pub node: Option<NodeInfo>,
}

/// The node a control plane runs with [`Options::node`]: a kubelet and
/// kube-scheduler, Debian's containerd and runc, pods on a private CNI
/// bridge with no route off the machine.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// The host's address on the pod bridge: what pods reach the machine
    /// (and servers the test runs) at.
    #[serde(rename = "hostIP")]
    pub host_ip: String,
    /// The pods' addresses.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    /// Its state: containerd's, the kubelet's, and the containers' logs
    /// under `pod-logs/<namespace>_<pod>_<uid>/<container>/`.
    pub dir: PathBuf,
    /// Seconds from starting containerd to the Node's Ready=True.
    pub ready_seconds: f64,
}

/// A node's settings (see [`Options::node`]).
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Static binaries to package as single-file images and import into
    /// containerd (no registry): `(reference, binary)`.
    pub images: Vec<(String, PathBuf)>,
}

/// How to start a control plane.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Extra kube-apiserver flags (e.g. [`MUTATING_ADMISSION_POLICY`]).
    pub apiserver_args: Vec<String>,
    /// Keep etcd's data, the certificates, keys, tokens and ports in a
    /// directory of the run, so [`ControlPlane::restart`] can bring the same
    /// cluster back. Without it the data lives in a temporary directory
    /// removed on exit.
    pub restartable: bool,
    /// Replace the operator's token this often instead of at 80 % of its
    /// lifetime (tests of the refresh).
    pub operator_token_refresh: Option<std::time::Duration>,
    /// The namespace of the operator's ServiceAccount identity (default
    /// `dbgrant-system`); a test that `helm install`s the chart there picks
    /// another, so the chart owns its ServiceAccount.
    pub operator_namespace: Option<String>,
    /// Also run a node (needs root, containerd, runc and the CNI plugins;
    /// the control plane says precisely what is missing).
    pub node: Option<NodeOptions>,
}

/// A running control plane. It stops when this value is dropped, or when
/// the process holding it exits (it watches its stdin).
pub struct ControlPlane {
    /// Where it is.
    pub info: Info,
    child: Child,
    /// Its standard input: closing it stops the control plane; lines sent
    /// on it are commands (CPU profiles).
    stdin: Mutex<Option<ChildStdin>>,
    options: Options,
    /// Its data directory when restartable.
    data_dir: Option<PathBuf>,
    /// Where its stderr goes.
    logs: PathBuf,
}

impl ControlPlane {
    /// Start a new control plane and wait until it is ready.
    pub fn start() -> Result<Self> {
        Self::start_with_options(Options::default())
    }

    /// Start a new control plane with extra kube-apiserver flags (e.g.
    /// [`MUTATING_ADMISSION_POLICY`]) and wait until it is ready.
    pub fn start_with(apiserver_args: &[&str]) -> Result<Self> {
        Self::start_with_options(Options {
            apiserver_args: apiserver_args.iter().map(|a| a.to_string()).collect(),
            ..Options::default()
        })
    }

    /// Start a new control plane as `options` say and wait until it is
    /// ready.
    pub fn start_with_options(options: Options) -> Result<Self> {
        let logs = paths::run_dir("controlplane")?;
        let data_dir = options.restartable.then(|| logs.join("data"));
        let (info, child, stdin) = Self::spawn(&options, data_dir.as_deref(), &logs)?;
        Ok(Self { info, child, stdin: Mutex::new(stdin), options, data_dir, logs })
    }

    /// Stop a restartable control plane (as [`ControlPlane::stop`]) and
    /// start it again on the same data, certificates, tokens and port; the
    /// apiserver's URL does not change. `while_down` runs in between.
    pub fn restart(&mut self, while_down: impl FnOnce()) -> Result<()> {
        let Some(dir) = self.data_dir.clone() else {
            bail!("this control plane was not started restartable (Options::restartable)");
        };
        self.close_stdin();
        self.child.wait()?;
        while_down();
        let (info, child, stdin) = Self::spawn(&self.options, Some(&dir), &self.logs)?;
        if info.server != self.info.server {
            bail!("the control plane came back at {} instead of {}", info.server, self.info.server);
        }
        self.info = info;
        self.child = child;
        self.stdin = Mutex::new(stdin);
        Ok(())
    }

    fn spawn(options: &Options, data_dir: Option<&Path>, logs: &Path) -> Result<(Info, Child, Option<ChildStdin>)> {
        let bin = paths::tool("controlplane")?;
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(logs.join("controlplane.stderr"))?;
        let started = Instant::now();
        let mut cmd = Command::new(&bin);
        cmd.args(options.apiserver_args.iter().map(|a| format!("--apiserver-arg={a}")));
        if let Some(dir) = data_dir {
            cmd.arg("--dir").arg(dir).arg("--keep-data");
        }
        if let Some(every) = options.operator_token_refresh {
            cmd.arg(format!("--operator-token-refresh={}ms", every.as_millis()));
        }
        if let Some(ns) = &options.operator_namespace {
            cmd.arg(format!("--operator-namespace={ns}"));
        }
        if let Some(node) = &options.node {
            cmd.arg("--node");
            for (reference, binary) in &node.images {
                cmd.arg(format!("--node-image={reference}={}", binary.display()));
            }
        }
        let mut child = cmd
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
        Ok((info, child, stdin))
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

    /// Start Go's CPU profiler in the control plane's process (the
    /// apiserver and etcd); [`ControlPlane::stop_cpu_profile`] writes the
    /// profile to `path`. A profile already running is written first.
    pub fn start_cpu_profile(&self, path: &Path) -> Result<()> {
        let path = path.to_str().filter(|p| !p.contains(char::is_whitespace)).ok_or_else(|| {
            anyhow!("a CPU profile's path must be UTF-8 without whitespace (one command per line): {}", path.display())
        })?;
        self.command(&format!("cpu-profile start {path}"))
    }

    /// Stop the CPU profiler started for `path` and wait (up to 30 s) until
    /// the profile is there: the control plane moves it to `path` once
    /// complete.
    pub fn stop_cpu_profile(&self, path: &Path) -> Result<()> {
        self.command("cpu-profile stop")?;
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !path.exists() {
            if Instant::now() > deadline {
                bail!("the control plane wrote no CPU profile to {} within 30s (see its stderr)", path.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// How a CPU profile's time divides by request and by kind of work
    /// (`controlplane profile-summary`, JSON).
    pub fn profile_summary(path: &Path) -> Result<serde_json::Value> {
        let bin = paths::tool("controlplane")?;
        let out = Command::new(&bin).arg("profile-summary").arg(path).output()?;
        if !out.status.success() {
            bail!("{} profile-summary {}: {}", bin.display(), path.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn command(&self, line: &str) -> Result<()> {
        use std::io::Write;
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let stdin = stdin.as_mut().ok_or_else(|| anyhow!("the control plane's stdin is closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    fn close_stdin(&mut self) {
        self.stdin.get_mut().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Stop it: close stdin, wait for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        self.close_stdin();
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // A frozen control plane cannot notice its stdin closing.
        self.freeze(false);
        self.close_stdin();
        // Give it a moment to exit cleanly on stdin EOF, then make sure. A
        // node takes longer: it stops the kubelet, the containers and
        // containerd, and removes its mounts, network namespaces and rules.
        let tenths = if self.options.node.is_some() { 600 } else { 50 };
        for _ in 0..tenths {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
