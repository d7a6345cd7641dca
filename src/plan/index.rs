//! The binding index: which bindings name which subject on which target.
//!
//! Several bindings may name the same subject on the same target; the
//! backend object (a MongoDB role or user, a set of Cosmos DB assignments)
//! carries the union of their grants. The index answers two questions
//! cheaply:
//!
//! ```text
//!   upsert(binding) / remove(binding)  ──▶  affected (target, subject) pairs
//!   desired(target, subject)           ──▶  union of the live grants
//! ```
//!
//! so one binding change recomputes exactly the subjects it touches. Only
//! bindings that are live, unexpired and allowed are put in; everything
//! else is removed, which is how denial and expiry revoke.
//!
//! A contribution the backend refuses (a role that does not exist, an
//! action the server does not know) is *rejected* for that subject: it
//! stays in the index, so its binding still counts as naming the subject,
//! but leaves the union, so one bad binding never blocks another's apply
//! or revoke. Rejections are forgotten whenever the subject's set of
//! contributions changes (the refusal may have come from a combination)
//! and when the rejected binding retries on its own.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use crate::{api::SubjectKey, plan::sorted::SortedSet};

/// A grant that can be unioned with another of its kind.
pub trait Grant: Clone + Default + PartialEq {
    /// Add everything `other` grants to `self`.
    fn merge(&mut self, other: &Self);
}

/// Identifies a binding: `namespace/name`.
pub type BindingKey = String;

/// What one binding contributes: a grant for each of its subjects on one
/// target.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution<G> {
    pub target: String,
    /// Subjects that receive the grant (an exact-size sorted set: the index
    /// keeps one per binding, mostly of one subject, where a `BTreeSet`
    /// would take a node with room for eleven).
    pub subjects: SortedSet<SubjectKey>,
    /// The grant itself, shared: every sync of a subject takes the
    /// contributions it unites along (for isolating one the backend
    /// refuses), and a target's resync does so for every subject at once.
    pub grant: Arc<G>,
}

/// A (target, subject) pair whose backend object must be recomputed.
pub type Affected = BTreeSet<(String, SubjectKey)>;

/// Why the backend refused a binding's contribution to one subject, and
/// since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The server's refusal, as shown on the binding's status.
    pub message: String,
    /// When it was refused.
    pub since: jiff::Timestamp,
}

/// Index of live bindings by (target, subject).
#[derive(Debug, Default)]
pub struct BindingIndex<G> {
    bindings: HashMap<BindingKey, Contribution<G>>,
    by_target: HashMap<String, BTreeMap<SubjectKey, BTreeSet<BindingKey>>>,
    /// Contributions the backend refused, per (target, subject).
    rejected: HashMap<(String, SubjectKey), BTreeMap<BindingKey, Rejection>>,
}

impl<G: Grant> BindingIndex<G> {
    /// Insert or replace a binding's contribution. Returns the pairs whose
    /// union may have changed: the old and new subjects, unless nothing
    /// changed at all.
    pub fn upsert(&mut self, key: &str, contribution: Contribution<G>) -> Affected {
        if self.bindings.get(key) == Some(&contribution) {
            return Affected::new();
        }
        let mut affected = self.remove(key);
        for subject in &contribution.subjects {
            self.by_target
                .entry(contribution.target.clone())
                .or_default()
                .entry(subject.clone())
                .or_default()
                .insert(key.to_string());
            affected.insert((contribution.target.clone(), subject.clone()));
        }
        self.bindings.insert(key.to_string(), contribution);
        self.forget_rejections(&affected);
        affected
    }

    /// Remove a binding. Returns the pairs it contributed to.
    pub fn remove(&mut self, key: &str) -> Affected {
        let mut affected = Affected::new();
        let Some(old) = self.bindings.remove(key) else {
            return affected;
        };
        if let Some(subjects) = self.by_target.get_mut(&old.target) {
            for subject in &old.subjects {
                if let Some(keys) = subjects.get_mut(subject) {
                    keys.remove(key);
                    if keys.is_empty() {
                        subjects.remove(subject);
                    }
                }
                affected.insert((old.target.clone(), subject.clone()));
            }
            if subjects.is_empty() {
                self.by_target.remove(&old.target);
            }
        }
        self.forget_rejections(&affected);
        affected
    }

