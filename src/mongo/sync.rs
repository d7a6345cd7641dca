//! Applying plans to a MongoDB target: read roles, users and dbgrant's
//! ownership ledger in batches, plan each subject, write the difference.
//!
//! The ledger (`dbgrant.ownership`, one document per object dbgrant
//! created) lives next to the roles it describes. An entry is written
//! *before* `createRole`/`createUser` and removed *after* the drop, so a
//! crash in between leaves a ledger entry for an object that may not
//! exist — which the next sync repairs — and never an object nobody owns.

use std::collections::{BTreeMap, BTreeSet};

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::Client;

use super::{BACKEND, connection};
use crate::{
    Error, Result,
    api::SubjectKey,
    plan::mongo::{
        Action, Actual, ActualRole, ActualUser, MongoGrant, Plan, ROLE_DB, Resource, SubjectObjects, USER_DB,
    },
    runtime::metrics::Metrics,
};

/// Database and collection of the ownership ledger.
pub const LEDGER_DB: &str = "dbgrant";
/// Collection of the ownership ledger.
pub const LEDGER_COLLECTION: &str = "ownership";
/// Names per `rolesInfo`/`usersInfo` call: far below the 16 MiB message
/// limit even with long names and many privileges.
pub const BATCH: usize = 500;

/// The result of syncing one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectResult {
    /// State matches the desired grant.
    Applied,
    /// An object with dbgrant's name exists and is not dbgrant's.
    Conflict(Vec<String>),
    /// The server refused the grant (bad role, cycle, ...).
    Rejected(String),
}

/// Per-target sync outcome.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Result per subject.
    pub results: BTreeMap<SubjectKey, SubjectResult>,
    /// Objects whose out-of-band changes were corrected.
    pub drifted: Vec<String>,
    /// Writes issued.
    pub writes: usize,
}

/// One subject to sync: its objects and desired grant.
pub struct SubjectWork {
    /// The subject.
    pub subject: SubjectKey,
    /// Its role/user names.
    pub objects: SubjectObjects,
    /// Union of live bindings, or None to revoke.
    pub desired: Option<MongoGrant>,
    /// Leave instead of dropping when revoking.
    pub retain: bool,
}

/// Read, plan and write for `work` on one target. The caller holds the
/// target's write lock.
pub async fn sync(
    target: &str,
    client: &Client,
    metrics: &Metrics,
    adopt: bool,
    work: &[SubjectWork],
) -> Result<SyncReport> {
    let roles: Vec<String> = work.iter().map(|w| w.objects.role.clone()).collect();
    let users: Vec<String> = work.iter().filter_map(|w| w.objects.user.clone()).collect();
    let actual_roles = roles_info(target, client, metrics, &roles).await?;
    let actual_users = users_info(target, client, metrics, &users).await?;
    let mut ledger_ids: Vec<String> = roles.iter().map(|r| format!("{ROLE_DB}.{r}")).collect();
    ledger_ids.extend(users.iter().map(|u| format!("{USER_DB}.{u}")));
    let owned = ledger(target, client, metrics, &ledger_ids).await?;

    let mut report = SyncReport::default();
    for w in work {
        let role_id = format!("{ROLE_DB}.{}", w.objects.role);
        let user_id = w.objects.user.as_ref().map(|u| format!("{USER_DB}.{u}"));
        let actual = Actual {
            role: actual_roles.get(&w.objects.role).cloned(),
            user: w.objects.user.as_ref().and_then(|u| actual_users.get(u).cloned()),
            role_owned: owned.contains(&role_id),
            user_owned: user_id.as_ref().is_some_and(|u| owned.contains(u)),
        };
        let plan: Plan = crate::plan::mongo::plan(&w.objects, w.desired.as_ref(), &actual, adopt, w.retain);
        if !plan.conflicts.is_empty() {
            report.results.insert(w.subject.clone(), SubjectResult::Conflict(plan.conflicts));
            continue;
        }
        // Ledger entries for objects that no longer exist and are not
        // wanted are cleaned up here (crash between drop and unledger).
        if w.desired.is_none() {
            if actual.role.is_none() && actual.role_owned {
                unledger(target, client, metrics, &role_id).await?;
            }
            if let Some(u) = &user_id
                && actual.user.is_none()
                && actual.user_owned
            {
                unledger(target, client, metrics, u).await?;
            }
        }
        let mut result = SubjectResult::Applied;
        for action in &plan.actions {
            report.writes += 1;
            match apply(target, client, metrics, action).await {
                Ok(()) => {}
                Err(Rejected(msg)) => {
                    result = SubjectResult::Rejected(msg);
                    break;
                }
                Err(Failed(e)) => return Err(e),
            }
        }
        // Drift counts as corrected only once the writes went through.
        if result == SubjectResult::Applied {
            report.drifted.extend(plan.drifted.iter().cloned());
        }
        report.results.insert(w.subject.clone(), result);
    }
    Ok(report)
}

