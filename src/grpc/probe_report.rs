//! Probe reports on the wire: in responses, and as `google.rpc.Status` details of a refused write.

use std::collections::HashMap;

use prost::Message as _;
use tonic::{Code, Status};

use super::proto;
use super::status::ERROR_DOMAIN;
use crate::domain::probe::{ProbeOutcome, ProbeProtocol, ProbeReport, ProbeStage, TlsInfo};

fn outcome(outcome: ProbeOutcome) -> proto::ProbeOutcome {
    match outcome {
        ProbeOutcome::Ok => proto::ProbeOutcome::Ok,
        ProbeOutcome::Warning => proto::ProbeOutcome::Warning,
        ProbeOutcome::Failed => proto::ProbeOutcome::Failed,
        ProbeOutcome::TimedOut => proto::ProbeOutcome::TimedOut,
        ProbeOutcome::Blocked => proto::ProbeOutcome::Blocked,
        ProbeOutcome::Skipped => proto::ProbeOutcome::Skipped,
    }
}

fn protocol(protocol: ProbeProtocol) -> proto::ProbeProtocol {
    match protocol {
        ProbeProtocol::Imap => proto::ProbeProtocol::Imap,
        ProbeProtocol::Smtp => proto::ProbeProtocol::Smtp,
        ProbeProtocol::Exchange => proto::ProbeProtocol::Exchange,
    }
}

fn duration(value: std::time::Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(value).ok()
}

fn stage(stage: ProbeStage) -> proto::ProbeStage {
    proto::ProbeStage {
        name: stage.name,
        outcome: outcome(stage.outcome).into(),
        latency: duration(stage.latency),
        detail: stage.detail,
        server_reply: stage.server_reply,
    }
}

fn tls(tls: TlsInfo) -> proto::TlsInfo {
    proto::TlsInfo {
        version: tls.version,
        cipher: tls.cipher,
        subject: tls.subject,
        issuer: tls.issuer,
        not_after: tls.not_after.map(Into::into),
        self_signed: tls.self_signed,
        hostname_matches: tls.hostname_matches,
        chain_trusted: tls.chain_trusted,
        not_before: tls.not_before.map(Into::into),
        subject_alt_names: tls.subject_alt_names,
    }
}

pub fn report_to_proto(report: ProbeReport) -> proto::ProbeReport {
    proto::ProbeReport {
        target: report.target,
        outcome: outcome(report.outcome).into(),
        stages: report.stages.into_iter().map(stage).collect(),
        tls: report.tls.map(tls),
        capabilities: report.capabilities,
        auth_mechanisms: report.auth_mechanisms,
        field: report.field,
        hint: report.hint,
        protocol: protocol(report.protocol).into(),
        total_latency: duration(report.total_latency),
        connected_address: report.connected_address,
        probe_time: Some(report.probe_time.into()),
    }
}

/// Type URL of a ProbeReport packed in `google.protobuf.Any` (grpcurl resolves it by reflection).
pub const PROBE_REPORT_TYPE_URL: &str = "type.googleapis.com/mailconnect.v1.ProbeReport";
const ERROR_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// FAILED_PRECONDITION, reason PROBE_FAILED, with ErrorInfo and every report as details.
pub fn probe_failed_status(message: String, reports: Vec<ProbeReport>) -> Status {
    let failed: Vec<&str> = reports
        .iter()
        .filter(|report| !report.outcome.is_success())
        .map(|report| report.field.as_str())
        .collect();
    let info = tonic_types::pb::ErrorInfo {
        reason: "PROBE_FAILED".to_owned(),
        domain: ERROR_DOMAIN.to_owned(),
        metadata: HashMap::from([("fields".to_owned(), failed.join(","))]),
    };
    let mut details = vec![prost_types::Any {
        type_url: ERROR_INFO_TYPE_URL.to_owned(),
        value: info.encode_to_vec(),
    }];
    details.extend(reports.into_iter().map(|report| prost_types::Any {
        type_url: PROBE_REPORT_TYPE_URL.to_owned(),
        value: report_to_proto(report).encode_to_vec(),
    }));
    let status = tonic_types::pb::Status {
        code: Code::FailedPrecondition as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(
        Code::FailedPrecondition,
        message,
        status.encode_to_vec().into(),
    )
}
