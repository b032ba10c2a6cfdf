//! A running node: the event store, the cart grain runtime, the HTTP API and
//! the gRPC ControlPlane, and their orderly shutdown.
//!
//! Shutdown (SIGTERM or ctrl-c): readiness goes false, the HTTP server stops
//! accepting and waits for in-flight requests (each one returns only after
//! its change is durable), grains are passivated, the gRPC server drains,
//! and the process exits 0.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::App;
use anyhow::Context;
use granary_grain::{ArbiterPool, Grain, GrainRuntime, Lease, Placement, RuntimeConfig};
use granary_store::{EventStore, PostgresStore, SqliteStore};
use tonic::transport::Server;

use crate::cart_grain::CartGrain;
use crate::cluster::ClusterHandle;
use crate::cluster::dial::Dialer;
use crate::cluster::{self, ClusterService, GrainRouter, GrainsService, Placements, Remote};
use crate::config::{NodeConfig, StoreLocation};
use crate::control_plane::ControlPlaneService;
use crate::grains::{Grains, GrainsBuilder};
use crate::http::{self, ApiState};
use crate::metrics::Metrics;
use crate::proto::cluster::cluster_server::ClusterServer;
use crate::proto::grains::grains_server::GrainsServer;
use crate::proto::messages::control_plane_server::ControlPlaneServer;
use crate::security::tls::{Admission, Limits};
use crate::security::tokens::Tokens;
use crate::security::{Fingerprint, NodeKeys, PeerIdentity, Trust};
use granary_cluster_core::{Member, NodeId};
use std::marker::PhantomData;
use tonic::service::interceptor::InterceptedService;

/// Largest gRPC message a node decodes.
const GRPC_MAX_MESSAGE: usize = 1024 * 1024;
/// Deadline of every gRPC request a node serves.
const GRPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the cart service's node until SIGTERM or ctrl-c. Blocks the
/// calling thread.
pub fn run(config: NodeConfig) -> anyhow::Result<()> {
    Node::builder(config).carts().run()
}

/// A node of a grain cluster, built from the grain kinds it hosts and the
/// HTTP routes that call them:
///
/// ```no_run
/// # use granary::node::Node;
/// # use granary::config::NodeConfig;
/// # fn main() -> anyhow::Result<()> {
/// let config = NodeConfig::default();
/// Node::builder(config)
///     .carts()                 // the cart kind and the cart API
///     // .grain::<MyKind>()    // any kind implementing granary_grain::Grain
///     // .routes(|cfg| { … })  // handlers take web::Data<granary::grains::Grains>
///     .run()
/// # }
/// ```
pub struct Node;

impl Node {
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            kinds: Vec::new(),
            routes: Vec::new(),
            cart_api: false,
        }
    }
}

/// Routes a node's HTTP server adds next to its own.
type Routes = Arc<dyn Fn(&mut actix_web::web::ServiceConfig) + Send + Sync>;

/// Collects what a node hosts; [`NodeBuilder::run`] runs it.
pub struct NodeBuilder {
    config: NodeConfig,
    kinds: Vec<Box<dyn Kind>>,
    routes: Vec<Routes>,
    cart_api: bool,
}

impl NodeBuilder {
    /// Hosts grains of kind `G`: they are placed over the cluster, hosted
    /// once, and callable from every member with
    /// [`Grains::call`](crate::grains::Grains::call).
    pub fn grain<G: Grain>(mut self) -> Self {
        self.kinds.push(Box::new(PhantomData::<fn() -> G>));
        self
    }

    /// Hosts the shop: carts, the catalog and stock (their grain kinds),
    /// and serves the cart API, the shop front's cart and the admin API.
    pub fn carts(mut self) -> Self {
        self.cart_api = true;
        self.grain::<CartGrain>()
            .grain::<crate::shop::ProductGrain>()
            .grain::<crate::shop::StockGrain>()
    }

    /// Adds HTTP routes. Handlers reach grains through
    /// `actix_web::web::Data<granary::grains::Grains>`. They are matched
    /// before the node's own routes (which answer every path they leave).
    pub fn routes(
        mut self,
        routes: impl Fn(&mut actix_web::web::ServiceConfig) + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(Arc::new(routes));
        self
    }

