//! The `granary.cluster.v1.Cluster` gRPC service.

use granary_cluster_core::{Change, Member, NodeId, RejectReason};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::membership::{ClusterHandle, ClusterStatus};
use super::router::GrainRouter;
use super::wire;
use crate::metrics::Metrics;
use crate::proto::cluster as pb;
use crate::proto::cluster::cluster_client::ClusterClient;
use crate::proto::cluster::cluster_server::Cluster;
use crate::security::tokens::Tokens;
use crate::security::{PeerIdentity, Trust};
use granary_store::{AppendRequest, EventStore, GrainKey, StoreError};

pub struct ClusterService {
    handle: ClusterHandle,
    /// Its HTTP figures go into `Status` (the dashboard shows them).
    metrics: Arc<Metrics>,
    /// With mutual TLS: the members' keys. `None` under `--insecure-cluster`.
    trust: Option<Arc<Trust>>,
    /// The join tokens this node made.
    tokens: Arc<Tokens>,
    /// The cluster's store: revoked keys are recorded there, for every
    /// member to see.
    store: Arc<dyn EventStore>,
    /// Where grains are placed (claims, grain lists, releases).
    router: Arc<GrainRouter>,
    /// The kinds hosted here (`RoundTrip` runs on their threads).
    grains: crate::grains::Grains,
}

/// The stream (in the cluster's store) that records a revoked key.
fn revocation(id: &str) -> GrainKey {
    GrainKey::new("granary-revoked-node", id)
}

impl ClusterService {
    pub fn new(
        handle: ClusterHandle,
        metrics: Arc<Metrics>,
        trust: Option<Arc<Trust>>,
        tokens: Arc<Tokens>,
        store: Arc<dyn EventStore>,
        router: Arc<GrainRouter>,
        grains: crate::grains::Grains,
    ) -> Self {
        ClusterService {
            handle,
            metrics,
            trust,
            tokens,
            store,
            router,
            grains,
        }
    }

    /// The member a placement request speaks for: the one it names, which
    /// with mutual TLS must be the caller itself (a member speaks only for
    /// itself).
    fn speaker<T>(&self, request: &Request<T>, field: &str, named: &str) -> Result<NodeId, Status> {
        let peer = self.member(request)?;
        let named = wire::node_id(named, field).map_err(Status::invalid_argument)?;
        match peer {
            Some(peer) if peer != named.0 => Err(Status::permission_denied(format!(
                "{field}: a member speaks only for itself"
            ))),
            _ => Ok(named),
        }
    }

    /// Whether `id`'s key was removed for good (`granary node remove`).
    async fn revoked(&self, id: &str) -> Result<bool, Status> {
        self.store
            .load(&revocation(id))
            .await
            .map(|loaded| loaded.version > 0)
            .map_err(|e| Status::unavailable(format!("cannot read the store: {e}")))
    }

    /// The leader of this node's view, if it is another member.
    fn other_leader(&self, leader_address: &str) -> Option<Member> {
        self.handle
            .committed()
            .members
            .values()
            .find(|m| m.address == leader_address && m.id != self.handle.me().id)
            .cloned()
    }

    /// A client to `leader`, with this node's key, pinned to the leader's.
    async fn leader_client(
        &self,
        leader: &Member,
    ) -> Option<ClusterClient<tonic::transport::Channel>> {
        self.handle
            .dialer()
            .connect(
                &leader.address,
                super::dial::pin(&leader.id.0),
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(2),
            )
            .await
            .ok()
            .map(ClusterClient::new)
    }

