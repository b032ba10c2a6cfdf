//! The grain-call link: how members forward grain calls to each other.
//!
//! A forwarded call used to be a tonic request (`Grains/Call`): through a
//! tower buffer, hyper's dispatch and h2's connection task on each side,
//! HTTP/2 framing and HPACK, about 20 µs of CPU per side per call. The link
//! carries the same messages (`GrainCall` out, `GrainAnswer` back, protobuf)
//! in length-prefixed frames matched by call id, on a connection owned by
//! the calling thread's runtime:
//!
//! ```text
//! call:   [u32 length][u64 call id][u8 type][u32 deadline ms][GrainCall]
//! answer: [u32 length][u64 call id][GrainAnswer]
//! ```
//!
//! `length` counts the bytes after itself. Types: `CALL` (a grain call) and
//! `PING` (answered at once with an empty answer; the probe of the
//! transport alone). A call's deadline travels with it; the callee stops
//! waiting for the grain when it passes.
//!
//! The link runs on the member port, beside the gRPC services: with mutual
//! TLS a link is a connection whose handshake chose the ALPN protocol
//! [`PROTOCOL`] (only members' keys may open one: it is refused after the
//! handshake otherwise, and cut when the key stops being trusted, like any
//! member connection); in plaintext (`--insecure-cluster`) a connection
//! that starts with [`PREFACE`] instead of HTTP/2's, and is answered with
//! it. A member from before the link answers neither (it chooses HTTP/2
//! in the handshake, or closes on the preface): the caller then sends the
//! call as `Grains/Call` over gRPC.
//!
//! Each connection is served on one of the callee's grain threads, and the
//! caller chooses which: right after the handshake (or the preface) it
//! sends a hello, and the callee answers where the connection now lives:
//!
//! ```text
//! hello:  [u64 n]                  serve me on thread n mod threads
//! placed: [u32 threads][u32 thread]
//! ```
//!
//! A grain lives on thread [`granary_grain::thread_of`] of its id, so a
//! caller that keeps one connection per callee thread sends each call on
//! the connection read by the thread that hosts its grain: the call and
//! its answer never cross threads on the callee. A member of version 1
//! ([`PROTOCOL_1`], [`PREFACE_1`]: no hello, connections served on its
//! threads in turn) is still spoken to, on one connection.
//!
//! Bounds: a frame is at most [`MAX_FRAME`] bytes (a larger length closes
//! the connection before anything is buffered); at most [`IN_FLIGHT`] calls
//! run at once per connection on the callee (it stops reading past that,
//! so TCP pushes back) and wait for an answer per connection on the caller
//! (a call beyond waits for a slot, within its deadline).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::proto::grains as pb;
use crate::security::tls::{Capped, SpokenSlot};

/// The messages a link carries (`proto/grains.proto`).
pub use crate::proto::grains as messages;

/// The ALPN protocol of a link under mutual TLS.
pub const PROTOCOL: &[u8] = b"granary-call/2";

/// The link before the hello (still served and spoken).
pub const PROTOCOL_1: &[u8] = b"granary-call/1";

/// What a plaintext link sends first (HTTP/2's preface starts `PRI`).
pub const PREFACE: &[u8; 16] = b"GRANARY-CALL/2\r\n";

/// The plaintext preface before the hello.
pub const PREFACE_1: &[u8; 16] = b"GRANARY-CALL/1\r\n";

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most grain threads a callee may say it has (a larger count is refused
/// as a broken answer): the most a node's `threads` setting allows.
const MAX_THREADS: u32 = crate::config::MAX_THREADS as u32;

/// Where a callee serves a connection: its thread `thread` of `threads`
/// (its answer to the hello).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub threads: u32,
    pub thread: u32,
}

impl Placed {
    /// A callee with one thread (or one that does not say: version 1).
    pub const ONE: Placed = Placed {
        threads: 1,
        thread: 0,
    };

    /// The answer's bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&self.threads.to_be_bytes());
        bytes[4..].copy_from_slice(&self.thread.to_be_bytes());
        bytes
    }

    /// An answer read off a connection; `None` if it makes no sense.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Placed> {
        let threads = u32::from_be_bytes(bytes[..4].try_into().ok()?);
        let thread = u32::from_be_bytes(bytes[4..].try_into().ok()?);
        ((1..=MAX_THREADS).contains(&threads) && thread < threads)
            .then_some(Placed { threads, thread })
    }
}

/// Largest frame either side sends or accepts (the gRPC services' message
/// bound, plus the header).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Calls at once per connection (the gRPC server's per-connection bound).
pub const IN_FLIGHT: usize = 256;

/// A grain call.
const CALL: u8 = 1;
/// A ping: answered at once, empty.
const PING: u8 = 2;

/// Bytes of a call frame after its length and before its message.
const CALL_HEADER: usize = 8 + 1 + 4;

/// Sets keepalive probes and a user timeout on a member connection, so a
/// peer that vanished without closing (a host gone, a path cut) is found
/// within about half a minute and the connection replaced, rather than
/// after the kernel's retransmissions give up (many minutes).
pub fn keep_alive(tcp: &tokio::net::TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let socket = socket2::SockRef::from(tcp);
    let set = socket
        .set_tcp_keepalive(&probes)
        .and_then(|()| socket.set_tcp_user_timeout(Some(Duration::from_secs(20))));
    if let Err(err) = set {
        tracing::debug!(error = %err, "cannot set keepalive on a member connection");
    }
}

/// A connection a link runs on: TLS or plain TCP.
pub trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> LinkIo for T {}

/// What opening a link's connection gave.
pub enum Opened {
    /// A connection that speaks the link, and where the callee serves it
    /// (`None`: a member of version 1, which does not say).
    Link(Box<dyn LinkIo>, Option<Placed>),
    /// The member answered but does not speak the link (a version from
    /// before it: its TLS handshake chose HTTP/2).
    NotSpoken,
}

/// Opens a link's connection with the hello it is given (see
/// `dial::Dialer::link`).
pub type Connect = Arc<
    dyn Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = Result<Opened, String>> + Send>>
        + Send
        + Sync,
>;

/// Why a call on a link got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The member does not speak the link: nothing was sent (use
    /// `Grains/Call` over gRPC).
    NotSpoken,
    /// The call was not sent: no connection could be opened, or the ones
    /// tried closed before it left. Nothing ran; it may go again.
    Unsent(String),
    /// The call was sent and its answer did not come: its outcome is
    /// unknown.
    Failed(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::NotSpoken => f.write_str("the member does not speak the grain-call link"),
            LinkError::Unsent(why) | LinkError::Failed(why) => f.write_str(why),
        }
    }
}

/// Why an exchange on a connection got no answer.
enum Exchange {
    /// The connection had closed: nothing was sent.
    Unsent,
    /// Sent (or past its deadline): the outcome is unknown.
    Failed(String),
}

/// How long a link remembers that its member does not speak it before it
/// dials again (the member may have been upgraded meanwhile).
const NOT_SPOKEN_FOR: Duration = Duration::from_secs(10);

/// The next whole frame in `input`, if it holds one: its call id and the
/// rest. A length past `MAX_FRAME` (or too short for an id) is an error.
fn next_frame(input: &mut BytesMut) -> io::Result<Option<(u64, Bytes)>> {
    let Some(head) = input.get(..4) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
    if !(8..=MAX_FRAME).contains(&length) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes (8..={MAX_FRAME})"),
        ));
    }
    if input.len() < 4 + length {
        input.reserve(4 + length - input.len());
        return Ok(None);
    }
    input.advance(4);
    let mut frame = input.split_to(length).freeze();
    let id = frame.get_u64();
    Ok(Some((id, frame)))
}

/// The frames a connection reads, one at a time.
struct FrameReader<R> {
    read: R,
    input: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(read: R) -> Self {
        FrameReader {
            read,
            input: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next frame (its call id and the rest); `None` once the
    /// connection ended or sent a frame out of bounds.
    async fn next(&mut self) -> Option<(u64, Bytes)> {
        loop {
            match next_frame(&mut self.input) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "link: a bad frame; closing the connection");
                    return None;
                }
            }
            match self.read.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A frame to write, and the call slot it holds until it is written (an
/// answer the peer does not read keeps its slot, so the callee stops
/// reading calls rather than queueing answers without bound).
struct Outgoing {
    frame: Bytes,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Writes the frames `frames` yields, as many per write as have gathered,
/// until the stream fails, every sender is gone, or `stop` fires.
async fn write_frames(
    mut write: impl AsyncWrite + Unpin,
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut written = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            frame = frames.recv() => frame,
            _ = &mut stop => None,
        };
        let Some(first) = first else { break };
        out.extend_from_slice(&first.frame);
        written.push(first);
        while out.len() < 256 * 1024
            && let Ok(next) = frames.try_recv()
        {
            out.extend_from_slice(&next.frame);
            written.push(next);
        }
        if write.write_all(&out).await.is_err() || write.flush().await.is_err() {
            break;
        }
        out.clear();
        written.clear();
    }
    let _ = write.shutdown().await;
}

/// The caller's side of links to one member: a connection per callee
/// grain thread (up to a budget), each opened on first use and again after
/// it fails, on the runtime the link was made on. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    /// Who is at the other end, for messages.
    address: String,
    connect: Connect,
    /// The runtime the connection's tasks run on.
    runtime: tokio::runtime::Handle,
    live: Mutex<Lines>,
    /// Connections beyond a link's first that may be opened, shared with
    /// the other links to the member (`None`: no bound).
    spare: Option<Arc<Spares>>,
    /// Until when the member is taken not to speak the link.
    not_spoken: Mutex<Option<Instant>>,
    /// The last connection attempt that failed: when, and why.
    failed: Mutex<Option<(Instant, String)>>,
    /// One connection attempt at a time.
    dialing: Arc<tokio::sync::Mutex<()>>,
    /// The link's place in a budget of links, if it takes one: given back
    /// when the link goes (`Link::holding`).
    _place: Option<SpareUnit>,
}

/// A count held in units, at most `limit` at once (which may change: a
/// cluster that grows gives each peer fewer; units held stay until they
/// are dropped). The connections beyond their first that the links to one
/// member may hold together; the thread-owned links to one member.
pub struct Spares {
    held: std::sync::atomic::AtomicUsize,
    limit: std::sync::atomic::AtomicUsize,
}

impl Spares {
    pub fn new(limit: usize) -> Arc<Spares> {
        Arc::new(Spares {
            held: 0.into(),
            limit: limit.into(),
        })
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    /// How many more may be taken now.
    pub fn left(&self) -> usize {
        let held = self.held.load(Ordering::Acquire);
        self.limit.load(Ordering::Acquire).saturating_sub(held)
    }

    /// One more, if the limit allows it; given back when dropped.
    pub fn take(self: &Arc<Self>) -> Option<SpareUnit> {
        let limit = self.limit.load(Ordering::Acquire);
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < limit).then_some(held + 1)
            })
            .ok()
            .map(|_| SpareUnit(self.clone()))
    }
}

