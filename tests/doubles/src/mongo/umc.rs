//! User-management commands with MongoDB 7.0/8.0 semantics: `createRole`,
//! `updateRole`, `dropRole`, `rolesInfo`, `grant/revoke*`, `createUser`,
//! `updateUser`, `dropUser`, `usersInfo`.
//!
//! Argument checks follow the server's order: field names and types first
//! (40415 unknown field, 40414 missing field, 14 wrong type), then the
//! command's own rules, then role existence (31), then the write (51002 /
//! 51003 duplicates, 11 missing user). Messages mirror the server's.

use super::catalog;
use super::error::{CommandError, CommandResult, codes};
use super::state::{
    AuthzStore, Privilege, Resource, Role, RoleName, User, normalize_privileges, privileges_bson, role_names_bson,
};
use bson::{Bson, Document, Uuid, doc};
use std::collections::BTreeSet;

/// Fields every command may carry (driver- and router-added).
const GENERIC_FIELDS: &[&str] = &[
    "$db",
    "lsid",
    "$clusterTime",
    "$readPreference",
    "$audit",
    "$client",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "writeConcern",
    "readConcern",
    "comment",
    "maxTimeMS",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "mayBypassWriteBlocking",
];

/// Runs user-management command `name` against `db`. The caller has already
/// checked that the command exists and that the client may run it.
pub(crate) fn run(store: &mut AuthzStore, name: &str, db: &str, cmd: &Document) -> CommandResult {
    let args = Args { name, cmd };
    match name {
        "createRole" => create_role(store, db, &args),
        "updateRole" => update_role(store, db, &args),
        "dropRole" => drop_role(store, db, &args),
        "grantRolesToRole" => grant_roles_to_role(store, db, &args),
        "revokeRolesFromRole" => revoke_roles_from_role(store, db, &args),
        "grantPrivilegesToRole" => grant_privileges_to_role(store, db, &args),
        "revokePrivilegesFromRole" => revoke_privileges_from_role(store, db, &args),
        "rolesInfo" => roles_info(store, db, &args),
        "createUser" => create_user(store, db, &args),
        "updateUser" => update_user(store, db, &args),
        "dropUser" => drop_user(store, db, &args),
        "grantRolesToUser" => grant_roles_to_user(store, db, &args),
        "revokeRolesFromUser" => revoke_roles_from_user(store, db, &args),
        "usersInfo" => users_info(store, db, &args),
        _ => Err(CommandError::new(codes::COMMAND_NOT_FOUND, format!("no such command: '{name}'"))),
    }
}

/// Whether `run` implements `name`.
pub(crate) fn implements(name: &str) -> bool {
    matches!(
        name,
        "createRole"
            | "updateRole"
            | "dropRole"
            | "grantRolesToRole"
            | "revokeRolesFromRole"
            | "grantPrivilegesToRole"
            | "revokePrivilegesFromRole"
            | "rolesInfo"
            | "createUser"
            | "updateUser"
            | "dropUser"
            | "grantRolesToUser"
            | "revokeRolesFromUser"
            | "usersInfo"
    )
}

// ---------------------------------------------------------------- arguments

fn type_name(value: &Bson) -> &'static str {
    match value {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Array(_) => "array",
        Bson::Document(_) => "object",
        Bson::Boolean(_) => "bool",
        Bson::Null => "null",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::Binary(_) => "binData",
        Bson::ObjectId(_) => "objectId",
        Bson::DateTime(_) => "date",
        Bson::Timestamp(_) => "timestamp",
        Bson::Decimal128(_) => "decimal",
        _ => "other",
    }
}

/// One command's arguments, with IDL-style errors that name the command.
struct Args<'a> {
    name: &'a str,
    cmd: &'a Document,
}

impl Args<'_> {
    fn wrong_type(&self, field: &str, value: &Bson, expected: &str) -> CommandError {
        CommandError::new(
            codes::TYPE_MISMATCH,
            format!(
                "BSON field '{}.{field}' is the wrong type '{}', expected type '{expected}'",
                self.name,
                type_name(value)
            ),
        )
    }

    fn missing(&self, field: &str) -> CommandError {
        CommandError::new(
            codes::MISSING_FIELD,
            format!("BSON field '{}.{field}' is missing but a required field", self.name),
        )
    }

    /// Rejects fields other than the command name, `allowed` and the generic ones.
    fn only(&self, allowed: &[&str]) -> CommandResult<()> {
        for key in self.cmd.keys() {
            if key != self.name && !allowed.contains(&key.as_str()) && !GENERIC_FIELDS.contains(&key.as_str()) {
                return Err(CommandError::new(
                    codes::UNKNOWN_FIELD,
                    format!("BSON field '{}.{key}' is an unknown field.", self.name),
                ));
            }
        }
        Ok(())
    }

    /// The command's own value as a string (`createRole: "<name>"`).
    fn param(&self) -> CommandResult<String> {
        match self.cmd.get(self.name) {
            Some(Bson::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.wrong_type(self.name, other, "string")),
            None => Err(self.missing(self.name)),
        }
    }

    fn array(&self, field: &str) -> CommandResult<Option<&Vec<Bson>>> {
        match self.cmd.get(field) {
            None => Ok(None),
            Some(Bson::Array(a)) => Ok(Some(a)),
            Some(other) => Err(self.wrong_type(field, other, "array")),
        }
    }

    fn required_array(&self, field: &str) -> CommandResult<&Vec<Bson>> {
        self.array(field)?.ok_or_else(|| self.missing(field))
    }

    fn string(&self, field: &str) -> CommandResult<Option<&str>> {
        match self.cmd.get(field) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(field, other, "string")),
        }
    }

    fn document(&self, field: &str) -> CommandResult<Option<&Document>> {
        match self.cmd.get(field) {
            None => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(d)),
            Some(other) => Err(self.wrong_type(field, other, "object")),
        }
    }

    /// A boolean flag; numbers count as their truthiness, as on the server.
    fn flag(&self, field: &str, default: bool) -> CommandResult<bool> {
        match self.cmd.get(field) {
            None => Ok(default),
            Some(v) => truthy(v).ok_or_else(|| self.wrong_type(field, v, "bool")),
        }
    }

    fn restrictions(&self) -> CommandResult<Option<Vec<Document>>> {
        let Some(items) = self.array("authenticationRestrictions")? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|item| match item {
                Bson::Document(d) => Ok(d.clone()),
                other => Err(self.wrong_type("authenticationRestrictions", other, "object")),
            })
            .collect::<CommandResult<Vec<_>>>()
            .map(Some)
    }
}

