//! Whose key encrypts a value of a subject-keyed column (`key = "subject"`): the statement must
//! say which subject (the person the row belongs to, named by its table's `[[table]] subject`)
//! each such value belongs to, as a literal or parameter the proxy can read.
//!
//! Determined: the same row's subject column in `INSERT ... VALUES`; the subject array element by
//! element in `INSERT ... SELECT * FROM UNNEST(...)`; `subject = v` in the top-level `AND`
//! conjunction of an `UPDATE`'s `WHERE` (which may not `SET` the subject column); the one inserted row's subject for
//! `ON CONFLICT DO UPDATE`; `subject = v` in the top-level conjunction of the `WHERE` a
//! comparison stands in (equality on a deterministic subject-keyed column holds within one
//! subject). Anything else is refused with `42501` naming the subject column to add.

use sqlparser::ast::{BinaryOperator, Expr};

use super::expr::Val;
use super::scope::{fold, Scope};
use super::{Analyzer, ColId, Fail, R};
use crate::model::KeyScope;
use crate::plan::{SubjectValue, ValueRef};

impl Analyzer<'_> {
    /// Whether column `c` is encrypted with each subject's key.
    pub(crate) fn subject_keyed(&self, c: ColId) -> bool {
        self.col(c)
            .is_ok_and(|cp| cp.key == KeyScope::Subject && cp.encrypt.is_encrypted())
    }

    /// The subject column of `schema.table`, when the table names one and has a subject-keyed
    /// column (only then does any statement on it need to give the subject).
    pub(crate) fn subject_column(&self, schema: &str, table: &str) -> Option<String> {
        let tp = self.policy.table_policy(schema, table)?;
        self.policy
            .columns()
            .iter()
            .any(|c| {
                c.schema == schema
                    && c.table == table
                    && c.key == KeyScope::Subject
                    && c.encrypt.is_encrypted()
            })
            .then(|| tp.subject.clone())
    }

    /// The subject a value evaluated as `v` names, when it is a literal or a parameter.
    pub(crate) fn subject_of(v: &Val, elements: bool) -> Option<SubjectValue> {
        match v {
            Val::Lit(r, _) if elements => Some(SubjectValue::Elements(*r)),
            Val::Lit(r, _) => Some(SubjectValue::Value(*r)),
            _ => None,
        }
    }

    /// A value stored into subject-keyed column `c`: it belongs to the subject of the row being
    /// written ([`Analyzer::row_subject`]); one value cannot belong to two.
    pub(crate) fn record_subject(&mut self, target: ValueRef, c: ColId) -> R<()> {
        if !self.subject_keyed(c) {
            return Ok(());
        }
        let Some(s) = self.row_subject else {
            // Undetermined: refused by attach_subjects, naming the column.
            return Ok(());
        };
        match self.subjects.get(&target) {
            Some(prev) if *prev != s => Err(Fail::Deny(format!(
                "pgcloak: one value is written to {} for two subjects (it is encrypted once, with one subject's key); pass it once per row",
                self.col_name(c)
            ))),
            _ => {
                self.subjects.insert(target, s);
                Ok(())
            }
        }
    }

    /// The subject of the rows an UPDATE of `target` writes: `subject = v` in the top-level
    /// conjunction of its WHERE (`SET subject = ...` is refused: it would move the row's values
    /// to a subject whose keys do not encrypt them).
    pub(crate) fn update_subject(
        &mut self,
        target: &super::scope::Rel,
        assignments: &[sqlparser::ast::Assignment],
        selection: Option<&Expr>,
        sc: &Scope<'_>,
    ) -> R<Option<SubjectValue>> {
        let Some((schema, table)) = target.table.clone() else {
            return Ok(None);
        };
        let Some(subject) = self.subject_column(&schema, &table) else {
            return Ok(None);
        };
        for a in assignments {
            if let sqlparser::ast::AssignmentTarget::ColumnName(n) = &a.target {
                let named = super::scope::name_parts(n)
                    .and_then(|p| p.last().cloned())
                    .is_some_and(|c| c == subject);
                if named {
                    return Err(Fail::Deny(format!(
                        "pgcloak: UPDATE ... SET {subject} would give the row another subject while its values in subject-keyed columns stay encrypted with the first one's keys (so erasing the new subject would not erase them); delete the row and insert it again"
                    )));
                }
            }
        }
        match selection {
            Some(w) => self.subject_in_conjuncts(w, sc, &schema, &table, &subject),
            None => Ok(None),
        }
    }

    /// `subject = v` (either way round) among the top-level `AND` conjuncts of `e`, for the
    /// subject column `subject` of `schema.table` (unqualified, or qualified by a name in `sc`
    /// for that table).
    pub(crate) fn subject_in_conjuncts(
        &mut self,
        e: &Expr,
        sc: &Scope<'_>,
        schema: &str,
        table: &str,
        subject: &str,
    ) -> R<Option<SubjectValue>> {
        let mut stack = vec![e];
        while let Some(x) = stack.pop() {
            match x {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::And,
                    right,
                } => {
                    stack.push(right);
                    stack.push(left);
                }
                Expr::Nested(inner) => stack.push(inner),
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } => {
                    for (col, val) in [(left, right), (right, left)] {
                        if names_subject(col, sc, schema, table, subject) {
                            let v = self.eval(val, sc)?;
                            if let Some(s) = Self::subject_of(&v, false) {
                                return Ok(Some(s));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// After a `WHERE` (or `ON`) condition: values of subject-keyed columns it compared get the
    /// subject its conjunction names for their table.
    pub(crate) fn subjects_of_condition(&mut self, e: &Expr, sc: &Scope<'_>, from: usize) -> R<()> {
        let pending: Vec<(ValueRef, ColId)> = self
            .encryptions
            .get(from..)
            .unwrap_or(&[])
            .iter()
            .filter(|e| !self.subjects.contains_key(&e.target))
            .filter_map(|e| self.enc_targets.get(&e.target).map(|c| (e.target, *c)))
            .filter(|(_, c)| self.subject_keyed(*c))
            .collect();
        for (target, c) in pending {
            let cp = self.col(c)?;
            let (schema, table) = (cp.schema.clone(), cp.table.clone());
            let Some(subject) = self.subject_column(&schema, &table) else {
                continue;
            };
            if let Some(s) = self.subject_in_conjuncts(e, sc, &schema, &table, &subject)? {
                self.subjects.insert(target, s);
            }
        }
        Ok(())
    }

    /// Puts each subject-keyed encryption's subject into the plan, refusing the statement when
    /// one is not determined.
    pub(crate) fn attach_subjects(&mut self) -> R<()> {
        for i in 0..self.encryptions.len() {
            let Some(e) = self.encryptions.get(i) else {
                continue;
            };
            let target = e.target;
            let Some(c) = self.enc_targets.get(&target).copied() else {
                continue;
            };
            if !self.subject_keyed(c) {
                continue;
            }
            let subject = self.subjects.get(&target).copied();
            if subject.is_none() {
                let cp = self.col(c)?;
                let name = cp.qualified_name();
                let by = self
                    .subject_column(&cp.schema, &cp.table)
                    .map(|s| format!("{}.{}.{s}", cp.schema, cp.table))
                    .unwrap_or_else(|| "its table's subject column".into());
                return Err(Fail::Deny(format!(
                    "pgcloak: column {name} is encrypted with each subject's key, and the statement does not say whose value it is; name the subject column {by} with a literal or parameter (in the same INSERT row, or as {by} = $n in the SET or WHERE)"
                )));
            }
            if let Some(e) = self.encryptions.get_mut(i) {
                e.subject = subject;
            }
        }
        Ok(())
    }
}

/// Whether `e` names the subject column of `schema.table`.
fn names_subject(e: &Expr, sc: &Scope<'_>, schema: &str, table: &str, subject: &str) -> bool {
    let of_table = |alias: &str| {
        sc.rels.iter().any(|r| {
            r.alias == alias
                && r.table
                    .as_ref()
                    .is_some_and(|(s, t)| s == schema && t == table)
        })
    };
    match e {
        Expr::Identifier(id) => {
            fold(id) == subject
                && sc.rels.iter().any(|r| {
                    r.table
                        .as_ref()
                        .is_some_and(|(s, t)| s == schema && t == table)
                })
        }
        Expr::CompoundIdentifier(ids) => match ids.as_slice() {
            [q, c] => fold(c) == subject && of_table(&fold(q)),
            [s, t, c] => fold(c) == subject && fold(s) == schema && fold(t) == table,
            _ => false,
        },
        Expr::Nested(inner) => names_subject(inner, sc, schema, table, subject),
        _ => false,
    }
}
