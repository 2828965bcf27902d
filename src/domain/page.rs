//! AIP-158 pagination: page sizes and opaque page tokens.
//!
//! A token carries the last key of the previous page and a fingerprint of the request's other
//! parameters, so that a token used with a different filter is refused instead of silently
//! returning a wrong page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::FieldViolation;

/// Page size used when the caller sends 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger page sizes are clamped to this.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Turns a requested page size into the number of items to return.
pub fn page_size(field: &str, requested: i32) -> Result<usize, FieldViolation> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(FieldViolation::new(
            field,
            format!("must not be negative, got {n}"),
        )),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

#[derive(Serialize, Deserialize)]
struct Token {
    /// The last key of the previous page.
    k: String,
    /// Fingerprint of the request's other parameters.
    f: String,
}

/// Decodes a page token. `filter` must be the same fingerprint the token was made with.
/// Returns `None` for an empty token (the first page).
pub fn decode_token(
    field: &str,
    token: &str,
    filter: &str,
) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        FieldViolation::new(
            field,
            "is not a page token of this list: pass the next_page_token of the previous response unchanged",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if token.f != filter {
        return Err(FieldViolation::new(
            field,
            "was issued for a request with other parameters: keep every parameter but page_token and page_size the same between pages, or start again without a page token",
        ));
    }
    Ok(Some(token.k))
}

/// Encodes the token that continues after `last_key`.
pub fn encode_token(last_key: &str, filter: &str) -> String {
    let token = Token {
        k: last_key.to_owned(),
        f: filter.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("a token always serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(page_size("page_size", 0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size("page_size", 7).unwrap(), 7);
        assert_eq!(page_size("page_size", 1_000_000).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(page_size("page_size", -1).unwrap_err().field, "page_size");
    }

    #[test]
    fn tokens_round_trip_and_bind_the_filter() {
        let token = encode_token("42", "account=1");
        assert_eq!(
            decode_token("page_token", &token, "account=1").unwrap(),
            Some("42".into())
        );
        assert!(decode_token("page_token", &token, "account=2").is_err());
        assert!(decode_token("page_token", "garbage!", "account=1").is_err());
        assert_eq!(decode_token("page_token", "", "x").unwrap(), None);
    }
}