fn truthy(value: &Bson) -> Option<bool> {
    match value {
        Bson::Boolean(b) => Some(*b),
        Bson::Int32(i) => Some(*i != 0),
        Bson::Int64(i) => Some(*i != 0),
        Bson::Double(d) => Some(*d != 0.0),
        _ => None,
    }
}

/// Parses `roles` entries: `"name"` (in `default_db`) or `{role, db}`.
fn parse_role_names(items: &[Bson], default_db: &str) -> CommandResult<Vec<RoleName>> {
    let mut out: Vec<RoleName> = Vec::new();
    for item in items {
        let name = parse_role_name(item, default_db)?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn parse_role_name(item: &Bson, default_db: &str) -> CommandResult<RoleName> {
    match item {
        Bson::String(role) => Ok(RoleName::new(role.clone(), default_db)),
        Bson::Document(d) => {
            for key in d.keys() {
                if key != "role" && key != "db" {
                    return Err(CommandError::new(
                        codes::UNKNOWN_FIELD,
                        format!("BSON field 'role.{key}' is an unknown field."),
                    ));
                }
            }
            match (d.get("role"), d.get("db")) {
                (Some(Bson::String(role)), Some(Bson::String(db))) => Ok(RoleName::new(role.clone(), db.clone())),
                _ => Err(CommandError::bad_value(
                    "role names must be strings or {role: <string>, db: <string>} documents",
                )),
            }
        }
        _ => Err(CommandError::bad_value(
            "role names must be strings or {role: <string>, db: <string>} documents",
        )),
    }
}

/// Parses `privileges`: `[{resource, actions}]`, rejecting unknown actions.
fn parse_privileges(items: &[Bson]) -> CommandResult<Vec<Privilege>> {
    let mut out = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for item in items {
        let Bson::Document(d) = item else {
            return Err(CommandError::new(
                codes::TYPE_MISMATCH,
                format!("privileges must be objects, got '{}'", type_name(item)),
            ));
        };
        for key in d.keys() {
            if key != "resource" && key != "actions" {
                return Err(CommandError::new(
                    codes::UNKNOWN_FIELD,
                    format!("BSON field 'privilege.{key}' is an unknown field."),
                ));
            }
        }
        let resource = match d.get("resource") {
            Some(Bson::Document(r)) => parse_resource(r)?,
            Some(other) => {
                return Err(CommandError::new(
                    codes::TYPE_MISMATCH,
                    format!(
                        "BSON field 'privilege.resource' is the wrong type '{}', expected type 'object'",
                        type_name(other)
                    ),
                ));
            }
            None => {
                return Err(CommandError::new(
                    codes::MISSING_FIELD,
                    "BSON field 'privilege.resource' is missing but a required field",
                ));
            }
        };
        let actions = match d.get("actions") {
            Some(Bson::Array(a)) => a,
            Some(other) => {
                return Err(CommandError::new(
                    codes::TYPE_MISMATCH,
                    format!(
                        "BSON field 'privilege.actions' is the wrong type '{}', expected type 'array'",
                        type_name(other)
                    ),
                ));
            }
            None => {
                return Err(CommandError::new(
                    codes::MISSING_FIELD,
                    "BSON field 'privilege.actions' is missing but a required field",
                ));
            }
        };
        let mut names = Vec::new();
        for action in actions {
            let Bson::String(action) = action else {
                return Err(CommandError::bad_value("privilege actions must be strings"));
            };
            if catalog::action_rank(action).is_none() {
                unknown.push(action.clone());
            }
            names.push(action.clone());
        }
        if names.is_empty() {
            return Err(CommandError::bad_value("privileges must have at least one action"));
        }
        out.push(Privilege::new(resource, names));
    }
    if !unknown.is_empty() {
        return Err(CommandError::bad_value(format!(
            "Unrecognized action privilege strings: {}",
            unknown.join(", ")
        )));
    }
    Ok(normalize_privileges(out))
}

fn parse_resource(r: &Document) -> CommandResult<Resource> {
    for key in r.keys() {
        if !matches!(key.as_str(), "db" | "collection" | "cluster" | "anyResource") {
            let hint = if key == "system_buckets" {
                " (system_buckets resources are not modelled by the test double)"
            } else {
                ""
            };
            return Err(CommandError::bad_value(format!(
                "Unrecognized field '{key}' in privilege resource{hint}"
            )));
        }
    }
    let flag = |key: &str| r.get(key).map(|v| truthy(v) == Some(true));
    match (flag("cluster"), flag("anyResource")) {
        (Some(_), Some(_)) => Err(CommandError::bad_value(
            "resource pattern may specify only one of 'cluster', 'anyResource' or 'db'",
        )),
        (Some(true), None) if r.len() == 1 => Ok(Resource::Cluster),
        (None, Some(true)) if r.len() == 1 => Ok(Resource::AnyResource),
        (Some(true), None) | (None, Some(true)) => Err(CommandError::bad_value(
            "resource pattern may specify only one of 'cluster', 'anyResource' or 'db'",
        )),
        (Some(false), None) => Err(CommandError::bad_value("resource 'cluster' must be true")),
        (None, Some(false)) => Err(CommandError::bad_value("resource 'anyResource' must be true")),
        (None, None) => match (r.get("db"), r.get("collection")) {
            (Some(Bson::String(db)), Some(Bson::String(collection))) => Ok(Resource::collection(db, collection)),
            (None, _) => Err(CommandError::bad_value("resource pattern must contain a 'db' field")),
            (_, None) => Err(CommandError::bad_value(
                "resource pattern must contain a 'collection' field",
            )),
            _ => Err(CommandError::bad_value(
                "resource 'db' and 'collection' must be strings",
            )),
        },
    }
}

// ------------------------------------------------------------------- checks

fn could_not_find(role: &RoleName) -> CommandError {
    CommandError::new(codes::ROLE_NOT_FOUND, format!("Could not find role: {role}"))
}

fn require_roles_exist(store: &AuthzStore, roles: &[RoleName]) -> CommandResult<()> {
    match roles.iter().find(|r| !store.role_exists(r)) {
        Some(missing) => Err(could_not_find(missing)),
        None => Ok(()),
    }
}

fn require_custom_role(store: &AuthzStore, role: &RoleName) -> CommandResult<()> {
    if store.role_exists(role) {
        Ok(())
    } else {
        Err(could_not_find(role))
    }
}

fn refuse_builtin(role: &RoleName) -> CommandResult<()> {
    if role.is_builtin() {
        Err(CommandError::bad_value(format!(
            "{role} is a built-in role and cannot be modified"
        )))
    } else {
        Ok(())
    }
}

/// The server's `checkOkayToGrantRolesToRole`.
fn check_grant_roles(store: &AuthzStore, role: &RoleName, to_add: &[RoleName]) -> CommandResult<()> {
    for r in to_add {
        if r == role {
            return Err(CommandError::new(
                codes::INVALID_ROLE_MODIFICATION,
                format!("Cannot grant role {role} to itself."),
            ));
        }
        if role.db != "admin" && r.db != role.db {
            return Err(CommandError::new(
                codes::INVALID_ROLE_MODIFICATION,
                format!(
                    "Roles on the '{}' database cannot be granted roles from other databases",
                    role.db
                ),
            ));
        }
    }
    if let Some(missing) = to_add.iter().find(|r| !store.role_exists(r)) {
        return Err(CommandError::new(
            codes::ROLE_NOT_FOUND,
            format!("Cannot grant roles to '{role}': Could not find role: {missing}"),
        ));
    }
    if store.inherited_roles(to_add).contains(role) {
        return Err(CommandError::new(
            codes::INVALID_ROLE_MODIFICATION,
            format!("Granting roles to {role} would introduce a cycle in the role graph"),
        ));
    }
    Ok(())
}

/// The server's `checkOkayToGrantPrivilegesToRole`.
fn check_grant_privileges(role: &RoleName, privileges: &[Privilege]) -> CommandResult<()> {
    if privileges.iter().all(|p| p.resource.allowed_for_role_db(&role.db)) {
        Ok(())
    } else {
        Err(CommandError::new(
            codes::INVALID_ROLE_MODIFICATION,
            format!(
                "Roles on the '{}' database cannot be granted privileges that target other databases or the cluster",
                role.db
            ),
        ))
    }
}

fn non_empty<'a>(items: &'a [Bson], command: &str, field: &str) -> CommandResult<&'a [Bson]> {
    if items.is_empty() {
        Err(CommandError::bad_value(format!(
            "{command} command requires a non-empty \"{field}\" array"
        )))
    } else {
        Ok(items)
    }
}

