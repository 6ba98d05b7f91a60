//! CancelRequest handling: clients get the server's real process id (so `pg_backend_pid()`,
//! `pg_terminate_backend`, `pg_stat_activity` and a notification's sender pid all match the
//! connection) with a secret of pgcloak's own, never the server's. The secret is what protects
//! cancel: a CancelRequest with a key pgcloak issued is relayed with the server's secret; unknown keys
//! are ignored, as PostgreSQL ignores them.
//!
//! In a fleet (`peer_id`, `[peers]`) the first byte of the secret names the instance that issued the
//! key, so a CancelRequest that a load balancer sends to another instance is passed on, as it
//! arrived, to the instance holding the session. The secret is as long as the server's (4 bytes up to
//! protocol 3.1, up to 256 with PostgreSQL 18's protocol 3.2), the rest of it random.

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::upstream;
use crate::protocol::startup::encode_cancel;
use crate::state::{CancelTarget, Shared};

/// Registers a session's server key under the client-facing key; removes it on drop.
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
        let secret = new_secret(shared.config.peer_id, server_secret.len());
        // One server has one process per pid at a time; an entry still there is a session whose
        // server process has exited (its pid reused) and whose Registration is not dropped yet.
        shared.cancel.insert(
            server_process_id,
            CancelTarget {
                our_secret: secret.clone(),
                server_process_id,
                server_secret,
            },
        );
        Registration {
            shared,
            process_id: server_process_id,
            secret,
        }
    }
}

/// A fresh client-facing secret as long as the server's (at least 4 bytes); in a fleet its first
/// byte is the issuing instance's `peer_id`.
fn new_secret(peer_id: Option<u8>, server_len: usize) -> Vec<u8> {
    let mut secret = vec![0u8; server_len.clamp(4, 256)];
    // SystemRandom fails only on a broken system; a zero secret is then still pgcloak's own.
    let _ = SystemRandom::new().fill(&mut secret);
    if let Some(peer) = peer_id {
        secret[0] = peer;
    }
    secret
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // Only our own entry: a newer session may have the same pid by now.
        self.shared
            .cancel
            .remove_if(&self.process_id, |_, t| t.our_secret == self.secret);
    }
}

/// The fleet instance that issued a key with `secret`, when it is another one this instance knows.
fn issuing_peer<'s>(shared: &'s Shared, secret: &[u8]) -> Option<(u8, &'s str)> {
    let me = shared.config.peer_id?;
    let issuer = *secret.first()?;
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
        .services
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
    if let Some((peer, addr)) = issuing_peer(shared, secret) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_as_long_as_the_servers_and_name_their_instance() {
        assert_eq!(new_secret(None, 4).len(), 4);
        assert_eq!(new_secret(None, 0).len(), 4);
        assert_eq!(new_secret(None, 32).len(), 32, "protocol 3.2 keys");
        assert_eq!(new_secret(None, 1000).len(), 256);
        for _ in 0..20 {
            assert_eq!(new_secret(Some(7), 4)[0], 7);
        }
        assert_ne!(new_secret(None, 32), new_secret(None, 32), "random");
    }
}
