//! Totals: line amounts, tax and the cart sum.
//!
//! Sums are computed in `u128`, where they cannot overflow for any cart that
//! fits in memory, and only then narrowed to `u64`. That gives one place that
//! answers "does this state fit?" ([`Cart::try_totals`], used by `decide`)
//! and an infallible [`Cart::totals`] for the normal case.

use serde::{Deserialize, Serialize};

use crate::cart::{Cart, Delivery, Line};
use crate::event::CartEvent;

/// The amounts of a cart, in minor units of `currency`.
///
/// - `subtotal` = Σ quantity × unit_price (prices are net of tax)
/// - `tax` = Σ per line of round_half_up(line total × tax_rate_bp / 10000)
/// - `total` = subtotal + tax + delivery
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub subtotal: u64,
    pub tax: u64,
    pub delivery: u64,
    pub total: u64,
    /// `None` for a cart with nothing priced in it (all amounts are then 0).
    pub currency: Option<String>,
}

const BASIS_POINTS_PER_UNIT: u128 = 10_000;

impl Line {
    /// quantity × unit_price, or `None` if it does not fit in `u64`.
    pub fn line_total(&self) -> Option<u64> {
        u64::try_from(self.wide_total()).ok()
    }

    /// The tax on this line, rounded half up; `None` if it does not fit in
    /// `u64`.
    pub fn line_tax(&self) -> Option<u64> {
        u64::try_from(self.wide_tax()).ok()
    }

    fn wide_total(&self) -> u128 {
        self.priced().wide_total()
    }

    fn wide_tax(&self) -> u128 {
        self.priced().wide_tax()
    }

    fn priced(&self) -> Priced {
        Priced {
            quantity: self.quantity,
            unit_price: self.unit_price,
            tax_rate_bp: self.tax_rate_bp,
        }
    }
}

/// The numbers of a line: all its totals depend on.
#[derive(Clone, Copy)]
struct Priced {
    quantity: u32,
    unit_price: u64,
    tax_rate_bp: Option<u32>,
}

impl Priced {
    fn wide_total(self) -> u128 {
        u128::from(self.quantity) * u128::from(self.unit_price)
    }

    fn wide_tax(self) -> u128 {
        let Some(rate_bp) = self.tax_rate_bp else {
            return 0;
        };
        // Tax is rounded per line (as a receipt shows it), half up: adding
        // half the divisor before the truncating division rounds .5 up, which
        // is exact for non-negative amounts. Saturation only matters for
        // events that bypassed validation; the result then fails to narrow.
        self.wide_total()
            .saturating_mul(u128::from(rate_bp))
            .saturating_add(BASIS_POINTS_PER_UNIT / 2)
            / BASIS_POINTS_PER_UNIT
    }
}

impl Cart {
    /// The cart's totals.
    ///
    /// `decide` keeps every reachable state within `u64`, so this normally
    /// equals `try_totals().unwrap()`. For a state built from events that
    /// bypassed that rule, amounts saturate at `u64::MAX` instead of
    /// panicking.
    pub fn totals(&self) -> Totals {
        Sums::of(self).saturate(self.currency())
    }

    /// The cart's totals, or `None` if any amount would exceed `u64`.
    pub fn try_totals(&self) -> Option<Totals> {
        Sums::of(self).narrow(self.currency())
    }

    /// Whether the totals still fit in `u64` once `event` is applied,
    /// worked out from the event's numbers without copying the cart (the
    /// add-item path runs this on every call). An event that moves no
    /// money is checked on a copy.
    pub(crate) fn fits_after(&self, event: &CartEvent) -> bool {
        let delivery = self.delivery().map_or(0, |d| u128::from(d.price));
        let lines = self.lines().iter().map(Line::priced);
        let sums = match event {
            CartEvent::QuantityChanged { line_id, quantity } => Sums::over(
                self.lines().iter().map(|line| Priced {
                    quantity: if line.line_id == *line_id {
                        *quantity
                    } else {
                        line.quantity
                    },
                    ..line.priced()
                }),
                delivery,
            ),
            CartEvent::ItemAdded {
                quantity,
                unit_price,
                tax_rate_bp,
                ..
            } => Sums::over(
                lines.chain(std::iter::once(Priced {
                    quantity: *quantity,
                    unit_price: *unit_price,
                    tax_rate_bp: *tax_rate_bp,
                })),
                delivery,
            ),
            CartEvent::DeliverySet { price, .. } => Sums::over(lines, u128::from(*price)),
            other => {
                let mut next = self.clone();
                next.apply(other);
                Sums::of(&next)
            }
        };
        sums.fit()
    }
}

/// Exact amounts before narrowing to `u64`.
struct Sums {
    subtotal: u128,
    tax: u128,
    delivery: u128,
}

impl Sums {
    fn of(cart: &Cart) -> Self {
        Sums::over(
            cart.lines().iter().map(Line::priced),
            cart.delivery()
                .map_or(0, |d: &Delivery| u128::from(d.price)),
        )
    }

