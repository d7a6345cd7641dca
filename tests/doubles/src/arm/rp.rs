//! The ARM side: authentication of bearer tokens, `api-version`, routing,
//! authorization, throttling, and the `Microsoft.DocumentDB` resource
//! provider for accounts, SQL role definitions and SQL role assignments
//! (with long-running PUT/DELETE and the per-account exclusive lock).

// Refusals are whole HTTP replies; boxing them would buy nothing here.
#![allow(clippy::result_large_err)]

use super::actions::{DATA_ACTIONS, is_valid_data_action};
use super::directory::ArmAccess;
use super::entra::normalize_resource;
use super::model::{
    AccountRef, DATA_CONTRIBUTOR_ID, DATA_READER_ID, RoleAssignment, RoleDefinition, is_guid, normalize_scope,
    scope_contains, scope_within_account,
};
use super::server::{Ctx, Reply, Req};
use super::state::{Change, Operation, OperationInfo, OperationStatus, State, TokenInfo};
use super::throttle::TokenBucket;
use serde_json::{Map, Value, json};
use std::time::{Instant, SystemTime};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Account(AccountRef),
    Definitions(AccountRef),
    Definition(AccountRef, String),
    Assignments(AccountRef),
    Assignment(AccountRef, String),
    OperationResult(AccountRef, String),
    OperationStatus { subscription: String, id: String },
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_route(path: &str) -> Option<Route> {
    let segs: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
    let seg = |i: usize, word: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(word));
    if !seg(0, "subscriptions") || segs.len() < 2 {
        return None;
    }
    if seg(2, "providers")
        && seg(3, "Microsoft.DocumentDB")
        && seg(4, "locations")
        && seg(6, "operationsStatus")
        && segs.len() == 8
    {
        return Some(Route::OperationStatus { subscription: segs[1].clone(), id: segs[7].clone() });
    }
    if !(seg(2, "resourceGroups")
        && seg(4, "providers")
        && seg(5, "Microsoft.DocumentDB")
        && seg(6, "databaseAccounts"))
        || segs.len() < 8
    {
        return None;
    }
    let account = AccountRef::new(segs[1].clone(), segs[3].clone(), segs[7].clone());
    let rest = &segs[8..];
    let kind = rest.first().map(|s| s.to_ascii_lowercase());
    match (kind.as_deref(), rest.len()) {
        (None, _) => Some(Route::Account(account)),
        (Some("sqlroledefinitions"), 1) => Some(Route::Definitions(account)),
        (Some("sqlroledefinitions"), 2) => Some(Route::Definition(account, rest[1].clone())),
        (Some("sqlroleassignments"), 1) => Some(Route::Assignments(account)),
        (Some("sqlroleassignments"), 2) => Some(Route::Assignment(account, rest[1].clone())),
        (Some("sqlroledefinitions" | "sqlroleassignments"), 4) if rest[2].eq_ignore_ascii_case("operationResults") => {
            Some(Route::OperationResult(account, rest[3].clone()))
        }
        _ => None,
    }
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map(|ts| ts.to_string()).unwrap_or_default()
}

/// Handles an ARM request.
pub(crate) fn handle(state: &mut State, ctx: &Ctx, req: &Req) -> Reply {
    state.settle();
    let caller = match authenticate(state, ctx, req) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    let mut reply = handle_authenticated(state, ctx, req, &caller);
    reply.principal = Some(caller.object_id);
    reply
}

