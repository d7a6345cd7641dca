//! Contract test of dbgrant's own MONGODB-OIDC login, end to end below
//! Kubernetes: the real `azure_identity` `WorkloadIdentityCredential`
//! (built by `dbgrant::mongo::oidc`, the code `connection::client_options`
//! runs) exchanges a federated token file with the ARM/Entra double over
//! HTTPS (trusting the double's CA as `caSecretRef` would), the driver's
//! machine callback hands the Entra token to the MongoDB double, and the
//! double validates it against the tokens Entra issued (audience =
//! MongoDB's application) and grants the roles of the identity's groups.
//!
//! The Secret reads of `client_options` need a live apiserver and are
//! covered by `tests/e2e/mongo_operator_oidc.rs`; the double's own
//! MONGODB-OIDC by `tests/doubles/tests/mongo_double_oidc.rs`.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bson::doc;
use dbgrant::{
    api::{
        AuthorizationClaim, MongoOidc, MongoOidcAuth, MongoOidcCredential, MongoRoleRef, SubjectKey, SubjectKind,
        conditions::reason,
    },
    mongo::{
        connection, oidc,
        sync::{self, SubjectResult, SubjectWork},
        target_controller,
    },
    plan::mongo::{MongoGrant, objects_for},
    runtime::{audit, metrics::Metrics},
};
use dbgrant_doubles::{
    arm::{ArmDouble, ArmDoubleConfig, FederatedCredential, Principal},
    mongo::{MongoDouble, MongoDoubleConfig, OidcConfig, OidcIdentity, Role},
};
use mongodb::{Client, options::ClientOptions};

/// The application registered as the MongoDB server's OIDC audience.
const MONGO_APP: (&str, &str) = ("3a0d0000-0000-4000-8000-0000000000a1", "3a0d0000-0000-4000-8000-0000000000a2");
/// dbgrant's identity (an application federated with its ServiceAccount).
const OPERATOR: (&str, &str) = ("3a0d0000-0000-4000-8000-0000000000b1", "3a0d0000-0000-4000-8000-0000000000b2");
/// An application without a federated credential for dbgrant.
const STRANGER: (&str, &str) = ("3a0d0000-0000-4000-8000-0000000000c1", "3a0d0000-0000-4000-8000-0000000000c2");
/// The group dbgrant's identity is in; its role makes it a user admin.
const OPS_GROUP: &str = "3a0d0000-0000-4000-8000-0000000000d1";
const READERS: &str = "71b72785-7c23-4e2e-9fa7-ad62ce90a22a";
const SUBJECT: &str = "system:serviceaccount:dbgrant-system:dbgrant";

