//! The node's configuration: one struct, every knob documented, settable
//! from a TOML file, `GRANARY_*` environment variables and command-line
//! flags (later sources win: defaults < file < env < flags).
//!
//! Errors name the key that was wrong, in the spelling of the source it
//! came from (`http` in the file, `GRANARY_HTTP` in the environment).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Where the node keeps its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded engine in `<data_dir>/events.db` (the default).
    Embedded,
    /// The embedded engine in a file of the operator's choice; nodes on one
    /// machine that name the same file share one store.
    EmbeddedAt(PathBuf),
    /// A PostgreSQL database (`postgres://user:password@host:port/db`),
    /// shared by nodes on any number of machines.
    Postgres(String),
}

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Node identity and local files.
    pub data_dir: PathBuf,
    /// The event store.
    pub store: StoreLocation,
    /// Address the HTTP API listens on.
    pub http: SocketAddr,
    /// Address the gRPC ControlPlane listens on.
    pub grpc: SocketAddr,
    /// The host (`HOST:PORT`) this node reports in `Ping` and uses as its
    /// name in the cluster. Defaults to the gRPC address.
    pub advertise: String,
    /// The `HOST:PORT` clients reach this node's HTTP API at, which other
    /// members name (`Granary-Owner`) when they forward a request for a
    /// grain it owns. `None`: the HTTP address it listens on, with the
    /// host of `advertise` if it listens on every interface.
    pub advertise_http: Option<String>,
    /// A grain with no call for this long is passivated.
    pub idle_timeout: Duration,
    /// A live grain whose mailbox took no call for this long goes dormant:
    /// its actor stops, its state stays in memory (about a quarter of the
    /// memory); zero keeps every live grain's actor.
    pub doze_after: Duration,
    /// Most grains live in memory at once; the least recently used beyond
    /// it are evicted.
    pub max_live_grains: usize,
    /// A snapshot is stored every this many events of a grain.
    pub snapshot_every: u64,
    /// Largest HTTP request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a stopping node waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// `HOST:PORT` gRPC addresses of members to ask for admission when this
    /// node has no cluster state yet. Empty: found a new cluster.
    pub join: Vec<String>,
    /// How often members heartbeat each other.
    pub heartbeat_every: Duration,
    /// Plaintext between members instead of mutual TLS (development only;
    /// logged as a warning at start).
    pub insecure_cluster: bool,
    /// A join token a member made, for `join` (`granary token create`).
    pub token: Option<crate::security::tokens::JoinToken>,
    /// A member that cannot see a majority for this long stops serving.
    pub fence_after: Duration,
    /// A member silent this long (to a majority) is removed and its grains
    /// re-homed. Must exceed `fence_after` by two heartbeats.
    pub dead_after: Duration,
    /// The admin API's bearer token (catalog and stock); `None`: the admin
    /// API is off.
    pub admin_token: Option<String>,
    /// How long checkout holds stock before it is confirmed; a reservation
    /// not confirmed by then is released.
    pub reservation_hold: Duration,
    /// The shop front's `cartid` cookie is `Secure` (sent over HTTPS only).
    pub secure_cookies: bool,
    /// A request's body must arrive within this once its handler reads it
    /// (408 otherwise); the headers within actix-web's own 5 s.
    pub body_read_timeout: Duration,
    /// Most HTTP connections open at once; beyond it new ones wait in the
    /// listen backlog. Below the process's open-file limit.
    pub max_connections: usize,
    /// How many HTTP worker threads the node runs, and as many grain
    /// threads (default: one of each per core the process may use; lower
    /// it when members share a machine).
    pub threads: usize,
}

/// Most threads of each kind a node runs (a caller of the grain-call link
/// refuses a member that says it has more).
pub const MAX_THREADS: usize = 1024;

/// One thread of each kind per core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .min(MAX_THREADS)
}

/// Files a node keeps for itself beyond its HTTP connections: the store,
/// members' and clients' gRPC connections, logs.
const FILES_KEPT: u64 = 512;

