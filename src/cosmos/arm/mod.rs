//! A small typed Azure Resource Manager client for one Cosmos DB account:
//! GET the account, and GET/PUT/DELETE/LIST `sqlRoleDefinitions` and
//! `sqlRoleAssignments`, on `azure_core`'s HTTP pipeline.
//!
//! ```text
//!   request ─▶ retry (408/500/502/504, transport errors)
//!           ─▶ BearerTokenAuthorizationPolicy (<armAudience>/.default)
//!           ─▶ transport (reqwest + rustls, extra CA roots)
//!   answer  ─▶ 2xx: done, or 202 ─▶ poll Azure-AsyncOperation / Location
//!           ─▶ 429/503/412: wait inline if Retry-After is short, else a
//!              typed error the controller turns into a requeue
//! ```
//!
//! Long-running operations are polled for a bounded time; when that runs
//! out the caller gets [`ArmError::Pending`] with the operation URL and
//! polls it later instead of writing again.

pub mod error;
pub mod lro;
pub mod pacing;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use azure_core::{
    credentials::TokenCredential,
    http::{
        ClientOptions, Context, ExponentialRetryOptions, Method, Pipeline, PipelineOptions, PipelineSendOptions,
        RawResponse, Request, RetryOptions, StatusCode, Transport, Url,
        headers::{CLIENT_REQUEST_ID, HeaderName, Headers, RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS},
        policies::{Policy, RetryHeaders, auth::BearerTokenAuthorizationPolicy},
    },
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use self::{
    error::{ArmError, Operation},
    lro::OperationState,
};
use crate::plan::cosmos::{AccountRef, ActualAssignment, ActualDefinition};

const AZURE_ASYNC_OPERATION: HeaderName = HeaderName::from_static("azure-asyncoperation");
const LOCATION: HeaderName = HeaderName::from_static("location");
const REMAINING_WRITES: HeaderName = HeaderName::from_static("x-ms-ratelimit-remaining-subscription-writes");
const REMAINING_READS: HeaderName = HeaderName::from_static("x-ms-ratelimit-remaining-subscription-reads");

/// Tunables of the client.
#[derive(Clone, Debug)]
pub struct ArmSettings {
    /// `Microsoft.DocumentDB` api-version.
    pub api_version: String,
    /// How long one write may poll its long-running operation before
    /// returning [`ArmError::Pending`].
    pub lro_budget: Duration,
    /// How long one call may wait inline for 429/503/412 answers before
    /// returning the typed error.
    pub inline_wait_budget: Duration,
    /// Retries of 408/5xx and transport errors inside the pipeline.
    pub max_retries: u32,
    /// The principal's ARM write bucket, shared with every other client
    /// of the same identity in the subscription; writes wait for it.
    pub write_bucket: Option<Arc<pacing::Bucket>>,
    /// The same for reads (lists, GETs and operation polls).
    pub read_bucket: Option<Arc<pacing::Bucket>>,
}

impl Default for ArmSettings {
    fn default() -> Self {
        Self {
            api_version: crate::api::DEFAULT_API_VERSION.into(),
            lro_budget: Duration::from_secs(60),
            inline_wait_budget: Duration::from_secs(10),
            max_retries: 3,
            write_bucket: None,
            read_bucket: None,
        }
    }
}

/// A role assignment to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignmentBody {
    /// Principal object id.
    pub principal_id: String,
    /// Fully qualified role definition id.
    pub role_definition_id: String,
    /// Fully qualified scope.
    pub scope: String,
}

/// A custom role definition to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionBody {
    pub role_name: String,
    pub data_actions: Vec<String>,
    /// Fully qualified assignable scopes.
    pub assignable_scopes: Vec<String>,
}

/// What the operator needs from ARM for one account. Implemented by
/// [`ArmClient`]; a trait so the sync logic is testable without sockets.
#[async_trait]
pub trait ArmApi: Send + Sync {
    /// The account this client manages.
    fn account(&self) -> &AccountRef;
    /// GET the account; returns its ARM id.
    async fn get_account(&self) -> Result<String, ArmError>;
    /// LIST every role definition (built-in and custom).
    async fn list_definitions(&self) -> Result<Vec<ActualDefinition>, ArmError>;
    /// LIST every role assignment.
    async fn list_assignments(&self) -> Result<Vec<ActualAssignment>, ArmError>;
    /// PUT a custom role definition.
    async fn put_definition(&self, name: &str, body: &DefinitionBody) -> Result<(), ArmError>;
    /// DELETE a role definition; absent is success.
    async fn delete_definition(&self, name: &str) -> Result<(), ArmError>;
    /// PUT a role assignment.
    async fn put_assignment(&self, name: &str, body: &AssignmentBody) -> Result<(), ArmError>;
    /// DELETE a role assignment; absent is success.
    async fn delete_assignment(&self, name: &str) -> Result<(), ArmError>;
    /// Poll a long-running operation once.
    async fn poll(&self, operation: &Operation) -> Result<OperationState, ArmError>;
}

