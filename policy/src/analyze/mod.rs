//! Full analysis of SQL with sqlparser (PostgreSQL dialect): resolves every column reference to the policy,
//! decides allow/deny for the role, and plans the encryption of values and the handling of result columns.
//!
//! Layout: `mod.rs` (entry point, per-statement driver, use rules), `scope.rs` (FROM items and name
//! resolution), `expr.rs` (expressions and predicates), `query.rs` (SELECT, set operations, CTEs),
//! `stmt.rs` (INSERT, UPDATE, DELETE, COPY, PREPARE/EXECUTE, cursors, SET and the rest).
//!
//! The rules, in one place (see `Use` and `Analyzer::use_col`):
//! - a column a role reads as `deny` may not be used at all; one it reads as `null` only as a plain result
//!   column (any other use would be an oracle);
//! - a `masked` column may be returned (masked), compared for equality, tested for NULL, counted and grouped,
//!   but not ordered, range-compared, pattern-matched or computed on (that would reveal the hidden value);
//! - an encrypted column can only be returned (the proxy decrypts or masks it), tested for NULL, counted, and
//!   — deterministic mode only — compared for equality with a literal, a parameter or the same column, and
//!   grouped; everything else cannot work on ciphertext;
//! - a result column computed from protected columns is passed through as computed (so it must be allowed
//!   by the rules above); `count(col)` and `col IS NULL` are the harmless cases;
//! - values reaching an encrypted column must be literals or parameters (the proxy encrypts them);
//! - anything the analysis does not understand in a statement that names a protected table is refused.

mod copy;
mod expr;
mod from;
mod predicate;
mod query;
mod scope;
mod stmt;
mod subject;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::catalog::Catalog;
use crate::lexer::{Lexed, StatementKind};
use crate::model::{Access, ColumnPolicy, EncryptMode, Policy, RoleRef};
use crate::plan::{
    ColumnTouch, Decision, Encrypt, InList, Output, OutputAction, Plan, SessionEffect, Site,
    SiteRole, Source, StatementPlan, TouchAccess, ValueRef, SQLSTATE_DENY,
};

/// sqlparser's recursion limit (nesting of sub-expressions and subqueries).
pub(crate) const PARSER_RECURSION_LIMIT: usize = 48;
/// Nesting limit of our own walk; deeper statements are refused if they name protected tables.
const MAX_DEPTH: usize = 96;
/// Statements larger than this are not parsed (fail closed if they name a protected table).
const MAX_STATEMENT_BYTES: usize = 256 * 1024;
/// Deepest `(`/`[`/CASE nesting parsed: sqlparser backtracks on some nested forms, exponentially in
/// depth, so deeper statements are refused (if they name a protected table) instead of parsed.
pub const MAX_NESTING: u32 = 8;
/// Binary operators / keywords chaining expressions; long chains build very deep trees.
const MAX_OPERATORS: usize = 4096;

/// Index into `Policy::columns()`.
pub(crate) type ColId = usize;

/// Lineage of a value: which protected column it is, or which it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lin {
    None,
    Direct(ColId),
    Expr(Vec<ColId>),
}

/// A result column of a query (before it is known where it goes).
#[derive(Debug, Clone)]
pub(crate) struct OutCol {
    pub name: String,
    pub lin: Lin,
    /// `*` over a relation whose columns are unknown: stands for any number of columns.
    pub unknown_width: bool,
    /// The column is exactly a literal or parameter (`INSERT ... SELECT $1`): the proxy can encrypt it.
    pub lit: Option<(ValueRef, u32)>,
}

/// How a column is used; see the module docs for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Output,
    Eq,
    IsNull,
    Count,
    Group,
    Order,
    Range,
    Pattern,
    Compute,
    /// Copied by the server into another place (INSERT ... SELECT, CREATE TABLE AS, views).
    CopyOut,
    /// Stored back into the same column (UPDATE t SET c = c, ON CONFLICT ... SET c = EXCLUDED.c).
    SameColumn,
}

impl Use {
    fn describe(self) -> &'static str {
        match self {
            Use::Output => "a result column",
            Use::Eq => "an equality comparison",
            Use::IsNull => "IS NULL",
            Use::Count => "count()",
            Use::Group => "GROUP BY / DISTINCT / a set operation",
            Use::Order => "ORDER BY",
            Use::Range => "a range comparison (<, >, BETWEEN)",
            Use::Pattern => "LIKE or a pattern match",
            Use::Compute => "an expression or function",
            Use::CopyOut => "a copy into another table or column",
            Use::SameColumn => "a write back into itself",
        }
    }
}

