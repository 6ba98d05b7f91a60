//! The audit event model: what the proxy hands in (`NewEvent`) and what the chain stores (`AuditEvent`).

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What kind of event a record is. The first ten are the CONTRACT.md kinds; `gap`, `start` and
/// `shutdown` are extensions written by the audit writer itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Connect,
    Disconnect,
    AuthFailed,
    Select,
    Insert,
    Update,
    Delete,
    Copy,
    Ddl,
    #[default]
    Other,
    /// Extension: events were lost (queue full or a sink backlog full); `reason` says
    /// "N events dropped". Written once the sinks are healthy again, so the loss itself is chained.
    Gap,
    /// Extension: the audit writer started (reason says whether it continues an existing chain).
    Start,
    /// Extension: the audit writer is shutting down cleanly (followed by a final checkpoint).
    Shutdown,
    /// Extension: pgcloak ended a session because of an internal error (a panic in its code);
    /// `sqlstate` is `XX000`, `reason` says what failed. Only that session was ended.
    Error,
    /// Extension: a command of the admin console (`dbname=pgcloak`): `statement` is the command,
    /// `decision` and `sqlstate` its outcome; also a refused attempt to open the console.
    Admin,
    /// Extension: a step of a just-in-time grant (`pgcloak grant`): `statement` says which
    /// (`grant 7 requested|approved|revoked|expired: ...`), `user` who took it, `reason` the
    /// request's reason.
    Grant,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 16] = [
        Kind::Connect,
        Kind::Disconnect,
        Kind::AuthFailed,
        Kind::Select,
        Kind::Insert,
        Kind::Update,
        Kind::Delete,
        Kind::Copy,
        Kind::Ddl,
        Kind::Other,
        Kind::Gap,
        Kind::Start,
        Kind::Shutdown,
        Kind::Error,
        Kind::Admin,
        Kind::Grant,
    ];

    /// The text form used in records, tables and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Disconnect => "disconnect",
            Kind::AuthFailed => "auth_failed",
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Copy => "copy",
            Kind::Ddl => "ddl",
            Kind::Other => "other",
            Kind::Gap => "gap",
            Kind::Start => "start",
            Kind::Shutdown => "shutdown",
            Kind::Error => "error",
            Kind::Admin => "admin",
            Kind::Grant => "grant",
        }
    }

    /// Parses the text form; `None` for an unknown kind.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "connect" => Kind::Connect,
            "disconnect" => Kind::Disconnect,
            "auth_failed" => Kind::AuthFailed,
            "select" => Kind::Select,
            "insert" => Kind::Insert,
            "update" => Kind::Update,
            "delete" => Kind::Delete,
            "copy" => Kind::Copy,
            "ddl" => Kind::Ddl,
            "other" => Kind::Other,
            "gap" => Kind::Gap,
            "start" => Kind::Start,
            "shutdown" => Kind::Shutdown,
            "error" => Kind::Error,
            "admin" => Kind::Admin,
            "grant" => Kind::Grant,
            _ => return None,
        })
    }
}

/// Whether the proxy let the statement (or connection) through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    #[default]
    Allow,
    Deny,
    /// Extension: a shadow role's statement the policy would refuse; it was served.
    WouldDeny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::WouldDeny => "would_deny",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "allow" => Some(Decision::Allow),
            "deny" => Some(Decision::Deny),
            "would_deny" => Some(Decision::WouldDeny),
            _ => None,
        }
    }
}

/// One classified column a statement touched and the access the role got
/// (`plaintext`, `masked`, `null`, `deny`, or `write` — the proxy's vocabulary, stored as given).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnAccess {
    /// `schema.table.column`
    pub name: String,
    /// `public | internal | sensitive | confidential`
    pub class: String,
    pub access: String,
}

/// Who an event is about: the fields that stay the same for a whole session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Who {
    pub session: String,
    /// `ip:port` of the client.
    pub client: String,
    pub user: String,
    /// The policy role (`None` when not known yet, e.g. a failed login).
    pub role: Option<String>,
    pub database: String,
    pub application: String,
}

