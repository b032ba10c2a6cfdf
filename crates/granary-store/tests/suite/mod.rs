//! Engine-neutral properties of an [`EventStore`].
//!
//! Every `pub async fn` here takes a fresh, empty store and asserts one
//! property of the contract. They name no engine: each engine's test file
//! (`tests/embedded.rs` for [`granary_store::SqliteStore`], later one for
//! PostgreSQL) declares `mod suite;` and runs every function against a fresh
//! store of its own.

pub mod crash;

/// Calls `$run!(…)` with the name of every engine-neutral test in this
/// module, so each engine's test file runs all of them: a test added here
/// runs on every engine.
#[macro_export]
macro_rules! every_suite_test {
    ($run:ident) => {
        $run!(
            unknown_grain_loads_empty,
            append_to_new_stream_returns_new_version_and_loads_in_order,
            stale_expected_version_conflicts_and_writes_nothing,
            empty_append_is_refused_as_invalid,
            load_returns_newest_snapshot_and_only_later_events,
            older_snapshot_never_replaces_newer,
            idempotency_record_stored_with_append_is_found,
            idempotency_keys_are_scoped_to_their_grain,
            reused_idempotency_key_fails_and_writes_nothing,
            concurrent_appends_to_different_grains_all_succeed_and_share_commits,
            concurrent_appends_to_one_grain_at_same_version_exactly_one_wins,
            refused_appends_do_not_disturb_concurrent_appends,
            streams_are_isolated_by_kind_and_id,
            cluster_id_is_recorded_once,
            an_append_from_an_older_owner_epoch_is_refused_and_writes_nothing,
            reminders_are_set_and_cancelled_with_their_appends_and_come_due_in_order,
            a_commit_observer_hears_every_commit_with_its_appends,
        );
    };
}

use std::sync::Arc;

use granary_store::{
    AppendRequest, EventStore, GrainKey, IdempotencyRecord, LoadedGrain, Reminder, ReminderChange,
    Snapshot, StoreError,
};
use tokio::sync::Barrier;

/// A grain of kind `cart` with the given id.
pub fn cart(id: &str) -> GrainKey {
    GrainKey::new("cart", id)
}

/// `count` distinct, recognisable payloads: `<tag>-<n>` for n in `from..from+count`.
pub fn payloads(tag: &str, from: u64, count: u64) -> Vec<Vec<u8>> {
    (from..from + count)
        .map(|n| format!("{tag}-{n}").into_bytes())
        .collect()
}

/// An append without an idempotency record.
pub fn append_request(
    key: &GrainKey,
    expected_version: u64,
    events: Vec<Vec<u8>>,
) -> AppendRequest {
    AppendRequest {
        key: key.clone(),
        expected_version,
        events,
        idempotency: None,
        epoch: 0,
        reminders: Vec::new(),
    }
}

/// Asserts that `loaded` holds, without a snapshot, exactly the events
/// `payloads` at versions 1..=n.
pub fn assert_stream(loaded: &LoadedGrain, expected: &[Vec<u8>]) {
    assert_eq!(loaded.snapshot, None, "no snapshot was saved");
    assert_eq!(loaded.version, expected.len() as u64, "stream version");
    let versions: Vec<u64> = loaded.events.iter().map(|e| e.version).collect();
    let wanted: Vec<u64> = (1..=expected.len() as u64).collect();
    assert_eq!(versions, wanted, "event versions");
    for (event, payload) in loaded.events.iter().zip(expected) {
        assert_eq!(
            &event.payload, payload,
            "payload of version {}",
            event.version
        );
    }
}

/// A grain nobody wrote to loads as empty: version 0, no events, no snapshot.
pub async fn unknown_grain_loads_empty(store: Arc<dyn EventStore>) {
    let loaded = store.load(&cart("nobody")).await.expect("load");
    assert_eq!(loaded, LoadedGrain::default());
}

