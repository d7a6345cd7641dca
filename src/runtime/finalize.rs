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

use std::{fmt::Debug, sync::Arc};

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;

use crate::Result;

/// How often a finalizer patch that lost a race is retried on a fresh copy.
const CONFLICT_RETRIES: usize = 3;

/// Make sure `obj` carries `finalizer` unless it is being deleted, and
/// return the object as the apiserver now has it. The patch carries the
/// resourceVersion it was computed from, so a concurrent change to the
/// finalizers (someone else's) is never overwritten: it is retried on a
/// fresh copy.
pub async fn ensure<K>(api: &Api<K>, finalizer: &str, obj: Arc<K>) -> Result<Arc<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut obj = obj;
    for attempt in 0..=CONFLICT_RETRIES {
        if obj.meta().deletion_timestamp.is_some() || obj.finalizers().iter().any(|f| f == finalizer) {
            return Ok(obj);
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
            Ok(updated) => return Ok(Arc::new(updated)),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < CONFLICT_RETRIES => {
                tracing::debug!(object = %obj.name_any(), "finalizer patch conflicted; retrying on a fresh copy");
                obj = Arc::new(api.get(&obj.name_any()).await?);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(obj)
}