    /// Runs the node until SIGTERM or ctrl-c. Blocks the calling thread.
    pub fn run(self) -> anyhow::Result<()> {
        // A node is its key: its id is the fingerprint of its public key.
        let keys = Arc::new(NodeKeys::load_or_create(&self.config.data_dir)?);
        actix_rt::System::new().block_on(serve(self, keys))
    }
}

/// A grain kind a node hosts, whatever its type.
trait Kind: Send {
    /// Starts its runtime and registers it.
    fn host(
        &self,
        grains: GrainsBuilder,
        store: Arc<dyn EventStore>,
        config: RuntimeConfig,
        ownership: Arc<dyn granary_grain::Ownership>,
        lease: Arc<Lease>,
    ) -> GrainsBuilder;
}

impl<G: Grain> Kind for PhantomData<fn() -> G> {
    fn host(
        &self,
        grains: GrainsBuilder,
        store: Arc<dyn EventStore>,
        config: RuntimeConfig,
        ownership: Arc<dyn granary_grain::Ownership>,
        lease: Arc<Lease>,
    ) -> GrainsBuilder {
        // A grain is activated only where the router placed it.
        grains.host(GrainRuntime::<G>::in_cluster(
            store, config, ownership, lease,
        ))
    }
}

async fn serve(node: NodeBuilder, keys: Arc<NodeKeys>) -> anyhow::Result<()> {
    let NodeBuilder {
        config,
        kinds,
        routes,
        cart_api,
    } = node;
    let node_id = keys.fingerprint.to_string();
    // Members speak mutual TLS with pinned keys, unless told otherwise.
    let (dialer, trust) = if config.insecure_cluster {
        tracing::warn!(
            "--insecure-cluster: members speak plaintext and trust whoever reaches the gRPC port; use it on a trusted network only"
        );
        (Dialer::plaintext(), None)
    } else {
        (Dialer::tls(keys.clone()), Some(Trust::new([])))
    };
    let store_name = config.store_description();
    let store =
        open_store(&config).with_context(|| format!("cannot open the event store {store_name}"))?;
    let cluster_id = cluster_id(&store, &config, &store_name).await?;
    // Until when this node may serve grains: the membership task extends
    // it while a majority is in sight, every activation checks it.
    let lease = Arc::new(Lease::new());

    let grpc_listener = std::net::TcpListener::bind(config.grpc)
        .with_context(|| format!("cannot listen on {} (grpc)", config.grpc))?;
    grpc_listener.set_nonblocking(true)?;
    let grpc_addr = grpc_listener.local_addr()?;
    let advertise = if config.advertise == config.grpc.to_string() {
        grpc_addr.to_string()
    } else {
        config.advertise.clone()
    };
    // Bound now, so the address members name to clients is known (a
    // port of 0 is chosen by the system).
    let listener = http::listen(config.http)
        .with_context(|| format!("cannot listen on {} (http)", config.http))?;
    let http_addr = listener
        .local_addr()
        .context("the HTTP listener has no address")?;
    let me = Member {
        id: NodeId(node_id.clone()),
        address: advertise.clone(),
        http: http_advertised(config.advertise_http.as_deref(), http_addr, &advertise),
    };
    if me.http.is_empty() {
        tracing::info!(
            %http_addr, %advertise,
            "members will not name this node to clients as a cart's owner: its HTTP API listens on loopback while peers reach it at another host; set advertise_http to where clients reach it"
        );
    }
    let (cluster, membership) = cluster::start(cluster::Membership {
        me,
        data_dir: config.data_dir.clone(),
        join: config.join.clone(),
        timing: config.timing(),
        cluster_id: cluster_id.clone(),
        dialer,
        token: config.token.clone(),
        lease: lease.clone(),
    })?;
    // Two runtimes of their own: one for the cluster's heartbeats and
    // directory (nothing else runs there, so request load cannot delay a
    // heartbeat), one for the gRPC servers and the channels to peers.
    let grpc_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cluster_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = Arc::new(Metrics::new());
    metrics.attach_cluster(cluster.clone());
    let router = {
        let _cluster = cluster_runtime.enter();
        GrainRouter::start(
            cluster.clone(),
            grpc_runtime.handle().clone(),
            metrics.clone(),
        )
    };
    crate::shop::configure(crate::shop::ShopSettings {
        reservation_hold: config.reservation_hold,
        ..crate::shop::ShopSettings::default()
    });
    // One pool of grain threads for every kind (and the links' calls).
    let grain_threads = ArbiterPool::new(config.threads);
    let runtime_config = RuntimeConfig {
        placement: Placement::Shared(grain_threads.clone()),
        idle_timeout: config.idle_timeout,
        doze_after: config.doze_after,
        max_live: config.max_live_grains,
        snapshot_every: config.snapshot_every,
        ..RuntimeConfig::default()
    };
    let ownership: Arc<dyn granary_grain::Ownership> = Arc::new(Placements(router.clone()));
    let remote = Arc::new(Remote::new(router.clone(), metrics.clone()));
    let grains = kinds
        .iter()
        .fold(Grains::builder(Some(remote.clone())), |grains, kind| {
            kind.host(
                grains,
                store.clone(),
                runtime_config.clone(),
                ownership.clone(),
                lease.clone(),
            )
        })
        .build();
    metrics.attach(grains.clone(), store.clone());
    if let Some(trust) = &trust {
        cluster_runtime.spawn(trust_the_members(
            cluster.clone(),
            trust.clone(),
            keys.fingerprint,
        ));
    }
    cluster_runtime.spawn(release_claims_when_fenced(
        cluster.watch_fences(),
        router.clone(),
        grains.clone(),
    ));
    std::thread::Builder::new()
        .name("granary-cluster".into())
        .spawn(move || {
            cluster_runtime.block_on(membership);
        })?;
    let (grpc_stop, grpc_thread) = start_grpc(
        grpc_runtime,
        grpc_listener,
        GrpcServices {
            control_plane: ControlPlaneService::new(
                advertise.clone(),
                Some(cluster.clone()),
                Some(router.clone()),
            ),
            cluster: ClusterService::new(
                cluster.clone(),
                metrics.clone(),
                trust.clone(),
                Arc::new(Tokens::open(&config.data_dir)?),
                store.clone(),
                router.clone(),
                grains.clone(),
            ),
            grains: GrainsService::new(grains.clone(), remote),
        },
        trust.map(|trust| (keys.clone(), trust)),
        grain_threads.clone(),
    )?;

    // Due reminders of the grains whose partitions this member holds.
    {
        let router = router.clone();
        let metrics = metrics.clone();
        actix_rt::spawn(crate::reminders::deliver(
            store.clone(),
            grains.clone(),
            move |key| router.is_holder(key),
            move || metrics.reminder_fired(),
        ));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let state = ApiState {
        grains: grains.clone(),
        store: store.clone(),
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.body_read_timeout,
        ready: ready.clone(),
        serving: cluster.serving_flag(),
        admin_token: config.admin_token.clone(),
        secure_cookies: config.secure_cookies,
        dashboard: Some(Arc::new(crate::dashboard::Dashboard::new(
            cluster.clone(),
            router.clone(),
            grains.clone(),
            metrics.clone(),
        ))),
        metrics,
    };
    let app = move || {
        let mut app = App::new().configure(http::configure_state(state.clone()));
        for routes in &routes {
            let routes = routes.clone();
            app = app.configure(move |cfg| routes(cfg));
        }
        app.default_service(http::api_router(cart_api))
    };
    let server = http::serve(
        listener,
        app,
        http::ServeLimits {
            workers: config.threads,
            max_connections: config.max_connections,
            shutdown_timeout: config.shutdown_timeout,
        },
    )
    .with_context(|| format!("cannot listen on {} (http)", config.http))?;
    let handle = server.handle();
    // Stop on SIGTERM/ctrl-c, or when this node can never be admitted.
    // Installed before the ready line, so an early SIGTERM is graceful too.
    let fatal = Arc::new(std::sync::Mutex::new(None));
    {
        let (cluster, fatal, ready) = (cluster.clone(), fatal.clone(), ready.clone());
        actix_rt::spawn(async move {
            tokio::select! {
                signal = wait_for_stop_signal() => {
                    tracing::info!(signal, "stopping: finishing in-flight requests");
                }
                reason = cluster.fatal() => {
                    tracing::error!(%reason, "stopping");
                    *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                }
            }
            ready.store(false, Ordering::Release);
            handle.stop(true).await;
        });
    }
    // A founding or restarted node sees its majority within a few
    // heartbeats; a joining one once it is admitted. Either way, say
    // "ready" when it can serve, or after a bound (it then answers 503
    // until it can).
    let serving = cluster.serving_flag();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(serving.load(Ordering::Acquire) && cluster.has_view_lease())
        && std::time::Instant::now() < deadline
    {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the stop task install its signal handlers before "ready".
    actix_rt::task::yield_now().await;
    ready.store(true, Ordering::Release);
    tracing::info!(%node_id, %http_addr, %grpc_addr, %advertise, store = %store_name, %cluster_id, threads = config.threads, "granary node ready");
    // One machine-readable line on stdout, for scripts and tests.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "granary ready node={node_id} http={http_addr} grpc={grpc_addr} advertise={advertise} serving={}",
        serving.load(Ordering::Acquire)
    );
    let _ = stdout.flush();

    server.await.context("the HTTP server failed")?;
    if let Some(reason) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = grpc_stop.send(());
        grain_threads.stop();
        anyhow::bail!("{reason}");
    }

    // Hand over: leave the membership (so partitions move at once), stop
    // placing, let the grains go (every write settled), and only then tell
    // the others to claim this node's carts at once. Without an accepted
    // leave the others find this node dead instead: a `Closing` would let
    // them claim carts while it may still be a member.
    let left = cluster.committed().members.len() > 1 && cluster.leave(Duration::from_secs(3)).await;
    if left {
        tracing::info!("left the cluster");
    } else if cluster.committed().members.len() > 1 {
        tracing::warn!("could not leave the cluster in time; the others will find this node dead");
    }
    router.close();
    grains.passivate_all();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while grains.live() > 0 && std::time::Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    if left && grains.live() == 0 {
        router.announce_closing().await;
    }
    let _ = grpc_stop.send(());
    // Bounded: a peer holding a stream open must not keep the node up.
    match grpc_thread.recv_timeout(GRPC_TIMEOUT + Duration::from_secs(1)) {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "gRPC server stopped with an error"),
        Err(_) => tracing::warn!("gRPC server did not stop in time; exiting anyway"),
    }
    // The links members opened to this one live on the grain threads:
    // they close with them (calls still coming get "unreachable").
    grain_threads.stop();
    tracing::info!("stopped");
    Ok(())
}

