//! Domain settings, their idempotency keys and the attempted domains, in the database.

use diesel::dsl::case_when;
use diesel::prelude::*;
use diesel::upsert::excluded;
use serde::{Deserialize, Serialize};

use super::cache::Change;
use super::schema::{attempted_domains, domain_settings, domain_settings_requests};
use super::{Database, DbConnection, StoreError, exclusive, from_micros, to_micros};
use crate::domain::domain_name::DomainName;
use crate::domain::domain_settings::{
    DomainSettings, ExchangeScope, ExchangeSettings, ImapSettings, ServerSettings, SettingsKind,
};
use crate::domain::probe::{Security, ServerEndpoint};
use crate::service::attempts::{AttemptStore, AttemptTally};
use crate::service::domain_settings::{
    AttemptedDomain, DomainSettingsStore, InsertOutcome, WriteOutcome,
};

/// The servers as stored in the `settings` column (and in a connection's `servers`).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum SettingsJson {
    Imap {
        imap: EndpointJson,
        smtp: EndpointJson,
        allow_insecure_certificate: bool,
    },
    Exchange {
        url: String,
        scopes: Vec<String>,
    },
}

#[derive(Serialize, Deserialize)]
pub(super) struct EndpointJson {
    host: String,
    port: u16,
    security: String,
}

fn security_name(security: Security) -> &'static str {
    match security {
        Security::ImplicitTls => "implicit_tls",
        Security::StartTls => "starttls",
        Security::Plaintext => "plaintext",
    }
}

fn scope_name(scope: ExchangeScope) -> &'static str {
    match scope {
        ExchangeScope::Email => "email",
        ExchangeScope::Calendar => "calendar",
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("stored domain settings have an invalid {what}"))
}

impl EndpointJson {
    fn from_domain(endpoint: &ServerEndpoint) -> Self {
        Self {
            host: endpoint.host.clone(),
            port: endpoint.port,
            security: security_name(endpoint.security).to_owned(),
        }
    }

    fn into_domain(self) -> Result<ServerEndpoint, StoreError> {
        let security = [
            Security::ImplicitTls,
            Security::StartTls,
            Security::Plaintext,
        ]
        .into_iter()
        .find(|s| security_name(*s) == self.security)
        .ok_or_else(|| corrupt("security"))?;
        Ok(ServerEndpoint {
            host: self.host,
            port: self.port,
            security,
        })
    }
}

fn settings_to_json(settings: &ServerSettings) -> String {
    serde_json::to_string(&SettingsJson::from_domain(settings)).expect("settings always serialise")
}

fn settings_from_json(text: &str) -> Result<ServerSettings, StoreError> {
    serde_json::from_str::<SettingsJson>(text)
        .map_err(|_| corrupt("settings document"))?
        .into_domain()
}

impl SettingsJson {
    pub(super) fn from_domain(settings: &ServerSettings) -> Self {
        match settings {
            ServerSettings::Imap(imap) => SettingsJson::Imap {
                imap: EndpointJson::from_domain(&imap.imap_server),
                smtp: EndpointJson::from_domain(&imap.smtp_server),
                allow_insecure_certificate: imap.allow_insecure_certificate,
            },
            ServerSettings::Exchange(exchange) => SettingsJson::Exchange {
                url: exchange.exchange_url.clone(),
                scopes: exchange
                    .scopes
                    .iter()
                    .map(|scope| scope_name(*scope).to_owned())
                    .collect(),
            },
        }
    }

    pub(super) fn into_domain(self) -> Result<ServerSettings, StoreError> {
        match self {
            SettingsJson::Imap {
                imap,
                smtp,
                allow_insecure_certificate,
            } => Ok(ServerSettings::Imap(ImapSettings {
                imap_server: imap.into_domain()?,
                smtp_server: smtp.into_domain()?,
                allow_insecure_certificate,
            })),
            SettingsJson::Exchange { url, scopes } => {
                Ok(ServerSettings::Exchange(ExchangeSettings {
                    exchange_url: url,
                    scopes: scopes
                        .iter()
                        .map(|name| {
                            [ExchangeScope::Email, ExchangeScope::Calendar]
                                .into_iter()
                                .find(|scope| scope_name(*scope) == name)
                                .ok_or_else(|| corrupt("scope"))
                        })
                        .collect::<Result<_, _>>()?,
                }))
            }
        }
    }
}

/// One row of `domain_settings`; also the first result kept with an idempotency key.
#[derive(Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = domain_settings)]
struct Row {
    account_id: i64,
    domain: String,
    kind: String,
    settings: String,
    version: i64,
    create_time: i64,
    update_time: i64,
    updated_by_user_id: i64,
    last_verified_time: Option<i64>,
}

