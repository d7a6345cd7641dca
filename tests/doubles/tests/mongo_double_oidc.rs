//! MONGODB-OIDC on the MongoDB double, driven by the real `mongodb` driver:
//! the machine callback (one `saslStart` with the token, speculatively in
//! `hello` once the driver has a token), roles from the authorization
//! claim, refused and expired tokens, re-authentication on 391, the human
//! flow's two steps, and tokens validated against the ARM/Entra double.

use dbgrant_doubles::arm::{ArmDouble, ArmDoubleConfig, Principal};
use dbgrant_doubles::mongo::{
    CommandRecord, MongoDouble, MongoDoubleConfig, OIDC_MECHANISM, OidcConfig, OidcIdentity, Outcome, Role,
};
use futures::FutureExt;
use mongodb::Client;
use mongodb::bson::{Document, doc};
use mongodb::error::{Error, ErrorKind};
use mongodb::options::oidc::{Callback, IdpServerResponse};
use mongodb::options::{AuthMechanism, ClientOptions, Credential};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const OPS_GROUP: &str = "0a5e0000-0000-4000-8000-00000000000a";
const READ_GROUP: &str = "0a5e0000-0000-4000-8000-00000000000b";

/// Tokens the test "issuer" knows, and who they stand for.
type Tokens = Arc<Mutex<HashMap<String, OidcIdentity>>>;

fn tokens(entries: &[(&str, &str, &[&str], Option<Duration>)]) -> Tokens {
    let map = entries
        .iter()
        .map(|(token, principal, groups, lifetime)| {
            let groups = groups.iter().map(|g| g.to_string()).collect();
            (token.to_string(), OidcIdentity::new(*principal, groups, lifetime.map(|l| SystemTime::now() + l)))
        })
        .collect();
    Arc::new(Mutex::new(map))
}

fn provider(tokens: &Tokens) -> OidcConfig {
    let tokens = tokens.clone();
    OidcConfig::new("entra", move |t: &str| tokens.lock().unwrap().get(t).cloned())
}

/// The double with the operator's group role: user admin plus the ledger.
async fn start(oidc: OidcConfig) -> MongoDouble {
    let double = MongoDouble::start(MongoDoubleConfig::default().oidc(oidc)).await.expect("start double");
    double.insert_role(
        Role::new(format!("entra/{OPS_GROUP}"), "admin")
            .with_role("userAdminAnyDatabase", "admin")
            .with_role("readWrite", "dbgrant"),
    );
    double
}

/// A machine callback handing out `sequence` in turn (the last one
/// repeats), counting calls.
fn machine(sequence: &[&str], calls: &Arc<AtomicUsize>) -> Callback {
    let sequence: Vec<String> = sequence.iter().map(|s| s.to_string()).collect();
    let calls = calls.clone();
    Callback::machine(move |_context| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let token = sequence[n.min(sequence.len() - 1)].clone();
        async move { Ok(IdpServerResponse::builder().access_token(token).build()) }.boxed()
    })
}

async fn oidc_client(double: &MongoDouble, callback: Callback) -> Client {
    let mut options = ClientOptions::parse(double.uri()).await.expect("parse uri");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(2));
    let mut credential = Credential::builder().mechanism(AuthMechanism::MongoDbOidc).build();
    credential.oidc_callback = callback;
    options.credential = Some(credential);
    Client::with_options(options).expect("client")
}

async fn run(client: &Client, command: Document) -> Result<Document, Error> {
    client.database("admin").run_command(command).await
}