// -------------------------------------------------------------------- roles

fn create_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["privileges", "roles", "authenticationRestrictions"])?;
    let role = args.param()?;
    let privileges = args.required_array("privileges")?;
    let roles = args.required_array("roles")?;
    let restrictions = args.restrictions()?;
    if role.is_empty() {
        return Err(CommandError::bad_value("Role name must be non-empty"));
    }
    let name = RoleName::new(role, db);
    if db == "local" {
        return Err(CommandError::bad_value("Cannot create roles in the local database"));
    }
    if db == "$external" {
        return Err(CommandError::bad_value("Cannot create roles in the $external database"));
    }
    if name.is_builtin() {
        return Err(CommandError::bad_value(
            "Cannot create roles with the same name as a built-in role",
        ));
    }
    let privileges = parse_privileges(privileges)?;
    let roles = parse_role_names(roles, db)?;
    check_grant_roles(store, &name, &roles)?;
    check_grant_privileges(&name, &privileges)?;
    if store.roles.contains_key(&name) {
        return Err(CommandError::new(
            codes::ROLE_EXISTS,
            format!("Role \"{}@{}\" already exists", name.role, name.db),
        ));
    }
    store.roles.insert(
        name.clone(),
        Role {
            name,
            privileges,
            roles,
            authentication_restrictions: restrictions.unwrap_or_default(),
        },
    );
    Ok(Document::new())
}

