//! Applying plans to one account: resolve operations still running, read
//! the two LISTs, plan, and write the difference in plan order — the
//! caller holds the account's write lock.
//!
//! ```text
//!   poll pending operations ─▶ LIST definitions + LIST assignments (2 reads)
//!     ─▶ plan ─▶ for each action: write budget? ─▶ PUT/DELETE (LRO) ─▶ result
//! ```
//!
//! Failures that concern one object are recorded and the pass goes on:
//! principal not found, refused (400/409, a 404 that is not the account's),
//! a limit, a 403 or a 5xx on that write, a long-running operation that
//! ended `Failed`, an answer dbgrant cannot read. So one bad binding never
//! stops another's apply or revoke. Failures that concern the account
//! (429/503, 412, an operation still running, dbgrant's own write budget)
//! stop the pass; the report says when to come back. Failures no write can
//! get past (no token, 401, the account gone, the network down) fail the
//! sync. The plan puts revocations first, so a pass that stops early has
//! tried them, and the next pass tries them first again.
//!
//! The report says what the account holds of dbgrant's after the pass
//! ([`SyncReport::left_behind`]): the LIST of the pass, less what was
//! deleted, plus what was created. Revocation is confirmed against it.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    BACKEND,
    arm::{ArmApi, ArmError, AssignmentBody, DefinitionBody, Operation, OperationState},
};
use crate::{
    plan::cosmos::{
        AccountRef, Action, Actual, ActualAssignment, ActualDefinition, AssignmentKey, AssignmentState,
        DefinitionState, Desired, Limits, Observed, Plan, RoleKey, plan,
    },
    runtime::{audit, metrics::Metrics},
};

/// Control-plane writes dbgrant allows itself per account per window.
/// Azure documents about 500 operations per account per 5 minutes; dbgrant
/// keeps headroom for other tools.
pub const WRITE_BUDGET: usize = 400;
/// The write budget's window.
pub const WRITE_WINDOW: Duration = Duration::from_secs(300);

/// A sliding-window write budget for one account.
#[derive(Debug)]
pub struct WriteBudget {
    max: usize,
    window: Duration,
    writes: VecDeque<Instant>,
}

impl WriteBudget {
    /// At most `max` writes per `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        Self { max, window, writes: VecDeque::new() }
    }

    /// Take one write at `now`, or say how long until one is free.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        while self.writes.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            self.writes.pop_front();
        }
        if self.writes.len() >= self.max {
            let oldest = self.writes.front().copied().unwrap_or(now);
            return Err((oldest + self.window).saturating_duration_since(now).max(Duration::from_secs(1)));
        }
        self.writes.push_back(now);
        Ok(())
    }
}

impl Default for WriteBudget {
    fn default() -> Self {
        Self::new(WRITE_BUDGET, WRITE_WINDOW)
    }
}

/// What survives between syncs of one account. Guarded by the account's
/// write lock.
#[derive(Debug, Default)]
pub struct AccountState {
    /// Operations still running, by the resource name they write.
    pub pending: BTreeMap<String, Operation>,
    /// dbgrant's own write budget.
    pub budget: WriteBudget,
    /// Consecutive "principal not found" answers per assignment name.
    pub principal_retries: BTreeMap<String, u32>,
    /// Consecutive failed writes per resource name: any failure of a
    /// delete, and [`WriteResult::Failed`] of any write. Sets the backoff.
    pub failures: BTreeMap<String, u32>,
    /// No ARM calls before this instant (throttled, locked).
    pub not_before: Option<Instant>,
    /// What the last pass that read the account left in place (None until
    /// one did: the caller's record from status is used then).
    pub observed: Option<Observed>,
}

/// The result of one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// Written.
    Done,
    /// Entra does not know the principal yet.
    PrincipalNotFound(String),
    /// ARM refused this object.
    Rejected(String),
    /// An account limit refused this object.
    LimitExceeded(String),
    /// The write failed for a reason that may pass (403, 5xx after the
    /// pipeline's retries, an answer dbgrant could not read); retried with
    /// backoff.
    Failed(String),
    /// Not attempted: it depends on a write that failed in this pass (an
    /// assignment whose role definition was not written, a definition whose
    /// assignments are still in place).
    Held(String),
    /// Its operation is still running.
    Pending,
    /// Not attempted this pass.
    Skipped,
}

impl WriteResult {
    /// Why a write did not go through, for status; None when it did.
    pub fn why(&self) -> Option<String> {
        match self {
            WriteResult::Done => None,
            WriteResult::PrincipalNotFound(m) => Some(format!("principal not found: {m}")),
            WriteResult::Rejected(m) | WriteResult::LimitExceeded(m) | WriteResult::Failed(m) => Some(m.clone()),
            WriteResult::Held(m) => Some(format!("not attempted: {m}")),
            WriteResult::Pending => Some("its Azure operation is still running".into()),
            WriteResult::Skipped => Some("not attempted in this pass".into()),
        }
    }
}

/// Why a pass stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// 429/503 from ARM.
    Throttled(String),
    /// 412: another operation holds the account's lock.
    Locked(String),
    /// An operation is still running.
    Pending(String),
    /// dbgrant's own write budget for the account is spent.
    Budget,
    /// The pass had written for [`YIELD_AFTER`] and gave the account to a
    /// caller waiting for it (a revocation, a resync); the rest is written
    /// by the next pass.
    Yielded,
}

impl Stop {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Stop::Throttled(_) => "429",
            Stop::Locked(_) => "412",
            Stop::Pending(_) => "pending",
            Stop::Budget => "budget",
            Stop::Yielded => "yielded",
        }
    }

    /// A sentence for status.
    pub fn describe(&self) -> String {
        match self {
            Stop::Throttled(m) => format!("Azure Resource Manager is throttling writes ({m})"),
            Stop::Locked(m) => format!("another operation holds the account's lock ({m})"),
            Stop::Pending(r) => format!("an Azure operation on {r} is still running"),
            Stop::Yielded => "the pass paused to let another change to the account through".into(),
            Stop::Budget => format!(
                "dbgrant's write budget for the account ({WRITE_BUDGET} per {} minutes) is spent",
                WRITE_WINDOW.as_secs() / 60
            ),
        }
    }
}

/// How long to wait before polling an operation that is still running.
pub const PENDING_RETRY: Duration = Duration::from_secs(15);
/// A 429 asking for at most this long is waited out inside the pass (the
/// same write is retried), rather than ending the pass: ARM's write bucket
/// refills every second, and ending the pass would cost two LISTs and a
/// requeue for every few writes of a bulk apply.
pub const IN_PASS_WAIT: Duration = Duration::from_secs(5);
/// At most this much waiting on 429s inside one pass; past it the pass
/// stops and the account is retried later, so one pass never holds the
/// account's lock for long on throttling alone.
pub const IN_PASS_WAIT_TOTAL: Duration = Duration::from_secs(60);

/// What one sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub plan: Plan,
    /// Result per written resource name.
    pub results: BTreeMap<String, WriteResult>,
    /// Why the pass stopped early, and when to come back.
    pub stopped: Option<(Stop, Duration)>,
    /// Writes issued (each PUT or DELETE).
    pub writes: usize,
    /// Reads issued (LISTs and operation polls).
    pub reads: usize,
    /// Assignments on the account after the pass.
    pub assignments: usize,
    /// Custom definitions on the account after the pass.
    pub definitions: usize,
    /// Consecutive principal-not-found answers, by assignment name.
    pub principal_retries: BTreeMap<String, u32>,
    /// Consecutive failed writes, by resource name (see
    /// [`AccountState::failures`]).
    pub failures: BTreeMap<String, u32>,
    /// Names (lower case) of dbgrant's assignments and custom definitions
    /// on the account after the pass: the LIST of the pass, less deletes
    /// that went through, plus creates that did, plus anything whose
    /// operation is still running. None when the pass did not read the
    /// account.
    pub remaining: Option<BTreeSet<String>>,
    /// Observe mode: the plan's writes, not made (`create assignment …`).
    pub planned: Vec<String>,
    /// The caller's change number the pass's last plan was made for (see
    /// [`Progress::covers`]; 0 without progress).
    pub covers: u64,
}

/// Where a wanted assignment ended up, for a binding's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignmentOutcome {
    /// In place; `managed` says whether dbgrant owns it.
    Applied {
        /// Assignment name.
        name: String,
        /// dbgrant's (true) or pre-existing (false).
        managed: bool,
    },
    /// dbgrant's name is taken by an assignment it does not own.
    Conflict(String),
    /// ARM refused it.
    Rejected(String),
    /// Entra does not know the principal yet; retried with backoff.
    PrincipalNotFound {
        /// ARM's message.
        message: String,
        /// Attempts so far.
        attempts: u32,
    },
    /// The account's assignment limit.
    LimitExceeded(String),
    /// The write failed for a reason that may pass; retried with backoff.
    Failed(String),
    /// Its custom role definition is not in place.
    RoleUnavailable,
    /// Still being written (stopped early, operation running).
    InProgress,
}

