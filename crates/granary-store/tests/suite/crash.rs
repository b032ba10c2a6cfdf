//! Crash test: the test binary re-executes itself as a writer and kills
//! it with SIGKILL mid-stream; every append it acknowledged must be stored.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use granary_store::{EventStore, GrainKey};

use super::{append_request, assert_stream, cart, payloads};

/// Set (to the store's location) in the child: act as the crash writer.
const CRASH_WRITER_ENV: &str = "GRANARY_STORE_CRASH_WRITER";
/// Acknowledgements the parent waits for before killing the child.
const ACKS_BEFORE_KILL: usize = 200;
/// Starts each line `<marker><grain> <version>` the child prints per acknowledged append.
const ACK_MARKER: &str = "granary-ack ";
/// Grains the child writes concurrently, so that kills land amid group commits.
const CRASH_GRAINS: u64 = 4;

/// Kills the child if the parent fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process killed with SIGKILL while appending loses no append it had
/// acknowledged: for every grain the stored stream reaches at least the last
/// acknowledged version, with every event 1..=n intact.
///
/// Call it from a `#[test]` named `test`: the child re-runs that test with
/// the environment variable set and writes to the store `open(location)`.
pub fn sigkill_loses_no_acknowledged_append(
    test: &str,
    location: &str,
    open: fn(&str) -> Arc<dyn EventStore>,
) {
    if let Ok(location) = std::env::var(CRASH_WRITER_ENV) {
        crash_writer(open(&location));
        return;
    }
    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CRASH_WRITER_ENV, location)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the crash writer");
    let mut child = KillOnDrop(child);
    let mut output = BufReader::new(child.0.stdout.take().expect("child stdout"));

    // grain id -> last acknowledged version
    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    let mut acks = 0;
    while acks < ACKS_BEFORE_KILL && read_ack(&mut output, &mut acknowledged) {
        acks += 1;
    }
    assert!(
        acks >= ACKS_BEFORE_KILL,
        "the crash writer stopped after {acks} acknowledgements: {:?}",
        child.0.try_wait()
    );
    child.0.kill().expect("SIGKILL the crash writer");
    let status = child.0.wait().expect("reap the crash writer");
    assert!(
        !status.success(),
        "the crash writer was not killed: {status}"
    );
    // Everything the child printed before it died is an acknowledgement too:
    // drain the pipe so the check covers the child's very last answers.
    while read_ack(&mut output, &mut acknowledged) {}
    assert_eq!(acknowledged.len() as u64, CRASH_GRAINS, "{acknowledged:?}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = open(location);
        for (grain, &last_acked) in &acknowledged {
            let loaded = store.load(&cart(grain)).await.expect("load");
            assert!(
                loaded.version >= last_acked,
                "{grain}: acknowledged up to {last_acked}, stored only up to {}",
                loaded.version
            );
            assert_stream(&loaded, &payloads(grain, 1, loaded.version));
        }
        // The stream continues after the crash.
        let (grain, _) = acknowledged
            .iter()
            .next()
            .expect("some grain was acknowledged");
        let version = store.load(&cart(grain)).await.expect("load").version;
        assert_eq!(
            store
                .append(append_request(
                    &cart(grain),
                    version,
                    payloads(grain, version + 1, 1)
                ))
                .await,
            Ok(version + 1)
        );
    });
}

/// Reads the child's output up to its next acknowledgement and records it
/// in `acknowledged`; false at the end of the output.
fn read_ack(output: &mut impl BufRead, acknowledged: &mut BTreeMap<String, u64>) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        let read = output
            .read_line(&mut line)
            .expect("read the child's output");
        // A line cut short by the kill acknowledges nothing.
        if read == 0 || !line.ends_with('\n') {
            return false;
        }
        // libtest may print `test <name> ... ` on the line the first ack ends.
        let Some((_, ack)) = line.trim_end().split_once(ACK_MARKER) else {
            continue;
        };
        let (grain, version) = ack.split_once(' ').expect("granary-ack <grain> <version>");
        let version: u64 = version.parse().expect("acknowledged version");
        let last = acknowledged.entry(grain.to_owned()).or_default();
        assert_eq!(
            version,
            *last + 1,
            "the child acknowledged {grain} out of order"
        );
        *last = version;
        return true;
    }
}

/// The child's side of the crash test: append forever (until killed), one
/// line `granary-ack <grain> <version>` per acknowledged append, flushed at once.
/// Stops by itself if its parent goes away or after a generous deadline.
fn crash_writer(store: Arc<dyn EventStore>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut writers = Vec::new();
        for n in 0..CRASH_GRAINS {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                let id = format!("crash{n}");
                let key = cart(&id);
                let mut version = 0;
                while Instant::now() < deadline {
                    version = store
                        .append(append_request(&key, version, payloads(&id, version + 1, 1)))
                        .await
                        .expect("crash writer append");
                    if !acknowledge(&key, version) {
                        return;
                    }
                }
            }));
        }
        for writer in writers {
            writer.await.expect("crash writer task");
        }
    });
}

/// Prints one acknowledgement; false once the parent stopped listening.
fn acknowledge(key: &GrainKey, version: u64) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ACK_MARKER}{} {version}", key.id)
        .and_then(|()| out.flush())
        .is_ok()
}
