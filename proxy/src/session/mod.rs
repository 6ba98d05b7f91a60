//! One client session, phase by phase: `startup` (TLS, cancel dispatch), `upstream` (connect), `auth`
//! (relay), `query` (the two pumps through which every message passes), `cancel`.
//!
//! The query phase runs two pumps in one task: client→server and server→client. Neither waits on the
//! other's socket, so a server busy sending results never blocks a client that is still pipelining, and
//! only the server→client pump writes to the client (errors keep protocol order).

pub mod apply;
pub mod auth;
pub mod cancel;
pub mod context;
pub mod encoding;
pub mod events;
pub mod io;
pub mod lookup;
pub mod query;
mod select3;
pub mod startup;
pub mod subject_targets;
pub mod track;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::event_loop::Conn;
use bytes::BytesMut;
use tracing::{debug, info, warn};

use crate::error::SessionError;
use crate::protocol::frame::Direction;
use crate::protocol::messages::{error_response, Severity};
use crate::state::Shared;
use io::{FrameReader, Outbox};
use startup::Opening;

/// Who is on the other end, once startup is done.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub client: SocketAddr,
    /// Who this session is in its audit events, derived from the fields below: built when it
    /// starts and again when its role is known ([`SessionInfo::set_role`]), formatted once and
    /// shared by every event.
    pub audit_source: Arc<pgcloak_audit::EventSource>,
    pub user: String,
    pub database: String,
    pub application: String,
    pub tls: bool,
    /// The policy role (first listed policy role the login user is a member of, else `default`);
    /// `None` until known. Statements re-resolve it, so revocation applies from the next statement.
    pub role: Option<String>,
}

impl SessionInfo {
    /// Sets the policy role (and the audit source that carries it).
    pub fn set_role(&mut self, role: String) {
        self.role = Some(role);
        self.refresh_audit_source();
    }

    /// Rebuilds `audit_source` from the other fields.
    fn refresh_audit_source(&mut self) {
        self.audit_source = events::source(
            self.id,
            self.client,
            &self.user,
            self.role.as_deref(),
            &self.database,
            &self.application,
        );
    }
}

/// What a session has told about itself so far, for ending it from outside: the panic handler of its
/// task ([`panicked`]) reads it, on the session's own thread, to audit the end and answer the client.
#[derive(Debug, Default)]
pub struct Witness {
    info: std::cell::RefCell<Option<SessionInfo>>,
}

impl Witness {
    fn record(&self, info: &SessionInfo) {
        *self.info.borrow_mut() = Some(info.clone());
    }

    /// The session as last recorded (`None` before its startup message arrived).
    pub fn info(&self) -> Option<SessionInfo> {
        self.info.borrow().clone()
    }
}

