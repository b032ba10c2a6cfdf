//! Grain-to-grain calls.
//!
//! A command that needs other grains before it can be decided (a cart
//! that reserves stock at checkout, say) returns a future from
//! [`Grain::resolve`](crate::Grain::resolve). The runtime runs it while the
//! grain takes no other command, then decides the command the future
//! yields — typically one carrying the other grains' answers, which
//! `decide` records as events. The future calls grains of any kind,
//! wherever they live, through [`Calls`], each call with a deadline.
//!
//! Every call carries the chain of grains waiting on it. A call that
//! would come back to a grain already in the chain (A → B → A) fails at
//! once with [`CallError::Cycle`] instead of waiting behind the grain's
//! held mailbox until a deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::CallError;
use crate::grain::{Grain, Outcome};
use crate::runtime::CallOptions;

/// A call as it travels: the command encoded, and back the reply encoded
/// with the grain's version, or the runtime's error with the rejection
/// encoded.
pub type EncodedResult = Result<(Vec<u8>, u64), CallError<Vec<u8>>>;

/// The future of an encoded call (awaited by the calling grain, on its own
/// thread).
pub type EncodedFuture = Pin<Box<dyn Future<Output = EncodedResult>>>;

/// The future `Grain::resolve` returns: the command to decide once the
/// calls it makes are answered.
pub type Resolution<C> = Pin<Box<dyn Future<Output = C>>>;

/// How a runtime reaches grains of any kind, anywhere (the node provides
/// it; alone, a runtime has none and grain-to-grain calls are refused).
pub trait Caller: Send + Sync + 'static {
    /// Sends an encoded `command` (MessagePack) to grain `kind`/`id`.
    fn call(&self, kind: &str, id: &str, command: Vec<u8>, options: CallOptions) -> EncodedFuture;
}

/// A grain's way to call other grains while it resolves a command.
///
/// Made for every command a grain takes (most make no call), so it holds
/// only what is cheap to hand over; a call's chain is built when it is
/// made.
#[derive(Clone)]
pub struct Calls {
    caller: Option<Arc<dyn Caller>>,
    /// The grains waiting on the calling grain (`kind/id`), outermost first.
    waiting: Vec<String>,
    /// The calling grain (`kind/id`).
    me: Arc<str>,
    /// The calling grain's version when it began resolving.
    version: u64,
}

impl Calls {
    pub(crate) fn new(
        caller: Option<Arc<dyn Caller>>,
        waiting: Vec<String>,
        me: Arc<str>,
        version: u64,
    ) -> Self {
        Calls {
            caller,
            waiting,
            me,
            version,
        }
    }

    /// The calling grain (`kind/id`).
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The calling grain's version when it began resolving this command:
    /// with [`Calls::me`], a name for this attempt that a retry of the same
    /// command (at the same version) shares, e.g. for idempotency keys.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sends `command` to grain `id` of kind `K`, wherever it lives, and
    /// waits at most `deadline` for the answer. Past the deadline the
    /// outcome is unknown ([`CallError::Unreachable`]): give a step that
    /// changes something an idempotency key, so that trying it again (now
    /// or after a crash) does it once.
    pub async fn call<K: Grain>(
        &self,
        id: &str,
        command: K::Command,
        mut options: CallOptions,
        deadline: Duration,
    ) -> Result<Outcome<K::Reply>, CallError<K::Rejection>> {
        let Some(caller) = &self.caller else {
            return Err(CallError::Invalid(
                "this runtime calls no other grains (it runs without a node)".into(),
            ));
        };
        options.chain = self.chain();
        let command = rmp_serde::to_vec(&command)
            .map_err(|e| CallError::Invalid(format!("cannot encode the command: {e}")))?;
        let answer = match tokio::time::timeout(
            deadline,
            caller.call(K::KIND, id, command, options),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => {
                return Err(CallError::Unreachable(format!(
                    "{}/{id} did not answer within {deadline:?}",
                    K::KIND
                )));
            }
        };
        decode_answer::<K>(answer)
    }

    /// The grains waiting on a call made from here, the caller last.
    fn chain(&self) -> Vec<String> {
        let mut chain = Vec::with_capacity(self.waiting.len() + 1);
        chain.extend(self.waiting.iter().cloned());
        chain.push(self.me.to_string());
        chain
    }
}

/// An encoded answer as `K`'s types.
pub fn decode_answer<K: Grain>(
    answer: EncodedResult,
) -> Result<Outcome<K::Reply>, CallError<K::Rejection>> {
    match answer {
        Ok((reply, version)) => rmp_serde::from_slice(&reply)
            .map(|reply| Outcome { reply, version })
            .map_err(|e| CallError::Unavailable(format!("a reply that does not decode: {e}"))),
        Err(err) => {
            let mut failed = None;
            let decoded = err.map_rejection(|bytes| {
                rmp_serde::from_slice::<K::Rejection>(&bytes)
                    .map_err(|e| failed = Some(e.to_string()))
                    .ok()
            });
            match failed {
                Some(why) => Err(CallError::Unavailable(format!(
                    "a refusal that does not decode: {why}"
                ))),
                None => Err(decoded.map_rejection(|r| r.expect("decoded"))),
            }
        }
    }
}

/// The key a grain is known by in a call chain (and placed by).
pub fn grain_key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}
