//! The Entra side: the v2.0 token endpoint (client credentials with a
//! secret, a certificate-signed client assertion, or a federated token),
//! the managed-identity endpoint (App Service and IMDS style), OpenID
//! discovery, and minting/verifying access tokens.

use super::directory::{Principal, PrincipalKind};
use super::jwt::{ClientCert, Jwt};
use super::server::{Ctx, Reply, Req};
use super::state::{State, TokenInfo};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew tolerated on assertion `exp`/`nbf`.
const SKEW: i64 = 300;

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `resource` without trailing slashes, lower-cased: how audiences compare.
pub(crate) fn normalize_resource(resource: &str) -> String {
    resource.trim_end_matches('/').to_ascii_lowercase()
}

/// Whether the double issues tokens for `resource`: the ARM audiences,
/// the configured resources, and `api://<client id>` / `<client id>` of
/// registered applications.
fn known_resource(state: &State, resource: &str) -> bool {
    let r = normalize_resource(resource);
    if state.config.arm_audiences.iter().chain(&state.config.resources).any(|k| normalize_resource(k) == r) {
        return true;
    }
    let app_id = r.strip_prefix("api://").unwrap_or(&r);
    state.directory.by_client_id(app_id).is_some_and(|p| p.kind == PrincipalKind::ServicePrincipal)
}

/// Mints and stores an access token for `principal`.
pub(crate) fn issue(
    state: &mut State,
    ctx: &Ctx,
    principal: &Principal,
    resource: &str,
    grant: &str,
) -> (String, TokenInfo) {
    let now = SystemTime::now();
    let lifetime = state.config.token_lifetime;
    let client_id = principal.client_id.clone().unwrap_or_else(|| principal.object_id.clone());
    let info = TokenInfo {
        object_id: principal.object_id.clone(),
        client_id: client_id.clone(),
        tenant_id: ctx.tenant_id.clone(),
        audience: resource.to_string(),
        grant: grant.to_string(),
        issued_at: now,
        expires_at: now + lifetime,
    };
    let mut claims = json!({
        "aud": resource,
        "iss": ctx.issuer(),
        "iat": unix(now),
        "nbf": unix(now),
        "exp": unix(info.expires_at),
        "oid": principal.object_id,
        "sub": principal.object_id,
        "tid": ctx.tenant_id,
        "appid": client_id,
        "azp": client_id,
        "idtyp": "app",
        "ver": "2.0",
        "uti": super::new_guid(),
    });
    if principal.groups.len() > 200 {
        // Entra's overage marker: the claim moves to a Graph call.
        claims["_claim_names"] = json!({"groups": "src1"});
        claims["_claim_sources"] = json!({"src1": {
            "endpoint": format!("https://graph.microsoft.com/v1.0/users/{}/getMemberObjects", principal.object_id)
        }});
    } else if !principal.groups.is_empty() {
        claims["groups"] = json!(principal.groups);
    }
    let token =
        ctx.signer.sign(&claims).unwrap_or_else(|_| format!("opaque.{}.{}", super::new_guid(), super::new_guid()));
    state.tokens.insert(token.clone(), info.clone());
    (token, info)
}

