//! The admin console: a login listed in `[admin] users` that connects with `dbname=pgcloak` is
//! authenticated by PostgreSQL like any other (against `[admin] database`), then talks to pgcloak
//! itself, in the simple query protocol:
//!
//! `SHOW SESSIONS`, `SHOW STATS`, `SHOW POLICY`, `SHOW KEYS`, `SHOW GRANTS`, `SHOW AUDIT`, `RELOAD`,
//! `KILL <session id>`, `SHOW HELP`.
//!
//! Anyone else asking for `pgcloak` is refused with `42501` before PostgreSQL is contacted. Every
//! command, and every refused attempt, is an audit event of kind `admin`.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use pgcloak_audit::{Decision, EventStatement, Kind, NewEvent, What};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use crate::config::{Config, OnFailure};
use crate::protocol::messages::{self, error_response, ready_for_query, Severity};
use crate::protocol::startup::{encode_startup, StartupMessage};
use crate::registry::Live;
use crate::session::io::{FrameReader, Outbox, ReadReady};
use crate::session::{events, SessionInfo};
use crate::state::Shared;

/// The database name that reaches the console instead of PostgreSQL.
pub const DATABASE: &str = "pgcloak";

const HELP: &str = "SHOW SESSIONS | SHOW STATS | SHOW POLICY | SHOW KEYS | SHOW GRANTS | SHOW AUDIT | RELOAD | KILL <session id> | SHOW HELP";

/// The StartupMessage an admin login is authenticated with: its own user, `[admin] database`.
pub fn startup_for(startup: &StartupMessage, config: &Config) -> Bytes {
    encode_startup(&[
        ("user", startup.user()),
        ("database", &config.admin_database),
        ("application_name", "pgcloak admin console"),
    ])
}

/// Whether `user` may open the console.
pub fn allowed(config: &Config, user: &str) -> bool {
    config.admin_users.iter().any(|u| u == user)
}

/// Why `user` is refused the console (`42501`), audited.
pub fn refusal(shared: &Shared, info: &SessionInfo) -> (String, &'static str) {
    let message = format!(
        "pgcloak: permission denied for the admin console: user \"{}\" is not listed in [admin] users",
        info.user
    );
    record(
        shared,
        info,
        "connect",
        Err(("42501", message.clone())),
        None,
    );
    warn!(user = %info.user, client = %info.client, "admin console refused: not in [admin] users");
    (
        message,
        "Connect to an application database, or ask an operator to add the user to [admin] users in the pgcloak config.",
    )
}

/// Records one console event. `outcome`: `Ok(reason)` or `Err((sqlstate, message))`.
fn record(
    shared: &Shared,
    info: &SessionInfo,
    command: &str,
    outcome: Result<Option<String>, (&'static str, String)>,
    rows: Option<u64>,
) {
    let Some(audit) = &shared.services.audit else {
        return;
    };
    let (decision, sqlstate, reason) = match outcome {
        Ok(reason) => (Decision::Allow, None, reason),
        Err((code, message)) => (Decision::Deny, Some(code.to_string()), Some(message)),
    };
    let ev = NewEvent {
        who: info.audit_source.clone(),
        what: EventStatement::new(What {
            kind: Kind::Admin,
            statement: Some(command.to_string()),
            ..What::default()
        }),
        decision,
        reason,
        rows,
        sqlstate,
        ..NewEvent::new(Kind::Admin)
    };
    if let Err(e) = audit.record(ev) {
        warn!("admin console event not audited: {e}");
    }
}

/// One parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Sessions,
    Stats,
    Policy,
    Keys,
    Grants,
    Audit,
    Help,
    Reload,
    Kill(u64),
}

