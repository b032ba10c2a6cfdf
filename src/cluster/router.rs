//! The directory actor: which member hosts each cart, and the way there.
//!
//! A member hosts a cart only after the cart's *partition holder* (the
//! member rendezvous hashing picks from the committed view) accepted its
//! claim (`ConfirmOwner`). The holder's partition is an
//! [`OwnershipDirectory`]; after every view change it is rebuilt from each
//! member's `GetCartIds` before it grants anything. Calls for a cart owned
//! elsewhere are forwarded to the owner (`granary.grains.v1.Grains/Call`);
//! a stale route (the owner moved) is dropped and resolved again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use granary_cluster_core::{
    CLAIM_DEADLINE_MS, ClaimOutcome, ClusterConfig, NodeId, OwnershipDirectory, partition_holder,
};
use tonic::transport::Channel;

use super::dial;
use super::membership::ClusterHandle;
use crate::proto::grains::grains_client::GrainsClient;
use crate::proto::messages::control_plane_client::ControlPlaneClient;
use crate::proto::messages::{Empty, OwnerChangeRequest};

/// Deadline of a claim or a forwarded call.
const RPC_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of a claim. A grant that arrives later is discarded (the call
/// answers 503 and is retried), so every grant a claimant acts on reached
/// it within this of being made; the hold after a view change covers it
/// (`Timing::directory_hold`).
const CLAIM_DEADLINE: Duration = Duration::from_millis(CLAIM_DEADLINE_MS);
/// How long a holder keeps a claim waiting for its partition to be ready
/// (half the claim deadline: the answer still arrives in time).
const CLAIM_HOLD: Duration = Duration::from_millis(CLAIM_DEADLINE_MS / 2);

/// Where a call for a grain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This member owns it.
    Local,
    /// Another member owns it.
    Remote { address: String },
}

/// Why a grain cannot be routed now (the caller answers 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unroutable(pub String);

pub struct CartRouter {
    cluster: ClusterHandle,
    started: Instant,
    directory: Mutex<OwnershipDirectory>,
    /// Grains whose claims this member holds.
    owned: Mutex<HashSet<String>>,
    /// Bumped, under the `owned` lock, every time this member fences: a
    /// grant that was in flight across a fence is discarded, since the
    /// claims it made before fencing may be re-granted elsewhere once the
    /// majority removes it.
    fence_epoch: AtomicU64,
    /// Known owners of grains hosted elsewhere: grain → address.
    routes: Mutex<HashMap<String, String>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Woken when carts may be placeable where they were not: a new view,
    /// this member's partition rebuilt or its hold run out, a member gone
    /// by `Closing`. Calls waiting to place a cart wait for this rather
    /// than sleep out a backoff.
    placement: tokio::sync::Notify,
    /// The runtime channels live on (the gRPC runtime), whichever thread
    /// asks for one.
    io: tokio::runtime::Handle,
}

