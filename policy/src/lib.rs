//! pgcloak-policy: the policy model, SQL analysis and decisions of pgcloak. Pure: no I/O, no unsafe code,
//! and no panics on any input (sqlparser runs with a recursion limit, our own walk has a depth limit and
//! walks long AND/OR/UNION/operator chains iteratively, and oversized statements are not parsed).
//!
//! # Layout
//!
//! - [`model`] — the policy file: [`Policy::parse`] (every problem as `file:line: what, and the fix`),
//!   column classes, encryption modes, logical types, masks, role access, [`Policy::role_for`].
//! - [`mask`] — [`apply_mask`]: `last4`, `email`, `redact`, `hash` (keyed pseudonym), `partial(F,B)`.
//!   A masked column is presented to the client as type `text`.
//! - [`lexer`] — [`lex`]: one pass following PostgreSQL's lexical rules → normalised text (literals as
//!   `$n`, what the audit trail records), fingerprint, statements and their kind, literal spans,
//!   identifiers; [`names_any`] to skip full analysis for statements naming no protected table.
//! - [`catalog`] — [`Catalog`]: the tables and column order the proxy read from the database, and the
//!   search path.
//! - [`analyze`] — [`analyze()`]: sqlparser (PostgreSQL dialect) analysis → [`Plan`].
//! - [`plan`] — the plan types: per statement a [`Decision`], [`Encrypt`] for each literal/parameter that
//!   reaches an encrypted column, an [`Output`] per result column, COPY, PREPARE/EXECUTE and cursor info.
//! - [`cache`] — [`PlanCache`]: plans shared across sessions, keyed by [`PlanKey`].
//! - [`check`] — `pgcloak check`: every problem of a policy against the database's storage types.
//!
//! # How the proxy uses it, per statement string
//!
//! ```text
//! let lexed = lex(sql);
//! if !names_any(&lexed, policy.protected_table_names()) { forward; audit lexed.normalized; }
//! let role = policy.role_for(&memberships_of_login_user);            // SET ROLE does not change it
//! let key = PlanKey::of(&lexed, &role.name, &policy, &catalog);
//! let plan = cache.get_or_insert_with(&key, lexed.fingerprint, || analyze(sql, &lexed, &catalog, &policy, role));
//! for each statement plan: Deny → ErrorResponse 42501 with its message;
//!     encryptions → replace literal `lexed.literals[i].span` / Bind parameter `$n` with the ciphertext;
//!     outputs → per DataRow column: PassThrough | Decrypt | Mask (then `text`) | Null; max_rows;
//!     prepare/execute/cursor → remember/lookup with `bind_execute` / `for_fetch`; copy → rewrite COPY data.
//! ```
//!
//! # Decisions (what is refused and why)
//!
//! Read access per class is `plaintext | masked | null | deny`. A `deny` column cannot be used at all; a
//! `null` column only returned (as NULL); a `masked` column returned masked, compared for equality, tested
//! for NULL, counted and grouped — never ordered, range-compared, pattern-matched or computed on. An
//! encrypted column can only be returned, tested for NULL, counted, and (deterministic mode) compared
//! for equality with a literal, a parameter or itself, and grouped. Results computed from protected
//! columns pass through as computed, so the computation itself must be allowed (`count(col)`,
//! `col IS NULL` are the harmless cases). Whole-row references need plaintext access to every protected
//! column of the row. Writes need the class in the role's `write` list (unclassified, `public` and
//! `internal` columns are writable by every role); values for encrypted columns must be literals or
//! parameters. `COPY ... TO` of sensitive/confidential columns needs `copy_out` (default true); COPY
//! to/from server files touching protected columns, and binary COPY *out* of protected columns, are refused.
//! A statement that names a protected table but cannot be fully analysed is refused (fail closed).
//!
//! Known limits (the proxy's per-ciphertext key check is the backstop): views and functions over
//! protected tables are invisible here (`SELECT * FROM customer_view` passes through, ciphertext stays
//! ciphertext); `U&"..."` identifiers, `FROM ONLY`, MERGE and `TABLE t` fail closed when they name a
//! protected table, and so do statements nesting `(`/`[`/`CASE` deeper than
//! [`analyze::MAX_NESTING`] (sqlparser backtracks exponentially on some nested forms) or larger than
//! 256 KiB. `DO` blocks and function bodies are checked only for the protected table names they
//! contain; dynamic SQL inside them is not analysed.

// Parses untrusted SQL: no unwrap, expect, panic or unchecked indexing outside tests (the linter
// holds the "no panic on any input" claim; the fuzz targets in fuzz/ check it at run time).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![forbid(unsafe_code)]

pub mod analyze;
pub mod cache;
pub mod catalog;
pub mod check;
pub mod discover;
pub mod error;
pub mod lexer;
pub mod mask;
pub mod model;
pub mod plan;

pub use analyze::analyze;
pub use cache::{PlanCache, PlanKey};
pub use catalog::Catalog;
pub use check::{check, check_text, Problem, StorageTypes};
pub use error::{PolicyError, PolicyIssue};
pub use lexer::{
    lex, names_any, Idents, Lexed, Literal, LiteralKind, ParamToken, StatementKind, StatementSpan,
};
pub use mask::{apply_mask, Mask, MaskedValue};
pub use model::parse_duration;
pub use model::{
    Access, Budget, Class, ColumnPolicy, EncryptMode, Erased, GrantRaise, GrantsPolicy, KeyScope,
    LogicalType, Policy, RolePolicy, RoleRef, TablePolicy,
};
pub use plan::{
    ColumnKey, ColumnTouch, CopyColumn, CopyDirection, CopyEndpoint, CopyFormat, CopyInfo,
    CursorUse, Decision, Encrypt, ExecuteArg, ExecuteInfo, InList, ListElement, Output,
    OutputAction, Plan, SessionEffect, Site, SiteRole, Source, StatementPlan, SubjectValue,
    TouchAccess, ValueRef,
};
