//! The embedded engine: one SQLite file, shared by every node process on a
//! machine that names the same path.
//!
//! Why SQLite: it is a real, crash-tested storage engine that needs no
//! server, and its WAL mode lets several processes read and write one file
//! safely (writers are serialized by a file lock, readers never block).
//! `synchronous=FULL` makes every commit fsync the log before it returns,
//! which is what "acknowledged means durable" needs.

mod reader;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::store::{CommitObserver, Counters, EventStore, StoreFuture, StoreStats, queued};
use crate::types::{
    AppendRequest, DueReminder, GrainKey, IdempotencyRecord, LoadedGrain, Snapshot,
};

use reader::ReadOp;
use writer::WriteOp;

/// Tuning of the embedded engine. The defaults suit a laptop and a small
/// server alike.
#[derive(Debug, Clone)]
pub struct SqliteStoreOptions {
    /// Requests that may wait for the writer before `append` answers
    /// `Unavailable`. Bounds memory under overload.
    pub write_queue: usize,
    /// Most appends one commit may carry.
    pub max_batch: usize,
    /// Threads serving `load` and `find_idempotent`.
    pub readers: usize,
    /// How long a statement waits for another process's write lock.
    pub busy_timeout: Duration,
}

impl Default for SqliteStoreOptions {
    fn default() -> Self {
        SqliteStoreOptions {
            write_queue: 16_384,
            max_batch: 1_024,
            readers: 2,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

struct Shared {
    writes: mpsc::SyncSender<WriteOp>,
    reads: mpsc::SyncSender<ReadOp>,
    counters: Arc<Counters>,
}

/// The embedded event store. Cheap to clone; all clones share the same
/// writer and reader threads, which stop when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// WAL frames the writer lets build up before it copies them into the
    /// database file (SQLite checks after each commit). A checkpoint copies
    /// each page once however many commits rewrote it, and a cart's pages are
    /// rewritten by commit after commit, so checkpointing every 8,000 frames
    /// (about 32 MiB at 4 KiB pages) instead of SQLite's 1,000 copies and
    /// syncs far fewer pages per append: the writer's CPU per durable add fell
    /// from about 32 to 26 µs (BENCHMARKS.md). The WAL stays bounded (a
    /// reader holding an old snapshot can still hold up its restart, as at any
    /// size); the reader connections never write, so they never checkpoint.
    pub const CHECKPOINT_FRAMES: i64 = 8_000;

    /// Opens (creating if needed) the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteStoreOptions::default())
    }

    /// Opens (creating if needed) the store at `path`, applying migrations.
    /// Refuses a file whose schema is newer than this build.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteStoreOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut setup = open_connection(&path, options.busy_timeout)?;
        schema::migrate(&mut setup, &path)?;
        drop(setup);

        let counters = Arc::new(Counters::default());
        let (writes, write_rx) = mpsc::sync_channel(options.write_queue);
        let writer_conn = open_connection(&path, options.busy_timeout)?;
        writer_conn.pragma_update(None, "wal_autocheckpoint", Self::CHECKPOINT_FRAMES)?;
        let writer_counters = counters.clone();
        let max_batch = options.max_batch.max(1);
        thread::Builder::new()
            .name("granary-store-writer".into())
            .spawn(move || writer::run(writer_conn, write_rx, max_batch, writer_counters))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer thread: {e}")))?;

        let (reads, read_rx) = mpsc::sync_channel(options.write_queue);
        let read_rx = Arc::new(std::sync::Mutex::new(read_rx));
        for n in 0..options.readers.max(1) {
            let conn = open_connection(&path, options.busy_timeout)?;
            let rx = read_rx.clone();
            let reader_counters = counters.clone();
            thread::Builder::new()
                .name(format!("granary-store-reader-{n}"))
                .spawn(move || reader::run(conn, rx, reader_counters))
                .map_err(|e| StoreError::Unavailable(format!("cannot start reader thread: {e}")))?;
        }

        Ok(SqliteStore {
            shared: Arc::new(Shared {
                writes,
                reads,
                counters,
            }),
            path,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn submit_write<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        let refused = match self.shared.writes.try_send(make(tx)) {
            Ok(()) => None,
            Err(mpsc::TrySendError::Full(_)) => Some("write queue is full"),
            Err(mpsc::TrySendError::Disconnected(_)) => Some("store writer has stopped"),
        };
        queued(refused, rx, true)
    }

    fn submit_read<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> ReadOp,
    ) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        let sent = self.shared.reads.try_send(make(tx));
        queued(sent.err().map(|_| "read queue is full"), rx, false)
    }
}

