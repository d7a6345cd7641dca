//! dbgrant authenticating to MongoDB with MONGODB-OIDC, end to end: the
//! operator process gets the workload identity webhook's environment
//! (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`) —
//! or the managed identity endpoint's — exchanges its federated token with
//! the ARM/Entra double over HTTPS (trusting the double's CA from
//! `caSecretRef`), and logs in to the MongoDB double, which validates the
//! Entra token (issuer's record, audience, expiry) and grants the roles of
//! the identity's groups. No password exists anywhere.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Result;
use dbgrant_doubles::{
    arm::{ArmDouble, ArmDoubleConfig, FederatedCredential, Principal},
    mongo::{MongoDouble, MongoDoubleConfig, OidcConfig, OidcIdentity, Role},
};
use dbgrant_harness::{
    Cluster, DumpOnFailure, Operator,
    operator::{Options, metric_sum},
};
use serde_json::{Value, json};

use crate::common::{SETTLE, cleanup, in_ns, mongo_binding, operator_lock, ready_message, setup};

/// The application registered as the MongoDB server's OIDC audience.
const MONGO_APP: (&str, &str) = ("e2e0dd00-0000-4000-8000-0000000000a1", "e2e0dd00-0000-4000-8000-0000000000a2");
/// dbgrant's application, federated with its ServiceAccount.
const OPERATOR: (&str, &str) = ("e2e0dd00-0000-4000-8000-0000000000b1", "e2e0dd00-0000-4000-8000-0000000000b2");
/// A user-assigned managed identity for dbgrant.
const MANAGED: (&str, &str) = ("e2e0dd00-0000-4000-8000-0000000000e1", "e2e0dd00-0000-4000-8000-0000000000e2");
/// An application that does not trust dbgrant's ServiceAccount token.
const STRANGER: (&str, &str) = ("e2e0dd00-0000-4000-8000-0000000000c1", "e2e0dd00-0000-4000-8000-0000000000c2");
/// The group dbgrant's identities are in; its role makes them user admins.
const OPS_GROUP: &str = "e2e0dd00-0000-4000-8000-0000000000d1";
const READERS: &str = "71b72785-7c23-4e2e-9fa7-ad62ce90a22a";
const SUBJECT: &str = "system:serviceaccount:dbgrant-system:dbgrant";

/// A MongoDB double whose OIDC provider trusts the Entra double, with the
/// operator group's role; `seen` collects every token presented.
async fn mongo(arm: &Arc<ArmDouble>, seen: &Arc<Mutex<Vec<String>>>) -> Result<MongoDouble> {
    let arm = arm.clone();
    let seen = seen.clone();
    let audience = format!("api://{}", MONGO_APP.0);
    let provider = OidcConfig::new("entra", move |token: &str| {
        seen.lock().unwrap().push(token.to_string());
        let info = arm.token_info(token)?;
        if !info.audience.trim_end_matches('/').eq_ignore_ascii_case(&audience) || info.expires_at <= SystemTime::now()
        {
            return None;
        }
        let groups = arm.principal(&info.object_id).map(|p| p.groups).unwrap_or_default();
        Some(OidcIdentity::new(info.object_id, groups, Some(info.expires_at)))
    });
    let double = MongoDouble::start(MongoDoubleConfig::default().oidc(provider)).await?;
    double.insert_role(
        Role::new(format!("entra/{OPS_GROUP}"), "admin")
            .with_role("userAdminAnyDatabase", "admin")
            .with_role("readWrite", "dbgrant"),
    );
    Ok(double)
}

/// A MongoTarget authenticating with `oidc` (plus `scope`, the authority
/// and its CA), and its connection Secret: a URI without credentials.
fn oidc_target(name: &str, uri: &str, opns: &str, arm: &ArmDouble, oidc: Value) -> Vec<Value> {
    let mut auth = json!({
        "scope": format!("api://{}/.default", MONGO_APP.0),
        "authorityHost": arm.authority_host(),
        "caSecretRef": {"name": format!("{name}-entra-ca"), "key": "ca.crt"},
        // The MongoDB double serves plain TCP: without this the target is
        // refused, since the Entra token would cross the network in clear.
        "allowInsecureTransport": true
    });
    for (k, v) in oidc.as_object().cloned().unwrap_or_default() {
        auth[k] = v;
    }
    vec![
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-connection"), "namespace": opns},
            "stringData": {"uri": uri}
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-entra-ca"), "namespace": opns},
            "stringData": {"ca.crt": arm.ca_cert_pem()}
        }),
        json!({
            "apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoTarget",
            "metadata": {"name": name},
            "spec": {
                "connection": {"uriSecretRef": {"name": format!("{name}-connection"), "key": "uri"}},
                "auth": {"oidc": auth},
                "oidc": {"authNamePrefix": "entra", "useAuthorizationClaim": true, "authorizationClaim": "groups"},
                "policy": {"allowedNamespaces": ["e2e-*"], "allowedDatabases": ["orders"]}
            }
        }),
    ]
}

