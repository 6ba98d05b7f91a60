//! The query phase: every frontend and backend message passes through [`Frontend::on_frame`] and
//! [`Backend::on_frame`], the hook points where policy, rewriting and audit attach. Frames nobody changes
//! are forwarded as the bytes that arrived.
//!
//! Refusals (policy, or an unavailable audit trail in block mode) are raised by the server itself: the
//! refused statement is replaced by a `DO` block that raises the proxy's SQLSTATE and message, so the
//! transaction is aborted — or the implicit transaction rolled back — exactly as PostgreSQL does for any
//! failing statement, and the error arrives in its place in a pipelined stream.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use bytes::Bytes;
use pgcloak_policy::{lex, names_any, Lexed, Plan, Policy, StatementKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::apply;
use super::auth::{client_read_err, server_read_err};
use super::context::DataCtx;
use super::context::{lock_shape, raise_sql, PortalCtx, Refusal, StmtCtx};
use super::encoding::{self, ClientEncoding};
use super::io::{FrameReader, Outbox, ReadError, ReadReady};
use super::lookup::{NameMap, RecentParses};
use super::subject_targets;
use super::SessionInfo;
use crate::config::Config;
use crate::error::SessionError;
use crate::protocol::messages::{self, error_response, terminate, Severity};
use crate::protocol::FrameRef;
use crate::registry::Live;
use crate::rewrite::{CopyInRewriter, CopyOutRewriter, RowShape};
use crate::services::Services;
use crate::session::track::{Action, Barrier, BarrierKind, Pending, Tracker};
use crate::state::Shared;
use pgcloak_keymgr::Keyring;
use pgcloak_policy::{CopyDirection, CopyEndpoint};

mod backend;
mod copy_in;
mod extended;
mod frontend;
mod simple;

use backend::*;

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
    shared: &'a Shared,
    info: &'a SessionInfo,
    /// The plans of the cursors this session declared through pgcloak, by name: a `FETCH` gets its
    /// cursor's outputs and `max_rows` ([`pgcloak_policy::StatementPlan::for_fetch`]).
    /// Each with the grants (their ids) in force at its DECLARE.
    cursors: Mutex<std::collections::HashMap<String, (pgcloak_policy::StatementPlan, String)>>,
    /// This session as the admin console sees it.
    live: &'a Live,
    tracker: &'a Mutex<Tracker>,
    /// Prepared statements by name.
    statements: NameMap<Arc<StmtCtx>>,
    /// Portals by name.
    portals: NameMap<Arc<PortalCtx>>,
    /// Statements parsed recently that need no rewriting (drivers re-parse the unnamed statement).
    recent: RecentParses,
    /// After a refusal in the extended protocol: drop client messages until Sync.
    skip_until_sync: bool,
    /// COPY FROM STDIN statements sent and not finished, in order, with their data rewriter.
    copy_in: VecDeque<Option<CopyInRewriter>>,
    /// Entries for the messages processed since the last write upstream: published to the tracker
    /// under one lock just before those messages reach the server (see [`Frontend::publish`]).
    pending: VecDeque<Pending>,
    /// The last message processed sets this barrier: forward nothing more until the server
    /// finished it. Installed by [`Frontend::publish`].
    holding: Option<BarrierKind>,
    /// Signalled by the backend pump when it releases the barrier.
    released: &'a Notify,
    /// Whether the client's text is UTF-8.
    encoding: &'a ClientEncoding,
    /// What `on_frame` decided for the message it did not pass unchanged (see
    /// [`Frontend::take_decision`]).
    decision: Option<Result<Forward, SessionError>>,
    /// The time every statement is stamped with when nothing reads statement durations (no audit
    /// trail, no debug log): saves a clock read per statement. `None`: read the clock.
    fixed_time: Option<Instant>,
}

