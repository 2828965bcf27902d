//! Persistence with Diesel over Postgres (production) and SQLite (the embedded default).
//!
//! This is the only module that sees Diesel. Diesel is synchronous: every query runs on the pool's
//! blocking threads through [`Database::run`], never on a runtime thread.

pub mod allowlist;
mod cache;
mod channels;
pub mod directory;
pub mod domain_settings;
mod inbound;
pub mod inbox_connections;
mod notifications;
mod pool;
pub mod schema;
mod url;
#[cfg(test)]
mod use_case_tests;
mod verifications;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

pub use pool::{Database, DbConnection};
pub use url::{DatabaseUrl, UrlError};

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

pub use crate::service::StoreError;

/// Diesel's errors, by what the use cases can do about them.
impl From<DieselError> for StoreError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(info.message().to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info) => {
                StoreError::MissingReference(info.message().to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                StoreError::Unavailable(info.message().to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => {
                StoreError::Contention(info.message().to_owned())
            }
            // Postgres reports a deadlock (40P01) and SQLite a locked file only in their text.
            DieselError::DatabaseError(_, info)
                if info.message().contains("deadlock detected")
                    || info.message().contains("database is locked") =>
            {
                StoreError::Contention(info.message().to_owned())
            }
            DieselError::BrokenTransactionManager => {
                StoreError::Unavailable("broken transaction manager".to_owned())
            }
            other => StoreError::Internal(other.to_string()),
        }
    }
}

pub use crate::domain::time::{from_micros, to_micros};

/// The Postgres advisory lock that [`exclusive`] transactions take turns on.
const EXCLUSIVE_LOCK: i64 = 0x6d61_696c_7772_6974; // "mailwrit"; migrations hold "mailconn"

/// Runs `work` in a transaction that holds the write lock from its start, so that read-then-write
/// transactions (check an etag, then write) take turns and none acts on what another is changing.
/// On SQLite a deferred transaction that read first cannot take the lock while another writer
/// holds it ("database is locked" at once, whatever the busy timeout), so it begins IMMEDIATE to
/// queue instead. On Postgres, READ COMMITTED lets two such transactions read the same version
/// and both write (a lost update, found by `races::inbox_renames_on_one_etag_have_one_winner`):
/// they queue on one transaction-scoped advisory lock, across every replica.
pub(crate) fn exclusive<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    use diesel::{Connection as _, RunQueryDsl as _};
    if matches!(conn, DbConnection::Pg(_)) {
        return conn.transaction(|conn| {
            diesel::sql_query(format!("SELECT pg_advisory_xact_lock({EXCLUSIVE_LOCK})"))
                .execute(conn)?;
            work(conn)
        });
    }
    diesel::sql_query("BEGIN IMMEDIATE").execute(conn)?;
    match work(conn) {
        Ok(value) => {
            diesel::sql_query("COMMIT").execute(conn)?;
            Ok(value)
        }
        Err(error) => {
            let _ = diesel::sql_query("ROLLBACK").execute(conn);
            Err(error)
        }
    }
}

/// Current time as stored, for rows whose time no use case decides (directory bookkeeping).
pub fn now_micros() -> i64 {
    to_micros(std::time::SystemTime::now())
}
