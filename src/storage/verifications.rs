//! Verification codes of custom from addresses: one pending code per connection (a salted hash),
//! its attempts counted by a conditional update, and the codes each address was sent, for the
//! rate limit.

use diesel::prelude::*;

use super::schema::{address_verifications, verification_sends};
use super::{DbConnection, StoreError, from_micros, to_micros};
use crate::service::inbox_connections::store::{AttemptOutcome, CodeStart, PendingCode};

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = address_verifications)]
struct VerificationRow {
    connection_id: i64,
    account_id: i64,
    address: String,
    salt: Vec<u8>,
    code_hash: Vec<u8>,
    expire_time: i64,
    attempts: i32,
}

/// Serialises the sends to one address on Postgres, so that concurrent calls on any replica
/// cannot pass the limit together (SQLite's write lock already does).
fn lock_address(conn: &mut DbConnection, address_key: &str) -> Result<(), StoreError> {
    if let DbConnection::Pg(pg) = conn {
        // FNV-1a of the address: a stable 64-bit key for the advisory lock.
        let key = address_key
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
                (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(key as i64)
            .execute(pg)?;
    }
    Ok(())
}

/// Inside the caller's transaction: `Err(oldest)` when the address had its codes already, else
/// the send is recorded and the code replaces any earlier one.
pub(super) fn record_code(
    conn: &mut DbConnection,
    start: &CodeStart,
) -> Result<Result<(), std::time::SystemTime>, StoreError> {
    lock_address(conn, &start.address_key)?;
    let window_start = to_micros(start.window_start);
    diesel::delete(
        verification_sends::table
            .filter(verification_sends::address_key.eq(&start.address_key))
            .filter(verification_sends::send_time.le(window_start)),
    )
    .execute(conn)?;
    let recent: Vec<i64> = verification_sends::table
        .filter(verification_sends::address_key.eq(&start.address_key))
        .order(verification_sends::send_time)
        .select(verification_sends::send_time)
        .load(conn)?;
    if i64::try_from(recent.len()).unwrap_or(i64::MAX) >= start.max_sends {
        return Ok(Err(from_micros(recent[0])));
    }
    diesel::insert_into(verification_sends::table)
        .values((
            verification_sends::id.eq((rand::random::<u64>() >> 1) as i64),
            verification_sends::address_key.eq(&start.address_key),
            verification_sends::send_time.eq(to_micros(start.now)),
        ))
        .execute(conn)?;
    diesel::delete(address_verifications::table.find(start.connection_id)).execute(conn)?;
    diesel::insert_into(address_verifications::table)
        .values(VerificationRow {
            connection_id: start.connection_id,
            account_id: start.account_id,
            address: start.code.address.clone(),
            salt: start.code.salt.clone(),
            code_hash: start.code.code_hash.clone(),
            expire_time: to_micros(start.code.expire_time),
            attempts: 0,
        })
        .execute(conn)?;
    Ok(Ok(()))
}

pub(super) fn delete_code(conn: &mut DbConnection, connection_id: i64) -> Result<(), StoreError> {
    diesel::delete(address_verifications::table.find(connection_id)).execute(conn)?;
    Ok(())
}

/// Counts an attempt with one conditional update, so that no two guesses share one.
pub(super) fn claim_attempt(
    conn: &mut DbConnection,
    account_id: i64,
    connection_id: i64,
    now: std::time::SystemTime,
    max_attempts: i32,
) -> Result<AttemptOutcome, StoreError> {
    let row = address_verifications::table
        .find(connection_id)
        .filter(address_verifications::account_id.eq(account_id));
    let claimed = diesel::update(
        row.filter(address_verifications::attempts.lt(max_attempts))
            .filter(address_verifications::expire_time.gt(to_micros(now))),
    )
    .set(address_verifications::attempts.eq(address_verifications::attempts + 1))
    .execute(conn)?
        > 0;
    let stored = row
        .select(VerificationRow::as_select())
        .first(conn)
        .optional()?;
    Ok(match (stored, claimed) {
        (None, _) => AttemptOutcome::NotStarted,
        (Some(_), false) => AttemptOutcome::Exhausted,
        (Some(row), true) => AttemptOutcome::Claimed(PendingCode {
            address: row.address,
            salt: row.salt,
            code_hash: row.code_hash,
            expire_time: from_micros(row.expire_time),
        }),
    })
}
