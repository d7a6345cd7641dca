//! Write commands: `insert`, `update` and `delete`, statement by
//! statement, with `_id` unique per collection and per-statement failures
//! in `writeErrors`.

use super::filter::{compile, equal};
use super::update::{UpdateSpec, apply_ops, parse_update, seed_from_query};
use super::{DocumentStore, namespace, refuse_unmodelled};
use crate::mongo::error::{CommandError, CommandResult, codes};
use crate::mongo::umc::args::{Args, truthy};
use bson::{Bson, Document, doc, oid::ObjectId};

/// A per-statement failure, reported in `writeErrors`.
fn write_error(index: usize, e: &CommandError) -> Bson {
    Bson::Document(doc! { "index": index as i32, "code": e.code, "errmsg": e.message.clone() })
}

fn duplicate_key(ns: &str, id: &Bson, index: usize) -> Bson {
    Bson::Document(doc! {
        "index": index as i32,
        "code": codes::DUPLICATE_KEY,
        "keyPattern": { "_id": 1 },
        "keyValue": { "_id": id.clone() },
        "errmsg": format!("E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}"),
    })
}

fn batch<'a>(args: &'a Args<'_>, field: &str) -> CommandResult<&'a Vec<Bson>> {
    let items = args.required_array(field)?;
    if items.is_empty() || items.len() > 100_000 {
        return Err(CommandError::new(
            codes::INVALID_LENGTH,
            format!("Write batch sizes must be between 1 and 100000. Got {} operations.", items.len()),
        ));
    }
    Ok(items)
}

fn statement<'a>(args: &Args<'_>, field: &str, item: &'a Bson) -> CommandResult<&'a Document> {
    match item {
        Bson::Document(d) => Ok(d),
        other => Err(args.wrong_type(field, other, "object")),
    }
}

/// Moves `_id` to the front, generating an ObjectId if there is none.
pub(super) fn with_id_first(doc: Document) -> Document {
    if doc.keys().next().is_some_and(|k| k == "_id") {
        return doc;
    }
    let mut out = Document::new();
    out.insert("_id", doc.get("_id").cloned().unwrap_or_else(|| Bson::ObjectId(ObjectId::new())));
    for (k, v) in doc {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    out
}

fn check_id(doc: &Document) -> CommandResult<()> {
    match doc.get("_id") {
        Some(Bson::Array(_)) => Err(CommandError::bad_value("can't use an array for _id")),
        Some(Bson::RegularExpression(_)) => Err(CommandError::bad_value("can't use a regex for _id")),
        _ => Ok(()),
    }
}

fn id_taken(docs: &[Document], id: &Bson) -> bool {
    docs.iter().any(|d| d.get("_id").is_some_and(|x| equal(x, id)))
}

pub(super) fn insert(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["documents", "ordered", "bypassDocumentValidation"])?;
    let (_, ns) = namespace(args, db)?;
    let items = batch(args, "documents")?;
    let ordered = args.flag("ordered", true)?;
    let docs: Vec<&Document> = items.iter().map(|i| statement(args, "documents", i)).collect::<CommandResult<_>>()?;
    let mut n = 0i32;
    let mut errors = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let doc = with_id_first(doc.clone());
        let collection = store.collections.entry(ns.clone()).or_default();
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        if let Err(e) = check_id(&doc) {
            errors.push(write_error(index, &e));
        } else if id_taken(collection, &id) {
            errors.push(duplicate_key(&ns, &id, index));
        } else {
            collection.push(doc);
            n += 1;
            continue;
        }
        if ordered {
            break;
        }
    }
    let mut reply = doc! { "n": n };
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(reply)
}

/// Outcome of one update statement.
#[derive(Default)]
struct UpdateResult {
    matched: i32,
    modified: i32,
    upserted: Option<Bson>,
}

pub(super) fn update(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["updates", "ordered", "bypassDocumentValidation", "let"])?;
    refuse_unmodelled(args, &["let"])?;
    let (_, ns) = namespace(args, db)?;
    let items = batch(args, "updates")?;
    let ordered = args.flag("ordered", true)?;
    let statements: Vec<&Document> =
        items.iter().map(|i| statement(args, "updates", i)).collect::<CommandResult<_>>()?;
    for s in &statements {
        let s = Args::new("update.updates", s);
        s.only(&["q", "u", "upsert", "multi", "hint", "arrayFilters", "collation", "upsertSupplied", "sort", "c"])?;
        refuse_unmodelled(&s, &["arrayFilters", "collation", "upsertSupplied", "sort", "c"])?;
        s.document("q")?.ok_or_else(|| s.missing("q"))?;
        if !s.cmd.contains_key("u") {
            return Err(s.missing("u"));
        }
        s.flag("upsert", false)?;
        s.flag("multi", false)?;
    }
    let (mut n, mut modified) = (0i32, 0i32);
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    for (index, s) in statements.into_iter().enumerate() {
        match update_one_statement(store, &ns, s) {
            Ok(r) => {
                n += r.matched;
                modified += r.modified;
                if let Some(id) = r.upserted {
                    n += 1;
                    upserted.push(Bson::Document(doc! { "index": index as i32, "_id": id }));
                }
            }
            Err(e) => {
                errors.push(match e {
                    StatementError::DuplicateId(id) => duplicate_key(&ns, &id, index),
                    StatementError::Failed(e) => write_error(index, &e),
                });
                if ordered {
                    break;
                }
            }
        }
    }
    let mut reply = doc! { "n": n, "nModified": modified };
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(reply)
}

/// Why one update statement failed.
enum StatementError {
    /// An upsert would insert an `_id` that exists.
    DuplicateId(Bson),
    Failed(CommandError),
}

