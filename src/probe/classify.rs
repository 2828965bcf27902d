//! Turns what went wrong into words an admin can act on: the field to fix and a hint.

use std::io;
use std::net::SocketAddr;

use rustls::CertificateError;

use crate::domain::probe::{ProbeOutcome, ProbeProtocol, Security};
use crate::probe::net::{Refusal, ip_literal};
use crate::probe::run::{Failure, FieldRef, ProbeRun};
use crate::probe::tls::TlsFailure;

/// Longest server reply kept in a stage.
const EXCERPT_CHARS: usize = 200;

const ALLOWLIST_HINT: &str = "the server's firewall may be dropping our traffic: ask its admin to \
     allow this service's egress IP addresses (AllowlistService lists them)";

/// A readable excerpt of what a server sent: line breaks as spaces, other control bytes as dots,
/// shortened.
pub fn excerpt(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| match c {
            '\r' => ' ',
            '\n' => ' ',
            c if c.is_control() || c == '\u{FFFD}' => '.',
            c => c,
        })
        .collect();
    let text = text.trim();
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// How a protocol's servers announce themselves, in `recognise`'s terms.
fn spoken_by(protocol: ProbeProtocol) -> &'static str {
    match protocol {
        ProbeProtocol::Imap => "IMAP",
        ProbeProtocol::Smtp => "SMTP",
        ProbeProtocol::Exchange => "HTTP",
    }
}

/// Which protocol a server's first bytes belong to, when recognisable.
pub fn recognise(bytes: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(bytes);
    let upper = text.trim_start().to_ascii_uppercase();
    if upper.starts_with("* OK") || upper.starts_with("* PREAUTH") || upper.starts_with("* BYE") {
        Some("IMAP")
    } else if upper.starts_with("220") || upper.starts_with("554") || upper.starts_with("421") {
        Some("SMTP")
    } else if upper.starts_with("+OK") {
        Some("POP3")
    } else if upper.starts_with("HTTP/") {
        Some("HTTP")
    } else if bytes.first() == Some(&0x15) || bytes.first() == Some(&0x16) {
        // A TLS alert or handshake record: the server expects TLS from the first byte.
        Some("TLS")
    } else {
        None
    }
}

/// The egress guard said no. For a host name the report says only that it resolves to a refused
/// range, never the address: a tenant must not map the service's internal DNS with probes.
pub fn refused(refusal: Refusal, host: &str) -> Failure {
    let (field, hint) = match refusal {
        Refusal::Port(_) => (
            FieldRef::Port,
            "use the mail server's public port (IMAP 993 or 143, SMTP 465, 587 or 25, HTTPS 443)",
        ),
        Refusal::Name(_) | Refusal::Address { .. } => (
            FieldRef::Host,
            "use the mail server's public host name: private, loopback, link-local and other \
             internal addresses are never reached",
        ),
    };
    let detail = match &refusal {
        Refusal::Address { .. } if ip_literal(host).is_none() => {
            tracing::info!(host, %refusal, "a probed host name resolves to a refused address");
            format!("{host} resolves to an address in a range this service never connects to")
        }
        Refusal::Name(why) => format!("{host} is never reached: {why}"),
        _ => refusal.to_string(),
    };
    Failure::failed(detail, field, hint).with_outcome(ProbeOutcome::Blocked)
}

pub fn resolve_failed(host: &str, error: &io::Error) -> Failure {
    Failure::failed(
        format!("the host name {host} was not found ({error})"),
        FieldRef::Host,
        format!("check the spelling of {host}: DNS has no address for it"),
    )
}

pub fn connect_failed(address: SocketAddr, error: &io::Error) -> Failure {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => Failure::failed(
            format!("{address} refused the connection"),
            FieldRef::Port,
            format!(
                "nothing listens on port {}: check the port (IMAP 993 or 143, SMTP 465 or 587)",
                address.port()
            ),
        ),
        io::ErrorKind::TimedOut => Failure::failed(
            format!("{address} did not answer the connection attempt"),
            FieldRef::Host,
            ALLOWLIST_HINT,
        )
        .with_outcome(ProbeOutcome::TimedOut),
        _ => Failure::failed(
            format!("cannot connect to {address}: {error}"),
            FieldRef::Host,
            ALLOWLIST_HINT,
        ),
    }
}

