//! What members say to each other. The sender is never in the payload: the
//! transport hands it in with the message, from the peer's authenticated
//! identity.

use serde::{Deserialize, Serialize};

use crate::config::{ClusterConfig, Member, NodeId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Sent by every member to every other member each `heartbeat_every`.
    /// Carries the sender's term, the leader it follows and its config
    /// version, so disagreements surface within one interval.
    Heartbeat {
        term: u64,
        leader: Option<NodeId>,
        config_term: u64,
        config_version: u64,
        /// The highest config version the sender knows to be committed.
        committed_version: u64,
        /// The sender's clock when it sent this heartbeat; the receiver
        /// echoes it back, which proves the link works both ways.
        nonce: u64,
        /// The newest `nonce` the sender has received from the receiver.
        echo: Option<u64>,
        /// For each member, how long (ms) the sender has not heard from it.
        /// The leader declares a member dead only when a majority agree.
        /// Empty beyond [`MESH_LIMIT`](crate::MESH_LIMIT) members, where
        /// the leader judges by itself.
        silence: Vec<(NodeId, u64)>,
        /// The sender sees a majority both ways. From the leader, beyond
        /// [`MESH_LIMIT`](crate::MESH_LIMIT) members, it renews the
        /// receiver's lease to serve.
        serving: bool,
    },
    /// A candidate asks for a vote.
    RequestVote {
        term: u64,
        config_term: u64,
        config_version: u64,
    },
    /// The answer to `RequestVote`.
    Vote { term: u64, granted: bool },
    /// The leader of `term` replicates a new config; it is committed once a
    /// majority of the new config has acknowledged it.
    ApplyConfig {
        term: u64,
        config: ClusterConfig,
        committed_version: u64,
    },
    /// A member accepted config `version` from the leader of `term`.
    ConfigAck { term: u64, version: u64 },
    /// A lagging member asks the leader for its config.
    PullConfig,
}

/// A membership change, committed only by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Join(Member),
    Leave(NodeId),
    /// Declared by the leader itself after `dead_after` of silence.
    Dead(NodeId),
}
