//! The one error type of the use cases. Each variant says what a caller can do about it; the
//! transport maps it to a gRPC status in exactly one place (`grpc::status`).
//!
//! Policy: messages are for the caller and never contain secrets or another tenant's data;
//! internal causes are logged where they happen and answered with a generic message.

use std::collections::BTreeMap;

use crate::domain::FieldViolation;
use crate::domain::principal::Role;
use crate::domain::probe::ProbeReport;
use crate::service::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; every bad field is named.
    #[error("invalid request: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// Like `InvalidArgument`, where the contract names a more precise reason (`INVALID_CIDR`).
    #[error("invalid request: {}", summarize(.violations))]
    InvalidValue {
        reason: &'static str,
        violations: Vec<FieldViolation>,
    },
    /// No (visible) resource of that name.
    #[error("{message}")]
    NotFound {
        reason: &'static str,
        message: String,
    },
    /// The caller is authenticated but lacks a role.
    #[error("{message}")]
    PermissionDenied {
        message: String,
        required: Vec<Role>,
    },
    /// No valid credentials.
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    /// The resource exists already.
    #[error("{message}")]
    AlreadyExists {
        reason: &'static str,
        message: String,
        metadata: BTreeMap<String, String>,
    },
    /// The system is not in the state the request needs.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
        metadata: BTreeMap<String, String>,
    },
    /// A concurrent change won (stale etag).
    #[error("{message}")]
    Aborted {
        reason: &'static str,
        message: String,
    },
    /// A server of the settings failed its probe; the reports say what to fix.
    #[error("a server failed its probe: {}", summarize_probes(.reports))]
    ProbeFailed { reports: Vec<ProbeReport> },
    /// A capacity or rate limit refused the call; retry later.
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
        /// When a retry can succeed, if known.
        retry_after: Option<std::time::Duration>,
    },
    /// A position beyond the end of a sequence (a version newer than the current one).
    #[error("{message}")]
    OutOfRange {
        reason: &'static str,
        message: String,
    },
    /// Try again later: the database or a dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or corrupt data; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

fn summarize_probes(reports: &[ProbeReport]) -> String {
    reports
        .iter()
        .filter(|report| !report.outcome.is_success())
        .map(|report| format!("{}: {}", report.target, report.hint))
        .collect::<Vec<_>>()
        .join("; ")
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ServiceError {
    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            reason,
            message: message.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// The caller must hold at least one of `roles`.
    pub fn require_any(principal_roles: &[Role], roles: &[Role], action: &str) -> Result<(), Self> {
        if roles.iter().any(|role| principal_roles.contains(role)) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
        Err(Self::PermissionDenied {
            message: format!("{action} requires the role {}", names.join(" or ")),
            required: roles.to_vec(),
        })
    }
}

impl From<Vec<FieldViolation>> for ServiceError {
    fn from(violations: Vec<FieldViolation>) -> Self {
        Self::InvalidArgument(violations)
    }
}

impl From<FieldViolation> for ServiceError {
    fn from(violation: FieldViolation) -> Self {
        Self::InvalidArgument(vec![violation])
    }
}

/// The ABORTED reason of a transaction another one got in the way of: the same call again
/// usually succeeds (the status carries a RetryInfo delay).
pub const CONCURRENT_TRANSACTION: &str = "CONCURRENT_TRANSACTION";

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                Self::Unavailable("the database is unavailable; retry with backoff".to_owned())
            }
            // AIP-193: ABORTED is the code a client retries the whole read-modify-write on.
            StoreError::Contention(cause) => {
                tracing::warn!(%cause, "concurrent transaction");
                Self::Aborted {
                    reason: CONCURRENT_TRANSACTION,
                    message: "a concurrent transaction got in the way; retry the call".to_owned(),
                }
            }
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::Internal(other.to_string())
            }
        }
    }
}
