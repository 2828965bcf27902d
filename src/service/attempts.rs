//! Attempts to connect an address of a domain without a preset (ResolveConnectionSettings for a
//! built-in provider or an unknown domain), counted in memory and written behind: one database
//! write per call was most of that call's cost.
//!
//! The counts per (account, domain) reach the database in one transaction per flush: every
//! interval, at once when many domains are pending, before ListAttemptedDomains reads (a replica
//! sees its own attempts at once) and when the application stops. A crash loses at most one
//! interval of counts; other replicas see them within one interval.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::domain::domain_name::DomainName;
use crate::service::StoreError;

/// The attempts of one account at one domain since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptTally {
    pub account_id: i64,
    pub domain: DomainName,
    pub attempts: i64,
    pub first_attempt_time: SystemTime,
    pub last_attempt_time: SystemTime,
}

/// Where the counts are written.
pub trait AttemptStore: Send + Sync + 'static {
    /// Adds the tallies in one transaction: attempts add up, the earliest first attempt time and
    /// the latest last attempt time stay.
    fn record_attempts(
        &self,
        tallies: Vec<AttemptTally>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Pending domains that start a flush before the interval ends. Enough that the domains users
/// keep retrying are counted many times per row written: at 1,000, 4,000 distinct domains tried
/// over and over flushed about 40 times a second.
const FLUSH_AT: usize = 5_000;

/// The most domains kept pending (about 100 bytes each). Only while the database refuses the
/// counts can more pile up: attempts at further domains are then dropped, and counted in a
/// warning.
const MAX_PENDING: usize = 10 * FLUSH_AT;

#[derive(Debug, Clone, Copy)]
struct Counts {
    attempts: i64,
    first: SystemTime,
    last: SystemTime,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.attempts += other.attempts;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

#[derive(Default)]
struct Pending {
    counts: HashMap<(i64, DomainName), Counts>,
    /// Attempts not counted because `MAX_PENDING` domains were pending.
    dropped: i64,
}

impl Pending {
    fn add(&mut self, key: (i64, DomainName), counts: Counts) {
        let full = self.counts.len() >= MAX_PENDING;
        match self.counts.entry(key) {
            Entry::Occupied(mut existing) => existing.get_mut().add(counts),
            Entry::Vacant(slot) if !full => {
                slot.insert(counts);
            }
            Entry::Vacant(_) => self.dropped += counts.attempts,
        }
    }
}

/// Counts attempts in memory and writes them to its store when flushed.
pub struct AttemptRecorder<A> {
    store: A,
    pending: Mutex<Pending>,
    /// One flush at a time, so that a reader's flush waits for the one in progress.
    flushing: tokio::sync::Mutex<()>,
    many_pending: Notify,
}

impl<A: AttemptStore> AttemptRecorder<A> {
    pub fn new(store: A) -> Self {
        Self {
            store,
            pending: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            many_pending: Notify::new(),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts an attempt made now.
    pub fn record(&self, account_id: i64, domain: &DomainName) {
        let now = SystemTime::now();
        let counts = Counts {
            attempts: 1,
            first: now,
            last: now,
        };
        let pending_domains = {
            let mut pending = self.pending();
            pending.add((account_id, domain.clone()), counts);
            pending.counts.len()
        };
        if pending_domains >= FLUSH_AT {
            self.many_pending.notify_one();
        }
    }

    /// Writes every pending count. It runs in a task of its own, so that a caller that goes
    /// away (a cancelled ListAttemptedDomains) cannot drop the counts it took out of the map.
    pub async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        let recorder = Arc::clone(self);
        tokio::spawn(async move { recorder.write_pending().await })
            .await
            .map_err(|error| StoreError::Internal(format!("attempts flush failed: {error}")))?
    }

    /// Writes every pending count; on failure they are pending again, for the next flush.
    async fn write_pending(&self) -> Result<(), StoreError> {
        let _turn = self.flushing.lock().await;
        let (counts, dropped) = {
            let mut pending = self.pending();
            let dropped = std::mem::take(&mut pending.dropped);
            (std::mem::take(&mut pending.counts), dropped)
        };
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_pending_domains = MAX_PENDING,
                "attempts at domains beyond the pending limit were not counted"
            );
        }
        if counts.is_empty() {
            return Ok(());
        }
        let tallies = counts
            .iter()
            .map(|((account_id, domain), counts)| AttemptTally {
                account_id: *account_id,
                domain: domain.clone(),
                attempts: counts.attempts,
                first_attempt_time: counts.first,
                last_attempt_time: counts.last,
            })
            .collect();
        let written = self.store.record_attempts(tallies).await;
        if let Err(error) = &written {
            tracing::warn!(%error, domains = counts.len(), "attempt counts not written; they stay pending");
            let mut pending = self.pending();
            for (key, counts) in counts {
                pending.add(key, counts);
            }
        }
        written
    }

    /// Starts the task that flushes every `interval` and whenever many domains are pending.
    pub fn start_flusher(self: &Arc<Self>, interval: Duration) -> Flusher {
        let recorder = Arc::clone(self);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            // The first tick is immediate.
            ticks.tick().await;
            let mut last_flush_failed = false;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    // After a failure only the ticks retry: a database that refuses at once
                    // must not turn every call into a flush and a warning.
                    () = recorder.many_pending.notified(), if !last_flush_failed => {}
                    _ = &mut stopped => break,
                }
                // A failure is logged and its counts are kept for the next turn.
                last_flush_failed = recorder.write_pending().await.is_err();
            }
            if recorder.write_pending().await.is_err() {
                tracing::warn!(
                    "stopping with attempt counts the database did not take: they are lost"
                );
            }
        });
        Flusher {
            stop: Some(stop),
            task,
        }
    }
}

