//! DomainSettingsService over gRPC, on both backends, against real Dovecot, aiosmtpd and an
//! EWS look-alike.

use std::collections::BTreeSet;

use mailconnect::domain::principal::Role;
use mailconnect::grpc::probe_report::PROBE_REPORT_TYPE_URL;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::{
    self, CreateDomainSettingsRequest, DeleteDomainSettingsRequest, DomainSettings,
    DomainSettingsKind, ExchangeSettings, GetDomainSettingsRequest, ImapSettings,
    ListAttemptedDomainsRequest, ListDomainSettingsRequest, PasswordCredentials,
    ProbeDomainSettingsRequest, ProbeOutcome, ResolveConnectionSettingsRequest, Security,
    ServerAddress, SettingsSource, UpdateDomainSettingsRequest, domain_settings::Settings,
};
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

use crate::backend_tests;
use crate::fault_servers::{FakeEws, refused_port};
use crate::harness::{
    Backend, TestApp, assert_error, authed, eventually, spawn_app_with, violated_fields,
};
use crate::mail_servers::{Aiosmtpd, Dovecot, PASSWORD, SmtpMode, TestCa, USER};

/// The app with real mail servers beside it (unless the test only stores Exchange settings),
/// and an EWS look-alike whose CA the probe trusts.
struct World {
    app: TestApp,
    mail: Option<MailServers>,
    ews: FakeEws,
    _dir: tempfile::TempDir,
}

/// Dovecot and aiosmtpd, for the tests that probe IMAP settings.
struct MailServers {
    dovecot: Dovecot,
    smtp: Aiosmtpd,
}

impl World {
    async fn start(backend: Backend) -> World {
        Self::start_with(backend, |_| {}).await
    }

    async fn start_with(
        backend: Backend,
        configure: impl FnOnce(&mut mailconnect::config::Settings),
    ) -> World {
        let mail = MailServers {
            dovecot: Dovecot::start(),
            smtp: Aiosmtpd::start(SmtpMode::StartTls),
        };
        Self::start_on(backend, Some(mail), configure).await
    }

    /// Only the EWS look-alike: for the tests that never probe an IMAP or SMTP server.
    async fn exchange_only(backend: Backend) -> World {
        Self::start_on(backend, None, |_| {}).await
    }

    async fn start_on(
        backend: Backend,
        mail: Option<MailServers>,
        configure: impl FnOnce(&mut mailconnect::config::Settings),
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let ews = FakeEws::start(&ca.issue(dir.path(), &["127.0.0.1"])).await;
        let ca_file = dir.path().join("ca.pem");
        ca.write_pem(&ca_file);
        let app = spawn_app_with(backend, |settings| {
            settings.probe.probe_ca_files = vec![parse_ca(&ca_file)];
            configure(settings);
        })
        .await;
        World {
            app,
            mail,
            ews,
            _dir: dir,
        }
    }

    fn mail(&self) -> &MailServers {
        self.mail
            .as_ref()
            .expect("this test started without mail servers (World::exchange_only)")
    }

    fn client(&self) -> DomainSettingsServiceClient<Channel> {
        DomainSettingsServiceClient::new(self.app.channel.clone())
    }

    fn admin(&self) -> String {
        self.app.user_token(1, 7, &[Role::SuperAdmin])
    }

    /// IMAPS on Dovecot and submission with STARTTLS on aiosmtpd (self-signed, so allowed).
    fn imap(&self, domain: &str) -> DomainSettings {
        DomainSettings {
            domain: domain.into(),
            settings: Some(Settings::Imap(ImapSettings {
                imap_server: Some(ServerAddress {
                    host: "127.0.0.1".into(),
                    port: self.mail().dovecot.imaps_port.into(),
                    security: Security::ImplicitTls.into(),
                }),
                smtp_server: Some(ServerAddress {
                    host: "127.0.0.1".into(),
                    port: self.mail().smtp.port.into(),
                    security: Security::Starttls.into(),
                }),
                allow_insecure_certificate: true,
            })),
            ..Default::default()
        }
    }