fn update_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["privileges", "roles", "authenticationRestrictions"])?;
    let name = RoleName::new(args.param()?, db);
    let privileges = args.array("privileges")?;
    let roles = args.array("roles")?;
    let restrictions = args.restrictions()?;
    if privileges.is_none() && roles.is_none() && restrictions.is_none() {
        return Err(CommandError::bad_value(
            "Must specify at least one field to update in updateRole",
        ));
    }
    let privileges = privileges.map(|p| parse_privileges(p)).transpose()?;
    let roles = roles.map(|r| parse_role_names(r, db)).transpose()?;
    require_custom_role(store, &name)?;
    if let Some(roles) = &roles {
        check_grant_roles(store, &name, roles)?;
    }
    if let Some(privileges) = &privileges {
        check_grant_privileges(&name, privileges)?;
    }
    let Some(role) = store.roles.get_mut(&name) else {
        // Built-in roles exist but have no document to update.
        return Err(CommandError::new(codes::ROLE_NOT_FOUND, format!("Role {name} not found")));
    };
    if let Some(privileges) = privileges {
        role.privileges = privileges;
    }
    if let Some(roles) = roles {
        role.roles = roles;
    }
    if let Some(restrictions) = restrictions {
        role.authentication_restrictions = restrictions;
    }
    Ok(Document::new())
}

fn drop_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&[])?;
    let name = RoleName::new(args.param()?, db);
    refuse_builtin(&name)?;
    require_custom_role(store, &name)?;
    store.unlink_role(&name);
    store.roles.remove(&name);
    Ok(Document::new())
}

fn grant_roles_to_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["roles"])?;
    let name = RoleName::new(args.param()?, db);
    let roles = non_empty(args.required_array("roles")?, args.name, "roles")?;
    refuse_builtin(&name)?;
    let to_add = parse_role_names(roles, db)?;
    check_grant_roles(store, &name, &to_add)?;
    let role = store.roles.get_mut(&name).ok_or_else(|| could_not_find(&name))?;
    for r in to_add {
        if !role.roles.contains(&r) {
            role.roles.push(r);
        }
    }
    Ok(Document::new())
}

fn revoke_roles_from_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["roles"])?;
    let name = RoleName::new(args.param()?, db);
    let roles = non_empty(args.required_array("roles")?, args.name, "roles")?;
    refuse_builtin(&name)?;
    let to_remove = parse_role_names(roles, db)?;
    let role = store.roles.get_mut(&name).ok_or_else(|| could_not_find(&name))?;
    role.roles.retain(|r| !to_remove.contains(r));
    Ok(Document::new())
}

fn grant_privileges_to_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["privileges"])?;
    let name = RoleName::new(args.param()?, db);
    let privileges = non_empty(args.required_array("privileges")?, args.name, "privileges")?;
    refuse_builtin(&name)?;
    let new = parse_privileges(privileges)?;
    check_grant_privileges(&name, &new)?;
    let role = store.roles.get_mut(&name).ok_or_else(|| could_not_find(&name))?;
    role.privileges = normalize_privileges(role.privileges.drain(..).chain(new));
    Ok(Document::new())
}

fn revoke_privileges_from_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["privileges"])?;
    let name = RoleName::new(args.param()?, db);
    let privileges = non_empty(args.required_array("privileges")?, args.name, "privileges")?;
    refuse_builtin(&name)?;
    let remove = parse_privileges(privileges)?;
    let role = store.roles.get_mut(&name).ok_or_else(|| could_not_find(&name))?;
    for r in remove {
        if let Some(p) = role.privileges.iter_mut().find(|p| p.resource == r.resource) {
            p.actions.retain(|a| !r.actions.contains(a));
        }
    }
    role.privileges.retain(|p| !p.actions.is_empty());
    Ok(Document::new())
}

