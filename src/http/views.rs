//! The API's JSON bodies. Requests refuse unknown fields, so a typo is an
//! error naming the field instead of a silently ignored value.

use granary_cart::{Cart, CartStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A cart as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartBody {
    pub id: Uuid,
    /// Number of changes the cart has seen; also its `ETag`.
    pub version: u64,
    /// `open` or `checked_out`.
    pub status: String,
    /// The cart's currency (ISO 4217), set by the first priced line or delivery.
    pub currency: Option<String>,
    pub lines: Vec<LineBody>,
    pub delivery: Option<DeliveryBody>,
    pub totals: TotalsBody,
    /// Set by checkout.
    pub order_id: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LineBody {
    pub line_id: Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    /// Net price of one unit, in minor units (cents).
    pub unit_price: u64,
    pub currency: String,
    /// Tax rate in basis points (2000 = 20%).
    pub tax_rate_bp: Option<u32>,
    pub line_total: u64,
    pub line_tax: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryBody {
    pub name: String,
    pub price: u64,
    pub currency: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TotalsBody {
    pub subtotal: u64,
    pub tax: u64,
    pub delivery: u64,
    pub total: u64,
    pub currency: Option<String>,
}

impl CartBody {
    pub fn new(id: Uuid, version: u64, cart: &Cart) -> Self {
        let totals = cart.totals();
        CartBody {
            id,
            version,
            status: match cart.status() {
                CartStatus::Open => "open",
                CartStatus::CheckedOut => "checked_out",
            }
            .to_owned(),
            currency: cart.currency().map(str::to_owned),
            lines: cart
                .lines()
                .iter()
                .map(|line| LineBody {
                    line_id: line.line_id,
                    sku: line.sku.clone(),
                    name: line.name.clone(),
                    quantity: line.quantity,
                    unit_price: line.unit_price,
                    currency: line.currency.clone(),
                    tax_rate_bp: line.tax_rate_bp,
                    line_total: line.line_total().unwrap_or(u64::MAX),
                    line_tax: line.line_tax().unwrap_or(u64::MAX),
                })
                .collect(),
            delivery: cart.delivery().map(|d| DeliveryBody {
                name: d.name.clone(),
                price: d.price,
                currency: d.currency.clone(),
            }),
            totals: TotalsBody {
                subtotal: totals.subtotal,
                tax: totals.tax,
                delivery: totals.delivery,
                total: totals.total,
                currency: totals.currency,
            },
            order_id: cart.order_id(),
        }
    }
}

/// `POST /carts/{id}/items`. The price, name, tax rate and currency come
/// from the catalog; adding a sku already in the cart adds to its quantity.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItemBody {
    /// A product's sku (1..=64 characters).
    pub sku: String,
    /// 1..=999.
    pub quantity: u32,
}

/// `PUT /admin/products/{sku}`: a product as the shop sells it, and
/// optionally its units on hand.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    /// 1..=200 characters.
    pub name: String,
    /// Net price of one unit, in minor units.
    pub unit_price: u64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    /// Tax rate in basis points, 0..=10000.
    #[serde(default)]
    pub tax_rate_bp: Option<u32>,
    /// Units on hand (sets the stock when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1_000_000_000_000_u64)]
    pub stock: Option<u64>,
}

/// A catalog entry as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub sku: String,
    pub name: String,
    pub unit_price: u64,
    pub currency: String,
    pub tax_rate_bp: Option<u32>,
}

impl From<granary_cart::ProductSpec> for ProductView {
    fn from(spec: granary_cart::ProductSpec) -> Self {
        ProductView {
            sku: spec.sku,
            name: spec.name,
            unit_price: spec.unit_price,
            currency: spec.currency,
            tax_rate_bp: spec.tax_rate_bp,
        }
    }
}

/// `PUT /admin/stock/{sku}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    /// Units physically there.
    #[schema(maximum = 1_000_000_000_000_u64)]
    pub on_hand: u64,
}

/// A sku's stock as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StockView {
    pub sku: String,
    pub on_hand: u64,
    /// Held by checkouts not yet confirmed.
    pub reserved: u64,
    pub available: u64,
}

/// `PATCH /carts/{id}/items/{line_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuantityBody {
    /// 1..=999; remove a line with `DELETE`.
    pub quantity: u32,
}

/// `PUT /carts/{id}/delivery`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDeliveryBody {
    pub name: String,
    /// In minor units of `currency`.
    pub price: u64,
    pub currency: String,
}

/// Every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The request field (or header) at fault, if one is.
    pub field: Option<String>,
    /// A stable machine-readable code.
    pub code: String,
    /// The cart lines at fault (a changed price, no stock), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<Uuid>>,
}