/// Appending to a new stream at expected version 0 returns the new version,
/// and load returns the events in order, numbered 1..n, payloads intact.
pub async fn append_to_new_stream_returns_new_version_and_loads_in_order(
    store: Arc<dyn EventStore>,
) {
    let key = cart("c1");
    let first = payloads("c1", 1, 3);
    let version = store
        .append(append_request(&key, 0, first.clone()))
        .await
        .expect("first append");
    assert_eq!(version, 3);

    let second = payloads("c1", 4, 2);
    let version = store
        .append(append_request(&key, 3, second.clone()))
        .await
        .expect("second append");
    assert_eq!(version, 5);

    // A binary payload (NUL bytes, invalid UTF-8) and an empty one survive.
    let third = vec![vec![0u8, 255, 0, 1, 2], Vec::new()];
    let version = store
        .append(append_request(&key, 5, third.clone()))
        .await
        .expect("third append");
    assert_eq!(version, 7);

    let all: Vec<Vec<u8>> = first.into_iter().chain(second).chain(third).collect();
    assert_stream(&store.load(&key).await.expect("load"), &all);
}

/// An append whose expected version is not the stream's version (behind or
/// ahead) fails with `Conflict { expected, actual }` and writes nothing.
pub async fn stale_expected_version_conflicts_and_writes_nothing(store: Arc<dyn EventStore>) {
    let key = cart("c1");
    let events = payloads("c1", 1, 3);
    store
        .append(append_request(&key, 0, events.clone()))
        .await
        .expect("append");
    let before = store.load(&key).await.expect("load");

    for expected in [0, 1, 2, 4, 10] {
        let err = store
            .append(append_request(&key, expected, payloads("stale", 0, 2)))
            .await
            .expect_err("an append at a wrong expected version must fail");
        match err {
            StoreError::Conflict {
                key: conflict_key,
                expected: e,
                actual,
            } => {
                assert_eq!(conflict_key, key);
                assert_eq!(e, expected);
                assert_eq!(actual, 3);
            }
            other => panic!("expected a Conflict at expected={expected}, got {other:?}"),
        }
    }

    let after = store.load(&key).await.expect("load");
    assert_eq!(after, before, "a conflicting append changed the stream");
    assert_stream(&after, &events);
    assert_eq!(store.stats().conflicts, 5);
}

/// An append with no events is refused with `Invalid` and creates no stream.
pub async fn empty_append_is_refused_as_invalid(store: Arc<dyn EventStore>) {
    let key = cart("c1");
    let err = store
        .append(append_request(&key, 0, Vec::new()))
        .await
        .expect_err("an empty append must be refused");
    assert!(matches!(err, StoreError::Invalid(_)), "got {err:?}");
    assert_eq!(
        store.load(&key).await.expect("load"),
        LoadedGrain::default()
    );

    // Nor on an existing stream.
    store
        .append(append_request(&key, 0, payloads("c1", 1, 1)))
        .await
        .expect("append");
    let err = store
        .append(append_request(&key, 1, Vec::new()))
        .await
        .expect_err("an empty append must be refused");
    assert!(matches!(err, StoreError::Invalid(_)), "got {err:?}");
    assert_eq!(store.load(&key).await.expect("load").version, 1);
}

/// Load returns the newest snapshot and only the events after it; the
/// stream version is that of the last event.
pub async fn load_returns_newest_snapshot_and_only_later_events(store: Arc<dyn EventStore>) {
    let key = cart("c1");
    let events = payloads("c1", 1, 6);
    store
        .append(append_request(&key, 0, events.clone()))
        .await
        .expect("append");

    store
        .save_snapshot(
            &key,
            Snapshot {
                version: 2,
                payload: b"state@2".to_vec(),
            },
        )
        .await
        .expect("snapshot 2");
    store
        .save_snapshot(
            &key,
            Snapshot {
                version: 4,
                payload: b"state@4".to_vec(),
            },
        )
        .await
        .expect("snapshot 4");

    let loaded = store.load(&key).await.expect("load");
    assert_eq!(
        loaded.snapshot,
        Some(Snapshot {
            version: 4,
            payload: b"state@4".to_vec()
        })
    );
    let versions: Vec<u64> = loaded.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![5, 6]);
    assert_eq!(loaded.events[0].payload, events[4]);
    assert_eq!(loaded.events[1].payload, events[5]);
    assert_eq!(loaded.version, 6);

    // A snapshot of the whole stream leaves no events to replay.
    store
        .save_snapshot(
            &key,
            Snapshot {
                version: 6,
                payload: b"state@6".to_vec(),
            },
        )
        .await
        .expect("snapshot 6");
    let loaded = store.load(&key).await.expect("load");
    assert_eq!(
        loaded.snapshot,
        Some(Snapshot {
            version: 6,
            payload: b"state@6".to_vec()
        })
    );
    assert!(
        loaded.events.is_empty(),
        "events at or before the snapshot: {:?}",
        loaded.events
    );
    assert_eq!(loaded.version, 6);

    // Appending after a snapshot continues from the stream version.
    let version = store
        .append(append_request(&key, 6, payloads("c1", 7, 1)))
        .await
        .expect("append after snapshot");
    assert_eq!(version, 7);
    let loaded = store.load(&key).await.expect("load");
    assert_eq!(loaded.snapshot.map(|s| s.version), Some(6));
    assert_eq!(
        loaded.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![7]
    );
    assert_eq!(loaded.version, 7);
}