fn role_document(store: &AuthzStore, name: &RoleName, show_privileges: bool, show_restrictions: bool) -> Document {
    let direct = store.direct_roles(name);
    let inherited = store.inherited_roles(std::slice::from_ref(name));
    let mut d = doc! {
        "_id": format!("{}.{}", name.db, name.role),
        "role": name.role.clone(),
        "db": name.db.clone(),
        "isBuiltin": name.is_builtin(),
        "roles": role_names_bson(&direct),
        "inheritedRoles": role_names_bson(&inherited),
    };
    if show_privileges {
        d.insert("privileges", privileges_bson(&normalize_privileges(store.direct_privileges(name))));
        d.insert(
            "inheritedPrivileges",
            privileges_bson(&store.all_privileges(std::slice::from_ref(name))),
        );
    }
    if show_restrictions {
        let own: Vec<Document> = store
            .roles
            .get(name)
            .map(|r| r.authentication_restrictions.clone())
            .unwrap_or_default();
        let wrap = |r: Vec<Document>| {
            if r.is_empty() {
                Bson::Array(Vec::new())
            } else {
                Bson::Array(vec![Bson::Array(r.into_iter().map(Bson::Document).collect())])
            }
        };
        let mut inherited_restrictions = own.clone();
        for r in &inherited {
            if let Some(role) = store.roles.get(r) {
                inherited_restrictions.extend(role.authentication_restrictions.iter().cloned());
            }
        }
        d.insert("authenticationRestrictions", wrap(own));
        d.insert("inheritedAuthenticationRestrictions", wrap(inherited_restrictions));
    }
    d
}

fn roles_info(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["showPrivileges", "showBuiltinRoles", "showAuthenticationRestrictions"])?;
    let show_privileges = match args.cmd.get("showPrivileges") {
        Some(Bson::String(s)) if s == "asUserFragment" => {
            return Err(CommandError::bad_value(
                "showPrivileges: \"asUserFragment\" is not supported by the test double",
            ));
        }
        _ => args.flag("showPrivileges", false)?,
    };
    let show_builtin = args.flag("showBuiltinRoles", false)?;
    let show_restrictions = args.flag("showAuthenticationRestrictions", false)?;
    let value = args.cmd.get(args.name).ok_or_else(|| args.missing(args.name))?;
    let names: Vec<RoleName> = match value {
        Bson::Array(items) => items
            .iter()
            .map(|i| parse_role_name(i, db))
            .collect::<CommandResult<_>>()?,
        Bson::String(_) | Bson::Document(_) => vec![parse_role_name(value, db)?],
        other => match truthy(other) {
            Some(true) => {
                let mut all: Vec<RoleName> = Vec::new();
                if show_builtin && db != "$external" {
                    let admin = if db == "admin" { catalog::ADMIN_BUILTIN_ROLES } else { &[] };
                    for role in catalog::DATABASE_BUILTIN_ROLES.iter().chain(admin) {
                        all.push(RoleName::new(*role, db));
                    }
                }
                all.extend(store.roles.keys().filter(|r| r.db == db).cloned());
                all
            }
            _ => {
                return Err(CommandError::bad_value(
                    "rolesInfo must be 1, a role name, a {role, db} document or an array of them",
                ));
            }
        },
    };
    let mut seen = BTreeSet::new();
    let roles: Vec<Bson> = names
        .iter()
        .filter(|n| store.role_exists(n) && seen.insert((*n).clone()))
        .map(|n| Bson::Document(role_document(store, n, show_privileges, show_restrictions)))
        .collect();
    Ok(doc! { "roles": roles })
}

// -------------------------------------------------------------------- users

fn check_mechanisms(args: &Args<'_>) -> CommandResult<Option<Vec<String>>> {
    let Some(items) = args.array("mechanisms")? else {
        return Ok(None);
    };
    if items.is_empty() {
        return Err(CommandError::bad_value("mechanisms field must not be empty"));
    }
    items
        .iter()
        .map(|m| match m {
            Bson::String(s) if s == "SCRAM-SHA-1" || s == "SCRAM-SHA-256" => Ok(s.clone()),
            Bson::String(s) => Err(CommandError::bad_value(format!("Unknown auth mechanism '{s}'"))),
            other => Err(args.wrong_type("mechanisms", other, "string")),
        })
        .collect::<CommandResult<Vec<_>>>()
        .map(Some)
}

fn user_key(db: &str, user: &str) -> (String, String) {
    (db.to_string(), user.to_string())
}

fn create_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&[
        "pwd",
        "customData",
        "roles",
        "digestPassword",
        "authenticationRestrictions",
        "mechanisms",
    ])?;
    let user = args.param()?;
    let roles = args.required_array("roles")?;
    let pwd = args.string("pwd")?;
    let custom_data = args.document("customData")?.cloned();
    args.flag("digestPassword", true)?;
    let restrictions = args.restrictions()?;
    if db == "local" {
        return Err(CommandError::bad_value("Cannot create users in the local database"));
    }
    if user.contains('\0') {
        return Err(CommandError::bad_value("Username cannot contain NULL characters"));
    }
    let external = db == "$external";
    if pwd.is_none() && !external {
        return Err(CommandError::bad_value(
            "Must provide a 'pwd' field for all user documents, except those with '$external' as the user's source db",
        ));
    }
    if pwd.is_some() && external {
        return Err(CommandError::bad_value(
            "Cannot set the password for users defined on the '$external' database",
        ));
    }
    let mechanisms = check_mechanisms(args)?;
    if user.is_empty() {
        return Err(CommandError::bad_value("User document needs 'user' field to be non-empty"));
    }
    let roles = parse_role_names(roles, db)?;
    require_roles_exist(store, &roles)?;
    let key = user_key(db, &user);
    if store.users.contains_key(&key) {
        return Err(CommandError::new(
            codes::USER_EXISTS,
            format!("User \"{user}@{db}\" already exists"),
        ));
    }
    let mechanisms = if external {
        vec!["external".to_string()]
    } else {
        mechanisms.unwrap_or_else(|| vec!["SCRAM-SHA-1".into(), "SCRAM-SHA-256".into()])
    };
    store.users.insert(
        key,
        User {
            user,
            db: db.to_string(),
            roles,
            custom_data,
            mechanisms,
            authentication_restrictions: restrictions.unwrap_or_default(),
            user_id: Uuid::new(),
        },
    );
    Ok(Document::new())
}