fn authenticate(state: &State, ctx: &Ctx, req: &Req) -> Result<TokenInfo, Reply> {
    let challenge = |code: &str, message: String, description: &str| {
        Reply::arm_error(401, code, message).header(
            "WWW-Authenticate",
            format!(
                "Bearer authorization_uri=\"{}/{}\", error=\"invalid_token\", error_description=\"{description}\"",
                ctx.base_url, ctx.tenant_id
            ),
        )
    };
    let Some(header) = req.header("authorization") else {
        return Err(challenge(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.".into(),
            "The authentication failed because of missing 'Authorization' header.",
        ));
    };
    let token = match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
        _ => {
            return Err(challenge(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.".into(),
                "The authentication scheme is not supported.",
            ));
        }
    };
    let Some(info) = state.tokens.get(token) else {
        return Err(challenge(
            "InvalidAuthenticationToken",
            "The access token is invalid.".into(),
            "The access token is invalid.",
        ));
    };
    let now = SystemTime::now();
    if info.expires_at <= now {
        return Err(challenge(
            "ExpiredAuthenticationToken",
            format!(
                "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                rfc3339(info.expires_at),
                rfc3339(now)
            ),
            "The access token has expired.",
        ));
    }
    let audience = normalize_resource(&info.audience);
    if !state.config.arm_audiences.iter().any(|a| normalize_resource(a) == audience) {
        return Err(challenge(
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{}'. It should exactly match \
                 with one of the allowed audiences '{}'.",
                info.audience,
                state.config.arm_audiences.join("','")
            ),
            "The access token has been obtained for wrong audience or resource.",
        ));
    }
    Ok(info.clone())
}

