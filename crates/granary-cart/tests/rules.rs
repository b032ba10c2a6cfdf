//! The cart's rules, one property per test, exercised through the public API
//! the way the grain uses it: decide, then apply the events.

use granary_cart::limits::{MAX_LINES, MAX_PRICE};
use granary_cart::{Cart, CartCommand, CartError, CartEvent, CartStatus, NewItem, Totals};
use uuid::Uuid;

/// Decides `command` and applies what it yields, as the grain does.
fn run(cart: &mut Cart, command: CartCommand) -> Result<Vec<CartEvent>, CartError> {
    let events = cart.decide(&command)?;
    for event in &events {
        cart.apply(event);
    }
    Ok(events)
}

fn created() -> Cart {
    let mut cart = Cart::default();
    run(&mut cart, CartCommand::Create).expect("create");
    cart
}

fn item(sku: &str, quantity: u32, unit_price: u64) -> NewItem {
    NewItem {
        sku: sku.into(),
        name: format!("Product {sku}"),
        quantity,
        unit_price,
        currency: "EUR".into(),
        tax_rate_bp: None,
    }
}

fn add(cart: &mut Cart, item: NewItem) -> Uuid {
    let sku = item.sku.clone();
    run(cart, CartCommand::AddItem(item)).expect("add item");
    cart.lines()
        .iter()
        .find(|line| line.sku == sku)
        .expect("line for sku")
        .line_id
}

fn delivery(price: u64, currency: &str) -> CartCommand {
    CartCommand::SetDelivery {
        name: "Courier".into(),
        price,
        currency: currency.into(),
    }
}

