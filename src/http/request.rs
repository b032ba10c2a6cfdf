//! Turning an HTTP request into a grain call's inputs: a bounded body, a
//! typed value that names the offending field, and the `If-Match` and
//! `Idempotency-Key` preconditions.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use bytes::BytesMut;
use futures_util::StreamExt;
use granary_grain::CallOptions;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;

/// Longest idempotency key accepted.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Reads the whole body, refusing (413) one longer than the node's limit
/// before buffering more than that of it, and (408) one that has not all
/// arrived within the node's body-read deadline: a body that trickles or
/// stalls holds a connection and its buffer no longer than that.
pub(crate) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &super::ApiState,
) -> Result<web::Bytes, ApiError> {
    let deadline = state.body_read_timeout;
    match tokio::time::timeout(deadline, read_bounded(req, payload, state.max_body_bytes)).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {deadline:?}"),
        )
        .with_code("body_timeout")),
    }
}

async fn read_bounded(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes"),
        )
    };
    if let Some(length) = req.headers().get("content-length") {
        let length = length
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| {
                ApiError::bad_request("Content-Length", "Content-Length is not a number")
            })?;
        if length > limit {
            return Err(too_large());
        }
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("body", format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if !body.is_empty() {
        require_json(req)?;
    }
    Ok(body.freeze())
}

/// Refuses (415) a request whose `Content-Type` is not JSON: every body
/// this API reads is JSON, and a cross-site HTML form cannot send that type
/// (nor can another site's script without a CORS preflight this server
/// never grants).
pub(crate) fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/json is required",
        )
        .with_field("Content-Type")
        .with_code("unsupported_media_type"))
    }
}

/// Parses a JSON body into `T`; a failure names the field it is about.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("body", "a JSON body is required"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        let whole_body = matches!(
            err.inner().classify(),
            serde_json::error::Category::Eof | serde_json::error::Category::Syntax
        );
        let field = if whole_body {
            "body".to_owned()
        } else if path != "." && path != "?" {
            path
        } else {
            // Missing and unknown fields are reported at the parent; serde
            // names them between backticks.
            message
                .split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "body".to_owned())
        };
        ApiError::bad_request(field, format!("invalid JSON body: {message}"))
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("body", format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// A path segment that must be a UUID.
pub(crate) fn parse_uuid(field: &str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value)
        .map_err(|_| ApiError::bad_request(field, format!("{field} must be a UUID")))
}

/// The `ETag` of a cart version.
pub(crate) fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// `If-Match` → the version the client requires; `*` or absent → none.
pub(crate) fn expected_version(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = req.headers().get("if-match") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "If-Match",
            "If-Match must be an ETag this API sent, like \"3\"",
        )
    };
    let value = value.to_str().map_err(|_| bad())?.trim();
    // Empty is no precondition, as `*` is.
    if value.is_empty() || value == "*" {
        return Ok(None);
    }
    if value.starts_with("W/") {
        // If-Match compares strongly (RFC 9110 13.1.1); this API only sends
        // strong ETags.
        return Err(ApiError::bad_request(
            "If-Match",
            "If-Match needs a strong ETag like \"3\", not a weak one",
        ));
    }
    // Quoted, as every ETag is (RFC 9110 8.8.3), digits only: no sign.
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(bad)
}

/// `Idempotency-Key`, if any, with a hash of the request it accompanies, so
/// a retry (same key, same request) is told apart from a reuse.
pub(crate) fn idempotency(
    req: &HttpRequest,
    body: &[u8],
) -> Result<Option<(String, u64)>, ApiError> {
    // An empty header is no key (as an empty `If-Match` is no precondition).
    let Some(value) = req
        .headers()
        .get("idempotency-key")
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.chars().all(|c| c.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "Idempotency-Key",
                format!(
                    "Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            )
        })?;
    let mut hash = Fnv1a::default();
    hash.write(req.method().as_str().as_bytes());
    hash.write(b" ");
    // Lower-cased: the ids in the path are UUIDs, which name the same cart
    // in either case, so a retry spelling them differently is the same request.
    hash.write(req.path().to_ascii_lowercase().as_bytes());
    hash.write(b"\n");
    hash.write(body);
    Ok(Some((key.to_owned(), hash.0)))
}

/// The preconditions of a grain call from the request's headers.
pub(crate) fn call_options(req: &HttpRequest, body: &[u8]) -> Result<CallOptions, ApiError> {
    Ok(CallOptions {
        expected_version: expected_version(req)?,
        idempotency: idempotency(req, body)?,
        ..CallOptions::default()
    })
}

/// FNV-1a, 64 bit: request hashes are stored, so the hash must not change
/// between builds (std's `DefaultHasher` makes no such promise).
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
        quantity: u32,
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        let err = parse_json::<Item>(br#"{"sku": "a", "quantity": "two"}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("quantity"));
        let err = parse_json::<Item>(br#"{"sku": "a", "quantity": -1}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("quantity"));
    }

    #[test]
    fn a_missing_or_unknown_field_is_named() {
        let err = parse_json::<Item>(br#"{"quantity": 2}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("sku"));
        let err =
            parse_json::<Item>(br#"{"sku": "a", "quantity": 2, "colour": "red"}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("colour"));
    }

    #[test]
    fn malformed_json_and_trailing_garbage_are_refused() {
        assert_eq!(
            parse_json::<Item>(b"{").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(parse_json::<Item>(br#"{"sku": "a", "quantity": 2} x"#).is_err());
        assert_eq!(
            parse_json::<Item>(b"  ").unwrap_err().field.as_deref(),
            Some("body")
        );
    }

    #[test]
    fn request_hashes_follow_the_published_fnv1a_vectors() {
        // Stored hashes must not change between builds: pin the algorithm.
        let mut empty = Fnv1a::default();
        empty.write(b"");
        assert_eq!(empty.0, 0xcbf2_9ce4_8422_2325);
        let mut a = Fnv1a::default();
        a.write(b"a");
        assert_eq!(a.0, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn if_match_accepts_etags_and_star() {
        let req = |v: &str| {
            actix_web::test::TestRequest::default()
                .insert_header(("If-Match", v))
                .to_http_request()
        };
        assert_eq!(expected_version(&req("\"7\"")).unwrap(), Some(7));
        assert!(expected_version(&req("W/\"7\"")).is_err());
        assert_eq!(expected_version(&req("*")).unwrap(), None);
        assert!(expected_version(&req("seven")).is_err());
        // Unquoted, signed or empty: not an ETag this API sent.
        for bad in ["7", "\"+7\"", "\"\"", "\"7"] {
            assert!(expected_version(&req(bad)).is_err(), "{bad}");
        }
    }
}
