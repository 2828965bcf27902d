//! The load client of `scripts/bench`: starts the release server on a fresh database, seeds it,
//! drives every hot path at 1, 16, 64 and 256 concurrent streams over a few HTTP/2 connections,
//! and writes a Markdown table (requests/s, latency percentiles, errors by gRPC status, server
//! CPU time and peak RSS, ratio to the Health/Check baseline of the same run).
//!
//! Settings come from the environment (cargo passes its own flags as arguments):
//! `MAILCONNECT_BENCH_SERVER` (the `mailconnect` binary, required), `MAILCONNECT_BENCH_BACKEND`
//! (`postgres` or `sqlite`), `MAILCONNECT_BENCH_OUT` (Markdown file), `MAILCONNECT_BENCH_SECONDS`
//! (per measurement, default 3), `MAILCONNECT_BENCH_WORKLOADS` (comma-separated keys, see
//! `Workload::key`; default all), `MAILCONNECT_BENCH_POSTGRES_URL` (server without a database,
//! default `postgres://postgres@127.0.0.1:5432`), `MAILCONNECT_BENCH_CLIENT_CPUS` and
//! `MAILCONNECT_BENCH_SERVER_CPUS` (optional `taskset` CPU lists for this load client and for the
//! server). Every packet goes to 127.0.0.1; every measurement stops after its duration or
//! 1,000,000 calls.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection as _, PgConnection, SqliteConnection};
use hdrhistogram::Histogram;
use mailconnect::domain::principal::{Principal, Role};
use mailconnect::domain::secret::Secret;
use mailconnect::grpc::proto::allowlist_service_client::AllowlistServiceClient;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use mailconnect::grpc::proto::{
    CheckAddressRequest, CompleteSetupRequest, ConnectTeamEmailRequest,
    CreateDomainSettingsRequest, DomainSettings, GetAllowlistRequest, GetConnectionRequest,
    GetDomainSettingsRequest, ImapSettings, ListConnectionsRequest, ListDomainSettingsRequest,
    Protocol, Provider, PublishRangesRequest, ResolveConnectionSettingsRequest,
    RouteInboundEmailRequest, Security, ServerAddress, domain_settings::Settings,
};
use mailconnect::tokens::TokenKeys;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

#[path = "support/inbound_message.rs"]
mod inbound_message;
#[path = "support/monitor.rs"]
mod monitor;
#[path = "support/ranges.rs"]
mod ranges;

// The test suite's Dovecot and aiosmtpd on free loopback ports (only part of it is used here).
#[allow(dead_code)]
#[path = "../tests/api/mail_servers.rs"]
mod mail_servers;

const ACCOUNTS: i64 = 1_000;
/// Accounts 1..=100 have 64 presets each (a full ListDomainSettings page), the other 900 have 4:
/// 10,000 presets in all.
const LARGE_ACCOUNTS: i64 = 100;
const PRESETS_LARGE: i64 = 64;
const PRESETS_SMALL: i64 = 4;
/// Accounts 1..=100 also have 2 inboxes and 64 ACTIVE IMAP connections, every one visible to the
/// account's user (a full ListConnections page): half team channels of the inboxes, half the
/// user's personal addresses.
const INBOXES: i64 = 2;
const INBOX_CONNECTIONS: i64 = 64;
const CONNECTIONS: usize = 4;
const STREAMS: [usize; 4] = [1, 16, 64, 256];
const MAX_CALLS: u64 = 1_000_000;
/// The overload runs: a server that runs at most this many calls at once, driven at exactly that
/// many streams (unloaded) and at four times as many. Its pool has `OVERLOAD_POOL` connections:
/// at the first bound every admitted call has a connection (the bound is the server's capacity
/// for this call); at the second, four times as many are admitted and wait for a connection
/// inside the server.
const OVERLOAD_CAPACITIES: [usize; 2] = [OVERLOAD_POOL, 4 * OVERLOAD_POOL];
/// The pool of the overload server (the default on 2 CPUs), the same on every machine.
const OVERLOAD_POOL: usize = 4;
/// A page of 50 rows: the slowest pure database read, so an admitted call holds its slot many
/// times longer than a refusal takes, and the excess streams keep the bound full.
const OVERLOAD_WORKLOAD: Workload = Workload::ListDomainSettings;
const OVERLOAD_KEY: &str = "overload";
/// The reads the server caches, measured again at 64 streams with the cache off.
const CACHED_READS: [Workload; 4] = [
    Workload::ResolvePreset,
    Workload::GetDomainSettings,
    Workload::CheckAddress,
    Workload::GetAllowlist,
];
const CACHE_OFF_KEY: &str = "cache-off";
/// Two replicas on one Postgres database: how long one takes to serve what the other published.
const PROPAGATION_KEY: &str = "propagation";
const PROPAGATION_WRITES: usize = 200;
const JWT_SECRET: &str = "mailconnect-bench-secret-not-for-production";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    HealthCheck,
    ResolvePreset,
    ResolveBuiltin,
    ResolveMiss,
    GetDomainSettings,
    ListDomainSettings,
    CheckAddress,
    GetAllowlist,
    GetConnection,
    ListConnections,
    RouteInbound,
    CreateWithProbe,
}

impl Workload {
    const ALL: [Workload; 12] = [
        Workload::HealthCheck,
        Workload::ResolvePreset,
        Workload::ResolveBuiltin,
        Workload::ResolveMiss,
        Workload::GetDomainSettings,
        Workload::ListDomainSettings,
        Workload::CheckAddress,
        Workload::GetAllowlist,
        Workload::GetConnection,
        Workload::ListConnections,
        Workload::RouteInbound,
        Workload::CreateWithProbe,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::HealthCheck => "Health/Check (baseline)",
            Workload::ResolvePreset => "ResolveConnectionSettings, preset hit",
            Workload::ResolveBuiltin => "ResolveConnectionSettings, built-in provider",
            Workload::ResolveMiss => "ResolveConnectionSettings, miss",
            Workload::GetDomainSettings => "GetDomainSettings",
            Workload::ListDomainSettings => "ListDomainSettings (page of 50)",
            Workload::CheckAddress => "CheckAddress (100k extra ranges)",
            Workload::GetAllowlist => "GetAllowlist",
            Workload::GetConnection => "GetConnection",
            Workload::ListConnections => "ListConnections (page of 50)",
            Workload::RouteInbound => "RouteInboundEmail (20 KiB manual forward)",
            Workload::CreateWithProbe => "CreateDomainSettings + probe (Dovecot, aiosmtpd)",
        }
    }

    /// The short name `MAILCONNECT_BENCH_WORKLOADS` selects by.
    fn key(self) -> &'static str {
        match self {
            Workload::HealthCheck => "health",
            Workload::ResolvePreset => "resolve-preset",
            Workload::ResolveBuiltin => "resolve-builtin",
            Workload::ResolveMiss => "resolve-miss",
            Workload::GetDomainSettings => "get",
            Workload::ListDomainSettings => "list",
            Workload::CheckAddress => "check-address",
            Workload::GetAllowlist => "get-allowlist",
            Workload::GetConnection => "get-connection",
            Workload::ListConnections => "list-connections",
            Workload::RouteInbound => "route-inbound",
            Workload::CreateWithProbe => "create-probe",
        }
    }
}

