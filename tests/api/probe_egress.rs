//! The egress (SSRF) corpus: targets the probe refuses before any packet leaves, through the
//! tests' resolver and a connector that records attempts instead of connecting (issue 16, 2).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mailconnect::domain::probe::{
    ProbeContext, ProbeOutcome, ProbeReport, ProbeRequest, ProbeTarget,
};
use mailconnect::probe::Probe;
use mailconnect::probe::net::{Connector, TcpConnector};
use mailconnect::probe::tls::TlsClient;
use tokio::net::TcpStream;

use crate::fault_servers::FakeEws;
use crate::mail_servers::{TestCa, probe_settings};
use crate::probe_guard::{RecordingConnector, default_settings, imap_request, probe_blocked};

const HOST_FIELD: &str = "domain_settings.imap.imap_server.host";
const URL_FIELD: &str = "domain_settings.exchange.exchange_url";

/// IP literals in every IANA special-purpose range, cloud metadata addresses and the IPv6 forms
/// that carry a private IPv4 address.
const LITERALS: &[&str] = &[
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.254",
    "100.64.0.1",
    "100.127.255.254",
    "100.100.100.200", // Alibaba metadata
    "127.0.0.1",
    "127.255.255.254",
    "169.254.0.1",
    "169.254.169.254", // AWS, GCP, Azure metadata
    "169.254.170.2",   // AWS ECS task metadata
    "168.63.129.16",   // Azure wire server (a public-looking address)
    "172.16.0.1",
    "172.31.255.254",
    "192.0.0.1",
    "192.0.0.170",
    "192.0.2.1",
    "192.31.196.1",
    "192.52.193.1",
    "192.88.99.1",
    "192.168.0.1",
    "192.175.48.1",
    "198.18.0.1",
    "198.19.255.254",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "[::1]",
    "::ffff:127.0.0.1", // IPv4-mapped
    "::ffff:10.0.0.1",  // IPv4-mapped
    "[::ffff:169.254.169.254]",
    "::127.0.0.1",        // IPv4-compatible
    "::a00:1",            // IPv4-compatible 10.0.0.1
    "64:ff9b::7f00:1",    // NAT64 127.0.0.1
    "64:ff9b::a9fe:a9fe", // NAT64 169.254.169.254
    "64:ff9b::c0a8:101",  // NAT64 192.168.1.1
    "64:ff9b:1::a00:1",   // local-use NAT64
    "100::1",
    "100:0:0:1::1",
    "2001::1",
    "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo, client 10.0.0.1
    "2001:1::1",
    "2001:2::1",
    "2001:3::1",
    "2001:10::1",
    "2001:20::1",
    "2001:1ff::1", // unlisted part of 2001::/23
    "2001:db8::1",
    "2002:a00:1::1",     // 6to4 10.0.0.1
    "2002:7f00:1::1",    // 6to4 127.0.0.1
    "2002:a9fe:a9fe::1", // 6to4 169.254.169.254
    "2620:4f:8000::1",
    "3fff::1",
    "4000::1", // outside global unicast 2000::/3
    "5f00::1",
    "8000::1",
    "fc00::1",
    "fd00:ec2::254", // AWS IPv6 metadata
    "[fd00:ec2::254]",
    "fe80::1",
    "fec0::1",
    "ff02::1",
];

/// Names refused or answered without asking any resolver: `localhost` and the names under it are
/// loopback, the rest are 127.0.0.1 in spellings the C resolver accepts.
const UNASKED_NAMES: &[&str] = &[
    "localhost",
    "localhost.",
    "LocalHost",
    "mail.localhost",
    "mail.localhost.",
    "2130706433",
    "017700000001",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "0X7F.1",
    "127.1",
    "127.0.1",
    "0177.1",
];

/// Names the tests' resolver maps to refused addresses (see `probe_guard::test_dns`).
const REFUSED_NAMES: &[(&str, &[&str])] = &[
    ("metadata.test", &["169.254.169.254"]),
    ("intranet.test", &["10.1.2.3"]),
    ("loopback.test", &["127.0.0.1"]),
    ("nat64-intranet.test", &["64:ff9b::a01:203", "10.1.2.3"]),
    ("mixed.test", &["fd00::1"]),
    ("mixed-v4.test", &["192.168.7.7"]),
];

/// Every text of a report, to check what it names.
fn all_text(report: &ProbeReport) -> String {
    let mut text = format!(
        "{} {} {}",
        report.hint, report.field, report.connected_address
    );
    for stage in &report.stages {
        text.push_str(&format!(" {} {}", stage.detail, stage.server_reply));
    }
    text
}

