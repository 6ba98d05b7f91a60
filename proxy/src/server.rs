//! The listener: accepts clients, hands each session to one of the session threads, enforces
//! `max_connections`, and shuts down gracefully (stop accepting, let sessions finish up to
//! `shutdown_timeout`, then close them).
//!
//! Sessions run on `workers` threads, each an event loop of its own (crate::event_loop: a
//! single-threaded executor over its own epoll; thread per core, as PgBouncer's `so_reuseport`
//! processes): a session's two pumps and its sockets stay on one thread (its rare timers, catalog
//! loads and side connections run on the main runtime, see crate::timer), so a message costs no
//! cross-thread wake-up, no work-stealing bookkeeping and no atomic queue traffic. Measured on the
//! 2-core bench machine, the multi-threaded scheduler cost ~3.5 µs of CPU per pgbench transaction
//! more than one thread per loop (deploy/bench/RESULTS.md). Connections are dealt out round-robin;
//! shared state (policy, keys, catalogs, audit queue) is the same `Arc<Shared>` on every thread.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

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
    /// The server process id (as handed to clients, with our own secret) -> the server's key.
    pub cancel: DashMap<u32, CancelTarget>,
    /// Permits for `max_connections` client sessions.
    pub limit: Arc<Semaphore>,
    /// Fires when sessions must end now (after the shutdown grace period).
    pub kill: KillSwitch,
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
            kill: KillSwitch::default(),
            guard,
            next_session: AtomicU64::new(1),
        }))
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// Ends every session at once (the shutdown grace period is over).
#[derive(Default)]
pub struct KillSwitch {
    /// Set before `token` is cancelled: what [`Killed`] checks on every poll.
    fired: AtomicBool,
    token: CancellationToken,
}

impl KillSwitch {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Completes when the switch fires; cheap to poll again and again (the query phase polls it on
    /// every wake-up of a session). `CancellationToken` locks a mutex shared by every session on
    /// each poll, twice; this registers the task's waker with the token once and afterwards reads
    /// one atomic flag.
    pub fn killed(&self) -> Killed<'_> {
        Killed {
            switch: self,
            wait: None,
            registered: None,
        }
    }
}

/// See [`KillSwitch::killed`].
pub struct Killed<'a> {
    switch: &'a KillSwitch,
    wait: Option<Pin<Box<tokio_util::sync::WaitForCancellationFuture<'a>>>>,
    /// The waker the token will wake (a task's waker stays the same between polls).
    registered: Option<Waker>,
}

impl Future for Killed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.switch.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let switch = self.switch;
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(switch.token.cancelled()));
        if wait.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Binds the configured listen address.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// An accepted client on its way to a session thread.
struct Job {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

/// The session threads. Dropping this ends them (and any session still on them).
pub struct Workers {
    loops: Vec<crate::event_loop::Handle>,
    next: std::sync::atomic::AtomicUsize,
}

impl Workers {
    /// Starts `n` session threads (at least one). Must be called inside the main tokio runtime: the
    /// session threads run what sessions await besides their sockets (timers, catalog loads, side
    /// connections) on it.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let rt = tokio::runtime::Handle::current();
        let loops = (0..n.max(1))
            .map(|i| crate::event_loop::start(format!("pgcloak-worker-{i}"), rt.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Workers {
            loops,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Hands an accepted client to the next session thread.
    fn dispatch(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        self.loops[i].submit(Box::new(move || start_session(job)));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for l in &self.loops {
            l.close();
        }
    }
}

/// Runs the accept loop until `shutdown` fires, then drains sessions for up to `shutdown_timeout` and
/// closes the rest.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    workers: Workers,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let addr = listener.local_addr().ok();
    info!(listen = ?addr, upstream = %shared.config.upstream, workers = workers.loops.len(), "pgcloak accepting connections");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => match stream.into_std() {
                Ok(stream) => workers.dispatch(Job {
                    stream,
                    peer,
                    shared: shared.clone(),
                    tracker: tracker.clone(),
                }),
                Err(e) => warn!(error = %e, client = %peer, "cannot hand over the connection"),
            },
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
        shared.kill.fire();
        tracker.wait().await;
    }
    info!("pgcloak stopped");
}

/// Starts a session on the current (session) thread.
fn start_session(job: Job) {
    let Job {
        stream,
        peer,
        shared,
        tracker,
    } = job;
    // A second handle on the client's socket, for the answer if the session's task panics.
    let reply = stream.try_clone().ok();
    let stream = match crate::event_loop::Conn::new(stream) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, client = %peer, "cannot register the connection");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let id = shared.next_session_id();
    let label = crate::logging::SessionLabel { id, client: peer };
    let witness = std::rc::Rc::new(session::Witness::default());
    let on_panic: crate::event_loop::OnPanic = {
        let (shared, witness) = (shared.clone(), witness.clone());
        Box::new(move |msg| session::panicked(&shared, id, peer, &witness, reply, msg))
    };
    let session = tracker.track_future(crate::logging::Labelled::new(
        label,
        session::run(stream, peer, id, shared, witness),
    ));
    if let Err(e) = crate::event_loop::spawn_guarded(session, on_panic) {
        warn!(error = %e, client = %peer, "cannot start the session");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn killed_waits_for_the_switch_and_wakes_its_task() {
        let switch = Arc::new(KillSwitch::default());
        let (polled, ready) = tokio::sync::oneshot::channel();
        let s = switch.clone();
        let waiter = tokio::spawn(async move {
            let mut killed = std::pin::pin!(s.killed());
            // Polled many times before the switch fires (as the query phase does on every wake-up).
            for _ in 0..3 {
                assert!(futures_util::poll!(killed.as_mut()).is_pending());
                tokio::task::yield_now().await;
            }
            let _ = polled.send(());
            killed.await;
        });
        ready.await.unwrap();
        assert!(!waiter.is_finished());
        switch.fire();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the fired switch wakes the waiting task")
            .unwrap();
        // Once fired, a new future is ready at once.
        assert!(futures_util::poll!(std::pin::pin!(switch.killed())).is_ready());
    }
}
