//! What the numbers were measured on: cores, memory, CPU model, kernel, the
//! commit, and when.

use std::process::Command;

use serde_json::{Value, json};

use crate::paths;

/// The machine and source the benchmark ran on.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// Total memory in bytes (`MemTotal`).
    pub memory_bytes: u64,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// `git rev-parse --short HEAD`, with `-dirty` when the work tree has
    /// changes (untracked files included).
    pub commit: String,
    /// Start of the run, UTC, RFC 3339.
    pub started_at: String,
}

impl Machine {
    /// Read everything now.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_bytes: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) * 1024,
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
                .unwrap_or("unknown")
                .to_string(),
            kernel: run("uname", &["-r"]).unwrap_or_else(|| "unknown".into()),
            commit: commit(),
            started_at: rfc3339_now(),
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "cores": self.cores,
            "memoryBytes": self.memory_bytes,
            "memoryGiB": (self.memory_bytes as f64 / (1u64 << 30) as f64 * 10.0).round() / 10.0,
            "cpuModel": self.cpu_model,
            "kernel": self.kernel,
            "commit": self.commit,
            "startedAt": self.started_at,
        })
    }
}

/// A `Key:   123 kB` value of /proc/meminfo or /proc/<pid>/status, in KiB.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).current_dir(paths::repo_root()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn commit() -> String {
    let Some(head) = run("git", &["rev-parse", "--short", "HEAD"]) else { return "unknown".into() };
    let dirty = run("git", &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs as i64)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn reads_meminfo() {
        assert_eq!(meminfo_kib("MemTotal:       24683520 kB\nMemFree: 1 kB", "MemTotal"), Some(24_683_520));
        assert_eq!(meminfo_kib("VmRSS:\t   51200 kB", "VmRSS"), Some(51_200));
        assert_eq!(meminfo_kib("VmRSS: 1 kB", "VmHWM"), None);
    }
}
