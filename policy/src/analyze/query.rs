//! Queries: WITH, set operations, SELECT (projection with `*` expansion, WHERE, GROUP BY, HAVING,
//! DISTINCT, ORDER BY, LIMIT). FROM items and joins are in `from.rs`.

use sqlparser::ast::{
    Expr, GroupByExpr, OrderBy, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, SetQuantifier, TableAlias, Value,
};

use super::expr::Val;
use super::scope::{fold, name_parts, Rel, Scope, StarList};
use super::{Analyzer, ColId, Fail, Lin, OutCol, Use, R};

fn unknown_out() -> OutCol {
    OutCol {
        name: "*".into(),
        lin: Lin::None,
        unknown_width: true,
        lit: None,
    }
}

fn star_outs(list: &StarList) -> Vec<OutCol> {
    match list {
        Some(cols) => cols
            .iter()
            .map(|c| OutCol {
                name: c.name.clone(),
                lin: c.lin.clone(),
                unknown_width: false,
                lit: None,
            })
            .collect(),
        None => vec![unknown_out()],
    }
}

/// PostgreSQL's default label of a result column.
fn label(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => fold(id),
        Expr::CompoundIdentifier(ids) => ids.last().map(fold).unwrap_or_else(|| "?column?".into()),
        Expr::Function(f) => name_parts(&f.name)
            .and_then(|p| p.last().cloned())
            .unwrap_or_else(|| "?column?".into()),
        Expr::Nested(inner) => label(inner),
        Expr::Cast { expr, .. } => label(expr),
        _ => "?column?".into(),
    }
}

