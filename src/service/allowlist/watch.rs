//! WatchAllowlist: the history after a version, then live changes.
//!
//! Changes published by this process arrive at once through a broadcast channel. Changes
//! published elsewhere (another replica, the import command) are found by reading the database
//! every [`POLL_INTERVAL`], and whenever the broadcast shows a gap or overflows. Versions are
//! contiguous per data center, so each change is sent exactly once, in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::{AllowlistService, AllowlistStore};
use crate::domain::allowlist::AllowlistChange;
use crate::domain::directory::DataCenterId;
use crate::service::ServiceError;

/// How often a watcher reads the database for changes published by other processes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Changes read from the database at a time.
const BATCH: usize = 100;

type Sender = mpsc::Sender<Result<AllowlistChange, ServiceError>>;

impl<S: AllowlistStore> AllowlistService<S> {
    pub(super) async fn stream_changes(
        self: Arc<Self>,
        data_center: DataCenterId,
        mut last: i64,
        mut live: broadcast::Receiver<AllowlistChange>,
        sender: Sender,
    ) {
        let mut stopping = self.stopping.subscribe();
        // The first tick is immediate: it sends the history.
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let read_database = tokio::select! {
                () = sender.closed() => return,
                () = stopped(&mut stopping) => {
                    let _ = sender.send(Err(shutting_down(last))).await;
                    return;
                }
                _ = poll.tick() => true,
                received = live.recv() => match received {
                    Ok(change) if change.data_center != data_center || change.version <= last => false,
                    Ok(change) if change.version == last + 1 => {
                        last = change.version;
                        if sender.send(Ok(change)).await.is_err() {
                            return;
                        }
                        false
                    }
                    // A gap (published elsewhere in between) or missed messages.
                    Ok(_) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                },
            };
            if read_database {
                match self
                    .send_stored_changes(&data_center, &mut last, &sender)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                }
            }
        }
    }

    /// Sends the stored changes after `last`; `false` when the receiver is gone.
    async fn send_stored_changes(
        &self,
        data_center: &DataCenterId,
        last: &mut i64,
        sender: &Sender,
    ) -> Result<bool, ServiceError> {
        loop {
            let changes = self.store.changes_after(data_center, *last, BATCH).await?;
            let complete = changes.len() < BATCH;
            for change in changes {
                *last = change.version;
                if sender.send(Ok(change)).await.is_err() {
                    return Ok(false);
                }
            }
            if complete {
                return Ok(true);
            }
        }
    }
}

async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the service is gone, which also ends the stream.
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

fn shutting_down(last: i64) -> ServiceError {
    ServiceError::Unavailable(format!(
        "the server is shutting down: watch again with from_version {last}"
    ))
}
