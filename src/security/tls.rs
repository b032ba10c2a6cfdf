//! Mutual TLS between members, with identities pinned by fingerprint: no
//! certificate authority. A server admits a client whose certificate's key
//! is one [`Trust`] holds now; a client accepts a server only if its key
//! is the one it expects at that address. Both prove possession of their
//! key in the TLS 1.3 handshake.
//!
//! Before a peer is authenticated it gets little: a handshake deadline, a
//! cap on connections (beyond it a connection is closed at once), and
//! rustls's own bounds on handshake messages. After, a peer whose identity
//! is dropped from [`Trust`] has its live connections cut.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};

use super::keys::{Fingerprint, NodeKeys};

/// The name every node's certificate carries; never checked (pins are).
const SERVER_NAME: &str = "granary-node";

/// The identities trusted now (the members' fingerprints). Changing it cuts
/// the live connections of identities no longer in it.
pub struct Trust {
    trusted: RwLock<BTreeSet<Fingerprint>>,
    /// Admits every key (a node that has no members to trust yet).
    open: std::sync::atomic::AtomicBool,
    generation: watch::Sender<u64>,
}

impl Trust {
    pub fn new(trusted: impl IntoIterator<Item = Fingerprint>) -> Arc<Trust> {
        Arc::new(Trust {
            trusted: RwLock::new(trusted.into_iter().collect()),
            open: std::sync::atomic::AtomicBool::new(false),
            generation: watch::channel(0).0,
        })
    }

    pub fn admits(&self, fingerprint: &Fingerprint) -> bool {
        self.open.load(std::sync::atomic::Ordering::Acquire)
            || self
                .trusted
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(fingerprint)
    }

    /// Replaces the trusted set (and ends an open trust).
    pub fn set(&self, trusted: impl IntoIterator<Item = Fingerprint>) {
        let trusted: BTreeSet<Fingerprint> = trusted.into_iter().collect();
        let mut current = self.trusted.write().unwrap_or_else(|p| p.into_inner());
        let was_open = self.open.swap(false, std::sync::atomic::Ordering::AcqRel);
        if *current == trusted && !was_open {
            return;
        }
        *current = trusted;
        drop(current);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Admits every key until the next `set`.
    pub fn open(&self) {
        if !self.open.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake-signature checks both verifiers share: the provider's
/// algorithms prove the peer holds the key its certificate names (the
/// verifiers only decide whether that key is the one to trust).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

fn not_admitted() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// Which clients the TLS handshake admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Only keys `Trust` holds.
    Trusted,
    /// Any client that proves possession of its key; the services decide
    /// what it may do (a node asking to join has no trusted key yet).
    AnyKey,
}

/// Admits a client whose key `Trust` holds (or any key, see [`Admission`]).
#[derive(Debug)]
struct PinnedClients {
    trust: Arc<Trust>,
    admission: Admission,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of_certificate(end_entity).ok_or(
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
        )?;
        if self.admission == Admission::AnyKey || self.trust.admits(&fingerprint) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(not_admitted())
        }
    }

    handshake_signatures!();
}

/// Accepts a server only if its key is one of `expected` (any key when
/// `None`: a first contact that will authenticate otherwise).
#[derive(Debug)]
struct PinnedServer {
    expected: Option<BTreeSet<Fingerprint>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match Fingerprint::of_certificate(end_entity) {
            Some(fingerprint)
                if self
                    .expected
                    .as_ref()
                    .is_none_or(|expected| expected.contains(&fingerprint)) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => Err(not_admitted()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            )),
        }
    }

    handshake_signatures!();
}

fn own_certificate(keys: &NodeKeys) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        vec![CertificateDer::from(keys.certificate_der.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys.key_der.clone())),
    )
}

/// The server side: TLS 1.3, HTTP/2, clients admitted by `admission`.
pub fn server_config(
    keys: &NodeKeys,
    trust: Arc<Trust>,
    admission: Admission,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = provider();
    let (chain, key) = own_certificate(keys);
    let verifier = PinnedClients {
        trust,
        admission,
        provider: provider.clone(),
    };
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?;
    // A server chooses the first of its protocols the client offers: a
    // link offers both (so a member from before the link answers it with
    // HTTP/2), gRPC clients only HTTP/2.
    config.alpn_protocols = link_protocols();
    Ok(Arc::new(config))
}

