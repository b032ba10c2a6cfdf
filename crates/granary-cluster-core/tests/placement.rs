//! One member's placement, step by step: claims and their deadlines,
//! releases on passivation, the paged rebuild after a view change and its
//! retries.

use granary_cluster_core::{
    CLAIM_DEADLINE_MS, ClaimAnswer, ClusterConfig, Command, GrainPage, Grant, Locate, Member,
    NodeId, Placement, Timing, Unplaced, partition_holder,
};

fn id(name: &str) -> NodeId {
    NodeId::new(name)
}

fn view(version: u64, ids: &[&str]) -> ClusterConfig {
    ClusterConfig {
        version,
        term: 1,
        members: ids
            .iter()
            .map(|n| {
                (
                    id(n),
                    Member {
                        id: id(n),
                        address: format!("{n}:7070"),
                        http: String::new(),
                    },
                )
            })
            .collect(),
    }
}

/// A grain whose holder in `config` is `holder`.
fn grain_held_by(holder: &str, config: &ClusterConfig) -> String {
    (0..)
        .map(|n| format!("g{n}"))
        .find(|g| partition_holder(g, config.ids()) == Some(&id(holder)))
        .expect("a grain")
}

/// `me`'s placement over `config`, leased, with its partition rebuilt
/// (every other member reported nothing).
fn ready(me: &str, config: &ClusterConfig) -> Placement {
    let hold = Timing::default().directory_hold(config.members.len());
    let mut placement = Placement::new(id(me), config.clone(), 0, Timing::default(), 0, 7);
    placement.set_lease(u64::MAX);
    placement.tick(hold);
    for command in placement.drain_commands() {
        if let Command::FetchGrains { token, to, .. } = command {
            placement.grains_page(&to.id, token, GrainPage::default(), hold);
        }
    }
    assert!(placement.is_ready(hold), "rebuilt");
    placement
}

