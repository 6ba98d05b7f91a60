//! Statements: SELECT, INSERT, UPDATE, DELETE, PREPARE/EXECUTE, DECLARE/FETCH, SET, EXPLAIN, DDL (COPY
//! is in `copy.rs`).

use sqlparser::ast::{
    AssignmentTarget, Expr, FromTable, Insert, ObjectName, OnConflictAction, OnInsert, SelectItem,
    SetExpr, Statement, TableObject, UpdateTableFromKind,
};

use super::expr::Val;
use super::scope::{fold, name_parts, Rel, Scope, TableRes};
use super::{Analyzer, ColId, Fail, Lin, OutCol, SessionEffect, Use, R};
use crate::plan::{CursorUse, ExecuteArg, ExecuteInfo, SiteRole, StatementPlan};

impl Analyzer<'_> {
    /// Analyse one parsed statement into `plan`.
    pub(crate) fn statement(&mut self, st: &Statement, plan: &mut StatementPlan) -> R<()> {
        match st {
            Statement::Query(q) => {
                self.select_into = false;
                let outs = self.query(q, None)?;
                if self.select_into {
                    // SELECT ... INTO new_table: the values go to a table, not to the client.
                    for o in outs {
                        self.store_value(None, Val::from_lin(&o.lin))?;
                    }
                    return Ok(());
                }
                self.client_outputs(outs, plan)
            }
            Statement::Insert(ins) => self.insert(ins, plan),
            Statement::Update {
                table,
                assignments,
                from,
                selection,
                returning,
                ..
            } => {
                let mut sc = Scope::new(None);
                self.add_from_item(table, &mut sc)?;
                let target = sc.rels.first().cloned();
                if let Some(f) = from {
                    let items = match f {
                        UpdateTableFromKind::BeforeSet(v) | UpdateTableFromKind::AfterSet(v) => v,
                    };
                    for twj in items {
                        self.add_from_item(twj, &mut sc)?;
                    }
                }
                let Some(target) = target else {
                    return Err(Fail::Unsupported("UPDATE without a table".into()));
                };
                if let Some((s, t)) = &target.table {
                    self.refuse_write_through_view(s, t)?;
                }
                self.row_subject =
                    self.update_subject(&target, assignments, selection.as_ref(), &sc)?;
                for a in assignments {
                    self.assignment(&a.target, &a.value, &target, &sc)?;
                }
                self.row_subject = None;
                if let Some(w) = selection {
                    self.predicate(w, &sc)?;
                }
                self.returning(returning.as_deref(), &sc, plan)
            }
            Statement::Delete(d) => {
                let mut sc = Scope::new(None);
                let items = match &d.from {
                    FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
                };
                for twj in items {
                    self.add_from_item(twj, &mut sc)?;
                }
                for twj in d.using.iter().flatten() {
                    self.add_from_item(twj, &mut sc)?;
                }
                if let Some(w) = &d.selection {
                    self.predicate(w, &sc)?;
                }
                self.returning(d.returning.as_deref(), &sc, plan)
            }
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => self.copy(source, *to, target, options, legacy_options, plan),
            Statement::Prepare {
                name, statement, ..
            } => {
                self.statement(statement, plan)?;
                plan.prepare = Some(fold(name));
                Ok(())
            }
            Statement::Execute {
                name: Some(name),
                parameters,
                immediate: false,
                using,
                ..
            } if using.is_empty() => {
                let sc = Scope::new(None);
                let mut args = Vec::with_capacity(parameters.len());
                for p in parameters {
                    let v = self.eval(p, &sc)?;
                    args.push(match v {
                        Val::Lit(r, t) => ExecuteArg::Value(r, t),
                        Val::Null => ExecuteArg::Null,
                        Val::Col(c) => {
                            self.use_col(c, Use::Compute)?;
                            ExecuteArg::Expression
                        }
                        _ => ExecuteArg::Expression,
                    });
                }
                let n = name_parts(name)
                    .and_then(|p| p.last().cloned())
                    .unwrap_or_default();
                plan.execute = Some(ExecuteInfo { name: n, args });
                Ok(())
            }
            Statement::Declare { stmts } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        let outs = self.query(q, None)?;
                        self.client_outputs(outs, plan)?;
                        if let Some(n) = d.names.first() {
                            plan.cursor = Some(CursorUse::Declare(fold(n)));
                        }
                    }
                }
                Ok(())
            }
            Statement::Fetch { name, into, .. } => {
                if into.is_some() {
                    return Err(Fail::Unsupported("FETCH INTO".into()));
                }
                plan.cursor = Some(CursorUse::Fetch(fold(name)));
                Ok(())
            }
            Statement::Set(set) => self.set(set),
            Statement::Explain { statement, .. } => {
                self.statement(statement, plan)?;
                // EXPLAIN returns the plan text, not the rows; literals are still encrypted because the
                // plan text shows them.
                plan.outputs.clear();
                plan.max_rows = None;
                plan.classified = false;
                plan.cursor = None;
                plan.prepare = None;
                Ok(())
            }
            Statement::CreateTable(ct) => {
                if let Some(q) = &ct.query {
                    let outs = self.query(q, None)?;
                    for o in outs {
                        self.store_value(None, Val::from_lin(&o.lin))?;
                    }
                }
                Ok(())
            }
            Statement::CreateView { query, .. } => {
                let outs = self.query(query, None)?;
                for o in outs {
                    self.store_value(None, Val::from_lin(&o.lin))?;
                }
                Ok(())
            }
            Statement::CreateFunction(cf) => {
                self.cacheable = false;
                let body = match &cf.function_body {
                    Some(sqlparser::ast::CreateFunctionBody::AsBeforeOptions(e))
                    | Some(sqlparser::ast::CreateFunctionBody::AsAfterOptions(e))
                    | Some(sqlparser::ast::CreateFunctionBody::Return(e))
                    | Some(sqlparser::ast::CreateFunctionBody::AsReturnExpr(e)) => body_text(e),
                    Some(_) => return Err(Fail::Unsupported("this kind of function body".into())),
                    None => String::new(),
                };
                let lower = body.to_lowercase();
                let words: Vec<&str> = lower
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                    .collect();
                if let Some(t) = self
                    .policy
                    .protected_table_names()
                    .iter()
                    .find(|t| words.contains(&t.as_str()))
                {
                    return Err(Fail::Deny(format!(
                        "pgcloak: a function body that uses protected table {t} cannot be analysed; create it directly on the server"
                    )));
                }
                Ok(())
            }
            Statement::Call(f) => {
                let sc = Scope::new(None);
                let v = self.eval(&Expr::Function(f.clone()), &sc)?;
                self.consume(v, Use::Compute)?;
                Ok(())
            }
            // Statements that move no column data through the proxy.
            Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Deallocate { .. }
            | Statement::Close { .. }
            | Statement::Discard { .. }
            | Statement::ShowVariable { .. }
            | Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::NOTIFY { .. }
            | Statement::Comment { .. }
            | Statement::Analyze { .. }
            | Statement::Vacuum(_)
            | Statement::Truncate { .. }
            | Statement::Drop { .. }
            | Statement::DropFunction { .. }
            | Statement::DropProcedure { .. }
            | Statement::DropTrigger(_)
            | Statement::DropExtension { .. }
            | Statement::DropDomain(_)
            | Statement::DropPolicy { .. }
            | Statement::AlterTable { .. }
            | Statement::AlterIndex { .. }
            | Statement::AlterView { .. }
            | Statement::AlterRole { .. }
            | Statement::AlterType(_)
            | Statement::AlterSchema(_)
            | Statement::CreateIndex(_)
            | Statement::CreateSchema { .. }
            | Statement::CreateSequence { .. }
            | Statement::CreateType { .. }
            | Statement::CreateDomain(_)
            | Statement::CreateExtension { .. }
            | Statement::CreateRole { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateTrigger(_)
            | Statement::CreatePolicy { .. }
            | Statement::AlterPolicy { .. }
            | Statement::Grant { .. }
            | Statement::Revoke { .. }
            | Statement::LockTables { .. }
            | Statement::RenameTable(_) => {
                // Still record the tables named, for the audit.
                let _ = sqlparser::ast::visit_relations(st, |r| {
                    if let Some(parts) = name_parts(r) {
                        self.tables.insert(parts.join("."));
                    }
                    std::ops::ControlFlow::<()>::Continue(())
                });
                Ok(())
            }
            other => {
                let mut protected = false;
                let _ = sqlparser::ast::visit_relations(other, |r| {
                    if let Some(parts) = name_parts(r) {
                        let t = parts.last().cloned().unwrap_or_default();
                        if self.policy.protected_table_names().contains(&t) {
                            protected = true;
                        }
                        self.tables.insert(parts.join("."));
                    }
                    std::ops::ControlFlow::<()>::Continue(())
                });
                if protected {
                    self.touched_protected_table = true;
                }
                Err(Fail::Unsupported("this kind of statement".into()))
            }
        }
    }

    fn set(&mut self, set: &sqlparser::ast::Set) -> R<()> {
        use sqlparser::ast::Set;
        match set {
            Set::SetRole { .. } => self.effects.push(SessionEffect::RoleChangeIgnored),
            Set::SingleAssignment {
                variable, values, ..
            } => {
                let var = name_parts(variable).unwrap_or_default().join(".");
                match var.as_str() {
                    "role" | "session_authorization" => {
                        self.effects.push(SessionEffect::RoleChangeIgnored)
                    }
                    "search_path" => self.effects.push(SessionEffect::SearchPathChanged),
                    "standard_conforming_strings" => {
                        self.cacheable = false;
                        let ok = values.len() == 1
                            && match values.first() {
                                Some(Expr::Identifier(id)) => {
                                    matches!(
                                        id.value.to_lowercase().as_str(),
                                        "on" | "true" | "default"
                                    )
                                }
                                Some(Expr::Value(v)) => match &v.value {
                                    sqlparser::ast::Value::Boolean(b) => *b,
                                    sqlparser::ast::Value::SingleQuotedString(s) => {
                                        matches!(s.to_lowercase().as_str(), "on" | "true")
                                    }
                                    _ => false,
                                },
                                _ => false,
                            };
                        if !ok {
                            return Err(Fail::Deny(
                                "pgcloak: standard_conforming_strings must stay on (pgcloak's SQL analysis relies on it)".into(),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Set::MultipleAssignments { .. } | Set::ParenthesizedAssignments { .. } => {
                return Err(Fail::Unsupported("multiple SET assignments".into()));
            }
            _ => {}
        }
        Ok(())
    }

    /// RETURNING: client outputs over the statement's scope.
    fn returning(
        &mut self,
        items: Option<&[SelectItem]>,
        sc: &Scope<'_>,
        plan: &mut StatementPlan,
    ) -> R<()> {
        let Some(items) = items else {
            self.returning_outs = Some(Vec::new());
            return Ok(());
        };
        let mut outs = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let v = self.eval(e, sc)?;
                    outs.push(OutCol {
                        name: expr_label(e),
                        lin: v.to_lin(),
                        unknown_width: false,
                        lit: None,
                    });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let v = self.eval(expr, sc)?;
                    outs.push(OutCol {
                        name: fold(alias),
                        lin: v.to_lin(),
                        unknown_width: false,
                        lit: None,
                    });
                }
                SelectItem::Wildcard(_) => {
                    super::query::check_star_protected(sc.rels.iter())?;
                    for st in &sc.stars {
                        match st {
                            Some(cols) => outs.extend(cols.iter().map(|c| OutCol {
                                name: c.name.clone(),
                                lin: c.lin.clone(),
                                unknown_width: false,
                                lit: None,
                            })),
                            None => outs.push(OutCol {
                                name: "*".into(),
                                lin: Lin::None,
                                unknown_width: true,
                                lit: None,
                            }),
                        }
                    }
                }
                SelectItem::QualifiedWildcard(..) => {
                    return Err(Fail::Unsupported("`t.*` in RETURNING".into()));
                }
            }
        }
        self.returning_outs = Some(outs.clone());
        self.client_outputs(outs, plan)
    }

    /// The target columns (policy ids or None) of a table, for INSERT/COPY without a column list.
    pub(super) fn target_columns(
        &mut self,
        rel: &Rel,
        listed: &[sqlparser::ast::Ident],
    ) -> R<Vec<(String, Option<ColId>)>> {
        let Some((schema, table)) = rel.table.clone() else {
            return Ok(listed.iter().map(|i| (fold(i), None)).collect());
        };
        if !listed.is_empty() {
            return Ok(listed
                .iter()
                .map(|i| {
                    let n = fold(i);
                    let id = self.col_id(&schema, &table, &n);
                    (n, id)
                })
                .collect());
        }
        match &rel.cols {
            Some(cols) => Ok(cols
                .iter()
                .map(|c| {
                    let id = match c.lin {
                        Lin::Direct(id) => Some(id),
                        _ => None,
                    };
                    (c.name.clone(), id)
                })
                .collect()),
            None => {
                if self.policy.has_table(&schema, &table) {
                    Err(Fail::Unsupported(format!(
                        "no column list for {schema}.{table}, which the catalog does not know; list the columns"
                    )))
                } else {
                    Ok(Vec::new())
                }
            }
        }
    }

    fn insert(&mut self, ins: &Insert, plan: &mut StatementPlan) -> R<()> {
        let TableObject::TableName(name) = &ins.table else {
            return Err(Fail::Unsupported("INSERT into a table function".into()));
        };
        let mut rel = self.insert_rel(name)?;
        if let Some(a) = &ins.table_alias {
            rel.alias = fold(a);
        }
        let targets = self.target_columns(&rel, &ins.columns)?;
        for (_, id) in &targets {
            if let Some(c) = id {
                self.write_col(*c)?;
            }
        }
        let target_at = |i: usize| targets.get(i).and_then(|(_, id)| *id);
        // Where each row names its subject, when the table has subject-keyed columns.
        let subject_at = rel
            .table
            .as_ref()
            .and_then(|(s, t)| self.subject_column(s, t))
            .and_then(|sub| targets.iter().position(|(n, _)| *n == sub));
        self.row_subject = None;
        if let Some(src) = &ins.source {
            if let Some(arrays) = unnest_source(src) {
                // `INSERT INTO t (a, b) SELECT * FROM UNNEST($1::int[], $2::text[])` (Django's
                // bulk_create): array i holds the values of target column i, each element encrypted.
                let sc = Scope::new(None);
                self.row_subject = match subject_at.and_then(|k| arrays.get(k)) {
                    Some(e) => {
                        let v = self.eval(e, &sc)?;
                        Self::subject_of(&v, true)
                    }
                    None => None,
                };
                for (i, e) in arrays.iter().enumerate() {
                    let v = self.eval(e, &sc)?;
                    match (target_at(i), v) {
                        (Some(t), Val::Lit(r, token)) if self.encrypted(t) => {
                            self.add_encrypt(r, token, t, true, SiteRole::Stored)?
                        }
                        (t, v) => self.store_value(t, v)?,
                    }
                }
                self.row_subject = None;
                return self.insert_rest(ins, &rel, plan, None);
            }
            match (&*src.body, &src.with) {
                (SetExpr::Values(values), None) => {
                    let sc = Scope::new(None);
                    let mut only = None;
                    for row in &values.rows {
                        self.row_subject = match subject_at.and_then(|k| row.get(k)) {
                            Some(e) => {
                                let v = self.eval(e, &sc)?;
                                Self::subject_of(&v, false)
                            }
                            None => None,
                        };
                        for (i, e) in row.iter().enumerate() {
                            let v = self.eval(e, &sc)?;
                            self.store_value(target_at(i), v)?;
                        }
                        only = if values.rows.len() == 1 {
                            self.row_subject
                        } else {
                            None
                        };
                    }
                    self.row_subject = None;
                    return self.insert_rest(ins, &rel, plan, only);
                }
                _ => {
                    let outs = self.query(src, None)?;
                    for (i, o) in outs.iter().enumerate() {
                        if o.unknown_width {
                            if targets.iter().any(|(_, id)| id.is_some()) {
                                return Err(Fail::Unsupported(
                                    "INSERT ... SELECT * from a table the catalog does not know"
                                        .into(),
                                ));
                            }
                            break;
                        }
                        let v = match o.lit {
                            Some((r, t)) => Val::Lit(r, t),
                            None => Val::from_lin(&o.lin),
                        };
                        self.store_value(target_at(i), v)?;
                    }
                }
            }
        }
        self.insert_rest(ins, &rel, plan, None)
    }

    /// What follows an INSERT's source: ON CONFLICT and RETURNING. `subject`: the subject of the
    /// one row inserted, which its `DO UPDATE SET` writes too.
    fn insert_rest(
        &mut self,
        ins: &Insert,
        rel: &Rel,
        plan: &mut StatementPlan,
        subject: Option<crate::plan::SubjectValue>,
    ) -> R<()> {
        if !ins.assignments.is_empty() || ins.insert_alias.is_some() {
            return Err(Fail::Unsupported("INSERT ... SET".into()));
        }
        let rel = rel.clone();
        let mut sc = Scope::new(None);
        sc.rels.push(rel.clone());
        sc.stars.push(rel.cols.clone());
        match &ins.on {
            None => {}
            Some(OnInsert::OnConflict(oc)) => {
                if let OnConflictAction::DoUpdate(du) = &oc.action {
                    // EXCLUDED.col is the value proposed for col: already encrypted for col.
                    let mut with_excluded = Scope::new(None);
                    with_excluded.rels.push(rel.clone());
                    let mut excluded = rel.clone();
                    excluded.alias = "excluded".into();
                    with_excluded.rels.push(excluded);
                    self.row_subject = subject;
                    for a in &du.assignments {
                        self.assignment(&a.target, &a.value, &rel, &with_excluded)?;
                    }
                    self.row_subject = None;
                    if let Some(w) = &du.selection {
                        self.predicate(w, &with_excluded)?;
                    }
                }
            }
            Some(_) => return Err(Fail::Unsupported("ON DUPLICATE KEY".into())),
        }
        self.returning(ins.returning.as_deref(), &sc, plan)
    }

    /// The relation INSERT or COPY names (never a view that reads a protected table).
    pub(super) fn insert_rel(&mut self, name: &ObjectName) -> R<Rel> {
        match self.resolve_table(name)? {
            TableRes::Base(s, t) => {
                self.refuse_write_through_view(&s, &t)?;
                Ok(self.base_rel(&s, &t, t.clone()))
            }
            TableRes::Unknown(t) => Ok(Rel {
                alias: t,
                table: None,
                cols: None,
                protected: Vec::new(),
            }),
            TableRes::Cte(..) => Err(Fail::Unsupported("INSERT into a CTE name".into())),
        }
    }

    /// Refuses a write into a view that reads a protected table: the server would store the values in
    /// the table behind it without pgcloak seeing which column they reach, so never encrypted.
    fn refuse_write_through_view(&self, schema: &str, table: &str) -> R<()> {
        if self.catalog.is_protected_view(schema, table) {
            return Err(Fail::Deny(format!(
                "pgcloak: view {schema}.{table} reads a protected table; write to the table itself so pgcloak can encrypt the values"
            )));
        }
        Ok(())
    }

    /// `SET target = value` of UPDATE / ON CONFLICT DO UPDATE.
    fn assignment(
        &mut self,
        target: &AssignmentTarget,
        value: &Expr,
        rel: &Rel,
        sc: &Scope<'_>,
    ) -> R<()> {
        let col_of = |this: &Self, name: &ObjectName| -> Option<ColId> {
            let n = name_parts(name).and_then(|p| p.last().cloned())?;
            let (s, t) = rel.table.clone()?;
            this.col_id(&s, &t, &n)
        };
        match target {
            AssignmentTarget::ColumnName(name) => {
                let c = col_of(self, name);
                if let Some(c) = c {
                    self.write_col(c)?;
                }
                let v = self.eval(value, sc)?;
                self.store_value(c, v)
            }
            AssignmentTarget::Tuple(names) => {
                let cols: Vec<Option<ColId>> = names.iter().map(|n| col_of(self, n)).collect();
                for c in cols.iter().flatten() {
                    self.write_col(*c)?;
                }
                match value {
                    Expr::Tuple(vals) => {
                        for (i, e) in vals.iter().enumerate() {
                            let v = self.eval(e, sc)?;
                            self.store_value(cols.get(i).copied().flatten(), v)?;
                        }
                        Ok(())
                    }
                    Expr::Subquery(q) => {
                        let outs = self.query(q, Some(sc))?;
                        for (i, o) in outs.iter().enumerate() {
                            self.store_value(
                                cols.get(i).copied().flatten(),
                                Val::from_lin(&o.lin),
                            )?;
                        }
                        Ok(())
                    }
                    _ => Err(Fail::Unsupported(
                        "tuple assignment from an expression".into(),
                    )),
                }
            }
        }
    }

    /// A value stored by the server into `target` (a protected column, or None for anything else).
    pub(crate) fn store_value(&mut self, target: Option<ColId>, v: Val) -> R<()> {
        let enc_t = target.is_some_and(|t| self.encrypted(t));
        let target_name = target.map(|t| self.col_name(t)).unwrap_or_default();
        match v {
            Val::Lit(r, token) => {
                if let Some(t) = target.filter(|_| enc_t) {
                    self.add_encrypt(r, token, t, false, SiteRole::Stored)?;
                }
                Ok(())
            }
            Val::UnmappedLit => {
                if enc_t {
                    return Err(Fail::Unsupported(
                        "a literal for an encrypted column could not be located".into(),
                    ));
                }
                Ok(())
            }
            Val::Null => Ok(()),
            Val::Col(c) => {
                if Some(c) == target {
                    return self.use_col(c, Use::SameColumn);
                }
                if self.encrypted(c) {
                    if target.is_some() {
                        return Err(Fail::Deny(format!(
                            "pgcloak: values of encrypted column {} cannot be stored in {target_name}: ciphertexts are bound to their column",
                            self.col_name(c)
                        )));
                    }
                    return self.use_col(c, Use::CopyOut);
                }
                self.use_col(c, Use::CopyOut)?;
                if enc_t {
                    return Err(Fail::Deny(format!(
                        "pgcloak: the server cannot store values of {} in encrypted column {target_name}; send them through pgcloak as literals or parameters",
                        self.col_name(c)
                    )));
                }
                Ok(())
            }
            Val::Derived(_) | Val::Plain | Val::Row(_) => {
                if enc_t {
                    return Err(Fail::Deny(format!(
                        "pgcloak: a value for encrypted column {target_name} must be a literal or a parameter (pgcloak cannot encrypt a value the server computes)"
                    )));
                }
                Ok(())
            }
        }
    }
}

fn body_text(e: &Expr) -> String {
    match e {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::SingleQuotedString(s)
            | sqlparser::ast::Value::EscapedStringLiteral(s) => s.clone(),
            sqlparser::ast::Value::DollarQuotedString(d) => d.value.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

fn expr_label(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => fold(id),
        Expr::CompoundIdentifier(ids) => ids.last().map(fold).unwrap_or_else(|| "?column?".into()),
        _ => "?column?".into(),
    }
}

/// The arrays of an INSERT source that is exactly `SELECT * FROM UNNEST(a1, ..., ak)` (an alias
/// allowed, nothing else: no WHERE, join, ordering, ORDINALITY): column i of its rows is the
/// elements of `ai`, in order.
fn unnest_source(q: &sqlparser::ast::Query) -> Option<&[Expr]> {
    use sqlparser::ast::{GroupByExpr, TableFactor};
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(s) = &*q.body else {
        return None;
    };
    let plain = s.selection.is_none()
        && s.having.is_none()
        && s.distinct.is_none()
        && s.into.is_none()
        && matches!(&s.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        && matches!(s.projection.as_slice(), [SelectItem::Wildcard(_)])
        && s.from.len() == 1
        && s.from.first().is_some_and(|f| f.joins.is_empty());
    if !plain {
        return None;
    }
    match &s.from.first()?.relation {
        TableFactor::UNNEST {
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } => Some(array_exprs),
        _ => None,
    }
}
