//! The PostgreSQL engine: one database shared by nodes on many machines.
//!
//! Writers: a few connections take appends from one bounded queue. A
//! writer takes every append that queued while it was busy (up to
//! `max_batch`) and sends them as one set-based statement
//! (`link::APPEND_SET`): one statement, so one transaction, one commit and
//! one round trip for the whole batch (group commit). Versions and
//! idempotency keys are checked per append inside it; only a writer of the
//! same stream racing the batch makes the whole statement fail (nothing
//! written), and then the batch goes again through `granary_append`, where
//! each append runs in its own subtransaction, so that race refuses that
//! append only. A batch with two appends to one stream goes through
//! `granary_append` from the start.
//!
//! Readers: a few more connections serve `load`, `find_idempotent`,
//! snapshots and the cluster id from a second queue.
//!
//! Failure: every exchange has a deadline. A write whose answer is lost
//! (the connection broke, the deadline passed) is `Indeterminate`; while
//! the server is unreachable every call answers `Unavailable` at once
//! (see [`link`]), and the links reconnect by themselves when it is back.
//!
//! The engine runs its connections on a tokio runtime of its own, on one
//! thread, so it works the same under any caller's executor.

mod link;
mod schema;
mod tls;

use tls::SslMode;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Config;
use tokio_postgres::error::SqlState;

use crate::error::StoreError;
use crate::store::{CommitObserver, Counters, EventStore, StoreFuture, StoreStats, queued};
use crate::types::{
    AppendRequest, DueReminder, EventRecord, GrainKey, IdempotencyRecord, LoadedGrain, Reminder,
    ReminderChange, Snapshot,
};
use link::{Link, classify};
use tls::MakeRustls;

/// Tuning of the PostgreSQL engine.
#[derive(Debug, Clone)]
pub struct PostgresStoreOptions {
    /// Connections that write (each carries one batch at a time).
    pub writers: usize,
    /// Connections that read.
    pub readers: usize,
    /// Requests that may wait before `append` answers `Unavailable`.
    pub queue: usize,
    /// Most appends one batch may carry.
    pub max_batch: usize,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one exchange (a batch, a load) may take.
    pub round_trip_timeout: Duration,
}

