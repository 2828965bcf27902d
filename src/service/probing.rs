//! The use cases' view of the probe: something that checks a mail server and reports.

use std::future::Future;

use crate::domain::probe::{ProbeContext, ProbeRefused, ProbeReport, ProbeRequest};

pub trait Prober: Send + Sync + 'static {
    /// Runs the probes of one call concurrently, a report each in the order asked; a failing
    /// server is a report with a failed outcome, not an error. They are admitted together (the
    /// concurrency bound and the account's rate), or none is run: a call refused for one of its
    /// probes must not hold a slot running the others, which, with many callers, left most calls
    /// refused after half their work.
    fn probe_all(
        &self,
        requests: Vec<ProbeRequest>,
        context: ProbeContext,
    ) -> impl Future<Output = Result<Vec<ProbeReport>, ProbeRefused>> + Send;

    /// Whether `probes` probes would find room now, taking nothing: lets a call that would be
    /// refused skip the database reads it makes before probing. Only a hint (room may come or go
    /// before `probe_all`, which decides).
    fn has_room(&self, probes: usize) -> bool;
}