impl SyncReport {
    /// A pass in flight as far as it has gone: its plan, the writes done so
    /// far, and every planned write not made yet as still running
    /// ([`WriteResult::Pending`]), so an assignment reads as applied only
    /// once it is in place. It says nothing of what the account holds
    /// after the pass (`remaining` is unknown), so it can show a grant in
    /// place but never confirm a revocation.
    pub fn partial(plan: &Plan, results: &BTreeMap<String, WriteResult>) -> Self {
        let mut results = results.clone();
        for a in &plan.actions {
            results.entry(a.name().to_string()).or_insert(WriteResult::Pending);
        }
        Self { plan: plan.clone(), results, ..Self::default() }
    }

    /// Where `key` ended up.
    pub fn assignment(&self, key: &AssignmentKey) -> AssignmentOutcome {
        match self.plan.assignments.get(key) {
            None => AssignmentOutcome::InProgress,
            Some(AssignmentState::Managed { name }) => match self.results.get(name) {
                None | Some(WriteResult::Done) => AssignmentOutcome::Applied { name: name.clone(), managed: true },
                Some(WriteResult::PrincipalNotFound(m)) => AssignmentOutcome::PrincipalNotFound {
                    message: m.clone(),
                    attempts: self.principal_retries.get(name).copied().unwrap_or(1),
                },
                Some(WriteResult::Rejected(m)) => AssignmentOutcome::Rejected(m.clone()),
                Some(WriteResult::LimitExceeded(m)) => AssignmentOutcome::LimitExceeded(m.clone()),
                Some(WriteResult::Failed(m)) => AssignmentOutcome::Failed(m.clone()),
                Some(WriteResult::Held(_)) => AssignmentOutcome::RoleUnavailable,
                Some(WriteResult::Pending | WriteResult::Skipped) => AssignmentOutcome::InProgress,
            },
            Some(AssignmentState::PreExisting { name }) => {
                AssignmentOutcome::Applied { name: name.clone(), managed: false }
            }
            Some(AssignmentState::Conflict { name }) => AssignmentOutcome::Conflict(name.clone()),
            Some(AssignmentState::LimitExceeded) => {
                AssignmentOutcome::LimitExceeded("the account's role assignment limit would be exceeded".into())
            }
            Some(AssignmentState::RoleUnavailable) => AssignmentOutcome::RoleUnavailable,
            Some(AssignmentState::Pending { .. }) => AssignmentOutcome::InProgress,
        }
    }

    /// The plan's state of a CosmosRoleDefinition, with its write result.
    pub fn definition(&self, source: &str) -> Option<(&DefinitionState, Option<&WriteResult>)> {
        let state = self.plan.definitions.get(source)?;
        let result = match state {
            DefinitionState::Managed { name } | DefinitionState::InUse { name, .. } => self.results.get(name),
            _ => None,
        };
        Some((state, result))
    }

    /// Descriptions of the writes that restored drift (see
    /// [`Plan::drifted`]) and went through.
    pub fn drift_corrected(&self) -> Vec<String> {
        self.done_where(|a| self.plan.drifted.iter().any(|d| d == a.name()))
    }

    /// Descriptions of the writes that were done.
    pub fn done(&self) -> Vec<String> {
        self.done_where(|_| true)
    }

    fn done_where(&self, keep: impl Fn(&Action) -> bool) -> Vec<String> {
        let done = |a: &&Action| self.results.get(a.name()) == Some(&WriteResult::Done) && keep(a);
        self.plan.actions.iter().filter(done).map(Action::describe).collect()
    }

    /// When to look again because of this report: after a stop, for a
    /// principal Entra has not replicated yet, or for a write that failed.
    pub fn retry_after(&self) -> Option<Duration> {
        let stop = self.stopped.as_ref().map(|(_, d)| *d);
        let principal = self.principal_retries.values().max().map(|n| principal_backoff(*n));
        let failed = self.failures.values().min().map(|n| retry_backoff(*n));
        [stop, principal, failed].into_iter().flatten().min()
    }

    /// Which of `names` (dbgrant's assignment or definition names) the
    /// account still holds after this pass although no binding in the pass
    /// wanted them, each with why it is still there. Empty: the account no
    /// longer carries any of them (revocation confirmed). None: the pass
    /// did not read the account, so nothing is confirmed.
    pub fn left_behind<'a>(
        &self,
        account: &AccountRef,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Option<BTreeMap<String, String>> {
        let remaining = self.remaining.as_ref()?;
        let wanted: BTreeSet<String> =
            self.plan.assignments.keys().map(|k| account.assignment_name(&k.principal_id, &k.scope, &k.role)).collect();
        let mut left = BTreeMap::new();
        for name in names {
            let name = name.to_ascii_lowercase();
            if !remaining.contains(&name) || wanted.contains(&name) {
                continue;
            }
            let action = self.plan.actions.iter().find(|a| a.name().eq_ignore_ascii_case(&name));
            let why = match action.and_then(|a| self.results.get(a.name())) {
                Some(WriteResult::Skipped) => match &self.stopped {
                    Some((stop, _)) => format!("not attempted: {}", stop.describe()),
                    None => "not attempted in this pass".into(),
                },
                Some(r) => r.why().unwrap_or_else(|| "deleted, but an Azure operation on it is still running".into()),
                None if action.is_some() => "not attempted in this pass".into(),
                None => match self
                    .plan
                    .definitions
                    .values()
                    .find(|s| matches!(s, DefinitionState::InUse { name: n, .. } if n.eq_ignore_ascii_case(&name)))
                {
                    Some(DefinitionState::InUse { by, .. }) => {
                        format!("{by} role assignment(s) dbgrant does not manage still use it")
                    }
                    _ => match &self.stopped {
                        Some((stop, _)) => format!("not deleted yet: {}", stop.describe()),
                        None => "not deleted yet".into(),
                    },
                },
            };
            left.insert(name, why);
        }
        Some(left)
    }
}

/// Backoff after `attempts` principal-not-found answers: the same as
/// [`retry_backoff`].
pub use self::retry_backoff as principal_backoff;

/// Backoff after `attempts` consecutive failures of one write: 15 s
/// doubling, at most 10 minutes.
pub fn retry_backoff(attempts: u32) -> Duration {
    Duration::from_secs(15u64.saturating_mul(1 << attempts.saturating_sub(1).min(6))).min(Duration::from_secs(600))
}

/// Whether no write can get past `e`: no token, 401, the network down, or
/// a 404 that says the account itself (or its resource group or
/// subscription) is gone, rather than something the write referred to.
fn fatal(e: &ArmError, account: &AccountRef) -> bool {
    match e {
        ArmError::Credential(_) | ArmError::Unauthorized { status: 401, .. } | ArmError::Transport(_) => true,
        ArmError::NotFound { code, message } => {
            let name = account.id().rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
            ["SubscriptionNotFound", "ResourceGroupNotFound", "ParentResourceNotFound"]
                .iter()
                .any(|c| code.eq_ignore_ascii_case(c))
                || (code.eq_ignore_ascii_case("ResourceNotFound")
                    && message.to_ascii_lowercase().contains(&format!("databaseaccounts/{name}'")))
        }
        _ => false,
    }
}

fn stop_for(e: &ArmError) -> Option<(Stop, Duration)> {
    match e {
        ArmError::Throttled { retry_after, message, .. } => Some((Stop::Throttled(message.clone()), *retry_after)),
        ArmError::Locked { retry_after, message } => Some((Stop::Locked(message.clone()), *retry_after)),
        ArmError::Pending { operation } => Some((Stop::Pending(operation.resource.clone()), PENDING_RETRY)),
        _ => None,
    }
}

/// Where a pass shows what it has confirmed so far, so that a binding
/// whose assignments are in place need not wait for the whole pass (at the
/// quota's pace, hundreds of writes) to say so; and where it learns of
/// changes made while it writes, so it can take them on without reading
/// the account again.
pub struct Progress<'a> {
    /// The caller's change number the pass was planned for.
    pub covers: u64,
    /// Whether anyone is waiting (a partial report is built only then).
    pub watched: &'a (dyn Fn() -> bool + Sync),
    /// Takes a partial report (see [`SyncReport::partial`]) and the change
    /// number it covers.
    pub publish: &'a (dyn Fn(u64, SyncReport) + Sync),
    /// Changes after change `n`: the newest change number and everything
    /// wanted at it. None when nothing changed, and always None for a pass
    /// that must not take on more (one that was asked to read the account
    /// afresh, or to release).
    pub newer: Option<&'a (dyn Fn(u64) -> Option<(u64, Desired)> + Sync)>,
    /// How long after its start the pass still asks `newer` (see
    /// [`TAKE_ON_FOR`]).
    pub take_on_for: Duration,
    /// Notified on every change: a pass that has taken on changes already
    /// waits up to [`TAKE_ON_WAIT`] for the next one before it ends.
    pub changes: Option<&'a tokio::sync::Notify>,
    /// Whether a caller waits for the account's lock: a pass that has
    /// written for [`YIELD_AFTER`] then stops ([`Stop::Yielded`]).
    pub contended: &'a (dyn Fn() -> bool + Sync),
}

