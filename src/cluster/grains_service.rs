//! The `granary.grains.v1.Grains` service: calls forwarded by other
//! members for carts this member owns.

use std::sync::Arc;

use actix_web::http::StatusCode;
use granary_grain::{CallOptions, GrainRuntime};
use tonic::{Request, Response, Status};

use super::router::{CartRouter, Route};
use crate::cart_grain::{CartGrain, CartRequest};
use crate::http::ApiError;
use crate::proto::grains as pb;
use crate::proto::grains::grains_server::Grains;

pub struct GrainsService {
    router: Arc<CartRouter>,
    carts: GrainRuntime<CartGrain>,
}

impl GrainsService {
    pub fn new(router: Arc<CartRouter>, carts: GrainRuntime<CartGrain>) -> Self {
        GrainsService { router, carts }
    }
}

/// An API error as it travels back to the member that forwarded the call.
pub(crate) fn failure(err: &ApiError) -> pb::GrainAnswer {
    pb::GrainAnswer {
        result: Some(pb::grain_answer::Result::Failure(pb::Failure {
            http_status: u32::from(err.status.as_u16()),
            code: err.code.to_string(),
            message: err.message.clone(),
            field: err.field.clone().unwrap_or_default(),
            current_version: err.etag,
            not_owner: false,
            owner_address: String::new(),
        })),
    }
}

#[tonic::async_trait]
impl Grains for GrainsService {
    async fn call(
        &self,
        request: Request<pb::GrainCall>,
    ) -> Result<Response<pb::GrainAnswer>, Status> {
        let call = request.into_inner();
        if call.kind != "cart" {
            return Err(Status::invalid_argument(format!(
                "kind: unknown grain kind {:?}",
                call.kind
            )));
        }
        if uuid::Uuid::parse_str(&call.id).is_err() {
            return Err(Status::invalid_argument("id: not a UUID"));
        }
        let command: CartRequest = serde_json::from_slice(&call.command)
            .map_err(|e| Status::invalid_argument(format!("command: {e}")))?;
        // A fenced member serves nothing, forwarded calls included: the
        // majority may re-home its carts.
        if !self.router.is_serving() {
            return Ok(Response::new(failure(
                &ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this member cannot see a majority of the cluster; retry",
                )
                .with_code("fenced"),
            )));
        }
        if !self.router.owns(&call.id) {
            match self.router.route(&call.id).await {
                Ok(Route::Local) => {}
                Ok(Route::Remote { address }) => {
                    return Ok(Response::new(pb::GrainAnswer {
                        result: Some(pb::grain_answer::Result::Failure(pb::Failure {
                            http_status: 503,
                            code: "moved".into(),
                            message: "this member does not own the cart".into(),
                            not_owner: true,
                            owner_address: address,
                            ..Default::default()
                        })),
                    }));
                }
                Err(err) => {
                    return Ok(Response::new(failure(
                        &ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.0).with_code("placing"),
                    )));
                }
            }
        }
        let options = CallOptions {
            expected_version: call.expected_version,
            idempotency: (!call.idempotency_key.is_empty())
                .then_some((call.idempotency_key, call.request_hash)),
        };
        let answer = match self.carts.call_with(&call.id, command, options).await {
            Ok(outcome) => pb::GrainAnswer {
                result: Some(pb::grain_answer::Result::Ok(pb::Outcome {
                    reply: serde_json::to_vec(&outcome.reply)
                        .map_err(|e| Status::internal(e.to_string()))?,
                    version: outcome.version,
                })),
            },
            Err(err) => failure(&ApiError::from(err)),
        };
        Ok(Response::new(answer))
    }
}
