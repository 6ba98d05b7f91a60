//! Counters for `GET /metrics` (crate::admin), kept so that counting costs the data path nothing
//! it would notice: each session thread owns one [`ThreadCounters`] block and is its only writer,
//! so a count is a plain load and store on a cache line no other thread writes (no lock, no
//! `lock`-prefixed instruction, no shared atomic per message). A scrape reads every block and
//! adds them up; a value it reads may be a few increments behind, never torn.
//!
//! A session finds its thread's block with [`with`] (a thread-local), registered by [`attach`]
//! when the thread starts its first session.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pgcloak_audit::SinkStatus;
use pgcloak_policy::StatementKind;

use crate::session::track::Protocol;

/// A count written by one thread only (see the module docs).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning thread may call this: a load and a store, not a read-modify-write.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Statement kinds, in label order.
pub const KINDS: [StatementKind; 7] = [
    StatementKind::Select,
    StatementKind::Insert,
    StatementKind::Update,
    StatementKind::Delete,
    StatementKind::Copy,
    StatementKind::Ddl,
    StatementKind::Other,
];

#[inline]
fn kind_index(k: StatementKind) -> usize {
    match k {
        StatementKind::Select => 0,
        StatementKind::Insert => 1,
        StatementKind::Update => 2,
        StatementKind::Delete => 3,
        StatementKind::Copy => 4,
        StatementKind::Ddl => 5,
        StatementKind::Other => 6,
    }
}

#[inline]
fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::Simple => 0,
        Protocol::Extended => 1,
        Protocol::Function => 2,
    }
}

/// SQLSTATEs pgcloak refuses statements with (docs/CONTRACT.md); anything else counts as `other`.
pub const REFUSAL_CODES: [&str; 7] = [
    "42501", "0A000", "22003", "22P02", "42804", "58000", "XX000",
];

/// Upper bounds of the statement latency buckets, in microseconds (`+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// One protocol's latency histogram: counts per bucket (not cumulative; the scrape sums them).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Counter; LATENCY_BUCKETS_US.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    #[inline]
    fn observe(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        if let Some(b) = self.buckets.get(i) {
            b.add(1);
        }
        self.sum_us.add(us);
    }
}

/// What one session thread counted.
#[derive(Debug, Default)]
pub struct ThreadCounters {
    pub sessions_opened: Counter,
    pub sessions_closed: Counter,
    /// Statements finished, by kind and decision (0 allow, 1 deny).
    statements: [[Counter; 2]; KINDS.len()],
    /// Proxy refusals by SQLSTATE (the last slot: any other).
    refusals: [Counter; REFUSAL_CODES.len() + 1],
    /// Statements the server answered with an error.
    pub server_errors: Counter,
    latency: [Histogram; Protocol::ALL.len()],
    /// Plan cache lookups that found the statement's analysis, and those that analysed it.
    pub plan_hits: Counter,
    pub plan_misses: Counter,
    /// Protected values by column class and by what became of them: in result rows (DataRow and
    /// COPY TO) and, encrypted, on the way in.
    values: [[Counter; ValueOutcome::ALL.len()]; pgcloak_policy::Class::ALL.len()],
    /// Bytes read from clients and from servers.
    pub client_bytes: Counter,
    pub server_bytes: Counter,
}

impl ThreadCounters {
    /// Counts one finished statement.
    #[inline]
    pub fn statement(
        &self,
        kind: StatementKind,
        refused: Option<&str>,
        server_error: bool,
        protocol: Protocol,
        micros: u64,
    ) {
        if let Some(row) = self.statements.get(kind_index(kind)) {
            row[usize::from(refused.is_some())].add(1);
        }
        if let Some(code) = refused {
            self.refused(code);
        } else if server_error {
            self.server_errors.add(1);
        }
        if let Some(h) = self.latency.get(protocol_index(protocol)) {
            h.observe(micros);
        }
    }

    #[cold]
    fn refused(&self, code: &str) {
        let i = REFUSAL_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(REFUSAL_CODES.len());
        if let Some(c) = self.refusals.get(i) {
            c.add(1);
        }
    }
}

