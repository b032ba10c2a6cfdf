//! The live dashboard: `GET /dashboard` (one HTML page, its script and
//! style inline, nothing to build) polls `GET /dashboard/state` every
//! second.
//!
//! The state is the cluster as the member serving the page sees it: the
//! members of its committed view and whether it hears them, and for each
//! member what that member says of itself (`Cluster/Status` over the
//! members' pinned channels, asked of all at once, a second at most):
//! its role, whether it is fenced, the grains live on it, and its HTTP
//! request count and latency buckets. The page takes differences between
//! two polls for each member's request rate and p99 over the last second,
//! so the node keeps no time series. Recent cluster events (members
//! joining or leaving the view, this member fencing itself) come from
//! this member's metrics.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::{ClusterHandle, GrainRouter};
use crate::grains::Grains;
use crate::metrics::{Event, LATENCY_BUCKETS, Metrics};
use crate::proto::cluster as pb;

/// How long the page waits for a member's own status.
const STATUS_LIMIT: Duration = Duration::from_secs(1);

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

/// What the dashboard reads; one per node.
pub struct Dashboard {
    cluster: ClusterHandle,
    router: Arc<GrainRouter>,
    grains: Grains,
    metrics: Arc<Metrics>,
}

/// One member as the page shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberState {
    pub id: String,
    pub address: String,
    /// This is the member serving the page.
    pub me: bool,
    /// The member serving the page hears it (within `dead_after`).
    pub live: bool,
    /// It answered for itself; the fields below are `None` when not.
    pub reachable: bool,
    pub error: Option<String>,
    pub role: Option<String>,
    /// It sees no majority and serves no grain.
    pub fenced: Option<bool>,
    pub grains: Option<u64>,
    pub grains_by_kind: Option<std::collections::BTreeMap<String, u64>>,
    pub http_requests: Option<u64>,
    pub http_latency_buckets: Option<Vec<u64>>,
}

/// What `GET /dashboard/state` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct State {
    pub node_id: String,
    /// Milliseconds since the Unix epoch, when this was put together.
    pub at_ms: u64,
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    pub config_version: u64,
    pub members: Vec<MemberState>,
    /// The upper bounds of `http_latency_buckets`, in milliseconds (the
    /// buckets have one more slot, for slower requests).
    pub latency_bounds_ms: Vec<f64>,
    pub events: Vec<Event>,
}

impl Dashboard {
    pub fn new(
        cluster: ClusterHandle,
        router: Arc<GrainRouter>,
        grains: Grains,
        metrics: Arc<Metrics>,
    ) -> Dashboard {
        Dashboard {
            cluster,
            router,
            grains,
            metrics,
        }
    }

    /// The cluster now; `None` if the membership task has stopped.
    pub async fn state(&self) -> Option<State> {
        let status = self.cluster.status().await?;
        let me = status.node_id.clone();
        let view = status.peers.clone();
        let (role, leader, term, config_version) = (
            status.role.clone(),
            status.leader.clone(),
            status.term,
            status.committed_version,
        );
        let own = crate::cluster::status_reply(status, &self.grains, &self.metrics);
        let asked = view.iter().map(|peer| {
            let own = (peer.id == me).then(|| own.clone());
            async move {
                match own {
                    Some(own) => Ok(own),
                    None => self.router.status_at(&peer.address, STATUS_LIMIT).await,
                }
            }
        });
        let answers = futures_util::future::join_all(asked).await;
        let members = view
            .iter()
            .zip(answers)
            .map(|(peer, answer)| member(peer, peer.id == me, answer))
            .collect();
        Some(State {
            node_id: me,
            at_ms: crate::reminders::now_unix_ms(),
            role,
            leader,
            term,
            config_version,
            members,
            latency_bounds_ms: LATENCY_BUCKETS.iter().map(|s| s * 1000.0).collect(),
            events: self.metrics.events(),
        })
    }
}

fn member(
    peer: &crate::cluster::PeerView,
    me: bool,
    answer: Result<pb::StatusReply, String>,
) -> MemberState {
    let mut state = MemberState {
        id: peer.id.clone(),
        address: peer.address.clone(),
        me,
        live: peer.live,
        reachable: false,
        error: None,
        role: None,
        fenced: None,
        grains: None,
        grains_by_kind: None,
        http_requests: None,
        http_latency_buckets: None,
    };
    match answer {
        Ok(reply) => {
            state.reachable = true;
            state.role = Some(reply.role);
            state.fenced = Some(!reply.quorum);
            state.grains = Some(reply.live_grains);
            state.grains_by_kind = Some(reply.live_by_kind.into_iter().collect());
            state.http_requests = Some(reply.http_requests);
            state.http_latency_buckets = Some(reply.http_latency_buckets);
        }
        Err(why) => state.error = Some(why),
    }
    state
}
