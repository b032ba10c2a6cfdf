//! The catalog and the stock, as the shop runs them: `PUT
//! /admin/products/{sku}` (a product, and optionally its units on hand),
//! `PUT`/`GET /admin/stock/{sku}`, and the public `GET /products/{sku}`.
//!
//! Admin routes need `Authorization: Bearer <admin_token>`; without an
//! `admin_token` configured they answer 403 (they are off).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use granary_cart::{ProductCommand, ProductSpec, StockCommand};
use granary_grain::CallOptions;

use super::ApiState;
use super::carts::check_sku;
use super::error::ApiError;
use super::request::{parse_json, read_body};
use super::views::{ErrorBody, ProductBody, ProductView, StockBody, StockView};
use crate::shop::{ProductGrain, StockGrain};

/// Whether the request carries the admin token.
fn authorize(state: &ApiState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the admin API is off: set admin_token (GRANARY_ADMIN_TOKEN) to turn it on",
        )
        .with_code("admin_off"));
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared in constant time: the token is a secret.
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Authorization: Bearer <admin_token> is required",
        )
        .with_field("Authorization")
        .with_code("unauthorized"))
    }
}

/// Sets a product (and its stock, when given).
#[utoipa::path(put, path = "/admin/products/{sku}", tag = "admin", request_body = ProductBody,
    params(("sku" = String, Path, description = "1..=64 characters")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The product as the catalog has it", body = ProductView),
        (status = 400, description = "Bad input; `field` names it", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 403, description = "The admin API is off", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the deadline", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "Unavailable; retry", body = ErrorBody)))]
pub(crate) async fn put_product(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let body = read_body(&req, payload, &state).await?;
    let sku = path.into_inner();
    check_sku(&sku)?;
    let product: ProductBody = parse_json(&body)?;
    let stock = product.stock;
    let spec = ProductSpec {
        sku: sku.clone(),
        name: product.name,
        unit_price: product.unit_price,
        currency: product.currency,
        tax_rate_bp: product.tax_rate_bp,
    };
    // Checked before anything changes, so a bad field sets nothing.
    spec.validate()?;
    set_product(&state, spec.clone(), stock).await?;
    Ok(HttpResponse::Ok().json(ProductView::from(spec)))
}

/// Sets a product and (when given) its units on hand: what both the admin
/// route and `granary catalog import` do.
pub(crate) async fn set_product(
    state: &ApiState,
    spec: ProductSpec,
    stock: Option<u64>,
) -> Result<(), ApiError> {
    let sku = spec.sku.clone();
    state
        .grains
        .call::<ProductGrain>(&sku, ProductCommand::Set(spec))
        .await?;
    if let Some(quantity) = stock {
        state
            .grains
            .call::<StockGrain>(&sku, StockCommand::SetOnHand { quantity })
            .await?;
    }
    Ok(())
}

/// A product, as the catalog has it.
#[utoipa::path(get, path = "/products/{sku}", tag = "shop",
    params(("sku" = String, Path, description = "1..=64 characters")),
    responses(
        (status = 200, description = "The product", body = ProductView),
        (status = 400, description = "Not a sku", body = ErrorBody),
        (status = 404, description = "No product has this sku", body = ErrorBody),
        (status = 503, description = "Unavailable; retry", body = ErrorBody)))]
pub(crate) async fn get_product(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sku = path.into_inner();
    check_sku(&sku)?;
    let outcome = state
        .grains
        .call::<ProductGrain>(&sku, ProductCommand::Get)
        .await?;
    match outcome.reply {
        Some(spec) => Ok(HttpResponse::Ok().json(ProductView::from(spec))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no product has this sku",
        )),
    }
}

/// Sets a sku's units on hand.
#[utoipa::path(put, path = "/admin/stock/{sku}", tag = "admin", request_body = StockBody,
    params(("sku" = String, Path, description = "1..=64 characters")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The stock", body = StockView),
        (status = 400, description = "Bad input; `field` names it", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 403, description = "The admin API is off", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "Unavailable; retry", body = ErrorBody)))]
pub(crate) async fn put_stock(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let body = read_body(&req, payload, &state).await?;
    let sku = path.into_inner();
    check_sku(&sku)?;
    let stock: StockBody = parse_json(&body)?;
    stock_call(
        &state,
        sku,
        StockCommand::SetOnHand {
            quantity: stock.on_hand,
        },
    )
    .await
}

/// A sku's stock: on hand, held by checkouts, available.
#[utoipa::path(get, path = "/admin/stock/{sku}", tag = "admin",
    params(("sku" = String, Path, description = "1..=64 characters")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The stock", body = StockView),
        (status = 400, description = "Not a sku", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 403, description = "The admin API is off", body = ErrorBody),
        (status = 503, description = "Unavailable; retry", body = ErrorBody)))]
pub(crate) async fn get_stock(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let sku = path.into_inner();
    check_sku(&sku)?;
    stock_call(&state, sku, StockCommand::Get).await
}

async fn stock_call(
    state: &ApiState,
    sku: String,
    command: StockCommand,
) -> Result<HttpResponse, ApiError> {
    let level = state
        .grains
        .call_with::<StockGrain>(&sku, command, CallOptions::default())
        .await?
        .reply;
    Ok(HttpResponse::Ok().json(StockView {
        sku,
        on_hand: level.on_hand,
        reserved: level.reserved,
        available: level.available,
    }))
}
