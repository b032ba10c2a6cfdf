//! `granary load`: shop traffic against running nodes, for as long as
//! asked, then throughput and latency (HdrHistogram) per operation.
//!
//! Each of `--carts` carts goes through a shopper's journey again and
//! again: created, three items added (a random product of the tool's
//! catalog, one to three units), read, checked out; then a new cart takes
//! its place. `--clients` connections share the carts (each client owns
//! every `clients`-th cart, so no two requests for one cart race), and the
//! requests go round the `--node` URLs, so with several members most are
//! forwarded to the cart's owner as a load balancer would send them. With
//! `--follow-owner` a client sends a cart's requests to the member a
//! forwarded answer named as its owner (`Granary-Owner`), as a client
//! that routes by the hint would. The report counts the forwarded answers.
//!
//! The products (`load-sku-0` ..) are put in the catalog with plenty of
//! stock first when an admin token is given; otherwise they must exist.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// A request's answer must come within this (else it counts as failed).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Items added to each cart before it is read and checked out.
const ADDS_PER_CART: u32 = 3;
/// Units each load product starts with: enough for any run.
const STOCK: u64 = 1_000_000_000;
/// The slowest answer the histograms record exactly (slower ones are
/// clamped to it): 60 s, in microseconds.
const SLOWEST_US: u64 = 60_000_000;

/// What `granary load` was asked to do.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Base URLs of the nodes' HTTP APIs (`http://host:port`).
    pub nodes: Vec<String>,
    pub carts: usize,
    pub duration: Duration,
    pub clients: usize,
    /// Products in the tool's catalog.
    pub skus: usize,
    pub admin_token: Option<String>,
    /// Send a cart's requests where a forwarded answer said it lives.
    pub follow_owner: bool,
}

impl LoadOptions {
    /// Checks the options; the error names the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.nodes.is_empty() {
            bail!("--node: give at least one node URL");
        }
        for node in &self.nodes {
            let uri: hyper::Uri = node
                .parse()
                .ok()
                .filter(|uri: &hyper::Uri| uri.scheme_str() == Some("http") && uri.host().is_some())
                .with_context(|| format!("--node {node:?} is not an http://host:port URL"))?;
            if uri.path() != "/" && !uri.path().is_empty() {
                bail!("--node {node:?}: give the node's base URL, without a path");
            }
        }
        if !(1..=1_000_000).contains(&self.carts) {
            bail!("--carts: 1 to 1000000");
        }
        if !(1..=4096).contains(&self.clients) {
            bail!("--clients: 1 to 4096");
        }
        if !(1..=10_000).contains(&self.skus) {
            bail!("--skus: 1 to 10000");
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600) {
            bail!("--duration: more than 0 s and at most 24 h");
        }
        Ok(())
    }
}

/// The operations of a shopper's journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Create,
    Add,
    Read,
    Checkout,
}

const OPS: [Op; 4] = [Op::Create, Op::Add, Op::Read, Op::Checkout];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Add => "add",
            Op::Read => "read",
            Op::Checkout => "checkout",
        }
    }
}

/// One operation's figures in the report.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub ok: u64,
    pub failed: u64,
    /// Answered requests (ok or not) per second.
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// One bar of the latency histogram: requests at most `le_ms` (and more
/// than the bar before's).
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: Vec<String>,
    pub carts: usize,
    pub clients: usize,
    pub seconds: f64,
    pub requests: u64,
    pub failed: u64,
    pub per_second: f64,
    /// Carts checked out during the run.
    pub checkouts: u64,
    /// Answers that a member gave after forwarding the request to the
    /// cart's owner (they name it in `Granary-Owner`).
    pub forwarded: u64,
    pub all: OpReport,
    pub ops: BTreeMap<&'static str, OpReport>,
    /// Failed requests by operation and what happened (an HTTP status or
    /// `transport`).
    pub errors: BTreeMap<String, u64>,
    pub histogram: Vec<Bucket>,
}

/// What one client measured.
struct Tally {
    latency: BTreeMap<Op, Histogram<u64>>,
    failed: BTreeMap<(Op, String), u64>,
    forwarded: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: OPS.iter().map(|op| (*op, histogram())).collect(),
            failed: BTreeMap::new(),
            forwarded: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        for (op, histogram) in other.latency {
            self.latency
                .get_mut(&op)
                .expect("every op has one")
                .add(&histogram)
                .expect("same bounds");
        }
        for (key, count) in other.failed {
            *self.failed.entry(key).or_default() += count;
        }
        self.forwarded += other.forwarded;
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, SLOWEST_US, 3).expect("valid bounds")
}

