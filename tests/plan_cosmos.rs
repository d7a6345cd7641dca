//! Pure-logic tests of the Cosmos DB planner (`dbgrant::plan::cosmos`):
//! its deterministic names, the plan it makes from a desired and an actual
//! account, and its drift record. No I/O; the property tests at the end
//! check ownership, limits, convergence and idempotence on random accounts.

use std::collections::BTreeSet;

use dbgrant::api::*;
use dbgrant::plan::cosmos::*;
use proptest::prelude::*;
use uuid::Uuid;

const P1: &str = "11111111-1111-1111-1111-111111111111";
const P2: &str = "22222222-2222-2222-2222-222222222222";
const P3: &str = "33333333-3333-3333-3333-333333333333";

fn account() -> AccountRef {
    AccountRef::new("C9E6DE92-9ABA-45B0-85A1-5DECF672D856", "rg-Catalog", "acct")
}

fn reader() -> RoleKey {
    RoleKey::BuiltIn(BuiltInCosmosRole::DataReader)
}

fn contributor() -> RoleKey {
    RoleKey::BuiltIn(BuiltInCosmosRole::DataContributor)
}

fn key(p: &str, role: RoleKey, scope: &str) -> AssignmentKey {
    AssignmentKey { principal_id: p.into(), role, scope: scope.into() }
}

fn desired(wants: &[(&str, AssignmentKey)]) -> Desired {
    let mut d = Desired { known_roles: RoleKey::built_ins().into_iter().collect(), ..Default::default() };
    for (b, k) in wants {
        d.assignments.entry(k.clone()).or_default().insert(b.to_string());
    }
    d
}

fn with_custom(mut d: Desired, source: &str, role_name: &str) -> Desired {
    d.known_roles.insert(RoleKey::Custom(source.into()));
    d.known_definitions.insert(source.into());
    d.definitions.insert(
        source.into(),
        DefinitionSpec {
            role_name: role_name.into(),
            data_actions: ["Microsoft.DocumentDB/databaseAccounts/readMetadata".to_string()].into(),
            assignable_scopes: BTreeSet::new(),
        },
    );
    d
}

fn built_in_defs() -> Vec<ActualDefinition> {
    [
        ("00000000-0000-0000-0000-000000000001", "Cosmos DB Built-in Data Reader"),
        ("00000000-0000-0000-0000-000000000002", "Cosmos DB Built-in Data Contributor"),
    ]
    .iter()
    .map(|(n, r)| ActualDefinition {
        name: n.to_string(),
        role_name: r.to_string(),
        built_in: true,
        data_actions: vec![],
        assignable_scopes: vec![],
    })
    .collect()
}

/// Apply a plan the way ARM would (`Actual::record`), checking the order
/// ARM requires: no definition deleted while in use, no assignment before
/// its definition, no create of a name that exists.
fn apply(account: &AccountRef, actual: &mut Actual, plan: &Plan) {
    for a in &plan.actions {
        match a {
            Action::DeleteDefinition { name, .. } => assert!(
                !actual
                    .assignments
                    .iter()
                    .any(|x| account.definition_name_of(&x.role_definition_id).as_deref() == Some(name.as_str())),
                "definition {name} deleted while in use"
            ),
            Action::PutAssignment { name, role_definition_id, create, .. } => {
                let def = account.definition_name_of(role_definition_id).unwrap();
                assert!(
                    actual.definitions.iter().any(|d| d.name.eq_ignore_ascii_case(&def))
                        || is_built_in_definition(&def),
                    "assignment {name} written before its definition"
                );
                if *create {
                    assert!(!actual.assignments.iter().any(|x| &x.name == name), "duplicate create {name}");
                }
            }
            Action::PutDefinition { .. } | Action::DeleteAssignment { .. } => {}
        }
        actual.record(a);
    }
}

fn foreign(name: &str, p: &str, def: &str, scope: &str) -> ActualAssignment {
    let a = account();
    ActualAssignment {
        name: name.into(),
        principal_id: p.into(),
        role_definition_id: a.definition_id(def),
        scope: a.scope(scope),
    }
}

