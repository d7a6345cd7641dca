//! The operator's footprint from /proc: resident memory (VmRSS, and the
//! high-water mark VmHWM) and CPU time (utime + stime), sampled while a
//! scenario runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::machine::meminfo_kib;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    /// Resident set size, bytes.
    pub rss: u64,
    /// Peak resident set size since the process started, bytes.
    pub hwm: u64,
    /// User + system CPU time since the process started, seconds.
    pub cpu: f64,
}

/// Read `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn read(pid: u32) -> Option<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Reading {
        rss: meminfo_kib(&status, "VmRSS")? * 1024,
        hwm: meminfo_kib(&status, "VmHWM")? * 1024,
        cpu: cpu_seconds(&stat)?,
    })
}

/// utime + stime (fields 14 and 15 of /proc/<pid>/stat) in seconds. The
/// command name (field 2) may contain spaces and parentheses, so fields are
/// counted after its closing parenthesis.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// The pid of a child of this process whose command name starts with
/// `prefix` (e.g. the control plane this benchmark started).
pub fn child_named(prefix: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        ppid == Some(me) && comm.starts_with(prefix)
    })
}

/// Busy CPU seconds of the whole machine (all cores, every process: /proc/stat
/// minus idle and iowait) since boot.
pub fn machine_busy() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((total - idle) as f64 / if ticks > 0 { ticks as f64 } else { 100.0 })
}

/// CPU seconds of the processes on the machine, to see who was busy during
/// a scenario: the operator, the control plane (etcd + kube-apiserver), this
/// benchmark with the backend doubles, and everything else (other builds).
#[derive(Clone, Copy, Debug)]
pub struct CpuSplit {
    at: std::time::Instant,
    operator: f64,
    control_plane: f64,
    bench: f64,
    machine: f64,
}

impl CpuSplit {
    /// Read now.
    pub fn now(operator: Option<u32>, control_plane: Option<u32>) -> Self {
        let cpu = |pid: Option<u32>| pid.and_then(read).map_or(0.0, |r| r.cpu);
        Self {
            at: std::time::Instant::now(),
            operator: cpu(operator),
            control_plane: cpu(control_plane),
            bench: cpu(Some(std::process::id())),
            machine: machine_busy().unwrap_or(0.0),
        }
    }

    /// What was used between `self` and `later`, as JSON (seconds).
    pub fn until(&self, later: &CpuSplit) -> Value {
        let d = |a: f64, b: f64| round3((b - a).max(0.0));
        let (op, cp, bench, all) = (
            d(self.operator, later.operator),
            d(self.control_plane, later.control_plane),
            d(self.bench, later.bench),
            d(self.machine, later.machine),
        );
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        json!({
            "wallSeconds": round3(wall),
            "operator": op,
            "controlPlane": cp,
            "benchAndDoubles": bench,
            "otherProcesses": round3((all - op - cp - bench).max(0.0)),
            "machineBusy": all,
            "machineCapacity": round3(wall * cores),
        })
    }
}

/// Samples a process every `every` until stopped; keeps the largest RSS.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Window>,
}

/// What a [`Sampler`] saw between its start and stop.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// The first reading.
    pub start: Reading,
    /// The last reading.
    pub end: Reading,
    /// The largest VmRSS sampled.
    pub peak_rss: u64,
    /// Seconds between the first and last reading.
    pub seconds: f64,
}

impl Window {
    /// CPU seconds used in the window.
    pub fn cpu(&self) -> f64 {
        (self.end.cpu - self.start.cpu).max(0.0)
    }

    /// As JSON (MiB and seconds).
    pub fn to_json(&self) -> Value {
        json!({
            "rssMiB": mib(self.end.rss),
            "peakRssMiB": mib(self.peak_rss.max(self.end.rss)),
            "hwmMiB": mib(self.end.hwm),
            "cpuSeconds": round3(self.cpu()),
            "wallSeconds": round3(self.seconds),
            "cpuCores": if self.seconds > 0.0 { round3(self.cpu() / self.seconds) } else { 0.0 },
        })
    }
}

impl Sampler {
    /// Start sampling `pid`.
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let first = read(pid).unwrap_or_default();
            let mut w = Window { start: first, end: first, peak_rss: first.rss, seconds: 0.0 };
            loop {
                tokio::time::sleep(every).await;
                if let Some(r) = read(pid) {
                    w.end = r;
                    w.peak_rss = w.peak_rss.max(r.rss);
                }
                w.seconds = started.elapsed().as_secs_f64();
                if flag.load(Ordering::SeqCst) {
                    return w;
                }
            }
        });
        Self { stop, task }
    }

    /// Stop and return what was seen (one last reading is taken).
    pub async fn stop(self) -> Window {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

/// Bytes as MiB, one decimal.
pub fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0
}

/// Three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_after_the_command_name() {
        let stat = "4242 (dbgrant (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 8 0 1 0 0";
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_seconds(stat), Some(300.0 / ticks));
    }

    #[test]
    fn reads_this_process() {
        let r = read(std::process::id()).expect("own /proc entry");
        assert!(r.rss > 0 && r.hwm >= r.rss);
    }
}
