//! Mutual TLS with pinned identities over real sockets (`granary::security`):
//! a ControlPlane server whose `Ping` answers the caller's authenticated
//! fingerprint, and clients with and without the right keys.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use granary::security::tls::{self, Limits, PeerIdentity, Trust};
use granary::security::{Fingerprint, NodeKeys};
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};

pub mod messages {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("messages");
}

use messages::control_plane_client::ControlPlaneClient;
use messages::control_plane_server::{ControlPlane, ControlPlaneServer};
use messages::*;

/// Answers `Ping` with the fingerprint of whoever called.
struct Echo;

#[tonic::async_trait]
impl ControlPlane for Echo {
    async fn ping(&self, request: Request<Empty>) -> Result<Response<PingReply>, Status> {
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .ok_or_else(|| Status::unauthenticated("no peer identity"))?;
        Ok(Response::new(PingReply {
            host: peer.fingerprint.to_string(),
            unix_time: 0,
        }))
    }
    async fn negotiate(
        &self,
        _: Request<NegotiateRequest>,
    ) -> Result<Response<NegotiateReply>, Status> {
        Err(Status::unimplemented("test server"))
    }
    async fn get_cart_ids(&self, _: Request<Empty>) -> Result<Response<CartIdsReply>, Status> {
        Err(Status::unimplemented("test server"))
    }
    async fn confirm_owner(
        &self,
        _: Request<OwnerChangeRequest>,
    ) -> Result<Response<OwnerChangeAck>, Status> {
        Err(Status::unimplemented("test server"))
    }
    async fn closing(&self, _: Request<ClosingNotice>) -> Result<Response<OwnerChangeAck>, Status> {
        Err(Status::unimplemented("test server"))
    }
}

fn keys() -> (tempfile::TempDir, NodeKeys) {
    let dir = tempfile::tempdir().unwrap();
    let keys = NodeKeys::load_or_create(dir.path()).unwrap();
    (dir, keys)
}

/// A server with `server` keys trusting `trusted`; its address.
async fn serve(server: &NodeKeys, trust: Arc<Trust>, limits: Limits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = tls::server_config(server, trust.clone(), tls::Admission::Trusted).unwrap();
    let incoming = tls::incoming(listener, config, trust, limits);
    tokio::spawn(
        Server::builder()
            .add_service(ControlPlaneServer::new(Echo))
            .serve_with_incoming(incoming),
    );
    address
}

/// A client with `client` keys that expects the server's key to be one of
/// `expected`.
async fn connect(
    client: &NodeKeys,
    expected: &[Fingerprint],
    address: std::net::SocketAddr,
) -> Result<ControlPlaneClient<tonic::transport::Channel>, tonic::transport::Error> {
    let config = tls::client_config(client, expected.iter().copied()).unwrap();
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect_with_connector(tls::connector(config))
        .await?;
    Ok(ControlPlaneClient::new(channel))
}

async fn ping(
    client: &mut ControlPlaneClient<tonic::transport::Channel>,
) -> Result<String, Status> {
    client.ping(Empty {}).await.map(|r| r.into_inner().host)
}

#[tokio::test]
async fn a_pinned_member_is_served_and_known_by_its_key() {
    let ((_a, server), (_b, member)) = (keys(), keys());
    let address = serve(&server, Trust::new([member.fingerprint]), Limits::default()).await;
    let mut client = connect(&member, &[server.fingerprint], address)
        .await
        .expect("connect");
    assert_eq!(
        ping(&mut client).await.unwrap(),
        member.fingerprint.to_string()
    );
}

#[tokio::test]
async fn a_client_with_an_unknown_key_is_refused() {
    let ((_a, server), (_b, member), (_c, stranger)) = (keys(), keys(), keys());
    let address = serve(&server, Trust::new([member.fingerprint]), Limits::default()).await;
    let outcome = match connect(&stranger, &[server.fingerprint], address).await {
        Err(_) => None,
        Ok(mut client) => Some(ping(&mut client).await),
    };
    assert!(
        matches!(outcome, None | Some(Err(_))),
        "a stranger was served: {outcome:?}"
    );
    // The member still is.
    let mut client = connect(&member, &[server.fingerprint], address)
        .await
        .unwrap();
    assert!(ping(&mut client).await.is_ok());
}

