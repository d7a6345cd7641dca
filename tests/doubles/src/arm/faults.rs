//! Fault injection for HTTP requests.

use super::journal::RequestKind;

/// Which requests a fault hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultTarget {
    /// Every ARM request (reads, writes, polls), not token requests.
    Arm,
    /// ARM `GET`s of resources and lists.
    ArmReads,
    /// ARM `PUT`/`DELETE`s.
    ArmWrites,
    /// Operation status/result polls.
    OperationPolls,
    /// The token endpoint.
    Token,
    /// The managed-identity endpoint.
    ManagedIdentity,
    /// Everything.
    Any,
    /// Requests whose method matches (if given, case-insensitively) and
    /// whose path contains `path_contains` (case-insensitively).
    Path {
        /// HTTP method, or any.
        method: Option<String>,
        /// Substring of the path.
        path_contains: String,
    },
}

impl FaultTarget {
    pub(crate) fn matches(&self, kind: RequestKind, method: &str, path: &str) -> bool {
        match self {
            Self::Arm => kind.is_arm(),
            Self::ArmReads => kind == RequestKind::ArmRead,
            Self::ArmWrites => kind == RequestKind::ArmWrite,
            Self::OperationPolls => kind == RequestKind::OperationPoll,
            Self::Token => kind == RequestKind::Token,
            Self::ManagedIdentity => kind == RequestKind::ManagedIdentity,
            Self::Any => true,
            Self::Path { method: m, path_contains } => {
                m.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                    && path.to_ascii_lowercase().contains(&path_contains.to_ascii_lowercase())
            }
        }
    }
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this status and error, without doing anything else.
    /// ARM requests get `{"error":{"code","message"}}`; Entra requests get
    /// `{"error": code, "error_description": message}`.
    Respond {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Error message.
        message: String,
        /// `Retry-After` seconds, if any.
        retry_after: Option<u64>,
    },
    /// Close the connection without answering (nothing is applied).
    Drop,
    /// Accept the write as usual (202 with `Azure-AsyncOperation` and
    /// `Location`), then end its long-running operation `Failed` with
    /// `{"status": "Failed", "error": {"code", "message"}}`, as ARM reports
    /// a write the resource provider gave up on; nothing changes. With
    /// operations completing inline (`lro_polls == 0`) the write is
    /// answered with the error at once. A matching write refused before it
    /// starts an operation (412, 429, a validation error) uses it up with
    /// that refusal as its answer.
    FailOperation {
        /// Error code of the failed operation.
        code: String,
        /// Error message of the failed operation.
        message: String,
    },
}

/// A fault armed for the next `remaining` matching requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Which requests.
    pub target: FaultTarget,
    /// What happens to them.
    pub action: FaultAction,
    /// How many more requests it hits.
    pub remaining: u32,
}

impl Fault {
    /// The next `n` requests matching `target` get `status` with `code`.
    pub fn respond(target: FaultTarget, n: u32, status: u16, code: &str) -> Self {
        Self {
            target,
            action: FaultAction::Respond {
                status,
                code: code.to_string(),
                message: format!("injected failure: {status} {code}"),
                retry_after: None,
            },
            remaining: n,
        }
    }

    /// The next `n` writes matching `target` are accepted and their
    /// operations end `Failed` with `code` (see
    /// [`FaultAction::FailOperation`]).
    pub fn fail_operation(target: FaultTarget, n: u32, code: &str) -> Self {
        Self {
            target,
            action: FaultAction::FailOperation {
                code: code.to_string(),
                message: format!("injected operation failure: {code}"),
            },
            remaining: n,
        }
    }

    /// Adds `Retry-After` to a `Respond` fault.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        if let FaultAction::Respond { retry_after, .. } = &mut self.action {
            *retry_after = Some(seconds);
        }
        self
    }

    /// Sets the message of a `Respond` or `FailOperation` fault.
    pub fn message(mut self, text: impl Into<String>) -> Self {
        if let FaultAction::Respond { message, .. } | FaultAction::FailOperation { message, .. } = &mut self.action {
            *message = text.into();
        }
        self
    }
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    queue: Vec<Fault>,
}

impl Faults {
    pub fn arm(&mut self, fault: Fault) {
        if fault.remaining > 0 {
            self.queue.push(fault);
        }
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    pub fn take(&mut self, kind: RequestKind, method: &str, path: &str) -> Option<FaultAction> {
        let index = self.queue.iter().position(|f| {
            f.target.matches(kind, method, path)
                && (kind == RequestKind::ArmWrite || !matches!(f.action, FaultAction::FailOperation { .. }))
        })?;
        let fault = &mut self.queue[index];
        fault.remaining -= 1;
        let action = fault.action.clone();
        if fault.remaining == 0 {
            self.queue.remove(index);
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_count_down_by_target() {
        let mut faults = Faults::default();
        faults.arm(Fault::respond(FaultTarget::ArmWrites, 1, 503, "ServiceUnavailable").retry_after(1));
        faults.arm(Fault {
            target: FaultTarget::Path { method: Some("get".into()), path_contains: "SQLROLE".into() },
            action: FaultAction::Drop,
            remaining: 1,
        });
        assert_eq!(faults.take(RequestKind::Token, "POST", "/t/oauth2/v2.0/token"), None);
        assert!(matches!(
            faults.take(RequestKind::ArmWrite, "PUT", "/x"),
            Some(FaultAction::Respond { status: 503, retry_after: Some(1), .. })
        ));
        assert_eq!(faults.take(RequestKind::ArmWrite, "PUT", "/x"), None);
        assert_eq!(faults.take(RequestKind::ArmRead, "GET", "/a/sqlRoleAssignments"), Some(FaultAction::Drop));
        assert_eq!(faults.take(RequestKind::ArmRead, "GET", "/a/sqlRoleAssignments"), None);
    }

    #[test]
    fn operation_failures_hit_only_writes_to_their_path() {
        let mut faults = Faults::default();
        let target =
            FaultTarget::Path { method: Some("DELETE".into()), path_contains: "/sqlRoleAssignments/abc".into() };
        faults.arm(Fault::fail_operation(target, 1, "InternalServerError").message("the provider fell over"));
        assert_eq!(faults.take(RequestKind::ArmRead, "GET", "/a/sqlRoleAssignments/abc"), None);
        assert_eq!(faults.take(RequestKind::ArmWrite, "DELETE", "/a/sqlRoleAssignments/other"), None);
        assert_eq!(
            faults.take(RequestKind::ArmWrite, "DELETE", "/a/sqlRoleAssignments/ABC"),
            Some(FaultAction::FailOperation {
                code: "InternalServerError".into(),
                message: "the provider fell over".into()
            })
        );
        assert_eq!(faults.take(RequestKind::ArmWrite, "DELETE", "/a/sqlRoleAssignments/abc"), None);
    }
}