impl Default for PostgresStoreOptions {
    fn default() -> Self {
        PostgresStoreOptions {
            writers: 2,
            readers: 4,
            queue: 16_384,
            max_batch: 1_024,
            connect_timeout: Duration::from_secs(2),
            round_trip_timeout: Duration::from_secs(5),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

struct Append {
    request: AppendRequest,
    reply: Reply<u64>,
}

enum ReadOp {
    Load(GrainKey, Reply<LoadedGrain>),
    Find(GrainKey, String, Reply<Option<IdempotencyRecord>>),
    Snapshot(GrainKey, Snapshot, Reply<()>),
    ClusterId(Option<String>, Reply<Option<String>>),
    DueReminders(u64, usize, Reply<Vec<DueReminder>>),
    FinishReminder(GrainKey, String, u64, Reply<()>),
}

struct Shared {
    writes: mpsc::Sender<Append>,
    reads: mpsc::Sender<ReadOp>,
    counters: Arc<Counters>,
    location: String,
    /// Dropped with the last clone: the engine's runtime thread ends.
    _stop: std::sync::mpsc::Sender<()>,
}

/// The PostgreSQL event store. Cheap to clone; the clones share the
/// connections, which close when the last clone is dropped.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.shared.location)
            .finish()
    }
}

/// `postgres://host:port/db` of a config, without user or password.
fn location_of(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("postgres://{host}:{port}/{db}")
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`)
    /// with default options, applying migrations.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, PostgresStoreOptions::default())
    }

    /// Connects, applies migrations (refusing a newer schema) and starts
    /// the engine's connections. Fails if the database cannot be reached
    /// now: a node should not start on a store it cannot use.
    pub fn open_with(url: &str, options: PostgresStoreOptions) -> Result<Self, StoreError> {
        let (mut config, tls, mode) = Self::parse(url).map_err(StoreError::Invalid)?;
        config
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .application_name("granary");
        if mode == SslMode::Require {
            tracing::warn!(
                "sslmode=require without sslrootcert: the connection to PostgreSQL is encrypted, but the server is not authenticated; use sslmode=verify-full with sslrootcert=PATH"
            );
        }
        let location = location_of(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("granary-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the engine: {e}")))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (started, setup) = std::sync::mpsc::channel();
        let counters = Arc::new(Counters::default());
        let (writes, write_rx) = mpsc::channel(options.queue.max(1));
        let (reads, read_rx) = mpsc::channel(options.queue.max(1));
        {
            let (config, location, counters) = (config.clone(), location.clone(), counters.clone());
            let tls = tls.clone();
            std::thread::Builder::new()
                .name("granary-postgres".into())
                .spawn(move || {
                    let setup = runtime.block_on(async {
                        let connect = config.connect(tls.clone());
                        let (mut client, connection) =
                            tokio::time::timeout(options.connect_timeout, connect)
                                .await
                                .map_err(|_| {
                                    StoreError::Unavailable(format!(
                                        "cannot connect to {location}: no answer within {:?}",
                                        options.connect_timeout
                                    ))
                                })?
                                .map_err(|e| {
                                    StoreError::Unavailable(format!(
                                        "cannot connect to {location}: {}",
                                        link::explain(&e)
                                    ))
                                })?;
                        let driver = tokio::spawn(connection);
                        schema::migrate(&mut client, &location).await?;
                        drop(client);
                        let _ = driver.await;
                        Ok(())
                    });
                    let failed = setup.is_err();
                    let _ = started.send(setup);
                    if failed {
                        return;
                    }
                    let write_rx = Arc::new(Mutex::new(write_rx));
                    for _ in 0..options.writers.max(1) {
                        let link = Link::new(
                            config.clone(),
                            tls.clone(),
                            location.clone(),
                            options.connect_timeout,
                        );
                        runtime.spawn(write_loop(
                            link,
                            write_rx.clone(),
                            options.clone(),
                            counters.clone(),
                        ));
                    }
                    let read_rx = Arc::new(Mutex::new(read_rx));
                    for _ in 0..options.readers.max(1) {
                        let link = Link::new(
                            config.clone(),
                            tls.clone(),
                            location.clone(),
                            options.connect_timeout,
                        );
                        runtime.spawn(read_loop(
                            link,
                            read_rx.clone(),
                            options.round_trip_timeout,
                            counters.clone(),
                        ));
                    }
                    // Runs the connections until the store is dropped.
                    let _ = stopped.recv();
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })
                .map_err(|e| StoreError::Unavailable(format!("cannot start a thread: {e}")))?;
        }
        setup
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the engine stopped".into())))?;
        Ok(PostgresStore {
            shared: Arc::new(Shared {
                writes,
                reads,
                counters,
                location,
                _stop: stop,
            }),
        })
    }

    /// Whether `url` is a PostgreSQL URL this engine can use (its TLS
    /// settings included: `sslmode`, `sslrootcert`); why not.
    pub fn check_url(url: &str) -> Result<(), String> {
        Self::parse(url).map(|_| ())
    }

    /// The driver's config of `url`, the TLS connector its settings make,
    /// and its `sslmode`.
    fn parse(url: &str) -> Result<(Config, MakeRustls, SslMode), String> {
        let settings = tls::settings(url)?;
        let config =
            Config::from_str(&settings.url).map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        Ok((config, settings.connector, settings.mode))
    }

    /// A store URL for logs and errors: `postgres://host:port/db
    /// (sslmode=MODE)` without credentials, or the scheme alone if it is
    /// not a PostgreSQL URL.
    pub fn describe(url: &str) -> String {
        // The query says nothing about where, but how: the TLS mode is
        // shown (an operator wants to see it at start).
        let (without_query, query) = url.split_once('?').unwrap_or((url, ""));
        let sslmode = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("sslmode="))
            .unwrap_or("prefer");
        match Config::from_str(without_query) {
            Ok(config) => format!("{} (sslmode={sslmode})", location_of(&config)),
            Err(_) => url.split_once("://").map_or_else(
                || "a URL".to_owned(),
                |(scheme, _)| format!("a {scheme}:// URL"),
            ),
        }
    }

