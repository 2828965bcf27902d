//! OpenTelemetry export: the real binary sends its spans and metrics to an OTLP receiver
//! started here (opentelemetry-proto's generated TraceService and MetricsService servers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailconnect::grpc::proto::directory_service_client::DirectoryServiceClient;
use mailconnect::grpc::proto::domain_settings::Settings;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::{
    DomainSettings, ExchangeSettings, GetAccountRequest, ProbeDomainSettingsRequest,
};
use mailconnect::tokens::TokenKeys;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tonic::Code;

use crate::backend_tests;
use crate::harness::{Backend, TEST_SECRET, TestDatabase, authed, eventually};
use crate::process::ServerProcess;

/// Everything the receiver got.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<Metric>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans);
        self.spans.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let metrics = request
            .into_inner()
            .resource_metrics
            .into_iter()
            .flat_map(|resource| resource.scope_metrics)
            .flat_map(|scope| scope.metrics);
        self.metrics.lock().unwrap().extend(metrics);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Received {
    /// Starts the receiver on a loopback port; returns its endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        format!("http://{addr}")
    }

    /// Polls until `found` finds something in what arrived; exports are batched, so they come
    /// after a while. The bound only turns a hang into a failure.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&Self) -> Option<T>) -> T {
        eventually(&format!("the OTLP receiver gets {what}"), || async {
            found(self)
        })
        .await
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