#[test]
fn names_are_stable_case_insensitive_and_distinct_per_component() {
    let a = account();
    let upper = AccountRef::new("c9e6de92-9aba-45b0-85a1-5decf672d856", "RG-CATALOG", "acct");
    let n = a.assignment_name(P1, "/dbs/d", &reader());
    assert_eq!(n, upper.assignment_name(&P1.to_uppercase(), "/dbs/d", &reader()));
    assert!(Uuid::parse_str(&n).is_ok());
    assert_ne!(n, a.assignment_name(P2, "/dbs/d", &reader()));
    assert_ne!(n, a.assignment_name(P1, "/dbs/D", &reader()), "database names are case-sensitive");
    assert_ne!(n, a.assignment_name(P1, "/dbs/d", &contributor()));
    assert_ne!(n, a.assignment_name(P1, "", &reader()));
    assert_ne!(a.definition_name("x"), a.definition_name("y"));
}

#[test]
fn scopes_and_definition_ids_normalise() {
    let a = account();
    let id = a.id().to_string();
    assert_eq!(a.relative_scope(&id), Some(String::new()));
    assert_eq!(a.relative_scope(&format!("{id}/")), Some(String::new()));
    assert_eq!(a.relative_scope(&id.to_uppercase()), Some(String::new()));
    assert_eq!(a.relative_scope(&format!("{id}/DBS/Orders/Colls/Items")), Some("/dbs/Orders/colls/Items".into()));
    assert_eq!(a.relative_scope(&format!("{id}/dbs/")), None);
    assert_eq!(a.relative_scope(&format!("{id}x/dbs/d")), None);
    assert_eq!(a.relative_scope("/subscriptions/other"), None);
    assert_eq!(a.relative_scope("é"), None);
    assert_eq!(
        a.definition_name_of(&a.definition_id("00000000-0000-0000-0000-00000000000A").to_lowercase()),
        Some("00000000-0000-0000-0000-00000000000a".into())
    );
    assert_eq!(a.definition_name_of("/subscriptions/x/sqlRoleDefinitions/1"), None);
}

#[test]
fn creates_then_steady_state_plans_nothing() {
    let a = account();
    let d = desired(&[("ns/a", key(P1, reader(), "/dbs/orders")), ("ns/a", key(P2, reader(), "/dbs/orders"))]);
    let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
    let p = plan(&a, &d, &actual, &Limits::default());
    assert_eq!(p.actions.len(), 2);
    assert!(p.actions.iter().all(|x| matches!(x, Action::PutAssignment { create: true, .. })));
    apply(&a, &mut actual, &p);
    let again = plan(&a, &d, &actual, &Limits::default());
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    assert_eq!(again.counts.managed_assignments, 2);
    assert!(again.assignments.values().all(|s| matches!(s, AssignmentState::Managed { .. })));
}

#[test]
fn shared_assignment_is_one_and_stays_while_one_binding_remains() {
    let a = account();
    let k = key(P1, reader(), "/dbs/orders");
    let both = desired(&[("ns/a", k.clone()), ("ns/b", k.clone())]);
    let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
    let p = plan(&a, &both, &actual, &Limits::default());
    assert_eq!(p.actions.len(), 1);
    apply(&a, &mut actual, &p);
    let one = desired(&[("ns/b", k.clone())]);
    assert!(plan(&a, &one, &actual, &Limits::default()).actions.is_empty());
    let none = desired(&[]);
    let p = plan(&a, &none, &actual, &Limits::default());
    assert!(matches!(p.actions.as_slice(), [Action::DeleteAssignment { .. }]));
}

#[test]
fn scope_change_deletes_old_before_creating_new() {
    let a = account();
    let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
    let before = desired(&[("ns/a", key(P1, reader(), "/dbs/orders"))]);
    let first = plan(&a, &before, &actual, &Limits::default());
    apply(&a, &mut actual, &first);
    let after = desired(&[("ns/a", key(P1, reader(), "/dbs/billing"))]);
    let p = plan(&a, &after, &actual, &Limits::default());
    assert!(
        matches!(p.actions.as_slice(), [Action::DeleteAssignment { .. }, Action::PutAssignment { create: true, .. }]),
        "{:?}",
        p.actions
    );
}

