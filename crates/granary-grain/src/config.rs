//! The runtime's knobs.

use std::time::Duration;

/// Which thread a new activation lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the runtime's own pool of arbiter threads (this many), chosen by
    /// a hash of the id. Callers on other threads pay a thread hop per call,
    /// but grains outlive the callers' threads: a server stopping one of its
    /// worker threads never takes a grain (and its write in flight) with it.
    Pool(usize),
    /// On the caller's actix arbiter when there is one (no thread hop),
    /// else on the pool's first arbiter. For callers whose threads live as
    /// long as the runtime.
    Caller,
}

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
