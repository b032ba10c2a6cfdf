//! A grain kind of one's own on a Granary cluster: a shopper's wishlist.
//!
//! The binary is a whole node — `serve`, `status`, `token create`, `node
//! remove`, as `granary` has — hosting one kind, [`Wishlist`], with an HTTP
//! API of its own. Any member answers for any wishlist: `Grains::call`
//! places it on one member and forwards there from the others.
//!
//! ```sh
//! cargo run -p wishlist -- serve --data-dir wl-a --http 127.0.0.1:9080
//! curl -X POST localhost:9080/wishlists/ada/items -H 'content-type: application/json' -d '{"sku":"TEA-01"}'
//! curl localhost:9080/wishlists/ada
//! ```
//!
//! `examples/wishlist/run_cluster.sh` starts three of them as a cluster.

use actix_web::{HttpResponse, web};
use granary::grains::{Grains, valid_id};
use granary_grain::{CallError, Grain};
use serde::{Deserialize, Serialize};

/// Most skus a wishlist keeps.
const MAX_ITEMS: usize = 100;
/// Longest sku.
const MAX_SKU: usize = 64;

/// A shopper's wishlist: the skus they keep for later, in the order added.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Wishlist {
    skus: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WishlistCommand {
    Add { sku: String },
    Remove { sku: String },
    Get,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WishlistEvent {
    Added { sku: String },
    Removed { sku: String },
}

/// Why a change was refused: the domain's answer, typed, on every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WishlistRefusal {
    Full { max: usize },
    NotThere { sku: String },
    BadSku,
}

impl Grain for Wishlist {
    const KIND: &'static str = "wishlist";
    type Command = WishlistCommand;
    type Event = WishlistEvent;
    type Rejection = WishlistRefusal;
    type Reply = Vec<String>;

    fn is_read(command: &WishlistCommand) -> bool {
        matches!(command, WishlistCommand::Get)
    }

    fn decide(&self, command: &WishlistCommand) -> Result<Vec<WishlistEvent>, WishlistRefusal> {
        match command {
            WishlistCommand::Get => Ok(Vec::new()),
            WishlistCommand::Add { sku } if sku.is_empty() || sku.len() > MAX_SKU => {
                Err(WishlistRefusal::BadSku)
            }
            // Adding a sku already there changes nothing.
            WishlistCommand::Add { sku } if self.skus.contains(sku) => Ok(Vec::new()),
            WishlistCommand::Add { .. } if self.skus.len() >= MAX_ITEMS => {
                Err(WishlistRefusal::Full { max: MAX_ITEMS })
            }
            WishlistCommand::Add { sku } => Ok(vec![WishlistEvent::Added { sku: sku.clone() }]),
            WishlistCommand::Remove { sku } if !self.skus.contains(sku) => {
                Err(WishlistRefusal::NotThere { sku: sku.clone() })
            }
            WishlistCommand::Remove { sku } => {
                Ok(vec![WishlistEvent::Removed { sku: sku.clone() }])
            }
        }
    }

    fn apply(&mut self, event: &WishlistEvent) {
        match event {
            WishlistEvent::Added { sku } => self.skus.push(sku.clone()),
            WishlistEvent::Removed { sku } => self.skus.retain(|s| s != sku),
        }
    }

    fn reply(&self, _: &WishlistCommand) -> Vec<String> {
        self.skus.clone()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    sku: String,
}

/// The wishlist API: `GET /wishlists/{id}`, `POST /wishlists/{id}/items`
/// (`{"sku"}`), `DELETE /wishlists/{id}/items/{sku}`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/wishlists/{id}", web::get().to(get))
        .route("/wishlists/{id}/items", web::post().to(add))
        .route("/wishlists/{id}/items/{sku}", web::delete().to(remove));
}

async fn get(grains: web::Data<Grains>, id: web::Path<String>) -> HttpResponse {
    call(&grains, &id, WishlistCommand::Get).await
}

async fn add(grains: web::Data<Grains>, id: web::Path<String>, body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<AddBody>(&body) {
        Ok(body) => call(&grains, &id, WishlistCommand::Add { sku: body.sku }).await,
        Err(err) => refuse(400, "invalid", format!("body: {err}")),
    }
}

async fn remove(grains: web::Data<Grains>, path: web::Path<(String, String)>) -> HttpResponse {
    let (id, sku) = path.into_inner();
    call(&grains, &id, WishlistCommand::Remove { sku }).await
}

/// One grain call, wherever the wishlist lives, translated to HTTP.
async fn call(grains: &Grains, id: &str, command: WishlistCommand) -> HttpResponse {
    if !valid_id(id) {
        return refuse(400, "invalid", "id: 1..=190 printable characters".into());
    }
    match grains.call::<Wishlist>(id, command).await {
        Ok(outcome) => HttpResponse::Ok().json(serde_json::json!({
            "id": id,
            "skus": outcome.reply,
            "version": outcome.version,
        })),
        Err(CallError::Rejected(WishlistRefusal::Full { max })) => {
            refuse(409, "full", format!("a wishlist keeps at most {max} skus"))
        }
        Err(CallError::Rejected(WishlistRefusal::NotThere { sku })) => {
            refuse(404, "not_there", format!("{sku} is not in the wishlist"))
        }
        Err(CallError::Rejected(WishlistRefusal::BadSku)) => {
            refuse(400, "invalid", format!("sku: 1..={MAX_SKU} characters"))
        }
        Err(err) if err.is_retryable() => refuse(503, "unavailable", err.to_string()),
        Err(err) => refuse(500, "internal", err.to_string()),
    }
}

fn refuse(status: u16, code: &str, error: String) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(serde_json::json!({"error": error, "code": code}))
}

fn main() -> std::process::ExitCode {
    granary::cli::run(|node| node.grain::<Wishlist>().routes(routes))
}
