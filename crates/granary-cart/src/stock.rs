//! Stock of one SKU: units on hand, and reservations that hold units for a
//! checkout until it is confirmed (the units are sold) or released.
//!
//! Every reservation names itself (an id the checkout derives from its
//! cart and attempt), so asking again with the same id changes nothing:
//! each step of a checkout can be retried after a crash. A reservation
//! carries the time it expires; the stock grain's reminder releases it then
//! if nobody confirmed it.
//!
//! A confirmation that comes after its reservation expired (the checked-out
//! cart's member was down longer than the hold) sells the units if they are
//! still there (`SoldLate`); if they are not, it is refused `OutOfStock`
//! and the units are oversold. Confirmed reservation ids are remembered, so
//! a confirmation delivered twice sells once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::CartError;

/// Units held for a checkout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub quantity: u32,
    /// When it is released if not confirmed: ms since the Unix epoch.
    pub expires_at: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    on_hand: u64,
    reservations: BTreeMap<String, Reservation>,
    /// Reservations whose units are sold.
    #[serde(default)]
    sold: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockCommand {
    /// The units physically there (a delivery, a count).
    SetOnHand {
        quantity: u64,
    },
    /// Hold `quantity` units until `expires_at`.
    Reserve {
        reservation: String,
        quantity: u32,
        expires_at: u64,
    },
    /// The checkout went through: the held units are sold. `quantity`
    /// is what the reservation was for, sold anyway if the hold expired.
    Confirm {
        reservation: String,
        #[serde(default)]
        quantity: u32,
    },
    /// The checkout did not: the held units go back.
    Release {
        reservation: String,
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
    },
    Confirmed {
        reservation: String,
    },
    /// Confirmed after the hold had expired, with the units still there.
    SoldLate {
        reservation: String,
        quantity: u32,
    },
    Released {
        reservation: String,
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
            StockCommand::SetOnHand { quantity } => Ok(vec![StockEvent::OnHandSet {
                quantity: *quantity,
            }]),
            StockCommand::Reserve {
                reservation,
                quantity,
                expires_at,
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
                self.ensure_available(*quantity)?;
                Ok(vec![StockEvent::Reserved {
                    reservation: reservation.clone(),
                    quantity: *quantity,
                    expires_at: *expires_at,
                }])
            }
            // Confirming or releasing what is not held (again, or after it
            // expired) changes nothing: every step may be retried.
            StockCommand::Confirm { reservation, .. }
                if self.reservations.contains_key(reservation) =>
            {
                Ok(vec![StockEvent::Confirmed {
                    reservation: reservation.clone(),
                }])
            }
            StockCommand::Confirm {
                reservation,
                quantity,
            } if *quantity > 0 && !self.sold.contains(reservation) => {
                valid_step(reservation, *quantity)?;
                self.ensure_available(*quantity)?;
                Ok(vec![StockEvent::SoldLate {
                    reservation: reservation.clone(),
                    quantity: *quantity,
                }])
            }
            StockCommand::Release { reservation }
                if self.reservations.contains_key(reservation) =>
            {
                Ok(vec![StockEvent::Released {
                    reservation: reservation.clone(),
                }])
            }
            StockCommand::Confirm { .. } | StockCommand::Release { .. } => Ok(Vec::new()),
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
            } => {
                self.reservations.insert(
                    reservation.clone(),
                    Reservation {
                        quantity: *quantity,
                        expires_at: *expires_at,
                    },
                );
            }
            StockEvent::Confirmed { reservation } => {
                if let Some(held) = self.reservations.remove(reservation) {
                    self.on_hand = self.on_hand.saturating_sub(u64::from(held.quantity));
                }
                self.sold.insert(reservation.clone());
            }
            StockEvent::SoldLate {
                reservation,
                quantity,
            } => {
                self.on_hand = self.on_hand.saturating_sub(u64::from(*quantity));
                self.sold.insert(reservation.clone());
            }
            StockEvent::Released { reservation } => {
                self.reservations.remove(reservation);
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
        };
        assert_eq!(
            run(&mut stock, refused),
            Err(CartError::OutOfStock { available: 0 })
        );
        assert_eq!(stock.level().on_hand, 3);
    }
}
