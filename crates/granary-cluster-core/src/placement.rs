//! One member's placement of grains, as a state machine: the grains it
//! hosts (its claims), where it last found the others, the claims it has
//! out, its directory partition (the grants it makes as a holder) and the
//! rebuild of that partition after a view change.
//!
//! Like [`ClusterNode`](crate::ClusterNode) it does no I/O and reads no
//! clock: the runtime calls it with the time and carries out the
//! [`Command`]s it queues (fetch a page of a member's grain list, release
//! grains at their holder, wake the calls waiting for a placement). The
//! node's router and the simulation both drive this same code.
//!
//! # A grain's life here
//! 1. [`Placement::locate`]: hosted here → `Local`; known elsewhere →
//!    `Remote`; else, under a view lease, a claim at the grain's partition
//!    holder (answered at once when that is this member).
//! 2. [`Placement::claim_answered`]: a grant is kept only if it came back
//!    within the claim deadline and this member has not fenced since it
//!    asked. Its owner epoch goes with every append the activation makes.
//! 3. [`Placement::activate`] / [`Placement::deactivated`]: the runtime
//!    starts an activation only for a grain placed here, and when the
//!    activation has stopped (every write settled) the claim is released
//!    at the holder, so a member's grain count is bounded by what it has
//!    live, never by what it ever hosted.
//! 4. [`Placement::fenced`]: losing the majority gives up every claim.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

use crate::config::{ClusterConfig, Member, NodeId};
use crate::directory::{ClaimOutcome, Grant, OwnershipDirectory, partition_holder};
use crate::timing::{CLAIM_DEADLINE_MS, Timing};

/// Most grains one page of a member's grain list carries.
pub const GRAIN_PAGE: usize = 4_096;
/// How long a fetch of a page may go unanswered before it counts as failed.
const FETCH_TIMEOUT_MS: u64 = 2_000;
/// The first retry of a failed fetch waits this long; each failure doubles
/// it, up to [`FETCH_BACKOFF_MAX_MS`]. A rebuild never gives up: a member
/// that cannot be reached is either back soon or removed (a new view).
const FETCH_BACKOFF_MS: u64 = 100;
const FETCH_BACKOFF_MAX_MS: u64 = 5_000;
/// Most routes (grains known to live elsewhere) remembered.
const MAX_ROUTES: usize = 1 << 20;
/// Most grains one release message names.
const RELEASE_BATCH: usize = 4_096;
/// Former members remembered (for a `Closing` that arrives after the view
/// that removed its sender).
const DEPARTED: usize = 64;

/// Where calls for a grain go, or what to do to find out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locate {
    /// This member hosts it, with this owner epoch.
    Local { epoch: u64 },
    /// Another member hosts it.
    Remote(Member),
    /// Nobody is known to host this grain, placed by its hash
    /// ([`Placement::locate_at_holder`]): send the call to its partition
    /// holder, which places it on itself.
    Holder(Member),
    /// Send this claim to the holder and report the answer with
    /// [`Placement::claim_answered`].
    Claim { token: u64, holder: Member },
    /// It cannot be placed now; wait for [`Command::Placeable`] (or a
    /// backoff) and ask again.
    Waiting(Unplaced),
}

/// Why a grain cannot be placed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced {
    /// This member's view is not confirmed current by the leader.
    NoViewLease,
    /// No committed view yet.
    NoView,
    /// The grain's partition is being rebuilt after a view change, or its
    /// last owner left and may still be serving.
    Rebuilding,
    /// A claim for it is on its way; its answer wakes the waiters.
    ClaimInFlight,
    /// The holder answered after the claim deadline; the grant is void.
    LateGrant,
    /// This member fenced while its claim was out; the grant is void.
    FencedMeanwhile,
    /// The holder places the grain by another view than this member.
    ViewsDiffer,
    /// This member is leaving: it places nothing.
    Closed,
    /// The partition holder did not answer the claim.
    HolderUnreachable,
    /// The partition holder refused the claim, for this reason.
    RefusedByHolder(String),
}

