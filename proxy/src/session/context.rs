//! What the proxy knows about one statement on its way through: normalised text and fingerprint (for
//! the audit trail), its plan (for rewriting), and whether the proxy refused it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pgcloak_policy::{Plan, StatementKind, StatementPlan};

use pgcloak_policy::{Policy, RolePolicy};

use crate::rewrite::{RowShape, Storage};
use crate::services::DbCatalog;

/// What rewriting needs besides the plan: the policy and role it was made for, and the database's
/// catalog (storage types, table oids).
#[derive(Debug)]
pub struct DataCtx {
    pub policy: Arc<Policy>,
    /// The policy role (of the login user's memberships).
    pub role: String,
    /// That role with its access raised by `grants`, which the plan was made for.
    pub raised: Option<Arc<RolePolicy>>,
    /// The user's just-in-time grants in force when the plan was made.
    pub grants: Option<crate::grants::UserGrants>,
    pub catalog: Arc<DbCatalog>,
    /// A shadow role's (`enforce = "shadow"`) statement: the plan its policy would enforce, whose
    /// refusals are audited as `would_deny`; the plan served passes what the role may not read in
    /// plaintext as the server returns it.
    pub shadow: Option<Arc<Plan>>,
    /// The statement text (of a Parse), to plan it again when the user's grants change.
    pub sql: Option<Arc<str>>,
    /// The role's export budget (kept here: it is looked at for every execution).
    pub budget: Option<pgcloak_policy::Budget>,
}

impl DataCtx {
    /// The role the plan was made for (raised by grants, if any).
    pub fn role(&self) -> &RolePolicy {
        match &self.raised {
            Some(r) => r,
            None => self.base_role(),
        }
    }

    /// The policy role, before grants.
    pub fn base_role(&self) -> &RolePolicy {
        self.policy
            .role_named(&self.role)
            .unwrap_or_else(|| self.policy.default_role())
    }

    /// `served under grant 7` (or `grants 7, 9`) when `sp` reads a column whose access one of
    /// the grants raised: what its audit event says.
    pub fn grants_used(&self, sp: &StatementPlan) -> Option<String> {
        let grants = self.grants.as_ref()?;
        let base = self.base_role();
        let raised = self.role();
        let mut used: Vec<i64> = Vec::new();
        for c in &sp.columns {
            let mut parts = c.name.splitn(3, '.');
            let (Some(schema), Some(table), Some(column)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some(col) = self.policy.column(schema, table, column) else {
                continue;
            };
            if raised.read_column(col) == base.read_column(col) {
                continue;
            }
            for g in &grants.grants {
                if g.covers(&col.schema, &col.table, col.class) && !used.contains(&g.id) {
                    used.push(g.id);
                }
            }
        }
        if used.is_empty() {
            return None;
        }
        used.sort_unstable();
        let ids: Vec<String> = used.iter().map(i64::to_string).collect();
        Some(format!(
            "served under grant{} {}",
            if used.len() > 1 { "s" } else { "" },
            ids.join(", ")
        ))
    }

    /// Storage of an encrypted column, from the catalog.
    pub fn storage(&self, column: &str) -> Option<Storage> {
        self.catalog
            .storage
            .get(column)
            .and_then(|t| Storage::from_type_name(t))
    }
}

/// A refusal the proxy makes the server raise (so transaction state follows PostgreSQL's rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: &'static str,
    /// Starts with `pgcloak: `.
    pub message: String,
}

/// One statement of a Query string, or the statement of a prepared statement/portal.
#[derive(Debug)]
pub struct StmtCtx {
    pub kind: StatementKind,
    /// Normalised text: literals replaced by `$n`, so no value ever reaches the audit trail.
    pub text: String,
    pub fingerprint: u64,
    /// The plan of the whole string and this statement's index in it (`None`: names no protected table).
    pub plan: Option<Arc<Plan>>,
    pub index: usize,
    pub refusal: Option<Refusal>,
    /// A shadow role's statement the policy would refuse (served all the same): why.
    pub would_deny: Option<String>,
    /// The statement reads columns with access raised by grants: which (its audit `reason`).
    pub under_grants: Option<String>,
    /// Policy, role and catalog the plan was made with (present with a plan).
    pub data: Option<Arc<DataCtx>>,
    /// The result columns as described by the server (Describe of the prepared statement, or of any
    /// portal bound to it), with their actions; each portal applies its own result formats. An empty
    /// shape: the statement returns no rows (NoData).
    pub described: Mutex<Option<RowShape>>,
    /// A Describe of this statement was forwarded: its answer sets `described` before any rows of
    /// a later Execute arrive, so the frontend need not ask for one itself.
    pub describe_sent: AtomicBool,
    /// Parameter types the client declared in Parse (what it encodes its values as).
    pub param_types: std::sync::OnceLock<Vec<u32>>,
    /// Parameters compared with a rotated deterministic column, rewritten from `col = $n` to
    /// `col = ANY($n)`: the client's scalar becomes an array of its ciphertext under every key version.
    pub any_params: std::sync::OnceLock<Vec<u32>>,
    /// The storage of each encrypted parameter's column, in the plan's order, looked up in the
    /// catalog at the first Bind: the plan and catalog of a statement never change, and a prepared
    /// statement is bound once per execution.
    pub param_storage: std::sync::OnceLock<Vec<Option<Storage>>>,
    /// The last RowDescription seen for this statement and what it was rewritten to: libpq describes
    /// the portal on every execution of a prepared statement, with the same bytes each time.
    pub last_description: Mutex<Option<Described>>,
    /// What its audit events say about it (kind, text, fingerprint, tables, columns), formatted
    /// at its first event and shared by every later execution.
    pub audit: std::sync::OnceLock<Arc<pgcloak_audit::EventStatement>>,
}

