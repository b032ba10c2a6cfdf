//! The cart handlers. Each one validates its input, turns it into one grain
//! call and renders the outcome; the rules live in the cart domain.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use granary_cart::CartCommand;
use granary_grain::{CallOptions, Outcome};
use uuid::Uuid;

use super::ApiState;
use super::error::ApiError;
use super::request::{call_options, etag, parse_json, parse_uuid, read_body};
use super::views::{AddItemBody, CartBody, ChangeQuantityBody, ErrorBody, SetDeliveryBody};
use crate::cart_grain::CartRequest;
use crate::cluster::{CartRouter, Route};

/// Namespace of cart ids derived from an `Idempotency-Key` on `POST /carts`,
/// so a retried create names the same cart.
const CREATE_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_2f0e_8d4b_4e59_9a3c_5b7d_2e1f_0c84);

fn render(status: StatusCode, id: Uuid, outcome: &Outcome<granary_cart::Cart>) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("ETag", etag(outcome.version)))
        .insert_header(("Cache-Control", "no-store"))
        .json(CartBody::new(id, outcome.version, &outcome.reply))
}

async fn call(
    state: &ApiState,
    id: Uuid,
    request: CartRequest,
    options: CallOptions,
) -> Result<Outcome<granary_cart::Cart>, ApiError> {
    if !state.serving.load(std::sync::atomic::Ordering::Acquire) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node cannot see a majority of the cluster; retry, here or on another node",
        )
        .with_code("fenced"));
    }
    let grain = id.to_string();
    let Some(router) = &state.router else {
        return Ok(state.carts.call_with(&grain, request, options).await?);
    };
    // While the cart cannot be placed (the directory rebuilds after a view
    // change, a holder is unreachable until the majority removes it) the
    // call waits, bounded by the failover window, and a stale route (the
    // owner moved) is resolved again. Only then does it answer 503.
    let deadline = Instant::now() + router.placement_wait();
    let mut backoff = Duration::from_millis(10);
    let mut moved = 0;
    loop {
        let attempt = Instant::now();
        let refusal = match router.route(&grain).await {
            Ok(Route::Local) => {
                match state
                    .carts
                    .call_with(&grain, request.clone(), options.clone())
                    .await
                {
                    // Released between routing and activation (it had just
                    // passivated): nothing ran; place it again.
                    Err(granary_grain::CallError::NotOwner(why)) => {
                        moved += 1;
                        if moved <= 3 {
                            continue;
                        }
                        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).with_code("placing")
                    }
                    other => return Ok(other?),
                }
            }
            Ok(Route::Remote { address }) => {
                match forward(router, &address, &grain, &request, &options).await {
                    Forwarded::Answer(result) => return result,
                    Forwarded::NotDone(err) => {
                        router.forget(&grain);
                        err
                    }
                    Forwarded::Moved => {
                        router.forget(&grain);
                        moved += 1;
                        if moved <= 3 {
                            continue;
                        }
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the cart is moving between members; retry",
                        )
                        .with_code("moving")
                    }
                    Forwarded::Unreachable(reason) => {
                        router.forget(&grain);
                        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason)
                            .with_code("owner_unreachable"));
                    }
                }
            }
            Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.0).with_code("placing"),
        };
        if !state.serving.load(std::sync::atomic::Ordering::Acquire)
            || Instant::now() + backoff > deadline
        {
            return Err(refusal);
        }
        // The backoff runs from the start of the attempt: a holder that
        // kept the claim waiting while it rebuilt has waited for us. The
        // wait ends early when placement may have changed here (a new
        // view, this member's partition ready).
        if let Some(left) = backoff.checked_sub(attempt.elapsed()) {
            router.placement_changed(left).await;
        }
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// Codes of 503 answers a member gives before it runs a call: the call
/// was not done and may be sent again.
pub(crate) const NOT_DONE_CODES: &[&str] = &["fenced", "placing"];

enum Forwarded {
    Answer(Result<Outcome<granary_cart::Cart>, ApiError>),
    /// The callee does not own the cart; nothing was done.
    Moved,
    /// The callee refused before running the call (it is fenced, or could
    /// not place the cart); nothing was done.
    NotDone(ApiError),
    /// No answer: the outcome is unknown, so the call is not retried.
    Unreachable(String),
}

