//! State shared by every session of one proxy: config, TLS material, the cancel map, the connection
//! limit, the kill switch and the services ([`crate::services::Services`]). Its own module so that the
//! listener ([`crate::server`]) and the sessions ([`crate::session`]) both depend on it and not on
//! each other.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ConfigError;

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
    /// Client-facing TLS: the acceptor and the certificate it presents, reloaded on SIGHUP.
    pub client_tls: ClientTls,
    pub upstream_tls: Option<TlsConnector>,
    /// The server process id (as handed to clients, with our own secret) -> the server's key.
    pub cancel: DashMap<u32, CancelTarget>,
    /// Permits for `max_connections` client sessions.
    pub limit: Arc<Semaphore>,
    /// Fires when sessions must end now (after the shutdown grace period).
    pub kill: KillSwitch,
    /// Policy, plans, keys, audit, catalogs.
    pub services: Arc<crate::services::Services>,
    /// Counters for `/metrics` (crate::admin).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The sessions being served (the admin console lists and ends them).
    pub sessions: crate::registry::Registry,
    /// Asks the reload task to reload policy, keyring and TLS (the console's `RELOAD`).
    pub reload: crate::reload::Trigger,
    /// When the proxy started serving.
    pub started: std::time::Instant,
    next_session: AtomicU64,
}

impl Shared {
    /// Builds the shared state, loading TLS material once.
    pub fn new(
        config: Arc<Config>,
        services: Arc<crate::services::Services>,
        reload: crate::reload::Trigger,
    ) -> Result<Arc<Shared>, ConfigError> {
        let client_tls = ClientTls::load(config.tls.clone())?;
        let upstream_tls = crate::tls::upstream_config(&config)?.map(TlsConnector::from);
        Ok(Arc::new(Shared {
            limit: Arc::new(Semaphore::new(config.max_connections as usize)),
            config,
            client_tls,
            upstream_tls,
            cancel: DashMap::new(),
            kill: KillSwitch::default(),
            services,
            metrics: Arc::new(crate::metrics::Metrics::default()),
            sessions: crate::registry::Registry::default(),
            reload,
            started: std::time::Instant::now(),
            next_session: AtomicU64::new(1),
        }))
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// The client-facing TLS acceptor and the DER of the certificate it presents (compared with the
/// upstream's for SCRAM channel binding), swapped whole by [`ClientTls::reload`]: a handshake uses
/// one pair from start to end, new handshakes use the new pair.
pub struct TlsPair {
    pub acceptor: TlsAcceptor,
    /// The same certificate and key for the operations listener (ALPN `http/1.1`, not
    /// `postgresql`).
    pub http_acceptor: TlsAcceptor,
    pub cert: Vec<u8>,
}

/// `[tls]`, reloadable.
pub struct ClientTls {
    config: Option<crate::config::TlsConfig>,
    current: std::sync::RwLock<Option<Arc<TlsPair>>>,
}

impl ClientTls {
    pub fn load(config: Option<crate::config::TlsConfig>) -> Result<ClientTls, ConfigError> {
        let current = match &config {
            Some(t) => Some(Arc::new(Self::read(t)?)),
            None => None,
        };
        Ok(ClientTls {
            config,
            current: std::sync::RwLock::new(current),
        })
    }

    fn read(t: &crate::config::TlsConfig) -> Result<TlsPair, ConfigError> {
        let (cfg, cert) = crate::tls::server_config(t)?;
        let mut http = (*cfg).clone();
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsPair {
            acceptor: TlsAcceptor::from(cfg),
            http_acceptor: TlsAcceptor::from(Arc::new(http)),
            cert,
        })
    }

    /// The pair new handshakes use (`None`: no `[tls]`).
    pub fn current(&self) -> Option<Arc<TlsPair>> {
        self.current.read().map(|c| c.clone()).unwrap_or(None)
    }

    /// Reads `[tls] cert` and `key` again; on success new handshakes present the new certificate.
    /// On failure the pair in force stays and the error names the file. `Ok(false)`: no `[tls]`.
    pub fn reload(&self) -> Result<bool, ConfigError> {
        let Some(t) = &self.config else {
            return Ok(false);
        };
        let pair = Arc::new(Self::read(t)?);
        if let Ok(mut c) = self.current.write() {
            *c = Some(pair);
        }
        Ok(true)
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
