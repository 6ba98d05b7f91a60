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

use super::auth::{client_read_err, server_read_err};
use super::context::DataCtx;
use super::context::{lock_shape, raise_sql, PortalCtx, Refusal, StmtCtx};
use super::dataplane;
use super::encoding::{self, ClientEncoding};
use super::io::{FrameReader, Outbox, ReadError, ReadReady};
use super::names::{NameMap, RecentParses};
use super::track::{Action, Barrier, BarrierKind, Pending, Tracker};
use super::SessionInfo;
use crate::config::Config;
use crate::error::SessionError;
use crate::guard::Guard;
use crate::protocol::messages::{self, error_response, terminate, Severity};
use crate::protocol::FrameRef;
use crate::rewrite::{CopyInRewriter, CopyOutRewriter, RowShape};
use crate::state::Shared;
use pgcloak_keymgr::Keyring;
use pgcloak_policy::{CopyDirection, CopyEndpoint};

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
    /// What replaces the message `on_frame` just declined to pass unchanged (see
    /// [`Backend::take_change`]).
    change: Option<Result<Option<Replacement>, SessionError>>,
    /// The last DataRow rewritten ([`Replacement::Row`]): one buffer for every row of the session,
    /// so a decrypted row costs no allocation.
    row: Vec<u8>,
    released: &'a Notify,
    /// Whether the client's text is UTF-8.
    encoding: &'a ClientEncoding,
}

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
    let audit = shared.guard.audit.as_ref()?;
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

