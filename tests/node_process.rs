//! A real `granary serve` process: start, configuration errors, graceful
//! stop under load, and `kill -9` under load losing no acknowledged change.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::{Http, NodeProcess, item, skus};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_with_defaults_and_reports_its_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let http = Http::new();
    let health = http.get(&node.url("/healthz")).await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(http.get(&node.url("/readyz")).await.unwrap().status, 200);
    assert!(
        dir.path().join("data/events.db").exists(),
        "the embedded store lives in the data dir"
    );
    // The node is its key: its id is the key's fingerprint, and it keeps
    // both across restarts.
    let keys = granary::security::NodeKeys::load_or_create(&dir.path().join("data")).unwrap();
    assert_eq!(node.node_id, keys.fingerprint.to_string());
    let first_id = node.node_id.clone();
    drop(node);
    let again = NodeProcess::start(&dir.path().join("data"), &[]);
    assert_eq!(again.node_id, first_id);
}

fn serve_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_granary"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run granary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let (code, stderr) = serve_with(&["--http", "not-an-address"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--http"), "{stderr}");

    let (code, stderr) = serve_with(&[], &[("GRANARY_IDLE_TIMEOUT", "forever")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("GRANARY_IDLE_TIMEOUT"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("granary.toml");
    std::fs::write(&file, "max_live_grains = 0\n").unwrap();
    let (code, stderr) = serve_with(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("max_live_grains"), "{stderr}");

    for (flag, value) in [
        ("--max-connections", "4"),
        ("--max-connections", "100000000"),
        ("--body-read-timeout", "1h"),
        ("--threads", "0"),
        ("--threads", "1025"),
    ] {
        let (code, stderr) = serve_with(&[flag, value], &[]);
        assert_eq!(code, 2, "{flag} {value}");
        assert!(stderr.contains(flag), "{stderr}");
    }

    std::fs::write(&file, "grcp = \"127.0.0.1:1\"\n").unwrap();
    let (code, stderr) = serve_with(&[], &[("GRANARY_CONFIG", file.to_str().unwrap())]);
    assert_eq!(code, 2);
    assert!(stderr.contains("grcp"), "{stderr}");
}

/// `threads` sets how many HTTP workers and grain threads a node runs: a
/// caller of the grain-call link is told that many grain threads, and the
/// process runs twice that many actix threads (one per worker, one per
/// grain thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_the_threads_it_is_told() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for threads in [1u32, 3] {
        let dir = tempfile::tempdir().unwrap();
        let count = threads.to_string();
        let node = NodeProcess::start(
            &dir.path().join("data"),
            &["--insecure-cluster", "--threads", &count],
        );
        let mut link = tokio::net::TcpStream::connect(node.grpc).await.unwrap();
        link.write_all(granary::cluster::link::PREFACE)
            .await
            .unwrap();
        link.write_all(&7u64.to_be_bytes()).await.unwrap();
        let mut answer = [0u8; 16 + 8];
        tokio::time::timeout(Duration::from_secs(10), link.read_exact(&mut answer))
            .await
            .expect("the link's answer in time")
            .unwrap();
        assert_eq!(&answer[..16], granary::cluster::link::PREFACE);
        let placed =
            granary::cluster::link::Placed::from_bytes(answer[16..].try_into().unwrap()).unwrap();
        assert_eq!(placed.threads, threads, "grain threads");
        assert_eq!(placed.thread, 7 % threads);
        #[cfg(target_os = "linux")]
        {
            // The HTTP workers may still be starting when the node says it
            // is ready: wait for them, then check no more came.
            let pid = node.child.id();
            let actix = || {
                std::fs::read_dir(format!("/proc/{pid}/task"))
                    .unwrap()
                    .filter_map(|task| {
                        std::fs::read_to_string(task.unwrap().path().join("comm")).ok()
                    })
                    .filter(|name| name.starts_with("actix-rt|system"))
                    .count()
            };
            let expected = 2 * threads as usize;
            let started = std::time::Instant::now();
            while actix() < expected && started.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let http = Http::new();
            for _ in 0..8 {
                assert_eq!(http.get(&node.url("/healthz")).await.unwrap().status, 200);
            }
            assert_eq!(actix(), expected, "HTTP workers and grain threads");
        }
    }
}