/// One unit of a [`Spares`]: a member's spare connection, held by the
/// connection it opened while the link keeps it, or a thread-owned link's
/// place in its peer's budget, held by the link. Given back when dropped
/// (the connection replaced by the first of a restarted callee, the dial
/// that took it failed, the link dropped: a thread whose runtime ended
/// drops its links when it next asks for one, or when it exits).
pub struct SpareUnit(Arc<Spares>);

impl Drop for SpareUnit {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection a link keeps, and the spare one it holds, if any.
struct Line {
    connection: Arc<Connection>,
    _spare: Option<SpareUnit>,
}

impl Line {
    fn is_open(&self) -> bool {
        !self.connection.closed.load(Ordering::Acquire)
    }
}

/// A link's connections, by the callee thread that serves each.
#[derive(Default)]
struct Lines {
    /// The callee's grain threads (0 until a connection said; 1 for a
    /// member of version 1).
    threads: u64,
    by_thread: Vec<Option<Line>>,
}

impl Lines {
    /// The callee thread of a grain whose id hashes to `hash`, once known.
    fn thread(&self, hash: u64) -> Option<usize> {
        (self.threads > 0).then(|| (hash % self.threads) as usize)
    }

    /// The open connection for a grain of `hash`: the one its thread
    /// reads, or `any`, the first open one.
    fn live(&self, hash: u64, any: bool) -> Option<Arc<Connection>> {
        let open = |line: &&Line| line.is_open();
        let own = self
            .thread(hash)
            .and_then(|t| self.by_thread[t].as_ref().filter(open));
        own.or_else(|| {
            any.then(|| self.by_thread.iter().flatten().find(open))
                .flatten()
        })
        .map(|line| line.connection.clone())
    }

    /// Whether a connection for a grain of `hash` would be one more than
    /// this link has had: its thread never had one, another did. (Each
    /// such connection holds one of the spare ones.)
    fn needs_spare(&self, hash: u64) -> bool {
        self.thread(hash).is_some_and(|t| {
            self.by_thread[t].is_none() && self.by_thread.iter().any(Option::is_some)
        })
    }

    /// What the hello asks for to reach a grain of `hash`: its thread by
    /// number once the callee's thread count is known, the grain's hash
    /// before.
    fn hello(&self, hash: u64) -> u64 {
        self.thread(hash).map_or(hash, |t| t as u64)
    }

    /// Keeps `connection`, opened with `hello` (holding `spare`, if it
    /// took one), served on `placed`. A callee whose thread count changed
    /// (it restarted) has the old connections closed (their spares come
    /// back; the new one is the first again, and needs none). `None`: a
    /// member of version 1, taken to have one thread, unless it said more
    /// before (a member that answered version 2 and then closed on its
    /// preface, say evicting it as pending: the connection then serves the
    /// thread it was asked for, crossing threads on the callee).
    fn keep(
        &mut self,
        connection: Arc<Connection>,
        hello: u64,
        placed: Option<Placed>,
        mut spare: Option<SpareUnit>,
    ) {
        let placed = match placed {
            Some(placed) => placed,
            None if self.threads > 1 => Placed {
                threads: self.threads as u32,
                thread: (hello % self.threads) as u32,
            },
            None => Placed::ONE,
        };
        if u64::from(placed.threads) != self.threads {
            for old in self.by_thread.iter_mut().filter_map(Option::take) {
                old.connection.close();
            }
            spare = None;
            self.threads = u64::from(placed.threads);
            self.by_thread = (0..placed.threads).map(|_| None).collect();
        }
        let line = Line {
            connection,
            _spare: spare,
        };
        if let Some(old) = self.by_thread[placed.thread as usize].replace(line) {
            old.connection.close();
        }
    }
}

/// One connection of a link.
struct Connection {
    frames: mpsc::UnboundedSender<Outgoing>,
    /// Calls sent and not answered, by id. `None` once the connection has
    /// closed: nothing waits on it any more.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<Bytes>>>>,
    next: AtomicU64,
    slots: Arc<Semaphore>,
    closed: AtomicBool,
    /// Stops the writer (dropped by `close`), which ends the connection.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Connection {
    /// Starts the tasks of a connection on `io`, on the current runtime.
    fn start(io: Box<dyn LinkIo>) -> Arc<Connection> {
        let (read, write) = tokio::io::split(io);
        let (frames, queued) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let connection = Arc::new(Connection {
            frames,
            waiting: Mutex::new(Some(HashMap::new())),
            next: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            closed: AtomicBool::new(false),
            stop: Mutex::new(Some(stop)),
        });
        // A write that fails closes the connection too (the reader may not
        // hear of it until much later).
        let writing = connection.clone();
        tokio::spawn(async move {
            write_frames(write, queued, stopped).await;
            writing.close();
        });
        tokio::spawn(connection.clone().read_answers(read));
        connection
    }

    /// Marks the connection closed, wakes every call waiting on it and
    /// stops its writer (the callee then closes its side, which ends the
    /// reader).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders wakes every waiting call.
        lock(&self.waiting).take();
        lock(&self.stop).take();
    }

    /// Hands each answer to its call until the connection ends; then
    /// every call still waiting hears that it closed, and the writer stops.
    async fn read_answers(self: Arc<Self>, read: impl AsyncRead + Unpin) {
        let mut frames = FrameReader::new(read);
        while let Some((id, answer)) = frames.next().await {
            let waiter = lock(&self.waiting).as_mut().and_then(|w| w.remove(&id));
            if let Some(waiter) = waiter {
                let _ = waiter.send(answer);
            }
        }
        self.close();
    }

    /// Sends one frame of `kind` and waits for its answer until `deadline`.
    async fn exchange(
        &self,
        kind: u8,
        deadline: Instant,
        message: Option<&pb::GrainCall>,
        address: &str,
    ) -> Result<Bytes, Exchange> {
        let Ok(Ok(_slot)) =
            tokio::time::timeout_at(deadline.into(), self.slots.clone().acquire_owned()).await
        else {
            return Err(Exchange::Failed(format!(
                "{address}: no free call slot on the link in time"
            )));
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let size = message.map_or(0, Message::encoded_len);
        let mut frame = BytesMut::with_capacity(4 + CALL_HEADER + size);
        frame.put_u32((CALL_HEADER + size) as u32);
        frame.put_u64(id);
        frame.put_u8(kind);
        let left = deadline.saturating_duration_since(Instant::now());
        frame.put_u32(left.as_millis().min(u128::from(u32::MAX)) as u32);
        if let Some(message) = message {
            message
                .encode(&mut frame)
                .map_err(|e| Exchange::Failed(format!("cannot encode the call: {e}")))?;
        }
        if frame.len() > 4 + MAX_FRAME {
            return Err(Exchange::Failed(format!(
                "the call is larger than {MAX_FRAME} bytes"
            )));
        }
        let (answer, answered) = oneshot::channel();
        match lock(&self.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, answer),
            None => return Err(Exchange::Unsent),
        };
        // However this call ends (answered, timed out, or dropped by its
        // caller), nothing is left waiting for its id.
        let _forget = Forget {
            waiting: &self.waiting,
            id,
        };
        let outgoing = Outgoing {
            frame: frame.freeze(),
            _slot: None,
        };
        if self.frames.send(outgoing).is_err() {
            return Err(Exchange::Unsent);
        }
        match tokio::time::timeout_at(deadline.into(), answered).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(Exchange::Failed(format!(
                "the link to {address} closed before the answer came"
            ))),
            Err(_) => Err(Exchange::Failed(format!(
                "{address} did not answer in time"
            ))),
        }
    }

    /// How many calls wait for an answer (none once it closed).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.waiting).as_ref().map_or(0, HashMap::len)
    }
}

/// Removes a call's entry from a connection's waiting calls when dropped.
struct Forget<'a> {
    waiting: &'a Mutex<Option<HashMap<u64, oneshot::Sender<Bytes>>>>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = lock(self.waiting).as_mut() {
            waiting.remove(&self.id);
        }
    }
}

