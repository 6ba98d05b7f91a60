//! The walk: one batch at a time in key order, each change a compare-and-set, resumable.

use super::*;

// ---- the walk ------------------------------------------------------------------------------------

/// One column of the primary key.
#[derive(Debug, Clone)]
pub(super) struct KeyCol {
    pub(super) name: String,
    /// Schema-qualified, quoted type name for casts from text (no typmod, so nothing is truncated).
    pub(super) ty: String,
}

#[derive(Debug, Clone)]
pub(super) enum Walk {
    Key(Vec<KeyCol>),
    Ctid,
}

impl Walk {
    pub(super) fn describe(&self) -> String {
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
    pub(super) fn row(&self, key: &[String]) -> String {
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
pub(super) enum Position {
    Start,
    /// After this key.
    After(Vec<String>),
    /// At this heap page.
    Page(u64),
}

impl Position {
    pub(super) fn to_json(&self) -> String {
        match self {
            Position::Start => serde_json::json!({"start": true}),
            Position::After(k) => serde_json::json!({ "after": k }),
            Position::Page(p) => serde_json::json!({ "page": p }),
        }
        .to_string()
    }

    pub(super) fn from_json(s: &str) -> Option<Position> {
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
pub(super) struct Item {
    pub(super) key: Vec<String>,
    pub(super) value: Option<Vec<u8>>,
}

/// One compare-and-set write.
pub(super) struct Change {
    pub(super) key: Vec<String>,
    pub(super) old: Vec<u8>,
    pub(super) new: Vec<u8>,
}

/// The prepared statements of one run.
pub(super) struct Statements {
    /// Key walk: the first batch (`$1` limit). Ctid walk: a page range (`$1`, `$2` tids).
    pub(super) first: Statement,
    /// Key walk: the batch after a key.
    pub(super) next: Option<Statement>,
    /// Compare-and-set UPDATE returning the keys written.
    pub(super) update: Statement,
    /// Key walk: re-read rows by key.
    pub(super) reread: Option<Statement>,
}

/// What the catalog says about the table.
pub(super) struct TableInfo {
    /// `"schema"."table"`, quoted.
    pub(super) sql: String,
    /// `schema.table` for messages.
    pub(super) display: String,
    pub(super) storage: Storage,
    pub(super) walk: Walk,
    pub(super) reltuples: f64,
    pub(super) relpages: i64,
}

pub(super) struct Job<'a> {
    pub(super) client: Client,
    pub(super) database: String,
    pub(super) user: String,
    pub(super) target: &'a Target,
    pub(super) cipher: &'a ColumnCipher,
    pub(super) op: Op,
    pub(super) opts: &'a Options,
    pub(super) table: TableInfo,
    pub(super) st: Statements,
    /// Upsert of the saved position, when `pgcloak.migrations` is usable.
    pub(super) save: Option<Statement>,
    /// What a saved position is valid for.
    pub(super) signature: String,
    pub(super) summary: Summary,
}

pub(super) fn db_err(
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
    pub(super) async fn connect(
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

    pub(super) async fn disconnect(self) {
        // Dropping the client closes the session; the advisory lock goes with it.
        drop(self.client);
    }

    pub(super) fn err(&self, what: impl Into<String>, e: &tokio_postgres::Error) -> MigrateError {
        db_err(what, &self.database, &self.user, &self.table.display, e)
    }

    /// Creates (or finds) `pgcloak.migrations` and returns the saved position, if any.
    pub(super) async fn open_progress(&mut self, say: &Progress) -> (Position, u64) {
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

    pub(super) async fn forget_progress(&self) {
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

    pub(super) async fn run(
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
    pub(super) async fn cancel_running(&self) {
        let token = self.client.cancel_token();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            token.cancel_query(tokio_postgres::NoTls),
        )
        .await;
    }

    pub(super) async fn throttle(&self, started: Instant, stop: &CancellationToken) {
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

    pub(super) async fn estimate_rows(&self) -> Result<u64, MigrateError> {
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

    pub(super) async fn relation_pages(&self) -> Result<u64, MigrateError> {
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

    pub(super) fn decode_rows(
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

    pub(super) async fn fetch_keys(&self, pos: &Position) -> Result<Vec<Item>, MigrateError> {
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

    pub(super) async fn fetch_pages(&self, lo: &str, hi: &str) -> Result<Vec<Item>, MigrateError> {
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
    pub(super) fn plan(&mut self, items: Vec<Item>) -> Result<Vec<Change>, MigrateError> {
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
    pub(super) async fn write(
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
    pub(super) fn account(
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
    pub(super) async fn retry(&mut self, mut keys: Vec<Vec<String>>) -> Result<(), MigrateError> {
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
    pub(super) async fn final_check(&self) -> Result<(u64, u64), MigrateError> {
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
