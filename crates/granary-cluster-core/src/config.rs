//! The committed membership.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity. Assigned by the transport from the peer's
/// authenticated identity, never taken from a payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(id.into())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most members a cluster may have: a join beyond it is refused. The
/// wire bounds configs and heartbeats by it too.
pub const MAX_MEMBERS: usize = 64;

/// A member: its identity, where peers reach it and where clients reach
/// its HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub address: String,
    /// Its HTTP API's advertised `HOST:PORT`, which a member that forwards
    /// a request names to the client as the grain's owner. Empty: not said
    /// (a member from before it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http: String,
}

/// The membership as made by a leader. [`ClusterConfig::stamp`] orders
/// configs; a node applies only a higher stamp, and only from the leader of
/// its current term (or, not yet being a member, from a member of the new
/// config naming it). `term` is the term of the leader that made it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub version: u64,
    pub term: u64,
    pub members: BTreeMap<NodeId, Member>,
}

impl ClusterConfig {
    /// The first config of a new cluster: `founder` alone, version 1.
    pub fn founding(founder: Member) -> Self {
        let mut members = BTreeMap::new();
        members.insert(founder.id.clone(), founder);
        ClusterConfig {
            version: 1,
            term: 0,
            members,
        }
    }

    /// What orders configs: the term of the leader that made it, then its
    /// version. Term first, as in Raft's log comparison: a config made by
    /// a later leader supersedes any made in an earlier term, whatever
    /// their versions (an old leader cut off in a minority may have made a
    /// higher version that was never committed).
    pub fn stamp(&self) -> (u64, u64) {
        (self.term, self.version)
    }

    pub fn is_member(&self, id: &NodeId) -> bool {
        self.members.contains_key(id)
    }

    /// Votes or live members needed: a strict majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    pub fn ids(&self) -> impl Iterator<Item = &NodeId> {
        self.members.keys()
    }
}
