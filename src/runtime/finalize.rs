//! Putting dbgrant's finalizer on an object in the same reconcile that
//! applies it.
//!
//! `kube::runtime::finalizer` adds the finalizer, returns, and applies on
//! the watch event the patch causes: a second reconcile per new object,
//! and one more apiserver round trip before a new binding is Ready. The
//! binding controllers' watches pass on spec changes only
//! ([`super::watch::Relevance::Spec`]), so that event would never come;
//! instead [`ensure`] adds the finalizer and hands back the object the
//! apiserver now holds, and `finalizer` then runs `Apply` on it at once.
//! The finalizer is still in place before anything is granted.
//!
//! A binding can be reconciled again before the cache has seen the patch
//! (a Cosmos DB binding parks and is woken moments later): its cached copy
//! is the very version the patch was made from, without the finalizer.
//! Patching again would conflict on the resourceVersion and cost a GET.
//! [`Ensured`] remembers the patches this process made until the cache
//! shows them, so that copy is recognised for what it is: the object the
//! patch turned into, less the patch.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;

use crate::Result;

/// How often a finalizer patch that lost a race is retried on a fresh copy.
const CONFLICT_RETRIES: usize = 3;

/// How long a patch is remembered if the cache never shows it (the object
/// went before it was reconciled again).
const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// One finalizer patch this process made: the object's resourceVersion
/// before and after it.
#[derive(Debug)]
struct Patched {
    from: String,
    to: String,
    at: Instant,
}

/// How often patches the cache never showed are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The finalizer patches this process made that its cache has not shown
/// yet, by object uid.
#[derive(Debug, Default)]
pub struct Ensured {
    patched: Mutex<Remembered>,
}

/// [`Ensured`]'s map, and when it was last swept.
#[derive(Debug, Default)]
struct Remembered {
    by_uid: HashMap<String, Patched>,
    swept: Option<Instant>,
}

/// What [`ensure`] does with a copy of an object.
#[derive(Debug)]
enum Step<K> {
    /// Nothing: the copy carries the finalizer, or is being deleted.
    Done(Arc<K>),
    /// Nothing: the copy is the version a patch of ours was made from; this
    /// is the version it turned into.
    Known(Arc<K>),
    /// Patch it.
    Patch,
}

impl Ensured {
    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.patched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to do with `obj`, a copy from the cache or the apiserver.
    fn step<K: Resource + Clone>(&self, finalizer: &str, obj: &Arc<K>) -> Step<K> {
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let carries = obj.meta().finalizers.iter().flatten().any(|f| f == finalizer);
        if obj.meta().deletion_timestamp.is_some() || carries {
            // The cache has caught up (or it no longer matters).
            if self.lock().by_uid.remove(&uid).is_some() {
                tracing::trace!(%uid, "the cache shows our finalizer patch");
            }
            return Step::Done(obj.clone());
        }
        let known = self
            .lock()
            .by_uid
            .get(&uid)
            .filter(|p| obj.meta().resource_version.as_ref() == Some(&p.from))
            .map(|p| p.to.clone());
        match known {
            Some(to) => {
                let mut patched = K::clone(obj);
                let meta = patched.meta_mut();
                meta.finalizers.get_or_insert_with(Vec::new).push(finalizer.to_string());
                meta.resource_version = Some(to);
                Step::Known(Arc::new(patched))
            }
            None => Step::Patch,
        }
    }

    /// Remember that the patch of `before` gave `after`.
    fn remember<K: Resource>(&self, before: &K, after: &K) {
        self.remember_at(before, after, Instant::now());
    }

    /// [`Self::remember`] at `now`; forgets patches the cache never showed
    /// (at most once every [`SWEEP_EVERY`], so a bulk of patches does not
    /// scan the map once per patch).
    fn remember_at<K: Resource>(&self, before: &K, after: &K, now: Instant) {
        let (Some(uid), Some(from), Some(to)) =
            (before.meta().uid.clone(), before.resource_version(), after.resource_version())
        else {
            return;
        };
        let mut remembered = self.lock();
        if remembered.swept.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
            remembered.by_uid.retain(|_, p| now.duration_since(p.at) < REMEMBERED_FOR);
            remembered.swept = Some(now);
        }
        remembered.by_uid.insert(uid, Patched { from, to, at: now });
    }

    /// How many patches are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_uid.len()
    }
}

