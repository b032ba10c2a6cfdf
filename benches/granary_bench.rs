//! Granary's benchmark: every figure side by side with a baseline measured
//! in the same run, because the machines are noisy.
//!
//! Run: `cargo bench --bench granary_bench` (add `-- --quick` for a short run,
//! `-- --only local|http|server|memory|postgres` for one part, `-- --only
//! local --same-thread-only` for the same-thread local calls alone).
//!
//! 1. Local grain call vs a bare actix actor doing the same no-op work.
//! 2. Durable cart mutations through the HTTP API at 64 concurrent clients
//!    vs a stateless service that reads and rewrites the whole cart in the
//!    same embedded database (SQLite, WAL, synchronous=FULL) per request.
//! 3. Heap memory per live idle cart over 100k activations.
//! 4. Part 2 on PostgreSQL: the grain service on the PostgreSQL engine vs
//!    the stateless service on the same server, plus appends per database
//!    round trip (group commit at work). The server is `GRANARY_TEST_PG`,
//!    or a throwaway one started from Debian's `postgresql` package.

#[path = "../tests/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{App, HttpResponse, HttpServer, web};
use granary::cart_grain::{CartGrain, CartRequest};
use granary::http::{ApiState, CartBody, configure};
use granary::shop::{ProductGrain, StockGrain};
use granary_cart::{Cart, CartCommand, NewItem, ProductSpec};
use granary_grain::{Grain, GrainRuntime, Placement, RuntimeConfig};
use granary_store::{EventStore, SqliteStore};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// A counting allocator: live heap bytes, for the memory figure. It counts
// on top of mimalloc, the allocator the `granary` binary runs on, so every
// server in this process (the baseline's too) runs on it.

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---------------------------------------------------------------------------
// 1. Local call: grain vs bare actor, same no-op work (read a counter).

#[derive(Default, Serialize, Deserialize)]
struct Tally {
    value: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Read;

impl Grain for Tally {
    const KIND: &'static str = "bench-tally";
    type Command = Read;
    type Event = u64;
    type Rejection = ();
    type Reply = u64;
    fn decide(&self, _: &Read) -> Result<Vec<u64>, ()> {
        Ok(Vec::new())
    }
    fn apply(&mut self, event: &u64) {
        self.value += event;
    }
    fn reply(&self, _: &Read) -> u64 {
        self.value
    }
}

struct BareTally {
    value: u64,
}

impl Actor for BareTally {
    type Context = Context<Self>;
}

impl Message for Read {
    type Result = u64;
}

impl Handler<Read> for BareTally {
    type Result = MessageResult<Read>;
    fn handle(&mut self, _: Read, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.value)
    }
}

struct Rate {
    per_sec: f64,
}

/// `same_thread`: grain and bare actor both on the caller's arbiter
/// (`Placement::Caller`); otherwise both on another arbiter thread
/// (`Placement::Pool(1)`: a pool of grain threads, as a node's shared
/// pool is).
async fn local_calls(
    store: Arc<dyn EventStore>,
    calls: u64,
    in_flight: u64,
    same_thread: bool,
) -> (Rate, Rate) {
    let (bare, placement) = if same_thread {
        (BareTally { value: 0 }.start(), Placement::Caller)
    } else {
        let elsewhere = actix::Arbiter::new();
        let bare = BareTally::start_in_arbiter(&elsewhere.handle(), |_| BareTally { value: 0 });
        (bare, Placement::Pool(1))
    };
    let config = RuntimeConfig {
        placement,
        ..RuntimeConfig::default()
    };
    let grains: GrainRuntime<Tally> = GrainRuntime::new(store, config);
    grains.call("t", Read).await.expect("activate");
    // Warm both up, then alternate rounds so drift hits both alike.
    let mut bare_time = Duration::ZERO;
    let mut grain_time = Duration::ZERO;
    for _round in 0..3 {
        let start = Instant::now();
        run_concurrently(in_flight, calls / 3, {
            // Shared behind a reference count, as the grain runtime is:
            // cloning an `Addr` itself allocates (actix gives each sender
            // its own parked-task slot), which a caller need not pay.
            let bare = std::rc::Rc::new(bare.clone());
            move || {
                let bare = bare.clone();
                async move {
                    bare.send(Read).await.expect("bare call");
                }
            }
        })
        .await;
        bare_time += start.elapsed();
        let start = Instant::now();
        run_concurrently(in_flight, calls / 3, {
            let grains = grains.clone();
            move || {
                let grains = grains.clone();
                async move {
                    grains.call("t", Read).await.expect("grain call");
                }
            }
        })
        .await;
        grain_time += start.elapsed();
    }
    let done = (calls / 3 * 3) as f64;
    (
        Rate {
            per_sec: done / bare_time.as_secs_f64(),
        },
        Rate {
            per_sec: done / grain_time.as_secs_f64(),
        },
    )
}

