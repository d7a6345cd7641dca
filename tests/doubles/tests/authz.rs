//! The MongoDB double's authorization, against the real `mongodb` driver:
//! MongoDB's "Required Access" rules per command and per database for the
//! identities an operator like dbgrant may be given, custom roles resolved
//! when each command runs, and `connectionStatus` with `showPrivileges`.
//!
//! The rules (https://www.mongodb.com/docs/manual/reference/command/ —
//! the "Required Access" section of each command): `createRole` needs
//! `grantRole` on every privilege's and inherited role's database,
//! `updateRole` needs `revokeRole` on all databases, `createUser` in
//! `$external` needs `createUser` there, and so on. `userAdmin@admin`
//! grants its actions on `admin` only, so it meets none of those for other
//! databases.

use dbgrant_doubles::mongo::{MongoDouble, MongoDoubleConfig, OidcConfig, OidcIdentity, Resource, Role, ScramUser};
use futures::FutureExt;
use mongodb::Client;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::oidc::{Callback, IdpServerResponse};
use mongodb::options::{AuthMechanism, ClientOptions, Credential};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const ROOT: (&str, &str) = ("root", "root-pw");
/// The old documented rights: userAdmin@admin (+ the ledger).
const USER_ADMIN: (&str, &str) = ("ua", "ua-pw");
/// The documented minimum: userAdminAnyDatabase@admin + readWrite@dbgrant.
const OPERATOR: (&str, &str) = ("op", "op-pw");

/// The least-privilege custom role dbgrant needs (README's `dbgrantOperator`).
fn least_privilege_role() -> Document {
    doc! {
        "createRole": "dbgrantOperator",
        "privileges": [
            {"resource": {"db": "admin", "collection": ""}, "actions": ["createRole", "dropRole", "viewRole"]},
            {"resource": {"db": "", "collection": ""}, "actions": ["grantRole", "revokeRole"]},
            {"resource": {"db": "$external", "collection": ""}, "actions": ["createUser", "dropUser", "viewUser"]},
            {"resource": {"db": "dbgrant", "collection": "ownership"}, "actions": ["find", "insert", "update", "remove"]},
        ],
        "roles": [],
    }
}

async fn start() -> MongoDouble {
    MongoDouble::start(
        MongoDoubleConfig::default()
            .latency(Duration::ZERO)
            .user(ScramUser::root(ROOT.0, ROOT.1))
            .user(ScramUser::with_roles(
                USER_ADMIN.0,
                USER_ADMIN.1,
                &[("userAdmin", "admin"), ("readWrite", "dbgrant")],
            ))
            .user(ScramUser::admin(OPERATOR.0, OPERATOR.1)),
    )
    .await
    .expect("start double")
}

async fn login(double: &MongoDouble, (user, password): (&str, &str)) -> Client {
    let mut options = ClientOptions::parse(double.uri_with_credentials(user, password)).await.expect("parse uri");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).expect("client")
}

async fn run(client: &Client, db: &str, command: Document) -> Result<Document, Error> {
    client.database(db).run_command(command).await
}

