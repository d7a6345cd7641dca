//! The commands dbgrant sends to a MongoDB deployment, as one small trait:
//! user and role commands (`run`) and the ownership ledger's document
//! operations. The `mongodb` driver implements it over real sockets (the
//! operator, and the contract tests against the wire-protocol double or a
//! real server); unit tests implement it in process with scripted replies
//! to check the order and content of what `sync` sends.

use async_trait::async_trait;
use bson::Document;
use futures::TryStreamExt;
use mongodb::{Client, error::Result};

/// What dbgrant asks of a MongoDB deployment.
#[async_trait]
pub trait MongoApi: Send + Sync {
    /// Run `command` in database `db` (`createRole`, `rolesInfo`, …).
    async fn run(&self, db: &str, command: Document) -> Result<Document>;
    /// Every document of `db.collection` that matches `filter`.
    async fn find(&self, db: &str, collection: &str, filter: Document) -> Result<Vec<Document>>;
    /// Update the document matching `filter` with `update`, inserting it
    /// if there is none.
    async fn upsert(&self, db: &str, collection: &str, filter: Document, update: Document) -> Result<()>;
    /// Delete the document matching `filter`, if any.
    async fn delete_one(&self, db: &str, collection: &str, filter: Document) -> Result<()>;
}

#[async_trait]
impl MongoApi for Client {
    async fn run(&self, db: &str, command: Document) -> Result<Document> {
        self.database(db).run_command(command).await
    }

    async fn find(&self, db: &str, collection: &str, filter: Document) -> Result<Vec<Document>> {
        self.database(db).collection::<Document>(collection).find(filter).await?.try_collect().await
    }

    async fn upsert(&self, db: &str, collection: &str, filter: Document, update: Document) -> Result<()> {
        self.database(db).collection::<Document>(collection).update_one(filter, update).upsert(true).await.map(|_| ())
    }

    async fn delete_one(&self, db: &str, collection: &str, filter: Document) -> Result<()> {
        self.database(db).collection::<Document>(collection).delete_one(filter).await.map(|_| ())
    }
}
