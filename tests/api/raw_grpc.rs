//! Calls any method by its path with raw protobuf bytes, and lists every method the server
//! serves (reflection, then the descriptors of the services it names): what the role matrix and
//! the fuzzer need to reach methods no generated client is written for.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _};
use prost::Message as _;
use prost_types::FileDescriptorSet;
use tokio_stream::StreamExt as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Sends and receives message bodies as they are, so that any bytes can be sent to any method.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// One method the server serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Method {
    /// `/package.Service/Method`.
    pub path: String,
    pub server_streaming: bool,
}

/// The status code of one call to `method` with `body` (the first message of a stream), with
/// `token` as bearer when given.
pub async fn call_code(
    channel: &Channel,
    method: &Method,
    token: Option<&str>,
    body: Vec<u8>,
) -> Code {
    match call(channel, method, token, body).await {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// One call; a streaming method succeeds once its stream opened.
pub async fn call(
    channel: &Channel,
    method: &Method,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<(), Status> {
    let mut request = tonic::Request::new(tokio_stream::once(body));
    request.set_timeout(Duration::from_secs(20));
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii token"),
        );
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let path = method.path.parse().expect("method path");
    let mut stream = grpc.streaming(request, path, RawCodec).await?.into_inner();
    if method.server_streaming {
        return Ok(());
    }
    while stream.message().await?.is_some() {}
    Ok(())
}

/// Every method of every service the server lists through reflection (v1; the v1alpha service
/// beside it is not listed). Fails on a service whose descriptor is nowhere in `descriptor_sets`.
pub async fn served_methods(channel: &Channel, descriptor_sets: &[&[u8]]) -> Vec<Method> {
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection answers")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(listed)) = responses
        .next()
        .await
        .expect("a reflection response")
        .expect("reflection lists services")
        .message_response
    else {
        panic!("reflection did not list services");
    };
    let described = described_methods(descriptor_sets);
    let mut methods = Vec::new();
    for service in listed.service {
        let prefix = format!("/{}/", service.name);
        let before = methods.len();
        methods.extend(
            described
                .iter()
                .filter(|m| m.path.starts_with(&prefix))
                .cloned(),
        );
        assert!(
            methods.len() > before,
            "no descriptor for the served service {}",
            service.name
        );
    }
    methods.sort();
    methods.dedup();
    methods
}

/// Every method of every service in `descriptor_sets`.
pub fn described_methods(descriptor_sets: &[&[u8]]) -> Vec<Method> {
    let mut methods = Vec::new();
    for set in descriptor_sets {
        for file in FileDescriptorSet::decode(*set)
            .expect("descriptor set")
            .file
        {
            for service in &file.service {
                for method in &service.method {
                    methods.push(Method {
                        path: format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                        server_streaming: method.server_streaming(),
                    });
                }
            }
        }
    }
    methods
}

/// The descriptor sets of everything the server registers: its own, health and reflection.
pub fn all_descriptor_sets() -> Vec<&'static [u8]> {
    vec![
        mailconnect::grpc::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
}
