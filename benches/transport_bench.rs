//! What the grain-call transport costs, apart from everything else: the
//! node's `Grains/Call` over tonic (HTTP/2) against a lean framed protocol
//! on the same kind of connection, both echoing a call the size of a
//! forwarded add (a cart id, a MessagePack command of ~60 bytes; a reply
//! of ~3 KB, a cart of a dozen lines).
//!
//! Run: `cargo bench --bench transport_bench` (release build, loopback,
//! plaintext: TLS is not where the hop's cost is, see BENCHMARKS.md).
//!
//! The server runs on one current-thread runtime of its own (as a node's
//! gRPC runtime does), the client on another (as an HTTP worker does),
//! 1, 8 and 64 calls in flight on one connection. The lean protocol:
//! each frame is `[u32 length][u64 call id][payload]`; the client's calls
//! go through a
//! queue to one writer task that writes whatever has gathered in one
//! syscall, one reader task hands each answer to its caller by id; the
//! server reads frames, answers each in order, and flushes when its read
//! buffer is empty. This is an experiment for the forwarding goal, not
//! the product: it says how much of the hop a leaner transport could
//! save. The lean side's deep batching at 64 in flight flatters it (a
//! real server does work between reads); 1 in flight is the fair row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

pub mod grains {
    tonic::include_proto!("granary.grains.v2");
}

use grains::grains_client::GrainsClient;
use grains::grains_server::{Grains, GrainsServer};

/// Calls in flight on the one connection, each level measured.
const IN_FLIGHT: [usize; 3] = [1, 8, 64];
const REPLY_BYTES: usize = 3_000;
const COMMAND_BYTES: usize = 60;

/// Answers every call with a reply of `REPLY_BYTES`.
struct Echo(Bytes);

#[tonic::async_trait]
impl Grains for Echo {
    async fn call(
        &self,
        request: tonic::Request<grains::GrainCall>,
    ) -> Result<tonic::Response<grains::GrainAnswer>, tonic::Status> {
        let call = request.into_inner();
        let mut reply = self.0.to_vec();
        reply[0] = call.command.first().copied().unwrap_or_default();
        Ok(tonic::Response::new(grains::GrainAnswer {
            result: Some(grains::grain_answer::Result::Ok(grains::GrainReply {
                reply,
                version: 1,
            })),
        }))
    }
}

/// A runtime on a thread of its own; its handle.
fn runtime(name: &str) -> tokio::runtime::Handle {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .expect("thread");
    handle
}

/// The next whole frame at the front of `input`, taken off it: its call id
/// and payload; `None` until one has arrived whole.
fn next_frame(input: &mut BytesMut) -> Option<(u64, BytesMut)> {
    let length = u32::from_be_bytes(input.get(..4)?.try_into().expect("4 bytes")) as usize;
    if input.len() < 4 + length {
        return None;
    }
    input.advance(4);
    let mut frame = input.split_to(length);
    let id = frame.get_u64();
    Some((id, frame))
}

/// The lean server: frames in, the same ids out with the reply.
async fn lean_server(listener: TcpListener, reply: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        stream.set_nodelay(true).expect("nodelay");
        let reply = reply.clone();
        tokio::spawn(async move {
            let (mut read, mut write) = stream.into_split();
            let mut input = BytesMut::with_capacity(64 * 1024);
            let mut output = BytesMut::with_capacity(256 * 1024);
            loop {
                if read.read_buf(&mut input).await.unwrap_or(0) == 0 {
                    return;
                }
                while let Some((id, frame)) = next_frame(&mut input) {
                    // What a real server would do: read the call.
                    let first = frame.first().copied().unwrap_or_default();
                    output.put_u32((8 + reply.len()) as u32);
                    output.put_u64(id);
                    output.put_u8(first);
                    output.put_slice(&reply[1..]);
                }
                if write.write_all(&output).await.is_err() {
                    return;
                }
                output.clear();
            }
        });
    }
}

/// The lean client: one connection, calls matched to answers by id.
#[derive(Clone)]
struct LeanClient {
    queue: mpsc::UnboundedSender<(u64, Bytes, oneshot::Sender<Bytes>)>,
    ids: Arc<AtomicU64>,
}

impl LeanClient {
    async fn connect(address: std::net::SocketAddr) -> LeanClient {
        let stream = TcpStream::connect(address).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut read, mut write) = stream.into_split();
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>> = Arc::default();
        let (queue, mut calls) = mpsc::unbounded_channel::<(u64, Bytes, oneshot::Sender<Bytes>)>();
        {
            let waiting = waiting.clone();
            tokio::spawn(async move {
                let mut output = BytesMut::with_capacity(64 * 1024);
                while let Some(first) = calls.recv().await {
                    let mut next = Some(first);
                    while let Some((id, payload, answer)) = next {
                        waiting.lock().expect("waiting").insert(id, answer);
                        output.put_u32((8 + payload.len()) as u32);
                        output.put_u64(id);
                        output.put_slice(&payload);
                        next = calls.try_recv().ok();
                    }
                    if write.write_all(&output).await.is_err() {
                        return;
                    }
                    output.clear();
                }
            });
        }
        tokio::spawn(async move {
            let mut input = BytesMut::with_capacity(256 * 1024);
            loop {
                if read.read_buf(&mut input).await.unwrap_or(0) == 0 {
                    return;
                }
                while let Some((id, frame)) = next_frame(&mut input) {
                    if let Some(answer) = waiting.lock().expect("waiting").remove(&id) {
                        let _ = answer.send(frame.freeze());
                    }
                }
            }
        });
        LeanClient {
            queue,
            ids: Arc::default(),
        }
    }

    async fn call(&self, payload: Bytes) -> Option<Bytes> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.queue.send((id, payload, answer)).ok()?;
        answered.await.ok()
    }
}

