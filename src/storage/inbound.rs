//! What routing inbound mail reads and writes: the channel a forwarding address belongs to, the
//! channel's arrival time and setup test message, and round-robin rotations shared by every
//! replica.

use diesel::prelude::*;

use super::schema::{round_robin_picks, round_robin_positions};
use super::{DbConnection, StoreError, to_micros};

/// Serialises the picks of one channel on Postgres (SQLite's write lock already does), so that
/// two replicas never hand out the same position.
fn lock_rotation(conn: &mut DbConnection, connection_id: i64) -> Result<(), StoreError> {
    if let DbConnection::Pg(pg) = conn {
        // The key space of this lock: "rrob" in the high half, the connection in the low half.
        const ROTATION_LOCK: i64 = 0x7272_6f62 << 32;
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(ROTATION_LOCK ^ connection_id)
            .execute(pg)?;
    }
    Ok(())
}

/// Inside the caller's transaction: the user a message gets. A Message-ID seen before gets the
/// same user; a new one (or none) the member at the rotation's position, which then advances.
pub(super) fn pick(
    conn: &mut DbConnection,
    connection_id: i64,
    message_id: &str,
    members: &[i64],
    now: std::time::SystemTime,
    keep_since: std::time::SystemTime,
) -> Result<Option<i64>, StoreError> {
    lock_rotation(conn, connection_id)?;
    if !message_id.is_empty() {
        let earlier = round_robin_picks::table
            .find((connection_id, message_id))
            .select(round_robin_picks::user_id)
            .first::<i64>(conn)
            .optional()?;
        if earlier.is_some() {
            return Ok(earlier);
        }
    }
    if members.is_empty() {
        return Ok(None);
    }
    let position = round_robin_positions::table
        .find(connection_id)
        .select(round_robin_positions::position)
        .first::<i64>(conn)
        .optional()?;
    let at = position.unwrap_or(0);
    let user_id = members[usize::try_from(at.rem_euclid(members.len() as i64)).unwrap_or(0)];
    match position {
        Some(_) => {
            diesel::update(round_robin_positions::table.find(connection_id))
                .set(round_robin_positions::position.eq(at.wrapping_add(1)))
                .execute(conn)?;
        }
        None => {
            diesel::insert_into(round_robin_positions::table)
                .values((
                    round_robin_positions::connection_id.eq(connection_id),
                    round_robin_positions::position.eq(1_i64),
                ))
                .execute(conn)?;
        }
    }
    if !message_id.is_empty() {
        diesel::delete(
            round_robin_picks::table
                .filter(round_robin_picks::connection_id.eq(connection_id))
                .filter(round_robin_picks::pick_time.lt(to_micros(keep_since))),
        )
        .execute(conn)?;
        diesel::insert_into(round_robin_picks::table)
            .values((
                round_robin_picks::connection_id.eq(connection_id),
                round_robin_picks::message_id.eq(message_id),
                round_robin_picks::user_id.eq(user_id),
                round_robin_picks::pick_time.eq(to_micros(now)),
            ))
            .execute(conn)?;
    }
    Ok(Some(user_id))
}

/// A deleted connection's rotation goes with it.
pub(super) fn forget(conn: &mut DbConnection, connection_id: i64) -> Result<(), StoreError> {
    diesel::delete(
        round_robin_picks::table.filter(round_robin_picks::connection_id.eq(connection_id)),
    )
    .execute(conn)?;
    diesel::delete(round_robin_positions::table.find(connection_id)).execute(conn)?;
    Ok(())
}
