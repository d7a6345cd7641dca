//! Entra ID credentials, built with `azure_identity` 1.x for any of
//! dbgrant's Azure callers (the Cosmos DB backend's ARM client, MongoDB
//! OIDC), with every secret value removed from their errors.
//!
//! - workload identity: `WorkloadIdentityCredential` (the federated token
//!   file from `AZURE_FEDERATED_TOKEN_FILE`; tenant and client id from the
//!   spec, else the pod's `AZURE_TENANT_ID` / `AZURE_CLIENT_ID`);
//! - managed identity: `ManagedIdentityCredential` (system-assigned, or
//!   user-assigned by client id);
//! - client secret: `ClientSecretCredential`, secret from a Secret;
//! - client certificate: `ClientAssertionCredential` with an RS256 JWT
//!   signed here with `ring` from a PEM certificate and key in a Secret
//!   (azure_identity's own certificate credential needs OpenSSL).
//!
//! Every credential talks to its authority host over the transport of
//! [`super::transport`]. Errors are re-raised with every secret value the
//! credential uses removed, whatever the identity library put there.

use std::{fmt, sync::Arc, time::SystemTime};

use async_trait::async_trait;
use azure_core::{
    credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions},
    error::ErrorKind,
    http::{ClientMethodOptions, ClientOptions, Transport},
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
    signature::{RSA_PKCS1_SHA256, RsaKeyPair},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use secrecy::{ExposeSecret, SecretString};

use crate::api::AzureCredential;

/// The secret material a credential needs, read from Secrets.
pub enum Material {
    /// Workload identity: nothing secret (the token file is the pod's).
    Workload,
    /// Managed identity: nothing secret.
    Managed,
    ClientSecret(SecretString),
    /// PEM certificate chain and private key.
    Certificate(SecretString),
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Material::Workload => "Workload",
            Material::Managed => "Managed",
            Material::ClientSecret(_) => "ClientSecret",
            Material::Certificate(_) => "Certificate",
        };
        f.debug_tuple(kind).finish_non_exhaustive()
    }
}

/// A workload identity credential: the pod's federated token file
/// exchanged for an Entra token.
pub fn workload_identity(
    client_options: ClientOptions,
    tenant_id: Option<String>,
    client_id: Option<String>,
    token_file: Option<String>,
) -> azure_core::Result<Arc<dyn TokenCredential>> {
    let options = WorkloadIdentityCredentialOptions {
        credential_options: ClientAssertionCredentialOptions { client_options },
        client_id,
        tenant_id,
        token_file_path: token_file.map(Into::into),
    };
    Ok(WorkloadIdentityCredential::new(Some(options))?)
}

/// A managed identity credential: system-assigned, or user-assigned by
/// client id.
pub fn managed_identity(
    client_options: ClientOptions,
    client_id: Option<String>,
) -> azure_core::Result<Arc<dyn TokenCredential>> {
    let options =
        ManagedIdentityCredentialOptions { user_assigned_id: client_id.map(UserAssignedId::ClientId), client_options };
    Ok(ManagedIdentityCredential::new(Some(options))?)
}

