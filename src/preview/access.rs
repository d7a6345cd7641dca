//! `dbgrant access`: who has what, per target — each Entra subject, the
//! role (with its roles and privileges) or assignments dbgrant gives it,
//! the bindings that grant them and when each ends. Computed from the
//! bindings as the operator evaluates them ([`super::end_state`]): the
//! access dbgrant maintains, denied and expired bindings excluded.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use super::{end_state::EndState, objects::Objects};
use crate::plan::{expiry, mongo::Resource};

/// One subject's access on one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// `MongoTarget` or `CosmosTarget`.
    pub target_kind: &'static str,
    pub target: String,
    /// `Group`, `User`, `ServicePrincipal`, `AppRole` (Cosmos DB:
    /// `Principal`, as assignments carry only the object id).
    pub subject_kind: String,
    /// Object id or app role value.
    pub subject: String,
    /// The backend object: `admin.<role>` (and `$external.<user>`), or the
    /// assignment's name.
    pub object: String,
    /// What it grants: `read@orders`, `find, insert on orders.audit`;
    /// `DataReader at /dbs/orders`.
    pub grants: Vec<String>,
    /// `namespace/name` of each binding granting it.
    pub bindings: Vec<String>,
    /// When the access ends: the latest end among its bindings (None: one
    /// of them never ends).
    pub expires: Option<String>,
    /// With `--backend`: what the live state says against the bindings
    /// (`drifted: …`, `no binding grants it: …`, `foreign: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
}

/// The rows of `state` (the end state of `objects`), filtered to `target` and `subject`
/// (object id or app role value, case-insensitive) when given.
pub fn rows(objects: &Objects, state: &EndState, target: Option<&str>, subject: Option<&str>) -> Vec<Row> {
    let ends = binding_ends(objects);
    let expires = |bindings: &[String], kind: &str| -> Option<String> {
        let mut latest: Option<Timestamp> = None;
        for b in bindings {
            match ends.get(&(kind.to_string(), b.clone())) {
                Some(Some(t)) => latest = Some(latest.map_or(*t, |l| l.max(*t))),
                _ => return None,
            }
        }
        latest.map(|t| t.to_string())
    };
    let mut out = Vec::new();
    for (t, roles) in &state.mongo {
        for (name, r) in roles {
            let mut grants: Vec<String> = r.grant.roles.iter().map(|(role, db)| format!("{role}@{db}")).collect();
            for (res, actions) in &r.grant.privileges {
                let on = match res {
                    Resource::Cluster => "the cluster".to_string(),
                    Resource::Namespace { db, collection } => format!("{db}.{collection}"),
                };
                grants.push(format!("{} on {on}", actions.iter().cloned().collect::<Vec<_>>().join(", ")));
            }
            let object = match &r.user {
                Some(u) => format!("admin.{name} ($external.{u})"),
                None => format!("admin.{name}"),
            };
            let bindings: Vec<String> = r.bindings.iter().cloned().collect();
            out.push(Row {
                target_kind: "MongoTarget",
                target: t.clone(),
                subject_kind: r.subject.kind.to_string(),
                subject: r.subject.id.clone(),
                object,
                grants,
                expires: expires(&bindings, "MongoRoleBinding"),
                bindings,
                flag: None,
            });
        }
    }
    for (t, account) in &state.cosmos {
        for (name, a) in &account.assignments {
            let scope = if a.key.scope.is_empty() { "the account" } else { &a.key.scope };
            let bindings: Vec<String> = a.bindings.iter().cloned().collect();
            out.push(Row {
                target_kind: "CosmosTarget",
                target: t.clone(),
                subject_kind: "Principal".into(),
                subject: a.key.principal_id.clone(),
                object: name.clone(),
                grants: vec![format!("{} at {scope}", a.key.role)],
                expires: expires(&bindings, "CosmosRoleBinding"),
                bindings,
                flag: None,
            });
        }
    }
    out.retain(|r| target.is_none_or(|t| r.target == t) && subject.is_none_or(|s| r.subject.eq_ignore_ascii_case(s)));
    out
}

