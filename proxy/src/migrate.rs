//! `pgcloak encrypt COLUMN` and `pgcloak reencrypt COLUMN`: rewrite the stored values of one
//! encrypted policy column in place — online, in batches, resumable, safe against concurrent writes.
//!
//! # What is read and what is written
//!
//! **encrypt** replaces each non-NULL plaintext value with an envelope under the column's active key
//! version, encoded for the storage type (`bytea`: the raw envelope; `text`/`varchar`: armoured
//! `pgc1:...`). The plaintext is read as follows, then converted with
//! [`typed::canonical_from_text`] to the canonical form the proxy encrypts:
//!
//! | storage | logical type | the stored value is |
//! |---|---|---|
//! | `text`, `varchar` | any | the logical type's text form (`42`, `2024-01-02`, `t`, `\x0102`, ...) |
//! | `bytea` | `bytea` | the value itself (the raw bytes) |
//! | `bytea` | any other | the UTF-8 bytes of the logical type's text form — what `ALTER TABLE t ALTER COLUMN c TYPE bytea USING convert_to(c::text, 'UTF8')` leaves behind |
//!
//! Values that already are envelopes decrypting under the column's key are left alone. A value that
//! is not valid for the logical type, or an envelope that does not decrypt under the column's key,
//! stops the run with an error naming the row's key — never the value.
//!
//! **reencrypt** decrypts each envelope under whichever live version it names and encrypts it again
//! under the active version, in the encoding it came in ([`ColumnCipher::reencrypt`]). Values already
//! on the active version are left alone; plaintext values are counted, left alone and reported (run
//! `pgcloak encrypt` for them).
//!
//! # Walking the table
//!
//! With a primary key: keyset pagination in key order, `WHERE (k1, k2) > ($1, $2) ORDER BY k1, k2
//! LIMIT batch`, one index range scan per batch however large the table. The key may be composite and
//! of any type (values travel as text and are cast back); it may not include the column itself.
//!
//! Without a primary key: ranges of heap pages, `ctid >= '(p,0)' AND ctid < '(p+n,0)'` (a TID range
//! scan), with `n` adapted to give about `batch` rows; the walk goes on until it reaches the table's
//! current end, so rows inserted during the run are included. On full pages an UPDATE puts the new
//! row version on a page ahead of the walk, which then sees it again (already done: counted as
//! skipped), so a ctid walk may scan up to twice the table's rows. A row moved by a concurrent update to a page behind the walk is not seen again by it;
//! the final check reports such rows (partitioned tables need a primary key).
//!
//! # Concurrent writes: compare-and-set
//!
//! A batch is read without locks, transformed in memory, then written in one transaction by one
//! statement, `UPDATE t SET c = v.new FROM unnest(keys, old, new) v WHERE t.key = v.key AND t.c =
//! v.old` (values compared byte for byte). Under READ COMMITTED PostgreSQL re-checks that condition
//! against the newest version of a row after waiting for a concurrent writer, so a value written by
//! anyone between our read and our write is never overwritten: the row is a *conflict*. With a primary
//! key, conflicting rows are re-read and retried (at most [`MAX_RETRIES`] times; a row still changing
//! is counted as unresolved and left for the next run); in a ctid walk they are left to the walk and
//! the final check. Only the column is written, so concurrent changes to other columns of the row are
//! kept as they are. The UPDATE fires the table's triggers like any other UPDATE.
//!
//! # Interruption, idempotence, resuming
//!
//! Every run skips the values already done, so an interrupted run (Ctrl-C, SIGKILL, a lost
//! connection) is completed by running the same command again, and running it twice changes nothing
//! the second time. So as not to rescan the finished part, the walk's position after each batch is
//! stored in the same transaction as the batch, in table `pgcloak.migrations` of the column's database
//! (created on first use; when the `[catalog]` user may not create it, the command still works and
//! a second run rescans from the start). A stored position is reused only by the same operation on the
//! same column with the same key, walk and (reencrypt) active version; `--restart` ignores it. It is
//! deleted when a walk completes. A session advisory lock keeps two runs on one column apart.
//!
//! Ctrl-C (or SIGTERM) lets the current batch commit and stops; a second one rolls the current batch
//! back at once. Either way the command prints how to continue and exits with 130.
//!
//! # Final check
//!
//! After a complete walk, one read-only pass counts (in SQL, from the envelope headers) the values
//! still not in the target form. Values written behind the walk directly to PostgreSQL (not through
//! pgcloak, so in plaintext) show up here; the command then exits 1 asking to run it again.
//!
//! # Privileges and output
//!
//! The command connects as the `[catalog]` user to the `[catalog]` database, or to `--database`.
//! That user needs SELECT and UPDATE on the table (and CREATE on the database for
//! `pgcloak.migrations`, optional). Progress goes to stderr: a progress bar (indicatif: rows, rate,
//! ETA) on a terminal, else a line every few seconds. Nothing printed contains a value or a key; error
//! messages name rows by their primary key (or ctid).

use std::collections::HashSet;
use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgcloak_keymgr::{looks_like_envelope, typed, ColumnCipher, Encoding, KeyError, LogicalType};
use thiserror::Error;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use crate::catalog::describe;
use crate::config::Config;
use crate::keys::KeysError;

/// Largest `--batch`: one UPDATE carries every changed row of a batch.
pub const MAX_BATCH: usize = 100_000;
/// How often a conflicting row is re-read and retried within one run.
pub const MAX_RETRIES: usize = 5;
/// Interval of the one-line progress reports when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Which rewrite to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Encrypt plaintext values under the active key version.
    Encrypt,
    /// Move ciphertexts of older key versions to the active version.
    Reencrypt,
}

impl Op {
    /// The command name (`encrypt` / `reencrypt`).
    pub fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Reencrypt => "reencrypt",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Command-line options of `pgcloak encrypt` / `pgcloak reencrypt` (flattened into both).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000, value_name = "ROWS")]
    pub batch: usize,
    /// Database holding the table (default: `[catalog] database` of the config).
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Print no progress, only the final summary and errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Process at most this many rows per second, to limit the load on a busy server.
    #[arg(long, value_name = "ROWS")]
    pub max_rate: Option<u64>,
    /// Ignore the position saved by an interrupted run and walk the table from the start.
    #[arg(long)]
    pub restart: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            batch: 1000,
            database: None,
            quiet: false,
            max_rate: None,
            restart: false,
        }
    }
}

/// What a run did. Every row scanned ends up in exactly one of `updated`, `skipped`,
/// `not_encrypted` and `unresolved` (in a ctid walk, a conflicting row in none of them).
#[derive(Debug, Clone)]
pub struct Summary {
    /// `schema.table.column`.
    pub column: String,
    pub op: Op,
    pub database: String,
    /// How the table was walked: `primary key (id)` or `ctid ranges`.
    pub walk: String,
    /// Whether the walk started from a position saved by an earlier, interrupted run.
    pub resumed: bool,
    /// Rows read by this run.
    pub scanned: u64,
    /// Values rewritten.
    pub updated: u64,
    /// Values already in the target form, NULLs, and rows deleted while being retried.
    pub skipped: u64,
    /// reencrypt: plaintext values seen (left alone; run `pgcloak encrypt`).
    pub not_encrypted: u64,
    /// Compare-and-set misses: a row changed between our read and our write (then re-read).
    pub conflicts: u64,
    /// Rows that kept changing through [`MAX_RETRIES`] retries, left for the next run.
    pub unresolved: u64,
    /// Final check after a complete walk: values still not in the target form (encrypt: plaintext;
    /// reencrypt: ciphertext of an older version). `None` when the walk did not complete.
    pub remaining: Option<u64>,
    /// Final check: plaintext values left (for reencrypt; equals `remaining` for encrypt).
    pub plaintext_left: Option<u64>,
    /// Stopped by Ctrl-C/SIGTERM before the walk completed.
    pub interrupted: bool,
    pub duration: Duration,
}

impl Summary {
    /// Whether every value of the column is now in the target form.
    pub fn is_complete(&self) -> bool {
        !self.interrupted && self.remaining == Some(0)
    }

    /// Rows scanned per second.
    pub fn rows_per_sec(&self) -> f64 {
        let s = self.duration.as_secs_f64();
        if s > 0.0 {
            self.scanned as f64 / s
        } else {
            0.0
        }
    }

