//! The probe against real servers on loopback: Dovecot, aiosmtpd, an EWS look-alike, and
//! servers that misbehave. No test asserts a timing; the loose bounds only catch hangs.

use std::time::Duration;

use mailconnect::config::ProbeSettings;
use mailconnect::domain::probe::{
    ProbeContext, ProbeCredentials, ProbeOutcome, ProbeReport, ProbeRequest, ProbeTarget, Security,
    ServerEndpoint,
};
use mailconnect::domain::secret::Secret;
use mailconnect::probe::Probe;
use mailconnect::probe::tls::TlsClient;

use crate::fault_servers::{FakeEws, Fault, FaultServer, refused_port};
use crate::mail_servers::{Aiosmtpd, Dovecot, PASSWORD, SmtpMode, TestCa, USER, probe_settings};

const IMAP_FIELD: &str = "domain_settings.imap.imap_server";
const SMTP_FIELD: &str = "domain_settings.imap.smtp_server";
const EXCHANGE_FIELD: &str = "domain_settings.exchange.exchange_url";
/// A wrong password distinctive enough to prove it appears nowhere in a report.
const WRONG_PASSWORD: &str = "Wr0ng-Pa55word-7f3a";

fn credentials(password: &str) -> Option<ProbeCredentials> {
    Some(ProbeCredentials {
        username: USER.to_owned(),
        password: Secret::new(password.to_owned()),
    })
}

fn server(port: u16, security: Security) -> ServerEndpoint {
    ServerEndpoint {
        host: "127.0.0.1".to_owned(),
        port,
        security,
    }
}

pub(crate) fn imap(
    port: u16,
    security: Security,
    insecure: bool,
    password: Option<&str>,
) -> ProbeRequest {
    ProbeRequest {
        target: ProbeTarget::Imap(server(port, security)),
        allow_insecure_certificate: insecure,
        credentials: password.and_then(credentials),
        field_prefix: IMAP_FIELD.to_owned(),
    }
}

pub(crate) fn smtp(port: u16, security: Security, password: Option<&str>) -> ProbeRequest {
    ProbeRequest {
        target: ProbeTarget::Smtp(server(port, security)),
        allow_insecure_certificate: true,
        credentials: password.and_then(credentials),
        field_prefix: SMTP_FIELD.to_owned(),
    }
}

fn exchange(port: u16, path: &str, password: Option<&str>) -> ProbeRequest {
    ProbeRequest {
        target: ProbeTarget::Exchange(format!("https://localhost:{port}{path}")),
        allow_insecure_certificate: false,
        credentials: password.and_then(credentials),
        field_prefix: EXCHANGE_FIELD.to_owned(),
    }
}

async fn run(settings: &ProbeSettings, request: ProbeRequest) -> ProbeReport {
    Probe::from_settings(settings)
        .probe(request, ProbeContext::default())
        .await
        .expect("the probe is admitted")
}

fn stage(report: &ProbeReport, name: &str) -> ProbeOutcome {
    report
        .stages
        .iter()
        .find(|stage| stage.name == name)
        .unwrap_or_else(|| panic!("no stage {name} in {report:#?}"))
        .outcome
}

pub(crate) fn failed_stage(report: &ProbeReport) -> &mailconnect::domain::probe::ProbeStage {
    report
        .stages
        .iter()
        .find(|stage| !stage.outcome.is_success() && stage.outcome != ProbeOutcome::Skipped)
        .unwrap_or_else(|| panic!("no failed stage in {report:#?}"))
}

/// The settings of the tests whose server never answers: a one-second stage timeout.
fn impatient(ports: &[u16]) -> ProbeSettings {
    ProbeSettings {
        probe_stage_timeout: Duration::from_secs(1),
        ..probe_settings(ports)
    }
}

// ---- IMAP against Dovecot ----

