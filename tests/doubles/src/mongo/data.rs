//! Data commands, for the subset a client like dbgrant's ownership ledger
//! uses: `find`, `getMore`, `killCursors`, `insert`, `update`, `delete`,
//! over a simple in-memory store of documents per namespace.
//!
//! Semantics follow MongoDB 7.0/8.0 for what is modelled:
//! - `_id` is unique per collection (a duplicate is write error 11000),
//!   generated as an ObjectId when missing and always stored first.
//! - Filters: implicit equality (array fields match any element; a missing
//!   field equals `null`), `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`,
//!   `$in`, `$nin`, `$exists`, `$not`, `$and`, `$or`, `$nor`, dotted paths.
//!   Numbers compare across types (`1 == 1.0`); values of different BSON
//!   type brackets never compare.
//! - Updates: replacement documents and `$set`, `$unset`, `$setOnInsert`,
//!   `$inc`; `multi`; `upsert` (seeded from the filter's equality fields);
//!   `_id` is immutable (66); conflicting paths are refused (40).
//! - Cursors: `find` returns at most 101 documents in its first batch
//!   unless `batchSize` says otherwise (and at most 16 MiB a batch); the
//!   rest comes through `getMore`; `killCursors` closes cursors.
//! - Per-statement failures are `writeErrors` in an `ok: 1` reply;
//!   malformed commands fail as a whole with the IDL codes.
//!
//! Anything else a real server accepts (projections, collations, regular
//! expressions, array update operators, pipelines, ...) is refused with
//! `BadValue` and a message naming the test double, never silently
//! ignored.

use super::error::{CommandError, CommandResult, codes};
use super::umc::args::{Args, truthy, type_name};
use bson::{Bson, Document, doc, oid::ObjectId};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Documents in `find`'s first batch when the client sets no `batchSize`.
pub(crate) const DEFAULT_FIRST_BATCH: usize = 101;
/// Upper bound on a batch's size in bytes (one BSON document's limit).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// An open cursor: what is left to return.
#[derive(Debug)]
struct Cursor {
    ns: String,
    remaining: VecDeque<Document>,
}

/// Documents by namespace (`db.collection`, natural order = insertion
/// order) and open cursors.
#[derive(Debug, Default)]
pub(crate) struct DocumentStore {
    pub(crate) collections: BTreeMap<String, Vec<Document>>,
    cursors: HashMap<i64, Cursor>,
    last_cursor: i64,
}

impl DocumentStore {
    /// Inserts `doc` without validation other than giving it an `_id`
    /// (first) when it has none; replaces a document with the same `_id`.
    pub(crate) fn put(&mut self, ns: &str, doc: Document) {
        let doc = with_id_first(doc);
        let docs = self.collections.entry(ns.to_string()).or_default();
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        match docs.iter().position(|d| d.get("_id").is_some_and(|x| equal(x, &id))) {
            Some(i) => docs[i] = doc,
            None => docs.push(doc),
        }
    }

    /// Forgets every document and cursor.
    pub(crate) fn clear(&mut self) {
        self.collections.clear();
        self.cursors.clear();
    }

    /// Number of open cursors.
    pub(crate) fn open_cursors(&self) -> usize {
        self.cursors.len()
    }

    fn open_cursor(&mut self, ns: String, remaining: VecDeque<Document>) -> i64 {
        self.last_cursor += 1;
        // Large, non-zero ids as a real server hands out.
        let id = 0x0100_0000_0000 + self.last_cursor;
        self.cursors.insert(id, Cursor { ns, remaining });
        id
    }
}

/// Whether [`run`] implements `name`.
pub(crate) fn implements(name: &str) -> bool {
    matches!(name, "find" | "getMore" | "killCursors" | "insert" | "update" | "delete")
}

/// Runs data command `name` against `db`.
pub(crate) fn run(store: &mut DocumentStore, name: &str, db: &str, cmd: &Document) -> CommandResult {
    let args = Args::new(name, cmd);
    match name {
        "find" => find(store, db, &args),
        "getMore" => get_more(store, db, &args),
        "killCursors" => kill_cursors(store, db, &args),
        "insert" => insert(store, db, &args),
        "update" => update(store, db, &args),
        "delete" => delete(store, db, &args),
        _ => Err(CommandError::new(codes::COMMAND_NOT_FOUND, format!("no such command: '{name}'"))),
    }
}

