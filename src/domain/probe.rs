//! What a probe is asked and what it reports. The probe itself (`src/probe/`) fills these in; the
//! use cases and the transport only read them.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::domain::secret::Secret;
use crate::domain::{FieldViolation, Violations};

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

/// Longest login name, in characters (`common.proto` `PasswordCredentials`; an address is at most
/// 320).
pub const MAX_USERNAME_CHARS: usize = 320;
/// Longest password, in bytes (`common.proto` `PasswordCredentials`).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A line break would end an IMAP or SMTP command early and NUL separates SASL PLAIN's parts:
/// neither may reach a server inside a username or password.
fn has_command_breaks(text: &str) -> bool {
    text.contains(['\r', '\n', '\0'])
}

impl ProbeCredentials {
    /// Checks a `PasswordCredentials` message as sent, `field` being its request path
    /// (`test_credentials`, `credentials.password`): the username at most 320 characters, the
    /// password 1 to 1,024 bytes, neither with CR, LF or NUL. Every violation is named
    /// (`test_credentials.username`, `test_credentials.password`).
    pub fn parse(
        field: &str,
        username: String,
        password: Secret,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut violations = Violations::new();
        if username.chars().count() > MAX_USERNAME_CHARS || has_command_breaks(&username) {
            violations.add(
                format!("{field}.username"),
                format!(
                    "must be at most {MAX_USERNAME_CHARS} characters without line breaks or NUL"
                ),
            );
        }
        let secret = password.expose();
        if secret.is_empty() || secret.len() > MAX_PASSWORD_BYTES || has_command_breaks(secret) {
            violations.add(
                format!("{field}.password"),
                format!("is required: 1 to {MAX_PASSWORD_BYTES} bytes without line breaks or NUL"),
            );
        }
        violations.finish(|| Self { username, password })
    }
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

/// The longest string a report keeps, in bytes: greetings, capabilities, headers and parser
/// errors come from the server.
pub const REPORT_STRING_LIMIT: usize = 1024;
/// What all of a report's strings may add up to: a report travels in `grpc-status-details-bin`,
/// and with its framing it stays under 16 KiB.
pub const REPORT_TEXT_LIMIT: usize = 14 * 1024;
/// The most entries a list of a report keeps (capabilities, mechanisms, names).
pub const REPORT_LIST_LIMIT: usize = 64;

impl ProbeReport {
    /// The report cut to size: every list to `REPORT_LIST_LIMIT` entries, every string to
    /// `REPORT_STRING_LIMIT` bytes, and, when they still add up to more than `REPORT_TEXT_LIMIT`,
    /// the longest strings shortened to a common length until they fit.
    pub fn bounded(mut self) -> Self {
        self.capabilities.truncate(REPORT_LIST_LIMIT);
        self.auth_mechanisms.truncate(REPORT_LIST_LIMIT);
        let mut texts: Vec<&mut String> = vec![
            &mut self.target,
            &mut self.field,
            &mut self.hint,
            &mut self.connected_address,
        ];
        for stage in &mut self.stages {
            texts.extend([&mut stage.name, &mut stage.detail, &mut stage.server_reply]);
        }
        texts.extend(&mut self.capabilities);
        texts.extend(&mut self.auth_mechanisms);
        if let Some(tls) = &mut self.tls {
            tls.subject_alt_names.truncate(REPORT_LIST_LIMIT);
            texts.extend([
                &mut tls.version,
                &mut tls.cipher,
                &mut tls.subject,
                &mut tls.issuer,
            ]);
            texts.extend(&mut tls.subject_alt_names);
        }
        let mut longest = REPORT_STRING_LIMIT;
        while longest > 0
            && texts
                .iter()
                .map(|text| text.len().min(longest))
                .sum::<usize>()
                > REPORT_TEXT_LIMIT
        {
            longest -= longest / 8 + 1;
        }
        for text in texts {
            cut(text, longest);
        }
        self
    }
}

/// Shortens `text` to at most `limit` bytes, on a character boundary, marking the cut with `…`.
fn cut(text: &mut String, limit: usize) {
    if text.len() <= limit {
        return;
    }
    let mut end = limit.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    if limit >= '…'.len_utf8() {
        text.push('…');
    }
}

/// Why a probe was not run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeRefused {
    #[error("too many probes are running; retry shortly")]
    Busy,
    #[error("this account started too many probes; retry in {retry_after:?}")]
    RateLimited { retry_after: Duration },
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn report(stages: usize, text: &str, list: usize) -> ProbeReport {
        ProbeReport {
            target: text.to_owned(),
            protocol: ProbeProtocol::Imap,
            outcome: ProbeOutcome::Failed,
            stages: (0..stages)
                .map(|_| ProbeStage {
                    name: "greeting".to_owned(),
                    outcome: ProbeOutcome::Failed,
                    latency: Duration::ZERO,
                    detail: text.to_owned(),
                    server_reply: text.to_owned(),
                })
                .collect(),
            tls: Some(TlsInfo {
                subject: text.to_owned(),
                subject_alt_names: vec![text.to_owned(); list],
                ..TlsInfo::default()
            }),
            capabilities: vec![text.to_owned(); list],
            auth_mechanisms: vec![text.to_owned(); list],
            field: String::new(),
            hint: text.to_owned(),
            total_latency: Duration::ZERO,
            connected_address: String::new(),
            probe_time: SystemTime::UNIX_EPOCH,
        }
    }

