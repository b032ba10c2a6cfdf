//! Grains calling grains (`Grain::resolve`), through a node's `Grains` on a
//! real store: a command that calls another kind and records the answer,
//! a call chain that comes back to a grain waiting on it (refused at once,
//! not hung), and a call past its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use granary::grains::Grains;
use granary_grain::{
    CallError, CallOptions, Calls, Grain, GrainRuntime, Resolution, RuntimeConfig,
};
use granary_store::{EventStore, SqliteStore};
use serde::{Deserialize, Serialize};

/// A plain counter.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

impl Grain for Counter {
    const KIND: &'static str = "counter";
    type Command = i64;
    type Event = i64;
    type Rejection = String;
    type Reply = i64;
    fn decide(&self, add: &i64) -> Result<Vec<i64>, String> {
        if self.value + add < 0 {
            return Err(format!("{} would go below zero", self.value));
        }
        Ok((*add != 0).then_some(*add).into_iter().collect())
    }
    fn apply(&mut self, add: &i64) {
        self.value += add;
    }
    fn reply(&self, _: &i64) -> i64 {
        self.value
    }
}

/// A relay: asked to add to a counter (or to ask another relay), it calls
/// it and records what came back.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Relay {
    answers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum RelayCommand {
    /// Add `n` to counter `to`.
    Add { to: String, n: i64 },
    /// Ask relay `to` to add `n` to counter `counter`.
    Via { to: String, counter: String, n: i64 },
    /// Ask relay `to`, which will ask relay `back`, which is this one.
    Loop { to: String, back: String },
    /// Ask `to` to wait for the test's gate, waiting no longer than
    /// `millis` (with `to` empty: wait for the gate).
    Hurry { to: String, millis: u64 },
    /// What the calls answered (after `resolve`).
    Answered(String),
}

/// Held shut until a test lets a waiting relay through.
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl Grain for Relay {
    const KIND: &'static str = "relay";
    type Command = RelayCommand;
    type Event = String;
    type Rejection = String;
    type Reply = Vec<String>;

    fn resolve(&self, command: &RelayCommand, calls: &Calls) -> Option<Resolution<RelayCommand>> {
        let calls = calls.clone();
        let command = command.clone();
        let deadline = Duration::from_secs(5);
        let answered = |result: Result<String, String>| {
            RelayCommand::Answered(result.unwrap_or_else(|e| format!("error: {e}")))
        };
        let resolution: Resolution<RelayCommand> = Box::pin(async move {
            match command {
                RelayCommand::Add { to, n } => answered(
                    calls
                        .call::<Counter>(&to, n, CallOptions::default(), deadline)
                        .await
                        .map(|o| format!("{to} = {}", o.reply))
                        .map_err(|e| e.to_string()),
                ),
                RelayCommand::Via { to, counter, n } => answered(
                    calls
                        .call::<Relay>(
                            &to,
                            RelayCommand::Add { to: counter, n },
                            CallOptions::default(),
                            deadline,
                        )
                        .await
                        .map(|o| o.reply.join(", "))
                        .map_err(|e| e.to_string()),
                ),
                RelayCommand::Loop { to, back } => answered(
                    calls
                        .call::<Relay>(
                            &to,
                            RelayCommand::Via {
                                to: back,
                                counter: "c".into(),
                                n: 1,
                            },
                            CallOptions::default(),
                            deadline,
                        )
                        .await
                        .map(|o| o.reply.join(", "))
                        .map_err(|e| e.to_string()),
                ),
                // The callee's side: it answers only when the test opens
                // the gate, surely after its caller's deadline passed.
                RelayCommand::Hurry { to, .. } if to.is_empty() => {
                    GATE.notified().await;
                    answered(Ok("let through".into()))
                }
                RelayCommand::Hurry { to, millis } => answered(
                    calls
                        .call::<Relay>(
                            &to,
                            RelayCommand::Hurry {
                                to: String::new(),
                                millis: 0,
                            },
                            CallOptions::default(),
                            Duration::from_millis(millis),
                        )
                        .await
                        .map(|o| o.reply.join(", "))
                        .map_err(|e| e.to_string()),
                ),
                answered_already @ RelayCommand::Answered(_) => answered_already,
            }
        });
        Some(resolution)
    }

    fn decide(&self, command: &RelayCommand) -> Result<Vec<String>, String> {
        match command {
            RelayCommand::Answered(answer) => Ok(vec![answer.clone()]),
            other => Err(format!("{other:?} was not resolved")),
        }
    }

    fn apply(&mut self, answer: &String) {
        self.answers.push(answer.clone());
    }

    fn reply(&self, _: &RelayCommand) -> Vec<String> {
        self.answers.clone()
    }
}

