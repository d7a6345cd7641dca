//! Hostile input that the schema admits: huge lists at the schema's limits,
//! unicode and injection-looking names, roles and actions MongoDB does not
//! know, escalation dressed up (look-alike names, other tenants' roles,
//! system collections), namespaces a target does not allow, expiry in the
//! past or beyond the year 9999, subjects a target cannot name, missing
//! targets, and a connection string that is 64 KiB of junk. One tenant's
//! bad grant on another tenant's group is in `revocation.rs`.
//!
//! Each case must end with a clear condition on status (or, for names
//! MongoDB accepts, be applied literally and nothing more); nothing is
//! half-applied on the double; the operator never crashes or panics.
//! Schema-level refusals are in `validation.rs`; policy basics (namespace,
//! `root`) in `mongo.rs`.

use std::{collections::BTreeSet, io::Write, time::Duration};

use anyhow::{Result, bail};
use dbgrant_doubles::mongo::Resource;
use serde_json::{Value, json};

use crate::common::{SETTLE, cleanup, mongo_double, mongo_target, operator, operator_lock, ready_message, setup};

/// A group object id for case `i` (distinct per case, so the cases do not
/// share roles).
fn group(i: usize) -> String {
    format!("0bad{i:04x}-0000-4000-8000-{:012x}", i * 7919)
}

fn binding(name: &str, target: &str, ns: &str, spec: Value) -> Value {
    let mut b = json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoRoleBinding",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"targetRef": {"name": target}}
    });
    for (k, v) in spec.as_object().expect("spec object") {
        b["spec"][k] = v.clone();
    }
    b
}

fn groups(ids: &[String]) -> Value {
    json!(ids.iter().map(|g| json!({"kind": "Group", "objectId": g})).collect::<Vec<_>>())
}

/// How a case must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Ready=False with this reason, and no role for its subjects.
    NotReady(&'static str),
    /// Ready=True, and the role holds exactly what was asked (names taken
    /// literally).
    AppliedLiterally,
}

struct Case {
    label: &'static str,
    doc: Value,
    subjects: Vec<String>,
    expect: Expect,
    /// A word the Ready message must contain (what is wrong).
    mentions: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_but_schema_valid_bindings_end_with_a_clear_condition_and_apply_nothing() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("hostile").await?;
    let double = mongo_double().await?;
    let n = ns.name.rsplit('-').next().unwrap_or("0").to_string();
    let target = format!("hostile-{n}");
    let mut tdocs = mongo_target(&target, &double.uri(), &[&ns.name], &cluster.operator_namespace);
    tdocs[2]["spec"]["oidc"]["authNamePrefix"] = json!("h");
    // A namespace the target does not allow.
    let outsider = format!("{}-outsider", ns.name);
    cluster.ensure_namespace(&outsider).await?;
    let mut dump_outsider = dbgrant_harness::DumpOnFailure::new(&cluster, &[&outsider]);

    let mut cases = Vec::new();
    let mut next = 0usize;
    let one = |k: &mut usize| {
        *k += 1;
        vec![group(*k)]
    };
    let read = json!([{"role": "read", "db": "orders"}]);

    // Huge lists at the schema's maxItems.
    let many: Vec<String> = (0..256).map(|i| group(1000 + i)).collect();
    let mut roles: Vec<Value> = (0..99).map(|i| json!({"role": "read", "db": format!("orders-{i}")})).collect();
    roles.push(json!({"role": "noSuchRole", "db": "orders"}));
    cases.push(Case {
        label: "256 subjects x 100 roles, the last unknown",
        doc: binding("huge-unknown-role", &target, &ns.name, json!({"subjects": groups(&many), "roles": roles})),
        subjects: many,
        expect: Expect::NotReady("Rejected"),
        mentions: "noSuchRole",
    });
    let s = one(&mut next);
    let mut roles: Vec<Value> = (0..99).map(|i| json!({"role": "readWrite", "db": format!("orders-{i}")})).collect();
    roles.push(json!({"role": "dbOwner", "db": "orders"}));
    cases.push(Case {
        label: "100 roles, the last an escalation",
        doc: binding("huge-escalation", &target, &ns.name, json!({"subjects": groups(&s), "roles": roles})),
        subjects: s,
        expect: Expect::NotReady("GrantDenied"),
        mentions: "dbOwner",
    });
    let s = one(&mut next);
    // Collection-level actions, every one MongoDB knows, plus a misspelt one.
    let actions: Vec<&str> = [
        "find",
        "insert",
        "remove",
        "update",
        "bypassDocumentValidation",
        "changeStream",
        "collStats",
        "dbHash",
        "dbStats",
        "listIndexes",
        "listCollections",
        "validate",
        "createCollection",
        "createIndex",
        "dropCollection",
        "dropIndex",
        "collMod",
        "compact",
        "convertToCapped",
        "reIndex",
        "renameCollectionSameDB",
        "planCacheRead",
        "planCacheWrite",
        "indexStats",
        "killCursors",
    ]
    .into_iter()
    .filter(|a| dbgrant_doubles::mongo::ACTIONS.contains(a))
    .collect();
    let mut privileges: Vec<Value> = (0..99)
        .map(|i| json!({"resource": {"db": "orders", "collection": format!("c{i:03}-{}", "x".repeat(200))}, "actions": ["find", "insert"]}))
        .collect();
    let mut last = actions.iter().map(|a| json!(a)).collect::<Vec<_>>();
    last.push(json!("fnid"));
    privileges.push(json!({"resource": {"db": "orders", "collection": "audit"}, "actions": last}));
    cases.push(Case {
        label: "100 privileges on 205-char collections, the last with every collection action and one misspelt",
        doc: binding(
            "huge-unknown-action",
            &target,
            &ns.name,
            json!({"subjects": groups(&s), "privileges": privileges}),
        ),
        subjects: s,
        expect: Expect::NotReady("Rejected"),
        mentions: "fnid",
    });

