//! The cart handlers. Each one validates its input, turns it into one grain
//! call and renders the outcome; the rules live in the cart domain.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use granary_cart::CartCommand;
use granary_grain::{CallOptions, Outcome};
use uuid::Uuid;

use super::ApiState;
use super::error::ApiError;
use super::request::{call_options, etag, parse_json, parse_uuid, read_body};
use super::views::{AddItemBody, CartBody, ChangeQuantityBody, ErrorBody, SetDeliveryBody};
use crate::cart_grain::{CartGrain, CartRequest};

/// Namespace of cart ids derived from an `Idempotency-Key` on `POST /carts`,
/// so a retried create names the same cart.
const CREATE_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_2f0e_8d4b_4e59_9a3c_5b7d_2e1f_0c84);

/// A cart's answer, and the HTTP address of the member that owns the
/// cart if another one ran the call (`Granary-Owner`).
pub(crate) type Answered = (Outcome<std::sync::Arc<granary_cart::Cart>>, Option<String>);

/// A cart answer: the body, its version as `ETag`, never cached; the
/// cart's owner if another member answered.
pub(crate) fn render(status: StatusCode, id: Uuid, (outcome, owner): &Answered) -> HttpResponse {
    use actix_web::http::header::{self, HeaderValue};
    let json = CartBody::new(id, outcome.version, &outcome.reply).to_json();
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::ETAG, etag(outcome.version)))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    // Members take only visible-ASCII addresses (config and wire alike),
    // so this always converts; were one not a header value, it would be
    // left out: it is only a hint.
    if let Some(owner) = owner
        .as_deref()
        .and_then(|owner| HeaderValue::from_str(owner).ok())
    {
        response.insert_header((super::OWNER_HEADER, owner));
    }
    response.body(json)
}

pub(crate) async fn call(
    state: &ApiState,
    id: Uuid,
    request: CartRequest,
    options: CallOptions,
) -> Result<Answered, ApiError> {
    // Placement, forwarding and waiting for a placement live in the
    // cluster layer: the handler only translates.
    let (outcome, owner) = state
        .grains
        .call_naming_owner::<CartGrain>(&id.to_string(), request, options)
        .await;
    Ok((outcome?, owner))
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
    let body = read_body(&req, payload, &state).await?;
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
    read_cart(&state, &path, CartRequest::Get).await
}

/// Sends `request` (one that changes nothing) to the cart `path` names:
/// 200 with the cart.
async fn read_cart(
    state: &ApiState,
    path: &str,
    request: CartRequest,
) -> Result<HttpResponse, ApiError> {
    let id = parse_uuid("id", path)?;
    let outcome = call(state, id, request, CallOptions::default()).await?;
    Ok(render(StatusCode::OK, id, &outcome))
}

/// Reads a cart after asking the catalog whether every line's price still
/// holds: 200 with the cart if so, 409 `price_changed` naming the lines if
/// not. Changes nothing (a shop front asks before showing the checkout).
#[utoipa::path(get, path = "/carts/{id}/price-check", tag = "carts",
    params(("id" = Uuid, Path, description = "Cart id")),
    responses(
        (status = 200, description = "Every price holds; the cart", body = CartBody),
        (status = 404, description = "Never created", body = ErrorBody),
        (status = 409, description = "Prices changed (`lines`)", body = ErrorBody),
        (status = 503, description = "The catalog did not answer", body = ErrorBody)))]
pub(crate) async fn price_check(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    read_cart(&state, &path, CartRequest::CheckPrices).await
}

/// Adds a product at the catalog's price; the same sku adds to its line's
/// quantity.
#[utoipa::path(post, path = "/carts/{id}/items", tag = "carts", request_body = AddItemBody,
    params(("id" = Uuid, Path, description = "Cart id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)"),
           ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer")),
    responses(
        (status = 200, description = "The changed cart", body = CartBody),
        (status = 400, description = "Bad input; `field` names it", body = ErrorBody),
        (status = 404, description = "No such cart, or no product with this sku", body = ErrorBody),
        (status = 409, description = "Checked out, other currency, full, or the sku's price changed since it was added (`lines`)", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the deadline", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody)))]
pub(crate) async fn add_item(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, &state).await?;
    let id = parse_uuid("id", &path)?;
    let request = add_sku_request(&body)?;
    let options = call_options(&req, &body)?;
    let outcome = call(&state, id, request, options).await?;
    Ok(render(StatusCode::OK, id, &outcome))
}

/// The cart request of an `AddItemBody`, checked before any call.
pub(crate) fn add_sku_request(body: &[u8]) -> Result<CartRequest, ApiError> {
    let item: AddItemBody = parse_json(body)?;
    check_sku(&item.sku)?;
    if !(1..=granary_cart::limits::MAX_QUANTITY).contains(&item.quantity) {
        return Err(ApiError::bad_request(
            "quantity",
            format!(
                "must be between 1 and {}, got {}",
                granary_cart::limits::MAX_QUANTITY,
                item.quantity
            ),
        ));
    }
    Ok(CartRequest::AddSku {
        sku: item.sku,
        quantity: item.quantity,
    })
}

/// Whether `sku` is one the shop takes: 1..=64 characters, none a control
/// character or a space.
pub fn valid_sku(sku: &str) -> bool {
    let chars = sku.chars().count();
    chars > 0
        && chars <= granary_cart::limits::MAX_SKU_CHARS
        && !sku.chars().any(|c| c.is_control() || c.is_whitespace())
}

pub(crate) fn check_sku(sku: &str) -> Result<(), ApiError> {
    if !valid_sku(sku) {
        return Err(ApiError::bad_request(
            "sku",
            format!(
                "1..={} characters, none a control character or a space",
                granary_cart::limits::MAX_SKU_CHARS
            ),
        ));
    }
    Ok(())
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
    let body = read_body(&req, payload, &state).await?;
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
    let body = read_body(&req, payload, &state).await?;
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
    let body = read_body(&req, payload, &state).await?;
    command(&state, &req, &body, &path, CartCommand::Clear).await
}

/// Checks the cart out: every line's price is checked against the
/// catalog and its units reserved at its stock; only if all hold is the
/// cart checked out (and the units sold). It accepts no change afterwards.
#[utoipa::path(post, path = "/carts/{id}/checkout", tag = "carts",
    params(("id" = Uuid, Path, description = "Cart id"),
           ("If-Match" = Option<String>, Header, description = "Required cart version (ETag)"),
           ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer")),
    responses(
        (status = 200, description = "The checked-out cart with its order id", body = CartBody),
        (status = 404, description = "No such cart", body = ErrorBody),
        (status = 409, description = "Already checked out, empty, a price changed (`lines`), or out of stock (`lines`)", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
        (status = 503, description = "The catalog or the stock did not answer: nothing was sold", body = ErrorBody)))]
pub(crate) async fn checkout(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, &state).await?;
    command(&state, &req, &body, &path, CartCommand::Checkout).await
}
