//! The grain runtime's promises, each against a real embedded store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use granary_grain::{
    ArbiterPool, CallError, CallOptions, Grain, GrainRuntime, Placement, RuntimeConfig,
};
use granary_store::{EventStore, GrainKey, SqliteStore, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Op {
    Add(i64),
    Get,
    Panic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Refused {
    Negative,
}

impl Grain for Counter {
    const KIND: &'static str = "counter";
    type Command = Op;
    type Event = i64;
    type Rejection = Refused;
    type Reply = i64;

    fn decide(&self, command: &Op) -> Result<Vec<i64>, Refused> {
        match command {
            Op::Add(n) if self.value + n < 0 => Err(Refused::Negative),
            Op::Add(n) => Ok(vec![*n]),
            Op::Get => Ok(vec![]),
            Op::Panic => panic!("counter asked to panic"),
        }
    }

    fn apply(&mut self, event: &i64) {
        self.value += event;
    }

    fn is_read(command: &Op) -> bool {
        matches!(command, Op::Get)
    }

    fn reply(&self, _: &Op) -> i64 {
        self.value
    }
}

fn store(dir: &tempfile::TempDir) -> Arc<dyn EventStore> {
    Arc::new(SqliteStore::open(dir.path().join("events.db")).expect("open store"))
}

fn runtime(store: Arc<dyn EventStore>, config: RuntimeConfig) -> GrainRuntime<Counter> {
    GrainRuntime::new(store, config)
}

/// Polls `condition` until it holds; the runtime's counters are the event.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn concurrent_first_calls_create_exactly_one_activation_per_id() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(store(&dir), RuntimeConfig::default());
    let mut calls = Vec::new();
    for caller in 0..100 {
        let rt = rt.clone();
        calls.push(actix_rt::spawn(async move {
            rt.call(&format!("c{}", caller % 10), Op::Add(1)).await
        }));
    }
    for call in calls {
        call.await.unwrap().expect("call succeeds");
    }
    let stats = rt.stats();
    assert_eq!(stats.activations, 10);
    assert_eq!(stats.live, 10);
    for id in 0..10 {
        assert_eq!(rt.call(&format!("c{id}"), Op::Get).await.unwrap().reply, 10);
    }
}

#[actix_rt::test]
async fn calls_from_outside_actix_threads_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(store(&dir), RuntimeConfig::default());
    let remote = rt.clone();
    let reply = std::thread::spawn(move || {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(remote.call("x", Op::Add(7)))
    })
    .join()
    .unwrap()
    .expect("call from a plain tokio thread");
    assert_eq!(reply.reply, 7);
    assert_eq!(rt.call("x", Op::Get).await.unwrap().reply, 7);
}

#[actix_rt::test]
async fn acknowledged_changes_survive_a_new_runtime_on_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = runtime(store(&dir), RuntimeConfig::default());
        for _ in 0..5 {
            rt.call("a", Op::Add(2)).await.unwrap();
        }
    }
    let rt = runtime(store(&dir), RuntimeConfig::default());
    let outcome = rt.call("a", Op::Get).await.unwrap();
    assert_eq!((outcome.reply, outcome.version), (10, 5));
}

#[actix_rt::test]
async fn idle_grains_are_passivated_and_come_back_with_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        idle_timeout: Duration::from_millis(50),
        ..RuntimeConfig::default()
    };
    let rt = runtime(store(&dir), config);
    rt.call("idle", Op::Add(3)).await.unwrap();
    eventually("passivation", || rt.stats().passivations == 1).await;
    assert_eq!(rt.stats().live, 0);
    assert_eq!(rt.call("idle", Op::Get).await.unwrap().reply, 3);
    assert_eq!(rt.stats().activations, 2);
}

#[actix_rt::test]
async fn the_least_recently_used_grain_is_evicted_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        max_live: 3,
        ..RuntimeConfig::default()
    };
    let rt = runtime(store(&dir), config);
    for id in ["g0", "g1", "g2"] {
        rt.call(id, Op::Add(1)).await.unwrap();
    }
    rt.call("g0", Op::Get).await.unwrap(); // g1 is now the coldest
    rt.call("g3", Op::Add(1)).await.unwrap();
    let mut live = rt.live_ids();
    live.sort();
    assert_eq!(live, ["g0", "g2", "g3"]);
    assert_eq!(rt.stats().evictions, 1);
    // The evicted grain lost nothing.
    assert_eq!(rt.call("g1", Op::Get).await.unwrap().reply, 1);
}

#[actix_rt::test]
async fn a_panicking_grain_is_restarted_from_the_store_and_others_never_notice() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(store(&dir), RuntimeConfig::default());
    rt.call("bad", Op::Add(4)).await.unwrap();
    rt.call("good", Op::Add(9)).await.unwrap();
    let err = rt.call("bad", Op::Panic).await.unwrap_err();
    assert!(
        matches!(err, CallError::Panicked(ref m) if m.contains("asked to panic")),
        "{err:?}"
    );
    assert_eq!(rt.stats().restarts, 1);
    assert_eq!(rt.call("bad", Op::Get).await.unwrap().reply, 4);
    assert_eq!(rt.call("good", Op::Get).await.unwrap().reply, 9);
    assert_eq!(
        rt.stats().activations,
        2,
        "a restart is not a new activation"
    );
}

