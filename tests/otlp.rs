//! The OTLP exporter (cargo feature `otlp`): two real node processes
//! export their spans to a collector this test runs (the OTLP/gRPC trace
//! service, from the protocol's own generated code), and a request that
//! reaches the member that does not own its cart is one trace across
//! both members. Run with `cargo test --features otlp --test otlp`
//! (`scripts/test.sh` does).
#![cfg(feature = "otlp")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use support::{Http, NodeProcess};

/// Every span exported to it, with its service's name.
#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("spans");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone())
        .map(|v| match v {
            Value::StringValue(s) => s,
            Value::IntValue(n) => n.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_is_one_trace_across_both_members() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.db").to_str().unwrap().to_owned();
    let env_a = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "granary-a"),
    ];
    let a = NodeProcess::start_with_env(&dir.path().join("a"), &["--store", &store], &env_a);
    let token = support::token(&a);
    let seed = a.grpc.to_string();
    let env_b = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "granary-b"),
    ];
    let b = NodeProcess::start_with_env(
        &dir.path().join("b"),
        &["--store", &store, "--join", &seed, "--token", &token],
        &env_b,
    );
    support::cluster::until_all(&[&a, &b], "two members", |s| s.members == 2).await;

    // A cart B owns, an item added through A: forwarded to B.
    let http = Http::new();
    http.stock(&a, ["sku-1"]).await;
    let cart = http.create_cart(&b).await;
    let added = http
        .post(
            &a.url(&format!("/carts/{cart}/items")),
            support::item("sku-1"),
        )
        .await
        .expect("add");
    assert_eq!(added.status, 200, "{added:?}");

    // The batches arrive within the exporter's delay (5 s by default).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (forward, serve) = loop {
        let spans = collector.0.lock().expect("spans").clone();
        let forward = spans.iter().find(|(service, s)| {
            service == "granary-a"
                && s.name == "grain.forward"
                && spans.iter().any(|(_, call)| {
                    call.span_id == s.parent_span_id
                        && call.name == "grain.call"
                        && attribute(call, "grain.id").as_deref() == Some(cart.as_str())
                })
        });
        let serve = forward.and_then(|(_, f)| {
            spans.iter().find(|(service, s)| {
                service == "granary-b" && s.name == "grain.serve" && s.parent_span_id == f.span_id
            })
        });
        if let (Some(forward), Some(serve)) = (forward, serve) {
            break (forward.1.clone(), serve.1.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no trace of the forwarded add reached the collector: {:?}",
            spans
                .iter()
                .map(|(svc, s)| (svc, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        forward.trace_id, serve.trace_id,
        "one trace across both members"
    );
    assert_eq!(attribute(&serve, "grain.kind").as_deref(), Some("cart"));
    assert_eq!(
        attribute(&serve, "grain.id").as_deref(),
        Some(cart.as_str())
    );
    let spans = collector.0.lock().expect("spans").clone();
    let call = spans
        .iter()
        .find(|(_, s)| s.span_id == forward.parent_span_id)
        .expect("the forward's grain call");
    assert_eq!(
        attribute(&call.1, "grain.placement").as_deref(),
        Some("remote")
    );
    let request = spans
        .iter()
        .find(|(service, s)| {
            service == "granary-a" && s.name == "http.request" && s.trace_id == forward.trace_id
        })
        .expect("A's request span is the trace's root");
    assert_eq!(
        attribute(&request.1, "http.route").as_deref(),
        Some("/carts/{id}/items")
    );
    assert_eq!(
        attribute(&request.1, "http.status_code").as_deref(),
        Some("200")
    );
    assert!(
        request.1.parent_span_id.is_empty(),
        "the root has no parent"
    );
}

/// A collector address that is not a URL stops the node at start, naming
/// the variable.
#[test]
fn a_bad_collector_address_is_a_start_error_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (exit, stderr) = support::serve_expecting_failure_with_env(
        &["--data-dir", dir.path().to_str().unwrap()],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
    );
    assert_eq!(exit.code(), Some(2), "{stderr}");
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{stderr}");
}
