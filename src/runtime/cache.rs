//! Reflector caches shared by the controllers.

use std::{hash::Hash, time::Duration};

use futures::FutureExt;
use kube::runtime::reflector::Store;

/// Wait until a reflector cache has seen its first full list. A store
/// shared by several waiters does not wake every one of them reliably, so
/// readiness is polled rather than awaited once.
pub async fn wait_ready<K>(store: &Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Hash + Eq + Clone,
{
    while store.wait_until_ready().now_or_never().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