impl Row {
    fn from_domain(account_id: i64, value: &DomainSettings) -> Self {
        Self {
            account_id,
            domain: value.domain.as_str().to_owned(),
            kind: value.settings.kind().as_str().to_owned(),
            settings: settings_to_json(&value.settings),
            version: value.version,
            create_time: to_micros(value.create_time),
            update_time: to_micros(value.update_time),
            updated_by_user_id: value.updated_by_user_id,
            last_verified_time: value.last_verified_time.map(to_micros),
        }
    }

    fn into_domain(self) -> Result<DomainSettings, StoreError> {
        let settings = settings_from_json(&self.settings)?;
        if SettingsKind::from_db(&self.kind) != Some(settings.kind()) {
            return Err(corrupt("kind"));
        }
        Ok(DomainSettings {
            domain: DomainName::parse("domain", &self.domain).map_err(|_| corrupt("domain"))?,
            settings,
            version: self.version,
            create_time: from_micros(self.create_time),
            update_time: from_micros(self.update_time),
            updated_by_user_id: self.updated_by_user_id,
            last_verified_time: self.last_verified_time.map(from_micros),
        })
    }
}

fn load(
    conn: &mut DbConnection,
    account_id: i64,
    domain: &str,
) -> Result<Option<DomainSettings>, StoreError> {
    domain_settings::table
        .find((account_id, domain))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_domain)
        .transpose()
}

fn load_request(
    conn: &mut DbConnection,
    account_id: i64,
    request_id: &str,
) -> Result<Option<DomainSettings>, StoreError> {
    let stored: Option<String> = domain_settings_requests::table
        .find((account_id, request_id))
        .select(domain_settings_requests::response)
        .first(conn)
        .optional()?;
    stored
        .map(|text| {
            serde_json::from_str::<Row>(&text)
                .map_err(|_| corrupt("idempotent response"))
                .and_then(Row::into_domain)
        })
        .transpose()
}

/// Inserts the row and its idempotency key in one transaction; a unique violation means a
/// concurrent create won.
fn try_insert(
    conn: &mut DbConnection,
    row: &Row,
    request_id: Option<&str>,
) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        diesel::insert_into(domain_settings::table)
            .values(row)
            .execute(conn)?;
        if let Some(request_id) = request_id {
            diesel::insert_into(domain_settings_requests::table)
                .values((
                    domain_settings_requests::account_id.eq(row.account_id),
                    domain_settings_requests::request_id.eq(request_id),
                    domain_settings_requests::domain.eq(&row.domain),
                    domain_settings_requests::response
                        .eq(serde_json::to_string(row).expect("rows serialise")),
                    domain_settings_requests::create_time.eq(row.create_time),
                ))
                .execute(conn)?;
        }
        diesel::delete(
            attempted_domains::table
                .filter(attempted_domains::account_id.eq(row.account_id))
                .filter(attempted_domains::domain.eq(&row.domain)),
        )
        .execute(conn)?;
        Ok(())
    })
}

/// What a write of a domain's preset makes stale in the read cache.
fn settings_change(account_id: i64, domain: &DomainName) -> Change {
    Change::DomainSettings {
        account_id,
        domain: domain.as_str().to_owned(),
    }
}

impl DomainSettingsStore for Database {
    async fn insert(
        &self,
        account_id: i64,
        settings: DomainSettings,
        request_id: Option<String>,
    ) -> Result<InsertOutcome, StoreError> {
        let change = settings_change(account_id, &settings.domain);
        let outcome = self
            .run(move |conn| {
                let row = Row::from_domain(account_id, &settings);
                let domain = row.domain.clone();
                match try_insert(conn, &row, request_id.as_deref()) {
                    // What was stored (times at the database's microsecond precision).
                    Ok(()) => Ok(InsertOutcome::Created(row.into_domain()?)),
                    Err(StoreError::Conflict(_)) => {
                        if let Some(first) = request_id
                            .as_deref()
                            .map(|id| load_request(conn, account_id, id))
                            .transpose()?
                            .flatten()
                        {
                            return Ok(InsertOutcome::Replayed(first));
                        }
                        let existing = load(conn, account_id, &domain)?.ok_or_else(|| {
                            StoreError::Internal("conflict without a conflicting row".to_owned())
                        })?;
                        Ok(InsertOutcome::Exists(existing.settings.kind()))
                    }
                    Err(other) => Err(other),
                }
            })
            .await;
        self.changed(&change);
        outcome
    }

    async fn find_request(
        &self,
        account_id: i64,
        request_id: String,
    ) -> Result<Option<DomainSettings>, StoreError> {
        self.run(move |conn| load_request(conn, account_id, &request_id))
            .await
    }

