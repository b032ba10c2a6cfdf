//! The ownership directory: which member hosts each grain.
//!
//! The directory is partitioned over the committed members by rendezvous
//! (highest-random-weight) hashing: the *holder* of grain `g` is the member
//! with the highest `hash(g, member)`. A member that wants to activate `g`
//! asks only `g`'s holder (`ConfirmOwner`), so a claim costs one message
//! to one node whatever the cluster size; a view change moves only the
//! partitions of members that came or went.
//!
//! # What a holder knows after a view change
//! A grain whose holder was this member in every view since its partition
//! was last whole is *settled*: nobody else could grant it meanwhile, so
//! the entries here are complete for it and it is answered at once. Adding
//! members moves grains only to the newcomers, so after a join every old
//! holder's partition stays settled. A grain that moved here (its holder
//! left, or this member restarted or skipped a view) is answered only once
//! the holders of the old views can no longer grant (the hold) and every
//! member has reported, page by page, the grains of this partition it
//! hosts. An entry whose owner left the view is held until the same hold
//! has passed: the owner may have been cut off and still be serving until
//! it fences itself.

use std::collections::{BTreeSet, HashMap};

use crate::config::{ClusterConfig, NodeId};

/// The member holding `grain`'s directory entry, or `None` without members.
pub fn partition_holder<'a>(
    grain: &str,
    members: impl IntoIterator<Item = &'a NodeId>,
) -> Option<&'a NodeId> {
    members
        .into_iter()
        .max_by_key(|member| (weight(grain, &member.0), *member))
}