impl fmt::Display for Unplaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Unplaced::RefusedByHolder(why) = self {
            return write!(f, "the partition holder cannot place it yet: {why}");
        }
        f.write_str(match self {
            Unplaced::RefusedByHolder(_) => unreachable!("written above"),
            Unplaced::NoViewLease => "this node's view of the cluster is not confirmed current",
            Unplaced::NoView => "this node has no committed cluster view yet",
            Unplaced::Rebuilding => "the directory is being rebuilt after a membership change",
            Unplaced::ClaimInFlight => "a claim for this grain is on its way",
            Unplaced::LateGrant => "the partition holder answered too late",
            Unplaced::FencedMeanwhile => {
                "this node lost sight of the majority while placing the grain"
            }
            Unplaced::ViewsDiffer => "the partition holder has another view of the cluster",
            Unplaced::Closed => "this node is leaving the cluster",
            Unplaced::HolderUnreachable => "the partition holder did not answer",
        })
    }
}

/// A partition holder's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The claimant hosts the grain now, under this grant.
    Granted(Grant),
    /// Another member hosts it.
    Owned { owner: NodeId },
    /// Ask this member instead.
    NotHolder { holder: NodeId },
    /// Not now (rebuilding, no lease, the claimant is not a member).
    Refused(Unplaced),
}

/// Why a grain's activation may not start here: it is not placed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotPlacedHere;

/// A page of the grains a member hosts in one holder's partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrainPage {
    /// (grain, its grant), in grain order.
    pub grains: Vec<(String, Grant)>,
    /// Where the next page starts (after this grain); `None` on the last.
    pub next: Option<String>,
}

/// What the runtime must do for the placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Ask `to` for the grains it hosts in this member's partition under
    /// the view stamped `view`, after grain `after`; report the page with
    /// [`Placement::grains_page`] or the failure with
    /// [`Placement::grains_failed`], quoting `token`.
    FetchGrains {
        token: u64,
        to: Member,
        view: (u64, u64),
        after: Option<String>,
    },
    /// Tell `to` (the grains' holder) that this member no longer hosts
    /// `grains` (each with the id of the grant it ends).
    Release {
        to: Member,
        grains: Vec<(String, u64)>,
    },
    /// Placement may have changed: calls waiting to place a grain should
    /// look again.
    Placeable,
}

#[derive(Debug, Clone)]
struct Owned {
    grant: Grant,
    /// The activation that holds the claim, once one started.
    activation: Option<u64>,
}

#[derive(Debug, Clone)]
struct PendingClaim {
    token: u64,
    sent_at: u64,
    fences: u64,
}

#[derive(Debug, Clone)]
enum Fetch {
    /// Ask (again) for the page after `after` from `at` on.
    Due {
        after: Option<String>,
        at: u64,
        failures: u32,
    },
    Asked {
        after: Option<String>,
        token: u64,
        since: u64,
        failures: u32,
    },
    Done,
}

/// One member's placement state. See the module docs.
#[derive(Debug, Clone)]
pub struct Placement {
    me: NodeId,
    timing: Timing,
    view: ClusterConfig,
    directory: OwnershipDirectory,
    /// Claims and grants are made only before this (this node's clock).
    lease_until: u64,
    /// How many times this member fenced.
    fences: u64,
    closed: bool,
    owned: BTreeMap<String, Owned>,
    routes: HashMap<String, NodeId>,
    claims: HashMap<String, PendingClaim>,
    fetches: BTreeMap<NodeId, Fetch>,
    releases: BTreeMap<NodeId, Vec<(String, u64)>>,
    departed: VecDeque<Member>,
    /// Times at which placement changes by itself (a hold ends).
    wakes: BTreeSet<u64>,
    next_token: u64,
    outbox: Vec<Command>,
}

impl Placement {
    /// A member's placement over its committed `view` (empty if it has
    /// none) at `now`, as a process starts. `departed`: members a committed
    /// config removed and none admitted since (`Durable::departed`): right
    /// after a restart one of them may still be serving, so even a member
    /// alone in its view holds its grants for a while. `seed` starts the
    /// ids of the grants it makes (any value, different in every run).
    pub fn new(
        me: NodeId,
        view: ClusterConfig,
        departed: usize,
        timing: Timing,
        now: u64,
        seed: u64,
    ) -> Self {
        let hold = timing.directory_hold(view.members.len() + departed);
        let mut placement = Placement {
            directory: OwnershipDirectory::new(me.clone(), &view, now, hold, seed),
            me,
            timing,
            view: ClusterConfig::default(),
            lease_until: 0,
            fences: 0,
            closed: false,
            owned: BTreeMap::new(),
            routes: HashMap::new(),
            claims: HashMap::new(),
            fetches: BTreeMap::new(),
            releases: BTreeMap::new(),
            departed: VecDeque::new(),
            wakes: BTreeSet::new(),
            next_token: 1,
            outbox: Vec::new(),
        };
        placement.adopt(view, now);
        placement
    }

