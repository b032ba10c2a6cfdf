//! The shop front's cart, for browsers: the cart is the one the `cartid`
//! cookie names (HttpOnly, SameSite=Lax, Secure when configured), as the
//! seed's shop front keeps it. `GET /cart`, `POST /cart/items`
//! (`{"sku","quantity"}`, at the catalog's price), `PATCH`/`DELETE
//! /cart/items/{line_id}`, `POST /cart/checkout`.
//!
//! Every `POST` and `PATCH` needs `Content-Type: application/json`: a
//! cross-site HTML form cannot send that, and a script on another site
//! must pass a CORS preflight this server never grants, so no other site
//! can change a shopper's cart with their cookie.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use granary_cart::CartCommand;
use granary_grain::CallOptions;
use uuid::Uuid;

use super::ApiState;
use super::carts::{add_sku_request, render};
use super::error::ApiError;
use super::request::{call_options, parse_json, parse_uuid, read_body, require_json};
use super::views::{ChangeQuantityBody, ErrorBody};
use crate::cart_grain::CartRequest;

/// The cookie naming the shopper's cart.
pub const CART_COOKIE: &str = "cartid";
/// How long the browser keeps it: 30 days.
const COOKIE_DAYS: i64 = 30;

/// The cart the cookie names, if it names one.
fn cart_of(req: &HttpRequest) -> Option<Uuid> {
    req.cookie(CART_COOKIE)
        .and_then(|c| Uuid::parse_str(c.value()).ok())
}

/// The cart the cookie names, or 404 `no_cart`.
fn cookie_cart(req: &HttpRequest) -> Result<Uuid, ApiError> {
    cart_of(req)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no cart yet").with_code("no_cart"))
}

fn with_cookie(state: &ApiState, mut response: HttpResponse, cart: Uuid) -> HttpResponse {
    let cookie = Cookie::build(CART_COOKIE, cart.to_string())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.secure_cookies)
        .max_age(actix_web::cookie::time::Duration::days(COOKIE_DAYS))
        .finish();
    let _ = response.add_cookie(&cookie);
    response
}

async fn call(
    state: &ApiState,
    cart: Uuid,
    request: CartRequest,
    options: CallOptions,
) -> Result<HttpResponse, ApiError> {
    let answered = super::carts::call(state, cart, request, options).await?;
    Ok(render(StatusCode::OK, cart, &answered))
}

/// The shopper's cart.
#[utoipa::path(get, path = "/cart", tag = "shop", operation_id = "shop_get",
    responses(
        (status = 200, description = "The cart the cookie names", body = super::views::CartBody),
        (status = 404, description = "No cart yet (no cookie, or its cart is gone)", body = ErrorBody)))]
pub(crate) async fn get(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let cart = cookie_cart(&req)?;
    call(&state, cart, CartRequest::Get, CallOptions::default()).await
}

/// Adds a product at the catalog's price; the first add makes the cart and
/// sets the cookie.
#[utoipa::path(post, path = "/cart/items", tag = "shop", operation_id = "shop_add", request_body = super::views::AddItemBody,
    responses(
        (status = 200, description = "The cart (and, if new, its cookie)", body = super::views::CartBody),
        (status = 400, description = "Bad input; `field` names it", body = ErrorBody),
        (status = 404, description = "No product has this sku", body = ErrorBody),
        (status = 409, description = "Checked out, full, or the price changed (`lines`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the deadline", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody)))]
pub(crate) async fn add(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let body = read_body(&req, payload, &state).await?;
    let request = add_sku_request(&body)?;
    let (cart, new) = match cart_of(&req) {
        Some(cart) => (cart, false),
        None => (Uuid::new_v4(), true),
    };
    if new {
        call(
            &state,
            cart,
            CartRequest::Command(CartCommand::Create),
            CallOptions::default(),
        )
        .await?;
    }
    let response = call(&state, cart, request, call_options(&req, &body)?).await?;
    Ok(if new {
        with_cookie(&state, response, cart)
    } else {
        response
    })
}

/// Sets a line's quantity.
#[utoipa::path(patch, path = "/cart/items/{line_id}", tag = "shop", operation_id = "shop_change", request_body = ChangeQuantityBody,
    params(("line_id" = Uuid, Path, description = "Line id")),
    responses(
        (status = 200, description = "The cart", body = super::views::CartBody),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 404, description = "No cart, or no such line", body = ErrorBody),
        (status = 409, description = "Checked out", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody)))]
pub(crate) async fn change(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let cart = cookie_cart(&req)?;
    let line_id = parse_uuid("line_id", &path)?;
    let body = read_body(&req, payload, &state).await?;
    let change: ChangeQuantityBody = parse_json(&body)?;
    let command = CartCommand::ChangeQuantity {
        line_id,
        quantity: change.quantity,
    };
    call(
        &state,
        cart,
        CartRequest::Command(command),
        call_options(&req, &body)?,
    )
    .await
}

/// Removes a line.
#[utoipa::path(delete, path = "/cart/items/{line_id}", tag = "shop", operation_id = "shop_remove",
    params(("line_id" = Uuid, Path, description = "Line id")),
    responses(
        (status = 200, description = "The cart", body = super::views::CartBody),
        (status = 404, description = "No cart, or no such line", body = ErrorBody),
        (status = 409, description = "Checked out", body = ErrorBody)))]
pub(crate) async fn remove(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let cart = cookie_cart(&req)?;
    let line_id = parse_uuid("line_id", &path)?;
    let command = CartCommand::RemoveLine { line_id };
    call(
        &state,
        cart,
        CartRequest::Command(command),
        CallOptions::default(),
    )
    .await
}

/// Checks the shopper's cart out (prices re-checked, stock reserved).
#[utoipa::path(post, path = "/cart/checkout", tag = "shop", operation_id = "shop_checkout",
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer")),
    responses(
        (status = 200, description = "The checked-out cart with its order id", body = super::views::CartBody),
        (status = 404, description = "No cart", body = ErrorBody),
        (status = 409, description = "Empty, checked out, a price changed or out of stock (`lines`)", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 503, description = "The catalog or the stock did not answer: nothing was sold", body = ErrorBody)))]
pub(crate) async fn checkout(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let cart = cookie_cart(&req)?;
    let body = read_body(&req, payload, &state).await?;
    if !body.is_empty() {
        // `{}` or nothing: a checkout takes no input.
        parse_json::<super::views::NoInput>(&body)?;
    }
    let command = CartRequest::Command(CartCommand::Checkout);
    call(&state, cart, command, call_options(&req, &body)?).await
}
