//! The gRPC ControlPlane of a real `granary serve` process: every RPC's
//! answer on a single node, its input checks, and the node staying healthy
//! (gRPC and HTTP) after hostile bytes on the gRPC port.

mod support;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::{Http, NodeProcess};
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

pub mod messages {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("messages");
}

use messages::control_plane_client::ControlPlaneClient;
use messages::{ClosingNotice, Empty, NegotiateRequest, OwnerChangeRequest};

/// Deadline of every gRPC call a test makes.
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// How long the server may take to drop a connection it cannot speak to.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// A node on a fresh data dir; the dir lives as long as the returned guard.
fn start_node(extra: &[&str]) -> (TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("data"), extra);
    (dir, node)
}

/// A channel as a member opens it: mutual TLS with the node's own key (the
/// seed's client runs over it unchanged).
async fn channel(node: &NodeProcess) -> Channel {
    support::cluster::channel(node)
        .await
        .expect("connect to the gRPC port")
}

async fn client(node: &NodeProcess) -> ControlPlaneClient<Channel> {
    ControlPlaneClient::new(channel(node).await)
}

/// A request carrying its own deadline (sent as `grpc-timeout`), on top of
/// the channel's.
fn req<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The node answers `Ping` on a brand-new connection and `GET /healthz`
/// with 200.
async fn assert_healthy(node: &NodeProcess) {
    let pong = client(node)
        .await
        .ping(req(Empty {}))
        .await
        .expect("Ping on a new connection")
        .into_inner();
    assert_eq!(pong.host, node.grpc.to_string());
    let health = Http::new()
        .get(&node.url("/healthz"))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status, 200, "{health:?}");
}

