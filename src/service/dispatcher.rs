//! Mails the notifications outbox through the SMTP relay: each due notification is leased by one
//! replica, sent with a Message-ID of its own (so a resend after a crash is recognisable as the
//! same message), and retried with backoff while the relay is down.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::domain::notification::Notification;

use super::StoreError;
use super::clock::Clock;

/// How long a claimed notification is this replica's to send before another may try.
const LEASE: Duration = Duration::from_secs(60);
/// The longest one send may take: well inside the lease, so that no other replica claims a
/// notification while this one may still be mailing it (lettre waits up to 60 s per command).
const SEND_TIMEOUT: Duration = Duration::from_secs(20);
/// Notifications claimed per round.
const BATCH: usize = 50;
/// Attempts before a notification is given up (about a day of backoff).
const MAX_ATTEMPTS: i32 = 30;

/// One email to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// Without angle brackets, e.g. `notification-42@mailconnect.invalid`.
    pub message_id: String,
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The relay is down or said "try later": retry with backoff.
    #[error("relay unavailable: {0}")]
    Temporary(String),
    /// The relay refused the message for good (a 5xx reply): retrying cannot help.
    #[error("relay refused the message: {0}")]
    Permanent(String),
}

pub trait MailRelay: Send + Sync + 'static {
    fn send(&self, mail: OutgoingMail) -> impl Future<Output = Result<(), RelayError>> + Send;
}

impl<M: MailRelay> MailRelay for Arc<M> {
    fn send(&self, mail: OutgoingMail) -> impl Future<Output = Result<(), RelayError>> + Send {
        (**self).send(mail)
    }
}