/// Build the credential for `spec` with the material read for it, talking
/// to `authority_host` (https only) over `transport`. `env` reads the
/// process environment (a parameter so tests need not touch it).
pub fn build(
    spec: &AzureCredential,
    material: Material,
    authority_host: &str,
    transport: Transport,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Arc<dyn TokenCredential>, String> {
    let client_options = super::transport::client_options(authority_host, transport)?;
    let describe = |e: azure_core::Error| e.to_string();
    let (inner, secrets): (Arc<dyn TokenCredential>, Vec<SecretString>) = match (spec, material) {
        (AzureCredential { workload_identity: Some(w), .. }, Material::Workload) => {
            let tenant_id = w.tenant_id.clone().or_else(|| env("AZURE_TENANT_ID")).ok_or(
                "workloadIdentity needs a tenant id: set spec.credential.workloadIdentity.tenantId or AZURE_TENANT_ID in the operator pod",
            )?;
            let client_id = w.client_id.clone().or_else(|| env("AZURE_CLIENT_ID")).ok_or(
                "workloadIdentity needs a client id: set spec.credential.workloadIdentity.clientId or AZURE_CLIENT_ID in the operator pod",
            )?;
            let token_file = env("AZURE_FEDERATED_TOKEN_FILE").ok_or(
                "workloadIdentity needs AZURE_FEDERATED_TOKEN_FILE in the operator pod (install the chart with workload identity enabled)",
            )?;
            let credential = workload_identity(client_options, Some(tenant_id), Some(client_id), Some(token_file));
            (credential.map_err(describe)?, Vec::new())
        }
        (AzureCredential { managed_identity: Some(m), .. }, Material::Managed) => {
            (managed_identity(client_options, m.client_id.clone()).map_err(describe)?, Vec::new())
        }
        (AzureCredential { client_secret: Some(c), .. }, Material::ClientSecret(secret)) => {
            let options = ClientSecretCredentialOptions { client_options };
            let credential = ClientSecretCredential::new(
                &c.tenant_id,
                c.client_id.clone(),
                Secret::new(secret.expose_secret().to_string()),
                Some(options),
            )
            .map_err(describe)?;
            (credential, vec![secret])
        }
        (AzureCredential { client_certificate: Some(c), .. }, Material::Certificate(pem)) => {
            let audience = format!("{}/{}/oauth2/v2.0/token", authority_host.trim_end_matches('/'), c.tenant_id);
            let assertion = CertificateAssertion::from_pem(&c.client_id, &audience, pem.expose_secret())?;
            let options = ClientAssertionCredentialOptions { client_options };
            let credential =
                ClientAssertionCredential::new(c.tenant_id.clone(), c.client_id.clone(), assertion, Some(options))
                    .map_err(describe)?;
            (credential, vec![pem])
        }
        _ => {
            return Err(
                "set exactly one of workloadIdentity, managedIdentity, clientSecret and clientCertificate".into()
            );
        }
    };
    Ok(Arc::new(Redacting { inner, secrets }))
}

// === Redaction ===

/// Wraps a credential so its errors never carry a secret value.
struct Redacting {
    inner: Arc<dyn TokenCredential>,
    secrets: Vec<SecretString>,
}

impl fmt::Debug for Redacting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redacting").field("inner", &self.inner).finish_non_exhaustive()
    }
}

/// An error's text followed by each of its sources that it does not
/// already quote, joined with ": " — what the identity library knows,
/// once each.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// Remove every `secrets` value (and each of its lines, for PEM blocks)
/// from `text`.
pub fn redact(text: &str, secrets: &[SecretString]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        let s = s.expose_secret();
        for piece in std::iter::once(s).chain(s.lines()) {
            let piece = piece.trim();
            if piece.len() >= 8 {
                out = out.replace(piece, "[redacted]");
            }
        }
    }
    out
}

#[async_trait]
impl TokenCredential for Redacting {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.inner.get_token(scopes, options).await.map_err(|e| {
            azure_core::Error::with_message(ErrorKind::Credential, redact(&error_chain(&e), &self.secrets))
        })
    }
}

// === Client certificate ===

/// Signs client assertions (RFC 7523 JWTs) with a certificate's RSA key.
pub struct CertificateAssertion {
    client_id: String,
    audience: String,
    key: RsaKeyPair,
    x5t: String,
    x5t_s256: String,
}

