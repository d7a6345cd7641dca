//! MONGODB-OIDC server side, as MongoDB 7.0/8.0 runs it over `saslStart` /
//! `saslContinue` (database `$external`).
//!
//! - Machine flow (one step): `saslStart {mechanism: "MONGODB-OIDC",
//!   payload: BSON {jwt}}` → the token is validated → `{done: true,
//!   conversationId, payload: <empty>}`.
//! - Human flow (two steps): `saslStart` with `{n: <principal name>}` or an
//!   empty document → `{done: false, payload: BSON {issuer, clientId,
//!   requestScopes}}` (the identity provider the client must get a token
//!   from); then `saslContinue {payload: BSON {jwt}}` → validated → done.
//! - A failed validation is 18 `AuthenticationFailed`; so is an expired
//!   token. Once the token a connection authenticated with expires, its
//!   commands (other than the handshake and auth) fail with 391
//!   `ReauthenticationRequired`, and the driver re-authenticates.
//!
//! Token validation is the test's: [`OidcConfig::validate`] maps a token to
//! an [`OidcIdentity`] (principal claim, authorization claim values,
//! expiry) or refuses it — for example by asking an ARM/Entra double which
//! token it issued. Authorisation follows the server's
//! `oidcIdentityProviders` semantics: with `useAuthorizationClaim` the user
//! `<authNamePrefix>/<principal>` gets the roles `admin.<authNamePrefix>/<value>`
//! for each claim value; without it, the `$external` user
//! `<authNamePrefix>/<principal>` must exist and brings its roles.
//! What the login may do is decided per command like for any login (see
//! `authz`): the privileges of its roles and of the roles they inherit,
//! resolved when the command runs. A principal in
//! [`OidcConfig::admin_principals`] also holds `root`.

use super::error::{CommandError, codes};
use super::state::{AuthzStore, RoleName};
use bson::{Bson, Document, doc};
use std::sync::Arc;
use std::time::SystemTime;

/// The mechanism name.
pub const MECHANISM: &str = "MONGODB-OIDC";

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    /// The principal claim (`sub`, or Entra's `oid`).
    pub principal: String,
    /// The authorization claim's values (`groups` object ids, or app-role
    /// values for a `roles` claim).
    pub groups: Vec<String>,
    /// When the token expires (`None`: never).
    pub expires_at: Option<SystemTime>,
}

impl OidcIdentity {
    /// An identity for `principal` with `groups`, expiring at `expires_at`.
    pub fn new(principal: impl Into<String>, groups: Vec<String>, expires_at: Option<SystemTime>) -> Self {
        Self { principal: principal.into(), groups, expires_at }
    }
}

/// Validates a bearer token: `Some` identity if the token is good.
pub type Validator = Arc<dyn Fn(&str) -> Option<OidcIdentity> + Send + Sync>;

/// The server's MONGODB-OIDC settings (one `oidcIdentityProviders` entry).
#[derive(Clone)]
pub struct OidcConfig {
    /// `authNamePrefix`: users are `<prefix>/<principal>`, claim roles
    /// `<prefix>/<value>` in `admin`.
    pub auth_name_prefix: String,
    /// `useAuthorizationClaim` (default true).
    pub use_authorization_claim: bool,
    /// `issuer`, sent to human-flow clients.
    pub issuer: String,
    /// `clientId`, sent to human-flow clients (`None`: the human flow is
    /// refused, as for a machine-only provider).
    pub client_id: Option<String>,
    /// `requestScopes`, sent to human-flow clients.
    pub request_scopes: Vec<String>,
    /// Principals that also hold `root`, whatever their roles.
    pub admin_principals: Vec<String>,
    /// Token validation.
    pub validate: Validator,
}

impl OidcConfig {
    /// A provider with `auth_name_prefix`, `useAuthorizationClaim: true`,
    /// machine flow only, validating tokens with `validate`.
    pub fn new(
        auth_name_prefix: impl Into<String>,
        validate: impl Fn(&str) -> Option<OidcIdentity> + Send + Sync + 'static,
    ) -> Self {
        Self {
            auth_name_prefix: auth_name_prefix.into(),
            use_authorization_claim: true,
            issuer: "https://login.microsoftonline.com/common/v2.0".into(),
            client_id: None,
            request_scopes: Vec::new(),
            admin_principals: Vec::new(),
            validate: Arc::new(validate),
        }
    }

    /// Grants `principal` the `root` role.
    pub fn admin_principal(mut self, principal: impl Into<String>) -> Self {
        self.admin_principals.push(principal.into());
        self
    }

    /// Sets `useAuthorizationClaim`.
    pub fn use_authorization_claim(mut self, yes: bool) -> Self {
        self.use_authorization_claim = yes;
        self
    }