    /// The commands queued since the last call, to carry out now.
    pub fn drain_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.outbox)
    }

    /// The committed view grains are placed by.
    pub fn view(&self) -> &ClusterConfig {
        &self.view
    }

    /// The membership's view lease: claims are made and granted only
    /// before `until` (see `ClusterNode::view_lease_until`).
    pub fn set_lease(&mut self, until: u64) {
        self.lease_until = until;
    }

    /// A newer committed view.
    pub fn view_committed(&mut self, config: ClusterConfig, now: u64) {
        if config.stamp() <= self.view.stamp() {
            return;
        }
        // A view that shrank to this member alone still holds: the member
        // it dropped may be serving until it has fenced itself.
        let hold = self
            .timing
            .directory_hold(config.members.len().max(self.view.members.len()));
        self.directory.view_changed(&config, now, hold);
        self.adopt(config, now);
    }

    fn adopt(&mut self, config: ClusterConfig, now: u64) {
        for member in self.view.members.values() {
            if !config.is_member(&member.id) {
                self.departed.push_back(member.clone());
                if self.departed.len() > DEPARTED {
                    self.departed.pop_front();
                }
            }
        }
        self.routes.retain(|_, owner| config.is_member(owner));
        self.releases.retain(|holder, _| config.is_member(holder));
        self.view = config;
        let hold_until = self.directory.hold_until();
        self.fetches = self
            .directory
            .awaiting()
            .iter()
            .map(|member| {
                (
                    member.clone(),
                    Fetch::Due {
                        after: None,
                        at: hold_until,
                        failures: 0,
                    },
                )
            })
            .collect();
        // Entries of a member that left are held as long.
        self.wakes.insert(now + self.timing.directory_hold(2));
        self.wakes.insert(hold_until);
        self.outbox.push(Command::Placeable);
    }

    /// Time passes: fetches of grain lists are sent (after the hold, with
    /// backoff after failures), releases go out, claims past their
    /// deadline are forgotten, and waiters are woken when a hold ends.
    pub fn tick(&mut self, now: u64) {
        while self.wakes.first().is_some_and(|at| *at <= now) {
            self.wakes.pop_first();
            self.outbox.push(Command::Placeable);
        }
        self.claims
            .retain(|_, claim| now <= claim.sent_at + CLAIM_DEADLINE_MS);
        if now >= self.directory.hold_until() {
            self.send_fetches(now);
        }
        for (holder, grains) in std::mem::take(&mut self.releases) {
            let Some(to) = self.view.members.get(&holder).cloned() else {
                continue;
            };
            for batch in grains.chunks(RELEASE_BATCH) {
                self.outbox.push(Command::Release {
                    to: to.clone(),
                    grains: batch.to_vec(),
                });
            }
        }
    }

    fn send_fetches(&mut self, now: u64) {
        let view = self.view.stamp();
        let members: Vec<NodeId> = self.fetches.keys().cloned().collect();
        for member in members {
            let Some(fetch) = self.fetches.get_mut(&member) else {
                continue;
            };
            let (after, failures) = match fetch {
                Fetch::Due {
                    after,
                    at,
                    failures,
                } if *at <= now => (after.take(), *failures),
                Fetch::Asked {
                    after,
                    since,
                    failures,
                    ..
                } if now >= *since + FETCH_TIMEOUT_MS => {
                    // Unanswered: a lost request or a lost reply.
                    let failures = *failures + 1;
                    *fetch = Fetch::Due {
                        after: after.take(),
                        at: now + backoff(failures),
                        failures,
                    };
                    continue;
                }
                _ => continue,
            };
            if member == self.me {
                // This member's own list needs no message. Taken now, after
                // the hold, it includes grants that were still in flight
                // when the view changed.
                let mine: Vec<(String, Grant)> = self
                    .owned
                    .iter()
                    .map(|(grain, owned)| (grain.clone(), owned.grant))
                    .collect();
                self.directory.rebuild_from(&self.me, mine, true);
                self.fetches.insert(member, Fetch::Done);
                self.woken_if_ready(now);
                continue;
            }
            let Some(to) = self.view.members.get(&member).cloned() else {
                continue;
            };
            let token = self.token();
            self.fetches.insert(
                member,
                Fetch::Asked {
                    after: after.clone(),
                    token,
                    since: now,
                    failures,
                },
            );
            self.outbox.push(Command::FetchGrains {
                token,
                to,
                view,
                after,
            });
        }
    }

    fn token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn woken_if_ready(&mut self, now: u64) {
        if self.directory.is_ready(now) {
            self.outbox.push(Command::Placeable);
        }
    }

    /// A page of `from`'s grain list arrived, answering fetch `token`.
    pub fn grains_page(&mut self, from: &NodeId, token: u64, page: GrainPage, now: u64) {
        let Some(Fetch::Asked { token: asked, .. }) = self.fetches.get(from) else {
            return;
        };
        if *asked != token {
            return;
        }
        let complete = page.next.is_none();
        self.directory.rebuild_from(from, page.grains, complete);
        if complete {
            self.fetches.insert(from.clone(), Fetch::Done);
            self.woken_if_ready(now);
        } else {
            self.fetches.insert(
                from.clone(),
                Fetch::Due {
                    after: page.next,
                    at: now,
                    failures: 0,
                },
            );
            self.send_fetches(now);
        }
    }

    /// Fetch `token` from `from` failed (unreachable, or its view differs):
    /// it is asked again after a backoff.
    pub fn grains_failed(&mut self, from: &NodeId, token: u64, now: u64) {
        let Some(Fetch::Asked {
            token: asked,
            after,
            failures,
            ..
        }) = self.fetches.get_mut(from)
        else {
            return;
        };
        if *asked != token {
            return;
        }
        let failures = *failures + 1;
        let after = after.take();
        self.fetches.insert(
            from.clone(),
            Fetch::Due {
                after,
                at: now + backoff(failures),
                failures,
            },
        );
    }

    /// Where calls for `grain` go, or how to find out: a grain nobody
    /// hosts is claimed for this member.
    pub fn locate(&mut self, grain: &str, now: u64) -> Locate {
        self.locate_for(grain, now, false)
    }

    /// The same for a grain placed by its id's hash (`Home::Hashed` in the
    /// grain runtime): one nobody is known to host, whose partition holder
    /// is another member, goes to that holder (`Holder(holder)`), with
    /// nothing claimed or remembered here; the holder places it on itself
    /// as it takes the call (its own claim needs no message). A holder
    /// that answers that another member hosts the grain (placed there
    /// before, by a caller or an older version) is not the way: locate it
    /// then with [`Placement::locate`], which asks the holder and learns
    /// the owner.
    pub fn locate_at_holder(&mut self, grain: &str, now: u64) -> Locate {
        self.locate_for(grain, now, true)
    }

    fn locate_for(&mut self, grain: &str, now: u64, at_holder: bool) -> Locate {
        if self.closed {
            return Locate::Waiting(Unplaced::Closed);
        }
        if let Some(owned) = self.owned.get(grain) {
            return Locate::Local {
                epoch: owned.grant.epoch,
            };
        }
        if let Some(owner) = self.routes.get(grain) {
            match self.view.members.get(owner) {
                Some(member) => return Locate::Remote(member.clone()),
                None => {
                    self.routes.remove(grain);
                }
            }
        }
        if now >= self.lease_until {
            return Locate::Waiting(Unplaced::NoViewLease);
        }
        let Some(holder) = self.directory.holder(grain).cloned() else {
            return Locate::Waiting(Unplaced::NoView);
        };
        if holder == self.me {
            let me = self.me.clone();
            return match self.directory.claim(grain, &me, now) {
                ClaimOutcome::Accepted(grant) => {
                    self.own(grain, grant);
                    Locate::Local { epoch: grant.epoch }
                }
                ClaimOutcome::Owned { owner } => self.route(grain, owner),
                ClaimOutcome::NotHolder { .. } => Locate::Waiting(Unplaced::ViewsDiffer),
                ClaimOutcome::Rebuilding => Locate::Waiting(Unplaced::Rebuilding),
            };
        }
        if at_holder {
            return match self.view.members.get(&holder) {
                Some(member) => Locate::Holder(member.clone()),
                None => Locate::Waiting(Unplaced::NoView),
            };
        }
        if self
            .claims
            .get(grain)
            .is_some_and(|claim| now <= claim.sent_at + CLAIM_DEADLINE_MS)
        {
            return Locate::Waiting(Unplaced::ClaimInFlight);
        }
        let Some(holder) = self.view.members.get(&holder).cloned() else {
            return Locate::Waiting(Unplaced::NoView);
        };
        let token = self.token();
        self.claims.insert(
            grain.to_owned(),
            PendingClaim {
                token,
                sent_at: now,
                fences: self.fences,
            },
        );
        Locate::Claim { token, holder }
    }

    fn own(&mut self, grain: &str, grant: Grant) {
        self.owned.insert(
            grain.to_owned(),
            Owned {
                grant,
                activation: None,
            },
        );
        // A release of an earlier grant not sent yet is moot.
        for pending in self.releases.values_mut() {
            pending.retain(|(released, _)| released != grain);
        }
    }

    fn route(&mut self, grain: &str, owner: NodeId) -> Locate {
        match self.view.members.get(&owner).cloned() {
            Some(member) => {
                if self.routes.len() >= MAX_ROUTES {
                    self.routes.clear();
                }
                self.routes.insert(grain.to_owned(), owner);
                Locate::Remote(member)
            }
            None => Locate::Waiting(Unplaced::Rebuilding),
        }
    }

    /// The holder's answer to claim `token` for `grain` (`None`: no
    /// answer, the claim failed).
    pub fn claim_answered(
        &mut self,
        grain: &str,
        token: u64,
        answer: Option<ClaimAnswer>,
        now: u64,
    ) -> Locate {
        let Some(claim) = self.claims.get(grain).filter(|c| c.token == token) else {
            return Locate::Waiting(Unplaced::ClaimInFlight);
        };
        let claim = claim.clone();
        self.claims.remove(grain);
        self.outbox.push(Command::Placeable);
        let Some(answer) = answer else {
            return Locate::Waiting(Unplaced::HolderUnreachable);
        };
        if now > claim.sent_at + CLAIM_DEADLINE_MS {
            return Locate::Waiting(Unplaced::LateGrant);
        }
        if claim.fences != self.fences {
            return Locate::Waiting(Unplaced::FencedMeanwhile);
        }
        match answer {
            ClaimAnswer::Granted(grant) => {
                self.own(grain, grant);
                Locate::Local { epoch: grant.epoch }
            }
            ClaimAnswer::Owned { owner } if owner != self.me => self.route(grain, owner),
            ClaimAnswer::Owned { .. } | ClaimAnswer::NotHolder { .. } => {
                Locate::Waiting(Unplaced::ViewsDiffer)
            }
            ClaimAnswer::Refused(why) => Locate::Waiting(why),
        }
    }

    /// A claim from `claimant` reached this member as `grain`'s holder.
    pub fn claim_received(&mut self, claimant: &NodeId, grain: &str, now: u64) -> ClaimAnswer {
        if self.closed {
            return ClaimAnswer::Refused(Unplaced::Closed);
        }
        if now >= self.lease_until {
            return ClaimAnswer::Refused(Unplaced::NoViewLease);
        }
        if !self.view.is_member(claimant) {
            return ClaimAnswer::Refused(Unplaced::ViewsDiffer);
        }
        match self.directory.claim(grain, claimant, now) {
            ClaimOutcome::Accepted(grant) => ClaimAnswer::Granted(grant),
            ClaimOutcome::Owned { owner } => ClaimAnswer::Owned { owner },
            ClaimOutcome::NotHolder { holder } => ClaimAnswer::NotHolder { holder },
            ClaimOutcome::Rebuilding => ClaimAnswer::Refused(Unplaced::Rebuilding),
        }
    }

    /// `from` no longer hosts `grains` (it released them at their holder,
    /// each naming the grant it ends).
    pub fn release_received(&mut self, from: &NodeId, grains: &[(String, u64)]) {
        for (grain, grant) in grains {
            self.directory.release(grain, from, *grant);
            // A route here to the member that let it go is stale now: the
            // next call places it (at this holder, for a hashed grain)
            // instead of sending it there to be refused.
            if self.routes.get(grain) == Some(from) {
                self.routes.remove(grain);
            }
        }
    }

    /// The runtime is about to start activation `activation` of `grain`:
    /// its owner epoch, if the grain is placed here.
    pub fn activate(&mut self, grain: &str, activation: u64) -> Result<u64, NotPlacedHere> {
        let owned = self.owned.get_mut(grain).ok_or(NotPlacedHere)?;
        owned.activation = Some(activation);
        Ok(owned.grant.epoch)
    }

    /// Activation `activation` of `grain` has stopped with every write
    /// settled: unless a newer activation holds the claim, it is released
    /// (in this member's own partition at once, at another holder with
    /// the next tick).
    pub fn deactivated(&mut self, grain: &str, activation: u64) {
        let Some(owned) = self
            .owned
            .get(grain)
            .filter(|owned| owned.activation == Some(activation))
        else {
            return;
        };
        let grant = owned.grant.id;
        self.owned.remove(grain);
        match self.directory.holder(grain).cloned() {
            Some(holder) if holder == self.me => self.directory.release(grain, &holder, grant),
            Some(holder) => self
                .releases
                .entry(holder)
                .or_default()
                .push((grain.to_owned(), grant)),
            None => {}
        }
    }

    /// This member lost sight of the majority: it gives up every claim,
    /// route and claim in flight (grants still on their way are void), and
    /// its own entries in its partition (as its list, taken after a hold,
    /// is empty).
    pub fn fenced(&mut self) {
        self.fences += 1;
        self.lease_until = 0;
        self.owned.clear();
        self.routes.clear();
        // Claims still out stay listed: their grants, if any come back,
        // are refused as made before the fence.
        self.releases.clear();
        let me = self.me.clone();
        self.directory.drop_member(&me);
    }

    /// How many times this member fenced.
    pub fn fences(&self) -> u64 {
        self.fences
    }

    /// This member is leaving: from now on it neither claims nor grants.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// `member` left gracefully and hosts nothing any more (`Closing`):
    /// its grains may be claimed at once.
    pub fn member_closed(&mut self, member: &NodeId) {
        self.directory.drop_member(member);
        self.routes.retain(|_, owner| owner != member);
        self.outbox.push(Command::Placeable);
    }

    /// A member (or a recent former member) by its address.
    pub fn member_at(&self, address: &str) -> Option<&Member> {
        self.view
            .members
            .values()
            .chain(self.departed.iter().rev())
            .find(|m| m.address == address)
    }

    /// A call for `grain` reached the member a route named and it does not
    /// host the grain: the route was stale.
    pub fn forget_route(&mut self, grain: &str) {
        self.routes.remove(grain);
    }

    /// A page of the grains this member hosts in `requester`'s partition
    /// under the view stamped `view`, after `after`: `Err` with this
    /// member's own stamp when the views differ (the requester asks again).
    pub fn grains_for(
        &self,
        requester: &NodeId,
        view: (u64, u64),
        after: Option<&str>,
        limit: usize,
    ) -> Result<GrainPage, (u64, u64)> {
        use std::ops::Bound;
        if view != self.view.stamp() {
            return Err(self.view.stamp());
        }
        let limit = limit.clamp(1, GRAIN_PAGE);
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut grains: Vec<(String, Grant)> = Vec::new();
        let mut next = None;
        for (grain, owned) in self.owned.range::<str, _>((start, Bound::Unbounded)) {
            if partition_holder(grain, self.view.ids()) != Some(requester) {
                continue;
            }
            if grains.len() == limit {
                next = grains.last().map(|(g, _)| g.clone());
                break;
            }
            grains.push((grain.clone(), owned.grant));
        }
        Ok(GrainPage { grains, next })
    }

    /// Whether this member holds the claim for `grain`.
    pub fn owns(&self, grain: &str) -> bool {
        self.owned.contains_key(grain)
    }

    /// The grains this member holds claims for that start with `prefix`,
    /// in order, at most `limit`.
    pub fn owned_from(&self, prefix: &str, limit: usize) -> Vec<String> {
        self.owned
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(grain, _)| grain.starts_with(prefix))
            .take(limit)
            .map(|(grain, _)| grain.clone())
            .collect()
    }

    /// How many grains this member holds claims for.
    pub fn owned_count(&self) -> usize {
        self.owned.len()
    }

    /// This member's directory partition.
    pub fn directory(&self) -> &OwnershipDirectory {
        &self.directory
    }

    /// Whether this member's partition answers every grain.
    pub fn is_ready(&self, now: u64) -> bool {
        self.directory.is_ready(now)
    }
}

fn backoff(failures: u32) -> u64 {
    FETCH_BACKOFF_MS
        .saturating_mul(1 << failures.min(16))
        .min(FETCH_BACKOFF_MAX_MS)
}
