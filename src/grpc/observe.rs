//! One server span per call, named `package.Service/Method` with the OpenTelemetry RPC
//! semantic-convention attributes, continuing an incoming W3C `traceparent`; the call's duration
//! per method and gRPC status code as a metric; and a debug line when it ends. The status is read
//! where tonic writes it: the response headers of a trailers-only reply, else the trailers.
//! Health checks are left out: probes every few seconds would drown the real traffic.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::policy::{CallPolicy, Inner, Response};
use super::{BoxFuture, HEALTH_SERVICE, split_rpc_path};

/// gRPC codes that make a server span an error (OpenTelemetry RPC conventions): the server's
/// faults, not the caller's.
const SERVER_FAULTS: &[i32] = &[2, 4, 12, 13, 14, 15];

/// Status recorded when a call ends without one (the client went away, or the request timeout
/// dropped it): CANCELLED.
const CANCELLED: i32 = 1;

#[derive(Clone)]
pub struct RpcTelemetry {
    duration: Histogram<f64>,
}

impl RpcTelemetry {
    /// Instruments come from the global meter provider, so build this after telemetry init.
    pub fn new() -> Self {
        let duration = opentelemetry::global::meter("mailconnect")
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of gRPC calls handled by the server")
            .build();
        Self { duration }
    }
}

impl Default for RpcTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl CallPolicy for RpcTelemetry {
    fn call<S: Inner<B>, B>(
        &self,
        inner: &mut S,
        request: http::Request<B>,
    ) -> BoxFuture<Response, S::Error> {
        let Some((service, method)) = split_rpc_path(request.uri().path())
            .filter(|(service, _)| *service != HEALTH_SERVICE)
            .map(|(service, method)| (service.to_owned(), method.to_owned()))
        else {
            return Box::pin(inner.call(request));
        };
        // Every field known now is given now: each later `record` formats the span's fields for
        // the log layer again.
        let peer = peer_of(&request);
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            network.peer.address = peer.map(|peer| tracing::field::display(peer.ip())),
            network.peer.port = peer.map(|peer| peer.port()),
            trace_id = Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let remote_trace = parent.span().span_context().trace_id();
        // Fails only when no OpenTelemetry layer is installed; the span then stays local.
        let _ = span.set_parent(parent);
        let own_trace = span.context().span().span_context().trace_id();
        let trace_id = [own_trace, remote_trace]
            .into_iter()
            .find(|id| *id != opentelemetry::trace::TraceId::INVALID);
        if let Some(trace_id) = trace_id {
            span.record("trace_id", trace_id.to_string());
        }

        let call = CallRecord {
            span: span.clone(),
            duration: self.duration.clone(),
            labels: vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
            ],
            started: Instant::now(),
            finished: false,
        };
        let response = inner.call(request).instrument(span);
        Box::pin(async move {
            let mut call = call;
            let response = response.await?;
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
            }
            Ok(response.map(|body| tonic::body::Body::new(ObservedBody { body, call })))
        })
    }
}

fn peer_of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Everything needed to close a call's telemetry once, when its status is known or, failing
/// that, when its response is dropped.
struct CallRecord {
    span: tracing::Span,
    duration: Histogram<f64>,
    labels: Vec<KeyValue>,
    started: Instant,
    finished: bool,
}

impl CallRecord {
    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        self.span.record("rpc.grpc.status_code", code);
        if SERVER_FAULTS.contains(&code) {
            self.span.record("otel.status_code", "error");
        }
        let mut labels = std::mem::take(&mut self.labels);
        labels.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        self.duration.record(elapsed.as_secs_f64(), &labels);
        self.span.in_scope(|| {
            tracing::debug!(
                code = ?tonic::Code::from_i32(code),
                elapsed_ms = elapsed.as_millis() as u64,
                "call finished"
            );
        });
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

/// The response body, watched for the trailers that carry the status.
struct ObservedBody {
    body: tonic::body::Body,
    call: CallRecord,
}

impl Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(code) = frame.trailers_ref().and_then(grpc_status)
        {
            self.call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
