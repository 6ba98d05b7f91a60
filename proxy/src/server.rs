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

use crate::catalog::CatalogError;
use crate::config::Config;
use crate::error::ConfigError;
use crate::keys::KeysError;
use crate::policy_file::PolicyLoadError;
use crate::services::Services;
use crate::session;
use crate::state::Shared;

/// Why the proxy could not start serving: one error for everything [`serve`] sets up, each variant
/// keeping its typed cause (as rustls's `Error` does), each message naming the config key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyLoadError),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("cannot derive the audit and masking keys from the master key: {0}")]
    Derive(#[from] pgcloak_keymgr::KeyError),
    #[error("cannot start the audit trail ([audit] in the config): {0}")]
    Audit(#[from] pgcloak_audit::AuditError),
    #[error("cannot listen on {addr} (config key `admin.listen`): {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the session threads (config key `workers`): {0}")]
    Workers(#[source] std::io::Error),
    /// The thread loading the policy and keys ended abnormally (the message is its panic's).
    #[error("loading the policy and keys failed: {0}")]
    Startup(String),
}

/// Runs the whole proxy for `config` on `listener` until `shutdown` fires: loads the policy, the
/// master key and the keyring (creating keys for newly encrypted policy columns), starts the audit
/// trail, the session threads and the reload watcher, serves ([`run`]), then drains the audit
/// trail. The binary's `pgcloak serve` is this; tests and embeddings call it in-process. Must run
/// inside a multi-threaded tokio runtime (side connections and timers run on it).
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // Blocking work (files, a key command, the keyring table over its own side connection) runs
    // off the runtime's threads.
    let cfg = config.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, ServeError> {
        let policy = crate::policy_file::load_policy(&cfg)?;
        // The master key also keys the audit trail: no key, no service.
        let master = crate::keys::load_master_key(&cfg)?;
        let (keyring, created) = crate::keys::load_for_serve(&cfg, &master)?;
        Ok((policy, master, keyring, created))
    })
    .await
    .map_err(|e| ServeError::Startup(e.to_string()))?;
    let (policy, master, keyring, created) = loaded?;
    for c in &created {
        info!(column = %c, "created a key for a newly encrypted policy column");
    }
    info!(columns = keyring.list().len(), policy = %policy.version_hex(), "keyring and policy loaded");
    let signer = crate::audit_setup::signer(&master)?;
    let mask_key = master.mask_hash_key()?;
    let subject_keys = crate::subjects::SubjectKeys::new(&master)?;
    let audit = match crate::audit_setup::writer_config(&config) {
        None => {
            warn!("audit trail disabled: [audit] file is \"\", postgres = false and no nats");
            None
        }
        Some(wc) => {
            let (handle, _task) =
                pgcloak_audit::Auditor::start(wc, signer, config.instance.clone()).await?;
            Some(handle)
        }
    };
    let services = Arc::new(Services::new(
        config.clone(),
        policy,
        Arc::new(keyring),
        audit.clone(),
        mask_key,
        subject_keys,
        crate::timer::Timers::new(tokio::runtime::Handle::current()),
    ));
    let (trigger, reload_requests) = crate::reload::channel();
    let shared = Shared::new(config.clone(), services, trigger)?;
    if let Some(addr) = config.admin_listen {
        let admin = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Admin { addr, source })?;
        tokio::spawn(crate::admin::serve(admin, shared.clone(), shutdown.clone()));
    }
    let workers = Workers::start(config.workers).map_err(ServeError::Workers)?;
    // Stopped after the sessions have drained, so their last counts are written.
    let flush_stop = tokio_util::sync::CancellationToken::new();
    let flusher = tokio::spawn(crate::budgets::flush(
        config.clone(),
        shared.services.clone(),
        flush_stop.clone(),
    ));
    tokio::spawn(crate::grants::poll(
        config.clone(),
        shared.services.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::subjects::watch(
        config.clone(),
        shared.services.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::reload::watch(
        shared.clone(),
        master,
        reload_requests,
        shutdown.clone(),
    ));
    run(listener, shared, workers, shutdown).await;
    flush_stop.cancel();
    let _ = flusher.await;
    if let Some(a) = audit {
        if let Err(e) = a.shutdown().await {
            tracing::error!("audit trail did not shut down cleanly: {e}");
        }
    }
    Ok(())
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
