//! The one mapping from use-case errors to gRPC statuses. Every status carries
//! `google.rpc.ErrorInfo` (reason, domain `mailconnect`); invalid input also carries
//! `google.rpc.BadRequest` with a violation per field.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::domain::FieldViolation;
use crate::service::CONCURRENT_TRANSACTION;
use crate::service::ServiceError;

/// How long a caller refused for contention is told to wait: about one short transaction.
const CONTENTION_RETRY_AFTER: Duration = Duration::from_millis(50);

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "mailconnect";

/// A status with ErrorInfo.
pub fn status(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// INVALID_ARGUMENT with a BadRequest violation per field.
fn bad_request(reason: &str, message: String, violations: Vec<FieldViolation>) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    for violation in violations {
        details.add_bad_request_violation(violation.field, violation.description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let message = error.to_string();
        match error {
            ServiceError::InvalidArgument(violations) => {
                bad_request("INVALID_ARGUMENT", message, violations)
            }
            ServiceError::InvalidValue { reason, violations } => {
                bad_request(reason, message, violations)
            }
            ServiceError::NotFound { reason, .. } => {
                status(Code::NotFound, reason, message, HashMap::new())
            }
            ServiceError::PermissionDenied { required, .. } => {
                let roles: Vec<&str> = required.iter().map(|role| role.as_str()).collect();
                status(
                    Code::PermissionDenied,
                    "MISSING_ROLE",
                    message,
                    HashMap::from([("required_roles".to_owned(), roles.join(","))]),
                )
            }
            ServiceError::Unauthenticated { reason, .. } => {
                status(Code::Unauthenticated, reason, message, HashMap::new())
            }
            ServiceError::AlreadyExists {
                reason, metadata, ..
            } => status(
                Code::AlreadyExists,
                reason,
                message,
                metadata.into_iter().collect(),
            ),
            ServiceError::FailedPrecondition {
                reason, metadata, ..
            } => status(
                Code::FailedPrecondition,
                reason,
                message,
                metadata.into_iter().collect(),
            ),
            ServiceError::Aborted { reason, .. } => {
                let mut details =
                    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
                // Contention, unlike a stale etag, passes by itself: retry the same call soon.
                if reason == CONCURRENT_TRANSACTION {
                    details.set_retry_info(Some(CONTENTION_RETRY_AFTER));
                }
                Status::with_error_details(Code::Aborted, message, details)
            }
            ServiceError::ProbeFailed { reports } => {
                super::probe_report::probe_failed_status(message, reports)
            }
            ServiceError::ResourceExhausted {
                reason,
                retry_after,
                ..
            } => {
                let mut details =
                    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
                if let Some(delay) = retry_after {
                    details.set_retry_info(Some(delay));
                }
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            ServiceError::OutOfRange { reason, .. } => {
                status(Code::OutOfRange, reason, message, HashMap::new())
            }
            ServiceError::Unavailable(_) => {
                status(Code::Unavailable, "UNAVAILABLE", message, HashMap::new())
            }
            ServiceError::Internal(_) => {
                status(Code::Internal, "INTERNAL", message, HashMap::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::StoreError;

    #[test]
    fn contention_is_aborted_with_a_retry_delay_and_a_stale_etag_without() {
        let contention = Status::from(ServiceError::from(StoreError::Contention(
            "could not serialize access due to concurrent update".to_owned(),
        )));
        assert_eq!(contention.code(), Code::Aborted);
        assert!(
            !contention.message().contains("serialize"),
            "{contention:?}"
        );
        assert_eq!(
            contention
                .get_details_retry_info()
                .and_then(|info| info.retry_delay),
            Some(CONTENTION_RETRY_AFTER)
        );
        let stale = Status::from(ServiceError::Aborted {
            reason: "ETAG_MISMATCH",
            message: "stale".to_owned(),
        });
        assert!(stale.get_details_retry_info().is_none());
    }
}
