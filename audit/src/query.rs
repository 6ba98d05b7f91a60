//! `pgcloak audit query`: filter records from the file chain or the PostgreSQL table and print
//! them as an aligned table, JSON lines or CSV; `summary` answers the breach-scope question
//! (who accessed which classified column, how, how often, how many rows).
//!
//! Formats:
//! - `table`: one header line and one line per record, columns padded to align: seq, ts, user,
//!   role, kind, decision, tables, columns (`name=access`), rows, statement (cut to 80 chars).
//!   Control characters are shown as spaces so a record never breaks the layout.
//! - `json`: JSON lines, each exactly the stored record line (so it can be verified again).
//! - `csv`: RFC 4180 (CRLF line ends, fields with `,` `"` CR or LF quoted, quotes doubled), a
//!   header row with every record field; `tables` and `columns` cells hold JSON text; null
//!   values are empty cells.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::canonical::{self, Record};
use crate::config::PgSinkConfig;
use crate::error::AuditError;
use crate::event::{format_ts, AuditEvent, Decision, Kind};

/// Which records to show; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Login user, exactly.
    pub user: Option<String>,
    /// Policy role, exactly.
    pub role: Option<String>,
    /// A table touched: `schema.table`, or just `table`.
    pub table: Option<String>,
    /// A classified column touched: `schema.table.column`, `table.column` or `column`.
    pub column: Option<String>,
    pub decision: Option<Decision>,
    pub kind: Option<Kind>,
    /// From this time on (inclusive).
    pub since: Option<OffsetDateTime>,
    /// Before this time (exclusive).
    pub until: Option<OffsetDateTime>,
    /// A just-in-time grant: its steps (`kind = "grant"`, `fingerprint = "grant:<id>"`) and the
    /// statements served under it (`reason = "served under grant <id>"`, or among `grants ...`).
    pub grant: Option<i64>,
}

/// Whether a statement event's reason says it was served under grant `id`.
fn served_under(reason: Option<&str>, id: i64) -> bool {
    let Some(r) = reason else { return false };
    let Some(ids) = r
        .strip_prefix("served under grants ")
        .or_else(|| r.strip_prefix("served under grant "))
    else {
        return false;
    };
    ids.split(", ").any(|x| x.parse() == Ok(id))
}

fn name_matches(full: &str, wanted: &str) -> bool {
    full == wanted
        || (full.len() > wanted.len()
            && full.ends_with(wanted)
            && full.as_bytes()[full.len() - wanted.len() - 1] == b'.')
}

impl Filter {
    pub fn matches(&self, ev: &AuditEvent) -> bool {
        if self.user.as_ref().is_some_and(|u| *u != ev.user)
            || self
                .role
                .as_ref()
                .is_some_and(|r| Some(r) != ev.role.as_ref())
            || self.decision.is_some_and(|d| d != ev.decision)
            || self.kind.is_some_and(|k| k != ev.kind)
        {
            return false;
        }
        if let Some(t) = &self.table {
            if !ev.tables.iter().any(|x| name_matches(x, t)) {
                return false;
            }
        }
        if let Some(c) = &self.column {
            if !ev.columns.iter().any(|x| name_matches(&x.name, c)) {
                return false;
            }
        }
        if let Some(g) = self.grant {
            let step = ev.fingerprint.as_deref() == Some(format!("grant:{g}").as_str());
            if !step && !served_under(ev.reason.as_deref(), g) {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = ev.time() else { return false };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        true
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

impl FromStr for Format {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(AuditError::Config(format!(
                "unknown format {other:?}; use table, json or csv"
            ))),
        }
    }
}

/// Matching events from a stream of JSON lines. Checkpoints are skipped; an incomplete last line
/// (a record being written) is ignored; any other unreadable line is an error.
pub fn query_lines<R: BufRead>(
    mut reader: R,
    filter: &Filter,
    source: &Path,
) -> Result<Vec<AuditEvent>, AuditError> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| AuditError::Io {
                path: source.to_path_buf(),
                action: "reading",
                source: e,
            })?;
        if read == 0 {
            break;
        }
        n += 1;
        if buf.last() != Some(&b'\n') {
            break;
        }
        buf.pop();
        let rec = std::str::from_utf8(&buf)
            .map_err(|e| e.to_string())
            .and_then(canonical::parse_line)
            .map_err(|reason| AuditError::Corrupt {
                path: source.to_path_buf(),
                reason: format!("line {n}: {reason}"),
            })?;
        if let Record::Event(ev) = rec {
            if filter.matches(&ev) {
                out.push(ev);
            }
        }
    }
    Ok(out)
}

