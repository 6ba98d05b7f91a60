//! The policy model: column classes, encryption modes, masks and role access, parsed from the policy TOML.
//!
//! Parsing collects every problem (with `file:line` and the fix) instead of stopping at the first, so
//! `pgcloak check` can list them all at once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{PolicyError, PolicyIssue};
use crate::mask::Mask;

/// Sensitivity class of a column, ordered `public < internal < sensitive < confidential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Public,
    Internal,
    Sensitive,
    Confidential,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Public,
        Class::Internal,
        Class::Sensitive,
        Class::Confidential,
    ];

    pub fn parse(s: &str) -> Option<Class> {
        match s {
            "public" => Some(Class::Public),
            "internal" => Some(Class::Internal),
            "sensitive" => Some(Class::Sensitive),
            "confidential" => Some(Class::Confidential),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Public => "public",
            Class::Internal => "internal",
            Class::Sensitive => "sensitive",
            Class::Confidential => "confidential",
        }
    }

    /// `sensitive` and `confidential`: the classes `max_rows` and `copy_out` are about.
    pub fn is_classified(self) -> bool {
        self >= Class::Sensitive
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a role may read a class of columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Plaintext,
    Masked,
    Null,
    Deny,
}

impl Access {
    /// How much of a value the access reveals: `deny < null < masked < plaintext`.
    fn rank(self) -> u8 {
        match self {
            Access::Deny => 0,
            Access::Null => 1,
            Access::Masked => 2,
            Access::Plaintext => 3,
        }
    }

    /// The more revealing of two accesses (what a grant raises to; it never lowers).
    pub fn raised_to(self, other: Access) -> Access {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "plaintext" => Some(Access::Plaintext),
            "masked" => Some(Access::Masked),
            "null" => Some(Access::Null),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Plaintext => "plaintext",
            Access::Masked => "masked",
            Access::Null => "null",
            Access::Deny => "deny",
        }
    }

    fn default_for(class: Class) -> Access {
        match class {
            Class::Public | Class::Internal => Access::Plaintext,
            Class::Sensitive | Class::Confidential => Access::Deny,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Encryption mode of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptMode {
    None,
    Randomized,
    Deterministic,
}

impl EncryptMode {
    pub fn parse(s: &str) -> Option<EncryptMode> {
        match s {
            "none" => Some(EncryptMode::None),
            "randomized" => Some(EncryptMode::Randomized),
            "deterministic" => Some(EncryptMode::Deterministic),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EncryptMode::None => "none",
            EncryptMode::Randomized => "randomized",
            EncryptMode::Deterministic => "deterministic",
        }
    }

    pub fn is_encrypted(self) -> bool {
        self != EncryptMode::None
    }
}

impl fmt::Display for EncryptMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The logical type clients see for a column (its storage may be `bytea`/`text` ciphertext): keymgr's,
/// the one type every crate uses.
pub use pgcloak_keymgr::LogicalType;

/// One `[[column]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPolicy {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub class: Class,
    pub encrypt: EncryptMode,
    pub logical_type: LogicalType,
    /// The mask a `masked` reader sees; `redact` when the entry names none.
    pub mask: Mask,
    /// Whose key encrypts the values: the column's (default) or each row's subject's.
    pub key: KeyScope,
    /// What a value of an erased subject reads as (subject-keyed columns).
    pub erased: Erased,
    /// Line of the entry in the policy file.
    pub line: usize,
}

/// `key = "column" | "subject"` of a `[[column]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyScope {
    /// One key per column (and key version).
    #[default]
    Column,
    /// One key per subject (the person the row belongs to, named by its table's `subject`) per
    /// column and key version: destroying a subject's keys erases its values everywhere.
    Subject,
}

/// `erased = "null" | "marker"`: what a value of an erased subject reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Erased {
    /// NULL (the default).
    #[default]
    Null,
    /// The text `[erased]` (text columns only).
    Marker,
}

/// One `[[table]]` entry: whose rows the table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePolicy {
    pub schema: String,
    pub table: String,
    /// The column naming the subject each row belongs to (`id` on a customers table,
    /// `customer_id` on orders).
    pub subject: String,
    /// Line of the entry in the policy file.
    pub line: usize,
}