// ------------------------------------------------------------ token endpoint

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) fn token(state: &mut State, ctx: &Ctx, req: &Req) -> Reply {
    let err = |status, error: &str, code, text: &str| Reply::entra_error(ctx, status, error, code, text);
    if req.method != "POST" {
        return err(405, "invalid_request", 900561, "The endpoint only accepts POST requests.");
    }
    let tenant = req.path.trim_start_matches('/').split('/').next().unwrap_or("");
    if !tenant.eq_ignore_ascii_case(&ctx.tenant_id) {
        return err(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."),
        );
    }
    if req.path.to_ascii_lowercase().ends_with("/oauth2/token") {
        return err(400, "invalid_request", 900144, "The double serves only the v2.0 token endpoint.");
    }
    let content_type = req.header("content-type").unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return err(400, "invalid_request", 900144, "The request body must be application/x-www-form-urlencoded.");
    }
    let form: Vec<(String, String)> =
        form_urlencoded::parse(&req.body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let missing = |name: &str| {
        err(
            400,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };

    match field("grant_type") {
        None => return missing("grant_type"),
        Some("client_credentials") => {}
        Some(other) => {
            return err(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            );
        }
    }
    let Some(client_id) = field("client_id") else { return missing("client_id") };
    let client_id = client_id.to_string();
    let Some(scope) = field("scope") else { return missing("scope") };
    let resource = match resource_from_scope(scope) {
        Ok(r) => r,
        Err(text) => {
            let mut r = err(400, "invalid_scope", 1002012, &text);
            r.principal = Some(client_id);
            return r;
        }
    };
    let with_client = |mut r: Reply| {
        r.principal = Some(client_id.clone());
        r
    };
    let app = match state.directory.by_client_id(&client_id) {
        Some(p) if p.kind == PrincipalKind::ServicePrincipal => p.clone(),
        _ => {
            return with_client(err(
                400,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen \
                     if the application has not been installed by the administrator of the tenant.",
                    ctx.tenant_id
                ),
            ));
        }
    };
    if !known_resource(state, &resource) {
        return with_client(err(
            400,
            "invalid_resource",
            500011,
            &format!("The resource principal named {resource} was not found in the tenant named {}.", ctx.tenant_id),
        ));
    }

    let grant = if let Some(secret) = field("client_secret") {
        if !app.secrets.iter().any(|s| s == secret) {
            return with_client(err(
                401,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client \
                     secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            ));
        }
        "client_secret"
    } else if let Some(assertion) = field("client_assertion") {
        if field("client_assertion_type") != Some(ASSERTION_TYPE) {
            return with_client(err(
                400,
                "invalid_request",
                90014,
                &format!("The request body must contain 'client_assertion_type' = '{ASSERTION_TYPE}'."),
            ));
        }
        match verify_assertion(state, ctx, req, &app, assertion) {
            Ok(grant) => grant,
            Err((status, error, code, text)) => return with_client(err(status, error, code, &text)),
        }
    } else {
        return with_client(err(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };

    let (token, _) = issue(state, ctx, &app, &resource, grant);
    let lifetime = state.config.token_lifetime.as_secs();
    let mut reply = Reply::json(
        200,
        &json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }),
    );
    reply.principal = Some(client_id);
    reply
}

/// `https://x/.default` → `https://x`; anything else is refused as Entra
/// refuses it for client credentials.
fn resource_from_scope(scope: &str) -> Result<String, String> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let resources: Vec<&str> =
        scopes.iter().map(|s| s.strip_suffix("/.default").ok_or(*s)).collect::<Result<_, _>>().map_err(|s| {
            format!(
                "The provided value for scope {s} is not valid. Client credential flows must have a scope value \
                 with /.default suffixed to the resource identifier (application ID URI)."
            )
        })?;
    match resources.as_slice() {
        [] => Err("The provided value for scope is not valid: it is empty.".into()),
        [one] if !one.is_empty() => Ok(one.to_string()),
        [_] => Err("The provided value for scope /.default is not valid.".into()),
        _ => Err(format!(
            "The provided value for scope {scope} is not valid: a token can be issued for only one resource."
        )),
    }
}

type Refusal = (u16, &'static str, u32, String);

/// A certificate-signed client assertion (`iss` = `sub` = client id) or a
/// federated token from a trusted issuer (workload identity).
fn verify_assertion(
    state: &State,
    ctx: &Ctx,
    req: &Req,
    app: &Principal,
    assertion: &str,
) -> Result<&'static str, Refusal> {
    let jwt = Jwt::parse(assertion)
        .map_err(|e| (400, "invalid_request", 50027, format!("JWT token is invalid or malformed: {e}.")))?;
    let client_id = app.client_id.as_deref().unwrap_or_default();
    let now = unix(SystemTime::now());
    let exp = jwt.claim_i64("exp").ok_or_else(|| {
        (400, "invalid_request", 50027, "JWT token is invalid or malformed: no 'exp' claim.".to_string())
    })?;
    if exp + SKEW < now || jwt.claim_i64("nbf").is_some_and(|nbf| nbf - SKEW > now) {
        return Err((
            401,
            "invalid_client",
            700024,
            format!("Client assertion is not within its valid time range. Current time: {now}, assertion exp: {exp}."),
        ));
    }
    let iss = jwt.claim_str("iss").unwrap_or_default();
    let sub = jwt.claim_str("sub").unwrap_or_default();
    if iss.eq_ignore_ascii_case(client_id) {
        verify_certificate_assertion(req, ctx, app, &jwt, sub)?;
        return Ok("client_certificate");
    }
    verify_federated_token(state, ctx, app, &jwt, iss, sub)?;
    Ok("workload_identity")
}