/// Matching events from the chain written at `path` (rotated files first, then `path`).
pub fn query_path(path: &Path, filter: &Filter) -> Result<Vec<AuditEvent>, AuditError> {
    let files = crate::sink::file::chain_files(path);
    if files.is_empty() {
        return Err(AuditError::Io {
            path: path.to_path_buf(),
            action: "opening",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mut out = Vec::new();
    for f in files {
        let file = std::fs::File::open(&f).map_err(|e| AuditError::Io {
            path: f.clone(),
            action: "opening",
            source: e,
        })?;
        out.extend(query_lines(std::io::BufReader::new(file), filter, &f)?);
    }
    Ok(out)
}

/// Matching events from `pgcloak_audit.statements`, ordered by time, instance and seq.
pub async fn query_postgres(
    cfg: &PgSinkConfig,
    filter: &Filter,
) -> Result<Vec<AuditEvent>, AuditError> {
    use crate::sink::postgres::{connect, describe_pg_error, row_to_event, EVENT_COLUMNS};
    use tokio_postgres::types::ToSql;

    let err = |action, reason| AuditError::Postgres {
        target: cfg.target(),
        action,
        reason,
    };
    let client = connect(cfg).await.map_err(|r| err("connecting", r))?;
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut add = |cond: &str, p: Box<dyn ToSql + Sync + Send>| {
        params.push(p);
        conds.push(cond.replace("$?", &format!("${}", params.len())));
    };
    if let Some(u) = &filter.user {
        add("\"user\" = $?", Box::new(u.clone()));
    }
    if let Some(r) = &filter.role {
        add("role = $?", Box::new(r.clone()));
    }
    if let Some(d) = filter.decision {
        add("decision = $?", Box::new(d.as_str().to_string()));
    }
    if let Some(k) = filter.kind {
        add("kind = $?", Box::new(k.as_str().to_string()));
    }
    if let Some(t) = &filter.table {
        add(
            "EXISTS (SELECT 1 FROM jsonb_array_elements_text(tables) t(n) WHERE t.n = $? OR t.n LIKE '%.' || $?)",
            Box::new(t.clone()),
        );
    }
    if let Some(c) = &filter.column {
        add(
            "EXISTS (SELECT 1 FROM jsonb_array_elements(columns) c(v) WHERE c.v->>'name' = $? OR c.v->>'name' LIKE '%.' || $?)",
            Box::new(c.clone()),
        );
    }
    if let Some(g) = filter.grant {
        add(
            "(fingerprint = 'grant:' || $? OR (reason LIKE 'served under grant%' AND \
              $? = ANY (string_to_array(regexp_replace(reason, '^served under grants? ', ''), ', '))))",
            Box::new(g.to_string()),
        );
    }
    if let Some(s) = filter.since {
        add("ts >= $?::text::timestamptz", Box::new(format_ts(s)));
    }
    if let Some(u) = filter.until {
        add("ts < $?::text::timestamptz", Box::new(format_ts(u)));
    }
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM pgcloak_audit.statements");
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY ts, instance, seq");
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(&sql, &refs)
        .await
        .map_err(|e| err("querying pgcloak_audit.statements", describe_pg_error(&e)))?;
    rows.iter()
        .map(|r| row_to_event(r).map_err(|e| err("reading a row", e)))
        .collect()
}

fn display_cell(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() > max {
        let mut t: String = clean.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        clean
    }
}

fn write_aligned<W: Write>(
    w: &mut W,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |w: &mut W, cells: &[String]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count() + 2));
            }
        }
        writeln!(w, "{}", s.trim_end())
    };
    line(w, &header.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
    for r in rows {
        line(w, r)?;
    }
    Ok(())
}

/// Quotes a CSV field per RFC 4180 when needed.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_csv_row<W: Write>(w: &mut W, cells: &[String]) -> std::io::Result<()> {
    let row: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
    write!(w, "{}\r\n", row.join(","))
}

const CSV_HEADER: [&str; 21] = [
    "seq",
    "ts",
    "instance",
    "session",
    "client",
    "user",
    "role",
    "database",
    "application",
    "kind",
    "statement",
    "fingerprint",
    "tables",
    "columns",
    "decision",
    "reason",
    "rows",
    "duration_us",
    "sqlstate",
    "prev_hash",
    "hash",
];