    async fn get(
        &self,
        account_id: i64,
        domain: DomainName,
    ) -> Result<Option<DomainSettings>, StoreError> {
        let key = (account_id, domain.as_str().to_owned());
        self.cached(
            |cache| &cache.settings,
            key,
            || self.run(move |conn| load(conn, account_id, domain.as_str())),
        )
        .await
    }

    async fn update(
        &self,
        account_id: i64,
        settings: DomainSettings,
        expected_version: Option<i64>,
    ) -> Result<WriteOutcome<DomainSettings>, StoreError> {
        let change = settings_change(account_id, &settings.domain);
        let outcome = self
            .run(move |conn| {
                exclusive(conn, |conn| {
                    let Some(current) = load(conn, account_id, settings.domain.as_str())? else {
                        return Ok(WriteOutcome::NotFound);
                    };
                    if expected_version.is_some_and(|version| version != current.version) {
                        return Ok(WriteOutcome::Stale);
                    }
                    let next = DomainSettings {
                        version: current.version + 1,
                        ..settings
                    };
                    let row = Row::from_domain(account_id, &next);
                    // The version check in the WHERE clause makes a concurrent writer lose cleanly.
                    let changed = diesel::update(
                        domain_settings::table
                            .find((account_id, &row.domain))
                            .filter(domain_settings::version.eq(current.version)),
                    )
                    .set((
                        domain_settings::settings.eq(&row.settings),
                        domain_settings::version.eq(row.version),
                        domain_settings::update_time.eq(row.update_time),
                        domain_settings::updated_by_user_id.eq(row.updated_by_user_id),
                        domain_settings::last_verified_time.eq(row.last_verified_time),
                    ))
                    .execute(conn)?;
                    Ok(if changed == 1 {
                        WriteOutcome::Done(row.into_domain()?)
                    } else {
                        WriteOutcome::Stale
                    })
                })
            })
            .await;
        self.changed(&change);
        outcome
    }

    async fn delete(
        &self,
        account_id: i64,
        domain: DomainName,
        expected_version: Option<i64>,
    ) -> Result<WriteOutcome<()>, StoreError> {
        let change = settings_change(account_id, &domain);
        let outcome = self
            .run(move |conn| {
                exclusive(conn, |conn| {
                    let Some(current) = load(conn, account_id, domain.as_str())? else {
                        return Ok(WriteOutcome::NotFound);
                    };
                    if expected_version.is_some_and(|version| version != current.version) {
                        return Ok(WriteOutcome::Stale);
                    }
                    let deleted = diesel::delete(
                        domain_settings::table
                            .find((account_id, domain.as_str()))
                            .filter(domain_settings::version.eq(current.version)),
                    )
                    .execute(conn)?;
                    Ok(if deleted == 1 {
                        WriteOutcome::Done(())
                    } else {
                        WriteOutcome::Stale
                    })
                })
            })
            .await;
        self.changed(&change);
        outcome
    }

    async fn list(
        &self,
        account_id: i64,
        kind: Option<SettingsKind>,
        after_domain: Option<String>,
        limit: usize,
    ) -> Result<Vec<DomainSettings>, StoreError> {
        self.run(move |conn| {
            let mut query = domain_settings::table
                .filter(domain_settings::account_id.eq(account_id))
                .into_boxed();
            if let Some(kind) = kind {
                query = query.filter(domain_settings::kind.eq(kind.as_str()));
            }
            if let Some(after) = after_domain {
                query = query.filter(domain_settings::domain.gt(after));
            }
            query
                .order(domain_settings::domain)
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select(Row::as_select())
                .load(conn)?
                .into_iter()
                .map(Row::into_domain)
                .collect()
        })
        .await
    }

