//! What the run reads from the catalog before it starts, and the SQL text of its statements.

use super::*;

pub(super) fn utf8(b: &[u8]) -> Result<&str, MigrateError> {
    std::str::from_utf8(b).map_err(|_| MigrateError::Internal("a text value is not UTF-8".into()))
}

/// Either a plain migrate error or a database error still to be described.
pub(super) enum InspectError {
    Db(tokio_postgres::Error),
    Other(MigrateError),
}

impl InspectError {
    pub(super) fn either(
        self,
        f: impl FnOnce(tokio_postgres::Error) -> MigrateError,
    ) -> MigrateError {
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
pub(super) async fn inspect(
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
pub(super) async fn prepare(
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
pub(super) struct SqlText {
    pub(super) first: String,
    pub(super) next: Option<String>,
    pub(super) update: String,
    pub(super) reread: Option<String>,
}

pub(super) fn build_sql(table: &TableInfo, col: &str) -> SqlText {
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
