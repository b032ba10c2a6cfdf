//! The actix actor that hosts one activation of one grain.
//!
//! It loads its state when it starts (the mailbox waits meanwhile), then
//! handles one command at a time: while a command's events are being
//! written it takes no other message, so its state never runs ahead of the
//! store. A panic in the grain's code is caught here: the caller gets an
//! error, the state is thrown away and reloaded from the store (a
//! supervised restart), and no other grain notices.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use actix::dev::{MessageResponse, OneshotSender};
use actix::fut::{ActorFutureExt, LocalBoxActorFuture, WrapFuture};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message};
use granary_store::{
    AppendRequest, GrainKey, IdempotencyRecord, LoadedGrain, Reminder, ReminderChange, Snapshot,
    StoreError,
};
use tokio::sync::oneshot;

use crate::error::CallError;
use crate::grain::{Grain, Outcome};
use crate::runtime::{CallOptions, Shared};
use crate::stats::Counters;
use crate::tenure::Tenure;

pub(crate) type CallResult<G> =
    Result<Outcome<<G as Grain>::Reply>, CallError<<G as Grain>::Rejection>>;

/// Idempotent answers an activation remembers without asking the store.
const REMEMBERED_REPLIES: usize = 16;

/// A command for a grain, with the caller's preconditions.
pub(crate) struct Call<G: Grain> {
    pub(crate) command: G::Command,
    pub(crate) options: CallOptions,
    /// 0 for the first send of a call, then 1, 2, … for the runtime's retries.
    pub(crate) attempt: u32,
    /// Its `Grain::resolve` has run (the command is the resolved one).
    pub(crate) resolved: bool,
}

impl<G: Grain> Message for Call<G> {
    type Result = CallResult<G>;
}

/// Stop after the messages already queued.
/// Stop after the messages already queued. `done` is dropped when the
/// actor is, which releases its successor (see `Registry::retire`).
pub(crate) struct Passivate {
    pub(crate) done: Option<oneshot::Sender<()>>,
}

impl Message for Passivate {
    type Result = ();
}

/// Stop if nothing was ever stored for this grain (sent to itself through
/// the mailbox, so it never cuts a call in progress).
struct ReleaseIfEmpty;

impl Message for ReleaseIfEmpty {
    type Result = ();
}

/// An activation's state as readers on other threads see it (see
/// [`Grain::is_read`]): only the activation writes it, and only with what
/// is stored, before it answers the command that stored it.
pub(crate) struct Published<G> {
    /// The lease's fence count when the activation started: after a fence
    /// nothing is read from it.
    pub(crate) fences: u64,
    pub(crate) view: RwLock<View<G>>,
}

pub(crate) struct View<G> {
    pub(crate) state: G,
    pub(crate) version: u64,
    /// Loaded, sound, and not stopping: reads may be answered from it.
    pub(crate) readable: bool,
}

impl<G: Grain> Published<G> {
    pub(crate) fn new(fences: u64) -> Self {
        Published {
            fences,
            view: RwLock::new(View {
                state: G::default(),
                version: 0,
                readable: false,
            }),
        }
    }

    /// The view, even if a panic poisoned its lock (the activation reloads
    /// after any panic in the grain's code, and reads wait for that).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, View<G>> {
        self.view.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Nothing is read from it any more (a dormant activation passivated).
    pub(crate) fn withdraw(&self) {
        self.write().readable = false;
    }