/// Deterministic, random-looking bytes (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Reads until the peer closes the connection (EOF or reset); fails if it
/// is still open after `CLOSE_DEADLINE`. Returns how many bytes the peer
/// sent before closing.
fn wait_for_close(stream: &mut TcpStream) -> usize {
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let deadline = Instant::now() + CLOSE_DEADLINE;
    let mut received = 0;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset or aborted: closed, less politely.
            Err(_) => return received,
        }
        assert!(
            Instant::now() < deadline,
            "the server kept the connection open for {CLOSE_DEADLINE:?} ({received} bytes received)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_returns_the_grpc_address_as_host_by_default_and_the_current_unix_time() {
    let (_dir, node) = start_node(&[]);
    let mut cp = client(&node).await;
    let before = unix_now();
    let pong = cp.ping(req(Empty {})).await.expect("Ping").into_inner();
    let after = unix_now();
    assert_eq!(pong.host, node.grpc.to_string());
    assert!(
        (before - 2..=after + 2).contains(&pong.unix_time),
        "unix_time {} is not within 2 s of the test's clock [{before}, {after}]",
        pong.unix_time
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_returns_the_configured_advertise_host() {
    let (_dir, node) = start_node(&["--advertise", "node-a.example:7070"]);
    let mut cp = client(&node).await;
    let before = unix_now();
    let pong = cp.ping(req(Empty {})).await.expect("Ping").into_inner();
    let after = unix_now();
    assert_eq!(pong.host, "node-a.example:7070");
    assert!(
        (before - 2..=after + 2).contains(&pong.unix_time),
        "unix_time {} is not within 2 s of [{before}, {after}]",
        pong.unix_time
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_returns_a_host_list_containing_the_node_itself() {
    let (_dir, node) = start_node(&[]);
    let mut cp = client(&node).await;
    let reply = cp
        .negotiate(req(NegotiateRequest {
            known_hosts: vec!["x:1".into(), "y:2".into()],
        }))
        .await
        .expect("Negotiate")
        .into_inner();
    assert!(
        reply.hosts.contains(&node.grpc.to_string()),
        "{:?} lacks the node's own host {}",
        reply.hosts,
        node.grpc
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_refuses_too_many_hosts_or_a_host_with_a_space_and_keeps_serving() {
    let (_dir, node) = start_node(&[]);
    let mut cp = client(&node).await;

    let many: Vec<String> = (0..2000)
        .map(|i| format!("h{i}.example:{}", i + 1))
        .collect();
    let err = cp
        .negotiate(req(NegotiateRequest { known_hosts: many }))
        .await
        .expect_err("2000 hosts must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!err.message().is_empty(), "{err:?}");
    assert!(err.message().contains("known_hosts"), "{err:?}");

    let err = cp
        .negotiate(req(NegotiateRequest {
            known_hosts: vec!["x:1".into(), "bad host:2".into()],
        }))
        .await
        .expect_err("a host with a space must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!err.message().is_empty(), "{err:?}");
    assert!(err.message().contains("known_hosts"), "{err:?}");

    // Same connection, and a new one, still served.
    let pong = cp.ping(req(Empty {})).await.expect("Ping").into_inner();
    assert_eq!(pong.host, node.grpc.to_string());
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_cart_ids_lists_exactly_the_carts_created_over_http() {
    let (_dir, node) = start_node(&[]);
    let mut cp = client(&node).await;
    let http = Http::new();

    let none = cp.get_cart_ids(req(Empty {})).await.expect("GetCartIds");
    assert!(
        none.into_inner().cart_ids.is_empty(),
        "a fresh node owns no cart"
    );

    let mut created = BTreeSet::new();
    for _ in 0..3 {
        let id = http.create_cart(&node).await;
        // Touch it too: a read keeps it the same set.
        let cart = http.get(&node.url(&format!("/carts/{id}"))).await.unwrap();
        assert_eq!(cart.status, 200, "{cart:?}");
        created.insert(id);
    }
    assert_eq!(created.len(), 3);

    let listed = cp
        .get_cart_ids(req(Empty {}))
        .await
        .expect("GetCartIds")
        .into_inner()
        .cart_ids;
    assert_eq!(listed.len(), 3, "no duplicates: {listed:?}");
    let listed: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(listed, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_owner_accepts_the_node_itself_and_refuses_another_host_or_a_non_uuid() {
    let (_dir, node) = start_node(&[]);
    let own = node.grpc.to_string();
    let cart_id = Http::new().create_cart(&node).await;
    let mut cp = client(&node).await;

    let ack = cp
        .confirm_owner(req(OwnerChangeRequest {
            cart_id: cart_id.clone(),
            new_host: own.clone(),
        }))
        .await
        .expect("ConfirmOwner to self")
        .into_inner();
    assert!(ack.accepted, "{ack:?}");

    let ack = cp
        .confirm_owner(req(OwnerChangeRequest {
            cart_id: cart_id.clone(),
            new_host: "other.example:7070".into(),
        }))
        .await
        .expect("ConfirmOwner to another host")
        .into_inner();
    assert!(!ack.accepted, "{ack:?}");
    assert!(!ack.message.is_empty(), "{ack:?}");
    assert!(
        ack.message.contains(&own),
        "the refusal names the owner {own}: {ack:?}"
    );

    let err = cp
        .confirm_owner(req(OwnerChangeRequest {
            cart_id: "not-a-uuid".into(),
            new_host: own.clone(),
        }))
        .await
        .expect_err("a cart_id that is not a UUID must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cart_id"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_is_acknowledged_and_the_node_keeps_serving_http() {
    let (_dir, node) = start_node(&[]);
    let mut cp = client(&node).await;
    let ack = cp
        .closing(req(ClosingNotice {
            host: "peer.example:7070".into(),
        }))
        .await
        .expect("Closing")
        .into_inner();
    assert!(ack.accepted, "{ack:?}");

    let http = Http::new();
    let health = http.get(&node.url("/healthz")).await.expect("healthz");
    assert_eq!(health.status, 200, "{health:?}");
    // Still serving carts, not merely alive.
    http.create_cart(&node).await;
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_on_the_grpc_port_are_dropped_and_the_node_stays_healthy() {
    let (_dir, node) = start_node(&[]);
    let grpc = node.grpc;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&grpc, CALL_DEADLINE).expect("connect");
        stream
            .set_write_timeout(Some(CLOSE_DEADLINE))
            .expect("write timeout");
        // The server may close (or reset) before all of it is written.
        let _ = stream.write_all(&noise(64 * 1024, 0x9e37_79b9_7f4a_7c15));
        wait_for_close(&mut stream);
    })
    .await
    .expect("garbage client");
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_negotiate_is_refused_and_the_node_stays_healthy() {
    let (_dir, node) = start_node(&[]);
    let mut cp = client(&node).await;
    // ~2 MiB of short, individually valid hosts: over the 1 MiB decode limit.
    let hosts: Vec<String> = (0..100_000)
        .map(|i| format!("host-{i:08}.example:7070"))
        .collect();
    let encoded: usize = hosts.iter().map(|h| h.len() + 2).sum();
    assert!(encoded > 2 * 1024 * 1024, "{encoded} bytes");
    let err = cp
        .negotiate(req(NegotiateRequest { known_hosts: hosts }))
        .await
        .expect_err("a 2 MiB Negotiate must be refused");
    assert_ne!(err.code(), Code::Ok, "{err:?}");
    // The 1 MiB decode limit, not only the content check, refuses it.
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "expected a size refusal, got {err:?}"
    );

    // The same client still works, and so does a new one.
    let pong = cp.ping(req(Empty {})).await.expect("Ping").into_inner();
    assert_eq!(pong.host, node.grpc.to_string());
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_http2_frame_after_the_preface_does_not_disturb_the_node() {
    let (_dir, node) = start_node(&[]);
    let grpc = node.grpc;
    let mut stream = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&grpc, CALL_DEADLINE).expect("connect");
        stream
            .set_write_timeout(Some(CLOSE_DEADLINE))
            .expect("write timeout");
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        // First 5 of the 9 bytes of a SETTINGS frame header that claims a
        // 0x100-byte payload; nothing more follows.
        stream
            .write_all(&[0x00, 0x01, 0x00, 0x04, 0x00])
            .expect("partial frame header");
        stream.flush().expect("flush");
        stream
    })
    .await
    .expect("truncated-frame client");

    // While that connection hangs mid-frame, other clients are served.
    assert_healthy(&node).await;

    // Then it goes away abruptly; the node is still fine.
    tokio::task::spawn_blocking(move || {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        wait_for_close(&mut stream);
    })
    .await
    .expect("close");
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_grpc_message_is_refused_and_the_node_stays_healthy() {
    use tonic::codegen::Service;
    use tonic::codegen::http;

    let (_dir, node) = start_node(&[]);
    let mut channel = channel(&node).await;
    // A gRPC length-prefixed message that claims 100 bytes and carries 3,
    // then the request stream ends.
    let body = Bytes::from_static(&[0, 0, 0, 0, 100, 0x0a, 0x01, b'x']);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/messages.ControlPlane/Negotiate",
            node.grpc
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .body(tonic::body::Body::new(Full::new(body)))
        .expect("request");
    let exchange = async {
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .expect("channel ready");
        let response = channel.call(request).await.expect("HTTP/2 response");
        assert_eq!(response.status(), 200, "gRPC errors travel in grpc-status");
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .or_else(|| headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .expect("a grpc-status");
        let message = trailers
            .get("grpc-message")
            .or_else(|| headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (Code::from_i32(status), message, collected.to_bytes())
    };
    let (code, message, data) = tokio::time::timeout(CALL_DEADLINE, exchange)
        .await
        .expect("the server answers a truncated message within the deadline");
    assert_ne!(code, Code::Ok, "{code:?} {message:?}");
    assert!(data.is_empty(), "no reply message for a truncated request");
    assert_healthy(&node).await;
}

/// The cluster port speaks mutual TLS by default: the seed's client over
/// plaintext gets no answer. With `--insecure-cluster` the same client is
/// served in plaintext.
#[tokio::test]
async fn plaintext_is_refused_unless_the_node_runs_insecure() {
    let plain = |node: &NodeProcess| {
        let address = format!("http://{}", node.grpc);
        async move {
            let channel = Endpoint::from_shared(address)
                .expect("endpoint")
                .timeout(CALL_DEADLINE)
                .connect()
                .await?;
            let reply = ControlPlaneClient::new(channel).ping(req(Empty {})).await?;
            Ok::<_, Box<dyn std::error::Error>>(reply.into_inner())
        }
    };
    let (_dir, secure) = start_node(&[]);
    assert!(plain(&secure).await.is_err(), "plaintext was served");
    assert!(client(&secure).await.ping(req(Empty {})).await.is_ok());
    let (_dir, insecure) = start_node(&["--insecure-cluster"]);
    // The operator is told, at start, what the flag gives away.
    insecure.wait_for_log(&["WARN", "--insecure-cluster", "plaintext"], CALL_DEADLINE);
    let reply = plain(&insecure)
        .await
        .expect("plaintext under --insecure-cluster");
    assert_eq!(reply.host, insecure.grpc.to_string());
}
