//! dbgrant's Event publisher on the real apiserver, as the operator's
//! ServiceAccount (its RBAC grants `create` and `patch` on
//! `events.k8s.io` Events): a repeat counts in the series of the first
//! Event, which keeps its note; an Event that says something else about the
//! same object is its own, however soon it follows.

use anyhow::Result;
use dbgrant::runtime::events::{Event, EventType, Publisher};
use k8s_openapi::api::{core::v1::ObjectReference, events::v1 as events};
use kube::{Api, api::ListParams};

use crate::common::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_repeats_of_an_event_fold_into_a_series() -> Result<()> {
    let (cluster, ns, dump) = setup("events").await?;
    let publisher = Publisher::new(cluster.operator.clone(), "dbgrant", "e2e-events");
    let binding = ObjectReference {
        api_version: Some("dbgrant.io/v1alpha1".into()),
        kind: Some("MongoRoleBinding".into()),
        namespace: Some(ns.name.clone()),
        name: Some("readers".into()),
        uid: Some(uuid::Uuid::new_v4().to_string()),
        ..Default::default()
    };
    let event = |note| Event { type_: EventType::Normal, reason: "AccessChanged", action: "Reconcile", note };
    let grant = "1 write: created role admin.entra/g";
    publisher.publish(&event(grant), &binding).await?;
    publisher.publish(&event("1 write: deleted role admin.entra/g"), &binding).await?;
    publisher.publish(&event(grant), &binding).await?;
    publisher.publish(&event(grant), &binding).await?;

    let api: Api<events::Event> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let mut seen: Vec<(String, i32)> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|e| {
            assert_eq!(e.regarding.as_ref().and_then(|r| r.uid.clone()), binding.uid, "{e:?}");
            assert_eq!(e.reporting_controller.as_deref(), Some("dbgrant"), "{e:?}");
            assert_eq!(e.reporting_instance.as_deref(), Some("e2e-events"), "{e:?}");
            (e.note.unwrap_or_default(), e.series.map_or(1, |s| s.count))
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![(grant.to_string(), 3), ("1 write: deleted role admin.entra/g".to_string(), 1)],
        "the grant three times (one Event, a series of 3) and the revocation once"
    );
    dump.passed();
    Ok(())
}
