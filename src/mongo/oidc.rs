//! MONGODB-OIDC for dbgrant itself: the driver's machine flow, fed with an
//! Entra access token that `azure_identity` gets for the operator pod's own
//! identity. No password or key is stored anywhere.
//!
//! - `workloadIdentity`: `WorkloadIdentityCredential` exchanges the
//!   federated service-account token in `AZURE_FEDERATED_TOKEN_FILE` (the
//!   workload identity webhook projects it and sets `AZURE_TENANT_ID` and
//!   `AZURE_CLIENT_ID`; the spec may override tenant and client id).
//! - `managedIdentity`: `ManagedIdentityCredential` (system-assigned, or
//!   user-assigned by client id).
//!
//! Both talk to the authority host (spec, else `AZURE_AUTHORITY_HOST`,
//! else the public cloud; https only) over dbgrant's shared Azure
//! transport and client options ([`crate::azure::transport`]: rustls +
//! ring with the target's extra CA roots), and are built by the shared
//! constructors of [`crate::azure::credential`]. The messages are this
//! module's (they name MongoTarget fields), and so is the error mapping:
//! it keeps the error kind needed to tell an unreachable authority
//! (transient) from a refusal.
//!
//! Tokens never leave this module except to the driver: errors are
//! re-worded, and anything token-shaped (a JWT, the federated token's
//! contents) is removed from the identity library's text.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use azure_core::{
    credentials::TokenCredential,
    error::ErrorKind as AzureErrorKind,
    http::{ExponentialRetryOptions, RetryOptions},
};
use futures::FutureExt;
use mongodb::options::{
    AuthMechanism, Credential,
    oidc::{Callback, IdpServerResponse},
};

use super::BACKEND;
use crate::{
    Error, Failure, Result,
    api::{DEFAULT_AUTHORITY_HOST, MongoOidcAuth, MongoOidcCredential},
};

/// How long one token request may take before the callback gives up (the
/// driver allows a machine callback 60 s).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Retries of one token request: a few quick ones, so an unreachable
/// authority is reported within seconds (the target retries later).
fn retry() -> RetryOptions {
    use azure_core::time::Duration as AzDuration;
    RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: AzDuration::milliseconds(250),
        max_retries: 3,
        max_total_elapsed: AzDuration::seconds(10),
        max_delay: AzDuration::seconds(4),
    })
}

/// A token request that failed, as the driver hands it back: the message
/// is secret-free and says what to fix. [`super::connection::classify`]
/// turns it into the target's condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError {
    /// What failed and what to check, without any token.
    pub message: String,
    /// Whether retrying later can help (the authority was unreachable).
    pub transient: bool,
}

/// The resolved settings of one target's OIDC identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `workloadIdentity` or `managedIdentity`.
    pub credential: MongoOidcCredential,
    /// Tenant (workload identity only).
    pub tenant_id: Option<String>,
    /// Client id (required for workload identity; user-assigned managed
    /// identity otherwise).
    pub client_id: Option<String>,
    /// Federated token file (workload identity only).
    pub token_file: Option<String>,
    /// Authority host, https, no trailing slash.
    pub authority_host: String,
    /// The scope tokens are requested for.
    pub scope: String,
}

fn config_error(target: &str, message: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: BACKEND,
        target: target.into(),
        message: format!("MONGODB-OIDC authentication is not configured: {message}"),
        failure: Failure::Misconfigured,
    }
}