/// Make sure `obj` carries `finalizer` unless it is being deleted, and
/// return the object as the apiserver now has it. The patch carries the
/// resourceVersion it was computed from, so a concurrent change to the
/// finalizers (someone else's) is never overwritten: it is retried on a
/// fresh copy. A copy that predates a patch of ours (see [`Ensured`]) is
/// not patched again.
pub async fn ensure<K>(api: &Api<K>, ensured: &Ensured, finalizer: &str, obj: Arc<K>) -> Result<Arc<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut obj = obj;
    for attempt in 0..=CONFLICT_RETRIES {
        match ensured.step(finalizer, &obj) {
            Step::Done(obj) | Step::Known(obj) => return Ok(obj),
            Step::Patch => {}
        }
        let mut finalizers = obj.finalizers().to_vec();
        finalizers.push(finalizer.to_string());
        let patch = serde_json::json!({
            "metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()},
        });
        match api
            .patch(
                &obj.name_any(),
                &PatchParams { field_manager: Some(crate::MANAGER.into()), ..Default::default() },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                ensured.remember(obj.as_ref(), &updated);
                return Ok(Arc::new(updated));
            }
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < CONFLICT_RETRIES => {
                tracing::debug!(object = %obj.name_any(), "finalizer patch conflicted; retrying on a fresh copy");
                obj = Arc::new(api.get(&obj.name_any()).await?);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::ConfigMap,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    use super::*;

    const F: &str = "dbgrant.io/finalizer";

    fn copy(rv: &str, finalizers: &[&str]) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some("b".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                resource_version: Some(rv.into()),
                finalizers: (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[test]
    fn a_copy_without_the_finalizer_is_patched_unless_a_patch_of_ours_was_made_from_it() {
        let ensured = Ensured::default();
        assert!(matches!(ensured.step(F, &copy("1", &[])), Step::Patch));

        // Our patch of version 1 gave version 2.
        ensured.remember(copy("1", &["other"]).as_ref(), copy("2", &["other", F]).as_ref());
        // The cache still holds version 1: it is version 2, finalizer and all.
        let Step::Known(known) = ensured.step(F, &copy("1", &["other"])) else { panic!("not recognised") };
        assert_eq!(known.finalizers(), ["other", F]);
        assert_eq!(known.resource_version().as_deref(), Some("2"));
        assert_eq!(ensured.len(), 1, "remembered until the cache shows it");

        // A later version without it (someone took it off) is patched.
        assert!(matches!(ensured.step(F, &copy("3", &["other"])), Step::Patch));
        // Another object with the same resourceVersion is not this one.
        let mut other = ConfigMap::clone(&copy("1", &["other"]));
        other.metadata.uid = Some("u-2".into());
        assert!(matches!(ensured.step(F, &Arc::new(other)), Step::Patch));
    }

    #[test]
    fn a_patch_is_forgotten_once_the_cache_shows_it_or_the_object_is_deleted() {
        let ensured = Ensured::default();
        ensured.remember(copy("1", &[]).as_ref(), copy("2", &[F]).as_ref());
        assert!(matches!(ensured.step(F, &copy("2", &[F])), Step::Done(_)));
        assert_eq!(ensured.len(), 0);

        ensured.remember(copy("1", &[]).as_ref(), copy("2", &[F]).as_ref());
        let mut deleting = ConfigMap::clone(&copy("1", &[]));
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert!(matches!(ensured.step(F, &Arc::new(deleting)), Step::Done(_)), "a deleted copy is never patched");
        assert_eq!(ensured.len(), 0);
    }

    #[test]
    fn patches_the_cache_never_showed_are_swept() {
        let ensured = Ensured::default();
        let other = |rv: &str| {
            let mut c = ConfigMap::clone(&copy(rv, &[]));
            c.metadata.uid = Some(format!("u-{rv}"));
            c
        };
        let t0 = Instant::now();
        ensured.remember_at(&other("1"), &other("2"), t0);
        // A sweep that finds the first one in its time.
        ensured.remember_at(&other("3"), &other("4"), t0 + REMEMBERED_FOR - SWEEP_EVERY / 2);
        assert_eq!(ensured.len(), 2);
        // The first is past its time, but the map was swept less than a
        // minute ago.
        ensured.remember_at(&other("5"), &other("6"), t0 + REMEMBERED_FOR + SWEEP_EVERY / 4);
        assert_eq!(ensured.len(), 3);
        // The next sweep forgets it, and only it.
        ensured.remember_at(&other("7"), &other("8"), t0 + REMEMBERED_FOR + SWEEP_EVERY);
        assert_eq!(ensured.len(), 3);
        assert!(matches!(ensured.step(F, &Arc::new(other("1"))), Step::Patch), "forgotten");
        assert!(matches!(ensured.step(F, &Arc::new(other("3"))), Step::Known(_)), "remembered");
    }
}
