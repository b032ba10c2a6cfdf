//! Durable reminders, delivered by the node's reminder loop through a
//! node's `Grains` on a real store: a reminder an event set fires at its
//! time, survives a restart of everything in memory, and takes effect once
//! even when two deliverers race for it (as around a view change).

use std::sync::Arc;
use std::time::{Duration, Instant};

use granary::grains::Grains;
use granary::reminders::{deliver, now_unix_ms};
use granary_grain::{Grain, GrainRuntime, Remind, RuntimeConfig};
use granary_store::{EventStore, SqliteStore};
use serde::{Deserialize, Serialize};

/// Armed timers, and how many times each fired.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Timer {
    fired: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum TimerCommand {
    /// Fire `id` at `due` (ms since the epoch).
    Arm {
        id: String,
        due: u64,
    },
    /// The reminder's command.
    Fire {
        id: String,
    },
    Get,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum TimerEvent {
    Armed { id: String, due: u64 },
    Fired { id: String },
}

impl Grain for Timer {
    const KIND: &'static str = "timer";
    type Command = TimerCommand;
    type Event = TimerEvent;
    type Rejection = String;
    type Reply = Vec<String>;

    fn decide(&self, command: &TimerCommand) -> Result<Vec<TimerEvent>, String> {
        Ok(match command {
            TimerCommand::Arm { id, due } => vec![TimerEvent::Armed {
                id: id.clone(),
                due: *due,
            }],
            TimerCommand::Fire { id } => vec![TimerEvent::Fired { id: id.clone() }],
            TimerCommand::Get => Vec::new(),
        })
    }

    fn apply(&mut self, event: &TimerEvent) {
        if let TimerEvent::Fired { id } = event {
            self.fired.push(id.clone());
        }
    }

    fn reply(&self, _: &TimerCommand) -> Vec<String> {
        self.fired.clone()
    }

    fn reminders(event: &TimerEvent) -> Vec<Remind<TimerCommand>> {
        match event {
            TimerEvent::Armed { id, due } => vec![Remind::At {
                id: id.clone(),
                due: *due,
                command: TimerCommand::Fire { id: id.clone() },
            }],
            TimerEvent::Fired { .. } => Vec::new(),
        }
    }
}

fn grains(store: &Arc<dyn EventStore>) -> Grains {
    Grains::builder(None)
        .host(GrainRuntime::<Timer>::new(
            store.clone(),
            RuntimeConfig::default(),
        ))
        .build()
}

/// Waits (10 s at most) until timer `id` reports `fired`.
async fn until_fired(grains: &Grains, id: &str, fired: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = grains
            .call::<Timer>(id, TimerCommand::Get)
            .await
            .unwrap()
            .reply;
        if now == fired {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} fired {now:?}, expected {fired:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn a_reminder_fires_at_its_time_once_even_with_two_deliverers() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let grains = grains(&store);
    let due = now_unix_ms() + 400;
    grains
        .call::<Timer>(
            "t",
            TimerCommand::Arm {
                id: "soon".into(),
                due,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.due_reminders(due, 10).await.unwrap().len(),
        1,
        "stored"
    );
    // Two deliverers race for it (two nodes around a view change).
    let fired = std::rc::Rc::new(std::cell::Cell::new(0u32));
    for _ in 0..2 {
        let fired = fired.clone();
        actix_rt::spawn(deliver(
            store.clone(),
            grains.clone(),
            |_| true,
            move || fired.set(fired.get() + 1),
        ));
    }
    until_fired(&grains, "t", &["soon"]).await;
    assert!(now_unix_ms() >= due, "not before its time");
    // It is finished, and it fired once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store
        .due_reminders(u64::MAX >> 2, 10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the reminder was never finished");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        grains
            .call::<Timer>("t", TimerCommand::Get)
            .await
            .unwrap()
            .reply,
        ["soon"],
        "once"
    );
    // Each deliverer counts what it handed over (a second hand-over is the
    // one its key deduplicates).
    until(|| fired.get() >= 1).await;
    assert!((1..=2).contains(&fired.get()), "fired {}", fired.get());
}

/// Waits (5 s at most, or the test fails) until `done()`: a deliverer
/// counts a reminder just after it finished it in the store.
async fn until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "never counted");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn a_reminder_survives_a_restart_of_everything_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let due = now_unix_ms() + 300;
    {
        let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&path).unwrap());
        grains(&store)
            .call::<Timer>(
                "t",
                TimerCommand::Arm {
                    id: "later".into(),
                    due,
                },
            )
            .await
            .unwrap();
    }
    // A new store handle and new runtimes: nothing in memory survived.
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let grains = grains(&store);
    // No deliverer is interested: nothing fires.
    let fired = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let counted = || {
        let fired = fired.clone();
        move || fired.set(fired.get() + 1)
    };
    actix_rt::spawn(deliver(store.clone(), grains.clone(), |_| false, counted()));
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    assert!(
        grains
            .call::<Timer>("t", TimerCommand::Get)
            .await
            .unwrap()
            .reply
            .is_empty(),
        "only the partition holder delivers"
    );
    assert_eq!(fired.get(), 0, "nothing was handed over");
    actix_rt::spawn(deliver(
        store.clone(),
        grains.clone(),
        |key| key == "timer/t",
        counted(),
    ));
    until_fired(&grains, "t", &["later"]).await;
    until(|| fired.get() >= 1).await;
    assert_eq!(fired.get(), 1, "the one reminder counted once");
}