/// Resolve `auth`'s defaults from the pod environment (`env` reads it; a
/// parameter so tests need not touch the process environment).
pub fn resolve(target: &str, auth: &MongoOidcAuth, env: impl Fn(&str) -> Option<String>) -> Result<Identity> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let authority_host = auth
        .authority_host
        .clone()
        .or_else(|| env("AZURE_AUTHORITY_HOST"))
        .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.into())
        .trim_end_matches('/')
        .to_string();
    match azure_core::http::Url::parse(&authority_host) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {}
        _ => {
            return Err(config_error(
                target,
                format!(
                    "the authority host {authority_host:?} must be an https URL (spec.auth.oidc.authorityHost or AZURE_AUTHORITY_HOST)"
                ),
            ));
        }
    }
    let (tenant_id, client_id, token_file) = match auth.credential {
        MongoOidcCredential::WorkloadIdentity => {
            let tenant_id = auth.tenant_id.clone().or_else(|| env("AZURE_TENANT_ID")).ok_or_else(|| {
                config_error(
                    target,
                    "workloadIdentity needs a tenant id: set spec.auth.oidc.tenantId, or AZURE_TENANT_ID in the operator pod (the workload identity webhook sets it when the pod is labelled azure.workload.identity/use: \"true\")",
                )
            })?;
            let client_id = auth.client_id.clone().or_else(|| env("AZURE_CLIENT_ID")).ok_or_else(|| {
                config_error(
                    target,
                    "workloadIdentity needs a client id: set spec.auth.oidc.clientId, or annotate the operator's ServiceAccount with azure.workload.identity/client-id so the webhook sets AZURE_CLIENT_ID",
                )
            })?;
            let token_file = env("AZURE_FEDERATED_TOKEN_FILE").ok_or_else(|| {
                config_error(
                    target,
                    "workloadIdentity needs AZURE_FEDERATED_TOKEN_FILE in the operator pod: install the chart with workloadIdentity.enabled=true and the Azure Workload Identity webhook in the cluster",
                )
            })?;
            (Some(tenant_id), Some(client_id), Some(token_file))
        }
        MongoOidcCredential::ManagedIdentity => (None, auth.client_id.clone(), None),
    };
    Ok(Identity {
        credential: auth.credential,
        tenant_id,
        client_id,
        token_file,
        authority_host,
        scope: auth.scope.clone(),
    })
}

/// Build the `azure_identity` credential for `identity`, trusting
/// `extra_ca_pem` for the authority host in addition to the system roots.
pub fn token_credential(
    target: &str,
    identity: &Identity,
    extra_ca_pem: Option<&str>,
) -> Result<Arc<dyn TokenCredential>> {
    let transport = crate::azure::transport::transport(extra_ca_pem)
        .map_err(|m| config_error(target, format!("spec.auth.oidc.caSecretRef: {m}")))?;
    let mut client_options = crate::azure::transport::client_options(&identity.authority_host, transport)
        .map_err(|m| config_error(target, m))?;
    client_options.retry = retry();
    let scrub = |e: azure_core::Error| scrub(&describe(&e), identity.token_file.as_deref());
    match identity.credential {
        MongoOidcCredential::WorkloadIdentity => crate::azure::credential::workload_identity(
            client_options,
            identity.tenant_id.clone(),
            identity.client_id.clone(),
            identity.token_file.clone(),
        )
        .map_err(|e| {
            config_error(target, format!("workloadIdentity: {}; check the operator pod's federated token", scrub(e)))
        }),
        MongoOidcCredential::ManagedIdentity => {
            crate::azure::credential::managed_identity(client_options, identity.client_id.clone())
                .map_err(|e| config_error(target, format!("managedIdentity: {}", scrub(e))))
        }
    }
}

