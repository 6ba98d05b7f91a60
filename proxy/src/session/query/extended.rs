//! The extended query protocol: Parse (analysed, or remembered), Bind (its one decoded view
//! rewritten), Execute (COPY, row limits, the Describe the proxy asks for itself), Describe, Close.

use super::*;

impl Frontend<'_> {
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
        let (lexed, plan, data) = match self.analyze(sql, &policy, true).await {
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
        let subjects = match subject_targets::resolve(
            &self.shared.services,
            &ctx,
            subject_targets::Values::Literals,
            subject_targets::SubjectSources {
                sql: Some((sql, &lexed)),
                bind: None,
            },
        )
        .await
        {
            Ok(s) => s,
            Err(r) => return Ok(self.refuse_extended(Self::refused_ctx(r, ctx.kind))),
        };
        let out = match apply::rewrite_parse(
            &self.shared.services,
            frame.body(),
            &ctx,
            sql,
            &lexed,
            &subjects,
        ) {
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

    /// A Bind whose parameters are encrypted under their subjects' keys: the keys are resolved
    /// first (the key table may have to be read), then the Bind is handled as any other.
    pub(super) async fn on_subject_bind(
        &mut self,
        frame: &FrameRef<'_>,
    ) -> Result<Forward, SessionError> {
        let (_, statement) = messages::bind_names(frame.body()).map_err(SessionError::Client)?;
        let Some(stmt) = self.statements.get(statement).cloned() else {
            return self.on_bind(frame, &Vec::new());
        };
        let bind = messages::Bind::decode(frame.body()).map_err(SessionError::Client)?;
        // A literal subject of a prepared statement is read from its text.
        let sql = stmt.data.as_ref().and_then(|d| d.sql.clone());
        let lexed = sql.as_deref().map(pgcloak_policy::lex);
        let resolved = subject_targets::resolve(
            &self.shared.services,
            &stmt,
            subject_targets::Values::Params,
            subject_targets::SubjectSources {
                sql: sql.as_deref().zip(lexed.as_ref()),
                bind: Some(&bind),
            },
        )
        .await;
        match resolved {
            Ok(subjects) => self.on_bind(frame, &subjects),
            Err(r) => Ok(self.refuse_extended(Self::refused_ctx(r, stmt.kind))),
        }
    }

    pub(super) fn on_bind(
        &mut self,
        frame: &FrameRef<'_>,
        subjects: &subject_targets::SubjectTargets,
    ) -> Result<Forward, SessionError> {
        let (portal, statement) =
            messages::bind_names(frame.body()).map_err(SessionError::Client)?;
        let Some(stmt) = self.statements.get(statement).cloned() else {
            // Prepared before this session knew it (or not at all): the server decides.
            self.portals.remove(portal);
            self.pending.push_back(Pending::Bind);
            return Ok(Forward::Original);
        };
        let stmt = match self.regranted(&stmt) {
            Ok(None) => stmt,
            Ok(Some(s)) => {
                // Planned again: a refusal now (the grant that allowed it ended) is raised here.
                self.statements.insert(statement, s.clone());
                if s.refusal.is_some() {
                    return Ok(self.refuse_extended(s));
                }
                s
            }
            Err(r) => return Ok(self.refuse_extended(Self::refused_ctx(r, stmt.kind))),
        };
        if let Some(r) = self.budget_spent(&stmt) {
            return Ok(self.refuse_extended(Self::refused_ctx(r, stmt.kind)));
        }
        // Result formats matter only for rows the proxy rewrites: only an analysed statement's Bind
        // is decoded whole.
        if stmt.data.is_some() && !self.encoding.is_utf8() {
            return Ok(self.refuse_extended(Self::refused_ctx(encoding::refusal(), stmt.kind)));
        }
        // The Bind of an analysed statement is decoded once, for its result formats (rows the proxy
        // rewrites) and for the parameters it encrypts; any other Bind is forwarded as it arrived.
        let (out, result_formats) = match &stmt.data {
            None => (Forward::Original, None),
            Some(_) => {
                let bind = messages::Bind::decode(frame.body()).map_err(SessionError::Client)?;
                let out = match apply::rewrite_bind(&self.shared.services, &bind, &stmt, subjects) {
                    Ok(None) => Forward::Original,
                    Ok(Some(b)) => Forward::Replaced(b),
                    Err(r) => return Ok(self.refuse_extended(Self::refused_ctx(r, stmt.kind))),
                };
                (out, Some(bind.result_formats()))
            }
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

    /// Execute: the portal's statement decides whether a COPY FROM may start, whether rows are
    /// limited (`max_rows` holds the client's next message) and whether the proxy must ask for the
    /// rows' description first.
    pub(super) fn on_execute(&mut self, frame: &FrameRef<'_>) -> Result<Forward, SessionError> {
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
        let limited = stmt.as_ref().is_some_and(|s| s.row_limited());
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
        Ok(Forward::Original)
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

    /// Describe: only an analysed statement's or portal's descriptions are rewritten.
    pub(super) fn on_describe(&mut self, frame: &FrameRef<'_>) -> Result<(), SessionError> {
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
        Ok(())
    }

    /// Close: forgets the statement or portal.
    pub(super) fn on_close(&mut self, frame: &FrameRef<'_>) -> Result<(), SessionError> {
        let (kind, name) = messages::target(frame.body(), "Close").map_err(SessionError::Client)?;
        if kind == b'S' {
            self.statements.remove(name);
        } else {
            self.portals.remove(name);
        }
        self.pending.push_back(Pending::Close);
        Ok(())
    }
}