    /// The process exit code: 0 complete, 130 interrupted, 1 values left (run again).
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            130
        } else if self.is_complete() {
            0
        } else {
            1
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pgcloak {} {}: {} rows updated, {} skipped (already done or NULL), {} conflicts retried; {} rows scanned by {} in {:.1}s ({:.0} rows/s)",
            self.op,
            self.column,
            self.updated,
            self.skipped,
            self.conflicts,
            self.scanned,
            self.walk,
            self.duration.as_secs_f64(),
            self.rows_per_sec()
        )?;
        if self.resumed {
            f.write_str(", resumed from the saved position")?;
        }
        if self.unresolved > 0 {
            write!(
                f,
                "; {} rows kept changing concurrently and were left",
                self.unresolved
            )?;
        }
        if self.op == Op::Reencrypt {
            let plain = self.plaintext_left.unwrap_or(self.not_encrypted);
            if plain > 0 {
                write!(
                    f,
                    "; {plain} values are not encrypted at all, run `pgcloak encrypt {}`",
                    self.column
                )?;
            }
        }
        if self.interrupted {
            f.write_str("; interrupted, run the same command again to continue")?;
        } else if let Some(n) = self.remaining.filter(|n| *n > 0) {
            write!(
                f,
                "; {n} values still need it (written behind the walk, not through pgcloak?), run the same command again"
            )?;
        }
        Ok(())
    }
}

/// Why `encrypt`/`reencrypt` stopped. Each message names the thing, the place and the fix; none
/// contains a value or key material.
#[derive(Debug, Error)]
pub enum MigrateError {
    // ---- the command line -------------------------------------------------------------------
    #[error("{0:?} is not a column name of the form schema.table.column; name the column with its schema and table, e.g. public.customers.phone")]
    BadColumnName(String),
    #[error("--batch {0} is out of range; use 1 to {MAX_BATCH} rows per transaction")]
    BadBatch(usize),

    // ---- the policy ---------------------------------------------------------------------------
    #[error("no policy file is configured in {config}, so column {column} is not an encrypted column; set `policy = \"policy.toml\"` and list the column there with encrypt = \"randomized\" or \"deterministic\"")]
    NoPolicy { column: String, config: String },
    #[error("column {column} is not in the policy {file}; add a [[column]] entry for it with encrypt = \"randomized\" or \"deterministic\", then run this command again")]
    NotInPolicy { column: String, file: String },
    #[error("column {column} is not encrypted in the policy ({location}: encrypt = \"none\"); set encrypt = \"randomized\" or \"deterministic\" there first")]
    NotEncrypted { column: String, location: String },
    #[error("{0}")]
    Policy(String),

    // ---- keys ---------------------------------------------------------------------------------
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Key(#[from] KeyError),

    // ---- the database -------------------------------------------------------------------------
    #[error("{0}")]
    Connect(String),
    #[error("table {table} does not exist in database {database}; check the column name, or pass --database NAME when the table lives in another database than [catalog] database")]
    NoTable { table: String, database: String },
    #[error("column {column} does not exist in table {table} (database {database}); fix the policy entry or create the column")]
    NoColumn {
        column: String,
        table: String,
        database: String,
    },
    #[error(
        "{table} is a {kind}, not a table; run the command for the column of the underlying table"
    )]
    NotATable { table: String, kind: &'static str },
    #[error("column {column} is stored as {storage}; encrypted values need bytea or text storage: change it first with `{fix}`, then run `pgcloak {op} {column}` again")]
    Storage {
        column: String,
        storage: String,
        fix: String,
        op: Op,
    },
    #[error("column {column} is stored as {storage}, whose length limit is too short for ciphertext; remove the limit first with `{fix}`, then run `pgcloak {op} {column}` again")]
    LengthLimit {
        column: String,
        storage: String,
        fix: String,
        op: Op,
    },
    #[error("column {column} is part of the primary key of {table}; pgcloak finds rows by their key and cannot rewrite key columns in place; give the table another primary key (or encrypt a copy of the column)")]
    KeyColumn { column: String, table: String },
    #[error("{table} is partitioned and has no primary key; add a primary key (rows are walked in key order) and run the command again")]
    PartitionedWithoutKey { table: String },
    #[error("another `pgcloak encrypt` or `pgcloak reencrypt` of column {column} is running in database {database}; wait for it to finish, then run this command again")]
    Busy { column: String, database: String },
    #[error("{what} failed in database {database}: {reason}")]
    Database {
        what: String,
        database: String,
        reason: String,
    },

    // ---- the data -----------------------------------------------------------------------------
    #[error("the {row} holds a value that is not valid {what} ({reason}); correct or NULL that value (it is not printed here), then run `{rerun}` again")]
    InvalidValue {
        /// `row with primary key (id)=(42) of public.t`
        row: String,
        what: String,
        reason: String,
        /// `pgcloak encrypt public.t.c`
        rerun: String,
    },
    #[error("the {row} holds a ciphertext that column {column} cannot use ({source}); restore that value or set it to NULL, then run `{rerun}` again")]
    Undecryptable {
        row: String,
        column: String,
        rerun: String,
        source: Box<KeyError>,
    },

    // ---- the local system ---------------------------------------------------------------------
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
    #[error("internal error: {0}; this is a pgcloak bug, please report it")]
    Internal(String),
}

/// Runs `pgcloak encrypt|reencrypt COLUMN` to completion on a current-thread runtime of its own.
///
/// Listens for Ctrl-C and SIGTERM: the first lets the current batch commit and stops, the second
/// rolls it back. (Once installed, these listeners stay for the life of the process; library callers
/// that manage signals themselves use [`run_with`].) Progress goes to stderr; the caller prints the
/// returned [`Summary`] and exits with [`Summary::exit_code`].
pub fn run(config: &Config, column: &str, op: Op, opts: &Options) -> Result<Summary, MigrateError> {
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    run_inner(config, column, op, opts, stop, abort, true)
}

/// [`run`] without signal handling: cancel `stop` to end after the current batch commits, `abort` to
/// roll the current batch back and end at once.
pub fn run_with(
    config: &Config,
    column: &str,
    op: Op,
    opts: &Options,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<Summary, MigrateError> {
    run_inner(config, column, op, opts, stop, abort, false)
}

fn run_inner(
    config: &Config,
    column: &str,
    op: Op,
    opts: &Options,
    stop: CancellationToken,
    abort: CancellationToken,
    signals: bool,
) -> Result<Summary, MigrateError> {
    if opts.batch == 0 || opts.batch > MAX_BATCH {
        return Err(MigrateError::BadBatch(opts.batch));
    }
    let target = resolve_policy_column(config, column)?;
    // Loading the keyring checks the master key against it and creates missing column keys, as
    // `serve` does. It may open its own side connection (keyring = "postgres"), so it runs before
    // our runtime exists.
    let master = crate::keys::load_master_key(config)?;
    let (keyring, _created) = crate::keys::load_for_serve(config, &master)?;
    drop(master);
    let cipher = keyring.require_cipher(&target.name)?;

    let mut db_config = config.clone();
    if let Some(db) = &opts.database {
        db_config.catalog.database = db.clone();
    }
    let rerun = rerun_command(config, &target.name, op, opts);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MigrateError::Runtime(e.to_string()))?;
    rt.block_on(async {
        if signals {
            tokio::spawn(watch_signals(stop.clone(), abort.clone(), opts.quiet));
        }
        let mut job = Job::connect(&db_config, &target, cipher, op, opts).await?;
        let result = job.run(&stop, &abort, &rerun).await;
        job.disconnect().await;
        result
    })
}

/// The command that continues an interrupted run, for messages.
fn rerun_command(config: &Config, column: &str, op: Op, opts: &Options) -> String {
    let mut s = format!("pgcloak {op} {column} --config {}", config.source.display());
    if let Some(db) = &opts.database {
        s.push_str(&format!(" --database {db}"));
    }
    s
}

async fn watch_signals(stop: CancellationToken, abort: CancellationToken, quiet: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        seen += 1;
        if seen == 1 {
            if !quiet {
                eprintln!("pgcloak: stopping after the current batch commits (interrupt again to roll it back now)");
            }
            stop.cancel();
        } else {
            abort.cancel();
            return;
        }
    }
}

// ---- the policy column ---------------------------------------------------------------------------

/// The policy column being migrated.
#[derive(Debug, Clone)]
struct Target {
    /// `schema.table.column` as the policy spells it (the key's name in the keyring).
    name: String,
    schema: String,
    table: String,
    column: String,
    logical: LogicalType,
}

/// Splits `schema.table.column` into its three parts.
fn split_column_name(name: &str) -> Result<(&str, &str, &str), MigrateError> {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [s, t, c] if !s.is_empty() && !t.is_empty() && !c.is_empty() => Ok((s, t, c)),
        _ => Err(MigrateError::BadColumnName(
            name.chars().take(200).collect(),
        )),
    }
}