#[actix_rt::test]
async fn a_rejected_command_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(store(&dir), RuntimeConfig::default());
    rt.call("r", Op::Add(1)).await.unwrap();
    let err = rt.call("r", Op::Add(-5)).await.unwrap_err();
    assert_eq!(err, CallError::Rejected(Refused::Negative));
    let outcome = rt.call("r", Op::Get).await.unwrap();
    assert_eq!((outcome.reply, outcome.version), (1, 1));
}

#[actix_rt::test]
async fn an_expected_version_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(store(&dir), RuntimeConfig::default());
    rt.call("v", Op::Add(1)).await.unwrap();
    let stale = CallOptions {
        expected_version: Some(0),
        ..CallOptions::default()
    };
    let err = rt.call_with("v", Op::Add(1), stale).await.unwrap_err();
    assert_eq!(
        err,
        CallError::VersionMismatch {
            expected: 0,
            actual: 1
        }
    );
    let current = CallOptions {
        expected_version: Some(1),
        ..CallOptions::default()
    };
    assert_eq!(
        rt.call_with("v", Op::Add(1), current)
            .await
            .unwrap()
            .version,
        2
    );
}

#[actix_rt::test]
async fn a_retried_idempotent_call_gets_the_first_answer_even_after_reactivation() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(store(&dir), RuntimeConfig::default());
    let keyed = |hash| CallOptions {
        idempotency: Some(("key-1".into(), hash)),
        ..CallOptions::default()
    };
    let first = rt.call_with("i", Op::Add(5), keyed(42)).await.unwrap();
    rt.call("i", Op::Add(100)).await.unwrap();
    let again = rt.call_with("i", Op::Add(5), keyed(42)).await.unwrap();
    assert_eq!(again, first);
    rt.passivate_all();
    eventually("passivation", || rt.stats().live == 0).await;
    let after_reactivation = rt.call_with("i", Op::Add(5), keyed(42)).await.unwrap();
    assert_eq!(after_reactivation, first);
    let reused = rt.call_with("i", Op::Add(6), keyed(43)).await.unwrap_err();
    assert!(matches!(reused, CallError::IdempotencyKeyReused { .. }));
    assert_eq!(rt.call("i", Op::Get).await.unwrap().reply, 105);
}

#[actix_rt::test]
async fn two_runtimes_sharing_a_store_lose_no_update() {
    // Two runtimes on one store file stand for two processes: each keeps
    // its own activation of the same grain, and the store's version check
    // makes the stale one reload and retry instead of overwriting.
    let dir = tempfile::tempdir().unwrap();
    let a = runtime(store(&dir), RuntimeConfig::default());
    let b = runtime(store(&dir), RuntimeConfig::default());
    for round in 0..10 {
        let rt = if round % 2 == 0 { &a } else { &b };
        rt.call("shared", Op::Add(1)).await.unwrap();
    }
    let fresh = runtime(store(&dir), RuntimeConfig::default());
    let outcome = fresh.call("shared", Op::Get).await.unwrap();
    assert_eq!((outcome.reply, outcome.version), (10, 10));
    assert!(
        a.stats().conflicts + b.stats().conflicts > 0,
        "the stale activation met the fence"
    );
}

#[actix_rt::test]
async fn snapshots_are_written_and_used_on_activation() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let config = RuntimeConfig {
        snapshot_every: 4,
        ..RuntimeConfig::default()
    };
    let rt = runtime(store.clone(), config.clone());
    for _ in 0..10 {
        rt.call("s", Op::Add(1)).await.unwrap();
    }
    let key = GrainKey::new("counter", "s");
    let mut loaded = store.load(&key).await.unwrap();
    for _ in 0..200 {
        if loaded.snapshot.as_ref().is_some_and(|s| s.version == 8) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
        loaded = store.load(&key).await.unwrap();
    }
    let snapshot = loaded.snapshot.expect("a snapshot was written");
    assert_eq!(snapshot.version, 8);
    assert_eq!(
        loaded.events.len(),
        2,
        "only events after the snapshot are replayed"
    );
    let fresh = runtime(store, config);
    assert_eq!(fresh.call("s", Op::Get).await.unwrap().reply, 10);
}

#[actix_rt::test]
async fn a_retried_idempotent_call_that_changed_nothing_still_gets_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(store(&dir), RuntimeConfig::default());
    let keyed = CallOptions {
        idempotency: Some(("read-1".into(), 7)),
        ..CallOptions::default()
    };
    let first = rt.call_with("n", Op::Get, keyed.clone()).await.unwrap();
    rt.call("n", Op::Add(3)).await.unwrap();
    let again = rt.call_with("n", Op::Get, keyed).await.unwrap();
    assert_eq!(
        again, first,
        "the retry is answered as the first time, not re-run"
    );
}

#[actix_rt::test]
async fn reads_of_ids_nobody_wrote_do_not_stay_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        empty_linger: Duration::from_millis(20),
        ..RuntimeConfig::default()
    };
    let rt = runtime(store(&dir), config);
    for n in 0..50 {
        assert_eq!(
            rt.call(&format!("ghost-{n}"), Op::Get).await.unwrap().reply,
            0
        );
    }
    rt.call("real", Op::Add(1)).await.unwrap();
    eventually("empty grains to be released", || rt.stats().live == 1).await;
    assert_eq!(rt.live_ids(), ["real"]);
}