    /// A subject's set of contributions changed: what was refused in
    /// combination may be accepted now, so every rejection there is
    /// retried at the subject's next sync.
    fn forget_rejections(&mut self, affected: &Affected) {
        for pair in affected {
            self.rejected.remove(pair);
        }
    }

    /// The union of every live, accepted grant for `subject` on `target`,
    /// or `None` when none remains (the backend object should go).
    pub fn desired(&self, target: &str, subject: &SubjectKey) -> Option<G> {
        let accepted = self.contributions(target, subject);
        if accepted.is_empty() {
            return None;
        }
        let mut grant = G::default();
        for (_, g) in accepted {
            grant.merge(g);
        }
        Some(grant)
    }

    /// The live contributions to `subject` on `target` that the backend has
    /// not refused, by binding key (sorted).
    pub fn contributions(&self, target: &str, subject: &SubjectKey) -> Vec<(&BindingKey, &Arc<G>)> {
        let rejected = self.rejected.get(&(target.to_string(), subject.clone()));
        self.bindings_for(target, subject)
            .filter(|k| rejected.is_none_or(|r| !r.contains_key(*k)))
            .filter_map(|k| Some((k, &self.bindings.get(k)?.grant)))
            .collect()
    }

    /// Record that the backend refused `key`'s contribution to `subject` on
    /// `target`: it leaves the union until the subject's contributions
    /// change or [`BindingIndex::retry`] is called. Ignored for a binding
    /// that does not name the subject there.
    pub fn reject(&mut self, target: &str, subject: &SubjectKey, key: &str, rejection: Rejection) {
        if self.bindings_for(target, subject).any(|k| k == key) {
            self.rejected.entry((target.to_string(), subject.clone())).or_default().insert(key.to_string(), rejection);
        }
    }

    /// The subjects whose contribution from `key` the backend refused.
    pub fn rejections(&self, key: &str) -> BTreeMap<SubjectKey, Rejection> {
        let Some(c) = self.bindings.get(key) else { return BTreeMap::new() };
        c.subjects
            .iter()
            .filter_map(|s| {
                let r = self.rejected.get(&(c.target.clone(), s.clone()))?.get(key)?;
                Some((s.clone(), r.clone()))
            })
            .collect()
    }

    /// Put `key`'s refused contributions back into their unions so the next
    /// sync tries them again. Returns the pairs whose union grew.
    pub fn retry(&mut self, key: &str) -> Affected {
        let mut affected = Affected::new();
        let Some(c) = self.bindings.get(key) else { return affected };
        for s in &c.subjects {
            let pair = (c.target.clone(), s.clone());
            if let Some(r) = self.rejected.get_mut(&pair)
                && r.remove(key).is_some()
            {
                if r.is_empty() {
                    self.rejected.remove(&pair);
                }
                affected.insert(pair);
            }
        }
        affected
    }

    /// Bindings that name `subject` on `target`.
    pub fn bindings_for(&self, target: &str, subject: &SubjectKey) -> impl Iterator<Item = &BindingKey> {
        self.by_target.get(target).and_then(|s| s.get(subject)).into_iter().flatten()
    }

    /// Every subject with at least one live binding on `target`, sorted.
    pub fn subjects(&self, target: &str) -> impl Iterator<Item = &SubjectKey> {
        self.by_target.get(target).into_iter().flat_map(|s| s.keys())
    }

    /// Drop the bindings on `target` whose `namespace/name` key no longer
    /// names a live object (`exists(ns, name)` is false): a binding that
    /// vanished without its revocation running (finalizer removed by hand)
    /// must not keep granting. Returns how many were dropped.
    pub fn forget_vanished(&mut self, target: &str, exists: impl Fn(&str, &str) -> bool) -> usize {
        let gone: Vec<BindingKey> = self
            .bindings_on(target)
            .into_iter()
            .filter(|k| k.split_once('/').is_none_or(|(ns, name)| !exists(ns, name)))
            .cloned()
            .collect();
        for k in &gone {
            self.remove(k);
        }
        gone.len()
    }

    /// Every binding on `target`.
    pub fn bindings_on(&self, target: &str) -> BTreeSet<&BindingKey> {
        self.by_target.get(target).into_iter().flat_map(|s| s.values().flatten()).collect()
    }

    /// A binding's current contribution.
    pub fn get(&self, key: &str) -> Option<&Contribution<G>> {
        self.bindings.get(key)
    }

    /// Number of live bindings.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SubjectKind;
    use proptest::prelude::*;

