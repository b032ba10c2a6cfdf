//! How this node opens gRPC channels to other nodes. Every outgoing
//! channel (heartbeats, claims, forwarded calls, joins, `granary status`)
//! is made here: pinned mutual TLS with this node's key (the default), or
//! plaintext HTTP/2 under `--insecure-cluster`.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::security::{Fingerprint, NodeKeys, tls};

/// Makes channels to other nodes. Cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    keys: Option<Arc<NodeKeys>>,
}

impl Dialer {
    /// Mutual TLS with this node's key.
    pub fn tls(keys: Arc<NodeKeys>) -> Dialer {
        Dialer { keys: Some(keys) }
    }

    /// Plaintext (`--insecure-cluster`).
    pub fn plaintext() -> Dialer {
        Dialer { keys: None }
    }

    pub fn is_tls(&self) -> bool {
        self.keys.is_some()
    }

    fn endpoint(address: &str, connect: Duration, call: Duration) -> Result<Endpoint, String> {
        Endpoint::from_shared(format!("http://{address}"))
            .map(|endpoint| {
                endpoint
                    .connect_timeout(connect)
                    .timeout(call)
                    .tcp_nodelay(true)
            })
            .map_err(|_| format!("{address:?} is not HOST:PORT"))
    }

    fn tls_config(
        &self,
        expected: Option<Vec<Fingerprint>>,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let config = match expected {
            Some(fingerprints) => tls::client_config(keys, fingerprints),
            None => tls::client_config_any_server(keys),
        };
        config
            .map(Some)
            .map_err(|e| format!("cannot set up TLS: {e}"))
    }

    /// A channel to `address`, connected now. `expected`: the key the node
    /// there must hold (`None` only for a first contact).
    pub async fn connect(
        &self,
        address: &str,
        expected: Option<Fingerprint>,
        connect: Duration,
        call: Duration,
    ) -> Result<Channel, String> {
        self.connect_to_one_of(address, expected.map(|f| vec![f]), connect, call)
            .await
    }

    /// A channel to `address`, connected now, whose node must hold one of
    /// the `expected` keys (any key when `None`).
    pub async fn connect_to_one_of(
        &self,
        address: &str,
        expected: Option<Vec<Fingerprint>>,
        connect: Duration,
        call: Duration,
    ) -> Result<Channel, String> {
        let endpoint = Self::endpoint(address, connect, call)?;
        let connected = match self.tls_config(expected)? {
            Some(config) => {
                endpoint
                    .connect_with_connector(tls::connector(config))
                    .await
            }
            None => endpoint.connect().await,
        };
        connected.map_err(|e| format!("cannot reach {address}: {e}"))
    }

    /// A channel to `address` that connects on first use (and again after
    /// a failure). Call from within a tokio runtime: the channel lives there.
    pub fn connect_lazy(
        &self,
        address: &str,
        expected: Option<Fingerprint>,
        connect: Duration,
        call: Duration,
    ) -> Result<Channel, String> {
        let endpoint = Self::endpoint(address, connect, call)?;
        Ok(match self.tls_config(expected.map(|f| vec![f]))? {
            Some(config) => endpoint.connect_with_connector_lazy(tls::connector(config)),
            None => endpoint.connect_lazy(),
        })
    }
}

use super::link::Opened;

impl Dialer {
    /// How a grain-call link to `address` connects: TCP, then pinned
    /// mutual TLS offering the link's ALPN protocol first and HTTP/2's
    /// (a member that chose HTTP/2 does not speak the link), or under
    /// `--insecure-cluster` the link's preface (a member that does not
    /// send it back does not speak the link). `expected`: the key the
    /// node there must hold.
    pub fn link(
        &self,
        address: &str,
        expected: Option<Fingerprint>,
        connect: Duration,
    ) -> Result<super::link::Connect, String> {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse().ok()?)))
            .ok_or_else(|| format!("{address:?} is not HOST:PORT"))?;
        let host: Arc<str> = host.into();
        if self.is_tls() && expected.is_none() {
            // Links go to members only, whose keys are known.
            return Err(format!("{address}: no member's key to pin a link to"));
        }
        let config = self
            .tls_config(expected.map(|f| vec![f]))?
            .map(|config| tls::for_link(&config));
        Ok(Arc::new(move || {
            let (host, config) = (host.clone(), config.clone());
            Box::pin(async move {
                let opened = async {
                    Ok::<_, std::io::Error>(match config {
                        Some(config) => {
                            let tls = tls::connect(config, &host, port).await?;
                            // A member from before the link chooses HTTP/2.
                            if tls.get_ref().1.alpn_protocol() == Some(super::link::PROTOCOL) {
                                Opened::Link(Box::new(tls))
                            } else {
                                Opened::NotSpoken
                            }
                        }
                        None => {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut tcp = tokio::net::TcpStream::connect((&*host, port)).await?;
                            tcp.set_nodelay(true)?;
                            super::link::keep_alive(&tcp);
                            tcp.write_all(super::link::PREFACE).await?;
                            // A member that speaks the link sends the
                            // preface back; one from before it closes.
                            let mut answer = [0u8; super::link::PREFACE.len()];
                            match tcp.read_exact(&mut answer).await {
                                Ok(_) if &answer == super::link::PREFACE => {
                                    Opened::Link(Box::new(tcp))
                                }
                                Ok(_) => Opened::NotSpoken,
                                // Closed on the preface (reset if it left
                                // bytes unread). Nothing was sent yet.
                                Err(err)
                                    if matches!(
                                        err.kind(),
                                        std::io::ErrorKind::UnexpectedEof
                                            | std::io::ErrorKind::ConnectionReset
                                    ) =>
                                {
                                    Opened::NotSpoken
                                }
                                Err(err) => return Err(err),
                            }
                        }
                    })
                };
                match tokio::time::timeout(connect, opened).await {
                    Ok(Ok(io)) => Ok(io),
                    Ok(Err(err)) => Err(format!("cannot reach {host}:{port}: {err}")),
                    Err(_) => Err(format!("cannot reach {host}:{port} within {connect:?}")),
                }
            })
        }))
    }
}

/// The key a member id pins (ids are key fingerprints).
pub fn pin(id: &str) -> Option<Fingerprint> {
    id.parse().ok()
}