/// Parses one command (case-insensitive, surrounding blanks ignored).
pub fn parse(text: &str) -> Result<Command, String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(match words.as_slice() {
        ["SHOW", "SESSIONS"] => Command::Sessions,
        ["SHOW", "STATS"] => Command::Stats,
        ["SHOW", "POLICY"] => Command::Policy,
        ["SHOW", "KEYS"] => Command::Keys,
        ["SHOW", "GRANTS"] => Command::Grants,
        ["SHOW", "AUDIT"] => Command::Audit,
        ["SHOW", "HELP"] | ["HELP"] => Command::Help,
        ["RELOAD"] => Command::Reload,
        ["KILL", id] => match id.parse::<u64>() {
            Ok(n) => Command::Kill(n),
            Err(_) => {
                return Err(format!(
                    "KILL takes a session id (a number from SHOW SESSIONS), not `{id}`"
                ))
            }
        },
        _ => {
            let shown: String = text.trim().chars().take(60).collect();
            return Err(format!(
                "`{shown}` is not an admin console command; the commands are: {HELP}"
            ));
        }
    })
}

/// A result set: column names with their type (`true`: int8, else text) and rows.
struct Table {
    columns: Vec<(&'static str, bool)>,
    rows: Vec<Vec<Option<String>>>,
    tag: &'static str,
}

impl Table {
    fn new(tag: &'static str, columns: &[(&'static str, bool)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
            tag,
        }
    }

    fn row(&mut self, values: Vec<Option<String>>) {
        self.rows.push(values);
    }

    /// RowDescription, DataRows, CommandComplete.
    fn encode(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        body.put_i16(self.columns.len() as i16);
        for (name, int) in &self.columns {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_i32(0);
            body.put_i16(0);
            let (oid, len) = if *int { (20, 8) } else { (25, -1) };
            body.put_i32(oid);
            body.put_i16(len);
            body.put_i32(-1);
            body.put_i16(0);
        }
        out.put_slice(&messages::frame(b'T', &body));
        for row in &self.rows {
            body.clear();
            body.put_i16(row.len() as i16);
            for v in row {
                match v {
                    None => body.put_i32(-1),
                    Some(s) => {
                        body.put_i32(s.len() as i32);
                        body.put_slice(s.as_bytes());
                    }
                }
            }
            out.put_slice(&messages::frame(b'D', &body));
        }
        let tag = match self.tag {
            "SHOW" | "RELOAD" => format!("{} {}", self.tag, self.rows.len()),
            t => t.to_string(),
        };
        let mut cc = tag.into_bytes();
        cc.push(0);
        out.put_slice(&messages::frame(b'C', &cc));
    }
}

fn text(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

fn rfc3339(t: std::time::SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    // Microseconds, as in audit records.
    let t = t
        .replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn sessions(shared: &Shared) -> Table {
    let mut t = Table::new(
        "SHOW",
        &[
            ("id", true),
            ("user", false),
            ("role", false),
            ("database", false),
            ("client", false),
            ("application", false),
            ("tls", false),
            ("state", false),
            ("since", false),
            ("statements", true),
        ],
    );
    for s in shared.sessions.list() {
        t.row(vec![
            text(s.id.to_string()),
            text(&s.user),
            (!s.role.is_empty()).then(|| s.role.clone()),
            text(&s.database),
            text(s.client.to_string()),
            text(&s.application),
            text(if s.tls { "on" } else { "off" }),
            text(s.state()),
            text(rfc3339(s.since)),
            text(s.statements().to_string()),
        ]);
    }
    t
}

/// Every sample of `/metrics`, one row each: its name, labels and value.
fn stats(shared: &Shared) -> Table {
    let mut t = Table::new(
        "SHOW",
        &[("metric", false), ("labels", false), ("value", false)],
    );
    let exposition = shared.metrics.render(&crate::admin::gauges(shared));
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        t.row(vec![text(name), text(labels), text(value)]);
    }
    t
}

fn policy(shared: &Shared) -> Table {
    use pgcloak_policy::Class;
    let services = &shared.services;
    let p = services.policy();
    let mut t = Table::new(
        "SHOW",
        &[
            ("section", false),
            ("name", false),
            ("class", false),
            ("detail", false),
        ],
    );
    t.row(vec![
        text("generation"),
        text(services.policy_generation().to_string()),
        None,
        text(format!("version {}, file {}", p.version_hex(), p.file())),
    ]);
    for c in p.columns() {
        t.row(vec![
            text("column"),
            text(format!("{}.{}.{}", c.schema, c.table, c.column)),
            text(c.class.as_str()),
            text(format!(
                "encrypt {}, type {}, mask {}",
                c.encrypt, c.logical_type, c.mask
            )),
        ]);
    }
    for r in p.roles().iter().chain(std::iter::once(p.default_role())) {
        for class in Class::ALL {
            let mut detail = format!("read {}", r.read(class));
            if r.may_write(class) {
                detail.push_str(", write");
            }
            t.row(vec![
                text("role"),
                text(&r.name),
                text(class.as_str()),
                text(detail),
            ]);
        }
        let mut limits = format!("copy_out {}", r.copy_out);
        if let Some(n) = r.max_rows {
            let _ = write!(limits, ", max_rows {n}");
        }
        if let Some(b) = r.budget {
            let _ = write!(
                limits,
                ", max_rows_per_window {} per {}s",
                b.rows, b.window_secs
            );
        }
        t.row(vec![text("role"), text(&r.name), None, text(limits)]);
    }
    t
}

/// The grants this proxy applies now (read from pgcloak.grants at most a second ago).
fn grants(shared: &Shared) -> Table {
    let mut t = Table::new(
        "SHOW",
        &[
            ("id", true),
            ("user", false),
            ("class", false),
            ("access", false),
            ("table", false),
            ("expires_at", false),
        ],
    );
    for (user, g) in shared.services.grants.all() {
        let expires = rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(g.expires_at.max(0.0)),
        );
        t.row(vec![
            text(g.id.to_string()),
            text(user),
            text(g.raise.class.as_str()),
            text(g.raise.access.as_str()),
            text(
                g.raise
                    .table
                    .as_ref()
                    .map_or_else(|| "(any)".to_string(), |(s, t)| format!("{s}.{t}")),
            ),
            text(expires),
        ]);
    }
    t
}

