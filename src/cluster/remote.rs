//! Calls to grains wherever they live: placement, forwarding, and the
//! typed errors that travel back.
//!
//! A call asks the router where its grain is. Placed here, it runs on the
//! local runtime; placed elsewhere, it goes to that member over
//! the grain-call link (`link.rs`) with the kind's command in MessagePack,
//! and comes back as the reply or the runtime's own error
//! ([`CallError`]), whatever the transport on top (HTTP, a user's API).
//! While the grain cannot be placed (its partition is rebuilding after a
//! membership change, its owner left and may still be serving) the call
//! waits, bounded by the failover window, and a stale route is resolved
//! again; only then does it fail (`Placing`). A forwarded call that gets
//! no answer is never resent (`Unreachable`: its outcome is unknown).

use std::sync::Arc;
use std::time::{Duration, Instant};

use granary_grain::{CallError, CallOptions, Grain, GrainRuntime, Home, decode_answer};

use super::router::{GrainRouter, Route, placement_key};
use crate::grains::{HostedKind, encode};
use crate::metrics::Metrics;
use crate::proto::grains as pb;

/// Deadline of a forwarded call (the callee's own store waits are bounded
/// by less).
const FORWARD_DEADLINE: Duration = Duration::from_secs(10);

/// How many times a call follows a route that turned out stale before it
/// gives up.
const MOVES: u32 = 3;

/// Placement and forwarding for a member's grain calls.
pub struct Remote {
    router: Arc<GrainRouter>,
    metrics: Arc<Metrics>,
}

impl Remote {
    /// Forwarded calls are observed into `metrics`.
    pub fn new(router: Arc<GrainRouter>, metrics: Arc<Metrics>) -> Self {
        Remote { router, metrics }
    }

    /// Runs `command` on grain `id` of kind `G` where it lives: on
    /// `local` if it is placed here, on its owner otherwise. With the
    /// answer comes, if another member ran it, that member's HTTP address
    /// (`HOST:PORT`; `None` too if it does not say).
    pub async fn call<G: Grain>(
        &self,
        local: &GrainRuntime<G>,
        id: &str,
        command: G::Command,
        options: CallOptions,
    ) -> crate::grains::NamingOwner<G> {
        let encoded = std::cell::OnceCell::new();
        // The member the last attempt went to (`None`: run here).
        let ran_at = std::cell::Cell::new(None::<String>);
        let result = self
            .place_and_run(
                G::KIND,
                G::HOME,
                id,
                async || {
                    ran_at.set(None);
                    local.call_with(id, command.clone(), options.clone()).await
                },
                async |address| {
                    ran_at.set(Some(address.to_owned()));
                    let command = match encoded.get() {
                        Some(bytes) => bytes,
                        None => {
                            let bytes = encode(&command).map_err(|e| {
                                CallError::Invalid(format!("cannot encode the command: {e}"))
                            })?;
                            encoded.get_or_init(|| bytes)
                        }
                    };
                    let answer = self.forward(address, G::KIND, id, command, &options).await;
                    decode_answer::<G>(answer)
                },
            )
            .await;
        let owner = ran_at
            .take()
            .and_then(|address| self.router.http_at(&address));
        (result, owner)
    }

    /// The same for a call already encoded (a grain's call to another):
    /// `hosted` is the kind's runtime here.
    pub(crate) async fn call_encoded(
        &self,
        hosted: &dyn HostedKind,
        id: &str,
        command: &[u8],
        options: CallOptions,
    ) -> crate::grains::WireResult {
        let kind = hosted.kind();
        self.place_and_run(
            kind,
            hosted.home(),
            id,
            async || hosted.call(id.to_owned(), command, options.clone()).await,
            async |address| self.forward(address, kind, id, command, &options).await,
        )
        .await
    }

