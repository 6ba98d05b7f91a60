//! CancelRequest handling: the proxy hands each client its own key (BackendKeyData) and relays a
//! matching CancelRequest to the server process behind that session. Unknown keys are ignored, as
//! PostgreSQL ignores them.
//!
//! In a fleet (`peer_id`, `[peers]`) the top bits of the process id name the instance that issued the
//! key (`peer_id << 24`), so a CancelRequest that a load balancer sends to another instance is passed
//! on, as it arrived, to the instance holding the session.

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
            let process_id = match shared.config.peer_id {
                None => u32::from_be_bytes(id) & 0x7fff_ffff,
                Some(peer) => (u32::from(peer) << 24) | (u32::from_be_bytes(id) & 0x00ff_ffff),
            };
            if process_id & 0x00ff_ffff == 0 {
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

/// The fleet instance that issued `process_id`, when it is another one this instance knows.
fn issuing_peer(shared: &Shared, process_id: u32) -> Option<(u8, &str)> {
    let me = shared.config.peer_id?;
    let issuer = (process_id >> 24) as u8;
    if issuer == me {
        return None;
    }
    shared
        .config
        .peers
        .get(&issuer)
        .map(|addr| (issuer, addr.as_str()))
}

/// Passes a CancelRequest on to the fleet instance that issued its key.
async fn forward(shared: &Shared, peer: u8, addr: &str, process_id: u32, secret: &[u8]) {
    let connect = tokio::net::TcpStream::connect(addr);
    match shared
        .guard
        .timers
        .timeout(shared.config.connect_timeout, connect)
        .await
    {
        Ok(Ok(mut stream)) => {
            let _ = stream.write_all(&encode_cancel(process_id, secret)).await;
            let _ = stream.flush().await;
            info!(
                process_id,
                peer, "cancel request passed on to the instance that issued its key"
            );
        }
        Ok(Err(e)) => {
            info!(peer, error = %e, "cancel request could not be passed on to peer {addr}")
        }
        Err(_) => info!(
            peer,
            "cancel request could not be passed on to peer {addr}: connect timed out"
        ),
    }
}

/// Relays a client's CancelRequest if its key is one of ours (or passes it on to the fleet instance
/// that issued it).
pub async fn relay(shared: &Shared, process_id: u32, secret: &[u8]) {
    if let Some((peer, addr)) = issuing_peer(shared, process_id) {
        forward(shared, peer, addr, process_id, secret).await;
        return;
    }
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
