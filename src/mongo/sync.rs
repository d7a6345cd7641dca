//! Applying plans to a MongoDB target: read roles, users and dbgrant's
//! ownership ledger in batches, plan each subject, write the difference.
//!
//! Ownership comes from the ledger (`super::ledger`): an entry is written
//! *before* `createRole`/`createUser` and removed *after* the drop.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use bson::{Bson, Document, doc};

use super::{BACKEND, INFO_BATCH, api::MongoApi, connection, ledger};
use crate::{
    Error, Failure, Result,
    api::{MongoTarget, SubjectKey},
    plan::index::BindingIndex,
    plan::mongo::{
        Action, Actual, ActualRole, ActualUser, MongoGrant, Plan, ROLE_DB, Resource, SubjectObjects, USER_DB,
        objects_for,
    },
    runtime::{audit, metrics::Metrics},
};

/// The result of syncing one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectResult {
    /// State matches the desired grant (the union of the contributions the
    /// server accepted; see [`SyncReport::rejected`]).
    Applied,
    /// An object with dbgrant's name exists and is not dbgrant's.
    Conflict(Vec<String>),
    /// The server refused the grant (bad role, cycle, ...) and no single
    /// contribution could be blamed: the subject's objects were left as
    /// they were.
    Rejected(String),
}

/// Per-target sync outcome.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Result per subject.
    pub results: BTreeMap<SubjectKey, SubjectResult>,
    /// Contributions the server refused, per subject and binding key, with
    /// the server's reason. The subject's objects carry the union of the
    /// others.
    pub rejected: BTreeMap<SubjectKey, BTreeMap<String, String>>,
    /// Subjects asked to [`SubjectWork::confirm`] whose objects, read back
    /// after the writes, still differ from the desired state, and how.
    pub unconfirmed: BTreeMap<SubjectKey, String>,
    /// Subjects whose objects were written.
    pub written: BTreeSet<SubjectKey>,
    /// Objects whose out-of-band changes were corrected.
    pub drifted: Vec<String>,
    /// Writes issued.
    pub writes: usize,
    /// Observe mode: the writes each subject's plan holds, not made
    /// (`create role admin.… with …`).
    pub planned: BTreeMap<SubjectKey, Vec<String>>,
}

/// One subject to sync: its objects and desired grant.
pub struct SubjectWork {
    pub subject: SubjectKey,
    /// Its role/user names.
    pub objects: SubjectObjects,
    /// Union of live bindings, or None to revoke.
    pub desired: Option<MongoGrant>,
    /// The contributions `desired` is the union of, by binding key (sorted):
    /// when the server refuses the union, they are tried one by one to
    /// find the ones it refuses. Empty for objects no binding wants.
    pub contributions: Vec<(String, Arc<MongoGrant>)>,
    /// Leave instead of dropping when revoking.
    pub retain: bool,
    /// Read the objects back after the writes and report in
    /// [`SyncReport::unconfirmed`] if they still differ (revocation).
    pub confirm: bool,
}

/// The sync work for `subjects` on `target`: each subject's objects and the
/// union of its live, accepted bindings in `idx` (None revokes; `retain`
/// then leaves the objects in place), read back afterwards if `confirm`.
/// Subjects the target cannot name are skipped. Pure.
pub fn subject_work<'a>(
    target: &MongoTarget,
    idx: &BindingIndex<MongoGrant>,
    subjects: impl IntoIterator<Item = &'a SubjectKey>,
    retain: bool,
    confirm: bool,
) -> Vec<SubjectWork> {
    let name = kube::ResourceExt::name_any(target);
    let work = |s: &SubjectKey| {
        Some(SubjectWork {
            subject: s.clone(),
            objects: objects_for(&target.spec.oidc, s).ok()?,
            desired: idx.desired(&name, s),
            contributions: idx.contributions(&name, s).into_iter().map(|(k, g)| (k.clone(), g.clone())).collect(),
            // Only used when nothing remains to grant (also after the server
            // refuses what remains).
            retain,
            confirm,
        })
    };
    subjects.into_iter().filter_map(work).collect()
}

/// The scratch role a refused union's contributions are tried on, one at a
/// time, for a subject whose role is `role` (`<authNamePrefix>/<id>`):
/// `<authNamePrefix>/.dbgrant-validate`, created with a candidate grant and
/// dropped at once. It is granted to nobody, and no binding can name it
/// (roles under the prefix are never grantable; no group object id or app
/// role value starts with a dot). If dbgrant dies between the two
/// commands, the next isolation drops it before reusing the name.
pub fn scratch_role(role: &str) -> String {
    let prefix = role.rsplit_once('/').map_or("dbgrant", |(p, _)| p);
    format!("{prefix}/.dbgrant-validate")
}

