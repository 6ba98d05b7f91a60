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
//! On the data path, [`SubjectKeys`] keeps a bounded cache of unwrapped keys in front of the table
//! (sessions resolve the keys a statement needs before rewriting it, and a result's rows pause on a
//! key not cached yet), and [`watch`] keeps its connection and applies erasures made anywhere in
//! the fleet within a second: it evicts the erased subjects' keys. A proxy that cannot read the
//! erasures for [`STALE_AFTER`] stops using its cache (fails closed): a key it holds might have been
//! erased meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pgcloak_keymgr::{
    KeyCache, MasterKey, SubjectDek, SubjectKeyId, SubjectKeyWrapper, SubjectRef, SubjectRefKey,
};
use tracing::{info, warn};

use crate::catalog::CatalogError;
use crate::config::Config;
use crate::rewrite::Format;

/// How often erasures are looked for.
pub const POLL: Duration = Duration::from_secs(1);
/// A cache not confirmed against the erasures for this long is not used.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// How long "this subject key does not exist" is believed (the subject may be written again).
const ABSENT_FOR: Duration = Duration::from_secs(2);
/// Unwrapped keys kept per proxy (32 bytes each plus bookkeeping: about 10 MB).
pub const CACHE_CAPACITY: usize = 100_000;

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
        Ok(self
            .keys(std::slice::from_ref(id), create)
            .await?
            .pop()
            .flatten())
    }

    /// [`SubjectKeyStore::key`] for many ids in two round trips at most (one read, and with
    /// `create` one insert of the missing ones and one read back), in the order of `ids`.
    pub async fn keys(
        &self,
        ids: &[SubjectKeyId],
        create: bool,
    ) -> Result<Vec<Option<SubjectDek>>, SubjectStoreError> {
        let mut found = self.read(ids).await?;
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| found[i].is_none()).collect();
        if !create || missing.is_empty() {
            return Ok(found);
        }
        let (mut refs, mut key_ids, mut versions, mut wrapped) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &i in &missing {
            let id = &ids[i];
            let (_, w) = self.wrapper.generate(id)?;
            refs.push(&id.subject.0[..]);
            key_ids.push(i64::from(id.key_id));
            versions.push(id.version as i32);
            wrapped.push(w);
        }
        let wrapped_refs: Vec<&[u8]> = wrapped.iter().map(Vec::as_slice).collect();
        self.client
            .execute(
                "INSERT INTO pgcloak.subject_keys (subject_ref, key_id, version, wrapped) \
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::integer[], $4::bytea[]) ON CONFLICT DO NOTHING",
                &[&refs, &key_ids, &versions, &wrapped_refs],
            )
            .await?;
        // Read back: another creator may have stored its key first (and one erased between the
        // insert and the read stays missing: there is no key).
        let again: Vec<SubjectKeyId> = missing.iter().map(|&i| ids[i]).collect();
        for (i, k) in missing.into_iter().zip(self.read(&again).await?) {
            found[i] = k;
        }
        Ok(found)
    }

    /// The stored keys of `ids` (in their order), unwrapped.
    async fn read(
        &self,
        ids: &[SubjectKeyId],
    ) -> Result<Vec<Option<SubjectDek>>, SubjectStoreError> {
        let refs: Vec<&[u8]> = ids.iter().map(|id| &id.subject.0[..]).collect();
        let key_ids: Vec<i64> = ids.iter().map(|id| i64::from(id.key_id)).collect();
        let versions: Vec<i32> = ids.iter().map(|id| id.version as i32).collect();
        let rows = self
            .client
            .query(
                "SELECT k.subject_ref, k.key_id, k.version, k.wrapped FROM pgcloak.subject_keys k \
                 JOIN unnest($1::bytea[], $2::bigint[], $3::integer[]) AS w(subject_ref, key_id, version) \
                 USING (subject_ref, key_id, version)",
                &[&refs, &key_ids, &versions],
            )
            .await?;
        let mut out: Vec<Option<SubjectDek>> = ids.iter().map(|_| None).collect();
        for r in &rows {
            let Ok(subject) =
                <[u8; pgcloak_keymgr::subject::SUBJECT_REF_LEN]>::try_from(r.get::<_, &[u8]>(0))
            else {
                continue;
            };
            let id = SubjectKeyId {
                subject: SubjectRef(subject),
                key_id: r.get::<_, i64>(1) as u32,
                version: r.get::<_, i32>(2) as u32,
            };
            let dek = self.wrapper.unwrap(&id, r.get::<_, &[u8]>(3))?;
            // Every position asking for this key gets it (ids may repeat).
            let mut dek = Some(dek);
            for (slot, want) in out.iter_mut().zip(ids) {
                if *want == id && slot.is_none() {
                    match dek.take() {
                        Some(d) => *slot = Some(d),
                        None => *slot = Some(self.wrapper.unwrap(&id, r.get::<_, &[u8]>(3))?),
                    }
                }
            }
        }
        Ok(out)
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

/// The canonical text of a subject id (what its reference is computed from), given the subject
/// column's type as `format_type` prints it and the value as a client sent it: integers in decimal
/// (so `'042'`, `42` and a binary int8 42 are one subject), UUIDs in lower-case hyphenated form,
/// anything else as sent. Errors name what is wrong, never the value.
pub fn canonical_id(type_name: &str, value: &[u8], format: Format) -> Result<Vec<u8>, String> {
    let ty = type_name.trim().to_ascii_lowercase();
    let ty = ty.strip_prefix("pg_catalog.").unwrap_or(&ty);
    match ty {
        "smallint" | "integer" | "bigint" | "int2" | "int4" | "int8" => {
            let n: i64 = match format {
                Format::Text => std::str::from_utf8(value)
                    .ok()
                    .map(|t| t.trim())
                    .map(|t| t.strip_prefix('+').unwrap_or(t))
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("the subject id is not an integer ({ty})"))?,
                Format::Binary => match value.len() {
                    2 => i64::from(i16::from_be_bytes([value[0], value[1]])),
                    4 => i64::from(i32::from_be_bytes([value[0], value[1], value[2], value[3]])),
                    8 => i64::from_be_bytes(value.try_into().unwrap_or([0; 8])),
                    _ => return Err(format!("the binary subject id is not a {ty}")),
                },
            };
            Ok(n.to_string().into_bytes())
        }
        "uuid" => {
            let bytes: [u8; 16] = match format {
                Format::Binary => value
                    .try_into()
                    .map_err(|_| "the binary subject id is not a uuid".to_string())?,
                Format::Text => {
                    let hex: Vec<u8> = value
                        .iter()
                        .copied()
                        .filter(|c| !matches!(c, b'-' | b'{' | b'}'))
                        .collect();
                    let mut out = [0u8; 16];
                    if hex.len() != 32 {
                        return Err("the subject id is not a uuid".into());
                    }
                    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
                        let digits = std::str::from_utf8(pair).ok();
                        *o = digits
                            .and_then(|d| u8::from_str_radix(d, 16).ok())
                            .ok_or_else(|| "the subject id is not a uuid".to_string())?;
                    }
                    out
                }
            };
            let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Ok(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
            .into_bytes())
        }
        _ if format == Format::Text => Ok(value.to_vec()),
        "text" | "name" => Ok(value.to_vec()),
        t if t.starts_with("character varying") || t.starts_with("varchar") => Ok(value.to_vec()),
        _ => Err(format!(
            "a binary subject id of type {ty} cannot be read; send it in text format"
        )),
    }
}

