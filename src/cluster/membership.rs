//! The heartbeat/quorum task: one `ClusterNode` driven by a ticker, the
//! messages peers deliver and the changes operators propose.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use granary_cluster_core::{
    Change, ClusterConfig, ClusterNode, Durable, Input, Member, Message, NodeId, Output,
    RejectReason, Role, Timing,
};
use granary_grain::Lease;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use super::clock;
use super::dial::{self, Dialer};
use super::persist;
use super::wire;
use crate::proto::cluster as pb;
use crate::proto::cluster::cluster_client::ClusterClient;
use crate::security::Fingerprint;
use crate::security::tokens::JoinToken;

/// Messages waiting for the task before deliveries are refused.
const QUEUE: usize = 4_096;
/// Deadline of every protocol message sent to a peer.
const SEND_DEADLINE: Duration = Duration::from_millis(500);

enum Command {
    Deliver {
        from: NodeId,
        message: Message,
    },
    Propose {
        change: Change,
        reply: oneshot::Sender<Result<(), RejectReason>>,
    },
    Status {
        reply: oneshot::Sender<ClusterStatus>,
    },
}

/// A snapshot of this member's view, for `granary status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    pub node_id: String,
    pub role: String,
    pub term: u64,
    pub leader: Option<String>,
    pub quorum: bool,
    pub quorum_size: usize,
    pub members: usize,
    pub config_version: u64,
    pub committed_version: u64,
    pub peers: Vec<PeerView>,
    /// The address of each member, by id.
    #[serde(skip)]
    pub addresses: HashMap<String, String>,
    /// Former members (removed by a committed config, not admitted since):
    /// they may ask to come back with their key alone.
    #[serde(skip)]
    pub departed: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerView {
    pub id: String,
    pub address: String,
    /// Its HTTP API (`HOST:PORT`); empty if it does not say.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub http: String,
    pub live: bool,
    pub last_seen_ms_ago: Option<u64>,
}

/// How the rest of the node talks to the membership task. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    commands: mpsc::Sender<Command>,
    serving: Arc<AtomicBool>,
    /// Until when (on [`clock::now`]) this node's view is confirmed current.
    view_lease_until: Arc<AtomicU64>,
    committed: tokio::sync::watch::Receiver<ClusterConfig>,
    /// The newest config this node knows, committed or not.
    newest: tokio::sync::watch::Receiver<ClusterConfig>,
    /// How many times this node has fenced itself.
    fences: tokio::sync::watch::Receiver<u64>,
    me: Member,
    timing: Timing,
    /// The cluster id recorded in this node's event store.
    cluster_id: Arc<str>,
    /// How channels to other nodes are made.
    dialer: Dialer,
    /// Set when this node must stop: it can never be admitted (its store
    /// is not the cluster's), or it cannot persist its cluster state.
    fatal: tokio::sync::watch::Sender<Option<String>>,
    /// How many former members the saved state named when this node
    /// started (see `Placement::new`).
    departed_at_start: usize,
}