impl Link {
    /// A link whose connections `connect` opens, run on the current
    /// runtime, with a connection for each of the callee's threads. Call
    /// within a runtime.
    pub fn new(address: &str, connect: Connect) -> Link {
        Link::with_spare(address, connect, None)
    }

    /// The same, whose connections beyond its first each take one of
    /// `spare` (shared by the links to the member); once none is left,
    /// calls share the connections open.
    pub fn with_spare(address: &str, connect: Connect, spare: Option<Arc<Spares>>) -> Link {
        Link::holding(address, connect, spare, None)
    }

    /// The same, holding `place` (its place in a budget of links) until
    /// the last clone of the link is dropped.
    pub fn holding(
        address: &str,
        connect: Connect,
        spare: Option<Arc<Spares>>,
        place: Option<SpareUnit>,
    ) -> Link {
        Link {
            inner: Arc::new(LinkInner {
                address: address.to_owned(),
                connect,
                runtime: tokio::runtime::Handle::current(),
                live: Mutex::new(Lines::default()),
                spare,
                not_spoken: Mutex::new(None),
                failed: Mutex::new(None),
                dialing: Arc::new(tokio::sync::Mutex::new(())),
                _place: place,
            }),
        }
    }

    /// Sends `call` and waits for its answer, for at most `timeout`, on
    /// the connection of the callee thread that hosts its grain. An error
    /// is the transport's (`Unsent`: nothing ran; `Failed`: the outcome is
    /// unknown); the grain's own errors are in the answer.
    pub async fn call(
        &self,
        call: &pb::GrainCall,
        timeout: Duration,
    ) -> Result<pb::GrainAnswer, LinkError> {
        let deadline = Instant::now() + timeout;
        let hash = granary_grain::placement_hash(&call.id);
        let answer = self.exchange(CALL, deadline, Some(call), hash).await?;
        pb::GrainAnswer::decode(answer).map_err(|e| {
            LinkError::Failed(format!(
                "{}: an answer that does not decode: {e}",
                self.inner.address
            ))
        })
    }

    /// One ping's round trip, for at most `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, LinkError> {
        let started = Instant::now();
        // Any open connection (a thread's number is its hash): a ping
        // opens no connection a call would not.
        let open = self.threads_open().first().map_or(0, |&t| t as u64);
        self.exchange(PING, started + timeout, None, open).await?;
        Ok(started.elapsed())
    }

    /// The callee threads this link has a connection open to.
    pub fn threads_open(&self) -> Vec<usize> {
        let lines = lock(&self.inner.live);
        (0..lines.by_thread.len())
            .filter(|&t| lines.by_thread[t].as_ref().is_some_and(Line::is_open))
            .collect()
    }

    /// One exchange for a grain of `hash` on its live connection. A
    /// connection found closed before anything was sent on it is replaced
    /// once.
    async fn exchange(
        &self,
        kind: u8,
        deadline: Instant,
        message: Option<&pb::GrainCall>,
        hash: u64,
    ) -> Result<Bytes, LinkError> {
        let address = &self.inner.address;
        for _ in 0..2 {
            let connection = self.connection(deadline, hash).await?;
            match connection.exchange(kind, deadline, message, address).await {
                Ok(answer) => return Ok(answer),
                Err(Exchange::Unsent) => continue,
                Err(Exchange::Failed(why)) => return Err(LinkError::Failed(why)),
            }
        }
        Err(LinkError::Unsent(format!(
            "the link to {address} closed before the call was sent"
        )))
    }

    /// The live connection for a grain of `hash`, opened now if there is
    /// none.
    async fn connection(&self, deadline: Instant, hash: u64) -> Result<Arc<Connection>, LinkError> {
        if lock(&self.inner.not_spoken).is_some_and(|until| Instant::now() < until) {
            return Err(LinkError::NotSpoken);
        }
        self.open(deadline, hash)
            .await
            .map_err(LinkError::Unsent)?
            .ok_or_else(|| {
                *lock(&self.inner.not_spoken) = Some(Instant::now() + NOT_SPOKEN_FOR);
                LinkError::NotSpoken
            })
    }

    /// The live connection for a grain of `hash`: its thread's, or while
    /// its thread has none and no spare one is left, any open one.
    fn current(&self, hash: u64) -> Option<Arc<Connection>> {
        let lines = lock(&self.inner.live);
        lines.live(hash, false).or_else(|| {
            let exhausted = (self.inner.spare.as_ref()).is_some_and(|spare| spare.left() == 0);
            (exhausted && lines.needs_spare(hash))
                .then(|| lines.live(hash, true))
                .flatten()
        })
    }

    /// Takes one spare connection: `Err` if none is left, `Ok(None)` for
    /// a link without a bound.
    fn take_spare(&self) -> Result<Option<SpareUnit>, ()> {
        match &self.inner.spare {
            None => Ok(None),
            Some(spare) => spare.take().map(Some).ok_or(()),
        }
    }

    /// The live connection for a grain of `hash` (see `current`), opened
    /// now if there is none; `None` if the member does not speak the link.
    /// One attempt at a time: callers that waited for one that failed hear
    /// its failure rather than try again each in turn.
    async fn open(&self, deadline: Instant, hash: u64) -> Result<Option<Arc<Connection>>, String> {
        let inner = &self.inner;
        if let Some(connection) = self.current(hash) {
            return Ok(Some(connection));
        }
        let asked = Instant::now();
        let too_late = || format!("{}: could not connect in time", inner.address);
        let dialing = tokio::time::timeout_at(deadline.into(), inner.dialing.clone().lock_owned())
            .await
            .map_err(|_| too_late())?;
        if let Some(connection) = self.current(hash) {
            return Ok(Some(connection));
        }
        if let Some((at, why)) = lock(&inner.failed).as_ref()
            && *at >= asked
        {
            // Another connection would not open: one that is open serves.
            return match lock(&inner.live).live(hash, true) {
                Some(connection) => Ok(Some(connection)),
                None => Err(why.clone()),
            };
        }
        let (hello, spare) = {
            let lines = lock(&inner.live);
            let took = if lines.needs_spare(hash) {
                self.take_spare()
            } else {
                Ok(None)
            };
            match took {
                Ok(spare) => (lines.hello(hash), spare),
                // None spare: an open connection serves, else one is
                // opened again to a thread the link had one to.
                Err(()) => {
                    if let Some(connection) = lines.live(hash, true) {
                        return Ok(Some(connection));
                    }
                    let had = lines.by_thread.iter().position(Option::is_some);
                    (had.map_or(hash, |t| t as u64), None)
                }
            }
        };
        // The attempt runs to its end on the link's runtime (the
        // connection's socket and tasks belong there, whichever thread
        // asks), holding the turn, even if this caller stops waiting: what
        // it opens is kept for the next call.
        let (link, connect) = (inner.clone(), inner.connect.clone());
        let attempt = inner.runtime.spawn(async move {
            let _turn = dialing;
            let opened = match connect(hello).await {
                Ok(Opened::Link(io, placed)) => {
                    let connection = Connection::start(io);
                    lock(&link.live).keep(connection.clone(), hello, placed, spare);
                    Ok(Some(connection))
                }
                // (A spare it took comes back as it is dropped.)
                Ok(Opened::NotSpoken) => Ok(None),
                Err(why) => Err(format!("{}: {why}", link.address)),
            };
            if let Err(why) = &opened {
                *lock(&link.failed) = Some((Instant::now(), why.clone()));
            }
            opened
        });
        let opened = tokio::time::timeout_at(deadline.into(), attempt)
            .await
            .map_err(|_| too_late())
            .and_then(|joined| joined.map_err(|e| format!("{}: {e}", inner.address)))
            .and_then(|opened| opened);
        match opened {
            Ok(Some(connection)) => Ok(Some(connection)),
            // Another connection would not open (or the member now says it
            // does not speak the link): one that is open still serves.
            failed => match lock(&inner.live).live(hash, true) {
                Some(connection) => Ok(Some(connection)),
                None => failed,
            },
        }
    }
}

/// What answers the calls a link carries (the `Grains` service).
pub trait Answer: Send + Sync + 'static {
    /// The answer to `call`; `Err` names a malformed call (nothing ran).
    fn answer(
        &self,
        call: pb::GrainCall,
    ) -> impl Future<Output = Result<pb::GrainAnswer, String>> + Send;
}

/// Serves the calls of one link connection until it closes.
pub async fn serve<A: Answer>(io: impl LinkIo, answers: Arc<A>) {
    let (read, write) = tokio::io::split(io);
    let (frames, queued) = mpsc::unbounded_channel::<Outgoing>();
    // The writer ends when the reader and every call it started are done
    // (every sender of `frames` is gone): its stop never fires.
    let (keep, never) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _keep = keep;
        write_frames(write, queued, never).await;
    });
    // A slot is held from a frame's arrival until its answer is written.
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut incoming = FrameReader::new(read);
    while let Some((id, mut frame)) = incoming.next().await {
        if frame.len() < 5 {
            tracing::debug!("link: a frame without its header; closing the connection");
            break;
        }
        let kind = frame.get_u8();
        let deadline =
            Instant::now() + Duration::from_millis(u64::from(frame.get_u32())).min(MAX_DEADLINE);
        if kind != PING && kind != CALL {
            tracing::debug!(
                kind,
                "link: a frame of no known type; closing the connection"
            );
            break;
        }
        // Past `IN_FLIGHT` the reading waits: the caller's writes back up
        // into its socket.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        if kind == PING {
            let _ = frames.send(Outgoing {
                frame: answer_frame(id, None),
                _slot: Some(slot),
            });
            continue;
        }
        let (answers, frames) = (answers.clone(), frames.clone());
        tokio::spawn(async move {
            let answer = answer_call(answers.as_ref(), frame, deadline).await;
            let _ = frames.send(Outgoing {
                frame: answer_frame(id, Some(&answer)),
                _slot: Some(slot),
            });
        });
    }
}

