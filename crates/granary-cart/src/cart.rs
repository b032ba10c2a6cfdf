//! The cart's state and how events change it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::CartEvent;

/// Whether the cart still accepts changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    #[default]
    Open,
    /// Final: every command except `Create` (a no-op) is refused.
    CheckedOut,
}

/// One product in the cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Stable id of the line, generated when the sku was first added.
    pub line_id: Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    /// Net price of one unit, in minor units of `currency`.
    pub unit_price: u64,
    pub currency: String,
    /// Tax rate in basis points (0..=10000); `None` means untaxed.
    pub tax_rate_bp: Option<u32>,
}

/// The chosen delivery option.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub name: String,
    /// Price in minor units of `currency`; not taxed.
    pub price: u64,
    pub currency: String,
}

/// A shopping cart, rebuilt by applying its events in order.
///
/// Fields are private so that state only changes through [`Cart::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    created: bool,
    /// In the order the skus were first added, so clients see a stable list.
    ///
    /// Grown one line at a time (`Vec` would double to four at the first):
    /// an idle live cart's memory is mostly this.
    lines: Vec<Line>,
    /// Boxed: most carts have none, and it is the cart's widest field.
    delivery: Option<Box<Delivery>>,
    status: CartStatus,
    order_id: Option<Uuid>,
    /// The stock reservations the checkout holds (their common id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reservation: Option<String>,
}

impl Cart {
    /// Whether `Created` has been applied. A cart that was never created is
    /// "not found" to every command but `Create`.
    pub fn is_created(&self) -> bool {
        self.created
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    pub fn line(&self, line_id: Uuid) -> Option<&Line> {
        self.lines.iter().find(|line| line.line_id == line_id)
    }

    pub fn delivery(&self) -> Option<&Delivery> {
        self.delivery.as_deref()
    }

    /// The one currency of everything priced in the cart; `None` while the
    /// cart holds neither lines nor a delivery. It is whatever the priced
    /// contents are in, so an emptied cart (cleared, or its last line and
    /// delivery removed) takes a new one, and replay cannot disagree.
    pub fn currency(&self) -> Option<&str> {
        self.lines
            .first()
            .map(|line| line.currency.as_str())
            .or_else(|| self.delivery.as_ref().map(|d| d.currency.as_str()))
    }

    pub fn status(&self) -> CartStatus {
        self.status
    }

    /// Whether the cart checked out holding the stock reservations named
    /// `reservation` (the stock asks when their hold expires).
    pub fn checked_out_under(&self, reservation: &str) -> bool {
        self.status == CartStatus::CheckedOut && self.reservation.as_deref() == Some(reservation)
    }

    /// Set once the cart is checked out.
    pub fn order_id(&self) -> Option<Uuid> {
        self.order_id
    }

    /// Folds one event into the state.
    ///
    /// Never fails and never validates: the event was accepted by
    /// [`Cart::decide`] (possibly under older rules), so it is a fact. Events
    /// that no longer make sense — naming an unknown line, or re-adding a
    /// line id already present — are ignored rather than panicking, so a
    /// damaged or oddly ordered stream still replays.
    pub fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::Created => self.created = true,
            CartEvent::ItemAdded {
                line_id,
                sku,
                name,
                quantity,
                unit_price,
                currency,
                tax_rate_bp,
            } => {
                if self.line(*line_id).is_none() {
                    self.lines.reserve_exact(1);
                    self.lines.push(Line {
                        line_id: *line_id,
                        sku: sku.clone(),
                        name: name.clone(),
                        quantity: *quantity,
                        unit_price: *unit_price,
                        currency: currency.clone(),
                        tax_rate_bp: *tax_rate_bp,
                    });
                }
            }
            CartEvent::QuantityChanged { line_id, quantity } => {
                if let Some(line) = self.lines.iter_mut().find(|l| l.line_id == *line_id) {
                    line.quantity = *quantity;
                }
            }
            CartEvent::LineRemoved { line_id } => {
                self.lines.retain(|l| l.line_id != *line_id);
                self.lines.shrink_to_fit();
            }
            CartEvent::DeliverySet {
                name,
                price,
                currency,
            } => {
                self.delivery = Some(Box::new(Delivery {
                    name: name.clone(),
                    price: *price,
                    currency: currency.clone(),
                }));
            }
            CartEvent::DeliveryRemoved => self.delivery = None,
            CartEvent::Cleared => {
                self.lines = Vec::new();
                self.delivery = None;
            }
            CartEvent::CheckedOut {
                order_id,
                reservation,
            } => {
                self.status = CartStatus::CheckedOut;
                self.order_id = Some(*order_id);
                self.reservation = reservation.clone();
            }
            CartEvent::ConfirmationPending { .. } => {}
        }
    }
}