#[test]
fn a_busy_port_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = serve_with(&["--http", &addr, "--grpc", "127.0.0.1:0"], &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&addr) && stderr.contains("http"),
        "{stderr}"
    );
}

/// Clients that each add uniquely tagged items to their own cart until
/// stopped, recording what the node acknowledged.
struct Load {
    acked: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    /// Signalled after every acknowledgement.
    progress: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(node: &NodeProcess, clients: usize, per_client: usize) -> Load {
        let http = Http::new();
        // A cart holds at most 200 lines: each client's cart gets one of
        // each of these (a client stops at its first refusal).
        http.stock(node, (0..per_client.min(200)).map(|n| format!("s{n}")))
            .await;
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let progress = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let cart = http.create_cart(node).await;
            let url = node.url(&format!("/carts/{cart}/items"));
            let (http, acked, failed, progress) = (
                http.clone(),
                acked.clone(),
                failed.clone(),
                progress.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for n in 0..per_client {
                    let sku = format!("s{n}");
                    match http.post(&url, item(&sku)).await {
                        Ok(answer) if answer.status == 200 => {
                            acked
                                .lock()
                                .await
                                .entry(cart.clone())
                                .or_insert_with(BTreeSet::new)
                                .insert(sku);
                            progress.notify_waiters();
                        }
                        _ => {
                            // The node went away (killed or stopping): this
                            // client's last request is indeterminate.
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }));
        }
        Load {
            acked,
            failed,
            progress,
            tasks,
        }
    }

    async fn acked_count(&self) -> usize {
        self.acked.lock().await.values().map(BTreeSet::len).sum()
    }

    /// Waits until at least `n` changes were acknowledged (the load's own
    /// progress is the event awaited).
    async fn until_acked(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Register for the next acknowledgement before counting, so
            // none is missed between the count and the wait.
            let next = self.progress.notified();
            tokio::pin!(next);
            next.as_mut().enable();
            if self.acked_count().await >= n {
                return;
            }
            tokio::time::timeout_at(deadline, next)
                .await
                .expect("load made no progress");
        }
    }
}