/// Join `rows` with the live state: rows whose object drifted are
/// flagged, and what the server holds that no binding grants (dbgrant's
/// orphans it would remove, foreign objects under its names) becomes rows
/// of its own.
pub fn join_live(rows: &mut Vec<Row>, live: &[super::live::LiveTarget]) {
    for t in live {
        let extra = |flag: String, object: String| Row {
            target_kind: t.kind,
            target: t.name.clone(),
            subject_kind: "-".into(),
            subject: "-".into(),
            object,
            grants: Vec::new(),
            bindings: Vec::new(),
            expires: None,
            flag: Some(flag),
        };
        if let Some(e) = &t.error {
            rows.push(extra(format!("cannot read the live state: {e}"), "-".into()));
            continue;
        }
        for r in rows.iter_mut().filter(|r| r.target == t.name && r.target_kind == t.kind) {
            let name = r.object.split(' ').next().unwrap_or_default().to_string();
            if t.drifted.iter().any(|d| d.contains(&name)) {
                r.flag = Some("drifted: the server differs; dbgrant restores it at its next resync".into());
            }
        }
        for w in &t.writes {
            if let Some(object) =
                ["drop role ", "drop user ", "delete assignment "].iter().find_map(|p| w.strip_prefix(p))
            {
                let flag = "on the server, no binding grants it: dbgrant removes it at its next resync".to_string();
                rows.push(extra(flag, object.split(' ').next().unwrap_or_default().to_string()));
            }
        }
        for f in &t.foreign {
            rows.push(extra("foreign: dbgrant's name, not created by dbgrant; left alone".into(), f.clone()));
        }
    }
}

/// When each binding's access ends, by (kind, `namespace/name`).
fn binding_ends(objects: &Objects) -> BTreeMap<(String, String), Option<Timestamp>> {
    let mut out = BTreeMap::new();
    for (k, b) in &objects.mongo_bindings {
        let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        out.insert(
            ("MongoRoleBinding".into(), k.clone()),
            expiry::expiry_instant(created, &b.spec.expiry).ok().flatten(),
        );
    }
    for (k, b) in &objects.cosmos_bindings {
        let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        out.insert(
            ("CosmosRoleBinding".into(), k.clone()),
            expiry::expiry_instant(created, &b.spec.expiry).ok().flatten(),
        );
    }
    out
}

const HEADERS: [&str; 9] =
    ["TARGET KIND", "TARGET", "SUBJECT KIND", "SUBJECT", "OBJECT", "GRANTS", "BINDINGS", "EXPIRES", "LIVE"];

fn cells(r: &Row) -> [String; 9] {
    [
        r.target_kind.to_string(),
        r.target.clone(),
        r.subject_kind.clone(),
        r.subject.clone(),
        r.object.clone(),
        r.grants.join("; "),
        r.bindings.join(", "),
        r.expires.clone().unwrap_or_else(|| "never".into()),
        r.flag.clone().unwrap_or_default(),
    ]
}

/// An aligned table, as `kubectl get` prints.
pub fn table(rows: &[Row]) -> String {
    // The LIVE column only when `--backend` flagged something.
    let columns = if rows.iter().any(|r| r.flag.is_some()) { 9 } else { 8 };
    let all: Vec<Vec<String>> = rows.iter().map(|r| cells(r)[..columns].to_vec()).collect();
    let mut widths: Vec<usize> = HEADERS[..columns].iter().map(|h| h.len()).collect();
    for c in &all {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: &[String]| {
        let padded: Vec<String> = c.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect();
        padded.join("   ").trim_end().to_string() + "\n"
    };
    let mut out = line(&HEADERS[..columns].iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for c in &all {
        out.push_str(&line(c));
    }
    out
}

/// RFC 4180 CSV with a header row.
pub fn csv(rows: &[Row]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
    };
    let header = ["targetKind", "target", "subjectKind", "subject", "object", "grants", "bindings", "expires", "live"];
    let mut out = header.join(",") + "\r\n";
    for r in rows {
        let c = cells(r);
        out.push_str(&c.iter().map(|s| field(s)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

/// `dbgrant access`: read the bindings (the cluster's, or manifests), and
/// print who has what.
pub async fn run(args: &crate::cli::AccessArgs) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let objects = if args.filename.is_empty() {
        super::cluster::read(args.kubeconfig.as_deref()).await?
    } else {
        let inputs = super::manifests::read(&args.filename)?;
        super::objects::admit(&inputs.documents, &Objects::default(), &args.namespace, now).0
    };
    let state = super::end_state::end_state(&objects, now);
    let mut rows = rows(&objects, &state, args.target.as_deref(), args.subject.as_deref());
    if args.backend {
        let client = crate::runtime::client::connect(args.kubeconfig.as_deref()).await?;
        let mut live = super::live::read(client, &args.operator_namespace, &objects, now).await;
        live.retain(|t| args.target.as_deref().is_none_or(|n| t.name == n));
        join_live(&mut rows, &live);
    }
    let text = match args.output {
        crate::cli::AccessOutput::Table => table(&rows),
        crate::cli::AccessOutput::Csv => csv(&rows),
        crate::cli::AccessOutput::Json => serde_json::to_string_pretty(&rows)? + "\n",
    };
    print!("{text}");
    Ok(())
}
