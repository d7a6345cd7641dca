//! The MongoDB double's data commands against the real `mongodb` driver:
//! the CRUD subset dbgrant's ownership ledger uses (`find` with cursors,
//! upserts with `$setOnInsert`, deletes), `_id` uniqueness, logging and
//! counters, and access rules.

use dbgrant_doubles::mongo::{CommandKind, MongoDouble, MongoDoubleConfig, Outcome, ScramUser};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use std::time::Duration;

const ADMIN: &str = "admin";
const SECRET: &str = "s3cret";

async fn start() -> MongoDouble {
    MongoDouble::start(
        MongoDoubleConfig::default()
            .latency(Duration::ZERO)
            .user(ScramUser::admin(ADMIN, SECRET))
            .user(ScramUser::read_only("viewer", "viewer-pw")),
    )
    .await
    .expect("start double")
}

async fn client(uri: &str) -> Client {
    let mut options = ClientOptions::parse(uri).await.expect("parse uri");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).expect("client")
}

async fn ledger(double: &MongoDouble) -> Collection<Document> {
    client(&double.uri_with_credentials(ADMIN, SECRET)).await.database("dbgrant").collection("ownership")
}

/// The server code of a command error or a single write error.
fn code(err: &Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// What dbgrant's `ledger_put` sends: an upsert that only sets fields on insert.
fn ledger_put(id: &str, target: &str) -> (Document, Document) {
    (doc! { "_id": id }, doc! { "$setOnInsert": { "kind": "role", "target": target } })
}

#[tokio::test]
async fn ledger_upserts_finds_and_deletes() {
    let double = start().await;
    let coll = ledger(&double).await;

    let (q, u) = ledger_put("admin.entra/g1", "prod");
    let first = coll.update_one(q.clone(), u.clone()).upsert(true).await.expect("upsert inserts");
    assert_eq!((first.matched_count, first.modified_count), (0, 0));
    assert_eq!(first.upserted_id, Some(Bson::from("admin.entra/g1")));
    // Idempotent: the second upsert matches and changes nothing.
    let again = coll.update_one(q, u).upsert(true).await.expect("upsert matches");
    assert_eq!((again.matched_count, again.modified_count, again.upserted_id), (1, 0, None));
    assert_eq!(
        double.documents("dbgrant", "ownership"),
        vec![doc! {"_id": "admin.entra/g1", "kind": "role", "target": "prod"}]
    );

    for (id, target) in [("admin.entra/g2", "prod"), ("admin.entra/g3", "staging"), ("$external.entra/u1", "prod")] {
        let (q, u) = ledger_put(id, target);
        coll.update_one(q, u).upsert(true).await.unwrap();
    }
    // What `ledger()` asks: these ids, this target.
    let ids = ["admin.entra/g1", "admin.entra/g3", "admin.entra/missing", "$external.entra/u1"];
    let found: Vec<Document> =
        coll.find(doc! {"_id": {"$in": ids.to_vec()}, "target": "prod"}).await.unwrap().try_collect().await.unwrap();
    let found: Vec<&str> = found.iter().map(|d| d.get_str("_id").unwrap()).collect();
    assert_eq!(found, ["admin.entra/g1", "$external.entra/u1"]);
    // What `ledger_all()` asks: everything of this target.
    let all: Vec<Document> = coll.find(doc! {"target": "prod"}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(all.len(), 3);
    let everything: Vec<Document> = coll.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(everything.len(), 4);

    // What `unledger()` sends.
    assert_eq!(coll.delete_one(doc! {"_id": "admin.entra/g1"}).await.unwrap().deleted_count, 1);
    assert_eq!(coll.delete_one(doc! {"_id": "admin.entra/g1"}).await.unwrap().deleted_count, 0);
    assert_eq!(coll.delete_many(doc! {"target": "prod"}).await.unwrap().deleted_count, 2);
    assert_eq!(double.documents("dbgrant", "ownership").len(), 1);

    // Logged with their kind, counted as reads and writes.
    let update = double.commands_named("update").pop().expect("update logged");
    assert_eq!((update.kind, update.is_write, update.db.as_str()), (CommandKind::DataWrite, true, "dbgrant"));
    let statement = update.body.get_array("updates").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(statement.get_bool("upsert"), Ok(true));
    let find = double.commands_named("find").pop().expect("find logged");
    assert_eq!((find.kind, find.is_write), (CommandKind::DataRead, false));
    let c = double.counters();
    assert_eq!((c.data_reads, c.data_writes), (3, 8), "{c:?}");
    assert_eq!((c.reads, c.writes, c.successful_writes), (3, 8, 8), "{c:?}");
}

#[tokio::test]
async fn duplicate_ids_are_write_error_11000() {
    let double = start().await;
    let coll = ledger(&double).await;
    coll.insert_one(doc! {"_id": "a", "v": 1}).await.unwrap();
    let err = coll.insert_one(doc! {"_id": "a", "v": 2}).await.expect_err("duplicate _id");
    assert_eq!(code(&err), Some(11000), "{err}");
    assert_eq!(double.documents("dbgrant", "ownership"), vec![doc! {"_id": "a", "v": 1}], "first write wins");

    // insert_many is ordered: it stops at the duplicate.
    let err = coll.insert_many([doc! {"_id": "b"}, doc! {"_id": "a"}, doc! {"_id": "c"}]).await.expect_err("dup");
    let ErrorKind::InsertMany(e) = err.kind.as_ref() else { panic!("{err}") };
    let errors = e.write_errors.as_ref().expect("write errors");
    assert_eq!((errors.len(), errors[0].index, errors[0].code), (1, 1, 11000));
    assert!(errors[0].message.contains("dup key"), "{}", errors[0].message);
    let ids: Vec<Bson> =
        double.documents("dbgrant", "ownership").iter().map(|d| d.get("_id").unwrap().clone()).collect();
    assert_eq!(ids, [Bson::from("a"), Bson::from("b")]);

    // The driver generates ObjectIds; the double stores them first.
    let inserted = coll.insert_one(doc! {"v": 3}).await.unwrap().inserted_id;
    let stored = double.documents("dbgrant", "ownership").pop().unwrap();
    assert_eq!((stored.keys().next().unwrap().as_str(), stored.get("_id").unwrap()), ("_id", &inserted));
    // The insert reached the double as a document sequence and was logged.
    let record = double.commands_named("insert").into_iter().find(|r| r.outcome == Outcome::Ok).unwrap();
    assert!(record.body.get_array("documents").is_ok());
}

#[tokio::test]
async fn cursors_iterate_with_get_more_and_are_killed() {
    let double = start().await;
    let coll = ledger(&double).await;
    let docs: Vec<Document> = (0..250).map(|i| doc! {"_id": format!("admin.entra/{i:04}"), "target": "t"}).collect();
    coll.insert_many(docs).await.unwrap();
    double.clear_log();

    let all: Vec<Document> = coll.find(doc! {"target": "t"}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(all.len(), 250);
    assert_eq!(all[249].get_str("_id").unwrap(), "admin.entra/0249", "natural order");
    assert_eq!(double.commands_named("find").len(), 1);
    assert!(!double.commands_named("getMore").is_empty(), "101 in the first batch, the rest by getMore");
    assert_eq!(double.open_cursors(), 0, "exhausted cursors close");

    // Sorting, skipping, limiting.
    let top: Vec<Document> =
        coll.find(doc! {}).sort(doc! {"_id": -1}).skip(1).limit(3).await.unwrap().try_collect().await.unwrap();
    let top: Vec<&str> = top.iter().map(|d| d.get_str("_id").unwrap()).collect();
    assert_eq!(top, ["admin.entra/0248", "admin.entra/0247", "admin.entra/0246"]);

    // A cursor dropped early is killed by the driver.
    let mut cursor = coll.find(doc! {}).batch_size(10).await.unwrap();
    assert!(cursor.advance().await.unwrap());
    assert_eq!(double.open_cursors(), 1);
    drop(cursor);
    let mut waited = Duration::ZERO;
    while double.open_cursors() > 0 {
        assert!(waited < Duration::from_secs(5), "killCursors never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let kill = double.commands_named("killCursors").pop().expect("killCursors logged");
    assert_eq!(kill.kind, CommandKind::DataRead);
}

#[tokio::test]
async fn updates_and_deletes_with_operators() {
    let double = start().await;
    let coll = ledger(&double).await;
    coll.insert_many([doc! {"_id": 1, "n": 1, "t": "a"}, doc! {"_id": 2, "n": 2, "t": "a"}, doc! {"_id": 3, "t": "b"}])
        .await
        .unwrap();
    let r = coll.update_many(doc! {"t": "a"}, doc! {"$inc": {"n": 10}, "$set": {"seen": true}}).await.unwrap();
    assert_eq!((r.matched_count, r.modified_count), (2, 2));
    let r = coll.replace_one(doc! {"_id": 3}, doc! {"t": "c"}).await.unwrap();
    assert_eq!(r.modified_count, 1);
    assert_eq!(
        double.documents("dbgrant", "ownership"),
        vec![
            doc! {"_id": 1, "n": 11, "t": "a", "seen": true},
            doc! {"_id": 2, "n": 12, "t": "a", "seen": true},
            doc! {"_id": 3, "t": "c"},
        ]
    );
    let err = coll.update_one(doc! {"_id": 1}, doc! {"$set": {"_id": 9}}).await.expect_err("_id is immutable");
    assert_eq!(code(&err), Some(66), "{err}");
    let r = coll.update_one(doc! {"_id": 7}, doc! {"$set": {"n": 1}}).await.unwrap();
    assert_eq!((r.matched_count, r.upserted_id), (0, None), "no upsert unless asked");
    let found = coll.find_one(doc! {"n": {"$gt": 11}}).await.unwrap().expect("one match");
    assert_eq!(found.get_i32("_id").unwrap(), 2);
    assert_eq!(coll.delete_many(doc! {"t": {"$in": ["a", "c"]}}).await.unwrap().deleted_count, 3);
    assert!(double.documents("dbgrant", "ownership").is_empty());
}

#[tokio::test]
async fn read_only_logins_read_but_cannot_write() {
    let double = start().await;
    double.insert_document("dbgrant", "ownership", doc! {"_id": "x", "target": "t"});
    let viewer = client(&double.uri_with_credentials("viewer", "viewer-pw")).await;
    let coll: Collection<Document> = viewer.database("dbgrant").collection("ownership");
    assert!(coll.find_one(doc! {"_id": "x"}).await.unwrap().is_some());
    let err = coll.insert_one(doc! {"_id": "y"}).await.expect_err("no writes");
    assert_eq!(code(&err), Some(13), "{err}");
    let anonymous: Collection<Document> = client(&double.uri()).await.database("dbgrant").collection("ownership");
    let err = anonymous.find_one(doc! {}).await.expect_err("needs a login");
    assert_eq!(code(&err), Some(13), "{err}");
}

#[tokio::test]
async fn unmodelled_features_fail_loudly() {
    let double = start().await;
    let coll = ledger(&double).await;
    coll.insert_one(doc! {"_id": "x"}).await.unwrap();
    let err = coll.find(doc! {}).projection(doc! {"_id": 1}).await.expect_err("projection");
    assert_eq!(code(&err), Some(2));
    assert!(err.to_string().contains("test double"), "{err}");
    let err = coll.find(doc! {"_id": {"$frob": 1}}).await.expect_err("unknown operator");
    assert_eq!(code(&err), Some(2));
    let err = coll.update_one(doc! {}, doc! {"$push": {"a": 1}}).await.expect_err("array modifier");
    assert!(err.to_string().contains("test double"), "{err}");
    let err = coll.update_one(doc! {}, doc! {"$frob": {"a": 1}}).await.expect_err("unknown modifier");
    assert_eq!(code(&err), Some(9), "{err}");
}

#[tokio::test]
async fn faults_and_state_hooks_cover_documents() {
    let double = start().await;
    let coll = ledger(&double).await;
    double.fail_next(1, 11600, Some("update"));
    let (q, u) = ledger_put("admin.entra/g", "t");
    let err = coll.update_one(q.clone(), u.clone()).upsert(true).await.expect_err("injected");
    assert_eq!(code(&err), Some(11600));
    assert!(double.documents("dbgrant", "ownership").is_empty(), "an injected failure does not apply");
    coll.update_one(q, u).upsert(true).await.unwrap();
    assert_eq!(double.drop_collection("dbgrant", "ownership"), 1);
    double.insert_document("dbgrant", "ownership", doc! {"target": "t"});
    assert!(matches!(double.documents("dbgrant", "ownership")[0].get("_id"), Some(Bson::ObjectId(_))));
    double.reset_state();
    assert!(double.documents("dbgrant", "ownership").is_empty());
}