impl CartRouter {
    /// Starts the router; the task that follows committed views is spawned
    /// on the current runtime, channels are made on `io`.
    pub fn start(cluster: ClusterHandle, io: tokio::runtime::Handle) -> Arc<CartRouter> {
        let me = cluster.me().id.clone();
        let view = cluster.committed();
        let router = Arc::new(CartRouter {
            directory: Mutex::new(OwnershipDirectory::new(me, &view)),
            cluster,
            started: Instant::now(),
            owned: Mutex::new(HashSet::new()),
            fence_epoch: AtomicU64::new(0),
            routes: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            placement: tokio::sync::Notify::new(),
            io,
        });
        let follower = router.clone();
        tokio::spawn(async move { follower.follow_views().await });
        router
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn me(&self) -> &NodeId {
        &self.cluster.me().id
    }

    /// Where calls for `grain` go, claiming it if nobody owns it.
    pub async fn route(&self, grain: &str) -> Result<Route, Unroutable> {
        if lock(&self.owned).contains(grain) {
            return Ok(Route::Local);
        }
        if let Some(address) = lock(&self.routes).get(grain) {
            return Ok(Route::Remote {
                address: address.clone(),
            });
        }
        if !self.cluster.has_view_lease() {
            return Err(Unroutable(
                "this node's view of the cluster is not confirmed current yet".into(),
            ));
        }
        let view = self.cluster.committed();
        let holder = partition_holder(grain, view.ids())
            .cloned()
            .ok_or_else(|| Unroutable("this node has no committed cluster view yet".into()))?;
        if &holder == self.me() {
            let outcome = lock(&self.directory).claim(grain, &holder, self.now());
            return self.settle(grain, &view, outcome);
        }
        let address = view
            .members
            .get(&holder)
            .map(|m| m.address.clone())
            .ok_or_else(|| Unroutable("the partition holder has no address".into()))?;
        let epoch = self.fence_epoch.load(Ordering::Acquire);
        let ack = self.confirm_owner(&address, grain).await?;
        if ack.accepted {
            let mut owned = lock(&self.owned);
            if self.fence_epoch.load(Ordering::Acquire) != epoch {
                return Err(Unroutable(
                    "this node lost sight of the majority while placing the cart; retry".into(),
                ));
            }
            owned.insert(grain.to_owned());
            return Ok(Route::Local);
        }
        match parse_ack(&ack.message) {
            Some(("owner", owner)) => {
                lock(&self.routes).insert(grain.to_owned(), owner.to_owned());
                Ok(Route::Remote {
                    address: owner.to_owned(),
                })
            }
            _ => Err(Unroutable(format!(
                "the directory cannot place this cart yet ({})",
                ack.message
            ))),
        }
    }

    fn settle(
        &self,
        grain: &str,
        view: &ClusterConfig,
        outcome: ClaimOutcome,
    ) -> Result<Route, Unroutable> {
        match outcome {
            ClaimOutcome::Accepted => {
                lock(&self.owned).insert(grain.to_owned());
                Ok(Route::Local)
            }
            ClaimOutcome::Owned { owner } => {
                let address = view
                    .members
                    .get(&owner)
                    .map(|m| m.address.clone())
                    .ok_or_else(|| Unroutable("the owner has no address".into()))?;
                lock(&self.routes).insert(grain.to_owned(), address.clone());
                Ok(Route::Remote { address })
            }
            ClaimOutcome::NotHolder { .. } | ClaimOutcome::Rebuilding => Err(Unroutable(
                "the directory is being rebuilt after a membership change".into(),
            )),
        }
    }

    /// How long a call may wait for its cart to be placed before it is
    /// answered 503: the failover window, in which a crashed member is
    /// declared dead and the directory's hold after its removal runs out,
    /// plus a margin for the rebuild.
    pub fn placement_wait(&self) -> Duration {
        let timing = self.cluster.timing();
        let members = self.cluster.committed().members.len();
        Duration::from_millis(timing.dead_after + timing.directory_hold(members.max(2)) + 500)
    }

    /// Waits until placement may have changed (see `placement`), or
    /// `limit` passes, whichever is first.
    pub async fn placement_changed(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.placement.notified()).await;
    }

    fn placement_may_have_changed(&self) {
        self.placement.notify_waiters();
    }

    /// Forgets a route that turned out stale.
    pub fn forget(&self, grain: &str) {
        lock(&self.routes).remove(grain);
    }

    /// Whether this member holds the claim for `grain`.
    pub fn owns(&self, grain: &str) -> bool {
        lock(&self.owned).contains(grain)
    }

