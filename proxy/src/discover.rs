//! `pgcloak discover`: where is the sensitive data? Connects as the `[catalog]` user, reads every
//! table's columns (with their comments), samples up to N values of each text-like column
//! (`TABLESAMPLE SYSTEM` sized from the table's row estimate, then `LIMIT`; a statement timeout per
//! table, so a big table is never scanned), and classifies each column with
//! [`pgcloak_policy::discover`]: content and structure first, names and comments second.
//!
//! Sampled values live only inside [`Tally::add`]: they are never printed, logged, stored or put
//! into an error message (a failing sample query is reported by table and SQLSTATE only).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgcloak_policy::discover::{Finding, Tally};
use pgcloak_policy::Policy;

use crate::catalog::{CatalogConn, CatalogError};
use crate::config::Config;

/// How long sampling one table may take before it is skipped (and reported).
const TABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Toml,
}

/// `pgcloak discover` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Database to scan (default: the [catalog] database).
    #[arg(long, value_name = "D")]
    pub database: Option<String>,
    /// Only this schema (default: every schema but the system ones and pgcloak's own).
    #[arg(long, value_name = "S")]
    pub schema: Option<String>,
    /// Values sampled per column.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub sample: u32,
    /// Output format: a table, JSON, or a policy.toml fragment `pgcloak check` accepts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show only columns the current policy does not cover.
    #[arg(long)]
    pub diff: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// One column found.
#[derive(Debug, Clone)]
pub struct Found {
    /// `schema.table.column`.
    pub column: String,
    /// The column's type as PostgreSQL prints it.
    pub storage: String,
    pub finding: Finding,
    /// Already a `[[column]]` of the policy.
    pub in_policy: bool,
}

/// What a scan found, and what it could not look at.
#[derive(Debug, Default)]
pub struct Report {
    pub database: String,
    pub tables: usize,
    pub columns: usize,
    pub found: Vec<Found>,
    /// Tables whose sampling failed: (table, why, without any value).
    pub skipped: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("--sample must be between 1 and 100000, not {0}")]
    Sample(u32),
}

struct Column {
    name: String,
    storage: String,
    comment: Option<String>,
    text_like: bool,
}

