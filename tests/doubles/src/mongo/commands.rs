//! Command dispatch for one connection: the handshake (`hello`/`isMaster`),
//! SCRAM and MONGODB-OIDC (`saslStart`/`saslContinue`, speculative or not),
//! the small admin commands drivers send, the access checks (authentication,
//! then [`authz`](super::authz) against the login's roles), and hand-off to
//! the user-management and data commands.

use super::authz;
use super::data::{self, DocumentStore};
use super::error::{CommandError, CommandResult, codes};
use super::oidc::{self, OidcConfig};
use super::scram::{self, Conversation, ScramCredential};
use super::state::{AuthzStore, RoleName, privileges_bson, role_names_bson};
use super::umc;
use super::wire::MAX_MESSAGE_SIZE;
use bson::{Binary, Bson, DateTime, Document, doc, spec::BinarySubtype};
use std::collections::HashMap;
use std::sync::Mutex;

const MAX_BSON_OBJECT_SIZE: i32 = 16 * 1024 * 1024;
const MAX_WRITE_BATCH_SIZE: i32 = 100_000;
/// The conversation id the double hands out; one conversation per connection.
const CONVERSATION_ID: i32 = 1;

/// A configured SCRAM login.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    pub(crate) credential: ScramCredential,
    /// Roles granted to it.
    pub(crate) roles: Vec<RoleName>,
}

/// Fixed facts about the server, set at start.
#[derive(Debug)]
pub(crate) struct ServerInfo {
    pub(crate) version: String,
    pub(crate) max_wire_version: i32,
    pub(crate) require_auth: bool,
    /// Logins keyed by `(db, user)`.
    pub(crate) logins: HashMap<(String, String), Login>,
    /// MONGODB-OIDC, when enabled.
    pub(crate) oidc: Option<OidcConfig>,
}

/// Where a login's roles come from.
#[derive(Debug, Clone)]
pub(crate) enum Grants {
    /// Fixed at login: a configured SCRAM login, or an OIDC login's roles.
    Fixed(Vec<RoleName>),
    /// The user document of a user made with `createUser`, read at each
    /// command (as the server's user cache is invalidated on changes).
    Stored,
}

/// Who a connection is authenticated as.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) user: String,
    pub(crate) db: String,
    /// The roles granted to it directly.
    pub(crate) grants: Grants,
    /// Set for MONGODB-OIDC logins: their expiry.
    pub(crate) oidc: Option<oidc::Login>,
}

impl Identity {
    /// The roles granted to this login directly, now.
    pub(crate) fn roles(&self, store: &AuthzStore) -> Vec<RoleName> {
        match &self.grants {
            Grants::Fixed(roles) => roles.clone(),
            Grants::Stored => {
                store.users.get(&(self.db.clone(), self.user.clone())).map(|u| u.roles.clone()).unwrap_or_default()
            }
        }
    }
}

/// Per-connection state.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) connection_id: i64,
    pub(crate) identity: Option<Identity>,
    conversation: Option<Conversation>,
    /// A MONGODB-OIDC human-flow conversation awaits its token.
    oidc_pending: bool,
}

impl Session {
    pub(crate) fn new(connection_id: i64) -> Self {
        Self { connection_id, identity: None, conversation: None, oidc_pending: false }
    }
}

/// Commands that run without authentication.
fn is_public(name: &str) -> bool {
    matches!(
        name,
        "hello"
            | "isMaster"
            | "ismaster"
            | "saslStart"
            | "saslContinue"
            | "ping"
            | "buildInfo"
            | "buildinfo"
            | "connectionStatus"
            | "endSessions"
    )
}

fn is_known(name: &str) -> bool {
    is_public(name) || name == "getParameter" || umc::implements(name) || data::implements(name)
}

/// Runs one command and returns the success reply (without `ok`).
pub(crate) fn execute(
    info: &ServerInfo,
    store: &Mutex<AuthzStore>,
    documents: &Mutex<DocumentStore>,
    session: &mut Session,
    name: &str,
    db: &str,
    body: &Document,
) -> CommandResult {
    if !is_known(name) {
        return Err(CommandError::new(codes::COMMAND_NOT_FOUND, format!("no such command: '{name}'")));
    }
    if !is_public(name)
        && let Some(login) = session.identity.as_ref().and_then(|id| id.oidc.as_ref())
        && login.expires_at.is_some_and(|t| t <= std::time::SystemTime::now())
    {
        return Err(CommandError::new(
            codes::REAUTHENTICATION_REQUIRED,
            "Reauthentication required: the access token of this connection has expired",
        ));
    }
    if info.require_auth && !is_public(name) {
        let Some(id) = &session.identity else {
            return Err(CommandError::new(codes::UNAUTHORIZED, format!("Command {name} requires authentication")));
        };
        // The login's privileges, resolved now: roles created or changed
        // since it logged in count.
        let (roles, privileges) = {
            let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let roles = id.roles(&store);
            let privileges = store.all_privileges(&roles);
            (roles, privileges)
        };
        let login = authz::Login { user: &id.user, db: &id.db, roles: &roles, privileges: &privileges };
        authz::authorize(&login, name, db, body)?;
    }
    match name {
        "hello" | "isMaster" | "ismaster" => Ok(hello(info, store, session, body)),
        "saslStart" => sasl_start(info, store, session, db, body),
        "saslContinue" => sasl_continue(info, store, session, body),
        "ping" | "endSessions" => Ok(Document::new()),
        "buildInfo" | "buildinfo" => Ok(build_info(info)),
        "getParameter" => get_parameter(info, body),
        "connectionStatus" => Ok(connection_status(store, session, body)),
        _ if data::implements(name) => {
            let mut documents = documents.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            data::run(&mut documents, name, db, body)
        }
        _ => {
            let mut store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            umc::run(&mut store, name, db, body)
        }
    }
}

