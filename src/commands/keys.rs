//! `mailconnect rotate-keys`: re-seals every stored credential under the first key of
//! `MAILCONNECT_ENCRYPTION_KEYS` (see `service::key_rotation`).

use crate::config::{DatabaseSettings, KeySettings};
use crate::domain::sealing::Keyring;
use crate::domain::secret::Secret;
use crate::service::key_rotation::rotate_keys;
use crate::storage::Database;

#[derive(clap::Args)]
pub struct RotateKeysArgs {
    #[command(flatten)]
    pub keys: KeySettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// The keys, new one first: `id:base64-32-bytes`, comma-separated.
    #[arg(long, env = "MAILCONNECT_ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Secret,
}

pub async fn run(args: RotateKeysArgs) -> anyhow::Result<()> {
    let keys = Keyring::parse(&args.encryption_keys)
        .map_err(|problem| anyhow::anyhow!("MAILCONNECT_ENCRYPTION_KEYS: {problem}"))?;
    let database = Database::new(args.database.url(&args.keys.data_dir)?, 1)?;
    anyhow::ensure!(
        !database.has_pending_migrations().await?,
        "the database has pending migrations: run `mailconnect migrate` first"
    );
    let rotation = rotate_keys(&database, &keys).await?;
    println!(
        "re-sealed {} credential(s) under key {:?}",
        rotation.resealed,
        keys.primary_id()
    );
    anyhow::ensure!(
        rotation.unreadable == 0,
        "{} credential(s) open with no configured key and were left as they are; their connections need new credentials",
        rotation.unreadable
    );
    Ok(())
}