    async fn list_attempts(
        &self,
        account_id: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<AttemptedDomain>, StoreError> {
        self.run(move |conn| {
            let configured = domain_settings::table
                .filter(domain_settings::account_id.eq(account_id))
                .select(domain_settings::domain);
            let mut query = attempted_domains::table
                .filter(attempted_domains::account_id.eq(account_id))
                .filter(attempted_domains::domain.ne_all(configured))
                .into_boxed();
            if let Some((time, domain)) = after {
                // Newest first, then by domain: continue strictly after the last key.
                query = query.filter(
                    attempted_domains::last_attempt_time.lt(time).or(
                        attempted_domains::last_attempt_time
                            .eq(time)
                            .and(attempted_domains::domain.gt(domain)),
                    ),
                );
            }
            let rows: Vec<(String, i64, i64, i64)> = query
                .order((
                    attempted_domains::last_attempt_time.desc(),
                    attempted_domains::domain,
                ))
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select((
                    attempted_domains::domain,
                    attempted_domains::attempts,
                    attempted_domains::first_attempt_time,
                    attempted_domains::last_attempt_time,
                ))
                .load(conn)?;
            Ok(rows
                .into_iter()
                .map(|(domain, attempts, first, last)| AttemptedDomain {
                    domain,
                    attempts,
                    first_attempt_time: from_micros(first),
                    last_attempt_time: from_micros(last),
                })
                .collect())
        })
        .await
    }
}

#[derive(Insertable)]
#[diesel(table_name = attempted_domains)]
struct AttemptRow {
    account_id: i64,
    domain: String,
    attempts: i64,
    first_attempt_time: i64,
    last_attempt_time: i64,
}

/// A flush of attempts on Postgres in one statement: the rows go as five arrays, not as a list of
/// values to parse (4,000 rows: 14 ms instead of 25, benches/attempts_flush.py), and `unnest`
/// hands them to the insert in the order given. Attempts add up, the earliest first and the
/// latest last attempt time stay.
const UPSERT_ATTEMPTS_POSTGRES: &str = "\
    INSERT INTO attempted_domains \
        (account_id, domain, attempts, first_attempt_time, last_attempt_time) \
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) \
    ON CONFLICT (account_id, domain) DO UPDATE SET \
        attempts = attempted_domains.attempts + excluded.attempts, \
        first_attempt_time = LEAST(attempted_domains.first_attempt_time, excluded.first_attempt_time), \
        last_attempt_time = GREATEST(attempted_domains.last_attempt_time, excluded.last_attempt_time)";

fn upsert_attempts_postgres(conn: &mut PgConnection, rows: Vec<AttemptRow>) -> QueryResult<()> {
    use diesel::sql_types::{Array, BigInt, Text};
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        columns.0.push(row.account_id);
        columns.1.push(row.domain);
        columns.2.push(row.attempts);
        columns.3.push(row.first_attempt_time);
        columns.4.push(row.last_attempt_time);
    }
    diesel::sql_query(UPSERT_ATTEMPTS_POSTGRES)
        .bind::<Array<BigInt>, _>(columns.0)
        .bind::<Array<Text>, _>(columns.1)
        .bind::<Array<BigInt>, _>(columns.2)
        .bind::<Array<BigInt>, _>(columns.3)
        .bind::<Array<BigInt>, _>(columns.4)
        .execute(conn)?;
    Ok(())
}

/// The same on SQLite, a statement per row: Diesel cannot combine a multi-row insert with ON
/// CONFLICT there, and in process a statement costs little.
fn upsert_attempts_sqlite(conn: &mut SqliteConnection, rows: &[AttemptRow]) -> QueryResult<()> {
    use attempted_domains::{attempts, first_attempt_time, last_attempt_time};
    for row in rows {
        diesel::insert_into(attempted_domains::table)
            .values(row)
            .on_conflict((attempted_domains::account_id, attempted_domains::domain))
            .do_update()
            .set((
                attempts.eq(attempts + excluded(attempts)),
                first_attempt_time.eq(case_when(
                    excluded(first_attempt_time).lt(first_attempt_time),
                    excluded(first_attempt_time),
                )
                .otherwise(first_attempt_time)),
                last_attempt_time.eq(case_when(
                    excluded(last_attempt_time).gt(last_attempt_time),
                    excluded(last_attempt_time),
                )
                .otherwise(last_attempt_time)),
            ))
            .execute(conn)?;
    }
    Ok(())
}

impl AttemptStore for Database {
    async fn record_attempts(&self, tallies: Vec<AttemptTally>) -> Result<(), StoreError> {
        let mut rows: Vec<AttemptRow> = tallies
            .into_iter()
            .map(|tally| AttemptRow {
                account_id: tally.account_id,
                domain: tally.domain.as_str().to_owned(),
                attempts: tally.attempts,
                first_attempt_time: to_micros(tally.first_attempt_time),
                last_attempt_time: to_micros(tally.last_attempt_time),
            })
            .collect();
        // Rows locked in key order: replicas flushing at once cannot deadlock on Postgres.
        rows.sort_unstable_by(|a, b| (a.account_id, &a.domain).cmp(&(b.account_id, &b.domain)));
        self.run(move |conn| {
            match conn {
                DbConnection::Pg(c) => upsert_attempts_postgres(c, rows)?,
                DbConnection::Sqlite(c) => c.transaction(|c| upsert_attempts_sqlite(c, &rows))?,
            }
            Ok(())
        })
        .await
    }
}
