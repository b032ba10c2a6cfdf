//! A real PostgreSQL server for tests.
//!
//! With `GRANARY_TEST_PG` set (a `postgres://` URL of a server the tests
//! may create databases on) the tests use it. Otherwise the harness starts
//! a throwaway server itself: `initdb` and `pg_ctl` from Debian's
//! `postgresql` package, in a temporary directory, on a free port of
//! 127.0.0.1, removed again when the test process ends (a small watcher
//! process stops it even if the tests panic or are killed).
//!
//! Without a server: under `CI=true` a test that asks for one fails,
//! elsewhere it is skipped with a message that says how to run it.
//!
//! Each test asks for a fresh database ([`Server::fresh_database`]), so
//! tests sharing a server never see each other's data.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How to get a server when none is found.
pub const HOW_TO_RUN: &str = "install Debian's `postgresql` package (./scripts/test.sh does) \
or set GRANARY_TEST_PG=postgres://USER:PASSWORD@HOST:PORT/postgres";

/// A PostgreSQL server the tests may use.
pub struct Server {
    /// `postgres://…/` without a database name.
    base: String,
    /// Set when this process started the server (and may stop it).
    own: Option<OwnServer>,
    databases: AtomicU32,
}

struct OwnServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Keeps the directory (data, socket, log) until the server is dropped.
    _dir: tempfile::TempDir,
    run_as: Option<String>,
    /// More `-c` settings for the server (TLS).
    settings: String,
    running: Mutex<bool>,
}

/// The process-wide shared server: started on first use.
pub fn shared() -> Option<Arc<Server>> {
    static SHARED: OnceLock<Option<Arc<Server>>> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("GRANARY_TEST_PG") {
            Ok(url) if !url.trim().is_empty() => Some(Arc::new(Server::external(&url))),
            _ => Server::start(None).map(Arc::new),
        })
        .clone()
        .or_else(skip_or_fail)
}

/// A server of this test's own, which it may stop and start (outage
/// tests). Always a throwaway server, whatever `GRANARY_TEST_PG` says.
pub fn private() -> Option<Server> {
    Server::start(None).or_else(skip_or_fail)
}

/// Certificates for a TLS test, PEM: a certificate authority, and a
/// server certificate it signed for 127.0.0.1 with its key.
pub struct TestCertificates {
    pub ca: String,
    pub server: String,
    pub server_key: String,
}

/// A fresh certificate authority (each call another) and a server
/// certificate it signed for 127.0.0.1.
pub fn test_certificates() -> TestCertificates {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "granary test CA");
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let server_pem = server
        .signed_by(&server_key, &issuer)
        .expect("server certificate")
        .pem();
    TestCertificates {
        ca: ca_pem,
        server: server_pem,
        server_key: server_key.serialize_pem(),
    }
}

/// A throwaway server that takes TCP connections over TLS only (`hostssl`
/// in pg_hba.conf: a plaintext client is refused), presenting `cert_pem`
/// (a chain, PEM) with `key_pem`.
pub fn private_with_tls(cert_pem: &str, key_pem: &str) -> Option<Server> {
    Server::start(Some((cert_pem, key_pem))).or_else(skip_or_fail)
}

fn skip_or_fail<T>() -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("this PostgreSQL test found no server (CI=true, so it fails): {HOW_TO_RUN}");
    }
    eprintln!("skipped: no PostgreSQL server for this test; to run it, {HOW_TO_RUN}");
    None
}

impl Server {
    fn external(url: &str) -> Server {
        let url = url.trim().trim_end_matches('/');
        // Drop a trailing database name: fresh databases are made per test.
        let base = match url.rfind('/') {
            Some(slash) if slash > "postgres://".len() => url[..slash].to_owned(),
            _ => url.to_owned(),
        };
        Server {
            base,
            own: None,
            databases: AtomicU32::new(0),
        }
    }