/// Saving an older snapshot (or one of the same version) never replaces a newer one.
pub async fn older_snapshot_never_replaces_newer(store: Arc<dyn EventStore>) {
    let key = cart("c1");
    store
        .append(append_request(&key, 0, payloads("c1", 1, 5)))
        .await
        .expect("append");
    let newest = Snapshot {
        version: 4,
        payload: b"state@4".to_vec(),
    };
    store
        .save_snapshot(&key, newest.clone())
        .await
        .expect("snapshot 4");

    store
        .save_snapshot(
            &key,
            Snapshot {
                version: 2,
                payload: b"state@2".to_vec(),
            },
        )
        .await
        .expect("saving an older snapshot is not an error");
    store
        .save_snapshot(
            &key,
            Snapshot {
                version: 4,
                payload: b"other@4".to_vec(),
            },
        )
        .await
        .expect("saving an equal snapshot is not an error");

    let loaded = store.load(&key).await.expect("load");
    assert_eq!(loaded.snapshot, Some(newest));
    assert_eq!(
        loaded.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![5]
    );
    assert_eq!(loaded.version, 5);
}

/// An idempotency record stored with an append is found by `find_idempotent`.
pub async fn idempotency_record_stored_with_append_is_found(store: Arc<dyn EventStore>) {
    let key = cart("c1");
    assert_eq!(
        store.find_idempotent(&key, "req-1").await.expect("find"),
        None
    );

    let record = IdempotencyRecord {
        key: "req-1".into(),
        // The top bit set: the hash must survive whatever integer type the
        // engine stores it in.
        request_hash: 0xdead_beef_cafe_f00d,
        reply: b"{\"ok\":true}".to_vec(),
    };
    let version = store
        .append(AppendRequest {
            idempotency: Some(record.clone()),
            ..append_request(&key, 0, payloads("c1", 1, 2))
        })
        .await
        .expect("append");
    assert_eq!(version, 2);

    assert_eq!(
        store.find_idempotent(&key, "req-1").await.expect("find"),
        Some(record)
    );
    assert_eq!(
        store.find_idempotent(&key, "req-2").await.expect("find"),
        None
    );
}

/// Idempotency keys belong to one grain: the same key is unknown to, and
/// may be used again by, another grain (another id or another kind).
pub async fn idempotency_keys_are_scoped_to_their_grain(store: Arc<dyn EventStore>) {
    let first = cart("c1");
    let other_id = cart("c2");
    let other_kind = GrainKey::new("wishlist", "c1");
    let record = |reply: &[u8]| IdempotencyRecord {
        key: "req-1".into(),
        request_hash: 7,
        reply: reply.to_vec(),
    };

    store
        .append(AppendRequest {
            idempotency: Some(record(b"first")),
            ..append_request(&first, 0, payloads("c1", 1, 1))
        })
        .await
        .expect("append");
    assert_eq!(
        store
            .find_idempotent(&other_id, "req-1")
            .await
            .expect("find"),
        None
    );
    assert_eq!(
        store
            .find_idempotent(&other_kind, "req-1")
            .await
            .expect("find"),
        None
    );

    for (key, reply) in [
        (&other_id, &b"other id"[..]),
        (&other_kind, &b"other kind"[..]),
    ] {
        store
            .append(AppendRequest {
                idempotency: Some(record(reply)),
                ..append_request(key, 0, payloads("x", 1, 1))
            })
            .await
            .unwrap_or_else(|e| {
                panic!("the same idempotency key on {key} must be accepted: {e:?}")
            });
    }
    assert_eq!(
        store.find_idempotent(&first, "req-1").await.expect("find"),
        Some(record(b"first"))
    );
    assert_eq!(
        store
            .find_idempotent(&other_id, "req-1")
            .await
            .expect("find"),
        Some(record(b"other id"))
    );
    assert_eq!(
        store
            .find_idempotent(&other_kind, "req-1")
            .await
            .expect("find"),
        Some(record(b"other kind"))
    );
}