/// Sends a call to the member that owns the cart.
async fn forward(
    router: &CartRouter,
    address: &str,
    grain: &str,
    request: &CartRequest,
    options: &CallOptions,
) -> Forwarded {
    use crate::proto::grains::{GrainCall, grain_answer};
    let mut client = match router.grains_client(address) {
        Ok(client) => client,
        Err(err) => return Forwarded::Unreachable(err.0),
    };
    let Ok(command) = serde_json::to_vec(request) else {
        return Forwarded::Answer(Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the call",
        )));
    };
    let (idempotency_key, request_hash) = options.idempotency.clone().unwrap_or_default();
    let mut call = tonic::Request::new(GrainCall {
        kind: "cart".into(),
        id: grain.to_owned(),
        command,
        expected_version: options.expected_version,
        idempotency_key,
        request_hash,
    });
    call.set_timeout(std::time::Duration::from_secs(10));
    let answer = match client.call(call).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => {
            return Forwarded::Unreachable(format!(
                "the member that owns this cart did not answer ({}); the outcome is unknown",
                status.message()
            ));
        }
    };
    match answer.result {
        Some(grain_answer::Result::Ok(outcome)) => match serde_json::from_slice(&outcome.reply) {
            Ok(cart) => Forwarded::Answer(Ok(Outcome {
                reply: cart,
                version: outcome.version,
            })),
            Err(_) => Forwarded::Answer(Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "the owner sent an unreadable cart",
            ))),
        },
        Some(grain_answer::Result::Failure(failure)) if failure.not_owner => Forwarded::Moved,
        Some(grain_answer::Result::Failure(failure))
            if failure.http_status == 503 && NOT_DONE_CODES.contains(&failure.code.as_str()) =>
        {
            Forwarded::NotDone(
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, failure.message)
                    .with_code(failure.code),
            )
        }
        Some(grain_answer::Result::Failure(failure)) => {
            let status =
                StatusCode::from_u16(failure.http_status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut err = ApiError::new(status, failure.message).with_code(failure.code);
            if !failure.field.is_empty() {
                err = err.with_field(failure.field);
            }
            err.etag = failure.current_version;
            Forwarded::Answer(Err(err))
        }
        None => Forwarded::Answer(Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the owner sent an empty answer",
        ))),
    }
}

/// Runs one command from a request with a body (or none) and answers 200.
async fn command(
    state: &ApiState,
    req: &HttpRequest,
    body: &[u8],
    id: &str,
    command: CartCommand,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid("id", id)?;
    let options = call_options(req, body)?;
    let outcome = call(state, id, CartRequest::Command(command), options).await?;
    Ok(render(StatusCode::OK, id, &outcome))
}

/// Creates a cart with a server-made id.
#[utoipa::path(post, path = "/carts", tag = "carts",
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer")),
    responses(
        (status = 201, description = "Created", body = CartBody),
        (status = 400, description = "Bad header", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody)))]
pub(crate) async fn create_cart(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let options = call_options(&req, &body)?;
    if options.expected_version.is_some() {
        return Err(ApiError::bad_request(
            "If-Match",
            "If-Match makes no sense when creating a cart",
        ));
    }
    let id = match &options.idempotency {
        Some((key, _)) => Uuid::new_v5(&CREATE_NAMESPACE, key.as_bytes()),
        None => Uuid::new_v4(),
    };
    let outcome = call(
        &state,
        id,
        CartRequest::Command(CartCommand::Create),
        options,
    )
    .await?;
    let mut response = render(StatusCode::CREATED, id, &outcome);
    if let Ok(location) = format!("/carts/{id}").parse() {
        response
            .headers_mut()
            .insert(actix_web::http::header::LOCATION, location);
    }
    Ok(response)
}

/// Reads a cart (from memory when it is live).
#[utoipa::path(get, path = "/carts/{id}", tag = "carts",
    params(("id" = Uuid, Path, description = "Cart id")),
    responses(
        (status = 200, description = "The cart", body = CartBody),
        (status = 404, description = "Never created", body = ErrorBody)))]
pub(crate) async fn get_cart(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid("id", &path)?;
    let outcome = call(&state, id, CartRequest::Get, CallOptions::default()).await?;
    Ok(render(StatusCode::OK, id, &outcome))
}

