//! Who may run what: MongoDB's authorization checks for the commands the
//! double implements, against the privileges of the login's roles
//! (resolved when the command runs, so roles created or changed since the
//! login count).
//!
//! Resource matching is the server's `buildResourceSearchList`
//! (`src/mongo/db/auth/authorization_session_impl.cpp`): a check on
//!
//! ```text
//! the cluster           is met by {anyResource}, {cluster}
//! "every database"      is met by {anyResource}, {db: "", collection: ""}
//! database d            is met by {anyResource}, {db: "", collection: ""} (unless d is local or config), {db: d, collection: ""}
//! collection d.c        is met by {anyResource}, {db: "", collection: ""} (unless d is local or config), {db: d, collection: ""},
//!   (c not system.*)                {db: "", collection: c}, {db: d, collection: c}
//! system collection d.c is met by {anyResource}, {db: "", collection: c}, {db: d, collection: c}
//! ```
//!
//! and `anyAction` stands for every action. The rules per command are the
//! "Required Access" sections of the reference pages —
//! <https://www.mongodb.com/docs/manual/reference/command/createRole/#required-access>,
//! and likewise for `updateRole`, `dropRole`, `grantRolesToRole`,
//! `revokeRolesFromRole`, `grantPrivilegesToRole`,
//! `revokePrivilegesFromRole`, `rolesInfo`, `createUser`, `updateUser`,
//! `dropUser`, `grantRolesToUser`, `revokeRolesFromUser` and `usersInfo` —
//! as the server implements them
//! (`src/mongo/db/commands/user_management_commands_common.cpp`: "all
//! databases" is a check on `forAnyNormalResource`, so only `{db: "",
//! collection: ""}` or `anyResource` meet it, not a privilege on each
//! database by name):
//!
//! | command | needs |
//! |---|---|
//! | `createRole` | `createRole` on the database; `grantRole` on the database of each inherited role and of each privilege (a privilege on the cluster, on every database or on a collection in every database: on `admin`) |
//! | `updateRole` | `revokeRole` on every database; `grantRole` as for `createRole`, for the arrays given |
//! | `grantRolesToRole` / `grantPrivilegesToRole` | `grantRole` on each granted role's / privilege's database |
//! | `revokeRolesFromRole` / `revokePrivilegesFromRole` | `revokeRole` likewise |
//! | `dropRole` | `dropRole` on the database |
//! | `rolesInfo` | `viewRole` on each named role's database, unless the login holds that role directly; `rolesInfo: 1`: on the command's database |
//! | `createUser` | `createUser` on the database; `grantRole` on each role's database |
//! | `updateUser` | `roles`: `revokeRole` on every database and `grantRole` on each role's database; `pwd` / `customData`: `changePassword` / `changeCustomData` on the database (or the `Own` actions for oneself) |
//! | `grantRolesToUser` / `revokeRolesFromUser` | `grantRole` / `revokeRole` on each role's database |
//! | `dropUser` | `dropUser` on the database |
//! | `usersInfo` | `viewUser` on each named user's database, unless it is the login itself; `usersInfo: 1`: on the command's database; `forAllDBs`: on the cluster |
//! | `authenticationRestrictions` (create/update) | `setAuthenticationRestriction` on the database |
//! | `find`, `getMore` / `insert` / `update` / `delete` | `find` / `insert` / `update` (and `insert` when upserting) / `remove` on the collection |
//!
//! A refusal is 13 `Unauthorized`, "not authorized on `<db>` to execute
//! command `<the command, as the server prints BSON>`" (passwords shown as
//! `"xxx"`), as `CommandInvocation::checkAuthorization` reports it.
//!
//! Not modelled: `getParameter` (a real server wants `getParameter` on the
//! cluster; the double lets any login read its few parameters),
//! `killCursors` (any login may kill cursors; cursors are not tied to
//! their owner), `system.buckets` resources, and the localhost exception.

use super::data;
use super::error::{CommandError, codes};
use super::state::{Privilege, Resource, RoleName};
use super::umc::args::{parse_privileges, parse_role_name, parse_role_names, truthy};
use bson::{Bson, Document};

/// What a check is about: the server's `ResourcePattern` of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The cluster resource.
    Cluster,
    /// Every database (`ResourcePattern::forAnyNormalResource`): what
    /// `updateRole` and `updateUser` ask `revokeRole` on.
    EveryDatabase,
    /// One database.
    Database(String),
    /// One collection, `db.collection`.
    Collection(String, String),
}

impl Target {
    fn database(db: &str) -> Self {
        Self::Database(db.to_string())
    }
}

