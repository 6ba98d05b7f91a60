//! The audit events a session records: connect, disconnect, auth_failed and error, and one per
//! statement (normalised text, the plan's tables and columns, the outcome).

use std::sync::Arc;

use pgcloak_audit::{
    ColumnAccess, Decision, EventSource, EventStatement, Kind, NewEvent, What, Who,
};
use pgcloak_policy::StatementKind;

use super::context::StmtCtx;
use super::track::Outcome;
use super::SessionInfo;

pub fn kind_of(k: StatementKind) -> Kind {
    match k {
        StatementKind::Select => Kind::Select,
        StatementKind::Insert => Kind::Insert,
        StatementKind::Update => Kind::Update,
        StatementKind::Delete => Kind::Delete,
        StatementKind::Copy => Kind::Copy,
        StatementKind::Ddl => Kind::Ddl,
        _ => Kind::Other,
    }
}

fn base(info: &SessionInfo, kind: Kind) -> NewEvent {
    NewEvent {
        who: info.audit_source.clone(),
        ..NewEvent::new(kind)
    }
}

/// Who a session is, as its audit events carry it (formatted once, shared by every event).
pub fn source(
    id: u64,
    client: std::net::SocketAddr,
    user: &str,
    role: Option<&str>,
    database: &str,
    application: &str,
) -> Arc<EventSource> {
    EventSource::new(Who {
        session: id.to_string(),
        client: client.to_string(),
        user: user.to_string(),
        role: role.map(str::to_string),
        database: database.to_string(),
        application: application.to_string(),
    })
}

/// connect / disconnect / auth_failed / error.
pub fn session_event(
    info: &SessionInfo,
    kind: Kind,
    sqlstate: Option<String>,
    reason: Option<String>,
) -> NewEvent {
    let mut ev = base(info, kind);
    ev.decision = if sqlstate.is_some() {
        Decision::Deny
    } else {
        Decision::Allow
    };
    ev.sqlstate = sqlstate;
    ev.reason = reason;
    ev
}

/// What a statement's events say about it: kind, normalised text, fingerprint, the plan's tables
/// and columns. Built at its first event, then shared.
fn statement_record(s: &StmtCtx) -> Arc<EventStatement> {
    s.audit
        .get_or_init(|| {
            let (tables, columns) = match s.statement_plan() {
                Some(p) => (
                    p.tables.clone(),
                    p.columns
                        .iter()
                        .map(|c| ColumnAccess {
                            name: c.name.clone(),
                            class: c.class.as_str().to_string(),
                            access: c.access.as_str().to_string(),
                        })
                        .collect(),
                ),
                None => (Vec::new(), Vec::new()),
            };
            EventStatement::new(What {
                kind: kind_of(s.kind),
                statement: Some(s.text.clone()),
                // As `format!("{:016x}")` but without the formatter.
                fingerprint: Some(pgcloak_audit::lower_hex(&s.fingerprint.to_be_bytes())),
                tables,
                columns,
            })
        })
        .clone()
}

/// One statement's event: who, what (shared), and this execution's outcome.
pub fn statement_event(info: &SessionInfo, outcome: &Outcome) -> NewEvent {
    let stmt: Option<&StmtCtx> = outcome.stmt.as_deref();
    let mut ev = base(info, Kind::Other);
    ev.ts = Some(time::OffsetDateTime::now_utc());
    ev.rows = outcome.rows;
    ev.duration_us = Some(outcome.started.elapsed().as_micros() as u64);
    ev.sqlstate = outcome.sqlstate.clone();
    ev.decision = Decision::Allow;
    if let Some(s) = stmt {
        ev.what = statement_record(s);
        if let Some(r) = &s.refusal {
            ev.decision = Decision::Deny;
            ev.reason = Some(r.message.clone());
        } else if let Some(why) = &s.would_deny {
            ev.decision = Decision::WouldDeny;
            ev.reason = Some(why.clone());
        } else if let Some(grants) = &s.under_grants {
            ev.reason = Some(grants.clone());
        }
    }
    ev
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprint_is_zero_padded_lowercase_hex() {
        for fp in [0u64, 1, 0xab, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(
                pgcloak_audit::lower_hex(&fp.to_be_bytes()),
                format!("{fp:016x}")
            );
        }
    }
}
