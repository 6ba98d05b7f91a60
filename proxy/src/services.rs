//! The per-proxy services every session consults: the policy (swappable on reload), the plan cache,
//! the keyring, the audit trail, and per-database catalog snapshots and role memberships read over
//! side connections.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use pgcloak_audit::AuditHandle;
use pgcloak_keymgr::Keyring;
use pgcloak_policy::{analyze, Catalog, Lexed, Plan, PlanCache, PlanKey, Policy, RolePolicy};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn};

use crate::catalog::CatalogError;
use crate::config::Config;

/// How long a role-membership answer is reused. Revoking a membership therefore takes effect within
/// this time even when the REVOKE does not pass through pgcloak (one that does takes effect at once).
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(1);
/// How long a catalog snapshot is reused when no DDL passed through pgcloak.
pub const CATALOG_TTL: Duration = Duration::from_secs(30);
/// How long a failed catalog load is answered with its error before it is tried again.
pub const CATALOG_RETRY: Duration = Duration::from_secs(2);

/// One user table or view as the catalog reports it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    /// attnum -> column name.
    pub columns: HashMap<i16, String>,
}

/// A database's tables for analysis (`*` expansion) and for mapping RowDescription columns
/// (table oid + attnum) to policy columns.
#[derive(Debug)]
pub struct DbCatalog {
    pub catalog: Catalog,
    pub by_oid: HashMap<u32, TableInfo>,
    /// `schema.table.column` -> storage type as `format_type` prints it, for every column.
    pub storage: HashMap<String, String>,
    loaded: Instant,
    /// Set when DDL passed through pgcloak or the policy changed: reload before the next use.
    stale: AtomicBool,
}

impl DbCatalog {
    fn is_fresh(&self) -> bool {
        !self.stale.load(Ordering::Acquire) && self.loaded.elapsed() < CATALOG_TTL
    }

    /// `schema.table.column` of a RowDescription field, when it comes straight from a table column.
    pub fn column_name(&self, table_oid: u32, attnum: i16) -> Option<String> {
        let t = self.by_oid.get(&table_oid)?;
        let c = t.columns.get(&attnum)?;
        Some(format!("{}.{}.{}", t.schema, t.name, c))
    }
}

struct DbState {
    client: Option<tokio_postgres::Client>,
    /// When the last catalog load failed, and why.
    catalog_failed: Option<(Instant, CatalogError)>,
    memberships: HashMap<String, (Arc<Vec<String>>, Instant)>,
}

/// Shared by all sessions of one proxy.
pub struct Services {
    config: Arc<Config>,
    policy: RwLock<Arc<Policy>>,
    /// Bumped after each policy swap, and when a database's set of views that read protected tables
    /// changes: sessions compare it (one atomic load) to know whether what they derived from the
    /// policy and catalog (which statements need no analysis) still holds.
    policy_generation: std::sync::atomic::AtomicU64,
    pub plans: PlanCache,
    keyring: RwLock<Arc<Keyring>>,
    pub audit: Option<AuditHandle>,
    dbs: DashMap<String, Arc<AsyncMutex<DbState>>>,
    /// The latest catalog snapshot of each database, readable without waiting for a reload.
    catalogs: DashMap<String, Arc<DbCatalog>>,
    catalog_version: std::sync::atomic::AtomicU64,
    /// Key of the `hash` mask's pseudonyms (derived from the master key).
    mask_key: zeroize::Zeroizing<[u8; 32]>,
    /// The runtime with timers (the main one): session threads have none, so their timeouts are
    /// armed there, and side connections are opened and driven there.
    pub timers: crate::timer::Timers,
    /// Reload and catalog-load counts, for `/metrics`.
    pub stats: ServiceStats,
    /// The just-in-time grants in force (kept current by [`crate::grants::poll`]).
    pub grants: crate::grants::GrantState,
    /// Export budget counts (written by [`crate::budgets::flush`]).
    pub budgets: crate::budgets::Budgets,
    /// Data subjects' keys (kept current by [`crate::subjects::watch`]).
    pub subject_keys: crate::subjects::SubjectKeys,
    /// Whether the policy in force has subject-keyed columns (read at every Bind).
    subject_columns: AtomicBool,
    /// Woken by every policy swap: tasks a policy may turn on (grants, budgets) sleep on it while
    /// the policy has them off, instead of waking every second.
    pub policy_changed: tokio::sync::Notify,
}