/// The real store behind a gate that holds appends until opened: lets a
/// test keep a write in flight while something else happens. Like a real
/// engine's queue, an append handed over goes ahead even if its caller
/// stops waiting.
struct GatedStore {
    inner: Arc<dyn EventStore>,
    open: Arc<tokio::sync::Semaphore>,
}

impl GatedStore {
    fn wrap(inner: Arc<dyn EventStore>) -> (Arc<dyn EventStore>, Arc<tokio::sync::Semaphore>) {
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        let store = GatedStore {
            inner,
            open: open.clone(),
        };
        (Arc::new(store), open)
    }
}

impl EventStore for GatedStore {
    fn append(&self, request: granary_store::AppendRequest) -> granary_store::StoreFuture<u64> {
        let (inner, open) = (self.inner.clone(), self.open.clone());
        let queued = tokio::spawn(async move {
            let permit = open.acquire().await.expect("gate");
            permit.forget();
            inner.append(request).await
        });
        Box::pin(async move {
            queued
                .await
                .unwrap_or_else(|e| Err(StoreError::Engine(e.to_string())))
        })
    }
    fn load(&self, key: &GrainKey) -> granary_store::StoreFuture<granary_store::LoadedGrain> {
        self.inner.load(key)
    }
    fn save_snapshot(
        &self,
        key: &GrainKey,
        snapshot: granary_store::Snapshot,
    ) -> granary_store::StoreFuture<()> {
        self.inner.save_snapshot(key, snapshot)
    }
    fn find_idempotent(
        &self,
        key: &GrainKey,
        idempotency_key: &str,
    ) -> granary_store::StoreFuture<Option<granary_store::IdempotencyRecord>> {
        self.inner.find_idempotent(key, idempotency_key)
    }
    fn cluster_id(&self, propose: Option<String>) -> granary_store::StoreFuture<Option<String>> {
        self.inner.cluster_id(propose)
    }
    fn due_reminders(
        &self,
        now: u64,
        limit: usize,
    ) -> granary_store::StoreFuture<Vec<granary_store::DueReminder>> {
        self.inner.due_reminders(now, limit)
    }
    fn finish_reminder(
        &self,
        key: &GrainKey,
        id: &str,
        due: u64,
    ) -> granary_store::StoreFuture<()> {
        self.inner.finish_reminder(key, id, due)
    }
    fn stats(&self) -> granary_store::StoreStats {
        self.inner.stats()
    }
}

/// A store whose database can be taken away: appends then fail with the
/// error set, loads with `Unavailable`.
struct FlakyStore {
    inner: Arc<dyn EventStore>,
    append_error: std::sync::Mutex<Option<StoreError>>,
    loads_down: std::sync::atomic::AtomicBool,
}

impl FlakyStore {
    fn down(&self, append_error: StoreError) {
        *self.append_error.lock().unwrap() = Some(append_error);
        self.loads_down.store(true, Ordering::SeqCst);
    }

    fn up(&self) {
        *self.append_error.lock().unwrap() = None;
        self.loads_down.store(false, Ordering::SeqCst);
    }
}

impl EventStore for FlakyStore {
    fn append(&self, request: granary_store::AppendRequest) -> granary_store::StoreFuture<u64> {
        match self.append_error.lock().unwrap().clone() {
            Some(err) => Box::pin(async move { Err(err) }),
            None => self.inner.append(request),
        }
    }
    fn load(&self, key: &GrainKey) -> granary_store::StoreFuture<granary_store::LoadedGrain> {
        if self.loads_down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Unavailable("database down".into())) });
        }
        self.inner.load(key)
    }
    fn save_snapshot(
        &self,
        key: &GrainKey,
        snapshot: granary_store::Snapshot,
    ) -> granary_store::StoreFuture<()> {
        self.inner.save_snapshot(key, snapshot)
    }
    fn find_idempotent(
        &self,
        key: &GrainKey,
        idempotency_key: &str,
    ) -> granary_store::StoreFuture<Option<granary_store::IdempotencyRecord>> {
        self.inner.find_idempotent(key, idempotency_key)
    }
    fn cluster_id(&self, propose: Option<String>) -> granary_store::StoreFuture<Option<String>> {
        self.inner.cluster_id(propose)
    }
    fn due_reminders(
        &self,
        now: u64,
        limit: usize,
    ) -> granary_store::StoreFuture<Vec<granary_store::DueReminder>> {
        self.inner.due_reminders(now, limit)
    }
    fn finish_reminder(
        &self,
        key: &GrainKey,
        id: &str,
        due: u64,
    ) -> granary_store::StoreFuture<()> {
        self.inner.finish_reminder(key, id, due)
    }
    fn stats(&self) -> granary_store::StoreStats {
        self.inner.stats()
    }
}

fn flaky(dir: &tempfile::TempDir) -> Arc<FlakyStore> {
    Arc::new(FlakyStore {
        inner: store(dir),
        append_error: std::sync::Mutex::new(None),
        loads_down: std::sync::atomic::AtomicBool::new(false),
    })
}

