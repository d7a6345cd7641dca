//! TLS for the double: a rustls acceptor from PEM, and a throwaway PKI (CA,
//! server certificate for `localhost`/`127.0.0.1`, client certificate) made
//! with rcgen so tests can point the driver at `tlsCAFile`.

use anyhow::{Context, Result, anyhow};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Server-side TLS settings.
#[derive(Clone)]
pub struct TlsConfig {
    /// Server certificate chain, PEM, leaf first.
    pub cert_chain_pem: String,
    /// Server private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
    /// CA that signs client certificates. When set, a client certificate is
    /// verified if presented.
    pub client_ca_pem: Option<String>,
    /// Reject clients that present no certificate (needs `client_ca_pem`).
    pub require_client_cert: bool,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("client_ca", &self.client_ca_pem.is_some())
            .field("require_client_cert", &self.require_client_cert)
            .finish_non_exhaustive()
    }
}

/// Builds the acceptor for `config`.
pub(crate) fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor> {
    let provider = Arc::new(default_provider());
    let certs = CertificateDer::pem_slice_iter(config.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing server certificate PEM")?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in cert_chain_pem"));
    }
    let key = PrivateKeyDer::from_pem_slice(config.key_pem.as_bytes()).context("parsing server key PEM")?;
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &config.client_ca_pem {
        Some(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                roots.add(cert.context("parsing client CA PEM")?)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.require_client_cert {
                verifier.build()?
            } else {
                verifier.allow_unauthenticated().build()?
            };
            builder.with_client_cert_verifier(verifier)
        }
        None if config.require_client_cert => return Err(anyhow!("require_client_cert needs client_ca_pem")),
        None => builder.with_no_client_auth(),
    };
    let server = builder.with_single_cert(certs, key).context("server certificate and key")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// A throwaway PKI for tests.
#[derive(Clone)]
pub struct TestPki {
    /// The CA certificate, PEM: what the driver's `tlsCAFile` should hold.
    pub ca_cert_pem: String,
    /// Server certificate (for `localhost` and `127.0.0.1` unless
    /// [`TestPki::generate_for`] named others), PEM.
    pub server_cert_pem: String,
    /// Server key, PEM.
    pub server_key_pem: String,
    /// Client certificate (CN `dbgrant-test-client`), PEM.
    pub client_cert_pem: String,
    /// Client key, PEM.
    pub client_key_pem: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestPki(..)")
    }
}

/// Where [`TestPki::write_files`] put things.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// CA certificate (`tlsCAFile`).
    pub ca_file: PathBuf,
    /// Client certificate and key in one file (`tlsCertificateKeyFile`).
    pub client_pem_file: PathBuf,
}

impl TestPki {
    /// Generates a CA and certificates signed by it (ECDSA P-256), the
    /// server's for `localhost` and `127.0.0.1`.
    pub fn generate() -> Result<Self> {
        Self::generate_for(&["localhost", "127.0.0.1"])
    }

    /// [`TestPki::generate`] with the server certificate for `names` (DNS
    /// names or IP addresses), e.g. the host's address on a pod network.
    pub fn generate_for(names: &[&str]) -> Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "dbgrant test CA");
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server_params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        server_params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &ca)?;

        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params.distinguished_name.push(DnType::CommonName, "dbgrant-test-client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = client_params.signed_by(&client_key, &ca)?;

        Ok(Self {
            ca_cert_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// Server settings using this PKI's server certificate; client
    /// certificates from this CA are verified when presented.
    pub fn server_tls_config(&self) -> TlsConfig {
        TlsConfig {
            cert_chain_pem: self.server_cert_pem.clone(),
            key_pem: self.server_key_pem.clone(),
            client_ca_pem: Some(self.ca_cert_pem.clone()),
            require_client_cert: false,
        }
    }

    /// Client certificate followed by its key, as `tlsCertificateKeyFile`
    /// expects.
    pub fn client_certificate_key_pem(&self) -> String {
        format!("{}{}", self.client_cert_pem, self.client_key_pem)
    }

    /// Writes `ca.pem` and `client.pem` into `dir` (created if missing).
    pub fn write_files(&self, dir: &Path) -> std::io::Result<PkiFiles> {
        std::fs::create_dir_all(dir)?;
        let files = PkiFiles { ca_file: dir.join("ca.pem"), client_pem_file: dir.join("client.pem") };
        std::fs::write(&files.ca_file, &self.ca_cert_pem)?;
        std::fs::write(&files.client_pem_file, self.client_certificate_key_pem())?;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pki_builds_an_acceptor() {
        let pki = TestPki::generate().unwrap();
        assert!(pki.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        acceptor(&pki.server_tls_config()).unwrap();
        let mut required = pki.server_tls_config();
        required.require_client_cert = true;
        acceptor(&required).unwrap();
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        let config = TlsConfig {
            cert_chain_pem: "nope".into(),
            key_pem: "nope".into(),
            client_ca_pem: None,
            require_client_cert: false,
        };
        assert!(acceptor(&config).is_err());
    }
}
