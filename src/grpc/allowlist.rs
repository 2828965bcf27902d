//! AllowlistService over gRPC: proto ⇄ domain conversion around the use cases.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::auth::principal;
use super::proto;
use super::proto::allowlist_service_server::AllowlistService as AllowlistRpc;
use super::timestamp;
use crate::domain::FieldViolation;
use crate::domain::allowlist::export::ExportFormat;
use crate::domain::allowlist::{AllowlistChange, Protocol, PublishedRange};
use crate::service::ServiceError;
use crate::service::allowlist::{
    AllowlistService, AllowlistStore, DataCenterSource, PublishInput, ReadRequest,
};

pub struct AllowlistApi<S> {
    service: Arc<AllowlistService<S>>,
}

impl<S> AllowlistApi<S> {
    pub fn new(service: Arc<AllowlistService<S>>) -> Self {
        Self { service }
    }
}

fn protocol_from_proto(value: i32) -> Option<Protocol> {
    match proto::Protocol::try_from(value).ok()? {
        proto::Protocol::Unspecified => None,
        proto::Protocol::Smtp => Some(Protocol::Smtp),
        proto::Protocol::Imap => Some(Protocol::Imap),
    }
}

fn protocol_to_proto(protocol: Protocol) -> i32 {
    match protocol {
        Protocol::Smtp => proto::Protocol::Smtp,
        Protocol::Imap => proto::Protocol::Imap,
    }
    .into()
}

/// A protocol filter: empty means every protocol.
fn protocol_filter(values: &[i32]) -> Result<BTreeSet<Protocol>, ServiceError> {
    if values.is_empty() {
        return Ok(Protocol::ALL.into_iter().collect());
    }
    let mut protocols = BTreeSet::new();
    let mut violations = Vec::new();
    for (index, &value) in values.iter().enumerate() {
        match protocol_from_proto(value) {
            Some(protocol) => {
                protocols.insert(protocol);
            }
            None => violations.push(FieldViolation::new(
                format!("protocols[{index}]"),
                format!("{value} is not a protocol: use PROTOCOL_SMTP or PROTOCOL_IMAP, or leave the list empty for every protocol"),
            )),
        }
    }
    if violations.is_empty() {
        Ok(protocols)
    } else {
        Err(ServiceError::InvalidArgument(violations))
    }
}

fn format_from_proto(value: i32) -> Result<ExportFormat, ServiceError> {
    use proto::ExportFormat as P;
    Ok(match P::try_from(value) {
        Ok(P::Unspecified | P::Plain) => ExportFormat::Plain,
        Ok(P::Csv) => ExportFormat::Csv,
        Ok(P::Json) => ExportFormat::Json,
        Ok(P::Nginx) => ExportFormat::Nginx,
        Ok(P::Iptables) => ExportFormat::Iptables,
        Ok(P::Nftables) => ExportFormat::Nftables,
        Ok(P::Postfix) => ExportFormat::Postfix,
        Err(_) => {
            return Err(ServiceError::invalid(
                "format",
                format!("{value} is not an export format"),
            ));
        }
    })
}

fn range_to_proto(range: PublishedRange) -> proto::EgressRange {
    proto::EgressRange {
        cidr: range.cidr.to_string(),
        protocols: range.protocols.into_iter().map(protocol_to_proto).collect(),
        data_center: range.data_center.as_str().to_owned(),
        effective_time: Some(timestamp::to_proto(range.effective_time)),
        upcoming: range.upcoming,
    }
}

fn cidrs(networks: &[ipnet::IpNet]) -> Vec<String> {
    networks.iter().map(ToString::to_string).collect()
}

