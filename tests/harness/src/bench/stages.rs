//! Where a single change's time goes inside the operator: its own
//! `dbgrant_reconcile_stage_seconds` (queued, finalizer, lock, backend,
//! status) and `dbgrant_reconcile_duration_seconds`, read from its
//! `/metrics` before and after a phase. Per change, as means: the
//! histograms keep sums and counts, not each sample.
//!
//! What the operator cannot see is the rest: the mean apply-to-Ready time
//! minus the queue and the reconcile, i.e. the apiserver serving the
//! apply, and the watch carrying the change to the operator and the status
//! back to the benchmark.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Sums and counts of one kind's stage histograms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stages {
    /// `stage → (seconds, samples)`; the whole reconcile is `reconcile`.
    pub by_stage: BTreeMap<String, (f64, u64)>,
}

const STAGE: &str = "dbgrant_reconcile_stage_seconds";
const RECONCILE: &str = "dbgrant_reconcile_duration_seconds";

impl Stages {
    /// `kind`'s samples in an OpenMetrics text exposition.
    pub fn parse(text: &str, kind: &str) -> Self {
        let mut by_stage: BTreeMap<String, (f64, u64)> = BTreeMap::new();
        let kind_label = format!("kind=\"{kind}\"");
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Some((name, labels)) = series.split_once('{') else { continue };
            if !labels.contains(&kind_label) {
                continue;
            }
            let Ok(value) = value.parse::<f64>() else { continue };
            let (metric, field) = match name.rsplit_once('_') {
                Some((m, f @ ("sum" | "count"))) => (m, f),
                _ => continue,
            };
            let stage = match metric {
                RECONCILE => "reconcile".to_string(),
                STAGE => match labels.split("stage=\"").nth(1).and_then(|r| r.split('"').next()) {
                    Some(s) => s.to_string(),
                    None => continue,
                },
                _ => continue,
            };
            let entry = by_stage.entry(stage).or_default();
            if field == "sum" {
                entry.0 += value;
            } else {
                entry.1 += value as u64;
            }
        }
        Stages { by_stage }
    }

    /// What was recorded since `before`.
    pub fn since(&self, before: &Stages) -> Stages {
        let by_stage = self
            .by_stage
            .iter()
            .map(|(s, (sum, n))| {
                let (s0, n0) = before.by_stage.get(s).copied().unwrap_or_default();
                (s.clone(), ((sum - s0).max(0.0), n.saturating_sub(n0)))
            })
            .filter(|(_, (_, n))| *n > 0)
            .collect();
        Stages { by_stage }
    }

    /// Milliseconds per change in each stage over `changes` changes whose
    /// mean end-to-end time was `mean_ms`, with how many times each stage
    /// ran per change, and what the operator did not see.
    pub fn to_json(&self, changes: usize, mean_ms: f64) -> Value {
        let n = changes.max(1) as f64;
        let ms = |s: &str| self.by_stage.get(s).map(|(sum, _)| sum * 1000.0 / n).unwrap_or(0.0);
        let mut stages = serde_json::Map::new();
        for (stage, (_, count)) in &self.by_stage {
            stages.insert(
                stage.clone(),
                json!({ "msPerChange": round2(ms(stage)), "timesPerChange": round2(*count as f64 / n) }),
            );
        }
        let inside: f64 = ["finalizer", "lock", "backend", "status"].iter().map(|s| ms(s)).sum();
        json!({
            "stages": stages,
            "reconcileOtherMs": round2((ms("reconcile") - inside).max(0.0)),
            "outsideOperatorMs": round2((mean_ms - ms("queued") - ms("reconcile")).max(0.0)),
        })
    }
}

/// Sums and counts of `metric`'s histogram series whose labels include
/// every one of `require`, keyed by the values of the `keep` labels
/// (`verb=APPLY,resource=…`).
pub fn histograms(text: &str, metric: &str, require: &[&str], keep: &[&str]) -> BTreeMap<String, (f64, u64)> {
    let mut out: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Some((name, labels)) = series.split_once('{') else { continue };
        let field = match name.strip_prefix(metric) {
            Some("_sum") => "sum",
            Some("_count") => "count",
            _ => continue,
        };
        if !require.iter().all(|r| labels.contains(r)) {
            continue;
        }
        let Ok(value) = value.parse::<f64>() else { continue };
        let key: Vec<String> = keep
            .iter()
            .filter_map(|k| {
                let v = labels.split(&format!("{k}=\"")).nth(1)?.split('"').next()?;
                Some(format!("{k}={v}"))
            })
            .collect();
        let entry = out.entry(key.join(",")).or_default();
        if field == "sum" {
            entry.0 += value;
        } else {
            entry.1 += value as u64;
        }
    }
    out
}

