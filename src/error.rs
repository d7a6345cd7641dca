//! The operator's error type. Every variant says what failed, on which
//! object or target, and carries a `category()` that labels metrics and
//! Warning events.

/// What kind of backend failure an [`Error::Backend`] is: typed where the
/// failure is classified (never guessed later from the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Retrying soon may succeed: the server unreachable, a dropped
    /// connection, a failover, a revocation not confirmed yet.
    Transient,
    /// The backend refused dbgrant's identity: a failed login, or rights
    /// it lacks.
    Unauthorized,
    /// The target's spec or the operator's environment is wrong (the
    /// connection string, TLS or OIDC settings).
    Misconfigured,
    /// The backend refused the request for another reason; retrying
    /// alone will not help.
    Refused,
}

/// Errors from reconciliation and start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),

    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// A Secret or key a target needs is missing or unreadable.
    #[error("secret {namespace}/{name}: {problem}")]
    Secret {
        /// Namespace of the Secret (the operator namespace).
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What is wrong, without the Secret's contents.
        problem: String,
    },

    /// A backend (MongoDB or Azure) call failed.
    #[error("{backend} target {target}: {message}")]
    Backend {
        /// `mongodb` or `cosmosdb`.
        backend: &'static str,
        target: String,
        /// Secret-free description of the failure.
        message: String,
        /// What kind of failure: it decides the condition reason and how
        /// soon to retry.
        failure: Failure,
    },

    /// An Azure Resource Manager call for a CosmosTarget failed.
    #[error("cosmosdb target {target}: {source}")]
    Azure {
        /// CosmosTarget name.
        target: String,
        /// The typed ARM failure (secret-free).
        #[source]
        source: crate::cosmos::arm::ArmError,
    },

    /// Work on a target must wait and will be retried after `retry_after`
    /// (revocation behind throttling, a role definition still in use).
    #[error("{backend} target {target}: {message}")]
    Wait {
        /// `mongodb` or `cosmosdb`.
        backend: &'static str,
        target: String,
        /// What is awaited.
        message: String,
        /// When to try again.
        retry_after: std::time::Duration,
    },

    /// The operator's own configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short label for metrics and Warning events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Finalizer(_) => "finalizer",
            Error::Secret { .. } => "secret",
            Error::Backend { failure: Failure::Transient, .. } => "backend-transient",
            Error::Backend { .. } => "backend",
            Error::Azure { source, .. } => {
                use crate::cosmos::arm::ArmError;
                match source {
                    ArmError::Throttled { .. } | ArmError::Locked { .. } => "throttled",
                    ArmError::Credential(_) => "credential",
                    ArmError::Unauthorized { .. } => "unauthorized",
                    e if e.is_transient() => "backend-transient",
                    _ => "backend",
                }
            }
            Error::Wait { .. } => "waiting",
            Error::Config(_) => "config",
        }
    }

    /// Whether trying again soon may succeed without any change: the
    /// backend was unreachable, failing over or throttling.
    pub fn is_transient(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Backend { failure, .. } => *failure == Failure::Transient,
            Error::Azure { source, .. } => source.is_transient(),
            Error::Kube(e) => kube_transient(e),
            Error::Finalizer(e) => match e.as_ref() {
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => kube_transient(e),
                _ => false,
            },
            _ => false,
        }
    }

    /// How long the backend asked dbgrant to wait, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Azure { source, .. } => source.retry_after(),
            Error::Wait { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Whether a Kubernetes API failure may pass by itself: the apiserver
/// unreachable or restarting (no connection, a dropped one), overloaded or
/// failing (429, 5xx), or a write that raced another (409). A refusal
/// (400, 401, 403, 404, 422) needs a change somewhere.
fn kube_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 409 || s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        match e {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("m", "r").with_code(code)))
    }

    fn refused() -> kube::Error {
        kube::Error::Service(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
    }

    #[test]
    fn an_unreachable_restarting_or_overloaded_apiserver_is_transient() {
        assert!(Error::Kube(refused()).is_transient());
        for code in [409, 429, 500, 503, 504] {
            assert!(Error::Kube(api(code)).is_transient(), "{code}");
        }
        let remove = kube::runtime::finalizer::Error::<Error>::RemoveFinalizer(refused());
        assert!(Error::from(remove).is_transient());
    }

    #[test]
    fn an_apiserver_refusal_is_not_transient() {
        for code in [400, 401, 403, 404, 422] {
            assert!(!Error::Kube(api(code)).is_transient(), "{code}");
        }
        let unnamed = kube::runtime::finalizer::Error::<Error>::UnnamedObject;
        assert!(!Error::from(unnamed).is_transient());
    }
}
