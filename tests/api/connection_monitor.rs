//! What makes DISCONNECTED real, over gRPC against real Dovecot, aiosmtpd and an OAuth token
//! endpoint on loopback, with the service on a clock the tests move: connects proved with the
//! credentials, the monitor's checks, the failure policy, notifications mailed through the relay
//! once (also across replicas, and after the relay was down).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailconnect::config::Settings;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::{
    self, ConnectPersonalInboxRequest, ConnectTeamEmailRequest, ConnectionState,
    CreateDomainSettingsRequest, DisconnectReason, DomainSettings, ImapSettings,
    ListAttemptedDomainsRequest, ListConnectionsRequest, ProbeDomainSettingsRequest, ProbeOutcome,
    Provider, Security, ServerAddress, SettingsSource, Tier, domain_settings::Settings as Servers,
};
use mailconnect::service::clock::ManualClock;
use tonic::Code;

use crate::backend_tests;
use crate::fault_servers::FakeEws;
use crate::harness::{Backend, TestApp, assert_error, authed, eventually, spawn_app_on};
use crate::inbox_world::{
    ACCESS, ADA, ADMIN, client, create_inbox, get_connection, grant, login, password,
    seed_directory, seed_user, token,
};
use crate::mail_servers::{Aiosmtpd, Dovecot, PASSWORD, SmtpMode, TestCa, USER, free_port};
use crate::token_endpoint::{CLIENT_ID, CLIENT_SECRET, TokenEndpoint, field};

/// The monitor's interval in these tests (the default).
pub(crate) const INTERVAL: Duration = Duration::from_secs(15 * 60);

/// The app on a manual clock, with a relay on `relay_port` and Google's token endpoint on
/// loopback.
pub(crate) async fn app_on(
    backend: Backend,
    clock: &Arc<ManualClock>,
    relay_port: u16,
    tokens: &TokenEndpoint,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let relay = format!("smtp://127.0.0.1:{relay_port}");
    let token_url = tokens.url();
    let app = spawn_app_on(
        backend,
        |settings| {
            with_relay_and_oauth(settings, &relay, token_url);
            configure(settings);
        },
        clock.clone(),
    )
    .await;
    seed_directory(&app, Tier::Professional).await;
    app
}

fn with_relay_and_oauth(settings: &mut Settings, relay: &str, token_url: url::Url) {
    let inbox = &mut settings.inbox;
    inbox.smtp_relay_url = Some(mailconnect::domain::secret::Secret::new(relay.to_owned()));
    inbox.notification_from = "mailconnect <notify@mailconnect.test>".into();
    inbox.google.google_oauth_client_id = Some(CLIENT_ID.into());
    inbox.google.google_oauth_client_secret = Some(mailconnect::domain::secret::Secret::new(
        CLIENT_SECRET.into(),
    ));
    inbox.google.google_oauth_token_url = token_url;
}

/// A clock at a whole second (times are stored to the microsecond).
pub(crate) fn clock() -> Arc<ManualClock> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(now),
    ))
}

/// IMAPS on Dovecot, submission on aiosmtpd, for acme.example.
fn imap_preset(dovecot: &Dovecot, smtp: &Aiosmtpd) -> DomainSettings {
    let server = |port: u16, security: Security| ServerAddress {
        host: "127.0.0.1".into(),
        port: port.into(),
        security: security.into(),
    };
    DomainSettings {
        domain: "acme.example".into(),
        settings: Some(Servers::Imap(ImapSettings {
            imap_server: Some(server(dovecot.imaps_port, Security::ImplicitTls)),
            smtp_server: Some(server(smtp.port, Security::Starttls)),
            allow_insecure_certificate: true,
        })),
        ..Default::default()
    }
}

