//! The query phase: every frontend and backend message passes through [`Frontend::on_frame`] and
//! [`Backend::on_frame`], the hook points where policy, rewriting and audit attach. Frames nobody changes
//! are forwarded as the bytes that arrived.
//!
//! Refusals (policy, or an unavailable audit trail in block mode) are raised by the server itself: the
//! refused statement is replaced by a `DO` block that raises the proxy's SQLSTATE and message, so the
//! transaction is aborted — or the implicit transaction rolled back — exactly as PostgreSQL does for any
//! failing statement, and the error arrives in its place in a pipelined stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use pgcloak_policy::{lex, names_any, Lexed, Plan, StatementKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::auth::{client_read_err, server_read_err};
use super::context::{raise_sql, Refusal, StmtCtx};
use super::io::{FrameReader, Outbox, ReadError};
use super::track::{Action, Pending, Tracker};
use super::SessionInfo;
use crate::config::Config;
use crate::error::SessionError;
use crate::protocol::messages::{self, error_response, terminate, Severity};
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
    shared: &'a Shared,
    info: &'a SessionInfo,
    tracker: &'a Mutex<Tracker>,
    /// Prepared statements by name ("" = unnamed).
    statements: HashMap<Vec<u8>, Arc<StmtCtx>>,
    /// Portals by name ("" = unnamed) -> their statement.
    portals: HashMap<Vec<u8>, Arc<StmtCtx>>,
    /// After a refusal in the extended protocol: drop client messages until Sync.
    skip_until_sync: bool,
}

