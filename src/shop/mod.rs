//! The shop around the cart: the catalog (a product grain per SKU: the
//! price is the server's word, never the client's), stock (a stock grain
//! per SKU: units on hand and reservations), and checkout, which the cart
//! grain runs across them (see `cart_grain.rs`).

mod product;
mod stock;

use std::sync::OnceLock;
use std::time::Duration;

pub use product::ProductGrain;
pub use stock::StockGrain;

/// How the shop behaves, from the node's config.
#[derive(Debug, Clone, Copy)]
pub struct ShopSettings {
    /// How long a checkout's reservation holds stock unless confirmed; its
    /// stock grain's reminder releases it then.
    pub reservation_hold: Duration,
    /// How long a checkout waits for each catalog and stock call.
    pub call_deadline: Duration,
}

impl Default for ShopSettings {
    fn default() -> Self {
        ShopSettings {
            reservation_hold: Duration::from_secs(120),
            call_deadline: Duration::from_secs(5),
        }
    }
}

static SETTINGS: OnceLock<ShopSettings> = OnceLock::new();

/// The shop's settings (set once when the node starts; defaults before).
pub fn settings() -> ShopSettings {
    SETTINGS.get().copied().unwrap_or_default()
}

/// Sets the shop's settings for this process. The first call wins.
pub fn configure(settings: ShopSettings) {
    let _ = SETTINGS.set(settings);
}
