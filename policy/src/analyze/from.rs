//! FROM: table and view relations, aliases, joins (with their USING/NATURAL column merging), and the
//! other FROM items (subqueries, functions, UNNEST).

use sqlparser::ast::{Join, JoinConstraint, JoinOperator, TableAlias, TableFactor, TableWithJoins};

use super::expr::Val;
use super::scope::{fold, name_parts, Rel, RelCol, Scope, StarList, TableRes};
use super::{Analyzer, Fail, Lin, Use, R};
use crate::plan::SiteRole;

impl Analyzer<'_> {
    /// A relation for a table name (base table or CTE).
    pub(crate) fn table_rel(
        &mut self,
        name: &sqlparser::ast::ObjectName,
        alias: Option<&TableAlias>,
    ) -> R<Rel> {
        let res = self.resolve_table(name)?;
        let mut rel = match res {
            TableRes::Cte(n, outs) => Rel::of_outputs(n, None, &outs),
            TableRes::Base(s, t) => match self.catalog.view_definition(&s, &t) {
                Some(def) => self.view_rel(&s, &t, def)?,
                None => self.base_rel(&s, &t, t.clone()),
            },
            TableRes::Unknown(t) => Rel {
                alias: t,
                table: None,
                cols: None,
                protected: Vec::new(),
            },
        };
        if let Some(a) = alias {
            // sqlparser reads `FROM ONLY customers` as table `only` aliased `customers`: an alias that
            // names a protected table other than the one aliased is refused rather than guessed at.
            let alias_name = fold(&a.name);
            let is_same = rel.table.as_ref().is_some_and(|(_, t)| *t == alias_name);
            if !is_same && self.policy.protected_table_names().contains(&alias_name) {
                return Err(Fail::Unsupported(format!(
                    "alias \"{alias_name}\" names a protected table (ONLY is not supported)"
                )));
            }
            self.apply_alias(&mut rel, a)?;
        }
        Ok(rel)
    }

    /// A view that reads a protected table, read as its query: each of its columns carries the
    /// lineage of the expression behind it, so the role's policy applies as if the query were
    /// written out. The query is analysed on its own: no CTE of the statement is visible in it (its
    /// user relations are schema-qualified anyway), and its literals are not the statement's (they
    /// cannot be rewritten, so a comparison of an encrypted column with one is refused).
    pub(super) fn view_rel(&mut self, schema: &str, name: &str, definition: &str) -> R<Rel> {
        let unreadable = |why: &str| {
            Fail::Unsupported(format!(
                "view {schema}.{name} reads a protected table and its query {why}"
            ))
        };
        // The limits a statement is held to (sqlparser's time grows fast with nesting), whoever
        // wrote the view.
        if super::too_large(definition) {
            return Err(unreadable("is too large"));
        }
        if crate::lexer::lex(definition)
            .statements
            .iter()
            .any(|s| s.max_nesting > super::MAX_NESTING)
        {
            return Err(unreadable(&format!(
                "nests parentheses/CASE more than {} deep",
                super::MAX_NESTING
            )));
        }
        let dialect = sqlparser::dialect::PostgreSqlDialect {};
        let parsed = sqlparser::parser::Parser::new(&dialect)
            .with_recursion_limit(super::PARSER_RECURSION_LIMIT)
            .try_with_sql(definition)
            .and_then(|mut p| p.parse_statements())
            .map_err(|_| unreadable("could not be parsed"))?;
        let query = match parsed.as_slice() {
            [sqlparser::ast::Statement::Query(q)] => q,
            _ => return Err(unreadable("is not a single query")),
        };
        self.enter()?;
        let lits = std::mem::take(&mut self.lits);
        let lit_text = std::mem::take(&mut self.lit_text);
        let ctes = std::mem::take(&mut self.ctes);
        let outs = self.query(query, None);
        self.lits = lits;
        self.lit_text = lit_text;
        self.ctes = ctes;
        self.leave();
        let outs = outs?;
        if outs.iter().any(|o| o.unknown_width) {
            return Err(unreadable("has `*` of a table pgcloak does not know"));
        }
        // The table is kept so that writes naming the view are still recognised (and refused).
        Ok(Rel::of_outputs(
            name.to_string(),
            Some((schema.to_string(), name.to_string())),
            &outs,
        ))
    }

    pub(super) fn apply_alias(&mut self, rel: &mut Rel, a: &TableAlias) -> R<()> {
        rel.alias = fold(&a.name);
        if !a.columns.is_empty() {
            match &mut rel.cols {
                Some(cols) => {
                    for (c, new) in cols.iter_mut().zip(a.columns.iter()) {
                        c.name = fold(&new.name);
                    }
                }
                None => {
                    if !rel.protected.is_empty() {
                        return Err(Fail::Unsupported(
                            "column aliases on a protected table the catalog does not know".into(),
                        ));
                    }
                    rel.cols = None;
                }
            }
        }
        Ok(())
    }

    /// Add one FROM item (a relation and its joins) to `sc`.
    pub(crate) fn add_from_item(&mut self, twj: &TableWithJoins, sc: &mut Scope<'_>) -> R<()> {
        let (rels, mut star) = self.factor(&twj.relation, sc)?;
        sc.rels.extend(rels);
        for j in &twj.joins {
            star = self.join(j, sc, star)?;
        }
        sc.stars.push(star);
        Ok(())
    }

    pub(super) fn join(
        &mut self,
        j: &Join,
        sc: &mut Scope<'_>,
        left_star: StarList,
    ) -> R<StarList> {
        let left_count = sc.rels.len();
        let (rels, right_star) = self.factor(&j.relation, sc)?;
        sc.rels.extend(rels);
        let constraint = match &j.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c)
            | JoinOperator::CrossJoin(c)
            | JoinOperator::Semi(c)
            | JoinOperator::LeftSemi(c)
            | JoinOperator::RightSemi(c)
            | JoinOperator::Anti(c)
            | JoinOperator::LeftAnti(c)
            | JoinOperator::RightAnti(c)
            | JoinOperator::StraightJoin(c) => Some(c),
            JoinOperator::CrossApply | JoinOperator::OuterApply => None,
            JoinOperator::AsOf { .. } => return Err(Fail::Unsupported("ASOF join".into())),
        };
        let using: Option<Vec<String>> = match constraint {
            Some(JoinConstraint::On(e)) => {
                self.predicate(e, sc)?;
                None
            }
            Some(JoinConstraint::Using(names)) => Some(
                names
                    .iter()
                    .filter_map(|n| name_parts(n).and_then(|p| p.last().cloned()))
                    .collect(),
            ),
            Some(JoinConstraint::Natural) => match (&left_star, &right_star) {
                (Some(l), Some(r)) => Some(
                    l.iter()
                        .filter(|c| r.iter().any(|d| d.name == c.name))
                        .map(|c| c.name.clone())
                        .collect(),
                ),
                _ => {
                    let any_protected = sc.rels.iter().any(|r| !r.protected_cols().is_empty());
                    if any_protected {
                        return Err(Fail::Unsupported(
                            "NATURAL JOIN with a table the catalog does not know".into(),
                        ));
                    }
                    None
                }
            },
            Some(JoinConstraint::None) | None => None,
        };
        let Some(using) = using else {
            return Ok(match (left_star, right_star) {
                (Some(mut l), Some(r)) => {
                    l.extend(r);
                    Some(l)
                }
                _ => None,
            });
        };
        // USING columns are compared for equality, and appear once, first, in `*`.
        let mut merged = Vec::new();
        for name in &using {
            let find = |rels: &[Rel]| -> Lin {
                rels.iter()
                    .find_map(|r| r.column(name).flatten())
                    .unwrap_or(Lin::None)
            };
            let l = find(sc.rels.get(..left_count).unwrap_or(&[]));
            let r = find(sc.rels.get(left_count..).unwrap_or(&[]));
            self.eq_vals(Val::from_lin(&l), Val::from_lin(&r), false, SiteRole::Other)?;
            let lin = if matches!(l, Lin::None) { r } else { l };
            merged.push(RelCol {
                name: name.clone(),
                lin,
            });
        }
        Ok(match (left_star, right_star) {
            (Some(l), Some(r)) => {
                let mut all = merged;
                all.extend(l.into_iter().filter(|c| !using.contains(&c.name)));
                all.extend(r.into_iter().filter(|c| !using.contains(&c.name)));
                Some(all)
            }
            _ => None,
        })
    }

    /// The arguments of a function in FROM, positional or named (`f(x => e)`, `f(x := e)`): each
    /// expression is computed on, so a protected column cannot reach the function unchecked.
    fn function_args_in_from(
        &mut self,
        args: &[sqlparser::ast::FunctionArg],
        sc: &Scope<'_>,
    ) -> R<()> {
        use sqlparser::ast::{FunctionArg, FunctionArgExpr};
        for a in args {
            let (FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
            | FunctionArg::Named {
                arg: FunctionArgExpr::Expr(e),
                ..
            }
            | FunctionArg::ExprNamed {
                arg: FunctionArgExpr::Expr(e),
                ..
            }) = a
            else {
                continue;
            };
            let v = self.eval(e, sc)?;
            self.consume(v, Use::Compute)?;
        }
        Ok(())
    }

    /// One table factor: the relations it brings into scope and its `*` columns.
    pub(super) fn factor(&mut self, tf: &TableFactor, sc: &Scope<'_>) -> R<(Vec<Rel>, StarList)> {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if let Some(args) = args {
                    // A set-returning function in FROM.
                    self.function_args_in_from(&args.args, sc)?;
                    let rel = self.opaque_rel(
                        name_parts(name).and_then(|p| p.last().cloned()),
                        alias.as_ref(),
                    );
                    let star = rel.cols.clone();
                    return Ok((vec![rel], star));
                }
                let rel = self.table_rel(name, alias.as_ref())?;
                let star = rel.cols.clone();
                Ok((vec![rel], star))
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
            } => {
                let outs = if *lateral {
                    self.query(subquery, Some(sc))?
                } else {
                    self.query(subquery, sc.parent)?
                };
                let mut rel = Rel::of_outputs(String::new(), None, &outs);
                if rel.cols.is_none() && outs.iter().any(|o| !matches!(o.lin, Lin::None)) {
                    return Err(Fail::Unsupported(
                        "a subquery in FROM mixes protected columns with `*` of an unknown table"
                            .into(),
                    ));
                }
                if let Some(a) = alias {
                    self.apply_alias(&mut rel, a)?;
                }
                let star = rel.cols.clone();
                Ok((vec![rel], star))
            }
            TableFactor::Function {
                args, alias, name, ..
            } => {
                self.function_args_in_from(args, sc)?;
                let rel = self.opaque_rel(
                    name_parts(name).and_then(|p| p.last().cloned()),
                    alias.as_ref(),
                );
                let star = rel.cols.clone();
                Ok((vec![rel], star))
            }
            TableFactor::TableFunction { expr, alias } => {
                let v = self.eval(expr, sc)?;
                self.consume(v, Use::Compute)?;
                let rel = self.opaque_rel(None, alias.as_ref());
                let star = rel.cols.clone();
                Ok((vec![rel], star))
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                for e in array_exprs {
                    let v = self.eval(e, sc)?;
                    self.consume(v, Use::Compute)?;
                }
                let rel = self.opaque_rel(Some("unnest".into()), alias.as_ref());
                let star = rel.cols.clone();
                Ok((vec![rel], star))
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut inner = Scope::new(sc.parent);
                self.add_from_item(table_with_joins, &mut inner)?;
                let star = inner.stars.pop().flatten();
                match alias {
                    Some(a) => {
                        let mut rel = Rel {
                            alias: String::new(),
                            table: None,
                            cols: star.clone(),
                            protected: inner
                                .rels
                                .iter()
                                .flat_map(|r| r.protected.clone())
                                .collect(),
                        };
                        self.apply_alias(&mut rel, a)?;
                        let star = rel.cols.clone();
                        Ok((vec![rel], star))
                    }
                    None => Ok((inner.rels, star)),
                }
            }
            _ => Err(Fail::Unsupported("this kind of FROM item".into())),
        }
    }

    /// A relation with unknown (or only aliased) columns: functions, UNNEST...
    pub(super) fn opaque_rel(&self, name: Option<String>, alias: Option<&TableAlias>) -> Rel {
        let mut rel = Rel {
            alias: name.unwrap_or_default(),
            table: None,
            cols: None,
            protected: Vec::new(),
        };
        if let Some(a) = alias {
            rel.alias = fold(&a.name);
            if !a.columns.is_empty() {
                rel.cols = Some(
                    a.columns
                        .iter()
                        .map(|c| RelCol {
                            name: fold(&c.name),
                            lin: Lin::None,
                        })
                        .collect(),
                );
            }
        }
        rel
    }
}