/// A second append reusing an idempotency key of the same grain fails, even
/// at the right expected version, and writes nothing: neither its events
/// nor a replacement of the first record.
pub async fn reused_idempotency_key_fails_and_writes_nothing(store: Arc<dyn EventStore>) {
    let key = cart("c1");
    let original = IdempotencyRecord {
        key: "req-1".into(),
        request_hash: 1,
        reply: b"first reply".to_vec(),
    };
    let events = payloads("c1", 1, 2);
    store
        .append(AppendRequest {
            idempotency: Some(original.clone()),
            ..append_request(&key, 0, events.clone())
        })
        .await
        .expect("first append");
    let before = store.load(&key).await.expect("load");

    let err = store
        .append(AppendRequest {
            idempotency: Some(IdempotencyRecord {
                key: "req-1".into(),
                request_hash: 2,
                reply: b"second reply".to_vec(),
            }),
            ..append_request(&key, 2, payloads("dup", 1, 3))
        })
        .await
        .expect_err("reusing an idempotency key must fail");
    assert!(
        matches!(err, StoreError::DuplicateIdempotencyKey { ref idempotency_key, .. } if idempotency_key == "req-1"),
        "reusing an idempotency key is a refused request, got {err:?}"
    );
    assert!(!err.is_retryable());

    let after = store.load(&key).await.expect("load");
    assert_eq!(after, before, "the refused append wrote events");
    assert_stream(&after, &events);
    assert_eq!(
        store.find_idempotent(&key, "req-1").await.expect("find"),
        Some(original)
    );

    // The stream is still writable at its real version.
    let version = store
        .append(append_request(&key, 2, payloads("c1", 3, 1)))
        .await
        .expect("append");
    assert_eq!(version, 3);
}

/// 64 tasks appending to 64 different grains at once all succeed, and the
/// engine shares commits between them (group commit): fewer commits than
/// appends.
pub async fn concurrent_appends_to_different_grains_all_succeed_and_share_commits(
    store: Arc<dyn EventStore>,
) {
    const WRITERS: usize = 64;
    let start = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::with_capacity(WRITERS);
    for n in 0..WRITERS {
        let store = store.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let key = cart(&format!("c{n}"));
            start.wait().await;
            let version = store
                .append(append_request(&key, 0, payloads(&key.id, 1, 2)))
                .await
                .unwrap_or_else(|e| panic!("append to {key} failed: {e:?}"));
            (key, version)
        }));
    }
    for task in tasks {
        let (key, version) = task.await.expect("writer task");
        assert_eq!(version, 2, "{key}");
        assert_stream(
            &store.load(&key).await.expect("load"),
            &payloads(&key.id, 1, 2),
        );
    }

    let stats = store.stats();
    assert_eq!(stats.appends, WRITERS as u64, "{stats:?}");
    assert!(
        stats.commits < stats.appends,
        "no commit carried two appends: {stats:?}"
    );
}

