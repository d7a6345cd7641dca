//! The end state a set of objects asks for, computed with the operator's
//! own pure evaluation (gate, policy, subjects) and names: per MongoTarget
//! each subject's role (the union of its bindings) and `$external` user;
//! per CosmosTarget the role definitions and assignments with their
//! deterministic names. Pure: no cluster, no database.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Serialize;

use super::objects::Objects;
use crate::api::{
    SubjectKey,
    conditions::{Outcome, Progress},
};
use crate::cosmos::{account_of, binding_status, definition_spec};
use crate::mongo::binding_controller as mongo_binding;
use crate::plan::cosmos::{AssignmentKey, DefinitionSpec, RoleKey};
use crate::plan::index::Grant;
use crate::plan::mongo::{MongoGrant, objects_for};

/// What the operator would decide for one binding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// `MongoTarget` or `CosmosTarget`, and its name.
    pub target: String,
    /// `Allowed`, or the reason the operator would put on Ready.
    pub reason: String,
    pub message: String,
    /// The operator would report the binding Stalled: denied or invalid.
    pub refused: bool,
}

impl Verdict {
    fn of(target: String, blocked: Option<Outcome>) -> Self {
        match blocked {
            None => Verdict {
                target,
                reason: ALLOWED.into(),
                message: "allowed by the target's policy".into(),
                refused: false,
            },
            Some(o) => Verdict {
                target,
                reason: o.reason.into(),
                message: o.message,
                refused: o.progress == Progress::Stalled,
            },
        }
    }
}

/// The verdict of a binding its target's policy lets through.
pub const ALLOWED: &str = "Allowed";

/// One subject's role on a MongoTarget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MongoRole {
    pub subject: SubjectKey,
    pub grant: MongoGrant,
    /// The `$external` user that holds the role, when the target
    /// authorises by user.
    pub user: Option<String>,
    /// Bindings (`namespace/name`) whose union this is.
    pub bindings: BTreeSet<String>,
}

/// One role assignment on a CosmosTarget's account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosmosAssignment {
    pub key: AssignmentKey,
    /// Fully qualified role definition id.
    pub role_definition_id: String,
    /// Bindings (`namespace/name`) that want it.
    pub bindings: BTreeSet<String>,
}

/// One custom role definition on a CosmosTarget's account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosmosDefinition {
    /// The CosmosRoleDefinition it implements.
    pub source: String,
    pub spec: DefinitionSpec,
}

/// What dbgrant would keep on one Cosmos DB account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CosmosAccount {
    /// By assignment name.
    pub assignments: BTreeMap<String, CosmosAssignment>,
    /// By definition name.
    pub definitions: BTreeMap<String, CosmosDefinition>,
}

/// The end state of a set of objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndState {
    /// Per binding (`Kind/namespace/name`).
    pub verdicts: BTreeMap<String, Verdict>,
    /// Per MongoTarget, each role by name (in `admin`).
    pub mongo: BTreeMap<String, BTreeMap<String, MongoRole>>,
    /// Per CosmosTarget.
    pub cosmos: BTreeMap<String, CosmosAccount>,
}

/// The end state `objects` ask for at `now`.
pub fn end_state(objects: &Objects, now: Timestamp) -> EndState {
    let mut out = EndState::default();
    for name in objects.mongo_targets.keys() {
        out.mongo.insert(name.clone(), BTreeMap::new());
    }
    for (key, b) in &objects.mongo_bindings {
        let target_name = &b.spec.target_ref.name;
        let target = objects.mongo_targets.get(target_name);
        let eval = mongo_binding::evaluate(b, target, now);
        let shown = format!("MongoTarget {target_name}");
        out.verdicts.insert(format!("MongoRoleBinding/{key}"), Verdict::of(shown, eval.blocked));
        let (Some(c), Some(t)) = (eval.contribution, target) else { continue };
        let roles = out.mongo.entry(target_name.clone()).or_default();
        for s in c.subjects {
            // evaluate() admits only subjects with objects on the target.
            let Ok(objects) = objects_for(&t.spec.oidc, &s) else { continue };
            let role = roles.entry(objects.role).or_insert_with(|| MongoRole {
                subject: s.clone(),
                grant: MongoGrant::default(),
                user: objects.user,
                bindings: BTreeSet::new(),
            });
            role.grant.merge(&c.grant);
            role.bindings.insert(key.clone());
        }
    }
    for (name, t) in &objects.cosmos_targets {
        let account = account_of(t);
        let mut state = CosmosAccount::default();
        for (source, d) in objects
            .cosmos_definitions
            .iter()
            .filter(|(_, d)| &d.spec.target_ref.name == name && d.metadata.deletion_timestamp.is_none())
        {
            let spec = definition_spec(&d.spec.role_name, &d.spec.data_actions, &d.spec.assignable_scopes);
            state
                .definitions
                .insert(account.definition_name(source), CosmosDefinition { source: source.clone(), spec });
        }
        out.cosmos.insert(name.clone(), state);
    }
    for (key, b) in &objects.cosmos_bindings {
        let target_name = &b.spec.target_ref.name;
        let target = objects.cosmos_targets.get(target_name);
        let definition = b.spec.role_definition.name.as_ref().and_then(|n| objects.cosmos_definitions.get(n));
        let eval = binding_status::evaluate(b, target, definition, now, false);
        let shown = format!("CosmosTarget {target_name}");
        out.verdicts.insert(format!("CosmosRoleBinding/{key}"), Verdict::of(shown, eval.blocked));
        let (Some(c), Some(t)) = (eval.contribution, target) else { continue };
        let account = account_of(t);
        let state = out.cosmos.entry(target_name.clone()).or_default();
        for s in &c.subjects {
            for k in c.grant.keys(&s.id) {
                let definition_name = match &k.role {
                    RoleKey::BuiltIn(r) => r.definition_name().to_string(),
                    RoleKey::Custom(n) => account.definition_name(n),
                };
                let name = account.assignment_name(&k.principal_id, &k.scope, &k.role);
                let a = state.assignments.entry(name).or_insert_with(|| CosmosAssignment {
                    key: k.clone(),
                    role_definition_id: account.definition_id(&definition_name),
                    bindings: BTreeSet::new(),
                });
                a.bindings.insert(key.clone());
            }
        }
    }
    out
}
