//! The request log tests read: every HTTP request the double answered (or
//! dropped), in the order they finished.

use std::time::SystemTime;

/// What sort of request a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `POST /{tenant}/oauth2/v2.0/token`.
    Token,
    /// The managed-identity endpoint (App Service or IMDS style).
    ManagedIdentity,
    /// OpenID configuration and JWKS.
    Discovery,
    /// ARM `GET` of an account, definition, assignment or list.
    ArmRead,
    /// ARM `PUT`/`DELETE` of a definition or assignment.
    ArmWrite,
    /// `GET` of an operation status (`Azure-AsyncOperation`) or result
    /// (`Location`).
    OperationPoll,
    /// Anything else (unknown paths and methods).
    Other,
}

impl RequestKind {
    /// ARM (not Entra) traffic.
    pub fn is_arm(self) -> bool {
        matches!(self, Self::ArmRead | Self::ArmWrite | Self::OperationPoll)
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// Position since the double started (never reset).
    pub seq: u64,
    /// When the answer was sent.
    pub at: SystemTime,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Classification.
    pub kind: RequestKind,
    /// Status returned (0 if the connection was dropped instead).
    pub status: u16,
    /// Error code returned (`error.code` for ARM, `error` for Entra).
    pub error_code: Option<String>,
    /// ARM: the caller's object id (once its token was accepted). Token
    /// requests: the client id asked for. Managed identity: the identity's
    /// object id once resolved.
    pub principal: Option<String>,
    /// ARM: the account addressed (its id as written in the path).
    pub account: Option<String>,
    /// Whether an injected fault decided the answer.
    pub injected: bool,
}

/// Numbers of ARM requests, from the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// `GET`s of resources and lists (not operation polls).
    pub reads: usize,
    /// `PUT`/`DELETE`s, whatever their outcome.
    pub writes: usize,
    /// Writes answered 2xx.
    pub accepted_writes: usize,
    /// Operation status/result polls.
    pub polls: usize,
    /// Answers 429.
    pub throttled: usize,
    /// Answers 412 (account busy).
    pub conflicts: usize,
    /// Token requests (token endpoint and managed identity); not counted
    /// per account.
    pub token_requests: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Journal {
    records: Vec<RequestRecord>,
    next_seq: u64,
}

impl Journal {
    pub fn push(&mut self, mut record: RequestRecord) {
        record.seq = self.next_seq;
        self.next_seq += 1;
        self.records.push(record);
    }

    pub fn records(&self) -> Vec<RequestRecord> {
        self.records.clone()
    }

    pub fn clear(&mut self) {
        self.records.clear();
    }

    /// Counters over the records `filter` keeps.
    pub fn counters(&self, filter: impl Fn(&RequestRecord) -> bool) -> Counters {
        let mut c = Counters::default();
        for r in self.records.iter().filter(|r| filter(r)) {
            match r.kind {
                RequestKind::ArmRead => c.reads += 1,
                RequestKind::ArmWrite => {
                    c.writes += 1;
                    if (200..300).contains(&r.status) {
                        c.accepted_writes += 1;
                    }
                }
                RequestKind::OperationPoll => c.polls += 1,
                RequestKind::Token | RequestKind::ManagedIdentity => c.token_requests += 1,
                _ => {}
            }
            match r.status {
                429 => c.throttled += 1,
                412 => c.conflicts += 1,
                _ => {}
            }
        }
        c
    }
}
