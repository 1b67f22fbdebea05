//! TCP proxies a test can cut and heal: a network split between one process and the servers
//! it talks to. Give the process the proxies' addresses instead of the servers'; `cut` closes
//! every connection through them and refuses new ones (each is accepted and closed at once, as
//! a peer behind a dropped route appears to a client); `heal` lets connections through again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One proxy per upstream address, cut and healed together.
pub(crate) struct Split {
    /// The proxies' `host:port`s, in the order of the upstreams.
    pub(crate) addresses: Vec<String>,
    cut: Arc<AtomicBool>,
    /// Cancelled (and replaced) by `cut`: every connection through the proxies ends.
    connections: Arc<std::sync::Mutex<CancellationToken>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Split {
    /// Proxies to each of `upstreams` (`host:port`).
    pub(crate) async fn start(upstreams: &[String]) -> Split {
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let mut addresses = Vec::new();
        let mut tasks = Vec::new();
        for upstream in upstreams {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addresses.push(listener.local_addr().expect("address").to_string());
            let (upstream, cut, connections) = (upstream.clone(), cut.clone(), connections.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let ended = connections.lock().expect("lock").clone();
                    tokio::spawn(pipe(client, upstream.clone(), ended));
                }
            }));
        }
        Split {
            addresses,
            cut,
            connections,
            tasks,
        }
    }

    /// The proxies as a NATS URL list.
    pub(crate) fn nats_urls(&self) -> String {
        self.addresses
            .iter()
            .map(|address| format!("nats://{address}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Closes every connection through the proxies and refuses new ones.
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut connections = self.connections.lock().expect("lock");
        connections.cancel();
        *connections = CancellationToken::new();
    }

    /// Lets connections through again.
    pub(crate) fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        self.connections.lock().expect("lock").cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Copies both ways between `client` and `upstream` until either side closes or `ended`.
async fn pipe(mut client: TcpStream, upstream: String, ended: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = ended.cancelled() => {}
    }
}