/// Key versions, never key material.
fn keys(shared: &Shared) -> Table {
    let keyring = shared.services.keyring();
    let mut t = Table::new(
        "SHOW",
        &[
            ("column", false),
            ("key_id", true),
            ("mode", false),
            ("version", true),
            ("active", false),
            ("created", false),
            ("generation", true),
        ],
    );
    let generation = keyring.generation().to_string();
    for c in keyring.list() {
        for v in &c.versions {
            t.row(vec![
                text(&c.column),
                text(c.key_id.to_string()),
                text(c.mode.to_string()),
                text(v.version.to_string()),
                text(if v.version == c.active_version {
                    "yes"
                } else {
                    "no"
                }),
                text(&v.created),
                text(&generation),
            ]);
        }
    }
    t
}

fn audit(shared: &Shared) -> Table {
    let mut t = Table::new(
        "SHOW",
        &[
            ("name", false),
            ("healthy", false),
            ("queued", true),
            ("written", true),
            ("failures", true),
            ("dropped", true),
            ("last_seq", true),
            ("checkpoint_age_seconds", false),
            ("last_error", false),
        ],
    );
    let yes_no = |b: bool| text(if b { "yes" } else { "no" });
    let Some(a) = &shared.services.audit else {
        t.row(vec![
            text("audit"),
            yes_no(false),
            None,
            None,
            None,
            None,
            None,
            None,
            text("the audit trail is disabled ([audit] file = \"\", postgres = false, no nats)"),
        ]);
        return t;
    };
    let s = a.status();
    t.row(vec![
        text("queue"),
        yes_no(s.healthy),
        text(s.queued.to_string()),
        None,
        None,
        text(s.dropped.to_string()),
        text(s.last_seq.to_string()),
        s.checkpoint_age.map(|d| format!("{:.1}", d.as_secs_f64())),
        None,
    ]);
    for sink in &s.sinks {
        t.row(vec![
            text(format!("sink {}", sink.name)),
            yes_no(sink.healthy),
            text(sink.backlog.to_string()),
            text(sink.written.to_string()),
            text(sink.failures.to_string()),
            None,
            None,
            None,
            sink.last_error.clone(),
        ]);
    }
    t
}