/// The typed ARM client.
#[derive(Debug, Clone)]
pub struct ArmClient {
    pipeline: Pipeline,
    endpoint: Url,
    account: AccountRef,
    settings: ArmSettings,
}

/// The token scope for an ARM audience: `<audience>/.default`.
pub fn token_scope(audience: &str) -> String {
    format!("{}/.default", audience.trim_end_matches('/'))
}

impl ArmClient {
    /// A client for `account` at `endpoint` (https), authenticating with
    /// `credential` for `audience`, over `transport`.
    pub fn new(
        credential: Arc<dyn TokenCredential>,
        transport: Transport,
        endpoint: &str,
        audience: &str,
        account: AccountRef,
        settings: ArmSettings,
    ) -> Result<Self, ArmError> {
        let endpoint = Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| ArmError::Protocol(format!("ARM endpoint {endpoint:?} is not a URL: {e}")))?;
        if endpoint.scheme() != "https" {
            return Err(ArmError::Protocol(format!("ARM endpoint {endpoint} must use https")));
        }
        let auth: Arc<dyn Policy> = Arc::new(BearerTokenAuthorizationPolicy::new(credential, [token_scope(audience)]));
        let options = ClientOptions {
            transport: Some(transport),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(500),
                max_retries: settings.max_retries,
                max_total_elapsed: azure_core::time::Duration::seconds(30),
                max_delay: azure_core::time::Duration::seconds(8),
            }),
            ..Default::default()
        };
        // 429 and 503 are not retried inside the pipeline: their Retry-After
        // can be minutes, which the controller honours with a requeue.
        let pipeline_options = PipelineOptions {
            retry_headers: RetryHeaders { retry_headers: vec![X_MS_RETRY_AFTER_MS, RETRY_AFTER_MS, RETRY_AFTER] },
            retry_status_codes: vec![
                StatusCode::RequestTimeout,
                StatusCode::InternalServerError,
                StatusCode::BadGateway,
                StatusCode::GatewayTimeout,
            ],
        };
        let pipeline = Pipeline::new(
            Some("dbgrant"),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            vec![auth],
            Some(pipeline_options),
        );
        Ok(Self { pipeline, endpoint, account, settings })
    }

    fn url(&self, path: &str) -> Result<Url, ArmError> {
        let mut url = self.endpoint.clone();
        url.set_path(path);
        url.query_pairs_mut().clear().append_pair("api-version", &self.settings.api_version);
        Ok(url)
    }

    /// `url` (a `what`), parsed, if it is on the ARM endpoint: the bearer
    /// token goes wherever dbgrant pages or polls, so only ever to ARM itself.
    fn arm_url(&self, url: &str, what: &str) -> Result<Url, ArmError> {
        let url = Url::parse(url).map_err(|_| ArmError::Protocol(format!("{what} is not a URL")))?;
        if url.scheme() != "https"
            || url.host_str().map(str::to_ascii_lowercase) != self.endpoint.host_str().map(str::to_ascii_lowercase)
            || url.port_or_known_default() != self.endpoint.port_or_known_default()
        {
            return Err(ArmError::Protocol(format!("{what} points outside the ARM endpoint")));
        }
        Ok(url)
    }

    async fn send_once(&self, method: Method, url: Url, body: Option<&[u8]>) -> Result<RawResponse, ArmError> {
        let mut request = Request::new(url, method);
        request.insert_header("accept", "application/json");
        // azure_core's ClientRequestIdPolicy adds this header when it is
        // missing, after looking for it with `get_optional_str` (see
        // [`header`]); set here, ARM gets the same kind of id and the
        // policy finds it at once.
        request.insert_header(CLIENT_REQUEST_ID, uuid::Uuid::new_v4().to_string());
        if let Some(body) = body {
            request.insert_header("content-type", "application/json");
            request.set_body(body.to_vec());
        }
        let options = PipelineSendOptions { skip_checks: true, ..Default::default() };
        self.pipeline.send(&Context::new(), &mut request, Some(options)).await.map_err(core_error)
    }

    /// Send once, paced by the principal's bucket for `method` (see
    /// [`pacing`]): wait for a token, then let ARM's answer correct the
    /// count, and a 429 of that bucket close it until its Retry-After (a
    /// 429 while requests are left in it is another limit's, such as the
    /// account's own write budget, and leaves the bucket open).
    async fn paced_send(&self, method: Method, url: Url, body: Option<&[u8]>) -> Result<RawResponse, ArmError> {
        let (bucket, remaining_header) = match method {
            Method::Get => (self.settings.read_bucket.as_deref(), &REMAINING_READS),
            _ => (self.settings.write_bucket.as_deref(), &REMAINING_WRITES),
        };
        let Some(bucket) = bucket else { return self.send_once(method, url, body).await };
        bucket.take().await;
        let response = self.send_once(method, url, body).await?;
        let now = tokio::time::Instant::now();
        let remaining: Option<u64> = header(response.headers(), remaining_header).and_then(|v| v.trim().parse().ok());
        if let Some(n) = remaining {
            bucket.remaining(n, now);
        }
        if u16::from(response.status()) == 429 && remaining.is_none_or(|n| n == 0) {
            bucket.throttled(retry_after(&response).unwrap_or(error::DEFAULT_THROTTLE_WAIT), now);
        }
        Ok(response)
    }

    /// Send, waiting inline for short throttling/lock answers. Returns the
    /// successful (2xx) response.
    async fn call(&self, method: Method, url: Url, body: Option<&[u8]>) -> Result<RawResponse, ArmError> {
        let deadline = Instant::now() + self.settings.inline_wait_budget;
        loop {
            let response = self.paced_send(method, url.clone(), body).await?;
            let status = u16::from(response.status());
            if (200..300).contains(&status) {
                return Ok(response);
            }
            let error = error::classify(status, retry_after(&response), response.body().as_ref());
            match error.retry_after() {
                Some(wait) if Instant::now() + wait <= deadline => {
                    tracing::debug!(%status, wait_ms = wait.as_millis() as u64, "azure asked to wait; retrying");
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(error),
            }
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, url: Url) -> Result<T, ArmError> {
        let response = self.call(Method::Get, url, None).await?;
        serde_json::from_slice(response.body().as_ref())
            .map_err(|e| ArmError::Protocol(format!("cannot read the response: {e}")))
    }

    async fn list<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<Vec<T>, ArmError> {
        let mut url = self.url(path)?;
        let mut out = Vec::new();
        // The API does not page today; follow nextLink anyway, bounded.
        for _ in 0..100 {
            let page: ListPage<T> = self.get_json(url).await?;
            out.extend(page.value);
            match page.next_link {
                Some(next) if !next.is_empty() => url = self.arm_url(&next, "nextLink")?,
                _ => return Ok(out),
            }
        }
        Err(ArmError::Protocol("more than 100 pages in a list".into()))
    }

    /// PUT or DELETE, following a long-running operation.
    async fn write(&self, method: Method, path: &str, body: Option<&[u8]>, resource: String) -> Result<(), ArmError> {
        let url = self.url(path)?;
        let response = match self.call(method, url, body).await {
            Err(ArmError::NotFound { .. }) if method == Method::Delete => return Ok(()),
            other => other?,
        };
        if response.status() != StatusCode::Accepted {
            return Ok(());
        }
        let operation = self.operation(&response, resource)?;
        self.wait(operation, retry_after(&response)).await
    }

    fn operation(&self, response: &RawResponse, resource: String) -> Result<Operation, ArmError> {
        let headers = response.headers();
        let (url, async_operation) = match (header(headers, &AZURE_ASYNC_OPERATION), header(headers, &LOCATION)) {
            (Some(u), _) => (u, true),
            (None, Some(u)) => (u, false),
            (None, None) => {
                return Err(ArmError::Protocol(format!("202 for {resource} without Azure-AsyncOperation or Location")));
            }
        };
        self.arm_url(url, &format!("operation URL for {resource}"))?;
        Ok(Operation { url: url.to_string(), async_operation, resource })
    }

    /// Poll `operation` until it finishes or the budget runs out.
    pub async fn wait(&self, operation: Operation, first: Option<Duration>) -> Result<(), ArmError> {
        let start = Instant::now();
        let mut hint = first;
        let mut attempt = 0;
        loop {
            let left = self.settings.lro_budget.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(ArmError::Pending { operation });
            }
            tokio::time::sleep(lro::next_wait(hint, attempt, left)).await;
            attempt += 1;
            match self.poll_once(&operation).await {
                Ok((OperationState::Succeeded, _)) => return Ok(()),
                Ok((OperationState::Failed(e), _)) => return Err(e),
                Ok((OperationState::Running, next)) => hint = next,
                Err(e) if e.is_transient() => hint = e.retry_after(),
                Err(e) => return Err(e),
            }
        }
    }

    async fn poll_once(&self, operation: &Operation) -> Result<(OperationState, Option<Duration>), ArmError> {
        let url = self.arm_url(&operation.url, "operation URL")?;
        let response = self.paced_send(Method::Get, url, None).await?;
        let status = u16::from(response.status());
        let hint = retry_after(&response);
        if operation.async_operation {
            return match status {
                200..=299 => Ok((lro::parse_status(response.body().as_ref())?, hint)),
                404 => Ok((
                    OperationState::Failed(ArmError::NotFound {
                        code: "OperationNotFound".into(),
                        message: format!("the operation on {} is no longer known", operation.resource),
                    }),
                    None,
                )),
                _ => Err(error::classify(status, hint, response.body().as_ref())),
            };
        }
        match status {
            202 => Ok((OperationState::Running, hint)),
            200..=299 => Ok((OperationState::Succeeded, None)),
            429 | 503 | 412 | 500..=599 => Err(error::classify(status, hint, response.body().as_ref())),
            _ => Ok((OperationState::Failed(error::classify(status, hint, response.body().as_ref())), None)),
        }
    }

    fn assignment_path(&self, name: &str) -> String {
        format!("{}/sqlRoleAssignments/{name}", self.account.id())
    }

    fn definition_path(&self, name: &str) -> String {
        format!("{}/sqlRoleDefinitions/{name}", self.account.id())
    }
}

