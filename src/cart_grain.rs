//! The cart as a grain: the pure cart domain hosted by the grain runtime,
//! and the calls it makes to the catalog and the stock.
//!
//! - Adding a SKU asks its product grain for the price, name, tax rate and
//!   currency: the client names only the SKU and the quantity.
//! - Checkout asks every line's product whether its price still holds
//!   (refusing, naming the lines, if not), then reserves every line's units
//!   at its stock grain, under one reservation id derived from the cart and
//!   its version (so a retried checkout reserves nothing twice), naming the
//!   cart as the holder. All held within half the hold: the cart is checked
//!   out, and its reminder confirms the reservations (the units are sold)
//!   until they all are. Any refused or unanswered, or the reserving took
//!   longer: every reservation is released and nothing is sold.
//! - When a hold expires, its stock grain asks the cart (a read, answered
//!   off the cart's mailbox): a cart that checked out under it gets the
//!   units sold however late its own confirmation is; a cart that did not
//!   (its checkout died half way, its member killed) gets them released.

use std::time::Duration;

use granary_cart::{
    Cart, CartCommand, CartError, CartEvent, CartStatus, ProductCommand, StockCommand,
};
use granary_grain::{CallError, CallOptions, Calls, Grain, Remind, Resolution};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::reminders::now_unix_ms;
use crate::shop::{ProductGrain, StockGrain, settings};

/// A cart grain's state: the domain cart, shared with its answers. An
/// answer is the cart as of the call (an `Arc` clone, not a copy of every
/// line); an event applied while an answer is still held copies it first.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CartGrain(Arc<Cart>);

/// What callers send a cart grain (MessagePack on the wire between
/// members). Clients send `Get`, `Command` and `AddSku`; the others are
/// what the cart's own calls resolve to, and its reminder's command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CartRequest {
    /// Read the cart (served from memory; never writes).
    Get,
    /// Change the cart.
    Command(CartCommand),
    /// Add `quantity` units of `sku` at the catalog's price.
    AddSku { sku: String, quantity: u32 },
    /// Read the cart after asking the catalog whether every line's price
    /// still holds (refused with `PriceChanged` naming the lines if not).
    /// Changes nothing.
    CheckPrices,
    /// Resolved: the cart's calls found a reason to refuse.
    Refused(CartError),
    /// Resolved: every line is reserved under `reservation`; check out.
    CheckoutReserved { reservation: String },
    /// Confirm the reservations of checkout `reservation` (the cart's
    /// reminder after it checked out).
    Confirm { reservation: String },
    /// Resolved: some confirmations did not go through; again at `due`.
    ConfirmLater { reservation: String, due: u64 },
    /// Resolved: every reservation is confirmed.
    Confirmed,
}

/// How long to wait before confirming again after a failed attempt.
const CONFIRM_AGAIN: Duration = Duration::from_secs(1);

impl Grain for CartGrain {
    const KIND: &'static str = "cart";
    type Command = CartRequest;
    type Event = CartEvent;
    type Rejection = CartError;
    type Reply = Arc<Cart>;

    fn decide(&self, request: &CartRequest) -> Result<Vec<CartEvent>, CartError> {
        match request {
            CartRequest::Get if !self.0.is_created() => Err(CartError::NotFound),
            CartRequest::Get => Ok(Vec::new()),
            CartRequest::Command(command) => self.0.decide(command),
            CartRequest::Refused(error) => Err(error.clone()),
            CartRequest::CheckoutReserved { reservation } => {
                let mut events = self.0.decide(&CartCommand::Checkout)?;
                for event in &mut events {
                    if let CartEvent::CheckedOut {
                        reservation: held, ..
                    } = event
                    {
                        *held = Some(reservation.clone());
                    }
                }
                Ok(events)
            }
            CartRequest::ConfirmLater { reservation, due } => {
                Ok(vec![CartEvent::ConfirmationPending {
                    reservation: reservation.clone(),
                    due: *due,
                }])
            }
            CartRequest::Confirmed => Ok(Vec::new()),
            // Resolved before they are decided (see `resolve`).
            CartRequest::AddSku { .. } | CartRequest::Confirm { .. } | CartRequest::CheckPrices => {
                Err(CartError::Unavailable {
                    reason: "the request was not resolved".into(),
                })
            }
        }
    }

