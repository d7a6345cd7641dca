//! Command errors as the server reports them: `{ok: 0, errmsg, code, codeName}`.

use bson::{Document, doc};
use std::fmt;

/// MongoDB error codes the double can return.
pub mod codes {
    /// `BadValue`.
    pub const BAD_VALUE: i32 = 2;
    /// `FailedToParse`.
    pub const FAILED_TO_PARSE: i32 = 9;
    /// `UserNotFound`.
    pub const USER_NOT_FOUND: i32 = 11;
    /// `Unauthorized`.
    pub const UNAUTHORIZED: i32 = 13;
    /// `TypeMismatch`.
    pub const TYPE_MISMATCH: i32 = 14;
    /// `InvalidLength`.
    pub const INVALID_LENGTH: i32 = 16;
    /// `ProtocolError`.
    pub const PROTOCOL_ERROR: i32 = 17;
    /// `PathNotViable`.
    pub const PATH_NOT_VIABLE: i32 = 28;
    /// `AuthenticationFailed`.
    pub const AUTHENTICATION_FAILED: i32 = 18;
    /// `RoleNotFound`.
    pub const ROLE_NOT_FOUND: i32 = 31;
    /// `ConflictingUpdateOperators`.
    pub const CONFLICTING_UPDATE_OPERATORS: i32 = 40;
    /// `CursorNotFound`.
    pub const CURSOR_NOT_FOUND: i32 = 43;
    /// `InvalidRoleModification`.
    pub const INVALID_ROLE_MODIFICATION: i32 = 49;
    /// `DollarPrefixedFieldName`.
    pub const DOLLAR_PREFIXED_FIELD_NAME: i32 = 52;
    /// `CommandNotFound`.
    pub const COMMAND_NOT_FOUND: i32 = 59;
    /// `ImmutableField`.
    pub const IMMUTABLE_FIELD: i32 = 66;
    /// `InvalidOptions`.
    pub const INVALID_OPTIONS: i32 = 72;
    /// `InvalidNamespace`.
    pub const INVALID_NAMESPACE: i32 = 73;
    /// `MechanismUnavailable`.
    pub const MECHANISM_UNAVAILABLE: i32 = 334;
    /// `ReauthenticationRequired`: the connection's OIDC token expired.
    pub const REAUTHENTICATION_REQUIRED: i32 = 391;
    /// `UnsupportedOpQueryCommand`.
    pub const UNSUPPORTED_OP_QUERY_COMMAND: i32 = 352;
    /// Missing required field (IDL parser, `Location40414`).
    pub const MISSING_FIELD: i32 = 40414;
    /// Unknown field (IDL parser, `Location40415`).
    pub const UNKNOWN_FIELD: i32 = 40415;
    /// OP_MSG without `$db` (`Location40571`).
    pub const MISSING_DB: i32 = 40571;
    /// `DuplicateKey`: a unique index (here, `_id`) refused a write.
    pub const DUPLICATE_KEY: i32 = 11000;
    /// Role already exists (`Location51002`).
    pub const ROLE_EXISTS: i32 = 51002;
    /// User already exists (`Location51003`).
    pub const USER_EXISTS: i32 = 51003;
}

/// The `codeName` the server reports for `code`.
pub fn code_name(code: i32) -> String {
    let name = match code {
        1 => "InternalError",
        2 => "BadValue",
        6 => "HostUnreachable",
        7 => "HostNotFound",
        8 => "UnknownError",
        9 => "FailedToParse",
        11 => "UserNotFound",
        13 => "Unauthorized",
        14 => "TypeMismatch",
        16 => "InvalidLength",
        17 => "ProtocolError",
        18 => "AuthenticationFailed",
        28 => "PathNotViable",
        31 => "RoleNotFound",
        40 => "ConflictingUpdateOperators",
        43 => "CursorNotFound",
        49 => "InvalidRoleModification",
        50 => "MaxTimeMSExpired",
        52 => "DollarPrefixedFieldName",
        59 => "CommandNotFound",
        66 => "ImmutableField",
        72 => "InvalidOptions",
        73 => "InvalidNamespace",
        89 => "NetworkTimeout",
        91 => "ShutdownInProgress",
        112 => "WriteConflict",
        189 => "PrimarySteppedDown",
        262 => "ExceededTimeLimit",
        334 => "MechanismUnavailable",
        352 => "UnsupportedOpQueryCommand",
        391 => "ReauthenticationRequired",
        10107 => "NotWritablePrimary",
        11000 => "DuplicateKey",
        11600 => "InterruptedAtShutdown",
        11602 => "InterruptedDueToReplStateChange",
        13435 => "NotPrimaryNoSecondaryOk",
        other => return format!("Location{other}"),
    };
    name.to_string()
}

/// A failed command: what the reply's `errmsg` and `code` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// Numeric error code.
    pub code: i32,
    /// Human-readable message (`errmsg`).
    pub message: String,
}

impl CommandError {
    /// An error with the given code and message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// `BadValue`.
    pub fn bad_value(message: impl Into<String>) -> Self {
        Self::new(codes::BAD_VALUE, message)
    }

    /// The reply document for this error.
    pub fn to_document(&self) -> Document {
        doc! {
            "ok": 0.0,
            "errmsg": self.message.clone(),
            "code": self.code,
            "codeName": code_name(self.code),
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", code_name(self.code), self.code, self.message)
    }
}

impl std::error::Error for CommandError {}

/// Result of running one command.
pub type CommandResult<T = Document> = Result<T, CommandError>;
