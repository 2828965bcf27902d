//! What a probe is asked and what it reports. The probe itself (`src/probe/`) fills these in; the
//! use cases and the transport only read them.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::domain::secret::Secret;

/// How a mail connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    ImplicitTls,
    /// Plain text upgraded with STARTTLS, which must be offered (IMAP 143, submission 587, SMTP 25).
    StartTls,
    /// No TLS at all (only when the admin explicitly asks for it).
    Plaintext,
}

impl Security {
    /// The conventional security of a port, for callers that leave it unspecified.
    pub fn infer_from_port(port: u16) -> Security {
        match port {
            993 | 465 => Security::ImplicitTls,
            _ => Security::StartTls,
        }
    }
}

/// A mail server: host name or IP literal, port and security.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerEndpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
}

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    Imap(ServerEndpoint),
    Smtp(ServerEndpoint),
    /// The Exchange Web Services URL (https).
    Exchange(String),
}

impl ProbeTarget {
    pub fn protocol(&self) -> ProbeProtocol {
        match self {
            ProbeTarget::Imap(_) => ProbeProtocol::Imap,
            ProbeTarget::Smtp(_) => ProbeProtocol::Smtp,
            ProbeTarget::Exchange(_) => ProbeProtocol::Exchange,
        }
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, server) = match self {
            ProbeTarget::Imap(server) if server.security == Security::ImplicitTls => {
                ("imaps", server)
            }
            ProbeTarget::Imap(server) => ("imap", server),
            ProbeTarget::Smtp(server) if server.security == Security::ImplicitTls => {
                ("smtps", server)
            }
            ProbeTarget::Smtp(server) => ("smtp", server),
            ProbeTarget::Exchange(url) => return f.write_str(url),
        };
        if server.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", server.host, server.port)
        } else {
            write!(f, "{scheme}://{}:{}", server.host, server.port)
        }
    }
}

/// Credentials for an optional login check. The password never leaves the probe.
#[derive(Debug, Clone)]
pub struct ProbeCredentials {
    pub username: String,
    pub password: Secret,
}

/// One probe to run.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    pub target: ProbeTarget,
    /// The articles' "Allow non-secure certificate": accept an untrusted certificate, but report it.
    pub allow_insecure_certificate: bool,
    pub credentials: Option<ProbeCredentials>,
    /// The request path of the field that holds this target (`domain_settings.imap.imap_server`),
    /// so the report can name the exact field to fix (`….port`, `….security`).
    pub field_prefix: String,
}

/// Who asks and how long they can wait.
#[derive(Debug, Clone, Default)]
pub struct ProbeContext {
    /// For the per-account rate limit.
    pub account_id: Option<i64>,
    /// The caller's deadline (from `grpc-timeout`); the whole probe ends before it.
    pub deadline: Option<tokio::time::Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeProtocol {
    Imap,
    Smtp,
    Exchange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    Ok,
    /// Works, with something the admin should know (e.g. an untrusted certificate allowed).
    Warning,
    Failed,
    TimedOut,
    /// Refused by the egress guard before any packet was sent.
    Blocked,
    /// Not run because an earlier stage failed.
    Skipped,
}

impl ProbeOutcome {
    /// Whether settings with this outcome may be accepted.
    pub fn is_success(self) -> bool {
        matches!(self, ProbeOutcome::Ok | ProbeOutcome::Warning)
    }
}

/// One stage: resolve, connect, tls, greeting, capabilities, starttls, login, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStage {
    pub name: String,
    pub outcome: ProbeOutcome,
    pub latency: Duration,
    pub detail: String,
    /// An excerpt of what the server said (never a credential).
    pub server_reply: String,
}

/// The negotiated TLS session and the server's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    pub subject_alt_names: Vec<String>,
    pub self_signed: bool,
    pub hostname_matches: bool,
    pub chain_trusted: bool,
}

/// What a probe found, for a person to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub target: String,
    pub protocol: ProbeProtocol,
    pub outcome: ProbeOutcome,
    pub stages: Vec<ProbeStage>,
    pub tls: Option<TlsInfo>,
    pub capabilities: Vec<String>,
    pub auth_mechanisms: Vec<String>,
    /// The request field to fix (`domain_settings.imap.imap_server.port`), empty on success.
    pub field: String,
    /// What to do, in plain English; empty on success.
    pub hint: String,
    pub total_latency: Duration,
    /// The address actually connected to, after the egress guard.
    pub connected_address: String,
    pub probe_time: SystemTime,
}

/// Why a probe was not run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeRefused {
    #[error("too many probes are running; retry shortly")]
    Busy,
    #[error("this account started too many probes; retry in {retry_after:?}")]
    RateLimited { retry_after: Duration },
}
