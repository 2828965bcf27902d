//! Configuration: defaults, then `MAILCONNECT_*` environment variables, then flags of the same
//! names (clap reads both). Secrets are wrapped so that they never print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;

use crate::domain::channel::HostedDomains;
use crate::domain::directory::DataCenterId;
use crate::domain::domain_name::DomainName;
use crate::domain::inbox::InboxLimits;
use crate::domain::sealing::Keyring;
use crate::domain::secret::Secret;
use crate::grpc::server::ServerSettings;
use crate::storage::DatabaseUrl;
use crate::tokens::{Expected, TokenKeys};

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
    /// Issuer (`iss`) every token must name, e.g. the identity provider's URL; minted tokens
    /// carry it. Unset: not checked.
    #[arg(long, env = "MAILCONNECT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Audience (`aud`) every token must include, e.g. `mailconnect`; minted tokens carry it.
    /// Unset: not checked.
    #[arg(long, env = "MAILCONNECT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
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
        let expected = Expected {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        };
        Ok(TokenKeys::new(secret.as_ref(), &public)
            .map_err(anyhow::Error::msg)?
            .expecting(expected))
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
        return Ok(Secret::new(existing.to_owned()));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &secret)
        .with_context(|| format!("writing development JWT secret {}", path.display()))?;
    Ok(Secret::new(secret))
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
    /// Most connections the pool opens. Default: twice the CPUs this process may use (cgroup
    /// limits count), at least 4.
    #[arg(long, env = "MAILCONNECT_DB_MAX_CONNECTIONS", default_value_t = default_pool_size())]
    pub db_max_connections: usize,
}

/// Each connection's queries run on a thread of their own, so a pool much larger than the CPUs
/// only adds runnable threads (and, with a local Postgres, backends) that the kernel time-slices:
/// with 16 on 2 CPUs, refusing an excess call took a p99 of 20 ms, with 4 it took 6 ms, at the
/// same throughput (BENCHMARKS.md, overload).
fn default_pool_size() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (2 * cpus).max(4)
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
    /// Domain presets (and as many accounts) kept in the read cache of the hot paths; 0 turns the
    /// cache off. Other replicas' writes are seen within the bound the README gives.
    #[arg(long, env = "MAILCONNECT_CACHE_ENTRIES", default_value_t = 10_000)]
    pub cache_entries: usize,
    /// Data center of accounts upserted without one.
    #[arg(long, env = "MAILCONNECT_DEFAULT_DATA_CENTER", default_value = "na1")]
    pub default_data_center: String,
    /// After SIGTERM/SIGINT, how long in-flight calls may take before connections are dropped.
    #[arg(long, env = "MAILCONNECT_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How often the attempt counts behind ListAttemptedDomains, kept in memory by
    /// ResolveConnectionSettings, are written to the database (also at once when many are
    /// pending, before ListAttemptedDomains reads, and at shutdown): what a crash loses, and how
    /// late other replicas see them.
    #[arg(long, env = "MAILCONNECT_ATTEMPTS_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub attempts_flush_interval: Duration,
    /// Log format on stdout.
    #[arg(long, env = "MAILCONNECT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub probe: ProbeSettings,
    #[command(flatten)]
    pub inbox: InboxSettings,
}