fn verify_certificate_assertion(req: &Req, ctx: &Ctx, app: &Principal, jwt: &Jwt, sub: &str) -> Result<(), Refusal> {
    let client_id = app.client_id.as_deref().unwrap_or_default();
    if !sub.eq_ignore_ascii_case(client_id) {
        return Err((
            401,
            "invalid_client",
            700021,
            format!("Client assertion 'sub' must be the client id '{client_id}'."),
        ));
    }
    // aud must be this token endpoint (or the tenant's issuer), as
    // addressed: https://<host>/<tenant>/oauth2/v2.0/token.
    let base = req.base_url(ctx).to_ascii_lowercase();
    let tenant = ctx.tenant_id.to_ascii_lowercase();
    let accepted: Vec<String> = [&base, &ctx.base_url.to_ascii_lowercase()]
        .iter()
        .flat_map(|b| [format!("{b}/{tenant}/oauth2/v2.0/token"), format!("{b}/{tenant}/v2.0")])
        .collect();
    if !jwt.audiences().iter().any(|a| accepted.contains(&a.trim_end_matches('/').to_ascii_lowercase())) {
        return Err((
            401,
            "invalid_client",
            70021,
            format!("The audience {:?} of the client assertion is not this token endpoint.", jwt.audiences()),
        ));
    }
    if jwt.claim_str("jti").is_none_or(str::is_empty) {
        return Err((400, "invalid_request", 50027, "JWT token is invalid or malformed: no 'jti' claim.".into()));
    }
    let certs: Vec<ClientCert> = app.certificates.iter().filter_map(|pem| ClientCert::from_pem(pem).ok()).collect();
    let Some(cert) = certs.iter().find(|c| c.named_by(&jwt.header)) else {
        return Err((
            401,
            "invalid_client",
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not registered on \
                 application. [Reason - The key was not found., Thumbprint of key used by client: {:?}, \
                 Please visit the Azure Portal to verify the certificate is registered for app '{client_id}'.]",
                jwt.header.get("x5t").or_else(|| jwt.header.get("kid")).cloned().unwrap_or(Value::Null)
            ),
        ));
    };
    cert.verify(jwt)
        .map_err(|e| (401, "invalid_client", 700027, format!("Client assertion failed signature validation. ({e})")))
}

fn verify_federated_token(
    state: &State,
    ctx: &Ctx,
    app: &Principal,
    jwt: &Jwt,
    iss: &str,
    sub: &str,
) -> Result<(), Refusal> {
    let own_issuer = ctx.oidc_issuer();
    let by_issuer: Vec<_> = app
        .federated_credentials
        .iter()
        .filter(|f| {
            let issuer = if f.issuer.is_empty() { own_issuer.as_str() } else { f.issuer.as_str() };
            issuer.trim_end_matches('/') == iss.trim_end_matches('/')
        })
        .collect();
    if by_issuer.is_empty() {
        return Err((
            400,
            "invalid_request",
            700211,
            format!("No matching federated identity record found for presented assertion issuer '{iss}'."),
        ));
    }
    let by_subject: Vec<_> = by_issuer.into_iter().filter(|f| f.subject == sub).collect();
    if by_subject.is_empty() {
        return Err((
            400,
            "invalid_request",
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. \
                 Assertion Subject: '{sub}'. Assertion Audience: '{}'.",
                jwt.audiences().join(",")
            ),
        ));
    }
    let audiences = jwt.audiences();
    if !by_subject.iter().any(|f| f.audiences.iter().any(|a| audiences.contains(a))) {
        return Err((
            400,
            "invalid_request",
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                audiences.join(",")
            ),
        ));
    }
    let signature = if iss.trim_end_matches('/') == own_issuer {
        if ctx.signer.verify(jwt) { Ok(()) } else { Err("signed by another key".to_string()) }
    } else {
        // External issuers: their published keys (JWKS), registered with
        // `trust_issuer`, as Entra fetches them from the issuer's discovery
        // document; an issuer whose keys it cannot get is refused.
        match state.directory.trusted_issuers.iter().find(|(t, _)| t.trim_end_matches('/') == iss.trim_end_matches('/'))
        {
            Some((_, keys)) => super::jwt::Jwk::verify_with_set(keys, jwt).map_err(|e| e.to_string()),
            None => Err(format!("the signing keys of issuer '{iss}' could not be retrieved")),
        }
    };
    if let Err(reason) = signature {
        return Err((
            401,
            "invalid_client",
            700027,
            format!("Client assertion failed signature validation. [Reason - {reason}.]"),
        ));
    }
    Ok(())
}

// --------------------------------------------------------- managed identity

