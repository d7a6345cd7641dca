//! The MongoDB double against the real `mongodb` driver: handshake, SCRAM,
//! user/role semantics, TLS, fault injection, and the binary.

use dbgrant_doubles::mongo::{
    CommandKind, MongoDouble, MongoDoubleConfig, Outcome, Resource, Role, ScramUser, TestPki,
};
use mongodb::Client;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{Error, ErrorKind};
use mongodb::options::ClientOptions;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ADMIN: &str = "admin";
const SECRET: &str = "s3cret:pa ss";

/// A double with a `root` login (these tests are about the double's
/// general semantics; `authz.rs` covers who may do what) and a
/// `readAnyDatabase` one.
async fn start() -> MongoDouble {
    MongoDouble::start(
        MongoDoubleConfig::default()
            .user(ScramUser::root(ADMIN, SECRET))
            .user(ScramUser::read_only("viewer", "viewer-pw")),
    )
    .await
    .expect("start double")
}

async fn client(uri: &str) -> Client {
    let mut options = ClientOptions::parse(uri).await.expect("parse uri");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(2));
    Client::with_options(options).expect("client")
}

async fn admin_client(double: &MongoDouble) -> Client {
    client(&double.uri_with_credentials(ADMIN, SECRET)).await
}

async fn run(client: &Client, db: &str, command: Document) -> Result<Document, Error> {
    client.database(db).run_command(command).await
}