/// A RowDescription as the server sent it, the frame the client gets instead (`None`: unchanged),
/// and the row shape it gives.
#[derive(Debug, Clone)]
pub struct Described {
    pub server_body: Vec<u8>,
    pub frame: Option<bytes::Bytes>,
    pub shape: RowShape,
}

/// A bound portal: its statement and the result formats the client asked for.
#[derive(Debug)]
pub struct PortalCtx {
    pub stmt: Arc<StmtCtx>,
    pub result_formats: Vec<i16>,
    /// Set when the portal itself was described.
    pub described: Mutex<Option<RowShape>>,
    /// A Describe of this portal was forwarded since its Bind (its answer comes before its rows).
    pub describe_sent: AtomicBool,
}

impl PortalCtx {
    pub fn new(stmt: Arc<StmtCtx>, result_formats: Vec<i16>) -> PortalCtx {
        PortalCtx {
            stmt,
            result_formats,
            described: Mutex::new(None),
            describe_sent: AtomicBool::new(false),
        }
    }

    /// Whether the shape of this portal's rows is known, or will be by the time its rows arrive (a
    /// Describe of it or of its statement is on its way). When not, an Execute must ask the server
    /// for it first: drivers that cache prepared statements (pgJDBC, asyncpg, Npgsql, pgx) send
    /// only Bind and Execute, and rows whose shape is unknown cannot be decrypted.
    pub fn shape_known(&self) -> bool {
        self.describe_sent.load(Ordering::Relaxed)
            || self.stmt.describe_sent.load(Ordering::Relaxed)
            || lock_shape(&self.described).is_some()
            || lock_shape(&self.stmt.described).is_some()
    }
}

/// Locks a remembered row shape (a poisoned lock still holds a valid shape).
pub fn lock_shape(m: &Mutex<Option<RowShape>>) -> std::sync::MutexGuard<'_, Option<RowShape>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StmtCtx {
    /// A statement nothing is known about (not analysed).
    pub fn plain(kind: StatementKind, text: String, fingerprint: u64) -> StmtCtx {
        StmtCtx {
            kind,
            text,
            fingerprint,
            plan: None,
            index: 0,
            refusal: None,
            would_deny: None,
            under_grants: None,
            data: None,
            described: Mutex::new(None),
            describe_sent: AtomicBool::new(false),
            param_types: std::sync::OnceLock::new(),
            any_params: std::sync::OnceLock::new(),
            param_storage: std::sync::OnceLock::new(),
            last_description: Mutex::new(None),
            audit: std::sync::OnceLock::new(),
        }
    }

    /// A statement known only by its refusal (tests, and refusals before analysis).
    pub fn refused(sqlstate: &'static str, message: String) -> StmtCtx {
        StmtCtx {
            refusal: Some(Refusal { sqlstate, message }),
            ..StmtCtx::plain(StatementKind::Other, String::new(), 0)
        }
    }

    pub fn statement_plan(&self) -> Option<&StatementPlan> {
        self.plan.as_ref()?.statements.get(self.index)
    }

    /// The export budget this statement's rows count against: the role's, when it returns
    /// classified values.
    #[inline]
    pub fn budget(&self) -> Option<pgcloak_policy::Budget> {
        let sp = self.statement_plan()?;
        if !sp.classified || !sp.decision.is_allow() {
            return None;
        }
        self.data.as_ref()?.budget
    }

    /// Whether the statement's rows are limited (`max_rows`, or an export budget): the client's
    /// next messages wait until it completes, so that a cut statement aborts what follows.
    #[inline]
    pub fn row_limited(&self) -> bool {
        self.statement_plan()
            .is_some_and(|sp| sp.max_rows.is_some())
            || self.budget().is_some()
    }
}

/// Builds the one-statement Query that makes the server raise `refusal` itself: the transaction is then
/// aborted (or the implicit one rolled back) exactly as for any failing statement.
pub fn raise_sql(refusal: &Refusal) -> String {
    let quote = |s: &str| s.replace('\'', "''");
    // The dollar-quote tag cannot occur in the body: quote() leaves `$` alone, so strip the tag's
    // delimiter from the message rather than trust its content.
    let message = refusal.message.replace("$pgcloak$", "$ pgcloak $");
    format!(
        "DO $pgcloak$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'; END$pgcloak$",
        quote(refusal.sqlstate),
        quote(&message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_sql_quotes_the_message() {
        let sql = raise_sql(&Refusal {
            sqlstate: "42501",
            message: "pgcloak: it's $pgcloak$ END; DROP".into(),
        });
        assert!(
            sql.contains("'pgcloak: it''s $ pgcloak $ END; DROP'"),
            "{sql}"
        );
        assert_eq!(sql.matches("$pgcloak$").count(), 2);
    }
}
