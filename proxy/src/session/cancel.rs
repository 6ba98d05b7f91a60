//! CancelRequest handling: the proxy hands each client its own key (BackendKeyData) and relays a
//! matching CancelRequest to the server process behind that session. Unknown keys are ignored, as
//! PostgreSQL ignores them.

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::upstream;
use crate::protocol::startup::encode_cancel;
use crate::server::{CancelTarget, Shared};

/// Registers a session's server key under a fresh client-facing key; removes it on drop.
pub struct Registration<'a> {
    shared: &'a Shared,
    pub process_id: u32,
    pub secret: Vec<u8>,
}

impl<'a> Registration<'a> {
    pub fn new(
        shared: &'a Shared,
        server_process_id: u32,
        server_secret: Vec<u8>,
    ) -> Registration<'a> {
        let rng = SystemRandom::new();
        let mut secret = vec![0u8; server_secret.len().clamp(4, 256)];
        let _ = rng.fill(&mut secret);
        loop {
            let mut id = [0u8; 4];
            let _ = rng.fill(&mut id);
            // Positive like a real pid: some clients treat it as signed.
            let process_id = u32::from_be_bytes(id) & 0x7fff_ffff;
            if process_id == 0 {
                continue;
            }
            if let dashmap::Entry::Vacant(v) = shared.cancel.entry(process_id) {
                v.insert(CancelTarget {
                    our_secret: secret.clone(),
                    server_process_id,
                    server_secret,
                });
                return Registration {
                    shared,
                    process_id,
                    secret,
                };
            }
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.cancel.remove(&self.process_id);
    }
}

/// Relays a client's CancelRequest if its key is one of ours.
pub async fn relay(shared: &Shared, process_id: u32, secret: &[u8]) {
    let target = match shared.cancel.get(&process_id) {
        Some(t) if ring_eq(&t.our_secret, secret) => t.clone(),
        _ => {
            debug!(process_id, "cancel request with an unknown key ignored");
            return;
        }
    };
    match upstream::connect_for_cancel(shared).await {
        Ok(mut stream) => {
            let packet = encode_cancel(target.server_process_id, &target.server_secret);
            let _ = stream.write_all(&packet).await;
            let _ = stream.flush().await;
            info!(process_id, "cancel request relayed");
        }
        Err(e) => info!(error = %e, "cancel request could not be relayed"),
    }
}

/// Constant-time comparison of two secrets.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