fn update_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&[
        "pwd",
        "customData",
        "roles",
        "digestPassword",
        "authenticationRestrictions",
        "mechanisms",
    ])?;
    let user = args.param()?;
    let roles = args.array("roles")?;
    let pwd = args.string("pwd")?;
    let custom_data = args.document("customData")?.cloned();
    args.flag("digestPassword", true)?;
    let restrictions = args.restrictions()?;
    let mechanisms = check_mechanisms(args)?;
    if pwd.is_some() && db == "$external" {
        return Err(CommandError::bad_value(
            "Cannot set the password for users defined on the '$external' database",
        ));
    }
    if pwd.is_none() && mechanisms.is_none() && custom_data.is_none() && restrictions.is_none() && roles.is_none() {
        return Err(CommandError::bad_value(
            "Must specify at least one field to update in updateUser",
        ));
    }
    let roles = roles.map(|r| parse_role_names(r, db)).transpose()?;
    if let Some(roles) = &roles {
        require_roles_exist(store, roles)?;
    }
    let Some(existing) = store.users.get_mut(&user_key(db, &user)) else {
        return Err(CommandError::new(codes::USER_NOT_FOUND, format!("User {user}@{db} not found")));
    };
    if let Some(roles) = roles {
        existing.roles = roles;
    }
    if let Some(custom_data) = custom_data {
        existing.custom_data = Some(custom_data);
    }
    if let Some(restrictions) = restrictions {
        existing.authentication_restrictions = restrictions;
    }
    if let Some(mechanisms) = mechanisms {
        existing.mechanisms = mechanisms;
    }
    Ok(Document::new())
}

fn drop_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&[])?;
    let user = args.param()?;
    match store.users.remove(&user_key(db, &user)) {
        Some(_) => Ok(Document::new()),
        None => Err(CommandError::new(codes::USER_NOT_FOUND, format!("User '{user}@{db}' not found"))),
    }
}

fn existing_user<'a>(store: &'a mut AuthzStore, db: &str, user: &str) -> CommandResult<&'a mut User> {
    store.users.get_mut(&user_key(db, user)).ok_or_else(|| {
        CommandError::new(
            codes::USER_NOT_FOUND,
            format!("Could not find user \"{user}\" for db \"{db}\""),
        )
    })
}

fn grant_roles_to_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["roles"])?;
    let user = args.param()?;
    let roles = non_empty(args.required_array("roles")?, args.name, "roles")?;
    existing_user(store, db, &user)?;
    let roles = parse_role_names(roles, db)?;
    require_roles_exist(store, &roles)?;
    let existing = existing_user(store, db, &user)?;
    for r in roles {
        if !existing.roles.contains(&r) {
            existing.roles.push(r);
        }
    }
    Ok(Document::new())
}

fn revoke_roles_from_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["roles"])?;
    let user = args.param()?;
    let roles = non_empty(args.required_array("roles")?, args.name, "roles")?;
    existing_user(store, db, &user)?;
    let roles = parse_role_names(roles, db)?;
    require_roles_exist(store, &roles)?;
    existing_user(store, db, &user)?.roles.retain(|r| !roles.contains(r));
    Ok(Document::new())
}

/// One `usersInfo` target.
enum UserSelector {
    One(String, String),
    AllIn(String),
    Everything,
}

fn parse_user_name(item: &Bson, db: &str) -> CommandResult<UserSelector> {
    match item {
        Bson::String(user) => Ok(UserSelector::One(db.to_string(), user.clone())),
        Bson::Document(d) => match (d.get("user"), d.get("db")) {
            (Some(Bson::String(user)), Some(Bson::String(udb))) if d.len() == 2 => {
                Ok(UserSelector::One(udb.clone(), user.clone()))
            }
            _ => Err(CommandError::bad_value(
                "user names must be strings or {user: <string>, db: <string>} documents",
            )),
        },
        _ => Err(CommandError::bad_value(
            "user names must be strings or {user: <string>, db: <string>} documents",
        )),
    }
}

