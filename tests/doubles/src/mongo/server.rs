//! The TCP side: accept loop, one task per connection, and the per-command
//! pipeline (latency, injected faults, the server-wide user-management lock,
//! execution, logging, reply).

use super::commands::{self, ServerInfo, Session};
use super::data::DocumentStore;
use super::error::{CommandError, codes};
use super::faults::{FaultAction, Faults};
use super::journal::{CommandKind, CommandRecord, Journal, Outcome};
use super::state::AuthzStore;
use super::wire::{self, Request};
use bson::Document;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Everything the connections and the test handle share.
pub(crate) struct Shared {
    pub(crate) info: ServerInfo,
    pub(crate) store: Mutex<AuthzStore>,
    pub(crate) documents: Mutex<DocumentStore>,
    pub(crate) journal: Mutex<Journal>,
    pub(crate) faults: Mutex<Faults>,
    /// Close new connections as soon as they are accepted.
    pub(crate) refuse: AtomicBool,
    pub(crate) open_connections: AtomicUsize,
    pub(crate) inflight_writes: AtomicUsize,
    pub(crate) max_inflight_writes: AtomicUsize,
    /// Bumped to close every open connection.
    pub(crate) kill: watch::Sender<u64>,
    /// Set once to stop the server.
    pub(crate) shutdown: watch::Sender<bool>,
    next_connection_id: AtomicI64,
    next_request_id: AtomicI32,
    /// The server-wide lock every user-management command takes.
    umc_lock: tokio::sync::Mutex<()>,
}

/// Locks a std mutex, ignoring poisoning (a panicking test thread must not
/// wedge the server).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(info: ServerInfo, faults: Faults) -> Self {
        Self {
            info,
            store: Mutex::new(AuthzStore::default()),
            documents: Mutex::new(DocumentStore::default()),
            journal: Mutex::new(Journal::default()),
            faults: Mutex::new(faults),
            refuse: AtomicBool::new(false),
            open_connections: AtomicUsize::new(0),
            inflight_writes: AtomicUsize::new(0),
            max_inflight_writes: AtomicUsize::new(0),
            kill: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            next_connection_id: AtomicI64::new(1),
            next_request_id: AtomicI32::new(1),
            umc_lock: tokio::sync::Mutex::new(()),
        }
    }
}

/// Resolves once shutdown has been requested. (The guard `wait_for`
/// returns is not `Send`, so it must not outlive this function.)
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts connections until shutdown, then waits for them to finish.
pub(crate) async fn run(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "mongo double: accept failed");
                        // Avoid spinning on persistent errors such as EMFILE.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if shared.refuse.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                tasks.spawn(serve(stream, shared.clone(), tls.clone()));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Decrements the open-connection count when a connection ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    let connection_id = shared.next_connection_id.fetch_add(1, Ordering::SeqCst);
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    let _guard = OpenGuard(shared.clone());
    let mut kill = shared.kill.subscribe();
    kill.mark_unchanged();
    let mut shutdown = shared.shutdown.subscribe();
    match tls {
        None => connection(stream, &shared, connection_id, kill, shutdown).await,
        Some(acceptor) => {
            let accepted = tokio::select! {
                r = acceptor.accept(stream) => r,
                _ = kill.changed() => return,
                _ = stopped(&mut shutdown) => return,
            };
            match accepted {
                Ok(stream) => connection(stream, &shared, connection_id, kill, shutdown).await,
                Err(e) => tracing::debug!(error = %e, "mongo double: TLS handshake failed"),
            }
        }
    }
}

