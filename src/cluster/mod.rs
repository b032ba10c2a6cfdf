//! The cluster runtime: the pure `granary-cluster-core` state machine run
//! over gRPC (`proto/cluster.proto`).
//!
//! - `membership.rs`: the heartbeat/quorum task. It owns the
//!   [`ClusterNode`](granary_cluster_core::ClusterNode), ticks it, feeds it
//!   delivered messages and proposals, and carries out its outputs: persist
//!   (fsync) before sending, send over pooled channels with a deadline,
//!   publish whether this node may serve grains. It runs on the gRPC thread's
//!   runtime, never behind HTTP work, so heartbeats do not starve under load.
//! - `wire.rs`: core messages ⇄ protobuf.
//! - `service.rs`: the `granary.cluster.v1.Cluster` gRPC service.
//! - `persist.rs`: the durable state in `<data_dir>/cluster.json`.
//!
//! - `router.rs`: executes the placement core (`granary_cluster_core::
//!   Placement`): claims, paged grain lists, releases, the way to a cart's
//!   owner; the grain runtime's `Ownership`.
//! - `clock.rs`: the machine-wide monotonic clock heartbeats and leases
//!   run on.
//! - `remote.rs`: calls to grains wherever they live: placement,
//!   forwarding (MessagePack), typed errors back.
//! - `grains_service.rs`: calls forwarded by other members.
//! - `link.rs`: the grain-call link forwarded calls travel on (framed,
//!   matched by call id, on the member port beside gRPC).
//! - `dial.rs`: every outgoing channel, pinned mutual TLS by default.
//!
//! With mutual TLS the sender of a message is the authenticated peer
//! (`crate::security`); an envelope naming anyone else is refused.

pub mod clock;
pub mod dial;
mod grains_service;
pub mod link;
mod membership;
pub(crate) mod persist;
mod remote;
mod router;
mod service;
mod wire;

pub use grains_service::GrainsService;
pub use membership::{ClusterHandle, ClusterStatus, Membership, PeerView, start};
pub use remote::Remote;
pub use router::{GrainRouter, Placements, Route, Unroutable, placement_key};
pub use service::ClusterService;
pub(crate) use service::status_reply;
