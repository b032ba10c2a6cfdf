//! Single activation at scale, with real node processes: 200,000 carts
//! hosted by one member, a second member joins (half the directory's
//! partitions move to it, rebuilt from paged grain lists), every cart is
//! read through every member, and the members' live carts sum to exactly
//! 200,000 — none hosted twice, none lost.
//!
//! The cart count can be lowered with `GRANARY_SCALE_CARTS` for a quick
//! local run; CI runs the full count.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cluster::until_all;
use support::{Http, NodeProcess};

/// Requests in flight per phase.
const IN_FLIGHT: usize = 64;

fn carts() -> usize {
    std::env::var("GRANARY_SCALE_CARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// Runs `request(i)` for every `i` in `0..count`, `IN_FLIGHT` at a time;
/// each must succeed.
async fn all<F, Fut>(what: &str, count: usize, request: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (request, next) = (request.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), String>(());
                }
                request(i).await?;
            }
        }));
    }
    for worker in workers {
        if let Err(err) = worker.await.expect("worker") {
            panic!("{what}: {err}");
        }
    }
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "{what}: {count} requests in {took:.1} s ({:.0}/s)",
        count as f64 / took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_carts_stay_single_when_a_member_joins() {
    let count = carts();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.db").to_str().unwrap().to_owned();
    let a = NodeProcess::start(&dir.path().join("a"), &["--store", &store]);
    let http = Http::new();

    // Every cart is created on A, which is alone: A hosts them all.
    let created = Arc::new(std::sync::Mutex::new(vec![String::new(); count]));
    {
        let (http, created, url) = (http.clone(), created.clone(), a.url("/carts"));
        all("create on A", count, move |i| {
            let (http, created, url) = (http.clone(), created.clone(), url.clone());
            async move {
                let answer = http.send("POST", &url, None, &[]).await?;
                let id = answer.json["id"]
                    .as_str()
                    .filter(|_| answer.status == 201)
                    .ok_or_else(|| format!("create: {answer:?}"))?;
                created.lock().unwrap()[i] = id.to_owned();
                Ok(())
            }
        })
        .await;
    }
    let cart_ids: Arc<Vec<String>> = Arc::new(std::mem::take(&mut *created.lock().unwrap()));
    let before = until_all(&[&a], "A hosts every cart", |s| {
        s.live_grains == count as u64
    })
    .await;
    assert_eq!(before[0].live_grains, count as u64);

    // B joins: half the partitions move to it.
    let token = support::token(&a);
    let seed = a.grpc.to_string();
    let b = NodeProcess::start(
        &dir.path().join("b"),
        &["--store", &store, "--join", &seed, "--token", &token],
    );
    until_all(&[&a, &b], "two members, one committed view", |s| {
        s.members == 2 && s.committed_version == s.config_version && s.peers.iter().all(|p| p.live)
    })
    .await;

    // Every cart is read through every member.
    for node in [&a, &b] {
        let (http, cart_ids, base) = (http.clone(), cart_ids.clone(), node.url("/carts/"));
        let what = format!("read every cart through {}", node.http);
        all(&what, count, move |i| {
            let (http, cart_ids, base) = (http.clone(), cart_ids.clone(), base.clone());
            async move {
                let url = format!("{base}{}", cart_ids[i]);
                let answer = http
                    .send_past_503("GET", &url, None, Duration::from_secs(10))
                    .await;
                (answer.status == 200 && answer.json["id"] == cart_ids[i].as_str())
                    .then_some(())
                    .ok_or_else(|| format!("GET {url}: {answer:?}"))
            }
        })
        .await;
    }

    // Exactly one member hosts each cart.
    let statuses = until_all(&[&a, &b], "both members report", |_| true).await;
    let live: u64 = statuses.iter().map(|s| s.live_grains).sum();
    assert_eq!(
        live,
        count as u64,
        "live carts per member: {:?}",
        statuses.iter().map(|s| s.live_grains).collect::<Vec<_>>()
    );
}
