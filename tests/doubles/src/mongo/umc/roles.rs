//! Role commands: `createRole`, `updateRole`, `dropRole`,
//! `grant/revokeRolesToRole`, `grant/revokePrivilegesToRole`, `rolesInfo`,
//! and the server's checks on role grants.

use super::args::{Args, non_empty, parse_privileges, parse_role_name, parse_role_names, truthy};
use crate::mongo::catalog;
use crate::mongo::error::{CommandError, CommandResult, codes};
use crate::mongo::state::{
    AuthzStore, Privilege, Role, RoleName, normalize_privileges, privileges_bson, role_names_bson,
};
use bson::{Bson, Document, doc};
use std::collections::BTreeSet;

pub(crate) fn could_not_find(role: &RoleName) -> CommandError {
    CommandError::new(codes::ROLE_NOT_FOUND, format!("Could not find role: {role}"))
}

pub(crate) fn require_roles_exist(store: &AuthzStore, roles: &[RoleName]) -> CommandResult<()> {
    match roles.iter().find(|r| !store.role_exists(r)) {
        Some(missing) => Err(could_not_find(missing)),
        None => Ok(()),
    }
}

fn require_custom_role(store: &AuthzStore, role: &RoleName) -> CommandResult<()> {
    if store.role_exists(role) { Ok(()) } else { Err(could_not_find(role)) }
}

fn refuse_builtin(role: &RoleName) -> CommandResult<()> {
    if role.is_builtin() {
        Err(CommandError::bad_value(format!("{role} is a built-in role and cannot be modified")))
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
                format!("Roles on the '{}' database cannot be granted roles from other databases", role.db),
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

pub(crate) fn create_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
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
        return Err(CommandError::bad_value("Cannot create roles with the same name as a built-in role"));
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
        Role { name, privileges, roles, authentication_restrictions: restrictions.unwrap_or_default() },
    );
    Ok(Document::new())
}

pub(crate) fn update_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["privileges", "roles", "authenticationRestrictions"])?;
    let name = RoleName::new(args.param()?, db);
    let privileges = args.array("privileges")?;
    let roles = args.array("roles")?;
    let restrictions = args.restrictions()?;
    if privileges.is_none() && roles.is_none() && restrictions.is_none() {
        return Err(CommandError::bad_value("Must specify at least one field to update in updateRole"));
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

pub(crate) fn drop_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&[])?;
    let name = RoleName::new(args.param()?, db);
    refuse_builtin(&name)?;
    require_custom_role(store, &name)?;
    store.unlink_role(&name);
    store.roles.remove(&name);
    Ok(Document::new())
}

pub(crate) fn grant_roles_to_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
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

pub(crate) fn revoke_roles_from_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["roles"])?;
    let name = RoleName::new(args.param()?, db);
    let roles = non_empty(args.required_array("roles")?, args.name, "roles")?;
    refuse_builtin(&name)?;
    let to_remove = parse_role_names(roles, db)?;
    let role = store.roles.get_mut(&name).ok_or_else(|| could_not_find(&name))?;
    role.roles.retain(|r| !to_remove.contains(r));
    Ok(Document::new())
}

pub(crate) fn grant_privileges_to_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
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

pub(crate) fn revoke_privileges_from_role(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
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
        d.insert("inheritedPrivileges", privileges_bson(&store.all_privileges(std::slice::from_ref(name))));
    }
    if show_restrictions {
        let own: Vec<Document> =
            store.roles.get(name).map(|r| r.authentication_restrictions.clone()).unwrap_or_default();
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

pub(crate) fn roles_info(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
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
        Bson::Array(items) => items.iter().map(|i| parse_role_name(i, db)).collect::<CommandResult<_>>()?,
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{run_err, run_ok};
    use crate::mongo::state::{AuthzStore, RoleName};
    use bson::{Bson, doc};

    #[test]
    fn create_role_requires_both_arrays() {
        let mut s = AuthzStore::default();
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "roles": []}), 40414);
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": []}), 40414);
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": "x", "roles": []}), 14);
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
        // Unknown actions are FailedToParse; malformed resources are BadValue.
        let unknown = doc! {"resource": {"db": "app", "collection": ""}, "actions": ["fly"]};
        assert_eq!(run_err(&mut s, "admin", doc! {"createRole": "r", "privileges": [unknown], "roles": []}), 9);
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
            run_err(
                &mut s,
                "app",
                doc! {"createRole": "r", "privileges": [], "roles": [{"role": "read", "db": "other"}]}
            ),
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
        // Its own privilege, and read@app's: the database and app.system.js.
        assert_eq!(role.get_array("inheritedPrivileges").unwrap().len(), 3);
        // Missing roles are omitted; arrays and documents work.
        let reply = run_ok(&mut s, "app", doc! {"rolesInfo": [{"role": "g", "db": "admin"}, "ghost", "read"]});
        assert_eq!(reply.get_array("roles").unwrap().len(), 2);
        let reply = run_ok(&mut s, "admin", doc! {"rolesInfo": 1});
        assert_eq!(reply.get_array("roles").unwrap().len(), 1);
        let reply = run_ok(&mut s, "admin", doc! {"rolesInfo": 1, "showBuiltinRoles": true});
        assert!(reply.get_array("roles").unwrap().len() > 10);
    }
}
