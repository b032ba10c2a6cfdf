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
    fn encoded_size_hint(&self) -> usize {
        let strings = |line: &LineBody| line.sku.len() + line.name.len();
        320 + self.delivery.as_ref().map_or(0, |d| 64 + d.name.len())
            + self
                .lines
                .iter()
                .map(|line| 240 + strings(line))
                .sum::<usize>()
    }

    /// The body as JSON, byte for byte what `serde_json` writes for it
    /// (a test holds the two equal), written without serde: every answer
    /// to a cart request is one of these, and serde's path escaped each
    /// key and checked each string a byte at a time through a generic
    /// writer — a fifth of the HTTP workers' time on the add-item path.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Json(Vec::with_capacity(self.encoded_size_hint()));
        out.raw(b"{\"id\":");
        out.uuid(self.id);
        out.raw(b",\"version\":");
        out.int(self.version);
        out.raw(b",\"status\":");
        out.string(self.status);
        out.raw(b",\"currency\":");
        out.optional_string(self.currency);
        out.raw(b",\"lines\":[");
        for (n, line) in self.lines.iter().enumerate() {
            if n > 0 {
                out.raw(b",");
            }
            out.raw(b"{\"line_id\":");
            out.uuid(line.line_id);
            out.raw(b",\"sku\":");
            out.string(line.sku);
            out.raw(b",\"name\":");
            out.string(line.name);
            out.raw(b",\"quantity\":");
            out.int(line.quantity);
            out.raw(b",\"unit_price\":");
            out.int(line.unit_price);
            out.raw(b",\"currency\":");
            out.string(line.currency);
            out.raw(b",\"tax_rate_bp\":");
            match line.tax_rate_bp {
                Some(rate) => out.int(rate),
                None => out.raw(b"null"),
            }
            out.raw(b",\"line_total\":");
            out.int(line.line_total);
            out.raw(b",\"line_tax\":");
            out.int(line.line_tax);
            out.raw(b"}");
        }
        out.raw(b"],\"delivery\":");
        match &self.delivery {
            Some(delivery) => {
                out.raw(b"{\"name\":");
                out.string(delivery.name);
                out.raw(b",\"price\":");
                out.int(delivery.price);
                out.raw(b",\"currency\":");
                out.string(delivery.currency);
                out.raw(b"}");
            }
            None => out.raw(b"null"),
        }
        let totals = &self.totals;
        out.raw(b",\"totals\":{\"subtotal\":");
        out.int(totals.subtotal);
        out.raw(b",\"tax\":");
        out.int(totals.tax);
        out.raw(b",\"delivery\":");
        out.int(totals.delivery);
        out.raw(b",\"total\":");
        out.int(totals.total);
        out.raw(b",\"currency\":");
        out.optional_string(totals.currency);
        out.raw(b"},\"order_id\":");
        match self.order_id {
            Some(order) => out.uuid(order),
            None => out.raw(b"null"),
        }
        out.raw(b"}");
        out.0
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

/// A JSON writer for [`CartBody::to_json`]: keys come as literal
/// fragments, strings are escaped as `serde_json` escapes them.
struct Json(Vec<u8>);

impl Json {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn int(&mut self, n: impl itoa::Integer) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }

    fn uuid(&mut self, id: Uuid) {
        self.raw(b"\"");
        self.raw(
            id.hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        self.raw(b"\"");
    }

    fn optional_string(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => self.raw(b"null"),
        }
    }

    /// `s` quoted: `"` and `\` backslashed, control characters as `\n`,
    /// `\t`, ... or `\u00XX`; everything else (UTF-8 included) as is.
    fn string(&mut self, s: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.raw(b"\"");
        let bytes = s.as_bytes();
        let mut start = 0;
        for (at, &byte) in bytes.iter().enumerate() {
            let short: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => b"",
                _ => continue,
            };
            self.raw(&bytes[start..at]);
            if short.is_empty() {
                self.raw(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]);
            } else {
                self.raw(short);
            }
            start = at + 1;
        }
        self.raw(&bytes[start..]);
        self.raw(b"\"");
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

    /// The hand-written encoder writes exactly what serde_json writes for
    /// the same body, over a thousand bodies: strings drawn from every
    /// control character, quotes, backslashes, DEL and multi-byte UTF-8;
    /// with and without delivery, tax rate, currency and order id; numbers
    /// up to `u64::MAX`.
    #[test]
    fn the_cart_encoder_writes_what_serde_json_writes() {
        let mut pool: Vec<char> = (0u8..0x20).map(char::from).collect();
        pool.extend([
            '"', '\\', '/', '\u{7f}', 'a', 'Z', ' ', 'é', '€', '😀', '\u{2028}',
        ]);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut strings = Vec::new();
        for _ in 0..4000 {
            let length = (next() % 12) as usize;
            strings.push(
                (0..length)
                    .map(|_| pool[(next() % pool.len() as u64) as usize])
                    .collect::<String>(),
            );
        }
        let number = |n: u64| match n % 4 {
            0 => 0,
            1 => u64::MAX,
            _ => n >> (n % 64),
        };
        for body in 0..1000 {
            let at = |n: usize| strings[(body * 4 + n) % strings.len()].as_str();
            let lines = (0..(next() % 4) as usize)
                .map(|n| LineBody {
                    line_id: Uuid::from_u128(u128::from(next()) << 64 | u128::from(next())),
                    sku: at(n),
                    name: at(n + 1),
                    quantity: next() as u32,
                    unit_price: number(next()),
                    currency: at(n + 2),
                    tax_rate_bp: (next() % 2 == 0).then(|| next() as u32),
                    line_total: number(next()),
                    line_tax: number(next()),
                })
                .collect();
            let cart = CartBody {
                id: Uuid::from_u128(u128::from(next())),
                version: number(next()),
                status: if body % 2 == 0 { "open" } else { "checked_out" },
                currency: (next() % 3 > 0).then(|| at(3)),
                lines,
                delivery: (next() % 2 == 0).then(|| DeliveryBody {
                    name: at(1),
                    price: number(next()),
                    currency: at(2),
                }),
                totals: TotalsBody {
                    subtotal: number(next()),
                    tax: number(next()),
                    delivery: number(next()),
                    total: number(next()),
                    currency: (next() % 2 == 0).then(|| at(0)),
                },
                order_id: (next() % 2 == 0).then(|| Uuid::from_u128(u128::from(next()))),
            };
            let ours = cart.to_json();
            let theirs = serde_json::to_vec(&cart).expect("serde_json");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "body {body}"
            );
        }
    }
}
