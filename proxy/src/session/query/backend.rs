//! The server→client side of the query phase: RowDescription, DataRow, COPY TO data and the end of
//! each statement (audit), matched to requests by the tracker.

use super::*;

/// Rows of the statement whose results are streaming.
pub(super) struct RowState {
    pub(super) shape: RowShape,
    pub(super) stmt: Arc<StmtCtx>,
    /// The keyring as the result started: taken once rather than per row (a lock and two atomic
    /// reference counts shared by every session thread). A rotation or reload applies from the next
    /// result, as a policy change applies from the next statement.
    pub(super) keyring: Arc<Keyring>,
    pub(super) rows: u64,
    pub(super) limit: RowLimit,
}

/// How many rows with classified values a result may still deliver: the statement's `max_rows`
/// and what is left of the user's export budget, whichever is less.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RowLimit {
    pub(super) limit: Option<u64>,
    /// The budget, and what was left of it as the result started.
    pub(super) budget: Option<(pgcloak_policy::Budget, crate::budgets::Left)>,
    pub(super) exceeded: bool,
}

impl RowLimit {
    pub(super) fn of(stmt: &StmtCtx, guard: &Services, user: &str) -> RowLimit {
        let max_rows = stmt.statement_plan().and_then(|sp| sp.max_rows);
        let budget = stmt.budget().map(|b| (b, guard.budgets.left(user, b)));
        let limit = match (max_rows, budget) {
            (Some(m), Some((_, left))) => Some(m.min(left.rows)),
            (Some(m), None) => Some(m),
            (None, Some((_, left))) => Some(left.rows),
            (None, None) => None,
        };
        RowLimit {
            limit,
            budget,
            exceeded: false,
        }
    }

    /// Counts one more row (of `rows` so far): false when it is over the limit (it is dropped).
    pub(super) fn admit(&mut self, rows: u64) -> bool {
        if self.limit.is_some_and(|l| rows > l) {
            self.exceeded = true;
            return false;
        }
        true
    }

    /// At the end of the result: charges the rows delivered to the budget, and when the limit cut
    /// it, the error the client gets instead of the completion.
    pub(super) fn finish(
        &self,
        rows: u64,
        guard: &Services,
        user: &str,
        stmt: &StmtCtx,
    ) -> Option<Bytes> {
        let delivered = self.limit.map_or(rows, |l| rows.min(l));
        if let Some((b, _)) = self.budget {
            guard.budgets.charge(user, b, delivered);
        }
        if !self.exceeded {
            return None;
        }
        let role = stmt.data.as_ref().map_or("", |d| d.role.as_str());
        let by_budget = self
            .budget
            .filter(|(_, left)| Some(left.rows) == self.limit);
        let (message, hint) = match by_budget {
            Some((_, left)) => (
                left.cut_message(role, delivered),
                "Wait for the window to reset, or ask for a just-in-time grant of a role with a larger budget.",
            ),
            None => (
                format!(
                    "pgcloak: the statement returned more than {delivered} rows with classified values, the max_rows of policy role {role}; the first {delivered} rows were delivered"
                ),
                "Narrow the query (WHERE, LIMIT) or use a role without max_rows.",
            ),
        };
        Some(error_response(
            Severity::Error,
            "42501",
            &message,
            Some(hint),
        ))
    }
}

impl RowState {
    pub(super) fn new(
        shape: RowShape,
        stmt: &Arc<StmtCtx>,
        guard: &Services,
        user: &str,
    ) -> RowState {
        RowState {
            limit: RowLimit::of(stmt, guard, user),
            shape,
            stmt: stmt.clone(),
            keyring: guard.keyring(),
            rows: 0,
        }
    }
}

