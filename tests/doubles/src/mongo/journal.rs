//! The command log tests read: every command the double received, in the
//! order it finished, with how it ended.

use bson::Document;

/// What sort of command a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `hello`, `isMaster`, `ismaster`.
    Handshake,
    /// `saslStart`, `saslContinue`.
    Auth,
    /// `rolesInfo`, `usersInfo`.
    UserManagementRead,
    /// Commands that change roles or users (`createRole`, `dropUser`, ...).
    UserManagementWrite,
    /// Commands that read documents: `find`, `getMore`, `killCursors`.
    DataRead,
    /// Commands that change documents: `insert`, `update`, `delete`.
    DataWrite,
    /// Anything else (`ping`, `buildInfo`, unknown commands, ...).
    Other,
}

impl CommandKind {
    /// Classifies a command by name.
    pub fn of(name: &str) -> Self {
        match name {
            "hello" | "isMaster" | "ismaster" => Self::Handshake,
            "saslStart" | "saslContinue" => Self::Auth,
            "rolesInfo" | "usersInfo" => Self::UserManagementRead,
            "createRole"
            | "updateRole"
            | "dropRole"
            | "dropAllRolesFromDatabase"
            | "grantRolesToRole"
            | "revokeRolesFromRole"
            | "grantPrivilegesToRole"
            | "revokePrivilegesFromRole"
            | "createUser"
            | "updateUser"
            | "dropUser"
            | "dropAllUsersFromDatabase"
            | "grantRolesToUser"
            | "revokeRolesFromUser" => Self::UserManagementWrite,
            "find" | "getMore" | "killCursors" => Self::DataRead,
            "insert" | "update" | "delete" => Self::DataWrite,
            _ => Self::Other,
        }
    }

    /// Whether this reads users, roles or documents.
    pub fn is_read(self) -> bool {
        matches!(self, Self::UserManagementRead | Self::DataRead)
    }

    /// Whether this changes users, roles or documents.
    pub fn is_write(self) -> bool {
        matches!(self, Self::UserManagementWrite | Self::DataWrite)
    }

    /// Whether this is a data command (read or write).
    pub fn is_data(self) -> bool {
        matches!(self, Self::DataRead | Self::DataWrite)
    }

    /// Whether this is a user-management command (read or write).
    pub fn is_user_management(self) -> bool {
        matches!(self, Self::UserManagementRead | Self::UserManagementWrite)
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Replied `ok: 1`.
    Ok,
    /// Replied `ok: 0` with this code.
    Failed {
        /// The error code.
        code: i32,
    },
    /// The connection was closed instead of replying (injected fault).
    Dropped {
        /// Whether the command ran before the connection was closed.
        applied: bool,
    },
    /// The client asked for no reply (`moreToCome`).
    NoReply,
}

/// One received command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRecord {
    /// Position in the log since the server started (never reset).
    pub seq: u64,
    /// Server-side connection id (as reported in `hello.connectionId`).
    pub connection_id: i64,
    /// Command name (first field of the body).
    pub name: String,
    /// Target database (`$db`).
    pub db: String,
    /// The full command document, document sequences merged in.
    pub body: Document,
    /// Classification of `name`.
    pub kind: CommandKind,
    /// Whether the command writes users, roles or documents.
    pub is_write: bool,
    /// The authenticated user, as `user@db`, if any.
    pub user: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Whether an injected fault decided the outcome.
    pub injected: bool,
}

/// Numbers of reads and writes received since the log was cleared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Reads: `rolesInfo` / `usersInfo` and the data reads (`find`,
    /// `getMore`, `killCursors`).
    pub reads: usize,
    /// Writes, whatever their outcome: commands that change users or roles,
    /// and the data writes (`insert`, `update`, `delete`).
    pub writes: usize,
    /// Writes that replied `ok: 1` (a data write with `writeErrors` still
    /// replies `ok: 1`).
    pub successful_writes: usize,
    /// The data reads among `reads`.
    pub data_reads: usize,
    /// The data writes among `writes`.
    pub data_writes: usize,
    /// All commands, handshakes included.
    pub total: usize,
}

/// The log itself.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    records: Vec<CommandRecord>,
    next_seq: u64,
}

impl Journal {
    pub(crate) fn push(&mut self, mut record: CommandRecord) {
        record.seq = self.next_seq;
        self.next_seq += 1;
        self.records.push(record);
    }

    pub(crate) fn records(&self) -> Vec<CommandRecord> {
        self.records.clone()
    }

    pub(crate) fn clear(&mut self) {
        self.records.clear();
    }

    pub(crate) fn counters(&self) -> Counters {
        let mut c = Counters { total: self.records.len(), ..Counters::default() };
        for r in &self.records {
            if r.kind.is_read() {
                c.reads += 1;
                c.data_reads += usize::from(r.kind.is_data());
            }
            if r.kind.is_write() {
                c.writes += 1;
                c.data_writes += usize::from(r.kind.is_data());
                if r.outcome == Outcome::Ok {
                    c.successful_writes += 1;
                }
            }
        }
        c
    }
}
