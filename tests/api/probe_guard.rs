//! The egress guard. Non-loopback addresses are only ever judged, or handed to a connector that
//! records the attempt instead of connecting: no test sends a packet off this machine.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailconnect::config::ProbeSettings;
use mailconnect::domain::probe::{
    ProbeContext, ProbeOutcome, ProbeRefused, ProbeReport, ProbeRequest, ProbeTarget, Security,
    ServerEndpoint,
};
use mailconnect::probe::Probe;
use mailconnect::probe::net::{Connector, EgressGuard, Refusal};
use mailconnect::service::probing::Prober as _;
use tokio::net::TcpStream;

use crate::fault_servers::{Fault, FaultServer};
use crate::mail_servers::probe_settings;

/// Records where the probe would have connected and refuses, sending nothing; answers the names
/// of `test_dns` itself and counts the questions it was asked.
#[derive(Clone, Default)]
pub(crate) struct RecordingConnector {
    attempts: Arc<Mutex<Vec<SocketAddr>>>,
    questions: Arc<Mutex<Vec<String>>>,
}

impl RecordingConnector {
    pub(crate) fn attempts(&self) -> Vec<SocketAddr> {
        self.attempts.lock().unwrap().clone()
    }

    pub(crate) fn assert_no_attempts(&self) {
        assert!(self.attempts().is_empty(), "{:?}", self.attempts());
    }

    /// The names the probe asked to resolve, in order.
    pub(crate) fn questions(&self) -> Vec<String> {
        self.questions.lock().unwrap().clone()
    }
}

/// Names the tests' connector answers itself, so that no query leaves the machine. `asked` is how
/// often the name was asked before: the rebinding names answer differently the second time.
fn test_dns(host: &str, asked: usize) -> Option<io::Result<Vec<IpAddr>>> {
    let addresses = |list: &[&str]| Some(Ok(list.iter().map(|a| ip(a)).collect()));
    match (host, asked) {
        ("metadata.test", _) => addresses(&["169.254.169.254"]),
        ("intranet.test", _) => addresses(&["10.1.2.3"]),
        ("loopback.test", _) => addresses(&["127.0.0.1"]),
        ("nat64-intranet.test", _) => addresses(&["64:ff9b::a01:203"]),
        ("mixed.test", _) => addresses(&["93.184.216.34", "fd00::1"]),
        ("mixed-v4.test", _) => addresses(&["93.184.216.34", "192.168.7.7"]),
        ("public.test", _) => addresses(&["93.184.216.34"]),
        ("rebind.test", 0) => addresses(&["93.184.216.34"]),
        ("rebind.test", _) => addresses(&["10.0.0.1"]),
        ("rebind-private-first.test", 0) => addresses(&["10.0.0.1"]),
        ("rebind-private-first.test", _) => addresses(&["93.184.216.34"]),
        ("missing.test", _) => Some(Err(io::Error::new(io::ErrorKind::NotFound, "no such host"))),
        _ => None,
    }
}

impl Connector for RecordingConnector {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Some(ip) = mailconnect::probe::net::ip_literal(host) {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let asked = {
            let mut questions = self.questions.lock().unwrap();
            questions.push(host.to_owned());
            questions.iter().filter(|asked| *asked == host).count() - 1
        };
        match test_dns(host, asked) {
            Some(answer) => answer.map(|ips| {
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()
            }),
            None => panic!("{host} is not a name of the tests' DNS"),
        }
    }

    async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        self.attempts.lock().unwrap().push(address);
        Err(io::Error::from(io::ErrorKind::ConnectionRefused))
    }
}

/// The operator's defaults: nothing allowed beyond public addresses.
pub(crate) fn default_settings(ports: &[u16]) -> ProbeSettings {
    ProbeSettings {
        probe_allow_cidrs: vec![],
        ..probe_settings(ports)
    }
}

pub(crate) fn imap_request(host: &str, port: u16) -> ProbeRequest {
    ProbeRequest {
        target: ProbeTarget::Imap(ServerEndpoint {
            host: host.to_owned(),
            port,
            security: Security::ImplicitTls,
        }),
        allow_insecure_certificate: false,
        credentials: None,
        field_prefix: "domain_settings.imap.imap_server".to_owned(),
    }
}

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn internal_and_special_addresses_are_refused() {
    let guard = EgressGuard::new(&default_settings(&[993]));
    for address in [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "fd00:ec2::254",
        "fe80::1",
        "100.64.0.1",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.10",
        "198.51.100.7",
        "203.0.113.9",
        "2001:db8::25",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",                       // NAT64 form of 10.0.0.1
        "64:ff9b::a9fe:a9fe",                   // NAT64 form of 169.254.169.254
        "2002:7f00:1::1",                       // 6to4 form of 127.0.0.1
        "2002:a9fe:a9fe::1",                    // 6to4 form of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo, client 10.0.0.1
    ] {
        let result = guard.check_address(ip(address));
        assert!(
            matches!(result, Err(Refusal::Address { .. })),
            "{address} must be refused, got {result:?}"
        );
    }
}