/// The database goes away: a write it refused wrote nothing, so the grain
/// keeps its state and keeps answering reads from memory; once it is back,
/// writes continue from that state.
#[actix_rt::test]
async fn a_live_grain_answers_reads_from_memory_while_the_store_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(&dir);
    let rt = runtime(store.clone(), RuntimeConfig::default());
    assert_eq!(rt.call("a", Op::Add(5)).await.unwrap().reply, 5);
    store.down(StoreError::Unavailable("database down".into()));
    assert!(matches!(
        rt.call("a", Op::Add(1)).await,
        Err(CallError::Store(StoreError::Unavailable(_)))
    ));
    for _ in 0..3 {
        let read = rt.call("a", Op::Get).await.expect("a read from memory");
        assert_eq!((read.reply, read.version), (5, 1));
    }
    store.up();
    let write = rt.call("a", Op::Add(1)).await.expect("writes resume");
    assert_eq!((write.reply, write.version), (6, 2));
}

/// A write whose outcome is unknown may be durable: the grain does not
/// answer from the state it had (it may be behind) until it caught up with
/// the store.
#[actix_rt::test]
async fn after_an_unknown_outcome_the_grain_catches_up_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(&dir);
    let rt = runtime(store.clone(), RuntimeConfig::default());
    assert_eq!(rt.call("a", Op::Add(5)).await.unwrap().reply, 5);
    // The change lands in the store, but the answer is lost.
    let key = GrainKey::new("counter", "a");
    let landed = store
        .inner
        .append(granary_store::AppendRequest {
            key,
            expected_version: 1,
            events: vec![b"2".to_vec()],
            idempotency: None,
            epoch: 0,
            reminders: Vec::new(),
        })
        .await;
    assert_eq!(landed, Ok(2));
    store.down(StoreError::Indeterminate("connection lost".into()));
    assert!(matches!(
        rt.call("a", Op::Add(2)).await,
        Err(CallError::Store(StoreError::Indeterminate(_)))
    ));
    assert!(
        rt.call("a", Op::Get).await.is_err(),
        "a read must not be answered from a state that may be behind"
    );
    store.up();
    let read = rt.call("a", Op::Get).await.expect("caught up");
    assert_eq!((read.reply, read.version), (7, 2));
}

#[actix_rt::test]
async fn an_evicted_grain_with_a_write_in_flight_is_not_loaded_again_before_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (gated, gate) = GatedStore::wrap(store(&dir));
    let config = RuntimeConfig {
        max_live: 1,
        ..RuntimeConfig::default()
    };
    let rt = runtime(gated, config);
    let writer = rt.clone();
    let write = actix_rt::spawn(async move { writer.call("a", Op::Add(1)).await });
    eventually("the write to be taken", || rt.stats().activations == 1).await;
    // Activating "b" evicts "a" while its write waits at the gate; the next
    // activation of "a" must not read the store before that write settles.
    let other = rt.clone();
    let b = actix_rt::spawn(async move { other.call("b", Op::Get).await });
    let reader = rt.clone();
    let read = actix_rt::spawn(async move { reader.call("a", Op::Get).await });
    eventually("both activations", || rt.stats().activations == 3).await;
    gate.add_permits(1);
    assert_eq!(write.await.unwrap().unwrap().reply, 1);
    b.await.unwrap().unwrap();
    let read = read.await.unwrap().unwrap();
    assert_eq!(
        (read.reply, read.version),
        (1, 1),
        "the successor saw the write"
    );
}

#[actix_rt::test]
async fn a_write_the_store_does_not_answer_in_time_is_answered_unknown_and_never_resent() {
    let dir = tempfile::tempdir().unwrap();
    let (gated, gate) = GatedStore::wrap(store(&dir));
    let config = RuntimeConfig {
        store_timeout: Duration::from_millis(100),
        ..RuntimeConfig::default()
    };
    let rt = runtime(gated, config);
    let err = rt.call("t", Op::Add(1)).await.unwrap_err();
    assert!(
        matches!(err, CallError::Store(StoreError::Indeterminate(ref m)) if m.contains("unknown")),
        "{err:?}"
    );
    gate.add_permits(10);
    // Nothing resent the call: the store holds at most that one change (the
    // held append may still commit, as a real engine's queued one would),
    // and the grain still takes new ones.
    let before = rt.call("t", Op::Get).await.unwrap();
    assert!(before.version <= 1, "{before:?}");
    let after = rt.call("t", Op::Add(1)).await.unwrap();
    assert!(after.version <= 2, "{after:?}");
    assert_eq!(after.reply, after.version as i64, "one change per event");
}

#[actix_rt::test]
async fn an_if_match_newer_than_the_activation_reloads_instead_of_refusing() {
    let dir = tempfile::tempdir().unwrap();
    let a = runtime(store(&dir), RuntimeConfig::default());
    let b = runtime(store(&dir), RuntimeConfig::default());
    a.call("m", Op::Add(1)).await.unwrap();
    b.call("m", Op::Add(1)).await.unwrap(); // a's activation is now stale at 1
    let fresh = CallOptions {
        expected_version: Some(2),
        ..CallOptions::default()
    };
    let outcome = a.call_with("m", Op::Add(1), fresh).await.unwrap();
    assert_eq!((outcome.reply, outcome.version), (3, 3));
    let future = CallOptions {
        expected_version: Some(9),
        ..CallOptions::default()
    };
    let err = a.call_with("m", Op::Add(1), future).await.unwrap_err();
    assert_eq!(
        err,
        CallError::VersionMismatch {
            expected: 9,
            actual: 3
        }
    );
}

