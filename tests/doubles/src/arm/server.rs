//! The HTTPS side: TLS (rustls, HTTP/1.1), hyper connections, and the
//! per-request pipeline (classification, latency, injected faults,
//! dispatch to Entra or ARM, logging).

use super::faults::FaultAction;
use super::journal::{RequestKind, RequestRecord};
use super::jwt::Signer;
use super::state::{State, lock};
use super::{entra, rp};
use crate::mongo::TestPki;
use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Immutable facts every request may need.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// `https://127.0.0.1:<port>`.
    pub base_url: String,
    pub tenant_id: String,
    pub signer: Signer,
}

impl Ctx {
    /// `iss` of access tokens.
    pub fn issuer(&self) -> String {
        format!("{}/{}/v2.0", self.base_url, self.tenant_id)
    }

    /// `iss` of federated (workload identity) tokens the double mints.
    pub fn oidc_issuer(&self) -> String {
        format!("{}/oidc", self.base_url)
    }
}

/// Everything the connections and the test handle share.
pub(crate) struct Shared {
    pub ctx: Ctx,
    pub state: Mutex<State>,
    pub refuse: AtomicBool,
    pub open_connections: AtomicUsize,
    pub kill: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
}

/// A request, body read.
#[derive(Debug)]
pub(crate) struct Req {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub params: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    /// First query parameter named `name` (case-insensitive name).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `https://<Host>` as the client addressed us, for absolute URLs in
    /// answers.
    pub fn base_url(&self, ctx: &Ctx) -> String {
        match self.header("host") {
            Some(host) if !host.is_empty() && !host.contains(['/', ' ']) => format!("https://{host}"),
            _ => ctx.base_url.clone(),
        }
    }
}

/// An answer plus what the log should say about it.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub error_code: Option<String>,
    pub principal: Option<String>,
    pub account: Option<String>,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Self {
        Self { status, body: Some(body.to_string().into_bytes()), ..Self::default() }
    }

    pub fn empty(status: u16) -> Self {
        Self { status, ..Self::default() }
    }

    /// An ARM error: `{"error": {"code", "message"}}`.
    pub fn arm_error(status: u16, code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut reply = Self::json(status, &json!({"error": {"code": code, "message": message}}));
        reply.error_code = Some(code.to_string());
        reply
    }

    /// An Entra error (`AADSTS<n>: description`).
    pub fn entra_error(ctx: &Ctx, status: u16, error: &str, aadsts: u32, description: &str) -> Self {
        let trace = super::new_guid();
        let correlation = super::new_guid();
        let now = jiff::Timestamp::now();
        let stamp = now.strftime("%Y-%m-%d %H:%M:%SZ").to_string();
        let body = json!({
            "error": error,
            "error_description": format!(
                "AADSTS{aadsts}: {description} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {stamp}"
            ),
            "error_codes": [aadsts],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("{}/error?code={aadsts}", ctx.base_url),
        });
        let mut reply = Self::json(status, &body);
        reply.error_code = Some(error.to_string());
        reply
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// Classifies a request before anything else happens to it.
pub(crate) fn classify(method: &str, path: &str) -> RequestKind {
    let lower = path.to_ascii_lowercase();
    if lower == "/msi/token" || lower == "/metadata/identity/oauth2/token" {
        RequestKind::ManagedIdentity
    } else if lower.ends_with("/oauth2/v2.0/token") || lower.ends_with("/oauth2/token") {
        RequestKind::Token
    } else if lower.ends_with("/.well-known/openid-configuration") || lower.ends_with("/keys") {
        RequestKind::Discovery
    } else if lower.starts_with("/subscriptions/") {
        if lower.contains("/operationsstatus/") || lower.contains("/operationresults/") {
            RequestKind::OperationPoll
        } else {
            match method {
                "GET" | "HEAD" => RequestKind::ArmRead,
                "PUT" | "DELETE" | "PATCH" | "POST" => RequestKind::ArmWrite,
                _ => RequestKind::Other,
            }
        }
    } else {
        RequestKind::Other
    }
}

/// Builds the acceptor: the PKI's server certificate, HTTP/1.1 by ALPN.
pub(crate) fn acceptor(pki: &TestPki) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing server certificate PEM")?;
    if certs.is_empty() {
        return Err(anyhow!("no server certificate in the PKI"));
    }
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).context("parsing server key PEM")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts connections until shutdown.
pub(crate) async fn run(listener: TcpListener, shared: Arc<Shared>, acceptor: TlsAcceptor) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.refuse.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tasks.spawn(async move {
            shared.open_connections.fetch_add(1, Ordering::SeqCst);
            serve_connection(shared.clone(), acceptor, tcp).await;
            shared.open_connections.fetch_sub(1, Ordering::SeqCst);
        });
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
}