fn fetches(placement: &mut Placement) -> Vec<(u64, NodeId, Option<String>)> {
    placement
        .drain_commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::FetchGrains {
                token, to, after, ..
            } => Some((token, to.id, after)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rebuild_keeps_asking_an_unreachable_member_with_growing_backoff() {
    let config = view(1, &["a", "b", "c"]);
    let hold = Timing::default().directory_hold(3);
    let mut a = Placement::new(id("a"), config.clone(), 0, Timing::default(), 0, 1);
    a.set_lease(u64::MAX);
    a.tick(hold - 1);
    assert!(
        fetches(&mut a).is_empty(),
        "nothing is fetched during the hold"
    );
    a.tick(hold);
    let asked = fetches(&mut a);
    assert_eq!(asked.len(), 2, "b and c are asked: {asked:?}");
    // c answers; b never does (its every fetch fails).
    for (token, to, _) in &asked {
        if to == &id("c") {
            a.grains_page(to, *token, GrainPage::default(), hold);
        } else {
            a.grains_failed(to, *token, hold);
        }
    }
    let mut now = hold;
    let mut last_retry = now;
    let mut gaps = Vec::new();
    // Two minutes of failures: b is asked again and again, never given up.
    while now < hold + 120_000 {
        now += 10;
        a.tick(now);
        for (token, to, _) in fetches(&mut a) {
            assert_eq!(to, id("b"));
            gaps.push(now - last_retry);
            last_retry = now;
            a.grains_failed(&to, token, now);
        }
        assert!(!a.is_ready(now), "never ready without b's list");
    }
    assert!(gaps.len() > 20, "b is asked again and again: {gaps:?}");
    assert!(
        gaps.windows(2).take(5).all(|w| w[1] >= w[0]),
        "the backoff grows: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g <= 5_010),
        "and stays bounded: {gaps:?}"
    );
    // b answers at last: the partition is whole.
    loop {
        now += 10;
        a.tick(now);
        if let Some((token, to, _)) = fetches(&mut a).pop() {
            a.grains_page(&to, token, GrainPage::default(), now);
            break;
        }
    }
    assert!(a.is_ready(now));
}

#[test]
fn a_partition_is_not_whole_until_the_last_page_of_every_list() {
    let config = view(1, &["a", "b"]);
    let hold = Timing::default().directory_hold(2);
    let mut a = Placement::new(id("a"), config.clone(), 0, Timing::default(), 0, 1);
    a.set_lease(u64::MAX);
    a.tick(hold);
    let theirs: Vec<String> = (0..)
        .map(|n| format!("p{n}"))
        .filter(|g| partition_holder(g, config.ids()) == Some(&id("a")))
        .take(5)
        .collect();
    let (mut token, to, after) = fetches(&mut a).pop().expect("b is asked");
    assert_eq!((to, after), (id("b"), None));
    // b hosts five of a's grains; it answers two per page.
    for (n, pair) in theirs.chunks(2).enumerate() {
        let last = (n + 1) * 2 >= theirs.len();
        let page = GrainPage {
            grains: pair
                .iter()
                .map(|g| (g.clone(), Grant { epoch: 3, id: 9 }))
                .collect(),
            next: (!last).then(|| pair.last().expect("grain").clone()),
        };
        a.grains_page(&id("b"), token, page, hold);
        if last {
            break;
        }
        assert!(
            !a.is_ready(hold),
            "a partial list is not the whole partition"
        );
        // Reported grains are answered already: they live on b.
        assert_eq!(
            a.locate(&pair[0], hold),
            Locate::Remote(config.members[&id("b")].clone())
        );
        let (next, _, after) = fetches(&mut a).pop().expect("the next page");
        assert_eq!(after.as_deref(), pair.last().map(String::as_str));
        token = next;
    }
    assert!(a.is_ready(hold));
}

#[test]
fn a_passivated_grain_is_released_at_its_holder_naming_its_grant() {
    let config = view(1, &["a", "b"]);
    let mut a = ready("a", &config);
    let grain = grain_held_by("b", &config);
    let Locate::Claim { token, holder } = a.locate(&grain, 1_000) else {
        panic!("claimed at b");
    };
    assert_eq!(holder.id, id("b"));
    let grant = Grant { epoch: 42, id: 5 };
    assert_eq!(
        a.claim_answered(&grain, token, Some(ClaimAnswer::Granted(grant)), 1_050),
        Locate::Local { epoch: 42 }
    );
    assert_eq!(a.activate(&grain, 1), Ok(42));
    // An older activation's stop releases nothing.
    a.deactivated(&grain, 0);
    assert!(a.owns(&grain));
    a.deactivated(&grain, 1);
    assert!(!a.owns(&grain));
    a.drain_commands();
    a.tick(1_100);
    let released: Vec<_> = a
        .drain_commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Release { to, grains } => Some((to.id, grains)),
            _ => None,
        })
        .collect();
    assert_eq!(released, [(id("b"), vec![(grain.clone(), 5)])]);
    assert!(a.activate(&grain, 2).is_err(), "no longer placed here");
}

#[test]
fn a_grant_that_comes_late_or_across_a_fence_is_void() {
    let config = view(1, &["a", "b"]);
    let mut a = ready("a", &config);
    let grant = Some(ClaimAnswer::Granted(Grant { epoch: 1, id: 1 }));
    let late = grain_held_by("b", &config);
    let Locate::Claim { token, .. } = a.locate(&late, 1_000) else {
        panic!("a claim");
    };
    assert_eq!(
        a.claim_answered(&late, token, grant.clone(), 1_000 + CLAIM_DEADLINE_MS + 1),
        Locate::Waiting(Unplaced::LateGrant)
    );
    assert!(!a.owns(&late));
    let fenced = (0..)
        .map(|n| format!("f{n}"))
        .find(|g| partition_holder(g, config.ids()) == Some(&id("b")))
        .expect("grain");
    let Locate::Claim { token, .. } = a.locate(&fenced, 2_000) else {
        panic!("a claim");
    };
    a.fenced();
    assert_eq!(
        a.claim_answered(&fenced, token, grant, 2_010),
        Locate::Waiting(Unplaced::FencedMeanwhile)
    );
    assert!(!a.owns(&fenced));
}

