//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::views::{
    AddItemBody, CartBody, ChangeQuantityBody, DeliveryBody, ErrorBody, LineBody, ProductBody,
    ProductView, SetDeliveryBody, StockBody, StockView, TotalsBody,
};
use super::{admin, carts, shop};

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
        carts::price_check,
        super::healthz,
        super::readyz,
        super::stats,
        admin::get_product,
        admin::put_product,
        admin::put_stock,
        admin::get_stock,
        shop::get,
        shop::add,
        shop::change,
        shop::remove,
        shop::checkout,
    ),
    components(schemas(
        CartBody,
        LineBody,
        DeliveryBody,
        TotalsBody,
        AddItemBody,
        ChangeQuantityBody,
        SetDeliveryBody,
        ErrorBody,
        ProductBody,
        ProductView,
        StockBody,
        StockView
    )),
    modifiers(&AdminToken)
)]
struct ApiDoc;

/// The admin routes' `Authorization: Bearer <admin_token>`.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}"))
}