    fn write(&self) -> RwLockWriteGuard<'_, View<G>> {
        self.view.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a dozing actor leaves in its registry entry so that the next call
/// needing the mailbox can start a new actor that goes on without loading:
/// the state itself stays in the entry's `Published`.
pub(crate) struct Dormant {
    version: u64,
    snapshot_version: u64,
    tenure: Tenure,
    #[allow(clippy::box_collection)]
    replies: Option<Box<VecDeque<IdempotencyRecord>>>,
}

impl Dormant {
    /// What it holds, leaving it empty (its entry is about to be awake).
    pub(crate) fn take(&mut self) -> Dormant {
        Dormant {
            version: self.version,
            snapshot_version: self.snapshot_version,
            tenure: self.tenure,
            replies: self.replies.take(),
        }
    }
}

pub(crate) struct GrainActor<G: Grain> {
    key: GrainKey,
    /// `kind/id`, as call chains name it.
    name: Arc<str>,
    generation: u64,
    shared: Arc<Shared<G>>,
    /// The state, shared with readers (see `Published`).
    published: Arc<Published<G>>,
    /// The version of the state (the activation's own copy of the
    /// published one).
    version: u64,
    snapshot_version: u64,
    /// Set when the state could not be rebuilt; every call gets this error.
    /// Boxed: almost never set, and wide.
    broken: Option<Box<CallError<G::Rejection>>>,
    /// Boxed: most grains never see an idempotency key, and an idle grain's
    /// size is what bounds how many fit in memory.
    #[allow(clippy::box_collection)]
    replies: Option<Box<VecDeque<IdempotencyRecord>>>,
    /// The previous activation's stop signal: loading waits for it.
    after: Option<oneshot::Receiver<()>>,
    /// Dropped with the actor: tells the next activation it may load.
    on_stop: Option<oneshot::Sender<()>>,
    /// The owner epoch its appends carry.
    tenure: Tenure,
    /// The lease's fence count when it was activated: after a fence it
    /// refuses every call.
    fences: u64,
    /// It fenced and asked itself to stop after the calls queued.
    retiring: bool,
    /// Woken from a dormant entry: its state is already published.
    woken: bool,
    /// It went dormant: it takes no call any more (each is resent, to its
    /// successor) and leaves its placement alone when it stops.
    dozed: bool,
    /// Calls taken (wrapping), and how many had been taken when the doze
    /// timer last looked: a count, not a clock read per call.
    calls: u64,
    calls_seen: u64,
}

impl<G: Grain> GrainActor<G> {
    pub(crate) fn new(
        id: String,
        generation: u64,
        shared: Arc<Shared<G>>,
        after: Option<oneshot::Receiver<()>>,
        tenure: Tenure,
        published: Arc<Published<G>>,
    ) -> Self {
        GrainActor {
            tenure,
            fences: published.fences,
            retiring: false,
            name: crate::calls::grain_key(G::KIND, &id).into(),
            key: GrainKey::new(G::KIND, id),
            generation,
            shared,
            published,
            version: 0,
            snapshot_version: 0,
            broken: None,
            replies: None,
            after,
            on_stop: None,
            woken: false,
            dozed: false,
            calls: 0,
            calls_seen: 0,
        }
    }

    /// An actor for a dormant activation, going on from what its
    /// predecessor left (see [`GrainActor::doze`]).
    pub(crate) fn woken(
        id: String,
        generation: u64,
        shared: Arc<Shared<G>>,
        dormant: Dormant,
        published: Arc<Published<G>>,
    ) -> Self {
        let mut actor = GrainActor::new(id, generation, shared, None, dormant.tenure, published);
        actor.version = dormant.version;
        actor.snapshot_version = dormant.snapshot_version;
        actor.replies = dormant.replies;
        actor.woken = true;
        actor
    }

    /// Checks, once the activation has taken no call for the runtime's
    /// `doze_after` (the timer looks every `doze_after`: a grain dozes
    /// between one and two of them after its last call), whether it can
    /// go dormant, and if so hands its
    /// registry entry what it needs and stops: an idle live grain then
    /// costs its state and entry, not an actor's task and mailbox. Never
    /// during a write (timers wait while a write holds the mailbox), nor
    /// when loading failed, nothing is stored, or it is retiring.
    fn schedule_doze(&self, ctx: &mut Context<Self>, after: std::time::Duration) {
        if self.shared.config.doze_after.is_zero() {
            return;
        }
        ctx.run_later(after, |act, ctx| act.doze(ctx));
    }

    fn doze(&mut self, ctx: &mut Context<Self>) {
        if self.calls != self.calls_seen {
            // A call since the last look: idle for less than a period.
            self.calls_seen = self.calls;
            self.schedule_doze(ctx, self.shared.config.doze_after);
            return;
        }
        let readable = self.published.read().readable;
        if self.dozed || self.retiring || self.broken.is_some() || self.version == 0 || !readable {
            return;
        }
        let dormant = Dormant {
            version: self.version,
            snapshot_version: self.snapshot_version,
            tenure: self.tenure,
            replies: self.replies.take(),
        };
        let dozed = self
            .shared
            .lock_registry()
            .doze(&self.key.id, self.generation, dormant);
        match dozed {
            Ok(()) => {
                self.dozed = true;
                Counters::bump(&self.shared.counters.dozes);
                ctx.stop();
            }
            // No longer live: a passivation is on its way.
            Err(dormant) => self.replies = dormant.replies,
        }
    }