/// What the cache knows of one subject key.
#[derive(Debug, Clone)]
pub enum Lookup {
    Key(Arc<SubjectDek>),
    /// Not in the table (erased, or never written).
    Absent,
    /// Not cached: ask the table ([`SubjectKeys::resolve`]).
    Unknown,
}

/// The subject keys of one proxy: references, wrapping, the bounded cache, the table's connection.
pub struct SubjectKeys {
    refs: SubjectRefKey,
    wrapper: SubjectKeyWrapper,
    cache: Mutex<Cache>,
    client: RwLock<Option<Arc<tokio_postgres::Client>>>,
    /// Why the table cannot be used now (while `client` is `None`).
    failure: RwLock<Option<String>>,
}

struct Cache {
    keys: KeyCache<SubjectKeyId, SubjectDek>,
    absent: HashMap<SubjectKeyId, Instant>,
    /// Until when the cache counts as confirmed against the erasures.
    fresh_until: Option<Instant>,
    /// Bumped by every eviction of erased subjects.
    generation: u64,
}

impl std::fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKeys").finish_non_exhaustive()
    }
}

impl SubjectKeys {
    pub fn new(master: &MasterKey) -> Result<SubjectKeys, pgcloak_keymgr::KeyError> {
        Ok(SubjectKeys {
            refs: SubjectRefKey::new(master),
            wrapper: SubjectKeyWrapper::new(master)?,
            cache: Mutex::new(Cache {
                keys: KeyCache::new(CACHE_CAPACITY),
                absent: HashMap::new(),
                fresh_until: None,
                generation: 0,
            }),
            client: RwLock::new(None),
            failure: RwLock::new(Some(
                "the subject key table pgcloak.subject_keys is not connected yet".into(),
            )),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reference of a subject id (its canonical text, [`canonical_id`]).
    pub fn reference(&self, id: &[u8]) -> SubjectRef {
        self.refs.reference(id)
    }

    /// Keys cached now (for `/metrics` and tests).
    pub fn cached_count(&self) -> usize {
        self.lock().keys.len()
    }

    /// What the cache knows of `id` (nothing while it is not confirmed against the erasures).
    pub fn cached(&self, id: &SubjectKeyId) -> Lookup {
        let mut c = self.lock();
        if c.fresh_until.is_none_or(|t| t < Instant::now()) {
            return Lookup::Unknown;
        }
        if let Some(k) = c.keys.get(id) {
            return Lookup::Key(k);
        }
        match c.absent.get(id) {
            Some(t) if t.elapsed() < ABSENT_FOR => Lookup::Absent,
            _ => Lookup::Unknown,
        }
    }

    /// The keys of `ids` (in their order; `None`: there is none), from the cache or the table,
    /// created where missing with `create`. Fails when the table cannot be read.
    pub async fn resolve(
        &self,
        ids: &[SubjectKeyId],
        create: bool,
    ) -> Result<Vec<Option<Arc<SubjectDek>>>, String> {
        let mut out: Vec<Option<Arc<SubjectDek>>> = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.cached(id) {
                Lookup::Key(k) => out.push(Some(k)),
                Lookup::Absent if !create => out.push(None),
                _ => {
                    out.push(None);
                    if !missing.contains(id) {
                        missing.push(*id);
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let client = self
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(client) = client else {
            return Err(self.failure());
        };
        // An erasure applied while the table is read must not be undone by caching what was read.
        let generation = self.lock().generation;
        let store = SubjectKeyStore {
            client: &client,
            wrapper: &self.wrapper,
        };
        let found = store
            .keys(&missing, create)
            .await
            .map_err(|e| format!("cannot read the subject keys: {e}"))?;
        let mut c = self.lock();
        let fresh =
            c.fresh_until.is_some_and(|t| t >= Instant::now()) && c.generation == generation;
        let mut got: HashMap<SubjectKeyId, Arc<SubjectDek>> = HashMap::new();
        for (id, k) in missing.iter().zip(found) {
            match k {
                Some(k) => {
                    let k = Arc::new(k);
                    if fresh {
                        c.keys.insert(*id, k.clone());
                        c.absent.remove(id);
                    }
                    got.insert(*id, k);
                }
                None if fresh => {
                    if c.absent.len() >= CACHE_CAPACITY {
                        c.absent.clear();
                    }
                    c.absent.insert(*id, Instant::now());
                }
                None => {}
            }
        }
        drop(c);
        for (slot, id) in out.iter_mut().zip(ids) {
            if slot.is_none() {
                *slot = got.get(id).cloned();
            }
        }
        Ok(out)
    }

    /// A random key for `id` that is never stored: what a comparison with a subject that has no
    /// key encrypts under (so it matches nothing).
    pub fn throwaway(&self, id: &SubjectKeyId) -> Result<SubjectDek, pgcloak_keymgr::KeyError> {
        self.wrapper.generate(id).map(|(dek, _)| dek)
    }

    /// Why keys cannot be resolved now.
    pub fn failure(&self) -> String {
        self.failure
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the subject key table is not reachable".into())
    }

    fn set_client(&self, client: Option<Arc<tokio_postgres::Client>>, failure: Option<String>) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        *self.failure.write().unwrap_or_else(|p| p.into_inner()) = failure;
    }

    /// Forgets every key of `subjects` (erased somewhere in the fleet).
    fn evict(&self, subjects: &[SubjectRef]) {
        let mut c = self.lock();
        c.keys.remove_where(|k| subjects.contains(&k.subject));
        c.absent.retain(|k, _| !subjects.contains(&k.subject));
        c.generation += 1;
    }

    /// Marks the cache confirmed against the erasures until `STALE_AFTER` from now.
    fn confirm(&self) {
        self.lock().fresh_until = Some(Instant::now() + STALE_AFTER);
    }

    /// Forgets everything (the erasures cannot be read, or the feature was turned off).
    fn clear(&self) {
        let mut c = self.lock();
        c.keys.remove_where(|_| true);
        c.absent.clear();
        c.fresh_until = None;
        c.generation += 1;
    }
}

/// Whether the policy has subject-keyed columns.
pub fn subjects_enabled(policy: &pgcloak_policy::Policy) -> bool {
    policy
        .columns()
        .iter()
        .any(|c| c.key == pgcloak_policy::KeyScope::Subject)
}

/// Keeps the subject key table's connection for the sessions and applies erasures: every
/// [`POLL`], the erasures recorded since the last look evict their subjects' keys. Sleeps while
/// the policy has no subject-keyed column.
pub async fn watch(
    config: Arc<Config>,
    services: Arc<crate::services::Services>,
    stop: tokio_util::sync::CancellationToken,
) {
    let keys = &services.subject_keys;
    let mut client: Option<Arc<tokio_postgres::Client>> = None;
    let mut last_seen: Option<i64> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let changed = services.policy_changed.notified();
        if !subjects_enabled(&services.policy()) {
            keys.clear();
            keys.set_client(None, None);
            client = None;
            last_seen = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => {}
            }
            continue;
        }
        let result = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                let c = crate::catalog::connect_for_tables(
                    &config,
                    DDL,
                    "the subject key tables (pgcloak.subject_keys)",
                )
                .await?;
                client = Some(Arc::new(c));
            }
            let Some(c) = client.clone() else {
                return Ok(());
            };
            let read = |e| CatalogError::read("pgcloak.subject_erasures", e);
            match last_seen {
                None => {
                    // What was erased before this proxy looked is not in its cache.
                    let row = c
                        .query_one("SELECT coalesce(max(id), 0) FROM pgcloak.subject_erasures", &[])
                        .await
                        .map_err(read)?;
                    last_seen = Some(row.get(0));
                }
                Some(after) => {
                    let rows = c
                        .query(
                            "SELECT id, subject_ref FROM pgcloak.subject_erasures WHERE id > $1 ORDER BY id",
                            &[&after],
                        )
                        .await
                        .map_err(read)?;
                    let erased: Vec<SubjectRef> = rows
                        .iter()
                        .filter_map(|r| {
                            <[u8; 16]>::try_from(r.get::<_, &[u8]>(1)).ok().map(SubjectRef)
                        })
                        .collect();
                    if let Some(r) = rows.last() {
                        last_seen = Some(r.get(0));
                    }
                    if !erased.is_empty() {
                        keys.evict(&erased);
                        info!(subjects = erased.len(), "applied subject erasures");
                    }
                }
            }
            keys.set_client(Some(c), None);
            keys.confirm();
            Ok::<(), CatalogError>(())
        }
        .await;
        match result {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    info!("subject key table readable again");
                }
            }
            Err(e) => {
                client = None;
                last_seen = None;
                keys.clear();
                keys.set_client(None, Some(e.to_string()));
                if !failing {
                    warn!("{e}; values of subject-keyed columns are neither written nor read until it is back");
                    failing = true;
                }
            }
        }
    }
}
