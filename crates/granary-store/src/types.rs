//! The values that go into and come out of an [`EventStore`](crate::EventStore).

use std::fmt;

/// Identifies one grain's event stream: its kind (e.g. `cart`) and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrainKey {
    pub kind: String,
    pub id: String,
}

impl GrainKey {
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        GrainKey {
            kind: kind.into(),
            id: id.into(),
        }
    }
}

impl fmt::Display for GrainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// One stored event: its position in the grain's stream (1-based) and its
/// serialized body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub version: u64,
    pub payload: Vec<u8>,
}

/// A grain's serialized state as of `version` (all events up to and
/// including `version` applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    pub payload: Vec<u8>,
}

/// The answer to a request that carried an idempotency key, stored in the
/// same transaction as the events it produced, so a retry can be answered
/// with the first answer whether or not the grain was reactivated since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: String,
    /// A hash of the request, so reusing a key for a different request can
    /// be told apart from a retry.
    pub request_hash: u64,
    pub reply: Vec<u8>,
}

/// Append `events` to `key`'s stream, which must currently be at
/// `expected_version` (0 for a stream that does not exist yet).
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub key: GrainKey,
    pub expected_version: u64,
    pub events: Vec<Vec<u8>>,
    pub idempotency: Option<IdempotencyRecord>,
}

impl AppendRequest {
    /// The checks every engine makes before touching its database.
    pub fn check(&self) -> Result<(), crate::StoreError> {
        if self.events.is_empty() && self.idempotency.is_none() {
            return Err(crate::StoreError::Invalid(
                "an append needs at least one event".into(),
            ));
        }
        Ok(())
    }
}

/// What activation reads: the newest snapshot, if any, and every event
/// after it, in order. `version` is the version of the last event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedGrain {
    pub snapshot: Option<Snapshot>,
    pub events: Vec<EventRecord>,
    pub version: u64,
}