impl Progress<'_> {
    fn show(&self, covers: u64, plan: &Plan, results: &BTreeMap<String, WriteResult>) {
        if (self.watched)() {
            (self.publish)(covers, SyncReport::partial(plan, results));
        }
    }
}

/// How long a pass keeps taking on changes made while it writes (see
/// [`Progress::newer`]); after that the next change waits for a pass that
/// reads the account again, and so does a target's periodic resync.
pub const TAKE_ON_FOR: Duration = Duration::from_secs(30);
/// How long a pass writes before it gives the account to a waiting caller:
/// a revocation or a resync waits at most this (and the write in flight)
/// behind a bulk apply's grants.
pub const YIELD_AFTER: Duration = Duration::from_secs(10);
/// How long a pass that has taken on changes waits for the next one once
/// its writes are done: in a bulk apply the next binding is a moment away,
/// and a new pass would read the account again.
pub const TAKE_ON_WAIT: Duration = Duration::from_millis(200);

/// One sync of an account. `desired.pending` is filled from `state`, and
/// `desired.previous` too once a pass has observed the account. After the
/// plan, and after each write that went through, `progress` (if any) gets
/// what the pass has confirmed so far.
///
/// When every write of the plan went through, the pass asks `progress` for
/// changes made meanwhile and plans again (for up to [`TAKE_ON_FOR`]),
/// against the account as listed plus its own writes since
/// ([`Actual::record`]): a bulk apply then costs two LISTs per account
/// every half minute instead of two per handful of writes. A plan that
/// would delete something, or write a name this pass wrote already, is left
/// to a pass that reads the account afresh: revocations are confirmed
/// against a LIST that was made for them.
#[allow(clippy::too_many_arguments)]
pub async fn sync(
    api: &dyn ArmApi,
    state: &mut AccountState,
    mut desired: Desired,
    limits: &Limits,
    metrics: &Metrics,
    audit: &audit::Scope<'_>,
    observe: bool,
    target: &str,
    progress: Option<&Progress<'_>>,
) -> Result<SyncReport, ArmError> {
    let mut report = SyncReport::default();
    if let Some(at) = state.not_before {
        let now = Instant::now();
        if at > now {
            report.stopped = Some((Stop::Throttled("waiting for the last Retry-After".into()), at - now));
            return Ok(report);
        }
        state.not_before = None;
    }

    // Operations still running from an earlier pass: poll, never re-issue.
    let pending: Vec<(String, Operation)> = state.pending.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, op) in pending {
        report.reads += 1;
        let r = api.poll(&op).await;
        metrics.backend_op(BACKEND, "pollOperation", r.is_ok());
        match r {
            Ok(OperationState::Running) => {}
            Ok(OperationState::Succeeded) => {
                state.pending.remove(&name);
            }
            Ok(OperationState::Failed(e)) => {
                tracing::warn!(%target, resource = %op.resource, error = %e, "azure operation failed; planning again");
                state.pending.remove(&name);
            }
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(e),
        }
    }
    desired.pending = state.pending.keys().cloned().collect();
    // A running operation holds the account's lock: writing now would only
    // earn 412s. Plan (for status) but write nothing until it finishes.
    if let Some(op) = state.pending.values().next() {
        report.stopped = Some((Stop::Pending(op.resource.clone()), PENDING_RETRY));
    }

    // The two LISTs are independent reads: sent together.
    report.reads += 2;
    let (definitions, assignments) = tokio::join!(api.list_definitions(), api.list_assignments());
    metrics.backend_op(BACKEND, "listRoleDefinitions", definitions.is_ok());
    metrics.backend_op(BACKEND, "listRoleAssignments", assignments.is_ok());
    let (definitions, assignments) = match (definitions, assignments) {
        (Ok(d), Ok(a)) => (d, a),
        (Err(e), _) | (_, Err(e)) => {
            if let Some((stop, wait)) = stop_for(&e) {
                metrics.throttled(BACKEND, target, stop.label());
                state.not_before = Some(Instant::now() + wait);
            }
            return Err(e);
        }
    };
    if let Some(o) = &state.observed {
        desired.previous = o.clone();
    }
    let mut actual = Actual { definitions, assignments };
    let account = api.account().clone();
    let mut p = plan(&account, &desired, &actual, limits);
    let mut assignments_now = actual.assignments.len();
    let mut definitions_now = actual.definitions.iter().filter(|d| !d.is_built_in()).count();
    if observe {
        // Observe mode: the plan is the result; nothing is written, and the
        // record drift is measured against stays as it was.
        report.planned = p.actions.iter().map(Action::describe).collect();
        report.remaining = Some(p.ours.clone());
        report.assignments = assignments_now;
        report.definitions = definitions_now;
        report.plan = p;
        return Ok(report);
    }

    // Definitions whose PUT failed, and custom roles with an assignment
    // still in place after its DELETE failed: writes that depend on them
    // are held, the rest go on.
    let mut failed_definitions: Vec<String> = Vec::new();
    let mut undeleted_roles: BTreeSet<RoleKey> = BTreeSet::new();
    let mut waited = Duration::ZERO;
    // tokio's clock, so tests can run it paused.
    let started = tokio::time::Instant::now();
    let mut covers = progress.map_or(0, |pr| pr.covers);
    // The plans of the rounds before this one (see `Plan::then`).
    let mut earlier: Option<Plan> = None;
    if let Some(progress) = progress {
        progress.show(covers, &p, &report.results);
    }
    loop {
        for action in &p.actions {
            let name = action.name().to_string();
            if report.stopped.is_some() {
                report.results.insert(name, WriteResult::Skipped);
                continue;
            }
            if let Action::PutAssignment { role_definition_id, .. } = action
                && failed_definitions.iter().any(|d| role_definition_id.to_ascii_lowercase().ends_with(d.as_str()))
            {
                report.results.insert(name, WriteResult::Held("its role definition was not written".into()));
                continue;
            }
            if let Action::DeleteDefinition { source, .. } = action
                && undeleted_roles.contains(&RoleKey::Custom(source.clone()))
            {
                report
                    .results
                    .insert(name, WriteResult::Held("role assignments that use it are still in place".into()));
                continue;
            }
            if progress.is_some_and(|pr| started.elapsed() >= YIELD_AFTER && (pr.contended)()) {
                metrics.throttled(BACKEND, target, Stop::Yielded.label());
                report.stopped = Some((Stop::Yielded, Duration::ZERO));
                report.results.insert(name, WriteResult::Skipped);
                continue;
            }
            if let Err(wait) = state.budget.try_take(Instant::now()) {
                metrics.throttled(BACKEND, target, "budget");
                report.stopped = Some((Stop::Budget, wait));
                report.results.insert(name, WriteResult::Skipped);
                continue;
            }
            let result = loop {
                let (op, result) = execute(api, action, &mut report.writes).await;
                metrics.backend_op(BACKEND, op, result.is_ok());
                record(audit, op, action, &actual, &desired, &result);
                match &result {
                    Err(ArmError::Throttled { retry_after, .. })
                        if *retry_after <= IN_PASS_WAIT && waited + *retry_after <= IN_PASS_WAIT_TOTAL =>
                    {
                        metrics.throttled(BACKEND, target, "throttled");
                        tracing::debug!(%target, wait_ms = retry_after.as_millis() as u64, "azure asked dbgrant to wait; waiting in the pass");
                        waited += *retry_after;
                        tokio::time::sleep(*retry_after).await;
                    }
                    _ => break result,
                }
            };
            let outcome = match result {
                Ok(()) => {
                    state.principal_retries.remove(&name);
                    match action {
                        Action::PutAssignment { create: true, .. } => assignments_now += 1,
                        Action::DeleteAssignment { .. } => assignments_now = assignments_now.saturating_sub(1),
                        Action::PutDefinition { create: true, .. } => definitions_now += 1,
                        Action::DeleteDefinition { .. } => definitions_now = definitions_now.saturating_sub(1),
                        _ => {}
                    }
                    tracing::info!(%target, action = %action.describe(), "applied");
                    WriteResult::Done
                }
                Err(ArmError::Pending { operation }) => {
                    tracing::info!(%target, resource = %operation.resource, "azure operation still running; will poll it later");
                    metrics.throttled(BACKEND, target, "pending");
                    report.stopped = Some((Stop::Pending(operation.resource.clone()), PENDING_RETRY));
                    state.pending.insert(name.clone(), operation);
                    WriteResult::Pending
                }
                Err(e) if stop_for(&e).is_some() => {
                    let (stop, wait) = stop_for(&e).unwrap_or((Stop::Budget, PENDING_RETRY));
                    tracing::info!(%target, reason = stop.label(), wait_s = wait.as_secs(), "azure asked dbgrant to wait");
                    metrics.throttled(BACKEND, target, stop.label());
                    state.not_before = Some(Instant::now() + wait);
                    report.stopped = Some((stop, wait));
                    WriteResult::Skipped
                }
                Err(ArmError::PrincipalNotFound { message }) => {
                    let n = state.principal_retries.entry(name.clone()).or_default();
                    *n += 1;
                    tracing::info!(%target, assignment = %name, attempts = *n, "principal not found yet; will retry");
                    WriteResult::PrincipalNotFound(message)
                }
                Err(ArmError::LimitExceeded { code, message }) => {
                    WriteResult::LimitExceeded(format!("{code}: {message}"))
                }
                // No write can get past these: the pass ends, the report is
                // not used, and nothing is confirmed.
                Err(e) if fatal(&e, &account) => return Err(e),
                Err(e @ (ArmError::Rejected { .. } | ArmError::NotFound { .. })) => {
                    tracing::warn!(%target, action = %action.describe(), error = %e, "azure refused the write");
                    WriteResult::Rejected(e.to_string())
                }
                // 403, 5xx after the pipeline's retries, an unreadable answer:
                // this write failed; the others still go.
                Err(e) => {
                    tracing::warn!(%target, action = %action.describe(), error = %e, "azure failed the write; the pass goes on");
                    WriteResult::Failed(e.to_string())
                }
            };
            if outcome != WriteResult::Done {
                match action {
                    Action::PutDefinition { name, .. } => failed_definitions.push(name.to_ascii_lowercase()),
                    Action::DeleteAssignment { key, .. } => {
                        undeleted_roles.insert(key.role.clone());
                    }
                    _ => {}
                }
            }
            let failed = matches!(outcome, WriteResult::Failed(_))
                || (matches!(action, Action::DeleteAssignment { .. } | Action::DeleteDefinition { .. })
                    && !matches!(outcome, WriteResult::Done | WriteResult::Pending | WriteResult::Skipped));
            if failed {
                *state.failures.entry(name.clone()).or_default() += 1;
            } else if outcome == WriteResult::Done {
                state.failures.remove(&name);
            }
            let shown = outcome == WriteResult::Done && matches!(action, Action::PutAssignment { .. });
            report.results.insert(name, outcome);
            if let Some(progress) = progress.filter(|_| shown) {
                progress.show(covers, &p, &report.results);
            }
        }
        // Take on what changed while this round wrote, if every write went
        // through and no more than puts are needed.
        let clean = report.stopped.is_none()
            && p.actions.iter().all(|a| report.results.get(a.name()) == Some(&WriteResult::Done));
        let taking = progress.filter(|pr| clean && started.elapsed() < pr.take_on_for);
        let newer = match taking {
            Some(pr) => take_on(pr, covers, earlier.is_some()).await,
            None => None,
        };
        let Some((n, mut next)) = newer else { break };
        let mut after = actual.clone();
        for action in &p.actions {
            after.record(action);
        }
        next.pending = state.pending.keys().cloned().collect();
        next.previous = p.observed(&desired, |_| true);
        let np = plan(&account, &next, &after, limits);
        let revokes = |a: &Action| matches!(a, Action::DeleteAssignment { .. } | Action::DeleteDefinition { .. });
        if np.actions.iter().any(|a| revokes(a) || report.results.contains_key(a.name())) {
            break;
        }
        tracing::debug!(%target, covers = n, writes = np.actions.len(), "taking on changes made during the pass");
        earlier = Some(match earlier.take() {
            Some(e) => e.then(std::mem::replace(&mut p, np)),
            None => std::mem::replace(&mut p, np),
        });
        (actual, desired, covers) = (after, next, n);
        if let Some(progress) = progress {
            progress.show(covers, &p, &report.results);
        }
    }
    // What the account holds of dbgrant's now.
    let mut remaining = p.ours.clone();
    for action in p.actions.iter().filter(|a| report.results.get(a.name()) == Some(&WriteResult::Done)) {
        let name = action.name().to_ascii_lowercase();
        if matches!(action, Action::DeleteAssignment { .. } | Action::DeleteDefinition { .. }) {
            remaining.remove(&name);
        } else {
            remaining.insert(name);
        }
    }
    remaining.extend(state.pending.keys().map(|n| n.to_ascii_lowercase()));
    report.remaining = Some(remaining);
    // Failures of writes the plan no longer has are forgotten.
    state.failures.retain(|n, _| p.actions.iter().any(|a| a.name() == n));
    state.observed = Some(p.observed(&desired, |n| report.results.get(n) == Some(&WriteResult::Done)));
    report.assignments = assignments_now;
    report.definitions = definitions_now;
    report.principal_retries = state.principal_retries.clone();
    report.failures = state.failures.clone();
    report.covers = covers;
    report.plan = match earlier {
        Some(e) => e.then(p),
        None => p,
    };
    Ok(report)
}

