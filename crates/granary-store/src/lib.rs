//! Granary's event store: where grain state lives durably.
//!
//! Grain state is event-sourced. A grain validates a command against its
//! in-memory state, turns it into events, and asks the store to append them;
//! only once the append is durable does the grain apply the events and
//! answer its caller. This crate defines that contract and its engines.
//!
//! # Layout
//! - [`EventStore`] (`store.rs`): the engine-neutral trait. Every call
//!   returns a boxed `Send` future, so the grain runtime can await it from
//!   any executor and the engine can do its blocking work on its own threads.
//! - [`GrainKey`], [`AppendRequest`], [`LoadedGrain`] (`types.rs`): what goes
//!   in and out.
//! - [`StoreError`] (`error.rs`): one variant per real cause. `Conflict` is the
//!   optimistic-concurrency fence: an append names the version it expects and
//!   fails cleanly when another writer got there first.
//! - [`SqliteStore`] (`sqlite/`): the embedded default. One SQLite file in WAL
//!   mode with `synchronous=FULL`, so a change is on disk before it is
//!   acknowledged; a single writer thread group-commits every append queued
//!   while the previous commit was syncing, so many concurrent changes share
//!   one fsync; several processes on one machine may open the same file.
//! - [`PostgresStore`] (`postgres/`): one PostgreSQL database shared by
//!   nodes on many machines. Writer connections send every append queued
//!   meanwhile as one statement (`granary_append`): one transaction, one
//!   commit, one round trip per batch.
//!
//! # Data flow
//! `append` → bounded queue → writer thread: `BEGIN IMMEDIATE`, per request a
//! savepoint, version check, inserts → one `COMMIT` (one fsync) → every
//! waiting caller is answered. `load` → reader thread: latest snapshot plus
//! the events after it, in one read transaction.

mod error;
mod postgres;
mod sqlite;
mod store;
mod types;

pub use error::StoreError;
pub use postgres::{PostgresStore, PostgresStoreOptions};
pub use sqlite::{SqliteStore, SqliteStoreOptions};
pub use store::{CommitObserver, EventStore, StoreFuture, StoreStats};
pub use types::{
    AppendRequest, DueReminder, EventRecord, GrainKey, IdempotencyRecord, LoadedGrain, MAX_EPOCH,
    Reminder, ReminderChange, Snapshot,
};
