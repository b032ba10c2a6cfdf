//! Every API failure is a status code and a JSON body
//! `{"error": "...", "field": "..." | null, "code": "..."}`.

use std::borrow::Cow;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use granary_cart::CartError;
use granary_grain::CallError;
use granary_store::StoreError;

/// An error answer of the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    pub code: Cow<'static, str>,
    /// The cart's current version, sent as `ETag` (on 412).
    pub etag: Option<u64>,
    /// The cart lines at fault (a changed price, no stock).
    pub lines: Vec<uuid::Uuid>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "invalid",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "error",
        };
        ApiError {
            status,
            message: message.into(),
            field: None,
            code: Cow::Borrowed(code),
            etag: None,
            lines: Vec::new(),
        }
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message).with_field(field)
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = code.into();
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header(("Retry-After", "1"));
        }
        if let Some(version) = self.etag {
            response.insert_header(("ETag", super::request::etag(version)));
        }
        let mut body = serde_json::json!({
            "error": self.message,
            "field": self.field,
            "code": self.code,
        });
        if !self.lines.is_empty() {
            body["lines"] = serde_json::json!(self.lines);
        }
        response.json(body)
    }
}

impl From<CartError> for ApiError {
    fn from(err: CartError) -> Self {
        let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let lines = match &err {
            CartError::PriceChanged { lines } | CartError::SoldOut { lines } => lines.clone(),
            _ => Vec::new(),
        };
        ApiError {
            status,
            message: err.to_string(),
            field: err.field().map(str::to_owned),
            code: Cow::Borrowed(err.code()),
            etag: None,
            lines,
        }
    }
}

impl From<CallError<CartError>> for ApiError {
    fn from(err: CallError<CartError>) -> Self {
        match err {
            CallError::Rejected(cart) => cart.into(),
            CallError::VersionMismatch { expected, actual } => ApiError {
                status: StatusCode::PRECONDITION_FAILED,
                message: format!(
                    "If-Match names version {expected}, the cart is at version {actual}"
                ),
                field: Some("If-Match".into()),
                code: Cow::Borrowed("version_mismatch"),
                etag: Some(actual),
                lines: Vec::new(),
            },
            CallError::IdempotencyKeyReused { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was already used for a different request",
            )
            .with_field("Idempotency-Key")
            .with_code("idempotency_key_reused"),
            CallError::Store(StoreError::Indeterminate(reason)) => {
                tracing::warn!(%reason, "cart change outcome unknown");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the event store did not confirm the change; it may or may not have been made: retry with the same Idempotency-Key",
                )
                .with_code("outcome_unknown")
            }
            CallError::Store(StoreError::Unavailable(reason)) | CallError::Unavailable(reason) => {
                tracing::warn!(%reason, "cart call unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the cart service is temporarily unavailable",
                )
            }
            CallError::Fenced(reason) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this node cannot serve carts now ({reason}); retry, here or on another node"
                ),
            )
            .with_code("fenced"),
            CallError::NotOwner(reason) | CallError::Placing(reason) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the cart cannot be placed yet ({reason}); retry"),
            )
            .with_code("placing"),
            CallError::Unreachable(reason) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{reason}; retry with the same Idempotency-Key"),
            )
            .with_code("owner_unreachable"),
            other => {
                tracing::error!(error = %other, "cart call failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                    .with_code("internal")
            }
        }
    }
}
