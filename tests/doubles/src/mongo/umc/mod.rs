//! User-management commands with MongoDB 7.0/8.0 semantics: `createRole`,
//! `updateRole`, `dropRole`, `rolesInfo`, `grant/revoke*`, `createUser`,
//! `updateUser`, `dropUser`, `usersInfo`.
//!
//! Argument checks follow the server's order: field names and types first
//! (40415 unknown field, 40414 missing field, 14 wrong type), then the
//! command's own rules, then role existence (31), then the write (51002 /
//! 51003 duplicates, 11 missing user). Messages mirror the server's.

pub(crate) mod args;
mod roles;
mod users;

use super::error::{CommandError, CommandResult, codes};
use super::state::AuthzStore;
use args::Args;
use bson::Document;

/// Runs user-management command `name` against `db`. The caller has already
/// checked that the command exists and that the client may run it.
pub(crate) fn run(store: &mut AuthzStore, name: &str, db: &str, cmd: &Document) -> CommandResult {
    let args = Args::new(name, cmd);
    match name {
        "createRole" => roles::create_role(store, db, &args),
        "updateRole" => roles::update_role(store, db, &args),
        "dropRole" => roles::drop_role(store, db, &args),
        "grantRolesToRole" => roles::grant_roles_to_role(store, db, &args),
        "revokeRolesFromRole" => roles::revoke_roles_from_role(store, db, &args),
        "grantPrivilegesToRole" => roles::grant_privileges_to_role(store, db, &args),
        "revokePrivilegesFromRole" => roles::revoke_privileges_from_role(store, db, &args),
        "rolesInfo" => roles::roles_info(store, db, &args),
        "createUser" => users::create_user(store, db, &args),
        "updateUser" => users::update_user(store, db, &args),
        "dropUser" => users::drop_user(store, db, &args),
        "grantRolesToUser" => users::grant_roles_to_user(store, db, &args),
        "revokeRolesFromUser" => users::revoke_roles_from_user(store, db, &args),
        "usersInfo" => users::users_info(store, db, &args),
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

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers for the command tests.
    use super::*;

    pub(crate) fn run_ok(store: &mut AuthzStore, db: &str, cmd: Document) -> Document {
        let name = cmd.keys().next().unwrap().clone();
        run(store, &name, db, &cmd).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    pub(crate) fn run_err(store: &mut AuthzStore, db: &str, cmd: Document) -> i32 {
        let name = cmd.keys().next().unwrap().clone();
        run(store, &name, db, &cmd).unwrap_err().code
    }
}
