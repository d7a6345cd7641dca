//! A set kept as one sorted, exact-size slice.
//!
//! The binding index holds a grant per binding, and a grant's sets nearly
//! always hold one or two entries. `BTreeSet` allocates a node with room
//! for eleven for its first entry (540 bytes for a pair of strings, where
//! 48 do); at 10,000 bindings that was megabytes of empty slots. Sets here
//! are small and mostly read: lookups are binary searches, and an insert
//! moves the slice (fine for the tens of entries a grant has; a union of
//! many is built with [`Extend`], which sorts once).
//!
//! Written here rather than taken from a crate: the crates with sorted-vec
//! sets keep a `Vec` (spare capacity after every insert) or an inline
//! array; what is wanted is exactly the entries, and the whole type is the
//! few methods below.

use std::fmt;

/// A set of `T`, sorted and distinct, in an exact-size slice.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SortedSet<T>(Box<[T]>);

impl<T> Default for SortedSet<T> {
    fn default() -> Self {
        Self(Box::new([]))
    }
}

impl<T: Ord> SortedSet<T> {
    /// Add `value`; whether it was new.
    pub fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                let mut entries = std::mem::take(&mut self.0).into_vec();
                entries.insert(at, value);
                self.0 = entries.into_boxed_slice();
                true
            }
        }
    }

    /// Whether `value` is in the set.
    pub fn contains(&self, value: &T) -> bool {
        self.0.binary_search(value).is_ok()
    }

    /// Whether every entry of `self` is in `other`.
    pub fn is_subset(&self, other: &Self) -> bool {
        self.0.len() <= other.0.len() && self.0.iter().all(|v| other.contains(v))
    }

    /// The entries of `self` not in `other`, in order.
    pub fn difference<'a>(&'a self, other: &'a Self) -> impl Iterator<Item = &'a T> + 'a {
        self.0.iter().filter(move |v| !other.contains(v))
    }
}

impl<T> SortedSet<T> {
    /// The entries, in order, as a slice.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// The entries, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Ord> FromIterator<T> for SortedSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut entries: Vec<T> = iter.into_iter().collect();
        entries.sort();
        entries.dedup();
        Self(entries.into_boxed_slice())
    }
}

impl<T: Ord> Extend<T> for SortedSet<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let mut added = iter.into_iter().filter(|v| !self.contains(v)).peekable();
        if added.peek().is_none() {
            return;
        }
        let mut entries: Vec<T> = added.collect();
        entries.extend(std::mem::take(&mut self.0).into_vec());
        *self = entries.into_iter().collect();
    }
}

impl<T: Ord, const N: usize> From<[T; N]> for SortedSet<T> {
    fn from(entries: [T; N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<T> IntoIterator for SortedSet<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
    }
}

impl<'a, T> IntoIterator for &'a SortedSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for SortedSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every operation agrees with `BTreeSet`'s.
        #[test]
        fn behaves_as_a_btreeset(a in proptest::collection::vec(0u8..20, 0..12),
                                 b in proptest::collection::vec(0u8..20, 0..12),
                                 extra in 0u8..20) {
            let (mut s, t): (SortedSet<u8>, SortedSet<u8>) = (a.iter().copied().collect(), b.iter().copied().collect());
            let (mut bs, bt): (BTreeSet<u8>, BTreeSet<u8>) = (a.iter().copied().collect(), b.iter().copied().collect());
            prop_assert_eq!(s.iter().copied().collect::<Vec<_>>(), bs.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(s.len(), bs.len());
            prop_assert_eq!(s.is_subset(&t), bs.is_subset(&bt));
            prop_assert_eq!(s.difference(&t).copied().collect::<Vec<_>>(), bs.difference(&bt).copied().collect::<Vec<_>>());
            prop_assert_eq!(s.contains(&extra), bs.contains(&extra));
            prop_assert_eq!(s.insert(extra), bs.insert(extra));
            s.extend(b.iter().copied());
            bs.extend(b.iter().copied());
            prop_assert_eq!(s.iter().copied().collect::<Vec<_>>(), bs.iter().copied().collect::<Vec<_>>());
            let expected: Vec<u8> = bs.iter().copied().collect();
            prop_assert_eq!(s.as_slice(), expected.as_slice());
            prop_assert_eq!(s.into_iter().collect::<Vec<_>>(), bs.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn holds_exactly_its_entries() {
        let mut s: SortedSet<String> = ["b".to_string(), "a".to_string()].into();
        assert!(!s.insert("a".into()));
        assert!(s.insert("c".into()));
        s.extend(["a".to_string(), "d".to_string()]);
        assert_eq!(s.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(s.0.len(), 4, "no spare room kept");
        assert_eq!(format!("{:?}", SortedSet::from([2, 1])), "{1, 2}");
    }
}