    /// Accepts the human flow: tells clients to get tokens from `issuer`
    /// for `client_id` with `request_scopes`.
    pub fn human_flow(
        mut self,
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        request_scopes: Vec<String>,
    ) -> Self {
        self.issuer = issuer.into();
        self.client_id = Some(client_id.into());
        self.request_scopes = request_scopes;
        self
    }
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("auth_name_prefix", &self.auth_name_prefix)
            .field("use_authorization_claim", &self.use_authorization_claim)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("admin_principals", &self.admin_principals)
            .finish_non_exhaustive()
    }
}

/// What the first client message asked for.
pub(crate) enum Start {
    /// A token: authenticate now.
    Token(String),
    /// No token (`{n: ...}` or `{}`): send the identity provider's info.
    NeedIdpInfo,
}

fn auth_failed() -> CommandError {
    CommandError::new(codes::AUTHENTICATION_FAILED, "Authentication failed.")
}

/// Parses a client payload: BSON `{jwt}` or `{n}` / `{}`.
pub(crate) fn parse_start(payload: &[u8]) -> Result<Start, CommandError> {
    let doc = Document::from_reader(payload).map_err(|_| CommandError::bad_value("Invalid MONGODB-OIDC payload"))?;
    match doc.get("jwt") {
        Some(Bson::String(jwt)) => Ok(Start::Token(jwt.clone())),
        Some(_) => Err(CommandError::bad_value("MONGODB-OIDC: jwt must be a string")),
        None => match doc.get("n") {
            None | Some(Bson::String(_)) => Ok(Start::NeedIdpInfo),
            Some(_) => Err(CommandError::bad_value("MONGODB-OIDC: n must be a string")),
        },
    }
}

/// The token of a `saslContinue` payload (`{jwt}`).
pub(crate) fn parse_continue(payload: &[u8]) -> Result<String, CommandError> {
    match parse_start(payload)? {
        Start::Token(jwt) => Ok(jwt),
        Start::NeedIdpInfo => Err(CommandError::bad_value("MONGODB-OIDC: expected a jwt in the second step")),
    }
}

/// The identity provider info a human-flow client needs (BSON bytes).
pub(crate) fn idp_info(config: &OidcConfig) -> Result<Vec<u8>, CommandError> {
    let Some(client_id) = &config.client_id else {
        return Err(CommandError::new(
            codes::AUTHENTICATION_FAILED,
            "MONGODB-OIDC: this identity provider supports the machine flow only; send a token (jwt) in saslStart",
        ));
    };
    let mut info = doc! { "issuer": config.issuer.clone(), "clientId": client_id.clone() };
    if !config.request_scopes.is_empty() {
        info.insert("requestScopes", config.request_scopes.clone());
    }
    let mut bytes = Vec::new();
    info.to_writer(&mut bytes).map_err(|_| CommandError::new(1, "cannot encode the identity provider info"))?;
    Ok(bytes)
}

/// An authenticated OIDC login.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    /// `<prefix>/<principal>`.
    pub(crate) user: String,
    /// The roles it holds directly: one per authorization claim value, or
    /// the `$external` user's roles (plus `root` for an admin principal).
    pub(crate) roles: Vec<RoleName>,
    /// When its token expires.
    pub(crate) expires_at: Option<SystemTime>,
}

/// Validates `token` and resolves what the login may do.
pub(crate) fn authenticate(config: &OidcConfig, store: &AuthzStore, token: &str) -> Result<Login, CommandError> {
    let identity = (config.validate)(token).ok_or_else(auth_failed)?;
    if identity.expires_at.is_some_and(|t| t <= SystemTime::now()) {
        return Err(auth_failed());
    }
    let prefix = &config.auth_name_prefix;
    let user = format!("{prefix}/{}", identity.principal);
    let admin_principal = config.admin_principals.iter().any(|p| p == &identity.principal);
    let mut roles: Vec<RoleName> = if config.use_authorization_claim {
        identity.groups.iter().map(|g| RoleName::new(format!("{prefix}/{g}"), "admin")).collect()
    } else {
        match store.users.get(&("$external".to_string(), user.clone())) {
            Some(u) => u.roles.clone(),
            None if admin_principal => Vec::new(),
            None => return Err(auth_failed()),
        }
    };
    if admin_principal {
        roles.push(RoleName::new("root", "admin"));
    }
    Ok(Login { user, roles, expires_at: identity.expires_at })
}