/// State of the server→client direction.
struct Backend<'a> {
    shared: &'a Shared,
    info: &'a SessionInfo,
    tracker: &'a Mutex<Tracker>,
    /// The last server message was a FATAL ErrorResponse.
    saw_fatal: bool,
    statements: u64,
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
fn audit_refusal(shared: &Shared) -> Option<Refusal> {
    let audit = shared.guard.audit.as_ref()?;
    if audit.is_healthy() {
        return None;
    }
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

/// Fail closed: a plan that needs a rewrite this build of the data path does not perform is refused
/// rather than forwarded with values in the clear.
fn unsupported_rewrite(sp: &pgcloak_policy::StatementPlan) -> Option<Refusal> {
    use pgcloak_policy::OutputAction;
    let column = sp
        .encryptions
        .first()
        .map(|e| e.column.clone())
        .or_else(|| {
            sp.outputs.iter().find_map(|o| match &o.action {
                OutputAction::PassThrough => None,
                OutputAction::Decrypt { column, .. } | OutputAction::Mask { column, .. } => {
                    Some(column.clone())
                }
                OutputAction::Null => Some(o.name.clone()),
            })
        })
        .or_else(|| {
            sp.copy.as_ref().and_then(|c| {
                c.columns
                    .iter()
                    .find_map(|col| col.encrypt.as_ref().map(|e| e.column.clone()))
            })
        })
        .or_else(|| sp.max_rows.map(|_| "max_rows".to_string()))?;
    Some(Refusal {
        sqlstate: "0A000",
        message: format!(
            "pgcloak: statement needs values of {column} encrypted, decrypted, masked or limited on the data path, which this pgcloak build does not do yet; refused rather than passed in the clear"
        ),
    })
}

impl Frontend<'_> {
    /// Lexes and (when it names a protected table) plans `sql` for this session's policy role.
    async fn analyze(&self, sql: &str) -> Result<(Lexed, Option<Arc<Plan>>), Refusal> {
        let guard = &self.shared.guard;
        let policy = guard.policy();
        let lexed = lex(sql);
        if policy.protected_table_names().is_empty()
            || !names_any(&lexed, policy.protected_table_names())
        {
            return Ok((lexed, None));
        }
        let db = &self.info.database;
        let fail = |what: String| Refusal {
            sqlstate: "42501",
            message: format!(
                "pgcloak: {what}; the statement names a protected table and is refused"
            ),
        };
        let memberships = guard.memberships(db, &self.info.user).await.map_err(fail)?;
        let names: Vec<&str> = memberships.iter().map(String::as_str).collect();
        let role = policy.role_for(&names);
        let catalog = guard.catalog(db).await.map_err(fail)?;
        let analysis = guard.analyze(sql, &policy, role, Some(&catalog.catalog));
        Ok((lexed, analysis.plan))
    }

    /// One context per statement of the string.
    fn contexts(lexed: &Lexed, plan: Option<&Arc<Plan>>) -> Vec<Arc<StmtCtx>> {
        lexed
            .statements
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let text = lexed
                    .normalized
                    .get(s.normalized_range.clone())
                    .unwrap_or("")
                    .to_string();
                let fingerprint = pgcloak_policy::lexer::fnv1a(text.as_bytes());
                let refusal =
                    plan.and_then(|p| p.statements.get(i))
                        .and_then(|sp| match &sp.decision {
                            pgcloak_policy::Decision::Deny { sqlstate, message } => Some(Refusal {
                                sqlstate,
                                message: message.clone(),
                            }),
                            pgcloak_policy::Decision::Allow => unsupported_rewrite(sp),
                        });
                Arc::new(StmtCtx {
                    kind: s.kind,
                    text,
                    fingerprint,
                    plan: plan.cloned(),
                    index: i,
                    refusal,
                })
            })
            .collect()
    }

    /// Builds the refusal context for a whole message that could not be analysed.
    fn refused_ctx(refusal: Refusal, kind: StatementKind) -> Arc<StmtCtx> {
        let mut ctx = StmtCtx::refused(refusal.sqlstate, refusal.message);
        ctx.kind = kind;
        Arc::new(ctx)
    }

    async fn on_query(&mut self, frame: &Frame) -> Result<Forward, SessionError> {
        let started = Instant::now();
        let sql_bytes = messages::query_text(frame.body()).map_err(SessionError::Client)?;
        let protected = self.shared.guard.has_protected_tables();
        let Ok(sql) = std::str::from_utf8(sql_bytes) else {
            if protected {
                let r = Refusal {
                    sqlstate: "42501",
                    message: "pgcloak: statement text is not valid UTF-8 and cannot be analysed"
                        .into(),
                };
                let q = messages::query(&raise_sql(&r));
                lock(self.tracker).push(Pending::Query {
                    started,
                    stmts: vec![Self::refused_ctx(r, StatementKind::Other)],
                    next: 0,
                });
                return Ok(Forward::Replaced(q));
            }
            lock(self.tracker).push(Pending::Query {
                started,
                stmts: Vec::new(),
                next: 0,
            });
            return Ok(Forward::Original);
        };
        let (lexed, plan) = match self.analyze(sql).await {
            Ok(a) => a,
            Err(r) => {
                let q = messages::query(&raise_sql(&r));
                lock(self.tracker).push(Pending::Query {
                    started,
                    stmts: vec![Self::refused_ctx(r, StatementKind::Other)],
                    next: 0,
                });
                return Ok(Forward::Replaced(q));
            }
        };
        let mut stmts = Self::contexts(&lexed, plan.as_ref());
        // Block mode: nothing runs unaudited.
        if let Some(r) = audit_refusal(self.shared) {
            let kind = stmts
                .first()
                .map(|s| s.kind)
                .unwrap_or(StatementKind::Other);
            lock(self.tracker).push(Pending::Query {
                started,
                stmts: vec![Self::refused_ctx(r.clone(), kind)],
                next: 0,
            });
            return Ok(Forward::Replaced(messages::query(&raise_sql(&r))));
        }
        let denied = stmts.iter().position(|s| s.refusal.is_some());
        let out = match denied {
            None => Forward::Original,
            Some(k) => {
                // Statements before the refused one run as the client sent them (and are rolled back
                // with it, as in any failing multi-statement string); the rest never run.
                let start = lexed.statements[k].range.start.min(sql.len());
                let mut text = sql[..start].to_string();
                if !text.trim_end().is_empty() && !text.trim_end().ends_with(';') {
                    text.push(';');
                }
                let refusal = stmts[k].refusal.clone().expect("position found a refusal");
                text.push_str(&raise_sql(&refusal));
                stmts.truncate(k + 1);
                Forward::Replaced(messages::query(&text))
            }
        };
        lock(self.tracker).push(Pending::Query {
            started,
            stmts,
            next: 0,
        });
        Ok(out)
    }

    /// Refuses in the extended protocol: the server raises the refusal for us; everything the client
    /// sends until Sync is dropped, as PostgreSQL skips it after an error.
    fn refuse_extended(&mut self, stmt: Arc<StmtCtx>) -> Forward {
        let r = stmt.refusal.clone().unwrap_or(Refusal {
            sqlstate: "42501",
            message: "pgcloak: refused".into(),
        });
        lock(self.tracker).push(Pending::Refusal {
            started: Instant::now(),
            stmt,
        });
        self.skip_until_sync = true;
        Forward::Replaced(messages::query(&raise_sql(&r)))
    }

    async fn on_parse(&mut self, frame: &Frame) -> Result<Forward, SessionError> {
        let (name, sql_bytes) = messages::parse_text(frame.body()).map_err(SessionError::Client)?;
        let name = name.to_vec();
        let ctx = match std::str::from_utf8(sql_bytes) {
            Err(_) if self.shared.guard.has_protected_tables() => Self::refused_ctx(
                Refusal {
                    sqlstate: "42501",
                    message: "pgcloak: statement text is not valid UTF-8 and cannot be analysed"
                        .into(),
                },
                StatementKind::Other,
            ),
            Err(_) => Arc::new(StmtCtx {
                kind: StatementKind::Other,
                text: String::new(),
                fingerprint: 0,
                plan: None,
                index: 0,
                refusal: None,
            }),
            Ok(sql) => match self.analyze(sql).await {
                Err(r) => Self::refused_ctx(r, StatementKind::Other),
                Ok((lexed, plan)) => {
                    let mut all = Self::contexts(&lexed, plan.as_ref());
                    // A Parse carries one statement (the server rejects more); an empty one is fine.
                    if all.is_empty() {
                        Arc::new(StmtCtx {
                            kind: StatementKind::Other,
                            text: String::new(),
                            fingerprint: 0,
                            plan: None,
                            index: 0,
                            refusal: None,
                        })
                    } else {
                        all.swap_remove(0)
                    }
                }
            },
        };
        if ctx.refusal.is_some() {
            return Ok(self.refuse_extended(ctx));
        }
        self.statements.insert(name, ctx);
        lock(self.tracker).push(Pending::Parse);
        Ok(Forward::Original)
    }

    /// Inspects one client message before it is forwarded.
    async fn on_frame(&mut self, frame: &Frame) -> Result<Forward, SessionError> {
        if self.skip_until_sync && frame.tag != b'S' {
            return Ok(match frame.tag {
                b'X' => Forward::Last,
                _ => Forward::Drop,
            });
        }
        match frame.tag {
            b'Q' => return self.on_query(frame).await,
            b'P' => return self.on_parse(frame).await,
            b'B' => {
                let (portal, stmt) =
                    messages::bind_names(frame.body()).map_err(SessionError::Client)?;
                if let Some(ctx) = self.statements.get(stmt).cloned() {
                    self.portals.insert(portal.to_vec(), ctx);
                } else {
                    self.portals.remove(portal);
                }
                lock(self.tracker).push(Pending::Bind);
            }
            b'E' => {
                let portal =
                    messages::execute_portal(frame.body()).map_err(SessionError::Client)?;
                let stmt = self.portals.get(portal).cloned();
                if let Some(r) = audit_refusal(self.shared) {
                    let kind = stmt
                        .as_ref()
                        .map(|s| s.kind)
                        .unwrap_or(StatementKind::Other);
                    return Ok(self.refuse_extended(Self::refused_ctx(r, kind)));
                }
                lock(self.tracker).push(Pending::Execute {
                    started: Instant::now(),
                    stmt,
                });
            }
            b'D' => {
                messages::target(frame.body(), "Describe").map_err(SessionError::Client)?;
                lock(self.tracker).push(Pending::Describe);
            }
            b'C' => {
                let (kind, name) =
                    messages::target(frame.body(), "Close").map_err(SessionError::Client)?;
                if kind == b'S' {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
                lock(self.tracker).push(Pending::Close);
            }
            b'S' => {
                self.skip_until_sync = false;
                lock(self.tracker).push(Pending::Sync);
            }
            b'F' => {
                if let Some(r) = audit_refusal(self.shared) {
                    // A function call is not a statement the proxy can rewrite; answer as a refusal.
                    let started = Instant::now();
                    lock(self.tracker).push(Pending::Query {
                        started,
                        stmts: vec![Self::refused_ctx(r.clone(), StatementKind::Other)],
                        next: 0,
                    });
                    return Ok(Forward::Replaced(messages::query(&raise_sql(&r))));
                }
                lock(self.tracker).push(Pending::FunctionCall {
                    started: Instant::now(),
                });
            }
            b'X' => return Ok(Forward::Last),
            // Flush, CopyData, CopyDone, CopyFail: answered within the entry that started the COPY.
            _ => {}
        }
        Ok(Forward::Original)
    }
}