fn code(err: &Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

async fn expect_code(client: &Client, db: &str, command: Document, expected: i32) {
    let name = command.keys().next().cloned().unwrap_or_default();
    let err = run(client, db, command).await.expect_err(&format!("{name} should fail with {expected}"));
    assert_eq!(code(&err), Some(expected), "{name}: {err}");
}

fn action_set(privilege: &Bson) -> BTreeSet<String> {
    privilege
        .as_document()
        .and_then(|p| p.get_array("actions").ok())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn roles_of(reply: &Document) -> Vec<Document> {
    reply.get_array("roles").expect("roles array").iter().filter_map(|r| r.as_document().cloned()).collect()
}

#[tokio::test]
async fn scram_login_handshake_and_admin_commands() {
    let double = start().await;
    let client = admin_client(&double).await;
    run(&client, "admin", doc! {"ping": 1}).await.expect("ping");

    let status = run(&client, "admin", doc! {"connectionStatus": 1}).await.unwrap();
    let users = status.get_document("authInfo").unwrap().get_array("authenticatedUsers").unwrap();
    assert_eq!(users[0].as_document().unwrap().get_str("user").unwrap(), ADMIN);

    let build = run(&client, "admin", doc! {"buildInfo": 1}).await.unwrap();
    assert_eq!(build.get_str("version").unwrap(), "8.0.4");
    let fcv = run(&client, "admin", doc! {"getParameter": 1, "featureCompatibilityVersion": 1}).await.unwrap();
    assert_eq!(fcv.get_document("featureCompatibilityVersion").unwrap().get_str("version").unwrap(), "8.0");
    expect_code(&client, "admin", doc! {"frobnicate": 1}, 59).await;

    // The driver opened with isMaster + helloOk, started SCRAM speculatively
    // in that handshake, and finished it with one saslContinue.
    let log = double.log();
    let handshake = log
        .iter()
        .find(|r| r.name == "isMaster" && r.body.contains_key("speculativeAuthenticate"))
        .expect("an authenticating handshake");
    assert_eq!(handshake.body.get_bool("helloOk"), Ok(true));
    assert!(log.iter().all(|r| r.name != "saslStart"), "speculative saslStart was used");
    let continued = log.iter().find(|r| r.name == "saslContinue").expect("a saslContinue");
    assert_eq!(continued.outcome, Outcome::Ok);
    // Every command carried $db and lsid; the double ignored them.
    let ping = double.commands_named("ping").pop().unwrap();
    assert_eq!(ping.db, "admin");
    assert_eq!(ping.user.as_deref(), Some("admin@admin"));
    double.shutdown().await;
}

#[tokio::test]
async fn wrong_password_fails_with_authentication_failed() {
    let double = start().await;
    let client = client(&double.uri_with_credentials(ADMIN, "wrong")).await;
    let err = run(&client, "admin", doc! {"ping": 1}).await.expect_err("must not log in");
    assert!(matches!(err.kind.as_ref(), ErrorKind::Authentication { .. }), "{err}");
    // The server's reply is the error's source, boxed.
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<Box<Error>>()).and_then(|e| code(e));
    assert_eq!(source, Some(18), "{err:?}");
    assert!(double.log().iter().any(|r| r.name == "saslContinue" && r.outcome == Outcome::Failed { code: 18 }));
}

#[tokio::test]
async fn unauthenticated_and_non_admin_clients_are_unauthorized() {
    let double = start().await;
    let anonymous = client(&double.uri()).await;
    run(&anonymous, "admin", doc! {"ping": 1}).await.expect("ping needs no login");
    expect_code(&anonymous, "admin", doc! {"rolesInfo": 1}, 13).await;

    let viewer = client(&double.uri_with_credentials("viewer", "viewer-pw")).await;
    run(&viewer, "admin", doc! {"ping": 1}).await.expect("viewer logs in");
    expect_code(&viewer, "admin", doc! {"rolesInfo": 1}, 13).await;
    expect_code(&viewer, "admin", doc! {"createRole": "x", "privileges": [], "roles": []}, 13).await;
    assert!(double.roles().is_empty());
}

#[tokio::test]
async fn create_role_and_rolesinfo_normalise_privileges() {
    let double = start().await;
    let client = admin_client(&double).await;
    run(
        &client,
        "admin",
        doc! {
            "createRole": "dbgrant/g1",
            "privileges": [
                {"resource": {"db": "app", "collection": "orders"}, "actions": ["update", "find"]},
                {"resource": {"cluster": true}, "actions": ["serverStatus"]},
                {"resource": {"db": "app", "collection": "orders"}, "actions": ["insert", "find"]},
            ],
            "roles": [{"role": "read", "db": "app"}],
        },
    )
    .await
    .expect("createRole");

    let reply = run(
        &client,
        "admin",
        doc! {"rolesInfo": [{"role": "dbgrant/g1", "db": "admin"}, "missing"], "showPrivileges": true},
    )
    .await
    .unwrap();
    let roles = roles_of(&reply);
    assert_eq!(roles.len(), 1, "missing roles are omitted silently");
    let role = &roles[0];
    assert_eq!(role.get_str("_id").unwrap(), "admin.dbgrant/g1");
    assert!(!role.get_bool("isBuiltin").unwrap());
    let privileges = role.get_array("privileges").unwrap();
    assert_eq!(privileges.len(), 2, "same-resource privileges are merged");
    let orders = privileges
        .iter()
        .find(|p| p.as_document().unwrap().get_document("resource").unwrap().contains_key("collection"))
        .unwrap();
    assert_eq!(action_set(orders), BTreeSet::from(["find", "insert", "update"].map(String::from)));
    assert_eq!(role.get_array("roles").unwrap()[0].as_document().unwrap(), &doc! {"role": "read", "db": "app"});

    // updateRole replaces each given array wholesale and leaves the rest.
    run(
        &client,
        "admin",
        doc! {"updateRole": "dbgrant/g1", "privileges": [
            {"resource": {"db": "app", "collection": ""}, "actions": ["find"]},
        ]},
    )
    .await
    .expect("updateRole");
    let stored = double.role("dbgrant/g1", "admin").unwrap();
    assert_eq!(stored.privileges.len(), 1);
    assert_eq!(stored.privileges[0].resource, Resource::database("app"));
    assert_eq!(stored.roles.len(), 1, "roles untouched");
    run(&client, "admin", doc! {"updateRole": "dbgrant/g1", "roles": []}).await.unwrap();
    assert!(double.role("dbgrant/g1", "admin").unwrap().roles.is_empty());

    let counters = double.counters();
    assert_eq!((counters.reads, counters.writes, counters.successful_writes), (1, 3, 3));
    assert!(double.user_management_log().iter().all(|r| r.kind.is_user_management()));
    assert!(double.commands_named("createRole")[0].is_write);

    run(&client, "admin", doc! {"dropRole": "dbgrant/g1"}).await.expect("dropRole");
    let reply = run(&client, "admin", doc! {"rolesInfo": "dbgrant/g1"}).await.unwrap();
    assert!(roles_of(&reply).is_empty());
    expect_code(&client, "admin", doc! {"dropRole": "dbgrant/g1"}, 31).await;
    expect_code(&client, "admin", doc! {"updateRole": "dbgrant/g1", "roles": []}, 31).await;
}

#[tokio::test]
async fn role_errors_carry_server_codes() {
    let double = start().await;
    let client = admin_client(&double).await;
    let create =
        |name: &str, privileges: Bson, roles: Bson| doc! {"createRole": name, "privileges": privileges, "roles": roles};
    run(&client, "admin", create("r", Bson::Array(vec![]), Bson::Array(vec![]))).await.unwrap();
    // 51002: exists.
    expect_code(&client, "admin", create("r", Bson::Array(vec![]), Bson::Array(vec![])), 51002).await;
    // 31: unknown role referenced.
    expect_code(&client, "admin", create("s", Bson::Array(vec![]), Bson::from(vec!["ghost"])), 31).await;
    // 9: unknown action (FailedToParse, as the server's action parser says);
    // 2: malformed resource.
    let bad_action = Bson::from(vec![doc! {"resource": {"db": "app", "collection": ""}, "actions": ["teleport"]}]);
    expect_code(&client, "admin", create("s", bad_action, Bson::Array(vec![])), 9).await;
    let bad_resource = Bson::from(vec![doc! {"resource": {"collection": "c"}, "actions": ["find"]}]);
    expect_code(&client, "admin", create("s", bad_resource, Bson::Array(vec![])), 2).await;
    // 40414 / 40415: missing and unknown fields.
    expect_code(&client, "admin", doc! {"createRole": "s", "roles": []}, 40414).await;
    expect_code(&client, "admin", doc! {"createRole": "s", "privileges": [], "roles": [], "extra": 1}, 40415).await;
    // 49: cycles and cross-database grants.
    run(&client, "admin", create("t", Bson::Array(vec![]), Bson::from(vec!["r"]))).await.unwrap();
    expect_code(&client, "admin", doc! {"updateRole": "r", "roles": ["t"]}, 49).await;
    expect_code(
        &client,
        "app",
        create("local", Bson::Array(vec![]), Bson::from(vec![doc! {"role": "read", "db": "other"}])),
        49,
    )
    .await;
    // Built-in roles resolve in any database.
    run(
        &client,
        "admin",
        create(
            "u",
            Bson::Array(vec![]),
            Bson::from(vec![
                doc! {"role": "readWrite", "db": "anything"},
                doc! {"role": "clusterMonitor", "db": "admin"},
            ]),
        ),
    )
    .await
    .expect("built-in roles are valid members");
    assert!(
        double.commands_named("createRole").iter().filter(|r| matches!(r.outcome, Outcome::Failed { .. })).count() >= 6
    );
}

#[tokio::test]
async fn external_users_have_no_password() {
    let double = start().await;
    let client = admin_client(&double).await;
    expect_code(&client, "$external", doc! {"createUser": "dbgrant/alice", "pwd": "x", "roles": []}, 2).await;
    run(&client, "$external", doc! {"createUser": "dbgrant/alice", "roles": [{"role": "read", "db": "app"}]})
        .await
        .expect("createUser");
    run(&client, "$external", doc! {"createUser": "dbgrant/bob", "roles": []}).await.unwrap();
    expect_code(&client, "$external", doc! {"createUser": "dbgrant/bob", "roles": []}, 51003).await;
    run(&client, "$external", doc! {"grantRolesToUser": "dbgrant/bob", "roles": [{"role": "readWrite", "db": "app"}]})
        .await
        .unwrap();

    let reply = run(
        &client,
        "admin",
        doc! {"usersInfo": [
            {"user": "dbgrant/alice", "db": "$external"},
            {"user": "dbgrant/bob", "db": "$external"},
            {"user": "dbgrant/nobody", "db": "$external"},
        ]},
    )
    .await
    .unwrap();
    let users = reply.get_array("users").unwrap();
    assert_eq!(users.len(), 2);
    for user in users {
        let user = user.as_document().unwrap();
        assert_eq!(user.get_str("db").unwrap(), "$external");
        assert_eq!(user.get_array("roles").unwrap().len(), 1);
    }

    run(&client, "$external", doc! {"dropUser": "dbgrant/alice"}).await.unwrap();
    expect_code(&client, "$external", doc! {"dropUser": "dbgrant/alice"}, 11).await;
    assert_eq!(double.users().len(), 1);
}

#[tokio::test]
async fn out_of_band_roles_are_visible() {
    let double = start().await;
    double.insert_role(
        Role::new("foreign", "admin").with_privilege(Resource::database("app"), ["update", "find", "find"]),
    );
    let client = admin_client(&double).await;
    let reply = run(&client, "admin", doc! {"rolesInfo": 1, "showPrivileges": true}).await.unwrap();
    let roles = roles_of(&reply);
    assert_eq!(roles.len(), 1);
    assert_eq!(action_set(&roles[0].get_array("privileges").unwrap()[0]).len(), 2);
    assert!(double.remove_role("foreign", "admin").is_some());
}

#[tokio::test]
async fn tls_with_the_generated_ca() {
    let pki = TestPki::generate().unwrap();
    let dir = std::env::temp_dir().join(format!("dbgrant-doubles-tls-{}", std::process::id()));
    let files = pki.write_files(&dir).unwrap();
    let double = MongoDouble::start(
        MongoDoubleConfig::default().user(ScramUser::root(ADMIN, SECRET)).tls(pki.server_tls_config()),
    )
    .await
    .unwrap();
    let uri = format!("{}&tlsCAFile={}", double.uri_with_credentials(ADMIN, SECRET), files.ca_file.display());
    let client = client(&uri).await;
    run(&client, "admin", doc! {"ping": 1}).await.expect("ping over TLS");

    // With a client certificate from the same CA, too.
    let uri = format!("{uri}&tlsCertificateKeyFile={}", files.client_pem_file.display());
    let with_cert = self::client(&uri).await;
    run(&with_cert, "admin", doc! {"ping": 1}).await.expect("ping with client cert");

    // Without the CA the server is not trusted.
    let mut options = ClientOptions::parse(double.uri_with_credentials(ADMIN, SECRET)).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_millis(800));
    let untrusted = Client::with_options(options).unwrap();
    assert!(run(&untrusted, "admin", doc! {"ping": 1}).await.is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn fail_next_injects_errors_then_recovers() {
    let double = start().await;
    let client = admin_client(&double).await;
    double.fail_next(1, 11600, Some("createRole"));
    let create = doc! {"createRole": "r", "privileges": [], "roles": []};
    expect_code(&client, "admin", create.clone(), 11600).await;
    assert!(double.roles().is_empty());
    run(&client, "admin", create).await.expect("second attempt succeeds");
    let records = double.commands_named("createRole");
    assert!(records[0].injected && !records[1].injected);

    // Without a filter, the next command of any (non-handshake) kind fails.
    double.fail_next(1, 13, None);
    expect_code(&client, "admin", doc! {"ping": 1}, 13).await;
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();
}

#[tokio::test]
async fn dropped_connections_error_then_recover() {
    let double = start().await;
    let client = admin_client(&double).await;
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();

    double.drop_connections_next(1);
    let err = run(&client, "admin", doc! {"rolesInfo": 1}).await.expect_err("dropped");
    assert!(code(&err).is_none(), "a network error, not a server reply: {err}");
    run(&client, "admin", doc! {"rolesInfo": 1}).await.expect("recovers");

    // A drop after the write ran: the client sees an error, the role exists.
    double.drop_after_apply_next(1, Some("createRole"));
    let create = doc! {"createRole": "ambiguous", "privileges": [], "roles": []};
    run(&client, "admin", create.clone()).await.expect_err("no reply");
    assert!(double.role("ambiguous", "admin").is_some());
    expect_code(&client, "admin", create, 51002).await;
    assert!(double.commands_named("createRole").iter().any(|r| r.outcome == Outcome::Dropped { applied: true }));
}

#[tokio::test]
async fn refused_connections_and_graceful_shutdown() {
    let double = start().await;
    let client = admin_client(&double).await;
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();

    double.refuse_connections(true);
    double.close_all_connections();
    let mut options = ClientOptions::parse(double.uri_with_credentials(ADMIN, SECRET)).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_millis(800));
    let fresh = Client::with_options(options).unwrap();
    assert!(run(&fresh, "admin", doc! {"ping": 1}).await.is_err());

    // The old client's pooled connection was closed under it: its next
    // command fails once (as after a real server restart), then it reconnects.
    double.refuse_connections(false);
    let mut attempts = 0;
    while let Err(e) = run(&client, "admin", doc! {"ping": 1}).await {
        attempts += 1;
        assert!(attempts < 3, "no recovery: {e}");
    }

    let addr = double.addr();
    double.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn user_management_commands_are_serialised() {
    let double = start().await;
    double.set_command_delay("createRole", Some(Duration::from_millis(400)));
    let client = admin_client(&double).await;
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();
    double.clear_log();
    let started = Instant::now();
    let a = run(&client, "admin", doc! {"createRole": "a", "privileges": [], "roles": []});
    let b = run(&client, "admin", doc! {"createRole": "b", "privileges": [], "roles": []});
    let (a, b) = tokio::join!(a, b);
    a.unwrap();
    b.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(800), "server-wide lock");
    assert_eq!(double.max_concurrent_writes(), 2, "the client sent both at once");
    assert_eq!(double.counters().writes, 2);
}

#[tokio::test]
async fn document_sequences_reach_the_log() {
    let double = start().await;
    let client = admin_client(&double).await;
    client
        .database("app")
        .collection::<Document>("c")
        .insert_many([doc! {"a": 1}, doc! {"a": 2}])
        .await
        .expect("insert_many");
    let insert = double.commands_named("insert").pop().expect("insert logged");
    assert_eq!(insert.kind, CommandKind::DataWrite);
    assert_eq!(insert.db, "app");
    assert_eq!(insert.body.get_array("documents").unwrap().len(), 2);
    assert_eq!(double.documents("app", "c").len(), 2);
    // Commands the double does not implement are CommandNotFound.
    expect_code(&client, "app", doc! {"aggregate": "c", "pipeline": [], "cursor": {}}, 59).await;
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dbgrant-doubles"))
        .args(["mongo", "--listen", "127.0.0.1:0", "--user", "admin:secret", "--latency-ms", "1"])
        .args(["--login", "boss:pw:root@admin", "--login", "reader:pw:read@orders,read@billing"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn binary");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("ready line in time")
        .unwrap()
        .expect("a line");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(ready["double"], "mongo");
    let addr = ready["addr"].as_str().unwrap();
    let client = client(&format!("mongodb://admin:secret@{addr}/?directConnection=true")).await;
    run(&client, "admin", doc! {"ping": 1}).await.expect("ping the binary");
    // --user is the documented minimum for dbgrant; --login names roles.
    let roles = |status: Document| -> Vec<String> {
        let info = status.get_document("authInfo").unwrap().clone();
        info.get_array("authenticatedUserRoles")
            .unwrap()
            .iter()
            .map(|r| r.as_document().unwrap())
            .map(|r| format!("{}@{}", r.get_str("role").unwrap(), r.get_str("db").unwrap()))
            .collect()
    };
    let status = run(&client, "admin", doc! {"connectionStatus": 1}).await.unwrap();
    assert_eq!(roles(status), ["userAdminAnyDatabase@admin", "readWrite@dbgrant"]);
    let reader = self::client(&format!("mongodb://reader:pw@{addr}/?directConnection=true")).await;
    let status = run(&reader, "admin", doc! {"connectionStatus": 1}).await.unwrap();
    assert_eq!(roles(status), ["read@orders", "read@billing"]);
    expect_code(&reader, "admin", doc! {"rolesInfo": 1}, 13).await;
    child.kill().await.unwrap();
}