/// Runs `total` calls of `make()` with `in_flight` of them outstanding, on
/// the current arbiter.
async fn run_concurrently<F, Fut>(in_flight: u64, total: u64, make: F)
where
    F: Fn() -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let per_task = total / in_flight;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let make = make.clone();
        tasks.push(actix_rt::spawn(async move {
            for _ in 0..per_task {
                make().await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
}

// ---------------------------------------------------------------------------
// 2. HTTP: the grain service vs a stateless read-modify-write service.

/// Starts an HTTP server on its own thread and actix System; returns its
/// address. It lives until the process ends.
fn start_server<F>(name: &str, factory: F) -> std::net::SocketAddr
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let name = name.to_owned();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                // Nagle off, as the node's server has it.
                let server = HttpServer::new(move || App::new().configure(factory.clone()))
                    .workers(2)
                    .tcp_nodelay(true)
                    .disable_signals()
                    .bind("127.0.0.1:0")
                    .expect("bind");
                tx.send(server.addrs()[0]).expect("report address");
                server.run().await.expect("serve");
            })
        })
        .expect("server thread");
    rx.recv().expect("server address")
}

/// The baseline: every request opens a write transaction, reads the
/// product from the catalog table and the whole cart, applies the same
/// domain rules, writes the whole cart back and commits (fsync) — what a
/// shop builds without grains, at equal durability. Tuned as a competent
/// engineer would: one connection per HTTP worker thread, used on that
/// thread (no pool of 64 connections fighting over SQLite's one write
/// lock, no hop to a blocking thread), WAL, `synchronous=FULL`, prepared
/// statements cached, one read-modify-write transaction per request, the
/// same JSON answer.
mod stateless {
    use super::*;
    use rusqlite::{Connection, OptionalExtension, params};
    use std::cell::RefCell;
    use std::path::PathBuf;

    thread_local! {
        static CONN: RefCell<Option<Connection>> = const { RefCell::new(None) };
    }

