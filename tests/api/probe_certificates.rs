//! "Allow non-secure certificate" accepts a certificate that no trusted authority signed, and
//! nothing else: an expired, not yet valid or wrong-name certificate fails with its own hint
//! when the flag is on (issue 16, 10).

use mailconnect::domain::probe::{ProbeContext, ProbeOutcome, ProbeReport, Security};
use mailconnect::probe::Probe;
use mailconnect::probe::tls::TlsClient;
use rustls::RootCertStore;

use crate::fault_servers::{Fault, FaultServer};
use crate::mail_servers::{TestCa, TestCertificate, probe_settings};
use crate::probe::imap;

/// Probes an implicit-TLS IMAP look-alike presenting `certificate`, with the flag on, trusting
/// `roots` instead of the public authorities when given.
async fn probe_flagged(certificate: &TestCertificate, roots: Option<RootCertStore>) -> ProbeReport {
    let server = FaultServer::start_tls(certificate, Fault::ImapWithoutStartTls).await;
    let mut probe = Probe::from_settings(&probe_settings(&[server.port]));
    if let Some(roots) = roots {
        probe = probe.with_tls_client(TlsClient::with_roots(roots).unwrap());
    }
    probe
        .probe(
            imap(server.port, Security::ImplicitTls, true, None),
            ProbeContext::default(),
        )
        .await
        .unwrap()
}

fn assert_refused(report: &ProbeReport, problem: &str) {
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    let tls = report.stages.iter().find(|s| s.name == "tls").unwrap();
    assert_eq!(tls.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert!(report.hint.contains(problem), "{}", report.hint);
    // The flag cannot fix it, so the hint does not offer it and the field is the host.
    assert!(!report.hint.contains("turn on"), "{}", report.hint);
    assert_eq!(report.field, "domain_settings.imap.imap_server.host");
}

#[tokio::test]
async fn the_flag_accepts_a_self_signed_certificate_for_the_right_name() {
    let dir = tempfile::tempdir().unwrap();
    let valid =
        TestCertificate::self_signed_dated(dir.path(), &["127.0.0.1"], (2020, 1, 1), (2090, 1, 1));
    let report = probe_flagged(&valid, None).await;
    assert_eq!(report.outcome, ProbeOutcome::Warning, "{report:#?}");
    let tls = report.tls.unwrap();
    assert!(
        tls.self_signed && !tls.chain_trusted && tls.hostname_matches,
        "{tls:?}"
    );
}

#[tokio::test]
async fn the_flag_does_not_accept_a_bad_date_or_name() {
    let dir = tempfile::tempdir().unwrap();
    let self_signed = |names: &[&str], from, until| {
        TestCertificate::self_signed_dated(dir.path(), names, from, until)
    };
    let expired = self_signed(&["127.0.0.1"], (2000, 1, 1), (2001, 1, 1));
    assert_refused(&probe_flagged(&expired, None).await, "has expired");
    let not_yet = self_signed(&["127.0.0.1"], (2090, 1, 1), (2091, 1, 1));
    assert_refused(&probe_flagged(&not_yet, None).await, "is not valid yet");
    let elsewhere = self_signed(&["mail.example.com"], (2020, 1, 1), (2090, 1, 1));
    let report = probe_flagged(&elsewhere, None).await;
    assert_refused(&report, "was issued for another host name");
    let tls = report.tls.unwrap();
    assert!(!tls.chain_trusted && !tls.hostname_matches, "{tls:?}");

    // A trusted authority's certificate for another name fails the same way.
    let ca = TestCa::new();
    let report = probe_flagged(
        &ca.issue(dir.path(), &["mail.example.com"]),
        Some(ca.roots()),
    )
    .await;
    assert_refused(&report, "was issued for another host name");
    assert!(report.tls.unwrap().chain_trusted);
}
