//! One member's view of the cluster, as a state machine.
//!
//! Inputs are ticks, messages (with the transport-authenticated sender) and
//! proposed membership changes, each with the time; outputs are what the
//! runtime must do. The runtime must carry out `Persist` before it sends
//! any message that follows it in the same batch.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{ClusterConfig, MAX_MEMBERS, NodeId};

/// Up to this many members, every member heartbeats every other one (a
/// mesh: N·(N−1) messages per interval, each with a silence report of N
/// entries) and serves while a majority echoes it. Beyond it, heartbeats go
/// between the leader and each follower only (2·(N−1) messages per
/// interval, of constant size): a follower serves while the leader, itself
/// seeing a majority, echoes it, and the leader alone judges who is dead.
/// Without a leader in sight a follower falls back to the mesh, so an
/// election still sees majorities. See docs/cluster-protocol.md.
pub const MESH_LIMIT: usize = 16;
use crate::message::{Change, Message};
use crate::timing::Timing;

/// What a member must keep across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Durable {
    /// The newest term this node has seen.
    pub term: u64,
    /// Whom it voted for in `term`.
    pub voted_for: Option<NodeId>,
    /// The newest config it accepted (committed or not).
    pub config: ClusterConfig,
    /// The newest config version it knows to be committed.
    pub committed_version: u64,
    /// The members of that committed config.
    pub committed_members: BTreeSet<NodeId>,
    /// Members a committed config removed and no committed config has
    /// admitted since. Their heartbeats are not echoed even if a newer,
    /// uncommitted config names them: one removed while it was cut off may
    /// still hold grains that were re-homed, and must not count this node
    /// towards a majority until its re-admission commits.
    #[serde(default)]
    pub departed: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Tick {
        now: u64,
    },
    Received {
        from: NodeId,
        message: Message,
        now: u64,
    },
    Propose {
        change: Change,
        now: u64,
    },
}

/// Why a proposed change was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// Only the leader commits changes; ask this one (if known).
    NotLeader { leader: Option<NodeId> },
    /// The leader cannot see a majority, so it cannot commit.
    NoQuorum,
    /// A previous change is not committed yet.
    ChangeInProgress,
    /// The change would change nothing (already a member, not a member).
    NoChange,
    /// A join beyond the most members a cluster may have.
    TooManyMembers { limit: usize },
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::NotLeader {
                leader: Some(leader),
            } => {
                write!(f, "not the leader; the leader is {leader}")
            }
            RejectReason::NotLeader { leader: None } => {
                f.write_str("not the leader, and no leader is known")
            }
            RejectReason::NoQuorum => {
                f.write_str("the leader cannot see a majority of the cluster")
            }
            RejectReason::ChangeInProgress => {
                f.write_str("another membership change is being committed; asking again later")
            }
            RejectReason::NoChange => f.write_str("nothing to change"),
            RejectReason::TooManyMembers { limit } => write!(
                f,
                "the cluster has {limit} members, the most it may have; remove one first"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this to stable storage before sending what follows.
    Persist(Durable),
    Send {
        to: NodeId,
        message: Message,
    },
    /// Whether this node may serve grains now (it sees a majority both
    /// ways). Emitted when it changes.
    Serving(bool),
    /// A config became committed: the view grains are placed by.
    Committed(ClusterConfig),
    /// A proposed change was taken and is being replicated.
    Proposed {
        change: Change,
        version: u64,
    },
    Rejected {
        change: Change,
        reason: RejectReason,
    },
}

/// What this node knows about one peer.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// When we last received anything from it (our clock).
    heard_at: Option<u64>,
    /// The newest of our nonces it echoed: it heard us at that time.
    confirmed_at: Option<u64>,
    /// Its newest nonce, echoed back in our next heartbeat to it.
    nonce: Option<u64>,
    /// Its last silence report and when we got it.
    silence: Option<(u64, BTreeMap<NodeId, u64>)>,
    /// When we started expecting it (it joined, or we became leader):
    /// silence counts from here.
    watched_since: Option<u64>,
    /// When it last sent us a heartbeat while following no leader, or
    /// another than ours (beyond the mesh, it gets our heartbeats then).
    pinged_at: Option<u64>,
}

/// One member's state machine. See the crate docs for the rules.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    me: NodeId,
    timing: Timing,
    durable: Durable,
    role: Role,
    leader: Option<NodeId>,
    leader_heard_at: Option<u64>,
    votes: BTreeSet<NodeId>,
    acks: BTreeSet<NodeId>,
    peers: BTreeMap<NodeId, Peer>,
    /// When this node started observing (silence before any message is
    /// counted from here).
    started_at: u64,
    election_deadline: u64,
    next_heartbeat: u64,
    serving: bool,
    /// When `serving` last went false.
    lost_majority_at: u64,
    /// The config stamp and committed version the leader last reported,
    /// and when: the basis of the view lease.
    leader_view: Option<((u64, u64), u64, u64)>,
    /// This member asked to leave: it no longer campaigns.
    leaving: bool,
    /// Beyond `MESH_LIMIT` members: the leader that last confirmed, while
    /// it saw a majority, hearing us, and when we sent what it echoed.
    leader_lease: Option<(NodeId, u64)>,
    rng: u64,
}