/// A placement table for the runtime's side of the contract: grains it
/// places here with their epochs, and every activation and stop it hears.
#[derive(Default)]
struct Placed {
    epochs: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    activated: std::sync::Mutex<Vec<(String, u64)>>,
    deactivated: std::sync::Mutex<Vec<(String, u64)>>,
}

impl granary_grain::Ownership for Placed {
    fn activate(
        &self,
        _kind: &'static str,
        id: &str,
        activation: u64,
    ) -> Result<granary_grain::Tenure, granary_grain::Refusal> {
        let epoch = self
            .epochs
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .ok_or_else(|| granary_grain::Refusal::NotOwner(format!("{id} is placed elsewhere")))?;
        self.activated
            .lock()
            .unwrap()
            .push((id.to_owned(), activation));
        Ok(granary_grain::Tenure { epoch })
    }
    fn deactivated(&self, _kind: &'static str, id: &str, activation: u64) {
        self.deactivated
            .lock()
            .unwrap()
            .push((id.to_owned(), activation));
    }
}

fn placed(grains: &[(&str, u64)]) -> Arc<Placed> {
    let placed = Placed::default();
    placed
        .epochs
        .lock()
        .unwrap()
        .extend(grains.iter().map(|(id, epoch)| ((*id).to_owned(), *epoch)));
    Arc::new(placed)
}

#[actix_rt::test]
async fn a_grain_placed_elsewhere_is_never_activated_and_a_placed_one_writes_with_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let ownership = placed(&[("mine", 7)]);
    let rt = GrainRuntime::<Counter>::in_cluster(
        store.clone(),
        RuntimeConfig::default(),
        ownership.clone(),
        Arc::new(granary_grain::Lease::unbounded()),
    );
    assert!(matches!(
        rt.call("theirs", Op::Add(1)).await,
        Err(CallError::NotOwner(_))
    ));
    assert_eq!(rt.stats().activations, 0);
    assert_eq!(rt.call("mine", Op::Add(2)).await.unwrap().reply, 2);
    let loaded = store.load(&GrainKey::new("counter", "mine")).await.unwrap();
    assert_eq!((loaded.version, loaded.epoch), (1, 7));
    // Its stop is reported with the activation it started as.
    rt.passivate_all();
    eventually("the stop to be reported", || {
        !ownership.deactivated.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *ownership.deactivated.lock().unwrap(),
        *ownership.activated.lock().unwrap()
    );
}

#[actix_rt::test]
async fn a_placement_older_than_the_streams_last_writer_is_refused_by_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let newer = GrainRuntime::<Counter>::in_cluster(
        store.clone(),
        RuntimeConfig::default(),
        placed(&[("g", 9)]),
        Arc::new(granary_grain::Lease::unbounded()),
    );
    let stale_placement = placed(&[("g", 5)]);
    let stale = GrainRuntime::<Counter>::in_cluster(
        store.clone(),
        RuntimeConfig::default(),
        stale_placement.clone(),
        Arc::new(granary_grain::Lease::unbounded()),
    );
    // The stale owner loaded the grain before the newer one wrote.
    assert_eq!(stale.call("g", Op::Get).await.unwrap().version, 0);
    newer.call("g", Op::Add(1)).await.unwrap();
    let refused = stale.call("g", Op::Add(100)).await;
    assert!(
        matches!(refused, Err(CallError::NotOwner(_))),
        "a stale owner's append is fenced by the store: {refused:?}"
    );
    // It stopped, and a new activation at the old epoch refuses to load.
    eventually("the stale activation to stop", || {
        !stale_placement.deactivated.lock().unwrap().is_empty()
    })
    .await;
    assert!(matches!(
        stale.call("g", Op::Get).await,
        Err(CallError::NotOwner(_))
    ));
    let loaded = store.load(&GrainKey::new("counter", "g")).await.unwrap();
    assert_eq!((loaded.version, loaded.epoch), (1, 9));
}

