//! The client→server side of the query phase: every client message is looked at here first
//! ([`Frontend::on_frame`]) and handed to the simple-query (`simple.rs`), extended-protocol
//! (`extended.rs`) or COPY FROM (`copy_in.rs`) handling; analysis and the barrier are shared by all.

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
        keep_sql: bool,
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
        let fail = |what: crate::catalog::CatalogError| Refusal {
            sqlstate: "42501",
            message: format!(
                "pgcloak: {what}; the statement names a protected table and is refused"
            ),
        };
        let memberships = guard.memberships(db, &self.info.user).await.map_err(fail)?;
        let names: Vec<&str> = memberships.iter().map(String::as_str).collect();
        let base = policy.role_for(&names);
        let catalog = guard.catalog(db).await.map_err(fail)?;
        let granted = guard.grants.for_user(&self.info.user);
        let (plan, data) = self.plan_as(sql, &lexed, policy, base, granted, catalog, keep_sql);
        let plan = self.within_budget(plan, &data, !keep_sql).await?;
        Ok((lexed, Some(plan), Some(data)))
    }

    /// Reads the user's export budget count when `plan` reads classified values under one (once
    /// per window on this instance), and with `refuse_spent` (a simple Query, which runs now)
    /// refuses those statements when nothing is left. An extended-protocol statement is checked at
    /// each Bind instead (it may run long after its Parse).
    async fn within_budget(
        &self,
        plan: Arc<Plan>,
        data: &DataCtx,
        refuse_spent: bool,
    ) -> Result<Arc<Plan>, Refusal> {
        let Some(budget) = data.budget else {
            return Ok(plan);
        };
        let reads = |sp: &pgcloak_policy::StatementPlan| sp.classified && sp.decision.is_allow();
        if !plan.statements.iter().any(reads) {
            return Ok(plan);
        }
        let budgets = &self.shared.services.budgets;
        budgets
            .ensure(&self.info.user, budget)
            .await
            .map_err(|e| Refusal {
                sqlstate: "42501",
                message: format!(
                    "pgcloak: {e}; the statement reads classified values under the export budget of policy role {} and is refused",
                    data.role
                ),
            })?;
        let left = budgets.left(&self.info.user, budget);
        if !refuse_spent || left.rows > 0 {
            return Ok(plan);
        }
        let mut spent = (*plan).clone();
        for sp in spent.statements.iter_mut().filter(|sp| reads(sp)) {
            sp.decision = pgcloak_policy::Decision::Deny {
                sqlstate: "42501",
                message: left.spent_message(&data.role),
            };
        }
        Ok(Arc::new(spent))
    }

    /// The refusal of a statement whose user's export budget is spent (checked at each Bind).
    #[inline]
    pub(super) fn budget_spent(&self, stmt: &StmtCtx) -> Option<Refusal> {
        let budget = stmt.budget()?;
        self.spent_refusal(stmt, budget)
    }

    #[inline(never)]
    fn spent_refusal(&self, stmt: &StmtCtx, budget: pgcloak_policy::Budget) -> Option<Refusal> {
        let left = self.shared.services.budgets.left(&self.info.user, budget);
        (left.rows == 0).then(|| Refusal {
            sqlstate: "42501",
            message: left.spent_message(stmt.data.as_ref().map_or("", |d| d.role.as_str())),
        })
    }

    /// Plans `sql` for `base` raised by `granted`, with the catalog snapshot `catalog`; `keep_sql`
    /// keeps the text with the plan, so that it can be planned again when the grants change
    /// ([`Frontend::regranted`]).
    #[allow(clippy::too_many_arguments)]
    fn plan_as(
        &self,
        sql: &str,
        lexed: &Lexed,
        policy: &Arc<Policy>,
        base: &pgcloak_policy::RolePolicy,
        granted: Option<crate::grants::UserGrants>,
        catalog: Arc<crate::services::DbCatalog>,
        keep_sql: bool,
    ) -> (Arc<Plan>, Arc<DataCtx>) {
        let guard = &self.shared.services;
        let raised = granted
            .as_ref()
            .map(|g| Arc::new(base.raised_by(&g.raises(), &g.tag())));
        let role = raised.as_deref().unwrap_or(base);
        let plan = guard.plan(sql, lexed, policy, role, &catalog.catalog);
        let mut data = DataCtx {
            role: base.name.clone(),
            raised: None,
            grants: granted,
            policy: policy.clone(),
            catalog,
            shadow: None,
            sql: keep_sql.then(|| Arc::from(sql)),
            budget: role.budget,
        };
        if role.shadow {
            // Served as a role that may read and write everything (so writes are still
            // encrypted), with what this role may not read in plaintext passed as stored.
            let serving = role.shadow_serving();
            let served = guard.plan(sql, lexed, policy, &serving, &data.catalog.catalog);
            let served = Arc::new(shadow_served(&served, role));
            data.raised = raised;
            data.shadow = Some(plan);
            return (served, Arc::new(data));
        }
        data.raised = raised;
        let tag = data.grants.as_ref().map(|g| g.tag()).unwrap_or_default();
        (self.with_cursors(plan, &tag), Arc::new(data))
    }

    /// `stmt` as planned for the user's grants in force now: itself when they are the ones it was
    /// planned with, else planned again (a grant was approved, revoked or expired since its Parse;
    /// drivers that cache prepared statements send only Bind and Execute for years).
    /// `None`: unchanged. Inline: on every Bind, and almost always answered by two loads.
    #[inline]
    pub(super) fn regranted(&self, stmt: &StmtCtx) -> Result<Option<Arc<StmtCtx>>, Refusal> {
        let Some(data) = &stmt.data else {
            return Ok(None);
        };
        if data.grants.is_none() && !self.shared.services.grants.any() {
            return Ok(None);
        }
        self.replan_for_grants(stmt, data)
    }

    #[inline(never)]
    fn replan_for_grants(
        &self,
        stmt: &StmtCtx,
        data: &DataCtx,
    ) -> Result<Option<Arc<StmtCtx>>, Refusal> {
        let now = self.shared.services.grants.for_user(&self.info.user);
        if crate::grants::UserGrants::same(now.as_ref(), data.grants.as_ref()) {
            return Ok(None);
        }
        let changed = || {
            Refusal {
            sqlstate: "42501",
            message: format!(
                "pgcloak: the grants of user {} changed since this statement was prepared and it cannot be planned again; prepare it again",
                self.info.user
            ),
        }
        };
        let Some(sql) = data.sql.clone() else {
            return Err(changed());
        };
        let lexed = lex(&sql);
        let (plan, new_data) = self.plan_as(
            &sql,
            &lexed,
            &data.policy,
            data.base_role(),
            now,
            data.catalog.clone(),
            true,
        );
        let old = stmt.statement_plan();
        let new = plan.statements.get(stmt.index);
        // Grants change reads only; what the Parse was rewritten for (encrypted parameters) stays.
        if old.map(|o| (&o.encryptions, &o.in_lists)) != new.map(|n| (&n.encryptions, &n.in_lists))
        {
            return Err(changed());
        }
        let ctx = Self::contexts(&lexed, Some(&plan), Some(&new_data))
            .into_iter()
            .nth(stmt.index)
            .ok_or_else(changed)?;
        if let Some(t) = stmt.param_types.get() {
            let _ = ctx.param_types.set(t.clone());
        }
        if let Some(a) = stmt.any_params.get() {
            let _ = ctx.any_params.set(a.clone());
        }
        Ok(Some(ctx))
    }

    /// Remembers the cursors `plan` declares, and gives its `FETCH`/`MOVE` statements the outputs
    /// and `max_rows` of the cursor they read (declared earlier through this session): the rows of
    /// a cursor are limited and presented as those of its query.
    /// `grants`: the ids of the grants in force; a cursor declared under others is not read.
    fn with_cursors(&self, plan: Arc<Plan>, grants: &str) -> Arc<Plan> {
        use pgcloak_policy::CursorUse;
        if !plan.statements.iter().any(|s| s.cursor.is_some()) {
            return plan;
        }
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Option<Plan> = None;
        for (i, sp) in plan.statements.iter().enumerate() {
            match &sp.cursor {
                Some(CursorUse::Declare(name)) if sp.decision.is_allow() => {
                    cursors.insert(name.clone(), (sp.clone(), grants.to_string()));
                }
                Some(CursorUse::Fetch(name)) => {
                    if let Some((declared, under)) = cursors.get(name) {
                        let mut fetched = sp.for_fetch(Some(declared));
                        if under != grants && !declared.outputs.is_empty() {
                            fetched.decision = pgcloak_policy::Decision::Deny {
                                sqlstate: "42501",
                                message: format!("pgcloak: cursor {name} was declared under other grants than are in force now (one was approved, revoked or expired since); declare it again"),
                            };
                        }
                        let p = out.get_or_insert_with(|| (*plan).clone());
                        if let Some(slot) = p.statements.get_mut(i) {
                            *slot = fetched;
                        }
                    }
                }
                _ => {}
            }
        }
        out.map(Arc::new).unwrap_or(plan)
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
                let would_deny = data
                    .and_then(|d| d.shadow.as_ref())
                    .and_then(|p| p.statements.get(i))
                    .and_then(|sp| sp.decision.message())
                    .map(str::to_string);
                let under_grants = plan
                    .and_then(|p| p.statements.get(i))
                    .zip(data)
                    .and_then(|(sp, d)| d.grants_used(sp));
                Arc::new(StmtCtx {
                    plan: plan.cloned(),
                    index: i,
                    refusal,
                    would_deny,
                    under_grants,
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
                b'B' if self.shared.services.has_subject_columns()
                    && self.binds_subject_values(frame) =>
                {
                    return Step::Statement
                }
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
            b'B' => self.on_subject_bind(frame).await,
            _ => self.on_parse(frame).await,
        }
    }

    /// Whether a Bind's statement encrypts parameters under subjects' keys (then it is handled
    /// by [`Frontend::on_subject_bind`], which may wait for the key table).
    #[inline(never)]
    fn binds_subject_values(&self, frame: &FrameRef<'_>) -> bool {
        let Ok((_, statement)) = messages::bind_names(frame.body()) else {
            return false;
        };
        self.statements
            .get(statement)
            .is_some_and(|s| crate::session::subject_targets::binds_subject_values(s))
    }

    /// Any client message other than Query and Parse.
    pub(super) fn on_message(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
        match frame.tag {
            b'B' => return self.on_bind(frame, &Vec::new()),
            b'd' | b'c' | b'f' => return self.on_copy_data(frame),
            b'E' => return self.on_execute(frame),
            b'D' => self.on_describe(frame)?,
            b'C' => self.on_close(frame)?,
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

/// The plan a shadow role's statement is served with: `served` (made for
/// [`pgcloak_policy::RolePolicy::shadow_serving`]) with every result column the role may not read in
/// plaintext passed through as the server returns it instead of decrypted.
fn shadow_served(served: &Plan, role: &pgcloak_policy::RolePolicy) -> Plan {
    let mut plan = served.clone();
    for st in &mut plan.statements {
        for o in &mut st.outputs {
            if let pgcloak_policy::OutputAction::Decrypt { class, .. } = &o.action {
                if role.read(*class) != pgcloak_policy::Access::Plaintext {
                    o.action = pgcloak_policy::OutputAction::PassThrough;
                }
            }
        }
    }
    plan
}
