//! Logs, traces and metrics. Logs: `tracing` to stdout, as text for people or JSON for
//! collectors; `RUST_LOG` filters (default `info`). With `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! spans and metrics also go out over OTLP/gRPC, configured by the standard `OTEL_*` variables
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_METRIC_EXPORT_INTERVAL`, …). An incoming W3C `traceparent` is always continued, so the
//! `trace_id` of a call's span (and of every JSON log line inside it) matches the caller's.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogFormat;
use crate::storage::Database;

/// The OTLP exporters, flushed and stopped by [`Telemetry::shutdown`].
#[must_use = "call shutdown() on exit, or the last spans and metrics are lost"]
pub struct Telemetry {
    exporters: Option<(SdkTracerProvider, SdkMeterProvider)>,
}

/// Installs the global subscriber (and, when configured, the OTLP exporters). A second call in
/// one process (tests start several applications) keeps the first subscriber.
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporters = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        Some(otlp_exporters()?)
    } else {
        None
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
        // Colours only for a person at a terminal: escape codes in a log file are noise, and
        // writing them was about 4 % of the CPU of a cached read.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    let spans = exporters.as_ref().map(|(tracer, _)| {
        tracing_opentelemetry::layer().with_tracer(tracer.tracer("mailconnect"))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Telemetry { exporters })
}

fn otlp_exporters() -> anyhow::Result<(SdkTracerProvider, SdkMeterProvider)> {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("mailconnect");
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("OTLP span exporter")?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()
        .context("OTLP metric exporter")?;
    let meter = SdkMeterProvider::builder()
        .with_periodic_exporter(metrics)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_meter_provider(meter.clone());
    Ok((tracer, meter))
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporters.
    pub fn shutdown(self) {
        if let Some((tracer, meter)) = self.exporters {
            if let Err(error) = tracer.shutdown() {
                eprintln!("warning: flushing spans failed: {error}");
            }
            if let Err(error) = meter.shutdown() {
                eprintln!("warning: flushing metrics failed: {error}");
            }
        }
    }
}

/// Reports the connection pool's size and use as the OpenTelemetry database-client gauges.
pub fn observe_pool(database: &Database) {
    let meter = opentelemetry::global::meter("mailconnect");
    let pool = database.clone();
    meter
        .u64_observable_gauge("db.client.connection.count")
        .with_description("Open connections of the pool, by state (idle or used)")
        .with_callback(move |gauge| {
            let status = pool.pool_status();
            let idle = status.available as u64;
            let used = (status.size as u64).saturating_sub(idle);
            gauge.observe(idle, &[KeyValue::new("db.client.connection.state", "idle")]);
            gauge.observe(used, &[KeyValue::new("db.client.connection.state", "used")]);
        })
        .build();
    let pool = database.clone();
    meter
        .u64_observable_gauge("db.client.connection.max")
        .with_description("Most connections the pool opens")
        .with_callback(move |gauge| gauge.observe(pool.pool_status().max_size as u64, &[]))
        .build();
    let pool = database.clone();
    meter
        .u64_observable_gauge("db.client.connection.pending_requests")
        .with_description("Calls waiting for a free connection")
        .with_callback(move |gauge| gauge.observe(pool.pool_status().waiting as u64, &[]))
        .build();
}

/// Counts one probe stage's outcome (`protocol` imap/smtp/ews, `stage` resolve/connect/tls/…,
/// `outcome` ok or a failure reason). The prober calls this once per stage it runs, inside a
/// `probe.<stage>` span so that the stage also shows in the call's trace.
pub fn record_probe_stage(protocol: &str, stage: &str, outcome: &str) {
    static OUTCOMES: OnceLock<Counter<u64>> = OnceLock::new();
    OUTCOMES
        .get_or_init(|| {
            opentelemetry::global::meter("mailconnect")
                .u64_counter("mailconnect.probe.stage.outcomes")
                .with_description("Probe stages run, by protocol, stage and outcome")
                .build()
        })
        .add(
            1,
            &[
                KeyValue::new("mailconnect.probe.protocol", protocol.to_owned()),
                KeyValue::new("mailconnect.probe.stage", stage.to_owned()),
                KeyValue::new("mailconnect.probe.outcome", outcome.to_owned()),
            ],
        );
}
