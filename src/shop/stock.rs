//! A SKU's stock as a grain: one per SKU, its id the SKU. A reservation
//! sets a reminder at its expiry, which releases it unless a checkout
//! confirmed (or released) it first.

use granary_cart::{CartError, Stock, StockCommand, StockEvent, StockLevel};
use granary_grain::{Grain, Remind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StockGrain(Stock);

impl Grain for StockGrain {
    const KIND: &'static str = "stock";
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

    fn reminders(event: &StockEvent) -> Vec<Remind<StockCommand>> {
        match event {
            StockEvent::Reserved {
                reservation,
                expires_at,
                ..
            } => vec![Remind::At {
                id: reservation.clone(),
                due: *expires_at,
                command: StockCommand::Release {
                    reservation: reservation.clone(),
                },
            }],
            StockEvent::Confirmed { reservation }
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
