//! The read cache of the hot paths: a domain's preset (ResolveConnectionSettings,
//! GetDomainSettings), the data center hosting an account and a data center's allowlist
//! (GetAllowlist), and the allowlist generation (CheckAddress).
//!
//! It never serves a value older than the last change it was told about, and it is told about
//! every change (README, "Read cache"):
//! - this process's writes evict what they changed before they return;
//! - on Postgres, triggers NOTIFY each change, whoever made it (another replica, the import
//!   command, SQL by hand), and a listener thread evicts it within [`listener::POLL`];
//! - on an SQLite file, triggers raise a change counter (`cache_generation`), and the listener
//!   empties the cache when it rose;
//! - the cache answers only while its listener proved, at most [`TRUST`] ago, that nothing was
//!   missed; otherwise every read goes to the database;
//! - a value read from the database is kept only if no eviction happened while it was read.

mod change;
mod listener;

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use quick_cache::sync::Cache;

pub use change::{CHANNEL, Change};
pub use listener::TRUST;

use super::{DatabaseUrl, StoreError};
use crate::domain::directory::DataCenterId;
use crate::domain::domain_settings::DomainSettings;
use crate::service::allowlist::StoredList;

/// Data centers whose lists are kept (each may hold many ranges).
const ALLOWLISTS: usize = 16;

pub struct ReadCache {
    pub(super) settings: Cache<(i64, String), Option<DomainSettings>>,
    pub(super) data_centers: Cache<i64, Option<DataCenterId>>,
    pub(super) allowlists: Cache<String, Arc<StoredList>>,
    pub(super) generation: Cache<(), i64>,
    /// Moves with every eviction: a load that saw it move keeps nothing.
    epoch: AtomicU64,
    /// Microseconds after `started` until which the listener vouches for the entries; 0 until it
    /// has connected.
    trusted_until: AtomicU64,
    started: Instant,
    /// The thread following other writers, until [`ReadCache::stop_following`].
    listener: Mutex<Option<listener::Listener>>,
}

impl ReadCache {
    /// A cache of at most `entries` presets and as many accounts, trusted only once
    /// [`ReadCache::follow`] connected its listener (a private in-memory database has no other
    /// writer and is trusted at once).
    pub fn new(entries: usize, url: &DatabaseUrl) -> Self {
        let cache = Self {
            settings: Cache::new(entries),
            data_centers: Cache::new(entries),
            allowlists: Cache::new(ALLOWLISTS),
            generation: Cache::new(1),
            epoch: AtomicU64::new(0),
            trusted_until: AtomicU64::new(0),
            started: Instant::now(),
            listener: Mutex::new(None),
        };
        if *url == DatabaseUrl::SqliteMemory {
            cache.trusted_until.store(u64::MAX, SeqCst);
        }
        cache
    }

    /// Starts the thread that tells this cache about other writers' changes, and waits until its
    /// first connection attempt is over (so a replica reporting SERVING uses its cache). The
    /// thread runs until [`ReadCache::stop_following`] (or until the cache is dropped).
    pub async fn follow(self: &Arc<Self>, url: &DatabaseUrl) {
        let (listener, first_attempt) = listener::spawn(url, Arc::downgrade(self));
        *self.listener.lock().unwrap_or_else(PoisonError::into_inner) = listener;
        // An error only means the thread could not start: the cache then stays untrusted.
        let _ = first_attempt.await;
    }