    /// `postgres://host:port/db`, without credentials (for logs).
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    fn read<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> ReadOp) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        let sent = self.shared.reads.try_send(make(tx));
        queued(sent.err().map(|_| "read queue is full"), rx, false)
    }
}

impl EventStore for PostgresStore {
    fn append(&self, request: AppendRequest) -> StoreFuture<u64> {
        if let Err(err) = request.check() {
            return Box::pin(async { Err(err) });
        }
        let (tx, rx) = oneshot::channel();
        let sent = self.shared.writes.try_send(Append { request, reply: tx });
        queued(sent.err().map(|_| "write queue is full"), rx, true)
    }

    fn load(&self, key: &GrainKey) -> StoreFuture<LoadedGrain> {
        let key = key.clone();
        self.read(|reply| ReadOp::Load(key, reply))
    }

    fn save_snapshot(&self, key: &GrainKey, snapshot: Snapshot) -> StoreFuture<()> {
        let key = key.clone();
        self.read(|reply| ReadOp::Snapshot(key, snapshot, reply))
    }

    fn find_idempotent(
        &self,
        key: &GrainKey,
        idempotency_key: &str,
    ) -> StoreFuture<Option<IdempotencyRecord>> {
        let (key, idempotency_key) = (key.clone(), idempotency_key.to_owned());
        self.read(|reply| ReadOp::Find(key, idempotency_key, reply))
    }

    fn cluster_id(&self, propose: Option<String>) -> StoreFuture<Option<String>> {
        self.read(|reply| ReadOp::ClusterId(propose, reply))
    }

    fn due_reminders(&self, now: u64, limit: usize) -> StoreFuture<Vec<DueReminder>> {
        self.read(|reply| ReadOp::DueReminders(now, limit, reply))
    }

    fn finish_reminder(&self, key: &GrainKey, id: &str, due: u64) -> StoreFuture<()> {
        let (key, id) = (key.clone(), id.to_owned());
        self.read(|reply| ReadOp::FinishReminder(key, id, due, reply))
    }

    fn stats(&self) -> StoreStats {
        self.shared.counters.snapshot()
    }

    fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.shared.counters.observe(observer)
    }
}

/// One writer connection: takes a batch, sends it as one statement,
/// answers every caller.
async fn write_loop(
    mut link: Link,
    queue: Arc<Mutex<mpsc::Receiver<Append>>>,
    options: PostgresStoreOptions,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(options.max_batch);
    loop {
        {
            let mut rx = queue.lock().await;
            match rx.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            while batch.len() < options.max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        }
        write_batch(&mut link, &mut batch, &options, &counters).await;
    }
}

