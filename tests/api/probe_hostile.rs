//! Hostile mail servers, each in-process on loopback: what they make the probe hold is bounded
//! (issue 16, 3). Each test prints the peak memory growth it measured; RELIABILITY.md keeps the
//! figures from before and after the fixes.

use std::time::Duration;

use mailconnect::config::ProbeSettings;
use mailconnect::domain::probe::{ProbeContext, ProbeOutcome, ProbeReport, ProbeRequest, Security};
use mailconnect::grpc::probe_report::report_to_proto;
use mailconnect::probe::Probe;
use prost::Message as _;

use crate::fault_servers::{Fault, FaultServer};
use crate::mail_servers::probe_settings;
use crate::memory::peak_growth_kib;
use crate::probe::{imap, smtp};

/// What a hostile server may add to the process's peak memory.
const MEMORY_BOUND_KIB: u64 = 32 * 1024;

fn settings(port: u16) -> ProbeSettings {
    ProbeSettings {
        probe_stage_timeout: Duration::from_secs(3),
        probe_timeout: Duration::from_secs(10),
        ..probe_settings(&[port])
    }
}

/// Probes `fault` with `request(port)` and returns the report and the peak memory growth.
async fn probe_hostile(
    fault: Fault,
    request: impl FnOnce(u16) -> ProbeRequest,
) -> (ProbeReport, u64) {
    let server = FaultServer::start(fault).await;
    let probe = Probe::from_settings(&settings(server.port));
    let request = request(server.port);
    let (report, growth) =
        peak_growth_kib(async { probe.probe(request, ProbeContext::default()).await.unwrap() })
            .await;
    println!("peak resident memory grew by {growth} KiB");
    (report, growth)
}

fn assert_bounded(report: &ProbeReport, growth: u64) {
    assert!(
        growth < MEMORY_BOUND_KIB,
        "peak memory grew by {growth} KiB: {report:#?}"
    );
    assert!(!report.outcome.is_success(), "{report:#?}");
}

#[tokio::test]
async fn a_capability_flood_is_not_collected() {
    let (report, growth) = probe_hostile(Fault::CapabilityFlood(200_000), |port| {
        imap(port, Security::Plaintext, false, None)
    })
    .await;
    assert_bounded(&report, growth);
    let capabilities = report
        .stages
        .iter()
        .find(|s| s.name == "capabilities")
        .unwrap();
    assert_eq!(capabilities.outcome, ProbeOutcome::Failed, "{report:#?}");
}

#[tokio::test]
async fn a_huge_announced_literal_is_refused_before_it_is_read() {
    let (report, growth) =
        probe_hostile(Fault::Say(b"* 1 FETCH (BODY[] {500000000}\r\n"), |port| {
            imap(port, Security::Plaintext, false, None)
        })
        .await;
    assert_bounded(&report, growth);
    let greeting = report.stages.iter().find(|s| s.name == "greeting").unwrap();
    assert_eq!(greeting.outcome, ProbeOutcome::Failed, "{report:#?}");
    assert!(greeting.detail.contains("literal"), "{report:#?}");
}

#[tokio::test]
async fn an_smtp_server_that_never_ends_its_line_is_cut_off() {
    let (report, growth) = probe_hostile(Fault::Endless(b"220 ", 64 << 20), |port| {
        smtp(port, Security::Plaintext, None)
    })
    .await;
    assert_bounded(&report, growth);
    let greeting = report.stages.iter().find(|s| s.name == "greeting").unwrap();
    assert_eq!(greeting.outcome, ProbeOutcome::Failed, "{report:#?}");
}

/// A greeting and capabilities of 100 KB each: every string of the report is cut to about 1 KiB
/// and the report to 16 KiB, since it travels in `grpc-status-details-bin`.
#[tokio::test]
async fn server_controlled_strings_are_cut_in_the_report() {
    let greeting: &'static str = format!("* OK {}\r\n", "G".repeat(100_000)).leak();
    let atoms: String = (0..4_000)
        .map(|i| format!(" X-ATOM-{i:05}-{}", "C".repeat(12)))
        .collect();
    let reply: &'static str = format!("* CAPABILITY IMAP4rev1{atoms}\r\n").leak();
    let (report, _) = probe_hostile(
        Fault::Scripted(greeting.as_bytes(), reply.as_bytes()),
        |port| imap(port, Security::Plaintext, false, None),
    )
    .await;
    let proto = report_to_proto(report.clone());
    let size = proto.encoded_len();
    println!("report: {size} bytes encoded");
    assert!(size <= 16 * 1024, "{size} bytes: {report:#?}");
    let longest = report
        .stages
        .iter()
        .flat_map(|stage| [&stage.detail, &stage.server_reply])
        .chain(&report.capabilities)
        .map(|text| text.len())
        .max()
        .unwrap();
    assert!(longest <= 1024 + 4, "a string of {longest} bytes");
    assert!(!report.capabilities.is_empty(), "{report:#?}");
}
