//! The grain kinds a node hosts, and calls to any grain of them from any
//! member.
//!
//! [`Grains`] is what handlers (the cart API's, a user's own) call: one
//! method, [`Grains::call`], whether the grain lives here or on another
//! member. In a cluster the call is placed and, if another member hosts
//! the grain, forwarded there by `cluster::remote`; alone, it goes straight
//! to the local runtime. Each registered kind is also *hosted* here in a
//! type-erased form ([`HostedKind`]) so that calls arriving from other
//! members, with the command in MessagePack, reach its runtime.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use granary_grain::{
    CallError, CallOptions, Caller, EncodedFuture, Grain, GrainRuntime, Home, Outcome, RuntimeStats,
};

use crate::cluster::Remote;

/// A kind's call as it travels between members: the command encoded, the
/// reply encoded, the rejection encoded.
pub(crate) type WireResult = Result<(Vec<u8>, u64), CallError<Vec<u8>>>;

/// A boxed future of a hosted call.
pub(crate) type WireFuture = Pin<Box<dyn Future<Output = WireResult> + Send>>;

/// Work for a grain's thread: made there (its future need not be `Send`).
pub type Work = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Longest grain id: the placement key is `kind/id`, at most 256 bytes.
pub const MAX_ID_LEN: usize = 190;

/// Longest kind name.
pub const MAX_KIND_LEN: usize = 64;

/// A grain kind hosted here, whatever its types: what calls from other
/// members reach.
pub(crate) trait HostedKind: Send + Sync {
    /// Runs an encoded command on grain `id` here.
    fn call(&self, id: String, command: &[u8], options: CallOptions) -> WireFuture;
    fn stats(&self) -> RuntimeStats;
    fn passivate_all(&self);
    fn spawn_beside(&self, id: &str, work: Work);
    /// Whether an encoded command is one of the kind's reads.
    fn is_read(&self, command: &[u8]) -> Result<bool, String>;
    /// Lets the kind's grains call other grains.
    fn set_caller(&self, caller: Arc<dyn Caller>);
    /// Where a cluster places the kind's grains (`Grain::HOME`).
    fn home(&self) -> Home;
    /// The kind's name (`Grain::KIND`).
    fn kind(&self) -> &'static str;
}

impl<G: Grain> HostedKind for GrainRuntime<G> {
    fn call(&self, id: String, command: &[u8], options: CallOptions) -> WireFuture {
        let command = rmp_serde::from_slice::<G::Command>(command);
        let runtime = self.clone();
        Box::pin(async move {
            let command = command.map_err(|e| {
                CallError::Invalid(format!("command: not a {} command: {e}", G::KIND))
            })?;
            let outcome = runtime
                .call_with(&id, command, options)
                .await
                .map_err(encode_rejection)?;
            let reply = encode(&outcome.reply)
                .map_err(|e| CallError::Unavailable(format!("cannot encode the reply: {e}")))?;
            Ok((reply, outcome.version))
        })
    }

    fn stats(&self) -> RuntimeStats {
        GrainRuntime::stats(self)
    }

    fn passivate_all(&self) {
        GrainRuntime::passivate_all(self)
    }

    fn spawn_beside(&self, id: &str, work: Work) {
        GrainRuntime::spawn_beside(self, id, work)
    }

    fn is_read(&self, command: &[u8]) -> Result<bool, String> {
        rmp_serde::from_slice::<G::Command>(command)
            .map(|command| G::is_read(&command))
            .map_err(|e| format!("not a {} command: {e}", G::KIND))
    }

    fn set_caller(&self, caller: Arc<dyn Caller>) {
        GrainRuntime::set_caller(self, caller)
    }

    fn home(&self) -> Home {
        G::HOME
    }

    fn kind(&self) -> &'static str {
        G::KIND
    }
}

/// A kind's value in the wire's encoding (MessagePack: compact, and it
/// keeps enum tags as serde describes them).
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec(value)
}

fn encode_rejection<R: serde::Serialize>(err: CallError<R>) -> CallError<Vec<u8>> {
    let mut failed = None;
    let err = err.map_rejection(|rejection| {
        encode(&rejection).unwrap_or_else(|e| {
            failed = Some(e.to_string());
            Vec::new()
        })
    });
    match failed {
        Some(why) => CallError::Unavailable(format!("cannot encode the refusal: {why}")),
        None => err,
    }
}