/// The process's open-file limit (soft), raised to its hard limit (at most
/// 65,536) the first time it is asked, as servers do.
pub fn open_file_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct
        // passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return 1024;
            }
            let wanted = limit.rlim_max.min(65_536);
            if wanted > limit.rlim_cur {
                let raised = libc::rlimit {
                    rlim_cur: wanted,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = wanted;
                }
            }
        }
        limit.rlim_cur
    })
}

/// The default cap on HTTP connections: half the open-file limit (after
/// what the node keeps for itself), at most 10,000.
pub fn default_max_connections() -> usize {
    (open_file_limit().saturating_sub(FILES_KEPT) / 2).clamp(16, 10_000) as usize
}

impl NodeConfig {
    /// The cluster's clocks, in the core's terms (election timeouts follow
    /// the heartbeat: 5 to 9 of them).
    pub fn timing(&self) -> granary_cluster_core::Timing {
        let heartbeat = self.heartbeat_every.as_millis() as u64;
        granary_cluster_core::Timing {
            heartbeat_every: heartbeat,
            fence_after: self.fence_after.as_millis() as u64,
            dead_after: self.dead_after.as_millis() as u64,
            election_min: heartbeat * 5,
            election_max: heartbeat * 9,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        let grpc: SocketAddr = ([127, 0, 0, 1], 7070).into();
        NodeConfig {
            data_dir: PathBuf::from("granary-data"),
            store: StoreLocation::Embedded,
            http: ([127, 0, 0, 1], 8080).into(),
            grpc,
            advertise: grpc.to_string(),
            advertise_http: None,
            idle_timeout: Duration::from_secs(15 * 60),
            doze_after: Duration::from_secs(10),
            max_live_grains: 1_000_000,
            snapshot_every: 64,
            max_body_bytes: 64 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            join: Vec::new(),
            heartbeat_every: Duration::from_millis(100),
            fence_after: Duration::from_millis(600),
            dead_after: Duration::from_millis(1_000),
            insecure_cluster: false,
            token: None,
            admin_token: None,
            reservation_hold: Duration::from_secs(120),
            secure_cookies: false,
            body_read_timeout: Duration::from_secs(5),
            max_connections: default_max_connections(),
            threads: default_threads(),
        }
    }
}

impl NodeConfig {
    /// The embedded store's file.
    pub fn store_path(&self) -> PathBuf {
        match &self.store {
            StoreLocation::Embedded => self.data_dir.join("events.db"),
            StoreLocation::EmbeddedAt(path) if path.is_dir() => path.join("events.db"),
            StoreLocation::EmbeddedAt(path) => path.clone(),
            StoreLocation::Postgres(_) => self.data_dir.join("events.db"),
        }
    }

    /// The store, for logs: a file path, or the database without
    /// credentials.
    pub fn store_description(&self) -> String {
        match &self.store {
            StoreLocation::Postgres(url) => granary_store::PostgresStore::describe(url),
            _ => self.store_path().display().to_string(),
        }
    }
}

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
}

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// One source's settings; every field optional. The same struct is read
/// from the file, the environment and the flags.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    pub data_dir: Option<String>,
    pub store: Option<String>,
    pub http: Option<String>,
    pub grpc: Option<String>,
    pub advertise: Option<String>,
    pub advertise_http: Option<String>,
    pub idle_timeout: Option<String>,
    pub doze_after: Option<String>,
    pub max_live_grains: Option<u64>,
    pub snapshot_every: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub shutdown_timeout: Option<String>,
    pub join: Option<Vec<String>>,
    pub heartbeat_every: Option<String>,
    pub fence_after: Option<String>,
    pub dead_after: Option<String>,
    pub insecure_cluster: Option<bool>,
    pub token: Option<String>,
    pub admin_token: Option<String>,
    pub reservation_hold: Option<String>,
    pub secure_cookies: Option<bool>,
    pub body_read_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub threads: Option<u64>,
}