    fn with_conn<T>(
        path: &PathBuf,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        CONN.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let conn = Connection::open(path)?;
                conn.busy_timeout(Duration::from_secs(30))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                // Checkpointed in the same steps as the product's writer.
                conn.pragma_update(
                    None,
                    "wal_autocheckpoint",
                    granary_store::SqliteStore::CHECKPOINT_FRAMES,
                )?;
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS baseline_carts \
                     (id TEXT PRIMARY KEY, body BLOB NOT NULL, version INTEGER NOT NULL);
                     CREATE TABLE IF NOT EXISTS baseline_products \
                     (sku TEXT PRIMARY KEY, body BLOB NOT NULL)",
                )?;
                *slot = Some(conn);
            }
            f(slot.as_mut().expect("connection"))
        })
    }

    /// The cart rules the grain runs, on a whole cart read from a row: the
    /// cart and version after `command`, and whether it changed; `None` if
    /// the rules refused.
    pub fn decide_whole(
        mut cart: Cart,
        version: u64,
        command: &CartCommand,
    ) -> Option<(Cart, u64, bool)> {
        let events = cart.decide(command).ok()?;
        for event in &events {
            cart.apply(event);
        }
        Some((cart, version + events.len() as u64, !events.is_empty()))
    }

    /// What the baseline's routes ask of the database.
    pub enum Request {
        Create,
        /// Add `quantity` of `sku` at the catalog table's price.
        Add {
            sku: String,
            quantity: u32,
        },
        /// Put a product in the catalog table (`id` is its sku).
        SetProduct(ProductSpec),
    }

    /// The cart command for `request`, with the product `lookup` finds.
    pub fn command(
        request: Request,
        lookup: impl FnOnce(&str) -> Option<Vec<u8>>,
    ) -> Option<CartCommand> {
        match request {
            Request::Create => Some(CartCommand::Create),
            Request::Add { sku, quantity } => {
                let spec: ProductSpec = serde_json::from_slice(&lookup(&sku)?).ok()?;
                Some(CartCommand::AddItem(spec.item(quantity)))
            }
            Request::SetProduct(_) => None,
        }
    }

    /// One transaction: read the product and the whole cart, decide with
    /// the same domain rules, write the whole cart back if it changed,
    /// commit (fsync). Returns the cart and its version, or `None` if the
    /// rules refused.
    fn mutate(path: &PathBuf, id: &str, request: Request) -> rusqlite::Result<Option<(Cart, u64)>> {
        with_conn(path, |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Request::SetProduct(spec) = &request {
                tx.prepare_cached(
                    "INSERT INTO baseline_products (sku, body) VALUES (?1, ?2)
                     ON CONFLICT (sku) DO UPDATE SET body = excluded.body",
                )?
                .execute(params![id, serde_json::to_vec(spec).expect("encode")])?;
                tx.commit()?;
                return Ok(Some((Cart::default(), 0)));
            }
            let mut failed = None;
            let command = command(request, |sku| {
                tx.prepare_cached("SELECT body FROM baseline_products WHERE sku = ?1")
                    .and_then(|mut select| select.query_row(params![sku], |r| r.get(0)))
                    .optional()
                    .unwrap_or_else(|e| {
                        failed = Some(e);
                        None
                    })
            });
            if let Some(err) = failed {
                return Err(err);
            }
            let Some(command) = command else {
                return Ok(None);
            };
            let command = &command;
            let row: Option<(Vec<u8>, i64)> = tx
                .prepare_cached("SELECT body, version FROM baseline_carts WHERE id = ?1")?
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (cart, version) = match row {
                Some((body, version)) => (
                    serde_json::from_slice::<Cart>(&body).unwrap_or_default(),
                    version as u64,
                ),
                None => (Cart::default(), 0),
            };
            let (cart, version, changed) = match decide_whole(cart, version, command) {
                Some(decided) => decided,
                None => return Ok(None),
            };
            if !changed {
                return Ok(Some((cart, version)));
            }
            let body = serde_json::to_vec(&cart).expect("encode");
            tx.prepare_cached(
                "INSERT INTO baseline_carts (id, body, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body, version = excluded.version",
            )?
            .execute(params![id, body, version as i64])?;
            tx.commit()?;
            Ok(Some((cart, version)))
        })
    }

    /// Runs one command on one cart in one database transaction: the new
    /// cart and version, `None` if the rules refused, `Err` on a failure.
    pub type Runner = Arc<
        dyn Fn(
                String,
                Request,
            )
                -> std::pin::Pin<Box<dyn Future<Output = Result<Option<(Cart, u64)>, String>>>>
            + Send
            + Sync,
    >;

    async fn run(runner: Runner, id: String, command: Request) -> HttpResponse {
        let Ok(uuid) = uuid::Uuid::parse_str(&id) else {
            return HttpResponse::BadRequest().finish();
        };
        match runner(id, command).await {
            // The same body the grain service answers with.
            Ok(Some((cart, version))) => HttpResponse::Ok()
                .insert_header(("ETag", format!("\"{version}\"")))
                .content_type("application/json")
                .body(CartBody::new(uuid, version, &cart).to_json()),
            Ok(None) => HttpResponse::Conflict().finish(),
            Err(_) => HttpResponse::ServiceUnavailable().finish(),
        }
    }

    /// The baseline on the embedded database file at `path`: each
    /// transaction runs on the HTTP worker thread that took the request,
    /// on that thread's own connection.
    pub fn sqlite(path: PathBuf) -> Runner {
        Arc::new(move |id, command| {
            let result = mutate(&path, &id, command).map_err(|e| e.to_string());
            Box::pin(std::future::ready(result))
        })
    }

    /// The routes the load uses: create, add-item, and the catalog.
    pub fn configure(runner: Runner) -> impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static {
        move |cfg| {
            let (create, add, set) = (runner.clone(), runner.clone(), runner.clone());
            cfg.route(
                "/carts/{id}",
                web::post().to(move |id: web::Path<String>| {
                    run(create.clone(), id.into_inner(), Request::Create)
                }),
            )
            .route(
                "/carts/{id}/items",
                web::post().to(move |id: web::Path<String>, item: web::Json<AddBody>| {
                    let AddBody { sku, quantity } = item.into_inner();
                    run(add.clone(), id.into_inner(), Request::Add { sku, quantity })
                }),
            )
            .route(
                "/products/{sku}",
                web::put().to(
                    move |sku: web::Path<String>, spec: web::Json<ProductSpec>| {
                        let set = set.clone();
                        async move {
                            let sku = sku.into_inner();
                            match set(sku, Request::SetProduct(spec.into_inner())).await {
                                Ok(_) => HttpResponse::Ok().finish(),
                                Err(_) => HttpResponse::ServiceUnavailable().finish(),
                            }
                        }
                    },
                ),
            );
        }
    }

    #[derive(Deserialize)]
    pub struct AddBody {
        sku: String,
        quantity: u32,
    }
}

