//! The store suite against PostgreSQL, [`PostgresStore`], on a real
//! server (see `granary-testpg`: `GRANARY_TEST_PG`, or a throwaway server
//! the harness starts), plus what only a server engine has: several
//! stores on one database, schema versioning, group commit in one round
//! trip, and an outage of the server.

#[macro_use]
mod suite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use granary_store::{EventStore, PostgresStore, PostgresStoreOptions, StoreError};
use suite::{append_request, assert_stream, cart, payloads};

/// A fresh database on the shared server, or `None` (skipped) without one.
fn fresh_url() -> Option<String> {
    Some(granary_testpg::shared()?.fresh_database())
}

fn open(url: &str) -> Arc<dyn EventStore> {
    Arc::new(PostgresStore::open(url).expect("open the PostgreSQL store"))
}

/// One `#[tokio::test]` per engine-neutral suite function, each on a
/// fresh database.
macro_rules! postgres_suite {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(url) = fresh_url() else { return };
                suite::$name(open(&url)).await;
            }
        )*
    };
}

every_suite_test!(postgres_suite);

/// A process killed with SIGKILL while appending loses no append it had
/// acknowledged (the suite's crash test, on a database).
#[test]
fn sigkill_loses_no_acknowledged_append() {
    let url = match std::env::var("GRANARY_STORE_CRASH_WRITER") {
        Ok(url) => url,
        Err(_) => {
            let Some(url) = fresh_url() else { return };
            url
        }
    };
    suite::crash::sigkill_loses_no_acknowledged_append(
        "sigkill_loses_no_acknowledged_append",
        &url,
        open,
    );
}

/// Two stores on one database (two nodes on two machines) see each
/// other's appends, and the expected-version fence holds between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_share_streams_and_the_version_fence() {
    let Some(url) = fresh_url() else { return };
    let (a, b) = (open(&url), open(&url));
    let key = cart("shared");
    let first = payloads("a", 1, 2);
    assert_eq!(
        a.append(append_request(&key, 0, first.clone())).await,
        Ok(2)
    );
    assert_stream(&b.load(&key).await.expect("b loads"), &first);
    assert_eq!(
        b.append(append_request(&key, 2, payloads("b", 3, 1))).await,
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
        other => panic!("a stale writer must conflict, got {other:?}"),
    }
    assert_eq!(a.cluster_id(Some("c1".into())).await, Ok(Some("c1".into())));
    assert_eq!(b.cluster_id(None).await, Ok(Some("c1".into())));
}

/// Concurrent appends go to the server in batches: many appends per
/// round trip (one commit each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_round_trips() {
    let Some(url) = fresh_url() else { return };
    let store = open(&url);
    let mut writers = Vec::new();
    for n in 0..200 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let key = cart(&format!("g{n}"));
            store
                .append(append_request(&key, 0, payloads("e", 1, 1)))
                .await
        }));
    }
    for writer in writers {
        assert_eq!(writer.await.expect("task"), Ok(1));
    }
    let stats = store.stats();
    assert_eq!(stats.appends, 200);
    assert!(
        stats.commits < 200,
        "200 concurrent appends took {} round trips",
        stats.commits
    );
}

/// A database whose schema is newer than this build is refused at open,
/// naming the database and the versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused_at_open() {
    let Some(server) = granary_testpg::shared() else {
        return;
    };
    let url = server.fresh_database();
    drop(open(&url));
    let db = url.rsplit('/').next().expect("a database name").to_owned();
    server.psql_in(
        &db,
        "UPDATE granary_meta SET value = '999' WHERE key = 'schema_version'",
    );
    match PostgresStore::open(&url) {
        Err(err @ StoreError::SchemaTooNew { found: 999, .. }) => {
            assert!(err.to_string().contains(&db), "{err}");
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

/// A URL that is not one, or TLS settings that cannot work, are refused
/// before anything is tried, naming the parameter.
#[test]
fn a_bad_url_is_refused() {
    let refused = |url: &str, naming: &str| match PostgresStore::open(url) {
        Err(StoreError::Invalid(message)) => assert!(message.contains(naming), "{message}"),
        other => panic!("{url}: expected Invalid, got {other:?}"),
    };
    refused("postgres://host:notaport/db", "URL");
    refused("postgres://host/db?sslmode=sometimes", "sslmode");
    refused("postgres://host/db?sslmode=verify-full", "sslrootcert");
    refused(
        "postgres://host/db?sslmode=verify-ca&sslrootcert=/no/such/ca.pem",
        "sslrootcert",
    );
}

/// TLS to the server (which takes TLS only): `verify-full` with the CA
/// that signed its certificate connects and works; another CA, or a host
/// name the certificate does not carry, is refused at open; `verify-ca`
/// checks the chain but not the name; `require` encrypts without
/// checking; `disable` is refused by a TLS-only server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_server_checks_its_certificate_as_sslmode_says() {
    let certificates = granary_testpg::test_certificates();
    let (ca, server_cert, server_key) = (
        &certificates.ca,
        &certificates.server,
        &certificates.server_key,
    );
    let Some(server) =
        tokio::task::block_in_place(|| granary_testpg::private_with_tls(server_cert, server_key))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let other_path = dir.path().join("other-ca.pem");
    std::fs::write(&other_path, granary_testpg::test_certificates().ca).unwrap();

    let url = server.fresh_database();
    let with = |url: &str, query: &str| format!("{url}?{query}");
    let roots = |path: &std::path::Path| path.display().to_string();

    // Verified: the store works over TLS.
    let verified = with(
        &url,
        &format!("sslmode=verify-full&sslrootcert={}", roots(&ca_path)),
    );
    let store = tokio::task::block_in_place(|| PostgresStore::open(&verified)).expect("open");
    let store: Arc<dyn EventStore> = Arc::new(store);
    let key = cart("tls");
    assert_eq!(
        store
            .append(append_request(&key, 0, payloads("t", 1, 2)))
            .await,
        Ok(2)
    );
    assert_stream(&store.load(&key).await.expect("load"), &payloads("t", 1, 2));
    drop(store);
    // The server saw TLS sessions (from this store's connections).
    let db = url.rsplit('/').next().expect("a database name").to_owned();
    let sessions = server.psql_in(
        &db,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl",
    );
    assert!(sessions.parse::<u32>().unwrap() >= 1, "{sessions}");

    let refused =
        |url: String, why: &str| match tokio::task::block_in_place(|| PostgresStore::open(&url)) {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains(why), "{url}: {message}")
            }
            other => panic!("{url}: must be refused, got {other:?}"),
        };
    // Signed by another CA: refused.
    refused(
        with(
            &url,
            &format!("sslmode=verify-full&sslrootcert={}", roots(&other_path)),
        ),
        "certificate",
    );
    // The right CA, but a host name the certificate does not name.
    let by_name = url.replace("127.0.0.1", "localhost");
    refused(
        with(
            &by_name,
            &format!("sslmode=verify-full&sslrootcert={}", roots(&ca_path)),
        ),
        "certificate",
    );
    // verify-ca checks the chain only: the same host name is fine.
    let chain_only = with(
        &by_name,
        &format!("sslmode=verify-ca&sslrootcert={}", roots(&ca_path)),
    );
    assert!(tokio::task::block_in_place(|| PostgresStore::open(&chain_only)).is_ok());
    // require: encrypted, not checked (any CA would do).
    assert!(
        tokio::task::block_in_place(|| PostgresStore::open(&with(&url, "sslmode=require"))).is_ok()
    );
    // The server takes TLS only: plaintext is refused.
    refused(with(&url, "sslmode=disable"), "pg_hba.conf");
}