    /// Places grain `kind`/`id` and runs the call: `local()` when it is
    /// placed here, `remote(address)` when another member hosts it. While
    /// it cannot be placed, or the member a route named refused before
    /// running the call, it tries again, bounded by the failover window.
    /// A grain placed by hash (`home`) that its holder says it does not
    /// host was placed elsewhere before: it is then found as any other
    /// grain (the holder names its owner, or grants it here).
    async fn place_and_run<T, R>(
        &self,
        kind: &str,
        mut home: Home,
        id: &str,
        mut local: impl AsyncFnMut() -> Result<T, CallError<R>>,
        remote: impl AsyncFn(&str) -> Result<T, CallError<R>>,
    ) -> Result<T, CallError<R>> {
        let router = &self.router;
        if !router.is_serving() {
            return Err(fenced());
        }
        let key = placement_key(kind, id);
        let deadline = Instant::now() + router.placement_wait();
        let mut backoff = Duration::from_millis(10);
        let mut moved = 0;
        loop {
            let attempt = Instant::now();
            let route = router.route(&key, home).await;
            if let Ok(route) = &route {
                let placement = match route {
                    Route::Local => "local",
                    Route::Remote { .. } => "remote",
                };
                tracing::Span::current().record("grain.placement", placement);
            }
            let refusal = match route {
                Ok(Route::Local) => match local().await {
                    // Released between routing and activation (it had just
                    // passivated): nothing ran; place it again.
                    Err(CallError::NotOwner(why)) if moved < MOVES => {
                        moved += 1;
                        tracing::debug!(grain = %key, %why, "placed elsewhere meanwhile");
                        continue;
                    }
                    other => return other,
                },
                Ok(Route::Remote { address, to_holder }) => match remote(&address).await {
                    Err(CallError::NotOwner(why)) => {
                        router.forget(&key);
                        // The holder itself does not host it: placed
                        // elsewhere before, so it is found as any other
                        // grain. (A stale route's refusal sends the next
                        // attempt to the holder again.)
                        if to_holder {
                            home = Home::FirstCaller;
                        }
                        moved += 1;
                        if moved <= MOVES {
                            continue;
                        }
                        CallError::Placing(format!("the grain is moving between members ({why})"))
                    }
                    // The callee refused before running it: nothing ran, so
                    // the call may go again (to it or another member).
                    Err(CallError::Fenced(why)) => {
                        router.forget(&key);
                        CallError::Fenced(why)
                    }
                    Err(CallError::Placing(why)) => {
                        router.forget(&key);
                        CallError::Placing(why)
                    }
                    Err(CallError::Unreachable(why)) => {
                        router.forget(&key);
                        return Err(CallError::Unreachable(why));
                    }
                    other => return other,
                },
                Err(unroutable) => CallError::Placing(unroutable.0),
            };
            if !router.is_serving() {
                return Err(fenced());
            }
            if Instant::now() + backoff > deadline {
                return Err(refusal);
            }
            // The backoff runs from the start of the attempt: a holder that
            // kept the claim waiting while it rebuilt has waited for us. The
            // wait ends early when placement may have changed here.
            if let Some(left) = backoff.checked_sub(attempt.elapsed()) {
                router.placement_changed(left).await;
            }
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// Sends an encoded call to the member at `address`. The error's
    /// rejection, if any, is still encoded.
    async fn forward(
        &self,
        address: &str,
        kind: &'static str,
        id: &str,
        command: &[u8],
        options: &CallOptions,
    ) -> Result<(Vec<u8>, u64), CallError<Vec<u8>>> {
        if !self.router.is_member_at(address) {
            // A route from before a view change: nothing was sent, so the
            // call is placed again.
            return Err(CallError::Placing(format!(
                "{address} left the cluster; placing the grain again"
            )));
        }
        let link = self
            .router
            .link(address)
            .map_err(|e| CallError::Unreachable(e.0))?;
        let (idempotency_key, request_hash) = options.idempotency.clone().unwrap_or_default();
        let call = pb::GrainCall {
            kind: kind.to_owned(),
            id: id.to_owned(),
            command: command.to_vec(),
            expected_version: options.expected_version,
            idempotency_key,
            request_hash,
            chain: options.chain.clone(),
            trace_context: Default::default(),
        };
        let span = tracing::debug_span!("grain.forward", peer.address = address);
        let started = Instant::now();
        // A member that leaves the view while the call is on its way (it
        // was removed: stopped, cut off) will not answer; the call fails
        // then rather than at its deadline. Its outcome is unknown either
        // way: the member may have run it before it went.
        let answer = tokio::select! {
            biased;
            answer = tracing::Instrument::instrument(self.send(address, &link, call, &span), span.clone()) => answer,
            () = self.router.departed(address) => Err(CallError::Unreachable(
                "the member that hosts the grain left the cluster before it answered; the call may or may not have run".into(),
            )),
        };
        let outcome = match &answer {
            Err(CallError::NotOwner(_)) => "moved",
            Err(CallError::Fenced(_) | CallError::Placing(_)) => "refused",
            Err(CallError::Unreachable(_)) => "unreachable",
            _ => "ok",
        };
        self.metrics.forwarded(kind, outcome, started.elapsed());
        answer
    }

    /// Sends `call` on `link`, or as `Grains/Call` over gRPC to a member
    /// that does not speak the link (a version from before it, during an
    /// upgrade).
    async fn send(
        &self,
        address: &str,
        link: &super::link::Link,
        mut call: pb::GrainCall,
        span: &tracing::Span,
    ) -> Result<(Vec<u8>, u64), CallError<Vec<u8>>> {
        let unanswered = |why: &dyn std::fmt::Display| {
            CallError::Unreachable(format!(
                "the member that hosts the grain did not answer ({why})"
            ))
        };
        crate::telemetry::inject_fields(span, &mut call.trace_context);
        let started = Instant::now();
        match link.call(&call, FORWARD_DEADLINE).await {
            Ok(answer) => return super::wire::grain_answer_from_wire(answer),
            // Sent or not, the member is not answering: the caller hears
            // at once (a load balancer moves on) rather than waiting for
            // the membership to change.
            Err(super::link::LinkError::Unsent(why) | super::link::LinkError::Failed(why)) => {
                return Err(unanswered(&why));
            }
            Err(super::link::LinkError::NotSpoken) => {}
        }
        let mut client = self
            .router
            .grains_client(address)
            .map_err(|e| CallError::Unreachable(e.0))?;
        call.trace_context.clear();
        let mut request = tonic::Request::new(call);
        // What is left of the call's deadline (finding out took a moment).
        let left = FORWARD_DEADLINE.saturating_sub(started.elapsed());
        request.set_timeout(left.max(Duration::from_millis(1)));
        crate::telemetry::inject(span, request.metadata_mut());
        match client.call(request).await {
            Ok(answer) => super::wire::grain_answer_from_wire(answer.into_inner()),
            Err(status) => Err(unanswered(&status.message())),
        }
    }

    /// A call from another member for grain `id` of `kind`, hosted here:
    /// it runs only if the grain is placed here (or can be placed here
    /// now); otherwise the caller hears where it is not, and nothing ran.
    pub(crate) async fn serve(
        &self,
        kind: &str,
        hosted: &dyn HostedKind,
        id: String,
        command: &[u8],
        options: CallOptions,
    ) -> pb::GrainAnswer {
        let router = &self.router;
        // A fenced member serves nothing, forwarded calls included: the
        // majority may re-home its grains.
        let result = if !router.is_serving() {
            Err(fenced())
        } else {
            let key = placement_key(kind, &id);
            // The call came here to be run here: a grain nobody hosts is
            // placed here, whatever its kind's home (a caller sends a
            // hashed grain to its holder). Refusing a hashed grain this
            // member does not hold would keep it on its holder, but while
            // members' views differ (a rolling restart) calls bounced
            // between refusals and claims; placement is a preference.
            match router.route(&key, Home::FirstCaller).await {
                Ok(Route::Local) => hosted.call(id, command, options).await,
                Ok(Route::Remote { address, .. }) => Err(CallError::NotOwner(format!(
                    "this member does not host the grain; {address} does"
                ))),
                Err(unroutable) => Err(CallError::Placing(unroutable.0)),
            }
        };
        super::wire::grain_answer_to_wire(result)
    }
}

fn fenced<R>() -> CallError<R> {
    CallError::Fenced(
        "this node cannot see a majority of the cluster; retry, here or on another node".into(),
    )
}
