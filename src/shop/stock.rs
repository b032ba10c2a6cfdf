//! A SKU's stock as a grain: one per SKU, its id the SKU. A reservation
//! sets a reminder at its expiry (`Expire`) unless a checkout confirmed or
//! released it first. The reminder asks the cart that holds it: checked
//! out under it, the units are sold (its own confirmation is late, its
//! member was down, say); not, they go back; no answer, it asks again a
//! little later, keeping the units held meanwhile.

use std::time::Duration;

use granary_cart::{CartError, Stock, StockCommand, StockEvent, StockLevel};
use granary_grain::{CallError, CallOptions, Calls, Grain, Home, Remind, Resolution};
use serde::{Deserialize, Serialize};

use crate::cart_grain::{CartGrain, CartRequest};
use crate::reminders::now_unix_ms;

/// How long a hold whose cart did not answer stands before the stock asks
/// again.
const EXPIRE_AGAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StockGrain(Stock);

impl Grain for StockGrain {
    const KIND: &'static str = "stock";
    /// Every member's carts reserve from it at checkout: placed by the
    /// hash of `stock/<sku>`, so a catalog loaded through one member is
    /// spread over all of them.
    const HOME: Home = Home::Hashed;
    type Command = StockCommand;
    type Event = StockEvent;
    type Rejection = CartError;
    type Reply = StockLevel;

    fn decide(&self, command: &StockCommand) -> Result<Vec<StockEvent>, CartError> {
        self.0.decide(command)
    }

    fn apply(&mut self, event: &StockEvent) {
        self.0.apply(event)
    }

    fn is_read(command: &StockCommand) -> bool {
        matches!(command, StockCommand::Get)
    }

    fn reply(&self, _: &StockCommand) -> StockLevel {
        self.0.level()
    }

    /// An expiring hold asks its cart first (see the module docs).
    fn resolve(&self, command: &StockCommand, calls: &Calls) -> Option<Resolution<StockCommand>> {
        let StockCommand::Expire { reservation } = command else {
            return None;
        };
        let held = self.0.reservation(reservation)?;
        let cart = held.holder.strip_prefix("cart/")?.to_owned();
        let (reservation, quantity, calls) = (reservation.clone(), held.quantity, calls.clone());
        Some(Box::pin(async move {
            let asked = calls
                .call::<CartGrain>(
                    &cart,
                    CartRequest::Get,
                    CallOptions::default(),
                    crate::shop::settings().call_deadline,
                )
                .await;
            match asked {
                Ok(read) if read.reply.checked_out_under(&reservation) => {
                    tracing::info!(%reservation, "a hold expired before its checkout confirmed it; sold");
                    StockCommand::Confirm {
                        reservation,
                        quantity,
                        at: now_unix_ms(),
                    }
                }
                Ok(_) | Err(CallError::Rejected(CartError::NotFound)) => {
                    StockCommand::Release { reservation }
                }
                Err(err) => {
                    tracing::warn!(%reservation, %cart, error = %err, "the cart holding an expired reservation did not answer; asking again later");
                    StockCommand::ExpireLater {
                        reservation,
                        due: now_unix_ms() + EXPIRE_AGAIN.as_millis() as u64,
                    }
                }
            }
        }))
    }

    fn reminders(event: &StockEvent) -> Vec<Remind<StockCommand>> {
        match event {
            StockEvent::Reserved {
                reservation,
                expires_at: due,
                ..
            }
            | StockEvent::ExpiryPostponed { reservation, due } => vec![Remind::At {
                id: reservation.clone(),
                due: *due,
                command: StockCommand::Expire {
                    reservation: reservation.clone(),
                },
            }],
            StockEvent::Confirmed { reservation, .. }
            | StockEvent::Released { reservation }
            | StockEvent::SoldLate { reservation, .. } => {
                vec![Remind::Cancel {
                    id: reservation.clone(),
                }]
            }
            StockEvent::OnHandSet { .. } => Vec::new(),
        }
    }
}
