//! The connection monitor, what makes DISCONNECTED real: every interval each ACTIVE mailbox is
//! checked with its stored credentials (a login on its servers, or a refresh of its OAuth grant).
//! A refused login or grant disconnects at once; failures that may be an outage only after the
//! failure policy says so. Each connection is claimed by one replica per interval.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use crate::domain::connection::{CheckResult, Connection, FailurePolicy};
use crate::domain::credentials::Credentials;
use crate::domain::probe::{ProbeContext, ProbeCredentials, ProbeOutcome, ProbeReport};
use crate::domain::sealing::Keyring;

use super::StoreError;
use super::clock::Clock;
use super::domain_settings::WriteOutcome;
use super::inbox_connections::store::{ConnectionChange, InboxConnectionStore};
use super::inbox_connections::{GrantCheck, TokenRefresher};
use super::probing::{ProbeFields, Prober, probe_requests};

/// Reports of a check name the connection's stored servers.
const STORED_FIELDS: ProbeFields = ProbeFields {
    imap_server: "servers.imap_server",
    smtp_server: "servers.smtp_server",
    exchange_url: "servers.exchange_url",
};

pub trait MonitorStore: InboxConnectionStore {
    /// Claims up to `limit` ACTIVE connections whose check is due at `now` by moving their next
    /// check to `next`: another replica does not see them as due until then.
    fn claim_due_checks(
        &self,
        now: SystemTime,
        next: SystemTime,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Connection>, StoreError>> + Send;
}

/// How often, how many at once, and when failures disconnect.
#[derive(Debug, Clone, Copy)]
pub struct MonitorOptions {
    pub policy: FailurePolicy,
    pub interval: Duration,
    pub concurrency: usize,
}

pub struct Monitor<S, P, O> {
    store: S,
    prober: P,
    oauth: O,
    clock: Arc<dyn Clock>,
    keys: Option<Keyring>,
    policy: FailurePolicy,
    interval: Duration,
    /// Checks running at once in this process.
    slots: Arc<Semaphore>,
}

/// Whether a login stage refused the credentials (rather than the server failing).
fn login_refused(reports: &[ProbeReport]) -> Option<&ProbeReport> {
    reports.iter().find(|report| {
        !report.outcome.is_success()
            && report
                .stages
                .iter()
                .any(|stage| stage.name == "login" && stage.outcome == ProbeOutcome::Failed)
    })
}

fn failure_text(report: &ProbeReport) -> String {
    format!("{}: {}", report.target, report.hint)
}

impl<S: MonitorStore, P: Prober, O: TokenRefresher> Monitor<S, P, O> {
    pub fn new(
        store: S,
        prober: P,
        oauth: O,
        clock: Arc<dyn Clock>,
        keys: Option<Keyring>,
        options: MonitorOptions,
    ) -> Self {
        Self {
            store,
            prober,
            oauth,
            clock,
            keys,
            policy: options.policy,
            interval: options.interval,
            slots: Arc::new(Semaphore::new(options.concurrency.max(1))),
        }
    }

    /// Checks every connection due now, at most the concurrency bound at a time; returns how
    /// many were checked.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let limit = self.slots.available_permits().max(1) * 4;
        let due = self
            .store
            .claim_due_checks(now, now + self.interval, limit)
            .await?;
        let checked = due.len();
        let checks = due.into_iter().map(|connection| async move {
            let _slot = self.slots.acquire().await;
            if let Err(error) = self.check(&connection).await {
                tracing::warn!(connection = %connection.name(), %error, "connection check not recorded");
            }
        });
        futures_util::future::join_all(checks).await;
        Ok(checked)
    }

    async fn check(&self, connection: &Connection) -> Result<(), StoreError> {
        let Some(result) = self.result(connection).await? else {
            return Ok(());
        };
        let now = self.clock.now();
        let (health, disconnect) = connection.health.after(&result, now, self.policy);
        let change = match disconnect {
            Some(reason) => {
                tracing::warn!(connection = %connection.name(), reason = reason.as_str(), error = %health.last_error, "connection disconnected by the monitor");
                ConnectionChange::Disconnect { reason, health }
            }
            None => ConnectionChange::Checked {
                health,
                next_check_time: Some(now + self.interval),
            },
        };
        // A user changed the connection meanwhile (reauthorized, deactivated): their word wins.
        match self
            .store
            .change_connection(
                connection.account_id,
                connection.id,
                Some(connection.version),
                change,
                now,
            )
            .await?
        {
            WriteOutcome::Done(_) | WriteOutcome::NotFound | WriteOutcome::Stale => Ok(()),
        }
    }

    /// What checking the mailbox found; `None` when it could not be checked now (no key to
    /// open its credentials, the probes busy, no OAuth client): nothing is recorded.
    async fn result(&self, connection: &Connection) -> Result<Option<CheckResult>, StoreError> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let Some(sealed) = self
            .store
            .credentials(connection.account_id, connection.id)
            .await?
        else {
            return Ok(None);
        };
        let credentials = match sealed.open(keys, connection.account_id, connection.id) {
            Ok(credentials) => credentials,
            Err(error) => {
                tracing::error!(connection = %connection.name(), %error, "stored credentials do not open");
                return Ok(None);
            }
        };
        Ok(match (credentials, &connection.servers) {
            (Credentials::Password(login), Some(servers)) => {
                let login = ProbeCredentials {
                    username: login.username,
                    password: login.password,
                };
                let requests = probe_requests(&servers.settings, Some(&login), &STORED_FIELDS);
                match self
                    .prober
                    .probe_all(requests, ProbeContext::default())
                    .await
                {
                    Err(_busy) => None,
                    Ok(reports) => Some(if let Some(refused) = login_refused(&reports) {
                        CheckResult::Refused {
                            revoked: false,
                            error: failure_text(refused),
                        }
                    } else if let Some(failed) =
                        reports.iter().find(|report| !report.outcome.is_success())
                    {
                        CheckResult::Failed(failure_text(failed))
                    } else {
                        CheckResult::Passed
                    }),
                }
            }
            (Credentials::OAuth(grant), _) => {
                match self
                    .oauth
                    .check(connection.provider, &grant.refresh_token)
                    .await
                {
                    GrantCheck::Valid => Some(CheckResult::Passed),
                    GrantCheck::Invalid(error) => Some(CheckResult::Refused {
                        revoked: true,
                        error: format!("the provider refused the grant: {error}"),
                    }),
                    GrantCheck::Unavailable(error) => Some(CheckResult::Failed(error)),
                    GrantCheck::NotConfigured => None,
                }
            }
            (Credentials::Password(_), None) => None,
        })
    }
}
