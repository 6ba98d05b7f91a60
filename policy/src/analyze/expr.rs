//! Expressions: what each expression is (a protected column, a value the proxy can encrypt,
//! something computed), and the uses of protected columns it implies. Conditions are in `predicate.rs`.

use sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, UnaryOperator,
    Value, WindowType,
};

use super::scope::{name_parts, Resolved, Scope};
use super::{Analyzer, ColId, Fail, Lin, SessionEffect, Use, R};
use crate::plan::{SiteRole, ValueRef};

/// What an expression is, as far as the policy is concerned.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    /// Exactly the value of a protected column (use rules not applied yet).
    Col(ColId),
    /// A literal or parameter the proxy can encrypt, at a token ([`crate::plan::Site::token`]).
    Lit(ValueRef, u32),
    /// A literal whose position could not be matched to the lexer's (cannot be encrypted).
    UnmappedLit,
    Null,
    /// Computed from these protected columns (their uses already checked).
    Derived(Vec<ColId>),
    /// Nothing protected.
    Plain,
    /// A whole-row reference (already checked: the role reads every protected column in plaintext).
    Row(Vec<ColId>),
}

impl Val {
    pub(crate) fn from_lin(lin: &Lin) -> Val {
        match lin {
            Lin::None => Val::Plain,
            Lin::Direct(c) => Val::Col(*c),
            Lin::Expr(cs) => Val::Derived(cs.clone()),
        }
    }

    /// The literal or parameter, and its token.
    pub(crate) fn site(&self) -> Option<(ValueRef, u32)> {
        match self {
            Val::Lit(r, t) => Some((*r, *t)),
            _ => None,
        }
    }

    pub(crate) fn to_lin(&self) -> Lin {
        match self {
            Val::Col(c) => Lin::Direct(*c),
            Val::Derived(cs) | Val::Row(cs) => Lin::Expr(cs.clone()),
            _ => Lin::None,
        }
    }
}

pub(super) fn strip_nested(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// Whether `e` is a literal or parameter with nothing around it but casts (`$1`, `'x'::text`,
/// `($1)::text`, `CAST($1 AS text)`, `DATE '...'`, `-5`, `NULL::text`): a value the proxy may write
/// in another form in its place (`ANY (...)`, several list elements).
pub(super) fn bare_value(e: &Expr) -> bool {
    match e {
        Expr::Value(_) | Expr::TypedString(_) => true,
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => matches!(**expr, Expr::Value(_)),
        Expr::Cast { expr, .. } => bare_value(strip_nested(expr)),
        _ => false,
    }
}

pub(super) fn is_eq_op(op: &BinaryOperator) -> bool {
    matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq)
}

pub(super) fn is_range_op(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Lt
            | BinaryOperator::Gt
            | BinaryOperator::LtEq
            | BinaryOperator::GtEq
            | BinaryOperator::Spaceship
    )
}

pub(super) fn is_pattern_op(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::PGRegexMatch
            | BinaryOperator::PGRegexIMatch
            | BinaryOperator::PGRegexNotMatch
            | BinaryOperator::PGRegexNotIMatch
            | BinaryOperator::PGLikeMatch
            | BinaryOperator::PGILikeMatch
            | BinaryOperator::PGNotLikeMatch
            | BinaryOperator::PGNotILikeMatch
            | BinaryOperator::PGStartsWith
    )
}

pub(super) fn is_bool_op(op: &BinaryOperator) -> bool {
    is_eq_op(op)
        || is_range_op(op)
        || is_pattern_op(op)
        || matches!(op, BinaryOperator::And | BinaryOperator::Or)
}