/// The client side, for servers whose key is one of `expected`.
pub fn client_config(
    keys: &NodeKeys,
    expected: impl IntoIterator<Item = Fingerprint>,
) -> anyhow::Result<Arc<ClientConfig>> {
    client_config_for(keys, Some(expected.into_iter().collect()))
}

/// The client side for a first contact: any server key (the exchange must
/// authenticate otherwise; only for asking to be admitted, or a status).
pub fn client_config_any_server(keys: &NodeKeys) -> anyhow::Result<Arc<ClientConfig>> {
    client_config_for(keys, None)
}

fn client_config_for(
    keys: &NodeKeys,
    expected: Option<BTreeSet<Fingerprint>>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let (chain, key) = own_certificate(keys);
    let verifier = PinnedServer {
        expected,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The client side of a grain-call link (`cluster::link`): `config`
/// offering the link's ALPN protocol, then HTTP/2's (which a member from
/// before the link chooses: the caller then knows to speak gRPC).
pub fn for_link(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = link_protocols();
    Arc::new(config)
}

/// The link's ALPN protocols, newest first, then HTTP/2's.
fn link_protocols() -> Vec<Vec<u8>> {
    use crate::cluster::link::{PROTOCOL, PROTOCOL_1};
    vec![PROTOCOL.to_vec(), PROTOCOL_1.to_vec(), b"h2".to_vec()]
}

/// TCP to `host`:`port`, then TLS with `config`.
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    port: u16,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    crate::cluster::link::keep_alive(&tcp);
    let name = ServerName::try_from(SERVER_NAME).expect("a valid name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A connector for `tonic::transport::Endpoint::connect_with_connector`:
/// TCP to the URI's host and port, then TLS with `config`.
pub fn connector(
    config: Arc<ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = io::Error,
    Future = impl Future<
        Output = io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
    > + Send,
> + Clone
+ Send {
    tower::service_fn(move |uri: http::Uri| {
        let config = config.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_matches(|c| c == '[' || c == ']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(7070);
            let tls = connect(config, &host, port).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        }
    })
}

/// Who is on the other end of an accepted connection: handlers find it in
/// the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub fingerprint: Fingerprint,
    pub address: SocketAddr,
}

/// Bounds on what a peer gets before and after it is authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Most connections from members (trusted keys) open at once; beyond
    /// it a new one is closed after its handshake.
    pub max_connections: usize,
    /// Most connections still in their handshake at once. A new one past
    /// it closes the oldest pending one instead of being refused, so a
    /// flood of half-open connections cannot keep a member's quick
    /// handshake out: it would have to open this many within the few
    /// milliseconds the member's takes.
    pub max_pending: usize,
    /// Most connections in their handshake from one address (its oldest
    /// is closed for a new one), so one source cannot take every pending
    /// slot from the others.
    pub max_pending_per_source: usize,
    /// Most authenticated connections from keys that are not members'
    /// (nodes asking to join) open at once.
    pub max_strangers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(5),
            max_connections: 256,
            max_pending: 128,
            max_pending_per_source: 32,
            max_strangers: 32,
        }
    }
}

/// How often, at most, connections closed for a limit are logged (as a
/// count since the last line).
const DROPS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// The connections in their handshake, oldest first, and what was closed
/// for the limits since the last log line.
struct Pending {
    next: u64,
    queue: std::collections::VecDeque<(u64, std::net::IpAddr, tokio::task::AbortHandle)>,
    per_source: std::collections::HashMap<std::net::IpAddr, usize>,
    /// Closed since the last log line, by the limit that closed them.
    dropped: std::collections::BTreeMap<&'static str, u64>,
    logged: Option<std::time::Instant>,
}

impl Pending {
    fn new() -> Self {
        Pending {
            next: 0,
            queue: std::collections::VecDeque::new(),
            per_source: std::collections::HashMap::new(),
            dropped: std::collections::BTreeMap::new(),
            logged: None,
        }
    }

    /// Makes room for a new pending connection from `source`: closes its
    /// source's oldest pending one if that source is at its limit, or the
    /// oldest of all if every slot is taken (counted under `full`).
    fn make_room(&mut self, source: std::net::IpAddr, limits: &Limits, full: &'static str) {
        let oldest = if self.per_source.get(&source).copied().unwrap_or(0)
            >= limits.max_pending_per_source.max(1)
        {
            self.queue.iter().position(|(_, ip, _)| *ip == source)
        } else if self.queue.len() >= limits.max_pending.max(1) {
            Some(0)
        } else {
            None
        };
        if let Some(at) = oldest
            && let Some((_, ip, task)) = self.queue.remove(at)
        {
            task.abort();
            self.forget_source(ip);
            *self.dropped.entry(full).or_default() += 1;
        }
    }

