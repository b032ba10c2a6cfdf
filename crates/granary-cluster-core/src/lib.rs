//! Granary's cluster decisions as pure state machines.
//!
//! Nothing here does I/O or reads a clock: time comes in with every input
//! (milliseconds on the caller's monotonic clock) and decisions come out as
//! [`Output`]s for a runtime to execute — send this message, persist that
//! state, stop serving grains. The same code therefore runs in the node
//! (over gRPC) and in deterministic simulations and property tests.
//!
//! # Layout
//! - [`ClusterConfig`] (`config.rs`): the committed, versioned membership.
//! - [`Timing`] (`timing.rs`): heartbeat interval, `fence_after`,
//!   `dead_after`, election timeouts, and the rules between them.
//! - [`Message`] (`message.rs`): what members say to each other.
//! - [`ClusterNode`] (`node.rs`): one member's view — liveness from
//!   heartbeats, quorum, self-fencing, leader election by majority vote with
//!   persisted terms, membership changes committed by the leader.
//! - [`OwnershipDirectory`] (`directory.rs`): which node owns each grain,
//!   partitioned over the members by rendezvous hashing so a claim costs one
//!   message to one node whatever the cluster size; after a view change
//!   only the grains that moved wait for the rebuild.
//! - [`Placement`] (`placement.rs`): one member's grains: its claims and
//!   their owner epochs, routes to the others, claims in flight, its
//!   directory partition and its paged rebuild, releases on passivation.
//!
//! # The rules that keep a grain single
//! Only members count: a message's sender is the authenticated peer the
//! transport hands in, never a payload field, and non-members are ignored.
//! A node that has not seen a strict majority of members for `fence_after`
//! fences itself (stops serving grains). The majority declares a member
//! dead only after `dead_after`, which `Timing` requires to exceed
//! `fence_after` by a margin, so by the time its grains are re-homed the
//! old owner has stopped serving them.

mod config;
mod directory;
mod message;
mod node;
mod placement;
mod timing;

pub use config::{ClusterConfig, MAX_MEMBERS, Member, NodeId};
pub use directory::{ClaimOutcome, Grant, OwnershipDirectory, partition_holder, view_epoch};
pub use message::{Change, Message};
pub use node::{ClusterNode, Durable, Input, MESH_LIMIT, Output, RejectReason, Role};
pub use placement::{
    ClaimAnswer, Command, GRAIN_PAGE, GrainPage, Locate, NotPlacedHere, Placement, Unplaced,
};
pub use timing::{CLAIM_DEADLINE_MS, CLOCK_MARGIN_MS, Timing, TimingError};