/// What the calls need: tokens per account and the mail servers' ports.
struct Context {
    users: Vec<MetadataValue<Ascii>>,
    admins: Vec<MetadataValue<Ascii>>,
    probe_addresses: Vec<String>,
    mail_ports: (u16, u16),
    /// The platform's token (the mail ingress calls RouteInboundEmail with it).
    platform: MetadataValue<Ascii>,
    /// The forwarding addresses of the LIVE hosted channels, and the message sent to them.
    forwarding: Vec<String>,
    inbound_message: Vec<u8>,
    /// Makes every created domain new, across measurements.
    created: AtomicU64,
}

impl Context {
    /// The account of call `seq`, spread over all accounts.
    fn account(seq: u64) -> i64 {
        (seq.wrapping_mul(2_654_435_761) % ACCOUNTS as u64) as i64 + 1
    }

    /// The account of call `seq` among accounts 1..=100, which have full pages.
    fn large_account(seq: u64) -> i64 {
        (seq % LARGE_ACCOUNTS as u64) as i64 + 1
    }

    fn authed<T>(token: &MetadataValue<Ascii>, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", token.clone());
        request.set_timeout(Duration::from_secs(30));
        request
    }

    fn user<T>(&self, account: i64, message: T) -> Request<T> {
        Self::authed(&self.users[account as usize - 1], message)
    }

