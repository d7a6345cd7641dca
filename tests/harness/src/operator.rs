//! The real `dbgrant` binary as a separate process.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

use crate::{cluster::Cluster, paths};

/// How to start the operator.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `dbgrant` binary (tests pass `env!("CARGO_BIN_EXE_dbgrant")`).
    pub binary: PathBuf,
    /// A label for the log directory.
    pub label: String,
    /// Resync interval.
    pub resync: Duration,
    /// Extra arguments to `dbgrant run`.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Options {
    /// Defaults for tests: a short resync, debug logs for dbgrant.
    pub fn new(binary: impl Into<PathBuf>, label: &str) -> Self {
        Self {
            binary: binary.into(),
            label: label.into(),
            resync: Duration::from_secs(300),
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A running operator process, authenticated as the operator identity
/// (the non-admin ServiceAccount user bound to the chart's RBAC).
pub struct Operator {
    child: Option<Child>,
    /// Its /metrics, /healthz, /readyz address.
    pub addr: SocketAddr,
    /// Where its combined stdout/stderr go.
    pub log: PathBuf,
    /// Its audit trail (`--audit-log`): JSON lines, appended across
    /// restarts.
    pub audit_log: PathBuf,
    options: Options,
    kubeconfig: PathBuf,
    namespace: String,
}

impl Operator {
    /// Start `dbgrant run` against the cluster as the operator identity and
    /// wait until it reports ready (informers synced).
    pub async fn start(cluster: &Cluster, options: Options) -> Result<Self> {
        let dir = paths::run_dir(&format!("operator-{}", options.label))?;
        let mut op = Self {
            child: None,
            addr: "127.0.0.1:0".parse()?,
            log: dir.join("operator.log"),
            audit_log: dir.join("audit.jsonl"),
            options,
            kubeconfig: cluster.operator_kubeconfig.clone(),
            namespace: cluster.operator_namespace.clone(),
        };
        op.spawn().await?;
        Ok(op)
    }

    /// (Re)start the process after [`Operator::stop`] or [`Operator::kill`];
    /// logs are appended to the same file.
    pub async fn spawn(&mut self) -> Result<()> {
        self.addr = free_port()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.options.binary);
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", &self.namespace])
            .args(["--metrics-addr", &self.addr.to_string()])
            .args(["--resync-interval", &format!("{}s", self.options.resync.as_secs().max(1))])
            .arg("--audit-log")
            .arg(&self.audit_log)
            .args(&self.options.args)
            .env("RUST_LOG", "info,dbgrant=debug,kube=warn,mongodb=warn")
            .env_remove("KUBECONFIG")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {}", self.options.binary.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// The audit records written so far, one JSON object per line.
    pub fn audit_records(&self) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).with_context(|| format!("audit line is not JSON: {l}"))).collect()
    }

    /// Wait until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("operator exited before it was ready ({status}); log:\n{}", self.log_tail(60));
            }
            if let Ok((200, _)) = http_get(self.addr, "/readyz").await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("operator not ready after {timeout:?}; log:\n{}", self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id while it runs (for `/proc/<pid>` footprint readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Freeze (SIGSTOP) or resume (SIGCONT) the process: while frozen it
    /// sees nothing and sends nothing, as an operator on a paused node.
    pub fn freeze(&self, frozen: bool) {
        if let Some(pid) = self.pid() {
            let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM and wait for a graceful exit (SIGKILL after `grace`);
    /// returns whether it exited by itself with status 0.
    pub async fn stop(&mut self, grace: Duration) -> Result<bool> {
        let Some(mut child) = self.child.take() else { return Ok(false) };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => Ok(status?.success()),
            Err(_) => {
                child.kill().await?;
                Ok(false)
            }
        }
    }

    /// SIGKILL, no cleanup (a crash).
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// The Prometheus text exposition from `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(self.addr, "/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

/// The sum of a metric's samples whose label set contains every `labels`
/// pair (`name{a="b"} 3`).
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        // A float sum of nothing is -0.0 (printed "-0"); start from +0.0.
        .fold(0.0, |total, v| total + v)
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A minimal HTTP/1.0 GET on loopback (status code, body): enough for the
/// operator's own /metrics and /readyz, without another HTTP client crate.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await??;
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}
