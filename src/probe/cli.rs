//! `mailconnect probe URL`: the service's probe from a terminal, with the same egress guard.
//! Exit status 0 when the server works, 1 when it does not, 2 on a usage error.

use std::process::ExitCode;
use std::time::Duration;

use http::Uri;
use serde::Serialize;

use crate::config::ProbeSettings;
use crate::domain::probe::{
    ProbeCredentials, ProbeOutcome, ProbeProtocol, ProbeReport, ProbeRequest, ProbeTarget,
    Security, ServerEndpoint, TlsInfo,
};
use crate::domain::secret::Secret;
use crate::domain::time::rfc3339_seconds;
use crate::probe::Probe;

#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// imap://host[:143], imaps://host[:993], smtp://host[:587], smtps://host[:465] or
    /// https://host/EWS/Exchange.asmx. imap:// and smtp:// on 993 or 465 mean implicit TLS.
    pub url: String,
    /// Upgrade a plain imap:// or smtp:// connection with STARTTLS whatever the port.
    #[arg(long)]
    pub starttls: bool,
    /// Accept an untrusted certificate (still reported): "Allow non-secure certificate".
    #[arg(long)]
    pub insecure: bool,
    /// Log in as this user (needs --password-env).
    #[arg(long, requires = "password_env")]
    pub user: Option<String>,
    /// Name of the environment variable holding the password (never a flag: it would show in
    /// the process list).
    #[arg(long, requires = "user", value_name = "VAR")]
    pub password_env: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: ProbeSettings,
}

const USAGE_ERROR: u8 = 2;

pub async fn run(args: ProbeArgs) -> ExitCode {
    let request = match request(&args) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let report = Probe::from_settings(&args.settings)
        .run(request, None)
        .await;
    if args.json {
        match serde_json::to_string_pretty(&JsonReport::from(&report)) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("error: cannot write the report as JSON: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", human(&report));
    }
    if report.outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Turns the URL and flags into a probe request, or says what is wrong with them.
fn request(args: &ProbeArgs) -> Result<ProbeRequest, String> {
    let uri: Uri = args
        .url
        .parse()
        .map_err(|error| format!("{:?} is not a URL: {error}", args.url))?;
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(
            "put the user in --user and the password in --password-env, not in the URL".into(),
        );
    }
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| format!("{:?} has no host", args.url))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let endpoint = |default_port: u16, implicit: bool| -> Result<ServerEndpoint, String> {
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(format!("{scheme}:// URLs have no path: {:?}", args.url));
        }
        if implicit && args.starttls {
            return Err(format!(
                "{scheme}:// is implicit TLS; --starttls needs imap:// or smtp://"
            ));
        }
        let port = uri.port_u16().unwrap_or(default_port);
        let security = if implicit {
            Security::ImplicitTls
        } else if args.starttls {
            Security::StartTls
        } else {
            Security::infer_from_port(port)
        };
        Ok(ServerEndpoint {
            host: host.clone(),
            port,
            security,
        })
    };
    let target = match scheme.as_str() {
        "imap" => ProbeTarget::Imap(endpoint(143, false)?),
        "imaps" => ProbeTarget::Imap(endpoint(993, true)?),
        "smtp" => ProbeTarget::Smtp(endpoint(587, false)?),
        "smtps" => ProbeTarget::Smtp(endpoint(465, true)?),
        "https" if args.starttls => return Err("--starttls does not apply to https://".into()),
        "https" => ProbeTarget::Exchange(args.url.clone()),
        other => {
            return Err(format!(
                "unsupported scheme {other:?}: use imap, imaps, smtp, smtps or https"
            ));
        }
    };
    let credentials = match (&args.user, &args.password_env) {
        (Some(username), Some(variable)) => {
            let password = std::env::var(variable)
                .map_err(|_| format!("the environment variable {variable} is not set"))?;
            let parsed = ProbeCredentials::parse("", username.clone(), Secret::new(password));
            Some(parsed.map_err(|violations| {
                let problems: Vec<String> = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field.trim_start_matches('.'), v.description))
                    .collect();
                problems.join("; ")
            })?)
        }
        _ => None,
    };
    Ok(ProbeRequest {
        target,
        allow_insecure_certificate: args.insecure,
        credentials,
        field_prefix: String::new(),
    })
}

fn outcome_name(outcome: ProbeOutcome) -> &'static str {
    match outcome {
        ProbeOutcome::Ok => "OK",
        ProbeOutcome::Warning => "WARNING",
        ProbeOutcome::Failed => "FAILED",
        ProbeOutcome::TimedOut => "TIMED_OUT",
        ProbeOutcome::Blocked => "BLOCKED",
        ProbeOutcome::Skipped => "SKIPPED",
    }
}