/// Read, plan and write for `work` on one target. The caller holds the
/// target's write lock.
pub async fn sync(
    target: &str,
    client: &dyn MongoApi,
    metrics: &Metrics,
    audit: &audit::Scope<'_>,
    adopt: bool,
    observe: bool,
    work: &[SubjectWork],
) -> Result<SyncReport> {
    let actual = read_actual(target, client, metrics, work.iter()).await?;
    let mut report = SyncReport::default();
    // The grant each confirmed subject ended up with, to check it against.
    let mut wanted: BTreeMap<&SubjectKey, Option<MongoGrant>> = BTreeMap::new();
    for (w, actual) in work.iter().zip(actual) {
        let plan: Plan = crate::plan::mongo::plan(&w.objects, w.desired.as_ref(), &actual, adopt, w.retain);
        if !plan.conflicts.is_empty() {
            report.results.insert(w.subject.clone(), SubjectResult::Conflict(plan.conflicts));
            if w.confirm {
                wanted.insert(&w.subject, w.desired.clone());
            }
            continue;
        }
        if observe {
            // Observe mode: the plan is the result; nothing is written, the
            // ledger included.
            report.planned.insert(w.subject.clone(), plan.actions.iter().map(intent).collect());
            report.drifted.extend(plan.drifted.iter().cloned());
            if w.confirm {
                wanted.insert(&w.subject, w.desired.clone());
            }
            report.results.insert(w.subject.clone(), SubjectResult::Applied);
            continue;
        }
        cleanup_stale_ledger(target, client, metrics, w, w.desired.as_ref(), &actual).await?;
        let mut desired = w.desired.clone();
        let mut result = SubjectResult::Applied;
        let audited = Audited { scope: audit, before: &actual, bindings: binding_keys(&w.contributions, None) };
        match run(target, client, metrics, &audited, &plan.actions, &mut report.writes).await {
            Ok(()) => {
                if !plan.actions.is_empty() {
                    report.written.insert(w.subject.clone());
                }
                report.drifted.extend(plan.drifted.iter().cloned())
            }
            Err(Failed(e)) => return Err(e),
            Err(Rejected(msg)) => {
                // What the server holds now (when dbgrant owns it) was
                // accepted as a whole: contributions it covers need no try.
                let base = actual.role.as_ref().filter(|_| actual.role_owned || adopt).map(|r| &r.grant);
                let scratch = scratch_role(&w.objects.role);
                let refused =
                    isolate(target, client, metrics, audit, &scratch, &w.contributions, base, &msg, &mut report.writes)
                        .await
                        .map_err(|e| match e {
                            Failed(e) => e,
                            Rejected(m) => backend_error(target, m),
                        })?;
                if refused.is_empty() {
                    // Every contribution passes on its own and together:
                    // the refusal is not any binding's (a race, a lock).
                    result = SubjectResult::Rejected(msg);
                } else {
                    // Write the union of what the server accepts.
                    desired = union(w.contributions.iter().filter(|(k, _)| !refused.contains_key(k)));
                    let [actual] = read_actual(target, client, metrics, [w].into_iter())
                        .await?
                        .try_into()
                        .unwrap_or_else(|_: Vec<Actual>| [Actual::default()]);
                    let retry = crate::plan::mongo::plan(&w.objects, desired.as_ref(), &actual, adopt, w.retain);
                    cleanup_stale_ledger(target, client, metrics, w, desired.as_ref(), &actual).await?;
                    let audited = Audited {
                        scope: audit,
                        before: &actual,
                        bindings: binding_keys(&w.contributions, Some(&refused)),
                    };
                    match run(target, client, metrics, &audited, &retry.actions, &mut report.writes).await {
                        Ok(()) => {
                            report.written.insert(w.subject.clone());
                        }
                        Err(Failed(e)) => return Err(e),
                        Err(Rejected(m)) => result = SubjectResult::Rejected(m),
                    }
                    tracing::warn!(%target, subject = %w.subject, bindings = ?refused.keys().collect::<Vec<_>>(),
                        "server refused these bindings' grants; applied the others");
                    report.rejected.insert(w.subject.clone(), refused);
                }
            }
        }
        if w.confirm {
            wanted.insert(&w.subject, desired);
        }
        report.results.insert(w.subject.clone(), result);
    }
    // Read back what revocations left: a revocation is reported only once
    // the server no longer carries what it took away.
    let confirm: Vec<&SubjectWork> = work.iter().filter(|w| w.confirm).collect();
    if !confirm.is_empty() {
        let after = read_actual(target, client, metrics, confirm.iter().copied()).await?;
        for (w, actual) in confirm.into_iter().zip(after) {
            let desired = wanted.get(&w.subject).cloned().flatten();
            let left = crate::plan::mongo::plan(&w.objects, desired.as_ref(), &actual, adopt, w.retain);
            if !left.actions.is_empty() {
                let pending: Vec<String> = left.actions.iter().map(describe).collect();
                report.unconfirmed.insert(w.subject.clone(), pending.join(", "));
            }
        }
    }
    Ok(report)
}

