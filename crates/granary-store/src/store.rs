//! The engine-neutral store contract.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::StoreError;
use crate::types::{
    AppendRequest, DueReminder, GrainKey, IdempotencyRecord, LoadedGrain, Snapshot,
};

/// A boxed future that any executor can await.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Counters an engine keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Appends that were made durable.
    pub appends: u64,
    /// Appends refused with a version conflict.
    pub conflicts: u64,
    /// Durable commits (each one sync of the log). `appends / commits` is
    /// how many changes group commit made share one sync.
    pub commits: u64,
    /// Grain streams read by `load`.
    pub loads: u64,
}

/// Durable, append-only storage of grain event streams.
///
/// Implementations must make an append durable before its future resolves
/// `Ok`, and must apply the expected-version check atomically with the
/// write, so two writers of one grain can never both succeed.
pub trait EventStore: Send + Sync + 'static {
    /// Appends events and, if given, the idempotency record, atomically.
    /// Resolves to the stream's new version. An append with no events must
    /// carry an idempotency record (the answer to a request that changed
    /// nothing is still the answer a retry must get); it checks the
    /// expected version like any other append.
    fn append(&self, request: AppendRequest) -> StoreFuture<u64>;

    /// Reads the newest snapshot and every later event of a grain.
    fn load(&self, key: &GrainKey) -> StoreFuture<LoadedGrain>;

    /// Stores a snapshot unless a newer one is already stored. Snapshots
    /// only shorten replay; losing one loses nothing.
    fn save_snapshot(&self, key: &GrainKey, snapshot: Snapshot) -> StoreFuture<()>;

    /// Finds the stored answer to an earlier request with this idempotency key.
    fn find_idempotent(
        &self,
        key: &GrainKey,
        idempotency_key: &str,
    ) -> StoreFuture<Option<IdempotencyRecord>>;

    /// The id of the cluster whose data this store holds. With `propose`,
    /// records it if the store holds none yet (the founding member does
    /// this). Resolves to the id the store holds afterwards. Members
    /// compare ids when one joins, so a node pointed at another store
    /// cannot join (its carts would not be the cluster's carts).
    fn cluster_id(&self, propose: Option<String>) -> StoreFuture<Option<String>>;

    /// Reminders due at `now` (milliseconds since the Unix epoch), soonest
    /// first, at most `limit`.
    fn due_reminders(&self, now: u64, limit: usize) -> StoreFuture<Vec<DueReminder>>;

    /// Removes reminder `id` of `key` if it is still due at `due` (one set
    /// again meanwhile, to another time, stays).
    fn finish_reminder(&self, key: &GrainKey, id: &str, due: u64) -> StoreFuture<()>;

    /// The engine's counters.
    fn stats(&self) -> StoreStats;

    /// Tells `observer` of every durable commit from now on (the node's
    /// metrics). An engine takes one observer; `false` if it already has
    /// one or does not report commits.
    fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> bool {
        let _ = observer;
        false
    }
}

/// Told of each durable commit an engine makes: how many appends it made
/// durable, and how long the commit took from the start of its
/// transaction to the end of its sync. Called on the engine's writer, so
/// it must be quick.
pub trait CommitObserver: Send + Sync + 'static {
    fn committed(&self, appends: u64, took: Duration);
}

/// The counters both engines keep, and their commit observer.
#[derive(Default)]
pub(crate) struct Counters {
    appends: AtomicU64,
    conflicts: AtomicU64,
    commits: AtomicU64,
    loads: AtomicU64,
    observer: OnceLock<Arc<dyn CommitObserver>>,
}

impl Counters {
    /// A durable commit of `appends` appends, `took` long.
    pub(crate) fn committed(&self, appends: u64, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.appends.fetch_add(appends, Ordering::Relaxed);
        if let Some(observer) = self.observer.get() {
            observer.committed(appends, took);
        }
    }

    pub(crate) fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn loaded(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn observe(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            appends: self.appends.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
        }
    }
}

/// The future of a request handed to an engine's queue: `Unavailable` if
/// the queue refused it (`refused` says why: nothing was done), else the
/// engine's answer. If the engine dropped it unanswered, a read is
/// `Unavailable` and a write (`write`) `Indeterminate`: the engine may
/// have committed it before it stopped.
pub(crate) fn queued<T: Send + 'static>(
    refused: Option<&'static str>,
    answer: tokio::sync::oneshot::Receiver<Result<T, StoreError>>,
    write: bool,
) -> StoreFuture<T> {
    Box::pin(async move {
        if let Some(why) = refused {
            return Err(StoreError::Unavailable(why.into()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(if write {
                StoreError::Indeterminate(
                    "the store engine stopped before answering; the write may have been made"
                        .into(),
                )
            } else {
                StoreError::Unavailable("the store engine stopped".into())
            })
        })
    })
}