    /// Whether a mutual-TLS caller may ask to admit `member`: a member may
    /// (it vouches, e.g. forwarding a join to the leader); a node asking
    /// for itself may with a valid token, or with its key alone if it is a
    /// former member coming back. `Err`: refused, and whether for good.
    async fn may_join(
        &self,
        peer: &PeerIdentity,
        member: &Member,
        token: &str,
    ) -> Result<(), (bool, &'static str)> {
        let Some(trust) = &self.trust else {
            return Ok(());
        };
        let is_member = self
            .handle
            .committed()
            .members
            .contains_key(&NodeId(peer.fingerprint.to_string()))
            && trust.admits(&peer.fingerprint);
        if is_member {
            return Ok(());
        }
        match self.revoked(&member.id.0).await {
            Ok(true) => return Err((true, "this node's key was removed from the cluster")),
            Ok(false) => {}
            Err(_) => {
                return Err((
                    false,
                    "the cluster's store is unavailable; asking again later",
                ));
            }
        }
        if member.id.0 != peer.fingerprint.to_string() {
            return Err((true, "a node may ask to be admitted only for itself"));
        }
        if !token.is_empty() {
            return if self.tokens.verify(token, &peer.fingerprint) {
                Ok(())
            } else {
                Err((true, "the join token is not valid here"))
            };
        }
        let former = self
            .handle
            .status()
            .await
            .is_some_and(|status| status.departed.contains(&member.id.0));
        if former {
            Ok(())
        } else {
            Err((
                false,
                "a join token is needed (granary token create, on a member)",
            ))
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

    /// Whether `member` answers at its advertised address: a gRPC answer
    /// (any, a refusal included) over a connection made to that address
    /// and, with mutual TLS, authenticated as `member`'s key. Bounded by
    /// one second.
    async fn answers_at_its_address(&self, member: &Member) -> Result<(), String> {
        use crate::proto::messages::control_plane_client::ControlPlaneClient;
        use std::time::Duration;
        let address = &member.address;
        let unreachable = |detail: String| {
            format!("{address} (the address it advertises) does not answer from here: {detail}")
        };
        let pin = super::dial::pin(&member.id.0);
        if self.handle.dialer().is_tls() && pin.is_none() {
            return Err(format!("{} is not a node id", member.id.0));
        }
        let probe = async {
            let channel = self
                .handle
                .dialer()
                .connect(address, pin, Duration::from_secs(1), Duration::from_secs(1))
                .await
                .map_err(&unreachable)?;
            let answer = ControlPlaneClient::new(channel)
                .ping(crate::proto::messages::Empty {})
                .await;
            match answer {
                Ok(_) => Ok(()),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                            | tonic::Code::Unknown
                    ) =>
                {
                    Err(unreachable(status.message().to_owned()))
                }
                // Refused, but by the node itself: it is there.
                Err(_) => Ok(()),
            }
        };
        tokio::time::timeout(Duration::from_secs(1), probe)
            .await
            .unwrap_or_else(|_| Err(unreachable("no answer within 1 s".into())))
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
                message: reason.to_string(),
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
        let peer = request.extensions().get::<PeerIdentity>().cloned();
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
        if let Some(peer) = &peer
            && let Err((for_good, why)) = self.may_join(peer, &member, &request.token).await
        {
            return Ok(Response::new(pb::JoinReply {
                accepted: false,
                refused: for_good,
                message: format!("join refused: {why}"),
                leader_address: String::new(),
            }));
        }
        // A node the leader cannot reach would be admitted only to be found
        // dead again (a one-way partition: its requests get out, nothing
        // gets in), and every admission holds the directory until the
        // newcomer's grain list is in. So it must answer the leader at the
        // address it advertises, with its key, first (a member that is not
        // the leader vouches for it, and the leader checks).
        let leads = self
            .handle
            .status()
            .await
            .is_some_and(|status| status.role == "leader");
        if leads
            && !self.handle.committed().is_member(&member.id)
            && let Err(why) = self.answers_at_its_address(&member).await
        {
            return Ok(Response::new(pb::JoinReply {
                accepted: false,
                refused: false,
                message: format!("not admitted yet: {why}"),
                leader_address: String::new(),
            }));
        }
        let reply = self.propose(Change::Join(member.clone())).await;
        // Not the leader: vouch for the node to the leader, which admits
        // what a member asks (the token stays with the member that made it).
        if self.trust.is_some()
            && !reply.accepted
            && let Some(leader) = self.other_leader(&reply.leader_address)
            && let Some(mut client) = self.leader_client(&leader).await
            && let Ok(answer) = client
                .join(pb::JoinRequest {
                    member: Some(wire::member_to_wire(&member)),
                    cluster_id: request.cluster_id,
                    token: String::new(),
                })
                .await
        {
            return Ok(Response::new(answer.into_inner()));
        }
        Ok(Response::new(reply))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        // The node itself (its operator, with its key) or another member
        // forwarding to the leader.
        let peer = self.member(&request)?;
        if peer.is_none() {
            return Err(Status::failed_precondition(
                "this cluster runs --insecure-cluster: there are no keys to revoke",
            ));
        }
        let id = request.into_inner().id;
        if id.parse::<crate::security::Fingerprint>().is_err() {
            return Err(Status::invalid_argument("id: a node id (64 hex digits)"));
        }
        if id == self.handle.me().id.0 {
            return Err(Status::invalid_argument(
                "id: a node cannot remove itself this way; stop it (SIGTERM) to leave",
            ));
        }
        // Revoke first, in the cluster's store: from now on no member
        // admits the key again, whatever it presents.
        if !self.revoked(&id).await? {
            let written = self
                .store
                .append(AppendRequest {
                    key: revocation(&id),
                    expected_version: 0,
                    events: vec![b"revoked".to_vec()],
                    idempotency: None,
                    epoch: 0,
                    reminders: Vec::new(),
                })
                .await;
            match written {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(err) => {
                    return Err(Status::unavailable(format!(
                        "cannot record the removal: {err}"
                    )));
                }
            }
        }
        let reply = self.propose(Change::Leave(NodeId(id.clone()))).await;
        if !reply.accepted
            && let Some(leader) = self.other_leader(&reply.leader_address)
            && let Some(mut client) = self.leader_client(&leader).await
            && let Ok(answer) = client.remove_node(pb::RemoveNodeRequest { id }).await
        {
            return Ok(Response::new(answer.into_inner()));
        }
        Ok(Response::new(reply))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        // Only the node itself: whoever holds its key (its operator).
        let me = &self.handle.me().id.0;
        match request.extensions().get::<PeerIdentity>() {
            Some(peer) if &peer.fingerprint.to_string() == me => {}
            Some(_) => {
                return Err(Status::permission_denied(
                    "tokens are made by the node itself: run granary token create with its --data-dir",
                ));
            }
            None => {
                return Err(Status::failed_precondition(
                    "this cluster runs --insecure-cluster: joining needs no token",
                ));
            }
        }
        let request = request.into_inner();
        let ttl = request.ttl_seconds;
        if ttl == 0 || ttl > 30 * 24 * 3600 {
            return Err(Status::invalid_argument("ttl_seconds: 1 s to 30 days"));
        }
        let members = self
            .handle
            .committed()
            .members
            .keys()
            .filter_map(|id| id.0.parse().ok())
            .collect();
        let token = self
            .tokens
            .create(ttl, members, request.single_use)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::CreateTokenReply {
            token: token.to_string(),
        }))
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

