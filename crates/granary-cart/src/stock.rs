//! Stock of one SKU: units on hand, and reservations that hold units for a
//! checkout until it is confirmed (the units are sold) or released.
//!
//! Every reservation names itself (an id the checkout derives from its
//! cart and attempt), so asking again with the same id changes nothing:
//! each step of a checkout can be retried after a crash. A reservation
//! carries the time it expires and the cart whose checkout holds it; when
//! it expires, the stock grain's reminder asks that cart (`Expire`): a cart
//! that checked out under it gets the units sold, any other answer
//! releases them, and no answer asks again later (`ExpireLater`), so a
//! checked-out cart whose confirmation is late never loses its units.
//!
//! A confirmation that comes after its reservation was released anyway
//! (the cart checked out after the stock asked, which a checkout that
//! takes longer than half its hold refuses to do) sells the units if they
//! are still there (`SoldLate`); if they are not, it is refused
//! `OutOfStock` and the units are oversold. Confirmed reservation ids are
//! remembered for a day after the sale (`SOLD_KEPT_MS`), so a confirmation
//! delivered twice sells once; duplicates come within seconds (a reminder
//! delivered by two members across a membership change), and forgetting
//! keeps a popular SKU's state from growing with every checkout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::CartError;

/// Units held for a checkout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub quantity: u32,
    /// When it is released if not confirmed: ms since the Unix epoch.
    pub expires_at: u64,
    /// The grain whose checkout holds it (`cart/<id>`), asked at expiry;
    /// empty: released at expiry without asking.
    #[serde(default)]
    pub holder: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    on_hand: u64,
    reservations: BTreeMap<String, Reservation>,
    /// Reservations whose units are sold, for `SOLD_KEPT_MS` after.
    #[serde(default)]
    sold: BTreeSet<String>,
    /// The same in the order sold, with the time of each sale.
    #[serde(default)]
    sold_order: VecDeque<(u64, String)>,
}

/// Most units a SKU's stock may count (a trillion: far beyond any shelf,
/// far below where sums of them could overflow).
pub const MAX_ON_HAND: u64 = 1_000_000_000_000;

/// How long a sold reservation is remembered (ms): a day.
pub const SOLD_KEPT_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockCommand {
    /// The units physically there (a delivery, a count).
    SetOnHand {
        quantity: u64,
    },
    /// Hold `quantity` units until `expires_at` for `holder`'s checkout.
    Reserve {
        reservation: String,
        quantity: u32,
        expires_at: u64,
        #[serde(default)]
        holder: String,
    },
    /// The checkout went through: the held units are sold. `quantity`
    /// is what the reservation was for, sold anyway if the hold expired.
    Confirm {
        reservation: String,
        #[serde(default)]
        quantity: u32,
        /// When the confirmation was made (ms since the Unix epoch).
        #[serde(default)]
        at: u64,
    },
    /// The checkout did not: the held units go back.
    Release {
        reservation: String,
    },
    /// The hold's time is up (its reminder): decided as `Release`; the
    /// stock grain first asks the holder, and may resolve it to `Confirm`
    /// or `ExpireLater` instead.
    Expire {
        reservation: String,
    },
    /// The holder did not answer: ask again at `due`.
    ExpireLater {
        reservation: String,
        due: u64,
    },
    Get,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockEvent {
    OnHandSet {
        quantity: u64,
    },
    Reserved {
        reservation: String,
        quantity: u32,
        expires_at: u64,
        #[serde(default)]
        holder: String,
    },
    Confirmed {
        reservation: String,
        #[serde(default)]
        at: u64,
    },
    /// Confirmed after the hold had expired, with the units still there.
    SoldLate {
        reservation: String,
        quantity: u32,
        #[serde(default)]
        at: u64,
    },
    Released {
        reservation: String,
    },
    /// The holder was not reachable at expiry: the hold stands until `due`.
    ExpiryPostponed {
        reservation: String,
        due: u64,
    },
}

/// What the stock says after a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
}

