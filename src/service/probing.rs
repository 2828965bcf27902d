//! The use cases' view of the probe: something that checks a mail server and reports.

use std::future::Future;

use crate::domain::probe::{ProbeContext, ProbeRefused, ProbeReport, ProbeRequest};

pub trait Prober: Send + Sync + 'static {
    /// Runs one probe; a failing server is a report with a failed outcome, not an error. Errors are
    /// only for probes that were not run (concurrency bound or rate limit).
    fn probe(
        &self,
        request: ProbeRequest,
        context: ProbeContext,
    ) -> impl Future<Output = Result<ProbeReport, ProbeRefused>> + Send;
}