/// What became of one protected value on its way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueOutcome {
    /// Decrypted and shown in plaintext.
    Decrypted,
    /// Shown masked.
    Masked,
    /// Shown as NULL: a `null` read policy, or a value this role may not read in plaintext, or one
    /// that is not a value of the column (e.g. another column's ciphertext).
    Nulled,
    /// The statement failed on it: a damaged envelope, a value that does not authenticate, a key
    /// version the keyring does not hold.
    Failed,
    /// Encrypted on its way in (a parameter, a literal, a COPY FROM field, an equality term).
    Encrypted,
}

impl ValueOutcome {
    const ALL: [ValueOutcome; 5] = [
        ValueOutcome::Decrypted,
        ValueOutcome::Masked,
        ValueOutcome::Nulled,
        ValueOutcome::Failed,
        ValueOutcome::Encrypted,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ValueOutcome::Decrypted => "decrypted",
            ValueOutcome::Masked => "masked",
            ValueOutcome::Nulled => "nulled",
            ValueOutcome::Failed => "failed",
            ValueOutcome::Encrypted => "encrypted",
        }
    }

    #[inline]
    fn index(self) -> usize {
        match self {
            ValueOutcome::Decrypted => 0,
            ValueOutcome::Masked => 1,
            ValueOutcome::Nulled => 2,
            ValueOutcome::Failed => 3,
            ValueOutcome::Encrypted => 4,
        }
    }
}

impl ThreadCounters {
    /// Counts one protected value presented (or failed).
    #[inline]
    pub fn value(&self, class: pgcloak_policy::Class, outcome: ValueOutcome) {
        if let Some(c) = self
            .values
            .get(class as usize)
            .and_then(|v| v.get(outcome.index()))
        {
            c.add(1);
        }
    }
}

/// Every thread's counters, plus the few counted off the session threads.
#[derive(Debug, Default)]
pub struct Metrics {
    threads: Mutex<Vec<Arc<ThreadCounters>>>,
    /// Clients refused because `max_connections` were open (counted by the session threads, but
    /// rare enough for one shared atomic).
    pub refused_max_connections: AtomicU64,
}

thread_local! {
    /// This thread's counters and the registry they belong to (tests run several proxies in one
    /// process, each with its own session threads).
    static LOCAL: RefCell<Option<(usize, Arc<ThreadCounters>)>> = const { RefCell::new(None) };
}

/// Registers this thread's counters with `metrics` (once per thread; cheap afterwards).
pub fn attach(metrics: &Metrics) {
    let id = metrics as *const Metrics as usize;
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        if l.as_ref().is_some_and(|(owner, _)| *owner == id) {
            return;
        }
        let c = Arc::new(ThreadCounters::default());
        if let Ok(mut threads) = metrics.threads.lock() {
            threads.push(c.clone());
        }
        *l = Some((id, c));
    });
}

/// Runs `f` with this thread's counters (nothing when the thread has none: not a session thread).
#[inline]
pub fn with(f: impl FnOnce(&ThreadCounters)) {
    LOCAL.with(|l| {
        if let Some((_, c)) = &*l.borrow() {
            f(c);
        }
    });
}

