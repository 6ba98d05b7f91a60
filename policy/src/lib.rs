//! pgcloak-policy: the policy model, SQL analysis and decisions of pgcloak. Pure: no I/O, no unsafe code,
//! and no panics on any input.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod cache;
pub mod catalog;
pub mod check;
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
pub use lexer::{lex, names_any, Lexed, Literal, LiteralKind, StatementKind, StatementSpan};
pub use mask::{apply_mask, Mask, MaskedValue};
pub use model::{
    Access, Class, ColumnPolicy, EncryptMode, LogicalType, Policy, RolePolicy, RoleRef,
};
pub use plan::{
    ColumnTouch, CopyColumn, CopyDirection, CopyEndpoint, CopyFormat, CopyInfo, CursorUse,
    Decision, Encrypt, ExecuteArg, ExecuteInfo, Output, OutputAction, Plan, SessionEffect, Source,
    StatementPlan, TouchAccess, ValueRef,
};
