//! The thread that tells a [`ReadCache`] about changes other writers made.

use std::path::Path;
use std::sync::{Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use tokio::sync::oneshot;

use super::{CHANNEL, Change, ReadCache};
use crate::storage::DatabaseUrl;

/// How often the listener reads what arrived: the usual delay before another writer's change
/// is seen here.
pub const POLL: Duration = Duration::from_millis(10);

/// How often the listener asks the database whether its connection still works.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long one successful check vouches for the cache: the longest another writer's change
/// can go unseen when the listener's connection hangs without failing.
pub const TRUST: Duration = Duration::from_secs(3);

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Tells whoever waits that the first connection attempt is over (trusted or failed).
type FirstAttempt = Option<oneshot::Sender<()>>;

type Follow = Box<dyn Fn(&Weak<ReadCache>, &mut FirstAttempt, &Stop) -> Result<(), String> + Send>;

/// The running listener thread.
pub struct Listener {
    /// Dropping it wakes the thread from its wait and ends it.
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Listener {
    /// Ends the thread at its next wait (at most one query later) and waits until it has closed
    /// its connection: no thread may still be inside libpq while the process exits, where
    /// OpenSSL's exit handlers then crash it (SIGSEGV after SIGTERM, issue 16).
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// The listener's side of [`Listener::stop`]: its waits end as soon as stopping is asked for.
struct Stop(mpsc::Receiver<()>);

impl Stop {
    /// Waits `duration`; `true` when the listener must stop (asked before or meanwhile).
    fn wait(&self, duration: Duration) -> bool {
        !matches!(
            self.0.recv_timeout(duration),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }
}

/// Starts the listener thread; the receiver completes once its first connection attempt is over.
/// `None` when there is nothing to follow or the thread could not start.
pub fn spawn(
    url: &DatabaseUrl,
    cache: Weak<ReadCache>,
) -> (Option<Listener>, oneshot::Receiver<()>) {
    let (first_attempt, over) = oneshot::channel();
    let follow: Follow = match url.clone() {
        DatabaseUrl::Postgres(url) => {
            Box::new(move |cache, first, stop| follow_postgres(&url, cache, first, stop))
        }
        DatabaseUrl::SqliteFile(path) => {
            Box::new(move |cache, first, stop| follow_sqlite(&path, cache, first, stop))
        }
        // Nobody else can write to a private in-memory database.
        DatabaseUrl::SqliteMemory => return (None, over),
    };
    let (stop, stopping) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("cache-listener".to_owned())
        .spawn(move || {
            reconnect_until_stopped(&cache, follow, Some(first_attempt), &Stop(stopping));
        });
    match spawned {
        Ok(thread) => (Some(Listener { stop, thread }), over),
        Err(error) => {
            tracing::warn!(%error, "cannot start the cache listener: reads go to the database");
            (None, over)
        }
    }
}

/// Runs `follow` again after each failure, until stopped or the cache is dropped.
fn reconnect_until_stopped(
    cache: &Weak<ReadCache>,
    follow: Follow,
    mut first: FirstAttempt,
    stop: &Stop,
) {
    let mut backoff = POLL;
    loop {
        let started = Instant::now();
        let result = follow(cache, &mut first, stop);
        // A failed first attempt is over too.
        first = None;
        let error = match result {
            Ok(()) => return,
            Err(error) => error,
        };
        let Some(cache) = cache.upgrade() else {
            return;
        };
        cache.distrust();
        tracing::warn!(%error, "cache listener disconnected: reads go to the database until it reconnects");
        if started.elapsed() > MAX_BACKOFF {
            backoff = POLL;
        }
        drop(cache);
        if stop.wait(backoff) {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// LISTENs for the triggers' notifications. `Ok` when stopped or the cache is gone.
fn follow_postgres(
    url: &str,
    cache: &Weak<ReadCache>,
    first: &mut FirstAttempt,
    stop: &Stop,
) -> Result<(), String> {
    let mut conn = PgConnection::establish(url).map_err(|e| e.to_string())?;
    conn.batch_execute(&format!(
        "SET application_name = 'mailconnect cache listener'; LISTEN {CHANNEL}"
    ))
    .map_err(|e| e.to_string())?;
    let mut checked_at = Instant::now();
    // Changes committed from now on will be notified; what was cached before may be older.
    if !start_trusting(cache, checked_at, first) {
        return Ok(());
    }
    loop {
        if stop.wait(POLL) {
            return Ok(());
        }
        let heartbeat = checked_at.elapsed() >= HEARTBEAT;
        let asked_at = Instant::now();
        if heartbeat {
            // Answered only after the server sent every notification committed before it.
            conn.batch_execute("SELECT 1").map_err(|e| e.to_string())?;
        }
        let Some(cache) = cache.upgrade() else {
            return Ok(());
        };
        for notification in conn.notifications_iter() {
            let notification = notification.map_err(|e| e.to_string())?;
            cache.apply(&Change::parse(&notification.payload));
        }
        if heartbeat {
            checked_at = asked_at;
            cache.trust_from(checked_at);
        }
    }
}

/// Forgets what was cached before the listener (re)connected at `checked_at`, and trusts the
/// cache from then on; `false` when the cache is gone.
fn start_trusting(cache: &Weak<ReadCache>, checked_at: Instant, first: &mut FirstAttempt) -> bool {
    let Some(cache) = cache.upgrade() else {
        return false;
    };
    cache.apply(&Change::Unknown);
    cache.trust_from(checked_at);
    if let Some(waiting) = first.take() {
        let _ = waiting.send(());
    }
    true
}

#[derive(QueryableByName)]
struct Generation {
    #[diesel(sql_type = BigInt)]
    generation: i64,
}

/// The counter the SQLite triggers raise with every change a cached read depends on.
fn generation(conn: &mut SqliteConnection) -> Result<i64, String> {
    diesel::sql_query("SELECT generation FROM cache_generation")
        .get_result::<Generation>(conn)
        .map(|row| row.generation)
        .map_err(|e| e.to_string())
}

/// Watches an SQLite file's change counter (raised by triggers, whoever writes: this process or
/// another, such as the import command). It does not say what changed, so the whole cache goes.
fn follow_sqlite(
    path: &Path,
    cache: &Weak<ReadCache>,
    first: &mut FirstAttempt,
    stop: &Stop,
) -> Result<(), String> {
    let mut conn =
        SqliteConnection::establish(&path.to_string_lossy()).map_err(|e| e.to_string())?;
    let mut seen = generation(&mut conn)?;
    if !start_trusting(cache, Instant::now(), first) {
        return Ok(());
    }
    loop {
        if stop.wait(POLL) {
            return Ok(());
        }
        let asked_at = Instant::now();
        let version = generation(&mut conn)?;
        let Some(cache) = cache.upgrade() else {
            return Ok(());
        };
        if version != seen {
            seen = version;
            cache.apply(&Change::Unknown);
        }
        cache.trust_from(asked_at);
    }
}
