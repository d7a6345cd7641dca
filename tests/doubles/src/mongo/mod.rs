//! A MongoDB wire-protocol test double: a real TCP (optionally TLS) server
//! that the official `mongodb` driver connects to, authenticates against
//! with SCRAM-SHA-256 or MONGODB-OIDC, and runs user-management and data
//! commands on — with MongoDB's authorization rules.
//!
//! What it models (MongoDB 7.0/8.0 semantics, standalone server):
//! - OP_MSG (kind-0 bodies, kind-1 document sequences, `moreToCome`), and
//!   legacy OP_QUERY for the handshake only.
//! - `hello`/`isMaster` (with `saslSupportedMechs` and
//!   `speculativeAuthenticate`), `ping`, `buildInfo`, `getParameter`,
//!   `connectionStatus`, `endSessions`.
//! - SCRAM-SHA-256 via `saslStart`/`saslContinue`, for the logins in
//!   [`MongoDoubleConfig::users`] (each with its granted roles, see
//!   [`ScramUser`]) and for users made with `createUser` and a `pwd` (their
//!   roles are read from the user at every command, as a real server's
//!   user cache follows changes).
//! - MONGODB-OIDC (`$external`) when [`MongoDoubleConfig::oidc`] is set:
//!   the machine flow (`{jwt}` in `saslStart`, also speculatively in
//!   `hello`), the human flow's two steps, token validation by the test's
//!   [`OidcConfig::validate`], roles from the authorization claim as with
//!   `useAuthorizationClaim` (or the `$external` user's roles), and 391
//!   `ReauthenticationRequired` once the token expires. See [`OidcConfig`].
//! - Authorization, when any login (or OIDC) is configured: commands other
//!   than the handshake, auth, `ping`, `buildInfo`, `connectionStatus` and
//!   `endSessions` need a login (13 otherwise), and then the privileges
//!   each command needs per MongoDB's "Required Access" rules, checked per
//!   database against the union of the privileges of the login's roles and
//!   of every role they inherit, built-in or created with `createRole`,
//!   resolved when the command runs (a least-privilege custom role is
//!   tested as on a real server). A refusal is 13 `Unauthorized`, "not
//!   authorized on <db> to execute command { ... }". Resource matching,
//!   including `{db: "", collection: ""}` not reaching `local`, `config` or
//!   `system.*` collections, and the rule per command: the `authz` module.
//!   `connectionStatus` with `showPrivileges` returns the login's roles
//!   (direct and inherited) and their privileges merged by resource.
//! - Built-in roles with the privileges of MongoDB 8.0's
//!   `builtin_roles.yml`: `read`, `readWrite`, `dbAdmin`, `userAdmin`,
//!   `dbOwner` in every database; `readAnyDatabase`,
//!   `readWriteAnyDatabase`, `userAdminAnyDatabase`, `dbAdminAnyDatabase`,
//!   `clusterMonitor`, `clusterManager`, `hostManager`, `clusterAdmin`,
//!   `backup`, `restore`, `enableSharding`, `directShardOperations` and
//!   `root` (their union, not `anyAction`) in `admin`; `__system` is
//!   `anyAction` on `anyResource`. As on the server they inherit no roles:
//!   their privileges are flattened.
//! - Roles and users: `createRole`, `updateRole`, `dropRole`,
//!   `grantRolesToRole`, `revokeRolesFromRole`, `grantPrivilegesToRole`,
//!   `revokePrivilegesFromRole`, `rolesInfo`, `createUser`, `updateUser`,
//!   `dropUser`, `grantRolesToUser`, `revokeRolesFromUser`, `usersInfo`,
//!   with the server's error codes. `rolesInfo` returns privileges
//!   normalised (same-resource privileges merged, actions in the server's
//!   order), so clients must compare them as sets.
//! - Documents, for what a client such as dbgrant's ownership ledger
//!   needs: `find` (first batch of 101, then `getMore`), `getMore`,
//!   `killCursors`, `insert`, `update` (operators `$set`, `$unset`,
//!   `$setOnInsert`, `$inc`, replacements, `upsert`, `multi`) and `delete`
//!   on an in-memory store per namespace, with `_id` uniqueness (11000) and
//!   the common query operators; each needs `find` / `insert` / `update`
//!   (+ `insert` to upsert) / `remove` on its collection.
//!
//! What it does not model: other data commands (`aggregate`, `count`,
//! `createIndexes`, ...), projections, collations, regular expressions and
//! array update operators (refused with `BadValue`, never ignored), replica
//! sets, X.509 authentication, SCRAM-SHA-1, privileges on `system.buckets`
//! (time series) resources, the built-in role `searchCoordinator`, the
//! privilege `getParameter` needs (any login may call it) and cursor
//! ownership (any login may kill any cursor).
//!
//! Test hooks on [`MongoDouble`]: the command log, counters (reads and
//! writes of users, roles and documents), latency and per-command delays,
//! injected errors and dropped connections, refusing connections, and
//! direct access to the roles, users and documents.