/// `in_flight` loops of `call` on `client_rt` for `duration`; calls/s.
fn rate<F, Fut>(
    client_rt: &tokio::runtime::Handle,
    in_flight: usize,
    duration: Duration,
    call: F,
) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..in_flight {
        let (call, done, stop) = (call.clone(), done.clone(), stop.clone());
        loops.push(client_rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                assert!(call().await, "a call failed");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let calls = done.load(Ordering::Relaxed);
    client_rt.block_on_loops(loops);
    calls as f64 / elapsed
}

/// Waiting for spawned loops from outside the runtime.
trait BlockOnLoops {
    fn block_on_loops(&self, loops: Vec<tokio::task::JoinHandle<()>>);
}

impl BlockOnLoops for tokio::runtime::Handle {
    fn block_on_loops(&self, loops: Vec<tokio::task::JoinHandle<()>>) {
        let (done, wait) = std::sync::mpsc::channel();
        self.spawn(async move {
            for task in loops {
                task.await.expect("loop");
            }
            let _ = done.send(());
        });
        wait.recv().expect("loops ended");
    }
}

fn main() {
    let server_rt = runtime("server");
    let client_rt = runtime("client");
    let reply = Bytes::from(vec![7u8; REPLY_BYTES]);
    let command = Bytes::from(vec![1u8; COMMAND_BYTES]);
    let cart = uuid::Uuid::new_v4().to_string();

    // The two servers.
    let (tonic_address, lean_address) = {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply = reply.clone();
        server_rt.spawn(async move {
            let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let lean = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send((
                grpc.local_addr().expect("addr"),
                lean.local_addr().expect("addr"),
            ))
            .expect("send");
            tokio::spawn(lean_server(lean, reply.clone()));
            // Nagle off on the accepted connections, as the node's server.
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(GrainsServer::new(Echo(reply)))
                .serve_with_incoming(incoming)
                .await
                .expect("serve");
        });
        rx.recv().expect("addresses")
    };
    // Clients made on the client's runtime (their connections live there).
    let (tx, rx) = std::sync::mpsc::channel();
    client_rt.spawn(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{tonic_address}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        let lean = LeanClient::connect(lean_address).await;
        tx.send((channel, lean)).expect("send");
    });
    let (channel, lean) = rx.recv().expect("clients");

    println!("# Grain-call transport: tonic vs a lean framed protocol\n");
    let seconds = Duration::from_secs(2);
    for in_flight in IN_FLIGHT {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let tonic_rate = {
                let (channel, cart, command) = (channel.clone(), cart.clone(), command.clone());
                rate(&client_rt, in_flight, seconds, move || {
                    let mut client = GrainsClient::new(channel.clone());
                    let call = grains::GrainCall {
                        kind: "cart".into(),
                        id: cart.clone(),
                        command: command.to_vec(),
                        ..Default::default()
                    };
                    async move {
                        matches!(
                            client.call(call).await.map(|a| a.into_inner().result),
                            Ok(Some(grains::grain_answer::Result::Ok(r))) if r.reply.len() == REPLY_BYTES
                        )
                    }
                })
            };
            let lean_rate = {
                let (lean, cart, command) = (lean.clone(), cart.clone(), command.clone());
                rate(&client_rt, in_flight, seconds, move || {
                    let lean = lean.clone();
                    // The same call, encoded as the lean protocol would carry
                    // it: kind, id and command, length-prefixed.
                    let mut frame = BytesMut::with_capacity(8 + cart.len() + command.len());
                    frame.put_u8(4);
                    frame.put_slice(b"cart");
                    frame.put_u8(cart.len() as u8);
                    frame.put_slice(cart.as_bytes());
                    frame.put_slice(&command);
                    let frame = frame.freeze();
                    async move {
                        lean.call(frame)
                            .await
                            .is_some_and(|reply| reply.len() == REPLY_BYTES)
                    }
                })
            };
            runs.push((tonic_rate, lean_rate));
        }
        let mean = |f: fn(&(f64, f64)) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
        let (tonic_rate, lean_rate) = (mean(|r| r.0), mean(|r| r.1));
        println!(
            "{in_flight:>2} in flight, one connection: tonic {tonic_rate:.0} calls/s ({:.1} µs a call), lean {lean_rate:.0} calls/s ({:.1} µs); lean/tonic {:.2} (runs: {runs:.0?})",
            in_flight as f64 * 1e6 / tonic_rate,
            in_flight as f64 * 1e6 / lean_rate,
            lean_rate / tonic_rate
        );
    }
}