async fn write_batch(
    link: &mut Link,
    batch: &mut Vec<Append>,
    options: &PostgresStoreOptions,
    counters: &Counters,
) {
    let began = std::time::Instant::now();
    // Every batch writes its streams in one order (kind, grain; appends to
    // one stream keep their order), so two batches that share streams
    // wait for each other instead of deadlocking.
    batch.sort_by(|a, b| {
        (&a.request.key.kind, &a.request.key.id).cmp(&(&b.request.key.kind, &b.request.key.id))
    });
    let n = batch.len();
    let mut kinds = Vec::with_capacity(n);
    let mut grains = Vec::with_capacity(n);
    let mut expected = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut payloads: Vec<&[u8]> = Vec::new();
    let mut idem_keys = Vec::with_capacity(n);
    let mut idem_hashes = Vec::with_capacity(n);
    let mut idem_replies: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut epochs = Vec::with_capacity(n);
    for Append { request, .. } in batch.iter() {
        epochs.push(request.epoch as i64);
        kinds.push(request.key.kind.as_str());
        grains.push(request.key.id.as_str());
        expected.push(request.expected_version as i64);
        counts.push(request.events.len() as i32);
        payloads.extend(request.events.iter().map(Vec::as_slice));
        let record = request.idempotency.as_ref();
        idem_keys.push(record.map(|r| r.key.as_str()));
        idem_hashes.push(record.map(|r| r.request_hash as i64));
        idem_replies.push(record.map(|r| r.reply.as_slice()));
    }
    let result = match link.get().await {
        Err(err) => Err(err),
        Ok((client, statements)) => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
                &kinds,
                &grains,
                &expected,
                &counts,
                &payloads,
                &idem_keys,
                &idem_hashes,
                &idem_replies,
                &epochs,
            ];
            // Two appends to one stream must see each other: the loop.
            let mut streams = std::collections::HashSet::with_capacity(n);
            let distinct = kinds
                .iter()
                .zip(&grains)
                .all(|stream| streams.insert(stream));
            // Reminders are set with their appends, in one transaction.
            let reminders: Vec<&[ReminderChange]> = batch
                .iter()
                .map(|a| a.request.reminders.as_slice())
                .collect();
            if reminders.iter().any(|r| !r.is_empty()) {
                let call =
                    append_with_reminders(client, statements, &params, &kinds, &grains, &reminders);
                within(options.round_trip_timeout, call).await
            } else {
                let call = async {
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let sent = if distinct {
                            match client.query(&statements.append_fast, &params).await {
                                // A writer of the same stream raced the batch:
                                // nothing was written; again, refusing only
                                // that append.
                                Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                                    client.query(&statements.append, &params).await
                                }
                                other => other,
                            }
                        } else {
                            client.query(&statements.append, &params).await
                        };
                        match sent {
                            // The server rolled the batch back to break a lock
                            // cycle with a writer that does not order its
                            // streams: nothing was written, so send it again.
                            Err(err)
                                if attempt < 3
                                    && (err.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                                        || err.code()
                                            == Some(&SqlState::T_R_SERIALIZATION_FAILURE)) => {}
                            other => break other,
                        }
                    }
                };
                within(options.round_trip_timeout, call).await
            }
        }
    };
    let rows = match result {
        Ok(rows) => rows,
        Err(err) => {
            if matches!(err, StoreError::Indeterminate(_)) {
                link.reset();
            }
            for Append { reply, .. } in batch.drain(..) {
                let _ = reply.send(Err(err.clone()));
            }
            return;
        }
    };
    let mut outcomes: Vec<Option<(String, i64)>> = vec![None; n];
    for row in rows {
        let index: i32 = row.get(0);
        if let Some(slot) = outcomes.get_mut((index as usize).wrapping_sub(1)) {
            *slot = Some((row.get(1), row.get(2)));
        }
    }
    let appended = outcomes
        .iter()
        .filter(|o| o.as_ref().is_some_and(|(outcome, _)| outcome == "ok"))
        .count();
    counters.committed(appended as u64, began.elapsed());
    for (Append { request, reply }, outcome) in batch.drain(..).zip(outcomes) {
        let answer = match outcome {
            Some((outcome, version)) if outcome == "ok" => Ok(version as u64),
            Some((outcome, version)) if outcome == "conflict" => {
                counters.conflict();
                Err(StoreError::Conflict {
                    key: request.key,
                    expected: request.expected_version,
                    actual: version as u64,
                })
            }
            Some((outcome, newer)) if outcome == "fenced" => Err(StoreError::Fenced {
                key: request.key,
                epoch: request.epoch,
                newer: newer as u64,
            }),
            Some((outcome, _)) if outcome == "duplicate" => {
                Err(StoreError::DuplicateIdempotencyKey {
                    key: request.key,
                    idempotency_key: request.idempotency.map(|r| r.key).unwrap_or_default(),
                })
            }
            other => Err(StoreError::Engine(format!(
                "granary_append answered {other:?} for {}",
                request.key
            ))),
        };
        let _ = reply.send(answer);
    }
}

