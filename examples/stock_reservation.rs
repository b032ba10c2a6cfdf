//! A grain that is not a cart: a stock reservation counter, one grain per
//! SKU. It shows that [`GrainRuntime`] is generic over any [`Grain`] kind:
//! the grain below says which commands it accepts, which events they record
//! and how those events change its state; the runtime does the rest
//! (activation, one-command-at-a-time, durable writes, reloading).
//!
//! The demo opens an embedded SQLite event store in a temporary directory,
//! receives 10 units of `sku-1`, then lets 20 tasks try to reserve 1 unit
//! each at the same moment: exactly 10 succeed and 10 are refused with a
//! typed rejection, because the single activation of `sku-1` takes their
//! commands one at a time. It then cancels one reservation, lets a refused
//! order try again, ships one, and finally starts a brand-new runtime on the
//! same store file to show the state comes back from disk.
//!
//! Run it with `cargo run --example stock_reservation`, and its tests with
//! `cargo test --example stock_reservation`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use granary_grain::{CallError, Grain, GrainRuntime, Outcome, RuntimeConfig};
use granary_store::SqliteStore;
use serde::{Deserialize, Serialize};

/// The state of one SKU's grain. It starts at `Default` (nothing on hand)
/// and changes only by applying [`StockEvent`]s.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StockLevel {
    /// Units physically in the warehouse, reserved or not.
    on_hand: u32,
    /// Reservation id → units held for it. A `BTreeMap` so that snapshots
    /// of the same state serialize to the same bytes.
    reservations: BTreeMap<String, u32>,
}

impl StockLevel {
    /// Units held by open reservations. Never more than `on_hand`: a
    /// reservation is only accepted if it fits, and shipping one takes its
    /// units out of both.
    fn reserved(&self) -> u32 {
        self.reservations.values().sum()
    }

    fn available(&self) -> u32 {
        self.on_hand - self.reserved()
    }

    fn availability(&self) -> Availability {
        let reserved = self.reserved();
        Availability {
            on_hand: self.on_hand,
            reserved,
            available: self.on_hand - reserved,
        }
    }
}

/// What callers send to a SKU's grain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StockCommand {
    /// Restock: `quantity` more units arrived.
    Receive { quantity: u32 },
    /// Hold `quantity` units for `reservation_id`. Sending it again with an
    /// id that already holds units changes nothing (a safe retry): the
    /// first reservation stands.
    Reserve {
        reservation_id: String,
        quantity: u32,
    },
    /// Cancel a reservation; its units become available again.
    Release { reservation_id: String },
    /// The reserved units ship: they leave both the reservation and the
    /// warehouse.
    Commit { reservation_id: String },
    /// Read the figures; changes nothing.
    Get,
}

/// The facts stored in the event log. Each carries its quantity so the log
/// reads on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StockEvent {
    Received {
        quantity: u32,
    },
    Reserved {
        reservation_id: String,
        quantity: u32,
    },
    Released {
        reservation_id: String,
        quantity: u32,
    },
    Committed {
        reservation_id: String,
        quantity: u32,
    },
}

/// Why a command was refused. A domain answer: nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockRejection {
    /// Not enough unreserved units.
    Insufficient { available: u32, requested: u32 },
    /// No open reservation has this id (never made, released or shipped).
    UnknownReservation,
    /// A quantity of zero, or a restock that would overflow the counter.
    InvalidQuantity,
}

impl fmt::Display for StockRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StockRejection::Insufficient {
                available,
                requested,
            } => write!(f, "only {available} available, {requested} requested"),
            StockRejection::UnknownReservation => f.write_str("no such reservation"),
            StockRejection::InvalidQuantity => f.write_str("invalid quantity"),
        }
    }
}

/// The reply to every command: the SKU's figures after it took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    pub on_hand: u32,
    pub reserved: u32,
    pub available: u32,
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "on hand {:>2}, reserved {:>2}, available {:>2}",
            self.on_hand, self.reserved, self.available
        )
    }
}

impl Grain for StockLevel {
    const KIND: &'static str = "stock";
    type Command = StockCommand;
    type Event = StockEvent;
    type Rejection = StockRejection;
    type Reply = Availability;