#[test]
fn a_member_pages_only_the_grains_of_the_askers_partition_in_order() {
    let config = view(1, &["a", "b", "c"]);
    let mut a = ready("a", &config);
    // a claims grains in its own partition and gets grants for others.
    let mine: Vec<String> = (0..40).map(|n| format!("x{n}")).collect();
    for grain in &mine {
        match a.locate(grain, 1_000) {
            Locate::Local { .. } => {}
            Locate::Claim { token, .. } => {
                let granted = Some(ClaimAnswer::Granted(Grant { epoch: 1, id: 1 }));
                a.claim_answered(grain, token, granted, 1_001);
            }
            other => panic!("{other:?}"),
        }
    }
    let mut for_b = Vec::new();
    let mut after = None;
    loop {
        let page = a
            .grains_for(&id("b"), config.stamp(), after.as_deref(), 3)
            .expect("same view");
        assert!(page.grains.len() <= 3);
        for_b.extend(page.grains.into_iter().map(|(g, _)| g));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<String> = mine
        .iter()
        .filter(|g| partition_holder(g, config.ids()) == Some(&id("b")))
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(for_b, expected);
    assert_eq!(
        a.grains_for(&id("b"), (1, 2), None, 3),
        Err(config.stamp()),
        "another view is refused, naming this member's"
    );
}

#[test]
fn a_hashed_grain_goes_to_its_holder_which_places_it_on_itself() {
    let config = view(1, &["a", "b", "c"]);
    let (mut a, mut b, mut c) = (
        ready("a", &config),
        ready("b", &config),
        ready("c", &config),
    );
    let member = |name: &str| config.members[&id(name)].clone();
    let grain = grain_held_by("b", &config);

    // Nobody hosts it: a sends calls to its holder and claims nothing (a
    // claim of its own, below, is not held up by one in flight).
    for _ in 0..2 {
        assert_eq!(
            a.locate_at_holder(&grain, 1_000),
            Locate::Holder(member("b"))
        );
    }
    assert!(!a.owns(&grain));
    // The holder places it on itself as the call arrives (its own claim,
    // answered at once).
    assert!(matches!(
        b.locate_at_holder(&grain, 1_000),
        Locate::Local { .. }
    ));
    assert!(b.owns(&grain));
    // A grain held here is placed here.
    let mine = grain_held_by("a", &config);
    assert!(matches!(
        a.locate_at_holder(&mine, 1_000),
        Locate::Local { .. }
    ));

    // Placed elsewhere before (a first caller, an older version): the
    // holder does not host it, and the caller's fallback, an ordinary
    // locate, asks the holder and learns the owner, then remembers it.
    let other = (0..)
        .map(|n| format!("h{n}"))
        .find(|g| partition_holder(g, config.ids()) == Some(&id("b")))
        .expect("grain");
    let Locate::Claim { token, holder } = c.locate(&other, 1_000) else {
        panic!("c claims at b");
    };
    assert_eq!(holder.id, id("b"));
    let granted = b.claim_received(&id("c"), &other, 1_000);
    assert!(matches!(granted, ClaimAnswer::Granted(_)), "{granted:?}");
    c.claim_answered(&other, token, Some(granted), 1_010);
    assert!(c.owns(&other));
    assert_eq!(
        a.locate_at_holder(&other, 1_100),
        Locate::Holder(member("b"))
    );
    assert_eq!(
        b.locate_at_holder(&other, 1_100),
        Locate::Remote(member("c"))
    );
    let Locate::Claim { token, holder } = a.locate(&other, 1_100) else {
        panic!("a asks the holder");
    };
    assert_eq!(holder.id, id("b"));
    let owned = b.claim_received(&id("a"), &other, 1_100);
    assert_eq!(owned, ClaimAnswer::Owned { owner: id("c") });
    assert_eq!(
        a.claim_answered(&other, token, Some(owned), 1_110),
        Locate::Remote(member("c"))
    );
    assert_eq!(
        a.locate_at_holder(&other, 1_200),
        Locate::Remote(member("c"))
    );

    // c lets it go (passivated): the holder's route to c goes with the
    // release, so the next call places it at the holder instead of being
    // sent to c to be refused.
    assert!(c.activate(&other, 1).is_ok());
    c.deactivated(&other, 1);
    c.tick(1_300);
    for command in c.drain_commands() {
        if let Command::Release { to, grains } = command {
            assert_eq!(to.id, id("b"));
            b.release_received(&id("c"), &grains);
        }
    }
    assert!(matches!(
        b.locate_at_holder(&other, 1_400),
        Locate::Local { .. }
    ));
}
