//! The runtime's knobs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Which thread a new activation lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On the runtime's own pool of arbiter threads (this many), chosen by
    /// a hash of the id. Callers on other threads pay a thread hop per call,
    /// but grains outlive the callers' threads: a server stopping one of its
    /// worker threads never takes a grain (and its write in flight) with it.
    Pool(usize),
    /// As `Pool`, on threads several runtimes share (one pool for every
    /// kind a node hosts: no more threads than cores, and a grain calling
    /// a grain of another kind may find it on its own thread).
    Shared(ArbiterPool),
    /// On the caller's actix arbiter when there is one (no thread hop),
    /// else on the pool's first arbiter. For callers whose threads live as
    /// long as the runtime.
    Caller,
}

/// Arbiter threads grains live on (see [`Placement::Shared`]). Cheap to
/// clone; clones are the same threads. Their work is whatever is spawned
/// on them: activations, and anything else given to [`ArbiterPool::spawn_on`].
#[derive(Clone)]
pub struct ArbiterPool(Arc<[actix::ArbiterHandle]>);

impl ArbiterPool {
    /// Starts `threads` arbiter threads (at least one). Must be called
    /// inside a running actix `System`.
    pub fn new(threads: usize) -> Self {
        ArbiterPool(
            (0..threads.max(1))
                .map(|_| actix::Arbiter::new().handle())
                .collect(),
        )
    }

    /// How many threads.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a pool has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs the future `work` makes on thread `turn` (modulo the count);
    /// `work` runs there, so its future need not be `Send`. `false` if
    /// that thread has stopped (`work` is dropped).
    pub fn spawn_on<F>(&self, turn: usize, work: impl FnOnce() -> F + Send + 'static) -> bool
    where
        F: Future<Output = ()> + 'static,
    {
        self.0[turn % self.0.len()].spawn_fn(move || {
            actix::spawn(work());
        })
    }

    /// Stops the threads (what runs there is dropped): for the end of a
    /// node, once nothing should run there any more.
    pub fn stop(&self) {
        for thread in self.0.iter() {
            thread.stop();
        }
    }

    pub(crate) fn first(&self) -> &actix::ArbiterHandle {
        &self.0[0]
    }

    /// The thread grain `id` lives on.
    pub(crate) fn of(&self, id: &str) -> &actix::ArbiterHandle {
        &self.0[thread_of(id, self.0.len())]
    }
}

/// The hash that places grain `id` on a thread: FNV-1a over its bytes,
/// stable across versions and processes (a member calling another
/// chooses the connection its thread reads by it).
pub fn placement_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which of `threads` threads grain `id` lives on.
pub fn thread_of(id: &str, threads: usize) -> usize {
    (placement_hash(id) % threads.max(1) as u64) as usize
}

impl std::fmt::Debug for ArbiterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArbiterPool({} threads)", self.0.len())
    }
}

/// Two pools are equal when they are the same threads.
impl PartialEq for ArbiterPool {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ArbiterPool {}

impl Default for Placement {
    fn default() -> Self {
        Placement::Pool(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

/// How the grain runtime manages activations. Defaults suit a laptop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// A grain with no call for this long is passivated.
    pub idle_timeout: Duration,
    /// A live grain whose mailbox took no call for this long goes dormant:
    /// its actor (task and mailbox) stops, its state, placement and entry
    /// stay, reads are still answered from its state, and the next call
    /// that needs the mailbox starts a new actor without loading. Zero
    /// keeps actors until the grain is passivated.
    pub doze_after: Duration,
    /// Most live activations; beyond it the least recently used is evicted.
    pub max_live: usize,
    /// A snapshot is written every this many events (0 disables snapshots).
    pub snapshot_every: u64,
    /// How long an activation with nothing stored (version 0) stays live
    /// after it was loaded; reads of ids nobody wrote must not fill memory.
    pub empty_linger: Duration,
    /// Where activations live.
    pub placement: Placement,
    /// Longest a grain waits for one store call (a load or an append), so a
    /// hung store never holds a grain's mailbox. A write that takes longer
    /// is answered `CallError::Unavailable` ("outcome unknown"), never
    /// resent, and the grain reloads before its next call.
    pub store_timeout: Duration,
    /// How often a runtime may retry a call that met a version conflict or
    /// an activation that was stopping.
    pub max_retries: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            idle_timeout: Duration::from_secs(15 * 60),
            doze_after: Duration::from_secs(10),
            max_live: 1_000_000,
            snapshot_every: 64,
            empty_linger: Duration::from_secs(5),
            placement: Placement::default(),
            store_timeout: Duration::from_secs(10),
            max_retries: 5,
        }
    }
}