#[tokio::test]
async fn a_client_without_a_certificate_or_tls_is_refused() {
    let ((_a, server), (_b, member)) = (keys(), keys());
    let address = serve(&server, Trust::new([member.fingerprint]), Limits::default()).await;
    // Plain HTTP/2 gRPC, no TLS at all.
    let plain = async {
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .timeout(Duration::from_secs(2))
            .connect()
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(ControlPlaneClient::new(channel).ping(Empty {}).await?)
    };
    assert!(plain.await.is_err(), "plaintext was served");
    // TLS without a client certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let no_cert = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    let mut no_cert = no_cert;
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    let outcome = async {
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .timeout(Duration::from_secs(2))
            .connect_with_connector(tls::connector(Arc::new(no_cert)))
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(ControlPlaneClient::new(channel).ping(Empty {}).await?)
    };
    assert!(
        outcome.await.is_err(),
        "a client without a certificate was served"
    );
}

/// A man in the middle: the address answers with another key than the
/// member's. The client refuses before sending anything.
#[tokio::test]
async fn a_server_presenting_another_key_for_a_members_address_is_refused() {
    let ((_a, impostor), (_b, member), (_c, client_keys)) = (keys(), keys(), keys());
    let address = serve(
        &impostor,
        Trust::new([client_keys.fingerprint]),
        Limits::default(),
    )
    .await;
    let outcome = match connect(&client_keys, &[member.fingerprint], address).await {
        Err(_) => None,
        Ok(mut client) => Some(ping(&mut client).await),
    };
    assert!(
        matches!(outcome, None | Some(Err(_))),
        "the client talked to an impostor: {outcome:?}"
    );
}

/// Dropping an identity from the trusted set cuts its live connection and
/// refuses its new ones.
#[tokio::test]
async fn a_removed_identity_is_cut_off_at_once() {
    let ((_a, server), (_b, member), (_c, other)) = (keys(), keys(), keys());
    let trust = Trust::new([member.fingerprint, other.fingerprint]);
    let address = serve(&server, trust.clone(), Limits::default()).await;
    let mut client = connect(&member, &[server.fingerprint], address)
        .await
        .unwrap();
    assert!(ping(&mut client).await.is_ok());
    trust.set([other.fingerprint]);
    assert!(
        ping(&mut client).await.is_err(),
        "a revoked member was still served"
    );
    let outcome = match connect(&member, &[server.fingerprint], address).await {
        Err(_) => None,
        Ok(mut client) => Some(ping(&mut client).await),
    };
    assert!(matches!(outcome, None | Some(Err(_))), "{outcome:?}");
    let mut still = connect(&other, &[server.fingerprint], address)
        .await
        .unwrap();
    assert!(ping(&mut still).await.is_ok());
}

/// Before authentication a peer gets a deadline and a connection cap: a
/// silent connection is closed after the handshake deadline, garbage is
/// closed at once, and connections beyond the cap are closed on arrival;
/// a member is still served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_get_bounded_time_and_connections() {
    let ((_a, server), (_b, member)) = (keys(), keys());
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        max_pending: 4,
        max_pending_per_source: 4,
        ..Limits::default()
    };
    let address = serve(&server, Trust::new([member.fingerprint]), limits).await;
    tokio::task::block_in_place(|| {
        // Silent: closed by the handshake deadline.
        let silent = std::net::TcpStream::connect(address).unwrap();
        assert!(closed_within(silent, Duration::from_secs(3)).is_some());
        // Garbage instead of a ClientHello: closed.
        let mut garbage = std::net::TcpStream::connect(address).unwrap();
        garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff]).unwrap();
        garbage.write_all(&[0u8; 512]).unwrap();
        assert!(closed_within(garbage, Duration::from_secs(3)).is_some());
        // Past the cap on pending connections: the fifth of five silent
        // connections closes the oldest at once, long before the deadline.
        let mut held: Vec<std::net::TcpStream> = (0..5)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect();
        let oldest = held.remove(0);
        let closed = closed_within(oldest, Duration::from_millis(250));
        assert!(closed.is_some(), "the oldest pending connection was kept");
        drop(held);
    });
    // Once the held connections are gone, a member is served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut client) = connect(&member, &[server.fingerprint], address).await
            && ping(&mut client).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the member was not served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads from `stream` until the peer closes it (`Some(how long)`) or
