//! The bounds [`Cart::decide`](crate::Cart::decide) enforces on input.
//!
//! They are public so the HTTP layer can document them (e.g. in its OpenAPI
//! schema) without restating the numbers.

/// Most units of one line. Keeps carts plausible for a shop and bounds totals.
pub const MAX_QUANTITY: u32 = 999;

/// Most lines in one cart. Bounds the state a grain keeps in memory and the
/// size of its event stream.
pub const MAX_LINES: usize = 200;

/// Highest unit price or delivery price, in minor units (10^12 cents is ten
/// billion in a two-decimal currency). Anything above is almost certainly a
/// client bug; it also keeps totals far below `u64::MAX`.
pub const MAX_PRICE: u64 = 1_000_000_000_000;

/// Highest tax rate, in basis points (10000 = 100 %).
pub const MAX_TAX_RATE_BP: u32 = 10_000;

/// Most characters (not bytes) of a SKU.
pub const MAX_SKU_CHARS: usize = 64;

/// Most characters (not bytes) of an item or delivery name.
pub const MAX_NAME_CHARS: usize = 200;