fn handle_authenticated(state: &mut State, ctx: &Ctx, req: &Req, caller: &TokenInfo) -> Reply {
    // api-version
    let api_version = match req.param("api-version") {
        None | Some("") => {
            return Reply::arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
        Some(v) if !state.config.api_versions.iter().any(|a| a == v) => {
            return Reply::arm_error(
                400,
                "NoRegisteredProviderFound",
                format!(
                    "No registered resource provider found for API version '{v}' and type 'databaseAccounts' \
                     (namespace 'Microsoft.DocumentDB'). The supported api-versions are '{}'.",
                    state.config.api_versions.join(", ")
                ),
            );
        }
        Some(v) => v.to_string(),
    };

    // route
    let Some(route) = parse_route(&req.path) else {
        return Reply::arm_error(
            404,
            "InvalidResourceType",
            format!(
                "The resource type could not be found in the namespace 'Microsoft.DocumentDB' for path '{}'.",
                req.path
            ),
        );
    };

    // existence of the subscription / resource group / account
    let account = match &route {
        Route::OperationStatus { subscription, .. } => {
            if !state.accounts.values().any(|a| a.reference().subscription_id.eq_ignore_ascii_case(subscription)) {
                return Reply::arm_error(
                    404,
                    "SubscriptionNotFound",
                    format!("The subscription '{subscription}' could not be found."),
                );
            }
            let id = match &route {
                Route::OperationStatus { id, .. } => id.to_ascii_lowercase(),
                _ => String::new(),
            };
            state.operations.get(&id).map(|op| op.info.account.clone())
        }
        Route::Account(a)
        | Route::Definitions(a)
        | Route::Definition(a, _)
        | Route::Assignments(a)
        | Route::Assignment(a, _)
        | Route::OperationResult(a, _) => match resolve_account(state, a) {
            Ok(found) => Some(found),
            Err(reply) => return reply,
        },
    };

    // method
    let method = req.method.as_str();
    let allowed = match &route {
        Route::Definition(..) | Route::Assignment(..) => matches!(method, "GET" | "PUT" | "DELETE"),
        _ => method == "GET",
    };
    if !allowed {
        let mut reply = Reply::arm_error(
            405,
            "MethodNotAllowed",
            format!("The double does not support {method} on this resource (path '{}').", req.path),
        );
        reply.account = account.as_ref().map(AccountRef::id);
        return reply;
    }

    // authorization
    let action = match (&route, method) {
        (Route::Account(_), _) => "Microsoft.DocumentDB/databaseAccounts/read".to_string(),
        (Route::Definitions(_) | Route::Definition(..), m) => format!(
            "Microsoft.DocumentDB/databaseAccounts/sqlRoleDefinitions/{}",
            match m {
                "PUT" => "write",
                "DELETE" => "delete",
                _ => "read",
            }
        ),
        (Route::Assignments(_) | Route::Assignment(..), m) => format!(
            "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments/{}",
            match m {
                "PUT" => "write",
                "DELETE" => "delete",
                _ => "read",
            }
        ),
        _ => "Microsoft.DocumentDB/locations/operationsStatus/read".to_string(),
    };
    let is_write = matches!(method, "PUT" | "DELETE");
    let access = state.directory.get(&caller.object_id).map(|p| p.arm_access).unwrap_or_default();
    let permitted = match access {
        ArmAccess::Write => true,
        ArmAccess::Read => !is_write,
        ArmAccess::None => false,
    };
    let account_id = account.as_ref().map(AccountRef::id);
    let with_account = |mut r: Reply| {
        r.account = account_id.clone();
        r
    };
    if !permitted {
        let scope = req.path.clone();
        return with_account(Reply::arm_error(
            403,
            "AuthorizationFailed",
            format!(
                "The client '{oid}' with object id '{oid}' does not have authorization to perform action \
                 '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please \
                 refresh your credentials.",
                oid = caller.object_id
            ),
        ));
    }

    // ARM's per-principal buckets
    let subscription = match (&route, &account) {
        (Route::OperationStatus { subscription, .. }, _) => subscription.to_ascii_lowercase(),
        (_, Some(a)) => a.subscription_id.to_ascii_lowercase(),
        _ => String::new(),
    };
    let key = (subscription.clone(), caller.object_id.to_ascii_lowercase());
    let (limit, header, buckets) = if is_write {
        (state.config.write_bucket, "x-ms-ratelimit-remaining-subscription-writes", &mut state.write_buckets)
    } else {
        (state.config.read_bucket, "x-ms-ratelimit-remaining-subscription-reads", &mut state.read_buckets)
    };
    let remaining = match buckets.entry(key).or_insert_with(|| TokenBucket::full(limit)).take(limit) {
        Ok(remaining) => remaining,
        Err(retry_after) => {
            return with_account(
                Reply::arm_error(
                    429,
                    "SubscriptionRequestsThrottled",
                    format!(
                        "Number of '{}' requests for subscription '{subscription}' actor '{}' exceeded. Please try \
                         again after '{retry_after}' seconds after the first request. The throttling limit is a \
                         bucket of {} refilled at {}/s.",
                        if is_write { "write" } else { "read" },
                        caller.object_id,
                        limit.capacity,
                        limit.refill_per_sec
                    ),
                )
                .header("Retry-After", retry_after.to_string())
                .header(header, "0"),
            );
        }
    };

    // Cosmos DB's per-account control-plane budget
    if is_write && let Some(a) = &account {
        let limit = state.config.account_writes;
        if let Some(acct) = state.account_mut(a)
            && let Err(retry_after) = acct.writes.take(limit)
        {
            return with_account(
                Reply::arm_error(
                    429,
                    "TooManyRequests",
                    format!(
                        "The request rate for control plane operations on database account '{}' exceeded the limit \
                         of {} per {} seconds. Please retry after {retry_after} seconds.",
                        a.name,
                        limit.max,
                        limit.window.as_secs()
                    ),
                )
                .header("Retry-After", retry_after.to_string())
                .header(header, remaining.to_string()),
            );
        }
    }

    let reply = match route {
        Route::Account(a) => {
            let body = state.account(&a).map(|s| s.account.to_json()).unwrap_or(Value::Null);
            Reply::json(200, &body)
        }
        Route::Definitions(a) => {
            let defs = state.account(&a).map(|s| s.all_definitions()).unwrap_or_default();
            Reply::json(200, &json!({"value": defs.iter().map(|d| d.to_json(&a)).collect::<Vec<_>>()}))
        }
        Route::Assignments(a) => {
            let list =
                state.account(&a).map(|s| s.assignments.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
            Reply::json(200, &json!({"value": list.iter().map(|x| x.to_json(&a)).collect::<Vec<_>>()}))
        }
        Route::Definition(a, name) => match method {
            "GET" => match state.account(&a).and_then(|s| s.definition(&name)) {
                Some(d) => Reply::json(200, &d.to_json(&a)),
                None => Reply::arm_error(
                    404,
                    "NotFound",
                    format!("The Role Definition with ID '{name}' was not found in account '{}'.", a.name),
                ),
            },
            "PUT" => match validate_definition(state, &a, &name, &req.body) {
                Ok((def, created)) => start(state, ctx, req, &a, Change::PutDefinition(def), created, &api_version),
                Err(reply) => reply,
            },
            _ => delete_definition(state, ctx, req, &a, &name, &api_version),
        },
        Route::Assignment(a, name) => match method {
            "GET" => match state.account(&a).and_then(|s| s.assignments.get(&name.to_ascii_lowercase()).cloned()) {
                Some(x) => Reply::json(200, &x.to_json(&a)),
                None => Reply::arm_error(
                    404,
                    "NotFound",
                    format!("The Role Assignment with ID '{name}' was not found in account '{}'.", a.name),
                ),
            },
            "PUT" => match validate_assignment(state, &a, &name, &req.body) {
                Ok((x, created)) => start(state, ctx, req, &a, Change::PutAssignment(x), created, &api_version),
                Err(reply) => reply,
            },
            _ => {
                let exists = state.account(&a).is_some_and(|s| s.assignments.contains_key(&name.to_ascii_lowercase()));
                if exists {
                    start(state, ctx, req, &a, Change::DeleteAssignment(name), false, &api_version)
                } else {
                    Reply::empty(204)
                }
            }
        },
        Route::OperationResult(a, id) => operation_result(state, ctx, req, &a, &id),
        Route::OperationStatus { id, .. } => operation_status(state, &subscription, &id),
    };
    with_account(reply.header(header, remaining.to_string()))
}

/// The account as stored (its canonical casing), or the ARM 404.
fn resolve_account(state: &State, a: &AccountRef) -> Result<AccountRef, Reply> {
    if let Some(found) = state.account(a) {
        return Ok(found.reference().clone());
    }
    let refs: Vec<&AccountRef> = state.accounts.values().map(|s| s.reference()).collect();
    if !refs.iter().any(|r| r.subscription_id.eq_ignore_ascii_case(&a.subscription_id)) {
        return Err(Reply::arm_error(
            404,
            "SubscriptionNotFound",
            format!("The subscription '{}' could not be found.", a.subscription_id),
        ));
    }
    if !refs.iter().any(|r| {
        r.subscription_id.eq_ignore_ascii_case(&a.subscription_id)
            && r.resource_group.eq_ignore_ascii_case(&a.resource_group)
    }) {
        return Err(Reply::arm_error(
            404,
            "ResourceGroupNotFound",
            format!("Resource group '{}' could not be found.", a.resource_group),
        ));
    }
    Err(Reply::arm_error(
        404,
        "ResourceNotFound",
        format!(
            "The Resource 'Microsoft.DocumentDB/databaseAccounts/{}' under resource group '{}' was not found. For \
             more details please go to https://aka.ms/ARMResourceNotFoundFix",
            a.name, a.resource_group
        ),
    ))
}

fn bad_request(message: impl Into<String>) -> Reply {
    Reply::arm_error(400, "BadRequest", message)
}

fn properties(body: &[u8]) -> Result<Map<String, Value>, Reply> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Reply::arm_error(
            400,
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: '{e}'."),
        )
    })?;
    match value.get("properties") {
        Some(Value::Object(p)) => Ok(p.clone()),
        _ => Err(bad_request("The request body must have a 'properties' object.")),
    }
}

