//! The planner: the writes that turn an account's actual state into what
//! dbgrant wants on it.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    AccountRef, Action, Actual, ActualAssignment, ActualDefinition, AssignmentKey, AssignmentState, Counts,
    DefinitionSpec, DefinitionState, Desired, Limits, Plan, RoleKey,
};

pub(super) struct Norm<'a> {
    actual: &'a ActualAssignment,
    name: String,
    principal: String,
    scope: Option<String>,
    definition: Option<String>,
    pub(super) owned: Option<AssignmentKey>,
}

pub(super) fn normalise<'a>(account: &AccountRef, desired: &Desired, a: &'a ActualAssignment) -> Norm<'a> {
    let name = a.name.to_ascii_lowercase();
    let principal = a.principal_id.to_ascii_lowercase();
    let scope = account.relative_scope(&a.scope);
    let definition = account.definition_name_of(&a.role_definition_id);
    let released = desired.released.contains(&name);
    let owned = scope.as_ref().filter(|_| !released).and_then(|s| {
        desired.known_roles.iter().find(|k| account.assignment_name(&principal, s, k) == name).map(|k| AssignmentKey {
            principal_id: principal.clone(),
            role: k.clone(),
            scope: s.clone(),
        })
    });
    Norm { actual: a, name, principal, scope, definition, owned }
}

fn same_definition(account: &AccountRef, actual: &ActualDefinition, want: &DefinitionSpec) -> bool {
    let lower = |v: &mut dyn Iterator<Item = &String>| v.map(|s| s.to_ascii_lowercase()).collect::<BTreeSet<_>>();
    let want_scopes: BTreeSet<String> =
        if want.assignable_scopes.is_empty() { [String::new()].into() } else { want.assignable_scopes.clone() };
    let have_scopes: BTreeSet<String> =
        actual.assignable_scopes.iter().map(|s| account.relative_scope(s).unwrap_or_else(|| format!("?{s}"))).collect();
    actual.role_name == want.role_name
        && lower(&mut actual.data_actions.iter()) == lower(&mut want.data_actions.iter())
        && have_scopes == want_scopes
}

