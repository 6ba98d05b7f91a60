//! COPY FROM STDIN: the rewriter a COPY statement needs, and the client's COPY data through it.

use super::*;

impl Frontend<'_> {
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
        if let (Some(d), Some(table)) = (stmt.data.as_deref(), &copy.table) {
            let (schema, name) = table.split_once('.').unwrap_or(("public", table));
            let keyed = copy.columns.iter().find(|c| {
                d.policy
                    .column(schema, name, &c.name)
                    .is_some_and(|p| p.key == pgcloak_policy::KeyScope::Subject)
            });
            if let Some(c) = keyed {
                return Err(Refusal {
                    sqlstate: "0A000",
                    message: format!(
                        "pgcloak: COPY FROM into subject-keyed column {table}.{} is not supported yet; insert the rows with INSERT ... VALUES",
                        c.name
                    ),
                });
            }
        }
        let data = stmt.data.clone();
        let storage_of = move |c: &str| data.as_ref().and_then(|d| d.storage(c));
        CopyInRewriter::new(copy, self.shared.services.keyring(), &storage_of)
            .map(|r| Some(Some(r)))
            .map_err(apply::refusal)
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
}
