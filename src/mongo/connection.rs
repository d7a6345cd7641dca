//! Connecting to a MongoTarget with the official driver: connection
//! string, TLS and the operator's own credentials, all from Secrets in
//! the operator namespace.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bson::{Document, doc};
use mongodb::{
    Client,
    options::{AuthMechanism, ClientOptions, Credential, Tls, TlsOptions},
};

use super::BACKEND;
use crate::{
    Error, Failure, Result,
    api::{MongoTarget, MongoTargetSpec},
    plan::mongo::{LEDGER_COLLECTION, LEDGER_DB},
    runtime::{
        context::Context,
        secrets::{self, ExposeSecret},
    },
};

/// Where dbgrant needs rights, in MongoDB's resource terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The `admin` database, where dbgrant's roles live:
    /// `{db: "admin", collection: ""}`.
    Admin,
    /// Every database: `{db: "", collection: ""}` (only that resource, or
    /// `anyResource`, meets a check on all databases).
    EveryDatabase,
    /// One database a target's policy names literally:
    /// `{db: <name>, collection: ""}`.
    Database(String),
    /// `$external`, where MONGODB-OIDC users live:
    /// `{db: "$external", collection: ""}`.
    External,
    /// The ownership ledger collection (`dbgrant.ownership`).
    Ledger,
}

impl Scope {
    /// How the probe's message names it.
    fn describe(&self) -> String {
        match self {
            Self::Admin => "the admin database".into(),
            Self::EveryDatabase => "every database".into(),
            Self::Database(db) => format!("the {db} database"),
            Self::External => "the $external database".into(),
            Self::Ledger => {
                format!("{}.{} (the ownership ledger)", LEDGER_DB, LEDGER_COLLECTION)
            }
        }
    }

    /// The privilege resource to grant, as a document.
    fn resource(&self) -> String {
        let (db, collection) = match self {
            Self::Admin => ("admin", ""),
            Self::EveryDatabase => ("", ""),
            Self::Database(db) => (db.as_str(), ""),
            Self::External => ("$external", ""),
            Self::Ledger => (LEDGER_DB, LEDGER_COLLECTION),
        };
        format!("{{db: \"{db}\", collection: \"{collection}\"}}")
    }

    /// Whether a privilege on `resource` reaches this scope: MongoDB's
    /// resource search list (`anyResource` reaches everything; `{db: "",
    /// collection: ""}` every database but `local` and `config` and their
    /// non-system collections; `{db, collection: ""}` that database and
    /// its collections; `{db: "", collection}` that collection everywhere).
    fn reached_by(&self, resource: &Pattern) -> bool {
        let ledger = (LEDGER_DB, LEDGER_COLLECTION);
        match (self, resource) {
            (_, Pattern::Any) => true,
            // `{db: "", collection: ""}` does not reach local and config.
            (Self::Database(db), Pattern::Namespace("", "")) => !matches!(db.as_str(), "local" | "config"),
            (_, Pattern::Namespace("", "")) => true,
            (Self::EveryDatabase, _) => false,
            (Self::Database(want), Pattern::Namespace(db, "")) => db == want,
            (Self::Admin, Pattern::Namespace(db, "")) => *db == "admin",
            (Self::External, Pattern::Namespace(db, "")) => *db == "$external",
            (Self::Ledger, Pattern::Namespace(db, "")) => *db == ledger.0,
            (Self::Ledger, Pattern::Namespace("", c)) => *c == ledger.1,
            (Self::Ledger, Pattern::Namespace(db, c)) => (*db, *c) == ledger,
            _ => false,
        }
    }
}

/// The rights dbgrant's commands need (MongoDB's "Required Access" of
/// each): `createRole` (in `admin`), `dropRole` and `rolesInfo` on
/// `admin`; `grantRole` on the database of every privilege and inherited
/// role a binding may name, and `revokeRole` on all databases for
/// `updateRole` and `updateUser` — so both on every database; and
/// `createUser`, `dropUser` and `usersInfo` on `$external`.
pub const REQUIRED_ACTIONS: &[(Scope, &[&str])] = &[
    (Scope::Admin, &["createRole", "dropRole", "viewRole"]),
    (Scope::EveryDatabase, &["grantRole", "revokeRole"]),
    (Scope::External, &["createUser", "dropUser", "viewUser"]),
];

/// Actions dbgrant needs on its ownership ledger (`find`, and an upsert
/// needs `insert` as well as `update`).
pub const LEDGER_ACTIONS: &[&str] = &["find", "insert", "update", "remove"];