impl Stock {
    /// Units held by reservations not yet confirmed.
    pub fn reserved(&self) -> u64 {
        self.reservations
            .values()
            .map(|r| u64::from(r.quantity))
            .sum()
    }

    pub fn level(&self) -> StockLevel {
        let reserved = self.reserved();
        StockLevel {
            on_hand: self.on_hand,
            reserved,
            available: self.on_hand.saturating_sub(reserved),
        }
    }

    pub fn reservation(&self, id: &str) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    pub fn decide(&self, command: &StockCommand) -> Result<Vec<StockEvent>, CartError> {
        match command {
            StockCommand::Get => Ok(Vec::new()),
            StockCommand::SetOnHand { quantity } if *quantity > MAX_ON_HAND => {
                Err(CartError::Invalid {
                    field: "on_hand".into(),
                    reason: format!("at most {MAX_ON_HAND} units"),
                })
            }
            StockCommand::SetOnHand { quantity } => Ok(vec![StockEvent::OnHandSet {
                quantity: *quantity,
            }]),
            StockCommand::Reserve {
                reservation,
                quantity,
                expires_at,
                holder,
            } => {
                valid_step(reservation, *quantity)?;
                if self.sold.contains(reservation) {
                    // A retried step arriving after its checkout sold the
                    // units: they stay sold, nothing more is held.
                    return Ok(Vec::new());
                }
                if let Some(held) = self.reservations.get(reservation) {
                    // Asked again (a retried step): the same hold stands.
                    return if held.quantity == *quantity {
                        Ok(Vec::new())
                    } else {
                        Err(CartError::Invalid {
                            field: "reservation".into(),
                            reason: "already holds another quantity".into(),
                        })
                    };
                }
                if !holder.is_empty() {
                    crate::validate::text("holder", holder, 200)?;
                }
                self.ensure_available(*quantity)?;
                Ok(vec![StockEvent::Reserved {
                    reservation: reservation.clone(),
                    quantity: *quantity,
                    expires_at: *expires_at,
                    holder: holder.clone(),
                }])
            }
            // Confirming or releasing what is not held (again, or after it
            // expired) changes nothing: every step may be retried.
            StockCommand::Confirm {
                reservation, at, ..
            } if self.reservations.contains_key(reservation) => Ok(vec![StockEvent::Confirmed {
                reservation: reservation.clone(),
                at: *at,
            }]),
            StockCommand::Confirm {
                reservation,
                quantity,
                at,
            } if *quantity > 0 && !self.sold.contains(reservation) => {
                valid_step(reservation, *quantity)?;
                self.ensure_available(*quantity)?;
                Ok(vec![StockEvent::SoldLate {
                    reservation: reservation.clone(),
                    quantity: *quantity,
                    at: *at,
                }])
            }
            StockCommand::Release { reservation } | StockCommand::Expire { reservation }
                if self.reservations.contains_key(reservation) =>
            {
                Ok(vec![StockEvent::Released {
                    reservation: reservation.clone(),
                }])
            }
            StockCommand::ExpireLater { reservation, due }
                if self.reservations.contains_key(reservation) =>
            {
                Ok(vec![StockEvent::ExpiryPostponed {
                    reservation: reservation.clone(),
                    due: *due,
                }])
            }
            StockCommand::Confirm { .. }
            | StockCommand::Release { .. }
            | StockCommand::Expire { .. }
            | StockCommand::ExpireLater { .. } => Ok(Vec::new()),
        }
    }

    /// Remembers `reservation` as sold at `at`, and forgets the sales
    /// more than `SOLD_KEPT_MS` older (times from the events: replay forgets
    /// the same).
    fn remember_sold(&mut self, reservation: &str, at: u64) {
        while let Some((sold_at, _)) = self.sold_order.front()
            && sold_at.saturating_add(SOLD_KEPT_MS) < at
        {
            if let Some((_, old)) = self.sold_order.pop_front() {
                self.sold.remove(&old);
            }
        }
        if self.sold.insert(reservation.to_owned()) {
            self.sold_order.push_back((at, reservation.to_owned()));
        }
    }

