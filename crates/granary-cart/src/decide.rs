//! The rules: which commands a cart accepts and which events they yield.

use uuid::Uuid;

use crate::cart::{Cart, CartStatus};
use crate::command::{CartCommand, NewItem};
use crate::error::CartError;
use crate::event::CartEvent;
use crate::limits::{MAX_LINES, MAX_NAME_CHARS, MAX_QUANTITY, MAX_SKU_CHARS};
use crate::validate;

impl Cart {
    /// Checks `command` against the current state and returns the events it
    /// yields, without changing the cart.
    ///
    /// Commands that would change nothing (creating an existing cart,
    /// setting the current quantity or delivery again, removing an absent
    /// delivery, clearing an empty cart) succeed with no events, so clients
    /// can retry them freely.
    ///
    /// New line ids and the order id are random (uuid v4) and recorded in the
    /// events; deciding the same command twice may yield different ids.
    pub fn decide(&self, command: &CartCommand) -> Result<Vec<CartEvent>, CartError> {
        match command {
            CartCommand::Create => Ok(self.decide_create()),
            CartCommand::AddItem(item) => self.decide_add_item(item),
            CartCommand::ChangeQuantity { line_id, quantity } => {
                self.decide_change_quantity(*line_id, *quantity)
            }
            CartCommand::RemoveLine { line_id } => self.decide_remove_line(*line_id),
            CartCommand::SetDelivery {
                name,
                price,
                currency,
            } => self.decide_set_delivery(name, *price, currency),
            CartCommand::RemoveDelivery => self.decide_remove_delivery(),
            CartCommand::Clear => self.decide_clear(),
            CartCommand::Checkout => self.decide_checkout(),
        }
    }

    /// Idempotent so that "create if missing" needs no read first.
    fn decide_create(&self) -> Vec<CartEvent> {
        if self.is_created() {
            Vec::new()
        } else {
            vec![CartEvent::Created]
        }
    }

    fn decide_add_item(&self, item: &NewItem) -> Result<Vec<CartEvent>, CartError> {
        self.ensure_open()?;
        validate::quantity(item.quantity)?;
        validate::text("sku", &item.sku, MAX_SKU_CHARS)?;
        validate::text("name", &item.name, MAX_NAME_CHARS)?;
        validate::price("unit_price", item.unit_price)?;
        validate::currency(&item.currency)?;
        validate::tax_rate(item.tax_rate_bp)?;
        // The delivery counts too: its price is summed into the same total.
        ensure_currency(self.currency(), &item.currency)?;

        if let Some(line) = self.lines().iter().find(|line| line.sku == item.sku) {
            // One sku, one price: silently keeping either price would bill
            // the client something it did not ask for. The name may differ
            // (it is only a label); the original is kept.
            if line.unit_price != item.unit_price {
                return Err(CartError::Invalid {
                    field: "unit_price".into(),
                    reason: format!(
                        "differs from the unit price {} of the line already holding this sku",
                        line.unit_price
                    ),
                });
            }
            if line.tax_rate_bp != item.tax_rate_bp {
                return Err(CartError::Invalid {
                    field: "tax_rate_bp".into(),
                    reason: "differs from the tax rate of the line already holding this sku".into(),
                });
            }
            // Saturating: the existing quantity came from events and is not
            // trusted to be within bounds.
            let quantity = line.quantity.saturating_add(item.quantity);
            if quantity > MAX_QUANTITY {
                return Err(CartError::LineFull {
                    line_id: line.line_id,
                    in_cart: line.quantity,
                    max: MAX_QUANTITY,
                });
            }
            let event = CartEvent::QuantityChanged {
                line_id: line.line_id,
                quantity,
            };
            self.ensure_fits(&event, "quantity")?;
            return Ok(vec![event]);
        }

        if self.lines().len() >= MAX_LINES {
            return Err(CartError::TooManyLines { max: MAX_LINES });
        }
        let event = CartEvent::ItemAdded {
            line_id: Uuid::new_v4(),
            sku: item.sku.clone(),
            name: item.name.clone(),
            quantity: item.quantity,
            unit_price: item.unit_price,
            currency: item.currency.clone(),
            tax_rate_bp: item.tax_rate_bp,
        };
        self.ensure_fits(&event, "unit_price")?;
        Ok(vec![event])
    }

