//! What a failed test prints: the dbgrant objects it touched (with status),
//! the Events in its namespaces, and the tail of the operator's log.

use std::path::PathBuf;

use kube::api::ListParams;

use crate::cluster::{Cluster, KINDS};

/// Dumps on drop unless [`DumpOnFailure::passed`] was called, so both a
/// panic and an early `?` return print what the test saw.
pub struct DumpOnFailure {
    cluster: Cluster,
    namespaces: Vec<String>,
    logs: Vec<PathBuf>,
    passed: bool,
}

impl DumpOnFailure {
    /// Watch these namespaces (plus cluster-scoped dbgrant objects).
    pub fn new(cluster: &Cluster, namespaces: &[&str]) -> Self {
        Self {
            cluster: cluster.clone(),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            logs: Vec::new(),
            passed: false,
        }
    }

    /// Also print this log file's tail.
    pub fn log(&mut self, path: PathBuf) {
        self.logs.push(path);
    }

    /// The test passed: print nothing.
    pub fn passed(mut self) {
        self.passed = true;
    }
}

impl Drop for DumpOnFailure {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        let cluster = self.cluster.clone();
        let namespaces = self.namespaces.clone();
        let logs = self.logs.clone();
        // Drop is synchronous and may run inside a runtime: dump from a
        // thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(rt) = rt else { return };
            rt.block_on(async {
                eprintln!("\n===== dump: dbgrant objects =====");
                // Fresh clients: the test's may be bound to its runtime.
                let Ok(fresh) = crate::cluster::client(&cluster.admin_kubeconfig).await else { return };
                let cluster = Cluster { admin: fresh.clone(), operator: fresh, ..cluster };
                for kind in KINDS {
                    let scopes: Vec<Option<&str>> = if kind.contains("Binding") {
                        namespaces.iter().map(|n| Some(n.as_str())).collect()
                    } else {
                        vec![None]
                    };
                    for ns in scopes {
                        let Ok(api) = cluster.dbgrant(&cluster.admin, kind, ns).await else { continue };
                        let Ok(list) = api.list(&ListParams::default()).await else { continue };
                        for o in list.items {
                            let mut o = o;
                            o.metadata.managed_fields = None;
                            eprintln!(
                                "--- {kind} {}\n{}",
                                o.metadata.name.clone().unwrap_or_default(),
                                serde_yaml::to_string(&o).unwrap_or_default()
                            );
                        }
                    }
                }
                for ns in &namespaces {
                    if let Ok(events) = cluster.events(ns).await {
                        eprintln!("===== events in {ns} =====");
                        for (t, r, n) in events {
                            eprintln!("{t} {r}: {n}");
                        }
                    }
                }
            });
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("===== last lines of {} =====", log.display());
                eprintln!("{}", lines[lines.len().saturating_sub(150)..].join("\n"));
            }
        })
        .join();
    }
}
