//! The ownership directory: which node hosts each grain.
//!
//! The directory is partitioned over the committed members by rendezvous
//! (highest-random-weight) hashing: the *holder* of grain `g` is the member
//! with the highest `hash(g, member)`. A node that wants to activate `g`
//! asks only `g`'s holder (`ConfirmOwner`), so a claim costs one message
//! to one node whatever the cluster size; a view change moves only the
//! partitions of members that came or went.
//!
//! After a view change a holder rebuilds its partition from every member's
//! list of the grains it hosts (`GetCartIds`) and answers claims only once
//! every member has reported, so it never grants a grain that is live
//! elsewhere.

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

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The claimant owns the grain (now or already).
    Accepted,
    /// Another member owns it; forward the call there.
    Owned { owner: NodeId },
    /// This node does not hold the grain's entry; ask `holder`.
    NotHolder { holder: NodeId },
    /// The partition is being rebuilt after a view change; retry shortly.
    Rebuilding,
}

/// The directory partition one node holds.
#[derive(Debug, Clone)]
pub struct OwnershipDirectory {
    me: NodeId,
    members: BTreeSet<NodeId>,
    owners: HashMap<String, NodeId>,
    /// Members whose grain lists are still awaited after a view change.
    awaiting: BTreeSet<NodeId>,
    /// After a view change that removed members, no claim is granted
    /// before this time: the removed members must have fenced themselves
    /// (see docs/cluster-protocol.md, invariant 4).
    hold_until: u64,
}

impl OwnershipDirectory {
    /// An empty directory over `config`; it answers claims once every
    /// other member has reported its grains.
    pub fn new(me: NodeId, config: &ClusterConfig) -> Self {
        let mut directory = OwnershipDirectory {
            me,
            members: BTreeSet::new(),
            owners: HashMap::new(),
            awaiting: BTreeSet::new(),
            hold_until: 0,
        };
        directory.view_changed(config, 0, 0);
        directory
    }

    /// Whose partition `grain` is in.
    pub fn holder(&self, grain: &str) -> Option<&NodeId> {
        partition_holder(grain, &self.members)
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
        if let Some(owner) = self.owners.get(grain) {
            return if owner == claimant {
                ClaimOutcome::Accepted
            } else {
                ClaimOutcome::Owned {
                    owner: owner.clone(),
                }
            };
        }
        if !self.awaiting.is_empty() || now < self.hold_until {
            return ClaimOutcome::Rebuilding;
        }
        self.owners.insert(grain.to_owned(), claimant.clone());
        ClaimOutcome::Accepted
    }

    /// `owner` stopped hosting `grain` (passivated, or closing).
    pub fn release(&mut self, grain: &str, owner: &NodeId) {
        if self.owners.get(grain) == Some(owner) {
            self.owners.remove(grain);
        }
    }

    /// `member` left gracefully (`Closing`): its grains may be claimed at
    /// once.
    pub fn drop_member(&mut self, member: &NodeId) {
        self.owners.retain(|_, owner| owner != member);
        self.awaiting.remove(member);
    }

    /// A new committed view, at `now`: every entry is dropped and the
    /// partition waits for every member's grain list (this node's own
    /// included: pass it to [`OwnershipDirectory::rebuild_from`]) and until
    /// `now + hold` (pass the cluster's `fence_after`: claims granted under
    /// the old view by holders whose view lease has not yet run out must
    /// show up in those lists first).
    pub fn view_changed(&mut self, config: &ClusterConfig, now: u64, hold: u64) {
        let next: BTreeSet<NodeId> = config.ids().cloned().collect();
        self.hold_until = now.saturating_add(hold);
        self.members = next;
        // Entries are not carried over: a member that missed views may hold
        // an entry the others superseded. The partition is rebuilt from
        // what every member reports it hosts.
        self.owners.clear();
        self.awaiting = self
            .members
            .iter()
            .filter(|m| *m != &self.me)
            .cloned()
            .collect();
    }

    /// `member`'s report of the grains it hosts (after a view change).
    /// Entries already present win: they were granted by this partition.
    pub fn rebuild_from(&mut self, member: &NodeId, grains: impl IntoIterator<Item = String>) {
        if !self.members.contains(member) {
            return;
        }
        for grain in grains {
            if self.holder(&grain) == Some(&self.me) {
                self.owners.entry(grain).or_insert_with(|| member.clone());
            }
        }
        self.awaiting.remove(member);
    }

    /// The recorded owner of `grain`, if this partition has one.
    pub fn owner(&self, grain: &str) -> Option<&NodeId> {
        self.owners.get(grain)
    }

    /// Grains this partition records for `owner`.
    pub fn owned_by(&self, owner: &NodeId) -> usize {
        self.owners.values().filter(|o| *o == owner).count()
    }

