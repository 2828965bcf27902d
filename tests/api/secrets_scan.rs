//! Issue 16, 9: after the flows that hand the service secrets (test credentials probed, IMAP
//! passwords and OAuth grants connected, refused and reauthorized, the monitor's logins and token
//! refreshes with the OAuth client secret, notifications mailed, a hosted channel's custom from
//! address verified with the code mailed to it), every table of the database
//! (a `pg_dump`, or the SQLite file with its write-ahead log) and every log line and span the
//! process wrote at TRACE level is scanned for each secret: zero hits.

use std::io::Write;
use std::sync::{Arc, Mutex};

use mailconnect::domain::domain_name::DomainName;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::{
    ConnectPersonalInboxRequest, DeleteUserRequest, DomainSettings, ImapSettings,
    ProbeDomainSettingsRequest, Provider, ReauthorizeConnectionRequest, Security, ServerAddress,
    domain_settings::Settings as Servers,
};
use tracing_subscriber::fmt::format::FmtSpan;

use crate::address_verification::{code_in, start, verify, with_custom};
use crate::backend_tests;
use crate::connection_monitor::{INTERVAL, app_on, checked_now, clock, connect_imap, preset};
use crate::credentials::{contains, database_bytes};
use crate::harness::{Backend, TEST_ENCRYPTION_KEYS, TEST_SECRET, authed};
use crate::hosted_channels::PAID_DOMAIN;
use crate::inbox_world::{ACCOUNT, ADA, ADMIN, BOB, client, grant, login, token};
use crate::mail_servers::{Aiosmtpd, Dovecot, PASSWORD, SmtpMode, USER};
use crate::token_endpoint::{CLIENT_SECRET, TokenEndpoint};

/// Mailbox passwords the flows send: Dovecot's, and one it refuses.
const MAILBOX_PASSWORDS: [&str; 2] = [PASSWORD, "refused-mailbox-password-4f1d"];
/// OAuth refresh tokens connected and reauthorized.
const REFRESH_TOKENS: [&str; 2] = [
    "1//scan-refresh-token-a17c",
    "1//scan-reauthorized-token-e2b9",
];
/// Everything the scan looks for, by kind, with the hosted channel's verification codes: those
/// are random, so the flow collects the codes the service actually mailed (read back from the
/// relay sink) and passes them in. The wrong code the flow sends is no secret and is left out.
fn secrets(verification_codes: &[String]) -> Vec<(&'static str, String)> {
    let (_, key) = TEST_ENCRYPTION_KEYS.split_once(':').unwrap();
    let raw_key = String::from_utf8(base64_decode(key)).unwrap();
    let mut all: Vec<(&str, String)> = vec![
        ("JWT secret", TEST_SECRET.to_owned()),
        ("encryption key", key.to_owned()),
        ("encryption key, decoded", raw_key),
        ("OAuth client secret", CLIENT_SECRET.to_owned()),
    ];
    all.extend(MAILBOX_PASSWORDS.map(|p| ("mailbox password", p.to_owned())));
    all.extend(REFRESH_TOKENS.map(|t| ("refresh token", t.to_owned())));
    all.extend(
        verification_codes
            .iter()
            .map(|c| ("verification code", c.clone())),
    );
    all
}

/// Whether `needle` occurs in `haystack` as a whole number: not preceded by an ASCII digit or a
/// decimal point, nor followed by a digit. Used for the 6-digit verification codes only: a dump
/// or log full of numeric timestamps and ids holds any 6 digits by chance inside a longer number,
/// which plain [`contains`] would report as a leak; every captured log line's timestamp ends in
/// six digits of microseconds after a point (`11:11:34.348449Z`), which made the scan fail a few
/// runs in twenty on a chance match. A logged code stands apart (`code=123456`, `"123456"`).
fn contains_number(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    haystack
        .windows(needle.len())
        .enumerate()
        .any(|(at, window)| {
            window == needle
                && (at == 0 || !(haystack[at - 1].is_ascii_digit() || haystack[at - 1] == b'.'))
                && haystack
                    .get(at + needle.len())
                    .is_none_or(|after| !after.is_ascii_digit())
        })
}