/// `GET /msi/token` (App Service: `X-IDENTITY-HEADER`) and
/// `GET /metadata/identity/oauth2/token` (IMDS: `Metadata: true`).
pub(crate) fn managed_identity(state: &mut State, ctx: &Ctx, req: &Req) -> Reply {
    let bad = |status: u16, error: &str, text: &str| {
        let mut r = Reply::json(status, &json!({"error": error, "error_description": text}));
        r.error_code = Some(error.to_string());
        r
    };
    if req.method != "GET" {
        return bad(405, "invalid_request", "Only GET is supported.");
    }
    let app_service = req.path.eq_ignore_ascii_case("/msi/token");
    if app_service {
        if req.header("x-identity-header") != Some(state.config.identity_header.as_str()) {
            let mut r = Reply::json(
                401,
                &json!({"statusCode": 401, "message": "Unauthorized: the X-IDENTITY-HEADER header is missing or wrong."}),
            );
            r.error_code = Some("unauthorized".into());
            return r;
        }
    } else if !req.header("metadata").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return bad(400, "invalid_request", "Required metadata header not specified");
    }
    match req.param("api-version") {
        None => return bad(400, "invalid_request", "Required query variable 'api-version' is missing"),
        Some("2019-08-01" | "2018-02-01") => {}
        Some(other) => return bad(400, "invalid_request", &format!("Invalid api-version '{other}'")),
    }
    let Some(resource) = req.param("resource").map(str::to_string) else {
        return bad(400, "invalid_request", "Required query variable 'resource' is missing");
    };
    let wanted = |p: &&Principal| {
        let mi = p.managed_identity.as_ref();
        if let Some(c) = req.param("client_id") {
            p.client_id.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(c))
        } else if let Some(o) = req.param("object_id").or_else(|| req.param("principal_id")) {
            p.object_id.eq_ignore_ascii_case(o)
        } else if let Some(r) = req.param("msi_res_id").or_else(|| req.param("mi_res_id")) {
            mi.and_then(|m| m.resource_id.as_deref()).is_some_and(|x| x.eq_ignore_ascii_case(r))
        } else {
            mi.is_some_and(|m| m.system_assigned)
        }
    };
    let Some(identity) = state.directory.managed_identities().find(wanted).cloned() else {
        return bad(400, "invalid_request", "Identity not found");
    };
    if !known_resource(state, &resource) {
        let mut r = bad(
            400,
            "invalid_resource",
            &format!("AADSTS500011: The resource principal named {resource} was not found in the tenant."),
        );
        r.principal = Some(identity.object_id.clone());
        return r;
    }
    let (token, info) = issue(state, ctx, &identity, &resource, "managed_identity");
    let mut reply = Reply::json(
        200,
        &json!({
            "access_token": token,
            "expires_on": unix(info.expires_at).to_string(),
            "expires_in": state.config.token_lifetime.as_secs().to_string(),
            "ext_expires_in": state.config.token_lifetime.as_secs().to_string(),
            "not_before": unix(info.issued_at).to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }),
    );
    reply.principal = Some(identity.object_id);
    reply
}

// ----------------------------------------------------------------- discovery

/// OpenID configuration and keys for the tenant and for the double's
/// federated-token issuer.
pub(crate) fn discovery(ctx: &Ctx, req: &Req) -> Reply {
    let path = req.path.to_ascii_lowercase();
    let tenant = ctx.tenant_id.to_ascii_lowercase();
    if path == format!("/{tenant}/v2.0/.well-known/openid-configuration") {
        return Reply::json(
            200,
            &json!({
                "issuer": ctx.issuer(),
                "token_endpoint": format!("{}/{}/oauth2/v2.0/token", ctx.base_url, ctx.tenant_id),
                "jwks_uri": format!("{}/{}/discovery/v2.0/keys", ctx.base_url, ctx.tenant_id),
                "response_types_supported": ["token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "tenant_region_scope": "NA",
            }),
        );
    }
    if path == "/oidc/.well-known/openid-configuration" {
        return Reply::json(
            200,
            &json!({
                "issuer": ctx.oidc_issuer(),
                "jwks_uri": format!("{}/oidc/keys", ctx.base_url),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
            }),
        );
    }
    if path == format!("/{tenant}/discovery/v2.0/keys") || path == "/oidc/keys" {
        return Reply::json(200, &ctx.signer.jwks());
    }
    Reply::arm_error(404, "NotFound", format!("The double serves no {}.", req.path))
}

/// A federated token (what a Kubernetes projected service-account token
/// file holds) from the double's own issuer.
pub(crate) fn federated_token(ctx: &Ctx, subject: &str, audience: &str, lifetime: Duration) -> String {
    let now = unix(SystemTime::now());
    let claims = json!({
        "iss": ctx.oidc_issuer(),
        "sub": subject,
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime.as_secs() as i64,
        "jti": super::new_guid(),
    });
    ctx.signer.sign(&claims).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_need_default_and_one_resource() {
        assert_eq!(
            resource_from_scope("https://management.azure.com/.default").unwrap(),
            "https://management.azure.com"
        );
        assert!(resource_from_scope("https://management.azure.com").is_err());
        assert!(resource_from_scope("https://a/.default https://b/.default").is_err());
        assert!(resource_from_scope("").is_err());
        assert!(resource_from_scope("/.default").is_err());
    }
}
