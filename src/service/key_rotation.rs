//! `mailconnect rotate-keys`: re-seals every stored credential under the first configured key,
//! a batch per transaction, so that a crash loses nothing and a new run carries on where the
//! last one stopped. Old keys can be removed from the configuration once it reports zero left.

use std::future::Future;

use crate::domain::credentials::SealedCredentials;
use crate::domain::sealing::Keyring;

use super::StoreError;

/// Credentials per transaction.
const BATCH: usize = 100;

/// One stored credential: its account and connection (what it is bound to) and the fields.
pub struct StoredCredentials {
    pub account_id: i64,
    pub connection_id: i64,
    pub sealed: SealedCredentials,
}

pub trait CredentialStore: Send + Sync + 'static {
    /// Up to `limit` credentials sealed under another key than `key_id`, by connection id.
    fn credentials_not_under(
        &self,
        key_id: String,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredCredentials>, StoreError>> + Send;
    /// Replaces each credential whose key is still the one it was read with; one transaction.
    fn reseal(
        &self,
        batch: Vec<(String, StoredCredentials)>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

/// What a rotation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub resealed: usize,
    /// Credentials no configured key opens (left as they are; their connections need new
    /// credentials).
    pub unreadable: usize,
}

pub async fn rotate_keys<S: CredentialStore>(
    store: &S,
    keys: &Keyring,
) -> Result<Rotation, StoreError> {
    let primary = keys.primary_id().to_owned();
    let mut rotation = Rotation::default();
    let mut skipped: Vec<i64> = Vec::new();
    loop {
        let found = store
            .credentials_not_under(primary.clone(), BATCH + skipped.len())
            .await?;
        let mut batch = Vec::new();
        for stored in found {
            if skipped.contains(&stored.connection_id) {
                continue;
            }
            match stored
                .sealed
                .open(keys, stored.account_id, stored.connection_id)
            {
                Ok(credentials) => {
                    let old_key = stored.sealed.key_id.clone();
                    let sealed = credentials.seal(keys, stored.account_id, stored.connection_id);
                    batch.push((old_key, StoredCredentials { sealed, ..stored }));
                }
                Err(error) => {
                    tracing::error!(connection = stored.connection_id, %error, "credentials that no configured key opens were left as they are");
                    skipped.push(stored.connection_id);
                    rotation.unreadable += 1;
                }
            }
            if batch.len() == BATCH {
                break;
            }
        }
        if batch.is_empty() {
            return Ok(rotation);
        }
        rotation.resealed += store.reseal(batch).await?;
    }
}