impl ColumnPolicy {
    /// `schema.table.column`, the name used in plans, key ids and audit records.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// Read/write rights of one policy role (or of `[default]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    /// PostgreSQL role name; `default` for the `[default]` section.
    pub name: String,
    read: [Access; 4],
    write: [bool; 4],
    /// At most this many rows carrying sensitive/confidential values per statement.
    pub max_rows: Option<u64>,
    /// Whether `COPY ... TO` of classified columns is allowed (default true).
    pub copy_out: bool,
    /// `max_rows_per_window` and `window`: rows with classified values a user of the role may
    /// receive per window, across statements, sessions and instances.
    pub budget: Option<Budget>,
    /// `enforce = "shadow"`: decisions are audited (`would_deny`) but not enforced on reads.
    pub shadow: bool,
    /// Read access raised for one table's columns of a class (by grants, see [`RolePolicy::raised_by`]).
    raised: Vec<TableRaise>,
    /// Line of the entry in the policy file (0 for an implicit default).
    pub line: usize,
}

/// An export budget: `rows` rows with classified values per `window_secs` (fixed windows aligned
/// to the Unix epoch, so every instance agrees where one ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub rows: u64,
    pub window_secs: u64,
}

/// Read access of one table's columns of one class, above the role's access to the class.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableRaise {
    schema: String,
    table: String,
    class: Class,
    access: Access,
}

/// What one just-in-time grant gives: `access` to the columns of `class`, of one table or of all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRaise {
    pub class: Class,
    pub access: Access,
    /// `(schema, table)`; `None`: every table.
    pub table: Option<(String, String)>,
}

/// The `[grants]` section: who may approve just-in-time grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrantsPolicy {
    /// PostgreSQL roles whose members may approve a grant (never their own request).
    pub approvers: Vec<String>,
    /// Line of the section (0 when absent).
    pub line: usize,
}

/// What the analysis is given for "the policy role of this login user".
pub type RoleRef<'p> = &'p RolePolicy;

impl RolePolicy {
    fn with_defaults(name: &str, line: usize) -> RolePolicy {
        RolePolicy {
            name: name.to_string(),
            read: Class::ALL.map(Access::default_for),
            write: [true, true, false, false],
            max_rows: None,
            copy_out: true,
            budget: None,
            shadow: false,
            raised: Vec::new(),
            line,
        }
    }

    /// For a shadow role: the role its statements are served with (every class readable and
    /// writable, no limits), so writes are still encrypted while nothing is refused; the proxy
    /// passes what this role may not read in plaintext as the server returns it. Named so that it
    /// never collides with a PostgreSQL role (names cannot hold NUL).
    pub fn shadow_serving(&self) -> RolePolicy {
        RolePolicy {
            name: format!("{}\0shadow", self.name),
            read: [Access::Plaintext; 4],
            write: [true; 4],
            max_rows: None,
            copy_out: true,
            budget: None,
            shadow: false,
            raised: Vec::new(),
            line: self.line,
        }
    }

    /// This role with its read access raised by `grants` (never lowered): a grant for a class
    /// raises the class, one for a table raises that table's columns of the class. `tag` (the
    /// grant ids) makes the name differ from every other raise of the role, for plan caches, and
    /// from every PostgreSQL role (it holds a NUL).
    pub fn raised_by(&self, grants: &[GrantRaise], tag: &str) -> RolePolicy {
        let mut role = self.clone();
        role.name = format!("{}\0grants {tag}", self.name);
        for g in grants {
            match &g.table {
                None => {
                    if let Some(slot) = role.read.get_mut(g.class.index()) {
                        *slot = slot.raised_to(g.access);
                    }
                }
                Some((schema, table)) => {
                    let access = role.read_at(schema, table, g.class).raised_to(g.access);
                    role.raised.retain(|r| {
                        !(r.schema == *schema && r.table == *table && r.class == g.class)
                    });
                    role.raised.push(TableRaise {
                        schema: schema.clone(),
                        table: table.clone(),
                        class: g.class,
                        access,
                    });
                }
            }
        }
        role
    }

    /// Read access to the columns of `class` in `schema.table` (the class's, or what a grant
    /// for that table raised it to).
    pub fn read_at(&self, schema: &str, table: &str, class: Class) -> Access {
        let base = self.read(class);
        self.raised
            .iter()
            .find(|r| r.class == class && r.table == table && r.schema == schema)
            .map_or(base, |r| base.raised_to(r.access))
    }