/// How reloads and catalog loads went (counted off the data path).
#[derive(Debug)]
pub struct ServiceStats {
    pub policy_reloads: std::sync::atomic::AtomicU64,
    pub policy_reload_failures: std::sync::atomic::AtomicU64,
    /// False while the last policy reload failed (the previous policy is in force).
    pub last_policy_reload_ok: std::sync::atomic::AtomicBool,
    pub keyring_reload_failures: std::sync::atomic::AtomicU64,
    pub catalog_loads: std::sync::atomic::AtomicU64,
    pub catalog_load_failures: std::sync::atomic::AtomicU64,
    /// Databases whose last catalog load failed, with the error (for `/readyz`).
    pub catalog_errors: DashMap<String, String>,
    /// Why the last keyring reload failed, while the previous keyring is in force.
    pub keyring_error: std::sync::Mutex<Option<String>>,
}

impl Default for ServiceStats {
    fn default() -> ServiceStats {
        ServiceStats {
            policy_reloads: Default::default(),
            policy_reload_failures: Default::default(),
            last_policy_reload_ok: std::sync::atomic::AtomicBool::new(true),
            keyring_reload_failures: Default::default(),
            catalog_loads: Default::default(),
            catalog_load_failures: Default::default(),
            catalog_errors: DashMap::new(),
            keyring_error: std::sync::Mutex::new(None),
        }
    }
}

impl Services {
    pub fn new(
        config: Arc<Config>,
        policy: Policy,
        keyring: Arc<Keyring>,
        audit: Option<AuditHandle>,
        mask_key: zeroize::Zeroizing<[u8; 32]>,
        subject_keys: crate::subjects::SubjectKeys,
        timers: crate::timer::Timers,
    ) -> Services {
        let subject_columns = AtomicBool::new(crate::subjects::subjects_enabled(&policy));
        Services {
            config,
            policy: RwLock::new(Arc::new(policy)),
            policy_generation: std::sync::atomic::AtomicU64::new(1),
            plans: PlanCache::new(16 * 1024),
            keyring: RwLock::new(keyring),
            audit,
            dbs: DashMap::new(),
            catalogs: DashMap::new(),
            catalog_version: std::sync::atomic::AtomicU64::new(1),
            mask_key,
            timers,
            stats: ServiceStats::default(),
            grants: crate::grants::GrantState::default(),
            budgets: crate::budgets::Budgets::default(),
            subject_keys,
            subject_columns,
            policy_changed: tokio::sync::Notify::new(),
        }
    }