enum ApplyError {
    /// The server refused this subject's grant; other subjects go on.
    Rejected(String),
    /// Connectivity or authorisation: stop the whole sync.
    Failed(Error),
}
use ApplyError::{Failed, Rejected};

async fn apply(target: &str, client: &Client, metrics: &Metrics, action: &Action) -> Result<(), ApplyError> {
    let admin = client.database(ROLE_DB);
    let external = client.database(USER_DB);
    let (op, result) = match action {
        Action::CreateRole { name, grant } => {
            ledger_put(target, client, metrics, &format!("{ROLE_DB}.{name}"), "role").await.map_err(Failed)?;
            let cmd =
                doc! { "createRole": name, "roles": roles_bson(&grant.0), "privileges": privileges_bson(&grant.1) };
            ("createRole", admin.run_command(cmd).await)
        }
        Action::UpdateRole { name, grant } => {
            // Adopted roles enter the ledger on their first update.
            ledger_put(target, client, metrics, &format!("{ROLE_DB}.{name}"), "role").await.map_err(Failed)?;
            let cmd =
                doc! { "updateRole": name, "roles": roles_bson(&grant.0), "privileges": privileges_bson(&grant.1) };
            ("updateRole", admin.run_command(cmd).await)
        }
        Action::CreateUser { name, role } => {
            ledger_put(target, client, metrics, &format!("{USER_DB}.{name}"), "user").await.map_err(Failed)?;
            let cmd = doc! { "createUser": name, "roles": [ { "role": role, "db": ROLE_DB } ] };
            ("createUser", external.run_command(cmd).await)
        }
        Action::UpdateUser { name, role } => {
            ledger_put(target, client, metrics, &format!("{USER_DB}.{name}"), "user").await.map_err(Failed)?;
            let cmd = doc! { "updateUser": name, "roles": [ { "role": role, "db": ROLE_DB } ] };
            ("updateUser", external.run_command(cmd).await)
        }
        Action::DropUser { name } => {
            let r = external.run_command(doc! { "dropUser": name }).await;
            let r = ignore_code(r, 11);
            if r.is_ok() {
                unledger(target, client, metrics, &format!("{USER_DB}.{name}")).await.map_err(Failed)?;
            }
            ("dropUser", r)
        }
        Action::DropRole { name } => {
            let r = admin.run_command(doc! { "dropRole": name }).await;
            let r = ignore_code(r, 31);
            if r.is_ok() {
                unledger(target, client, metrics, &format!("{ROLE_DB}.{name}")).await.map_err(Failed)?;
            }
            ("dropRole", r)
        }
        Action::Release { name } => {
            unledger(target, client, metrics, name).await.map_err(Failed)?;
            return Ok(());
        }
        Action::Adopt { name } => {
            let kind = if name.starts_with(&format!("{USER_DB}.")) { "user" } else { "role" };
            ledger_put(target, client, metrics, name, kind).await.map_err(Failed)?;
            return Ok(());
        }
    };
    metrics.backend_op(BACKEND, op, result.is_ok());
    match result {
        Ok(_) => Ok(()),
        Err(e) => match connection::error_code(&e) {
            // Bad input that only this subject's grant carries. 9
            // (FailedToParse) is what the server says about an unknown
            // privilege action.
            Some(code @ (2 | 9 | 31 | 49 | 51002 | 51003 | 40415)) => {
                let err = connection::classify(target, op, &e);
                tracing::warn!(%target, operation = op, code, error = %err, "server refused grant");
                Err(Rejected(err.to_string()))
            }
            _ => Err(Failed(connection::classify(target, op, &e))),
        },
    }
}

