//! The runtime's knobs.

use std::time::Duration;

/// How the grain runtime manages activations. Defaults suit a laptop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// A grain with no call for this long is passivated.
    pub idle_timeout: Duration,
    /// Most live activations; beyond it the least recently used is evicted.
    pub max_live: usize,
    /// A snapshot is written every this many events (0 disables snapshots).
    pub snapshot_every: u64,
    /// How long an activation with nothing stored (version 0) stays live
    /// after it was loaded; reads of ids nobody wrote must not fill memory.
    pub empty_linger: Duration,
    /// How often a runtime may retry a call that met a version conflict or
    /// an activation that was stopping.
    pub max_retries: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            idle_timeout: Duration::from_secs(15 * 60),
            max_live: 1_000_000,
            snapshot_every: 64,
            empty_linger: Duration::from_secs(5),
            max_retries: 5,
        }
    }
}
