//! Cluster figures, each with its baseline measured in the same run.
//!
//! Run: `cargo bench --bench cluster_bench` (real node processes on
//! loopback, release build); `-- --calls-only` stops after parts 1 and 1b;
//! `-- --forwarding-only` runs part 4 alone (add `--insecure-cluster` for
//! plaintext between the members, `--spread-only` or `--owner-only` for
//! one side of it, e.g. to profile it; `--threads-per-core` to run each
//! member with a thread of each kind per core instead of its share).
//!
//! 1. Remote grain call throughput: `Grains/Call` (a cart read, forwarded
//!    form) against a member vs a bare tonic unary echo on the same server
//!    (`ControlPlane/Ping`), both at 64 in flight over one connection.
//!    Then (1b) a grain-to-grain call across members: a price check of a
//!    cart on A whose product grain is on B, against a read of the same
//!    cart, a ping on the grain-call link from the cart's thread (1 in
//!    flight) and a bare tonic echo on a channel to B opened with A's key,
//!    at 1 and 64 in flight.
//! 2. Full HTTP load through all members: adds/s, and no member fenced or
//!    declared dead meanwhile.
//! 3. Failover: after `kill -9` of the member owning a cart, how long until
//!    another member serves it again, with the owner a follower and with
//!    the owner the leader (an election comes first).
//! 4. What forwarding costs: full load with every request sent to the
//!    cart's owner vs spread over the members, alternated in 2 s slices on
//!    one cluster (the median of neighbouring pairs' ratios), and spread
//!    by clients that follow the owner hint (`Granary-Owner`), with the
//!    members' CPU per add (from `/proc`); the same again at one offered
//!    rate both sides keep up with (CPU per add depends on the rate); then
//!    one add at a time to the owner vs through another member.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Http, NodeProcess};

pub mod messages {
    tonic::include_proto!("messages");
}
pub mod grains {
    tonic::include_proto!("granary.grains.v2");
}
pub mod cluster {
    tonic::include_proto!("granary.cluster.v1");
}

/// A channel as a member opens it (mutual TLS with the node's own key):
/// the remote call and its echo baseline both pay TLS.
async fn channel(node: &NodeProcess) -> tonic::transport::Channel {
    support::cluster::channel(node).await.expect("connect")
}