    fn decide_change_quantity(
        &self,
        line_id: Uuid,
        quantity: u32,
    ) -> Result<Vec<CartEvent>, CartError> {
        self.ensure_open()?;
        validate::quantity(quantity)?;
        let line = self
            .line(line_id)
            .ok_or(CartError::LineNotFound { line_id })?;
        if line.quantity == quantity {
            return Ok(Vec::new());
        }
        let event = CartEvent::QuantityChanged { line_id, quantity };
        self.ensure_fits(&event, "quantity")?;
        Ok(vec![event])
    }

    fn decide_remove_line(&self, line_id: Uuid) -> Result<Vec<CartEvent>, CartError> {
        self.ensure_open()?;
        if self.line(line_id).is_none() {
            return Err(CartError::LineNotFound { line_id });
        }
        Ok(vec![CartEvent::LineRemoved { line_id }])
    }

    fn decide_set_delivery(
        &self,
        name: &str,
        price: u64,
        currency: &str,
    ) -> Result<Vec<CartEvent>, CartError> {
        self.ensure_open()?;
        validate::text("name", name, MAX_NAME_CHARS)?;
        validate::price("price", price)?;
        validate::currency(currency)?;
        // Only the lines constrain the currency: the new delivery replaces
        // the old one, so a cart holding just a delivery may switch currency.
        let lines_currency = self.lines().first().map(|line| line.currency.as_str());
        ensure_currency(lines_currency, currency)?;

        if let Some(current) = self.delivery()
            && current.name == name
            && current.price == price
            && current.currency == currency
        {
            return Ok(Vec::new());
        }
        let event = CartEvent::DeliverySet {
            name: name.to_owned(),
            price,
            currency: currency.to_owned(),
        };
        self.ensure_fits(&event, "price")?;
        Ok(vec![event])
    }

    fn decide_remove_delivery(&self) -> Result<Vec<CartEvent>, CartError> {
        self.ensure_open()?;
        Ok(match self.delivery() {
            Some(_) => vec![CartEvent::DeliveryRemoved],
            None => Vec::new(),
        })
    }

    fn decide_clear(&self) -> Result<Vec<CartEvent>, CartError> {
        self.ensure_open()?;
        if self.lines().is_empty() && self.delivery().is_none() {
            return Ok(Vec::new());
        }
        Ok(vec![CartEvent::Cleared])
    }

    fn decide_checkout(&self) -> Result<Vec<CartEvent>, CartError> {
        self.ensure_open()?;
        if self.lines().is_empty() {
            return Err(CartError::Empty);
        }
        Ok(vec![CartEvent::CheckedOut {
            order_id: Uuid::new_v4(),
            reservation: None,
        }])
    }

    /// The gate for every command but `Create`.
    fn ensure_open(&self) -> Result<(), CartError> {
        if !self.is_created() {
            return Err(CartError::NotFound);
        }
        if self.status() == CartStatus::CheckedOut {
            return Err(CartError::CheckedOut {
                order_id: self.order_id(),
            });
        }
        Ok(())
    }

    /// Checks the totals still fit in `u64` once `event` is applied.
    ///
    /// With today's limits a valid cart cannot overflow, but checking the
    /// would-be state keeps the invariant behind the infallible
    /// [`Cart::totals`] true even for carts replayed from events accepted
    /// under looser, older limits. (The would-be sums come from the
    /// event's numbers, not from a copy of the cart; a test holds them to
    /// what `apply` produces.)
    fn ensure_fits(&self, event: &CartEvent, field: &'static str) -> Result<(), CartError> {
        if self.fits_after(event) {
            Ok(())
        } else {
            Err(CartError::Overflow {
                field: field.into(),
            })
        }
    }
}

/// One currency per cart, so totals are a single meaningful sum.
fn ensure_currency(cart: Option<&str>, given: &str) -> Result<(), CartError> {
    match cart {
        Some(cart) if cart != given => Err(CartError::CurrencyMismatch {
            cart: cart.to_owned(),
            given: given.to_owned(),
        }),
        _ => Ok(()),
    }
}