fn string_prop<'a>(props: &'a Map<String, Value>, name: &str) -> Result<&'a str, Reply> {
    match props.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        _ => Err(bad_request(format!("'properties.{name}' is required and must be a non-empty string."))),
    }
}

fn is_built_in(name: &str) -> bool {
    name.eq_ignore_ascii_case(DATA_READER_ID) || name.eq_ignore_ascii_case(DATA_CONTRIBUTOR_ID)
}

fn validate_definition(
    state: &State,
    a: &AccountRef,
    name: &str,
    body: &[u8],
) -> Result<(RoleDefinition, bool), Reply> {
    if !is_guid(name) {
        return Err(bad_request(format!("The role definition ID '{name}' is not a valid GUID.")));
    }
    if is_built_in(name) {
        return Err(bad_request(format!("Built-in role definition '{name}' cannot be created, updated or deleted.")));
    }
    let props = properties(body)?;
    let role_name = string_prop(&props, "roleName")?.to_string();
    if let Some(t) = props.get("type")
        && !t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("CustomRole"))
    {
        return Err(bad_request(format!("Role definition type {t} is not allowed: only 'CustomRole' can be created.")));
    }
    let scopes: Vec<String> = match props.get("assignableScopes") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad_request("'properties.assignableScopes' must be an array of strings."))?,
        _ => return Err(bad_request("'properties.assignableScopes' is required and must be a non-empty array.")),
    };
    for scope in &scopes {
        if !scope_within_account(scope, a) {
            return Err(bad_request(format!(
                "The assignable scope '{scope}' is not valid for database account '{}': it must be '{}' or lie \
                 beneath it as '/dbs/<database>' or '/dbs/<database>/colls/<container>'.",
                a.name,
                a.id()
            )));
        }
    }
    let permissions = match props.get("permissions") {
        Some(Value::Array(items)) if !items.is_empty() => items.clone(),
        _ => return Err(bad_request("'properties.permissions' is required and must be a non-empty array.")),
    };
    let mut actions: Vec<String> = Vec::new();
    for permission in &permissions {
        if permission.get("notDataActions").and_then(Value::as_array).is_some_and(|n| !n.is_empty()) {
            return Err(bad_request("'notDataActions' is not supported by Azure Cosmos DB SQL role definitions."));
        }
        let Some(list) = permission.get("dataActions").and_then(Value::as_array) else {
            return Err(bad_request("Each permission needs a 'dataActions' array."));
        };
        for action in list {
            let Some(action) = action.as_str() else {
                return Err(bad_request("'dataActions' must hold strings."));
            };
            if !is_valid_data_action(action) {
                return Err(bad_request(format!(
                    "The data action '{action}' is not valid. Valid data actions are: {}.",
                    DATA_ACTIONS.join(", ")
                )));
            }
            if !actions.iter().any(|a| a.eq_ignore_ascii_case(action)) {
                actions.push(action.to_string());
            }
        }
    }
    if actions.is_empty() {
        return Err(bad_request("A role definition needs at least one data action."));
    }
    let acct = state.account(a).ok_or_else(|| bad_request("account vanished"))?;
    if let Some(other) = acct
        .all_definitions()
        .into_iter()
        .find(|d| d.role_name.eq_ignore_ascii_case(&role_name) && !d.name.eq_ignore_ascii_case(name))
    {
        return Err(Reply::arm_error(
            409,
            "Conflict",
            format!(
                "A role definition named '{role_name}' already exists in account '{}' (ID '{}').",
                a.name, other.name
            ),
        ));
    }
    let created = !acct.definitions.contains_key(&name.to_ascii_lowercase());
    let max = state.config.max_role_definitions;
    if created && acct.definitions.len() >= max {
        return Err(bad_request(format!(
            "Database account '{}' already has {} custom role definitions, the maximum allowed ({max}).",
            a.name,
            acct.definitions.len()
        )));
    }
    Ok((RoleDefinition::custom(name.to_ascii_lowercase(), role_name, scopes, actions), created))
}