    fn exchange(&self, domain: &str) -> DomainSettings {
        DomainSettings {
            domain: domain.into(),
            settings: Some(Settings::Exchange(ExchangeSettings {
                exchange_url: format!("https://127.0.0.1:{}/EWS/Exchange.asmx", self.ews.port),
                scopes: vec![],
            })),
            ..Default::default()
        }
    }
}

fn create(settings: DomainSettings) -> CreateDomainSettingsRequest {
    CreateDomainSettingsRequest {
        domain_settings: Some(settings),
        validate_only: false,
        request_id: String::new(),
    }
}

fn get(name: &str) -> GetDomainSettingsRequest {
    GetDomainSettingsRequest { name: name.into() }
}

/// The CA file as the configuration would read it.
pub fn parse_ca(path: &std::path::Path) -> mailconnect::config::CaFile {
    use rustls::pki_types::pem::PemObject as _;
    mailconnect::config::CaFile {
        path: path.to_owned(),
        certificates: rustls::pki_types::CertificateDer::pem_file_iter(path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap(),
    }
}

/// The ProbeReports a refused write carries as `google.rpc.Status` details.
fn probe_reports(status: &tonic::Status) -> Vec<proto::ProbeReport> {
    let details = tonic_types::pb::Status::decode(status.details()).expect("status details");
    details
        .details
        .iter()
        .filter(|any| any.type_url == PROBE_REPORT_TYPE_URL)
        .map(|any| proto::ProbeReport::decode(any.value.as_slice()).unwrap())
        .collect()
}

async fn imap_then_exchange_for_the_same_domain_is_refused(backend: Backend) {
    let world = World::start(backend).await;
    let mut client = world.client();
    let admin = world.admin();
    let created = client
        .create_domain_settings(authed(&admin, create(world.imap("Example.COM"))))
        .await
        .unwrap()
        .into_inner();
    let stored = created.domain_settings.unwrap();
    assert_eq!(stored.name, "domainSettings/example.com");
    assert_eq!(stored.domain, "example.com");
    assert!(!stored.etag.is_empty());
    assert!(stored.last_verified_time.is_some());
    assert_eq!(stored.updated_by_user_id, 7);
    assert_eq!(created.reports.len(), 2, "IMAP and SMTP were probed");
    for report in &created.reports {
        // The self-signed certificate is accepted only because the admin allowed it.
        assert_eq!(report.outcome(), ProbeOutcome::Warning, "{report:#?}");
        assert!(report.tls.as_ref().unwrap().self_signed);
    }

    let status = client
        .create_domain_settings(authed(&admin, create(world.exchange("example.com"))))
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::AlreadyExists, "DOMAIN_ALREADY_CONFIGURED");
    assert_eq!(metadata["existing_kind"], "imap");

    // Every user of the account reads and resolves it.
    let user = world.app.user_token(1, 8, &[]);
    let fetched = client
        .get_domain_settings(authed(&user, get("domainSettings/EXAMPLE.com")))
        .await
        .unwrap()
        .into_inner()
        .domain_settings
        .unwrap();
    assert_eq!(fetched, stored);
    let resolved = client
        .resolve_connection_settings(authed(
            &user,
            ResolveConnectionSettingsRequest {
                email_address: "ada@example.com".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.source(), SettingsSource::AdminPreset);
    assert_eq!(resolved.domain_settings, "domainSettings/example.com");
    assert_eq!(
        resolved.settings,
        stored.settings.map(|s| match s {
            Settings::Imap(imap) =>
                proto::resolve_connection_settings_response::Settings::Imap(imap),
            Settings::Exchange(e) =>
                proto::resolve_connection_settings_response::Settings::Exchange(e),
        })
    );
}

async fn exchange_then_imap_for_the_same_domain_is_refused(backend: Backend) {
    let world = World::start(backend).await;
    let mut client = world.client();
    let admin = world.admin();
    let created = client
        .create_domain_settings(authed(&admin, create(world.exchange("example.org"))))
        .await
        .unwrap()
        .into_inner();
    let Some(Settings::Exchange(exchange)) = created.domain_settings.unwrap().settings else {
        panic!("exchange settings expected")
    };
    assert_eq!(exchange.scopes, [1, 2], "both scopes by default");
    assert_eq!(created.reports.len(), 1);
    assert_eq!(
        created.reports[0].outcome(),
        ProbeOutcome::Ok,
        "{:#?}",
        created.reports[0]
    );

    let status = client
        .create_domain_settings(authed(&admin, create(world.imap("example.org"))))
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::AlreadyExists, "DOMAIN_ALREADY_CONFIGURED");
    assert_eq!(metadata["existing_kind"], "exchange");

    // An update cannot switch the kind either.
    let mut switch = world.imap("example.org");
    switch.name = "domainSettings/example.org".into();
    let status = client
        .update_domain_settings(authed(
            &admin,
            UpdateDomainSettingsRequest {
                domain_settings: Some(switch),
                update_mask: None,
                validate_only: false,
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "SETTINGS_KIND_MISMATCH");
}

async fn a_failed_probe_refuses_the_write_and_stores_nothing(backend: Backend) {
    let world = World::start(backend).await;
    let mut client = world.client();
    let admin = world.admin();
    let mut broken = world.imap("broken.example");
    if let Some(Settings::Imap(imap)) = &mut broken.settings {
        imap.smtp_server.as_mut().unwrap().port = refused_port().into();
    }
    let status = client
        .create_domain_settings(authed(&admin, create(broken.clone())))
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::FailedPrecondition, "PROBE_FAILED");
    assert_eq!(metadata["fields"], "domain_settings.imap.smtp_server.port");
    let reports = probe_reports(&status);
    assert_eq!(reports.len(), 2, "both reports travel with the refusal");
    let smtp = reports
        .iter()
        .find(|r| r.protocol() == proto::ProbeProtocol::Smtp)
        .unwrap();
    assert_eq!(smtp.outcome(), ProbeOutcome::Failed);
    assert!(!smtp.hint.is_empty());
    let status = client
        .get_domain_settings(authed(&admin, get("domainSettings/broken.example")))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "DOMAIN_SETTINGS_NOT_FOUND");

    // validate_only probes, answers, and stores nothing.
    let validated = client
        .create_domain_settings(authed(
            &admin,
            CreateDomainSettingsRequest {
                domain_settings: Some(world.imap("checked.example")),
                validate_only: true,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.reports.len(), 2);
    assert!(validated.domain_settings.unwrap().etag.is_empty());
    let status = client
        .get_domain_settings(authed(&admin, get("domainSettings/checked.example")))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "DOMAIN_SETTINGS_NOT_FOUND");
    let listed = client
        .list_domain_settings(authed(&admin, ListDomainSettingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.domain_settings.is_empty());
}

async fn concurrent_creates_for_one_domain_have_one_winner(backend: Backend) {
    let world = World::start_with(backend, |settings| {
        // Twenty calls of one account, each probing: room for all of them.
        settings.probe.probe_max_concurrent = 64;
        settings.probe.probe_max_concurrent_per_account = 64;
    })
    .await;
    let admin = world.admin();
    let mut calls = Vec::new();
    for index in 0..20 {
        let settings = if index % 2 == 0 {
            world.imap("race.example")
        } else {
            world.exchange("race.example")
        };
        let mut client = world.client();
        let token = admin.clone();
        calls.push(tokio::spawn(async move {
            client
                .create_domain_settings(authed(&token, create(settings)))
                .await
        }));
    }
    let mut won = 0;
    let mut lost = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => won += 1,
            Err(status) => {
                assert_error(&status, Code::AlreadyExists, "DOMAIN_ALREADY_CONFIGURED");
                lost += 1;
            }
        }
    }
    assert_eq!((won, lost), (1, 19));
    let listed = world
        .client()
        .list_domain_settings(authed(&admin, ListDomainSettingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.domain_settings.len(), 1);
}

async fn pagination_returns_each_domain_exactly_once(backend: Backend) {
    let world = World::start(backend).await;
    let mut client = world.client();
    let admin = world.admin();
    let mut expected = BTreeSet::new();
    for index in 0..250 {
        let domain = format!("d{index:03}.example");
        // Exchange: one probe per create against the in-process look-alike keeps this quick.
        client
            .create_domain_settings(authed(&admin, create(world.exchange(&domain))))
            .await
            .unwrap();
        expected.insert(domain);
    }
    client
        .create_domain_settings(authed(&admin, create(world.imap("imap-only.example"))))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_domain_settings(authed(
                &admin,
                ListDomainSettingsRequest {
                    page_size: 7,
                    page_token: token.clone(),
                    kind: DomainSettingsKind::Exchange.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.domain_settings.len() <= 7);
        seen.extend(page.domain_settings.into_iter().map(|s| s.domain));
        if page.next_page_token.is_empty() {
            break;
        }
        // Another filter with this token is refused.
        let status = client
            .list_domain_settings(authed(
                &admin,
                ListDomainSettingsRequest {
                    page_size: 7,
                    page_token: page.next_page_token.clone(),
                    kind: DomainSettingsKind::Imap.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["page_token"]);
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 250, "no duplicates, nothing missing");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "ordered by domain"
    );
}

async fn etags_roles_and_tenants(backend: Backend) {
    let world = World::start(backend).await;
    let mut client = world.client();
    let admin = world.admin();
    let stored = client
        .create_domain_settings(authed(&admin, create(world.imap("acme.example"))))
        .await
        .unwrap()
        .into_inner()
        .domain_settings
        .unwrap();

    // An update that changes nothing the probe checks probes nothing, but is still a write.
    let mut patch = world.imap("acme.example");
    patch.name = stored.name.clone();
    patch.etag = stored.etag.clone();
    let unchanged = client
        .update_domain_settings(authed(
            &admin,
            UpdateDomainSettingsRequest {
                domain_settings: Some(patch.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["imap.smtp_server".into()],
                }),
                validate_only: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(unchanged.reports.is_empty(), "{:#?}", unchanged.reports);
    let unchanged = unchanged.domain_settings.unwrap();
    assert_ne!(unchanged.etag, stored.etag);

    // Moving IMAP to Dovecot's STARTTLS port, with the current etag, probes again.
    let mut moved = patch.clone();
    moved.etag = unchanged.etag.clone();
    if let Some(Settings::Imap(imap)) = &mut moved.settings {
        *imap.imap_server.as_mut().unwrap() = ServerAddress {
            host: "127.0.0.1".into(),
            port: world.mail().dovecot.imap_port.into(),
            security: Security::Starttls.into(),
        };
    }
    let updated = client
        .update_domain_settings(authed(
            &admin,
            UpdateDomainSettingsRequest {
                domain_settings: Some(moved),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["imap.imap_server".into()],
                }),
                validate_only: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.reports.len(), 2, "IMAP and SMTP probed again");
    let current = updated.domain_settings.unwrap();
    assert_ne!(current.etag, unchanged.etag);
    let Some(Settings::Imap(imap)) = &current.settings else {
        panic!("imap")
    };
    assert_eq!(
        imap.imap_server.as_ref().unwrap().port,
        u32::from(world.mail().dovecot.imap_port)
    );

    // The first etag is stale now: update and delete are ABORTED.
    let status = client
        .update_domain_settings(authed(
            &admin,
            UpdateDomainSettingsRequest {
                domain_settings: Some(patch),
                update_mask: None,
                validate_only: false,
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let status = client
        .delete_domain_settings(authed(
            &admin,
            DeleteDomainSettingsRequest {
                name: stored.name.clone(),
                etag: stored.etag.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");

    // Plain users cannot write; account-access users can.
    let plain = world.app.user_token(1, 8, &[]);
    let status = client
        .create_domain_settings(authed(&plain, create(world.exchange("other.example"))))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
    let status = client
        .delete_domain_settings(authed(
            &plain,
            DeleteDomainSettingsRequest {
                name: stored.name.clone(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
    let access = world.app.user_token(1, 9, &[Role::AccountAccess]);
    client
        .create_domain_settings(authed(&access, create(world.exchange("other.example"))))
        .await
        .unwrap();

    // Another account sees nothing of account 1.
    let stranger = world.app.user_token(2, 1, &[Role::SuperAdmin]);
    let status = client
        .get_domain_settings(authed(&stranger, get("domainSettings/acme.example")))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "DOMAIN_SETTINGS_NOT_FOUND");
    let status = client
        .delete_domain_settings(authed(
            &stranger,
            DeleteDomainSettingsRequest {
                name: stored.name.clone(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "DOMAIN_SETTINGS_NOT_FOUND");
    let listed = client
        .list_domain_settings(authed(&stranger, ListDomainSettingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.domain_settings.is_empty());
    let resolved = client
        .resolve_connection_settings(authed(
            &stranger,
            ResolveConnectionSettingsRequest {
                email_address: "x@acme.example".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.source(), SettingsSource::None);

    // The current etag deletes.
    client
        .delete_domain_settings(authed(
            &admin,
            DeleteDomainSettingsRequest {
                name: current.name,
                etag: current.etag,
            },
        ))
        .await
        .unwrap();
}

async fn retries_with_a_request_id_return_the_first_result(backend: Backend) {
    let world = World::exchange_only(backend).await;
    let mut client = world.client();
    let admin = world.admin();
    let request = CreateDomainSettingsRequest {
        domain_settings: Some(world.exchange("retry.example")),
        validate_only: false,
        request_id: "6f1c2a3e-retry".into(),
    };
    let first = client
        .create_domain_settings(authed(&admin, request.clone()))
        .await
        .unwrap()
        .into_inner()
        .domain_settings
        .unwrap();
    let again = client
        .create_domain_settings(authed(&admin, request))
        .await
        .unwrap()
        .into_inner()
        .domain_settings
        .unwrap();
    assert_eq!(again, first);
}

async fn attempted_domains_are_the_admins_to_do_list(backend: Backend) {
    let world = World::exchange_only(backend).await;
    let mut client = world.client();
    let user = world.app.user_token(1, 8, &[]);
    for address in ["a@todo.example", "b@TODO.example", "c@gmail.com"] {
        client
            .resolve_connection_settings(authed(
                &user,
                ResolveConnectionSettingsRequest {
                    email_address: address.into(),
                },
            ))
            .await
            .unwrap();
    }
    let gmail = client
        .resolve_connection_settings(authed(
            &user,
            ResolveConnectionSettingsRequest {
                email_address: "d@gmail.com".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gmail.source(), SettingsSource::BuiltinProvider);
    assert_eq!(gmail.provider_name, "Gmail");
    assert_eq!(gmail.oauth_provider(), proto::OauthProvider::Google);
    assert!(
        gmail.settings.is_none(),
        "Gmail takes no passwords: {gmail:?}"
    );

    let status = client
        .list_attempted_domains(authed(&user, ListAttemptedDomainsRequest::default()))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
    let admin = world.admin();
    let attempted = client
        .list_attempted_domains(authed(&admin, ListAttemptedDomainsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .attempted_domains;
    let todo = attempted
        .iter()
        .find(|a| a.domain == "todo.example")
        .unwrap();
    assert_eq!(todo.attempts, 2);
    assert!(
        attempted.iter().all(|a| a.domain != "gmail.com"),
        "a built-in provider is not on the to-do list: {attempted:?}"
    );
    let (first, last) = (
        todo.first_attempt_time.unwrap(),
        todo.last_attempt_time.unwrap(),
    );
    assert!((first.seconds, first.nanos) <= (last.seconds, last.nanos));

    // One more attempt, still pending in memory when the settings are created.
    client
        .resolve_connection_settings(authed(
            &user,
            ResolveConnectionSettingsRequest {
                email_address: "e@todo.example".into(),
            },
        ))
        .await
        .unwrap();
    client
        .create_domain_settings(authed(&admin, create(world.exchange("todo.example"))))
        .await
        .unwrap();
    let attempted = client
        .list_attempted_domains(authed(&admin, ListAttemptedDomainsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .attempted_domains;
    assert!(
        attempted.iter().all(|a| a.domain != "todo.example"),
        "{attempted:?}"
    );
}

async fn probing_reports_without_storing(backend: Backend) {
    let world = World::start(backend).await;
    let mut client = world.client();
    let admin = world.admin();
    let mut settings = world.imap("probe.example");
    if let Some(Settings::Imap(imap)) = &mut settings.settings {
        // Dovecot's STARTTLS port this time.
        *imap.imap_server.as_mut().unwrap() = ServerAddress {
            host: "127.0.0.1".into(),
            port: world.mail().dovecot.imap_port.into(),
            security: Security::Starttls.into(),
        };
    }
    let probe = |password: &str| ProbeDomainSettingsRequest {
        domain_settings: Some(settings.clone()),
        test_credentials: Some(PasswordCredentials {
            username: USER.into(),
            password: password.into(),
        }),
    };
    let reports = client
        .probe_domain_settings(authed(&admin, probe(PASSWORD)))
        .await
        .unwrap()
        .into_inner()
        .reports;
    assert_eq!(reports.len(), 2);
    for report in &reports {
        assert!(
            report
                .stages
                .iter()
                .any(|s| s.name == "login" && s.outcome() == ProbeOutcome::Ok),
            "{report:#?}"
        );
    }
    let reports = client
        .probe_domain_settings(authed(&admin, probe("wrong-password")))
        .await
        .unwrap()
        .into_inner()
        .reports;
    let imap = &reports[0];
    assert_eq!(imap.outcome(), ProbeOutcome::Failed);
    assert_eq!(imap.field, "credentials.password");
    let status = client
        .get_domain_settings(authed(&admin, get("domainSettings/probe.example")))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "DOMAIN_SETTINGS_NOT_FOUND");
}

backend_tests!(
    imap_then_exchange_for_the_same_domain_is_refused,
    exchange_then_imap_for_the_same_domain_is_refused,
    a_failed_probe_refuses_the_write_and_stores_nothing,
    concurrent_creates_for_one_domain_have_one_winner,
    pagination_returns_each_domain_exactly_once,
    etags_roles_and_tenants,
    retries_with_a_request_id_return_the_first_result,
    attempted_domains_are_the_admins_to_do_list,
    probing_reports_without_storing,
);

async fn resolve_source(
    client: &mut DomainSettingsServiceClient<Channel>,
    token: &str,
    email_address: &str,
) -> SettingsSource {
    client
        .resolve_connection_settings(authed(
            token,
            ResolveConnectionSettingsRequest {
                email_address: email_address.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .source()
}

async fn etag_of(
    client: &mut DomainSettingsServiceClient<Channel>,
    token: &str,
    name: &str,
) -> String {
    client
        .get_domain_settings(authed(token, get(name)))
        .await
        .unwrap()
        .into_inner()
        .domain_settings
        .unwrap()
        .etag
}

/// Two replicas on one Postgres database: a preset created through one replica is resolved by the
/// other, which then caches it; once deleted through the first, the second no longer serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_written_on_one_replica_is_seen_by_the_other() {
    let world = World::exchange_only(Backend::Postgres).await;
    let replica = world.app.spawn_replica(|_| {}).await;
    let (admin, user) = (world.admin(), world.app.user_token(1, 8, &[]));
    let (mut first, mut second) = (
        world.client(),
        DomainSettingsServiceClient::new(replica.channel.clone()),
    );
    let name = "domainSettings/replica.example";
    // The second replica caches that the domain has no preset...
    assert_eq!(
        resolve_source(&mut second, &user, "ada@replica.example").await,
        SettingsSource::None
    );
    first
        .create_domain_settings(authed(&admin, create(world.exchange("replica.example"))))
        .await
        .unwrap();
    // ...and learns of the one the first replica created.
    eventually("the second replica resolves the new preset", || {
        let mut second = second.clone();
        let user = user.clone();
        async move {
            (resolve_source(&mut second, &user, "ada@replica.example").await
                == SettingsSource::AdminPreset)
                .then_some(())
        }
    })
    .await;

    // It answers from its cache: a version raised behind every replica's back is not seen
    // (retried until the notifications of the earlier writes have all been applied).
    eventually("GetDomainSettings is answered from the cache", || {
        let mut second = second.clone();
        let (admin, app) = (admin.clone(), &world.app);
        async move {
            let cached = etag_of(&mut second, &admin, name).await;
            app.postgres_sql(
                "SET session_replication_role = replica; \
                 UPDATE domain_settings SET version = version + 100 \
                 WHERE domain = 'replica.example'",
            );
            (etag_of(&mut second, &admin, name).await == cached).then_some(())
        }
    })
    .await;

    first
        .delete_domain_settings(authed(
            &admin,
            DeleteDomainSettingsRequest {
                name: name.into(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap();
    eventually("the second replica forgets the deleted preset", || {
        let mut second = second.clone();
        let admin = admin.clone();
        async move {
            let status = second
                .get_domain_settings(authed(&admin, get(name)))
                .await
                .err()?;
            assert_error(&status, Code::NotFound, "DOMAIN_SETTINGS_NOT_FOUND");
            Some(())
        }
    })
    .await;
    assert_eq!(
        resolve_source(&mut second, &user, "ada@replica.example").await,
        SettingsSource::None
    );
}

/// Bad input, each answered INVALID_ARGUMENT naming the exact field (no server is contacted:
/// validation comes before the probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field() {
    let app = crate::harness::spawn_app(Backend::Sqlite).await;
    let mut client = DomainSettingsServiceClient::new(app.channel.clone());
    let admin = app.user_token(1, 7, &[Role::SuperAdmin]);
    let server = |host: &str, port: u32, security: i32| ServerAddress {
        host: host.into(),
        port,
        security,
    };
    let imap =
        |domain: &str, imap: Option<ServerAddress>, smtp: Option<ServerAddress>| DomainSettings {
            domain: domain.into(),
            settings: Some(Settings::Imap(ImapSettings {
                imap_server: imap,
                smtp_server: smtp,
                allow_insecure_certificate: false,
            })),
            ..Default::default()
        };
    let good_imap = || Some(server("imap.example.com", 993, 0));
    let good_smtp = || Some(server("smtp.example.com", 587, 0));
    let exchange = |url: &str, scopes: Vec<i32>| DomainSettings {
        domain: "example.com".into(),
        settings: Some(Settings::Exchange(ExchangeSettings {
            exchange_url: url.into(),
            scopes,
        })),
        ..Default::default()
    };
    let long_label = format!("{}.example", "a".repeat(64));
    let cases: Vec<(DomainSettings, Vec<&str>)> = vec![
        (
            imap("", good_imap(), good_smtp()),
            vec!["domain_settings.domain"],
        ),
        (
            imap("localhost", good_imap(), good_smtp()),
            vec!["domain_settings.domain"],
        ),
        (
            imap("192.0.2.10", good_imap(), good_smtp()),
            vec!["domain_settings.domain"],
        ),
        (
            imap("-bad.example", good_imap(), good_smtp()),
            vec!["domain_settings.domain"],
        ),
        (
            imap(&long_label, good_imap(), good_smtp()),
            vec!["domain_settings.domain"],
        ),
        (
            imap("example.com", None, good_smtp()),
            vec!["domain_settings.imap.imap_server"],
        ),
        (
            imap("example.com", good_imap(), None),
            vec!["domain_settings.imap.smtp_server"],
        ),
        (
            imap("example.com", Some(server("", 993, 0)), good_smtp()),
            vec!["domain_settings.imap.imap_server.host"],
        ),
        (
            imap("example.com", Some(server("imap", 993, 0)), good_smtp()),
            vec!["domain_settings.imap.imap_server.host"],
        ),
        (
            imap(
                "example.com",
                Some(server("imap.example.com", 0, 0)),
                good_smtp(),
            ),
            vec!["domain_settings.imap.imap_server.port"],
        ),
        (
            imap(
                "example.com",
                good_imap(),
                Some(server("smtp.example.com", 65536, 0)),
            ),
            vec!["domain_settings.imap.smtp_server.port"],
        ),
        (
            imap(
                "example.com",
                good_imap(),
                Some(server("smtp.example.com", 587, 42)),
            ),
            vec!["domain_settings.imap.smtp_server.security"],
        ),
        (
            exchange("http://mail.example.com/EWS/Exchange.asmx", vec![]),
            vec!["domain_settings.exchange.exchange_url"],
        ),
        (
            exchange("https:///EWS", vec![]),
            vec!["domain_settings.exchange.exchange_url"],
        ),
        (
            exchange("https://mail.example.com/EWS/Exchange.asmx", vec![0]),
            vec!["domain_settings.exchange.scopes[0]"],
        ),
        (
            DomainSettings {
                domain: "example.com".into(),
                ..Default::default()
            },
            vec!["domain_settings.imap"],
        ),
        (
            imap("", Some(server("", 0, 7)), None),
            vec![
                "domain_settings.domain",
                "domain_settings.imap.imap_server.host",
                "domain_settings.imap.imap_server.port",
                "domain_settings.imap.imap_server.security",
                "domain_settings.imap.smtp_server",
            ],
        ),
    ];
    for (bad, fields) in cases {
        let status = client
            .create_domain_settings(authed(&admin, create(bad.clone())))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), fields, "{bad:?}");
        let status = client
            .probe_domain_settings(authed(
                &admin,
                ProbeDomainSettingsRequest {
                    domain_settings: Some(bad.clone()),
                    test_credentials: None,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), fields, "probe {bad:?}");
    }
    let status = client
        .create_domain_settings(authed(&admin, CreateDomainSettingsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["domain_settings"]);
    let status = client
        .create_domain_settings(authed(
            &admin,
            CreateDomainSettingsRequest {
                domain_settings: Some(imap("example.com", good_imap(), good_smtp())),
                validate_only: false,
                request_id: "x".repeat(129),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["request_id"]);
    for name in [
        "example.com",
        "domainSettings/",
        "domainSettings/not a domain",
        "domains/example.com",
    ] {
        let status = client
            .get_domain_settings(authed(&admin, get(name)))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["name"], "{name}");
    }
    let status = client
        .delete_domain_settings(authed(
            &admin,
            DeleteDomainSettingsRequest {
                name: "domainSettings/example.com".into(),
                etag: "garbage".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["etag"]);
    let status = client
        .list_domain_settings(authed(
            &admin,
            ListDomainSettingsRequest {
                page_size: -1,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size"]);
    let status = client
        .list_domain_settings(authed(
            &admin,
            ListDomainSettingsRequest {
                kind: 9,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["kind"]);
    let status = client
        .list_attempted_domains(authed(
            &admin,
            ListAttemptedDomainsRequest {
                page_size: 0,
                page_token: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
    for address in ["", "not-an-address", "a@localhost", "a@[127.0.0.1]"] {
        let status = client
            .resolve_connection_settings(authed(
                &admin,
                ResolveConnectionSettingsRequest {
                    email_address: address.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["email_address"], "{address:?}");
    }
    let status = client
        .update_domain_settings(authed(
            &admin,
            UpdateDomainSettingsRequest {
                domain_settings: Some(DomainSettings {
                    name: "domainSettings/example.com".into(),
                    etag: "bad".into(),
                    ..Default::default()
                }),
                update_mask: None,
                validate_only: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["domain_settings.etag"]);
}

/// An account that starts more probes than its rate allows is told when to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_beyond_the_account_rate_are_refused_with_retry_info() {
    use tonic_types::StatusExt as _;
    let app = crate::harness::spawn_app_with(Backend::Sqlite, |settings| {
        settings.probe.probe_rate_per_minute = 1;
    })
    .await;
    let mut client = DomainSettingsServiceClient::new(app.channel.clone());
    let admin = app.user_token(1, 7, &[Role::SuperAdmin]);
    let probe = || ProbeDomainSettingsRequest {
        domain_settings: Some(DomainSettings {
            domain: "acme.example".into(),
            settings: Some(Settings::Exchange(ExchangeSettings {
                exchange_url: format!("https://127.0.0.1:{}/EWS/Exchange.asmx", refused_port()),
                scopes: vec![],
            })),
            ..Default::default()
        }),
        test_credentials: None,
    };
    let reports = client
        .probe_domain_settings(authed(&admin, probe()))
        .await
        .unwrap()
        .into_inner()
        .reports;
    assert_eq!(reports[0].outcome(), ProbeOutcome::Failed);
    let status = client
        .probe_domain_settings(authed(&admin, probe()))
        .await
        .unwrap_err();
    assert_error(&status, Code::ResourceExhausted, "PROBE_CAPACITY");
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|delay| !delay.is_zero()));
    // Another account has its own allowance.
    let other = app.user_token(2, 1, &[Role::SuperAdmin]);
    client
        .probe_domain_settings(authed(&other, probe()))
        .await
        .unwrap();
}
