//! Node processes on a real PostgreSQL server (a throwaway one the
//! harness starts, see `granary-testpg`): durability across restarts, a
//! database outage, and the lost-write check across kills, restarts,
//! graceful closes and a partition of a 3-node cluster.

#[path = "support/proxy.rs"]
mod proxy;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Http, NodeProcess};

/// Retries `POST /carts` on 503 for at most 20 s.
async fn create_cart(http: &Http, node: &NodeProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = http.send("POST", &node.url("/carts"), None, &[]).await;
        match answer {
            Ok(answer) if answer.status == 201 => {
                return answer.json["id"].as_str().expect("id").to_owned();
            }
            Ok(answer) if answer.status != 503 => panic!("{answer:?}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no cart could be created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn add(http: &Http, node: &NodeProcess, cart: &str, sku: &str) -> support::Answer {
    http.send(
        "POST",
        &node.url(&format!("/carts/{cart}/items")),
        Some(support::item(sku)),
        &[("Idempotency-Key", &format!("add-{sku}"))],
    )
    .await
    .expect("an answer")
}

/// A node whose store URL asks for a verified TLS connection serves carts
/// over it (the server takes TLS only); given a CA that did not sign the
/// server's certificate, it does not start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_talks_to_postgres_over_verified_tls_or_not_at_all() {
    let certificates = granary_testpg::test_certificates();
    let Some(server) = tokio::task::block_in_place(|| {
        granary_testpg::private_with_tls(&certificates.server, &certificates.server_key)
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&ca, &certificates.ca).unwrap();
    std::fs::write(&other, granary_testpg::test_certificates().ca).unwrap();
    let url = server.fresh_database();
    let verified = |roots: &std::path::Path| {
        format!("{url}?sslmode=verify-full&sslrootcert={}", roots.display())
    };

    let node = NodeProcess::start(&dir.path().join("node"), &["--store", &verified(&ca)]);
    let http = Http::new();
    http.stock(&node, ["tls"]).await;
    let cart = create_cart(&http, &node).await;
    assert_eq!(add(&http, &node, &cart, "tls").await.status, 200);
    drop(node);

    let other_dir = dir.path().join("other");
    let (exit, stderr) = tokio::task::block_in_place(|| {
        support::serve_expecting_failure(&[
            "--data-dir",
            other_dir.to_str().unwrap(),
            "--store",
            &verified(&other),
        ])
    });
    assert!(!exit.success(), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgres_keeps_every_change_across_a_restart() {
    let Some(server) = granary_testpg::shared() else {
        return;
    };
    let url = server.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let mut node = NodeProcess::start(dir.path(), &["--store", &url]);
    http.stock(&node, (0..5).map(|n| format!("p{n}"))).await;
    let cart = create_cart(&http, &node).await;
    for n in 0..5 {
        assert_eq!(add(&http, &node, &cart, &format!("p{n}")).await.status, 200);
    }
    node.kill9();
    let node = NodeProcess::start(dir.path(), &["--store", &url]);
    let answer = http
        .get(&node.url(&format!("/carts/{cart}")))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(support::skus(&answer.json).len(), 5);
    // The events are rows of the shop's own database.
    let db = url.rsplit('/').next().unwrap();
    let rows = server.psql_in(
        db,
        "SELECT count(*) FROM granary_events WHERE kind = 'cart'",
    );
    assert_eq!(rows, "6", "one CartCreated and five ItemAdded");
}

/// PostgreSQL stops for a while: writes fail fast with 503 and are never
/// acknowledged, reads of live carts keep being answered from memory, and
/// once it is back the node writes again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_writes_fast_keeps_reads_and_heals_by_itself() {
    let Some(server) = tokio::task::block_in_place(granary_testpg::private) else {
        return;
    };
    let url = server.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = NodeProcess::start(dir.path(), &["--store", &url]);
    let during = (0..10).map(|n| format!("during-{n}"));
    http.stock(
        &node,
        ["before", "kept", "after"]
            .map(String::from)
            .into_iter()
            .chain(during),
    )
    .await;
    let written = create_cart(&http, &node).await;
    let read_only = create_cart(&http, &node).await;
    assert_eq!(add(&http, &node, &written, "before").await.status, 200);
    assert_eq!(add(&http, &node, &read_only, "kept").await.status, 200);

    tokio::task::block_in_place(|| server.stop());
    let mut refused = Vec::new();
    for n in 0..10 {
        let sku = format!("during-{n}");
        let sent = Instant::now();
        let answer = add(&http, &node, &written, &sku).await;
        assert!(
            sent.elapsed() < Duration::from_secs(6),
            "a write during the outage took {:?}",
            sent.elapsed()
        );
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(answer.retry_after.is_some(), "{answer:?}");
        if answer.json["code"] == "unavailable" {
            refused.push(sku);
        }
        let read = http
            .get(&node.url(&format!("/carts/{read_only}")))
            .await
            .unwrap();
        assert_eq!(read.status, 200, "a live cart read from memory: {read:?}");
        assert_eq!(support::skus(&read.json), vec!["kept".to_owned()]);
    }
    assert!(!refused.is_empty(), "no write was refused as not made");

    tokio::task::block_in_place(|| server.restart());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = add(&http, &node, &written, "after").await;
        if answer.status == 200 {
            let skus = support::skus(&answer.json);
            assert!(skus.contains(&"before".to_owned()), "{skus:?}");
            for sku in &refused {
                assert!(!skus.contains(sku), "{sku} was refused yet stored");
            }
            break;
        }
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a client learned of one item it tried to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Acknowledged,
    /// No 200 within the item's deadline: it may or may not be stored.
    Indeterminate,
}

/// Items per cart before a client starts a new one (a cart holds at most
/// 200 lines).
const ITEMS_PER_CART: usize = 150;

/// A client behind a load balancer: uniquely tagged items, each sent with
/// its own Idempotency-Key to the next node, and on a 503 or a connection
/// failure sent again (same key) to another node, for at most 15 s. It
/// starts a new cart every `ITEMS_PER_CART` items; what it learned, per
/// cart.
async fn client(
    http: Http,
    urls: Arc<Vec<String>>,
    client: usize,
    stop: Arc<AtomicBool>,
) -> Vec<(String, BTreeMap<String, Fate>)> {
    let mut carts: Vec<(String, BTreeMap<String, Fate>)> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        if n % ITEMS_PER_CART == 0 {
            let cart = create_cart_anywhere(&http, &urls, client + n).await;
            carts.push((cart, BTreeMap::new()));
        }
        let (cart, fates) = carts.last_mut().expect("a cart");
        // One of each catalog product per cart: unique within the cart,
        // which is what the check counts; the key is unique everywhere.
        let sku = format!("p{}", n % ITEMS_PER_CART);
        let key = format!("lost-write-c{client}-{n}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut target = client + n;
        let fate = loop {
            let url = format!("{}/carts/{cart}/items", urls[target % urls.len()]);
            match http
                .send(
                    "POST",
                    &url,
                    Some(support::item(&sku)),
                    &[("Idempotency-Key", &key)],
                )
                .await
            {
                Ok(answer) if answer.status == 200 => break Fate::Acknowledged,
                Ok(answer) if answer.status != 503 => panic!("{sku}: unexpected {answer:?}"),
                _ => {}
            }
            if Instant::now() > deadline {
                break Fate::Indeterminate;
            }
            target += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        fates.insert(sku, fate);
        n += 1;
    }
    carts
}

/// `POST /carts` through any node, retried on 503 or a refused connection
/// for at most 30 s.
async fn create_cart_anywhere(http: &Http, urls: &[String], start: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut target = start;
    loop {
        let url = format!("{}/carts", urls[target % urls.len()]);
        match http.send("POST", &url, None, &[]).await {
            Ok(answer) if answer.status == 201 => {
                return answer.json["id"].as_str().expect("id").to_owned();
            }
            Ok(answer) if answer.status != 503 => panic!("{answer:?}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no cart could be created");
        target += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until all three nodes are live members of one committed view.
async fn all_back(nodes: &[NodeProcess], what: &str) {
    let nodes: Vec<&NodeProcess> = nodes.iter().collect();
    support::cluster::until_all(&nodes, what, |r| {
        r.members == 3
            && r.committed_version == r.config_version
            && r.quorum
            && r.peers.iter().all(|p| p.live)
    })
    .await;
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// The lost-write check. Three nodes share one PostgreSQL database; clients
/// add uniquely tagged items through every node while nodes are killed
/// (`kill -9`) and restarted, gracefully closed and restarted, and one is
/// cut off behind a proxy and healed. At the end every acknowledged item is
/// in its cart exactly once, every stored item was sent, and items whose
/// requests never got an answer are reported as indeterminate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_change_is_lost_across_kills_restarts_closes_and_partitions() {
    let Some(server) = granary_testpg::shared() else {
        return;
    };
    let url = server.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    // Fixed ports, so restarted nodes come back where clients and peers
    // expect them. A's gRPC port sits behind a proxy the test can cut.
    let (http_addrs, grpc_addrs): (Vec<String>, Vec<String>) =
        (0..3).map(|_| (free_addr(), free_addr())).unzip();
    let proxy = proxy::Proxy::start(grpc_addrs[0].parse().unwrap()).await;
    let behind = proxy.addr.to_string();
    let token = std::cell::OnceCell::new();
    let args = |i: usize| -> Vec<String> {
        let mut args = vec!["--store".to_owned(), url.clone()];
        if i == 0 {
            args.extend(["--advertise".to_owned(), behind.clone()]);
        } else {
            let token: &String = token.get().expect("a token from the founder");
            args.extend([
                "--join".to_owned(),
                grpc_addrs[0].clone(),
                "--token".to_owned(),
                token.clone(),
            ]);
        }
        args
    };
    let start = |i: usize| {
        let args = args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        NodeProcess::start_at(
            &dir.path().join(format!("n{i}")),
            &http_addrs[i],
            &grpc_addrs[i],
            &args,
        )
    };
    let founder = start(0);
    let _ = token.set(support::token(&founder));
    let mut nodes = vec![founder, start(1), start(2)];
    all_back(&nodes, "three live members").await;

    let http = Http::new();
    http.stock(&nodes[0], (0..ITEMS_PER_CART).map(|n| format!("p{n}")))
        .await;
    let urls: Arc<Vec<String>> =
        Arc::new(nodes.iter().map(|n| format!("http://{}", n.http)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..6 {
        clients.push(tokio::spawn(client(
            http.clone(),
            urls.clone(),
            c,
            stop.clone(),
        )));
    }
    let pause = || tokio::time::sleep(Duration::from_millis(700));

    // 1. kill -9 a member, restart it.
    pause().await;
    nodes[1].kill9();
    pause().await;
    nodes[1] = start(1);
    all_back(&nodes, "the killed member back").await;
    // 2. Close a member gracefully, restart it.
    pause().await;
    nodes[2].terminate();
    let exit = tokio::task::block_in_place(|| nodes[2].wait_exit(Duration::from_secs(30)));
    assert!(exit.success(), "a graceful close exits 0: {exit}");
    nodes[2] = start(2);
    all_back(&nodes, "the closed member back").await;
    // 3. Cut A off behind the proxy until it fenced and was removed, heal.
    pause().await;
    proxy.cut().await;
    support::cluster::until_all(&[&nodes[1]], "A removed", |r| r.members == 2).await;
    proxy.heal();
    all_back(&nodes, "A back after the partition").await;
    // 4. kill -9 the founder, restart it.
    pause().await;
    nodes[0].kill9();
    pause().await;
    nodes[0] = start(0);
    all_back(&nodes, "the founder back").await;
    pause().await;
    stop.store(true, Ordering::Relaxed);

    let (mut acknowledged, mut indeterminate, mut indeterminate_stored) = (0, 0, 0);
    for task in clients {
        for (cart, fates) in task.await.expect("client") {
            let url = format!("{}/carts/{cart}", urls[0]);
            let answer = http
                .send_past_503("GET", &url, None, Duration::from_secs(30))
                .await;
            assert_eq!(answer.status, 200, "{answer:?}");
            let stored = support::skus(&answer.json);
            let distinct: BTreeSet<&String> = stored.iter().collect();
            assert_eq!(
                distinct.len(),
                stored.len(),
                "an item is stored twice: {stored:?}"
            );
            // Adding a sku again adds to its line: a duplicate would show
            // as a quantity of 2.
            for line in answer.json["lines"].as_array().expect("lines") {
                assert_eq!(line["quantity"], 1, "an item is stored twice: {line}");
            }
            for sku in &stored {
                assert!(
                    fates.contains_key(sku),
                    "{sku} is stored but was never sent"
                );
            }
            for (sku, fate) in &fates {
                match fate {
                    Fate::Acknowledged => {
                        acknowledged += 1;
                        assert!(
                            distinct.contains(sku),
                            "acknowledged {sku} was lost from {cart}"
                        );
                    }
                    Fate::Indeterminate => {
                        indeterminate += 1;
                        if distinct.contains(sku) {
                            indeterminate_stored += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "lost-write check: {acknowledged} acknowledged (all present exactly once), {indeterminate} indeterminate ({indeterminate_stored} of them stored), 0 lost, 0 phantom"
    );
    assert!(acknowledged > 50, "too little got through: {acknowledged}");
}