/// Runs `call` with `in_flight` concurrent loops for `duration` (each
/// loop gives `call` its number); calls/s.
async fn rate<F, Fut>(in_flight: usize, duration: Duration, call: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for n in 0..in_flight {
        let (call, done, stop) = (call.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                assert!(call(n).await, "call failed");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// A `Grains/Call` of `command` to `cart` over `grpc`; whether it answered.
async fn cart_call(grpc: tonic::transport::Channel, cart: String, command: Vec<u8>) -> bool {
    let mut client = grains::grains_client::GrainsClient::new(grpc);
    let call = grains::GrainCall {
        kind: "cart".into(),
        id: cart,
        command,
        ..Default::default()
    };
    matches!(
        client.call(call).await.map(|a| a.into_inner().result),
        Ok(Some(grains::grain_answer::Result::Ok(_)))
    )
}

/// Part 1b: carts on A whose line's product lives on B. A price check of
/// a cart (a `Grains/Call` to A) makes the cart grain call the product
/// grain on B: one grain-to-grain call across members. Against, in the
/// same run: a price check of an empty cart on A (the same command through
/// the cart's mailbox and its calls' machinery, with no call to make), and
/// a bare tonic echo on a channel to B opened with A's key, as A's own
/// channels are. (Not a read of the cart: reads skip the mailbox.)
/// At 1 in flight one cart; at 64 in flight 64 carts, one per loop (a cart
/// takes one command at a time, its calls included).
async fn grain_to_grain(a: &NodeProcess, b: &NodeProcess, http: &Http) {
    http.set_product(b, "g2g", 1_000_000).await;
    let (mut carts, mut empty) = (Vec::new(), Vec::new());
    for _ in 0..64 {
        empty.push(http.create_cart(a).await);
        let cart = http.create_cart(a).await;
        let added = http
            .post(
                &a.url(&format!("/carts/{cart}/items")),
                support::item("g2g"),
            )
            .await
            .expect("add");
        assert_eq!(added.status, 200, "{added:?}");
        carts.push(cart);
    }
    let (carts, empty) = (Arc::new(carts), Arc::new(empty));
    let live = |reply: &support::cluster::StatusReply, kind: &str| {
        reply.live_by_kind.get(kind).copied().unwrap_or(0)
    };
    let (on_a, on_b) = (
        support::cluster::status(a).await.expect("status"),
        support::cluster::status(b).await.expect("status"),
    );
    assert!(
        live(&on_a, "cart") >= 128 && live(&on_a, "product") == 0,
        "the carts on A"
    );
    assert!(live(&on_b, "product") >= 1, "the product on B");

    let to_a = channel(a).await;
    let keys_a = granary::security::NodeKeys::load(&a.data_dir).expect("A's key");
    let a_to_b = support::cluster::channel_with(&keys_a, b)
        .await
        .expect("A to B");
    let check = rmp_serde::to_vec(&granary::cart_grain::CartRequest::CheckPrices).expect("encode");
    let seconds = Duration::from_secs(2);
    for in_flight in [1usize, 64] {
        let (mut reads, mut checks, mut echoes) = (0.0, 0.0, 0.0);
        let (mut same, mut called) = (0.0, 0.0);
        // Two rounds of each, alternated, so drift hits all alike.
        for _ in 0..2 {
            if in_flight == 1 {
                // From the cart's own thread on A, about a second each: a
                // ping on the link the cart's call goes out on, and the
                // product read a price check makes, called as the cart
                // calls it.
                let probe = |call: Option<cluster::ProbeCall>| {
                    let request = cluster::RoundTripRequest {
                        member: b.node_id.clone(),
                        count: 5_000,
                        kind: "cart".into(),
                        id: carts[0].clone(),
                        call,
                    };
                    let grpc = to_a.clone();
                    async move {
                        let reply = cluster::cluster_client::ClusterClient::new(grpc)
                            .round_trip(request)
                            .await
                            .expect("round trips from A")
                            .into_inner();
                        reply.mean_us as f64 / 1e6
                    }
                };
                same += probe(None).await;
                called += probe(Some(cluster::ProbeCall {
                    kind: "product".into(),
                    id: "g2g".into(),
                    command: rmp_serde::to_vec(&granary_cart::ProductCommand::Get).expect("encode"),
                }))
                .await;
            }
            reads += {
                let (grpc, empty, check) = (to_a.clone(), empty.clone(), check.clone());
                rate(in_flight, seconds, move |n| {
                    cart_call(grpc.clone(), empty[n].clone(), check.clone())
                })
                .await
            };
            checks += {
                let (grpc, carts, check) = (to_a.clone(), carts.clone(), check.clone());
                rate(in_flight, seconds, move |n| {
                    cart_call(grpc.clone(), carts[n].clone(), check.clone())
                })
                .await
            };
            echoes += {
                let grpc = a_to_b.clone();
                rate(in_flight, seconds, move |_| {
                    let mut client =
                        messages::control_plane_client::ControlPlaneClient::new(grpc.clone());
                    async move { client.ping(messages::Empty {}).await.is_ok() }
                })
                .await
            };
        }
        let (reads, checks, echoes) = (reads / 2.0, checks / 2.0, echoes / 2.0);
        let (same, called) = (same / 2.0, called / 2.0);
        if in_flight == 1 {
            // Sequential: what the onward call adds to a call's time,
            // against one echo's round trip.
            let hop = 1.0 / checks - 1.0 / reads;
            let echo = 1.0 / echoes;
            println!(
                "grain-to-grain call A -> B from the cart's thread, sequential: {:.0} us; a bare ping A -> B on the same grain-call link from the same thread: {:.0} us; ratio {:.2}",
                called * 1e6,
                same * 1e6,
                same / called
            );
            println!(
                "grain-to-grain call A -> B inside a price check, 1 in flight: adds {:.0} us to a call ({:.0}/s price checks vs {:.0}/s of an empty cart on A); ratio to the echo on the same channel {:.2}, to an echo from this process on its own channel ({:.0} us) {:.2}",
                hop * 1e6,
                checks,
                reads,
                same / hop,
                echo * 1e6,
                echo / hop
            );
        } else {
            println!(
                "grain-to-grain call A -> B, {in_flight} in flight ({in_flight} carts): {checks:.0}/s price checks (each one call into A and one grain call A -> B) vs {reads:.0}/s of empty carts on A; bare tonic echo A -> B: {echoes:.0}/s; checks/echo {:.2}",
                checks / echoes
            );
        }
    }
}

async fn until_members(node: &NodeProcess, members: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = cluster::cluster_client::ClusterClient::new(channel(node).await);
        if let Ok(reply) = client.status(cluster::StatusRequest {}).await {
            let reply = reply.into_inner();
            if reply.members == members
                && reply.committed_version == reply.config_version
                && reply.peers.iter().all(|p| p.live)
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 64 clients adding items for `load_for`; adds/s and failed requests.
/// Spread: each request goes to the next member, so two in three are
/// forwarded to the cart's owner; otherwise every request goes to the
/// member that created (and owns) the cart.
async fn full_load(nodes: [&NodeProcess; 3], load_for: Duration) -> (f64, u64) {
    let load = Shoppers::new(nodes)
        .await
        .run(load_for, Way::Spread, None)
        .await;
    (load.per_sec, load.failed)
}

/// What one timed load did.
struct Load {
    per_sec: f64,
    failed: u64,
    /// CPU the three member processes used meanwhile, per successful add
    /// (the work an add costs, which a rate alone cannot tell from a slow
    /// disk or a busy machine).
    member_cpu_per_add: Duration,
    /// Of which the store's threads (`granary-store-*`: the writer and
    /// its readers) used.
    store_cpu_per_add: Duration,
    /// Appends made durable per commit (the group commit's groups), over
    /// the three members.
    appends_per_commit: f64,
    /// Context switches of the members' threads per add.
    switches_per_add: f64,
}

/// 64 clients, each adding items to a cart of its own.
struct Shoppers {
    http: Http,
    /// Each member's `/carts` (where a cart is created).
    carts_at: Vec<String>,
    urls: Vec<String>,
    /// The members' processes (whose CPU time each run reads).
    pids: Vec<u32>,
    /// Bodies encoded once and answers not parsed (as granary_bench's
    /// client): the client shares the two cores with the three members.
    bodies: Arc<Vec<bytes::Bytes>>,
}

impl Shoppers {
    async fn new(nodes: [&NodeProcess; 3]) -> Shoppers {
        let http = Http::new();
        http.stock(nodes[0], (0..8).map(|n| format!("sku-{n}")))
            .await;
        Shoppers {
            http,
            carts_at: nodes.iter().map(|n| n.url("/carts")).collect(),
            urls: nodes.iter().map(|n| n.url("")).collect(),
            pids: nodes.iter().map(|n| n.child.id()).collect(),
            bodies: Arc::new(
                (0..8)
                    .map(|n| {
                        serde_json::to_vec(&support::item(&format!("sku-{n}"))).expect("encode")
                    })
                    .map(bytes::Bytes::from)
                    .collect(),
            ),
        }
    }

    /// Latencies of `adds` adds one at a time to a new cart created on the
    /// first member (its owner), sent to it (`forwarded` false) or to the
    /// second member (every add forwarded).
    async fn one_at_a_time(&self, adds: usize, forwarded: bool) -> Vec<Duration> {
        let answer = self
            .http
            .send_past_503("POST", &self.carts_at[0], None, Duration::from_secs(10))
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
        let cart = answer.json["id"].as_str().expect("id").to_owned();
        let url = format!("{}/carts/{cart}/items", self.urls[usize::from(forwarded)]);
        let mut took = Vec::with_capacity(adds);
        for i in 0..adds {
            let body = self.bodies[i % 8].clone();
            let started = Instant::now();
            let answer = self.http.status_of("POST", &url, Some(body)).await;
            took.push(started.elapsed());
            assert!(matches!(answer, Ok((200, _))), "{answer:?}");
        }
        took
    }

    /// Adds for `load_for`, each request sent the `way` asked: adds/s
    /// and how many failed. As fast as the members answer, or at `pace`
    /// adds/s in all (each client sends at its own steady interval,
    /// staggered; one that falls behind does not catch up in a burst).
    async fn run(&self, load_for: Duration, way: Way, pace: Option<f64>) -> Load {
        // New carts each run (created spread over the members, so each
        // owns about a third): a line holds at most 999 units.
        let mut carts = Vec::new();
        for n in 0..64 {
            let answer = self
                .http
                .send_past_503("POST", &self.carts_at[n % 3], None, Duration::from_secs(10))
                .await;
            assert_eq!(answer.status, 201, "{answer:?}");
            carts.push((n, answer.json["id"].as_str().expect("id").to_owned()));
        }
        // One untimed add to each cart through every member, whichever
        // side runs: each member then knows where each cart lives.
        let warm = carts.iter().flat_map(|(_, cart)| {
            self.urls.iter().map(move |url| {
                let body = self.bodies[0].clone();
                let url = format!("{url}/carts/{cart}/items");
                async move {
                    let answer = self.http.status_of("POST", &url, Some(body)).await;
                    assert!(matches!(answer, Ok((200, _))), "{answer:?}");
                }
            })
        });
        futures_util::future::join_all(warm).await;
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let members_cpu = || {
            self.pids
                .iter()
                .map(|pid| support::cpu_of_process(*pid))
                .sum::<Duration>()
        };
        let store_cpu = || {
            self.pids
                .iter()
                .map(|pid| support::cpu_of_threads(*pid, "granary-store"))
                .sum::<Duration>()
        };
        let switches = || {
            self.pids
                .iter()
                .map(|pid| support::switches_of_process(*pid))
                .sum::<u64>()
        };
        let commits_before = self.commits().await;
        let switches_before = switches();
        let store_before = store_cpu();
        let cpu_before = members_cpu();
        let started = Instant::now();
        let mut tasks = Vec::new();
        let clients = carts.len();
        for (n, cart) in carts {
            let mut ticks = pace.map(|per_sec| {
                let every = Duration::from_secs_f64(clients as f64 / per_sec);
                let first = tokio::time::Instant::now() + every * n as u32 / clients as u32;
                let mut ticks = tokio::time::interval_at(first, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            });
            let (http, urls, bodies, ok, failed, stop) = (
                self.http.clone(),
                self.urls.clone(),
                self.bodies.clone(),
                ok.clone(),
                failed.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                // Where a forwarded answer said the cart lives.
                let mut owner: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(ticks) = &mut ticks {
                        ticks.tick().await;
                    }
                    let member = match way {
                        Way::Owner => &urls[n % urls.len()],
                        Way::Spread => &urls[(n + i as usize) % urls.len()],
                        Way::Follow => owner
                            .as_ref()
                            .unwrap_or(&urls[(n + i as usize) % urls.len()]),
                    };
                    let url = format!("{member}/carts/{cart}/items");
                    let body = bodies[(i % 8) as usize].clone();
                    let answer = http.status_naming_owner("POST", &url, Some(body)).await;
                    if let (Way::Follow, Ok((_, _, Some(named)))) = (way, &answer) {
                        owner = Some(format!("http://{named}"));
                    }
                    match answer {
                        Ok((200, length, _)) if length > 0 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            if failed.load(Ordering::Relaxed) < 3 {
                                eprintln!("an add failed: {other:?}");
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(load_for).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("client");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = members_cpu().saturating_sub(cpu_before);
        let store = store_cpu().saturating_sub(store_before);
        let switched = switches().saturating_sub(switches_before);
        let (commits, appends) = self.commits().await;
        let (commits, appends) = (commits - commits_before.0, appends - commits_before.1);
        let ok = ok.load(Ordering::Relaxed);
        let per_add = |cpu: Duration| cpu / u32::try_from(ok.max(1)).unwrap_or(u32::MAX);
        Load {
            per_sec: ok as f64 / elapsed,
            failed: failed.load(Ordering::Relaxed),
            member_cpu_per_add: per_add(cpu),
            store_cpu_per_add: per_add(store),
            appends_per_commit: appends / commits.max(1.0),
            switches_per_add: switched as f64 / ok.max(1) as f64,
        }
    }

    /// The store commits the three members have made so far, and the
    /// appends they made durable (from `/metrics`).
    async fn commits(&self) -> (f64, f64) {
        let mut total = (0.0, 0.0);
        for url in &self.urls {
            let (status, _, text) = self
                .http
                .text(&format!("{url}/metrics"))
                .await
                .expect("metrics");
            assert_eq!(status, 200, "{text}");
            total.0 += support::metric_sum(&text, "granary_store_commit_duration_seconds_count");
            total.1 += support::metric_sum(&text, "granary_store_appends_per_commit_sum");
        }
        total
    }
}

/// Kills (-9) `victim` after it has created 5 carts (it owns them), and
/// reads them through `survivors` until each is served again; seconds until
/// the first and the last came back.
async fn failover(
    survivors: [&NodeProcess; 2],
    victim: &mut NodeProcess,
    http: &Http,
) -> (f64, f64) {
    let mut owned = Vec::new();
    for _ in 0..5 {
        let answer = http
            .send_past_503("POST", &victim.url("/carts"), None, Duration::from_secs(10))
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
        owned.push(answer.json["id"].as_str().expect("id").to_owned());
    }
    let killed = Instant::now();
    victim.kill9();
    let mut waits = Vec::new();
    for (n, cart) in owned.iter().enumerate() {
        let through = survivors[n % 2];
        loop {
            let answer = http
                .get(&through.url(&format!("/carts/{cart}")))
                .await
                .expect("get");
            if answer.status == 200 {
                waits.push(killed.elapsed().as_secs_f64());
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "cart never came back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (waits[0], waits[waits.len() - 1])
}

/// A fresh 3-member cluster on one embedded store under `dir`, each member
/// started with `extra`; returned once it has formed.
async fn cluster(dir: &std::path::Path, extra: &[&str]) -> [NodeProcess; 3] {
    let store = dir.join("shared.db").to_str().expect("path").to_owned();
    let mut args = vec!["--store", store.as_str()];
    args.extend_from_slice(extra);
    let a = NodeProcess::start(&dir.join("a"), &args);
    let seed = a.grpc.to_string();
    // Plaintext members join without a token (there is no key to pin).
    let token = (!extra.contains(&"--insecure-cluster")).then(|| support::token(&a));
    args.extend_from_slice(&["--join", &seed]);
    if let Some(token) = &token {
        args.extend_from_slice(&["--token", token]);
    }
    let b = NodeProcess::start(&dir.join("b"), &args);
    let c = NodeProcess::start(&dir.join("c"), &args);
    until_members(&a, 3).await;
    [a, b, c]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("# Granary cluster benchmark\n");
        if std::env::args().any(|arg| arg == "--forwarding-only") {
            forwarding().await;
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let [a, b, mut c] = cluster(dir.path(), &[]).await;

        // 1. A cart owned by B, read through B's Grains service.
        let http = Http::new();
        let cart = loop {
            let answer = http.send("POST", &b.url("/carts"), None, &[]).await.expect("create");
            if answer.status == 201 {
                break answer.json["id"].as_str().expect("id").to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let grpc = channel(&b).await;
        let command = rmp_serde::to_vec(&granary::cart_grain::CartRequest::Get).expect("encode");
        let seconds = Duration::from_secs(5);
        let mut results = Vec::new();
        for round in 0..2 {
            let echo = {
                let grpc = grpc.clone();
                rate(64, seconds / 2, move |_| {
                    let mut client = messages::control_plane_client::ControlPlaneClient::new(grpc.clone());
                    async move { client.ping(messages::Empty {}).await.is_ok() }
                })
                .await
            };
            let remote = {
                let (grpc, cart, command) = (grpc.clone(), cart.clone(), command.clone());
                rate(64, seconds / 2, move |_| {
                    let mut client = grains::grains_client::GrainsClient::new(grpc.clone());
                    let call = grains::GrainCall {
                        kind: "cart".into(),
                        id: cart.clone(),
                        command: command.clone(),
                        ..Default::default()
                    };
                    async move {
                        matches!(
                            client.call(call).await.map(|a| a.into_inner().result),
                            Ok(Some(grains::grain_answer::Result::Ok(_)))
                        )
                    }
                })
                .await
            };
            results.push((echo, remote));
            let _ = round;
        }
        let echo: f64 = results.iter().map(|r| r.0).sum::<f64>() / results.len() as f64;
        let remote: f64 = results.iter().map(|r| r.1).sum::<f64>() / results.len() as f64;
        println!(
            "remote grain call (cart read), 64 in flight: {remote:.0}/s; bare tonic echo on the same server: {echo:.0}/s; ratio {:.2}",
            remote / echo
        );

        // 1b. Grain-to-grain across members.
        grain_to_grain(&a, &b, &http).await;
        if std::env::args().any(|arg| arg == "--calls-only") {
            return;
        }

        // 2. Full HTTP load through every member: no member may be fenced
        //    or declared dead meanwhile (heartbeats must not starve).
        let before = {
            let mut client = cluster::cluster_client::ClusterClient::new(channel(&a).await);
            client.status(cluster::StatusRequest {}).await.expect("status").into_inner()
        };
        let load_for = Duration::from_secs(10);
        let (rate_full, failed) = full_load([&a, &b, &c], load_for).await;
        let after = {
            let mut client = cluster::cluster_client::ClusterClient::new(channel(&a).await);
            client.status(cluster::StatusRequest {}).await.expect("status").into_inner()
        };
        println!(
            "3 members under full HTTP load (64 clients, requests spread over all members) for {load_for:?}: {:.0} adds/s, {} failed; membership {} -> {} members, config v{} -> v{} (a false dead verdict would change both)",
            rate_full,
            failed,
            before.members,
            after.members,
            before.config_version,
            after.config_version
        );

        // 3. Failover after kill -9 of the owner, on this cluster (the
        //    owner is a follower), then on fresh clusters with the owner
        //    a follower and the leader, alternated.
        let (first, all) = failover([&a, &b], &mut c, &http).await;
        println!(
            "failover after kill -9 of the owner (a follower): first cart served again after {first:.2} s (goal <= 2 s), all 5 after {all:.2} s"
        );
        let mut runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..3 {
            for (slot, kill_leader) in [false, true].into_iter().enumerate() {
                let dir = tempfile::tempdir().expect("tempdir");
                let [a, b, c] = cluster(dir.path(), &[]).await;
                let leader = {
                    let mut client = cluster::cluster_client::ClusterClient::new(channel(&a).await);
                    client.status(cluster::StatusRequest {}).await.expect("status").into_inner().leader
                };
                let mut nodes = vec![a, b, c];
                let victim = nodes
                    .iter()
                    .position(|n| (n.node_id == leader) == kill_leader)
                    .expect("a victim");
                let mut victim = nodes.remove(victim);
                let (first, _) = failover([&nodes[0], &nodes[1]], &mut victim, &http).await;
                println!(
                    "round {round}, owner killed: {}: first cart served again after {first:.2} s",
                    if kill_leader { "the leader" } else { "a follower" }
                );
                runs[slot].push(first);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let span = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{lo:.2} to {hi:.2} s")
        };
        println!(
            "failover, owner a follower: mean {:.2} s ({}); owner the leader: mean {:.2} s ({}) (goal <= 2 s both)",
            mean(&runs[0]),
            span(&runs[0]),
            mean(&runs[1]),
            span(&runs[1])
        );
        drop(b);
        drop(a);

        forwarding().await;
    });
}

/// How a load sends each cart's adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// To the member that owns the cart.
    Owner,
    /// To the members in turn: two in three forwarded.
    Spread,
    /// To the members in turn until an answer names the cart's owner
    /// (`Granary-Owner`), then there: a client that routes by the hint.
    Follow,
}

impl Way {
    /// Its slot in [`Slices`].
    fn slot(self) -> usize {
        self as usize
    }
}

/// What each way is called, by slot.
const WAYS: [&str; 3] = ["to the owner", "spread", "spread, following the hint"];

/// Slices of the loads, alternated: each figure by [`Way::slot`].
struct Slices {
    /// Adds/s of each slice.
    rates: [Vec<f64>; 3],
    /// The members' CPU per add (µs) of each slice, alike.
    cpu: [Vec<f64>; 3],
    /// Of which their store threads', alike.
    store_cpu: [Vec<f64>; 3],
    /// Appends per commit of each slice, alike.
    groups: [Vec<f64>; 3],
    /// The members' context switches per add of each slice, alike.
    switches: [Vec<f64>; 3],
}

/// `f(way, owner)` of each neighbouring pair of slices of `of`, `way`'s
/// and the owner's.
fn pairs(of: &[Vec<f64>; 3], way: Way, f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    of[way.slot()]
        .iter()
        .zip(&of[Way::Owner.slot()])
        .map(|(s, o)| f(*s, *o))
        .collect()
}

impl Slices {
    fn show(&self, name: &str) {
        for (slot, side) in WAYS.iter().enumerate() {
            // Each figure with `digits` after the point.
            let joined = |v: &[f64], digits: usize| {
                v.iter()
                    .map(|x| format!("{x:.digits$}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let shown = |v: &[f64]| joined(v, 0);
            let tenths = |v: &[f64]| joined(v, 1);
            if !self.rates[slot].is_empty() {
                println!(
                    "{name}, {side}: adds/s per 2 s slice {}; the members' CPU per add (µs) {}, of which their store threads' {}; appends per commit {}; context switches per add {}",
                    shown(&self.rates[slot]),
                    shown(&self.cpu[slot]),
                    shown(&self.store_cpu[slot]),
                    tenths(&self.groups[slot]),
                    tenths(&self.switches[slot]),
                );
            }
        }
    }
}

/// `count` rounds of 2 s slices of `sides` (in order in even rounds,
/// reversed in odd ones), as fast as answered or at `pace`.
async fn alternate(shoppers: &Shoppers, sides: &[Way], count: usize, pace: Option<f64>) -> Slices {
    let mut slices = Slices {
        rates: Default::default(),
        cpu: Default::default(),
        store_cpu: Default::default(),
        groups: Default::default(),
        switches: Default::default(),
    };
    for pair in 0..count {
        let mut order = sides.to_vec();
        if pair % 2 == 1 {
            order.reverse();
        }
        for way in order {
            let slot = way.slot();
            let load = shoppers.run(Duration::from_secs(2), way, pace).await;
            assert_eq!(load.failed, 0, "failed requests ({way:?})");
            slices.rates[slot].push(load.per_sec);
            slices.cpu[slot].push(load.member_cpu_per_add.as_secs_f64() * 1e6);
            slices.store_cpu[slot].push(load.store_cpu_per_add.as_secs_f64() * 1e6);
            slices.groups[slot].push(load.appends_per_commit);
            slices.switches[slot].push(load.switches_per_add);
        }
    }
    slices
}

/// Part 4, what forwarding costs: the same full load on one cluster, every
/// request sent to the cart's owner vs spread over the members (two in
/// three forwarded), alternated in 2 s slices; then one add at a time,
/// to the owner vs through another member.
async fn forwarding() {
    let given = |flag: &str| std::env::args().any(|arg| arg == flag);
    // The three members stand for three machines but share this one: each
    // runs its share of the cores (`--threads`), as an operator sizes
    // members that share a machine. `--threads-per-core` gives each one
    // thread of each kind per core instead (the default of a member alone
    // on its machine: three times the threads the cores can run).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = if given("--threads-per-core") {
        cores
    } else {
        cores.div_ceil(3)
    }
    .to_string();
    println!(
        "each member runs {threads} HTTP worker(s) and {threads} grain thread(s) on {cores} cores"
    );
    let mut extra = vec!["--threads", threads.as_str()];
    // `--insecure-cluster`: members speak plaintext to each other (what
    // TLS costs the hop).
    if given("--insecure-cluster") {
        extra.push("--insecure-cluster");
    }
    let extra = extra.as_slice();
    // `--spread-only` / `--owner-only`: one side alone (to profile it).
    let sides: Vec<Way> = [Way::Owner, Way::Spread]
        .into_iter()
        .filter(|way| match way {
            Way::Owner => !given("--spread-only"),
            _ => !given("--owner-only"),
        })
        .collect();
    // One cluster, the two loads alternated in short slices, so drift
    // (this machine's speed changes by half within minutes) hits both
    // alike; each pair of neighbouring slices gives a ratio.
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster(dir.path(), extra).await;
    let shoppers = Shoppers::new([&nodes[0], &nodes[1], &nodes[2]]).await;
    // Warm-up: connections open, products placed (each run makes new
    // carts, and warms them up itself).
    for &way in &sides {
        shoppers.run(Duration::from_secs(1), way, None).await;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let middle = v.len() / 2;
        if v.len() % 2 == 1 {
            v[middle]
        } else {
            (v[middle - 1] + v[middle]) / 2.0
        }
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // With both sides, a third: clients that follow the owner hint.
    let all_ways = [Way::Owner, Way::Spread, Way::Follow];
    let full_sides = if sides.len() == 2 {
        &all_ways[..]
    } else {
        &sides[..]
    };
    let full = alternate(&shoppers, full_sides, 8, None).await;
    full.show("full load");
    if sides.len() < 2 {
        return;
    }
    let (to_owner, spread) = (mean(&full.rates[0]), mean(&full.rates[1]));
    println!(
        "full load spread over the members (2 in 3 forwarded): {spread:.0} adds/s; every request to the owner: {to_owner:.0} adds/s; ratio {:.2} of the means; median of the {} neighbouring pairs {:.2} (owner/spread {:.2})",
        spread / to_owner,
        full.rates[0].len(),
        median(pairs(&full.rates, Way::Spread, |spread, owner| spread / owner)),
        median(pairs(&full.rates, Way::Spread, |spread, owner| owner / spread)),
    );
    let follow = mean(&full.rates[Way::Follow.slot()]);
    println!(
        "full load spread, clients following the owner hint: {follow:.0} adds/s, median of the pairs' ratios to the owner's {:.2}; the members' CPU per add {:.0} µs, {:.2}x the owner's (median of the pairs)",
        median(pairs(&full.rates, Way::Follow, |follow, owner| follow / owner)),
        mean(&full.cpu[Way::Follow.slot()]),
        median(pairs(&full.cpu, Way::Follow, |follow, owner| follow / owner)),
    );
    // What an add costs in CPU depends on the rate (a slower disk makes
    // smaller commit groups, an idle moment costs timers and wake-ups
    // that a busy one shares out), and the two loads run at different
    // rates. So the same again at offered rates both sides keep up with:
    // half the slowest slice's, and four fifths of it.
    let slowest = full
        .rates
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let mut loads = vec![("full load".to_owned(), full)];
    for share in [0.5, 0.8] {
        let pace = share * slowest;
        let paced = alternate(&shoppers, &sides, 6, Some(pace)).await;
        paced.show(&format!("offered {pace:.0} adds/s"));
        loads.push((format!("at {pace:.0} adds/s"), paced));
    }
    for (name, load) in &loads {
        // Spread costs a third of a direct add plus two thirds of a
        // forwarded one, so a forwarded add costs (3 * spread/direct - 1)
        // / 2 times a direct one.
        let ratio = median(pairs(&load.cpu, Way::Spread, |spread, owner| {
            spread / owner
        }));
        println!(
            "{name}: the members' CPU per add spread {:.0} µs, to the owner {:.0} µs (means); median of the pairs' ratios {ratio:.2}, so a forwarded add costs {:.2}x a direct one",
            mean(&load.cpu[1]),
            mean(&load.cpu[0]),
            (3.0 * ratio - 1.0) / 2.0,
        );
        // The store's share follows the commit groups, which follow how
        // many adds wait for a commit at once (fewer when more of the 64
        // are in a hop): the rest is the work of the request itself.
        let outside: [Vec<f64>; 3] = [0, 1, 2].map(|slot| {
            load.cpu[slot]
                .iter()
                .zip(&load.store_cpu[slot])
                .map(|(all, store)| all - store)
                .collect()
        });
        let ratio = median(pairs(&outside, Way::Spread, |spread, owner| spread / owner));
        println!(
            "{name}: of that, the store threads' spread {:.0} µs, to the owner {:.0} µs, at {:.1} and {:.1} appends per commit; outside the store {:.0} and {:.0} µs, ratio {ratio:.2}: a forwarded add's work outside the store is {:.2}x a direct one's",
            mean(&load.store_cpu[1]),
            mean(&load.store_cpu[0]),
            mean(&load.groups[1]),
            mean(&load.groups[0]),
            mean(&outside[1]),
            mean(&outside[0]),
            (3.0 * ratio - 1.0) / 2.0,
        );
    }

    // The same add one at a time (nothing queues): to the owner vs through
    // another member, alternated in blocks.
    let mut direct = Vec::new();
    let mut forwarded = Vec::new();
    for block in 0..6 {
        for through in [block % 2 == 1, block % 2 == 0] {
            let took = shoppers.one_at_a_time(300, through).await;
            if through { &mut forwarded } else { &mut direct }.extend(took);
        }
    }
    let quantile = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    };
    let (d50, f50) = (quantile(&mut direct, 0.5), quantile(&mut forwarded, 0.5));
    let (d99, f99) = (quantile(&mut direct, 0.99), quantile(&mut forwarded, 0.99));
    println!(
        "one add at a time ({} each): to the owner p50 {d50:?} p99 {d99:?}; through another member p50 {f50:?} p99 {f99:?}; forwarded/direct p50 {:.2}, p99 {:.2}",
        direct.len(),
        f50.as_secs_f64() / d50.as_secs_f64(),
        f99.as_secs_f64() / d99.as_secs_f64(),
    );
}
