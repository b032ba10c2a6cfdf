//! Property: whatever commands arrive, in any order, deciding each and
//! applying its events keeps the cart's invariants, and replaying the
//! emitted events on a fresh cart rebuilds exactly the same state.

use std::collections::HashSet;

use granary_cart::limits::{MAX_LINES, MAX_PRICE, MAX_QUANTITY};
use granary_cart::{Cart, CartCommand, CartStatus, NewItem};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::FileFailurePersistence;
use uuid::Uuid;

/// A command with its line reference left symbolic, resolved against the
/// cart at the time it runs, so generated sequences hit existing lines.
#[derive(Clone, Debug)]
enum Op {
    Create,
    Add(NewItem),
    ChangeQuantity(LineRef, u32),
    RemoveLine(LineRef),
    SetDelivery(String, u64, String),
    RemoveDelivery,
    Clear,
    Checkout,
}

#[derive(Clone, Debug)]
enum LineRef {
    Existing(Index),
    Unknown,
}

impl Op {
    fn command(&self, cart: &Cart) -> CartCommand {
        let line_id = |target: &LineRef| match target {
            LineRef::Existing(index) if !cart.lines().is_empty() => index.get(cart.lines()).line_id,
            _ => Uuid::new_v4(),
        };
        match self {
            Op::Create => CartCommand::Create,
            Op::Add(item) => CartCommand::AddItem(item.clone()),
            Op::ChangeQuantity(target, quantity) => CartCommand::ChangeQuantity {
                line_id: line_id(target),
                quantity: *quantity,
            },
            Op::RemoveLine(target) => CartCommand::RemoveLine {
                line_id: line_id(target),
            },
            Op::SetDelivery(name, price, currency) => CartCommand::SetDelivery {
                name: name.clone(),
                price: *price,
                currency: currency.clone(),
            },
            Op::RemoveDelivery => CartCommand::RemoveDelivery,
            Op::Clear => CartCommand::Clear,
            Op::Checkout => CartCommand::Checkout,
        }
    }
}

// Mostly valid values, with the boundaries and a few invalid ones mixed in.

fn quantity() -> impl Strategy<Value = u32> {
    prop_oneof![
        16 => 1..=5u32,
        4 => 1..=MAX_QUANTITY,
        1 => Just(0u32),
        1 => (MAX_QUANTITY + 1)..=u32::MAX,
    ]
}

fn price() -> impl Strategy<Value = u64> {
    prop_oneof![
        16 => Just(100u64),
        8 => 0..=10_000u64,
        1 => Just(MAX_PRICE),
        1 => any::<u64>(),
    ]
}

fn currency() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => Just("EUR"),
        2 => Just("USD"),
        1 => select(vec!["eur", "", "EURO"]),
    ]
    .prop_map(str::to_owned)
}

fn tax_rate() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        8 => Just(None),
        8 => Just(Some(1900)),
        4 => (0..=10_000u32).prop_map(Some),
        1 => Just(Some(10_001)),
    ]
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => select(vec!["a", "b", "c", "d", "e", "f", "g", "h"]),
        1 => select(vec!["", " ", "bad\n"]),
    ]
    .prop_map(str::to_owned)
}

fn line_ref() -> impl Strategy<Value = LineRef> {
    prop_oneof![
        9 => any::<Index>().prop_map(LineRef::Existing),
        1 => Just(LineRef::Unknown),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let item = (
        label(),
        label(),
        quantity(),
        price(),
        currency(),
        tax_rate(),
    )
        .prop_map(
            |(sku, name, quantity, unit_price, currency, tax_rate_bp)| NewItem {
                sku,
                name,
                quantity,
                unit_price,
                currency,
                tax_rate_bp,
            },
        );
    prop_oneof![
        1 => Just(Op::Create),
        20 => item.prop_map(Op::Add),
        5 => (line_ref(), quantity()).prop_map(|(l, q)| Op::ChangeQuantity(l, q)),
        2 => line_ref().prop_map(Op::RemoveLine),
        3 => (label(), price(), currency()).prop_map(|(n, p, c)| Op::SetDelivery(n, p, c)),
        1 => Just(Op::RemoveDelivery),
        1 => Just(Op::Clear),
        1 => Just(Op::Checkout),
    ]
}

fn check_invariants(cart: &Cart) -> Result<(), TestCaseError> {
    prop_assert!(cart.lines().len() <= MAX_LINES);
    let mut skus = HashSet::new();
    let mut line_ids = HashSet::new();
    for line in cart.lines() {
        prop_assert!((1..=MAX_QUANTITY).contains(&line.quantity), "{line:?}");
        prop_assert_eq!(Some(line.currency.as_str()), cart.currency());
        prop_assert!(skus.insert(&line.sku), "duplicate sku {}", line.sku);
        prop_assert!(line_ids.insert(line.line_id));
    }
    if let Some(delivery) = cart.delivery() {
        prop_assert_eq!(Some(delivery.currency.as_str()), cart.currency());
    }
    prop_assert_eq!(
        cart.currency().is_none(),
        cart.lines().is_empty() && cart.delivery().is_none()
    );
    prop_assert_eq!(cart.try_totals(), Some(cart.totals()));
    prop_assert_eq!(
        cart.status() == CartStatus::CheckedOut,
        cart.order_id().is_some()
    );
    if cart.status() == CartStatus::CheckedOut {
        prop_assert!(!cart.lines().is_empty());
    }
    Ok(())
}

proptest! {
    // Failing cases are saved next to this file (tests/properties.proptest-regressions)
    // and replayed first on later runs.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_command_sequence_keeps_invariants_and_replays(
        create_first in prop::bool::weighted(0.9),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        let mut cart = Cart::default();
        let mut log = Vec::new();
        let ops = create_first.then_some(Op::Create).into_iter().chain(ops);
        for op in ops {
            let command = op.command(&cart);
            let before = cart.clone();
            if let Ok(events) = cart.decide(&command) {
                prop_assert_eq!(&cart, &before, "decide must not change the cart");
                for event in &events {
                    cart.apply(event);
                }
                log.extend(events);
            }
            check_invariants(&cart)?;
        }

        let mut replayed = Cart::default();
        for event in &log {
            replayed.apply(event);
        }
        prop_assert_eq!(replayed, cart);
    }
}