fn invalid_field(result: Result<Vec<CartEvent>, CartError>) -> String {
    match result {
        Err(CartError::Invalid { field, .. }) => field.into_owned(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn creating_a_cart_yields_created() {
    let cart = Cart::default();
    assert!(!cart.is_created());
    assert_eq!(
        cart.decide(&CartCommand::Create),
        Ok(vec![CartEvent::Created])
    );
}

#[test]
fn creating_an_existing_cart_is_a_no_op() {
    let cart = created();
    assert_eq!(cart.decide(&CartCommand::Create), Ok(vec![]));
}

#[test]
fn commands_on_a_missing_cart_are_not_found() {
    let cart = Cart::default();
    let commands = [
        CartCommand::AddItem(item("a", 1, 100)),
        CartCommand::ChangeQuantity {
            line_id: Uuid::new_v4(),
            quantity: 1,
        },
        CartCommand::RemoveLine {
            line_id: Uuid::new_v4(),
        },
        delivery(100, "EUR"),
        CartCommand::RemoveDelivery,
        CartCommand::Clear,
        CartCommand::Checkout,
    ];
    for command in commands {
        assert_eq!(
            cart.decide(&command),
            Err(CartError::NotFound),
            "{command:?}"
        );
    }
}

#[test]
fn deciding_does_not_change_the_cart() {
    let cart = created();
    let before = cart.clone();
    let events = cart
        .decide(&CartCommand::AddItem(item("a", 1, 100)))
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(cart, before);
}

#[test]
fn adding_an_item_adds_a_line_and_sets_the_currency() {
    let mut cart = created();
    let line_id = add(&mut cart, item("a", 2, 150));
    let line = cart.line(line_id).unwrap();
    assert_eq!(
        (line.sku.as_str(), line.quantity, line.unit_price),
        ("a", 2, 150)
    );
    assert_eq!(cart.currency(), Some("EUR"));
}

#[test]
fn lines_keep_insertion_order() {
    let mut cart = created();
    for sku in ["c", "a", "b"] {
        add(&mut cart, item(sku, 1, 100));
    }
    add(&mut cart, item("a", 1, 100));
    let skus: Vec<_> = cart.lines().iter().map(|l| l.sku.as_str()).collect();
    assert_eq!(skus, ["c", "a", "b"]);
}

#[test]
fn adding_same_sku_increases_quantity() {
    let mut cart = created();
    let line_id = add(&mut cart, item("a", 2, 150));
    let events = run(&mut cart, CartCommand::AddItem(item("a", 3, 150))).unwrap();
    assert_eq!(
        events,
        [CartEvent::QuantityChanged {
            line_id,
            quantity: 5
        }]
    );
    assert_eq!(cart.lines().len(), 1);
    assert_eq!(cart.line(line_id).unwrap().quantity, 5);
}

#[test]
fn adding_same_sku_keeps_the_original_name() {
    let mut cart = created();
    let line_id = add(&mut cart, item("a", 1, 150));
    let mut renamed = item("a", 1, 150);
    renamed.name = "Another name".into();
    run(&mut cart, CartCommand::AddItem(renamed)).unwrap();
    assert_eq!(cart.line(line_id).unwrap().name, "Product a");
}

#[test]
fn adding_same_sku_with_another_price_or_tax_rate_is_rejected() {
    let mut cart = created();
    add(&mut cart, item("a", 1, 150));
    let result = cart.decide(&CartCommand::AddItem(item("a", 1, 151)));
    assert_eq!(invalid_field(result), "unit_price");
    let mut taxed = item("a", 1, 150);
    taxed.tax_rate_bp = Some(2000);
    assert_eq!(
        invalid_field(cart.decide(&CartCommand::AddItem(taxed))),
        "tax_rate_bp"
    );
}

#[test]
fn adding_same_sku_beyond_999_is_rejected() {
    let mut cart = created();
    add(&mut cart, item("a", 500, 150));
    let result = cart.decide(&CartCommand::AddItem(item("a", 500, 150)));
    // A conflict with what the cart holds (409), not bad input: the same
    // add fits a line holding fewer.
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            CartError::LineFull {
                in_cart: 500,
                max: 999,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!((err.http_status(), err.field()), (409, Some("quantity")));
    assert!(
        cart.decide(&CartCommand::AddItem(item("a", 499, 150)))
            .is_ok()
    );
}

#[test]
fn quantity_above_999_is_rejected() {
    let mut cart = created();
    let add_1000 = cart.decide(&CartCommand::AddItem(item("a", 1000, 150)));
    assert_eq!(invalid_field(add_1000), "quantity");
    let line_id = add(&mut cart, item("a", 999, 150));
    let change = cart.decide(&CartCommand::ChangeQuantity {
        line_id,
        quantity: 1000,
    });
    assert_eq!(invalid_field(change), "quantity");
}

#[test]
fn quantity_zero_is_rejected() {
    let mut cart = created();
    let add_0 = cart.decide(&CartCommand::AddItem(item("a", 0, 150)));
    assert_eq!(invalid_field(add_0), "quantity");
    let line_id = add(&mut cart, item("a", 1, 150));
    let change = cart.decide(&CartCommand::ChangeQuantity {
        line_id,
        quantity: 0,
    });
    assert_eq!(invalid_field(change), "quantity");
}

#[test]
fn malformed_item_fields_are_rejected() {
    let cart = created();
    type Mutation = fn(&mut NewItem);
    let cases: [(&str, Mutation); 13] = [
        ("sku", |i| i.sku = String::new()),
        ("sku", |i| i.sku = "   ".into()),
        ("sku", |i| i.sku = "x".repeat(65)),
        ("sku", |i| i.sku = "a\nb".into()),
        ("name", |i| i.name = String::new()),
        ("name", |i| i.name = "é".repeat(201)),
        ("name", |i| i.name = "tab\there".into()),
        ("currency", |i| i.currency = "eur".into()),
        ("currency", |i| i.currency = "EURO".into()),
        ("currency", |i| i.currency = "ÉUR".into()),
        ("currency", |i| i.currency = String::new()),
        ("tax_rate_bp", |i| i.tax_rate_bp = Some(10_001)),
        ("unit_price", |i| i.unit_price = MAX_PRICE + 1),
    ];
    for (field, mutate) in cases {
        let mut new_item = item("a", 1, 150);
        mutate(&mut new_item);
        let result = cart.decide(&CartCommand::AddItem(new_item.clone()));
        assert_eq!(invalid_field(result), field, "{new_item:?}");
    }
}

#[test]
fn limits_themselves_are_accepted() {
    let cart = created();
    let mut new_item = item(&"x".repeat(64), 999, MAX_PRICE);
    // 200 two-byte characters: the limit counts characters, not bytes.
    new_item.name = "é".repeat(200);
    new_item.tax_rate_bp = Some(10_000);
    assert!(cart.decide(&CartCommand::AddItem(new_item)).is_ok());
}

#[test]
fn two_hundred_and_first_line_is_rejected() {
    let mut cart = created();
    for n in 0..MAX_LINES {
        add(&mut cart, item(&format!("sku-{n}"), 1, 100));
    }
    assert_eq!(cart.lines().len(), 200);
    assert_eq!(
        cart.decide(&CartCommand::AddItem(item("one-too-many", 1, 100))),
        Err(CartError::TooManyLines { max: 200 })
    );
    // A full cart still accepts more of a sku it holds.
    assert!(
        cart.decide(&CartCommand::AddItem(item("sku-0", 1, 100)))
            .is_ok()
    );
}

#[test]
fn mixed_currency_is_rejected() {
    let mut cart = created();
    add(&mut cart, item("a", 1, 100));
    let mut dollars = item("b", 1, 100);
    dollars.currency = "USD".into();
    let mismatch = Err(CartError::CurrencyMismatch {
        cart: "EUR".into(),
        given: "USD".into(),
    });
    assert_eq!(cart.decide(&CartCommand::AddItem(dollars)), mismatch);
    assert_eq!(cart.decide(&delivery(500, "USD")), mismatch);
}

#[test]
fn delivery_sets_the_currency_for_items() {
    let mut cart = created();
    run(&mut cart, delivery(500, "USD")).unwrap();
    assert_eq!(cart.currency(), Some("USD"));
    assert_eq!(
        cart.decide(&CartCommand::AddItem(item("a", 1, 100))),
        Err(CartError::CurrencyMismatch {
            cart: "USD".into(),
            given: "EUR".into(),
        })
    );
}

#[test]
fn a_delivery_alone_may_be_replaced_in_another_currency() {
    let mut cart = created();
    run(&mut cart, delivery(500, "USD")).unwrap();
    run(&mut cart, delivery(400, "EUR")).unwrap();
    assert_eq!(cart.currency(), Some("EUR"));
}

#[test]
fn an_emptied_cart_accepts_a_new_currency() {
    let mut cart = created();
    let line_id = add(&mut cart, item("a", 1, 100));
    run(&mut cart, CartCommand::RemoveLine { line_id }).unwrap();
    assert_eq!(cart.currency(), None);
    let mut dollars = item("b", 1, 100);
    dollars.currency = "USD".into();
    add(&mut cart, dollars);
    assert_eq!(cart.currency(), Some("USD"));
}

#[test]
fn changing_quantity_sets_the_absolute_quantity() {
    let mut cart = created();
    let line_id = add(&mut cart, item("a", 5, 100));
    let events = run(
        &mut cart,
        CartCommand::ChangeQuantity {
            line_id,
            quantity: 2,
        },
    )
    .unwrap();
    assert_eq!(
        events,
        [CartEvent::QuantityChanged {
            line_id,
            quantity: 2
        }]
    );
    assert_eq!(cart.line(line_id).unwrap().quantity, 2);
    let same = CartCommand::ChangeQuantity {
        line_id,
        quantity: 2,
    };
    assert_eq!(cart.decide(&same), Ok(vec![]));
}

#[test]
fn unknown_lines_are_not_found() {
    let mut cart = created();
    add(&mut cart, item("a", 1, 100));
    let line_id = Uuid::new_v4();
    let expected = Err(CartError::LineNotFound { line_id });
    let change = CartCommand::ChangeQuantity {
        line_id,
        quantity: 1,
    };
    assert_eq!(cart.decide(&change), expected);
    assert_eq!(cart.decide(&CartCommand::RemoveLine { line_id }), expected);
}

#[test]
fn removing_a_line_keeps_the_others() {
    let mut cart = created();
    let a = add(&mut cart, item("a", 1, 100));
    let b = add(&mut cart, item("b", 1, 100));
    run(&mut cart, CartCommand::RemoveLine { line_id: a }).unwrap();
    assert!(cart.line(a).is_none());
    assert!(cart.line(b).is_some());
}

#[test]
fn setting_the_same_delivery_again_yields_nothing() {
    let mut cart = created();
    run(&mut cart, delivery(500, "EUR")).unwrap();
    assert_eq!(cart.decide(&delivery(500, "EUR")), Ok(vec![]));
    assert_eq!(cart.decide(&delivery(600, "EUR")).unwrap().len(), 1);
}

#[test]
fn malformed_delivery_fields_are_rejected() {
    let cart = created();
    let cases = [
        ("name", String::new(), 500, "EUR"),
        ("name", "x".repeat(201), 500, "EUR"),
        ("name", "bell\u{7}".into(), 500, "EUR"),
        ("price", "Courier".into(), MAX_PRICE + 1, "EUR"),
        ("currency", "Courier".into(), 500, "E"),
    ];
    for (field, name, price, currency) in cases {
        let command = CartCommand::SetDelivery {
            name,
            price,
            currency: currency.into(),
        };
        assert_eq!(invalid_field(cart.decide(&command)), field, "{command:?}");
    }
}

#[test]
fn removing_an_absent_delivery_is_a_no_op() {
    let mut cart = created();
    assert_eq!(cart.decide(&CartCommand::RemoveDelivery), Ok(vec![]));
    run(&mut cart, delivery(500, "EUR")).unwrap();
    run(&mut cart, CartCommand::RemoveDelivery).unwrap();
    assert_eq!(cart.delivery(), None);
    assert_eq!(cart.currency(), None);
}

#[test]
fn clearing_removes_lines_delivery_and_currency() {
    let mut cart = created();
    add(&mut cart, item("a", 1, 100));
    run(&mut cart, delivery(500, "EUR")).unwrap();
    assert_eq!(
        run(&mut cart, CartCommand::Clear),
        Ok(vec![CartEvent::Cleared])
    );
    assert!(cart.lines().is_empty());
    assert_eq!(cart.delivery(), None);
    assert_eq!(cart.currency(), None);
    assert_eq!(cart.status(), CartStatus::Open);
}

#[test]
fn clearing_an_empty_cart_yields_nothing() {
    assert_eq!(created().decide(&CartCommand::Clear), Ok(vec![]));
}

#[test]
fn checkout_assigns_an_order_id() {
    let mut cart = created();
    add(&mut cart, item("a", 1, 100));
    let events = run(&mut cart, CartCommand::Checkout).unwrap();
    let [CartEvent::CheckedOut { order_id, .. }] = events.as_slice() else {
        panic!("expected one CheckedOut, got {events:?}");
    };
    assert_eq!(cart.status(), CartStatus::CheckedOut);
    assert_eq!(cart.order_id(), Some(*order_id));
}

#[test]
fn checkout_of_an_empty_cart_is_refused() {
    let mut cart = created();
    run(&mut cart, delivery(500, "EUR")).unwrap();
    assert_eq!(cart.decide(&CartCommand::Checkout), Err(CartError::Empty));
}

#[test]
fn changes_after_checkout_are_refused() {
    let mut cart = created();
    let line_id = add(&mut cart, item("a", 1, 100));
    run(&mut cart, CartCommand::Checkout).unwrap();
    let refused = Err(CartError::CheckedOut {
        order_id: cart.order_id(),
    });
    let commands = [
        CartCommand::AddItem(item("b", 1, 100)),
        CartCommand::ChangeQuantity {
            line_id,
            quantity: 2,
        },
        CartCommand::RemoveLine { line_id },
        delivery(100, "EUR"),
        CartCommand::RemoveDelivery,
        CartCommand::Clear,
        CartCommand::Checkout,
    ];
    for command in commands {
        assert_eq!(cart.decide(&command), refused, "{command:?}");
    }
    assert_eq!(cart.decide(&CartCommand::Create), Ok(vec![]));
}

#[test]
fn totals_round_tax_half_up() {
    let mut cart = created();
    // 1 × 5 at 10 % = 0.5 → 1; 1 × 4 at 10 % = 0.4 → 0; 3 × 333 at 7.5 % = 74.925 → 75.
    for (sku, quantity, unit_price, rate) in
        [("a", 1, 5, 1000), ("b", 1, 4, 1000), ("c", 3, 333, 750)]
    {
        let mut new_item = item(sku, quantity, unit_price);
        new_item.tax_rate_bp = Some(rate);
        add(&mut cart, new_item);
    }
    let totals = cart.totals();
    assert_eq!(totals.subtotal, 5 + 4 + 999);
    assert_eq!(totals.tax, 1 + 75);
}

#[test]
fn totals_add_untaxed_delivery() {
    let mut cart = created();
    let mut taxed = item("a", 2, 1000);
    taxed.tax_rate_bp = Some(2000);
    add(&mut cart, taxed);
    run(&mut cart, delivery(499, "EUR")).unwrap();
    assert_eq!(
        cart.totals(),
        Totals {
            subtotal: 2000,
            tax: 400,
            delivery: 499,
            total: 2899,
            currency: Some("EUR".into()),
        }
    );
    assert_eq!(cart.try_totals(), Some(cart.totals()));
}

#[test]
fn empty_cart_totals_are_zero_without_currency() {
    assert_eq!(created().totals(), Totals::default());
}

#[test]
fn overflowing_totals_are_rejected() {
    // Today's limits keep valid carts far from u64::MAX, so reach the edge
    // the way it could really happen: replaying an event accepted under
    // older, looser limits.
    let mut cart = created();
    let line_id = Uuid::new_v4();
    cart.apply(&CartEvent::ItemAdded {
        line_id,
        sku: "legacy".into(),
        name: "Legacy".into(),
        quantity: 1,
        unit_price: u64::MAX - 10,
        currency: "EUR".into(),
        tax_rate_bp: None,
    });
    assert!(cart.try_totals().is_some());

    let overflow = |field: &'static str| {
        Err(CartError::Overflow {
            field: field.into(),
        })
    };
    assert_eq!(cart.decide(&delivery(11, "EUR")), overflow("price"));
    assert_eq!(
        cart.decide(&CartCommand::AddItem(item("more", 1, 11))),
        overflow("unit_price")
    );
    let double = CartCommand::ChangeQuantity {
        line_id,
        quantity: 2,
    };
    assert_eq!(cart.decide(&double), overflow("quantity"));
    assert!(cart.decide(&delivery(10, "EUR")).is_ok());
}

#[test]
fn totals_saturate_instead_of_panicking_on_unvalidated_events() {
    let mut cart = created();
    cart.apply(&CartEvent::ItemAdded {
        line_id: Uuid::new_v4(),
        sku: "huge".into(),
        name: "Huge".into(),
        quantity: u32::MAX,
        unit_price: u64::MAX,
        currency: "EUR".into(),
        tax_rate_bp: Some(u32::MAX),
    });
    assert_eq!(cart.try_totals(), None);
    assert_eq!(cart.totals().total, u64::MAX);
}

#[test]
fn apply_ignores_events_for_unknown_lines() {
    let mut cart = created();
    add(&mut cart, item("a", 1, 100));
    let before = cart.clone();
    let stranger = Uuid::new_v4();
    cart.apply(&CartEvent::QuantityChanged {
        line_id: stranger,
        quantity: 7,
    });
    cart.apply(&CartEvent::LineRemoved { line_id: stranger });
    assert_eq!(cart, before);
}

#[test]
fn apply_ignores_a_repeated_line_id() {
    let mut cart = created();
    let event = CartEvent::ItemAdded {
        line_id: Uuid::new_v4(),
        sku: "a".into(),
        name: "A".into(),
        quantity: 1,
        unit_price: 100,
        currency: "EUR".into(),
        tax_rate_bp: None,
    };
    cart.apply(&event);
    cart.apply(&event);
    assert_eq!(cart.lines().len(), 1);
}

#[test]
fn replaying_events_rebuilds_the_same_state() {
    let mut cart = Cart::default();
    let mut log = Vec::new();
    let mut record = |cart: &mut Cart, command| log.extend(run(cart, command).unwrap());
    record(&mut cart, CartCommand::Create);
    record(&mut cart, CartCommand::AddItem(item("a", 2, 150)));
    record(&mut cart, CartCommand::AddItem(item("b", 1, 990)));
    record(&mut cart, CartCommand::AddItem(item("a", 1, 150)));
    record(&mut cart, delivery(499, "EUR"));
    let b = cart.lines()[1].line_id;
    record(&mut cart, CartCommand::RemoveLine { line_id: b });
    record(&mut cart, CartCommand::Checkout);

    let mut replayed = Cart::default();
    for event in &log {
        replayed.apply(event);
    }
    assert_eq!(replayed, cart);
    assert_eq!(replayed.totals(), cart.totals());
}
