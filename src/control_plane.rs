//! The gRPC ControlPlane a node serves (seed-compatible, package `messages`).
//!
//! `ConfirmOwner` claims a cart at its partition holder and `GetCartIds`
//! lists the carts placed here (speaking of carts, as the seed does;
//! grains of other kinds are not named here); `Negotiate` answers the live
//! members and `Closing` lets a leaving member's carts be claimed at once.
//! Every request is bounded before it is looked at.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use granary_grain::Grain;
use tonic::{Request, Response, Status};

use crate::cart_grain::CartGrain;
use crate::cluster::{ClusterHandle, GrainRouter, placement_key};
use crate::proto::messages::control_plane_server::ControlPlane;
use crate::proto::messages::{
    CartIdsReply, ClosingNotice, Empty, NegotiateReply, NegotiateRequest, OwnerChangeAck,
    OwnerChangeRequest, PingReply,
};
use crate::security::PeerIdentity;

/// Most hosts a `Negotiate` request may name.
const MAX_HOSTS: usize = 1_024;
/// Most ids one `GetCartIds` reply carries.
const MAX_CART_IDS: usize = 65_536;
/// Longest host name accepted (DNS limit plus `:port`).
const MAX_HOST_LEN: usize = 261;

/// The ControlPlane service of one node.
pub struct ControlPlaneService {
    advertise: String,
    cluster: Option<ClusterHandle>,
    router: Option<Arc<GrainRouter>>,
}

impl ControlPlaneService {
    /// With mutual TLS, a request that names a member's address (a claim
    /// for it, its closing) must come from that member: a member speaks
    /// only for itself.
    fn speaks_for<T>(
        &self,
        request: &Request<T>,
        field: &str,
        address: &str,
    ) -> Result<(), Status> {
        let (Some(cluster), Some(peer)) =
            (&self.cluster, request.extensions().get::<PeerIdentity>())
        else {
            return Ok(());
        };
        let view = cluster.committed();
        match view.members.values().find(|m| m.address == address) {
            Some(member) if member.id.0 != peer.fingerprint.to_string() => Err(
                Status::permission_denied(format!("{field}: a member speaks only for itself")),
            ),
            _ => Ok(()),
        }
    }

    pub fn new(
        advertise: String,
        cluster: Option<ClusterHandle>,
        router: Option<Arc<GrainRouter>>,
    ) -> Self {
        ControlPlaneService {
            advertise,
            cluster,
            router,
        }
    }
}

fn check_host(field: &str, host: &str) -> Result<(), Status> {
    if host.is_empty()
        || host.len() > MAX_HOST_LEN
        || host.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Status::invalid_argument(format!(
            "{field}: a host must be 1..={MAX_HOST_LEN} printable characters without spaces"
        )));
    }
    Ok(())
}