/// `local` and `config` are not "normal": privileges on every database do
/// not reach them.
fn is_normal_database(db: &str) -> bool {
    db != "local" && db != "config"
}

/// `system.*` collections (and `local.replset.*`) are matched only by
/// privileges that name them.
fn is_normal_collection(db: &str, collection: &str) -> bool {
    let system = collection.starts_with("system.") || (db == "local" && collection.starts_with("replset."));
    !system
}

/// Every privilege resource that grants actions on `target`.
pub(crate) fn search_list(target: &Target) -> Vec<Resource> {
    let mut list = vec![Resource::AnyResource];
    match target {
        Target::Cluster => list.push(Resource::Cluster),
        Target::EveryDatabase => list.push(Resource::database("")),
        Target::Database(db) => {
            if is_normal_database(db) {
                list.push(Resource::database(""));
            }
            list.push(Resource::database(db.clone()));
        }
        Target::Collection(db, collection) => {
            if is_normal_collection(db, collection) {
                if is_normal_database(db) {
                    list.push(Resource::database(""));
                }
                list.push(Resource::database(db.clone()));
            }
            list.push(Resource::collection("", collection.clone()));
            list.push(Resource::collection(db.clone(), collection.clone()));
        }
    }
    list
}

/// Whether `privileges` allow `action` on `target`.
pub(crate) fn grants(privileges: &[Privilege], target: &Target, action: &str) -> bool {
    let resources = search_list(target);
    privileges
        .iter()
        .filter(|p| resources.contains(&p.resource))
        .any(|p| p.actions.iter().any(|a| a == action || a == "anyAction"))
}

/// An authenticated login, as the checks see it.
#[derive(Debug)]
pub(crate) struct Login<'a> {
    /// User name.
    pub(crate) user: &'a str,
    /// Database the user is defined in.
    pub(crate) db: &'a str,
    /// Roles granted to the user directly.
    pub(crate) roles: &'a [RoleName],
    /// The privileges of those roles and of every role they inherit.
    pub(crate) privileges: &'a [Privilege],
}

impl Login<'_> {
    fn may(&self, target: &Target, action: &str) -> bool {
        grants(self.privileges, target, action)
    }

    fn may_on_roles(&self, roles: &[RoleName], action: &str) -> bool {
        roles.iter().all(|r| self.may(&Target::database(&r.db), action))
    }

    /// `grantRole`/`revokeRole` for privileges: on the privilege's database,
    /// or on `admin` for privileges that span databases or the cluster.
    fn may_on_privileges(&self, privileges: &[Privilege], action: &str) -> bool {
        privileges.iter().all(|p| match &p.resource {
            Resource::Namespace { db, .. } if !db.is_empty() => self.may(&Target::database(db), action),
            _ => self.may(&Target::database("admin"), action),
        })
    }
}

/// Checks that `login` may run command `name` on `db`; 13 `Unauthorized`
/// if not. Commands whose arguments do not parse pass: they fail on their
/// own, as on the server, where parsing comes first.
pub(crate) fn authorize(login: &Login<'_>, name: &str, db: &str, cmd: &Document) -> Result<(), CommandError> {
    if allowed(login, name, db, cmd) { Ok(()) } else { Err(unauthorized(db, cmd)) }
}

fn allowed(login: &Login<'_>, name: &str, db: &str, cmd: &Document) -> bool {
    let here = Target::database(db);
    // Each `None` (absent or malformed) asks for nothing.
    let roles = |field: &str| cmd.get_array(field).ok().and_then(|items| parse_role_names(items, db).ok());
    let privileges = |field: &str| cmd.get_array(field).ok().and_then(|items| parse_privileges(items).ok());
    let grant_roles = |field: &str| roles(field).is_none_or(|r| login.may_on_roles(&r, "grantRole"));
    let revoke_roles = |field: &str| roles(field).is_none_or(|r| login.may_on_roles(&r, "revokeRole"));
    let grant_privileges = |field: &str| privileges(field).is_none_or(|p| login.may_on_privileges(&p, "grantRole"));
    let restrictions =
        !cmd.contains_key("authenticationRestrictions") || login.may(&here, "setAuthenticationRestriction");
    match name {
        "createRole" => {
            login.may(&here, "createRole") && grant_roles("roles") && grant_privileges("privileges") && restrictions
        }
        "updateRole" => {
            login.may(&Target::EveryDatabase, "revokeRole")
                && grant_roles("roles")
                && grant_privileges("privileges")
                && restrictions
        }
        "dropRole" => login.may(&here, "dropRole"),
        "grantRolesToRole" | "grantRolesToUser" => grant_roles("roles"),
        "revokeRolesFromRole" | "revokeRolesFromUser" => revoke_roles("roles"),
        "grantPrivilegesToRole" => grant_privileges("privileges"),
        "revokePrivilegesFromRole" => {
            privileges("privileges").is_none_or(|p| login.may_on_privileges(&p, "revokeRole"))
        }
        "rolesInfo" => roles_info_allowed(login, db, cmd),
        "createUser" => login.may(&here, "createUser") && grant_roles("roles") && restrictions,
        "updateUser" => update_user_allowed(login, db, cmd) && restrictions,
        "dropUser" => login.may(&here, "dropUser"),
        "usersInfo" => users_info_allowed(login, db, cmd),
        _ => match data::required_actions(name, cmd) {
            Some((collection, actions)) => {
                let target = Target::Collection(db.to_string(), collection);
                actions.iter().all(|a| login.may(&target, a))
            }
            None => true,
        },
    }
}