fn delete_definition(state: &mut State, ctx: &Ctx, req: &Req, a: &AccountRef, name: &str, api_version: &str) -> Reply {
    if is_built_in(name) {
        return bad_request(format!("Built-in role definition '{name}' cannot be created, updated or deleted."));
    }
    let Some(acct) = state.account(a) else { return Reply::empty(204) };
    if !acct.definitions.contains_key(&name.to_ascii_lowercase()) {
        return Reply::empty(204);
    }
    let suffix = format!("/sqlroledefinitions/{}", name.to_ascii_lowercase());
    let users =
        acct.assignments.values().filter(|x| x.role_definition_id.to_ascii_lowercase().ends_with(&suffix)).count();
    if users > 0 {
        return bad_request(format!(
            "The role definition '{name}' cannot be deleted: {users} role assignment(s) still reference it. Delete \
             them first."
        ));
    }
    start(state, ctx, req, a, Change::DeleteDefinition(name.to_string()), false, api_version)
}

/// The definition name if `id` is a role definition id in account `a`.
fn definition_name<'a>(id: &'a str, a: &AccountRef) -> Option<&'a str> {
    let prefix = format!("{}/sqlRoleDefinitions/", a.id());
    if id.len() > prefix.len() && id.is_char_boundary(prefix.len()) && id[..prefix.len()].eq_ignore_ascii_case(&prefix)
    {
        Some(id[prefix.len()..].trim_end_matches('/'))
    } else {
        None
    }
}

