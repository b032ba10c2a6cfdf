//! `granary catalog import FILE`: loads products (and their stock) into a
//! running node's catalog through its admin API, one JSON object per line:
//!
//! ```text
//! {"sku": "TEA-1", "name": "Green tea", "unit_price": 450, "currency": "EUR", "tax_rate_bp": 700, "stock": 120}
//! ```
//!
//! Every line is read and checked first: a file with a line that is not a
//! product sends nothing, and the error names the line. Then each product
//! is `PUT /admin/products/{sku}` (a few at a time, retried while the node
//! answers 503); the node checks each field and the report names every
//! line it refused.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};

/// Products sent at the same time.
const IN_FLIGHT: usize = 8;
/// How long one product is retried while the node answers 503.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// The longest line read (a product is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// One product of the file: its line number, sku and admin body.
struct Product {
    line: usize,
    sku: String,
    body: Value,
}

/// Reads `file` and imports it through the node at `url` with `token`;
/// how many products were set.
pub fn run(file: &Path, url: &str, token: &str) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let products = parse(&text)?;
    let base = url.trim_end_matches('/').to_owned();
    base.parse::<hyper::Uri>()
        .ok()
        .filter(|uri| uri.scheme_str() == Some("http") && uri.host().is_some())
        .with_context(|| format!("--url {url:?} is not an http://host:port address"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let refused = runtime.block_on(send_all(&products, &base, token));
    if refused.is_empty() {
        return Ok(products.len());
    }
    for line in &refused {
        eprintln!("{line}");
    }
    bail!(
        "{} of {} products were not set",
        refused.len(),
        products.len()
    )
}

/// The products of a JSON-lines file; blank lines and lines starting with
/// `#` are skipped. The first bad line is the error.
fn parse(text: &str) -> anyhow::Result<Vec<Product>> {
    let mut products = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.len() > MAX_LINE {
            bail!("line {line}: longer than {MAX_LINE} bytes");
        }
        let mut fields: Map<String, Value> = serde_json::from_str(trimmed)
            .with_context(|| format!("line {line}: not a JSON object"))?;
        let sku = match fields.remove("sku") {
            Some(Value::String(sku)) if crate::http::valid_sku(&sku) => sku,
            Some(_) => bail!("line {line}: sku must be a string of 1 to 64 characters, no spaces"),
            None => bail!("line {line}: sku is missing"),
        };
        products.push(Product {
            line,
            sku,
            body: Value::Object(fields),
        });
    }
    Ok(products)
}

/// PUTs every product; a line per product the node did not set.
async fn send_all(products: &[Product], base: &str, token: &str) -> Vec<String> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut refused = Vec::new();
    for chunk in products.chunks(IN_FLIGHT) {
        let puts = chunk.iter().map(|p| put(&client, base, token, p));
        for (product, result) in chunk.iter().zip(futures_util::future::join_all(puts).await) {
            if let Err(reason) = result {
                refused.push(format!("line {} ({}): {reason}", product.line, product.sku));
            }
        }
    }
    refused
}

/// One product, retried while the node answers 503 or cannot be reached.
async fn put(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    token: &str,
    product: &Product,
) -> Result<(), String> {
    let uri = format!("{base}/admin/products/{}", encode_segment(&product.sku));
    let body = Bytes::from(serde_json::to_vec(&product.body).map_err(|e| e.to_string())?);
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        let request = hyper::Request::put(&uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let last = match client.request(request).await {
            Ok(response) => {
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if status.is_success() {
                    return Ok(());
                }
                let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let reason = match (answer["field"].as_str(), answer["error"].as_str()) {
                    (Some(field), Some(error)) => format!("{status}: {field}: {error}"),
                    (None, Some(error)) => format!("{status}: {error}"),
                    _ => status.to_string(),
                };
                if status.as_u16() != 503 {
                    return Err(reason);
                }
                reason
            }
            Err(err) => format!("cannot reach the node: {err}"),
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sku as one path segment (percent-encoding what is not unreserved).
fn encode_segment(sku: &str) -> String {
    let mut out = String::with_capacity(sku.len());
    for byte in sku.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_line_by_line_skipping_blanks_and_comments() {
        let text = "# the catalog\n\n{\"sku\": \"A\", \"unit_price\": 1}\n  {\"sku\": \"B\"}\n";
        let products = parse(text).unwrap();
        let got: Vec<_> = products.iter().map(|p| (p.line, p.sku.as_str())).collect();
        assert_eq!(got, [(3, "A"), (4, "B")]);
        assert_eq!(products[0].body, serde_json::json!({"unit_price": 1}));
    }

    #[test]
    fn a_bad_line_is_an_error_naming_it() {
        for (text, expected) in [
            ("{\"sku\": \"A\"}\nnot json\n", "line 2: not a JSON object"),
            ("{\"name\": \"x\"}\n", "line 1: sku is missing"),
            ("{\"sku\": 7}\n", "line 1: sku must be"),
            ("[1, 2]\n", "line 1: not a JSON object"),
        ] {
            let err = parse(text).err().expect(text).to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
        let long = format!("{{\"sku\": \"{}\"}}", "s".repeat(65));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn a_sku_is_one_path_segment() {
        assert_eq!(encode_segment("TEA-1.a_b~"), "TEA-1.a_b~");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
