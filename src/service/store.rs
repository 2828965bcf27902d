//! What the use cases' stores can answer instead of a result. Storage maps its driver's errors
//! into it, so the use cases never see Diesel (DESIGN.md §1).

/// A store's failure, by what a caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or no connection was free in time: retry with backoff.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A concurrent transaction got in the way (serialization failure, deadlock, a locked SQLite
    /// file): the same call may succeed when retried.
    #[error("concurrent transaction: {0}")]
    Contention(String),
    /// A unique constraint refused the write (a concurrent writer won).
    #[error("conflicting write: {0}")]
    Conflict(String),
    /// A row the write refers to does not exist.
    #[error("referenced row missing: {0}")]
    MissingReference(String),
    /// Anything else: a bug, a failed migration or a corrupt database.
    #[error("database error: {0}")]
    Internal(String),
}
