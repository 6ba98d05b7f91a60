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

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::session;
use crate::state::Shared;

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