impl Analyzer<'_> {
    /// Apply a use to a value; returns the protected columns involved.
    pub(crate) fn consume(&mut self, v: Val, u: Use) -> R<Vec<ColId>> {
        match v {
            Val::Col(c) => {
                self.use_col(c, u)?;
                Ok(vec![c])
            }
            Val::Derived(cs) | Val::Row(cs) => Ok(cs),
            _ => Ok(Vec::new()),
        }
    }

    fn compute(&mut self, e: &Expr, sc: &Scope<'_>, acc: &mut Vec<ColId>) -> R<()> {
        let v = self.eval(e, sc)?;
        acc.extend(self.consume(v, Use::Compute)?);
        Ok(())
    }

    fn literal_at(&self, span: &sqlparser::tokenizer::Span) -> Val {
        match self.lits.get(&(span.start.line, span.start.column)) {
            Some(i) => Val::Lit(ValueRef::Literal(*i), 0),
            None => Val::UnmappedLit,
        }
    }

    /// The text of a literal (for the few decisions that depend on it), without quotes, lower-cased.
    pub(crate) fn literal_text(&self, r: ValueRef) -> Option<String> {
        let ValueRef::Literal(i) = r else { return None };
        let range = self.lit_text.get(&i)?;
        let raw = self.text.get(range.clone())?;
        Some(raw.trim_matches(|c| c == '\'' || c == '"').to_lowercase())
    }

    /// Whether `operand` (the operand of unary `op`) is number literal `i` written right after the
    /// sign, with nothing but whitespace between — the form the proxy rewrites as one signed value.
    fn signed_number(&self, operand: &Expr, i: usize, op: &UnaryOperator) -> bool {
        let Expr::Value(v) = operand else {
            return false;
        };
        if !matches!(v.value, sqlparser::ast::Value::Number(..)) {
            return false;
        }
        let sign = if matches!(op, UnaryOperator::Minus) {
            '-'
        } else {
            '+'
        };
        self.lit_text
            .get(&i)
            .and_then(|r| self.text.get(..r.start))
            .is_some_and(|before| {
                let before = before.trim_end_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
                // `--` before the literal ends a comment, it is no sign.
                before.ends_with(sign) && !before.ends_with("--")
            })
    }

    /// Evaluate an expression.
    pub(crate) fn eval(&mut self, e: &Expr, sc: &Scope<'_>) -> R<Val> {
        self.enter()?;
        let r = self.eval_inner(e, sc);
        self.leave();
        r
    }

    fn eval_inner(&mut self, e: &Expr, sc: &Scope<'_>) -> R<Val> {
        match e {
            Expr::Identifier(id) => {
                let r = self.resolve_column(std::slice::from_ref(id), sc)?;
                Ok(match r {
                    Resolved::Col(lin) => Val::from_lin(&lin),
                    Resolved::Row(lins) => self.whole_row(lins)?,
                    Resolved::NotFound => {
                        if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") {
                            Val::Null
                        } else {
                            Val::Plain
                        }
                    }
                })
            }
            Expr::CompoundIdentifier(ids) => {
                let r = self.resolve_column(ids, sc)?;
                Ok(match r {
                    Resolved::Col(lin) => Val::from_lin(&lin),
                    Resolved::Row(lins) => self.whole_row(lins)?,
                    Resolved::NotFound => {
                        // `rel.field` of a composite: look at the relation as a whole row.
                        let first = ids.first().map(|i| vec![i.clone()]).unwrap_or_default();
                        match self.resolve_column(&first, sc)? {
                            Resolved::Row(lins) => {
                                let v = self.whole_row(lins)?;
                                Val::Derived(self.consume(v, Use::Compute)?)
                            }
                            Resolved::Col(lin) => {
                                let v = Val::from_lin(&lin);
                                Val::Derived(self.consume(v, Use::Compute)?)
                            }
                            Resolved::NotFound => Val::Plain,
                        }
                    }
                })
            }
            Expr::CompoundFieldAccess { root, access_chain } => {
                // `(c).ssn`: a column of a whole-row reference.
                if let (
                    Expr::Identifier(rel),
                    [sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field))],
                ) = (strip_nested(root), access_chain.as_slice())
                {
                    let r = self.resolve_column(&[rel.clone(), field.clone()], sc)?;
                    if let Resolved::Col(lin) = r {
                        return Ok(Val::from_lin(&lin));
                    }
                }
                let mut acc = Vec::new();
                self.compute(root, sc, &mut acc)?;
                for a in access_chain {
                    match a {
                        sqlparser::ast::AccessExpr::Dot(x) => {
                            if !matches!(x, Expr::Identifier(_)) {
                                self.compute(x, sc, &mut acc)?;
                            }
                        }
                        sqlparser::ast::AccessExpr::Subscript(s) => {
                            self.subscript(s, sc, &mut acc)?
                        }
                    }
                }
                Ok(Val::Derived(acc))
            }
            Expr::Value(v) => Ok(match &v.value {
                Value::Placeholder(p) => {
                    let n = p.strip_prefix('$').and_then(|n| n.parse::<u32>().ok());
                    let token = self.params.get(&(v.span.start.line, v.span.start.column));
                    match (n, token) {
                        (Some(n), Some(t)) => Val::Lit(ValueRef::Param(n), *t),
                        (None, _) => return Err(Fail::Unsupported(format!("placeholder {p}"))),
                        (Some(_), None) => {
                            return Err(Fail::Unsupported(format!(
                                "parameter {p} could not be located in the statement text"
                            )))
                        }
                    }
                }
                Value::Null => Val::Null,
                Value::Boolean(_) => Val::Plain,
                _ => self.literal_at(&v.span),
            }),
            Expr::TypedString(ts) => Ok(self.literal_at(&ts.value.span)),
            Expr::Nested(inner) => self.eval(inner, sc),
            Expr::Cast { expr, .. } | Expr::Collate { expr, .. } => {
                let v = self.eval(expr, sc)?;
                match v {
                    Val::Lit(..) | Val::Null | Val::UnmappedLit | Val::Plain => Ok(v),
                    other => Ok(Val::Derived(self.consume(other, Use::Compute)?)),
                }
            }
            Expr::UnaryOp { op, expr } => {
                if matches!(op, UnaryOperator::Not) {
                    return Ok(Val::Derived(self.predicate(e, sc)?));
                }
                let v = self.eval(expr, sc)?;
                match (op, &v) {
                    // `-5`: a sign written right before a number literal (whitespace between at most)
                    // is part of the value: the proxy encrypts the signed number and replaces the sign
                    // with the literal.
                    (
                        UnaryOperator::Minus | UnaryOperator::Plus,
                        Val::Lit(ValueRef::Literal(i), _),
                    ) if self.signed_number(expr, *i, op) => Ok(v),
                    // Any other literal under a sign counts as computed (write it as '-5' or a
                    // parameter).
                    (UnaryOperator::Minus | UnaryOperator::Plus, Val::Lit(..)) => Ok(Val::Plain),
                    _ => Ok(Val::Derived(self.consume(v, Use::Compute)?)),
                }
            }
            Expr::BinaryOp { op, .. } if is_bool_op(op) => Ok(Val::Derived(self.predicate(e, sc)?)),
            Expr::BinaryOp { .. } => {
                // Arithmetic/concatenation/JSON chains: walk the left spine iteratively.
                let mut acc = Vec::new();
                let mut cur = e;
                loop {
                    match cur {
                        Expr::BinaryOp { left, op, right } if !is_bool_op(op) => {
                            self.compute(right, sc, &mut acc)?;
                            cur = left;
                        }
                        other => {
                            self.compute(other, sc, &mut acc)?;
                            break;
                        }
                    }
                }
                Ok(Val::Derived(acc))
            }
            Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::IsTrue(_)
            | Expr::IsNotTrue(_)
            | Expr::IsFalse(_)
            | Expr::IsNotFalse(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotUnknown(_)
            | Expr::IsDistinctFrom(..)
            | Expr::IsNotDistinctFrom(..)
            | Expr::InList { .. }
            | Expr::InSubquery { .. }
            | Expr::InUnnest { .. }
            | Expr::Between { .. }
            | Expr::Like { .. }
            | Expr::ILike { .. }
            | Expr::SimilarTo { .. }
            | Expr::RLike { .. }
            | Expr::AnyOp { .. }
            | Expr::AllOp { .. }
            | Expr::Exists { .. } => Ok(Val::Derived(self.predicate(e, sc)?)),
            Expr::Function(f) => self.function(f, sc),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut acc = Vec::new();
                // The operand is evaluated once (evaluating it per WHEN is exponential in nesting).
                let op_val = match operand {
                    Some(op) => Some(self.eval(op, sc)?),
                    None => None,
                };
                for cw in conditions {
                    match &op_val {
                        Some(v) => {
                            let c = self.eval(&cw.condition, sc)?;
                            acc.extend(self.eq_vals(v.clone(), c, false, SiteRole::Other)?);
                        }
                        None => acc.extend(self.predicate(&cw.condition, sc)?),
                    }
                    self.compute(&cw.result, sc, &mut acc)?;
                }
                if let Some(el) = else_result {
                    self.compute(el, sc, &mut acc)?;
                }
                if conditions.is_empty() {
                    if let Some(v) = op_val {
                        acc.extend(self.consume(v, Use::Compute)?);
                    }
                }
                Ok(Val::Derived(acc))
            }
            Expr::Subquery(q) => {
                let outs = self.query(q, Some(sc))?;
                Ok(match outs.as_slice() {
                    [one] if !one.unknown_width => Val::from_lin(&one.lin),
                    many => {
                        let mut acc = Vec::new();
                        for o in many {
                            acc.extend(self.consume(Val::from_lin(&o.lin), Use::Compute)?);
                        }
                        Val::Derived(acc)
                    }
                })
            }
            Expr::Tuple(items) => {
                let mut acc = Vec::new();
                for i in items {
                    self.compute(i, sc, &mut acc)?;
                }
                Ok(Val::Derived(acc))
            }
            Expr::Array(arr) => {
                let mut acc = Vec::new();
                for i in &arr.elem {
                    self.compute(i, sc, &mut acc)?;
                }
                Ok(Val::Derived(acc))
            }
            Expr::Interval(iv) => {
                let v = self.eval(&iv.value, sc)?;
                match v {
                    Val::Lit(..) | Val::UnmappedLit | Val::Null | Val::Plain => Ok(Val::Plain),
                    other => Ok(Val::Derived(self.consume(other, Use::Compute)?)),
                }
            }
            Expr::Extract { expr, .. }
            | Expr::Ceil { expr, .. }
            | Expr::Floor { expr, .. }
            | Expr::IsNormalized { expr, .. }
            | Expr::Convert { expr, .. } => {
                let mut acc = Vec::new();
                self.compute(expr, sc, &mut acc)?;
                Ok(Val::Derived(acc))
            }
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => {
                let mut acc = Vec::new();
                self.compute(timestamp, sc, &mut acc)?;
                self.compute(time_zone, sc, &mut acc)?;
                Ok(Val::Derived(acc))
            }
            Expr::Position { expr, r#in } => {
                let mut acc = Vec::new();
                self.compute(expr, sc, &mut acc)?;
                self.compute(r#in, sc, &mut acc)?;
                Ok(Val::Derived(acc))
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut acc = Vec::new();
                self.compute(expr, sc, &mut acc)?;
                for x in [substring_from, substring_for].into_iter().flatten() {
                    self.compute(x, sc, &mut acc)?;
                }
                Ok(Val::Derived(acc))
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                let mut acc = Vec::new();
                self.compute(expr, sc, &mut acc)?;
                if let Some(w) = trim_what {
                    self.compute(w, sc, &mut acc)?;
                }
                for c in trim_characters.iter().flatten() {
                    self.compute(c, sc, &mut acc)?;
                }
                Ok(Val::Derived(acc))
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                let mut acc = Vec::new();
                self.compute(expr, sc, &mut acc)?;
                self.compute(overlay_what, sc, &mut acc)?;
                self.compute(overlay_from, sc, &mut acc)?;
                if let Some(f) = overlay_for {
                    self.compute(f, sc, &mut acc)?;
                }
                Ok(Val::Derived(acc))
            }
            Expr::JsonAccess { value, path } => {
                let mut acc = Vec::new();
                self.compute(value, sc, &mut acc)?;
                for el in &path.path {
                    if let sqlparser::ast::JsonPathElem::Bracket { key } = el {
                        self.compute(key, sc, &mut acc)?;
                    }
                }
                Ok(Val::Derived(acc))
            }
            Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                let mut acc = Vec::new();
                for set in sets {
                    for x in set {
                        let v = self.eval(x, sc)?;
                        acc.extend(self.consume(v, Use::Group)?);
                    }
                }
                Ok(Val::Derived(acc))
            }
            Expr::QualifiedWildcard(name, _) => {
                let q = name_parts(name).unwrap_or_default();
                match self.rel_named(&q, sc) {
                    Some(rel) => {
                        let lins = rel.protected_cols();
                        self.whole_row(lins)
                    }
                    None => Err(Fail::Unsupported(
                        "qualified wildcard of an unknown relation".into(),
                    )),
                }
            }
            Expr::Wildcard(_) => {
                // `*` inside an expression (e.g. ROW(*)): every relation in scope as whole rows.
                let mut lins = Vec::new();
                for rel in &sc.rels {
                    lins.extend(rel.protected_cols());
                }
                self.whole_row(lins)
            }
            other => Err(Fail::Unsupported(format!("expression `{}`", short(other)))),
        }
    }

    fn subscript(
        &mut self,
        s: &sqlparser::ast::Subscript,
        sc: &Scope<'_>,
        acc: &mut Vec<ColId>,
    ) -> R<()> {
        match s {
            sqlparser::ast::Subscript::Index { index } => self.compute(index, sc, acc),
            sqlparser::ast::Subscript::Slice {
                lower_bound,
                upper_bound,
                stride,
            } => {
                for x in [lower_bound, upper_bound, stride].into_iter().flatten() {
                    self.compute(x, sc, acc)?;
                }
                Ok(())
            }
        }
    }

    /// A whole-row reference: allowed only when the role reads every protected column of the relation in
    /// plaintext (the row goes out as one value that the proxy cannot mask or null inside).
    pub(crate) fn whole_row(&mut self, lins: Vec<Lin>) -> R<Val> {
        let mut cols = Vec::new();
        for lin in lins {
            match lin {
                Lin::Direct(c) => {
                    let cp = self.col(c)?;
                    let access = self.role.read_column(cp);
                    if access != crate::model::Access::Plaintext {
                        let msg = format!(
                            "pgcloak: a whole-row reference would expose column {} to role \"{}\", which reads it as {} (class {}); select the columns by name",
                            cp.qualified_name(),
                            self.role.name,
                            access,
                            cp.class
                        );
                        self.touches.insert((c, crate::plan::TouchAccess::Deny));
                        return Err(Fail::Deny(msg));
                    }
                    self.touches
                        .insert((c, crate::plan::TouchAccess::Plaintext));
                    cols.push(c);
                }
                Lin::Expr(cs) => cols.extend(cs),
                Lin::None => {}
            }
        }
        Ok(Val::Row(cols))
    }

    fn function(&mut self, f: &Function, sc: &Scope<'_>) -> R<Val> {
        let parts = name_parts(&f.name).unwrap_or_default();
        let fname = parts.last().map(String::as_str).unwrap_or("");
        let mut acc = Vec::new();
        let mut arg_vals = Vec::new();
        match &f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => {
                let outs = self.query(q, Some(sc))?;
                for o in outs {
                    acc.extend(self.consume(Val::from_lin(&o.lin), Use::Compute)?);
                }
            }
            FunctionArguments::List(list) => {
                for a in &list.args {
                    let ax = match a {
                        FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg) => arg,
                    };
                    let v = match ax {
                        FunctionArgExpr::Expr(x) => self.eval(x, sc)?,
                        FunctionArgExpr::Wildcard => Val::Plain,
                        FunctionArgExpr::QualifiedWildcard(name) => {
                            let q = name_parts(name).unwrap_or_default();
                            match self.rel_named(&q, sc) {
                                Some(rel) => {
                                    let lins = rel.protected_cols();
                                    self.whole_row(lins)?
                                }
                                None => {
                                    return Err(Fail::Unsupported(
                                        "qualified wildcard of an unknown relation".into(),
                                    ))
                                }
                            }
                        }
                    };
                    arg_vals.push(v);
                }
                for c in &list.clauses {
                    if let sqlparser::ast::FunctionArgumentClause::OrderBy(obs) = c {
                        for ob in obs {
                            let v = self.eval(&ob.expr, sc)?;
                            acc.extend(self.consume(v, Use::Order)?);
                        }
                    }
                }
            }
        }
        if fname == "set_config" {
            self.cacheable = false;
            let setting = match arg_vals.first() {
                Some(Val::Lit(r, _)) => self.literal_text(*r),
                _ => None,
            };
            match setting.as_deref() {
                Some("role" | "session_authorization") => self.effects.push(SessionEffect::RoleChangeIgnored),
                Some("search_path") => self.effects.push(SessionEffect::SearchPathChanged),
                Some("standard_conforming_strings") => {
                    return Err(Fail::Deny(
                        "pgcloak: standard_conforming_strings cannot be changed through pgcloak (its SQL analysis relies on it being on)".into(),
                    ))
                }
                Some(_) => {}
                None => {
                    return Err(Fail::Deny(
                        "pgcloak: set_config() needs the setting name as a literal so pgcloak can check it".into(),
                    ))
                }
            }
        }
        let is_count = fname == "count";
        for v in arg_vals {
            let u = if is_count { Use::Count } else { Use::Compute };
            acc.extend(self.consume(v, u)?);
        }
        if let Some(filter) = &f.filter {
            acc.extend(self.predicate(filter, sc)?);
        }
        for ob in &f.within_group {
            let v = self.eval(&ob.expr, sc)?;
            acc.extend(self.consume(v, Use::Order)?);
        }
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            self.window_spec(spec, sc, &mut acc)?;
        }
        Ok(Val::Derived(acc))
    }

    pub(crate) fn window_spec(
        &mut self,
        spec: &sqlparser::ast::WindowSpec,
        sc: &Scope<'_>,
        acc: &mut Vec<ColId>,
    ) -> R<()> {
        for p in &spec.partition_by {
            let v = self.eval(p, sc)?;
            acc.extend(self.consume(v, Use::Group)?);
        }
        for ob in &spec.order_by {
            let v = self.eval(&ob.expr, sc)?;
            acc.extend(self.consume(v, Use::Order)?);
        }
        Ok(())
    }
}

/// A short, literal-free description of an expression kind for messages.
pub(super) fn short(e: &Expr) -> &'static str {
    match e {
        Expr::Struct { .. } => "STRUCT",
        Expr::Named { .. } => "named expression",
        Expr::Dictionary(_) => "dictionary",
        Expr::Map(_) => "map",
        Expr::MatchAgainst { .. } => "MATCH AGAINST",
        Expr::OuterJoin(_) => "(+) outer join",
        Expr::Prior(_) => "PRIOR",
        Expr::Lambda(_) => "lambda",
        Expr::Prefixed { .. } => "prefixed value",
        _ => "of an unsupported kind",
    }
}
