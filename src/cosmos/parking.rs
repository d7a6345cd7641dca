//! Bindings that wait for their account without holding a reconcile slot.
//!
//! A binding that only needs its assignments in place, and finds another
//! pass writing to its account, *parks*: it leaves what it waits for with
//! the account and its reconcile returns, without a status write. The pass
//! wakes it when a report shows its assignments in place (a partial one,
//! after the write that landed them) or, at the end of the pass, with the
//! final report if the pass covered its change; and it wakes one binding
//! whose change it did not cover, to run the next pass. A woken binding's
//! next reconcile publishes its status from the report it was woken with,
//! without another Azure call.
//!
//! Without this, a bulk apply's bindings waited inside their reconciles,
//! each holding one of the controller's slots until its assignment landed:
//! only the bindings that happened to hold a slot reached the index, so a
//! pass wrote for them in whatever order the controller's queue handed
//! them out. Parked, every binding reaches the index at the pace of its
//! reconcile, and a pass writes the oldest bindings' assignments first.
//!
//! The account's parking lot and its write lock are handed over together
//! (see [`Lot`]): a binding parks only while the lock is held, and the pass
//! that releases the lock sees every binding that parked behind it.

use std::{collections::BTreeMap, sync::Arc};

use kube::runtime::reflector::ObjectRef;

use super::{binding_status::outcome_from, sync::SyncReport};
use crate::{
    api::{CosmosRoleBinding, CosmosTarget},
    plan::{cosmos::AssignmentKey, sorted::SortedSet},
};

/// What a parked binding waits for.
#[derive(Clone, Debug)]
pub struct Parked {
    /// Its reconcile, to wake.
    pub binding: ObjectRef<CosmosRoleBinding>,
    /// Its index key (`namespace/name`).
    pub key: String,
    /// The account's change number when it parked (its own change is at or
    /// before it).
    pub wanted: u64,
    /// The assignments it contributes (an exact-size sorted set: most
    /// bindings of a bulk apply park, and a `BTreeSet` of one key takes a
    /// node with room for eleven).
    pub own: SortedSet<AssignmentKey>,
    /// Its target, as it read it.
    pub target: Arc<CosmosTarget>,
}

impl Parked {
    /// Whether `report` shows this binding's assignments in place. That is
    /// a fact about the account whichever change the report's plan was made
    /// for: the binding joined the index before it parked, so no later
    /// plan drops what it wants. (Any other outcome, such as a refusal,
    /// speaks for the binding only if the plan was made after its change.)
    fn granted_by(&self, report: &SyncReport) -> bool {
        outcome_from(report, &self.key, &self.own, &self.target).0.ready
    }
}

/// A binding to wake, and the report to publish its status from (None:
/// its change was not covered; it syncs again).
pub type Wake = (Parked, Option<Arc<SyncReport>>);

/// The bindings parked on one account, by key.
#[derive(Debug, Default)]
pub struct Lot(BTreeMap<String, Parked>);

impl Lot {
    /// Park `binding` (replacing an earlier entry of the same binding).
    pub fn park(&mut self, binding: Parked) {
        self.0.insert(binding.key.clone(), binding);
    }

    /// Whether anyone is parked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bindings `report` (a partial one) shows granted: taken out of
    /// the lot, to wake with it.
    pub fn granted(&mut self, report: &Arc<SyncReport>) -> Vec<Wake> {
        let keys: Vec<String> = self.0.values().filter(|p| p.granted_by(report)).map(|p| p.key.clone()).collect();
        keys.into_iter().filter_map(|k| self.0.remove(&k)).map(|p| (p, Some(report.clone()))).collect()
    }

    /// At the end of a pass that covered change `covers` and reported
    /// `report` (None: it failed): every binding it shows granted, and, if
    /// it ran to the end, every binding it covered, with the report; and
    /// the binding that parked first among the rest, without, to run the
    /// next pass. (A pass that stopped early has no final answer for the
    /// bindings whose writes it did not reach.) After a failed pass every
    /// binding is woken: each finds out for itself.
    pub fn pass_ended(&mut self, covers: u64, report: Option<&Arc<SyncReport>>) -> Vec<Wake> {
        let Some(report) = report else {
            return std::mem::take(&mut self.0).into_values().map(|p| (p, None)).collect();
        };
        let whole = report.stopped.is_none();
        let answered = |p: &&Parked| (whole && p.wanted <= covers) || p.granted_by(report);
        let covered: Vec<String> = self.0.values().filter(answered).map(|p| p.key.clone()).collect();
        let mut wake: Vec<Wake> =
            covered.into_iter().filter_map(|k| self.0.remove(&k)).map(|p| (p, Some(report.clone()))).collect();
        let next = self.0.values().min_by_key(|p| p.wanted).map(|p| p.key.clone());
        wake.extend(next.and_then(|k| self.0.remove(&k)).map(|p| (p, None)));
        wake
    }

