//! The handle callers use to reach grains of one kind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use actix::{Actor, Arbiter, MailboxError};
use granary_store::{EventStore, StoreError};

use crate::activation::{Call, CallResult, GrainActor, Published};
use crate::config::{ArbiterPool, Placement, RuntimeConfig};
use crate::error::CallError;
use crate::grain::{Grain, Outcome};
use crate::registry::{Host, Registry, Retired};
use crate::stats::{Counters, RuntimeStats};
use crate::tenure::{Lease, Ownership, Tenure};

/// What a caller requires of a call besides the command itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Refuse the command unless the grain is at exactly this version
    /// (optimistic concurrency for clients, e.g. HTTP `If-Match`).
    pub expected_version: Option<u64>,
    /// An idempotency key and a hash of the request it names: a retry with
    /// the same key and hash gets the first answer and changes nothing; the
    /// same key with another hash is refused.
    pub idempotency: Option<(String, u64)>,
    /// The grains waiting on this call (`kind/id`), set by grain-to-grain
    /// calls: a call to one of them fails at once (`CallError::Cycle`).
    pub chain: Vec<String>,
}

/// A call queued in an activation's mailbox.
type Queued<G> = actix::dev::Request<GrainActor<G>, Call<G>>;

/// State shared by the runtime handle and every activation it hosts.
pub(crate) struct Shared<G: Grain> {
    pub(crate) registry: Mutex<Registry<G>>,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) config: RuntimeConfig,
    pub(crate) counters: Counters,
    /// In a cluster: who may host which grain. `None`: every grain, here.
    pub(crate) ownership: Option<Arc<dyn Ownership>>,
    /// Until when this member may serve (unbounded alone).
    pub(crate) lease: Arc<Lease>,
    /// How its grains call other grains (set once the node has them all).
    pub(crate) caller: std::sync::OnceLock<Arc<dyn crate::calls::Caller>>,
    /// A coarse clock (milliseconds since start) the idle sweeper advances
    /// each tick: a call marks its grain used by reading it, which is far
    /// cheaper than reading the system clock on every call. Idle times are
    /// therefore exact to one sweep period.
    clock_ms: AtomicU64,
    started: Instant,
    /// The runtime's own arbiter threads: where pooled grains live, where
    /// grains of callers outside actix live, and (the first) where the idle
    /// sweeper runs.
    arbiters: ArbiterPool,
}

/// The runtime for one grain kind `G`. Clone it freely; all clones share
/// the same activations.
///
/// Must be created inside a running actix `System`.
pub struct GrainRuntime<G: Grain> {
    shared: Arc<Shared<G>>,
}

impl<G: Grain> Clone for GrainRuntime<G> {
    fn clone(&self) -> Self {
        GrainRuntime {
            shared: self.shared.clone(),
        }
    }
}