#[tokio::test]
async fn the_corpus_is_refused_before_any_connection() {
    let recording = RecordingConnector::default();
    let probe = Probe::with_connector(&default_settings(&[993]), recording.clone());
    let mut refused = 0;
    for host in LITERALS.iter().chain(UNASKED_NAMES) {
        probe_blocked(&probe, imap_request(host, 993), HOST_FIELD).await;
        refused += 1;
    }
    assert!(
        recording.questions().is_empty(),
        "asked the resolver: {:?}",
        recording.questions()
    );
    for (name, private) in REFUSED_NAMES {
        let report = probe_blocked(&probe, imap_request(name, 993), HOST_FIELD).await;
        // The report says only that the name resolves to a refused range, never the address.
        let text = all_text(&report);
        assert!(
            text.contains("resolves to an address in a range this service never connects to"),
            "{report:#?}"
        );
        for address in *private {
            assert!(
                !text.contains(address),
                "{name}: the report names {address}: {text}"
            );
        }
        refused += 1;
    }
    assert!(refused >= 60, "only {refused} targets");
    recording.assert_no_attempts();
}

/// The probe connects to the address it checked and never asks again, so a name whose second
/// answer differs (DNS rebinding) cannot swap in a private address.
#[tokio::test]
async fn a_rebinding_name_is_resolved_once_and_connected_to_as_checked() {
    let recording = RecordingConnector::default();
    let probe = Probe::with_connector(&default_settings(&[993]), recording.clone());
    probe_blocked(
        &probe,
        imap_request("rebind-private-first.test", 993),
        HOST_FIELD,
    )
    .await;
    recording.assert_no_attempts();

    let report = probe
        .probe(imap_request("rebind.test", 993), ProbeContext::default())
        .await
        .unwrap();
    assert_eq!(report.stages[0].outcome, ProbeOutcome::Ok, "{report:#?}");
    assert_eq!(
        recording.attempts(),
        vec!["93.184.216.34:993".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        recording.questions(),
        vec!["rebind-private-first.test", "rebind.test"],
        "each name is asked exactly once"
    );
}

fn exchange(url: &str) -> ProbeRequest {
    ProbeRequest {
        target: ProbeTarget::Exchange(url.to_owned()),
        allow_insecure_certificate: false,
        credentials: None,
        field_prefix: URL_FIELD.to_owned(),
    }
}

#[tokio::test]
async fn exchange_urls_to_internal_hosts_are_refused_before_any_connection() {
    let recording = RecordingConnector::default();
    let probe = Probe::with_connector(&default_settings(&[443]), recording.clone());
    for url in [
        "https://169.254.169.254/EWS/Exchange.asmx",
        "https://[fd00:ec2::254]/EWS/Exchange.asmx",
        "https://100.100.100.200/EWS/Exchange.asmx",
        "https://localhost/EWS/Exchange.asmx",
        "https://0x7f000001/EWS/Exchange.asmx",
        "https://[::ffff:10.0.0.1]/EWS/Exchange.asmx",
        "https://metadata.test/EWS/Exchange.asmx",
        "https://mixed.test/EWS/Exchange.asmx",
    ] {
        probe_blocked(&probe, exchange(url), URL_FIELD).await;
    }
    recording.assert_no_attempts();
}

/// Connects for real, to loopback only, and records every address it was handed.
#[derive(Clone, Default)]
struct LoopbackOnly(Arc<Mutex<Vec<SocketAddr>>>);

impl Connector for LoopbackOnly {
    async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        self.0.lock().unwrap().push(address);
        if !address.ip().is_loopback() {
            return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        }
        TcpConnector.connect(address).await
    }
}

/// An EWS URL that redirects to a metadata address: the redirect is reported, never followed.
#[tokio::test]
async fn an_exchange_redirect_to_an_internal_address_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let server = FakeEws::start(&ca.issue(dir.path(), &["127.0.0.1"])).await;
    let connector = LoopbackOnly::default();
    let probe = Probe::with_connector(&probe_settings(&[server.port, 443]), connector.clone())
        .with_tls_client(TlsClient::with_roots(ca.roots()).unwrap());
    let report = probe
        .probe(
            exchange(&format!("https://127.0.0.1:{}/internal", server.port)),
            ProbeContext::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert!(
        all_text(&report).contains("redirects are not followed"),
        "{report:#?}"
    );
    assert_eq!(
        *connector.0.lock().unwrap(),
        vec![SocketAddr::from(([127, 0, 0, 1], server.port))],
        "only the EWS server itself was connected to"
    );
}
