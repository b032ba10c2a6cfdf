//! Whether this member may host a grain, and until when.
//!
//! Alone, a runtime hosts every grain. In a cluster, a member hosts a grain
//! only while it holds the grain's placement and sees a majority. Two
//! things carry that into the runtime:
//!
//! - [`Ownership`]: asked before every new activation (is the grain placed
//!   here, and with which owner epoch?) and told when an activation has
//!   stopped, so the placement can be released.
//! - [`Lease`]: the deadline until which this member may serve, and a count
//!   of its fences. An activation checks it against the clock right before
//!   it answers or appends, so a member resumed after a pause (SIGSTOP, a
//!   long GC-like stall) answers nothing from stale memory, and a call that
//!   was queued in a grain's mailbox when the member fenced is refused, not
//!   run, even if the member serves again by the time it is taken.
//!
//! The owner epoch goes with every append: the store refuses an append
//! from an older epoch than its stream's last writer (`StoreError::Fenced`),
//! which is the last word on ownership if everything else failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Why an activation may not start or a call may not run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The grain is not placed on this member (the caller should find its
    /// owner again). Nothing ran.
    NotOwner(String),
    /// This member may not serve now: it cannot see a majority, or it
    /// fenced since the activation started. Nothing ran.
    Fenced(String),
}

/// What an activation holds while it hosts a grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenure {
    /// The owner epoch its appends carry.
    pub epoch: u64,
}

/// The placement side of a cluster, as the runtime sees it.
pub trait Ownership: Send + Sync + 'static {
    /// A new activation (`activation` tells it from earlier and later ones
    /// of the same grain) of grain `kind`/`id` is about to load: its
    /// tenure, or why not. Called under the runtime's registry lock: must
    /// not call back into the runtime.
    fn activate(&self, kind: &'static str, id: &str, activation: u64) -> Result<Tenure, Refusal>;

    /// Activation `activation` of `kind`/`id` has stopped, with every write
    /// it made settled: its placement may be released (unless a newer
    /// activation holds it).
    fn deactivated(&self, kind: &'static str, id: &str, activation: u64);
}

/// Until when this member may serve grains, and how often it has fenced.
///
/// Written by the cluster's membership task, read by every activation.
/// Times are milliseconds on [`Lease::now`], a monotonic clock the lease
/// owns, so the deadline means the same on every thread.
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// `now()` at which serving ends; `u64::MAX` while unbounded.
    until: AtomicU64,
    fences: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    /// A lease that has not started: nothing may be served until
    /// [`Lease::extend_to`] is called.
    pub fn new() -> Self {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(0),
            fences: AtomicU64::new(0),
        }
    }

    /// A lease that never ends (a member alone, tests).
    pub fn unbounded() -> Self {
        let lease = Lease::new();
        lease.extend_to(u64::MAX);
        lease
    }

    /// Milliseconds since the lease was made.
    pub fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// The clock's origin: `now()` counts from here.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Serving may go on until `until` (on [`Lease::now`]'s clock).
    pub fn extend_to(&self, until: u64) {
        self.until.store(until, Ordering::Release);
    }

    /// The member lost its majority: every activation started before now
    /// refuses its calls from here on, and serving stops until extended.
    pub fn fence(&self) {
        self.fences.fetch_add(1, Ordering::AcqRel);
        self.until.store(0, Ordering::Release);
    }

    /// How many times the member has fenced.
    pub fn fences(&self) -> u64 {
        self.fences.load(Ordering::Acquire)
    }

    /// Whether an activation started at fence count `fences` may serve now.
    pub fn check(&self, fences: u64) -> Result<(), Refusal> {
        if self.fences() != fences {
            return Err(Refusal::Fenced(
                "this member fenced itself since the grain was activated".into(),
            ));
        }
        let until = self.until.load(Ordering::Acquire);
        if until != u64::MAX && self.now() >= until {
            return Err(Refusal::Fenced(
                "this member's lease ran out: it cannot confirm a majority of the cluster".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_serves_until_its_deadline_and_never_after_a_fence() {
        let lease = Lease::new();
        assert!(lease.check(0).is_err(), "not started");
        lease.extend_to(lease.now() + 60_000);
        assert_eq!(lease.check(0), Ok(()));
        lease.extend_to(lease.now());
        assert!(lease.check(0).is_err(), "past its deadline");
        lease.extend_to(u64::MAX);
        assert_eq!(lease.check(0), Ok(()));
        lease.fence();
        lease.extend_to(u64::MAX);
        assert!(
            matches!(lease.check(0), Err(Refusal::Fenced(_))),
            "an activation from before the fence stays refused"
        );
        assert_eq!(lease.check(1), Ok(()));
    }
}