/// A cart on its journey.
#[derive(Default)]
struct Journey {
    cart: Option<String>,
    added: u32,
    read: bool,
    /// Requests sent for the cart so far: each goes to the next member.
    sent: usize,
    /// The base URL of the cart's owner, as a forwarded answer named it
    /// (with `--follow-owner`).
    owner: Option<String>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs the load; `progress(done, elapsed)` is called about five times a
/// second while it runs.
pub async fn run(
    options: &LoadOptions,
    progress: impl Fn(u64, Duration),
) -> anyhow::Result<Report> {
    options.check()?;
    let nodes: Vec<String> = options
        .nodes
        .iter()
        .map(|n| n.trim_end_matches('/').to_owned())
        .collect();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(options.clients)
        .build(connector);
    prepare_catalog(&client, &nodes[0], options).await?;

    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = Vec::with_capacity(options.clients);
    for index in 0..options.clients {
        let carts = (index..options.carts).step_by(options.clients).count();
        if carts == 0 {
            break;
        }
        let (client, nodes, done, stop) =
            (client.clone(), nodes.clone(), done.clone(), stop.clone());
        let shopping = Shopping {
            skus: options.skus,
            follow_owner: options.follow_owner,
        };
        clients.push(tokio::spawn(async move {
            shop(&client, &nodes, index, carts, shopping, &done, &stop).await
        }));
    }
    let deadline = started + options.duration;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        progress(done.load(Ordering::Relaxed), started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::new();
    for client in clients {
        tally.merge(client.await.context("a client task failed")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(report(options, nodes, tally, seconds))
}

/// Puts the tool's products in the catalog (with an admin token), or
/// checks that the first one is there.
async fn prepare_catalog(
    client: &HttpClient,
    node: &str,
    options: &LoadOptions,
) -> anyhow::Result<()> {
    let Some(token) = &options.admin_token else {
        for sku in [0, options.skus - 1] {
            let url = format!("{node}/products/load-sku-{sku}");
            let (status, _, _) = request(client, "GET", &url, None, None)
                .await
                .map_err(|e| anyhow::anyhow!("{node}: {e}"))?;
            if status != 200 {
                bail!(
                    "{node} has no product load-sku-{sku} (GET {url} answered {status}); give --admin-token (or GRANARY_ADMIN_TOKEN) so the tool can add its products"
                );
            }
        }
        return Ok(());
    };
    let auth = format!("Bearer {token}");
    for sku in 0..options.skus {
        let body = serde_json::json!({
            "name": format!("Load product {sku}"),
            "unit_price": 100 + (sku as u64 * 37) % 5_000,
            "currency": "EUR",
            "tax_rate_bp": 2_000,
            "stock": STOCK,
        });
        let url = format!("{node}/admin/products/load-sku-{sku}");
        let body = Bytes::from(serde_json::to_vec(&body)?);
        let (status, _, answer) = request(client, "PUT", &url, Some(body), Some(&auth))
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        if status != 200 {
            bail!(
                "PUT {url} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    Ok(())
}

/// How a client shops.
#[derive(Clone, Copy)]
struct Shopping {
    /// Products in the tool's catalog.
    skus: usize,
    /// Send a cart's requests to the owner a forwarded answer named.
    follow_owner: bool,
}

/// One client: its carts' journeys, one request at a time, until `stop`.
async fn shop(
    client: &HttpClient,
    nodes: &[String],
    index: usize,
    carts: usize,
    Shopping { skus, follow_owner }: Shopping,
    done: &AtomicU64,
    stop: &AtomicBool,
) -> Tally {
    let mut tally = Tally::new();
    let mut journeys: Vec<Journey> = (0..carts).map(|_| Journey::default()).collect();
    // xorshift64*, seeded per client: which product, how many units.
    let mut seed =
        0x9E37_79B9_7F4A_7C15_u64 ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut random = move |below: u64| {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
    };
    while !stop.load(Ordering::Relaxed) {
        for (n, journey) in journeys.iter_mut().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // A cart's requests go round the members (from one that
            // depends on the client and the cart), so two in three are
            // forwarded among three members, whatever the counts.
            let node = journey
                .owner
                .as_ref()
                .unwrap_or(&nodes[(index + n + journey.sent) % nodes.len()]);
            journey.sent += 1;
            let (op, method, url, body) = match &journey.cart {
                None => (Op::Create, "POST", format!("{node}/carts"), None),
                Some(cart) if journey.added < ADDS_PER_CART => {
                    let item = serde_json::json!({
                        "sku": format!("load-sku-{}", random(skus as u64)),
                        "quantity": 1 + random(3),
                    });
                    let body = Bytes::from(serde_json::to_vec(&item).expect("encode"));
                    (
                        Op::Add,
                        "POST",
                        format!("{node}/carts/{cart}/items"),
                        Some(body),
                    )
                }
                Some(cart) if !journey.read => {
                    (Op::Read, "GET", format!("{node}/carts/{cart}"), None)
                }
                Some(cart) => (
                    Op::Checkout,
                    "POST",
                    format!("{node}/carts/{cart}/checkout"),
                    None,
                ),
            };
            let began = Instant::now();
            let answer = request(client, method, &url, body, None).await;
            let took = began.elapsed().as_micros().clamp(1, u128::from(SLOWEST_US)) as u64;
            tally
                .latency
                .get_mut(&op)
                .expect("every op has one")
                .record(took)
                .expect("clamped into bounds");
            done.fetch_add(1, Ordering::Relaxed);
            let what = match &answer {
                Ok((status, _, _)) if (200..300).contains(status) => None,
                Ok((status, _, _)) => Some(status.to_string()),
                Err(_) => Some("transport".to_owned()),
            };
            if let Some(what) = what {
                *tally.failed.entry((op, what)).or_default() += 1;
                // A journey whose step failed starts again with a new cart.
                *journey = Journey::default();
                continue;
            }
            if let Ok((_, Some(owner), _)) = &answer {
                tally.forwarded += 1;
                if follow_owner {
                    journey.owner = Some(format!("http://{owner}"));
                }
            }
            match op {
                Op::Create => {
                    let created = answer.ok().and_then(|(_, _, body)| {
                        serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()?
                            .get("id")?
                            .as_str()
                            .map(str::to_owned)
                    });
                    match created {
                        Some(id) => journey.cart = Some(id),
                        None => *tally.failed.entry((op, "no cart id".into())).or_default() += 1,
                    }
                }
                Op::Add => journey.added += 1,
                Op::Read => journey.read = true,
                Op::Checkout => *journey = Journey::default(),
            }
        }
    }
    tally
}

/// One request; its status, the owner it names (`Granary-Owner`) and its
/// body, or why none came.
async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Option<Bytes>,
    authorization: Option<&str>,
) -> Result<(u16, Option<String>, Bytes), String> {
    let mut builder = hyper::Request::builder().method(method).uri(url);
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    if let Some(auth) = authorization {
        builder = builder.header("authorization", auth);
    }
    let request = builder
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let owner = response
            .headers()
            .get(crate::http::OWNER_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, owner, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn op_report(histogram: &Histogram<u64>, failed: u64, seconds: f64) -> OpReport {
    let count = histogram.len();
    OpReport {
        ok: count - failed,
        failed,
        per_second: count as f64 / seconds,
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p90_ms: ms(histogram.value_at_quantile(0.9)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
    }
}

fn report(options: &LoadOptions, nodes: Vec<String>, tally: Tally, seconds: f64) -> Report {
    let mut all = histogram();
    let mut ops = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut failed_all = 0;
    for op in OPS {
        let histogram = &tally.latency[&op];
        all.add(histogram).expect("same bounds");
        let failed: u64 = tally
            .failed
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum();
        failed_all += failed;
        ops.insert(op.name(), op_report(histogram, failed, seconds));
    }
    for ((op, what), count) in &tally.failed {
        errors.insert(format!("{} {what}", op.name()), *count);
    }
    // Bars at doubling latencies from 0.25 ms up to the slowest answer.
    let histogram = all
        .iter_log(250, 2.0)
        .map(|bar| Bucket {
            le_ms: ms(bar.value_iterated_to()),
            count: bar.count_since_last_iteration(),
        })
        .collect();
    Report {
        nodes,
        carts: options.carts,
        clients: options.clients.min(options.carts),
        seconds,
        requests: all.len(),
        failed: failed_all,
        per_second: all.len() as f64 / seconds,
        checkouts: ops["checkout"].ok,
        forwarded: tally.forwarded,
        all: op_report(&all, failed_all, seconds),
        ops,
        errors,
        histogram,
    }
}

/// The report as a person reads it.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} requests in {:.1} s: {:.0}/s, {} failed, {} forwarded to the cart's owner; {} carts checked out ({} carts, {} clients, {} node{})",
        report.requests,
        report.seconds,
        report.per_second,
        report.failed,
        report.forwarded,
        report.checkouts,
        report.carts,
        report.clients,
        report.nodes.len(),
        if report.nodes.len() == 1 { "" } else { "s" },
    );
    let _ = writeln!(
        out,
        "\n{:<9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "ok", "failed", "per s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let rows = OPS
        .iter()
        .filter_map(|op| Some((op.name(), report.ops.get(op.name())?)))
        .chain(std::iter::once(("all", &report.all)));
    for (name, op) in rows {
        let _ = writeln!(
            out,
            "{name:<9} {:>9} {:>7} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            op.ok, op.failed, op.per_second, op.p50_ms, op.p90_ms, op.p99_ms, op.p999_ms, op.max_ms
        );
    }
    let _ = writeln!(out, "\nlatency, all requests:");
    let widest = report
        .histogram
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(0)
        .max(1);
    for bucket in &report.histogram {
        let bar = "#".repeat((bucket.count * 50).div_ceil(widest) as usize);
        let _ = writeln!(
            out,
            "  <= {:>9.2} ms {:>9}  {bar}",
            bucket.le_ms, bucket.count
        );
    }
    if !report.errors.is_empty() {
        let _ = writeln!(out, "\nfailures:");
        for (what, count) in &report.errors {
            let _ = writeln!(out, "  {what}: {count}");
        }
    }
    out
}