fn protocol_name(protocol: ProbeProtocol) -> &'static str {
    match protocol {
        ProbeProtocol::Imap => "IMAP",
        ProbeProtocol::Smtp => "SMTP",
        ProbeProtocol::Exchange => "EXCHANGE",
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The report for a person reading a terminal.
fn human(report: &ProbeReport) -> String {
    let mut out = format!(
        "{} ({}): {} in {} ms",
        report.target,
        protocol_name(report.protocol),
        outcome_name(report.outcome),
        millis(report.total_latency)
    );
    if !report.connected_address.is_empty() {
        out.push_str(&format!(", connected to {}", report.connected_address));
    }
    out.push('\n');
    for stage in &report.stages {
        out.push_str(&format!(
            "  {:<24} {:<9} {:>6} ms  {}\n",
            stage.name,
            outcome_name(stage.outcome),
            millis(stage.latency),
            stage.detail
        ));
        if !stage.server_reply.is_empty() {
            out.push_str(&format!(
                "  {:<24} server said: {}\n",
                "", stage.server_reply
            ));
        }
    }
    if let Some(tls) = &report.tls {
        out.push_str(&format!(
            "TLS: {} {}\n  certificate: {}\n  issuer: {}\n",
            tls.version, tls.cipher, tls.subject, tls.issuer
        ));
        if let Some(not_after) = tls.not_after {
            out.push_str(&format!("  valid until: {}\n", rfc3339_seconds(not_after)));
        }
        if !tls.subject_alt_names.is_empty() {
            out.push_str(&format!("  names: {}\n", tls.subject_alt_names.join(", ")));
        }
        out.push_str(&format!(
            "  self-signed: {}, host name matches: {}, chain trusted: {}\n",
            yes_no(tls.self_signed),
            yes_no(tls.hostname_matches),
            yes_no(tls.chain_trusted)
        ));
    }
    if !report.capabilities.is_empty() {
        out.push_str(&format!(
            "Capabilities: {}\n",
            report.capabilities.join(" ")
        ));
    }
    if !report.auth_mechanisms.is_empty() {
        out.push_str(&format!(
            "Authentication: {}\n",
            report.auth_mechanisms.join(" ")
        ));
    }
    if !report.hint.is_empty() {
        let field = if report.field.is_empty() {
            String::new()
        } else {
            format!(" [{}]", report.field)
        };
        out.push_str(&format!("Fix{field}: {}\n", report.hint));
    }
    out
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// The report for machines.
#[derive(Serialize)]
struct JsonReport<'a> {
    target: &'a str,
    protocol: &'static str,
    outcome: &'static str,
    total_latency_ms: u64,
    connected_address: &'a str,
    probe_time: String,
    stages: Vec<JsonStage<'a>>,
    tls: Option<JsonTls<'a>>,
    capabilities: &'a [String],
    auth_mechanisms: &'a [String],
    field: &'a str,
    hint: &'a str,
}

#[derive(Serialize)]
struct JsonStage<'a> {
    name: &'a str,
    outcome: &'static str,
    latency_ms: u64,
    detail: &'a str,
    server_reply: &'a str,
}

#[derive(Serialize)]
struct JsonTls<'a> {
    version: &'a str,
    cipher: &'a str,
    subject: &'a str,
    issuer: &'a str,
    not_before: Option<String>,
    not_after: Option<String>,
    subject_alt_names: &'a [String],
    self_signed: bool,
    hostname_matches: bool,
    chain_trusted: bool,
}

impl<'a> From<&'a ProbeReport> for JsonReport<'a> {
    fn from(report: &'a ProbeReport) -> Self {
        Self {
            target: &report.target,
            protocol: protocol_name(report.protocol),
            outcome: outcome_name(report.outcome),
            total_latency_ms: millis(report.total_latency),
            connected_address: &report.connected_address,
            probe_time: rfc3339_seconds(report.probe_time),
            stages: report
                .stages
                .iter()
                .map(|stage| JsonStage {
                    name: &stage.name,
                    outcome: outcome_name(stage.outcome),
                    latency_ms: millis(stage.latency),
                    detail: &stage.detail,
                    server_reply: &stage.server_reply,
                })
                .collect(),
            tls: report.tls.as_ref().map(JsonTls::from),
            capabilities: &report.capabilities,
            auth_mechanisms: &report.auth_mechanisms,
            field: &report.field,
            hint: &report.hint,
        }
    }
}

impl<'a> From<&'a TlsInfo> for JsonTls<'a> {
    fn from(tls: &'a TlsInfo) -> Self {
        Self {
            version: &tls.version,
            cipher: &tls.cipher,
            subject: &tls.subject,
            issuer: &tls.issuer,
            not_before: tls.not_before.map(rfc3339_seconds),
            not_after: tls.not_after.map(rfc3339_seconds),
            subject_alt_names: &tls.subject_alt_names,
            self_signed: tls.self_signed,
            hostname_matches: tls.hostname_matches,
            chain_trusted: tls.chain_trusted,
        }
    }
}