#[tokio::test]
async fn imaps_with_an_allowed_self_signed_certificate_logs_in_and_reports_it() {
    let dovecot = Dovecot::start();
    let settings = probe_settings(&[dovecot.imaps_port]);
    let report = run(
        &settings,
        imap(
            dovecot.imaps_port,
            Security::ImplicitTls,
            true,
            Some(PASSWORD),
        ),
    )
    .await;
    // Works, with a warning: the certificate is accepted only because the admin allowed it.
    assert_eq!(report.outcome, ProbeOutcome::Warning, "{report:#?}");
    assert_eq!(stage(&report, "tls"), ProbeOutcome::Warning);
    for name in [
        "resolve",
        "connect",
        "greeting",
        "capabilities",
        "login",
        "logout",
    ] {
        assert_eq!(
            stage(&report, name),
            ProbeOutcome::Ok,
            "{name}: {report:#?}"
        );
    }
    let tls = report.tls.as_ref().expect("TLS info");
    assert!(tls.version.starts_with("TLSv1."), "{tls:?}");
    assert!(!tls.cipher.is_empty());
    assert!(tls.subject.contains("rcgen"), "{tls:?}");
    assert!(
        tls.self_signed && !tls.chain_trusted && tls.hostname_matches,
        "{tls:?}"
    );
    assert!(
        tls.subject_alt_names.contains(&"IP:127.0.0.1".to_owned()),
        "{tls:?}"
    );
    assert!(tls.not_after.is_some());
    assert!(
        report.capabilities.iter().any(|c| c == "IMAP4rev1"),
        "{report:#?}"
    );
    assert!(
        report.auth_mechanisms.iter().any(|m| m == "PLAIN"),
        "{report:#?}"
    );
    assert_eq!(
        report.connected_address,
        format!("127.0.0.1:{}", dovecot.imaps_port)
    );
    assert!(report.field.is_empty() && report.hint.is_empty());
    let greeting = report.stages.iter().find(|s| s.name == "greeting").unwrap();
    assert!(greeting.server_reply.contains("OK"), "{greeting:?}");
}