/// What to do after a request.
enum After {
    Write(Vec<u8>),
    Nothing,
    Close,
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    shared: &Shared,
    connection_id: i64,
    mut kill: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut session = Session::new(connection_id);
    loop {
        let read = tokio::select! {
            r = wire::read_request(&mut stream) => r,
            _ = kill.changed() => return,
            _ = stopped(&mut shutdown) => return,
        };
        let request = match read {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, connection_id, "mongo double: closing connection");
                return;
            }
        };
        let after = tokio::select! {
            a = handle(shared, &mut session, request) => a,
            _ = kill.changed() => return,
            _ = stopped(&mut shutdown) => return,
        };
        match after {
            After::Write(bytes) => {
                if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
            After::Nothing => {}
            After::Close => {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

async fn handle(shared: &Shared, session: &mut Session, request: Request) -> After {
    let request_id = shared.next_request_id.fetch_add(1, Ordering::SeqCst);
    match request {
        Request::Msg { request_id: response_to, more_to_come, body } => {
            let db = body.get_str("$db").ok().map(str::to_string);
            match command(shared, session, body, db, more_to_come).await {
                None => After::Close,
                Some(_) if more_to_come => After::Nothing,
                Some(reply) => match wire::encode_msg_reply(request_id, response_to, &reply) {
                    Ok(bytes) => After::Write(bytes),
                    Err(_) => After::Close,
                },
            }
        }
        Request::Query { request_id: response_to, db, mut query } => {
            if let Ok(inner) = query.get_document("$query") {
                query = inner.clone();
            }
            let name = query.keys().next().cloned().unwrap_or_default();
            let reply = match db {
                Some(db) if CommandKind::of(&name) == CommandKind::Handshake => {
                    command(shared, session, query, Some(db), false).await
                }
                _ => Some(
                    CommandError::new(
                        codes::UNSUPPORTED_OP_QUERY_COMMAND,
                        format!("Unsupported OP_QUERY command: {name}. The client driver may require an upgrade."),
                    )
                    .to_document(),
                ),
            };
            match reply.map(|r| wire::encode_op_reply(request_id, response_to, &r)) {
                Some(Ok(bytes)) => After::Write(bytes),
                _ => After::Close,
            }
        }
    }
}

/// Counts a user-management write as in flight while it lives.
struct InflightWrite<'a>(&'a Shared);

impl<'a> InflightWrite<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.inflight_writes.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_inflight_writes.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InflightWrite<'_> {
    fn drop(&mut self) {
        self.0.inflight_writes.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs one command through the pipeline. `None` means "close the
/// connection without replying" (an injected drop).
async fn command(
    shared: &Shared,
    session: &mut Session,
    body: Document,
    db: Option<String>,
    no_reply: bool,
) -> Option<Document> {
    let name = body.keys().next().cloned().unwrap_or_default();
    let kind = CommandKind::of(&name);
    let _inflight = (kind == CommandKind::UserManagementWrite).then(|| InflightWrite::new(shared));
    let user = session.identity.as_ref().map(|id| format!("{}@{}", id.user, id.db));
    let (delay, fault) = {
        let mut faults = lock(&shared.faults);
        (faults.delay_for(&name), faults.take(&name, kind))
    };
    let _umc_guard = if kind.is_user_management() { Some(shared.umc_lock.lock().await) } else { None };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut execute = || match &db {
        Some(db) => commands::execute(&shared.info, &shared.store, &shared.documents, session, &name, db, &body),
        None => Err(CommandError::new(codes::MISSING_DB, "OP_MSG requests require a $db argument")),
    };
    let injected = fault.is_some();
    let (reply, outcome) = match fault {
        Some(FaultAction::DropBeforeApply) => (None, Outcome::Dropped { applied: false }),
        Some(FaultAction::DropAfterApply) => {
            let _ = execute();
            (None, Outcome::Dropped { applied: true })
        }
        Some(FaultAction::Fail { code, message }) => reply_for(Err(CommandError::new(code, message)), no_reply),
        None => reply_for(execute(), no_reply),
    };
    // OIDC tokens are bearer secrets: the log keeps the command, not the token.
    let body = if kind == CommandKind::Auth || kind == CommandKind::Handshake {
        super::oidc::redact_for_log(&name, body)
    } else {
        body
    };
    lock(&shared.journal).push(CommandRecord {
        seq: 0,
        connection_id: session.connection_id,
        name,
        db: db.unwrap_or_default(),
        body,
        kind,
        is_write: kind.is_write(),
        user,
        outcome,
        injected,
    });
    reply
}

/// The reply document and log outcome for a command result.
fn reply_for(result: Result<Document, CommandError>, no_reply: bool) -> (Option<Document>, Outcome) {
    match result {
        Ok(mut doc) => {
            doc.insert("ok", 1.0);
            (Some(doc), if no_reply { Outcome::NoReply } else { Outcome::Ok })
        }
        Err(e) => {
            let outcome = if no_reply { Outcome::NoReply } else { Outcome::Failed { code: e.code } };
            (Some(e.to_document()), outcome)
        }
    }
}