/// The keys, as spelled in the file; the environment uses `GRANARY_` and
/// upper case.
pub const KEYS: &[&str] = &[
    "data_dir",
    "store",
    "http",
    "grpc",
    "advertise",
    "advertise_http",
    "idle_timeout",
    "doze_after",
    "max_live_grains",
    "snapshot_every",
    "max_body_bytes",
    "shutdown_timeout",
    "join",
    "heartbeat_every",
    "fence_after",
    "dead_after",
    "insecure_cluster",
    "token",
    "admin_token",
    "reservation_hold",
    "secure_cookies",
    "body_read_timeout",
    "max_connections",
    "threads",
];

impl ConfigLayer {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| {
            // toml reports where the bad value is; name the key written
            // on that line, so the error says which setting to fix.
            let key = e.span().and_then(|span| {
                let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
                let line = &text[line_start..];
                line.split_once('=').map(|(key, _)| key.trim().to_owned())
            });
            let reason = match key {
                Some(key) if !key.is_empty() => format!("key `{key}`: {}", e.message()),
                _ => e.message().to_owned(),
            };
            ConfigError::File {
                path: path.display().to_string(),
                reason,
            }
        })
    }

    /// Reads `GRANARY_<KEY>` variables from `vars`.
    pub fn from_env(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |key: &str| vars.get(&env_name(key)).cloned();
        let number = |key: &str| -> Result<Option<u64>, ConfigError> {
            get(key)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        ConfigError::invalid(&env_name(key), format!("{v:?} is not a whole number"))
                    })
                })
                .transpose()
        };
        let boolean = |key: &str| -> Result<Option<bool>, ConfigError> {
            get(key)
                .map(|v| match v.trim() {
                    "true" | "1" | "yes" => Ok(true),
                    "false" | "0" | "no" => Ok(false),
                    other => Err(ConfigError::invalid(
                        &env_name(key),
                        format!("{other:?} is not true or false"),
                    )),
                })
                .transpose()
        };
        Ok(ConfigLayer {
            data_dir: get("data_dir"),
            store: get("store"),
            http: get("http"),
            grpc: get("grpc"),
            advertise: get("advertise"),
            advertise_http: get("advertise_http"),
            idle_timeout: get("idle_timeout"),
            doze_after: get("doze_after"),
            max_live_grains: number("max_live_grains")?,
            snapshot_every: number("snapshot_every")?,
            max_body_bytes: number("max_body_bytes")?,
            shutdown_timeout: get("shutdown_timeout"),
            // Comma-separated in the environment.
            join: get("join").map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            heartbeat_every: get("heartbeat_every"),
            fence_after: get("fence_after"),
            dead_after: get("dead_after"),
            insecure_cluster: boolean("insecure_cluster")?,
            token: get("token"),
            admin_token: get("admin_token"),
            reservation_hold: get("reservation_hold"),
            secure_cookies: boolean("secure_cookies")?,
            body_read_timeout: get("body_read_timeout"),
            max_connections: number("max_connections")?,
            threads: number("threads")?,
        })
    }

    /// `other`'s settings over this one's.
    pub fn overlay(self, other: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            data_dir: other.data_dir.or(self.data_dir),
            store: other.store.or(self.store),
            http: other.http.or(self.http),
            grpc: other.grpc.or(self.grpc),
            advertise: other.advertise.or(self.advertise),
            advertise_http: other.advertise_http.or(self.advertise_http),
            idle_timeout: other.idle_timeout.or(self.idle_timeout),
            doze_after: other.doze_after.or(self.doze_after),
            max_live_grains: other.max_live_grains.or(self.max_live_grains),
            snapshot_every: other.snapshot_every.or(self.snapshot_every),
            max_body_bytes: other.max_body_bytes.or(self.max_body_bytes),
            shutdown_timeout: other.shutdown_timeout.or(self.shutdown_timeout),
            join: other.join.or(self.join),
            heartbeat_every: other.heartbeat_every.or(self.heartbeat_every),
            fence_after: other.fence_after.or(self.fence_after),
            insecure_cluster: other.insecure_cluster.or(self.insecure_cluster),
            token: other.token.or(self.token),
            dead_after: other.dead_after.or(self.dead_after),
            admin_token: other.admin_token.or(self.admin_token),
            reservation_hold: other.reservation_hold.or(self.reservation_hold),
            secure_cookies: other.secure_cookies.or(self.secure_cookies),
            body_read_timeout: other.body_read_timeout.or(self.body_read_timeout),
            max_connections: other.max_connections.or(self.max_connections),
            threads: other.threads.or(self.threads),
        }
    }

    /// Validates the merged settings into a [`NodeConfig`]. `source` says how
    /// to spell a key in errors: the env spelling when `env_value_of` says
    /// the value came from the environment.
    pub fn resolve(self, key_name: impl Fn(&str) -> String) -> Result<NodeConfig, ConfigError> {
        let defaults = NodeConfig::default();
        let invalid = |key: &str, reason: String| ConfigError::invalid(&key_name(key), reason);
        let addr = |key: &str,
                    value: Option<String>,
                    default: SocketAddr|
         -> Result<SocketAddr, ConfigError> {
            match value {
                None => Ok(default),
                Some(v) => SocketAddr::from_str(v.trim()).map_err(|_| {
                    invalid(key, format!("{v:?} is not an address like 127.0.0.1:8080"))
                }),
            }
        };
        let duration = |key: &str,
                        value: Option<String>,
                        default: Duration|
         -> Result<Duration, ConfigError> {
            match value {
                None => Ok(default),
                Some(v) => parse_duration(&v).map_err(|reason| invalid(key, reason)),
            }
        };
        let data_dir = match self.data_dir {
            Some(d) if d.trim().is_empty() => {
                return Err(invalid("data_dir", "must not be empty".into()));
            }
            Some(d) => PathBuf::from(d),
            None => defaults.data_dir,
        };
        let store = match self.store.as_deref().map(str::trim) {
            None | Some("") | Some("embedded") => StoreLocation::Embedded,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                granary_store::PostgresStore::check_url(url)
                    .map_err(|reason| invalid("store", reason))?;
                StoreLocation::Postgres(url.to_owned())
            }
            Some(url) if url.contains("://") => {
                return Err(invalid(
                    "store",
                    format!(
                        "{}: unknown store scheme; give a file path or a postgres:// URL",
                        granary_store::PostgresStore::describe(url)
                    ),
                ));
            }
            Some(path) => StoreLocation::EmbeddedAt(PathBuf::from(path)),
        };
        let http = addr("http", self.http, defaults.http)?;
        let grpc = addr("grpc", self.grpc, defaults.grpc)?;
        let advertise = match self.advertise {
            None => grpc.to_string(),
            Some(a) => {
                let a = a.trim().to_owned();
                if !valid_host_port(&a) {
                    return Err(invalid("advertise", format!("{a:?} is not HOST:PORT")));
                }
                a
            }
        };
        let advertise_http = match self.advertise_http {
            None => None,
            Some(a) => {
                let a = a.trim().to_owned();
                if !valid_http_address(&a) {
                    return Err(invalid(
                        "advertise_http",
                        format!("{a:?} is not HOST:PORT (visible ASCII, no '/', '?', '#' or '@')"),
                    ));
                }
                Some(a)
            }
        };
        let idle_timeout = duration("idle_timeout", self.idle_timeout, defaults.idle_timeout)?;
        if idle_timeout.is_zero() {
            return Err(invalid("idle_timeout", "must be greater than zero".into()));
        }
        let doze_after = duration("doze_after", self.doze_after, defaults.doze_after)?;
        let max_live_grains = match self.max_live_grains {
            None => defaults.max_live_grains,
            Some(0) => return Err(invalid("max_live_grains", "must be at least 1".into())),
            Some(n) => {
                usize::try_from(n).map_err(|_| invalid("max_live_grains", "too large".into()))?
            }
        };
        let max_body_bytes = match self.max_body_bytes {
            None => defaults.max_body_bytes,
            Some(n) if !(1024..=16 * 1024 * 1024).contains(&n) => {
                return Err(invalid(
                    "max_body_bytes",
                    format!("{n} is outside 1024..=16777216"),
                ));
            }
            Some(n) => n as usize,
        };
        let join = self.join.unwrap_or_default();
        if join.len() > 32 {
            return Err(invalid("join", "at most 32 seeds".into()));
        }
        if let Some(bad) = join.iter().find(|seed| !valid_host_port(seed)) {
            return Err(invalid("join", format!("{bad:?} is not HOST:PORT")));
        }
        let heartbeat_every = duration(
            "heartbeat_every",
            self.heartbeat_every,
            defaults.heartbeat_every,
        )?;
        let fence_after = duration("fence_after", self.fence_after, defaults.fence_after)?;
        let dead_after = duration("dead_after", self.dead_after, defaults.dead_after)?;
        let timing_check = NodeConfig {
            heartbeat_every,
            fence_after,
            dead_after,
            ..NodeConfig::default()
        }
        .timing()
        .validate();
        if let Err(err) = timing_check {
            let key = match err {
                granary_cluster_core::TimingError::ZeroHeartbeat
                | granary_cluster_core::TimingError::BadElection => "heartbeat_every",
                granary_cluster_core::TimingError::FenceTooShort { .. } => "fence_after",
                granary_cluster_core::TimingError::DeadTooSoon { .. } => "dead_after",
            };
            return Err(invalid(key, err.to_string()));
        }
        Ok(NodeConfig {
            data_dir,
            store,
            http,
            grpc,
            advertise,
            advertise_http,
            idle_timeout,
            doze_after,
            max_live_grains,
            snapshot_every: self.snapshot_every.unwrap_or(defaults.snapshot_every),
            max_body_bytes,
            shutdown_timeout: duration(
                "shutdown_timeout",
                self.shutdown_timeout,
                defaults.shutdown_timeout,
            )?,
            join,
            heartbeat_every,
            fence_after,
            dead_after,
            insecure_cluster: self.insecure_cluster.unwrap_or(false),
            token: match self.token.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(text.parse().map_err(|e: String| invalid("token", e))?),
            },
            admin_token: match self.admin_token.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(token) if token.len() < 16 || token.len() > 256 => {
                    return Err(invalid(
                        "admin_token",
                        "an admin token is 16..=256 characters (a long random string)".into(),
                    ));
                }
                Some(token) if token.chars().any(|c| c.is_control() || c.is_whitespace()) => {
                    return Err(invalid(
                        "admin_token",
                        "an admin token has no spaces or control characters".into(),
                    ));
                }
                Some(token) => Some(token.to_owned()),
            },
            reservation_hold: {
                let hold = duration(
                    "reservation_hold",
                    self.reservation_hold,
                    defaults.reservation_hold,
                )?;
                if hold < Duration::from_secs(1) || hold > Duration::from_secs(24 * 3600) {
                    return Err(invalid(
                        "reservation_hold",
                        "must be between 1s and 24h".into(),
                    ));
                }
                hold
            },
            secure_cookies: self.secure_cookies.unwrap_or(false),
            body_read_timeout: {
                let limit = duration(
                    "body_read_timeout",
                    self.body_read_timeout,
                    defaults.body_read_timeout,
                )?;
                if limit < Duration::from_millis(100) || limit > Duration::from_secs(300) {
                    return Err(invalid(
                        "body_read_timeout",
                        "must be between 100ms and 5m".into(),
                    ));
                }
                limit
            },
            max_connections: match self.max_connections {
                None => default_max_connections(),
                Some(n) if n < 16 => {
                    return Err(invalid("max_connections", "must be at least 16".into()));
                }
                Some(n) if n.saturating_add(FILES_KEPT) > open_file_limit() => {
                    return Err(invalid(
                        "max_connections",
                        format!(
                            "must leave {FILES_KEPT} of the process's open-file limit ({}) to the node; raise the limit (ulimit -n) or lower this",
                            open_file_limit()
                        ),
                    ));
                }
                Some(n) => n as usize,
            },
            threads: match self.threads {
                None => default_threads(),
                Some(n) if !(1..=MAX_THREADS as u64).contains(&n) => {
                    return Err(invalid(
                        "threads",
                        format!("{n} is outside 1..={MAX_THREADS}"),
                    ));
                }
                Some(n) => n as usize,
            },
        })
    }
}