    /// Refuses `out_of_stock` unless `quantity` units are there to take.
    fn ensure_available(&self, quantity: u32) -> Result<(), CartError> {
        let available = self.level().available;
        if u64::from(quantity) > available {
            return Err(CartError::OutOfStock { available });
        }
        Ok(())
    }

    pub fn apply(&mut self, event: &StockEvent) {
        match event {
            StockEvent::OnHandSet { quantity } => self.on_hand = *quantity,
            StockEvent::Reserved {
                reservation,
                quantity,
                expires_at,
                holder,
            } => {
                self.reservations.insert(
                    reservation.clone(),
                    Reservation {
                        quantity: *quantity,
                        expires_at: *expires_at,
                        holder: holder.clone(),
                    },
                );
            }
            StockEvent::Confirmed { reservation, at } => {
                if let Some(held) = self.reservations.remove(reservation) {
                    self.on_hand = self.on_hand.saturating_sub(u64::from(held.quantity));
                }
                self.remember_sold(reservation, *at);
            }
            StockEvent::SoldLate {
                reservation,
                quantity,
                at,
            } => {
                self.on_hand = self.on_hand.saturating_sub(u64::from(*quantity));
                self.remember_sold(reservation, *at);
            }
            StockEvent::Released { reservation } => {
                self.reservations.remove(reservation);
            }
            StockEvent::ExpiryPostponed { reservation, due } => {
                if let Some(held) = self.reservations.get_mut(reservation) {
                    held.expires_at = *due;
                }
            }
        }
    }
}