/// An observer told of each commit (the node's metrics): the commits it
/// hears add up to the engine's counters, a refused append is in none of
/// them, and an engine takes one observer only.
pub async fn a_commit_observer_hears_every_commit_with_its_appends(store: Arc<dyn EventStore>) {
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<(u64, std::time::Duration)>>);
    impl granary_store::CommitObserver for Heard {
        fn committed(&self, appends: u64, took: std::time::Duration) {
            self.0.lock().expect("lock").push((appends, took));
        }
    }
    let heard = Arc::new(Heard::default());
    assert!(
        store.observe_commits(heard.clone()),
        "the first observer is taken"
    );
    assert!(
        !store.observe_commits(Arc::new(Heard::default())),
        "a second observer is refused"
    );
    let before = store.stats();
    const WRITERS: usize = 24;
    let start = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::with_capacity(WRITERS);
    for n in 0..WRITERS {
        let (store, start) = (store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let key = cart(&format!("observed-{n}"));
            start.wait().await;
            store
                .append(append_request(&key, 0, payloads(&key.id, 1, 1)))
                .await
        }));
    }
    for task in tasks {
        task.await.expect("writer").expect("append");
    }
    // Refused: stale expected version.
    let refused = store
        .append(append_request(
            &cart("observed-0"),
            0,
            payloads("late", 1, 1),
        ))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    let after = store.stats();
    let heard = heard.0.lock().expect("lock").clone();
    let appends: u64 = heard.iter().map(|(appends, _)| appends).sum();
    assert_eq!(appends, WRITERS as u64, "{heard:?}");
    assert_eq!(after.appends - before.appends, WRITERS as u64, "{after:?}");
    assert_eq!(
        heard.len() as u64,
        after.commits - before.commits,
        "every commit counted is heard: {before:?} -> {after:?}"
    );
    assert!(
        heard
            .iter()
            .all(|(_, took)| *took > std::time::Duration::ZERO)
    );
}

/// Many writers of ONE grain, all expecting the same version: exactly one
/// succeeds, every other gets `Conflict`, and only the winner's events are stored.
pub async fn concurrent_appends_to_one_grain_at_same_version_exactly_one_wins(
    store: Arc<dyn EventStore>,
) {
    const WRITERS: usize = 16;
    let key = cart("contended");
    store
        .append(append_request(&key, 0, payloads("seed", 1, 2)))
        .await
        .expect("seed");

    let start = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::with_capacity(WRITERS);
    for n in 0..WRITERS {
        let store = store.clone();
        let start = start.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            (
                n,
                store
                    .append(append_request(&key, 2, payloads(&format!("w{n}"), 3, 2)))
                    .await,
            )
        }));
    }

    let mut winners = Vec::new();
    for task in tasks {
        let (n, result) = task.await.expect("writer task");
        match result {
            Ok(version) => {
                assert_eq!(version, 4);
                winners.push(n);
            }
            Err(StoreError::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(expected, 2);
                assert_eq!(actual, 4);
            }
            Err(other) => panic!("writer {n}: expected success or Conflict, got {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");

    let winner = winners[0];
    let expected: Vec<Vec<u8>> = payloads("seed", 1, 2)
        .into_iter()
        .chain(payloads(&format!("w{winner}"), 3, 2))
        .collect();
    assert_stream(&store.load(&key).await.expect("load"), &expected);
}

/// A refused append (conflict, reused idempotency key) committed alongside
/// others in the same moment undoes only itself: every valid concurrent
/// append is stored.
pub async fn refused_appends_do_not_disturb_concurrent_appends(store: Arc<dyn EventStore>) {
    const GRAINS: usize = 24;
    let used = IdempotencyRecord {
        key: "used".into(),
        request_hash: 1,
        reply: b"r".to_vec(),
    };
    for n in 0..GRAINS {
        store
            .append(AppendRequest {
                idempotency: Some(used.clone()),
                ..append_request(&cart(&format!("c{n}")), 0, payloads("seed", 1, 1))
            })
            .await
            .expect("seed");
    }

    // For each grain, at once: a valid append, a stale one and one reusing
    // the idempotency key (its version check would pass if it ran first, so
    // either Conflict or DuplicateIdempotencyKey is a correct refusal).
    let start = Arc::new(Barrier::new(GRAINS * 3));
    let mut tasks = Vec::new();
    for n in 0..GRAINS {
        let key = cart(&format!("c{n}"));
        let requests = [
            (true, append_request(&key, 1, payloads("good", 2, 2))),
            (false, append_request(&key, 0, payloads("stale", 1, 1))),
            (
                false,
                AppendRequest {
                    idempotency: Some(used.clone()),
                    ..append_request(&key, 1, payloads("dup", 2, 1))
                },
            ),
        ];
        for (valid, request) in requests {
            let store = store.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                (valid, store.append(request).await)
            }));
        }
    }
    for task in tasks {
        let (valid, result) = task.await.expect("task");
        if valid {
            // Neither of its rivals can succeed, so the valid append must.
            assert_eq!(result, Ok(3));
        } else {
            match result {
                Err(StoreError::Conflict { .. } | StoreError::DuplicateIdempotencyKey { .. }) => {}
                other => panic!("a stale or duplicate append must be refused, got {other:?}"),
            }
        }
    }

    for n in 0..GRAINS {
        let key = cart(&format!("c{n}"));
        let expected: Vec<Vec<u8>> = payloads("seed", 1, 1)
            .into_iter()
            .chain(payloads("good", 2, 2))
            .collect();
        assert_stream(&store.load(&key).await.expect("load"), &expected);
        assert_eq!(
            store.find_idempotent(&key, "used").await.expect("find"),
            Some(used.clone())
        );
    }
}