/// A lexer token whose position the analysis looks up by sqlparser's line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Token {
    /// Index into `Lexed::literals`.
    Literal(usize),
    /// Index among the statement's parameter tokens.
    Param(u32),
}

/// Why analysis stopped.
#[derive(Debug, Clone)]
pub(crate) enum Fail {
    /// Refuse with this message (starts with `pgcloak: `).
    Deny(String),
    /// Not understood; refused only if the statement involves a protected table.
    Unsupported(String),
}

pub(crate) type R<T> = Result<T, Fail>;

/// Per-statement analysis state.
pub(crate) struct Analyzer<'a> {
    pub policy: &'a Policy,
    pub role: RoleRef<'a>,
    pub catalog: &'a Catalog,
    /// The statement text (as parsed).
    pub text: &'a str,
    /// (line, column) of each literal of this statement -> index into `Lexed::literals`.
    pub lits: HashMap<(u64, u64), usize>,
    /// (line, column) of each `$n` token of this statement -> its index among the statement's
    /// parameter tokens ([`crate::plan::Site::token`]).
    pub params: HashMap<(u64, u64), u32>,
    /// Literal index -> byte range in `text`.
    pub lit_text: HashMap<usize, std::ops::Range<usize>>,
    pub depth: usize,
    pub ctes: Vec<Vec<(String, Vec<OutCol>)>>,
    pub touches: BTreeSet<(ColId, TouchAccess)>,
    pub encryptions: Vec<Encrypt>,
    pub enc_targets: HashMap<ValueRef, ColId>,
    pub in_lists: Vec<InList>,
    pub tables: BTreeSet<String>,
    pub touched_protected_table: bool,
    pub effects: Vec<SessionEffect>,
    pub cacheable: bool,
    /// RETURNING columns of the last INSERT/UPDATE/DELETE (for data-modifying CTEs).
    pub returning_outs: Option<Vec<OutCol>>,
    /// The top SELECT has INTO.
    pub select_into: bool,
    /// The subject each value of a subject-keyed column belongs to (see `subject.rs`).
    pub subjects: HashMap<ValueRef, crate::plan::SubjectValue>,
    /// The subject of the row being written now (values stored into subject-keyed columns belong to it).
    pub row_subject: Option<crate::plan::SubjectValue>,
}

