//! Accounts, users and teams in the database.

use diesel::prelude::*;

use super::cache::Change;
use super::inbox_connections::user_deleted;
use super::schema::{account_sending_domains, accounts, team_members, teams, users};
use super::{Database, DbConnection, StoreError, exclusive, now_micros, per_backend};
use crate::domain::directory::{Account, DataCenterId, Team, Tier, User, UserRole};
use crate::domain::email::EmailAddress;
use crate::service::directory::DirectoryStore;

#[derive(Queryable, Selectable)]
#[diesel(table_name = accounts)]
struct AccountRow {
    id: i64,
    tier: String,
    data_center: String,
    subdomain: String,
}

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = users)]
struct UserRow {
    account_id: i64,
    id: i64,
    email: String,
    super_admin: bool,
    account_access: bool,
    deleted: bool,
    update_time: i64,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = teams)]
struct TeamRow {
    account_id: i64,
    id: i64,
    name: String,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} {value:?} is not valid"))
}

impl AccountRow {
    fn into_domain(self, sending_domains: Vec<String>) -> Result<Account, StoreError> {
        Ok(Account {
            id: self.id,
            tier: Tier::from_db(&self.tier).ok_or_else(|| corrupt("tier", &self.tier))?,
            data_center: DataCenterId::parse("data_center", &self.data_center)
                .map_err(|_| corrupt("data center", &self.data_center))?,
            subdomain: self.subdomain,
            sending_domains,
        })
    }
}

impl UserRow {
    fn from_domain(user: &User) -> Self {
        Self {
            account_id: user.account_id,
            id: user.id,
            email: user.email.as_str().to_owned(),
            super_admin: user.roles.contains(&UserRole::SuperAdmin),
            account_access: user.roles.contains(&UserRole::AccountAccess),
            deleted: user.deleted,
            update_time: now_micros(),
        }
    }

    fn into_domain(self) -> Result<User, StoreError> {
        let mut roles = Vec::new();
        if self.super_admin {
            roles.push(UserRole::SuperAdmin);
        }
        if self.account_access {
            roles.push(UserRole::AccountAccess);
        }
        Ok(User {
            account_id: self.account_id,
            id: self.id,
            email: EmailAddress::parse("email", &self.email)
                .map_err(|_| corrupt("email", &self.email))?,
            roles,
            deleted: self.deleted,
        })
    }
}

pub(super) fn load_account(
    conn: &mut DbConnection,
    id: i64,
) -> Result<Option<Account>, StoreError> {
    let Some(row) = accounts::table
        .find(id)
        .select(AccountRow::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let domains = account_sending_domains::table
        .filter(account_sending_domains::account_id.eq(id))
        .order(account_sending_domains::domain)
        .select(account_sending_domains::domain)
        .load(conn)?;
    row.into_domain(domains).map(Some)
}

pub(super) fn load_user(
    conn: &mut DbConnection,
    account_id: i64,
    user_id: i64,
) -> Result<Option<User>, StoreError> {
    users::table
        .find((account_id, user_id))
        .select(UserRow::as_select())
        .first(conn)
        .optional()?
        .map(UserRow::into_domain)
        .transpose()
}

/// Every user of the account, deleted or not.
pub(super) fn load_users(
    conn: &mut DbConnection,
    account_id: i64,
) -> Result<Vec<User>, StoreError> {
    users::table
        .filter(users::account_id.eq(account_id))
        .order(users::id)
        .select(UserRow::as_select())
        .load(conn)?
        .into_iter()
        .map(UserRow::into_domain)
        .collect()
}

fn load_team_members(
    conn: &mut DbConnection,
    account_id: i64,
    team_ids: &[i64],
) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(team_members::table
        .filter(team_members::account_id.eq(account_id))
        .filter(team_members::team_id.eq_any(team_ids))
        .order((team_members::team_id, team_members::user_id))
        .select((team_members::team_id, team_members::user_id))
        .load(conn)?)
}

/// Teams with their members.
fn with_members(
    conn: &mut DbConnection,
    account_id: i64,
    rows: Vec<TeamRow>,
) -> Result<Vec<Team>, StoreError> {
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let members = load_team_members(conn, account_id, &ids)?;
    Ok(rows
        .into_iter()
        .map(|row| Team {
            member_user_ids: members
                .iter()
                .filter(|(team_id, _)| *team_id == row.id)
                .map(|&(_, user_id)| user_id)
                .collect(),
            account_id: row.account_id,
            id: row.id,
            name: row.name,
        })
        .collect())
}

/// The teams of the account among `ids`, with their members.
pub(super) fn load_teams(
    conn: &mut DbConnection,
    account_id: i64,
    ids: &[i64],
) -> Result<Vec<Team>, StoreError> {
    let rows: Vec<TeamRow> = teams::table
        .filter(teams::account_id.eq(account_id))
        .filter(teams::id.eq_any(ids))
        .order(teams::id)
        .select(TeamRow::as_select())
        .load(conn)?;
    with_members(conn, account_id, rows)
}