/// A stage that ran out of time. What silence means depends on where it happened.
pub fn timed_out(run: &ProbeRun<'_>, stage: &str, overall: bool) -> Failure {
    let why = if overall {
        "the probe's time budget ran out"
    } else {
        "the stage timed out"
    };
    let failure = match stage {
        "connect" => Failure::failed(
            format!("no answer to the connection attempt ({why})"),
            FieldRef::Host,
            ALLOWLIST_HINT,
        ),
        "tls" if run.request.target.protocol() == ProbeProtocol::Exchange => Failure::failed(
            format!("no answer to the TLS handshake ({why})"),
            FieldRef::Url,
            "the server did not answer HTTPS: check the host and port of the EWS URL",
        ),
        "tls" => Failure::failed(
            format!("no answer to the TLS handshake ({why})"),
            FieldRef::Security,
            "the server did not answer TLS: if this port expects plain text first (STARTTLS, \
             usually IMAP 143 or SMTP 587), set security to STARTTLS",
        ),
        "greeting" if !run.tls_up && foreign(run).is_some() => {
            let expected = spoken_by(run.request.target.protocol());
            let mut failure = not_this_protocol(expected, &run.transcript.since(0), run.security());
            failure.detail = format!("{} ({why})", failure.detail);
            failure
        }
        "greeting" if !run.tls_up => Failure::failed(
            format!("the server accepted the connection but sent no greeting ({why})"),
            FieldRef::Security,
            "the server stays silent in plain text: if this port expects TLS from the first byte \
             (implicit TLS, usually IMAP 993 or SMTP 465), set security to implicit TLS; \
             otherwise the server is not answering",
        ),
        _ => Failure::failed(
            format!("the server stopped answering during {stage} ({why})"),
            FieldRef::Host,
            "the server accepted the connection but did not answer in time: check that it is a \
             working mail server and try again",
        ),
    };
    failure.with_outcome(ProbeOutcome::TimedOut)
}