/// Where `target`'s bindings make dbgrant need rights, and which: what
/// [`REQUIRED_ACTIONS`] and [`LEDGER_ACTIONS`] say, narrowed by the
/// target's spec. `revokeRole` is always needed on every database
/// (`updateRole` and `updateUser` check it there), but `grantRole` only on
/// the databases bindings may name when the policy lists them by literal
/// name (plus `admin` when privileges on the cluster resource are allowed:
/// `createRole` checks those against `admin`); and `$external` only when
/// the target creates users (`useAuthorizationClaim: false`). Pure.
pub fn required_rights(spec: &MongoTargetSpec) -> Vec<(Scope, Vec<&'static str>)> {
    let mut out = vec![(Scope::Admin, vec!["createRole", "dropRole", "viewRole"])];
    let literal: Option<BTreeSet<String>> = spec
        .policy
        .allowed_databases
        .as_ref()
        .and_then(|dbs| dbs.iter().all(|d| !d.contains('*')).then(|| dbs.iter().cloned().collect()));
    match literal {
        Some(mut dbs) => {
            out.push((Scope::EveryDatabase, vec!["revokeRole"]));
            if spec.policy.allow_cluster_resource {
                dbs.insert("admin".into());
            }
            for db in dbs {
                let scope = if db == "admin" { Scope::Admin } else { Scope::Database(db) };
                out.push((scope, vec!["grantRole"]));
            }
        }
        None => out.push((Scope::EveryDatabase, vec!["grantRole", "revokeRole"])),
    }
    if !spec.oidc.use_authorization_claim {
        out.push((Scope::External, vec!["createUser", "dropUser", "viewUser"]));
        // createUser and updateUser grant each user its role in admin.
        if !out.iter().any(|(scope, actions)| *scope == Scope::Admin && actions.contains(&"grantRole")) {
            out.push((Scope::Admin, vec!["grantRole"]));
        }
    }
    out.push((Scope::Ledger, LEDGER_ACTIONS.to_vec()));
    out
}

/// A privilege's resource in a `connectionStatus` reply.
enum Pattern<'a> {
    /// `{anyResource: true}`.
    Any,
    /// `{db, collection}`, either possibly `""` (any).
    Namespace(&'a str, &'a str),
    /// `{cluster: true}`, `system_buckets` resources, and anything else:
    /// never where dbgrant needs rights.
    Other,
}

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
                Err(backend_error(target, message.clone(), Failure::Transient))
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
            Err(Error::Backend { failure: Failure::Transient, message, .. }) if message.starts_with(UNREACHABLE) => {
                *unavailable = Some((std::time::Instant::now() + FAIL_FAST_FOR, message.clone()))
            }
            Err(_) => {}
        }
    }
}

/// Close a connection that is no longer wanted, while the runtime runs:
/// the driver's pool and monitors stop in order, and its drop no longer
/// spawns a clean-up task (which, left to run as the process exits, races
/// the pool's shutdown and panics inside the driver). Other holders of the
/// connection see their operations fail as with a dropped connection.
pub async fn close(conn: Option<Arc<TargetConnection>>) {
    if let Some(conn) = conn {
        conn.client.clone().shutdown().immediate(true).await;
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

fn backend_error(target: &str, message: impl Into<String>, failure: Failure) -> Error {
    Error::Backend { backend: BACKEND, target: target.into(), message: message.into(), failure }
}

/// Whether the connection string `uri` sets the option `key` (names are
/// case-insensitive), whatever its value.
fn uri_sets(uri: &str, key: &str) -> bool {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
    query.split('&').any(|pair| pair.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case(key)))
}

/// Whether the server's certificate is verified with these TLS settings:
/// `Enabled`, `Disabled` (`tlsInsecure`, `tlsAllowInvalidCertificates` or
/// `insecureSkipVerify`, which all set `allow_invalid_certificates`), or
/// `NotUsed` for a plain connection.
pub fn tls_verification(tls: Option<&Tls>) -> &'static str {
    match tls {
        Some(Tls::Enabled(t)) if t.allow_invalid_certificates == Some(true) => "Disabled",
        Some(Tls::Enabled(_)) => "Enabled",
        Some(Tls::Disabled) | None => "NotUsed",
    }
}

/// Why `auth.oidc` may not be used with this TLS verification, if it may
/// not: the Entra access token goes to the server, and whoever reads it
/// can act as dbgrant there until it expires.
pub fn oidc_transport_problem(tls_verification: &str, allow_insecure_transport: bool) -> Option<String> {
    let how = match tls_verification {
        "Enabled" => return None,
        _ if allow_insecure_transport => return None,
        "Disabled" => "over TLS without certificate verification (anyone in the path could answer and take it)",
        _ => "over a connection without TLS (readable on the network)",
    };
    Some(format!(
        "auth.oidc would send dbgrant's Entra access token {how}, and whoever holds it can act as dbgrant on the server until it expires: use TLS with verification (tls=true in the connection string, or spec.connection.tls), or set spec.auth.oidc.allowInsecureTransport for local testing only"
    ))
}

/// Why credentials taken from the connection string itself may not be sent
/// over this connection, if they may not: MONGODB-OIDC sends a bearer token
/// and PLAIN a password as they are, so both need TLS with verification.
pub fn uri_credential_problem(credential: Option<&Credential>, tls_verification: &str) -> Option<String> {
    let mechanism = credential?.mechanism.as_ref()?;
    if !matches!(mechanism, AuthMechanism::MongoDbOidc | AuthMechanism::Plain) || tls_verification == "Enabled" {
        return None;
    }
    let how = if tls_verification == "Disabled" {
        "over TLS without certificate verification"
    } else {
        "over a connection without TLS"
    };
    Some(format!(
        "the connection string's authMechanism {} would send dbgrant's credentials {how}: use TLS with verification (tls=true in the connection string, or spec.connection.tls)",
        mechanism.as_str()
    ))
}