#[actix_rt::test]
async fn calls_queued_when_the_member_fences_are_refused_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let (gated, gate) = GatedStore::wrap(store(&dir));
    let lease = Arc::new(granary_grain::Lease::unbounded());
    let rt = GrainRuntime::<Counter>::in_cluster(
        gated,
        RuntimeConfig::default(),
        placed(&[("g", 1)]),
        lease.clone(),
    );
    // A write holds the mailbox at the gate; two more calls queue behind it.
    let first = rt.clone();
    let first = actix_rt::spawn(async move { first.call("g", Op::Add(1)).await });
    eventually("the first write to be taken", || {
        rt.stats().activations == 1
    })
    .await;
    let queued: Vec<_> = [Op::Add(10), Op::Add(100)]
        .into_iter()
        .map(|op| {
            let rt = rt.clone();
            actix_rt::spawn(async move { rt.call("g", op).await })
        })
        .collect();
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    // The member fences and, by the time the queue is taken, serves again.
    lease.fence();
    lease.extend_to(u64::MAX);
    // A read is not answered from the activation that fenced either: it
    // queues, and is refused with the rest.
    let read = rt.clone();
    let read = actix_rt::spawn(async move { read.call("g", Op::Get).await });
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    gate.add_permits(10);
    let refused = read.await.unwrap();
    assert!(
        matches!(refused, Err(CallError::Fenced(_))),
        "a read after a fence must not come from the fenced activation: {refused:?}"
    );
    assert_eq!(rt.stats().reads, 0, "no read was answered off the mailbox");
    assert_eq!(
        first.await.unwrap().unwrap().reply,
        1,
        "taken before the fence"
    );
    for call in queued {
        let refused = call.await.unwrap();
        assert!(
            matches!(refused, Err(CallError::Fenced(_))),
            "a call queued across a fence must be refused: {refused:?}"
        );
    }
    // A fresh activation (after the fence) serves, and the refused write
    // never happened.
    eventually("the fenced activation to stop", || rt.stats().live == 0).await;
    assert_eq!(rt.call("g", Op::Get).await.unwrap().reply, 1);
}

#[actix_rt::test]
async fn a_member_past_its_lease_answers_nothing_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let lease = Arc::new(granary_grain::Lease::unbounded());
    let rt = GrainRuntime::<Counter>::in_cluster(
        store(&dir),
        RuntimeConfig::default(),
        placed(&[("g", 1)]),
        lease.clone(),
    );
    rt.call("g", Op::Add(3)).await.unwrap();
    // As after a pause: the deadline passed, and nobody has fenced yet.
    lease.extend_to(lease.now());
    for op in [Op::Get, Op::Add(1)] {
        assert!(matches!(rt.call("g", op).await, Err(CallError::Fenced(_))));
    }
    lease.extend_to(u64::MAX);
    assert_eq!(rt.call("g", Op::Get).await.unwrap().reply, 3);
}

/// Reads are answered from the committed state without waiting for the
/// mailbox: while a write is in flight they show the state before it
/// (never a change the store has not taken), and once the write is
/// acknowledged every read shows it.
#[actix_rt::test]
async fn reads_skip_a_busy_mailbox_and_show_only_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (gated, gate) = GatedStore::wrap(store(&dir));
    let rt = runtime(gated, RuntimeConfig::default());
    gate.add_permits(1);
    assert_eq!(rt.call("g", Op::Add(1)).await.unwrap().reply, 1);
    // The next write waits at the gate, holding the grain's mailbox.
    let write = rt.clone();
    let write = actix_rt::spawn(async move { write.call("g", Op::Add(5)).await });
    for _ in 0..3 {
        let read = rt.call("g", Op::Get).await.expect("a read");
        assert_eq!((read.reply, read.version), (1, 1), "not the unstored write");
    }
    assert_eq!(rt.stats().reads, 3, "answered without the mailbox");
    // A read that expects the version the write makes waits for it in the
    // mailbox.
    let next = rt.clone();
    let next = actix_rt::spawn(async move {
        next.call_with(
            "g",
            Op::Get,
            CallOptions {
                expected_version: Some(2),
                ..Default::default()
            },
        )
        .await
    });
    gate.add_permits(1);
    assert_eq!(write.await.unwrap().unwrap().reply, 6);
    let read = next.await.unwrap().expect("the read of version 2");
    assert_eq!((read.reply, read.version), (6, 2));
    let read = rt.call("g", Op::Get).await.unwrap();
    assert_eq!((read.reply, read.version), (6, 2), "the acknowledged write");
}

/// A write whose outcome the grain did not learn (the store answered too
/// late) and that the store committed only after the grain had caught up:
/// its retry, answered from the stored idempotency record, acknowledges
/// the write, and from then on every read shows it.
#[actix_rt::test]
async fn a_replayed_write_the_grain_never_applied_is_read_back_after_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let inner = store(&dir);
    let (gated, gate) = GatedStore::wrap(inner.clone());
    let config = RuntimeConfig {
        store_timeout: Duration::from_millis(200),
        ..RuntimeConfig::default()
    };
    let rt = runtime(gated, config);
    gate.add_permits(1);
    rt.call("g", Op::Add(1)).await.unwrap();
    let keyed = CallOptions {
        idempotency: Some(("add-five".into(), 5)),
        ..Default::default()
    };

    // Held at the gate past the store timeout: the outcome is unknown, and
    // the grain reloads what is stored (the write is not, yet).
    let unknown = rt.call_with("g", Op::Add(5), keyed.clone()).await;
    assert!(
        matches!(unknown, Err(CallError::Store(StoreError::Indeterminate(_)))),
        "{unknown:?}"
    );
    assert_eq!(rt.call("g", Op::Get).await.unwrap().reply, 1);
    // Now the store commits it.
    gate.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while inner
        .load(&GrainKey::new("counter", "g"))
        .await
        .unwrap()
        .version
        < 2
    {
        assert!(Instant::now() < deadline, "the late write never committed");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }

    let replay = rt.call_with("g", Op::Add(5), keyed).await.unwrap();
    assert_eq!((replay.reply, replay.version), (6, 2));
    let read = rt.call("g", Op::Get).await.unwrap();
    assert_eq!((read.reply, read.version), (6, 2), "the acknowledged write");
}