/// The driver credential for `auth`: MONGODB-OIDC (source `$external`)
/// with a machine callback that asks `azure_identity` for a token each
/// time the driver needs one (the credential caches and refreshes it).
pub fn credential(
    target: &str,
    auth: &MongoOidcAuth,
    extra_ca_pem: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Credential> {
    let identity = resolve(target, auth, env)?;
    let token_credential = token_credential(target, &identity, extra_ca_pem)?;
    let target = Arc::<str>::from(target);
    let identity = Arc::new(identity);
    let callback = Callback::machine(move |_context| {
        let target = target.clone();
        let identity = identity.clone();
        let token_credential = token_credential.clone();
        async move {
            match fetch(&identity, token_credential.as_ref()).await {
                Ok((access_token, expires)) => {
                    Ok(IdpServerResponse::builder().access_token(access_token).expires(expires).build())
                }
                Err(e) => {
                    tracing::debug!(target = %target, transient = e.transient, "MONGODB-OIDC token request failed");
                    Err(mongodb::error::Error::custom(e))
                }
            }
        }
        .boxed()
    });
    let mut credential = Credential::builder().mechanism(AuthMechanism::MongoDbOidc).build();
    credential.oidc_callback = callback;
    Ok(credential)
}

/// Get one access token: its value and when it expires.
pub async fn fetch(
    identity: &Identity,
    token_credential: &dyn TokenCredential,
) -> Result<(String, Option<Instant>), TokenError> {
    let scopes = [identity.scope.as_str()];
    let who = match (&identity.credential, &identity.client_id) {
        (MongoOidcCredential::WorkloadIdentity, Some(c)) => format!("workload identity {c}"),
        (MongoOidcCredential::ManagedIdentity, Some(c)) => format!("managed identity {c}"),
        (MongoOidcCredential::ManagedIdentity, None) => "the system-assigned managed identity".to_string(),
        (MongoOidcCredential::WorkloadIdentity, None) => "the workload identity".to_string(),
    };
    let result = tokio::time::timeout(TOKEN_TIMEOUT, token_credential.get_token(&scopes, None)).await;
    let token = match result {
        Ok(Ok(token)) => token,
        Ok(Err(e)) => {
            let transient = is_transient(&e);
            let text = scrub(&describe(&e), identity.token_file.as_deref());
            let advice = if transient {
                format!("could not reach the Entra authority {}; will retry", identity.authority_host)
            } else {
                format!(
                    "Entra refused the token request; check that {who} exists in the tenant, that it trusts dbgrant's ServiceAccount token (federated credential) when using workload identity, and that the scope {} names an application in the tenant",
                    identity.scope
                )
            };
            return Err(TokenError {
                message: format!("MONGODB-OIDC authentication failed: no Entra token for {who} ({text}); {advice}"),
                transient,
            });
        }
        Err(_) => {
            return Err(TokenError {
                message: format!(
                    "MONGODB-OIDC authentication failed: the Entra authority {} did not answer within {}s; will retry",
                    identity.authority_host,
                    TOKEN_TIMEOUT.as_secs()
                ),
                transient: true,
            });
        }
    };
    let remaining = (token.expires_on - azure_core::time::OffsetDateTime::now_utc()).whole_seconds();
    let expires = Instant::now().checked_add(Duration::from_secs(u64::try_from(remaining).unwrap_or(0)));
    Ok((token.token.secret().to_string(), expires))
}

/// The error's text with its sources, once each, on one line, without the
/// per-request parts Entra adds (trace and correlation ids, timestamp): the
/// text ends up on the target's status, which must not change on every
/// retry.
fn describe(e: &azure_core::Error) -> String {
    stable(&crate::azure::credential::error_chain(e))
}

/// `text` on one line, minus `Trace ID: <id>`, `Correlation ID: <id>` and
/// `Timestamp: <date> <time>`.
fn stable(text: &str) -> String {
    let mut words = text.split_whitespace().peekable();
    let mut out: Vec<&str> = Vec::new();
    while let Some(w) = words.next() {
        match (w, words.peek().copied()) {
            ("Trace" | "Correlation", Some("ID:")) | ("Timestamp:", _) => {
                words.nth(1);
            }
            _ => out.push(w),
        }
    }
    out.join(" ")
}

/// Whether the token request failed because the authority could not be
/// reached (or was throttling / failing), rather than because it refused.
fn is_transient(e: &azure_core::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(az) = err.downcast_ref::<azure_core::Error>() {
            match az.kind() {
                AzureErrorKind::HttpResponse { status, .. } => {
                    let code = u16::from(*status);
                    return code == 429 || code >= 500;
                }
                AzureErrorKind::Io | AzureErrorKind::Connection => return true,
                _ => {}
            }
        }
        current = err.source();
    }
    false
}

