//! The embedded default's first run: an empty directory gets the account and the user of the
//! printed development token, so that every command `scripts/run` prints works as shown.

use std::sync::Arc;

use crate::domain::directory::{AccountInput, DataCenterId, Tier, UserInput, UserRole};
use crate::domain::principal::{Principal, Role};
use crate::service::clock::SystemClock;
use crate::service::directory::{DirectoryService, DirectoryStore};
use crate::service::identity::Identities;
use crate::storage::Database;

/// The account and user of the development token.
pub const DEV_ACCOUNT: i64 = 1;
pub const DEV_USER: i64 = 1;

/// Migrates, then seeds account 1 (professional, subdomain `acme`, sending domain `acme.example`)
/// and its super admin, user 1 (`admin@acme.example`), unless account 1 exists. Returns whether
/// it seeded.
pub async fn seed_directory(
    database: &Database,
    data_center: DataCenterId,
) -> anyhow::Result<bool> {
    database.migrate().await?;
    if database.get_account(DEV_ACCOUNT).await?.is_some() {
        return Ok(false);
    }
    // A one-off process: nobody's calls here follow what the seed writes.
    let identities = Identities::new(database.clone(), Arc::new(SystemClock));
    let directory = DirectoryService::new(database.clone(), data_center, Arc::new(identities));
    let platform = Principal {
        subject: "dev:seed".to_owned(),
        account_id: None,
        user_id: None,
        roles: vec![Role::Platform],
    };
    directory
        .upsert_account(
            &platform,
            AccountInput {
                id: DEV_ACCOUNT,
                tier: Some(Tier::Professional),
                data_center: "",
                subdomain: "acme",
                sending_domains: &["acme.example".to_owned()],
            },
        )
        .await?;
    directory
        .upsert_user(
            &platform,
            UserInput {
                account_id: DEV_ACCOUNT,
                id: DEV_USER,
                email: "admin@acme.example",
                roles: vec![Some(UserRole::SuperAdmin)],
            },
        )
        .await?;
    Ok(true)
}
