//! The `granary.cluster.v1.Cluster` gRPC service.

use granary_cluster_core::{Change, NodeId, RejectReason};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::membership::ClusterHandle;
use super::wire;
use crate::proto::cluster as pb;
use crate::proto::cluster::cluster_server::Cluster;
use crate::security::{PeerIdentity, Trust};

pub struct ClusterService {
    handle: ClusterHandle,
    live_grains: std::sync::Arc<dyn Fn() -> u64 + Send + Sync>,
    /// With mutual TLS: the members' keys. `None` under `--insecure-cluster`.
    trust: Option<Arc<Trust>>,
}

impl ClusterService {
    pub fn new(
        handle: ClusterHandle,
        live_grains: std::sync::Arc<dyn Fn() -> u64 + Send + Sync>,
        trust: Option<Arc<Trust>>,
    ) -> Self {
        ClusterService {
            handle,
            live_grains,
            trust,
        }
    }

    /// With mutual TLS, the caller's key, which must be a member's; `None`
    /// in plaintext (no identities to check).
    fn member<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let Some(trust) = &self.trust else {
            return Ok(None);
        };
        match request.extensions().get::<PeerIdentity>() {
            Some(peer) if trust.admits(&peer.fingerprint) => Ok(Some(peer.fingerprint.to_string())),
            _ => Err(Status::permission_denied(
                "this node answers members of its cluster only",
            )),
        }
    }

    /// Proposes a membership change here, or names the leader to ask.
    async fn propose(&self, change: Change) -> pb::JoinReply {
        match self.handle.propose(change).await {
            Ok(()) => pb::JoinReply {
                accepted: true,
                message: "taken; the config follows".into(),
                leader_address: String::new(),
                refused: false,
            },
            Err(RejectReason::NotLeader { leader }) => {
                let address = match (&leader, self.handle.status().await) {
                    (Some(leader), Some(status)) => {
                        status.addresses.get(&leader.0).cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                };
                pb::JoinReply {
                    accepted: false,
                    message: "not the leader".into(),
                    leader_address: address,
                    refused: false,
                }
            }
            Err(reason) => pb::JoinReply {
                accepted: false,
                message: format!("{reason:?}"),
                leader_address: String::new(),
                refused: false,
            },
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn deliver(
        &self,
        request: Request<pb::Envelope>,
    ) -> Result<Response<pb::Delivered>, Status> {
        let peer = self.member(&request)?;
        let (from, message) =
            wire::from_envelope(request.into_inner()).map_err(Status::invalid_argument)?;
        // The sender is the authenticated peer, never a payload field.
        if let Some(peer) = peer
            && from.0 != peer
        {
            return Err(Status::permission_denied(
                "from: a member speaks only for itself",
            ));
        }
        if !self.handle.deliver(from, message) {
            return Err(Status::resource_exhausted(
                "the cluster task is behind; message dropped",
            ));
        }
        Ok(Response::new(pb::Delivered {}))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        let request = request.into_inner();
        let member = request
            .member
            .ok_or_else(|| Status::invalid_argument("member: missing"))?;
        let member = wire::member_from_wire(member, "member").map_err(Status::invalid_argument)?;
        // One cluster, one store: a node whose store is not this cluster's
        // would serve carts nobody else can see.
        if request.cluster_id != self.handle.cluster_id() {
            let theirs = if request.cluster_id.is_empty() {
                "no cluster id".to_owned()
            } else {
                format!("cluster id {:?}", request.cluster_id)
            };
            return Ok(Response::new(pb::JoinReply {
                accepted: false,
                refused: true,
                message: format!(
                    "refused: the joining node's event store holds {theirs}, but this cluster's store holds cluster id {:?}; a member must use the cluster's store (give it the same --store)",
                    self.handle.cluster_id()
                ),
                leader_address: String::new(),
            }));
        }
        Ok(Response::new(self.propose(Change::Join(member)).await))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        let peer = self.member(&request)?;
        let id = request.into_inner().id;
        if let Some(peer) = peer
            && id != peer
        {
            return Err(Status::permission_denied(
                "id: a member may only leave itself",
            ));
        }
        if id.is_empty()
            || id.len() > 261
            || id.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Status::invalid_argument(
                "id: 1..=261 printable characters without spaces",
            ));
        }
        Ok(Response::new(self.propose(Change::Leave(NodeId(id))).await))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.member(&request)?;
        let status = self
            .handle
            .status()
            .await
            .ok_or_else(|| Status::unavailable("the cluster task has stopped"))?;
        Ok(Response::new(pb::StatusReply {
            node_id: status.node_id,
            role: status.role,
            term: status.term,
            leader: status.leader.unwrap_or_default(),
            quorum: status.quorum,
            quorum_size: status.quorum_size as u32,
            members: status.members as u32,
            config_version: status.config_version,
            committed_version: status.committed_version,
            peers: status
                .peers
                .into_iter()
                .map(|p| pb::PeerStatus {
                    id: p.id,
                    address: p.address,
                    live: p.live,
                    last_seen_ms_ago: p.last_seen_ms_ago,
                })
                .collect(),
            live_grains: (self.live_grains)(),
        }))
    }
}
