//! pgcloak-audit: the tamper-evident audit trail of pgcloak — event model, canonical encoding,
//! SHA-256 hash chain, Ed25519-signed checkpoints, the writer task and its sinks (JSON-lines
//! file, PostgreSQL table, NATS JetStream), verification and querying.
//!
//! # Layout
//! - `event.rs`     [`NewEvent`] (what the proxy fills in), [`EventSource`] and [`EventStatement`]
//!   (its parts formatted once and shared), [`AuditEvent`] (what is stored), kinds
//! - `canonical.rs` the exact line format, canonical form, hash and checkpoint message
//! - `signer.rs`    [`CheckpointSigner`] (the proxy passes its key in), [`parse_public_key`]
//! - `config.rs`    [`AuditConfig`], plain data mapped from the proxy's TOML
//! - `writer.rs`    [`Auditor::start`], [`AuditHandle`]: bounded queue, sequencer, fan-out
//! - `sink/`        `file.rs`, `postgres.rs`, `nats.rs`: one task each with an ordered retry buffer
//! - `verify.rs`    [`verify::verify_path`], [`verify::verify_postgres`], ...
//! - `query.rs`     [`query::Filter`], table/json/csv output, breach-scope [`query::summarize`]
//!
//! The crate does no SQL analysis and holds no key material of its own: the proxy gives it
//! normalised statement text and a signer.

#![forbid(unsafe_code)]

mod canonical;
mod config;
mod error;
mod event;
mod signer;
mod sink;
mod writer;

pub mod query;
pub mod verify;

pub use canonical::{
    canonical, chain_hash, checkpoint_line, checkpoint_message, event_line, lower_hex, parse_line,
    push_hex, record_line, Record, CHECKPOINT_DOMAIN, GENESIS,
};
pub use config::{AuditConfig, NatsConfig, OnFailure, PgSinkConfig};
pub use error::{AuditError, AuditUnavailable, UnavailableReason};
pub use event::{
    format_ts, parse_time, write_ts, AuditEvent, Checkpoint, ColumnAccess, Decision, EventSource,
    EventStatement, Kind, NewEvent, What, Who, MAX_STATEMENT_BYTES,
};
pub use signer::{
    format_public_key, parse_public_key, verify_signature, CheckpointSigner, RingSigner,
};
pub use sink::file::{chain_files, rotated_files};
pub use sink::postgres::describe_pg_error;
pub use writer::{AuditHandle, AuditStatus, Auditor, SinkStatus};

#[cfg(test)]
mod tests;