impl ClusterHandle {
    /// How channels to other nodes are made.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The cluster id recorded in this node's event store.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Resolves with the reason once this node must stop (it can never be
    /// admitted, or it cannot persist its cluster state).
    pub async fn fatal(&self) -> String {
        let mut fatal = self.fatal.subscribe();
        loop {
            if let Some(reason) = fatal.borrow_and_update().clone() {
                return reason;
            }
            if fatal.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether this node may serve grains now (it sees a majority).
    pub fn serving_flag(&self) -> Arc<AtomicBool> {
        self.serving.clone()
    }

    /// Whether this node may serve grains now.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Whether this node's committed view is confirmed current by the
    /// leader (see `ClusterNode::view_lease_until`): the directory grants
    /// and claims only then.
    pub fn has_view_lease(&self) -> bool {
        clock::now() < self.view_lease_until()
    }

    /// Until when (on [`clock::now`]) this node's committed view is
    /// confirmed current: a deadline, so a node that was paused finds it
    /// has passed before the membership task has run again.
    pub fn view_lease_until(&self) -> u64 {
        self.view_lease_until.load(Ordering::Acquire)
    }

    /// The newest committed config (empty until this node has one).
    pub fn committed(&self) -> ClusterConfig {
        self.committed.borrow().clone()
    }

    /// Reads the committed config in place (no copy: for the per-call
    /// paths).
    pub fn with_committed<T>(&self, read: impl FnOnce(&ClusterConfig) -> T) -> T {
        read(&self.committed.borrow())
    }

    /// Changes of the committed config.
    pub fn watch_committed(&self) -> tokio::sync::watch::Receiver<ClusterConfig> {
        self.committed.clone()
    }

    /// Changes of the newest config this node knows, committed or not (a
    /// leader's proposal, a config that admits this node).
    pub fn watch_newest(&self) -> tokio::sync::watch::Receiver<ClusterConfig> {
        self.newest.clone()
    }

    /// The number of times this node has fenced itself (lost sight of a
    /// majority while serving); changes as it happens, so a brief fence is
    /// never missed.
    pub fn watch_fences(&self) -> tokio::sync::watch::Receiver<u64> {
        self.fences.clone()
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// How many former members (removed, not admitted since) the saved
    /// state named when this node started.
    pub fn departed_at_start(&self) -> usize {
        self.departed_at_start
    }

    /// Hands a peer's message to the task; `false` when the queue is full
    /// (the message is dropped, as the network might have).
    pub fn deliver(&self, from: NodeId, message: Message) -> bool {
        self.commands
            .try_send(Command::Deliver { from, message })
            .is_ok()
    }

    pub async fn propose(&self, change: Change) -> Result<(), RejectReason> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Propose { change, reply })
            .await
            .is_err()
        {
            return Err(RejectReason::NotLeader { leader: None });
        }
        answer
            .await
            .unwrap_or(Err(RejectReason::NotLeader { leader: None }))
    }

    /// Graceful leave: asks the leader (or, being the leader, itself) to
    /// remove this member, and waits, at most `limit`, until a committed
    /// config of the leader's no longer lists it. Returns whether that
    /// happened.
    pub async fn leave(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        // Told first: this member stops campaigning, and if it leads it
        // steps down, so the next leader removes it (a leader never
        // commits its own removal).
        let _ = self.propose(Change::Leave(self.me.id.clone())).await;
        while tokio::time::Instant::now() < deadline {
            let Some(status) = self.status().await else {
                return false;
            };
            let listed = status.peers.iter().any(|p| p.id == self.me.id.0);
            // Left once a committed config drops it: a leader that leaves
            // sees its own commit; a follower asks the leader below. (An
            // uncommitted removal is not a leave: a leader that went on
            // to exit would leave the rest without a majority.)
            if !listed && status.committed_version == status.config_version {
                return true;
            }
            if listed && status.members <= 1 {
                return false; // a cluster of one has nobody to hand over to
            }
            let leader = status
                .leader
                .clone()
                .and_then(|id| status.addresses.get(&id).cloned());
            match (
                status.leader.as_deref() == Some(self.me.id.0.as_str()),
                leader,
            ) {
                (true, _) => {}
                (false, Some(address)) => {
                    let id = self.me.id.0.clone();
                    let pin = status.leader.as_deref().and_then(dial::pin);
                    let asked = ask(&self.dialer, &address, pin, |mut client| async move {
                        client.leave(pb::LeaveRequest { id }).await
                    })
                    .await;
                    // Removed: the leader's view no longer lists this node,
                    // or (with mutual TLS) it no longer answers it at all.
                    if let Err(err) = &asked {
                        tracing::debug!(%address, error = %err, "leave request not taken");
                    }
                    if let Ok(view) = remote_status(&self.dialer, &address, pin).await
                        && view.is_none_or(|view| {
                            view.committed_version == view.config_version
                                && !view.peers.iter().any(|p| p.id == self.me.id.0)
                        })
                    {
                        return true;
                    }
                }
                (false, None) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub async fn status(&self) -> Option<ClusterStatus> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Status { reply }).await.ok()?;
        answer.await.ok()
    }
}

/// What a node brings to the cluster.
pub struct Membership {
    pub me: Member,
    /// Where `cluster.json` lives.
    pub data_dir: PathBuf,
    /// Members to ask for admission while this node is not one.
    pub join: Vec<String>,
    pub timing: Timing,
    /// The cluster id recorded in this node's event store.
    pub cluster_id: String,
    pub dialer: Dialer,
    pub token: Option<JoinToken>,
    /// The grains' lease, extended while a majority is in sight.
    pub lease: Arc<Lease>,
}

/// Loads (or founds) this member's state and returns its handle and the
/// task to spawn on the gRPC runtime. Without saved state, a node with no
/// `join` seeds founds a one-member cluster; with seeds it starts outside
/// any cluster and asks the seeds to admit it.
pub fn start(
    member: Membership,
) -> anyhow::Result<(
    ClusterHandle,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let Membership {
        me,
        data_dir,
        join,
        timing,
        cluster_id,
        dialer,
        token,
        lease,
    } = member;
    timing.validate()?;
    let durable = match persist::load(&data_dir)? {
        Some(durable) => durable,
        None if join.is_empty() => {
            let config = ClusterConfig::founding(me.clone());
            let durable = Durable {
                term: 0,
                voted_for: None,
                committed_members: config.ids().cloned().collect(),
                committed_version: config.version,
                config,
                departed: Default::default(),
            };
            persist::save(&data_dir, &durable)?;
            tracing::info!(node = %me.id, "founded a new cluster");
            durable
        }
        None => Durable::default(),
    };
    let seed = me
        .id
        .0
        .bytes()
        .fold(0x9e37_79b9_u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let node = ClusterNode::new(me.id.clone(), durable, timing, clock::now(), seed);
    let (commands, rx) = mpsc::channel(QUEUE);
    let serving = Arc::new(AtomicBool::new(false));
    let view_lease_until = Arc::new(AtomicU64::new(0));
    let initial = if node.committed_version() == node.config().version {
        node.config().clone()
    } else {
        ClusterConfig::default()
    };
    let (committed, committed_rx) = tokio::sync::watch::channel(initial);
    let (newest, newest_rx) = tokio::sync::watch::channel(node.config().clone());
    let (fences, fences_rx) = tokio::sync::watch::channel(0u64);
    let handle = ClusterHandle {
        commands,
        serving: serving.clone(),
        view_lease_until: view_lease_until.clone(),
        committed: committed_rx,
        newest: newest_rx,
        fences: fences_rx,
        me: me.clone(),
        timing,
        cluster_id: cluster_id.into(),
        dialer: dialer.clone(),
        fatal: tokio::sync::watch::channel(None).0,
        departed_at_start: node.durable().departed.len(),
    };
    let fatal = handle.fatal.clone();
    let task = MembershipTask {
        node,
        data_dir,
        serving,
        view_lease_until,
        lease,
        fatal,
        committed,
        newest,
        fences,
        clients: HashMap::new(),
        dialer: dialer.clone(),
        timing,
    };
    let joiner = handle.clone();
    let run = async move {
        tokio::spawn(join_until_member(joiner, join, token));
        task.run(rx).await;
    };
    Ok((handle, run))
}

struct MembershipTask {
    node: ClusterNode,
    data_dir: PathBuf,
    serving: Arc<AtomicBool>,
    view_lease_until: Arc<AtomicU64>,
    /// The grains' lease: until when this node may serve them.
    lease: Arc<Lease>,
    fatal: tokio::sync::watch::Sender<Option<String>>,
    committed: tokio::sync::watch::Sender<ClusterConfig>,
    newest: tokio::sync::watch::Sender<ClusterConfig>,
    fences: tokio::sync::watch::Sender<u64>,
    clients: HashMap<String, ClusterClient<Channel>>,
    dialer: Dialer,
    timing: Timing,
}

impl MembershipTask {
    fn now(&self) -> u64 {
        clock::now()
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(
            (self.timing.heartbeat_every / 4).max(5),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let outputs = tokio::select! {
                _ = tick.tick() => {
                    let now = self.now();
                    self.node.step(Input::Tick { now })
                }
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    let now = self.now();
                    match command {
                        Command::Deliver { from, message } => self.node.step(Input::Received { from, message, now }),
                        Command::Propose { change, reply } => {
                            let outputs = self.node.step(Input::Propose { change, now });
                            let answer = outputs
                                .iter()
                                .find_map(|o| match o {
                                    Output::Rejected { reason: RejectReason::NoChange, .. } => Some(Ok(())),
                                    Output::Rejected { reason, .. } => Some(Err(reason.clone())),
                                    Output::Proposed { .. } => Some(Ok(())),
                                    _ => None,
                                })
                                .unwrap_or(Ok(()));
                            let _ = reply.send(answer);
                            outputs
                        }
                        Command::Status { reply } => {
                            let _ = reply.send(self.status(now));
                            continue;
                        }
                    }
                }
            };
            if let Err(reason) = self.execute(outputs) {
                // A node that cannot persist its view must not serve: its
                // votes and acknowledgements could be forgotten.
                self.lease.fence();
                self.serving.store(false, Ordering::Release);
                self.view_lease_until.store(0, Ordering::Release);
                self.fences.send_modify(|fences| *fences += 1);
                tracing::error!(%reason, "stopping: cannot persist the cluster state");
                self.fatal.send_replace(Some(reason));
                return;
            }
            if self.newest.borrow().stamp() != self.node.config().stamp() {
                self.newest.send_replace(self.node.config().clone());
            }
            self.publish_leases();
        }
    }

    /// Publishes until when this node may serve grains and place them:
    /// deadlines, checked against the clock where they are used.
    fn publish_leases(&self) {
        // The grains' lease runs on its own clock: read it first, so the
        // deadline converted to it is never later than the node's.
        let lease_now = self.lease.now();
        let now = self.now();
        let serve_until = self.node.serve_until();
        self.lease.extend_to(match serve_until {
            u64::MAX => u64::MAX,
            until => lease_now.saturating_add(until.saturating_sub(now)),
        });
        self.view_lease_until
            .store(self.node.view_lease_until(), Ordering::Release);
    }

    /// Carries out a step's outputs in order; `Err` when the state could
    /// not be persisted (nothing after it went out).
    fn execute(&mut self, outputs: Vec<Output>) -> Result<(), String> {
        for output in outputs {
            match output {
                Output::Persist(durable) => {
                    if let Err(err) = persist::save(&self.data_dir, &durable) {
                        // Nothing that follows may go out: a vote or an ack
                        // must never be sent before it is on disk.
                        return Err(format!(
                            "cannot save {}: {err:#}",
                            persist::path(&self.data_dir).display()
                        ));
                    }
                }
                Output::Send { to, message } => self.send(&to, &message),
                Output::Serving(serving) => {
                    if !serving {
                        // First: a call queued in a grain's mailbox must
                        // find the fence when it is taken.
                        self.lease.fence();
                    }
                    let was_serving = self.serving.swap(serving, Ordering::AcqRel);
                    if was_serving && !serving {
                        self.fences.send_modify(|fences| *fences += 1);
                    }
                    if serving {
                        tracing::info!("a majority is in sight: serving grains");
                    } else {
                        tracing::warn!("no majority in sight: fenced, not serving grains");
                    }
                }
                Output::Committed(config) => {
                    self.committed.send_replace(config.clone());
                    tracing::info!(
                        version = config.version,
                        term = config.term,
                        members = config.members.len(),
                        "cluster config committed"
                    );
                }
                Output::Proposed { change, version } => {
                    tracing::info!(?change, version, "membership change proposed")
                }
                Output::Rejected { change, reason } => {
                    tracing::debug!(?change, %reason, "membership change rejected")
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, to: &NodeId, message: &Message) {
        let address = match (self.node.config().members.get(to), message) {
            (Some(member), _) => member.address.clone(),
            // A joining node is not in our config yet: the config we send
            // it names its address.
            (None, Message::ApplyConfig { config, .. }) => match config.members.get(to) {
                Some(member) => member.address.clone(),
                None => return,
            },
            (None, _) => return,
        };
        // Channels are per member: the key pinned is the member's id.
        let key = format!("{address}#{to}");
        let client = match self.clients.get(&key) {
            Some(client) => client.clone(),
            None => {
                let channel = match self.dialer.connect_lazy(
                    &address,
                    dial::pin(&to.0),
                    SEND_DEADLINE,
                    SEND_DEADLINE,
                ) {
                    Ok(channel) => channel,
                    Err(err) => {
                        tracing::warn!(%address, error = %err, "cannot address a member");
                        return;
                    }
                };
                let client = ClusterClient::new(channel);
                self.clients.insert(key, client.clone());
                client
            }
        };
        let envelope = wire::to_envelope(self.node.id(), message);
        tokio::spawn(async move {
            let mut client = client;
            let mut request = tonic::Request::new(envelope);
            request.set_timeout(SEND_DEADLINE);
            if let Err(status) = client.deliver(request).await {
                tracing::trace!(%address, %status, "cluster message not delivered");
            }
        });
    }

    fn status(&self, now: u64) -> ClusterStatus {
        let live = self.node.live_members(now);
        let config = self.node.config();
        ClusterStatus {
            departed: self
                .node
                .durable()
                .departed
                .iter()
                .map(|id| id.0.clone())
                .collect(),
            node_id: self.node.id().0.clone(),
            role: match self.node.role() {
                Role::Leader => "leader",
                Role::Candidate => "candidate",
                Role::Follower => "follower",
            }
            .to_owned(),
            term: self.node.term(),
            leader: self.node.leader().map(|l| l.0.clone()),
            quorum: self.node.is_serving(),
            quorum_size: config.quorum(),
            members: config.members.len(),
            config_version: config.version,
            committed_version: self.node.committed_version(),
            peers: config
                .members
                .values()
                .map(|m| PeerView {
                    id: m.id.0.clone(),
                    address: m.address.clone(),
                    http: m.http.clone(),
                    live: live.contains(&m.id),
                    last_seen_ms_ago: if &m.id == self.node.id() {
                        Some(0)
                    } else {
                        self.node.heard_at(&m.id).map(|at| now.saturating_sub(at))
                    },
                })
                .collect(),
            addresses: config
                .members
                .values()
                .map(|m| (m.id.0.clone(), m.address.clone()))
                .collect(),
        }
    }
}

/// Whether this member, `listed` so in the config, should ask to be listed
/// as it is now: its HTTP address changed (it restarted with other
/// settings before a dead verdict). A changed member address is left to
/// the join of a node removed meanwhile, which checks that the address
/// reaches it.
fn needs_relisting(listed: &PeerView, me: &Member) -> bool {
    listed.address == me.address && listed.http != me.http
}

/// When a member listed with a stale HTTP address asks again: at once,
/// then after 1 s, the wait doubling up to a minute (a leader from before
/// the field keeps the entry as it was, so asking changes nothing; it
/// costs a request).
struct Relisting {
    due: tokio::time::Instant,
    wait: Duration,
}

impl Relisting {
    const FIRST: Duration = Duration::from_secs(1);
    const MOST: Duration = Duration::from_secs(64);

    fn new() -> Relisting {
        Relisting {
            due: tokio::time::Instant::now(),
            wait: Self::FIRST,
        }
    }

    fn is_due(&self, now: tokio::time::Instant) -> bool {
        now >= self.due
    }

    fn asked(&mut self, now: tokio::time::Instant) {
        self.due = now + self.wait;
        self.wait = (self.wait * 2).min(Self::MOST);
    }
}

/// Keeps this node in the cluster: while it cannot see a majority for
/// longer than `patience` (it is joining, or was removed while away), it
/// asks the seeds and the members it knows (then whichever leader they
/// name) to admit it. Asking a leader that already lists it changes
/// nothing.
async fn join_until_member(handle: ClusterHandle, seeds: Vec<String>, token: Option<JoinToken>) {
    let patience = Duration::from_millis(handle.timing.dead_after * 2);
    let mut unserved_since: Option<tokio::time::Instant> = None;
    let mut leader_hint: Option<String> = None;
    let mut turn = 0usize;
    // Replies that did not take the request, in a row: a node that stays
    // out (say, its --advertise address does not reach it) says why now
    // and then, not at every attempt.
    let mut not_taken = 0u32;
    let mut relisting = Relisting::new();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(status) = handle.status().await else {
            return;
        };
        let listed = status.peers.iter().find(|p| p.id == handle.me.id.0);
        let is_member = listed.is_some();
        let stale = listed.is_some_and(|p| needs_relisting(p, &handle.me));
        if !stale {
            relisting = Relisting::new();
        }
        let outdated = stale && relisting.is_due(tokio::time::Instant::now());
        if status.quorum && is_member && !outdated {
            unserved_since = None;
            continue;
        }
        // A node that was never admitted asks at once; a member that lost
        // its majority waits a while first (it may just be a partition).
        let since = *unserved_since.get_or_insert_with(tokio::time::Instant::now);
        if is_member && !outdated && since.elapsed() < patience {
            continue;
        }
        if outdated {
            relisting.asked(tokio::time::Instant::now());
        }
        let mut targets: Vec<String> = seeds.clone();
        targets.extend(
            status
                .peers
                .iter()
                .filter(|p| p.id != handle.me.id.0)
                .map(|p| p.address.clone()),
        );
        if targets.is_empty() {
            continue;
        }
        let target = leader_hint.take().unwrap_or_else(|| {
            turn += 1;
            targets[turn % targets.len()].clone()
        });
        // A known member's key is pinned; a seed is pinned to the members
        // the join token names (without a token, a first contact).
        let known = status
            .peers
            .iter()
            .find(|p| p.address == target)
            .and_then(|p| dial::pin(&p.id));
        let outcome = match (known, &token) {
            (Some(pin), _) => {
                ask_to_join(
                    &handle.dialer,
                    &target,
                    Some(pin),
                    &handle.me,
                    &handle.cluster_id,
                    None,
                )
                .await
            }
            (None, Some(token)) => ask_seed(&handle, &target, token).await,
            (None, None) => {
                ask_to_join(
                    &handle.dialer,
                    &target,
                    None,
                    &handle.me,
                    &handle.cluster_id,
                    None,
                )
                .await
            }
        };
        match outcome {
            Ok(reply) if reply.refused => {
                tracing::error!(%target, message = %reply.message, "admission refused");
                handle.fatal.send_replace(Some(reply.message));
                return;
            }
            Ok(reply) if reply.accepted && outdated => {
                tracing::debug!(%target, http = %handle.me.http, "asked to be listed with this HTTP address")
            }
            Ok(reply) if reply.accepted => {
                not_taken = 0;
                tracing::info!(%target, "asked to be admitted; waiting for the config")
            }
            Ok(reply) if !reply.leader_address.is_empty() => {
                leader_hint = Some(reply.leader_address)
            }
            Ok(reply) => {
                not_taken += 1;
                if not_taken % 20 == 10 {
                    tracing::warn!(%target, message = %reply.message, "not admitted yet; asking again")
                } else {
                    tracing::debug!(%target, message = %reply.message, "admission not taken yet")
                }
            }
            Err(err) => tracing::debug!(%target, error = %err, "admission request failed"),
        }
    }
}

/// Calls `call` on a fresh client to `address` (whose key must be `pin`),
/// with short deadlines.
async fn ask<T, F, Fut>(
    dialer: &Dialer,
    address: &str,
    pin: Option<Fingerprint>,
    call: F,
) -> Result<T, String>
where
    F: FnOnce(ClusterClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let channel = dialer
        .connect(address, pin, Duration::from_secs(1), Duration::from_secs(2))
        .await?;
    call(ClusterClient::new(channel))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.to_string())
}

async fn remote_status(
    dialer: &Dialer,
    address: &str,
    pin: Option<Fingerprint>,
) -> Result<Option<pb::StatusReply>, String> {
    let channel = dialer
        .connect(address, pin, Duration::from_secs(1), Duration::from_secs(2))
        .await?;
    match ClusterClient::new(channel)
        .status(pb::StatusRequest {})
        .await
    {
        Ok(reply) => Ok(Some(reply.into_inner())),
        // It answers members only, and does not count this node as one.
        Err(status) if status.code() == tonic::Code::PermissionDenied => Ok(None),
        Err(status) => Err(status.to_string()),
    }
}

/// Asks a seed to admit this node with `token`: the seed must hold one of
/// the keys the token names (tried in turn), and gets the token's secret.
async fn ask_seed(
    handle: &ClusterHandle,
    target: &str,
    token: &JoinToken,
) -> Result<pb::JoinReply, String> {
    let mut last = String::from("the token names no member");
    for pin in &token.members {
        match ask_to_join(
            &handle.dialer,
            target,
            Some(*pin),
            &handle.me,
            &handle.cluster_id,
            Some(token),
        )
        .await
        {
            Ok(reply) => return Ok(reply),
            Err(err) => last = err,
        }
    }
    Err(last)
}

async fn ask_to_join(
    dialer: &Dialer,
    target: &str,
    pin: Option<Fingerprint>,
    me: &Member,
    cluster_id: &str,
    token: Option<&JoinToken>,
) -> Result<pb::JoinReply, String> {
    let channel = dialer
        .connect(target, pin, Duration::from_secs(2), Duration::from_secs(2))
        .await?;
    let mut client = ClusterClient::new(channel);
    let reply = client
        .join(pb::JoinRequest {
            member: Some(wire::member_to_wire(me)),
            cluster_id: cluster_id.to_owned(),
            token: token.map(|t| t.secret.clone()).unwrap_or_default(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(reply.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(address: &str, http: &str) -> PeerView {
        PeerView {
            id: "n1".into(),
            address: address.into(),
            http: http.into(),
            live: true,
            last_seen_ms_ago: Some(0),
        }
    }

    #[test]
    fn a_member_asks_to_be_listed_again_only_when_its_http_address_changed() {
        let me = Member {
            id: NodeId::new("n1"),
            address: "10.0.0.1:7070".into(),
            http: "10.0.0.1:8080".into(),
        };
        // Restarted as it was: nothing to change.
        assert!(!needs_relisting(
            &listed("10.0.0.1:7070", "10.0.0.1:8080"),
            &me
        ));
        // Another HTTP address, or one a leader from before the field
        // dropped.
        assert!(needs_relisting(
            &listed("10.0.0.1:7070", "10.0.0.1:9090"),
            &me
        ));
        assert!(needs_relisting(&listed("10.0.0.1:7070", ""), &me));
        // Another member address: left to a join, which checks it.
        assert!(!needs_relisting(
            &listed("10.0.0.9:7070", "10.0.0.1:9090"),
            &me
        ));
    }

    #[test]
    fn asking_again_backs_off_to_a_minute() {
        let mut relisting = Relisting::new();
        let mut now = tokio::time::Instant::now();
        assert!(relisting.is_due(now), "at once");
        let mut waits = Vec::new();
        for _ in 0..9 {
            relisting.asked(now);
            let asked = now;
            while !relisting.is_due(now) {
                now += Duration::from_millis(100);
            }
            waits.push((now - asked).as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }
}
