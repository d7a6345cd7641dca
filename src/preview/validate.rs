//! Offline admission: check a dbgrant object as the apiserver would before
//! it is stored, so a manifest the cluster would refuse is reported at
//! review time with its field and message.
//!
//! The steps follow the apiserver's order for custom resources
//! (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/>):
//!
//! 1. `null` values are pruned (the CRDs mark no field where null matters,
//!    and for `nullable` fields pruning and keeping are the same here);
//! 2. unknown fields are refused, as `kubectl apply`'s default strict field
//!    validation does;
//! 3. schema defaults are applied;
//! 4. the OpenAPI schema is checked (types, enums, patterns, lengths,
//!    formats, required fields);
//! 5. the `x-kubernetes-validations` CEL rules are evaluated where the
//!    schema puts them, `self` bound to the value at that place. Transition
//!    rules (those that read `oldSelf`) run only when the object already
//!    exists in the cluster and its old value is given.
//!
//! The schemas are the ones `dbgrant crdgen` writes to `crds/`, taken from
//! the same types, so what is checked here is what the cluster enforces.

use serde_json::{Map, Value};

/// One reason an object would be refused, apiserver-style: the field path
/// (`spec.subjects[0]`) and the message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Field path, dotted, with `[i]` for list items.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Admit `object` (the whole manifest) against `schema` (the CRD
/// version's `openAPIV3Schema`): the object as it would be stored
/// (defaults applied, nulls pruned), or every violation found. `old` is
/// the object currently stored under the same name, for transition rules.
pub fn admit(schema: &Value, object: &Value, old: Option<&Value>) -> Result<Value, Vec<Violation>> {
    let mut object = object.clone();
    prune_nulls(&mut object);
    let mut violations = Vec::new();
    // apiVersion, kind and metadata are the apiserver's own, checked apart;
    // what the CRD schema governs is the rest.
    let mut governed = object.clone();
    if let Value::Object(m) = &mut governed {
        for k in ["apiVersion", "kind", "metadata"] {
            m.remove(k);
        }
    }
    unknown_fields(schema, &governed, "", &mut violations);
    default(schema, &mut governed);
    match jsonschema::options().with_draft(jsonschema::Draft::Draft4).should_validate_formats(true).build(schema) {
        Ok(validator) => {
            violations.extend(validator.iter_errors(&governed).map(|e| schema_violation(&e)));
        }
        Err(e) => {
            violations.push(Violation { field: String::new(), message: format!("the CRD schema is unusable: {e}") })
        }
    }
    let old_governed = old.map(|o| {
        let mut o = o.clone();
        prune_nulls(&mut o);
        o
    });
    rules(schema, &governed, old_governed.as_ref(), "", &mut violations);
    if !violations.is_empty() {
        return Err(violations);
    }
    if let (Value::Object(all), Value::Object(spec_and_more)) = (&mut object, governed) {
        all.extend(spec_and_more);
    }
    Ok(object)
}

/// A schema error in the apiserver's words where they differ
/// (`Required value`, `Unsupported value`), else the validator's.
fn schema_violation(e: &jsonschema::ValidationError<'_>) -> Violation {
    let field = field_of(e.instance_path().as_str());
    match e.kind() {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let field = if field == "<root>" { name.to_string() } else { join(&field, name) };
            Violation { field, message: "Required value".into() }
        }
        jsonschema::error::ValidationErrorKind::Enum { options } => {
            let supported: Vec<String> = options.as_array().into_iter().flatten().map(Value::to_string).collect();
            let message = format!("Unsupported value: {}: supported values: {}", e.instance(), supported.join(", "));
            Violation { field, message }
        }
        _ => Violation { field, message: format!("Invalid value: {e}") },
    }
}

fn prune_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(prune_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// `/spec/subjects/0/kind` as `spec.subjects[0].kind`.
fn field_of(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            out = join(&out, &part);
        }
    }
    if out.is_empty() { "<root>".into() } else { out }
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

fn preserves_unknown(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true)
}

/// The schemas of each child of `value`: (path, schema, value).
fn children<'a>(schema: &'a Value, value: &'a Value, path: &str) -> Vec<(String, &'a Value, &'a Value)> {
    let mut out = Vec::new();
    match value {
        Value::Object(m) => {
            if let Some(props) = properties(schema) {
                for (k, v) in m {
                    if let Some(s) = props.get(k) {
                        out.push((join(path, k), s, v));
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for (k, v) in m {
                    out.push((format!("{path}[{k}]"), s, v));
                }
            }
        }
        Value::Array(a) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in a.iter().enumerate() {
                    out.push((format!("{path}[{i}]"), s, v));
                }
            }
        }
        _ => {}
    }
    out
}

fn unknown_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    if preserves_unknown(schema) {
        return;
    }
    if let (Value::Object(m), Some(props)) = (value, properties(schema)) {
        for k in m.keys().filter(|k| !props.contains_key(*k)) {
            out.push(Violation { field: join(path, k), message: "unknown field".into() });
        }
    }
    for (p, s, v) in children(schema, value, path) {
        unknown_fields(s, v, &p, out);
    }
}

fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(m) => {
            if let Some(props) = properties(schema) {
                for (k, s) in props {
                    if let (false, Some(d)) = (m.contains_key(k), s.get("default")) {
                        m.insert(k.clone(), d.clone());
                    }
                }
                for (k, v) in m.iter_mut() {
                    if let Some(s) = props.get(k) {
                        default(s, v);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                m.values_mut().for_each(|v| default(s, v));
            }
        }
        Value::Array(a) => {
            if let Some(s) = schema.get("items") {
                a.iter_mut().for_each(|v| default(s, v));
            }
        }
        _ => {}
    }
}

