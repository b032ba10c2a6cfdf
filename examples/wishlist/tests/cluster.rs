//! The wishlist example as its README says to run it: `run_cluster.sh`
//! starts three nodes of the example's own binary as one cluster, every
//! node answers for every wishlist (the grain lives on one member, the
//! others forward to it), the kind's refusals come back typed through any
//! member, and SIGTERM stops the three gracefully. (It runs the binary
//! under test, `WISHLIST_BIN`, and the script's ports 9071–9073 and
//! 9081–9083.)

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The script's process group: killed when dropped, nodes included.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let group = self.0.id() as libc::pid_t;
        // SAFETY: killpg(2) on the process group this test started.
        unsafe { libc::killpg(group, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// `method url [json]`: the status and the JSON body.
async fn send(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map_or_else(Bytes::new, |json| Bytes::from(json.to_string()));
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let exchange = async {
        let response = http.request(request).await.expect("answered");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s")
}

/// The same, retried while the cluster answers 503 (a wishlist being
/// placed), for 10 s at most.
async fn send_past_503(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send(http, method, url, body.clone()).await;
        if answer.0 != 503 || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn skus(body: &serde_json::Value) -> Vec<String> {
    body["skus"]
        .as_array()
        .expect("skus")
        .iter()
        .map(|s| s.as_str().expect("a sku").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_wishlist_nodes_serve_every_wishlist_through_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/run_cluster.sh"))
        .env("WISHLIST_BIN", env!("CARGO_BIN_EXE_wishlist"))
        .env("WISHLIST_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("run the script");
    let stdout = child.stdout.take().expect("stdout");
    let mut script = Script(child);
    // The script prints each node's ready line, the status, then where the
    // cluster listens; it is up once that last line is out.
    let printed = tokio::task::spawn_blocking(move || {
        let mut printed = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("a line");
            let done = line.starts_with("wishlists on");
            printed.push(line);
            if done {
                break;
            }
        }
        printed
    });
    let printed = tokio::time::timeout(Duration::from_secs(60), printed)
        .await
        .expect("the cluster starts within 60 s")
        .expect("read the script's output");
    let live = printed
        .iter()
        .filter(|l| l.len() > 64 && l.contains(" yes "))
        .count();
    assert_eq!(live, 3, "three live members: {printed:#?}");

    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let nodes = ["127.0.0.1:9081", "127.0.0.1:9082", "127.0.0.1:9083"];
    let url = |node: usize, path: &str| format!("http://{}{path}", nodes[node % 3]);

    // Wishlists changed through one node and read through all three.
    for n in 0..12 {
        let id = format!("shopper-{n}");
        let (status, body) = send_past_503(
            &http,
            "POST",
            &url(n, &format!("/wishlists/{id}/items")),
            Some(serde_json::json!({"sku": "TEA-01"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = send(
            &http,
            "POST",
            &url(n + 1, &format!("/wishlists/{id}/items")),
            Some(serde_json::json!({"sku": format!("CUP-{n}")})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        for node in 0..3 {
            let (status, body) =
                send(&http, "GET", &url(node, &format!("/wishlists/{id}")), None).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(skus(&body), ["TEA-01".to_owned(), format!("CUP-{n}")]);
        }
        // The kind's own refusal, typed, through a member that forwards.
        let (status, body) = send(
            &http,
            "DELETE",
            &url(n + 2, &format!("/wishlists/{id}/items/NOPE")),
            None,
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_there")),
            "{body}"
        );
    }
    let (status, body) = send(
        &http,
        "POST",
        &url(0, "/wishlists/ada/items"),
        Some(serde_json::json!({"sku": ""})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid")),
        "{body}"
    );

    // SIGTERM stops the script and, gracefully, its three nodes.
    let pid = script.0.id() as libc::pid_t;
    // SAFETY: kill(2) on the script this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopped = tokio::task::spawn_blocking(move || script.0.wait().map(|s| (s, script)));
    let (status, _script) = tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .expect("the cluster stops within 30 s")
        .expect("join")
        .expect("wait");
    assert!(status.code().is_some(), "the script exited: {status}");
    for name in ["a", "b", "c"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(
            log.contains("stopped"),
            "node {name} stopped gracefully:\n{log}"
        );
    }
}