    /// Starts a throwaway server (with TLS: a certificate chain and key,
    /// PEM), or `None` without PostgreSQL binaries.
    fn start(tls: Option<(&str, &str)>) -> Option<Server> {
        let bin = find_bin()?;
        let run_as = is_root().then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new()
            .prefix("granary-pg-")
            .tempdir()
            .expect("create a temporary directory for PostgreSQL");
        let data = dir.path().join("data");
        if let Some(user) = &run_as {
            // initdb refuses to run as root; the server runs as `postgres`.
            let status = Command::new("chown")
                .args(["-R", &format!("{user}:{user}")])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "cannot hand {} to {user}",
                dir.path().display()
            );
        }
        let mut initdb = command(&run_as, &bin.join("initdb"));
        initdb
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data);
        run_quietly(&mut initdb, "initdb");
        let settings = match tls {
            Some((cert, key)) => {
                serve_tls_only(&data, cert, key, &run_as);
                "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".to_owned()
            }
            None => String::new(),
        };
        let port = free_port();
        let server = OwnServer {
            bin,
            data,
            port,
            _dir: dir,
            run_as,
            settings,
            running: Mutex::new(false),
        };
        server.start();
        watch_for_exit(&server);
        Some(Server {
            base: format!("postgres://postgres@127.0.0.1:{port}"),
            own: Some(server),
            databases: AtomicU32::new(0),
        })
    }

    /// A new, empty database on this server; its URL.
    pub fn fresh_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("granary_test_{}_{n}", std::process::id());
        self.psql(&format!("CREATE DATABASE {name}"));
        format!("{}/{name}", self.base)
    }

    /// Runs one SQL statement on the `postgres` database with `psql`.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs one SQL statement on `database` with `psql`; its output.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let psql = match &self.own {
            Some(own) => own.bin.join("psql"),
            None => find_bin().map_or_else(|| PathBuf::from("psql"), |b| b.join("psql")),
        };
        let output = Command::new(psql)
            .arg(format!("{}/{database}", self.base))
            .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The server's URL without a database name.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Stops the server (fast shutdown: sessions are cut). Only for a
    /// server this process started.
    pub fn stop(&self) {
        self.own
            .as_ref()
            .expect("only a throwaway server can be stopped")
            .stop();
    }

    /// Starts a stopped server again on the same port and data.
    pub fn restart(&self) {
        self.own
            .as_ref()
            .expect("only a throwaway server can be started")
            .start();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(own) = &self.own {
            own.stop();
        }
    }
}

impl OwnServer {
    fn start(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if *running {
            return;
        }
        let socket_dir = self.data.parent().expect("data has a parent");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on {}",
            self.port,
            socket_dir.display(),
            self.settings
        );
        let mut start = command(&self.run_as, &self.bin.join("pg_ctl"));
        start
            .args(["start", "-w", "-t", "60", "-l"])
            .arg(socket_dir.join("server.log"))
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options]);
        run_quietly(&mut start, "pg_ctl start");
        // pg_ctl -w waits for the server; check it takes connections on TCP.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not open its port"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        *running = true;
    }

    fn stop(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if !*running {
            return;
        }
        let mut stop = command(&self.run_as, &self.bin.join("pg_ctl"));
        stop.args(["stop", "-w", "-m", "fast", "-D"])
            .arg(&self.data);
        run_quietly(&mut stop, "pg_ctl stop");
        *running = false;
    }
}

/// Puts the server's certificate and key in its data directory (the key
/// readable by the server's user only, as PostgreSQL demands) and makes
/// every TCP rule of pg_hba.conf `hostssl`.
fn serve_tls_only(data: &Path, cert: &str, key: &str, run_as: &Option<String>) {
    use std::os::unix::fs::PermissionsExt;
    let (cert_path, key_path) = (data.join("server.crt"), data.join("server.key"));
    std::fs::write(&cert_path, cert).expect("write server.crt");
    std::fs::write(&key_path, key).expect("write server.key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod server.key");
    if let Some(user) = run_as {
        let status = Command::new("chown")
            .arg(format!("{user}:{user}"))
            .args([&cert_path, &key_path])
            .status()
            .expect("run chown");
        assert!(status.success(), "cannot hand the TLS files to {user}");
    }
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let rules: String = rules
        .lines()
        .map(|line| match line.strip_prefix("host ") {
            Some(rest) => format!("hostssl {rest}\n"),
            None => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&hba, rules).expect("write pg_hba.conf");
}

/// A watcher that stops the server and removes its directory once this
/// process is gone, however it ends (statics are never dropped).
fn watch_for_exit(server: &OwnServer) {
    let pg_ctl = server.bin.join("pg_ctl");
    let stop = match &server.run_as {
        Some(user) => format!(
            "runuser -u {user} -- '{}' stop -m immediate -D '{}'",
            pg_ctl.display(),
            server.data.display()
        ),
        None => format!(
            "'{}' stop -m immediate -D '{}'",
            pg_ctl.display(),
            server.data.display()
        ),
    };
    let dir = server.data.parent().expect("data has a parent");
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

fn command(run_as: &Option<String>, program: &Path) -> Command {
    match run_as {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn run_quietly(command: &mut Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`, or the
/// directory of an `initdb` on PATH.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}
