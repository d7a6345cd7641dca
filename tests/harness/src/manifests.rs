//! Manifests as JSON values: multi-document YAML files, the examples.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// Parse multi-document YAML into JSON values, skipping empty documents.
pub fn parse(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(de).context("parsing YAML")?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Read and parse one YAML file.
pub fn load(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `deploy/examples/<file>`.
pub fn example(file: &str) -> Result<Vec<Value>> {
    load(&crate::paths::repo_root().join("deploy/examples").join(file))
}

/// `kind` of a manifest.
pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// `metadata.name` of a manifest.
pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// The first document of `kind` named `name`, mutably.
pub fn find_mut<'a>(docs: &'a mut [Value], kind_: &str, name_: &str) -> Option<&'a mut Value> {
    docs.iter_mut().find(|d| kind(d) == kind_ && name(d) == name_)
}