fn grains(dir: &tempfile::TempDir) -> Grains {
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(dir.path().join("events.db")).expect("store"));
    Grains::builder(None)
        .host(GrainRuntime::<Counter>::new(
            store.clone(),
            RuntimeConfig::default(),
        ))
        .host(GrainRuntime::<Relay>::new(store, RuntimeConfig::default()))
        .build()
}

#[actix_rt::test]
async fn a_grain_calls_another_kind_and_records_its_answer_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let grains = grains(&dir);
    let add = |n| RelayCommand::Add { to: "c".into(), n };
    let first = grains.call::<Relay>("r", add(5)).await.expect("relayed");
    assert_eq!(first.reply, ["c = 5"]);
    assert_eq!(first.version, 1, "the answer was recorded as an event");
    // The counter's refusal comes back typed, and is recorded too.
    let refused = grains.call::<Relay>("r", add(-9)).await.expect("relayed");
    assert_eq!(refused.reply[1], "error: the grain refused the command");
    // Two hops: a relay asks a relay.
    let via = RelayCommand::Via {
        to: "r2".into(),
        counter: "c".into(),
        n: 2,
    };
    assert_eq!(
        grains.call::<Relay>("r", via).await.expect("relayed").reply[2],
        "c = 7"
    );
    assert_eq!(grains.call::<Counter>("c", 0).await.unwrap().reply, 7);
}

#[actix_rt::test]
async fn a_call_chain_that_comes_back_fails_at_once_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let grains = grains(&dir);
    let started = Instant::now();
    // a asks b, which asks a (waiting, its mailbox held): a cycle.
    let looped = grains
        .call::<Relay>(
            "a",
            RelayCommand::Loop {
                to: "b".into(),
                back: "a".into(),
            },
        )
        .await
        .expect("a answers");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused at once, not after a deadline: {:?}",
        started.elapsed()
    );
    let answer = &looped.reply[0];
    assert!(
        answer.contains("a call cycle") && answer.contains("relay/a → relay/b → relay/a"),
        "{answer}"
    );
    // Straight to the runtime: a grain already in the chain is refused.
    let options = CallOptions {
        chain: vec!["relay/x".into(), "counter/c".into()],
        ..CallOptions::default()
    };
    let err = grains
        .call_with::<Counter>("c", 1, options)
        .await
        .expect_err("a cycle");
    assert!(matches!(err, CallError::Cycle(_)), "{err:?}");
}

#[actix_rt::test]
async fn a_call_past_its_deadline_is_an_unknown_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let grains = grains(&dir);
    // b answers only once the gate opens; a gives b no time at all and
    // hears that the outcome is unknown.
    let answered = grains
        .call::<Relay>(
            "a",
            RelayCommand::Hurry {
                to: "b".into(),
                millis: 0,
            },
        )
        .await
        .expect("a answers");
    assert!(
        answered.reply[0].contains("did not answer within"),
        "{:?}",
        answered.reply
    );
    // Unknown indeed: b may be waiting at the gate, or may never have
    // taken the call (a gave up before it did). Either way b answers the
    // next caller.
    GATE.notify_one();
    let b = grains
        .call::<Relay>("b", RelayCommand::Answered("asked again".into()))
        .await
        .expect("b answers");
    assert_eq!(b.reply.last().map(String::as_str), Some("asked again"));
}