#[test]
fn public_addresses_pass() {
    let guard = EgressGuard::new(&default_settings(&[993]));
    for address in [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "64:ff9b::808:808", // NAT64 form of 8.8.8.8
        "2002:808:808::1",  // 6to4 form of 8.8.8.8
    ] {
        assert_eq!(guard.check_address(ip(address)), Ok(()), "{address}");
    }
}

#[test]
fn one_refused_address_refuses_the_whole_name() {
    let guard = EgressGuard::new(&default_settings(&[993]));
    let result = guard.check_addresses(&[ip("93.184.216.34"), ip("10.1.2.3")]);
    assert!(matches!(result, Err(Refusal::Address { address, .. }) if address == ip("10.1.2.3")));
}

#[test]
fn operators_allow_and_deny_ranges() {
    let settings = ProbeSettings {
        probe_allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        probe_deny_cidrs: vec![
            "10.9.0.0/16".parse().unwrap(),
            "198.18.0.0/15".parse().unwrap(),
            "93.184.216.0/24".parse().unwrap(),
        ],
        ..probe_settings(&[993])
    };
    let guard = EgressGuard::new(&settings);
    assert_eq!(guard.check_address(ip("10.1.2.3")), Ok(()));
    assert_eq!(guard.check_address(ip("::ffff:10.1.2.3")), Ok(()));
    // Denied wins over allowed, and operators can deny public ranges too.
    assert!(guard.check_address(ip("10.9.0.1")).is_err());
    assert!(guard.check_address(ip("93.184.216.34")).is_err());
    // What is not allowed stays refused.
    assert!(guard.check_address(ip("192.168.0.1")).is_err());
}

#[test]
fn only_the_allowed_ports_pass() {
    let guard = EgressGuard::new(&default_settings(&[993, 587]));
    assert_eq!(guard.check_port(993), Ok(()));
    assert_eq!(guard.check_port(587), Ok(()));
    assert_eq!(guard.check_port(22), Err(Refusal::Port(22)));
    let ranged = ProbeSettings {
        probe_allowed_ports: vec!["10000-10100".parse().unwrap()],
        ..default_settings(&[])
    };
    let guard = EgressGuard::new(&ranged);
    assert_eq!(guard.check_port(10050), Ok(()));
    assert!(guard.check_port(10101).is_err());
}

/// Probes `request` and checks that the guard refused it, naming `field`.
pub(crate) async fn probe_blocked<C: Connector>(
    probe: &Probe<C>,
    request: ProbeRequest,
    field: &str,
) -> ProbeReport {
    let report = probe.probe(request, ProbeContext::default()).await.unwrap();
    assert_blocked(&report, field);
    report
}

pub(crate) fn assert_blocked(report: &ProbeReport, field: &str) {
    assert_eq!(report.outcome, ProbeOutcome::Blocked, "{report:#?}");
    assert_eq!(report.stages[0].name, "resolve");
    assert_eq!(report.stages[0].outcome, ProbeOutcome::Blocked);
    assert_eq!(report.field, field, "{report:#?}");
    assert!(report.connected_address.is_empty());
}

#[tokio::test]
async fn loopback_is_refused_before_any_connection_unless_allowed() {
    let server = FaultServer::start(Fault::Say(b"* OK ready\r\n")).await;
    let settings = default_settings(&[server.port]);
    let recording = RecordingConnector::default();
    let recorded = Probe::with_connector(&settings, recording.clone());
    // The same through the real connector: the listener is the witness.
    let real = Probe::from_settings(&settings);
    for host in [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "::1",
        "[::ffff:127.0.0.1]",
    ] {
        probe_blocked(
            &recorded,
            imap_request(host, server.port),
            "domain_settings.imap.imap_server.host",
        )
        .await;
        let report = real
            .probe(imap_request(host, server.port), ProbeContext::default())
            .await
            .unwrap();
        assert_blocked(&report, "domain_settings.imap.imap_server.host");
    }
    recording.assert_no_attempts();
    assert_eq!(server.accepted(), 0, "the listener saw a connection");
}

