//! Helpers for tests that run real `granary` node processes on loopback.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// CPU time (user + system) a `/proc/.../stat` line reports: fields 14
/// and 15, counted after the command name (which may hold spaces), in
/// USER_HZ (100 a second on Linux). `None` if the line is not one.
pub fn cpu_of_stat(stat: &str) -> Option<Duration> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ').skip(11);
    let ticks = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time process `pid` has used so far (zero where `/proc` has none).
pub fn cpu_of_process(pid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| cpu_of_stat(&stat))
        .unwrap_or_default()
}

/// CPU time the threads of process `pid` whose name starts with `prefix`
/// have used so far (`/proc/<pid>/task/*/stat`; a thread's name is cut to
/// 15 bytes there). Threads that have ended are not counted.
pub fn cpu_of_threads(pid: u32, prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter(|stat| {
            let name = stat.find('(').map(|open| &stat[open + 1..]);
            name.is_some_and(|name| name.starts_with(prefix))
        })
        .filter_map(|stat| cpu_of_stat(&stat))
        .sum()
}

/// Context switches (voluntary and not) the threads of process `pid` have
/// made so far (`/proc/<pid>/task/*/status`; threads that have ended are
/// not counted): how often its threads slept and were woken, or were
/// preempted.
pub fn switches_of_process(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The sum of every sample of metric `name` (any labels) in an OpenMetrics
/// exposition `text`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.find('}')? + 1..],
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// A node process. Killed (SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub node_id: String,
    pub data_dir: PathBuf,
    /// Started with `--insecure-cluster` (plaintext between members).
    pub insecure: bool,
    /// What the node wrote to stderr (its log), also passed on to the
    /// test's stderr.
    log: Arc<Log>,
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl NodeProcess {
    /// Starts `granary serve` on free loopback ports with `data_dir`, plus
    /// `extra` arguments, and waits for its ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> NodeProcess {
        Self::start_at(data_dir, "127.0.0.1:0", "127.0.0.1:0", extra)
    }

    /// Starts a node on the given HTTP and gRPC addresses (e.g. to restart
    /// one where its clients and peers expect it).
    pub fn start_at(data_dir: &Path, http: &str, grpc: &str, extra: &[&str]) -> NodeProcess {
        Self::launch(data_dir, http, grpc, extra, &[])
    }

    /// [`NodeProcess::start`] with `env` set for the node.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        Self::launch(data_dir, "127.0.0.1:0", "127.0.0.1:0", extra, env)
    }

    fn launch(
        data_dir: &Path,
        http: &str,
        grpc: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> NodeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_granary"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http", http, "--grpc", grpc])
            .args(extra)
            .env("GRANARY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("GRANARY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn granary");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("stderr");
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                eprintln!("{line}");
                collected
                    .lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
                collected.grew.notify_all();
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("granary ready ") => break line,
                Some(Ok(_)) => continue,
                _ => {
                    let status = child.wait().expect("wait");
                    panic!("granary exited before it was ready: {status}");
                }
            }
        };
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |name: &str| -> String {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .unwrap_or_else(|| panic!("ready line lacks {name}: {ready}"))
        };
        NodeProcess {
            http: field("http").parse().expect("http addr"),
            grpc: field("grpc").parse().expect("grpc addr"),
            node_id: field("node"),
            data_dir: data_dir.to_path_buf(),
            insecure: extra.contains(&"--insecure-cluster"),
            child,
            log,
        }
    }

    /// Waits (at most `limit`, or the test fails) until the node has logged
    /// a line containing every one of `needles`; that line.
    pub fn wait_for_log(&self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut lines = self.log.lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(line) = lines
                .iter()
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the node did not log {needles:?} within {limit:?}"
            );
            lines = self
                .log
                .grew
                .wait_timeout(lines, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// How many lines the node has logged so far that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        let lines = self.log.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().filter(|line| line.contains(needle)).count()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` (e.g. `libc::SIGINT`, what ctrl-c sends).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        // Wait for the exit itself; a watchdog kills the node if it takes
        // longer than `limit`, which then fails the test.
        let pid = self.child.id() as libc::pid_t;
        let (exited, watch) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let overdue = watch.recv_timeout(limit).is_err();
            if overdue {
                // SAFETY: kill(2) on a pid we spawned and have not reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            overdue
        });
        let status = self.child.wait().expect("wait");
        let _ = exited.send(());
        let overdue = watchdog.join().expect("watchdog");
        assert!(!overdue, "node did not exit within {limit:?}");
        status
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small JSON-over-HTTP/1.1 client with a deadline on every request.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: status, ETag (if any) and the JSON body (Null if none).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub etag: Option<String>,
    pub retry_after: Option<String>,
    /// `Granary-Owner`: the cart's owner, when another member forwarded
    /// the request to it.
    pub owner: Option<String>,
    pub json: serde_json::Value,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let body = body.map(|json| Bytes::from(serde_json::to_vec(&json).expect("encode")));
        let (status, headers, bytes) = self.exchange(method, url, body, headers).await?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, retry_after, owner) = (
            header("etag"),
            header("retry-after"),
            header("granary-owner"),
        );
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| format!("bad JSON from server: {e}"))?
        };
        Ok(Answer {
            status,
            etag,
            retry_after,
            owner,
            json,
        })
    }

    /// `method url` with an already encoded JSON body: the status and the
    /// body's length, the body not parsed (a load generator's request: it
    /// should cost the machine it shares with the server little).
    pub async fn status_of(
        &self,
        method: &str,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, usize), String> {
        let (status, length, _) = self.status_naming_owner(method, url, body).await?;
        Ok((status, length))
    }

    /// [`Http::status_of`], and the owner the answer names
    /// (`Granary-Owner`), if any.
    pub async fn status_naming_owner(
        &self,
        method: &str,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, usize, Option<String>), String> {
        let (status, headers, bytes) = self.exchange(method, url, body, &[]).await?;
        let owner = headers
            .get("granary-owner")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((status, bytes.len(), owner))
    }

    /// `GET url` answered as text: the status, the Content-Type and the
    /// body.
    pub async fn text(&self, url: &str) -> Result<(u16, String, String), String> {
        let (status, headers, bytes) = self.exchange("GET", url, None, &[]).await?;
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?;
        Ok((status, content_type, text))
    }

    /// One exchange: status, headers and the whole body.
    async fn exchange(
        &self,
        method: &str,
        url: &str,
        body: Option<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
        let mut request = hyper::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, parts.headers, bytes))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "request timed out".to_owned())?
    }

    pub async fn get(&self, url: &str) -> Result<Answer, String> {
        self.send("GET", url, None, &[]).await
    }

    pub async fn post(&self, url: &str, body: serde_json::Value) -> Result<Answer, String> {
        self.send("POST", url, Some(body), &[]).await
    }

    /// `method url` retried while the node answers 503 (as a client that
    /// honours Retry-After would), for `limit` at most; the last answer.
    pub async fn send_past_503(
        &self,
        method: &str,
        url: &str,
        body: Option<serde_json::Value>,
        limit: Duration,
    ) -> Answer {
        let deadline = Instant::now() + limit;
        loop {
            let answer = self
                .send(method, url, body.clone(), &[])
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            if answer.status != 503 || Instant::now() > deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts every one of `skus` in the catalog through `node` (the admin
    /// API), each with a million units; fails the test if one is refused.
    pub async fn stock<S: AsRef<str>>(
        &self,
        node: &NodeProcess,
        skus: impl IntoIterator<Item = S>,
    ) {
        let skus: Vec<String> = skus.into_iter().map(|s| s.as_ref().to_owned()).collect();
        // Sixteen at a time: a test may name a thousand.
        for chunk in skus.chunks(16) {
            let puts = chunk
                .iter()
                .map(|sku| self.set_product(node, sku, 1_000_000));
            futures_util::future::join_all(puts).await;
        }
    }

    /// `PUT /admin/products/{sku}` through `node` with `on_hand` units,
    /// retried past 503s for 30 s; it must answer 200.
    pub async fn set_product(&self, node: &NodeProcess, sku: &str, on_hand: u64) {
        let url = node.url(&format!("/admin/products/{sku}"));
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self
                .send(
                    "PUT",
                    &url,
                    Some(product(sku, on_hand)),
                    &[("authorization", &auth)],
                )
                .await;
            match answer {
                Ok(answer) if answer.status == 200 => return,
                Ok(answer) if answer.status != 503 => panic!("PUT {url}: {answer:?}"),
                other => assert!(Instant::now() < deadline, "PUT {url}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a cart on `node` and returns its id.
    pub async fn create_cart(&self, node: &NodeProcess) -> String {
        let answer = self
            .send("POST", &node.url("/carts"), None, &[])
            .await
            .expect("create cart");
        assert_eq!(answer.status, 201, "{answer:?}");
        answer.json["id"].as_str().expect("id").to_owned()
    }
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, or `target/` in the
/// checkout): where the install scripts put the tests' tools.
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The admin token every test node runs with (`GRANARY_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// An add-item body: one unit of `sku` (which the catalog must have: see
/// [`Http::stock`]).
pub fn item(sku: &str) -> serde_json::Value {
    serde_json::json!({"sku": sku, "quantity": 1})
}

/// The product every test sku is: 100 EUR at 20 %, `on_hand` units.
pub fn product(sku: &str, on_hand: u64) -> serde_json::Value {
    serde_json::json!({
        "name": format!("item {sku}"),
        "unit_price": 100,
        "currency": "EUR",
        "tax_rate_bp": 2000,
        "stock": on_hand,
    })
}

/// The skus in a cart body.
pub fn skus(cart: &serde_json::Value) -> Vec<String> {
    cart["lines"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l["sku"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A join token made on `node` with `granary token create` (its own key).
pub fn token(node: &NodeProcess) -> String {
    token_with(node, &[])
}

/// A join token made on `node` with `granary token create` and `options`
/// (e.g. `--ttl 1s`, `--single-use`).
pub fn token_with(node: &NodeProcess, options: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_granary"))
        .args(["token", "create"])
        .args(options)
        .args(["--node", &node.grpc.to_string(), "--data-dir"])
        .arg(&node.data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run granary token create");
    assert!(
        output.status.success(),
        "granary token create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// Runs `granary serve` with `args` expecting it to fail by itself within
/// 30 s; its exit status and what it wrote to stderr.
pub fn serve_expecting_failure(args: &[&str]) -> (ExitStatus, String) {
    serve_expecting_failure_with_env(args, &[])
}

/// [`serve_expecting_failure`] with `env` set for the node.
pub fn serve_expecting_failure_with_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_granary"))
        .arg("serve")
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn granary");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("granary kept running with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().expect("stderr reader"))
}

/// `count` TCP connections to `address` that never send anything (a
/// half-open flood, idle clients).
pub async fn silent_connections(address: SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("connect"),
        );
    }
    connections
}