impl Frontend<'_> {
    /// When a statement starts, for its duration (see `fixed_time`).
    fn now(&self) -> Instant {
        self.fixed_time.unwrap_or_else(Instant::now)
    }

    /// Lexes and (when it names a protected table) plans `sql` for this session's policy role.
    async fn analyze(
        &self,
        sql: &str,
        policy: &Arc<Policy>,
    ) -> Result<(Lexed, Option<Arc<Plan>>, Option<Arc<DataCtx>>), Refusal> {
        let guard = &self.shared.guard;
        let lexed = lex(sql);
        // With nothing in flight the server's client_encoding is the truth (see encoding.rs).
        if !self.encoding.is_utf8() && self.pending.is_empty() && lock(self.tracker).is_idle() {
            self.encoding.settle();
        }
        self.encoding.sending(sql, &lexed);
        if policy.protected_table_names().is_empty() {
            return Ok((lexed, None, None));
        }
        let db = &self.info.database;
        if !names_any(&lexed, policy.protected_table_names())
            && !self.names_protected_view(&lexed).await
        {
            return Ok((lexed, None, None));
        }
        if !self.encoding.is_utf8() {
            return Err(encoding::refusal());
        }
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
        let plan = guard.plan(sql, &lexed, policy, role, &catalog.catalog);
        let data = Arc::new(DataCtx {
            role: role.name.clone(),
            policy: policy.clone(),
            catalog,
        });
        Ok((lexed, Some(plan), Some(data)))
    }

    /// Whether `lexed` names a view that reads a protected table (reads through one are analysed as
    /// the view's query, writes are refused).
    /// The catalog snapshot is reloaded when stale; if that fails, the last one known is used.
    async fn names_protected_view(&self, lexed: &Lexed) -> bool {
        let guard = &self.shared.guard;
        let db = &self.info.database;
        let snapshot = match guard.catalog_snapshot(db) {
            Some((c, true)) => Some(c),
            last => match guard.catalog(db).await {
                Ok(c) => Some(c),
                Err(e) => {
                    debug!("{e}; using the last known views of {db}");
                    last.map(|(c, _)| c)
                }
            },
        };
        snapshot.is_some_and(|c| names_any(lexed, c.catalog.protected_view_names()))
    }

    /// One context per statement of the string.
    fn contexts(
        lexed: &Lexed,
        plan: Option<&Arc<Plan>>,
        data: Option<&Arc<DataCtx>>,
    ) -> Vec<Arc<StmtCtx>> {
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
                            pgcloak_policy::Decision::Allow => None,
                        });
                Arc::new(StmtCtx {
                    plan: plan.cloned(),
                    index: i,
                    refusal,
                    data: data.cloned(),
                    ..StmtCtx::plain(s.kind, text, fingerprint)
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

    /// Replaces a whole Query with a refusal.
    fn refuse_query(&mut self, started: Instant, r: Refusal, kind: StatementKind) -> Forward {
        let q = messages::query(&raise_sql(&r));
        self.pending.push_back(Pending::Query {
            started,
            stmts: vec![Self::refused_ctx(r, kind)],
            next: 0,
        });
        Forward::Replaced(q)
    }

    /// Prepares the COPY FROM STDIN data rewriting of `stmt`, if it needs one.
    fn copy_in_for(&self, stmt: &StmtCtx) -> Result<Option<Option<CopyInRewriter>>, Refusal> {
        let Some(sp) = stmt.statement_plan() else {
            return Ok(if stmt.kind == StatementKind::Copy {
                Some(None)
            } else {
                None
            });
        };
        let Some(copy) = &sp.copy else {
            return Ok(None);
        };
        if copy.direction != CopyDirection::From || copy.endpoint != CopyEndpoint::Stdin {
            return Ok(None);
        }
        if copy.columns.iter().all(|c| c.encrypt.is_none()) {
            return Ok(Some(None));
        }
        let data = stmt.data.clone();
        let storage_of = move |c: &str| data.as_ref().and_then(|d| d.storage(c));
        CopyInRewriter::new(copy, self.shared.guard.keyring(), &storage_of)
            .map(|r| Some(Some(r)))
            .map_err(dataplane::refusal)
    }

    async fn on_query(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        let started = self.now();
        // A new Query ends any COPY the server refused before data flowed.
        self.copy_in.clear();
        let sql_bytes = messages::query_text(frame.body()).map_err(SessionError::Client)?;
        #[cfg(debug_assertions)]
        crate::testhook::panic_on_query(sql_bytes);
        let protected = self.shared.guard.has_protected_tables();
        let Ok(sql) = std::str::from_utf8(sql_bytes) else {
            if protected {
                let r = Refusal {
                    sqlstate: "42501",
                    message: "pgcloak: statement text is not valid UTF-8 and cannot be analysed"
                        .into(),
                };
                return Ok(self.refuse_query(started, r, StatementKind::Other));
            }
            self.pending.push_back(Pending::Query {
                started,
                stmts: Vec::new(),
                next: 0,
            });
            return Ok(Forward::Original);
        };
        let policy = self.shared.guard.policy();
        let (lexed, plan, data) = match self.analyze(sql, &policy).await {
            Ok(a) => a,
            Err(r) => return Ok(self.refuse_query(started, r, StatementKind::Other)),
        };
        let mut stmts = Self::contexts(&lexed, plan.as_ref(), data.as_ref());
        let first_kind = stmts
            .first()
            .map(|s| s.kind)
            .unwrap_or(StatementKind::Other);
        // Block mode: nothing runs unaudited.
        if let Some(r) = audit_refusal(self.shared) {
            return Ok(self.refuse_query(started, r, first_kind));
        }
        let denied = stmts.iter().position(|s| s.refusal.is_some());
        // Statements before a refused one run as the client sent them (and are rolled back with it, as
        // in any failing multi-statement string); the rest never run.
        let end = denied
            .map(|k| lexed.statements[k].range.start.min(sql.len()))
            .unwrap_or(sql.len());
        let allowed = denied.unwrap_or(stmts.len());
        let rewritten = if plan.is_some() {
            match dataplane::rewrite_literals(
                &self.shared.guard,
                sql,
                &lexed,
                stmts[..allowed].iter().map(|s| s.as_ref()),
                end,
            ) {
                Ok(r) => r,
                Err(r) => return Ok(self.refuse_query(started, r, first_kind)),
            }
        } else {
            None
        };
        for s in &stmts[..allowed] {
            match self.copy_in_for(s) {
                Ok(Some(rw)) => self.copy_in.push_back(rw),
                Ok(None) => {}
                Err(r) => return Ok(self.refuse_query(started, r, s.kind)),
            }
        }
        let out = match (denied, rewritten) {
            (None, None) => Forward::Original,
            (None, Some(text)) => Forward::Replaced(messages::query(&text)),
            (Some(k), rewritten) => {
                let mut text = rewritten.unwrap_or_else(|| sql[..end].to_string());
                if !text.trim_end().is_empty() && !text.trim_end().ends_with(';') {
                    text.push(';');
                }
                let refusal = stmts[k].refusal.clone().expect("position found a refusal");
                text.push_str(&raise_sql(&refusal));
                stmts.truncate(k + 1);
                Forward::Replaced(messages::query(&text))
            }
        };
        let limited = stmts
            .iter()
            .any(|s| s.statement_plan().is_some_and(|sp| sp.max_rows.is_some()));
        self.pending.push_back(Pending::Query {
            started,
            stmts,
            next: 0,
        });
        if limited {
            self.holding = Some(BarrierKind::Query);
        }
        Ok(out)
    }

    /// Hands the entries of the messages processed so far to the tracker (and installs a barrier
    /// they set). Called before those messages are written upstream: the server cannot answer a
    /// message before it has it, so the backend pump always finds the entry for an answer.
    fn publish(&mut self) {
        if self.pending.is_empty() && self.holding.is_none() {
            return;
        }
        let mut t = lock(self.tracker);
        t.append(&mut self.pending);
        // Installed by the first publish of the hold; a barrier already in the tracker is this
        // hold's own, possibly released by now (wait_barrier takes it out once released).
        if let Some(kind) = self.holding.filter(|_| t.barrier.is_none()) {
            t.barrier = Some(Barrier {
                kind,
                exceeded: false,
                released: false,
                abort: false,
            });
        }
    }

    /// Waits for the barrier's release; when the statement exceeded `max_rows`, makes the server fail
    /// the transaction before anything else the client sent reaches it.
    async fn wait_barrier<SW: AsyncWrite + Unpin>(
        &mut self,
        server_out: &mut Outbox<SW>,
    ) -> std::io::Result<()> {
        // The held message's entry and barrier were published before it was flushed.
        let kind = self.holding.take();
        if kind == Some(BarrierKind::Execute) {
            // The server sends nothing of an Execute before Sync or Flush, and the client's Sync is
            // held back: ask for a Flush (it has no answer of its own).
            server_out.send(&messages::flush()).await?;
        }
        server_out.flush().await?;
        let barrier = loop {
            let notified = self.released.notified();
            {
                let mut t = lock(self.tracker);
                if t.barrier.is_some_and(|b| b.released) {
                    break t.barrier.take();
                }
            }
            notified.await;
        };
        let Some(b) = barrier.filter(|b| b.abort) else {
            return Ok(());
        };
        let abort = Refusal {
            sqlstate: "42501",
            message: "pgcloak: max_rows exceeded; the transaction is aborted".into(),
        };
        lock(self.tracker).push(Pending::Abort);
        if b.kind == BarrierKind::Execute {
            // The client saw an error for its Execute: like PostgreSQL, skip to its Sync.
            self.skip_until_sync = true;
        }
        server_out.send(&messages::query(&raise_sql(&abort))).await
    }

    /// Refuses in the extended protocol: the server raises the refusal for us; everything the client
    /// sends until Sync is dropped, as PostgreSQL skips it after an error.
    fn refuse_extended(&mut self, stmt: Arc<StmtCtx>) -> Forward {
        let r = stmt.refusal.clone().unwrap_or(Refusal {
            sqlstate: "42501",
            message: "pgcloak: refused".into(),
        });
        self.pending.push_back(Pending::Refusal {
            started: self.now(),
            stmt,
        });
        self.skip_until_sync = true;
        Forward::Replaced(messages::query(&raise_sql(&r)))
    }

    /// A Parse this session analysed recently (drivers re-parse the unnamed statement for every
    /// execution): handled without analysis. `None` when it must be analysed ([`Frontend::on_parse`]).
    fn parse_remembered(&mut self, frame: &FrameRef<'_>) -> Option<Result<Forward, SessionError>> {
        // Only the name is read: a remembered key is byte for byte a Parse analysed (and so checked)
        // before; anything else goes on to `on_parse`, which checks the whole message.
        let name = match messages::parse_name(frame.body()) {
            Ok(n) => n,
            Err(e) => return Some(Err(SessionError::Client(e))),
        };
        let key = &frame.body()[name.len() + 1..];
        let ctx = self
            .recent
            .get(self.shared.guard.policy_generation(), key)?;
        self.statements.insert(name, ctx);
        self.pending.push_back(Pending::Parse);
        Some(Ok(Forward::Original))
    }

    async fn on_parse(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        let (name, sql_bytes) = messages::parse_text(frame.body()).map_err(SessionError::Client)?;
        // Text and declared types: all the analysis of a statement without a plan depends on.
        let key = &frame.body()[name.len() + 1..];
        // Read before the policy: a context remembered under it is stale once the policy changes.
        let generation = self.shared.guard.policy_generation();
        let policy = self.shared.guard.policy();
        let Ok(sql) = std::str::from_utf8(sql_bytes) else {
            if self.shared.guard.has_protected_tables() {
                let r = Refusal {
                    sqlstate: "42501",
                    message: "pgcloak: statement text is not valid UTF-8 and cannot be analysed"
                        .into(),
                };
                return Ok(self.refuse_extended(Self::refused_ctx(r, StatementKind::Other)));
            }
            self.statements.insert(
                name,
                Arc::new(StmtCtx::plain(StatementKind::Other, String::new(), 0)),
            );
            self.pending.push_back(Pending::Parse);
            return Ok(Forward::Original);
        };
        let (lexed, plan, data) = match self.analyze(sql, &policy).await {
            Ok(a) => a,
            Err(r) => return Ok(self.refuse_extended(Self::refused_ctx(r, StatementKind::Other))),
        };
        // A Parse carries one statement (the server rejects more); an empty one is fine.
        let ctx = Self::contexts(&lexed, plan.as_ref(), data.as_ref())
            .into_iter()
            .next()
            .unwrap_or_else(|| Arc::new(StmtCtx::plain(StatementKind::Other, String::new(), 0)));
        if ctx.refusal.is_some() {
            return Ok(self.refuse_extended(ctx));
        }
        if let Ok(m) = messages::parse_message(frame.body()) {
            let _ = ctx.param_types.set(m.param_types);
        }
        let out =
            match dataplane::rewrite_parse(&self.shared.guard, frame.body(), &ctx, sql, &lexed) {
                Ok(None) => Forward::Original,
                Ok(Some(b)) => Forward::Replaced(b),
                Err(r) => return Ok(self.refuse_extended(Self::refused_ctx(r, ctx.kind))),
            };
        // A statement that may change client_encoding is looked at every time it is sent.
        if matches!(out, Forward::Original) && !encoding::mentions(sql, &lexed) {
            self.recent.remember(generation, key, &ctx);
        }
        self.statements.insert(name, ctx);
        self.pending.push_back(Pending::Parse);
        Ok(out)
    }

    fn on_bind(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        let (portal, statement) =
            messages::bind_names(frame.body()).map_err(SessionError::Client)?;
        let Some(stmt) = self.statements.get(statement).cloned() else {
            // Prepared before this session knew it (or not at all): the server decides.
            self.portals.remove(portal);
            self.pending.push_back(Pending::Bind);
            return Ok(Forward::Original);
        };
        // Result formats matter only for rows the proxy rewrites: only an analysed statement's Bind
        // is decoded whole.
        if stmt.data.is_some() && !self.encoding.is_utf8() {
            return Ok(self.refuse_extended(Self::refused_ctx(encoding::refusal(), stmt.kind)));
        }
        let result_formats = match &stmt.data {
            Some(_) => {
                Some(messages::bind_result_formats(frame.body()).map_err(SessionError::Client)?)
            }
            None => None,
        };
        let out = match dataplane::rewrite_bind(&self.shared.guard, frame.body(), &stmt) {
            Ok(None) => Forward::Original,
            Ok(Some(b)) => Forward::Replaced(b),
            Err(r) => return Ok(self.refuse_extended(Self::refused_ctx(r, stmt.kind))),
        };
        // Rebinding a portal nobody else holds (the usual unnamed portal) reuses its allocation.
        if let Some(p) = self.portals.get_mut(portal).and_then(Arc::get_mut) {
            p.stmt = stmt;
            p.result_formats.clear();
            p.result_formats
                .extend(result_formats.into_iter().flatten());
            *p.described.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
            *p.describe_sent.get_mut() = false;
        } else {
            self.portals.insert(
                portal,
                Arc::new(PortalCtx::new(
                    stmt,
                    result_formats.into_iter().flatten().collect(),
                )),
            );
        }
        self.pending.push_back(Pending::Bind);
        Ok(out)
    }

    /// Rewrites client COPY data for the COPY in progress.
    fn on_copy_data(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        let Some(Some(rw)) = self.copy_in.front_mut() else {
            if frame.tag != b'd' {
                self.copy_in.pop_front();
            }
            return Ok(Forward::Original);
        };
        let out = match frame.tag {
            b'd' => rw.push(frame.body()),
            b'c' => rw.finish(),
            _ => {
                self.copy_in.pop_front();
                return Ok(Forward::Original);
            }
        };
        match out {
            Ok(data) => {
                let mut frames = bytes::BytesMut::new();
                if !data.is_empty() {
                    frames.extend_from_slice(&messages::copy_data(&data));
                }
                if frame.tag == b'c' {
                    frames.extend_from_slice(frame.bytes);
                    self.copy_in.pop_front();
                }
                Ok(if frames.is_empty() {
                    Forward::Drop
                } else {
                    Forward::Replaced(frames.freeze())
                })
            }
            Err(e) => {
                // Abort the COPY: the server answers with an error, the client sees why.
                self.copy_in.pop_front();
                Ok(Forward::Replaced(messages::copy_fail(&e.to_string())))
            }
        }
    }

    /// Inspects one client message before it is forwarded: [`Step::Original`] when it goes to the
    /// server as it arrived, [`Step::Statement`] for a statement that must be analysed first
    /// ([`Frontend::on_statement`]), [`Step::Decided`] when [`Frontend::take_decision`] holds what to
    /// do instead. Everything but a statement is decided without awaiting.
    ///
    /// Called for every client message: the common answer is a one-byte `Step`, not a `Forward` or
    /// an error moved through the callers.
    fn on_frame(&mut self, frame: &FrameRef<'_>) -> Step {
        let decided = if self.skip_until_sync && frame.tag != b'S' {
            Ok(match frame.tag {
                b'X' => Forward::Last,
                _ => Forward::Drop,
            })
        } else {
            match frame.tag {
                b'Q' => return Step::Statement,
                b'P' => match self.parse_remembered(frame) {
                    Some(r) => r,
                    None => return Step::Statement,
                },
                _ => self.on_message(frame),
            }
        };
        if let Ok(Forward::Original) = decided {
            return Step::Original;
        }
        self.decision = Some(decided);
        Step::Decided
    }

    /// What [`Frontend::on_frame`] decided for a message it did not pass unchanged.
    fn take_decision(&mut self) -> Result<Forward, SessionError> {
        self.decision.take().unwrap_or(Ok(Forward::Original))
    }

    /// Analyses a Query or Parse (the policy role and catalog may have to be fetched).
    async fn on_statement(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        match frame.tag {
            b'Q' => self.on_query(frame).await,
            _ => self.on_parse(frame).await,
        }
    }

    /// An Execute of `portal`, whose row shape nobody described, preceded by a Describe of the
    /// portal that the proxy asks for itself (its answer is swallowed; it sets the shape of this and
    /// every later execution of the statement). Drivers that cache prepared statements send only
    /// Bind and Execute; their rows must be decrypted all the same.
    fn describe_first(
        &mut self,
        portal: &Arc<PortalCtx>,
        name: &[u8],
        execute: &FrameRef<'_>,
    ) -> Forward {
        portal.describe_sent.store(true, Ordering::Relaxed);
        portal.stmt.describe_sent.store(true, Ordering::Relaxed);
        self.pending.push_back(Pending::Describe {
            stmt: None,
            portal: Some(portal.clone()),
            injected: true,
        });
        let describe = messages::describe(b'P', name);
        let mut out = bytes::BytesMut::with_capacity(describe.len() + execute.bytes.len());
        out.extend_from_slice(&describe);
        out.extend_from_slice(execute.bytes);
        Forward::Replaced(out.freeze())
    }

    /// Any client message other than Query and Parse.
    fn on_message(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        match frame.tag {
            b'B' => return self.on_bind(frame),
            b'd' | b'c' | b'f' => return self.on_copy_data(frame),
            b'E' => {
                let name = messages::execute_portal(frame.body()).map_err(SessionError::Client)?;
                let portal = self.portals.get(name).cloned();
                let stmt = portal.as_ref().map(|p| p.stmt.clone());
                if let Some(r) = audit_refusal(self.shared) {
                    let kind = stmt
                        .as_ref()
                        .map(|s| s.kind)
                        .unwrap_or(StatementKind::Other);
                    return Ok(self.refuse_extended(Self::refused_ctx(r, kind)));
                }
                // Only a COPY (or a statement planned as one) can start a COPY FROM STDIN.
                if let Some(s) = stmt.as_ref().filter(|s| may_copy_in(s)) {
                    match self.copy_in_for(s) {
                        Ok(Some(rw)) => {
                            self.copy_in.clear();
                            self.copy_in.push_back(rw);
                        }
                        Ok(None) => {}
                        Err(r) => return Ok(self.refuse_extended(Self::refused_ctx(r, s.kind))),
                    }
                }
                let limited = stmt
                    .as_ref()
                    .and_then(|s| s.statement_plan())
                    .is_some_and(|sp| sp.max_rows.is_some());
                // Only an analysed statement's rows are looked at.
                let portal = portal.filter(|p| p.stmt.data.is_some());
                let describe = portal
                    .as_ref()
                    .filter(|p| !p.shape_known())
                    .map(|p| self.describe_first(p, name, frame));
                self.pending.push_back(Pending::Execute {
                    started: self.now(),
                    stmt,
                    portal,
                });
                if limited {
                    self.holding = Some(BarrierKind::Execute);
                }
                if let Some(replaced) = describe {
                    return Ok(replaced);
                }
            }
            b'D' => {
                let (kind, name) =
                    messages::target(frame.body(), "Describe").map_err(SessionError::Client)?;
                // Only an analysed statement's descriptions are rewritten.
                let (stmt, portal) = if kind == b'S' {
                    let s = self.statements.get(name).filter(|s| s.data.is_some());
                    (s.cloned(), None)
                } else {
                    let p = self.portals.get(name).filter(|p| p.stmt.data.is_some());
                    (None, p.cloned())
                };
                if let Some(s) = &stmt {
                    s.describe_sent.store(true, Ordering::Relaxed);
                }
                if let Some(p) = &portal {
                    p.describe_sent.store(true, Ordering::Relaxed);
                }
                self.pending.push_back(Pending::Describe {
                    stmt,
                    portal,
                    injected: false,
                });
            }
            b'C' => {
                let (kind, name) =
                    messages::target(frame.body(), "Close").map_err(SessionError::Client)?;
                if kind == b'S' {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
                self.pending.push_back(Pending::Close);
            }
            b'S' => {
                self.skip_until_sync = false;
                self.pending.push_back(Pending::Sync);
            }
            b'F' => {
                if let Some(r) = audit_refusal(self.shared) {
                    // A function call is not a statement the proxy can rewrite; answer as a refusal.
                    return Ok(self.refuse_query(self.now(), r, StatementKind::Other));
                }
                self.pending.push_back(Pending::FunctionCall {
                    started: self.now(),
                });
            }
            b'X' => return Ok(Forward::Last),
            // Flush: no answer.
            _ => {}
        }
        Ok(Forward::Original)
    }
}

/// Rows of the statement whose results are streaming.
struct RowState {
    shape: RowShape,
    stmt: Arc<StmtCtx>,
    /// The keyring as the result started: taken once rather than per row (a lock and two atomic
    /// reference counts shared by every session thread). A rotation or reload applies from the next
    /// result, as a policy change applies from the next statement.
    keyring: Arc<Keyring>,
    rows: u64,
    limit: Option<u64>,
    exceeded: bool,
}

impl RowState {
    fn new(shape: RowShape, stmt: &Arc<StmtCtx>, guard: &Guard) -> RowState {
        RowState {
            limit: stmt.statement_plan().and_then(|sp| sp.max_rows),
            shape,
            stmt: stmt.clone(),
            keyring: guard.keyring(),
            rows: 0,
            exceeded: false,
        }
    }
}

impl Backend<'_> {
    /// The row shape for the Execute at the front, from its portal's or statement's description.
    fn execute_rows(
        front: Option<&Pending>,
        guard: &Guard,
    ) -> Option<Result<RowState, crate::rewrite::RewriteError>> {
        let Some(Pending::Execute {
            portal: Some(p), ..
        }) = front
        else {
            return None;
        };
        // Not analysed: its rows pass through (nothing was described for it).
        p.stmt.data.as_ref()?;
        let described = lock_shape(&p.described).clone();
        let shape = match described {
            Some(s) => Ok(s),
            // Bound again after a Describe of the statement or of an earlier portal: the same
            // columns, in this Bind's formats.
            None => match lock_shape(&p.stmt.described).clone() {
                Some(mut s) => s.set_result_formats(&p.result_formats).map(|_| s),
                // Never forwarded unprocessed: the frontend asks for a Describe whenever none is
                // on its way, so this is a server that skipped it.
                None => Err(crate::rewrite::RewriteError::UnknownRowShape),
            },
        };
        Some(shape.map(|shape| RowState::new(shape, &p.stmt, guard)))
    }

    /// Forgets the COPY TO rewriter, if any (checked first: dropping an empty one is an out-of-line
    /// call on every CommandComplete and ReadyForQuery).
    fn end_copy_out(&mut self) {
        if self.copy_out.is_some() {
            self.copy_out = None;
        }
    }

    /// Inspects one server message; says whether it goes to the client as it arrived. When not,
    /// [`Backend::take_change`] says what replaces it (other bytes or nothing) or why the session
    /// ends. `t` is the session's tracker, locked by the caller once for a run of messages.
    ///
    /// Called for every server message: the answer is a `bool` rather than the change itself, which
    /// the hot path (every message unchanged) would otherwise build and move through the callers.
    fn on_frame(&mut self, t: &mut Tracker, frame: &FrameRef<'_>) -> bool {
        // The messages every statement gets, when nothing of them is rewritten, without the call to
        // `inspect` (whose frame is large): they only move the tracker on.
        let mut replacement = match frame.tag {
            b'1' | b'2' | b'3' => None,
            b'n' => {
                no_data(t.front());
                None
            }
            // Rows of a result nobody rewrites: only an Execute of an analysed portal (or a simple
            // Query's analysed statement, set up at its RowDescription) has rows to look at.
            b'D' if self.rows.is_none()
                && (self.rows_known
                    || !matches!(
                        t.front(),
                        Some(Pending::Execute {
                            portal: Some(_),
                            ..
                        })
                    )) =>
            {
                self.rows_known = true;
                None
            }
            // The description of a statement that was not analysed.
            b'T' if matches!(
                t.front(),
                Some(Pending::Describe {
                    stmt: None,
                    portal: None,
                    ..
                })
            ) =>
            {
                self.rows_known = false;
                None
            }
            // The end of a result whose rows were not looked at.
            b'C' | b'I' | b's' if self.rows.is_none() => {
                self.rows_known = false;
                self.end_copy_out();
                None
            }
            b'Z' | b'c' => {
                self.end_copy_out();
                self.rows = None;
                self.rows_known = false;
                None
            }
            _ => match self.inspect(t, frame) {
                Ok(r) => r,
                Err(e) => {
                    self.change = Some(Err(e));
                    return false;
                }
            },
        };
        let action = t.on_backend(frame.tag, frame.body());
        if t.release_barrier(frame.tag, frame.body()) {
            if t.barrier
                .is_some_and(|b| b.abort && b.kind == BarrierKind::Query)
            {
                // The server is about to be made to fail the block: present it as failed now.
                replacement = Some(Some(messages::frame(b'Z', b"E").into()));
            }
            self.released.notify_one();
        }
        if !t.done.is_empty() {
            self.finish_statements(t);
        }
        let replacement = match action {
            Action::Forward => replacement,
            Action::Swallow => Some(None),
            Action::ForwardRefusal => Some(Some(messages::without_context(frame.body()).into())),
        };
        match replacement {
            None => true,
            Some(r) => {
                self.change = Some(Ok(r));
                false
            }
        }
    }

    /// What replaces the message [`Backend::on_frame`] did not pass: other bytes, nothing, or the
    /// error that ends the session.
    fn take_change(&mut self) -> Result<Option<Replacement>, SessionError> {
        self.change.take().unwrap_or(Ok(None))
    }

    /// Reports the statements the tracker saw finish (drained in place: its buffer keeps its
    /// allocation between statements).
    #[inline(never)]
    fn finish_statements(&mut self, t: &mut Tracker) {
        for mut outcome in t.done.drain(..) {
            if std::mem::take(&mut self.max_rows_hit) {
                outcome.sqlstate = Some("42501".into());
            }
            self.statement_done(outcome);
        }
    }

    /// Everything `on_frame` does not handle inline: descriptions, rows of analysed statements,
    /// errors, command completions, COPY, parameter status.
    #[inline(never)]
    fn inspect(
        &mut self,
        t: &mut Tracker,
        frame: &FrameRef<'_>,
    ) -> Result<Option<Option<Replacement>>, SessionError> {
        let fail = |e: crate::rewrite::RewriteError| SessionError::Rewrite(e.to_string());
        let mut replacement: Option<Option<Replacement>> = None;
        match frame.tag {
            b'E' => {
                self.saw_fatal = messages::error_fields(frame.body())
                    .map(|f| f.severity == "FATAL" || f.severity == "PANIC")
                    .unwrap_or(false);
                self.rows = None;
                self.rows_known = false;
                self.end_copy_out();
                // A refusal raised for a simple Query: drop the PL/pgSQL context of the DO block.
                let refused = t.current_statement().is_some_and(|s| s.refusal.is_some());
                if refused {
                    replacement = Some(Some(messages::without_context(frame.body()).into()));
                }
            }
            b't' => {
                if let Some(Pending::Describe { stmt: Some(s), .. }) = t.front() {
                    if let Some(b) =
                        dataplane::rewrite_parameter_description(frame.body(), s).map_err(fail)?
                    {
                        replacement = Some(Some(b.into()));
                    }
                }
            }
            b'T' => {
                self.rows_known = false;
                let target = match t.front() {
                    Some(Pending::Describe { stmt: Some(s), .. }) => Some((s, None)),
                    Some(Pending::Describe {
                        portal: Some(p), ..
                    }) => Some((&p.stmt, Some(p))),
                    Some(Pending::Query { .. }) => t.current_statement().map(|s| (s, None)),
                    _ => None,
                }
                // Only analysed statements have rows to describe.
                .filter(|(s, _)| s.data.is_some())
                .map(|(s, p)| (s.clone(), p.cloned()));
                let is_query = matches!(t.front(), Some(Pending::Query { .. }));
                if let Some((stmt, portal)) = target {
                    if stmt.data.is_some() {
                        // A simple Query's context lives for one message: nothing to remember.
                        let (frame_out, shape) = if is_query {
                            dataplane::describe_rows(&stmt, frame.body())
                        } else {
                            dataplane::describe_rows_cached(&stmt, frame.body())
                        }
                        .map_err(fail)?;
                        if let Some(b) = frame_out {
                            replacement = Some(Some(b.into()));
                        }
                        if is_query {
                            self.rows = Some(RowState::new(shape, &stmt, &self.shared.guard));
                        } else {
                            remember_shape(&stmt, portal.as_deref(), shape);
                        }
                    }
                }
            }
            b'D' => {
                if self.rows.is_none() && !self.rows_known {
                    // Once per result: a statement that was not analysed keeps `rows` empty.
                    self.rows_known = true;
                    if let Some(r) = Self::execute_rows(t.front(), &self.shared.guard) {
                        self.rows = Some(r.map_err(fail)?);
                    }
                }
                if let Some(rs) = self.rows.as_mut() {
                    rs.rows += 1;
                    if rs.limit.is_some_and(|l| rs.rows > l) {
                        rs.exceeded = true;
                        replacement = Some(None);
                    } else if !rs.shape.is_passthrough() {
                        let ctx = dataplane::row_ctx(&self.shared.guard, &rs.keyring);
                        let rewritten = crate::rewrite::rewrite_data_row(
                            frame.body(),
                            &rs.shape,
                            &ctx,
                            &mut self.row,
                        )
                        .map_err(fail)?;
                        if rewritten {
                            replacement = Some(Some(Replacement::Row));
                        }
                    }
                }
            }
            b'C' | b'I' | b's' => {
                self.rows_known = false;
                if let Some(rs) = self.rows.take() {
                    if rs.exceeded {
                        let limit = rs.limit.unwrap_or(0);
                        let role = rs
                            .stmt
                            .data
                            .as_ref()
                            .map(|d| d.role.clone())
                            .unwrap_or_default();
                        replacement = Some(Some(Replacement::Bytes(error_response(
                            Severity::Error,
                            "42501",
                            &format!(
                                "pgcloak: the statement returned more than {limit} rows with classified values, the max_rows of policy role {role}; the first {limit} rows were delivered"
                            ),
                            Some("Narrow the query (WHERE, LIMIT) or use a role without max_rows."),
                        ))));
                        self.max_rows_hit = true;
                        if let Some(b) = t.barrier.as_mut() {
                            b.exceeded = true;
                        }
                    }
                }
                self.end_copy_out();
            }
            b'H' => {
                let stmt = t.current_statement().cloned();
                if let Some(stmt) = stmt {
                    self.copy_out = dataplane::copy_out_rewriter(&stmt, frame.body())
                        .map_err(fail)?
                        .map(|rewriter| CopyOut {
                            rewriter,
                            keyring: self.shared.guard.keyring(),
                        });
                }
            }
            b'd' => {
                if let Some(c) = self.copy_out.as_mut() {
                    let ctx = dataplane::row_ctx(&self.shared.guard, &c.keyring);
                    let out = c.rewriter.rewrite(frame.body(), &ctx).map_err(fail)?;
                    if let Some(b) = out {
                        replacement = Some(Some(messages::copy_data(&b).into()));
                    }
                }
            }
            b'S' => {
                if let Ok((name, value)) = messages::parameter_status(frame.body()) {
                    self.encoding.reported(name, value);
                }
            }
            _ => {}
        }
        Ok(replacement)
    }

    fn statement_done(&mut self, outcome: super::track::Outcome) {
        self.statements += 1;
        let guard = &self.shared.guard;
        if outcome.sqlstate.is_none() {
            if let Some(s) = &outcome.stmt {
                if may_change_catalog(s) {
                    // Tables, views, columns or role grants may have changed.
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
            let ev = super::events::statement_event(self.info, &outcome);
            if let Err(e) = audit.record(ev) {
                warn!("audit event not stored: {e}");
            }
        }
    }
}

/// Remembers the row shape a RowDescription gave: on the portal described, and on its statement,
/// whose later portals have the same columns (in their own formats). A drivers that describes a
/// portal once and then sends only Bind and Execute (pgJDBC) gets its rows decrypted all the same.
fn remember_shape(stmt: &StmtCtx, portal: Option<&PortalCtx>, shape: RowShape) {
    if let Some(p) = portal {
        let mut s = lock_shape(&stmt.described);
        if s.is_none() {
            *s = Some(shape.clone());
        }
        drop(s);
        *lock_shape(&p.described) = Some(shape);
    } else {
        *lock_shape(&stmt.described) = Some(shape);
    }
}

/// NoData answering a Describe of an analysed statement or portal: it returns no rows, which is a
/// shape too (so its Executes need no Describe of their own).
fn no_data(front: Option<&Pending>) {
    let Some(Pending::Describe { stmt, portal, .. }) = front else {
        return;
    };
    if let Some(stmt) = stmt
        .as_deref()
        .or(portal.as_deref().map(|p| p.stmt.as_ref()))
    {
        remember_shape(stmt, portal.as_deref(), RowShape::empty());
    }
}

/// Whether `s` may start a COPY FROM STDIN ([`Frontend::copy_in_for`] has something to say).
fn may_copy_in(s: &StmtCtx) -> bool {
    s.kind == StatementKind::Copy || s.statement_plan().is_some_and(|sp| sp.copy.is_some())
}

/// Whether a statement that ran may have changed tables, views, columns or role grants: DDL, and any
/// other statement (`DO`, `CALL`, a function) except transaction and session control, which every
/// transaction sends and which change none of them.
fn may_change_catalog(s: &StmtCtx) -> bool {
    match s.kind {
        StatementKind::Ddl => true,
        StatementKind::Other => {
            let Some(first) = s.text.split_ascii_whitespace().next() else {
                return false;
            };
            !CONTROL_VERBS.iter().any(|v| first.eq_ignore_ascii_case(v))
        }
        _ => false,
    }
}

/// First words of statements that leave the catalog as it is.
const CONTROL_VERBS: &[&str] = &[
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "set",
    "reset",
    "show",
    "discard",
    "listen",
    "unlisten",
    "notify",
    "deallocate",
    "close",
    "checkpoint",
    "vacuum",
    "analyze",
    "lock",
    "load",
    "prepare",
];

/// Runs both pumps until either side ends the session.
pub async fn run<CR, CW, SR, SW>(
    shared: &Shared,
    info: &SessionInfo,
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
        fixed_time: (shared.guard.audit.is_none() && !tracing::enabled!(tracing::Level::DEBUG))
            .then(Instant::now),
    };
    let mut backend = Backend {
        shared,
        info,
        tracker: &tracker,
        saw_fatal: false,
        statements: 0,
        rows: None,
        rows_known: false,
        copy_out: None,
        max_rows_hit: false,
        change: None,
        row: Vec::new(),
        released: &released,
        encoding,
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
            shared.kill.killed().await;
            End::Error(SessionError::Shutdown)
        });
        super::race::race3(c2s, s2c, killed).await
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
                let timer = deadline.get_or_insert_with(|| fe.shared.guard.timers.sleep(d));
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
                deadline = Some(fe.shared.guard.timers.sleep(next));
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
                    match be.take_change() {
                        Ok(replacement) => break Some((len, replacement)),
                        Err(e) => return End::Error(e),
                    }
                }
            };
            let Some((len, replacement)) = changed else {
                break;
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
            SessionError::Rewrite(msg) => {
                warn!("closing session: {msg}");
                Some(("XX000", msg.clone()))
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
