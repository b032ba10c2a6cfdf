//! Granary's local grain runtime: virtual actors on actix, with their state
//! event-sourced into a [`granary_store::EventStore`]. No networking.
//!
//! A *grain* is an actor addressed by an id that always exists: nobody
//! creates or destroys it. The first call for an id *activates* it (loads
//! its latest snapshot and the events after it from the store); an idle
//! grain is *passivated* (dropped from memory) and comes back on its next
//! call; when more grains are live than the configured cap, the least
//! recently used one is *evicted*.
//!
//! # Layout
//! - [`Grain`] (`grain.rs`): what a grain kind implements: `decide` a
//!   command against state into events, `apply` events, build a `reply`.
//! - [`GrainRuntime`] (`runtime.rs`): the handle callers use. Cheap to
//!   clone, `Send + Sync`; `call(id, command)` finds or activates the grain
//!   and sends it the command.
//! - `registry.rs`: the live activations in least-recently-used order,
//!   behind one mutex, so concurrent first calls for an id create exactly
//!   one activation.
//! - `activation.rs`: the actix actor hosting one grain: loads state on
//!   start, handles one command at a time, supervises panics.
//! - [`Calls`] (`calls.rs`): grain-to-grain calls a command makes before it
//!   is decided (`Grain::resolve`), with deadlines and cycle detection.
//! - [`Ownership`], [`Lease`] (`tenure.rs`): in a cluster, whether this
//!   member may host a grain (and with which owner epoch), and until when
//!   it may serve; checked before every activation, answer and append.
//! - [`RuntimeConfig`], [`RuntimeStats`], [`CallError`]: knobs, counters and
//!   failures.
//!
//! # The life of a command
//! `call` → registry (find or start the actor) → actor mailbox → `decide`
//! (under `catch_unwind`) → no events: answer from memory; events → store
//! `append` with the version the grain expects (the write is group-committed
//! and fsynced) → `apply` → answer. While a write is in flight the grain
//! takes no other command, so its state never runs ahead of the store. A
//! version conflict (another writer got there first) makes the grain reload
//! from the store and the runtime retry the command against fresh state.

mod activation;
mod calls;
mod config;
mod error;
mod grain;
mod registry;
mod runtime;
mod stats;
mod tenure;

pub use calls::{
    Caller, Calls, EncodedFuture, EncodedResult, Resolution, decode_answer, grain_key,
};
pub use config::{ArbiterPool, Placement, RuntimeConfig, placement_hash, thread_of};
pub use error::CallError;
pub use grain::{Grain, Home, Outcome, Remind};
pub use runtime::{CallOptions, GrainRuntime};
pub use stats::RuntimeStats;
pub use tenure::{Lease, Ownership, Refusal, Tenure};
