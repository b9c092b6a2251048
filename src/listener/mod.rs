//! Listening sockets: bind, accept under the global connection limit, TLS handshake
//! (bounded by `header_read_timeout`), then hand the connection to [`conn::serve`].
//! [`set`] keeps the running set of listeners and changes it on reload.

pub mod body;
pub mod clients;
pub mod conn;
pub mod http1;
pub mod set;
pub mod tls;
pub mod upgrade;

pub use body::RequestBody;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{ConnInfo, State};
use crate::metrics::ListenerMetrics;
use clients::{ClientConnections, ClientSlot};
use conn::{Builders, Protocol};

/// Binds a listening socket with `SO_REUSEADDR` and a generous backlog. The std socket can
/// be cloned for every worker thread's accept loop (they share one accept queue).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// What a reload may change on a listener that keeps its socket; read once per accepted
/// connection, so a connection keeps what it started with.
pub struct ListenerOptions {
    /// The listener's `name`: a rename on the same address keeps the socket and swaps this.
    pub name: Arc<str>,
    /// Certificates, SNI map, ALPN and minimum version: new handshakes use the latest.
    pub tls: Option<Arc<ServerConfig>>,
    pub redirect_https: Option<u16>,
    /// `gateway_active_connections` and the TLS handshake counters of this listener.
    pub metrics: Arc<ListenerMetrics>,
}

/// Everything an accept loop needs; one per listener and worker thread.
pub struct Acceptor {
    /// Registered with the runtime the accept loop runs on when it starts.
    pub tcp: Option<std::net::TcpListener>,
    /// Shared by the listener's accept loops on every worker; swapped on reload.
    pub options: Arc<ArcSwap<ListenerOptions>>,
    /// Built from `server:`; swapped on reload (new connections use the latest).
    pub builders: Arc<ArcSwap<Builders>>,
    pub state: Arc<ArcSwap<State>>,
    /// Shared by all listeners: `server.max_connections`.
    pub connections: Arc<Semaphore>,
    /// Shared by all listeners: `server.max_connections_per_ip`.
    pub clients: Arc<ClientConnections>,
    /// Cancelled when this listener is removed by a reload or the gateway drains: the loop
    /// stops accepting and the listener's connections finish their requests and close.
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
}

impl Acceptor {
    /// Accepts until shutdown; then the socket is closed so new connections are refused.
    pub async fn run(mut self) {
        let registered = self.tcp.take().map(TcpListener::from_std);
        let tcp = match registered {
            Some(Ok(tcp)) => tcp,
            Some(Err(e)) => {
                tracing::error!(listener = %self.name(), error = %e, "cannot register listener");
                return;
            }
            None => return,
        };
        loop {
            let permit = tokio::select! {
                permit = self.connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = self.stop.cancelled() => break,
            };
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                _ = self.stop.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning (the connection waits
                    // in the backlog), and say so at most once a second.
                    static FAILED: crate::observability::Throttle =
                        crate::observability::Throttle::new();
                    if let Some(held_back) = FAILED.ready() {
                        tracing::warn!(listener = %self.name(), error = %e, more_since_last = held_back, "accept failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            let options = self.options.load_full();
            let current = self.state.load();
            let server = &current.settings.server;
            let client = match server.max_connections_per_ip {
                0 => None,
                _ if server.trusts(peer.ip()) => None,
                limit => match self.clients.admit(peer.ip(), limit) {
                    Some(slot) => Some(slot),
                    None => {
                        self.refuse(peer, limit, &options);
                        continue; // dropping the stream closes it
                    }
                },
            };
            let handshake_timeout = server.header_read_timeout;
            drop(current);
            let _ = stream.set_nodelay(true);
            let open = options.metrics.open();
            let task = self.connection_task(stream, peer, handshake_timeout, options);
            self.tracker.spawn(async move {
                let _permit = permit;
                let _open = open;
                let _client: Option<ClientSlot> = client;
                task.await;
            });
        }
        tracing::info!(listener = %self.name(), "stopped accepting");
    }

    /// The listener's current name (a reload may rename it).
    fn name(&self) -> Arc<str> {
        self.options.load().name.clone()
    }

    /// A connection over `server.max_connections_per_ip`: counted, and a warning at most
    /// once a second (an attacker reconnecting in a loop must not flood the log).
    fn refuse(&self, peer: SocketAddr, limit: usize, options: &ListenerOptions) {
        options.metrics.refused_per_ip();
        if let Some(held_back) = self.clients.refusals.ready() {
            tracing::warn!(
                listener = %options.name,
                client = %peer.ip(),
                limit,
                more_since_last = held_back,
                "connection refused: the client address already holds server.max_connections_per_ip connections"
            );
        }
    }

    /// The connection's work, boxed: a plain and a TLS connection need futures of very
    /// different sizes (the TLS one holds the rustls session and handshake state), and one
    /// unboxed future would reserve the larger for every connection.
    fn connection_task(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        handshake_timeout: std::time::Duration,
        options: Arc<ListenerOptions>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let state = self.state.clone();
        let tls = options.tls.clone().map(TlsAcceptor::from);
        let builders = self.builders.load_full();
        let shutdown = self.stop.clone();
        let listener = options.name.clone();
        let redirect_https = options.redirect_https;
        let mut info = ConnInfo {
            peer,
            peer_header: crate::proxy::headers::peer_header(peer.ip()),
            listener,
            tls: tls.is_some(),
            sni: None,
            tls_version: None,
            redirect_https,
            sendfile: tls.is_none().then(crate::sendfile::Slot::default),
            metrics: options.metrics.clone(),
        };
        let Some(acceptor) = tls else {
            return Box::pin(conn::serve_tcp(
                stream,
                builders,
                state,
                Arc::new(info),
                shutdown,
            ));
        };
        Box::pin(async move {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    info.metrics.handshake_failed(false);
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    info.metrics.handshake_failed(true);
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            info.metrics.handshake(session.protocol_version());
            info.sni = session.server_name().map(|s| s.to_ascii_lowercase());
            info.tls_version = crate::observability::tls_version(session.protocol_version());
            let protocol = match session.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            let first_request_by = tokio::time::Instant::now() + handshake_timeout;
            let info = Arc::new(info);
            conn::serve(
                stream,
                protocol,
                builders,
                state,
                info,
                shutdown,
                first_request_by,
            )
            .await
        })
    }
}