impl From<CommandError> for StatementError {
    fn from(e: CommandError) -> Self {
        Self::Failed(e)
    }
}

fn update_one_statement(store: &mut DocumentStore, ns: &str, s: &Document) -> Result<UpdateResult, StatementError> {
    let q = s.get_document("q").map_err(|_| CommandError::bad_value("q must be an object"))?;
    let upsert = s.get("upsert").and_then(truthy).unwrap_or(false);
    let multi = s.get("multi").and_then(truthy).unwrap_or(false);
    let filter = compile(q)?;
    let spec = parse_update(s.get("u").unwrap_or(&Bson::Null))?;
    if multi && matches!(spec, UpdateSpec::Replace(_)) {
        let e = CommandError::new(codes::FAILED_TO_PARSE, "multi update is not supported for replacement-style update");
        return Err(e.into());
    }
    let docs = store.collections.entry(ns.to_string()).or_default();
    let mut result = UpdateResult::default();
    let matching: Vec<usize> = docs.iter().enumerate().filter(|(_, d)| filter.matches(d)).map(|(i, _)| i).collect();
    if matching.is_empty() {
        if upsert {
            let seed = seed_from_query(q);
            let new = match &spec {
                UpdateSpec::Replace(replacement) => {
                    let mut new = replacement.clone();
                    if let (Some(id), false) = (seed.get("_id"), new.contains_key("_id")) {
                        new.insert("_id", id.clone());
                    }
                    new
                }
                UpdateSpec::Ops(_) => {
                    let mut new = seed;
                    apply_ops(&mut new, &spec, true)?;
                    new
                }
            };
            let new = with_id_first(new);
            check_id(&new)?;
            let id = new.get("_id").cloned().unwrap_or(Bson::Null);
            if id_taken(docs, &id) {
                return Err(StatementError::DuplicateId(id));
            }
            docs.push(new);
            result.upserted = Some(id);
        }
        return Ok(result);
    }
    let targets = if multi { matching } else { matching.into_iter().take(1).collect() };
    for i in targets {
        let before = &docs[i];
        let after = match &spec {
            UpdateSpec::Replace(replacement) => {
                let id = before.get("_id").cloned().unwrap_or(Bson::Null);
                if let Some(new_id) = replacement.get("_id")
                    && !equal(new_id, &id)
                {
                    return Err(CommandError::new(
                        codes::IMMUTABLE_FIELD,
                        format!("After applying the update, the (immutable) field '_id' was found to have been altered to _id: {new_id}"),
                    )
                    .into());
                }
                let mut new = doc! { "_id": id };
                for (k, v) in replacement {
                    if k != "_id" {
                        new.insert(k.clone(), v.clone());
                    }
                }
                new
            }
            UpdateSpec::Ops(_) => {
                let mut new = before.clone();
                apply_ops(&mut new, &spec, false)?;
                if !values_equal_opt(new.get("_id"), before.get("_id")) {
                    return Err(CommandError::new(
                        codes::IMMUTABLE_FIELD,
                        "Performing an update on the path '_id' would modify the immutable field '_id'",
                    )
                    .into());
                }
                new
            }
        };
        result.matched += 1;
        if &after != before {
            result.modified += 1;
            docs[i] = after;
        }
    }
    Ok(result)
}

fn values_equal_opt(a: Option<&Bson>, b: Option<&Bson>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => equal(a, b) && std::mem::discriminant(a) == std::mem::discriminant(b),
        (None, None) => true,
        _ => false,
    }
}

pub(super) fn delete(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["deletes", "ordered", "let"])?;
    refuse_unmodelled(args, &["let"])?;
    let (_, ns) = namespace(args, db)?;
    let items = batch(args, "deletes")?;
    let ordered = args.flag("ordered", true)?;
    let mut statements = Vec::new();
    for item in items {
        let st = statement(args, "deletes", item)?;
        let s = Args::new("delete.deletes", st);
        s.only(&["q", "limit", "hint", "collation"])?;
        refuse_unmodelled(&s, &["collation"])?;
        s.document("q")?.ok_or_else(|| s.missing("q"))?;
        let q = st.get_document("q").map_err(|_| s.missing("q"))?;
        let limit = match s.cmd.get("limit") {
            None => return Err(s.missing("limit")),
            Some(Bson::Int32(0)) | Some(Bson::Int64(0)) => false,
            Some(Bson::Int32(1)) | Some(Bson::Int64(1)) => true,
            Some(Bson::Double(d)) if *d == 0.0 || *d == 1.0 => *d == 1.0,
            Some(other) => {
                return Err(CommandError::new(
                    codes::FAILED_TO_PARSE,
                    format!("The limit field in delete objects must be 0 or 1. Got {other}"),
                ));
            }
        };
        statements.push((q, limit));
    }
    let mut n = 0i32;
    let mut errors = Vec::new();
    for (index, (q, just_one)) in statements.into_iter().enumerate() {
        let filter = match compile(q) {
            Ok(f) => f,
            Err(e) => {
                errors.push(write_error(index, &e));
                if ordered {
                    break;
                }
                continue;
            }
        };
        let Some(docs) = store.collections.get_mut(&ns) else { continue };
        if just_one {
            if let Some(i) = docs.iter().position(|d| filter.matches(d)) {
                docs.remove(i);
                n += 1;
            }
        } else {
            let before = docs.len();
            docs.retain(|d| !filter.matches(d));
            n += i32::try_from(before - docs.len()).unwrap_or(i32::MAX);
        }
    }
    let mut reply = doc! { "n": n };
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(reply)
}
