//! The API's JSON bodies. Requests refuse unknown fields, so a typo is an
//! error naming the field instead of a silently ignored value.

use granary_cart::{Cart, CartStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A cart as the API shows it: borrowed from the cart, so an answer is
/// written straight from the grain's state without copying its lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartBody<'a> {
    pub id: Uuid,
    /// Number of changes the cart has seen; also its `ETag`.
    pub version: u64,
    /// `open` or `checked_out`.
    pub status: &'static str,
    /// The cart's currency (ISO 4217), set by the first priced line or delivery.
    pub currency: Option<&'a str>,
    pub lines: Vec<LineBody<'a>>,
    pub delivery: Option<DeliveryBody<'a>>,
    pub totals: TotalsBody<'a>,
    /// Set by checkout.
    pub order_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineBody<'a> {
    pub line_id: Uuid,
    pub sku: &'a str,
    pub name: &'a str,
    pub quantity: u32,
    /// Net price of one unit, in minor units (cents).
    pub unit_price: u64,
    pub currency: &'a str,
    /// Tax rate in basis points (2000 = 20%).
    pub tax_rate_bp: Option<u32>,
    pub line_total: u64,
    pub line_tax: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryBody<'a> {
    pub name: &'a str,
    pub price: u64,
    pub currency: &'a str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TotalsBody<'a> {
    pub subtotal: u64,
    pub tax: u64,
    pub delivery: u64,
    pub total: u64,
    pub currency: Option<&'a str>,
}

impl<'a> CartBody<'a> {
    /// About the length of this body in JSON (a little more, so the buffer
    /// it is written to need not grow).
    pub fn encoded_size_hint(&self) -> usize {
        let strings = |line: &LineBody| line.sku.len() + line.name.len();
        320 + self.delivery.as_ref().map_or(0, |d| 64 + d.name.len())
            + self
                .lines
                .iter()
                .map(|line| 240 + strings(line))
                .sum::<usize>()
    }

    pub fn new(id: Uuid, version: u64, cart: &'a Cart) -> Self {
        let totals = cart.totals();
        CartBody {
            id,
            version,
            status: match cart.status() {
                CartStatus::Open => "open",
                CartStatus::CheckedOut => "checked_out",
            },
            currency: cart.currency(),
            lines: cart
                .lines()
                .iter()
                .map(|line| LineBody {
                    line_id: line.line_id,
                    sku: &line.sku,
                    name: &line.name,
                    quantity: line.quantity,
                    unit_price: line.unit_price,
                    currency: &line.currency,
                    tax_rate_bp: line.tax_rate_bp,
                    line_total: line.line_total().unwrap_or(u64::MAX),
                    line_tax: line.line_tax().unwrap_or(u64::MAX),
                })
                .collect(),
            delivery: cart.delivery().map(|d| DeliveryBody {
                name: &d.name,
                price: d.price,
                currency: &d.currency,
            }),
            totals: TotalsBody {
                subtotal: totals.subtotal,
                tax: totals.tax,
                delivery: totals.delivery,
                total: totals.total,
                currency: cart.currency(),
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
    #[serde(deserialize_with = "whole::number")]
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
    #[serde(deserialize_with = "whole::number")]
    pub unit_price: u64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    /// Tax rate in basis points, 0..=10000.
    #[serde(default)]
    #[serde(deserialize_with = "whole::option")]
    pub tax_rate_bp: Option<u32>,
    /// Units on hand (sets the stock when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1_000_000_000_000_u64)]
    #[serde(deserialize_with = "whole::option")]
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
    #[serde(deserialize_with = "whole::number")]
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
    #[serde(deserialize_with = "whole::number")]
    pub quantity: u32,
}

/// `PUT /carts/{id}/delivery`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDeliveryBody {
    pub name: String,
    /// In minor units of `currency`.
    #[serde(deserialize_with = "whole::number")]
    pub price: u64,
    pub currency: String,
}

/// The body of a change that takes no input, if one is sent: `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoInput {}

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

/// Whole numbers in request bodies, however JSON writes them: `3`, `3.0`
/// and `3e0` are all the integer 3 to JSON Schema (and to JavaScript, whose
/// `JSON.stringify` may send any of them), so the API takes each.
mod whole {
    use serde::de::{Deserialize, Deserializer, Error, Unexpected};
    use serde_json::Number;

    pub fn number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        whole(&Number::deserialize(deserializer)?)
    }

    pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        Option::<Number>::deserialize(deserializer)?
            .map(|number| whole(&number))
            .transpose()
    }

    fn whole<T: TryFrom<u64>, E: Error>(number: &Number) -> Result<T, E> {
        number
            .as_u64()
            .or_else(|| {
                // Below 2^64, where the cast is exact for a whole value.
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(f))
                    .map(|f| f as u64)
            })
            .and_then(|value| T::try_from(value).ok())
            .ok_or_else(|| {
                E::invalid_value(
                    Unexpected::Other(&number.to_string()),
                    &"a whole number in range",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_json;

    #[test]
    fn whole_numbers_are_taken_however_json_writes_them() {
        for body in [
            r#"{"sku": "a", "quantity": 3}"#,
            r#"{"sku": "a", "quantity": 3.0}"#,
            r#"{"sku": "a", "quantity": 0.3e1}"#,
        ] {
            let item: AddItemBody = parse_json(body.as_bytes()).unwrap();
            assert_eq!(item.quantity, 3, "{body}");
        }
        for quantity in ["2.5", "-1", "-1.0", "1e20", "4294967296", "\"3\""] {
            let body = format!(r#"{{"sku": "a", "quantity": {quantity}}}"#);
            let err = parse_json::<AddItemBody>(body.as_bytes()).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("quantity"), "{quantity}");
        }
        let product: ProductBody = parse_json(
            br#"{"name": "n", "unit_price": 5.0, "currency": "EUR", "tax_rate_bp": null, "stock": 7.0}"#,
        )
        .unwrap();
        assert_eq!(
            (product.unit_price, product.tax_rate_bp, product.stock),
            (5, None, Some(7))
        );
    }
}
