//! Checks on single input fields, independent of cart state.
//!
//! Reasons are written for the API client and never echo the offending text
//! back, since it may be arbitrarily long or contain control characters.

use crate::error::CartError;
use crate::limits::{MAX_PRICE, MAX_QUANTITY, MAX_TAX_RATE_BP};

fn invalid(field: &'static str, reason: impl Into<String>) -> CartError {
    CartError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn quantity(quantity: u32) -> Result<(), CartError> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(invalid(
            "quantity",
            format!("must be between 1 and {MAX_QUANTITY}, got {quantity}"),
        ))
    }
}

/// A human-entered label (sku, name): not blank, at most `max_chars`
/// characters (not bytes, so non-ASCII names get the same room), and free of
/// control characters, which would corrupt receipts and logs.
pub(crate) fn text(field: &'static str, value: &str, max_chars: usize) -> Result<(), CartError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(invalid(
            field,
            format!("must be at most {max_chars} characters, got {chars}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

pub(crate) fn price(field: &'static str, price: u64) -> Result<(), CartError> {
    if price <= MAX_PRICE {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be at most {MAX_PRICE} minor units, got {price}"),
        ))
    }
}

/// An ISO 4217 alphabetic code. Only the shape is checked: the domain has no
/// list of currencies and does not need one to keep a cart consistent.
pub(crate) fn currency(currency: &str) -> Result<(), CartError> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid(
            "currency",
            "must be three upper-case ASCII letters (ISO 4217), e.g. \"EUR\"",
        ))
    }
}

pub(crate) fn tax_rate(tax_rate_bp: Option<u32>) -> Result<(), CartError> {
    match tax_rate_bp {
        Some(bp) if bp > MAX_TAX_RATE_BP => Err(invalid(
            "tax_rate_bp",
            format!("must be at most {MAX_TAX_RATE_BP} basis points (100 %), got {bp}"),
        )),
        _ => Ok(()),
    }
}
