//! Just-in-time grants: a user's read access to a class (of one table, or of all) raised for a
//! while, on request and with the approval of someone else.
//!
//! Grants live in `pgcloak.grants` of the `[catalog]` database, so every instance of a fleet sees
//! the same ones; `pgcloak grant` (the CLI) writes them, and each step it takes is also a row of
//! `pgcloak.grant_events`. Every running proxy polls once a second ([`poll`]): it loads the active
//! grants, marks the ones whose time is up as expired, and claims the steps nobody has audited yet
//! (`FOR UPDATE SKIP LOCKED`, so in a fleet exactly one instance writes each into its trail).
//!
//! A grant applies from the first poll that sees it (within about a second of the approval) and
//! ends at its expiry by the proxy's own clock, to the second, or at the first poll after a
//! revocation. A proxy that cannot read the table for [`STALE_AFTER`] forgets every grant: an
//! unreadable grant table fails closed, to the policy's access.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgcloak_policy::{Access, Class, GrantRaise, Policy};
use tracing::{info, warn};

use crate::catalog::CatalogError;
use crate::config::Config;

/// How often a running proxy reads the grant table.
pub const POLL: Duration = Duration::from_secs(1);

/// A proxy that has not read the grant table for this long applies no grant.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The longest a grant may last.
pub const MAX_DURATION_SECS: u64 = 7 * 86_400;

/// Creates the tables if missing (serialised, so several instances and the CLI may race) and
/// revokes every privilege from PUBLIC.
const DDL: &str = "BEGIN; \
    SELECT pg_advisory_xact_lock(hashtext('pgcloak grants schema')); \
    CREATE SCHEMA IF NOT EXISTS pgcloak; \
    CREATE TABLE IF NOT EXISTS pgcloak.grants ( \
        id bigserial PRIMARY KEY, \
        usr text NOT NULL, \
        class text NOT NULL, \
        access text NOT NULL CHECK (access IN ('plaintext', 'masked')), \
        tbl text, \
        seconds bigint NOT NULL CHECK (seconds > 0), \
        reason text NOT NULL, \
        state text NOT NULL CHECK (state IN ('pending', 'active', 'revoked', 'expired')), \
        requested_by text NOT NULL, \
        requested_at timestamptz NOT NULL DEFAULT now(), \
        approved_by text, \
        approved_at timestamptz, \
        expires_at timestamptz, \
        ended_by text, \
        ended_at timestamptz); \
    CREATE INDEX IF NOT EXISTS grants_live_idx ON pgcloak.grants (state) WHERE state IN ('pending', 'active'); \
    CREATE TABLE IF NOT EXISTS pgcloak.grant_events ( \
        seq bigserial PRIMARY KEY, \
        grant_id bigint NOT NULL REFERENCES pgcloak.grants (id), \
        action text NOT NULL, \
        actor text NOT NULL, \
        at timestamptz NOT NULL DEFAULT now(), \
        audited_by text, \
        audited_at timestamptz); \
    CREATE INDEX IF NOT EXISTS grant_events_unaudited_idx ON pgcloak.grant_events (seq) WHERE audited_by IS NULL; \
    REVOKE ALL ON SCHEMA pgcloak FROM PUBLIC; \
    REVOKE ALL ON pgcloak.grants, pgcloak.grant_events FROM PUBLIC; \
    COMMIT;";

/// One grant in force: what it raises and until when (seconds since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveGrant {
    pub id: i64,
    pub raise: GrantRaise,
    pub expires_at: f64,
}

impl ActiveGrant {
    /// Whether the grant covers a column of `class` in `schema.table`.
    pub fn covers(&self, schema: &str, table: &str, class: Class) -> bool {
        self.raise.class == class
            && self
                .raise
                .table
                .as_ref()
                .is_none_or(|(s, t)| s == schema && t == table)
    }
}

/// The grants of one user in force at one moment, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct UserGrants {
    pub grants: Vec<ActiveGrant>,
}