fn hello(info: &ServerInfo, store: &Mutex<AuthzStore>, session: &mut Session, body: &Document) -> Document {
    let mut reply = doc! {
        "helloOk": true,
        "ismaster": true,
        "isWritablePrimary": true,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        "maxMessageSizeBytes": i32::try_from(MAX_MESSAGE_SIZE).unwrap_or(i32::MAX),
        "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
        "localTime": DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": session.connection_id,
        "minWireVersion": 0,
        "maxWireVersion": info.max_wire_version,
        "readOnly": false,
    };
    if let Ok(qualified) = body.get_str("saslSupportedMechs")
        && let Some((db, user)) = qualified.split_once('.')
        && (info.logins.contains_key(&(db.to_string(), user.to_string()))
            || store.lock().unwrap_or_else(std::sync::PoisonError::into_inner).scram_credential(db, user).is_some())
    {
        reply.insert("saslSupportedMechs", vec![scram::MECHANISM]);
    }
    if let Ok(speculative) = body.get_document("speculativeAuthenticate")
        && matches!(speculative.get_str("mechanism"), Ok(scram::MECHANISM | oidc::MECHANISM))
    {
        let db = speculative.get_str("db").unwrap_or("admin");
        // A failed speculative attempt is simply not answered; the driver
        // then authenticates the long way and sees the real error.
        if let Ok(first) = sasl_start(info, store, session, db, speculative) {
            reply.insert("speculativeAuthenticate", first);
        }
    }
    reply
}

fn payload_bytes(body: &Document) -> CommandResult<Vec<u8>> {
    match body.get("payload") {
        Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
        Some(Bson::String(s)) => Ok(s.clone().into_bytes()),
        _ => Err(CommandError::bad_value("SASL payload must be binary data")),
    }
}

fn sasl_reply(payload: Vec<u8>, done: bool) -> Document {
    doc! {
        "conversationId": CONVERSATION_ID,
        "done": done,
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: payload },
    }
}

fn sasl_start(
    info: &ServerInfo,
    store: &Mutex<AuthzStore>,
    session: &mut Session,
    db: &str,
    body: &Document,
) -> CommandResult {
    session.conversation = None;
    session.oidc_pending = false;
    let mechanism = body.get_str("mechanism").unwrap_or_default();
    if mechanism == oidc::MECHANISM
        && let Some(config) = &info.oidc
    {
        return oidc_start(config, store, session, db, body);
    }
    if mechanism != scram::MECHANISM {
        return Err(CommandError::new(
            codes::MECHANISM_UNAVAILABLE,
            format!("Received authentication for mechanism {mechanism} which is not enabled"),
        ));
    }
    let skip_empty_exchange =
        body.get_document("options").ok().and_then(|o| o.get_bool("skipEmptyExchange").ok()).unwrap_or(false);
    let first = scram::parse_client_first(&payload_bytes(body)?)?;
    // Configured logins first, then users made with createUser and a pwd.
    let credential = match info.logins.get(&(db.to_string(), first.username.clone())) {
        Some(login) => Some(login.credential.clone()),
        None => store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .scram_credential(db, &first.username)
            .cloned(),
    };
    let Some(credential) = credential else {
        return Err(CommandError::new(codes::AUTHENTICATION_FAILED, "Authentication failed."));
    };
    let (conversation, payload) = Conversation::start(first, db, credential, skip_empty_exchange)?;
    session.conversation = Some(conversation);
    Ok(sasl_reply(payload, false))
}