/// InboxConnectionService: credential keys, inbox limits, the connection monitor, the relay
/// that mails notifications, and the OAuth clients that prove grants.
#[derive(clap::Args, Debug, Clone)]
pub struct InboxSettings {
    /// Keys that seal mailbox credentials: `id:base64-32-bytes`, comma-separated; the first
    /// seals, all open (`mailconnect rotate-keys` re-seals under the first). Without it the
    /// embedded SQLite default creates one in the data directory; on Postgres, connects that
    /// carry credentials are refused (ENCRYPTION_NOT_CONFIGURED).
    #[arg(long, env = "MAILCONNECT_ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Option<Secret>,
    /// Inboxes each tier may have, e.g. `free=1,starter=1,professional=100,enterprise=100`.
    #[arg(
        long,
        env = "MAILCONNECT_INBOX_LIMITS",
        default_value = "free=1,starter=1,professional=100,enterprise=100"
    )]
    pub inbox_limits: InboxLimits,
    /// How often the monitor checks each active mailbox (a login, or an OAuth token refresh).
    #[arg(long, env = "MAILCONNECT_CONNECTION_CHECK_INTERVAL", default_value = "15m", value_parser = parse_interval)]
    pub connection_check_interval: Duration,
    /// Failed checks in a row (network or server failures) before a mailbox is disconnected as
    /// SERVER_UNREACHABLE; a refused login disconnects at once.
    #[arg(long, env = "MAILCONNECT_CONNECTION_FAILURE_THRESHOLD", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    pub connection_failure_threshold: i32,
    /// The shortest span from the first of those failures to the last before disconnecting, so
    /// that a short outage raises no alarm.
    #[arg(long, env = "MAILCONNECT_CONNECTION_FAILURE_MIN_SPAN", default_value = "30m", value_parser = parse_duration)]
    pub connection_failure_min_span: Duration,
    /// Checks this process runs at once (they also share the probe's budgets).
    #[arg(long, env = "MAILCONNECT_CONNECTION_CHECK_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub connection_check_concurrency: u32,
    /// How often the monitor and the notification dispatcher look for due work.
    #[arg(long, env = "MAILCONNECT_BACKGROUND_POLL_INTERVAL", default_value = "5s", value_parser = parse_interval)]
    pub background_poll_interval: Duration,
    /// SMTP relay that mails notifications, in lettre's URL forms: `smtp://host:25` (plain),
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465`, with optional `user:pass@`.
    /// Without it notifications are only listed.
    #[arg(long, env = "MAILCONNECT_SMTP_RELAY_URL", hide_env_values = true)]
    pub smtp_relay_url: Option<Secret>,
    /// The From of notification emails.
    #[arg(
        long,
        env = "MAILCONNECT_NOTIFICATION_FROM",
        default_value = "mailconnect <noreply@mailconnect.invalid>"
    )]
    pub notification_from: String,
    /// The hosted mail domain of paid tiers' forwarding addresses
    /// (`{local part}@{account subdomain}.{domain}`), e.g. `hs-inbox.example`; its MX must be the
    /// platform's inbound mail servers. Without it, PROVIDER_HOSTED is refused for paid tiers
    /// (HOSTED_MAIL_NOT_CONFIGURED).
    #[arg(long, env = "MAILCONNECT_HOSTED_DOMAIN", value_parser = parse_hosted_domain)]
    pub hosted_domain: Option<DomainName>,
    /// The hosted mail domain of the free tier, e.g. `free-inbox.example`.
    #[arg(long, env = "MAILCONNECT_HOSTED_DOMAIN_FREE", value_parser = parse_hosted_domain)]
    pub hosted_domain_free: Option<DomainName>,
    #[command(flatten)]
    pub google: GoogleOAuth,
    #[command(flatten)]
    pub microsoft: MicrosoftOAuth,
}

/// The OAuth client that proves Gmail grants; without a client id, grants are stored unproved.
#[derive(clap::Args, Debug, Clone)]
pub struct GoogleOAuth {
    /// OAuth client id of the Google app the grants were issued to.
    #[arg(long, env = "MAILCONNECT_GOOGLE_OAUTH_CLIENT_ID")]
    pub google_oauth_client_id: Option<String>,
    /// Its client secret.
    #[arg(
        long,
        env = "MAILCONNECT_GOOGLE_OAUTH_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub google_oauth_client_secret: Option<Secret>,
    /// Google's token endpoint.
    #[arg(
        long,
        env = "MAILCONNECT_GOOGLE_OAUTH_TOKEN_URL",
        default_value = "https://oauth2.googleapis.com/token"
    )]
    pub google_oauth_token_url: url::Url,
}

/// The OAuth client that proves Office 365 grants; without a client id, grants are stored
/// unproved.
#[derive(clap::Args, Debug, Clone)]
pub struct MicrosoftOAuth {
    /// Application (client) id of the Microsoft Entra app the grants were issued to.
    #[arg(long, env = "MAILCONNECT_MICROSOFT_OAUTH_CLIENT_ID")]
    pub microsoft_oauth_client_id: Option<String>,
    /// Its client secret.
    #[arg(
        long,
        env = "MAILCONNECT_MICROSOFT_OAUTH_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub microsoft_oauth_client_secret: Option<Secret>,
    /// Microsoft's token endpoint.
    #[arg(
        long,
        env = "MAILCONNECT_MICROSOFT_OAUTH_TOKEN_URL",
        default_value = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    )]
    pub microsoft_oauth_token_url: url::Url,
}

/// Name of the embedded default's key file in the data directory.
const DEV_KEYS_FILE: &str = "encryption-keys";

fn parse_hosted_domain(raw: &str) -> Result<DomainName, String> {
    DomainName::parse("hosted domain", raw).map_err(|violation| violation.description)
}

impl InboxSettings {
    /// The hosted mail domains, by tier.
    pub fn hosted_domains(&self) -> HostedDomains {
        HostedDomains {
            paid: self.hosted_domain.clone(),
            free: self.hosted_domain_free.clone(),
        }
    }

    /// The keys that seal credentials: the configured ones; on the embedded SQLite default, a
    /// key created once in the data directory; on Postgres without keys, none.
    pub fn keyring(
        &self,
        data_dir: &Path,
        database: &DatabaseUrl,
    ) -> anyhow::Result<Option<Keyring>> {
        if let Some(keys) = &self.encryption_keys {
            return Keyring::parse(keys)
                .map(Some)
                .map_err(|problem| anyhow::anyhow!("MAILCONNECT_ENCRYPTION_KEYS: {problem}"));
        }
        if database.is_postgres() {
            tracing::warn!(
                "MAILCONNECT_ENCRYPTION_KEYS is not set: connects that carry credentials are refused"
            );
            return Ok(None);
        }
        let path = data_dir.join(DEV_KEYS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Secret::new(text.trim().to_owned()),
            Err(_) => {
                std::fs::create_dir_all(data_dir)
                    .with_context(|| format!("creating data directory {}", data_dir.display()))?;
                let entry = Keyring::generate_entry("local1");
                write_private(&path, entry.expose())
                    .with_context(|| format!("writing {}", path.display()))?;
                tracing::warn!(
                    path = %path.display(),
                    "created an encryption key for mailbox credentials in the data directory: set MAILCONNECT_ENCRYPTION_KEYS in production"
                );
                entry
            }
        };
        Keyring::parse(&text)
            .map(Some)
            .map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))
    }
}

/// Where the mail server probe may connect and how long it may take. Shared by `serve` and
/// `probe`, so that the command line checks a server exactly as the service would.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeSettings {
    /// Comma-separated CIDRs the probe may reach although they are in a range it refuses by
    /// default (loopback, private, link-local, …), e.g. `127.0.0.0/8,::1/128` for local servers.
    /// None may be wider than /8 (IPv4) or /32 (IPv6); cloud metadata addresses stay refused.
    #[arg(long, env = "MAILCONNECT_PROBE_ALLOW_CIDRS", value_delimiter = ',', value_parser = parse_allowed_cidr)]
    pub probe_allow_cidrs: Vec<ipnet::IpNet>,
    /// Comma-separated CIDRs the probe must never reach, in addition to the built-in ranges. They
    /// win over the allowed CIDRs.
    #[arg(long, env = "MAILCONNECT_PROBE_DENY_CIDRS", value_delimiter = ',')]
    pub probe_deny_cidrs: Vec<ipnet::IpNet>,
    /// Comma-separated ports (or ranges such as `10000-10100`) the probe may connect to.
    #[arg(
        long,
        env = "MAILCONNECT_PROBE_ALLOWED_PORTS",
        value_delimiter = ',',
        default_value = "25,465,587,2525,143,993,443"
    )]
    pub probe_allowed_ports: Vec<PortRange>,
    /// The longest a whole probe may take (it also ends before the caller's deadline).
    #[arg(long, env = "MAILCONNECT_PROBE_TIMEOUT", default_value = "10s", value_parser = parse_probe_timeout)]
    pub probe_timeout: Duration,
    /// The longest one stage (connect, TLS handshake, greeting, login, …) may take.
    #[arg(long, env = "MAILCONNECT_PROBE_STAGE_TIMEOUT", default_value = "5s", value_parser = parse_probe_timeout)]
    pub probe_stage_timeout: Duration,
    /// Most probes running at once in this process; more are refused as busy. At least 2: a
    /// call with IMAP and SMTP settings runs both probes at once.
    #[arg(long, env = "MAILCONNECT_PROBE_MAX_CONCURRENT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..))]
    pub probe_max_concurrent: u32,
    /// Most of those one account may hold, so that one tenant cannot take every slot. At least 2.
    #[arg(long, env = "MAILCONNECT_PROBE_MAX_CONCURRENT_PER_ACCOUNT", default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..))]
    pub probe_max_concurrent_per_account: u32,
    /// Most probes one account may start per minute. At least 2, for the same reason.
    #[arg(long, env = "MAILCONNECT_PROBE_RATE_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..))]
    pub probe_rate_per_minute: u32,
    /// Comma-separated PEM files of certificate authorities the probe trusts besides the public
    /// (webpki) roots, e.g. a company's private CA that signs its mail servers' certificates.
    #[arg(long, env = "MAILCONNECT_PROBE_CA_FILES", value_delimiter = ',', value_parser = parse_ca_file)]
    pub probe_ca_files: Vec<CaFile>,
}

/// The longest any duration setting may be: past it, adding it to a clock reading could
/// overflow (a panic), and no setting of this service means anything that long.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration setting (`500ms`, `30s`, `5m`, `1h`): at most a year, so that an absurd value is a
/// startup error and never an overflow later.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration > MAX_DURATION {
        return Err("must be at most a year (366d)".to_owned());
    }
    Ok(duration)
}

/// A duration setting that is more than zero.
pub(crate) fn parse_interval(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        interval if interval.is_zero() => Err("must be more than zero".to_owned()),
        interval => Ok(interval),
    }
}

/// The longest a probe (or one of its stages) may be given: past it the deadline arithmetic would
/// overflow, and no mail server needs it.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A probe timeout: more than zero, at most an hour.
fn parse_probe_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_interval(text)?;
    if timeout > MAX_PROBE_TIMEOUT {
        return Err("must be at most 1h".to_owned());
    }
    Ok(timeout)
}

/// An allowed CIDR no wider than /8 (IPv4) or /32 (IPv6): a wider one would open most of the
/// internal address space, almost certainly by mistake.
fn parse_allowed_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let network: ipnet::IpNet = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR such as 10.20.0.0/16"))?;
    let widest = match network {
        ipnet::IpNet::V4(_) => 8,
        ipnet::IpNet::V6(_) => 32,
    };
    if network.prefix_len() < widest {
        return Err(format!(
            "{network} is wider than /{widest}: allow the mail servers' own ranges instead"
        ));
    }
    Ok(network)
}

/// A PEM file of certificate authorities, read when the configuration is parsed so that a bad file
/// stops startup with its name.
#[derive(Debug, Clone)]
pub struct CaFile {
    pub path: PathBuf,
    pub certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

fn parse_ca_file(path: &str) -> Result<CaFile, String> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certificates = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path} is not a PEM certificate file: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(CaFile {
        path: PathBuf::from(path),
        certificates,
    })
}

/// A port or an inclusive range of ports (`993`, `10000-10100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |part: &str| {
            part.trim()
                .parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| format!("{part:?} is not a port (1-65535)"))
        };
        let (first, last) = match s.split_once('-') {
            Some((first, last)) => (parse(first)?, parse(last)?),
            None => (parse(s)?, parse(s)?),
        };
        if first > last {
            return Err(format!("port range {s:?} ends before it starts"));
        }
        Ok(Self { first, last })
    }
}

