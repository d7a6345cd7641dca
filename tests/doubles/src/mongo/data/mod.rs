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
//!
//! Here: the store, the dispatch and the access check's hook. The commands
//! are in `read.rs` (`find`, `getMore`, `killCursors`) and `write.rs`
//! (`insert`, `update`, `delete`); the filter engine and BSON's order in
//! `filter.rs`; update documents (replacement, operators, the upsert's
//! seed) in `update.rs`.

mod filter;
mod read;
mod update;
mod write;

use super::error::{CommandError, CommandResult, codes};
use super::umc::args::{Args, truthy};
use bson::{Bson, Document};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Documents in `find`'s first batch when the client sets no `batchSize`.
pub(crate) const DEFAULT_FIRST_BATCH: usize = 101;

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
        let doc = write::with_id_first(doc);
        let docs = self.collections.entry(ns.to_string()).or_default();
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        match docs.iter().position(|d| d.get("_id").is_some_and(|x| filter::equal(x, &id))) {
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
        "find" => read::find(store, db, &args),
        "getMore" => read::get_more(store, db, &args),
        "killCursors" => read::kill_cursors(store, db, &args),
        "insert" => write::insert(store, db, &args),
        "update" => write::update(store, db, &args),
        "delete" => write::delete(store, db, &args),
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

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

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