/// The event store the config names.
fn open_store(config: &NodeConfig) -> anyhow::Result<Arc<dyn EventStore>> {
    Ok(match &config.store {
        StoreLocation::Postgres(url) => Arc::new(PostgresStore::open(url)?),
        _ => Arc::new(SqliteStore::open(config.store_path())?),
    })
}

/// The id of the cluster whose data the store holds. A node that founds a
/// cluster (no saved membership, no `--join`) records a new one in an
/// unclaimed store; any other node must find one there: a joining node
/// shows it to the members, who admit only their own store's id.
async fn cluster_id(
    store: &Arc<dyn EventStore>,
    config: &NodeConfig,
    store_name: &str,
) -> anyhow::Result<String> {
    if let Some(id) = store.cluster_id(None).await? {
        return Ok(id);
    }
    if config.join.is_empty() {
        let proposed = uuid::Uuid::new_v4().to_string();
        let recorded = store.cluster_id(Some(proposed)).await?;
        return recorded.context("the store did not record a cluster id");
    }
    anyhow::bail!(
        "the event store {store_name} holds no cluster id, so it is not the store of the cluster this node is joining; a joining node must use the cluster's store (give it the same --store as the members)"
    )
}

/// Where clients reach this node's HTTP API (`Config::advertise_http`):
/// as configured, else the address it listens on, with the host of the
/// advertised gRPC address in place of an address of every interface.
/// Empty (no hint) when that would send other machines' clients to their
/// own: the HTTP API on loopback while peers reach the member elsewhere
/// (say, behind a proxy on its machine), or no host known at all.
fn http_advertised(
    configured: Option<&str>,
    listening: std::net::SocketAddr,
    advertise: &str,
) -> String {
    if let Some(configured) = configured {
        return configured.to_owned();
    }
    let Some((host, _)) = advertise.rsplit_once(':') else {
        return String::new();
    };
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok();
    let advertised_on_loopback = host == "localhost" || ip.is_some_and(|ip| ip.is_loopback());
    if listening.ip().is_unspecified() {
        if ip.is_some_and(|ip| ip.is_unspecified()) {
            return String::new();
        }
        return format!("{host}:{}", listening.port());
    }
    if listening.ip().is_loopback() && !advertised_on_loopback {
        return String::new();
    }
    listening.to_string()
}

