//! Export budgets: a role's `max_rows_per_window` rows with classified values per user per
//! `window`, counted across statements, sessions and instances.
//!
//! Windows are fixed and aligned to the Unix epoch (a `1h` window runs from one full hour to the
//! next), so every instance agrees where one ends without talking to the others. Counts live in
//! `pgcloak.budgets` of the `[catalog]` database, one row per (user, window length, window start).
//! The data path never waits for it: each instance counts the rows it delivers in memory and
//! [`flush`] adds them to the table once a second, reading back the fleet's totals. The first
//! statement of a user on an instance in a window reads the user's total first
//! ([`Budgets::ensure`]), so a restarted instance does not start from zero.
//!
//! **Overshoot bound.** A statement is cut at the budget as this instance knows it; what other
//! instances delivered in the last second (one flush interval) may not be known yet, so a user
//! spread over `k` instances can exceed the budget by at most the rows the other `k - 1` delivered
//! in that second. One instance alone never exceeds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgcloak_policy::Budget;
use tracing::{info, warn};

use crate::catalog::CatalogError;
use crate::config::Config;

/// How often counts are written and the fleet's totals read back.
pub const FLUSH: Duration = Duration::from_secs(1);

const DDL: &str = "BEGIN; \
    SELECT pg_advisory_xact_lock(hashtext('pgcloak budgets schema')); \
    CREATE SCHEMA IF NOT EXISTS pgcloak; \
    CREATE TABLE IF NOT EXISTS pgcloak.budgets ( \
        usr text NOT NULL, \
        window_secs bigint NOT NULL, \
        window_start bigint NOT NULL, \
        rows bigint NOT NULL, \
        updated_at timestamptz NOT NULL DEFAULT now(), \
        PRIMARY KEY (usr, window_secs, window_start)); \
    REVOKE ALL ON SCHEMA pgcloak FROM PUBLIC; \
    REVOKE ALL ON pgcloak.budgets FROM PUBLIC; \
    COMMIT;";

/// One user's count in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    window_secs: u64,
    window_start: u64,
}

#[derive(Debug, Default)]
struct Entry {
    /// The fleet's total as last read (includes what this instance flushed).
    known: u64,
    /// Delivered here and not yet flushed.
    pending: u64,
    /// Being flushed now.
    in_flight: u64,
    /// Whether `known` was read from the table in this window.
    loaded: bool,
}

/// What is left of a user's budget now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub rows: u64,
    pub budget: Budget,
    /// When the window ends (Unix seconds).
    pub resets_at: u64,
}

impl Left {
    /// The refusal of a statement reading classified values once nothing is left.
    pub fn spent_message(&self, role: &str) -> String {
        format!(
            "pgcloak: the export budget of policy role {role} ({} rows with classified values per {}) is spent for this window; it resets at {}",
            self.budget.rows,
            window_text(self.budget.window_secs),
            rfc3339(self.resets_at)
        )
    }

    /// The error of a statement cut at the budget.
    pub fn cut_message(&self, role: &str, delivered: u64) -> String {
        format!(
            "pgcloak: the statement reached the export budget of policy role {role} ({} rows with classified values per {}); the first {delivered} rows were delivered; the budget resets at {}",
            self.budget.rows,
            window_text(self.budget.window_secs),
            rfc3339(self.resets_at)
        )
    }
}

fn window_text(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key_at(budget: Budget, now: u64) -> Key {
    let w = budget.window_secs.max(1);
    Key {
        window_secs: w,
        window_start: now - now % w,
    }
}

/// Every user's counts on this instance, and the connection [`flush`] keeps.
#[derive(Default)]
pub struct Budgets {
    entries: Mutex<HashMap<(String, Key), Entry>>,
    client: RwLock<Option<Arc<tokio_postgres::Client>>>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets").finish_non_exhaustive()
    }
}