/// The stateless baseline on PostgreSQL: a pool of connections; per
/// request one transaction that locks the cart's row, reads the whole
/// cart, decides with the same rules, writes the whole cart back and
/// commits (durable: `synchronous_commit` on, the server's default).
mod stateless_pg {
    use super::*;
    use tokio_postgres::{Client, NoTls};

    pub struct Pool {
        clients: Vec<tokio::sync::Mutex<Client>>,
        next: std::sync::atomic::AtomicUsize,
    }

    /// `size` connections to `url`, driven by a runtime thread of their own.
    pub fn connect(url: &str, size: usize) -> Arc<Pool> {
        let url = url.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut clients = Vec::new();
                for _ in 0..size {
                    let (client, connection) = tokio_postgres::connect(&url, NoTls)
                        .await
                        .expect("connect the baseline");
                    tokio::spawn(connection);
                    clients.push(tokio::sync::Mutex::new(client));
                }
                clients[0]
                    .lock()
                    .await
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS baseline_carts \
                         (id text PRIMARY KEY, body bytea NOT NULL, version bigint NOT NULL);
                         CREATE TABLE IF NOT EXISTS baseline_products \
                         (sku text PRIMARY KEY, body bytea NOT NULL)",
                    )
                    .await
                    .expect("baseline table");
                tx.send(Arc::new(Pool {
                    clients,
                    next: Default::default(),
                }))
                .expect("pool");
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("pool")
    }

    async fn mutate(
        pool: &Pool,
        id: &str,
        request: stateless::Request,
    ) -> Result<Option<(Cart, u64)>, tokio_postgres::Error> {
        let n = pool.next.fetch_add(1, Ordering::Relaxed) % pool.clients.len();
        let mut client = pool.clients[n].lock().await;
        let tx = client.transaction().await?;
        let product = match &request {
            stateless::Request::SetProduct(spec) => {
                let body = serde_json::to_vec(spec).expect("encode");
                tx.execute(
                    "INSERT INTO baseline_products (sku, body) VALUES ($1, $2)
                     ON CONFLICT (sku) DO UPDATE SET body = excluded.body",
                    &[&id, &body],
                )
                .await?;
                tx.commit().await?;
                return Ok(Some((Cart::default(), 0)));
            }
            stateless::Request::Add { sku, .. } => tx
                .query_opt("SELECT body FROM baseline_products WHERE sku = $1", &[sku])
                .await?
                .map(|row| row.get::<_, Vec<u8>>(0)),
            stateless::Request::Create => None,
        };
        let Some(command) = stateless::command(request, |_| product) else {
            return Ok(None);
        };
        let command = &command;
        let row = tx
            .query_opt(
                "SELECT body, version FROM baseline_carts WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let (cart, version) = match row {
            Some(row) => (
                serde_json::from_slice::<Cart>(row.get::<_, &[u8]>(0)).unwrap_or_default(),
                row.get::<_, i64>(1) as u64,
            ),
            None => (Cart::default(), 0),
        };
        let (cart, version, changed) = match stateless::decide_whole(cart, version, command) {
            Some(decided) => decided,
            None => return Ok(None),
        };
        if !changed {
            return Ok(Some((cart, version)));
        }
        let body = serde_json::to_vec(&cart).expect("encode");
        tx.execute(
            "INSERT INTO baseline_carts (id, body, version) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body, version = excluded.version",
            &[&id, &body, &(version as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(Some((cart, version)))
    }

    pub fn runner(pool: Arc<Pool>) -> stateless::Runner {
        Arc::new(move |id, command| {
            let pool = pool.clone();
            Box::pin(async move { mutate(&pool, &id, command).await.map_err(|e| e.to_string()) })
        })
    }
}

/// Distinct skus each benchmark cart cycles through: carts of a realistic
/// size, so the figure is not dominated by rendering huge carts.
/// Lines per cart in the HTTP load: about a dozen, as a shop's carts.
const SKUS_PER_CART: u64 = 12;

struct LoadResult {
    failed: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU the whole process (servers, store threads and the load client)
    /// used meanwhile, and of that the embedded store's writer thread.
    cpu: Cpu,
}

/// CPU time used, read from `/proc` (zero where there is none; the
/// writer's is zero on engines without a writer thread): work per request,
/// which a rate alone cannot tell from a busy machine.
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    process: Duration,
    writer: Duration,
}

impl Cpu {
    fn now() -> Cpu {
        let process = support::cpu_of_process(std::process::id());
        let writer = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
            .filter(|stat| stat.contains("(granary-store-w"))
            .filter_map(|stat| support::cpu_of_stat(&stat))
            .sum();
        Cpu { process, writer }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(before.process),
            writer: self.writer.saturating_sub(before.writer),
        }
    }

    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            process: self.process + other.process,
            writer: self.writer + other.writer,
        }
    }
}