/// State read at scrape time from outside the counters.
#[derive(Debug, Default)]
pub struct Gauges {
    pub max_connections: u64,
    pub policy_generation: u64,
    pub policy_version: String,
    pub policy_reloads: u64,
    pub policy_reload_failures: u64,
    pub last_policy_reload_ok: bool,
    pub keyring_generation: u64,
    pub keyring_reload_failures: u64,
    /// Per encrypted column: (column, active key version).
    pub key_versions: Vec<(String, u32)>,
    pub catalog_loads: u64,
    pub catalog_load_failures: u64,
    /// Per database with a catalog snapshot: seconds since it was loaded.
    pub catalog_ages: Vec<(String, f64)>,
    /// Sessions being served now by state ([`crate::registry::Live::state`]), and how many of
    /// them hold a server connection (every session but admin console ones).
    pub sessions_by_state: Vec<(&'static str, u64)>,
    pub server_connections: u64,
    /// Just-in-time grants this proxy applies now.
    pub grants_active: u64,
    pub plan_cache_entries: u64,
    pub audit: Option<pgcloak_audit::AuditStatus>,
    pub uptime_seconds: f64,
}

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4) of the counters and `g`.
    pub fn render(&self, g: &Gauges) -> String {
        let threads: Vec<Arc<ThreadCounters>> =
            self.threads.lock().map(|t| t.clone()).unwrap_or_default();
        let sum = |f: &dyn Fn(&ThreadCounters) -> u64| threads.iter().map(|t| f(t)).sum::<u64>();
        let mut x = Exposition(String::with_capacity(8 * 1024));
        let opened = sum(&|t| t.sessions_opened.get());
        let closed = sum(&|t| t.sessions_closed.get());
        x.single("pgcloak_up", GAUGE, "1 while the proxy serves.", 1);
        x.single(
            "pgcloak_uptime_seconds",
            GAUGE,
            "Seconds since the proxy started serving.",
            g.uptime_seconds,
        );
        x.single(
            "pgcloak_client_connections",
            GAUGE,
            "Client sessions open now.",
            opened.saturating_sub(closed),
        );
        x.family(
            "pgcloak_client_sessions",
            GAUGE,
            "Client sessions being served now, by state: active (a statement is running), idle, idle_in_transaction, idle_in_transaction_aborted, console (admin console).",
        );
        for (state, n) in &g.sessions_by_state {
            x.sample("pgcloak_client_sessions", &format!("state=\"{state}\""), n);
        }
        x.single(
            "pgcloak_server_connections",
            GAUGE,
            "Connections to PostgreSQL held for client sessions (one per session; pgcloak does not pool, so no client ever waits for one).",
            g.server_connections,
        );
        x.single(
            "pgcloak_grants_active",
            GAUGE,
            "Just-in-time grants (pgcloak grant) this proxy applies now.",
            g.grants_active,
        );
        x.single(
            "pgcloak_client_connections_total",
            COUNTER,
            "Client sessions started.",
            opened,
        );
        x.single(
            "pgcloak_client_connections_refused_total",
            COUNTER,
            "Clients refused with 53300 because max_connections sessions were open.",
            self.refused_max_connections.load(Ordering::Relaxed),
        );
        x.single(
            "pgcloak_max_connections",
            GAUGE,
            "The max_connections setting.",
            g.max_connections,
        );

        x.family(
            "pgcloak_statements_total",
            COUNTER,
            "Statements finished, by kind and policy decision.",
        );
        for (k, kind) in KINDS.iter().enumerate() {
            for (d, decision) in ["allow", "deny"].iter().enumerate() {
                x.sample(
                    "pgcloak_statements_total",
                    &format!("kind=\"{}\",decision=\"{decision}\"", kind.as_str()),
                    sum(&|t| t.statements[k][d].get()),
                );
            }
        }
        x.family(
            "pgcloak_refusals_total",
            COUNTER,
            "Statements pgcloak refused, by SQLSTATE.",
        );
        for (i, code) in REFUSAL_CODES
            .iter()
            .copied()
            .chain(std::iter::once("other"))
            .enumerate()
        {
            x.sample(
                "pgcloak_refusals_total",
                &format!("sqlstate=\"{code}\""),
                sum(&|t| t.refusals[i].get()),
            );
        }
        x.single(
            "pgcloak_server_errors_total",
            COUNTER,
            "Statements the server answered with an error.",
            sum(&|t| t.server_errors.get()),
        );

        x.family(
            "pgcloak_statement_duration_seconds",
            "histogram",
            "Statement latency as the proxy sees it (first message to the server's last answer), by protocol.",
        );
        for (p, protocol) in Protocol::ALL.iter().enumerate() {
            let label = format!("protocol=\"{}\"", protocol.as_str());
            let mut cumulative = 0u64;
            for (b, le) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += sum(&|t| t.latency[p].buckets[b].get());
                x.sample(
                    "pgcloak_statement_duration_seconds_bucket",
                    &format!("{label},le=\"{}\"", *le as f64 / 1e6),
                    cumulative,
                );
            }
            cumulative += sum(&|t| t.latency[p].buckets[LATENCY_BUCKETS_US.len()].get());
            x.sample(
                "pgcloak_statement_duration_seconds_bucket",
                &format!("{label},le=\"+Inf\""),
                cumulative,
            );
            x.sample(
                "pgcloak_statement_duration_seconds_sum",
                &label,
                sum(&|t| t.latency[p].sum_us.get()) as f64 / 1e6,
            );
            x.sample(
                "pgcloak_statement_duration_seconds_count",
                &label,
                cumulative,
            );
        }

        x.family(
            "pgcloak_values_total",
            COUNTER,
            "Values of policy columns by class: in result rows and COPY TO output by what the client received (decrypted, masked, nulled, or failed: the statement failed on a damaged or unauthentic value), and encrypted on the way in.",
        );
        for class in pgcloak_policy::Class::ALL {
            for outcome in ValueOutcome::ALL {
                x.sample(
                    "pgcloak_values_total",
                    &format!(
                        "class=\"{}\",outcome=\"{}\"",
                        class.as_str(),
                        outcome.as_str()
                    ),
                    sum(&|t| {
                        t.values
                            .get(class as usize)
                            .and_then(|v| v.get(outcome.index()))
                            .map_or(0, Counter::get)
                    }),
                );
            }
        }
        x.family(
            "pgcloak_received_bytes_total",
            COUNTER,
            "Bytes read, from clients and from servers.",
        );
        x.sample(
            "pgcloak_received_bytes_total",
            "from=\"client\"",
            sum(&|t| t.client_bytes.get()),
        );
        x.sample(
            "pgcloak_received_bytes_total",
            "from=\"server\"",
            sum(&|t| t.server_bytes.get()),
        );

        x.family(
            "pgcloak_policy_generation",
            GAUGE,
            "Bumped by every policy reload and protected-view change; `version` is the policy file's hash.",
        );
        x.sample(
            "pgcloak_policy_generation",
            &format!("version=\"{}\"", escape(&g.policy_version)),
            g.policy_generation,
        );
        x.results(
            "pgcloak_policy_reloads_total",
            "Policy reloads, by result.",
            [
                ("ok", g.policy_reloads),
                ("failed", g.policy_reload_failures),
            ],
        );
        x.single(
            "pgcloak_policy_last_reload_ok",
            GAUGE,
            "1 when the last policy reload succeeded (or none was tried), 0 when it failed and the previous policy stays in force.",
            u64::from(g.last_policy_reload_ok),
        );
        x.single(
            "pgcloak_keyring_generation",
            GAUGE,
            "Generation of the keyring in force.",
            g.keyring_generation,
        );
        x.single(
            "pgcloak_keyring_reload_failures_total",
            COUNTER,
            "Keyring reloads that failed (the previous keyring stays in force).",
            g.keyring_reload_failures,
        );
        x.family(
            "pgcloak_key_active_version",
            GAUGE,
            "The key version new values of each encrypted column are written with.",
        );
        for (column, version) in &g.key_versions {
            x.sample(
                "pgcloak_key_active_version",
                &format!("column=\"{}\"", escape(column)),
                *version,
            );
        }
        x.family(
            "pgcloak_catalog_age_seconds",
            GAUGE,
            "Seconds since each database's catalog snapshot was loaded (reloaded after 30 s or DDL).",
        );
        for (db, age) in &g.catalog_ages {
            x.sample(
                "pgcloak_catalog_age_seconds",
                &format!("database=\"{}\"", escape(db)),
                age,
            );
        }
        x.results(
            "pgcloak_catalog_loads_total",
            "Catalog loads (table, column and view metadata of a database), by result.",
            [("ok", g.catalog_loads), ("failed", g.catalog_load_failures)],
        );
        x.results(
            "pgcloak_plan_cache_lookups_total",
            "Analyses of statements naming protected tables, by whether the plan cache had them.",
            [
                ("hit", sum(&|t| t.plan_hits.get())),
                ("miss", sum(&|t| t.plan_misses.get())),
            ],
        );
        x.single(
            "pgcloak_plan_cache_entries",
            GAUGE,
            "Analysed statements cached.",
            g.plan_cache_entries,
        );

        if let Some(a) = &g.audit {
            x.single(
                "pgcloak_audit_healthy",
                GAUGE,
                "1 when every audit sink is writing and the queue has room.",
                u64::from(a.healthy),
            );
            x.single(
                "pgcloak_audit_queue_depth",
                GAUGE,
                "Audit events waiting to be sequenced.",
                a.queued,
            );
            x.single(
                "pgcloak_audit_events_dropped_total",
                COUNTER,
                "Audit events lost (queue or sink backlog full); each loss is also chained as a gap event.",
                a.dropped,
            );
            x.single(
                "pgcloak_audit_last_seq",
                GAUGE,
                "The last sequence number assigned in this instance's chain.",
                a.last_seq,
            );
            let per_sink: [SinkFamily; 4] = [
                (
                    "pgcloak_audit_sink_healthy",
                    GAUGE,
                    "1 while the sink's last write succeeded.",
                    |s| u64::from(s.healthy),
                ),
                (
                    "pgcloak_audit_sink_backlog",
                    GAUGE,
                    "Records handed to the sink and not yet stored.",
                    |s| s.backlog as u64,
                ),
                (
                    "pgcloak_audit_sink_written_total",
                    COUNTER,
                    "Records (events and checkpoints) the sink stored.",
                    |s| s.written,
                ),
                (
                    "pgcloak_audit_sink_failures_total",
                    COUNTER,
                    "Failed writes of the sink (each is retried).",
                    |s| s.failures,
                ),
            ];
            for (name, kind, help, value) in per_sink {
                x.family(name, kind, help);
                for s in &a.sinks {
                    x.sample(name, &format!("sink=\"{}\"", escape(&s.name)), value(s));
                }
            }
            if let Some(age) = a.checkpoint_age {
                x.single(
                    "pgcloak_audit_checkpoint_age_seconds",
                    GAUGE,
                    "Seconds since the last signed checkpoint.",
                    age.as_secs_f64(),
                );
            }
        }
        x.0
    }
}

