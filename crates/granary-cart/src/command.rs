//! What a caller can ask of a cart.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A request to change a cart, checked by [`Cart::decide`](crate::Cart::decide).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CartCommand {
    /// Create the cart; a no-op on a cart that already exists.
    Create,
    /// Add units of a product; merges into the line with the same sku.
    AddItem(NewItem),
    /// Set a line's quantity (absolute, 1..=999; removing is `RemoveLine`).
    ChangeQuantity {
        line_id: Uuid,
        quantity: u32,
    },
    RemoveLine {
        line_id: Uuid,
    },
    /// Choose (or replace) the delivery option.
    SetDelivery {
        name: String,
        price: u64,
        currency: String,
    },
    /// Drop the delivery option; a no-op when there is none.
    RemoveDelivery,
    /// Remove all lines and the delivery.
    Clear,
    /// Close the cart and assign an order id.
    Checkout,
}

/// The product being added by [`CartCommand::AddItem`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewItem {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    /// Net price of one unit, in minor units of `currency`.
    pub unit_price: u64,
    /// ISO 4217 code, e.g. `"EUR"`.
    pub currency: String,
    /// Tax rate in basis points (0..=10000); `None` means untaxed.
    #[serde(default)]
    pub tax_rate_bp: Option<u32>,
}