/// The flusher task; dropping it aborts the task, [`Flusher::stop`] ends it with a last flush.
pub struct Flusher {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Flusher {
    /// Stops the periodic flushes and writes what is pending.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(error) = (&mut self.task).await {
            tracing::warn!(%error, "the attempts flusher failed");
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Refuses the first `failures` writes, then keeps what it is given; notes when it was called.
    #[derive(Default)]
    struct FlakyStore {
        failures: AtomicUsize,
        written: Mutex<Vec<Vec<AttemptTally>>>,
        calls: Mutex<Vec<tokio::time::Instant>>,
        called: Notify,
    }

    impl FlakyStore {
        fn failing(failures: usize) -> Self {
            Self {
                failures: AtomicUsize::new(failures),
                ..Self::default()
            }
        }

        fn written(&self) -> Vec<Vec<AttemptTally>> {
            self.written.lock().unwrap().clone()
        }
    }

    impl AttemptStore for Arc<FlakyStore> {
        async fn record_attempts(&self, tallies: Vec<AttemptTally>) -> Result<(), StoreError> {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            self.called.notify_one();
            let refuse = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
            if refuse {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            self.written.lock().unwrap().push(tallies);
            Ok(())
        }
    }

    fn domain(name: &str) -> DomainName {
        DomainName::parse("domain", name).unwrap()
    }

    fn recorder(store: &Arc<FlakyStore>) -> Arc<AttemptRecorder<Arc<FlakyStore>>> {
        Arc::new(AttemptRecorder::new(Arc::clone(store)))
    }

    fn sorted(mut tallies: Vec<AttemptTally>) -> Vec<AttemptTally> {
        tallies.sort_by(|a, b| (a.account_id, &a.domain).cmp(&(b.account_id, &b.domain)));
        tallies
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_its_counts_for_the_next() {
        let store = Arc::new(FlakyStore::failing(1));
        let recorder = recorder(&store);
        recorder.record(1, &domain("acme.example"));
        recorder.record(1, &domain("acme.example"));
        recorder.record(2, &domain("acme.example"));
        let between = SystemTime::now();
        assert!(recorder.flush().await.is_err());
        assert!(store.written().is_empty());
        recorder.record(1, &domain("acme.example"));

        recorder.flush().await.unwrap();
        let written = store.written();
        assert_eq!(written.len(), 1, "one write per flush");
        let tallies = sorted(written[0].clone());
        assert_eq!(
            tallies
                .iter()
                .map(|t| (t.account_id, t.domain.as_str(), t.attempts))
                .collect::<Vec<_>>(),
            [(1, "acme.example", 3), (2, "acme.example", 1)]
        );
        // The earliest first and the latest last attempt survive the merge after the failure.
        assert!(tallies[0].first_attempt_time <= between);
        assert!(tallies[0].last_attempt_time >= between);

        recorder.flush().await.unwrap();
        assert_eq!(store.written().len(), 1, "nothing pending, nothing written");
    }

    #[tokio::test]
    async fn stopping_the_flusher_writes_what_is_pending() {
        let store = Arc::new(FlakyStore::default());
        let recorder = recorder(&store);
        let flusher = recorder.start_flusher(Duration::from_secs(3600));
        recorder.record(7, &domain("gmail.com"));
        recorder.record(7, &domain("gmail.com"));
        flusher.stop().await;
        let written = store.written();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0][0].attempts, 2);
    }

