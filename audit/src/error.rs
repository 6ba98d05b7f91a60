//! Errors of the audit crate: one enum for setup and I/O, one small type for "cannot record now".

use std::path::PathBuf;

/// What went wrong setting up, writing, verifying or querying the audit trail. Every message
/// names the thing, the place and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The configuration given to the audit crate is unusable.
    #[error("audit configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("audit file {path}: {action} failed: {source}; check that the path exists and is writable by pgcloak")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An existing audit file cannot be continued (its last record is unreadable).
    #[error("audit file {path}: {reason}; run `pgcloak audit verify --file {path}` and move the file aside to start a new chain")]
    Corrupt { path: PathBuf, reason: String },
    /// The PostgreSQL sink or query failed.
    #[error("audit PostgreSQL at {target}: {action} failed: {reason}")]
    Postgres {
        target: String,
        action: &'static str,
        reason: String,
    },
    /// The NATS sink failed.
    #[error("audit NATS at {target}: {action} failed: {reason}")]
    Nats {
        target: String,
        action: &'static str,
        reason: String,
    },
    /// The writer could not store every event before shutdown finished.
    #[error("audit shutdown: {0}")]
    Shutdown(String),
}

/// Why an event could not be accepted (see [`crate::AuditHandle::record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnavailableReason {
    /// The bounded queue to the writer is full.
    QueueFull,
    /// A sink is failing (its last write or probe failed).
    SinkFailing { sink: String, error: String },
    /// A sink's in-memory retry buffer is full.
    BacklogFull { sink: String },
    /// The auditor has been shut down.
    ShutDown,
}

/// The audit trail cannot store events right now; with `on_failure = "block"` the proxy answers
/// SQLSTATE 58000 and runs nothing more until [`crate::AuditHandle::is_healthy`] is true again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgcloak: the audit trail cannot store events ({}); statements are refused until it recovers", describe(.reason))]
pub struct AuditUnavailable {
    pub reason: UnavailableReason,
    /// True if this event was nevertheless queued (it will be written when the sink recovers);
    /// false if it was lost (it is counted in `dropped()` and recorded by a `gap` event).
    pub event_kept: bool,
}

fn describe(r: &UnavailableReason) -> String {
    match r {
        UnavailableReason::QueueFull => "the audit queue is full".into(),
        UnavailableReason::SinkFailing { sink, error } => {
            format!("sink {sink} is failing: {error}")
        }
        UnavailableReason::BacklogFull { sink } => {
            format!("sink {sink} has too many unwritten events")
        }
        UnavailableReason::ShutDown => "the audit writer has shut down".into(),
    }
}
