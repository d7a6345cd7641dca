//! Reading manifests for `dbgrant plan`: files, directories (recursively,
//! `.yaml`, `.yml` and `.json`), or standard input (`-`), each a stream of
//! YAML documents such as `kustomize build` or `helm template` print.
//! `kind: List` documents are opened. Documents of other API groups are
//! counted and skipped: a plan reads whole GitOps trees.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;

/// The API group of dbgrant's kinds.
pub const GROUP: &str = "dbgrant.io";

/// One dbgrant document and where it came from.
#[derive(Clone, Debug)]
pub struct Document {
    /// `path#n` (n counts documents in the file from 1), or `stdin#n`.
    pub source: String,
    pub value: Value,
}

/// What reading the inputs found.
#[derive(Debug, Default)]
pub struct Inputs {
    /// dbgrant documents, in input order.
    pub documents: Vec<Document>,
    /// Documents of other groups, skipped.
    pub skipped: usize,
}

/// Read every input. A file that cannot be read or parsed is an error:
/// a plan over part of a change would mislead.
pub fn read(inputs: &[PathBuf]) -> anyhow::Result<Inputs> {
    let mut out = Inputs::default();
    for input in inputs {
        if input.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
            parse("stdin", &text, &mut out)?;
        } else if input.is_dir() {
            for file in files_under(input)? {
                let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                parse(&file.display().to_string(), &text, &mut out)?;
            }
        } else {
            let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
            parse(&input.display().to_string(), &text, &mut out)?;
        }
    }
    Ok(out)
}

fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Parse one stream of YAML documents from `origin`.
pub fn parse(origin: &str, text: &str, out: &mut Inputs) -> anyhow::Result<()> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let source = format!("{origin}#{}", i + 1);
        let value = Value::deserialize(doc).with_context(|| format!("{source} is not valid YAML"))?;
        collect(&source, value, out)?;
    }
    Ok(())
}

fn collect(source: &str, value: Value, out: &mut Inputs) -> anyhow::Result<()> {
    match &value {
        Value::Null => Ok(()),
        Value::Object(m) => {
            let api_version = m.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
            let kind = m.get("kind").and_then(Value::as_str).unwrap_or_default();
            if kind == "List" || (kind.ends_with("List") && api_version == "v1") {
                for (i, item) in m.get("items").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    collect(&format!("{source}.items[{i}]"), item.clone(), out)?;
                }
            } else if api_version.split('/').next() == Some(GROUP) {
                out.documents.push(Document { source: source.to_string(), value });
            } else {
                out.skipped += 1;
            }
            Ok(())
        }
        _ => bail!("{source} is not a Kubernetes object (a YAML mapping with apiVersion and kind)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_streams_lists_and_other_groups() {
        let text = "\
apiVersion: dbgrant.io/v1alpha1
kind: MongoTarget
metadata: {name: a}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: dbgrant.io/v1alpha1
  kind: MongoRoleBinding
  metadata: {name: b, namespace: n}
";
        let mut out = Inputs::default();
        parse("x.yaml", text, &mut out).unwrap();
        let sources: Vec<&str> = out.documents.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(sources, ["x.yaml#1", "x.yaml#4.items[0]"]);
        assert_eq!(out.skipped, 1);
        assert!(parse("y.yaml", "- a\n- b\n", &mut Inputs::default()).is_err());
        assert!(parse("z.yaml", "a: [\n", &mut Inputs::default()).is_err());
    }
}