/// State of the server→client direction.
struct Backend<'a> {
    shared: &'a Shared,
    info: &'a SessionInfo,
    live: &'a Live,
    tracker: &'a Mutex<Tracker>,
    /// The last server message was a FATAL ErrorResponse.
    saw_fatal: bool,
    statements: u64,
    /// The result rows streaming now.
    rows: Option<RowState>,
    /// Whether `rows` was looked up for the result streaming now (`None` then means its rows pass
    /// through unchanged), so a large plain result costs no lookup per row.
    rows_known: bool,
    /// The COPY TO STDOUT data streaming now, when it must be rewritten.
    copy_out: Option<CopyOut>,
    /// The statement finishing now exceeded max_rows (its outcome is a refusal).
    max_rows_hit: bool,
    /// The COPY TO STDOUT streaming now counts against an export budget: its statement, limit
    /// and rows so far (one CopyData per row).
    copy_rows: Option<(Arc<StmtCtx>, backend::RowLimit, u64)>,
    /// A budget cut that COPY TO: its error replaced CopyDone, so its CommandComplete is dropped.
    copy_cut: bool,
    /// What replaces the message `on_frame` just declined to pass unchanged (see
    /// [`Backend::take_change`]).
    change: Option<Result<Option<Replacement>, SessionError>>,
    /// The last DataRow rewritten ([`Replacement::Row`]): one buffer for every row of the session,
    /// so a decrypted row costs no allocation.
    row: Vec<u8>,
    released: &'a Notify,
    /// Whether the client's text is UTF-8.
    encoding: &'a ClientEncoding,
    /// The subject key a row waits for: set by `on_frame` when it declined a row for it; the pump
    /// fetches the key and hands the same row in again.
    need_key: Option<pgcloak_keymgr::SubjectKeyId>,
    /// The subject keys fetched for the results of this session since its last ReadyForQuery
    /// (found even if the proxy's cache could not keep them).
    fetched: SubjectKeysFetched,
    /// Why the subject key table could not be read at the last fetch (rows needing a key not
    /// cached then fail instead of waiting again).
    subject_failure: Option<String>,
}

/// Subject keys fetched for a session's results (`None`: there is none).
type SubjectKeysFetched = std::collections::HashMap<
    pgcloak_keymgr::SubjectKeyId,
    Option<Arc<pgcloak_keymgr::SubjectDek>>,
>;

/// The COPY TO STDOUT data streaming now, with the keyring taken as it started (not per row).
struct CopyOut {
    rewriter: CopyOutRewriter,
    keyring: Arc<Keyring>,
}

/// The largest rewritten-row buffer a session keeps between rows.
const ROW_BUFFER_KEPT: usize = 64 * 1024;

/// What replaces a server message that does not go to the client as it arrived.
enum Replacement {
    /// Other bytes.
    Bytes(Bytes),
    /// The DataRow just rewritten into [`Backend::row`].
    Row,
}

impl From<Bytes> for Replacement {
    fn from(b: Bytes) -> Replacement {
        Replacement::Bytes(b)
    }
}

/// How [`Frontend::on_frame`] answers for one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Forward it as it arrived.
    Original,
    /// A statement to analyse first.
    Statement,
    /// Something else: see [`Frontend::take_decision`].
    Decided,
}

/// What the frontend does with one client message.
enum Forward {
    /// The frame as it arrived.
    Original,
    /// Something else instead.
    Replaced(Bytes),
    /// Nothing.
    Drop,
    /// Forward, then end the session (Terminate).
    Last,
}

fn lock(m: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The refusal every statement gets while the audit trail cannot store events (block mode).
#[inline]
fn audit_refusal(shared: &Shared) -> Option<Refusal> {
    let audit = shared.services.audit.as_ref()?;
    if audit.is_healthy() {
        return None;
    }
    audit_unavailable(shared, audit)
}

#[cold]
fn audit_unavailable(shared: &Shared, audit: &pgcloak_audit::AuditHandle) -> Option<Refusal> {
    let why = audit
        .unavailable_reason()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "the audit trail is unavailable".into());
    if shared.config.audit.on_failure == crate::config::OnFailure::Drop {
        return None;
    }
    Some(Refusal {
        sqlstate: "58000",
        message: format!("pgcloak: statement refused because it cannot be audited: {why}"),
    })
}