    #[tokio::test]
    async fn many_pending_domains_start_a_flush_before_the_interval_ends() {
        let store = Arc::new(FlakyStore::default());
        let recorder = recorder(&store);
        let flusher = recorder.start_flusher(Duration::from_secs(3600));
        for n in 0..FLUSH_AT {
            recorder.record(1, &domain(&format!("d{n}.example")));
        }
        // The bound only turns a hang into a failure: the interval is an hour.
        tokio::time::timeout(Duration::from_secs(60), store.called.notified())
            .await
            .expect("a flush once FLUSH_AT domains are pending");
        let written: usize = store.written().iter().map(Vec::len).sum();
        assert_eq!(written, FLUSH_AT);
        flusher.stop().await;
    }

    /// On tokio's paused clock: the first flush comes at once, the retry only with the tick.
    #[tokio::test(start_paused = true)]
    async fn after_a_failed_flush_only_the_interval_retries() {
        let store = Arc::new(FlakyStore::failing(usize::MAX));
        let recorder = recorder(&store);
        let interval = Duration::from_secs(3600);
        let start = tokio::time::Instant::now();
        let flusher = recorder.start_flusher(interval);
        for n in 0..FLUSH_AT {
            recorder.record(1, &domain(&format!("d{n}.example")));
        }
        store.called.notified().await;
        for n in 0..FLUSH_AT {
            recorder.record(1, &domain(&format!("e{n}.example")));
        }
        store.called.notified().await;
        let calls = store.calls.lock().unwrap().clone();
        assert!(calls[0] - start < interval, "the first flush did not wait");
        assert!(
            calls[1] - start >= interval,
            "the retry waited for the tick"
        );
        drop(flusher);
    }

    #[tokio::test]
    async fn pending_domains_stay_bounded_while_the_database_refuses_them() {
        let store = Arc::new(FlakyStore::failing(usize::MAX));
        let recorder = recorder(&store);
        for n in 0..MAX_PENDING + 5 {
            recorder.record(1, &domain(&format!("d{n}.example")));
        }
        // Known domains keep counting at the limit.
        recorder.record(1, &domain("d0.example"));
        let d0 = (1, domain("d0.example"));
        {
            let pending = recorder.pending();
            assert_eq!(pending.counts.len(), MAX_PENDING);
            assert_eq!(pending.counts[&d0].attempts, 2);
            assert_eq!(pending.dropped, 5);
        }
        // The failed flush reported the dropped attempts and kept the rest.
        assert!(recorder.flush().await.is_err());
        let pending = recorder.pending();
        assert_eq!(pending.counts.len(), MAX_PENDING);
        assert_eq!(pending.counts[&d0].attempts, 2);
        assert_eq!(pending.dropped, 0);
    }

    /// Holds every write until released.
    #[derive(Default)]
    struct GatedStore {
        entered: Notify,
        release: Notify,
        written: Mutex<Vec<AttemptTally>>,
    }

    impl AttemptStore for Arc<GatedStore> {
        async fn record_attempts(&self, tallies: Vec<AttemptTally>) -> Result<(), StoreError> {
            self.entered.notify_one();
            self.release.notified().await;
            self.written.lock().unwrap().extend(tallies);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_flush_whose_caller_went_away_still_writes() {
        let store = Arc::new(GatedStore::default());
        let recorder = Arc::new(AttemptRecorder::new(Arc::clone(&store)));
        recorder.record(1, &domain("acme.example"));
        tokio::select! {
            _ = recorder.flush() => panic!("the store holds the write"),
            () = store.entered.notified() => {}
        }
        // The caller's flush is dropped here, mid-write.
        store.release.notify_one();
        // This flush waits for the one in progress, then finds nothing pending.
        recorder.flush().await.unwrap();
        assert_eq!(store.written.lock().unwrap().len(), 1);
        assert!(recorder.pending().counts.is_empty());
    }
}
