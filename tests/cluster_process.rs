//! Real node processes forming a cluster on loopback: joining, one leader,
//! a killed member removed by the majority, a lone survivor fencing itself,
//! and `granary status`.

#[path = "support/proxy.rs"]
mod proxy;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Http, NodeProcess};

use support::cluster::pb as cluster;
use support::cluster::pb::cluster_client::ClusterClient;
use support::cluster::{StatusReply, formed_on_one_store, live_carts, status, until_all};

fn three_nodes(dir: &std::path::Path) -> (NodeProcess, NodeProcess, NodeProcess) {
    let store = dir.join("shared.db").to_str().expect("path").to_owned();
    let a = NodeProcess::start(&dir.join("a"), &["--store", &store]);
    let seed = a.grpc.to_string();
    let token = support::token(&a);
    let join = ["--store", &store, "--join", &seed, "--token", &token];
    let b = NodeProcess::start(&dir.join("b"), &join);
    let c = NodeProcess::start(&dir.join("c"), &join);
    (a, b, c)
}

/// One cluster, one store: a node whose store holds no cluster id, or
/// another cluster's, is not admitted; it stops with an error that says
/// why, and the cluster's membership is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_store_is_refused_at_join() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cluster.db");
    let store = store.to_str().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &["--store", store]);
    let seed = a.grpc.to_string();

    // A fresh store: no cluster id at all.
    let fresh = dir.path().join("fresh.db");
    let (exit, stderr) = tokio::task::block_in_place(|| {
        support::serve_expecting_failure(&[
            "--data-dir",
            dir.path().join("b").to_str().unwrap(),
            "--store",
            fresh.to_str().unwrap(),
            "--join",
            &seed,
        ])
    });
    assert!(!exit.success());
    assert!(
        stderr.contains("holds no cluster id") && stderr.contains("fresh.db"),
        "{stderr}"
    );

    // Another cluster's store: its founder ran on it and stopped.
    let other = dir.path().join("other.db");
    let other = other.to_str().unwrap();
    let mut founder = NodeProcess::start(&dir.path().join("d"), &["--store", other]);
    founder.terminate();
    assert!(tokio::task::block_in_place(|| founder.wait_exit(Duration::from_secs(30))).success());
    let (exit, stderr) = tokio::task::block_in_place(|| {
        support::serve_expecting_failure(&[
            "--data-dir",
            dir.path().join("c").to_str().unwrap(),
            "--store",
            other,
            "--join",
            &seed,
        ])
    });
    assert!(!exit.success());
    assert!(
        stderr.contains("refused") && stderr.contains("the cluster's store"),
        "{stderr}"
    );
    let reply = status(&a).await.expect("status");
    assert_eq!(reply.members, 1, "{reply:?}");
}

/// A node that cannot be reached at the address it advertises (a wrong
/// `--advertise`, or a one-way partition: its requests get out, nothing
/// gets in) is not admitted: it would be found dead again at once, and
/// every admission holds the directory until the newcomer's grain list is
/// in. It keeps asking and says why; the membership is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_unreachable_at_its_advertised_address_is_not_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cluster.db");
    let store = store.to_str().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &["--store", store]);
    let token = support::token(&a);
    // A loopback port nobody listens on.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let seed = a.grpc.to_string();
    let b = NodeProcess::start(
        &dir.path().join("b"),
        &[
            "--store",
            store,
            "--join",
            &seed,
            "--token",
            &token,
            "--advertise",
            &nowhere,
        ],
    );
    let said = tokio::task::block_in_place(|| {
        b.wait_for_log(
            &["WARN", "not admitted yet", &nowhere, "does not answer"],
            Duration::from_secs(30),
        )
    });
    eprintln!("B said: {said}");
    let reply = status(&a).await.expect("status");
    assert_eq!(reply.members, 1, "{reply:?}");
    assert!(reply.peers.iter().all(|p| p.id != b.node_id), "{reply:?}");
}