    /// Throws the in-memory state away and rebuilds it from the store
    /// before the next message is handled.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        // Reads wait in the mailbox until the state is rebuilt.
        self.published.write().readable = false;
        let store = self.shared.store.clone();
        let key = self.key.clone();
        let after = self.after.take();
        let limit = self.shared.config.store_timeout;
        let load = bounded(limit, async move {
            if let Some(previous_stopped) = after {
                // Sender dropped = the previous activation is gone, with
                // every write it had in flight settled.
                let _ = previous_stopped.await;
            }
            store.load(&key).await
        });
        ctx.wait(load.into_actor(self).map(|loaded, act, ctx| {
            act.broken = None;
            act.replies = None;
            match loaded {
                Ok(loaded) => {
                    if let Err(err) = act.rebuild(loaded) {
                        if matches!(err, CallError::NotOwner(_)) {
                            tracing::warn!(grain = %act.key, error = %err, "stale placement refused by the store");
                        } else {
                            tracing::error!(grain = %act.key, error = %err, "grain state cannot be rebuilt");
                        }
                        act.broken = Some(Box::new(err));
                    } else if act.version == 0 {
                        act.release_if_still_empty(ctx);
                    }
                }
                Err(err) => act.broken = Some(Box::new(CallError::Store(err))),
            }
        }));
    }

    fn rebuild(&mut self, loaded: LoadedGrain) -> Result<(), CallError<G::Rejection>> {
        if loaded.epoch > self.tenure.epoch {
            // The store is the last word: an owner placed after this one
            // has written, so this placement is stale.
            return Err(CallError::NotOwner(format!(
                "a newer owner (epoch {}) has written {}; this placement (epoch {}) is stale",
                loaded.epoch, self.key, self.tenure.epoch
            )));
        }
        let corrupt = |what: String| CallError::Store(StoreError::Engine(what));
        let mut state = match &loaded.snapshot {
            Some(snapshot) => serde_json::from_slice::<G>(&snapshot.payload).map_err(|e| {
                corrupt(format!(
                    "snapshot of {} at {} unreadable: {e}",
                    self.key, snapshot.version
                ))
            })?,
            None => G::default(),
        };
        let mut events = Vec::with_capacity(loaded.events.len());
        for record in &loaded.events {
            let event: G::Event = serde_json::from_slice(&record.payload).map_err(|e| {
                corrupt(format!(
                    "event {} of {} unreadable: {e}",
                    record.version, self.key
                ))
            })?;
            events.push(event);
        }
        catch_unwind(AssertUnwindSafe(|| {
            for event in &events {
                state.apply(event);
            }
        }))
        .map_err(|panic| CallError::Panicked(panic_message(&panic)))?;
        self.version = loaded.version;
        *self.published.write() = View {
            state,
            version: loaded.version,
            readable: true,
        };
        self.snapshot_version = loaded.snapshot.map_or(0, |s| s.version);
        Ok(())
    }

