//! Why a grain call did not succeed.

use granary_store::StoreError;

/// The failure of one call. `Rejected` is the grain's own answer; the rest
/// come from the runtime.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CallError<R> {
    /// The grain refused the command; nothing changed.
    #[error("the grain refused the command")]
    Rejected(R),
    /// The caller required the grain to be at `expected`, it is at `actual`.
    /// Nothing changed.
    #[error("the grain is at version {actual}, not {expected}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// The idempotency key was used before for a different request.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused { key: String },
    /// The store failed; the change was not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The grain's code panicked while handling this call. The grain was
    /// restarted from the store; other calls are unaffected.
    #[error("the grain panicked handling the command: {0}")]
    Panicked(String),
    /// The grain could not be reached in time (stopping, overloaded).
    #[error("the grain is unavailable: {0}")]
    Unavailable(String),
    /// The grain is not placed on this member (or a newer owner has
    /// written it): nothing ran; find its owner and call there.
    #[error("this member does not own the grain: {0}")]
    NotOwner(String),
    /// This member may not serve now (it cannot see a majority, or fenced
    /// since the grain was activated): nothing ran; call another member.
    #[error("this member is fenced: {0}")]
    Fenced(String),
    /// The grain could not be placed on any member within the failover
    /// window (its partition is rebuilding, its owner left): nothing ran.
    #[error("the grain cannot be placed yet: {0}")]
    Placing(String),
    /// The call is malformed (a kind not registered, a bad id, a command
    /// that does not decode): nothing ran.
    #[error("invalid call: {0}")]
    Invalid(String),
    /// The call would come back to a grain already waiting on it (A → B →
    /// A): it would wait behind that grain's held mailbox. Nothing ran. The
    /// chain of grains, in order.
    #[error("a call cycle: {0}")]
    Cycle(String),
    /// The call went to the member hosting the grain and no answer came
    /// back: whether it ran is unknown. Not resent.
    #[error("the grain's owner did not answer; the outcome is unknown: {0}")]
    Unreachable(String),
}

impl<R> CallError<R> {
    /// The same error with its rejection turned into another type (e.g.
    /// encoded for the wire, or decoded from it).
    pub fn map_rejection<S>(self, map: impl FnOnce(R) -> S) -> CallError<S> {
        match self {
            CallError::Rejected(rejection) => CallError::Rejected(map(rejection)),
            CallError::VersionMismatch { expected, actual } => {
                CallError::VersionMismatch { expected, actual }
            }
            CallError::IdempotencyKeyReused { key } => CallError::IdempotencyKeyReused { key },
            CallError::Store(err) => CallError::Store(err),
            CallError::Panicked(why) => CallError::Panicked(why),
            CallError::Unavailable(why) => CallError::Unavailable(why),
            CallError::NotOwner(why) => CallError::NotOwner(why),
            CallError::Fenced(why) => CallError::Fenced(why),
            CallError::Placing(why) => CallError::Placing(why),
            CallError::Invalid(why) => CallError::Invalid(why),
            CallError::Cycle(chain) => CallError::Cycle(chain),
            CallError::Unreachable(why) => CallError::Unreachable(why),
        }
    }
}

impl<R> From<crate::tenure::Refusal> for CallError<R> {
    fn from(refusal: crate::tenure::Refusal) -> Self {
        match refusal {
            crate::tenure::Refusal::NotOwner(why) => CallError::NotOwner(why),
            crate::tenure::Refusal::Fenced(why) => CallError::Fenced(why),
        }
    }
}

impl<R> CallError<R> {
    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Store(err) => err.is_retryable(),
            CallError::Unavailable(_)
            | CallError::NotOwner(_)
            | CallError::Fenced(_)
            | CallError::Placing(_) => true,
            _ => false,
        }
    }
}