impl UserGrants {
    /// The grant ids joined with commas: names a raise of a role (see
    /// [`pgcloak_policy::RolePolicy::raised_by`]) and tells whether two sets are the same.
    pub fn tag(&self) -> String {
        let mut s = String::new();
        for (i, g) in self.grants.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&g.id.to_string());
        }
        s
    }

    /// Whether two sets hold the same grants.
    pub fn same(a: Option<&UserGrants>, b: Option<&UserGrants>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.grants.len() == b.grants.len()
                    && a.grants.iter().zip(&b.grants).all(|(x, y)| x.id == y.id)
            }
            _ => false,
        }
    }

    pub fn raises(&self) -> Vec<GrantRaise> {
        self.grants.iter().map(|g| g.raise.clone()).collect()
    }
}

/// The grants in force by user, as read from the table at one time.
type ByUser = Arc<HashMap<String, Vec<ActiveGrant>>>;

/// The grants a proxy applies: the last set read from the table, and when it was read.
#[derive(Debug, Default)]
pub struct GrantState {
    current: RwLock<Option<(ByUser, Instant)>>,
    /// Whether the last read found any grant (read without the lock on every Bind).
    any: std::sync::atomic::AtomicBool,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl GrantState {
    /// The grants of `user` in force now; `None` when there are none (or the table has not been
    /// read for [`STALE_AFTER`]). Cheap when no grant is active: one atomic load.
    pub fn for_user(&self, user: &str) -> Option<UserGrants> {
        if !self.any() {
            return None;
        }
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        let (set, read_at) = guard.as_ref()?;
        if set.is_empty() || read_at.elapsed() > STALE_AFTER {
            return None;
        }
        let now = now_unix();
        let grants: Vec<ActiveGrant> = set
            .get(user)?
            .iter()
            .filter(|g| g.expires_at > now)
            .cloned()
            .collect();
        (!grants.is_empty()).then_some(UserGrants { grants })
    }

    /// Every grant in force (for the admin console), by user.
    pub fn all(&self) -> Vec<(String, ActiveGrant)> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        let Some((set, read_at)) = guard.as_ref() else {
            return Vec::new();
        };
        if read_at.elapsed() > STALE_AFTER {
            return Vec::new();
        }
        let now = now_unix();
        let mut out: Vec<(String, ActiveGrant)> = set
            .iter()
            .flat_map(|(u, gs)| gs.iter().map(move |g| (u.clone(), g.clone())))
            .filter(|(_, g)| g.expires_at > now)
            .collect();
        out.sort_by_key(|(_, g)| g.id);
        out
    }