/// Runs one command: its result set (or error) and what the audit event says about it.
async fn execute(
    shared: &Shared,
    info: &SessionInfo,
    command: Command,
) -> Result<(Table, Option<String>), (&'static str, String)> {
    Ok(match command {
        Command::Sessions => (sessions(shared), None),
        Command::Stats => (stats(shared), None),
        Command::Policy => (policy(shared), None),
        Command::Keys => (keys(shared), None),
        Command::Grants => (grants(shared), None),
        Command::Audit => (audit(shared), None),
        Command::Help => {
            let mut t = Table::new("SHOW", &[("command", false)]);
            for c in HELP.split(" | ") {
                t.row(vec![text(c)]);
            }
            (t, None)
        }
        Command::Reload => {
            let Some(report) = shared.reload.reload().await else {
                return Err((
                    "57P03",
                    "pgcloak: cannot reload: the proxy is shutting down".into(),
                ));
            };
            let mut t = Table::new(
                "RELOAD",
                &[("part", false), ("result", false), ("detail", false)],
            );
            let mut failed = Vec::new();
            for (part, r) in &report.parts {
                let (result, detail) = match r {
                    Ok(d) => ("ok", d.clone()),
                    Err(e) => {
                        failed.push(*part);
                        ("failed", e.clone())
                    }
                };
                t.row(vec![text(*part), text(result), text(detail)]);
            }
            info!(user = %info.user, failed = ?failed, "reload from the admin console");
            let reason = if failed.is_empty() {
                "reloaded".to_string()
            } else {
                format!("reload failed for: {}", failed.join(", "))
            };
            (t, Some(reason))
        }
        Command::Kill(id) => {
            let Some(target) = shared.sessions.get(id) else {
                return Err((
                    "42704",
                    format!("pgcloak: no session {id} (SHOW SESSIONS lists the sessions)"),
                ));
            };
            target.kill(&info.user);
            info!(user = %info.user, session = id, target_user = %target.user, "session killed from the admin console");
            (
                Table::new("KILL", &[]),
                Some(format!("killed session {id} of user {}", target.user)),
            )
        }
    })
}

/// Serves an authenticated console session until the client leaves (or is killed, or the proxy
/// shuts down). `ready` is the server's ReadyForQuery; the server connection is already closed.
pub async fn serve<CR, CW>(
    shared: &Shared,
    info: &SessionInfo,
    client_in: &mut FrameReader<CR>,
    client_out: &mut Outbox<CW>,
) where
    CR: AsyncRead + ReadReady + Unpin,
    CW: AsyncWrite + Unpin,
{
    let live = Arc::new(Live::new(info, true));
    let _listed = shared.sessions.register(live.clone());
    record(shared, info, "connect", Ok(None), None);
    info!(user = %info.user, client = %info.client, "admin console session started");
    let started = std::time::Instant::now();
    if client_out.send_now(&ready_for_query(b'I')).await.is_err() {
        return;
    }
    // After an extended-protocol message: its error was sent, the rest is skipped until Sync.
    let mut skipping = false;
    let ending = loop {
        let frame = tokio::select! {
            f = client_in.next() => f,
            () = shared.kill.killed() => break Some("pgcloak: terminating connection because the proxy is shutting down".to_string()),
            () = live.killed() => break Some(crate::session::query::killed_message(&live.killed_by().unwrap_or_default())),
        };
        let Ok(frame) = frame else { break None };
        let mut out = BytesMut::new();
        match frame.tag {
            b'Q' => {
                match messages::query_text(frame.body()) {
                    Ok(sql) => answer(shared, info, &String::from_utf8_lossy(sql), &mut out).await,
                    Err(e) => {
                        out.put_slice(&error_response(
                            Severity::Error,
                            "08P01",
                            &format!("pgcloak: invalid Query message: {e}"),
                            None,
                        ));
                    }
                }
                out.put_slice(&ready_for_query(b'I'));
            }
            b'X' => break None,
            b'S' => {
                skipping = false;
                out.put_slice(&ready_for_query(b'I'));
            }
            b'H' => {}
            _ if skipping => {}
            b'P' | b'B' | b'D' | b'E' | b'C' | b'F' => {
                skipping = true;
                out.put_slice(&error_response(
                    Severity::Error,
                    "0A000",
                    "pgcloak: the admin console speaks the simple query protocol only",
                    Some("Use psql, or a driver's simple-query call (e.g. simple_query in tokio-postgres)."),
                ));
            }
            other => {
                break Some(format!(
                    "pgcloak: unexpected message '{}' in the admin console",
                    char::from(other)
                ))
            }
        }
        if !out.is_empty() && client_out.send_now(&out).await.is_err() {
            break None;
        }
    };
    if let Some(message) = ending {
        let code = if message.contains("unexpected message") {
            "08P01"
        } else {
            "57P01"
        };
        let _ = client_out
            .send_now(&error_response(Severity::Fatal, code, &message, None))
            .await;
    }
    client_out.shutdown().await;
    if let Some(audit) = &shared.services.audit {
        let mut ev = events::session_event(info, Kind::Disconnect, None, None);
        ev.duration_us = Some(started.elapsed().as_micros() as u64);
        let _ = audit.record(ev);
    }
}