    /// A toy grant: a set of role names.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Roles(BTreeSet<&'static str>);

    impl Grant for Roles {
        fn merge(&mut self, other: &Self) {
            self.0.extend(other.0.iter().copied());
        }
    }

    fn group(id: &str) -> SubjectKey {
        SubjectKey { kind: SubjectKind::Group, id: id.into() }
    }

    fn mk(target: &str, subjects: &[&str], roles: &[&'static str]) -> Contribution<Roles> {
        Contribution {
            target: target.into(),
            subjects: subjects.iter().map(|s| group(s)).collect(),
            grant: Arc::new(Roles(roles.iter().copied().collect())),
        }
    }

    fn roles(r: &[&'static str]) -> Roles {
        Roles(r.iter().copied().collect())
    }

    #[test]
    fn union_of_two_bindings_and_shrink_when_one_goes() {
        let mut idx = BindingIndex::default();
        idx.upsert("a/one", mk("t", &["g1"], &["read"]));
        idx.upsert("b/two", mk("t", &["g1"], &["write"]));
        assert_eq!(idx.desired("t", &group("g1")), Some(roles(&["read", "write"])));

        let affected = idx.remove("b/two");
        assert_eq!(affected, [("t".to_string(), group("g1"))].into_iter().collect());
        assert_eq!(idx.desired("t", &group("g1")), Some(roles(&["read"])));

        idx.remove("a/one");
        assert_eq!(idx.desired("t", &group("g1")), None);
        assert!(idx.is_empty());
    }

    #[test]
    fn vanished_bindings_are_forgotten_and_live_ones_kept() {
        let mut idx = BindingIndex::default();
        idx.upsert("a/live", mk("t", &["g1"], &["read"]));
        idx.upsert("b/gone", mk("t", &["g1"], &["write"]));
        idx.upsert("c/other-target", mk("u", &["g1"], &["write"]));
        let forgotten = idx.forget_vanished("t", |ns, name| (ns, name) == ("a", "live"));
        assert_eq!(forgotten, 1);
        assert_eq!(idx.desired("t", &group("g1")), Some(roles(&["read"])));
        assert_eq!(idx.desired("u", &group("g1")), Some(roles(&["write"])), "other targets untouched");
    }

    #[test]
    fn affected_covers_old_and_new_subjects_only() {
        let mut idx = BindingIndex::default();
        idx.upsert("a/one", mk("t", &["g1", "g2"], &["read"]));
        idx.upsert("a/other", mk("t", &["g9"], &["read"]));
        let affected = idx.upsert("a/one", mk("t", &["g2", "g3"], &["read"]));
        let want: Affected = ["g1", "g2", "g3"].iter().map(|g| ("t".to_string(), group(g))).collect();
        assert_eq!(affected, want);
        assert_eq!(idx.desired("t", &group("g1")), None);
    }

    #[test]
    fn unchanged_upsert_affects_nothing() {
        let mut idx = BindingIndex::default();
        idx.upsert("a/one", mk("t", &["g1"], &["read"]));
        assert!(idx.upsert("a/one", mk("t", &["g1"], &["read"])).is_empty());
    }

    #[test]
    fn targets_are_independent() {
        let mut idx = BindingIndex::default();
        idx.upsert("a/one", mk("t1", &["g1"], &["read"]));
        idx.upsert("a/two", mk("t2", &["g1"], &["write"]));
        assert_eq!(idx.desired("t1", &group("g1")), Some(roles(&["read"])));
        assert_eq!(idx.subjects("t2").cloned().collect::<Vec<_>>(), vec![group("g1")]);
        assert_eq!(idx.bindings_on("t1").len(), 1);
    }

    fn refused(message: &str) -> Rejection {
        Rejection { message: message.into(), since: jiff::Timestamp::UNIX_EPOCH }
    }

    #[test]
    fn a_rejected_contribution_leaves_the_union_but_still_names_the_subject() {
        let mut idx = BindingIndex::default();
        idx.upsert("a/good", mk("t", &["g1"], &["read"]));
        idx.upsert("b/bad", mk("t", &["g1", "g2"], &["nosuchrole"]));
        idx.reject("t", &group("g1"), "b/bad", refused("role nosuchrole does not exist"));
        assert_eq!(idx.desired("t", &group("g1")), Some(roles(&["read"])));
        assert_eq!(idx.contributions("t", &group("g1")), vec![(&"a/good".to_string(), &Arc::new(roles(&["read"])))]);
        // Only the refused subject is affected; g2 still carries it.
        assert_eq!(idx.desired("t", &group("g2")), Some(roles(&["nosuchrole"])));
        assert_eq!(idx.bindings_for("t", &group("g1")).count(), 2);
        assert_eq!(idx.rejections("b/bad").keys().cloned().collect::<Vec<_>>(), vec![group("g1")]);
        assert!(idx.rejections("a/good").is_empty());
    }

    #[test]
    fn a_subject_whose_only_contribution_is_rejected_wants_nothing() {
        let mut idx = BindingIndex::default();
        idx.upsert("b/bad", mk("t", &["g1"], &["nosuchrole"]));
        idx.reject("t", &group("g1"), "b/bad", refused("no"));
        assert_eq!(idx.desired("t", &group("g1")), None);
    }

    #[test]
    fn rejections_are_forgotten_when_the_subject_changes_or_the_binding_retries() {
        let mut idx = BindingIndex::default();
        idx.upsert("a/one", mk("t", &["g1"], &["read"]));
        idx.upsert("b/two", mk("t", &["g1"], &["write"]));
        idx.reject("t", &group("g1"), "b/two", refused("no"));
        // An unchanged upsert keeps it.
        idx.upsert("b/two", mk("t", &["g1"], &["write"]));
        assert_eq!(idx.desired("t", &group("g1")), Some(roles(&["read"])));
        // A sibling leaving changes the subject: every rejection there is retried.
        idx.remove("a/one");
        assert_eq!(idx.desired("t", &group("g1")), Some(roles(&["write"])));
        assert!(idx.rejections("b/two").is_empty());

        idx.reject("t", &group("g1"), "b/two", refused("no"));
        assert_eq!(idx.desired("t", &group("g1")), None);
        let affected = idx.retry("b/two");
        assert_eq!(affected, [("t".to_string(), group("g1"))].into_iter().collect());
        assert_eq!(idx.desired("t", &group("g1")), Some(roles(&["write"])));
        assert!(idx.retry("b/two").is_empty(), "nothing left to retry");
    }

    #[test]
    fn rejecting_a_binding_that_does_not_name_the_subject_is_ignored() {
        let mut idx = BindingIndex::default();
        idx.upsert("a/one", mk("t", &["g1"], &["read"]));
        idx.reject("t", &group("g2"), "a/one", refused("no"));
        idx.reject("u", &group("g1"), "a/one", refused("no"));
        assert!(idx.rejections("a/one").is_empty());
        assert_eq!(idx.desired("t", &group("g1")), Some(roles(&["read"])));
    }

    proptest! {
        /// After any sequence of upserts and removes, every (target,
        /// subject) union equals the union recomputed from scratch over the
        /// live bindings, and nothing else is present.
        #[test]
        fn index_matches_recomputation(ops in proptest::collection::vec(
            (0usize..6, proptest::option::of((0usize..2, proptest::collection::btree_set(0usize..4, 0..3), proptest::collection::btree_set(0usize..3, 0..3)))),
            0..60,
        )) {
            const ROLES: [&str; 3] = ["read", "write", "admin"];
            let mut idx = BindingIndex::default();
            let mut live: BTreeMap<String, Contribution<Roles>> = BTreeMap::new();
            for (b, op) in ops {
                let key = format!("ns/b{b}");
                match op {
                    Some((t, subjects, rs)) => {
                        let c = Contribution {
                            target: format!("t{t}"),
                            subjects: subjects.iter().map(|s| group(&format!("g{s}"))).collect(),
                            grant: Arc::new(Roles(rs.iter().map(|r| ROLES[*r]).collect())),
                        };
                        idx.upsert(&key, c.clone());
                        live.insert(key, c);
                    }
                    None => { idx.remove(&key); live.remove(&key); }
                }
            }
            for t in ["t0", "t1"] {
                for s in 0..4 {
                    let subject = group(&format!("g{s}"));
                    let mut want: Option<Roles> = None;
                    for c in live.values().filter(|c| c.target == t && c.subjects.contains(&subject)) {
                        want.get_or_insert_with(Roles::default).merge(&c.grant);
                    }
                    prop_assert_eq!(idx.desired(t, &subject), want);
                }
            }
            prop_assert_eq!(idx.len(), live.len());
        }
    }
}