impl EventStore for SqliteStore {
    fn append(&self, request: AppendRequest) -> StoreFuture<u64> {
        if let Err(err) = request.check() {
            return Box::pin(async { Err(err) });
        }
        self.submit_write(|reply| WriteOp::Append { request, reply })
    }

    fn load(&self, key: &GrainKey) -> StoreFuture<LoadedGrain> {
        let key = key.clone();
        self.submit_read(|reply| ReadOp::Load { key, reply })
    }

    fn save_snapshot(&self, key: &GrainKey, snapshot: Snapshot) -> StoreFuture<()> {
        let key = key.clone();
        self.submit_write(|reply| WriteOp::Snapshot {
            key,
            snapshot,
            reply,
        })
    }

    fn find_idempotent(
        &self,
        key: &GrainKey,
        idempotency_key: &str,
    ) -> StoreFuture<Option<IdempotencyRecord>> {
        let key = key.clone();
        let idempotency_key = idempotency_key.to_owned();
        self.submit_read(|reply| ReadOp::FindIdempotent {
            key,
            idempotency_key,
            reply,
        })
    }

    fn cluster_id(&self, propose: Option<String>) -> StoreFuture<Option<String>> {
        // Rare (once at start): a connection of its own on a short-lived
        // thread, so neither queue waits behind it.
        let path = self.path.clone();
        let (tx, rx) = oneshot::channel();
        let spawned = thread::Builder::new()
            .name("granary-store-meta".into())
            .spawn(move || {
                let result = (|| {
                    let mut conn = open_connection(&path, Duration::from_secs(5))?;
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    if let Some(id) = &propose {
                        tx.execute(
                            "INSERT INTO granary_meta (key, value) VALUES ('cluster_id', ?1)
                             ON CONFLICT (key) DO NOTHING",
                            [id],
                        )?;
                    }
                    let id = tx
                        .query_row(
                            "SELECT value FROM granary_meta WHERE key = 'cluster_id'",
                            [],
                            |row| row.get::<_, String>(0),
                        )
                        .optional()?;
                    tx.commit()?;
                    Ok(id)
                })();
                let _ = tx.send(result);
            });
        Box::pin(async move {
            spawned.map_err(|e| StoreError::Unavailable(format!("cannot start a thread: {e}")))?;
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("store thread stopped".into())))
        })
    }

    fn due_reminders(&self, now: u64, limit: usize) -> StoreFuture<Vec<DueReminder>> {
        self.submit_read(|reply| ReadOp::DueReminders { now, limit, reply })
    }

    fn finish_reminder(&self, key: &GrainKey, id: &str, due: u64) -> StoreFuture<()> {
        let (key, id) = (key.clone(), id.to_owned());
        self.submit_write(|reply| WriteOp::FinishReminder {
            key,
            id,
            due,
            reply,
        })
    }

    fn stats(&self) -> StoreStats {
        self.shared.counters.snapshot()
    }

    fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.shared.counters.observe(observer)
    }
}

/// Opens one connection with the pragmas every connection needs.
pub(crate) fn open_connection(
    path: &Path,
    busy_timeout: Duration,
) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| {
        StoreError::Unavailable(format!("cannot open event store {}: {e}", path.display()))
    })?;
    conn.busy_timeout(busy_timeout)?;
    // WAL: readers never block the writer and several processes can share
    // the file. FULL: the WAL is fsynced at every commit, so a commit that
    // returned survives power loss and kill -9 alike.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Every statement the writer runs stays prepared (it has 16; the
    // default cache would evict one now and then).
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}
