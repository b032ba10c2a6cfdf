//! The cart HTTP API on actix-web (JSON).
//!
//! - `views.rs`: the JSON bodies (requests and responses) and their schemas.
//! - `request.rs`: reading a bounded body into a typed request, naming the
//!   field that was wrong; `If-Match` and `Idempotency-Key` headers.
//! - `error.rs`: every failure as a status code and `{"error", "field"}`.
//! - `carts.rs`: the handlers; each turns a request into one grain call.
//! - `openapi.rs`: the OpenAPI document, generated from the handlers and
//!   completed by rule with every limit and status.
//! - `router.rs`: the route table, matched segment by segment.
//! - `server.rs`, `refusals.rs`: the HTTP server, whose connections give
//!   actix-http's own refusals (unparsable request, head too large or too
//!   slow) the API's JSON error body.

mod admin;
mod carts;
mod error;
mod openapi;
mod refusals;
mod request;
mod router;
mod server;
mod shop;
mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{HttpResponse, web};
use granary_store::EventStore;

use crate::cart_grain::CartGrain;
use crate::grains::Grains;
pub use carts::valid_sku;
pub use error::ApiError;
pub use openapi::openapi_json;
pub use router::ApiRouter;
pub use server::{ServeLimits, listen, serve};
pub use views::CartBody;

/// The header of a cart answer that another member forwarded to the
/// cart's owner: the owner's HTTP API, `HOST:PORT` as it advertises it
/// (`advertise_http`). A client or load balancer that sends the cart's
/// next requests there saves the hop; any member still answers them.
pub const OWNER_HEADER: &str = "granary-owner";

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
    /// What the node measures (`GET /metrics`); the router observes every
    /// request into it.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What `GET /dashboard/state` shows; `None` without a cluster (an app
    /// embedding the API alone), where it answers 404.
    pub dashboard: Option<Arc<crate::dashboard::Dashboard>>,
}

/// Registers the shared state and every route of the cart service: the
/// operations routes and the cart API.
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        configure_state(state)(cfg);
        cfg.default_service(api_router(true));
    }
}

/// Registers the state the API's handlers share, for an app whose routes
/// come from [`api_router`] (installed as its default service, so routes
/// the app registers with actix-web itself are matched first).
pub fn configure_state(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state.grains.clone()))
            .app_data(web::Data::new(state));
    }
}

/// The node's routes: the operations routes (`/healthz`, `/readyz`,
/// `/stats`, `/metrics`, `/dashboard`, `/openapi.json`) and, with `carts`, the cart API, the
/// catalog and the shop front. Every other path is the JSON 404.
pub fn api_router(carts: bool) -> ApiRouter {
    use actix_web::http::Method;
    let ops = ApiRouter::new()
        .route(Method::GET, "/healthz", healthz)
        .route(Method::GET, "/readyz", readyz)
        .route(Method::GET, "/stats", stats)
        .route(Method::GET, "/metrics", metrics)
        .route(Method::GET, "/dashboard", dashboard)
        .route(Method::GET, "/dashboard/state", dashboard_state)
        .route(Method::GET, "/openapi.json", openapi);
    if !carts {
        return ops;
    }
    // The busiest routes first: the table is scanned in order.
    ops.route(Method::POST, "/carts/{id}/items", carts::add_item)
        .route(Method::GET, "/carts/{id}", carts::get_cart)
        .route(Method::POST, "/carts", carts::create_cart)
        .route(
            Method::PATCH,
            "/carts/{id}/items/{line_id}",
            carts::change_quantity,
        )
        .route(
            Method::DELETE,
            "/carts/{id}/items/{line_id}",
            carts::remove_line,
        )
        .route(Method::PUT, "/carts/{id}/delivery", carts::set_delivery)
        .route(
            Method::DELETE,
            "/carts/{id}/delivery",
            carts::remove_delivery,
        )
        .route(Method::POST, "/carts/{id}/clear", carts::clear)
        .route(Method::POST, "/carts/{id}/checkout", carts::checkout)
        .route(Method::GET, "/carts/{id}/price-check", carts::price_check)
        .route(Method::GET, "/products/{sku}", admin::get_product)
        .route(Method::PUT, "/admin/products/{sku}", admin::put_product)
        .route(Method::GET, "/admin/stock/{sku}", admin::get_stock)
        .route(Method::PUT, "/admin/stock/{sku}", admin::put_stock)
        .route(Method::GET, "/cart", shop::get)
        .route(Method::POST, "/cart/items", shop::add)
        .route(Method::PATCH, "/cart/items/{line_id}", shop::change)
        .route(Method::DELETE, "/cart/items/{line_id}", shop::remove)
        .route(Method::POST, "/cart/checkout", shop::checkout)
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

/// The node's metrics in the OpenMetrics text format, for Prometheus.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Metrics in the OpenMetrics text format", content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(state.metrics.render().await)
}

/// The live dashboard: one page, polling `/dashboard/state`.
#[utoipa::path(get, path = "/dashboard", tag = "ops", responses((status = 200, description = "The dashboard page", content_type = "text/html")))]
pub(crate) async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(crate::dashboard::PAGE)
}

/// The cluster as this member sees it, each member as it sees itself.
#[utoipa::path(get, path = "/dashboard/state", tag = "ops", responses(
    (status = 200, description = "Members, their state, grains and HTTP figures; recent cluster events", body = crate::dashboard::State),
    (status = 404, description = "This node runs no cluster", body = views::ErrorBody),
    (status = 503, description = "The node is stopping", body = views::ErrorBody)))]
pub(crate) async fn dashboard_state(state: web::Data<ApiState>) -> HttpResponse {
    use actix_web::ResponseError;
    let Some(dashboard) = &state.dashboard else {
        return ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "this node runs no cluster to show",
        )
        .error_response();
    };
    match dashboard.state().await {
        Some(state) => HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(state),
        None => ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "the node is stopping",
        )
        .error_response(),
    }
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(openapi_json())
}