/// Reports how the gRPC server thread ended.
type GrpcThread = std::sync::mpsc::Receiver<anyhow::Result<()>>;

/// Serves the ControlPlane on its own thread and runtime, so request work
/// on the HTTP side never delays it.
struct GrpcServices {
    control_plane: ControlPlaneService,
    cluster: ClusterService,
    grains: GrainsService,
}

/// Serves the node's gRPC services on `runtime`, on a thread of its own.
fn start_grpc(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    services: GrpcServices,
    tls: Option<(Arc<NodeKeys>, Arc<Trust>)>,
    grain_threads: ArbiterPool,
) -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, GrpcThread)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ended, thread) = std::sync::mpsc::sync_channel(1);
    let members_only = members_only(tls.as_ref().map(|(_, trust)| trust.clone()));
    let serve = move || -> anyhow::Result<()> {
        runtime.block_on(async move {
            // Grain calls between members come on links beside the gRPC
            // services (`cluster::link`), served on the grain threads; the
            // same service answers both.
            let grains = Arc::new(services.grains);
            let links = Arc::new(cluster::link::LinkThreads::new(grain_threads, grains.clone()));
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let router = Server::builder()
                .timeout(GRPC_TIMEOUT)
                .concurrency_limit_per_connection(256)
                .max_concurrent_streams(256)
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .add_service(InterceptedService::new(
                    ControlPlaneServer::new(services.control_plane)
                        .max_decoding_message_size(GRPC_MAX_MESSAGE)
                        .max_encoding_message_size(4 * GRPC_MAX_MESSAGE),
                    members_only.clone(),
                ))
                .add_service(
                    ClusterServer::new(services.cluster)
                        .max_decoding_message_size(GRPC_MAX_MESSAGE)
                        .max_encoding_message_size(GRPC_MAX_MESSAGE),
                )
                .add_service(InterceptedService::new(
                    GrainsServer::from_arc(grains.clone())
                        .max_decoding_message_size(GRPC_MAX_MESSAGE)
                        .max_encoding_message_size(GRPC_MAX_MESSAGE),
                    members_only,
                ));
            let stopped = async {
                let _ = stopped.await;
            };
            match tls {
                Some((keys, trust)) => {
                    // Any key may connect (a joining node has no trusted key
                    // yet); the services answer members only, but `Join`.
                    let config = crate::security::tls::server_config(
                        &keys,
                        trust.clone(),
                        Admission::AnyKey,
                    )?;
                    let incoming =
                        crate::security::tls::incoming(listener, config, trust, Limits::default());
                    let incoming = tokio_stream::StreamExt::filter_map(incoming, move |accepted| {
                        match accepted {
                            Ok(connection) if connection.is_link() => {
                                if connection.is_member() {
                                    links.serve(connection);
                                } else {
                                    tracing::debug!("a grain-call link from a key that is not a member's; closed");
                                }
                                None
                            }
                            other => Some(other),
                        }
                    });
                    router
                        .serve_with_incoming_shutdown(incoming, stopped)
                        .await?;
                }
                None => {
                    let incoming = cluster::link::plaintext_incoming(
                        listener,
                        move |tcp, hello| links.serve_tcp(tcp, hello),
                        Limits::default(),
                    );
                    router
                        .serve_with_incoming_shutdown(incoming, stopped)
                        .await?;
                }
            }
            Ok(())
        })
    };
    std::thread::Builder::new()
        .name("granary-grpc".into())
        .spawn(move || {
            let _ = ended.send(serve());
        })?;
    Ok((stop, thread))
}