#[tokio::test]
async fn a_self_signed_certificate_fails_without_allow_insecure_certificate() {
    let dovecot = Dovecot::start();
    let settings = probe_settings(&[dovecot.imaps_port]);
    let report = run(
        &settings,
        imap(dovecot.imaps_port, Security::ImplicitTls, false, None),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(stage(&report, "tls"), ProbeOutcome::Failed);
    assert_eq!(stage(&report, "greeting"), ProbeOutcome::Skipped);
    assert_eq!(
        report.field,
        "domain_settings.imap.allow_insecure_certificate"
    );
    assert!(
        report.hint.contains("allow_insecure_certificate"),
        "{}",
        report.hint
    );
    // The certificate is described even though it was refused.
    let tls = report
        .tls
        .as_ref()
        .expect("the refused certificate is described");
    assert!(tls.self_signed && !tls.chain_trusted, "{tls:?}");
}

#[tokio::test]
async fn imap_starttls_upgrades_and_logs_in() {
    let dovecot = Dovecot::start();
    let settings = probe_settings(&[dovecot.imap_port]);
    let report = run(
        &settings,
        imap(dovecot.imap_port, Security::StartTls, true, Some(PASSWORD)),
    )
    .await;
    assert!(report.outcome.is_success(), "{report:#?}");
    for name in [
        "greeting",
        "capabilities",
        "starttls",
        "capabilities_after_tls",
        "login",
    ] {
        assert_eq!(
            stage(&report, name),
            ProbeOutcome::Ok,
            "{name}: {report:#?}"
        );
    }
    assert_eq!(stage(&report, "tls"), ProbeOutcome::Warning);
    assert!(report.tls.is_some());
}

#[tokio::test]
async fn a_wrong_imap_password_names_the_password_field() {
    let dovecot = Dovecot::start();
    let settings = probe_settings(&[dovecot.imaps_port]);
    let report = run(
        &settings,
        imap(
            dovecot.imaps_port,
            Security::ImplicitTls,
            true,
            Some(WRONG_PASSWORD),
        ),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(stage(&report, "login"), ProbeOutcome::Failed);
    assert_eq!(report.field, "credentials.password");
    assert!(
        !format!("{report:?}").contains(WRONG_PASSWORD),
        "the password never appears"
    );
}

#[tokio::test]
async fn starttls_on_the_implicit_tls_port_gives_the_mismatch_hint() {
    let dovecot = Dovecot::start();
    let settings = impatient(&[dovecot.imaps_port]);
    let report = run(
        &settings,
        imap(dovecot.imaps_port, Security::StartTls, true, None),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::TimedOut, "{report:#?}");
    assert_eq!(stage(&report, "greeting"), ProbeOutcome::TimedOut);
    assert_eq!(report.field, "domain_settings.imap.imap_server.security");
    assert!(report.hint.contains("implicit TLS"), "{}", report.hint);
}

#[tokio::test]
async fn implicit_tls_on_the_starttls_port_gives_the_mismatch_hint() {
    let dovecot = Dovecot::start();
    let settings = probe_settings(&[dovecot.imap_port]);
    let report = run(
        &settings,
        imap(dovecot.imap_port, Security::ImplicitTls, true, None),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    let tls = failed_stage(&report);
    assert_eq!(tls.name, "tls");
    assert!(tls.server_reply.contains("* OK"), "{tls:?}");
    assert_eq!(report.field, "domain_settings.imap.imap_server.security");
    assert!(report.hint.contains("STARTTLS"), "{}", report.hint);
}

// ---- SMTP against aiosmtpd ----

#[tokio::test]
async fn smtp_starttls_offers_auth_after_tls_and_logs_in() {
    let server = Aiosmtpd::start(SmtpMode::StartTls);
    let settings = probe_settings(&[server.port]);
    let report = run(
        &settings,
        smtp(server.port, Security::StartTls, Some(PASSWORD)),
    )
    .await;
    assert!(report.outcome.is_success(), "{report:#?}");
    for name in [
        "greeting",
        "ehlo",
        "starttls",
        "ehlo_after_tls",
        "login",
        "quit",
    ] {
        assert_eq!(
            stage(&report, name),
            ProbeOutcome::Ok,
            "{name}: {report:#?}"
        );
    }
    assert!(
        report.capabilities.iter().any(|c| c.starts_with("AUTH")),
        "{report:#?}"
    );
    assert!(
        report.auth_mechanisms.iter().any(|m| m == "PLAIN"),
        "{report:#?}"
    );
    assert!(report.tls.as_ref().is_some_and(|tls| tls.self_signed));
}

#[tokio::test]
async fn smtp_implicit_tls_logs_in() {
    let server = Aiosmtpd::start(SmtpMode::ImplicitTls);
    let settings = probe_settings(&[server.port]);
    let report = run(
        &settings,
        smtp(server.port, Security::ImplicitTls, Some(PASSWORD)),
    )
    .await;
    assert!(report.outcome.is_success(), "{report:#?}");
    assert_eq!(stage(&report, "tls"), ProbeOutcome::Warning);
    assert_eq!(stage(&report, "login"), ProbeOutcome::Ok);
    assert!(
        report.auth_mechanisms.iter().any(|m| m == "LOGIN"),
        "{report:#?}"
    );
}

#[tokio::test]
async fn a_wrong_smtp_password_names_the_password_field() {
    let server = Aiosmtpd::start(SmtpMode::StartTls);
    let settings = probe_settings(&[server.port]);
    let report = run(
        &settings,
        smtp(server.port, Security::StartTls, Some(WRONG_PASSWORD)),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(stage(&report, "login"), ProbeOutcome::Failed);
    assert_eq!(report.field, "credentials.password");
    assert!(
        !format!("{report:?}").contains(WRONG_PASSWORD),
        "the password never appears"
    );
}

#[tokio::test]
async fn implicit_tls_on_an_smtp_starttls_port_gives_the_mismatch_hint() {
    let server = Aiosmtpd::start(SmtpMode::StartTls);
    let settings = probe_settings(&[server.port]);
    let report = run(&settings, smtp(server.port, Security::ImplicitTls, None)).await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(failed_stage(&report).name, "tls");
    assert!(
        failed_stage(&report).server_reply.contains("220"),
        "{report:#?}"
    );
    assert_eq!(report.field, "domain_settings.imap.smtp_server.security");
    assert!(report.hint.contains("STARTTLS"), "{}", report.hint);
}

#[tokio::test]
async fn starttls_on_an_smtp_implicit_tls_port_gives_the_mismatch_hint() {
    let server = Aiosmtpd::start(SmtpMode::ImplicitTls);
    let settings = impatient(&[server.port]);
    let report = run(&settings, smtp(server.port, Security::StartTls, None)).await;
    assert_eq!(report.outcome, ProbeOutcome::TimedOut, "{report:#?}");
    assert_eq!(stage(&report, "greeting"), ProbeOutcome::TimedOut);
    assert_eq!(report.field, "domain_settings.imap.smtp_server.security");
    assert!(report.hint.contains("implicit TLS"), "{}", report.hint);
}

// ---- Exchange Web Services against a look-alike ----

/// The EWS look-alike with a certificate from a test CA the probe trusts.
async fn ews() -> (
    FakeEws,
    Probe<mailconnect::probe::net::TcpConnector>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let certificate = ca.issue(dir.path(), &["localhost"]);
    let server = FakeEws::start(&certificate).await;
    let probe = Probe::from_settings(&probe_settings(&[server.port]))
        .with_tls_client(TlsClient::with_roots(ca.roots()).unwrap());
    (server, probe, dir)
}

async fn run_with(probe: &Probe, request: ProbeRequest) -> ProbeReport {
    probe.probe(request, ProbeContext::default()).await.unwrap()
}

#[tokio::test]
async fn ews_asking_for_negotiate_and_ntlm_is_an_ews_endpoint() {
    let (server, probe, _dir) = ews().await;
    let report = run_with(&probe, exchange(server.port, "/EWS/Exchange.asmx", None)).await;
    assert_eq!(report.outcome, ProbeOutcome::Ok, "{report:#?}");
    assert_eq!(report.auth_mechanisms, vec!["Negotiate", "NTLM"]);
    let tls = report.tls.as_ref().unwrap();
    assert!(
        tls.chain_trusted && tls.hostname_matches && !tls.self_signed,
        "{tls:?}"
    );
}

#[tokio::test]
async fn ews_basic_checks_the_password() {
    let (server, probe, _dir) = ews().await;
    let good = run_with(
        &probe,
        exchange(server.port, "/basic/EWS/Exchange.asmx", Some(PASSWORD)),
    )
    .await;
    assert_eq!(good.outcome, ProbeOutcome::Ok, "{good:#?}");
    assert_eq!(good.auth_mechanisms, vec!["Basic"]);
    assert_eq!(stage(&good, "login"), ProbeOutcome::Ok);

    let bad = run_with(
        &probe,
        exchange(
            server.port,
            "/basic/EWS/Exchange.asmx",
            Some(WRONG_PASSWORD),
        ),
    )
    .await;
    assert_eq!(bad.outcome, ProbeOutcome::Failed, "{bad:#?}");
    assert_eq!(bad.field, "credentials.password");
    assert!(
        !format!("{bad:?}").contains(WRONG_PASSWORD),
        "the password never appears"
    );
}

#[tokio::test]
async fn ews_with_modern_authentication_only_says_so() {
    let (server, probe, _dir) = ews().await;
    let report = run_with(
        &probe,
        exchange(server.port, "/modern/EWS/Exchange.asmx", Some(PASSWORD)),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Warning, "{report:#?}");
    assert_eq!(report.auth_mechanisms, vec!["Bearer"]);
    let request = report
        .stages
        .iter()
        .find(|s| s.name == "ews_request")
        .unwrap();
    assert!(request.detail.contains("OAuth"), "{request:?}");
    assert!(
        request.detail.contains("Basic authentication is disabled"),
        "{request:?}"
    );
    assert_eq!(stage(&report, "login"), ProbeOutcome::Warning);
}

#[tokio::test]
async fn ews_answering_200_is_accepted() {
    let (server, probe, _dir) = ews().await;
    let report = run_with(
        &probe,
        exchange(server.port, "/open/EWS/Exchange.asmx", None),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Ok, "{report:#?}");
}

#[tokio::test]
async fn a_404_says_where_ews_usually_lives() {
    let (server, probe, _dir) = ews().await;
    let report = run_with(&probe, exchange(server.port, "/Exchange", None)).await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(report.field, EXCHANGE_FIELD);
    assert!(
        report.hint.contains("/EWS/Exchange.asmx"),
        "{}",
        report.hint
    );
}

#[tokio::test]
async fn a_redirect_to_a_sign_in_page_is_reported_not_followed() {
    let (server, probe, _dir) = ews().await;
    let report = run_with(&probe, exchange(server.port, "/owa", None)).await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    let request = failed_stage(&report);
    assert!(request.detail.contains("sign-in page"), "{request:?}");
    assert!(
        request.server_reply.contains("login.example.com"),
        "{request:?}"
    );
    assert_eq!(report.field, EXCHANGE_FIELD);
}

#[tokio::test]
async fn an_ews_certificate_for_another_name_fails_the_tls_stage() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let certificate = ca.issue(dir.path(), &["mail.example.com"]);
    let server = FakeEws::start(&certificate).await;
    let probe = Probe::from_settings(&probe_settings(&[server.port]))
        .with_tls_client(TlsClient::with_roots(ca.roots()).unwrap());
    let report = run_with(&probe, exchange(server.port, "/EWS/Exchange.asmx", None)).await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(failed_stage(&report).name, "tls");
    assert!(failed_stage(&report).detail.contains("another host name"));
    let tls = report.tls.as_ref().unwrap();
    assert!(tls.chain_trusted && !tls.hostname_matches, "{tls:?}");
}

#[tokio::test]
async fn an_exchange_url_that_is_not_https_is_refused_before_connecting() {
    let settings = probe_settings(&[443]);
    let mut request = exchange(443, "/EWS/Exchange.asmx", None);
    request.target = ProbeTarget::Exchange("http://localhost/EWS/Exchange.asmx".to_owned());
    let report = run(&settings, request).await;
    assert_eq!(report.outcome, ProbeOutcome::Failed);
    assert_eq!(failed_stage(&report).name, "url");
    assert!(failed_stage(&report).detail.contains("https://"));
    assert_eq!(stage(&report, "connect"), ProbeOutcome::Skipped);
    assert_eq!(report.field, EXCHANGE_FIELD);
}

// ---- Servers that misbehave ----

#[tokio::test]
async fn a_server_that_never_speaks_times_out_within_the_budget() {
    let server = FaultServer::start(Fault::Silent).await;
    let settings = ProbeSettings {
        probe_timeout: Duration::from_secs(1),
        ..probe_settings(&[server.port])
    };
    let report = run(
        &settings,
        imap(server.port, Security::StartTls, false, None),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::TimedOut, "{report:#?}");
    let greeting = failed_stage(&report);
    assert_eq!(greeting.name, "greeting");
    assert!(greeting.detail.contains("time budget"), "{greeting:?}");
    // Only a hang fails this; the budget is one second.
    assert!(
        report.total_latency < Duration::from_secs(10),
        "{report:#?}"
    );
}

#[tokio::test]
async fn the_callers_deadline_caps_the_probe() {
    let server = FaultServer::start(Fault::Silent).await;
    let settings = probe_settings(&[server.port]);
    let context = ProbeContext {
        account_id: None,
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(1)),
    };
    let report = Probe::from_settings(&settings)
        .probe(imap(server.port, Security::StartTls, false, None), context)
        .await
        .unwrap();
    assert_eq!(report.outcome, ProbeOutcome::TimedOut, "{report:#?}");
    assert!(failed_stage(&report).detail.contains("time budget"));
    assert!(report.total_latency < Duration::from_secs(10));
}

#[tokio::test]
async fn a_server_that_hangs_up_at_once_is_reported() {
    let server = FaultServer::start(Fault::CloseAtOnce).await;
    let settings = probe_settings(&[server.port]);
    let report = run(
        &settings,
        imap(server.port, Security::StartTls, false, None),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    let greeting = failed_stage(&report);
    assert_eq!(greeting.name, "greeting");
    assert!(greeting.detail.contains("closed"), "{greeting:?}");
}

#[tokio::test]
async fn garbage_is_not_an_imap_greeting() {
    let server = FaultServer::start(Fault::Say(b"\x00\x01garbage\xff\xfe\r\n")).await;
    let settings = impatient(&[server.port]);
    let report = run(
        &settings,
        imap(server.port, Security::StartTls, false, None),
    )
    .await;
    assert!(!report.outcome.is_success(), "{report:#?}");
    let greeting = failed_stage(&report);
    assert_eq!(greeting.name, "greeting");
    assert!(greeting.detail.contains("not IMAP"), "{greeting:?}");
    assert!(greeting.server_reply.contains("garbage"), "{greeting:?}");
}

#[tokio::test]
async fn an_smtp_banner_on_the_imap_port_is_recognised() {
    let server = FaultServer::start(Fault::Say(b"220 mail.example.com ESMTP Postfix\r\n")).await;
    let settings = impatient(&[server.port]);
    let report = run(
        &settings,
        imap(server.port, Security::StartTls, false, None),
    )
    .await;
    assert!(!report.outcome.is_success(), "{report:#?}");
    let greeting = failed_stage(&report);
    assert!(
        greeting.detail.contains("not an IMAP server"),
        "{greeting:?}"
    );
    assert!(greeting.detail.contains("SMTP"), "{greeting:?}");
    assert!(
        greeting.server_reply.contains("220 mail.example.com"),
        "{greeting:?}"
    );
    assert_eq!(report.field, "domain_settings.imap.imap_server.port");
}

#[tokio::test]
async fn an_http_server_on_the_imap_port_is_recognised() {
    let server = FaultServer::start(Fault::Say(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let settings = impatient(&[server.port]);
    let report = run(
        &settings,
        imap(server.port, Security::StartTls, false, None),
    )
    .await;
    assert!(!report.outcome.is_success(), "{report:#?}");
    let greeting = failed_stage(&report);
    assert!(greeting.detail.contains("HTTP"), "{greeting:?}");
    assert_eq!(report.field, "domain_settings.imap.imap_server.port");
}

#[tokio::test]
async fn a_greeting_trickling_a_byte_a_second_times_out() {
    let server = FaultServer::start(Fault::Trickle(b"* OK slow server ready\r\n")).await;
    let settings = impatient(&[server.port]);
    let report = run(
        &settings,
        imap(server.port, Security::StartTls, false, None),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::TimedOut, "{report:#?}");
    assert_eq!(failed_stage(&report).name, "greeting");
}

#[tokio::test]
async fn a_refused_port_names_the_port() {
    let port = refused_port();
    let settings = probe_settings(&[port]);
    let report = run(&settings, imap(port, Security::ImplicitTls, false, None)).await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    let connect = failed_stage(&report);
    assert_eq!(connect.name, "connect");
    assert!(connect.detail.contains("refused"), "{connect:?}");
    assert_eq!(report.field, "domain_settings.imap.imap_server.port");
}

#[tokio::test]
async fn imap_without_starttls_is_refused_before_any_password_is_sent() {
    let server = FaultServer::start(Fault::ImapWithoutStartTls).await;
    let settings = probe_settings(&[server.port]);
    let report = run(
        &settings,
        imap(server.port, Security::StartTls, false, Some(PASSWORD)),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(failed_stage(&report).name, "starttls");
    assert_eq!(stage(&report, "login"), ProbeOutcome::Skipped);
    assert_eq!(report.field, "domain_settings.imap.imap_server.security");
}

#[tokio::test]
async fn smtp_without_starttls_is_refused_and_an_unusable_mechanism_is_named() {
    let server = FaultServer::start(Fault::SmtpWithoutStartTls).await;
    let settings = probe_settings(&[server.port]);
    let report = run(
        &settings,
        smtp(server.port, Security::StartTls, Some(PASSWORD)),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(failed_stage(&report).name, "starttls");
    assert_eq!(report.field, "domain_settings.imap.smtp_server.security");

    // In plain text (only when an admin asks for it) the login needs a mechanism we support.
    let report = run(
        &settings,
        smtp(server.port, Security::Plaintext, Some(PASSWORD)),
    )
    .await;
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    let login = failed_stage(&report);
    assert_eq!(login.name, "login");
    assert!(login.detail.contains("CRAM-MD5"), "{login:?}");
    assert_eq!(report.auth_mechanisms, vec!["CRAM-MD5"]);
}
