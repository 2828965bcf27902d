//! The probe: proves that an IMAP, SMTP or Exchange server answers its protocol, from this
//! service's network, and reports what it found in words an admin can act on (DESIGN.md §5).

pub mod budget;
mod classify;
pub mod cli;
mod exchange;
mod imap;
mod literal;
pub mod net;
mod resolve;
mod run;
mod smtp;
mod stream;
pub mod tls;

use tokio::time::Instant;

use crate::config::ProbeSettings;
use crate::domain::probe::{
    ProbeContext, ProbeRefused, ProbeReport, ProbeRequest, ProbeTarget, Security,
};
use crate::probe::budget::{Admission, Budget};
use crate::probe::net::{Connector, EgressGuard, TcpConnector};
use crate::probe::run::ProbeRun;
use crate::probe::tls::TlsClient;
use crate::service::probing::Prober;

pub struct Probe<C: Connector = TcpConnector> {
    guard: EgressGuard,
    budget: Budget,
    admission: Admission,
    tls: TlsClient,
    connector: C,
}

impl Probe {
    /// The probe the service and the command line use: the real network, the webpki roots.
    pub fn from_settings(settings: &ProbeSettings) -> Self {
        Self::with_connector(settings, TcpConnector)
    }
}

impl<C: Connector> Probe<C> {
    /// A probe that opens connections through `connector` (tests record attempts with it).
    pub fn with_connector(settings: &ProbeSettings, connector: C) -> Self {
        Self {
            guard: EgressGuard::new(settings),
            budget: Budget {
                overall: settings.probe_timeout,
                stage: settings.probe_stage_timeout,
            },
            admission: Admission::new(settings),
            tls: TlsClient::with_webpki_roots(&settings.probe_ca_files),
            connector,
        }
    }

    /// Trusts these roots instead of the webpki roots (a private CA, or a test's).
    pub fn with_tls_client(mut self, tls: TlsClient) -> Self {
        self.tls = tls;
        self
    }

    /// The egress guard, for callers that validate a port before probing.
    pub fn guard(&self) -> &EgressGuard {
        &self.guard
    }

    /// Runs one probe, admitted on its own.
    pub async fn probe(
        &self,
        request: ProbeRequest,
        context: ProbeContext,
    ) -> Result<ProbeReport, ProbeRefused> {
        let mut reports = self.probe_all(vec![request], context).await?;
        Ok(reports.remove(0))
    }

    /// Runs one probe without admission control (the command line runs exactly one).
    #[tracing::instrument(skip_all, fields(target = %request.target))]
    pub async fn run(
        &self,
        request: ProbeRequest,
        caller_deadline: Option<Instant>,
    ) -> ProbeReport {
        let plan = plan(&request);
        let mut run = ProbeRun::new(&request, self.budget, caller_deadline, plan);
        // A failed stage is recorded in the run; the report says which and why.
        let _ = match &request.target {
            ProbeTarget::Imap(server) => imap::probe(self, &mut run, server).await,
            ProbeTarget::Smtp(server) => smtp::probe(self, &mut run, server).await,
            ProbeTarget::Exchange(url) => exchange::probe(self, &mut run, url).await,
        };
        let report = run.finish();
        tracing::info!(outcome = ?report.outcome, field = %report.field, "probe finished");
        report
    }
}

impl<C: Connector> Prober for Probe<C> {
    async fn probe_all(
        &self,
        requests: Vec<ProbeRequest>,
        context: ProbeContext,
    ) -> Result<Vec<ProbeReport>, ProbeRefused> {
        let _permit = self.admission.admit(&context, requests.len())?;
        let runs = requests
            .into_iter()
            .map(|request| self.run(request, context.deadline));
        Ok(futures_util::future::join_all(runs).await)
    }

    fn has_room(&self, probes: usize) -> bool {
        self.admission.has_room(probes)
    }
}

/// The stages a probe of this request runs when everything works.
fn plan(request: &ProbeRequest) -> Vec<&'static str> {
    let login = request.credentials.is_some();
    let mut stages = vec!["resolve", "connect"];
    match &request.target {
        ProbeTarget::Imap(server) => {
            if server.security == Security::ImplicitTls {
                stages.push("tls");
            }
            stages.extend(["greeting", "capabilities"]);
            if server.security == Security::StartTls {
                stages.extend(["starttls", "tls", "capabilities_after_tls"]);
            }
            if login {
                stages.push("login");
            }
            stages.push("logout");
        }
        ProbeTarget::Smtp(server) => {
            if server.security == Security::ImplicitTls {
                stages.push("tls");
            }
            stages.extend(["greeting", "ehlo"]);
            if server.security == Security::StartTls {
                stages.extend(["starttls", "tls", "ehlo_after_tls"]);
            }
            if login {
                stages.push("login");
            }
            stages.push("quit");
        }
        ProbeTarget::Exchange(_) => {
            stages.extend(["tls", "ews_request"]);
            if login {
                stages.push("login");
            }
        }
    }
    stages
}
