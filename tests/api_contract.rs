//! The API against its own OpenAPI document: schemathesis (installed by
//! `scripts/install-schemathesis.sh`, which `scripts/test.sh` runs) reads
//! `/openapi.json` from a real node and sends it requests the document
//! calls valid and ones it calls invalid, with every check it has: no
//! valid request refused as malformed, no invalid one taken, no status or
//! body the document does not state, no server error.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::{ADMIN_TOKEN, Http, NodeProcess};

/// The `st` command: `GRANARY_SCHEMATHESIS`, or the one the install script
/// puts under `target/`.
fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("GRANARY_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    support::target_dir().join("contract-venv/bin/st")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} is missing: run scripts/install-schemathesis.sh (scripts/test.sh does)",
        st.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    // A product the generated adds can find now and then (the document's
    // example sku), with stock for checkouts.
    Http::new().set_product(&node, "sku-1", 1_000_000).await;
    let seed = std::env::var("GRANARY_CONTRACT_SEED").unwrap_or_else(|_| "1".into());
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/contract/schemathesis.toml");
    let url = node.url("/openapi.json");
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let reports = dir.path().join("report");
    // Its working directory gets its cache (`.schemathesis/`): the test's
    // own, not the checkout.
    let workdir = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&st)
            .current_dir(&workdir)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &url, "--checks", "all", "-H", &auth])
            .args(["--max-examples", "30", "--seed", &seed, "--workers", "1"])
            .args(["--request-timeout", "20"])
            .arg("--report-dir")
            .arg(&reports)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found requests the server and its document disagree on (seed {}):\n{stdout}\n{stderr}",
        std::env::var("GRANARY_CONTRACT_SEED").unwrap_or_else(|_| "1".into()),
    );
    // It ran, and tested every operation the document has.
    let document = Http::new().get(&node.url("/openapi.json")).await.unwrap();
    let operations: usize = document.json["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |methods| methods.len()))
        .sum();
    assert!(operations > 20, "{operations} operations");
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{stdout}"
    );
}