/// Runs both pumps until either side ends the session.
#[allow(clippy::too_many_arguments)]
pub async fn run<CR, CW, SR, SW>(
    shared: &Shared,
    info: &SessionInfo,
    live: &Live,
    encoding: &ClientEncoding,
    client_in: &mut FrameReader<CR>,
    client_out: &mut Outbox<CW>,
    server_in: &mut FrameReader<SR>,
    server_out: &mut Outbox<SW>,
) -> End
where
    CR: AsyncRead + ReadReady + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + ReadReady + Unpin,
    SW: AsyncWrite + Unpin,
{
    let tracker = Mutex::new(Tracker::new());
    let released = Notify::new();
    let mut frontend = Frontend {
        shared,
        info,
        cursors: Mutex::new(std::collections::HashMap::new()),
        live,
        tracker: &tracker,
        statements: NameMap::default(),
        portals: NameMap::default(),
        recent: RecentParses::default(),
        skip_until_sync: false,
        copy_in: VecDeque::new(),
        pending: VecDeque::new(),
        holding: None,
        released: &released,
        encoding,
        decision: None,
        fixed_time: (shared.services.audit.is_none() && !tracing::enabled!(tracing::Level::DEBUG))
            .then(Instant::now),
    };
    let mut backend = Backend {
        shared,
        info,
        live,
        tracker: &tracker,
        saw_fatal: false,
        statements: 0,
        rows: None,
        rows_known: false,
        copy_out: None,
        max_rows_hit: false,
        copy_rows: None,
        copy_cut: false,
        change: None,
        row: Vec::new(),
        released: &released,
        encoding,
        need_key: None,
        fetched: Default::default(),
        subject_failure: None,
    };
    let idle = shared
        .config
        .idle_timeout
        .map(|d| (d, crate::timer::Activity::default()));
    let activity = idle.as_ref().map(|(_, a)| a);
    // Each pump is polled only when its own socket (or barrier, or timer) woke it.
    let end = {
        let c2s = std::pin::pin!(client_to_server(
            &mut frontend,
            client_in,
            server_out,
            idle.as_ref()
        ));
        let s2c = std::pin::pin!(server_to_client(
            &mut backend,
            server_in,
            client_out,
            activity
        ));
        let killed = std::pin::pin!(async {
            tokio::select! {
                () = shared.kill.killed() => End::Error(SessionError::Shutdown),
                () = live.killed() => End::Error(SessionError::Killed {
                    by: live.killed_by().unwrap_or_default(),
                }),
            }
        });
        super::select3::select3(c2s, s2c, killed).await
    };
    info!(user = %info.user, statements = backend.statements, "session ended");
    end
}

