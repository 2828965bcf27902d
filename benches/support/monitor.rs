//! The connection monitor over 10,000 ACTIVE IMAP connections whose servers stall (issue 14):
//! the real server checks them with a short interval against two loopback listeners (IMAPS and
//! submission) that accept and never write, while this measures how many connections the
//! listeners hold at once (the check concurrency bounds it), the server's RSS over time, and how
//! many checks complete per interval against the 10,000 due.
//!
//! The connections are seeded by SQL, their credentials sealed by the library
//! (`Credentials::seal`) under a key made for the run and handed to the server. Every failed check
//! adds one to its connection's `consecutive_failures`, so their sum counts the checks completed
//! (a stalled server never passes one, and no connection reaches the disconnect policy's 30 min
//! span within the run).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use diesel::RunQueryDsl as _;
use diesel::sql_types::BigInt;
use mailconnect::domain::credentials::{Credentials, PasswordLogin};
use mailconnect::domain::sealing::Keyring;
use mailconnect::domain::secret::Secret;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;

use super::{BenchConnection, Database, Server, imap_servers_json, mib, start_server, user_of};

pub const KEY: &str = "monitor";
const MONITORED: i64 = 10_000;
/// Above the ids of the API workloads' connections.
const FIRST_ID: i64 = 10_000_000;
const INTERVAL: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_secs(1);
/// The server's default (`MAILCONNECT_CONNECTION_CHECK_CONCURRENCY`).
const CONCURRENCY: usize = 8;
/// The server's default probe budgets (`MAILCONNECT_PROBE_STAGE_TIMEOUT`, `MAILCONNECT_PROBE_TIMEOUT`):
/// a stalled TLS handshake or greeting ends at the stage timeout.
const STAGE_TIMEOUT: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A loopback listener that accepts and never writes; counts the connections it holds.
struct Stalled {
    port: u16,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    /// How long each closed connection was held, from accept to the client's close.
    held: Arc<Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stalled {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (o, p, a, h) = (open.clone(), peak.clone(), accepted.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let since = Instant::now();
                a.fetch_add(1, Ordering::Relaxed);
                p.fetch_max(o.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let (o, h) = (o.clone(), h.clone());
                // Reads (and drops) what the client sends until it closes: then it no longer holds
                // the connection.
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                    o.fetch_sub(1, Ordering::SeqCst);
                    h.lock().unwrap().push(since.elapsed());
                });
            }
        });
        Self {
            port,
            open,
            peak,
            accepted,
            held,
            task,
        }
    }

    /// What the report says of this listener: peak, accepted, and the shortest, median and
    /// longest time a connection was held, in seconds.
    fn summary(&self) -> (usize, usize, [f64; 3]) {
        let mut held = self.held.lock().unwrap().clone();
        held.sort();
        let at = |i: usize| held.get(i).map_or(0.0, Duration::as_secs_f64);
        (
            self.peak.load(Ordering::SeqCst),
            self.accepted.load(Ordering::Relaxed),
            [at(0), at(held.len() / 2), at(held.len().saturating_sub(1))],
        )
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the database says about the monitored connections at one moment.
#[derive(diesel::QueryableByName)]
struct Progress {
    /// Checks completed since the start (each failed check counts one failure).
    #[diesel(sql_type = BigInt)]
    checks: i64,
    /// Connections checked at least once.
    #[diesel(sql_type = BigInt)]
    checked: i64,
    /// Connections due now and not yet claimed: the backlog.
    #[diesel(sql_type = BigInt)]
    overdue: i64,
}

impl BenchConnection {
    fn progress(&mut self, now: i64) -> Progress {
        let query = diesel::sql_query(format!(
            "SELECT CAST(COALESCE(SUM(consecutive_failures), 0) AS BIGINT) AS checks, \
             CAST(COUNT(last_check_time) AS BIGINT) AS checked, \
             CAST(COALESCE(SUM(CASE WHEN next_check_time <= {now} THEN 1 ELSE 0 END), 0) AS BIGINT) AS overdue \
             FROM connections WHERE id >= {FIRST_ID} AND state = 'active'"
        ));
        match self {
            BenchConnection::Pg(conn) => query.get_result(conn),
            BenchConnection::Sqlite(conn) => query.get_result(conn),
        }
        .expect("read the monitor's progress")
    }
}

struct Sample {
    at: Duration,
    progress: Progress,
    open: [usize; 2],
    rss_kib: u64,
}

fn micros(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// 10,000 ACTIVE personal IMAP connections over the 1,000 accounts, their servers the two
/// listeners, their first checks spread over the first interval, each with a sealed password.
fn seed(database: &Database, keys: &Keyring, imap: u16, smtp: u16) {
    let mut conn = database.connect();
    let now = micros(SystemTime::now());
    let servers = imap_servers_json(("127.0.0.1", imap), ("127.0.0.1", smtp));
    let mut connections = Vec::new();
    let mut credentials = Vec::new();
    for i in 0..MONITORED {
        let (id, account) = (FIRST_ID + i, i % 1_000 + 1);
        let address = format!("monitored{i}@acct{account}.example");
        let next_check = now + INTERVAL.as_micros() as i64 * i / MONITORED;
        connections.push(format!(
            "({id}, {account}, '{address}', '{address}', 'personal', 'imap', {}, NULL, 'active', TRUE, 'crm_email', '{servers}', 1, {now}, {now}, {now}, {next_check})",
            user_of(account)
        ));
        let login = Credentials::Password(PasswordLogin {
            username: address.clone(),
            password: Secret::new(format!("bench-password-{i}")),
        });
        let sealed = login.seal(keys, account, id);
        let password = conn.blob_literal(sealed.password.as_deref().unwrap());
        credentials.push(format!(
            "({id}, {account}, '{}', '{}', {password}, '', '')",
            sealed.key_id, sealed.username
        ));
    }
    let mut sql = String::from("BEGIN;\n");
    for chunk in connections.chunks(500) {
        writeln!(sql, "INSERT INTO connections (id, account_id, email_address, address_key, kind, provider, owner_user_id, inbox_id, state, holds_address, usages, servers, version, create_time, update_time, state_change_time, next_check_time) VALUES {};", chunk.join(",")).unwrap();
    }
    for chunk in credentials.chunks(500) {
        writeln!(sql, "INSERT INTO connection_credentials (connection_id, account_id, key_id, username, password, scopes, account_email) VALUES {};", chunk.join(",")).unwrap();
    }
    sql.push_str("COMMIT;\n");
    conn.batch_execute(&sql).unwrap();
}

/// Seeds the monitored connections, serves the database with a short check interval for
/// `duration`, and returns the report's section.
pub async fn run(binary: &Path, database: &Database, dir: &Path, duration: Duration) -> String {
    let (imap, smtp) = (Stalled::start().await, Stalled::start().await);
    let entry = Keyring::generate_entry("bench");
    let keys = Keyring::parse(&entry).unwrap();
    let started = Instant::now();
    seed(database, &keys, imap.port, smtp.port);
    let seeding = started.elapsed();
    let settings = [
        ("MAILCONNECT_ENCRYPTION_KEYS", entry.expose().to_owned()),
        (
            "MAILCONNECT_CONNECTION_CHECK_INTERVAL",
            format!("{}s", INTERVAL.as_secs()),
        ),
        (
            "MAILCONNECT_CONNECTION_CHECK_CONCURRENCY",
            CONCURRENCY.to_string(),
        ),
        (
            "MAILCONNECT_BACKGROUND_POLL_INTERVAL",
            format!("{}s", POLL.as_secs()),
        ),
        (
            "MAILCONNECT_PROBE_ALLOWED_PORTS",
            format!("{},{}", imap.port, smtp.port),
        ),
    ];
    let (server, _) = start_server(binary, &database.url(), dir, None, &settings).await;
    server.reset_peak_rss();
    let cpu_before = server.cpu_seconds();
    let samples = sample(database, &server, [&imap, &smtp], duration).await;
    let cpu = server.cpu_seconds() - cpu_before;
    let peak_rss = server.status_kib("VmHWM:");
    // SIGTERM, then wait for the exit: the monitor's round in progress is finished first.
    let stopping = Instant::now();
    drop(server);
    let stop = stopping.elapsed();
    render(
        &samples,
        [seeding, stop],
        cpu,
        peak_rss,
        [&imap, &smtp].map(Stalled::summary),
    )
}

async fn sample(
    database: &Database,
    server: &Server,
    listeners: [&Stalled; 2],
    duration: Duration,
) -> Vec<Sample> {
    let mut conn = database.connect();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    let mut samples = Vec::new();
    loop {
        ticks.tick().await;
        let at = started.elapsed();
        let open = listeners.map(Stalled::open);
        let rss_kib = server.status_kib("VmRSS:");
        let (back, progress) = tokio::task::spawn_blocking(move || {
            let progress = conn.progress(micros(SystemTime::now()));
            (conn, progress)
        })
        .await
        .unwrap();
        conn = back;
        samples.push(Sample {
            at,
            progress,
            open,
            rss_kib,
        });
        if at >= duration {
            return samples;
        }
    }
}

fn render(
    samples: &[Sample],
    [seeding, stop]: [Duration; 2],
    cpu: f64,
    peak_rss_kib: u64,
    listeners: [(usize, usize, [f64; 3]); 2],
) -> String {
    let last = samples.last().expect("sampled at least once");
    let seconds = last.at.as_secs_f64();
    let rate = last.progress.checks as f64 / seconds;
    let mut out = String::new();
    writeln!(
        out,
        "\n#### Connection monitor: {MONITORED} ACTIVE IMAP connections whose servers stall\n"
    )
    .unwrap();
    writeln!(out, "The real server, `MAILCONNECT_CONNECTION_CHECK_INTERVAL={}s`, `MAILCONNECT_CONNECTION_CHECK_CONCURRENCY={CONCURRENCY}`, `MAILCONNECT_BACKGROUND_POLL_INTERVAL={}s`, the default probe budgets ({} s a stage); each connection's IMAPS and submission servers are two loopback listeners that accept and never write, its password sealed by the library; first checks due spread over the first interval. Seeded by SQL in {:.0} ms. Measured for {seconds:.0} s.\n", INTERVAL.as_secs(), POLL.as_secs(), STAGE_TIMEOUT.as_secs(), seeding.as_secs_f64() * 1e3).unwrap();
    writeln!(out, "| s | checks completed | connections checked | due, not yet claimed | held by the IMAPS listener | held by the submission listener | server RSS MiB |").unwrap();
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    let marks = [
        0,
        samples.len() / 4,
        samples.len() / 2,
        3 * samples.len() / 4,
        samples.len() - 1,
    ];
    for (_, s) in samples
        .iter()
        .enumerate()
        .filter(|(i, _)| marks.contains(i))
    {
        writeln!(
            out,
            "| {:.0} | {} | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64(),
            s.progress.checks,
            s.progress.checked,
            s.progress.overdue,
            s.open[0],
            s.open[1],
            mib(s.rss_kib)
        )
        .unwrap();
    }
    writeln!(out).unwrap();
    let verdict = |peak: usize| {
        if peak <= CONCURRENCY {
            "within"
        } else {
            "OVER"
        }
    };
    for ((peak, accepted, [min, p50, max]), name) in listeners.iter().zip(["IMAPS", "submission"]) {
        writeln!(out, "- {name} listener: at most {peak} connections held at once ({} the check concurrency of {CONCURRENCY}, as the load client sees accepts and closes: on a busy machine it may take a new connection before it reads an earlier one's close), {accepted} accepted, each held {min:.2} / {p50:.2} / {max:.2} s (min / median / max, accept to the client's close)", verdict(*peak)).unwrap();
    }
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    writeln!(out, "- server RSS, sampled every second: {} MiB at the start, {} MiB half-way, {} MiB at the end, at most {} MiB (VmHWM {} MiB); server CPU {cpu:.2} s", mib(rss[0]), mib(rss[rss.len() / 2]), mib(rss[rss.len() - 1]), mib(rss.iter().copied().max().unwrap_or(0)), mib(peak_rss_kib)).unwrap();
    writeln!(out, "- SIGTERM to exit: {:.1} s (a round of checks in progress, up to {} claimed, {CONCURRENCY} at a time, is finished first; how long that takes depends on where in its round the stop falls)", stop.as_secs_f64(), 4 * CONCURRENCY).unwrap();
    let per_interval: Vec<String> = interval_counts(samples)
        .iter()
        .map(ToString::to_string)
        .collect();
    let held = interval_counts(samples).iter().all(|&n| n >= MONITORED);
    writeln!(out, "- checks completed in each {} s interval: {} against {MONITORED} due in each: the interval is {}", INTERVAL.as_secs(), per_interval.join(", "), if held { "held" } else { "**not held**" }).unwrap();
    // A check of a stalled server lasts the stage timeout: holding an interval takes that many.
    let needed = |interval: Duration| {
        (MONITORED as f64 * STAGE_TIMEOUT.as_secs_f64() / interval.as_secs_f64()).ceil()
    };
    writeln!(out, "- {rate:.1} checks a second, about {CONCURRENCY} every {} s (a check of a stalled server lasts the stage timeout): one pass over all {MONITORED} takes {:.0} min. To check each once per interval I, the concurrency must reach {MONITORED} × {} s / I ({:.0} for this run's {} s, {:.0} for the default 15 min) and `MAILCONNECT_PROBE_MAX_CONCURRENT` twice that (a check's two probes share its bound)", STAGE_TIMEOUT.as_secs(), MONITORED as f64 / rate.max(f64::MIN_POSITIVE) / 60.0, STAGE_TIMEOUT.as_secs(), needed(INTERVAL), INTERVAL.as_secs(), needed(Duration::from_secs(900))).unwrap();
    out
}

/// Checks completed within each whole interval since the start.
fn interval_counts(samples: &[Sample]) -> Vec<i64> {
    let mut counts = Vec::new();
    let mut start = 0;
    for s in samples {
        let boundary = INTERVAL * (counts.len() as u32 + 1);
        if s.at >= boundary {
            counts.push(s.progress.checks - start);
            start = s.progress.checks;
        }
    }
    counts
}
