//! The catalog: what a SKU costs, as the shop says, never as a client
//! says. One product per SKU, event-sourced like the cart.

use serde::{Deserialize, Serialize};

use crate::error::CartError;
use crate::limits::{MAX_NAME_CHARS, MAX_SKU_CHARS};
use crate::validate;

/// A product as the shop sells it: name, net unit price (minor units of
/// `currency`), tax rate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSpec {
    pub sku: String,
    pub name: String,
    pub unit_price: u64,
    pub currency: String,
    #[serde(default)]
    pub tax_rate_bp: Option<u32>,
}

impl ProductSpec {
    /// Checks every field, naming the first one at fault.
    pub fn validate(&self) -> Result<(), CartError> {
        validate::text("sku", &self.sku, MAX_SKU_CHARS)?;
        validate::text("name", &self.name, MAX_NAME_CHARS)?;
        validate::price("unit_price", self.unit_price)?;
        validate::currency(&self.currency)?;
        validate::tax_rate(self.tax_rate_bp)
    }

    /// `quantity` units of this product, as a cart line takes them.
    pub fn item(self, quantity: u32) -> crate::NewItem {
        crate::NewItem {
            sku: self.sku,
            name: self.name,
            quantity,
            unit_price: self.unit_price,
            currency: self.currency,
            tax_rate_bp: self.tax_rate_bp,
        }
    }
}

/// One SKU's entry in the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    spec: Option<ProductSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductCommand {
    /// Set (or change) the product; `sku` must be the grain's own.
    Set(ProductSpec),
    Get,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductEvent {
    Set(ProductSpec),
}

impl Product {
    /// The product, if the shop has set it.
    pub fn spec(&self) -> Option<&ProductSpec> {
        self.spec.as_ref()
    }

    pub fn decide(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, CartError> {
        match command {
            ProductCommand::Get if self.spec.is_none() => Err(CartError::NotFound),
            ProductCommand::Get => Ok(Vec::new()),
            ProductCommand::Set(spec) => {
                spec.validate()?;
                if self.spec.as_ref() == Some(spec) {
                    return Ok(Vec::new());
                }
                Ok(vec![ProductEvent::Set(spec.clone())])
            }
        }
    }

    pub fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::Set(spec) => self.spec = Some(spec.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(price: u64) -> ProductSpec {
        ProductSpec {
            sku: "TEA-01".into(),
            name: "Green tea".into(),
            unit_price: price,
            currency: "EUR".into(),
            tax_rate_bp: Some(700),
        }
    }

    #[test]
    fn a_product_is_set_checked_and_read() {
        let mut product = Product::default();
        assert_eq!(
            product.decide(&ProductCommand::Get),
            Err(CartError::NotFound)
        );
        let events = product.decide(&ProductCommand::Set(spec(450))).unwrap();
        product.apply(&events[0]);
        assert_eq!(product.spec().map(|s| s.unit_price), Some(450));
        assert!(
            product
                .decide(&ProductCommand::Set(spec(450)))
                .unwrap()
                .is_empty(),
            "the same again changes nothing"
        );
        let mut bad = spec(450);
        bad.currency = "euro".into();
        assert_eq!(
            product
                .decide(&ProductCommand::Set(bad))
                .unwrap_err()
                .field(),
            Some("currency")
        );
    }
}
