//! The client→server side of the query phase: simple Query, the extended protocol (Parse, Bind,
//! Describe, Execute), COPY FROM data — each analysed, refused or rewritten before it goes upstream.

use super::*;

impl Frontend<'_> {
    /// When a statement starts, for its duration (see `fixed_time`).
    pub(super) fn now(&self) -> Instant {
        self.fixed_time.unwrap_or_else(Instant::now)
    }

    /// Lexes and (when it names a protected table) plans `sql` for this session's policy role.
    pub(super) async fn analyze(
        &self,
        sql: &str,
        policy: &Arc<Policy>,
    ) -> Result<(Lexed, Option<Arc<Plan>>, Option<Arc<DataCtx>>), Refusal> {
        let guard = &self.shared.services;
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
    pub(super) async fn names_protected_view(&self, lexed: &Lexed) -> bool {
        let guard = &self.shared.services;
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
    pub(super) fn contexts(
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
    pub(super) fn refused_ctx(refusal: Refusal, kind: StatementKind) -> Arc<StmtCtx> {
        let mut ctx = StmtCtx::refused(refusal.sqlstate, refusal.message);
        ctx.kind = kind;
        Arc::new(ctx)
    }

    /// Replaces a whole Query with a refusal.
    pub(super) fn refuse_query(
        &mut self,
        started: Instant,
        r: Refusal,
        kind: StatementKind,
    ) -> Forward {
        let q = messages::query(&raise_sql(&r));
        self.pending.push_back(Pending::Query {
            started,
            stmts: vec![Self::refused_ctx(r, kind)],
            next: 0,
        });
        Forward::Replaced(q)
    }

    /// Prepares the COPY FROM STDIN data rewriting of `stmt`, if it needs one.
    pub(super) fn copy_in_for(
        &self,
        stmt: &StmtCtx,
    ) -> Result<Option<Option<CopyInRewriter>>, Refusal> {
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
        CopyInRewriter::new(copy, self.shared.services.keyring(), &storage_of)
            .map(|r| Some(Some(r)))
            .map_err(apply::refusal)
    }

    pub(super) async fn on_query(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        let started = self.now();
        // A new Query ends any COPY the server refused before data flowed.
        self.copy_in.clear();
        let sql_bytes = messages::query_text(frame.body()).map_err(SessionError::Client)?;
        #[cfg(debug_assertions)]
        crate::testhook::panic_on_query(sql_bytes);
        let protected = self.shared.services.has_protected_tables();
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
        let policy = self.shared.services.policy();
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
            match apply::rewrite_literals(
                &self.shared.services,
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
    pub(super) fn publish(&mut self) {
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
    pub(super) async fn wait_barrier<SW: AsyncWrite + Unpin>(
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
    pub(super) fn refuse_extended(&mut self, stmt: Arc<StmtCtx>) -> Forward {
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
    pub(super) fn parse_remembered(
        &mut self,
        frame: &FrameRef<'_>,
    ) -> Option<Result<Forward, SessionError>> {
        // Only the name is read: a remembered key is byte for byte a Parse analysed (and so checked)
        // before; anything else goes on to `on_parse`, which checks the whole message.
        let name = match messages::parse_name(frame.body()) {
            Ok(n) => n,
            Err(e) => return Some(Err(SessionError::Client(e))),
        };
        let key = &frame.body()[name.len() + 1..];
        let ctx = self
            .recent
            .get(self.shared.services.policy_generation(), key)?;
        self.statements.insert(name, ctx);
        self.pending.push_back(Pending::Parse);
        Some(Ok(Forward::Original))
    }

    pub(super) async fn on_parse(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        let (name, sql_bytes) = messages::parse_text(frame.body()).map_err(SessionError::Client)?;
        // Text and declared types: all the analysis of a statement without a plan depends on.
        let key = &frame.body()[name.len() + 1..];
        // Read before the policy: a context remembered under it is stale once the policy changes.
        let generation = self.shared.services.policy_generation();
        let policy = self.shared.services.policy();
        let Ok(sql) = std::str::from_utf8(sql_bytes) else {
            if self.shared.services.has_protected_tables() {
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
        let out = match apply::rewrite_parse(&self.shared.services, frame.body(), &ctx, sql, &lexed)
        {
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

    pub(super) fn on_bind(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
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
        let out = match apply::rewrite_bind(&self.shared.services, frame.body(), &stmt) {
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
    pub(super) fn on_copy_data(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
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
    pub(super) fn on_frame(&mut self, frame: &FrameRef<'_>) -> Step {
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
    pub(super) fn take_decision(&mut self) -> Result<Forward, SessionError> {
        self.decision.take().unwrap_or(Ok(Forward::Original))
    }

    /// Analyses a Query or Parse (the policy role and catalog may have to be fetched).
    pub(super) async fn on_statement(
        &mut self,
        frame: &FrameRef<'_>,
    ) -> Result<Forward, SessionError> {
        match frame.tag {
            b'Q' => self.on_query(frame).await,
            _ => self.on_parse(frame).await,
        }
    }

    /// An Execute of `portal`, whose row shape nobody described, preceded by a Describe of the
    /// portal that the proxy asks for itself (its answer is swallowed; it sets the shape of this and
    /// every later execution of the statement). Drivers that cache prepared statements send only
    /// Bind and Execute; their rows must be decrypted all the same.
    pub(super) fn describe_first(
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
    pub(super) fn on_message(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
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
