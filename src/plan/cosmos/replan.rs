//! Planning again within one pass: the account as the pass's writes left
//! it, and one plan carried on by the next.
//!
//! A pass reads the account once (two LISTs) and writes its plan, one
//! operation at a time. Bindings that change while it writes can be
//! planned for in the same pass, against what the LIST showed plus what
//! the pass has written since, instead of in a new pass that reads the
//! account again ([`Actual::record`], [`Plan::then`]). What the planner
//! knows is then exactly what a single longer pass would know.

use super::{Action, Actual, ActualAssignment, ActualDefinition, Plan};

impl Actual {
    /// The account after `action` went through, as the next LIST would show
    /// it: a PUT creates or replaces the object of that name, a DELETE
    /// removes it (ARM's names compare case-insensitively).
    pub fn record(&mut self, action: &Action) {
        match action {
            Action::PutDefinition { name, role_name, data_actions, assignable_scopes, .. } => {
                self.definitions.retain(|d| !d.name.eq_ignore_ascii_case(name));
                self.definitions.push(ActualDefinition {
                    name: name.clone(),
                    role_name: role_name.clone(),
                    built_in: false,
                    data_actions: data_actions.clone(),
                    assignable_scopes: assignable_scopes.clone(),
                });
            }
            Action::DeleteDefinition { name, .. } => self.definitions.retain(|d| !d.name.eq_ignore_ascii_case(name)),
            Action::PutAssignment { name, principal_id, role_definition_id, scope, .. } => {
                self.assignments.retain(|a| !a.name.eq_ignore_ascii_case(name));
                self.assignments.push(ActualAssignment {
                    name: name.clone(),
                    principal_id: principal_id.clone(),
                    role_definition_id: role_definition_id.clone(),
                    scope: scope.clone(),
                });
            }
            Action::DeleteAssignment { name, .. } => self.assignments.retain(|a| !a.name.eq_ignore_ascii_case(name)),
        }
    }
}

impl Plan {
    /// This plan, carried out, followed by `next`, which was planned on the
    /// account as this one left it: `next`'s view of every assignment and
    /// definition (it is the newer), the writes of both in the order they
    /// ran, and what either found drifted or stale.
    pub fn then(self, mut next: Plan) -> Plan {
        let mut actions = self.actions;
        actions.append(&mut next.actions);
        next.actions = actions;
        for (mine, theirs) in [(self.drifted, &mut next.drifted), (self.stale_released, &mut next.stale_released)] {
            let added: Vec<String> = theirs.drain(..).filter(|n| !mine.contains(n)).collect();
            *theirs = mine;
            theirs.extend(added);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AccountRef, AssignmentKey, AssignmentState, Desired, Limits, RoleKey, plan};
    use super::*;
    use crate::api::BuiltInCosmosRole;

    const P1: &str = "11111111-1111-1111-1111-111111111111";
    const P2: &str = "22222222-2222-2222-2222-222222222222";

    fn account() -> AccountRef {
        AccountRef::new("c9e6de92-9aba-45b0-85a1-5decf672d856", "rg", "acct")
    }

    fn wants(bindings: &[(&str, &str, &str)]) -> Desired {
        let mut d = Desired { known_roles: RoleKey::built_ins().into_iter().collect(), ..Default::default() };
        for (binding, principal, scope) in bindings {
            let key = AssignmentKey {
                principal_id: principal.to_string(),
                role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
                scope: scope.to_string(),
            };
            d.assignments.entry(key).or_default().insert(binding.to_string());
        }
        d
    }

    #[test]
    fn planning_again_on_the_recorded_account_writes_only_what_is_new() {
        let (a, limits) = (account(), Limits::default());
        let first = wants(&[("ns/b1", P1, "/dbs/orders")]);
        let mut actual = Actual::default();
        let p1 = plan(&a, &first, &actual, &limits);
        assert_eq!(p1.actions.len(), 1);
        for action in &p1.actions {
            actual.record(action);
        }
        assert!(plan(&a, &first, &actual, &limits).actions.is_empty(), "what was written is seen in place");

        // Two bindings arrive while the pass writes: one shares the
        // assignment, one needs a new one.
        let second = wants(&[("ns/b1", P1, "/dbs/orders"), ("ns/b2", P1, "/dbs/orders"), ("ns/b3", P2, "/dbs/orders")]);
        let p2 = plan(&a, &second, &actual, &limits);
        let names: Vec<&str> = p2.actions.iter().map(Action::name).collect();
        assert_eq!(names.len(), 1, "only the new principal's assignment: {names:?}");
        assert!(p2.ours.contains(&p1.actions[0].name().to_ascii_lowercase()), "the first write counts as ours");

        let joined = p1.clone().then(p2.clone());
        assert_eq!(joined.actions, [p1.actions.clone(), p2.actions.clone()].concat(), "both rounds' writes, in order");
        assert_eq!(joined.assignments, p2.assignments, "the newer view of every assignment");
        assert!(joined.assignments.values().all(|s| matches!(s, AssignmentState::Managed { .. })));
    }

    #[test]
    fn a_delete_and_a_replacing_put_are_recorded_case_insensitively() {
        let mut actual = Actual::default();
        let put = |name: &str, role: &str| Action::PutAssignment {
            name: name.into(),
            key: AssignmentKey { principal_id: P1.into(), role: RoleKey::Custom("r".into()), scope: String::new() },
            principal_id: P1.into(),
            role_definition_id: role.into(),
            scope: "/s".into(),
            create: true,
        };
        actual.record(&put("ABC", "/d/1"));
        actual.record(&put("abc", "/d/2"));
        assert_eq!(actual.assignments.len(), 1);
        assert_eq!(actual.assignments[0].role_definition_id, "/d/2");
        let key = actual.assignments[0].name.clone();
        actual.record(&Action::DeleteAssignment {
            name: key.to_ascii_uppercase(),
            key: AssignmentKey { principal_id: P1.into(), role: RoleKey::Custom("r".into()), scope: String::new() },
        });
        assert!(actual.assignments.is_empty());

        actual.record(&Action::PutDefinition {
            name: "Def".into(),
            source: "r".into(),
            role_name: "R".into(),
            data_actions: vec!["x".into()],
            assignable_scopes: vec!["/s".into()],
            create: true,
        });
        assert!(!actual.definitions[0].is_built_in());
        actual.record(&Action::DeleteDefinition { name: "dEF".into(), source: "r".into() });
        assert!(actual.definitions.is_empty());
    }

    #[test]
    fn then_keeps_each_drifted_and_stale_name_once() {
        let first = Plan { drifted: vec!["a".into()], stale_released: vec!["x".into()], ..Default::default() };
        let next =
            Plan { drifted: vec!["a".into(), "b".into()], stale_released: vec!["y".into()], ..Default::default() };
        let joined = first.then(next);
        assert_eq!(joined.drifted, ["a", "b"]);
        assert_eq!(joined.stale_released, ["x", "y"]);
    }
}