/// The server stops: appends fail fast with `Unavailable` (nothing was
/// written), never hang; once it is back the same store works again by
/// itself, and everything acknowledged before is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_fast_and_heals_by_itself() {
    let Some(server) = tokio::task::block_in_place(granary_testpg::private) else {
        return;
    };
    let url = server.fresh_database();
    let store: Arc<dyn EventStore> =
        Arc::new(PostgresStore::open_with(&url, PostgresStoreOptions::default()).expect("open"));
    let key = cart("outage");
    assert_eq!(
        store
            .append(append_request(&key, 0, payloads("o", 1, 1)))
            .await,
        Ok(1)
    );

    tokio::task::block_in_place(|| server.stop());
    for attempt in 0..20 {
        let sent = Instant::now();
        let answer = store
            .append(append_request(&key, 1, payloads("o", 2, 1)))
            .await;
        assert!(
            sent.elapsed() < Duration::from_secs(4),
            "attempt {attempt} took {:?}",
            sent.elapsed()
        );
        match answer {
            Err(StoreError::Unavailable(_)) => {}
            // The first exchange on a connection cut by the shutdown.
            Err(StoreError::Indeterminate(_)) if attempt == 0 => {}
            other => panic!("attempt {attempt} during the outage: {other:?}"),
        }
        assert!(matches!(
            store.load(&key).await,
            Err(StoreError::Unavailable(_))
        ));
    }

    tokio::task::block_in_place(|| server.restart());
    let deadline = Instant::now() + Duration::from_secs(20);
    let version = loop {
        match store.load(&key).await {
            Ok(loaded) => break loaded.version,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("the store did not come back: {other:?}"),
        }
    };
    assert_eq!(version, 1, "nothing was written during the outage");
    assert_eq!(
        store
            .append(append_request(&key, 1, payloads("o", 2, 1)))
            .await,
        Ok(2)
    );
}

/// Two stores (two nodes) race on the same streams at the same versions:
/// per round exactly one append wins, the other is refused as a conflict
/// (a race that fails the set-based batch statement, which the engine then
/// sends again append by append), and the streams have no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_of_one_stream_on_two_stores_never_both_win() {
    let Some(url) = fresh_url() else { return };
    let (a, b) = (open(&url), open(&url));
    let streams = 8;
    for round in 0..30u64 {
        let mut racers = Vec::new();
        for s in 0..streams {
            for (who, store) in [("a", a.clone()), ("b", b.clone())] {
                racers.push(tokio::spawn(async move {
                    let key = cart(&format!("race{s}"));
                    let event = format!("{who}-{round}").into_bytes();
                    store.append(append_request(&key, round, vec![event])).await
                }));
            }
        }
        let mut wins = 0;
        for racer in racers {
            match racer.await.expect("racer") {
                Ok(version) => {
                    assert_eq!(version, round + 1);
                    wins += 1;
                }
                Err(StoreError::Conflict { .. }) => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(wins, streams, "round {round}: one winner per stream");
    }
    for s in 0..streams {
        let loaded = a.load(&cart(&format!("race{s}"))).await.expect("load");
        assert_eq!(loaded.version, 30);
        let versions: Vec<u64> = loaded.events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=30).collect::<Vec<_>>());
    }
}