/// The interceptor of services only members may call: with mutual TLS, the
/// authenticated peer must hold a member's key (plaintext has no identities
/// to check).
fn members_only(
    trust: Option<Arc<Trust>>,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| {
        let Some(trust) = &trust else {
            return Ok(request);
        };
        match request.extensions().get::<PeerIdentity>() {
            Some(peer) if trust.admits(&peer.fingerprint) => Ok(request),
            _ => Err(tonic::Status::permission_denied(
                "this node answers members of its cluster only",
            )),
        }
    }
}

/// Keeps `trust` at the keys of the members (their ids are their
/// fingerprints): of the committed config and of the newest one this node
/// knows, so a member being admitted can acknowledge the config that
/// admits it. Until this node is a member of a view it has no one to trust
/// but whoever admits it: it accepts any key then (a joiner with a token
/// pins the seed it asks to the token's keys).
async fn trust_the_members(cluster: ClusterHandle, trust: Arc<Trust>, me: Fingerprint) {
    let mut committed = cluster.watch_committed();
    let mut newest = cluster.watch_newest();
    loop {
        let members: std::collections::BTreeSet<Fingerprint> = {
            let (committed, newest) = (committed.borrow_and_update(), newest.borrow_and_update());
            committed
                .members
                .keys()
                .chain(newest.members.keys())
                .filter_map(|id| id.0.parse().ok())
                .collect()
        };
        if members.contains(&me) {
            trust.set(members);
        } else {
            trust.open();
        }
        let changed = tokio::select! {
            changed = committed.changed() => changed,
            changed = newest.changed() => changed,
        };
        if changed.is_err() {
            return;
        }
    }
}

