//! The dashboard in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`, driven by selenium; installed by
//! `scripts/install-chromium.sh`, which `scripts/test.sh` runs) opens
//! `/dashboard` on a member of a real 3-member cluster under light load,
//! sees three live members, and after one is killed sees two within a few
//! seconds. The browser's screenshots are kept under
//! `target/dashboard-screenshots/`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::Http;
use support::cluster::formed_on_one_store;

/// The Python with selenium: `GRANARY_BROWSER_PYTHON`, or the one the
/// install script puts under `target/`.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("GRANARY_BROWSER_PYTHON") {
        return PathBuf::from(path);
    }
    support::target_dir().join("browser-venv/bin/python")
}

/// Adds items to `carts` through every member in turn until `stop`.
async fn shop(http: Http, nodes: Vec<String>, carts: Vec<String>, stop: Arc<AtomicBool>) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let url = format!(
            "{}/carts/{}/items",
            nodes[n % nodes.len()],
            carts[n % carts.len()]
        );
        // Answers do not matter here (a member is killed meanwhile).
        let _ = http.post(&url, support::item("sku-1")).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_members_and_a_killed_one_leaving() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-chromium.sh (scripts/test.sh does)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (_store, [a, b, mut c]) = formed_on_one_store(dir.path()).await;
    let http = Http::new();
    http.stock(&a, ["sku-1"]).await;
    let mut carts = Vec::new();
    for node in [&a, &b, &a, &b] {
        carts.push(http.create_cart(node).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(shop(
        http.clone(),
        vec![a.url(""), b.url("")],
        carts,
        stop.clone(),
    ));

    // What the page polls, read directly: every member answers for itself.
    let state = http.get(&a.url("/dashboard/state")).await.expect("state");
    assert_eq!(state.status, 200, "{state:?}");
    let members = state.json["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{}", state.json);
    assert!(
        members
            .iter()
            .all(|m| m["reachable"] == true && m["fenced"] == false),
        "{}",
        state.json
    );
    assert_eq!(
        members.iter().filter(|m| m["role"] == "leader").count(),
        1,
        "{}",
        state.json
    );
    let grains: u64 = members
        .iter()
        .map(|m| m["grains"].as_u64().expect("grains"))
        .sum();
    assert!(
        grains >= 4,
        "the four carts (and the product) are live: {}",
        state.json
    );

    let shots = support::target_dir().join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browse.py");
    let mut browser = Command::new(&python)
        .arg(&script)
        .arg(a.url("/dashboard"))
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the browser script");
    let mut stdout = BufReader::new(browser.stdout.take().expect("stdout"));
    let mut lines = Vec::new();
    let ready = tokio::task::block_in_place(|| {
        let mut line = String::new();
        while stdout.read_line(&mut line).expect("read") > 0 {
            let done = line.trim() == "READY";
            lines.push(std::mem::take(&mut line));
            if done {
                return true;
            }
        }
        false
    });
    if !ready {
        let output = browser.wait_with_output().expect("browser");
        panic!(
            "the page never showed three live members: {lines:?}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let three: serde_json::Value = serde_json::from_str(&lines[0]).expect("step JSON");
    assert_eq!(three["rows"].as_array().expect("rows").len(), 3, "{three}");
    assert_eq!(three["title"], "Granary cluster");

    c.kill9();
    writeln!(browser.stdin.as_mut().expect("stdin"), "stopped").expect("tell the script");
    let output = tokio::task::block_in_place(|| {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
        (browser.wait().expect("browser"), rest)
    });
    let stderr = browser
        .stderr
        .take()
        .map(|mut e| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).ok();
            text
        })
        .unwrap_or_default();
    assert!(
        output.0.success(),
        "the page did not show two live members within the script's 10 s: {}\n{stderr}",
        output.1
    );
    let two: serde_json::Value = serde_json::from_str(output.1.trim()).expect("step JSON");
    let rows = two["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{two}");
    assert!(
        !rows.iter().any(|r| r["id"] == c.node_id.as_str()),
        "the killed member is gone: {two}"
    );
    assert!(
        two["events"].as_array().expect("events").iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.contains(&c.node_id[..12]) && e.contains("left"))),
        "the page lists the departure: {two}"
    );
    println!(
        "the page showed three live members after {} s, and two {} s after the kill",
        three["seconds"], two["seconds"]
    );
    for shot in ["three-members.png", "two-members.png"] {
        let bytes = std::fs::read(shots.join(shot)).expect("a screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
}
