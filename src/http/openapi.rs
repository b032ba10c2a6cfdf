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
        super::metrics,
        super::dashboard,
        super::dashboard_state,
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

/// The OpenAPI document as JSON (made once: it never changes while the
/// process runs).
pub fn openapi_json() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
            Ok(doc) => doc,
            Err(e) => {
                return format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}");
            }
        };
        contract::complete(&mut doc);
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    })
}

/// What the handlers' annotations leave out, added to the document by
/// rule so that it states every limit the server enforces and every status
/// an operation can answer, from the same constants and the same
/// structure the handlers have (a path segment parsed, a body read, a
/// precondition header, a grain called, the admin token checked). An API
/// fuzzer driven by the document finds no request the document calls
/// valid that the server refuses, and none it calls invalid that the
/// server takes (`tests/api_contract.rs`).
mod contract {
    use granary_cart::limits::{
        MAX_NAME_CHARS, MAX_PRICE, MAX_QUANTITY, MAX_SKU_CHARS, MAX_TAX_RATE_BP,
    };
    use serde_json::{Value, json};

    use crate::http::request::MAX_IDEMPOTENCY_KEY;
    use crate::http::shop::CART_COOKIE;

    /// Characters Rust's `char::is_control` or `char::is_whitespace` is
    /// true of, as a regular-expression class body (ECMA 262 and Python
    /// read it alike).
    const CONTROL_OR_SPACE: &str =
        r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
    /// Characters `char::is_control` is true of.
    const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";

