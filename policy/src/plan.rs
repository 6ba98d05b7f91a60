//! What the analysis decides for one SQL string: per statement, allow or deny, which literals and
//! parameters to encrypt under which column key, and what to do with each result column.
//!
//! Plans reference literals by index into [`crate::Lexed::literals`] and parameters by number, never by
//! value, so a cached plan applies to every statement with the same normalised text.

use crate::lexer::StatementKind;
use crate::mask::Mask;
use crate::model::{Class, EncryptMode, LogicalType};

/// SQLSTATE of every refusal (insufficient_privilege).
pub const SQLSTATE_DENY: &str = "42501";

/// A value in the statement that the proxy rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValueRef {
    /// Index into [`crate::Lexed::literals`] (the literal's text is replaced by the ciphertext literal).
    Literal(usize),
    /// A `$n` parameter (1-based), encrypted in Bind.
    Param(u32),
}

/// Encrypt one value with a column's key before it reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypt {
    pub target: ValueRef,
    /// `schema.table.column`: whose key (and associated data) to use.
    pub column: String,
    pub mode: EncryptMode,
    pub logical_type: LogicalType,
    /// The column's class (for counting values per class).
    pub class: Class,
    /// The value is an array (`col = ANY($1)`, `col = ANY('{a,b}')`): encrypt each element.
    pub array: bool,
    /// The value is stored (INSERT, UPDATE SET, ON CONFLICT), not compared: PostgreSQL's assignment
    /// casts apply (a number with a fraction into an integer column is rounded).
    pub assignment: bool,
    /// Where the value occurs and what the statement does with it there (a literal occurs once, a
    /// parameter as often as it is written). The proxy rewrites by these, never by reading the SQL
    /// around the value again.
    pub sites: Vec<Site>,
    /// For a column encrypted with each subject's key (`key = "subject"`): where the statement
    /// gives the subject the value belongs to. Always present for such a column (a statement that
    /// does not determine the subject is refused).
    pub subject: Option<SubjectValue>,
}

/// The subject id a value of a subject-keyed column belongs to, as the statement gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectValue {
    /// A literal or parameter holding the subject id: the same row's subject column in
    /// `INSERT ... VALUES`, or `subject = v` in the top-level `WHERE` conjunction of the
    /// statement (or, for `ON CONFLICT DO UPDATE`, the one row inserted).
    Value(ValueRef),
    /// `INSERT ... SELECT * FROM UNNEST(...)`: the array of subject ids; element i belongs to
    /// subject i.
    Elements(ValueRef),
}

/// One occurrence of a value to encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// For a parameter, the index of its `$n` token among the statement's parameter tokens
    /// ([`crate::StatementSpan::params`]); 0 for a literal.
    pub token: u32,
    pub role: SiteRole,
}

/// What the statement does with a value at one [`Site`]: decides how the proxy may write it when the
/// column's key has several versions (a comparison can match every version's ciphertext; a stored value
/// is always the active version's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteRole {
    /// Stored: INSERT values, UPDATE SET, ON CONFLICT DO UPDATE SET.
    Stored,
    /// The right operand of `col = v` (`negated`: `col <> v`, `col != v`), nothing around the value but
    /// casts: the proxy may write `col = ANY (every version)` (`<> ALL`) in the value's place.
    Compared { negated: bool },
    /// An element of [`StatementPlan::in_lists`]`[list]`.
    Listed { list: u32 },
    /// Anything else (the left operand, `CASE x WHEN v`, `IS DISTINCT FROM`, an array element, an
    /// EXECUTE argument): the active version only.
    Other,
}

/// `col [NOT] IN (e1, ..., ek)` with `col` encrypted: the list's elements as the analysis read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InList {
    pub negated: bool,
    pub elements: Vec<ListElement>,
}

