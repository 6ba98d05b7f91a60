//! Plain-data configuration of the audit writer; the proxy maps its TOML `[audit]` section onto it.

use std::path::PathBuf;
use std::time::Duration;

/// What to do when events cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Refuse statements (the handle reports unhealthy) until every sink works again.
    #[default]
    Block,
    /// Keep serving; count lost events and chain a `gap` event once the sinks recover.
    Drop,
}

/// The PostgreSQL sink: table `pgcloak_audit.statements` (and `pgcloak_audit.checkpoints`).
#[derive(Clone, PartialEq, Eq)]
pub struct PgSinkConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl std::fmt::Debug for PgSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSinkConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl PgSinkConfig {
    /// `user@host:port/dbname`, for messages (never the password).
    pub fn target(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    pub(crate) fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("pgcloak-audit")
            .connect_timeout(Duration::from_secs(5));
        if !self.password.is_empty() {
            c.password(&self.password);
        }
        c
    }
}

/// The NATS JetStream sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// e.g. `nats://127.0.0.1:4222`
    pub url: String,
    /// Every record is published to exactly this subject.
    pub subject: String,
    /// The stream holding `subject`; created (with `subjects = [subject]`) if missing.
    pub stream: String,
}

impl NatsConfig {
    /// Default stream name.
    pub const DEFAULT_STREAM: &'static str = "PGCLOAK_AUDIT";

    /// A config with the default stream name.
    pub fn new(url: impl Into<String>, subject: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            subject: subject.into(),
            stream: Self::DEFAULT_STREAM.into(),
        }
    }
}

/// Everything the audit writer needs. `Default` gives no sinks and the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// JSON-lines file sink (`None`: off).
    pub file: Option<PathBuf>,
    pub postgres: Option<PgSinkConfig>,
    pub nats: Option<NatsConfig>,
    pub on_failure: OnFailure,
    /// Capacity of the bounded queue between `record()` and the writer (default 65536).
    pub queue_capacity: usize,
    /// A signed checkpoint after this many events (default 1000); also every second with
    /// traffic and at shutdown.
    pub checkpoint_every: u64,
    /// Rotate the file after a checkpoint once it is at least this big (`None`: never).
    pub max_file_bytes: Option<u64>,
    /// Most records a sink may hold unwritten in memory while it retries (default 100000).
    /// When a sink reaches it, new events are not accepted (block: refused; drop: dropped).
    pub sink_backlog: usize,
    /// How long `shutdown()` waits for failing sinks before giving up (default 10 s).
    pub shutdown_timeout: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: None,
            postgres: None,
            nats: None,
            on_failure: OnFailure::Block,
            queue_capacity: 65536,
            checkpoint_every: 1000,
            max_file_bytes: None,
            sink_backlog: 100_000,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl AuditConfig {
    pub(crate) fn validate(&self) -> Result<(), crate::AuditError> {
        use crate::AuditError::Config;
        if self.file.is_none() && self.postgres.is_none() && self.nats.is_none() {
            return Err(Config(
                "no audit sink is configured; set [audit] file, postgres or nats".into(),
            ));
        }
        if self.queue_capacity == 0 {
            return Err(Config("queue_capacity must be at least 1".into()));
        }
        if self.checkpoint_every == 0 {
            return Err(Config("checkpoint_every must be at least 1".into()));
        }
        if self.sink_backlog == 0 {
            return Err(Config("sink_backlog must be at least 1".into()));
        }
        if let Some(f) = &self.file {
            if f.as_os_str().is_empty() || f.file_name().is_none() {
                return Err(Config(format!(
                    "audit file {f:?} is not a file path; give a path like \"audit.jsonl\""
                )));
            }
        }
        if let Some(n) = &self.nats {
            if n.subject.is_empty() || n.subject.contains([' ', '*', '>']) {
                return Err(Config(format!(
                    "nats_subject {:?} must be a plain subject like \"pgcloak.audit\"",
                    n.subject
                )));
            }
            if n.stream.is_empty() || n.stream.contains(['.', ' ', '*', '>']) {
                return Err(Config(format!(
                    "NATS stream name {:?} may not be empty or contain '.', ' ', '*' or '>'",
                    n.stream
                )));
            }
        }
        Ok(())
    }
}
