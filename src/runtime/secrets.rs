//! Reading target credentials from Secrets in the operator namespace.
//! Values are wrapped in [`SecretString`] so they never reach a log line.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
pub use secrecy::{ExposeSecret, SecretString};

use crate::{Error, Result, api::SecretKeyRef};

/// Read one key of a Secret in `namespace`.
pub async fn read_key(client: &Client, namespace: &str, r: &SecretKeyRef) -> Result<SecretString> {
    let secret = read(client, namespace, &r.name).await?;
    key(&secret, namespace, &r.name, &r.key)
}

/// Read a whole Secret in `namespace`.
pub async fn read(client: &Client, namespace: &str, name: &str) -> Result<Secret> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(secret_error(namespace, name, "not found; create it in the operator namespace")),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            Err(secret_error(namespace, name, "forbidden; the operator may only read Secrets in its own namespace"))
        }
        Err(e) => Err(Error::Kube(e)),
    }
}

/// One key of an already-read Secret, as UTF-8.
pub fn key(secret: &Secret, namespace: &str, name: &str, key: &str) -> Result<SecretString> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.clone().into_bytes()))
        .ok_or_else(|| secret_error(namespace, name, &format!("has no key {key:?}")))?;
    let text =
        String::from_utf8(bytes).map_err(|_| secret_error(namespace, name, &format!("key {key:?} is not UTF-8")))?;
    Ok(SecretString::from(text.trim_end_matches(['\n', '\r']).to_string()))
}

fn secret_error(namespace: &str, name: &str, problem: &str) -> Error {
    Error::Secret { namespace: namespace.into(), name: name.into(), problem: problem.into() }
}
