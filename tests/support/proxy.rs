//! A TCP proxy a test controls: forwards connections to a target until it
//! is cut, then closes every open connection and refuses new ones (closes
//! them at once) until healed. Put it in front of a node's gRPC port and
//! advertise the proxy's address, and the node's inbound traffic passes
//! through it.

// Each test binary that includes this uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Closes plaintext grain-call links (a connection that starts with
    /// the link's preface), as a member from before the link does.
    refuse_links: Arc<AtomicBool>,
    links_refused: Arc<AtomicUsize>,
    /// Bumped on every cut: open connections watch it and close.
    epoch: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (epoch, _) = watch::channel(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let refuse_links = Arc::new(AtomicBool::new(false));
        let links_refused = Arc::new(AtomicUsize::new(0));
        let (cut_flag, epochs, open_count) = (cut.clone(), epoch.clone(), open.clone());
        let (refusing, refused) = (refuse_links.clone(), Arc::clone(&links_refused));
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                // Counted and watching for cuts before the flag is read:
                // a cut that comes after the read sees this connection
                // open and closes it.
                open_count.fetch_add(1, Ordering::SeqCst);
                let mut closing = epochs.subscribe();
                if cut_flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    open_count.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let open_count = open_count.clone();
                let (refusing, refused) = (refusing.clone(), Arc::clone(&refused));
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    if refusing.load(Ordering::SeqCst)
                        && matches!(inbound.peek(&mut first).await, Ok(1) if first[0] == b'G')
                    {
                        refused.fetch_add(1, Ordering::SeqCst);
                        drop(inbound);
                        open_count.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = closing.changed() => {}
                        }
                    }
                    open_count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy {
            addr,
            cut,
            refuse_links,
            links_refused,
            epoch,
            open,
        }
    }

    /// From now on, closes plaintext grain-call links as a member from
    /// before the link would (it closes on the link's preface).
    pub fn refuse_links(&self) {
        self.refuse_links.store(true, Ordering::SeqCst);
    }

    /// How many link connections it closed.
    pub fn links_refused(&self) -> usize {
        self.links_refused.load(Ordering::SeqCst)
    }

    /// Closes every open connection (returns once they are closed, within
    /// 10 s or the test fails) and refuses new ones.
    pub async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy's connections did not close"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