#[test]
fn definition_id_change_updates_in_place() {
    let a = account();
    let k = key(P1, reader(), "");
    let name = a.assignment_name(P1, "", &reader());
    // Ours by name, but someone pointed it at Data Contributor.
    let drifted = foreign(&name, P1, "00000000-0000-0000-0000-000000000002", "");
    let actual = Actual { definitions: built_in_defs(), assignments: vec![drifted] };
    let p = plan(&a, &desired(&[("ns/a", k)]), &actual, &Limits::default());
    match p.actions.as_slice() {
        [Action::PutAssignment { name: n, create: false, role_definition_id, .. }] => {
            assert_eq!(n, &name);
            assert!(role_definition_id.ends_with("000000000001"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.drifted.len(), 1);
}

#[test]
fn identical_foreign_assignment_satisfies_and_is_never_touched() {
    let a = account();
    let k = key(P1, reader(), "/dbs/orders");
    let theirs = foreign(
        "9d0c0c0c-0000-0000-0000-000000000001",
        &P1.to_uppercase(),
        "00000000-0000-0000-0000-000000000001",
        "/dbs/orders",
    );
    let actual = Actual { definitions: built_in_defs(), assignments: vec![theirs.clone()] };
    let p = plan(&a, &desired(&[("ns/a", k.clone())]), &actual, &Limits::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.assignments[&k], AssignmentState::PreExisting { name: theirs.name.clone() });
    assert_eq!(p.counts.managed_assignments, 0);
    // No binding wants it any more: still not ours to delete.
    assert!(plan(&a, &desired(&[]), &actual, &Limits::default()).actions.is_empty());
}

#[test]
fn foreign_assignment_with_our_name_is_a_conflict() {
    let a = account();
    let k = key(P1, reader(), "/dbs/orders");
    let name = a.assignment_name(P1, "/dbs/orders", &reader());
    // Same name, another principal: nobody deriving names created this.
    let squatter = foreign(&name, P2, "00000000-0000-0000-0000-000000000002", "/dbs/orders");
    let actual = Actual { definitions: built_in_defs(), assignments: vec![squatter] };
    let p = plan(&a, &desired(&[("ns/a", k.clone())]), &actual, &Limits::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.assignments[&k], AssignmentState::Conflict { name });
    assert!(plan(&a, &desired(&[]), &actual, &Limits::default()).actions.is_empty());
}

#[test]
fn released_assignments_are_left_alone_and_stale_ones_not_recreated_until_dropped() {
    let a = account();
    let k = key(P1, reader(), "/dbs/orders");
    let name = a.assignment_name(P1, "/dbs/orders", &reader());
    let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
    let first = plan(&a, &desired(&[("ns/a", k.clone())]), &actual, &Limits::default());
    apply(&a, &mut actual, &first);
    // Retain: released instead of deleted; it is foreign from now on.
    let mut gone = desired(&[]);
    gone.released.insert(name.clone());
    let p = plan(&a, &gone, &actual, &Limits::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(p.stale_released.is_empty());
    assert_eq!(p.counts.managed_assignments, 0);
    // A new binding wanting the same access is satisfied by it, unmanaged.
    let mut again = desired(&[("ns/b", k.clone())]);
    again.released.insert(name.clone());
    let p = plan(&a, &again, &actual, &Limits::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.assignments[&k], AssignmentState::PreExisting { name: name.clone() });
    // Someone deletes it: the name is stale; it is not re-created under
    // the released name until the list drops it.
    actual.assignments.clear();
    let p = plan(&a, &again, &actual, &Limits::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.stale_released, vec![name.clone()]);
    let p = plan(&a, &desired(&[("ns/b", k.clone())]), &actual, &Limits::default());
    assert!(matches!(p.actions.as_slice(), [Action::PutAssignment { create: true, .. }]));
}

#[test]
fn new_assignments_are_written_oldest_binding_first() {
    let a = account();
    let actual = Actual { definitions: built_in_defs(), ..Default::default() };
    // The bindings' principals sort the other way round from their age.
    let mut d = desired(&[
        ("ns/young", key(P1, reader(), "/dbs/a")),
        ("ns/middle", key(P2, reader(), "/dbs/a")),
        ("ns/old", key(P3, reader(), "/dbs/a")),
        ("ns/old", key(P3, reader(), "/dbs/b")),
    ]);
    d.binding_priority = vec!["ns/old".into(), "ns/middle".into(), "ns/young".into()];
    let p = plan(&a, &d, &actual, &Limits::default());
    let principals: Vec<&str> = p
        .actions
        .iter()
        .map(|x| match x {
            Action::PutAssignment { key, .. } => key.principal_id.as_str(),
            other => panic!("only creates expected: {other:?}"),
        })
        .collect();
    assert_eq!(principals, [P3, P3, P2, P1]);
    // The same inputs plan the same order.
    assert_eq!(plan(&a, &d, &actual, &Limits::default()).actions, p.actions);
}

#[test]
fn limits_refuse_whole_bindings_before_anything_is_written() {
    let a = account();
    let limits = Limits { assignments: 3, definitions: 1 };
    let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
    actual.assignments.push(foreign("f0", P2, "00000000-0000-0000-0000-000000000001", ""));
    let mut d = desired(&[
        ("ns/old", key(P1, reader(), "/dbs/a")),
        ("ns/new", key(P1, reader(), "/dbs/b")),
        ("ns/new", key(P1, reader(), "/dbs/c")),
        ("ns/new", key(P1, reader(), "/dbs/d")),
    ]);
    d.binding_priority = vec!["ns/old".into(), "ns/new".into()];
    let p = plan(&a, &d, &actual, &limits);
    assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
    assert!(p.refused.contains_key("ns/new"));
    assert!(!p.refused.contains_key("ns/old"));
    assert_eq!(p.assignments[&key(P1, reader(), "/dbs/b")], AssignmentState::LimitExceeded);
    assert!(p.refused["ns/new"].contains("at most 3"));
    assert!(p.counts.assignments <= 3);

    // Deletes free capacity in the same plan.
    let mut with_old = actual.clone();
    let stale = key(P2, reader(), "/dbs/z");
    with_old.assignments.push(foreign(
        &a.assignment_name(P2, "/dbs/z", &reader()),
        P2,
        "00000000-0000-0000-0000-000000000001",
        "/dbs/z",
    ));
    let d2 = desired(&[("ns/x", key(P1, reader(), "/dbs/a")), ("ns/x", key(P1, reader(), "/dbs/b"))]);
    let p = plan(&a, &d2, &with_old, &limits);
    assert!(p.refused.is_empty(), "{:?}", p.refused);
    assert!(p.actions.iter().any(|x| matches!(x, Action::DeleteAssignment { key, .. } if key == &stale)));

    // The definition limit.
    let d3 = with_custom(with_custom(desired(&[]), "one", "One"), "two", "Two");
    let p = plan(&a, &d3, &actual, &limits);
    assert_eq!(p.definitions["one"], DefinitionState::Managed { name: a.definition_name("one") });
    assert_eq!(p.definitions["two"], DefinitionState::LimitExceeded);
}

#[test]
fn revocations_come_first_and_ours_lists_only_dbgrants_objects() {
    let a = account();
    let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
    let d = with_custom(desired(&[("ns/a", key(P1, reader(), "/dbs/orders"))]), "items", "Items");
    let first = plan(&a, &d, &actual, &Limits::default());
    apply(&a, &mut actual, &first);
    let theirs = foreign("f0f0f0f0-0000-4000-8000-000000000001", P2, "00000000-0000-0000-0000-000000000001", "");
    actual.assignments.push(theirs);
    let mine = a.assignment_name(P1, "/dbs/orders", &reader());
    let definition = a.definition_name("items");

    // ns/a goes, ns/b arrives with a new role: the delete runs first,
    // then the definition and the assignment that uses it.
    let custom = RoleKey::Custom("items2".into());
    let next = with_custom(
        with_custom(desired(&[("ns/b", key(P2, custom, "/dbs/x"))]), "items2", "Items 2"),
        "items",
        "Items",
    );
    let p = plan(&a, &next, &actual, &Limits::default());
    assert!(
        matches!(
            p.actions.as_slice(),
            [
                Action::DeleteAssignment { .. },
                Action::PutDefinition { create: true, .. },
                Action::PutAssignment { create: true, .. }
            ]
        ),
        "{:?}",
        p.actions
    );
    assert_eq!(p.ours, [mine.clone(), definition].into_iter().collect::<BTreeSet<_>>(), "never the foreign one");

    // A released name is no longer dbgrant's.
    let mut released = next.clone();
    released.released.insert(mine.clone());
    assert!(!plan(&a, &released, &actual, &Limits::default()).ours.contains(&mine));
}

#[test]
fn custom_definitions_come_before_their_assignments_and_go_after() {
    let a = account();
    let role = RoleKey::Custom("items-reader".into());
    let k = key(P1, role.clone(), "/dbs/orders");
    let d = with_custom(desired(&[("ns/a", k.clone())]), "items-reader", "Items Reader");
    let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
    let p = plan(&a, &d, &actual, &Limits::default());
    assert!(
        matches!(
            p.actions.as_slice(),
            [Action::PutDefinition { create: true, .. }, Action::PutAssignment { create: true, .. }]
        ),
        "{:?}",
        p.actions
    );
    apply(&a, &mut actual, &p);
    assert!(plan(&a, &d, &actual, &Limits::default()).actions.is_empty());

    // The CosmosRoleDefinition is being deleted: the binding no longer
    // wants the assignment; both go, assignment first.
    let mut gone = desired(&[]);
    gone.known_roles.insert(role.clone());
    gone.known_definitions.insert("items-reader".into());
    let p = plan(&a, &gone, &actual, &Limits::default());
    assert!(
        matches!(p.actions.as_slice(), [Action::DeleteAssignment { .. }, Action::DeleteDefinition { .. }]),
        "{:?}",
        p.actions
    );
    assert_eq!(p.definitions["items-reader"], DefinitionState::Absent);

    // An assignment dbgrant does not own still uses it: kept, reported.
    let mut used = actual.clone();
    used.assignments.push(foreign("f1", P2, &a.definition_name("items-reader"), ""));
    let p = plan(&a, &gone, &used, &Limits::default());
    assert!(!p.actions.iter().any(|x| matches!(x, Action::DeleteDefinition { .. })));
    assert!(matches!(p.definitions["items-reader"], DefinitionState::InUse { by: 1, .. }));
}

#[test]
fn definition_drift_updates_and_role_name_clash_is_a_conflict() {
    let a = account();
    let mut d = with_custom(desired(&[]), "r", "Reader Plus");
    let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
    let first = plan(&a, &d, &actual, &Limits::default());
    assert!(first.drifted.is_empty(), "a first application is not drift");
    apply(&a, &mut actual, &first);
    d.previous = first.observed(&d, |_| true);
    actual
        .definitions
        .last_mut()
        .unwrap()
        .data_actions
        .push("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/*".into());
    let p = plan(&a, &d, &actual, &Limits::default());
    assert!(matches!(p.actions.as_slice(), [Action::PutDefinition { create: false, .. }]));
    assert_eq!(p.drifted.len(), 1);

    let clash = Actual {
        definitions: vec![ActualDefinition {
            name: "someone-elses".into(),
            role_name: "reader plus".into(),
            built_in: false,
            data_actions: vec![],
            assignable_scopes: vec![],
        }],
        assignments: vec![],
    };
    let p = plan(&a, &d, &clash, &Limits::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.definitions["r"], DefinitionState::Conflict { with: "someone-elses".into() });
}

#[test]
fn drift_is_only_what_was_in_place_and_changed_out_of_band() {
    let a = account();
    let mine = key(P1, reader(), "/dbs/orders");
    let theirs_too = key(P2, reader(), "/dbs/orders");
    let mut d = with_custom(desired(&[("ns/a", mine.clone()), ("ns/b", theirs_too.clone())]), "r", "Reader Plus");
    // P2's access is granted by an identical assignment dbgrant does
    // not manage.
    let foreign_p2 = foreign("f-p2", P2, "00000000-0000-0000-0000-000000000001", "/dbs/orders");
    let mut actual = Actual { definitions: built_in_defs(), assignments: vec![foreign_p2] };

    // First application (say, the target just turned Ready): writes,
    // no drift.
    let first = plan(&a, &d, &actual, &Limits::default());
    assert_eq!(first.actions.len(), 2, "{:?}", first.actions);
    assert!(first.drifted.is_empty(), "{:?}", first.drifted);
    apply(&a, &mut actual, &first);
    d.previous = first.observed(&d, |_| true);
    let mine_name = a.assignment_name(P1, "/dbs/orders", &reader());
    let def_name = a.definition_name("r");
    assert!(d.previous.assignments.contains(&mine_name));
    assert!(!d.previous.assignments.iter().any(|n| n == "f-p2"), "foreign assignments are not dbgrant's record");
    assert!(d.previous.definitions.contains_key(&def_name));

    // dbgrant's assignment and definition deleted out of band, and the
    // foreign one too: restoring dbgrant's is drift; creating its own
    // for P2 is a first application.
    actual.assignments.clear();
    actual.definitions = built_in_defs();
    let p = plan(&a, &d, &actual, &Limits::default());
    let p2_name = a.assignment_name(P2, "/dbs/orders", &reader());
    assert!(p.actions.iter().any(|x| x.name() == p2_name));
    let mut drifted = p.drifted.clone();
    drifted.sort();
    let mut want = vec![mine_name.clone(), def_name.clone()];
    want.sort();
    assert_eq!(drifted, want);

    // A write that did not go through keeps the record: retried later,
    // it is still drift.
    let kept = p.observed(&d, |n| n != mine_name);
    assert!(kept.assignments.contains(&mine_name));
    assert!(kept.assignments.contains(&p2_name));
    apply(&a, &mut actual, &p);
    d.previous = p.observed(&d, |_| true);

    // The CosmosRoleDefinition's spec changes: an update, not drift.
    let mut changed = d.clone();
    changed.definitions.get_mut("r").unwrap().role_name = "Reader Plus Plus".into();
    let p = plan(&a, &changed, &actual, &Limits::default());
    assert!(matches!(p.actions.as_slice(), [Action::PutDefinition { create: false, .. }]), "{:?}", p.actions);
    assert!(p.drifted.is_empty(), "{:?}", p.drifted);

    // Nobody wants P1's assignment any more: collecting it is not drift.
    let mut fewer = d.clone();
    fewer.assignments.remove(&mine);
    let p = plan(&a, &fewer, &actual, &Limits::default());
    assert!(matches!(p.actions.as_slice(), [Action::DeleteAssignment { .. }]), "{:?}", p.actions);
    assert!(p.drifted.is_empty());

    // Steady state: nothing to write, nothing drifted.
    let p = plan(&a, &d, &actual, &Limits::default());
    assert!(p.actions.is_empty() && p.drifted.is_empty(), "{p:?}");
}

#[test]
fn pending_operations_are_not_reissued() {
    let a = account();
    let k = key(P1, reader(), "");
    let name = a.assignment_name(P1, "", &reader());
    let mut d = desired(&[("ns/a", k.clone())]);
    d.pending.insert(name.clone());
    let p = plan(&a, &d, &Actual::default(), &Limits::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.assignments[&k], AssignmentState::Pending { name });
}

#[test]
fn unavailable_custom_role_keeps_existing_and_creates_nothing() {
    let a = account();
    let role = RoleKey::Custom("x".into());
    let k = key(P1, role.clone(), "");
    let mut d = desired(&[("ns/a", k.clone())]);
    d.known_roles.insert(role.clone());
    let name = a.assignment_name(P1, "", &role);
    let actual =
        Actual { definitions: built_in_defs(), assignments: vec![foreign(&name, P1, &a.definition_name("x"), "")] };
    let p = plan(&a, &d, &actual, &Limits::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.assignments[&k], AssignmentState::RoleUnavailable);
}

proptest! {
    /// Convergence, ownership and limits over random sequences of
    /// desired states, with foreign assignments and out-of-band drift:
    /// after each applied plan the account holds exactly the wanted
    /// assignments (by dbgrant or an identical foreign one), foreign
    /// assignments are untouched, the limit holds, and planning again
    /// writes nothing.
    #[test]
    fn plans_converge_and_respect_ownership(
        steps in proptest::collection::vec(
            (
                proptest::collection::vec((0usize..3, 0usize..3, 0usize..4, 0usize..3), 0..10),
                proptest::collection::vec((0usize..3, 0usize..3, 0usize..3), 0..3),
                0usize..4,
            ),
            1..8,
        ),
        limit in 4usize..12,
    ) {
        const PRINCIPALS: [&str; 3] = [P1, P2, "33333333-3333-3333-3333-333333333333"];
        const SCOPES: [&str; 3] = ["", "/dbs/orders", "/dbs/orders/colls/items"];
        let roles = [reader(), contributor(), RoleKey::Custom("c1".into()), RoleKey::Custom("c2".into())];
        let a = account();
        let limits = Limits { assignments: limit, definitions: 2 };
        let mut actual = Actual { definitions: built_in_defs(), ..Default::default() };
        for (i, (wants, foreigns, drift)) in steps.iter().enumerate() {
            // Foreign assignments appear out of band (within the limit).
            for (j, (p, s, r)) in foreigns.iter().enumerate() {
                if actual.assignments.len() < limit {
                    let def = match r { 0 => "00000000-0000-0000-0000-000000000001".to_string(), 1 => "00000000-0000-0000-0000-000000000002".to_string(), _ => "ffffffff-0000-0000-0000-000000000000".to_string() };
                    actual.assignments.push(foreign(&format!("f-{i}-{j}"), PRINCIPALS[*p], &def, SCOPES[*s]));
                }
            }
            // Drift: delete or repoint one of dbgrant's assignments.
            if *drift > 0 && !actual.assignments.is_empty() {
                let idx = (i * 7 + drift) % actual.assignments.len();
                if actual.assignments[idx].name.starts_with("f-") {
                    // leave foreign ones alone
                } else if *drift == 1 {
                    actual.assignments.remove(idx);
                } else {
                    actual.assignments[idx].role_definition_id = a.definition_id("00000000-0000-0000-0000-000000000002");
                }
            }
            let mut d = desired(&[]);
            for (b, p, r, s) in wants {
                d.assignments.entry(key(PRINCIPALS[*p], roles[*r].clone(), SCOPES[*s])).or_default().insert(format!("ns/b{b}"));
            }
            d = with_custom(with_custom(d, "c1", "Custom One"), "c2", "Custom Two");
            d.binding_priority = (0..3).map(|b| format!("ns/b{b}")).collect();
            let foreign_before: Vec<ActualAssignment> = actual.assignments.iter().filter(|x| x.name.starts_with("f-")).cloned().collect();
            let p = plan(&a, &d, &actual, &limits);
            apply(&a, &mut actual, &p);

            // Ownership: foreign assignments untouched.
            for f in &foreign_before {
                prop_assert!(actual.assignments.contains(f), "foreign {f:?} touched");
            }
            // Limits.
            prop_assert!(actual.assignments.len() <= limit.max(foreign_before.len()));
            // Convergence: every wanted key not refused is satisfied;
            // everything dbgrant owns is wanted.
            for (k, state) in &p.assignments {
                let def = match &k.role { RoleKey::BuiltIn(r) => r.definition_name().to_string(), RoleKey::Custom(n) => a.definition_name(n) };
                let present = actual.assignments.iter().any(|x| {
                    x.principal_id.eq_ignore_ascii_case(&k.principal_id)
                        && a.definition_name_of(&x.role_definition_id).as_deref() == Some(def.as_str())
                        && a.relative_scope(&x.scope).as_deref() == Some(k.scope.as_str())
                });
                match state {
                    AssignmentState::Managed { .. } | AssignmentState::PreExisting { .. } => prop_assert!(present, "{k} missing"),
                    AssignmentState::LimitExceeded => prop_assert!(d.assignments[k].iter().any(|b| p.refused.contains_key(b))),
                    other => prop_assert!(false, "unexpected {other:?} for {k}"),
                }
            }
            // An assignment is dbgrant's when its name is the deterministic
            // name of its (principal, scope, role) and it is not released.
            for x in &actual.assignments {
                let (name, principal) = (x.name.to_ascii_lowercase(), x.principal_id.to_ascii_lowercase());
                let Some(scope) = a.relative_scope(&x.scope).filter(|_| !d.released.contains(&name)) else { continue };
                if let Some(role) = d.known_roles.iter().find(|r| a.assignment_name(&principal, &scope, r) == name) {
                    let k = AssignmentKey { principal_id: principal, role: role.clone(), scope };
                    prop_assert!(d.assignments.contains_key(&k), "extra {k}");
                }
            }
            // Idempotence.
            let again = plan(&a, &d, &actual, &limits);
            prop_assert!(again.actions.is_empty(), "second pass writes {:?}", again.actions);
        }
    }
}
