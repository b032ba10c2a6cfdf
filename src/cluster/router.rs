//! The router: carries out the placement core's decisions over gRPC.
//!
//! Every decision — where a cart lives, whether a claim is granted, when a
//! partition is whole again after a view change — is made by one
//! [`Placement`] state machine (`granary-cluster-core`), the same code the
//! simulation drives. This file only feeds it (views, the view lease, RPC
//! answers, the time) under one lock, and executes what it asks: claims,
//! pages of grain lists, releases, waking the calls that wait for a
//! placement. It is also the grain runtime's [`Ownership`]: an activation
//! starts only for a cart placed here, and its stop releases the claim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use granary_cluster_core::{
    CLAIM_DEADLINE_MS, ClaimAnswer, Command, GRAIN_PAGE, GrainPage, Locate, Member, NodeId,
    Placement,
};
use granary_grain::{Home, Ownership, Refusal, Tenure};
use tonic::transport::Channel;

use super::clock;
use super::dial;
use super::link::{Link, SpareUnit, Spares};
use super::membership::ClusterHandle;
use crate::metrics::Metrics;
use crate::proto::cluster as pb;
use crate::proto::cluster::cluster_client::ClusterClient;
use crate::proto::grains::grains_client::GrainsClient;

/// Deadline of a forwarded call's channel and of a page of a grain list.
const RPC_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of a claim. A grant that arrives later is discarded (the call
/// answers 503 and is retried), so every grant a claimant acts on reached
/// it within this of being made; the hold after a view change covers it
/// (`Timing::directory_hold`).
const CLAIM_DEADLINE: Duration = Duration::from_millis(CLAIM_DEADLINE_MS);
/// How long a holder keeps a claim waiting for its partition to be ready
/// (half the claim deadline: the answer still arrives in time).
const CLAIM_HOLD: Duration = Duration::from_millis(CLAIM_DEADLINE_MS / 2);
/// How often the placement's timers run (holds, fetch backoff, releases).
const TICK: Duration = Duration::from_millis(20);

/// The key a grain is placed by: its kind and its id. (Carts keep the
/// shape `cart/<uuid>`; the seed's `ConfirmOwner` and `GetCartIds` speak of
/// cart ids only.)
pub fn placement_key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

/// A member's id as people read it: its first 12 hex digits.
fn short(id: &NodeId) -> &str {
    id.0.get(..12).unwrap_or(&id.0)
}

/// Where a call for a grain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This member owns it.
    Local,
    /// Another member owns it or, `to_holder`, nobody is known to and
    /// the grain (placed by hash) goes to its partition holder, which
    /// places it on itself.
    Remote { address: String, to_holder: bool },
}

/// Why a grain cannot be routed now (the caller answers 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unroutable(pub String);

pub struct GrainRouter {
    cluster: ClusterHandle,
    placement: Mutex<Placement>,
    /// Woken when carts may be placeable where they were not (the core's
    /// `Command::Placeable`). Calls waiting to place a cart wait for this
    /// rather than sleep out a backoff.
    placeable: tokio::sync::Notify,
    channels: Mutex<HashMap<String, Channel>>,
    /// Grain-call links on the gRPC runtime, for threads past the budget
    /// of links of their own.
    links: Mutex<HashMap<String, Link>>,
    /// The runtime channels and RPCs live on (the gRPC runtime), whichever
    /// thread asks.
    io: tokio::runtime::Handle,
    /// Names this router among the routers of the process (in-process
    /// tests run several nodes) in the per-thread channel caches.
    id: u64,
    /// What thread-owned links to each peer may hold.
    budgets: PeerBudgets,
    /// Directory rebuilds and members removed are observed here.
    metrics: Arc<Metrics>,
}

/// Grain-call links to its peers, over all of them, that a member may own
/// on calling threads (beyond a shared link and a gRPC channel on the gRPC
/// runtime per peer): with 63 peers and this budget a member receives at
/// most 96 + 2 × 63 member connections, under the 256 it accepts.
const THREAD_CHANNEL_BUDGET: usize = 96;

/// Thread-owned channels to one peer, at most (more threads share the
/// gRPC runtime's channel).
const THREAD_CHANNELS_PER_PEER: usize = 8;

/// What the thread-owned links to each peer (named by its channel key) may
/// hold at once, sized by the cluster: bounded so that what members open
/// to a member stays well under its connection cap
/// (`security::tls::Limits`) whatever the core count and cluster size.
struct PeerBudgets(Mutex<Budgets>);

struct Budgets {
    /// The committed view's size, which every limit follows.
    members: usize,
    /// The thread-owned links themselves (each holds a place while it
    /// lives): `thread_channels_per_peer`.
    places: HashMap<String, Arc<Spares>>,
    /// The connections beyond their first that those links may open
    /// together: `spare_lines_per_peer`.
    spares: HashMap<String, Arc<Spares>>,
}