mod authz;
mod catalog;
mod commands;
mod data;
mod error;
mod faults;
mod journal;
mod oidc;
mod scram;
mod server;
mod state;
mod tls;
mod umc;
mod wire;

pub use catalog::{ACTIONS, ADMIN_BUILTIN_ROLES, DATABASE_BUILTIN_ROLES};
pub use error::{CommandError, code_name, codes};
pub use faults::{Fault, FaultAction};
pub use journal::{CommandKind, CommandRecord, Counters, Outcome};
pub use oidc::{MECHANISM as OIDC_MECHANISM, OidcConfig, OidcIdentity, Validator as OidcValidator};
pub use state::{Privilege, Resource, Role, RoleName, User, normalize_privileges};
pub use tls::{PkiFiles, TestPki, TlsConfig};

use anyhow::{Context, Result};
use commands::{Login, ServerInfo};
use faults::Faults;
use server::{Shared, lock};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A login the double accepts over SCRAM-SHA-256, with the roles granted
/// to it (built-in, or custom roles the test creates: they are resolved
/// when each command runs).
#[derive(Clone)]
pub struct ScramUser {
    /// User name.
    pub name: String,
    /// Authentication database (usually `admin`).
    pub db: String,
    /// Password.
    pub password: String,
    /// Roles granted to the user.
    pub roles: Vec<RoleName>,
}

impl ScramUser {
    /// A user in `admin` granted `roles` (`(role, db)` pairs), e.g.
    /// `ScramUser::with_roles("op", "pw", &[("userAdminAnyDatabase", "admin"), ("readWrite", "dbgrant")])`.
    pub fn with_roles(name: impl Into<String>, password: impl Into<String>, roles: &[(&str, &str)]) -> Self {
        Self {
            name: name.into(),
            db: "admin".into(),
            password: password.into(),
            roles: roles.iter().map(|(role, db)| RoleName::new(*role, *db)).collect(),
        }
    }

    /// A user in `admin` with the documented minimum for dbgrant's
    /// identity: `userAdminAnyDatabase@admin` (roles and `$external` users
    /// for any database) and `readWrite@dbgrant` (the ownership ledger).
    pub fn admin(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self::with_roles(name, password, &DBGRANT_MINIMUM)
    }

    /// A user in `admin` with `root@admin`, for test setup.
    pub fn root(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self::with_roles(name, password, &[("root", "admin")])
    }

    /// A user in `admin` with `readAnyDatabase@admin`: reads documents, no
    /// user or role administration, no writes.
    pub fn read_only(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self::with_roles(name, password, &[("readAnyDatabase", "admin")])
    }
}

/// The roles [`ScramUser::admin`] grants: the documented minimum for
/// dbgrant's MongoDB identity.
pub const DBGRANT_MINIMUM: [(&str, &str); 2] = [("userAdminAnyDatabase", "admin"), ("readWrite", "dbgrant")];

impl std::fmt::Debug for ScramUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramUser")
            .field("name", &self.name)
            .field("db", &self.db)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// How to start a [`MongoDouble`].
#[derive(Debug, Clone)]
pub struct MongoDoubleConfig {
    /// Address to listen on (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// SCRAM logins.
    pub users: Vec<ScramUser>,
    /// Require authentication; `None` means "if any user is configured".
    pub require_auth: Option<bool>,
    /// Time every command takes (default 2 ms).
    pub latency: Duration,
    /// Reported by `buildInfo` (default `8.0.4`).
    pub server_version: String,
    /// Reported by `hello` (default 21).
    pub max_wire_version: i32,
    /// Serve TLS instead of plain TCP.
    pub tls: Option<TlsConfig>,
    /// Accept MONGODB-OIDC logins (`None`: the mechanism is not enabled).
    pub oidc: Option<OidcConfig>,
}

impl Default for MongoDoubleConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users: Vec::new(),
            require_auth: None,
            latency: Duration::from_millis(2),
            server_version: "8.0.4".into(),
            max_wire_version: 21,
            tls: None,
            oidc: None,
        }
    }
}

impl MongoDoubleConfig {
    /// Adds a login.
    pub fn user(mut self, user: ScramUser) -> Self {
        self.users.push(user);
        self
    }

