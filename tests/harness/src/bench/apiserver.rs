//! What a scenario cost the apiserver in requests: its own count of the
//! requests it served (`apiserver_request_total` on its `/metrics`, by
//! verb, resource and subresource), read before and after, minus the
//! requests the benchmark itself sent. What is left is what the operator
//! asked of the apiserver — the figure users of a shared cluster care
//! about.
//!
//! The Prometheus text format is parsed here by hand: one metric, a fixed
//! label syntax the apiserver writes (`name{k="v",…} value`), and no
//! escaping in the labels kept (verbs and resource names); a general
//! parser crate would add a dependency for twenty lines.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// The metric read.
const METRIC: &str = "apiserver_request_total";

/// Verbs that change something (the apiserver's spelling: server-side apply
/// is `APPLY`, a merge or JSON patch `PATCH`).
const WRITES: &[&str] = &["POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"];

/// A request's kind: (verb, resource, subresource), e.g. `("APPLY",
/// "mongorolebindings", "status")`.
pub type Key = (String, String, String);

/// Requests served, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests(pub BTreeMap<Key, u64>);

impl Requests {
    /// The apiserver's counters now (needs a client allowed `GET /metrics`).
    pub async fn scrape(client: &kube::Client) -> Result<Self> {
        let request = http::Request::get("/metrics").body(Vec::new()).context("building GET /metrics")?;
        let text = client.request_text(request).await.context("GET /metrics from the apiserver")?;
        Ok(Self::parse(&text))
    }

    /// Every `apiserver_request_total` sample in Prometheus text, summed
    /// over the labels not kept (code, scope, group, version, component,
    /// dry_run).
    pub fn parse(text: &str) -> Self {
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(METRIC).and_then(|r| r.strip_prefix('{')) else { continue };
            let Some((labels, value)) = rest.rsplit_once('}') else { continue };
            let Ok(value) = value.trim().parse::<f64>() else { continue };
            let label = |name: &str| {
                labels
                    .split("\",")
                    .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix("=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let key = (label("verb"), label("resource"), label("subresource"));
            *counts.entry(key).or_insert(0) += value as u64;
        }
        Requests(counts)
    }

    /// What was served since `before`.
    pub fn since(&self, before: &Requests) -> Requests {
        let mut delta = BTreeMap::new();
        for (k, v) in &self.0 {
            let d = v.saturating_sub(before.0.get(k).copied().unwrap_or(0));
            if d > 0 {
                delta.insert(k.clone(), d);
            }
        }
        Requests(delta)
    }

    /// Count `n` more requests of one kind.
    pub fn add(&mut self, verb: &str, resource: &str, subresource: &str, n: u64) {
        if n > 0 {
            *self.0.entry((verb.into(), resource.into(), subresource.into())).or_insert(0) += n;
        }
    }
}

/// Served requests attributed: `served` minus the benchmark's `own`, as
/// rows by kind and as operator writes and reads per binding (leader
/// election's Lease renewals depend on time, not on bindings: they are
/// counted apart). Watches are
/// counted by the apiserver when they end, so a watch still open at the
/// second reading is not in it (reads are a lower bound; writes are
/// exact).
pub fn report(served: &Requests, own: &Requests, bindings: usize) -> Value {
    let (mut writes, mut reads, mut leases) = (0u64, 0u64, 0u64);
    let mut rows = Vec::new();
    for ((verb, resource, sub), &total) in &served.0 {
        let bench = own.0.get(&(verb.clone(), resource.clone(), sub.clone())).copied().unwrap_or(0).min(total);
        let operator = total - bench;
        if resource == "leases" {
            leases += operator;
        } else if WRITES.contains(&verb.as_str()) {
            writes += operator;
        } else {
            reads += operator;
        }
        rows.push(json!({
            "verb": verb, "resource": resource, "subresource": sub,
            "served": total, "benchmark": bench, "operator": operator,
        }));
    }
    let per = |x: u64| if bindings > 0 { (x as f64 / bindings as f64 * 1000.0).round() / 1000.0 } else { 0.0 };
    json!({
        "operatorWrites": writes,
        "operatorReads": reads,
        "operatorLeaseRequests": leases,
        "operatorWritesPerBinding": per(writes),
        "operatorReadsPerBinding": per(reads),
        "byKind": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="dbgrant.io",resource="mongorolebindings",scope="resource",subresource="",verb="APPLY",version="v1alpha1"} 10
apiserver_request_total{code="201",component="apiserver",dry_run="",group="dbgrant.io",resource="mongorolebindings",scope="resource",subresource="",verb="APPLY",version="v1alpha1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="dbgrant.io",resource="mongorolebindings",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="events",scope="namespace",subresource="",verb="POST",version="v1"} 2
apiserver_request_total{code="0",component="apiserver",dry_run="",group="dbgrant.io",resource="mongorolebindings",scope="cluster",subresource="",verb="WATCH",version="v1alpha1"} 1.5e+00
apiserver_request_duration_seconds_bucket{verb="GET",le="0.1"} 99
"#;

    fn key(verb: &str, resource: &str, sub: &str) -> Key {
        (verb.into(), resource.into(), sub.into())
    }

    #[test]
    fn samples_are_summed_over_codes_and_scopes_and_other_metrics_ignored() {
        let r = Requests::parse(SAMPLE);
        assert_eq!(r.0.get(&key("APPLY", "mongorolebindings", "")), Some(&15));
        assert_eq!(r.0.get(&key("APPLY", "mongorolebindings", "status")), Some(&7));
        assert_eq!(r.0.get(&key("POST", "events", "")), Some(&2));
        assert_eq!(r.0.get(&key("WATCH", "mongorolebindings", "")), Some(&1));
        assert_eq!(r.0.len(), 4, "{r:?}");
    }

    #[test]
    fn the_operator_is_what_was_served_minus_the_benchmarks_own() {
        let before = Requests::parse(SAMPLE);
        let mut after = before.clone();
        after.add("APPLY", "mongorolebindings", "", 100);
        after.add("PATCH", "mongorolebindings", "", 100);
        after.add("APPLY", "mongorolebindings", "status", 100);
        after.add("WATCH", "mongorolebindings", "", 2);
        after.add("PUT", "leases", "", 3);
        let served = after.since(&before);
        let mut own = Requests::default();
        own.add("APPLY", "mongorolebindings", "", 100);
        own.add("WATCH", "mongorolebindings", "", 1);
        let r = report(&served, &own, 100);
        assert_eq!(r["operatorWrites"], 200);
        assert_eq!(r["operatorWritesPerBinding"], 2.0);
        assert_eq!(r["operatorReads"], 1);
        assert_eq!(r["operatorLeaseRequests"], 3);
        assert_eq!(r["byKind"].as_array().unwrap().len(), 5);
    }
}