impl PeerBudgets {
    fn new(members: usize) -> PeerBudgets {
        PeerBudgets(Mutex::new(Budgets {
            members,
            places: HashMap::new(),
            spares: HashMap::new(),
        }))
    }

    /// A place for one more thread-owned link to the peer named `key`, if
    /// its budget has one.
    fn place(&self, key: &str) -> Option<SpareUnit> {
        let places = {
            let mut budgets = lock(&self.0);
            let limit = thread_channels_per_peer(budgets.members);
            Self::budget(&mut budgets.places, key, limit)
        };
        places.take()
    }

    /// The spare connections of the thread-owned links to `key`.
    fn spares(&self, key: &str) -> Arc<Spares> {
        let mut budgets = lock(&self.0);
        let limit = spare_lines_per_peer(budgets.members);
        Self::budget(&mut budgets.spares, key, limit)
    }

    /// A calling thread's link to the peer named `key`: its own (made by
    /// `owned` with a place in the peer's budget and the peer's spare
    /// connections; kept for the thread) while the budget has a place,
    /// else the one link every thread beyond it shares (`shared`; not kept,
    /// so the thread asks again and may take a place that came free).
    fn thread_link(
        &self,
        key: &str,
        owned: impl FnOnce(SpareUnit, Arc<Spares>) -> Result<Link, Unroutable>,
        shared: impl FnOnce() -> Result<Link, Unroutable>,
    ) -> Result<(Link, bool), Unroutable> {
        match self.place(key) {
            Some(place) => Ok((owned(place, self.spares(key))?, true)),
            None => Ok((shared()?, false)),
        }
    }

    /// The cluster now has `members`: every peer's budgets follow, those
    /// made later too (a larger cluster leaves each fewer; what is held
    /// stays until it goes).
    fn resize(&self, members: usize) {
        let mut budgets = lock(&self.0);
        budgets.members = members;
        for places in budgets.places.values() {
            places.set_limit(thread_channels_per_peer(members));
        }
        for spares in budgets.spares.values() {
            spares.set_limit(spare_lines_per_peer(members));
        }
    }

    fn budget(budgets: &mut HashMap<String, Arc<Spares>>, key: &str, limit: usize) -> Arc<Spares> {
        budgets
            .entry(key.to_owned())
            .or_insert_with(|| Spares::new(limit))
            .clone()
    }
}

/// How many thread-owned channels a member of a cluster of `members` may
/// open to each peer.
fn thread_channels_per_peer(members: usize) -> usize {
    let peers = members.saturating_sub(1).max(1);
    (THREAD_CHANNEL_BUDGET / peers).clamp(1, THREAD_CHANNELS_PER_PEER)
}

/// What the members of a cluster may open to one member, over all of
/// them: three quarters of its connection cap (`security::tls::Limits`).
const MEMBER_CONNECTIONS: usize = 192;

/// How many connections beyond their first the thread-owned links of a
/// member of a cluster of `members` may open to each peer, together (a
/// link keeps one per callee grain thread while these last): what is left
/// of the peer's share of [`MEMBER_CONNECTIONS`] after the links' first
/// connections, the shared link and the gRPC channel; none in the
/// largest clusters.
fn spare_lines_per_peer(members: usize) -> usize {
    let peers = members.saturating_sub(1).max(1);
    (MEMBER_CONNECTIONS / peers)
        .saturating_sub(thread_channels_per_peer(members) + 2)
        .min(THREAD_CHANNELS_PER_PEER)
}

/// Routers made in this process so far.
static ROUTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Grain-call links whose connection lives on this thread's runtime.
    static THREAD_LINKS: std::cell::RefCell<Option<ThreadLinks>> =
        const { std::cell::RefCell::new(None) };
}

/// Links made on one thread's runtime, usable while it runs.
struct ThreadLinks {
    /// Dropped with the runtime (it is held by a task that never ends), so
    /// a thread that outlives its runtime makes new links.
    runtime: std::sync::Weak<()>,
    links: HashMap<(u64, String), Link>,
}

/// This thread's link named `key` on its current runtime; if it has none,
/// `make`'s (kept for next time if it says so). A thread whose runtime
/// ended makes its links again on the next one. Call within a runtime.
fn thread_cached(
    key: (u64, String),
    make: impl FnOnce() -> Result<(Link, bool), Unroutable>,
) -> Result<Link, Unroutable> {
    THREAD_LINKS.with_borrow_mut(|cache| {
        if cache.as_ref().is_none_or(|c| c.runtime.strong_count() == 0) {
            let runtime = Arc::new(());
            let alive = Arc::downgrade(&runtime);
            tokio::spawn(async move {
                let _runtime = runtime;
                std::future::pending::<()>().await
            });
            *cache = Some(ThreadLinks {
                runtime: alive,
                links: HashMap::new(),
            });
        }
        let links = &mut cache.as_mut().expect("made above").links;
        if let Some(link) = links.get(&key) {
            return Ok(link.clone());
        }
        let (link, keep) = make()?;
        if keep {
            links.insert(key, link.clone());
        }
        Ok(link)
    })
}

