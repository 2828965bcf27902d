//! Allowlists in the database: data centers with their version, current ranges, and the change
//! history.

use std::collections::{BTreeSet, HashMap};

use diesel::prelude::*;
use ipnet::IpNet;

use std::sync::Arc;

use super::cache::Change;
use super::schema::{accounts, allowlist_changes, allowlist_data_centers, allowlist_ranges};
use super::{Database, DbConnection, StoreError, per_backend};
use crate::domain::allowlist::{AllowlistChange, Diff, Protocol, RangeRecord};
use crate::domain::directory::DataCenterId;
use crate::service::allowlist::{AllowlistStore, Publication, PublishOutcome, StoredList};

/// Rows per statement in bulk writes, well under both backends' bind-parameter limits.
const CHUNK: usize = 1000;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = allowlist_ranges)]
struct RangeRow {
    data_center: String,
    protocol: String,
    cidr: String,
    effective_time: i64,
    retire_time: Option<i64>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = allowlist_changes)]
struct ChangeRow {
    data_center: String,
    version: i64,
    protocol: String,
    publish_time: i64,
    effective_time: i64,
    added: String,
    removed: String,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} {value:?} is not valid"))
}

fn data_center(value: &str) -> Result<DataCenterId, StoreError> {
    DataCenterId::parse("data_center", value).map_err(|_| corrupt("data center", value))
}

fn protocol(value: &str) -> Result<Protocol, StoreError> {
    Protocol::from_db(value).ok_or_else(|| corrupt("protocol", value))
}

fn cidr(value: &str) -> Result<IpNet, StoreError> {
    value.parse().map_err(|_| corrupt("CIDR", value))
}

