//! User commands: `createUser`, `updateUser`, `dropUser`,
//! `grant/revokeRolesToUser`, `usersInfo`.

use super::args::{Args, non_empty, parse_role_names, truthy};
use super::roles::require_roles_exist;
use crate::mongo::error::{CommandError, CommandResult, codes};
use crate::mongo::scram::ScramCredential;
use crate::mongo::state::{AuthzStore, User, privileges_bson, role_names_bson};
use bson::{Bson, Document, Uuid, doc};
use std::collections::BTreeSet;

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

pub(crate) fn create_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["pwd", "customData", "roles", "digestPassword", "authenticationRestrictions", "mechanisms"])?;
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
        return Err(CommandError::bad_value("Cannot set the password for users defined on the '$external' database"));
    }
    let mechanisms = check_mechanisms(args)?;
    if user.is_empty() {
        return Err(CommandError::bad_value("User document needs 'user' field to be non-empty"));
    }
    let roles = parse_role_names(roles, db)?;
    require_roles_exist(store, &roles)?;
    let key = user_key(db, &user);
    if store.users.contains_key(&key) {
        return Err(CommandError::new(codes::USER_EXISTS, format!("User \"{user}@{db}\" already exists")));
    }
    let mechanisms = if external {
        vec!["external".to_string()]
    } else {
        mechanisms.unwrap_or_else(|| vec!["SCRAM-SHA-1".into(), "SCRAM-SHA-256".into()])
    };
    // A user with a password can log in (SCRAM-SHA-256).
    if let Some(pwd) = pwd {
        store.credentials.insert(key.clone(), ScramCredential::derive(pwd)?);
    }
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

pub(crate) fn update_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["pwd", "customData", "roles", "digestPassword", "authenticationRestrictions", "mechanisms"])?;
    let user = args.param()?;
    let roles = args.array("roles")?;
    let pwd = args.string("pwd")?;
    let custom_data = args.document("customData")?.cloned();
    args.flag("digestPassword", true)?;
    let restrictions = args.restrictions()?;
    let mechanisms = check_mechanisms(args)?;
    if pwd.is_some() && db == "$external" {
        return Err(CommandError::bad_value("Cannot set the password for users defined on the '$external' database"));
    }
    if pwd.is_none() && mechanisms.is_none() && custom_data.is_none() && restrictions.is_none() && roles.is_none() {
        return Err(CommandError::bad_value("Must specify at least one field to update in updateUser"));
    }
    let roles = roles.map(|r| parse_role_names(r, db)).transpose()?;
    if let Some(roles) = &roles {
        require_roles_exist(store, roles)?;
    }
    if !store.users.contains_key(&user_key(db, &user)) {
        return Err(CommandError::new(codes::USER_NOT_FOUND, format!("User {user}@{db} not found")));
    }
    if let Some(pwd) = pwd {
        let credential = ScramCredential::derive(pwd)?;
        store.credentials.insert(user_key(db, &user), credential);
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

pub(crate) fn drop_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&[])?;
    let user = args.param()?;
    store.credentials.remove(&user_key(db, &user));
    match store.users.remove(&user_key(db, &user)) {
        Some(_) => Ok(Document::new()),
        None => Err(CommandError::new(codes::USER_NOT_FOUND, format!("User '{user}@{db}' not found"))),
    }
}

fn existing_user<'a>(store: &'a mut AuthzStore, db: &str, user: &str) -> CommandResult<&'a mut User> {
    store.users.get_mut(&user_key(db, user)).ok_or_else(|| {
        CommandError::new(codes::USER_NOT_FOUND, format!("Could not find user \"{user}\" for db \"{db}\""))
    })
}

pub(crate) fn grant_roles_to_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
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

pub(crate) fn revoke_roles_from_user(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
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
            _ => Err(CommandError::bad_value("user names must be strings or {user: <string>, db: <string>} documents")),
        },
        _ => Err(CommandError::bad_value("user names must be strings or {user: <string>, db: <string>} documents")),
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

pub(crate) fn users_info(store: &mut AuthzStore, db: &str, args: &Args<'_>) -> CommandResult {
    args.only(&["showCredentials", "showCustomData", "showPrivileges", "showAuthenticationRestrictions", "filter"])?;
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
        Bson::Array(items) => items.iter().map(|i| parse_user_name(i, db)).collect::<CommandResult<_>>()?,
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
    use super::super::test_support::{run_err, run_ok};
    use crate::mongo::state::AuthzStore;
    use bson::{Bson, doc};

    #[test]
    fn users() {
        let mut s = AuthzStore::default();
        assert_eq!(run_err(&mut s, "$external", doc! {"createUser": "u", "pwd": "x", "roles": []}), 2);
        assert_eq!(run_err(&mut s, "app", doc! {"createUser": "u", "roles": []}), 2);
        assert_eq!(
            run_err(&mut s, "$external", doc! {"createUser": "u", "roles": [{"role": "ghost", "db": "admin"}]}),
            31
        );
        run_ok(&mut s, "$external", doc! {"createUser": "u", "roles": [{"role": "read", "db": "app"}]});
        assert_eq!(run_err(&mut s, "$external", doc! {"createUser": "u", "roles": []}), 51003);
        run_ok(&mut s, "$external", doc! {"grantRolesToUser": "u", "roles": [{"role": "readWrite", "db": "app"}]});
        run_ok(&mut s, "$external", doc! {"revokeRolesFromUser": "u", "roles": [{"role": "read", "db": "app"}]});
        let reply = run_ok(
            &mut s,
            "admin",
            doc! {"usersInfo": [{"user": "u", "db": "$external"}, {"user": "v", "db": "$external"}]},
        );
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