/// One element of an [`InList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListElement {
    /// A literal or parameter (possibly cast), at `token` as in [`Site::token`].
    Value { value: ValueRef, token: u32 },
    /// `NULL` (possibly cast).
    Null,
    /// Anything else: the list cannot be rewritten as one array comparison.
    Other,
}

/// Allow or refuse a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Answer with an ErrorResponse; `message` starts with `pgcloak: ` and names the column and rule.
    Deny {
        sqlstate: &'static str,
        message: String,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// The refusal message (`None` for `Allow`).
    pub fn message(&self) -> Option<&str> {
        match self {
            Decision::Allow => None,
            Decision::Deny { message, .. } => Some(message),
        }
    }
}

/// Where a result column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Exactly the value of this protected column (`schema.table.column`).
    Direct(String),
    /// Computed from these protected columns (possibly none, e.g. `count(*)`); the result is not a
    /// column value and is passed through.
    Expression(Vec<String>),
    /// No protected lineage.
    None,
}

/// What the proxy does to each value of a result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputAction {
    /// Forward as received.
    PassThrough,
    /// Decrypt with the column's key; present as `logical_type`.
    Decrypt {
        column: String,
        logical_type: LogicalType,
        class: Class,
    },
    /// Decrypt if the column is encrypted, then mask; the client sees type `text`.
    Mask {
        column: String,
        mask: Mask,
        logical_type: LogicalType,
        encrypted: bool,
        class: Class,
    },
    /// Replace every value with NULL (type `text` to the client).
    Null { class: Class },
}

/// One result column, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub index: usize,
    /// Column name as PostgreSQL will label it (best effort; the RowDescription is authoritative).
    pub name: String,
    pub source: Source,
    pub action: OutputAction,
}

/// How a column was touched, for the audit record's `columns` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TouchAccess {
    /// Returned decrypted / in clear.
    Plaintext,
    /// Returned masked.
    Masked,
    /// Returned as NULL.
    Null,
    /// Refused.
    Deny,
    /// Inserted, updated or copied in.
    Write,
    /// Only compared, counted or grouped on (no value returned).
    Filter,
}

impl TouchAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            TouchAccess::Plaintext => "plaintext",
            TouchAccess::Masked => "masked",
            TouchAccess::Null => "null",
            TouchAccess::Deny => "deny",
            TouchAccess::Write => "write",
            TouchAccess::Filter => "filter",
        }
    }
}

/// One protected column touched by a statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnTouch {
    /// `schema.table.column`.
    pub name: String,
    pub class: Class,
    pub access: TouchAccess,
}

/// COPY direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// `COPY ... FROM`: data flows client → server.
    From,
    /// `COPY ... TO`: data flows server → client.
    To,
}

/// Where COPY data goes / comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEndpoint {
    Stdin,
    Stdout,
    /// A server-side file or program: data never passes through the proxy.
    ServerSide,
}

/// COPY data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// The key a COPY field is encrypted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnKey {
    /// `schema.table.column`.
    pub column: String,
    pub mode: EncryptMode,
    pub logical_type: LogicalType,
    /// The column's class (for counting values per class).
    pub class: Class,
}

/// One column of COPY data, in data order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyColumn {
    pub name: String,
    /// For `COPY FROM`: encrypt this field (text form of the logical type) with the column's key.
    pub encrypt: Option<ColumnKey>,
    /// CSV `COPY FROM` with `FORCE_NULL (col)`: a quoted field equal to the null string is NULL too.
    pub force_null: bool,
    /// CSV `COPY FROM` with `FORCE_NOT_NULL (col)`: a field equal to the null string is that string,
    /// never NULL (so it is encrypted like any other value).
    pub force_not_null: bool,
}

/// What the proxy needs to rewrite COPY data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInfo {
    pub direction: CopyDirection,
    pub endpoint: CopyEndpoint,
    /// `schema.table` for the table form; `None` for `COPY (query) TO`.
    pub table: Option<String>,
    pub columns: Vec<CopyColumn>,
    pub format: CopyFormat,
    pub delimiter: Option<char>,
    pub null: Option<String>,
    pub header: bool,
    pub quote: Option<char>,
    pub escape: Option<char>,
    /// `COPY ... FROM` with subject-keyed columns: the position (in `columns`) of the field
    /// naming each row's subject.
    pub subject: Option<usize>,
}