    // Names: injection-looking and unicode.
    let injected = [
        ("injected-role", r#"read"}, {"role": "root", "db": "admin"#, "Rejected", "root"),
        ("trailing-space-root", "root ", "Rejected", "root"),
        ("cyrillic-root", "r\u{043e}\u{043e}t", "Rejected", "r\u{043e}\u{043e}t"),
        ("fullwidth-root", "\u{ff52}\u{ff4f}\u{ff4f}\u{ff54}", "Rejected", "\u{ff52}\u{ff4f}\u{ff4f}\u{ff54}"),
        ("rtl-override", "read\u{202e}etirw", "Rejected", "read\u{202e}etirw"),
        ("unknown-role", "readEverything", "Rejected", "readEverything"),
    ];
    for (name, role, reason, mentions) in injected {
        let s = one(&mut next);
        cases.push(Case {
            label: name,
            doc: binding(
                name,
                &target,
                &ns.name,
                json!({"subjects": groups(&s), "roles": [{"role": role, "db": "orders"}]}),
            ),
            subjects: s,
            expect: Expect::NotReady(reason),
            mentions,
        });
    }
    let s = one(&mut next);
    let literal_subject = s[0].clone();
    let literal = ["ℵ-ünïcødé-🦀", "audit'); db.dropDatabase('orders", r#"a"b\c{}[]"#, "émoji 🔥 spaces"];
    cases.push(Case {
        label: "unicode and quote-laden collection names (legal in MongoDB)",
        doc: binding(
            "literal-names",
            &target,
            &ns.name,
            json!({"subjects": groups(&s), "privileges": literal.iter().map(|c| json!({"resource": {"db": "orders", "collection": c}, "actions": ["find"]})).collect::<Vec<_>>()}),
        ),
        subjects: s,
        expect: Expect::AppliedLiterally,
        mentions: "",
    });

    // Escalation dressed up.
    let victim = group(9999);
    let dressed = [
        ("root-uppercase-admin", json!({"roles": [{"role": "ROOT", "db": "admin"}]}), "admin"),
        ("role-in-any-db", json!({"roles": [{"role": "read", "db": "*"}]}), "\"*\""),
        ("other-tenants-role", json!({"roles": [{"role": format!("h/{victim}"), "db": "admin"}]}), "admin"),
        (
            "system-users",
            json!({"privileges": [{"resource": {"db": "orders", "collection": "system.users"}, "actions": ["find"]}]}),
            "system",
        ),
        (
            "system-js",
            json!({"privileges": [{"resource": {"db": "orders", "collection": "system.js"}, "actions": ["insert"]}]}),
            "system",
        ),
        (
            "every-database",
            json!({"privileges": [{"resource": {"db": "", "collection": ""}, "actions": ["find"]}]}),
            "every database",
        ),
        (
            "cluster-resource",
            json!({"privileges": [{"resource": {"cluster": true}, "actions": ["shutdown"]}]}),
            "cluster",
        ),
        (
            "grant-role-action",
            json!({"privileges": [{"resource": {"db": "orders", "collection": ""}, "actions": ["grantRole", "find"]}]}),
            "grantRole",
        ),
        (
            "any-action",
            json!({"privileges": [{"resource": {"db": "orders", "collection": ""}, "actions": ["anyAction"]}]}),
            "anyAction",
        ),
        (
            "impersonate",
            json!({"privileges": [{"resource": {"db": "orders", "collection": ""}, "actions": ["impersonate"]}]}),
            "impersonate",
        ),
        (
            "change-password",
            json!({"privileges": [{"resource": {"db": "orders", "collection": ""}, "actions": ["changePassword"]}]}),
            "changePassword",
        ),
        ("reserved-db-config", json!({"roles": [{"role": "read", "db": "config"}]}), "config"),
    ];
    for (name, grant, mentions) in dressed {
        let s = one(&mut next);
        let mut spec = grant.clone();
        spec["subjects"] = groups(&s);
        cases.push(Case {
            label: name,
            doc: binding(name, &target, &ns.name, spec),
            subjects: s,
            expect: Expect::NotReady("GrantDenied"),
            mentions,
        });
    }

    // Time, subjects, targets, namespaces.
    let s = one(&mut next);
    cases.push(Case {
        label: "expiresAt in the past",
        doc: binding(
            "expired-already",
            &target,
            &ns.name,
            json!({"subjects": groups(&s), "roles": read, "expiresAt": "2001-09-09T01:46:40Z"}),
        ),
        subjects: s,
        expect: Expect::NotReady("Expired"),
        mentions: "2001",
    });
    let s = one(&mut next);
    cases.push(Case {
        label: "duration 0s",
        doc: binding(
            "zero-duration",
            &target,
            &ns.name,
            json!({"subjects": groups(&s), "roles": read, "duration": "0s"}),
        ),
        subjects: s,
        expect: Expect::NotReady("Expired"),
        mentions: "expired",
    });
    let s = one(&mut next);
    cases.push(Case {
        label: "duration past the year 9999",
        doc: binding(
            "endless",
            &target,
            &ns.name,
            json!({"subjects": groups(&s), "roles": read, "duration": "999999w".repeat(40)}),
        ),
        subjects: s,
        expect: Expect::NotReady("InvalidSpec"),
        mentions: "duration",
    });
    let s = one(&mut next);
    cases.push(Case {
        label: "target that does not exist",
        doc: binding(
            "no-target",
            &format!("nonexistent-{n}"),
            &ns.name,
            json!({"subjects": groups(&s), "roles": read}),
        ),
        subjects: s,
        expect: Expect::NotReady("TargetNotFound"),
        mentions: "does not exist",
    });
    let s = one(&mut next);
    let mut cross = binding("cross-namespace", &target, &outsider, json!({"subjects": groups(&s), "roles": read}));
    // targetRef has no namespace field: the apiserver prunes this one.
    cross["spec"]["targetRef"]["namespace"] = json!(ns.name);
    cases.push(Case {
        label: "namespace the target does not allow, claiming another namespace",
        doc: cross,
        subjects: s,
        expect: Expect::NotReady("GrantDenied"),
        mentions: "outsider",
    });
    let s = one(&mut next);
    cases.push(Case {
        label: "User subject on a target that authorises by claim",
        doc: binding(
            "user-on-claim-target",
            &target,
            &ns.name,
            json!({"subjects": [{"kind": "User", "objectId": s[0]}], "roles": read}),
        ),
        subjects: s,
        expect: Expect::NotReady("InvalidSpec"),
        mentions: "Group",
    });
    cases.push(Case {
        label: "AppRole subject on a groups-claim target",
        doc: binding(
            "app-role-on-groups-target",
            &target,
            &ns.name,
            json!({"subjects": [{"kind": "AppRole", "value": "Orders.Read:all..x"}], "roles": read}),
        ),
        subjects: vec!["Orders.Read:all..x".into()],
        expect: Expect::NotReady("InvalidSpec"),
        mentions: "groups claim",
    });

    let mut op = operator(&cluster, "hostile", Duration::from_secs(300), &mut dump).await?;
    dump_outsider.log(op.log.clone());
    cluster.apply_all(&cluster.admin, &tdocs, None).await?;
    cluster.wait_condition(&tdocs[2], None, "Ready", "True", None, SETTLE).await?;
    for c in &cases {
        // create, not apply: server-side apply would refuse the unknown
        // targetRef.namespace; a plain create prunes it, as kubectl does.
        cluster.create(&cluster.admin, &c.doc, None, false).await.map_err(|e| anyhow::anyhow!("{}: {e}", c.label))?;
    }
    let mut failures = Vec::new();
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for c in &cases {
        let r = match c.expect {
            Expect::NotReady(reason) => {
                cluster.wait_condition(&c.doc, None, "Ready", "False", Some(reason), SETTLE).await
            }
            Expect::AppliedLiterally => {
                cluster.wait_condition(&c.doc, None, "Ready", "True", Some("Applied"), SETTLE).await
            }
        };
        let o = match r {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{}: {e:#}", c.label));
                continue;
            }
        };
        let msg = ready_message(&o);
        if !msg.contains(c.mentions) {
            failures.push(format!("{}: message does not mention {:?}: {msg}", c.label, c.mentions));
        }
        let ended = match c.expect {
            Expect::NotReady(r) => r.to_string(),
            Expect::AppliedLiterally => "Applied literally".to_string(),
        };
        *reasons.entry(ended).or_default() += 1;
        let roles: Vec<_> = c.subjects.iter().filter_map(|s| double.role(&format!("h/{s}"), "admin")).collect();
        match c.expect {
            Expect::NotReady(_) if !roles.is_empty() => {
                failures.push(format!("{}: applied {} role(s) anyway: {:?}", c.label, roles.len(), roles[0]))
            }
            Expect::AppliedLiterally => {
                let want: BTreeSet<(Resource, Vec<String>)> =
                    literal.iter().map(|c| (Resource::collection("orders", *c), vec!["find".to_string()])).collect();
                let have: BTreeSet<(Resource, Vec<String>)> = roles
                    .iter()
                    .flat_map(|r| r.privileges.iter().map(|p| (p.resource.clone(), p.actions.clone())))
                    .collect();
                if roles.len() != 1 || have != want || !roles[0].roles.is_empty() {
                    failures.push(format!("{}: not applied literally: {roles:?}", c.label));
                }
            }
            _ => {}
        }
    }
    // Nothing outside the cases' own names was touched, and nothing was
    // created for refused cases (a failed createRole leaves no role).
    let all: Vec<String> = double.roles().iter().map(|r| r.name.to_string()).collect();
    if all != [format!("h/{literal_subject}@admin")] {
        failures.push(format!("roles besides the literal-names case's: {all:?}"));
    }
    assert!(op.is_running(), "the operator exited:\n{}", op.log_tail(60));
    let log = op.log_text();
    if log.contains("panicked") {
        failures.push(format!("the operator panicked:\n{}", op.log_tail(60)));
    }
    if !failures.is_empty() {
        bail!("{} of {} hostile cases misbehaved:\n  {}", failures.len(), cases.len(), failures.join("\n  "));
    }
    let _ = writeln!(
        std::io::stderr(),
        "reliability: hostile-bindings: {} schema-valid hostile bindings ({} subjects, {} UMC commands on the double); \
         ended {:?}; nothing half-applied; operator up, no panic",
        cases.len(),
        cases.iter().map(|c| c.subjects.len()).sum::<usize>(),
        double.user_management_log().len(),
        reasons,
    );
    for c in &cases {
        cluster.delete(&cluster.admin, &c.doc, None).await?;
    }
    for c in &cases {
        cluster.wait_gone(&c.doc, None, SETTLE).await?;
    }
    assert!(double.roles().is_empty(), "roles left after deleting every case: {:?}", double.roles());
    cleanup(&cluster, &tdocs).await;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    dump_outsider.passed();
    Ok(())
}

/// A MongoTarget whose connection string is 64 KiB of junk: a clear
/// condition that does not quote it, and no crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_connection_string_is_reported_without_quoting_it() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("junk-uri").await?;
    let n = ns.name.rsplit('-').next().unwrap_or("0").to_string();
    let junk = format!("mongodb://{}", "%zz\u{0}'\"<>{}".repeat(64 * 1024 / 12));
    let target = format!("junk-{n}");
    let tdocs = mongo_target(&target, &junk, &[&ns.name], &cluster.operator_namespace);
    let mut op = operator(&cluster, "junk-uri", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &tdocs, None).await?;
    let o = cluster.wait_condition(&tdocs[2], None, "Ready", "False", None, SETTLE).await?;
    let msg = ready_message(&o);
    assert!(!msg.contains("%zz"), "the message quotes the connection string: {}", &msg[..msg.len().min(200)]);
    assert!(msg.len() < 1000, "message of {} bytes", msg.len());
    assert!(op.is_running() && !op.log_text().contains("panicked"), "{}", op.log_tail(40));
    assert!(!op.log_text().contains("%zz"), "the log quotes the connection string");
    cleanup(&cluster, &tdocs).await;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}