impl DirectoryStore for Database {
    async fn upsert_account(&self, account: Account) -> Result<Account, StoreError> {
        let change = Change::Account(account.id);
        let outcome = self
            .run(move |conn| {
                conn.transaction(|conn| {
                    let now = now_micros();
                    per_backend!(conn, |c| diesel::insert_into(accounts::table)
                        .values((
                            accounts::id.eq(account.id),
                            accounts::tier.eq(account.tier.as_str()),
                            accounts::data_center.eq(account.data_center.as_str()),
                            accounts::subdomain.eq(&account.subdomain),
                            accounts::create_time.eq(now),
                            accounts::update_time.eq(now),
                        ))
                        .on_conflict(accounts::id)
                        .do_update()
                        .set((
                            accounts::tier.eq(account.tier.as_str()),
                            accounts::data_center.eq(account.data_center.as_str()),
                            accounts::subdomain.eq(&account.subdomain),
                            accounts::update_time.eq(now),
                        ))
                        .execute(c))?;
                    diesel::delete(
                        account_sending_domains::table
                            .filter(account_sending_domains::account_id.eq(account.id)),
                    )
                    .execute(conn)?;
                    for domain in &account.sending_domains {
                        diesel::insert_into(account_sending_domains::table)
                            .values((
                                account_sending_domains::account_id.eq(account.id),
                                account_sending_domains::domain.eq(domain),
                            ))
                            .execute(conn)?;
                    }
                    load_account(conn, account.id)?.ok_or_else(|| {
                        StoreError::Internal("account vanished in its own write".into())
                    })
                })
            })
            .await;
        self.changed(&change);
        outcome
    }

    async fn get_account(&self, id: i64) -> Result<Option<Account>, StoreError> {
        self.run(move |conn| load_account(conn, id)).await
    }

    async fn upsert_user(&self, user: User) -> Result<User, StoreError> {
        self.run(move |conn| {
            conn.transaction(|conn| {
                let row = UserRow::from_domain(&user);
                per_backend!(conn, |c| diesel::insert_into(users::table)
                    .values(&row)
                    .on_conflict((users::account_id, users::id))
                    .do_update()
                    .set(&row)
                    .execute(c))?;
                load_user(conn, user.account_id, user.id)?
                    .ok_or_else(|| StoreError::Internal("user vanished in its own write".into()))
            })
        })
        .await
    }

    async fn mark_user_deleted(
        &self,
        account_id: i64,
        user_id: i64,
    ) -> Result<Option<User>, StoreError> {
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let was_deleted = load_user(conn, account_id, user_id)?.map(|user| user.deleted);
                let now = now_micros();
                diesel::update(users::table.find((account_id, user_id)))
                    .set((users::deleted.eq(true), users::update_time.eq(now)))
                    .execute(conn)?;
                // Once, when the user goes: their mailboxes follow (seed 004's deleted user).
                if was_deleted == Some(false) {
                    user_deleted(conn, account_id, user_id, now)?;
                }
                load_user(conn, account_id, user_id)
            })
        })
        .await
    }

    async fn get_user(&self, account_id: i64, user_id: i64) -> Result<Option<User>, StoreError> {
        self.run(move |conn| load_user(conn, account_id, user_id))
            .await
    }

    async fn list_users(
        &self,
        account_id: i64,
        after_id: i64,
        limit: usize,
        show_deleted: bool,
    ) -> Result<Vec<User>, StoreError> {
        self.run(move |conn| {
            let mut query = users::table
                .filter(users::account_id.eq(account_id))
                .filter(users::id.gt(after_id))
                .into_boxed();
            if !show_deleted {
                query = query.filter(users::deleted.eq(false));
            }
            query
                .order(users::id)
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select(UserRow::as_select())
                .load(conn)?
                .into_iter()
                .map(UserRow::into_domain)
                .collect()
        })
        .await
    }

    async fn existing_user_ids(
        &self,
        account_id: i64,
        user_ids: Vec<i64>,
    ) -> Result<Vec<i64>, StoreError> {
        self.run(move |conn| {
            Ok(users::table
                .filter(users::account_id.eq(account_id))
                .filter(users::id.eq_any(&user_ids))
                .select(users::id)
                .load(conn)?)
        })
        .await
    }

    async fn upsert_team(&self, team: Team) -> Result<Team, StoreError> {
        self.run(move |conn| {
            conn.transaction(|conn| {
                let now = now_micros();
                per_backend!(conn, |c| diesel::insert_into(teams::table)
                    .values((
                        teams::account_id.eq(team.account_id),
                        teams::id.eq(team.id),
                        teams::name.eq(&team.name),
                        teams::update_time.eq(now),
                    ))
                    .on_conflict((teams::account_id, teams::id))
                    .do_update()
                    .set((teams::name.eq(&team.name), teams::update_time.eq(now)))
                    .execute(c))?;
                diesel::delete(
                    team_members::table
                        .filter(team_members::account_id.eq(team.account_id))
                        .filter(team_members::team_id.eq(team.id)),
                )
                .execute(conn)?;
                for user_id in &team.member_user_ids {
                    diesel::insert_into(team_members::table)
                        .values((
                            team_members::account_id.eq(team.account_id),
                            team_members::team_id.eq(team.id),
                            team_members::user_id.eq(user_id),
                        ))
                        .execute(conn)?;
                }
                Ok(team)
            })
        })
        .await
    }

    async fn list_teams(
        &self,
        account_id: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Team>, StoreError> {
        self.run(move |conn| {
            let rows: Vec<TeamRow> = teams::table
                .filter(teams::account_id.eq(account_id))
                .filter(teams::id.gt(after_id))
                .order(teams::id)
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select(TeamRow::as_select())
                .load(conn)?;
            with_members(conn, account_id, rows)
        })
        .await
    }
}