#[test]
fn a_code_counts_only_as_a_whole_number() {
    assert!(contains_number(b"code=123456;", "123456"));
    assert!(contains_number(b"123456", "123456"));
    assert!(contains_number(b"{\"code\":\"123456\"}", "123456"));
    assert!(!contains_number(b"17648123456789", "123456"));
    assert!(!contains_number(
        b"\"2026-11-30T11:11:34.123456Z\"",
        "123456"
    ));
    assert!(!contains_number(b"x1234567", "123456"));
    assert!(!contains_number(b"0123456 ", "123456"));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Every log line and span (opened and closed, with its fields) this process writes, as JSON,
/// at TRACE for every crate.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Installs the capture as the process's subscriber (nextest runs each test in a process
    /// of its own).
    fn install() -> Self {
        let logs = Self::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .json()
            .with_env_filter("trace")
            .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("no other subscriber in this test's process");
        logs
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

async fn no_secret_in_any_table_log_line_or_span(backend: Backend) {
    let logs = CapturedLogs::install();
    let sink = Aiosmtpd::sink(crate::mail_servers::free_port());
    let tokens = TokenEndpoint::start().await;
    let clock = clock();
    let app = app_on(backend, &clock, sink.port, &tokens, |settings| {
        settings.inbox.hosted_domain = Some(DomainName::parse("d", PAID_DOMAIN).unwrap());
    })
    .await;
    let (dovecot, smtp) = (Dovecot::start(), Aiosmtpd::start(SmtpMode::StartTls));
    preset(&app, &dovecot, &smtp).await;

    // Test credentials: a login that works, one that is refused.
    let settings = DomainSettings {
        domain: "acme.example".into(),
        settings: Some(Servers::Imap(ImapSettings {
            imap_server: Some(ServerAddress {
                host: "127.0.0.1".into(),
                port: dovecot.imaps_port.into(),
                security: Security::ImplicitTls.into(),
            }),
            smtp_server: Some(ServerAddress {
                host: "127.0.0.1".into(),
                port: smtp.port.into(),
                security: Security::Starttls.into(),
            }),
            allow_insecure_certificate: true,
        })),
        ..Default::default()
    };
    for secret in MAILBOX_PASSWORDS {
        DomainSettingsServiceClient::new(app.channel.clone())
            .probe_domain_settings(authed(
                &token(&app, ADMIN),
                ProbeDomainSettingsRequest {
                    domain_settings: Some(settings.clone()),
                    test_credentials: Some(mailconnect::grpc::proto::PasswordCredentials {
                        username: USER.into(),
                        password: secret.into(),
                    }),
                },
            ))
            .await
            .unwrap();
    }

    // An IMAP mailbox connected with its password, another refused; a Gmail grant connected,
    // then reauthorized.
    let imap = connect_imap(&app, ADA, &login(ADA), PASSWORD)
        .await
        .unwrap()
        .connection
        .unwrap();
    connect_imap(&app, BOB, &login(BOB), MAILBOX_PASSWORDS[1])
        .await
        .unwrap_err();
    let gmail = client(&app)
        .connect_personal_inbox(authed(
            &token(&app, ADMIN),
            ConnectPersonalInboxRequest {
                email_address: login(ADMIN),
                provider: Provider::Gmail.into(),
                credentials: Some(grant(&login(ADMIN), REFRESH_TOKENS[0])),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    client(&app)
        .reauthorize_connection(authed(
            &token(&app, ADMIN),
            ReauthorizeConnectionRequest {
                name: gmail.name.clone(),
                credentials: Some(grant(&login(ADMIN), REFRESH_TOKENS[1])),
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    // A hosted team channel's custom from address: the code is mailed through the relay, a wrong
    // code is refused, the right one verifies.
    let mut verification_codes = Vec::new();
    let hosted = with_custom(&app, "help@acme.example").await;
    let mailed = sink.messages().len();
    start(&app, &hosted.name).await.unwrap();
    let (code, _) = code_in(&sink, mailed + 1).await;
    verification_codes.push(code.clone());
    let wrong = if code == "000000" { "000001" } else { "000000" };
    verify(&app, &hosted.name, wrong).await.unwrap_err();
    verify(&app, &hosted.name, &code).await.unwrap();

    // The monitor opens the stored password and grant to log in and refresh; Ada deleted from
    // the directory disconnects her mailbox, and she is mailed through the relay.
    clock.advance(INTERVAL);
    checked_now(&app, &clock, &imap.name).await;
    checked_now(&app, &clock, &gmail.name).await;
    app.directory()
        .delete_user(authed(
            &app.platform_token(),
            DeleteUserRequest {
                account_id: ACCOUNT,
                user_id: ADA,
            },
        ))
        .await
        .unwrap();
    let mailed = sink.messages().len();
    crate::harness::eventually("the disconnection was mailed", || async {
        (sink.messages().len() > mailed).then_some(())
    })
    .await;

    let tables = database_bytes(&app);
    app.stop().await;
    let logs = logs.bytes();
    // What sits beside the secrets is there: the dump holds the rows, the logs the calls.
    assert!(
        contains(&tables, &login(ADA)),
        "the dump holds the connections"
    );
    assert!(
        contains(&logs, "\"span\"") && contains(&logs, "ConnectPersonalInbox"),
        "the calls' spans were captured"
    );
    let mut hits = Vec::new();
    for (kind, secret) in secrets(&verification_codes) {
        // A code is 6 digits: only a whole number counts (see `contains_number`).
        let found = if kind == "verification code" {
            contains_number
        } else {
            contains
        };
        if found(&tables, &secret) {
            hits.push(format!("{kind} {secret:?} in the database"));
        }
        if found(&logs, &secret) {
            hits.push(format!("{kind} {secret:?} in the logs"));
        }
    }
    assert!(hits.is_empty(), "{hits:#?}");
}

backend_tests!(no_secret_in_any_table_log_line_or_span);