/// Remove anything token-shaped from `text`: JWTs (three base64url parts,
/// the first starting `eyJ`) and the federated token file's contents.
pub fn scrub(text: &str, token_file: Option<&str>) -> String {
    let mut out = text.to_string();
    if let Some(contents) = token_file.and_then(|f| std::fs::read_to_string(f).ok()) {
        let contents = contents.trim();
        if contents.len() >= 8 {
            out = out.replace(contents, "[redacted]");
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("eyJ") {
        result.push_str(&rest[..i]);
        let candidate = &rest[i..];
        let end = candidate
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(candidate.len());
        let word = &candidate[..end];
        if word.matches('.').count() >= 2 {
            result.push_str("[redacted]");
        } else {
            result.push_str(word);
        }
        rest = &candidate[end..];
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "aa798838-6d8b-4587-bf07-595d548762c8";
    const CLIENT: &str = "5f796ca5-e63f-42b0-9fef-be1cbe27d1ed";

    fn auth() -> MongoOidcAuth {
        MongoOidcAuth {
            scope: "api://c0ffee00-0000-4000-8000-000000000001/.default".into(),
            credential: MongoOidcCredential::WorkloadIdentity,
            tenant_id: None,
            client_id: None,
            authority_host: None,
            ca_secret_ref: None,
            allow_insecure_transport: false,
        }
    }

    fn pod_env(k: &str) -> Option<String> {
        match k {
            "AZURE_TENANT_ID" => Some(TENANT.into()),
            "AZURE_CLIENT_ID" => Some(CLIENT.into()),
            "AZURE_FEDERATED_TOKEN_FILE" => Some("/var/run/secrets/azure/tokens/azure-identity-token".into()),
            _ => None,
        }
    }

    #[test]
    fn workload_identity_defaults_come_from_the_pod() {
        let id = resolve("t", &auth(), pod_env).unwrap();
        assert_eq!(id.tenant_id.as_deref(), Some(TENANT));
        assert_eq!(id.client_id.as_deref(), Some(CLIENT));
        assert_eq!(id.authority_host, "https://login.microsoftonline.com");
        let mut a = auth();
        a.client_id = Some("11111111-2222-4333-8444-555555555555".into());
        a.authority_host = Some("https://login.microsoftonline.us/".into());
        let id = resolve("t", &a, pod_env).unwrap();
        assert_eq!(id.client_id.as_deref(), Some("11111111-2222-4333-8444-555555555555"));
        assert_eq!(id.authority_host, "https://login.microsoftonline.us");
        let env_host =
            |k: &str| if k == "AZURE_AUTHORITY_HOST" { Some("https://login.local:8443/".into()) } else { pod_env(k) };
        assert_eq!(resolve("t", &auth(), env_host).unwrap().authority_host, "https://login.local:8443");
    }

    #[test]
    fn missing_pod_settings_say_what_to_set() {
        let err = resolve("orders", &auth(), |_| None).unwrap_err().to_string();
        assert!(err.contains("orders") && err.contains("spec.auth.oidc.tenantId"), "{err}");
        let no_file = |k: &str| if k == "AZURE_FEDERATED_TOKEN_FILE" { Some(" ".into()) } else { pod_env(k) };
        let err = resolve("orders", &auth(), no_file).unwrap_err().to_string();
        assert!(err.contains("AZURE_FEDERATED_TOKEN_FILE"), "{err}");
        let mut a = auth();
        a.authority_host = Some("http://login.local".into());
        let err = resolve("orders", &a, pod_env).unwrap_err().to_string();
        assert!(err.contains("https"), "{err}");
    }

    #[test]
    fn managed_identity_needs_nothing_from_the_pod() {
        let mut a = auth();
        a.credential = MongoOidcCredential::ManagedIdentity;
        let id = resolve("t", &a, |_| None).unwrap();
        assert_eq!((id.tenant_id, id.client_id, id.token_file), (None, None, None));
        assert!(token_credential("t", &resolve("t", &a, |_| None).unwrap(), None).is_ok());
    }

    #[test]
    fn a_bad_ca_bundle_is_a_clear_error() {
        let mut a = auth();
        a.credential = MongoOidcCredential::ManagedIdentity;
        let id = resolve("t", &a, |_| None).unwrap();
        let err = token_credential("t", &id, Some("not pem")).expect_err("bad CA refused").to_string();
        assert!(err.contains("caSecretRef"), "{err}");
    }

    #[test]
    fn an_unreadable_token_file_is_reported_without_contents() {
        let missing = |k: &str| {
            if k == "AZURE_FEDERATED_TOKEN_FILE" { Some("/nonexistent/dbgrant/token".into()) } else { pod_env(k) }
        };
        let id = resolve("t", &auth(), missing).unwrap();
        let err = token_credential("t", &id, None).expect_err("missing file refused").to_string();
        assert!(err.contains("federated token"), "{err}");
    }

    #[test]
    fn entra_request_ids_are_dropped_so_status_is_stable() {
        let text = "AADSTS700211: No matching federated identity record found.\nTrace ID: b2e35a61 Correlation ID: c30c9fe6 Timestamp: 2026-11-23 18:11:05Z To troubleshoot, visit https://aka.ms/x";
        assert_eq!(
            stable(text),
            "AADSTS700211: No matching federated identity record found. To troubleshoot, visit https://aka.ms/x"
        );
    }

    #[test]
    fn scrub_removes_jwts_and_the_token_file() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let text = format!("AADSTS70021: no match for assertion {jwt}, see eyJustAWord.");
        let out = scrub(&text, None);
        assert!(!out.contains(jwt), "{out}");
        assert!(out.contains("[redacted]") && out.contains("eyJustAWord"), "{out}");
        let dir = std::env::temp_dir().join(format!("dbgrant-scrub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "opaque-federated-token-value\n").unwrap();
        let out = scrub("bad assertion opaque-federated-token-value", file.to_str());
        assert!(!out.contains("opaque-federated-token-value"), "{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