    fn decide(&self, command: &StockCommand) -> Result<Vec<StockEvent>, StockRejection> {
        match command {
            StockCommand::Receive { quantity } => {
                if *quantity == 0 || self.on_hand.checked_add(*quantity).is_none() {
                    return Err(StockRejection::InvalidQuantity);
                }
                Ok(vec![StockEvent::Received {
                    quantity: *quantity,
                }])
            }
            StockCommand::Reserve {
                reservation_id,
                quantity,
            } => {
                if *quantity == 0 {
                    return Err(StockRejection::InvalidQuantity);
                }
                if self.reservations.contains_key(reservation_id) {
                    return Ok(vec![]); // already held: a retry, nothing to record
                }
                let available = self.available();
                if available < *quantity {
                    return Err(StockRejection::Insufficient {
                        available,
                        requested: *quantity,
                    });
                }
                Ok(vec![StockEvent::Reserved {
                    reservation_id: reservation_id.clone(),
                    quantity: *quantity,
                }])
            }
            StockCommand::Release { reservation_id } => {
                let quantity = self.held(reservation_id)?;
                Ok(vec![StockEvent::Released {
                    reservation_id: reservation_id.clone(),
                    quantity,
                }])
            }
            StockCommand::Commit { reservation_id } => {
                let quantity = self.held(reservation_id)?;
                Ok(vec![StockEvent::Committed {
                    reservation_id: reservation_id.clone(),
                    quantity,
                }])
            }
            StockCommand::Get => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &StockEvent) {
        match event {
            StockEvent::Received { quantity } => self.on_hand += quantity,
            StockEvent::Reserved {
                reservation_id,
                quantity,
            } => {
                self.reservations.insert(reservation_id.clone(), *quantity);
            }
            StockEvent::Released { reservation_id, .. } => {
                self.reservations.remove(reservation_id);
            }
            StockEvent::Committed {
                reservation_id,
                quantity,
            } => {
                self.reservations.remove(reservation_id);
                self.on_hand = self.on_hand.saturating_sub(*quantity);
            }
        }
    }

    fn reply(&self, _: &StockCommand) -> Availability {
        self.availability()
    }
}

impl StockLevel {
    /// Units held by an open reservation, or why there is none.
    fn held(&self, reservation_id: &str) -> Result<u32, StockRejection> {
        self.reservations
            .get(reservation_id)
            .copied()
            .ok_or(StockRejection::UnknownReservation)
    }
}

/// A runtime for stock grains on the store file at `db`. Must be called
/// inside a running actix `System` (`#[actix_rt::main]` / `#[actix_rt::test]`).
fn start_runtime(db: &Path) -> Result<GrainRuntime<StockLevel>, granary_store::StoreError> {
    let store = SqliteStore::open(db)?;
    Ok(GrainRuntime::new(Arc::new(store), RuntimeConfig::default()))
}

/// `n` tasks each try to reserve `quantity` units of `sku` at once, with
/// reservation ids `order-00`, `order-01`, …. Returns each id with its result.
async fn reserve_concurrently(
    runtime: &GrainRuntime<StockLevel>,
    sku: &str,
    n: usize,
    quantity: u32,
) -> Vec<(
    String,
    Result<Outcome<Availability>, CallError<StockRejection>>,
)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let runtime = runtime.clone();
            let sku = sku.to_owned();
            let reservation_id = format!("order-{i:02}");
            actix_rt::spawn(async move {
                let command = StockCommand::Reserve {
                    reservation_id: reservation_id.clone(),
                    quantity,
                };
                (reservation_id, runtime.call(&sku, command).await)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("reservation task panicked"));
    }
    results
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const SKU: &str = "sku-1";
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("events.db");
    println!("Event store: {}", db.display());
    println!("(a temporary directory, deleted when the example ends)\n");

    let runtime = start_runtime(&db)?;

    let restocked = runtime
        .call(SKU, StockCommand::Receive { quantity: 10 })
        .await?;
    println!("1. {SKU} receives 10 units.");
    println!("   -> {}", restocked.reply);

