//! Wiring of the audit trail (crate pgcloak-audit): the `[audit]` config mapped onto the writer and
//! the checkpoint signer from the master key. The events a session records are built in
//! [`crate::session::events`].

use std::sync::Arc;

use pgcloak_audit::{AuditConfig as WriterConfig, NatsConfig, PgSinkConfig};
use pgcloak_keymgr::{AuditSigningKey, MasterKey};

use crate::config::{Config, OnFailure};

/// Signs checkpoints with the Ed25519 key derived from the master key.
pub struct Signer(AuditSigningKey);

impl pgcloak_audit::CheckpointSigner for Signer {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(msg)
    }

    fn public_key(&self) -> [u8; 32] {
        self.0.public_key_bytes()
    }
}

pub fn signer(master: &MasterKey) -> Result<Arc<Signer>, pgcloak_keymgr::KeyError> {
    Ok(Arc::new(Signer(master.audit_signing_key()?)))
}

/// The writer's config, or `None` when every sink is off (audit disabled).
pub fn writer_config(cfg: &Config) -> Option<WriterConfig> {
    let a = &cfg.audit;
    let postgres = a.postgres.then(|| PgSinkConfig {
        host: cfg.upstream_host.clone(),
        port: cfg.upstream_port,
        user: cfg.catalog.user.clone(),
        password: cfg.catalog.password.clone(),
        dbname: cfg.catalog.database.clone(),
    });
    let nats = a.nats.as_ref().map(|url| NatsConfig {
        stream: a.nats_stream.clone(),
        ..NatsConfig::new(url.clone(), a.nats_subject.clone())
    });
    if a.file.is_none() && postgres.is_none() && nats.is_none() {
        return None;
    }
    Some(WriterConfig {
        file: a.file.clone(),
        postgres,
        nats,
        on_failure: match a.on_failure {
            OnFailure::Block => pgcloak_audit::OnFailure::Block,
            OnFailure::Drop => pgcloak_audit::OnFailure::Drop,
        },
        queue_capacity: a.queue_capacity,
        checkpoint_every: a.checkpoint_every,
        max_file_bytes: a.max_file_bytes,
        sink_backlog: a.backlog,
        ..WriterConfig::default()
    })
}