/// Streams are isolated: the kind and the id are both part of the key, so
/// interleaved appends to `cart/a`, `cart/b`, `wishlist/a` each keep their
/// own versions and events.
pub async fn streams_are_isolated_by_kind_and_id(store: Arc<dyn EventStore>) {
    let keys = [
        GrainKey::new("cart", "a"),
        GrainKey::new("cart", "b"),
        GrainKey::new("wishlist", "a"),
        GrainKey::new("wishlist", "b"),
        // Keys that would collide if kind and id were naively concatenated.
        GrainKey::new("cart/a", ""),
        GrainKey::new("", "cart/a"),
        GrainKey::new("cart", "a/"),
    ];
    let tag = |key: &GrainKey| format!("{}|{}", key.kind, key.id);

    // Interleave: round r appends one event to every key, each at r.
    for round in 0..4u64 {
        for (i, key) in keys.iter().enumerate() {
            // Key i skips the first i rounds so that the streams differ in length.
            if round < (i as u64).min(3) {
                continue;
            }
            let expected = round - (i as u64).min(3);
            let version = store
                .append(append_request(
                    key,
                    expected,
                    payloads(&tag(key), expected + 1, 1),
                ))
                .await
                .unwrap_or_else(|e| panic!("append to {key:?} at {expected}: {e:?}"));
            assert_eq!(version, expected + 1, "{key:?}");
        }
    }
    // A snapshot of one stream is not seen by its same-id neighbour.
    store
        .save_snapshot(
            &keys[0],
            Snapshot {
                version: 1,
                payload: b"cart-a".to_vec(),
            },
        )
        .await
        .expect("snapshot");

    for (i, key) in keys.iter().enumerate() {
        let length = 4 - (i as u64).min(3);
        let loaded = store.load(key).await.expect("load");
        if i == 0 {
            assert_eq!(loaded.snapshot.as_ref().map(|s| s.version), Some(1));
            assert_eq!(loaded.events.first().map(|e| e.version), Some(2));
            assert_eq!(loaded.version, length);
        } else {
            assert_stream(&loaded, &payloads(&tag(key), 1, length));
        }
    }
    assert_eq!(
        store
            .load(&GrainKey::new("wishlist", "c"))
            .await
            .expect("load"),
        LoadedGrain::default()
    );
}

/// The cluster id: none in a fresh store; the first proposal is recorded,
/// later ones do not replace it, and reading without a proposal finds it.
pub async fn cluster_id_is_recorded_once(store: Arc<dyn EventStore>) {
    assert_eq!(store.cluster_id(None).await, Ok(None));
    assert_eq!(
        store.cluster_id(Some("first".into())).await,
        Ok(Some("first".into()))
    );
    assert_eq!(
        store.cluster_id(Some("second".into())).await,
        Ok(Some("first".into()))
    );
    assert_eq!(store.cluster_id(None).await, Ok(Some("first".into())));
}