/// Serves a link connection, first telling a version 2 caller where
/// (`placed`; `None` for version 1, which is told nothing).
pub async fn serve_placed<A: Answer>(mut io: impl LinkIo, answers: Arc<A>, placed: Option<Placed>) {
    if let Some(placed) = placed
        && tell(&mut io, placed).await.is_err()
    {
        return;
    }
    serve(io, answers).await
}

/// Longest deadline a call may carry (the gRPC services' own bound).
const MAX_DEADLINE: Duration = Duration::from_secs(10);

/// The answer to the call `frame` holds, given by `deadline`.
async fn answer_call<A: Answer>(answers: &A, frame: Bytes, deadline: Instant) -> pb::GrainAnswer {
    use pb::grain_error::Error;
    if Instant::now() >= deadline {
        // Its caller has stopped waiting: it does not run.
        return error(Error::Unavailable(
            "the call's deadline passed before it could run; it did not run".into(),
        ));
    }
    let answer = match pb::GrainCall::decode(frame) {
        Ok(call) => match tokio::time::timeout_at(deadline.into(), answers.answer(call)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(invalid)) => error(Error::Invalid(invalid)),
            Err(_) => error(Error::OutcomeUnknown(
                "the call's deadline passed before the grain answered".into(),
            )),
        },
        Err(e) => error(Error::Invalid(format!("the call does not decode: {e}"))),
    };
    if answer.encoded_len() + 8 > MAX_FRAME {
        return error(Error::Invalid(format!(
            "the answer is larger than {MAX_FRAME} bytes"
        )));
    }
    answer
}

fn error(error: pb::grain_error::Error) -> pb::GrainAnswer {
    pb::GrainAnswer {
        result: Some(pb::grain_answer::Result::Error(pb::GrainError {
            error: Some(error),
        })),
    }
}