/// When this node loses its majority it gives up every claim and drops its
/// activations: by the time the majority re-homes them it must not be
/// serving them (docs/cluster-protocol.md, invariant 4). Every fence
/// counts, however brief.
async fn release_claims_when_fenced(
    mut fences: tokio::sync::watch::Receiver<u64>,
    router: Arc<GrainRouter>,
    grains: Grains,
) {
    fences.borrow_and_update();
    while fences.changed().await.is_ok() {
        fences.borrow_and_update();
        router.fenced();
        grains.passivate_all();
        tracing::warn!("fenced: released every grain's placement and passivated every grain");
    }
}

/// Resolves on SIGTERM or SIGINT (ctrl-c), naming which.
async fn wait_for_stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}

#[cfg(test)]
mod tests {
    use super::http_advertised;

    #[test]
    fn the_advertised_http_address_is_the_configured_one_or_where_clients_reach_the_listener() {
        let any = "0.0.0.0:8080".parse().unwrap();
        let loopback = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(
            http_advertised(Some("shop-1.internal:80"), any, "10.0.0.5:7070"),
            "shop-1.internal:80"
        );
        // Listening on every interface: the host peers reach it at.
        assert_eq!(http_advertised(None, any, "10.0.0.5:7070"), "10.0.0.5:8080");
        assert_eq!(
            http_advertised(None, "[::]:8080".parse().unwrap(), "[fd00::5]:7070"),
            "[fd00::5]:8080"
        );
        // On loopback beside peers on loopback (one machine): as it is.
        assert_eq!(
            http_advertised(None, loopback, "127.0.0.1:7070"),
            "127.0.0.1:8081"
        );
        assert_eq!(
            http_advertised(None, loopback, "localhost:7070"),
            "127.0.0.1:8081"
        );
        // On loopback while peers reach it elsewhere, or no host known: no
        // hint (clients elsewhere would reach their own machine).
        assert_eq!(http_advertised(None, loopback, "10.0.0.5:7070"), "");
        assert_eq!(http_advertised(None, loopback, "shop-1.internal:7070"), "");
        assert_eq!(http_advertised(None, any, "0.0.0.0:7070"), "");
        // A specific address: as it is.
        assert_eq!(
            http_advertised(None, "10.0.0.5:8080".parse().unwrap(), "10.0.0.5:7070"),
            "10.0.0.5:8080"
        );
    }
}
