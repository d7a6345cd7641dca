//! Typed ARM failures, classified from status, headers and the error body.
//!
//! Messages carry ARM's own `code` and `message` (which name resources and
//! principals, never credentials), truncated; request bodies, headers and
//! tokens never enter an error.

use std::time::Duration;

use serde::Deserialize;

/// Default wait after a throttling answer without `Retry-After`.
pub const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(10);
/// Default wait after a 412 without `Retry-After`.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);
/// Longest error message kept from a response.
const MAX_MESSAGE: usize = 400;

/// A long-running operation to poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// URL to poll (`Azure-AsyncOperation`, else `Location`).
    pub url: String,
    /// Whether `url` came from `Azure-AsyncOperation` (a status body) or
    /// `Location` (202 until done).
    pub async_operation: bool,
    /// What the operation writes, for messages.
    pub resource: String,
}

/// Why an ARM call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    /// No token: the credential is misconfigured or Entra refused it.
    #[error("no token from Microsoft Entra ID: {0}")]
    Credential(String),
    /// 429 (or 503): ARM is throttling; try again after the wait.
    #[error("throttled by Azure Resource Manager (HTTP {status}); retrying after {}s: {message}", retry_after.as_secs())]
    Throttled {
        /// 429 or 503.
        status: u16,
        /// How long to wait.
        retry_after: Duration,
        /// ARM's message.
        message: String,
    },
    /// 412 (or 409 `AnotherOperationInProgress`): another write holds the
    /// account's lock.
    #[error("another operation is in progress on the account; retrying after {}s: {message}", retry_after.as_secs())]
    Locked {
        /// How long to wait.
        retry_after: Duration,
        /// ARM's message.
        message: String,
    },
    /// 400: the principal is not (yet) known to Entra ID; usually
    /// replication delay right after an identity is created.
    #[error("principal not found in Microsoft Entra ID (new identities can take minutes to replicate): {message}")]
    PrincipalNotFound {
        /// ARM's message.
        message: String,
    },
    /// 401/403: the operator's identity may not do this.
    #[error("not authorised (HTTP {status} {code}): {message}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// ARM's code.
        code: String,
        /// ARM's message.
        message: String,
    },
    /// 404.
    #[error("not found ({code}): {message}")]
    NotFound {
        /// ARM's code.
        code: String,
        /// ARM's message.
        message: String,
    },
    /// An account limit (assignments, definitions, quota) was reached.
    #[error("account limit reached ({code}): {message}")]
    LimitExceeded {
        /// ARM's code.
        code: String,
        /// ARM's message.
        message: String,
    },
    /// ARM refused the request (400, 409, ...).
    #[error("rejected (HTTP {status} {code}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// ARM's code.
        code: String,
        /// ARM's message.
        message: String,
    },
    /// A long-running operation did not finish in the time allowed; poll
    /// it later instead of writing again.
    #[error("azure operation on {} still running", operation.resource)]
    Pending { operation: Operation },
    /// The server failed (5xx after the pipeline's retries).
    #[error("azure resource manager failed (HTTP {status} {code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// ARM's code.
        code: String,
        /// ARM's message.
        message: String,
    },
    /// The network failed (connect, TLS, reset, timeout).
    #[error("cannot reach azure: {0}")]
    Transport(String),
    /// The response could not be understood.
    #[error("unexpected response from azure: {0}")]
    Protocol(String),
}

impl ArmError {
    /// How long to wait before trying again, when the answer says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ArmError::Throttled { retry_after, .. } | ArmError::Locked { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether trying again later can help without anyone changing
    /// anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ArmError::Throttled { .. }
                | ArmError::Locked { .. }
                | ArmError::PrincipalNotFound { .. }
                | ArmError::Pending { .. }
                | ArmError::Server { .. }
                | ArmError::Transport(_)
        )
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<ErrorDetail>,
    code: Option<String>,
    message: Option<String>,
}

/// `{code, message}` of an ARM error or a failed operation's status.
#[derive(Deserialize, Default)]
pub(super) struct ErrorDetail {
    pub(super) code: Option<String>,
    pub(super) message: Option<String>,
}

/// `code` and `message` from `{"error": {...}}` or a top-level
/// `{code, message}`; empty strings when absent.
pub fn error_parts(body: &[u8]) -> (String, String) {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let (code, message) = match parsed.error {
        Some(e) => (e.code, e.message),
        None => (parsed.code, parsed.message),
    };
    (code.unwrap_or_default(), sanitize(message.as_deref().unwrap_or_default()))
}

/// Trim a server message to a bounded single line.
pub fn sanitize(message: &str) -> String {
    let one_line: String =
        message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_string();
    if one_line.chars().count() <= MAX_MESSAGE {
        return one_line;
    }
    let cut: String = one_line.chars().take(MAX_MESSAGE).collect();
    format!("{cut}…")
}

/// Parse `Retry-After` (seconds or an HTTP date) or `x-ms-retry-after-ms` /
/// `retry-after-ms` (milliseconds).
pub fn parse_retry_after(retry_after: Option<&str>, retry_after_ms: Option<&str>) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_millis(ms));
    }
    let v = retry_after?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let left = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

