//! `pgcloak policy impact --policy NEW.toml`: what enforcing a new policy would change, before it
//! does. The statements of the audit trail (normalised text, literals already replaced, so no value
//! is read or shown) are analysed again under the policy in force and under NEW, for the role each
//! login user would have under each (memberships read as the `[catalog]` user), and every
//! difference is reported: statements newly refused or newly allowed, result columns newly masked
//! or nulled, row limits newly applied, COPY TO newly refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pgcloak_audit::{AuditEvent, Kind};
use pgcloak_policy::{analyze, lex, OutputAction, Plan, Policy, RolePolicy};

use crate::catalog::{CatalogConn, CatalogError};
use crate::config::Config;

/// One difference, for every (database, user, statement) it applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// `refused`, `allowed`, `masked`, `nulled`, `limited`, `copy_refused`.
    pub change: &'static str,
    pub database: String,
    pub user: String,
    /// The policy role now and under NEW.
    pub role_now: String,
    pub role_new: String,
    pub fingerprint: String,
    pub statement: String,
    /// How often the trail holds the statement for this user.
    pub count: u64,
    /// The column, limit or refusal message concerned.
    pub detail: String,
}

/// Statement kinds worth replaying.
fn replayable(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Select
            | Kind::Insert
            | Kind::Update
            | Kind::Delete
            | Kind::Copy
            | Kind::Ddl
            | Kind::Other
    )
}

struct Group {
    fingerprint: String,
    count: u64,
}

