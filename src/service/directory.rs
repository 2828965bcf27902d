//! The directory use cases: the platform writes accounts, users and teams; users read their own.

use std::future::Future;
use std::sync::Arc;

use crate::domain::Violations;
use crate::domain::directory::{
    Account, AccountInput, DataCenterId, Team, TeamInput, User, UserInput,
};
use crate::domain::principal::{Principal, Role};
use crate::domain::violation::positive_id;
use crate::service::StoreError;

use super::ServiceError;
use super::identity::Identities;
use super::pagination::{Page, PageRequest, bad_token, paginate};

/// Where the directory is kept.
pub trait DirectoryStore: Send + Sync + 'static {
    fn upsert_account(
        &self,
        account: Account,
    ) -> impl Future<Output = Result<Account, StoreError>> + Send;
    fn get_account(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;
    /// Fails with `MissingReference` when the account does not exist.
    fn upsert_user(&self, user: User) -> impl Future<Output = Result<User, StoreError>> + Send;
    fn mark_user_deleted(
        &self,
        account_id: i64,
        user_id: i64,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    fn get_user(
        &self,
        account_id: i64,
        user_id: i64,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    /// Users with an id above `after_id`, ascending, at most `limit`.
    fn list_users(
        &self,
        account_id: i64,
        after_id: i64,
        limit: usize,
        show_deleted: bool,
    ) -> impl Future<Output = Result<Vec<User>, StoreError>> + Send;
    /// Which of `user_ids` are users of the account.
    fn existing_user_ids(
        &self,
        account_id: i64,
        user_ids: Vec<i64>,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;
    /// Fails with `MissingReference` when the account or a member does not exist.
    fn upsert_team(&self, team: Team) -> impl Future<Output = Result<Team, StoreError>> + Send;
    fn list_teams(
        &self,
        account_id: i64,
        after_id: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Team>, StoreError>> + Send;
}

pub struct DirectoryService<S> {
    store: S,
    default_data_center: DataCenterId,
    /// Told about each user this replica writes, so that its callers' rights follow at once.
    identities: Arc<Identities<S>>,
}

fn account_not_found(account_id: i64) -> ServiceError {
    ServiceError::not_found(
        "ACCOUNT_NOT_FOUND",
        format!("account {account_id} not found"),
    )
}

fn user_not_found(account_id: i64, user_id: i64) -> ServiceError {
    ServiceError::not_found(
        "USER_NOT_FOUND",
        format!("user {user_id} of account {account_id} not found"),
    )
}

fn require_platform(principal: &Principal, action: &str) -> Result<(), ServiceError> {
    ServiceError::require_any(&principal.roles, &[Role::Platform], action)
}

/// Checks the account id of a read and that the caller may see it; another tenant's account is
/// answered exactly like a missing one.
fn readable_account(principal: &Principal, account_id: i64) -> Result<i64, ServiceError> {
    let account_id = positive_id("account_id", account_id)?;
    if principal.can_read_account(account_id) {
        Ok(account_id)
    } else {
        Err(account_not_found(account_id))
    }
}

/// Decodes a keyset page request whose key is an id.
fn id_page(request: &PageRequest<'_>, filter: &str) -> Result<(i64, usize), ServiceError> {
    let (size, after) = request.decode(filter)?;
    let after = after
        .map(|key| key.parse::<i64>().map_err(|_| bad_token()))
        .transpose()?;
    Ok((after.unwrap_or(0), size))
}

impl<S: DirectoryStore> DirectoryService<S> {
    pub fn new(
        store: S,
        default_data_center: DataCenterId,
        identities: Arc<Identities<S>>,
    ) -> Self {
        Self {
            store,
            default_data_center,
            identities,
        }
    }

    pub async fn upsert_account(
        &self,
        principal: &Principal,
        input: AccountInput<'_>,
    ) -> Result<Account, ServiceError> {
        require_platform(principal, "UpsertAccount")?;
        let account = input.parse("account", &self.default_data_center)?;
        Ok(self.store.upsert_account(account).await?)
    }

    pub async fn get_account(
        &self,
        principal: &Principal,
        account_id: i64,
    ) -> Result<Account, ServiceError> {
        let account_id = readable_account(principal, account_id)?;
        self.store
            .get_account(account_id)
            .await?
            .ok_or_else(|| account_not_found(account_id))
    }

    pub async fn upsert_user(
        &self,
        principal: &Principal,
        input: UserInput<'_>,
    ) -> Result<User, ServiceError> {
        require_platform(principal, "UpsertUser")?;
        let user = input.parse("user")?;
        let (account_id, user_id) = (user.account_id, user.id);
        let written = match self.store.upsert_user(user).await {
            Err(StoreError::MissingReference(_)) => Err(account_not_found(account_id)),
            other => Ok(other?),
        };
        self.identities.forget(account_id, user_id);
        written
    }

    pub async fn delete_user(
        &self,
        principal: &Principal,
        account_id: i64,
        user_id: i64,
    ) -> Result<User, ServiceError> {
        require_platform(principal, "DeleteUser")?;
        let (account_id, user_id) = user_key(account_id, user_id)?;
        let deleted = self.store.mark_user_deleted(account_id, user_id).await;
        self.identities.forget(account_id, user_id);
        deleted?.ok_or_else(|| user_not_found(account_id, user_id))
    }

    pub async fn get_user(
        &self,
        principal: &Principal,
        account_id: i64,
        user_id: i64,
    ) -> Result<User, ServiceError> {
        let (account_id, user_id) = user_key(account_id, user_id)?;
        if !principal.can_read_account(account_id) {
            return Err(user_not_found(account_id, user_id));
        }
        self.store
            .get_user(account_id, user_id)
            .await?
            .ok_or_else(|| user_not_found(account_id, user_id))
    }

    pub async fn list_users(
        &self,
        principal: &Principal,
        account_id: i64,
        show_deleted: bool,
        page: PageRequest<'_>,
    ) -> Result<Page<User>, ServiceError> {
        let account_id = readable_account(principal, account_id)?;
        let filter = format!("users:{account_id}:{show_deleted}");
        let (after, size) = id_page(&page, &filter)?;
        let users = self
            .store
            .list_users(account_id, after, size + 1, show_deleted)
            .await?;
        Ok(paginate(users, size, &filter, |user| user.id.to_string()))
    }

    pub async fn upsert_team(
        &self,
        principal: &Principal,
        input: TeamInput<'_>,
    ) -> Result<Team, ServiceError> {
        require_platform(principal, "UpsertTeam")?;
        let raw_members = input.member_user_ids;
        let team = input.parse("team")?;
        if self.store.get_account(team.account_id).await?.is_none() {
            return Err(account_not_found(team.account_id));
        }
        let known = self
            .store
            .existing_user_ids(team.account_id, team.member_user_ids.clone())
            .await?;
        let mut violations = Violations::new();
        for (index, user_id) in raw_members.iter().enumerate() {
            if !known.contains(user_id) {
                violations.add(
                    format!("team.member_user_ids[{index}]"),
                    format!(
                        "user {user_id} is not a user of account {}: upsert the user first",
                        team.account_id
                    ),
                );
            }
        }
        violations.finish(|| ())?;
        match self.store.upsert_team(team).await {
            // A user or the account vanished between the check and the write.
            // The database's text names its constraints: it is logged, never answered.
            Err(StoreError::MissingReference(cause)) => {
                tracing::warn!(%cause, "a team's account or member vanished during its write");
                Err(ServiceError::FailedPrecondition {
                    reason: "DIRECTORY_CHANGED",
                    message: "the account or a member of the team was deleted while the team \
                              was written: retry"
                        .to_owned(),
                    metadata: Default::default(),
                })
            }
            other => Ok(other?),
        }
    }

    pub async fn list_teams(
        &self,
        principal: &Principal,
        account_id: i64,
        page: PageRequest<'_>,
    ) -> Result<Page<Team>, ServiceError> {
        let account_id = readable_account(principal, account_id)?;
        let filter = format!("teams:{account_id}");
        let (after, size) = id_page(&page, &filter)?;
        let teams = self.store.list_teams(account_id, after, size + 1).await?;
        Ok(paginate(teams, size, &filter, |team| team.id.to_string()))
    }
}

fn user_key(account_id: i64, user_id: i64) -> Result<(i64, i64), ServiceError> {
    let mut violations = Violations::new();
    let account_id = violations.check(positive_id("account_id", account_id));
    let user_id = violations.check(positive_id("user_id", user_id));
    Ok(violations.finish(|| (account_id.unwrap_or_default(), user_id.unwrap_or_default()))?)
}
