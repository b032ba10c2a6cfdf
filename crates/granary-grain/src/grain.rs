//! The contract a grain kind implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::calls::{Calls, Resolution};

/// A kind of grain, event-sourced.
///
/// The state (`Self`) starts at [`Default`] and changes only through
/// [`Grain::apply`]. `decide` must not change state and should be cheap;
/// anything nondeterministic it needs (new ids, timestamps) it records in
/// the events it returns, so replaying them rebuilds the same state.
/// The state is serialized for snapshots, hence `Serialize`.
pub trait Grain: Default + Serialize + DeserializeOwned + Unpin + Send + Sync + 'static {
    /// The stream kind in the store, e.g. `"cart"`. Keep it stable.
    const KIND: &'static str;
    /// Which member of a cluster a grain of this kind is placed on when
    /// nobody hosts it yet. The default, [`Home::FirstCaller`], suits
    /// grains one client works with (a cart); grains every member reads
    /// (a catalog) are better [`Home::Hashed`].
    const HOME: Home = Home::FirstCaller;
    /// What callers send. Serializable: a call for a grain another member
    /// hosts travels there.
    type Command: Serialize + DeserializeOwned + Clone + Send + 'static;
    /// What is stored.
    type Event: Serialize + DeserializeOwned + Send + 'static;
    /// Why a command was refused (a domain answer, not a failure).
    /// Serializable: it travels back to the caller's member as it is.
    type Rejection: Serialize + DeserializeOwned + Clone + Send + Unpin + 'static;
    /// What a caller gets back after the command took effect. Serializable
    /// so the first answer to an idempotent request can be stored with it.
    type Reply: Serialize + DeserializeOwned + Clone + Send + 'static;

    /// Checks `command` against the current state and returns the events it
    /// yields (none for a query or a no-op).
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Applies one stored event. Must not fail: events are accepted facts.
    fn apply(&mut self, event: &Self::Event);

    /// The answer to `command` once its events (if any) are applied.
    fn reply(&self, command: &Self::Command) -> Self::Reply;

    /// The reminders an event sets or cancels. They are stored with the
    /// event, in the same transaction, and survive restarts and failover:
    /// at or after its time the node sends the grain the reminder's
    /// command, on whichever member hosts it then, with the idempotency key
    /// `reminder:<id>:<due>` (a reminder may fire more than once; its
    /// command takes effect once). Times come from the event (decide
    /// records them), never from a clock here. The default sets none.
    fn reminders(event: &Self::Event) -> Vec<Remind<Self::Command>> {
        let _ = event;
        Vec::new()
    }

    /// Whether `command` only reads: `decide` yields no events for it and
    /// `resolve` no calls. The runtime may then answer it from the grain's
    /// last committed state on the caller's own thread, without waiting its
    /// turn in the mailbox: reads of a grain run alongside each other and
    /// alongside a command in progress (whose changes they do not see until
    /// they are stored). An answer never shows what was not stored, and a
    /// change a caller saw acknowledged is in every read that starts after.
    /// The default: no command is a read (each waits its turn).
    fn is_read(command: &Self::Command) -> bool {
        let _ = command;
        false
    }

    /// A command that needs other grains first: the calls to make, through
    /// `calls`, as a future yielding the command to decide once they are
    /// answered (typically one carrying their answers, for `decide` to
    /// record as events). The grain takes no other command meanwhile. The
    /// default needs none. See [`Calls`].
    fn resolve(&self, command: &Self::Command, calls: &Calls) -> Option<Resolution<Self::Command>> {
        let _ = (command, calls);
        None
    }
}

/// Where a cluster places a grain that nobody hosts yet (see
/// [`Grain::HOME`]). Either way the directory grants one member at a time;
/// this only says which member asks. A grain stays where it was placed
/// until it passivates or its member leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// The member that first calls it: no hop while its caller stays on
    /// that member.
    FirstCaller,
    /// The member its key (`kind/id`) hashes to among the current members
    /// (its directory partition's holder), whichever member calls it
    /// first: grains loaded through one member (a catalog import) spread
    /// evenly over the cluster instead of piling up there. Grains of two
    /// kinds with the same id are placed independently.
    Hashed,
}

/// A successful call: the grain's reply and its version after the command
/// (the number of events in its stream).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Outcome<R> {
    pub reply: R,
    pub version: u64,
}

/// A reminder an event sets or cancels (see [`Grain::reminders`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Remind<C> {
    /// At or after `due` (milliseconds since the Unix epoch), send the
    /// grain `command`. Setting an id again moves it.
    At {
        id: String,
        due: u64,
        command: C,
    },
    Cancel {
        id: String,
    },
}
