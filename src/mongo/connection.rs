//! Connecting to a MongoTarget with the official driver: connection
//! string, TLS and the operator's own credentials, all from Secrets in
//! the operator namespace.

use std::time::Duration;

use bson::{Document, doc};
use mongodb::{
    Client,
    options::{AuthMechanism, ClientOptions, Credential, Tls, TlsOptions},
};

use super::BACKEND;
use crate::{
    Error, Result,
    api::MongoTarget,
    runtime::{
        context::Context,
        secrets::{self, ExposeSecret},
    },
};

/// Actions dbgrant needs on the cluster (any database) to manage OIDC
/// roles and users.
pub const REQUIRED_ACTIONS: &[&str] =
    &["createRole", "dropRole", "grantRole", "revokeRole", "viewRole", "createUser", "dropUser", "viewUser"];

/// A connected client for one target, plus a lock that serialises writes
/// (every user/role command takes a server-wide lock).
pub struct TargetConnection {
    /// The driver client.
    pub client: Client,
    /// Held while writing to this target.
    pub write_lock: tokio::sync::Mutex<()>,
    /// The target generation the client was built for.
    pub generation: Option<i64>,
    /// Whether TLS certificates are verified (`Enabled`, `Disabled`,
    /// `NotUsed`), decided while building the client.
    pub tls_verification: &'static str,
}

/// What a successful probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// `buildInfo.version`.
    pub version: String,
    /// Whether TLS certificates are verified.
    pub tls_verification: &'static str,
}

fn backend_error(target: &str, message: impl Into<String>, transient: bool) -> Error {
    Error::Backend { backend: BACKEND, target: target.into(), message: message.into(), transient }
}

/// Build driver options for `target`. Secrets are read from the operator
/// namespace; their values never appear in errors.
pub async fn client_options(ctx: &Context, target: &MongoTarget) -> Result<(ClientOptions, &'static str)> {
    let name = target.metadata.name.clone().unwrap_or_default();
    let spec = &target.spec;
    let uri = secrets::read_key(&ctx.client, &ctx.namespace, &spec.connection.uri_secret_ref).await?;
    let mut opts = ClientOptions::parse(uri.expose_secret()).await.map_err(|e| {
        if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::DnsResolve { .. }) {
            return backend_error(
                &name,
                "the mongodb+srv host in the connection string could not be resolved (DNS SRV lookup failed); will retry",
                true,
            );
        }
        // The driver's parse error can quote the URI; say where it is instead.
        backend_error(
            &name,
            format!(
                "the connection string in Secret {}/{} key {:?} is not a valid MongoDB URI",
                ctx.namespace, spec.connection.uri_secret_ref.name, spec.connection.uri_secret_ref.key
            ),
            false,
        )
    })?;
    opts.app_name = Some("dbgrant".into());
    opts.connect_timeout = Some(Duration::from_secs(5));
    opts.server_selection_timeout = Some(Duration::from_secs(5));

    let mut tls_verification = match &opts.tls {
        Some(Tls::Enabled(_)) => "Enabled",
        _ => "NotUsed",
    };
    if let Some(tls) = &spec.connection.tls {
        let mut t = match opts.tls.take() {
            Some(Tls::Enabled(t)) => t,
            _ => TlsOptions::default(),
        };
        if let Some(ca) = &tls.ca_secret_ref {
            let pem = secrets::read_key(&ctx.client, &ctx.namespace, ca).await?;
            t.ca_file_path = Some(write_private_file(&name, "ca.pem", pem.expose_secret().as_bytes())?);
        }
        if let Some(cert) = &tls.client_certificate_secret_ref {
            let s = secrets::read(&ctx.client, &ctx.namespace, &cert.name).await?;
            let crt = secrets::key(&s, &ctx.namespace, &cert.name, "tls.crt")?;
            let key = secrets::key(&s, &ctx.namespace, &cert.name, "tls.key")?;
            let both = format!("{}\n{}\n", crt.expose_secret(), key.expose_secret());
            t.cert_key_file_path = Some(write_private_file(&name, "client.pem", both.as_bytes())?);
        }
        if tls.insecure_skip_verify {
            t.allow_invalid_certificates = Some(true);
            tls_verification = "Disabled";
        } else {
            tls_verification = "Enabled";
        }
        opts.tls = Some(Tls::Enabled(t));
    }

    let auth = &spec.auth;
    if let Some(scram) = &auth.scram {
        let user = secrets::read_key(&ctx.client, &ctx.namespace, &scram.username_secret_ref).await?;
        let pass = secrets::read_key(&ctx.client, &ctx.namespace, &scram.password_secret_ref).await?;
        opts.credential = Some(
            Credential::builder()
                .mechanism(AuthMechanism::ScramSha256)
                .username(user.expose_secret().to_string())
                .password(pass.expose_secret().to_string())
                .source(scram.source.clone().unwrap_or_else(|| "admin".into()))
                .build(),
        );
    } else if auth.x509.is_some() {
        opts.credential = Some(Credential::builder().mechanism(AuthMechanism::MongoDbX509).build());
    } else if auth.oidc.is_some() {
        return Err(backend_error(
            &name,
            "operator authentication with MONGODB-OIDC is not available in this version; use scram or x509",
            false,
        ));
    }
    Ok((opts, tls_verification))
}

