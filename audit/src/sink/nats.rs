//! NATS JetStream sink: every record line (events and checkpoints) is published to the
//! configured subject; the stream is created with `subjects = [subject]` if it does not exist.
//!
//! Each message carries `Nats-Msg-Id: <instance>:<seq>` (events) or `<instance>:cp:<seq>`
//! (checkpoints), so a batch retried after a lost ack is de-duplicated by the server (within the
//! stream's duplicate window). Acks are awaited per batch, in order; if an ack in the middle of
//! a batch fails, the records from there on are published again, which can store a retried
//! record after a later one: consumers order by `seq`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::future::BoxFuture;

use super::{Entry, Sink, SinkFailure};
use crate::config::NatsConfig;
use crate::error::AuditError;

const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// The NATS sink.
pub(crate) struct NatsSink {
    cfg: NatsConfig,
    instance: String,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl NatsSink {
    /// Connects and makes sure the stream exists.
    pub(crate) async fn open(cfg: &NatsConfig, instance: &str) -> Result<NatsSink, AuditError> {
        let err = |action, reason: String| AuditError::Nats {
            target: cfg.url.clone(),
            action,
            reason,
        };
        let client = async_nats::ConnectOptions::new()
            .name("pgcloak-audit")
            .connection_timeout(Duration::from_secs(5))
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| err("connecting", e.to_string()))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ACK_TIMEOUT);
        js.get_or_create_stream(jetstream::stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![cfg.subject.clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| {
            err(
                "creating the JetStream stream",
                format!(
                    "{e} (stream {:?}, subject {:?}; is JetStream enabled, and is the subject \
                     free of other streams?)",
                    cfg.stream, cfg.subject
                ),
            )
        })?;
        Ok(NatsSink {
            cfg: cfg.clone(),
            instance: instance.to_string(),
            client,
            js,
        })
    }

    fn msg_id(&self, e: &Entry) -> String {
        match e {
            Entry::Event { seq, .. } => format!("{}:{}", self.instance, seq),
            Entry::Checkpoint { cp, .. } => format!("{}:cp:{}", self.instance, cp.seq),
        }
    }
}

impl Sink for NatsSink {
    fn name(&self) -> String {
        format!("nats {} {}", self.cfg.url, self.cfg.subject)
    }

    fn write(&mut self, entries: Vec<Arc<Entry>>) -> BoxFuture<'_, Result<(), SinkFailure>> {
        Box::pin(async move {
            let mut acks = Vec::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, self.msg_id(e));
                let payload = bytes::Bytes::copy_from_slice(e.line().as_bytes());
                match self
                    .js
                    .publish_with_headers(self.cfg.subject.clone(), headers, payload)
                    .await
                {
                    Ok(ack) => acks.push(ack),
                    Err(err) => {
                        // Everything before i may or may not be stored; wait for those acks so
                        // the retry starts at the first unacknowledged record.
                        let mut written = 0;
                        for ack in acks {
                            if ack.await.is_err() {
                                break;
                            }
                            written += 1;
                        }
                        return Err(SinkFailure {
                            written: written.min(i),
                            error: format!("publishing: {err}"),
                        });
                    }
                }
            }
            for (written, ack) in acks.into_iter().enumerate() {
                if let Err(err) = ack.await {
                    return Err(SinkFailure {
                        written,
                        error: format!("waiting for the JetStream ack: {err}"),
                    });
                }
            }
            Ok(())
        })
    }

    fn tick(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("not connected to {} ({other:?})", self.cfg.url)),
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.client.flush().await.map_err(|e| e.to_string()) })
    }
}