fn code(err: &Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

fn auth_records(double: &MongoDouble) -> Vec<CommandRecord> {
    double.log().into_iter().filter(|r| r.name == "saslStart" || r.name == "saslContinue").collect()
}

fn role_names(status: &Document) -> Vec<String> {
    let info = status.get_document("authInfo").expect("authInfo");
    info.get_array("authenticatedUserRoles")
        .expect("roles")
        .iter()
        .filter_map(|r| r.as_document())
        .map(|r| format!("{}@{}", r.get_str("role").unwrap(), r.get_str("db").unwrap()))
        .collect()
}

#[tokio::test]
async fn machine_callback_logs_in_with_the_roles_of_its_groups() {
    let known = tokens(&[("tok-ops", "op-1", &[OPS_GROUP], None)]);
    let double = start(provider(&known)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let client = oidc_client(&double, machine(&["tok-ops"], &calls)).await;

    run(&client, doc! {"ping": 1}).await.expect("ping as the OIDC login");
    let status = run(&client, doc! {"connectionStatus": 1, "showPrivileges": true}).await.unwrap();
    let users = status.get_document("authInfo").unwrap().get_array("authenticatedUsers").unwrap();
    let user = users[0].as_document().unwrap();
    assert_eq!((user.get_str("user").unwrap(), user.get_str("db").unwrap()), ("entra/op-1", "$external"));
    let roles = role_names(&status);
    for expected in
        [format!("entra/{OPS_GROUP}@admin"), "userAdminAnyDatabase@admin".into(), "readWrite@dbgrant".into()]
    {
        assert!(roles.contains(&expected), "{expected} missing from {roles:?}");
    }
    // A user administrator through its group's role.
    run(&client, doc! {"createRole": "app-reader", "privileges": [], "roles": [{"role": "read", "db": "app"}]})
        .await
        .expect("createRole as the OIDC user admin");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one token for one login");

    // The journal shows one OIDC saslStart on $external, done in one step,
    // and never the token itself.
    let auth = auth_records(&double);
    assert_eq!(auth.len(), 1, "{auth:?}");
    assert_eq!(auth[0].name, "saslStart");
    assert_eq!(auth[0].db, "$external");
    assert_eq!(auth[0].body.get_str("mechanism").unwrap(), OIDC_MECHANISM);
    assert_eq!(auth[0].outcome, Outcome::Ok);
    let create = double.commands_named("createRole");
    assert_eq!(create[0].user.as_deref(), Some("entra/op-1@$external"));
    assert!(!format!("{:?}", double.log()).contains("tok-ops"), "the token must not be in the command log");
    let mechanisms = run(&client, doc! {"getParameter": 1, "authenticationMechanisms": 1}).await.unwrap();
    assert!(
        mechanisms.get_array("authenticationMechanisms").unwrap().iter().any(|m| m.as_str() == Some(OIDC_MECHANISM))
    );
}

#[tokio::test]
async fn a_login_without_admin_roles_may_not_manage_roles() {
    let known = tokens(&[("tok-reader", "u-2", &[READ_GROUP], None)]);
    let double = start(provider(&known)).await;
    double.insert_role(Role::new(format!("entra/{READ_GROUP}"), "admin").with_role("read", "orders"));
    let client = oidc_client(&double, machine(&["tok-reader"], &Arc::new(AtomicUsize::new(0)))).await;
    let status = run(&client, doc! {"connectionStatus": 1}).await.expect("connectionStatus");
    assert!(role_names(&status).contains(&"read@orders".to_string()));
    let err = run(&client, doc! {"rolesInfo": 1}).await.expect_err("no user admin rights");
    assert_eq!(code(&err), Some(13), "{err}");
}

#[tokio::test]
async fn refused_and_expired_tokens_fail_with_authentication_failed() {
    let known = tokens(&[("tok-old", "op-1", &[OPS_GROUP], Some(Duration::ZERO))]);
    let double = start(provider(&known)).await;
    for token in ["not-a-token-we-issued", "tok-old"] {
        double.clear_log();
        let client = oidc_client(&double, machine(&[token], &Arc::new(AtomicUsize::new(0)))).await;
        let err = run(&client, doc! {"ping": 1}).await.expect_err("a refused token must not log in");
        assert!(matches!(err.kind.as_ref(), ErrorKind::Authentication { .. }), "{token}: {err}");
        let auth = auth_records(&double);
        assert!(!auth.is_empty(), "no saslStart logged for {token}");
        assert!(
            auth.iter().all(|r| r.outcome == Outcome::Failed { code: 18 }),
            "{token}: {:?}",
            auth.iter().map(|r| &r.outcome).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn an_expired_connection_token_forces_reauthentication() {
    let known = tokens(&[
        ("tok-short", "op-1", &[OPS_GROUP], Some(Duration::from_millis(1500))),
        ("tok-fresh", "op-1", &[OPS_GROUP], Some(Duration::from_secs(3600))),
    ]);
    let double = start(provider(&known)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let client = oidc_client(&double, machine(&["tok-short", "tok-fresh"], &calls)).await;
    run(&client, doc! {"rolesInfo": 1}).await.expect("first login");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    run(&client, doc! {"rolesInfo": 1}).await.expect("the driver re-authenticates after 391");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a fresh token for the re-authentication");
    let reauth = double.commands_named("rolesInfo");
    assert_eq!(reauth.len(), 3, "rolesInfo ok, 391, retried ok: {reauth:?}");
    assert_eq!(reauth[1].outcome, Outcome::Failed { code: 391 });
    assert_eq!(reauth[2].outcome, Outcome::Ok);
}

#[tokio::test]
async fn new_connections_authenticate_speculatively_with_the_cached_token() {
    let known = tokens(&[("tok-ops", "op-1", &[OPS_GROUP], None)]);
    let double = start(provider(&known)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let client = oidc_client(&double, machine(&["tok-ops"], &calls)).await;
    run(&client, doc! {"rolesInfo": 1}).await.expect("first login");
    double.close_all_connections();
    double.clear_log();
    // The pool notices the closed connection on use; the driver retries
    // reads once, so a second attempt is all it may take.
    if run(&client, doc! {"rolesInfo": 1}).await.is_err() {
        run(&client, doc! {"rolesInfo": 1}).await.expect("rolesInfo on a new connection");
    }
    let hellos: Vec<CommandRecord> = double
        .log()
        .into_iter()
        .filter(|r| r.name.eq_ignore_ascii_case("hello") || r.name.eq_ignore_ascii_case("ismaster"))
        .filter(|r| r.body.contains_key("speculativeAuthenticate"))
        .collect();
    assert!(!hellos.is_empty(), "no speculative OIDC hello: {:?}", double.log());
    assert!(!format!("{hellos:?}").contains("tok-ops"), "the token must not be in the command log");
    assert!(auth_records(&double).is_empty(), "speculative auth needs no saslStart: {:?}", auth_records(&double));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the cached token is reused");
}

#[tokio::test]
async fn the_human_flow_gets_the_providers_info_first() {
    let known = tokens(&[("tok-human", "u-9", &[OPS_GROUP], None)]);
    let issuer = "https://login.microsoftonline.com/tenant/v2.0";
    let client_id = "0a5e0000-0000-4000-8000-0000000000c1";
    let double =
        start(provider(&known).human_flow(issuer, client_id, vec![format!("api://{client_id}/.default")])).await;
    let seen = Arc::new(Mutex::new(None));
    let seen_in_callback = seen.clone();
    let callback = Callback::human(move |context| {
        *seen_in_callback.lock().unwrap() = context.idp_info.clone();
        async move { Ok(IdpServerResponse::builder().access_token("tok-human".to_string()).build()) }.boxed()
    });
    let mut options = ClientOptions::parse(double.uri()).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    let mut credential =
        Credential::builder().mechanism(AuthMechanism::MongoDbOidc).username("u-9".to_string()).build();
    credential.oidc_callback = callback;
    options.credential = Some(credential);
    let client = Client::with_options(options).unwrap();
    run(&client, doc! {"ping": 1}).await.expect("human flow login");
    let info = seen.lock().unwrap().clone().expect("the callback got the provider's info");
    assert_eq!(info.issuer, issuer);
    assert_eq!(info.client_id.as_deref(), Some(client_id));
    let steps: Vec<String> = auth_records(&double).into_iter().map(|r| r.name).collect();
    assert_eq!(steps, ["saslStart", "saslContinue"]);

    // A machine-only provider refuses the principal-name step clearly.
    let machine_only = start(provider(&known)).await;
    let mut options = ClientOptions::parse(machine_only.uri()).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    let mut credential = Credential::builder().mechanism(AuthMechanism::MongoDbOidc).build();
    credential.oidc_callback = Callback::human(|_| {
        async move { Ok(IdpServerResponse::builder().access_token("tok-human".to_string()).build()) }.boxed()
    });
    options.credential = Some(credential);
    let client = Client::with_options(options).unwrap();
    let err = run(&client, doc! {"ping": 1}).await.expect_err("machine-only provider");
    assert!(matches!(err.kind.as_ref(), ErrorKind::Authentication { .. }), "{err}");
    assert_eq!(auth_records(&machine_only)[0].outcome, Outcome::Failed { code: 18 });
}

#[tokio::test]
async fn tokens_are_validated_against_the_entra_double() {
    // The MongoDB server's audience: an application registered in Entra.
    let mongo_app = ("0a5e0000-0000-4000-8000-0000000000a1", "0a5e0000-0000-4000-8000-0000000000a2");
    let operator = ("0a5e0000-0000-4000-8000-0000000000b1", "0a5e0000-0000-4000-8000-0000000000b2");
    let arm = Arc::new(
        ArmDouble::start(
            ArmDoubleConfig::default()
                .principal(Principal::application(mongo_app.0, mongo_app.1).named("mongodb"))
                .principal(Principal::application(operator.0, operator.1).groups(vec![OPS_GROUP.to_string()])),
        )
        .await
        .expect("start ARM double"),
    );
    let audience = format!("api://{}", mongo_app.0);
    let validator_arm = arm.clone();
    let validator_audience = audience.clone();
    let oidc = OidcConfig::new("entra", move |token: &str| {
        let info = validator_arm.token_info(token)?;
        if info.audience.trim_end_matches('/') != validator_audience || info.expires_at <= SystemTime::now() {
            return None;
        }
        let groups = validator_arm.principal(&info.object_id).map(|p| p.groups).unwrap_or_default();
        Some(OidcIdentity::new(info.object_id, groups, Some(info.expires_at)))
    });
    let double = start(oidc).await;

    let good = arm.issue_access_token(operator.1, &audience).expect("token for MongoDB");
    let client = oidc_client(&double, machine(&[&good], &Arc::new(AtomicUsize::new(0)))).await;
    run(&client, doc! {"rolesInfo": 1}).await.expect("a token Entra issued for MongoDB's audience logs in");
    let status = run(&client, doc! {"connectionStatus": 1}).await.unwrap();
    assert!(role_names(&status).contains(&format!("entra/{OPS_GROUP}@admin")));

    // A token Entra issued for another audience (ARM) is refused.
    let wrong = arm.issue_access_token(operator.1, "https://management.azure.com").expect("ARM token");
    let client = oidc_client(&double, machine(&[&wrong], &Arc::new(AtomicUsize::new(0)))).await;
    let err = run(&client, doc! {"ping": 1}).await.expect_err("wrong audience");
    assert!(matches!(err.kind.as_ref(), ErrorKind::Authentication { .. }), "{err}");
}
