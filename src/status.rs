//! `granary status`: a node's view of the cluster, as a table or JSON.

use std::time::Duration;

use anyhow::Context;

use crate::cluster::dial::{self, Dialer};
use crate::proto::cluster::StatusRequest;
use crate::proto::cluster::cluster_client::ClusterClient;
use crate::security::NodeKeys;

/// Asks the node at `node` (gRPC `HOST:PORT`) for its status and prints it.
/// The request is authenticated with the key in `data_dir` (a member's),
/// and the node must hold a key that member knows (its own, or one of the
/// members in its last saved config), unless the cluster is `insecure`
/// (plaintext).
pub fn run(
    node: &str,
    data_dir: &std::path::Path,
    insecure: bool,
    json: bool,
) -> anyhow::Result<()> {
    let (dialer, expected) = if insecure {
        (Dialer::plaintext(), None)
    } else {
        let keys = NodeKeys::load(data_dir)?;
        let mut known = vec![keys.fingerprint];
        if let Some(saved) = crate::cluster::persist::load(data_dir)? {
            known.extend(
                saved
                    .config
                    .members
                    .keys()
                    .chain(&saved.committed_members)
                    .filter_map(|id| dial::pin(&id.0)),
            );
        }
        (Dialer::tls(std::sync::Arc::new(keys)), Some(known))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime.block_on(async {
        let channel = dialer
            .connect_to_one_of(node, expected, Duration::from_secs(3), Duration::from_secs(3))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e} (the node there must be the one whose data directory is {}, or a member it knows)",
                    data_dir.display()
                )
            })?;
        let reply = ClusterClient::new(channel)
            .status(StatusRequest {})
            .await
            .with_context(|| format!("{node} did not answer the status request"))?
            .into_inner();
        // Each peer reports its own live grains; ask them, briefly.
        let mut grains = std::collections::HashMap::new();
        for peer in &reply.peers {
            if peer.id == reply.node_id {
                grains.insert(peer.id.clone(), reply.live_grains);
                continue;
            }
            if let Some(count) = peer_grains(&dialer, &peer.address, &peer.id).await {
                grains.insert(peer.id.clone(), count);
            }
        }
        anyhow::Ok((reply, grains))
    })?;
    let (reply, grains) = reply;
    if json {
        let peers: Vec<serde_json::Value> = reply
            .peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id, "address": p.address, "http": p.http, "live": p.live, "last_seen_ms_ago": p.last_seen_ms_ago,
                    "live_grains": grains.get(&p.id),
                })
            })
            .collect();
        let value = serde_json::json!({
            "node_id": reply.node_id,
            "role": reply.role,
            "term": reply.term,
            "leader": (!reply.leader.is_empty()).then_some(&reply.leader),
            "quorum": reply.quorum,
            "quorum_size": reply.quorum_size,
            "members": reply.members,
            "config_version": reply.config_version,
            "committed_version": reply.committed_version,
            "live_grains": reply.live_grains,
            "live_by_kind": reply.live_by_kind.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "peers": peers,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("node        {}", reply.node_id);
    println!("role        {}", reply.role);
    println!("term        {}", reply.term);
    println!(
        "leader      {}",
        if reply.leader.is_empty() {
            "(none)"
        } else {
            &reply.leader
        }
    );
    println!(
        "quorum      {} (needs {} of {})",
        if reply.quorum { "yes" } else { "no" },
        reply.quorum_size,
        reply.members
    );
    println!(
        "config      v{} (committed v{})",
        reply.config_version, reply.committed_version
    );
    let mut kinds: Vec<_> = reply.live_by_kind.iter().collect();
    kinds.sort();
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("live grains {} ({})", reply.live_grains, kinds.join(", "));
    println!();
    println!(
        "{:<64} {:<22} {:<5} {:>12} {:>11}  HTTP",
        "PEER", "ADDRESS", "LIVE", "LAST SEEN", "LIVE GRAINS"
    );
    for peer in &reply.peers {
        let seen = peer
            .last_seen_ms_ago
            .map_or("never".to_owned(), |ms| format!("{ms} ms ago"));
        let live_grains = grains.get(&peer.id).map_or("?".to_owned(), u64::to_string);
        println!(
            "{:<64} {:<22} {:<5} {:>12} {:>11}  {}",
            peer.id,
            peer.address,
            if peer.live { "yes" } else { "no" },
            seen,
            live_grains,
            if peer.http.is_empty() {
                "-"
            } else {
                &peer.http
            },
        );
    }
    Ok(())
}

/// A peer's own count of live grains, or `None` if it does not answer
/// within a second.
async fn peer_grains(dialer: &Dialer, address: &str, id: &str) -> Option<u64> {
    let channel = dialer
        .connect(
            address,
            dial::pin(id),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        .ok()?;
    let reply = ClusterClient::new(channel)
        .status(StatusRequest {})
        .await
        .ok()?;
    Some(reply.into_inner().live_grains)
}

/// Runs `call` against the node at `node` as that node itself: with the
/// key in its `data_dir`, pinned to that key (an operator's request).
fn as_the_node<T, F, Fut>(node: &str, data_dir: &std::path::Path, call: F) -> anyhow::Result<T>
where
    F: FnOnce(ClusterClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let keys = NodeKeys::load(data_dir)?;
    let own = keys.fingerprint;
    let dialer = Dialer::tls(std::sync::Arc::new(keys));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = dialer
            .connect(
                node,
                Some(own),
                Duration::from_secs(3),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e} (is {} the data directory of the node at {node}?)",
                    data_dir.display()
                )
            })?;
        call(ClusterClient::new(channel))
            .await
            .map_err(|status| anyhow::anyhow!("{node}: {}", status.message()))
    })
}

/// Asks the member at `node` for a join token valid for `ttl` (e.g. `1h`),
/// authenticating with the key in its `data_dir`.
pub fn create_token(
    node: &str,
    data_dir: &std::path::Path,
    ttl: &str,
    single_use: bool,
) -> anyhow::Result<String> {
    let ttl = crate::config::parse_duration(ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    as_the_node(node, data_dir, |mut client| async move {
        client
            .create_token(crate::proto::cluster::CreateTokenRequest {
                ttl_seconds: ttl.as_secs(),
                single_use,
            })
            .await
            .map(|reply| reply.into_inner().token)
    })
}

/// Asks the member at `node` to remove member `id` for good.
pub fn remove_node(node: &str, data_dir: &std::path::Path, id: &str) -> anyhow::Result<String> {
    let id = id.trim().to_owned();
    let reply = as_the_node(node, data_dir, |mut client| async move {
        client
            .remove_node(crate::proto::cluster::RemoveNodeRequest { id })
            .await
            .map(tonic::Response::into_inner)
    })?;
    if reply.accepted {
        Ok("removal taken: the member's key is revoked; the new membership follows".into())
    } else {
        anyhow::bail!("the removal was not taken: {}", reply.message)
    }
}