    fn strings(report: &ProbeReport) -> Vec<&String> {
        let tls = report.tls.as_ref().unwrap();
        let mut all = vec![&report.target, &report.hint, &tls.subject];
        for stage in &report.stages {
            all.extend([&stage.detail, &stage.server_reply]);
        }
        all.extend(&report.capabilities);
        all.extend(&tls.subject_alt_names);
        all
    }

    fn parse(username: &str, password: &str) -> Result<ProbeCredentials, Vec<String>> {
        ProbeCredentials::parse(
            "test_credentials",
            username.to_owned(),
            Secret::new(password.to_owned()),
        )
        .map_err(|violations| violations.into_iter().map(|v| v.field).collect())
    }

    #[test]
    fn credentials_within_the_contract_parse() {
        let long_name = "u".repeat(MAX_USERNAME_CHARS);
        let long_password = "p".repeat(MAX_PASSWORD_BYTES);
        for (username, password) in [
            ("", "secret"),
            ("jane@example.com", "pässwörd with spaces"),
            (long_name.as_str(), long_password.as_str()),
        ] {
            assert!(parse(username, password).is_ok(), "{username}");
        }
    }

    #[test]
    fn every_violation_is_named() {
        let too_long = "u".repeat(MAX_USERNAME_CHARS + 1);
        let too_big = "ü".repeat(MAX_PASSWORD_BYTES / 2 + 1);
        let username = ["test_credentials.username"];
        let password = ["test_credentials.password"];
        assert_eq!(parse("jane\r\nA1 LOGOUT", "x").unwrap_err(), username);
        assert_eq!(parse("jane\n", "x").unwrap_err(), username);
        assert_eq!(parse("jane\0admin", "x").unwrap_err(), username);
        assert_eq!(parse(&too_long, "x").unwrap_err(), username);
        assert_eq!(parse("jane", "").unwrap_err(), password);
        assert_eq!(parse("jane", &too_big).unwrap_err(), password);
        assert_eq!(parse("jane", "pass\r\nword").unwrap_err(), password);
        assert_eq!(
            parse("a\rb", "").unwrap_err(),
            ["test_credentials.username", "test_credentials.password"]
        );
    }

    proptest! {
        /// Whatever is sent, what parses has no CR, LF or NUL and keeps to the limits.
        #[test]
        fn what_parses_is_safe_to_send(username in "\\PC{0,400}|.*[\r\n].*", password in ".{0,1100}") {
            if let Ok(credentials) = parse(&username, &password) {
                prop_assert!(!has_command_breaks(&credentials.username));
                prop_assert!(credentials.username.chars().count() <= MAX_USERNAME_CHARS);
                let secret = credentials.password.expose();
                prop_assert!(!secret.is_empty() && secret.len() <= MAX_PASSWORD_BYTES);
            }
        }
    }

    #[test]
    fn a_small_report_is_left_alone() {
        let small = report(6, "* OK Dovecot ready.", 20);
        assert_eq!(small.clone().bounded(), small);
    }

    proptest! {
        /// Whatever the server sent, each string keeps at most 1 KiB, the whole text at most
        /// 14 KiB, and every string is still a prefix of what it was.
        #[test]
        fn any_report_fits(
            text in "\\PC{0,3000}",
            stages in 0usize..12,
            list in 0usize..300,
        ) {
            let original = report(stages, &text, list);
            let bounded = original.clone().bounded();
            let all = strings(&bounded);
            prop_assert!(all.iter().all(|s| s.len() <= REPORT_STRING_LIMIT));
            prop_assert!(all.iter().map(|s| s.len()).sum::<usize>() <= REPORT_TEXT_LIMIT);
            prop_assert!(bounded.capabilities.len() <= REPORT_LIST_LIMIT);
            for cut in all {
                let kept = cut.strip_suffix('…').unwrap_or(cut);
                prop_assert!(text.starts_with(kept));
            }
        }
    }
}