impl Backend<'_> {
    /// The row shape for the Execute at the front, from its portal's or statement's description.
    pub(super) fn execute_rows(
        front: Option<&Pending>,
        guard: &Services,
        user: &str,
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
        Some(shape.map(|shape| RowState::new(shape, &p.stmt, guard, user)))
    }

    /// Forgets the COPY TO rewriter, if any (checked first: dropping an empty one is an out-of-line
    /// call on every CommandComplete and ReadyForQuery).
    pub(super) fn end_copy_out(&mut self) {
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
    pub(super) fn on_frame(&mut self, t: &mut Tracker, frame: &FrameRef<'_>) -> bool {
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
            b'C' | b'I' | b's'
                if self.rows.is_none() && self.copy_rows.is_none() && !self.copy_cut =>
            {
                self.rows_known = false;
                self.end_copy_out();
                None
            }
            b'Z' | b'c' if frame.tag == b'Z' || self.copy_rows.is_none() => {
                if frame.tag == b'Z' {
                    self.live
                        .set_ready(frame.body().first().copied().unwrap_or(b'I'));
                    if !self.fetched.is_empty() || self.subject_failure.is_some() {
                        self.forget_fetched_keys();
                    }
                }
                self.end_copy_out();
                self.rows = None;
                self.rows_known = false;
                None
            }
            _ => match self.inspect(t, frame) {
                Ok(_) if self.need_key.is_some() => return false,
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
    pub(super) fn take_change(&mut self) -> Result<Option<Replacement>, SessionError> {
        self.change.take().unwrap_or(Ok(None))
    }

    /// Reports the statements the tracker saw finish (drained in place: its buffer keeps its
    /// allocation between statements).
    #[inline(never)]
    pub(super) fn finish_statements(&mut self, t: &mut Tracker) {
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
    pub(super) fn inspect(
        &mut self,
        t: &mut Tracker,
        frame: &FrameRef<'_>,
    ) -> Result<Option<Option<Replacement>>, SessionError> {
        let fail = SessionError::Rewrite;
        let mut replacement: Option<Option<Replacement>> = None;
        match frame.tag {
            b'E' => {
                self.saw_fatal = messages::error_fields(frame.body())
                    .map(|f| f.severity == "FATAL" || f.severity == "PANIC")
                    .unwrap_or(false);
                // What was delivered before the error still counts against the budget.
                let guard = &self.shared.services;
                if let Some(rs) = self.rows.take() {
                    let _ = rs.limit.finish(rs.rows, guard, &self.info.user, &rs.stmt);
                }
                if let Some((stmt, limit, rows)) = self.copy_rows.take() {
                    let _ = limit.finish(rows, guard, &self.info.user, &stmt);
                }
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
                        apply::rewrite_parameter_description(frame.body(), s).map_err(fail)?
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
                            apply::describe_rows(&stmt, frame.body())
                        } else {
                            apply::describe_rows_cached(&stmt, frame.body())
                        }
                        .map_err(fail)?;
                        if let Some(b) = frame_out {
                            replacement = Some(Some(b.into()));
                        }
                        if is_query {
                            self.rows = Some(RowState::new(
                                shape,
                                &stmt,
                                &self.shared.services,
                                &self.info.user,
                            ));
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
                    if let Some(r) =
                        Self::execute_rows(t.front(), &self.shared.services, &self.info.user)
                    {
                        self.rows = Some(r.map_err(fail)?);
                    }
                }
                if let Some(rs) = self.rows.as_mut() {
                    rs.rows += 1;
                    if !rs.limit.admit(rs.rows) {
                        replacement = Some(None);
                    } else if !rs.shape.is_passthrough() {
                        let subjects = apply::Subjects {
                            services: &self.shared.services,
                            unavailable: self.subject_failure.as_deref(),
                            fetched: &self.fetched,
                        };
                        let ctx = apply::row_ctx(&self.shared.services, &rs.keyring, &subjects);
                        let rewritten = match crate::rewrite::rewrite_data_row(
                            frame.body(),
                            &rs.shape,
                            &ctx,
                            &mut self.row,
                        ) {
                            Err(crate::rewrite::RewriteError::SubjectKeyUnknown {
                                key, ..
                            }) => {
                                // Looked at again once the key is here.
                                rs.rows -= 1;
                                self.need_key = Some(key);
                                return Ok(None);
                            }
                            r => r.map_err(fail)?,
                        };
                        if rewritten {
                            replacement = Some(Some(Replacement::Row));
                        }
                    }
                }
            }
            b'C' | b'I' | b's' => {
                self.rows_known = false;
                let guard = &self.shared.services;
                let user = &self.info.user;
                if std::mem::take(&mut self.copy_cut) {
                    // The error already took the place of the COPY's end (CopyDone).
                    self.end_copy_out();
                    return Ok(Some(None));
                }
                let cut = if let Some(rs) = self.rows.take() {
                    rs.limit.finish(rs.rows, guard, user, &rs.stmt)
                } else if let Some((stmt, limit, rows)) = self.copy_rows.take() {
                    limit.finish(rows, guard, user, &stmt)
                } else {
                    None
                };
                if let Some(error) = cut {
                    replacement = Some(Some(Replacement::Bytes(error)));
                    self.max_rows_hit = true;
                    if let Some(b) = t.barrier.as_mut() {
                        b.exceeded = true;
                    }
                }
                self.end_copy_out();
            }
            b'H' => {
                let stmt = t.current_statement().cloned();
                if let Some(stmt) = stmt {
                    if stmt.budget().is_some() {
                        let limit = RowLimit::of(&stmt, &self.shared.services, &self.info.user);
                        self.copy_rows = Some((stmt.clone(), limit, 0));
                    }
                    self.copy_out = apply::copy_out_rewriter(&stmt, frame.body())
                        .map_err(fail)?
                        .map(|rewriter| CopyOut {
                            rewriter,
                            keyring: self.shared.services.keyring(),
                        });
                }
            }
            // The end of a COPY TO counted against a budget: when it was cut, the error is sent
            // in place of CopyDone (as the server reports a COPY that fails midway), since
            // clients stop reading at CopyDone; the CommandComplete after it is dropped.
            b'c' => {
                self.end_copy_out();
                self.rows = None;
                self.rows_known = false;
                if self.copy_rows.as_ref().is_some_and(|(_, l, _)| l.exceeded) {
                    if let Some((stmt, limit, rows)) = self.copy_rows.take() {
                        if let Some(error) =
                            limit.finish(rows, &self.shared.services, &self.info.user, &stmt)
                        {
                            replacement = Some(Some(Replacement::Bytes(error)));
                            self.copy_cut = true;
                            self.max_rows_hit = true;
                            if let Some(b) = t.barrier.as_mut() {
                                b.exceeded = true;
                            }
                        }
                    }
                }
            }
            b'd' => {
                if let Some((_, limit, rows)) = self.copy_rows.as_mut() {
                    *rows += 1;
                    if !limit.admit(*rows) {
                        return Ok(Some(None));
                    }
                }
                if let Some(c) = self.copy_out.as_mut() {
                    let subjects = apply::Subjects {
                        services: &self.shared.services,
                        unavailable: self.subject_failure.as_deref(),
                        fetched: &self.fetched,
                    };
                    let ctx = apply::row_ctx(&self.shared.services, &c.keyring, &subjects);
                    let out = match c.rewriter.rewrite(frame.body(), &ctx) {
                        Err(crate::rewrite::RewriteError::SubjectKeyUnknown { key, .. }) => {
                            if let Some((_, _, rows)) = self.copy_rows.as_mut() {
                                *rows -= 1;
                            }
                            self.need_key = Some(key);
                            return Ok(None);
                        }
                        r => r.map_err(fail)?,
                    };
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

    /// Fetches the subject key a row waits for ([`Backend::need_key`]) into [`Backend::fetched`];
    /// when the key table cannot be read, remembers why, so the row then fails with it.
    pub(super) async fn fetch_subject_key(&mut self, key: pgcloak_keymgr::SubjectKeyId) {
        match self
            .shared
            .services
            .subject_keys
            .resolve(&[key], false)
            .await
        {
            Ok(mut found) => {
                self.fetched.insert(key, found.pop().flatten());
            }
            Err(e) => self.subject_failure = Some(e),
        }
    }

    /// Forgets the subject keys fetched for this session's results (at ReadyForQuery: an erasure
    /// applies from the next statement at the latest).
    #[inline(never)]
    fn forget_fetched_keys(&mut self) {
        self.fetched.clear();
        self.subject_failure = None;
    }

    pub(super) fn statement_done(&mut self, outcome: crate::session::track::Outcome) {
        self.statements += 1;
        self.live.set_statements(self.statements);
        let guard = &self.shared.services;
        if outcome.sqlstate.is_none() {
            if let Some(s) = &outcome.stmt {
                if may_change_catalog(s) {
                    // Tables, views, columns or role grants may have changed.
                    guard.invalidate_catalog(&self.info.database);
                    guard.forget_memberships(&self.info.database);
                }
            }
        }
        let micros = outcome.started.elapsed().as_micros() as u64;
        crate::metrics::with(|c| {
            let stmt = outcome.stmt.as_deref();
            c.statement(
                stmt.map_or(pgcloak_policy::StatementKind::Other, |s| s.kind),
                stmt.and_then(|s| s.refusal.as_ref()).map(|r| r.sqlstate),
                outcome.sqlstate.is_some(),
                outcome.protocol,
                micros,
            )
        });
        debug!(
            duration_us = micros,
            rows = outcome.rows,
            sqlstate = outcome.sqlstate.as_deref().unwrap_or(""),
            "statement finished"
        );
        if let Some(audit) = &guard.audit {
            let ev = crate::session::events::statement_event(self.info, &outcome);
            if let Err(e) = audit.record(ev) {
                warn!("audit event not stored: {e}");
            }
        }
    }
}

/// Remembers the row shape a RowDescription gave: on the portal described, and on its statement,
/// whose later portals have the same columns (in their own formats). A drivers that describes a
/// portal once and then sends only Bind and Execute (pgJDBC) gets its rows decrypted all the same.
pub(super) fn remember_shape(stmt: &StmtCtx, portal: Option<&PortalCtx>, shape: RowShape) {
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
pub(super) fn no_data(front: Option<&Pending>) {
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
pub(super) fn may_copy_in(s: &StmtCtx) -> bool {
    s.kind == StatementKind::Copy || s.statement_plan().is_some_and(|sp| sp.copy.is_some())
}

/// Whether a statement that ran may have changed tables, views, columns or role grants: DDL, and any
/// other statement (`DO`, `CALL`, a function) except transaction and session control, which every
/// transaction sends and which change none of them.
pub(super) fn may_change_catalog(s: &StmtCtx) -> bool {
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
pub(super) const CONTROL_VERBS: &[&str] = &[
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