impl fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("client_id", &self.client_id)
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl CertificateAssertion {
    /// Parse a PEM bundle holding the certificate (first) and its RSA
    /// private key (PKCS#8 or PKCS#1).
    pub fn from_pem(client_id: &str, audience: &str, pem: &str) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| "the certificate Secret is not valid PEM".to_string())?;
        let Some(cert) = certs.first() else {
            return Err("the certificate Secret holds no PEM CERTIFICATE block (PKCS#12 is not supported: store the certificate and key as PEM)".into());
        };
        let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| "the certificate Secret holds no PEM private key".to_string())?;
        let key = match &key {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err("the certificate's private key must be RSA (PKCS#8 or PKCS#1 PEM)".into()),
        }
        .map_err(|_| "the certificate's private key is not a usable RSA key".to_string())?;
        let x5t = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref()));
        let x5t_s256 = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, cert.as_ref()));
        Ok(Self { client_id: client_id.into(), audience: audience.into(), key, x5t, x5t_s256 })
    }

    /// A fresh signed assertion valid for ten minutes.
    pub fn sign(&self, now: SystemTime) -> Result<String, String> {
        let rng = SystemRandom::new();
        let mut jti = [0u8; 16];
        rng.fill(&mut jti).map_err(|_| "no randomness for the assertion id".to_string())?;
        let now = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5t": self.x5t, "x5t#S256": self.x5t_s256 });
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut signature)
            .map_err(|_| "signing the client assertion failed".to_string())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(&self, _options: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        self.sign(SystemTime::now()).map_err(|m| azure_core::Error::with_message(ErrorKind::Credential, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{ClientSecretCredential as SecretSpec, SecretKeyRef},
        azure::transport::transport,
    };

    const AUTHORITY: &str = "https://login.microsoftonline.com";

    fn client_secret() -> AzureCredential {
        AzureCredential {
            workload_identity: None,
            managed_identity: None,
            client_secret: Some(SecretSpec {
                tenant_id: "aa798838-6d8b-4587-bf07-595d548762c8".into(),
                client_id: "5f796ca5-e63f-42b0-9fef-be1cbe27d1ed".into(),
                secret_ref: SecretKeyRef { name: "s".into(), key: "k".into() },
            }),
            client_certificate: None,
        }
    }

    #[test]
    fn http_authority_is_refused() {
        let t = transport(None).unwrap();
        let secret = Material::ClientSecret("x".to_string().into());
        let err = build(&client_secret(), secret, "http://login.local", t, |_| None).unwrap_err();
        assert!(err.contains("https"), "{err}");
    }

    #[test]
    fn workload_identity_without_token_file_says_what_is_missing() {
        let mut c = client_secret();
        c.client_secret = None;
        c.workload_identity = Some(Default::default());
        let err = build(&c, Material::Workload, AUTHORITY, transport(None).unwrap(), |_| None).unwrap_err();
        assert!(err.contains("tenant id"), "{err}");
        let env =
            |k: &str| (k != "AZURE_FEDERATED_TOKEN_FILE").then(|| "aa798838-6d8b-4587-bf07-595d548762c8".to_string());
        let err = build(&c, Material::Workload, AUTHORITY, transport(None).unwrap(), env).unwrap_err();
        assert!(err.contains("AZURE_FEDERATED_TOKEN_FILE"), "{err}");
    }

    #[test]
    fn redaction_removes_secret_values_and_pem_lines() {
        let secrets = vec![
            SecretString::from("s3cr3t-value-123".to_string()),
            SecretString::from("-----BEGIN X-----\nAAAABBBBCCCCDDDD\n-----END X-----".to_string()),
        ];
        let text = "bad secret s3cr3t-value-123 and key line AAAABBBBCCCCDDDD";
        let out = redact(text, &secrets);
        assert!(!out.contains("s3cr3t-value-123"));
        assert!(!out.contains("AAAABBBBCCCCDDDD"));
        assert!(out.contains("[redacted]"));
    }

    #[test]
    fn certificate_assertion_is_a_verifiable_rs256_jwt() {
        let pem = include_str!("testdata/client-cert.pem");
        let a = CertificateAssertion::from_pem("client", "https://login.local/t/oauth2/v2.0/token", pem).unwrap();
        let jwt = a.sign(SystemTime::now()).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert!(header["x5t"].as_str().is_some_and(|s| !s.is_empty()));
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://login.local/t/oauth2/v2.0/token");
        assert_eq!(claims["iss"], "client");
        assert_eq!(claims["sub"], "client");
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            a.key.public().as_ref().to_vec(),
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).unwrap();
        // A PKCS#1 key works too.
        let cert_only: String = pem.split("-----BEGIN PRIVATE KEY-----").next().unwrap().to_string();
        let pkcs1 = format!("{cert_only}{}", include_str!("testdata/client-key-pkcs1.pem"));
        assert!(CertificateAssertion::from_pem("client", "aud", &pkcs1).is_ok());
        // And a certificate without its key is refused clearly.
        assert!(CertificateAssertion::from_pem("client", "aud", &cert_only).unwrap_err().contains("private key"));
    }

    #[test]
    fn certificate_without_pem_is_a_clear_error() {
        let err = CertificateAssertion::from_pem("c", "a", "MIIJ...binary").unwrap_err();
        assert!(err.contains("PKCS#12"), "{err}");
    }
}
