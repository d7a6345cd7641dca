//! Everything mutable behind the double's one lock: settings, the
//! directory, issued tokens, accounts and their role resources,
//! long-running operations, throttling buckets, faults and the log.

use super::ArmDoubleConfig;
use super::directory::Directory;
use super::faults::Faults;
use super::journal::Journal;
use super::model::{AccountKey, AccountRef, RoleAssignment, RoleDefinition};
use super::throttle::{SlidingWindow, TokenBucket};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

/// Locks a std mutex, ignoring poisoning (a panicking test thread must not
/// wedge the server).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An access token the double issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// `oid`: the principal's object id.
    pub object_id: String,
    /// `appid`: the client id it was issued to.
    pub client_id: String,
    /// `tid`.
    pub tenant_id: String,
    /// `aud`: the resource from the requested scope (without `/.default`).
    pub audience: String,
    /// How it was obtained: `client_secret`, `client_certificate`,
    /// `workload_identity`, `managed_identity` or `direct`.
    pub grant: String,
    /// Issue time.
    pub issued_at: SystemTime,
    /// Expiry.
    pub expires_at: SystemTime,
}

/// A long-running operation's status, as the status endpoint reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationStatus {
    /// Accepted, not started.
    Enqueued,
    /// Running.
    Dequeued,
    /// Done; the change is visible.
    Succeeded,
    /// Done; nothing changed.
    Failed,
}

impl OperationStatus {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueued => "Enqueued",
            Self::Dequeued => "Dequeued",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }

    /// Succeeded or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// What an operation changes when it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace a role definition.
    PutDefinition(RoleDefinition),
    /// Delete the role definition with this name.
    DeleteDefinition(String),
    /// Create or replace a role assignment.
    PutAssignment(RoleAssignment),
    /// Delete the role assignment with this name.
    DeleteAssignment(String),
}

/// A snapshot of a long-running operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationInfo {
    /// Operation id (a GUID).
    pub id: String,
    /// The account it locks.
    pub account: AccountRef,
    /// What it does.
    pub change: Change,
    /// Current status.
    pub status: OperationStatus,
    /// Status polls received so far.
    pub polls: u32,
    /// Error, if it failed: `(code, message)`.
    pub error: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub info: OperationInfo,
    pub location: String,
    pub started: SystemTime,
    pub started_at: Instant,
    pub ended: Option<SystemTime>,
    /// Decided when it was accepted: it will fail with this error.
    pub fail_with: Option<(String, String)>,
    /// Was the resource new (PUT → 201 in the synchronous form)?
    pub created: bool,
}

#[derive(Debug)]
pub(crate) struct AccountState {
    pub account: super::model::Account,
    pub definitions: BTreeMap<String, RoleDefinition>,
    pub assignments: BTreeMap<String, RoleAssignment>,
    pub writes: SlidingWindow,
}

impl AccountState {
    pub fn reference(&self) -> &AccountRef {
        &self.account.reference
    }

    /// Built-ins first, then custom definitions by name.
    pub fn all_definitions(&self) -> Vec<RoleDefinition> {
        let mut all: Vec<RoleDefinition> = RoleDefinition::built_ins(self.reference()).into();
        all.extend(self.definitions.values().cloned());
        all
    }

    pub fn definition(&self, name: &str) -> Option<RoleDefinition> {
        self.all_definitions().into_iter().find(|d| d.name.eq_ignore_ascii_case(name))
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutDefinition(d) => {
                self.definitions.insert(d.name.to_ascii_lowercase(), d.clone());
            }
            Change::DeleteDefinition(name) => {
                self.definitions.remove(&name.to_ascii_lowercase());
            }
            Change::PutAssignment(a) => {
                self.assignments.insert(a.name.to_ascii_lowercase(), a.clone());
            }
            Change::DeleteAssignment(name) => {
                self.assignments.remove(&name.to_ascii_lowercase());
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub config: ArmDoubleConfig,
    pub directory: Directory,
    pub tokens: HashMap<String, TokenInfo>,
    pub accounts: BTreeMap<AccountKey, AccountState>,
    pub operations: BTreeMap<String, Operation>,
    pub write_buckets: HashMap<(String, String), TokenBucket>,
    pub read_buckets: HashMap<(String, String), TokenBucket>,
    pub faults: Faults,
    /// While set, operations never leave `Enqueued`.
    pub stuck_operations: bool,
    /// Errors the next accepted operations will fail with.
    pub operation_failures: VecDeque<(String, String)>,
    pub journal: Journal,
}

impl State {
    pub fn new(config: ArmDoubleConfig) -> Self {
        Self {
            config,
            directory: Directory::default(),
            tokens: HashMap::new(),
            accounts: BTreeMap::new(),
            operations: BTreeMap::new(),
            write_buckets: HashMap::new(),
            read_buckets: HashMap::new(),
            faults: Faults::default(),
            stuck_operations: false,
            operation_failures: VecDeque::new(),
            journal: Journal::default(),
        }
    }

    pub fn add_account(&mut self, account: super::model::Account) {
        let key = account.reference.key();
        self.accounts.entry(key).or_insert_with(|| AccountState {
            account,
            definitions: BTreeMap::new(),
            assignments: BTreeMap::new(),
            writes: SlidingWindow::default(),
        });
    }

    pub fn account(&self, account: &AccountRef) -> Option<&AccountState> {
        self.accounts.get(&account.key())
    }

    pub fn account_mut(&mut self, account: &AccountRef) -> Option<&mut AccountState> {
        self.accounts.get_mut(&account.key())
    }

    /// An operation on `account` that has not finished.
    pub fn busy(&mut self, account: &AccountRef) -> Option<String> {
        self.settle();
        self.operations
            .values()
            .find(|op| !op.info.status.is_terminal() && op.info.account == *account)
            .map(|op| op.info.id.clone())
    }

    /// Completes operations that have run longer than
    /// `lro_complete_after` (unless operations are stuck).
    pub fn settle(&mut self) {
        let Some(after) = self.config.lro_complete_after else { return };
        if self.stuck_operations {
            return;
        }
        let due: Vec<String> = self
            .operations
            .iter()
            .filter(|(_, op)| !op.info.status.is_terminal() && op.started_at.elapsed() >= after)
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            self.complete(&id);
        }
    }

    /// One status poll of operation `id`: advances it unless stuck.
    pub fn poll(&mut self, id: &str) {
        self.settle();
        let stuck = self.stuck_operations;
        let polls_needed = self.config.lro_polls;
        let Some(op) = self.operations.get_mut(id) else { return };
        op.info.polls += 1;
        if op.info.status.is_terminal() || stuck {
            return;
        }
        if op.info.polls >= polls_needed {
            self.complete(id);
        } else {
            op.info.status = OperationStatus::Dequeued;
        }
    }

    /// Finishes operation `id`: applies its change, or fails it.
    pub fn complete(&mut self, id: &str) {
        let Some(op) = self.operations.get_mut(id) else { return };
        if op.info.status.is_terminal() {
            return;
        }
        op.ended = Some(SystemTime::now());
        if let Some(err) = op.fail_with.clone() {
            op.info.status = OperationStatus::Failed;
            op.info.error = Some(err);
            return;
        }
        op.info.status = OperationStatus::Succeeded;
        let (account, change) = (op.info.account.clone(), op.info.change.clone());
        if let Some(acct) = self.account_mut(&account) {
            acct.apply(&change);
        }
    }
}