fn ignore_code(r: mongodb::error::Result<Document>, code: i32) -> mongodb::error::Result<Document> {
    match r {
        Err(e) if connection::error_code(&e) == Some(code) => Ok(Document::new()),
        other => other,
    }
}

fn roles_bson(roles: &[(String, String)]) -> Vec<Bson> {
    roles.iter().map(|(r, d)| Bson::Document(doc! { "role": r, "db": d })).collect()
}

fn privileges_bson(privs: &[(Resource, Vec<String>)]) -> Vec<Bson> {
    privs
        .iter()
        .map(|(r, actions)| {
            let resource = match r {
                Resource::Cluster => doc! { "cluster": true },
                Resource::Namespace { db, collection } => doc! { "db": db, "collection": collection },
            };
            Bson::Document(doc! { "resource": resource, "actions": actions.clone() })
        })
        .collect()
}

/// `rolesInfo` for many names in few round trips, normalised.
pub async fn roles_info(
    target: &str,
    client: &Client,
    metrics: &Metrics,
    names: &[String],
) -> Result<BTreeMap<String, ActualRole>> {
    let mut out = BTreeMap::new();
    for chunk in names.chunks(BATCH) {
        let list: Vec<Bson> = chunk.iter().map(|n| Bson::Document(doc! { "role": n, "db": ROLE_DB })).collect();
        let r = client.database(ROLE_DB).run_command(doc! { "rolesInfo": list, "showPrivileges": true }).await;
        metrics.backend_op(BACKEND, "rolesInfo", r.is_ok());
        let reply = r.map_err(|e| connection::classify(target, "rolesInfo", &e))?;
        for role in reply.get_array("roles").map(|a| a.to_vec()).unwrap_or_default() {
            if let Some(d) = role.as_document()
                && let Ok(name) = d.get_str("role")
            {
                out.insert(name.to_string(), parse_role(d));
            }
        }
    }
    Ok(out)
}

/// Parse a `rolesInfo` entry into a normalised grant. Unknown shapes are
/// skipped, never a panic.
pub fn parse_role(d: &Document) -> ActualRole {
    let mut grant = MongoGrant::default();
    for r in d.get_array("roles").map(|a| a.to_vec()).unwrap_or_default() {
        if let Some(r) = r.as_document()
            && let (Ok(role), Ok(db)) = (r.get_str("role"), r.get_str("db"))
        {
            grant.roles.insert((role.to_string(), db.to_string()));
        }
    }
    for p in d.get_array("privileges").map(|a| a.to_vec()).unwrap_or_default() {
        let Some(p) = p.as_document() else { continue };
        let Ok(res) = p.get_document("resource") else { continue };
        let resource = if res.get_bool("cluster") == Ok(true) {
            Resource::Cluster
        } else {
            match (res.get_str("db"), res.get_str("collection")) {
                (Ok(db), Ok(c)) => Resource::Namespace { db: db.to_string(), collection: c.to_string() },
                _ => continue,
            }
        };
        let actions: BTreeSet<String> = p
            .get_array("actions")
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if !actions.is_empty() {
            grant.privileges.entry(resource).or_default().extend(actions);
        }
    }
    ActualRole { grant }
}

/// `usersInfo` for many `$external` names.
pub async fn users_info(
    target: &str,
    client: &Client,
    metrics: &Metrics,
    names: &[String],
) -> Result<BTreeMap<String, ActualUser>> {
    let mut out = BTreeMap::new();
    for chunk in names.chunks(BATCH) {
        let list: Vec<Bson> = chunk.iter().map(|n| Bson::Document(doc! { "user": n, "db": USER_DB })).collect();
        let r = client.database(USER_DB).run_command(doc! { "usersInfo": list }).await;
        metrics.backend_op(BACKEND, "usersInfo", r.is_ok());
        let reply = r.map_err(|e| connection::classify(target, "usersInfo", &e))?;
        for u in reply.get_array("users").map(|a| a.to_vec()).unwrap_or_default() {
            if let Some((name, user)) = u.as_document().and_then(parse_user) {
                out.insert(name, user);
            }
        }
    }
    Ok(out)
}

