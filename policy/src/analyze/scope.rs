//! FROM items and name resolution: tables (catalog + search path + CTEs), aliases, and column references.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

use super::{Analyzer, ColId, Fail, Lin, OutCol, R};

/// A column of a relation in scope.
#[derive(Debug, Clone)]
pub(crate) struct RelCol {
    pub name: String,
    pub lin: Lin,
}

/// One relation in scope (a table, a CTE, a subquery, a function...).
#[derive(Debug, Clone)]
pub(crate) struct Rel {
    /// The name it is qualified with (alias, else table name).
    pub alias: String,
    /// `(schema, table)` for base tables.
    pub table: Option<(String, String)>,
    /// Columns in order; `None` when unknown (not in the catalog, or a function).
    pub cols: Option<Vec<RelCol>>,
    /// Policy columns of a base table whose column list is unknown.
    pub protected: Vec<(String, ColId)>,
}

impl Rel {
    /// The relation a query's outputs form (a CTE, a subquery in FROM, a view read as its query):
    /// its columns carry the outputs' lineage; unknown when an output is `*` of an unknown table.
    pub fn of_outputs(alias: String, table: Option<(String, String)>, outs: &[OutCol]) -> Rel {
        let cols = (!outs.iter().any(|o| o.unknown_width)).then(|| {
            outs.iter()
                .map(|o| RelCol {
                    name: o.name.clone(),
                    lin: o.lin.clone(),
                })
                .collect()
        });
        Rel {
            alias,
            table,
            cols,
            protected: Vec::new(),
        }
    }

    /// Look a column up: `Some(Some(lin))` found, `Some(None)` may exist (unknown list), `None` absent.
    pub fn column(&self, name: &str) -> Option<Option<Lin>> {
        match &self.cols {
            Some(cols) => {
                // Several columns of one name (a join alias) — prefer a protected one.
                let mut found: Option<Lin> = None;
                for c in cols.iter().filter(|c| c.name == name) {
                    match (&found, &c.lin) {
                        (None, _) | (Some(Lin::None), _) => found = Some(c.lin.clone()),
                        _ => {}
                    }
                }
                found.map(Some)
            }
            None => match self.protected.iter().find(|(n, _)| n == name) {
                Some((_, c)) => Some(Some(Lin::Direct(*c))),
                None => Some(None),
            },
        }
    }

    /// Every protected column of the relation (for whole-row references).
    pub fn protected_cols(&self) -> Vec<Lin> {
        match &self.cols {
            Some(cols) => cols
                .iter()
                .filter(|c| !matches!(c.lin, Lin::None))
                .map(|c| c.lin.clone())
                .collect(),
            None => self
                .protected
                .iter()
                .map(|(_, c)| Lin::Direct(*c))
                .collect(),
        }
    }
}

/// The columns `*` expands to for one FROM item (`None`: unknown).
pub(crate) type StarList = Option<Vec<RelCol>>;

/// One level of name scope (a SELECT's FROM), with its enclosing levels.
pub(crate) struct Scope<'p> {
    pub rels: Vec<Rel>,
    pub stars: Vec<StarList>,
    pub parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    pub fn new(parent: Option<&'p Scope<'p>>) -> Scope<'p> {
        Scope {
            rels: Vec::new(),
            stars: Vec::new(),
            parent,
        }
    }
}

/// What a column reference resolved to.
pub(crate) enum Resolved {
    Col(Lin),
    /// A whole-row reference to a relation.
    Row(Vec<Lin>),
    NotFound,
}