/// `ConfirmOwner` as the seed's clients speak it: the claimant by its
/// address, the answer as text, "owner=ADDR" (granted, or owned there),
/// "holder=ADDR" (ask that member) or a refusal.
async fn confirm_owner_in_cluster(
    router: &Arc<GrainRouter>,
    cart: &str,
    claimant_address: &str,
) -> OwnerChangeAck {
    use granary_cluster_core::ClaimAnswer;
    let cart = placement_key(CartGrain::KIND, cart);
    let cart = cart.as_str();
    let Some(claimant) = router
        .member_at(claimant_address)
        .filter(|m| m.address == claimant_address)
    else {
        let message = match router.known_owner(cart) {
            Some(owner) => format!(
                "owner={}; rejected: {claimant_address} is not a member",
                owner.address
            ),
            None => format!("rejected: {claimant_address} is not a member"),
        };
        return OwnerChangeAck {
            accepted: false,
            message,
        };
    };
    let address_of = |id: &granary_cluster_core::NodeId| {
        router
            .member_at_id(id)
            .map(|m| m.address)
            .unwrap_or_default()
    };
    match router.claim_here(&claimant.id, cart).await {
        ClaimAnswer::Granted(grant) => OwnerChangeAck {
            accepted: true,
            message: format!("owner={claimant_address}; epoch={}", grant.epoch),
        },
        ClaimAnswer::Owned { owner } => OwnerChangeAck {
            accepted: false,
            message: format!("owner={}", address_of(&owner)),
        },
        ClaimAnswer::NotHolder { holder } => OwnerChangeAck {
            accepted: false,
            message: format!("holder={}", address_of(&holder)),
        },
        ClaimAnswer::Refused(why) => OwnerChangeAck {
            accepted: false,
            message: format!("rebuilding; {why}"),
        },
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn ping(&self, _: Request<Empty>) -> Result<Response<PingReply>, Status> {
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        Ok(Response::new(PingReply {
            host: self.advertise.clone(),
            unix_time,
        }))
    }

    async fn negotiate(
        &self,
        request: Request<NegotiateRequest>,
    ) -> Result<Response<NegotiateReply>, Status> {
        let known = request.into_inner().known_hosts;
        if known.len() > MAX_HOSTS {
            return Err(Status::invalid_argument(format!(
                "known_hosts: at most {MAX_HOSTS} hosts, got {}",
                known.len()
            )));
        }
        for host in &known {
            check_host("known_hosts", host)?;
        }
        // This node's healthy view: itself and the members it sees live.
        // The caller's hosts are validated but not adopted: membership
        // changes only through the cluster protocol, never from a payload.
        let mut hosts: BTreeSet<String> = [self.advertise.clone()].into_iter().collect();
        if let Some(cluster) = &self.cluster
            && let Some(status) = cluster.status().await
        {
            hosts.extend(
                status
                    .peers
                    .into_iter()
                    .filter(|p| p.live)
                    .map(|p| p.address),
            );
        }
        Ok(Response::new(NegotiateReply {
            hosts: hosts.into_iter().collect(),
        }))
    }

    async fn get_cart_ids(&self, _: Request<Empty>) -> Result<Response<CartIdsReply>, Status> {
        // The carts whose placement this member holds (the directory's
        // rebuild uses the paged `Cluster/ListGrains`, not this).
        let mut cart_ids = match &self.router {
            Some(router) => router.owned_ids(CartGrain::KIND, MAX_CART_IDS),
            None => Vec::new(),
        };
        cart_ids.sort();
        // Bounded so the reply fits the 4 MiB message limit whatever the
        // node holds (ids are 36 bytes).
        cart_ids.truncate(MAX_CART_IDS);
        Ok(Response::new(CartIdsReply { cart_ids }))
    }

    async fn confirm_owner(
        &self,
        request: Request<OwnerChangeRequest>,
    ) -> Result<Response<OwnerChangeAck>, Status> {
        let peer_check = self.speaks_for(&request, "new_host", &request.get_ref().new_host);
        let request = request.into_inner();
        if uuid::Uuid::parse_str(&request.cart_id).is_err() {
            return Err(Status::invalid_argument("cart_id: not a UUID"));
        }
        check_host("new_host", &request.new_host)?;
        peer_check?;
        if let Some(router) = &self.router {
            return Ok(Response::new(
                confirm_owner_in_cluster(router, &request.cart_id, &request.new_host).await,
            ));
        }
        if request.new_host == self.advertise {
            Ok(Response::new(OwnerChangeAck {
                accepted: true,
                message: format!("{} owns cart {}", self.advertise, request.cart_id),
            }))
        } else {
            Ok(Response::new(OwnerChangeAck {
                accepted: false,
                message: format!(
                    "rejected: {} is not a member; {} owns every cart of this single-node deployment",
                    request.new_host, self.advertise
                ),
            }))
        }
    }

    async fn closing(
        &self,
        request: Request<ClosingNotice>,
    ) -> Result<Response<OwnerChangeAck>, Status> {
        let peer_check = self.speaks_for(&request, "host", &request.get_ref().host);
        let notice = request.into_inner();
        check_host("host", &notice.host)?;
        peer_check?;
        tracing::info!(host = %notice.host, "peer announced it is closing");
        if let Some(router) = &self.router {
            router.member_closed(&notice.host);
        }
        Ok(Response::new(OwnerChangeAck {
            accepted: true,
            message: format!("acknowledged closing of {}", notice.host),
        }))
    }
}
