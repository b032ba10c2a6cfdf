//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::OpenApi;

use super::carts;
use super::views::{
    AddItemBody, CartBody, ChangeQuantityBody, DeliveryBody, ErrorBody, LineBody, SetDeliveryBody,
    TotalsBody,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Granary cart API",
        description = "Durable shopping carts hosted as grains."
    ),
    paths(
        carts::create_cart,
        carts::get_cart,
        carts::add_item,
        carts::change_quantity,
        carts::remove_line,
        carts::set_delivery,
        carts::remove_delivery,
        carts::clear,
        carts::checkout,
        super::healthz,
        super::readyz,
        super::stats,
    ),
    components(schemas(
        CartBody,
        LineBody,
        DeliveryBody,
        TotalsBody,
        AddItemBody,
        ChangeQuantityBody,
        SetDeliveryBody,
        ErrorBody
    ))
)]
struct ApiDoc;

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}"))
}
