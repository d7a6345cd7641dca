//! Update documents: a replacement, or the operators `$set`, `$unset`,
//! `$setOnInsert` and `$inc` (paths checked, conflicting ones refused),
//! applied to a document; and the document an upsert starts from.

use super::filter::{number, values_at};
use super::unmodelled;
use crate::mongo::error::{CommandError, CommandResult, codes};
use crate::mongo::umc::args::type_name;
use bson::{Bson, Document};

pub(super) enum UpdateSpec {
    Replace(Document),
    Ops(Vec<(String, Document)>),
}

const UNMODELLED_MODIFIERS: &[&str] =
    &["$push", "$pull", "$pullAll", "$addToSet", "$pop", "$rename", "$min", "$max", "$mul", "$currentDate", "$bit"];

pub(super) fn parse_update(u: &Bson) -> CommandResult<UpdateSpec> {
    let d = match u {
        Bson::Document(d) => d,
        Bson::Array(_) => return Err(unmodelled("a pipeline-style update")),
        other => {
            return Err(CommandError::new(
                codes::TYPE_MISMATCH,
                format!(
                    "BSON field 'update.updates.u' is the wrong type '{}', expected type 'object'",
                    type_name(other)
                ),
            ));
        }
    };
    if !d.keys().next().is_some_and(|k| k.starts_with('$')) {
        if let Some(k) = d.keys().find(|k| k.starts_with('$')) {
            return Err(CommandError::new(
                codes::DOLLAR_PREFIXED_FIELD_NAME,
                format!(
                    "The dollar ($) prefixed field '{k}' in '{k}' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith."
                ),
            ));
        }
        return Ok(UpdateSpec::Replace(d.clone()));
    }
    let mut ops = Vec::new();
    let mut paths: Vec<&str> = Vec::new();
    for (op, fields) in d {
        match op.as_str() {
            "$set" | "$unset" | "$setOnInsert" | "$inc" => {}
            m if UNMODELLED_MODIFIERS.contains(&m) => return Err(unmodelled(format!("the {m} update modifier"))),
            m => {
                return Err(CommandError::new(
                    codes::FAILED_TO_PARSE,
                    format!(
                        "Unknown modifier: {m}. Expected a valid update modifier or pipeline-style update specified as an array"
                    ),
                ));
            }
        }
        let Bson::Document(fields) = fields else {
            return Err(CommandError::new(
                codes::FAILED_TO_PARSE,
                format!(
                    "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{op}: {fields}}}",
                    type_name(fields)
                ),
            ));
        };
        for path in fields.keys() {
            if path.is_empty() || path.split('.').any(|p| p.is_empty() || p.starts_with('$')) {
                return Err(CommandError::bad_value(format!("invalid update path '{path}'")));
            }
            if let Some(other) = paths.iter().find(|p| conflicts(p, path)) {
                return Err(CommandError::new(
                    codes::CONFLICTING_UPDATE_OPERATORS,
                    format!("Updating the path '{path}' would create a conflict at '{}'", shorter(other, path)),
                ));
            }
            paths.push(path);
        }
        ops.push((op.clone(), fields.clone()));
    }
    Ok(UpdateSpec::Ops(ops))
}

fn conflicts(a: &str, b: &str) -> bool {
    a == b
        || a.strip_prefix(b).is_some_and(|r| r.starts_with('.'))
        || b.strip_prefix(a).is_some_and(|r| r.starts_with('.'))
}

fn shorter<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.len() <= b.len() { a } else { b }
}

pub(super) fn apply_ops(doc: &mut Document, spec: &UpdateSpec, inserting: bool) -> CommandResult<()> {
    let UpdateSpec::Ops(ops) = spec else { return Ok(()) };
    for (op, fields) in ops {
        for (path, value) in fields {
            match op.as_str() {
                "$set" => set_path(doc, path, value.clone())?,
                "$setOnInsert" if inserting => set_path(doc, path, value.clone())?,
                "$setOnInsert" => {}
                "$unset" => unset_path(doc, path),
                "$inc" => {
                    let Some(by) = number(value) else {
                        return Err(CommandError::new(
                            codes::TYPE_MISMATCH,
                            format!("Cannot increment with non-numeric argument: {{{path}: {value}}}"),
                        ));
                    };
                    let current = values_at(doc, path).first().map(|v| (*v).clone());
                    let sum = match current.as_ref().map(|c| (c, number(c))) {
                        None => value.clone(),
                        Some((_, Some(have))) => add(have, by, current.as_ref().unwrap_or(&Bson::Null), value),
                        Some((c, None)) => {
                            return Err(CommandError::new(
                                codes::TYPE_MISMATCH,
                                format!(
                                    "Cannot apply $inc to a value of non-numeric type. The field '{path}' has non-numeric type {}",
                                    type_name(c)
                                ),
                            ));
                        }
                    };
                    set_path(doc, path, sum)?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `a + b` with the server's type promotion (int → long on overflow, any
/// double → double).
fn add(a: (Option<i64>, f64), b: (Option<i64>, f64), a_bson: &Bson, b_bson: &Bson) -> Bson {
    match (a, b) {
        ((Some(x), _), (Some(y), _)) => {
            let both_int = matches!(a_bson, Bson::Int32(_)) && matches!(b_bson, Bson::Int32(_));
            match x.checked_add(y) {
                Some(s) if both_int => i32::try_from(s).map(Bson::Int32).unwrap_or(Bson::Int64(s)),
                Some(s) => Bson::Int64(s),
                None => Bson::Double(x as f64 + y as f64),
            }
        }
        ((_, x), (_, y)) => Bson::Double(x + y),
    }
}

fn set_path(doc: &mut Document, path: &str, value: Bson) -> CommandResult<()> {
    let mut parts = path.split('.').peekable();
    let mut current = doc;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part, value);
            return Ok(());
        }
        let entry = current.entry(part.to_string()).or_insert_with(|| Bson::Document(Document::new()));
        current = match entry {
            Bson::Document(d) => d,
            Bson::Array(_) => return Err(unmodelled(format!("updating array elements ('{path}')"))),
            other => {
                return Err(CommandError::new(
                    codes::PATH_NOT_VIABLE,
                    format!("Cannot create field in element {{{part}: {other}}}"),
                ));
            }
        };
    }
    Ok(())
}

fn unset_path(doc: &mut Document, path: &str) {
    match path.split_once('.') {
        None => {
            doc.remove(path);
        }
        Some((first, rest)) => {
            if let Some(Bson::Document(d)) = doc.get_mut(first) {
                unset_path(d, rest);
            }
        }
    }
}

/// The document an upsert starts from: the filter's equality conditions.
pub(super) fn seed_from_query(q: &Document) -> Document {
    let mut seed = Document::new();
    fn walk(q: &Document, seed: &mut Document) {
        for (k, v) in q {
            if k == "$and" {
                if let Bson::Array(items) = v {
                    for item in items {
                        if let Bson::Document(d) = item {
                            walk(d, seed);
                        }
                    }
                }
                continue;
            }
            if k.starts_with('$') {
                continue;
            }
            let value = match v {
                Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => match d.get("$eq") {
                    Some(v) => v.clone(),
                    None => continue,
                },
                other => other.clone(),
            };
            let _ = set_path(seed, k, value);
        }
    }
    walk(q, &mut seed);
    seed
}