    /// The keyring in force now (a reloaded one applies from the next statement).
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a reloaded keyring (after `keys rotate`, or keys added by another instance).
    pub fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
    }

    /// Key of the `hash` mask.
    pub fn mask_key(&self) -> &[u8] {
        &self.mask_key[..]
    }

    /// The policy in force now (a new one applies from each session's next statement).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes with every policy swap. Read it before [`Services::policy`]: what was derived from the
    /// policy read after it is stale once the generation moves on.
    pub fn policy_generation(&self) -> u64 {
        self.policy_generation.load(Ordering::Acquire)
    }

    /// Installs a reloaded policy: plans and memberships are recomputed from the next statement on.
    pub fn set_policy(&self, policy: Policy) {
        self.subject_columns.store(
            crate::subjects::subjects_enabled(&policy),
            Ordering::Release,
        );
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.policy_generation.fetch_add(1, Ordering::Release);
        self.policy_changed.notify_waiters();
        self.plans.clear();
        // Which views read protected tables depends on the policy.
        self.mark_catalogs_stale();
        for db in self.dbs.iter() {
            if let Ok(mut s) = db.value().try_lock() {
                s.memberships.clear();
            }
        }
    }

    /// Whether the policy names any table at all (else nothing is ever analysed).
    /// Whether the policy in force has subject-keyed columns (one atomic load).
    pub fn has_subject_columns(&self) -> bool {
        self.subject_columns.load(Ordering::Acquire)
    }

    pub fn has_protected_tables(&self) -> bool {
        !self.policy().protected_table_names().is_empty()
    }

    /// The plan of `sql` (already lexed as `lexed`, and naming a protected table) for `role`, cached by
    /// normalised text, role, policy and catalog version.
    pub fn plan(
        &self,
        sql: &str,
        lexed: &Lexed,
        policy: &Policy,
        role: &RolePolicy,
        catalog: &Catalog,
    ) -> Arc<Plan> {
        let key = PlanKey::of(lexed, &role.name, policy, catalog);
        let mut analysed = false;
        let plan = self.plans.get_or_insert_with(&key, lexed.fingerprint, || {
            analysed = true;
            analyze(sql, lexed, catalog, policy, role)
        });
        crate::metrics::with(|c| {
            if analysed {
                c.plan_misses.add(1)
            } else {
                c.plan_hits.add(1)
            }
        });
        plan
    }

    fn db(&self, database: &str) -> Arc<AsyncMutex<DbState>> {
        self.dbs
            .entry(database.to_string())
            .or_insert_with(|| {
                Arc::new(AsyncMutex::new(DbState {
                    client: None,
                    catalog_failed: None,
                    memberships: HashMap::new(),
                }))
            })
            .clone()
    }

    async fn client<'a>(
        &self,
        state: &'a mut DbState,
        database: &str,
    ) -> Result<&'a tokio_postgres::Client, CatalogError> {
        if state.client.as_ref().is_some_and(|c| c.is_closed()) {
            state.client = None;
        }
        if state.client.is_none() {
            let mut cfg = (*self.config).clone();
            cfg.catalog.database = database.to_string();
            // On the timer runtime: the connection's driver task arms timers (connect_timeout).
            let opened = self
                .timers
                .run(async move { crate::catalog::connect(&cfg).await })
                .await
                .unwrap_or(Err(CatalogError::ShuttingDown));
            let opened = match opened {
                Ok(c) => c,
                Err(e) => {
                    self.stats
                        .catalog_errors
                        .insert(database.to_string(), e.to_string());
                    return Err(e);
                }
            };
            self.stats.catalog_errors.remove(database);
            state.client = Some(opened);
            info!(database, "catalog connection opened");
        }
        Ok(state.client.as_ref().expect("just set"))
    }

    /// Every role `user` is a member of (transitively, itself included), cached for [`MEMBERSHIP_TTL`].
    pub async fn memberships(
        &self,
        database: &str,
        user: &str,
    ) -> Result<Arc<Vec<String>>, CatalogError> {
        let db = self.db(database);
        let mut state = db.lock().await;
        if let Some((m, at)) = state.memberships.get(user) {
            if at.elapsed() < MEMBERSHIP_TTL {
                return Ok(m.clone());
            }
        }
        let client = self.client(&mut state, database).await?;
        let rows = client
            .query(
                "SELECT rolname::text FROM pg_roles WHERE pg_has_role($1::text::name, oid, 'MEMBER')",
                &[&user],
            )
            .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                state.client = None;
                return Err(CatalogError::read(format!("role membership of {user}"), e));
            }
        };
        let m = Arc::new(
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>(),
        );
        state
            .memberships
            .insert(user.to_string(), (m.clone(), Instant::now()));
        Ok(m)
    }

    /// Forgets cached memberships (after GRANT/REVOKE through the proxy).
    pub fn forget_memberships(&self, database: &str) {
        if let Some(db) = self.dbs.get(database) {
            if let Ok(mut s) = db.try_lock() {
                s.memberships.clear();
            }
        }
    }

    /// Marks a database's catalog stale (after DDL through the proxy). Sessions forget the Parses
    /// they remember as needing no analysis, so the next one of each reloads the catalog and sees a
    /// view made by the DDL.
    pub fn invalidate_catalog(&self, database: &str) {
        if let Some(c) = self.catalogs.get(database) {
            c.stale.store(true, Ordering::Release);
            self.policy_generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Every [`CATALOG_TTL`]: marks all catalog snapshots stale and makes sessions forget remembered
    /// Parses, so that a view made directly on the server is seen within that time even by a session
    /// that only re-sends statements it has sent before.
    pub fn expire_catalogs(&self) {
        if self.catalogs.is_empty() || !self.has_protected_tables() {
            return;
        }
        self.mark_catalogs_stale();
        self.policy_generation.fetch_add(1, Ordering::Release);
    }

    fn mark_catalogs_stale(&self) {
        for c in self.catalogs.iter() {
            c.value().stale.store(true, Ordering::Release);
        }
    }

    /// Every database with a catalog snapshot and the time since it was loaded.
    pub fn catalog_ages(&self) -> Vec<(String, Duration)> {
        let mut ages: Vec<(String, Duration)> = self
            .catalogs
            .iter()
            .map(|c| (c.key().clone(), c.value().loaded.elapsed()))
            .collect();
        ages.sort();
        ages
    }

    /// The catalog snapshot of `database` if one was loaded, and whether it is still fresh; no waiting.
    pub fn catalog_snapshot(&self, database: &str) -> Option<(Arc<DbCatalog>, bool)> {
        self.catalogs.get(database).map(|c| {
            let c = c.value().clone();
            let fresh = c.is_fresh();
            (c, fresh)
        })
    }

    /// The catalog snapshot of `database`, reloaded after [`CATALOG_TTL`] or DDL.
    pub async fn catalog(&self, database: &str) -> Result<Arc<DbCatalog>, CatalogError> {
        if let Some((c, true)) = self.catalog_snapshot(database) {
            return Ok(c);
        }
        let db = self.db(database);
        let mut state = db.lock().await;
        // Another session may have reloaded it while this one waited for the lock.
        if let Some((c, true)) = self.catalog_snapshot(database) {
            return Ok(c);
        }
        // A load that just failed is not retried by every statement (each would wait for the
        // attempt and log it): its error stands for CATALOG_RETRY.
        if let Some((at, e)) = &state.catalog_failed {
            if at.elapsed() < CATALOG_RETRY {
                return Err(e.clone());
            }
        }
        let loaded = self.load_catalog(&mut state, database).await;
        match &loaded {
            Ok(_) => {
                self.stats.catalog_loads.fetch_add(1, Ordering::Relaxed);
                self.stats.catalog_errors.remove(database);
                state.catalog_failed = None
            }
            Err(e) => {
                self.stats
                    .catalog_load_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(database, "{e}; retried in {CATALOG_RETRY:?}");
                self.stats
                    .catalog_errors
                    .insert(database.to_string(), e.to_string());
                state.catalog_failed = Some((Instant::now(), e.clone()));
            }
        }
        loaded
    }

    async fn load_catalog(
        &self,
        state: &mut DbState,
        database: &str,
    ) -> Result<Arc<DbCatalog>, CatalogError> {
        let version = self
            .catalog_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = self.client(state, database).await?;
        let snapshot = match fetch_catalog(client, &self.policy(), database, version).await {
            Ok(c) => Arc::new(c),
            Err(e) => {
                state.client = None;
                return Err(e);
            }
        };
        let before = self.catalogs.insert(database.to_string(), snapshot.clone());
        let views = snapshot.catalog.protected_view_names();
        if before.is_none_or(|b| b.catalog.protected_view_names() != views) {
            if !views.is_empty() {
                info!(database, views = ?views, "views that read protected tables");
            }
            // Sessions may remember statements naming such a view as needing no analysis.
            self.policy_generation.fetch_add(1, Ordering::Release);
        }
        Ok(snapshot)
    }
}

/// Reads the catalog snapshot of `database` over `client` for `policy` (the views that read its
/// protected tables); `version` numbers the snapshot. Used by [`Services::catalog`] and by offline
/// tools (`pgcloak policy impact`).
pub async fn fetch_catalog(
    client: &tokio_postgres::Client,
    policy: &Policy,
    database: &str,
    version: u64,
) -> Result<DbCatalog, CatalogError> {
    let (rows, views, definitions) = read_catalog(client, policy)
        .await
        .map_err(|(what, e)| CatalogError::read(format!("{what} of database {database}"), e))?;
    let mut catalog = Catalog::new();
    catalog.version = version;
    for (schema, name) in &views {
        let def = definitions.get(&(schema.clone(), name.clone()));
        catalog.add_protected_view(schema, name, def.map(String::as_str));
    }
    let mut by_oid = HashMap::new();
    let mut storage = HashMap::new();
    for r in &rows {
        let oid = r.get::<_, i64>(0) as u32;
        let schema: String = r.get(1);
        let name: String = r.get(2);
        let nums: Vec<i16> = r.get(3);
        let cols: Vec<String> = r.get(4);
        let types: Vec<String> = r.get(5);
        for (c, t) in cols.iter().zip(types) {
            storage.insert(format!("{schema}.{name}.{c}"), t);
        }
        catalog.add_table(&schema, &name, cols.iter().cloned());
        by_oid.insert(
            oid,
            TableInfo {
                schema,
                name,
                columns: nums.into_iter().zip(cols).collect(),
            },
        );
    }
    Ok(DbCatalog {
        catalog,
        by_oid,
        storage,
        loaded: Instant::now(),
        stale: AtomicBool::new(false),
    })
}

/// The catalog queries of [`Services::catalog`]: every user relation with its columns, the views (and
/// materialized views) that read a table of `policy`, and their definitions. The error names what
/// could not be read.
async fn read_catalog(
    client: &tokio_postgres::Client,
    policy: &Policy,
) -> Result<
    (
        Vec<tokio_postgres::Row>,
        HashSet<(String, String)>,
        HashMap<(String, String), String>,
    ),
    (&'static str, tokio_postgres::Error),
> {
    let rows = client
        .query(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text, \
                    array_agg(a.attnum::int2 ORDER BY a.attnum), array_agg(a.attname::text ORDER BY a.attnum), \
                    array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
             GROUP BY 1, 2, 3",
            &[],
        )
        .await
        .map_err(|e| ("the catalog", e))?;
    // Which views read which relations (one row per view and relation it names).
    let edges: Vec<[String; 4]> = client
        .query(
            "SELECT DISTINCT vn.nspname::text, v.relname::text, tn.nspname::text, t.relname::text \
             FROM pg_depend d \
             JOIN pg_rewrite r ON r.oid = d.objid \
             JOIN pg_class v ON v.oid = r.ev_class AND v.relkind IN ('v', 'm') \
             JOIN pg_namespace vn ON vn.oid = v.relnamespace \
             JOIN pg_class t ON t.oid = d.refobjid AND t.oid <> v.oid \
             JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass",
            &[],
        )
        .await
        .map_err(|e| ("the views", e))?
        .iter()
        .map(|r| [r.get(0), r.get(1), r.get(2), r.get(3)])
        .collect();
    let views = protected_views(policy, &edges);
    let definitions = view_definitions(client, &views)
        .await
        .map_err(|e| ("the view definitions", e))?;
    Ok((rows, views, definitions))
}

/// The views (schema, name) that read a table of the policy, directly or through other views, from
/// the catalog's `[view schema, view name, relation schema, relation name]` dependency rows.
fn protected_views(policy: &Policy, edges: &[[String; 4]]) -> HashSet<(String, String)> {
    let mut found: HashSet<(String, String)> = HashSet::new();
    loop {
        let before = found.len();
        for [vs, vn, ts, tn] in edges {
            if (policy.has_table(ts, tn) || found.contains(&(ts.clone(), tn.clone())))
                && !found.contains(&(vs.clone(), vn.clone()))
            {
                found.insert((vs.clone(), vn.clone()));
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// The queries of `views` as `pg_get_viewdef` prints them with `search_path = pg_catalog`, so that
/// every user relation in them is schema-qualified (the analysis then resolves them whatever the
/// session's search path, and no CTE of a statement can stand in for them).
async fn view_definitions(
    client: &tokio_postgres::Client,
    views: &HashSet<(String, String)>,
) -> Result<HashMap<(String, String), String>, tokio_postgres::Error> {
    if views.is_empty() {
        return Ok(HashMap::new());
    }
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        views.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
    client
        .batch_execute("BEGIN READ ONLY; SET LOCAL search_path = pg_catalog")
        .await?;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, pg_get_viewdef(c.oid) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v', 'm') \
               AND (n.nspname::text, c.relname::text) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            &[&schemas, &names],
        )
        .await;
    let end = client.batch_execute("COMMIT").await;
    let rows = rows?;
    end?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(v: &str, t: &str) -> [String; 4] {
        let (vs, vn) = v.split_once('.').unwrap();
        let (ts, tn) = t.split_once('.').unwrap();
        [vs.into(), vn.into(), ts.into(), tn.into()]
    }

    #[test]
    fn protected_views_follow_views_of_views() {
        let policy = Policy::parse(
            "[[column]]\nname = \"public.customers.email\"\nclass = \"confidential\"\nencrypt = \"deterministic\"\n",
            "p.toml",
        )
        .unwrap();
        // Listed top-down, so one pass is not enough.
        let edges = [
            edge("r.top", "public.mid"),
            edge("public.mid", "public.base"),
            edge("public.mid", "public.orders"),
            edge("public.base", "public.customers"),
            edge("public.orders_view", "public.orders"),
            edge("other.customers", "public.orders"),
        ];
        let found = protected_views(&policy, &edges);
        let mut names: Vec<String> = found.iter().map(|(s, n)| format!("{s}.{n}")).collect();
        names.sort();
        assert_eq!(names, ["public.base", "public.mid", "r.top"]);
        assert!(protected_views(&policy, &[]).is_empty());
    }
}