    /// Whether any grant may be in force (false: none was read, cheaper than [`GrantState::for_user`]).
    pub fn any(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Acquire)
    }

    fn install(&self, set: HashMap<String, Vec<ActiveGrant>>) {
        self.any
            .store(!set.is_empty(), std::sync::atomic::Ordering::Release);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Some((Arc::new(set), Instant::now()));
    }

    /// Forgets every grant (grants were turned off by a policy reload).
    fn clear(&self) {
        self.any.store(false, std::sync::atomic::Ordering::Release);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Parses `schema.table` (a bare `table` is in `public`).
pub fn parse_table(t: &str) -> Option<(String, String)> {
    let (schema, table) = t.split_once('.').unwrap_or(("public", t));
    (!schema.is_empty() && !table.is_empty() && !table.contains('.'))
        .then(|| (schema.to_string(), table.to_string()))
}

fn raise_of(class: &str, access: &str, table: Option<&str>) -> Option<GrantRaise> {
    let table = match table {
        None => None,
        Some(t) => Some(parse_table(t)?),
    };
    Some(GrantRaise {
        class: Class::parse(class)?,
        access: match access {
            "plaintext" => Access::Plaintext,
            "masked" => Access::Masked,
            _ => return None,
        },
        table,
    })
}

/// The audit event of one claimed step of a grant.
fn step_event(row: &tokio_postgres::Row, database: &str) -> pgcloak_audit::NewEvent {
    use pgcloak_audit::{EventSource, EventStatement, Kind, NewEvent, What, Who};
    let id: i64 = row.get("grant_id");
    let action: String = row.get("action");
    let actor: String = row.get("actor");
    let usr: String = row.get("usr");
    let class: String = row.get("class");
    let access: String = row.get("access");
    let tbl: Option<String> = row.get("tbl");
    let seconds: i64 = row.get("seconds");
    let expires: Option<String> = row.get("expires");
    let mut statement = format!(
        "grant {id} {action}: user {usr}, class {class}, access {access}, table {}",
        tbl.as_deref().unwrap_or("any")
    );
    match expires {
        Some(e) if action != "requested" => statement.push_str(&format!(", until {e}")),
        _ => statement.push_str(&format!(", for {seconds}s")),
    }
    let at: Option<String> = row.get("at_text");
    NewEvent {
        ts: at.as_deref().and_then(pgcloak_audit::parse_time),
        who: EventSource::new(Who {
            user: actor,
            database: database.to_string(),
            application: "pgcloak grant".to_string(),
            ..Who::default()
        }),
        what: EventStatement::new(What {
            kind: Kind::Grant,
            statement: Some(statement),
            fingerprint: Some(format!("grant:{id}")),
            tables: tbl.into_iter().collect(),
            ..What::default()
        }),
        reason: Some(row.get("reason")),
        ..NewEvent::new(Kind::Grant)
    }
}

/// One poll: expire what is due, load what is active, audit the steps nobody audited yet.
async fn poll_once(
    client: &tokio_postgres::Client,
    state: &GrantState,
    audit: Option<&pgcloak_audit::AuditHandle>,
    config: &Config,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "WITH e AS (UPDATE pgcloak.grants SET state = 'expired', ended_at = now(), ended_by = 'pgcloak' \
               WHERE state = 'active' AND expires_at <= now() RETURNING id) \
             INSERT INTO pgcloak.grant_events (grant_id, action, actor) SELECT id, 'expired', 'pgcloak' FROM e",
        )
        .await?;
    let rows = client
        .query(
            "SELECT id, usr, class, access, tbl, extract(epoch FROM expires_at)::float8 AS expires \
             FROM pgcloak.grants WHERE state = 'active' AND expires_at > now() ORDER BY id",
            &[],
        )
        .await?;
    let mut set: HashMap<String, Vec<ActiveGrant>> = HashMap::new();
    for r in &rows {
        let id: i64 = r.get("id");
        let tbl: Option<String> = r.get("tbl");
        let Some(raise) = raise_of(r.get("class"), r.get("access"), tbl.as_deref()) else {
            warn!(grant = id, "grant row is not understood and is not applied");
            continue;
        };
        set.entry(r.get("usr")).or_default().push(ActiveGrant {
            id,
            raise,
            expires_at: r.get("expires"),
        });
    }
    state.install(set);
    let Some(audit) = audit else {
        return Ok(());
    };
    let steps = client
        .query(
            "WITH c AS (UPDATE pgcloak.grant_events SET audited_by = $1, audited_at = now() \
               WHERE seq IN (SELECT seq FROM pgcloak.grant_events WHERE audited_by IS NULL \
                             ORDER BY seq LIMIT 100 FOR UPDATE SKIP LOCKED) \
               RETURNING seq, grant_id, action, actor, at) \
             SELECT c.seq, c.grant_id, c.action, c.actor, \
                    to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at_text, \
                    g.usr, g.class, g.access, g.tbl, g.seconds, g.reason, \
                    to_char(g.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS expires \
             FROM c JOIN pgcloak.grants g ON g.id = c.grant_id ORDER BY c.seq",
            &[&config.instance],
        )
        .await?;
    for s in &steps {
        if let Err(e) = audit.record(step_event(s, &config.catalog.database)) {
            warn!("grant step not audited: {e}");
        }
    }
    Ok(())
}

/// Runs until `stop`: polls the grant table every [`POLL`] while the policy has `[grants]`.
pub async fn poll(
    config: Arc<Config>,
    services: Arc<crate::services::Services>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Created before the policy is read, so a swap right after the read still wakes it.
        let changed = services.policy_changed.notified();
        if !grants_enabled(&services.policy()) {
            services.grants.clear();
            client = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => {}
            }
            continue;
        }
        let result = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = Some(
                    crate::catalog::connect_for_tables(
                        &config,
                        DDL,
                        "the grant tables (pgcloak.grants)",
                    )
                    .await?,
                );
            }
            let Some(c) = client.as_ref() else {
                return Ok(());
            };
            poll_once(c, &services.grants, services.audit.as_ref(), &config)
                .await
                .map_err(|e| CatalogError::read("pgcloak.grants", e))
        }
        .await;
        match result {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    info!("grant table readable again");
                }
            }
            Err(e) => {
                client = None;
                if !failing {
                    warn!(
                        "{e}; grants stop applying {} s after the last good read",
                        STALE_AFTER.as_secs()
                    );
                    failing = true;
                }
            }
        }
    }
}