/// Prints events in `format`.
pub fn write_events<W: Write>(
    w: &mut W,
    events: &[AuditEvent],
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            for ev in events {
                writeln!(w, "{}", canonical::event_line(ev))?;
            }
        }
        Format::Csv => {
            let header: Vec<String> = CSV_HEADER.iter().map(|h| h.to_string()).collect();
            write_csv_row(w, &header)?;
            for ev in events {
                let o = |s: &Option<String>| s.clone().unwrap_or_default();
                let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
                write_csv_row(
                    w,
                    &[
                        ev.seq.to_string(),
                        ev.ts.clone(),
                        ev.instance.clone(),
                        ev.session.clone(),
                        ev.client.clone(),
                        ev.user.clone(),
                        o(&ev.role),
                        ev.database.clone(),
                        ev.application.clone(),
                        ev.kind.as_str().to_string(),
                        o(&ev.statement),
                        o(&ev.fingerprint),
                        serde_json::to_string(&ev.tables).unwrap_or_default(),
                        serde_json::to_string(&ev.columns).unwrap_or_default(),
                        ev.decision.as_str().to_string(),
                        o(&ev.reason),
                        n(ev.rows),
                        n(ev.duration_us),
                        o(&ev.sqlstate),
                        ev.prev_hash.clone(),
                        ev.hash.clone(),
                    ],
                )?;
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|ev| {
                    let cols: Vec<String> = ev
                        .columns
                        .iter()
                        .map(|c| format!("{}={}", c.name, c.access))
                        .collect();
                    vec![
                        ev.seq.to_string(),
                        display_cell(&ev.ts, 32),
                        display_cell(&ev.user, 24),
                        display_cell(ev.role.as_deref().unwrap_or("-"), 20),
                        ev.kind.as_str().to_string(),
                        ev.decision.as_str().to_string(),
                        display_cell(&ev.tables.join(","), 40),
                        display_cell(&cols.join(","), 60),
                        ev.rows.map_or_else(|| "-".to_string(), |r| r.to_string()),
                        display_cell(
                            ev.statement
                                .as_deref()
                                .or(ev.reason.as_deref())
                                .unwrap_or(""),
                            80,
                        ),
                    ]
                })
                .collect();
            write_aligned(
                w,
                &[
                    "SEQ",
                    "TS",
                    "USER",
                    "ROLE",
                    "KIND",
                    "DECISION",
                    "TABLES",
                    "COLUMNS",
                    "ROWS",
                    "STATEMENT",
                ],
                &rows,
            )?;
        }
    }
    Ok(())
}

/// [`write_events`] into a `String`.
pub fn format_events(events: &[AuditEvent], format: Format) -> String {
    let mut v = Vec::new();
    let _ = write_events(&mut v, events, format);
    String::from_utf8(v).unwrap_or_default()
}

/// One line of the breach-scope summary: how a user accessed one classified column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SummaryRow {
    pub user: String,
    pub column: String,
    pub class: String,
    /// The access given (`plaintext`, `masked`, `null`, `deny`, `write`, ...).
    pub access: String,
    /// Statements that touched the column with this access.
    pub statements: u64,
    /// Sum of `rows` of those statements (rows returned or affected).
    pub rows: u64,
    pub first_ts: String,
    pub last_ts: String,
}

/// Counts, per user × classified column × access, the statements and rows over `events`
/// (already filtered, e.g. by a time window). Columns of class `public` are left out. Sorted by
/// user, column, access.
pub fn summarize(events: &[AuditEvent]) -> Vec<SummaryRow> {
    let mut map: BTreeMap<(String, String, String), SummaryRow> = BTreeMap::new();
    for ev in events {
        for c in &ev.columns {
            if c.class == "public" {
                continue;
            }
            let key = (ev.user.clone(), c.name.clone(), c.access.clone());
            let row = map.entry(key).or_insert_with(|| SummaryRow {
                user: ev.user.clone(),
                column: c.name.clone(),
                class: c.class.clone(),
                access: c.access.clone(),
                statements: 0,
                rows: 0,
                first_ts: ev.ts.clone(),
                last_ts: ev.ts.clone(),
            });
            row.statements += 1;
            row.rows += ev.rows.unwrap_or(0);
            if ev.ts < row.first_ts {
                row.first_ts = ev.ts.clone();
            }
            if ev.ts > row.last_ts {
                row.last_ts = ev.ts.clone();
            }
        }
    }
    map.into_values().collect()
}