/// Build driver options for `target`. Secrets are read from the operator
/// namespace; their values never appear in errors. CA and client-key files
/// written here for the driver are removed by the caller once the client is
/// built ([`remove_private_files`]).
pub async fn client_options(ctx: &Context, target: &MongoTarget) -> Result<(ClientOptions, &'static str)> {
    let name = target.metadata.name.clone().unwrap_or_default();
    let spec = &target.spec;
    let uri_ref = &spec.connection.uri_secret_ref;
    let uri = secrets::read_key(&ctx.client, &ctx.namespace, uri_ref).await?;
    let place = format!("the connection string in Secret {}/{} key {:?}", ctx.namespace, uri_ref.name, uri_ref.key);
    if uri_sets(uri.expose_secret(), "tlsAllowInvalidHostnames") {
        // The driver's rustls backend has no such switch and calls the
        // option invalid; say what to do instead.
        let message = format!(
            "{place} sets tlsAllowInvalidHostnames, which dbgrant's TLS stack does not support: remove it (for tests, tlsInsecure=true turns off certificate and host name checks, shown as tlsVerification: Disabled)"
        );
        return Err(backend_error(&name, message, Failure::Misconfigured));
    }
    let mut opts = ClientOptions::parse(uri.expose_secret()).await.map_err(|e| {
        if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::DnsResolve { .. }) {
            return backend_error(
                &name,
                "the mongodb+srv host in the connection string could not be resolved (DNS SRV lookup failed); will retry",
                Failure::Transient,
            );
        }
        // The driver's parse error can quote the URI; say where it is instead.
        backend_error(&name, format!("{place} is not a valid MongoDB URI"), Failure::Misconfigured)
    })?;
    opts.app_name = Some("dbgrant".into());
    opts.connect_timeout = Some(Duration::from_secs(5));
    opts.server_selection_timeout = Some(Duration::from_secs(5));

    if let Some(tls) = &spec.connection.tls {
        let mut t = match opts.tls.take() {
            Some(Tls::Enabled(t)) => t,
            _ => TlsOptions::default(),
        };
        if tls.insecure_skip_verify {
            t.allow_invalid_certificates = Some(true);
        }
        opts.tls = Some(Tls::Enabled(t));
    }
    // Decided before any Secret is read or file written.
    let verification = tls_verification(opts.tls.as_ref());
    if let Some(oidc) = &spec.auth.oidc
        && let Some(problem) = oidc_transport_problem(verification, oidc.allow_insecure_transport)
    {
        return Err(backend_error(&name, problem, Failure::Misconfigured));
    }
    if spec.auth.oidc.is_none()
        && let Some(problem) = uri_credential_problem(opts.credential.as_ref(), verification)
    {
        return Err(backend_error(&name, problem, Failure::Misconfigured));
    }
    if let (Some(tls), Some(Tls::Enabled(t))) = (&spec.connection.tls, opts.tls.as_mut()) {
        let root = private_files_root();
        if let Some(ca) = &tls.ca_secret_ref {
            let pem = secrets::read_key(&ctx.client, &ctx.namespace, ca).await?;
            t.ca_file_path = Some(write_private_file(&root, &name, "ca.pem", pem.expose_secret().as_bytes())?);
        }
        if let Some(cert) = &tls.client_certificate_secret_ref {
            let s = secrets::read(&ctx.client, &ctx.namespace, &cert.name).await?;
            let crt = secrets::key(&s, &ctx.namespace, &cert.name, "tls.crt")?;
            let key = secrets::key(&s, &ctx.namespace, &cert.name, "tls.key")?;
            let both = format!("{}\n{}\n", crt.expose_secret(), key.expose_secret());
            t.cert_key_file_path = Some(write_private_file(&root, &name, "client.pem", both.as_bytes())?);
        }
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
    Ok((opts, verification))
}

/// Where CA and client-key files for the driver go: one directory per
/// target under this one.
pub fn private_files_root() -> PathBuf {
    std::env::temp_dir().join("dbgrant")
}

