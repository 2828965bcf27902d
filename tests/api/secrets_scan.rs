//! Issue 16, 9: after the flows that hand the service secrets (test credentials probed, IMAP
//! passwords and OAuth grants connected, refused and reauthorized, the monitor's logins and token
//! refreshes with the OAuth client secret, notifications mailed), every table of the database
//! (a `pg_dump`, or the SQLite file with its write-ahead log) and every log line and span the
//! process wrote at TRACE level is scanned for each secret: zero hits.

use std::io::Write;
use std::sync::{Arc, Mutex};

use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::{
    ConnectPersonalInboxRequest, DeleteUserRequest, DomainSettings, ImapSettings,
    ProbeDomainSettingsRequest, Provider, ReauthorizeConnectionRequest, Security, ServerAddress,
    domain_settings::Settings as Servers,
};
use tracing_subscriber::fmt::format::FmtSpan;

use crate::backend_tests;
use crate::connection_monitor::{INTERVAL, app_on, checked_now, clock, connect_imap, preset};
use crate::credentials::{contains, database_bytes};
use crate::harness::{Backend, TEST_ENCRYPTION_KEYS, TEST_SECRET, authed};
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
/// The hosted channel's verification codes join the scan when that work lands (another
/// helper's part of the issue): add each code its tests send here.
const VERIFICATION_CODES: [&str; 0] = [];

/// Everything the scan looks for, by kind.
fn secrets() -> Vec<(&'static str, String)> {
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
    all.extend(VERIFICATION_CODES.map(|c| ("verification code", c.to_owned())));
    all
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
    let app = app_on(backend, &clock, sink.port, &tokens, |_| {}).await;
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
    crate::harness::eventually("the disconnection was mailed", || async {
        (!sink.messages().is_empty()).then_some(())
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
    for (kind, secret) in secrets() {
        if contains(&tables, &secret) {
            hits.push(format!("{kind} {secret:?} in the database"));
        }
        if contains(&logs, &secret) {
            hits.push(format!("{kind} {secret:?} in the logs"));
        }
    }
    assert!(hits.is_empty(), "{hits:#?}");
}

backend_tests!(no_secret_in_any_table_log_line_or_span);
