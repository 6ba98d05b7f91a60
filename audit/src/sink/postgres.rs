//! PostgreSQL sink: batched inserts into `pgcloak_audit.statements` (events) and
//! `pgcloak_audit.checkpoints`, schema created if missing, PUBLIC stripped of every privilege.
//! Also the SQL shared with `verify` and `query` to read records back.
//!
//! Each batch is one transaction: one `INSERT … SELECT FROM unnest($1::bigint[], …)` for the
//! events and one for the checkpoints. `ON CONFLICT (instance, seq) DO NOTHING` makes the retry
//! of a batch whose commit succeeded but whose answer was lost harmless. The chain is per
//! `instance`: on start the sink reports this instance's last row so the writer continues it.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::{Entry, Sink, SinkFailure, Tail};
use crate::config::PgSinkConfig;
use crate::error::AuditError;
use crate::event::{AuditEvent, Checkpoint, Decision, Kind};

/// Creates the schema, tables and indexes if missing (serialised by an advisory lock so several
/// instances can start at once) and revokes every privilege from PUBLIC.
pub(crate) const SCHEMA_SQL: &str = r#"
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('pgcloak_audit schema'));
CREATE SCHEMA IF NOT EXISTS pgcloak_audit;
CREATE TABLE IF NOT EXISTS pgcloak_audit.statements (
    seq          bigint      NOT NULL,
    ts           timestamptz NOT NULL,
    instance     text        NOT NULL,
    session      text        NOT NULL,
    client       text        NOT NULL,
    "user"       text        NOT NULL,
    role         text,
    database     text        NOT NULL,
    application  text        NOT NULL,
    kind         text        NOT NULL,
    statement    text,
    fingerprint  text,
    tables       jsonb       NOT NULL,
    columns      jsonb       NOT NULL,
    decision     text        NOT NULL,
    reason       text,
    rows         bigint,
    duration_us  bigint,
    sqlstate     text,
    prev_hash    text        NOT NULL,
    hash         text        NOT NULL,
    PRIMARY KEY (instance, seq)
);
CREATE INDEX IF NOT EXISTS statements_ts_idx ON pgcloak_audit.statements (ts);
CREATE INDEX IF NOT EXISTS statements_user_idx ON pgcloak_audit.statements ("user", ts);
CREATE INDEX IF NOT EXISTS statements_columns_idx ON pgcloak_audit.statements USING gin (columns);
CREATE TABLE IF NOT EXISTS pgcloak_audit.checkpoints (
    instance   text        NOT NULL,
    seq        bigint      NOT NULL,
    hash       text        NOT NULL,
    ts         timestamptz NOT NULL,
    signature  text        NOT NULL,
    PRIMARY KEY (instance, seq)
);
REVOKE ALL ON SCHEMA pgcloak_audit FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA pgcloak_audit FROM PUBLIC;
COMMIT;
"#;

const INSERT_EVENTS: &str = r#"
INSERT INTO pgcloak_audit.statements (seq, ts, instance, session, client, "user", role, database,
    application, kind, statement, fingerprint, tables, columns, decision, reason, rows,
    duration_us, sqlstate, prev_hash, hash)
SELECT u.seq, u.ts::timestamptz, u.instance, u.session, u.client, u.usr, u.role, u.database,
    u.application, u.kind, u.statement, u.fingerprint, u.tables::jsonb, u.columns::jsonb,
    u.decision, u.reason, u.rows, u.duration_us, u.sqlstate, u.prev_hash, u.hash
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
    $15::text[], $16::text[], $17::bigint[], $18::bigint[], $19::text[], $20::text[], $21::text[])
    AS u(seq, ts, instance, session, client, usr, role, database, application, kind, statement,
    fingerprint, tables, columns, decision, reason, rows, duration_us, sqlstate, prev_hash, hash)
ON CONFLICT (instance, seq) DO NOTHING
"#;

const INSERT_CHECKPOINTS: &str = r#"
INSERT INTO pgcloak_audit.checkpoints (instance, seq, hash, ts, signature)
SELECT u.instance, u.seq, u.hash, u.ts::timestamptz, u.signature
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
    AS u(instance, seq, hash, ts, signature)
ON CONFLICT (instance, seq) DO NOTHING
"#;

/// Columns to read an event back exactly as it was hashed (`ts` in the record's text form).
pub(crate) const EVENT_COLUMNS: &str = r#"seq,
    to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts_text,
    instance, session, client, "user", role, database, application, kind, statement, fingerprint,
    tables::text, columns::text, decision, reason, rows, duration_us, sqlstate, prev_hash, hash"#;

