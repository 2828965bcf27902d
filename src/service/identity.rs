//! Identity follows the directory: a token names a user and their roles when it was minted, but
//! what the caller may do now is what the directory says now. A user the directory marks deleted
//! is refused (UNAUTHENTICATED, reason USER_DELETED) and roles the directory no longer grants are
//! dropped, however long the token still runs. A user the directory has not been told about yet
//! keeps the token's roles (the platform pushes users in after it mints their first tokens).
//!
//! What the directory says is remembered per user for at most [`STANDING_TTL`] by the service's
//! clock; this replica's own directory writes forget it at once. So a change is enforced at once
//! on the replica that took it and within [`STANDING_TTL`] on the others (README, "Identity").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, SystemTime};

use quick_cache::sync::Cache;

use super::ServiceError;
use super::clock::Clock;
use super::directory::DirectoryStore;
use crate::domain::directory::UserRole;
use crate::domain::principal::{Principal, Role};

/// How long another replica's directory change may go unnoticed here.
pub const STANDING_TTL: Duration = Duration::from_secs(10);

/// Users whose standing is remembered.
const USERS: usize = 100_000;

/// A user as the directory knows them: `None` when it does not.
#[derive(Debug, Clone)]
struct Standing {
    deleted: bool,
    roles: Vec<UserRole>,
}

pub struct Identities<S> {
    store: S,
    clock: Arc<dyn Clock>,
    known: Cache<(i64, i64), (SystemTime, Option<Standing>)>,
    /// Moves with every `forget`: a read that saw it move keeps nothing (it may predate the write).
    epoch: AtomicU64,
}

impl<S: DirectoryStore> Identities<S> {
    pub fn new(store: S, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            known: Cache::new(USERS),
            epoch: AtomicU64::new(0),
        }
    }

    /// The principal a verified token names, as the directory allows it now.
    pub async fn current(&self, mut principal: Principal) -> Result<Principal, ServiceError> {
        let (Some(account_id), Some(user_id), false) = (
            principal.account_id,
            principal.user_id,
            principal.is_platform(),
        ) else {
            return Ok(principal);
        };
        let Some(standing) = self.standing(account_id, user_id).await? else {
            return Ok(principal);
        };
        if standing.deleted {
            return Err(ServiceError::Unauthenticated {
                reason: "USER_DELETED",
                message: format!("user {user_id} of account {account_id} was deleted"),
            });
        }
        principal.roles.retain(|role| match role {
            Role::SuperAdmin => standing.roles.contains(&UserRole::SuperAdmin),
            Role::AccountAccess => standing.roles.contains(&UserRole::AccountAccess),
            Role::Platform => true,
        });
        Ok(principal)
    }

    /// Called after this replica changed the user in the directory.
    pub fn forget(&self, account_id: i64, user_id: i64) {
        self.epoch.fetch_add(1, SeqCst);
        self.known.remove(&(account_id, user_id));
    }

    async fn standing(
        &self,
        account_id: i64,
        user_id: i64,
    ) -> Result<Option<Standing>, ServiceError> {
        let now = self.clock.now();
        let key = (account_id, user_id);
        if let Some((read_at, standing)) = self.known.get(&key)
            && now
                .duration_since(read_at)
                .is_ok_and(|age| age < STANDING_TTL)
        {
            return Ok(standing);
        }
        let epoch = self.epoch.load(SeqCst);
        let standing = self
            .store
            .get_user(account_id, user_id)
            .await?
            .map(|user| Standing {
                deleted: user.deleted,
                roles: user.roles,
            });
        if self.epoch.load(SeqCst) == epoch {
            self.known.insert(key, (now, standing.clone()));
            // A `forget` between the check and the insert may have removed nothing.
            if self.epoch.load(SeqCst) != epoch {
                self.known.remove(&key);
            }
        }
        Ok(standing)
    }
}