/// The access check's hook: the collection data command `name` works on
/// and the actions it needs there (`find` for `find` and `getMore`,
/// `insert`, `update` — plus `insert` when any statement upserts —, and
/// `remove` for `delete`; `killCursors` needs none, a login may always
/// kill its own cursors). `None` when the command is malformed: it then
/// fails on its own.
pub(crate) fn required_actions(name: &str, cmd: &Document) -> Option<(String, Vec<&'static str>)> {
    let collection = |field: &str| cmd.get_str(field).ok().map(str::to_string);
    match name {
        "find" => Some((collection(name)?, vec!["find"])),
        "getMore" => Some((collection("collection")?, vec!["find"])),
        "insert" => Some((collection(name)?, vec!["insert"])),
        "delete" => Some((collection(name)?, vec!["remove"])),
        "update" => {
            let upsert = cmd
                .get_array("updates")
                .ok()?
                .iter()
                .any(|u| u.as_document().and_then(|u| u.get("upsert")).and_then(truthy).unwrap_or(false));
            Some((collection(name)?, if upsert { vec!["update", "insert"] } else { vec!["update"] }))
        }
        _ => None,
    }
}

fn unmodelled(what: impl std::fmt::Display) -> CommandError {
    CommandError::bad_value(format!("{what} is not modelled by the test double"))
}

/// Refuses fields a real server accepts but the double does not model.
fn refuse_unmodelled(args: &Args<'_>, fields: &[&str]) -> CommandResult<()> {
    match fields.iter().find(|f| args.cmd.contains_key(**f)) {
        Some(f) => Err(unmodelled(format!("'{}.{f}'", args.name))),
        None => Ok(()),
    }
}

/// The collection a command names, and its namespace.
fn namespace(args: &Args<'_>, db: &str) -> CommandResult<(String, String)> {
    let collection = args.param()?;
    if collection.is_empty() || collection.contains('\0') || collection.starts_with('$') {
        return Err(CommandError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid namespace specified '{db}.{collection}'"),
        ));
    }
    Ok((collection.clone(), format!("{db}.{collection}")))
}

/// A non-negative integer argument.
fn count_arg(args: &Args<'_>, field: &str) -> CommandResult<Option<usize>> {
    let value = match args.cmd.get(field) {
        None => return Ok(None),
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Double(d)) if d.fract() == 0.0 => *d as i64,
        Some(other) => return Err(args.wrong_type(field, other, "long")),
    };
    usize::try_from(value).map(Some).map_err(|_| {
        CommandError::bad_value(format!("BSON field '{field}' value must be >= 0, actual value '{value}'"))
    })
}

fn bson_size(doc: &Document) -> usize {
    let mut bytes = Vec::new();
    doc.to_writer(&mut bytes).map(|()| bytes.len()).unwrap_or(0)
}

/// Takes up to `limit` documents (and at most [`MAX_BATCH_BYTES`], but
/// always at least one) from the front of `queue`.
fn take_batch(queue: &mut VecDeque<Document>, limit: Option<usize>) -> Vec<Bson> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(next) = queue.front() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let size = bson_size(next);
        if !out.is_empty() && bytes + size > MAX_BATCH_BYTES {
            break;
        }
        bytes += size;
        let Some(doc) = queue.pop_front() else { break };
        out.push(Bson::Document(doc));
    }
    out
}

// ------------------------------------------------------------------ reads

