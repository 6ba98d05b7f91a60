//! The query phase: every frontend and backend message passes through [`Frontend::on_frame`] and
//! [`Backend::on_frame`], the hook points where policy, rewriting and audit attach. Frames nobody changes
//! are forwarded as the bytes that arrived.

use std::sync::Mutex;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::auth::{client_read_err, server_read_err};
use super::io::{FrameReader, Outbox, ReadError};
use super::track::{Event, Outcome, Pending, Tracker};
use super::SessionInfo;
use crate::config::Config;
use crate::error::SessionError;
use crate::protocol::messages::{error_response, terminate, Severity};
use crate::protocol::Frame;
use crate::server::Shared;

/// How the query phase ended.
#[derive(Debug)]
pub enum End {
    /// The client sent Terminate.
    Terminated,
    /// The server sent a FATAL error and closed; the client has it already.
    ServerClosedWithError,
    Error(SessionError),
}

/// State of the client→server direction.
struct Frontend<'a> {
    tracker: &'a Mutex<Tracker>,
}

/// State of the server→client direction.
struct Backend<'a> {
    tracker: &'a Mutex<Tracker>,
    /// The last server message was a FATAL ErrorResponse.
    saw_fatal: bool,
    statements: u64,
}

impl Frontend<'_> {
    /// Inspects one client message before it is forwarded. Returns `false` for Terminate.
    fn on_frame(&mut self, frame: &Frame) -> bool {
        let pending = match frame.tag {
            b'Q' => Some(Pending::Query {
                started: Instant::now(),
            }),
            b'P' => Some(Pending::Parse),
            b'B' => Some(Pending::Bind),
            b'D' => Some(Pending::Describe),
            b'E' => Some(Pending::Execute {
                started: Instant::now(),
            }),
            b'C' => Some(Pending::Close),
            b'S' => Some(Pending::Sync),
            b'F' => Some(Pending::FunctionCall {
                started: Instant::now(),
            }),
            b'X' => return false,
            // Flush, CopyData, CopyDone, CopyFail: answered within the entry that started the COPY.
            _ => None,
        };
        if let Some(p) = pending {
            lock(self.tracker).push(p);
        }
        true
    }
}

impl Backend<'_> {
    /// Inspects one server message before it is forwarded to the client.
    fn on_frame(&mut self, frame: &Frame) {
        if frame.tag == b'E' {
            self.saw_fatal = crate::protocol::messages::error_fields(frame.body())
                .map(|f| f.severity == "FATAL" || f.severity == "PANIC")
                .unwrap_or(false);
        }
        let event = lock(self.tracker).on_backend(frame.tag, frame.body());
        if let Event::Statement(outcome) = event {
            self.statement_done(outcome);
        }
    }

    fn statement_done(&mut self, outcome: Outcome) {
        self.statements += 1;
        debug!(
            duration_us = outcome.started.elapsed().as_micros() as u64,
            rows = outcome.rows,
            sqlstate = outcome.sqlstate.as_deref().unwrap_or(""),
            "statement finished"
        );
    }
}

fn lock(m: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    // A panic while holding the lock cannot leave the queue half-updated in a way that matters more
    // than ending the session, and the session task would have unwound already.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs both pumps until either side ends the session.
pub async fn run<CR, CW, SR, SW>(
    shared: &Shared,
    info: &SessionInfo,
    client_in: &mut FrameReader<CR>,
    client_out: &mut Outbox<CW>,
    server_in: &mut FrameReader<SR>,
    server_out: &mut Outbox<SW>,
) -> End
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let tracker = Mutex::new(Tracker::new());
    let mut frontend = Frontend { tracker: &tracker };
    let mut backend = Backend {
        tracker: &tracker,
        saw_fatal: false,
        statements: 0,
    };
    let idle = shared.config.idle_timeout;
    let end = tokio::select! {
        e = client_to_server(&mut frontend, client_in, server_out, idle) => e,
        e = server_to_client(&mut backend, server_in, client_out) => e,
        _ = shared.kill.cancelled() => End::Error(SessionError::Shutdown),
    };
    info!(user = %info.user, statements = backend.statements, "session ended");
    end
}

