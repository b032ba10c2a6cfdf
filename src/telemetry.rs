//! Logs and traces.
//!
//! The node's spans: `http.request` per request the API's router takes
//! (method, route pattern, status), `grain.call` per grain call (kind, id,
//! where it ran: `local` or `remote`), `grain.forward` around a call sent
//! to another member (its address) and `grain.serve` where that member
//! runs it. They are at DEBUG level, so the default log filter (`info`)
//! does not even build them; `RUST_LOG=granary=debug` puts their fields on
//! the log lines of events inside them.
//!
//! Built with the cargo feature `otlp`, a node whose environment names an
//! OpenTelemetry collector (`OTEL_EXPORTER_OTLP_ENDPOINT`, e.g.
//! `http://127.0.0.1:4317`; `OTEL_SERVICE_NAME`, default `granary`) also
//! exports every span over OTLP/gRPC, batched, from a thread and runtime
//! of its own; a forwarded call carries its trace to the member that runs
//! it (W3C `traceparent` in the gRPC metadata), so a request's trace spans
//! both members.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporter running; flushes it when dropped.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    otlp: Option<otlp::Exporter>,
}

/// Installs the process's subscriber: log lines on stderr filtered by
/// `RUST_LOG` (default `info`), coloured when `ansi`; with the `otlp`
/// feature and a collector named, spans exported as well. An exporter
/// that cannot be set up is an error naming the variable.
pub fn init(ansi: bool) -> Result<Telemetry, String> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    #[cfg(feature = "otlp")]
    let (exporter, spans) = {
        let exporter = otlp::Exporter::from_env()?;
        let spans = exporter.as_ref().map(|e| e.layer());
        (exporter, spans)
    };
    #[cfg(not(feature = "otlp"))]
    let spans: Option<tracing_subscriber::layer::Identity> = None;
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(Telemetry {
        #[cfg(feature = "otlp")]
        otlp: exporter,
    })
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(exporter) = self.otlp.take() {
            exporter.shutdown();
        }
    }
}

/// Puts `span`'s trace into `metadata` (a forwarded call's), so the
/// member that runs it continues the trace. Nothing without `otlp`.
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    #[cfg(feature = "otlp")]
    otlp::inject(span, metadata);
    #[cfg(not(feature = "otlp"))]
    let _ = (span, metadata);
}

/// Makes `span` continue the trace `metadata` carries, if any. Nothing
/// without `otlp`.
pub fn extract(metadata: &tonic::metadata::MetadataMap, span: &tracing::Span) {
    #[cfg(feature = "otlp")]
    otlp::extract(metadata, span);
    #[cfg(not(feature = "otlp"))]
    let _ = (metadata, span);
}

/// Writes `span`'s trace context into `fields` (a call on the grain-call
/// link carries it). Nothing without `otlp`.
pub fn inject_fields(span: &tracing::Span, fields: &mut std::collections::HashMap<String, String>) {
    #[cfg(feature = "otlp")]
    otlp::inject_fields(span, fields);
    #[cfg(not(feature = "otlp"))]
    let _ = (span, fields);
}

/// Makes `span` continue the trace `fields` carry, if they carry one.
/// Nothing without `otlp`.
pub fn extract_fields(fields: &std::collections::HashMap<String, String>, span: &tracing::Span) {
    #[cfg(feature = "otlp")]
    if !fields.is_empty() {
        otlp::extract_fields(fields, span);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (fields, span);
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::registry::LookupSpan;

    /// The exporter: its provider and the runtime its gRPC channel lives on.
    pub struct Exporter {
        provider: SdkTracerProvider,
        runtime: tokio::runtime::Runtime,
    }

    impl Exporter {
        /// The exporter the environment asks for, if any.
        pub fn from_env() -> Result<Option<Exporter>, String> {
            let Some(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
            else {
                return Ok(None);
            };
            let bad = |e: &dyn std::fmt::Display| {
                format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: {e}")
            };
            endpoint
                .parse::<http::Uri>()
                .ok()
                .filter(|uri| uri.scheme().is_some() && uri.host().is_some())
                .ok_or_else(|| bad(&"not a URL such as http://127.0.0.1:4317"))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("granary-otlp")
                .enable_all()
                .build()
                .map_err(|e| bad(&e))?;
            let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "granary".into());
            let provider = runtime.block_on(async {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()
                    .map_err(|e| bad(&e))?;
                Ok::<_, String>(
                    SdkTracerProvider::builder()
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name(service)
                                .build(),
                        )
                        .with_batch_exporter(exporter)
                        .build(),
                )
            })?;
            Ok(Some(Exporter { provider, runtime }))
        }

        /// The layer that hands spans to the exporter: the node's own at
        /// every level down to DEBUG, other crates' at INFO.
        pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + use<S>
        where
            S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
        {
            let tracer = self.provider.tracer("granary");
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(
                    Targets::new()
                        .with_target("granary", LevelFilter::DEBUG)
                        .with_default(LevelFilter::INFO),
                )
        }

        /// Sends what is batched and stops.
        pub fn shutdown(self) {
            if let Err(err) = self.provider.shutdown() {
                eprintln!("granary: OTLP exporter: {err}");
            }
            self.runtime
                .shutdown_timeout(std::time::Duration::from_secs(2));
        }
    }

    struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

    impl Injector for Metadata<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_str()),
            ) {
                self.0.insert(key, value);
            }
        }
    }

    struct Reading<'a>(&'a tonic::metadata::MetadataMap);

    impl Extractor for Reading<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|key| match key {
                    tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                    tonic::metadata::KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }

    pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
        let context = span.context();
        TraceContextPropagator::new().inject_context(&context, &mut Metadata(metadata));
    }

    pub fn extract(metadata: &tonic::metadata::MetadataMap, span: &tracing::Span) {
        let context = TraceContextPropagator::new().extract(&Reading(metadata));
        let _ = span.set_parent(context);
    }

    pub fn inject_fields(
        span: &tracing::Span,
        fields: &mut std::collections::HashMap<String, String>,
    ) {
        TraceContextPropagator::new().inject_context(&span.context(), fields);
    }

    pub fn extract_fields(
        fields: &std::collections::HashMap<String, String>,
        span: &tracing::Span,
    ) {
        let context = TraceContextPropagator::new().extract(fields);
        let _ = span.set_parent(context);
    }
}