/// One reader connection.
/// A write's answer, or `Indeterminate` when none came within `limit`.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(err)) => Err(classify(&err, true)),
        Err(_) => Err(StoreError::Indeterminate(format!(
            "no answer from PostgreSQL within {limit:?}"
        ))),
    }
}

async fn read_loop(
    mut link: Link,
    queue: Arc<Mutex<mpsc::Receiver<ReadOp>>>,
    deadline: Duration,
    counters: Arc<Counters>,
) {
    loop {
        let op = {
            let mut rx = queue.lock().await;
            match rx.recv().await {
                Some(op) => op,
                None => return,
            }
        };
        match op {
            ReadOp::Load(key, reply) => {
                let answer = exchange(&mut link, deadline, |c, s| async move {
                    let rows = c.query(&s.load, &[&key.kind, &key.id]).await?;
                    Ok(loaded(rows))
                })
                .await;
                if answer.is_ok() {
                    counters.loaded();
                }
                let _ = reply.send(answer);
            }
            ReadOp::Find(key, idempotency_key, reply) => {
                let answer = exchange(&mut link, deadline, |c, s| async move {
                    let row = c
                        .query_opt(&s.find_idempotent, &[&key.kind, &key.id, &idempotency_key])
                        .await?;
                    Ok(row.map(|row| IdempotencyRecord {
                        key: idempotency_key,
                        request_hash: row.get::<_, i64>(0) as u64,
                        reply: row.get(1),
                    }))
                })
                .await;
                let _ = reply.send(answer);
            }
            ReadOp::Snapshot(key, snapshot, reply) => {
                let version = snapshot.version as i64;
                let answer = exchange(&mut link, deadline, |c, s| {
                    let key = key.clone();
                    async move {
                        let row = c
                            .query_one(
                                &s.snapshot,
                                &[&key.kind, &key.id, &version, &snapshot.payload],
                            )
                            .await?;
                        Ok((row.get::<_, bool>(0), row.get::<_, i64>(1)))
                    }
                })
                .await
                .and_then(|(stored, last)| {
                    if stored {
                        Ok(())
                    } else {
                        Err(StoreError::Invalid(format!(
                            "snapshot of {key} at version {version} but the stream is at {last}"
                        )))
                    }
                });
                let _ = reply.send(answer);
            }
            ReadOp::DueReminders(now, limit, reply) => {
                let answer = exchange(&mut link, deadline, |c, _| async move {
                    let rows = c
                        .query(
                            "SELECT kind, grain, id, due, payload FROM granary_reminders
                              WHERE due <= $1 ORDER BY due LIMIT $2",
                            &[&(now as i64), &(limit as i64)],
                        )
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|row| DueReminder {
                            key: GrainKey::new(row.get::<_, String>(0), row.get::<_, String>(1)),
                            reminder: Reminder {
                                id: row.get(2),
                                due: row.get::<_, i64>(3) as u64,
                                payload: row.get(4),
                            },
                        })
                        .collect())
                })
                .await;
                let _ = reply.send(answer);
            }
            ReadOp::FinishReminder(key, id, due, reply) => {
                let answer = exchange(&mut link, deadline, |c, _| async move {
                    c.execute(
                        "DELETE FROM granary_reminders
                          WHERE kind = $1 AND grain = $2 AND id = $3 AND due = $4",
                        &[&key.kind, &key.id, &id, &(due as i64)],
                    )
                    .await?;
                    Ok(())
                })
                .await;
                let _ = reply.send(answer);
            }
            ReadOp::ClusterId(propose, reply) => {
                let answer = exchange(&mut link, deadline, |c, _| async move {
                    if let Some(id) = &propose {
                        c.execute(
                            "INSERT INTO granary_meta (key, value) VALUES ('cluster_id', $1)
                             ON CONFLICT (key) DO NOTHING",
                            &[id],
                        )
                        .await?;
                    }
                    let row = c
                        .query_opt(
                            "SELECT value FROM granary_meta WHERE key = 'cluster_id'",
                            &[],
                        )
                        .await?;
                    Ok(row.map(|row| row.get::<_, String>(0)))
                })
                .await;
                let _ = reply.send(answer);
            }
        }
    }
}