fn ordinal(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<usize>().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn merge_lin(a: &Lin, b: &Lin) -> Result<Lin, (ColId, ColId)> {
    Ok(match (a, b) {
        (Lin::None, x) | (x, Lin::None) => x.clone(),
        (Lin::Direct(x), Lin::Direct(y)) if x == y => Lin::Direct(*x),
        (Lin::Direct(x), Lin::Direct(y)) => return Err((*x, *y)),
        (Lin::Direct(x), Lin::Expr(v)) | (Lin::Expr(v), Lin::Direct(x)) => {
            if v.is_empty() {
                Lin::Direct(*x)
            } else {
                return Err((*x, v.first().copied().unwrap_or(*x)));
            }
        }
        (Lin::Expr(v), Lin::Expr(w)) => {
            let mut u = v.clone();
            u.extend(w.iter().copied());
            u.sort_unstable();
            u.dedup();
            Lin::Expr(u)
        }
    })
}

impl Analyzer<'_> {
    /// Analyse a query; returns its result columns (their uses are up to the caller).
    pub(crate) fn query(&mut self, q: &Query, outer: Option<&Scope<'_>>) -> R<Vec<OutCol>> {
        self.enter()?;
        let r = self.query_inner(q, outer);
        if q.with.is_some() {
            self.ctes.pop();
        }
        self.leave();
        r
    }

    fn query_inner(&mut self, q: &Query, outer: Option<&Scope<'_>>) -> R<Vec<OutCol>> {
        if let Some(with) = &q.with {
            self.ctes.push(Vec::new());
            for cte in &with.cte_tables {
                let name = fold(&cte.alias.name);
                let outs = match (&*cte.query.body, with.recursive) {
                    // WITH RECURSIVE x AS (<first> UNION [ALL] <recursive term>): the recursive term
                    // sees x with the first term's columns. Each term is analysed once (analysing the
                    // first term twice would be exponential in the nesting of recursive CTEs).
                    (
                        SetExpr::SetOperation {
                            left,
                            right,
                            set_quantifier,
                            ..
                        },
                        true,
                    ) => {
                        if cte.query.with.is_some()
                            || cte.query.order_by.is_some()
                            || cte.query.limit_clause.is_some()
                        {
                            return Err(Fail::Unsupported(
                                "a recursive CTE with its own WITH, ORDER BY or LIMIT".into(),
                            ));
                        }
                        let first = self.set_expr(left, outer, None)?;
                        let first = rename(first, &cte.alias);
                        if let Some(frame) = self.ctes.last_mut() {
                            frame.push((name.clone(), first.clone()));
                        }
                        let rest = self.set_expr(right, outer, None)?;
                        let dedup = !matches!(
                            set_quantifier,
                            SetQuantifier::All | SetQuantifier::AllByName
                        );
                        let all = self.combine(first, rest, dedup)?;
                        if let Some(frame) = self.ctes.last_mut() {
                            frame.pop();
                        }
                        all
                    }
                    _ => self.query(&cte.query, outer)?,
                };
                let outs = rename(outs, &cte.alias);
                if let Some(frame) = self.ctes.last_mut() {
                    frame.push((name, outs));
                }
            }
        }
        let outs = match &*q.body {
            SetExpr::Select(s) => self.select(s, outer, q.order_by.as_ref())?,
            other => {
                let outs = self.set_expr(other, outer, None)?;
                if let Some(ob) = &q.order_by {
                    let sc = Scope::new(outer);
                    self.order_by(ob, &outs, &sc, false)?;
                }
                outs
            }
        };
        let sc = Scope::new(outer);
        if let Some(lc) = &q.limit_clause {
            match lc {
                sqlparser::ast::LimitClause::LimitOffset {
                    limit,
                    offset,
                    limit_by,
                } => {
                    let mut acc = Vec::new();
                    if let Some(l) = limit {
                        let v = self.eval(l, &sc)?;
                        acc.extend(self.consume(v, Use::Compute)?);
                    }
                    if let Some(o) = offset {
                        let v = self.eval(&o.value, &sc)?;
                        acc.extend(self.consume(v, Use::Compute)?);
                    }
                    for x in limit_by {
                        let v = self.eval(x, &sc)?;
                        acc.extend(self.consume(v, Use::Compute)?);
                    }
                }
                sqlparser::ast::LimitClause::OffsetCommaLimit { offset, limit } => {
                    for x in [offset, limit] {
                        let v = self.eval(x, &sc)?;
                        self.consume(v, Use::Compute)?;
                    }
                }
            }
        }
        if let Some(f) = &q.fetch {
            if let Some(x) = &f.quantity {
                let v = self.eval(x, &sc)?;
                self.consume(v, Use::Compute)?;
            }
        }
        Ok(outs)
    }

    /// A set expression (SELECT, VALUES, UNION/INTERSECT/EXCEPT, TABLE, data-modifying statements).
    pub(crate) fn set_expr(
        &mut self,
        se: &SetExpr,
        outer: Option<&Scope<'_>>,
        order_by: Option<&OrderBy>,
    ) -> R<Vec<OutCol>> {
        match se {
            SetExpr::Select(s) => self.select(s, outer, order_by),
            SetExpr::Query(q) => self.query(q, outer),
            SetExpr::SetOperation { .. } => {
                // Walk the left spine iteratively: long UNION chains are common in generated SQL.
                let mut rights = Vec::new();
                let mut cur = se;
                while let SetExpr::SetOperation {
                    left,
                    right,
                    set_quantifier,
                    ..
                } = cur
                {
                    rights.push((right, set_quantifier));
                    cur = left;
                }
                let mut acc = self.set_expr(cur, outer, None)?;
                for (right, quant) in rights.into_iter().rev() {
                    let r = self.set_expr(right, outer, None)?;
                    let dedup = !matches!(quant, SetQuantifier::All | SetQuantifier::AllByName);
                    acc = self.combine(acc, r, dedup)?;
                }
                Ok(acc)
            }
            SetExpr::Values(v) => {
                let sc = Scope::new(outer);
                let mut outs: Vec<OutCol> = Vec::new();
                for row in &v.rows {
                    for (i, e) in row.iter().enumerate() {
                        let val = self.eval(e, &sc)?;
                        let lin = match val {
                            Val::Col(c) => Lin::Direct(c),
                            Val::Derived(cs) | Val::Row(cs) => Lin::Expr(cs),
                            _ => Lin::None,
                        };
                        match outs.get_mut(i) {
                            Some(o) => {
                                o.lin = merge_lin(&o.lin, &lin)
                                    .map_err(|(a, b)| self.mix_error(a, b))?;
                            }
                            None => outs.push(OutCol {
                                name: format!("column{}", i + 1),
                                lin,
                                unknown_width: false,
                                lit: None,
                            }),
                        }
                    }
                }
                Ok(outs)
            }
            SetExpr::Table(t) => {
                let Some(name) = &t.table_name else {
                    return Err(Fail::Unsupported("TABLE without a name".into()));
                };
                let mut parts = Vec::new();
                if let Some(s) = &t.schema_name {
                    parts.push(sqlparser::ast::Ident::new(s.clone()));
                }
                parts.push(sqlparser::ast::Ident::new(name.clone()));
                let on = sqlparser::ast::ObjectName::from(parts);
                let rel = self.table_rel(&on, None)?;
                Ok(star_outs(&rel.cols))
            }
            SetExpr::Insert(st) | SetExpr::Update(st) | SetExpr::Delete(st) => {
                let mut inner =
                    crate::plan::StatementPlan::new(0, crate::lexer::StatementKind::Other);
                self.returning_outs = None;
                self.statement(st, &mut inner)?;
                Ok(self.returning_outs.take().unwrap_or_default())
            }
            SetExpr::Merge(_) => Err(Fail::Unsupported("MERGE".into())),
        }
    }

    fn mix_error(&self, a: ColId, b: ColId) -> Fail {
        Fail::Deny(format!(
            "pgcloak: one result column combines {} with {}; a set operation or VALUES list cannot mix protected columns",
            self.col_name(a),
            self.col_name(b)
        ))
    }

    fn combine(&mut self, left: Vec<OutCol>, right: Vec<OutCol>, dedup: bool) -> R<Vec<OutCol>> {
        if dedup {
            for o in left.iter().chain(right.iter()) {
                if let Lin::Direct(c) = o.lin {
                    self.use_col(c, Use::Group)?;
                }
            }
        }
        if left.iter().chain(right.iter()).any(|o| o.unknown_width) {
            let protected = left
                .iter()
                .chain(right.iter())
                .any(|o| !matches!(o.lin, Lin::None));
            if protected {
                return Err(Fail::Unsupported(
                    "a set operation over a `*` of an unknown table".into(),
                ));
            }
            return Ok(left);
        }
        let mut out = Vec::with_capacity(left.len());
        for (i, l) in left.into_iter().enumerate() {
            let lin = match right.get(i) {
                Some(r) => merge_lin(&l.lin, &r.lin).map_err(|(a, b)| self.mix_error(a, b))?,
                None => l.lin.clone(),
            };
            out.push(OutCol {
                name: l.name,
                lin,
                unknown_width: false,
                lit: None,
            });
        }
        Ok(out)
    }

    /// One SELECT. `order_by` is the enclosing query's ORDER BY (it may use FROM columns).
    pub(crate) fn select(
        &mut self,
        s: &Select,
        outer: Option<&Scope<'_>>,
        order_by: Option<&OrderBy>,
    ) -> R<Vec<OutCol>> {
        let mut sc = Scope::new(outer);
        for twj in &s.from {
            self.add_from_item(twj, &mut sc)?;
        }
        if !s.lateral_views.is_empty() || s.connect_by.is_some() || s.top.is_some() {
            return Err(Fail::Unsupported("a non-PostgreSQL SELECT clause".into()));
        }
        if let Some(w) = &s.selection {
            self.predicate(w, &sc)?;
        }
        for x in [&s.prewhere, &s.qualify].into_iter().flatten() {
            self.predicate(x, &sc)?;
        }
        let mut outs: Vec<OutCol> = Vec::with_capacity(s.projection.len());
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let v = self.eval(e, &sc)?;
                    outs.push(OutCol {
                        name: label(e),
                        lin: v.to_lin(),
                        unknown_width: false,
                        lit: v.site(),
                    });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let v = self.eval(expr, &sc)?;
                    outs.push(OutCol {
                        name: fold(alias),
                        lin: v.to_lin(),
                        unknown_width: false,
                        lit: v.site(),
                    });
                }
                SelectItem::Wildcard(opts) => {
                    if opts.opt_exclude.is_some()
                        || opts.opt_except.is_some()
                        || opts.opt_replace.is_some()
                        || opts.opt_rename.is_some()
                        || opts.opt_ilike.is_some()
                    {
                        return Err(Fail::Unsupported("wildcard options".into()));
                    }
                    if sc.stars.is_empty() {
                        return Err(Fail::Unsupported("`*` without FROM".into()));
                    }
                    check_star_protected(sc.rels.iter())?;
                    for st in &sc.stars {
                        outs.extend(star_outs(st));
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        let q = name_parts(name).unwrap_or_default();
                        match self.rel_named(&q, &sc) {
                            Some(rel) => {
                                check_star_protected(std::iter::once(rel))?;
                                outs.extend(star_outs(&rel.cols));
                            }
                            None => {
                                return Err(Fail::Unsupported(
                                    "`t.*` of an unknown relation".into(),
                                ))
                            }
                        }
                    }
                    SelectItemQualifiedWildcardKind::Expr(e) => {
                        let v = self.eval(e, &sc)?;
                        let cs = self.consume(v, Use::Compute)?;
                        outs.push(OutCol {
                            name: "?column?".into(),
                            lin: Lin::Expr(cs),
                            unknown_width: true,
                            lit: None,
                        });
                    }
                },
            }
        }
        match &s.distinct {
            Some(sqlparser::ast::Distinct::Distinct) => {
                for o in &outs {
                    if let Lin::Direct(c) = o.lin {
                        self.use_col(c, Use::Group)?;
                    }
                }
            }
            Some(sqlparser::ast::Distinct::On(exprs)) => {
                for e in exprs {
                    self.group_item(e, &outs, &sc)?;
                }
            }
            None => {}
        }
        match &s.group_by {
            GroupByExpr::Expressions(exprs, _) => {
                for e in exprs {
                    self.group_item(e, &outs, &sc)?;
                }
            }
            GroupByExpr::All(_) => {
                for o in &outs {
                    if let Lin::Direct(c) = o.lin {
                        self.use_col(c, Use::Group)?;
                    }
                }
            }
        }
        if let Some(h) = &s.having {
            self.predicate(h, &sc)?;
        }
        for nw in &s.named_window {
            if let sqlparser::ast::NamedWindowExpr::WindowSpec(spec) = &nw.1 {
                let mut acc = Vec::new();
                self.window_spec(spec, &sc, &mut acc)?;
            }
        }
        for x in s.cluster_by.iter().chain(s.distribute_by.iter()) {
            let v = self.eval(x, &sc)?;
            self.consume(v, Use::Group)?;
        }
        if let Some(ob) = order_by {
            self.order_by(ob, &outs, &sc, true)?;
        }
        if s.into.is_some() {
            self.select_into = true;
        }
        Ok(outs)
    }

    /// A GROUP BY / DISTINCT ON item: an output ordinal, or an expression.
    fn group_item(&mut self, e: &Expr, outs: &[OutCol], sc: &Scope<'_>) -> R<()> {
        if let Some(n) = ordinal(e) {
            self.cacheable = false;
            if let Some(o) = n.checked_sub(1).and_then(|i| outs.get(i)) {
                if let Lin::Direct(c) = o.lin {
                    self.use_col(c, Use::Group)?;
                }
            }
            return Ok(());
        }
        let v = self.eval(e, sc)?;
        self.consume(v, Use::Group)?;
        Ok(())
    }

    /// ORDER BY: ordinals and output names first, then expressions over the FROM scope.
    pub(crate) fn order_by(
        &mut self,
        ob: &OrderBy,
        outs: &[OutCol],
        sc: &Scope<'_>,
        from_scope: bool,
    ) -> R<()> {
        let exprs = match &ob.kind {
            OrderByKind::Expressions(v) => v,
            OrderByKind::All(_) => {
                for o in outs {
                    if let Lin::Direct(c) = o.lin {
                        self.use_col(c, Use::Order)?;
                    }
                }
                return Ok(());
            }
        };
        for item in exprs {
            let e = &item.expr;
            if let Some(n) = ordinal(e) {
                // The plan depends on which ordinal: never reuse it for another number.
                self.cacheable = false;
                if let Some(o) = n.checked_sub(1).and_then(|i| outs.get(i)) {
                    self.consume(Val::from_lin(&o.lin), Use::Order)?;
                }
                continue;
            }
            if let Expr::Identifier(id) = e {
                let name = fold(id);
                if let Some(o) = outs.iter().find(|o| o.name == name && !o.unknown_width) {
                    self.consume(Val::from_lin(&o.lin), Use::Order)?;
                    continue;
                }
            }
            if from_scope {
                let v = self.eval(e, sc)?;
                self.consume(v, Use::Order)?;
            } else {
                // After a set operation only output columns can be named; be conservative otherwise.
                let v = self.eval(e, sc)?;
                self.consume(v, Use::Order)?;
            }
        }
        Ok(())
    }
}

/// `*` over a protected table whose column list the catalog does not know: the positions of its protected
/// columns in the result cannot be determined, so refuse rather than pass them through.
pub(crate) fn check_star_protected<'r>(rels: impl Iterator<Item = &'r Rel>) -> R<()> {
    for rel in rels {
        if rel.cols.is_none() && !rel.protected.is_empty() {
            let name = rel
                .table
                .as_ref()
                .map(|(s, t)| format!("{s}.{t}"))
                .unwrap_or_else(|| rel.alias.clone());
            return Err(Fail::Unsupported(format!(
                "`*` over protected table {name}, which the catalog does not know"
            )));
        }
    }
    Ok(())
}

/// Apply CTE column aliases (`WITH x(a, b) AS ...`).
fn rename(mut outs: Vec<OutCol>, alias: &TableAlias) -> Vec<OutCol> {
    for (o, c) in outs.iter_mut().zip(alias.columns.iter()) {
        o.name = fold(&c.name);
    }
    outs
}