/// A protocol other than the expected one in what the server said so far (plain text only).
fn foreign(run: &ProbeRun<'_>) -> Option<&'static str> {
    let expected = spoken_by(run.request.target.protocol());
    recognise(&run.transcript.since(0)).filter(|spoken| *spoken != expected)
}

/// The TLS handshake failed: a certificate the admin did not allow, or a server that does not
/// speak TLS on this port.
pub fn tls_failed(protocol: ProbeProtocol, heard: &[u8], failure: &TlsFailure) -> Failure {
    if let Some(rustls::Error::InvalidCertificate(reason)) = &failure.certificate_error {
        let subject = failure
            .info
            .as_ref()
            .map(|info| format!(" (subject {}, issuer {})", info.subject, info.issuer))
            .unwrap_or_default();
        let problem = match reason {
            CertificateError::UnknownIssuer => {
                "is not signed by a trusted authority (self-signed or private CA)"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "has expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "is not valid yet"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "was issued for another host name"
            }
            CertificateError::Revoked => "has been revoked",
            _ => "was rejected",
        };
        let detail = format!("the server's certificate {problem}{subject}: {reason:?}");
        let untrusted_only = matches!(reason, CertificateError::UnknownIssuer);
        // Exchange settings have no such flag: there the server's certificate must change. The
        // flag accepts only a certificate no trusted authority signed, never a bad date or name.
        return match protocol {
            ProbeProtocol::Exchange => Failure::failed(
                detail,
                FieldRef::Url,
                format!(
                    "the certificate {problem}: the Exchange server needs a certificate from a \
                     public authority for its host name (--insecure on the command line accepts \
                     a self-signed one for a test)"
                ),
            ),
            ProbeProtocol::Imap | ProbeProtocol::Smtp if untrusted_only => Failure::failed(
                detail,
                FieldRef::AllowInsecureCertificate,
                format!(
                    "the certificate {problem}: install a certificate from a public authority on \
                     the server, or turn on allow_insecure_certificate (\"Allow non-secure \
                     certificate\", --insecure on the command line) to accept it anyway"
                ),
            ),
            ProbeProtocol::Imap | ProbeProtocol::Smtp => Failure::failed(
                detail,
                FieldRef::Host,
                format!(
                    "the certificate {problem}: the server needs a current certificate for this \
                     host name (allow_insecure_certificate only accepts a certificate that no \
                     trusted authority signed); check the host name, or renew the certificate"
                ),
            ),
        };
    }
    let plain_text_hint = |spoken: &str| match protocol {
        ProbeProtocol::Imap => format!(
            "this port speaks {spoken} in plain text, not implicit TLS: set security to STARTTLS \
             (usually port 143), or use the implicit TLS port (usually 993)"
        ),
        ProbeProtocol::Smtp => format!(
            "this port speaks {spoken} in plain text, not implicit TLS: set security to STARTTLS \
             (usually port 587), or use the implicit TLS port (usually 465)"
        ),
        ProbeProtocol::Exchange => format!(
            "this port speaks {spoken} in plain text, not HTTPS: the EWS URL needs the server's \
             HTTPS port (usually 443)"
        ),
    };
    match recognise(heard) {
        Some(spoken) if spoken != "TLS" => Failure::failed(
            format!(
                "the server answered in plain text ({spoken}) instead of TLS: {}",
                failure.error
            ),
            match protocol {
                ProbeProtocol::Exchange => FieldRef::Url,
                ProbeProtocol::Imap | ProbeProtocol::Smtp => FieldRef::Security,
            },
            plain_text_hint(spoken),
        )
        .with_reply(excerpt(heard)),
        _ => Failure::failed(
            format!("the TLS handshake failed: {}", failure.error),
            match protocol {
                ProbeProtocol::Exchange => FieldRef::Url,
                ProbeProtocol::Imap | ProbeProtocol::Smtp => FieldRef::Security,
            },
            "the server does not complete a TLS handshake on this port: check the port and the \
             security setting",
        )
        .with_reply(""),
    }
}

/// The first bytes were not this protocol's greeting.
pub fn not_this_protocol(expected: &str, heard: &[u8], security: Security) -> Failure {
    let reply = excerpt(heard);
    match recognise(heard) {
        Some("TLS") if security != Security::ImplicitTls => Failure::failed(
            format!("the server answered with TLS, not an {expected} greeting"),
            FieldRef::Security,
            "this port expects TLS from the first byte: set security to implicit TLS",
        ),
        Some(spoken) => Failure::failed(
            format!("this is not an {expected} server: it answered like {spoken}"),
            FieldRef::Port,
            format!(
                "the port belongs to a {spoken} service: use the {expected} server's port \
                 (IMAP 993 or 143, SMTP 465 or 587)"
            ),
        ),
        None if heard.is_empty() => Failure::failed(
            format!("the server closed the connection without an {expected} greeting"),
            FieldRef::Host,
            format!(
                "the server hung up at once: it may be overloaded, refuse our address, or not be \
                 an {expected} server"
            ),
        ),
        None => Failure::failed(
            format!("the server's greeting is not {expected}"),
            FieldRef::Port,
            format!("this port does not speak {expected}: check the host and port"),
        ),
    }
    .with_reply(reply)
}

/// The login was refused.
pub fn login_refused(reply: impl Into<String>) -> Failure {
    Failure::failed(
        "the server refused the username or password",
        FieldRef::Password,
        "check the username and password (an app password if the account uses two-step \
         verification)",
    )
    .with_reply(reply)
}

/// No usable authentication mechanism.
pub fn mechanism_unsupported(offered: &[String]) -> Failure {
    Failure::failed(
        format!(
            "the server offers no password mechanism we can use (offered: {})",
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            }
        ),
        FieldRef::Security,
        "the server does not accept a password here: it may require TLS first (use STARTTLS or \
         implicit TLS) or OAuth",
    )
}
