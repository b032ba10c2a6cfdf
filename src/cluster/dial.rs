//! How this node opens gRPC channels to other nodes. Every outgoing
//! channel (heartbeats, claims, forwarded calls, joins, `granary status`)
//! is made here, so the transport is decided in one place: plaintext
//! HTTP/2 today; pinned mutual TLS (`crate::security::tls`) once issue 5
//! wires it in.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// An endpoint for `address` (`HOST:PORT`): `connect` is the deadline for
/// the connection, `call` for each call made on it.
pub fn endpoint(address: &str, connect: Duration, call: Duration) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{address}"))
        .map(|endpoint| {
            endpoint
                .connect_timeout(connect)
                .timeout(call)
                .tcp_nodelay(true)
        })
        .map_err(|_| format!("{address:?} is not HOST:PORT"))
}

/// A channel to `address`, connected now.
pub async fn connect(address: &str, connect: Duration, call: Duration) -> Result<Channel, String> {
    endpoint(address, connect, call)?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {address}: {e}"))
}

/// A channel to `address` that connects on first use (and again after a
/// failure). Call from within a tokio runtime: the channel lives there.
pub fn connect_lazy(address: &str, connect: Duration, call: Duration) -> Result<Channel, String> {
    Ok(endpoint(address, connect, call)?.connect_lazy())
}