fn is_principal_not_found(code: &str, message: &str) -> bool {
    let c = code.to_ascii_lowercase();
    let m = message.to_ascii_lowercase();
    c.contains("principalnotfound")
        || (m.contains("principal")
            && (m.contains("not found") || m.contains("does not exist") || m.contains("could not be found")))
}

fn is_limit(code: &str, message: &str) -> bool {
    let c = code.to_ascii_lowercase();
    let m = message.to_ascii_lowercase();
    c.contains("limitexceeded")
        || c.contains("quotaexceeded")
        || (m.contains("limit") && m.contains("exceed"))
        || m.contains("maximum allowed")
}

/// Classify a refused request's ARM error `code`/`message` (`status` 400
/// or 409; a failed long-running operation counts as 400).
pub fn classify_refusal(status: u16, code: &str, message: &str) -> ArmError {
    if is_principal_not_found(code, message) {
        ArmError::PrincipalNotFound { message: message.to_string() }
    } else if is_limit(code, message) {
        ArmError::LimitExceeded { code: code.to_string(), message: message.to_string() }
    } else {
        ArmError::Rejected { status, code: code.to_string(), message: message.to_string() }
    }
}

/// Classify a non-success response.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> ArmError {
    let (code, message) = error_parts(body);
    let message = if message.is_empty() { format!("HTTP {status}") } else { message };
    match status {
        429 | 503 => ArmError::Throttled { status, retry_after: retry_after.unwrap_or(DEFAULT_THROTTLE_WAIT), message },
        412 | 409
            if status == 412
                || code.eq_ignore_ascii_case("AnotherOperationInProgress")
                || message.to_ascii_lowercase().contains("another operation") =>
        {
            ArmError::Locked { retry_after: retry_after.unwrap_or(DEFAULT_LOCK_WAIT), message }
        }
        401 | 403 => ArmError::Unauthorized { status, code, message },
        404 => ArmError::NotFound { code, message },
        400 | 409 => classify_refusal(status, &code, &message),
        s if s >= 500 => ArmError::Server { status, code, message },
        _ => ArmError::Rejected { status, code, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_error_body_shapes_parse() {
        let nested = br#"{"error":{"code":"BadRequest","message":"bad scope"}}"#;
        assert_eq!(error_parts(nested), ("BadRequest".into(), "bad scope".into()));
        let flat = br#"{"code":"Conflict","message":"exists"}"#;
        assert_eq!(error_parts(flat), ("Conflict".into(), "exists".into()));
        assert_eq!(error_parts(b"<html>oops</html>"), (String::new(), String::new()));
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let body = |code: &str, msg: &str| format!(r#"{{"error":{{"code":"{code}","message":"{msg}"}}}}"#).into_bytes();
        assert!(matches!(
            classify(429, Some(Duration::from_secs(7)), b"{}"),
            ArmError::Throttled { status: 429, retry_after, .. } if retry_after == Duration::from_secs(7)
        ));
        assert!(
            matches!(classify(503, None, b""), ArmError::Throttled { retry_after, .. } if retry_after == DEFAULT_THROTTLE_WAIT)
        );
        assert!(matches!(classify(412, None, &body("PreconditionFailed", "x")), ArmError::Locked { .. }));
        assert!(matches!(classify(409, None, &body("AnotherOperationInProgress", "x")), ArmError::Locked { .. }));
        assert!(matches!(
            classify(400, None, &body("BadRequest", "The principal with id 'x' does not exist in the directory")),
            ArmError::PrincipalNotFound { .. }
        ));
        assert!(matches!(classify(400, None, &body("PrincipalNotFound", "x")), ArmError::PrincipalNotFound { .. }));
        assert!(matches!(
            classify(400, None, &body("BadRequest", "Role assignment limit of 2000 exceeded")),
            ArmError::LimitExceeded { .. }
        ));
        assert!(matches!(
            classify(400, None, &body("BadRequest", "bad scope")),
            ArmError::Rejected { status: 400, .. }
        ));
        assert!(matches!(
            classify(403, None, &body("AuthorizationFailed", "no")),
            ArmError::Unauthorized { status: 403, .. }
        ));
        assert!(matches!(classify(401, None, b""), ArmError::Unauthorized { status: 401, .. }));
        assert!(matches!(classify(404, None, &body("ResourceNotFound", "gone")), ArmError::NotFound { .. }));
        assert!(matches!(classify(500, None, b""), ArmError::Server { status: 500, .. }));
        assert!(classify(429, None, b"").is_transient());
        assert!(!classify(403, None, b"").is_transient());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(Some("12"), None), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after(Some("12"), Some("1500")), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after(Some("Thu, 01 Jan 1970 00:00:00 GMT"), None), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(Some("soon"), None), None);
        assert_eq!(parse_retry_after(None, None), None);
    }

    #[test]
    fn messages_are_bounded_single_lines() {
        let long = "x".repeat(5000);
        let m = sanitize(&format!("line one\nline two {long}"));
        assert!(!m.contains('\n'));
        assert!(m.chars().count() <= MAX_MESSAGE + 1);
    }
}