fn find(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
    refuse_unmodelled(
        args,
        &[
            "collation",
            "let",
            "returnKey",
            "showRecordId",
            "tailable",
            "awaitData",
            "min",
            "max",
            "allowPartialResults",
        ],
    )?;
    args.only(&[
        "filter",
        "sort",
        "projection",
        "skip",
        "limit",
        "batchSize",
        "singleBatch",
        "hint",
        "noCursorTimeout",
        "allowDiskUse",
    ])?;
    let (_, ns) = namespace(args, db)?;
    let filter = compile(args.document("filter")?.unwrap_or(&Document::new()))?;
    if args.document("projection")?.is_some_and(|p| !p.is_empty()) {
        return Err(unmodelled("'find.projection'"));
    }
    let sort = parse_sort(args.document("sort")?)?;
    let skip = count_arg(args, "skip")?.unwrap_or(0);
    let limit = count_arg(args, "limit")?.filter(|l| *l > 0);
    let batch_size = count_arg(args, "batchSize")?;
    let single_batch = args.flag("singleBatch", false)?;

    let mut docs: Vec<Document> = store
        .collections
        .get(&ns)
        .map(|c| c.iter().filter(|d| filter.matches(d)).cloned().collect())
        .unwrap_or_default();
    if !sort.is_empty() {
        docs.sort_by(|a, b| compare_by(&sort, a, b));
    }
    let mut remaining: VecDeque<Document> = docs.into_iter().skip(skip).take(limit.unwrap_or(usize::MAX)).collect();
    let first = take_batch(&mut remaining, Some(batch_size.unwrap_or(DEFAULT_FIRST_BATCH)));
    let id = if remaining.is_empty() || single_batch { 0 } else { store.open_cursor(ns.clone(), remaining) };
    Ok(doc! { "cursor": { "firstBatch": first, "id": id, "ns": ns } })
}

fn get_more(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["collection", "batchSize", "term", "lastKnownCommittedOpTime"])?;
    let id = match args.cmd.get(args.name) {
        Some(Bson::Int64(id)) => *id,
        Some(other) => return Err(args.wrong_type(args.name, other, "long")),
        None => return Err(args.missing(args.name)),
    };
    let collection = args.string("collection")?.ok_or_else(|| args.missing("collection"))?;
    let batch_size = count_arg(args, "batchSize")?.filter(|b| *b > 0);
    let ns = format!("{db}.{collection}");
    let Some(cursor) = store.cursors.get_mut(&id) else {
        return Err(CommandError::new(codes::CURSOR_NOT_FOUND, format!("cursor id {id} not found")));
    };
    if cursor.ns != ns {
        return Err(CommandError::new(
            codes::UNAUTHORIZED,
            format!("Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {}", cursor.ns),
        ));
    }
    let next = take_batch(&mut cursor.remaining, batch_size);
    let id = if cursor.remaining.is_empty() {
        store.cursors.remove(&id);
        0
    } else {
        id
    };
    Ok(doc! { "cursor": { "nextBatch": next, "id": id, "ns": ns } })
}

fn kill_cursors(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["cursors"])?;
    let (_, ns) = namespace(args, db)?;
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for id in args.required_array("cursors")? {
        let Bson::Int64(id) = id else {
            return Err(args.wrong_type("cursors", id, "long"));
        };
        if store.cursors.get(id).is_some_and(|c| c.ns == ns) {
            store.cursors.remove(id);
            killed.push(*id);
        } else {
            not_found.push(*id);
        }
    }
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": Bson::Array(Vec::new()),
        "cursorsUnknown": Bson::Array(Vec::new()),
    })
}