/// The changes made after `covers`, from `progress`; `waiting` lets it wait
/// [`TAKE_ON_WAIT`] for one.
async fn take_on(progress: &Progress<'_>, covers: u64, waiting: bool) -> Option<(u64, Desired)> {
    let newer = progress.newer?;
    let Some(changes) = progress.changes.filter(|_| waiting) else { return newer(covers) };
    let deadline = tokio::time::Instant::now() + TAKE_ON_WAIT;
    loop {
        // Made before looking, so a change in between is not missed.
        let changed = changes.notified();
        if let Some(next) = newer(covers) {
            return Some(next);
        }
        tokio::time::timeout_at(deadline, changed).await.ok()?;
    }
}

async fn execute(api: &dyn ArmApi, action: &Action, writes: &mut usize) -> (&'static str, Result<(), ArmError>) {
    *writes += 1;
    match action {
        Action::PutDefinition { name, role_name, data_actions, assignable_scopes, .. } => {
            let body = DefinitionBody {
                role_name: role_name.clone(),
                data_actions: data_actions.clone(),
                assignable_scopes: assignable_scopes.clone(),
            };
            ("putRoleDefinition", api.put_definition(name, &body).await)
        }
        Action::DeleteDefinition { name, .. } => ("deleteRoleDefinition", api.delete_definition(name).await),
        Action::DeleteAssignment { name, .. } => ("deleteRoleAssignment", api.delete_assignment(name).await),
        Action::PutAssignment { name, principal_id, role_definition_id, scope, .. } => {
            let body = AssignmentBody {
                principal_id: principal_id.clone(),
                role_definition_id: role_definition_id.clone(),
                scope: scope.clone(),
            };
            ("putRoleAssignment", api.put_assignment(name, &body).await)
        }
    }
}

/// The audit record of one ARM write: the object as listed before the
/// pass, what the write asks for, the bindings (or role definition) that
/// want it, and how ARM answered.
fn record(
    audit: &audit::Scope<'_>,
    op: &'static str,
    action: &Action,
    actual: &Actual,
    desired: &Desired,
    result: &Result<(), ArmError>,
) {
    let name = action.name();
    let assignment = |a: &ActualAssignment| serde_json::json!({"principalId": a.principal_id, "roleDefinitionId": a.role_definition_id, "scope": a.scope});
    let definition = |d: &ActualDefinition| serde_json::json!({"roleName": d.role_name, "dataActions": d.data_actions, "assignableScopes": d.assignable_scopes});
    let (kind, before, after, bindings, verb) = match action {
        Action::PutAssignment { key, principal_id, role_definition_id, scope, create, .. } => (
            "assignment",
            actual.assignments.iter().find(|a| a.name.eq_ignore_ascii_case(name)).map(assignment),
            Some(
                serde_json::json!({"principalId": principal_id, "roleDefinitionId": role_definition_id, "scope": scope}),
            ),
            desired.assignments.get(key).map(|b| b.iter().cloned().collect()).unwrap_or_default(),
            if *create { "create" } else { "update" },
        ),
        Action::DeleteAssignment { .. } => (
            "assignment",
            actual.assignments.iter().find(|a| a.name.eq_ignore_ascii_case(name)).map(assignment),
            None,
            Vec::new(),
            "delete",
        ),
        Action::PutDefinition { source, role_name, data_actions, assignable_scopes, create, .. } => (
            "definition",
            actual.definitions.iter().find(|d| d.name.eq_ignore_ascii_case(name)).map(definition),
            Some(
                serde_json::json!({"roleName": role_name, "dataActions": data_actions, "assignableScopes": assignable_scopes}),
            ),
            vec![format!("CosmosRoleDefinition/{source}")],
            if *create { "create" } else { "update" },
        ),
        Action::DeleteDefinition { .. } => (
            "definition",
            actual.definitions.iter().find(|d| d.name.eq_ignore_ascii_case(name)).map(definition),
            None,
            Vec::new(),
            "delete",
        ),
    };
    let outcome = match result {
        Ok(()) => Ok("applied"),
        Err(ArmError::Pending { .. }) => Ok("accepted"),
        Err(e @ (ArmError::Throttled { .. } | ArmError::Locked { .. })) => Err(("throttled", e.to_string())),
        Err(e @ (ArmError::Rejected { .. } | ArmError::NotFound { .. } | ArmError::LimitExceeded { .. })) => {
            Err(("refused", e.to_string()))
        }
        Err(e @ ArmError::PrincipalNotFound { .. }) => Err(("refused", e.to_string())),
        Err(e) => Err(("failed", e.to_string())),
    };
    let object = audit::BackendObject { kind, name: name.to_string() };
    audit.record(object, verb, op, before, after, bindings, outcome);
}