fn code(err: &Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// Runs `command` and expects 13 Unauthorized; returns the message.
async fn refused(client: &Client, db: &str, command: Document) -> String {
    let name = command.keys().next().cloned().unwrap_or_default();
    let err = run(client, db, command).await.expect_err(&format!("{name} on {db} must be refused"));
    assert_eq!(code(&err), Some(13), "{name} on {db}: {err}");
    let (code_name, msg) = match err.kind.as_ref() {
        ErrorKind::Command(c) => (c.code_name.clone(), c.message.clone()),
        _ => unreachable!(),
    };
    assert_eq!(code_name, "Unauthorized");
    assert!(msg.starts_with(&format!("not authorized on {db} to execute command {{ {name}: ")), "{msg}");
    msg
}

async fn ok(client: &Client, db: &str, command: Document) -> Document {
    let name = command.keys().next().cloned().unwrap_or_default();
    run(client, db, command).await.unwrap_or_else(|e| panic!("{name} on {db}: {e}"))
}

fn orders_reader(name: &str) -> Document {
    doc! {
        "createRole": name,
        "privileges": [{"resource": {"db": "orders", "collection": ""}, "actions": ["find"]}],
        "roles": [],
    }
}

/// Everything dbgrant does on a target, in order: read roles, users and
/// the ledger; ledger put; createRole; updateRole (union grows, shrinks);
/// createUser / updateUser in `$external`; drops; ledger delete.
async fn dbgrant_cycle(client: &Client, suffix: &str) {
    let role = format!("entra/{suffix}");
    let ledger = client.database("dbgrant").collection::<Document>("ownership");
    ok(client, "admin", doc! {"rolesInfo": [{"role": &role, "db": "admin"}], "showPrivileges": true}).await;
    ok(client, "$external", doc! {"usersInfo": [{"user": &role, "db": "$external"}]}).await;
    ledger.find(doc! {"_id": {"$in": [format!("admin.{role}")]}, "target": "t"}).await.expect("ledger find");
    ledger
        .update_one(doc! {"_id": format!("admin.{role}")}, doc! {"$setOnInsert": {"kind": "role", "target": "t"}})
        .upsert(true)
        .await
        .expect("ledger put");
    ok(
        client,
        "admin",
        doc! {
            "createRole": &role,
            "roles": [{"role": "read", "db": "orders"}],
            "privileges": [
                {"resource": {"db": "billing", "collection": "audit"}, "actions": ["find", "insert"]},
                {"resource": {"cluster": true}, "actions": ["serverStatus"]},
            ],
        },
    )
    .await;
    ok(
        client,
        "admin",
        doc! {"updateRole": &role, "roles": [{"role": "read", "db": "orders"}, {"role": "readWrite", "db": "sales"}], "privileges": []},
    )
    .await;
    ok(client, "admin", doc! {"updateRole": &role, "roles": [{"role": "read", "db": "orders"}], "privileges": []})
        .await;
    ok(client, "$external", doc! {"createUser": &role, "roles": [{"role": &role, "db": "admin"}]}).await;
    ok(client, "$external", doc! {"updateUser": &role, "roles": [{"role": &role, "db": "admin"}]}).await;
    ok(client, "$external", doc! {"dropUser": &role}).await;
    ok(client, "admin", doc! {"dropRole": &role}).await;
    ledger.delete_one(doc! {"_id": format!("admin.{role}")}).await.expect("ledger delete");
}

/// `{resource-as-text: actions}` of a connectionStatus reply, and its roles.
fn status_of(reply: &Document) -> (Vec<String>, BTreeMap<String, BTreeSet<String>>) {
    let info = reply.get_document("authInfo").expect("authInfo");
    let roles = info
        .get_array("authenticatedUserRoles")
        .expect("roles")
        .iter()
        .filter_map(Bson::as_document)
        .map(|r| format!("{}@{}", r.get_str("role").unwrap(), r.get_str("db").unwrap()))
        .collect();
    let mut privileges = BTreeMap::new();
    for p in info.get_array("authenticatedUserPrivileges").expect("privileges").iter().filter_map(Bson::as_document) {
        let r = p.get_document("resource").unwrap();
        let key = if r.get_bool("cluster") == Ok(true) {
            "cluster".to_string()
        } else if r.get_bool("anyResource") == Ok(true) {
            "anyResource".to_string()
        } else {
            format!("{}.{}", r.get_str("db").unwrap(), r.get_str("collection").unwrap())
        };
        let actions = p.get_array("actions").unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        assert!(privileges.insert(key.clone(), actions).is_none(), "{key} listed twice");
    }
    (roles, privileges)
}

async fn connection_status(client: &Client) -> (Vec<String>, BTreeMap<String, BTreeSet<String>>) {
    status_of(&ok(client, "admin", doc! {"connectionStatus": 1, "showPrivileges": true}).await)
}

fn set(actions: &[&str]) -> BTreeSet<String> {
    actions.iter().map(|a| a.to_string()).collect()
}

// ================================================================ tests

#[tokio::test]
async fn user_admin_on_admin_cannot_create_a_role_with_a_privilege_on_another_database() {
    let double = start().await;
    let ua = login(&double, USER_ADMIN).await;
    let msg = refused(&ua, "admin", orders_reader("g")).await;
    // The server's message quotes the command as BSON prints it.
    assert!(
        msg.starts_with(
            "not authorized on admin to execute command { createRole: \"g\", privileges: [ { resource: { db: \"orders\", collection: \"\" }, actions: [ \"find\" ] } ], roles: [], "
        ),
        "{msg}"
    );
    assert!(msg.contains("$db: \"admin\"") && msg.contains("lsid: { id: UUID(\"") && msg.ends_with(" }"), "{msg}");
    // An inherited role from another database needs grantRole there too.
    refused(&ua, "admin", doc! {"createRole": "g", "privileges": [], "roles": [{"role": "read", "db": "orders"}]})
        .await;
    assert!(double.roles().is_empty(), "a refused command changes nothing");
    // What admin alone covers works: privileges on admin and the cluster
    // (grantRole on admin), roles from admin.
    ok(
        &ua,
        "admin",
        doc! {"createRole": "g", "privileges": [{"resource": {"cluster": true}, "actions": ["serverStatus"]}], "roles": [{"role": "read", "db": "admin"}]},
    )
    .await;
    // updateRole needs revokeRole on every database: never with userAdmin@admin.
    refused(&ua, "admin", doc! {"updateRole": "g", "roles": []}).await;
    refused(&ua, "admin", doc! {"updateRole": "g", "privileges": []}).await;
    // $external is another database.
    refused(&ua, "$external", doc! {"createUser": "entra/u", "roles": [{"role": "g", "db": "admin"}]}).await;
    refused(&ua, "$external", doc! {"usersInfo": [{"user": "entra/u", "db": "$external"}]}).await;
    refused(&ua, "$external", doc! {"dropUser": "entra/u"}).await;
    // The checks come before the command's own: no 11 for a missing user.
    assert!(double.users().is_empty());
    ok(&ua, "admin", doc! {"rolesInfo": [{"role": "g", "db": "admin"}]}).await;
    ok(&ua, "admin", doc! {"dropRole": "g"}).await;
}

#[tokio::test]
async fn user_admin_any_database_with_the_ledger_does_everything_dbgrant_needs() {
    let double = start().await;
    let op = login(&double, OPERATOR).await;
    dbgrant_cycle(&op, "g1").await;
    assert!(double.roles().is_empty() && double.users().is_empty());
    // The any-database resource reaches every normal database...
    ok(&op, "orders", orders_reader("local-reader")).await;
    ok(&op, "admin", doc! {"usersInfo": {"forAllDBs": true}}).await;
    // ...but it is not a data role.
    let orders = op.database("orders").collection::<Document>("o");
    assert_eq!(code(&orders.insert_one(doc! {"a": 1}).await.expect_err("no writes to orders")), Some(13));
    assert_eq!(code(&orders.find_one(doc! {}).await.expect_err("no reads of orders")), Some(13));
}

#[tokio::test]
async fn a_least_privilege_custom_role_does_what_dbgrant_needs_and_nothing_else() {
    let double = start().await;
    let root = login(&double, ROOT).await;
    ok(&root, "admin", least_privilege_role()).await;
    // A user made with createUser and a password logs in (SCRAM-SHA-256).
    ok(
        &root,
        "admin",
        doc! {"createUser": "dbgrant-operator", "pwd": "least-pw", "roles": [{"role": "dbgrantOperator", "db": "admin"}]},
    )
    .await;
    let least = login(&double, ("dbgrant-operator", "least-pw")).await;
    dbgrant_cycle(&least, "g2").await;
    assert!(double.roles().iter().all(|r| r.name.role == "dbgrantOperator"));

    // Nothing else: no data outside the ledger, no roles outside admin, no
    // users outside $external, no other collection of the ledger database.
    let orders = least.database("orders").collection::<Document>("o");
    assert_eq!(code(&orders.insert_one(doc! {"a": 1}).await.expect_err("insert into orders")), Some(13));
    assert_eq!(code(&orders.find_one(doc! {}).await.expect_err("read orders")), Some(13));
    let other = least.database("dbgrant").collection::<Document>("other");
    assert_eq!(code(&other.insert_one(doc! {"a": 1}).await.expect_err("another ledger collection")), Some(13));
    refused(&least, "orders", orders_reader("g")).await;
    refused(&least, "admin", doc! {"createUser": "x", "pwd": "y", "roles": []}).await;
    refused(&least, "orders", doc! {"rolesInfo": 1}).await;
    refused(&least, "admin", doc! {"usersInfo": 1}).await;
    // It may see itself and its own role without viewUser on admin.
    ok(&least, "admin", doc! {"usersInfo": "dbgrant-operator"}).await;
    ok(&least, "admin", doc! {"rolesInfo": "dbgrantOperator"}).await;

    // Drop the role: the same connection loses its rights at once.
    ok(&root, "admin", doc! {"dropRole": "dbgrantOperator"}).await;
    refused(&least, "admin", orders_reader("g3")).await;
}

#[tokio::test]
async fn custom_roles_and_their_inheritance_are_resolved_when_each_command_runs() {
    let double = MongoDouble::start(
        MongoDoubleConfig::default().user(ScramUser::root(ROOT.0, ROOT.1)).user(ScramUser::with_roles(
            "late",
            "late-pw",
            &[("opsTeam", "admin")],
        )),
    )
    .await
    .unwrap();
    let late = login(&double, ("late", "late-pw")).await;
    refused(&late, "admin", orders_reader("g")).await;
    // The login's role appears after it logged in, and gets its rights
    // from a role it inherits.
    let root = login(&double, ROOT).await;
    ok(&root, "admin", doc! {"createRole": "opsTeam", "privileges": [], "roles": ["userAdminAnyDatabase"]}).await;
    ok(&late, "admin", orders_reader("g")).await;
    let (roles, _) = connection_status(&late).await;
    assert_eq!(roles, ["opsTeam@admin", "userAdminAnyDatabase@admin"]);
    // Out-of-band edits count too.
    double.insert_role(Role::new("opsTeam", "admin").with_privilege(Resource::database("admin"), ["viewRole"]));
    ok(&late, "admin", doc! {"rolesInfo": 1}).await;
    refused(&late, "admin", orders_reader("h")).await;
}

#[tokio::test]
async fn connection_status_shows_roles_and_privileges_as_the_server_does() {
    let double = start().await;
    let root = login(&double, ROOT).await;
    ok(&root, "admin", least_privilege_role()).await;
    ok(
        &root,
        "admin",
        doc! {"createUser": "least", "pwd": "pw", "roles": [{"role": "dbgrantOperator", "db": "admin"}]},
    )
    .await;

    // userAdmin@admin (+ readWrite@dbgrant): its actions on admin only.
    let (roles, privileges) = connection_status(&login(&double, USER_ADMIN).await).await;
    assert_eq!(roles, ["userAdmin@admin", "readWrite@dbgrant"]);
    let user_admin = set(&[
        "changeCustomData",
        "changePassword",
        "createRole",
        "createUser",
        "dropRole",
        "dropUser",
        "grantRole",
        "revokeRole",
        "setAuthenticationRestriction",
        "viewRole",
        "viewUser",
    ]);
    assert_eq!(privileges["admin."], user_admin);
    assert!(privileges["dbgrant."].contains("insert") && privileges.contains_key("dbgrant.system.js"));
    assert_eq!(privileges.len(), 3, "{privileges:?}");

    // userAdminAnyDatabase: the same on every database ({db: "", collection: ""}),
    // plus local and config by name, viewUser on the cluster, the auth collections.
    let (roles, privileges) = connection_status(&login(&double, OPERATOR).await).await;
    assert_eq!(roles, ["userAdminAnyDatabase@admin", "readWrite@dbgrant"]);
    let mut any = user_admin.clone();
    any.insert("listCachedAndActiveUsers".into());
    assert_eq!(privileges["."], any);
    assert_eq!(privileges["local."], user_admin);
    assert_eq!(privileges["config."], user_admin);
    assert_eq!(privileges["cluster"], set(&["authSchemaUpgrade", "invalidateUserCache", "listDatabases", "viewUser"]));
    assert!(privileges["admin.system.users"].contains("find"));
    assert!(!privileges.contains_key("anyResource"));

    // The custom role: exactly its four privileges.
    let (roles, privileges) = connection_status(&login(&double, ("least", "pw")).await).await;
    assert_eq!(roles, ["dbgrantOperator@admin"]);
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("admin.", set(&["createRole", "dropRole", "viewRole"])),
        (".", set(&["grantRole", "revokeRole"])),
        ("$external.", set(&["createUser", "dropUser", "viewUser"])),
        ("dbgrant.ownership", set(&["find", "insert", "remove", "update"])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(privileges, expected);

    // root: one role (built-in roles are flattened), the union of several.
    let (roles, privileges) = connection_status(&root).await;
    assert_eq!(roles, ["root@admin"]);
    assert!(!privileges["anyResource"].contains("anyAction"), "root is not anyAction on anyResource");
    assert!(privileges["anyResource"].contains("validate"));
    for a in ["find", "insert", "update", "remove", "grantRole", "revokeRole", "createUser", "dropDatabase"] {
        assert!(privileges["."].contains(a), "root lacks {a} on every database");
    }
    assert!(privileges["cluster"].contains("shutdown") && privileges["cluster"].contains("viewUser"));

    // Not logged in: nothing.
    let anonymous = Client::with_uri_str(double.uri()).await.unwrap();
    let (roles, privileges) = connection_status(&anonymous).await;
    assert!(roles.is_empty() && privileges.is_empty());
}

#[tokio::test]
async fn oidc_logins_go_through_the_same_checks() {
    let provider = OidcConfig::new("entra", |token: &str| match token {
        "tok-ua" => Some(OidcIdentity::new("op-ua", vec!["g-ua".into()], None)),
        "tok-any" => Some(OidcIdentity::new("op-any", vec!["g-any".into()], None)),
        _ => None,
    });
    let double = MongoDouble::start(MongoDoubleConfig::default().oidc(provider)).await.unwrap();
    double.insert_role(
        Role::new("entra/g-ua", "admin").with_role("userAdmin", "admin").with_role("readWrite", "dbgrant"),
    );
    double.insert_role(
        Role::new("entra/g-any", "admin").with_role("userAdminAnyDatabase", "admin").with_role("readWrite", "dbgrant"),
    );
    let oidc = |token: &'static str| {
        let double_uri = double.uri();
        async move {
            let mut options = ClientOptions::parse(double_uri).await.unwrap();
            options.server_selection_timeout = Some(Duration::from_secs(5));
            let mut credential = Credential::builder().mechanism(AuthMechanism::MongoDbOidc).build();
            credential.oidc_callback = Callback::machine(move |_| {
                async move { Ok(IdpServerResponse::builder().access_token(token.to_string()).build()) }.boxed()
            });
            options.credential = Some(credential);
            Client::with_options(options).unwrap()
        }
    };
    let ua = oidc("tok-ua").await;
    refused(&ua, "admin", orders_reader("g")).await;
    refused(&ua, "$external", doc! {"createUser": "entra/u", "roles": []}).await;
    let (roles, privileges) = connection_status(&ua).await;
    assert_eq!(roles, ["entra/g-ua@admin", "userAdmin@admin", "readWrite@dbgrant"]);
    assert!(!privileges.contains_key("."));
    let any = oidc("tok-any").await;
    dbgrant_cycle(&any, "g4").await;
}