pub trait OutboxStore: Send + Sync + 'static {
    /// Leases up to `limit` notifications due at `now` (with an address to mail) until
    /// `lease_until`, counting the attempt; another replica then skips them.
    fn claim_due_notifications(
        &self,
        now: SystemTime,
        lease_until: SystemTime,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(Notification, i32)>, StoreError>> + Send;
    fn mark_sent(
        &self,
        id: i64,
        now: SystemTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records the failure; `retry_at` `None` gives the notification up.
    fn mark_failed(
        &self,
        id: i64,
        error: String,
        retry_at: Option<SystemTime>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The wait before attempt `attempts + 1`: 5 s doubling, at most an hour.
pub fn backoff(attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
    Duration::from_secs(5)
        .saturating_mul(1 << doublings)
        .min(Duration::from_secs(3600))
}

pub struct Dispatcher<S, M> {
    store: S,
    relay: M,
    clock: Arc<dyn Clock>,
    /// The domain of Message-IDs (that of the From address).
    message_domain: String,
}

impl<S: OutboxStore, M: MailRelay> Dispatcher<S, M> {
    pub fn new(store: S, relay: M, clock: Arc<dyn Clock>, message_domain: String) -> Self {
        Self {
            store,
            relay,
            clock,
            message_domain,
        }
    }

    fn mail(&self, notification: &Notification) -> OutgoingMail {
        let message = &notification.notification;
        OutgoingMail {
            message_id: format!("notification-{}@{}", notification.id, self.message_domain),
            to: message.recipient_email.clone(),
            subject: message.subject.clone(),
            body: format!(
                "{}\n\nThis message was sent by mailconnect about {} (connections/{}).\n",
                message.message, message.email_address, message.connection_id
            ),
        }
    }

    /// Sends what is due now; returns how many were sent.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let lease_until = now + LEASE;
        let claimed = self
            .store
            .claim_due_notifications(now, lease_until, BATCH)
            .await?;
        let mut sent = 0;
        for (notification, attempts) in claimed {
            // The rest of the batch waits for its lease to end rather than risk being mailed
            // by another replica too.
            if self.clock.now() + SEND_TIMEOUT > lease_until {
                break;
            }
            let sending =
                tokio::time::timeout(SEND_TIMEOUT, self.relay.send(self.mail(&notification)));
            let outcome = sending.await.unwrap_or_else(|_| {
                Err(RelayError::Temporary(format!(
                    "the relay did not finish within {} s",
                    SEND_TIMEOUT.as_secs()
                )))
            });
            match outcome {
                Ok(()) => {
                    self.store
                        .mark_sent(notification.id, self.clock.now())
                        .await?;
                    sent += 1;
                }
                Err(error) => {
                    let retry_at = match &error {
                        RelayError::Temporary(_) if attempts < MAX_ATTEMPTS => {
                            Some(self.clock.now() + backoff(attempts))
                        }
                        _ => None,
                    };
                    tracing::warn!(
                        notification = notification.id,
                        attempts,
                        %error,
                        retrying = retry_at.is_some(),
                        "a notification could not be mailed"
                    );
                    self.store
                        .mark_failed(notification.id, error.to_string(), retry_at)
                        .await?;
                }
            }
        }
        Ok(sent)
    }
}

/// Runs `round` every `poll` until `stopping` turns true, then returns (so the caller can join
/// it before the process exits). A failed round is logged and retried at the next tick.
pub async fn run_every<F, Fut>(
    what: &'static str,
    poll: Duration,
    mut stopping: watch::Receiver<bool>,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A round longer than `poll` leaves the next tick ready at once: the stop must win, or a
        // stopping process could start round after round (found by the monitor's benchmark).
        tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        if let Err(error) = round().await {
            tracing::warn!(%error, worker = what, "background round failed; retrying at the next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::connection::ConnectionKind;
    use crate::domain::notification::{NewNotification, NotificationKind};
    use crate::service::clock::ManualClock;

    /// An outbox of `count` due notifications that records what became of each.
    #[derive(Default)]
    struct Outbox {
        count: i64,
        sent: Mutex<Vec<i64>>,
        failed: Mutex<Vec<(i64, Option<SystemTime>)>>,
    }

    impl OutboxStore for Arc<Outbox> {
        async fn claim_due_notifications(
            &self,
            now: SystemTime,
            _lease_until: SystemTime,
            limit: usize,
        ) -> Result<Vec<(Notification, i32)>, StoreError> {
            Ok((1..=self.count)
                .take(limit)
                .map(|id| (notification(id, now), 1))
                .collect())
        }
        async fn mark_sent(&self, id: i64, _now: SystemTime) -> Result<(), StoreError> {
            self.sent.lock().unwrap().push(id);
            Ok(())
        }
        async fn mark_failed(
            &self,
            id: i64,
            _error: String,
            retry_at: Option<SystemTime>,
        ) -> Result<(), StoreError> {
            self.failed.lock().unwrap().push((id, retry_at));
            Ok(())
        }
    }

    fn notification(id: i64, now: SystemTime) -> Notification {
        Notification {
            id,
            notification: NewNotification {
                account_id: 1,
                recipient_user_id: 7,
                recipient_email: "ana@example.com".into(),
                kind: NotificationKind::ConnectionDeleted,
                connection_id: 3,
                email_address: "support@example.com".into(),
                connection_kind: ConnectionKind::Team,
                disconnect_reason: None,
                actor_user_id: 0,
                subject: "deleted".into(),
                message: "deleted".into(),
            },
            create_time: now,
        }
    }

    /// A relay that never answers.
    struct Stalled;

    impl MailRelay for Stalled {
        async fn send(&self, _mail: OutgoingMail) -> Result<(), RelayError> {
            std::future::pending().await
        }
    }

    /// A relay that answers after `each` of the service's clock.
    struct Slow {
        clock: Arc<ManualClock>,
        each: Duration,
    }

    impl MailRelay for Slow {
        async fn send(&self, _mail: OutgoingMail) -> Result<(), RelayError> {
            self.clock.advance(self.each);
            Ok(())
        }
    }

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30),
        ))
    }

    /// A stalled relay must not hold a notification past its lease, when another replica
    /// would claim and mail it too.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_send_is_given_up_inside_the_lease_and_retried() {
        let outbox = Arc::new(Outbox {
            count: 1,
            ..Default::default()
        });
        let clock = clock();
        let dispatcher = Dispatcher::new(outbox.clone(), Stalled, clock.clone(), "x".into());
        let started = tokio::time::Instant::now();
        assert_eq!(dispatcher.run_once().await.unwrap(), 0);
        assert!(started.elapsed() < LEASE);
        let failed = outbox.failed.lock().unwrap().clone();
        assert_eq!(failed, vec![(1, Some(clock.now() + backoff(1)))]);
    }

    /// Sends that together outlast the lease stop where one more could end after it; the rest
    /// stay claimed until the lease ends and are sent in a later round.
    #[tokio::test]
    async fn a_batch_stops_before_its_lease_ends() {
        let outbox = Arc::new(Outbox {
            count: 10,
            ..Default::default()
        });
        let clock = clock();
        let relay = Slow {
            clock: clock.clone(),
            each: Duration::from_secs(15),
        };
        let dispatcher = Dispatcher::new(outbox.clone(), relay, clock, "x".into());
        // 0 s, 15 s and 30 s start within LEASE - SEND_TIMEOUT = 40 s; 45 s does not.
        assert_eq!(dispatcher.run_once().await.unwrap(), 3);
        assert_eq!(*outbox.sent.lock().unwrap(), vec![1, 2, 3]);
        assert!(outbox.failed.lock().unwrap().is_empty());
    }

    /// Every time, the first round asks to stop and outlasts the poll, so the next tick is
    /// ready together with the stop: no second round may start.
    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_long_round_starts_no_other_round() {
        for _ in 0..64 {
            let (stop_tx, stop) = watch::channel(false);
            let rounds = std::sync::atomic::AtomicUsize::new(0);
            run_every("test", Duration::from_secs(1), stop, || {
                rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stop_tx.send(true);
                async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(0)
                }
            })
            .await;
            assert_eq!(rounds.load(std::sync::atomic::Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(5), Duration::from_secs(80));
        assert_eq!(backoff(30), Duration::from_secs(3600));
        assert_eq!(backoff(i32::MAX), Duration::from_secs(3600));
    }
}
