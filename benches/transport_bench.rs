//! What the grain-call transport costs, apart from everything else:
//! `Grains/Call` over tonic (HTTP/2) against the node's grain-call link
//! (`granary::cluster::link`, the code members forward calls on), both
//! echoing a call the size of a forwarded add (a cart id, a MessagePack
//! command of ~60 bytes; a reply of ~3 KB, a cart of a dozen lines).
//!
//! Run: `cargo bench --bench transport_bench` (release build, loopback,
//! plaintext: TLS is not where the hop's cost is, see BENCHMARKS.md).
//!
//! Each server runs on one current-thread runtime of its own (as a node's
//! gRPC runtime does), the clients on another (as an HTTP worker does),
//! 1, 8 and 64 calls in flight on one connection. Both servers answer
//! through the same echo; the link's server is the node's own
//! (`plaintext_incoming` + `serve`: a task per call, answers gathered by a
//! writer task), its client the node's `Link`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use granary::cluster::link::{self, Link, messages};
use tokio::net::TcpListener;

use messages::grains_client::GrainsClient;
use messages::grains_server::{Grains, GrainsServer};

/// Calls in flight on the one connection, each level measured.
const IN_FLIGHT: [usize; 3] = [1, 8, 64];
const REPLY_BYTES: usize = 3_000;
const COMMAND_BYTES: usize = 60;

/// Answers every call with a reply of `REPLY_BYTES`, over tonic and over
/// the link alike.
struct Echo(Bytes);

impl Echo {
    fn reply_to(&self, call: &messages::GrainCall) -> messages::GrainAnswer {
        let mut reply = self.0.to_vec();
        reply[0] = call.command.first().copied().unwrap_or_default();
        messages::GrainAnswer {
            result: Some(messages::grain_answer::Result::Ok(messages::GrainReply {
                reply,
                version: 1,
            })),
        }
    }
}

#[tonic::async_trait]
impl Grains for Echo {
    async fn call(
        &self,
        request: tonic::Request<messages::GrainCall>,
    ) -> Result<tonic::Response<messages::GrainAnswer>, tonic::Status> {
        Ok(tonic::Response::new(self.reply_to(request.get_ref())))
    }
}

impl link::Answer for Echo {
    async fn answer(&self, call: messages::GrainCall) -> Result<messages::GrainAnswer, String> {
        Ok(self.reply_to(&call))
    }
}

/// The call both clients send: a forwarded add's size.
fn echo_call(cart: &str, command: &Bytes) -> messages::GrainCall {
    messages::GrainCall {
        kind: "cart".into(),
        id: cart.to_owned(),
        command: command.to_vec(),
        ..Default::default()
    }
}

/// Whether an answer is the echo's whole reply.
fn is_echoed(result: Option<messages::grain_answer::Result>) -> bool {
    matches!(result, Some(messages::grain_answer::Result::Ok(r)) if r.reply.len() == REPLY_BYTES)
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
            let echo = Arc::new(Echo(reply.clone()));
            let links = link::plaintext_incoming(
                lean,
                move |tcp, hello: Option<u64>| {
                    // One thread serves every connection here.
                    let placed = hello.map(|_| link::Placed::ONE);
                    tokio::spawn(link::serve_placed(tcp, echo.clone(), placed));
                },
                granary::security::Limits::default(),
            );
            // Every connection to it is a link: nothing is passed on.
            tokio::spawn(async move {
                let mut links = std::pin::pin!(links);
                while tokio_stream::StreamExt::next(&mut links).await.is_some() {}
            });
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
        let address = lean_address.to_string();
        let connect = granary::cluster::dial::Dialer::plaintext()
            .link(&address, None, Duration::from_secs(2))
            .expect("an address");
        let lean = Link::new(&address, connect);
        lean.ping(Duration::from_secs(5))
            .await
            .expect("the link answers");
        tx.send((channel, lean)).expect("send");
    });
    let (channel, lean) = rx.recv().expect("clients");

    println!("# Grain-call transport: tonic vs the grain-call link\n");
    let seconds = Duration::from_secs(2);
    for in_flight in IN_FLIGHT {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let tonic_rate = {
                let (channel, cart, command) = (channel.clone(), cart.clone(), command.clone());
                rate(&client_rt, in_flight, seconds, move || {
                    let mut client = GrainsClient::new(channel.clone());
                    let call = echo_call(&cart, &command);
                    async move {
                        is_echoed(
                            client
                                .call(call)
                                .await
                                .ok()
                                .and_then(|a| a.into_inner().result),
                        )
                    }
                })
            };
            let lean_rate = {
                let (lean, cart, command) = (lean.clone(), cart.clone(), command.clone());
                rate(&client_rt, in_flight, seconds, move || {
                    let lean = lean.clone();
                    let call = echo_call(&cart, &command);
                    async move {
                        let answer = lean.call(&call, Duration::from_secs(10)).await;
                        is_echoed(answer.ok().and_then(|a| a.result))
                    }
                })
            };
            runs.push((tonic_rate, lean_rate));
        }
        let mean = |f: fn(&(f64, f64)) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
        let (tonic_rate, lean_rate) = (mean(|r| r.0), mean(|r| r.1));
        println!(
            "{in_flight:>2} in flight, one connection: tonic {tonic_rate:.0} calls/s ({:.1} µs a call), link {lean_rate:.0} calls/s ({:.1} µs); link/tonic {:.2} (runs: {runs:.0?})",
            in_flight as f64 * 1e6 / tonic_rate,
            in_flight as f64 * 1e6 / lean_rate,
            lean_rate / tonic_rate
        );
    }
}
