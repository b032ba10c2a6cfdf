//! Why a command was refused, and how that maps onto HTTP.
//!
//! The mapping lives here so every transport (HTTP, gRPC) classifies errors
//! the same way and none of them re-derives it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// A refused command. Each variant is one cause and carries the values that
/// explain it. Serializable: it travels between members as it is.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum CartError {
    /// The cart was never created (every command but `Create`).
    #[error("cart does not exist")]
    NotFound,
    /// The cart is checked out and no longer changes.
    #[error("cart is checked out")]
    CheckedOut { order_id: Option<Uuid> },
    #[error("line {line_id} is not in the cart")]
    LineNotFound { line_id: Uuid },
    /// An input field breaks a rule; `reason` is meant for the client.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: Cow<'static, str>,
        reason: String,
    },
    /// A cart holds one currency; `given` differs from it.
    #[error("currency {given} does not match the cart currency {cart}")]
    CurrencyMismatch { cart: String, given: String },
    #[error("cart already holds the maximum of {max} lines")]
    TooManyLines { max: usize },
    /// Adding to a line would take it past the most units a line holds
    /// (the same add fits a line holding fewer).
    #[error("the line holds {in_cart} units; with this add it would exceed the maximum of {max}")]
    LineFull {
        line_id: Uuid,
        in_cart: u32,
        max: u32,
    },
    /// The change would push the cart's totals past `u64::MAX` minor units.
    #[error("{field} would make the cart totals exceed the representable amount")]
    Overflow { field: Cow<'static, str> },
    /// Checkout of a cart without lines.
    #[error("cannot check out an empty cart")]
    Empty,
    /// Not enough units of a SKU to hold: `available` are.
    #[error("only {available} units are available")]
    OutOfStock { available: u64 },
    /// The catalog's price (or tax, currency) of these lines is no longer
    /// the one the cart holds: the client must look again.
    #[error("the price of {} line(s) changed", lines.len())]
    PriceChanged { lines: Vec<Uuid> },
    /// Not enough stock for these lines.
    #[error("{} line(s) are out of stock", lines.len())]
    SoldOut { lines: Vec<Uuid> },
    /// The SKU is not in the catalog.
    #[error("no product has this sku")]
    UnknownSku,
    /// A grain the command needs (the catalog, the stock) did not answer
    /// in time; nothing changed and no stock is held (retry).
    #[error("{reason}")]
    Unavailable { reason: String },
}

/// Coarse class of a [`CartError`], for transports to map onto their codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The cart or a line does not exist (HTTP 404).
    NotFound,
    /// The request is well-formed but the cart's state refuses it (HTTP 409).
    Conflict,
    /// The request itself is malformed or out of bounds (HTTP 400).
    Invalid,
    /// Something it needs did not answer; nothing changed (HTTP 503).
    Unavailable,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Invalid => 400,
            ErrorKind::Unavailable => 503,
        }
    }
}

impl CartError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CartError::NotFound | CartError::LineNotFound { .. } => ErrorKind::NotFound,
            // A currency mismatch is a conflict, not bad input: the same
            // request succeeds on an empty cart or one in that currency.
            CartError::CheckedOut { .. }
            | CartError::CurrencyMismatch { .. }
            | CartError::TooManyLines { .. }
            | CartError::LineFull { .. }
            | CartError::Empty
            | CartError::OutOfStock { .. }
            | CartError::PriceChanged { .. }
            | CartError::SoldOut { .. } => ErrorKind::Conflict,
            CartError::UnknownSku => ErrorKind::NotFound,
            CartError::Unavailable { .. } => ErrorKind::Unavailable,
            CartError::Invalid { .. } | CartError::Overflow { .. } => ErrorKind::Invalid,
        }
    }

    /// The HTTP status code for this error.
    pub fn http_status(&self) -> u16 {
        self.kind().http_status()
    }

    /// A stable, machine-readable code for response bodies (snake_case).
    pub fn code(&self) -> &'static str {
        match self {
            CartError::NotFound => "not_found",
            CartError::CheckedOut { .. } => "checked_out",
            CartError::LineNotFound { .. } => "line_not_found",
            CartError::Invalid { .. } => "invalid",
            CartError::CurrencyMismatch { .. } => "currency_mismatch",
            CartError::TooManyLines { .. } => "too_many_lines",
            CartError::LineFull { .. } => "line_full",
            CartError::Overflow { .. } => "overflow",
            CartError::Empty => "empty",
            CartError::OutOfStock { .. } => "out_of_stock",
            CartError::PriceChanged { .. } => "price_changed",
            CartError::SoldOut { .. } => "sold_out",
            CartError::UnknownSku => "unknown_sku",
            CartError::Unavailable { .. } => "unavailable",
        }
    }

    /// The input field at fault, named as in the command, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            CartError::Invalid { field, .. } | CartError::Overflow { field } => Some(field),
            CartError::LineNotFound { .. } => Some("line_id"),
            CartError::CurrencyMismatch { .. } => Some("currency"),
            CartError::LineFull { .. } => Some("quantity"),
            CartError::UnknownSku => Some("sku"),
            CartError::NotFound
            | CartError::CheckedOut { .. }
            | CartError::TooManyLines { .. }
            | CartError::Empty
            | CartError::OutOfStock { .. }
            | CartError::PriceChanged { .. }
            | CartError::SoldOut { .. }
            | CartError::Unavailable { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_documented_status() {
        let cases = [
            (CartError::NotFound, 404, None),
            (CartError::CheckedOut { order_id: None }, 409, None),
            (
                CartError::LineNotFound {
                    line_id: Uuid::nil(),
                },
                404,
                Some("line_id"),
            ),
            (
                CartError::Invalid {
                    field: "sku".into(),
                    reason: "must not be empty".into(),
                },
                400,
                Some("sku"),
            ),
            (
                CartError::CurrencyMismatch {
                    cart: "EUR".into(),
                    given: "USD".into(),
                },
                409,
                Some("currency"),
            ),
            (CartError::TooManyLines { max: 200 }, 409, None),
            (
                CartError::Overflow {
                    field: "price".into(),
                },
                400,
                Some("price"),
            ),
            (CartError::Empty, 409, None),
        ];
        for (error, status, field) in cases {
            assert_eq!(error.http_status(), status, "{error:?}");
            assert_eq!(error.field(), field, "{error:?}");
        }
    }
}
