//! The cluster's own gRPC service as tests see it: a node's status, and
//! waiting until every node's status says something.

use std::time::{Duration, Instant};

use super::NodeProcess;

pub mod pb {
    tonic::include_proto!("granary.cluster.v1");
}

pub use pb::StatusReply;

/// A gRPC channel to `node` as a member would open it: mutual TLS with the
/// node's own key (it trusts itself), pinned to its key; plaintext if it
/// runs with `--insecure-cluster`.
pub async fn channel(node: &NodeProcess) -> Option<tonic::transport::Channel> {
    if node.insecure {
        return endpoint(node).connect().await.ok();
    }
    let keys = granary::security::NodeKeys::load(&node.data_dir).ok()?;
    channel_with(&keys, node).await.ok()
}

/// A channel to `node` over mutual TLS with `keys` (anyone's: a member's,
/// a stranger's), pinned to `node`'s key.
pub async fn channel_with(
    keys: &granary::security::NodeKeys,
    node: &NodeProcess,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let expected: granary::security::Fingerprint = node.node_id.parse().expect("a node id");
    let config = granary::security::tls::client_config(keys, [expected]).expect("TLS config");
    endpoint(node)
        .connect_with_connector(granary::security::tls::connector(config))
        .await
}

fn endpoint(node: &NodeProcess) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
}

/// A node's `granary.cluster.v1.Cluster/Status`, or `None` if it does not
/// answer within 2 s.
/// Carts live in memory on the member that answered `status` (the shop's
/// product and stock grains are live there too).
pub fn live_carts(status: &StatusReply) -> u64 {
    status.live_by_kind.get("cart").copied().unwrap_or(0)
}

pub async fn status(node: &NodeProcess) -> Option<StatusReply> {
    let channel = channel(node).await?;
    let reply = pb::cluster_client::ClusterClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .ok()?;
    Some(reply.into_inner())
}

/// Which of `nodes` (by index) a grain of a kind placed by its id's hash
/// (`Home::Hashed`: products, stock) is placed on when nobody hosts it:
/// its directory partition's holder among them.
pub async fn hashed_home(nodes: &[&NodeProcess], kind: &str, id: &str) -> usize {
    let ids = node_ids(nodes).await;
    home_among(&ids, kind, id)
}

/// `prefix` followed by the first number that makes a grain of `kind`
/// with that id hashed to `nodes[at]` (see [`hashed_home`]).
pub async fn id_hashed_to(nodes: &[&NodeProcess], at: usize, kind: &str, prefix: &str) -> String {
    let ids = node_ids(nodes).await;
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|id| home_among(&ids, kind, id) == at)
        .expect("an id")
}

async fn node_ids(nodes: &[&NodeProcess]) -> Vec<granary_cluster_core::NodeId> {
    let mut ids = Vec::new();
    for node in nodes {
        let reply = status(node).await.expect("status");
        ids.push(granary_cluster_core::NodeId::new(reply.node_id));
    }
    ids
}

fn home_among(ids: &[granary_cluster_core::NodeId], kind: &str, id: &str) -> usize {
    let key = granary::cluster::placement_key(kind, id);
    let holder = granary_cluster_core::partition_holder(&key, ids).expect("members");
    ids.iter().position(|id| id == holder).expect("one of them")
}

/// Polls the nodes' status until `done` holds for all of them (30 s at
/// most); their last replies.
pub async fn until_all(
    nodes: &[&NodeProcess],
    what: &str,
    done: impl Fn(&StatusReply) -> bool,
) -> Vec<StatusReply> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut replies = Vec::new();
        let mut last = None;
        for node in nodes {
            match status(node).await {
                Some(reply) if done(&reply) => replies.push(reply),
                other => {
                    last = other;
                    break;
                }
            }
        }
        if replies.len() == nodes.len() {
            return replies;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; last status {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three members sharing one store file (`<dir>/shared.db`), A founding,
/// B and C joining; returned once every member sees every other live.
pub async fn formed_on_one_store(dir: &std::path::Path) -> (String, [NodeProcess; 3]) {
    formed_on_one_store_with(dir, &[]).await
}

/// [`formed_on_one_store`], every node also given `extra` arguments.
pub async fn formed_on_one_store_with(
    dir: &std::path::Path,
    extra: &[&str],
) -> (String, [NodeProcess; 3]) {
    let store = dir.join("shared.db").to_str().expect("path").to_owned();
    let found: Vec<&str> = ["--store", store.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let a = NodeProcess::start(&dir.join("a"), &found);
    let seed = a.grpc.to_string();
    let token = super::token(&a);
    let join: Vec<&str> = ["--store", &store, "--join", &seed, "--token", &token]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let b = NodeProcess::start(&dir.join("b"), &join);
    let c = NodeProcess::start(&dir.join("c"), &join);
    until_all(&[&a, &b, &c], "three live members", |r| {
        r.members == 3 && r.committed_version == r.config_version && r.peers.iter().all(|p| p.live)
    })
    .await;
    (store, [a, b, c])
}
