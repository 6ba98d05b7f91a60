//! COPY: which table and columns it moves, in which direction and format, and whether the proxy
//! can rewrite its data stream (text or CSV, UTF8, no PROGRAM or file endpoints).

use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget};

use super::scope::fold;
use super::{Analyzer, ColId, Fail, Lin, OutCol, R};
use crate::plan::{
    ColumnKey, CopyColumn, CopyDirection, CopyEndpoint, CopyFormat, CopyInfo, OutputAction,
    StatementPlan,
};

impl Analyzer<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy(
        &mut self,
        source: &CopySource,
        to: bool,
        target: &CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
        plan: &mut StatementPlan,
    ) -> R<()> {
        // COPY options carry literals (delimiter, null string): the plan depends on them.
        self.cacheable = false;
        let mut info = CopyInfo {
            subject: None,
            direction: if to {
                CopyDirection::To
            } else {
                CopyDirection::From
            },
            endpoint: match target {
                CopyTarget::Stdin => CopyEndpoint::Stdin,
                CopyTarget::Stdout => CopyEndpoint::Stdout,
                CopyTarget::File { .. } | CopyTarget::Program { .. } => CopyEndpoint::ServerSide,
            },
            table: None,
            columns: Vec::new(),
            format: CopyFormat::Text,
            delimiter: None,
            null: None,
            header: false,
            quote: None,
            escape: None,
        };
        let (mut force_null, mut force_not_null): (Vec<String>, Vec<String>) = Default::default();
        // COPY's ENCODING names the data's encoding; pgcloak reads and writes protected values as
        // UTF-8, so with another one they would be encrypted (or shown) as the wrong characters.
        let mut foreign_encoding: Option<&str> = None;
        for o in options {
            match o {
                CopyOption::Format(f) => {
                    info.format = match fold(f).as_str() {
                        "csv" => CopyFormat::Csv,
                        "binary" => CopyFormat::Binary,
                        "text" => CopyFormat::Text,
                        _ => return Err(Fail::Unsupported("COPY format".into())),
                    }
                }
                CopyOption::Delimiter(c) => info.delimiter = Some(*c),
                CopyOption::Null(s) => info.null = Some(s.clone()),
                CopyOption::Header(h) => info.header = *h,
                CopyOption::Quote(c) => info.quote = Some(*c),
                CopyOption::Escape(c) => info.escape = Some(*c),
                CopyOption::ForceNull(cols) => force_null.extend(cols.iter().map(fold)),
                CopyOption::ForceNotNull(cols) => force_not_null.extend(cols.iter().map(fold)),
                CopyOption::Encoding(e) if !is_utf8_name(e) => foreign_encoding = Some(e),
                _ => {}
            }
        }
        let encoding_refusal = |column: &str, enc: &str| {
            Fail::Deny(format!(
                "pgcloak: COPY with ENCODING '{enc}' cannot carry encrypted column {column}: pgcloak reads and writes protected values as UTF-8; leave out ENCODING or use ENCODING 'UTF8'"
            ))
        };
        for o in legacy {
            match o {
                CopyLegacyOption::Binary => info.format = CopyFormat::Binary,
                CopyLegacyOption::Delimiter(c) => info.delimiter = Some(*c),
                CopyLegacyOption::Null(s) => info.null = Some(s.clone()),
                CopyLegacyOption::Header => info.header = true,
                CopyLegacyOption::Csv(opts) => {
                    info.format = CopyFormat::Csv;
                    for co in opts {
                        match co {
                            CopyLegacyCsvOption::Header => info.header = true,
                            CopyLegacyCsvOption::Quote(c) => info.quote = Some(*c),
                            CopyLegacyCsvOption::Escape(c) => info.escape = Some(*c),
                            CopyLegacyCsvOption::ForceNotNull(cols) => {
                                force_not_null.extend(cols.iter().map(fold))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let outs: Vec<OutCol> = match source {
            CopySource::Table {
                table_name,
                columns,
            } => {
                let rel = self.insert_rel(table_name)?;
                if let Some((s, t)) = &rel.table {
                    info.table = Some(format!("{s}.{t}"));
                }
                let targets = self.target_columns(&rel, columns)?;
                if !to {
                    for (name, id) in &targets {
                        let mut enc = None;
                        if let Some(c) = id {
                            self.write_col(*c)?;
                            let cp = self.col(*c)?;
                            if cp.encrypt.is_encrypted() {
                                if info.endpoint == CopyEndpoint::ServerSide {
                                    return Err(Fail::Deny(format!(
                                        "pgcloak: COPY FROM a server file or program would store plaintext in encrypted column {}; use COPY FROM STDIN",
                                        cp.qualified_name()
                                    )));
                                }
                                if let Some(e) = foreign_encoding {
                                    return Err(encoding_refusal(&cp.qualified_name(), e));
                                }
                                enc = Some(ColumnKey {
                                    column: cp.qualified_name(),
                                    mode: cp.encrypt,
                                    logical_type: cp.logical_type,
                                    class: cp.class,
                                });
                            }
                        }
                        info.columns.push(CopyColumn {
                            force_null: force_null.contains(name),
                            force_not_null: force_not_null.contains(name),
                            name: name.clone(),
                            encrypt: enc,
                        });
                    }
                    if let Some((schema, table)) = &rel.table {
                        if let Some(subject) = self.subject_column(schema, table) {
                            info.subject = targets.iter().position(|(n, _)| *n == subject);
                            let keyed = targets
                                .iter()
                                .filter_map(|(_, id)| *id)
                                .find(|c| self.subject_keyed(*c));
                            if let (Some(c), None) = (keyed, info.subject) {
                                return Err(Fail::Deny(format!(
                                    "pgcloak: column {} is encrypted with each subject's key, and the COPY does not say whose each row is; list the subject column {schema}.{table}.{subject} among the COPY columns",
                                    self.col_name(c)
                                )));
                            }
                        }
                    }
                    plan.copy = Some(info);
                    return Ok(());
                }
                targets
                    .into_iter()
                    .map(|(name, id)| OutCol {
                        name,
                        lin: id.map(Lin::Direct).unwrap_or(Lin::None),
                        unknown_width: false,
                        lit: None,
                    })
                    .collect()
            }
            CopySource::Query(q) => self.query(q, None)?,
        };
        // COPY ... TO: like a SELECT, plus copy_out and the endpoint.
        for o in &outs {
            let cols: Vec<ColId> = match &o.lin {
                Lin::Direct(c) => vec![*c],
                Lin::Expr(cs) => cs.clone(),
                Lin::None => Vec::new(),
            };
            for c in cols {
                let cp = self.col(c)?;
                if !self.role.copy_out && cp.class.is_classified() {
                    self.touches.insert((c, crate::plan::TouchAccess::Deny));
                    return Err(Fail::Deny(format!(
                        "pgcloak: role \"{}\" may not COPY out classified column {} (copy_out = false); use SELECT",
                        self.role.name,
                        cp.qualified_name()
                    )));
                }
                if info.endpoint == CopyEndpoint::ServerSide {
                    self.touches.insert((c, crate::plan::TouchAccess::Deny));
                    return Err(Fail::Deny(format!(
                        "pgcloak: COPY TO a server file or program would bypass pgcloak for column {}; use COPY TO STDOUT",
                        cp.qualified_name()
                    )));
                }
            }
        }
        info.columns = outs
            .iter()
            .map(|o| CopyColumn {
                name: o.name.clone(),
                encrypt: None,
                force_null: false,
                force_not_null: false,
            })
            .collect();
        self.client_outputs(outs, plan)?;
        if info.format == CopyFormat::Binary
            && plan
                .outputs
                .iter()
                .any(|o| o.action != OutputAction::PassThrough)
        {
            return Err(Fail::Deny(
                "pgcloak: binary COPY TO of protected columns is not supported; use FORMAT csv or text".into(),
            ));
        }
        if let Some(e) = foreign_encoding {
            if let Some(o) = plan
                .outputs
                .iter()
                .find(|o| o.action != OutputAction::PassThrough)
            {
                return Err(encoding_refusal(&o.name, e));
            }
        }
        plan.copy = Some(info);
        Ok(())
    }
}

/// Whether `name` is PostgreSQL's UTF8 encoding under one of the spellings it accepts (case and
/// punctuation are ignored: `UTF8`, `utf-8`, `Unicode`).
fn is_utf8_name(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    n == "utf8" || n == "unicode"
}
