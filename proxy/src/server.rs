//! The listener: accepts clients, spawns one task per session, enforces `max_connections`, and shuts
//! down gracefully (stop accepting, let sessions finish up to `shutdown_timeout`, then close them).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::error::ConfigError;
use crate::session;

/// Where to send a client's CancelRequest: the server process behind one of our sessions.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The secret we handed the client.
    pub our_secret: Vec<u8>,
    pub server_process_id: u32,
    pub server_secret: Vec<u8>,
}

/// State shared by all sessions of one proxy; passed in, never global, so tests can run many proxies.
pub struct Shared {
    pub config: Arc<Config>,
    pub tls_acceptor: Option<TlsAcceptor>,
    /// DER of the certificate presented to clients.
    pub tls_cert: Option<Vec<u8>>,
    pub upstream_tls: Option<TlsConnector>,
    /// Our process id (as handed to clients) -> the server's key.
    pub cancel: DashMap<u32, CancelTarget>,
    /// Permits for `max_connections` client sessions.
    pub limit: Arc<Semaphore>,
    /// Fires when sessions must end now (after the shutdown grace period).
    pub kill: CancellationToken,
    /// Policy, plans, keys, audit, catalogs.
    pub guard: Arc<crate::guard::Guard>,
    next_session: AtomicU64,
}

impl Shared {
    /// Builds the shared state, loading TLS material once.
    pub fn new(
        config: Arc<Config>,
        guard: Arc<crate::guard::Guard>,
    ) -> Result<Arc<Shared>, ConfigError> {
        let (tls_acceptor, tls_cert) = match &config.tls {
            Some(t) => {
                let (cfg, cert) = crate::tls::server_config(t)?;
                (Some(TlsAcceptor::from(cfg)), Some(cert))
            }
            None => (None, None),
        };
        let upstream_tls = crate::tls::upstream_config(&config)?.map(TlsConnector::from);
        Ok(Arc::new(Shared {
            limit: Arc::new(Semaphore::new(config.max_connections as usize)),
            config,
            tls_acceptor,
            tls_cert,
            upstream_tls,
            cancel: DashMap::new(),
            kill: CancellationToken::new(),
            guard,
            next_session: AtomicU64::new(1),
        }))
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// Binds the configured listen address.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Runs the accept loop until `shutdown` fires, then drains sessions for up to `shutdown_timeout` and
/// closes the rest.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let addr = listener.local_addr().ok();
    info!(listen = ?addr, upstream = %shared.config.upstream, "pgcloak accepting connections");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => spawn_session(&tracker, stream, peer, shared.clone()),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        info!(sessions = open, timeout = ?shared.config.shutdown_timeout, "shutting down: waiting for sessions to finish");
    }
    if tokio::time::timeout(shared.config.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            sessions = tracker.len(),
            "shutdown timeout reached: closing remaining sessions"
        );
        shared.kill.cancel();
        tracker.wait().await;
    }
    info!("pgcloak stopped");
}

fn spawn_session(tracker: &TaskTracker, stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let id = shared.next_session_id();
    let span = tracing::info_span!("session", id, client = %peer);
    tracker.spawn(session::run(stream, peer, id, shared).instrument(span));
}
