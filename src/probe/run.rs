//! One probe in progress: runs stages under their timeouts, records each one, and stops at the
//! first failure with the field to fix and a hint.

use std::future::Future;
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::Instrument as _;

use crate::domain::probe::{
    ProbeOutcome, ProbeProtocol, ProbeReport, ProbeRequest, ProbeStage, ProbeTarget, Security,
    ServerEndpoint, TlsInfo,
};
use crate::probe::Probe;
use crate::probe::budget::{self, Budget};
use crate::probe::classify;
use crate::probe::net::{self, Connector};
use crate::probe::stream::{ProbeStream, RecordedTcp, Transcript};
use crate::probe::tls::TlsClient;
use tokio_rustls::client::TlsStream;

/// The request field a failure points at, relative to the request's `field_prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRef {
    Host,
    Port,
    Security,
    /// The Exchange URL: the prefix itself.
    Url,
    /// A sibling of the server field (`domain_settings.imap.allow_insecure_certificate`).
    AllowInsecureCertificate,
    Password,
}

impl FieldRef {
    fn path(self, prefix: &str) -> String {
        let parent = prefix.rsplit_once('.').map(|(parent, _)| parent);
        let join = |base: Option<&str>, name: &str| match base {
            Some(base) if !base.is_empty() => format!("{base}.{name}"),
            _ => name.to_owned(),
        };
        match self {
            FieldRef::Host => join(Some(prefix), "host"),
            FieldRef::Port => join(Some(prefix), "port"),
            FieldRef::Security => join(Some(prefix), "security"),
            FieldRef::Url if prefix.is_empty() => "url".to_owned(),
            FieldRef::Url => prefix.to_owned(),
            FieldRef::AllowInsecureCertificate => join(parent, "allow_insecure_certificate"),
            FieldRef::Password => "credentials.password".to_owned(),
        }
    }
}

/// Why a stage failed, for a person.
#[derive(Debug, Clone)]
pub struct Failure {
    pub outcome: ProbeOutcome,
    pub detail: String,
    pub server_reply: Option<String>,
    pub field: FieldRef,
    pub hint: String,
}

impl Failure {
    pub fn failed(detail: impl Into<String>, field: FieldRef, hint: impl Into<String>) -> Self {
        Self {
            outcome: ProbeOutcome::Failed,
            detail: detail.into(),
            server_reply: None,
            field,
            hint: hint.into(),
        }
    }

    pub fn with_outcome(mut self, outcome: ProbeOutcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn with_reply(mut self, reply: impl Into<String>) -> Self {
        self.server_reply = Some(reply.into());
        self
    }
}

/// A stage that passed: its value, what to say about it, and whether it deserves a warning.
pub struct Passed<T> {
    pub value: T,
    pub detail: String,
    pub server_reply: Option<String>,
    pub warning: bool,
}

impl<T> Passed<T> {
    pub fn new(value: T, detail: impl Into<String>) -> Self {
        Self {
            value,
            detail: detail.into(),
            server_reply: None,
            warning: false,
        }
    }

    pub fn with_reply(mut self, reply: impl Into<String>) -> Self {
        self.server_reply = Some(reply.into());
        self
    }

    pub fn warning(mut self) -> Self {
        self.warning = true;
        self
    }
}

/// The probe stopped at a failed stage; the failure is in the run.
#[derive(Debug)]
pub struct Stopped;

pub struct ProbeRun<'a> {
    pub request: &'a ProbeRequest,
    budget: Budget,
    started: Instant,
    deadline: Instant,
    pub transcript: Transcript,
    /// Whether TLS is up, which changes what a silent server most likely means.
    pub tls_up: bool,
    plan: Vec<&'static str>,
    stages: Vec<ProbeStage>,
    pub tls: Option<TlsInfo>,
    pub capabilities: Vec<String>,
    pub auth_mechanisms: Vec<String>,
    pub connected_address: String,
    failure: Option<Failure>,
}

impl<'a> ProbeRun<'a> {
    /// `plan` names the stages expected to run, so that those a failure prevents are reported as
    /// skipped.
    pub fn new(
        request: &'a ProbeRequest,
        budget: Budget,
        caller_deadline: Option<Instant>,
        plan: Vec<&'static str>,
    ) -> Self {
        let started = Instant::now();
        Self {
            request,
            budget,
            started,
            deadline: budget.deadline(started, caller_deadline),
            transcript: Transcript::default(),
            tls_up: false,
            plan,
            stages: Vec::new(),
            tls: None,
            capabilities: Vec::new(),
            auth_mechanisms: Vec::new(),
            connected_address: String::new(),
            failure: None,
        }
    }