/// A checkout step's reservation id and quantity, checked.
fn valid_step(reservation: &str, quantity: u32) -> Result<(), CartError> {
    crate::validate::text("reservation", reservation, 200)?;
    crate::validate::quantity(quantity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stock: &mut Stock, command: StockCommand) -> Result<usize, CartError> {
        let events = stock.decide(&command)?;
        for event in &events {
            stock.apply(event);
        }
        Ok(events.len())
    }

    fn reserve(id: &str, quantity: u32) -> StockCommand {
        StockCommand::Reserve {
            reservation: id.into(),
            quantity,
            expires_at: 1_000,
            holder: String::new(),
        }
    }

    #[test]
    fn reservations_hold_units_until_confirmed_or_released() {
        let mut stock = Stock::default();
        run(&mut stock, StockCommand::SetOnHand { quantity: 5 }).unwrap();
        run(&mut stock, reserve("a", 3)).unwrap();
        assert_eq!(stock.level().available, 2);
        assert_eq!(
            run(&mut stock, reserve("b", 3)),
            Err(CartError::OutOfStock { available: 2 })
        );
        assert_eq!(run(&mut stock, reserve("a", 3)), Ok(0), "a retried step");
        run(
            &mut stock,
            StockCommand::Confirm {
                reservation: "a".into(),
                quantity: 3,
                at: 1_000,
            },
        )
        .unwrap();
        assert_eq!(
            stock.level(),
            StockLevel {
                on_hand: 2,
                reserved: 0,
                available: 2
            }
        );
        assert_eq!(
            run(
                &mut stock,
                StockCommand::Confirm {
                    reservation: "a".into(),
                    quantity: 3,
                    at: 2_000,
                }
            ),
            Ok(0),
            "confirming twice sells once"
        );
        run(&mut stock, reserve("c", 2)).unwrap();
        run(
            &mut stock,
            StockCommand::Release {
                reservation: "c".into(),
            },
        )
        .unwrap();
        assert_eq!(stock.level().available, 2);
    }

    #[test]
    fn a_confirmation_after_the_hold_expired_sells_what_is_still_there_once() {
        let mut stock = Stock::default();
        run(&mut stock, StockCommand::SetOnHand { quantity: 5 }).unwrap();
        run(&mut stock, reserve("late", 2)).unwrap();
        // The hold expires before the checked-out cart confirms.
        run(
            &mut stock,
            StockCommand::Release {
                reservation: "late".into(),
            },
        )
        .unwrap();
        let confirm = |quantity| StockCommand::Confirm {
            reservation: "late".into(),
            quantity,
            at: 2_000,
        };
        assert_eq!(run(&mut stock, confirm(2)), Ok(1));
        assert_eq!(stock.level().on_hand, 3);
        assert_eq!(run(&mut stock, confirm(2)), Ok(0), "delivered twice");
        assert_eq!(run(&mut stock, reserve("late", 2)), Ok(0), "a late retry");
        assert_eq!(stock.level().on_hand, 3);
        assert_eq!(stock.level().reserved, 0);
        // Sold out meanwhile: refused, nothing changes.
        run(&mut stock, reserve("other", 3)).unwrap();
        let refused = StockCommand::Confirm {
            reservation: "gone".into(),
            quantity: 1,
            at: 2_000,
        };
        assert_eq!(
            run(&mut stock, refused),
            Err(CartError::OutOfStock { available: 0 })
        );
        assert_eq!(stock.level().on_hand, 3);
    }

    /// An expiry releases what is still held (as `Release`), and an
    /// expiry postponed moves the hold's time without touching the units;
    /// neither changes anything once the reservation is gone.
    #[test]
    fn an_expiry_releases_and_a_postponed_one_keeps_the_hold() {
        let mut stock = Stock::default();
        run(&mut stock, StockCommand::SetOnHand { quantity: 5 }).unwrap();
        run(&mut stock, reserve("a", 2)).unwrap();
        let later = |due| StockCommand::ExpireLater {
            reservation: "a".into(),
            due,
        };
        assert_eq!(run(&mut stock, later(5_000)), Ok(1));
        assert_eq!(stock.reservation("a").map(|r| r.expires_at), Some(5_000));
        assert_eq!(stock.level().available, 3, "still held");
        let expire = StockCommand::Expire {
            reservation: "a".into(),
        };
        assert_eq!(run(&mut stock, expire.clone()), Ok(1));
        assert_eq!(stock.level().available, 5);
        for again in [expire, later(9_000)] {
            assert_eq!(run(&mut stock, again), Ok(0), "nothing held any more");
        }
        assert_eq!(stock.level().available, 5);
    }

    /// A sale is remembered for `SOLD_KEPT_MS`: within it a duplicate
    /// confirmation sells nothing; sales older than that are forgotten as
    /// later ones are made, so the state does not grow with every checkout.
    #[test]
    fn sold_reservations_are_forgotten_a_day_after_the_sale() {
        let mut stock = Stock::default();
        run(&mut stock, StockCommand::SetOnHand { quantity: 1_000 }).unwrap();
        let sell = |stock: &mut Stock, id: &str, at: u64| {
            run(stock, reserve(id, 1)).unwrap();
            let confirm = StockCommand::Confirm {
                reservation: id.into(),
                quantity: 1,
                at,
            };
            run(stock, confirm.clone()).unwrap();
            confirm
        };
        let first = sell(&mut stock, "first", 1_000);
        for n in 0..100 {
            sell(&mut stock, &format!("within-{n}"), 1_000 + SOLD_KEPT_MS);
        }
        assert_eq!(run(&mut stock, first.clone()), Ok(0), "still remembered");
        assert_eq!(stock.sold.len(), 101);
        sell(&mut stock, "a-day-later", 1_001 + SOLD_KEPT_MS);
        assert!(!stock.sold.contains("first"), "forgotten");
        assert_eq!(stock.sold.len(), 101);
        assert_eq!(stock.sold.len(), stock.sold_order.len());
        assert_eq!(stock.level().on_hand, 1_000 - 102);
    }

    #[test]
    fn more_than_a_trillion_units_on_hand_is_refused_and_changes_nothing() {
        let mut stock = Stock::default();
        run(
            &mut stock,
            StockCommand::SetOnHand {
                quantity: MAX_ON_HAND,
            },
        )
        .unwrap();
        let refused = run(
            &mut stock,
            StockCommand::SetOnHand {
                quantity: MAX_ON_HAND + 1,
            },
        );
        assert!(
            matches!(refused, Err(CartError::Invalid { ref field, .. }) if field == "on_hand"),
            "{refused:?}"
        );
        assert_eq!(stock.level().on_hand, MAX_ON_HAND);
    }
}