impl LoadResult {
    fn ok(&self) -> u64 {
        self.latencies.len() as u64
    }

    fn per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Microseconds of `cpu` per answered request.
    fn per_request(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.ok().max(1) as f64
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
        sorted.get(index).copied().unwrap_or_default()
    }
}

/// `clients` concurrent clients, each on its own cart, adding items for
/// `duration`. Carts must exist already (or be created by the first call).
async fn http_load(base: String, carts: Vec<String>, duration: Duration) -> LoadResult {
    // Bodies and URLs made once: the client shares the machine's two
    // cores with the server, so it does as little as a load tool would.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..SKUS_PER_CART)
            .map(|n| serde_json::to_vec(&support::item(&format!("sku-{n}"))).expect("encode"))
            .map(bytes::Bytes::from)
            .collect(),
    );
    let urls: Arc<Vec<String>> = Arc::new(
        carts
            .iter()
            .map(|cart| format!("{base}/carts/{cart}/items"))
            .collect(),
    );
    load(urls.len(), duration, move |http, client, n| {
        let (urls, bodies) = (urls.clone(), bodies.clone());
        async move {
            let body = bodies[((n + client as u64) % SKUS_PER_CART) as usize].clone();
            http.status_of("POST", &urls[client], Some(body)).await
        }
    })
    .await
}

/// `clients` concurrent clients reading `url` (a route that does no work:
/// the server's ceiling) for `duration`.
async fn get_load(url: String, clients: usize, duration: Duration) -> LoadResult {
    load(clients, duration, move |http, _, _| {
        let url = url.clone();
        async move { http.status_of("GET", &url, None).await }
    })
    .await
}

