//! The use cases' view of the probe: something that checks a mail server and reports.

use std::future::Future;

use crate::domain::domain_settings::ServerSettings;
use crate::domain::probe::{
    ProbeContext, ProbeCredentials, ProbeRefused, ProbeReport, ProbeRequest, ProbeTarget,
};

use super::ServiceError;

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

/// The answer to a call whose probes were refused (busy, or over the account's rate).
pub fn probe_refused(refused: ProbeRefused) -> ServiceError {
    ServiceError::ResourceExhausted {
        reason: "PROBE_CAPACITY",
        message: refused.to_string(),
        retry_after: match refused {
            ProbeRefused::Busy => None,
            ProbeRefused::RateLimited { retry_after } => Some(retry_after),
        },
    }
}

/// Where a request holds each server, so a report names the exact field to fix.
pub struct ProbeFields {
    pub imap_server: &'static str,
    pub smtp_server: &'static str,
    pub exchange_url: &'static str,
}

/// The probes settings need: IMAP and SMTP, or the Exchange URL; with credentials, each logs in.
pub fn probe_requests(
    settings: &ServerSettings,
    credentials: Option<&ProbeCredentials>,
    fields: &ProbeFields,
) -> Vec<ProbeRequest> {
    let request = |target, allow_insecure_certificate, field_prefix: &str| ProbeRequest {
        target,
        allow_insecure_certificate,
        credentials: credentials.cloned(),
        field_prefix: field_prefix.to_owned(),
    };
    match settings {
        ServerSettings::Imap(imap) => vec![
            request(
                ProbeTarget::Imap(imap.imap_server.clone()),
                imap.allow_insecure_certificate,
                fields.imap_server,
            ),
            request(
                ProbeTarget::Smtp(imap.smtp_server.clone()),
                imap.allow_insecure_certificate,
                fields.smtp_server,
            ),
        ],
        ServerSettings::Exchange(exchange) => vec![request(
            ProbeTarget::Exchange(exchange.exchange_url.clone()),
            false,
            fields.exchange_url,
        )],
    }
}

/// Lets one probe (one admission budget, one egress guard) serve several use cases.
impl<P: Prober> Prober for std::sync::Arc<P> {
    fn probe_all(
        &self,
        requests: Vec<ProbeRequest>,
        context: ProbeContext,
    ) -> impl Future<Output = Result<Vec<ProbeReport>, ProbeRefused>> + Send {
        P::probe_all(self, requests, context)
    }

    fn has_room(&self, probes: usize) -> bool {
        P::has_room(self, probes)
    }
}