/// A config whose grains doze after 20 ms without a call (the sweeper's
/// clock ticks every 10 ms at this idle timeout).
fn dozing(idle_timeout: Duration) -> RuntimeConfig {
    RuntimeConfig {
        doze_after: Duration::from_millis(20),
        idle_timeout,
        ..RuntimeConfig::default()
    }
}

/// An idle grain goes dormant: its actor stops, its state, placement and
/// entry stay. Reads are answered from its state meanwhile; a write wakes
/// it without loading anything from the store, with its version and
/// idempotent answers intact; its placement is released only when it is
/// passivated, once.
#[actix_rt::test]
async fn an_idle_grain_dozes_answers_reads_and_wakes_without_loading() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let ownership = placed(&[("g", 1)]);
    let rt = GrainRuntime::<Counter>::in_cluster(
        store.clone(),
        dozing(Duration::from_secs(3600)),
        ownership.clone(),
        Arc::new(granary_grain::Lease::unbounded()),
    );
    let keyed = CallOptions {
        idempotency: Some(("k".into(), 1)),
        ..CallOptions::default()
    };
    assert_eq!(
        rt.call_with("g", Op::Add(5), keyed.clone())
            .await
            .unwrap()
            .reply,
        5
    );
    let loads = store.stats().loads;
    eventually("the grain to doze", || rt.stats().dozes == 1).await;
    assert_eq!(rt.stats().live, 1, "a dormant grain is still live");
    // Reads: from the state, no actor.
    assert_eq!(rt.call("g", Op::Get).await.unwrap().reply, 5);
    assert_eq!((rt.stats().wakes, rt.stats().reads), (0, 1));
    // A retry of the keyed write: the remembered answer, after a wake.
    let retried = rt.call_with("g", Op::Add(5), keyed).await.unwrap();
    assert_eq!((retried.reply, retried.version), (5, 1));
    assert_eq!(rt.stats().wakes, 1);
    // It dozes again; a new write wakes it and goes on from version 1.
    eventually("the grain to doze again", || rt.stats().dozes == 2).await;
    let written = rt.call("g", Op::Add(2)).await.unwrap();
    assert_eq!((written.reply, written.version), (7, 2));
    assert_eq!(rt.stats().wakes, 2);
    assert_eq!(store.stats().loads, loads, "nothing was loaded to wake");
    assert_eq!(rt.stats().activations, 1);
    assert!(ownership.deactivated.lock().unwrap().is_empty());
    // Passivated while dormant: its placement is released once.
    eventually("the grain to doze a third time", || rt.stats().dozes == 3).await;
    rt.passivate_all();
    assert_eq!(
        *ownership.deactivated.lock().unwrap(),
        *ownership.activated.lock().unwrap()
    );
    assert_eq!(rt.stats().live, 0);
    // And comes back from the store.
    assert_eq!(rt.call("g", Op::Get).await.unwrap().reply, 7);
    assert_eq!(rt.stats().activations, 2);
}

/// A grain whose mailbox keeps taking calls never dozes, however many
/// doze periods go by; once the calls stop it dozes within two periods.
/// (The activation counts its calls and its timer looks once a period.)
#[actix_rt::test]
async fn a_grain_that_keeps_taking_calls_does_not_doze() {
    let dir = tempfile::tempdir().unwrap();
    let doze_after = Duration::from_millis(300);
    let rt = GrainRuntime::<Counter>::new(
        store(&dir),
        RuntimeConfig {
            doze_after,
            ..RuntimeConfig::default()
        },
    );
    // A write every 10 ms for four periods: each goes through the mailbox.
    let started = Instant::now();
    let mut writes = 0;
    let mut last = started;
    while started.elapsed() < doze_after * 4 {
        rt.call("g", Op::Add(1)).await.unwrap();
        last = Instant::now();
        writes += 1;
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rt.stats().dozes,
        0,
        "dozed while taking calls ({writes} writes)"
    );
    eventually("the grain to doze", || rt.stats().dozes == 1).await;
    assert!(
        last.elapsed() >= doze_after,
        "dozed {:?} after its last call",
        last.elapsed()
    );
}

/// A dormant grain's member fences: nothing is read from its state, a
/// call is refused by the actor that wakes, and a fresh activation serves.
#[actix_rt::test]
async fn a_dormant_grain_answers_nothing_after_a_fence() {
    let dir = tempfile::tempdir().unwrap();
    let lease = Arc::new(granary_grain::Lease::unbounded());
    let ownership = placed(&[("g", 1)]);
    let rt = GrainRuntime::<Counter>::in_cluster(
        store(&dir),
        dozing(Duration::from_secs(3600)),
        ownership.clone(),
        lease.clone(),
    );
    rt.call("g", Op::Add(3)).await.unwrap();
    eventually("the grain to doze", || rt.stats().dozes == 1).await;
    lease.fence();
    lease.extend_to(u64::MAX);
    let refused = rt.call("g", Op::Get).await;
    assert!(matches!(refused, Err(CallError::Fenced(_))), "{refused:?}");
    assert_eq!(
        rt.stats().reads,
        0,
        "nothing was read from the dormant state"
    );
    // The actor that woke refused, and stops: its placement goes.
    eventually("the fenced activation to stop", || rt.stats().live == 0).await;
    assert_eq!(
        *ownership.deactivated.lock().unwrap(),
        *ownership.activated.lock().unwrap()
    );
    // A fresh activation (after the fence) loads and serves.
    assert_eq!(rt.call("g", Op::Add(1)).await.unwrap().reply, 4);
    assert_eq!(rt.stats().activations, 2);
}