    pub fn security(&self) -> Security {
        match &self.request.target {
            ProbeTarget::Imap(server) | ProbeTarget::Smtp(server) => server.security,
            ProbeTarget::Exchange(_) => Security::ImplicitTls,
        }
    }

    /// Runs one stage under its timeout (never past the probe's deadline) and records it.
    pub async fn stage<T>(
        &mut self,
        name: &'static str,
        work: impl Future<Output = Result<Passed<T>, Failure>>,
    ) -> Result<T, Stopped> {
        let start = Instant::now();
        let stage_deadline = budget::after(start, self.budget.stage).min(self.deadline);
        let mark = self.transcript.mark();
        let protocol = protocol_name(self.request.target.protocol());
        let span = tracing::info_span!(
            "probe.stage",
            otel.name = format!("probe.{name}"),
            probe.protocol = protocol,
            probe.stage = name
        );
        let result = match tokio::time::timeout_at(stage_deadline, work.instrument(span)).await {
            Ok(result) => result,
            Err(_) => {
                let overall = stage_deadline == self.deadline;
                Err(classify::timed_out(self, name, overall))
            }
        };
        let latency = start.elapsed();
        let outcome = match &result {
            Ok(passed) if passed.warning => ProbeOutcome::Warning,
            Ok(_) => ProbeOutcome::Ok,
            Err(failure) => failure.outcome,
        };
        crate::telemetry::record_probe_stage(protocol, name, outcome_name(outcome));
        let heard = || classify::excerpt(&self.transcript.since(mark));
        match result {
            Ok(passed) => {
                self.stages.push(ProbeStage {
                    name: name.to_owned(),
                    outcome,
                    latency,
                    detail: passed.detail,
                    server_reply: passed.server_reply.unwrap_or_else(heard),
                });
                Ok(passed.value)
            }
            Err(failure) => {
                self.stages.push(ProbeStage {
                    name: name.to_owned(),
                    outcome,
                    latency,
                    detail: failure.detail.clone(),
                    server_reply: failure.server_reply.clone().unwrap_or_else(heard),
                });
                self.failure = Some(failure);
                Err(Stopped)
            }
        }
    }

