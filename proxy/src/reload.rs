//! Reloading what can change under a running proxy: the policy file, the keyring and the
//! client-facing TLS certificate. One task ([`watch`]) does all of it: on SIGHUP, on a request from
//! the admin console's `RELOAD` ([`Trigger`]), and when the policy or keyring file changes (polled
//! every second; a keyring in PostgreSQL is re-read every 10 seconds). Whatever does not load is
//! reported and the version in force stays.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::services::CATALOG_TTL;
use crate::state::Shared;

/// What one forced reload did, per part: `Ok(what is in force now)` or `Err(why not)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub parts: Vec<(&'static str, Result<String, String>)>,
}

/// Asks the [`watch`] task for a reload of everything and waits for its report.
#[derive(Clone)]
pub struct Trigger(mpsc::Sender<oneshot::Sender<Report>>);

/// The receiving end of a [`Trigger`], handed to [`watch`].
pub struct Requests(mpsc::Receiver<oneshot::Sender<Report>>);

pub fn channel() -> (Trigger, Requests) {
    let (tx, rx) = mpsc::channel(8);
    (Trigger(tx), Requests(rx))
}

impl Trigger {
    /// Reloads policy, keyring and TLS now; `None` when the reload task is not running (shutdown).
    pub async fn reload(&self) -> Option<Report> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.ok()?;
        rx.await.ok()
    }
}

/// Runs until `stop` fires. See the module docs.
pub async fn watch(
    shared: Arc<Shared>,
    master: pgcloak_keymgr::MasterKey,
    mut requests: Requests,
    stop: tokio_util::sync::CancellationToken,
) {
    let config = shared.config.clone();
    let master = Arc::new(master);
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes and RELOAD only");
            None
        }
    };
    let stamp = |p: Option<&std::path::Path>| {
        p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let keyring_file = match &config.keys.keyring {
        crate::config::KeyringLocation::File(p) => Some(p.clone()),
        crate::config::KeyringLocation::Postgres => None,
    };
    let mut last_policy = stamp(config.policy.as_deref());
    let mut last_keyring = stamp(keyring_file.as_deref());
    let mut last_pg_check = Instant::now();
    let mut last_expiry = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (forced, reply) = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => (false, None),
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => (true, None),
            r = requests.0.recv() => match r {
                Some(reply) => (true, Some(reply)),
                None => (false, None),
            },
        };
        let mut report = Report { parts: Vec::new() };
        if let Some(path) = &config.policy {
            let now = stamp(Some(path));
            if forced || now != last_policy {
                last_policy = now;
                report.parts.push(("policy", reload_policy(&shared)));
            }
        }
        if last_expiry.elapsed() >= CATALOG_TTL {
            last_expiry = Instant::now();
            shared.services.expire_catalogs();
        }
        let now = stamp(keyring_file.as_deref());
        let due = match keyring_file {
            Some(_) => now != last_keyring,
            None => last_pg_check.elapsed() >= Duration::from_secs(10),
        };
        if forced || due {
            last_keyring = now;
            last_pg_check = Instant::now();
            report
                .parts
                .push(("keyring", reload_keyring(&shared, &master, forced).await));
        }
        if forced {
            report.parts.push(("tls", reload_tls(&shared)));
        }
        if let Some(reply) = reply {
            let _ = reply.send(report);
        }
    }
}

fn reload_policy(shared: &Shared) -> Result<String, String> {
    let services = &shared.services;
    let stats = &services.stats;
    match crate::policy_file::load_policy(&shared.config) {
        Ok(p) => {
            let version = p.version_hex().to_string();
            services.set_policy(p);
            stats.policy_reloads.fetch_add(1, Ordering::Relaxed);
            stats.last_policy_reload_ok.store(true, Ordering::Relaxed);
            info!(version = %version, "policy reloaded");
            Ok(format!(
                "reloaded: version {version}, generation {}",
                services.policy_generation()
            ))
        }
        Err(e) => {
            stats.policy_reload_failures.fetch_add(1, Ordering::Relaxed);
            stats.last_policy_reload_ok.store(false, Ordering::Relaxed);
            warn!("policy reload failed, keeping the previous policy: {e}");
            Err(format!("{e}; the previous policy stays in force"))
        }
    }
}

/// Re-reads the keyring; swaps it in when its generation moved (or always when `forced`).
async fn reload_keyring(
    shared: &Shared,
    master: &Arc<pgcloak_keymgr::MasterKey>,
    forced: bool,
) -> Result<String, String> {
    let services = &shared.services;
    let (cfg, key) = (shared.config.clone(), master.clone());
    let loaded = tokio::task::spawn_blocking(move || crate::keys::load_for_serve(&cfg, &key))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match loaded {
        Ok((keyring, created)) => {
            let generation = keyring.generation();
            if forced || generation != services.keyring().generation() {
                info!(generation, created = created.len(), "keyring reloaded");
                services.set_keyring(keyring);
            }
            if let Ok(mut e) = services.stats.keyring_error.lock() {
                *e = None;
            }
            Ok(format!("generation {generation}"))
        }
        Err(e) => {
            services
                .stats
                .keyring_reload_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!("keyring reload failed, keeping the previous keyring: {e}");
            if let Ok(mut last) = services.stats.keyring_error.lock() {
                *last = Some(e.clone());
            }
            Err(format!("{e}; the previous keyring stays in force"))
        }
    }
}

/// New handshakes use the reloaded pair, sessions already open keep theirs.
fn reload_tls(shared: &Shared) -> Result<String, String> {
    match shared.client_tls.reload() {
        Ok(true) => {
            info!("TLS certificate and key reloaded");
            Ok("reloaded".into())
        }
        Ok(false) => Ok("not configured".into()),
        Err(e) => {
            warn!("TLS certificate reload failed, keeping the certificate in force: {e}");
            Err(format!("{e}; the certificate in force stays"))
        }
    }
}
