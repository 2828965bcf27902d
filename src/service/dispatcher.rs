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
        let claimed = self
            .store
            .claim_due_notifications(now, now + LEASE, BATCH)
            .await?;
        let mut sent = 0;
        for (notification, attempts) in claimed {
            match self.relay.send(self.mail(&notification)).await {
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
    use super::*;

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
