//! The conditions a write request may carry: an idempotency key (AIP-155) and an etag (AIP-154).

use crate::domain::domain_settings::parse_etag;

use super::ServiceError;

/// Longest idempotency key accepted.
const MAX_REQUEST_ID: usize = 128;

/// A request id: `None` when empty (no idempotency asked for).
pub fn request_id(raw: &str) -> Result<Option<String>, ServiceError> {
    if raw.len() > MAX_REQUEST_ID || raw.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "request_id",
            format!("must be at most {MAX_REQUEST_ID} printable characters, e.g. a UUID"),
        ));
    }
    Ok((!raw.is_empty()).then(|| raw.to_owned()))
}

/// The version an etag from a request names: `None` when empty (unconditional).
pub fn expected_version(field: &str, etag: &str) -> Result<Option<i64>, ServiceError> {
    if etag.is_empty() {
        return Ok(None);
    }
    parse_etag(etag).map(Some).ok_or_else(|| {
        ServiceError::invalid(
            field,
            "is not an etag of this resource: send the etag a Get returned",
        )
    })
}
