//! Where a CosmosTarget's Azure Resource Manager and Entra ID live:
//! endpoints, token audience and the pinned api-version, defaults resolved
//! (public cloud, or a sovereign or private one from the spec).

use crate::api::{CosmosTargetSpec, DEFAULT_API_VERSION, DEFAULT_ARM_ENDPOINT, DEFAULT_AUTHORITY_HOST};

/// Endpoints and pinning for one target, defaults resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cloud {
    /// ARM endpoint (https, no trailing slash).
    pub arm_endpoint: String,
    /// Entra authority host (https, no trailing slash).
    pub authority_host: String,
    /// Token audience for ARM.
    pub audience: String,
    /// `Microsoft.DocumentDB` api-version.
    pub api_version: String,
}

/// Resolve a target's cloud settings. The authority host comes from the
/// spec, else `AZURE_AUTHORITY_HOST` (set by the workload identity
/// webhook), else the public cloud.
pub fn cloud(spec: &CosmosTargetSpec, env_authority_host: Option<String>) -> Cloud {
    let c = spec.cloud.clone().unwrap_or_default();
    let arm_endpoint = c.arm_endpoint.unwrap_or_else(|| DEFAULT_ARM_ENDPOINT.into()).trim_end_matches('/').to_string();
    let authority_host = c
        .authority_host
        .or(env_authority_host.filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.into())
        .trim_end_matches('/')
        .to_string();
    let audience = c.arm_audience.unwrap_or_else(|| arm_endpoint.clone());
    let api_version = c.api_version.unwrap_or_else(|| DEFAULT_API_VERSION.into());
    Cloud { arm_endpoint, authority_host, audience, api_version }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AzureCloud, AzureCredential, CosmosPolicy};

    fn spec(cloud: Option<AzureCloud>) -> CosmosTargetSpec {
        CosmosTargetSpec {
            subscription_id: "c9e6de92-9aba-45b0-85a1-5decf672d856".into(),
            resource_group: "rg".into(),
            account_name: "acct".into(),
            cloud,
            credential: AzureCredential {
                workload_identity: None,
                managed_identity: Some(Default::default()),
                client_secret: None,
                client_certificate: None,
            },
            policy: CosmosPolicy::default(),
            mode: Default::default(),
        }
    }

    #[test]
    fn cloud_defaults_and_overrides() {
        let c = cloud(&spec(None), None);
        assert_eq!(c.arm_endpoint, "https://management.azure.com");
        assert_eq!(c.authority_host, "https://login.microsoftonline.com");
        assert_eq!(c.audience, "https://management.azure.com");
        assert_eq!(c.api_version, "2024-11-15");
        let env = cloud(&spec(None), Some("https://login.microsoftonline.us/".into()));
        assert_eq!(env.authority_host, "https://login.microsoftonline.us");
        let custom = cloud(
            &spec(Some(AzureCloud {
                arm_endpoint: Some("https://arm.local:8443/".into()),
                authority_host: Some("https://login.local".into()),
                arm_audience: Some("https://management.core.local/".into()),
                api_version: Some("2025-04-15".into()),
                ca_secret_ref: None,
            })),
            Some("https://ignored".into()),
        );
        assert_eq!(custom.arm_endpoint, "https://arm.local:8443");
        assert_eq!(custom.authority_host, "https://login.local");
        assert_eq!(custom.audience, "https://management.core.local/");
        assert_eq!(custom.api_version, "2025-04-15");
    }
}