/// Replays `events` under `now` and `new`.
pub fn impact(
    config: &Config,
    now: &Policy,
    new: &Policy,
    events: &[AuditEvent],
) -> Result<Vec<Change>, CatalogError> {
    // (database, user, statement) -> fingerprint, count
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    for ev in events.iter().filter(|e| replayable(e.kind)) {
        let Some(stmt) = &ev.statement else { continue };
        let g = groups
            .entry((ev.database.clone(), ev.user.clone(), stmt.clone()))
            .or_insert_with(|| Group {
                fingerprint: ev.fingerprint.clone().unwrap_or_default(),
                count: 0,
            });
        g.count += 1;
    }
    let mut out = Vec::new();
    let mut by_db: BTreeMap<&str, Vec<(&str, &str, &Group)>> = BTreeMap::new();
    for ((db, user, stmt), g) in &groups {
        by_db
            .entry(db.as_str())
            .or_default()
            .push((user.as_str(), stmt.as_str(), g));
    }
    for (db, items) in by_db {
        let mut cfg = config.clone();
        cfg.catalog.database = db.to_string();
        let conn = CatalogConn::connect_blocking(&cfg)?;
        let cat_now = conn.block_on(crate::services::fetch_catalog(conn.client(), now, db, 0))?;
        let cat_new = conn.block_on(crate::services::fetch_catalog(conn.client(), new, db, 1))?;
        let mut roles: BTreeMap<&str, (String, String)> = BTreeMap::new();
        for (user, stmt, g) in items {
            if !roles.contains_key(user) {
                let rows = conn.query(
                    "SELECT rolname::text FROM pg_roles WHERE pg_has_role($1::text::name, oid, 'MEMBER')",
                    &[&user],
                );
                // A user that no longer exists has no memberships: the default role.
                let names: Vec<String> = rows
                    .map(|r| r.iter().map(|row| row.get::<_, String>(0)).collect())
                    .unwrap_or_default();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                roles.insert(
                    user,
                    (
                        now.role_for(&refs).name.clone(),
                        new.role_for(&refs).name.clone(),
                    ),
                );
            }
            let Some((role_now, role_new)) = roles.get(user).cloned() else {
                continue;
            };
            let lexed = lex(stmt);
            let r_now = role_named(now, &role_now);
            let r_new = role_named(new, &role_new);
            let p_now = analyze(stmt, &lexed, &cat_now.catalog, now, r_now);
            let p_new = analyze(stmt, &lexed, &cat_new.catalog, new, r_new);
            for (change, detail) in differences(&p_now, &p_new, r_now, r_new) {
                out.push(Change {
                    change,
                    database: db.to_string(),
                    user: user.to_string(),
                    role_now: role_now.clone(),
                    role_new: role_new.clone(),
                    fingerprint: g.fingerprint.clone(),
                    statement: stmt.to_string(),
                    count: g.count,
                    detail,
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

fn role_named<'p>(p: &'p Policy, name: &str) -> &'p RolePolicy {
    p.role_named(name).unwrap_or_else(|| p.default_role())
}

/// What changes between the plan now and under NEW.
fn differences(
    now: &Plan,
    new: &Plan,
    r_now: &RolePolicy,
    r_new: &RolePolicy,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match (now.denied(), new.denied()) {
        (None, Some(d)) => {
            out.push((
                "refused",
                d.decision.message().unwrap_or_default().to_string(),
            ));
            return out;
        }
        (Some(d), None) => {
            out.push((
                "allowed",
                d.decision.message().unwrap_or_default().to_string(),
            ));
            return out;
        }
        (Some(_), Some(_)) => return out,
        (None, None) => {}
    }
    for (a, b) in now.statements.iter().zip(&new.statements) {
        for o in &b.outputs {
            let before = a
                .outputs
                .iter()
                .find(|x| x.index == o.index)
                .map(|x| &x.action);
            let name = match &o.source {
                pgcloak_policy::Source::Direct(c) => c.clone(),
                _ => o.name.clone(),
            };
            match (&o.action, before) {
                (OutputAction::Mask { .. }, Some(OutputAction::Mask { .. })) => {}
                (OutputAction::Mask { .. }, _) => out.push(("masked", name)),
                (OutputAction::Null { .. }, Some(OutputAction::Null { .. })) => {}
                (OutputAction::Null { .. }, _) => out.push(("nulled", name)),
                _ => {}
            }
        }
        let reads_classified = b.max_rows.is_some() || a.max_rows.is_some();
        let limit = |r: &RolePolicy| r.max_rows.unwrap_or(u64::MAX);
        if reads_classified && limit(r_new) < limit(r_now) {
            out.push(("limited", format!("max_rows {}", limit(r_new))));
        }
        let copy_to = b
            .copy
            .as_ref()
            .is_some_and(|c| c.direction == pgcloak_policy::CopyDirection::To);
        if copy_to && r_now.copy_out && !r_new.copy_out {
            out.push(("copy_refused", "copy_out = false".into()));
        }
    }
    out
}

/// The changes as a table or JSON.
pub fn render(changes: &[Change], json: bool) -> String {
    if json {
        let rows: Vec<serde_json::Value> = changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "change": c.change, "database": c.database, "user": c.user,
                    "role_now": c.role_now, "role_new": c.role_new, "fingerprint": c.fingerprint,
                    "statement": c.statement, "count": c.count, "detail": c.detail,
                })
            })
            .collect();
        let mut s = serde_json::to_string_pretty(&rows).unwrap_or_default();
        s.push('\n');
        return s;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<16} {:<20} {:>6}  {:<40} statement",
        "change", "user", "role (now -> new)", "count", "detail"
    );
    for c in changes {
        let roles = if c.role_now == c.role_new {
            c.role_new.clone()
        } else {
            format!("{} -> {}", c.role_now, c.role_new)
        };
        let detail: String = c.detail.chars().take(40).collect();
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:<20} {:>6}  {:<40} {}",
            c.change, c.user, roles, c.count, detail, c.statement
        );
    }
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for c in changes {
        *totals.entry(c.change).or_default() += c.count;
    }
    let summary: Vec<String> = totals.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        out,
        "{} change(s){}{}",
        changes.len(),
        if summary.is_empty() { "" } else { ": " },
        summary.join(", ")
    );
    out
}