#[tokio::test]
async fn a_port_outside_the_allowed_list_is_refused_before_any_connection() {
    let server = FaultServer::start(Fault::Say(b"* OK ready\r\n")).await;
    let settings = probe_settings(&[993]);
    let report = Probe::from_settings(&settings)
        .probe(
            imap_request("127.0.0.1", server.port),
            ProbeContext::default(),
        )
        .await
        .unwrap();
    assert_blocked(&report, "domain_settings.imap.imap_server.port");
    assert_eq!(server.accepted(), 0);
}

#[tokio::test]
async fn an_allowed_address_is_connected_to_exactly_as_checked() {
    let recording = RecordingConnector::default();
    let settings = ProbeSettings {
        probe_allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        ..default_settings(&[993])
    };
    let probe = Probe::with_connector(&settings, recording.clone());
    let report = probe
        .probe(imap_request("10.20.30.40", 993), ProbeContext::default())
        .await
        .unwrap();
    // The recording connector refuses: the probe reports that, having tried the checked address.
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(
        recording.attempts(),
        vec!["10.20.30.40:993".parse().unwrap()]
    );
}

/// The probes of one call are admitted together or not at all: a call needing two, with room
/// for one, is refused before either connects, and leaves the room free.
#[tokio::test]
async fn a_calls_probes_are_admitted_together_or_not_at_all() {
    let recording = RecordingConnector::default();
    let probe = Probe::with_connector(
        &ProbeSettings {
            probe_max_concurrent: 1,
            ..default_settings(&[993])
        },
        recording.clone(),
    );
    let pair = vec![
        imap_request("public.test", 993),
        imap_request("public.test", 993),
    ];
    assert!(
        probe.has_room(1) && !probe.has_room(2),
        "room for one probe only"
    );
    let refused = probe.probe_all(pair, ProbeContext::default()).await;
    assert_eq!(refused.unwrap_err(), ProbeRefused::Busy);
    assert!(
        recording.attempts().is_empty(),
        "a probe of the refused call ran: {:?}",
        recording.attempts()
    );
    // The room was not taken: a call of one probe runs (the recording connector refuses it).
    let reports = probe
        .probe_all(
            vec![imap_request("public.test", 993)],
            ProbeContext::default(),
        )
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(recording.attempts().len(), 1);
}

/// A call refused as busy has probed nothing, so it spends none of its account's rate: the
/// retries of a busy minute still find the allowance there once there is room.
#[tokio::test]
async fn a_busy_refusal_spends_none_of_the_accounts_rate() {
    let recording = RecordingConnector::default();
    let probe = Probe::with_connector(
        &ProbeSettings {
            probe_max_concurrent: 1,
            probe_rate_per_minute: 2,
            ..default_settings(&[993])
        },
        recording.clone(),
    );
    let account = ProbeContext {
        account_id: Some(7),
        deadline: None,
    };
    let pair = || {
        vec![
            imap_request("public.test", 993),
            imap_request("public.test", 993),
        ]
    };
    for _ in 0..3 {
        let refused = probe.probe_all(pair(), account.clone()).await;
        assert_eq!(refused.unwrap_err(), ProbeRefused::Busy);
    }
    for _ in 0..2 {
        let reports = probe
            .probe_all(vec![imap_request("public.test", 993)], account.clone())
            .await
            .unwrap();
        assert_eq!(reports.len(), 1);
    }
    assert_eq!(recording.attempts().len(), 2);
    // The two probes the minute allows are spent now.
    let limited = probe
        .probe_all(vec![imap_request("public.test", 993)], account)
        .await;
    assert!(
        matches!(limited, Err(ProbeRefused::RateLimited { .. })),
        "{limited:?}"
    );
}