/// [`Who`], cleaned and formatted into its piece of the canonical form once: a session builds it
/// when it starts (and again when its role is known) and shares it with every event it records,
/// so the writer neither copies nor escapes these six fields per statement.
#[derive(Debug, PartialEq, Eq)]
pub struct EventSource {
    who: Who,
    /// `,"session":…,"client":…,"user":…,"role":…,"database":…,"application":…`
    json: String,
}

impl EventSource {
    pub fn new(who: Who) -> Arc<EventSource> {
        let who = Who {
            session: clean(who.session),
            client: clean(who.client),
            user: clean(who.user),
            role: who.role.map(clean),
            database: clean(who.database),
            application: clean(who.application),
        };
        let mut json = String::new();
        crate::canonical::write_who(&mut json, &who);
        Arc::new(EventSource { who, json })
    }

    /// The empty source (every field empty, no role), shared.
    pub fn none() -> Arc<EventSource> {
        static NONE: OnceLock<Arc<EventSource>> = OnceLock::new();
        NONE.get_or_init(|| EventSource::new(Who::default()))
            .clone()
    }

    pub fn who(&self) -> &Who {
        &self.who
    }

    pub(crate) fn json(&self) -> &str {
        &self.json
    }
}

/// What an event is about: the fields that stay the same for every execution of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct What {
    pub kind: Kind,
    /// Normalised statement text (literals replaced by placeholders).
    pub statement: Option<String>,
    pub fingerprint: Option<String>,
    pub tables: Vec<String>,
    pub columns: Vec<ColumnAccess>,
}

/// [`What`], cleaned, cut to [`MAX_STATEMENT_BYTES`] and formatted into its piece of the canonical
/// form once: the proxy keeps it with a prepared statement, so a statement executed a million
/// times is copied and escaped once, not a million times.
#[derive(Debug, PartialEq, Eq)]
pub struct EventStatement {
    what: What,
    /// `,"kind":…,"statement":…,"fingerprint":…,"tables":[…],"columns":[…]`
    json: String,
}

impl EventStatement {
    pub fn new(what: What) -> Arc<EventStatement> {
        let what = What {
            kind: what.kind,
            statement: what.statement.map(|s| cap_statement(clean(s))),
            fingerprint: what.fingerprint.map(clean),
            tables: what.tables.into_iter().map(clean).collect(),
            columns: what
                .columns
                .into_iter()
                .map(|c| ColumnAccess {
                    name: clean(c.name),
                    class: clean(c.class),
                    access: clean(c.access),
                })
                .collect(),
        };
        let mut json = String::new();
        crate::canonical::write_what(&mut json, &what);
        Arc::new(EventStatement { what, json })
    }

    /// An event of `kind` about no statement (connect, disconnect, …), shared per kind.
    pub fn bare(kind: Kind) -> Arc<EventStatement> {
        static BARE: OnceLock<Vec<Arc<EventStatement>>> = OnceLock::new();
        let all = BARE.get_or_init(|| {
            Kind::ALL
                .iter()
                .map(|&kind| {
                    EventStatement::new(What {
                        kind,
                        ..What::default()
                    })
                })
                .collect()
        });
        all.iter()
            .find(|s| s.what.kind == kind)
            .cloned()
            .unwrap_or_else(|| {
                EventStatement::new(What {
                    kind,
                    ..What::default()
                })
            })
    }

    pub fn what(&self) -> &What {
        &self.what
    }

    pub(crate) fn json(&self) -> &str {
        &self.json
    }
}