    /// Sets the per-command latency.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Serves TLS with `tls`.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Enables MONGODB-OIDC with `oidc`.
    pub fn oidc(mut self, oidc: OidcConfig) -> Self {
        self.oidc = Some(oidc);
        self
    }

    /// Sets the version `buildInfo` reports.
    pub fn server_version(mut self, version: impl Into<String>) -> Self {
        self.server_version = version.into();
        self
    }
}

/// A running double. Dropping it stops the server (without waiting);
/// [`MongoDouble::shutdown`] stops it and waits.
pub struct MongoDouble {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MongoDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoDouble").field("addr", &self.addr).field("tls", &self.tls).finish_non_exhaustive()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl MongoDouble {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: MongoDoubleConfig) -> Result<Self> {
        let mut logins = HashMap::new();
        for user in &config.users {
            let credential = scram::ScramCredential::derive(&user.password)
                .map_err(|e| anyhow::anyhow!("user {}: {e}", user.name))?;
            logins.insert((user.db.clone(), user.name.clone()), Login { credential, roles: user.roles.clone() });
        }
        let info = ServerInfo {
            version: config.server_version.clone(),
            max_wire_version: config.max_wire_version,
            require_auth: config.require_auth.unwrap_or(!config.users.is_empty() || config.oidc.is_some()),
            logins,
            oidc: config.oidc.clone(),
        };
        let acceptor = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(info, Faults::new(config.latency)));
        let task = tokio::spawn(server::run(listener, shared.clone(), acceptor));
        Ok(Self { addr, tls: config.tls.is_some(), shared, task: Some(task) })
    }

    /// Starts a double with default settings and one login with the
    /// documented minimum for dbgrant ([`ScramUser::admin`]).
    pub async fn start_with_admin(user: &str, password: &str) -> Result<Self> {
        Self::start(MongoDoubleConfig::default().user(ScramUser::admin(user, password))).await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string without credentials
    /// (`mongodb://<addr>/?directConnection=true`, plus `tls=true` when
    /// serving TLS; add `&tlsCAFile=...` yourself).
    pub fn uri(&self) -> String {
        let tls = if self.tls { "&tls=true" } else { "" };
        format!("mongodb://{}/?directConnection=true{tls}", self.addr)
    }

    /// A connection string that logs in as `user` (source `admin`).
    pub fn uri_with_credentials(&self, user: &str, password: &str) -> String {
        let tls = if self.tls { "&tls=true" } else { "" };
        format!(
            "mongodb://{}:{}@{}/?directConnection=true&authSource=admin{tls}",
            percent_encode(user),
            percent_encode(password),
            self.addr
        )
    }

    // ------------------------------------------------------------ the log

    /// Every command received since the last [`clear_log`](Self::clear_log),
    /// in the order they finished (the driver's monitor `hello`s included).
    pub fn log(&self) -> Vec<CommandRecord> {
        lock(&self.shared.journal).records()
    }

    /// The logged user-management commands only.
    pub fn user_management_log(&self) -> Vec<CommandRecord> {
        self.log().into_iter().filter(|r| r.kind.is_user_management()).collect()
    }

    /// Logged commands named `name`.
    pub fn commands_named(&self, name: &str) -> Vec<CommandRecord> {
        self.log().into_iter().filter(|r| r.name == name).collect()
    }

    /// Empties the log (and so the counters) and resets
    /// [`max_concurrent_writes`](Self::max_concurrent_writes).
    pub fn clear_log(&self) {
        lock(&self.shared.journal).clear();
        let now = self.shared.inflight_writes.load(Ordering::SeqCst);
        self.shared.max_inflight_writes.store(now, Ordering::SeqCst);
    }

    /// Reads vs writes of users, roles and documents since the last clear.
    pub fn counters(&self) -> Counters {
        lock(&self.shared.journal).counters()
    }

    /// The most user/role writes ever in flight at once since the last
    /// clear (received, not yet answered) — more than 1 means the client
    /// did not serialise its writes.
    pub fn max_concurrent_writes(&self) -> usize {
        self.shared.max_inflight_writes.load(Ordering::SeqCst)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    // ---------------------------------------------------------- faults

    /// Sets the time every command takes.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.faults).set_latency(latency);
    }

    /// Makes `command` take `delay` instead of the latency; `None` reverts.
    pub fn set_command_delay(&self, command: &str, delay: Option<Duration>) {
        lock(&self.shared.faults).set_delay(command, delay);
    }

    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).arm(fault);
    }

    /// The next `n` commands named `command` (or, with `None`, any command
    /// except handshake/auth) fail with `code`.
    pub fn fail_next(&self, n: u32, code: i32, command: Option<&str>) {
        self.inject(Fault {
            action: FaultAction::Fail { code, message: format!("injected failure ({})", code_name(code)) },
            command: command.map(str::to_string),
            remaining: n,
        });
    }

    /// The next `n` commands (except handshake/auth) close their connection
    /// instead of running.
    pub fn drop_connections_next(&self, n: u32) {
        self.inject(Fault { action: FaultAction::DropBeforeApply, command: None, remaining: n });
    }

    /// The next `n` commands named `command` (or any, with `None`) run and
    /// then close their connection without replying.
    pub fn drop_after_apply_next(&self, n: u32, command: Option<&str>) {
        self.inject(Fault { action: FaultAction::DropAfterApply, command: command.map(str::to_string), remaining: n });
    }

    /// Disarms all faults (latency and delays stay).
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// While true, new connections are closed as soon as they are accepted.
    /// Open connections are unaffected; see
    /// [`close_all_connections`](Self::close_all_connections).
    pub fn refuse_connections(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Closes every open connection (commands in progress get no reply).
    pub fn close_all_connections(&self) {
        self.shared.kill.send_modify(|generation| *generation += 1);
    }

    // ----------------------------------------------------------- state

    /// All custom roles, ordered by `(role, db)`.
    pub fn roles(&self) -> Vec<Role> {
        lock(&self.shared.store).roles.values().cloned().collect()
    }

    /// One custom role.
    pub fn role(&self, role: &str, db: &str) -> Option<Role> {
        lock(&self.shared.store).roles.get(&RoleName::new(role, db)).cloned()
    }

    /// All users created through the commands or [`insert_user`](Self::insert_user)
    /// (not the configured SCRAM logins), ordered by `(db, user)`.
    pub fn users(&self) -> Vec<User> {
        lock(&self.shared.store).users.values().cloned().collect()
    }

    /// One user.
    pub fn user(&self, user: &str, db: &str) -> Option<User> {
        lock(&self.shared.store).users.get(&(db.to_string(), user.to_string())).cloned()
    }

    /// Creates or replaces a role out of band, without validation (to plant
    /// foreign or hand-edited roles). Privileges are normalised as the
    /// server would store them.
    pub fn insert_role(&self, mut role: Role) {
        role.privileges = normalize_privileges(std::mem::take(&mut role.privileges));
        lock(&self.shared.store).roles.insert(role.name.clone(), role);
    }

    /// Removes a role out of band (without unlinking it from others).
    pub fn remove_role(&self, role: &str, db: &str) -> Option<Role> {
        lock(&self.shared.store).roles.remove(&RoleName::new(role, db))
    }

    /// Creates or replaces a user out of band, without validation.
    pub fn insert_user(&self, user: User) {
        lock(&self.shared.store).users.insert((user.db.clone(), user.user.clone()), user);
    }

    /// Removes a user out of band (it can no longer log in).
    pub fn remove_user(&self, user: &str, db: &str) -> Option<User> {
        let mut store = lock(&self.shared.store);
        store.credentials.remove(&(db.to_string(), user.to_string()));
        store.users.remove(&(db.to_string(), user.to_string()))
    }

    /// The documents in `db.collection`, in natural (insertion) order.
    pub fn documents(&self, db: &str, collection: &str) -> Vec<bson::Document> {
        lock(&self.shared.documents).collections.get(&format!("{db}.{collection}")).cloned().unwrap_or_default()
    }

    /// Inserts a document out of band, without validation (an `_id` is
    /// generated if missing); replaces a document with the same `_id`.
    pub fn insert_document(&self, db: &str, collection: &str, document: bson::Document) {
        lock(&self.shared.documents).put(&format!("{db}.{collection}"), document);
    }

    /// Removes every document of `db.collection` out of band; returns how
    /// many there were.
    pub fn drop_collection(&self, db: &str, collection: &str) -> usize {
        lock(&self.shared.documents).collections.remove(&format!("{db}.{collection}")).map_or(0, |c| c.len())
    }

    /// Cursors opened by `find` and not yet exhausted or killed.
    pub fn open_cursors(&self) -> usize {
        lock(&self.shared.documents).open_cursors()
    }

    /// Forgets every role, user, document and cursor.
    pub fn reset_state(&self) {
        let mut store = lock(&self.shared.store);
        store.roles.clear();
        store.users.clear();
        store.credentials.clear();
        lock(&self.shared.documents).clear();
    }

    // -------------------------------------------------------- lifecycle

    /// Stops accepting, closes every connection and waits for the server to
    /// finish.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MongoDouble {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_encode_credentials() {
        assert_eq!(percent_encode("a b:c@d"), "a%20b%3Ac%40d");
    }
}