/// Whether the policy turns grants on (a `[grants]` section with approvers).
pub fn grants_enabled(policy: &Policy) -> bool {
    !policy.grants().approvers.is_empty()
}

/// What `pgcloak grant` commands need: the store (as the `[catalog]` user) and the identities
/// (each confirmed by logging in to PostgreSQL as that user).
pub mod cli {
    use super::*;
    use crate::catalog::CatalogConn;
    use anyhow::{anyhow, bail, Context, Result};

    /// Connects as the `[catalog]` user and makes sure the tables exist.
    fn store(cfg: &Config) -> Result<CatalogConn> {
        let conn = CatalogConn::connect_blocking(cfg)?;
        conn.batch(DDL)
            .context("cannot create the grant tables (pgcloak.grants) in the [catalog] database")?;
        Ok(conn)
    }

    /// Confirms that whoever runs the command is `user`: logs in to the `[catalog]` database as
    /// `user` with `PGPASSWORD` (none when unset), and returns the roles of `among` it is a member of.
    fn confirm(
        conn: &CatalogConn,
        cfg: &Config,
        user: &str,
        among: &[String],
    ) -> Result<Vec<String>> {
        let mut pg = crate::catalog::pg_config(cfg);
        pg.user(user);
        // No PGPASSWORD: an empty one (trust or peer setups need none).
        pg.password(std::env::var("PGPASSWORD").unwrap_or_default());
        conn.block_on(async {
            let who = format!("login as {user}");
            let client = crate::catalog::connect_with(cfg, pg, who)
                .await
                .map_err(|e| match e {
                    CatalogError::Connect { cause, .. } => anyhow!(
                        "cannot log in to PostgreSQL as {user} to confirm who you are: {}; set PGPASSWORD to {user}'s password",
                        crate::catalog::describe(&cause)
                    ),
                    other => anyhow!(other),
                })?;
            // By oid: roles of the list that do not exist are simply not matched.
            let rows = client
                .query(
                    "SELECT rolname::text FROM pg_roles \
                     WHERE rolname = ANY ($1::text[]) AND pg_has_role(current_user, oid, 'MEMBER')",
                    &[&among],
                )
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot read the role memberships of {user}: {}",
                        crate::catalog::describe(&e)
                    )
                })?;
            Ok::<_, anyhow::Error>(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }

    fn policy(cfg: &Config) -> Result<Policy> {
        let p = crate::policy_file::load_policy(cfg)?;
        if !grants_enabled(&p) {
            bail!(
                "the policy has no [grants] section, so grants are off; add [grants] approvers = [\"<role>\"] to {}",
                p.file()
            );
        }
        Ok(p)
    }