pub(crate) const CHECKPOINT_COLUMNS: &str = r#"seq, hash,
    to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts_text,
    signature, instance"#;

/// A readable message from a tokio-postgres error: the server's text and SQLSTATE when there is one
/// (the error's Display hides them), else the error with its chain of causes. The one describer
/// of driver errors in pgcloak; the proxy's side connections use it too.
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// Connects (no TLS; the audit database is expected on a trusted network or localhost).
pub(crate) async fn connect(cfg: &PgSinkConfig) -> Result<Client, String> {
    let (client, conn) = cfg
        .pg_config()
        .connect(NoTls)
        .await
        .map_err(|e| describe_pg_error(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %describe_pg_error(&e), "audit PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Builds an event from a row selected with [`EVENT_COLUMNS`].
pub(crate) fn row_to_event(row: &Row) -> Result<AuditEvent, String> {
    let get_s = |i: usize| -> Result<String, String> {
        row.try_get::<_, String>(i)
            .map_err(|e| describe_pg_error(&e))
    };
    let get_o = |i: usize| -> Result<Option<String>, String> {
        row.try_get::<_, Option<String>>(i)
            .map_err(|e| describe_pg_error(&e))
    };
    let get_n = |i: usize| -> Result<Option<u64>, String> {
        row.try_get::<_, Option<i64>>(i)
            .map(|n| n.map(|n| n as u64))
            .map_err(|e| describe_pg_error(&e))
    };
    let kind = get_s(9)?;
    let decision = get_s(14)?;
    Ok(AuditEvent {
        seq: row
            .try_get::<_, i64>(0)
            .map_err(|e| describe_pg_error(&e))? as u64,
        ts: get_s(1)?,
        instance: get_s(2)?,
        session: get_s(3)?,
        client: get_s(4)?,
        user: get_s(5)?,
        role: get_o(6)?,
        database: get_s(7)?,
        application: get_s(8)?,
        kind: Kind::parse(&kind).ok_or_else(|| format!("unknown kind {kind:?}"))?,
        statement: get_o(10)?,
        fingerprint: get_o(11)?,
        tables: serde_json::from_str(&get_s(12)?).map_err(|e| format!("tables: {e}"))?,
        columns: serde_json::from_str(&get_s(13)?).map_err(|e| format!("columns: {e}"))?,
        decision: Decision::parse(&decision)
            .ok_or_else(|| format!("unknown decision {decision:?}"))?,
        reason: get_o(15)?,
        rows: get_n(16)?,
        duration_us: get_n(17)?,
        sqlstate: get_o(18)?,
        prev_hash: get_s(19)?,
        hash: get_s(20)?,
    })
}

/// Builds a checkpoint from a row selected with [`CHECKPOINT_COLUMNS`].
pub(crate) fn row_to_checkpoint(row: &Row) -> Result<Checkpoint, String> {
    Ok(Checkpoint {
        seq: row
            .try_get::<_, i64>(0)
            .map_err(|e| describe_pg_error(&e))? as u64,
        hash: row.try_get(1).map_err(|e| describe_pg_error(&e))?,
        ts: row.try_get(2).map_err(|e| describe_pg_error(&e))?,
        signature: row.try_get(3).map_err(|e| describe_pg_error(&e))?,
        instance: row.try_get(4).map_err(|e| describe_pg_error(&e))?,
    })
}

struct Conn {
    client: Client,
    insert_events: Statement,
    insert_checkpoints: Statement,
}

/// The PostgreSQL sink.
pub(crate) struct PgSink {
    cfg: PgSinkConfig,
    conn: Option<Conn>,
    /// The instance name as records store it (NUL replaced).
    instance: String,
}

impl PgSink {
    /// Connects, creates the schema if needed and returns this instance's chain tail.
    pub(crate) async fn open(
        cfg: &PgSinkConfig,
        instance: &str,
    ) -> Result<(PgSink, Option<Tail>), AuditError> {
        let mut sink = PgSink {
            cfg: cfg.clone(),
            conn: None,
            instance: crate::event::clean(instance.to_string()),
        };
        let err = |action, reason| AuditError::Postgres {
            target: cfg.target(),
            action,
            reason,
        };
        sink.ensure()
            .await
            .map_err(|r| err("connecting and creating pgcloak_audit", r))?;
        let conn = sink.conn.as_ref().expect("connected");
        let row = conn
            .client
            .query_opt(
                "SELECT seq, hash FROM pgcloak_audit.statements WHERE instance = $1 \
                 ORDER BY seq DESC LIMIT 1",
                &[&instance],
            )
            .await
            .map_err(|e| err("reading the last audit record", describe_pg_error(&e)))?;
        let tail = row.map(|r| Tail {
            seq: r.get::<_, i64>(0) as u64,
            hash: r.get(1),
        });
        Ok((sink, tail))
    }

    async fn ensure(&mut self) -> Result<&Conn, String> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let client = connect(&self.cfg).await?;
            client
                .batch_execute(SCHEMA_SQL)
                .await
                .map_err(|e| describe_pg_error(&e))?;
            let insert_events = client
                .prepare(INSERT_EVENTS)
                .await
                .map_err(|e| describe_pg_error(&e))?;
            let insert_checkpoints = client
                .prepare(INSERT_CHECKPOINTS)
                .await
                .map_err(|e| describe_pg_error(&e))?;
            self.conn = Some(Conn {
                client,
                insert_events,
                insert_checkpoints,
            });
        }
        Ok(self.conn.as_ref().expect("connected"))
    }

    async fn write_entries(&mut self, entries: &[Arc<Entry>]) -> Result<(), String> {
        let instance = self.instance.clone();
        let conn = self.ensure().await?;
        let mut seq = Vec::new();
        let mut cols: [Vec<Option<String>>; 18] = Default::default();
        let mut rows = Vec::new();
        let mut dur = Vec::new();
        let (mut c_inst, mut c_seq, mut c_hash, mut c_ts, mut c_sig) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in entries {
            match &**e {
                Entry::Event { seq: n, ne, line } => {
                    seq.push(*n as i64);
                    let who = ne.who.who();
                    let what = ne.what.what();
                    let vals = [
                        ne.ts.map(crate::event::format_ts),
                        Some(instance.clone()),
                        Some(who.session.clone()),
                        Some(who.client.clone()),
                        Some(who.user.clone()),
                        who.role.clone(),
                        Some(who.database.clone()),
                        Some(who.application.clone()),
                        Some(what.kind.as_str().to_string()),
                        what.statement.clone(),
                        what.fingerprint.clone(),
                        Some(serde_json::to_string(&what.tables).unwrap_or_default()),
                        Some(serde_json::to_string(&what.columns).unwrap_or_default()),
                        Some(ne.decision.as_str().to_string()),
                        ne.reason.clone(),
                        ne.sqlstate.clone(),
                        Some(crate::canonical::line_prev_hash(line).to_string()),
                        Some(crate::canonical::line_hash(line).to_string()),
                    ];
                    for (c, v) in cols.iter_mut().zip(vals) {
                        c.push(v);
                    }
                    rows.push(ne.rows.map(|n| n as i64));
                    dur.push(ne.duration_us.map(|n| n as i64));
                }
                Entry::Checkpoint { cp, .. } => {
                    c_inst.push(cp.instance.clone());
                    c_seq.push(cp.seq as i64);
                    c_hash.push(cp.hash.clone());
                    c_ts.push(cp.ts.clone());
                    c_sig.push(cp.signature.clone());
                }
            }
        }
        let client = &conn.client;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| describe_pg_error(&e))?;
        let result = async {
            if !seq.is_empty() {
                let [ts, inst, sess, cli, usr, role, db, app, kind, stmt, fp, tables, columns, dec, reason, sqlstate, prev, hash] =
                    &cols;
                client
                    .execute(
                        &conn.insert_events,
                        &[
                            &seq, ts, inst, sess, cli, usr, role, db, app, kind, stmt, fp,
                            tables, columns, dec, reason, &rows, &dur, sqlstate, prev, hash,
                        ],
                    )
                    .await?;
            }
            if !c_seq.is_empty() {
                client
                    .execute(
                        &conn.insert_checkpoints,
                        &[&c_inst, &c_seq, &c_hash, &c_ts, &c_sig],
                    )
                    .await?;
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        result.map_err(|e| describe_pg_error(&e))
    }
}

impl Sink for PgSink {
    fn name(&self) -> String {
        format!("postgres {}", self.cfg.target())
    }

    fn write(&mut self, entries: Vec<Arc<Entry>>) -> BoxFuture<'_, Result<(), SinkFailure>> {
        Box::pin(async move {
            match self.write_entries(&entries).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Start from a fresh connection (and a clean transaction state) next time.
                    self.conn = None;
                    Err(SinkFailure::none_written(e))
                }
            }
        })
    }

    fn tick(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let r = match self.ensure().await {
                Ok(c) => c
                    .client
                    .simple_query("SELECT 1")
                    .await
                    .map(|_| ())
                    .map_err(|e| describe_pg_error(&e)),
                Err(e) => Err(e),
            };
            if r.is_err() {
                self.conn = None;
            }
            r
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.conn = None;
            Ok(())
        })
    }
}