    /// A grain with nothing stored (a read of an id nobody wrote, e.g. a
    /// GET of a cart never created) is dropped soon after, instead of
    /// holding memory until the idle timeout: reads of random ids must not
    /// fill the node.
    fn release_if_still_empty(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.shared.config.empty_linger, |_, ctx| {
            ctx.address().do_send(ReleaseIfEmpty);
        });
    }

    fn restart(&mut self, ctx: &mut Context<Self>, panic: String) -> CallError<G::Rejection> {
        tracing::warn!(grain = %self.key, panic = %panic, "grain panicked; restarting it from the store");
        Counters::bump(&self.shared.counters.restarts);
        {
            let mut view = self.published.write();
            view.readable = false;
            view.state = G::default();
        }
        self.reload(ctx);
        CallError::Panicked(panic)
    }

    fn remembered(&self, key: &str) -> Option<&IdempotencyRecord> {
        self.replies.as_ref()?.iter().find(|r| r.key == key)
    }

    fn remember(&mut self, record: IdempotencyRecord) {
        let replies = self.replies.get_or_insert_with(Default::default);
        if replies.len() == REMEMBERED_REPLIES {
            replies.pop_front();
        }
        replies.push_back(record);
    }

    /// The answer an earlier request with the same idempotency key got.
    fn replay(record: &IdempotencyRecord, request_hash: u64) -> CallResult<G> {
        if record.request_hash != request_hash {
            return Err(CallError::IdempotencyKeyReused {
                key: record.key.clone(),
            });
        }
        serde_json::from_slice(&record.reply).map_err(|e| {
            CallError::Store(StoreError::Engine(format!(
                "stored reply for {:?} unreadable: {e}",
                record.key
            )))
        })
    }

    /// Whether this activation may answer or append now (see `Lease`).
    /// After a fence it never may: it refuses every call already queued
    /// (none of them is resent elsewhere or run) and stops behind them.
    fn may_serve(&mut self, ctx: &mut Context<Self>) -> Result<(), CallError<G::Rejection>> {
        self.shared.lease.check(self.fences).map_err(|refusal| {
            if self.shared.lease.fences() != self.fences && !self.retiring {
                self.retiring = true;
                ctx.address().do_send(Passivate { done: None });
            }
            CallError::from(refusal)
        })
    }

    /// Decides the command (after the calls it needs, if any) and, if it
    /// yields events, writes them.
    fn execute(&mut self, mut call: Call<G>, ctx: &mut Context<Self>) -> GrainResponse<G> {
        // Checked against the clock right before answering or appending
        // (both happen in this same step): a member resumed after a pause
        // answers nothing from stale memory.
        if let Err(err) = self.may_serve(ctx) {
            return GrainResponse::Ready(Err(err));
        }
        if let Some(err) = self.broken.as_deref().cloned() {
            // Let the next call try a fresh activation.
            ctx.stop();
            return GrainResponse::Ready(Err(err));
        }
        if let Some(expected) = call.options.expected_version
            && expected > self.version
            && call.attempt == 0
        {
            // The client has seen a newer version than this activation: it
            // was written elsewhere (another process on the store). Catch
            // up, then let the runtime retry against fresh state.
            self.reload(ctx);
            return GrainResponse::Ready(Err(CallError::Store(StoreError::Conflict {
                key: self.key.clone(),
                expected,
                actual: self.version,
            })));
        }
        if let Some(expected) = call.options.expected_version
            && expected != self.version
        {
            return GrainResponse::Ready(Err(CallError::VersionMismatch {
                expected,
                actual: self.version,
            }));
        }
        // One look at the state for the resolution, the decision and a
        // read's reply (no write happens in between). The read guard lives
        // only inside `decide_on`: everything that takes the write lock
        // (`restart`, `write`) happens after it, here.
        match self.decide_on(&mut call) {
            Decision::Resolving(future) => {
                // The calls run while this grain takes no other command;
                // then the command they resolved to is decided (its lease
                // checked again: time has passed).
                GrainResponse::Pending(Box::pin(future.into_actor(self).then(
                    move |command, act, ctx| -> LocalBoxActorFuture<Self, CallResult<G>> {
                        let call = Call {
                            command,
                            resolved: true,
                            ..call
                        };
                        act.execute(call, ctx).into_future()
                    },
                )))
            }
            Decision::Rejected(rejection) => {
                GrainResponse::Ready(Err(CallError::Rejected(rejection)))
            }
            Decision::Panicked(panic) => GrainResponse::Ready(Err(self.restart(ctx, panic))),
            Decision::Answered(reply) => GrainResponse::Ready(Ok(Outcome {
                reply,
                version: self.version,
            })),
            Decision::Write(events) => match self.write(call, events) {
                Ok(future) => GrainResponse::Pending(future),
                Err(err) => GrainResponse::Ready(Err(err)),
            },
        }
    }

    /// Resolves (unless already resolved) and decides `call` against the
    /// published state under one read guard, and answers a read from it.
    /// Takes no other lock and changes nothing but the call's chain (moved
    /// into the grain's `Calls`).
    fn decide_on(&self, call: &mut Call<G>) -> Decision<G> {
        let view = self.published.read();
        if !call.resolved {
            // The chain is built only if the grain makes a call.
            let calls = crate::calls::Calls::new(
                self.shared.caller.get().cloned(),
                std::mem::take(&mut call.options.chain),
                self.name.clone(),
                self.version,
            );
            match catch_unwind(AssertUnwindSafe(|| {
                view.state.resolve(&call.command, &calls)
            })) {
                Ok(None) => {}
                Ok(Some(future)) => return Decision::Resolving(future),
                Err(panic) => return Decision::Panicked(panic_message(&panic)),
            }
        }
        let events = match catch_unwind(AssertUnwindSafe(|| view.state.decide(&call.command))) {
            Ok(Ok(events)) => events,
            Ok(Err(rejection)) => return Decision::Rejected(rejection),
            Err(panic) => return Decision::Panicked(panic_message(&panic)),
        };
        if !events.is_empty() || call.options.idempotency.is_some() {
            return Decision::Write(events);
        }
        match catch_unwind(AssertUnwindSafe(|| view.state.reply(&call.command))) {
            Ok(reply) => Decision::Answered(reply),
            Err(panic) => Decision::Panicked(panic_message(&panic)),
        }
    }

    fn write(
        &mut self,
        call: Call<G>,
        events: Vec<G::Event>,
    ) -> Result<LocalBoxActorFuture<Self, CallResult<G>>, CallError<G::Rejection>> {
        let encode_error = |e: serde_json::Error| {
            CallError::Store(StoreError::Invalid(format!("cannot encode: {e}")))
        };
        let payloads = events
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(encode_error)?;
        let new_version = self.version + events.len() as u64;
        // An idempotent request stores its answer with its events, so the
        // answer is computed on a copy of the state before the write.
        let idempotency = match call.options.idempotency.clone() {
            Some((key, request_hash)) => {
                let view = self.published.read();
                let answer = catch_unwind(AssertUnwindSafe(
                    || -> Result<Vec<u8>, serde_json::Error> {
                        let copy = serde_json::to_vec(&view.state)?;
                        let mut next: G = serde_json::from_slice(&copy)?;
                        for event in &events {
                            next.apply(event);
                        }
                        serde_json::to_vec(&Outcome {
                            reply: next.reply(&call.command),
                            version: new_version,
                        })
                    },
                ));
                drop(view);
                let reply = match answer {
                    Ok(encoded) => encoded.map_err(encode_error)?,
                    Err(panic) => return Err(CallError::Panicked(panic_message(&panic))),
                };
                Some(IdempotencyRecord {
                    key,
                    request_hash,
                    reply,
                })
            }
            None => None,
        };
        let mut reminders = Vec::new();
        for remind in events.iter().flat_map(G::reminders) {
            reminders.push(match remind {
                crate::grain::Remind::At { id, due, command } => ReminderChange::Set(Reminder {
                    id,
                    due,
                    payload: rmp_serde::to_vec(&command).map_err(|e| {
                        CallError::Store(StoreError::Invalid(format!(
                            "cannot encode a reminder's command: {e}"
                        )))
                    })?,
                }),
                crate::grain::Remind::Cancel { id } => ReminderChange::Cancel { id },
            });
        }
        let append = bounded_write(
            self.shared.config.store_timeout,
            self.shared.store.append(AppendRequest {
                key: self.key.clone(),
                expected_version: self.version,
                events: payloads,
                idempotency: idempotency.clone(),
                epoch: self.tenure.epoch,
                reminders,
            }),
        );
        Ok(Box::pin(append.into_actor(self).map(
            move |written, act, ctx| {
                match written {
                    Ok(version) => {
                        // Published before the caller hears of it: a read
                        // that starts after the answer sees the change.
                        let mut view = act.published.write();
                        let applied = catch_unwind(AssertUnwindSafe(|| {
                            for event in &events {
                                view.state.apply(event);
                            }
                            view.version = version;
                            view.state.reply(&call.command)
                        }));
                        if applied.is_err() {
                            // Half applied: nothing is read from it until
                            // it is rebuilt (below).
                            view.readable = false;
                        }
                        drop(view);
                        match applied {
                            Ok(reply) => {
                                act.version = version;
                                if let Some(record) = idempotency {
                                    act.remember(record);
                                }
                                act.maybe_snapshot(ctx);
                                Ok(Outcome { reply, version })
                            }
                            // The events are durable but the grain's code cannot
                            // apply them: restart from the store.
                            Err(panic) => Err(act.restart(ctx, panic_message(&panic))),
                        }
                    }
                    Err(err @ StoreError::Conflict { .. }) => {
                        // Another writer moved the stream on: catch up before the
                        // next message; the runtime retries this call.
                        Counters::bump(&act.shared.counters.conflicts);
                        act.reload(ctx);
                        Err(CallError::Store(err))
                    }
                    Err(err @ StoreError::DuplicateIdempotencyKey { .. }) => {
                        Err(CallError::Store(err))
                    }
                    Err(err @ StoreError::Fenced { .. }) => {
                        // A newer owner has written: this activation is a
                        // stale one. Nothing was written; it stops, and the
                        // caller finds the owner.
                        tracing::warn!(grain = %act.key, error = %err, "stale owner fenced by the store");
                        act.published.write().readable = false;
                        ctx.stop();
                        Err(CallError::NotOwner(err.to_string()))
                    }
                    Err(err @ StoreError::Unavailable(_)) => {
                        // Nothing was written: the state in memory is still
                        // the stored one, and reads keep being answered from
                        // it while the store is away.
                        Err(CallError::Store(err))
                    }
                    Err(err) => {
                        // No answer, or a failure at commit: the write may
                        // or may not be durable. Catch up before the next
                        // call (if the store is away, calls fail until it is
                        // back rather than answer from a state that may be
                        // behind).
                        act.reload(ctx);
                        Err(CallError::Store(err))
                    }
                }
            },
        )))
    }

    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        let every = self.shared.config.snapshot_every;
        if every == 0 || self.version < self.snapshot_version + every {
            return;
        }
        let Ok(payload) = serde_json::to_vec(&self.published.read().state) else {
            return;
        };
        self.snapshot_version = self.version;
        let save = self.shared.store.save_snapshot(
            &self.key,
            Snapshot {
                version: self.version,
                payload,
            },
        );
        let key = self.key.clone();
        // A lost snapshot costs only replay time, so nobody waits for it.
        ctx.spawn(
            async move {
                if let Err(err) = save.await {
                    tracing::debug!(grain = %key, error = %err, "snapshot not saved");
                }
            }
            .into_actor(self),
        );
    }
}

