//! Events are persisted and commands cross the network as JSON, so their
//! serialized form must round-trip and stay stable.

use granary_cart::{Cart, CartCommand, CartEvent, NewItem};
use serde_json::json;
use uuid::Uuid;

fn all_events() -> Vec<CartEvent> {
    let line_id = Uuid::new_v4();
    vec![
        CartEvent::Created,
        CartEvent::ItemAdded {
            line_id,
            sku: "sku-1".into(),
            name: "Grüner Tee 🍵".into(),
            quantity: 3,
            unit_price: 1299,
            currency: "EUR".into(),
            tax_rate_bp: Some(700),
        },
        CartEvent::ItemAdded {
            line_id: Uuid::new_v4(),
            sku: "sku-2".into(),
            name: "Untaxed".into(),
            quantity: 1,
            unit_price: u64::MAX,
            currency: "EUR".into(),
            tax_rate_bp: None,
        },
        CartEvent::QuantityChanged {
            line_id,
            quantity: 5,
        },
        CartEvent::LineRemoved { line_id },
        CartEvent::DeliverySet {
            name: "Courier".into(),
            price: 499,
            currency: "EUR".into(),
        },
        CartEvent::DeliveryRemoved,
        CartEvent::Cleared,
        CartEvent::CheckedOut {
            order_id: Uuid::new_v4(),
            reservation: None,
        },
        CartEvent::CheckedOut {
            order_id: Uuid::new_v4(),
            reservation: Some("cart/x@7".into()),
        },
        CartEvent::ConfirmationPending {
            reservation: "cart/x@7".into(),
            due: 1_700_000_000_000,
        },
    ]
}

#[test]
fn events_round_trip_through_json() {
    for event in all_events() {
        let json = serde_json::to_string(&event).unwrap();
        let back: CartEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event, "{json}");
    }
}

#[test]
fn events_are_tagged_with_snake_case_type() {
    let line_id = Uuid::nil();
    assert_eq!(
        serde_json::to_value(CartEvent::QuantityChanged {
            line_id,
            quantity: 2
        })
        .unwrap(),
        json!({"type": "quantity_changed", "line_id": line_id, "quantity": 2})
    );
    assert_eq!(
        serde_json::to_value(CartEvent::DeliveryRemoved).unwrap(),
        json!({"type": "delivery_removed"})
    );
}

#[test]
fn item_added_without_tax_rate_reads_as_untaxed() {
    let event: CartEvent = serde_json::from_value(json!({
        "type": "item_added",
        "line_id": Uuid::nil(),
        "sku": "a",
        "name": "A",
        "quantity": 1,
        "unit_price": 100,
        "currency": "EUR"
    }))
    .unwrap();
    assert!(matches!(
        event,
        CartEvent::ItemAdded {
            tax_rate_bp: None,
            ..
        }
    ));
}

#[test]
fn commands_round_trip_through_json() {
    let commands = [
        CartCommand::Create,
        CartCommand::AddItem(NewItem {
            sku: "a".into(),
            name: "A".into(),
            quantity: 1,
            unit_price: 100,
            currency: "EUR".into(),
            tax_rate_bp: Some(1900),
        }),
        CartCommand::ChangeQuantity {
            line_id: Uuid::new_v4(),
            quantity: 4,
        },
        CartCommand::RemoveLine {
            line_id: Uuid::new_v4(),
        },
        CartCommand::SetDelivery {
            name: "Courier".into(),
            price: 499,
            currency: "EUR".into(),
        },
        CartCommand::RemoveDelivery,
        CartCommand::Clear,
        CartCommand::Checkout,
    ];
    for command in commands {
        let json = serde_json::to_string(&command).unwrap();
        let back: CartCommand = serde_json::from_str(&json).unwrap();
        assert_eq!(back, command, "{json}");
    }
}

#[test]
fn a_cart_snapshot_round_trips_through_json() {
    let mut cart = Cart::default();
    for event in all_events().iter().take(4) {
        cart.apply(event);
    }
    let json = serde_json::to_string(&cart).unwrap();
    assert_eq!(serde_json::from_str::<Cart>(&json).unwrap(), cart);
}
