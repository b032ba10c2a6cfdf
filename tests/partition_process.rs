//! A partition through a TCP proxy the test controls: the node behind it
//! fences itself, the majority removes it and serves its carts, never two
//! at once, and after healing it rejoins.

#[path = "support/proxy.rs"]
mod proxy;
mod support;

use std::time::{Duration, Instant};

use support::{Http, NodeProcess};

use support::cluster::{pb as cluster, status};

async fn until(
    node: &NodeProcess,
    what: &str,
    done: impl Fn(&cluster::StatusReply) -> bool,
) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if status(node).await.is_some_and(|r| done(&r)) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_fences_before_the_majority_serves_its_carts_and_rejoins_after_healing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.db").to_str().unwrap().to_owned();
    let grpc_a = free_port();
    let proxy = proxy::Proxy::start(grpc_a.parse().unwrap()).await;
    let behind = proxy.addr.to_string();
    let a = NodeProcess::start_at(
        &dir.path().join("a"),
        "127.0.0.1:0",
        &grpc_a,
        &["--store", &store, "--advertise", &behind],
    );
    let token = support::token(&a);
    let join = ["--store", &store, "--join", &grpc_a, "--token", &token];
    let b = NodeProcess::start(&dir.path().join("b"), &join);
    let c = NodeProcess::start(&dir.path().join("c"), &join);
    for node in [&a, &b, &c] {
        until(node, "three live members", |r| {
            r.members == 3
                && r.committed_version == r.config_version
                && r.peers.iter().all(|p| p.live)
        })
        .await;
    }

    // Carts created through A are hosted by A.
    let http = Http::new();
    http.stock(&a, (0..4).map(|n| format!("s{n}"))).await;
    let mut carts = Vec::new();
    for n in 0..4 {
        let created = http
            .send_past_503("POST", &a.url("/carts"), None, Duration::from_secs(30))
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        let cart = created.json["id"].as_str().unwrap().to_owned();
        let added = http
            .post(
                &a.url(&format!("/carts/{cart}/items")),
                support::item(&format!("s{n}")),
            )
            .await
            .unwrap();
        assert_eq!(added.status, 200);
        carts.push(cart);
    }

    // Cut A off: nothing reaches it any more.
    let cut_at = Instant::now();
    proxy.cut().await;
    let first_cart = carts[0].clone();
    let watcher_url = b.url(&format!("/carts/{first_cart}"));
    let served_elsewhere = tokio::spawn(async move {
        let http = Http::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = http.get(&watcher_url).await;
            if let Ok(answer) = &answer
                && answer.status == 200
            {
                return (Instant::now(), answer.clone());
            }
            assert!(
                Instant::now() < deadline,
                "B never served A's cart; last answer {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let fenced_at = until(&a, "A fenced", |r| !r.quorum).await;
    assert!(
        fenced_at - cut_at < Duration::from_millis(600 + 1_000),
        "fenced after {:?}",
        fenced_at - cut_at
    );
    let refused = http
        .send("POST", &a.url("/carts"), None, &[])
        .await
        .unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json["code"], "fenced");
    let released_at = until(&a, "A's carts released", |r| r.live_grains == 0).await;

    let (served_at, answer) = served_elsewhere.await.unwrap();
    eprintln!(
        "after the cut: A fenced at {:?}, released its carts at {:?}; B served one at {:?}",
        fenced_at - cut_at,
        released_at - cut_at,
        served_at - cut_at
    );
    assert!(
        fenced_at < served_at,
        "B served A's cart before A had fenced itself"
    );
    assert!(
        released_at < served_at,
        "B served A's cart while A still hosted it"
    );
    assert_eq!(support::skus(&answer.json), ["s0"]);
    until(&b, "A removed", |r| {
        r.members == 2 && r.committed_version == r.config_version
    })
    .await;
    for (n, cart) in carts.iter().enumerate() {
        let url = c.url(&format!("/carts/{cart}"));
        let answer = http
            .send_past_503("GET", &url, None, Duration::from_secs(30))
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(support::skus(&answer.json), [format!("s{n}")]);
    }

    // Heal: A asks to be admitted again and the cluster is whole.
    proxy.heal();
    for node in [&a, &b, &c] {
        until(node, "A back", |r| {
            r.members == 3 && r.committed_version == r.config_version && r.quorum
        })
        .await;
    }
}
