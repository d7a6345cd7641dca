//! dbgrant's ownership ledger in a MongoDB deployment: one document per
//! role or `$external` user dbgrant created (`_id` `admin.<role>` or
//! `$external.<user>`, tagged with the MongoTarget's name), in
//! `dbgrant.ownership` next to what it describes. An entry is written
//! *before* the object is created and removed *after* it is dropped, so a
//! crash in between leaves an entry for a missing object (repaired by the
//! next sync), never an object nobody owns. No tenant can reach it: the
//! policy keeps the database out of every binding (`plan::policy`).

use std::collections::BTreeSet;

use bson::{Document, doc};

use super::{BACKEND, BATCH, api::MongoApi, connection};
pub use crate::plan::mongo::{LEDGER_COLLECTION, LEDGER_DB};
use crate::{Result, runtime::metrics::Metrics};

/// The ids of ledger documents; documents whose `_id` is not a string are
/// not dbgrant's and are ignored.
pub fn ids(docs: &[Document]) -> BTreeSet<String> {
    docs.iter().filter_map(|d| d.get_str("_id").ok().map(str::to_string)).collect()
}

/// Which of `ids` the ledger records as created by dbgrant.
pub async fn owned(target: &str, client: &dyn MongoApi, metrics: &Metrics, ids: &[String]) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for chunk in ids.chunks(BATCH) {
        let filter = doc! { "_id": { "$in": chunk.to_vec() }, "target": target };
        let r = client.find(LEDGER_DB, LEDGER_COLLECTION, filter).await;
        metrics.backend_op(BACKEND, "ledgerFind", r.is_ok());
        let docs = r.map_err(|e| connection::classify(target, "reading the ownership ledger", &e))?;
        out.extend(self::ids(&docs));
    }
    Ok(out)
}

/// Every ledger entry this target wrote (for orphan collection after
/// downtime). Entries are tagged with the MongoTarget's name so two targets
/// pointing at one deployment never collect each other's objects.
pub async fn all(target: &str, client: &dyn MongoApi, metrics: &Metrics) -> Result<BTreeSet<String>> {
    let r = client.find(LEDGER_DB, LEDGER_COLLECTION, doc! { "target": target }).await;
    metrics.backend_op(BACKEND, "ledgerFind", r.is_ok());
    let docs = r.map_err(|e| connection::classify(target, "reading the ownership ledger", &e))?;
    Ok(ids(&docs))
}

/// Record `id` (`admin.<role>` or `$external.<user>`) as created by
/// dbgrant for `target`, before creating it. Idempotent.
pub async fn put(target: &str, client: &dyn MongoApi, metrics: &Metrics, id: &str, kind: &str) -> Result<()> {
    let update = doc! { "$setOnInsert": { "kind": kind, "target": target, "createdAt": bson::DateTime::now() } };
    let r = client.upsert(LEDGER_DB, LEDGER_COLLECTION, doc! { "_id": id }, update).await;
    metrics.backend_op(BACKEND, "ledgerPut", r.is_ok());
    r.map_err(|e| connection::classify(target, "writing the ownership ledger", &e))
}

/// Forget `id`, after dropping it (or when releasing it). Idempotent.
pub async fn remove(target: &str, client: &dyn MongoApi, metrics: &Metrics, id: &str) -> Result<()> {
    let r = client.delete_one(LEDGER_DB, LEDGER_COLLECTION, doc! { "_id": id }).await;
    metrics.backend_op(BACKEND, "ledgerDelete", r.is_ok());
    r.map_err(|e| connection::classify(target, "writing the ownership ledger", &e))
}