/// Ends a session whose task panicked. The task is already dropped (its sockets closed, so the server
/// backend ends too); `reply` is a second handle on the client's socket. Logs the panic with the
/// session id, records an audit `error` event, tells a plaintext client `XX000` (over TLS the session's
/// TLS state went with its task, so the socket is only closed) and closes the socket.
pub fn panicked(
    shared: &Shared,
    id: u64,
    peer: SocketAddr,
    witness: &Witness,
    reply: Option<std::net::TcpStream>,
    msg: &str,
) {
    tracing::error!(session = id, client = %peer, "session ended by an internal error (a bug in pgcloak; please report it with this log): {msg}; other sessions are unaffected");
    let info = witness.info();
    if let Some(audit) = &shared.services.audit {
        let reason: String = format!("internal error, session ended: {msg}")
            .chars()
            .take(300)
            .collect();
        let ev = match &info {
            Some(i) => events::session_event(
                i,
                pgcloak_audit::Kind::Error,
                Some("XX000".into()),
                Some(reason),
            ),
            None => pgcloak_audit::NewEvent {
                who: events::source(id, peer, "", None, "", ""),
                sqlstate: Some("XX000".into()),
                decision: pgcloak_audit::Decision::Deny,
                reason: Some(reason),
                ..pgcloak_audit::NewEvent::new(pgcloak_audit::Kind::Error)
            },
        };
        let _ = audit.record(ev);
    }
    if let Some(mut sock) = reply {
        if info.as_ref().is_some_and(|i| !i.tls) {
            let frame = error_response(
                Severity::Fatal,
                "XX000",
                "pgcloak: internal error; this session was ended (other sessions are unaffected; the pgcloak log has the details)",
                None,
            );
            // Non-blocking, like the session's socket: a full send buffer loses the frame, not the loop.
            if let Err(e) = std::io::Write::write_all(&mut sock, &frame) {
                debug!(session = id, "cannot tell the client: {e}");
            }
        }
        // Closing a socket with unread input makes the kernel reset the connection, and a reset can
        // destroy the answer before the client reads it (a pipelining client may have sent more):
        // end our side, then read away what is already queued.
        let _ = sock.shutdown(std::net::Shutdown::Write);
        let mut scratch = [0u8; 8192];
        for _ in 0..64 {
            match std::io::Read::read(&mut sock, &mut scratch) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
}

/// Counts a client session in the metrics from its start (past the connection limit) to its end.
struct OpenSession;

impl OpenSession {
    fn count() -> OpenSession {
        crate::metrics::with(|c| c.sessions_opened.add(1));
        OpenSession
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        crate::metrics::with(|c| c.sessions_closed.add(1));
    }
}

/// Runs one client connection to its end. Never panics the process; every failure is logged (and a
/// panic in pgcloak's code ends only this session: see [`panicked`]).
pub async fn run(
    tcp: Conn,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
    witness: std::rc::Rc<Witness>,
) {
    let cfg = shared.config.clone();
    let opening = tokio::select! {
        r = shared.services.timers.timeout(cfg.startup_timeout, startup::negotiate(tcp, &shared)) => match r {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                log_end(&e);
                return;
            }
            Err(_) => {
                info!("client did not finish startup within {:?}", cfg.startup_timeout);
                return;
            }
        },
        _ = shared.kill.killed() => return,
    };
    let (mut client, leftover, startup, presented) = match opening {
        Opening::Cancel { process_id, secret } => {
            cancel::relay(&shared, process_id, &secret).await;
            return;
        }
        Opening::Session {
            client,
            leftover,
            startup,
            presented,
        } => (client, leftover, startup, presented),
    };

    let Ok(_permit) = shared.limit.clone().try_acquire_owned() else {
        shared
            .metrics
            .refused_max_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let e = startup::refuse(
            &mut client,
            "53300",
            "sorry, too many clients already",
            None,
        )
        .await;
        info!(max_connections = cfg.max_connections, "{e}");
        return;
    };

    let mut info = SessionInfo {
        id,
        client: peer,
        audit_source: pgcloak_audit::EventSource::none(),
        user: startup.user().to_string(),
        database: startup.database().to_string(),
        application: startup.param("application_name").unwrap_or("").to_string(),
        tls: client.is_tls(),
        role: None,
    };
    info.refresh_audit_source();
    witness.record(&info);
    crate::metrics::attach(&shared.metrics);
    let _open = OpenSession::count();
    debug!(user = %info.user, database = %info.database, tls = info.tls, "client startup");
    let console = info.database == crate::console::DATABASE;
    if console && !crate::console::allowed(&cfg, &info.user) {
        let (msg, hint) = crate::console::refusal(&shared, &info);
        let _ = startup::refuse(&mut client, "42501", &msg, Some(hint)).await;
        return;
    }

    let server = tokio::select! {
        r = upstream::connect(&shared) => r,
        _ = shared.kill.killed() => Err(SessionError::Shutdown),
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            warn!("{e}");
            let _ = startup::refuse(
                &mut client,
                "08001",
                &format!("pgcloak: {e}"),
                Some("Check that PostgreSQL is running and that `upstream` in the pgcloak config points at it."),
            )
            .await;
            return;
        }
    };

    // SCRAM channel binding (tls-server-end-point) hashes the server certificate, so it survives the
    // relay exactly when pgcloak presents the same certificate as PostgreSQL.
    let binding = auth::Binding {
        client_tls: client.is_tls(),
        upstream_tls: server.is_tls(),
        same_certificate: client.is_tls()
            && presented
                .as_ref()
                .is_some_and(|p| server.server_cert().as_deref() == Some(&p.cert[..])),
    };
    let (cr, cw) = client.split();
    let (sr, sw) = server.split();
    let max = cfg.max_message_size;
    let mut client_in = FrameReader::new(cr, leftover, Direction::Frontend, max);
    let mut client_out = Outbox::new(cw);
    let mut server_in = FrameReader::new(sr, BytesMut::new(), Direction::Backend, max);
    let mut server_out = Outbox::new(sw);

    let first = if console {
        crate::console::startup_for(&startup, &cfg)
    } else {
        startup.raw.clone()
    };
    if let Err(e) = server_out.send_now(&first).await {
        warn!(error = %e, "cannot send startup to upstream");
        let msg = format!(
            "pgcloak: lost connection to upstream PostgreSQL at {}: {e}",
            cfg.upstream
        );
        let _ = client_out
            .send_now(&error_response(Severity::Fatal, "08006", &msg, None))
            .await;
        return;
    }

    let remaining = cfg.startup_timeout;
    let encoding = encoding::ClientEncoding::new(true);
    let auth = tokio::select! {
        r = shared.services.timers.timeout(remaining, auth::relay(&shared, binding, &encoding, &mut client_in, &mut client_out, &mut server_in, &mut server_out)) => match r {
            Ok(r) => r,
            Err(_) => Err(SessionError::StartupTimeout(remaining)),
        },
        _ = shared.kill.killed() => Err(SessionError::Shutdown),
    };
    let (_registration, ready) = match auth {
        Ok(r) => r,
        Err(e) => {
            match &e {
                SessionError::ServerRefused { code, message } => {
                    info!(user = %info.user, database = %info.database, sqlstate = %code, "authentication failed");
                    if let Some(audit) = &shared.services.audit {
                        let kind = if code.starts_with("28") {
                            pgcloak_audit::Kind::AuthFailed
                        } else {
                            pgcloak_audit::Kind::Connect
                        };
                        let _ = audit.record(events::session_event(
                            &info,
                            kind,
                            Some(code.clone()),
                            Some(message.clone()),
                        ));
                    }
                }
                SessionError::ServerGone | SessionError::ServerIo(_) => {
                    let msg = format!("pgcloak: lost connection to upstream PostgreSQL at {} during authentication", cfg.upstream);
                    let _ = client_out
                        .send_now(&error_response(Severity::Fatal, "08006", &msg, None))
                        .await;
                    log_end(&e);
                }
                _ => log_end(&e),
            }
            server_out.shutdown().await;
            return;
        }
    };
    if console {
        // Authenticated by PostgreSQL: from here on pgcloak answers.
        let _ = server_out
            .send_now(&crate::protocol::messages::terminate())
            .await;
        server_out.shutdown().await;
        crate::console::serve(&shared, &info, &mut client_in, &mut client_out).await;
        return;
    }
    if let Err((code, msg)) = admit(&shared, &mut info).await {
        warn!(user = %info.user, "{msg}");
        let _ = client_out
            .send_now(&error_response(Severity::Fatal, code, &msg, None))
            .await;
        let _ = server_out
            .send_now(&crate::protocol::messages::terminate())
            .await;
        return;
    }
    witness.record(&info);
    if let Err(e) = client_out.send_now(&ready.bytes).await {
        log_end(&SessionError::ClientIo(e));
        return;
    }
    info!(user = %info.user, database = %info.database, application = %info.application, role = info.role.as_deref().unwrap_or(""), "session started");
    let started = std::time::Instant::now();
    let live = Arc::new(crate::registry::Live::new(&info, false));
    let _listed = shared.sessions.register(live.clone());

    let end = query::run(
        &shared,
        &info,
        &live,
        &encoding,
        &mut client_in,
        &mut client_out,
        &mut server_in,
        &mut server_out,
    )
    .await;
    query::finish(&cfg, end, &mut client_out, &mut server_out).await;
    if let Some(audit) = &shared.services.audit {
        let mut ev = events::session_event(&info, pgcloak_audit::Kind::Disconnect, None, None);
        ev.duration_us = Some(started.elapsed().as_micros() as u64);
        let _ = audit.record(ev);
    }
}