    println!("\n2. 20 tasks each try to reserve 1 unit, all at once.");
    let results = reserve_concurrently(&runtime, SKU, 20, 1).await;
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (id, result) in results {
        match result {
            Ok(_) => accepted.push(id),
            Err(CallError::Rejected(why)) => refused.push((id, why)),
            Err(other) => return Err(other.into()),
        }
    }
    println!("   {} accepted: {}", accepted.len(), accepted.join(", "));
    println!(
        "   {} refused, e.g. {}: {}",
        refused.len(),
        refused[0].0,
        refused[0].1
    );
    let after_rush = runtime.call(SKU, StockCommand::Get).await?;
    println!("   -> {}", after_rush.reply);
    println!("   No oversell: the one activation of {SKU} took the commands one at a time.");
    assert_eq!((accepted.len(), refused.len()), (10, 10));
    assert_eq!(after_rush.reply.available, 0);

    let cancelled = &accepted[0];
    let late = &refused[0].0;
    println!("\n3. {cancelled} is cancelled, and {late} tries again.");
    let released = runtime
        .call(
            SKU,
            StockCommand::Release {
                reservation_id: cancelled.clone(),
            },
        )
        .await?;
    println!("   release {cancelled}      -> {}", released.reply);
    let retry = StockCommand::Reserve {
        reservation_id: late.clone(),
        quantity: 1,
    };
    let reserved = runtime.call(SKU, retry.clone()).await?;
    println!("   reserve {late}      -> {}", reserved.reply);
    let again = runtime.call(SKU, retry).await?;
    println!(
        "   same request again    -> {} (idempotent: still version {})",
        again.reply, again.version
    );
    assert_eq!(again, reserved);

    let shipped = &accepted[1];
    let committed = runtime
        .call(
            SKU,
            StockCommand::Commit {
                reservation_id: shipped.clone(),
            },
        )
        .await?;
    println!("\n4. {shipped} ships (commit): its unit leaves the warehouse.");
    println!("   -> {}", committed.reply);

    let before = runtime.call(SKU, StockCommand::Get).await?;
    runtime.passivate_all();
    drop(runtime);