/// FNV-1a over the pair, then a 64-bit finalizer (splitmix) so nearby
/// inputs spread. Stable across builds and platforms: every node must
/// compute the same holder.
fn weight(grain: &str, member: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in grain.bytes().chain([0xff]).chain(member.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The owner epoch of placements granted under the committed view with
/// this stamp: `term` in the high 31 bits, `version` in the low 32, so
/// epochs grow with views (a store keeps them as signed 64-bit integers).
/// A grant made under a later view always carries a higher epoch.
pub fn view_epoch((term, version): (u64, u64)) -> u64 {
    (term.min((1 << 31) - 1) << 32) | version.min((1 << 32) - 1)
}

/// A placement of a grain as its holder granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The owner epoch: the fencing token the owner's appends carry.
    pub epoch: u64,
    /// Tells this grant from earlier and later ones of the same grain (a
    /// release names the grant it ends, so one that crossed a new claim
    /// on the wire ends nothing).
    pub id: u64,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The claimant owns the grain (now or again) under this grant.
    Accepted(Grant),
    /// Another member owns it; forward the call there.
    Owned { owner: NodeId },
    /// This node does not hold the grain's entry; ask `holder`.
    NotHolder { holder: NodeId },
    /// The grain cannot be granted yet (its partition is being rebuilt, or
    /// its last owner left and may still be serving); retry shortly.
    Rebuilding,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    owner: NodeId,
    grant: Grant,
    /// The owner left the view: the grain may be granted again from this
    /// time on (it has fenced itself by then).
    free_after: Option<u64>,
}

/// The directory partition one node holds.
#[derive(Debug, Clone)]
pub struct OwnershipDirectory {
    me: NodeId,
    members: BTreeSet<NodeId>,
    /// The committed view's version and the epoch of grants made under it.
    version: u64,
    epoch: u64,
    /// The id of the next grant.
    next_grant: u64,
    owners: HashMap<String, Entry>,
    /// The member sets of the views since this partition was last whole,
    /// oldest first. `None`: no view is known whole (a start, or a view
    /// was skipped), so nothing is settled until the rebuild completes.
    history: Option<Vec<BTreeSet<NodeId>>>,
    /// Members whose reports are still awaited (this one's own included).
    awaiting: BTreeSet<NodeId>,
    /// No unsettled grain is granted before this time.
    hold_until: u64,
}

impl OwnershipDirectory {
    /// An empty directory over `config` at `now`: nothing is settled until
    /// `hold` has passed and every member has reported. `seed` starts the
    /// grant ids (any value, different in every run of the process).
    pub fn new(me: NodeId, config: &ClusterConfig, now: u64, hold: u64, seed: u64) -> Self {
        let mut directory = OwnershipDirectory {
            me,
            members: BTreeSet::new(),
            version: 0,
            epoch: 0,
            next_grant: seed,
            owners: HashMap::new(),
            history: None,
            awaiting: BTreeSet::new(),
            hold_until: 0,
        };
        directory.view_changed(config, now, hold);
        directory
    }

    /// Whose partition `grain` is in.
    pub fn holder(&self, grain: &str) -> Option<&NodeId> {
        partition_holder(grain, &self.members)
    }

    /// The epoch of placements granted now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `claimant` wants to host `grain`.
    pub fn claim(&mut self, grain: &str, claimant: &NodeId, now: u64) -> ClaimOutcome {
        match self.holder(grain) {
            Some(holder) if holder != &self.me => {
                return ClaimOutcome::NotHolder {
                    holder: holder.clone(),
                };
            }
            None => return ClaimOutcome::Rebuilding,
            Some(_) => {}
        }
        if !self.members.contains(claimant) {
            // Only members host grains.
            return ClaimOutcome::Rebuilding;
        }
        self.refresh(now);
        let settled = self.is_settled(grain);
        let grant = Grant {
            epoch: self.epoch,
            id: self.next_grant,
        };
        match self.owners.get_mut(grain) {
            Some(entry) if entry.free_after.is_none() => {
                if &entry.owner != claimant {
                    return ClaimOutcome::Owned {
                        owner: entry.owner.clone(),
                    };
                }
                // Claimed again by its owner (it may have released it, the
                // release still on its way): a new grant of the same
                // epoch, so that release ends nothing.
                entry.grant.id = grant.id;
                self.next_grant = self.next_grant.wrapping_add(1);
                return ClaimOutcome::Accepted(entry.grant);
            }
            Some(Entry {
                free_after: Some(free_after),
                ..
            }) if now < *free_after => return ClaimOutcome::Rebuilding,
            Some(_) => {}
            None if !settled => return ClaimOutcome::Rebuilding,
            None => {}
        }
        self.next_grant = self.next_grant.wrapping_add(1);
        self.owners.insert(
            grain.to_owned(),
            Entry {
                owner: claimant.clone(),
                grant,
                free_after: None,
            },
        );
        ClaimOutcome::Accepted(grant)
    }

    /// Whether this partition's entries are complete for `grain` (see the
    /// module docs).
    fn is_settled(&self, grain: &str) -> bool {
        self.history.as_ref().is_some_and(|views| {
            views
                .iter()
                .all(|members| partition_holder(grain, members) == Some(&self.me))
        })
    }

    /// Once the hold has passed and every report is in, the partition is
    /// whole again.
    fn refresh(&mut self, now: u64) -> bool {
        // No view yet is no partition at all, let alone a whole one.
        let whole = !self.members.is_empty() && self.awaiting.is_empty() && now >= self.hold_until;
        if whole && self.history.as_ref().is_none_or(|views| views.len() > 1) {
            self.history = Some(vec![self.members.clone()]);
        }
        whole
    }

    /// `owner` stopped hosting `grain` under grant `grant` (it passivated).
    pub fn release(&mut self, grain: &str, owner: &NodeId, grant: u64) {
        if self
            .owners
            .get(grain)
            .is_some_and(|e| &e.owner == owner && e.grant.id == grant && e.free_after.is_none())
        {
            self.owners.remove(grain);
        }
    }

    /// `member` hosts nothing any more (it left gracefully and said so, or
    /// it is this member and it fenced): its grains may be claimed at once.
    pub fn drop_member(&mut self, member: &NodeId) {
        self.owners.retain(|_, entry| &entry.owner != member);
        self.awaiting.remove(member);
    }

    /// A new committed view, at `now`. Entries outside this member's new
    /// partition go; entries whose owner left are held for `hold`; if some
    /// grain may have moved here (see the module docs), the partition waits
    /// for `hold` and for every member's report, this member's own
    /// included (pass each to [`OwnershipDirectory::rebuild_from`]).
    pub fn view_changed(&mut self, config: &ClusterConfig, now: u64, hold: u64) {
        let next: BTreeSet<NodeId> = config.ids().cloned().collect();
        let whole_before = self.refresh(now);
        let follows = config.version == self.version + 1;
        self.history = match self.history.take() {
            Some(mut views) if follows => {
                views.push(next.clone());
                Some(views)
            }
            _ => None,
        };
        // A history of joins only leaves every grain where it was.
        if let Some(views) = &self.history
            && views.windows(2).all(|pair| pair[1].is_superset(&pair[0]))
            && (whole_before || views.len() == 1)
        {
            self.history = Some(vec![next.clone()]);
        }
        self.members = next;
        self.version = config.version;
        self.epoch = view_epoch(config.stamp());
        if self.history.is_none() {
            // Views were skipped: another holder may have granted any of
            // these grains meanwhile, so no entry here can be trusted. The
            // rebuild gathers them again.
            self.owners.clear();
        }
        let (me, members) = (&self.me, &self.members);
        self.owners
            .retain(|grain, _| partition_holder(grain, members) == Some(me));
        for entry in self.owners.values_mut() {
            if !members.contains(&entry.owner) {
                entry.free_after.get_or_insert(now.saturating_add(hold));
            } else if entry.free_after.is_some() {
                // Its owner is a member again. Admitted back before its
                // lease ran out, it may never have fenced and still host
                // the grain; if it did fence, the entry only sends calls
                // to it, and it claims the grain again.
                entry.free_after = None;
            }
        }
        if self.history.as_ref().is_some_and(|views| views.len() == 1) {
            self.awaiting.clear();
            self.hold_until = now;
        } else {
            self.awaiting = self.members.clone();
            self.hold_until = now.saturating_add(hold);
        }
    }

    /// A page of `member`'s report of the grains of this partition it
    /// hosts, with their grants; `complete` on its last page. Grains
    /// already settled here keep their entries (this partition granted
    /// them); for the others an entry present wins, except one held for an
    /// owner that left: a member that reports hosting the grain is the
    /// truer answer.
    pub fn rebuild_from(
        &mut self,
        member: &NodeId,
        grains: impl IntoIterator<Item = (String, Grant)>,
        complete: bool,
    ) {
        if !self.members.contains(member) {
            return;
        }
        for (grain, grant) in grains {
            if self.holder(&grain) != Some(&self.me) || self.is_settled(&grain) {
                continue;
            }
            let reported = Entry {
                owner: member.clone(),
                grant,
                free_after: None,
            };
            match self.owners.get_mut(&grain) {
                Some(entry) if entry.free_after.is_some() => *entry = reported,
                Some(_) => {}
                None => {
                    self.owners.insert(grain, reported);
                }
            }
        }
        if complete {
            self.awaiting.remove(member);
        }
    }

    /// The recorded owner of `grain`, if this partition has one.
    pub fn owner(&self, grain: &str) -> Option<&NodeId> {
        self.owners
            .get(grain)
            .filter(|e| e.free_after.is_none())
            .map(|e| &e.owner)
    }

    /// Grains this partition records for `owner`.
    pub fn owned_by(&self, owner: &NodeId) -> usize {
        self.owners.values().filter(|e| &e.owner == owner).count()
    }

    /// Members whose reports the rebuild still awaits.
    pub fn awaiting(&self) -> &BTreeSet<NodeId> {
        &self.awaiting
    }

    /// When the hold of the last view change ends.
    pub fn hold_until(&self) -> u64 {
        self.hold_until
    }

    /// Whether every grain of the partition is answered (nothing awaited,
    /// the hold over).
    pub fn is_ready(&self, now: u64) -> bool {
        self.awaiting.is_empty() && now >= self.hold_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Member;

    fn config(version: u64, ids: &[&str]) -> ClusterConfig {
        ClusterConfig {
            version,
            term: 1,
            members: ids
                .iter()
                .map(|id| {
                    (
                        NodeId::new(*id),
                        Member {
                            id: NodeId::new(*id),
                            address: format!("{id}:7070"),
                            http: String::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn id(name: &str) -> NodeId {
        NodeId::new(name)
    }

    #[test]
    fn every_node_computes_the_same_holder() {
        let a = config(1, &["a", "b", "c"]);
        let b = config(1, &["c", "a", "b"]);
        for n in 0..100 {
            let grain = format!("g{n}");
            assert_eq!(
                partition_holder(&grain, a.ids()),
                partition_holder(&grain, b.ids())
            );
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_partitions() {
        let before = config(1, &["a", "b", "c", "d"]);
        let after = config(2, &["a", "b", "c"]);
        for n in 0..1_000 {
            let grain = format!("g{n}");
            let old = partition_holder(&grain, before.ids()).cloned();
            let new = partition_holder(&grain, after.ids()).cloned();
            if old != Some(id("d")) {
                assert_eq!(old, new, "{grain} moved though its holder stayed");
            }
        }
    }

    #[test]
    fn partitions_are_spread_evenly() {
        let members = config(1, &["a", "b", "c"]);
        let mut counts = std::collections::BTreeMap::new();
        for n in 0..3_000 {
            *counts
                .entry(partition_holder(&format!("cart-{n}"), members.ids()).cloned())
                .or_insert(0) += 1;
        }
        for count in counts.values() {
            assert!((800..1200).contains(count), "{counts:?}");
        }
    }

    #[test]
    fn epochs_grow_with_views() {
        assert!(view_epoch((1, 9)) < view_epoch((1, 10)));
        assert!(view_epoch((1, u32::MAX as u64)) < view_epoch((2, 1)));
        assert!(view_epoch((u64::MAX, u64::MAX)) <= i64::MAX as u64);
    }

    fn ready_directory(me: &str, members: &ClusterConfig) -> OwnershipDirectory {
        let mut directory = OwnershipDirectory::new(id(me), members, 0, 0, 1);
        for member in members.ids() {
            directory.rebuild_from(member, Vec::new(), true);
        }
        directory
    }

    fn grain_held_by(holder: &str, members: &ClusterConfig) -> String {
        (0..)
            .map(|n| format!("g{n}"))
            .find(|g| partition_holder(g, members.ids()) == Some(&id(holder)))
            .expect("some grain")
    }

    #[test]
    fn a_second_claim_is_rejected_naming_the_owner() {
        let members = config(1, &["a", "b", "c"]);
        let mut directory = ready_directory("a", &members);
        let grain = grain_held_by("a", &members);
        let epoch = view_epoch(members.stamp());
        let ClaimOutcome::Accepted(first) = directory.claim(&grain, &id("b"), 0) else {
            panic!("the first claim is granted");
        };
        assert_eq!(first.epoch, epoch);
        assert_eq!(
            directory.claim(&grain, &id("c"), 0),
            ClaimOutcome::Owned { owner: id("b") }
        );
        let ClaimOutcome::Accepted(again) = directory.claim(&grain, &id("b"), 0) else {
            panic!("the owner's claim is granted again");
        };
        assert_eq!(again.epoch, epoch);
        assert_ne!(again.id, first.id, "a new grant");
    }

    #[test]
    fn a_claim_at_the_wrong_node_names_the_holder() {
        let members = config(1, &["a", "b", "c"]);
        let mut directory = ready_directory("a", &members);
        let grain = grain_held_by("b", &members);
        assert_eq!(
            directory.claim(&grain, &id("c"), 0),
            ClaimOutcome::NotHolder { holder: id("b") }
        );
    }

    #[test]
    fn after_a_start_claims_wait_for_every_report_and_the_hold() {
        let members = config(1, &["a", "b", "c"]);
        let mut directory = OwnershipDirectory::new(id("a"), &members, 0, 100, 1);
        let grain = grain_held_by("a", &members);
        assert_eq!(
            directory.claim(&grain, &id("c"), 200),
            ClaimOutcome::Rebuilding
        );
        directory.rebuild_from(
            &id("b"),
            vec![(grain.clone(), Grant { epoch: 3, id: 9 })],
            false,
        );
        assert_eq!(
            directory.claim(&grain, &id("c"), 200),
            ClaimOutcome::Owned { owner: id("b") },
            "an entry a member reported is answered before the rebuild ends"
        );
        let other = (0..)
            .map(|n| format!("x{n}"))
            .find(|g| partition_holder(g, members.ids()) == Some(&id("a")))
            .expect("grain");
        for member in ["a", "b", "c"] {
            assert_eq!(
                directory.claim(&other, &id("c"), 200),
                ClaimOutcome::Rebuilding,
                "a partial report is not the whole partition"
            );
            directory.rebuild_from(&id(member), Vec::new(), true);
        }
        assert!(directory.is_ready(200));
        assert!(matches!(
            directory.claim(&other, &id("c"), 200),
            ClaimOutcome::Accepted(_)
        ));
        assert!(
            matches!(
                directory.claim(&grain, &id("b"), 200),
                ClaimOutcome::Accepted(Grant { epoch: 3, .. })
            ),
            "the owner keeps the epoch it reported"
        );
    }

    #[test]
    fn a_join_leaves_every_old_holder_answering_at_once() {
        let before = config(1, &["a", "b"]);
        let mut directory = ready_directory("a", &before);
        let kept = (0..)
            .map(|n| format!("g{n}"))
            .find(|g| {
                partition_holder(g, before.ids()) == Some(&id("a"))
                    && partition_holder(g, config(2, &["a", "b", "c"]).ids()) == Some(&id("a"))
            })
            .expect("grain");
        directory.view_changed(&config(2, &["a", "b", "c"]), 1_000, 850);
        assert!(directory.is_ready(1_000), "nothing moved here: no rebuild");
        assert!(matches!(
            directory.claim(&kept, &id("c"), 1_000),
            ClaimOutcome::Accepted(_)
        ));
    }

    #[test]
    fn after_a_removal_only_the_grains_that_moved_wait() {
        let before = config(1, &["a", "b", "c"]);
        let after = config(2, &["a", "c"]);
        let mut directory = ready_directory("a", &before);
        let stayed = (0..)
            .map(|n| format!("s{n}"))
            .find(|g| partition_holder(g, before.ids()) == Some(&id("a")))
            .expect("grain");
        let moved = (0..)
            .map(|n| format!("m{n}"))
            .find(|g| {
                partition_holder(g, before.ids()) == Some(&id("b"))
                    && partition_holder(g, after.ids()) == Some(&id("a"))
            })
            .expect("grain");
        // b hosted one of a's grains: it must not be granted before b has
        // fenced itself.
        let bs = (0..)
            .map(|n| format!("o{n}"))
            .find(|g| {
                partition_holder(g, before.ids()) == Some(&id("a"))
                    && partition_holder(g, after.ids()) == Some(&id("a"))
            })
            .inspect(|g| {
                assert!(matches!(
                    directory.claim(g, &id("b"), 0),
                    ClaimOutcome::Accepted(_)
                ));
            })
            .expect("grain");
        directory.view_changed(&after, 1_000, 850);
        assert!(matches!(
            directory.claim(&stayed, &id("c"), 1_000),
            ClaimOutcome::Accepted(_)
        ));
        assert_eq!(
            directory.claim(&moved, &id("c"), 1_000),
            ClaimOutcome::Rebuilding
        );
        assert_eq!(
            directory.claim(&bs, &id("c"), 1_849),
            ClaimOutcome::Rebuilding,
            "the removed owner may still be serving until the hold ends"
        );
        assert!(matches!(
            directory.claim(&bs, &id("c"), 1_850),
            ClaimOutcome::Accepted(_)
        ));
        directory.rebuild_from(&id("a"), Vec::new(), true);
        directory.rebuild_from(&id("c"), Vec::new(), true);
        assert_eq!(
            directory.claim(&moved, &id("c"), 1_849),
            ClaimOutcome::Rebuilding
        );
        assert!(matches!(
            directory.claim(&moved, &id("c"), 1_850),
            ClaimOutcome::Accepted(_)
        ));
        assert_eq!(directory.owned_by(&id("b")), 0);
    }

    #[test]
    fn a_skipped_view_leaves_nothing_settled() {
        let mut directory = ready_directory("a", &config(1, &["a", "b"]));
        let grain = grain_held_by("a", &config(3, &["a", "b", "c"]));
        directory.view_changed(&config(3, &["a", "b", "c"]), 0, 850);
        assert_eq!(
            directory.claim(&grain, &id("b"), 10_000),
            ClaimOutcome::Rebuilding,
            "views 1 to 3 may have granted this elsewhere: wait for the reports"
        );
    }

    #[test]
    fn a_released_grain_can_be_claimed_by_another_member() {
        let members = config(1, &["a", "b", "c"]);
        let mut directory = ready_directory("a", &members);
        let grain = grain_held_by("a", &members);
        let ClaimOutcome::Accepted(first) = directory.claim(&grain, &id("b"), 0) else {
            panic!("granted");
        };
        directory.release(&grain, &id("c"), first.id);
        assert_eq!(
            directory.owner(&grain),
            Some(&id("b")),
            "only the owner releases"
        );
        // b claims it again while its release is on the wire: the release
        // names the old grant and ends nothing.
        let ClaimOutcome::Accepted(second) = directory.claim(&grain, &id("b"), 0) else {
            panic!("granted again");
        };
        directory.release(&grain, &id("b"), first.id);
        assert_eq!(directory.owner(&grain), Some(&id("b")), "a stale release");
        directory.release(&grain, &id("b"), second.id);
        assert!(matches!(
            directory.claim(&grain, &id("c"), 0),
            ClaimOutcome::Accepted(_)
        ));
    }
}