/// `limit` passes (`None`).
fn closed_within(mut stream: std::net::TcpStream, limit: Duration) -> Option<Duration> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // Reset, aborted: closed by the server.
            Err(_) => return Some(started.elapsed()),
        }
    }
}

/// Whether the server has closed `stream` (without waiting).
fn is_closed(stream: &std::net::TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 16];
    let closed = match stream.peek(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// A silent connection to `address` from `source` (any 127.0.0.0/8
/// address is this machine's).
async fn silent_from(source: [u8; 4], address: std::net::SocketAddr) -> std::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let stream = socket.connect(address).await.unwrap().into_std().unwrap();
    // tokio's sockets are non-blocking; the checks here read blocking.
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Hundreds of half-open connections (a handshake never started) hold
/// every pending slot for the whole handshake deadline; a member still
/// connects and is served at once: its connection closes the oldest of
/// them, and the newest are still open afterwards (nobody waited for
/// them to time out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_connections_never_keeps_a_member_out() {
    let ((_a, server), (_b, member)) = (keys(), keys());
    let limits = Limits {
        handshake_timeout: Duration::from_secs(30),
        max_pending: 16,
        ..Limits::default()
    };
    let address = serve(&server, Trust::new([member.fingerprint]), limits).await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(silent_from([127, 0, 0, 1], address).await);
    }
    let mut client = connect(&member, &[server.fingerprint], address)
        .await
        .expect("a member connects during the flood");
    assert!(ping(&mut client).await.is_ok(), "and is served");
    let still_open = tokio::task::block_in_place(|| {
        flood[flood.len() - 8..]
            .iter()
            .filter(|stream| !is_closed(stream))
            .count()
    });
    assert!(
        still_open > 0,
        "the member waited for the flood to time out"
    );
}

/// One address cannot take the pending slots of others: past its own
/// limit, a source's new connection closes that source's oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_pending_slot() {
    let (_a, server) = keys();
    let limits = Limits {
        handshake_timeout: Duration::from_secs(30),
        max_pending: 8,
        max_pending_per_source: 3,
        ..Limits::default()
    };
    let address = serve(&server, Trust::new([]), limits).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(silent_from([127, 0, 0, 3], address).await);
    }
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(silent_from([127, 0, 0, 2], address).await);
    }
    tokio::task::block_in_place(|| {
        let kept = flood.split_off(7);
        for (n, stream) in flood.into_iter().enumerate() {
            assert!(
                closed_within(stream, Duration::from_secs(5)).is_some(),
                "the flood's connection {n} was kept past its source's limit"
            );
        }
        for stream in kept.iter().chain(&others) {
            assert!(
                !is_closed(stream),
                "a connection within its source's limit was closed"
            );
        }
    });
}

/// Accepts any server certificate (for the client that has none itself).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[test]
fn fingerprints_of_two_nodes_differ_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeKeys::load_or_create(dir.path()).unwrap().fingerprint;
    let again = NodeKeys::load_or_create(dir.path()).unwrap().fingerprint;
    assert_eq!(first, again);
    let (_other_dir, other) = keys();
    let set: BTreeSet<Fingerprint> = [first, other.fingerprint].into();
    assert_eq!(set.len(), 2);
}
