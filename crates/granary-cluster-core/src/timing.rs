//! How often members talk and how long silence may last.

/// The cluster's clocks, in milliseconds. Checked by [`Timing::validate`]:
/// `heartbeat_every` < `fence_after` < `dead_after`, with at least two
/// heartbeats of margin between fencing and death, so a partitioned
/// minority has stopped serving before the majority re-homes its grains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_every: u64,
    pub fence_after: u64,
    pub dead_after: u64,
    /// A follower that hears no leader for a time drawn from
    /// `[election_min, election_max)` campaigns.
    pub election_min: u64,
    pub election_max: u64,
}

impl Default for Timing {
    /// Defaults sized so a crashed node's grains are served again within
    /// 2 s: `dead_after` (1 s) for the majority to agree it is gone, plus the
    /// directory's hold of `fence_after` (0.6 s) after the removal commits.
    /// Six missed heartbeats fence a node; ten declare it dead.
    fn default() -> Self {
        Timing {
            heartbeat_every: 100,
            fence_after: 600,
            dead_after: 1_000,
            election_min: 500,
            election_max: 900,
        }
    }
}

/// A timing that would break the single-activation argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("heartbeat_every must be at least 1 ms")]
    ZeroHeartbeat,
    #[error(
        "fence_after ({fence_after} ms) must be at least 3 heartbeats ({heartbeat_every} ms each)"
    )]
    FenceTooShort {
        fence_after: u64,
        heartbeat_every: u64,
    },
    #[error(
        "dead_after ({dead_after} ms) must exceed fence_after ({fence_after} ms) by at least 2 heartbeats ({heartbeat_every} ms each)"
    )]
    DeadTooSoon {
        dead_after: u64,
        fence_after: u64,
        heartbeat_every: u64,
    },
    #[error("election timeouts must satisfy heartbeat_every < election_min < election_max")]
    BadElection,
}

/// How long a claimant waits for the partition holder's answer to a claim
/// (`ConfirmOwner`). A grant that arrives later is discarded, so every grant
/// a claimant acts on reached it within this of being made.
pub const CLAIM_DEADLINE_MS: u64 = 200;

/// Margin for clocks that run at different rates: members' clocks may
/// drift apart by up to 1 % each, 2 % of `fence_after` plus the claim
/// deadline (16 ms with the defaults), with room to spare.
pub const CLOCK_MARGIN_MS: u64 = 50;

impl Timing {
    /// How long a partition holder grants nothing that moved to it after
    /// adopting a new view of `members` members: holders of the old view
    /// may grant until their view lease runs out (`fence_after`), and such
    /// a grant may take up to the claim deadline to reach its claimant,
    /// measured on clocks that may drift apart (`CLOCK_MARGIN_MS`). After
    /// the hold, every grant made under an older view shows up in its
    /// claimant's grain list. A lone member has nobody else granting: no
    /// hold (the placement counts the members a view change dropped).
    pub fn directory_hold(&self, members: usize) -> u64 {
        if members <= 1 {
            0
        } else {
            self.fence_after + CLAIM_DEADLINE_MS + CLOCK_MARGIN_MS
        }
    }

    pub fn validate(&self) -> Result<(), TimingError> {
        if self.heartbeat_every == 0 {
            return Err(TimingError::ZeroHeartbeat);
        }
        if self.fence_after < 3 * self.heartbeat_every {
            return Err(TimingError::FenceTooShort {
                fence_after: self.fence_after,
                heartbeat_every: self.heartbeat_every,
            });
        }
        if self.dead_after < self.fence_after + 2 * self.heartbeat_every {
            return Err(TimingError::DeadTooSoon {
                dead_after: self.dead_after,
                fence_after: self.fence_after,
                heartbeat_every: self.heartbeat_every,
            });
        }
        if !(self.heartbeat_every < self.election_min && self.election_min < self.election_max) {
            return Err(TimingError::BadElection);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Timing::default().validate(), Ok(()));
    }

    #[test]
    fn death_must_come_well_after_fencing() {
        let timing = Timing {
            dead_after: 700,
            ..Timing::default()
        };
        assert!(matches!(
            timing.validate(),
            Err(TimingError::DeadTooSoon { .. })
        ));
    }
}