/// PostgreSQL text cannot hold NUL; every stored string has it replaced, so every sink stores the
/// same record.
pub(crate) fn clean(s: String) -> String {
    if s.as_bytes().contains(&0) {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// Longest statement text stored; longer text is cut (at a char boundary) and marked, so one
/// huge statement cannot exceed a sink's message limit and block it forever.
pub const MAX_STATEMENT_BYTES: usize = 64 * 1024;

fn cap_statement(s: String) -> String {
    if s.len() <= MAX_STATEMENT_BYTES {
        return s;
    }
    let mut cut = MAX_STATEMENT_BYTES;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[{} bytes cut]", &s[..cut], s.len() - cut)
}

/// What the proxy hands in for one event: who and what (shared, formatted once) and how this one
/// execution went. The writer adds `seq`, `instance`, `prev_hash` and `hash` (and `ts` when the
/// caller leaves it `None`). Never put literals, parameter values, passwords or key material in
/// any field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When the statement ended; `None`: the time the writer sequences the event.
    pub ts: Option<OffsetDateTime>,
    pub who: Arc<EventSource>,
    pub what: Arc<EventStatement>,
    pub decision: Decision,
    pub reason: Option<String>,
    /// Rows returned or affected.
    pub rows: Option<u64>,
    pub duration_us: Option<u64>,
    pub sqlstate: Option<String>,
}

impl NewEvent {
    /// An event of `kind` from nobody about no statement, every other field empty.
    pub fn new(kind: Kind) -> NewEvent {
        NewEvent {
            ts: None,
            who: EventSource::none(),
            what: EventStatement::bare(kind),
            decision: Decision::Allow,
            reason: None,
            rows: None,
            duration_us: None,
            sqlstate: None,
        }
    }
}

/// One stored audit record: exactly the CONTRACT.md fields, in the order they are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub seq: u64,
    /// RFC 3339 UTC with microseconds: `2026-01-31T12:34:56.123456Z`.
    pub ts: String,
    pub instance: String,
    pub session: String,
    pub client: String,
    pub user: String,
    pub role: Option<String>,
    pub database: String,
    pub application: String,
    pub kind: Kind,
    pub statement: Option<String>,
    pub fingerprint: Option<String>,
    pub tables: Vec<String>,
    pub columns: Vec<ColumnAccess>,
    pub decision: Decision,
    pub reason: Option<String>,
    pub rows: Option<u64>,
    pub duration_us: Option<u64>,
    pub sqlstate: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEvent {
    /// The event time, parsed; `None` if `ts` is not RFC 3339.
    pub fn time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.ts, &time::format_description::well_known::Rfc3339).ok()
    }
}

/// A signed checkpoint: the chain hash at `seq`, signed with the instance's Ed25519 key.
/// Written as `{"checkpoint": {"seq": N, "hash": "...", "ts": "...", "signature": "...", "instance": "..."}}`
/// (`instance` is an extension: the signature covers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub ts: String,
    /// Standard base64 (padded) of the 64-byte Ed25519 signature.
    pub signature: String,
    pub instance: String,
}

/// Formats a time the way records store it: UTC, RFC 3339, exactly six fractional digits, `Z`.
pub fn format_ts(t: OffsetDateTime) -> String {
    let mut s = String::with_capacity(27);
    write_ts(&mut s, t);
    s
}

/// Appends [`format_ts`] of `t` to `out`.
pub fn write_ts(out: &mut String, t: OffsetDateTime) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside RFC 3339's four-digit years; never produced by a real clock.
        use std::fmt::Write;
        let _ = write!(
            out,
            "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        );
        return;
    }
    fn digits(out: &mut [u8], mut v: u32) {
        for b in out.iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    digits(&mut b[0..4], year as u32);
    digits(&mut b[5..7], u8::from(t.month()) as u32);
    digits(&mut b[8..10], t.day() as u32);
    digits(&mut b[11..13], t.hour() as u32);
    digits(&mut b[14..16], t.minute() as u32);
    digits(&mut b[17..19], t.second() as u32);
    digits(&mut b[20..26], t.microsecond());
    // Only ASCII digits were written into an ASCII template.
    out.push_str(std::str::from_utf8(&b).unwrap_or("0000-00-00T00:00:00.000000Z"));
}

/// Parses a time given by a user or read from a record: RFC 3339, or a bare date `YYYY-MM-DD`
/// (midnight UTC).
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Some(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .ok()
        .map(|d| d.midnight().assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_has_fixed_microsecond_utc_form() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000007 +02:00);
        assert_eq!(format_ts(t), "2026-01-02T01:04:05.000007Z");
        let t2 = time::macros::datetime!(1999-12-31 23:59:59.999999 UTC);
        assert_eq!(format_ts(t2), "1999-12-31T23:59:59.999999Z");
        assert_eq!(parse_time("2026-01-02T01:04:05.000007Z").unwrap(), t);
        assert_eq!(
            parse_time("2026-01-02").unwrap(),
            time::macros::datetime!(2026-01-02 00:00 UTC)
        );
    }

    #[test]
    fn kinds_round_trip_through_text() {
        let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Kind::ALL.len());
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }
}