#[async_trait]
impl ArmApi for ArmClient {
    fn account(&self) -> &AccountRef {
        &self.account
    }

    async fn get_account(&self) -> Result<String, ArmError> {
        let url = self.url(self.account.id())?;
        let account: AccountResource = self.get_json(url).await?;
        Ok(account.id.unwrap_or_else(|| self.account.id().to_string()))
    }

    async fn list_definitions(&self) -> Result<Vec<ActualDefinition>, ArmError> {
        let list: Vec<DefinitionResource> = self.list(&format!("{}/sqlRoleDefinitions", self.account.id())).await?;
        Ok(list.into_iter().map(DefinitionResource::into_actual).collect())
    }

    async fn list_assignments(&self) -> Result<Vec<ActualAssignment>, ArmError> {
        let list: Vec<AssignmentResource> = self.list(&format!("{}/sqlRoleAssignments", self.account.id())).await?;
        Ok(list.into_iter().map(AssignmentResource::into_actual).collect())
    }

    async fn put_definition(&self, name: &str, body: &DefinitionBody) -> Result<(), ArmError> {
        let json = json!({
            "properties": {
                "roleName": body.role_name,
                "type": "CustomRole",
                "assignableScopes": body.assignable_scopes,
                "permissions": [ { "dataActions": body.data_actions } ],
            }
        });
        let bytes = json.to_string().into_bytes();
        self.write(Method::Put, &self.definition_path(name), Some(&bytes), format!("role definition {name}")).await
    }