/// The union of `contributions`, or None when there are none.
fn union<'a>(contributions: impl Iterator<Item = &'a (String, Arc<MongoGrant>)>) -> Option<MongoGrant> {
    use crate::plan::index::Grant;
    let mut out: Option<MongoGrant> = None;
    for (_, g) in contributions {
        out.get_or_insert_with(MongoGrant::default).merge(g);
    }
    out
}

/// What a still-pending write would do, for a status message.
/// What a write would do, for Observe mode: `create role admin.x with
/// read@orders, find on orders.audit`.
pub fn intent(a: &Action) -> String {
    let grant = |g: &crate::plan::mongo::MongoGrantOrd| {
        let mut parts: Vec<String> = g.0.iter().map(|(r, d)| format!("{r}@{d}")).collect();
        for (r, actions) in &g.1 {
            let on = match r {
                Resource::Cluster => "the cluster".to_string(),
                Resource::Namespace { db, collection } => format!("{db}.{collection}"),
            };
            parts.push(format!("{} on {on}", actions.join(", ")));
        }
        if parts.is_empty() { "nothing".to_string() } else { parts.join("; ") }
    };
    match a {
        Action::CreateRole { name, grant: g } => format!("create role {ROLE_DB}.{name} with {}", grant(g)),
        Action::UpdateRole { name, grant: g } => format!("update role {ROLE_DB}.{name} to {}", grant(g)),
        Action::CreateUser { name, role } => format!("create user {USER_DB}.{name} with {role}@{ROLE_DB}"),
        Action::UpdateUser { name, role } => format!("update user {USER_DB}.{name} to {role}@{ROLE_DB}"),
        Action::DropUser { name } => format!("drop user {USER_DB}.{name}"),
        Action::DropRole { name } => format!("drop role {ROLE_DB}.{name}"),
        Action::Release { name } => format!("stop managing {name} (deletionPolicy: Retain)"),
        Action::Adopt { name } => format!("adopt {name}"),
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::CreateRole { name, .. } => format!("role {ROLE_DB}.{name} is missing"),
        Action::UpdateRole { name, .. } => format!("role {ROLE_DB}.{name} still differs"),
        Action::CreateUser { name, .. } => format!("user {USER_DB}.{name} is missing"),
        Action::UpdateUser { name, .. } => format!("user {USER_DB}.{name} still differs"),
        Action::DropUser { name } => format!("user {USER_DB}.{name} still exists"),
        Action::DropRole { name } => format!("role {ROLE_DB}.{name} still exists"),
        Action::Release { name } => format!("{name} is still in the ledger"),
        Action::Adopt { name } => format!("{name} is not in the ledger"),
    }
}

/// The actual state of each work item's objects, in order: roles, users
/// and ledger entries read in batches.
async fn read_actual<'a>(
    target: &str,
    client: &dyn MongoApi,
    metrics: &Metrics,
    work: impl Iterator<Item = &'a SubjectWork> + Clone,
) -> Result<Vec<Actual>> {
    let roles: Vec<String> = work.clone().map(|w| w.objects.role.clone()).collect();
    let users: Vec<String> = work.clone().filter_map(|w| w.objects.user.clone()).collect();
    let actual_roles = roles_info(target, client, metrics, &roles).await?;
    let actual_users = users_info(target, client, metrics, &users).await?;
    let mut ledger_ids: Vec<String> = roles.iter().map(|r| format!("{ROLE_DB}.{r}")).collect();
    ledger_ids.extend(users.iter().map(|u| format!("{USER_DB}.{u}")));
    let owned = ledger::owned(target, client, metrics, &ledger_ids).await?;
    Ok(work
        .map(|w| {
            let user_id = w.objects.user.as_ref().map(|u| format!("{USER_DB}.{u}"));
            Actual {
                role: actual_roles.get(&w.objects.role).cloned(),
                user: w.objects.user.as_ref().and_then(|u| actual_users.get(u).cloned()),
                role_owned: owned.contains(&format!("{ROLE_DB}.{}", w.objects.role)),
                user_owned: user_id.as_ref().is_some_and(|u| owned.contains(u)),
            }
        })
        .collect())
}