/// `GRANARY_DATA_DIR` for `data_dir`.
pub fn env_name(key: &str) -> String {
    format!("GRANARY_{}", key.to_ascii_uppercase())
}

/// Builds the node's configuration from a file (if any), the environment
/// and the flags. Keys are named in errors as the source that set them
/// spells them.
pub fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    flags: ConfigLayer,
) -> Result<NodeConfig, ConfigError> {
    let from_file = match file {
        Some(path) => ConfigLayer::from_file(path)?,
        None => ConfigLayer::default(),
    };
    let from_env = ConfigLayer::from_env(env)?;
    let flag_set = flags.clone();
    let env_set = from_env.clone();
    let merged = from_file.overlay(from_env).overlay(flags);
    merged.resolve(|key| {
        if is_set(&flag_set, key) {
            format!("--{}", key.replace('_', "-"))
        } else if is_set(&env_set, key) {
            env_name(key)
        } else {
            key.to_owned()
        }
    })
}

fn is_set(layer: &ConfigLayer, key: &str) -> bool {
    match key {
        "data_dir" => layer.data_dir.is_some(),
        "store" => layer.store.is_some(),
        "http" => layer.http.is_some(),
        "grpc" => layer.grpc.is_some(),
        "advertise" => layer.advertise.is_some(),
        "advertise_http" => layer.advertise_http.is_some(),
        "idle_timeout" => layer.idle_timeout.is_some(),
        "doze_after" => layer.doze_after.is_some(),
        "max_live_grains" => layer.max_live_grains.is_some(),
        "snapshot_every" => layer.snapshot_every.is_some(),
        "max_body_bytes" => layer.max_body_bytes.is_some(),
        "shutdown_timeout" => layer.shutdown_timeout.is_some(),
        "join" => layer.join.is_some(),
        "heartbeat_every" => layer.heartbeat_every.is_some(),
        "fence_after" => layer.fence_after.is_some(),
        "dead_after" => layer.dead_after.is_some(),
        "insecure_cluster" => layer.insecure_cluster.is_some(),
        "token" => layer.token.is_some(),
        "admin_token" => layer.admin_token.is_some(),
        "reservation_hold" => layer.reservation_hold.is_some(),
        "secure_cookies" => layer.secure_cookies.is_some(),
        "body_read_timeout" => layer.body_read_timeout.is_some(),
        "max_connections" => layer.max_connections.is_some(),
        "threads" => layer.threads.is_some(),
        _ => false,
    }
}

