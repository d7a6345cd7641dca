//! `dbgrant plan`: what applying a set of manifests would do, before it is
//! applied — the `terraform plan` of access grants, for pull requests; and
//! `dbgrant access` ([`access`]): who has what, from the same end state.
//!
//! ```text
//!   manifests ─▶ admit (schema, defaults, CEL) ─▶ overlay on the cluster's objects
//!                                                     │
//!   end_state(cluster) ───────── diff ───────── end_state(cluster + manifests)
//!                                 │
//!        verdicts (policy, gate) + writes per target ─▶ text | json | markdown
//! ```
//!
//! Everything from admission to the diff is pure and uses the operator's
//! own evaluation, names and schemas; only reading the inputs and the
//! cluster does I/O ([`manifests`], [`cluster`]).

pub mod access;
pub mod cluster;
pub mod diff;
pub mod end_state;
pub mod live;
pub mod manifests;
pub mod objects;
pub mod render;
pub mod validate;

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::TargetMode;
use crate::plan::{expiry, policy};

use self::{
    diff::{Action, TargetChanges},
    end_state::{Verdict, end_state},
    manifests::Document,
    objects::{Invalid, Objects},
};

/// The verdict of a binding the manifests prune.
pub const DELETED: &str = "Deleted";

/// The version of the JSON shape (`-o json`), documented in README.
pub const SCHEMA: &str = "dbgrant.io/plan/v1";

/// Exit code: nothing would change.
pub const EXIT_NO_CHANGE: u8 = 0;
/// Exit code: something went wrong (unreadable input, cluster unreachable).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: there are changes, all allowed.
pub const EXIT_CHANGES: u8 = 2;
/// Exit code: a manifest is invalid or a binding would be refused.
pub const EXIT_REFUSED: u8 = 3;

/// One binding's verdict, and what it was before the change.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingVerdict {
    /// `Kind/namespace/name`.
    pub binding: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The reason before the change, when the binding existed and its
    /// verdict changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previously: Option<String>,
}

/// Counts for the summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    /// Objects left in place and no longer managed (`deletionPolicy: Retain`).
    pub release: usize,
    /// Bindings the operator would refuse (Stalled).
    pub refused: usize,
    /// Manifests the apiserver would refuse.
    pub invalid: usize,
}

/// What `dbgrant plan` reports.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: &'static str,
    /// What the plan starts from: `cluster`, `manifests` or `empty`.
    pub baseline: &'static str,
    /// Manifests the apiserver would refuse.
    pub invalid: Vec<Invalid>,
    /// Bindings the manifests add or change, and bindings whose verdict the
    /// change turns (a target's policy tightened, say; pruned).
    pub bindings: Vec<BindingVerdict>,
    /// The writes, per target.
    pub targets: Vec<TargetChanges>,
    pub summary: Summary,
    /// Documents of other API groups, skipped.
    pub skipped_documents: usize,
    /// With `--backend`: what the operator would write now against each
    /// target's live state, once the change is applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backend: Vec<live::LiveTarget>,
}

impl Report {
    /// The process exit code: 1 if a target's live state could not be
    /// read, 3 if anything is invalid or refused, else 2 if anything
    /// changes (or, with `--backend`, would be written), else 0.
    pub fn exit_code(&self) -> u8 {
        let s = &self.summary;
        if self.backend.iter().any(|t| t.error.is_some()) {
            EXIT_ERROR
        } else if s.invalid > 0 || s.refused > 0 {
            EXIT_REFUSED
        } else if s.create + s.update + s.delete + s.release > 0 || self.backend.iter().any(|t| !t.writes.is_empty()) {
            EXIT_CHANGES
        } else {
            EXIT_NO_CHANGE
        }
    }
}

/// The state a plan starts from.
#[derive(Clone, Debug, Default)]
pub enum Baseline {
    /// Nothing: every object in the manifests is new.
    #[default]
    Empty,
    /// The cluster's objects (`--kubeconfig`).
    Cluster(Objects),
    /// Other manifests, as the cluster would hold them once applied
    /// (`--before`: the base branch of a pull request, say); those the
    /// apiserver would refuse are left out, as it would.
    Manifests(Objects),
}

impl Baseline {
    /// `empty`, `cluster` or `manifests`, as the report says it.
    pub fn label(&self) -> &'static str {
        match self {
            Baseline::Empty => "empty",
            Baseline::Cluster(_) => "cluster",
            Baseline::Manifests(_) => "manifests",
        }
    }

    /// The objects it holds.
    pub fn objects(&self) -> Option<&Objects> {
        match self {
            Baseline::Empty => None,
            Baseline::Cluster(o) | Baseline::Manifests(o) => Some(o),
        }
    }

    /// The baseline of `documents` admitted into an empty cluster.
    pub fn of_manifests(documents: &[Document], namespace: &str, now: Timestamp) -> Self {
        Baseline::Manifests(objects::admit(documents, &Objects::default(), namespace, now).0)
    }
}

/// How the manifests meet the baseline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Like `kubectl apply`: the manifests replace the baseline's objects
    /// with the same kind, namespace and name; the rest stay.
    #[default]
    Apply,
    /// Like a GitOps sync with pruning: the manifests are the whole desired
    /// set, and the baseline's objects they lack are deleted.
    Prune,
}

/// Plan `documents` on top of `baseline` at `now`. `namespace` is where
/// namespaced manifests without one go.
pub fn plan(
    documents: &[Document],
    skipped: usize,
    baseline: &Baseline,
    mode: Mode,
    namespace: &str,
    now: Timestamp,
) -> Report {
    plan_and_next(documents, skipped, baseline, mode, namespace, now).0
}

