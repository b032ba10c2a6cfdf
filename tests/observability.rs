//! Seeing the cluster, with real node processes: `GET /metrics` of a
//! 3-member cluster (the exposition parses, its values move with the
//! traffic the members take and with a member's death), and `granary
//! load` (its report adds up and agrees with the node's own counts).

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::formed_on_one_store;
use support::{Http, NodeProcess};

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of an OpenMetrics text exposition; panics on a line that
/// is neither a comment nor a sample.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let labels = rest
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) =
                            pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        samples.push((name, labels, value));
    }
    samples
}

/// The sum of `name`'s samples whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn scrape(http: &Http, node: &NodeProcess) -> Vec<Sample> {
    let (status, content_type, text) = http.text(&node.url("/metrics")).await.expect("scrape");
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    parse(&text)
}

/// Scrapes `node` until `done` holds (30 s at most, or the test fails).
async fn until(http: &Http, node: &NodeProcess, what: &str, done: impl Fn(&[Sample]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if done(&scrape(http, node).await) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_metrics_move_with_its_traffic_and_a_members_death() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, [a, b, mut c]) = formed_on_one_store(dir.path()).await;
    let http = Http::new();
    http.stock(&a, ["sku-1"]).await;

    // The cluster as each member reports it: one leader, three live.
    let mut leaders = 0.0;
    for node in [&a, &b, &c] {
        let samples = scrape(&http, node).await;
        leaders += value(&samples, "granary_cluster_role", &[("role", "leader")]);
        assert_eq!(value(&samples, "granary_cluster_members", &[]), 3.0);
        assert_eq!(value(&samples, "granary_cluster_members_live", &[]), 3.0);
        assert_eq!(value(&samples, "granary_cluster_fenced", &[]), 0.0);
        assert!(value(&samples, "granary_cluster_term", &[]) >= 1.0);
    }
    assert_eq!(leaders, 1.0, "exactly one member is the leader");

    let a_before = scrape(&http, &a).await;
    let b_before = scrape(&http, &b).await;
    // A cart B owns (it created it), changed and read through A.
    let cart = http.create_cart(&b).await;
    let items = a.url(&format!("/carts/{cart}/items"));
    let added = http
        .post(&items, support::item("sku-1"))
        .await
        .expect("add");
    assert_eq!(added.status, 200, "{added:?}");
    let read = http
        .get(&a.url(&format!("/carts/{cart}")))
        .await
        .expect("get");
    assert_eq!(read.status, 200, "{read:?}");
    let missing = http.get(&a.url("/no/such/route")).await.expect("404");
    assert_eq!(missing.status, 404);
    let a_after = scrape(&http, &a).await;
    let b_after = scrape(&http, &b).await;

    let moved = |before: &[Sample], after: &[Sample], name: &str, labels: &[(&str, &str)]| {
        value(after, name, labels) - value(before, name, labels)
    };
    let requests = "granary_http_request_duration_seconds_count";
    assert_eq!(
        moved(
            &a_before,
            &a_after,
            requests,
            &[
                ("method", "POST"),
                ("route", "/carts/{id}/items"),
                ("status", "200")
            ]
        ),
        1.0,
        "the add, by its route's pattern"
    );
    assert_eq!(
        moved(
            &a_before,
            &a_after,
            requests,
            &[
                ("method", "GET"),
                ("route", "/carts/{id}"),
                ("status", "200")
            ]
        ),
        1.0
    );
    assert_eq!(
        moved(
            &a_before,
            &a_after,
            requests,
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0,
        "a path no route takes is one series, not its path"
    );
    assert!(
        !a_after
            .iter()
            .any(|(_, labels, _)| labels.values().any(|v| v.contains(&cart))),
        "no series names a cart"
    );
    assert!(
        moved(
            &a_before,
            &a_after,
            "granary_grain_forwarded_call_duration_seconds_count",
            &[("kind", "cart"), ("outcome", "ok")]
        ) >= 2.0,
        "the add and the read went to B"
    );
    assert!(
        moved(
            &a_before,
            &a_after,
            "granary_grain_forwarded_call_duration_seconds_sum",
            &[("kind", "cart")]
        ) > 0.0
    );
    // B ran them: its grain, its store.
    assert!(
        moved(
            &b_before,
            &b_after,
            "granary_grain_activations_total",
            &[("kind", "cart")]
        ) >= 1.0
    );
    assert!(value(&b_after, "granary_grains_live", &[("kind", "cart")]) >= 1.0);
    assert!(
        moved(&b_before, &b_after, "granary_store_appends_total", &[]) >= 2.0,
        "created and added"
    );
    assert!(
        moved(
            &b_before,
            &b_after,
            "granary_store_commit_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(
        moved(
            &b_before,
            &b_after,
            "granary_store_appends_per_commit_sum",
            &[]
        ) >= 2.0
    );
    assert_eq!(
        value(&b_after, "granary_store_commits_total", &[]),
        value(&b_after, "granary_store_commit_duration_seconds_count", &[]),
        "every commit counted is timed"
    );

    // Every series the Grafana dashboard in docs/ queries is one a node
    // serves.
    let grafana = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json"),
    )
    .expect("docs/grafana-dashboard.json");
    let grafana: serde_json::Value = serde_json::from_str(&grafana).expect("valid JSON");
    let mut queried = std::collections::BTreeSet::new();
    for panel in grafana["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (at, _) in expr.match_indices("granary_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    for name in &queried {
        assert!(
            a_after.iter().any(|(n, _, _)| n == name),
            "the dashboard queries {name}, which the node does not serve"
        );
    }

    // C dies: A's view drops it, the directory rebuilds, both counted.
    let rebuilds = value(
        &a_after,
        "granary_directory_rebuild_duration_seconds_count",
        &[],
    );
    c.kill9();
    until(&http, &a, "C removed from A's view", |s| {
        value(s, "granary_cluster_members", &[]) == 2.0
            && value(s, "granary_cluster_members_removed_total", &[]) == 1.0
    })
    .await;
    until(&http, &a, "the directory rebuilt after the removal", |s| {
        value(s, "granary_directory_rebuild_duration_seconds_count", &[]) > rebuilds
    })
    .await;
    let samples = scrape(&http, &a).await;
    assert_eq!(value(&samples, "granary_cluster_members_live", &[]), 2.0);
    assert_eq!(value(&samples, "granary_cluster_fenced", &[]), 0.0);
}

/// `granary load` with `args` (stdin closed); its exit code, stdout and
/// stderr.
fn granary_load(args: &[&str], admin_token: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_granary"));
    command.arg("load").args(args).stdin(Stdio::null());
    command.env_remove("GRANARY_ADMIN_TOKEN");
    if let Some(token) = admin_token {
        command.env("GRANARY_ADMIN_TOKEN", token);
    }
    let output = command.output().expect("run granary load");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granary_load_reports_what_the_node_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[]);
    let url = node.url("");
    let http = Http::new();

    // Without the admin token the tool's products must exist: they do not.
    let (code, _, stderr) =
        tokio::task::block_in_place(|| granary_load(&["--node", &url, "--duration", "1s"], None));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("load-sku-0") && stderr.contains("--admin-token"),
        "{stderr}"
    );
    // Bad flags: exit 2, the flag named, nothing sent.
    for (args, flag) in [
        (vec!["--node", "localhost:1", "--duration", "1s"], "--node"),
        (vec!["--node", &url, "--carts", "0"], "--carts"),
        (vec!["--node", &url, "--duration", "soon"], "--duration"),
        (vec!["--node", &url, "--clients", "0"], "--clients"),
    ] {
        let (code, _, stderr) = tokio::task::block_in_place(|| granary_load(&args, None));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let before = scrape(&http, &node).await;

    let (code, stdout, stderr) = tokio::task::block_in_place(|| {
        granary_load(
            &[
                "--node",
                &url,
                "--carts",
                "8",
                "--clients",
                "4",
                "--duration",
                "2s",
                "--json",
            ],
            Some(support::ADMIN_TOKEN),
        )
    });
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    let count = |v: &serde_json::Value| v.as_u64().expect("a count");
    assert_eq!(count(&report["failed"]), 0, "{report}");
    assert_eq!((count(&report["carts"]), count(&report["clients"])), (8, 4));
    let mut sum = 0;
    for op in ["create", "add", "read", "checkout"] {
        let figures = &report["ops"][op];
        assert!(count(&figures["ok"]) > 0, "{op}: {report}");
        sum += count(&figures["ok"]);
        let at = |q: &str| figures[q].as_f64().expect("a latency");
        assert!(
            0.0 < at("p50_ms")
                && at("p50_ms") <= at("p90_ms")
                && at("p90_ms") <= at("p99_ms")
                && at("p99_ms") <= at("p999_ms")
                && at("p999_ms") <= at("max_ms"),
            "{op}: {figures}"
        );
    }
    assert_eq!(sum, count(&report["requests"]), "{report}");
    let bars: u64 = report["histogram"]
        .as_array()
        .expect("bars")
        .iter()
        .map(|bar| count(&bar["count"]))
        .sum();
    assert_eq!(bars, count(&report["requests"]), "every request in one bar");
    // Each journey adds three items before its checkout.
    assert!(count(&report["ops"]["add"]["ok"]) >= 3 * count(&report["checkouts"]));

    // The node saw exactly what the tool says it sent.
    let after = scrape(&http, &node).await;
    let served = |method: &str, route: &str, status: &str| {
        let labels = [("method", method), ("route", route), ("status", status)];
        let name = "granary_http_request_duration_seconds_count";
        (value(&after, name, &labels) - value(&before, name, &labels)) as u64
    };
    assert_eq!(
        served("POST", "/carts", "201"),
        count(&report["ops"]["create"]["ok"])
    );
    assert_eq!(
        served("POST", "/carts/{id}/items", "200"),
        count(&report["ops"]["add"]["ok"])
    );
    assert_eq!(
        served("GET", "/carts/{id}", "200"),
        count(&report["ops"]["read"]["ok"])
    );
    assert_eq!(
        served("POST", "/carts/{id}/checkout", "200"),
        count(&report["checkouts"])
    );

    // Its table, for a person: every operation and the histogram.
    let (code, stdout, stderr) = tokio::task::block_in_place(|| {
        granary_load(
            &["--node", &url, "--carts", "2", "--duration", "1s"],
            Some(support::ADMIN_TOKEN),
        )
    });
    assert_eq!(code, 0, "{stderr}");
    for needle in [
        "create",
        "add",
        "read",
        "checkout",
        "p99 ms",
        "latency, all requests",
        "<=",
    ] {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
}

/// `granary load` over three members counts the answers that were
/// forwarded to the cart's owner; with `--follow-owner` a journey sends its
/// cart's requests where the first forwarded answer said it lives, so at
/// most one request per cart is forwarded (a cart lives where it was
/// created, and nothing moves it here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granary_load_over_members_counts_forwards_and_follows_the_owner_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, [a, b, c]) = formed_on_one_store(dir.path()).await;
    let urls = [a.url(""), b.url(""), c.url("")];
    let run = |follow: bool| {
        let mut args = vec![
            "--carts",
            "12",
            "--clients",
            "4",
            "--duration",
            "2s",
            "--json",
        ];
        for url in &urls {
            args.extend(["--node", url.as_str()]);
        }
        if follow {
            args.push("--follow-owner");
        }
        let (code, stdout, stderr) =
            tokio::task::block_in_place(|| granary_load(&args, Some(support::ADMIN_TOKEN)));
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
        assert_eq!(report["failed"], 0, "{report}");
        let count = |v: &serde_json::Value| v.as_u64().expect("a count");
        (
            count(&report["forwarded"]),
            count(&report["ops"]["create"]["ok"]),
            count(&report["requests"]),
        )
    };
    // Round the members: two in three of each cart's later requests.
    let (forwarded, carts, requests) = run(false);
    assert!(
        carts > 0 && forwarded > carts,
        "{forwarded} of {requests}, {carts} carts"
    );
    // Following the hint: at most the first forwarded request per cart.
    let (forwarded, carts, requests) = run(true);
    assert!(carts > 0, "{requests} requests");
    assert!(
        forwarded <= carts,
        "{forwarded} of {requests}, {carts} carts"
    );
}