impl<'a> Analyzer<'a> {
    pub(crate) fn col(&self, c: ColId) -> R<&'a ColumnPolicy> {
        self.policy
            .columns()
            .get(c)
            .ok_or_else(|| Fail::Unsupported("internal column reference".into()))
    }

    pub(crate) fn col_name(&self, c: ColId) -> String {
        self.policy
            .columns()
            .get(c)
            .map(ColumnPolicy::qualified_name)
            .unwrap_or_default()
    }

    pub(crate) fn encrypted(&self, c: ColId) -> bool {
        self.policy
            .columns()
            .get(c)
            .is_some_and(|p| p.encrypt.is_encrypted())
    }

    pub(crate) fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Fail::Unsupported("the statement nests too deeply".into()));
        }
        Ok(())
    }

    pub(crate) fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn touch(&mut self, c: ColId, a: TouchAccess) {
        self.touches.insert((c, a));
    }

    fn deny<T>(&mut self, c: ColId, msg: String) -> R<T> {
        self.touch(c, TouchAccess::Deny);
        Err(Fail::Deny(msg))
    }

    /// Check one use of a protected column against the role's access and the column's encryption.
    pub(crate) fn use_col(&mut self, c: ColId, u: Use) -> R<()> {
        let cp = self.col(c)?;
        let name = cp.qualified_name();
        let role = &self.role.name;
        let class = cp.class;
        let access = self.role.read_column(cp);
        match access {
            Access::Deny => {
                return self.deny(
                    c,
                    format!(
                        "pgcloak: role \"{role}\" may not read column {name} (class {class} is \"deny\" for this role; it was used in {})",
                        u.describe()
                    ),
                );
            }
            Access::Null => {
                if u == Use::Output {
                    self.touch(c, TouchAccess::Null);
                    return Ok(());
                }
                if u != Use::SameColumn {
                    return self.deny(
                        c,
                        format!(
                            "pgcloak: role \"{role}\" reads column {name} as NULL (class {class}); using it in {} would reveal its values",
                            u.describe()
                        ),
                    );
                }
            }
            Access::Masked => match u {
                Use::Output => {
                    self.touch(c, TouchAccess::Masked);
                    return Ok(());
                }
                Use::Eq | Use::IsNull | Use::Count | Use::Group | Use::SameColumn => {}
                _ => {
                    return self.deny(
                        c,
                        format!(
                            "pgcloak: role \"{role}\" sees column {name} masked (class {class}); {} on it would reveal the hidden value",
                            u.describe()
                        ),
                    );
                }
            },
            Access::Plaintext => {
                if u == Use::Output {
                    self.touch(c, TouchAccess::Plaintext);
                    return Ok(());
                }
            }
        }
        match cp.encrypt {
            EncryptMode::None => {}
            EncryptMode::Randomized => match u {
                Use::Output | Use::IsNull | Use::Count | Use::SameColumn | Use::CopyOut => {}
                _ => {
                    return self.deny(
                        c,
                        format!(
                            "pgcloak: column {name} uses randomized encryption, which cannot be compared or computed on ({}); use deterministic mode for columns that are searched",
                            u.describe()
                        ),
                    );
                }
            },
            EncryptMode::Deterministic => match u {
                Use::Output
                | Use::IsNull
                | Use::Count
                | Use::SameColumn
                | Use::CopyOut
                | Use::Eq
                | Use::Group => {}
                _ => {
                    return self.deny(
                        c,
                        format!(
                            "pgcloak: {} on encrypted column {name} cannot work on ciphertext; only equality, IN, IS NULL, GROUP BY and count() are possible",
                            u.describe()
                        ),
                    );
                }
            },
        }
        if u == Use::CopyOut && !cp.encrypt.is_encrypted() && access != Access::Plaintext {
            return self.deny(
                c,
                format!(
                    "pgcloak: role \"{role}\" may not copy column {name} elsewhere: it does not read it in plaintext (class {class})"
                ),
            );
        }
        self.touch(c, TouchAccess::Filter);
        Ok(())
    }

    /// A write of a protected column.
    pub(crate) fn write_col(&mut self, c: ColId) -> R<()> {
        let cp = self.col(c)?;
        if !self.role.may_write(cp.class) {
            let msg = format!(
                "pgcloak: role \"{}\" may not write column {} (class {} is not in its write list)",
                self.role.name,
                cp.qualified_name(),
                cp.class
            );
            return self.deny(c, msg);
        }
        self.touch(c, TouchAccess::Write);
        Ok(())
    }

    /// Encrypt `r` (at `token`, see [`Site::token`]) with column `c`'s key; `role`: what the statement
    /// does with it there.
    pub(crate) fn add_encrypt(
        &mut self,
        r: ValueRef,
        token: u32,
        c: ColId,
        array: bool,
        role: SiteRole,
    ) -> R<()> {
        if let ValueRef::Param(n) = r {
            if n == 0 || n > 65535 {
                return Err(Fail::Unsupported(format!("parameter ${n} is out of range")));
            }
        }
        let stored = role == SiteRole::Stored;
        if let Some(prev) = self.enc_targets.get(&r) {
            if *prev != c {
                let a = self.col_name(*prev);
                let b = self.col_name(c);
                return Err(Fail::Deny(format!(
                    "pgcloak: one value is used with two encrypted columns ({a} and {b}); pass it twice, once for each"
                )));
            }
            if stored {
                self.record_subject(r, c)?;
            }
            if let Some(e) = self.encryptions.iter_mut().find(|e| e.target == r) {
                // Stored anywhere: PostgreSQL's assignment rules apply, and an array must not carry
                // other key versions' ciphertexts into the table.
                e.assignment |= stored;
                match e.sites.iter_mut().find(|s| s.token == token) {
                    // One occurrence reached twice in different roles: the safe one.
                    Some(s) if s.role != role => s.role = SiteRole::Other,
                    Some(_) => {}
                    None => e.sites.push(Site { token, role }),
                }
            }
            return Ok(());
        }
        let cp = self.col(c)?;
        self.enc_targets.insert(r, c);
        if stored {
            self.record_subject(r, c)?;
        }
        self.encryptions.push(Encrypt {
            target: r,
            column: cp.qualified_name(),
            mode: cp.encrypt,
            logical_type: cp.logical_type,
            class: cp.class,
            array,
            assignment: stored,
            sites: vec![Site { token, role }],
            subject: None,
        });
        Ok(())
    }

    /// Turn query result columns into client outputs (applying the output rules).
    pub(crate) fn client_outputs(&mut self, outs: Vec<OutCol>, plan: &mut StatementPlan) -> R<()> {
        let mut unknown_before = false;
        let mut any_protected = false;
        let mut classified = false;
        let mut outputs = Vec::with_capacity(outs.len());
        for (index, o) in outs.into_iter().enumerate() {
            if o.unknown_width {
                unknown_before = true;
                continue;
            }
            let protected = !matches!(&o.lin, Lin::None | Lin::Expr(_))
                || matches!(&o.lin, Lin::Expr(v) if !v.is_empty());
            if protected && unknown_before {
                return Err(Fail::Unsupported(format!(
                    "the position of result column \"{}\" cannot be determined (a `*` expands a table the catalog does not know)",
                    o.name
                )));
            }
            any_protected |= protected;
            let (source, action) = match &o.lin {
                Lin::None => (Source::None, OutputAction::PassThrough),
                Lin::Expr(cs) => {
                    let mut names = Vec::with_capacity(cs.len());
                    for c in cs {
                        let cp = self.col(*c)?;
                        classified |= cp.class.is_classified();
                        let a = if self.role.read_column(cp) == Access::Plaintext {
                            TouchAccess::Plaintext
                        } else {
                            TouchAccess::Filter
                        };
                        self.touch(*c, a);
                        names.push(cp.qualified_name());
                    }
                    names.sort();
                    names.dedup();
                    (Source::Expression(names), OutputAction::PassThrough)
                }
                Lin::Direct(c) => {
                    let c = *c;
                    self.use_col(c, Use::Output)?;
                    let cp = self.col(c)?;
                    let name = cp.qualified_name();
                    let action = match self.role.read_column(cp) {
                        Access::Plaintext if cp.encrypt.is_encrypted() => OutputAction::Decrypt {
                            column: name.clone(),
                            logical_type: cp.logical_type,
                            class: cp.class,
                        },
                        Access::Plaintext => OutputAction::PassThrough,
                        Access::Masked => OutputAction::Mask {
                            column: name.clone(),
                            mask: cp.mask,
                            logical_type: cp.logical_type,
                            encrypted: cp.encrypt.is_encrypted(),
                            class: cp.class,
                        },
                        Access::Null => OutputAction::Null { class: cp.class },
                        Access::Deny => {
                            return Err(Fail::Deny(format!("pgcloak: column {name} is denied")));
                        }
                    };
                    if !matches!(action, OutputAction::Null { .. }) {
                        classified |= cp.class.is_classified();
                    }
                    (Source::Direct(name), action)
                }
            };
            outputs.push(Output {
                index,
                name: o.name,
                source,
                action,
            });
        }
        if unknown_before && !any_protected {
            outputs.clear();
        }
        if classified {
            plan.max_rows = self.role.max_rows;
            plan.classified = true;
        }
        plan.outputs = outputs;
        Ok(())
    }
}