/// Reads every cart from `node` and asserts it holds every acknowledged
/// item; returns what each cart holds.
async fn assert_acknowledged_present(
    node: &NodeProcess,
    acked: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let http = Http::new();
    let mut stored_by_cart = BTreeMap::new();
    for (cart, skus_acked) in acked {
        let answer = http
            .get(&node.url(&format!("/carts/{cart}")))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let stored: BTreeSet<String> = skus(&answer.json).into_iter().collect();
        let missing: Vec<_> = skus_acked.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "cart {cart} lost acknowledged items {missing:?}"
        );
        stored_by_cart.insert(cart.clone(), stored);
    }
    stored_by_cart
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProcess::start(&data, &[]);
    let load = Load::start(&node, 16, 1_000).await;
    load.until_acked(300).await;
    node.kill9();
    for task in load.tasks {
        let _ = task.await;
    }
    let acked = load.acked.lock().await.clone();
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert!(total >= 300);
    assert!(
        load.failed.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the kill cut requests in flight"
    );

    let node = NodeProcess::start(&data, &[]);
    assert_acknowledged_present(&node, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    graceful_stop_under_load(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_finishes_in_flight_requests_and_exits_zero() {
    graceful_stop_under_load(libc::SIGINT).await;
}

async fn graceful_stop_under_load(signal: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProcess::start(&data, &[]);
    let load = Load::start(&node, 8, 1_000_000).await;
    load.until_acked(100).await;
    node.signal(signal);
    let status = tokio::task::block_in_place(|| node.wait_exit(Duration::from_secs(30)));
    assert!(status.success(), "graceful stop exits 0, got {status}");
    for task in load.tasks {
        let _ = task.await;
    }
    // Every request the node took was answered; requests after the stop
    // were refused at connect. Whatever was acknowledged is durable, and a
    // graceful stop answers what it took: nothing was stored that the
    // client did not hear about, beyond at most one request per client
    // that was cut at the connection.
    let acked = load.acked.lock().await.clone();
    let node = NodeProcess::start(&data, &[]);
    let stored = assert_acknowledged_present(&node, &acked).await;
    for (cart, skus_acked) in &acked {
        assert!(stored[cart].len() <= skus_acked.len() + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_one_store_file_lose_no_update() {
    // Until the cluster directory gives each cart one owner, two nodes may
    // both host a cart; the store's version fence makes the stale one
    // reload and retry instead of overwriting.
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared.db");
    let shared = shared.to_str().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &["--store", shared]);
    let b = NodeProcess::start(&dir.path().join("b"), &["--store", shared]);
    let http = Http::new();
    http.stock(&a, (0..20).map(|n| format!("s{n}"))).await;
    let cart = http.create_cart(&a).await;
    for n in 0..20 {
        let node = if n % 2 == 0 { &b } else { &a };
        let answer = http
            .post(
                &node.url(&format!("/carts/{cart}/items")),
                item(&format!("s{n}")),
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let c = NodeProcess::start(&dir.path().join("c"), &["--store", shared]);
    let answer = http.get(&c.url(&format!("/carts/{cart}"))).await.unwrap();
    assert_eq!(skus(&answer.json).len(), 20);
    assert_eq!(answer.json["version"], 21);
}

/// `doze_after` reaches the grain runtime: at 100 ms a cart that takes no
/// call goes dormant (its actor stops; `/stats` counts a doze) long
/// before the default 10 s, and the next change wakes it, every line kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doze_after_sends_idle_carts_to_sleep_and_a_change_wakes_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &["--doze-after", "100ms"]);
    let http = Http::new();
    http.stock(&node, ["tea", "cake"]).await;
    let cart = http.create_cart(&node).await;
    let items = node.url(&format!("/carts/{cart}/items"));
    let added = http.post(&items, item("tea")).await.unwrap();
    assert_eq!(added.status, 200, "{added:?}");
    let carts = async || http.get(&node.url("/stats")).await.unwrap().json["grains"].clone();
    // A doze has no event a client can await: poll the counter. (The
    // cart may already have dozed and woken once, between its creation
    // and the first add on a slow machine.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let woken = loop {
        let stats = carts().await;
        let (dozes, wakes) = (stats["dozes"].as_u64(), stats["wakes"].as_u64());
        if dozes > wakes {
            break wakes.expect("a wake count");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cart dozed within 5 s: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let added = http.post(&items, item("cake")).await.unwrap();
    assert_eq!(added.status, 200, "{added:?}");
    assert_eq!(skus(&added.json), ["tea", "cake"]);
    assert_eq!(added.json["version"], 3, "created, then two adds");
    let wakes = carts().await["wakes"].as_u64().expect("a wake count");
    assert_eq!(wakes, woken + 1, "the change woke the dormant cart");
}

/// `granary catalog import FILE` against a running node.
fn import(node: &NodeProcess, file: &std::path::Path) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_granary"))
        .args(["catalog", "import"])
        .arg(file)
        .args(["--url", &node.url("")])
        .env("GRANARY_ADMIN_TOKEN", support::ADMIN_TOKEN)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run granary catalog import");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_import_sets_every_product_and_names_every_line_it_could_not() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let http = Http::new();
    let file = dir.path().join("catalog.jsonl");
    let product = |sku: &str| format!("/products/{sku}");

    // A line that is not a product: nothing is sent.
    std::fs::write(
        &file,
        "{\"sku\": \"A\", \"name\": \"a\", \"unit_price\": 100, \"currency\": \"EUR\"}\n{\"sku\": \n",
    )
    .unwrap();
    let (ok, _, stderr) = tokio::task::block_in_place(|| import(&node, &file));
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert_eq!(
        http.get(&node.url(&product("A"))).await.unwrap().status,
        404
    );

    // A product the node refuses: the others are set, the refusal named.
    std::fs::write(
        &file,
        "# two products\n\
         {\"sku\": \"A\", \"name\": \"a\", \"unit_price\": 100, \"currency\": \"EUR\", \"stock\": 3}\n\
         {\"sku\": \"B\", \"name\": \"b\", \"unit_price\": 100, \"currency\": \"eur\"}\n",
    )
    .unwrap();
    let (ok, _, stderr) = tokio::task::block_in_place(|| import(&node, &file));
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("line 3 (B)") && stderr.contains("currency"),
        "{stderr}"
    );
    let a = http.get(&node.url(&product("A"))).await.unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["unit_price"], 100);
    assert_eq!(
        http.get(&node.url(&product("B"))).await.unwrap().status,
        404
    );

    // All good: exit 0 and the count.
    std::fs::write(
        &file,
        "{\"sku\": \"B\", \"name\": \"b\", \"unit_price\": 250, \"currency\": \"EUR\"}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| import(&node, &file));
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "set 1 product");
    let b = http.get(&node.url(&product("B"))).await.unwrap();
    assert_eq!(b.json["unit_price"], 250, "{b:?}");
}

/// Sends `request` on a new connection to `node` and reads until the
/// server closes it or a whole response is in: its status and the rest.
async fn raw_exchange(node: &NodeProcess, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("connect");
    tcp.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: a server that never answers fails the test.
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                });
                if length.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 20 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Open file descriptors of process `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A body that stalls half way is answered 408 with a JSON error once the
/// body-read deadline passes (the connection and its buffer are let go),
/// and connections past the cap wait in the listen backlog instead of each
/// taking a file and memory: the node holds no more than its cap, and
/// serves a normal request once idle ones are timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_408_and_connections_stay_under_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        &dir.path().join("data"),
        &["--body-read-timeout", "1s", "--max-connections", "16"],
    );
    let cart = Http::new().create_cart(&node).await;

    let stalled = format!(
        "POST /carts/{cart}/items HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sku\": "
    );
    let started = std::time::Instant::now();
    let (status, answer) = raw_exchange(&node, stalled.as_bytes()).await;
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");
    eprintln!("stalled body answered after {:?}", started.elapsed());

    let pid = node.child.id();
    let before = open_files(pid);
    // More idle connections than the cap: they send nothing at all.
    let idle = support::silent_connections(node.http, 24).await;
    // The node takes connections up to its cap (the event awaited), and
    // no more while they are open. `before` may count a connection or two
    // of the requests above that the node is still closing: the bounds
    // allow for three either way, well short of the 24 opened.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_files(pid) + 3 < before + 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "the node took fewer than its cap: {} files open, {before} before",
            open_files(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = open_files(pid);
    assert!(
        held <= before + 16 + 3,
        "{held} files open, {before} before: over the cap"
    );
    // A normal request waits its turn and is served once the idle
    // connections' header deadline (5 s) frees slots.
    let (status, answer) = raw_exchange(
        &node,
        format!("GET /carts/{cart} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    drop(idle);
}

/// Over a real connection, `HEAD` gets `GET`'s status and headers and no
/// body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_without_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let (status, answer) = raw_exchange(
        &node,
        b"HEAD /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert_eq!(body, "", "no body for HEAD");
}

/// The refusals actix-http sends before any handler runs carry the API's
/// JSON error body too, over a real connection: a request that is not
/// HTTP (400), a head with too many headers (431), a head that never
/// finishes (408, after the 5 s head deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_app_have_json_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let many_headers: String = (0..200).map(|n| format!("X-{n}: a\r\n")).collect();
    let too_many = format!("GET /healthz HTTP/1.1\r\nHost: node\r\n{many_headers}\r\n");
    let cases = [
        (
            b"GET /healthz HTTP/1.1\r\nHost: node\r\nNot A Header\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (b"HELLO\r\n\r\n".to_vec(), 400, "bad_request"),
        (too_many.into_bytes(), 431, "headers_too_large"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: node\r\n".to_vec(),
            408,
            "request_timeout",
        ),
    ];
    let answers = futures_util::future::join_all(
        cases
            .iter()
            .map(|(request, _, _)| raw_exchange(&node, request)),
    )
    .await;
    for ((request, status, code), (got, answer)) in cases.iter().zip(answers) {
        let request = String::from_utf8_lossy(&request[..request.len().min(40)]);
        assert_eq!(got, *status, "{request}: {answer}");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{request}: {head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(body["code"], *code, "{request}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // And the server still serves.
    let (status, answer) = raw_exchange(
        &node,
        b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}
