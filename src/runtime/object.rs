//! What the runtime needs to know about any object a controller
//! reconciles: how to reach it through the API, and its key.

use std::fmt::Debug;

use kube::{
    Api, Client, Resource,
    core::{ClusterResourceScope, NamespaceResourceScope},
};
use serde::{Serialize, de::DeserializeOwned};

/// A custom resource a controller reconciles.
pub trait Managed:
    Resource<DynamicType = (), Scope: ScopedApi> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Managed for K where
    K: Resource<DynamicType = (), Scope: ScopedApi>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// How to address objects of one scope (namespaced or cluster-wide).
pub trait ScopedApi {
    /// The API for objects of kind `K` in `namespace` (ignored when the
    /// kind is cluster-wide).
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: Client, namespace: Option<&str>) -> Api<K>;
}

impl ScopedApi for NamespaceResourceScope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: Client, namespace: Option<&str>) -> Api<K> {
        Api::namespaced(client, namespace.unwrap_or_default())
    }
}

impl ScopedApi for ClusterResourceScope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: Client, _: Option<&str>) -> Api<K> {
        Api::all(client)
    }
}

/// The API that reaches `obj`.
pub fn api_for<K: Managed>(client: Client, obj: &K) -> Api<K> {
    <K::Scope as ScopedApi>::api(client, obj.meta().namespace.as_deref())
}

/// An object's key in logs and in the binding index: `namespace/name`, or
/// `name` for a cluster-wide kind.
pub fn key<K: Resource>(obj: &K) -> String {
    let name = obj.meta().name.as_deref().unwrap_or_default();
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// An object's key across kinds: `Kind/namespace/name`.
pub fn kind_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}", K::kind(&()), key(obj))
}
