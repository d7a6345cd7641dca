//! The HTTPS transport every Azure call of dbgrant uses — Azure Resource
//! Manager and Entra ID alike: reqwest on rustls with ring, the system
//! roots plus an optional extra CA (the knob private clouds, and the test
//! doubles, need), and client options with an https-only authority host
//! (`azure_core`'s bearer token policy refuses anything else).

use std::sync::Arc;

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    http::{ClientOptions, Transport},
};

/// An HTTP transport trusting the system roots plus `extra_ca_pem`.
pub fn transport(extra_ca_pem: Option<&str>) -> Result<Transport, String> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|_| "the CA bundle is not PEM certificates".to_string())?;
        if certs.is_empty() {
            return Err("the CA bundle holds no PEM certificate".into());
        }
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder.build().map_err(|e| format!("cannot build the HTTPS client: {e}"))?;
    Ok(Transport::new(Arc::new(client)))
}

/// `host` as an authority host: an https URL, without a trailing slash.
pub fn authority_host(host: &str) -> Result<String, String> {
    match azure_core::http::Url::parse(host) {
        Ok(u) if u.scheme() == "https" => Ok(host.trim_end_matches('/').to_string()),
        Ok(_) => Err(format!("the authority host {host} must use https")),
        Err(_) => Err(format!("the authority host {host:?} is not a URL")),
    }
}

/// Client options for an `azure_identity` credential: `transport`, and
/// `authority_host` (checked by [`authority_host`]) as a custom cloud.
pub fn client_options(authority: &str, transport: Transport) -> Result<ClientOptions, String> {
    let mut custom = CustomConfiguration::default();
    custom.authority_host = authority_host(authority)?;
    Ok(ClientOptions {
        transport: Some(transport),
        cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_bundle_is_reported_not_panicked() {
        assert!(transport(Some("not pem")).is_err());
        assert!(transport(Some("")).is_err());
    }

    #[test]
    fn the_authority_host_must_be_https() {
        assert_eq!(authority_host("https://login.local/").unwrap(), "https://login.local");
        assert!(authority_host("http://login.local").unwrap_err().contains("https"));
        assert!(authority_host("login").unwrap_err().contains("not a URL"));
    }
}