/// Plan the writes that make `actual` match `desired` on `account`.
pub fn plan(account: &AccountRef, desired: &Desired, actual: &Actual, limits: &Limits) -> Plan {
    let mut p = Plan::default();

    // --- Definitions: create/update what CosmosRoleDefinitions declare. ---
    let actual_defs: BTreeMap<String, &ActualDefinition> =
        actual.definitions.iter().map(|d| (d.name.to_ascii_lowercase(), d)).collect();
    let mut customs = actual.definitions.iter().filter(|d| !d.is_built_in()).count();
    let mut available: BTreeMap<String, String> = BTreeMap::new();
    let mut def_puts = Vec::new();
    let mut role_names_taken: BTreeMap<String, String> =
        actual.definitions.iter().map(|d| (d.role_name.to_ascii_lowercase(), d.name.to_ascii_lowercase())).collect();
    for (source, spec) in &desired.definitions {
        let name = account.definition_name(source);
        let existing = actual_defs.get(&name);
        if desired.pending.contains(&name) {
            if existing.is_some() {
                available.insert(source.clone(), name.clone());
            }
            p.definitions.insert(source.clone(), DefinitionState::Pending { name });
            continue;
        }
        if let Some(other) = role_names_taken.get(&spec.role_name.to_ascii_lowercase())
            && other != &name
        {
            p.definitions.insert(source.clone(), DefinitionState::Conflict { with: other.clone() });
            if existing.is_some() {
                available.insert(source.clone(), name.clone());
            }
            continue;
        }
        let scopes: Vec<String> = if spec.assignable_scopes.is_empty() {
            vec![account.id().to_string()]
        } else {
            spec.assignable_scopes.iter().map(|s| account.scope(s)).collect()
        };
        let put = |create| Action::PutDefinition {
            name: name.clone(),
            source: source.clone(),
            role_name: spec.role_name.clone(),
            data_actions: spec.data_actions.iter().cloned().collect(),
            assignable_scopes: scopes.clone(),
            create,
        };
        // Drift: what was in place as declared is now different or gone. A
        // definition whose CosmosRoleDefinition changed is an update, not
        // drift; one never seen in place is a first application.
        let previous = desired.previous.definitions.get(&name);
        match existing {
            Some(have) => {
                if !same_definition(account, have, spec) {
                    if previous == Some(spec) {
                        p.drifted.push(name.clone());
                    }
                    def_puts.push(put(false));
                }
            }
            None if customs >= limits.definitions => {
                p.definitions.insert(source.clone(), DefinitionState::LimitExceeded);
                continue;
            }
            None => {
                if previous.is_some() {
                    p.drifted.push(name.clone());
                }
                customs += 1;
                def_puts.push(put(true));
            }
        }
        role_names_taken.insert(spec.role_name.to_ascii_lowercase(), name.clone());
        available.insert(source.clone(), name.clone());
        p.definitions.insert(source.clone(), DefinitionState::Managed { name });
    }

    // --- Assignments: what exists, what is ours. ---
    let norms: Vec<Norm<'_>> = actual.assignments.iter().map(|a| normalise(account, desired, a)).collect();
    let by_name: BTreeMap<&str, usize> = norms.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    let owned_by_key: BTreeMap<&AssignmentKey, usize> =
        norms.iter().enumerate().filter_map(|(i, n)| n.owned.as_ref().map(|k| (k, i))).collect();
    let mut foreign: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for (i, n) in norms.iter().enumerate() {
        if n.owned.is_none()
            && let (Some(s), Some(d)) = (&n.scope, &n.definition)
        {
            foreign.entry((n.principal.as_str(), d.as_str(), s.as_str())).or_insert(i);
        }
    }

    let put_assignment = |name: &str, key: &AssignmentKey, role_definition_id, create| Action::PutAssignment {
        name: name.to_string(),
        key: key.clone(),
        principal_id: key.principal_id.clone(),
        role_definition_id,
        scope: account.scope(&key.scope),
        create,
    };
    let mut kept: BTreeSet<usize> = BTreeSet::new();
    let mut updates = Vec::new();
    // Creates wait for capacity: key -> (name, definition id).
    let mut creates: BTreeMap<&AssignmentKey, (String, String)> = BTreeMap::new();
    for key in desired.assignments.keys() {
        let definition = match &key.role {
            RoleKey::BuiltIn(r) => Some(r.definition_name().to_string()),
            RoleKey::Custom(n) => available.get(n).cloned(),
        };
        let owned = owned_by_key.get(key).copied();
        if let Some(i) = owned {
            kept.insert(i);
        }
        let Some(definition) = definition else {
            p.assignments.insert(key.clone(), AssignmentState::RoleUnavailable);
            continue;
        };
        let name = account.assignment_name(&key.principal_id, &key.scope, &key.role);
        // A released name that is gone waits until the caller has dropped
        // it from the list, so a new assignment is never born unmanaged.
        if desired.pending.contains(&name) || (desired.released.contains(&name) && !by_name.contains_key(name.as_str()))
        {
            p.assignments.insert(key.clone(), AssignmentState::Pending { name });
            continue;
        }
        let role_definition_id = account.definition_id(&definition);
        if let Some(i) = owned {
            if norms[i].definition.as_deref() != Some(definition.as_str()) {
                // dbgrant's name, another definition: repointed out of band.
                p.drifted.push(name.clone());
                updates.push(put_assignment(&name, key, role_definition_id, false));
            }
            p.assignments.insert(key.clone(), AssignmentState::Managed { name });
        } else if let Some(&i) = foreign.get(&(key.principal_id.as_str(), definition.as_str(), key.scope.as_str())) {
            p.assignments.insert(key.clone(), AssignmentState::PreExisting { name: norms[i].actual.name.clone() });
        } else if by_name.contains_key(name.as_str()) {
            p.assignments.insert(key.clone(), AssignmentState::Conflict { name });
        } else {
            creates.insert(key, (name, role_definition_id));
        }
    }

    // --- Revocations: dbgrant's assignments no binding wants. ---
    let mut deletes = Vec::new();
    for (i, n) in norms.iter().enumerate() {
        let Some(key) = &n.owned else { continue };
        if kept.contains(&i) || desired.pending.contains(&n.name) {
            continue;
        }
        deletes.push(Action::DeleteAssignment { name: n.actual.name.clone(), key: key.clone() });
    }
    p.stale_released = desired.released.iter().filter(|r| !by_name.contains_key(r.as_str())).cloned().collect();
    p.ours.extend(norms.iter().filter(|n| n.owned.is_some()).map(|n| n.name.clone()));

    // --- Capacity: admit whole bindings, oldest first. ---
    let mut total = actual.assignments.len().saturating_sub(deletes.len());
    let mut order: Vec<&String> = desired.binding_priority.iter().collect();
    let listed: BTreeSet<&String> = order.iter().copied().collect();
    let mut rest: BTreeSet<&String> = desired.assignments.values().flatten().filter(|b| !listed.contains(b)).collect();
    order.extend(std::mem::take(&mut rest));
    let mut wants: BTreeMap<&String, Vec<&AssignmentKey>> = BTreeMap::new();
    for key in creates.keys() {
        for b in &desired.assignments[*key] {
            wants.entry(b).or_default().push(key);
        }
    }
    // Admitted keys with their rank: creates are written in this order, so
    // the oldest bindings' assignments land first.
    let mut admitted: BTreeMap<&AssignmentKey, usize> = BTreeMap::new();
    for b in order {
        let needed: Vec<&AssignmentKey> =
            wants.get(b).into_iter().flatten().copied().filter(|k| !admitted.contains_key(k)).collect();
        if needed.is_empty() {
            continue;
        }
        if total + needed.len() <= limits.assignments {
            total += needed.len();
            for k in needed {
                let rank = admitted.len();
                admitted.insert(k, rank);
            }
        } else {
            p.refused.insert(
                b.clone(),
                format!(
                    "needs {} new role assignment(s) but the account would have {} of at most {}; nothing new was applied for this binding",
                    needed.len(),
                    total + needed.len(),
                    limits.assignments
                ),
            );
        }
    }
    let mut ranked_puts = Vec::new();
    for (key, (name, role_definition_id)) in creates {
        if let Some(rank) = admitted.get(key) {
            // Missing although it was in place: deleted out of band.
            if desired.previous.assignments.contains(&name) {
                p.drifted.push(name.clone());
            }
            ranked_puts.push((*rank, put_assignment(&name, key, role_definition_id, true)));
            p.assignments.insert(key.clone(), AssignmentState::Managed { name });
        } else {
            p.assignments.insert(key.clone(), AssignmentState::LimitExceeded);
        }
    }
    ranked_puts.sort_by_key(|(rank, _)| *rank);
    updates.sort_by(|a, b| a.name().cmp(b.name()));
    let puts: Vec<Action> = ranked_puts.into_iter().map(|(_, a)| a).chain(updates).collect();

    // --- Definitions no CosmosRoleDefinition wants, once unused. ---
    let ours_by_name: BTreeMap<String, &String> =
        desired.known_definitions.iter().map(|n| (account.definition_name(n), n)).collect();
    let removed: BTreeSet<&str> = deletes.iter().map(Action::name).collect();
    let mut def_deletes = Vec::new();
    for d in &actual.definitions {
        let lname = d.name.to_ascii_lowercase();
        let Some(source) = ours_by_name.get(&lname) else { continue };
        if !d.is_built_in() {
            p.ours.insert(lname.clone());
        }
        if desired.definitions.contains_key(*source) || d.is_built_in() {
            continue;
        }
        if desired.pending.contains(&lname) {
            p.definitions.insert((*source).clone(), DefinitionState::Pending { name: lname });
            continue;
        }
        let users = norms
            .iter()
            .filter(|n| n.definition.as_deref() == Some(lname.as_str()) && !removed.contains(n.actual.name.as_str()))
            .count();
        if users == 0 {
            def_deletes.push(Action::DeleteDefinition { name: d.name.clone(), source: (*source).clone() });
            p.definitions.insert((*source).clone(), DefinitionState::Absent);
        } else {
            p.definitions.insert((*source).clone(), DefinitionState::InUse { name: lname, by: users });
        }
    }
    for source in &desired.known_definitions {
        p.definitions.entry(source.clone()).or_insert(DefinitionState::Absent);
    }

    p.counts = Counts { assignments: total, managed_assignments: kept.len() + admitted.len() };
    // Deterministic order: by name, except new assignments, which go
    // oldest binding first (above).
    for group in [&mut def_puts, &mut deletes, &mut def_deletes] {
        group.sort_by(|a, b| a.name().cmp(b.name()));
    }
    // Revocations first (see the module docs).
    p.actions = deletes.into_iter().chain(def_puts).chain(puts).chain(def_deletes).collect();
    p
}