impl Backend<'_> {
    /// Inspects one server message; returns what to send the client instead, if anything changes.
    fn on_frame(&mut self, frame: &Frame) -> Option<Option<Bytes>> {
        if frame.tag == b'E' {
            self.saw_fatal = messages::error_fields(frame.body())
                .map(|f| f.severity == "FATAL" || f.severity == "PANIC")
                .unwrap_or(false);
        }
        let (action, done) = {
            let mut t = lock(self.tracker);
            let action = t.on_backend(frame.tag, frame.body());
            let done: Vec<_> = if t.done.is_empty() {
                Vec::new()
            } else {
                t.done.drain(..).collect()
            };
            (action, done)
        };
        for outcome in done {
            self.statement_done(outcome);
        }
        match action {
            Action::Forward => None,
            Action::Swallow => Some(None),
            Action::ForwardRefusal => Some(Some(messages::without_context(frame.body()))),
        }
    }

    fn statement_done(&mut self, outcome: super::track::Outcome) {
        self.statements += 1;
        let guard = &self.shared.guard;
        if outcome.sqlstate.is_none() {
            if let Some(s) = &outcome.stmt {
                if matches!(s.kind, StatementKind::Ddl | StatementKind::Other) {
                    // Tables, columns or role grants may have changed.
                    guard.invalidate_catalog(&self.info.database);
                    guard.forget_memberships(&self.info.database);
                }
            }
        }
        debug!(
            duration_us = outcome.started.elapsed().as_micros() as u64,
            rows = outcome.rows,
            sqlstate = outcome.sqlstate.as_deref().unwrap_or(""),
            "statement finished"
        );
        if let Some(audit) = &guard.audit {
            let ev = crate::audit::statement_event(self.info, &outcome);
            if let Err(e) = audit.record(ev) {
                warn!("audit event not stored: {e}");
            }
        }
    }
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
    let mut frontend = Frontend {
        shared,
        info,
        tracker: &tracker,
        statements: HashMap::new(),
        portals: HashMap::new(),
        skip_until_sync: false,
    };
    let mut backend = Backend {
        shared,
        info,
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
            let forward = match fe.on_frame(&frame).await {
                Ok(f) => f,
                Err(e) => return End::Error(e),
            };
            let sent = match &forward {
                Forward::Original | Forward::Last => server_out.send(&frame.bytes).await,
                Forward::Replaced(b) => server_out.send(b).await,
                Forward::Drop => Ok(()),
            };
            if let Err(e) = sent {
                return End::Error(SessionError::ServerIo(e));
            }
            if matches!(forward, Forward::Last) {
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
            let sent = match be.on_frame(&frame) {
                None => client_out.send(&frame.bytes).await,
                Some(Some(replacement)) => client_out.send(&replacement).await,
                Some(None) => Ok(()),
            };
            if let Err(e) = sent {
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