    pub struct Request<'a> {
        pub user: &'a str,
        pub class: &'a str,
        pub access: &'a str,
        pub duration: &'a str,
        pub table: Option<&'a str>,
        pub reason: &'a str,
        pub by: &'a str,
    }

    /// Records a pending request; returns its id.
    pub fn request(cfg: &Config, r: &Request<'_>) -> Result<i64> {
        let policy = policy(cfg)?;
        let Some(class) = Class::parse(r.class) else {
            bail!(
                "--class {:?} is not a class; use one of public, internal, sensitive, confidential",
                r.class
            );
        };
        if !matches!(r.access, "plaintext" | "masked") {
            bail!(
                "--access {:?} is not grantable; use plaintext or masked",
                r.access
            );
        }
        let Some(seconds) = pgcloak_policy::parse_duration(r.duration) else {
            bail!(
                "--for {:?} is not a duration; write e.g. 30m, 1h or 1h30m",
                r.duration
            );
        };
        if seconds > MAX_DURATION_SECS {
            bail!("--for {} is longer than the 7 days a grant may last; give a standing role in the policy instead", r.duration);
        }
        let table = match r.table {
            None => None,
            Some(t) => {
                let Some((schema, table)) = parse_table(t) else {
                    bail!("--table {t:?} is not a table name; write schema.table");
                };
                if !policy
                    .columns()
                    .iter()
                    .any(|c| c.schema == schema && c.table == table && c.class == class)
                {
                    bail!("the policy has no {class} column in {schema}.{table}, so a grant for it would raise nothing; check --table and --class");
                }
                Some(format!("{schema}.{table}"))
            }
        };
        if r.reason.trim().is_empty() {
            bail!("--reason is empty; say why the access is needed (it goes to the audit trail)");
        }
        let conn = store(cfg)?;
        confirm(&conn, cfg, r.by, &[])?;
        let exists = conn
            .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&r.user])
            .map_err(|e| anyhow!("{e}"))?;
        if exists.is_empty() {
            bail!(
                "there is no PostgreSQL role {}; --user names the login that gets the access",
                r.user
            );
        }
        let seconds = seconds as i64;
        let row = conn
            .query(
                "WITH g AS (INSERT INTO pgcloak.grants (usr, class, access, tbl, seconds, reason, state, requested_by) \
                   VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7) RETURNING id) \
                 INSERT INTO pgcloak.grant_events (grant_id, action, actor) SELECT id, 'requested', $7 FROM g RETURNING grant_id",
                &[&r.user, &class.as_str(), &r.access, &table, &seconds, &r.reason, &r.by],
            )
            .map_err(|e| anyhow!("cannot record the request: {e}"))?;
        row.first()
            .map(|r| r.get::<_, i64>(0))
            .ok_or_else(|| anyhow!("the request was not recorded"))
    }

    /// Approves a pending request as `by` (a member of an approver role, not its requester nor
    /// its user); returns when it expires.
    pub fn approve(cfg: &Config, id: i64, by: &str) -> Result<String> {
        let policy = policy(cfg)?;
        let conn = store(cfg)?;
        let rows = conn
            .query(
                "SELECT usr, requested_by, state FROM pgcloak.grants WHERE id = $1",
                &[&id],
            )
            .map_err(|e| anyhow!("{e}"))?;
        let Some(g) = rows.first() else {
            bail!("there is no grant {id}; see pgcloak grant list");
        };
        let (usr, requester, state): (String, String, String) = (g.get(0), g.get(1), g.get(2));
        if state != "pending" {
            bail!("grant {id} is {state}, not pending; only a pending request can be approved");
        }
        if by == requester || by == usr {
            bail!("{by} requested grant {id} (or would receive it) and cannot approve it; another approver must");
        }
        let approvers = &policy.grants().approvers;
        let member_of = confirm(&conn, cfg, by, approvers)?;
        if member_of.is_empty() {
            bail!(
                "{by} is not a member of an approver role ({}); only their members approve grants",
                approvers.join(", ")
            );
        }
        let rows = conn
            .query(
                "WITH g AS (UPDATE pgcloak.grants SET state = 'active', approved_by = $2, approved_at = now(), \
                   expires_at = now() + seconds * interval '1 second' WHERE id = $1 AND state = 'pending' \
                   RETURNING id, expires_at), \
                 e AS (INSERT INTO pgcloak.grant_events (grant_id, action, actor) SELECT id, 'approved', $2 FROM g) \
                 SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM g",
                &[&id, &by],
            )
            .map_err(|e| anyhow!("cannot record the approval: {e}"))?;
        rows.first().map(|r| r.get::<_, String>(0)).ok_or_else(|| {
            anyhow!("grant {id} changed while it was being approved; look at pgcloak grant list")
        })
    }

    /// Revokes a pending or active grant; `by` (confirmed) or else the `[catalog]` user is
    /// recorded as who did it.
    pub fn revoke(cfg: &Config, id: i64, by: Option<&str>) -> Result<()> {
        let conn = store(cfg)?;
        let actor = match by {
            Some(b) => {
                confirm(&conn, cfg, b, &[])?;
                b.to_string()
            }
            None => cfg.catalog.user.clone(),
        };
        let rows = conn
            .query(
                "WITH g AS (UPDATE pgcloak.grants SET state = 'revoked', ended_by = $2, ended_at = now() \
                   WHERE id = $1 AND state IN ('pending', 'active') RETURNING id) \
                 INSERT INTO pgcloak.grant_events (grant_id, action, actor) SELECT id, 'revoked', $2 FROM g RETURNING grant_id",
                &[&id, &actor],
            )
            .map_err(|e| anyhow!("cannot record the revocation: {e}"))?;
        if rows.is_empty() {
            let state = conn
                .query_opt_text("SELECT state FROM pgcloak.grants WHERE id = $1", &[&id])
                .map_err(|e| anyhow!("{e}"))?;
            match state {
                None => bail!("there is no grant {id}; see pgcloak grant list"),
                Some(s) => bail!("grant {id} is already {s}"),
            }
        }
        Ok(())
    }

    /// One row of `grant list`.
    #[derive(Debug, serde::Serialize)]
    pub struct Listed {
        pub id: i64,
        pub user: String,
        pub class: String,
        pub access: String,
        pub table: Option<String>,
        pub state: String,
        pub requested_by: String,
        pub approved_by: Option<String>,
        pub expires_at: Option<String>,
        pub reason: String,
    }

    /// Grants, newest first; only the active ones with `active`.
    pub fn list(cfg: &Config, active: bool) -> Result<Vec<Listed>> {
        let conn = store(cfg)?;
        let rows = conn
            .query(
                "SELECT id, usr, class, access, tbl, \
                   CASE WHEN state = 'active' AND expires_at <= now() THEN 'expired' ELSE state END, \
                   requested_by, approved_by, \
                   to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), reason \
                 FROM pgcloak.grants WHERE NOT $1 OR (state = 'active' AND expires_at > now()) ORDER BY id DESC",
                &[&active],
            )
            .map_err(|e| anyhow!("{e}"))?;
        Ok(rows
            .iter()
            .map(|r| Listed {
                id: r.get(0),
                user: r.get(1),
                class: r.get(2),
                access: r.get(3),
                table: r.get(4),
                state: r.get(5),
                requested_by: r.get(6),
                approved_by: r.get(7),
                expires_at: r.get(8),
                reason: r.get(9),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: i64, class: Class, table: Option<(&str, &str)>, expires_at: f64) -> ActiveGrant {
        ActiveGrant {
            id,
            raise: GrantRaise {
                class,
                access: Access::Plaintext,
                table: table.map(|(s, t)| (s.to_string(), t.to_string())),
            },
            expires_at,
        }
    }

    #[test]
    fn expired_and_stale_grants_do_not_apply() {
        let state = GrantState::default();
        assert_eq!(state.for_user("u"), None, "nothing read yet");
        let now = now_unix();
        let mut set = HashMap::new();
        set.insert(
            "u".to_string(),
            vec![
                grant(1, Class::Confidential, None, now + 60.0),
                grant(2, Class::Sensitive, None, now - 1.0),
            ],
        );
        state.install(set);
        let g = state.for_user("u").expect("one in force");
        assert_eq!(
            g.tag(),
            "1",
            "the expired one is left out by the local clock"
        );
        assert_eq!(state.for_user("v"), None);
        assert_eq!(state.all().len(), 1);
        // A read older than STALE_AFTER applies nothing.
        if let Some((_, at)) = state.current.write().unwrap().as_mut() {
            *at = Instant::now() - STALE_AFTER - Duration::from_secs(1);
        }
        assert_eq!(state.for_user("u"), None);
        assert!(state.all().is_empty());
    }

    #[test]
    fn a_table_grant_covers_only_its_table() {
        let g = grant(3, Class::Confidential, Some(("public", "customers")), 0.0);
        assert!(g.covers("public", "customers", Class::Confidential));
        assert!(!g.covers("public", "orders", Class::Confidential));
        assert!(!g.covers("public", "customers", Class::Sensitive));
        assert!(grant(4, Class::Sensitive, None, 0.0).covers("x", "y", Class::Sensitive));
    }

    #[test]
    fn table_names_and_rows_parse() {
        assert_eq!(
            parse_table("customers"),
            Some(("public".into(), "customers".into()))
        );
        assert_eq!(
            parse_table("crm.people"),
            Some(("crm".into(), "people".into()))
        );
        for bad in ["", ".x", "x.", "a.b.c"] {
            assert_eq!(parse_table(bad), None, "{bad}");
        }
        assert!(raise_of("confidential", "plaintext", Some("public.customers")).is_some());
        assert!(raise_of("secret", "plaintext", None).is_none());
        assert!(raise_of("confidential", "deny", None).is_none());
    }
}