    let runtime = start_runtime(&db)?;
    let after = runtime.call(SKU, StockCommand::Get).await?;
    println!("\n5. The runtime is dropped and a new one opens the same store file.");
    println!("   before: {} (version {})", before.reply, before.version);
    println!("   after:  {} (version {})", after.reply, after.version);
    assert_eq!(after, before);
    println!(
        "   The state was rebuilt from the {} events on disk.",
        after.version
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKU: &str = "sku-test";

    fn reserve(reservation_id: &str, quantity: u32) -> StockCommand {
        StockCommand::Reserve {
            reservation_id: reservation_id.into(),
            quantity,
        }
    }

    fn release(reservation_id: &str) -> StockCommand {
        StockCommand::Release {
            reservation_id: reservation_id.into(),
        }
    }

    fn commit(reservation_id: &str) -> StockCommand {
        StockCommand::Commit {
            reservation_id: reservation_id.into(),
        }
    }

    fn figures(on_hand: u32, reserved: u32, available: u32) -> Availability {
        Availability {
            on_hand,
            reserved,
            available,
        }
    }

    async fn get(runtime: &GrainRuntime<StockLevel>) -> Outcome<Availability> {
        runtime.call(SKU, StockCommand::Get).await.expect("get")
    }

    async fn rejection(
        runtime: &GrainRuntime<StockLevel>,
        command: StockCommand,
    ) -> StockRejection {
        match runtime.call(SKU, command).await {
            Err(CallError::Rejected(why)) => why,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[actix_rt::test]
    async fn concurrent_reservations_never_oversell() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = start_runtime(&dir.path().join("events.db")).unwrap();
        runtime
            .call(SKU, StockCommand::Receive { quantity: 25 })
            .await
            .unwrap();

        // 40 tasks want 2 units each (80 units) of 25 on hand.
        let results = reserve_concurrently(&runtime, SKU, 40, 2).await;
        let mut accepted = 0;
        for (id, result) in results {
            match result {
                Ok(outcome) => {
                    accepted += 1;
                    assert!(outcome.reply.reserved <= outcome.reply.on_hand, "{id}");
                }
                Err(CallError::Rejected(StockRejection::Insufficient {
                    available,
                    requested,
                })) => {
                    assert_eq!(requested, 2);
                    assert!(available < 2, "{id} refused with {available} available");
                }
                Err(other) => panic!("{id}: unexpected failure {other:?}"),
            }
        }
        assert_eq!(accepted, 12, "25 units hold twelve 2-unit reservations");
        let now = get(&runtime).await;
        assert_eq!(now.reply, figures(25, 24, 1));
        assert_eq!(now.version, 1 + 12, "one event per accepted reservation");
    }

    #[actix_rt::test]
    async fn a_reservation_id_reserved_twice_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = start_runtime(&dir.path().join("events.db")).unwrap();
        runtime
            .call(SKU, StockCommand::Receive { quantity: 5 })
            .await
            .unwrap();
        let first = runtime.call(SKU, reserve("r-1", 2)).await.unwrap();
        let second = runtime.call(SKU, reserve("r-1", 2)).await.unwrap();
        assert_eq!(first.reply, figures(5, 2, 3));
        assert_eq!(second, first, "the retry wrote nothing");

        // Many tasks retrying one id at once still hold it once.
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let runtime = runtime.clone();
                actix_rt::spawn(async move { runtime.call(SKU, reserve("r-2", 2)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().expect("reserve r-2");
        }
        let now = get(&runtime).await;
        assert_eq!(now.reply, figures(5, 4, 1));
        assert_eq!(now.version, 3, "receive + r-1 + r-2");
    }

    #[actix_rt::test]
    async fn release_and_commit_arithmetic() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = start_runtime(&dir.path().join("events.db")).unwrap();
        let call = |command| runtime.call(SKU, command);

        assert_eq!(
            call(StockCommand::Receive { quantity: 10 })
                .await
                .unwrap()
                .reply,
            figures(10, 0, 10)
        );
        assert_eq!(
            call(reserve("a", 3)).await.unwrap().reply,
            figures(10, 3, 7)
        );
        assert_eq!(
            call(reserve("b", 4)).await.unwrap().reply,
            figures(10, 7, 3)
        );
        assert_eq!(
            rejection(&runtime, reserve("c", 4)).await,
            StockRejection::Insufficient {
                available: 3,
                requested: 4
            }
        );
        // Release gives the units back; on hand is unchanged.
        assert_eq!(call(release("a")).await.unwrap().reply, figures(10, 4, 6));
        // Commit ships: the units leave both the reservation and the shelf.
        assert_eq!(call(commit("b")).await.unwrap().reply, figures(6, 0, 6));
        assert_eq!(
            call(StockCommand::Receive { quantity: 4 })
                .await
                .unwrap()
                .reply,
            figures(10, 0, 10)
        );

        // A closed reservation is gone; bad quantities are refused.
        for closed in [release("a"), commit("a"), release("b"), commit("nope")] {
            assert_eq!(
                rejection(&runtime, closed).await,
                StockRejection::UnknownReservation
            );
        }
        assert_eq!(
            rejection(&runtime, reserve("d", 0)).await,
            StockRejection::InvalidQuantity
        );
        assert_eq!(
            rejection(&runtime, StockCommand::Receive { quantity: 0 }).await,
            StockRejection::InvalidQuantity
        );
        assert_eq!(
            rejection(&runtime, StockCommand::Receive { quantity: u32::MAX }).await,
            StockRejection::InvalidQuantity
        );
        let now = get(&runtime).await;
        assert_eq!(now.reply, figures(10, 0, 10));
        assert_eq!(now.version, 6, "rejections wrote nothing");
    }

    #[actix_rt::test]
    async fn state_survives_a_new_runtime_on_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let before = {
            let runtime = start_runtime(&db).unwrap();
            runtime
                .call(SKU, StockCommand::Receive { quantity: 8 })
                .await
                .unwrap();
            runtime.call(SKU, reserve("kept", 3)).await.unwrap();
            runtime.call(SKU, reserve("shipped", 2)).await.unwrap();
            runtime.call(SKU, commit("shipped")).await.unwrap();
            let before = get(&runtime).await;
            runtime.passivate_all();
            before
        };
        assert_eq!(before.reply, figures(6, 3, 3));

        let runtime = start_runtime(&db).unwrap();
        let after = get(&runtime).await;
        assert_eq!(after, before);
        // The reservations themselves came back, not just the totals.
        assert_eq!(
            runtime.call(SKU, reserve("kept", 3)).await.unwrap().version,
            before.version,
            "re-reserving a restored id is still a no-op"
        );
        assert_eq!(
            runtime.call(SKU, release("kept")).await.unwrap().reply,
            figures(6, 0, 6)
        );
        assert_eq!(
            rejection(&runtime, commit("shipped")).await,
            StockRejection::UnknownReservation
        );
    }
}
