//! Counters the runtime keeps about its activations.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) activations: AtomicU64,
    pub(crate) passivations: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) dozes: AtomicU64,
    pub(crate) wakes: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the runtime's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeStats {
    /// Grains activated (loaded from the store) since start.
    pub activations: u64,
    /// Grains passivated for being idle.
    pub passivations: u64,
    /// Grains evicted to stay under the cap on live activations.
    pub evictions: u64,
    /// Grains restarted from the store after their code panicked.
    pub restarts: u64,
    /// Appends refused because another writer got there first.
    pub conflicts: u64,
    /// Reads answered from a live grain's committed state without its
    /// mailbox (see [`Grain::is_read`](crate::Grain::is_read)).
    pub reads: u64,
    /// Live grains that went dormant (their actor stopped, their state and
    /// placement kept) after taking no call for `doze_after`.
    pub dozes: u64,
    /// Dormant grains given an actor again by a call that needed one.
    pub wakes: u64,
    /// Grains live in memory now (awake or dormant).
    pub live: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self, live: usize) -> RuntimeStats {
        RuntimeStats {
            activations: self.activations.load(Ordering::Relaxed),
            passivations: self.passivations.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            dozes: self.dozes.load(Ordering::Relaxed),
            wakes: self.wakes.load(Ordering::Relaxed),
            live: live as u64,
        }
    }
}