impl GrainRouter {
    /// Starts the router; the task that follows committed views and runs
    /// the placement's timers is spawned on the current runtime, RPCs on
    /// `io`.
    pub fn start(
        cluster: ClusterHandle,
        io: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Arc<GrainRouter> {
        let me = cluster.me().id.clone();
        // Grant ids start somewhere new in every run of the process.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 40);
        let placement = Placement::new(
            me,
            cluster.committed(),
            cluster.departed_at_start(),
            cluster.timing(),
            clock::now(),
            seed,
        );
        let members = cluster.with_committed(|c| c.members.len());
        let router = Arc::new(GrainRouter {
            cluster,
            placement: Mutex::new(placement),
            placeable: tokio::sync::Notify::new(),
            channels: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            io,
            id: ROUTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            budgets: PeerBudgets::new(members),
            metrics,
        });
        let follower = router.clone();
        tokio::spawn(async move { follower.follow().await });
        router
    }

    /// Runs `decide` on the placement with the time and the current view
    /// lease, then carries out the commands it queued (outside the lock).
    fn with<R>(self: &Arc<Self>, decide: impl FnOnce(&mut Placement, u64) -> R) -> R {
        let (result, commands) = {
            let mut placement = lock(&self.placement);
            placement.set_lease(self.cluster.view_lease_until());
            let result = decide(&mut placement, clock::now());
            (result, placement.drain_commands())
        };
        for command in commands {
            self.execute(command);
        }
        result
    }

    fn execute(self: &Arc<Self>, command: Command) {
        match command {
            Command::Placeable => self.placeable.notify_waiters(),
            Command::FetchGrains {
                token,
                to,
                view,
                after,
            } => {
                let router = self.clone();
                self.io.spawn(async move {
                    let from = to.id.clone();
                    match router.fetch_grains(&to, view, after).await {
                        Ok(page) => {
                            tracing::debug!(member = %from, grains = page.grains.len(), last = page.next.is_none(), "directory: page of a grain list in");
                            router.with(|p, now| p.grains_page(&from, token, page, now));
                        }
                        Err(why) => {
                            tracing::debug!(member = %from, %why, "directory: grain list not fetched; asking again later");
                            router.with(|p, now| p.grains_failed(&from, token, now));
                        }
                    }
                });
            }
            Command::Release { to, grains } => {
                let router = self.clone();
                self.io.spawn(async move {
                    // A lost release leaves an entry naming this member,
                    // which heals itself: a call forwarded here claims the
                    // grain again (the holder accepts its recorded owner).
                    if let Err(why) = router.release_at(&to, grains).await {
                        tracing::debug!(member = %to.id, %why, "release not delivered");
                    }
                });
            }
        }
    }

    /// Follows committed views and runs the placement's timers. A view
    /// that leaves the directory rebuilding is timed until every partition
    /// is placeable again (to the tick).
    async fn follow(self: Arc<Self>) {
        let mut views = self.cluster.watch_committed();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut members: Vec<NodeId> = views.borrow().members.keys().cloned().collect();
        self.budgets.resize(members.len());
        let mut rebuilding: Option<std::time::Instant> = None;
        loop {
            let ready = tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let view = views.borrow_and_update().clone();
                    tracing::debug!(stamp = ?view.stamp(), members = view.members.len(), "directory: new view");
                    let removed: Vec<&NodeId> = members.iter().filter(|id| !view.is_member(id)).collect();
                    self.metrics.members_removed(removed.len() as u64);
                    for id in removed {
                        self.metrics.event(format!("member {} left the view (version {})", short(id), view.version));
                    }
                    for member in view.members.values().filter(|m| !members.contains(&m.id)) {
                        self.metrics.event(format!("member {} at {} joined the view (version {})", short(&member.id), member.address, view.version));
                    }
                    members = view.members.keys().cloned().collect();
                    // A larger cluster leaves each peer fewer links and
                    // spare connections (those open stay until they go).
                    self.budgets.resize(members.len());
                    self.with(|p, now| {
                        p.view_committed(view, now);
                        p.is_ready(now)
                    })
                }
                _ = tick.tick() => self.with(|p, now| {
                    p.tick(now);
                    p.is_ready(now)
                }),
            };
            match (ready, rebuilding) {
                (false, None) => rebuilding = Some(std::time::Instant::now()),
                (true, Some(began)) => {
                    self.metrics.rebuilt(began.elapsed());
                    rebuilding = None;
                }
                _ => {}
            }
        }
    }

    /// Where calls for `grain` go. If nobody is known to own it: claimed
    /// for this member (`Home::FirstCaller`), or, `Home::Hashed`, its
    /// partition holder when that is another member (which places it on
    /// itself as the call arrives).
    pub async fn route(self: &Arc<Self>, grain: &str, home: Home) -> Result<Route, Unroutable> {
        let located = match self.with(|p, now| match home {
            Home::FirstCaller => p.locate(grain, now),
            Home::Hashed => p.locate_at_holder(grain, now),
        }) {
            Locate::Claim { token, holder } => {
                let answer = self.claim_at(&holder, grain).await;
                self.with(|p, now| p.claim_answered(grain, token, answer, now))
            }
            other => other,
        };
        match located {
            Locate::Local { .. } => Ok(Route::Local),
            Locate::Remote(member) => Ok(Route::Remote {
                address: member.address,
                to_holder: false,
            }),
            Locate::Holder(member) => Ok(Route::Remote {
                address: member.address,
                to_holder: true,
            }),
            Locate::Waiting(why) => Err(Unroutable(why.to_string())),
            Locate::Claim { .. } => Err(Unroutable("a claim is on its way; retry".into())),
        }
    }

    /// How long a call may wait for its cart to be placed before it is
    /// answered 503: the failover window, in which a crashed member is
    /// declared dead and the directory's hold after its removal runs out,
    /// plus a margin for the rebuild.
    pub fn placement_wait(&self) -> Duration {
        let timing = self.cluster.timing();
        let members = self.cluster.with_committed(|c| c.members.len());
        Duration::from_millis(timing.dead_after + timing.directory_hold(members.max(2)) + 500)
    }

    /// Waits until placement may have changed, or `limit` passes,
    /// whichever is first.
    pub async fn placement_changed(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.placeable.notified()).await;
    }

    /// Forgets a route that turned out stale.
    pub fn forget(self: &Arc<Self>, grain: &str) {
        self.with(|p, _| p.forget_route(grain));
    }

    /// Whether a member of the committed view is at `address`.
    pub fn is_member_at(&self, address: &str) -> bool {
        self.cluster
            .with_committed(|view| view.members.values().any(|m| m.address == address))
    }

    /// Resolves once no member of the committed view is at `address` (at
    /// once if none is): the member a call went to has left the cluster.
    pub async fn departed(&self, address: &str) {
        let mut views = self.cluster.watch_committed();
        loop {
            let member = views
                .borrow_and_update()
                .members
                .values()
                .any(|m| m.address == address);
            if !member {
                return;
            }
            if views.changed().await.is_err() {
                // The cluster task stopped: the call's own deadline rules.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether this member holds the claim for `grain`.
    pub fn owns(&self, grain: &str) -> bool {
        lock(&self.placement).owns(grain)
    }

    /// Whether this member sees a majority and may serve grains.
    pub fn is_serving(&self) -> bool {
        self.cluster.is_serving()
    }

    /// How many carts this member holds claims for.
    pub fn owned_count(&self) -> usize {
        lock(&self.placement).owned_count()
    }

    /// This member is leaving: it claims and grants nothing from now on.
    pub fn close(self: &Arc<Self>) {
        self.with(|p, _| p.close());
    }

    /// Tells every other member this one is leaving (`Closing`), so they
    /// claim its carts at once. Bounded: one second per member, in parallel.
    pub async fn announce_closing(&self) {
        let view = self.cluster.committed();
        let me = self.cluster.me().clone();
        let mut calls = Vec::new();
        for member in view.members.values().filter(|m| m.id != me.id) {
            let Ok(channel) = self.channel(&member.address) else {
                continue;
            };
            let host = me.address.clone();
            calls.push(self.io.spawn(async move {
                let mut request =
                    tonic::Request::new(crate::proto::messages::ClosingNotice { host });
                request.set_timeout(Duration::from_secs(1));
                crate::proto::messages::control_plane_client::ControlPlaneClient::new(channel)
                    .closing(request)
                    .await
                    .is_ok()
            }));
        }
        let mut told = 0;
        for call in calls {
            if matches!(call.await, Ok(true)) {
                told += 1;
            }
        }
        tracing::info!(told, "announced closing to the other members");
    }

    /// The ids of the grains of `kind` whose claims this member holds, in
    /// order, at most `limit` (for `GetCartIds`).
    pub fn owned_ids(&self, kind: &str, limit: usize) -> Vec<String> {
        let prefix = placement_key(kind, "");
        lock(&self.placement)
            .owned_from(&prefix, limit)
            .into_iter()
            .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// A page of the grains this member hosts in `requester`'s partition.
    pub fn grains_for(
        &self,
        requester: &NodeId,
        view: (u64, u64),
        after: Option<&str>,
        limit: usize,
    ) -> Result<GrainPage, (u64, u64)> {
        lock(&self.placement).grains_for(requester, view, after, limit)
    }

    /// `from` no longer hosts `grains` (each with the grant it ends).
    pub fn release_received(self: &Arc<Self>, from: &NodeId, grains: &[(String, u64)]) {
        self.with(|p, _| p.release_received(from, grains));
    }

    /// The member (or recent former member) at `address`.
    pub fn member_at(&self, address: &str) -> Option<Member> {
        lock(&self.placement).member_at(address).cloned()
    }

    /// The HTTP address (`HOST:PORT`) of the member at `address`, if it
    /// says one.
    pub fn http_at(&self, address: &str) -> Option<String> {
        lock(&self.placement)
            .member_at(address)
            .filter(|member| !member.http.is_empty())
            .map(|member| member.http.clone())
    }

    /// Who hosts `grain`, as far as this member knows (itself, its own
    /// partition's entry, or a route).
    pub fn known_owner(&self, grain: &str) -> Option<Member> {
        let placement = lock(&self.placement);
        if placement.owns(grain) {
            return Some(self.cluster.me().clone());
        }
        placement
            .directory()
            .owner(grain)
            .and_then(|id| placement.view().members.get(id))
            .cloned()
    }

    /// Whether this member holds the directory partition of `key` (it
    /// delivers the grain's reminders).
    pub fn is_holder(&self, key: &str) -> bool {
        lock(&self.placement).directory().holder(key) == Some(&self.cluster.me().id)
    }

    /// The member of the current view with this id.
    pub fn member_at_id(&self, id: &NodeId) -> Option<Member> {
        lock(&self.placement).view().members.get(id).cloned()
    }

    /// A claim sent to this member as partition holder. While the grain
    /// cannot be granted yet (the partition is rebuilding) the claim waits,
    /// up to `CLAIM_HOLD` (well within the claimant's deadline, so a grant
    /// made then still reaches it in time): the claimant is answered as
    /// soon as the partition is ready, not at its next retry.
    pub async fn claim_here(self: &Arc<Self>, claimant: &NodeId, grain: &str) -> ClaimAnswer {
        let until = tokio::time::Instant::now() + CLAIM_HOLD;
        loop {
            // Registered before the attempt, so a wake-up between the
            // attempt and the wait is not lost.
            let changed = self.placeable.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let answer = self.with(|p, now| p.claim_received(claimant, grain, now));
            let waiting = matches!(
                answer,
                ClaimAnswer::Refused(granary_cluster_core::Unplaced::Rebuilding)
            );
            if !waiting || tokio::time::Instant::now() >= until {
                return answer;
            }
            let _ = tokio::time::timeout_at(until, changed).await;
        }
    }

    /// A member left gracefully: its grains may be claimed at once.
    pub fn member_closed(self: &Arc<Self>, address: &str) {
        self.with(|p, _| {
            if let Some(member) = p.member_at(address).map(|m| m.id.clone()) {
                p.member_closed(&member);
            }
        });
    }

    /// This member lost its majority: it gives up every claim and route.
    pub fn fenced(self: &Arc<Self>) {
        self.metrics
            .event("this member fenced itself: it sees no majority");
        self.with(|p, _| p.fenced());
    }

    /// The status of the member at `address` (`Cluster/Status`), asked
    /// over its pinned channel; an error if it does not answer within
    /// `limit`.
    pub(crate) async fn status_at(
        &self,
        address: &str,
        limit: Duration,
    ) -> Result<pb::StatusReply, String> {
        let mut client = ClusterClient::new(self.channel(address).map_err(|e| e.0)?);
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(limit);
        match tokio::time::timeout(limit, client.status(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(status.message().to_owned()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// A channel to the member at `address`, pinned to its key, on the
    /// gRPC runtime.
    pub fn channel(&self, address: &str) -> Result<Channel, Unroutable> {
        let pin = self.pin(address);
        let key = self.key_pinned(address, pin)?;
        if let Some(channel) = lock(&self.channels).get(&key) {
            return Ok(channel.clone());
        }
        let _io = self.io.enter();
        let channel = self.connect_lazy(address, pin)?;
        lock(&self.channels).insert(key, channel.clone());
        Ok(channel)
    }

    /// The grain-call link to the member at `address` whose connection
    /// runs on the calling thread's runtime (a grain's arbiter, an HTTP
    /// worker), so a call and its answer wake no other thread of this
    /// process: a grain call forwarded from a thread through the gRPC
    /// runtime's connection cost two more thread wake-ups each way, more
    /// than the network hop itself on loopback. One connection per member
    /// per calling thread, up to a budget; threads beyond it share one on
    /// the gRPC runtime.
    pub fn link(&self, address: &str) -> Result<Link, Unroutable> {
        // The key is looked up once: the link is named by the key it is
        // pinned to.
        let pin = self.pin(address);
        let key = self.key_pinned(address, pin)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return self.shared_link(address, pin, key);
        }
        let name = key.clone();
        thread_cached((self.id, key), || {
            self.budgets.thread_link(
                &name,
                |place, spare| {
                    let connect = self.link_connect(address, pin)?;
                    Ok(Link::holding(address, connect, Some(spare), Some(place)))
                },
                || self.shared_link(address, pin, name.clone()),
            )
        })
    }

    /// The link to `address` (pinned to `pin`) on the gRPC runtime, named
    /// `key`.
    fn shared_link(
        &self,
        address: &str,
        pin: Option<crate::security::Fingerprint>,
        key: String,
    ) -> Result<Link, Unroutable> {
        if let Some(link) = lock(&self.links).get(&key) {
            return Ok(link.clone());
        }
        let _io = self.io.enter();
        // One connection: the threads that share it are beyond the budget.
        let single = Some(Spares::new(0));
        let link = Link::with_spare(address, self.link_connect(address, pin)?, single);
        lock(&self.links).insert(key, link.clone());
        Ok(link)
    }

    /// How a link to `address`, whose member holds `pin`, connects.
    fn link_connect(
        &self,
        address: &str,
        pin: Option<crate::security::Fingerprint>,
    ) -> Result<super::link::Connect, Unroutable> {
        self.cluster
            .dialer()
            .link(address, pin, Duration::from_secs(1))
            .map_err(Unroutable)
    }

    /// The name of `address`'s channels and links: the address and the
    /// key `pin` it is pinned to (a member that comes back with a new key
    /// gets new ones).
    fn key_pinned(
        &self,
        address: &str,
        pin: Option<crate::security::Fingerprint>,
    ) -> Result<String, Unroutable> {
        if self.cluster.dialer().is_tls() && pin.is_none() {
            return Err(Unroutable(format!("{address} is not a member's address")));
        }
        Ok(format!(
            "{address}#{}",
            pin.map(|p| p.to_string()).unwrap_or_default()
        ))
    }

    /// A client for `Grains/Call` to the member at `address`, on the gRPC
    /// runtime's channel: for a member that does not speak the link.
    pub fn grains_client(&self, address: &str) -> Result<GrainsClient<Channel>, Unroutable> {
        Ok(GrainsClient::new(self.channel(address)?))
    }

    /// A new channel to `address`, pinned to `pin`, on the current runtime.
    fn connect_lazy(
        &self,
        address: &str,
        pin: Option<crate::security::Fingerprint>,
    ) -> Result<Channel, Unroutable> {
        self.cluster
            .dialer()
            .connect_lazy(address, pin, Duration::from_secs(1), RPC_DEADLINE)
            .map_err(Unroutable)
    }

    /// The key of the member at `address`, if it is one.
    fn pin(&self, address: &str) -> Option<crate::security::Fingerprint> {
        self.cluster.with_committed(|c| {
            c.members
                .values()
                .find(|m| m.address == address)
                .and_then(|m| dial::pin(&m.id.0))
        })
    }

    /// Up to `count` sequential pings to the member at `address` on the
    /// calling thread's grain-call link (the one forwarded calls take),
    /// each one's round trip; stops early after `limit`.
    pub async fn round_trips(
        &self,
        address: &str,
        count: u32,
        limit: Duration,
    ) -> Result<Vec<Duration>, String> {
        let link = self.link(address).map_err(|e| e.0)?;
        let began = std::time::Instant::now();
        let mut times = Vec::with_capacity(count as usize);
        while times.len() < count as usize && began.elapsed() < limit {
            let took = link
                .ping(RPC_DEADLINE)
                .await
                .map_err(|why| format!("{address} did not answer a ping on the link: {why}"))?;
            times.push(took);
        }
        Ok(times)
    }

    fn cluster_client(&self, member: &Member) -> Result<ClusterClient<Channel>, String> {
        self.channel(&member.address)
            .map(ClusterClient::new)
            .map_err(|e| e.0)
    }

    /// Sends a claim for `grain` to `holder`; `None` if it did not answer
    /// within the claim deadline.
    async fn claim_at(&self, holder: &Member, grain: &str) -> Option<ClaimAnswer> {
        let mut client = self.cluster_client(holder).ok()?;
        let mut request = tonic::Request::new(pb::ClaimRequest {
            grain: grain.to_owned(),
            claimant: self.cluster.me().id.0.clone(),
        });
        request.set_timeout(CLAIM_DEADLINE);
        match client.claim(request).await {
            Ok(reply) => super::wire::claim_answer_from_wire(reply.into_inner()),
            Err(status) => {
                tracing::debug!(holder = %holder.address, %status, "claim not answered");
                None
            }
        }
    }

    async fn fetch_grains(
        &self,
        from: &Member,
        view: (u64, u64),
        after: Option<String>,
    ) -> Result<GrainPage, String> {
        let mut client = self.cluster_client(from)?;
        let mut request = tonic::Request::new(pb::GrainPageRequest {
            member: self.cluster.me().id.0.clone(),
            view_term: view.0,
            view_version: view.1,
            after,
            limit: GRAIN_PAGE as u32,
        });
        request.set_timeout(RPC_DEADLINE);
        let page = client
            .list_grains(request)
            .await
            .map_err(|status| status.to_string())?
            .into_inner();
        Ok(GrainPage {
            grains: page
                .grains
                .into_iter()
                .map(|g| {
                    (
                        g.id,
                        super::wire::grant_from_wire(g.grant.unwrap_or_default()),
                    )
                })
                .collect(),
            next: page.next,
        })
    }

    async fn release_at(&self, holder: &Member, grains: Vec<(String, u64)>) -> Result<(), String> {
        let mut client = self.cluster_client(holder)?;
        let mut request = tonic::Request::new(pb::ReleaseRequest {
            member: self.cluster.me().id.0.clone(),
            grains: grains
                .into_iter()
                .map(|(id, grant)| pb::ReleasedGrain { id, grant })
                .collect(),
        });
        request.set_timeout(RPC_DEADLINE);
        client
            .release(request)
            .await
            .map(|_| ())
            .map_err(|status| status.to_string())
    }
}

/// The runtime's side: activations start only for grains placed here, and
/// their stops release the claims.
pub struct Placements(pub Arc<GrainRouter>);

impl Ownership for Placements {
    fn activate(&self, kind: &'static str, id: &str, activation: u64) -> Result<Tenure, Refusal> {
        let key = placement_key(kind, id);
        self.0
            .with(|p, _| p.activate(&key, activation))
            .map(|epoch| Tenure { epoch })
            .map_err(|_| Refusal::NotOwner("the grain is not placed on this member".into()))
    }

    fn deactivated(&self, kind: &'static str, id: &str, activation: u64) {
        let key = placement_key(kind, id);
        self.0.with(|p, _| p.deactivated(&key, activation));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the members of a cluster of any allowed size open to one
    /// member (its peers' thread-owned channels plus one gRPC-runtime
    /// channel each) leaves most of its connection cap to others.
    #[test]
    fn members_connections_stay_under_the_cap() {
        let cap = crate::security::tls::Limits::default().max_connections;
        for members in 1..=granary_cluster_core::MAX_MEMBERS {
            let peers = members.saturating_sub(1);
            let per_peer = thread_channels_per_peer(members);
            assert!(per_peer >= 1, "{members} members");
            // Per peer: its threads' links' first connections, their
            // further ones, its shared link and its gRPC channel.
            let each = per_peer + spare_lines_per_peer(members) + 2;
            assert!(
                peers * each <= cap * 3 / 4,
                "{members} members: {peers} peers x {each} connections",
            );
        }
        assert_eq!(thread_channels_per_peer(3), THREAD_CHANNELS_PER_PEER);
        // The cluster sizes we run keep a connection per callee thread
        // for every link of a two-core member's four calling threads.
        assert!(spare_lines_per_peer(10) >= 4);
        assert_eq!(MEMBER_CONNECTIONS, cap * 3 / 4);
    }

    /// A runtime of its own for one step of a thread-link test.
    fn new_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// How a link that must never reach anyone connects.
    fn never_connects() -> super::super::link::Connect {
        Arc::new(|_| Box::pin(async { Err("never connects".to_owned()) }))
    }

    /// A peer's budgets follow the cluster's size: a cluster grown from 3
    /// to 40 members leaves each peer fewer thread-owned links (the links
    /// held stay; no new one until enough went) and at 64 members no
    /// spare connection; shrinking gives them back.
    #[test]
    fn a_peers_budgets_follow_the_clusters_size() {
        let budgets = PeerBudgets::new(3);
        // Bounded: a budget without a limit fails here instead of looping.
        let held: Vec<_> = std::iter::from_fn(|| budgets.place("peer"))
            .take(64)
            .collect();
        assert_eq!(held.len(), THREAD_CHANNELS_PER_PEER);
        let spares = budgets.spares("peer");
        assert_eq!(spares.left(), spare_lines_per_peer(3));
        assert!(spare_lines_per_peer(3) > 0);

        budgets.resize(40);
        let per_peer = thread_channels_per_peer(40);
        assert!(per_peer < THREAD_CHANNELS_PER_PEER, "{per_peer}");
        let mut held = held;
        assert!(budgets.place("peer").is_none(), "all 8 still held");
        held.truncate(per_peer);
        assert!(budgets.place("peer").is_none(), "at the new limit");
        held.pop();
        let again = budgets.place("peer");
        assert!(again.is_some(), "one went: one may come");
        assert!(budgets.place("peer").is_none());

        budgets.resize(64);
        assert_eq!(spares.left(), 0, "no spare connections at 64 members");
        assert_eq!(
            budgets.spares("another").left(),
            0,
            "a peer first seen then"
        );
        assert_eq!(
            std::iter::from_fn(|| budgets.place("another"))
                .take(64)
                .collect::<Vec<_>>()
                .len(),
            thread_channels_per_peer(64),
            "a peer first seen then"
        );
        budgets.resize(3);
        assert_eq!(spares.left(), spare_lines_per_peer(3));
        drop((held, again));
    }

    /// Calling threads each get a link of their own to a peer while the
    /// peer's budget has a place, made once and kept, holding the place
    /// and drawing on the peer's spare connections; threads beyond the
    /// budget get the shared link, asked for again each time (so a place
    /// that comes free can be taken); a thread's link gives its place back
    /// when the thread ends.
    #[test]
    fn threads_beyond_a_peers_budget_share_one_link() {
        use std::sync::Barrier;
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let budgets = Arc::new(PeerBudgets::new(3));
        // The shared link lives on a runtime of its own (the gRPC one's).
        let io = new_runtime();
        let shared = io.block_on(async { Link::new("127.0.0.1:9", never_connects()) });
        let threads = THREAD_CHANNELS_PER_PEER + 3;
        let (taken, done) = (
            Arc::new(Barrier::new(threads + 1)),
            Arc::new(Barrier::new(threads + 1)),
        );
        let (owned, shared_asked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (budgets, shared, taken, done) =
                    (budgets.clone(), shared.clone(), taken.clone(), done.clone());
                let (owned, shared_asked) = (owned.clone(), shared_asked.clone());
                std::thread::spawn(move || {
                    let tokio = new_runtime();
                    tokio.block_on(async {
                        for _ in 0..2 {
                            // A router id no router of this process has.
                            thread_cached((u64::MAX - 2, "peer".to_owned()), || {
                                budgets.thread_link(
                                    "peer",
                                    |place, spare| {
                                        assert!(Arc::ptr_eq(&spare, &budgets.spares("peer")));
                                        owned.fetch_add(1, SeqCst);
                                        let connect = never_connects();
                                        Ok(Link::holding(
                                            "127.0.0.1:9",
                                            connect,
                                            Some(spare),
                                            Some(place),
                                        ))
                                    },
                                    || {
                                        shared_asked.fetch_add(1, SeqCst);
                                        Ok(shared.clone())
                                    },
                                )
                            })
                            .expect("a link");
                        }
                    });
                    taken.wait();
                    done.wait();
                    drop(tokio);
                })
            })
            .collect();
        taken.wait();
        assert_eq!(
            owned.load(SeqCst),
            THREAD_CHANNELS_PER_PEER,
            "one each, made once"
        );
        assert_eq!(
            shared_asked.load(SeqCst),
            2 * 3,
            "the three beyond, every time"
        );
        assert!(budgets.place("peer").is_none(), "every place held");
        done.wait();
        for handle in handles {
            handle.join().expect("thread");
        }
        let free: Vec<_> = std::iter::from_fn(|| budgets.place("peer"))
            .take(64)
            .collect();
        assert_eq!(free.len(), THREAD_CHANNELS_PER_PEER, "the places came back");
    }

    /// A thread keeps one link per name while its runtime runs; once that
    /// runtime is gone (its connections with it), the next runtime on the
    /// thread makes them again instead of using dead ones. A link `make`
    /// says not to keep is made every time.
    #[test]
    fn a_thread_makes_its_links_again_on_each_new_runtime() {
        let made = std::cell::Cell::new(0);
        let make = |keep: bool| {
            made.set(made.get() + 1);
            Ok((Link::new("127.0.0.1:9", never_connects()), keep))
        };
        // A router id no router of this process has.
        let key = |name: &str| (u64::MAX, name.to_owned());
        for runtime in 1..=2 {
            let tokio = new_runtime();
            tokio.block_on(async {
                for _ in 0..3 {
                    thread_cached(key("kept"), || make(true)).expect("a link");
                }
            });
            assert_eq!(made.get(), 2 * runtime - 1, "one per runtime");
            tokio.block_on(async {
                thread_cached(key("shared"), || make(false)).expect("a link");
            });
            assert_eq!(made.get(), 2 * runtime, "not kept");
        }
    }

    /// A thread-owned link holds its place in its peer's budget while it
    /// lives: once its thread's runtime is gone and the thread makes its
    /// links again, the old links' places are free (before, every runtime
    /// a thread ran took a place for good).
    #[test]
    fn a_thread_link_gives_its_place_back_when_its_runtime_ends() {
        let places = super::super::link::Spares::new(1);
        // A router id no router of this process has.
        let key = (u64::MAX - 1, "budgeted".to_owned());
        for runtime in 1..=3 {
            let tokio = new_runtime();
            tokio.block_on(async {
                let link = thread_cached(key.clone(), || {
                    let place = places.take().unwrap_or_else(|| {
                        panic!("runtime {runtime}: no place left; the last link kept its own")
                    });
                    let link = Link::holding("127.0.0.1:9", never_connects(), None, Some(place));
                    Ok((link, true))
                })
                .expect("a link");
                assert_eq!(places.left(), 0, "the link holds the place");
                drop(link);
                assert_eq!(places.left(), 0, "the thread keeps its link, and its place");
            });
        }
    }
}
