//! The set of dbgrant objects a plan reasons about, and admitting
//! manifests into it as the apiserver would (see [`super::validate`]).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResourceExt, Resource};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{manifests::Document, validate};
use crate::api::{CosmosRoleBinding, CosmosRoleDefinition, CosmosTarget, MongoRoleBinding, MongoTarget};

/// Every dbgrant object of one state (the cluster's, or the cluster's with
/// the manifests applied), by kind and `namespace/name` (or `name`).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub mongo_targets: BTreeMap<String, MongoTarget>,
    pub mongo_bindings: BTreeMap<String, MongoRoleBinding>,
    pub cosmos_targets: BTreeMap<String, CosmosTarget>,
    pub cosmos_definitions: BTreeMap<String, CosmosRoleDefinition>,
    pub cosmos_bindings: BTreeMap<String, CosmosRoleBinding>,
}

impl Objects {
    /// These objects with `changes` applied: an object in `changes`
    /// replaces the one with the same kind, namespace and name.
    pub fn overlay(&self, changes: &Objects) -> Objects {
        fn over<K: Clone>(a: &BTreeMap<String, K>, b: &BTreeMap<String, K>) -> BTreeMap<String, K> {
            let mut out = a.clone();
            out.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
            out
        }
        Objects {
            mongo_targets: over(&self.mongo_targets, &changes.mongo_targets),
            mongo_bindings: over(&self.mongo_bindings, &changes.mongo_bindings),
            cosmos_targets: over(&self.cosmos_targets, &changes.cosmos_targets),
            cosmos_definitions: over(&self.cosmos_definitions, &changes.cosmos_definitions),
            cosmos_bindings: over(&self.cosmos_bindings, &changes.cosmos_bindings),
        }
    }

    /// `Kind/namespace/name` of every object that is new or whose spec
    /// differs from the object of the same name in `baseline`.
    pub fn changed_from(&self, baseline: &Objects) -> BTreeSet<String> {
        fn changed<K: Resource<DynamicType = ()> + Serialize>(
            mine: &BTreeMap<String, K>,
            theirs: &BTreeMap<String, K>,
            out: &mut BTreeSet<String>,
        ) {
            let spec = |o: &K| serde_json::to_value(o).ok().and_then(|v| v.get("spec").cloned());
            for (k, o) in mine {
                if theirs.get(k).is_none_or(|t| spec(t) != spec(o)) {
                    out.insert(format!("{}/{k}", K::kind(&())));
                }
            }
        }
        let mut out = BTreeSet::new();
        changed(&self.mongo_targets, &baseline.mongo_targets, &mut out);
        changed(&self.mongo_bindings, &baseline.mongo_bindings, &mut out);
        changed(&self.cosmos_targets, &baseline.cosmos_targets, &mut out);
        changed(&self.cosmos_definitions, &baseline.cosmos_definitions, &mut out);
        changed(&self.cosmos_bindings, &baseline.cosmos_bindings, &mut out);
        out
    }
}

/// A manifest the apiserver would refuse, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Invalid {
    /// `file#document`.
    pub source: String,
    /// `Kind/namespace/name` as far as the manifest says.
    pub object: String,
    pub violations: Vec<validate::Violation>,
}

/// Admit `documents` against the CRDs, on top of `current` (the cluster's
/// objects, for transition rules and creation times). `namespace` is the
/// namespace of namespaced manifests that name none, as `kubectl apply -n`
/// would use. Returns the admitted objects and the refused manifests.
pub fn admit(documents: &[Document], current: &Objects, namespace: &str, now: Timestamp) -> (Objects, Vec<Invalid>) {
    let mut out = Objects::default();
    let mut invalid = Vec::new();
    for doc in documents {
        let kind = doc.value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = doc.value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let name = match doc.value.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        let result = match kind.as_str() {
            "MongoTarget" => admit_one(doc, &current.mongo_targets, &mut out.mongo_targets, namespace, now),
            "MongoRoleBinding" => admit_one(doc, &current.mongo_bindings, &mut out.mongo_bindings, namespace, now),
            "CosmosTarget" => admit_one(doc, &current.cosmos_targets, &mut out.cosmos_targets, namespace, now),
            "CosmosRoleDefinition" => {
                admit_one(doc, &current.cosmos_definitions, &mut out.cosmos_definitions, namespace, now)
            }
            "CosmosRoleBinding" => admit_one(doc, &current.cosmos_bindings, &mut out.cosmos_bindings, namespace, now),
            other => Err(vec![validate::Violation {
                field: "kind".into(),
                message: format!("dbgrant.io has no kind {other:?}"),
            }]),
        };
        if let Err(violations) = result {
            invalid.push(Invalid { source: doc.source.clone(), object: format!("{kind}/{name}"), violations });
        }
    }
    (out, invalid)
}