/// A login may always see the roles granted to it directly.
fn roles_info_allowed(login: &Login<'_>, db: &str, cmd: &Document) -> bool {
    let view = |role: &RoleName| login.roles.contains(role) || login.may(&Target::database(&role.db), "viewRole");
    match cmd.get("rolesInfo") {
        Some(Bson::Array(items)) => items.iter().all(|i| parse_role_name(i, db).map_or(true, |r| view(&r))),
        Some(v @ (Bson::String(_) | Bson::Document(_))) => parse_role_name(v, db).map_or(true, |r| view(&r)),
        Some(v) if truthy(v) == Some(true) => login.may(&Target::database(db), "viewRole"),
        _ => true,
    }
}

/// A login may always see itself.
fn users_info_allowed(login: &Login<'_>, db: &str, cmd: &Document) -> bool {
    let view = |user: &str, udb: &str| {
        (user == login.user && udb == login.db) || login.may(&Target::database(udb), "viewUser")
    };
    let one = |item: &Bson| match item {
        Bson::String(user) => view(user, db),
        Bson::Document(d) => match (d.get_str("user"), d.get_str("db")) {
            (Ok(user), Ok(udb)) => view(user, udb),
            _ => true,
        },
        _ => true,
    };
    match cmd.get("usersInfo") {
        Some(Bson::Array(items)) => items.iter().all(one),
        Some(Bson::Document(d)) if d.contains_key("forAllDBs") => login.may(&Target::Cluster, "viewUser"),
        Some(v @ (Bson::String(_) | Bson::Document(_))) => one(v),
        Some(v) if truthy(v) == Some(true) => login.may(&Target::database(db), "viewUser"),
        _ => true,
    }
}

fn update_user_allowed(login: &Login<'_>, db: &str, cmd: &Document) -> bool {
    let here = Target::database(db);
    let oneself = cmd.get_str("updateUser").is_ok_and(|u| u == login.user && db == login.db);
    let change = |field: &str, any: &str, own: &str| {
        !cmd.contains_key(field) || login.may(&here, any) || (oneself && login.may(&here, own))
    };
    let roles = match cmd.get_array("roles").ok().map(|items| parse_role_names(items, db)) {
        None | Some(Err(_)) => true,
        Some(Ok(roles)) => login.may(&Target::EveryDatabase, "revokeRole") && login.may_on_roles(&roles, "grantRole"),
    };
    change("pwd", "changePassword", "changeOwnPassword")
        && change("customData", "changeCustomData", "changeOwnCustomData")
        && roles
}

/// The server's refusal: "not authorized on <db> to execute command <cmd>".
pub(crate) fn unauthorized(db: &str, cmd: &Document) -> CommandError {
    // `snipForLogging`: user commands hide the password.
    let mut shown = cmd.clone();
    if shown.contains_key("pwd") {
        shown.insert("pwd", "xxx");
    }
    CommandError::new(
        codes::UNAUTHORIZED,
        format!("not authorized on {db} to execute command {}", render(&Bson::Document(shown))),
    )
}