// ----------------------------------------------------------------- writes

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
fn with_id_first(doc: Document) -> Document {
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

fn insert(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
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

fn update(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
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

fn delete(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
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

// ---------------------------------------------------------------- filters

#[derive(Debug, Clone, Copy)]
enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug)]
enum Cond {
    Eq(Bson),
    Ne(Bson),
    In(Vec<Bson>),
    Nin(Vec<Bson>),
    Exists(bool),
    Cmp(CmpOp, Bson),
    Not(Vec<Cond>),
}

/// A compiled query filter.
#[derive(Debug)]
enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Nor(Vec<Filter>),
    Path(String, Vec<Cond>),
}

const UNMODELLED_TOP_LEVEL: &[&str] = &["$expr", "$where", "$text", "$jsonSchema", "$sampleRate", "$alwaysTrue"];
const UNMODELLED_OPERATORS: &[&str] = &[
    "$regex",
    "$options",
    "$elemMatch",
    "$size",
    "$all",
    "$type",
    "$mod",
    "$bitsAllSet",
    "$bitsAnySet",
    "$bitsAllClear",
    "$bitsAnyClear",
    "$geoWithin",
    "$geoIntersects",
    "$near",
    "$nearSphere",
];

fn compile(filter: &Document) -> CommandResult<Filter> {
    let mut parts = Vec::new();
    for (key, value) in filter {
        match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let Bson::Array(items) = value else {
                    return Err(CommandError::bad_value(format!("{key} must be an array")));
                };
                if items.is_empty() {
                    return Err(CommandError::bad_value("$and/$or/$nor must be a nonempty array"));
                }
                let subs = items
                    .iter()
                    .map(|i| match i {
                        Bson::Document(d) => compile(d),
                        _ => Err(CommandError::bad_value("$or/$and/$nor entries need to be full objects")),
                    })
                    .collect::<CommandResult<Vec<_>>>()?;
                parts.push(match key.as_str() {
                    "$and" => Filter::And(subs),
                    "$or" => Filter::Or(subs),
                    _ => Filter::Nor(subs),
                });
            }
            "$comment" => {}
            k if UNMODELLED_TOP_LEVEL.contains(&k) => return Err(unmodelled(format!("the {k} query operator"))),
            k if k.starts_with('$') => {
                return Err(CommandError::bad_value(format!("unknown top level operator: {k}")));
            }
            _ => parts.push(Filter::Path(key.clone(), compile_conditions(value)?)),
        }
    }
    Ok(Filter::And(parts))
}

fn compile_conditions(value: &Bson) -> CommandResult<Vec<Cond>> {
    match value {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
            d.iter().map(|(k, v)| compile_operator(k, v)).collect()
        }
        Bson::RegularExpression(_) => Err(unmodelled("matching regular expressions")),
        other => Ok(vec![Cond::Eq(other.clone())]),
    }
}

fn compile_operator(key: &str, value: &Bson) -> CommandResult<Cond> {
    let list = |value: &Bson| match value {
        Bson::Array(items) if items.iter().any(|i| matches!(i, Bson::RegularExpression(_))) => {
            Err(unmodelled("matching regular expressions"))
        }
        Bson::Array(items) => Ok(items.clone()),
        _ => Err(CommandError::bad_value(format!("{key} needs an array"))),
    };
    Ok(match key {
        "$eq" => Cond::Eq(value.clone()),
        "$ne" => Cond::Ne(value.clone()),
        "$gt" => Cond::Cmp(CmpOp::Gt, value.clone()),
        "$gte" => Cond::Cmp(CmpOp::Gte, value.clone()),
        "$lt" => Cond::Cmp(CmpOp::Lt, value.clone()),
        "$lte" => Cond::Cmp(CmpOp::Lte, value.clone()),
        "$in" => Cond::In(list(value)?),
        "$nin" => Cond::Nin(list(value)?),
        "$exists" => Cond::Exists(truthy(value).unwrap_or(true)),
        "$not" => match value {
            Bson::Document(d) if !d.is_empty() => {
                Cond::Not(d.iter().map(|(k, v)| compile_operator(k, v)).collect::<CommandResult<_>>()?)
            }
            Bson::RegularExpression(_) => return Err(unmodelled("matching regular expressions")),
            _ => return Err(CommandError::bad_value("$not needs a regex or a document")),
        },
        k if UNMODELLED_OPERATORS.contains(&k) => return Err(unmodelled(format!("the {k} query operator"))),
        k => return Err(CommandError::bad_value(format!("unknown operator: {k}"))),
    })
}

impl Filter {
    fn matches(&self, doc: &Document) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|p| p.matches(doc)),
            Filter::Or(parts) => parts.iter().any(|p| p.matches(doc)),
            Filter::Nor(parts) => !parts.iter().any(|p| p.matches(doc)),
            Filter::Path(path, conds) => {
                let values = values_at(doc, path);
                conds.iter().all(|c| c.matches(&values))
            }
        }
    }
}