struct Table {
    schema: String,
    name: String,
    estimate: f64,
    columns: Vec<Column>,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Scans and classifies; `policy` marks what is already covered.
pub fn run(config: &Config, opts: &Options, policy: &Policy) -> Result<Report, DiscoverError> {
    if !(1..=100_000).contains(&opts.sample) {
        return Err(DiscoverError::Sample(opts.sample));
    }
    let mut cfg = config.clone();
    if let Some(d) = &opts.database {
        cfg.catalog.database = d.clone();
    }
    let conn = CatalogConn::connect_blocking(&cfg)?;
    let tables = list_tables(&conn, opts.schema.as_deref())?;
    let mut report = Report {
        database: cfg.catalog.database.clone(),
        tables: tables.len(),
        columns: tables.iter().map(|t| t.columns.len()).sum(),
        ..Report::default()
    };
    let bar = progress(opts.quiet, tables.len() as u64);
    for t in &tables {
        bar.set_message(format!("{}.{}", t.schema, t.name));
        let sampled = t.columns.iter().filter(|c| c.text_like).count();
        let tallies = if sampled == 0 {
            Ok(Vec::new())
        } else {
            sample_table(&conn, t, opts.sample)
        };
        let tallies = match tallies {
            Ok(v) => v,
            Err(why) => {
                report
                    .skipped
                    .push((format!("{}.{}", t.schema, t.name), why));
                Vec::new()
            }
        };
        let mut next = tallies.into_iter();
        for c in &t.columns {
            let tally = if c.text_like {
                next.next().unwrap_or_default()
            } else {
                Tally::default()
            };
            if let Some(finding) = tally.verdict(&c.name, c.comment.as_deref()) {
                let in_policy = policy.column(&t.schema, &t.name, &c.name).is_some();
                if opts.diff && in_policy {
                    continue;
                }
                report.found.push(Found {
                    column: format!("{}.{}.{}", t.schema, t.name, c.name),
                    storage: c.storage.clone(),
                    finding,
                    in_policy,
                });
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}

fn progress(quiet: bool, tables: u64) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(tables), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "discover [{elapsed_precise}] {wide_bar} {pos}/{len} tables {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn list_tables(conn: &CatalogConn, schema: Option<&str>) -> Result<Vec<Table>, CatalogError> {
    let rows = conn.query(
        "SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::float8, a.attname, \
                format_type(a.atttypid, a.atttypmod), col_description(c.oid, a.attnum), \
                t.typcategory = 'S' \
         FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         JOIN pg_type t ON t.oid = a.atttypid \
         WHERE c.relkind IN ('r', 'p') \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'pgcloak', 'pgcloak_audit') \
           AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%' \
           AND ($1::text IS NULL OR n.nspname = $1) \
         ORDER BY n.nspname, c.relname, a.attnum",
        &[&schema],
    )?;
    let mut tables: Vec<Table> = Vec::new();
    for r in rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let col = Column {
            name: r.get(3),
            storage: r.get(4),
            comment: r.get(5),
            text_like: r.get::<_, Option<bool>>(6).unwrap_or(false),
        };
        match tables.last_mut() {
            Some(t) if t.schema == schema && t.name == name => t.columns.push(col),
            _ => tables.push(Table {
                schema,
                name,
                estimate: r.get(2),
                columns: vec![col],
            }),
        }
    }
    Ok(tables)
}

/// Samples every text-like column of `t` in one query; one [`Tally`] per text-like column, in
/// order. The error names the table and SQLSTATE, never a value.
fn sample_table(conn: &CatalogConn, t: &Table, n: u32) -> Result<Vec<Tally>, String> {
    let cols: Vec<&Column> = t.columns.iter().filter(|c| c.text_like).collect();
    let list = cols
        .iter()
        .map(|c| format!("{}::text", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
    // A few times more rows than wanted from the block sample (blocks hold uneven row counts), all
    // of a small table.
    let sample = if t.estimate > f64::from(n) * 10.0 {
        let pct = (f64::from(n) * 300.0 / t.estimate).clamp(0.01, 100.0);
        format!(" TABLESAMPLE SYSTEM ({pct:.4})")
    } else {
        String::new()
    };
    let sql = format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; \
         DECLARE pgcloak_discover NO SCROLL CURSOR FOR SELECT {list} FROM {table}{sample} LIMIT {n}",
        TABLE_TIMEOUT.as_millis()
    );
    let failed = |e: CatalogError| {
        let _ = conn.batch("ROLLBACK");
        format!("sampling failed ({})", e.sqlstate().unwrap_or("connection"))
    };
    conn.batch(&sql).map_err(failed)?;
    let mut tallies = vec![Tally::default(); cols.len()];
    loop {
        let rows = conn
            .query("FETCH 500 FROM pgcloak_discover", &[])
            .map_err(failed)?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            for (i, tally) in tallies.iter_mut().enumerate() {
                if let Ok(Some(v)) = r.try_get::<_, Option<&str>>(i) {
                    tally.add(v);
                }
            }
        }
    }
    conn.batch("COMMIT").map_err(failed)?;
    Ok(tallies)
}

/// The findings as a table, JSON, or a policy.toml fragment.
pub fn render(report: &Report, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Table => {
            let _ = writeln!(
                out,
                "{:<40} {:<13} {:<18} {:>10} {:>8}  {:<7} policy",
                "column", "class", "detector", "confidence", "sampled", "basis"
            );
            for f in &report.found {
                let _ = writeln!(
                    out,
                    "{:<40} {:<13} {:<18} {:>9.0}% {:>8}  {:<7} {}",
                    f.column,
                    f.finding.class.as_str(),
                    f.finding.detector.as_str(),
                    f.finding.confidence * 100.0,
                    f.finding.sampled,
                    f.finding.basis,
                    if f.in_policy { "covered" } else { "-" }
                );
            }
            let _ = writeln!(
                out,
                "{} column(s) found in {} table(s), {} column(s) of database {}",
                report.found.len(),
                report.tables,
                report.columns,
                report.database
            );
        }
        Format::Json => {
            let found: Vec<serde_json::Value> = report
                .found
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "column": f.column,
                        "storage": f.storage,
                        "class": f.finding.class.as_str(),
                        "detector": f.finding.detector.as_str(),
                        "confidence": (f.finding.confidence * 1000.0).round() / 1000.0,
                        "sampled": f.finding.sampled,
                        "basis": f.finding.basis,
                        "in_policy": f.in_policy,
                        "suggested": {
                            "encrypt": f.finding.detector.suggested_mode(),
                            "mask": f.finding.detector.suggested_mask(),
                            "type": logical_type(&f.storage),
                        },
                    })
                })
                .collect();
            let skipped: BTreeMap<&str, &str> = report
                .skipped
                .iter()
                .map(|(t, w)| (t.as_str(), w.as_str()))
                .collect();
            let doc = serde_json::json!({
                "database": report.database,
                "tables": report.tables,
                "columns": report.columns,
                "found": found,
                "skipped": skipped,
            });
            out = serde_json::to_string_pretty(&doc).unwrap_or_default();
            out.push('\n');
        }
        Format::Toml => {
            let _ = writeln!(
                out,
                "# pgcloak discover: database {}, {} table(s); review before use (classes and modes are suggestions)",
                report.database, report.tables
            );
            for f in &report.found {
                let _ = writeln!(
                    out,
                    "\n# {}: {:.0}% of {} sampled value(s) matched{}",
                    f.finding.detector,
                    f.finding.confidence * 100.0,
                    f.finding.sampled,
                    if f.finding.basis == "name" {
                        " (flagged by its name or comment)"
                    } else {
                        ""
                    }
                );
                if f.in_policy {
                    let _ = writeln!(out, "# {} is already in the policy", f.column);
                    continue;
                }
                let ty = logical_type(&f.storage);
                // Ciphertext needs bytea, text or varchar storage: encrypt only columns stored so.
                let storable = matches!(ty, "text") || f.storage == "bytea";
                let _ = writeln!(out, "[[column]]\nname = \"{}\"", f.column);
                let _ = writeln!(out, "class = \"{}\"", f.finding.class.as_str());
                if storable {
                    let _ = writeln!(out, "encrypt = \"{}\"", f.finding.detector.suggested_mode());
                } else {
                    let _ = writeln!(
                        out,
                        "# stored as {}: to encrypt it, change its type to bytea first",
                        f.storage
                    );
                }
                let _ = writeln!(out, "type = \"{ty}\"");
                let _ = writeln!(out, "mask = \"{}\"", f.finding.detector.suggested_mask());
            }
        }
    }
    out
}

/// The policy's logical type for a PostgreSQL type name.
fn logical_type(storage: &str) -> &'static str {
    let s = storage.to_ascii_lowercase();
    match s.as_str() {
        "integer" => "int4",
        "bigint" => "int8",
        "date" => "date",
        "boolean" => "bool",
        "jsonb" => "jsonb",
        "bytea" => "bytea",
        "timestamp with time zone" => "timestamptz",
        _ if s.starts_with("numeric") => "numeric",
        _ => "text",
    }
}