/// `body` with the token in any MONGODB-OIDC payload replaced, for the
/// command log (`saslStart`, `saslContinue`, and `hello`'s
/// `speculativeAuthenticate`).
pub(crate) fn redact_for_log(name: &str, body: Document) -> Document {
    fn redact_payload(doc: &mut Document) {
        let Some(Bson::Binary(b)) = doc.get("payload") else { return };
        let Ok(mut inner) = Document::from_reader(b.bytes.as_slice()) else { return };
        if inner.contains_key("jwt") {
            inner.insert("jwt", "<redacted>");
            let mut bytes = Vec::new();
            if inner.to_writer(&mut bytes).is_ok() {
                doc.insert("payload", bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes });
            }
        }
    }
    let mut body = body;
    match name {
        "saslStart" | "saslContinue" => redact_payload(&mut body),
        "hello" | "isMaster" | "ismaster" => {
            if let Ok(spec) = body.get_document_mut("speculativeAuthenticate") {
                redact_payload(spec);
            }
        }
        _ => {}
    }
    body
}

/// A BSON `{jwt}` payload (for tests).
#[cfg(test)]
pub(crate) fn jwt_payload(token: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    doc! { "jwt": token }.to_writer(&mut bytes).unwrap();
    bytes
}

#[cfg(test)]
mod tests {
    use super::super::state::{Resource, Role, User};
    use super::*;
    use std::time::Duration;

    fn config() -> OidcConfig {
        OidcConfig::new("entra", |t: &str| match t {
            "ops" => Some(OidcIdentity::new("op-1", vec!["g-ops".into()], None)),
            "reader" => Some(OidcIdentity::new("u-2", vec!["g-read".into(), "g-none".into()], None)),
            "old" => Some(OidcIdentity::new("u-3", vec![], Some(SystemTime::now() - Duration::from_secs(1)))),
            _ => None,
        })
    }

    fn store() -> AuthzStore {
        let mut store = AuthzStore::default();
        for role in [
            Role::new("entra/g-ops", "admin")
                .with_role("userAdminAnyDatabase", "admin")
                .with_role("readWrite", "dbgrant"),
            Role::new("entra/g-read", "admin")
                .with_role("read", "orders")
                .with_privilege(Resource::collection("orders", "audit"), ["insert"]),
        ] {
            store.roles.insert(role.name.clone(), role);
        }
        store
    }

    #[test]
    fn claim_values_become_admin_roles_with_their_inheritance() {
        let s = store();
        let ops = authenticate(&config(), &s, "ops").unwrap();
        assert_eq!(ops.user, "entra/op-1");
        assert_eq!(ops.roles, [RoleName::new("entra/g-ops", "admin")]);
        assert!(s.all_roles(&ops.roles).contains(&RoleName::new("readWrite", "dbgrant")));
        let reader = authenticate(&config(), &s, "reader").unwrap();
        assert_eq!(reader.roles, [RoleName::new("entra/g-read", "admin"), RoleName::new("entra/g-none", "admin")]);
        assert!(s.all_privileges(&reader.roles).iter().any(|p| p.resource == Resource::collection("orders", "audit")));
    }

    #[test]
    fn bad_and_expired_tokens_fail_with_18() {
        for t in ["nope", "old"] {
            assert_eq!(authenticate(&config(), &store(), t).unwrap_err().code, codes::AUTHENTICATION_FAILED);
        }
    }

    #[test]
    fn without_the_claim_the_external_user_must_exist() {
        let cfg = config().use_authorization_claim(false);
        assert_eq!(authenticate(&cfg, &store(), "reader").unwrap_err().code, codes::AUTHENTICATION_FAILED);
        let mut s = store();
        let user = User::external("entra/u-2").with_role("entra/g-read", "admin");
        s.users.insert((user.db.clone(), user.user.clone()), user);
        let login = authenticate(&cfg, &s, "reader").unwrap();
        assert_eq!(login.roles, [RoleName::new("entra/g-read", "admin")]);
        assert!(s.all_roles(&login.roles).contains(&RoleName::new("read", "orders")));
        let admin = authenticate(&cfg.clone().admin_principal("op-1"), &store(), "ops").unwrap();
        assert_eq!(admin.roles, [RoleName::new("root", "admin")]);
    }

    #[test]
    fn payloads_parse_and_tokens_are_redacted_in_the_log() {
        assert!(matches!(parse_start(&jwt_payload("abc")).unwrap(), Start::Token(t) if t == "abc"));
        let mut n = Vec::new();
        doc! {"n": "someone"}.to_writer(&mut n).unwrap();
        assert!(matches!(parse_start(&n).unwrap(), Start::NeedIdpInfo));
        assert!(parse_start(b"junk").is_err());
        assert_eq!(idp_info(&config()).unwrap_err().code, codes::AUTHENTICATION_FAILED);
        let body = doc! {"saslStart": 1, "mechanism": MECHANISM, "payload": bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic, bytes: jwt_payload("secret-token-value") }};
        let logged = redact_for_log("saslStart", body);
        assert!(!format!("{logged:?}").contains("secret-token-value"));
        let bytes = logged.get_binary_generic("payload").unwrap();
        assert_eq!(Document::from_reader(bytes.as_slice()).unwrap().get_str("jwt").unwrap(), "<redacted>");
    }
}
