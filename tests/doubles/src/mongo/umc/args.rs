//! Argument parsing for the user-management commands, with the IDL-style
//! errors the server gives (unknown field, missing field, wrong type), and
//! the shared shapes: role names, privileges, resources.

use crate::mongo::catalog;
use crate::mongo::error::{CommandError, CommandResult, codes};
use crate::mongo::state::{Privilege, Resource, RoleName, normalize_privileges};
use bson::{Bson, Document};

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

/// The server's name for a BSON type, as used in its error messages.
pub(crate) fn type_name(value: &Bson) -> &'static str {
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
pub(crate) struct Args<'a> {
    pub(crate) name: &'a str,
    pub(crate) cmd: &'a Document,
}

impl<'a> Args<'a> {
    pub(crate) fn new(name: &'a str, cmd: &'a Document) -> Self {
        Self { name, cmd }
    }

    pub(crate) fn wrong_type(&self, field: &str, value: &Bson, expected: &str) -> CommandError {
        CommandError::new(
            codes::TYPE_MISMATCH,
            format!(
                "BSON field '{}.{field}' is the wrong type '{}', expected type '{expected}'",
                self.name,
                type_name(value)
            ),
        )
    }

    pub(crate) fn missing(&self, field: &str) -> CommandError {
        CommandError::new(
            codes::MISSING_FIELD,
            format!("BSON field '{}.{field}' is missing but a required field", self.name),
        )
    }

    /// Rejects fields other than the command name, `allowed` and the generic ones.
    pub(crate) fn only(&self, allowed: &[&str]) -> CommandResult<()> {
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
    pub(crate) fn param(&self) -> CommandResult<String> {
        match self.cmd.get(self.name) {
            Some(Bson::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.wrong_type(self.name, other, "string")),
            None => Err(self.missing(self.name)),
        }
    }

    pub(crate) fn array(&self, field: &str) -> CommandResult<Option<&Vec<Bson>>> {
        match self.cmd.get(field) {
            None => Ok(None),
            Some(Bson::Array(a)) => Ok(Some(a)),
            Some(other) => Err(self.wrong_type(field, other, "array")),
        }
    }

    pub(crate) fn required_array(&self, field: &str) -> CommandResult<&Vec<Bson>> {
        self.array(field)?.ok_or_else(|| self.missing(field))
    }

    pub(crate) fn string(&self, field: &str) -> CommandResult<Option<&str>> {
        match self.cmd.get(field) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(field, other, "string")),
        }
    }

    pub(crate) fn document(&self, field: &str) -> CommandResult<Option<&Document>> {
        match self.cmd.get(field) {
            None => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(d)),
            Some(other) => Err(self.wrong_type(field, other, "object")),
        }
    }

    /// A boolean flag; numbers count as their truthiness, as on the server.
    pub(crate) fn flag(&self, field: &str, default: bool) -> CommandResult<bool> {
        match self.cmd.get(field) {
            None => Ok(default),
            Some(v) => truthy(v).ok_or_else(|| self.wrong_type(field, v, "bool")),
        }
    }

    pub(crate) fn restrictions(&self) -> CommandResult<Option<Vec<Document>>> {
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

pub(crate) fn truthy(value: &Bson) -> Option<bool> {
    match value {
        Bson::Boolean(b) => Some(*b),
        Bson::Int32(i) => Some(*i != 0),
        Bson::Int64(i) => Some(*i != 0),
        Bson::Double(d) => Some(*d != 0.0),
        _ => None,
    }
}

/// Parses `roles` entries: `"name"` (in `default_db`) or `{role, db}`.
pub(crate) fn parse_role_names(items: &[Bson], default_db: &str) -> CommandResult<Vec<RoleName>> {
    let mut out: Vec<RoleName> = Vec::new();
    for item in items {
        let name = parse_role_name(item, default_db)?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

pub(crate) fn parse_role_name(item: &Bson, default_db: &str) -> CommandResult<RoleName> {
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
        _ => Err(CommandError::bad_value("role names must be strings or {role: <string>, db: <string>} documents")),
    }
}

/// Parses `privileges`: `[{resource, actions}]`, rejecting unknown actions.
pub(crate) fn parse_privileges(items: &[Bson]) -> CommandResult<Vec<Privilege>> {
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
        // The server reports unknown actions as FailedToParse, not BadValue.
        return Err(CommandError::new(
            codes::FAILED_TO_PARSE,
            format!("Unrecognized action privilege strings: {}", unknown.join(",")),
        ));
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
            return Err(CommandError::bad_value(format!("Unrecognized field '{key}' in privilege resource{hint}")));
        }
    }
    let flag = |key: &str| r.get(key).map(|v| truthy(v) == Some(true));
    match (flag("cluster"), flag("anyResource")) {
        (Some(_), Some(_)) => {
            Err(CommandError::bad_value("resource pattern may specify only one of 'cluster', 'anyResource' or 'db'"))
        }
        (Some(true), None) if r.len() == 1 => Ok(Resource::Cluster),
        (None, Some(true)) if r.len() == 1 => Ok(Resource::AnyResource),
        (Some(true), None) | (None, Some(true)) => {
            Err(CommandError::bad_value("resource pattern may specify only one of 'cluster', 'anyResource' or 'db'"))
        }
        (Some(false), None) => Err(CommandError::bad_value("resource 'cluster' must be true")),
        (None, Some(false)) => Err(CommandError::bad_value("resource 'anyResource' must be true")),
        (None, None) => match (r.get("db"), r.get("collection")) {
            (Some(Bson::String(db)), Some(Bson::String(collection))) => Ok(Resource::collection(db, collection)),
            (None, _) => Err(CommandError::bad_value("resource pattern must contain a 'db' field")),
            (_, None) => Err(CommandError::bad_value("resource pattern must contain a 'collection' field")),
            _ => Err(CommandError::bad_value("resource 'db' and 'collection' must be strings")),
        },
    }
}

pub(crate) fn non_empty<'a>(items: &'a [Bson], command: &str, field: &str) -> CommandResult<&'a [Bson]> {
    if items.is_empty() {
        Err(CommandError::bad_value(format!("{command} command requires a non-empty \"{field}\" array")))
    } else {
        Ok(items)
    }
}
