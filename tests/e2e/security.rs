//! Security end to end: TLS verification on by default and visible when
//! turned off; secret values never in logs, Events or status.

use std::time::Duration;

use anyhow::Result;
use dbgrant_doubles::mongo::{MongoDouble, MongoDoubleConfig, ScramUser, TestPki};
use dbgrant_harness::{manifests, operator::Options};
use k8s_openapi::api::events::v1::Event;
use kube::{Api, api::ListParams};
use serde_json::{Value, json};

use crate::common::{MONGO_ADMIN, SETTLE, cleanup, in_ns, mongo_binding, mongo_target, operator_lock, setup};

const GROUP: &str = "0b6d1b5e-2f0a-4a8e-9d3c-6f1e2a7b8c90";

fn suffix(ns: &str) -> &str {
    ns.rsplit('-').next().unwrap_or("0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_by_default_and_disabling_it_is_visible() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("tls").await?;
    let pki = TestPki::generate()?;
    let double = MongoDouble::start(
        MongoDoubleConfig::default().user(ScramUser::admin(MONGO_ADMIN.0, MONGO_ADMIN.1)).tls(pki.server_tls_config()),
    )
    .await?;
    let uri = format!("mongodb://{}/?tls=true&directConnection=true", double.addr());
    let s = suffix(&ns.name);
    let opns = cluster.operator_namespace.clone();
    let ca_secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("tls-ca-{s}"), "namespace": opns},
        "stringData": {"ca.crt": pki.ca_cert_pem}
    });
    // Verified with the right CA; refused without it; explicitly skipped.
    let mut verified = mongo_target(&format!("tls-verified-{s}"), &uri, &["e2e-*"], &opns);
    verified[2]["spec"]["connection"]["tls"] = json!({"caSecretRef": {"name": format!("tls-ca-{s}"), "key": "ca.crt"}});
    let untrusted = mongo_target(&format!("tls-untrusted-{s}"), &uri, &["e2e-*"], &opns);
    let mut skipped = mongo_target(&format!("tls-skipped-{s}"), &uri, &["e2e-*"], &opns);
    skipped[2]["spec"]["connection"]["tls"] = json!({"insecureSkipVerify": true});

    let mut op = crate::common::operator(&cluster, "tls", Duration::from_secs(300), &mut dump).await?;
    cluster.apply(&cluster.admin, &ca_secret, None).await?;
    for docs in [&verified, &untrusted, &skipped] {
        cluster.apply_all(&cluster.admin, docs, None).await?;
    }
    let o = cluster.wait_condition(&verified[2], None, "Ready", "True", None, SETTLE).await?;
    assert_eq!(o.data["status"]["tlsVerification"], "Enabled");
    let o = cluster.wait_condition(&untrusted[2], None, "Ready", "False", None, SETTLE).await?;
    assert_ne!(o.data["status"]["tlsVerification"], "Disabled");
    let o = cluster.wait_condition(&skipped[2], None, "Ready", "True", None, SETTLE).await?;
    assert_eq!(o.data["status"]["tlsVerification"], "Disabled", "skipping verification must show on status");

    // A grant through the verified target works end to end.
    let b = in_ns(mongo_binding("over-tls", &format!("tls-verified-{s}"), GROUP, &[("read", "orders")]), &ns.name);
    cluster.apply(&cluster.admin, &b, None).await?;
    cluster.wait_condition(&b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert!(double.role(&format!("entra/{GROUP}"), "admin").is_some());

    cleanup(&cluster, std::slice::from_ref(&b)).await;
    cluster.wait_gone(&b, None, SETTLE).await?;
    let mut all = verified;
    all.extend(untrusted);
    all.extend(skipped);
    all.push(ca_secret);
    cleanup(&cluster, &all).await;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_appear_in_logs_events_or_status() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("secrets-scan").await?;
    let double = crate::common::mongo_double().await?;
    let s = suffix(&ns.name);
    let opns = cluster.operator_namespace.clone();
    let wrong_password = format!("Wr0ng-Pa55-{s}-never-print-me");
    let uri_password = format!("Ur1-Pa55-{s}-never-print-me");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;

    // 1: credentials in the connection string (auth: connectionString).
    let mut in_uri = mongo_target(
        &format!("scan-uri-{s}"),
        &format!(
            "mongodb://{}:{}@{}/?authSource=admin&directConnection=true",
            MONGO_ADMIN.0,
            MONGO_ADMIN.1,
            double.addr()
        ),
        &["e2e-*"],
        &opns,
    );
    in_uri[2]["spec"]["auth"] = json!({"connectionString": {}});
    // 2: a wrong SCRAM password (authentication fails).
    let mut wrong = mongo_target(&format!("scan-wrong-{s}"), &double.uri(), &["e2e-*"], &opns);
    wrong[1]["stringData"]["password"] = json!(wrong_password);
    // 3: credentials in the URI of a server that is down.
    let mut down = mongo_target(
        &format!("scan-down-{s}"),
        &format!("mongodb://someone:{uri_password}@{closed}/?authSource=admin"),
        &["e2e-*"],
        &opns,
    );
    down[2]["spec"]["auth"] = json!({"connectionString": {}});

    let mut options = Options::new(env!("CARGO_BIN_EXE_dbgrant"), "secrets-scan");
    // As chatty as a user could make it.
    options.env.push(("RUST_LOG".into(), "trace,hyper=info,h2=info,rustls=info,tower=info".into()));
    let mut op = dbgrant_harness::Operator::start(&cluster, options).await?;
    dump.log(op.log.clone());
    let mut bindings = Vec::new();
    for (i, docs) in [&in_uri, &wrong, &down].into_iter().enumerate() {
        cluster.apply_all(&cluster.admin, docs, None).await?;
        let b = in_ns(
            mongo_binding(&format!("scan-{i}"), manifests::name(&docs[2]), GROUP, &[("read", "orders")]),
            &ns.name,
        );
        cluster.apply(&cluster.admin, &b, None).await?;
        bindings.push(b);
    }
    cluster.wait_condition(&in_uri[2], None, "Ready", "True", None, SETTLE).await?;
    cluster.wait_condition(&wrong[2], None, "Ready", "False", Some("Unauthorized"), SETTLE).await?;
    cluster.wait_condition(&down[2], None, "Ready", "False", Some("Unreachable"), SETTLE).await?;
    cluster.wait_condition(&bindings[0], None, "Ready", "True", Some("Applied"), SETTLE).await?;
    cluster.wait_condition(&bindings[1], None, "Ready", "False", Some("TargetNotReady"), SETTLE).await?;

    // Everything the operator wrote that a person or a log pipeline sees.
    let mut haystack = vec![("operator log".to_string(), op.log_text())];
    for docs in [&in_uri, &wrong, &down] {
        let o = cluster.get(&cluster.admin, &docs[2], None).await?.expect("target");
        haystack.push((format!("status of {}", manifests::name(&docs[2])), o.data["status"].to_string()));
    }
    for b in &bindings {
        let o = cluster.get(&cluster.admin, b, None).await?.expect("binding");
        haystack.push((format!("status of binding {}", manifests::name(b)), o.data["status"].to_string()));
    }
    let events: Api<Event> = Api::all(cluster.admin.clone());
    for e in events.list(&ListParams::default()).await? {
        haystack
            .push((format!("event {}", e.metadata.name.unwrap_or_default()), format!("{:?} {:?}", e.reason, e.note)));
    }
    let needles = [MONGO_ADMIN.1, wrong_password.as_str(), uri_password.as_str()];
    let mut leaks = Vec::new();
    for (what, text) in &haystack {
        for n in needles {
            if text.contains(n) {
                leaks.push(format!("{what} contains a secret value"));
            }
        }
    }
    assert!(haystack[0].1.len() > 1000, "the operator log is suspiciously short; was anything logged?");
    assert!(leaks.is_empty(), "secret values leaked: {leaks:?}");
    eprintln!(
        "scanned {} sources ({} bytes) for {} secret values",
        haystack.len(),
        haystack.iter().map(|h| h.1.len()).sum::<usize>(),
        needles.len()
    );

    cleanup(&cluster, &bindings).await;
    for b in &bindings[..1] {
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    let all: Vec<Value> = [in_uri, wrong, down].concat();
    cleanup(&cluster, &all).await;
    // Bindings on targets that are gone release their finalizer too.
    for b in &bindings {
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}
