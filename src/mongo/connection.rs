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

/// Actions dbgrant needs on its ownership ledger's database.
pub const LEDGER_ACTIONS: &[&str] = &["find", "insert", "update", "remove"];

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
    /// The last transient failure of a sync on this connection and until
    /// when other syncs fail fast with it (see [`FAIL_FAST_FOR`]).
    pub unavailable: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How [`classify`] starts the message of a server selection timeout.
const UNREACHABLE: &str = "server unreachable";

/// After a sync finds a target unreachable (or failing over), other syncs
/// on it fail at once for this long instead of each waiting out the
/// driver's 5 s server selection while holding the target's write lock and
/// a reconcile slot: N queued changes on a target that is down would
/// otherwise stall every other target's reconciles for N × 5 s.
pub const FAIL_FAST_FOR: Duration = Duration::from_secs(10);

impl TargetConnection {
    /// A new connection for `client`.
    pub fn new(client: Client, generation: Option<i64>, tls_verification: &'static str) -> Self {
        Self {
            client,
            write_lock: tokio::sync::Mutex::new(()),
            generation,
            tls_verification,
            unavailable: std::sync::Mutex::new(None),
        }
    }

    /// The recent transient failure as an error, while it is fresh.
    pub fn check_available(&self, target: &str) -> Result<()> {
        let unavailable = self.unavailable.lock().unwrap_or_else(|p| p.into_inner());
        match &*unavailable {
            Some((until, message)) if std::time::Instant::now() < *until => {
                Err(backend_error(target, message.clone(), true))
            }
            _ => Ok(()),
        }
    }

    /// Record how a sync ended: finding no server (a failure that took the
    /// whole server selection timeout) makes the next syncs fail fast for
    /// [`FAIL_FAST_FOR`]; success clears it. Quick failures (a command
    /// error, a dropped connection) are left to each binding's backoff.
    pub fn record<T>(&self, result: &Result<T>) {
        let mut unavailable = self.unavailable.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => *unavailable = None,
            Err(Error::Backend { transient: true, message, .. }) if message.starts_with(UNREACHABLE) => {
                *unavailable = Some((std::time::Instant::now() + FAIL_FAST_FOR, message.clone()))
            }
            Err(_) => {}
        }
    }
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
    } else if let Some(oidc) = &auth.oidc {
        let ca = match &oidc.ca_secret_ref {
            Some(r) => Some(secrets::read_key(&ctx.client, &ctx.namespace, r).await?),
            None => None,
        };
        let env = |k: &str| std::env::var(k).ok();
        opts.credential = Some(super::oidc::credential(&name, oidc, ca.as_ref().map(|c| c.expose_secret()), env)?);
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
                "dbgrant's MongoDB identity lacks {}; grant it the roles userAdmin@admin (or userAdminAnyDatabase) and readWrite@{} (the ownership ledger)",
                missing.join(", "),
                crate::mongo::sync::LEDGER_DB
            ),
            false,
        ));
    }
    Ok(Probe { version, tls_verification })
}

