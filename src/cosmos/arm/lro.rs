//! Long-running operations: `Azure-AsyncOperation` status bodies
//! (`Enqueued` → `Dequeued` → `Succeeded` / `Failed`) and `Location`
//! polling (202 until done), with `Retry-After` and a bounded total time.

use std::time::Duration;

use serde::Deserialize;

use super::error::{ArmError, ErrorDetail, classify_refusal, sanitize};

/// Poll interval when the service does not say.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// Shortest wait between polls, whatever the service says.
pub const MIN_POLL: Duration = Duration::from_millis(100);
/// Longest wait between polls, whatever the service says (the total budget
/// bounds the call anyway).
pub const MAX_POLL: Duration = Duration::from_secs(30);

/// Where an operation stands after one poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationState {
    /// Still running (`Enqueued`, `Dequeued`, `InProgress`, ...).
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed(ArmError),
}

#[derive(Deserialize, Default)]
struct StatusBody {
    status: Option<String>,
    error: Option<ErrorDetail>,
    properties: Option<StatusProperties>,
}

#[derive(Deserialize, Default)]
struct StatusProperties {
    #[serde(default, rename = "provisioningState")]
    provisioning_state: Option<String>,
}

/// Read an `Azure-AsyncOperation` status body.
pub fn parse_status(body: &[u8]) -> Result<OperationState, ArmError> {
    let parsed: StatusBody =
        serde_json::from_slice(body).map_err(|_| ArmError::Protocol("operation status is not JSON".into()))?;
    let status = parsed.status.or_else(|| parsed.properties.and_then(|p| p.provisioning_state)).unwrap_or_default();
    match status.to_ascii_lowercase().as_str() {
        "succeeded" => Ok(OperationState::Succeeded),
        "failed" | "canceled" | "cancelled" => {
            let e = parsed.error.unwrap_or_default();
            let code = e.code.unwrap_or_else(|| status.clone());
            let message = sanitize(e.message.as_deref().unwrap_or("the operation failed"));
            Ok(OperationState::Failed(classify_refusal(400, &code, &message)))
        }
        "" => Err(ArmError::Protocol("operation status has no status field".into())),
        _ => Ok(OperationState::Running),
    }
}

/// The wait before the next poll: the service's `Retry-After` when given,
/// else a backoff that starts at [`MIN_POLL`] for the first two polls and
/// doubles up to four times [`DEFAULT_POLL`]; never above [`MAX_POLL`] nor
/// what is left.
///
/// Most role-assignment operations finish within a few polls, and a
/// Cosmos DB account runs one control-plane operation at a time, so the
/// time between an operation finishing and dbgrant noticing is time the
/// account's next write waits. Polls are reads, which ARM allows far more
/// of than writes.
pub fn next_wait(retry_after: Option<Duration>, attempt: u32, left: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(10);
    let backoff = MIN_POLL.saturating_mul(1 << doublings).min(DEFAULT_POLL * 4);
    retry_after.unwrap_or(backoff).clamp(MIN_POLL, MAX_POLL).min(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies() {
        assert_eq!(parse_status(br#"{"status":"Enqueued"}"#).unwrap(), OperationState::Running);
        assert_eq!(parse_status(br#"{"status":"Dequeued"}"#).unwrap(), OperationState::Running);
        assert_eq!(parse_status(br#"{"status":"InProgress"}"#).unwrap(), OperationState::Running);
        assert_eq!(parse_status(br#"{"status":"Succeeded"}"#).unwrap(), OperationState::Succeeded);
        assert_eq!(
            parse_status(br#"{"properties":{"provisioningState":"Succeeded"}}"#).unwrap(),
            OperationState::Succeeded
        );
        match parse_status(br#"{"status":"Failed","error":{"code":"BadRequest","message":"principal 'x' not found"}}"#)
            .unwrap()
        {
            OperationState::Failed(ArmError::PrincipalNotFound { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_status(br#"{"status":"Canceled"}"#).unwrap(), OperationState::Failed(_)));
        assert!(parse_status(b"nope").is_err());
        assert!(parse_status(b"{}").is_err());
    }

    #[test]
    fn waits_are_bounded() {
        let left = Duration::from_secs(100);
        assert_eq!(next_wait(Some(Duration::from_secs(3)), 0, left), Duration::from_secs(3));
        assert_eq!(next_wait(Some(Duration::from_secs(300)), 0, left), MAX_POLL);
        assert_eq!(next_wait(None, 0, left), MIN_POLL);
        assert_eq!(next_wait(None, 1, left), MIN_POLL);
        assert_eq!(next_wait(None, 2, left), MIN_POLL * 2);
        assert_eq!(next_wait(None, 3, left), MIN_POLL * 4);
        assert_eq!(next_wait(None, 20, left), DEFAULT_POLL * 4);
        assert_eq!(next_wait(Some(Duration::from_secs(3)), 0, Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(next_wait(Some(Duration::ZERO), 0, left), MIN_POLL, "Retry-After: 0 does not spin");
    }
}