/// Prints a summary in `format` (json: one object per line).
pub fn write_summary<W: Write>(
    w: &mut W,
    rows: &[SummaryRow],
    format: Format,
) -> std::io::Result<()> {
    let cells = |r: &SummaryRow| {
        vec![
            r.user.clone(),
            r.column.clone(),
            r.class.clone(),
            r.access.clone(),
            r.statements.to_string(),
            r.rows.to_string(),
            r.first_ts.clone(),
            r.last_ts.clone(),
        ]
    };
    let header = [
        "user",
        "column",
        "class",
        "access",
        "statements",
        "rows",
        "first_ts",
        "last_ts",
    ];
    match format {
        Format::Json => {
            for r in rows {
                writeln!(w, "{}", serde_json::to_string(r).unwrap_or_default())?;
            }
        }
        Format::Csv => {
            write_csv_row(w, &header.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
            for r in rows {
                write_csv_row(w, &cells(r))?;
            }
        }
        Format::Table => {
            let upper: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
            let upper: Vec<&str> = upper.iter().map(|s| s.as_str()).collect();
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cells(r).into_iter().map(|c| display_cell(&c, 60)).collect())
                .collect();
            write_aligned(w, &upper, &body)?;
        }
    }
    Ok(())
}

/// [`write_summary`] into a `String`.
pub fn format_summary(rows: &[SummaryRow], format: Format) -> String {
    let mut v = Vec::new();
    let _ = write_summary(&mut v, rows, format);
    String::from_utf8(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{seal, GENESIS};
    use crate::event::ColumnAccess;

    fn ev(seq: u64, user: &str, role: &str, access: &str, deny: bool, ts: &str) -> AuditEvent {
        let mut e = AuditEvent {
            seq,
            ts: ts.into(),
            instance: "n".into(),
            session: "s".into(),
            client: "127.0.0.1:1".into(),
            user: user.into(),
            role: Some(role.into()),
            database: "shop".into(),
            application: "app".into(),
            kind: Kind::Select,
            statement: Some("SELECT phone,\n \"name\" FROM customers WHERE id = $1".into()),
            fingerprint: None,
            tables: vec!["public.customers".into()],
            columns: vec![
                ColumnAccess {
                    name: "public.customers.phone".into(),
                    class: "confidential".into(),
                    access: access.into(),
                },
                ColumnAccess {
                    name: "public.customers.name".into(),
                    class: "public".into(),
                    access: "plaintext".into(),
                },
            ],
            decision: if deny {
                Decision::Deny
            } else {
                Decision::Allow
            },
            reason: None,
            rows: Some(seq * 10),
            duration_us: Some(1),
            sqlstate: None,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        };
        seal(&mut e);
        e
    }

    fn sample() -> Vec<AuditEvent> {
        vec![
            ev(
                1,
                "alice",
                "app",
                "plaintext",
                false,
                "2026-01-01T10:00:00.000000Z",
            ),
            ev(
                2,
                "carol",
                "support",
                "masked",
                false,
                "2026-01-01T11:00:00.000000Z",
            ),
            ev(
                3,
                "alice",
                "app",
                "plaintext",
                false,
                "2026-01-02T10:00:00.000000Z",
            ),
            ev(
                4,
                "mallory",
                "default",
                "deny",
                true,
                "2026-01-03T10:00:00.000000Z",
            ),
        ]
    }

    fn seqs(f: &Filter) -> Vec<u64> {
        sample()
            .iter()
            .filter(|e| f.matches(e))
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn grant_reasons_name_their_ids() {
        assert!(served_under(Some("served under grant 7"), 7));
        assert!(served_under(Some("served under grants 3, 7"), 7));
        assert!(!served_under(Some("served under grants 3, 17"), 7));
        assert!(!served_under(Some("pgcloak: refused"), 7));
        assert!(!served_under(None, 7));
    }

    #[test]
    fn filters() {
        assert_eq!(seqs(&Filter::default()), [1, 2, 3, 4]);
        let f = |u: &str| Filter {
            user: Some(u.into()),
            ..Filter::default()
        };
        assert_eq!(seqs(&f("alice")), [1, 3]);
        assert_eq!(
            seqs(&Filter {
                role: Some("support".into()),
                ..Filter::default()
            }),
            [2]
        );
        assert_eq!(
            seqs(&Filter {
                decision: Some(Decision::Deny),
                ..Filter::default()
            }),
            [4]
        );
        for t in ["customers", "public.customers"] {
            assert_eq!(
                seqs(&Filter {
                    table: Some(t.into()),
                    ..Filter::default()
                })
                .len(),
                4
            );
        }
        // Suffixes match on name boundaries only.
        assert!(seqs(&Filter {
            table: Some("stomers".into()),
            ..Filter::default()
        })
        .is_empty());
        for c in ["phone", "customers.phone", "public.customers.phone"] {
            assert_eq!(
                seqs(&Filter {
                    column: Some(c.into()),
                    ..Filter::default()
                })
                .len(),
                4
            );
        }
        assert!(seqs(&Filter {
            column: Some("hone".into()),
            ..Filter::default()
        })
        .is_empty());
        let window = Filter {
            since: parse_time_opt("2026-01-01T10:30:00Z"),
            until: parse_time_opt("2026-01-03"),
            ..Filter::default()
        };
        assert_eq!(seqs(&window), [2, 3]);
        // until is exclusive, since inclusive.
        let exact = Filter {
            since: parse_time_opt("2026-01-02T10:00:00Z"),
            until: parse_time_opt("2026-01-03T10:00:00Z"),
            ..Filter::default()
        };
        assert_eq!(seqs(&exact), [3]);
    }

    fn parse_time_opt(s: &str) -> Option<OffsetDateTime> {
        crate::event::parse_time(s)
    }

    #[test]
    fn table_is_aligned_and_one_line_per_record() {
        let out = format_events(&sample(), Format::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("SEQ  TS"));
        // Every column starts at the same offset on every line.
        for col in [
            "USER",
            "ROLE",
            "KIND",
            "DECISION",
            "TABLES",
            "COLUMNS",
            "ROWS",
            "STATEMENT",
        ] {
            let at = lines[0].find(col).unwrap();
            for l in &lines[1..] {
                let chars: Vec<char> = l.chars().collect();
                assert_eq!(
                    chars[at - 2..at],
                    [' ', ' '],
                    "column {col} misaligned in {l:?}"
                );
                assert_ne!(chars[at], ' ', "column {col} misaligned in {l:?}");
            }
        }
        assert!(lines[2].contains("public.customers.phone=masked"));
        assert!(lines[4].contains("deny"));
        // The newline inside the statement does not break the row.
        assert!(lines[1].contains("SELECT phone,  \"name\" FROM"));
    }

    #[test]
    fn csv_follows_rfc4180() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        let out = format_events(&sample()[..1], Format::Csv);
        let (header, rest) = out.split_once("\r\n").unwrap();
        assert_eq!(header.split(',').count(), 21);
        assert!(header.starts_with("seq,ts,instance,session,client,user,role"));
        assert!(rest.starts_with(
            "1,2026-01-01T10:00:00.000000Z,n,s,127.0.0.1:1,alice,app,shop,app,select,"
        ));
        assert!(rest.contains("\"SELECT phone,\n \"\"name\"\" FROM customers WHERE id = $1\""));
        assert!(rest.ends_with("\r\n"));
    }

    #[test]
    fn json_lines_are_the_stored_records() {
        let events = sample();
        let out = format_events(&events, Format::Json);
        let back: Vec<AuditEvent> = out
            .lines()
            .map(|l| match canonical::parse_line(l).unwrap() {
                Record::Event(e) => e,
                Record::Checkpoint(_) => panic!(),
            })
            .collect();
        assert_eq!(back, events);
        let via_reader = query_lines(out.as_bytes(), &Filter::default(), Path::new("x")).unwrap();
        assert_eq!(via_reader, events);
    }

    #[test]
    fn summary_counts_reads_per_user_and_classified_column() {
        let mut events = sample();
        events.push(ev(
            5,
            "alice",
            "app",
            "plaintext",
            false,
            "2026-01-04T10:00:00.000000Z",
        ));
        let s = summarize(&events);
        // Public columns are left out; alice read phone 3 times, 10+30+50 rows.
        assert_eq!(s.len(), 3);
        let alice = s.iter().find(|r| r.user == "alice").unwrap();
        assert_eq!((alice.statements, alice.rows), (3, 90));
        assert_eq!(alice.access, "plaintext");
        assert_eq!(alice.first_ts, "2026-01-01T10:00:00.000000Z");
        assert_eq!(alice.last_ts, "2026-01-04T10:00:00.000000Z");
        assert!(s.iter().any(|r| r.user == "mallory" && r.access == "deny"));
        let table = format_summary(&s, Format::Table);
        assert!(table.starts_with("USER"));
        assert_eq!(table.lines().count(), 4);
        let json = format_summary(&s, Format::Json);
        let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(first["column"], "public.customers.phone");
        assert_eq!(format_summary(&s, Format::Csv).lines().count(), 4);
    }

    #[test]
    fn format_names_parse() {
        assert_eq!("csv".parse::<Format>().unwrap(), Format::Csv);
        assert!("xml"
            .parse::<Format>()
            .unwrap_err()
            .to_string()
            .contains("table, json or csv"));
    }
}