/// Analyse every statement of `sql` (lexed as `lexed`) for `role`. Never panics; anything not understood in
/// a statement that names a protected table is refused.
pub fn analyze(
    sql: &str,
    lexed: &Lexed,
    catalog: &Catalog,
    policy: &Policy,
    role: RoleRef<'_>,
) -> Plan {
    let mut plan = Plan {
        statements: Vec::with_capacity(lexed.statements.len()),
        cacheable: true,
    };
    for (index, span) in lexed.statements.iter().enumerate() {
        let (sp, cacheable) = analyze_one(sql, lexed, index, catalog, policy, role);
        plan.cacheable &= cacheable;
        let _ = span;
        plan.statements.push(sp);
    }
    plan
}

fn deny_plan(plan: &mut StatementPlan, message: String) {
    plan.decision = Decision::Deny {
        sqlstate: SQLSTATE_DENY,
        message,
    };
}

/// `FORCE_QUOTE *` / `FORCE QUOTE *` of a COPY with the `*` written as a column `"*"`: sqlparser
/// only reads a column list there, and the analysis does not use the option (the proxy keeps the
/// server's quoting). A `*` inside a literal (`in_literal`, by byte offset) is left alone.
fn quote_force_quote_star(text: &str, in_literal: impl Fn(usize) -> bool) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    let mut last = 0;
    for (i, _) in text.match_indices('*') {
        // The two words before the `*`: a short window, so a statement full of `*` stays linear.
        let mut from = i.saturating_sub(64);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let lower = text[from..i].to_ascii_lowercase();
        let mut words = lower
            .rsplit(|c: char| c.is_ascii_whitespace() || c == ',' || c == '(')
            .filter(|w| !w.is_empty());
        let (w1, w2) = (words.next(), words.next());
        // `FORCE_QUOTE (cols)` in the option list, `FORCE QUOTE cols` in the old syntax.
        let column = match (w1, w2) {
            (Some("force_quote"), _) => "(\"*\")",
            (Some("quote"), Some("force")) => "\"*\"",
            _ => continue,
        };
        if !in_literal(i) {
            out.push_str(&text[last..i]);
            out.push_str(column);
            last = i + 1;
        }
    }
    out.push_str(&text[last..]);
    out
}

