//! A catalog entry as a grain: one per SKU, its id the SKU.

use granary_cart::{CartError, Product, ProductCommand, ProductEvent, ProductSpec};
use granary_grain::{Grain, Home};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProductGrain(Product);

impl Grain for ProductGrain {
    const KIND: &'static str = "product";
    /// Every member's carts read it: placed by the hash of
    /// `product/<sku>`, so a catalog loaded through one member is spread
    /// over all of them.
    const HOME: Home = Home::Hashed;
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Rejection = CartError;
    type Reply = Option<ProductSpec>;

    fn decide(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, CartError> {
        self.0.decide(command)
    }

    fn apply(&mut self, event: &ProductEvent) {
        self.0.apply(event)
    }

    /// A product read (every cart's add and checkout asks one) is answered
    /// from the committed product, on the asking thread.
    fn is_read(command: &ProductCommand) -> bool {
        matches!(command, ProductCommand::Get)
    }

    fn reply(&self, _: &ProductCommand) -> Option<ProductSpec> {
        self.0.spec().cloned()
    }
}