fn sasl_continue(
    info: &ServerInfo,
    store: &Mutex<AuthzStore>,
    session: &mut Session,
    body: &Document,
) -> CommandResult {
    if session.oidc_pending
        && let Some(config) = &info.oidc
    {
        session.oidc_pending = false;
        if conversation_id(body) != Some(i64::from(CONVERSATION_ID)) {
            return Err(CommandError::new(codes::PROTOCOL_ERROR, "No SASL session state found"));
        }
        let token = oidc::parse_continue(&payload_bytes(body)?)?;
        oidc_login(config, store, session, &token)?;
        return Ok(sasl_reply(Vec::new(), true));
    }
    let Some(conversation) = session.conversation.as_mut() else {
        return Err(CommandError::new(codes::PROTOCOL_ERROR, "No SASL session state found"));
    };
    if conversation_id(body) != Some(i64::from(CONVERSATION_ID)) {
        session.conversation = None;
        return Err(CommandError::new(codes::PROTOCOL_ERROR, "No SASL session state found"));
    }
    let step = match conversation.step(&payload_bytes(body)?) {
        Ok(step) => step,
        Err(e) => {
            session.conversation = None;
            return Err(e);
        }
    };
    if step.done
        && let Some(done) = session.conversation.take()
    {
        let grants = match info.logins.get(&(done.db.clone(), done.username.clone())) {
            Some(login) => Grants::Fixed(login.roles.clone()),
            None => Grants::Stored,
        };
        session.identity = Some(Identity { user: done.username, db: done.db, grants, oidc: None });
    }
    Ok(sasl_reply(step.payload, step.done))
}

fn conversation_id(body: &Document) -> Option<i64> {
    body.get("conversationId").and_then(|v| match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    })
}

/// MONGODB-OIDC `saslStart`: a token authenticates at once (machine flow);
/// no token starts the human flow with the identity provider's info.
fn oidc_start(
    config: &OidcConfig,
    store: &Mutex<AuthzStore>,
    session: &mut Session,
    db: &str,
    body: &Document,
) -> CommandResult {
    if db != "$external" {
        return Err(CommandError::bad_value("MONGODB-OIDC authentication must use the $external database"));
    }
    match oidc::parse_start(&payload_bytes(body)?)? {
        oidc::Start::Token(token) => {
            oidc_login(config, store, session, &token)?;
            Ok(sasl_reply(Vec::new(), true))
        }
        oidc::Start::NeedIdpInfo => {
            let info = oidc::idp_info(config)?;
            session.oidc_pending = true;
            Ok(sasl_reply(info, false))
        }
    }
}

fn oidc_login(
    config: &OidcConfig,
    store: &Mutex<AuthzStore>,
    session: &mut Session,
    token: &str,
) -> Result<(), CommandError> {
    let login = {
        let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        oidc::authenticate(config, &store, token)?
    };
    session.identity = Some(Identity {
        user: login.user.clone(),
        db: "$external".into(),
        grants: Grants::Fixed(login.roles.clone()),
        oidc: Some(login),
    });
    Ok(())
}

fn version_parts(version: &str) -> Vec<i32> {
    let mut parts: Vec<i32> = version.split(['.', '-']).take(3).map(|p| p.parse().unwrap_or(0)).collect();
    parts.resize(4, 0);
    parts
}

fn build_info(info: &ServerInfo) -> Document {
    doc! {
        "version": info.version.clone(),
        "gitVersion": "0000000000000000000000000000000000000000",
        "modules": ["enterprise"],
        "allocator": "tcmalloc",
        "javascriptEngine": "mozjs",
        "sysInfo": "deprecated",
        "versionArray": version_parts(&info.version),
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        "storageEngines": ["devnull", "inMemory", "wiredTiger"],
    }
}

fn get_parameter(info: &ServerInfo, body: &Document) -> CommandResult {
    let parts = version_parts(&info.version);
    let fcv = format!("{}.{}", parts[0], parts[1]);
    let known: Vec<(&str, Bson)> = vec![
        ("featureCompatibilityVersion", Bson::Document(doc! { "version": fcv })),
        ("authenticationMechanisms", Bson::from(mechanisms(info))),
        ("userCacheInvalidationIntervalSecs", Bson::Int32(30)),
        ("scramSHA256IterationCount", Bson::Int32(4096)),
    ];
    let all = body.get_str("getParameter") == Ok("*");
    let mut reply = Document::new();
    for (key, value) in &known {
        if all || body.contains_key(*key) {
            reply.insert(*key, value.clone());
        }
    }
    if reply.is_empty() {
        return Err(CommandError::new(codes::INVALID_OPTIONS, "no option found to get"));
    }
    Ok(reply)
}

fn mechanisms(info: &ServerInfo) -> Vec<&'static str> {
    let mut all = vec![scram::MECHANISM];
    if info.oidc.is_some() {
        all.push(oidc::MECHANISM);
    }
    all
}