impl<G: Grain> GrainRuntime<G>
where
    G::Command: Clone,
{
    /// Starts a runtime storing into `store` that hosts every grain it is
    /// called for. Spawns its arbiter threads (see [`Placement`]).
    pub fn new(store: Arc<dyn EventStore>, config: RuntimeConfig) -> Self {
        Self::start(store, config, None, Arc::new(Lease::unbounded()))
    }

    /// Starts a runtime for a member of a cluster: a grain is activated
    /// only if `ownership` places it here (its appends carry the owner
    /// epoch it gives), and calls are answered only while `lease` holds.
    pub fn in_cluster(
        store: Arc<dyn EventStore>,
        config: RuntimeConfig,
        ownership: Arc<dyn Ownership>,
        lease: Arc<Lease>,
    ) -> Self {
        Self::start(store, config, Some(ownership), lease)
    }

    fn start(
        store: Arc<dyn EventStore>,
        config: RuntimeConfig,
        ownership: Option<Arc<dyn Ownership>>,
        lease: Arc<Lease>,
    ) -> Self {
        let arbiters = match &config.placement {
            Placement::Pool(n) => ArbiterPool::new(*n),
            Placement::Shared(pool) => pool.clone(),
            Placement::Caller => ArbiterPool::new(1),
        };
        let home = arbiters.first().clone();
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::new()),
            store,
            config,
            counters: Counters::default(),
            ownership,
            lease,
            caller: std::sync::OnceLock::new(),
            clock_ms: AtomicU64::new(0),
            started: Instant::now(),
            arbiters,
        });
        let sweep_every = (shared.config.idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let weak: Weak<Shared<G>> = Arc::downgrade(&shared);
        home.spawn(async move {
            loop {
                tokio::time::sleep(sweep_every).await;
                let Some(shared) = weak.upgrade() else { break };
                let now = shared.started.elapsed().as_millis() as u64;
                shared.clock_ms.store(now, Ordering::Relaxed);
                sweep_idle(&shared, now);
                shared.lock_registry().forget_stopped();
            }
        });
        GrainRuntime { shared }
    }

    /// Sends `command` to grain `id`, activating it if needed.
    pub async fn call(
        &self,
        id: &str,
        command: G::Command,
    ) -> Result<Outcome<G::Reply>, CallError<G::Rejection>> {
        self.call_with(id, command, CallOptions::default()).await
    }

    /// Sends `command` to grain `id` with preconditions.
    ///
    /// Retries, up to `max_retries`, when the activation was stopping
    /// (passivated, evicted, restarted) before it took the command, or when
    /// its write met a version conflict (it has reloaded meanwhile).
    pub async fn call_with(
        &self,
        id: &str,
        command: G::Command,
        options: CallOptions,
    ) -> Result<Outcome<G::Reply>, CallError<G::Rejection>> {
        if !options.chain.is_empty() {
            let me = crate::calls::grain_key(G::KIND, id);
            if options.chain.contains(&me) {
                let mut chain = options.chain.clone();
                chain.push(me);
                return Err(CallError::Cycle(chain.join(" → ")));
            }
        }
        if options.idempotency.is_none()
            && G::is_read(&command)
            && let Some(answer) = self.read_committed(id, &command, &options)
        {
            Counters::bump(&self.shared.counters.reads);
            return answer;
        }
        let mut attempt = 0;
        loop {
            let call = Call {
                command: command.clone(),
                options: options.clone(),
                attempt,
                resolved: false,
            };
            let request = self.send(id, call)?;
            // No timer per call (it would cost more than a call answered from
            // memory): the grain bounds every store wait it makes, which is
            // the only thing its mailbox ever waits for.
            let retry_reason = match request.await {
                Ok(Err(CallError::Store(StoreError::Conflict { .. }))) => "version conflict",
                // The first answer exists: the retry looks it up.
                Ok(Err(CallError::Store(StoreError::DuplicateIdempotencyKey { .. }))) => {
                    "answered before"
                }
                Ok(result) => return result,
                // The activation stopped before it took the message: actix
                // dropped it unhandled (a call that was taken is always
                // answered, see `ReplyGuard`), so resending is safe.
                Err(MailboxError::Closed) => "activation stopped",
                // Never resend a call that may have been taken.
                Err(MailboxError::Timeout) => {
                    return Err(CallError::Unavailable(format!(
                        "grain {}/{id} gave no answer in time; the outcome is unknown",
                        G::KIND
                    )));
                }
            };
            attempt += 1;
            if attempt > self.shared.config.max_retries {
                return Err(CallError::Unavailable(format!(
                    "grain {}/{id} still failing after {attempt} attempts ({retry_reason})",
                    G::KIND
                )));
            }
            tracing::debug!(grain = %id, attempt, reason = retry_reason, "retrying grain call");
        }
    }

    /// Answers a read from `id`'s live activation's committed state, on
    /// this thread (see [`Grain::is_read`]); `None` when the mailbox must
    /// take it: no activation, or one loading, broken or stopping, a fence
    /// or an expired lease (the mailbox refuses it properly), another
    /// version expected, or a command that turned out not to be a read.
    fn read_committed(
        &self,
        id: &str,
        command: &G::Command,
        options: &CallOptions,
    ) -> Option<CallResult<G>> {
        let published = {
            let now = self.shared.clock_ms.load(Ordering::Relaxed);
            self.lock_registry().touch(id, now)?.published.clone()
        };
        let view = published.read();
        if !view.readable
            || options.expected_version.is_some_and(|v| v != view.version)
            // Right before answering, as the activation itself checks.
            || self.shared.lease.check(published.fences).is_err()
        {
            return None;
        }
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match view.state.decide(command) {
                Ok(events) if events.is_empty() => Some(Ok(Outcome {
                    reply: view.state.reply(command),
                    version: view.version,
                })),
                Ok(_) => None,
                Err(rejection) => Some(Err(CallError::Rejected(rejection))),
            }
        }));
        // A panic: the mailbox runs it again, and restarts the grain.
        answer.ok().flatten()
    }

    /// Queues `call` in the mailbox of `id`'s live activation, started if
    /// there is none (and this member may host it). Queuing is a channel
    /// push, done under the registry lock so the hot path needs no `Addr`
    /// clone.
    fn send(&self, id: &str, call: Call<G>) -> Result<Queued<G>, CallError<G::Rejection>> {
        let now = self.shared.clock_ms.load(Ordering::Relaxed);
        let mut registry = self.shared.lock_registry();
        if let Some(entry) = registry.touch(id, now) {
            let dormant = match &mut entry.host {
                Host::Awake(addr) => return Ok(addr.send(call)),
                Host::Dormant(dormant) => dormant.take(),
            };
            // A dormant activation: a new actor goes on from its state.
            let shared = self.shared.clone();
            let (owned_id, generation) = (id.to_owned(), entry.generation);
            let published = entry.published.clone();
            let wake = move || GrainActor::woken(owned_id, generation, shared, dormant, published);
            let addr = match self.home_of(id) {
                None => wake().start(),
                Some(arbiter) => GrainActor::start_in_arbiter(arbiter, move |_| wake()),
            };
            let request = addr.send(call);
            entry.host = Host::Awake(addr);
            Counters::bump(&self.shared.counters.wakes);
            return Ok(request);
        }
        let generation = registry.next_generation();
        // Read before asking for the tenure: a fence in between leaves the
        // activation with an old count, so it refuses every call.
        let fences = self.shared.lease.fences();
        let tenure = match &self.shared.ownership {
            Some(ownership) => ownership.activate(G::KIND, id, generation)?,
            None => Tenure { epoch: 0 },
        };
        let mut dormant = Vec::new();
        while let Some((victim, entry)) = registry.pop_over(self.shared.config.max_live.max(1)) {
            tracing::trace!(grain = %victim, "evicting least recently used grain");
            Counters::bump(&self.shared.counters.evictions);
            dormant.extend(registry.retire(victim, entry));
        }
        let after = registry.take_stopping(id);
        let shared = self.shared.clone();
        let owned_id = id.to_owned();
        let published = Arc::new(Published::new(fences));
        let mine = published.clone();
        let start = move || GrainActor::new(owned_id, generation, shared, after, tenure, mine);
        let addr = match self.home_of(id) {
            None => start().start(),
            Some(arbiter) => GrainActor::start_in_arbiter(arbiter, move |_| start()),
        };
        let request = addr.send(call);
        registry.insert(id.to_owned(), addr, published, generation, now);
        drop(registry);
        Counters::bump(&self.shared.counters.activations);
        self.shared.release(dormant);
        Ok(request)
    }

    /// The arbiter a new activation of `id` starts on; `None` for the
    /// caller's own.
    fn home_of(&self, id: &str) -> Option<&actix::ArbiterHandle> {
        let arbiters = &self.shared.arbiters;
        match self.shared.config.placement {
            Placement::Caller if Arbiter::try_current().is_some() => None,
            Placement::Caller => Some(arbiters.first()),
            Placement::Pool(_) | Placement::Shared(_) => Some(arbiters.of(id)),
        }
    }

    /// Runs the future `work` makes on the thread grain `id` lives on (or
    /// would, once activated): e.g. to measure what a call made from there
    /// costs.
    pub fn spawn_beside<F>(&self, id: &str, work: impl FnOnce() -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()> + 'static,
    {
        match self.home_of(id) {
            Some(arbiter) => {
                arbiter.spawn_fn(move || {
                    actix::spawn(work());
                });
            }
            None => {
                actix::spawn(work());
            }
        }
    }

    /// The runtime's counters.
    pub fn stats(&self) -> RuntimeStats {
        let live = self.lock_registry().len();
        self.shared.counters.snapshot(live)
    }

    /// Ids of the grains live in memory now.
    pub fn live_ids(&self) -> Vec<String> {
        self.lock_registry().ids()
    }

    /// Passivates every live grain (after the messages already queued for
    /// it). Used at shutdown; calls made afterwards activate grains again.
    pub fn passivate_all(&self) {
        let (retired, dormant) = self.lock_registry().retire_all();
        self.shared.release(dormant);
        self.shared
            .counters
            .passivations
            .fetch_add(retired as u64, Ordering::Relaxed);
    }

    /// Lets this runtime's grains call other grains through `caller` (see
    /// [`Grain::resolve`]). Set once; later calls change nothing.
    pub fn set_caller(&self, caller: Arc<dyn crate::calls::Caller>) {
        let _ = self.shared.caller.set(caller);
    }

    /// The store this runtime writes to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.shared.store
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry<G>> {
        self.shared.lock_registry()
    }
}

impl<G: Grain> Shared<G> {
    /// Releases the placements of dormant activations passivated (an
    /// awake one's actor does it when it stops). Outside the registry's
    /// lock, as the actors do.
    fn release(&self, retired: Vec<Retired>) {
        if let Some(ownership) = &self.ownership {
            for Retired { id, generation } in retired {
                ownership.deactivated(G::KIND, &id, generation);
            }
        }
    }

    /// The registry, even if a panic poisoned its lock: its data stays
    /// consistent because no code panics while holding it.
    pub(crate) fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry<G>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Passivates every grain idle for at least the configured timeout.
fn sweep_idle<G: Grain>(shared: &Shared<G>, now: u64) {
    let mut dormant = Vec::new();
    let mut registry = shared.lock_registry();
    while let Some((id, entry)) = registry.pop_idle(now, shared.config.idle_timeout) {
        tracing::trace!(grain = %id, "passivating idle grain");
        Counters::bump(&shared.counters.passivations);
        dormant.extend(registry.retire(id, entry));
    }
    drop(registry);
    shared.release(dormant);
}
