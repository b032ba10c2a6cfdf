//! The engine-neutral store contract.

use std::future::Future;
use std::pin::Pin;

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