struct Env {
    arm: Arc<ArmDouble>,
    mongo: MongoDouble,
    token_file: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn env(label: &str) -> Env {
    let arm = Arc::new(
        ArmDouble::start(
            ArmDoubleConfig::default()
                .principal(Principal::application(MONGO_APP.0, MONGO_APP.1).named("mongodb"))
                .principal(
                    Principal::application(OPERATOR.0, OPERATOR.1)
                        .named("dbgrant")
                        .federated(FederatedCredential::new("", SUBJECT))
                        .groups(vec![OPS_GROUP.to_string()]),
                )
                .principal(Principal::application(STRANGER.0, STRANGER.1).named("stranger")),
        )
        .await
        .expect("start ARM double"),
    );
    let validator = arm.clone();
    let audience = format!("api://{}", MONGO_APP.0);
    let provider = OidcConfig::new("entra", move |token: &str| {
        let info = validator.token_info(token)?;
        if !info.audience.trim_end_matches('/').eq_ignore_ascii_case(&audience) || info.expires_at <= SystemTime::now()
        {
            return None;
        }
        let groups = validator.principal(&info.object_id).map(|p| p.groups).unwrap_or_default();
        Some(OidcIdentity::new(info.object_id, groups, Some(info.expires_at)))
    });
    let mongo = MongoDouble::start(MongoDoubleConfig::default().oidc(provider)).await.expect("start MongoDB double");
    // What the platform team sets up once: the operator group's role.
    mongo.insert_role(
        Role::new(format!("entra/{OPS_GROUP}"), "admin")
            .with_role("userAdminAnyDatabase", "admin")
            .with_role("readWrite", "dbgrant"),
    );
    let dir = std::env::temp_dir().join(format!("dbgrant-mongo-oidc-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("azure-identity-token");
    std::fs::write(&token_file, arm.issue_federated_token(SUBJECT)).unwrap();
    Env { arm, mongo, token_file, _dir: TempDir(dir) }
}

impl Env {
    /// The pod environment the workload identity webhook would set.
    fn pod_env(&self, client_id: &str) -> impl Fn(&str) -> Option<String> + use<> {
        let tenant = self.arm.tenant_id();
        let file = self.token_file.display().to_string();
        let client_id = client_id.to_string();
        move |k: &str| match k {
            "AZURE_TENANT_ID" => Some(tenant.clone()),
            "AZURE_CLIENT_ID" => Some(client_id.clone()),
            "AZURE_FEDERATED_TOKEN_FILE" => Some(file.clone()),
            _ => None,
        }
    }

    fn auth(&self) -> MongoOidcAuth {
        MongoOidcAuth {
            scope: format!("api://{}/.default", MONGO_APP.0),
            credential: MongoOidcCredential::WorkloadIdentity,
            tenant_id: None,
            client_id: None,
            authority_host: Some(self.arm.authority_host()),
            ca_secret_ref: None,
            allow_insecure_transport: false,
        }
    }

    async fn client(&self, auth: &MongoOidcAuth, client_id: &str) -> Client {
        let credential = oidc::credential("orders", auth, Some(self.arm.ca_cert_pem()), self.pod_env(client_id))
            .expect("build the OIDC credential");
        let mut opts = ClientOptions::parse(self.mongo.uri()).await.unwrap();
        opts.server_selection_timeout = Some(Duration::from_secs(5));
        opts.credential = Some(credential);
        Client::with_options(opts).unwrap()
    }

    fn assert_no_tokens(&self, text: &str) {
        let federated = std::fs::read_to_string(&self.token_file).unwrap();
        assert!(!text.contains(federated.trim()), "federated token leaked: {text}");
        assert!(!text.contains("eyJ"), "something token-shaped leaked: {text}");
    }
}

#[tokio::test]
async fn workload_identity_token_logs_in_and_manages_roles() {
    let env = env("ok").await;
    let client = env.client(&env.auth(), OPERATOR.0).await;
    let probe = connection::probe("orders", &client, "NotUsed", &connection::all_rights())
        .await
        .expect("probe as the OIDC identity");
    assert_eq!(probe.version, "8.0.4");

    // The token came from Entra through workload identity, for MongoDB's
    // audience, and the login is the operator's principal.
    let issued = env.arm.issued_tokens();
    assert_eq!(issued.len(), 1, "one token for the login");
    assert_eq!(issued[0].grant, "workload_identity");
    assert_eq!(issued[0].client_id, OPERATOR.0);
    assert_eq!(issued[0].audience.trim_end_matches('/'), format!("api://{}", MONGO_APP.0));
    let status = client.database("admin").run_command(doc! {"connectionStatus": 1}).await.unwrap();
    let users = status.get_document("authInfo").unwrap().get_array("authenticatedUsers").unwrap();
    assert_eq!(users[0].as_document().unwrap().get_str("user").unwrap(), format!("entra/{}", OPERATOR.1));

    // dbgrant's real sync creates a group role over this login.
    let spec = MongoOidc {
        auth_name_prefix: "entra".into(),
        use_authorization_claim: true,
        authorization_claim: AuthorizationClaim::Groups,
    };
    let subject = SubjectKey { kind: SubjectKind::Group, id: READERS.into() };
    let work = [SubjectWork {
        objects: objects_for(&spec, &subject).unwrap(),
        desired: Some(MongoGrant::from_spec(&[MongoRoleRef { role: "read".into(), db: "orders".into() }], &[])),
        subject: subject.clone(),
        contributions: Vec::new(),
        retain: false,
        confirm: false,
    }];
    let report = sync::sync(
        "orders",
        &client,
        &Metrics::default(),
        &audit::Scope::new(&audit::Auditor::discard(), "mongodb", "orders", &audit::Trigger::default()),
        false,
        false,
        &work,
    )
    .await
    .expect("sync");
    assert_eq!(report.results.get(&subject), Some(&SubjectResult::Applied));
    let role = env.mongo.role(&format!("entra/{READERS}"), "admin").expect("role created");
    assert_eq!(role.roles.len(), 1);
    let writes = env.mongo.commands_named("createRole");
    assert_eq!(writes[0].user.as_deref(), Some(format!("entra/{}@$external", OPERATOR.1).as_str()));
}

#[tokio::test]
async fn entra_refusing_the_identity_is_unauthorized_without_tokens_in_the_message() {
    let env = env("refused").await;
    // STRANGER has no federated credential for dbgrant's ServiceAccount.
    let client = env.client(&env.auth(), STRANGER.0).await;
    let err = connection::probe("orders", &client, "NotUsed", &connection::all_rights())
        .await
        .expect_err("Entra refuses the exchange");
    let text = err.to_string();
    assert!(text.contains("target orders") && text.contains("no Entra token"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(text.contains("federated credential"), "the message says what to check: {text}");
    env.assert_no_tokens(&text);
    let outcome = target_controller::target_outcome(&err);
    assert_eq!(outcome.reason, reason::UNAUTHORIZED, "{outcome:?}");
    assert!(env.arm.issued_tokens().is_empty());
    assert!(env.mongo.commands_named("saslStart").is_empty(), "no token, no login attempt");
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_by_the_server() {
    let env = env("audience").await;
    let mut auth = env.auth();
    // A token Entra happily issues, but for ARM, not for MongoDB.
    auth.scope = "https://management.azure.com/.default".into();
    let client = env.client(&auth, OPERATOR.0).await;
    let err = connection::probe("orders", &client, "NotUsed", &connection::all_rights())
        .await
        .expect_err("the server refuses the token");
    let text = err.to_string();
    assert!(text.contains("server refused dbgrant's Entra token") && text.contains("audience"), "{text}");
    env.assert_no_tokens(&text);
    assert_eq!(target_controller::target_outcome(&err).reason, reason::UNAUTHORIZED);
    let auth_log = env.mongo.commands_named("saslStart");
    assert!(!auth_log.is_empty());
    assert!(auth_log.iter().all(|r| matches!(r.outcome, dbgrant_doubles::mongo::Outcome::Failed { code: 18 })));
}

#[tokio::test]
async fn an_unreachable_authority_is_transient() {
    let env = env("unreachable").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut auth = env.auth();
    auth.authority_host = Some(format!("https://{closed}"));
    let client = env.client(&auth, OPERATOR.0).await;
    let err =
        connection::probe("orders", &client, "NotUsed", &connection::all_rights()).await.expect_err("no authority");
    let text = err.to_string();
    assert!(text.contains("could not reach the Entra authority"), "{text}");
    assert_eq!(target_controller::target_outcome(&err).reason, reason::UNREACHABLE, "{text}");
}