/// The owner epoch is a fencing token: once an owner with a newer epoch
/// has appended, an append from an older one is refused, whatever version
/// it expects, events or an idempotency record alone; the same or a newer
/// epoch may append. `load` reports the epoch of the last writer.
pub async fn an_append_from_an_older_owner_epoch_is_refused_and_writes_nothing(
    store: Arc<dyn EventStore>,
) {
    let key = cart("fenced");
    let at = |expected: u64, epoch: u64, tag: &str| AppendRequest {
        epoch,
        ..append_request(&key, expected, payloads(tag, expected + 1, 1))
    };
    assert_eq!(store.load(&key).await.expect("load").epoch, 0);
    store.append(at(0, 5, "a")).await.expect("first owner");
    assert_eq!(store.load(&key).await.expect("load").epoch, 5);
    match store.append(at(1, 3, "stale")).await {
        Err(StoreError::Fenced { epoch, newer, .. }) => assert_eq!((epoch, newer), (3, 5)),
        other => panic!("an older epoch must be fenced, got {other:?}"),
    }
    // Even at a stale expected version, the epoch is what refuses it.
    assert!(matches!(
        store.append(at(0, 4, "stale")).await,
        Err(StoreError::Fenced { newer: 5, .. })
    ));
    let record_only = AppendRequest {
        events: Vec::new(),
        idempotency: Some(IdempotencyRecord {
            key: "k".into(),
            request_hash: 1,
            reply: b"r".to_vec(),
        }),
        ..at(1, 4, "none")
    };
    assert!(matches!(
        store.append(record_only).await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        store.find_idempotent(&key, "k").await.expect("find"),
        None,
        "a fenced append stores no idempotency record"
    );
    store
        .append(at(1, 5, "b"))
        .await
        .expect("the same owner again");
    store.append(at(2, 9, "c")).await.expect("a newer owner");
    assert!(matches!(
        store.append(at(3, 5, "stale")).await,
        Err(StoreError::Fenced { newer: 9, .. })
    ));
    let loaded = store.load(&key).await.expect("load");
    assert_eq!((loaded.version, loaded.epoch), (3, 9));
    let written: Vec<&[u8]> = loaded.events.iter().map(|e| e.payload.as_slice()).collect();
    assert_eq!(written, [b"a-1".as_slice(), b"b-2", b"c-3"]);
}

/// Reminders are durable timers set (and cancelled) in the same
/// transaction as the append that asks for them: one whose append is
/// refused is never set. They come due in order; finishing one removes it
/// only if it was not moved meanwhile.
pub async fn reminders_are_set_and_cancelled_with_their_appends_and_come_due_in_order(
    store: Arc<dyn EventStore>,
) {
    let (a, b) = (cart("remind-a"), cart("remind-b"));
    let set = |id: &str, due: u64| {
        ReminderChange::Set(Reminder {
            id: id.into(),
            due,
            payload: format!("{id}@{due}").into_bytes(),
        })
    };
    let with = |key: &GrainKey, expected: u64, changes: Vec<ReminderChange>| AppendRequest {
        reminders: changes,
        ..append_request(key, expected, payloads("r", expected + 1, 1))
    };
    store
        .append(with(&a, 0, vec![set("expire", 2_000), set("nudge", 5_000)]))
        .await
        .expect("append with reminders");
    store
        .append(with(&b, 0, vec![set("expire", 1_000)]))
        .await
        .expect("append with a reminder");
    // A refused append sets nothing.
    assert!(matches!(
        store.append(with(&b, 0, vec![set("never", 10)])).await,
        Err(StoreError::Conflict { .. })
    ));
    let due = |now| {
        let store = store.clone();
        async move {
            store
                .due_reminders(now, 10)
                .await
                .expect("due reminders")
                .into_iter()
                .map(|d| (d.key.id, d.reminder.id, d.reminder.due))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(due(999).await, []);
    assert_eq!(
        due(2_000).await,
        [
            ("remind-b".to_owned(), "expire".to_owned(), 1_000),
            ("remind-a".to_owned(), "expire".to_owned(), 2_000)
        ]
    );
    let payload = store.due_reminders(1_000, 1).await.unwrap()[0]
        .reminder
        .payload
        .clone();
    assert_eq!(payload, b"expire@1000");
    // Moved (set again) while it was being delivered: finishing the old
    // time leaves the new one.
    store
        .append(with(&b, 1, vec![set("expire", 3_000)]))
        .await
        .expect("move it");
    store
        .finish_reminder(&b, "expire", 1_000)
        .await
        .expect("finish");
    assert_eq!(due(2_500).await.len(), 1, "only a's is due now");
    store
        .finish_reminder(&b, "expire", 3_000)
        .await
        .expect("finish");
    // Cancelled with an append.
    store
        .append(with(
            &a,
            1,
            vec![ReminderChange::Cancel { id: "nudge".into() }],
        ))
        .await
        .expect("cancel");
    assert_eq!(
        due(u64::MAX >> 2).await,
        [("remind-a".to_owned(), "expire".to_owned(), 2_000)]
    );
}