/// `clients` concurrent loops sending `request(http, client, n)` for
/// `duration`; answers 200 with a body count, with their latencies. The
/// bodies are not parsed (as wrk would not): the client shares the
/// machine with the server.
async fn load<F, Fut>(clients: usize, duration: Duration, request: F) -> LoadResult
where
    F: Fn(support::Http, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(u16, usize), String>> + Send,
{
    let http = support::Http::new();
    let stop = Arc::new(AtomicBool::new(false));
    let request = Arc::new(request);
    let mut tasks = Vec::new();
    let start = Instant::now();
    let cpu = Cpu::now();
    for client in 0..clients {
        let (http, stop, request) = (http.clone(), stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = Instant::now();
                match request(http.clone(), client, n).await {
                    Ok((200, length)) if length > 0 => latencies.push(sent.elapsed()),
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (l, f) = task.await.expect("client");
        latencies.extend(l);
        failed += f;
    }
    LoadResult {
        failed,
        elapsed: start.elapsed(),
        latencies,
        cpu: Cpu::now().since(cpu),
    }
}

// ---------------------------------------------------------------------------
// 3. Memory per live idle cart.

/// Creates carts `first..first + count` with one line each on `runtime`
/// and returns the heap they hold per cart, after every one has dozed if
/// `idle`.
async fn heap_of_carts(
    runtime: &GrainRuntime<CartGrain>,
    first: usize,
    count: usize,
    idle: bool,
) -> f64 {
    // Warm-up: the runtime's first allocations are not per-cart.
    for i in 0..100 {
        runtime
            .call(
                &format!("warm-{first}-{i}"),
                CartRequest::Command(CartCommand::Create),
            )
            .await
            .expect("create");
    }
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let batch = 512;
    let mut next = first;
    while next < first + count {
        let mut calls = Vec::new();
        for i in next..(next + batch).min(first + count) {
            let runtime = runtime.clone();
            calls.push(actix_rt::spawn(async move {
                let id = uuid::Uuid::from_u128(i as u128 + 1).to_string();
                runtime
                    .call(&id, CartRequest::Command(CartCommand::Create))
                    .await
                    .expect("create");
                let item = NewItem {
                    sku: format!("sku-{}", i % 1000),
                    name: "Bench item".into(),
                    quantity: 1,
                    unit_price: 1999,
                    currency: "EUR".into(),
                    tax_rate_bp: Some(1900),
                };
                runtime
                    .call(&id, CartRequest::Command(CartCommand::AddItem(item)))
                    .await
                    .expect("add");
            }));
        }
        for call in calls {
            call.await.expect("task");
        }
        next += batch;
    }
    assert_eq!(runtime.stats().live as usize, count + 100);
    if idle {
        // Every cart goes dormant (its actor stops; state, entry and
        // placement stay): what an idle live cart costs.
        while runtime.stats().dozes < (count + 100) as u64 {
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(runtime.stats().live as usize, count + 100);
    } else {
        assert_eq!(runtime.stats().dozes, 0);
    }
    (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / count as f64
}

/// Heap per cart: with its actor (over 10,000 carts that never doze), and
/// idle (over `carts` carts, once every one has gone dormant).
async fn memory_per_cart(store: Arc<dyn EventStore>, carts: usize) -> (f64, f64, f64) {
    let never = RuntimeConfig {
        doze_after: Duration::ZERO,
        ..RuntimeConfig::default()
    };
    let awake_carts = carts.min(10_000);
    // Kept until the end: nothing of it is freed while the other measures.
    let never = GrainRuntime::new(store.clone(), never);
    let awake = heap_of_carts(&never, 0, awake_carts, false).await;
    // Dozing sooner than the default 10 s only to keep the run short.
    let dozing = RuntimeConfig {
        doze_after: Duration::from_millis(500),
        ..RuntimeConfig::default()
    };
    let dozing = GrainRuntime::new(store, dozing);
    let per_cart = heap_of_carts(&dozing, awake_carts, carts, true).await;
    // For scale: the same cart state alone (no actor around it).
    let bare_before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut states = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut cart = Cart::default();
        for event in cart.decide(&CartCommand::Create).expect("create") {
            cart.apply(&event);
        }
        let add = CartCommand::AddItem(NewItem {
            sku: format!("sku-{i}"),
            name: "Bench item".into(),
            quantity: 1,
            unit_price: 1999,
            currency: "EUR".into(),
            tax_rate_bp: Some(1900),
        });
        for event in cart.decide(&add).expect("add") {
            cart.apply(&event);
        }
        states.push(Box::new(cart));
    }
    let state_only = (LIVE_BYTES.load(Ordering::Relaxed) - bare_before) as f64 / 1000.0;
    drop(states);
    (per_cart, awake, state_only)
}

// ---------------------------------------------------------------------------

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only local|http|memory` runs one part.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let dir = tempfile::tempdir().expect("tempdir");
    let store_path = dir.path().join("events.db");
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&store_path).expect("store"));
    println!(
        "# Granary benchmark ({} run)\n",
        if quick { "quick" } else { "full" }
    );

    // 1. Local calls.
    let calls = if quick { 60_000 } else { 600_000 };
    let system = actix_rt::System::new();
    let cases = [(true, 1u64), (true, 64), (false, 1), (false, 64)];
    // `--same-thread-only`: the two same-thread cases alone (to profile them).
    let same_only = args.iter().any(|a| a == "--same-thread-only");
    for (same_thread, in_flight) in cases
        .into_iter()
        .filter(|&(same, _)| part("local") && (same || !same_only))
    {
        let (bare, grain) =
            system.block_on(local_calls(store.clone(), calls, in_flight, same_thread));
        println!(
            "local call, {}, {in_flight} in flight: bare actix actor {:.0}/s, grain {:.0}/s, ratio {:.2}",
            if same_thread {
                "same thread"
            } else {
                "other thread"
            },
            bare.per_sec,
            grain.per_sec,
            grain.per_sec / bare.per_sec
        );
    }

    // 2. HTTP at 64 clients, on the embedded engine.
    let seconds = if quick { 3 } else { 10 };
    if part("http") {
        http_comparison(
            "embedded SQLite",
            store.clone(),
            // A file of its own: the two never share a WAL or its checkpoints.
            stateless::sqlite(dir.path().join("baseline.db")),
            seconds,
        );
    }

    // The node's HTTP server against actix-web's own, on one trivial app.
    if part("server") {
        server_ab(seconds);
    }

    // 4. The same on PostgreSQL.
    if part("postgres") {
        match granary_testpg::shared() {
            Some(server) => {
                let url = server.fresh_database();
                let pg: Arc<dyn EventStore> =
                    Arc::new(granary_store::PostgresStore::open(&url).expect("PostgreSQL store"));
                let pool = stateless_pg::connect(&url, 16);
                http_comparison("PostgreSQL", pg, stateless_pg::runner(pool), seconds);
            }
            None => println!(
                "PostgreSQL part skipped: no server ({})",
                granary_testpg::HOW_TO_RUN
            ),
        }
    }

    // 3. Memory.
    if !part("memory") {
        return;
    }
    let carts = if quick { 10_000 } else { 100_000 };
    let mem_store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(dir.path().join("memory.db")).expect("store"));
    let (per_cart, awake, state_only) = system.block_on(memory_per_cart(mem_store, carts));
    println!(
        "memory: {per_cart:.0} bytes of heap per live idle (dormant) cart over {carts} activations; \
         {awake:.0} bytes while each still has its actor (the cart state alone: {state_only:.0} bytes)"
    );
}

/// Serves `app` on the node's own HTTP server (two workers) on a free
/// loopback port, from inside an actix system; its address and server.
fn node_server<F, T, B>(app: F) -> (std::net::SocketAddr, actix_web::dev::Server)
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: actix_web::body::MessageBody + 'static,
{
    let listener = granary::http::listen("127.0.0.1:0".parse().unwrap()).expect("bind");
    let address = listener.local_addr().expect("address");
    let limits = granary::http::ServeLimits {
        workers: 2,
        max_connections: 10_000,
        shutdown_timeout: Duration::from_secs(1),
    };
    let server = granary::http::serve(listener, app, limits).expect("serve");
    (address, server)
}

/// The node's HTTP server (`granary::http::serve`: actix-server and
/// actix-http with each connection wrapped for JSON refusals) against
/// `actix_web::HttpServer`, both with two workers and Nagle off, serving
/// the same one-route app; 64 clients, alternated twice.
fn server_ab(seconds: u64) {
    fn app() -> App<
        impl actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        App::new().route(
            "/healthz",
            web::get()
                .to(|| async { HttpResponse::Ok().json(serde_json::json!({"status": "ok"})) }),
        )
    }
    let plain = start_server("plain", |cfg: &mut web::ServiceConfig| {
        cfg.route(
            "/healthz",
            web::get()
                .to(|| async { HttpResponse::Ok().json(serde_json::json!({"status": "ok"})) }),
        );
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let (address, server) = node_server(app);
            tx.send(address).expect("address");
            server.await.expect("serve");
        })
    });
    let node = rx.recv().expect("address");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let half = Duration::from_secs(seconds) / 2;
    let (ours, theirs) = tokio.block_on(async {
        let a1 = get_load(format!("http://{node}/healthz"), 64, half).await;
        let b1 = get_load(format!("http://{plain}/healthz"), 64, half).await;
        let a2 = get_load(format!("http://{node}/healthz"), 64, half).await;
        let b2 = get_load(format!("http://{plain}/healthz"), 64, half).await;
        (merge(a1, a2), merge(b1, b2))
    });
    println!(
        "HTTP server, 64 clients, GET /healthz on one trivial app: the node's {:.0}/s p99 {:.2} ms; \
         actix_web::HttpServer {:.0}/s p99 {:.2} ms; ratio {:.2}",
        ours.per_sec(),
        ms(ours.quantile(0.99)),
        theirs.per_sec(),
        ms(theirs.quantile(0.99)),
        ours.per_sec() / theirs.per_sec()
    );
}

/// Part 2 on one engine: the grain service on `store` vs the stateless
/// `baseline` on the same database, 64 clients, `seconds` in all.
fn http_comparison(
    engine: &str,
    store: Arc<dyn EventStore>,
    baseline: stateless::Runner,
    seconds: u64,
) {
    let clients = 64;

    let grain_addr = {
        let store = store.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                // As a node: one pool of grain threads (one per core) for
                // every kind, unless told otherwise.
                let placement = match std::env::var("GRANARY_BENCH_PLACEMENT").as_deref() {
                    Ok("caller") => Placement::Caller,
                    Ok(n) => n.parse().map(Placement::Pool).unwrap_or_default(),
                    Err(_) => Placement::Shared(granary_grain::ArbiterPool::new(
                        std::thread::available_parallelism().map_or(2, |n| n.get()),
                    )),
                };
                let config = RuntimeConfig {
                    placement,
                    ..RuntimeConfig::default()
                };
                let carts: GrainRuntime<CartGrain> =
                    GrainRuntime::new(store.clone(), config.clone());
                let products: GrainRuntime<ProductGrain> =
                    GrainRuntime::new(store.clone(), config.clone());
                let stock: GrainRuntime<StockGrain> = GrainRuntime::new(store.clone(), config);
                let grains = granary::grains::Grains::builder(None)
                    .host(carts)
                    .host(products)
                    .host(stock)
                    .build();
                // Measured as a node runs: every request and commit observed.
                let metrics = Arc::new(granary::metrics::Metrics::new());
                metrics.attach(grains.clone(), store.clone());
                let state = ApiState {
                    grains,
                    store,
                    metrics,
                    dashboard: None,
                    max_body_bytes: 64 * 1024,
                    body_read_timeout: Duration::from_secs(5),
                    ready: Arc::new(AtomicBool::new(true)),
                    serving: Arc::new(AtomicBool::new(true)),
                    admin_token: Some(support::ADMIN_TOKEN.into()),
                    secure_cookies: false,
                };
                let (address, server) =
                    node_server(move || App::new().configure(configure(state.clone())));
                tx.send(address).expect("address");
                server.await.expect("serve");
            })
        });
        rx.recv().expect("address")
    };
    let baseline_addr = start_server("baseline", stateless::configure(baseline));
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let (grain_result, baseline_result, ceiling) = tokio.block_on(async {
        let http = support::Http::new();
        // The same catalog in both.
        let auth = format!("Bearer {}", support::ADMIN_TOKEN);
        for n in 0..SKUS_PER_CART {
            let sku = format!("sku-{n}");
            let product = support::product(&sku, 1_000_000);
            let grain = http
                .send(
                    "PUT",
                    &format!("http://{grain_addr}/admin/products/{sku}"),
                    Some(product.clone()),
                    &[("authorization", &auth)],
                )
                .await
                .expect("grain catalog");
            assert_eq!(grain.status, 200, "{grain:?}");
            let mut spec = product;
            spec["sku"] = serde_json::json!(sku);
            spec.as_object_mut().expect("object").remove("stock");
            let baseline = http
                .send(
                    "PUT",
                    &format!("http://{baseline_addr}/products/{sku}"),
                    Some(spec),
                    &[],
                )
                .await
                .expect("baseline catalog");
            assert_eq!(baseline.status, 200, "{baseline:?}");
        }
        let mut grain_carts = Vec::new();
        for _ in 0..clients {
            let answer = http
                .send("POST", &format!("http://{grain_addr}/carts"), None, &[])
                .await
                .expect("create");
            grain_carts.push(answer.json["id"].as_str().expect("id").to_owned());
        }
        let mut baseline_carts = Vec::new();
        for _ in 0..clients {
            let id = uuid::Uuid::new_v4().to_string();
            let answer = http
                .send(
                    "POST",
                    &format!("http://{baseline_addr}/carts/{id}"),
                    None,
                    &[],
                )
                .await
                .expect("create");
            assert_eq!(answer.status, 200, "baseline create");
            baseline_carts.push(id);
        }
        let half = Duration::from_secs(seconds) / 2;
        // Two alternating halves each, so drift hits both alike.
        let g1 = http_load(format!("http://{grain_addr}"), grain_carts.clone(), half).await;
        let b1 = http_load(
            format!("http://{baseline_addr}"),
            baseline_carts.clone(),
            half,
        )
        .await;
        let g2 = http_load(format!("http://{grain_addr}"), grain_carts, half).await;
        let b2 = http_load(format!("http://{baseline_addr}"), baseline_carts, half).await;
        // The node's own ceiling: a route that does no work.
        let ceiling = get_load(format!("http://{grain_addr}/healthz"), clients, half).await;
        (merge(g1, g2), merge(b1, b2), ceiling)
    });
    println!(
        "HTTP ceiling on the same node, {clients} clients, GET /healthz: {:.0}/s p99 {:.2} ms; durable adds / ceiling {:.2}",
        ceiling.per_sec(),
        ms(ceiling.quantile(0.99)),
        grain_result.per_sec() / ceiling.per_sec()
    );
    let store_stats = store.stats();
    println!(
        "HTTP add-item on {engine}, {clients} clients: grains {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} ok, {} failed); \
     stateless baseline {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} ok, {} failed); ratio {:.2}",
        grain_result.per_sec(),
        ms(grain_result.quantile(0.50)),
        ms(grain_result.quantile(0.99)),
        grain_result.ok(),
        grain_result.failed,
        baseline_result.per_sec(),
        ms(baseline_result.quantile(0.50)),
        ms(baseline_result.quantile(0.99)),
        baseline_result.ok(),
        baseline_result.failed,
        grain_result.per_sec() / baseline_result.per_sec()
    );
    println!(
        "CPU per request (the whole process, load client included): add {:.1} µs (of it the store writer {:.1} µs), \
         baseline add {:.1} µs, GET /healthz {:.1} µs",
        grain_result.per_request(grain_result.cpu.process),
        grain_result.per_request(grain_result.cpu.writer),
        baseline_result.per_request(baseline_result.cpu.process),
        ceiling.per_request(ceiling.cpu.process),
    );
    println!(
        "group commit on {engine}: {} appends in {} commits ({:.1} appends per commit, each one database round trip)",
        store_stats.appends,
        store_stats.commits,
        store_stats.appends as f64 / store_stats.commits.max(1) as f64
    );
}

fn merge(mut a: LoadResult, b: LoadResult) -> LoadResult {
    a.failed += b.failed;
    a.elapsed += b.elapsed;
    a.latencies.extend(b.latencies);
    a.cpu = a.cpu.add(b.cpu);
    a
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