/// The child of `old` at the same place as `child_path` under `path`, for
/// transition rules: objects by key, lists (atomic in these CRDs) not at
/// all, as the apiserver correlates only map keys and map-type lists.
fn old_child<'a>(old: Option<&'a Value>, path: &str, child_path: &str) -> Option<&'a Value> {
    let key = child_path.strip_prefix(path)?.trim_start_matches('.');
    if key.starts_with('[') {
        return None;
    }
    old?.get(key)
}

fn rules(schema: &Value, value: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Violation>) {
    let here = if path.is_empty() { "<root>" } else { path };
    for rule in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        let Some(expr) = rule.get("rule").and_then(Value::as_str) else { continue };
        let transition = expr.contains("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let message = rule.get("message").and_then(Value::as_str).map(str::to_string);
        match evaluate(expr, value, old.filter(|_| transition)) {
            Ok(true) => {}
            Ok(false) => out.push(Violation {
                field: here.to_string(),
                message: format!("Invalid value: {}", message.unwrap_or_else(|| format!("failed rule: {expr}"))),
            }),
            Err(e) => out.push(Violation {
                field: here.to_string(),
                message: format!("rule {expr:?} could not be evaluated: {e}"),
            }),
        }
    }
    for (p, s, v) in children(schema, value, path) {
        let o = old_child(old, path, &p);
        rules(s, v, o, &p, out);
    }
}

fn evaluate(expr: &str, value: &Value, old: Option<&Value>) -> Result<bool, String> {
    let program = cel::Program::compile(expr).map_err(|e| e.to_string())?;
    let mut ctx = cel::Context::default();
    ctx.add_variable("self", cel::to_value(value).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if let Some(old) = old {
        ctx.add_variable("oldSelf", cel::to_value(old).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    match program.execute(&ctx).map_err(|e| e.to_string())? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!("the rule gave {other:?}, not a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["targetRef"],
                    "properties": {
                        "targetRef": {
                            "type": "object",
                            "properties": {"name": {"type": "string", "maxLength": 5}},
                            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "targetRef is immutable"}]
                        },
                        "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                                "x-kubernetes-validations": [{"rule": "has(self.a) != has(self.b)", "message": "set a or b"}]
                            }
                        }
                    }
                }
            }
        })
    }

    #[test]
    fn defaults_fill_in_and_a_valid_object_is_admitted() {
        let obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"}, "spec": {"targetRef": {"name": "t"}, "items": [{"a": "1"}], "x": null}});
        let stored = admit(&schema(), &obj, None).unwrap();
        assert_eq!(stored["spec"]["mode"], "A");
        assert_eq!(stored["metadata"]["name"], "n");
        assert!(stored["spec"].get("x").is_none(), "nulls are pruned");
    }

    #[test]
    fn every_violation_is_reported_with_its_field() {
        let obj = json!({"spec": {"targetRef": {"name": "toolong"}, "mode": "C", "extra": 1, "items": [{"a": "1", "b": "2"}]}});
        let v = admit(&schema(), &obj, None).unwrap_err();
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert!(fields.contains(&"spec.extra"), "{v:?}");
        assert!(fields.contains(&"spec.targetRef.name"), "{v:?}");
        assert!(fields.contains(&"spec.mode"), "{v:?}");
        let cel = v.iter().find(|v| v.field == "spec.items[0]").expect("the CEL rule on list items runs");
        assert_eq!(cel.message, "Invalid value: set a or b");
        assert!(!v.iter().any(|v| v.message.contains("immutable")), "no transition rule without an old object");
    }

    #[test]
    fn transition_rules_compare_with_the_stored_object() {
        let old = json!({"spec": {"targetRef": {"name": "a"}}});
        let same = json!({"spec": {"targetRef": {"name": "a"}}});
        assert!(admit(&schema(), &same, Some(&old)).is_ok());
        let moved = json!({"spec": {"targetRef": {"name": "b"}}});
        let v = admit(&schema(), &moved, Some(&old)).unwrap_err();
        assert_eq!(
            v,
            vec![Violation { field: "spec.targetRef".into(), message: "Invalid value: targetRef is immutable".into() }]
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let v = admit(&schema(), &json!({"spec": {}}), None).unwrap_err();
        assert_eq!(v, vec![Violation { field: "spec.targetRef".into(), message: "Required value".into() }]);
    }
}

#[cfg(test)]
mod crd_rules {
    use serde_json::Value;

    /// Every rule in dbgrant's CRDs compiles with the CEL crate used here:
    /// a rule it could not parse would be skipped as an error at plan time.
    #[test]
    fn every_rule_in_the_crds_compiles() {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                        out.extend(rules.iter().filter_map(|r| r.get("rule")?.as_str().map(str::to_string)));
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut rules = Vec::new();
        for (_, crd) in crate::api::crdgen::all() {
            walk(&serde_json::to_value(&crd).unwrap(), &mut rules);
        }
        assert!(rules.len() >= 15, "found only {} rules", rules.len());
        for r in rules {
            assert!(cel::Program::compile(&r).is_ok(), "CEL rule {r:?} does not compile");
        }
    }
}
