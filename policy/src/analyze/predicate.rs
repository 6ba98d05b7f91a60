//! Conditions (WHERE, ON, HAVING, FILTER, CASE WHEN): which protected columns a predicate uses and
//! how (equality the proxy can compare on ciphertext, ranges, patterns, IN lists), and the rewrite
//! sites of the values compared with an encrypted column.

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator};

use super::expr::{bare_value, is_eq_op, is_pattern_op, is_range_op, strip_nested, Val};
use super::scope::Scope;
use super::{Analyzer, ColId, Fail, Use, R};
use crate::plan::{InList, ListElement, SiteRole};

impl Analyzer<'_> {
    /// A boolean condition (WHERE, ON, HAVING, FILTER, CASE WHEN). Returns the protected columns used.
    pub(crate) fn predicate(&mut self, e: &Expr, sc: &Scope<'_>) -> R<Vec<ColId>> {
        let from = self.encryptions.len();
        let cols = self.predicate_walk(e, sc)?;
        // Comparisons with subject-keyed columns use the subject this condition names.
        self.subjects_of_condition(e, sc, from)?;
        Ok(cols)
    }

    fn predicate_walk(&mut self, e: &Expr, sc: &Scope<'_>) -> R<Vec<ColId>> {
        self.enter()?;
        let mut acc = Vec::new();
        // AND/OR/NOT chains are walked with a stack: ORMs emit long ones.
        let mut stack = vec![e];
        let mut result = Ok(());
        while let Some(x) = stack.pop() {
            match x {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::And | BinaryOperator::Or,
                    right,
                } => {
                    stack.push(right);
                    stack.push(left);
                }
                Expr::Nested(inner) => stack.push(inner),
                Expr::UnaryOp {
                    op: UnaryOperator::Not,
                    expr,
                } => stack.push(expr),
                atom => match self.atom(atom, sc) {
                    Ok(cs) => acc.extend(cs),
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                },
            }
        }
        self.leave();
        result.map(|()| acc)
    }

    fn atom(&mut self, e: &Expr, sc: &Scope<'_>) -> R<Vec<ColId>> {
        match e {
            Expr::BinaryOp { left, op, right } if is_eq_op(op) => {
                let negated = matches!(op, BinaryOperator::NotEq);
                self.compare_eq(left, right, sc, Some(negated))
            }
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                self.compare_eq(a, b, sc, None)
            }
            Expr::BinaryOp { left, op, right } if is_range_op(op) => {
                let a = self.eval(left, sc)?;
                let b = self.eval(right, sc)?;
                let mut cs = self.consume(a, Use::Range)?;
                cs.extend(self.consume(b, Use::Range)?);
                Ok(cs)
            }
            Expr::BinaryOp { left, op, right } if is_pattern_op(op) => {
                let a = self.eval(left, sc)?;
                let b = self.eval(right, sc)?;
                let mut cs = self.consume(a, Use::Pattern)?;
                cs.extend(self.consume(b, Use::Pattern)?);
                Ok(cs)
            }
            Expr::IsNull(x) | Expr::IsNotNull(x) => {
                let v = self.eval(x, sc)?;
                self.consume(v, Use::IsNull)
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let a = self.eval(expr, sc)?;
                let mut cs = Vec::new();
                if list.is_empty() {
                    cs.extend(self.consume(a.clone(), Use::Eq)?);
                }
                // An encrypted column's list is recorded (reserved first: elements may hold lists of
                // their own) so the proxy can compare with every key version.
                let listed = match a {
                    Val::Col(c) if self.encrypted(c) && !list.is_empty() => {
                        self.in_lists.push(InList {
                            negated: *negated,
                            elements: Vec::new(),
                        });
                        u32::try_from(self.in_lists.len() - 1).ok()
                    }
                    _ => None,
                };
                let mut elements = Vec::with_capacity(list.len());
                for item in list {
                    let b = self.eval(item, sc)?;
                    let element = match &b {
                        Val::Lit(value, token) if bare_value(item) => ListElement::Value {
                            value: *value,
                            token: *token,
                        },
                        Val::Null if bare_value(item) => ListElement::Null,
                        _ => ListElement::Other,
                    };
                    let role = match (listed, element) {
                        (Some(list), ListElement::Value { .. }) => SiteRole::Listed { list },
                        _ => SiteRole::Other,
                    };
                    elements.push(element);
                    cs.extend(self.eq_vals(a.clone(), b, false, role)?);
                }
                if let Some(l) = listed.and_then(|l| self.in_lists.get_mut(l as usize)) {
                    l.elements = elements;
                }
                Ok(cs)
            }
            Expr::InSubquery { expr, subquery, .. } => {
                let a = self.eval(expr, sc)?;
                let outs = self.query(subquery, Some(sc))?;
                let b = match outs.as_slice() {
                    [one] if !one.unknown_width => Val::from_lin(&one.lin),
                    _ => Val::Plain,
                };
                self.eq_vals(a, b, false, SiteRole::Other)
            }
            Expr::InUnnest {
                expr, array_expr, ..
            } => {
                let a = self.eval(expr, sc)?;
                let b = self.eval(array_expr, sc)?;
                self.eq_vals(a, b, true, SiteRole::Other)
            }
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            }
            | Expr::AllOp {
                left,
                compare_op,
                right,
            } => {
                let a = self.eval(left, sc)?;
                let r = strip_nested(right);
                if is_eq_op(compare_op) {
                    match r {
                        Expr::Array(arr) => {
                            let mut cs = Vec::new();
                            for item in &arr.elem {
                                let b = self.eval(item, sc)?;
                                cs.extend(self.eq_vals(a.clone(), b, false, SiteRole::Other)?);
                            }
                            Ok(cs)
                        }
                        Expr::Subquery(q) => {
                            let outs = self.query(q, Some(sc))?;
                            let b = match outs.as_slice() {
                                [one] if !one.unknown_width => Val::from_lin(&one.lin),
                                _ => Val::Plain,
                            };
                            self.eq_vals(a, b, false, SiteRole::Other)
                        }
                        other => {
                            let b = self.eval(other, sc)?;
                            self.eq_vals(a, b, true, SiteRole::Other)
                        }
                    }
                } else {
                    let b = self.eval(r, sc)?;
                    let u = if is_range_op(compare_op) {
                        Use::Range
                    } else if is_pattern_op(compare_op) {
                        Use::Pattern
                    } else {
                        Use::Compute
                    };
                    let mut cs = self.consume(a, u)?;
                    cs.extend(self.consume(b, u)?);
                    Ok(cs)
                }
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                let mut cs = Vec::new();
                for x in [expr, low, high] {
                    let v = self.eval(x, sc)?;
                    cs.extend(self.consume(v, Use::Range)?);
                }
                Ok(cs)
            }
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::SimilarTo { expr, pattern, .. }
            | Expr::RLike { expr, pattern, .. } => {
                let a = self.eval(expr, sc)?;
                let b = self.eval(pattern, sc)?;
                let mut cs = self.consume(a, Use::Pattern)?;
                cs.extend(self.consume(b, Use::Pattern)?);
                Ok(cs)
            }
            Expr::Exists { subquery, .. } => {
                self.query(subquery, Some(sc))?;
                Ok(Vec::new())
            }
            other => {
                let v = self.eval(other, sc)?;
                self.consume(v, Use::Compute)
            }
        }
    }

    /// `a = b` (`negated`: `a <> b`; `None`: IS [NOT] DISTINCT FROM, or a row's element).
    pub(crate) fn compare_eq(
        &mut self,
        a: &Expr,
        b: &Expr,
        sc: &Scope<'_>,
        negated: Option<bool>,
    ) -> R<Vec<ColId>> {
        if let (Expr::Tuple(xs), Expr::Tuple(ys)) = (strip_nested(a), strip_nested(b)) {
            if xs.len() == ys.len() {
                let mut cs = Vec::new();
                for (x, y) in xs.iter().zip(ys) {
                    cs.extend(self.compare_eq(x, y, sc, None)?);
                }
                return Ok(cs);
            }
        }
        let va = self.eval(a, sc)?;
        let vb = self.eval(b, sc)?;
        let role = match negated {
            Some(negated) if bare_value(b) => SiteRole::Compared { negated },
            _ => SiteRole::Other,
        };
        self.eq_vals(va, vb, false, role)
    }

    /// Equality between two evaluated values: encrypts values compared with encrypted columns.
    /// `right_role`: the role of `b` when it is the value compared with a column `a`.
    pub(crate) fn eq_vals(
        &mut self,
        a: Val,
        b: Val,
        array: bool,
        right_role: SiteRole,
    ) -> R<Vec<ColId>> {
        match (a, b) {
            (Val::Col(c), Val::Col(d)) => {
                self.use_col(c, Use::Eq)?;
                self.use_col(d, Use::Eq)?;
                if (self.encrypted(c) || self.encrypted(d)) && c != d {
                    return Err(Fail::Deny(format!(
                        "pgcloak: {} and {} cannot be compared: their values are encrypted under different keys (only a column compared with itself works)",
                        self.col_name(c),
                        self.col_name(d)
                    )));
                }
                Ok(vec![c, d])
            }
            (Val::Col(c), Val::Lit(r, token)) => {
                self.use_col(c, Use::Eq)?;
                if self.encrypted(c) {
                    self.add_encrypt(r, token, c, array, right_role)?;
                }
                Ok(vec![c])
            }
            (Val::Lit(r, token), Val::Col(c)) => {
                self.use_col(c, Use::Eq)?;
                if self.encrypted(c) {
                    self.add_encrypt(r, token, c, array, SiteRole::Other)?;
                }
                Ok(vec![c])
            }
            (Val::Col(c), Val::Null) | (Val::Null, Val::Col(c)) => {
                self.use_col(c, Use::Eq)?;
                Ok(vec![c])
            }
            (Val::Col(c), other) | (other, Val::Col(c)) => {
                self.use_col(c, Use::Eq)?;
                if self.encrypted(c) {
                    if matches!(other, Val::UnmappedLit) {
                        return Err(Fail::Unsupported(
                            "a literal compared with an encrypted column could not be located"
                                .into(),
                        ));
                    }
                    return Err(Fail::Deny(format!(
                        "pgcloak: encrypted column {} can only be compared with a literal, a parameter or itself; a computed value or another column cannot be encrypted for the comparison",
                        self.col_name(c)
                    )));
                }
                let mut cs = vec![c];
                cs.extend(self.consume(other, Use::Eq)?);
                Ok(cs)
            }
            (x, y) => {
                let mut cs = self.consume(x, Use::Eq)?;
                cs.extend(self.consume(y, Use::Eq)?);
                Ok(cs)
            }
        }
    }
}
