//! The connection pool: one enum over both backends, pooled by deadpool, queries on its blocking
//! threads.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use deadpool_sync::SyncWrapper;
use diesel::connection::SimpleConnection;
use diesel::{Connection, ConnectionError, PgConnection, RunQueryDsl, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use quick_cache::sync::Cache;
use tracing::Instrument as _;

use super::cache::{Change, ReadCache};
use super::{DatabaseUrl, StoreError};

const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Key of the Postgres advisory lock that serialises migrations across replicas.
const MIGRATION_LOCK_KEY: i64 = 0x6d61_696c_636f_6e6e; // "mailconn"

/// How long [`Database::close`] waits for the cache listener to close its connection.
const LISTENER_STOP_BOUND: Duration = Duration::from_secs(5);

/// How long a pooled connection may sit unused before it is checked with `SELECT 1` on reuse.
const CHECK_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// Opens connections of the backend the URL names (MultiConnection's own `establish` would try
/// every backend in turn and hide the real error).
struct Manager {
    url: DatabaseUrl,
}

fn establish(url: &DatabaseUrl) -> Result<DbConnection, ConnectionError> {
    match url {
        DatabaseUrl::Postgres(url) => PgConnection::establish(url).map(DbConnection::Pg),
        DatabaseUrl::SqliteFile(path) => {
            let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
            conn.batch_execute(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
            )
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(DbConnection::Sqlite(conn))
        }
        DatabaseUrl::SqliteMemory => {
            let mut conn = SqliteConnection::establish(":memory:")?;
            conn.batch_execute("PRAGMA foreign_keys = ON;")
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(DbConnection::Sqlite(conn))
        }
    }
}

impl managed::Manager for Manager {
    type Type = SyncWrapper<DbConnection>;
    type Error = ConnectionError;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        let url = self.url.clone();
        SyncWrapper::new(Runtime::Tokio1, move || establish(&url)).await
    }

    /// A connection that sat idle may have been closed by the server or the network: it is
    /// checked before reuse. One in steady use is not (the check was a second round trip and a
    /// second blocking-thread hop on every call); `Database::run` discards a connection whose
    /// work failed for any reason but a constraint, so a broken one is never handed out twice.
    async fn recycle(
        &self,
        conn: &mut Self::Type,
        metrics: &Metrics,
    ) -> RecycleResult<Self::Error> {
        if conn.is_mutex_poisoned() {
            return Err(RecycleError::message("connection mutex poisoned"));
        }
        if metrics.last_used() < CHECK_WHEN_IDLE_FOR {
            return Ok(());
        }
        conn.interact(|conn| diesel::sql_query("SELECT 1").execute(conn))
            .await
            .map_err(|_| RecycleError::message("connection check panicked"))?
            .map_err(|e| RecycleError::message(format!("connection check failed: {e}")))?;
        Ok(())
    }
}

/// The application's database: a pool, the knowledge of which backend it is, and the read
/// cache of the hot paths when the server turned it on.
#[derive(Clone)]
pub struct Database {
    pool: Pool<Manager>,
    url: DatabaseUrl,
    cache: Option<Arc<ReadCache>>,
}

impl Database {
    /// Creates the pool. Connections are opened lazily, so this succeeds while the database is
    /// still down; [`Database::ping`] tells whether it is reachable.
    pub fn new(url: DatabaseUrl, max_connections: usize) -> anyhow::Result<Self> {
        if let DatabaseUrl::SqliteFile(path) = &url
            && let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // An in-memory SQLite database lives and dies with its one connection.
        let size = if url == DatabaseUrl::SqliteMemory {
            1
        } else {
            max_connections.max(1)
        };
        let pool = Pool::builder(Manager { url: url.clone() })
            .max_size(size)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(Runtime::Tokio1)
            .build()
            .context("cannot create the database pool")?;
        Ok(Self {
            pool,
            url,
            cache: None,
        })
    }

    /// Keeps up to `entries` hot reads in memory (none when 0). The cache answers nothing until
    /// [`Database::follow_changes`] connected its listener.
    pub fn with_read_cache(mut self, entries: usize) -> Self {
        self.cache = (entries > 0).then(|| Arc::new(ReadCache::new(entries, &self.url)));
        self
    }