/// Adds an item; the same sku adds to its line's quantity.
#[utoipa::path(post, path = "/carts/{id}/items", tag = "carts", request_body = AddItemBody,
    params(("id" = Uuid, Path, description = "Cart id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)"),
           ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer")),
    responses(
        (status = 200, description = "The changed cart", body = CartBody),
        (status = 400, description = "Bad input; `field` names it", body = ErrorBody),
        (status = 404, description = "No such cart", body = ErrorBody),
        (status = 409, description = "Checked out, other currency, or full", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody)))]
pub(crate) async fn add_item(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let item: AddItemBody = parse_json(&body)?;
    command(
        &state,
        &req,
        &body,
        &path,
        CartCommand::AddItem(item.into()),
    )
    .await
}

/// Sets a line's quantity.
#[utoipa::path(patch, path = "/carts/{id}/items/{line_id}", tag = "carts", request_body = ChangeQuantityBody,
    params(("id" = Uuid, Path, description = "Cart id"), ("line_id" = Uuid, Path, description = "Line id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)")),
    responses(
        (status = 200, description = "The changed cart", body = CartBody),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 404, description = "No such cart or line", body = ErrorBody),
        (status = 409, description = "Checked out", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody)))]
pub(crate) async fn change_quantity(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, line_id) = path.into_inner();
    let line_id = parse_uuid("line_id", &line_id)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let change: ChangeQuantityBody = parse_json(&body)?;
    let cmd = CartCommand::ChangeQuantity {
        line_id,
        quantity: change.quantity,
    };
    command(&state, &req, &body, &id, cmd).await
}

/// Removes a line.
#[utoipa::path(delete, path = "/carts/{id}/items/{line_id}", tag = "carts",
    params(("id" = Uuid, Path, description = "Cart id"), ("line_id" = Uuid, Path, description = "Line id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)")),
    responses(
        (status = 200, description = "The changed cart", body = CartBody),
        (status = 404, description = "No such cart or line", body = ErrorBody),
        (status = 409, description = "Checked out", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody)))]
pub(crate) async fn remove_line(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, line_id) = path.into_inner();
    let line_id = parse_uuid("line_id", &line_id)?;
    command(&state, &req, b"", &id, CartCommand::RemoveLine { line_id }).await
}

/// Sets (or replaces) the delivery option.
#[utoipa::path(put, path = "/carts/{id}/delivery", tag = "carts", request_body = SetDeliveryBody,
    params(("id" = Uuid, Path, description = "Cart id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)")),
    responses(
        (status = 200, description = "The changed cart", body = CartBody),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 404, description = "No such cart", body = ErrorBody),
        (status = 409, description = "Checked out or other currency", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody)))]
pub(crate) async fn set_delivery(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let delivery: SetDeliveryBody = parse_json(&body)?;
    let cmd = CartCommand::SetDelivery {
        name: delivery.name,
        price: delivery.price,
        currency: delivery.currency,
    };
    command(&state, &req, &body, &path, cmd).await
}

/// Removes the delivery option.
#[utoipa::path(delete, path = "/carts/{id}/delivery", tag = "carts",
    params(("id" = Uuid, Path, description = "Cart id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)")),
    responses(
        (status = 200, description = "The changed cart", body = CartBody),
        (status = 404, description = "No such cart", body = ErrorBody),
        (status = 409, description = "Checked out", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody)))]
pub(crate) async fn remove_delivery(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    command(&state, &req, b"", &path, CartCommand::RemoveDelivery).await
}

/// Removes every line and the delivery.
#[utoipa::path(post, path = "/carts/{id}/clear", tag = "carts",
    params(("id" = Uuid, Path, description = "Cart id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)"),
           ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer")),
    responses(
        (status = 200, description = "The emptied cart", body = CartBody),
        (status = 404, description = "No such cart", body = ErrorBody),
        (status = 409, description = "Checked out", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody)))]
pub(crate) async fn clear(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    command(&state, &req, &body, &path, CartCommand::Clear).await
}

/// Checks the cart out; it accepts no change afterwards.
#[utoipa::path(post, path = "/carts/{id}/checkout", tag = "carts",
    params(("id" = Uuid, Path, description = "Cart id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)"),
           ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer")),
    responses(
        (status = 200, description = "The checked-out cart with its order id", body = CartBody),
        (status = 404, description = "No such cart", body = ErrorBody),
        (status = 409, description = "Already checked out, or empty", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody)))]
pub(crate) async fn checkout(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    command(&state, &req, &body, &path, CartCommand::Checkout).await
}