/// Create `dir` (and missing parents) with mode 0700, or check that an
/// existing one is a real directory (not a link) and tighten it to 0700.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", dir.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Write key material to a private file the driver can read (it only
/// accepts file paths for CA and client certificates):
/// `<root>/<target>/<file>`, in directories of mode 0700, created with mode
/// 0600 (never readable by anyone else, not even briefly) under a fresh
/// name and renamed into place, so a reader sees the old file or the new
/// one, never a mix.
fn write_private_file(root: &Path, target: &str, file: &str, contents: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let io = |e: std::io::Error| {
        backend_error(target, format!("cannot write TLS material to a temporary file: {e}"), Failure::Transient)
    };
    private_dir(root).map_err(io)?;
    let dir = root.join(target);
    private_dir(&dir).map_err(io)?;
    let path = dir.join(file);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fresh = dir.join(format!(".{file}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&fresh)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&fresh, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&fresh);
    }
    written.map_err(io)?;
    Ok(path)
}

/// Remove the CA and client-key files written for `target`. The driver
/// reads them once, while the client is built, so they go right after
/// that, and again when the target goes. A missing directory is success.
pub fn remove_private_files(target: &str) {
    if let Err(e) = remove_private_files_in(&private_files_root(), target) {
        tracing::warn!(target = %target, error = %e, "cannot remove the target's TLS files");
    }
}

fn remove_private_files_in(root: &Path, target: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(root.join(target)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Connect and check that dbgrant is authenticated with `rights`: a
/// target's [`required_rights`], or [`all_rights`]. Returns the server
/// version.
pub async fn probe(
    target: &str,
    client: &Client,
    tls_verification: &'static str,
    rights: &[(Scope, Vec<&'static str>)],
) -> Result<Probe> {
    let admin = client.database("admin");
    let info = admin.run_command(doc! { "buildInfo": 1 }).await.map_err(|e| classify(target, "buildInfo", &e))?;
    let version = info.get_str("version").unwrap_or("unknown").to_string();
    let status = admin
        .run_command(doc! { "connectionStatus": 1, "showPrivileges": true })
        .await
        .map_err(|e| classify(target, "connectionStatus", &e))?;
    let missing = missing_rights(&status, rights);
    if !missing.is_empty() {
        return Err(backend_error(target, lacks_message(&status, &missing, rights), Failure::Unauthorized));
    }
    Ok(Probe { version, tls_verification })
}

/// Joins `a, b and c`.
fn and_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_string(),
        [init @ .., last] => {
            format!("{} and {}", init.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(", "), last.as_ref())
        }
    }
}

/// What the probe says: what is missing, and what to grant.
fn lacks_message(status: &Document, missing: &[String], rights: &[(Scope, Vec<&'static str>)]) -> String {
    let ledger = LEDGER_DB;
    let custom: Vec<String> =
        rights.iter().map(|(scope, actions)| format!("{} on {}", and_list(actions), scope.resource())).collect();
    let roles = status.get_document("authInfo").and_then(|a| a.get_array("authenticatedUserRoles")).ok();
    // The usual mistake, named: user administration on admin only.
    let on_admin_only = roles.and_then(|roles| {
        roles
            .iter()
            .filter_map(|r| r.as_document())
            .filter(|r| r.get_str("db") == Ok("admin"))
            .find_map(|r| r.get_str("role").ok().filter(|role| matches!(*role, "userAdmin" | "dbOwner")))
    });
    let hint = match on_admin_only {
        Some(role) => format!(" ({role}@admin is not enough: it grants these actions on the admin database only)"),
        None => String::new(),
    };
    format!(
        "dbgrant's MongoDB identity lacks {}{hint}; grant it userAdminAnyDatabase@admin and readWrite@{ledger}, or a custom role with {}",
        missing.join("; "),
        and_list(&custom)
    )
}

/// What the authenticated user lacks, from a `connectionStatus` reply with
/// `showPrivileges: true` (its `authenticatedUserPrivileges`, where a real
/// server lists every privilege of every role it holds, built-in roles
/// expanded): for each scope of [`REQUIRED_ACTIONS`] and the ledger
/// ([`LEDGER_ACTIONS`]), the actions missing there, as "grantRole,
/// revokeRole on every database". Role names are not trusted: only the
/// privileges say what the server will allow.
pub fn missing_actions(status: &Document) -> Vec<String> {
    missing_rights(status, &all_rights())
}

/// Every right any target may need ([`REQUIRED_ACTIONS`] and
/// [`LEDGER_ACTIONS`]): what [`required_rights`] asks of a target whose
/// bindings may name any database and that creates `$external` users.
pub fn all_rights() -> Vec<(Scope, Vec<&'static str>)> {
    REQUIRED_ACTIONS
        .iter()
        .map(|(scope, actions)| (scope.clone(), actions.to_vec()))
        .chain([(Scope::Ledger, LEDGER_ACTIONS.to_vec())])
        .collect()
}

/// What the authenticated user lacks of `rights` (see
/// [`missing_actions`]), one entry per scope.
pub fn missing_rights(status: &Document, rights: &[(Scope, Vec<&'static str>)]) -> Vec<String> {
    let mut privileges: Vec<(Pattern<'_>, Vec<&str>)> = Vec::new();
    let listed = status.get_document("authInfo").and_then(|a| a.get_array("authenticatedUserPrivileges"));
    for p in listed.map(|l| l.as_slice()).unwrap_or_default().iter().filter_map(|p| p.as_document()) {
        let Ok(r) = p.get_document("resource") else { continue };
        let pattern = if r.get_bool("anyResource") == Ok(true) {
            Pattern::Any
        } else if r.contains_key("cluster") || r.contains_key("system_buckets") {
            Pattern::Other
        } else {
            match (r.get_str("db"), r.get_str("collection")) {
                (Ok(db), Ok(collection)) => Pattern::Namespace(db, collection),
                _ => Pattern::Other,
            }
        };
        let actions = p.get_array("actions").map(|a| a.iter().filter_map(|a| a.as_str()).collect()).unwrap_or_default();
        privileges.push((pattern, actions));
    }
    let allowed = |scope: &Scope, action: &str| {
        privileges
            .iter()
            .any(|(r, actions)| scope.reached_by(r) && actions.iter().any(|a| *a == action || *a == "anyAction"))
    };
    rights
        .iter()
        .filter_map(|(scope, actions)| {
            let lacking: Vec<&str> = actions.iter().copied().filter(|a| !allowed(scope, a)).collect();
            (!lacking.is_empty()).then(|| format!("{} on {}", and_list(&lacking), scope.describe()))
        })
        .collect()
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
    let (message, failure) = match e.kind.as_ref() {
        ErrorKind::Custom(_) if let Some(t) = e.get_custom::<super::oidc::TokenError>() => {
            (t.message.clone(), if t.transient { Failure::Transient } else { Failure::Unauthorized })
        }
        ErrorKind::Authentication { message, .. } if message.starts_with("MONGODB-OIDC") => (
            "MONGODB-OIDC authentication failed: the server refused dbgrant's Entra token; check that the server's oidcIdentityProviders entry names the token's issuer (the tenant) and audience (the application in spec.auth.oidc.scope), and that dbgrant's identity has a role there".to_string(),
            Failure::Unauthorized,
        ),
        ErrorKind::Authentication { .. } => (
            "authentication failed: check the credentials in the target's Secrets (they may have been rotated)"
                .to_string(),
            Failure::Unauthorized,
        ),
        // Starts with UNREACHABLE: TargetConnection::record keys on it.
        ErrorKind::ServerSelection { .. } => (
            "server unreachable: no MongoDB server answered within 5s; check the connection string, network policy and TLS settings".to_string(),
            Failure::Transient,
        ),
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            (format!("network error during {operation}; will retry"), Failure::Transient)
        }
        // Failover and shutdown: the primary stepped down or is going
        // away (NotWritablePrimary, NotPrimaryNoSecondaryOk,
        // NotPrimaryOrSecondary, PrimarySteppedDown, ShutdownInProgress,
        // Interrupted*, HostUnreachable, HostNotFound, NetworkTimeout,
        // SocketException, ExceededTimeLimit). Retrying soon succeeds.
        ErrorKind::Command(c)
            if matches!(c.code, 6 | 7 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436) =>
        {
            (format!("{operation} failed: {} (code {}); will retry", c.message, c.code), Failure::Transient)
        }
        ErrorKind::Command(c) if c.code == 13 => {
            // "not authorized on <db> to execute command { … }": name the
            // database, never the command (it can be very long).
            let db = c
                .message
                .strip_prefix("not authorized on ")
                .and_then(|rest| rest.split_once(' '))
                .map(|(db, _)| db.chars().take(64).collect::<String>());
            let message = match db {
                Some(db) => format!(
                    "{operation} unauthorized (code 13): dbgrant's MongoDB identity is not authorized on database {db:?}; it lacks user administration rights there"
                ),
                None => format!(
                    "{operation} unauthorized (code 13): dbgrant's MongoDB identity lacks user administration rights"
                ),
            };
            (message, Failure::Unauthorized)
        }
        ErrorKind::Command(c) => (format!("{operation} failed: {} (code {})", c.message, c.code), Failure::Refused),
        _ => (format!("{operation} failed: {e}"), Failure::Transient),
    };
    backend_error(target, message, failure)
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
            assert!(matches!(e, Error::Backend { failure: Failure::Transient, .. }), "{name}: {e}");
        }
        let e = classify("t", "createRole", &command_error(13, "Unauthorized"));
        assert!(matches!(e, Error::Backend { failure: Failure::Unauthorized, .. }), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_target_fails_fast_until_it_answers_again() {
        let opts = ClientOptions::builder()
            .hosts(vec![mongodb::options::ServerAddress::parse("127.0.0.1:1").unwrap()])
            .build();
        let conn = TargetConnection::new(Client::with_options(opts).unwrap(), Some(1), "NotUsed");
        assert!(conn.check_available("t").is_ok());
        // A quick failure (a command error, a dropped connection) does not.
        conn.record::<()>(&Err(backend_error("t", "network error during rolesInfo; will retry", Failure::Transient)));
        assert!(conn.check_available("t").is_ok());
        // A server selection timeout does, with the same message.
        let unreachable = format!("{UNREACHABLE}: no MongoDB server answered within 5s");
        conn.record::<()>(&Err(backend_error("t", unreachable.clone(), Failure::Transient)));
        let e = conn.check_available("t").unwrap_err();
        assert!(
            matches!(&e, Error::Backend { failure: Failure::Transient, message, .. } if *message == unreachable),
            "{e}"
        );
        conn.record(&Ok(()));
        assert!(conn.check_available("t").is_ok());
    }

    fn privilege(resource: Document, actions: &[&str]) -> Document {
        doc! {"resource": resource, "actions": actions.to_vec()}
    }

    fn db(db: &str, collection: &str) -> Document {
        doc! {"db": db, "collection": collection}
    }

    const READ: &[&str] = &[
        "changeStream",
        "collStats",
        "dbHash",
        "dbStats",
        "find",
        "killCursors",
        "listCollections",
        "listIndexes",
        "listSearchIndexes",
        "planCacheRead",
    ];
    const READ_WRITE: &[&str] = &[
        "changeStream",
        "collStats",
        "convertToCapped",
        "createCollection",
        "createIndex",
        "dbHash",
        "dbStats",
        "dropCollection",
        "dropIndex",
        "find",
        "insert",
        "killCursors",
        "listCollections",
        "listIndexes",
        "planCacheRead",
        "remove",
        "renameCollectionSameDB",
        "update",
    ];
    const USER_ADMIN: &[&str] = &[
        "changeCustomData",
        "changePassword",
        "createRole",
        "createUser",
        "dropRole",
        "dropUser",
        "grantRole",
        "revokeRole",
        "setAuthenticationRestriction",
        "viewRole",
        "viewUser",
    ];

    /// readWrite@dbgrant as a server expands it.
    fn read_write_dbgrant() -> Vec<Document> {
        vec![privilege(db("dbgrant", ""), READ_WRITE), privilege(db("dbgrant", "system.js"), READ_WRITE)]
    }

    /// userAdminAnyDatabase as a server (8.0) expands it.
    fn user_admin_any_database() -> Vec<Document> {
        let mut any = USER_ADMIN.to_vec();
        any.push("listCachedAndActiveUsers");
        vec![
            privilege(
                doc! {"cluster": true},
                &["authSchemaUpgrade", "invalidateUserCache", "listDatabases", "viewUser"],
            ),
            privilege(db("", ""), &any),
            privilege(db("local", ""), USER_ADMIN),
            privilege(db("config", ""), USER_ADMIN),
            privilege(db("admin", "system.users"), READ),
            privilege(db("admin", "system.roles"), READ),
            privilege(db("", "system.users"), READ),
        ]
    }

    /// The least-privilege custom role from the README.
    fn spec(policy: serde_json::Value, claims: bool) -> MongoTargetSpec {
        serde_json::from_value(serde_json::json!({
            "connection": {"uriSecretRef": {"name": "s", "key": "uri"}},
            "auth": {"x509": {}},
            "oidc": {"authNamePrefix": "entra", "useAuthorizationClaim": claims},
            "policy": policy,
        }))
        .expect("a valid MongoTargetSpec")
    }

    /// A custom role scoped to what one target's policy lets bindings
    /// name: grantRole on `orders` only, no `$external`.
    fn scoped_to_orders() -> Vec<Document> {
        vec![
            privilege(db("admin", ""), &["createRole", "dropRole", "viewRole"]),
            privilege(db("", ""), &["revokeRole"]),
            privilege(db("orders", ""), &["grantRole"]),
            privilege(db("dbgrant", "ownership"), &["find", "insert", "remove", "update"]),
        ]
    }

    #[test]
    fn the_rights_asked_for_follow_the_targets_policy() {
        let narrow = spec(serde_json::json!({"allowedNamespaces": ["*"], "allowedDatabases": ["orders"]}), true);
        assert!(missing_rights(&status(&[], scoped_to_orders()), &required_rights(&narrow)).is_empty());
        // The same identity is not enough where bindings may name any
        // database, or create $external users.
        let open = spec(serde_json::json!({"allowedNamespaces": ["*"]}), true);
        assert_eq!(
            missing_rights(&status(&[], scoped_to_orders()), &required_rights(&open)),
            ["grantRole on every database"]
        );
        let patterns = spec(serde_json::json!({"allowedNamespaces": ["*"], "allowedDatabases": ["orders-*"]}), true);
        assert_eq!(
            missing_rights(&status(&[], scoped_to_orders()), &required_rights(&patterns)),
            ["grantRole on every database"]
        );
        let users = spec(serde_json::json!({"allowedNamespaces": ["*"], "allowedDatabases": ["orders"]}), false);
        assert_eq!(
            missing_rights(&status(&[], scoped_to_orders()), &required_rights(&users)),
            ["createUser, dropUser and viewUser on the $external database", "grantRole on the admin database"]
        );
        // Cluster privileges are granted against admin; a second database
        // needs its own grantRole.
        let cluster = spec(
            serde_json::json!({"allowedNamespaces": ["*"], "allowedDatabases": ["orders", "billing"], "allowClusterResource": true}),
            true,
        );
        assert_eq!(
            missing_rights(&status(&[], scoped_to_orders()), &required_rights(&cluster)),
            ["grantRole on the admin database", "grantRole on the billing database"]
        );
        // revokeRole on all databases is always needed (updateRole).
        let mut no_revoke = scoped_to_orders();
        no_revoke[1] = privilege(db("orders", ""), &["revokeRole"]);
        assert_eq!(
            missing_rights(&status(&[], no_revoke), &required_rights(&narrow)),
            ["revokeRole on every database"]
        );
        // The documented minimum satisfies every policy.
        for s in [&narrow, &open, &patterns, &users, &cluster] {
            assert!(missing_rights(&status(&[], least_privilege()), &required_rights(s)).is_empty());
        }
    }

    #[test]
    fn the_any_database_resource_does_not_reach_local_and_config() {
        let local = spec(serde_json::json!({"allowedNamespaces": ["*"], "allowedDatabases": ["local"]}), true);
        assert_eq!(
            missing_rights(&status(&[], least_privilege()), &required_rights(&local)),
            ["grantRole on the local database"]
        );
    }

    fn least_privilege() -> Vec<Document> {
        vec![
            privilege(db("admin", ""), &["createRole", "dropRole", "viewRole"]),
            privilege(db("", ""), &["grantRole", "revokeRole"]),
            privilege(db("$external", ""), &["createUser", "dropUser", "viewUser"]),
            privilege(db("dbgrant", "ownership"), &["find", "insert", "remove", "update"]),
        ]
    }

    #[test]
    fn user_admin_on_admin_is_not_enough_even_with_the_ledger() {
        // What the old documentation asked for.
        let mut privileges = vec![privilege(db("admin", ""), USER_ADMIN)];
        privileges.extend(read_write_dbgrant());
        let reply = status(&[("userAdmin", "admin"), ("readWrite", "dbgrant")], privileges);
        let missing = missing_actions(&reply);
        assert_eq!(
            missing,
            [
                "grantRole and revokeRole on every database",
                "createUser, dropUser and viewUser on the $external database"
            ]
        );
        let message = lacks_message(&reply, &missing, &all_rights());
        assert!(message.starts_with("dbgrant's MongoDB identity lacks grantRole and revokeRole on every database; createUser, dropUser and viewUser on the $external database (userAdmin@admin is not enough: it grants these actions on the admin database only); grant it userAdminAnyDatabase@admin and readWrite@dbgrant, or a custom role with createRole, dropRole and viewRole on {db: \"admin\", collection: \"\"}, grantRole and revokeRole on {db: \"\", collection: \"\"}, createUser, dropUser and viewUser on {db: \"$external\", collection: \"\"} and find, insert, update and remove on {db: \"dbgrant\", collection: \"ownership\"}"), "{message}");
        // userAdmin@admin alone lacks the ledger too.
        let alone = missing_actions(&status(&[("userAdmin", "admin")], vec![privilege(db("admin", ""), USER_ADMIN)]));
        assert_eq!(alone.len(), 3);
        assert_eq!(alone[2], "find, insert, update and remove on dbgrant.ownership (the ownership ledger)");
    }

    #[test]
    fn the_documented_minimum_and_the_custom_role_are_enough() {
        let mut privileges = user_admin_any_database();
        privileges.extend(read_write_dbgrant());
        let reply = status(&[("userAdminAnyDatabase", "admin"), ("readWrite", "dbgrant")], privileges);
        assert_eq!(missing_actions(&reply), Vec::<String>::new());
        assert!(missing_actions(&status(&[("dbgrantOperator", "admin")], least_privilege())).is_empty());
        // userAdminAnyDatabase alone: only the ledger is missing.
        let missing = missing_actions(&status(&[("userAdminAnyDatabase", "admin")], user_admin_any_database()));
        assert_eq!(missing, ["find, insert, update and remove on dbgrant.ownership (the ownership ledger)"]);
    }

    #[test]
    fn root_and_any_action_are_enough_by_their_privileges() {
        // root's privileges (an excerpt of what a server lists): no
        // anyAction, but every action dbgrant needs on every database.
        let mut normal = USER_ADMIN.to_vec();
        normal.extend(READ_WRITE);
        let root = vec![
            privilege(doc! {"anyResource": true}, &["collStats", "listCollections", "listIndexes", "validate"]),
            privilege(doc! {"cluster": true}, &["listDatabases", "viewUser", "shutdown"]),
            privilege(db("", ""), &normal),
            privilege(doc! {"db": "", "system_buckets": ""}, &["find"]),
            privilege(db("config", "system.preimages"), &["find", "remove"]),
        ];
        assert!(missing_actions(&status(&[("root", "admin")], root)).is_empty());
        let system = vec![privilege(doc! {"anyResource": true}, &["anyAction"])];
        assert!(missing_actions(&status(&[("__system", "admin")], system)).is_empty());
        // A role name without privileges proves nothing.
        assert_eq!(missing_actions(&status(&[("root", "admin")], vec![])).len(), 4);
    }

    #[test]
    fn rights_count_only_where_the_commands_need_them() {
        // grantRole/revokeRole on every named database is not "all databases".
        let mut privileges = least_privilege();
        privileges[1] = privilege(db("orders", ""), &["grantRole", "revokeRole"]);
        privileges.push(privilege(db("admin", ""), &["grantRole", "revokeRole"]));
        let missing = missing_actions(&status(&[], privileges));
        assert_eq!(missing, ["grantRole and revokeRole on every database"]);
        // The ledger: the collection, its database, the collection in every
        // database, or every database — not another collection or database.
        for (resource, enough) in [
            (db("dbgrant", ""), true),
            (db("", "ownership"), true),
            (db("dbgrant", "other"), false),
            (db("orders", ""), false),
            (doc! {"cluster": true}, false),
        ] {
            let mut privileges = least_privilege();
            privileges[3] = privilege(resource.clone(), LEDGER_ACTIONS);
            assert_eq!(missing_actions(&status(&[], privileges)).is_empty(), enough, "{resource}");
        }
        // The custom role's admin actions on another database do not count.
        let mut privileges = least_privilege();
        privileges[0] = privilege(db("orders", ""), &["createRole", "dropRole", "viewRole"]);
        assert_eq!(
            missing_actions(&status(&[], privileges)),
            ["createRole, dropRole and viewRole on the admin database"]
        );
    }

    #[test]
    fn nothing_known_means_everything_missing() {
        for reply in [
            doc! {"ok": 1},
            doc! {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}},
            status(&[("read", "orders")], vec![privilege(db("orders", ""), READ)]),
            status(&[], vec![doc! {"resource": "junk", "actions": ["createRole"]}, doc! {"actions": 1}]),
        ] {
            let missing = missing_actions(&reply);
            assert_eq!(missing.len(), REQUIRED_ACTIONS.len() + 1, "{reply}");
            assert!(missing[0].starts_with("createRole, dropRole and viewRole on"), "{missing:?}");
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A fresh directory for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("dbgrant-test-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    async fn verification(uri: &str) -> &'static str {
        let opts = ClientOptions::parse(uri).await.expect("valid URI");
        tls_verification(opts.tls.as_ref())
    }

    #[tokio::test]
    async fn tls_verification_follows_the_connection_string() {
        assert_eq!(verification("mongodb://db.example:27017/").await, "NotUsed");
        assert_eq!(verification("mongodb://db.example:27017/?tls=false").await, "NotUsed");
        assert_eq!(verification("mongodb://db.example:27017/?tls=true").await, "Enabled");
        assert_eq!(verification("mongodb://db.example:27017/?tls=true&tlsInsecure=false").await, "Enabled");
        for insecure in ["tlsInsecure=true", "tlsAllowInvalidCertificates=true", "TLSINSECURE=true"] {
            assert_eq!(verification(&format!("mongodb://db.example:27017/?tls=true&{insecure}")).await, "Disabled");
            // Either one turns TLS on by itself.
            assert_eq!(verification(&format!("mongodb://db.example:27017/?{insecure}")).await, "Disabled");
        }
    }

    #[test]
    fn invalid_host_names_are_spotted_in_any_spelling() {
        let key = "tlsAllowInvalidHostnames";
        assert!(uri_sets("mongodb://h/?tls=true&tlsAllowInvalidHostnames=true", key));
        assert!(uri_sets("mongodb://h/?TLSALLOWINVALIDHOSTNAMES=false", key));
        assert!(!uri_sets("mongodb://h/?tls=true", key));
        assert!(!uri_sets("mongodb://h/?appName=tlsAllowInvalidHostnames", key));
        assert!(!uri_sets("mongodb://h/", key));
    }

    #[test]
    fn credentials_from_the_connection_string_need_verified_tls_for_oidc_and_plain() {
        let with = |m: AuthMechanism| Credential::builder().mechanism(m).build();
        for m in [AuthMechanism::MongoDbOidc, AuthMechanism::Plain] {
            let c = with(m.clone());
            assert!(uri_credential_problem(Some(&c), "NotUsed").is_some_and(|p| p.contains("without TLS")), "{m:?}");
            assert!(uri_credential_problem(Some(&c), "Disabled").is_some_and(|p| p.contains("verification")), "{m:?}");
            assert_eq!(uri_credential_problem(Some(&c), "Enabled"), None);
        }
        assert_eq!(uri_credential_problem(Some(&with(AuthMechanism::ScramSha256)), "NotUsed"), None);
        assert_eq!(uri_credential_problem(None, "NotUsed"), None);
    }

    #[test]
    fn oidc_needs_verified_tls_unless_the_target_opts_in() {
        assert_eq!(oidc_transport_problem("Enabled", false), None);
        let plain = oidc_transport_problem("NotUsed", false).expect("plain TCP refused");
        assert!(plain.contains("without TLS") && plain.contains("allowInsecureTransport"), "{plain}");
        let unverified = oidc_transport_problem("Disabled", false).expect("unverified TLS refused");
        assert!(unverified.contains("without certificate verification"), "{unverified}");
        assert_eq!(oidc_transport_problem("NotUsed", true), None);
        assert_eq!(oidc_transport_problem("Disabled", true), None);
        // Not an authorization problem: the target says InvalidSpec, not
        // Unauthorized, and does not retry by itself.
        let e = backend_error("t", plain, Failure::Misconfigured);
        assert_eq!(
            crate::mongo::target_controller::target_outcome(&e).reason,
            crate::api::conditions::reason::INVALID_SPEC
        );
    }

    #[test]
    fn private_files_are_0600_in_0700_directories_from_the_start() {
        let scratch = Scratch::new("modes");
        let root = scratch.0.join("dbgrant");
        let path = write_private_file(&root, "orders", "client.pem", b"KEY").expect("written");
        assert_eq!(path, root.join("orders").join("client.pem"));
        assert_eq!(std::fs::read(&path).expect("read"), b"KEY");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.join("orders")), 0o700);
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn a_loose_existing_directory_is_tightened_and_a_link_refused() {
        let scratch = Scratch::new("loose");
        let root = scratch.0.join("dbgrant");
        std::fs::create_dir_all(root.join("orders")).expect("dirs");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(root.join("orders"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        write_private_file(&root, "orders", "ca.pem", b"CA").expect("written");
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("orders")), 0o700);

        let elsewhere = scratch.0.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("dir");
        std::os::unix::fs::symlink(&elsewhere, root.join("linked")).expect("symlink");
        assert!(write_private_file(&root, "linked", "ca.pem", b"CA").is_err());
        assert!(!elsewhere.join("ca.pem").exists());
    }

    #[test]
    fn a_changed_file_replaces_the_old_one_whole() {
        let scratch = Scratch::new("replace");
        let root = scratch.0.join("dbgrant");
        let first = write_private_file(&root, "orders", "ca.pem", b"OLD CA").expect("written");
        // A reader holding the old file keeps reading the old bytes.
        let mut held = std::fs::File::open(&first).expect("open");
        let second = write_private_file(&root, "orders", "ca.pem", b"NEW CA").expect("rewritten");
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&second).expect("read"), b"NEW CA");
        assert_eq!(mode(&second), 0o600);
        let mut old = String::new();
        std::io::Read::read_to_string(&mut held, &mut old).expect("read held");
        assert_eq!(old, "OLD CA");
        let names: Vec<_> =
            std::fs::read_dir(root.join("orders")).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ca.pem")], "no temporary file left behind");
    }

    #[test]
    fn removing_a_targets_files_leaves_nothing_and_tolerates_nothing_there() {
        let scratch = Scratch::new("remove");
        let root = scratch.0.join("dbgrant");
        write_private_file(&root, "orders", "ca.pem", b"CA").expect("written");
        write_private_file(&root, "orders", "client.pem", b"KEY").expect("written");
        write_private_file(&root, "billing", "ca.pem", b"CA").expect("written");
        remove_private_files_in(&root, "orders").expect("removed");
        assert!(!root.join("orders").exists());
        assert!(root.join("billing").join("ca.pem").exists(), "other targets' files stay");
        remove_private_files_in(&root, "orders").expect("nothing to remove is fine");
        remove_private_files_in(&scratch.0.join("never-created"), "orders").expect("no root is fine");
    }
}
