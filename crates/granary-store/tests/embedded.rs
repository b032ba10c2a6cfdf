//! The store suite against the embedded engine, [`SqliteStore`], plus the
//! properties only a file-backed engine has: several processes sharing one
//! file, reopening, schema versioning and surviving `kill -9`.

#[macro_use]
mod suite;

use std::sync::Arc;

use granary_store::{
    AppendRequest, EventStore, IdempotencyRecord, Snapshot, SqliteStore, StoreError,
};
use suite::{append_request, assert_stream, cart, payloads};
use tempfile::TempDir;

/// A fresh store in its own temporary directory. Keep the directory alive
/// as long as the store.
fn fresh_store() -> (TempDir, Arc<dyn EventStore>) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = SqliteStore::open(dir.path().join("events.db")).expect("open a fresh store");
    (dir, Arc::new(store))
}

/// One `#[tokio::test]` per engine-neutral suite function, each on a fresh store.
macro_rules! sqlite_suite {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_dir, store) = fresh_store();
                suite::$name(store).await;
            }
        )*
    };
}

every_suite_test!(sqlite_suite);

/// Two stores opened on one file (as two node processes would) see each
/// other's appends, and the expected-version fence holds between them.
#[tokio::test]
async fn two_stores_on_one_file_share_streams_and_the_version_fence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let a: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&path).expect("open a"));
    let b: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&path).expect("open b"));
    let key = cart("shared");

    let first = payloads("a", 1, 2);
    assert_eq!(
        a.append(append_request(&key, 0, first.clone())).await,
        Ok(2)
    );
    assert_stream(&b.load(&key).await.expect("b loads"), &first);

    let second = payloads("b", 3, 1);
    assert_eq!(
        b.append(append_request(&key, 2, second.clone())).await,
        Ok(3)
    );
    match a
        .append(append_request(&key, 2, payloads("late", 3, 1)))
        .await
    {
        Err(StoreError::Conflict {
            expected: 2,
            actual: 3,
            ..
        }) => {}
        other => panic!("a's stale append must conflict with b's, got {other:?}"),
    }
    let all: Vec<Vec<u8>> = first.iter().cloned().chain(second).collect();
    assert_stream(&a.load(&key).await.expect("a loads"), &all);

    // Idempotency records and snapshots written by one are read by the other.
    let record = IdempotencyRecord {
        key: "req".into(),
        request_hash: 9,
        reply: b"reply".to_vec(),
    };
    let other = cart("other");
    a.append(AppendRequest {
        idempotency: Some(record.clone()),
        ..append_request(&other, 0, payloads("o", 1, 1))
    })
    .await
    .expect("append with record");
    assert_eq!(
        b.find_idempotent(&other, "req").await,
        Ok(Some(record.clone()))
    );
    let dup = b
        .append(AppendRequest {
            idempotency: Some(record),
            ..append_request(&other, 1, payloads("o", 2, 1))
        })
        .await;
    assert!(
        matches!(dup, Err(StoreError::DuplicateIdempotencyKey { .. })),
        "got {dup:?}"
    );
    b.save_snapshot(
        &key,
        Snapshot {
            version: 2,
            payload: b"s2".to_vec(),
        },
    )
    .await
    .expect("snapshot");
    assert_eq!(
        a.load(&key)
            .await
            .expect("load")
            .snapshot
            .map(|s| s.version),
        Some(2)
    );

    // A race between writers of both stores at one expected version: one wins.
    const WRITERS: usize = 16;
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for n in 0..WRITERS {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let start = start.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store
                .append(append_request(&key, 3, payloads(&format!("w{n}"), 4, 1)))
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(version) => {
                assert_eq!(version, 4);
                wins += 1;
            }
            Err(StoreError::Conflict {
                expected: 3,
                actual: 4,
                ..
            }) => {}
            Err(other) => panic!("expected success or Conflict, got {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(a.load(&key).await.expect("load").version, 4);
    assert_eq!(b.load(&key).await.expect("load").version, 4);
}

/// Every append acknowledged before the store was dropped, including ones
/// still queued when the last handle went away, is there after reopening.
#[tokio::test]
async fn reopening_finds_every_acknowledged_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.db");
    const GRAINS: u64 = 32;

    let store = SqliteStore::open(&path).expect("open");
    let mut tasks = Vec::new();
    for n in 0..GRAINS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = cart(&format!("c{n}"));
            for v in 0..3 {
                let version = store
                    .append(append_request(&key, v, payloads(&key.id, v + 1, 1)))
                    .await
                    .expect("append");
                assert_eq!(version, v + 1);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let record = IdempotencyRecord {
        key: "req".into(),
        request_hash: u64::MAX,
        reply: b"reply".to_vec(),
    };
    store
        .append(AppendRequest {
            idempotency: Some(record.clone()),
            ..append_request(&cart("c0"), 3, payloads("c0", 4, 1))
        })
        .await
        .expect("append with record");
    store
        .save_snapshot(
            &cart("c1"),
            Snapshot {
                version: 2,
                payload: b"c1@2".to_vec(),
            },
        )
        .await
        .expect("snapshot");

    // Appends submitted, then the last handle dropped before they are answered.
    let pending: Vec<_> = (0..GRAINS)
        .map(|n| {
            let key = cart(&format!("late{n}"));
            store.append(append_request(&key, 0, payloads(&key.id, 1, 2)))
        })
        .collect();
    drop(store);
    let mut acknowledged = Vec::new();
    for (n, future) in pending.into_iter().enumerate() {
        if let Ok(version) = future.await {
            assert_eq!(version, 2);
            acknowledged.push(n);
        }
    }

    let store = SqliteStore::open(&path).expect("reopen");
    for n in 0..GRAINS {
        let key = cart(&format!("c{n}"));
        let loaded = store.load(&key).await.expect("load");
        match n {
            0 => assert_stream(&loaded, &payloads("c0", 1, 4)),
            1 => {
                assert_eq!(
                    loaded.snapshot,
                    Some(Snapshot {
                        version: 2,
                        payload: b"c1@2".to_vec()
                    })
                );
                assert_eq!(
                    loaded.events.iter().map(|e| e.version).collect::<Vec<_>>(),
                    vec![3]
                );
                assert_eq!(loaded.events[0].payload, b"c1-3");
            }
            _ => assert_stream(&loaded, &payloads(&key.id, 1, 3)),
        }
    }
    assert_eq!(
        store.find_idempotent(&cart("c0"), "req").await,
        Ok(Some(record))
    );
    for n in acknowledged {
        let key = cart(&format!("late{n}"));
        assert_stream(
            &store.load(&key).await.expect("load"),
            &payloads(&key.id, 1, 2),
        );
    }
    // The reopened file is writable where the old one left off.
    assert_eq!(
        store
            .append(append_request(&cart("c2"), 3, payloads("c2", 4, 1)))
            .await,
        Ok(4)
    );
}

/// The file is in WAL mode (what lets several processes share it and
/// readers never block the writer), and that mode persists in the file.
#[tokio::test]
async fn store_file_is_in_wal_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested").join("events.db");
    let store = SqliteStore::open(&path).expect("open, creating the parent directory");
    assert_eq!(store.path(), path.as_path());
    store
        .append(append_request(&cart("c1"), 0, payloads("c1", 1, 1)))
        .await
        .expect("append");
    let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("read journal_mode");
    assert_eq!(mode.to_ascii_lowercase(), "wal");
}