    /// Read access to a policy column.
    pub fn read_column(&self, c: &ColumnPolicy) -> Access {
        self.read_at(&c.schema, &c.table, c.class)
    }

    /// Read access to a class.
    pub fn read(&self, class: Class) -> Access {
        self.read
            .get(class.index())
            .copied()
            .unwrap_or(Access::Deny)
    }

    /// Whether the role may insert/update columns of this class. Unclassified, `public` and `internal`
    /// columns are writable by every role; `write` only grants `sensitive` and `confidential`.
    pub fn may_write(&self, class: Class) -> bool {
        self.write.get(class.index()).copied().unwrap_or(false)
    }

    /// True for the `[default]` policy.
    pub fn is_default(&self) -> bool {
        self.name == "default"
    }
}

#[derive(Debug, Clone, Default)]
struct TableEntry {
    by_column: HashMap<String, usize>,
    order: Vec<usize>,
}

/// A parsed, validated policy file.
#[derive(Debug, Clone)]
pub struct Policy {
    file: String,
    columns: Vec<ColumnPolicy>,
    /// `[[table]]` entries (subject columns), in file order.
    tables: Vec<TablePolicy>,
    /// schema -> table -> its policy columns (nested so lookups by `&str` allocate nothing).
    schemas: HashMap<String, HashMap<String, TableEntry>>,
    table_names: Vec<String>,
    roles: Vec<RolePolicy>,
    default: RolePolicy,
    grants: GrantsPolicy,
    version: u64,
    version_hex: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    column: Vec<Spanned<RawColumn>>,
    #[serde(default)]
    table: Vec<Spanned<RawTable>>,
    #[serde(default)]
    role: Vec<Spanned<RawRole>>,
    #[serde(default)]
    default: Option<Spanned<RawDefault>>,
    #[serde(default)]
    grants: Option<Spanned<RawGrants>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    approvers: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
    encrypt: Option<Spanned<String>>,
    #[serde(rename = "type")]
    ty: Option<Spanned<String>>,
    mask: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    erased: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: Option<Spanned<String>>,
    subject: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: Option<Spanned<String>>,
    read: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    write: Option<Spanned<Vec<Spanned<String>>>>,
    max_rows: Option<Spanned<i64>>,
    max_rows_per_window: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    copy_out: Option<bool>,
    enforce: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    read: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    write: Option<Spanned<Vec<Spanned<String>>>>,
    max_rows: Option<Spanned<i64>>,
    max_rows_per_window: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    copy_out: Option<bool>,
    enforce: Option<Spanned<String>>,
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
    issues: Vec<PolicyIssue>,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    fn err(&mut self, span: Range<usize>, message: String) {
        let line = self.line_of(span.start);
        self.issues.push(PolicyIssue {
            file: self.file.to_string(),
            line: Some(line),
            message,
        });
    }
}

/// 1-based line number of a byte offset (clamped to the text).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()
        .get(..end)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
        + 1
}

/// Is `s` a lower-case unquoted PostgreSQL identifier (what policy names must be)?
fn is_plain_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
}

fn parse_read(
    ctx: &mut Ctx<'_>,
    read: &Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    into: &mut [Access; 4],
) {
    let Some(read) = read else { return };
    for (class, access) in read.get_ref() {
        let c = Class::parse(class.get_ref());
        let a = Access::parse(access.get_ref());
        match c {
            None => ctx.err(
                class.span(),
                format!(
                    "unknown class `{}` in `read`; use one of public, internal, sensitive, confidential",
                    class.get_ref()
                ),
            ),
            Some(c) => match a {
                None => ctx.err(
                    access.span(),
                    format!(
                        "unknown access `{}` for class {c}; use one of plaintext, masked, null, deny",
                        access.get_ref()
                    ),
                ),
                Some(a) => {
                    if let Some(slot) = into.get_mut(c.index()) {
                        *slot = a;
                    }
                }
            },
        }
    }
}