/// Grains doze and wake under calls arriving at any moment (the doze
/// period is shorter than the pauses between some of them): every call
/// is answered once, none is lost or run twice, and each grain's writes
/// apply in order.
#[actix_rt::test]
async fn calls_racing_dozes_are_each_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(store(&dir), dozing(Duration::from_secs(3600)));
    let writers: Vec<_> = (0..20)
        .map(|g| {
            let rt = rt.clone();
            actix_rt::spawn(async move {
                let id = format!("g{g}");
                for n in 1..=30_i64 {
                    let written = rt.call(&id, Op::Add(1)).await.expect("write");
                    assert_eq!((written.reply, written.version), (n, n as u64));
                    // Pauses around the doze period, some longer.
                    let pause = (g * 7 + n as usize * 13) % 45;
                    actix_rt::time::sleep(Duration::from_millis(pause as u64)).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let stats = rt.stats();
    assert!(stats.dozes > 20 && stats.wakes > 20, "{stats:?}");
    assert_eq!(stats.activations, 20, "woken, never loaded again");
    for g in 0..20 {
        assert_eq!(rt.call(&format!("g{g}"), Op::Get).await.unwrap().reply, 30);
    }
}

/// A dormant grain leaves memory like an awake one: passivated by the idle
/// sweeper, or evicted at the cap on live grains, its placement is
/// released once (it has no actor to do it), and it comes back from the
/// store.
#[actix_rt::test]
async fn dormant_grains_are_passivated_and_evicted_with_their_placements_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let ownership = placed(&[("a", 1), ("b", 1), ("c", 1)]);
    let rt = GrainRuntime::<Counter>::in_cluster(
        store.clone(),
        RuntimeConfig {
            max_live: 2,
            ..dozing(Duration::from_millis(400))
        },
        ownership.clone(),
        Arc::new(granary_grain::Lease::unbounded()),
    );
    rt.call("a", Op::Add(1)).await.unwrap();
    rt.call("b", Op::Add(2)).await.unwrap();
    eventually("both to doze", || rt.stats().dozes == 2).await;
    // A third grain evicts the least recently used, dormant "a".
    rt.call("c", Op::Add(3)).await.unwrap();
    assert_eq!(rt.stats().evictions, 1);
    let released = |id: &str| {
        ownership
            .deactivated
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, _)| d == id)
            .count()
    };
    assert_eq!(released("a"), 1);
    // Idle past the timeout, the dormant "b" (and "c") are passivated.
    eventually("the idle grains to be passivated", || rt.stats().live == 0).await;
    assert_eq!((released("a"), released("b"), released("c")), (1, 1, 1));
    for (id, value) in [("a", 1), ("b", 2), ("c", 3)] {
        assert_eq!(rt.call(id, Op::Get).await.unwrap().reply, value);
    }
}

/// The name of the thread grain `id` of `runtime` lives on.
async fn thread_of(runtime: &GrainRuntime<Counter>, id: &str) -> String {
    let (tell, told) = tokio::sync::oneshot::channel();
    runtime.spawn_beside(id, move || async move {
        let _ = tell.send(std::thread::current().name().unwrap_or_default().to_owned());
    });
    told.await.expect("the work ran")
}

#[actix_rt::test]
async fn runtimes_given_one_pool_host_their_grains_on_its_threads() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pool = ArbiterPool::new(1);
    let shared = RuntimeConfig {
        placement: Placement::Shared(pool.clone()),
        ..RuntimeConfig::default()
    };
    let a = runtime(store(&dirs[0]), shared.clone());
    let b = runtime(store(&dirs[1]), shared);
    let own = runtime(
        store(&dirs[2]),
        RuntimeConfig {
            placement: Placement::Pool(1),
            ..RuntimeConfig::default()
        },
    );
    let (tell, told) = tokio::sync::oneshot::channel();
    pool.spawn_on(7, move || async move {
        let _ = tell.send(std::thread::current().name().unwrap_or_default().to_owned());
    });
    let pooled = told.await.unwrap();
    assert!(pooled.contains("arbiter"), "{pooled:?}");
    assert_eq!(thread_of(&a, "x").await, pooled);
    assert_eq!(thread_of(&b, "y").await, pooled);
    assert_ne!(thread_of(&own, "x").await, pooled, "a pool of its own");
    // Grains of both runtimes live and answer there.
    assert_eq!(a.call("x", Op::Add(2)).await.unwrap().reply, 2);
    assert_eq!(b.call("x", Op::Add(5)).await.unwrap().reply, 5);
    // A pool has at least one thread.
    assert_eq!(ArbiterPool::new(0).len(), 1);
}