    async fn delete_definition(&self, name: &str) -> Result<(), ArmError> {
        self.write(Method::Delete, &self.definition_path(name), None, format!("role definition {name}")).await
    }

    async fn put_assignment(&self, name: &str, body: &AssignmentBody) -> Result<(), ArmError> {
        let json = json!({
            "properties": {
                "roleDefinitionId": body.role_definition_id,
                "scope": body.scope,
                "principalId": body.principal_id,
            }
        });
        let bytes = json.to_string().into_bytes();
        self.write(Method::Put, &self.assignment_path(name), Some(&bytes), format!("role assignment {name}")).await
    }

    async fn delete_assignment(&self, name: &str) -> Result<(), ArmError> {
        self.write(Method::Delete, &self.assignment_path(name), None, format!("role assignment {name}")).await
    }

    async fn poll(&self, operation: &Operation) -> Result<OperationState, ArmError> {
        self.poll_once(operation).await.map(|(s, _)| s)
    }
}

fn retry_after(response: &RawResponse) -> Option<Duration> {
    let h = response.headers();
    let ms = header(h, &X_MS_RETRY_AFTER_MS).or_else(|| header(h, &RETRY_AFTER_MS));
    error::parse_retry_after(header(h, &RETRY_AFTER), ms)
}

/// A header's value, if it is there.
///
/// Not `Headers::get_optional_str`: that builds an error for every absent
/// header and drops it, and with `RUST_BACKTRACE` set the error captures a
/// backtrace — a full unwind, about a millisecond on the static musl
/// binary. Most answers lack most of the headers asked for (Retry-After,
/// `Azure-AsyncOperation` on a poll), and at 10,000 bindings those
/// unwinds were over half the operator's CPU (perf, docs/benchmarks.md).
fn header<'a>(headers: &'a Headers, name: &HeaderName) -> Option<&'a str> {
    headers.get_optional_with(name, |v| Ok::<_, std::convert::Infallible>(v.as_str())).ok().flatten()
}