impl ClusterNode {
    /// A node with its persisted state, starting at `now`. `seed` varies
    /// the election timeouts between nodes (any value; tests fix it).
    pub fn new(me: NodeId, durable: Durable, timing: Timing, now: u64, seed: u64) -> Self {
        let mut node = ClusterNode {
            me,
            timing,
            durable,
            role: Role::Follower,
            leader: None,
            leader_heard_at: None,
            votes: BTreeSet::new(),
            acks: BTreeSet::new(),
            peers: BTreeMap::new(),
            started_at: now,
            election_deadline: now,
            next_heartbeat: now,
            serving: false,
            lost_majority_at: now,
            leader_view: None,
            leaving: false,
            leader_lease: None,
            rng: seed | 1,
        };
        node.election_deadline = now + node.election_timeout();
        node
    }

    pub fn id(&self) -> &NodeId {
        &self.me
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> u64 {
        self.durable.term
    }

    pub fn leader(&self) -> Option<&NodeId> {
        self.leader.as_ref()
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.durable.config
    }

    pub fn committed_version(&self) -> u64 {
        self.durable.committed_version
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    pub fn is_serving(&self) -> bool {
        self.serving
    }

    /// When we last heard from `peer`, on our clock.
    pub fn heard_at(&self, peer: &NodeId) -> Option<u64> {
        self.peers.get(peer).and_then(|p| p.heard_at)
    }

    /// Whether this node's committed view is, by the leader's word within
    /// `fence_after`, the cluster's current one (or this node is a serving
    /// leader). The ownership directory grants and claims grains only under
    /// this lease: when a leader commits a new view, every lease on the old
    /// one runs out within `fence_after`, and holders of the new view wait
    /// that long before granting (see docs/cluster-protocol.md).
    pub fn has_view_lease(&self, now: u64) -> bool {
        now < self.view_lease_until()
    }

    /// Until when (on this node's clock) it may serve grains on what it
    /// knows now: while a majority of its config has confirmed, within
    /// `fence_after` of our sending, that it hears us. 0 when it may not,
    /// `u64::MAX` for a lone member. Unlike [`ClusterNode::is_serving`],
    /// which changes only when the node steps, this is a deadline the
    /// runtime checks against its clock right before it serves: a node that
    /// was paused sees it has passed.
    pub fn serve_until(&self) -> u64 {
        if !self.serving {
            return 0;
        }
        self.serving_deadline()
    }

    /// The deadline of [`ClusterNode::serve_until`] on what this node has
    /// heard, whatever its serving flag says.
    fn serving_deadline(&self) -> u64 {
        if !self.durable.config.is_member(&self.me) {
            return 0;
        }
        let needed = self.durable.config.quorum() - 1;
        if needed == 0 {
            return u64::MAX;
        }
        let mut confirmed: Vec<u64> = self
            .durable
            .config
            .ids()
            .filter(|id| *id != &self.me)
            .filter_map(|id| self.peers.get(id).and_then(|p| p.confirmed_at))
            .collect();
        let mesh = if confirmed.len() < needed {
            0
        } else {
            confirmed.sort_unstable_by(|a, b| b.cmp(a));
            confirmed[needed - 1].saturating_add(self.timing.fence_after)
        };
        // Beyond the mesh, a follower also serves on its leader's word: the
        // leader stops confirming it once it no longer sees a majority or
        // once it drops it from its config, so this ends within
        // `fence_after` of either (docs/cluster-protocol.md).
        let led = match &self.leader_lease {
            Some((leader, sent))
                if self.hub()
                    && self.role == Role::Follower
                    && self.leader.as_ref() == Some(leader)
                    && self.durable.config.is_member(leader) =>
            {
                sent.saturating_add(self.timing.fence_after)
            }
            _ => 0,
        };
        mesh.max(led)
    }

    /// Whether this cluster is beyond the mesh: heartbeats go between the
    /// leader and each follower only (see [`MESH_LIMIT`]).
    fn hub(&self) -> bool {
        self.durable.config.members.len() > MESH_LIMIT
    }

    /// Until when this node's committed view is, by the leader's word, the
    /// cluster's current one (see [`ClusterNode::has_view_lease`]); never
    /// beyond [`ClusterNode::serve_until`]. 0 without a lease.
    pub fn view_lease_until(&self) -> u64 {
        if !self.serving || self.change_pending() {
            return 0;
        }
        let serving = self.serve_until();
        if self.role == Role::Leader || self.durable.config.members.len() == 1 {
            return serving;
        }
        match self.leader_view {
            Some((stamp, committed, sent))
                if stamp == self.durable.config.stamp()
                    && committed == self.durable.config.version =>
            {
                sent.saturating_add(self.timing.fence_after).min(serving)
            }
            _ => 0,
        }
    }

    /// Members that confirmed hearing us within `fence_after`, us included.
    pub fn live_members(&self, now: u64) -> BTreeSet<NodeId> {
        self.durable
            .config
            .ids()
            .filter(|id| *id == &self.me || self.confirmed_within(id, now, self.timing.fence_after))
            .cloned()
            .collect()
    }

    pub fn step(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Tick { now } => self.on_tick(now, &mut out),
            Input::Received { from, message, now } => self.on_message(from, message, now, &mut out),
            Input::Propose { change, now } => self.on_propose(change, now, &mut out),
        }
        out
    }

    // ---- time ------------------------------------------------------------

    fn on_tick(&mut self, now: u64, out: &mut Vec<Output>) {
        self.update_serving(now, out);
        if self.role == Role::Leader
            && !self.serving
            && now.saturating_sub(self.lost_majority_at) >= self.timing.election_min
        {
            // Check-quorum: a leader that has not seen a majority for an
            // election timeout steps down, so it stops taking proposals it
            // could never commit. (Not at once: a member that just joined
            // echoes only after a heartbeat round trip.)
            self.role = Role::Follower;
            self.leader = None;
            self.leader_heard_at = None;
            self.election_deadline = now + self.election_timeout();
        }
        if self.role == Role::Leader {
            self.detect_dead(now, out);
        } else if now >= self.election_deadline
            && self.durable.config.is_member(&self.me)
            && !self.leaving
        {
            // Only a node that sees a majority both ways campaigns: a node
            // cut off from the cluster must not inflate terms and disrupt
            // the majority when it comes back.
            if self.serving {
                self.start_election(now, out);
            } else {
                self.election_deadline = now + self.election_timeout();
            }
        }
        if now >= self.next_heartbeat {
            self.send_heartbeats(now, out);
            self.next_heartbeat = now + self.timing.heartbeat_every;
        }
    }

    fn send_heartbeats(&mut self, now: u64, out: &mut Vec<Output>) {
        if !self.durable.config.is_member(&self.me) {
            return;
        }
        let hub = self.hub();
        let silence: Vec<(NodeId, u64)> = if hub {
            Vec::new()
        } else {
            self.durable
                .config
                .ids()
                .filter(|id| *id != &self.me)
                .map(|id| (id.clone(), self.silence_of(id, now)))
                .collect()
        };
        let resend_config = self.role == Role::Leader && self.change_pending();
        for to in self.heartbeat_targets(now) {
            if resend_config && !self.acks.contains(&to) {
                // Messages get lost: a pending config goes out again with
                // every heartbeat until its member acknowledges it.
                out.push(Output::Send {
                    to: to.clone(),
                    message: self.apply_config_message(),
                });
            }
            let echo = if !self.durable.departed.contains(&to) {
                self.peers.get(&to).and_then(|p| p.nonce)
            } else {
                None
            };
            out.push(Output::Send {
                to,
                message: Message::Heartbeat {
                    term: self.durable.term,
                    leader: self.leader.clone(),
                    config_term: self.durable.config.term,
                    config_version: self.durable.config.version,
                    committed_version: self.durable.committed_version,
                    nonce: now,
                    echo,
                    silence: silence.clone(),
                    serving: self.serving,
                },
            });
        }
    }

    /// Whom this member heartbeats now: everyone in the mesh, and beyond it
    /// whenever it leads, campaigns or has not heard its leader for three
    /// heartbeats (an election needs majorities in sight); otherwise only
    /// its leader, and the members looking for a leader that heartbeat it
    /// (each gets its echo).
    fn heartbeat_targets(&self, now: u64) -> Vec<NodeId> {
        let leader_recent = self
            .leader_heard_at
            .is_some_and(|at| now.saturating_sub(at) < 3 * self.timing.heartbeat_every);
        if !self.hub() || self.role != Role::Follower || !leader_recent {
            return self.others();
        }
        self.others()
            .into_iter()
            .filter(|id| {
                self.leader.as_ref() == Some(id)
                    || self
                        .peers
                        .get(id)
                        .and_then(|p| p.pinged_at)
                        .is_some_and(|at| now.saturating_sub(at) < self.timing.fence_after)
            })
            .collect()
    }

    fn update_serving(&mut self, now: u64, out: &mut Vec<Output>) {
        let serving = now < self.serving_deadline();
        if serving != self.serving {
            self.serving = serving;
            if !serving {
                self.lost_majority_at = now;
            }
            out.push(Output::Serving(serving));
        }
    }

    /// The leader declares a member dead when a majority of members
    /// (reporting in their heartbeats, the leader included) have not heard
    /// from it for `dead_after`.
    fn detect_dead(&mut self, now: u64, out: &mut Vec<Output>) {
        if !self.serving || self.change_pending() {
            return;
        }
        let quorum = self.durable.config.quorum();
        if self.hub() {
            // Beyond the mesh only the leader hears every member: one it
            // has not heard for `dead_after` cannot serve (it has no lease
            // from it) and is removed.
            let dead = self
                .others()
                .into_iter()
                .find(|suspect| self.silence_of(suspect, now) >= self.timing.dead_after);
            if let Some(dead) = dead {
                self.commit_change(Change::Dead(dead), now, out);
            }
            return;
        }
        let suspects: Vec<NodeId> = self
            .others()
            .into_iter()
            .filter(|suspect| {
                let agreeing = self
                    .durable
                    .config
                    .ids()
                    .filter(|reporter| *reporter != suspect)
                    .filter(|reporter| {
                        self.reported_silence(reporter, suspect, now) >= self.timing.dead_after
                    })
                    .count();
                agreeing >= quorum
            })
            .collect();
        if let Some(dead) = suspects.into_iter().next() {
            self.commit_change(Change::Dead(dead), now, out);
        }
    }

    /// How long `reporter` said it had not heard from `suspect`, in its
    /// latest report. The report's age is not added: the reporter may have
    /// heard the suspect since, and overstating silence is what could
    /// declare a live member dead. A report older than `fence_after` does
    /// not count.
    fn reported_silence(&self, reporter: &NodeId, suspect: &NodeId, now: u64) -> u64 {
        if reporter == &self.me {
            return self.silence_of(suspect, now);
        }
        let Some((received_at, report)) = self.peers.get(reporter).and_then(|p| p.silence.as_ref())
        else {
            return 0;
        };
        if now.saturating_sub(*received_at) >= self.timing.fence_after {
            return 0;
        }
        report.get(suspect).copied().unwrap_or(0)
    }

    /// How long `id` has not confirmed hearing us (echoed one of our
    /// nonces). Counting confirmations rather than messages received makes
    /// a one-way partition visible: a member whose heartbeats still arrive
    /// but who no longer hears anyone is silent here, so the majority can
    /// remove it (it has fenced itself: it confirms nobody either).
    fn silence_of(&self, id: &NodeId, now: u64) -> u64 {
        let peer = self.peers.get(id);
        let since = [
            Some(self.started_at),
            peer.and_then(|p| p.confirmed_at),
            peer.and_then(|p| p.watched_since),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(self.started_at);
        now.saturating_sub(since)
    }

    fn confirmed_within(&self, id: &NodeId, now: u64, window: u64) -> bool {
        self.peers
            .get(id)
            .and_then(|p| p.confirmed_at)
            .is_some_and(|at| now.saturating_sub(at) < window)
    }

    // ---- messages --------------------------------------------------------

    fn on_message(&mut self, from: NodeId, message: Message, now: u64, out: &mut Vec<Output>) {
        if from == self.me {
            return;
        }
        if !self.durable.config.is_member(&from) {
            self.on_message_from_non_member(from, message, now, out);
            return;
        }
        let peer = self.peers.entry(from.clone()).or_default();
        peer.heard_at = Some(now);
        if let Message::RequestVote { .. } = message
            && self.leader_is_live(now)
            && self.leader.as_ref() != Some(&from)
        {
            // Leader stickiness: while we hear a leader, a candidate (say,
            // one coming back from a partition) does not unseat it.
            out.push(Output::Send {
                to: from,
                message: Message::Vote {
                    term: self.durable.term,
                    granted: false,
                },
            });
            return;
        }
        if let Some(term) = message_term(&message)
            && term > self.durable.term
        {
            self.adopt_term(term, out);
        }
        match message {
            Message::Heartbeat {
                term,
                leader,
                config_term,
                config_version,
                committed_version,
                nonce,
                echo,
                silence,
                serving,
            } => {
                // An echo is one of our own nonces: our clock when we sent
                // the heartbeat it answers. One from before this node
                // started (an earlier run of it) proves nothing now.
                let echo = echo.filter(|echo| (self.started_at..=now).contains(echo));
                // A member that does not follow our leader (it has none,
                // or another) is looking for majorities: beyond the mesh it
                // gets our echo until it follows one again.
                let looking = leader.is_none() || leader != self.leader;
                let peer = self.peers.entry(from.clone()).or_default();
                peer.nonce = Some(nonce);
                if looking {
                    peer.pinged_at = Some(now);
                }
                if let Some(echo) = echo {
                    peer.confirmed_at = Some(peer.confirmed_at.map_or(echo, |c| c.max(echo)));
                }
                peer.silence = Some((now, silence.into_iter().collect()));
                if term == self.durable.term
                    && leader.as_ref() == Some(&from)
                    && self.role != Role::Leader
                {
                    self.follow(from.clone(), now);
                    // The leader vouches for its view as of when it sent
                    // this heartbeat, which is after it received the
                    // heartbeat of ours it echoes: the lease counts from
                    // when we sent that one, not from when this arrived (a
                    // heartbeat that lingered on the wire or in a paused
                    // process must not stretch the lease).
                    if let Some(sent) = echo {
                        let newer = self.leader_view.is_none_or(|(_, _, at)| sent >= at);
                        if newer {
                            self.leader_view =
                                Some(((config_term, config_version), committed_version, sent));
                        }
                        if serving {
                            let newer = self
                                .leader_lease
                                .as_ref()
                                .is_none_or(|(leader, at)| leader != &from || sent >= *at);
                            if newer {
                                self.leader_lease = Some((from.clone(), sent));
                            }
                        }
                    }
                    let theirs = (config_term, config_version);
                    if theirs > self.durable.config.stamp() {
                        out.push(Output::Send {
                            to: from.clone(),
                            message: Message::PullConfig,
                        });
                    } else if theirs == self.durable.config.stamp() {
                        self.learn_committed(committed_version.min(config_version), out);
                    }
                }
                self.update_serving(now, out);
            }
            Message::RequestVote {
                term,
                config_term,
                config_version,
            } => {
                // A candidate whose config is older than ours might undo a
                // committed change: no vote.
                let grant = term == self.durable.term
                    && self.durable.voted_for.as_ref().is_none_or(|v| v == &from)
                    && (config_term, config_version) >= self.durable.config.stamp()
                    && self.role != Role::Leader;
                if grant {
                    self.durable.voted_for = Some(from.clone());
                    out.push(Output::Persist(self.durable.clone()));
                    self.election_deadline = now + self.election_timeout();
                }
                out.push(Output::Send {
                    to: from,
                    message: Message::Vote {
                        term: self.durable.term,
                        granted: grant,
                    },
                });
            }
            Message::Vote { term, granted } => {
                if self.role == Role::Candidate && term == self.durable.term && granted {
                    self.votes.insert(from);
                    if self.votes.len() >= self.durable.config.quorum() {
                        self.become_leader(now, out);
                    }
                }
            }
            Message::ApplyConfig {
                term,
                config,
                committed_version,
            } => {
                // Only the leader of our current term replicates configs,
                // and only a newer one is taken.
                if term != self.durable.term || self.role == Role::Leader {
                    return;
                }
                self.follow(from.clone(), now);
                self.accept_config(from, config, committed_version, now, out);
            }
            Message::ConfigAck { term, version } => {
                if self.role == Role::Leader
                    && term == self.durable.term
                    && version == self.durable.config.version
                    && self.durable.config.term == self.durable.term
                {
                    self.acks.insert(from);
                    self.check_commit(out);
                }
            }
            Message::PullConfig => {
                if self.role == Role::Leader {
                    out.push(Output::Send {
                        to: from,
                        message: self.apply_config_message(),
                    });
                }
            }
        }
    }

    /// A node outside our config: ignored, except for a newer config that
    /// names both this node and the sender — how a joining node (or one
    /// removed while it was away and now re-admitted) learns the cluster.
    fn on_message_from_non_member(
        &mut self,
        from: NodeId,
        message: Message,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let Message::ApplyConfig {
            term,
            config,
            committed_version,
        } = message
        else {
            return;
        };
        if config.stamp() <= self.durable.config.stamp()
            || !config.is_member(&self.me)
            || !config.is_member(&from)
        {
            return;
        }
        if term > self.durable.term {
            self.adopt_term(term, out);
        }
        self.follow(from.clone(), now);
        self.peers.entry(from.clone()).or_default().heard_at = Some(now);
        self.accept_config(from, config, committed_version, now, out);
    }

    fn accept_config(
        &mut self,
        leader: NodeId,
        config: ClusterConfig,
        committed_version: u64,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let stamp = config.stamp();
        if stamp > self.durable.config.stamp() {
            self.durable.config = config;
            self.durable.committed_version = self
                .durable
                .committed_version
                .min(self.durable.config.version);
            self.track_members(now);
            out.push(Output::Persist(self.durable.clone()));
        }
        if stamp == self.durable.config.stamp() {
            // Acknowledged again on a resend: the first ack may be lost.
            out.push(Output::Send {
                to: leader,
                message: Message::ConfigAck {
                    term: self.durable.term,
                    version: self.durable.config.version,
                },
            });
        }
        let committed = committed_version.min(self.durable.config.version);
        self.learn_committed(committed, out);
        self.update_serving(now, out);
    }

    fn learn_committed(&mut self, version: u64, out: &mut Vec<Output>) {
        if version > self.durable.committed_version && version == self.durable.config.version {
            self.durable.committed_version = version;
            let members = self.durable.config.ids().cloned().collect();
            self.set_committed_members(members);
            out.push(Output::Persist(self.durable.clone()));
            out.push(Output::Committed(self.durable.config.clone()));
        }
    }

    // ---- roles -----------------------------------------------------------

    fn adopt_term(&mut self, term: u64, out: &mut Vec<Output>) {
        self.leader_lease = None;
        self.durable.term = term;
        self.durable.voted_for = None;
        self.role = Role::Follower;
        self.leader = None;
        self.leader_heard_at = None;
        self.votes.clear();
        self.acks.clear();
        out.push(Output::Persist(self.durable.clone()));
    }

    fn follow(&mut self, leader: NodeId, now: u64) {
        self.role = Role::Follower;
        self.leader = Some(leader);
        self.leader_heard_at = Some(now);
        self.election_deadline = now + self.election_timeout();
    }

    fn leader_is_live(&self, now: u64) -> bool {
        match self.role {
            Role::Leader => self.serving,
            _ => self
                .leader_heard_at
                .is_some_and(|at| now.saturating_sub(at) < self.timing.election_min),
        }
    }

    fn start_election(&mut self, now: u64, out: &mut Vec<Output>) {
        self.durable.term += 1;
        self.durable.voted_for = Some(self.me.clone());
        self.role = Role::Candidate;
        self.leader = None;
        self.leader_heard_at = None;
        self.votes = BTreeSet::from([self.me.clone()]);
        self.election_deadline = now + self.election_timeout();
        out.push(Output::Persist(self.durable.clone()));
        if self.votes.len() >= self.durable.config.quorum() {
            self.become_leader(now, out);
            return;
        }
        for to in self.others() {
            out.push(Output::Send {
                to,
                message: Message::RequestVote {
                    term: self.durable.term,
                    config_term: self.durable.config.term,
                    config_version: self.durable.config.version,
                },
            });
        }
    }

    fn become_leader(&mut self, now: u64, out: &mut Vec<Output>) {
        if self.hub() {
            // Beyond the mesh a follower heartbeats its leader only: this
            // one has not heard most members until now, and judges their
            // silence from here; the old leader's it knows.
            let old_leader = self.leader_lease.as_ref().map(|(id, _)| id.clone());
            for (id, peer) in &mut self.peers {
                if Some(id) != old_leader.as_ref() {
                    peer.watched_since = Some(now);
                }
            }
        }
        self.role = Role::Leader;
        self.leader = Some(self.me.clone());
        self.leader_heard_at = Some(now);
        self.acks = BTreeSet::from([self.me.clone()]);
        self.next_heartbeat = now;
        // Like Raft's no-op entry: a new leader first commits a config of
        // its own term (same members, next version). That re-makes any
        // config it accepted but did not see committed (counting acks of an
        // older term's config would be unsafe, as in Raft), and it
        // supersedes uncommitted configs an old leader left on a minority,
        // which every member then replaces with this one.
        self.durable.config.term = self.durable.term;
        self.durable.config.version += 1;
        out.push(Output::Persist(self.durable.clone()));
        for to in self.others() {
            out.push(Output::Send {
                to,
                message: self.apply_config_message(),
            });
        }
        self.check_commit(out);
        self.send_heartbeats(now, out);
        self.next_heartbeat = now + self.timing.heartbeat_every;
    }

    // ---- membership changes ------------------------------------------------

    fn on_propose(&mut self, change: Change, now: u64, out: &mut Vec<Output>) {
        if change == Change::Leave(self.me.clone()) {
            // This member is leaving: it never leads again, and a leader
            // never commits its own removal. A config that drops its own
            // leader can be committed only by the others' acks; were the
            // leader to stop before they came, its successor could not be
            // elected where the old config needs its vote and its newer
            // config makes it refuse (two members, say). So it steps down,
            // and the next leader removes it.
            self.leaving = true;
            if self.role == Role::Leader {
                self.role = Role::Follower;
                self.leader = None;
                self.leader_heard_at = None;
                self.election_deadline = now + self.election_timeout();
            }
            out.push(Output::Rejected {
                change,
                reason: RejectReason::NotLeader {
                    leader: self.leader.clone(),
                },
            });
            return;
        }
        if self.role != Role::Leader {
            out.push(Output::Rejected {
                change,
                reason: RejectReason::NotLeader {
                    leader: self.leader.clone(),
                },
            });
            return;
        }
        self.update_serving(now, out);
        let full = matches!(&change, Change::Join(member)
            if !self.durable.config.is_member(&member.id)
                && self.durable.config.members.len() >= MAX_MEMBERS);
        let reason = if full {
            Some(RejectReason::TooManyMembers { limit: MAX_MEMBERS })
        } else if !self.serving {
            Some(RejectReason::NoQuorum)
        } else if self.change_pending() {
            Some(RejectReason::ChangeInProgress)
        } else {
            None
        };
        match reason {
            Some(reason) => out.push(Output::Rejected { change, reason }),
            None => self.commit_change(change, now, out),
        }
    }

    fn change_pending(&self) -> bool {
        self.durable.committed_version < self.durable.config.version
    }

    fn commit_change(&mut self, change: Change, now: u64, out: &mut Vec<Output>) {
        let mut next = self.durable.config.clone();
        let changed = match &change {
            Change::Join(member) => {
                next.members
                    .insert(member.id.clone(), member.clone())
                    .as_ref()
                    != Some(member)
            }
            Change::Leave(id) | Change::Dead(id) => next.members.remove(id).is_some(),
        };
        if !changed {
            out.push(Output::Rejected {
                change,
                reason: RejectReason::NoChange,
            });
            return;
        }
        next.version += 1;
        next.term = self.durable.term;
        self.durable.config = next;
        self.track_members(now);
        self.acks = BTreeSet::from([self.me.clone()]);
        out.push(Output::Persist(self.durable.clone()));
        out.push(Output::Proposed {
            change,
            version: self.durable.config.version,
        });
        for to in self.others() {
            out.push(Output::Send {
                to,
                message: self.apply_config_message(),
            });
        }
        self.check_commit(out);
    }

    /// Commits the current config once a majority of it has acknowledged.
    fn check_commit(&mut self, out: &mut Vec<Output>) {
        let config = &self.durable.config;
        let acked = self.acks.iter().filter(|id| config.is_member(id)).count();
        if self.change_pending() && acked >= config.quorum() {
            self.durable.committed_version = config.version;
            let members = config.ids().cloned().collect();
            self.set_committed_members(members);
            out.push(Output::Persist(self.durable.clone()));
            out.push(Output::Committed(self.durable.config.clone()));
            // The members learn of the commit from the next heartbeat: send
            // it at the next tick rather than a heartbeat period later
            // (every holder's hold after the view change starts then).
            self.next_heartbeat = 0;
            if !self.durable.config.is_member(&self.me) {
                // A leader that removed itself (graceful leave) steps down
                // once the removal is committed; the rest elect another.
                self.role = Role::Follower;
                self.leader = None;
            }
        }
    }

    fn apply_config_message(&self) -> Message {
        Message::ApplyConfig {
            term: self.durable.term,
            config: self.durable.config.clone(),
            committed_version: self.durable.committed_version,
        }
    }

    // ---- helpers -----------------------------------------------------------

    fn set_committed_members(&mut self, members: BTreeSet<NodeId>) {
        let removed: Vec<NodeId> = self
            .durable
            .committed_members
            .difference(&members)
            .cloned()
            .collect();
        self.durable.departed.extend(removed);
        self.durable.departed.retain(|id| !members.contains(id));
        self.durable.committed_members = members;
    }

    /// Forgets departed members and starts the silence clock of new ones
    /// now: a member that just joined is not "silent since we started".
    fn track_members(&mut self, now: u64) {
        let members = &self.durable.config.members;
        self.peers.retain(|id, _| members.contains_key(id));
        for id in members.keys() {
            if id != &self.me {
                let peer = self.peers.entry(id.clone()).or_default();
                if peer.watched_since.is_none() {
                    peer.watched_since = Some(now);
                }
            }
        }
    }

    fn others(&self) -> Vec<NodeId> {
        self.durable
            .config
            .ids()
            .filter(|id| *id != &self.me)
            .cloned()
            .collect()
    }

    /// A pseudo-random election timeout in `[election_min, election_max)`.
    fn election_timeout(&mut self) -> u64 {
        // xorshift64: deterministic per seed, good enough to spread timeouts.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = self.timing.election_max - self.timing.election_min;
        self.timing.election_min + self.rng % span.max(1)
    }
}

fn message_term(message: &Message) -> Option<u64> {
    match message {
        Message::Heartbeat { term, .. }
        | Message::RequestVote { term, .. }
        | Message::Vote { term, .. }
        | Message::ApplyConfig { term, .. }
        | Message::ConfigAck { term, .. } => Some(*term),
        Message::PullConfig => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Member;

    fn config(term: u64, version: u64, ids: &[String]) -> ClusterConfig {
        ClusterConfig {
            version,
            term,
            members: ids
                .iter()
                .map(|id| {
                    (
                        NodeId::new(id.clone()),
                        Member {
                            id: NodeId::new(id.clone()),
                            address: format!("{id}:7070"),
                            http: String::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn node(me: &str, config: ClusterConfig, now: u64) -> ClusterNode {
        let durable = Durable {
            term: config.term,
            voted_for: None,
            committed_members: config.ids().cloned().collect(),
            committed_version: config.version,
            config,
            departed: Default::default(),
        };
        ClusterNode::new(NodeId::new(me), durable, Timing::default(), now, 1)
    }

    #[test]
    fn a_join_beyond_the_member_limit_is_refused_with_the_reason() {
        let ids: Vec<String> = (0..MAX_MEMBERS).map(|n| format!("n{n}")).collect();
        let mut leader = node("n0", config(1, 5, &ids), 0);
        leader.role = Role::Leader;
        leader.leader = Some(NodeId::new("n0"));
        leader.serving = true;
        let newcomer = Member {
            id: NodeId::new("late"),
            address: "late:7070".into(),
            http: String::new(),
        };
        let out = leader.step(Input::Propose {
            change: Change::Join(newcomer),
            now: 10,
        });
        let reason = out.iter().find_map(|o| match o {
            Output::Rejected { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        assert_eq!(
            reason,
            Some(RejectReason::TooManyMembers { limit: MAX_MEMBERS })
        );
        assert!(
            reason.expect("refused").to_string().contains("64 members"),
            "the reason says why"
        );
        assert_eq!(
            leader.config().members.len(),
            MAX_MEMBERS,
            "nothing changed"
        );
    }

    #[test]
    fn the_view_lease_counts_from_when_the_leaders_heartbeat_was_sent() {
        let ids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let view = config(1, 5, &ids);
        let mut follower = node("b", view.clone(), 1_000);
        let heartbeat = |echo: Option<u64>| Message::Heartbeat {
            term: 1,
            leader: Some(NodeId::new("a")),
            config_term: view.term,
            config_version: view.version,
            committed_version: view.version,
            nonce: 7,
            echo,
            silence: Vec::new(),
            serving: true,
        };
        // Majority in sight both ways: echoes of our heartbeat sent at 1,100.
        for peer in ["a", "c"] {
            follower.step(Input::Received {
                from: NodeId::new(peer),
                message: heartbeat(Some(1_100)),
                now: 1_150,
            });
        }
        // The leader's heartbeat echoing our 1,100 arrives late, at 1,600:
        // the lease runs from 1,100, not from its arrival.
        follower.step(Input::Received {
            from: NodeId::new("a"),
            message: heartbeat(Some(1_100)),
            now: 1_600,
        });
        assert!(follower.is_serving());
        let fence_after = Timing::default().fence_after;
        assert_eq!(follower.view_lease_until(), 1_100 + fence_after);
        assert!(follower.has_view_lease(1_100 + fence_after - 1));
        assert!(!follower.has_view_lease(1_100 + fence_after));
        // A heartbeat without an echo (the leader has not heard us yet)
        // grants nothing; an echo from before this node started is not ours.
        let mut fresh = node("b", view.clone(), 5_000);
        fresh.step(Input::Received {
            from: NodeId::new("a"),
            message: heartbeat(Some(4_000)),
            now: 5_010,
        });
        assert_eq!(fresh.view_lease_until(), 0);
    }

    #[test]
    fn a_leader_asked_to_remove_itself_steps_down_and_never_campaigns_again() {
        let ids = vec!["a".to_owned(), "b".to_owned()];
        let mut leader = node("a", config(1, 5, &ids), 0);
        leader.role = Role::Leader;
        leader.leader = Some(NodeId::new("a"));
        leader.serving = true;
        let out = leader.step(Input::Propose {
            change: Change::Leave(NodeId::new("a")),
            now: 10,
        });
        assert!(
            out.iter()
                .all(|o| !matches!(o, Output::Proposed { .. } | Output::Persist(_))),
            "no config that drops its own leader: {out:?}"
        );
        assert_eq!(leader.role(), Role::Follower);
        assert_eq!(leader.config().members.len(), 2, "still a member");
        for now in (20..10_000).step_by(50) {
            let out = leader.step(Input::Tick { now });
            assert!(
                !out.iter().any(|o| matches!(
                    o,
                    Output::Send {
                        message: Message::RequestVote { .. },
                        ..
                    }
                )),
                "a leaving member never campaigns"
            );
        }
    }
}