impl Settings {
    pub fn default_data_center(&self) -> anyhow::Result<DataCenterId> {
        DataCenterId::parse("MAILCONNECT_DEFAULT_DATA_CENTER", &self.default_data_center)
            .map_err(|v| anyhow::anyhow!("{v}"))
    }
}

/// The environment variable naming an optional settings file.
pub const CONFIG_FILE_ENV: &str = "MAILCONNECT_CONFIG_FILE";

/// Makes the settings of the file named by `MAILCONNECT_CONFIG_FILE` the defaults of the command's
/// arguments, so that the order is defaults → file → environment → flags. The file holds lines
/// `MAILCONNECT_NAME=value` (the environment variable names), `#` comments and blank lines; a name
/// no argument reads is an error, so that a typo does not silently fall back to a default.
pub fn with_config_file(command: clap::Command) -> anyhow::Result<clap::Command> {
    let Some(path) = std::env::var_os(CONFIG_FILE_ENV) else {
        return Ok(command);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {CONFIG_FILE_ENV} {}", Path::new(&path).display()))?;
    let mut values = std::collections::BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').with_context(|| {
            format!("line {} of the settings file is not NAME=value", index + 1)
        })?;
        values.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    let mut used = std::collections::BTreeSet::new();
    let command = apply_defaults(command, &values, &mut used);
    if let Some(unknown) = values.keys().find(|key| !used.contains(*key)) {
        anyhow::bail!("the settings file names {unknown}, which is not a setting of mailconnect");
    }
    Ok(command)
}