fn admit_one<K>(
    doc: &Document,
    current: &BTreeMap<String, K>,
    admitted: &mut BTreeMap<String, K>,
    namespace: &str,
    now: Timestamp,
) -> Result<(), Vec<validate::Violation>>
where
    K: CustomResourceExt + Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone,
{
    let violation = |field: &str, message: String| vec![validate::Violation { field: field.into(), message }];
    let api_version = doc.value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api_version != K::api_version(&()) {
        return Err(violation(
            "apiVersion",
            format!("{api_version:?} does not serve {}; use {}", K::kind(&()), K::api_version(&())),
        ));
    }
    let mut value = doc.value.clone();
    let namespaced = K::crd().spec.scope == "Namespaced";
    let meta = value
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| violation("metadata", "is required".into()))?;
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    if name.is_empty() {
        return Err(violation("metadata.name", "is required (generateName cannot be planned)".into()));
    }
    if let Some(problem) = dns_subdomain_problem(&name) {
        return Err(violation("metadata.name", format!("{name:?} {problem}")));
    }
    match (namespaced, meta.get("namespace").and_then(Value::as_str)) {
        (true, None) => {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
        (false, Some(_)) => {
            meta.remove("namespace");
        }
        _ => {}
    }
    let key = match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.clone(),
    };
    let old = current.get(&key);
    // The apiserver sets the creation time, and expiry by duration counts
    // from it: an object already in the cluster keeps its own, a manifest
    // read back from a cluster (`kubectl get -o yaml`) its recorded one, a
    // new object gets `now`.
    let created = match old.and_then(|o| o.meta().creation_timestamp.clone()) {
        Some(t) => serde_json::to_value(&t).unwrap_or(Value::Null),
        None => meta
            .get("creationTimestamp")
            .cloned()
            .unwrap_or_else(|| serde_json::to_value(Time(now)).unwrap_or(Value::Null)),
    };
    meta.insert("creationTimestamp".into(), created);
    meta.remove("deletionTimestamp");
    let old_value = old.and_then(|o| serde_json::to_value(o).ok());
    let schema = schema_of::<K>().ok_or_else(|| violation("", "the CRD has no schema".into()))?;
    let stored = validate::admit(&schema, &value, old_value.as_ref())?;
    let obj: K = serde_json::from_value(stored).map_err(|e| violation("spec", format!("cannot be read: {e}")))?;
    if admitted.contains_key(&key) {
        return Err(violation("metadata.name", format!("{} {key} is defined twice in the manifests", K::kind(&()))));
    }
    admitted.insert(key, obj);
    Ok(())
}

fn schema_of<K: CustomResourceExt>() -> Option<Value> {
    let crd = K::crd();
    let version = crd.spec.versions.into_iter().find(|v| v.storage)?;
    serde_json::to_value(version.schema?.open_api_v3_schema?).ok()
}

/// Why `name` is not a DNS subdomain (RFC 1123) as object names must be.
fn dns_subdomain_problem(name: &str) -> Option<&'static str> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 {
        Some("is longer than 253 characters")
    } else if !name.split('.').all(label_ok) {
        Some("is not a lower-case RFC 1123 subdomain (a-z, 0-9, '-' and '.', starting and ending alphanumeric)")
    } else {
        None
    }
}
