//! The cart HTTP API on actix-web (JSON).
//!
//! - `views.rs`: the JSON bodies (requests and responses) and their schemas.
//! - `request.rs`: reading a bounded body into a typed request, naming the
//!   field that was wrong; `If-Match` and `Idempotency-Key` headers.
//! - `error.rs`: every failure as a status code and `{"error", "field"}`.
//! - `carts.rs`: the handlers; each turns a request into one grain call.
//! - `openapi.rs`: the OpenAPI document, generated from the handlers and
//!   completed by rule with every limit and status.
//! - `server.rs`, `refusals.rs`: the HTTP server, whose connections give
//!   actix-http's own refusals (unparsable request, head too large or too
//!   slow) the API's JSON error body.

mod admin;
mod carts;
mod error;
mod openapi;
mod refusals;
mod request;
mod server;
mod shop;
mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{HttpResponse, ResponseError, web};
use granary_store::EventStore;

use crate::cart_grain::CartGrain;
use crate::grains::Grains;
pub use carts::valid_sku;
pub use error::ApiError;
pub use openapi::openapi_json;
pub use server::{ServeLimits, listen, serve};
pub use views::CartBody;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The grain kinds this node hosts (carts among them for the cart
    /// API), and the way to call any grain wherever it lives.
    pub grains: Grains,
    /// The event store, for its counters.
    pub store: Arc<dyn EventStore>,
    pub max_body_bytes: usize,
    /// A body must arrive within this (408 otherwise).
    pub body_read_timeout: std::time::Duration,
    /// Cleared when the node starts shutting down.
    pub ready: Arc<AtomicBool>,
    /// Whether this node may serve grains: cleared while it cannot see a
    /// majority of the cluster (it has fenced itself).
    pub serving: Arc<AtomicBool>,
    /// The admin API's bearer token; `None` turns the admin API off.
    pub admin_token: Option<String>,
    /// The shop front's `cartid` cookie is `Secure` (HTTPS only).
    pub secure_cookies: bool,
}

/// Registers every route of the cart service: the operations routes and
/// the cart API.
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let ops = configure_ops(state.clone());
        ops(cfg);
        carts_routes(cfg);
        cfg.default_service(web::to(not_found));
    }
}

/// Registers the operations routes (`/healthz`, `/readyz`, `/stats`,
/// `/openapi.json`) and the shared state, for a node that may host no
/// carts; its own routes are added next to them.
pub fn configure_ops(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state.grains.clone()))
            .app_data(web::Data::new(state))
            .service(resource("/healthz", "GET").route(get_or_head().to(healthz)))
            .service(resource("/readyz", "GET").route(get_or_head().to(readyz)))
            .service(resource("/stats", "GET").route(get_or_head().to(stats)))
            .service(resource("/openapi.json", "GET").route(get_or_head().to(openapi)));
    }
}

/// The cart API's routes (they need [`configure_ops`]'s state).
pub fn carts_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/carts", "POST").route(web::post().to(carts::create_cart)))
        .service(resource("/carts/{id}", "GET").route(get_or_head().to(carts::get_cart)))
        .service(resource("/carts/{id}/items", "POST").route(web::post().to(carts::add_item)))
        .service(
            resource("/carts/{id}/items/{line_id}", "PATCH, DELETE")
                .route(web::patch().to(carts::change_quantity))
                .route(web::delete().to(carts::remove_line)),
        )
        .service(
            resource("/carts/{id}/delivery", "PUT, DELETE")
                .route(web::put().to(carts::set_delivery))
                .route(web::delete().to(carts::remove_delivery)),
        )
        .service(resource("/carts/{id}/clear", "POST").route(web::post().to(carts::clear)))
        .service(resource("/carts/{id}/checkout", "POST").route(web::post().to(carts::checkout)))
        .service(
            resource("/carts/{id}/price-check", "GET").route(get_or_head().to(carts::price_check)),
        )
        .service(resource("/products/{sku}", "GET").route(get_or_head().to(admin::get_product)))
        .service(resource("/admin/products/{sku}", "PUT").route(web::put().to(admin::put_product)))
        .service(
            resource("/admin/stock/{sku}", "GET, PUT")
                .route(get_or_head().to(admin::get_stock))
                .route(web::put().to(admin::put_stock)),
        )
        .service(resource("/cart", "GET").route(get_or_head().to(shop::get)))
        .service(resource("/cart/items", "POST").route(web::post().to(shop::add)))
        .service(
            resource("/cart/items/{line_id}", "PATCH, DELETE")
                .route(web::patch().to(shop::change))
                .route(web::delete().to(shop::remove)),
        )
        .service(resource("/cart/checkout", "POST").route(web::post().to(shop::checkout)));
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is alive")))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the node takes requests (not starting, not stopping, not fenced).
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Starting, stopping, or fenced")))]
pub(crate) async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    // Not ready while starting, stopping, or fenced (no majority in sight):
    // a load balancer's health check then sends traffic elsewhere.
    if state.ready.load(Ordering::Acquire) && state.serving.load(Ordering::Acquire) {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(serde_json::json!({"status": "not ready"}))
    }
}

/// The grain runtime's and the store's counters.
#[utoipa::path(get, path = "/stats", tag = "ops", responses((status = 200, description = "Counters")))]
pub(crate) async fn stats(state: web::Data<ApiState>) -> HttpResponse {
    let store = state.store.stats();
    let kinds: serde_json::Map<String, serde_json::Value> = state
        .grains
        .stats()
        .into_iter()
        .map(|(kind, stats)| (kind.to_owned(), serde_json::json!(stats)))
        .collect();
    let carts = state
        .grains
        .runtime::<CartGrain>()
        .map(|carts| serde_json::json!(carts.stats()));
    HttpResponse::Ok().json(serde_json::json!({
        "grains": carts,
        "kinds": kinds,
        "store": {
            "appends": store.appends,
            "commits": store.commits,
            "conflicts": store.conflicts,
            "loads": store.loads,
        },
    }))
}

/// A route for `GET` that answers `HEAD` too (the same status and
/// headers; actix-web sends no body for a `HEAD`).
fn get_or_head() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// A resource that answers `OPTIONS` with 204 and the `Allow` header, and
/// any other method it does not take with the API's JSON 405 and the same
/// header. `allow` names the methods its routes take (`HEAD` is added
/// where `GET` is).
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    let head = if allow.contains("GET") { ", HEAD" } else { "" };
    let allow = format!("{allow}{head}, OPTIONS");
    web::resource(path).default_service(web::to(move |req: actix_web::HttpRequest| {
        let allow = allow.clone();
        async move {
            let mut response = if req.method() == actix_web::http::Method::OPTIONS {
                HttpResponse::NoContent().finish()
            } else {
                ApiError::new(
                    actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
                    format!("method not allowed on this route; allowed: {allow}"),
                )
                .with_code("method_not_allowed")
                .error_response()
            };
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow) {
                response
                    .headers_mut()
                    .insert(actix_web::http::header::ALLOW, value);
            }
            response
        }
    }))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(openapi_json())
}

/// The JSON 404 of every route nobody registered.
pub(crate) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "no such route",
    ))
}