impl<G: Grain> Actor for GrainActor<G> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if !self.woken {
            self.reload(ctx);
        }
        self.schedule_doze(ctx, self.shared.config.doze_after);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if self.dozed {
            // Still live, dormant: its entry, state and placement stay.
            return;
        }
        // Nothing is read from it once its placement may go.
        self.published.write().readable = false;
        self.shared
            .lock_registry()
            .remove_if(&self.key.id, self.generation);
        // Every write of this activation has settled (writes hold the
        // mailbox): its placement may go.
        if let Some(ownership) = &self.shared.ownership {
            ownership.deactivated(G::KIND, &self.key.id, self.generation);
        }
    }
}

impl<G: Grain> Handler<Call<G>> for GrainActor<G> {
    type Result = GrainResponse<G>;

    fn handle(&mut self, call: Call<G>, ctx: &mut Self::Context) -> Self::Result {
        if self.dozed {
            // Queued before it dozed: its successor takes it.
            return GrainResponse::Resend;
        }
        self.calls = self.calls.wrapping_add(1);
        let Some((key, request_hash)) = call.options.idempotency.clone() else {
            return self.execute(call, ctx);
        };
        if self.remembered(&key).is_some() {
            if let Err(err) = self.may_serve(ctx) {
                return GrainResponse::Ready(Err(err));
            }
            if let Some(record) = self.remembered(&key) {
                return GrainResponse::Ready(Self::replay(record, request_hash));
            }
        }
        // Not in memory: the first answer may be in the store (written by an
        // earlier activation). Look it up without letting another command in.
        let lookup = self.shared.store.find_idempotent(&self.key, &key);
        GrainResponse::Pending(Box::pin(lookup.into_actor(self).then(
            move |found, act, ctx| -> LocalBoxActorFuture<Self, CallResult<G>> {
                match found {
                    Ok(Some(record)) => {
                        if let Err(err) = act.may_serve(ctx) {
                            return Box::pin(actix::fut::ready(Err(err)));
                        }
                        let result = Self::replay(&record, request_hash);
                        act.remember(record);
                        if result
                            .as_ref()
                            .is_ok_and(|outcome| outcome.version > act.version)
                        {
                            // The store holds a write this activation has
                            // not applied (one whose outcome it did not
                            // know): catch up before anything is read from
                            // it, since this answer acknowledges that write.
                            act.reload(ctx);
                        }
                        Box::pin(actix::fut::ready(result))
                    }
                    Ok(None) => act.execute(call, ctx).into_future(),
                    Err(err) => Box::pin(actix::fut::ready(Err(CallError::Store(err)))),
                }
            },
        )))
    }
}

