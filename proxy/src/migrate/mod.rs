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

mod job;
mod progress;
mod sql;
mod target;
#[cfg(test)]
mod tests;
mod transform;

use job::*;
use progress::*;
use sql::*;
use target::*;
use transform::*;

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
    #[error("column {column} is subject-keyed ({location}: key = \"subject\"); `pgcloak encrypt` and `reencrypt` do not migrate subject-keyed columns yet: write its values through pgcloak (INSERT/UPDATE), or migrate with key = \"column\" first")]
    SubjectKeyed { column: String, location: String },
    #[error(transparent)]
    Policy(#[from] crate::policy_file::PolicyLoadError),

    // ---- keys ---------------------------------------------------------------------------------
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Key(#[from] KeyError),

    // ---- the database -------------------------------------------------------------------------
    #[error(transparent)]
    Connect(#[from] crate::catalog::CatalogError),
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