/// Session-level effects the proxy should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// `SET ROLE`, `RESET ROLE`, `SET SESSION AUTHORIZATION`, `set_config('role', ..)`: allowed, and does
    /// NOT change the policy role (that follows the login user).
    RoleChangeIgnored,
    /// `SET search_path` / `set_config('search_path', ..)`: refresh the session's search path.
    SearchPathChanged,
}

/// `EXECUTE name(args)`: the proxy looks up the plan of `PREPARE name` and applies it with
/// [`StatementPlan::bind_execute`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteInfo {
    pub name: String,
    /// Argument i is `$i+1` of the prepared statement: a literal/parameter, NULL (`None`), or an
    /// expression the proxy cannot encrypt (`Some(Err(()))`).
    pub args: Vec<ExecuteArg>,
}

/// One argument of `EXECUTE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecuteArg {
    /// A literal or parameter, with its [`Site::token`].
    Value(ValueRef, u32),
    Null,
    /// A computed argument: fine unless the prepared statement needs it encrypted.
    Expression,
}

/// Cursor statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorUse {
    /// `DECLARE name CURSOR FOR <select>`: this plan's outputs apply to later `FETCH`es of `name`.
    Declare(String),
    /// `FETCH`/`MOVE ... name`: rows come from cursor `name`; use [`StatementPlan::for_fetch`].
    Fetch(String),
}

/// The plan of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementPlan {
    /// Position in the SQL string (0-based), matching [`crate::Lexed::statements`].
    pub index: usize,
    pub kind: StatementKind,
    pub decision: Decision,
    /// `schema.table` of every table named (protected or not), sorted.
    pub tables: Vec<String>,
    /// Protected columns touched and how, sorted.
    pub columns: Vec<ColumnTouch>,
    pub encryptions: Vec<Encrypt>,
    /// The `IN` lists of encrypted columns, referenced by [`SiteRole::Listed`].
    pub in_lists: Vec<InList>,
    /// Result columns in order. Empty when the statement returns no rows, or returns nothing protected
    /// at a position that could be determined (then everything passes through).
    pub outputs: Vec<Output>,
    /// The role's `max_rows`, when the statement returns sensitive/confidential values.
    pub max_rows: Option<u64>,
    /// The statement returns sensitive/confidential values (its rows count against the role's
    /// export budget, `max_rows_per_window`).
    pub classified: bool,
    /// For COPY.
    pub copy: Option<CopyInfo>,
    /// `PREPARE name AS ...`: this plan is the inner statement's plan; remember it under `name`.
    pub prepare: Option<String>,
    pub execute: Option<ExecuteInfo>,
    pub cursor: Option<CursorUse>,
    pub effects: Vec<SessionEffect>,
}

impl StatementPlan {
    pub(crate) fn new(index: usize, kind: StatementKind) -> StatementPlan {
        StatementPlan {
            index,
            kind,
            decision: Decision::Allow,
            tables: Vec::new(),
            columns: Vec::new(),
            encryptions: Vec::new(),
            in_lists: Vec::new(),
            outputs: Vec::new(),
            max_rows: None,
            classified: false,
            copy: None,
            prepare: None,
            execute: None,
            cursor: None,
            effects: Vec::new(),
        }
    }

    /// Nothing to rewrite for this statement (it may still be audited).
    pub fn is_trivial(&self) -> bool {
        self.decision.is_allow()
            && self.encryptions.is_empty()
            && self
                .outputs
                .iter()
                .all(|o| o.action == OutputAction::PassThrough)
            && self.max_rows.is_none()
            && self
                .copy
                .as_ref()
                .is_none_or(|c| c.columns.iter().all(|col| col.encrypt.is_none()))
            && self.prepare.is_none()
            && self.execute.is_none()
            && self.cursor.is_none()
    }