impl Cond {
    fn matches(&self, values: &[&Bson]) -> bool {
        match self {
            Cond::Eq(v) => eq_any(values, v),
            Cond::Ne(v) => !eq_any(values, v),
            Cond::In(list) => list.iter().any(|v| eq_any(values, v)),
            Cond::Nin(list) => !list.iter().any(|v| eq_any(values, v)),
            Cond::Exists(want) => values.is_empty() != *want,
            Cond::Cmp(op, v) => flatten(values).any(|x| {
                bracket(x) == bracket(v) && {
                    let o = compare(x, v);
                    match op {
                        CmpOp::Gt => o == Ordering::Greater,
                        CmpOp::Gte => o != Ordering::Less,
                        CmpOp::Lt => o == Ordering::Less,
                        CmpOp::Lte => o != Ordering::Greater,
                    }
                }
            }),
            Cond::Not(conds) => !conds.iter().all(|c| c.matches(values)),
        }
    }
}

/// The values and their array elements.
fn flatten<'a>(values: &'a [&'a Bson]) -> impl Iterator<Item = &'a Bson> {
    values.iter().flat_map(|v| match v {
        Bson::Array(items) => std::iter::once(*v).chain(items.iter()).collect::<Vec<_>>(),
        other => vec![*other],
    })
}

/// Equality as a query sees it: a missing field equals `null`, and an
/// array matches when it or one of its elements equals the value.
fn eq_any(values: &[&Bson], target: &Bson) -> bool {
    if values.is_empty() {
        return matches!(target, Bson::Null);
    }
    flatten(values).any(|v| equal(v, target))
}

/// Every value at a dotted `path`, descending through arrays of documents.
fn values_at<'a>(doc: &'a Document, path: &str) -> Vec<&'a Bson> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    if let Some((first, rest)) = parts.split_first()
        && let Some(v) = doc.get(*first)
    {
        collect_values(v, rest, &mut out);
    }
    out
}

fn collect_values<'a>(value: &'a Bson, parts: &[&str], out: &mut Vec<&'a Bson>) {
    let Some((first, rest)) = parts.split_first() else {
        out.push(value);
        return;
    };
    match value {
        Bson::Document(d) => {
            if let Some(v) = d.get(*first) {
                collect_values(v, rest, out);
            }
        }
        Bson::Array(items) => {
            if let Ok(i) = first.parse::<usize>() {
                if let Some(v) = items.get(i) {
                    collect_values(v, rest, out);
                }
            } else {
                for item in items.iter().filter(|i| matches!(i, Bson::Document(_))) {
                    collect_values(item, parts, out);
                }
            }
        }
        _ => {}
    }
}

/// The server's canonical type order ("brackets"); values in different
/// brackets never compare equal.
fn bracket(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::MaxKey => 13,
        _ => 12,
    }
}

fn number(v: &Bson) -> Option<(Option<i64>, f64)> {
    match v {
        Bson::Int32(i) => Some((Some(i64::from(*i)), f64::from(*i))),
        Bson::Int64(i) => Some((Some(*i), *i as f64)),
        Bson::Double(d) => Some((None, *d)),
        _ => None,
    }
}