fn answer_frame(id: u64, answer: Option<&pb::GrainAnswer>) -> Bytes {
    let size = answer.map_or(0, Message::encoded_len);
    let mut frame = BytesMut::with_capacity(4 + 8 + size);
    frame.put_u32((8 + size) as u32);
    frame.put_u64(id);
    if let Some(answer) = answer {
        answer.encode(&mut frame).expect("the buffer has room");
    }
    frame.freeze()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts plaintext connections (`--insecure-cluster`) on `listener`:
/// those that begin with [`PREFACE`] and a hello, or [`PREFACE_1`], get
/// their preface back and go to `links` (which serves them, where the
/// hello asks if there is one), the rest come out for the gRPC server. Until a
/// connection has shown which it is, it is pending under `limits` (as a
/// TLS connection in its handshake: at most `max_pending`, per source
/// `max_pending_per_source`, the oldest closed for a new one), and one
/// that sends nothing within `limits.handshake_timeout` is closed (an
/// HTTP/2 client speaks first too). Once it has shown which, it holds a
/// place under the caps on plaintext connections in all and per source
/// address ([`crate::security::tls::Spoken`]) while it is open; past
/// either it is closed (and counted in the rate-limited log line).
pub fn plaintext_incoming(
    listener: tokio::net::TcpListener,
    links: impl Fn(Capped<tokio::net::TcpStream>, Option<u64>) + Send + Sync + 'static,
    limits: crate::security::Limits,
) -> impl tokio_stream::Stream<Item = io::Result<Capped<tokio::net::TcpStream>>> {
    let (found, incoming) = mpsc::channel(64);
    let links = Arc::new(links);
    let first_bytes = limits.handshake_timeout;
    let spoken = crate::security::tls::Spoken::new(limits);
    let pending = crate::security::tls::Unproven::new(limits);
    tokio::spawn(async move {
        loop {
            let (tcp, address) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if found.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            keep_alive(&tcp);
            let (found, links, spoken) = (found.clone(), links.clone(), spoken.clone());
            let source = address.ip();
            pending.spawn(
                source,
                "too many not yet speaking",
                move |guard| async move {
                    let mut tcp = tcp;
                    let mut first = [0u8; 1];
                    let is_link =
                        match tokio::time::timeout(first_bytes, tcp.peek(&mut first)).await {
                            Ok(Ok(1)) => first[0] == PREFACE[0],
                            _ => return,
                        };
                    // A place is taken once the connection has shown what
                    // it is in whole: a link while its opening is still
                    // bounded (pending, `first_bytes`), HTTP/2 once its
                    // preface has come (the gRPC server has no deadline on
                    // it, so one stray byte must not hold a place).
                    let take =
                        |guard: &crate::security::tls::PendingGuard| match spoken.take(source) {
                            Ok(slot) => Some(slot),
                            Err(limit) => {
                                guard.dropped(limit);
                                None
                            }
                        };
                    if is_link {
                        let Some(slot) = take(&guard) else { return };
                        let opening = tokio::time::timeout(first_bytes, link_opening(&mut tcp));
                        if let Ok(Some(hello)) = opening.await {
                            drop(guard);
                            links(Capped::new(tcp, slot, bytes::Bytes::new()), hello);
                        }
                    } else {
                        let mut preface = [0u8; HTTP2_PREFACE.len()];
                        let read = tokio::time::timeout(first_bytes, tcp.read_exact(&mut preface));
                        if !matches!(read.await, Ok(Ok(_))) || &preface != HTTP2_PREFACE {
                            // Neither a link nor HTTP/2: nothing here
                            // answers it.
                            return;
                        }
                        let Some(slot) = take(&guard) else { return };
                        // No longer pending; the gRPC server reads the
                        // preface first.
                        drop(guard);
                        let replay = bytes::Bytes::copy_from_slice(&preface);
                        let _ = found.send(Ok(Capped::new(tcp, slot, replay))).await;
                    }
                },
            );
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// Reads a plaintext link's preface (and hello, in version 2) and sends
/// the preface back, which says "I speak the link" (a member from before
/// the link closes instead). `None` if it is no link's; else the hello,
/// if any.
async fn link_opening(tcp: &mut tokio::net::TcpStream) -> Option<Option<u64>> {
    let mut preface = [0u8; PREFACE.len()];
    tcp.read_exact(&mut preface).await.ok()?;
    let hello = if &preface == PREFACE {
        Some(tcp.read_u64().await.ok()?)
    } else if &preface == PREFACE_1 {
        None
    } else {
        return None;
    };
    tcp.write_all(&preface).await.ok()?;
    Some(hello)
}

/// How long a version 2 link may take to send its hello after the TLS
/// handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A link connection taken off the runtime that accepted it, to be
/// registered with the runtime of the thread that serves it.
trait Detached: Send + 'static {
    type Io: LinkIo;
    /// Registers it with the current runtime.
    fn attach(self) -> io::Result<Self::Io>;
}

/// A plaintext link between runtimes, and its place under the caps.
struct DetachedTcp(std::net::TcpStream, SpokenSlot);

impl DetachedTcp {
    fn of(tcp: Capped<tokio::net::TcpStream>) -> io::Result<DetachedTcp> {
        let (tcp, slot) = tcp.into_parts().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a link with bytes still to replay",
            )
        })?;
        Ok(DetachedTcp(tcp.into_std()?, slot))
    }
}

impl Detached for DetachedTcp {
    type Io = Capped<tokio::net::TcpStream>;
    fn attach(self) -> io::Result<Self::Io> {
        let tcp = tokio::net::TcpStream::from_std(self.0)?;
        Ok(Capped::new(tcp, self.1, bytes::Bytes::new()))
    }
}

/// A TLS link between runtimes (see `PeerConnection::detach`).
struct DetachedTls(crate::security::PeerConnection);

impl Detached for DetachedTls {
    type Io = crate::security::PeerConnection;
    fn attach(mut self) -> io::Result<Self::Io> {
        self.0.attach()?;
        Ok(self.0)
    }
}

/// Serves link connections on the grain threads: each on the thread its
/// hello asks for (so the calls it carries find their grains on the thread
/// that reads them), a version 1 link's on the threads in turn (a call's
/// grain then often lives on another thread, and its call and answer cross
/// to it and back). Never on the gRPC thread that accepted them.
pub struct LinkThreads<A> {
    pool: granary_grain::ArbiterPool,
    answers: Arc<A>,
    turn: std::sync::atomic::AtomicUsize,
}

impl<A: Answer> LinkThreads<A> {
    pub fn new(pool: granary_grain::ArbiterPool, answers: Arc<A>) -> Self {
        LinkThreads {
            pool,
            answers,
            turn: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Serves a TLS link `connection` where its hello asks (version 2:
    /// read here first, within [`HELLO_TIMEOUT`], and answered), else on
    /// the next grain thread. Call on the runtime that accepted it.
    pub fn serve(self: &Arc<Self>, mut connection: crate::security::PeerConnection) {
        if connection.alpn() != Some(PROTOCOL) {
            self.hand_over(connection.detach().map(|()| DetachedTls(connection)), None);
            return;
        }
        let threads = self.clone();
        tokio::spawn(async move {
            let hello = tokio::time::timeout(HELLO_TIMEOUT, connection.read_u64()).await;
            let Ok(Ok(hello)) = hello else {
                tracing::debug!("link: no hello in time; closed");
                return;
            };
            let detach =
                |mut c: crate::security::PeerConnection| c.detach().map(|()| DetachedTls(c));
            threads.answer_hello(connection, hello, detach).await;
        });
    }

    /// Serves a plaintext `tcp` where `hello` asks (answered here first),
    /// else on the next grain thread. Call on the runtime that accepted
    /// it.
    pub fn serve_tcp(self: &Arc<Self>, tcp: Capped<tokio::net::TcpStream>, hello: Option<u64>) {
        let Some(hello) = hello else {
            self.hand_over(DetachedTcp::of(tcp), None);
            return;
        };
        let threads = self.clone();
        tokio::spawn(async move {
            threads.answer_hello(tcp, hello, DetachedTcp::of).await;
        });
    }

    /// Tells the caller of a version 2 link `io` where its `hello` places
    /// it, then serves it there (once `detach` took it off this runtime).
    async fn answer_hello<I: AsyncWrite + Unpin, D: Detached>(
        &self,
        mut io: I,
        hello: u64,
        detach: impl FnOnce(I) -> io::Result<D>,
    ) {
        let threads = self.pool.len() as u64;
        let placed = Placed {
            threads: threads as u32,
            thread: (hello % threads) as u32,
        };
        if tell(&mut io, placed).await.is_ok() {
            self.hand_over(detach(io), Some(placed.thread as usize));
        }
    }

    /// Serves a connection taken off the accepting runtime on grain thread
    /// `thread` (`None`: the next in turn).
    fn hand_over(&self, connection: io::Result<impl Detached>, thread: Option<usize>) {
        let connection = match connection {
            Ok(connection) => connection,
            Err(err) => {
                tracing::debug!(error = %err, "link: the connection could not move; closed");
                return;
            }
        };
        let thread = thread.unwrap_or_else(|| self.turn.fetch_add(1, Ordering::Relaxed));
        let answers = self.answers.clone();
        let placed = self.pool.spawn_on(thread, move || async move {
            match connection.attach() {
                Ok(io) => serve(io, answers).await,
                Err(err) => {
                    tracing::debug!(error = %err, "link: the connection could not move; closed")
                }
            }
        });
        if !placed {
            tracing::debug!("link: the grain threads have stopped; connection closed");
        }
    }
}

/// Tells a version 2 link's caller where its connection is served
/// (flushed: TLS holds its records back until then).
async fn tell(io: &mut (impl AsyncWrite + Unpin), placed: Placed) -> io::Result<()> {
    io.write_all(&placed.to_bytes()).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_stream::StreamExt;

    use super::*;

    /// Answers a call with its command and its id as the version; `bad`
    /// is malformed, `never` never answers, `wait` waits for the gate.
    struct Echo {
        running: AtomicUsize,
        most: AtomicUsize,
        gate: Semaphore,
        reached: tokio::sync::Notify,
        reach: AtomicUsize,
    }

    impl Default for Echo {
        fn default() -> Self {
            Echo {
                running: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                gate: Semaphore::new(0),
                reached: tokio::sync::Notify::new(),
                reach: AtomicUsize::new(0),
            }
        }
    }

    impl Answer for Echo {
        async fn answer(&self, call: pb::GrainCall) -> Result<pb::GrainAnswer, String> {
            if call.kind == "bad" {
                return Err("kind: bad".into());
            }
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            if now == self.reach.load(Ordering::SeqCst) {
                self.reached.notify_one();
            }
            match call.kind.as_str() {
                "never" => std::future::pending::<()>().await,
                "wait" => drop(self.gate.acquire().await),
                _ => {}
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(pb::GrainAnswer {
                result: Some(pb::grain_answer::Result::Ok(pb::GrainReply {
                    reply: call.command,
                    version: call.id.parse().unwrap_or_default(),
                })),
            })
        }
    }

    fn call(kind: &str, id: u64) -> pb::GrainCall {
        pb::GrainCall {
            kind: kind.into(),
            id: id.to_string(),
            command: id.to_be_bytes().repeat(3),
            ..Default::default()
        }
    }

    fn reply(answer: pb::GrainAnswer) -> (Vec<u8>, u64) {
        match answer.result {
            Some(pb::grain_answer::Result::Ok(reply)) => (reply.reply, reply.version),
            other => panic!("not a reply: {other:?}"),
        }
    }

    /// A call on `link` is answered (with `id` back).
    async fn assert_echoes(link: &Link, id: u64) {
        let answer = link.call(&call("echo", id), Duration::from_secs(5)).await;
        assert_eq!(
            reply(answer.expect("an answer")),
            (id.to_be_bytes().repeat(3), id)
        );
    }

    /// A plaintext member port serving `echo`, and what it passes on.
    async fn port(
        echo: Arc<Echo>,
    ) -> (
        String,
        impl tokio_stream::Stream<Item = io::Result<Capped<TcpStream>>>,
    ) {
        port_with(echo, crate::security::Limits::default()).await
    }

    /// The same under `limits`.
    async fn port_with(
        echo: Arc<Echo>,
        limits: crate::security::Limits,
    ) -> (
        String,
        impl tokio_stream::Stream<Item = io::Result<Capped<TcpStream>>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let passed = plaintext_incoming(
            listener,
            move |tcp, hello: Option<u64>| {
                let placed = hello.map(|_| Placed::ONE);
                tokio::spawn(serve_placed(tcp, echo.clone(), placed));
            },
            limits,
        );
        (address, passed)
    }

    /// A connection to `address` from `source` (any loopback address).
    async fn connect_from(address: &str, source: &str) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(address.parse().unwrap()).await.unwrap()
    }

    /// A version 1 link from `source`, or `None` if the port closed the
    /// connection instead of sending the preface back.
    async fn link_from(address: &str, source: &str) -> Option<TcpStream> {
        let mut tcp = connect_from(address, source).await;
        tcp.write_all(PREFACE_1).await.ok()?;
        let mut preface = [0u8; PREFACE.len()];
        let back = tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut preface));
        match back.await {
            Ok(Ok(_)) => {
                assert_eq!(&preface, PREFACE_1, "the preface comes back");
                Some(tcp)
            }
            Ok(Err(_)) => None,
            Err(_) => panic!("neither served nor closed within 10 s"),
        }
    }

    // Other loopback addresses than 127.0.0.1 answer on Linux only.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn plaintext_connections_are_capped_in_all_and_per_source_address() {
        // In all 8 + 2 = 10; from one address 8 * 3 / 4 = 6.
        let limits = crate::security::Limits {
            max_connections: 8,
            max_strangers: 2,
            ..crate::security::Limits::default()
        };
        let (address, mut passed) = port_with(Arc::default(), limits).await;
        let mut first = Vec::new();
        for n in 0..6 {
            let tcp = link_from(&address, "127.0.0.1").await;
            first.push(tcp.unwrap_or_else(|| panic!("link {n} from one address was closed")));
        }
        assert!(
            link_from(&address, "127.0.0.1").await.is_none(),
            "a seventh link from one address was served"
        );
        // The other addresses still get in, up to the cap in all.
        let mut second = Vec::new();
        for n in 0..3 {
            let tcp = link_from(&address, "127.0.0.2").await;
            second.push(tcp.unwrap_or_else(|| panic!("link {n} from another address was closed")));
        }
        // A connection that sent part of HTTP/2's preface holds none (the
        // gRPC server would wait for the rest for ever); one that sent it
        // whole holds the tenth.
        let mut stray = connect_from(&address, "127.0.0.3").await;
        stray.write_all(b"PRI").await.unwrap();
        let mut http2 = connect_from(&address, "127.0.0.3").await;
        http2.write_all(HTTP2_PREFACE).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(10), passed.next())
            .await
            .expect("passed on in time")
            .expect("passed on")
            .unwrap();
        assert!(
            link_from(&address, "127.0.0.4").await.is_none(),
            "an eleventh connection was served"
        );
        // The links that got in are served.
        let mut frames = BytesMut::new();
        put_call(&mut frames, "echo", 5, 5_000);
        first[0].write_all(&frames).await.unwrap();
        let (id, answer) = next_answer(&mut first[0], &mut BytesMut::new()).await;
        assert_eq!((id, reply(answer)), (5, (5u64.to_be_bytes().repeat(3), 5)));
        // A connection's place comes back when it closes (once the port
        // has read its end).
        drop(first.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if link_from(&address, "127.0.0.1").await.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the closed link's place never came back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop((accepted, stray));
    }

    /// A plaintext link keeps its place while it moves between runtimes
    /// (to the grain thread that serves it), and gives it back once.
    #[tokio::test]
    async fn a_plaintext_link_keeps_its_place_across_runtimes() {
        let spoken = crate::security::tls::Spoken::new(crate::security::Limits {
            max_connections: 1,
            max_strangers: 0,
            ..crate::security::Limits::default()
        });
        let source: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let slot = spoken.take(source).expect("the one place");
        let detached = DetachedTcp::of(Capped::new(tcp, slot, Bytes::new())).unwrap();
        assert!(spoken.take(source).is_err(), "the place left with the link");
        let attached = detached.attach().unwrap();
        assert!(spoken.take(source).is_err(), "the place came with the link");
        drop(attached);
        assert!(spoken.take(source).is_ok(), "the place came back");
        // Bytes still to replay cannot be moved (they would be lost).
        let (tcp, _) = {
            let _other = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            listener.accept().await.unwrap()
        };
        let slot = spoken.take(source).expect("the place again");
        let replaying = Capped::new(tcp, slot, Bytes::from_static(b"PRI"));
        assert!(DetachedTcp::of(replaying).is_err());
        assert!(
            spoken.take(source).is_ok(),
            "given back with the connection"
        );
    }

    fn link(address: &str) -> Link {
        let connect = crate::cluster::dial::Dialer::plaintext()
            .link(address, None, Duration::from_secs(2))
            .expect("an address");
        Link::new(address, connect)
    }

    /// A raw connection to a plaintext member port, past the preface
    /// (sent, and back).
    /// (Version 1's: no hello, which the port still serves.)
    async fn raw_link(address: &str) -> TcpStream {
        let mut tcp = TcpStream::connect(address).await.unwrap();
        tcp.write_all(PREFACE_1).await.unwrap();
        let mut preface = [0u8; PREFACE.len()];
        tcp.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, PREFACE_1, "the preface comes back");
        tcp
    }

    /// Reads a link's opening off a raw server's connection: the preface
    /// and the hello.
    async fn read_opening(tcp: &mut TcpStream) -> u64 {
        let mut preface = [0u8; PREFACE.len()];
        tcp.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, PREFACE);
        tcp.read_u64().await.unwrap()
    }

    /// Answers a link's opening on a raw server's connection: the preface
    /// back, and where it is served.
    async fn answer_opening(tcp: &mut TcpStream) {
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(&Placed::ONE.to_bytes()).await.unwrap();
    }

    /// Appends call `id` of `kind` to `frames`, as a link sends it.
    fn put_call(frames: &mut BytesMut, kind: &str, id: u64, deadline_ms: u32) {
        let call = call(kind, id);
        frames.put_u32((CALL_HEADER + call.encoded_len()) as u32);
        frames.put_u64(id);
        frames.put_u8(CALL);
        frames.put_u32(deadline_ms);
        call.encode(frames).unwrap();
    }

    /// The next answer on a raw link, read into `input`.
    async fn next_answer(tcp: &mut TcpStream, input: &mut BytesMut) -> (u64, pb::GrainAnswer) {
        loop {
            if let Some((id, answer)) = next_frame(input).unwrap() {
                return (id, pb::GrainAnswer::decode(answer).unwrap());
            }
            assert!(tcp.read_buf(input).await.unwrap() > 0, "closed unanswered");
        }
    }

    #[tokio::test]
    async fn calls_in_flight_together_each_get_their_own_answer() {
        let (address, _passed) = port(Arc::default()).await;
        let link = link(&address);
        let calls = (0..600u64).map(|id| {
            let link = link.clone();
            async move {
                let answer = link.call(&call("echo", id), Duration::from_secs(20)).await;
                (id, answer.expect("an answer"))
            }
        });
        for (id, answer) in futures_util::future::join_all(calls).await {
            assert_eq!(reply(answer), (id.to_be_bytes().repeat(3), id));
        }
        link.ping(Duration::from_secs(5)).await.expect("a ping");
        // A malformed call is answered as such; the link goes on.
        let answer = link
            .call(&call("bad", 1), Duration::from_secs(5))
            .await
            .expect("an answer");
        assert!(
            matches!(
                answer.result,
                Some(pb::grain_answer::Result::Error(pb::GrainError {
                    error: Some(pb::grain_error::Error::Invalid(ref why))
                })) if why == "kind: bad"
            ),
            "{answer:?}"
        );
        assert_echoes(&link, 7).await;
    }

    #[tokio::test]
    async fn a_connection_that_is_not_a_link_is_passed_on() {
        let (address, mut passed) = port(Arc::default()).await;
        let mut http2 = TcpStream::connect(&address).await.unwrap();
        http2
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut accepted = passed.next().await.expect("passed on").unwrap();
        // Nothing of it was read: the gRPC server sees the whole preface.
        let mut preface = [0u8; 24];
        accepted.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }

    #[tokio::test]
    async fn a_frame_past_the_bound_closes_the_connection_unread() {
        let (address, _passed) = port(Arc::default()).await;
        for length in [MAX_FRAME as u32 + 1, u32::MAX, 3] {
            let mut tcp = raw_link(&address).await;
            tcp.write_all(&length.to_be_bytes()).await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest));
            assert!(
                matches!(read.await, Ok(Ok(0)) | Ok(Err(_))),
                "length {length}: the connection was not closed"
            );
        }
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_fails_and_the_link_goes_on() {
        let (address, _passed) = port(Arc::default()).await;
        let link = link(&address);
        // The caller stops waiting at its deadline, and the callee stops
        // waiting for the grain at the deadline the call carried: which
        // one speaks first is a race, and both say the outcome is unknown.
        match link
            .call(&call("never", 1), Duration::from_millis(200))
            .await
        {
            Err(err) => assert!(err.to_string().contains("did not answer in time"), "{err}"),
            Ok(answer) => assert!(
                matches!(
                    answer.result,
                    Some(pb::grain_answer::Result::Error(pb::GrainError {
                        error: Some(pb::grain_error::Error::OutcomeUnknown(_))
                    }))
                ),
                "{answer:?}"
            ),
        }
        assert_echoes(&link, 2).await;
        // A call its caller drops (a client gone) leaves nothing waiting.
        // (Polled once: far enough to send it and wait.)
        let connection = lock(&link.inner.live).live(0, true).expect("a connection");
        let never = call("never", 3);
        let mut dropped = Box::pin(link.call(&never, Duration::from_secs(60)));
        let once = std::future::poll_fn(|cx| std::task::Poll::Ready(dropped.as_mut().poll(cx)));
        assert!(once.await.is_pending());
        assert_eq!(connection.waiting(), 1, "sent and waiting");
        drop(dropped);
        assert_eq!(connection.waiting(), 0);
    }

    /// A call no connection opens for is `Unsent` (nothing ran: the
    /// caller may place it again), unlike one sent and unanswered.
    #[tokio::test]
    async fn a_call_to_a_member_that_is_down_is_unsent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let link = link(&address);
        let err = link
            .call(&call("echo", 1), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Unsent(_)), "{err:?}");
    }

    /// A connection that closes fails the calls waiting on it at once
    /// (not at their deadline), and the next call opens a new one.
    #[tokio::test]
    async fn calls_on_a_connection_that_closes_fail_then_the_link_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            // The first connection is dropped once a call arrived.
            let (mut first, _) = listener.accept().await.unwrap();
            read_opening(&mut first).await;
            answer_opening(&mut first).await;
            first.read_exact(&mut [0u8; 4]).await.unwrap();
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            read_opening(&mut second).await;
            answer_opening(&mut second).await;
            serve(second, Arc::new(Echo::default())).await;
        });
        let link = link(&address);
        let first = call("echo", 1);
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            link.call(&first, Duration::from_secs(60)),
        );
        let err = waited
            .await
            .expect("failed before its deadline")
            .unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
        assert_echoes(&link, 3).await;
        server.abort();
    }

    /// Past `IN_FLIGHT` calls the callee stops reading: a caller that
    /// sends more at once gets the rest run as slots free up.
    #[tokio::test]
    async fn the_callee_runs_at_most_in_flight_calls_per_connection() {
        let echo = Arc::new(Echo::default());
        echo.reach.store(IN_FLIGHT, Ordering::SeqCst);
        let (address, _passed) = port(echo.clone()).await;
        let mut tcp = raw_link(&address).await;
        let mut frames = BytesMut::new();
        let sent = IN_FLIGHT + 20;
        for id in 0..sent as u64 {
            put_call(&mut frames, "wait", id, 60_000);
        }
        tcp.write_all(&frames).await.unwrap();
        echo.reached.notified().await;
        echo.gate.add_permits(sent);
        let mut input = BytesMut::new();
        let mut answered = std::collections::BTreeSet::new();
        while answered.len() < sent {
            let (id, answer) = next_answer(&mut tcp, &mut input).await;
            assert_eq!(reply(answer).1, id);
            answered.insert(id);
        }
        assert_eq!(echo.most.load(Ordering::SeqCst), IN_FLIGHT);
    }

    /// A server's and a member's keys (in the directory returned) and an
    /// acceptor for the server that trusts the member and offers
    /// `protocols`.
    fn member_server(
        protocols: &[&[u8]],
    ) -> (
        tempfile::TempDir,
        crate::security::NodeKeys,
        crate::security::NodeKeys,
        tokio_rustls::TlsAcceptor,
    ) {
        use crate::security::{NodeKeys, tls};
        let dir = tempfile::tempdir().unwrap();
        let server = NodeKeys::load_or_create(&dir.path().join("server")).unwrap();
        let client = NodeKeys::load_or_create(&dir.path().join("client")).unwrap();
        let trust = tls::Trust::new([client.fingerprint]);
        let mut config =
            (*tls::server_config(&server, trust, tls::Admission::Trusted).unwrap()).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (dir, server, client, acceptor)
    }

    /// Under mutual TLS a link offers its protocol and HTTP/2: a member
    /// from before the link chooses HTTP/2, and the link says so (the
    /// caller then speaks gRPC) and remembers it rather than dialling
    /// for every call.
    #[tokio::test]
    async fn a_member_that_chooses_http2_does_not_speak_the_link() {
        let (_dir, server, client, acceptor) = member_server(&[b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let server_task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                held.push(acceptor.accept(tcp).await.unwrap());
            }
        });
        let connect = crate::cluster::dial::Dialer::tls(Arc::new(client))
            .link(&address, Some(server.fingerprint), Duration::from_secs(2))
            .unwrap();
        let link = Link::new(&address, connect);
        for _ in 0..3 {
            let err = link.call(&call("echo", 1), Duration::from_secs(5)).await;
            assert_eq!(err.unwrap_err(), LinkError::NotSpoken);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "dialled once");
        server_task.abort();
    }

    /// In plaintext a member from before the link closes on the preface
    /// (HTTP/2 expected): the link says it is not spoken there.
    #[tokio::test]
    async fn a_plaintext_member_that_closes_on_the_preface_does_not_speak_the_link() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut preface = [0u8; PREFACE.len()];
                let _ = tcp.read_exact(&mut preface).await;
                // What an HTTP/2 server sends before it gives up: a
                // SETTINGS frame, then it closes.
                let _ = tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
            }
        });
        let link = link(&address);
        let answer = link.call(&call("echo", 1), Duration::from_secs(5)).await;
        assert_eq!(answer.unwrap_err(), LinkError::NotSpoken);
        server.abort();
    }

    /// A caller that stops sending (half-closes) still gets the answers
    /// of the calls it sent: the callee writes until every call is done.
    #[tokio::test]
    async fn calls_running_when_the_caller_stops_sending_are_still_answered() {
        let echo = Arc::new(Echo::default());
        echo.reach.store(1, Ordering::SeqCst);
        let (address, _passed) = port(echo.clone()).await;
        let mut tcp = raw_link(&address).await;
        let mut frames = BytesMut::new();
        put_call(&mut frames, "wait", 9, 60_000);
        tcp.write_all(&frames).await.unwrap();
        echo.reached.notified().await;
        tcp.shutdown().await.unwrap();
        echo.gate.add_permits(1);
        let (id, answer) = next_answer(&mut tcp, &mut BytesMut::new()).await;
        assert_eq!((id, reply(answer).1), (9, 9));
    }

    /// A connection that opens after its caller gave up is kept for the
    /// next call, not left open and unused on both sides.
    #[tokio::test]
    async fn a_connection_opened_after_its_caller_gave_up_serves_the_next_call() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let gate = Arc::new(tokio::sync::Notify::new());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (opened, counted) = (gate.clone(), accepted.clone());
        let server = tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                read_opening(&mut tcp).await;
                // The preface comes back only when the test says so.
                opened.notified().await;
                answer_opening(&mut tcp).await;
                tokio::spawn(serve(tcp, Arc::new(Echo::default())));
            }
        });
        let link = link(&address);
        let err = link
            .call(&call("echo", 1), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("in time"), "{err}");
        gate.notify_one();
        assert_echoes(&link, 2).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
        server.abort();
    }

    /// A call that arrives past its deadline does not run.
    #[tokio::test]
    async fn a_call_arriving_past_its_deadline_does_not_run() {
        let echo = Arc::new(Echo::default());
        let (address, _passed) = port(echo.clone()).await;
        let mut tcp = raw_link(&address).await;
        let mut frames = BytesMut::new();
        put_call(&mut frames, "echo", 5, 0);
        tcp.write_all(&frames).await.unwrap();
        let (id, answer) = next_answer(&mut tcp, &mut BytesMut::new()).await;
        assert_eq!(id, 5);
        assert!(
            matches!(
                answer.result,
                Some(pb::grain_answer::Result::Error(pb::GrainError {
                    error: Some(pb::grain_error::Error::Unavailable(_))
                }))
            ),
            "{answer:?}"
        );
        assert_eq!(echo.most.load(Ordering::SeqCst), 0, "it did not run");
    }

    #[tokio::test]
    async fn member_connections_probe_a_silent_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        keep_alive(&tcp);
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(20))
        );
    }

    /// Answers every call with the name of the thread that ran it.
    struct Threads;

    impl Answer for Threads {
        async fn answer(&self, _call: pb::GrainCall) -> Result<pb::GrainAnswer, String> {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            Ok(pb::GrainAnswer {
                result: Some(pb::grain_answer::Result::Ok(pb::GrainReply {
                    reply: name.into_bytes(),
                    version: 0,
                })),
            })
        }
    }

    /// Runs `accept` on a runtime of its own on a thread of its own (as the
    /// gRPC thread accepts links) until `release` fires, then drops that
    /// runtime.
    fn accept_elsewhere(
        accept: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send + 'static,
        release: oneshot::Receiver<()>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut release = release;
                tokio::select! {
                    () = accept() => {
                        let _ = release.await;
                    }
                    _ = &mut release => {}
                }
            });
        })
    }

    /// The names of `pool`'s threads, by number.
    async fn thread_names(pool: &granary_grain::ArbiterPool) -> Vec<String> {
        let mut names = Vec::new();
        for thread in 0..pool.len() {
            let (name, named) = oneshot::channel();
            assert!(pool.spawn_on(thread, move || async move {
                let _ = name.send(std::thread::current().name().unwrap_or_default().to_owned());
            }));
            names.push(named.await.unwrap());
        }
        names
    }

    /// Every call on `link` runs on the grain thread of `names` that hosts
    /// its grain (each on the connection that thread reads), before and
    /// after the runtime that accepted the connections (`accepting`, which
    /// `release` lets end) is gone.
    async fn answered_on_grain_threads(
        link: &Link,
        names: &[String],
        release: oneshot::Sender<()>,
        accepting: std::thread::JoinHandle<()>,
    ) {
        let calls = |link: Link, names: Vec<String>| async move {
            for id in 1..20u64 {
                let answer = link.call(&call("any", id), Duration::from_secs(5)).await;
                let ran = String::from_utf8(reply(answer.expect("an answer")).0).unwrap();
                let host = &names[granary_grain::thread_of(&id.to_string(), names.len())];
                assert_eq!(&ran, host, "call {id} ran on its grain's thread");
            }
        };
        calls(link.clone(), names.to_vec()).await;
        assert_eq!(link.threads_open(), (0..names.len()).collect::<Vec<_>>());
        drop(release);
        tokio::task::spawn_blocking(move || accepting.join().unwrap())
            .await
            .unwrap();
        calls(link.clone(), names.to_vec()).await;
    }

    /// Link connections the gRPC thread accepts are served on the grain
    /// threads, each on the one its hello asks for, TLS and plaintext
    /// alike: they leave the accepting runtime (which may then end) with
    /// their TLS session, and a caller's call reaches its grain's thread
    /// on the connection that thread reads.
    #[actix_rt::test]
    async fn links_are_served_on_the_grain_threads_their_calls_grains_live_on() {
        use crate::security::{Limits, NodeKeys, tls};
        let pool = granary_grain::ArbiterPool::new(2);
        let names = thread_names(&pool).await;
        assert_ne!(names[0], names[1]);
        let links = Arc::new(LinkThreads::new(pool, Arc::new(Threads)));

        // Mutual TLS.
        let dir = tempfile::tempdir().unwrap();
        let server = NodeKeys::load_or_create(&dir.path().join("server")).unwrap();
        let client = NodeKeys::load_or_create(&dir.path().join("client")).unwrap();
        let trust = tls::Trust::new([client.fingerprint]);
        let config = tls::server_config(&server, trust.clone(), tls::Admission::Trusted).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let served = links.clone();
        let (release, released) = oneshot::channel();
        let accepting = accept_elsewhere(
            move || {
                Box::pin(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    let incoming = tls::incoming(listener, config, trust, Limits::default());
                    let mut incoming = std::pin::pin!(incoming);
                    while let Some(connection) = incoming.next().await {
                        let connection = connection.unwrap();
                        assert!(connection.is_link() && connection.is_member());
                        served.serve(connection);
                    }
                })
            },
            released,
        );
        let connect = crate::cluster::dial::Dialer::tls(Arc::new(client))
            .link(&address, Some(server.fingerprint), Duration::from_secs(2))
            .unwrap();
        let tls_link = Link::new(&address, connect);
        answered_on_grain_threads(&tls_link, &names, release, accepting).await;

        // Plaintext.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (release, released) = oneshot::channel();
        let accepting = accept_elsewhere(
            move || {
                Box::pin(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    let passed = plaintext_incoming(
                        listener,
                        move |tcp, hello| links.serve_tcp(tcp, hello),
                        Limits::default(),
                    );
                    // Kept: the port accepts while its stream is open.
                    let _passed = passed;
                    std::future::pending::<()>().await;
                })
            },
            released,
        );
        answered_on_grain_threads(&link(&address), &names, release, accepting).await;
    }

    /// A link whose spare connections are used up sends the calls for a
    /// callee thread it has no connection to on one it has (they cross
    /// threads there, as before the hello); each connection beyond the
    /// first takes one spare, and a failed dial gives its spare back.
    #[actix_rt::test]
    async fn a_link_without_spare_connections_shares_the_ones_open() {
        let pool = granary_grain::ArbiterPool::new(2);
        let names = thread_names(&pool).await;
        let links = Arc::new(LinkThreads::new(pool, Arc::new(Threads)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let _passed = plaintext_incoming(
            listener,
            move |tcp, hello| links.serve_tcp(tcp, hello),
            crate::security::Limits::default(),
        );
        let connect = crate::cluster::dial::Dialer::plaintext()
            .link(&address, None, Duration::from_secs(2))
            .unwrap();
        let ran = |link: Link, id: u64| async move {
            let answer = link.call(&call("any", id), Duration::from_secs(5)).await;
            String::from_utf8(reply(answer.expect("an answer")).0).unwrap()
        };
        // A grain on each thread.
        let on = |thread: usize| {
            (1u64..)
                .find(|id| granary_grain::thread_of(&id.to_string(), 2) == thread)
                .unwrap()
        };
        let (zero, one) = (on(0), on(1));

        // None spare: the first connection is the link's own, and serves
        // calls for both threads.
        let spare = Spares::new(0);
        let link = Link::with_spare(&address, connect.clone(), Some(spare.clone()));
        assert_eq!(ran(link.clone(), zero).await, names[0]);
        assert_eq!(
            ran(link.clone(), one).await,
            names[0],
            "shared, so on thread 0"
        );
        assert_eq!(link.threads_open(), vec![0]);

        // One spare: taken by the second connection.
        let spare = Spares::new(1);
        let link = Link::with_spare(&address, connect.clone(), Some(spare.clone()));
        assert_eq!(ran(link.clone(), one).await, names[1]);
        assert_eq!(ran(link.clone(), zero).await, names[0]);
        assert_eq!(link.threads_open(), vec![0, 1]);
        assert_eq!(spare.left(), 0);

        // A second connection whose dial fails gives its spare back, and
        // its call is served on the connection open; the next dial opens
        // it.
        let dials = Arc::new(AtomicUsize::new(0));
        let counted = dials.clone();
        let second_fails: Connect = Arc::new(move |hello| {
            if counted.fetch_add(1, Ordering::SeqCst) == 1 {
                Box::pin(async { Err("refused".to_owned()) })
            } else {
                connect(hello)
            }
        });
        let spare = Spares::new(1);
        let link = Link::with_spare(&address, second_fails, Some(spare.clone()));
        assert_eq!(ran(link.clone(), zero).await, names[0]);
        assert_eq!(ran(link.clone(), one).await, names[0], "its dial failed");
        assert_eq!(spare.left(), 1, "the spare came back");
        assert_eq!(ran(link.clone(), one).await, names[1]);
        assert_eq!((spare.left(), dials.load(Ordering::SeqCst)), (0, 3));
    }

    /// A link files each connection under the callee thread that serves
    /// it; a restarted callee with another thread count has the old ones
    /// closed and their spares given back; a member that said version 2
    /// and is later spoken to in version 1 keeps its thread count; the
    /// spares come back when the link goes.
    #[tokio::test]
    async fn a_link_files_connections_by_the_callee_thread_that_serves_them() {
        let mut far_ends = Vec::new();
        let mut connection = || {
            let (near, far) = tokio::io::duplex(64);
            far_ends.push(far);
            Connection::start(Box::new(near))
        };
        let on = |threads, thread| Some(Placed { threads, thread });
        let pool = Spares::new(2);
        let unit = || Some(pool.take().expect("a spare left"));
        let mut lines = Lines::default();
        assert_eq!(
            lines.hello(7),
            7,
            "the grain's hash, before the count is known"
        );
        lines.keep(connection(), 7, on(2, 1), None);
        assert_eq!(
            (lines.threads, lines.thread(7), lines.hello(7)),
            (2, Some(1), 1)
        );
        assert!(lines.needs_spare(0) && !lines.needs_spare(1));
        lines.keep(connection(), 0, on(2, 0), unit());
        assert_eq!(pool.left(), 1);
        // Version 1's answer, to a member that said two threads.
        let first = lines.live(1, false).unwrap();
        let v1 = connection();
        lines.keep(v1.clone(), 1, None, None);
        assert_eq!(lines.threads, 2);
        assert!(Arc::ptr_eq(&lines.live(1, false).unwrap(), &v1));
        assert!(first.closed.load(Ordering::SeqCst), "the one it replaced");
        // Restarted with three threads: both old ones closed; the extra
        // one's spare and the new dial's come back.
        let old = lines.live(0, false).unwrap();
        lines.keep(connection(), 5, on(3, 2), unit());
        assert_eq!(pool.left(), 2);
        assert!(old.closed.load(Ordering::SeqCst) && v1.closed.load(Ordering::SeqCst));
        assert_eq!((lines.threads, lines.thread(5)), (3, Some(2)));
        assert!(lines.live(0, false).is_none() && lines.live(0, true).is_some());
        // A further connection holds its spare until the link goes.
        lines.keep(connection(), 0, on(3, 0), unit());
        assert_eq!(pool.left(), 1);
        drop(lines);
        assert_eq!(pool.left(), 2);
    }

    /// A callee's answer to the hello is taken only if it makes sense (a
    /// thread among at most 1,024), and a caller that sends the new
    /// preface but no hello is closed within the port's first-bytes bound.
    #[tokio::test]
    async fn a_hello_or_its_answer_out_of_bounds_opens_no_link() {
        let answer =
            |threads: u32, thread: u32| Placed::from_bytes(Placed { threads, thread }.to_bytes());
        assert_eq!(
            answer(2, 1),
            Some(Placed {
                threads: 2,
                thread: 1
            })
        );
        assert_eq!(answer(1024, 1023).map(|p| p.thread), Some(1023));
        for (threads, thread) in [(0, 0), (2, 2), (1025, 0), (u32::MAX, 1)] {
            assert_eq!(answer(threads, thread), None, "{threads} {thread}");
        }

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let linked = Arc::new(AtomicUsize::new(0));
        let counted = linked.clone();
        let _passed = plaintext_incoming(
            listener,
            move |_tcp, _hello| {
                counted.fetch_add(1, Ordering::SeqCst);
            },
            crate::security::Limits {
                handshake_timeout: Duration::from_millis(200),
                ..crate::security::Limits::default()
            },
        );
        let mut silent = TcpStream::connect(&address).await.unwrap();
        silent.write_all(PREFACE).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "still open: {read:?}"
        );
        assert_eq!(linked.load(Ordering::SeqCst), 0, "no link without a hello");
    }

    /// Spares are taken up to the limit, come back when dropped, and a
    /// lower limit (a grown cluster) closes nothing but lets no more be
    /// taken until enough came back.
    #[test]
    fn spares_are_taken_up_to_a_limit_that_may_change() {
        let spares = Spares::new(2);
        let (a, b) = (spares.take().unwrap(), spares.take().unwrap());
        assert!(spares.take().is_none());
        spares.set_limit(1);
        drop(a);
        assert!(spares.take().is_none(), "one still held, the limit is one");
        drop(b);
        assert_eq!(spares.left(), 1);
        let c = spares.take().unwrap();
        spares.set_limit(3);
        assert_eq!(spares.left(), 2);
        drop(c);
    }

    /// A member of version 1 (no hello) is still spoken to: in plaintext
    /// it closes on the new preface and is asked again in its own; under
    /// TLS it chooses version 1's protocol. Either way its one connection
    /// carries every call.
    #[tokio::test]
    async fn a_member_of_version_1_is_spoken_to_in_version_1() {
        // Plaintext: a port as version 1 served it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let server = tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let mut preface = [0u8; PREFACE.len()];
                if tcp.read_exact(&mut preface).await.is_ok() && &preface == PREFACE_1 {
                    tcp.write_all(PREFACE_1).await.unwrap();
                    tokio::spawn(serve(tcp, Arc::new(Echo::default())));
                }
            }
        });
        let link = link(&address);
        for id in 1..6 {
            assert_echoes(&link, id).await;
        }
        assert_eq!(link.threads_open(), vec![0]);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "refused once, then spoken to in version 1"
        );
        server.abort();

        // Mutual TLS: a member whose protocols are version 1's.
        let (_dir, keys, client, acceptor) = member_server(&[PROTOCOL_1, b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let tls = acceptor.accept(tcp).await.unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(PROTOCOL_1));
                tokio::spawn(serve(tls, Arc::new(Echo::default())));
            }
        });
        let connect = crate::cluster::dial::Dialer::tls(Arc::new(client))
            .link(&address, Some(keys.fingerprint), Duration::from_secs(2))
            .unwrap();
        let link = Link::new(&address, connect);
        for id in 1..6 {
            assert_echoes(&link, id).await;
        }
        assert_eq!(link.threads_open(), vec![0]);
        server.abort();
    }

    /// On the plaintext port, connections that have not yet said whether
    /// they are links are bounded as TLS handshakes are: a flood of silent
    /// ones has its oldest closed, and a link still gets in meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_silent_plaintext_connections_is_bounded_and_keeps_no_link_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let echo = Arc::new(Echo::default());
        let passed = plaintext_incoming(
            listener,
            move |tcp, hello: Option<u64>| {
                let placed = hello.map(|_| Placed::ONE);
                tokio::spawn(serve_placed(tcp, echo.clone(), placed));
            },
            crate::security::Limits {
                handshake_timeout: Duration::from_secs(30),
                max_pending: 16,
                ..crate::security::Limits::default()
            },
        );
        let _passed = passed;
        let mut flood = Vec::new();
        for _ in 0..300 {
            flood.push(TcpStream::connect(&address).await.unwrap());
        }
        assert_echoes(&link(&address), 7).await;
        // The oldest were closed to make room (well before the 30 s a
        // silent connection may wait).
        for (n, silent) in flood.iter_mut().take(250).enumerate() {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "silent connection {n} still open: {read:?}"
            );
        }
    }
}