fn analyze_one(
    sql: &str,
    lexed: &Lexed,
    index: usize,
    catalog: &Catalog,
    policy: &Policy,
    role: RoleRef<'_>,
) -> (StatementPlan, bool) {
    let Some(span) = lexed.statements.get(index) else {
        let mut p = StatementPlan::new(index, StatementKind::Other);
        deny_plan(
            &mut p,
            "pgcloak: statement could not be analysed (lexing mismatch); refused".into(),
        );
        return (p, false);
    };
    let mut plan = StatementPlan::new(index, span.kind);
    let Some(text) = sql.get(span.range.clone()) else {
        deny_plan(
            &mut plan,
            "pgcloak: statement could not be analysed (its text does not match the lexed statement); refused".into(),
        );
        return (plan, false);
    };
    let idents = || lexed.identifiers.slice(span.identifiers.clone());
    let named: Vec<&String> = policy
        .protected_table_names()
        .iter()
        .chain(catalog.protected_view_names())
        .filter(|t| idents().any(|id| id == t.as_str()))
        .collect();
    let names_protected = !named.is_empty();
    let refuse_unanalysable = |plan: &mut StatementPlan, why: &str| {
        let names: Vec<&str> = named.iter().map(|s| s.as_str()).collect();
        deny_plan(
            plan,
            format!(
                "pgcloak: statement could not be analysed ({why}) and it names protected table {}; refused (fail closed)",
                names.join(", ")
            ),
        );
    };

    // Role changes: recognised from the first words (several forms do not parse in sqlparser).
    let w: Vec<&str> = idents().take(4).collect();
    let role_change = matches!(
        w.as_slice(),
        ["set", "role", ..]
            | ["set", "session" | "local", "role", ..]
            | ["reset", "role", ..]
            | ["set", "session", "authorization", ..]
            | ["set", "session" | "local", "session", "authorization", ..]
            | ["reset", "session", "authorization", ..]
            | ["reset", "all", ..]
    );
    if role_change {
        plan.effects.push(SessionEffect::RoleChangeIgnored);
        return (plan, true);
    }

    if lexed.unicode_identifiers && names_protected {
        refuse_unanalysable(
            &mut plan,
            "U&\"...\" identifiers are not supported; write the plain name",
        );
        return (plan, false);
    }
    if too_large(text) {
        if names_protected {
            refuse_unanalysable(&mut plan, "the statement is too large");
        }
        return (plan, false);
    }
    if span.max_nesting > MAX_NESTING {
        if names_protected {
            refuse_unanalysable(
                &mut plan,
                &format!("it nests parentheses/CASE more than {MAX_NESTING} deep"),
            );
        }
        return (plan, false);
    }

    let parse_text: Cow<'_, str> = if span.kind == StatementKind::Copy {
        let in_literal = |i: usize| {
            let at = span.range.start + i;
            lexed
                .literals
                .get(span.literals.clone())
                .is_some_and(|ls| ls.iter().any(|l| l.span.contains(&at)))
        };
        Cow::Owned(format!("{};", quote_force_quote_star(text, in_literal)))
    } else {
        Cow::Borrowed(text)
    };
    let dialect = PostgreSqlDialect {};
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(&parse_text)
        .and_then(|mut p| p.parse_statements());
    let stmt = match parsed {
        Ok(mut v) if v.len() == 1 => v.pop(),
        _ => None,
    };
    let Some(stmt) = stmt else {
        // The decision depends on words inside literals (code bodies): never reuse it.
        if names_protected {
            refuse_unanalysable(&mut plan, "it could not be parsed");
        }
        return (plan, false);
    };

    // Map literal and parameter positions (sqlparser reports line/column in characters) to lexer
    // literal indices and statement-relative parameter token indices.
    let stmt_start = span.range.start;
    let mut lits = HashMap::new();
    let mut params = HashMap::new();
    let mut lit_text = HashMap::new();
    let global = lexed.literals.get(span.literals.clone()).unwrap_or(&[]);
    let stmt_params = lexed.params.get(span.params.clone()).unwrap_or(&[]);
    let mut want: Vec<(usize, Token)> = global
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l.span.start.saturating_sub(stmt_start),
                Token::Literal(span.literals.start + i),
            )
        })
        .chain(stmt_params.iter().enumerate().map(|(i, p)| {
            (
                p.span.start.saturating_sub(stmt_start),
                Token::Param(u32::try_from(i).unwrap_or(u32::MAX)),
            )
        }))
        .collect();
    want.sort_unstable();
    let mut wi = 0;
    let (mut line, mut col) = (1u64, 1u64);
    for (off, ch) in text.char_indices() {
        while let Some((w_off, token)) = want.get(wi).copied() {
            if w_off < off {
                wi += 1;
            } else if w_off == off {
                match token {
                    Token::Literal(idx) => {
                        lits.insert((line, col), idx);
                    }
                    Token::Param(idx) => {
                        params.insert((line, col), idx);
                    }
                }
                wi += 1;
            } else {
                break;
            }
        }
        if wi >= want.len() {
            break;
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    for (i, l) in global.iter().enumerate() {
        let s = l.span.start.saturating_sub(stmt_start);
        let e = l.span.end.saturating_sub(stmt_start);
        lit_text.insert(span.literals.start + i, s..e);
    }

    let mut an = Analyzer {
        policy,
        role,
        catalog,
        text,
        lits,
        params,
        lit_text,
        depth: 0,
        in_lists: Vec::new(),
        ctes: Vec::new(),
        touches: BTreeSet::new(),
        encryptions: Vec::new(),
        enc_targets: HashMap::new(),
        tables: BTreeSet::new(),
        touched_protected_table: false,
        effects: Vec::new(),
        cacheable: true,
        returning_outs: None,
        select_into: false,
        subjects: HashMap::new(),
        row_subject: None,
    };
    let result = an
        .statement(&stmt, &mut plan)
        .and_then(|()| an.attach_subjects());
    drop(stmt);
    let involves_protected =
        names_protected || an.touched_protected_table || !an.touches.is_empty();
    match result {
        Ok(()) => {}
        Err(Fail::Deny(msg)) => deny_plan(&mut plan, msg),
        Err(Fail::Unsupported(why)) => {
            if involves_protected {
                refuse_unanalysable(&mut plan, &why);
            } else {
                plan.outputs.clear();
                plan.max_rows = None;
                plan.classified = false;
            }
        }
    }
    if !plan.decision.is_allow() {
        plan.encryptions.clear();
        plan.outputs.clear();
        plan.copy = None;
    } else {
        plan.encryptions = std::mem::take(&mut an.encryptions);
        plan.in_lists = std::mem::take(&mut an.in_lists);
    }
    plan.tables = an.tables.iter().cloned().collect();
    let mut cols: Vec<ColumnTouch> = an
        .touches
        .iter()
        .filter_map(|(c, a)| {
            policy.columns().get(*c).map(|cp| ColumnTouch {
                name: cp.qualified_name(),
                class: cp.class,
                access: *a,
            })
        })
        .collect();
    cols.sort();
    cols.dedup();
    plan.columns = cols;
    plan.effects.append(&mut an.effects);
    (plan, an.cacheable)
}

/// Rough count of operators and AND/OR keywords: long chains parse into very deep trees.
/// Beyond what the analysis parses: too many bytes or operators.
pub(crate) fn too_large(text: &str) -> bool {
    text.len() > MAX_STATEMENT_BYTES || operator_count(text) > MAX_OPERATORS
}

fn operator_count(text: &str) -> usize {
    let ops = text
        .bytes()
        .filter(|b| {
            matches!(
                b,
                b'+' | b'-'
                    | b'*'
                    | b'/'
                    | b'<'
                    | b'>'
                    | b'='
                    | b'|'
                    | b'&'
                    | b'%'
                    | b'^'
                    | b'#'
                    | b'~'
                    | b'!'
                    | b'@'
                    | b':'
            )
        })
        .count();
    let words = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| {
            w.eq_ignore_ascii_case("and")
                || w.eq_ignore_ascii_case("or")
                || w.eq_ignore_ascii_case("not")
        })
        .count();
    ops + words
}