    fn forget_source(&mut self, source: std::net::IpAddr) {
        if let Some(count) = self.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// A pending connection ended (authenticated, refused or timed out).
    fn done(&mut self, id: u64) {
        if let Some(at) = self.queue.iter().position(|(pending, _, _)| *pending == id) {
            let (_, ip, _) = self.queue.remove(at).expect("found");
            self.forget_source(ip);
        }
    }

    /// Counts a connection closed for a limit, and logs the count at most
    /// every `DROPS_LOGGED_EVERY` (a flood must not flood the log).
    fn dropped(&mut self, what: &'static str) {
        *self.dropped.entry(what).or_default() += 1;
        self.log_drops();
    }

    fn log_drops(&mut self) {
        if self.dropped.is_empty()
            || self
                .logged
                .is_some_and(|at| at.elapsed() < DROPS_LOGGED_EVERY)
        {
            return;
        }
        let why = self
            .dropped
            .iter()
            .map(|(what, count)| format!("{what}: {count}"))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(
            closed = self.dropped.values().sum::<u64>(),
            pending = self.queue.len(),
            sources = self.per_source.len(),
            "connections closed for the limits on peers ({why}); logged at most every {DROPS_LOGGED_EVERY:?}"
        );
        self.dropped.clear();
        self.logged = Some(std::time::Instant::now());
    }
}

/// Removes a pending connection from the registry however its task ends
/// (done, failed, or aborted to make room).
pub(crate) struct PendingGuard {
    pending: Arc<std::sync::Mutex<Pending>>,
    id: u64,
}

impl PendingGuard {
    /// Counts a connection closed for a limit (logged at most every
    /// `DROPS_LOGGED_EVERY`).
    pub(crate) fn dropped(&self, what: &'static str) {
        lock_pending(&self.pending).dropped(what);
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock_pending(&self.pending).done(self.id);
    }
}

fn lock_pending(pending: &std::sync::Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connections not yet authenticated (or, in plaintext, not yet known to
/// be links or HTTP/2), each in a task of its own, under [`Limits`]'
/// `max_pending` and `max_pending_per_source`: a new one past a limit
/// closes the oldest (its source's first), so a flood of silent
/// connections never keeps out one that proves itself quickly.
#[derive(Clone)]
pub(crate) struct Unproven {
    pending: Arc<std::sync::Mutex<Pending>>,
    limits: Limits,
}

impl Unproven {
    pub(crate) fn new(limits: Limits) -> Self {
        Unproven {
            pending: Arc::new(std::sync::Mutex::new(Pending::new())),
            limits,
        }
    }

    /// Spawns `work` for a new connection from `source`, which may be
    /// aborted to make room until it drops the guard it is given; `full`
    /// names the limit in the log line about what was closed.
    pub(crate) fn spawn<F>(
        &self,
        source: std::net::IpAddr,
        full: &'static str,
        work: impl FnOnce(PendingGuard) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // Registered under the lock it is spawned under, so the task's
        // guard (which takes the lock) always finds its entry.
        let mut registry = lock_pending(&self.pending);
        registry.make_room(source, &self.limits, full);
        registry.log_drops();
        let id = registry.next;
        registry.next += 1;
        let guard = PendingGuard {
            pending: self.pending.clone(),
            id,
        };
        let task = tokio::spawn(work(guard));
        registry.queue.push_back((id, source, task.abort_handle()));
        *registry.per_source.entry(source).or_default() += 1;
    }
}

/// Plaintext connections past their first bytes (links and HTTP/2), by
/// source address. Plaintext has no keys to tell members from strangers,
/// so they are capped in all at what mutual TLS lets members and
/// strangers hold together (`max_connections + max_strangers`), and per
/// source address at what all of a member's peers may open to it
/// (three quarters of `max_connections`, see `router::MEMBER_CONNECTIONS`):
/// one address that floods the port leaves the rest to the others.
pub(crate) struct Spoken {
    limits: Limits,
    held: std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

impl Spoken {
    pub(crate) fn new(limits: Limits) -> Arc<Spoken> {
        Arc::new(Spoken {
            limits,
            held: std::sync::Mutex::new((0, std::collections::HashMap::new())),
        })
    }

    fn total(&self) -> usize {
        self.limits.max_connections + self.limits.max_strangers
    }

    fn per_source(&self) -> usize {
        (self.limits.max_connections * 3 / 4).max(1)
    }

    /// A place for one more connection from `source`, held until the
    /// connection is dropped; `Err` names the limit it is past.
    pub(crate) fn take(
        self: &Arc<Self>,
        source: std::net::IpAddr,
    ) -> Result<SpokenSlot, &'static str> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_source) = &mut *held;
        if *total >= self.total() {
            return Err("too many plaintext connections");
        }
        let from = per_source.entry(source).or_default();
        if *from >= self.per_source() {
            return Err("too many plaintext connections from one address");
        }
        *from += 1;
        *total += 1;
        Ok(SpokenSlot {
            spoken: self.clone(),
            source,
        })
    }
}

/// A plaintext connection's place under [`Spoken`]'s caps, given back
/// when dropped.
pub struct SpokenSlot {
    spoken: Arc<Spoken>,
    source: std::net::IpAddr,
}

impl Drop for SpokenSlot {
    fn drop(&mut self) {
        let mut held = self.spoken.held.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_source) = &mut *held;
        *total -= 1;
        if let Some(from) = per_source.get_mut(&self.source) {
            *from -= 1;
            if *from == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

/// A connection that holds its place under a cap while it is open, and
/// the bytes already read off it that its reader gets first (the HTTP/2
/// preface, read whole before the connection took a place).
pub struct Capped<T> {
    io: T,
    slot: SpokenSlot,
    replay: bytes::Bytes,
}

impl<T> Capped<T> {
    /// `io` holding `slot`, whose reader gets `replay` first.
    pub(crate) fn new(io: T, slot: SpokenSlot, replay: bytes::Bytes) -> Self {
        Capped { io, slot, replay }
    }

    /// The connection and its place, apart (to move the connection
    /// between runtimes, say); `None` if bytes read off it are still to
    /// be replayed (they would be lost).
    pub(crate) fn into_parts(self) -> Option<(T, SpokenSlot)> {
        self.replay.is_empty().then_some((self.io, self.slot))
    }
}

impl tonic::transport::server::Connected for Capped<TcpStream> {
    type ConnectInfo = <TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Capped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            let replayed = self.replay.split_to(n);
            buf.put_slice(&replayed);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Capped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepts TLS connections on `listener` for `tonic`'s
/// `serve_with_incoming`: only authenticated ones come out. Members' keys
/// and other keys (nodes asking to join) have separate caps, and
/// connections still in their handshake have their own, which makes room
/// for a newcomer by closing the oldest (per source first): a flood of
/// half-open connections from strangers never keeps members out.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    trust: Arc<Trust>,
    limits: Limits,
) -> impl Stream<Item = io::Result<PeerConnection>> {
    let (tx, rx) = mpsc::channel(64);
    let members = Arc::new(Semaphore::new(limits.max_connections));
    let strangers = Arc::new(Semaphore::new(limits.max_strangers));
    let pending = Unproven::new(limits);
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let (tcp, address) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let (acceptor, tx, trust) = (acceptor.clone(), tx.clone(), trust.clone());
            let (members, strangers) = (members.clone(), strangers.clone());
            pending.spawn(
                address.ip(),
                "too many in their handshake",
                move |guard| async move {
                    let _ = tcp.set_nodelay(true);
                    crate::cluster::link::keep_alive(&tcp);
                    let handshake = tokio::time::timeout(
                        limits.handshake_timeout,
                        acceptor.accept(Socket::Live(tcp)),
                    );
                    let tls = match handshake.await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(err)) => {
                            tracing::debug!(%address, error = %err, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%address, "TLS handshake too slow; closed");
                            return;
                        }
                    };
                    let Some(fingerprint) = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| Fingerprint::of_certificate(cert))
                    else {
                        return;
                    };
                    let trusted = trust.admits(&fingerprint);
                    let permits = if trusted { members } else { strangers };
                    let Ok(permit) = permits.try_acquire_owned() else {
                        guard.dropped(if trusted {
                            "too many from members"
                        } else {
                            "too many from keys that are not members'"
                        });
                        return;
                    };
                    // Authenticated: its pending slot goes now.
                    drop(guard);
                    let connection = PeerConnection {
                        changes: WatchStream::from_changes(trust.generation.subscribe()),
                        trusted,
                        stream: tls,
                        peer: PeerIdentity {
                            fingerprint,
                            address,
                        },
                        trust,
                        revoked: false,
                        _permit: permit,
                    };
                    let _ = tx.send(Ok(connection)).await;
                },
            );
        }
    });
    ReceiverStream::new(rx)
}