fn parse_write(
    ctx: &mut Ctx<'_>,
    write: &Option<Spanned<Vec<Spanned<String>>>>,
    into: &mut [bool; 4],
) {
    let Some(write) = write else { return };
    for class in write.get_ref() {
        match Class::parse(class.get_ref()) {
            Some(c) => {
                if let Some(slot) = into.get_mut(c.index()) {
                    *slot = true;
                }
            }
            None => ctx.err(
                class.span(),
                format!(
                    "unknown class `{}` in `write`; use one of public, internal, sensitive, confidential",
                    class.get_ref()
                ),
            ),
        }
    }
}

fn parse_grants(ctx: &mut Ctx<'_>, raw: Option<&Spanned<RawGrants>>) -> GrantsPolicy {
    let Some(raw) = raw else {
        return GrantsPolicy::default();
    };
    let line = ctx.line_of(raw.span().start);
    let Some(list) = &raw.get_ref().approvers else {
        ctx.err(
            raw.span(),
            "[grants] has no `approvers`; add approvers = [\"<postgresql role>\", ...] (members of these roles approve grants)".to_string(),
        );
        return GrantsPolicy::default();
    };
    let mut approvers = Vec::new();
    for a in list.get_ref() {
        if a.get_ref().is_empty() {
            ctx.err(
                a.span(),
                "an approver role name is empty; give a PostgreSQL role name".to_string(),
            );
        } else if !approvers.contains(a.get_ref()) {
            approvers.push(a.get_ref().clone());
        }
    }
    if approvers.is_empty() && list.get_ref().is_empty() {
        ctx.err(
            list.span(),
            "[grants] approvers is empty, so no grant could ever be approved; name at least one PostgreSQL role".to_string(),
        );
    }
    GrantsPolicy { approvers, line }
}

fn parse_budget(
    ctx: &mut Ctx<'_>,
    rows: &Option<Spanned<i64>>,
    window: &Option<Spanned<String>>,
) -> Option<Budget> {
    let window_secs = match window {
        None => 3600,
        Some(w) => match parse_duration(w.get_ref()) {
            Some(s) => s,
            None => {
                ctx.err(
                    w.span(),
                    format!(
                        "window = {:?} is not a duration; write e.g. \"1h\", \"30m\" or \"1d\"",
                        w.get_ref()
                    ),
                );
                return None;
            }
        },
    };
    let Some(rows) = rows else {
        if let Some(w) = window {
            ctx.err(
                w.span(),
                "`window` without `max_rows_per_window` limits nothing; add max_rows_per_window = <rows> or remove window".to_string(),
            );
        }
        return None;
    };
    match u64::try_from(*rows.get_ref()) {
        Ok(n) => Some(Budget {
            rows: n,
            window_secs,
        }),
        Err(_) => {
            ctx.err(
                rows.span(),
                format!(
                    "max_rows_per_window = {} is negative; use a row count of 0 or more",
                    rows.get_ref()
                ),
            );
            None
        }
    }
}

fn parse_max_rows(ctx: &mut Ctx<'_>, max_rows: &Option<Spanned<i64>>) -> Option<u64> {
    let m = max_rows.as_ref()?;
    match u64::try_from(*m.get_ref()) {
        Ok(v) => Some(v),
        Err(_) => {
            ctx.err(
                m.span(),
                format!(
                    "max_rows = {} is negative; use a row count of 0 or more",
                    m.get_ref()
                ),
            );
            None
        }
    }
}