fn change_to_proto(change: AllowlistChange) -> proto::AllowlistChange {
    proto::AllowlistChange {
        version: change.version,
        time: Some(timestamp::to_proto(change.publish_time)),
        data_center: change.data_center.as_str().to_owned(),
        added: cidrs(&change.diff.added),
        removed: cidrs(&change.diff.removed),
        protocol: protocol_to_proto(change.protocol),
        effective_time: Some(timestamp::to_proto(change.effective_time)),
    }
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<proto::WatchAllowlistResponse, Status>> + Send>>;

fn source_to_proto(source: DataCenterSource) -> proto::DataCenterSource {
    match source {
        DataCenterSource::Account => proto::DataCenterSource::Account,
        DataCenterSource::Requested => proto::DataCenterSource::Requested,
        DataCenterSource::Default => proto::DataCenterSource::Default,
        DataCenterSource::UnknownAccount => proto::DataCenterSource::UnknownAccount,
    }
}

#[tonic::async_trait]
impl<S: AllowlistStore> AllowlistRpc for AllowlistApi<S> {
    async fn get_allowlist(
        &self,
        request: Request<proto::GetAllowlistRequest>,
    ) -> Result<Response<proto::GetAllowlistResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let read = ReadRequest {
            data_center: &req.data_center,
            protocols: protocol_filter(&req.protocols)?,
        };
        let (snapshot, source) = self.service.snapshot(&principal, read).await?;
        Ok(Response::new(proto::GetAllowlistResponse {
            data_center: snapshot.data_center.as_str().to_owned(),
            ranges: snapshot.ranges.into_iter().map(range_to_proto).collect(),
            version: snapshot.version,
            etag: snapshot.etag,
            update_time: snapshot.update_time.map(timestamp::to_proto),
            data_center_source: source_to_proto(source).into(),
        }))
    }

    async fn export_allowlist(
        &self,
        request: Request<proto::ExportAllowlistRequest>,
    ) -> Result<Response<proto::ExportAllowlistResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let read = ReadRequest {
            data_center: &req.data_center,
            protocols: protocol_filter(&req.protocols)?,
        };
        let format = format_from_proto(req.format)?;
        let (rendered, version, source) = self
            .service
            .export(&principal, read, format, req.aggregate)
            .await?;
        Ok(Response::new(proto::ExportAllowlistResponse {
            content: rendered.content,
            content_type: rendered.content_type.to_owned(),
            version,
            file_name: rendered.file_name,
            data_center_source: source_to_proto(source).into(),
        }))
    }

    async fn check_address(
        &self,
        request: Request<proto::CheckAddressRequest>,
    ) -> Result<Response<proto::CheckAddressResponse>, Status> {
        principal(&request)?;
        let matched = self
            .service
            .check_address(&request.get_ref().ip_address)
            .await?;
        Ok(Response::new(proto::CheckAddressResponse {
            r#match: !matched.is_empty(),
            matched_ranges: matched.into_iter().map(range_to_proto).collect(),
        }))
    }

    async fn list_allowlist_changes(
        &self,
        request: Request<proto::ListAllowlistChangesRequest>,
    ) -> Result<Response<proto::ListAllowlistChangesResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let page = self
            .service
            .list_changes(
                &principal,
                &req.data_center,
                req.since_version,
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(Response::new(proto::ListAllowlistChangesResponse {
            changes: page.changes.into_iter().map(change_to_proto).collect(),
            current_version: page.current_version,
            next_page_token: page.next_page_token,
        }))
    }

    type WatchAllowlistStream = WatchStream;

    async fn watch_allowlist(
        &self,
        request: Request<proto::WatchAllowlistRequest>,
    ) -> Result<Response<Self::WatchAllowlistStream>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let changes = self
            .service
            .watch(&principal, &req.data_center, req.from_version)
            .await?;
        let stream = ReceiverStream::new(changes).map(|change| {
            change
                .map(|change| proto::WatchAllowlistResponse {
                    change: Some(change_to_proto(change)),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish_ranges(
        &self,
        request: Request<proto::PublishRangesRequest>,
    ) -> Result<Response<proto::PublishRangesResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let effective_time = req
            .effective_time
            .as_ref()
            .map(|time| timestamp::from_proto("effective_time", time))
            .transpose();
        let published = self
            .service
            .publish(
                &principal,
                PublishInput {
                    data_center: &req.data_center,
                    protocol: protocol_from_proto(req.protocol),
                    ranges: &req.ranges,
                    etag: &req.etag,
                    effective_time,
                    validate_only: req.validate_only,
                },
            )
            .await?;
        Ok(Response::new(proto::PublishRangesResponse {
            version: published.version,
            etag: published.etag,
            added: cidrs(&published.diff.added),
            removed: cidrs(&published.diff.removed),
        }))
    }
}