/// Which rights the authenticated user lacks, from a `connectionStatus`
/// reply with privileges: [`REQUIRED_ACTIONS`] on `admin` (user and role
/// administration), then [`LEDGER_ACTIONS`] on the ownership ledger's
/// database, named as `dbgrant.<action>`.
pub fn missing_actions(status: &Document) -> Vec<String> {
    let Ok(auth) = status.get_document("authInfo") else {
        let mut all: Vec<String> = REQUIRED_ACTIONS.iter().map(|s| s.to_string()).collect();
        all.extend(LEDGER_ACTIONS.iter().map(|a| format!("{}.{a}", crate::mongo::sync::LEDGER_DB)));
        return all;
    };
    let roles: Vec<(String, String)> = auth
        .get_array("authenticatedUserRoles")
        .map(|r| r.to_vec())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.as_document())
        .map(|r| (r.get_str("role").unwrap_or("").to_string(), r.get_str("db").unwrap_or("").to_string()))
        .collect();
    let has_role = |role: &str, db: &str| roles.iter().any(|(r, d)| r == role && d == db);
    // (db the privilege applies to, or "" for any database; its actions)
    let mut privileges: Vec<(String, Vec<String>)> = Vec::new();
    if let Ok(privs) = auth.get_array("authenticatedUserPrivileges") {
        for p in privs.iter().filter_map(|p| p.as_document()) {
            let Ok(r) = p.get_document("resource") else { continue };
            let db = if r.get_bool("anyResource").unwrap_or(false) { "" } else { r.get_str("db").unwrap_or("-") };
            if r.get_str("collection").is_ok() || db.is_empty() {
                let actions = p.get_array("actions").map(|a| a.to_vec()).unwrap_or_default();
                privileges
                    .push((db.to_string(), actions.iter().filter_map(|a| a.as_str()).map(str::to_string).collect()));
            }
        }
    }
    let has_action = |db: &str, action: &str| {
        privileges
            .iter()
            .any(|(d, acts)| (d.is_empty() || d == db) && acts.iter().any(|a| a == action || a == "anyAction"))
    };
    let superuser = has_role("root", "admin") || has_role("__system", "admin");
    let mut missing = Vec::new();
    let user_admin = superuser || has_role("userAdminAnyDatabase", "admin") || has_role("userAdmin", "admin");
    if !user_admin {
        missing.extend(REQUIRED_ACTIONS.iter().filter(|a| !has_action("admin", a)).map(|a| a.to_string()));
    }
    let ledger_db = crate::mongo::sync::LEDGER_DB;
    let ledger = superuser
        || has_role("readWriteAnyDatabase", "admin")
        || has_role("readWrite", ledger_db)
        || has_role("dbOwner", ledger_db);
    if !ledger {
        missing.extend(LEDGER_ACTIONS.iter().filter(|a| !has_action(ledger_db, a)).map(|a| format!("{ledger_db}.{a}")));
    }
    missing
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
        ErrorKind::Custom(_) if let Some(t) = e.get_custom::<super::oidc::TokenError>() => {
            (t.message.clone(), t.transient)
        }
        ErrorKind::Authentication { message, .. } if message.starts_with("MONGODB-OIDC") => (
            "MONGODB-OIDC authentication failed: the server refused dbgrant's Entra token; check that the server's oidcIdentityProviders entry names the token's issuer (the tenant) and audience (the application in spec.auth.oidc.scope), and that dbgrant's identity has a role there".to_string(),
            false,
        ),
        ErrorKind::Authentication { .. } => (
            "authentication failed: check the credentials in the target's Secrets (they may have been rotated)"
                .to_string(),
            false,
        ),
        // Starts with UNREACHABLE: TargetConnection::record keys on it.
        ErrorKind::ServerSelection { .. } => (
            "server unreachable: no MongoDB server answered within 5s; check the connection string, network policy and TLS settings".to_string(),
            true,
        ),
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            (format!("network error during {operation}; will retry"), true)
        }
        // Failover and shutdown: the primary stepped down or is going
        // away (NotWritablePrimary, NotPrimaryNoSecondaryOk,
        // NotPrimaryOrSecondary, PrimarySteppedDown, ShutdownInProgress,
        // Interrupted*, HostUnreachable, HostNotFound, NetworkTimeout,
        // SocketException, ExceededTimeLimit). Retrying soon succeeds.
        ErrorKind::Command(c)
            if matches!(c.code, 6 | 7 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436) =>
        {
            (format!("{operation} failed: {} (code {}); will retry", c.message, c.code), true)
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

#[cfg(test)]
mod tests {
    use bson::{Bson, doc};

    use super::*;

    fn status(roles: &[(&str, &str)], privileges: Vec<Document>) -> Document {
        let roles: Vec<Bson> = roles.iter().map(|(r, d)| Bson::Document(doc! {"role": *r, "db": *d})).collect();
        doc! {"authInfo": {"authenticatedUserRoles": roles, "authenticatedUserPrivileges": privileges}, "ok": 1}
    }

    fn command_error(code: i32, name: &str) -> mongodb::error::Error {
        let e: mongodb::error::CommandError =
            bson::from_document(doc! {"code": code, "codeName": name, "errmsg": "injected"}).expect("command error");
        mongodb::error::ErrorKind::Command(e).into()
    }

    #[test]
    fn failover_errors_are_transient_and_rights_errors_are_not() {
        for (code, name) in [(10107, "NotWritablePrimary"), (189, "PrimarySteppedDown"), (91, "ShutdownInProgress")] {
            let e = classify("t", "createRole", &command_error(code, name));
            assert!(matches!(e, Error::Backend { transient: true, .. }), "{name}: {e}");
        }
        let e = classify("t", "createRole", &command_error(13, "Unauthorized"));
        assert!(matches!(e, Error::Backend { transient: false, .. }), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_target_fails_fast_until_it_answers_again() {
        let opts = ClientOptions::builder()
            .hosts(vec![mongodb::options::ServerAddress::parse("127.0.0.1:1").unwrap()])
            .build();
        let conn = TargetConnection::new(Client::with_options(opts).unwrap(), Some(1), "NotUsed");
        assert!(conn.check_available("t").is_ok());
        // A quick failure (a command error, a dropped connection) does not.
        conn.record::<()>(&Err(backend_error("t", "network error during rolesInfo; will retry", true)));
        assert!(conn.check_available("t").is_ok());
        // A server selection timeout does, with the same message.
        let unreachable = format!("{UNREACHABLE}: no MongoDB server answered within 5s");
        conn.record::<()>(&Err(backend_error("t", unreachable.clone(), true)));
        let e = conn.check_available("t").unwrap_err();
        assert!(matches!(&e, Error::Backend { transient: true, message, .. } if *message == unreachable), "{e}");
        conn.record(&Ok(()));
        assert!(conn.check_available("t").is_ok());
    }

    #[test]
    fn user_admin_alone_lacks_the_ledger() {
        let missing = missing_actions(&status(&[("userAdmin", "admin")], vec![]));
        assert_eq!(missing, ["dbgrant.find", "dbgrant.insert", "dbgrant.update", "dbgrant.remove"]);
        let missing = missing_actions(&status(&[("userAdminAnyDatabase", "admin")], vec![]));
        assert_eq!(missing.len(), LEDGER_ACTIONS.len());
    }

    #[test]
    fn the_documented_roles_are_enough() {
        assert!(missing_actions(&status(&[("userAdmin", "admin"), ("readWrite", "dbgrant")], vec![])).is_empty());
        assert!(missing_actions(&status(&[("root", "admin")], vec![])).is_empty());
    }

    #[test]
    fn privileges_count_only_on_the_right_database() {
        let admin = doc! {"resource": {"db": "admin", "collection": ""}, "actions": REQUIRED_ACTIONS.to_vec()};
        let elsewhere =
            doc! {"resource": {"db": "orders", "collection": ""}, "actions": ["find", "insert", "update", "remove"]};
        let missing = missing_actions(&status(&[], vec![admin.clone(), elsewhere]));
        assert_eq!(missing.len(), LEDGER_ACTIONS.len(), "{missing:?}");
        let ledger = doc! {"resource": {"db": "dbgrant", "collection": "ownership"}, "actions": ["find", "insert", "update", "remove"]};
        assert!(missing_actions(&status(&[], vec![admin, ledger])).is_empty());
    }

    #[test]
    fn nothing_known_means_everything_missing() {
        let missing = missing_actions(&doc! {"ok": 1});
        assert_eq!(missing.len(), REQUIRED_ACTIONS.len() + LEDGER_ACTIONS.len());
        let no_rights = missing_actions(&status(&[("read", "orders")], vec![]));
        assert!(no_rights.contains(&"createRole".to_string()) && no_rights.contains(&"dbgrant.insert".to_string()));
    }
}