/// `connectionStatus`: the login, every role it holds (direct ones first,
/// then inherited, as the server's `authenticatedUserRoles`), and with
/// `showPrivileges` the privileges of all of them merged by resource.
fn connection_status(store: &Mutex<AuthzStore>, session: &Session, body: &Document) -> Document {
    let mut auth_info = doc! {
        "authenticatedUsers": Bson::Array(Vec::new()),
        "authenticatedUserRoles": Bson::Array(Vec::new()),
    };
    let mut privileges = Vec::new();
    if let Some(id) = &session.identity {
        let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let roles = id.roles(&store);
        auth_info.insert("authenticatedUsers", vec![doc! { "user": id.user.clone(), "db": id.db.clone() }]);
        auth_info.insert("authenticatedUserRoles", role_names_bson(&store.all_roles(&roles)));
        privileges = store.all_privileges(&roles);
    }
    if body.get("showPrivileges").and_then(super::umc::args::truthy) == Some(true) {
        auth_info.insert("authenticatedUserPrivileges", privileges_bson(&privileges));
    }
    doc! { "authInfo": auth_info }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_info(require_auth: bool) -> ServerInfo {
        let mut logins = HashMap::new();
        logins.insert(
            ("admin".to_string(), "ro".to_string()),
            Login {
                credential: ScramCredential::derive("pw").unwrap(),
                roles: vec![RoleName::new("readAnyDatabase", "admin")],
            },
        );
        ServerInfo { version: "8.0.4".into(), max_wire_version: 21, require_auth, logins, oidc: None }
    }

    fn exec(info: &ServerInfo, session: &mut Session, body: Document) -> CommandResult {
        let store = Mutex::new(AuthzStore::default());
        let documents = Mutex::new(DocumentStore::default());
        let name = body.keys().next().unwrap().clone();
        execute(info, &store, &documents, session, &name, "admin", &body)
    }

    #[test]
    fn access_rules() {
        let info = server_info(true);
        let mut session = Session::new(1);
        assert!(exec(&info, &mut session, doc! {"ping": 1}).is_ok());
        assert_eq!(exec(&info, &mut session, doc! {"nope": 1}).unwrap_err().code, 59);
        assert_eq!(exec(&info, &mut session, doc! {"rolesInfo": 1}).unwrap_err().code, 13);
        let reader = Grants::Fixed(vec![RoleName::new("readAnyDatabase", "admin")]);
        session.identity = Some(Identity { user: "ro".into(), db: "admin".into(), grants: reader, oidc: None });
        let err = exec(&info, &mut session, doc! {"rolesInfo": 1}).unwrap_err();
        assert_eq!(err.code, 13);
        assert_eq!(err.message, "not authorized on admin to execute command { rolesInfo: 1 }");
        assert!(exec(&info, &mut session, doc! {"find": "c"}).is_ok(), "readAnyDatabase reads");
        assert_eq!(exec(&info, &mut session, doc! {"insert": "c", "documents": [{}]}).unwrap_err().code, 13);
        let status = exec(&info, &mut session, doc! {"connectionStatus": 1, "showPrivileges": true}).unwrap();
        let auth = status.get_document("authInfo").unwrap();
        assert_eq!(auth.get_array("authenticatedUserRoles").unwrap().len(), 1);
        assert!(auth.get_array("authenticatedUserPrivileges").unwrap().len() >= 3);
        assert!(exec(&info, &mut session, doc! {"getParameter": 1, "featureCompatibilityVersion": 1}).is_ok());
        assert!(exec(&server_info(false), &mut Session::new(2), doc! {"rolesInfo": 1}).is_ok());
    }

    #[test]
    fn hello_advertises_mechanisms_for_known_users_only() {
        let info = server_info(true);
        let mut session = Session::new(7);
        let reply =
            exec(&info, &mut session, doc! {"isMaster": 1, "helloOk": true, "saslSupportedMechs": "admin.ro"}).unwrap();
        assert_eq!(reply.get_array("saslSupportedMechs").unwrap().len(), 1);
        assert_eq!(reply.get_i64("connectionId").unwrap(), 7);
        let reply = exec(&info, &mut session, doc! {"hello": 1, "saslSupportedMechs": "admin.ghost"}).unwrap();
        assert!(!reply.contains_key("saslSupportedMechs"));
    }

    #[test]
    fn build_info_and_parameters() {
        assert_eq!(version_parts("8.0.4"), [8, 0, 4, 0]);
        assert_eq!(version_parts("7.0.12-ent"), [7, 0, 12, 0]);
        let info = server_info(false);
        let reply = exec(&info, &mut Session::new(1), doc! {"getParameter": "*"}).unwrap();
        assert_eq!(reply.get_document("featureCompatibilityVersion").unwrap().get_str("version").unwrap(), "8.0");
        assert_eq!(exec(&info, &mut Session::new(1), doc! {"getParameter": 1, "x": 1}).unwrap_err().code, 72);
    }
}