/// PostgreSQL folding: unquoted identifiers are lower-cased.
pub(crate) fn fold(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// Fold the parts of an object name; `None` for function-call parts.
pub(crate) fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => Some(fold(id)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// A resolved table name.
pub(crate) enum TableRes {
    Cte(String, Vec<OutCol>),
    Base(String, String),
    Unknown(String),
}

impl Analyzer<'_> {
    /// Resolve a table name: CTEs (innermost first), then schema-qualified or the search path.
    pub(crate) fn resolve_table(&mut self, name: &ObjectName) -> R<TableRes> {
        let parts = name_parts(name)
            .ok_or_else(|| Fail::Unsupported("table name with a function part".into()))?;
        let res = match parts.as_slice() {
            [t] => {
                let cte = self.ctes.iter().rev().find_map(|frame| {
                    frame
                        .iter()
                        .rev()
                        .find(|(n, _)| n == t)
                        .map(|(n, c)| (n.clone(), c.clone()))
                });
                if let Some((n, cols)) = cte {
                    return Ok(TableRes::Cte(n, cols));
                }
                let schema = self
                    .catalog
                    .search_path
                    .iter()
                    .find(|s| self.catalog.has_table(s, t) || self.policy.has_table(s, t))
                    .cloned();
                match schema {
                    Some(s) => TableRes::Base(s, t.clone()),
                    None => TableRes::Unknown(t.clone()),
                }
            }
            [s, t] | [_, s, t] => TableRes::Base(s.clone(), t.clone()),
            _ => {
                return Err(Fail::Unsupported(
                    "table name with more than three parts".into(),
                ))
            }
        };
        match &res {
            TableRes::Base(s, t) => {
                self.tables.insert(format!("{s}.{t}"));
                if self.policy.has_table(s, t) {
                    self.touched_protected_table = true;
                }
            }
            TableRes::Unknown(t) => {
                self.tables.insert(t.clone());
            }
            TableRes::Cte(..) => {}
        }
        Ok(res)
    }

    /// The relation for a base table (columns from the catalog, protection from the policy).
    pub(crate) fn base_rel(&self, schema: &str, table: &str, alias: String) -> Rel {
        let cols = self.catalog.columns(schema, table).map(|names| {
            names
                .iter()
                .map(|n| RelCol {
                    name: n.clone(),
                    lin: self.lin_of(schema, table, n),
                })
                .collect()
        });
        let protected = if cols.is_none() {
            self.policy
                .table_column_indices(schema, table)
                .iter()
                .filter_map(|i| {
                    self.policy
                        .columns()
                        .get(*i)
                        .map(|cp| (cp.column.clone(), *i))
                })
                .collect()
        } else {
            Vec::new()
        };
        Rel {
            alias,
            table: Some((schema.to_string(), table.to_string())),
            cols,
            protected,
        }
    }

    fn lin_of(&self, schema: &str, table: &str, column: &str) -> Lin {
        match self.policy.column_index(schema, table, column) {
            Some(i) => Lin::Direct(i),
            None => Lin::None,
        }
    }

    /// The policy column id of `schema.table.column`, if protected.
    pub(crate) fn col_id(&self, schema: &str, table: &str, column: &str) -> Option<ColId> {
        match self.lin_of(schema, table, column) {
            Lin::Direct(c) => Some(c),
            _ => None,
        }
    }

    /// Resolve a (possibly qualified) column reference.
    pub(crate) fn resolve_column(&mut self, parts: &[Ident], sc: &Scope<'_>) -> R<Resolved> {
        let names: Vec<String> = parts.iter().map(fold).collect();
        match names.as_slice() {
            [n] => Ok(self.resolve_unqualified(n, sc)),
            [q, n] => {
                let mut level = Some(sc);
                while let Some(s) = level {
                    if let Some(rel) = s.rels.iter().rev().find(|r| &r.alias == q) {
                        return Ok(match rel.column(n) {
                            Some(Some(lin)) => Resolved::Col(lin),
                            Some(None) => Resolved::Col(Lin::None),
                            // `rel.field` where the field is not a column: a composite field access.
                            None => Resolved::NotFound,
                        });
                    }
                    level = s.parent;
                }
                Ok(Resolved::NotFound)
            }
            [.., s_name, t_name, n] => {
                let mut level = Some(sc);
                while let Some(s) = level {
                    let hit = s.rels.iter().rev().find(|r| {
                        r.table
                            .as_ref()
                            .is_some_and(|(rs, rt)| rs == s_name && rt == t_name)
                            && &r.alias == t_name
                    });
                    if let Some(rel) = hit {
                        return Ok(match rel.column(n) {
                            Some(Some(lin)) => Resolved::Col(lin),
                            _ => Resolved::Col(Lin::None),
                        });
                    }
                    level = s.parent;
                }
                // Not in scope: maybe a column of a protected table named directly; be conservative.
                match self.col_id(s_name, t_name, n) {
                    Some(c) => Ok(Resolved::Col(Lin::Direct(c))),
                    None => Ok(Resolved::NotFound),
                }
            }
            [] => Ok(Resolved::NotFound),
        }
    }

    fn resolve_unqualified(&self, n: &str, sc: &Scope<'_>) -> Resolved {
        let mut level = Some(sc);
        let mut maybe_here = false;
        while let Some(s) = level {
            let mut found: Option<Lin> = None;
            for rel in &s.rels {
                match rel.column(n) {
                    Some(Some(lin)) if found.is_none() || matches!(found, Some(Lin::None)) => {
                        found = Some(lin);
                    }
                    Some(Some(_)) => {}
                    Some(None) => maybe_here = true,
                    None => {}
                }
            }
            if let Some(lin) = found {
                if !(maybe_here && matches!(lin, Lin::None)) {
                    return Resolved::Col(lin);
                }
            }
            level = s.parent;
        }
        if maybe_here {
            // It may be a column of a relation whose columns are unknown; if an enclosing level has a
            // protected column of that name, assume that one (conservative).
            let mut level = Some(sc);
            while let Some(s) = level {
                for rel in &s.rels {
                    if let Some(Some(lin)) = rel.column(n) {
                        if !matches!(lin, Lin::None) {
                            return Resolved::Col(lin);
                        }
                    }
                }
                level = s.parent;
            }
            return Resolved::Col(Lin::None);
        }
        // A relation name alone: a whole-row reference.
        let mut level = Some(sc);
        while let Some(s) = level {
            if let Some(rel) = s.rels.iter().rev().find(|r| r.alias == n) {
                return Resolved::Row(rel.protected_cols());
            }
            level = s.parent;
        }
        Resolved::NotFound
    }

    /// The relation a qualifier names (`t` in `t.*`), innermost level first.
    pub(crate) fn rel_named<'s>(&self, q: &[String], sc: &'s Scope<'s>) -> Option<&'s Rel> {
        let mut level = Some(sc);
        while let Some(s) = level {
            let hit = match q {
                [a] => s.rels.iter().rev().find(|r| &r.alias == a),
                [.., sch, t] => s.rels.iter().rev().find(|r| {
                    r.table
                        .as_ref()
                        .is_some_and(|(rs, rt)| rs == sch && rt == t)
                        && &r.alias == t
                }),
                [] => None,
            };
            if hit.is_some() {
                return hit;
            }
            level = s.parent;
        }
        None
    }
}