/// Mean milliseconds of each series between two [`histograms`] readings.
pub fn mean_ms_since(after: &BTreeMap<String, (f64, u64)>, before: &BTreeMap<String, (f64, u64)>) -> Value {
    let mut out = serde_json::Map::new();
    for (k, (sum, n)) in after {
        let (s0, n0) = before.get(k).copied().unwrap_or_default();
        let dn = n.saturating_sub(n0);
        if dn > 0 {
            out.insert(k.clone(), json!({ "count": dn, "meanMs": round2((sum - s0) * 1000.0 / dn as f64) }));
        }
    }
    Value::Object(out)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP dbgrant_reconcile_stage_seconds x
dbgrant_reconcile_stage_seconds_sum{kind="MongoRoleBinding",stage="backend"} 1.0
dbgrant_reconcile_stage_seconds_count{kind="MongoRoleBinding",stage="backend"} 10
dbgrant_reconcile_stage_seconds_bucket{kind="MongoRoleBinding",stage="backend",le="0.001"} 3
dbgrant_reconcile_duration_seconds_sum{kind="MongoRoleBinding"} 2.0
dbgrant_reconcile_duration_seconds_count{kind="MongoRoleBinding"} 10
dbgrant_reconcile_duration_seconds_sum{kind="MongoTarget"} 9.0
dbgrant_reconcile_duration_seconds_count{kind="MongoTarget"} 3
"#;

    #[test]
    fn a_phase_is_the_difference_per_change() {
        let after = BEFORE
            .replace("stage=\"backend\"} 1.0", "stage=\"backend\"} 1.2")
            .replace("stage=\"backend\"} 10", "stage=\"backend\"} 20")
            .replace("\"MongoRoleBinding\"} 2.0", "\"MongoRoleBinding\"} 2.5")
            .replace("\"MongoRoleBinding\"} 10\n", "\"MongoRoleBinding\"} 20\n")
            + "dbgrant_reconcile_stage_seconds_sum{kind=\"MongoRoleBinding\",stage=\"queued\"} 0.1\n\
               dbgrant_reconcile_stage_seconds_count{kind=\"MongoRoleBinding\",stage=\"queued\"} 10\n";
        let kind = "MongoRoleBinding";
        let delta = Stages::parse(&after, kind).since(&Stages::parse(BEFORE, kind));
        let j = delta.to_json(10, 100.0);
        assert_eq!(j["stages"]["backend"]["msPerChange"], 20.0);
        assert_eq!(j["stages"]["backend"]["timesPerChange"], 1.0);
        assert_eq!(j["stages"]["reconcile"]["msPerChange"], 50.0);
        assert_eq!(j["stages"]["queued"]["msPerChange"], 10.0);
        assert_eq!(j["reconcileOtherMs"], 30.0);
        assert_eq!(j["outsideOperatorMs"], 40.0, "100 - 10 queued - 50 reconcile");
        assert!(Stages::parse(BEFORE, "MongoTarget").by_stage["reconcile"] == (9.0, 3));
    }

    #[test]
    fn apiserver_request_means_by_verb() {
        let text = |sum: f64, n: u64| {
            format!(
                "apiserver_request_duration_seconds_sum{{component=\"apiserver\",resource=\"mongorolebindings\",subresource=\"\",verb=\"APPLY\",version=\"v1alpha1\"}} {sum}\n\
                 apiserver_request_duration_seconds_count{{component=\"apiserver\",resource=\"mongorolebindings\",subresource=\"\",verb=\"APPLY\",version=\"v1alpha1\"}} {n}\n\
                 apiserver_request_duration_seconds_count{{component=\"apiserver\",resource=\"leases\",subresource=\"\",verb=\"PUT\",version=\"v1\"}} 7\n"
            )
        };
        let pick = |t: &str| {
            histograms(
                t,
                "apiserver_request_duration_seconds",
                &["resource=\"mongorolebindings\""],
                &["verb", "subresource"],
            )
        };
        let delta = mean_ms_since(&pick(&text(0.5, 20)), &pick(&text(0.3, 10)));
        assert_eq!(delta, json!({ "verb=APPLY,subresource=": { "count": 10, "meanMs": 20.0 } }));
    }
}
