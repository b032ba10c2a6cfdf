//! Why a store call failed.

use crate::types::GrainKey;

/// A store failure. `Conflict` means "reload and decide again"; `Unavailable`
/// means "the change was not made, try later"; the others are fatal for the
/// call that hit them.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Another writer appended to this grain first: the append expected
    /// `expected` but the stream is at `actual`. Nothing was written.
    #[error("version conflict on {key}: expected {expected}, stream is at {actual}")]
    Conflict {
        key: GrainKey,
        expected: u64,
        actual: u64,
    },
    /// The append carried an idempotency key already stored for this
    /// grain: the request was answered before. Nothing was written; the
    /// caller should look the first answer up.
    #[error("idempotency key {idempotency_key:?} was already used for {key}")]
    DuplicateIdempotencyKey {
        key: GrainKey,
        idempotency_key: String,
    },
    /// A writer with a newer owner epoch has appended to this stream: the
    /// append (at `epoch`) comes from a stale owner and was refused.
    /// Nothing was written. The writer must stop hosting the grain.
    #[error(
        "owner epoch {epoch} of {key} is stale: a newer owner (epoch {newer}) has written; nothing was written"
    )]
    Fenced {
        key: GrainKey,
        epoch: u64,
        newer: u64,
    },
    /// The store cannot take the request now (queue full, database locked
    /// for too long or unreachable, engine shutting down). Nothing was
    /// written.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The write was sent but its outcome never came back (the connection
    /// broke, or no answer within the deadline): it may or may not be
    /// durable. The writer must reload before deciding again; a retry with
    /// the same idempotency key gets the first answer if it was made.
    #[error("event store outcome unknown: {0}")]
    Indeterminate(String),
    /// The database answered with an error the engine does not expect.
    #[error("event store failure: {0}")]
    Engine(String),
    /// The database holds a schema newer than this build understands.
    #[error(
        "the event store at {path} has schema version {found}; this build supports up to {supported}; run a newer granary"
    )]
    SchemaTooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    /// A request the engine refuses before touching the database.
    #[error("invalid store request: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Indeterminate(_)
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err {
            rusqlite::Error::SqliteFailure(code, _)
                if matches!(
                    code.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                StoreError::Unavailable(err.to_string())
            }
            other => StoreError::Engine(other.to_string()),
        }
    }
}