fn validate_assignment(
    state: &mut State,
    a: &AccountRef,
    name: &str,
    body: &[u8],
) -> Result<(RoleAssignment, bool), Reply> {
    if !is_guid(name) {
        return Err(bad_request(format!("The role assignment ID '{name}' is not a valid GUID.")));
    }
    let props = properties(body)?;
    let definition_id = string_prop(&props, "roleDefinitionId")?.to_string();
    let scope = normalize_scope(string_prop(&props, "scope")?);
    let principal_id = string_prop(&props, "principalId")?.to_string();

    if !scope_within_account(&scope, a) {
        return Err(bad_request(format!(
            "The scope '{scope}' is not valid for database account '{}': it must be '{}' or lie beneath it as \
             '/dbs/<database>' or '/dbs/<database>/colls/<container>'.",
            a.name,
            a.id()
        )));
    }
    let acct = state.account(a).ok_or_else(|| bad_request("account vanished"))?;
    let definition = definition_name(&definition_id, a).and_then(|n| acct.definition(n)).ok_or_else(|| {
        bad_request(format!(
            "The role definition '{definition_id}' does not exist in database account '{}'. Role definition IDs are \
             fully qualified: '{}/sqlRoleDefinitions/<guid>'.",
            a.name,
            a.id()
        ))
    })?;
    if !definition.assignable_scopes.iter().any(|s| scope_contains(s, &scope)) {
        return Err(bad_request(format!(
            "The scope '{scope}' is not within the assignable scopes of role definition '{}' ({}).",
            definition.name,
            definition.assignable_scopes.join(", ")
        )));
    }
    let existing = acct.assignments.get(&name.to_ascii_lowercase()).cloned();
    if let Some(old) = &existing
        && (!old.principal_id.eq_ignore_ascii_case(&principal_id) || !old.scope.eq_ignore_ascii_case(&scope))
    {
        return Err(bad_request(format!(
            "Role assignment '{name}' exists with principalId '{}' and scope '{}': only roleDefinitionId can \
             be updated in place. To change the principal or scope, delete the assignment and create a new one.",
            old.principal_id, old.scope
        )));
    }
    let assignment = RoleAssignment::new(name.to_ascii_lowercase(), definition_id, scope, principal_id.clone());
    if let Some(dup) =
        acct.assignments.values().find(|x| !x.name.eq_ignore_ascii_case(name) && x.same_grant(&assignment))
    {
        return Err(Reply::arm_error(
            409,
            "Conflict",
            format!(
                "A role assignment with the same principal ID, role definition ID and scope already exists: '{}'.",
                a.role_assignment_id(&dup.name)
            ),
        ));
    }
    let count = acct.assignments.len();
    let max = state.config.max_role_assignments;
    if existing.is_none() && count >= max {
        return Err(bad_request(format!(
            "Database account '{}' already has {count} role assignments, the maximum allowed ({max}).",
            a.name
        )));
    }
    if !is_guid(&principal_id) || !state.directory.resolve_for_assignment(&principal_id) {
        return Err(bad_request(format!(
            "The provided principal ID [{principal_id}] was not found in the AAD tenant(s) [{}] which are \
             associated with the customer's subscription.",
            state.config.tenant_id
        )));
    }
    Ok((assignment, existing.is_none()))
}