impl<G: Grain> Handler<Passivate> for GrainActor<G> {
    type Result = ();

    fn handle(&mut self, passivate: Passivate, ctx: &mut Self::Context) {
        if passivate.done.is_some() {
            self.on_stop = passivate.done;
        }
        ctx.stop();
    }
}

impl<G: Grain> Handler<ReleaseIfEmpty> for GrainActor<G> {
    type Result = ();

    fn handle(&mut self, _: ReleaseIfEmpty, ctx: &mut Self::Context) {
        if self.version == 0 {
            Counters::bump(&self.shared.counters.passivations);
            ctx.stop();
        }
    }
}

/// What `GrainActor::decide_on` made of a call, acted on once the read
/// guard on the published state is gone.
enum Decision<G: Grain> {
    /// The grain calls others first; their answers resolve the command.
    Resolving(crate::calls::Resolution<G::Command>),
    Rejected(G::Rejection),
    /// The grain's code panicked (the message).
    Panicked(String),
    /// A read: answered from the published state.
    Answered(G::Reply),
    /// Events to append (possibly none, for an idempotent request).
    Write(Vec<G::Event>),
}

/// A call's answer: ready at once (reads, rejections) without boxing a
/// future, or after a write, holding the mailbox until it completes.
pub(crate) enum GrainResponse<G: Grain> {
    Ready(CallResult<G>),
    Pending(LocalBoxActorFuture<GrainActor<G>, CallResult<G>>),
    /// Not taken (the activation dozed): the reply sender is dropped, which
    /// the caller sees as a mailbox closed before its call was taken, and
    /// resends.
    Resend,
}

