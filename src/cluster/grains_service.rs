//! The `granary.grains.v2.Grains` service: calls other members send for
//! grains this member hosts, of any kind registered here. Members send
//! them on the grain-call link (`link.rs`); `Grains/Call` over gRPC
//! answers the same calls the same way.

use std::sync::Arc;

use granary_grain::CallOptions;
use tonic::{Request, Response, Status};

use super::remote::Remote;
use crate::grains::{Grains, valid_id};
use crate::proto::grains as pb;
use crate::proto::grains::grains_server::Grains as GrainsRpc;

/// Largest encoded command accepted.
const MAX_COMMAND: usize = 256 * 1024;

pub struct GrainsService {
    grains: Grains,
    remote: Arc<Remote>,
}

impl GrainsService {
    pub fn new(grains: Grains, remote: Arc<Remote>) -> Self {
        GrainsService { grains, remote }
    }

    /// Runs `call` under `span` (the caller's trace continued, if it sent
    /// one); `Err` names what is malformed in it (nothing ran).
    async fn run(
        &self,
        call: pb::GrainCall,
        span: tracing::Span,
    ) -> Result<pb::GrainAnswer, String> {
        let Some(hosted) = self.grains.hosted(&call.kind) else {
            return Err(format!(
                "kind: no grain kind {:?} is registered here",
                call.kind.chars().take(64).collect::<String>()
            ));
        };
        if !valid_id(&call.id) {
            return Err("id: 1..=190 printable characters without spaces".into());
        }
        if call.command.len() > MAX_COMMAND {
            return Err(format!("command: at most {MAX_COMMAND} bytes"));
        }
        if call.idempotency_key.len() > 200 {
            return Err("idempotency_key: at most 200 bytes".into());
        }
        if call.chain.len() > 32 || call.chain.iter().any(|key| key.len() > 256) {
            return Err("chain: at most 32 grains of at most 256 bytes each".into());
        }
        if call.trace_context.len() > 8
            || call
                .trace_context
                .iter()
                .any(|(k, v)| k.len() > 64 || v.len() > 512)
        {
            return Err(
                "trace_context: at most 8 entries, keys ≤ 64 and values ≤ 512 bytes".into(),
            );
        }
        crate::telemetry::extract_fields(&call.trace_context, &span);
        let options = CallOptions {
            expected_version: call.expected_version,
            idempotency: (!call.idempotency_key.is_empty())
                .then_some((call.idempotency_key, call.request_hash)),
            chain: call.chain,
        };
        span.record("grain.kind", call.kind.as_str());
        span.record("grain.id", call.id.as_str());
        Ok(tracing::Instrument::instrument(
            self.remote
                .serve(&call.kind, hosted.as_ref(), call.id, &call.command, options),
            span,
        )
        .await)
    }
}

fn serve_span() -> tracing::Span {
    tracing::debug_span!(
        "grain.serve",
        grain.kind = tracing::field::Empty,
        grain.id = tracing::field::Empty,
    )
}

impl super::link::Answer for GrainsService {
    async fn answer(&self, call: pb::GrainCall) -> Result<pb::GrainAnswer, String> {
        self.run(call, serve_span()).await
    }
}

#[tonic::async_trait]
impl GrainsRpc for GrainsService {
    async fn call(
        &self,
        request: Request<pb::GrainCall>,
    ) -> Result<Response<pb::GrainAnswer>, Status> {
        let span = serve_span();
        crate::telemetry::extract(request.metadata(), &span);
        self.run(request.into_inner(), span)
            .await
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }
}