/// A peer's socket, which may move between runtimes (see
/// [`PeerConnection::detach`]).
pub(crate) enum Socket {
    /// Registered with a runtime's reactor: reads and writes work.
    Live(TcpStream),
    /// Between runtimes: reads and writes fail.
    Detached(std::net::TcpStream),
    /// Lost on a failed move.
    Gone,
}

impl Socket {
    fn detach(&mut self) -> io::Result<()> {
        self.step(|socket| match socket {
            Socket::Live(tcp) => Ok(Socket::Detached(tcp.into_std()?)),
            other => Ok(other),
        })
    }

    fn attach(&mut self) -> io::Result<()> {
        self.step(|socket| match socket {
            Socket::Detached(std) => Ok(Socket::Live(TcpStream::from_std(std)?)),
            other => Ok(other),
        })
    }

    /// Moves the socket to the state `next` makes of it; on failure it is
    /// lost (`Gone`): reads and writes fail, and the connection closes.
    fn step(&mut self, next: impl FnOnce(Socket) -> io::Result<Socket>) -> io::Result<()> {
        *self = next(std::mem::replace(self, Socket::Gone))?;
        Ok(())
    }

    fn live(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self {
            Socket::Live(tcp) => Ok(Pin::new(tcp)),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection is between runtimes",
            )),
        }
    }
}

