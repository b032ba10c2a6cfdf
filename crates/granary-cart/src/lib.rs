//! The shopping-cart domain of Granary: state, commands, events, validation
//! and totals.
//!
//! This crate is deliberately pure — no I/O, no clock, no async — so the cart
//! grain (and anything else) can host it and every rule can be tested in
//! isolation.
//!
//! # Data flow
//!
//! The cart is event-sourced:
//!
//! 1. A caller turns a request into a [`CartCommand`].
//! 2. [`Cart::decide`] checks the command against the current state and
//!    returns the [`CartEvent`]s it yields, or a [`CartError`]. It never
//!    changes the cart.
//! 3. The caller persists the events, then folds each into the state with
//!    [`Cart::apply`], which never fails: events are facts already accepted.
//!
//! Anything nondeterministic (new line ids, the order id) is generated in
//! `decide` and recorded in the event, so replaying a cart's events on
//! [`Cart::default`] always rebuilds the same state.
//!
//! # Main types
//!
//! - [`Cart`] — the state; its getters expose [`Line`]s, the [`Delivery`],
//!   the currency, the [`CartStatus`] and [`Totals`].
//! - [`CartCommand`] (with [`NewItem`] for `AddItem`) — what a caller asks for.
//! - [`CartEvent`] — what happened.
//! - [`CartError`] — why a command was refused; [`CartError::http_status`],
//!   [`CartError::code`] and [`CartError::field`] give the HTTP layer what it
//!   needs without duplicating the mapping.
//! - [`limits`] — the bounds `decide` enforces.
//! - [`Product`] — the catalog's entry for a SKU (price, name, tax,
//!   currency: the server's word, never the client's).
//! - [`Stock`] — units on hand of a SKU and the reservations a checkout
//!   holds until it is confirmed or released.
//!
//! # Money
//!
//! Amounts are `u64` minor units (cents) of a single ISO 4217 currency per
//! cart. Prices are net of tax; tax is computed per line and rounded half up
//! (see [`Totals`]). `decide` refuses any command after which the totals would
//! not fit in `u64`, so [`Cart::totals`] is infallible.

mod cart;
mod catalog;
mod command;
mod decide;
mod error;
mod event;
pub mod limits;
mod money;
mod stock;
mod validate;

pub use cart::{Cart, CartStatus, Delivery, Line};
pub use catalog::{Product, ProductCommand, ProductEvent, ProductSpec};
pub use command::{CartCommand, NewItem};
pub use error::{CartError, ErrorKind};
pub use event::CartEvent;
pub use money::Totals;
pub use stock::{
    MAX_ON_HAND, Reservation, SOLD_KEPT_MS, Stock, StockCommand, StockEvent, StockLevel,
};