/// [`plan`], and the objects the cluster holds once the change is applied.
pub fn plan_and_next(
    documents: &[Document],
    skipped: usize,
    baseline: &Baseline,
    mode: Mode,
    namespace: &str,
    now: Timestamp,
) -> (Report, Objects) {
    let empty = Objects::default();
    let current = baseline.objects().unwrap_or(&empty);
    let (changes, invalid) = objects::admit(documents, current, namespace, now);
    let next = if mode == Mode::Prune { changes.clone() } else { current.overlay(&changes) };
    let (before, after) = (end_state(current, now), end_state(&next, now));
    let mut targets = diff::diff(&before, &after, &retained(current, &next, now));
    for t in &mut targets {
        t.observe = match t.kind {
            "MongoTarget" => next.mongo_targets.get(&t.name).is_some_and(|t| t.spec.mode == TargetMode::Observe),
            _ => next.cosmos_targets.get(&t.name).is_some_and(|t| t.spec.mode == TargetMode::Observe),
        };
    }

    let changed = changes.changed_from(current);
    let mut bindings = Vec::new();
    for (id, verdict) in &after.verdicts {
        let previously = before.verdicts.get(id).filter(|b| b.reason != verdict.reason).map(|b| b.reason.clone());
        if changed.contains(id) || previously.is_some() {
            bindings.push(BindingVerdict { binding: id.clone(), verdict: verdict.clone(), previously });
        }
    }
    for (id, was) in before.verdicts.iter().filter(|(id, _)| !after.verdicts.contains_key(*id)) {
        let verdict = Verdict {
            target: was.target.clone(),
            reason: DELETED.into(),
            message: "pruned: the manifests no longer declare it, so its access is revoked (or released, with deletionPolicy: Retain)".into(),
            refused: false,
        };
        bindings.push(BindingVerdict { binding: id.clone(), verdict, previously: Some(was.reason.clone()) });
    }
    let mut counts: BTreeMap<Action, usize> = BTreeMap::new();
    for c in targets.iter().flat_map(|t| &t.changes) {
        *counts.entry(c.action).or_default() += 1;
    }
    let summary = Summary {
        create: counts.get(&Action::Create).copied().unwrap_or(0),
        update: counts.get(&Action::Update).copied().unwrap_or(0),
        delete: counts.get(&Action::Delete).copied().unwrap_or(0),
        release: counts.get(&Action::Release).copied().unwrap_or(0),
        refused: bindings.iter().filter(|b| b.verdict.refused).count(),
        invalid: invalid.len(),
    };
    let report = Report {
        api_version: SCHEMA,
        baseline: baseline.label(),
        invalid,
        bindings,
        targets,
        summary,
        skipped_documents: skipped,
        backend: Vec::new(),
    };
    (report, next)
}

/// The bindings deleted between `current` and `next` that release their
/// access instead of revoking it: `deletionPolicy: Retain`, allowed by
/// their target's policy (as it will be), and not expired — the rule the
/// operator applies at deletion ([`policy::retains`]).
fn retained(current: &Objects, next: &Objects, now: Timestamp) -> diff::Retained {
    let mut out = diff::Retained::default();
    for (key, b) in current.mongo_bindings.iter().filter(|(k, _)| !next.mongo_bindings.contains_key(*k)) {
        let allow = next.mongo_targets.get(&b.spec.target_ref.name).is_some_and(|t| t.spec.policy.allow_retain);
        let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if policy::retains(b.spec.deletion_policy, allow, expiry::has_ended(created, &b.spec.expiry, now)) {
            out.mongo.insert(key.clone());
        }
    }
    for (key, b) in current.cosmos_bindings.iter().filter(|(k, _)| !next.cosmos_bindings.contains_key(*k)) {
        let allow = next.cosmos_targets.get(&b.spec.target_ref.name).is_some_and(|t| t.spec.policy.allow_retain);
        let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if policy::retains(b.spec.deletion_policy, allow, expiry::has_ended(created, &b.spec.expiry, now)) {
            out.cosmos.insert(key.clone());
        }
    }
    out
}

/// `dbgrant plan`: read, plan, print; the exit code says what it found.
pub async fn run(args: &crate::cli::PlanArgs) -> anyhow::Result<u8> {
    let now = Timestamp::now();
    let inputs = manifests::read(&args.filename)?;
    let baseline = match (&args.kubeconfig, &args.before) {
        (Some(path), _) => Baseline::Cluster(cluster::read(Some(path)).await?),
        (None, Some(before)) => Baseline::of_manifests(&manifests::read(before)?.documents, &args.namespace, now),
        (None, None) => Baseline::Empty,
    };
    let mode = if args.prune { Mode::Prune } else { Mode::Apply };
    let (mut report, next) = plan_and_next(&inputs.documents, inputs.skipped, &baseline, mode, &args.namespace, now);
    if args.backend {
        let client = crate::runtime::client::connect(args.kubeconfig.as_deref()).await?;
        report.backend = live::read(client, &args.operator_namespace, &next, now).await;
    }
    let text = match args.output {
        crate::cli::PlanOutput::Text => render::text(&report, render::use_color(args.color)),
        crate::cli::PlanOutput::Markdown => render::markdown(&report),
        crate::cli::PlanOutput::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    print!("{text}");
    Ok(report.exit_code())
}