    /// A sku: 1..=64 characters, none a control character or a space.
    fn sku() -> Value {
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_SKU_CHARS,
            "pattern": format!("^[^{CONTROL_OR_SPACE}]+$"),
        })
    }

    /// A name: 1..=200 characters, not all spaces, no control character.
    fn name() -> Value {
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_NAME_CHARS,
            "pattern": format!("^[^{CONTROL}]*[^{CONTROL_OR_SPACE}][^{CONTROL}]*$"),
        })
    }

    fn currency() -> Value {
        json!({"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217, e.g. `EUR`"})
    }

    fn quantity() -> Value {
        json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_QUANTITY})
    }

    fn price() -> Value {
        json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_PRICE})
    }

    fn on_hand(nullable: bool) -> Value {
        let kind = if nullable {
            json!(["integer", "null"])
        } else {
            json!("integer")
        };
        json!({"type": kind, "format": "int64", "minimum": 0, "maximum": granary_cart::MAX_ON_HAND})
    }

    pub(super) fn complete(doc: &mut Value) {
        let tax_rate = json!({
            "type": ["integer", "null"], "format": "int32", "minimum": 0, "maximum": MAX_TAX_RATE_BP,
            "description": "Basis points (2000 = 20 %)",
        });
        let properties: [(&str, &str, Value); 12] = [
            ("AddItemBody", "sku", sku()),
            ("AddItemBody", "quantity", quantity()),
            ("ChangeQuantityBody", "quantity", quantity()),
            ("ProductBody", "name", name()),
            ("ProductBody", "unit_price", price()),
            ("ProductBody", "currency", currency()),
            ("ProductBody", "tax_rate_bp", tax_rate),
            ("ProductBody", "stock", on_hand(true)),
            ("SetDeliveryBody", "name", name()),
            ("SetDeliveryBody", "price", price()),
            ("SetDeliveryBody", "currency", currency()),
            ("StockBody", "on_hand", on_hand(false)),
        ];
        for (schema, property, value) in properties {
            let pointer = format!("/components/schemas/{schema}/properties/{property}");
            if let Some(slot) = doc.pointer_mut(&pointer) {
                merge(slot, value);
            }
        }
        for schema in [
            "AddItemBody",
            "ChangeQuantityBody",
            "ProductBody",
            "SetDeliveryBody",
            "StockBody",
        ] {
            if let Some(slot) = doc.pointer_mut(&format!("/components/schemas/{schema}")) {
                slot["additionalProperties"] = json!(false);
            }
        }
        link(doc);
        let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
            return;
        };
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                complete_operation(path, method, operation);
            }
        }
    }

    fn complete_operation(path: &str, method: &str, operation: &mut Value) {
        let ops = matches!(
            path,
            "/healthz"
                | "/readyz"
                | "/stats"
                | "/metrics"
                | "/dashboard"
                | "/dashboard/state"
                | "/openapi.json"
        );
        let shop = path == "/cart" || path.starts_with("/cart/");
        let writes = matches!(method, "post" | "put" | "patch");
        if shop {
            let parameters = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut);
            let cookie = json!({
                "name": CART_COOKIE, "in": "cookie", "required": false,
                "description": "The shopper's cart, as the first `POST /cart/items` set it; a value that names no cart is no cart",
                "schema": {"type": "string"},
            });
            match parameters {
                Some(parameters) => parameters.push(cookie),
                None => operation["parameters"] = json!([cookie]),
            }
        }
        if shop && writes && operation.get("requestBody").is_none() {
            // The shop front's changes need `Content-Type: application/json`
            // (no cross-site form can send it): a body `{}` at least.
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": false,
                }}},
            });
        }
        let (mut if_match, mut idempotency_key, mut path_parameters) = (false, false, false);
        if let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        {
            for parameter in parameters {
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                match (parameter["in"].as_str(), name.as_str()) {
                    (Some("header"), "If-Match") => {
                        parameter["schema"] = json!({
                            "type": "string",
                            "pattern": "^(|\\*|\"[0-9]{1,19}\")$",
                            "description": "An ETag this API sent (`\"3\"`); `*` or empty: no precondition",
                        });
                        if_match = true;
                    }
                    (Some("header"), "Idempotency-Key") => {
                        parameter["schema"] = json!({
                            "type": "string",
                            "maxLength": MAX_IDEMPOTENCY_KEY,
                            "pattern": "^[!-~]*$",
                            "description": "Visible ASCII; a retry with the same key gets the first answer. Empty: no key",
                        });
                        idempotency_key = true;
                    }
                    (Some("path"), "sku") => {
                        parameter["schema"] = sku();
                        path_parameters = true;
                    }
                    (Some("path"), _) => path_parameters = true,
                    _ => {}
                }
            }
        }
        let admin = operation.get("security").is_some();
        let mut add = |status: u16, description: &str| {
            let responses = &mut operation["responses"];
            let key = status.to_string();
            if responses.get(&key).is_none() {
                responses[key] = json!({
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                });
            }
        };
        if path_parameters {
            add(400, "A path segment is malformed (`field` names it)");
        }
        if writes {
            add(400, "Bad input; `field` names it");
            add(
                408,
                "The body did not arrive within the deadline (`body_timeout`)",
            );
            add(413, "The body is larger than the node takes");
            add(415, "A body that is not `application/json`");
        }
        if if_match {
            add(400, "Malformed `If-Match`");
            add(
                412,
                "`If-Match` names another version (`ETag` has the current one)",
            );
        }
        if idempotency_key {
            add(400, "Malformed `Idempotency-Key`");
            add(
                422,
                "`Idempotency-Key` already used for a different request",
            );
        }
        if admin {
            add(401, "No or a wrong admin token");
            add(403, "The admin API is off");
        }
        if !ops {
            add(
                503,
                "Unavailable now (store, placement, or this node fenced): retry after `Retry-After`",
            );
        }
        if path.starts_with("/carts") || shop {
            cart_headers(operation);
        }
    }

    /// The headers of a cart answer: its version, and the cart's owner
    /// when another member forwarded the request.
    fn cart_headers(operation: &mut Value) {
        for status in ["200", "201"] {
            let Some(response) = operation["responses"].get_mut(status) else {
                continue;
            };
            response["headers"] = json!({
                "ETag": {
                    "description": "The cart's version (`\"3\"`), for `If-Match`",
                    "schema": {"type": "string"},
                },
                "Granary-Owner": {
                    "description": "Sent when the member that answered forwarded the request to the cart's owner: the owner's HTTP API as `HOST:PORT`. The cart's next requests sent there save a hop; any member still answers them",
                    "schema": {"type": "string"},
                },
            });
        }
    }

    /// An operation's (path, method, status) answer and the operations its
    /// links lead to, each with the link's parameters.
    type Links<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a Value)>);

    /// Links from the operations that make a cart or a line to those that
    /// use it (the cart's id, its first line's id), for clients and for
    /// the fuzzer's stateful phase.
    fn link(doc: &mut Value) {
        let cart = json!({"id": "$response.body#/id"});
        let line =
            json!({"id": "$response.body#/id", "line_id": "$response.body#/lines/0/line_id"});
        let shop_cart = json!({"cookie.cartid": "$response.body#/id"});
        let shop_line = json!({
            "cookie.cartid": "$response.body#/id",
            "line_id": "$response.body#/lines/0/line_id",
        });
        let on_cart = [
            "get_cart",
            "add_item",
            "set_delivery",
            "remove_delivery",
            "clear",
            "checkout",
            "price_check",
        ];
        let links: [Links; 3] = [
            (
                "/carts",
                "post",
                "201",
                on_cart.iter().map(|op| (*op, &cart)).collect(),
            ),
            (
                "/carts/{id}/items",
                "post",
                "200",
                vec![("change_quantity", &line), ("remove_line", &line)],
            ),
            (
                "/cart/items",
                "post",
                "200",
                vec![
                    ("shop_change", &shop_line),
                    ("shop_remove", &shop_line),
                    ("shop_get", &shop_cart),
                    ("shop_checkout", &shop_cart),
                ],
            ),
        ];
        for (path, method, status, targets) in links {
            let pointer = format!(
                "/paths/{}/{method}/responses/{status}",
                path.replace('/', "~1")
            );
            let Some(response) = doc.pointer_mut(&pointer) else {
                continue;
            };
            for (operation, parameters) in targets {
                response["links"][operation] = json!({
                    "operationId": operation,
                    "parameters": parameters,
                });
            }
        }
    }

    /// Sets `value`'s keys on `slot` (an object), keeping the others (a
    /// description, say).
    fn merge(slot: &mut Value, value: Value) {
        if let (Some(slot), Value::Object(value)) = (slot.as_object_mut(), value) {
            for (key, value) in value {
                slot.insert(key, value);
            }
        }
    }
}