/// A BSON value as the server's `BSONObj::toString` prints it:
/// `{ createRole: "r", privileges: [], roles: [], $db: "admin" }`.
pub(crate) fn render(value: &Bson) -> String {
    match value {
        Bson::Document(d) if d.is_empty() => "{}".into(),
        Bson::Document(d) => {
            let fields: Vec<String> = d.iter().map(|(k, v)| format!("{k}: {}", render(v))).collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Bson::Array(a) if a.is_empty() => "[]".into(),
        Bson::Array(a) => format!("[ {} ]", a.iter().map(render).collect::<Vec<_>>().join(", ")),
        Bson::String(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(d) if d.is_finite() && d.fract() == 0.0 && d.abs() < 1e16 => format!("{d:.1}"),
        Bson::Double(d) => d.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".into(),
        Bson::ObjectId(id) => format!("ObjectId('{id}')"),
        Bson::DateTime(t) => format!("new Date({})", t.timestamp_millis()),
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        Bson::Binary(b)
            if b.subtype == bson::spec::BinarySubtype::Uuid
                && let Ok(bytes) = <[u8; 16]>::try_from(b.bytes.as_slice()) =>
        {
            format!("UUID(\"{}\")", bson::Uuid::from_bytes(bytes))
        }
        Bson::Binary(b) => {
            let hex: String = b.bytes.iter().map(|x| format!("{x:02X}")).collect();
            format!("BinData({}, {hex})", u8::from(b.subtype))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mongo::state::AuthzStore;
    use bson::doc;

    fn privileges_of(roles: &[(&str, &str)]) -> Vec<Privilege> {
        let roles: Vec<RoleName> = roles.iter().map(|(r, d)| RoleName::new(*r, *d)).collect();
        AuthzStore::default().all_privileges(&roles)
    }

    fn check(roles: &[(&str, &str)], db: &str, cmd: Document) -> Result<(), CommandError> {
        let names: Vec<RoleName> = roles.iter().map(|(r, d)| RoleName::new(*r, *d)).collect();
        let privileges = privileges_of(roles);
        let login = Login { user: "op", db: "admin", roles: &names, privileges: &privileges };
        let name = cmd.keys().next().unwrap().clone();
        authorize(&login, &name, db, &cmd)
    }

    #[test]
    fn resources_match_as_on_the_server() {
        let any_db = [Privilege::new(Resource::database(""), ["find", "grantRole"])];
        assert!(grants(&any_db, &Target::database("orders"), "grantRole"));
        assert!(grants(&any_db, &Target::database("$external"), "grantRole"));
        assert!(grants(&any_db, &Target::EveryDatabase, "grantRole"));
        assert!(grants(&any_db, &Target::Collection("orders".into(), "o".into()), "find"));
        // local and config are not normal; system collections need naming.
        assert!(!grants(&any_db, &Target::database("local"), "grantRole"));
        assert!(!grants(&any_db, &Target::Collection("config".into(), "x".into()), "find"));
        assert!(!grants(&any_db, &Target::Collection("admin".into(), "system.users".into()), "find"));
        assert!(!grants(&any_db, &Target::Cluster, "find"));
        // A database privilege is not "every database".
        let orders = [Privilege::new(Resource::database("orders"), ["revokeRole", "find"])];
        assert!(grants(&orders, &Target::database("orders"), "revokeRole"));
        assert!(!grants(&orders, &Target::EveryDatabase, "revokeRole"));
        assert!(!grants(&orders, &Target::database("admin"), "revokeRole"));
        assert!(!grants(&orders, &Target::Collection("orders".into(), "system.js".into()), "find"));
        // A collection in every database; anyAction on anyResource.
        let coll = [Privilege::new(Resource::collection("", "audit"), ["insert"])];
        assert!(grants(&coll, &Target::Collection("a".into(), "audit".into()), "insert"));
        assert!(!grants(&coll, &Target::database("a"), "insert"));
        let all = [Privilege::new(Resource::AnyResource, ["anyAction"])];
        assert!(grants(&all, &Target::Cluster, "shutdown"));
        assert!(grants(&all, &Target::Collection("local".into(), "oplog.rs".into()), "remove"));
    }

    #[test]
    fn user_admin_on_admin_is_not_enough_for_dbgrant() {
        let ua = [("userAdmin", "admin")];
        let orders = doc! {"createRole": "g", "privileges": [{"resource": {"db": "orders", "collection": ""}, "actions": ["find"]}], "roles": []};
        let err = check(&ua, "admin", orders.clone()).unwrap_err();
        assert_eq!(err.code, 13);
        assert!(err.message.starts_with("not authorized on admin to execute command { createRole: \"g\", privileges: [ { resource: { db: \"orders\", collection: \"\" }, actions: [ \"find\" ] } ], roles: [] }"), "{}", err.message);
        // Privileges on admin only, and roles from admin, are fine.
        let admin_only = doc! {"createRole": "g", "privileges": [{"resource": {"db": "admin", "collection": ""}, "actions": ["find"]}], "roles": [{"role": "read", "db": "admin"}]};
        check(&ua, "admin", admin_only).unwrap();
        // Cluster-wide privileges need grantRole on admin, which it has.
        check(&ua, "admin", doc! {"createRole": "c", "privileges": [{"resource": {"cluster": true}, "actions": ["serverStatus"]}], "roles": []}).unwrap();
        assert!(
            check(
                &ua,
                "admin",
                doc! {"createRole": "g", "privileges": [], "roles": [{"role": "read", "db": "orders"}]}
            )
            .is_err()
        );
        assert!(check(&ua, "admin", doc! {"updateRole": "g", "roles": []}).is_err());
        assert!(check(&ua, "$external", doc! {"createUser": "u", "roles": []}).is_err());
        assert!(check(&ua, "$external", doc! {"dropUser": "u"}).is_err());
        assert!(check(&ua, "$external", doc! {"usersInfo": [{"user": "u", "db": "$external"}]}).is_err());
        check(&ua, "admin", doc! {"rolesInfo": [{"role": "g", "db": "admin"}]}).unwrap();
        check(&ua, "admin", doc! {"dropRole": "g"}).unwrap();
    }

    #[test]
    fn user_admin_any_database_and_the_ledger() {
        let op = [("userAdminAnyDatabase", "admin"), ("readWrite", "dbgrant")];
        let cmd = doc! {"createRole": "g", "privileges": [{"resource": {"cluster": true}, "actions": ["serverStatus"]}, {"resource": {"db": "", "collection": "x"}, "actions": ["find"]}], "roles": [{"role": "read", "db": "orders"}]};
        check(&op, "admin", cmd).unwrap();
        check(&op, "admin", doc! {"updateRole": "g", "roles": [], "privileges": []}).unwrap();
        check(&op, "$external", doc! {"createUser": "u", "roles": [{"role": "g", "db": "admin"}]}).unwrap();
        check(&op, "$external", doc! {"updateUser": "u", "roles": [{"role": "g", "db": "admin"}]}).unwrap();
        check(&op, "admin", doc! {"usersInfo": {"forAllDBs": true}}).unwrap();
        let upsert =
            doc! {"update": "ownership", "updates": [{"q": {"_id": "x"}, "u": {"$set": {"a": 1}}, "upsert": true}]};
        check(&op, "dbgrant", upsert.clone()).unwrap();
        check(&op, "dbgrant", doc! {"delete": "ownership", "deletes": [{"q": {}, "limit": 0}]}).unwrap();
        // No data rights elsewhere.
        let err = check(&op, "orders", doc! {"insert": "o", "documents": [{"a": 1}]}).unwrap_err();
        assert_eq!(err.code, 13);
        assert!(check(&op, "orders", doc! {"find": "o"}).is_err());
        // update without upsert needs only update.
        check(&[("readWrite", "x")], "x", doc! {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 1}}}]})
            .unwrap();
    }

    #[test]
    fn self_views_and_passwords() {
        let none: [(&str, &str); 0] = [];
        let login_roles = [RoleName::new("read", "app")];
        let privileges = privileges_of(&[("read", "app")]);
        let login = Login { user: "op", db: "admin", roles: &login_roles, privileges: &privileges };
        authorize(&login, "usersInfo", "admin", &doc! {"usersInfo": "op"}).unwrap();
        assert!(authorize(&login, "usersInfo", "admin", &doc! {"usersInfo": "other"}).is_err());
        authorize(&login, "rolesInfo", "app", &doc! {"rolesInfo": "read"}).unwrap();
        assert!(authorize(&login, "rolesInfo", "app", &doc! {"rolesInfo": "readWrite"}).is_err());
        assert!(check(&none, "admin", doc! {"rolesInfo": 1}).is_err());
        // The password never shows in the refusal.
        let err = check(&none, "admin", doc! {"createUser": "u", "pwd": "s3cret", "roles": []}).unwrap_err();
        assert!(!err.message.contains("s3cret") && err.message.contains("pwd: \"xxx\""), "{}", err.message);
        // Malformed arguments pass on to the command's own errors.
        check(&none, "admin", doc! {"find": 1}).unwrap();
    }

    #[test]
    fn rendering_follows_bsonobj_tostring() {
        let uuid = bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![0x11; 16] };
        let d = doc! {"a": 1, "b": 2.0, "c": "x\"y", "d": [], "e": {}, "f": true, "g": Bson::Null, "lsid": {"id": uuid}, "l": 5i64};
        assert_eq!(
            render(&Bson::Document(d)),
            "{ a: 1, b: 2.0, c: \"x\\\"y\", d: [], e: {}, f: true, g: null, lsid: { id: UUID(\"11111111-1111-1111-1111-111111111111\") }, l: 5 }"
        );
    }
}