async fn start_operator(
    cluster: &Cluster,
    label: &str,
    env: Vec<(String, String)>,
    dump: &mut DumpOnFailure,
) -> Result<Operator> {
    let mut options = Options::new(env!("CARGO_BIN_EXE_dbgrant"), label);
    options.env = env;
    let op = Operator::start(cluster, options).await?;
    dump.log(op.log.clone());
    Ok(op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_oidc_with_workload_and_managed_identity_needs_no_password() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("mongo-oidc").await?;
    let s = ns.name.rsplit('-').next().unwrap_or("0").to_string();
    let opns = cluster.operator_namespace.clone();

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
                .principal(Principal::managed_identity(MANAGED.0, MANAGED.1).groups(vec![OPS_GROUP.to_string()]))
                .principal(Principal::application(STRANGER.0, STRANGER.1).named("stranger")),
        )
        .await?,
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let wi_double = mongo(&arm, &seen).await?;
    let mi_double = mongo(&arm, &seen).await?;

    // What the workload identity webhook puts in the pod.
    let dir = std::env::temp_dir().join(format!("dbgrant-e2e-mongo-oidc-{}-{s}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("azure-identity-token");
    let federated = arm.issue_federated_token(SUBJECT);
    std::fs::write(&token_file, &federated)?;
    let env = vec![
        ("AZURE_FEDERATED_TOKEN_FILE".to_string(), token_file.display().to_string()),
        ("AZURE_TENANT_ID".to_string(), arm.tenant_id()),
        ("AZURE_CLIENT_ID".to_string(), OPERATOR.0.to_string()),
        ("IDENTITY_ENDPOINT".to_string(), arm.managed_identity_endpoint()),
        ("IDENTITY_HEADER".to_string(), arm.managed_identity_header()),
    ];
    let mut op = start_operator(&cluster, "mongo-oidc", env, &mut dump).await?;

    let wi = oidc_target(&format!("oidc-wi-{s}"), &wi_double.uri(), &opns, &arm, json!({}));
    let mi = oidc_target(
        &format!("oidc-mi-{s}"),
        &mi_double.uri(),
        &opns,
        &arm,
        json!({"credential": "managedIdentity", "clientId": MANAGED.0}),
    );
    // Wrong identity: Entra refuses the exchange. Wrong audience: Entra
    // issues an ARM token, which the MongoDB server refuses.
    let stranger =
        oidc_target(&format!("oidc-stranger-{s}"), &wi_double.uri(), &opns, &arm, json!({"clientId": STRANGER.0}));
    let audience = oidc_target(
        &format!("oidc-audience-{s}"),
        &wi_double.uri(),
        &opns,
        &arm,
        json!({"scope": "https://management.azure.com/.default"}),
    );
    let all: Vec<Value> = [&wi, &mi, &stranger, &audience].into_iter().flatten().cloned().collect();
    cluster.apply_all(&cluster.admin, &all, None).await?;

    // No password anywhere: the only Secrets are a credential-free URI and
    // a CA certificate.
    for docs in [&wi, &mi, &stranger, &audience] {
        let uri = docs[0]["stringData"]["uri"].as_str().unwrap_or_default();
        assert!(!uri.contains('@'), "the connection string carries no credentials: {uri}");
        assert!(docs[2]["spec"]["auth"].get("scram").is_none());
    }

    for t in [&wi[2], &mi[2]] {
        cluster.wait_condition(t, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    }
    let grants: Vec<String> = arm.issued_tokens().iter().map(|t| format!("{}:{}", t.grant, t.client_id)).collect();
    assert!(grants.contains(&format!("workload_identity:{}", OPERATOR.0)), "{grants:?}");
    assert!(grants.contains(&format!("managed_identity:{}", MANAGED.0)), "{grants:?}");

    // A binding through the workload-identity target lands on the server,
    // written by dbgrant's OIDC login.
    let binding = in_ns(mongo_binding("readers", &format!("oidc-wi-{s}"), READERS, &[("read", "orders")]), &ns.name);
    cluster.apply(&cluster.admin, &binding, None).await?;
    cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    let role = wi_double.role(&format!("entra/{READERS}"), "admin").expect("the group's role on the server");
    assert_eq!(role.roles.iter().map(|r| format!("{}@{}", r.role, r.db)).collect::<Vec<_>>(), ["read@orders"]);
    let writer = wi_double.commands_named("createRole").into_iter().find_map(|r| r.user);
    assert_eq!(writer, Some(format!("entra/{}@$external", OPERATOR.1)));

    // Wrong or refused tokens: Unauthorized, with a message saying what to
    // check and no token in it.
    let o = cluster.wait_condition(&stranger[2], None, "Ready", "False", Some("Unauthorized"), SETTLE).await?;
    let msg = ready_message(&o);
    assert!(msg.contains("no Entra token") && msg.contains("federated credential"), "{msg}");
    let o = cluster.wait_condition(&audience[2], None, "Ready", "False", Some("Unauthorized"), SETTLE).await?;
    let msg = ready_message(&o);
    assert!(msg.contains("server refused dbgrant's Entra token") && msg.contains("oidcIdentityProviders"), "{msg}");

    // Refused targets wait for their retry instead of hot-looping (their
    // message carries no per-request ids, so status does not churn).
    let reconciles = |m: &str| metric_sum(m, "dbgrant_reconciles_total", &[("kind", "MongoTarget")]);
    let before = reconciles(&op.metrics().await?);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = reconciles(&op.metrics().await?);
    assert!(after - before <= 4.0, "targets reconciled {} times in 5 s", after - before);

    // No token in the operator's log or on any target's status.
    let mut tokens: Vec<String> = seen.lock().unwrap().clone();
    assert!(!tokens.is_empty(), "the MongoDB doubles saw no token");
    tokens.push(federated.clone());
    let log = op.log_text();
    let mut statuses = String::new();
    for t in [&wi[2], &mi[2], &stranger[2], &audience[2]] {
        if let Some(o) = cluster.get(&cluster.admin, t, None).await? {
            statuses.push_str(&serde_json::to_string(&o.data["status"])?);
        }
    }
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a token is in the operator log");
        assert!(!statuses.contains(token.as_str()), "a token is on a target's status");
    }
    assert!(!log.contains("eyJ") && !statuses.contains("eyJ"), "something token-shaped leaked");
    assert!(!log.contains("Forbidden") && !log.contains("forbidden"), "RBAC denials:\n{}", op.log_tail(60));

    cleanup(&cluster, std::slice::from_ref(&binding)).await;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    assert!(wi_double.role(&format!("entra/{READERS}"), "admin").is_none(), "revoked over the OIDC login");
    cleanup(&cluster, &all).await;
    assert!(op.stop(Duration::from_secs(10)).await?, "operator did not exit cleanly on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_auth_settings_are_validated_on_admission() -> Result<()> {
    let (cluster, _ns, dump) = setup("mongo-oidc-admission").await?;
    let opns = cluster.operator_namespace.clone();
    let arm = ArmDouble::start(ArmDoubleConfig::default()).await?;
    let base = oidc_target("oidc-admission", "mongodb://127.0.0.1:1/", &opns, &arm, json!({}))[2].clone();
    // The defaults admit the minimal spec, and a managed identity works.
    let ok = cluster.create(&cluster.admin, &base, None, true).await?;
    assert_eq!(ok.data["spec"]["auth"]["oidc"]["credential"], "workloadIdentity", "credential defaults");
    let mut managed = base.clone();
    managed["spec"]["auth"]["oidc"]["credential"] = json!("managedIdentity");
    cluster.create(&cluster.admin, &managed, None, true).await?;
    let cases = [
        ("scope", json!({"scope": "api://mongodb"}), "spec.auth.oidc.scope"),
        ("authority", json!({"authorityHost": "http://login.local"}), "spec.auth.oidc.authorityHost"),
        ("client id", json!({"clientId": "not-a-guid"}), "spec.auth.oidc.clientId"),
        ("credential", json!({"credential": "clientSecret"}), "spec.auth.oidc.credential"),
        (
            "tenant with managed identity",
            json!({"credential": "managedIdentity", "tenantId": "e2e0dd00-0000-4000-8000-0000000000f1"}),
            "tenantId applies to the workloadIdentity credential only",
        ),
    ];
    let mut failures = Vec::new();
    for (case, patch, fragment) in cases {
        let mut doc = base.clone();
        for (k, v) in patch.as_object().cloned().unwrap_or_default() {
            doc["spec"]["auth"]["oidc"][k] = v;
        }
        match cluster.create(&cluster.admin, &doc, None, true).await {
            Ok(_) => failures.push(format!("{case}: admitted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(fragment) => {}
            Err(e) => failures.push(format!("{case}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    dump.passed();
    Ok(())
}