/// A per-sink family: name, type, help, and the sample of one sink.
type SinkFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SinkStatus) -> u64,
);

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";

/// The exposition being written.
struct Exposition(String);

impl Exposition {
    /// A family's `# HELP` and `# TYPE` lines; its samples follow.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` is `k="v",...` (escaped) or empty.
    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", v);
    }

    /// A counter family labelled by `result`.
    fn results<const N: usize>(&mut self, name: &str, help: &str, counts: [(&str, u64); N]) {
        self.family(name, COUNTER, help);
        for (result, n) in counts {
            self.sample(name, &format!("result=\"{result}\""), n);
        }
    }
}

/// A label value as the exposition format writes it (backslash, quote and newline escaped).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_thread_are_summed_and_histograms_are_cumulative() {
        let m = Arc::new(Metrics::default());
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let m = m.clone();
                std::thread::spawn(move || {
                    attach(&m);
                    attach(&m);
                    with(|c| {
                        c.sessions_opened.add(2);
                        c.sessions_closed.add(1);
                        c.statement(StatementKind::Select, None, false, Protocol::Extended, 300);
                        c.statement(
                            StatementKind::Select,
                            Some("42501"),
                            false,
                            Protocol::Simple,
                            50 + i,
                        );
                        c.statement(
                            StatementKind::Ddl,
                            Some("12345"),
                            false,
                            Protocol::Simple,
                            9_000_000,
                        );
                        c.statement(StatementKind::Insert, None, true, Protocol::Extended, 100);
                        c.client_bytes.add(10);
                    });
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let text = m.render(&Gauges::default());
        let has = |l: &str| assert!(text.lines().any(|x| x == l), "missing {l:?} in\n{text}");
        has("pgcloak_client_connections 3");
        has("pgcloak_client_connections_total 6");
        has(r#"pgcloak_statements_total{kind="select",decision="allow"} 3"#);
        has(r#"pgcloak_statements_total{kind="select",decision="deny"} 3"#);
        has(r#"pgcloak_statements_total{kind="ddl",decision="deny"} 3"#);
        has(r#"pgcloak_refusals_total{sqlstate="42501"} 3"#);
        has(r#"pgcloak_refusals_total{sqlstate="other"} 3"#);
        has("pgcloak_server_errors_total 3");
        // 100 µs is in the first bucket (le is inclusive), 300 µs in the second.
        has(r#"pgcloak_statement_duration_seconds_bucket{protocol="extended",le="0.0001"} 3"#);
        has(r#"pgcloak_statement_duration_seconds_bucket{protocol="extended",le="0.00025"} 3"#);
        has(r#"pgcloak_statement_duration_seconds_bucket{protocol="extended",le="0.0005"} 6"#);
        has(r#"pgcloak_statement_duration_seconds_bucket{protocol="simple",le="5"} 3"#);
        has(r#"pgcloak_statement_duration_seconds_bucket{protocol="simple",le="+Inf"} 6"#);
        has(r#"pgcloak_statement_duration_seconds_count{protocol="simple"} 6"#);
        has(r#"pgcloak_received_bytes_total{from="client"} 30"#);
        // A thread that never attached counts nothing and does not fail.
        with(|c| c.client_bytes.add(1_000));
        assert!(m
            .render(&Gauges::default())
            .contains(r#"{from="client"} 30"#));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