fn string(value: &str) -> Value {
    Value::StringValue(value.to_owned())
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A call carrying a `traceparent` arrives as a server span of that trace, child of the caller's
/// span, named after the method with the RPC attributes and status; its database work is a
/// `db.query` span below it; the duration metric and pool gauges arrive too; and the JSON log line
/// of the call carries the trace id. The export intervals are far longer than the test, so what
/// arrives was flushed when the process shut down on SIGTERM.
async fn calls_are_traced_over_otlp_continuing_the_callers_trace(backend: Backend) {
    let received = Received::default();
    let endpoint = received.start().await;
    let database = TestDatabase::create(backend);
    let mut server = ServerProcess::start(
        &database,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Far beyond the test: what arrives was flushed by the shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
            ("RUST_LOG", "info,mailconnect=debug"),
            // The probe call below reaches a closed loopback port.
            ("MAILCONNECT_PROBE_ALLOW_CIDRS", "127.0.0.0/8"),
            ("MAILCONNECT_PROBE_ALLOWED_PORTS", "1-65535"),
        ],
    );
    let channel = server.channel();
    let token = TokenKeys::new(
        Some(&mailconnect::domain::secret::Secret::new(
            TEST_SECRET.to_owned(),
        )),
        &[],
    )
    .unwrap()
    .mint(
        &mailconnect::domain::principal::Principal {
            subject: "platform".into(),
            account_id: None,
            user_id: None,
            roles: vec![mailconnect::domain::principal::Role::Platform],
        },
        Duration::from_secs(600),
    )
    .unwrap();

    server.wait_until_serving().await;
    let mut request = authed(&token, GetAccountRequest { account_id: 42 });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    let status = DirectoryServiceClient::new(channel.clone())
        .get_account(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A probe's stages are spans below its call, and their outcomes are counted.
    let admin = TokenKeys::new(
        Some(&mailconnect::domain::secret::Secret::new(
            TEST_SECRET.to_owned(),
        )),
        &[],
    )
    .unwrap()
    .mint(
        &mailconnect::domain::principal::Principal {
            subject: "user:42:1".into(),
            account_id: Some(42),
            user_id: Some(1),
            roles: vec![mailconnect::domain::principal::Role::SuperAdmin],
        },
        Duration::from_secs(600),
    )
    .unwrap();
    let closed = crate::fault_servers::refused_port();
    let reports = DomainSettingsServiceClient::new(channel.clone())
        .probe_domain_settings(authed(
            &admin,
            ProbeDomainSettingsRequest {
                domain_settings: Some(DomainSettings {
                    domain: "acme.example".into(),
                    settings: Some(Settings::Exchange(ExchangeSettings {
                        exchange_url: format!("https://127.0.0.1:{closed}/EWS/Exchange.asmx"),
                        scopes: vec![],
                    })),
                    ..Default::default()
                }),
                test_credentials: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .reports;
    assert_eq!(reports.len(), 1);

    server.terminate();
    let exit = server.wait(Duration::from_secs(60)).await;
    assert_eq!(exit.code(), Some(0), "{exit:?}");

    let (rpc, db) = received
        .wait_for("the call's span and its database span", |received| {
            let spans = received.spans.lock().unwrap();
            let rpc = spans.iter().find(|span| {
                span.name == "mailconnect.v1.DirectoryService/GetAccount"
                    && hex(&span.trace_id) == TRACE_ID
                    && attribute(&span.attributes, "rpc.grpc.status_code")
                        == Some(&Value::IntValue(5))
            })?;
            let db = spans
                .iter()
                .find(|span| span.name == "db.query" && descends_from(&spans, span, rpc))?;
            Some((rpc.clone(), db.clone()))
        })
        .await;
    assert_eq!(hex(&rpc.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    let rpc_attribute = |key| attribute(&rpc.attributes, key);
    assert_eq!(rpc_attribute("rpc.system"), Some(&string("grpc")));
    assert_eq!(
        rpc_attribute("rpc.service"),
        Some(&string("mailconnect.v1.DirectoryService"))
    );
    assert_eq!(rpc_attribute("rpc.method"), Some(&string("GetAccount")));
    assert_eq!(
        rpc_attribute("network.peer.address"),
        Some(&string("127.0.0.1"))
    );
    assert!(rpc_attribute("network.peer.port").is_some());
    assert_eq!(hex(&db.trace_id), TRACE_ID);
    assert_eq!(db.kind, SpanKind::Client as i32);
    let expected_system = match backend {
        Backend::Postgres => "postgresql",
        Backend::Sqlite => "sqlite",
    };
    assert_eq!(
        attribute(&db.attributes, "db.system.name"),
        Some(&string(expected_system))
    );

    received
        .wait_for("the call duration and pool metrics", |received| {
            let metrics = received.metrics.lock().unwrap();
            let duration = metrics.iter().any(|metric| {
                metric.name == "rpc.server.call.duration"
                    && matches!(&metric.data, Some(Data::Histogram(histogram))
                    if histogram.data_points.iter().any(|point| {
                        attribute(&point.attributes, "rpc.method") == Some(&string("GetAccount"))
                            && attribute(&point.attributes, "rpc.grpc.status_code")
                                == Some(&Value::IntValue(5))
                            && point.count >= 1
                    }))
            });
            let pool = metrics
                .iter()
                .any(|metric| metric.name == "db.client.connection.count");
            (duration && pool).then_some(())
        })
        .await;

    received
        .wait_for("the probe's stage spans and outcome counter", |received| {
            let spans = received.spans.lock().unwrap();
            let call = spans.iter().find(|span| {
                span.name == "mailconnect.v1.DomainSettingsService/ProbeDomainSettings"
            })?;
            let stages: Vec<&str> = spans
                .iter()
                .filter(|span| span.name.starts_with("probe.") && descends_from(&spans, span, call))
                .map(|span| span.name.as_str())
                .collect();
            let counted = received
                .metrics
                .lock()
                .unwrap()
                .iter()
                .any(|metric| metric.name == "mailconnect.probe.stage.outcomes");
            (stages.contains(&"probe.resolve") && stages.contains(&"probe.connect") && counted)
                .then_some(())
        })
        .await;

    let finished = server.logged("call finished");
    assert!(
        finished
            .iter()
            .any(|entry| entry["span"]["trace_id"] == TRACE_ID && entry["code"] == "NotFound"),
        "{finished:?}"
    );
}

backend_tests!(calls_are_traced_over_otlp_continuing_the_callers_trace);

/// Polls health until SERVING (readiness follows the database); the bound only turns a hang
/// into a failure.
/// Whether `span` is below `ancestor` in its trace (the handler's own span may sit between).
fn descends_from(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut parent = &span.parent_span_id;
    for _ in 0..spans.len() {
        if *parent == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|candidate| candidate.span_id == *parent) {
            Some(next) => parent = &next.parent_span_id,
            None => return false,
        }
    }
    false
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