/// Whether `value` may name a member's HTTP API to clients
/// (`advertise_http`, and the same field from other members): `HOST:PORT`
/// in visible ASCII that a client can put after `http://` as it is.
pub fn valid_http_address(value: &str) -> bool {
    valid_host_port(value)
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/?#@".contains(&b))
}

fn valid_host_port(value: &str) -> bool {
    match value.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host.len() <= 253
                && !host.chars().any(|c| c.is_whitespace() || c.is_control())
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// Parses `250ms`, `30s`, `15m`, `2h`, or a bare number of seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 250ms, 30s, 15m or 2h"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{value:?} is not a duration like 250ms, 30s, 15m or 2h"
            ));
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_laptop_friendly() {
        let config = load(None, &env(&[]), ConfigLayer::default()).unwrap();
        assert_eq!(config, NodeConfig::default());
        assert_eq!(config.http.to_string(), "127.0.0.1:8080");
        assert_eq!(config.grpc.to_string(), "127.0.0.1:7070");
        assert_eq!(config.store_path(), PathBuf::from("granary-data/events.db"));
    }

    #[test]
    fn flags_beat_env_and_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("granary.toml");
        std::fs::write(
            &file,
            "http = \"127.0.0.1:1000\"\ngrpc = \"127.0.0.1:2000\"\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        let flags = ConfigLayer {
            http: Some("127.0.0.1:3000".into()),
            ..ConfigLayer::default()
        };
        let config = load(
            Some(&file),
            &env(&[("GRANARY_GRPC", "127.0.0.1:4000")]),
            flags,
        )
        .unwrap();
        assert_eq!(config.http.port(), 3000);
        assert_eq!(config.grpc.port(), 4000);
        assert_eq!(config.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.advertise, "127.0.0.1:4000");
    }

    #[test]
    fn advertise_http_is_a_host_and_port_a_client_can_dial() {
        let config = load(
            None,
            &env(&[("GRANARY_ADVERTISE_HTTP", " shop-1.internal:8080 ")]),
            ConfigLayer::default(),
        )
        .unwrap();
        assert_eq!(
            config.advertise_http.as_deref(),
            Some("shop-1.internal:8080")
        );
        assert_eq!(NodeConfig::default().advertise_http, None);
        for bad in [
            "shop-1.internal",
            "shop-1.internal:0",
            "http://shop-1:80",
            "user@shop-1:80",
            "shop-1:80/carts",
            "bücher.example:80",
            "shop 1:80",
        ] {
            let err = load(
                None,
                &env(&[("GRANARY_ADVERTISE_HTTP", bad)]),
                ConfigLayer::default(),
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("GRANARY_ADVERTISE_HTTP"),
                "{bad}: {err}"
            );
        }
        assert!(valid_http_address("[fd00::5]:8080"));
    }

    #[test]
    fn a_bad_env_value_names_the_variable() {
        let err = load(
            None,
            &env(&[("GRANARY_HTTP", "nonsense")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("GRANARY_HTTP"), "{err}");
        let err = load(
            None,
            &env(&[("GRANARY_MAX_LIVE_GRAINS", "lots")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("GRANARY_MAX_LIVE_GRAINS"), "{err}");
    }

    #[test]
    fn the_shop_settings_load_and_bad_ones_name_their_key() {
        let config = load(
            None,
            &env(&[
                ("GRANARY_ADMIN_TOKEN", "0123456789abcdef0123"),
                ("GRANARY_RESERVATION_HOLD", "30s"),
                ("GRANARY_SECURE_COOKIES", "true"),
            ]),
            ConfigLayer::default(),
        )
        .unwrap();
        assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(config.reservation_hold, Duration::from_secs(30));
        assert!(config.secure_cookies);
        for (key, value) in [
            ("GRANARY_ADMIN_TOKEN", "short"),
            ("GRANARY_RESERVATION_HOLD", "0s"),
            ("GRANARY_RESERVATION_HOLD", "2d"),
            ("GRANARY_SECURE_COOKIES", "maybe"),
        ] {
            let err = load(None, &env(&[(key, value)]), ConfigLayer::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn threads_default_to_the_cores_and_stay_in_bounds() {
        let config = load(None, &env(&[]), ConfigLayer::default()).unwrap();
        assert!((1..=MAX_THREADS).contains(&config.threads));
        let config = load(
            None,
            &env(&[("GRANARY_THREADS", "3")]),
            ConfigLayer::default(),
        );
        assert_eq!(config.unwrap().threads, 3);
        for value in ["0", "1025", "two"] {
            let err = load(
                None,
                &env(&[("GRANARY_THREADS", value)]),
                ConfigLayer::default(),
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("GRANARY_THREADS"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn doze_after_loads_from_every_layer_and_zero_turns_it_off() {
        assert_eq!(NodeConfig::default().doze_after, Duration::from_secs(10));
        assert_eq!(
            NodeConfig::default().doze_after,
            granary_grain::RuntimeConfig::default().doze_after,
            "the node's default is the runtime's"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("granary.toml");
        std::fs::write(&file, "doze_after = \"0\"\n").unwrap();
        let from_file = load(Some(&file), &env(&[]), ConfigLayer::default()).unwrap();
        assert_eq!(from_file.doze_after, Duration::ZERO);
        let from_env = load(
            Some(&file),
            &env(&[("GRANARY_DOZE_AFTER", "2s")]),
            ConfigLayer::default(),
        )
        .unwrap();
        assert_eq!(from_env.doze_after, Duration::from_secs(2));
        let flags = ConfigLayer {
            doze_after: Some("250ms".into()),
            ..ConfigLayer::default()
        };
        let from_flag = load(Some(&file), &env(&[("GRANARY_DOZE_AFTER", "2s")]), flags);
        assert_eq!(from_flag.unwrap().doze_after, Duration::from_millis(250));
        let err = load(
            None,
            &env(&[("GRANARY_DOZE_AFTER", "later")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("GRANARY_DOZE_AFTER"), "{err}");
    }

    #[test]
    fn a_bad_flag_names_the_flag() {
        let flags = ConfigLayer {
            idle_timeout: Some("soon".into()),
            ..ConfigLayer::default()
        };
        let err = load(None, &env(&[]), flags).unwrap_err();
        assert!(err.to_string().contains("--idle-timeout"), "{err}");
    }

    #[test]
    fn an_unknown_or_mistyped_file_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("granary.toml");
        std::fs::write(&file, "htp = \"127.0.0.1:1000\"\n").unwrap();
        let err = load(Some(&file), &env(&[]), ConfigLayer::default()).unwrap_err();
        assert!(err.to_string().contains("htp"), "{err}");
        std::fs::write(&file, "max_live_grains = \"many\"\n").unwrap();
        let err = load(Some(&file), &env(&[]), ConfigLayer::default()).unwrap_err();
        assert!(err.to_string().contains("max_live_grains"), "{err}");
        std::fs::write(&file, "http = \"not an address\"\n").unwrap();
        let err = load(Some(&file), &env(&[]), ConfigLayer::default()).unwrap_err();
        assert!(err.to_string().contains("`http`"), "{err}");
    }

    #[test]
    fn store_paths_postgres_urls_and_unknown_schemes() {
        let flags = ConfigLayer {
            store: Some("/var/lib/shared/events.db".into()),
            ..ConfigLayer::default()
        };
        let config = load(None, &env(&[]), flags).unwrap();
        assert_eq!(
            config.store_path(),
            PathBuf::from("/var/lib/shared/events.db")
        );
        let config = load(
            None,
            &env(&[("GRANARY_STORE", "postgres://shop:secret@db:5433/granary")]),
            ConfigLayer::default(),
        )
        .unwrap();
        assert_eq!(
            config.store,
            StoreLocation::Postgres("postgres://shop:secret@db:5433/granary".into())
        );
        assert!(!config.store_description().contains("secret"));
        let err = load(
            None,
            &env(&[("GRANARY_STORE", "postgres://db:notaport/granary")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("GRANARY_STORE"), "{err}");
        // TLS settings that cannot work name the store key and the
        // parameter; the description of a URL with them stays readable.
        let verified = "postgres://shop:secret@db:5433/granary?sslmode=verify-full";
        let err = load(
            None,
            &env(&[("GRANARY_STORE", verified)]),
            ConfigLayer::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("GRANARY_STORE") && err.contains("sslrootcert"),
            "{err}"
        );
        assert_eq!(
            granary_store::PostgresStore::describe(verified),
            "postgres://db:5433/granary (sslmode=verify-full)"
        );
        let err = load(
            None,
            &env(&[("GRANARY_STORE", "mysql://db/granary")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown store scheme"), "{err}");
    }

    #[test]
    fn cluster_timings_that_break_the_fencing_argument_are_refused() {
        let flags = ConfigLayer {
            fence_after: Some("900ms".into()),
            dead_after: Some("1s".into()),
            ..ConfigLayer::default()
        };
        let err = load(None, &env(&[]), flags).unwrap_err();
        assert!(err.to_string().contains("--dead-after"), "{err}");
        let err = load(
            None,
            &env(&[("GRANARY_FENCE_AFTER", "100ms")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("GRANARY_FENCE_AFTER"), "{err}");
        let ok = load(
            None,
            &env(&[("GRANARY_DEAD_AFTER", "3s")]),
            ConfigLayer::default(),
        )
        .unwrap();
        assert_eq!(ok.timing().dead_after, 3_000);
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("").is_err());
    }
}
