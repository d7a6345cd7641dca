//! Kubernetes Events (`events.k8s.io/v1`) about dbgrant's objects, folded
//! into a series only when they say the same thing.
//!
//! kube's `Recorder`, like client-go's, folds every Event with the same
//! regarding object, type, reason and action within six minutes into a
//! series of the first one and keeps that one's note (KEP-383 treats the
//! note as free text). dbgrant's notes are the point of its Events: the
//! writes an `AccessChanged` Event lists, the error a failure reports. With
//! that folding a binding granted and then revoked seconds later showed its
//! grant with a count of two and the revocation nowhere. Here the note is
//! part of what makes two Events the same, so only true repeats (the same
//! failure on every retry) become a series. The memory of past Events keeps
//! what a series needs, not each Event whole, and is swept once a minute
//! rather than on every publish (kube's scans its whole cache each time).
//! Written here because kube's `Recorder` has no option for either.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1 as events},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
pub use kube::runtime::events::EventType;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// How long a repeated Event continues the series of the first one (kube's
/// and client-go's six minutes); after that it starts a new Event.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How often series older than [`SERIES_WINDOW`] are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Where Events about cluster-scoped objects go (as kube and client-go do).
const CLUSTER_SCOPED_NAMESPACE: &str = "default";

/// One Event to publish.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub type_: EventType,
    /// Why, in CamelCase (`AccessChanged`, a condition reason).
    pub reason: &'a str,
    /// What dbgrant was doing.
    pub action: &'a str,
    /// What happened, for people (at most 1 kB; see `status::publish`).
    pub note: &'a str,
}

/// Publishes Events as one reporting controller instance.
pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<Series>,
}

