//! The README's "Run a 3-node cluster": `examples/local_cluster.sh` starts
//! three nodes with one command, loads the sample catalog, shows a status
//! with all three live, serves carts through every node at the catalog's
//! prices, and stops the nodes gracefully when stopped.
//! (It runs the binary under test, `GRANARY_BIN`, instead of building a
//! release one; it uses the script's fixed ports 7071–7073 and 8081–8083.)

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::Http;

/// The script's process group: stopped (SIGKILL) when dropped, nodes
/// included, whatever the test did.
struct Script(Child);

impl Script {
    /// Waits for the script to exit; after `limit` its process group is
    /// killed and the test fails.
    fn wait_exit(&mut self, limit: Duration) {
        let group = self.0.id() as libc::pid_t;
        let (exited, watch) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let overdue = watch.recv_timeout(limit).is_err();
            if overdue {
                // SAFETY: killpg(2) on the process group this test started.
                unsafe { libc::killpg(group, libc::SIGKILL) };
            }
            overdue
        });
        self.0.wait().expect("wait for the script");
        let _ = exited.send(());
        let overdue = watchdog.join().expect("watchdog");
        assert!(!overdue, "the script did not stop within {limit:?}");
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let group = self.0.id() as libc::pid_t;
        // SAFETY: killpg(2) on the process group this test started.
        unsafe { libc::killpg(group, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_example_starts_three_members_that_serve_carts() {
    let dir = tempfile::tempdir().unwrap();
    let mut script = Script(
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/local_cluster.sh"
            ))
            .env("GRANARY_BIN", env!("CARGO_BIN_EXE_granary"))
            .env("GRANARY_CLUSTER_DIR", dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run examples/local_cluster.sh"),
    );
    let stdout = script.0.stdout.take().expect("stdout");
    let (lines, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut output = Vec::new();
    loop {
        let line = printed
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the script did not come up; it printed {output:#?}"));
        let done = line.starts_with("HTTP on");
        output.push(line);
        if done {
            break;
        }
    }
    let text = output.join("\n");
    assert!(text.contains("quorum      yes (needs 2 of 3)"), "{text}");
    assert!(text.contains("set 5 products"), "{text}");
    let live_peers = output
        .iter()
        .filter(|l| l.len() > 64 && l.as_bytes()[..64].iter().all(u8::is_ascii_hexdigit))
        .filter(|l| l.split_whitespace().nth(2) == Some("yes"))
        .count();
    assert_eq!(live_peers, 3, "{text}");

    // A cart made through B, changed through C, read through A.
    let http = Http::new();
    let limit = Duration::from_secs(10);
    let created = http
        .send_past_503("POST", "http://127.0.0.1:8082/carts", None, limit)
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let cart = created.json["id"].as_str().expect("id").to_owned();
    let added = http
        .send_past_503(
            "POST",
            &format!("http://127.0.0.1:8083/carts/{cart}/items"),
            Some(support::item("TEA-1")),
            limit,
        )
        .await;
    assert_eq!(added.status, 200, "{added:?}");
    let read = http
        .send_past_503(
            "GET",
            &format!("http://127.0.0.1:8081/carts/{cart}"),
            None,
            limit,
        )
        .await;
    assert_eq!(support::skus(&read.json), ["TEA-1"], "{read:?}");
    // The line is at the sample catalog's price.
    assert_eq!(read.json["lines"][0]["unit_price"], 450, "{read:?}");

    // Stopping the script stops the nodes gracefully.
    let pid = script.0.id() as libc::pid_t;
    // SAFETY: kill(2) on the script this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::task::block_in_place(|| script.wait_exit(Duration::from_secs(30)));
    for name in ["a", "b", "c"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.out"))).unwrap();
        assert!(
            log.lines().any(|l| l.starts_with("granary ready")),
            "{name}: {log}"
        );
    }
    for port in [8081, 8082, 8083] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a node still listens on {port}"
        );
    }
}
