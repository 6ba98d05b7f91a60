//! One client session, phase by phase: `startup` (TLS, cancel dispatch), `upstream` (connect), `auth`
//! (relay), `query` (the two pumps through which every message passes), `cancel`.
//!
//! The query phase runs two pumps in one task: client→server and server→client. Neither waits on the
//! other's socket, so a server busy sending results never blocks a client that is still pipelining, and
//! only the server→client pump writes to the client (errors keep protocol order).

pub mod auth;
pub mod cancel;
pub mod io;
pub mod query;
pub mod startup;
pub mod track;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::error::SessionError;
use crate::protocol::frame::Direction;
use crate::protocol::messages::{error_response, Severity};
use crate::server::Shared;
use io::{FrameReader, Outbox};
use startup::Opening;

/// Who is on the other end, once startup is done.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub client: SocketAddr,
    pub user: String,
    pub database: String,
    pub application: String,
    pub tls: bool,
}

/// Runs one client connection to its end. Never panics the process; every failure is logged.
pub async fn run(tcp: TcpStream, peer: SocketAddr, id: u64, shared: Arc<Shared>) {
    let cfg = shared.config.clone();
    let opening = tokio::select! {
        r = tokio::time::timeout(cfg.startup_timeout, startup::negotiate(tcp, &shared)) => match r {
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
        _ = shared.kill.cancelled() => return,
    };
    let (mut client, leftover, startup) = match opening {
        Opening::Cancel { process_id, secret } => {
            cancel::relay(&shared, process_id, &secret).await;
            return;
        }
        Opening::Session {
            client,
            leftover,
            startup,
        } => (client, leftover, startup),
    };

    let Ok(_permit) = shared.limit.clone().try_acquire_owned() else {
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

    let info = SessionInfo {
        id,
        client: peer,
        user: startup.user().to_string(),
        database: startup.database().to_string(),
        application: startup.param("application_name").unwrap_or("").to_string(),
        tls: client.is_tls(),
    };
    debug!(user = %info.user, database = %info.database, tls = info.tls, "client startup");

    let server = tokio::select! {
        r = upstream::connect(&shared) => r,
        _ = shared.kill.cancelled() => Err(SessionError::Shutdown),
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
            && shared.tls_cert.is_some()
            && server.server_cert() == shared.tls_cert,
    };
    let (cr, cw) = client.split();
    let (sr, sw) = server.split();
    let max = cfg.max_message_size;
    let mut client_in = FrameReader::new(cr, leftover, Direction::Frontend, max);
    let mut client_out = Outbox::new(cw);
    let mut server_in = FrameReader::new(sr, BytesMut::new(), Direction::Backend, max);
    let mut server_out = Outbox::new(sw);

    if let Err(e) = server_out.send_now(&startup.raw).await {
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
    let auth = tokio::select! {
        r = tokio::time::timeout(remaining, auth::relay(&shared, binding, &mut client_in, &mut client_out, &mut server_in, &mut server_out)) => match r {
            Ok(r) => r,
            Err(_) => Err(SessionError::StartupTimeout(remaining)),
        },
        _ = shared.kill.cancelled() => Err(SessionError::Shutdown),
    };
    let _registration = match auth {
        Ok(r) => r,
        Err(e) => {
            match &e {
                SessionError::ServerRefused { code, .. } => {
                    info!(user = %info.user, database = %info.database, sqlstate = %code, "authentication failed")
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
    info!(user = %info.user, database = %info.database, application = %info.application, "session started");

    let end = query::run(
        &shared,
        &info,
        &mut client_in,
        &mut client_out,
        &mut server_in,
        &mut server_out,
    )
    .await;
    query::finish(&cfg, end, &mut client_out, &mut server_out).await;
}

fn log_end(e: &SessionError) {
    match e {
        SessionError::ClientGone => debug!("{e}"),
        SessionError::Client(_) | SessionError::ClientTls(_) => warn!("session ended: {e}"),
        _ => info!("session ended: {e}"),
    }
}