    /// Whether this member sees a majority and may serve grains.
    pub fn is_serving(&self) -> bool {
        self.cluster.is_serving()
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
                ControlPlaneClient::new(channel)
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

    /// Grains whose claims this member holds (for `GetCartIds`).
    pub fn owned_ids(&self, limit: usize) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.owned).iter().take(limit).cloned().collect();
        ids.sort();
        ids
    }

    /// A claim sent to this member as partition holder (`ConfirmOwner`).
    /// Answers "owner=ADDR" (granted, or owned elsewhere), "holder=ADDR"
    /// or "rebuilding". While the partition is rebuilding the claim waits
    /// for it, up to `CLAIM_HOLD` (well within the claimant's deadline, so
    /// a grant made then still reaches it in time): the claimant is
    /// answered as soon as the partition is ready, not at its next retry.
    pub async fn claim_here(&self, grain: &str, claimant_address: &str) -> (bool, String) {
        let until = tokio::time::Instant::now() + CLAIM_HOLD;
        loop {
            // Registered before the attempt, so a wake-up between the
            // attempt and the wait is not lost.
            let changed = self.placement.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let answer = self.try_claim_here(grain, claimant_address);
            if answer.1 != "rebuilding" || tokio::time::Instant::now() >= until {
                return answer;
            }
            let _ = tokio::time::timeout_at(until, changed).await;
        }
    }

    fn try_claim_here(&self, grain: &str, claimant_address: &str) -> (bool, String) {
        if !self.cluster.has_view_lease() {
            return (false, "rebuilding".into());
        }
        let view = self.cluster.committed();
        let Some(claimant) = view
            .members
            .values()
            .find(|m| m.address == claimant_address)
        else {
            let owner = lock(&self.directory)
                .owner(grain)
                .and_then(|id| view.members.get(id))
                .map(|m| m.address.clone());
            return match owner {
                Some(owner) => (
                    false,
                    format!("owner={owner}; rejected: {claimant_address} is not a member"),
                ),
                None => (
                    false,
                    format!("rejected: {claimant_address} is not a member"),
                ),
            };
        };
        let outcome = lock(&self.directory).claim(grain, &claimant.id, self.now());
        let address_of = |id: &NodeId| {
            view.members
                .get(id)
                .map(|m| m.address.clone())
                .unwrap_or_default()
        };
        match outcome {
            ClaimOutcome::Accepted => (true, format!("owner={claimant_address}")),
            ClaimOutcome::Owned { owner } => (false, format!("owner={}", address_of(&owner))),
            ClaimOutcome::NotHolder { holder } => {
                (false, format!("holder={}", address_of(&holder)))
            }
            ClaimOutcome::Rebuilding => (false, "rebuilding".into()),
        }
    }

    /// A member left gracefully: its grains may be claimed at once.
    pub fn member_closed(&self, address: &str) {
        let view = self.cluster.committed();
        if let Some(member) = view.members.values().find(|m| m.address == address) {
            lock(&self.directory).drop_member(&member.id);
        }
        lock(&self.routes).retain(|_, owner| owner != address);
        self.placement_may_have_changed();
    }

    /// This member lost its majority: it gives up every claim and route.
    pub fn fenced(&self) {
        let mut owned = lock(&self.owned);
        self.fence_epoch.fetch_add(1, Ordering::AcqRel);
        owned.clear();
        drop(owned);
        lock(&self.routes).clear();
    }

    /// A channel to the member at `address`, pinned to its key.
    pub fn channel(&self, address: &str) -> Result<Channel, Unroutable> {
        let pin = self
            .cluster
            .committed()
            .members
            .values()
            .find(|m| m.address == address)
            .and_then(|m| dial::pin(&m.id.0));
        let dialer = self.cluster.dialer();
        if dialer.is_tls() && pin.is_none() {
            return Err(Unroutable(format!("{address} is not a member's address")));
        }
        let key = format!(
            "{address}#{}",
            pin.map(|p| p.to_string()).unwrap_or_default()
        );
        if let Some(channel) = lock(&self.channels).get(&key) {
            return Ok(channel.clone());
        }
        let _io = self.io.enter();
        let channel = dialer
            .connect_lazy(address, pin, Duration::from_secs(1), RPC_DEADLINE)
            .map_err(Unroutable)?;
        lock(&self.channels).insert(key, channel.clone());
        Ok(channel)
    }

    pub fn grains_client(&self, address: &str) -> Result<GrainsClient<Channel>, Unroutable> {
        Ok(GrainsClient::new(self.channel(address)?))
    }

    async fn confirm_owner(
        &self,
        holder: &str,
        grain: &str,
    ) -> Result<crate::proto::messages::OwnerChangeAck, Unroutable> {
        let mut client = ControlPlaneClient::new(self.channel(holder)?);
        let mut request = tonic::Request::new(OwnerChangeRequest {
            cart_id: grain.to_owned(),
            new_host: self.cluster.me().address.clone(),
        });
        request.set_timeout(CLAIM_DEADLINE);
        client
            .confirm_owner(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                Unroutable(format!(
                    "the partition holder {holder} did not answer: {}",
                    status.message()
                ))
            })
    }

    /// Follows committed views: re-partitions the directory and rebuilds
    /// this member's partition from every member's grain list.
    async fn follow_views(self: Arc<Self>) {
        let mut views = self.cluster.watch_committed();
        loop {
            let view = views.borrow_and_update().clone();
            // Every view change holds grants until grants made under the
            // old view have reached their claimants; the partition is
            // rebuilt from the members' lists after that.
            let hold = self.cluster.timing().directory_hold(view.members.len());
            lock(&self.directory).view_changed(&view, self.now(), hold);
            tracing::debug!(stamp = ?view.stamp(), members = view.members.len(), hold, "directory: new view");
            // Routes to members that left are stale.
            let addresses: HashSet<String> =
                view.members.values().map(|m| m.address.clone()).collect();
            lock(&self.routes).retain(|_, owner| addresses.contains(owner));
            for member in view.members.values().filter(|m| &m.id != self.me()) {
                let router = self.clone();
                let member = member.clone();
                let stamp = view.stamp();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    // A newer view may have come meanwhile; it rebuilds itself.
                    if router.cluster.committed().stamp() == stamp {
                        router.rebuild_from(member.id, member.address).await;
                    } else {
                        tracing::debug!(?stamp, "directory: view superseded before its rebuild");
                    }
                });
            }
            // This member's own grains count too.
            let mine = lock(&self.owned).iter().cloned().collect::<Vec<_>>();
            let me = self.me().clone();
            lock(&self.directory).rebuild_from(&me, mine);
            self.placement_may_have_changed();
            // The hold running out may make this partition ready (alone,
            // or with every list already in).
            let router = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(hold + 1)).await;
                router.placement_may_have_changed();
            });
            if views.changed().await.is_err() {
                return;
            }
        }
    }

    async fn rebuild_from(&self, member: NodeId, address: String) {
        for _ in 0..50 {
            let channel = match self.channel(&address) {
                Ok(channel) => channel,
                Err(err) => {
                    tracing::debug!(%address, error = %err, "directory: no channel for a rebuild");
                    return;
                }
            };
            let mut request = tonic::Request::new(Empty {});
            request.set_timeout(RPC_DEADLINE);
            match ControlPlaneClient::new(channel).get_cart_ids(request).await {
                Ok(reply) => {
                    let ready = {
                        let mut directory = lock(&self.directory);
                        directory.rebuild_from(&member, reply.into_inner().cart_ids);
                        directory.is_ready()
                    };
                    tracing::debug!(%address, ready, "directory: grain list in");
                    if ready {
                        self.placement_may_have_changed();
                    }
                    return;
                }
                Err(status) => {
                    tracing::debug!(%address, %status, "GetCartIds failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// `key=value` at the start of an acknowledgement's message (anything after
/// a `;` is an explanation for people).
fn parse_ack(message: &str) -> Option<(&str, &str)> {
    let head = message.split(';').next()?.trim();
    let (key, value) = head.split_once('=')?;
    (!value.is_empty()).then_some((key, value))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