/// The admins' preset for acme.example.
pub(crate) async fn preset(app: &TestApp, dovecot: &Dovecot, smtp: &Aiosmtpd) {
    DomainSettingsServiceClient::new(app.channel.clone())
        .create_domain_settings(authed(
            &token(app, ADMIN),
            CreateDomainSettingsRequest {
                domain_settings: Some(imap_preset(dovecot, smtp)),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

pub(crate) async fn connect_imap(
    app: &TestApp,
    user: i64,
    address: &str,
    secret: &str,
) -> Result<proto::ConnectPersonalInboxResponse, tonic::Status> {
    client(app)
        .connect_personal_inbox(authed(
            &token(app, user),
            ConnectPersonalInboxRequest {
                email_address: address.into(),
                provider: Provider::Imap.into(),
                credentials: Some(password(USER, secret)),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// Waits until the monitor checked the connection at the clock's current time.
pub(crate) async fn checked_now(
    app: &TestApp,
    clock: &ManualClock,
    name: &str,
) -> proto::Connection {
    let now = prost_types::Timestamp::from(mailconnect::service::clock::Clock::now(clock));
    eventually("the monitor checked the connection", || async {
        let connection = get_connection(app, name).await;
        (connection.last_check_time.as_ref() == Some(&now)).then_some(connection)
    })
    .await
}

/// The recipients of each message a sink accepted.
fn recipients(sink: &Aiosmtpd) -> Vec<String> {
    let mut found: Vec<String> = sink
        .messages()
        .iter()
        .flat_map(|message| {
            message
                .lines()
                .filter_map(|line| line.strip_prefix("X-Envelope-To: "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    found.sort();
    found
}

/// IMAP connects take the domain's preset and prove the login against Dovecot (a wrong
/// password stores nothing); when the password changes, the monitor disconnects the mailboxes
/// (CREDENTIALS_EXPIRED) and the owner, the admins and the connecting user get an email.
async fn a_changed_password_disconnects_and_mails_the_right_people(backend: Backend) {
    let dovecot = Dovecot::start();
    let smtp = Aiosmtpd::start(SmtpMode::StartTls);
    let sink = Aiosmtpd::sink(free_port());
    let tokens = TokenEndpoint::start().await;
    let clock = clock();
    let app = app_on(backend, &clock, sink.port, &tokens, |_| {}).await;
    preset(&app, &dovecot, &smtp).await;

    let status = connect_imap(&app, ADA, "ada@acme.example", "wrong password")
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "PROBE_FAILED");
    assert!(
        !status.message().contains("wrong password"),
        "{}",
        status.message()
    );
    let stored = client(&app)
        .list_connections(authed(
            &token(&app, ADMIN),
            ListConnectionsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert!(
        stored.is_empty(),
        "a refused login stores nothing: {stored:?}"
    );

    let connected = connect_imap(&app, ADA, "ada@acme.example", PASSWORD)
        .await
        .unwrap();
    assert_eq!(connected.reports.len(), 2);
    for report in &connected.reports {
        assert!(
            matches!(report.outcome(), ProbeOutcome::Ok | ProbeOutcome::Warning),
            "{report:?}"
        );
        assert!(
            report
                .stages
                .iter()
                .any(|stage| stage.name == "login" && stage.outcome() == ProbeOutcome::Ok),
            "the login was proved: {report:?}"
        );
    }
    let personal = connected.connection.unwrap();
    let servers = personal.servers.as_ref().unwrap();
    assert_eq!(servers.source(), SettingsSource::AdminPreset);
    assert_eq!(servers.domain_settings, "domainSettings/acme.example");
    assert_eq!(
        servers.imap_server.as_ref().unwrap().port,
        u32::from(dovecot.imaps_port)
    );
    let support = create_inbox(&app, "Support").await;
    let team = client(&app)
        .connect_team_email(authed(
            &token(&app, ADMIN),
            ConnectTeamEmailRequest {
                email_address: "support@acme.example".into(),
                provider: Provider::Imap.into(),
                inbox: support.name.clone(),
                credentials: Some(password(USER, PASSWORD)),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();

    // All is well at the first check.
    clock.advance(INTERVAL);
    let checked = checked_now(&app, &clock, &personal.name).await;
    assert_eq!(checked.state(), ConnectionState::Active);
    assert_eq!(checked.last_success_time, checked.last_check_time);

    dovecot.set_password("a new password");
    // Dovecot reads its users file again at most once a second: wait until it refuses.
    eventually("Dovecot refuses the old password", || async {
        let reports = DomainSettingsServiceClient::new(app.channel.clone())
            .probe_domain_settings(authed(
                &token(&app, ADMIN),
                ProbeDomainSettingsRequest {
                    domain_settings: Some(imap_preset(&dovecot, &smtp)),
                    test_credentials: Some(proto::PasswordCredentials {
                        username: USER.into(),
                        password: PASSWORD.into(),
                    }),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .reports;
        (reports[0].outcome() == ProbeOutcome::Failed).then_some(())
    })
    .await;
    clock.advance(INTERVAL);
    for name in [&personal.name, &team.name] {
        let after = eventually("the monitor disconnected the mailbox", || async {
            let connection = get_connection(&app, name).await;
            (connection.state() == ConnectionState::Disconnected).then_some(connection)
        })
        .await;
        assert_eq!(
            after.disconnect_reason(),
            DisconnectReason::CredentialsExpired
        );
        assert_eq!(after.consecutive_failures, 1);
        assert!(!after.last_error.is_empty());
    }
    // Ada for her mailbox; the admins (the connecting admin once) for the team address.
    let expected = [login(ACCESS), login(ADMIN), login(ADA)];
    let mut expected = expected.to_vec();
    expected.sort();
    eventually("the notifications were mailed", || async {
        (recipients(&sink).len() >= expected.len()).then_some(())
    })
    .await;
    assert_eq!(recipients(&sink), expected);
    let messages = sink.messages();
    let to_ada = messages
        .iter()
        .find(|message| message.contains(&format!("X-Envelope-To: {}", login(ADA))))
        .unwrap();
    assert!(
        to_ada.contains("Subject: ada@acme.example was disconnected"),
        "{to_ada}"
    );
    assert!(to_ada.contains("Message-ID: <notification-"), "{to_ada}");
    assert!(to_ada.contains("Reconnect"), "{to_ada}");
    assert!(!to_ada.contains(PASSWORD), "{to_ada}");
}

/// Dovecot stopped: failures count, and only after the threshold over the minimum span (3 over
/// 30 minutes by default) is the mailbox disconnected as SERVER_UNREACHABLE.
async fn an_outage_disconnects_only_after_the_threshold(backend: Backend) {
    let dovecot = Dovecot::start();
    let smtp = Aiosmtpd::start(SmtpMode::StartTls);
    let tokens = TokenEndpoint::start().await;
    let clock = clock();
    let app = app_on(backend, &clock, free_port(), &tokens, |_| {}).await;
    preset(&app, &dovecot, &smtp).await;
    let connection = connect_imap(&app, ADA, "ada@acme.example", PASSWORD)
        .await
        .unwrap()
        .connection
        .unwrap();
    drop(dovecot);
    for failures in 1..=2 {
        clock.advance(INTERVAL);
        let checked = checked_now(&app, &clock, &connection.name).await;
        assert_eq!(checked.state(), ConnectionState::Active, "after {failures}");
        assert_eq!(checked.consecutive_failures, failures);
        assert!(!checked.last_error.is_empty());
    }
    clock.advance(INTERVAL);
    let after = eventually("the third failure disconnects", || async {
        let connection = get_connection(&app, &connection.name).await;
        (connection.state() == ConnectionState::Disconnected).then_some(connection)
    })
    .await;
    assert_eq!(
        after.disconnect_reason(),
        DisconnectReason::ServerUnreachable
    );
    assert_eq!(after.consecutive_failures, 3);
}

/// With a configured OAuth client a grant is proved by a refresh before it is stored
/// (`invalid_grant` refuses), and the monitor disconnects a grant revoked later (ACCESS_REVOKED).
async fn oauth_grants_are_proved_at_the_token_endpoint(backend: Backend) {
    let tokens = TokenEndpoint::start().await;
    let clock = clock();
    let app = app_on(backend, &clock, free_port(), &tokens, |_| {}).await;
    tokens.revoke("1//revoked");
    let connect = |refresh_token: &'static str| {
        let mut client = client(&app);
        let token = token(&app, ADA);
        async move {
            client
                .connect_personal_inbox(authed(
                    &token,
                    ConnectPersonalInboxRequest {
                        email_address: "ada@acme.example".into(),
                        provider: Provider::Gmail.into(),
                        credentials: Some(grant("ada@acme.example", refresh_token)),
                        ..Default::default()
                    },
                ))
                .await
        }
    };
    let status = connect("1//revoked").await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "OAUTH_GRANT_INVALID");
    let connection = connect("1//good")
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    let forms = tokens.forms();
    let last = forms.last().unwrap();
    assert_eq!(field(last, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(field(last, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(field(last, "client_secret").as_deref(), Some(CLIENT_SECRET));

    tokens.revoke("1//good");
    clock.advance(INTERVAL);
    let after = eventually("the monitor disconnected the revoked grant", || async {
        let connection = get_connection(&app, &connection.name).await;
        (connection.state() == ConnectionState::Disconnected).then_some(connection)
    })
    .await;
    assert_eq!(after.disconnect_reason(), DisconnectReason::AccessRevoked);
}

/// No servers known for the domain: refused, and the domain is on the admins' to-do list. A
/// Gmail address over IMAP is told to use OAuth.
async fn imap_without_servers_is_refused_and_recorded(backend: Backend) {
    let tokens = TokenEndpoint::start().await;
    let clock = clock();
    let app = app_on(backend, &clock, free_port(), &tokens, |_| {}).await;
    let status = connect_imap(&app, ADA, "ada@unknown-domain.example", "x")
        .await
        .unwrap_err();
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "SERVER_SETTINGS_REQUIRED",
    );
    assert_eq!(metadata["domain"], "unknown-domain.example");
    let status = connect_imap(&app, ADA, "ada.l@gmail.com", "x")
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "SERVER_SETTINGS_REQUIRED",
    );
    assert!(
        status.message().contains("PROVIDER_GMAIL"),
        "{}",
        status.message()
    );
    let attempted = DomainSettingsServiceClient::new(app.channel.clone())
        .list_attempted_domains(authed(
            &token(&app, ADMIN),
            ListAttemptedDomainsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .attempted_domains;
    let domains: Vec<&str> = attempted.iter().map(|a| a.domain.as_str()).collect();
    assert_eq!(domains, ["unknown-domain.example"]);
}

/// The relay down: the notification is retried with backoff and delivered once when it is back.
async fn notifications_wait_for_the_relay_and_arrive_once(backend: Backend) {
    let tokens = TokenEndpoint::start().await;
    let clock = clock();
    let relay_port = free_port();
    let app = app_on(backend, &clock, relay_port, &tokens, |_| {}).await;
    let connection = crate::inbox_world::connect_gmail(&app, ADA, "ada@acme.example")
        .await
        .unwrap();
    tokens.revoke("1//refresh-token-of-the-test");
    clock.advance(INTERVAL);
    eventually("the connection is disconnected", || async {
        (get_connection(&app, &connection.name).await.state() == ConnectionState::Disconnected)
            .then_some(())
    })
    .await;
    // Nothing listens on the relay's port: the attempt fails and is scheduled again.
    eventually("a failed delivery attempt is recorded", || async {
        (crate::credentials::count_rows(
            &app,
            "SELECT COUNT(*) AS n FROM notifications WHERE attempts >= 1 AND last_error <> '' AND next_attempt_time IS NOT NULL",
        ) == 1)
            .then_some(())
    })
    .await;
    let sink = Aiosmtpd::sink(relay_port);
    clock.advance(Duration::from_secs(3600));
    eventually("the notification is delivered", || async {
        (crate::credentials::count_rows(
            &app,
            "SELECT COUNT(*) AS n FROM notifications WHERE sent_time IS NOT NULL AND next_attempt_time IS NULL",
        ) == 1)
            .then_some(())
    })
    .await;
    // Sent and no longer due: no later round can send it again.
    assert_eq!(recipients(&sink), [login(ADA)]);
}

/// Two replicas on one Postgres, sharing a clock: each connection is checked once per interval
/// (by one of them), and each notification is mailed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_check_each_connection_once_and_mail_once() {
    let sink = Aiosmtpd::sink(free_port());
    let tokens = TokenEndpoint::start().await;
    let clock = clock();
    let first = app_on(Backend::Postgres, &clock, sink.port, &tokens, |_| {}).await;
    let relay = format!("smtp://127.0.0.1:{}", sink.port);
    let token_url = tokens.url();
    let second = first
        .spawn_replica_on(
            |settings| with_relay_and_oauth(settings, &relay, token_url),
            clock.clone(),
        )
        .await;
    let addresses: Vec<String> = (0..10).map(|n| format!("person{n}@acme.example")).collect();
    let mut names = Vec::new();
    for (n, address) in addresses.iter().enumerate() {
        let user = 100 + n as i64;
        seed_user(&first, user, address).await;
        let replica = if n % 2 == 0 { &first } else { &second };
        let connection = client(replica)
            .connect_personal_inbox(authed(
                &replica.user_token(1, user, &[]),
                ConnectPersonalInboxRequest {
                    email_address: address.clone(),
                    provider: Provider::Gmail.into(),
                    credentials: Some(grant(address, &format!("1//token-{n}"))),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .connection
            .unwrap();
        names.push(connection.name);
    }
    let proved = tokens.refreshed().len();
    assert_eq!(proved, 10, "each connect proved its grant once");
    for round in 1..=2 {
        clock.advance(INTERVAL);
        for name in &names {
            checked_now(&first, &clock, name).await;
        }
        let mut refreshed = tokens.refreshed()[proved..].to_vec();
        refreshed.sort();
        let mut expected: Vec<String> = (0..10)
            .flat_map(|n| std::iter::repeat_n(format!("1//token-{n}"), round))
            .collect();
        expected.sort();
        assert_eq!(
            refreshed, expected,
            "round {round}: one check per connection"
        );
    }
    for n in 0..10 {
        tokens.revoke(&format!("1//token-{n}"));
    }
    clock.advance(INTERVAL);
    eventually("every notification is mailed", || async {
        (crate::credentials::count_rows(
            &first,
            "SELECT COUNT(*) AS n FROM notifications WHERE sent_time IS NOT NULL",
        ) == 10)
            .then_some(())
    })
    .await;
    let unsent = crate::credentials::count_rows(
        &first,
        "SELECT COUNT(*) AS n FROM notifications WHERE sent_time IS NULL",
    );
    assert_eq!(unsent, 0);
    assert_eq!(sink.messages().len(), 10, "each notification mailed once");
    drop(second);
}

/// Exchange connects log in to EWS with the password before anything is stored, and a personal
/// connection takes its usages from the preset's scopes (CALENDAR: calendar and meetings).
async fn exchange_connects_log_in_and_take_the_presets_scopes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ews = FakeEws::start(&ca.issue(dir.path(), &["127.0.0.1"])).await;
    let ca_file = dir.path().join("ca.pem");
    ca.write_pem(&ca_file);
    let tokens = TokenEndpoint::start().await;
    let clock = clock();
    let app = app_on(backend, &clock, free_port(), &tokens, |settings| {
        settings.probe.probe_ca_files = vec![crate::domain_settings::parse_ca(&ca_file)];
    })
    .await;
    DomainSettingsServiceClient::new(app.channel.clone())
        .create_domain_settings(authed(
            &token(&app, ADMIN),
            CreateDomainSettingsRequest {
                domain_settings: Some(DomainSettings {
                    domain: "acme.example".into(),
                    settings: Some(Servers::Exchange(proto::ExchangeSettings {
                        exchange_url: format!(
                            "https://127.0.0.1:{}/basic/EWS/Exchange.asmx",
                            ews.port
                        ),
                        scopes: vec![proto::ExchangeScope::Calendar.into()],
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let connect = |secret: &'static str| {
        let mut client = client(&app);
        let token = token(&app, ADA);
        async move {
            client
                .connect_personal_inbox(authed(
                    &token,
                    ConnectPersonalInboxRequest {
                        email_address: "ada@acme.example".into(),
                        provider: Provider::Exchange.into(),
                        credentials: Some(password(USER, secret)),
                        ..Default::default()
                    },
                ))
                .await
        }
    };
    let status = connect("not the password").await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "PROBE_FAILED");
    let connected = connect(PASSWORD).await.unwrap().into_inner();
    let connection = connected.connection.unwrap();
    assert_eq!(
        connection.usages().collect::<Vec<_>>(),
        [proto::Usage::Meetings, proto::Usage::Calendar]
    );
    let servers = connection.servers.unwrap();
    assert_eq!(servers.source(), SettingsSource::AdminPreset);
    assert!(servers.exchange_url.contains("/basic/EWS/"), "{servers:?}");
    assert!(
        connected.reports[0]
            .stages
            .iter()
            .any(|stage| stage.name == "login" && stage.outcome() == ProbeOutcome::Ok),
        "{:?}",
        connected.reports
    );
}

backend_tests!(
    exchange_connects_log_in_and_take_the_presets_scopes,
    a_changed_password_disconnects_and_mails_the_right_people,
    an_outage_disconnects_only_after_the_threshold,
    oauth_grants_are_proved_at_the_token_endpoint,
    imap_without_servers_is_refused_and_recorded,
    notifications_wait_for_the_relay_and_arrive_once,
);