    /// Starts listening for other writers' changes (once the schema, and so the Postgres
    /// triggers, exist); returns once the listener's first connection attempt is over.
    pub async fn follow_changes(&self) {
        if let Some(cache) = &self.cache {
            cache.follow(&self.url).await;
        }
    }

    /// `load`'s value, from the read cache when it has one that no change made stale.
    pub(super) async fn cached<K, V, F, Fut>(
        &self,
        pick: impl FnOnce(&ReadCache) -> &Cache<K, V>,
        key: K,
        load: F,
    ) -> Result<V, StoreError>
    where
        K: Eq + Hash + Clone,
        V: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, StoreError>>,
    {
        match &self.cache {
            Some(cache) => cache.get_or_load(pick(cache), key, load).await,
            None => load().await,
        }
    }

    /// Evicts what this process just changed, so that its next read sees it.
    pub(super) fn changed(&self, change: &Change) {
        if let Some(cache) = &self.cache {
            cache.apply(change);
        }
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Stops the read cache's listener thread (joined) and closes the pool, whose connections
    /// are then closed on the runtime's blocking threads, which the runtime joins when it is
    /// dropped. The server calls it last: no thread of ours may still be inside libpq while the
    /// process exits (issue 16). Every clone is closed; calls after it are UNAVAILABLE.
    pub async fn close(&self) {
        if let Some(cache) = self.cache.clone() {
            let stopped = tokio::task::spawn_blocking(move || cache.stop_following());
            // The listener answers within one poll, unless libpq itself hangs (a connect or a
            // heartbeat to a database that stopped answering): exiting beats hanging then.
            if tokio::time::timeout(LISTENER_STOP_BOUND, stopped)
                .await
                .is_err()
            {
                tracing::warn!(
                    bound = ?LISTENER_STOP_BOUND,
                    "the cache listener did not stop in time (its database does not answer); exiting without it"
                );
            }
        }
        self.pool.close();
    }

    /// Runs `work` with a pooled connection on a blocking thread, in a `db.query` client span
    /// (a child of the caller's) that covers the wait for a connection and the work.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        // Only inside a call: the readiness loop's pings would otherwise be a root trace each.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "db.query",
                otel.kind = "client",
                db.system.name = self.url.system_name(),
            )
        };
        let in_span = span.clone();
        async move {
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let result = conn
                .interact(move |conn| in_span.in_scope(|| work(conn)))
                .await
                .map_err(|e| StoreError::Internal(format!("database task failed: {e}")))
                .and_then(|result| result);
            if matches!(
                result,
                Err(StoreError::Unavailable(_) | StoreError::Internal(_))
            ) {
                // The connection may be broken: never reuse it (see Manager::recycle).
                let _ = managed::Object::take(conn);
            }
            result
        }
        .instrument(span)
        .await
    }

    /// The pool's size, idle connections and waiting callers (for the pool gauges).
    pub fn pool_status(&self) -> deadpool::Status {
        self.pool.status()
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
    }

    /// Applies pending migrations; returns how many ran. On Postgres an advisory lock makes
    /// replicas that start together take turns.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        self.run(|conn| match conn {
            DbConnection::Pg(conn) => {
                diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                    .execute(conn)?;
                let applied = conn
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|done| done.len())
                    .map_err(|e| StoreError::Internal(format!("migration failed: {e}")));
                diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                    .execute(conn)?;
                applied
            }
            DbConnection::Sqlite(conn) => conn
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|done| done.len())
                .map_err(|e| StoreError::Internal(format!("migration failed: {e}"))),
        })
        .await
    }

    /// Whether migrations are still pending (the server is not ready until none are).
    pub async fn has_pending_migrations(&self) -> Result<bool, StoreError> {
        self.run(|conn| {
            match conn {
                DbConnection::Pg(conn) => conn.has_pending_migration(POSTGRES_MIGRATIONS),
                DbConnection::Sqlite(conn) => conn.has_pending_migration(SQLITE_MIGRATIONS),
            }
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))
        })
        .await
    }
}
