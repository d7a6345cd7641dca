//! Read commands: `find` (filter, sort, skip, limit and the first batch),
//! `getMore` and `killCursors`, over the store's cursors.

use super::filter::{compare_by, compile, parse_sort};
use super::{DEFAULT_FIRST_BATCH, DocumentStore, namespace, refuse_unmodelled, unmodelled};
use crate::mongo::error::{CommandError, CommandResult, codes};
use crate::mongo::umc::args::Args;
use bson::{Bson, Document, doc};
use std::collections::VecDeque;

/// Upper bound on a batch's size in bytes (one BSON document's limit).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

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

pub(super) fn find(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
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

pub(super) fn get_more(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
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

pub(super) fn kill_cursors(store: &mut DocumentStore, db: &str, args: &Args<'_>) -> CommandResult {
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
