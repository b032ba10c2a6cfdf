//! What happened to a cart: the facts that are persisted and replayed.
//!
//! Events carry everything needed to rebuild state, including values that
//! were generated when deciding (line and order ids), so replay is
//! deterministic. Their serialized form is stored, so renaming a variant or
//! field is a breaking change to existing event streams.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CartEvent {
    Created,
    /// A new line, for a sku not yet in the cart.
    ItemAdded {
        line_id: Uuid,
        sku: String,
        name: String,
        quantity: u32,
        unit_price: u64,
        currency: String,
        #[serde(default)]
        tax_rate_bp: Option<u32>,
    },
    /// The line's new absolute quantity (not a delta), so applying it twice
    /// is harmless.
    QuantityChanged {
        line_id: Uuid,
        quantity: u32,
    },
    LineRemoved {
        line_id: Uuid,
    },
    /// The delivery option, replacing any previous one.
    DeliverySet {
        name: String,
        price: u64,
        currency: String,
    },
    DeliveryRemoved,
    /// All lines and the delivery were removed.
    Cleared,
    CheckedOut {
        order_id: Uuid,
        /// The stock reservations this checkout holds (their common id),
        /// to confirm now that the order stands. None before the shop had
        /// stock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reservation: Option<String>,
    },
    /// Confirming the reservations did not go through yet: try again at
    /// `due` (ms since the Unix epoch). Changes no state.
    ConfirmationPending {
        reservation: String,
        due: u64,
    },
}