    /// Whether claims are answered (every member has reported).
    pub fn is_ready(&self) -> bool {
        self.awaiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Member;

    fn config(ids: &[&str]) -> ClusterConfig {
        ClusterConfig {
            version: 1,
            term: 1,
            members: ids
                .iter()
                .map(|id| {
                    (
                        NodeId::new(*id),
                        Member {
                            id: NodeId::new(*id),
                            address: format!("{id}:7070"),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn every_node_computes_the_same_holder() {
        let a = config(&["a", "b", "c"]);
        let b = config(&["c", "a", "b"]);
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
        let before = config(&["a", "b", "c", "d"]);
        let after = config(&["a", "b", "c"]);
        for n in 0..1_000 {
            let grain = format!("g{n}");
            let old = partition_holder(&grain, before.ids()).cloned();
            let new = partition_holder(&grain, after.ids()).cloned();
            if old != Some(NodeId::new("d")) {
                assert_eq!(old, new, "{grain} moved though its holder stayed");
            }
        }
    }

    #[test]
    fn partitions_are_spread_evenly() {
        let members = config(&["a", "b", "c"]);
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

    fn ready_directory(me: &str, members: &ClusterConfig) -> OwnershipDirectory {
        let mut directory = OwnershipDirectory::new(NodeId::new(me), members);
        for member in members.ids() {
            directory.rebuild_from(member, Vec::new());
        }
        directory
    }

    fn grain_held_by(holder: &str, members: &ClusterConfig) -> String {
        (0..)
            .map(|n| format!("g{n}"))
            .find(|g| partition_holder(g, members.ids()) == Some(&NodeId::new(holder)))
            .expect("some grain")
    }

    #[test]
    fn a_second_claim_is_rejected_naming_the_owner() {
        let members = config(&["a", "b", "c"]);
        let mut directory = ready_directory("a", &members);
        let grain = grain_held_by("a", &members);
        assert_eq!(
            directory.claim(&grain, &NodeId::new("b"), 0),
            ClaimOutcome::Accepted
        );
        assert_eq!(
            directory.claim(&grain, &NodeId::new("c"), 0),
            ClaimOutcome::Owned {
                owner: NodeId::new("b")
            }
        );
        assert_eq!(
            directory.claim(&grain, &NodeId::new("b"), 0),
            ClaimOutcome::Accepted
        );
    }

    #[test]
    fn a_claim_at_the_wrong_node_names_the_holder() {
        let members = config(&["a", "b", "c"]);
        let mut directory = ready_directory("a", &members);
        let grain = grain_held_by("b", &members);
        assert_eq!(
            directory.claim(&grain, &NodeId::new("c"), 0),
            ClaimOutcome::NotHolder {
                holder: NodeId::new("b")
            }
        );
    }

    #[test]
    fn after_a_view_change_claims_wait_for_every_member_report() {
        let members = config(&["a", "b", "c"]);
        let mut directory = OwnershipDirectory::new(NodeId::new("a"), &members);
        let grain = grain_held_by("a", &members);
        assert_eq!(
            directory.claim(&grain, &NodeId::new("c"), 0),
            ClaimOutcome::Rebuilding
        );
        directory.rebuild_from(&NodeId::new("b"), vec![grain.clone()]);
        assert_eq!(
            directory.claim(&grain, &NodeId::new("c"), 0),
            ClaimOutcome::Owned {
                owner: NodeId::new("b")
            }
        );
        directory.rebuild_from(&NodeId::new("c"), Vec::new());
        assert!(directory.is_ready());
        assert_eq!(
            directory.claim(&grain, &NodeId::new("c"), 0),
            ClaimOutcome::Owned {
                owner: NodeId::new("b")
            }
        );
    }

    #[test]
    fn a_departed_owners_grains_can_be_claimed_again() {
        let members = config(&["a", "b", "c"]);
        let mut directory = ready_directory("a", &members);
        let grain = (0..)
            .map(|n| format!("g{n}"))
            .find(|g| {
                partition_holder(g, members.ids()) == Some(&NodeId::new("a"))
                    && partition_holder(g, config(&["a", "c"]).ids()) == Some(&NodeId::new("a"))
            })
            .expect("some grain");
        assert_eq!(
            directory.claim(&grain, &NodeId::new("b"), 0),
            ClaimOutcome::Accepted
        );
        let without_b = ClusterConfig {
            version: 2,
            ..config(&["a", "c"])
        };
        directory.view_changed(&without_b, 1_000, 900);
        directory.rebuild_from(&NodeId::new("c"), Vec::new());
        assert_eq!(
            directory.claim(&grain, &NodeId::new("c"), 1_899),
            ClaimOutcome::Rebuilding,
            "the removed owner may still be serving until the hold ends"
        );
        assert_eq!(
            directory.claim(&grain, &NodeId::new("c"), 1_900),
            ClaimOutcome::Accepted
        );
        assert_eq!(directory.owned_by(&NodeId::new("b")), 0);
    }
}