async fn client_to_server<CR, SW>(
    fe: &mut Frontend<'_>,
    client_in: &mut FrameReader<CR>,
    server_out: &mut Outbox<SW>,
    idle: Option<&(std::time::Duration, crate::timer::Activity)>,
) -> End
where
    CR: AsyncRead + ReadReady + Unpin,
    SW: AsyncWrite + Unpin,
{
    // One idle deadline, re-armed only when it fires (not per read): reads just record activity.
    let mut deadline: Option<crate::timer::Sleep> = None;
    loop {
        // As in server_to_client: unchanged frames go out as one run, straight from the read buffer.
        let (mut pos, mut run) = (0, 0);
        loop {
            let frame = match client_in.peek_at(pos) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return End::Error(SessionError::Client(e)),
            };
            let len = frame.bytes.len();
            fe.live.set_active();
            let forward = match fe.on_frame(&frame) {
                Step::Original => Ok(Forward::Original),
                Step::Statement => fe.on_statement(&frame).await,
                Step::Decided => fe.take_decision(),
            };
            let forward = match forward {
                Ok(f) => f,
                Err(e) => return End::Error(e),
            };
            if !matches!(forward, Forward::Original) || fe.holding.is_some() {
                fe.publish();
            }
            let sent = match &forward {
                Forward::Original | Forward::Last => Ok(()),
                Forward::Replaced(b) => {
                    let r = server_out.send(client_in.bytes(run..pos)).await;
                    match r {
                        Ok(()) => server_out.send(b).await,
                        e => e,
                    }
                }
                Forward::Drop => server_out.send(client_in.bytes(run..pos)).await,
            };
            if let Err(e) = sent {
                return End::Error(SessionError::ServerIo(e));
            }
            if !matches!(forward, Forward::Original | Forward::Last) {
                run = pos + len;
            }
            pos += len;
            if fe.holding.is_some() || matches!(forward, Forward::Last) {
                let sent = server_out.send_and_flush(client_in.bytes(run..pos)).await;
                client_in.consume(pos);
                (pos, run) = (0, 0);
                if let Err(e) = sent {
                    return End::Error(SessionError::ServerIo(e));
                }
                if matches!(forward, Forward::Last) {
                    return End::Terminated;
                }
                if let Err(e) = fe.wait_barrier(server_out).await {
                    return End::Error(SessionError::ServerIo(e));
                }
            }
        }
        fe.publish();
        let sent = server_out.send_and_flush(client_in.bytes(run..pos)).await;
        client_in.consume(pos);
        if let Err(e) = sent {
            return End::Error(SessionError::ServerIo(e));
        }
        let read = match idle {
            None => client_in.fill().await,
            Some(&(d, ref activity)) => loop {
                let timer = deadline.get_or_insert_with(|| fe.shared.services.timers.sleep(d));
                let read = tokio::select! {
                    biased;
                    r = client_in.fill() => Some(r),
                    () = timer => None,
                };
                if let Some(r) = read {
                    activity.touch();
                    break r;
                }
                // The deadline passed: the session is idle when neither side spoke for `d` and no
                // statement is running (a long query is not idleness).
                let quiet = activity.quiet_for();
                if quiet >= d && lock(fe.tracker).is_idle() {
                    return End::Error(SessionError::IdleTimeout(d));
                }
                let next = if quiet >= d { d } else { d - quiet };
                deadline = Some(fe.shared.services.timers.sleep(next));
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
    activity: Option<&crate::timer::Activity>,
) -> End
where
    SR: AsyncRead + ReadReady + Unpin,
    CW: AsyncWrite + Unpin,
{
    loop {
        // Frames nobody changes stay in the read buffer as one run and go out as they arrived.
        let (mut pos, mut run) = (0, 0);
        loop {
            // The frames up to the next one that changes, under one lock of the tracker (released
            // before anything is written: the guard must not live across an await).
            let changed = {
                let mut t = lock(be.tracker);
                loop {
                    let frame = match server_in.peek_at(pos) {
                        Ok(Some(f)) => f,
                        Ok(None) => break None,
                        Err(e) => return End::Error(SessionError::Server(e)),
                    };
                    let len = frame.bytes.len();
                    if be.on_frame(&mut t, &frame) {
                        pos += len;
                        continue;
                    }
                    if let Some(key) = be.need_key.take() {
                        break Some(Err(key));
                    }
                    match be.take_change() {
                        Ok(replacement) => break Some(Ok((len, replacement))),
                        Err(e) => return End::Error(e),
                    }
                }
            };
            let (len, replacement) = match changed {
                None => break,
                Some(Ok(change)) => change,
                // A row needs a subject key not cached: what came before it goes out, the key is
                // fetched, and the same row is looked at again.
                Some(Err(key)) => {
                    if let Err(e) = client_out.send(server_in.bytes(run..pos)).await {
                        return End::Error(SessionError::ClientIo(e));
                    }
                    run = pos;
                    be.fetch_subject_key(key).await;
                    continue;
                }
            };
            let mut sent = client_out.send(server_in.bytes(run..pos)).await;
            if let (Ok(()), Some(r)) = (&sent, replacement) {
                sent = match &r {
                    Replacement::Bytes(b) => client_out.send(b).await,
                    Replacement::Row => {
                        let sent = client_out.send(&be.row).await;
                        // Kept for the next row, unless a large one grew it: idle sessions hold
                        // little memory.
                        if be.row.capacity() > ROW_BUFFER_KEPT {
                            be.row = Vec::new();
                        }
                        sent
                    }
                };
            }
            if let Err(e) = sent {
                return End::Error(SessionError::ClientIo(e));
            }
            pos += len;
            run = pos;
        }
        let sent = client_out.send_and_flush(server_in.bytes(run..pos)).await;
        server_in.consume(pos);
        if let Err(e) = sent {
            return End::Error(SessionError::ClientIo(e));
        }
        match server_in.fill().await {
            Ok(()) => {
                if let Some(a) = activity {
                    a.touch();
                }
            }
            Err(ReadError::Eof) if be.saw_fatal => return End::ServerClosedWithError,
            Err(e) => return End::Error(server_read_err(e)),
        }
    }
}

/// What a client killed from the admin console is told.
pub fn killed_message(by: &str) -> String {
    format!("pgcloak: terminating connection due to administrator command (KILL by {by} in the pgcloak admin console)")
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
            SessionError::Killed { by } => Some(("57P01", killed_message(by))),
            SessionError::Rewrite(e) => {
                warn!("closing session: {e}");
                // A server message the proxy cannot process safely: the session ends as an
                // internal error whatever the cause (CONTRACT.md), the cause kept in the log.
                Some(("XX000", e.to_string()))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_changes_only_after_statements_that_can_make_them() {
        let ctx = |k, t: &str| StmtCtx::plain(k, t.to_string(), 0);
        assert!(may_change_catalog(&ctx(
            StatementKind::Ddl,
            "CREATE VIEW v AS SELECT $1"
        )));
        assert!(may_change_catalog(&ctx(StatementKind::Other, "DO $1")));
        assert!(may_change_catalog(&ctx(
            StatementKind::Other,
            "CALL make_view()"
        )));
        for t in [
            "BEGIN",
            "commit",
            "END",
            "SET search_path = $1",
            "ROLLBACK TO SAVEPOINT a",
            "DISCARD ALL",
            "",
        ] {
            assert!(!may_change_catalog(&ctx(StatementKind::Other, t)), "{t}");
        }
        assert!(!may_change_catalog(&ctx(StatementKind::Select, "SELECT 1")));
    }
}