/// Decides whether an authenticated session may start: resolves its policy role and records the
/// connect event (in block mode, a session that cannot be audited is refused).
async fn admit(shared: &Shared, info: &mut SessionInfo) -> Result<(), (&'static str, String)> {
    let guard = &shared.services;
    let policy = guard.policy();
    if policy.roles().is_empty() {
        info.set_role(policy.default_role().name.clone());
    } else {
        match guard.memberships(&info.database, &info.user).await {
            Ok(m) => {
                let names: Vec<&str> = m.iter().map(String::as_str).collect();
                info.set_role(policy.role_for(&names).name.clone());
            }
            Err(e) if policy.protected_table_names().is_empty() => {
                debug!("role membership unknown: {e}");
            }
            Err(e) => {
                return Err((
                    "58000",
                    format!("pgcloak: {e}; check the [catalog] login in the pgcloak config"),
                ));
            }
        }
    }
    if let Some(audit) = &guard.audit {
        let ev = events::session_event(info, pgcloak_audit::Kind::Connect, None, None);
        if let Err(e) = audit.record(ev) {
            if shared.config.audit.on_failure == crate::config::OnFailure::Block {
                return Err((
                    "58000",
                    format!("pgcloak: connection refused because it cannot be audited: {e}"),
                ));
            }
        }
    }
    Ok(())
}

fn log_end(e: &SessionError) {
    match e {
        SessionError::ClientGone => debug!("{e}"),
        SessionError::Client(_) | SessionError::ClientTls(_) => warn!("session ended: {e}"),
        _ => info!("session ended: {e}"),
    }
}