/// Total order over BSON values, as the server sorts them.
fn compare(a: &Bson, b: &Bson) -> Ordering {
    let by_bracket = bracket(a).cmp(&bracket(b));
    if by_bracket != Ordering::Equal {
        return by_bracket;
    }
    match (a, b) {
        _ if number(a).is_some() && number(b).is_some() => match (number(a), number(b)) {
            (Some((Some(x), _)), Some((Some(y), _))) => x.cmp(&y),
            (Some((_, x)), Some((_, y))) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        },
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::Document(x), Bson::Document(y)) => {
            for ((kx, vx), (ky, vy)) in x.iter().zip(y.iter()) {
                let o = bracket(vx).cmp(&bracket(vy)).then_with(|| kx.cmp(ky)).then_with(|| compare(vx, vy));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Array(x), Bson::Array(y)) => {
            for (vx, vy) in x.iter().zip(y.iter()) {
                let o = compare(vx, vy);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => (x.time, x.increment).cmp(&(y.time, y.increment)),
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            x.pattern.cmp(&y.pattern).then_with(|| x.options.cmp(&y.options))
        }
        _ if a == b => Ordering::Equal,
        _ => format!("{a:?}").cmp(&format!("{b:?}")),
    }
}

fn equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

fn parse_sort(sort: Option<&Document>) -> CommandResult<Vec<(String, bool)>> {
    let Some(sort) = sort else { return Ok(Vec::new()) };
    sort.iter()
        .map(|(k, v)| match number(v) {
            Some((_, 1.0)) => Ok((k.clone(), true)),
            Some((_, -1.0)) => Ok((k.clone(), false)),
            _ if matches!(v, Bson::Document(_)) => Err(unmodelled("sorting by $meta")),
            _ => Err(CommandError::bad_value("$sort key ordering must be 1 (for ascending) or -1 (for descending)")),
        })
        .collect()
}

fn compare_by(sort: &[(String, bool)], a: &Document, b: &Document) -> Ordering {
    for (path, ascending) in sort {
        let key = |d: &Document| values_at(d, path).first().map(|v| (*v).clone()).unwrap_or(Bson::Null);
        let o = compare(&key(a), &key(b));
        let o = if *ascending { o } else { o.reverse() };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

// ---------------------------------------------------------------- updates

enum UpdateSpec {
    Replace(Document),
    Ops(Vec<(String, Document)>),
}

const UNMODELLED_MODIFIERS: &[&str] =
    &["$push", "$pull", "$pullAll", "$addToSet", "$pop", "$rename", "$min", "$max", "$mul", "$currentDate", "$bit"];

fn parse_update(u: &Bson) -> CommandResult<UpdateSpec> {
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

fn apply_ops(doc: &mut Document, spec: &UpdateSpec, inserting: bool) -> CommandResult<()> {
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
fn seed_from_query(q: &Document) -> Document {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_ok(store: &mut DocumentStore, cmd: Document) -> Document {
        let name = cmd.keys().next().unwrap().clone();
        run(store, &name, "db", &cmd).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn first_batch(reply: &Document) -> Vec<Document> {
        let cursor = reply.get_document("cursor").unwrap();
        cursor.get_array("firstBatch").unwrap().iter().map(|d| d.as_document().unwrap().clone()).collect()
    }

    fn ids(docs: &[Document]) -> Vec<Bson> {
        docs.iter().map(|d| d.get("_id").unwrap().clone()).collect()
    }

    #[test]
    fn filters_follow_query_semantics() {
        let mut s = DocumentStore::default();
        run_ok(
            &mut s,
            doc! {"insert": "c", "documents": [
                {"_id": 1, "t": "a", "n": 1, "tags": ["x", "y"], "sub": {"k": 1}},
                {"_id": 2, "t": "b", "n": 2.0, "tags": [], "sub": {"k": 2}},
                {"_id": 3, "t": "a", "n": Bson::Null},
                {"_id": 4, "t": "c"},
            ]},
        );
        let find = |s: &mut DocumentStore, filter: Document| {
            ids(&first_batch(&run_ok(s, doc! {"find": "c", "filter": filter, "sort": {"_id": 1}})))
        };
        let i = |v: &[i32]| v.iter().map(|x| Bson::Int32(*x)).collect::<Vec<_>>();
        assert_eq!(find(&mut s, doc! {}), i(&[1, 2, 3, 4]));
        assert_eq!(find(&mut s, doc! {"t": "a"}), i(&[1, 3]));
        assert_eq!(find(&mut s, doc! {"n": 2}), i(&[2]), "numbers compare across types");
        assert_eq!(find(&mut s, doc! {"n": Bson::Null}), i(&[3, 4]), "missing equals null");
        assert_eq!(find(&mut s, doc! {"tags": "y"}), i(&[1]), "arrays match elements");
        assert_eq!(find(&mut s, doc! {"_id": {"$in": [2, 4, 9]}}), i(&[2, 4]));
        assert_eq!(find(&mut s, doc! {"_id": {"$nin": [2, 4]}, "t": "a"}), i(&[1, 3]));
        assert_eq!(find(&mut s, doc! {"n": {"$exists": true}}), i(&[1, 2, 3]));
        assert_eq!(find(&mut s, doc! {"n": {"$gte": 1.5}}), i(&[2]));
        assert_eq!(find(&mut s, doc! {"t": {"$ne": "a"}}), i(&[2, 4]));
        assert_eq!(find(&mut s, doc! {"sub.k": 2}), i(&[2]));
        assert_eq!(find(&mut s, doc! {"$or": [{"t": "b"}, {"t": "c"}]}), i(&[2, 4]));
        assert_eq!(find(&mut s, doc! {"n": {"$not": {"$gt": 1}}}), i(&[1, 3, 4]));
        for bad in [doc! {"n": {"$frob": 1}}, doc! {"$frob": 1}, doc! {"$or": []}] {
            let e = run(&mut s, "find", "db", &doc! {"find": "c", "filter": bad}).unwrap_err();
            assert_eq!(e.code, codes::BAD_VALUE, "{e}");
        }
        let e = run(&mut s, "find", "db", &doc! {"find": "c", "filter": {"t": {"$regex": "a"}}}).unwrap_err();
        assert!(e.message.contains("test double"), "{e}");
    }

    #[test]
    fn cursors_batch_and_close() {
        let mut s = DocumentStore::default();
        let docs: Vec<Document> = (0..250).map(|i| doc! {"_id": i}).collect();
        run_ok(&mut s, doc! {"insert": "c", "documents": docs});
        let reply = run_ok(&mut s, doc! {"find": "c"});
        assert_eq!(first_batch(&reply).len(), DEFAULT_FIRST_BATCH);
        let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
        assert_ne!(id, 0);
        let more = run_ok(&mut s, doc! {"getMore": id, "collection": "c", "batchSize": 100});
        assert_eq!(more.get_document("cursor").unwrap().get_array("nextBatch").unwrap().len(), 100);
        let more = run_ok(&mut s, doc! {"getMore": id, "collection": "c"});
        let cursor = more.get_document("cursor").unwrap();
        assert_eq!(cursor.get_array("nextBatch").unwrap().len(), 49);
        assert_eq!(cursor.get_i64("id").unwrap(), 0);
        let e = run(&mut s, "getMore", "db", &doc! {"getMore": id, "collection": "c"}).unwrap_err();
        assert_eq!(e.code, codes::CURSOR_NOT_FOUND);

        let reply = run_ok(&mut s, doc! {"find": "c", "batchSize": 10, "skip": 5, "limit": 15});
        assert_eq!(ids(&first_batch(&reply))[0], Bson::Int32(5));
        let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
        let killed = run_ok(&mut s, doc! {"killCursors": "c", "cursors": [id, 42i64]});
        assert_eq!(killed.get_array("cursorsKilled").unwrap(), &vec![Bson::Int64(id)]);
        assert_eq!(killed.get_array("cursorsNotFound").unwrap(), &vec![Bson::Int64(42)]);
        assert_eq!(s.open_cursors(), 0);
        let single = run_ok(&mut s, doc! {"find": "c", "batchSize": 3, "singleBatch": true});
        assert_eq!(single.get_document("cursor").unwrap().get_i64("id").unwrap(), 0);
    }

    #[test]
    fn inserts_enforce_unique_ids() {
        let mut s = DocumentStore::default();
        let reply =
            run_ok(&mut s, doc! {"insert": "c", "documents": [{"a": 1, "_id": "x"}, {"_id": "x"}, {"_id": "y"}]});
        assert_eq!(reply.get_i32("n").unwrap(), 1);
        let errors = reply.get_array("writeErrors").unwrap();
        assert_eq!(errors.len(), 1, "ordered inserts stop at the first error");
        assert_eq!(errors[0].as_document().unwrap().get_i32("code").unwrap(), 11000);
        let stored = &s.collections["db.c"][0];
        assert_eq!(stored.keys().next().unwrap(), "_id", "_id is stored first");
        let reply =
            run_ok(&mut s, doc! {"insert": "c", "ordered": false, "documents": [{"_id": "x"}, {"_id": "y"}, {}]});
        assert_eq!(reply.get_i32("n").unwrap(), 2);
        assert!(matches!(s.collections["db.c"][2].get("_id"), Some(Bson::ObjectId(_))));
        let e = run(&mut s, "insert", "db", &doc! {"insert": "c", "documents": []}).unwrap_err();
        assert_eq!(e.code, codes::INVALID_LENGTH);
    }

    #[test]
    fn updates_upsert_and_protect_id() {
        let mut s = DocumentStore::default();
        let upsert = doc! {"update": "c", "updates": [
            {"q": {"_id": "k"}, "u": {"$setOnInsert": {"v": 1}, "$set": {"w": 1}}, "upsert": true, "multi": false},
        ]};
        let reply = run_ok(&mut s, upsert.clone());
        assert_eq!((reply.get_i32("n").unwrap(), reply.get_i32("nModified").unwrap()), (1, 0));
        let up = reply.get_array("upserted").unwrap()[0].as_document().unwrap();
        assert_eq!(up.get_str("_id").unwrap(), "k");
        assert_eq!(s.collections["db.c"][0], doc! {"_id": "k", "w": 1, "v": 1});
        // Matched: $setOnInsert does nothing, $set changes nothing.
        let reply = run_ok(&mut s, upsert);
        assert_eq!((reply.get_i32("n").unwrap(), reply.get_i32("nModified").unwrap()), (1, 0));
        assert!(!reply.contains_key("upserted"));
        let reply =
            run_ok(&mut s, doc! {"update": "c", "updates": [{"q": {}, "u": {"$inc": {"v": 2}, "$unset": {"w": ""}}}]});
        assert_eq!(reply.get_i32("nModified").unwrap(), 1);
        assert_eq!(s.collections["db.c"][0], doc! {"_id": "k", "v": 3});
        // Errors are per statement.
        let reply = run_ok(
            &mut s,
            doc! {"update": "c", "updates": [
                {"q": {}, "u": {"$set": {"_id": "other"}}},
                {"q": {}, "u": {"$frob": {"a": 1}}},
            ], "ordered": false},
        );
        let codes: Vec<i32> = reply
            .get_array("writeErrors")
            .unwrap()
            .iter()
            .map(|e| e.as_document().unwrap().get_i32("code").unwrap())
            .collect();
        assert_eq!(codes, [66, 9]);
        let reply = run_ok(
            &mut s,
            doc! {"update": "c", "updates": [{"q": {"_id": "k"}, "u": {"$set": {"a": 1}, "$unset": {"a": 1}}}]},
        );
        assert_eq!(reply.get_array("writeErrors").unwrap()[0].as_document().unwrap().get_i32("code").unwrap(), 40);
        // Replacement keeps _id; upsert by a non-_id filter generates one.
        run_ok(&mut s, doc! {"update": "c", "updates": [{"q": {"_id": "k"}, "u": {"x": 1}}]});
        assert_eq!(s.collections["db.c"][0], doc! {"_id": "k", "x": 1});
        let reply = run_ok(
            &mut s,
            doc! {"update": "c", "updates": [{"q": {"t": "z"}, "u": {"$set": {"y": 1}}, "upsert": true}]},
        );
        assert!(reply.get_array("upserted").is_ok());
        let new = &s.collections["db.c"][1];
        assert_eq!((new.get_str("t").unwrap(), new.get_i32("y").unwrap()), ("z", 1));
        // An upsert that would duplicate an _id fails with 11000.
        let reply = run_ok(
            &mut s,
            doc! {"update": "c", "updates": [{"q": {"t": "none"}, "u": {"$setOnInsert": {"_id": "k"}}, "upsert": true}]},
        );
        assert_eq!(reply.get_array("writeErrors").unwrap()[0].as_document().unwrap().get_i32("code").unwrap(), 11000);
    }

    #[test]
    fn deletes_one_or_all() {
        let mut s = DocumentStore::default();
        run_ok(&mut s, doc! {"insert": "c", "documents": [{"t": 1}, {"t": 1}, {"t": 2}]});
        let reply = run_ok(&mut s, doc! {"delete": "c", "deletes": [{"q": {"t": 1}, "limit": 1}]});
        assert_eq!(reply.get_i32("n").unwrap(), 1);
        let reply = run_ok(&mut s, doc! {"delete": "c", "deletes": [{"q": {}, "limit": 0}]});
        assert_eq!(reply.get_i32("n").unwrap(), 2);
        let reply = run_ok(&mut s, doc! {"delete": "missing", "deletes": [{"q": {}, "limit": 0}]});
        assert_eq!(reply.get_i32("n").unwrap(), 0);
        let e = run(&mut s, "delete", "db", &doc! {"delete": "c", "deletes": [{"q": {}, "limit": 2}]}).unwrap_err();
        assert_eq!(e.code, codes::FAILED_TO_PARSE);
    }
}