/// A call's result, and the HTTP address (`HOST:PORT`) of the member that
/// ran it if it was another one that says it.
pub type NamingOwner<G> = (
    Result<Outcome<<G as Grain>::Reply>, CallError<<G as Grain>::Rejection>>,
    Option<String>,
);

/// The grain kinds of a node and the way to call them. Cheap to clone.
#[derive(Clone)]
pub struct Grains(Arc<Inner>);

struct Inner {
    /// `GrainRuntime<G>` by `TypeId::of::<G>()`.
    runtimes: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    /// The same runtimes by kind name, type-erased.
    hosted: HashMap<&'static str, Arc<dyn HostedKind>>,
    /// In a cluster: placement and forwarding. `None`: every grain is here.
    cluster: Option<Arc<Remote>>,
}

/// Collects the kinds a node hosts (see [`Grains::builder`]).
pub struct GrainsBuilder(Inner);

impl GrainsBuilder {
    /// Hosts `G`'s grains in `runtime`.
    ///
    /// # Panics
    /// If a kind of the same name (or the same type) is already hosted, or
    /// the name is not 1..=64 characters of `a-z0-9_-.`: both are mistakes
    /// in the program, not input.
    pub fn host<G: Grain>(mut self, runtime: GrainRuntime<G>) -> Self {
        assert!(
            valid_kind(G::KIND),
            "grain kind {:?}: 1..={MAX_KIND_LEN} characters of a-z, 0-9, '_', '-', '.'",
            G::KIND
        );
        assert!(
            !self.0.hosted.contains_key(G::KIND),
            "grain kind {:?} registered twice",
            G::KIND
        );
        self.0
            .hosted
            .insert(G::KIND, Arc::new(runtime.clone()) as Arc<dyn HostedKind>);
        self.0.runtimes.insert(TypeId::of::<G>(), Box::new(runtime));
        self
    }

    /// The kinds, each able to call grains of every kind (see
    /// `Grain::resolve`).
    pub fn build(self) -> Grains {
        let inner = Arc::new(self.0);
        let caller: Arc<dyn Caller> = Arc::new(GrainsCaller(Arc::downgrade(&inner)));
        for hosted in inner.hosted.values() {
            hosted.set_caller(caller.clone());
        }
        Grains(inner)
    }
}

fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND_LEN
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

/// Whether `id` may name a grain: 1..=190 bytes, printable, no spaces.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.chars().any(|c| c.is_control() || c.is_whitespace())
}

impl Grains {
    /// The kinds of a node alone (every grain here), or of a member of a
    /// cluster (`cluster`: placement and forwarding).
    pub fn builder(cluster: Option<Arc<Remote>>) -> GrainsBuilder {
        GrainsBuilder(Inner {
            runtimes: HashMap::new(),
            hosted: HashMap::new(),
            cluster,
        })
    }

    /// Sends `command` to grain `id` of kind `G`, wherever it lives (the
    /// `grain.call` span; see [`crate::telemetry`]).
    pub async fn call<G: Grain>(
        &self,
        id: &str,
        command: G::Command,
    ) -> Result<Outcome<G::Reply>, CallError<G::Rejection>> {
        self.call_with::<G>(id, command, CallOptions::default())
            .await
    }

    /// Sends `command` to grain `id` of kind `G` with preconditions
    /// (expected version, idempotency key), wherever it lives.
    pub async fn call_with<G: Grain>(
        &self,
        id: &str,
        command: G::Command,
        options: CallOptions,
    ) -> Result<Outcome<G::Reply>, CallError<G::Rejection>> {
        self.call_naming_owner::<G>(id, command, options).await.0
    }

    /// [`Grains::call_with`], and, if another member of the cluster ran the
    /// call, that member's HTTP address (`HOST:PORT`, as it advertises it):
    /// a client that sends the grain's next requests there saves a hop.
    pub async fn call_naming_owner<G: Grain>(
        &self,
        id: &str,
        command: G::Command,
        options: CallOptions,
    ) -> NamingOwner<G> {
        let Some(runtime) = self.runtime::<G>() else {
            let why = format!("grain kind {:?} is not registered on this node", G::KIND);
            return (Err(CallError::Invalid(why)), None);
        };
        if !valid_id(id) {
            let why = format!("grain id: 1..={MAX_ID_LEN} printable characters without spaces");
            return (Err(CallError::Invalid(why)), None);
        }
        let call = async move {
            match &self.0.cluster {
                None => (runtime.call_with(id, command, options).await, None),
                Some(cluster) => cluster.call(runtime, id, command, options).await,
            }
        };
        tracing::Instrument::instrument(call, call_span(G::KIND, id)).await
    }