    /// Stops the listener thread and waits until it has closed its connection (blocking: call
    /// it off the runtime's threads). The cache is no longer trusted afterwards.
    pub fn stop_following(&self) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(listener) = listener {
            listener.stop();
            self.distrust();
        }
    }

    /// The cached value, or `load`'s, kept for the next caller unless something was evicted
    /// meanwhile.
    pub(super) async fn get_or_load<K, V, F, Fut>(
        &self,
        map: &Cache<K, V>,
        key: K,
        load: F,
    ) -> Result<V, StoreError>
    where
        K: Eq + Hash + Clone,
        V: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, StoreError>>,
    {
        if !self.trusted() {
            return load().await;
        }
        if let Some(value) = map.get(&key) {
            return Ok(value);
        }
        let epoch = self.epoch.load(SeqCst);
        let value = load().await?;
        if self.trusted() && self.epoch.load(SeqCst) == epoch {
            map.insert(key.clone(), value.clone());
            // An eviction between the check and the insert bumped the epoch before it removed;
            // it may have removed nothing, so this insert is undone.
            if self.epoch.load(SeqCst) != epoch {
                map.remove(&key);
            }
        }
        Ok(value)
    }

    /// Evicts what a change makes stale.
    pub fn apply(&self, change: &Change) {
        self.epoch.fetch_add(1, SeqCst);
        match change {
            Change::DomainSettings { account_id, domain } => {
                self.settings.remove(&(*account_id, domain.clone()));
            }
            Change::Account(id) => {
                self.data_centers.remove(id);
            }
            Change::Allowlist(data_center) => {
                self.allowlists.remove(data_center);
                self.generation.remove(&());
            }
            Change::Unknown => {
                self.settings.clear();
                self.data_centers.clear();
                self.allowlists.clear();
                self.generation.clear();
            }
        }
    }

    fn trusted(&self) -> bool {
        self.micros_since_start(Instant::now()) < self.trusted_until.load(SeqCst)
    }

    /// Vouches for the entries until `checked_at + TRUST`; `checked_at` is when the listener
    /// last asked the database, so a listener that hangs afterwards stops being trusted in time.
    fn trust_from(&self, checked_at: Instant) {
        let until = self.micros_since_start(checked_at + TRUST);
        self.trusted_until.fetch_max(until, SeqCst);
    }

    /// The listener lost its connection: nothing cached can be vouched for.
    fn distrust(&self) {
        self.trusted_until.store(0, SeqCst);
        self.apply(&Change::Unknown);
    }

    fn micros_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_micros()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Instant;

    use super::{Change, ReadCache, TRUST};
    use crate::storage::{DatabaseUrl, StoreError};

    fn trusted_cache() -> ReadCache {
        ReadCache::new(100, &DatabaseUrl::SqliteMemory)
    }

    async fn load(cache: &ReadCache, value: i64) -> i64 {
        cache
            .get_or_load(&cache.generation, (), || async {
                Ok::<_, StoreError>(value)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn keeps_a_loaded_value_until_a_change_evicts_it() {
        let cache = trusted_cache();
        assert_eq!(load(&cache, 1).await, 1);
        assert_eq!(
            load(&cache, 2).await,
            1,
            "the second read is served from the cache"
        );
        cache.apply(&Change::Allowlist("na1".to_owned()));
        assert_eq!(load(&cache, 2).await, 2);
    }

    #[tokio::test]
    async fn a_load_overtaken_by_a_change_is_not_kept() {
        let cache = trusted_cache();
        let value = cache
            .get_or_load(&cache.generation, (), || async {
                // The row changes while it is being read.
                cache.apply(&Change::Allowlist("na1".to_owned()));
                Ok::<_, StoreError>(1)
            })
            .await
            .unwrap();
        assert_eq!(value, 1, "the caller still gets what it read");
        assert_eq!(load(&cache, 2).await, 2, "but the next caller reads again");
    }

    #[tokio::test]
    async fn an_untrusted_cache_reads_through() {
        let cache = ReadCache::new(100, &DatabaseUrl::Postgres("postgres://unused".to_owned()));
        assert_eq!(load(&cache, 1).await, 1);
        assert_eq!(
            load(&cache, 2).await,
            2,
            "nothing is kept before the listener connects"
        );
        cache.trust_from(Instant::now());
        assert_eq!(load(&cache, 3).await, 3);
        assert_eq!(load(&cache, 4).await, 3);
        cache.distrust();
        assert_eq!(
            load(&cache, 5).await,
            5,
            "losing the listener empties the cache"
        );
        assert_eq!(load(&cache, 6).await, 6);
    }

    #[test]
    fn trust_ends_a_window_after_the_last_check() {
        let cache = ReadCache::new(100, &DatabaseUrl::Postgres("postgres://unused".to_owned()));
        let long_ago = Instant::now()
            .checked_sub(TRUST * 2)
            .unwrap_or(cache.started);
        cache.trust_from(long_ago);
        assert!(
            !cache.trusted(),
            "a check older than the window vouches for nothing"
        );
        cache.trust_from(Instant::now());
        assert!(cache.trusted());
        assert!(cache.trusted_until.load(SeqCst) > 0);
    }

    #[test]
    fn evicts_only_what_changed() {
        let cache = trusted_cache();
        cache.settings.insert((1, "a.example".to_owned()), None);
        cache.settings.insert((1, "b.example".to_owned()), None);
        cache.data_centers.insert(1, None);
        cache.apply(&Change::DomainSettings {
            account_id: 1,
            domain: "a.example".to_owned(),
        });
        assert!(cache.settings.get(&(1, "a.example".to_owned())).is_none());
        assert!(cache.settings.get(&(1, "b.example".to_owned())).is_some());
        assert!(cache.data_centers.get(&1).is_some());
        cache.apply(&Change::Unknown);
        assert!(cache.settings.get(&(1, "b.example".to_owned())).is_none());
        assert!(cache.data_centers.get(&1).is_none());
    }
}