/// Map a pipeline error (no HTTP answer) to a typed error. The credential's
/// message is Entra's description (AADSTS code and text), which names the
/// application, never its secret.
fn core_error(e: azure_core::Error) -> ArmError {
    use azure_core::error::ErrorKind;
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    let message = error::sanitize(&message);
    match e.kind() {
        ErrorKind::Credential => ArmError::Credential(message),
        ErrorKind::Io | ErrorKind::Connection => ArmError::Transport(message),
        _ if message.contains("authentication failed") => ArmError::Credential(message),
        _ => ArmError::Transport(message),
    }
}

#[derive(Deserialize)]
struct ListPage<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(default, rename = "nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct AccountResource {
    id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AssignmentResource {
    id: String,
    name: String,
    properties: AssignmentProperties,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AssignmentProperties {
    role_definition_id: String,
    scope: String,
    principal_id: String,
}

impl AssignmentResource {
    fn into_actual(self) -> ActualAssignment {
        let name = if self.name.is_empty() { last_segment(&self.id) } else { self.name };
        ActualAssignment {
            name,
            principal_id: self.properties.principal_id,
            role_definition_id: self.properties.role_definition_id,
            scope: self.properties.scope,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DefinitionResource {
    id: String,
    name: String,
    properties: DefinitionProperties,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct DefinitionProperties {
    role_name: String,
    #[serde(rename = "type")]
    type_: String,
    assignable_scopes: Vec<String>,
    permissions: Vec<Permission>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Permission {
    data_actions: Vec<String>,
}

impl DefinitionResource {
    fn into_actual(self) -> ActualDefinition {
        let name = if self.name.is_empty() { last_segment(&self.id) } else { self.name };
        ActualDefinition {
            name,
            role_name: self.properties.role_name,
            built_in: self.properties.type_.eq_ignore_ascii_case("BuiltInRole"),
            data_actions: self.properties.permissions.into_iter().flat_map(|p| p.data_actions).collect(),
            assignable_scopes: self.properties.assignable_scopes,
        }
    }
}

fn last_segment(id: &str) -> String {
    id.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reads_a_present_header_and_none_for_an_absent_one() {
        let mut h = Headers::new();
        h.insert(RETRY_AFTER, "7");
        h.insert(AZURE_ASYNC_OPERATION, "https://management.azure.com/op");
        assert_eq!(header(&h, &RETRY_AFTER), Some("7"));
        assert_eq!(header(&h, &AZURE_ASYNC_OPERATION), Some("https://management.azure.com/op"));
        assert_eq!(header(&h, &LOCATION), None);
        assert_eq!(header(&h, &HeaderName::from_static("retry-after")), Some("7"));
    }

    #[test]
    fn list_bodies_parse_with_missing_fields_tolerated() {
        let body = br#"{"value":[
            {"id":"/subscriptions/s/x/sqlRoleAssignments/a1","name":"a1","properties":{"roleDefinitionId":"d","scope":"s","principalId":"p"}},
            {"id":"/subscriptions/s/x/sqlRoleAssignments/a2","properties":{}}
        ]}"#;
        let page: ListPage<AssignmentResource> = serde_json::from_slice(body).unwrap();
        let list: Vec<ActualAssignment> = page.value.into_iter().map(AssignmentResource::into_actual).collect();
        assert_eq!(list[0].principal_id, "p");
        assert_eq!(list[1].name, "a2");

        let defs = br#"{"value":[{"name":"00000000-0000-0000-0000-000000000001","properties":{"roleName":"Cosmos DB Built-in Data Reader","type":"BuiltInRole","assignableScopes":["/"],"permissions":[{"dataActions":["a","b"],"notDataActions":[]}]}}]}"#;
        let page: ListPage<DefinitionResource> = serde_json::from_slice(defs).unwrap();
        let d = page.value.into_iter().next().unwrap().into_actual();
        assert!(d.built_in);
        assert_eq!(d.data_actions, vec!["a", "b"]);
    }

    #[test]
    fn token_scope_from_audience() {
        assert_eq!(token_scope("https://management.azure.com/"), "https://management.azure.com/.default");
        assert_eq!(token_scope("https://127.0.0.1:8443"), "https://127.0.0.1:8443/.default");
    }
}
