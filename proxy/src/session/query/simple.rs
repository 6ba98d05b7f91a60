//! The simple query protocol: a Query is analysed statement by statement, refused from the first
//! refused statement on, and its literals for encrypted columns rewritten before it goes upstream.

use super::*;

impl Frontend<'_> {
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
        let (lexed, plan, data) = match self.analyze(sql, &policy, false).await {
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
        let mut subjects = Vec::new();
        if self.shared.services.has_subject_columns() {
            for s in &stmts[..allowed] {
                let resolved = subject_targets::resolve(
                    &self.shared.services,
                    s,
                    subject_targets::Values::Literals,
                    subject_targets::SubjectSources {
                        sql: Some((sql, &lexed)),
                        bind: None,
                    },
                )
                .await;
                match resolved {
                    Ok(t) => subjects.push(t),
                    Err(r) => return Ok(self.refuse_query(started, r, s.kind)),
                }
            }
        }
        let rewritten = if plan.is_some() {
            match apply::rewrite_literals(
                &self.shared.services,
                sql,
                &lexed,
                stmts[..allowed].iter().map(|s| s.as_ref()),
                end,
                &subjects,
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
        let limited = stmts.iter().any(|s| s.row_limited());
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
}
