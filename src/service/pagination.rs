//! AIP-158 pages for the use cases: read a page request, cut the page, hand out the next token.

use crate::domain::Violations;
use crate::domain::page::{decode_token, encode_token, page_size};

use super::ServiceError;

/// A page of a list and the token of the next one (empty at the end).
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

/// Which page of a list a caller asked for.
pub struct PageRequest<'a> {
    pub page_size: i32,
    pub page_token: &'a str,
}

impl PageRequest<'_> {
    /// The size to return and the key to continue after. `filter` fingerprints the request's other
    /// parameters, so a token used with different ones is refused.
    pub fn decode(&self, filter: &str) -> Result<(usize, Option<String>), ServiceError> {
        let mut violations = Violations::new();
        let size = violations.check(page_size("page_size", self.page_size));
        let after = violations.check(decode_token("page_token", self.page_token, filter));
        Ok(violations.finish(|| (size.unwrap_or_default(), after.flatten()))?)
    }
}

/// The error for a token whose key does not parse (tampered with, or from another list).
pub fn bad_token() -> ServiceError {
    ServiceError::invalid("page_token", "is not a page token of this list")
}

/// Cuts the one extra item fetched to learn whether another page follows.
pub fn paginate<T>(
    mut items: Vec<T>,
    size: usize,
    filter: &str,
    key: impl Fn(&T) -> String,
) -> Page<T> {
    let next_page_token = if items.len() > size {
        items.truncate(size);
        items
            .last()
            .map(|last| encode_token(&key(last), filter))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Page {
        items,
        next_page_token,
    }
}