fn status_for_code(code: &str) -> u16 {
    match code {
        "BadRequest" => 400,
        "NotFound" => 404,
        "Conflict" => 409,
        "PreconditionFailed" => 412,
        "TooManyRequests" => 429,
        "ServiceUnavailable" => 503,
        _ => 500,
    }
}

fn resource_json(a: &AccountRef, change: &Change) -> Option<Value> {
    match change {
        Change::PutDefinition(d) => Some(d.to_json(a)),
        Change::PutAssignment(x) => Some(x.to_json(a)),
        _ => None,
    }
}

fn resource_path(a: &AccountRef, change: &Change) -> String {
    match change {
        Change::PutDefinition(d) => a.role_definition_id(&d.name),
        Change::DeleteDefinition(n) => a.role_definition_id(n),
        Change::PutAssignment(x) => a.role_assignment_id(&x.name),
        Change::DeleteAssignment(n) => a.role_assignment_id(n),
    }
}

/// Starts a write: 412 if the account is busy, else applies it at once
/// (`lro_polls == 0`) or accepts it as a long-running operation (202).
fn start(
    state: &mut State,
    ctx: &Ctx,
    req: &Req,
    a: &AccountRef,
    change: Change,
    created: bool,
    api_version: &str,
) -> Reply {
    if let Some(op) = state.busy(a) {
        return Reply::arm_error(
            412,
            "PreconditionFailed",
            format!(
                "There is already an operation in progress which requires exclusive lock on this service {}. Please \
                 retry the operation after sometime. (operation {op})",
                a.name
            ),
        );
    }
    let fail_with = state.operation_failures.pop_front();
    if state.config.lro_polls == 0 && !state.stuck_operations {
        if let Some((code, message)) = fail_with {
            return Reply::arm_error(status_for_code(&code), &code, message);
        }
        let body = resource_json(a, &change);
        if let Some(acct) = state.account_mut(a) {
            acct.apply(&change);
        }
        return match body {
            Some(body) => Reply::json(if created { 201 } else { 200 }, &body),
            None => Reply::empty(200),
        };
    }
    let id = super::new_guid();
    let base = req.base_url(ctx);
    let location_name = state.account(a).map(|s| s.account.location.clone()).unwrap_or_else(|| "westus".into());
    let status_url = format!(
        "{base}/subscriptions/{}/providers/Microsoft.DocumentDB/locations/{location_name}/operationsStatus/{id}?api-version={api_version}",
        a.subscription_id
    );
    let location = format!("{base}{}/operationResults/{id}?api-version={api_version}", resource_path(a, &change));
    state.operations.insert(
        id.clone(),
        Operation {
            info: OperationInfo {
                id: id.clone(),
                account: a.clone(),
                change,
                status: OperationStatus::Enqueued,
                polls: 0,
                error: None,
            },
            location: location.clone(),
            started: SystemTime::now(),
            started_at: Instant::now(),
            ended: None,
            fail_with,
            created,
        },
    );
    let mut reply = Reply::json(202, &json!({"status": "Enqueued"}))
        .header("Azure-AsyncOperation", status_url)
        .header("Location", location);
    if let Some(seconds) = state.config.lro_retry_after {
        reply = reply.header("Retry-After", seconds.to_string());
    }
    reply
}