    /// An encoded call to grain `kind`/`id`, wherever it lives (what a
    /// grain's call to another grain becomes).
    pub async fn call_encoded(
        &self,
        kind: &str,
        id: &str,
        command: Vec<u8>,
        options: CallOptions,
    ) -> WireResult {
        let Some(hosted) = self.hosted(kind) else {
            return Err(CallError::Invalid(format!(
                "grain kind {kind:?} is not registered on this node"
            )));
        };
        if !valid_id(id) {
            return Err(CallError::Invalid(format!(
                "grain id: 1..={MAX_ID_LEN} printable characters without spaces"
            )));
        }
        let call = async move {
            match &self.0.cluster {
                None => hosted.call(id.to_owned(), &command, options).await,
                Some(cluster) => {
                    cluster
                        .call_encoded(hosted.as_ref(), id, &command, options)
                        .await
                }
            }
        };
        tracing::Instrument::instrument(call, call_span(kind, id)).await
    }

    /// The local runtime of kind `G`, if it is registered.
    pub fn runtime<G: Grain>(&self) -> Option<&GrainRuntime<G>> {
        self.0
            .runtimes
            .get(&TypeId::of::<G>())
            .and_then(|runtime| runtime.downcast_ref::<GrainRuntime<G>>())
    }

    /// Whether a kind of this name is registered here.
    pub fn hosts(&self, kind: &str) -> bool {
        self.0.hosted.contains_key(kind)
    }

    /// The kind named `kind`, as calls from other members reach it.
    pub(crate) fn hosted(&self, kind: &str) -> Option<&Arc<dyn HostedKind>> {
        self.0.hosted.get(kind)
    }

    /// Runs `work` on the thread grain `kind`/`id` lives on (or would);
    /// `false` if no such kind is registered here.
    pub fn spawn_beside(&self, kind: &str, id: &str, work: Work) -> bool {
        match self.hosted(kind) {
            Some(hosted) => {
                hosted.spawn_beside(id, work);
                true
            }
            None => false,
        }
    }

    /// Whether `command` (encoded) is one of kind `kind`'s reads; why not
    /// if it is no command of a kind registered here.
    pub fn is_read(&self, kind: &str, command: &[u8]) -> Result<bool, String> {
        match self.hosted(kind) {
            Some(hosted) => hosted.is_read(command),
            None => Err(format!("no grain kind {kind:?} is registered here")),
        }
    }

    /// The registered kinds and their counters.
    pub fn stats(&self) -> Vec<(&'static str, RuntimeStats)> {
        let mut stats: Vec<_> = self
            .0
            .hosted
            .iter()
            .map(|(kind, hosted)| (*kind, hosted.stats()))
            .collect();
        stats.sort_by_key(|(kind, _)| *kind);
        stats
    }

    /// Grains live in memory here, of every kind.
    pub fn live(&self) -> u64 {
        self.0.hosted.values().map(|h| h.stats().live).sum()
    }

    /// Passivates every live grain of every kind.
    pub fn passivate_all(&self) {
        for hosted in self.0.hosted.values() {
            hosted.passivate_all();
        }
    }
}

/// Grain-to-grain calls through the node's kinds. Holds them weakly: the
/// kinds' runtimes hold it.
struct GrainsCaller(std::sync::Weak<Inner>);

impl Caller for GrainsCaller {
    fn call(&self, kind: &str, id: &str, command: Vec<u8>, options: CallOptions) -> EncodedFuture {
        let grains = self.0.upgrade().map(Grains);
        let (kind, id) = (kind.to_owned(), id.to_owned());
        Box::pin(async move {
            match grains {
                Some(grains) => grains.call_encoded(&kind, &id, command, options).await,
                None => Err(CallError::Unavailable("the node is stopping".into())),
            }
        })
    }
}

/// The span of a call to grain `kind`/`id`; the cluster records where it
/// ran (`grain.placement`: `local` or `remote`).
fn call_span(kind: &str, id: &str) -> tracing::Span {
    tracing::debug_span!(
        "grain.call",
        grain.kind = kind,
        grain.id = id,
        grain.placement = tracing::field::Empty,
    )
}