impl Policy {
    /// Parse and validate a policy file. `file` is only used in messages (`file:line: ...`).
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let mut ctx = Ctx {
            text,
            file,
            issues: Vec::new(),
        };
        let raw: RawPolicy = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start));
                let message = toml_message(e.message());
                return Err(PolicyError::Invalid(vec![PolicyIssue {
                    file: file.to_string(),
                    line,
                    message,
                }]));
            }
        };

        let mut columns = Vec::new();
        let mut first_line: HashMap<(String, String, String), usize> = HashMap::new();
        for entry in &raw.column {
            let span = entry.span();
            let entry_line = ctx.line_of(span.start);
            let col = entry.get_ref();
            let Some(name) = &col.name else {
                ctx.err(
                    span,
                    "[[column]] entry has no `name`; add name = \"schema.table.column\""
                        .to_string(),
                );
                continue;
            };
            let parts: Vec<&str> = name.get_ref().split('.').collect();
            let valid_parts = parts.len() == 3 && parts.iter().all(|p| is_plain_identifier(p));
            let mut ok = true;
            if !valid_parts {
                let hint = if name.get_ref().chars().any(|c| c.is_ascii_uppercase()) {
                    " (names are lower-case unquoted identifiers, as PostgreSQL folds them)"
                } else {
                    ""
                };
                ctx.err(
                    name.span(),
                    format!(
                        "column name `{}` is not schema.table.column; write it like \"public.customers.email\"{hint}",
                        name.get_ref()
                    ),
                );
                ok = false;
            }
            let class = match &col.class {
                None => {
                    ctx.err(
                        span.clone(),
                        format!(
                            "column `{}` has no `class`; add class = \"public\" | \"internal\" | \"sensitive\" | \"confidential\"",
                            name.get_ref()
                        ),
                    );
                    ok = false;
                    Class::Confidential
                }
                Some(c) => match Class::parse(c.get_ref()) {
                    Some(c) => c,
                    None => {
                        ctx.err(
                            c.span(),
                            format!(
                                "unknown class `{}`; use one of public, internal, sensitive, confidential",
                                c.get_ref()
                            ),
                        );
                        ok = false;
                        Class::Confidential
                    }
                },
            };
            let encrypt = match &col.encrypt {
                None => EncryptMode::None,
                Some(m) => match EncryptMode::parse(m.get_ref()) {
                    Some(m) => m,
                    None => {
                        ctx.err(
                            m.span(),
                            format!(
                                "unknown encrypt mode `{}`; use one of none, randomized, deterministic",
                                m.get_ref()
                            ),
                        );
                        ok = false;
                        EncryptMode::Randomized
                    }
                },
            };
            let logical_type = match &col.ty {
                None => LogicalType::Text,
                Some(t) => match parse_logical_type(t.get_ref()) {
                    Some(t) => t,
                    None => {
                        ctx.err(
                            t.span(),
                            format!(
                                "unknown type `{}`; use one of text, int4, int8, numeric, date, timestamptz, bool, jsonb, bytea",
                                t.get_ref()
                            ),
                        );
                        ok = false;
                        LogicalType::Text
                    }
                },
            };
            let mask = match &col.mask {
                None => Mask::Redact,
                Some(m) => match Mask::parse(m.get_ref()) {
                    Ok(m) => m,
                    Err(why) => {
                        ctx.err(m.span(), why);
                        ok = false;
                        Mask::Redact
                    }
                },
            };
            let key_scope = match &col.key {
                None => KeyScope::Column,
                Some(k) => match k.get_ref().as_str() {
                    "column" => KeyScope::Column,
                    "subject" => KeyScope::Subject,
                    other => {
                        ctx.err(
                            k.span(),
                            format!("unknown key `{other}`; use \"column\" (one key per column) or \"subject\" (one key per data subject)"),
                        );
                        ok = false;
                        KeyScope::Column
                    }
                },
            };
            if key_scope == KeyScope::Subject && encrypt == EncryptMode::None {
                ctx.err(
                    span.clone(),
                    format!(
                        "column `{}` has key = \"subject\" but is not encrypted; add encrypt = \"randomized\" or \"deterministic\"",
                        name.get_ref()
                    ),
                );
                ok = false;
            }
            let erased = match &col.erased {
                None => Erased::Null,
                Some(e) => match e.get_ref().as_str() {
                    "null" => Erased::Null,
                    "marker" if logical_type == LogicalType::Text => Erased::Marker,
                    "marker" => {
                        ctx.err(
                            e.span(),
                            format!("erased = \"marker\" needs a text column, `{}` is {logical_type}; use erased = \"null\"", name.get_ref()),
                        );
                        ok = false;
                        Erased::Null
                    }
                    other => {
                        ctx.err(
                            e.span(),
                            format!("unknown erased `{other}`; use \"null\" or \"marker\""),
                        );
                        ok = false;
                        Erased::Null
                    }
                },
            };
            if col.erased.is_some() && key_scope != KeyScope::Subject && ok {
                ctx.err(
                    span.clone(),
                    format!(
                        "column `{}` sets `erased` but is not subject-keyed; add key = \"subject\" or drop `erased`",
                        name.get_ref()
                    ),
                );
                ok = false;
            }
            if !ok || !valid_parts {
                continue;
            }
            let (schema, table, column) = match parts.as_slice() {
                [s, t, c] => (s.to_string(), t.to_string(), c.to_string()),
                _ => continue,
            };
            let key = (schema.clone(), table.clone(), column.clone());
            if let Some(prev) = first_line.get(&key) {
                let prev = *prev;
                ctx.err(
                    name.span(),
                    format!(
                        "duplicate column `{}` (first defined at line {prev}); keep one entry",
                        name.get_ref()
                    ),
                );
                continue;
            }
            first_line.insert(key, entry_line);
            columns.push(ColumnPolicy {
                schema,
                table,
                column,
                class,
                encrypt,
                logical_type,
                mask,
                key: key_scope,
                erased,
                line: ctx.line_of(name.span().start),
            });
        }

        let tables = parse_tables(&mut ctx, &raw.table, &columns);

        let mut roles: Vec<RolePolicy> = Vec::new();
        let mut role_lines: HashMap<String, usize> = HashMap::new();
        for entry in &raw.role {
            let span = entry.span();
            let r = entry.get_ref();
            let Some(name) = &r.name else {
                ctx.err(
                    span,
                    "[[role]] entry has no `name`; add name = \"<postgresql role>\"".to_string(),
                );
                continue;
            };
            let role_name = name.get_ref().clone();
            if role_name.is_empty() {
                ctx.err(
                    name.span(),
                    "role name is empty; give the PostgreSQL role name".to_string(),
                );
                continue;
            }
            if role_name == "default" {
                ctx.err(
                    name.span(),
                    "a [[role]] cannot be named `default`; put those rules in the [default] section".to_string(),
                );
                continue;
            }
            let line = ctx.line_of(name.span().start);
            if let Some(prev) = role_lines.get(&role_name) {
                let prev = *prev;
                ctx.err(
                    name.span(),
                    format!("duplicate role `{role_name}` (first defined at line {prev}); keep one entry"),
                );
                continue;
            }
            role_lines.insert(role_name.clone(), line);
            let mut role = RolePolicy::with_defaults(&role_name, line);
            parse_read(&mut ctx, &r.read, &mut role.read);
            parse_write(&mut ctx, &r.write, &mut role.write);
            role.max_rows = parse_max_rows(&mut ctx, &r.max_rows);
            role.budget = parse_budget(&mut ctx, &r.max_rows_per_window, &r.window);
            role.copy_out = r.copy_out.unwrap_or(true);
            role.shadow = match &r.enforce {
                None => false,
                Some(e) => match e.get_ref().as_str() {
                    "enforce" => false,
                    "shadow" => true,
                    other => {
                        ctx.err(
                            e.span(),
                            format!("unknown enforce `{other}`; use \"enforce\" (the default) or \"shadow\" (audit what would be refused, refuse nothing)"),
                        );
                        false
                    }
                },
            };
            roles.push(role);
        }

        let mut default = RolePolicy::with_defaults("default", 0);
        if let Some(d) = &raw.default {
            default.line = 0;
            let d = d.get_ref();
            parse_read(&mut ctx, &d.read, &mut default.read);
            parse_write(&mut ctx, &d.write, &mut default.write);
            default.max_rows = parse_max_rows(&mut ctx, &d.max_rows);
            default.budget = parse_budget(&mut ctx, &d.max_rows_per_window, &d.window);
            default.copy_out = d.copy_out.unwrap_or(true);
            if let Some(e) = &d.enforce {
                if e.get_ref() != "enforce" {
                    ctx.err(
                        e.span(),
                        "the [default] section cannot be shadow (or anything but \"enforce\"): it protects every login in no listed role; shadow a listed [[role]] instead".to_string(),
                    );
                }
            }
        }

        let grants = parse_grants(&mut ctx, raw.grants.as_ref());

        if !ctx.issues.is_empty() {
            let mut issues = ctx.issues;
            issues.sort_by_key(|i| i.line.unwrap_or(0));
            return Err(PolicyError::Invalid(issues));
        }

        let mut schemas: HashMap<String, HashMap<String, TableEntry>> = HashMap::new();
        for (i, c) in columns.iter().enumerate() {
            let e = schemas
                .entry(c.schema.clone())
                .or_default()
                .entry(c.table.clone())
                .or_default();
            e.by_column.insert(c.column.clone(), i);
            e.order.push(i);
        }
        let mut table_names: Vec<String> = columns.iter().map(|c| c.table.clone()).collect();
        table_names.sort();
        table_names.dedup();

        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let bytes = digest.as_ref();
        let mut v = [0u8; 8];
        for (dst, src) in v.iter_mut().zip(bytes.iter()) {
            *dst = *src;
        }
        let version = u64::from_be_bytes(v);
        let version_hex = hex::encode(bytes.get(..16).unwrap_or(bytes));

        Ok(Policy {
            file: file.to_string(),
            columns,
            tables,
            schemas,
            table_names,
            roles,
            default,
            grants,
            version,
            version_hex,
        })
    }

    /// Every `[[table]]` entry, in file order.
    pub fn tables(&self) -> &[TablePolicy] {
        &self.tables
    }

    /// The `[[table]]` entry of `schema.table`, if any.
    pub fn table_policy(&self, schema: &str, table: &str) -> Option<&TablePolicy> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.table == table)
    }

    /// The file name given to [`Policy::parse`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Every `[[column]]` entry, in file order.
    pub fn columns(&self) -> &[ColumnPolicy] {
        &self.columns
    }

    fn table_entry(&self, schema: &str, table: &str) -> Option<&TableEntry> {
        self.schemas.get(schema).and_then(|t| t.get(table))
    }

    /// The entry for one column (names already folded as PostgreSQL folds them).
    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<&ColumnPolicy> {
        self.column_index(schema, table, column)
            .and_then(|i| self.columns.get(i))
    }

    /// Index into [`Policy::columns`] of one column.
    pub fn column_index(&self, schema: &str, table: &str, column: &str) -> Option<usize> {
        self.table_entry(schema, table)
            .and_then(|e| e.by_column.get(column).copied())
    }

    /// Indices into [`Policy::columns`] of one table's policy columns, in file order.
    pub fn table_column_indices(&self, schema: &str, table: &str) -> &[usize] {
        self.table_entry(schema, table)
            .map(|e| e.order.as_slice())
            .unwrap_or(&[])
    }

    /// Whether a table has any policy column.
    pub fn has_table(&self, schema: &str, table: &str) -> bool {
        self.table_entry(schema, table).is_some()
    }

    /// The policy columns of one table, in file order.
    pub fn table_columns<'s>(
        &'s self,
        schema: &str,
        table: &str,
    ) -> impl Iterator<Item = &'s ColumnPolicy> + 's {
        self.table_column_indices(schema, table)
            .iter()
            .filter_map(move |i| self.columns.get(*i))
    }

    /// Names (without schema) of every table that has a policy column — input of [`crate::lexer::names_any`].
    pub fn protected_table_names(&self) -> &[String] {
        &self.table_names
    }

    /// Listed `[[role]]` entries, in file order.
    pub fn roles(&self) -> &[RolePolicy] {
        &self.roles
    }

    /// The `[grants]` section (no approvers when absent: grants are off).
    pub fn grants(&self) -> &GrantsPolicy {
        &self.grants
    }

    /// The `[default]` rules (for login users in no listed role).
    pub fn default_role(&self) -> &RolePolicy {
        &self.default
    }

    /// A listed role by exact name.
    pub fn role_named(&self, name: &str) -> Option<&RolePolicy> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// The policy role of a login user: the first listed role (in policy-file order) among `memberships`
    /// (every role the user is a member of, transitively, including itself), else `[default]`.
    /// `SET ROLE` does not change the answer: pass the login user's memberships.
    pub fn role_for(&self, memberships: &[&str]) -> RoleRef<'_> {
        self.roles
            .iter()
            .find(|r| memberships.contains(&r.name.as_str()))
            .unwrap_or(&self.default)
    }

    /// A 64-bit version of the policy text (SHA-256 prefix), for cache keys.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Hex of the first 16 bytes of the SHA-256 of the policy text, for logs and audit.
    pub fn version_hex(&self) -> &str {
        &self.version_hex
    }
}

