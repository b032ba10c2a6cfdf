//! The command line of a node: `serve`, `status`, `token create`, `node
//! remove`, `catalog import`, `load`, `openapi`. The `granary` binary runs it with the cart service;
//! a binary of one's own runs it with its own grain kinds:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     granary::cli::run(|node| node.carts())
//! }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigLayer};
use crate::node::{Node, NodeBuilder};

#[derive(Parser)]
#[command(
    name = "granary",
    version,
    about = "Granary: durable shopping carts hosted as grains"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: HTTP cart API, gRPC ControlPlane, embedded event store.
    Serve(Box<ServeArgs>),
    /// Print the HTTP API's OpenAPI document.
    Openapi,
    /// Show a node's view of the cluster (talks to its gRPC port).
    Status(StatusArgs),
    /// Join tokens: what a new node shows a member to be admitted.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Cluster members.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The shop's catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Shop traffic against running nodes (create, add, read, checkout):
    /// throughput and a latency histogram at the end.
    Load(LoadArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// A node's HTTP base URL; repeat it to spread requests over members.
    #[arg(
        long = "node",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    nodes: Vec<String>,
    /// Carts in progress at a time (each created, filled, read, checked out,
    /// then replaced by a new one).
    #[arg(long, default_value_t = 100)]
    carts: usize,
    /// How long to run, e.g. `30s`, `2m`.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    duration: String,
    /// Concurrent connections [default: the smaller of 32 and --carts].
    #[arg(long)]
    clients: Option<usize>,
    /// Products the tool shops from (`load-sku-0` ..).
    #[arg(long, default_value_t = 20)]
    skus: usize,
    /// The admin token, to put the tool's products in the catalog
    /// [default: $GRANARY_ADMIN_TOKEN]; without it they must exist.
    #[arg(long, value_name = "TOKEN")]
    admin_token: Option<String>,
    /// Send a cart's requests to the member a forwarded answer named as
    /// its owner (`Granary-Owner`), as a client that routes by the hint.
    #[arg(long)]
    follow_owner: bool,
    /// Print the report as JSON (no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Set products (and their stock) from a JSON-lines file through a
    /// node's admin API: one `{"sku", "name", "unit_price", "currency",
    /// "tax_rate_bp", "stock"}` object per line.
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The JSON-lines file.
    file: PathBuf,
    /// The node's HTTP address.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The node's admin token [default: $GRANARY_ADMIN_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    admin_token: Option<String>,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The node's gRPC address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7070")]
    node: String,
    /// A member's data directory: its key authenticates the request (the
    /// cluster port answers members only).
    #[arg(long, value_name = "DIR", default_value = "granary-data")]
    data_dir: PathBuf,
    /// The cluster speaks plaintext (`serve --insecure-cluster`).
    #[arg(long)]
    insecure_cluster: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Every flag can also be set as `GRANARY_<NAME>` or in the config file.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (also GRANARY_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node identity and local files [default: ./granary-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Event store: a file path for the embedded engine [default: <data-dir>/events.db].
    #[arg(long, value_name = "PATH")]
    store: Option<String>,
    /// HTTP API address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// gRPC address [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    grpc: Option<String>,
    /// HOST:PORT this node reports to peers [default: the gRPC address].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// HOST:PORT clients reach this node's HTTP API at, named to them when
    /// another member forwards their request here [default: the HTTP
    /// address, with the host of --advertise if it listens on every
    /// interface].
    #[arg(long, value_name = "HOST:PORT")]
    advertise_http: Option<String>,
    /// Passivate a grain idle this long, e.g. 15m [default: 15m].
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Stop the actor of a grain whose mailbox took no call for this long,
    /// keeping its state in memory; 0 never [default: 10s].
    #[arg(long, value_name = "DURATION")]
    doze_after: Option<String>,
    /// Most grains live in memory [default: 1000000].
    #[arg(long, value_name = "N")]
    max_live_grains: Option<u64>,
    /// Snapshot a grain every N events [default: 64].
    #[arg(long, value_name = "N")]
    snapshot_every: Option<u64>,
    /// Largest HTTP request body in bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<u64>,
    /// How long shutdown waits for in-flight requests [default: 30s].
    #[arg(long, value_name = "DURATION")]
    shutdown_timeout: Option<String>,
    /// A member's gRPC HOST:PORT to ask for admission (repeatable; only
    /// used while this node has no cluster state). None: found a cluster.
    #[arg(long, value_name = "HOST:PORT")]
    join: Vec<String>,
    /// How often members heartbeat each other [default: 100ms].
    #[arg(long, value_name = "DURATION")]
    heartbeat_every: Option<String>,
    /// Stop serving after this long without a majority in sight [default: 600ms].
    #[arg(long, value_name = "DURATION")]
    fence_after: Option<String>,
    /// Remove a member silent this long to a majority [default: 1s].
    #[arg(long, value_name = "DURATION")]
    dead_after: Option<String>,
    /// Speak plaintext to other members instead of mutual TLS
    /// (development only; logged as a warning).
    #[arg(long)]
    insecure_cluster: bool,
    /// A join token from a member (`granary token create`), for --join.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// The admin API's bearer token (16+ characters); unset: admin API off.
    #[arg(long, value_name = "TOKEN")]
    admin_token: Option<String>,
    /// How long checkout holds stock before it is confirmed [default: 2m].
    #[arg(long, value_name = "DURATION")]
    reservation_hold: Option<String>,
    /// Mark the shop's cartid cookie Secure (HTTPS only).
    #[arg(long)]
    secure_cookies: bool,
    /// A request body must arrive within this, or 408 [default: 5s].
    #[arg(long, value_name = "DURATION")]
    body_read_timeout: Option<String>,
    /// Most HTTP connections open at once [default: half the open-file
    /// limit, at most 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<u64>,
    /// HTTP worker threads, and as many grain threads [default: one of
    /// each per core].
    #[arg(long, value_name = "N")]
    threads: Option<u64>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a join token on a member and print it.
    Create(TokenArgs),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Remove a member for good: its key is revoked cluster-wide, its live
    /// connections are cut, and it can never join again.
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
struct RemoveArgs {
    /// The id of the member to remove (`granary status` lists them).
    id: String,
    /// A member's gRPC address (not the one removed).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7070")]
    node: String,
    /// That member's data directory: the request is made with its key.
    #[arg(long, value_name = "DIR", default_value = "granary-data")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The member's gRPC address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7070")]
    node: String,
    /// The member's data directory: the request is made with its key.
    #[arg(long, value_name = "DIR", default_value = "granary-data")]
    data_dir: PathBuf,
    /// How long the token is valid, e.g. 1h [default: 1h].
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    ttl: String,
    /// The token admits one node only: the first that presents it.
    #[arg(long)]
    single_use: bool,
}

/// Runs the command line's command; `serve` runs a node that `customize`
/// sets up (its grain kinds, its routes).
pub fn run(customize: impl FnOnce(NodeBuilder) -> NodeBuilder) -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            println!("{}", crate::http::openapi_json());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => serve(*args, customize),
        Command::Token(TokenCommand::Create(args)) => {
            match crate::status::create_token(
                &args.node,
                &args.data_dir,
                &args.ttl,
                args.single_use,
            ) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("granary: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Node(NodeCommand::Remove(args)) => {
            match crate::status::remove_node(&args.node, &args.data_dir, &args.id) {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("granary: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Catalog(CatalogCommand::Import(args)) => {
            let token = args
                .admin_token
                .or_else(|| std::env::var("GRANARY_ADMIN_TOKEN").ok());
            let Some(token) = token else {
                eprintln!("granary: --admin-token (or GRANARY_ADMIN_TOKEN) is required");
                return ExitCode::FAILURE;
            };
            match crate::catalog_import::run(&args.file, &args.url, &token) {
                Ok(count) => {
                    println!("set {count} product{}", if count == 1 { "" } else { "s" });
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("granary: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Load(args) => load(args),
        Command::Status(args) => {
            match crate::status::run(&args.node, &args.data_dir, args.insecure_cluster, args.json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("granary: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load(args: LoadArgs) -> ExitCode {
    let duration = match config::parse_duration(&args.duration) {
        Ok(duration) => duration,
        Err(err) => {
            eprintln!("granary: --duration: {err}");
            return ExitCode::from(2);
        }
    };
    let options = crate::load::LoadOptions {
        clients: args.clients.unwrap_or(args.carts.clamp(1, 32)),
        nodes: args.nodes,
        carts: args.carts,
        duration,
        skus: args.skus,
        admin_token: args
            .admin_token
            .or_else(|| std::env::var("GRANARY_ADMIN_TOKEN").ok()),
        follow_owner: args.follow_owner,
    };
    if let Err(err) = options.check() {
        eprintln!("granary: {err:#}");
        return ExitCode::from(2);
    }
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(duration.as_millis() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
            .expect("a valid template"),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("granary: cannot start a runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(crate::load::run(&options, |done, elapsed| {
        bar.set_position(elapsed.as_millis() as u64);
        bar.set_message(format!(
            "{done} requests, {:.0}/s",
            done as f64 / elapsed.as_secs_f64().max(0.001)
        ));
    }));
    bar.finish_and_clear();
    match report {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report encodes")
                );
            } else {
                print!("{}", crate::load::render(&report));
            }
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("granary: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs, customize: impl FnOnce(NodeBuilder) -> NodeBuilder) -> ExitCode {
    // Colours for a person at a terminal; plain text for a log file or a
    // process supervisor.
    let _telemetry =
        match crate::telemetry::init(std::io::IsTerminal::is_terminal(&std::io::stderr())) {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("granary: {err}");
                return ExitCode::from(2);
            }
        };
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("GRANARY_"))
        .collect();
    let file = args
        .config
        .clone()
        .or_else(|| env.get("GRANARY_CONFIG").map(PathBuf::from));
    let flags = ConfigLayer {
        data_dir: args.data_dir,
        store: args.store,
        http: args.http,
        grpc: args.grpc,
        advertise: args.advertise,
        advertise_http: args.advertise_http,
        idle_timeout: args.idle_timeout,
        doze_after: args.doze_after,
        max_live_grains: args.max_live_grains,
        snapshot_every: args.snapshot_every,
        max_body_bytes: args.max_body_bytes,
        shutdown_timeout: args.shutdown_timeout,
        join: (!args.join.is_empty()).then_some(args.join),
        heartbeat_every: args.heartbeat_every,
        fence_after: args.fence_after,
        dead_after: args.dead_after,
        insecure_cluster: args.insecure_cluster.then_some(true),
        token: args.token,
        admin_token: args.admin_token,
        reservation_hold: args.reservation_hold,
        secure_cookies: args.secure_cookies.then_some(true),
        body_read_timeout: args.body_read_timeout,
        max_connections: args.max_connections,
        threads: args.threads,
    };
    let config = match config::load(file.as_deref(), &env, flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("granary: {err}");
            return ExitCode::from(2);
        }
    };
    match customize(Node::builder(config)).run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("granary: {err:#}");
            ExitCode::FAILURE
        }
    }
}