/// Runs one read exchange with a deadline; a broken or late exchange
/// drops the connection.
async fn exchange<'a, T, F, Fut>(
    link: &'a mut Link,
    deadline: Duration,
    run: F,
) -> Result<T, StoreError>
where
    F: FnOnce(&'a tokio_postgres::Client, &'a link::Statements) -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>> + 'a,
{
    let (client, statements) = match link.get().await {
        Ok((client, statements)) => (client, statements),
        Err(err) => return Err(err),
    };
    let outcome = tokio::time::timeout(deadline, run(client, statements)).await;
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(classify(&err, false)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from PostgreSQL within {deadline:?}"
        ))),
    }
}

fn loaded(rows: Vec<tokio_postgres::Row>) -> LoadedGrain {
    let mut grain = LoadedGrain::default();
    for row in rows {
        let part: i32 = row.get(0);
        let version = row.get::<_, i64>(1) as u64;
        match part {
            0 => {
                grain.snapshot = Some(Snapshot {
                    version,
                    payload: row.get(2),
                })
            }
            1 => grain.events.push(EventRecord {
                version,
                payload: row.get(2),
            }),
            _ => grain.epoch = row.get::<_, i64>(3) as u64,
        }
        grain.version = grain.version.max(version);
    }
    grain
}

/// A batch whose appends set or cancel reminders: the appends (through
/// `granary_append`) and, for each one accepted, its reminder changes, in
/// one transaction.
async fn append_with_reminders(
    client: &tokio_postgres::Client,
    statements: &link::Statements,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    kinds: &[&str],
    grains: &[&str],
    reminders: &[&[ReminderChange]],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let done = async {
        let rows = client.query(&statements.append, params).await?;
        for row in &rows {
            let index: i32 = row.get(0);
            let outcome: String = row.get(1);
            let Some(i) = (index as usize).checked_sub(1) else {
                continue;
            };
            if outcome != "ok" {
                continue;
            }
            for change in reminders.get(i).copied().unwrap_or_default() {
                match change {
                    ReminderChange::Set(reminder) => {
                        client
                            .execute(
                                "INSERT INTO granary_reminders (kind, grain, id, due, payload)
                                 VALUES ($1, $2, $3, $4, $5)
                                 ON CONFLICT (kind, grain, id)
                                 DO UPDATE SET due = excluded.due, payload = excluded.payload",
                                &[
                                    &kinds[i],
                                    &grains[i],
                                    &reminder.id,
                                    &(reminder.due as i64),
                                    &reminder.payload,
                                ],
                            )
                            .await?;
                    }
                    ReminderChange::Cancel { id } => {
                        client
                            .execute(
                                "DELETE FROM granary_reminders WHERE kind = $1 AND grain = $2 AND id = $3",
                                &[&kinds[i], &grains[i], id],
                            )
                            .await?;
                    }
                }
            }
        }
        client.batch_execute("COMMIT").await?;
        Ok(rows)
    }
    .await;
    if done.is_err() {
        // Nothing of the batch is kept; the connection is usable again.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    done
}
