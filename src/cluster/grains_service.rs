//! The `granary.grains.v2.Grains` service: calls other members send for
//! grains this member hosts, of any kind registered here.

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
}

#[tonic::async_trait]
impl GrainsRpc for GrainsService {
    async fn call(
        &self,
        request: Request<pb::GrainCall>,
    ) -> Result<Response<pb::GrainAnswer>, Status> {
        let span = tracing::debug_span!(
            "grain.serve",
            grain.kind = tracing::field::Empty,
            grain.id = tracing::field::Empty,
        );
        crate::telemetry::extract(request.metadata(), &span);
        let call = request.into_inner();
        let Some(hosted) = self.grains.hosted(&call.kind) else {
            return Err(Status::invalid_argument(format!(
                "kind: no grain kind {:?} is registered here",
                call.kind.chars().take(64).collect::<String>()
            )));
        };
        if !valid_id(&call.id) {
            return Err(Status::invalid_argument(
                "id: 1..=190 printable characters without spaces",
            ));
        }
        if call.command.len() > MAX_COMMAND {
            return Err(Status::invalid_argument(format!(
                "command: at most {MAX_COMMAND} bytes"
            )));
        }
        if call.idempotency_key.len() > 200 {
            return Err(Status::invalid_argument(
                "idempotency_key: at most 200 bytes",
            ));
        }
        if call.chain.len() > 32 || call.chain.iter().any(|key| key.len() > 256) {
            return Err(Status::invalid_argument(
                "chain: at most 32 grains of at most 256 bytes each",
            ));
        }
        let options = CallOptions {
            expected_version: call.expected_version,
            idempotency: (!call.idempotency_key.is_empty())
                .then_some((call.idempotency_key, call.request_hash)),
            chain: call.chain,
        };
        span.record("grain.kind", call.kind.as_str());
        span.record("grain.id", call.id.as_str());
        let answer = tracing::Instrument::instrument(
            self.remote
                .serve(&call.kind, hosted.as_ref(), call.id, &call.command, options),
            span,
        )
        .await;
        Ok(Response::new(answer))
    }
}
