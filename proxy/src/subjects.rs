//! Per-subject data keys in PostgreSQL (issue 21): `pgcloak.subject_keys` of the `[catalog]`
//! database, one row per (subject reference, column key id, key version) holding the key wrapped
//! by the master key ([`SubjectKeyWrapper`]). Rows are addressed by the pseudonymous
//! [`SubjectRef`], never by the subject id; PUBLIC gets nothing.
//!
//! Creation is compare-and-set: every creator inserts its own fresh key with `ON CONFLICT DO
//! NOTHING` and then reads the row back, so concurrent first writes of one subject (on any number
//! of instances) all end up with the one key that was stored first. Erasure deletes every key of a
//! subject in one transaction and records it in `pgcloak.subject_erasures` (what was destroyed,
//! when, why; no key material), which is what a receipt is checked against.
//!
//! Not on the data path yet: the proxy still refuses policies with `key = "subject"`.

use pgcloak_keymgr::{SubjectDek, SubjectKeyId, SubjectKeyWrapper, SubjectRef};

/// Creates the tables if missing (serialised by an advisory lock) and revokes PUBLIC's rights.
pub const DDL: &str = "BEGIN; \
    SELECT pg_advisory_xact_lock(hashtext('pgcloak subject keys schema')); \
    CREATE SCHEMA IF NOT EXISTS pgcloak; \
    CREATE TABLE IF NOT EXISTS pgcloak.subject_keys ( \
        subject_ref bytea NOT NULL CHECK (length(subject_ref) = 16), \
        key_id bigint NOT NULL, \
        version integer NOT NULL, \
        wrapped bytea NOT NULL, \
        created_at timestamptz NOT NULL DEFAULT now(), \
        PRIMARY KEY (subject_ref, key_id, version)); \
    CREATE TABLE IF NOT EXISTS pgcloak.subject_erasures ( \
        id bigserial PRIMARY KEY, \
        subject_ref bytea NOT NULL, \
        keys jsonb NOT NULL, \
        reason text NOT NULL, \
        erased_by text NOT NULL, \
        erased_at timestamptz NOT NULL DEFAULT now()); \
    REVOKE ALL ON SCHEMA pgcloak FROM PUBLIC; \
    REVOKE ALL ON pgcloak.subject_keys, pgcloak.subject_erasures FROM PUBLIC; \
    COMMIT;";

/// What went wrong with the subject key table.
#[derive(Debug, thiserror::Error)]
pub enum SubjectStoreError {
    #[error("pgcloak.subject_keys: {}", crate::catalog::describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Key(#[from] pgcloak_keymgr::KeyError),
}

/// One erasure: the keys destroyed (column key id, version), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub id: i64,
    pub subject: SubjectRef,
    pub keys: Vec<(u32, u32)>,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The subject key table over one connection.
pub struct SubjectKeyStore<'a> {
    pub client: &'a tokio_postgres::Client,
    pub wrapper: &'a SubjectKeyWrapper,
}

impl SubjectKeyStore<'_> {
    /// Creates the tables if missing.
    pub async fn ensure_schema(&self) -> Result<(), SubjectStoreError> {
        Ok(self.client.batch_execute(DDL).await?)
    }

    /// The key of `id`: `None` when there is none (never created, or erased) and `create` is
    /// false; created when missing with `create` (the one stored first wins).
    pub async fn key(
        &self,
        id: &SubjectKeyId,
        create: bool,
    ) -> Result<Option<SubjectDek>, SubjectStoreError> {
        let subject = &id.subject.0[..];
        let (key_id, version) = (i64::from(id.key_id), id.version as i32);
        let select = "SELECT wrapped FROM pgcloak.subject_keys WHERE subject_ref = $1 AND key_id = $2 AND version = $3";
        let rows = self
            .client
            .query(select, &[&subject, &key_id, &version])
            .await?;
        if let Some(r) = rows.first() {
            return Ok(Some(self.wrapper.unwrap(id, r.get::<_, &[u8]>(0))?));
        }
        if !create {
            return Ok(None);
        }
        let (_, wrapped) = self.wrapper.generate(id)?;
        self.client
            .execute(
                "INSERT INTO pgcloak.subject_keys (subject_ref, key_id, version, wrapped) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&subject, &key_id, &version, &wrapped],
            )
            .await?;
        // Read back: another creator may have stored its key first.
        let rows = self
            .client
            .query(select, &[&subject, &key_id, &version])
            .await?;
        match rows.first() {
            Some(r) => Ok(Some(self.wrapper.unwrap(id, r.get::<_, &[u8]>(0))?)),
            // Erased between the insert and the read: there is no key.
            None => Ok(None),
        }
    }
}

/// Destroys every key of `subject` (all columns, all versions) in one transaction and records
/// the erasure (`by`: who, `reason`: why).
pub async fn erase(
    client: &mut tokio_postgres::Client,
    subject: &SubjectRef,
    reason: &str,
    by: &str,
) -> Result<Erasure, SubjectStoreError> {
    let s = &subject.0[..];
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "DELETE FROM pgcloak.subject_keys WHERE subject_ref = $1 RETURNING key_id, version",
            &[&s],
        )
        .await?;
    let mut keys: Vec<(u32, u32)> = rows
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u32, r.get::<_, i32>(1) as u32))
        .collect();
    keys.sort_unstable();
    let json = serde_json::Value::Array(
        keys.iter()
            .map(|(k, v)| serde_json::json!({"key_id": k, "version": v}))
            .collect(),
    )
    .to_string();
    let row = tx
        .query_one(
            "INSERT INTO pgcloak.subject_erasures (subject_ref, keys, reason, erased_by) VALUES ($1, $2::text::jsonb, $3, $4) \
             RETURNING id, to_char(erased_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[&s, &json, &reason, &by],
        )
        .await?;
    let erasure = Erasure {
        id: row.get(0),
        subject: *subject,
        keys,
        at: row.get(1),
    };
    tx.commit().await?;
    Ok(erasure)
}