    fn apply(&mut self, event: &CartEvent) {
        Arc::make_mut(&mut self.0).apply(event);
    }

    /// `GET /carts/{id}` is answered from the committed cart on the HTTP
    /// worker, also while the cart is busy (a checkout's calls, a write).
    fn is_read(request: &CartRequest) -> bool {
        matches!(request, CartRequest::Get)
    }

    fn reply(&self, _: &CartRequest) -> Arc<Cart> {
        self.0.clone()
    }

    fn reminders(event: &CartEvent) -> Vec<Remind<CartRequest>> {
        let confirm = |reservation: &str, due: u64| {
            vec![Remind::At {
                id: "confirm".into(),
                due,
                command: CartRequest::Confirm {
                    reservation: reservation.to_owned(),
                },
            }]
        };
        match event {
            CartEvent::CheckedOut {
                reservation: Some(reservation),
                ..
            } => confirm(reservation, 0),
            CartEvent::ConfirmationPending { reservation, due } => confirm(reservation, *due),
            _ => Vec::new(),
        }
    }

    fn resolve(&self, request: &CartRequest, calls: &Calls) -> Option<Resolution<CartRequest>> {
        let calls = calls.clone();
        match request {
            CartRequest::AddSku { sku, quantity } => {
                let (sku, quantity) = (sku.clone(), *quantity);
                // What the catalog's answer is checked against: the line's
                // price (not the whole line).
                let line = self
                    .0
                    .lines()
                    .iter()
                    .find(|l| l.sku == sku)
                    .map(|l| (l.line_id, l.unit_price, l.tax_rate_bp, l.currency.clone()));
                Some(Box::pin(async move {
                    let spec = match product(&calls, &sku).await {
                        Ok(spec) => spec,
                        Err(refused) => return CartRequest::Refused(refused),
                    };
                    if let Some((line_id, unit_price, tax_rate_bp, currency)) = line
                        && (unit_price != spec.unit_price
                            || tax_rate_bp != spec.tax_rate_bp
                            || currency != spec.currency)
                    {
                        return CartRequest::Refused(CartError::PriceChanged {
                            lines: vec![line_id],
                        });
                    }
                    CartRequest::Command(CartCommand::AddItem(spec.item(quantity)))
                }))
            }
            CartRequest::Command(CartCommand::Checkout)
                if self.0.is_created()
                    && self.0.status() == CartStatus::Open
                    && !self.0.lines().is_empty() =>
            {
                let lines = self.0.lines().to_vec();
                let reservation = format!("{}@{}", calls.me(), calls.version());
                Some(Box::pin(checkout(calls, lines, reservation)))
            }
            CartRequest::CheckPrices if !self.0.is_created() => Some(Box::pin(async {
                CartRequest::Refused(CartError::NotFound)
            })),
            CartRequest::CheckPrices => {
                let lines = self.0.lines().to_vec();
                Some(Box::pin(async move {
                    match changed_prices(&calls, &lines).await {
                        Ok(changed) if changed.is_empty() => CartRequest::Get,
                        Ok(changed) => {
                            CartRequest::Refused(CartError::PriceChanged { lines: changed })
                        }
                        Err(refused) => CartRequest::Refused(refused),
                    }
                }))
            }
            CartRequest::Confirm { reservation } => {
                let lines: Vec<(String, u32)> = self
                    .0
                    .lines()
                    .iter()
                    .map(|l| (l.sku.clone(), l.quantity))
                    .collect();
                let reservation = reservation.clone();
                Some(Box::pin(async move {
                    let mut all = true;
                    for (sku, quantity) in &lines {
                        let confirm = StockCommand::Confirm {
                            reservation: reservation.clone(),
                            quantity: *quantity,
                            at: now_unix_ms(),
                        };
                        all &= match stock(&calls, sku, confirm).await {
                            Ok(_) => true,
                            // The hold expired and the units were sold to
                            // someone else meanwhile: confirming again will
                            // not bring them back.
                            Err(CallError::Rejected(CartError::OutOfStock { available })) => {
                                tracing::error!(
                                    %sku, %reservation, quantity, available,
                                    "oversold: the hold expired before the checkout was confirmed"
                                );
                                true
                            }
                            Err(_) => false,
                        };
                    }
                    if all {
                        CartRequest::Confirmed
                    } else {
                        CartRequest::ConfirmLater {
                            reservation,
                            due: now_unix_ms() + CONFIRM_AGAIN.as_millis() as u64,
                        }
                    }
                }))
            }
            _ => None,
        }
    }
}

