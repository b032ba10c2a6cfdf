//! The node's HTTP server: actix-web's app on actix-server and actix-http,
//! put together as `actix_web::HttpServer` does, with each connection
//! wrapped in [`JsonRefusals`](super::refusals::JsonRefusals) so the
//! refusals actix-http writes itself carry the API's JSON error body.

use std::time::Duration;

use actix_http::{HttpService, KeepAlive, Protocol};
use actix_server::Server;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service};
use actix_web::App;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};

use super::refusals::JsonRefusals;

/// How many connections and threads the server takes, and how long it
/// lets requests in flight finish when stopped.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub workers: usize,
    /// Over all workers; more wait in the listen backlog.
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

/// Connections the kernel queues for `accept` (actix-web's default).
const BACKLOG: u32 = 1024;

/// A request head must arrive within this (actix-web's default), or 408.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A client that does not close its side of a closed connection within
/// this is dropped (actix-web's default).
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `app` (made once per worker) on `listener` until the returned
/// server is stopped. Signals are the caller's to handle.
pub fn serve<F, T, B>(
    listener: std::net::TcpListener,
    app: F,
    limits: ServeLimits,
) -> std::io::Result<Server>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: actix_service::ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let address = listener.local_addr()?;
    let builder = Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    let workers = limits.workers.max(1);
    let server = builder
        .disable_signals()
        .workers(workers)
        // The cap is per worker: the node's, shared out.
        .max_concurrent_connections(limits.max_connections.div_ceil(workers))
        .shutdown_timeout(limits.shutdown_timeout.as_secs().max(1))
        .listen("http", listener, move || {
            let shutdown = shutdown.clone();
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .keep_alive(KeepAlive::default())
                .client_request_timeout(HEAD_TIMEOUT)
                .client_disconnect_timeout(DISCONNECT_TIMEOUT)
                .local_addr(address)
                .finish(actix_service::map_config(
                    app()
                        .into_factory()
                        .map_err(|err: actix_web::Error| err.error_response()),
                    |_| AppConfig::default(),
                ));
            fn_service(|tcp: actix_web::rt::net::TcpStream| async move {
                let _ = tcp.set_nodelay(true);
                let peer = tcp.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    JsonRefusals::new(tcp),
                    Protocol::Http1,
                    peer,
                ))
            })
            .and_then(http)
        })?
        .run();
    Ok(server)
}

/// A listener on `address` with actix-web's backlog (the standard
/// library's is 128).
pub fn listen(address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)?.into_std()
}