impl Publisher {
    /// Events reported by `controller` (its `instance`, e.g. the pod name).
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Self { client, controller: controller.into(), instance: instance.into(), series: Mutex::new(Series::default()) }
    }

    /// Publish `event` about `regarding`: a new Event, or the next count of
    /// the series of the same Event (same object, type, reason, action and
    /// note) published within the last six minutes.
    pub async fn publish(&self, event: &Event<'_>, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let (key, step) = {
            let mut series = self.lock();
            let key = series.key(event, regarding);
            (key, series.next(key, Instant::now()))
        };
        let namespace = regarding.namespace.as_deref().unwrap_or(CLUSTER_SCOPED_NAMESPACE);
        let api: Api<events::Event> = Api::namespaced(self.client.clone(), namespace);
        let now = jiff::Timestamp::now();
        if let Step::Continue { name, count } = &step {
            let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.lock().published(key, name.clone(), *count, Instant::now());
                    return Ok(());
                }
                // Gone already (the apiserver keeps Events an hour by
                // default, less if told): start over.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let created = api.create(&PostParams::default(), &self.event(event, regarding, namespace, now)).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.lock().published(key, name, 1, Instant::now());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(
        &self,
        event: &Event<'_>,
        regarding: &ObjectReference,
        namespace: &str,
        now: jiff::Timestamp,
    ) -> events::Event {
        let name = regarding.name.as_deref().unwrap_or(&self.controller);
        events::Event {
            metadata: ObjectMeta {
                // kube's and client-go's form: unique per object and instant.
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(event.reason.into()),
            action: Some(event.action.into()),
            note: Some(event.note.into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

/// What makes two Events the same: their object (its whole reference, uid
/// included, so a recreated object starts afresh), type, reason, action and
/// note, kept as one 64-bit hash keyed randomly per process, so a series
/// costs a few dozen bytes whatever its note. Two different Events about
/// one object folding together would take a 1-in-2^64 collision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key(u64);

/// The series of recently published Events.
#[derive(Debug)]
struct Series {
    hasher: RandomState,
    recent: HashMap<Key, Published>,
    swept: Option<Instant>,
}

impl Default for Series {
    fn default() -> Self {
        Self { hasher: RandomState::new(), recent: HashMap::new(), swept: None }
    }
}

/// An Event published: its name and how many times it was seen, when last.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Published {
    name: String,
    count: i32,
    at: Instant,
}

/// What to do with an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Create a new Event.
    Create,
    /// Count it in the series of the Event called `name`.
    Continue { name: String, count: i32 },
}

impl Series {
    fn key(&self, event: &Event<'_>, regarding: &ObjectReference) -> Key {
        let type_ = matches!(event.type_, EventType::Warning);
        Key(self.hasher.hash_one((
            &regarding.uid,
            &regarding.namespace,
            &regarding.name,
            &regarding.kind,
            &regarding.api_version,
            type_,
            event.reason,
            event.action,
            event.note,
        )))
    }

    /// The step for an Event with `key` at `now`, forgetting series that
    /// ended (at most once every [`SWEEP_EVERY`]).
    fn next(&mut self, key: Key, now: Instant) -> Step {
        if self.swept.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
            self.recent.retain(|_, p| now.duration_since(p.at) < SERIES_WINDOW);
            self.swept = Some(now);
        }
        match self.recent.get(&key) {
            Some(p) if now.duration_since(p.at) < SERIES_WINDOW => {
                Step::Continue { name: p.name.clone(), count: p.count.saturating_add(1) }
            }
            _ => Step::Create,
        }
    }

    /// The Event with `key` was published as `name`, `count` times so far.
    fn published(&mut self, key: Key, name: String, count: i32, now: Instant) {
        self.recent.insert(key, Published { name, count, at: now });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("dbgrant.io/v1alpha1".into()),
            kind: Some("MongoRoleBinding".into()),
            namespace: Some("team-a".into()),
            name: Some("readers".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn changed(note: &str) -> Event<'_> {
        Event { type_: EventType::Normal, reason: "AccessChanged", action: "Reconcile", note }
    }

    #[test]
    fn events_that_say_different_things_are_each_their_own() {
        let mut s = Series::default();
        let t0 = Instant::now();
        let grant = s.key(&changed("1 write: created role admin.entra/g"), &binding("u1"));
        assert_eq!(s.next(grant, t0), Step::Create);
        s.published(grant, "readers.1".into(), 1, t0);
        let revoke = s.key(&changed("1 write: deleted role admin.entra/g"), &binding("u1"));
        assert_ne!(grant, revoke);
        assert_eq!(
            s.next(revoke, t0 + Duration::from_secs(2)),
            Step::Create,
            "a revocation is not a repeat of its grant"
        );
        let warning = s.key(
            &Event { type_: EventType::Warning, ..changed("1 write: created role admin.entra/g") },
            &binding("u1"),
        );
        assert_ne!(grant, warning);
        let other = s.key(&changed("1 write: created role admin.entra/g"), &binding("u2"));
        assert_ne!(grant, other, "the same note about another object (a recreated binding) is another Event");
    }

    #[test]
    fn a_repeat_within_six_minutes_counts_in_the_series() {
        let mut s = Series::default();
        let t0 = Instant::now();
        let failed = s.key(&changed("connection refused"), &binding("u1"));
        assert_eq!(s.next(failed, t0), Step::Create);
        s.published(failed, "readers.1".into(), 1, t0);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(s.next(failed, t1), Step::Continue { name: "readers.1".into(), count: 2 });
        s.published(failed, "readers.1".into(), 2, t1);
        // The window runs from the last repeat.
        let t2 = t1 + SERIES_WINDOW - Duration::from_secs(1);
        assert_eq!(s.next(failed, t2), Step::Continue { name: "readers.1".into(), count: 3 });
        assert_eq!(s.next(failed, t1 + SERIES_WINDOW), Step::Create, "past the window, a new Event");
    }

    #[test]
    fn ended_series_are_forgotten_once_a_minute() {
        let mut s = Series::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            let k = s.key(&changed(&format!("write {i}")), &binding("u1"));
            s.next(k, t0);
            s.published(k, format!("readers.{i}"), 1, t0);
        }
        assert_eq!(s.recent.len(), 1000);
        let fresh = s.key(&changed("fresh"), &binding("u1"));
        // Not swept before the minute is up, even with every series ended.
        s.next(fresh, t0 + Duration::from_secs(59));
        assert_eq!(s.recent.len(), 1000);
        s.next(fresh, t0 + SERIES_WINDOW + SWEEP_EVERY);
        assert!(s.recent.is_empty(), "{} left", s.recent.len());
    }
}