/// Make toml's parse messages read as a fix: they already say what is wrong; keep the first line.
fn toml_message(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    if first.starts_with("unknown field") {
        format!("{first}; remove it or fix its spelling (see the policy file format)")
    } else if first.starts_with("missing field") {
        format!("{first}; add it")
    } else {
        format!("{first}; fix the TOML syntax or the value's type")
    }
}

/// A policy file's `type = "..."`: exactly one of the lowercase names (keymgr's `FromStr` also accepts
/// other cases and surrounding blanks; policy files are held to the documented spelling).
fn parse_logical_type(s: &str) -> Option<LogicalType> {
    LogicalType::ALL.into_iter().find(|t| t.name() == s)
}

/// The `[[table]]` entries: each names a table (`schema.table`) and its subject column, once; the
/// subject column is not itself encrypted; every subject-keyed column's table has an entry.
fn parse_tables(
    ctx: &mut Ctx<'_>,
    raw: &[Spanned<RawTable>],
    columns: &[ColumnPolicy],
) -> Vec<TablePolicy> {
    let mut tables: Vec<TablePolicy> = Vec::new();
    for entry in raw {
        let span = entry.span();
        let t = entry.get_ref();
        let Some(name) = &t.name else {
            ctx.err(
                span,
                "[[table]] entry has no `name`; add name = \"schema.table\"".to_string(),
            );
            continue;
        };
        let parts: Vec<&str> = name.get_ref().split('.').collect();
        let (schema, table) = match parts.as_slice() {
            [s, t] if is_plain_identifier(s) && is_plain_identifier(t) => {
                (s.to_string(), t.to_string())
            }
            _ => {
                ctx.err(
                    name.span(),
                    format!(
                        "table name `{}` is not schema.table; write it like \"public.customers\"",
                        name.get_ref()
                    ),
                );
                continue;
            }
        };
        let Some(subject) = &t.subject else {
            ctx.err(
                span,
                format!(
                    "[[table]] `{}` has no `subject`; name the column that identifies whose row it is, e.g. subject = \"id\"",
                    name.get_ref()
                ),
            );
            continue;
        };
        if !is_plain_identifier(subject.get_ref()) {
            ctx.err(
                subject.span(),
                format!(
                    "subject `{}` is not a column name (a lower-case unquoted identifier)",
                    subject.get_ref()
                ),
            );
            continue;
        }
        let line = ctx.line_of(name.span().start);
        if let Some(prev) = tables
            .iter()
            .find(|p| p.schema == schema && p.table == table)
        {
            let prev = prev.line;
            ctx.err(
                name.span(),
                format!(
                    "duplicate table `{}` (first defined at line {prev}); keep one entry",
                    name.get_ref()
                ),
            );
            continue;
        }
        if let Some(c) = columns
            .iter()
            .find(|c| c.schema == schema && c.table == table && &c.column == subject.get_ref())
        {
            if c.encrypt.is_encrypted() {
                ctx.err(
                    subject.span(),
                    format!(
                        "the subject column {} is encrypted (line {}); a subject column must stay plaintext, because it names whose key encrypts the row",
                        c.qualified_name(),
                        c.line
                    ),
                );
                continue;
            }
        }
        tables.push(TablePolicy {
            schema,
            table,
            subject: subject.get_ref().clone(),
            line,
        });
    }
    for c in columns.iter().filter(|c| c.key == KeyScope::Subject) {
        if !tables
            .iter()
            .any(|t| t.schema == c.schema && t.table == c.table)
        {
            ctx.issues.push(PolicyIssue {
                file: ctx.file.to_string(),
                line: Some(c.line),
                message: format!(
                    "column {} has key = \"subject\" but table {}.{} names no subject; add [[table]] name = \"{}.{}\" subject = \"<column>\"",
                    c.qualified_name(),
                    c.schema,
                    c.table,
                    c.schema,
                    c.table
                ),
            });
        }
    }
    tables
}

/// Parses a duration such as `90s`, `30m`, `1h`, `2d` or `1h30m` into seconds; `None` when it is
/// not one (no unit, an unknown unit, zero, or overflow).
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !digits.is_empty() || total == 0 {
        return None;
    }
    Some(total)
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("2d"), Some(172_800));
        for bad in [
            "",
            "10",
            "0s",
            "1x",
            "h",
            "1h5",
            "-1h",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