fn operation_status(state: &mut State, subscription: &str, id: &str) -> Reply {
    let key = id.to_ascii_lowercase();
    let matches =
        state.operations.get(&key).is_some_and(|op| op.info.account.subscription_id.eq_ignore_ascii_case(subscription));
    if !matches {
        return Reply::arm_error(404, "NotFound", format!("Operation '{id}' was not found."));
    }
    state.poll(&key);
    let Some(op) = state.operations.get(&key) else {
        return Reply::arm_error(404, "NotFound", format!("Operation '{id}' was not found."));
    };
    let location = state.account(&op.info.account).map(|s| s.account.location.clone()).unwrap_or_default();
    let mut body = json!({
        "id": format!(
            "/subscriptions/{}/providers/Microsoft.DocumentDB/locations/{location}/operationsStatus/{}",
            op.info.account.subscription_id, op.info.id
        ),
        "name": op.info.id,
        "status": op.info.status.as_str(),
        "startTime": rfc3339(op.started),
    });
    if let Some(ended) = op.ended {
        body["endTime"] = json!(rfc3339(ended));
    }
    if let Some((code, message)) = &op.info.error {
        body["error"] = json!({"code": code, "message": message});
    }
    let mut reply = Reply::json(200, &body);
    if !op.info.status.is_terminal()
        && let Some(seconds) = state.config.lro_retry_after
    {
        reply = reply.header("Retry-After", seconds.to_string());
    }
    reply
}

fn operation_result(state: &mut State, _ctx: &Ctx, _req: &Req, a: &AccountRef, id: &str) -> Reply {
    let key = id.to_ascii_lowercase();
    if !state.operations.get(&key).is_some_and(|op| op.info.account == *a) {
        return Reply::arm_error(404, "NotFound", format!("Operation '{id}' was not found."));
    }
    state.poll(&key);
    let Some(op) = state.operations.get(&key) else {
        return Reply::arm_error(404, "NotFound", format!("Operation '{id}' was not found."));
    };
    match op.info.status {
        OperationStatus::Enqueued | OperationStatus::Dequeued => {
            let mut reply = Reply::empty(202).header("Location", op.location.clone());
            if let Some(seconds) = state.config.lro_retry_after {
                reply = reply.header("Retry-After", seconds.to_string());
            }
            reply
        }
        OperationStatus::Failed => {
            let (code, message) = op.info.error.clone().unwrap_or_default();
            Reply::arm_error(status_for_code(&code), &code, message)
        }
        OperationStatus::Succeeded => match resource_json(a, &op.info.change) {
            Some(body) => Reply::json(if op.created { 201 } else { 200 }, &body),
            None => Reply::empty(204),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let base = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.DocumentDB/databaseAccounts/acct";
        let a = AccountRef::new("s", "rg", "acct");
        assert_eq!(parse_route(base), Some(Route::Account(a.clone())));
        assert_eq!(parse_route(&format!("{base}/")), Some(Route::Account(a.clone())));
        assert_eq!(parse_route(&format!("{base}/sqlRoleDefinitions")), Some(Route::Definitions(a.clone())));
        assert_eq!(
            parse_route(&format!("{}/sqlroleassignments/x", base.to_lowercase())),
            Some(Route::Assignment(a.clone(), "x".into()))
        );
        assert_eq!(
            parse_route(&format!("{base}/sqlRoleAssignments/x/operationResults/op")),
            Some(Route::OperationResult(a.clone(), "op".into()))
        );
        assert_eq!(
            parse_route("/subscriptions/s/providers/Microsoft.DocumentDB/locations/westus/operationsStatus/op"),
            Some(Route::OperationStatus { subscription: "s".into(), id: "op".into() })
        );
        assert_eq!(parse_route("/subscriptions/s/resourceGroups/rg"), None);
        assert_eq!(parse_route(&format!("{base}/sqlDatabases/db")), None);
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }

    #[test]
    fn definition_ids() {
        let a = AccountRef::new("s", "rg", "acct");
        assert_eq!(definition_name(&a.role_definition_id("abc"), &a), Some("abc"));
        assert_eq!(definition_name(&a.role_definition_id("abc").to_uppercase(), &a), Some("ABC"));
        assert_eq!(definition_name("/sqlRoleDefinitions/abc", &a), None);
    }
}
