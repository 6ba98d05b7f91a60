//! The sessions a proxy is serving, as the admin console lists them (`SHOW SESSIONS`) and ends them
//! (`KILL`). A session enters when it is admitted and leaves when its task ends ([`Registered`]).
//! Each keeps its own counters, written only by its own task (no contention on the data path) and
//! read by the console.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dashmap::DashMap;

use crate::state::{KillSwitch, Killed};

/// Every live session by id.
#[derive(Default)]
pub struct Registry {
    map: DashMap<u64, Arc<Live>>,
}

impl Registry {
    /// Lists `live` until the returned guard drops.
    pub fn register(&self, live: Arc<Live>) -> Registered<'_> {
        let id = live.id;
        self.map.insert(id, live);
        Registered { registry: self, id }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Live>> {
        self.map.get(&id).map(|l| l.clone())
    }

    /// Every live session, by id.
    pub fn list(&self) -> Vec<Arc<Live>> {
        let mut all: Vec<Arc<Live>> = self.map.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|l| l.id);
        all
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Removes its session from the registry on drop.
pub struct Registered<'a> {
    registry: &'a Registry,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.map.remove(&self.id);
    }
}

/// What the console shows of one session; `state` and `statements` change as it runs.
pub struct Live {
    pub id: u64,
    pub user: String,
    /// The policy role it was admitted with.
    pub role: String,
    pub database: String,
    pub application: String,
    pub client: SocketAddr,
    pub tls: bool,
    pub since: SystemTime,
    statements: AtomicU64,
    state: AtomicU8,
    kill: KillSwitch,
    killed_by: Mutex<Option<String>>,
}

/// [`Live::state`] values: PostgreSQL's ReadyForQuery status bytes, and two of our own.
const ACTIVE: u8 = b'A';
const CONSOLE: u8 = b'C';

impl Live {
    pub fn new(info: &crate::session::SessionInfo, console: bool) -> Live {
        Live {
            id: info.id,
            user: info.user.clone(),
            role: info.role.clone().unwrap_or_default(),
            database: info.database.clone(),
            application: info.application.clone(),
            client: info.client,
            tls: info.tls,
            since: SystemTime::now(),
            statements: AtomicU64::new(0),
            state: AtomicU8::new(if console { CONSOLE } else { b'I' }),
            kill: KillSwitch::default(),
            killed_by: Mutex::new(None),
        }
    }

    /// The number of statements finished so far.
    #[inline]
    pub fn set_statements(&self, n: u64) {
        self.statements.store(n, Ordering::Relaxed);
    }

    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// A statement was sent to the server.
    #[inline]
    pub fn set_active(&self) {
        self.state.store(ACTIVE, Ordering::Relaxed);
    }

    /// The server is ready for the next statement (`status`: ReadyForQuery's `I`, `T` or `E`).
    #[inline]
    pub fn set_ready(&self, status: u8) {
        self.state.store(status, Ordering::Relaxed);
    }

    /// Every state [`Live::metric_state`] names, in order.
    pub const METRIC_STATES: [&'static str; 5] = [
        "active",
        "idle",
        "idle_in_transaction",
        "idle_in_transaction_aborted",
        "console",
    ];

    /// The state as a metric label ([`Live::METRIC_STATES`]).
    pub fn metric_state(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            ACTIVE => "active",
            CONSOLE => "console",
            b'T' => "idle_in_transaction",
            b'E' => "idle_in_transaction_aborted",
            _ => "idle",
        }
    }

    /// Whether this is an admin console session (it holds no server connection).
    pub fn is_console(&self) -> bool {
        self.state.load(Ordering::Relaxed) == CONSOLE
    }

    /// As `pg_stat_activity.state` words it (plus `console` for an admin console session).
    pub fn state(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            ACTIVE => "active",
            CONSOLE => "console",
            b'T' => "idle in transaction",
            b'E' => "idle in transaction (aborted)",
            _ => "idle",
        }
    }

    /// Ends the session (its client is told `57P01`), naming who asked.
    pub fn kill(&self, by: &str) {
        if let Ok(mut k) = self.killed_by.lock() {
            k.get_or_insert_with(|| by.to_string());
        }
        self.kill.fire();
    }

    /// Completes once [`Live::kill`] was called.
    pub fn killed(&self) -> Killed<'_> {
        self.kill.killed()
    }

    /// Who killed the session, once it was.
    pub fn killed_by(&self) -> Option<String> {
        self.killed_by.lock().ok().and_then(|k| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> crate::session::SessionInfo {
        crate::session::SessionInfo {
            id,
            client: "127.0.0.1:5000".parse().unwrap(),
            audit_source: pgcloak_audit::EventSource::none(),
            user: "alice".into(),
            database: "app".into(),
            application: "psql".into(),
            tls: false,
            role: Some("support".into()),
        }
    }

    #[test]
    fn sessions_are_listed_while_registered_and_report_their_state() {
        let reg = Registry::default();
        let a = Arc::new(Live::new(&info(7), false));
        let b = Arc::new(Live::new(&info(3), true));
        let ga = reg.register(a.clone());
        {
            let _gb = reg.register(b.clone());
            let ids: Vec<u64> = reg.list().iter().map(|l| l.id).collect();
            assert_eq!(ids, [3, 7]);
            assert_eq!(b.state(), "console");
        }
        assert_eq!(reg.len(), 1);
        assert_eq!(a.state(), "idle");
        a.set_active();
        assert_eq!(a.state(), "active");
        a.set_ready(b'T');
        assert_eq!(a.state(), "idle in transaction");
        a.set_ready(b'E');
        assert_eq!(a.state(), "idle in transaction (aborted)");
        a.set_statements(12);
        assert_eq!(reg.get(7).unwrap().statements(), 12);
        drop(ga);
        assert!(reg.is_empty());
        assert!(reg.get(7).is_none());
    }

    #[tokio::test]
    async fn kill_wakes_the_session_and_keeps_the_first_killer() {
        let live = Arc::new(Live::new(&info(1), false));
        let l = live.clone();
        let waiter = tokio::spawn(async move { l.killed().await });
        tokio::task::yield_now().await;
        assert!(live.killed_by().is_none());
        live.kill("dba");
        live.kill("other");
        waiter.await.unwrap();
        assert_eq!(live.killed_by().as_deref(), Some("dba"));
    }
}