    /// The message of a refusal.
    pub fn deny_message(&self) -> Option<&str> {
        match &self.decision {
            Decision::Deny { message, .. } => Some(message),
            Decision::Allow => None,
        }
    }

    /// The plan for `EXECUTE` (this plan, with [`StatementPlan::execute`] set) given the plan stored for
    /// `PREPARE name` (`None` when the name was never prepared through pgcloak). Parameter `$i` of the
    /// prepared plan becomes argument i of the EXECUTE. Refuses when an argument that must be encrypted
    /// is an expression, or when the prepared statement was refused.
    pub fn bind_execute(&self, prepared: Option<&StatementPlan>) -> StatementPlan {
        let Some(exec) = &self.execute else {
            return self.clone();
        };
        let Some(prepared) = prepared else {
            let mut p = self.clone();
            p.execute = None;
            return p;
        };
        let mut out = prepared.clone();
        out.index = self.index;
        out.prepare = None;
        out.execute = None;
        if !out.decision.is_allow() {
            return out;
        }
        let mut encryptions = Vec::new();
        for e in &prepared.encryptions {
            match e.target {
                ValueRef::Param(n) => {
                    let arg = usize::try_from(n)
                        .ok()
                        .and_then(|n| n.checked_sub(1))
                        .and_then(|i| exec.args.get(i));
                    match arg {
                        // The PREPARE text was rewritten when it was prepared; here the value is an
                        // argument of EXECUTE, compared or stored by the prepared statement.
                        Some(ExecuteArg::Value(v, token)) => encryptions.push(Encrypt {
                            target: *v,
                            sites: vec![Site {
                                token: *token,
                                role: SiteRole::Other,
                            }],
                            ..e.clone()
                        }),
                        Some(ExecuteArg::Null) => {}
                        Some(ExecuteArg::Expression) | None => {
                            out.decision = Decision::Deny {
                                sqlstate: SQLSTATE_DENY,
                                message: format!(
                                    "pgcloak: EXECUTE {}: argument ${n} goes to encrypted column {} and must be a literal or a parameter",
                                    exec.name, e.column
                                ),
                            };
                            return out;
                        }
                    }
                }
                // Literals of the PREPARE text were already encrypted when it was prepared.
                ValueRef::Literal(_) => {}
            }
        }
        out.encryptions = encryptions;
        out.in_lists = Vec::new();
        out
    }

    /// The plan for `FETCH` from a cursor given the plan of its `DECLARE` (`None` when the cursor was not
    /// declared through pgcloak, e.g. a refcursor opened by a function: values then pass through as the
    /// server sends them, so encrypted columns stay ciphertext).
    pub fn for_fetch(&self, declared: Option<&StatementPlan>) -> StatementPlan {
        let mut out = self.clone();
        if let Some(d) = declared {
            out.outputs = d.outputs.clone();
            out.max_rows = d.max_rows;
            out.classified = d.classified;
            out.columns = d.columns.clone();
            out.tables = d.tables.clone();
            if !d.decision.is_allow() {
                out.decision = d.decision.clone();
            }
        }
        out
    }
}

/// The plan of a whole SQL string: one [`StatementPlan`] per statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub statements: Vec<StatementPlan>,
    /// False when the plan depends on the content of literals (e.g. `DO` bodies, `set_config`, COPY
    /// options), so it must not be reused for another statement with the same normalised text.
    pub cacheable: bool,
}

impl Plan {
    /// Nothing needs doing: forward untouched (still audit).
    pub fn is_trivial(&self) -> bool {
        self.statements.iter().all(StatementPlan::is_trivial)
    }

    /// The first refusal, if any statement is refused.
    pub fn denied(&self) -> Option<&StatementPlan> {
        self.statements.iter().find(|s| !s.decision.is_allow())
    }
}