    /// Resolve, egress guard, connect: the first three stages of every protocol.
    pub async fn connect<C: Connector>(
        &mut self,
        probe: &Probe<C>,
        host: &str,
        port: u16,
    ) -> Result<RecordedTcp, Stopped> {
        let guard = &probe.guard;
        let connector = &probe.connector;
        let addresses = self
            .stage("resolve", async {
                let refused = |refusal| classify::refused(refusal, host);
                guard.check_port(port).map_err(refused)?;
                guard.check_host(host).map_err(refused)?;
                let resolved = match net::localhost(host, port) {
                    Some(loopback) => Ok(loopback),
                    None => connector.resolve(host, port).await,
                };
                let addresses = resolved
                    .and_then(|addresses| {
                        if addresses.is_empty() {
                            Err(std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "the name has no addresses",
                            ))
                        } else {
                            Ok(addresses)
                        }
                    })
                    .map_err(|error| classify::resolve_failed(host, &error))?;
                let ips: Vec<_> = addresses.iter().map(|address| address.ip()).collect();
                guard.check_addresses(&ips).map_err(refused)?;
                let listed = ips.iter().map(ToString::to_string).collect::<Vec<_>>();
                Ok(Passed::new(
                    addresses,
                    format!("{host} resolves to {}", listed.join(", ")),
                ))
            })
            .await?;
        let (tcp, address) = self
            .stage("connect", async {
                let mut last_error = None;
                for address in &addresses {
                    match connector.connect(*address).await {
                        Ok(tcp) => {
                            return Ok(Passed::new(
                                (tcp, *address),
                                format!("TCP connection to {address} established"),
                            ));
                        }
                        Err(error) => last_error = Some((*address, error)),
                    }
                }
                let (address, error) = last_error.expect("resolution returns at least one address");
                Err(classify::connect_failed(address, &error))
            })
            .await?;
        self.connected_address = address.to_string();
        Ok(RecordedTcp::new(tcp, self.transcript.clone()))
    }

    /// The TLS stage: handshake and certificate report. Recording stops once TLS is up, since
    /// only ciphertext passes below it.
    /// Connects to a mail server and, for implicit TLS, runs the handshake: the opening of the
    /// IMAP and SMTP probes (STARTTLS comes later, in the protocol).
    pub async fn open<C: Connector>(
        &mut self,
        probe: &Probe<C>,
        server: &ServerEndpoint,
    ) -> Result<ProbeStream, Stopped> {
        let tcp = self.connect(probe, &server.host, server.port).await?;
        Ok(match server.security {
            Security::ImplicitTls => ProbeStream::Tls(Box::new(
                self.secure(&probe.tls, tcp, &server.host, &[]).await?,
            )),
            Security::StartTls | Security::Plaintext => ProbeStream::Plain(tcp),
        })
    }

    pub async fn secure(
        &mut self,
        tls: &TlsClient,
        tcp: RecordedTcp,
        host: &str,
        alpn: &[&[u8]],
    ) -> Result<TlsStream<RecordedTcp>, Stopped> {
        let allow_insecure_certificate = self.request.allow_insecure_certificate;
        let protocol = self.request.target.protocol();
        let transcript = self.transcript.clone();
        let mark = transcript.mark();
        let mut seen = None;
        let result = self
            .stage("tls", async {
                match tls
                    .handshake(tcp, host, allow_insecure_certificate, alpn)
                    .await
                {
                    Ok(handshake) => {
                        let info = &handshake.info;
                        let summary = format!(
                            "{} {}; certificate {} issued by {}",
                            info.version, info.cipher, info.subject, info.issuer
                        );
                        seen = Some(handshake.info.clone());
                        let passed = match handshake.untrusted_because {
                            Some(reason) => Passed::new(
                                handshake.stream,
                                format!(
                                    "{summary}; the certificate is not trusted ({reason}) and \
                                     was accepted because allow_insecure_certificate is on"
                                ),
                            )
                            .warning(),
                            None => Passed::new(handshake.stream, summary),
                        };
                        Ok(passed.with_reply(""))
                    }
                    Err(failure) => {
                        seen = failure.info.clone();
                        Err(classify::tls_failed(
                            protocol,
                            &transcript.since(mark),
                            &failure,
                        ))
                    }
                }
            })
            .await;
        self.tls = seen;
        if result.is_ok() {
            self.transcript.stop();
            self.tls_up = true;
        }
        result
    }

    /// Builds the report: the stages run, those skipped, and the verdict.
    pub fn finish(mut self) -> ProbeReport {
        for name in &self.plan {
            if !self.stages.iter().any(|stage| stage.name == *name) {
                self.stages.push(ProbeStage {
                    name: (*name).to_owned(),
                    outcome: ProbeOutcome::Skipped,
                    latency: Default::default(),
                    detail: "not run because an earlier stage failed".to_owned(),
                    server_reply: String::new(),
                });
            }
        }
        let (outcome, field, hint) = match self.failure {
            Some(failure) => {
                // An Exchange server's host and port are parts of its URL, the field to fix.
                let field = match (self.request.target.protocol(), failure.field) {
                    (ProbeProtocol::Exchange, FieldRef::Host | FieldRef::Port) => FieldRef::Url,
                    (_, field) => field,
                };
                (
                    failure.outcome,
                    field.path(&self.request.field_prefix),
                    failure.hint,
                )
            }
            None if self
                .stages
                .iter()
                .any(|stage| stage.outcome == ProbeOutcome::Warning) =>
            {
                (ProbeOutcome::Warning, String::new(), String::new())
            }
            None => (ProbeOutcome::Ok, String::new(), String::new()),
        };
        ProbeReport {
            target: self.request.target.to_string(),
            protocol: self.request.target.protocol(),
            outcome,
            stages: self.stages,
            tls: self.tls,
            capabilities: self.capabilities,
            auth_mechanisms: self.auth_mechanisms,
            field,
            hint,
            total_latency: self.started.elapsed(),
            connected_address: self.connected_address,
            probe_time: SystemTime::now(),
        }
        .bounded()
    }
}

/// The protocol as telemetry names it.
fn protocol_name(protocol: ProbeProtocol) -> &'static str {
    match protocol {
        ProbeProtocol::Imap => "imap",
        ProbeProtocol::Smtp => "smtp",
        ProbeProtocol::Exchange => "ews",
    }
}

/// The outcome as telemetry names it.
fn outcome_name(outcome: ProbeOutcome) -> &'static str {
    match outcome {
        ProbeOutcome::Ok => "ok",
        ProbeOutcome::Warning => "warning",
        ProbeOutcome::Failed => "failed",
        ProbeOutcome::TimedOut => "timed_out",
        ProbeOutcome::Blocked => "blocked",
        ProbeOutcome::Skipped => "skipped",
    }
}