    fn over(lines: impl Iterator<Item = Priced>, delivery: u128) -> Self {
        let (subtotal, tax) = lines.fold((0u128, 0u128), |(subtotal, tax), line| {
            (
                subtotal.saturating_add(line.wide_total()),
                tax.saturating_add(line.wide_tax()),
            )
        });
        Sums {
            subtotal,
            tax,
            delivery,
        }
    }

    /// Whether every figure fits in `u64` (the total is the largest).
    fn fit(&self) -> bool {
        u64::try_from(self.total()).is_ok()
    }

    fn total(&self) -> u128 {
        self.subtotal
            .saturating_add(self.tax)
            .saturating_add(self.delivery)
    }

    fn narrow(&self, currency: Option<&str>) -> Option<Totals> {
        Some(Totals {
            subtotal: u64::try_from(self.subtotal).ok()?,
            tax: u64::try_from(self.tax).ok()?,
            delivery: u64::try_from(self.delivery).ok()?,
            total: u64::try_from(self.total()).ok()?,
            currency: currency.map(str::to_owned),
        })
    }

    fn saturate(&self, currency: Option<&str>) -> Totals {
        let sat = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        Totals {
            subtotal: sat(self.subtotal),
            tax: sat(self.tax),
            delivery: sat(self.delivery),
            total: sat(self.total()),
            currency: currency.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn line(quantity: u32, unit_price: u64, tax_rate_bp: Option<u32>) -> Line {
        Line {
            line_id: Uuid::nil(),
            sku: "sku".into(),
            name: "name".into(),
            quantity,
            unit_price,
            currency: "EUR".into(),
            tax_rate_bp,
        }
    }

    fn added(sku: &str, quantity: u32, unit_price: u64, tax_rate_bp: Option<u32>) -> CartEvent {
        CartEvent::ItemAdded {
            line_id: Uuid::from_u128(u128::from(sku.as_bytes()[0])),
            sku: sku.into(),
            name: "n".into(),
            quantity,
            unit_price,
            currency: "EUR".into(),
            tax_rate_bp,
        }
    }

    /// `fits_after` (no copy) says what applying the event to a copy and
    /// narrowing its totals says, near the edge of `u64` and past it, for
    /// every event kind that moves money.
    #[test]
    fn fits_after_agrees_with_applying_to_a_copy() {
        let prices = [
            0,
            1,
            999,
            10u64.pow(12),
            u64::MAX / 4000,
            u64::MAX / 2,
            u64::MAX,
        ];
        let quantities = [1u32, 2, 999, u32::MAX];
        let rates = [None, Some(0), Some(1900), Some(10_000), Some(u32::MAX)];
        let mut checked = 0;
        let mut refused = 0;
        for &base_price in &prices[..5] {
            let mut cart = Cart::default();
            cart.apply(&CartEvent::Created);
            cart.apply(&added("a", 3, base_price, Some(1900)));
            cart.apply(&added("b", 999, base_price / 3, None));
            let line_a = cart.lines()[0].line_id;
            let mut events = Vec::new();
            for &price in &prices {
                events.push(CartEvent::DeliverySet {
                    name: "d".into(),
                    price,
                    currency: "EUR".into(),
                });
                for &quantity in &quantities {
                    for &rate in &rates {
                        events.push(added("c", quantity, price, rate));
                    }
                }
            }
            for &quantity in &quantities {
                for line_id in [line_a, Uuid::nil()] {
                    events.push(CartEvent::QuantityChanged { line_id, quantity });
                }
            }
            events.push(CartEvent::Cleared);
            for event in &events {
                let mut copy = cart.clone();
                copy.apply(event);
                let expected = copy.try_totals().is_some();
                assert_eq!(cart.fits_after(event), expected, "{event:?} on {cart:?}");
                checked += 1;
                refused += usize::from(!expected);
            }
        }
        // Both answers were exercised.
        assert!(
            refused > 50 && refused < checked - 50,
            "{refused} of {checked}"
        );
    }

    #[test]
    fn line_tax_rounds_half_up() {
        // 150 × 10 % = 15.0 → 15; 5 × 10 % = 0.5 → 1; 4 × 10 % = 0.4 → 0
        assert_eq!(line(1, 150, Some(1000)).line_tax(), Some(15));
        assert_eq!(line(1, 5, Some(1000)).line_tax(), Some(1));
        assert_eq!(line(1, 4, Some(1000)).line_tax(), Some(0));
        // 3 × 333 = 999 at 7.5 % = 74.925 → 75
        assert_eq!(line(3, 333, Some(750)).line_tax(), Some(75));
    }

    #[test]
    fn untaxed_line_has_zero_tax() {
        assert_eq!(line(7, 1234, None).line_tax(), Some(0));
        assert_eq!(line(7, 1234, Some(0)).line_tax(), Some(0));
    }

    #[test]
    fn line_total_reports_overflow_as_none() {
        assert_eq!(line(2, u64::MAX, None).line_total(), None);
        assert_eq!(line(1, u64::MAX, None).line_total(), Some(u64::MAX));
        assert_eq!(line(1, u64::MAX, Some(10_000)).line_tax(), Some(u64::MAX));
        assert_eq!(line(2, u64::MAX, Some(10_000)).line_tax(), None);
    }
}