fn user_document(store: &AuthzStore, user: &User, opts: &UsersInfoOptions) -> Document {
    let mut d = doc! {
        "_id": format!("{}.{}", user.db, user.user),
        "userId": Bson::from(user.user_id),
        "user": user.user.clone(),
        "db": user.db.clone(),
    };
    if opts.show_custom_data
        && let Some(custom) = &user.custom_data
    {
        d.insert("customData", custom.clone());
    }
    d.insert("roles", role_names_bson(&user.roles));
    d.insert("mechanisms", user.mechanisms.clone());
    if opts.show_credentials {
        let credentials = if user.db == "$external" {
            doc! { "external": true }
        } else {
            user.mechanisms.iter().map(|m| (m.clone(), Bson::Document(Document::new()))).collect()
        };
        d.insert("credentials", credentials);
    }
    if opts.show_restrictions {
        d.insert(
            "authenticationRestrictions",
            Bson::Array(user.authentication_restrictions.iter().cloned().map(Bson::Document).collect()),
        );
    }
    if opts.show_privileges {
        let mut inherited = user.roles.clone();
        for r in store.inherited_roles(&user.roles) {
            if !inherited.contains(&r) {
                inherited.push(r);
            }
        }
        d.insert("inheritedRoles", role_names_bson(&inherited));
        d.insert("inheritedPrivileges", privileges_bson(&store.all_privileges(&user.roles)));
    }
    d
}

struct UsersInfoOptions {
    show_credentials: bool,
    show_custom_data: bool,
    show_privileges: bool,
    show_restrictions: bool,
}