/// Ledger entries for objects that no longer exist and are not wanted are
/// removed (a crash between drop and unledger, or a refused create).
async fn cleanup_stale_ledger(
    target: &str,
    client: &dyn MongoApi,
    metrics: &Metrics,
    w: &SubjectWork,
    desired: Option<&MongoGrant>,
    actual: &Actual,
) -> Result<()> {
    if desired.is_some() {
        return Ok(());
    }
    if actual.role.is_none() && actual.role_owned {
        ledger::remove(target, client, metrics, &format!("{ROLE_DB}.{}", w.objects.role)).await?;
    }
    if let Some(u) = &w.objects.user
        && actual.user.is_none()
        && actual.user_owned
    {
        ledger::remove(target, client, metrics, &format!("{USER_DB}.{u}")).await?;
    }
    Ok(())
}

/// What a subject's writes are audited with: the scope, the objects as
/// read before the writes, and the bindings whose union they carry.
struct Audited<'a> {
    scope: &'a audit::Scope<'a>,
    before: &'a Actual,
    bindings: Vec<String>,
}

/// The binding keys of `contributions`, less those the server refused.
fn binding_keys(
    contributions: &[(String, Arc<MongoGrant>)],
    refused: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    contributions.iter().map(|(k, _)| k.clone()).filter(|k| refused.is_none_or(|r| !r.contains_key(k))).collect()
}

/// A grant as the audit trail shows it: MongoDB's own `roles` and
/// `privileges` shapes.
fn grant_json(roles: &[(String, String)], privileges: &[(Resource, Vec<String>)]) -> serde_json::Value {
    serde_json::json!({
        "roles": Bson::Array(roles_bson(roles)).into_relaxed_extjson(),
        "privileges": Bson::Array(privileges_bson(privileges)).into_relaxed_extjson(),
    })
}

/// A user's roles as the audit trail shows them.
fn user_json(roles: &[(String, String)]) -> serde_json::Value {
    serde_json::json!({ "roles": Bson::Array(roles_bson(roles)).into_relaxed_extjson() })
}

impl Audited<'_> {
    /// Record `op` on `name` in `db` (the action's object) with its result.
    fn record(&self, op: &'static str, db: &str, name: &str, action: &Action, outcome: Result<(), &ApplyError>) {
        let (kind, before) = if db == USER_DB {
            let roles: Option<Vec<(String, String)>> =
                self.before.user.as_ref().map(|u| u.roles.iter().cloned().collect());
            ("user", roles.map(|r| user_json(&r)))
        } else {
            ("role", self.before.role.as_ref().map(|r| grant_json(&ord_roles(&r.grant), &ord_privileges(&r.grant))))
        };
        let (verb, after) = match action {
            Action::CreateRole { grant, .. } => ("create", Some(grant_json(&grant.0, &grant.1))),
            Action::UpdateRole { grant, .. } => ("update", Some(grant_json(&grant.0, &grant.1))),
            Action::CreateUser { role, .. } => ("create", Some(user_json(&[(role.clone(), ROLE_DB.to_string())]))),
            Action::UpdateUser { role, .. } => ("update", Some(user_json(&[(role.clone(), ROLE_DB.to_string())]))),
            _ => ("delete", None),
        };
        let outcome = match outcome {
            Ok(()) => Ok("applied"),
            Err(Rejected(m)) => Err(("refused", m.clone())),
            Err(Failed(e)) => Err(("failed", e.to_string())),
        };
        let object = audit::BackendObject { kind, name: format!("{db}.{name}") };
        self.scope.record(object, verb, op, before, after, self.bindings.clone(), outcome);
    }
}

fn ord_roles(g: &MongoGrant) -> Vec<(String, String)> {
    g.roles.iter().cloned().collect()
}

