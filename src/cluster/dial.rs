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

use super::link::{self, Opened};

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
        Ok(Arc::new(move |hello| {
            let (host, config) = (host.clone(), config.clone());
            Box::pin(async move {
                let opened = async {
                    match config {
                        Some(config) => {
                            let mut tls = tls::connect(config, &host, port).await?;
                            // A member from before the link chooses HTTP/2.
                            match tls.get_ref().1.alpn_protocol() {
                                Some(link::PROTOCOL) => {
                                    let placed = say_hello(&mut tls, hello).await?;
                                    Ok::<_, std::io::Error>(Opened::Link(
                                        Box::new(tls),
                                        Some(placed),
                                    ))
                                }
                                Some(link::PROTOCOL_1) => Ok(Opened::Link(Box::new(tls), None)),
                                _ => Ok(Opened::NotSpoken),
                            }
                        }
                        None => match plaintext(&host, port, Some(hello)).await? {
                            Some(opened) => Ok(opened),
                            // A member of version 1 closes on the new
                            // preface: it is asked again in its own.
                            None => Ok(plaintext(&host, port, None)
                                .await?
                                .unwrap_or(Opened::NotSpoken)),
                        },
                    }
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

/// Sends a link's `hello` and reads where the callee placed it.
async fn say_hello(
    io: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    hello: u64,
) -> std::io::Result<link::Placed> {
    use tokio::io::AsyncWriteExt;
    io.write_all(&hello.to_be_bytes()).await?;
    io.flush().await?;
    placed(io).await
}

/// Where the callee placed a link, read off it.
async fn placed(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<link::Placed> {
    use tokio::io::AsyncReadExt;
    let mut answer = [0u8; 8];
    io.read_exact(&mut answer).await?;
    link::Placed::from_bytes(answer).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the link's answer to the hello makes no sense",
        )
    })
}

/// A plaintext link to `host`:`port`: with `hello`, the link's preface
/// and the hello (`None` back if the member closed on them: it may be of
/// version 1); without, version 1's preface (a member that does not send
/// it back does not speak the link).
async fn plaintext(host: &str, port: u16, hello: Option<u64>) -> std::io::Result<Option<Opened>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    link::keep_alive(&tcp);
    let preface = match hello {
        Some(_) => link::PREFACE,
        None => link::PREFACE_1,
    };
    let mut opening = preface.to_vec();
    if let Some(hello) = hello {
        opening.extend_from_slice(&hello.to_be_bytes());
    }
    tcp.write_all(&opening).await?;
    // A member that speaks the link sends the preface back; one from
    // before it closes.
    let mut answer = [0u8; link::PREFACE.len()];
    match tcp.read_exact(&mut answer).await {
        Ok(_) if &answer == preface => {}
        Ok(_) => return Ok(Some(Opened::NotSpoken)),
        // Closed on the preface (reset if it left bytes unread). Nothing
        // was sent yet.
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return Ok(hello.is_none().then_some(Opened::NotSpoken));
        }
        Err(err) => return Err(err),
    }
    let placed = match hello {
        Some(_) => Some(placed(&mut tcp).await?),
        None => None,
    };
    Ok(Some(Opened::Link(Box::new(tcp), placed)))
}

/// The key a member id pins (ids are key fingerprints).
pub fn pin(id: &str) -> Option<Fingerprint> {
    id.parse().ok()
}
