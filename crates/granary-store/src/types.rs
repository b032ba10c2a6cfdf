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
    /// The writer's owner epoch: a fencing token that grows with every
    /// placement of the grain (0: no cluster). Each event records the
    /// epoch that wrote it, and an append whose epoch is lower than that
    /// of the stream's last event is refused ([`StoreError::Fenced`]):
    /// a newer owner has written, so this writer is a stale one.
    ///
    /// [`StoreError::Fenced`]: crate::StoreError::Fenced
    pub epoch: u64,
    /// Changes to the grain's reminders, made in the same transaction as
    /// the events (so a reminder an event asks for is never lost, and one a
    /// refused append asked for is never set).
    pub reminders: Vec<ReminderChange>,
}

/// "At or after `due`, deliver `payload` to this grain": a durable timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminder {
    /// Names the reminder within its grain; setting an existing id moves
    /// it.
    pub id: String,
    /// When it is due: milliseconds since the Unix epoch.
    pub due: u64,
    /// What to deliver (the grain kind's command, encoded).
    pub payload: Vec<u8>,
}

/// A change to one grain's reminders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReminderChange {
    Set(Reminder),
    Cancel { id: String },
}

/// A reminder that is due, and whose grain it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueReminder {
    pub key: GrainKey,
    pub reminder: Reminder,
}

impl AppendRequest {
    /// The checks every engine makes before touching its database.
    pub fn check(&self) -> Result<(), crate::StoreError> {
        if self.events.is_empty() && self.idempotency.is_none() {
            return Err(crate::StoreError::Invalid(
                "an append needs at least one event".into(),
            ));
        }
        for change in &self.reminders {
            let id = match change {
                ReminderChange::Set(reminder) => {
                    if reminder.due > MAX_EPOCH {
                        return Err(crate::StoreError::Invalid(format!(
                            "reminder {:?} is due beyond what a store keeps",
                            reminder.id
                        )));
                    }
                    &reminder.id
                }
                ReminderChange::Cancel { id } => id,
            };
            if id.is_empty() || id.len() > 200 {
                return Err(crate::StoreError::Invalid(
                    "a reminder id is 1..=200 bytes".into(),
                ));
            }
        }
        if self.epoch > MAX_EPOCH {
            return Err(crate::StoreError::Invalid(format!(
                "owner epoch {} is beyond the largest a store keeps ({MAX_EPOCH})",
                self.epoch
            )));
        }
        Ok(())
    }
}

/// What activation reads: the newest snapshot, if any, and every event
/// after it, in order. `version` is the version of the last event, `epoch`
/// the owner epoch that wrote it (0 for an empty stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedGrain {
    pub snapshot: Option<Snapshot>,
    pub events: Vec<EventRecord>,
    pub version: u64,
    pub epoch: u64,
}

/// The largest owner epoch a store accepts: epochs are stored as signed
/// 64-bit integers.
pub const MAX_EPOCH: u64 = i64::MAX as u64;