fn ord_privileges(g: &MongoGrant) -> Vec<(Resource, Vec<String>)> {
    g.privileges.iter().map(|(r, a)| (r.clone(), a.iter().cloned().collect())).collect()
}

/// Run a subject's writes in order, stopping at the first refusal.
async fn run(
    target: &str,
    client: &dyn MongoApi,
    metrics: &Metrics,
    audited: &Audited<'_>,
    actions: &[Action],
    writes: &mut usize,
) -> Result<(), ApplyError> {
    for action in actions {
        *writes += 1;
        apply(target, client, metrics, audited, action).await?;
    }
    Ok(())
}

/// Find which contributions the server refuses. Contributions that `base`
/// (the subject's role as the server holds it, so accepted as a whole)
/// covers are accepted without a try; each other one is added in turn (by
/// binding key) to the union of those accepted so far and tried on the
/// `scratch` role, unless that union already covers it. The ones refused
/// are returned with the server's reason. A lone contribution is the
/// refusal's cause by itself (`refusal` is its reason) and costs no
/// scratch writes. So a subject with thousands of bindings and one bad one
/// costs a few writes, not thousands.
#[allow(clippy::too_many_arguments)]
async fn isolate(
    target: &str,
    client: &dyn MongoApi,
    metrics: &Metrics,
    audit: &audit::Scope<'_>,
    scratch: &str,
    contributions: &[(String, Arc<MongoGrant>)],
    base: Option<&MongoGrant>,
    refusal: &str,
    writes: &mut usize,
) -> Result<BTreeMap<String, String>, ApplyError> {
    use crate::plan::index::Grant;
    let mut refused = BTreeMap::new();
    if let [(key, _)] = contributions {
        refused.insert(key.clone(), refusal.to_string());
        return Ok(refused);
    }
    let mut accepted = MongoGrant::default();
    let (known, unknown): (Vec<_>, Vec<_>) = contributions.iter().partition(|(_, g)| base.is_some_and(|b| b.covers(g)));
    for (_, grant) in known {
        accepted.merge(grant);
    }
    for (key, grant) in unknown {
        if accepted.covers(grant) {
            continue;
        }
        let mut candidate = accepted.clone();
        candidate.merge(grant);
        match try_on_scratch(target, client, metrics, audit, scratch, &candidate, key, writes).await {
            Ok(()) => accepted = candidate,
            Err(Rejected(reason)) => {
                refused.insert(key.clone(), reason);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Create the `scratch` role with `grant` and drop it again. `Rejected`
/// when the server refuses the grant.
#[allow(clippy::too_many_arguments)]
async fn try_on_scratch(
    target: &str,
    client: &dyn MongoApi,
    metrics: &Metrics,
    audit: &audit::Scope<'_>,
    scratch: &str,
    grant: &MongoGrant,
    candidate: &str,
    writes: &mut usize,
) -> Result<(), ApplyError> {
    let (roles, privileges) = grant_bson(grant);
    let create = doc! { "createRole": scratch, "roles": roles, "privileges": privileges };
    let object = || audit::BackendObject { kind: "role", name: format!("{ROLE_DB}.{scratch}") };
    let outcome = |r: &mongodb::error::Result<Document>| match r {
        Ok(_) => Ok("applied"),
        Err(e) => Err(("refused", connection::classify(target, "createRole", e).to_string())),
    };
    let drop = || async {
        let r = ignore_code(client.run(ROLE_DB, doc! { "dropRole": scratch }).await, 31);
        metrics.backend_op(BACKEND, "dropRole", r.is_ok());
        let after = None;
        audit.record(object(), "validate", "dropRole", None, after, vec![candidate.to_string()], outcome(&r));
        r.map(|_| ()).map_err(|e| Failed(connection::classify(target, "dropRole", &e)))
    };
    for attempt in 0..2 {
        *writes += 1;
        let r = client.run(ROLE_DB, create.clone()).await;
        metrics.backend_op(BACKEND, "createRole", r.is_ok());
        let after = Some(grant_json(&ord_roles(grant), &ord_privileges(grant)));
        audit.record(object(), "validate", "createRole", None, after, vec![candidate.to_string()], outcome(&r));
        match r {
            Ok(_) => {
                *writes += 1;
                return drop().await;
            }
            // Left behind by a crash: drop it and try once more.
            Err(e) if connection::error_code(&e) == Some(51002) && attempt == 0 => {
                *writes += 1;
                drop().await?;
            }
            Err(e) => return Err(refusal(target, "createRole", &e)),
        }
    }
    Err(Failed(backend_error(target, format!("{scratch} keeps reappearing; is another dbgrant writing?"))))
}

fn backend_error(target: &str, message: impl Into<String>) -> Error {
    Error::Backend { backend: BACKEND, target: target.into(), message: message.into(), failure: Failure::Transient }
}

/// A refused grant (bad input that only this grant carries) or a failure
/// of the whole sync.
enum ApplyError {
    /// The server refused this subject's grant; other subjects go on.
    Rejected(String),
    /// Connectivity or authorisation: stop the whole sync.
    Failed(Error),
}
use ApplyError::{Failed, Rejected};

/// How a failed write counts. Only what makes the whole target unusable
/// for now stops the sync: no server, a dropped connection, a failover
/// (transient), or a failed login. Any other command error — BadValue,
/// FailedToParse (an unknown action), RoleNotFound, a cycle, a role that
/// exists, a document over the size limit, Unauthorized on one database
/// the identity cannot grant — is this subject's refusal: its bindings are
/// isolated and every other subject (and revocation) goes on.
fn refusal(target: &str, op: &str, e: &mongodb::error::Error) -> ApplyError {
    let err = connection::classify(target, op, e);
    let login = matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Authentication { .. });
    match (&err, connection::error_code(e)) {
        (Error::Backend { failure: Failure::Refused | Failure::Unauthorized, .. }, Some(code)) if !login => {
            tracing::warn!(%target, operation = op, code, error = %err, "server refused grant");
            Rejected(err.to_string())
        }
        _ => Failed(err),
    }
}

async fn apply(
    target: &str,
    client: &dyn MongoApi,
    metrics: &Metrics,
    audited: &Audited<'_>,
    action: &Action,
) -> Result<(), ApplyError> {
    let put = async |entry: &str, kind| ledger::put(target, client, metrics, entry, kind).await.map_err(Failed);
    let remove = async |entry: &str| ledger::remove(target, client, metrics, entry).await.map_err(Failed);
    let (op, db, name, cmd) = match action {
        Action::CreateRole { name, grant } | Action::UpdateRole { name, grant } => {
            let op = if matches!(action, Action::CreateRole { .. }) { "createRole" } else { "updateRole" };
            (
                op,
                ROLE_DB,
                name,
                doc! { op: name, "roles": roles_bson(&grant.0), "privileges": privileges_bson(&grant.1) },
            )
        }
        Action::CreateUser { name, role } | Action::UpdateUser { name, role } => {
            let op = if matches!(action, Action::CreateUser { .. }) { "createUser" } else { "updateUser" };
            (op, USER_DB, name, doc! { op: name, "roles": [ { "role": role, "db": ROLE_DB } ] })
        }
        Action::DropRole { name } => ("dropRole", ROLE_DB, name, doc! { "dropRole": name }),
        Action::DropUser { name } => ("dropUser", USER_DB, name, doc! { "dropUser": name }),
        Action::Release { name } => return remove(name).await,
        Action::Adopt { name } => {
            return put(name, if name.starts_with(&format!("{USER_DB}.")) { "user" } else { "role" }).await;
        }
    };
    let entry = format!("{db}.{name}");
    let dropping = matches!(action, Action::DropRole { .. } | Action::DropUser { .. });
    // The ledger claims a name before the command creates it (adopted
    // objects enter it on their first update), and lets it go only after
    // the object is gone. A name the ledger already held when this sync
    // read it (under the target's write lock; only dbgrant writes there)
    // needs no second claim: an update of a role dbgrant owns is one write.
    let ledgered = if db == USER_DB { audited.before.user_owned } else { audited.before.role_owned };
    if !dropping && !ledgered {
        put(&entry, if db == USER_DB { "user" } else { "role" }).await?;
    }
    let mut result = client.run(db, cmd).await;
    if dropping {
        // UserNotFound (11) and RoleNotFound (31): already gone.
        result = ignore_code(result, if db == USER_DB { 11 } else { 31 });
    }
    metrics.backend_op(BACKEND, op, result.is_ok());
    let Err(e) = result else {
        audited.record(op, db, name, action, Ok(()));
        return if dropping { remove(&entry).await } else { Ok(()) };
    };
    let refused = refusal(target, op, &e);
    audited.record(op, db, name, action, Err(&refused));
    // A refused create made nothing: its ledger entry (written first) must
    // not claim the name, or an object someone creates under it later would
    // count as dbgrant's.
    if matches!(refused, Rejected(_)) && matches!(action, Action::CreateRole { .. } | Action::CreateUser { .. }) {
        remove(&entry).await?;
    }
    Err(refused)
}

fn ignore_code(r: mongodb::error::Result<Document>, code: i32) -> mongodb::error::Result<Document> {
    match r {
        Err(e) if connection::error_code(&e) == Some(code) => Ok(Document::new()),
        other => other,
    }
}

/// A grant's `roles` and `privileges` arrays, as `createRole` takes them.
fn grant_bson(g: &MongoGrant) -> (Vec<Bson>, Vec<Bson>) {
    let roles: Vec<(String, String)> = g.roles.iter().cloned().collect();
    let privileges: Vec<(Resource, Vec<String>)> =
        g.privileges.iter().map(|(r, a)| (r.clone(), a.iter().cloned().collect())).collect();
    (roles_bson(&roles), privileges_bson(&privileges))
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
    client: &dyn MongoApi,
    metrics: &Metrics,
    names: &[String],
) -> Result<BTreeMap<String, ActualRole>> {
    let mut out = BTreeMap::new();
    for chunk in names.chunks(INFO_BATCH) {
        let list: Vec<Bson> = chunk.iter().map(|n| Bson::Document(doc! { "role": n, "db": ROLE_DB })).collect();
        let r = client.run(ROLE_DB, doc! { "rolesInfo": list, "showPrivileges": true }).await;
        metrics.backend_op(BACKEND, "rolesInfo", r.is_ok());
        let reply = r.map_err(|e| connection::classify(target, "rolesInfo", &e))?;
        for role in reply.get_array("roles").into_iter().flatten() {
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
    let roles = d.get_array("roles").into_iter().flatten().filter_map(|r| {
        let r = r.as_document()?;
        Some((r.get_str("role").ok()?.to_string(), r.get_str("db").ok()?.to_string()))
    });
    let mut grant = MongoGrant { roles: roles.collect(), ..Default::default() };
    for p in d.get_array("privileges").into_iter().flatten() {
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
    client: &dyn MongoApi,
    metrics: &Metrics,
    names: &[String],
) -> Result<BTreeMap<String, ActualUser>> {
    let mut out = BTreeMap::new();
    for chunk in names.chunks(INFO_BATCH) {
        let list: Vec<Bson> = chunk.iter().map(|n| Bson::Document(doc! { "user": n, "db": USER_DB })).collect();
        let r = client.run(USER_DB, doc! { "usersInfo": list }).await;
        metrics.backend_op(BACKEND, "usersInfo", r.is_ok());
        let reply = r.map_err(|e| connection::classify(target, "usersInfo", &e))?;
        for u in reply.get_array("users").into_iter().flatten() {
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

#[cfg(test)]
mod tests {
    fn discard_audit() -> audit::Scope<'static> {
        static AUDITOR: std::sync::LazyLock<audit::Auditor> = std::sync::LazyLock::new(audit::Auditor::discard);
        static TRIGGER: std::sync::LazyLock<audit::Trigger> = std::sync::LazyLock::new(audit::Trigger::default);
        audit::Scope::new(&AUDITOR, "mongodb", "t", &TRIGGER)
    }

    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::api::SubjectKind;

    /// An in-process [`MongoApi`] with scripted replies: it records every
    /// call and answers `createRole` with RoleNotFound (31) when the role
    /// inherits `ghost`, as a server does for a role that does not exist.
    /// No role is stored: `rolesInfo` always finds nothing.
    #[derive(Default)]
    struct Scripted {
        calls: Mutex<Vec<(String, Document)>>,
    }

    fn refused(code: i32, name: &str) -> mongodb::error::Error {
        let e: mongodb::error::CommandError =
            bson::from_document(doc! {"code": code, "codeName": name, "errmsg": "scripted"}).expect("command error");
        mongodb::error::ErrorKind::Command(e).into()
    }

    impl Scripted {
        fn record(&self, what: &str, doc: Document) {
            self.calls.lock().unwrap().push((what.to_string(), doc));
        }

        fn commands(&self, name: &str) -> Vec<Document> {
            let calls = self.calls.lock().unwrap();
            calls.iter().filter(|(_, d)| d.contains_key(name)).map(|(_, d)| d.clone()).collect()
        }
    }

    #[async_trait]
    impl MongoApi for Scripted {
        async fn run(&self, db: &str, command: Document) -> mongodb::error::Result<Document> {
            self.record(db, command.clone());
            let inherits_ghost = command
                .get_array("roles")
                .is_ok_and(|r| r.iter().any(|r| r.as_document().is_some_and(|r| r.get_str("role") == Ok("ghost"))));
            match command.keys().next().map(String::as_str) {
                Some("rolesInfo") => Ok(doc! { "roles": [] }),
                Some("usersInfo") => Ok(doc! { "users": [] }),
                Some("createRole") if inherits_ghost => Err(refused(31, "RoleNotFound")),
                _ => Ok(Document::new()),
            }
        }
        async fn find(&self, _: &str, _: &str, filter: Document) -> mongodb::error::Result<Vec<Document>> {
            self.record("find", filter);
            Ok(Vec::new())
        }
        async fn upsert(&self, _: &str, _: &str, filter: Document, _: Document) -> mongodb::error::Result<()> {
            self.record("upsert", filter);
            Ok(())
        }
        async fn delete_one(&self, _: &str, _: &str, filter: Document) -> mongodb::error::Result<()> {
            self.record("delete", filter);
            Ok(())
        }
    }

    fn grant(role: &str) -> MongoGrant {
        MongoGrant { roles: [(role.to_string(), "orders".to_string())].into(), ..Default::default() }
    }

    #[tokio::test]
    async fn a_refused_union_is_isolated_on_the_scratch_role_and_the_rest_is_written() {
        let api = Scripted::default();
        let subject = SubjectKey { kind: SubjectKind::Group, id: "g".into() };
        let contributions =
            vec![("ns/a".to_string(), grant("read").into()), ("ns/b".to_string(), grant("ghost").into())];
        let mut desired = grant("read");
        desired.roles.insert(("ghost".into(), "orders".into()));
        let work = [SubjectWork {
            subject: subject.clone(),
            objects: SubjectObjects { role: "entra/g".into(), user: None },
            desired: Some(desired),
            contributions,
            retain: false,
            confirm: false,
        }];
        let report = sync("t", &api, &Metrics::default(), &discard_audit(), false, false, &work).await.expect("sync");
        assert_eq!(report.results[&subject], SubjectResult::Applied);
        assert_eq!(report.rejected[&subject].keys().collect::<Vec<_>>(), ["ns/b"]);
        let creates: Vec<(String, Vec<String>)> = api
            .commands("createRole")
            .iter()
            .map(|c| {
                let roles = c.get_array("roles").unwrap().iter();
                let roles = roles.filter_map(|r| r.as_document()?.get_str("role").ok().map(str::to_string));
                (c.get_str("createRole").unwrap().to_string(), roles.collect())
            })
            .collect();
        let scratch = scratch_role("entra/g");
        assert_eq!(
            creates,
            [
                ("entra/g".to_string(), vec!["ghost".to_string(), "read".to_string()]),
                (scratch.clone(), vec!["read".to_string()]),
                (scratch.clone(), vec!["ghost".to_string(), "read".to_string()]),
                ("entra/g".to_string(), vec!["read".to_string()]),
            ],
            "the union, each contribution added in turn on the scratch role, then what was accepted"
        );
        let drops: Vec<String> =
            api.commands("dropRole").iter().map(|d| d.get_str("dropRole").unwrap().into()).collect();
        assert_eq!(drops, [scratch], "the accepted try is dropped at once");
        // The refused create's ledger claim was removed before the retry.
        assert!(api.calls.lock().unwrap().iter().any(|(what, _)| what == "delete"));
    }

    #[tokio::test]
    async fn a_lone_refused_contribution_costs_no_scratch_write() {
        let api = Scripted::default();
        let subject = SubjectKey { kind: SubjectKind::Group, id: "g".into() };
        let work = [SubjectWork {
            subject: subject.clone(),
            objects: SubjectObjects { role: "entra/g".into(), user: None },
            desired: Some(grant("ghost")),
            contributions: vec![("ns/b".to_string(), grant("ghost").into())],
            retain: false,
            confirm: false,
        }];
        let report = sync("t", &api, &Metrics::default(), &discard_audit(), false, false, &work).await.expect("sync");
        assert!(report.rejected[&subject].contains_key("ns/b"));
        assert_eq!(api.commands("createRole").len(), 1, "only the refused create; nothing else is written");
    }

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
