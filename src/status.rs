//! `granary status`: a node's view of the cluster, as a table or JSON.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::Endpoint;

use crate::proto::cluster::StatusRequest;
use crate::proto::cluster::cluster_client::ClusterClient;

/// Asks the node at `node` (gRPC `HOST:PORT`) for its status and prints it.
pub fn run(node: &str, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime.block_on(async {
        let channel = Endpoint::from_shared(format!("http://{node}"))
            .with_context(|| format!("{node:?} is not HOST:PORT"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await
            .with_context(|| format!("cannot reach a node at {node}"))?;
        let reply = ClusterClient::new(channel)
            .status(StatusRequest {})
            .await
            .with_context(|| format!("{node} did not answer the status request"))?;
        anyhow::Ok(reply.into_inner())
    })?;
    if json {
        let peers: Vec<serde_json::Value> = reply
            .peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id, "address": p.address, "live": p.live, "last_seen_ms_ago": p.last_seen_ms_ago,
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
    println!("live grains {}", reply.live_grains);
    println!();
    println!(
        "{:<38} {:<22} {:<5} {:>10}",
        "PEER", "ADDRESS", "LIVE", "LAST SEEN"
    );
    for peer in &reply.peers {
        let seen = peer
            .last_seen_ms_ago
            .map_or("never".to_owned(), |ms| format!("{ms} ms ago"));
        println!(
            "{:<38} {:<22} {:<5} {:>10}",
            peer.id,
            peer.address,
            if peer.live { "yes" } else { "no" },
            seen
        );
    }
    Ok(())
}
