//! The cluster's dbgrant objects, the state a plan starts from.

use std::path::Path;

use kube::{Api, Client, Resource, api::ListParams};
use serde::de::DeserializeOwned;

use super::objects::Objects;
use crate::api::{CosmosRoleBinding, CosmosRoleDefinition, CosmosTarget, MongoRoleBinding, MongoTarget};
use crate::runtime::object::key;

/// Every dbgrant object in the cluster `kubeconfig` names, or the inferred
/// one (read access to the five kinds is all it needs).
pub async fn read(kubeconfig: Option<&Path>) -> anyhow::Result<Objects> {
    let client = crate::runtime::client::connect(kubeconfig).await?;
    Ok(Objects {
        mongo_targets: list::<MongoTarget>(&client).await?,
        mongo_bindings: list::<MongoRoleBinding>(&client).await?,
        cosmos_targets: list::<CosmosTarget>(&client).await?,
        cosmos_definitions: list::<CosmosRoleDefinition>(&client).await?,
        cosmos_bindings: list::<CosmosRoleBinding>(&client).await?,
    })
}

async fn list<K>(client: &Client) -> anyhow::Result<std::collections::BTreeMap<String, K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("listing {} in the cluster: {e}", K::plural(&())))?;
    Ok(items.into_iter().map(|o| (key(&o), o)).collect())
}
