//! Granary: a grain (virtual actor) runtime on actix, and a durable
//! shopping-cart service built on it.
//!
//! # Layout
//! - `crates/granary-store`: the event store trait and the embedded engine.
//! - `crates/granary-grain`: the local grain runtime (activation,
//!   passivation, LRU cap, supervised restart, event sourcing).
//! - `crates/granary-cart`: the pure cart domain.
//! - this crate, the node:
//!   - [`config`]: every knob, from file, `GRANARY_*` env and flags;
//!   - [`cli`]: the command line (`serve`, `status`, `token`, `node`),
//!     for the `granary` binary and for binaries of one's own;
//!   - [`node`] (`Node::builder(config).carts().grain::<K>().routes(…).run()`)
//!     starts the store, the grain runtimes, the cluster, the HTTP API and
//!     the gRPC services, and stops them in order;
//!   - [`grains`]: the grain kinds a node hosts, and `Grains::call`,
//!     which reaches a grain of any kind wherever it lives in the cluster;
//!   - [`reminders`]: delivering grains' durable reminders when due;
//!   - [`http`]: the cart API on actix-web;
//!   - [`metrics`]: what the node measures, served at `GET /metrics`;
//!   - [`dashboard`]: the live page at `GET /dashboard`;
//!   - [`telemetry`]: logs, spans and (feature `otlp`) their export;
//!   - [`load`]: `granary load`, shop traffic and its latency histogram;
//!   - [`control_plane`]: the seed-compatible gRPC service;
//!   - [`cart_grain`]: the cart domain as a grain kind, and its checkout
//!     across the catalog and the stock;
//!   - [`shop`]: the catalog (product grains) and stock (stock grains);
//!   - `proto`: generated wire types, private to the node.

pub mod cart_grain;
mod catalog_import;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control_plane;
pub mod dashboard;
pub mod grains;
pub mod http;
pub mod load;
pub mod metrics;
pub mod node;
mod proto;
pub mod reminders;
pub mod security;
pub mod shop;
pub mod status;
pub mod telemetry;