/// The catalog's product for `sku`, or why the cart must refuse.
async fn product(calls: &Calls, sku: &str) -> Result<granary_cart::ProductSpec, CartError> {
    if !crate::grains::valid_id(sku) {
        return Err(CartError::UnknownSku);
    }
    match calls
        .call::<ProductGrain>(
            sku,
            ProductCommand::Get,
            CallOptions::default(),
            settings().call_deadline,
        )
        .await
    {
        Ok(outcome) => outcome.reply.ok_or(CartError::UnknownSku),
        Err(CallError::Rejected(CartError::NotFound)) => Err(CartError::UnknownSku),
        Err(err) => Err(CartError::Unavailable {
            reason: format!("the catalog did not answer for {sku}: {err}"),
        }),
    }
}

/// A command to `sku`'s stock grain.
async fn stock(
    calls: &Calls,
    sku: &str,
    command: StockCommand,
) -> Result<granary_cart::StockLevel, CallError<CartError>> {
    calls
        .call::<StockGrain>(
            sku,
            command,
            CallOptions::default(),
            settings().call_deadline,
        )
        .await
        .map(|outcome| outcome.reply)
}

/// The lines whose product's price, tax or currency is no longer the
/// line's (or whose product is gone), asking every line's product at once.
async fn changed_prices(
    calls: &Calls,
    lines: &[granary_cart::Line],
) -> Result<Vec<Uuid>, CartError> {
    let answers =
        futures_util::future::join_all(lines.iter().map(|line| product(calls, &line.sku))).await;
    let mut changed = Vec::new();
    for (line, answer) in lines.iter().zip(answers) {
        match answer {
            Ok(spec)
                if spec.unit_price == line.unit_price
                    && spec.tax_rate_bp == line.tax_rate_bp
                    && spec.currency == line.currency => {}
            Ok(_) | Err(CartError::UnknownSku) => changed.push(line.line_id),
            Err(refused) => return Err(refused),
        }
    }
    Ok(changed)
}

/// Checkout across the catalog and the stock (see the module docs).
async fn checkout(
    calls: Calls,
    lines: Vec<granary_cart::Line>,
    reservation: String,
) -> CartRequest {
    match changed_prices(&calls, &lines).await {
        Ok(changed) if changed.is_empty() => {}
        Ok(changed) => return CartRequest::Refused(CartError::PriceChanged { lines: changed }),
        Err(refused) => return CartRequest::Refused(refused),
    }
    let hold = settings().reservation_hold;
    let expires_at = now_unix_ms() + hold.as_millis() as u64;
    let mut sold_out = Vec::new();
    let mut failed = None;
    for line in &lines {
        let reserve = StockCommand::Reserve {
            reservation: reservation.clone(),
            quantity: line.quantity,
            expires_at,
            holder: calls.me().to_owned(),
        };
        match stock(&calls, &line.sku, reserve).await {
            Ok(_) => {}
            Err(CallError::Rejected(CartError::OutOfStock { .. })) => sold_out.push(line.line_id),
            Err(err) => {
                failed = Some(format!("the stock of {} did not answer: {err}", line.sku));
                break;
            }
        }
    }
    // The stock asks this cart at expiry whether it checked out: a cart
    // must record it well before then, or the stock may have asked first
    // and released the units (the append that records it is bounded by
    // the store's timeout, far below half a hold).
    if failed.is_none() && now_unix_ms() + hold.as_millis() as u64 / 2 > expires_at {
        failed = Some(format!(
            "reserving the stock took longer than half the hold ({hold:?})"
        ));
    }
    if sold_out.is_empty() && failed.is_none() {
        return CartRequest::CheckoutReserved { reservation };
    }
    // Nothing is sold: every hold goes back (releasing what was never held
    // changes nothing; what this cannot release, the stock grain's reminder
    // does when it expires).
    for line in &lines {
        let release = StockCommand::Release {
            reservation: reservation.clone(),
        };
        let _ = stock(&calls, &line.sku, release).await;
    }
    match failed {
        Some(reason) => CartRequest::Refused(CartError::Unavailable { reason }),
        None => CartRequest::Refused(CartError::SoldOut { lines: sold_out }),
    }
}
