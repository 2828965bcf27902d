//! Configuration: defaults, then `MAILCONNECT_*` environment variables, then flags of the same
//! names (clap reads both). Secrets are wrapped so that they never print.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;

use crate::domain::directory::DataCenterId;
use crate::grpc::server::ServerSettings;
use crate::storage::DatabaseUrl;
use crate::tokens::TokenKeys;

/// A value that must not appear in logs or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Where keys and the embedded database live, and which keys verify tokens. Shared by `serve`,
/// `migrate` and `token`, so that a minted token verifies on the server next to it.
#[derive(clap::Args, Debug, Clone)]
pub struct KeySettings {
    /// Folder for the embedded SQLite database and the development JWT secret.
    #[arg(
        long,
        env = "MAILCONNECT_DATA_DIR",
        default_value = "./mailconnect-data"
    )]
    pub data_dir: PathBuf,
    /// HS256 secret that verifies (and mints) tokens. Without it and without public keys, a
    /// development secret is created once in the data directory.
    #[arg(long, env = "MAILCONNECT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// Comma-separated paths of PEM public keys (RSA → RS256, Ed25519 → EdDSA, P-256 → ES256)
    /// that verify tokens from the platform's identity provider.
    #[arg(long, env = "MAILCONNECT_JWT_PUBLIC_KEYS", value_delimiter = ',')]
    pub jwt_public_keys: Vec<PathBuf>,
}

/// Name of the development secret's file in the data directory.
const DEV_SECRET_FILE: &str = "jwt-secret";

impl KeySettings {
    /// Whether tokens are verified with the development secret of the data directory.
    pub fn uses_dev_secret(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_keys.is_empty()
    }

    /// Loads the configured keys, or creates (once) and loads the development secret.
    pub fn token_keys(&self) -> anyhow::Result<TokenKeys> {
        let mut public = Vec::new();
        for path in &self.jwt_public_keys {
            public.push(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading JWT public key {}", path.display()))?,
            );
        }
        let secret = match (&self.jwt_secret, self.uses_dev_secret()) {
            (Some(secret), _) => Some(secret.clone()),
            (None, true) => Some(dev_secret(&self.data_dir)?),
            (None, false) => None,
        };
        TokenKeys::new(secret.as_ref(), &public).map_err(anyhow::Error::msg)
    }
}

/// Reads the development secret, creating it (owner-only) on first use.
fn dev_secret(data_dir: &Path) -> anyhow::Result<Secret> {
    let path = data_dir.join(DEV_SECRET_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        anyhow::ensure!(
            existing.len() >= 32,
            "{} is shorter than 32 characters; delete it to create a new one",
            path.display()
        );
        return Ok(Secret(existing.to_owned()));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &secret)
        .with_context(|| format!("writing development JWT secret {}", path.display()))?;
    Ok(Secret(secret))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// Database settings, shared by `serve` and `migrate`.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseSettings {
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB, sqlite://PATH or sqlite::memory:. Default: the
    /// embedded SQLite database `mailconnect.sqlite` in the data directory.
    #[arg(long, env = "MAILCONNECT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Most connections the pool opens.
    #[arg(long, env = "MAILCONNECT_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: usize,
}

impl DatabaseSettings {
    /// The database to use; an unknown scheme is an error before anything is created.
    pub fn url(&self, data_dir: &Path) -> anyhow::Result<DatabaseUrl> {
        match &self.database_url {
            Some(url) => Ok(DatabaseUrl::parse(url.expose())?),
            None => Ok(DatabaseUrl::default_in(data_dir)),
        }
    }
}

/// Log output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Everything `mailconnect serve` needs.
#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// Address and port the gRPC server listens on.
    #[arg(
        long,
        env = "MAILCONNECT_LISTEN_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub keys: KeySettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub server: ServerSettings,
    /// Apply pending migrations at start (otherwise the server stays NOT_SERVING until
    /// `mailconnect migrate` has run).
    #[arg(long, env = "MAILCONNECT_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    /// Data center of accounts upserted without one.
    #[arg(long, env = "MAILCONNECT_DEFAULT_DATA_CENTER", default_value = "na1")]
    pub default_data_center: String,
    /// After SIGTERM/SIGINT, how long in-flight calls may take before connections are dropped.
    #[arg(long, env = "MAILCONNECT_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format on stdout.
    #[arg(long, env = "MAILCONNECT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Settings {
    pub fn default_data_center(&self) -> anyhow::Result<DataCenterId> {
        DataCenterId::parse("MAILCONNECT_DEFAULT_DATA_CENTER", &self.default_data_center)
            .map_err(|v| anyhow::anyhow!("{v}"))
    }
}