    async fn call(&self, workload: Workload, channel: Channel, seq: u64) -> Result<(), Status> {
        let account = Self::account(seq);
        let preset = |seq: u64| preset_domain(account, (seq / 7) as i64 % presets_of(account));
        let mut settings = DomainSettingsServiceClient::new(channel.clone());
        let mut allowlist = AllowlistServiceClient::new(channel.clone());
        match workload {
            Workload::HealthCheck => {
                let response = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                if response.into_inner().status() != ServingStatus::Serving {
                    return Err(Status::unavailable("not serving"));
                }
            }
            Workload::ResolvePreset | Workload::ResolveBuiltin | Workload::ResolveMiss => {
                let email_address = match workload {
                    Workload::ResolvePreset => format!("user{}@{}", seq % 50, preset(seq)),
                    Workload::ResolveBuiltin => {
                        let domain = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com"]
                            [seq as usize % 4];
                        format!("user{}@{domain}", seq % 50)
                    }
                    // The account follows from `seq` (`Context::account`), so the pair repeats
                    // every 3,000 calls: 3 unknown domains per account, as a company's users
                    // share its few domains. The read cache holds all 3,000 answers, and each
                    // flush of the attempted domains adds to up to 3,000 existing rows.
                    _ => format!("user@unknown{}.acct{account}.example", seq % 300),
                };
                settings
                    .resolve_connection_settings(
                        self.user(account, ResolveConnectionSettingsRequest { email_address }),
                    )
                    .await?;
            }
            Workload::GetDomainSettings => {
                settings
                    .get_domain_settings(self.user(
                        account,
                        GetDomainSettingsRequest {
                            name: format!("domainSettings/{}", preset(seq)),
                        },
                    ))
                    .await?;
            }
            Workload::ListDomainSettings => {
                let account = Self::large_account(seq);
                let page = settings
                    .list_domain_settings(self.user(
                        account,
                        ListDomainSettingsRequest {
                            page_size: 50,
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner();
                if page.domain_settings.len() != 50 {
                    return Err(Status::data_loss("a page of 50 was expected"));
                }
            }
            Workload::CheckAddress => {
                let address = &self.probe_addresses[seq as usize % self.probe_addresses.len()];
                allowlist
                    .check_address(self.user(
                        account,
                        CheckAddressRequest {
                            ip_address: address.clone(),
                        },
                    ))
                    .await?;
            }
            Workload::GetAllowlist => {
                allowlist
                    .get_allowlist(self.user(account, GetAllowlistRequest::default()))
                    .await?;
            }
            Workload::GetConnection => {
                let account = Self::large_account(seq);
                let name = format!(
                    "connections/{}",
                    connection_id(account, (seq / 7) as i64 % INBOX_CONNECTIONS)
                );
                let connection = InboxConnectionServiceClient::new(channel)
                    .get_connection(self.user(account, GetConnectionRequest { name: name.clone() }))
                    .await?
                    .into_inner()
                    .connection;
                if connection.is_none_or(|connection| connection.name != name) {
                    return Err(Status::data_loss("the connection asked for was expected"));
                }
            }
            Workload::ListConnections => {
                let account = Self::large_account(seq);
                let page = InboxConnectionServiceClient::new(channel)
                    .list_connections(self.user(
                        account,
                        ListConnectionsRequest {
                            page_size: 50,
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner();
                if page.connections.len() != 50 || page.next_page_token.is_empty() {
                    return Err(Status::data_loss(
                        "a page of 50 and a next page were expected",
                    ));
                }
            }
            Workload::RouteInbound => {
                let target = &self.forwarding[seq as usize % self.forwarding.len()];
                let routed = InboxConnectionServiceClient::new(channel)
                    .route_inbound_email(Self::authed(
                        &self.platform,
                        RouteInboundEmailRequest {
                            envelope_recipients: vec![target.clone()],
                            raw_message: self.inbound_message.clone(),
                        },
                    ))
                    .await?
                    .into_inner();
                if routed.connection.is_empty() || routed.original_sender.is_none() {
                    return Err(Status::data_loss(
                        "a routed, attributed message was expected",
                    ));
                }
            }
            Workload::CreateWithProbe => {
                let (imaps, smtp) = self.mail_ports;
                let n = self.created.fetch_add(1, Ordering::Relaxed);
                let server = |port: u16, security: Security| ServerAddress {
                    host: "127.0.0.1".into(),
                    port: port.into(),
                    security: security.into(),
                };
                let request = CreateDomainSettingsRequest {
                    domain_settings: Some(DomainSettings {
                        domain: format!("probed{n}.acct{account}.example"),
                        settings: Some(Settings::Imap(ImapSettings {
                            imap_server: Some(server(imaps, Security::ImplicitTls)),
                            smtp_server: Some(server(smtp, Security::Starttls)),
                            allow_insecure_certificate: true,
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                settings
                    .create_domain_settings(Self::authed(
                        &self.admins[account as usize - 1],
                        request,
                    ))
                    .await?;
            }
        }
        Ok(())
    }
}

fn presets_of(account: i64) -> i64 {
    if account <= LARGE_ACCOUNTS {
        PRESETS_LARGE
    } else {
        PRESETS_SMALL
    }
}

fn preset_domain(account: i64, n: i64) -> String {
    format!("mail{n:02}.acct{account}.example")
}

/// Connection `n` of `account` (ids are the service's choice; these do not collide).
fn connection_id(account: i64, n: i64) -> i64 {
    account * 1_000 + n
}

/// The user whose token calls for `account`.
fn user_of(account: i64) -> i64 {
    1000 + account
}

/// The latency of each call in microseconds, by the gRPC status it ended with.
#[derive(Default)]
struct Calls(BTreeMap<String, Histogram<u64>>);

impl Calls {
    const OK: &str = "Ok";

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
    }

    fn record(&mut self, code: Code, latency: Duration) {
        self.0
            .entry(code_name(code))
            .or_insert_with(Self::histogram)
            .saturating_record(latency.as_micros() as u64);
    }

    fn add(&mut self, other: Calls) {
        for (code, latency) in other.0 {
            self.0
                .entry(code)
                .or_insert_with(Self::histogram)
                .add(&latency)
                .unwrap();
        }
    }

    fn count(&self) -> u64 {
        self.0.values().map(Histogram::len).sum()
    }

    /// The calls that ended with `code` (an empty histogram when none did).
    fn of(&self, code: Code) -> Histogram<u64> {
        self.0
            .get(&code_name(code))
            .cloned()
            .unwrap_or_else(Self::histogram)
    }

    /// Every call, whatever its status.
    fn all(&self) -> Histogram<u64> {
        let mut all = Self::histogram();
        for latency in self.0.values() {
            all.add(latency).unwrap();
        }
        all
    }

    /// "0", or the count of each status but OK and those named in `except`.
    fn errors(&self, except: &[Code]) -> String {
        let skipped: Vec<String> = except.iter().map(|code| code_name(*code)).collect();
        let errors: Vec<String> = self
            .0
            .iter()
            .filter(|(code, _)| *code != Self::OK && !skipped.contains(code))
            .map(|(code, latency)| format!("{} {code}", latency.len()))
            .collect();
        if errors.is_empty() {
            "0".to_owned()
        } else {
            errors.join(", ")
        }
    }
}

/// One measurement: a workload at a number of streams.
struct Measurement {
    workload: Workload,
    /// How the server differs from the run's default one (e.g. "cache off").
    server: Option<&'static str>,
    streams: usize,
    seconds: f64,
    calls: Calls,
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

impl Measurement {
    fn per_second(&self) -> f64 {
        self.calls.count() as f64 / self.seconds
    }

    fn name(&self) -> String {
        match self.server {
            Some(server) => format!("{}, {server}", self.workload.name()),
            None => self.workload.name().to_owned(),
        }
    }
}

/// The server process, with what /proc says about it.
struct Server {
    child: Child,
    port: u16,
    clock_ticks: f64,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of the file, 12th and 13th after the name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / self.clock_ticks
    }

    fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Starts the peak-RSS watermark afresh (Linux clear_refs 5), so VmHWM is this measurement's.
    fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fresh database of this run, dropped at the end (Postgres) or deleted with its folder.
enum Database {
    Postgres { admin_url: String, name: String },
    Sqlite { path: PathBuf },
}

impl Database {
    fn create(backend: &str, dir: &Path) -> Database {
        match backend {
            "postgres" => {
                let admin_url = std::env::var("MAILCONNECT_BENCH_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
                let name = format!("mailconnect_bench_{}", std::process::id());
                PgConnection::establish(&format!("{admin_url}/postgres"))
                    .expect("connect to Postgres (is it running? scripts/bench starts it)")
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .unwrap();
                Database::Postgres { admin_url, name }
            }
            "sqlite" => Database::Sqlite {
                path: dir.join("bench.sqlite"),
            },
            other => panic!("MAILCONNECT_BENCH_BACKEND must be postgres or sqlite, not {other}"),
        }
    }

    fn url(&self) -> String {
        match self {
            Database::Postgres { admin_url, name } => format!("{admin_url}/{name}"),
            Database::Sqlite { path } => format!("sqlite://{}", path.display()),
        }
    }

    /// Runs SQL straight on the database (the seeding).
    fn execute(&self, sql: &str) {
        self.connect().batch_execute(sql).unwrap();
    }

    fn connect(&self) -> BenchConnection {
        match self {
            Database::Postgres { .. } => {
                BenchConnection::Pg(PgConnection::establish(&self.url()).unwrap())
            }
            Database::Sqlite { path } => {
                let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
                // The server writes while the monitor step reads: wait for its lock, not fail.
                conn.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
                BenchConnection::Sqlite(conn)
            }
        }
    }
}

/// A connection of the load client's own to the run's database.
enum BenchConnection {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

impl BenchConnection {
    fn batch_execute(&mut self, sql: &str) -> diesel::QueryResult<()> {
        match self {
            BenchConnection::Pg(conn) => conn.batch_execute(sql),
            BenchConnection::Sqlite(conn) => conn.batch_execute(sql),
        }
    }

    /// A byte string as an SQL literal of this backend.
    fn blob_literal(&self, bytes: &[u8]) -> String {
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        match self {
            BenchConnection::Pg(_) => format!("'\\x{hex}'"),
            BenchConnection::Sqlite(_) => format!("X'{hex}'"),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Database::Postgres { admin_url, name } = self
            && let Ok(mut conn) = PgConnection::establish(&format!("{admin_url}/postgres"))
        {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// 1,000 accounts in na1 and 10,000 presets (8 in 10 IMAP + SMTP, the rest Exchange), in the
/// stored JSON form of src/storage/domain_settings.rs.
fn seed_sql() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let mut sql = String::from("BEGIN;\n");
    let accounts: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!("({id}, 'professional', 'na1', 'acct{id}', {now}, {now})"))
        .collect();
    for chunk in accounts.chunks(500) {
        writeln!(
            sql,
            "INSERT INTO accounts (id, tier, data_center, subdomain, create_time, update_time) VALUES {};",
            chunk.join(",")
        )
        .unwrap();
    }
    let mut presets = Vec::new();
    for account in 1..=ACCOUNTS {
        for n in 0..presets_of(account) {
            let domain = preset_domain(account, n);
            let (kind, settings) = if n % 5 == 4 {
                (
                    "exchange",
                    format!(
                        r#"{{"kind":"exchange","url":"https://ews.{domain}/EWS/Exchange.asmx","scopes":["email","calendar"]}}"#
                    ),
                )
            } else {
                (
                    "imap",
                    imap_settings_json(
                        (&format!("imap.{domain}"), 993),
                        (&format!("smtp.{domain}"), 587),
                    ),
                )
            };
            presets.push(format!(
                "({account}, '{domain}', '{kind}', '{settings}', 1, {now}, {now}, 7, {now})"
            ));
        }
    }
    for chunk in presets.chunks(500) {
        writeln!(
            sql,
            "INSERT INTO domain_settings (account_id, domain, kind, settings, version, create_time, update_time, updated_by_user_id, last_verified_time) VALUES {};",
            chunk.join(",")
        )
        .unwrap();
    }
    seed_inbox_connections(&mut sql, now);
    sql.push_str("COMMIT;\n");
    sql
}

/// The inboxes and connections of accounts 1..=100 in the stored form of
/// src/storage/inbox_connections.rs. No credential rows: GetConnection and ListConnections never
/// open them, and the next check is an hour away, so the server's monitor leaves them alone.
fn seed_inbox_connections(sql: &mut String, now: i64) {
    let next_check = now + 3_600_000_000;
    let mut inboxes = Vec::new();
    let mut connections = Vec::new();
    for account in 1..=LARGE_ACCOUNTS {
        for k in 0..INBOXES {
            inboxes.push(format!(
                "({}, {account}, 'Support {k}', 1, 7, {now}, {now})",
                inbox_id(account, k)
            ));
        }
        for n in 0..INBOX_CONNECTIONS {
            let address = format!("box{n:02}@acct{account}.example");
            let servers = imap_servers_json(
                (&format!("imap.acct{account}.example"), 993),
                (&format!("smtp.acct{account}.example"), 587),
            );
            let (kind, owner, inbox, usages) = if n % 2 == 0 {
                let inbox = inbox_id(account, n / 2 % INBOXES);
                ("team", 7, inbox.to_string(), "conversations")
            } else {
                let usages = "crm_email,meetings,calendar,sequences";
                ("personal", user_of(account), "NULL".to_owned(), usages)
            };
            connections.push(format!(
                "({}, {account}, '{address}', '{address}', '{kind}', 'imap', {owner}, {inbox}, 'active', TRUE, '{usages}', '{servers}', 1, {now}, {now}, {now}, {now}, {now}, {next_check})",
                connection_id(account, n)
            ));
        }
    }
    writeln!(
        sql,
        "INSERT INTO inboxes (id, account_id, display_name, version, created_by_user_id, create_time, update_time) VALUES {};",
        inboxes.join(",")
    )
    .unwrap();
    for chunk in connections.chunks(500) {
        writeln!(
            sql,
            "INSERT INTO connections (id, account_id, email_address, address_key, kind, provider, owner_user_id, inbox_id, state, holds_address, usages, servers, version, create_time, update_time, state_change_time, last_check_time, last_success_time, next_check_time) VALUES {};",
            chunk.join(",")
        )
        .unwrap();
    }
}

/// Accounts with a LIVE hosted channel for RouteInboundEmail.
const HOSTED_ACCOUNTS: i64 = 16;
/// The server's hosted domain (`MAILCONNECT_HOSTED_DOMAIN`); no mail leaves the machine.
const HOSTED_DOMAIN: &str = "hosted.bench.invalid";

/// Connects a hosted team address in the first inbox of each of `HOSTED_ACCOUNTS` accounts and
/// completes its setup, as an admin would; returns the forwarding addresses.
async fn setup_hosted_channels(channel: Channel, admins: &[MetadataValue<Ascii>]) -> Vec<String> {
    let mut client = InboxConnectionServiceClient::new(channel);
    let mut forwarding = Vec::new();
    for account in 1..=HOSTED_ACCOUNTS {
        let admin = &admins[account as usize - 1];
        let connection = client
            .connect_team_email(Context::authed(
                admin,
                ConnectTeamEmailRequest {
                    email_address: format!("hosted-team@acct{account}.example"),
                    provider: Provider::Hosted.into(),
                    inbox: format!("inboxes/{}", inbox_id(account, 0)),
                    ..Default::default()
                },
            ))
            .await
            .expect("ConnectTeamEmail with PROVIDER_HOSTED")
            .into_inner()
            .connection
            .expect("a connection");
        client
            .complete_setup(Context::authed(
                admin,
                CompleteSetupRequest {
                    name: connection.name.clone(),
                    etag: String::new(),
                },
            ))
            .await
            .expect("CompleteSetup");
        let settings = connection.channel_settings.expect("channel settings");
        forwarding.push(settings.forwarding_address);
    }
    forwarding
}

fn inbox_id(account: i64, k: i64) -> i64 {
    account * 10 + k
}

/// A connection's `servers` column: IMAPS on `imap` and submission (STARTTLS) on `smtp`, as
/// given in the request.
fn imap_servers_json(imap: (&str, u16), smtp: (&str, u16)) -> String {
    format!(
        r#"{{"source":"request","settings":{}}}"#,
        imap_settings_json(imap, smtp)
    )
}

/// IMAPS + submission settings in the stored JSON form (src/storage/domain_settings.rs).
fn imap_settings_json(
    (imap_host, imap_port): (&str, u16),
    (smtp_host, smtp_port): (&str, u16),
) -> String {
    format!(
        r#"{{"kind":"imap","imap":{{"host":"{imap_host}","port":{imap_port},"security":"implicit_tls"}},"smtp":{{"host":"{smtp_host}","port":{smtp_port},"security":"starttls"}},"allow_insecure_certificate":false}}"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn clock_ticks() -> f64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// The CPUs `taskset` keeps the load client and the server on, when the run asks for it: with
/// both on every CPU, their threads take turns on the same cores and each waits out the other's
/// time slices; on CPUs of their own, the client stands for callers on other machines.
struct Placement {
    client: Option<String>,
    server: Option<String>,
}

impl Placement {
    fn from_env() -> Self {
        let cpus = |name| std::env::var(name).ok().filter(|list| !list.is_empty());
        Self {
            client: cpus("MAILCONNECT_BENCH_CLIENT_CPUS"),
            server: cpus("MAILCONNECT_BENCH_SERVER_CPUS"),
        }
    }

    /// Moves this process to the client's CPUs.
    fn pin_client(&self) {
        if let Some(cpus) = &self.client {
            let pid = std::process::id().to_string();
            let status = Command::new("taskset")
                .args(["--all-tasks", "--pid", "--cpu-list", cpus, &pid])
                .stdout(Stdio::null())
                .status()
                .expect("run taskset (util-linux)");
            assert!(
                status.success(),
                "taskset could not pin the load client to CPUs {cpus}"
            );
        }
    }

    /// Where the report says the processes ran.
    fn describe(&self) -> String {
        match (&self.client, &self.server) {
            (None, None) => String::new(),
            (client, server) => format!(
                ", load client on CPU {}, server on CPU {}, Postgres on any",
                client.as_deref().unwrap_or("any"),
                server.as_deref().unwrap_or("any")
            ),
        }
    }

    /// The server's command, under `taskset` when it has CPUs of its own (taskset execs it, so
    /// the pid is the server's).
    fn command(&self, binary: &Path) -> Command {
        match &self.server {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["--cpu-list", cpus]).arg(binary);
                command
            }
            None => Command::new(binary),
        }
    }
}

fn server_command(binary: &Path, database_url: &str, dir: &Path) -> Command {
    let mut command = Placement::from_env().command(binary);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MAILCONNECT_DATABASE_URL", database_url)
        .env("MAILCONNECT_DATA_DIR", dir)
        .env("MAILCONNECT_JWT_SECRET", JWT_SECRET)
        .env("MAILCONNECT_HOSTED_DOMAIN", HOSTED_DOMAIN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// `mailconnect migrate`: the schema and the seed allowlist (na1), as a deployment's hook does.
fn migrate(binary: &Path, database_url: &str, dir: &Path) {
    let output = server_command(binary, database_url, dir)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mailconnect migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts `serve` and waits for SERVING; returns the server and how long that took.
async fn start_server(
    binary: &Path,
    database_url: &str,
    dir: &Path,
    mail_ports: Option<(u16, u16)>,
    settings: &[(&str, String)],
) -> (Server, Duration) {
    let port = free_port();
    let mut command = server_command(binary, database_url, dir);
    command
        .arg("serve")
        .envs(settings.iter().map(|(name, value)| (name, value)))
        .env("MAILCONNECT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("MAILCONNECT_PROBE_ALLOW_CIDRS", "127.0.0.0/8")
        .env("MAILCONNECT_PROBE_RATE_PER_MINUTE", "1000000")
        .stdout(std::fs::File::create(dir.join("server.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("server.err")).unwrap());
    if let Some((imaps, smtp)) = mail_ports {
        command.env("MAILCONNECT_PROBE_ALLOWED_PORTS", format!("{imaps},{smtp}"));
    }
    let started = Instant::now();
    let server = Server {
        child: command.spawn().expect("start mailconnect serve"),
        port,
        clock_ticks: clock_ticks(),
    };
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    loop {
        if let Ok(channel) = endpoint.connect().await
            && let Ok(response) = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
            && response.into_inner().status() == ServingStatus::Serving
        {
            return (server, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server was not SERVING after 60 s: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn connections(port: u16) -> Vec<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(endpoint.connect().await.expect("connect to the server"));
    }
    channels
}

/// The 100,000 extra ranges of data center eu1 through PublishRanges, one call per protocol
/// (a publication replaces a protocol's whole set): even ranges SMTP, odd ones IMAP.
async fn publish_extra_ranges(channel: Channel, platform: &MetadataValue<Ascii>) -> Duration {
    let started = Instant::now();
    let mut client = AllowlistServiceClient::new(channel);
    for (protocol, parity) in [(Protocol::Smtp, 0), (Protocol::Imap, 1)] {
        let ranges = (0..ranges::EXTRA_RANGES)
            .filter(|i| i % 2 == parity)
            .map(|i| ranges::range(i).to_string())
            .collect();
        client
            .publish_ranges(Context::authed(
                platform,
                PublishRangesRequest {
                    data_center: "eu1".into(),
                    protocol: protocol.into(),
                    ranges,
                    ..Default::default()
                },
            ))
            .await
            .expect("publish the extra ranges");
    }
    started.elapsed()
}

/// Publishes a new version of a data center's list through `first`, then reads it through
/// `second` as fast as it answers until it serves that version: the time from the publication's
/// answer to the first read that shows it, in µs.
async fn propagation(
    first: Channel,
    second: Channel,
    platform: &MetadataValue<Ascii>,
) -> Histogram<u64> {
    let mut delays = Histogram::<u64>::new(3).unwrap();
    let mut publisher = AllowlistServiceClient::new(first);
    let mut reader = AllowlistServiceClient::new(second);
    let read = GetAllowlistRequest {
        data_center: "prop1".into(),
        ..Default::default()
    };
    for i in 0..PROPAGATION_WRITES {
        // The second replica has the current version cached before each publication.
        reader
            .get_allowlist(Context::authed(platform, read.clone()))
            .await
            .expect("read before publishing");
        let published = publisher
            .publish_ranges(Context::authed(
                platform,
                PublishRangesRequest {
                    data_center: "prop1".into(),
                    protocol: Protocol::Smtp.into(),
                    ranges: vec![ranges::range(i).to_string()],
                    ..Default::default()
                },
            ))
            .await
            .expect("publish on the first replica")
            .into_inner();
        let sent = Instant::now();
        loop {
            let served = reader
                .get_allowlist(Context::authed(platform, read.clone()))
                .await
                .expect("read on the second replica")
                .into_inner();
            if served.version >= published.version {
                break;
            }
        }
        delays
            .record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX))
            .unwrap();
    }
    delays
}

fn render_propagation(delays: &Histogram<u64>) -> String {
    format!(
        "\n#### Read cache across replicas\n\nTwo servers on the same Postgres database; {PROPAGATION_WRITES} times, PublishRanges on the first, then GetAllowlist on the second (which had the previous version cached) until it serves the new version. Time from the publication's answer to the first read that shows it (the documented bound: the 10 ms listener poll plus NOTIFY delivery; 3 s if the listener's connection hangs):\n\n| writes | p50 ms | p99 ms | max ms |\n|---:|---:|---:|---:|\n| {} | {} | {} | {} |\n",
        delays.len(),
        ms(delays.value_at_quantile(0.5)),
        ms(delays.value_at_quantile(0.99)),
        ms(delays.max()),
    )
}

/// Runs `workload` at `streams` concurrent calls for `duration` (or MAX_CALLS calls).
async fn measure(
    context: &Arc<Context>,
    server: &Server,
    channels: &[Channel],
    workload: Workload,
    streams: usize,
    duration: Duration,
    retry: Retry,
) -> Measurement {
    // Unrecorded warm-up: connections, pools, caches.
    run(
        context,
        channels,
        workload,
        streams,
        Duration::from_millis(300),
        retry,
    )
    .await;
    server.reset_peak_rss();
    let cpu_before = server.cpu_seconds();
    let started = Instant::now();
    let calls = run(context, channels, workload, streams, duration, retry).await;
    let seconds = started.elapsed().as_secs_f64();
    Measurement {
        workload,
        server: None,
        streams,
        seconds,
        calls,
        cpu_seconds: server.cpu_seconds() - cpu_before,
        peak_rss_kib: server.status_kib("VmHWM:"),
    }
}

/// What a stream does after a refusal that says when to retry (`google.rpc.RetryInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Sends its next call at once: the harshest client.
    AtOnce,
    /// Waits the delay first, as a gRPC client with a retry policy does with the server's pushback.
    AsTold,
}

async fn run(
    context: &Arc<Context>,
    channels: &[Channel],
    workload: Workload,
    streams: usize,
    duration: Duration,
    retry: Retry,
) -> Calls {
    let deadline = Instant::now() + duration;
    let issued = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..streams)
        .map(|worker| {
            let context = Arc::clone(context);
            let channel = channels[worker % channels.len()].clone();
            let issued = Arc::clone(&issued);
            tokio::spawn(async move {
                let mut calls = Calls::default();
                while Instant::now() < deadline {
                    let seq = issued.fetch_add(1, Ordering::Relaxed);
                    if seq >= MAX_CALLS {
                        break;
                    }
                    let started = Instant::now();
                    let result = context.call(workload, channel.clone(), seq).await;
                    let code = result
                        .as_ref()
                        .map_or_else(|status| status.code(), |()| Code::Ok);
                    calls.record(code, started.elapsed());
                    if let (Retry::AsTold, Err(status)) = (retry, &result)
                        && let Some(delay) = status
                            .get_details_retry_info()
                            .and_then(|info| info.retry_delay)
                    {
                        tokio::time::sleep(delay).await;
                    }
                }
                calls
            })
        })
        .collect();
    let mut calls = Calls::default();
    for worker in workers {
        calls.add(worker.await.unwrap());
    }
    calls
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

fn mint(
    keys: &TokenKeys,
    account_id: Option<i64>,
    user_id: Option<i64>,
    roles: Vec<Role>,
) -> MetadataValue<Ascii> {
    let principal = Principal {
        subject: format!("bench-{account_id:?}-{user_id:?}"),
        account_id,
        user_id,
        roles,
    };
    let token = keys
        .mint(&principal, Duration::from_secs(6 * 3600))
        .unwrap();
    format!("Bearer {token}").parse().unwrap()
}

/// Other processes on the machine skew every number: the report says how busy it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn render(title: &str, facts: &[(String, String)], measurements: &[Measurement]) -> String {
    let mut out = String::new();
    writeln!(out, "### {title}\n").unwrap();
    for (fact, value) in facts {
        writeln!(out, "- {fact}: {value}").unwrap();
    }
    writeln!(
        out,
        "\n| workload | streams | calls | calls/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU s | CPU µs/call | peak RSS MiB | calls/s vs baseline |"
    )
    .unwrap();
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    )
    .unwrap();
    for m in measurements {
        let baseline = measurements
            .iter()
            .find(|b| b.workload == Workload::HealthCheck && b.streams == m.streams)
            .map(Measurement::per_second);
        let latency = m.calls.all();
        writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.0} | {} | {} |",
            m.name(),
            m.streams,
            m.calls.count(),
            m.per_second(),
            ms(latency.value_at_quantile(0.50)),
            ms(latency.value_at_quantile(0.99)),
            ms(latency.value_at_quantile(0.999)),
            m.calls.errors(&[]),
            m.cpu_seconds,
            m.cpu_seconds * 1e6 / m.calls.count().max(1) as f64,
            mib(m.peak_rss_kib),
            baseline.map_or("—".to_owned(), |b| format!(
                "{:.0} %",
                100.0 * m.per_second() / b
            )),
        )
        .unwrap();
    }
    out
}

/// The overload section: the admitted (OK) and refused (RESOURCE_EXHAUSTED) calls apart, beside
/// the health checks answered meanwhile. `phases`: unloaded, then overloaded by streams that
/// retry at once, then by streams that wait as the refusals tell them.
fn render_overload(capacity: usize, phases: &[(Measurement, Calls)]) -> String {
    const PHASES: [&str; 3] = [
        "unloaded (= capacity)",
        "overload (4× capacity), retrying at once",
        "overload (4× capacity), waiting as told",
    ];
    let [(unloaded, _), overloaded @ ..] = phases else {
        unreachable!("the unloaded phase is measured first");
    };
    let mut out = String::new();
    writeln!(
        out,
        "\n#### Overload: {} against a server that runs at most {capacity} calls at once (`MAILCONNECT_MAX_CONCURRENT_CALLS={capacity}`) with {OVERLOAD_POOL} database connections\n",
        unloaded.workload.name()
    )
    .unwrap();
    writeln!(
        out,
        "| phase | streams | calls/s | OK calls/s | OK p50 ms | OK p99 ms | OK p99.9 ms | refused calls/s | refused p50 ms | refused p99 ms | refused p99.9 ms | other errors | server CPU s | peak RSS MiB | Health/Check meanwhile p50 / p99 ms |"
    )
    .unwrap();
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
    )
    .unwrap();
    let quantiles = |h: &Histogram<u64>| {
        [0.50, 0.99, 0.999].map(|q| {
            if h.is_empty() {
                "—".to_owned()
            } else {
                ms(h.value_at_quantile(q))
            }
        })
    };
    for ((m, health), phase) in phases.iter().zip(PHASES) {
        let ok = m.calls.of(Code::Ok);
        let shed = m.calls.of(Code::ResourceExhausted);
        let [ok50, ok99, ok999] = quantiles(&ok);
        let [shed50, shed99, shed999] = quantiles(&shed);
        let [health50, health99, _] = quantiles(&health.all());
        writeln!(
            out,
            "| {phase} | {} | {:.0} | {:.0} | {ok50} | {ok99} | {ok999} | {:.0} | {shed50} | {shed99} | {shed999} | {} | {:.2} | {} | {health50} / {health99} |",
            m.streams,
            m.per_second(),
            ok.len() as f64 / m.seconds,
            shed.len() as f64 / m.seconds,
            m.calls.errors(&[Code::ResourceExhausted]),
            m.cpu_seconds,
            mib(m.peak_rss_kib),
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nRefused means RESOURCE_EXHAUSTED (reason OVERLOADED), whose RetryInfo gives a delay of 20 to 60 ms. Streams that retry at once send their next call as soon as the last one ends, refused or not; streams that wait as told first sleep a refusal's delay. A refusal's latency is its own call's, without the wait. One more stream sends Health/Check (never shed) throughout each phase."
    )
    .unwrap();
    let p99 = |m: &Measurement, code| m.calls.of(code).value_at_quantile(0.99);
    let unloaded_p99 = p99(unloaded, Code::Ok);
    writeln!(out).unwrap();
    for ((m, _), phase) in overloaded.iter().zip(&PHASES[1..]) {
        let [_, shed99, shed999] = quantiles(&m.calls.of(Code::ResourceExhausted));
        writeln!(
            out,
            "- {phase}: admitted calls p99 {} ms = {:.1}× the unloaded p99 of {} ms (goal ≤ 10×); refused calls p99 {shed99} ms, p99.9 {shed999} ms (goal ≤ 5 ms); server peak RSS {} MiB",
            ms(p99(m, Code::Ok)),
            p99(m, Code::Ok) as f64 / unloaded_p99.max(1) as f64,
            ms(unloaded_p99),
            mib(m.peak_rss_kib)
        )
        .unwrap();
    }
    writeln!(
        out,
        "- server peak RSS unloaded: {} MiB",
        mib(unloaded.peak_rss_kib)
    )
    .unwrap();
    out
}

fn main() {
    // Pinned before the runtime starts, so that it sizes its worker pool to the client's CPUs.
    let placement = Placement::from_env();
    placement.pin_client();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the load client's runtime")
        .block_on(bench(placement));
}

async fn bench(placement: Placement) {
    let Some(binary) = std::env::var_os("MAILCONNECT_BENCH_SERVER").map(PathBuf::from) else {
        // A plain `cargo bench` runs the criterion bench and skips this one.
        eprintln!(
            "SKIPPED: MAILCONNECT_BENCH_SERVER is not set; run scripts/bench, which builds the server and sets it"
        );
        return;
    };
    let backend = std::env::var("MAILCONNECT_BENCH_BACKEND").unwrap_or_else(|_| "postgres".into());
    let out = std::env::var_os("MAILCONNECT_BENCH_OUT").map(PathBuf::from);
    let duration = Duration::from_secs_f64(
        std::env::var("MAILCONNECT_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let dir = tempfile::tempdir().unwrap();
    let database = Database::create(&backend, dir.path());
    let url = database.url();
    let mut facts = vec![(
        "load average at the start (1, 5, 15 min)".to_owned(),
        load_average(),
    )];

    let started = Instant::now();
    migrate(&binary, &url, dir.path());
    facts.push((
        "`mailconnect migrate` on the fresh database".to_owned(),
        format!("{:.0} ms", started.elapsed().as_secs_f64() * 1e3),
    ));
    let started = Instant::now();
    database.execute(&seed_sql());
    facts.push((
        format!("seeding {ACCOUNTS} accounts and 10,000 presets by SQL"),
        format!("{:.0} ms", started.elapsed().as_secs_f64() * 1e3),
    ));

    let dovecot = mail_servers::Dovecot::start();
    let smtp = mail_servers::Aiosmtpd::start(mail_servers::SmtpMode::StartTls);
    let mail_ports = (dovecot.imaps_port, smtp.port);

    let (server, to_serving) = start_server(&binary, &url, dir.path(), Some(mail_ports), &[]).await;
    facts.push((
        "start to SERVING (`serve` on the migrated, seeded database, first Health/Check answered SERVING)".to_owned(),
        format!("{:.0} ms", to_serving.as_secs_f64() * 1e3),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    facts.push((
        "idle RSS 2 s after SERVING".to_owned(),
        format!("{} MiB", mib(server.status_kib("VmRSS:"))),
    ));

    let keys = TokenKeys::new(Some(&JWT_SECRET.parse::<Secret>().unwrap()), &[]).unwrap();
    let platform = mint(&keys, None, None, vec![Role::Platform]);
    let admins: Vec<_> = (1..=ACCOUNTS)
        .map(|a| mint(&keys, Some(a), Some(7), vec![Role::SuperAdmin]))
        .collect();
    let channels = connections(server.port).await;
    let forwarding = setup_hosted_channels(channels[0].clone(), &admins).await;
    let context = Arc::new(Context {
        users: (1..=ACCOUNTS)
            .map(|a| mint(&keys, Some(a), Some(user_of(a)), vec![]))
            .collect(),
        admins,
        probe_addresses: ranges::probe_addresses(1024)
            .iter()
            .map(ToString::to_string)
            .collect(),
        mail_ports,
        platform: platform.clone(),
        forwarding,
        inbound_message: inbound_message::forwarded_message(),
        created: AtomicU64::new(0),
    });
    let published = publish_extra_ranges(channels[0].clone(), &platform).await;
    facts.push((
        format!(
            "PublishRanges of {} extra ranges in eu1 (2 calls)",
            ranges::EXTRA_RANGES
        ),
        format!("{:.0} ms", published.as_secs_f64() * 1e3),
    ));
    facts.push((
        "RSS after publishing".to_owned(),
        format!("{} MiB", mib(server.status_kib("VmRSS:"))),
    ));
    if !server.reset_peak_rss() {
        facts.push((
            "note".to_owned(),
            "peak RSS could not be reset: it is the process's peak so far".to_owned(),
        ));
    }

    let selection = std::env::var("MAILCONNECT_BENCH_WORKLOADS").unwrap_or_default();
    let selected =
        |key: &str| selection.is_empty() || selection.split(',').any(|k| k.trim() == key);
    let mut measurements = Vec::new();
    for workload in Workload::ALL {
        if !selected(workload.key()) {
            continue;
        }
        for streams in STREAMS {
            let m = measure(
                &context,
                &server,
                &channels,
                workload,
                streams,
                duration,
                Retry::AtOnce,
            )
            .await;
            log(&backend, &m);
            measurements.push(m);
        }
    }
    facts.push(("load average at the end".to_owned(), load_average()));
    facts.push((
        "RSS at the end".to_owned(),
        format!("{} MiB", mib(server.status_kib("VmRSS:"))),
    ));
    // Open connections would hold the server's graceful shutdown.
    drop(channels);
    drop(server);

    // The same database, served again with one setting changed.
    let restart = |settings: Vec<(&'static str, String)>| {
        let (binary, url, dir) = (&binary, &url, dir.path());
        async move {
            let (server, _) = start_server(binary, url, dir, Some(mail_ports), &settings).await;
            let channels = connections(server.port).await;
            (server, channels)
        }
    };
    let mut overloads = Vec::new();
    for capacity in OVERLOAD_CAPACITIES
        .into_iter()
        .filter(|_| selected(OVERLOAD_KEY))
    {
        let (server, channels) = restart(vec![
            ("MAILCONNECT_MAX_CONCURRENT_CALLS", capacity.to_string()),
            ("MAILCONNECT_DB_MAX_CONNECTIONS", OVERLOAD_POOL.to_string()),
        ])
        .await;
        let mut phases = Vec::new();
        for (streams, retry) in [
            (capacity, Retry::AtOnce),
            (4 * capacity, Retry::AtOnce),
            (4 * capacity, Retry::AsTold),
        ] {
            // Health checks are never shed: one more stream of them shows what the cheapest
            // answer costs on the machine meanwhile, to compare the refusals with.
            let (m, health) = tokio::join!(
                measure(
                    &context,
                    &server,
                    &channels,
                    OVERLOAD_WORKLOAD,
                    streams,
                    duration,
                    retry,
                ),
                run(
                    &context,
                    &channels,
                    Workload::HealthCheck,
                    1,
                    duration,
                    Retry::AtOnce
                ),
            );
            log(&backend, &m);
            phases.push((m, health));
        }
        overloads.push((capacity, phases));
    }
    // The cache pays off most where a read costs a database round trip: on Postgres.
    if backend == "postgres" && selected(CACHE_OFF_KEY) {
        let (server, channels) = restart(vec![("MAILCONNECT_CACHE_ENTRIES", "0".to_owned())]).await;
        // One stream first, as the default server met these reads: 64 concurrent first
        // CheckAddress calls would each build the index of 100,000 ranges (hundreds of MiB).
        for workload in CACHED_READS {
            run(
                &context,
                &channels,
                workload,
                1,
                Duration::from_millis(300),
                Retry::AtOnce,
            )
            .await;
        }
        for workload in CACHED_READS {
            let m = measure(
                &context,
                &server,
                &channels,
                workload,
                64,
                duration,
                Retry::AtOnce,
            )
            .await;
            let m = Measurement {
                server: Some("cache off"),
                ..m
            };
            log(&backend, &m);
            measurements.push(m);
        }
    }

    let mut replicas = None;
    if backend == "postgres" && selected(PROPAGATION_KEY) {
        let (first, first_channels) = restart(vec![]).await;
        let (second, second_channels) = restart(vec![]).await;
        replicas = Some(
            propagation(
                first_channels[0].clone(),
                second_channels[0].clone(),
                &platform,
            )
            .await,
        );
        drop((first_channels, second_channels, first, second));
    }

    let mut monitored = None;
    if selected(monitor::KEY) {
        let duration = std::env::var("MAILCONNECT_BENCH_MONITOR_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(Duration::from_secs(60), Duration::from_secs_f64);
        monitored = Some(monitor::run(&binary, &database, dir.path(), duration).await);
    }

    let title = format!("{backend}{}", placement.describe());
    let mut table = render(&title, &facts, &measurements);
    if let Some(delays) = replicas {
        table.push_str(&render_propagation(&delays));
    }
    if let Some(section) = monitored {
        table.push_str(&section);
    }
    for (capacity, phases) in &overloads {
        table.push_str(&render_overload(*capacity, phases));
    }
    match out {
        Some(path) => std::fs::write(path, table).unwrap(),
        None => println!("{table}"),
    }
}

fn log(backend: &str, m: &Measurement) {
    eprintln!(
        "{backend:8} {:50} {:>3} streams: {:>8.0} calls/s p99 {} ms errors {}",
        m.name(),
        m.streams,
        m.per_second(),
        ms(m.calls.all().value_at_quantile(0.99)),
        m.calls.errors(&[])
    );
}