impl Socket {
    /// Polls `op` on the registered socket; between runtimes it fails.
    fn poll_live<T>(
        self: Pin<&mut Self>,
        op: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.get_mut().live() {
            Ok(tcp) => op(tcp),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_live(|tcp| tcp.poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_live(|tcp| tcp.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_live(|tcp| tcp.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_live(|tcp| tcp.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_live(|tcp| tcp.poll_shutdown(cx))
    }
}

/// An authenticated connection from a peer. Cut (its reads and writes
/// fail) as soon as the peer's identity is no longer trusted.
pub struct PeerConnection {
    stream: tokio_rustls::server::TlsStream<Socket>,
    peer: PeerIdentity,
    trust: Arc<Trust>,
    changes: WatchStream<u64>,
    /// Whether the peer was trusted when it connected: only such a
    /// connection is cut when trust is withdrawn (one that never was may
    /// only ask to be admitted).
    trusted: bool,
    revoked: bool,
    _permit: OwnedSemaphorePermit,
}

impl PeerConnection {
    /// Whether the peer chose the grain-call link (`cluster::link`) rather
    /// than HTTP/2 in the handshake.
    pub fn is_link(&self) -> bool {
        use crate::cluster::link::{PROTOCOL, PROTOCOL_1};
        matches!(self.alpn(), Some(PROTOCOL | PROTOCOL_1))
    }

    /// The ALPN protocol the handshake chose.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }

    /// Whether the peer held a member's key when it connected.
    pub fn is_member(&self) -> bool {
        self.trusted
    }

    /// Takes the connection off the runtime it was accepted on (its socket
    /// leaves that runtime's reactor), so it can move to another thread's
    /// runtime, where [`PeerConnection::attach`] registers it again. The
    /// TLS session (keys, buffered records) moves with it.
    pub fn detach(&mut self) -> io::Result<()> {
        self.stream.get_mut().0.detach()
    }

    /// Registers a detached connection with the current runtime's reactor.
    /// Must be called on the runtime that will drive it.
    ///
    /// # Panics
    /// Outside a tokio runtime with IO enabled (as `TcpStream::from_std`).
    pub fn attach(&mut self) -> io::Result<()> {
        self.stream.get_mut().0.attach()
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while let Poll::Ready(change) = Pin::new(&mut self.changes).poll_next(cx) {
            let trusted_now = self.trust.admits(&self.peer.fingerprint);
            if change.is_none() || (self.trusted && !trusted_now) {
                self.revoked = true;
                break;
            }
            self.trusted = trusted_now;
        }
        if self.revoked {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer's identity is no longer trusted",
            ))
        } else {
            Ok(())
        }
    }
}

impl tonic::transport::server::Connected for PeerConnection {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for PeerConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(err) = self.check(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(err) = self.check(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