/// Parse a `usersInfo` entry into the user's name and roles. Entries
/// without a name are skipped and malformed roles ignored, never a panic.
pub fn parse_user(u: &Document) -> Option<(String, ActualUser)> {
    let name = u.get_str("user").ok()?;
    let roles = u
        .get_array("roles")
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_document())
                .filter_map(|r| Some((r.get_str("role").ok()?.to_string(), r.get_str("db").ok()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some((name.to_string(), ActualUser { roles }))
}

/// The ids of ledger documents; documents whose `_id` is not a string are
/// not dbgrant's and are ignored.
pub fn ledger_ids(docs: &[Document]) -> BTreeSet<String> {
    docs.iter().filter_map(|d| d.get_str("_id").ok().map(str::to_string)).collect()
}

/// Which of `ids` the ledger records as created by dbgrant.
pub async fn ledger(target: &str, client: &Client, metrics: &Metrics, ids: &[String]) -> Result<BTreeSet<String>> {
    let coll = client.database(LEDGER_DB).collection::<Document>(LEDGER_COLLECTION);
    let mut out = BTreeSet::new();
    for chunk in ids.chunks(BATCH) {
        let r = async {
            coll.find(doc! { "_id": { "$in": chunk.to_vec() }, "target": target }).await?.try_collect::<Vec<_>>().await
        }
        .await;
        metrics.backend_op(BACKEND, "ledgerFind", r.is_ok());
        let docs = r.map_err(|e| connection::classify(target, "reading the ownership ledger", &e))?;
        out.extend(ledger_ids(&docs));
    }
    Ok(out)
}

/// Every ledger entry this target wrote (for orphan collection after
/// downtime). Entries are tagged with the MongoTarget's name so two targets
/// pointing at one deployment never collect each other's objects.
pub async fn ledger_all(target: &str, client: &Client, metrics: &Metrics) -> Result<BTreeSet<String>> {
    let coll = client.database(LEDGER_DB).collection::<Document>(LEDGER_COLLECTION);
    let r = async { coll.find(doc! { "target": target }).await?.try_collect::<Vec<_>>().await }.await;
    metrics.backend_op(BACKEND, "ledgerFind", r.is_ok());
    let docs = r.map_err(|e| connection::classify(target, "reading the ownership ledger", &e))?;
    Ok(ledger_ids(&docs))
}

async fn ledger_put(target: &str, client: &Client, metrics: &Metrics, id: &str, kind: &str) -> Result<()> {
    let coll = client.database(LEDGER_DB).collection::<Document>(LEDGER_COLLECTION);
    let r = coll
        .update_one(
            doc! { "_id": id },
            doc! { "$setOnInsert": { "kind": kind, "target": target, "createdAt": bson::DateTime::now() } },
        )
        .upsert(true)
        .await;
    metrics.backend_op(BACKEND, "ledgerPut", r.is_ok());
    r.map(|_| ()).map_err(|e| connection::classify(target, "writing the ownership ledger", &e))
}

async fn unledger(target: &str, client: &Client, metrics: &Metrics, id: &str) -> Result<()> {
    let coll = client.database(LEDGER_DB).collection::<Document>(LEDGER_COLLECTION);
    let r = coll.delete_one(doc! { "_id": id }).await;
    metrics.backend_op(BACKEND, "ledgerDelete", r.is_ok());
    r.map(|_| ()).map_err(|e| connection::classify(target, "writing the ownership ledger", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolesinfo_reply_is_normalised_and_malformed_parts_skipped() {
        let d = doc! {
            "role": "entra/g", "db": "admin",
            "roles": [ { "role": "read", "db": "orders" }, { "bogus": 1 } ],
            "privileges": [
                { "resource": { "db": "orders", "collection": "audit" }, "actions": ["insert", "find"] },
                { "resource": { "cluster": true }, "actions": ["serverStatus"] },
                { "resource": "nonsense", "actions": ["find"] },
                { "actions": ["find"] },
            ],
        };
        let r = parse_role(&d);
        assert_eq!(r.grant.roles, [("read".to_string(), "orders".to_string())].into());
        assert_eq!(r.grant.privileges.len(), 2);
        assert_eq!(
            r.grant.privileges[&Resource::Namespace { db: "orders".into(), collection: "audit".into() }],
            ["find".to_string(), "insert".to_string()].into()
        );
    }
}