fn resolve_policy_column(config: &Config, column: &str) -> Result<Target, MigrateError> {
    split_column_name(column)?;
    let Some(policy_path) = &config.policy else {
        return Err(MigrateError::NoPolicy {
            column: column.to_string(),
            config: config.source.display().to_string(),
        });
    };
    let policy = crate::guard::load_policy(config).map_err(MigrateError::Policy)?;
    // Policy names are folded the way PostgreSQL folds unquoted identifiers (lower case).
    let cp = policy
        .columns()
        .iter()
        .find(|c| c.qualified_name() == column)
        .or_else(|| {
            policy
                .columns()
                .iter()
                .find(|c| c.qualified_name().eq_ignore_ascii_case(column))
        })
        .ok_or_else(|| MigrateError::NotInPolicy {
            column: column.to_string(),
            file: policy_path.display().to_string(),
        })?;
    let name = cp.qualified_name();
    if !cp.encrypt.is_encrypted() {
        return Err(MigrateError::NotEncrypted {
            column: name,
            location: format!("{}:{}", policy_path.display(), cp.line),
        });
    }
    let logical: LogicalType = cp
        .logical_type
        .as_str()
        .parse()
        .map_err(|e| MigrateError::Internal(format!("policy type: {e}")))?;
    Ok(Target {
        name,
        schema: cp.schema.clone(),
        table: cp.table.clone(),
        column: cp.column.clone(),
        logical,
    })
}

// ---- storage and value transformation (pure) -----------------------------------------------------

/// How the column stores ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// `bytea`: raw envelopes.
    Bytea,
    /// `text` / `varchar` without a length limit: armoured envelopes.
    Text,
}

impl Storage {
    fn sql_type(self) -> &'static str {
        match self {
            Storage::Bytea => "bytea",
            Storage::Text => "text",
        }
    }

    fn encoding(self) -> Encoding {
        match self {
            Storage::Bytea => Encoding::Raw,
            Storage::Text => Encoding::Armored,
        }
    }
}

/// Why a storage type cannot hold ciphertext.
#[derive(Debug, PartialEq, Eq)]
enum StorageProblem {
    /// Not a string or bytea type: the `ALTER TABLE` that converts it.
    WrongType(String),
    /// `varchar(n)`: the `ALTER TABLE` that lifts the limit.
    LengthLimit(String),
}

/// An identifier as SQL needs it: bare when it is a plain lower-case name, else double-quoted.
fn ident(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        quote(s)
    }
}

/// Always double-quoted (for the SQL this module runs).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Classifies the storage by the base type's name (`pg_type.typname`) and the column's
/// `format_type` text.
fn classify_storage(
    t: &Target,
    base_type: &str,
    formatted: &str,
) -> Result<Storage, StorageProblem> {
    let table = format!("{}.{}", ident(&t.schema), ident(&t.table));
    let col = ident(&t.column);
    match base_type {
        "bytea" => Ok(Storage::Bytea),
        "text" => Ok(Storage::Text),
        "varchar" if !formatted.contains('(') => Ok(Storage::Text),
        "varchar" => Err(StorageProblem::LengthLimit(format!(
            "ALTER TABLE {table} ALTER COLUMN {col} TYPE text"
        ))),
        _ => Err(StorageProblem::WrongType(match t.logical {
            // bytea storage of a bytea value holds the bytes themselves, so a value of any other
            // storage type keeps its text form in a text column instead.
            LogicalType::Bytea => {
                format!("ALTER TABLE {table} ALTER COLUMN {col} TYPE text USING {col}::text")
            }
            _ => format!(
                "ALTER TABLE {table} ALTER COLUMN {col} TYPE bytea USING convert_to({col}::text, 'UTF8')"
            ),
        })),
    }
}

/// What to do with one stored value.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Already in the target form.
    Skip,
    /// reencrypt: a plaintext value (left alone).
    Plaintext,
    /// Write this new stored value.
    Write(Vec<u8>),
}

/// Why a stored value cannot be transformed.
#[derive(Debug)]
enum ValueProblem {
    /// Not a valid value of the logical type (reason, never the value).
    Invalid { what: String, reason: String },
    /// An envelope this column's key does not open.
    Cipher(KeyError),
}

/// The canonical plaintext of a stored plaintext value (see the module docs for the forms).
fn canonical_plaintext(
    storage: Storage,
    logical: LogicalType,
    stored: &[u8],
) -> Result<Vec<u8>, ValueProblem> {
    let invalid = |what: String, e: KeyError| ValueProblem::Invalid {
        what,
        reason: match e {
            KeyError::InvalidValue { reason, .. } => reason.to_string(),
            other => other.to_string(),
        },
    };
    match (storage, logical) {
        (Storage::Bytea, LogicalType::Bytea) => Ok(stored.to_vec()),
        (Storage::Bytea, _) => {
            let what = format!("UTF-8 text of a {logical} value");
            if std::str::from_utf8(stored).is_err() {
                return Err(ValueProblem::Invalid {
                    what,
                    reason: "the bytes are not UTF-8".to_string(),
                });
            }
            typed::canonical_from_text(logical, stored).map_err(|e| invalid(what, e))
        }
        (Storage::Text, _) => typed::canonical_from_text(logical, stored)
            .map_err(|e| invalid(format!("{logical} text"), e)),
    }
}

/// Decides and computes the new stored value of one non-NULL value.
fn transform(
    op: Op,
    cipher: &ColumnCipher,
    storage: Storage,
    logical: LogicalType,
    stored: &[u8],
) -> Result<Outcome, ValueProblem> {
    match op {
        Op::Encrypt => {
            if looks_like_envelope(stored) {
                // Already encrypted — provided it really is this column's ciphertext; anything else
                // (another column's value, damage) must not be silently accepted as done.
                return cipher
                    .decrypt(stored)
                    .map(|_| Outcome::Skip)
                    .map_err(ValueProblem::Cipher);
            }
            let plain = canonical_plaintext(storage, logical, stored)?;
            cipher
                .encrypt_as(&plain, storage.encoding())
                .map(Outcome::Write)
                .map_err(ValueProblem::Cipher)
        }
        Op::Reencrypt => {
            if !looks_like_envelope(stored) {
                return Ok(Outcome::Plaintext);
            }
            match cipher.reencrypt(stored) {
                Ok(None) => Ok(Outcome::Skip),
                Ok(Some(v)) => Ok(Outcome::Write(v)),
                Err(e) => Err(ValueProblem::Cipher(e)),
            }
        }
    }
}

// ---- the walk ------------------------------------------------------------------------------------

/// One column of the primary key.
#[derive(Debug, Clone)]
struct KeyCol {
    name: String,
    /// Schema-qualified, quoted type name for casts from text (no typmod, so nothing is truncated).
    ty: String,
}

#[derive(Debug, Clone)]
enum Walk {
    Key(Vec<KeyCol>),
    Ctid,
}

impl Walk {
    fn describe(&self) -> String {
        match self {
            Walk::Key(k) => format!(
                "primary key ({})",
                k.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Walk::Ctid => "ctid ranges".to_string(),
        }
    }

    /// How a row is named in messages: by its key, like PostgreSQL's `Key (id)=(42)`.
    fn row(&self, key: &[String]) -> String {
        match self {
            Walk::Key(k) => format!(
                "row with primary key ({})=({})",
                k.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                key.join(", ")
            ),
            Walk::Ctid => format!("row at ctid {}", key.join(", ")),
        }
    }
}

/// Where the walk is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Start,
    /// After this key.
    After(Vec<String>),
    /// At this heap page.
    Page(u64),
}

impl Position {
    fn to_json(&self) -> String {
        match self {
            Position::Start => serde_json::json!({"start": true}),
            Position::After(k) => serde_json::json!({ "after": k }),
            Position::Page(p) => serde_json::json!({ "page": p }),
        }
        .to_string()
    }

    fn from_json(s: &str) -> Option<Position> {
        let v: serde_json::Value = serde_json::from_str(s).ok()?;
        if let Some(k) = v.get("after") {
            let k: Vec<String> = serde_json::from_value(k.clone()).ok()?;
            return Some(Position::After(k));
        }
        if let Some(p) = v.get("page").and_then(serde_json::Value::as_u64) {
            return Some(Position::Page(p));
        }
        v.get("start").map(|_| Position::Start)
    }
}

/// One row as read: its key (primary key values as text, or the ctid) and the stored value.
struct Item {
    key: Vec<String>,
    value: Option<Vec<u8>>,
}

/// One compare-and-set write.
struct Change {
    key: Vec<String>,
    old: Vec<u8>,
    new: Vec<u8>,
}

/// The prepared statements of one run.
struct Statements {
    /// Key walk: the first batch (`$1` limit). Ctid walk: a page range (`$1`, `$2` tids).
    first: Statement,
    /// Key walk: the batch after a key.
    next: Option<Statement>,
    /// Compare-and-set UPDATE returning the keys written.
    update: Statement,
    /// Key walk: re-read rows by key.
    reread: Option<Statement>,
}