/// A shared, cheaply cloned report.
pub type SharedReport = Arc<SyncReport>;

#[cfg(test)]
mod tests {
    fn discard_audit() -> audit::Scope<'static> {
        static AUDITOR: std::sync::LazyLock<audit::Auditor> = std::sync::LazyLock::new(audit::Auditor::discard);
        static TRIGGER: std::sync::LazyLock<audit::Trigger> = std::sync::LazyLock::new(audit::Trigger::default);
        audit::Scope::new(&AUDITOR, "cosmosdb", "t", &TRIGGER)
    }

    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::{
        api::BuiltInCosmosRole,
        plan::cosmos::{AccountRef, ActualAssignment, ActualDefinition, RoleKey},
    };

    /// An in-memory account with scripted failures and a call log.
    #[derive(Default)]
    struct Fake {
        account: Option<AccountRef>,
        state: Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        assignments: BTreeMap<String, ActualAssignment>,
        calls: Vec<String>,
        /// Next answers to writes (taken in order), then success.
        faults: VecDeque<Option<ArmError>>,
        /// Every write to these names fails so, until removed.
        broken: BTreeMap<String, ArmError>,
        /// Writes accepted but still running, committed when polled after
        /// `done` is set.
        running: BTreeMap<String, ActualAssignment>,
        done: bool,
        /// How long each PUT of an assignment takes.
        slow: Duration,
    }

    impl Fake {
        fn new() -> Self {
            Self {
                account: Some(AccountRef::new("c9e6de92-9aba-45b0-85a1-5decf672d856", "rg", "acct")),
                ..Default::default()
            }
        }
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut self.state.lock().unwrap().calls)
        }
        fn fault(&self, e: Option<ArmError>) {
            self.state.lock().unwrap().faults.push_back(e);
        }
    }

    #[async_trait]
    impl ArmApi for Fake {
        fn account(&self) -> &AccountRef {
            self.account.as_ref().unwrap()
        }
        async fn get_account(&self) -> Result<String, ArmError> {
            Ok(self.account().id().to_string())
        }
        async fn list_definitions(&self) -> Result<Vec<ActualDefinition>, ArmError> {
            self.state.lock().unwrap().calls.push("LIST definitions".into());
            Ok(vec![])
        }
        async fn list_assignments(&self) -> Result<Vec<ActualAssignment>, ArmError> {
            let mut s = self.state.lock().unwrap();
            s.calls.push("LIST assignments".into());
            Ok(s.assignments.values().cloned().collect())
        }
        async fn put_definition(&self, _: &str, _: &DefinitionBody) -> Result<(), ArmError> {
            unreachable!("no custom roles in these tests")
        }
        async fn delete_definition(&self, _: &str) -> Result<(), ArmError> {
            unreachable!("no custom roles in these tests")
        }
        async fn put_assignment(&self, name: &str, body: &AssignmentBody) -> Result<(), ArmError> {
            let slow = self.state.lock().unwrap().slow;
            if !slow.is_zero() {
                tokio::time::sleep(slow).await;
            }
            let mut s = self.state.lock().unwrap();
            s.calls.push(format!("PUT {name}"));
            if let Some(e) = s.broken.get(name) {
                return Err(e.clone());
            }
            let a = ActualAssignment {
                name: name.into(),
                principal_id: body.principal_id.clone(),
                role_definition_id: body.role_definition_id.clone(),
                scope: body.scope.clone(),
            };
            match s.faults.pop_front().flatten() {
                Some(ArmError::Pending { operation }) => {
                    s.running.insert(name.into(), a);
                    Err(ArmError::Pending { operation })
                }
                Some(e) => Err(e),
                None => {
                    s.assignments.insert(name.into(), a);
                    Ok(())
                }
            }
        }
        async fn delete_assignment(&self, name: &str) -> Result<(), ArmError> {
            let mut s = self.state.lock().unwrap();
            s.calls.push(format!("DELETE {name}"));
            if let Some(e) = s.broken.get(name) {
                return Err(e.clone());
            }
            if let Some(e) = s.faults.pop_front().flatten() {
                return Err(e);
            }
            s.assignments.remove(name);
            Ok(())
        }
        async fn poll(&self, op: &Operation) -> Result<OperationState, ArmError> {
            let mut s = self.state.lock().unwrap();
            s.calls.push(format!("POLL {}", op.resource));
            if !s.done {
                return Ok(OperationState::Running);
            }
            let running = std::mem::take(&mut s.running);
            s.assignments.extend(running);
            Ok(OperationState::Succeeded)
        }
    }

    const P1: &str = "11111111-1111-1111-1111-111111111111";
    const P2: &str = "22222222-2222-2222-2222-222222222222";
    const P3: &str = "33333333-3333-3333-3333-333333333333";

    fn reader_name(fake: &Fake, p: &str, scope: &str) -> String {
        fake.account().assignment_name(p, scope, &RoleKey::BuiltIn(BuiltInCosmosRole::DataReader))
    }

    fn on_account(fake: &Fake) -> Vec<String> {
        fake.state.lock().unwrap().assignments.keys().cloned().collect()
    }

    fn want(keys: &[(&str, &str)]) -> Desired {
        let mut d = Desired { known_roles: RoleKey::built_ins().into_iter().collect(), ..Default::default() };
        for (p, scope) in keys {
            let key = AssignmentKey {
                principal_id: p.to_string(),
                role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
                scope: scope.to_string(),
            };
            d.assignments.entry(key).or_default().insert("ns/b".into());
        }
        d
    }

    async fn run(fake: &Fake, state: &mut AccountState, d: Desired) -> SyncReport {
        sync(fake, state, d, &Limits::default(), &Metrics::default(), &discard_audit(), false, "t", None).await.unwrap()
    }

    fn key(p: &str, scope: &str) -> AssignmentKey {
        AssignmentKey {
            principal_id: p.to_string(),
            role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
            scope: scope.to_string(),
        }
    }

    #[tokio::test]
    async fn a_pass_shows_each_assignment_in_place_as_soon_as_it_is_written() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        // P1 is in place already; P2 and P3 are to be written.
        run(&fake, &mut state, want(&[(P1, "/dbs/a")])).await;
        let shown: std::sync::Mutex<Vec<SyncReport>> = Default::default();
        let publish = |covers: u64, r: SyncReport| {
            assert_eq!(covers, 7, "the caller's change number");
            shown.lock().unwrap().push(r)
        };
        let watched = || true;
        let progress = Progress {
            covers: 7,
            watched: &watched,
            publish: &publish,
            newer: None,
            take_on_for: TAKE_ON_FOR,
            changes: None,
            contended: &|| false,
        };
        let d = want(&[(P1, "/dbs/a"), (P2, "/dbs/a"), (P3, "/dbs/a")]);
        let limits = Limits::default();
        let report =
            sync(&fake, &mut state, d, &limits, &Metrics::default(), &discard_audit(), false, "t", Some(&progress))
                .await
                .unwrap();
        assert_eq!(report.writes, 2);
        let shown = shown.into_inner().unwrap();
        let applied =
            |r: &SyncReport, p: &str| matches!(r.assignment(&key(p, "/dbs/a")), AssignmentOutcome::Applied { .. });
        let seen: Vec<[bool; 3]> = shown.iter().map(|r| [applied(r, P1), applied(r, P2), applied(r, P3)]).collect();
        // After the plan, then after each of the two writes, in plan order.
        let first_written = if applied(&shown[1], P2) { 1 } else { 2 };
        let mut after_one = [true, false, false];
        after_one[first_written] = true;
        assert_eq!(seen, vec![[true, false, false], after_one, [true, true, true]]);
        // A partial report never confirms what the account holds.
        assert!(shown.iter().all(|r| r.remaining.is_none() && r.stopped.is_none()));
        // Not watched: nothing is built.
        let unwatched = || false;
        let never = |_: u64, _: SyncReport| panic!("published with nobody waiting");
        let quiet = Progress {
            covers: 0,
            watched: &unwatched,
            publish: &never,
            newer: None,
            take_on_for: TAKE_ON_FOR,
            changes: None,
            contended: &|| false,
        };
        let d = want(&[(P2, "/dbs/b")]);
        sync(&fake, &mut state, d, &limits, &Metrics::default(), &discard_audit(), false, "t", Some(&quiet))
            .await
            .unwrap();
    }

    /// A `Progress` whose `newer` hands out `changes` in turn (numbered
    /// from 2; the pass starts at 1), recording each number it was asked
    /// about and each change number published.
    struct Changes {
        queue: Mutex<VecDeque<Desired>>,
        asked: Mutex<Vec<u64>>,
        published: Mutex<Vec<u64>>,
    }

    impl Changes {
        fn new(changes: Vec<Desired>) -> Self {
            Self { queue: Mutex::new(changes.into()), asked: Default::default(), published: Default::default() }
        }
        async fn sync(&self, fake: &Fake, state: &mut AccountState, d: Desired, take_on_for: Duration) -> SyncReport {
            let newer = |since: u64| {
                self.asked.lock().unwrap().push(since);
                self.queue.lock().unwrap().pop_front().map(|d| (since + 1, d))
            };
            let publish = |covers: u64, _: SyncReport| self.published.lock().unwrap().push(covers);
            let watched = || true;
            let progress = Progress {
                covers: 1,
                watched: &watched,
                publish: &publish,
                newer: Some(&newer),
                take_on_for,
                changes: None,
                contended: &|| false,
            };
            let limits = Limits::default();
            sync(fake, state, d, &limits, &Metrics::default(), &discard_audit(), false, "t", Some(&progress))
                .await
                .unwrap()
        }
    }

    #[tokio::test]
    async fn a_pass_takes_on_grants_made_while_it_writes_without_reading_the_account_again() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        let changes = Changes::new(vec![
            // P2 arrives while P1 is written, then a binding that shares P2's
            // assignment (nothing to write), then P3.
            want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]),
            want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]),
            want(&[(P1, "/dbs/a"), (P2, "/dbs/a"), (P3, "/dbs/a")]),
        ]);
        let report = changes.sync(&fake, &mut state, want(&[(P1, "/dbs/a")]), TAKE_ON_FOR).await;
        let names = [P1, P2, P3].map(|p| reader_name(&fake, p, "/dbs/a"));
        let puts = names.iter().map(|n| format!("PUT {n}"));
        assert_eq!(
            fake.calls(),
            ["LIST definitions".to_string(), "LIST assignments".to_string()]
                .into_iter()
                .chain(puts)
                .collect::<Vec<_>>(),
            "one read of the account for all rounds"
        );
        // A round with nothing to write goes on to the next change.
        assert_eq!(*changes.asked.lock().unwrap(), [1, 2, 3, 4]);
        assert_eq!(report.covers, 4);
        // After each plan, and after each write.
        assert_eq!(*changes.published.lock().unwrap(), [1, 1, 2, 2, 3, 4, 4]);
        assert_eq!(report.writes, 3);
        assert_eq!(report.done().len(), 3, "every round's writes: {:?}", report.done());
        for p in [P1, P2, P3] {
            assert!(matches!(report.assignment(&key(p, "/dbs/a")), AssignmentOutcome::Applied { managed: true, .. }));
        }
        let remaining = report.remaining.clone().unwrap();
        assert!(names.iter().all(|n| remaining.contains(&n.to_ascii_lowercase())), "{remaining:?}");
        assert_eq!(report.assignments, 3);
        // The next pass reads the account and finds all three in place.
        let report = run(&fake, &mut state, want(&[(P1, "/dbs/a"), (P2, "/dbs/a"), (P3, "/dbs/a")])).await;
        assert_eq!(report.writes, 0, "{:?}", report.done());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_that_took_on_a_change_waits_a_moment_for_the_next() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        let changed = tokio::sync::Notify::new();
        let change = std::sync::atomic::AtomicU64::new(1);
        let newer = |since: u64| {
            let n = change.load(std::sync::atomic::Ordering::SeqCst);
            (n > since).then(|| {
                let principals = [P1, P2, P3];
                (n, want(&principals[..n as usize].iter().map(|p| (*p, "/dbs/a")).collect::<Vec<_>>()))
            })
        };
        let publish = |_: u64, _: SyncReport| {};
        let watched = || true;
        let progress = Progress {
            covers: 1,
            watched: &watched,
            publish: &publish,
            newer: Some(&newer),
            take_on_for: TAKE_ON_FOR,
            changes: Some(&changed),
            contended: &|| false,
        };
        let limits = Limits::default();
        // Change 2 is there when the first round ends; change 3 comes 150 ms
        // into the wait after round two, and nothing after it.
        change.store(2, std::sync::atomic::Ordering::SeqCst);
        let bump = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            change.store(3, std::sync::atomic::Ordering::SeqCst);
            changed.notify_waiters();
        };
        let start = tokio::time::Instant::now();
        let (metrics, audit) = (Metrics::default(), discard_audit());
        let (report, ()) = tokio::join!(
            sync(&fake, &mut state, want(&[(P1, "/dbs/a")]), &limits, &metrics, &audit, false, "t", Some(&progress)),
            bump
        );
        let report = report.unwrap();
        assert_eq!(report.writes, 3, "all three changes in one pass");
        assert_eq!(report.covers, 3);
        assert_eq!(fake.calls().iter().filter(|c| c.starts_with("LIST")).count(), 2);
        // It waited for change 3, then TAKE_ON_WAIT for a fourth.
        assert_eq!(start.elapsed(), Duration::from_millis(150) + TAKE_ON_WAIT);
    }

    #[tokio::test]
    async fn a_revocation_made_while_a_pass_writes_waits_for_a_pass_that_reads_the_account() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        // P1's binding goes while P2 is written: deleting P1's assignment
        // is not taken on.
        let changes = Changes::new(vec![want(&[(P2, "/dbs/a")])]);
        run(&fake, &mut state, want(&[(P1, "/dbs/a")])).await;
        fake.calls();
        let report = changes.sync(&fake, &mut state, want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]), TAKE_ON_FOR).await;
        assert_eq!(fake.calls().len(), 3, "two LISTs and P2's PUT, no DELETE");
        assert_eq!(report.covers, 1, "the change was not taken on");
        assert_eq!(on_account(&fake).len(), 2);
        let p1 = reader_name(&fake, P1, "/dbs/a").to_ascii_lowercase();
        assert!(report.left_behind(fake.account(), [p1.as_str()]).unwrap().is_empty(), "still wanted by this pass");
        // The next pass lists the account, deletes, and confirms.
        let report = run(&fake, &mut state, want(&[(P2, "/dbs/a")])).await;
        assert_eq!(report.writes, 1);
        assert!(report.left_behind(fake.account(), [p1.as_str()]).unwrap().is_empty());
        assert_eq!(on_account(&fake).len(), 1);
    }

    #[tokio::test]
    async fn a_pass_takes_on_nothing_after_a_failed_write_or_once_its_time_is_up() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        fake.fault(Some(ArmError::Server { status: 500, code: "InternalServerError".into(), message: "boom".into() }));
        let changes = Changes::new(vec![want(&[(P1, "/dbs/a"), (P2, "/dbs/a")])]);
        let report = changes.sync(&fake, &mut state, want(&[(P1, "/dbs/a")]), TAKE_ON_FOR).await;
        assert!(changes.asked.lock().unwrap().is_empty(), "a failed write ends the pass");
        assert_eq!(report.covers, 1);

        let report = changes.sync(&fake, &mut state, want(&[(P1, "/dbs/a")]), Duration::ZERO).await;
        assert_eq!(report.writes, 1);
        assert!(changes.asked.lock().unwrap().is_empty(), "no time left to take on more");
        assert_eq!(report.covers, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_pass_gives_the_account_to_a_waiting_caller() {
        let fake = Fake::new();
        fake.state.lock().unwrap().slow = Duration::from_secs(4);
        let mut state = AccountState::default();
        let contended = std::sync::atomic::AtomicBool::new(false);
        let is_contended = || contended.load(std::sync::atomic::Ordering::SeqCst);
        let (publish, watched) = (|_: u64, _: SyncReport| {}, || false);
        let progress = Progress {
            covers: 1,
            watched: &watched,
            publish: &publish,
            newer: None,
            take_on_for: TAKE_ON_FOR,
            changes: None,
            contended: &is_contended,
        };
        let (metrics, audit, limits) = (Metrics::default(), discard_audit(), Limits::default());
        let five = want(&[(P1, "/dbs/a"), (P2, "/dbs/a"), (P3, "/dbs/a"), (P1, "/dbs/b"), (P2, "/dbs/b")]);
        // Nobody waiting: all five writes, 20 s.
        let r = sync(&fake, &mut state, five.clone(), &limits, &metrics, &audit, false, "t", Some(&progress)).await;
        assert_eq!(r.unwrap().writes, 5);
        // A caller waits: the pass stops at the first write after 10 s (the
        // fourth), and the next pass does the rest.
        let mut state = AccountState::default();
        let fake = Fake::new();
        fake.state.lock().unwrap().slow = Duration::from_secs(4);
        contended.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = sync(&fake, &mut state, five.clone(), &limits, &metrics, &audit, false, "t", Some(&progress)).await;
        let r = r.unwrap();
        assert_eq!(r.writes, 3);
        assert!(matches!(r.stopped, Some((Stop::Yielded, d)) if d.is_zero()), "{:?}", r.stopped);
        assert_eq!(r.results.values().filter(|w| **w == WriteResult::Skipped).count(), 2);
        let r = sync(&fake, &mut state, five, &limits, &metrics, &audit, false, "t", None).await.unwrap();
        assert_eq!(r.writes, 2, "the rest, by a pass that read the account again");
    }

    #[test]
    fn a_partial_report_counts_unwritten_actions_as_in_progress() {
        let fake = Fake::new();
        let d = want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]);
        let actual = Actual { definitions: Vec::new(), assignments: Vec::new() };
        let p = plan(fake.account(), &d, &actual, &Limits::default());
        assert_eq!(p.actions.len(), 2);
        let mut results = BTreeMap::new();
        results.insert(p.actions[0].name().to_string(), WriteResult::Done);
        let partial = SyncReport::partial(&p, &results);
        let outcomes: Vec<bool> = [P1, P2]
            .iter()
            .map(|x| matches!(partial.assignment(&key(x, "/dbs/a")), AssignmentOutcome::Applied { .. }))
            .collect();
        assert_eq!(outcomes.iter().filter(|a| **a).count(), 1, "exactly the written one is in place: {outcomes:?}");
        assert!(partial.remaining.is_none());
    }

    #[tokio::test]
    async fn steady_state_is_two_reads_and_no_writes() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        let d = want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]);
        let first = run(&fake, &mut state, d.clone()).await;
        assert_eq!(first.writes, 2);
        fake.calls();
        let again = run(&fake, &mut state, d).await;
        assert_eq!((again.reads, again.writes), (2, 0));
        assert_eq!(fake.calls(), vec!["LIST definitions", "LIST assignments"]);
    }

    #[tokio::test]
    async fn throttling_stops_the_pass_and_holds_off_further_calls() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        fake.fault(Some(ArmError::Throttled {
            status: 429,
            retry_after: Duration::from_secs(30),
            message: "slow down".into(),
        }));
        let r = run(&fake, &mut state, want(&[(P1, "/dbs/a"), (P2, "/dbs/a")])).await;
        assert!(matches!(r.stopped, Some((Stop::Throttled(_), d)) if d == Duration::from_secs(30)));
        assert_eq!(r.writes, 1, "the pass stops at the first 429");
        assert!(r.results.values().all(|x| *x == WriteResult::Skipped));
        fake.calls();
        // Until Retry-After passes, a sync makes no calls at all.
        let held = run(&fake, &mut state, want(&[(P1, "/dbs/a")])).await;
        assert!(held.stopped.is_some());
        assert!(fake.calls().is_empty());
        assert!(held.retry_after().unwrap() <= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_after_is_waited_out_in_the_pass() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        let throttled =
            || Some(ArmError::Throttled { status: 429, retry_after: Duration::from_secs(1), message: "bucket".into() });
        fake.fault(throttled());
        fake.fault(None);
        fake.fault(throttled());
        let d = want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]);
        let started = tokio::time::Instant::now();
        let r = run(&fake, &mut state, d.clone()).await;
        assert!(r.stopped.is_none(), "{:?}", r.stopped);
        assert_eq!(r.writes, 4, "each throttled write is retried once");
        assert!(r.results.values().all(|x| *x == WriteResult::Done), "{:?}", r.results);
        assert_eq!(fake.state.lock().unwrap().assignments.len(), 2);
        assert!(state.not_before.is_none());
        assert!(started.elapsed() >= Duration::from_secs(2), "it waited the Retry-After, twice");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_in_the_pass_is_bounded() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        let throttled = ArmError::Throttled { status: 429, retry_after: IN_PASS_WAIT, message: "bucket".into() };
        for _ in 0..100 {
            fake.fault(Some(throttled.clone()));
        }
        let r = run(&fake, &mut state, want(&[(P1, "/dbs/a")])).await;
        assert!(matches!(r.stopped, Some((Stop::Throttled(_), _))), "{:?}", r.stopped);
        let tries = (IN_PASS_WAIT_TOTAL.as_secs() / IN_PASS_WAIT.as_secs()) as usize + 1;
        assert_eq!(r.writes, tries, "waits in place until the pass's total, then stops");
        assert!(state.not_before.is_some());
    }

    #[tokio::test]
    async fn operations_still_running_are_polled_never_reissued() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        let op =
            Operation { url: "https://arm/op/1".into(), async_operation: true, resource: "role assignment x".into() };
        fake.fault(Some(ArmError::Pending { operation: op }));
        let d = want(&[(P1, "")]);
        let r = run(&fake, &mut state, d.clone()).await;
        assert!(matches!(r.stopped, Some((Stop::Pending(_), _))));
        assert_eq!(state.pending.len(), 1);
        fake.calls();
        // A later pass polls and, while it runs, does not PUT again.
        let r = run(&fake, &mut state, d.clone()).await;
        assert_eq!(fake.calls(), vec!["POLL role assignment x", "LIST definitions", "LIST assignments"]);
        let key = d.assignments.keys().next().unwrap();
        assert_eq!(r.assignment(key), AssignmentOutcome::InProgress);
        // Once it succeeds the assignment is there: no write, one copy.
        fake.state.lock().unwrap().done = true;
        let r = run(&fake, &mut state, d.clone()).await;
        assert_eq!(r.writes, 0);
        assert!(state.pending.is_empty());
        assert!(matches!(r.assignment(key), AssignmentOutcome::Applied { managed: true, .. }));
        assert_eq!(fake.state.lock().unwrap().assignments.len(), 1);
    }

    #[tokio::test]
    async fn principal_not_found_is_retried_per_assignment_while_others_apply() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        fake.fault(Some(ArmError::PrincipalNotFound { message: "principal does not exist".into() }));
        let d = want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]);
        let r = run(&fake, &mut state, d.clone()).await;
        assert!(r.stopped.is_none());
        let outcomes: Vec<AssignmentOutcome> = d.assignments.keys().map(|k| r.assignment(k)).collect();
        assert!(outcomes.iter().any(|o| matches!(o, AssignmentOutcome::PrincipalNotFound { attempts: 1, .. })));
        assert!(outcomes.iter().any(|o| matches!(o, AssignmentOutcome::Applied { .. })));
        assert_eq!(r.retry_after(), Some(principal_backoff(1)));
        let r = run(&fake, &mut state, d.clone()).await;
        assert!(d.assignments.keys().all(|k| matches!(r.assignment(k), AssignmentOutcome::Applied { .. })));
        assert!(state.principal_retries.is_empty());
    }

    #[tokio::test]
    async fn only_restoring_what_was_in_place_is_drift() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        let d = want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]);
        // The first application (a target that just turned Ready) writes
        // everything and corrects nothing.
        let first = run(&fake, &mut state, d.clone()).await;
        assert_eq!(first.writes, 2);
        assert!(first.drift_corrected().is_empty(), "{:?}", first.drift_corrected());
        let gone = fake.state.lock().unwrap().assignments.keys().next().cloned().unwrap();

        // Deleted out of band; the restore is throttled first: not done,
        // so not reported, but still drift when it goes through.
        fake.state.lock().unwrap().assignments.remove(&gone);
        let long = IN_PASS_WAIT + Duration::from_secs(1);
        fake.fault(Some(ArmError::Throttled { status: 429, retry_after: long, message: "slow".into() }));
        let held = run(&fake, &mut state, d.clone()).await;
        assert!(held.stopped.is_some());
        assert!(held.drift_corrected().is_empty());
        state.not_before = None; // the Retry-After has passed
        let restored = run(&fake, &mut state, d.clone()).await;
        let corrected = restored.drift_corrected();
        assert_eq!(corrected.len(), 1, "{corrected:?}");
        assert!(corrected[0].contains(&gone), "{corrected:?}");
        assert!(run(&fake, &mut state, d.clone()).await.drift_corrected().is_empty(), "steady state");

        // After a restart the record comes from status (the caller's
        // `previous`): what the bindings listed as in place is drift, the
        // rest a plain create.
        fake.state.lock().unwrap().assignments.clear();
        let mut seeded = d.clone();
        seeded.previous.assignments.insert(gone.clone());
        let mut fresh = AccountState::default();
        let r = run(&fake, &mut fresh, seeded).await;
        assert_eq!(r.writes, 2);
        assert_eq!(r.drift_corrected().len(), 1, "{:?}", r.drift_corrected());
    }

    #[tokio::test]
    async fn one_failing_delete_does_not_stop_the_other_revocations() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        run(&fake, &mut state, want(&[(P1, "/dbs/a"), (P2, "/dbs/a"), (P3, "/dbs/a")])).await;
        let (n1, n2, n3) =
            (reader_name(&fake, P1, "/dbs/a"), reader_name(&fake, P2, "/dbs/a"), reader_name(&fake, P3, "/dbs/a"));
        let boom = ArmError::Server { status: 500, code: "InternalServerError".into(), message: "boom".into() };
        fake.state.lock().unwrap().broken.insert(n2.clone(), boom);
        let r = run(&fake, &mut state, want(&[])).await;
        assert!(r.stopped.is_none(), "{:?}", r.stopped);
        assert_eq!((r.results.get(&n1), r.results.get(&n3)), (Some(&WriteResult::Done), Some(&WriteResult::Done)));
        assert!(matches!(r.results.get(&n2), Some(WriteResult::Failed(m)) if m.contains("boom")), "{:?}", r.results);
        assert_eq!(on_account(&fake), vec![n2.clone()]);
        // The report says which is stuck, and why; the others are confirmed.
        let left = r.left_behind(fake.account(), [n1.as_str(), n2.as_str(), n3.as_str()]).unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), [&n2]);
        assert!(left[&n2].contains("boom"), "{left:?}");
        assert_eq!(r.retry_after(), Some(retry_backoff(1)));
        // Still failing: backoff grows. Then fixed: deleted and confirmed.
        let r = run(&fake, &mut state, want(&[])).await;
        assert_eq!(r.retry_after(), Some(retry_backoff(2)));
        fake.state.lock().unwrap().broken.clear();
        let r = run(&fake, &mut state, want(&[])).await;
        assert!(r.left_behind(fake.account(), [n2.as_str()]).unwrap().is_empty());
        assert!(on_account(&fake).is_empty());
        assert!(state.failures.is_empty() && r.retry_after().is_none());
    }

    #[tokio::test]
    async fn a_refused_put_does_not_stop_another_bindings_put_and_delete() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        run(&fake, &mut state, want(&[(P3, "/dbs/a")])).await;
        let (n1, n2, n3) =
            (reader_name(&fake, P1, "/dbs/a"), reader_name(&fake, P2, "/dbs/a"), reader_name(&fake, P3, "/dbs/a"));
        let refused = ArmError::Rejected { status: 400, code: "BadRequest".into(), message: "invalid scope".into() };
        fake.state.lock().unwrap().broken.insert(n1.clone(), refused);
        // ns/bad wants P1 (refused), ns/b wants P2; nobody wants P3 now.
        let mut d = want(&[(P2, "/dbs/a")]);
        let bad = AssignmentKey {
            principal_id: P1.into(),
            role: RoleKey::BuiltIn(BuiltInCosmosRole::DataReader),
            scope: "/dbs/a".into(),
        };
        d.assignments.entry(bad.clone()).or_default().insert("ns/bad".into());
        fake.calls();
        let r = run(&fake, &mut state, d.clone()).await;
        assert!(r.stopped.is_none());
        let calls = fake.calls();
        assert_eq!(calls[2], format!("DELETE {n3}"), "revocations first: {calls:?}");
        assert!(calls.contains(&format!("PUT {n1}")) && calls.contains(&format!("PUT {n2}")), "{calls:?}");
        assert!(matches!(r.assignment(&bad), AssignmentOutcome::Rejected(m) if m.contains("invalid scope")));
        let good = d.assignments.keys().find(|k| k.principal_id == P2).unwrap();
        assert!(matches!(r.assignment(good), AssignmentOutcome::Applied { managed: true, .. }));
        assert!(r.left_behind(fake.account(), [n3.as_str()]).unwrap().is_empty());
        assert_eq!(on_account(&fake), vec![n2]);
        // A refused PUT is the binding's problem, not a reason to hurry.
        assert_eq!(r.retry_after(), None);
    }

    #[tokio::test]
    async fn only_failures_no_write_gets_past_end_the_pass() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        let (n1, n2) = (reader_name(&fake, P1, "/dbs/a"), reader_name(&fake, P2, "/dbs/a"));
        let d = want(&[(P1, "/dbs/a"), (P2, "/dbs/a")]);
        let per_object = [
            ArmError::Unauthorized { status: 403, code: "RequestDisallowedByPolicy".into(), message: "policy".into() },
            ArmError::Protocol("202 without Azure-AsyncOperation or Location".into()),
            ArmError::NotFound { code: "NotFound".into(), message: "role definition not found".into() },
        ];
        for e in per_object {
            fake.state.lock().unwrap().broken.insert(n1.clone(), e.clone());
            let r = run(&fake, &mut state, d.clone()).await;
            assert!(r.stopped.is_none(), "{e:?}");
            assert_eq!(r.results.get(&n2), Some(&WriteResult::Done), "{e:?}: the other write went");
            assert!(!matches!(r.results.get(&n1), Some(WriteResult::Done) | None), "{e:?}");
            fake.state.lock().unwrap().assignments.remove(&n2);
        }
        let account_wide = [
            ArmError::Unauthorized { status: 401, code: "InvalidAuthenticationToken".into(), message: "x".into() },
            ArmError::Credential("no token".into()),
            ArmError::Transport("connection refused".into()),
            ArmError::NotFound {
                code: "ResourceNotFound".into(),
                message:
                    "The Resource 'Microsoft.DocumentDB/databaseAccounts/acct' under resource group 'rg' was not found."
                        .into(),
            },
            ArmError::NotFound { code: "ParentResourceNotFound".into(), message: "parent".into() },
        ];
        for e in account_wide {
            fake.state.lock().unwrap().broken.insert(n1.clone(), e.clone());
            let got = sync(
                &fake,
                &mut state,
                d.clone(),
                &Limits::default(),
                &Metrics::default(),
                &discard_audit(),
                false,
                "t",
                None,
            )
            .await;
            assert_eq!(got.unwrap_err(), e);
        }
    }

    #[tokio::test]
    async fn revocations_are_written_first_and_retried_first_after_a_stop() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        run(&fake, &mut state, want(&[(P1, "/dbs/a")])).await;
        let (n1, n2) = (reader_name(&fake, P1, "/dbs/a"), reader_name(&fake, P2, "/dbs/a"));
        fake.fault(Some(ArmError::Locked { retry_after: Duration::from_secs(30), message: "busy".into() }));
        fake.calls();
        let r = run(&fake, &mut state, want(&[(P2, "/dbs/a")])).await;
        assert!(matches!(r.stopped, Some((Stop::Locked(_), _))), "{:?}", r.stopped);
        assert_eq!(fake.calls(), ["LIST definitions", "LIST assignments", &format!("DELETE {n1}")]);
        let left = r.left_behind(fake.account(), [n1.as_str()]).unwrap();
        assert!(left[&n1].contains("lock"), "{left:?}");
        state.not_before = None; // the Retry-After has passed
        run(&fake, &mut state, want(&[(P2, "/dbs/a")])).await;
        assert_eq!(
            fake.calls(),
            ["LIST definitions", "LIST assignments", &format!("DELETE {n1}"), &format!("PUT {n2}")]
        );
    }

    #[tokio::test]
    async fn a_pass_that_did_not_read_the_account_confirms_nothing() {
        let fake = Fake::new();
        let mut state = AccountState::default();
        run(&fake, &mut state, want(&[(P1, "/dbs/a")])).await;
        let n1 = reader_name(&fake, P1, "/dbs/a");
        state.not_before = Some(Instant::now() + Duration::from_secs(30));
        let r = run(&fake, &mut state, want(&[])).await;
        assert_eq!(r.left_behind(fake.account(), [n1.as_str()]), None);
        // An operation still running on a name counts as still there.
        state.not_before = None;
        let op = Operation { url: "https://arm/op/2".into(), async_operation: true, resource: n1.clone() };
        state.pending.insert(n1.clone(), op);
        fake.state.lock().unwrap().assignments.clear();
        let r = run(&fake, &mut state, want(&[])).await;
        assert!(r.left_behind(fake.account(), [n1.as_str()]).unwrap().contains_key(&n1));
    }

    #[test]
    fn budget_slides() {
        let mut b = WriteBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0 + Duration::from_secs(1)).is_ok());
        let wait = b.try_take(t0 + Duration::from_secs(2)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(8));
        assert!(b.try_take(t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn principal_backoff_grows_and_caps() {
        assert_eq!(principal_backoff(1), Duration::from_secs(15));
        assert_eq!(principal_backoff(2), Duration::from_secs(30));
        assert_eq!(principal_backoff(50), Duration::from_secs(600));
    }
}