impl<G: Grain> GrainResponse<G> {
    /// The answer as a future, inside a step of a call already taken.
    fn into_future(self) -> LocalBoxActorFuture<GrainActor<G>, CallResult<G>> {
        match self {
            GrainResponse::Ready(result) => Box::pin(actix::fut::ready(result)),
            GrainResponse::Pending(future) => future,
            // Only a call not yet taken is resent; a step of one taken
            // never is (`execute` answers every call it runs).
            GrainResponse::Resend => Box::pin(actix::fut::ready(Err(CallError::Unavailable(
                "the activation stopped taking calls".into(),
            )))),
        }
    }
}

impl<G: Grain> MessageResponse<GrainActor<G>, Call<G>> for GrainResponse<G> {
    fn handle(self, ctx: &mut Context<GrainActor<G>>, tx: Option<OneshotSender<CallResult<G>>>) {
        match self {
            GrainResponse::Ready(result) => {
                if let Some(tx) = tx {
                    let _ = tx.send(result);
                }
            }
            GrainResponse::Resend => drop(tx),
            GrainResponse::Pending(future) => {
                // Like actix's AtomicResponse (the mailbox waits for the
                // future), but the reply sender is guarded: if the actor
                // stops before the future resolves (its thread ended, say),
                // the caller hears "outcome unknown" instead of `Closed`,
                // which the runtime would take as "never handled" and resend.
                let guard = ReplyGuard::<G>(tx);
                ctx.wait(future.map(move |result, _, _| guard.send(result)));
            }
        }
    }
}

/// `future`, or `Unavailable` if it takes longer than `limit` (for reads:
/// nothing changed).
async fn bounded<T>(
    limit: std::time::Duration,
    future: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from the event store within {limit:?}"
        ))),
    }
}

/// A write's `future`, or `Indeterminate` if it takes longer than `limit`:
/// the store did not answer, so whether it wrote is unknown.
async fn bounded_write<T>(
    limit: std::time::Duration,
    future: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Indeterminate(format!(
            "no answer from the event store within {limit:?}; the outcome is unknown"
        ))),
    }
}

/// Answers a taken call exactly once, even if its future is dropped.
struct ReplyGuard<G: Grain>(Option<OneshotSender<CallResult<G>>>);

impl<G: Grain> ReplyGuard<G> {
    fn send(mut self, result: CallResult<G>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }
}

impl<G: Grain> Drop for ReplyGuard<G> {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(CallError::Unavailable(
                "the grain stopped while handling the call; its outcome is unknown".into(),
            )));
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