impl Budgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Key), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure `user`'s total for the current window has been read from the table (once per
    /// user and window on this instance). Fails (and the statement is refused) when it cannot be.
    pub async fn ensure(&self, user: &str, budget: Budget) -> Result<(), String> {
        let key = key_at(budget, now_unix());
        if self
            .lock()
            .get(&(user.to_string(), key))
            .is_some_and(|e| e.loaded)
        {
            return Ok(());
        }
        let client = self
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(client) = client else {
            return Err(
                "the budget table pgcloak.budgets is not reachable yet (see the log)".into(),
            );
        };
        let rows = client
            .query(
                "SELECT rows FROM pgcloak.budgets WHERE usr = $1 AND window_secs = $2 AND window_start = $3",
                &[&user, &(key.window_secs as i64), &(key.window_start as i64)],
            )
            .await
            .map_err(|e| format!("cannot read pgcloak.budgets: {}", crate::catalog::describe(&e)))?;
        let total = rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64);
        let mut entries = self.lock();
        let e = entries.entry((user.to_string(), key)).or_default();
        if !e.loaded {
            e.known = e.known.max(total);
            e.loaded = true;
        }
        Ok(())
    }

    /// What is left of `user`'s budget now, as this instance knows it.
    pub fn left(&self, user: &str, budget: Budget) -> Left {
        let now = now_unix();
        let key = key_at(budget, now);
        let used = self
            .lock()
            .get(&(user.to_string(), key))
            .map_or(0, |e| e.known + e.pending + e.in_flight);
        Left {
            rows: budget.rows.saturating_sub(used),
            budget,
            resets_at: key.window_start + key.window_secs,
        }
    }

    /// Counts `rows` delivered to `user` (flushed within a second).
    pub fn charge(&self, user: &str, budget: Budget, rows: u64) {
        if rows == 0 {
            return;
        }
        let key = key_at(budget, now_unix());
        self.lock()
            .entry((user.to_string(), key))
            .or_default()
            .pending += rows;
    }

    /// One flush: adds the pending counts to the table and reads back every known user's total.
    async fn flush_once(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let now = now_unix();
        let (mut users, mut secs, mut starts, mut deltas) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        {
            let mut entries = self.lock();
            // Windows that are over are forgotten.
            entries.retain(|(_, k), e| {
                k.window_start + k.window_secs > now || e.pending + e.in_flight > 0
            });
            for ((user, k), e) in entries.iter_mut() {
                e.in_flight += std::mem::take(&mut e.pending);
                users.push(user.clone());
                secs.push(k.window_secs as i64);
                starts.push(k.window_start as i64);
                deltas.push(e.in_flight as i64);
            }
        }
        if users.is_empty() {
            return Ok(());
        }
        let result = client
            .query(
                "WITH u AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u(usr, window_secs, window_start, delta)), \
                 ins AS (INSERT INTO pgcloak.budgets AS b (usr, window_secs, window_start, rows) \
                   SELECT usr, window_secs, window_start, delta FROM u WHERE delta > 0 \
                   ON CONFLICT (usr, window_secs, window_start) DO UPDATE SET rows = b.rows + EXCLUDED.rows, updated_at = now() \
                   RETURNING b.usr, b.window_secs, b.window_start, b.rows) \
                 SELECT usr, window_secs, window_start, rows FROM ins \
                 UNION ALL \
                 SELECT b.usr, b.window_secs, b.window_start, b.rows FROM pgcloak.budgets b JOIN u USING (usr, window_secs, window_start) WHERE u.delta = 0",
                &[&users, &secs, &starts, &deltas],
            )
            .await;
        let mut entries = self.lock();
        match result {
            Ok(rows) => {
                let mut totals: HashMap<(String, Key), u64> = HashMap::new();
                for r in &rows {
                    let key = Key {
                        window_secs: r.get::<_, i64>(1) as u64,
                        window_start: r.get::<_, i64>(2) as u64,
                    };
                    totals.insert((r.get(0), key), r.get::<_, i64>(3).max(0) as u64);
                }
                for (k, e) in entries.iter_mut() {
                    e.in_flight = 0;
                    if let Some(t) = totals.get(k) {
                        e.known = *t;
                        e.loaded = true;
                    }
                }
                Ok(())
            }
            Err(err) => {
                // Counted again at the next flush: nothing delivered is forgotten.
                for e in entries.values_mut() {
                    e.pending += std::mem::take(&mut e.in_flight);
                }
                Err(err)
            }
        }
    }
}

/// Runs until `stop`: keeps the connection and flushes every [`FLUSH`] while any role has a budget.
pub async fn flush(
    config: Arc<Config>,
    services: Arc<crate::services::Services>,
    stop: tokio_util::sync::CancellationToken,
) {
    let budgets = &services.budgets;
    let mut failing = false;
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cleanup = Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let changed = services.policy_changed.notified();
        let policy = services.policy();
        let any = policy
            .roles()
            .iter()
            .chain(std::iter::once(policy.default_role()))
            .any(|r| r.budget.is_some());
        drop(policy);
        if !any && !stopping {
            let pending = budgets.lock().values().any(|e| e.pending + e.in_flight > 0);
            if !pending {
                // Nothing to count until a policy with a budget is loaded.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = changed => {}
                }
                continue;
            }
        }
        let result = async {
            let current = budgets
                .client
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .filter(|c| !c.is_closed());
            let client = match current {
                Some(c) => c,
                None => {
                    let c = Arc::new(
                        crate::catalog::connect_for_tables(
                            &config,
                            DDL,
                            "the budget table (pgcloak.budgets)",
                        )
                        .await?,
                    );
                    *budgets.client.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                    c
                }
            };
            budgets
                .flush_once(&client)
                .await
                .map_err(|e| CatalogError::read("pgcloak.budgets", e))?;
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = Instant::now();
                let _ = client
                    .execute(
                        "DELETE FROM pgcloak.budgets WHERE window_start + window_secs < extract(epoch FROM now())::bigint - 86400",
                        &[],
                    )
                    .await;
            }
            Ok::<_, CatalogError>(())
        }
        .await;
        match result {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    info!("budget table writable again");
                }
            }
            Err(e) => {
                *budgets.client.write().unwrap_or_else(|p| p.into_inner()) = None;
                if !failing {
                    warn!("{e}; export budget counts are kept in memory and written when it is back, and users not yet read are refused");
                    failing = true;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Budget = Budget {
        rows: 10,
        window_secs: 3600,
    };

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let k = key_at(B, 7_300);
        assert_eq!((k.window_start, k.window_secs), (7_200, 3600));
        assert_eq!(key_at(B, 7_199).window_start, 3_600);
    }

    #[test]
    fn charges_reduce_what_is_left_until_nothing() {
        let b = Budgets::default();
        assert_eq!(b.left("u", B).rows, 10);
        b.charge("u", B, 4);
        assert_eq!(b.left("u", B).rows, 6);
        b.charge("u", B, 40);
        assert_eq!(b.left("u", B).rows, 0, "never negative");
        assert_eq!(b.left("v", B).rows, 10, "per user");
        let left = b.left("u", B);
        assert!(left.resets_at > now_unix());
        assert!(left
            .spent_message("support")
            .contains("10 rows with classified values per 1h"));
        assert_eq!(window_text(90), "90s");
        assert_eq!(window_text(1800), "30m");
        assert_eq!(window_text(172_800), "2d");
    }
}