/// Answers one Query message: each `;`-separated command in turn; the first error ends it, as in
/// PostgreSQL.
async fn answer(shared: &Shared, info: &SessionInfo, sql: &str, out: &mut BytesMut) {
    let commands: Vec<&str> = sql
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        out.put_slice(&messages::frame(b'I', b""));
        return;
    }
    for text in commands {
        let shown: String = text.chars().take(200).collect();
        let result = match parse(text) {
            Err(m) => Err(("42601", format!("pgcloak: {m}"))),
            Ok(command) => match audit_refusal(shared) {
                Some(refusal) => Err(refusal),
                None => execute(shared, info, command).await,
            },
        };
        match result {
            Ok((table, reason)) => {
                record(
                    shared,
                    info,
                    &shown,
                    Ok(reason),
                    Some(table.rows.len() as u64),
                );
                table.encode(out);
            }
            Err((code, message)) => {
                record(shared, info, &shown, Err((code, message.clone())), None);
                out.put_slice(&error_response(Severity::Error, code, &message, None));
                return;
            }
        }
    }
}

/// With `on_failure = "block"`, a command that cannot be audited is not run.
fn audit_refusal(shared: &Shared) -> Option<(&'static str, String)> {
    let audit = shared.services.audit.as_ref()?;
    if shared.config.audit.on_failure != OnFailure::Block {
        return None;
    }
    let why = audit.unavailable_reason()?;
    Some((
        "58000",
        format!("pgcloak: admin command refused because it cannot be audited: {why}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively_and_bad_ones_name_the_commands() {
        assert_eq!(parse("show sessions"), Ok(Command::Sessions));
        assert_eq!(parse("  SHOW   Stats "), Ok(Command::Stats));
        assert_eq!(parse("kill 42"), Ok(Command::Kill(42)));
        assert_eq!(parse("reload"), Ok(Command::Reload));
        assert_eq!(parse("help"), Ok(Command::Help));
        let e = parse("KILL alice").unwrap_err();
        assert!(e.contains("session id"), "{e}");
        let e = parse("SELECT 1").unwrap_err();
        assert!(e.contains("SELECT 1") && e.contains("SHOW SESSIONS"), "{e}");
        assert!(parse("KILL -1").is_err());
        assert!(parse("SHOW").is_err());
    }

    #[test]
    fn tables_encode_as_row_description_data_rows_and_a_tag() {
        let mut t = Table::new("SHOW", &[("id", true), ("name", false)]);
        t.row(vec![text("1"), None]);
        let mut out = BytesMut::new();
        t.encode(&mut out);
        let mut frames: Vec<(u8, &[u8])> = Vec::new();
        let mut rest = &out[..];
        while let [tag, a, b, c, d, ..] = *rest {
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            frames.push((tag, &rest[5..1 + len]));
            rest = &rest[1 + len..];
        }
        let tags: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(tags, b"TDC");
        // The row: two values, the second NULL.
        assert_eq!(
            frames[1].1,
            [0, 2, 0, 0, 0, 1, b'1', 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(frames[2].1, b"SHOW 1\0");
    }
}