#[tokio::test]
async fn concurrency_and_per_account_rate_are_bounded() {
    let server = FaultServer::start(Fault::Silent).await;
    let settings = ProbeSettings {
        probe_max_concurrent: 1,
        probe_rate_per_minute: 2,
        probe_ca_files: vec![],
        probe_stage_timeout: Duration::from_secs(30),
        probe_timeout: Duration::from_secs(30),
        ..probe_settings(&[server.port])
    };
    let probe = Arc::new(Probe::from_settings(&settings));
    let running = {
        let probe = probe.clone();
        tokio::spawn(async move {
            probe
                .probe(
                    imap_request("127.0.0.1", server.port),
                    ProbeContext::default(),
                )
                .await
        })
    };
    // The first probe holds the only slot once the silent server has its connection.
    while server.accepted() == 0 {
        assert!(!running.is_finished(), "the first probe ended early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!probe.has_room(1), "the running probe holds the only slot");
    let second = probe
        .probe(
            imap_request("127.0.0.1", server.port),
            ProbeContext::default(),
        )
        .await;
    assert_eq!(second.unwrap_err(), ProbeRefused::Busy);
    running.abort();
    let _ = running.await;

    let port = crate::fault_servers::refused_port();
    let limited = Probe::from_settings(&ProbeSettings {
        probe_rate_per_minute: 2,
        probe_ca_files: vec![],
        ..probe_settings(&[port])
    });
    let account = ProbeContext {
        account_id: Some(7),
        deadline: None,
    };
    // Probes of a refused port end at once; the third within the minute is refused.
    for _ in 0..2 {
        assert!(
            limited
                .probe(imap_request("127.0.0.1", port), account.clone())
                .await
                .is_ok()
        );
    }
    let refused = limited
        .probe(imap_request("127.0.0.1", port), account.clone())
        .await;
    assert!(
        matches!(refused, Err(ProbeRefused::RateLimited { retry_after }) if retry_after > Duration::ZERO),
        "{refused:?}"
    );
    // Another account is not affected.
    let other = ProbeContext {
        account_id: Some(8),
        deadline: None,
    };
    assert!(
        limited
            .probe(imap_request("127.0.0.1", port), other)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_unknown_host_name_names_the_host_field() {
    let probe = Probe::with_connector(&default_settings(&[993]), RecordingConnector::default());
    let report = probe
        .probe(imap_request("missing.test", 993), ProbeContext::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert_eq!(report.stages[0].name, "resolve");
    assert_eq!(report.stages[0].outcome, ProbeOutcome::Failed);
    assert!(report.stages[0].detail.contains("not found"), "{report:#?}");
    assert_eq!(report.field, "domain_settings.imap.imap_server.host");
}

/// Accepts the address and never completes the connection, like a firewall that drops packets.
struct BlackholeConnector;

impl Connector for BlackholeConnector {
    async fn connect(&self, _address: SocketAddr) -> io::Result<TcpStream> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_connection_nobody_answers_points_at_the_egress_allowlist() {
    let settings = ProbeSettings {
        probe_stage_timeout: Duration::from_secs(1),
        ..probe_settings(&[993])
    };
    let probe = Probe::with_connector(&settings, BlackholeConnector);
    let report = probe
        .probe(imap_request("127.0.0.1", 993), ProbeContext::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, ProbeOutcome::TimedOut, "{report:#?}");
    assert_eq!(report.stages[1].name, "connect");
    assert_eq!(report.stages[1].outcome, ProbeOutcome::TimedOut);
    assert!(report.hint.contains("AllowlistService"), "{}", report.hint);
    assert_eq!(report.field, "domain_settings.imap.imap_server.host");
}

/// One account holds at most its share of the probe slots; other accounts still get in.
#[tokio::test]
async fn one_account_cannot_hold_every_probe_slot() {
    let server = FaultServer::start(Fault::Silent).await;
    let settings = ProbeSettings {
        probe_max_concurrent: 32,
        probe_max_concurrent_per_account: 4,
        ..probe_settings(&[server.port])
    };
    let probe = Arc::new(Probe::from_settings(&settings));
    let account = |id| ProbeContext {
        account_id: Some(id),
        deadline: None,
    };
    let running: Vec<_> = (0..4)
        .map(|_| {
            let probe = probe.clone();
            let context = account(7);
            tokio::spawn(async move {
                probe
                    .probe(imap_request("127.0.0.1", server.port), context)
                    .await
            })
        })
        .collect();
    // The four probes hold their slots once the silent server has their connections.
    while server.accepted() < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fifth = probe
        .probe(imap_request("127.0.0.1", server.port), account(7))
        .await;
    assert_eq!(fifth.unwrap_err(), ProbeRefused::Busy);
    assert!(probe.has_room(28), "the refused probe took no global slot");
    let other = tokio::spawn({
        let probe = probe.clone();
        async move {
            probe
                .probe(imap_request("127.0.0.1", server.port), account(8))
                .await
        }
    });
    while server.accepted() < 5 {
        assert!(
            !other.is_finished(),
            "the other account's probe ended early"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for probe in running.into_iter().chain([other]) {
        probe.abort();
        let _ = probe.await;
    }
    // Aborted probes give their share back: four at once fit again (a port outside the allowed
    // list ends each at once).
    let again = (0..4).map(|_| probe.probe(imap_request("127.0.0.1", 1), account(7)));
    for admitted in futures_util::future::join_all(again).await {
        assert_eq!(admitted.unwrap().outcome, ProbeOutcome::Blocked);
    }
}