fn join(networks: &[IpNet]) -> String {
    networks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn split(text: &str) -> Result<Vec<IpNet>, StoreError> {
    text.lines().map(cidr).collect()
}

impl RangeRow {
    fn into_domain(self) -> Result<RangeRecord, StoreError> {
        Ok(RangeRecord {
            data_center: data_center(&self.data_center)?,
            protocol: protocol(&self.protocol)?,
            cidr: cidr(&self.cidr)?,
            effective_time: self.effective_time,
            retire_time: self.retire_time,
        })
    }
}

impl ChangeRow {
    fn into_domain(self) -> Result<AllowlistChange, StoreError> {
        Ok(AllowlistChange {
            data_center: data_center(&self.data_center)?,
            version: self.version,
            protocol: protocol(&self.protocol)?,
            publish_time: self.publish_time,
            effective_time: self.effective_time,
            diff: Diff {
                added: split(&self.added)?,
                removed: split(&self.removed)?,
            },
        })
    }
}

fn load_records(
    conn: &mut DbConnection,
    data_center: Option<&str>,
) -> Result<Vec<RangeRecord>, StoreError> {
    let mut query = allowlist_ranges::table
        .select(RangeRow::as_select())
        .order((allowlist_ranges::data_center, allowlist_ranges::protocol))
        .into_boxed();
    if let Some(data_center) = data_center {
        query = query.filter(allowlist_ranges::data_center.eq(data_center.to_owned()));
    }
    query
        .load(conn)?
        .into_iter()
        .map(RangeRow::into_domain)
        .collect()
}

fn generation(conn: &mut DbConnection) -> Result<i64, StoreError> {
    // Every publication raises its data center's version by one (under the row's lock), so the
    // sum rises with each committed one; one row per data center keeps this read cheap, where a
    // count of the changes would grow with the history.
    let versions: Vec<i64> = allowlist_data_centers::table
        .select(allowlist_data_centers::version)
        .load(conn)?;
    Ok(versions.iter().sum())
}

/// The data center's version, 0 if it was never published to.
fn current_version(conn: &mut DbConnection, id: &str) -> Result<(i64, Option<i64>), StoreError> {
    Ok(allowlist_data_centers::table
        .find(id)
        .select((
            allowlist_data_centers::version,
            allowlist_data_centers::update_time,
        ))
        .first(conn)
        .optional()?
        .unwrap_or((0, None)))
}

/// Creates the data center's row if needed and locks it, so that publications of one data
/// center take turns: a row lock on Postgres, the database's write lock on SQLite (taken by the
/// transaction's first statement being a write, so it never has to upgrade a read).
fn lock_data_center(conn: &mut DbConnection, id: &str) -> Result<(), StoreError> {
    per_backend!(conn, |c| diesel::insert_into(allowlist_data_centers::table)
        .values((
            allowlist_data_centers::id.eq(id),
            allowlist_data_centers::version.eq(0_i64),
        ))
        .on_conflict(allowlist_data_centers::id)
        .do_nothing()
        .execute(c))?;
    diesel::update(allowlist_data_centers::table.find(id))
        .set(allowlist_data_centers::version.eq(allowlist_data_centers::version))
        .execute(conn)?;
    Ok(())
}

fn publish_locked(
    conn: &mut DbConnection,
    publication: &Publication,
) -> Result<PublishOutcome, StoreError> {
    let id = publication.data_center.as_str();
    let protocol = publication.protocol.as_str();
    let now = publication.publish_time;
    if !publication.validate_only {
        lock_data_center(conn, id)?;
    }
    let (current, _) = current_version(conn, id)?;
    if publication
        .expected_version
        .is_some_and(|expected| expected != current)
    {
        return Ok(PublishOutcome::Stale {
            current_version: current,
        });
    }
    let in_protocol = allowlist_ranges::data_center
        .eq(id)
        .and(allowlist_ranges::protocol.eq(protocol));
    let rows: Vec<RangeRow> = allowlist_ranges::table
        .filter(in_protocol)
        .select(RangeRow::as_select())
        .load(conn)?;
    let mut target = BTreeSet::new();
    // Ranges removed with advance notice that are still listed, by CIDR: their effective time.
    let mut retiring = HashMap::new();
    for row in &rows {
        match row.retire_time {
            None => {
                target.insert(cidr(&row.cidr)?);
            }
            Some(retire) if retire > now => {
                retiring.insert(cidr(&row.cidr)?, row.effective_time);
            }
            Some(_) => {}
        }
    }
    let diff = Diff::between(&target, &publication.ranges);
    if diff.is_empty() || publication.validate_only {
        return Ok(PublishOutcome::NotPublished {
            version: current,
            diff,
        });
    }
    let effective = publication.effective_time;
    diesel::delete(
        allowlist_ranges::table
            .filter(in_protocol)
            .filter(allowlist_ranges::retire_time.le(now)),
    )
    .execute(conn)?;
    for chunk in diff.removed.chunks(CHUNK) {
        let cidrs: Vec<String> = chunk.iter().map(ToString::to_string).collect();
        let rows = allowlist_ranges::table
            .filter(in_protocol)
            .filter(allowlist_ranges::cidr.eq_any(cidrs));
        if effective > now {
            diesel::update(rows)
                .set(allowlist_ranges::retire_time.eq(Some(effective)))
                .execute(conn)?;
        } else {
            diesel::delete(rows).execute(conn)?;
        }
    }
    let mut new_rows = Vec::new();
    for added in &diff.added {
        match retiring.get(added) {
            // Announced for removal and now kept: it never stopped being listed.
            Some(&since) => {
                diesel::update(allowlist_ranges::table.find((id, protocol, added.to_string())))
                    .set((
                        allowlist_ranges::retire_time.eq(None::<i64>),
                        allowlist_ranges::effective_time.eq(since.min(effective)),
                    ))
                    .execute(conn)?;
            }
            None => new_rows.push(RangeRow {
                data_center: id.to_owned(),
                protocol: protocol.to_owned(),
                cidr: added.to_string(),
                effective_time: effective,
                retire_time: None,
            }),
        }
    }
    for chunk in new_rows.chunks(CHUNK) {
        per_backend!(conn, |c| diesel::insert_into(allowlist_ranges::table)
            .values(chunk)
            .execute(c))?;
    }
    let version = current + 1;
    diesel::update(allowlist_data_centers::table.find(id))
        .set((
            allowlist_data_centers::version.eq(version),
            allowlist_data_centers::update_time.eq(Some(now)),
        ))
        .execute(conn)?;
    let change = ChangeRow {
        data_center: id.to_owned(),
        version,
        protocol: protocol.to_owned(),
        publish_time: now,
        effective_time: effective,
        added: join(&diff.added),
        removed: join(&diff.removed),
    };
    diesel::insert_into(allowlist_changes::table)
        .values(&change)
        .execute(conn)?;
    change.into_domain().map(PublishOutcome::Published)
}

impl AllowlistStore for Database {
    async fn account_data_center(
        &self,
        account_id: i64,
    ) -> Result<Option<DataCenterId>, StoreError> {
        self.cached(
            |cache| &cache.data_centers,
            account_id,
            || {
                self.run(move |conn| {
                    accounts::table
                        .find(account_id)
                        .select(accounts::data_center)
                        .first::<String>(conn)
                        .optional()?
                        .map(|value| data_center(&value))
                        .transpose()
                })
            },
        )
        .await
    }

    async fn version(&self, data_center: &DataCenterId) -> Result<i64, StoreError> {
        let id = data_center.as_str().to_owned();
        self.run(move |conn| Ok(current_version(conn, &id)?.0))
            .await
    }

    async fn list(&self, data_center: &DataCenterId) -> Result<Arc<StoredList>, StoreError> {
        let id = data_center.as_str().to_owned();
        self.cached(
            |cache| &cache.allowlists,
            id.clone(),
            || {
                self.run(move |conn| {
                    conn.transaction(|conn| {
                        // The version is read first: on Postgres a concurrent publication can
                        // only make the rows newer than the etag, which a conditional
                        // publication then refuses.
                        let (version, update_time) = current_version(conn, &id)?;
                        let records = load_records(conn, Some(&id))?;
                        Ok(Arc::new(StoredList {
                            version,
                            update_time,
                            records,
                        }))
                    })
                })
            },
        )
        .await
    }

    async fn generation(&self) -> Result<i64, StoreError> {
        self.cached(|cache| &cache.generation, (), || self.run(generation))
            .await
    }

    async fn all_records(&self) -> Result<(i64, Vec<RangeRecord>), StoreError> {
        self.run(|conn| {
            conn.transaction(|conn| {
                // Read first, so that a publication in between makes the next call rebuild.
                let generation = generation(conn)?;
                Ok((generation, load_records(conn, None)?))
            })
        })
        .await
    }

    async fn changes_after(
        &self,
        data_center: &DataCenterId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AllowlistChange>, StoreError> {
        let id = data_center.as_str().to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            allowlist_changes::table
                .filter(allowlist_changes::data_center.eq(id))
                .filter(allowlist_changes::version.gt(after))
                .order(allowlist_changes::version)
                .limit(limit)
                .select(ChangeRow::as_select())
                .load(conn)?
                .into_iter()
                .map(ChangeRow::into_domain)
                .collect()
        })
        .await
    }

    async fn has_history(
        &self,
        data_center: &DataCenterId,
        protocol: Protocol,
    ) -> Result<bool, StoreError> {
        let id = data_center.as_str().to_owned();
        self.run(move |conn| {
            Ok(diesel::select(diesel::dsl::exists(
                allowlist_changes::table
                    .filter(allowlist_changes::data_center.eq(id))
                    .filter(allowlist_changes::protocol.eq(protocol.as_str())),
            ))
            .get_result(conn)?)
        })
        .await
    }

    async fn publish(&self, publication: Publication) -> Result<PublishOutcome, StoreError> {
        let change = Change::Allowlist(publication.data_center.as_str().to_owned());
        let outcome = self
            .run(move |conn| conn.transaction(|conn| publish_locked(conn, &publication)))
            .await;
        self.changed(&change);
        outcome
    }
}