/// Write key material to a private temporary file the driver can read.
/// The driver only accepts file paths for CA and client certificates.
fn write_private_file(target: &str, file: &str, contents: &[u8]) -> Result<std::path::PathBuf> {
    use std::io::Write;
    let dir = std::env::temp_dir().join("dbgrant").join(target);
    let io =
        |e: std::io::Error| backend_error(target, format!("cannot write TLS material to a temporary file: {e}"), true);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let path = dir.join(file);
    let mut f = std::fs::File::create(&path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    f.write_all(contents).map_err(io)?;
    Ok(path)
}

/// Connect and check that dbgrant is authenticated with the rights it
/// needs. Returns the server version.
pub async fn probe(target: &str, client: &Client, tls_verification: &'static str) -> Result<Probe> {
    let admin = client.database("admin");
    let info = admin.run_command(doc! { "buildInfo": 1 }).await.map_err(|e| classify(target, "buildInfo", &e))?;
    let version = info.get_str("version").unwrap_or("unknown").to_string();
    let status = admin
        .run_command(doc! { "connectionStatus": 1, "showPrivileges": true })
        .await
        .map_err(|e| classify(target, "connectionStatus", &e))?;
    let missing = missing_actions(&status);
    if !missing.is_empty() {
        return Err(backend_error(
            target,
            format!(
                "dbgrant's MongoDB identity lacks {} on the admin database; grant it the userAdminAnyDatabase or userAdmin@admin role",
                missing.join(", ")
            ),
            false,
        ));
    }
    Ok(Probe { version, tls_verification })
}

/// Which of [`REQUIRED_ACTIONS`] the authenticated user lacks, from a
/// `connectionStatus` reply with privileges.
pub fn missing_actions(status: &Document) -> Vec<String> {
    let Ok(auth) = status.get_document("authInfo") else {
        return REQUIRED_ACTIONS.iter().map(|s| s.to_string()).collect();
    };
    let mut have = std::collections::BTreeSet::new();
    if let Ok(privs) = auth.get_array("authenticatedUserPrivileges") {
        for p in privs.iter().filter_map(|p| p.as_document()) {
            let applies = p.get_document("resource").is_ok_and(|r| {
                let db = r.get_str("db").unwrap_or("-");
                r.get_str("collection").is_ok() && (db.is_empty() || db == "admin")
            });
            if applies && let Ok(actions) = p.get_array("actions") {
                have.extend(actions.iter().filter_map(|a| a.as_str()).map(str::to_string));
            }
        }
    }
    let roles = auth.get_array("authenticatedUserRoles").map(|r| r.to_vec()).unwrap_or_default();
    let is_root = roles.iter().filter_map(|r| r.as_document()).any(|r| {
        matches!(r.get_str("role"), Ok("root" | "__system" | "userAdminAnyDatabase"))
            || (r.get_str("role") == Ok("userAdmin") && r.get_str("db") == Ok("admin"))
    });
    if is_root || have.contains("anyAction") {
        return Vec::new();
    }
    REQUIRED_ACTIONS.iter().filter(|a| !have.contains(**a)).map(|a| a.to_string()).collect()
}

/// Server error code of a driver error, if it is a command error.
pub fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Turn a driver error into an operator error that says what to do, never
/// quoting connection strings or credentials.
pub fn classify(target: &str, operation: &str, e: &mongodb::error::Error) -> Error {
    use mongodb::error::ErrorKind;
    let (message, transient) = match e.kind.as_ref() {
        ErrorKind::Authentication { .. } => (
            "authentication failed: check the credentials in the target's Secrets (they may have been rotated)"
                .to_string(),
            false,
        ),
        ErrorKind::ServerSelection { .. } => (
            "server unreachable: no MongoDB server answered within 5s; check the connection string, network policy and TLS settings".to_string(),
            true,
        ),
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            (format!("network error during {operation}; will retry"), true)
        }
        ErrorKind::Command(c) if c.code == 13 => (
            format!("{operation} unauthorized (code 13): dbgrant's MongoDB identity lacks user administration rights"),
            false,
        ),
        ErrorKind::Command(c) => (format!("{operation} failed: {} (code {})", c.message, c.code), false),
        _ => (format!("{operation} failed: {e}"), true),
    };
    backend_error(target, message, transient)
}
