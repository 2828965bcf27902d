//! Persistence with Diesel over Postgres (production) and SQLite (the embedded default).
//!
//! This is the only module that sees Diesel. Diesel is synchronous: every query runs on the pool's
//! blocking threads through [`Database::run`], never on a runtime thread.

pub mod allowlist;
mod cache;
pub mod directory;
pub mod domain_settings;
mod pool;
pub mod schema;
mod url;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

pub use pool::{Database, DbConnection};
pub use url::DatabaseUrl;

/// Runs the same query body on whichever backend the connection is, for the statements
/// Diesel's MultiConnection cannot express (`ON CONFLICT`, `RETURNING`).
macro_rules! per_backend {
    ($conn:expr, |$inner:ident| $body:expr) => {
        match $conn {
            $crate::storage::DbConnection::Pg($inner) => $body,
            $crate::storage::DbConnection::Sqlite($inner) => $body,
        }
    };
}
pub(crate) use per_backend;

/// What can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The configuration names no usable database.
    #[error("{0}")]
    Config(String),
    /// The database cannot be reached or no connection was free in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused the write (a concurrent writer won).
    #[error("conflicting write: {0}")]
    Conflict(String),
    /// A row the write refers to does not exist.
    #[error("referenced row missing: {0}")]
    MissingReference(String),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Anything else: a bug or a corrupt database.
    #[error("database error: {0}")]
    Internal(String),
}

impl From<DieselError> for StorageError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StorageError::Conflict(info.message().to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info) => {
                StorageError::MissingReference(info.message().to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                StorageError::Unavailable(info.message().to_owned())
            }
            DieselError::BrokenTransactionManager => {
                StorageError::Unavailable("broken transaction manager".to_owned())
            }
            other => StorageError::Internal(other.to_string()),
        }
    }
}

/// Current time as stored: UTC microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    to_micros(std::time::SystemTime::now())
}

/// A time as stored: UTC microseconds since the Unix epoch (earlier times clamp to the epoch).
pub fn to_micros(time: std::time::SystemTime) -> i64 {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// A stored time back as a `SystemTime`.
pub fn from_micros(micros: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}