    async fn claim(
        &self,
        request: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::ClaimReply>, Status> {
        let claimant = self.speaker(&request, "claimant", &request.get_ref().claimant)?;
        let grain = request.into_inner().grain;
        wire::grain_id(&grain, "grain").map_err(Status::invalid_argument)?;
        let answer = self.router.claim_here(&claimant, &grain).await;
        Ok(Response::new(wire::claim_answer_to_wire(&answer)))
    }

    async fn list_grains(
        &self,
        request: Request<pb::GrainPageRequest>,
    ) -> Result<Response<pb::GrainPage>, Status> {
        let requester = self.speaker(&request, "member", &request.get_ref().member)?;
        let page = request.into_inner();
        if let Some(after) = &page.after {
            wire::grain_id(after, "after").map_err(Status::invalid_argument)?;
        }
        let view = (page.view_term, page.view_version);
        match self
            .router
            .grains_for(&requester, view, page.after.as_deref(), page.limit as usize)
        {
            Ok(found) => Ok(Response::new(pb::GrainPage {
                grains: found
                    .grains
                    .into_iter()
                    .map(|(id, grant)| pb::OwnedGrain {
                        id,
                        grant: Some(wire::grant_to_wire(&grant)),
                    })
                    .collect(),
                next: found.next,
            })),
            Err(mine) => Err(Status::failed_precondition(format!(
                "view: this member's committed view is {mine:?}, not {view:?}; ask again"
            ))),
        }
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Released>, Status> {
        let from = self.speaker(&request, "member", &request.get_ref().member)?;
        let grains = request.into_inner().grains;
        if grains.len() > granary_cluster_core::GRAIN_PAGE {
            return Err(Status::invalid_argument(format!(
                "grains: at most {} per release",
                granary_cluster_core::GRAIN_PAGE
            )));
        }
        let mut released = Vec::with_capacity(grains.len());
        for grain in grains {
            wire::grain_id(&grain.id, "grains.id").map_err(Status::invalid_argument)?;
            released.push((grain.id, grain.grant));
        }
        self.router.release_received(&from, &released);
        Ok(Response::new(pb::Released {}))
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
        Ok(Response::new(status_reply(
            status,
            &self.grains,
            &self.metrics,
        )))
    }

    async fn round_trip(
        &self,
        request: Request<pb::RoundTripRequest>,
    ) -> Result<Response<pb::RoundTripReply>, Status> {
        self.member(&request)?;
        let request = request.into_inner();
        if !(1..=10_000).contains(&request.count) {
            return Err(Status::invalid_argument("count: 1..=10000"));
        }
        let kind = if request.kind.is_empty() {
            "cart"
        } else {
            request.kind.as_str()
        };
        if !self.grains.hosts(kind) {
            return Err(Status::invalid_argument(format!(
                "kind: no grain kind {:?} is registered here",
                kind.chars().take(64).collect::<String>()
            )));
        }
        if !request.id.is_empty() && !crate::grains::valid_id(&request.id) {
            return Err(Status::invalid_argument(
                "id: 1..=190 printable characters without spaces",
            ));
        }
        let work = match request.call {
            None => {
                let me = self.handle.me().id.clone();
                let address = self
                    .handle
                    .with_committed(|c| {
                        c.members
                            .values()
                            .find(|m| m.id.0 == request.member || m.address == request.member)
                            .filter(|m| m.id != me)
                            .map(|m| m.address.clone())
                    })
                    .ok_or_else(|| {
                        Status::not_found("member: no other member has this id or address")
                    })?;
                let router = self.router.clone();
                Probe::Pings { router, address }
            }
            Some(call) => {
                if !crate::grains::valid_id(&call.id) {
                    return Err(Status::invalid_argument(
                        "call.id: 1..=190 printable characters without spaces",
                    ));
                }
                match self.grains.is_read(&call.kind, &call.command) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(Status::invalid_argument(
                            "call.command: not one of the kind's reads (a probe changes nothing)",
                        ));
                    }
                    Err(why) => return Err(Status::invalid_argument(format!("call: {why}"))),
                }
                Probe::Calls {
                    grains: self.grains.clone(),
                    from: crate::cluster::router::placement_key(kind, &request.id),
                    call,
                }
            }
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let count = request.count;
        self.grains.spawn_beside(
            kind,
            &request.id,
            Box::new(move || {
                Box::pin(async move {
                    let _ = answer.send(work.run(count).await);
                })
            }),
        );
        let times = answered
            .await
            .map_err(|_| Status::unavailable("the grain thread stopped"))?
            .map_err(Status::unavailable)?;
        let micros = |d: &std::time::Duration| d.as_micros() as u64;
        Ok(Response::new(pb::RoundTripReply {
            count: times.len() as u32,
            mean_us: times.iter().map(micros).sum::<u64>() / times.len().max(1) as u64,
            min_us: times.iter().map(micros).min().unwrap_or(0),
            max_us: times.iter().map(micros).max().unwrap_or(0),
        }))
    }
}

/// What `RoundTrip` repeats, on a grain's thread.
enum Probe {
    /// Pings to the member at `address` on this thread's grain-call
    /// connection.
    Pings {
        router: Arc<GrainRouter>,
        address: String,
    },
    /// A read of a grain, called as grain `from` would call it.
    Calls {
        grains: crate::grains::Grains,
        from: String,
        call: pb::ProbeCall,
    },
}

/// How long a `RoundTrip` may run.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Probe {
    /// Up to `count` sequential round trips (stopped after `PROBE_LIMIT`),
    /// each one's time.
    async fn run(self, count: u32) -> Result<Vec<std::time::Duration>, String> {
        match self {
            Probe::Pings { router, address } => {
                router.round_trips(&address, count, PROBE_LIMIT).await
            }
            Probe::Calls { grains, from, call } => {
                let began = std::time::Instant::now();
                let mut times = Vec::with_capacity(count as usize);
                while times.len() < count as usize && began.elapsed() < PROBE_LIMIT {
                    let options = granary_grain::CallOptions {
                        chain: vec![from.clone()],
                        ..Default::default()
                    };
                    let start = std::time::Instant::now();
                    grains
                        .call_encoded(&call.kind, &call.id, call.command.clone(), options)
                        .await
                        .map_err(|e| format!("the probe call failed: {e}"))?;
                    times.push(start.elapsed());
                }
                Ok(times)
            }
        }
    }
}

/// This member's `Status` answer: the cluster as `status` saw it, the
/// grains live here per kind and the HTTP figures of `metrics`.
pub(crate) fn status_reply(
    status: ClusterStatus,
    grains: &crate::grains::Grains,
    metrics: &Metrics,
) -> pb::StatusReply {
    let live: std::collections::HashMap<String, u64> = grains
        .stats()
        .into_iter()
        .map(|(kind, stats)| (kind.to_owned(), stats.live))
        .collect();
    let (http_requests, http_latency_buckets) = metrics.http_summary();
    pb::StatusReply {
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
                http: p.http,
                live: p.live,
                last_seen_ms_ago: p.last_seen_ms_ago,
            })
            .collect(),
        live_grains: live.values().sum(),
        live_by_kind: live,
        http_requests,
        http_latency_buckets,
    }
}