fn agreed(replies: &[StatusReply]) -> bool {
    let leader = &replies[0].leader;
    !leader.is_empty()
        && replies
            .iter()
            .all(|r| &r.leader == leader && r.config_version == replies[0].config_version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_and_agree_on_one_leader_and_one_view() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = three_nodes(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let replies = loop {
        let replies = until_all(&[&a, &b, &c], "three committed members, all live", |r| {
            r.members == 3
                && r.committed_version == r.config_version
                && r.quorum
                && r.peers.iter().all(|p| p.live)
        })
        .await;
        if agreed(&replies) {
            break replies;
        }
        assert!(Instant::now() < deadline, "no agreement: {replies:?}");
    };
    let leaders = replies.iter().filter(|r| r.role == "leader").count();
    assert_eq!(leaders, 1, "{replies:?}");
    for reply in &replies {
        assert_eq!(reply.quorum_size, 2);
    }

    // The CLI shows the same view; it authenticates with a member's key.
    let output = Command::new(env!("CARGO_BIN_EXE_granary"))
        .args(["status", "--node", &a.grpc.to_string(), "--data-dir"])
        .arg(&a.data_dir)
        .output()
        .expect("granary status");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("quorum      yes (needs 2 of 3)"), "{text}");
    assert!(text.contains(&replies[0].leader), "{text}");
    let json = Command::new(env!("CARGO_BIN_EXE_granary"))
        .args([
            "status",
            "--json",
            "--node",
            &b.grpc.to_string(),
            "--data-dir",
        ])
        .arg(&b.data_dir)
        .output()
        .expect("granary status --json");
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON status");
    assert_eq!(value["members"], 3);
    assert_eq!(value["peers"].as_array().map(Vec::len), Some(3));
    let peers = value["peers"].as_array().expect("peers");
    assert!(
        peers.iter().all(|p| p["live_grains"].is_u64()),
        "each peer reports its live grains: {value}"
    );
    assert!(text.contains("LIVE GRAINS"), "{text}");
    // Each member's HTTP API, as clients reach it.
    let https = [&a, &b, &c].map(|node| node.http.to_string());
    for peer in peers {
        let http = peer["http"].as_str().unwrap_or_default();
        assert!(https.iter().any(|h| h == http), "{peer} among {https:?}");
    }
    assert!(https.iter().all(|http| text.contains(http)), "{text}");

    // The CLI checks whom it talks to: another member A knows is fine, a
    // node of another cluster (a key A does not know) is refused.
    let status_as_a = |node: &NodeProcess| {
        Command::new(env!("CARGO_BIN_EXE_granary"))
            .args(["status", "--node", &node.grpc.to_string(), "--data-dir"])
            .arg(&a.data_dir)
            .output()
            .expect("granary status")
    };
    assert!(status_as_a(&c).status.success());
    let stranger = NodeProcess::start(&dir.path().join("stranger"), &[]);
    let refused = status_as_a(&stranger);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("a member it knows"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_removed_by_the_majority_which_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, [a, b, mut c]) = formed_on_one_store(dir.path()).await;
    // Carts C hosts, each with an acknowledged change.
    let http = Http::new();
    http.stock(&a, (0..4).map(|n| format!("kept-{n}"))).await;
    let mut carts = Vec::new();
    for n in 0..4 {
        let created = create_retrying(&c).await;
        assert_eq!(created.status, 201, "{created:?}");
        let cart = created.json["id"].as_str().unwrap().to_owned();
        let sku = format!("kept-{n}");
        let added = http
            .send(
                "POST",
                &c.url(&format!("/carts/{cart}/items")),
                Some(support::item(&sku)),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(added.status, 200, "{added:?}");
        carts.push((cart, sku));
    }
    let killed_at = Instant::now();
    c.kill9();
    // Right away, through A: every call is answered (served once the
    // majority has re-homed the cart, or 503 with Retry-After), within the
    // bounded placement wait, never hanging; the change C acknowledged is
    // there once it is served.
    for (cart, sku) in &carts {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = Instant::now();
            let answer = http.get(&a.url(&format!("/carts/{cart}"))).await.unwrap();
            assert!(
                sent.elapsed() < Duration::from_secs(8),
                "a call waited {:?}",
                sent.elapsed()
            );
            if answer.status == 200 {
                assert_eq!(support::skus(&answer.json), vec![sku.clone()]);
                break;
            }
            assert_eq!(answer.status, 503, "{answer:?}");
            assert!(answer.retry_after.is_some(), "{answer:?}");
            assert!(Instant::now() < deadline, "{cart} was not served again");
        }
    }
    let served_after = killed_at.elapsed();
    eprintln!("carts of the killed member served again after {served_after:?}");
    let replies = until_all(&[&a, &b], "the dead member removed", |r| {
        r.members == 2 && r.committed_version == r.config_version && r.quorum
    })
    .await;
    let removed_after = killed_at.elapsed();
    assert!(
        replies
            .iter()
            .all(|r| r.peers.iter().all(|p| p.id != c.node_id))
    );
    assert!(
        removed_after >= Duration::from_millis(1_000),
        "removed before dead_after: {removed_after:?}"
    );
    // The directory holds the dead member's carts for fence_after after the
    // removal commits; meanwhile calls get 503 with Retry-After.
    let answer = create_retrying(&a).await;
    assert_eq!(answer.status, 201, "{answer:?}");
}

/// A new cart's id, made on `node` (so it lives there), retried on 503.
async fn created_on(node: &NodeProcess) -> String {
    let created = create_retrying(node).await;
    assert_eq!(created.status, 201, "{created:?}");
    created.json["id"].as_str().expect("id").to_owned()
}

/// `POST /carts` on `node`, retried on 503 (as a client honouring
/// Retry-After would) for at most 10 s.
async fn create_retrying(node: &NodeProcess) -> support::Answer {
    Http::new()
        .send_past_503("POST", &node.url("/carts"), None, Duration::from_secs(10))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_without_a_majority_fences_itself_and_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, mut c) = three_nodes(dir.path());
    until_all(&[&a, &b, &c], "three committed members", |r| {
        r.members == 3 && r.committed_version == r.config_version && r.quorum
    })
    .await;
    b.kill9();
    c.kill9();
    until_all(&[&a], "the survivor fenced", |r| !r.quorum).await;
    let http = Http::new();
    let answer = http
        .send("POST", &a.url("/carts"), None, &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json["code"], "fenced");
    // It never removed the others: a minority commits nothing.
    let reply = status(&a).await.expect("status");
    assert_eq!(reply.members, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_cluster_service_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &[]);
    let before = status(&a).await.expect("status");
    // A member's own channel (the node's key): malformed envelopes are
    // InvalidArgument.
    let mut client = ClusterClient::new(support::cluster::channel(&a).await.expect("channel"));
    let err = client
        .deliver(cluster::Envelope {
            from: "x".into(),
            message: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .deliver(cluster::Envelope {
            from: "bad sender".into(),
            message: Some(cluster::envelope::Message::PullConfig(
                cluster::PullConfig {},
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let vote = || cluster::Envelope {
        from: "intruder".into(),
        message: Some(cluster::envelope::Message::RequestVote(
            cluster::RequestVote {
                term: 1_000,
                config_term: 1_000,
                config_version: 1_000,
            },
        )),
    };
    // A member naming another node as the sender: refused.
    let err = client.deliver(vote()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // A key that is not a member's: refused, whatever it claims to be.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = granary::security::NodeKeys::load_or_create(stranger_dir.path()).unwrap();
    let channel = support::cluster::channel_with(&stranger, &a).await.unwrap();
    let mut stranger_client = ClusterClient::new(channel);
    let mut as_member = vote();
    as_member.from = stranger.fingerprint.to_string();
    let err = stranger_client.deliver(as_member).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = stranger_client
        .status(cluster::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // The grain-call link (ALPN `granary-call/2` on the same port): a
    // member's key is answered; a stranger's connection is closed after
    // its handshake.
    let link_as = |keys: granary::security::NodeKeys| {
        let expected: granary::security::Fingerprint = a.node_id.parse().unwrap();
        let address = a.grpc.to_string();
        let connect = granary::cluster::dial::Dialer::tls(std::sync::Arc::new(keys))
            .link(&address, Some(expected), Duration::from_secs(2))
            .unwrap();
        granary::cluster::link::Link::new(&address, connect)
    };
    let member = link_as(granary::security::NodeKeys::load(&a.data_dir).unwrap());
    member
        .ping(Duration::from_secs(5))
        .await
        .expect("a member's ping on the link");
    // A call carrying more trace context than a trace needs is refused,
    // naming the field, on the link and over gRPC alike.
    use granary::cluster::link::messages as grains;
    let traced = grains::GrainCall {
        kind: "cart".into(),
        id: "trace-bounds".into(),
        command: rmp_serde::to_vec(&granary::cart_grain::CartRequest::Get).unwrap(),
        trace_context: (0..9).map(|n| (format!("k{n}"), "v".into())).collect(),
        ..Default::default()
    };
    let answer = member
        .call(&traced, Duration::from_secs(5))
        .await
        .expect("an answer");
    match answer.result {
        Some(grains::grain_answer::Result::Error(grains::GrainError {
            error: Some(grains::grain_error::Error::Invalid(why)),
        })) => assert!(why.contains("trace_context"), "{why}"),
        other => panic!("not refused as invalid: {other:?}"),
    }
    let mut grains_client = grains::grains_client::GrainsClient::new(
        support::cluster::channel(&a).await.expect("channel"),
    );
    let err = grains_client.call(traced.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("trace_context"), "{err:?}");
    for (key, value) in [
        ("traceparent".to_owned(), "0".repeat(513)),
        ("k".repeat(65), "v".to_owned()),
    ] {
        let mut long = traced.clone();
        long.trace_context = [(key, value)].into();
        let err = grains_client.call(long).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("trace_context"), "{err:?}");
    }
    let stranger_link = link_as(stranger);
    let err = stranger_link
        .ping(Duration::from_secs(5))
        .await
        .expect_err("a stranger's link is closed");
    // Closed right after the handshake: seen as the link closing, or as a
    // reset while it opens.
    let why = err.to_string();
    assert!(why.contains("closed") || why.contains("reset"), "{why}");
    // Plaintext: no TLS, no answer.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", a.grpc))
        .unwrap()
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(ClusterClient::new(channel).deliver(vote()).await.is_err());
    }
    let after = status(&a).await.expect("status");
    assert_eq!(after.term, before.term);
    assert_eq!(after.config_version, before.config_version);
    assert_eq!(after.members, 1);
    assert!(after.quorum);
}

/// The placement RPCs (claims, pages of grain lists, releases) answer bad
/// input with a status naming the field, a member speaks only for itself,
/// and a stranger gets nothing; the cart placed before is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_placement_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &[]);
    let http = Http::new();
    let cart = http.create_cart(&a).await;
    let mut client = ClusterClient::new(support::cluster::channel(&a).await.expect("channel"));
    let me = a.node_id.clone();
    /// The refusal's code is `code` and its message names `field`.
    fn refused<T: std::fmt::Debug>(
        result: Result<tonic::Response<T>, tonic::Status>,
        code: tonic::Code,
        field: &str,
    ) {
        let err = result.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(field), "{err:?} names {field}");
    }
    let claim = |grain: &str, claimant: &str| cluster::ClaimRequest {
        grain: grain.into(),
        claimant: claimant.into(),
    };
    use tonic::Code::{FailedPrecondition, InvalidArgument, PermissionDenied};
    refused(
        client.claim(claim(&cart, &"f".repeat(64))).await,
        PermissionDenied,
        "claimant",
    );
    refused(
        client.claim(claim("a cart", &me)).await,
        InvalidArgument,
        "grain",
    );
    refused(
        client.claim(claim(&"x".repeat(300), &me)).await,
        InvalidArgument,
        "grain",
    );
    let page = |after: Option<String>, term, version| cluster::GrainPageRequest {
        member: me.clone(),
        view_term: term,
        view_version: version,
        after,
        limit: 100,
    };
    refused(
        client
            .list_grains(page(Some("bad after".into()), 0, 0))
            .await,
        InvalidArgument,
        "after",
    );
    refused(
        client.list_grains(page(None, 99, 99)).await,
        FailedPrecondition,
        "view",
    );
    let release = |grains: Vec<cluster::ReleasedGrain>| cluster::ReleaseRequest {
        member: me.clone(),
        grains,
    };
    let many = (0..5_000)
        .map(|n| cluster::ReleasedGrain {
            id: format!("g{n}"),
            grant: 0,
        })
        .collect();
    refused(
        client.release(release(many)).await,
        InvalidArgument,
        "grains",
    );
    // A release naming a grant that is not the cart's ends nothing.
    client
        .release(release(vec![cluster::ReleasedGrain {
            id: cart.clone(),
            grant: 12_345,
        }]))
        .await
        .expect("a stale release is accepted and ignored");
    // A stranger's key gets nothing.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = granary::security::NodeKeys::load_or_create(stranger_dir.path()).unwrap();
    let mut stranger_client =
        ClusterClient::new(support::cluster::channel_with(&stranger, &a).await.unwrap());
    let err = stranger_client
        .claim(claim(&cart, &stranger.fingerprint.to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), PermissionDenied, "{err:?}");
    // The cart is still placed where it was, with its state.
    let read = http.get(&a.url(&format!("/carts/{cart}"))).await.unwrap();
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(status(&a).await.expect("status").live_grains, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_answers_the_live_members_and_a_member_speaks_only_for_itself() {
    pub mod messages {
        tonic::include_proto!("messages");
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = three_nodes(dir.path());
    until_all(&[&a, &b, &c], "three live members", |r| {
        r.members == 3 && r.committed_version == r.config_version && r.peers.iter().all(|p| p.live)
    })
    .await;
    let channel = support::cluster::channel(&b).await.expect("channel");
    let reply = messages::control_plane_client::ControlPlaneClient::new(channel)
        .negotiate(messages::NegotiateRequest {
            known_hosts: vec!["elsewhere:1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut hosts = reply.hosts;
    hosts.sort();
    let mut expected = vec![a.grpc.to_string(), b.grpc.to_string(), c.grpc.to_string()];
    expected.sort();
    assert_eq!(
        hosts, expected,
        "the caller's hosts are not adopted; the members are listed"
    );
    // A member speaks only for itself: B cannot claim a cart for A, nor
    // announce that A is closing.
    let channel = support::cluster::channel(&b).await.expect("channel");
    let mut as_b = messages::control_plane_client::ControlPlaneClient::new(channel);
    let err = as_b
        .confirm_owner(messages::OwnerChangeRequest {
            cart_id: uuid::Uuid::new_v4().to_string(),
            new_host: a.grpc.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = as_b
        .closing(messages::ClosingNotice {
            host: a.grpc.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let view = status(&c).await.expect("status");
    assert_eq!(view.members, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_serves_every_cart_and_exactly_one_hosts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, [a, b, c]) = formed_on_one_store(dir.path()).await;
    let nodes = [&a, &b, &c];
    let http = Http::new();
    http.stock(&a, ["from-0", "from-1", "from-2", "bad", "late"])
        .await;
    let mut carts = Vec::new();
    for (n, node) in nodes.iter().enumerate().cycle().take(9) {
        // Each view change makes the directory rebuild for a moment (503,
        // Retry-After): retry as a client would.
        let created = create_retrying(node).await;
        assert_eq!(created.status, 201, "node {n}: {created:?}");
        carts.push(created.json["id"].as_str().unwrap().to_owned());
    }
    for cart in &carts {
        // The members that forwarded the add name the cart's owner (its
        // HTTP address); the owner names nobody.
        let mut named = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            let answer = http
                .post(
                    &node.url(&format!("/carts/{cart}/items")),
                    support::item(&format!("from-{n}")),
                )
                .await
                .unwrap();
            assert_eq!(answer.status, 200, "add through node {n}: {answer:?}");
            named.push(answer.owner);
        }
        let owners: Vec<usize> = (0..3).filter(|&n| named[n].is_none()).collect();
        assert_eq!(
            owners.len(),
            1,
            "{cart}: one owner answered itself: {named:?}"
        );
        let owner = nodes[owners[0]].http.to_string();
        for (n, name) in named.iter().enumerate() {
            assert!(
                name.is_none() || name.as_deref() == Some(owner.as_str()),
                "{cart}: node {n} names {name:?}, the owner is {owner}"
            );
        }
        let mut seen = Vec::new();
        for node in &nodes {
            let answer = http
                .get(&node.url(&format!("/carts/{cart}")))
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
            seen.push(answer.json.clone());
        }
        assert!(
            seen.iter().all(|body| body == &seen[0]),
            "members disagree on {cart}"
        );
        assert_eq!(seen[0]["version"], 4);
        assert_eq!(support::skus(&seen[0]).len(), 3);
    }
    // Refusals travel back through a forwarding member unchanged.
    let cart = &carts[0];
    for (n, node) in nodes.iter().enumerate() {
        let mut bad = support::item("bad");
        bad["quantity"] = serde_json::json!(0);
        let refused = http
            .post(&node.url(&format!("/carts/{cart}/items")), bad)
            .await
            .unwrap();
        assert_eq!(refused.status, 400, "node {n}: {refused:?}");
        assert_eq!(refused.json["field"], "quantity", "node {n}");
        let stale = http
            .send(
                "POST",
                &node.url(&format!("/carts/{cart}/items")),
                Some(support::item("late")),
                &[("If-Match", "\"1\"")],
            )
            .await
            .unwrap();
        assert_eq!(stale.status, 412, "node {n}: {stale:?}");
        assert_eq!(
            stale.etag.as_deref(),
            Some("\"4\""),
            "node {n}: the current version"
        );
    }

    // Every cart is live on exactly one member.
    let mut live = 0;
    for node in &nodes {
        live += live_carts(&status(node).await.expect("status"));
    }
    assert_eq!(
        live,
        carts.len() as u64,
        "each cart has exactly one activation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_members_carts_over_at_once_and_it_can_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, [a, b, mut c]) = formed_on_one_store(dir.path()).await;
    let store = store.as_str();
    let seed = a.grpc.to_string();
    // Carts created through C are claimed by C.
    let http = Http::new();
    http.stock(&a, (0..6).map(|n| format!("s{n}"))).await;
    let mut carts = Vec::new();
    for n in 0..6 {
        let created = create_retrying(&c).await;
        assert_eq!(created.status, 201);
        let cart = created.json["id"].as_str().unwrap().to_owned();
        let added = http
            .post(
                &c.url(&format!("/carts/{cart}/items")),
                support::item(&format!("s{n}")),
            )
            .await
            .unwrap();
        assert_eq!(added.status, 200);
        carts.push(cart);
    }
    assert_eq!(live_carts(&status(&c).await.expect("status")), 6);

    let stopped_at = Instant::now();
    c.terminate();
    let exit = tokio::task::block_in_place(|| c.wait_exit(Duration::from_secs(30)));
    assert!(exit.success(), "{exit}");
    until_all(&[&a, &b], "C removed", |r| {
        r.members == 2 && r.committed_version == r.config_version
    })
    .await;
    let handed_over = stopped_at.elapsed();
    assert!(
        handed_over < Duration::from_millis(1_000),
        "a graceful leave must not wait for dead_after: {handed_over:?}"
    );
    // Every cart is served by the others, with every acknowledged change.
    for cart in &carts {
        let url = a.url(&format!("/carts/{cart}"));
        let answer = http
            .send_past_503("GET", &url, None, Duration::from_secs(10))
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(support::skus(&answer.json).len(), 1);
    }
    // C comes back with its data directory and rejoins.
    let c = NodeProcess::start(&dir.path().join("c"), &["--store", store, "--join", &seed]);
    until_all(&[&a, &b, &c], "C back", |r| {
        r.members == 3 && r.committed_version == r.config_version && r.quorum
    })
    .await;
}

/// Why a request was sent again: a refused or broken connection, or a
/// 503 answer (by its `code`).
#[derive(Default, Debug)]
struct Retries {
    connection: u32,
    unavailable: std::collections::BTreeMap<String, u32>,
}

impl Retries {
    fn add(&mut self, other: Retries) {
        self.connection += other.connection;
        for (code, n) in other.unavailable {
            *self.unavailable.entry(code).or_default() += n;
        }
    }

    fn total(&self) -> u32 {
        self.connection + self.unavailable.values().sum::<u32>()
    }
}

/// A client behaving like a load balancer in front of the members: each
/// request carries an Idempotency-Key, goes to the next member, and on a
/// 503 or a connection failure is retried on another member.
async fn add_through_any(
    http: &Http,
    nodes: &[String],
    start: usize,
    cart: &str,
    sku: &str,
) -> (bool, Retries) {
    let key = format!("add-{cart}-{sku}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut retries = Retries::default();
    let mut n = start;
    let mut last;
    loop {
        let url = format!("{}/carts/{cart}/items", nodes[n % nodes.len()]);
        match http
            .send(
                "POST",
                &url,
                Some(support::item(sku)),
                &[("Idempotency-Key", &key)],
            )
            .await
        {
            Ok(answer) if answer.status == 200 => return (true, retries),
            Ok(answer) if answer.status == 503 => {
                let code = answer.json["code"].as_str().unwrap_or("none").to_owned();
                *retries.unavailable.entry(code).or_default() += 1;
                last = format!("{url}: {answer:?}");
            }
            Ok(answer) => panic!("unexpected answer {answer:?}"),
            Err(err) => {
                retries.connection += 1;
                last = format!("{url}: {err}");
            }
        }
        n += 1;
        if Instant::now() > deadline {
            eprintln!("{sku} to {cart} not acknowledged in 20 s; last answer {last}");
            return (false, retries);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request_and_loses_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.db");
    let store = store.to_str().unwrap().to_owned();
    let names = ["a", "b", "c"];
    let first = NodeProcess::start(&dir.path().join("a"), &["--store", &store]);
    let seed = first.grpc.to_string();
    let token = support::token(&first);
    let mut nodes = vec![first];
    for name in &names[1..] {
        nodes.push(NodeProcess::start(
            &dir.path().join(name),
            &["--store", &store, "--join", &seed, "--token", &token],
        ));
    }
    until_all(
        &nodes.iter().collect::<Vec<_>>(),
        "three live members",
        |r| {
            r.members == 3
                && r.committed_version == r.config_version
                && r.peers.iter().all(|p| p.live)
        },
    )
    .await;
    // Fixed HTTP ports so clients keep their targets across restarts.
    let http_urls: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.http)).collect();
    let http_addrs: Vec<String> = nodes.iter().map(|n| n.http.to_string()).collect();
    let grpc_addrs: Vec<String> = nodes.iter().map(|n| n.grpc.to_string()).collect();

    let http = Http::new();
    // Each client adds these to its own cart, one of each.
    http.stock(&nodes[0], (0..180).map(|n| format!("r{n}")))
        .await;
    let mut carts = Vec::new();
    for n in 0..8 {
        let created = create_retrying(&nodes[n % 3]).await;
        assert_eq!(created.status, 201);
        carts.push(created.json["id"].as_str().unwrap().to_owned());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for (c, cart) in carts.iter().enumerate() {
        let (http, urls, cart, stop) =
            (http.clone(), http_urls.clone(), cart.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut acked, mut failed, mut retries) = (Vec::new(), 0u32, Retries::default());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 180 {
                let sku = format!("r{n}");
                let (ok, tries) = add_through_any(&http, &urls, c + n, &cart, &sku).await;
                retries.add(tries);
                if ok {
                    acked.push(sku);
                } else {
                    failed += 1;
                }
                n += 1;
            }
            (cart, acked, failed, retries)
        }));
    }
    // Restart each member in turn: SIGTERM, wait for it to exit, start it
    // again on the same ports and data, wait until it is back.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes[i].terminate();
        let exit = tokio::task::block_in_place(|| nodes[i].wait_exit(Duration::from_secs(30)));
        assert!(exit.success());
        let data = dir.path().join(names[i]);
        let restarted = NodeProcess::start_at(
            &data,
            &http_addrs[i],
            &grpc_addrs[i],
            &["--store", &store, "--join", &grpc_addrs[(i + 1) % 3]],
        );
        nodes[i] = restarted;
        until_all(&nodes.iter().collect::<Vec<_>>(), "the member back", |r| {
            r.members == 3 && r.committed_version == r.config_version && r.quorum
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total_failed = 0;
    let mut total_retries = Retries::default();
    let mut total_acked = 0;
    for client in clients {
        let (cart, acked, failed, retries) = client.await.unwrap();
        total_failed += failed;
        total_retries.add(retries);
        total_acked += acked.len();
        let answer = http
            .get(&format!("{}/carts/{cart}", http_urls[0]))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let stored = support::skus(&answer.json);
        for sku in &acked {
            assert_eq!(
                stored.iter().filter(|s| *s == sku).count(),
                1,
                "{sku} must be in {cart} exactly once"
            );
        }
        // Adding a sku again adds to its line: twice would be a quantity 2.
        for line in answer.json["lines"].as_array().expect("lines") {
            assert_eq!(line["quantity"], 1, "added twice to {cart}: {line}");
        }
    }
    eprintln!(
        "rolling restart: {total_acked} changes acknowledged, {} retries ({total_retries:?}), {total_failed} failed",
        total_retries.total()
    );
    assert_eq!(total_failed, 0);
}

/// Joining takes a token a member made. A node with no token, a wrong one,
/// an expired one, or one asking for another node's id is not admitted,
/// and the membership is unchanged; tokens are made by the node itself
/// only. (Every other cluster test joins with a valid token.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_takes_a_valid_token_made_by_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.db");
    let a = NodeProcess::start(&dir.path().join("a"), &["--store", store.to_str().unwrap()]);
    let cluster_id = {
        // The cluster id is in the store; a joiner on the same store sends it.
        granary_store::EventStore::cluster_id(
            &granary_store::SqliteStore::open(&store).unwrap(),
            None,
        )
        .await
        .unwrap()
        .expect("a cluster id")
    };
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = granary::security::NodeKeys::load_or_create(stranger_dir.path()).unwrap();
    let channel = support::cluster::channel_with(&stranger, &a).await.unwrap();
    let mut client = ClusterClient::new(channel);
    let join = |id: String, token: String| cluster::JoinRequest {
        member: Some(cluster::Member {
            id,
            address: "127.0.0.1:1".into(),
            http: String::new(),
        }),
        cluster_id: cluster_id.clone(),
        token,
    };
    let me = stranger.fingerprint.to_string();
    // No token.
    let reply = client
        .join(join(me.clone(), String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !reply.accepted && reply.message.contains("token"),
        "{reply:?}"
    );
    // A wrong token: refused for good.
    let reply = client
        .join(join(me.clone(), "0".repeat(64)))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.accepted && reply.refused, "{reply:?}");
    // A token made by A, but for somebody else's id.
    let token: granary::security::tokens::JoinToken = support::token(&a).parse().unwrap();
    let reply = client
        .join(join(a.node_id.clone(), token.secret.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.accepted && reply.refused, "{reply:?}");
    // Tokens are made by the node itself, not by whoever asks.
    let err = client
        .create_token(cluster::CreateTokenRequest {
            ttl_seconds: 60,
            single_use: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // An expired token: made with a one-second life, used after it.
    let short: granary::security::tokens::JoinToken =
        support::token_with(&a, &["--ttl", "1s"]).parse().unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let reply = client
        .join(join(me.clone(), short.secret))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.accepted && reply.refused, "{reply:?}");
    let after = status(&a).await.expect("status");
    assert_eq!(after.members, 1, "{after:?}");
    assert!(after.peers.iter().all(|p| p.id == a.node_id), "{after:?}");
    // The token pins A's key, and a valid one admits a real node.
    assert!(token.members.contains(&a.node_id.parse().unwrap()));
    let b = NodeProcess::start(
        &dir.path().join("b"),
        &[
            "--store",
            store.to_str().unwrap(),
            "--join",
            &a.grpc.to_string(),
            "--token",
            &token.to_string(),
        ],
    );
    until_all(&[&a, &b], "B admitted with the token", |r| {
        r.members == 2 && r.committed_version == r.config_version
    })
    .await;
}

/// `granary token create --single-use`: the token admits the first node
/// that presents it; a second node with the same token is refused with
/// the same message as a wrong token, stops, and is not admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_admits_one_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.db");
    let store = store.to_str().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &["--store", store]);
    let token = support::token_with(&a, &["--single-use"]);
    let seed = a.grpc.to_string();
    let join = ["--store", store, "--join", &seed, "--token", &token];
    let b = NodeProcess::start(&dir.path().join("b"), &join);
    until_all(&[&a, &b], "B admitted with the single-use token", |r| {
        r.members == 2 && r.committed_version == r.config_version
    })
    .await;
    let c_dir = dir.path().join("c");
    let mut args = vec!["--data-dir", c_dir.to_str().unwrap()];
    args.extend(join);
    let (exit, stderr) = tokio::task::block_in_place(|| support::serve_expecting_failure(&args));
    assert!(!exit.success());
    assert!(
        stderr.contains("the join token is not valid here"),
        "{stderr}"
    );
    let after = status(&a).await.expect("status");
    assert_eq!(after.members, 2, "{after:?}");
}

/// `granary node remove`: the removal commits cluster-wide, the removed
/// member's live connections are cut and new ones refused, it stops by
/// itself when asking to come back is refused for good, and even a fresh
/// token does not admit its key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_cut_off_and_cannot_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, [a, b, mut c]) = formed_on_one_store(dir.path()).await;
    // C's own key, talking to A: served while C is a member.
    let c_keys = granary::security::NodeKeys::load(&c.data_dir).unwrap();
    let connect_as_c = || async {
        support::cluster::channel_with(&c_keys, &a)
            .await
            .map(ClusterClient::new)
    };
    let mut live = connect_as_c().await.expect("C connects to A");
    assert!(live.status(cluster::StatusRequest {}).await.is_ok());

    // Bad requests change nothing: an id that is not one, the node itself,
    // a token that lives for no time.
    for (args, says) in [
        (vec!["node", "remove", "not-an-id"], "id:"),
        (
            vec!["node", "remove", a.node_id.as_str()],
            "cannot remove itself",
        ),
        (vec!["token", "create", "--ttl", "0s"], "ttl"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_granary"))
            .args(&args)
            .args(["--node", &a.grpc.to_string(), "--data-dir"])
            .arg(&a.data_dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_granary"))
        .args([
            "node",
            "remove",
            &c.node_id,
            "--node",
            &a.grpc.to_string(),
            "--data-dir",
        ])
        .arg(&a.data_dir)
        .output()
        .expect("granary node remove");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    until_all(&[&a, &b], "C removed", |r| {
        r.members == 2
            && r.committed_version == r.config_version
            && r.peers.iter().all(|p| p.id != c.node_id)
    })
    .await;
    // The live connection is cut; a new one is refused.
    assert!(live.status(cluster::StatusRequest {}).await.is_err());
    if let Ok(mut again) = connect_as_c().await {
        assert!(again.status(cluster::StatusRequest {}).await.is_err());
    }
    // C asks to come back, is refused for good, and stops by itself.
    let exit = tokio::task::block_in_place(|| c.wait_exit(Duration::from_secs(30)));
    assert!(!exit.success(), "{exit}");
    // A fresh token does not admit its key either.
    let token: granary::security::tokens::JoinToken = support::token(&a).parse().unwrap();
    if let Ok(mut client) = connect_as_c().await {
        let reply = client
            .join(cluster::JoinRequest {
                member: Some(cluster::Member {
                    id: c.node_id.clone(),
                    address: c.grpc.to_string(),
                    http: String::new(),
                }),
                cluster_id: granary_store::EventStore::cluster_id(
                    &granary_store::SqliteStore::open(&store).unwrap(),
                    None,
                )
                .await
                .unwrap()
                .unwrap_or_default(),
                token: token.secret.clone(),
            })
            .await
            .expect("an answer")
            .into_inner();
        assert!(!reply.accepted && reply.refused, "{reply:?}");
    }
    let view = status(&a).await.expect("status");
    assert_eq!(view.members, 2);
}

/// A man in the middle: the address a joining node was given answers with
/// another key than the token pins (here another cluster's node). The
/// joining node refuses it before sending anything: it never presents its
/// token there (had it, that node would have refused the token for good
/// and the joiner would have stopped), and nobody admits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_refuses_an_address_answering_with_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.db");
    let store = store.to_str().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &["--store", store]);
    let token = support::token(&a);
    // The impostor: a node of another cluster, with its own key.
    let impostor = NodeProcess::start(
        &dir.path().join("impostor"),
        &["--store", dir.path().join("other.db").to_str().unwrap()],
    );
    let mut c = NodeProcess::start(
        &dir.path().join("c"),
        &[
            "--store",
            store,
            "--join",
            &impostor.grpc.to_string(),
            "--token",
            &token,
        ],
    );
    // C keeps asking (every 300 ms) and keeps refusing the impostor's key.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert!(
            c.child.try_wait().unwrap().is_none(),
            "C stopped: it sent its token to the impostor and was refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in [&a, &impostor] {
        let view = status(node).await.expect("status");
        assert_eq!(view.members, 1, "{view:?}");
    }
    c.terminate();
    tokio::task::block_in_place(|| c.wait_exit(Duration::from_secs(30)));
}

/// `Cluster/RoundTrip` measures, from a grain's thread, pings to another
/// member on the grain-call connection and reads of a grain called as a
/// grain would; it refuses bad probes, and never runs a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_from_a_grains_thread_are_measured_and_bad_probes_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, [a, b, c]) = formed_on_one_store(dir.path()).await;
    let http = Http::new();
    http.set_product(&c, "PROBE", 10).await;
    let price = || async {
        let read = http
            .send("GET", &a.url("/products/PROBE"), None, &[])
            .await
            .expect("product");
        assert_eq!(read.status, 200, "{read:?}");
        read.json["unit_price"].clone()
    };
    let before = price().await;
    let mut client = ClusterClient::new(support::cluster::channel(&a).await.expect("channel"));
    let request =
        |member: &str, count: u32, call: Option<cluster::ProbeCall>| cluster::RoundTripRequest {
            member: member.to_owned(),
            count,
            kind: "cart".into(),
            id: "some-cart".into(),
            call,
        };
    let probe = |kind: &str, command: Vec<u8>| {
        Some(cluster::ProbeCall {
            kind: kind.into(),
            id: "PROBE".into(),
            command,
        })
    };
    let read = rmp_serde::to_vec(&granary_cart::ProductCommand::Get).unwrap();

    for (member, call) in [
        (b.node_id.as_str(), None),
        (&b.grpc.to_string(), None),
        ("", probe("product", read.clone())),
    ] {
        let reply = client
            .round_trip(request(member, 20, call))
            .await
            .expect("round trips")
            .into_inner();
        assert_eq!(reply.count, 20);
        assert!(
            0 < reply.min_us && reply.min_us <= reply.mean_us && reply.mean_us <= reply.max_us,
            "{reply:?}"
        );
    }

    let write = rmp_serde::to_vec(&granary_cart::ProductCommand::Set(
        granary_cart::ProductSpec {
            sku: "PROBE".into(),
            name: "changed".into(),
            unit_price: 1,
            currency: "EUR".into(),
            tax_rate_bp: None,
        },
    ))
    .unwrap();
    let mut unknown_kind = request(b.node_id.as_str(), 1, None);
    unknown_kind.kind = "nope".into();
    for (bad, code) in [
        (request(&b.node_id, 0, None), tonic::Code::InvalidArgument),
        (
            request(&b.node_id, 10_001, None),
            tonic::Code::InvalidArgument,
        ),
        (unknown_kind, tonic::Code::InvalidArgument),
        (request("nobody", 1, None), tonic::Code::NotFound),
        (request(&a.node_id, 1, None), tonic::Code::NotFound),
        (
            request("", 1, probe("product", write)),
            tonic::Code::InvalidArgument,
        ),
        (
            request("", 1, probe("product", vec![0xc1])),
            tonic::Code::InvalidArgument,
        ),
        (
            request("", 1, probe("nope", read.clone())),
            tonic::Code::InvalidArgument,
        ),
    ] {
        let err = client.round_trip(bad.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{bad:?}: {err:?}");
    }
    assert_eq!(price().await, before, "the write was not run");

    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = granary::security::NodeKeys::load_or_create(stranger_dir.path()).unwrap();
    let channel = support::cluster::channel_with(&stranger, &a).await.unwrap();
    let err = ClusterClient::new(channel)
        .round_trip(request(&b.node_id, 1, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

/// A thousand half-open connections to a member's gRPC port (a handshake
/// never started) do not keep the node's own `granary status` out, and
/// the node logs them as a count at most every 10 s, not a line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_never_keep_members_out_nor_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &[]);
    let flood = support::silent_connections(a.grpc, 1_000).await;
    let reply = status(&a).await.expect("status answers during the flood");
    assert_eq!(reply.members, 1);
    // The status call itself closed a pending connection to get in: the
    // count of closed connections has been logged by now.
    let line = a.wait_for_log(
        &["connections closed for the limits"],
        Duration::from_secs(10),
    );
    assert!(line.contains("closed="), "{line}");
    let lines = a.log_count("connections closed for the limits");
    assert!(lines <= 2, "{lines} log lines for one flood");
    drop(flood);
}

/// A member that does not speak the grain-call link (a version from before
/// it, during a rolling upgrade) still gets the calls forwarded to it,
/// over gRPC. Here A sits behind a proxy that closes link connections as
/// such a member does under `--insecure-cluster` (on the link's preface).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_speak_the_link_gets_forwarded_calls_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.db").to_str().unwrap().to_owned();
    let grpc_a = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let proxy = proxy::Proxy::start(grpc_a.parse().unwrap()).await;
    proxy.refuse_links();
    let behind = proxy.addr.to_string();
    let plain = "--insecure-cluster";
    let a = NodeProcess::start_at(
        &dir.path().join("a"),
        "127.0.0.1:0",
        &grpc_a,
        &["--store", &store, "--advertise", &behind, plain],
    );
    let b = NodeProcess::start(
        &dir.path().join("b"),
        &["--store", &store, "--join", &grpc_a, plain],
    );
    until_all(&[&a, &b], "two committed members", |r| {
        r.members == 2 && r.committed_version == r.config_version && r.quorum
    })
    .await;
    let http = Http::new();
    http.stock(&a, ["s0"]).await;
    // A cart created through A is hosted by A; B forwards its calls.
    let created = create_retrying(&a).await;
    assert_eq!(created.status, 201, "{created:?}");
    let cart = created.json["id"].as_str().unwrap().to_owned();
    let added = http
        .post(&b.url(&format!("/carts/{cart}/items")), support::item("s0"))
        .await
        .unwrap();
    assert_eq!(added.status, 200, "{added:?}");
    let read = http.get(&b.url(&format!("/carts/{cart}"))).await.unwrap();
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.json["lines"][0]["sku"], "s0", "{read:?}");
    assert!(
        proxy.links_refused() >= 1,
        "B never tried the link, so the gRPC path was not the fallback"
    );
    assert!(live_carts(&status(&a).await.expect("A's status")) >= 1);
}

/// A member that forwards a request names the cart's owner in
/// `Granary-Owner` (its advertised HTTP address), and a request sent there
/// is served without a hop. A member that comes back with another HTTP
/// address before it is declared dead is listed with the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_answer_names_the_carts_owner_where_clients_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    // Not declared dead while it restarts: it comes back as the member it
    // was, listed with its old HTTP address.
    let slow_verdict = ["--dead-after", "30s"];
    let (_store, [a, mut b, _c]) =
        support::cluster::formed_on_one_store_with(dir.path(), &slow_verdict).await;
    let http = Http::new();
    http.stock(&a, ["sku-1"]).await;
    let add = |node: &NodeProcess, cart: &str| node.url(&format!("/carts/{cart}/items"));

    let cart = created_on(&a).await;
    let direct = http
        .post(&add(&a, &cart), support::item("sku-1"))
        .await
        .unwrap();
    assert_eq!(direct.status, 200, "{direct:?}");
    assert_eq!(direct.owner, None, "the owner names nobody");
    let forwarded = http
        .post(&add(&b, &cart), support::item("sku-1"))
        .await
        .unwrap();
    assert_eq!(forwarded.status, 200, "{forwarded:?}");
    let owner = forwarded.owner.expect("a forwarded answer names the owner");
    assert_eq!(owner, a.http.to_string());
    // Followed, the hint reaches the owner itself.
    let followed = http
        .post(
            &format!("http://{owner}/carts/{cart}/items"),
            support::item("sku-1"),
        )
        .await
        .unwrap();
    assert_eq!(followed.status, 200, "{followed:?}");
    assert_eq!(followed.owner, None, "{followed:?}");
    assert_eq!(followed.json["version"], 4);
    // The shop front's answers (the cart a cookie names) alike.
    let cookie = format!("cartid={cart}");
    let headers = [("cookie", cookie.as_str())];
    let through_b = http
        .send("GET", &b.url("/cart"), None, &headers)
        .await
        .unwrap();
    assert_eq!(through_b.status, 200, "{through_b:?}");
    assert_eq!(through_b.owner.as_deref(), Some(owner.as_str()));
    let at_a = http
        .send("GET", &a.url("/cart"), None, &headers)
        .await
        .unwrap();
    assert_eq!((at_a.status, at_a.owner), (200, None));

    // B comes back at once, on the same addresses, advertising its HTTP
    // API under another name (as behind a proxy).
    b.kill9();
    let b_data = b.data_dir.clone();
    let (b_http, b_grpc) = (b.http.to_string(), b.grpc.to_string());
    let store = dir.path().join("shared.db").to_str().unwrap().to_owned();
    let seed = a.grpc.to_string();
    let named = "cart-b.shop.internal:8080";
    let b = NodeProcess::start_at(
        &b_data,
        &b_http,
        &b_grpc,
        &[
            "--store",
            &store,
            "--join",
            &seed,
            "--dead-after",
            "30s",
            "--advertise-http",
            named,
        ],
    );
    until_all(&[&a, &b], "B listed with its new HTTP address", |r| {
        r.quorum
            && r.committed_version == r.config_version
            && r.peers.iter().any(|p| p.id == b.node_id && p.http == named)
    })
    .await;
    let cart = created_on(&b).await;
    let forwarded = http
        .post(&add(&a, &cart), support::item("sku-1"))
        .await
        .unwrap();
    assert_eq!(forwarded.status, 200, "{forwarded:?}");
    assert_eq!(forwarded.owner.as_deref(), Some(named));
}
