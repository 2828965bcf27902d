//! How long a probe may take and how many may run: a timeout per stage, an overall budget that
//! ends before the caller's deadline, a global bound on concurrent probes, a per-account share of
//! it and a per-account rate.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::ProbeSettings;
use crate::domain::probe::{ProbeContext, ProbeRefused};

/// Time kept back from the caller's deadline so that the report still reaches them.
const REPLY_MARGIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub overall: Duration,
    pub stage: Duration,
}

impl Budget {
    /// When the probe must be over: after its own budget, and before the caller stops waiting.
    pub fn deadline(&self, start: Instant, caller_deadline: Option<Instant>) -> Instant {
        let own = after(start, self.overall);
        match caller_deadline {
            Some(caller) => own.min(caller.checked_sub(REPLY_MARGIN).unwrap_or(start).max(start)),
            None => own,
        }
    }
}

/// `start + duration`, or a year later when that would overflow (settings bound timeouts, but a
/// deadline must never panic).
pub fn after(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(start)
}

/// Admission: the global concurrency bound, each account's share of it and the per-account rate
/// limit.
pub struct Admission {
    running: Arc<Semaphore>,
    per_account_cap: usize,
    per_account_running: Arc<Mutex<HashMap<i64, usize>>>,
    per_account: DefaultKeyedRateLimiter<i64>,
}

/// Admitted probes: their room under the global bound and in their account's share, given back
/// when dropped.
pub struct Admitted {
    _running: OwnedSemaphorePermit,
    _share: Option<AccountShare>,
}

struct AccountShare {
    account: i64,
    probes: usize,
    running: Arc<Mutex<HashMap<i64, usize>>>,
}

impl AccountShare {
    /// Takes `probes` of the account's share, or nothing when they do not fit.
    fn take(
        running: &Arc<Mutex<HashMap<i64, usize>>>,
        account: i64,
        probes: usize,
        cap: usize,
    ) -> Option<Self> {
        let mut counts = running.lock().unwrap_or_else(|p| p.into_inner());
        let held = counts.entry(account).or_default();
        if *held + probes > cap {
            return None;
        }
        *held += probes;
        Some(Self {
            account,
            probes,
            running: running.clone(),
        })
    }
}

impl Drop for AccountShare {
    fn drop(&mut self) {
        let mut counts = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = counts.get_mut(&self.account) {
            *held = held.saturating_sub(self.probes);
            if *held == 0 {
                counts.remove(&self.account);
            }
        }
    }
}

impl Admission {
    pub fn new(settings: &ProbeSettings) -> Self {
        let per_minute = NonZeroU32::new(settings.probe_rate_per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            running: Arc::new(Semaphore::new(
                usize::try_from(settings.probe_max_concurrent.max(1)).unwrap_or(usize::MAX),
            )),
            per_account_cap: usize::try_from(settings.probe_max_concurrent_per_account)
                .unwrap_or(usize::MAX),
            per_account_running: Arc::default(),
            per_account: RateLimiter::hashmap(Quota::per_minute(per_minute)),
        }
    }

    /// Whether `probes` probes would fit under the concurrency bound now (a hint: nothing is
    /// taken).
    pub fn has_room(&self, probes: usize) -> bool {
        self.running.available_permits() >= probes
    }

    /// Admits `probes` probes together, or none of them and says why. What is returned is held
    /// until they end. Room is taken before the account's rate is charged: a call refused as busy
    /// has probed nothing and must not spend the minute's allowance its retry will need.
    pub fn admit(&self, context: &ProbeContext, probes: usize) -> Result<Admitted, ProbeRefused> {
        let count = u32::try_from(probes).map_err(|_| ProbeRefused::Busy)?;
        let share = match context.account_id {
            Some(account) => Some(
                AccountShare::take(
                    &self.per_account_running,
                    account,
                    probes,
                    self.per_account_cap,
                )
                .ok_or(ProbeRefused::Busy)?,
            ),
            None => None,
        };
        let running = self
            .running
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| ProbeRefused::Busy)?;
        if let Some(account) = context.account_id
            && let Some(count) = NonZeroU32::new(count)
        {
            match self.per_account.check_key_n(&account, count) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let now = self.per_account.clock().now();
                    return Err(ProbeRefused::RateLimited {
                        retry_after: not_until.wait_time_from(now),
                    });
                }
                // More probes than the account may start in a minute: they never fit at once
                // (the settings' lower bound of 2 keeps a call of IMAP and SMTP within it).
                Err(_) => {
                    return Err(ProbeRefused::RateLimited {
                        retry_after: Duration::from_secs(60),
                    });
                }
            }
        }
        Ok(Admitted {
            _running: running,
            _share: share,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_never_overflow() {
        let start = Instant::now();
        let budget = Budget {
            overall: Duration::MAX,
            stage: Duration::MAX,
        };
        assert!(budget.deadline(start, None) > start);
        assert!(after(start, Duration::MAX) > start);
        let caller = start + Duration::from_secs(5);
        assert!(budget.deadline(start, Some(caller)) < caller);
    }
}