fn users_info(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&[
        "showCredentials",
        "showCustomData",
        "showPrivileges",
        "showAuthenticationRestrictions",
        "filter",
    ])?;
    let opts = UsersInfoOptions {
        show_credentials: args.flag("showCredentials", false)?,
        show_custom_data: args.flag("showCustomData", true)?,
        show_privileges: args.flag("showPrivileges", false)?,
        show_restrictions: args.flag("showAuthenticationRestrictions", false)?,
    };
    if args.document("filter")?.is_some_and(|f| !f.is_empty()) {
        return Err(CommandError::bad_value("usersInfo filter is not supported by the test double"));
    }
    let value = args.cmd.get(args.name).ok_or_else(|| args.missing(args.name))?;
    let selectors: Vec<UserSelector> = match value {
        Bson::Array(items) => items
            .iter()
            .map(|i| parse_user_name(i, db))
            .collect::<CommandResult<_>>()?,
        Bson::Document(d) if d.contains_key("forAllDBs") => {
            if d.get("forAllDBs").and_then(truthy) == Some(true) {
                vec![UserSelector::Everything]
            } else {
                return Err(CommandError::bad_value("forAllDBs must be true"));
            }
        }
        Bson::String(_) | Bson::Document(_) => vec![parse_user_name(value, db)?],
        other => match truthy(other) {
            Some(true) => vec![UserSelector::AllIn(db.to_string())],
            _ => {
                return Err(CommandError::bad_value(
                    "usersInfo must be 1, a user name, a {user, db} document, an array of them, or {forAllDBs: true}",
                ));
            }
        },
    };
    let mut seen = BTreeSet::new();
    let mut users = Vec::new();
    for selector in selectors {
        let matched: Vec<&User> = match &selector {
            UserSelector::One(udb, user) => store.users.get(&user_key(udb, user)).into_iter().collect(),
            UserSelector::AllIn(udb) => store.users.values().filter(|u| &u.db == udb).collect(),
            UserSelector::Everything => store.users.values().collect(),
        };
        for user in matched {
            if seen.insert(user_key(&user.db, &user.user)) {
                users.push(Bson::Document(user_document(store, user, &opts)));
            }
        }
    }
    Ok(doc! { "users": users })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_ok(store: &mut AuthzStore, db: &str, cmd: Document) -> Document {
        let name = cmd.keys().next().unwrap().clone();
        run(store, &name, db, &cmd).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn run_err(store: &mut AuthzStore, db: &str, cmd: Document) -> i32 {
        let name = cmd.keys().next().unwrap().clone();
        run(store, &name, db, &cmd).unwrap_err().code
    }

    #[test]
    fn create_role_requires_both_arrays() {
        let mut s = AuthzStore::default();
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "roles": []}), 40414);
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": []}), 40414);
        assert_eq!(
            run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": "x", "roles": []}),
            14
        );
        assert_eq!(
            run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": [], "roles": [], "bogus": 1}),
            40415
        );
        run_ok(&mut s, "admin", doc! {"createRole": "r", "privileges": [], "roles": [], "$db": "admin"});
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": [], "roles": []}), 51002);
    }

    #[test]
    fn role_rules() {
        let mut s = AuthzStore::default();
        let db_priv = doc! {"resource": {"db": "app", "collection": ""}, "actions": ["find"]};
        let cluster_priv = doc! {"resource": {"cluster": true}, "actions": ["serverStatus"]};
        // Unknown actions and malformed resources are BadValue.
        let unknown = doc! {"resource": {"db": "app", "collection": ""}, "actions": ["fly"]};
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": [unknown], "roles": []}), 2);
        let malformed = doc! {"resource": {"db": "app"}, "actions": ["find"]};
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": [malformed], "roles": []}), 2);
        let mixed = doc! {"resource": {"cluster": true, "db": "x", "collection": ""}, "actions": ["find"]};
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": [mixed], "roles": []}), 2);
        // Roles outside admin stay in their database.
        assert_eq!(
            run_err(&mut s, "app", doc! {"createRole": "r", "privileges": [cluster_priv.clone()], "roles": []}),
            49
        );
        assert_eq!(
            run_err(&mut s, "app", doc! {"createRole": "r", "privileges": [], "roles": [{"role": "read", "db": "other"}]}),
            49
        );
        run_ok(&mut s, "app", doc! {"createRole": "r", "privileges": [db_priv], "roles": ["read"]});
        // Unknown roles, self-grants and cycles.
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "a", "privileges": [], "roles": ["ghost"]}), 31);
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "a", "privileges": [], "roles": ["a"]}), 49);
        run_ok(&mut s, "admin", doc! {"createRole": "a", "privileges": [cluster_priv], "roles": []});
        run_ok(&mut s, "admin", doc! {"createRole": "b", "privileges": [], "roles": ["a"]});
        assert_eq!(run_err(&mut s, "admin", doc! {"updateRole": "a", "roles": ["b"]}), 49);
        assert_eq!(run_err(&mut s, "admin", doc! {"grantRolesToRole": "a", "roles": ["b"]}), 49);
        // Built-in names are reserved; built-ins cannot be dropped.
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "root", "privileges": [], "roles": []}), 2);
        assert_eq!(run_err(&mut s, "admin", doc! {"dropRole": "read"}), 2);
        assert_eq!(run_err(&mut s, "admin", doc! {"dropRole": "ghost"}), 31);
        assert_eq!(run_err(&mut s, "admin", doc! {"updateRole": "ghost", "roles": []}), 31);
        assert_eq!(run_err(&mut s, "admin", doc! {"updateRole": "a"}), 2);
        // Dropping a role unlinks it.
        run_ok(&mut s, "admin", doc! {"dropRole": "a"});
        assert!(s.roles[&RoleName::new("b", "admin")].roles.is_empty());
    }

    #[test]
    fn roles_info_forms_and_normalisation() {
        let mut s = AuthzStore::default();
        run_ok(
            &mut s,
            "admin",
            doc! {"createRole": "g", "roles": [{"role": "read", "db": "app"}], "privileges": [
                {"resource": {"db": "app", "collection": "c"}, "actions": ["update", "find"]},
                {"resource": {"db": "app", "collection": "c"}, "actions": ["insert"]},
            ]},
        );
        let reply = run_ok(&mut s, "admin", doc! {"rolesInfo": "g", "showPrivileges": true});
        let roles = reply.get_array("roles").unwrap();
        assert_eq!(roles.len(), 1);
        let role = roles[0].as_document().unwrap();
        let privileges = role.get_array("privileges").unwrap();
        assert_eq!(privileges.len(), 1);
        let actions = privileges[0].as_document().unwrap().get_array("actions").unwrap();
        assert_eq!(actions, &vec![Bson::from("find"), Bson::from("insert"), Bson::from("update")]);
        assert_eq!(role.get_array("inheritedPrivileges").unwrap().len(), 2);
        // Missing roles are omitted; arrays and documents work.
        let reply = run_ok(
            &mut s,
            "app",
            doc! {"rolesInfo": [{"role": "g", "db": "admin"}, "ghost", "read"]},
        );
        assert_eq!(reply.get_array("roles").unwrap().len(), 2);
        let reply = run_ok(&mut s, "admin", doc! {"rolesInfo": 1});
        assert_eq!(reply.get_array("roles").unwrap().len(), 1);
        let reply = run_ok(&mut s, "admin", doc! {"rolesInfo": 1, "showBuiltinRoles": true});
        assert!(reply.get_array("roles").unwrap().len() > 10);
    }

    #[test]
    fn users() {
        let mut s = AuthzStore::default();
        assert_eq!(
            run_err(&mut s, "$external", doc! {"createUser": "u", "pwd": "x", "roles": []}),
            2
        );
        assert_eq!(run_err(&mut s, "app", doc! {"createUser": "u", "roles": []}), 2);
        assert_eq!(
            run_err(&mut s, "$external", doc! {"createUser": "u", "roles": [{"role": "ghost", "db": "admin"}]}),
            31
        );
        run_ok(
            &mut s,
            "$external",
            doc! {"createUser": "u", "roles": [{"role": "read", "db": "app"}]},
        );
        assert_eq!(run_err(&mut s, "$external", doc! {"createUser": "u", "roles": []}), 51003);
        run_ok(
            &mut s,
            "$external",
            doc! {"grantRolesToUser": "u", "roles": [{"role": "readWrite", "db": "app"}]},
        );
        run_ok(
            &mut s,
            "$external",
            doc! {"revokeRolesFromUser": "u", "roles": [{"role": "read", "db": "app"}]},
        );
        let reply = run_ok(&mut s, "admin", doc! {"usersInfo": [{"user": "u", "db": "$external"}, {"user": "v", "db": "$external"}]});
        let users = reply.get_array("users").unwrap();
        assert_eq!(users.len(), 1);
        let user = users[0].as_document().unwrap();
        assert_eq!(user.get_array("roles").unwrap().len(), 1);
        assert_eq!(user.get_array("mechanisms").unwrap(), &vec![Bson::from("external")]);
        assert_eq!(run_err(&mut s, "$external", doc! {"updateUser": "v", "roles": []}), 11);
        run_ok(&mut s, "$external", doc! {"dropUser": "u"});
        assert_eq!(run_err(&mut s, "$external", doc! {"dropUser": "u"}), 11);
    }
}