async fn serve_connection(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) {
    let mut kill = shared.kill.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => return,
    };
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        async move { handle(shared, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        _ = conn => {}
        _ = kill.changed() => {}
        _ = stopped(&mut shutdown) => {}
    }
}

/// The error that makes hyper close a connection without answering.
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let query = parts.uri.query().map(str::to_string);
    let params = query
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default();
    let req = Req {
        method: parts.method.as_str().to_ascii_uppercase(),
        path: parts.uri.path().to_string(),
        query,
        params,
        headers: parts.headers,
        body,
    };
    let kind = classify(&req.method, &req.path);

    let latency = lock(&shared.state).config.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let mut state = lock(&shared.state);
    let mut injected = false;
    let reply = match state.faults.take(kind, &req.method, &req.path) {
        Some(FaultAction::Drop) => {
            record(&mut state, &req, kind, &Reply::empty(0), true);
            return Err(Dropped);
        }
        Some(FaultAction::Respond { status, code, message, retry_after }) => {
            injected = true;
            let mut reply = if matches!(kind, RequestKind::Token | RequestKind::ManagedIdentity) {
                let mut r = Reply::json(status, &json!({"error": code, "error_description": message}));
                r.error_code = Some(code);
                r
            } else {
                Reply::arm_error(status, &code, message)
            };
            if let Some(seconds) = retry_after {
                reply = reply.header("Retry-After", seconds.to_string());
            }
            reply
        }
        Some(FaultAction::FailOperation { code, message }) => {
            // The write goes through the resource provider as usual; the
            // operation it starts (if it starts one) takes this failure
            // before any queued with `fail_next_operations`.
            injected = true;
            let queued = state.operation_failures.len();
            state.operation_failures.push_front((code, message));
            let reply = dispatch(&mut state, &shared.ctx, &req, kind);
            if state.operation_failures.len() > queued {
                state.operation_failures.pop_front();
            }
            reply
        }
        None => dispatch(&mut state, &shared.ctx, &req, kind),
    };
    record(&mut state, &req, kind, &reply, injected);
    drop(state);
    Ok(into_response(reply, kind))
}

fn dispatch(state: &mut State, ctx: &Ctx, req: &Req, kind: RequestKind) -> Reply {
    match kind {
        RequestKind::Token => entra::token(state, ctx, req),
        RequestKind::ManagedIdentity => entra::managed_identity(state, ctx, req),
        RequestKind::Discovery => entra::discovery(ctx, req),
        RequestKind::ArmRead | RequestKind::ArmWrite | RequestKind::OperationPoll => rp::handle(state, ctx, req),
        RequestKind::Other => {
            Reply::arm_error(404, "NotFound", format!("The double serves no {} {}.", req.method, req.path))
        }
    }
}

fn record(state: &mut State, req: &Req, kind: RequestKind, reply: &Reply, injected: bool) {
    state.journal.push(RequestRecord {
        seq: 0,
        at: SystemTime::now(),
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        kind,
        status: reply.status,
        error_code: reply.error_code.clone(),
        principal: reply.principal.clone(),
        account: reply.account.clone(),
        injected,
    });
}

fn into_response(reply: Reply, kind: RequestKind) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let has_body = reply.body.is_some();
    let mut response = Response::new(Full::new(Bytes::from(reply.body.unwrap_or_default())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if has_body {
        headers.insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    }
    if kind.is_arm() {
        let id = super::new_guid();
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert("x-ms-request-id", v.clone());
            headers.insert("x-ms-correlation-request-id", v);
        }
    }
    headers.insert("cache-control", HeaderValue::from_static("no-store, no-cache"));
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            headers.append(n, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify("POST", "/t/oauth2/v2.0/token"), RequestKind::Token);
        assert_eq!(classify("GET", "/msi/token"), RequestKind::ManagedIdentity);
        assert_eq!(classify("GET", "/metadata/identity/oauth2/token"), RequestKind::ManagedIdentity);
        assert_eq!(classify("GET", "/t/v2.0/.well-known/openid-configuration"), RequestKind::Discovery);
        assert_eq!(classify("GET", "/subscriptions/s/resourceGroups/r"), RequestKind::ArmRead);
        assert_eq!(classify("PUT", "/subscriptions/s/x/sqlRoleAssignments/a"), RequestKind::ArmWrite);
        assert_eq!(
            classify("GET", "/subscriptions/s/providers/Microsoft.DocumentDB/locations/westus/operationsStatus/o"),
            RequestKind::OperationPoll
        );
        assert_eq!(classify("GET", "/nope"), RequestKind::Other);
    }

    #[test]
    fn acceptor_from_generated_pki() {
        acceptor(&TestPki::generate().unwrap()).unwrap();
    }
}