async fn client_to_server<CR, SW>(
    fe: &mut Frontend<'_>,
    client_in: &mut FrameReader<CR>,
    server_out: &mut Outbox<SW>,
    idle: Option<std::time::Duration>,
) -> End
where
    CR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    loop {
        loop {
            let frame = match client_in.buffered() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return End::Error(SessionError::Client(e)),
            };
            let go_on = fe.on_frame(&frame);
            if let Err(e) = server_out.send(&frame.bytes).await {
                return End::Error(SessionError::ServerIo(e));
            }
            if !go_on {
                let _ = server_out.flush().await;
                return End::Terminated;
            }
        }
        if let Err(e) = server_out.flush().await {
            return End::Error(SessionError::ServerIo(e));
        }
        let read = match idle {
            None => client_in.fill().await,
            Some(d) => match tokio::time::timeout(d, client_in.fill()).await {
                Ok(r) => r,
                Err(_) if lock(fe.tracker).is_idle() => {
                    return End::Error(SessionError::IdleTimeout(d));
                }
                Err(_) => continue,
            },
        };
        if let Err(e) = read {
            return End::Error(client_read_err(e));
        }
    }
}

async fn server_to_client<SR, CW>(
    be: &mut Backend<'_>,
    server_in: &mut FrameReader<SR>,
    client_out: &mut Outbox<CW>,
) -> End
where
    SR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
{
    loop {
        loop {
            let frame = match server_in.buffered() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return End::Error(SessionError::Server(e)),
            };
            be.on_frame(&frame);
            if let Err(e) = client_out.send(&frame.bytes).await {
                return End::Error(SessionError::ClientIo(e));
            }
        }
        if let Err(e) = client_out.flush().await {
            return End::Error(SessionError::ClientIo(e));
        }
        match server_in.fill().await {
            Ok(()) => {}
            Err(ReadError::Eof) if be.saw_fatal => return End::ServerClosedWithError,
            Err(e) => return End::Error(server_read_err(e)),
        }
    }
}

/// Tells the client why the session ends (when it is still there) and closes both sides.
pub async fn finish<CW, SW>(
    cfg: &Config,
    end: End,
    client_out: &mut Outbox<CW>,
    server_out: &mut Outbox<SW>,
) where
    CW: AsyncWrite + Unpin,
    SW: AsyncWrite + Unpin,
{
    let fatal = match &end {
        End::Terminated | End::ServerClosedWithError => None,
        End::Error(e) => match e {
            SessionError::ClientGone | SessionError::ClientIo(_) => None,
            SessionError::Client(f) => {
                warn!("closing session: invalid message from client: {f}");
                Some((
                    "08P01",
                    format!("pgcloak: invalid message from client: {f}"),
                ))
            }
            SessionError::Server(f) => {
                warn!("closing session: invalid message from server: {f}");
                Some((
                    "08P01",
                    format!("pgcloak: invalid message from upstream PostgreSQL: {f}"),
                ))
            }
            SessionError::ServerGone | SessionError::ServerIo(_) => {
                warn!("closing session: upstream connection lost: {e}");
                Some((
                    "08006",
                    format!(
                        "pgcloak: lost connection to upstream PostgreSQL at {}",
                        cfg.upstream
                    ),
                ))
            }
            SessionError::Shutdown => Some((
                "57P01",
                "pgcloak: terminating connection because the proxy is shutting down".to_string(),
            )),
            SessionError::IdleTimeout(d) => Some((
                "57P05",
                format!(
                    "pgcloak: terminating connection due to idle timeout ({}s)",
                    d.as_secs()
                ),
            )),
            other => Some(("08006", format!("pgcloak: {other}"))),
        },
    };
    if let Some((code, msg)) = fatal {
        let _ = client_out
            .send_now(&error_response(Severity::Fatal, code, &msg, None))
            .await;
    }
    if !matches!(end, End::Terminated) {
        let _ = server_out.send_now(&terminate()).await;
    }
    client_out.shutdown().await;
    server_out.shutdown().await;
}
