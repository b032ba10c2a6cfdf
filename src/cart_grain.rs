//! The cart as a grain: the pure cart domain hosted by the grain runtime.

use granary_cart::{Cart, CartCommand, CartError, CartEvent};
use granary_grain::Grain;
use serde::{Deserialize, Serialize};

/// A cart grain's state: the domain cart, unchanged.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CartGrain(Cart);

/// What callers send a cart grain (JSON on the wire between members).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CartRequest {
    /// Read the cart (served from memory; never writes).
    Get,
    /// Change the cart.
    Command(CartCommand),
}

impl Grain for CartGrain {
    const KIND: &'static str = "cart";
    type Command = CartRequest;
    type Event = CartEvent;
    type Rejection = CartError;
    type Reply = Cart;

    fn decide(&self, request: &CartRequest) -> Result<Vec<CartEvent>, CartError> {
        match request {
            CartRequest::Get if !self.0.is_created() => Err(CartError::NotFound),
            CartRequest::Get => Ok(Vec::new()),
            CartRequest::Command(command) => self.0.decide(command),
        }
    }

    fn apply(&mut self, event: &CartEvent) {
        self.0.apply(event);
    }

    fn reply(&self, _: &CartRequest) -> Cart {
        self.0.clone()
    }
}