    /// Forget `key` (its binding is being deleted, or syncs itself).
    pub fn leave(&mut self, key: &str) {
        self.0.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{BuiltInCosmosRole, CosmosPolicy},
        cosmos::{fixtures, sync::WriteResult},
        plan::cosmos::{AssignmentState, Plan, RoleKey},
    };

    fn reader(p: &str) -> AssignmentKey {
        AssignmentKey {
            principal_id: p.into(),
            role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
            scope: "/dbs/a".into(),
        }
    }

    fn parked(name: &str, wanted: u64, principal: &str) -> Parked {
        Parked {
            binding: ObjectRef::new(name).within("ns"),
            key: format!("ns/{name}"),
            wanted,
            own: [reader(principal)].into(),
            target: Arc::new(fixtures::target("t", CosmosPolicy::default())),
        }
    }

    /// A report in which `done` principals' assignments are in place and
    /// `writing` ones are still being written.
    fn report(done: &[&str], writing: &[&str]) -> Arc<SyncReport> {
        let mut plan = Plan::default();
        let mut results = BTreeMap::new();
        for p in done.iter().chain(writing) {
            let name = format!("a-{p}");
            plan.assignments.insert(reader(p), AssignmentState::Managed { name: name.clone() });
            if writing.contains(p) {
                results.insert(name, WriteResult::Pending);
            }
        }
        Arc::new(SyncReport { plan, results, ..Default::default() })
    }

    fn woken(w: &[Wake]) -> Vec<(String, bool)> {
        w.iter().map(|(p, r)| (p.key.clone(), r.is_some())).collect()
    }

    #[test]
    fn a_partial_report_wakes_only_the_bindings_it_shows_granted() {
        let mut lot = Lot::default();
        lot.park(parked("b1", 3, "p1"));
        lot.park(parked("b2", 3, "p2"));
        lot.park(parked("b3", 5, "p1"));
        lot.park(parked("b4", 5, "p3"));
        // p1 in place, p2 still being written, p3 not in the plan at all.
        let w = lot.granted(&report(&["p1"], &["p2"]));
        assert_eq!(woken(&w), [("ns/b1".to_string(), true), ("ns/b3".to_string(), true)]);
        let w = lot.granted(&report(&["p1", "p2"], &[]));
        assert_eq!(woken(&w), [("ns/b2".to_string(), true)]);
        assert_eq!(woken(&lot.pass_ended(4, Some(&report(&["p1", "p2"], &[])))), [("ns/b4".to_string(), false)]);
    }

    #[test]
    fn the_end_of_a_pass_wakes_what_it_covered_and_the_first_of_the_rest_to_run_the_next() {
        let mut lot = Lot::default();
        lot.park(parked("b1", 3, "p1"));
        lot.park(parked("b2", 9, "p2"));
        lot.park(parked("b3", 7, "p3"));
        lot.park(parked("b5", 7, "p1"));
        let w = lot.pass_ended(4, Some(&report(&["p1"], &[])));
        assert_eq!(
            woken(&w),
            [("ns/b1".to_string(), true), ("ns/b5".to_string(), true), ("ns/b3".to_string(), false)],
            "b1 covered, b5 granted, b3 runs the next pass"
        );
        // Covered but refused, say: woken with the report all the same, to
        // say so in its status.
        lot.park(parked("b4", 8, "p4"));
        let w = lot.pass_ended(8, Some(&report(&[], &[])));
        assert_eq!(woken(&w), [("ns/b4".to_string(), true), ("ns/b2".to_string(), false)]);
        assert!(lot.is_empty());
        // Nothing parked: nothing to wake.
        assert!(lot.pass_ended(9, Some(&report(&[], &[]))).is_empty());
    }

    #[test]
    fn a_pass_that_stopped_early_wakes_only_what_it_granted_and_one_to_go_on() {
        let mut lot = Lot::default();
        lot.park(parked("b1", 3, "p1"));
        lot.park(parked("b2", 3, "p2"));
        lot.park(parked("b3", 4, "p3"));
        let mut stopped = (*report(&["p1"], &["p2", "p3"])).clone();
        stopped.stopped = Some((crate::cosmos::sync::Stop::Yielded, std::time::Duration::ZERO));
        let w = lot.pass_ended(9, Some(&Arc::new(stopped)));
        assert_eq!(woken(&w), [("ns/b1".to_string(), true), ("ns/b2".to_string(), false)]);
        assert_eq!(woken(&lot.pass_ended(9, None)), [("ns/b3".to_string(), false)]);
    }

    #[test]
    fn a_failed_pass_wakes_everyone_and_leaving_forgets() {
        let mut lot = Lot::default();
        lot.park(parked("b1", 3, "p1"));
        lot.park(parked("b2", 9, "p2"));
        lot.park(parked("b3", 9, "p3"));
        lot.leave("ns/b3");
        assert_eq!(woken(&lot.pass_ended(4, None)), [("ns/b1".to_string(), false), ("ns/b2".to_string(), false)]);
        assert!(lot.is_empty());
    }
}