/// What the catalog says about the table.
struct TableInfo {
    /// `"schema"."table"`, quoted.
    sql: String,
    /// `schema.table` for messages.
    display: String,
    storage: Storage,
    walk: Walk,
    reltuples: f64,
    relpages: i64,
}

struct Job<'a> {
    client: Client,
    database: String,
    user: String,
    target: &'a Target,
    cipher: &'a ColumnCipher,
    op: Op,
    opts: &'a Options,
    table: TableInfo,
    st: Statements,
    /// Upsert of the saved position, when `pgcloak.migrations` is usable.
    save: Option<Statement>,
    /// What a saved position is valid for.
    signature: String,
    summary: Summary,
}

fn db_err(
    what: impl Into<String>,
    database: &str,
    user: &str,
    table: &str,
    e: &tokio_postgres::Error,
) -> MigrateError {
    let mut reason = describe(e);
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        reason.push_str(&format!(
            "; grant the [catalog] user {user} SELECT and UPDATE on {table}"
        ));
    }
    MigrateError::Database {
        what: what.into(),
        database: database.to_string(),
        reason,
    }
}

impl<'a> Job<'a> {
    async fn connect(
        cfg: &Config,
        target: &'a Target,
        cipher: &'a ColumnCipher,
        op: Op,
        opts: &'a Options,
    ) -> Result<Job<'a>, MigrateError> {
        let database = cfg.catalog.database.clone();
        let user = cfg.catalog.user.clone();
        let client = crate::catalog::connect(cfg)
            .await
            .map_err(MigrateError::Connect)?;
        let display = format!("{}.{}", target.schema, target.table);
        let e =
            |what: &str, err: &tokio_postgres::Error| db_err(what, &database, &user, &display, err);
        let _ = client
            .batch_execute(&format!("SET application_name = 'pgcloak {op}'"))
            .await;
        let table = inspect(&client, target, &database, op)
            .await
            .map_err(|r| r.either(|err| e("reading the catalog", &err)))?;