/// The writer checkpoints the WAL in steps of
/// [`SqliteStore::CHECKPOINT_FRAMES`], not SQLite's default 1,000 frames,
/// and the WAL stays bounded by that step however much is written. The WAL
/// file never shrinks, so its size is the most frames it has held.
#[tokio::test]
async fn the_wal_is_checkpointed_in_large_steps_and_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).expect("open");
    let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .expect("page size");
    let page = page as u64;
    let wal = path.with_extension("db-wal");
    // The WAL's header is 32 bytes; each frame a 24-byte header and a page.
    let most_frames = || (std::fs::metadata(&wal).expect("wal").len() - 32) / (page + 24);
    // Each append is one commit of a little over `PAGES` pages (an event
    // that spills into overflow pages), each to a stream of its own.
    const PAGES: u64 = 10;
    let event = vec![7u8; (PAGES * page) as usize];
    let step = SqliteStore::CHECKPOINT_FRAMES as u64;
    let mut appended = 0u64;
    async fn append_until(store: &SqliteStore, event: &[u8], appended: &mut u64, pages: u64) {
        while *appended * PAGES < pages {
            let key = cart(&format!("c{appended}"));
            store
                .append(append_request(&key, 0, vec![event.to_vec()]))
                .await
                .expect("append");
            *appended += 1;
        }
    }
    append_until(&store, &event, &mut appended, step / 2).await;
    assert!(
        most_frames() >= step / 2,
        "{} pages appended, but the WAL held at most {} frames: checkpointed before {step}",
        appended * PAGES,
        most_frames()
    );
    append_until(&store, &event, &mut appended, 3 * step).await;
    assert!(
        most_frames() <= step + step / 8,
        "{} pages appended, and the WAL held {} frames: not checkpointed every {step}",
        appended * PAGES,
        most_frames()
    );
}

/// A file whose schema is newer than this build is refused at open with
/// `SchemaTooNew` naming the file, and is left as it was.
#[tokio::test]
async fn newer_schema_is_refused_at_open_naming_the_path() {
    const FUTURE: i64 = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.db");
    {
        let store = SqliteStore::open(&path).expect("open");
        store
            .append(append_request(&cart("c1"), 0, payloads("c1", 1, 1)))
            .await
            .expect("append");
    }
    {
        let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
        let updated = conn
            .execute(
                "UPDATE granary_meta SET value = ?1 WHERE key = 'schema_version'",
                [FUTURE.to_string()],
            )
            .expect("set schema_version");
        assert_eq!(updated, 1, "granary_meta has no schema_version row");
    }

    let err = SqliteStore::open(&path).expect_err("a newer schema must be refused");
    match &err {
        StoreError::SchemaTooNew {
            path: named,
            found,
            supported,
        } => {
            assert_eq!(named, &path.display().to_string());
            assert_eq!(*found, FUTURE);
            assert!((1..FUTURE).contains(supported), "supported = {supported}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!err.is_retryable());

    // Refusing did not migrate or rewrite anything.
    let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
    let version: String = conn
        .query_row(
            "SELECT value FROM granary_meta WHERE key = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .expect("read schema_version");
    assert_eq!(version, FUTURE.to_string());
    let events: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
        .expect("count events");
    assert_eq!(events, 1);
}

/// A process killed with SIGKILL while appending loses no append it had
/// acknowledged (the suite's crash test, on a file).
#[test]
fn sigkill_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.db");
    suite::crash::sigkill_loses_no_acknowledged_append(
        "sigkill_loses_no_acknowledged_append",
        path.to_str().expect("a UTF-8 path"),
        |location| Arc::new(SqliteStore::open(location).expect("open the store")),
    );
}