fn apply_defaults(
    command: clap::Command,
    values: &std::collections::BTreeMap<String, String>,
    used: &mut std::collections::BTreeSet<String>,
) -> clap::Command {
    let command = command.mut_args(|arg| {
        let value = arg
            .get_env()
            .and_then(|name| name.to_str())
            .and_then(|name| values.get_key_value(name));
        match value {
            Some((name, value)) => {
                used.insert(name.clone());
                // `--help` prints defaults: a secret's (its environment value is hidden too)
                // must not show.
                let secret = arg.is_hide_env_values_set();
                arg.default_value(value.clone()).hide_default_value(secret)
            }
            None => arg,
        }
    });
    command.mut_subcommands(|sub| apply_defaults(sub, values, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_timeouts_are_more_than_zero_and_at_most_an_hour() {
        assert_eq!(parse_probe_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_probe_timeout("1h"), Ok(Duration::from_secs(3600)));
        for absurd in ["0s", "61m", "18446744073709551615s", "x"] {
            assert!(parse_probe_timeout(absurd).is_err(), "{absurd}");
        }
    }

    #[test]
    fn durations_are_at_most_a_year() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("366d"), Ok(MAX_DURATION));
        assert!(parse_interval("0s").is_err());
        for absurd in ["367d", "18446744073709551615s", "x"] {
            assert!(parse_duration(absurd).is_err(), "{absurd}");
            assert!(parse_interval(absurd).is_err(), "{absurd}");
        }
    }

    #[test]
    fn allowed_cidrs_are_at_most_a_slash_8_or_a_slash_32() {
        for fine in [
            "10.0.0.0/8",
            "127.0.0.0/8",
            "192.168.1.0/24",
            "fd00::/32",
            "::1/128",
        ] {
            assert!(parse_allowed_cidr(fine).is_ok(), "{fine}");
        }
        for wide in [
            "0.0.0.0/0",
            "10.0.0.0/7",
            "::/0",
            "fd00::/8",
            "fd00::/31",
            "nope",
        ] {
            assert!(parse_allowed_cidr(wide).is_err(), "{wide}");
        }
    }
}