        // One run per column at a time (released with the session, also on SIGKILL).
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('pgcloak migrate ' || $1::text, 0))",
                &[&target.name],
            )
            .await
            .map_err(|err| e("taking the advisory lock", &err))?
            .get(0);
        if !locked {
            return Err(MigrateError::Busy {
                column: target.name.clone(),
                database: database.clone(),
            });
        }
        let st = prepare(&client, &table, target)
            .await
            .map_err(|err| e(&format!("preparing the statements for {display}"), &err))?;
        let signature = format!(
            "{}; key {}{}",
            table.walk.describe(),
            cipher.key_id(),
            match op {
                Op::Encrypt => String::new(),
                Op::Reencrypt => format!(" version {}", cipher.active_version()),
            }
        );
        let summary = Summary {
            column: target.name.clone(),
            op,
            database: database.clone(),
            walk: table.walk.describe(),
            resumed: false,
            scanned: 0,
            updated: 0,
            skipped: 0,
            not_encrypted: 0,
            conflicts: 0,
            unresolved: 0,
            remaining: None,
            plaintext_left: None,
            interrupted: false,
            duration: Duration::ZERO,
        };
        Ok(Job {
            client,
            database,
            user,
            target,
            cipher,
            op,
            opts,
            table,
            st,
            save: None,
            signature,
            summary,
        })
    }

    async fn disconnect(self) {
        // Dropping the client closes the session; the advisory lock goes with it.
        drop(self.client);
    }

    fn err(&self, what: impl Into<String>, e: &tokio_postgres::Error) -> MigrateError {
        db_err(what, &self.database, &self.user, &self.table.display, e)
    }

    /// Creates (or finds) `pgcloak.migrations` and returns the saved position, if any.
    async fn open_progress(&mut self, say: &Progress) -> (Position, u64) {
        const DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgcloak; \
            CREATE TABLE IF NOT EXISTS pgcloak.migrations (column_name text NOT NULL, op text NOT NULL, \
            target text NOT NULL, position text NOT NULL, rows_done bigint NOT NULL, \
            updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (column_name, op))";
        let exists: bool = match self
            .client
            .query_one("SELECT to_regclass('pgcloak.migrations') IS NOT NULL", &[])
            .await
        {
            Ok(r) => r.get(0),
            Err(_) => false,
        };
        if !exists {
            if let Err(e) = self.client.batch_execute(DDL).await {
                say.note(&format!(
                    "pgcloak: note: cannot create table pgcloak.migrations in database {} ({}); the run works without it, but an interrupted run restarts its walk from the beginning",
                    self.database,
                    describe(&e)
                ));
                return (Position::Start, 0);
            }
        }
        let save = self
            .client
            .prepare(
                "INSERT INTO pgcloak.migrations (column_name, op, target, position, rows_done) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (column_name, op) DO UPDATE SET \
                 target = EXCLUDED.target, position = EXCLUDED.position, rows_done = EXCLUDED.rows_done, updated_at = now()",
            )
            .await;
        match save {
            Ok(s) => self.save = Some(s),
            Err(e) => {
                say.note(&format!(
                    "pgcloak: note: cannot use table pgcloak.migrations in database {} ({}); an interrupted run restarts its walk from the beginning",
                    self.database,
                    describe(&e)
                ));
                return (Position::Start, 0);
            }
        }
        if self.opts.restart {
            return (Position::Start, 0);
        }
        let row = self
            .client
            .query_opt(
                "SELECT target, position, rows_done FROM pgcloak.migrations WHERE column_name = $1 AND op = $2",
                &[&self.target.name, &self.op.name()],
            )
            .await
            .ok()
            .flatten();
        match row {
            Some(r) if r.get::<_, String>(0) == self.signature => {
                let pos = Position::from_json(&r.get::<_, String>(1)).unwrap_or(Position::Start);
                let done = r.get::<_, i64>(2).max(0) as u64;
                if pos == Position::Start {
                    (Position::Start, 0)
                } else {
                    (pos, done)
                }
            }
            _ => (Position::Start, 0),
        }
    }

    async fn forget_progress(&self) {
        if self.save.is_some() {
            let _ = self
                .client
                .execute(
                    "DELETE FROM pgcloak.migrations WHERE column_name = $1 AND op = $2",
                    &[&self.target.name, &self.op.name()],
                )
                .await;
        }
    }

    async fn run(
        &mut self,
        stop: &CancellationToken,
        abort: &CancellationToken,
        rerun: &str,
    ) -> Result<Summary, MigrateError> {
        let started = Instant::now();
        let label = format!("pgcloak {} {}", self.op, self.target.name);
        let mut progress = Progress::new(self.opts.quiet, label.clone());
        let (mut pos, done_before) = self.open_progress(&progress).await;
        self.summary.resumed = pos != Position::Start;
        let total = self.estimate_rows().await?;
        progress.start(total, done_before);
        if self.summary.resumed {
            progress.note(&format!(
                "{label}: resuming after {done_before} rows from the position saved by an earlier run (--restart to walk from the start)"
            ));
        }

        let mut pages_per_batch: u64 = match self.table.walk {
            Walk::Ctid => {
                let per_page = if self.table.relpages > 0 && self.table.reltuples > 0.0 {
                    (self.table.reltuples / self.table.relpages as f64).max(1.0)
                } else {
                    50.0
                };
                ((self.opts.batch as f64 / per_page).ceil() as u64).max(1)
            }
            Walk::Key(_) => 0,
        };
        if matches!(self.table.walk, Walk::Ctid) && !matches!(pos, Position::Page(_)) {
            pos = Position::Page(0);
        }
        let mut end_page = match self.table.walk {
            Walk::Ctid => self.relation_pages().await?,
            Walk::Key(_) => 0,
        };
        let mut done_total = done_before;
        let mut rolled_back = false;
        let mut completed = false;

        loop {
            if stop.is_cancelled() || abort.is_cancelled() {
                break;
            }
            // Read one batch.
            let (items, next_pos, range) = match (&self.table.walk, &pos) {
                (Walk::Ctid, Position::Page(p)) => {
                    let p = *p;
                    if p >= end_page {
                        // The table may have grown (inserts, or rows our own updates moved).
                        end_page = self.relation_pages().await?;
                        if p >= end_page {
                            completed = true;
                            break;
                        }
                    }
                    let hi = p + pages_per_batch;
                    let (lo_t, hi_t) = (format!("({p},0)"), format!("({hi},0)"));
                    let items = self.fetch_pages(&lo_t, &hi_t).await?;
                    // Adapt the page range to about `batch` rows.
                    let n = items.len();
                    if n < self.opts.batch / 2 && pages_per_batch < 1 << 20 {
                        pages_per_batch *= 2;
                    } else if n > self.opts.batch * 2 && pages_per_batch > 1 {
                        pages_per_batch /= 2;
                    }
                    (items, Position::Page(hi), Some((lo_t, hi_t)))
                }
                (Walk::Key(_), p) => {
                    let items = self.fetch_keys(p).await?;
                    if items.is_empty() {
                        completed = true;
                        break;
                    }
                    let last = items[items.len() - 1].key.clone();
                    (items, Position::After(last), None)
                }
                (Walk::Ctid, _) => {
                    return Err(MigrateError::Internal("ctid walk without a page".into()))
                }
            };
            let n = items.len() as u64;
            let changes = self.plan(items)?;
            let save = (next_pos.to_json(), (done_total + n) as i64);
            let written = tokio::select! {
                r = self.write(&changes, range.as_ref(), Some(&save)) => Some(r),
                _ = abort.cancelled() => None,
            };
            let Some(written) = written else {
                rolled_back = true;
                self.cancel_running().await;
                break;
            };
            let written = written?;
            self.summary.scanned += n;
            done_total += n;
            pos = next_pos;
            let missed = self.account(changes, &written);
            if !missed.is_empty() {
                match self.table.walk {
                    Walk::Key(_) => {
                        let r = tokio::select! {
                            r = self.retry(missed) => Some(r),
                            _ = abort.cancelled() => None,
                        };
                        let Some(r) = r else {
                            rolled_back = true;
                            self.cancel_running().await;
                            break;
                        };
                        r?;
                    }
                    // The rows moved: the walk sees them again if they moved ahead of it, the
                    // final check counts them otherwise.
                    Walk::Ctid => {}
                }
            }
            progress.advance(n, done_total);
            self.throttle(started, stop).await;
        }

        self.summary.interrupted = !completed;
        if completed {
            self.forget_progress().await;
            progress.phase("final check");
            let (plain, old) = self.final_check().await?;
            self.summary.plaintext_left = Some(plain);
            self.summary.remaining = Some(match self.op {
                Op::Encrypt => plain,
                Op::Reencrypt => old,
            });
        }
        progress.finish();
        self.summary.duration = started.elapsed();
        if self.summary.interrupted {
            eprintln!(
                "{label}: interrupted after {} rows ({} updated); the last batch was {}. Run the same command again to continue: {rerun}",
                self.summary.scanned,
                self.summary.updated,
                if rolled_back { "rolled back" } else { "committed" }
            );
        }
        Ok(self.summary.clone())
    }

    /// Best effort: stops a statement still running on the server (e.g. waiting for a row lock), so
    /// that the rollback happens now rather than when the lock is released.
    async fn cancel_running(&self) {
        let token = self.client.cancel_token();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            token.cancel_query(tokio_postgres::NoTls),
        )
        .await;
    }

    async fn throttle(&self, started: Instant, stop: &CancellationToken) {
        let Some(rate) = self.opts.max_rate.filter(|r| *r > 0) else {
            return;
        };
        let due = Duration::from_secs_f64(self.summary.scanned as f64 / rate as f64);
        let elapsed = started.elapsed();
        if due > elapsed {
            tokio::select! {
                _ = tokio::time::sleep(due - elapsed) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    async fn estimate_rows(&self) -> Result<u64, MigrateError> {
        if self.table.reltuples > 0.0 {
            return Ok(self.table.reltuples as u64);
        }
        // Never analysed (or empty): count.
        let n: i64 = self
            .client
            .query_one(&format!("SELECT count(*) FROM {}", self.table.sql), &[])
            .await
            .map_err(|e| self.err(format!("counting the rows of {}", self.table.display), &e))?
            .get(0);
        Ok(n.max(0) as u64)
    }

    async fn relation_pages(&self) -> Result<u64, MigrateError> {
        let n: i64 = self
            .client
            .query_one(
                "SELECT (pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint)::bigint",
                &[&self.table.sql],
            )
            .await
            .map_err(|e| self.err(format!("reading the size of {}", self.table.display), &e))?
            .get(0);
        Ok(n.max(0) as u64)
    }

    fn decode_rows(
        &self,
        rows: Vec<tokio_postgres::Row>,
        nkeys: usize,
    ) -> Result<Vec<Item>, MigrateError> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut key = Vec::with_capacity(nkeys);
            for i in 0..nkeys {
                key.push(
                    r.try_get::<_, String>(i)
                        .map_err(|e| MigrateError::Internal(format!("reading a key: {e}")))?,
                );
            }
            let value = match self.table.storage {
                Storage::Text => r
                    .try_get::<_, Option<String>>(nkeys)
                    .map(|v| v.map(String::into_bytes)),
                Storage::Bytea => r.try_get::<_, Option<Vec<u8>>>(nkeys),
            }
            .map_err(|e| MigrateError::Internal(format!("reading a value: {e}")))?;
            out.push(Item { key, value });
        }
        Ok(out)
    }

    async fn fetch_keys(&self, pos: &Position) -> Result<Vec<Item>, MigrateError> {
        let limit = self.opts.batch as i64;
        let nkeys = match &self.table.walk {
            Walk::Key(k) => k.len(),
            Walk::Ctid => 1,
        };
        if let Position::After(key) = pos {
            if key.len() != nkeys {
                return Err(MigrateError::Internal(
                    "saved key has the wrong arity".into(),
                ));
            }
        }
        let rows = match pos {
            Position::After(key) => {
                let next = self
                    .st
                    .next
                    .as_ref()
                    .ok_or_else(|| MigrateError::Internal("no next statement".into()))?;
                let mut params: Vec<&(dyn ToSql + Sync)> =
                    key.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
                params.push(&limit);
                self.client.query(next, &params).await
            }
            _ => self.client.query(&self.st.first, &[&limit]).await,
        }
        .map_err(|e| self.err(format!("reading a batch of {}", self.table.display), &e))?;
        self.decode_rows(rows, nkeys)
    }

    async fn fetch_pages(&self, lo: &str, hi: &str) -> Result<Vec<Item>, MigrateError> {
        let rows = self
            .client
            .query(&self.st.first, &[&lo, &hi])
            .await
            .map_err(|e| {
                self.err(
                    format!("reading a page range of {}", self.table.display),
                    &e,
                )
            })?;
        self.decode_rows(rows, 1)
    }

    /// Transforms a batch; counts skips; fails on the first value that cannot be transformed.
    fn plan(&mut self, items: Vec<Item>) -> Result<Vec<Change>, MigrateError> {
        let mut changes = Vec::new();
        for item in items {
            let Some(value) = item.value else {
                self.summary.skipped += 1;
                continue;
            };
            match transform(
                self.op,
                self.cipher,
                self.table.storage,
                self.target.logical,
                &value,
            ) {
                Ok(Outcome::Skip) => self.summary.skipped += 1,
                Ok(Outcome::Plaintext) => self.summary.not_encrypted += 1,
                Ok(Outcome::Write(new)) => changes.push(Change {
                    key: item.key,
                    old: value,
                    new,
                }),
                Err(ValueProblem::Invalid { what, reason }) => {
                    return Err(MigrateError::InvalidValue {
                        row: format!(
                            "{} of {}",
                            self.table.walk.row(&item.key),
                            self.table.display
                        ),
                        what,
                        reason,
                        rerun: format!("pgcloak {} {}", self.op, self.target.name),
                    })
                }
                Err(ValueProblem::Cipher(source)) => {
                    return Err(MigrateError::Undecryptable {
                        row: format!(
                            "{} of {}",
                            self.table.walk.row(&item.key),
                            self.table.display
                        ),
                        column: self.target.name.clone(),
                        rerun: format!("pgcloak {} {}", self.op, self.target.name),
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(changes)
    }

    /// Writes `changes` with compare-and-set in one transaction, together with the walk position
    /// (`save`: position JSON, rows done). Returns the keys written.
    async fn write(
        &mut self,
        changes: &[Change],
        range: Option<&(String, String)>,
        save: Option<&(String, i64)>,
    ) -> Result<HashSet<Vec<String>>, MigrateError> {
        let save_stmt = self.save.clone().filter(|_| save.is_some());
        if changes.is_empty() && save_stmt.is_none() {
            return Ok(HashSet::new());
        }
        let nkeys = changes.first().map_or(0, |c| c.key.len());
        // Column-major parameter arrays: one text[] per key column, then old and new values.
        let mut key_cols: Vec<Vec<&str>> = vec![Vec::with_capacity(changes.len()); nkeys];
        for c in changes {
            for (i, k) in c.key.iter().enumerate() {
                key_cols[i].push(k.as_str());
            }
        }
        let (old_t, new_t, old_b, new_b);
        let mut params: Vec<&(dyn ToSql + Sync)> =
            key_cols.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
        match self.table.storage {
            Storage::Text => {
                old_t = changes
                    .iter()
                    .map(|c| utf8(&c.old))
                    .collect::<Result<Vec<&str>, _>>()?;
                new_t = changes
                    .iter()
                    .map(|c| utf8(&c.new))
                    .collect::<Result<Vec<&str>, _>>()?;
                params.push(&old_t);
                params.push(&new_t);
            }
            Storage::Bytea => {
                old_b = changes
                    .iter()
                    .map(|c| c.old.as_slice())
                    .collect::<Vec<&[u8]>>();
                new_b = changes
                    .iter()
                    .map(|c| c.new.as_slice())
                    .collect::<Vec<&[u8]>>();
                params.push(&old_b);
                params.push(&new_b);
            }
        }
        if let Some((lo, hi)) = range {
            params.push(lo);
            params.push(hi);
        }
        let display = self.table.display.clone();
        let target = self.target.name.clone();
        let op = self.op.name();
        let signature = self.signature.clone();
        let update = self.st.update.clone();
        let tx = self.client.transaction().await.map_err(|e| {
            db_err(
                "starting a transaction",
                &self.database,
                &self.user,
                &display,
                &e,
            )
        })?;
        let mut written = HashSet::with_capacity(changes.len());
        if !changes.is_empty() {
            let rows = tx.query(&update, &params).await.map_err(|e| {
                db_err(
                    format!("updating {display}"),
                    &self.database,
                    &self.user,
                    &display,
                    &e,
                )
            })?;
            for r in rows {
                let mut key = Vec::with_capacity(nkeys);
                for i in 0..nkeys {
                    key.push(r.get::<_, String>(i));
                }
                written.insert(key);
            }
        }
        if let (Some(stmt), Some((pos, done))) = (save_stmt, save) {
            tx.execute(&stmt, &[&target, &op, &signature, pos, done])
                .await
                .map_err(|e| {
                    db_err(
                        "saving the position in pgcloak.migrations",
                        &self.database,
                        &self.user,
                        &display,
                        &e,
                    )
                })?;
        }
        tx.commit().await.map_err(|e| {
            db_err(
                format!("committing a batch of {display}"),
                &self.database,
                &self.user,
                &display,
                &e,
            )
        })?;
        Ok(written)
    }

    /// Counts written changes; returns the keys of those that missed (conflicts).
    fn account(
        &mut self,
        changes: Vec<Change>,
        written: &HashSet<Vec<String>>,
    ) -> Vec<Vec<String>> {
        let mut missed = Vec::new();
        for c in changes {
            if written.contains(&c.key) {
                self.summary.updated += 1;
            } else {
                self.summary.conflicts += 1;
                missed.push(c.key);
            }
        }
        missed
    }

    /// Key walk: re-reads rows that changed under us and tries again.
    async fn retry(&mut self, mut keys: Vec<Vec<String>>) -> Result<(), MigrateError> {
        let reread = self
            .st
            .reread
            .clone()
            .ok_or_else(|| MigrateError::Internal("no re-read statement".into()))?;
        for attempt in 0..MAX_RETRIES {
            if keys.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            let nkeys = keys[0].len();
            let mut cols: Vec<Vec<&str>> = vec![Vec::with_capacity(keys.len()); nkeys];
            for k in &keys {
                for (i, v) in k.iter().enumerate() {
                    cols[i].push(v.as_str());
                }
            }
            let params: Vec<&(dyn ToSql + Sync)> =
                cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            let rows = self.client.query(&reread, &params).await.map_err(|e| {
                self.err(
                    format!("re-reading changed rows of {}", self.table.display),
                    &e,
                )
            })?;
            let items = self.decode_rows(rows, nkeys)?;
            // Rows deleted meanwhile have nothing left to do.
            let found: HashSet<&Vec<String>> = items.iter().map(|i| &i.key).collect();
            self.summary.skipped += keys.iter().filter(|k| !found.contains(k)).count() as u64;
            let changes = self.plan(items)?;
            let written = self.write(&changes, None, None).await?;
            keys = self.account(changes, &written);
        }
        self.summary.unresolved += keys.len() as u64;
        Ok(())
    }

    /// Counts, in SQL from the envelope headers, non-NULL values that are not envelopes and those
    /// that are not under the active version.
    async fn final_check(&self) -> Result<(u64, u64), MigrateError> {
        let header = {
            let probe = self.cipher.encrypt(b"")?;
            probe[..12].to_vec()
        };
        let col = quote(&self.target.column);
        let row = match self.table.storage {
            Storage::Bytea => {
                let sql = format!(
                    "SELECT count(*) FILTER (WHERE substring(v from 1 for 3) <> '\\xc10a01'::bytea), \
                     count(*) FILTER (WHERE substring(v from 1 for 3) = '\\xc10a01'::bytea AND substring(v from 1 for 12) <> $1) \
                     FROM (SELECT {col}::bytea AS v FROM {} WHERE {col} IS NOT NULL) AS x",
                    self.table.sql
                );
                self.client.query_one(&sql, &[&header]).await
            }
            Storage::Text => {
                // Base64 encodes 3-byte groups on their own, so the 12 header bytes are exactly the
                // first 16 characters after the prefix.
                let prefix = pgcloak_keymgr::armor(&header);
                let sql = format!(
                    "SELECT count(*) FILTER (WHERE left(v, 9) <> 'pgc1:wQoB'), \
                     count(*) FILTER (WHERE left(v, 9) = 'pgc1:wQoB' AND left(v, {}) <> $1) \
                     FROM (SELECT {col}::text AS v FROM {} WHERE {col} IS NOT NULL) AS x",
                    prefix.len(),
                    self.table.sql
                );
                self.client.query_one(&sql, &[&prefix]).await
            }
        }
        .map_err(|e| self.err(format!("checking the values of {}", self.table.display), &e))?;
        let plain: i64 = row.get(0);
        let old: i64 = row.get(1);
        Ok((plain.max(0) as u64, old.max(0) as u64))
    }
}

fn utf8(b: &[u8]) -> Result<&str, MigrateError> {
    std::str::from_utf8(b).map_err(|_| MigrateError::Internal("a text value is not UTF-8".into()))
}

/// Either a plain migrate error or a database error still to be described.
enum InspectError {
    Db(tokio_postgres::Error),
    Other(MigrateError),
}

impl InspectError {
    fn either(self, f: impl FnOnce(tokio_postgres::Error) -> MigrateError) -> MigrateError {
        match self {
            InspectError::Db(e) => f(e),
            InspectError::Other(e) => e,
        }
    }
}

impl From<tokio_postgres::Error> for InspectError {
    fn from(e: tokio_postgres::Error) -> Self {
        InspectError::Db(e)
    }
}

impl From<MigrateError> for InspectError {
    fn from(e: MigrateError) -> Self {
        InspectError::Other(e)
    }
}

/// Reads the table's kind, the column's storage type and the primary key from the catalog.
async fn inspect(
    client: &Client,
    t: &Target,
    database: &str,
    op: Op,
) -> Result<TableInfo, InspectError> {
    let display = format!("{}.{}", t.schema, t.table);
    let rel = client
        .query_opt(
            "SELECT c.oid, c.relkind::text, c.reltuples::float8, c.relpages::bigint \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&t.schema, &t.table],
        )
        .await?
        .ok_or_else(|| MigrateError::NoTable {
            table: display.clone(),
            database: database.to_string(),
        })?;
    let oid: u32 = rel.get(0);
    let relkind: String = rel.get(1);
    let reltuples: f64 = rel.get(2);
    let relpages: i64 = rel.get(3);
    let kind = match relkind.as_str() {
        "r" | "p" => None,
        "v" => Some("view"),
        "m" => Some("materialized view"),
        "f" => Some("foreign table"),
        "i" | "I" => Some("index"),
        "S" => Some("sequence"),
        _ => Some("relation of another kind"),
    };
    if let Some(kind) = kind {
        return Err(MigrateError::NotATable {
            table: display,
            kind,
        }
        .into());
    }
    let col = client
        .query_opt(
            "SELECT bt.typname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid \
             JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END \
             WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid, &t.column],
        )
        .await?
        .ok_or_else(|| MigrateError::NoColumn {
            column: t.name.clone(),
            table: display.clone(),
            database: database.to_string(),
        })?;
    let base: String = col.get(0);
    let formatted: String = col.get(1);
    let storage = match classify_storage(t, &base, &formatted) {
        Ok(s) => s,
        Err(StorageProblem::WrongType(fix)) => {
            return Err(MigrateError::Storage {
                column: t.name.clone(),
                storage: formatted,
                fix,
                op,
            }
            .into())
        }
        Err(StorageProblem::LengthLimit(fix)) => {
            return Err(MigrateError::LengthLimit {
                column: t.name.clone(),
                storage: formatted,
                fix,
                op,
            }
            .into())
        }
    };
    let keys = client
        .query(
            "SELECT a.attname::text, format('%I.%I', tn.nspname, ty.typname) \
             FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             JOIN pg_type ty ON ty.oid = a.atttypid \
             JOIN pg_namespace tn ON tn.oid = ty.typnamespace \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await?;
    let walk = if keys.is_empty() {
        if relkind == "p" {
            return Err(MigrateError::PartitionedWithoutKey { table: display }.into());
        }
        Walk::Ctid
    } else {
        let cols: Vec<KeyCol> = keys
            .iter()
            .map(|r| KeyCol {
                name: r.get(0),
                ty: r.get(1),
            })
            .collect();
        if cols.iter().any(|c| c.name == t.column) {
            return Err(MigrateError::KeyColumn {
                column: t.name.clone(),
                table: display,
            }
            .into());
        }
        Walk::Key(cols)
    };
    Ok(TableInfo {
        sql: format!("{}.{}", quote(&t.schema), quote(&t.table)),
        display,
        storage,
        walk,
        reltuples,
        relpages,
    })
}

/// Builds and prepares the statements for the walk.
async fn prepare(
    client: &Client,
    table: &TableInfo,
    t: &Target,
) -> Result<Statements, tokio_postgres::Error> {
    let sql = build_sql(table, &quote(&t.column));
    let first = client.prepare(&sql.first).await?;
    let next = match &sql.next {
        Some(s) => Some(client.prepare(s).await?),
        None => None,
    };
    let update = client.prepare(&sql.update).await?;
    let reread = match &sql.reread {
        Some(s) => Some(client.prepare(s).await?),
        None => None,
    };
    Ok(Statements {
        first,
        next,
        update,
        reread,
    })
}

/// The SQL text of the walk's statements.
struct SqlText {
    first: String,
    next: Option<String>,
    update: String,
    reread: Option<String>,
}

fn build_sql(table: &TableInfo, col: &str) -> SqlText {
    let st = table.storage.sql_type();
    let tbl = &table.sql;
    // Byte-for-byte comparison: text under the "C" collation (a nondeterministic collation could
    // call two different strings equal), bytea as it is.
    let same = match table.storage {
        Storage::Text => format!("t.{col}::text COLLATE \"C\" = v.old_value"),
        Storage::Bytea => format!("t.{col}::bytea = v.old_value"),
    };
    match &table.walk {
        Walk::Key(keys) => {
            let n = keys.len();
            let names: Vec<String> = keys.iter().map(|k| quote(&k.name)).collect();
            // Qualified: an unqualified ORDER BY name would pick the output column of the same
            // name — the key cast to text — and walk in text order.
            let order = names
                .iter()
                .map(|k| format!("t.{k}"))
                .collect::<Vec<_>>()
                .join(", ");
            let as_text = names
                .iter()
                .enumerate()
                .map(|(i, k)| format!("t.{k}::text AS k{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let bound = keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("${}::text::{}", i + 1, k.ty))
                .collect::<Vec<_>>()
                .join(", ");
            let first = format!(
                "SELECT {as_text}, t.{col}::{st} AS v FROM {tbl} AS t ORDER BY {order} LIMIT $1"
            );
            let next = format!(
                "SELECT {as_text}, t.{col}::{st} AS v FROM {tbl} AS t WHERE ({order}) > ({bound}) ORDER BY {order} LIMIT ${}",
                n + 1
            );
            let vkeys = (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
            let arrays = (1..=n)
                .map(|i| format!("${i}::text[]"))
                .collect::<Vec<_>>()
                .join(", ");
            let join = keys
                .iter()
                .zip(&names)
                .enumerate()
                .map(|(i, (k, name))| format!("t.{name} = v.k{i}::{}", k.ty))
                .collect::<Vec<_>>()
                .join(" AND ");
            let returning = vkeys
                .iter()
                .map(|k| format!("v.{k}"))
                .collect::<Vec<_>>()
                .join(", ");
            let update = format!(
                "UPDATE {tbl} AS t SET {col} = v.new_value \
                 FROM unnest({arrays}, ${}::{st}[], ${}::{st}[]) AS v({}, old_value, new_value) \
                 WHERE {join} AND {same} RETURNING {returning}",
                n + 1,
                n + 2,
                vkeys.join(", ")
            );
            let reread = format!(
                "SELECT {returning}, t.{col}::{st} FROM {tbl} AS t \
                 JOIN unnest({arrays}) AS v({}) ON {join}",
                vkeys.join(", ")
            );
            SqlText {
                first,
                next: Some(next),
                update,
                reread: Some(reread),
            }
        }
        Walk::Ctid => SqlText {
            first: format!(
                "SELECT ctid::text, {col}::{st} FROM {tbl} WHERE ctid >= $1::text::tid AND ctid < $2::text::tid"
            ),
            next: None,
            update: format!(
                "UPDATE {tbl} AS t SET {col} = v.new_value \
                 FROM unnest($1::text[], $2::{st}[], $3::{st}[]) AS v(k0, old_value, new_value) \
                 WHERE t.ctid >= $4::text::tid AND t.ctid < $5::text::tid AND t.ctid = v.k0::tid AND {same} \
                 RETURNING v.k0"
            ),
            reread: None,
        },
    }
}

// ---- progress ------------------------------------------------------------------------------------

/// Progress on stderr: a bar on a terminal, a line every few seconds otherwise, nothing with
/// `--quiet`.
struct Progress {
    label: String,
    mode: ProgressMode,
}

enum ProgressMode {
    Quiet,
    Bar(ProgressBar),
    Log {
        started: Instant,
        last: Instant,
        total: u64,
        first: u64,
    },
}

impl Progress {
    fn new(quiet: bool, label: String) -> Progress {
        let mode = if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            // Hidden until `start` knows the length (no "0/0" frame).
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows, {rate}, ETA {eta} {msg}",
            )
            .map(|s| {
                s.with_key(
                    "rate",
                    |st: &indicatif::ProgressState, w: &mut dyn fmt::Write| {
                        let _ = write!(w, "{:.0} rows/s", st.per_sec());
                    },
                )
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label.clone());
            ProgressMode::Bar(bar)
        } else {
            let now = Instant::now();
            ProgressMode::Log {
                started: now,
                last: now,
                total: 0,
                first: 0,
            }
        };
        Progress { label, mode }
    }

    fn start(&mut self, total: u64, done: u64) {
        match &mut self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bar(bar) => {
                bar.set_length(total.max(done));
                bar.set_position(done);
                bar.reset_eta();
                bar.set_draw_target(ProgressDrawTarget::stderr());
                // Keeps elapsed time and ETA moving while a batch waits on the server.
                bar.enable_steady_tick(Duration::from_millis(500));
            }
            ProgressMode::Log {
                total: t, first, ..
            } => {
                *t = total;
                *first = done;
            }
        }
    }

    fn advance(&mut self, _rows: u64, done: u64) {
        match &mut self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bar(bar) => {
                if bar.length().is_some_and(|l| done > l) {
                    bar.set_length(done);
                }
                bar.set_position(done);
            }
            ProgressMode::Log {
                started,
                last,
                total,
                first,
            } => {
                if last.elapsed() < LOG_EVERY {
                    return;
                }
                *last = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = (done - *first) as f64 / secs;
                let total = (*total).max(done);
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                let eta = if rate > 0.0 {
                    format!(", about {:.0}s left", (total - done) as f64 / rate)
                } else {
                    String::new()
                };
                eprintln!(
                    "{}: {done}/{total} rows ({pct}%), {rate:.0} rows/s{eta}",
                    self.label
                );
            }
        }
    }

    fn phase(&self, what: &str) {
        if let ProgressMode::Bar(bar) = &self.mode {
            bar.set_message(what.to_string());
        }
    }

    /// A line that does not break the bar.
    fn note(&self, line: &str) {
        match &self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bar(bar) if !bar.is_hidden() => bar.println(line),
            ProgressMode::Bar(_) => eprintln!("{line}"),
            ProgressMode::Log { .. } => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let ProgressMode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcloak_keymgr::{Keyring, KeyringDoc, MasterKey, Mode};

    fn keyring(mode: Mode) -> Keyring {
        let master = MasterKey::generate().unwrap();
        let mut doc = KeyringDoc::new(&master).unwrap();
        doc.ensure_column("public.t.c", mode, "2024-01-01T00:00:00Z")
            .unwrap();
        doc.unlock().unwrap()
    }

    fn target(logical: LogicalType) -> Target {
        Target {
            name: "public.t.c".into(),
            schema: "public".into(),
            table: "t".into(),
            column: "c".into(),
            logical,
        }
    }

    #[test]
    fn column_names_need_three_parts() {
        assert!(split_column_name("public.t.c").is_ok());
        for bad in ["t.c", "c", "a.b.c.d", "public..c", ".t.c", ""] {
            let e = split_column_name(bad).unwrap_err().to_string();
            assert!(e.contains("schema.table.column"), "{e}");
        }
    }

    #[test]
    fn storage_types_and_fixes() {
        let t = target(LogicalType::Int4);
        assert_eq!(classify_storage(&t, "bytea", "bytea"), Ok(Storage::Bytea));
        assert_eq!(classify_storage(&t, "text", "text"), Ok(Storage::Text));
        assert_eq!(
            classify_storage(&t, "varchar", "character varying"),
            Ok(Storage::Text)
        );
        assert_eq!(
            classify_storage(&t, "varchar", "character varying(20)"),
            Err(StorageProblem::LengthLimit(
                "ALTER TABLE public.t ALTER COLUMN c TYPE text".into()
            ))
        );
        assert_eq!(
            classify_storage(&t, "int4", "integer"),
            Err(StorageProblem::WrongType(
                "ALTER TABLE public.t ALTER COLUMN c TYPE bytea USING convert_to(c::text, 'UTF8')"
                    .into()
            ))
        );
        let mut odd = target(LogicalType::Bytea);
        odd.table = "Odd Name".into();
        match classify_storage(&odd, "oid", "oid") {
            Err(StorageProblem::WrongType(fix)) => {
                assert_eq!(
                    fix,
                    "ALTER TABLE public.\"Odd Name\" ALTER COLUMN c TYPE text USING c::text"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("abc_1"), "abc_1");
        assert_eq!(ident("Abc"), "\"Abc\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn encrypt_text_and_bytea_storage_forms() {
        let k = keyring(Mode::Randomized);
        let c = k.cipher("public.t.c").unwrap();
        // text storage of an int4: the text form
        let Outcome::Write(v) =
            transform(Op::Encrypt, c, Storage::Text, LogicalType::Int4, b" 42").unwrap()
        else {
            panic!()
        };
        assert!(v.starts_with(b"pgc1:wQoB"));
        assert_eq!(c.decrypt(&v).unwrap(), 42i32.to_be_bytes());
        // bytea storage of an int4: UTF-8 bytes of the text form, raw envelope
        let Outcome::Write(v) =
            transform(Op::Encrypt, c, Storage::Bytea, LogicalType::Int4, b"-7").unwrap()
        else {
            panic!()
        };
        assert_eq!(&v[..3], &[0xC1, 0x0A, 0x01]);
        assert_eq!(c.decrypt(&v).unwrap(), (-7i32).to_be_bytes());
        // bytea storage of a bytea value: the bytes themselves
        let Outcome::Write(v) = transform(
            Op::Encrypt,
            c,
            Storage::Bytea,
            LogicalType::Bytea,
            &[0, 255, 1],
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.decrypt(&v).unwrap(), [0, 255, 1]);
        // already encrypted: skipped
        assert_eq!(
            transform(Op::Encrypt, c, Storage::Bytea, LogicalType::Int4, &v).unwrap(),
            Outcome::Skip
        );
    }

    #[test]
    fn invalid_values_never_echo_the_value() {
        let k = keyring(Mode::Deterministic);
        let c = k.cipher("public.t.c").unwrap();
        match transform(
            Op::Encrypt,
            c,
            Storage::Text,
            LogicalType::Int4,
            b"secret-123",
        ) {
            Err(ValueProblem::Invalid { what, reason }) => {
                assert!(what.contains("int4"));
                assert!(!reason.contains("secret"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            transform(
                Op::Encrypt,
                c,
                Storage::Bytea,
                LogicalType::Text,
                &[0xff, 0xfe]
            ),
            Err(ValueProblem::Invalid { .. })
        ));
        // Another column's ciphertext is not "already encrypted".
        let other = keyring(Mode::Deterministic);
        let foreign = other
            .cipher("public.t.c")
            .unwrap()
            .encrypt_as(b"x", Encoding::Armored)
            .unwrap();
        assert!(matches!(
            transform(Op::Encrypt, c, Storage::Text, LogicalType::Text, &foreign),
            Err(ValueProblem::Cipher(_))
        ));
    }

    #[test]
    fn reencrypt_outcomes() {
        let master = MasterKey::generate().unwrap();
        let mut doc = KeyringDoc::new(&master).unwrap();
        doc.ensure_column("public.t.c", Mode::Randomized, "2024-01-01T00:00:00Z")
            .unwrap();
        let v1 = doc.unlock().unwrap();
        let old = v1
            .cipher("public.t.c")
            .unwrap()
            .encrypt_as(b"v", Encoding::Armored)
            .unwrap();
        doc.rotate("public.t.c", "2024-02-01T00:00:00Z").unwrap();
        let v2 = doc.unlock().unwrap();
        let c = v2.cipher("public.t.c").unwrap();
        let Outcome::Write(new) =
            transform(Op::Reencrypt, c, Storage::Text, LogicalType::Text, &old).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.decrypt(&new).unwrap(), b"v");
        assert_eq!(
            transform(Op::Reencrypt, c, Storage::Text, LogicalType::Text, &new).unwrap(),
            Outcome::Skip
        );
        assert_eq!(
            transform(Op::Reencrypt, c, Storage::Text, LogicalType::Text, b"plain").unwrap(),
            Outcome::Plaintext
        );
        // The armoured header prefix used by the final check matches real ciphertexts.
        let header = &c.encrypt(b"").unwrap()[..12];
        let prefix = pgcloak_keymgr::armor(header);
        assert_eq!(prefix.len(), 21);
        assert!(new.starts_with(prefix.as_bytes()));
        assert!(!old.starts_with(prefix.as_bytes()));
    }

    #[test]
    fn positions_round_trip() {
        for p in [
            Position::Start,
            Position::After(vec!["1".into(), "a,\"b".into()]),
            Position::Page(42),
        ] {
            assert_eq!(Position::from_json(&p.to_json()), Some(p));
        }
        assert_eq!(Position::from_json("nonsense"), None);
    }

    #[test]
    fn sql_for_composite_keys() {
        let table = TableInfo {
            sql: "\"s\".\"t\"".into(),
            display: "s.t".into(),
            storage: Storage::Text,
            walk: Walk::Key(vec![
                KeyCol {
                    name: "a".into(),
                    ty: "pg_catalog.int4".into(),
                },
                KeyCol {
                    name: "b".into(),
                    ty: "pg_catalog.text".into(),
                },
            ]),
            reltuples: 0.0,
            relpages: 0,
        };
        let s = build_sql(&table, "\"c\"");
        let next = s.next.unwrap();
        assert!(
            next.starts_with("SELECT t.\"a\"::text AS k0, t.\"b\"::text AS k1, t.\"c\"::text AS v"),
            "{next}"
        );
        assert!(next.contains(
            "WHERE (t.\"a\", t.\"b\") > ($1::text::pg_catalog.int4, $2::text::pg_catalog.text) ORDER BY t.\"a\", t.\"b\" LIMIT $3"
        ), "{next}");
        assert!(s
            .update
            .contains("unnest($1::text[], $2::text[], $3::text[], $4::text[])"));
        assert!(s
            .update
            .contains("t.\"c\"::text COLLATE \"C\" = v.old_value"));
        assert!(s.update.ends_with("RETURNING v.k0, v.k1"));
    }

    #[test]
    fn summary_line_and_exit_codes() {
        let mut s = Summary {
            column: "public.t.c".into(),
            op: Op::Encrypt,
            database: "db".into(),
            walk: "primary key (id)".into(),
            resumed: false,
            scanned: 10,
            updated: 8,
            skipped: 2,
            not_encrypted: 0,
            conflicts: 1,
            unresolved: 0,
            remaining: Some(0),
            plaintext_left: Some(0),
            interrupted: false,
            duration: Duration::from_secs(2),
        };
        assert_eq!(s.exit_code(), 0);
        let line = s.to_string();
        assert!(line.contains("8 rows updated, 2 skipped"), "{line}");
        assert!(line.contains("1 conflicts retried"), "{line}");
        s.remaining = Some(3);
        assert_eq!(s.exit_code(), 1);
        assert!(s.to_string().contains("3 values still need it"));
        s.interrupted = true;
        assert_eq!(s.exit_code(), 130);
    }
}
