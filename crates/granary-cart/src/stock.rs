//! Stock of one SKU: units on hand, and reservations that hold units for a
//! checkout until it is confirmed (the units are sold) or released.
//!
//! Every reservation names itself (an id the checkout derives from its
//! cart and attempt), so asking again with the same id changes nothing:
//! each step of a checkout can be retried after a crash. A reservation
//! carries the time it expires; the stock grain's reminder releases it then
//! if nobody confirmed it.

use std::collections::BTreeMap;

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
    /// The checkout went through: the held units are sold.
    Confirm {
        reservation: String,
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
                crate::validate::text("reservation", reservation, 200)?;
                crate::validate::quantity(*quantity)?;
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
                let available = self.level().available;
                if u64::from(*quantity) > available {
                    return Err(CartError::OutOfStock { available });
                }
                Ok(vec![StockEvent::Reserved {
                    reservation: reservation.clone(),
                    quantity: *quantity,
                    expires_at: *expires_at,
                }])
            }
            // Confirming or releasing what is not held (again, or after it
            // expired) changes nothing: every step may be retried.
            StockCommand::Confirm { reservation }
                if self.reservations.contains_key(reservation) =>
            {
                Ok(vec![StockEvent::Confirmed {
                    reservation: reservation.clone(),
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
            }
            StockEvent::Released { reservation } => {
                self.reservations.remove(reservation);
            }
        }
    }
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
                    reservation: "a".into()
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
}
